//! Tap devices through `/dev/net/tun` (rtnetlink cannot create them on the
//! hosts we run on: it answers `EOPNOTSUPP`).
//!
//! A tap is created in the network namespace of the thread that opens
//! `/dev/net/tun`, so callers run [`create_persistent_tap`] inside the VM's
//! namespace ([`crate::netns::Netns::run`]). It is made persistent, so it
//! outlives our descriptor and waits for Firecracker, which opens it by name
//! with the same flags: `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

/// The tun/tap control device.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// The flags Firecracker opens its tap with: an Ethernet tap, no packet
/// information prefix, a virtio-net header on every frame.
pub const TAP_FLAGS: libc::c_short =
    (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;

/// Why a tap could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("cannot open {TUN_DEVICE}: load the tun module (`modprobe tun`) and run as root")]
    Open(#[source] io::Error),
    #[error("tap name {name:?} must be 1 to 15 bytes")]
    BadName { name: String },
    #[error("cannot create tap {name} (TUNSETIFF)")]
    SetIff {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot give tap {name} to uid {uid} / gid {gid}")]
    SetOwner {
        name: String,
        uid: u32,
        gid: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot make tap {name} persistent (TUNSETPERSIST)")]
    SetPersist {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags in the union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    /// The rest of the union, unused here.
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_short) -> Result<Self, TunError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(TunError::BadName {
                name: name.to_owned(),
            });
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags,
            _pad: [0; 22],
        };
        req.name[..bytes.len()].copy_from_slice(bytes);
        Ok(req)
    }
}

/// Opens `/dev/net/tun` attached to tap `name` with `flags` (creating the
/// tap if it does not exist), in the calling thread's namespace.
pub fn open_tap(name: &str, flags: libc::c_short) -> Result<File, TunError> {
    let mut req = IfReq::new(name, flags)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
        .map_err(TunError::Open)?;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is
    // (repr(C), the kernel's layout and size), valid for the whole call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(TunError::SetIff {
            name: name.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(file)
}

/// Creates persistent tap `name` in the calling thread's network namespace,
/// with Firecracker's flags ([`TAP_FLAGS`]), owned by `owner` (uid, gid) when
/// given so that an unprivileged (jailed) Firecracker may open it. The tap is
/// left down; bring it up through netlink.
pub fn create_persistent_tap(name: &str, owner: Option<(u32, u32)>) -> Result<(), TunError> {
    let file = open_tap(name, TAP_FLAGS)?;
    let fd = file.as_raw_fd();
    if let Some((uid, gid)) = owner {
        for (request, value) in [(libc::TUNSETOWNER, uid), (libc::TUNSETGROUP, gid)] {
            // SAFETY: both ioctls take an integer argument by value.
            if unsafe { libc::ioctl(fd, request, value as libc::c_ulong) } < 0 {
                return Err(TunError::SetOwner {
                    name: name.to_owned(),
                    uid,
                    gid,
                    source: io::Error::last_os_error(),
                });
            }
        }
    }
    // SAFETY: TUNSETPERSIST takes an integer argument by value.
    if unsafe { libc::ioctl(fd, libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(TunError::SetPersist {
            name: name.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    // Dropping our descriptor detaches it; the persistent tap stays.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        let req = IfReq::new("tap0", TAP_FLAGS).unwrap();
        assert_eq!(&req.name[..5], b"tap0\0");
        assert_eq!(req.flags, 0x0002 | 0x1000 | 0x4000);
        for bad in ["", "sixteen-bytes-xx", "a\0b"] {
            assert!(IfReq::new(bad, TAP_FLAGS).is_err(), "{bad:?}");
        }
    }
}
