//! The guest's network: bringing interfaces up (`lo` at boot), and giving
//! an interface its address, default route and name servers, at boot from
//! the kernel command line or later by `set_network` (a clone's new
//! identity).
//!
//! [`configure`] leaves the interface with exactly the requested IPv4
//! address: the others are deleted first, which also drops every route
//! through the interface, so no route of the clone's previous identity
//! survives; then the address and the default route are added.

use std::ffi::CString;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use tfc_agent_proto::ErrorCode;

use crate::rtnetlink::Rtnetlink;

/// Where name servers go.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Where they go instead when the root filesystem is read-only (shared
/// images are attached read-only): this file, on init's tmpfs, is then
/// bind-mounted over [`RESOLV_CONF`], and later writes go through the mount.
pub const RUN_RESOLV_CONF: &str = "/run/tfc/resolv.conf";

/// The most name servers the C library reads from resolv.conf (`MAXNS`).
pub const MAX_NAMESERVERS: usize = 3;

/// What an interface should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    /// Written to resolv.conf when not empty; otherwise it is left alone.
    pub nameservers: Vec<IpAddr>,
}

/// Why configuring the network failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{0:?} is not an interface name (1 to 15 bytes, no '/', ':' or whitespace)")]
    InterfaceName(String),
    #[error("{0:?} is not ADDRESS/PREFIX with an IPv4 address and a prefix of 1 to 32 (IPv6 is not supported yet)")]
    AddressCidr(String),
    #[error("gateway {0:?} is not an IPv4 address")]
    Gateway(String),
    #[error("name server {0:?} is not an IP address")]
    Nameserver(String),
    #[error("{0} name servers given; resolv.conf takes at most {MAX_NAMESERVERS}")]
    TooManyNameservers(usize),
    #[error("the guest has no interface named {0:?}")]
    NoSuchInterface(String),
    #[error("bringing {interface} up failed")]
    LinkUp {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("opening an rtnetlink socket failed")]
    Netlink(#[source] io::Error),
    #[error("listing the addresses of {interface} failed")]
    ListAddresses {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("removing {address} from {interface} failed")]
    DeleteAddress {
        interface: String,
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("adding {address} to {interface} failed")]
    AddAddress {
        interface: String,
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("setting the default route via {gateway} failed (is the gateway inside {address}?)")]
    DefaultRoute {
        gateway: Ipv4Addr,
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("writing {path} failed")]
    ResolvConf {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "the root filesystem is read-only and mounting {RUN_RESOLV_CONF} over {RESOLV_CONF} \
         failed (the image needs an /etc/resolv.conf, or a link to /run/resolv.conf)"
    )]
    MountResolvConf(#[source] io::Error),
}

impl NetworkError {
    pub fn code(&self) -> ErrorCode {
        match self {
            NetworkError::InterfaceName(_)
            | NetworkError::AddressCidr(_)
            | NetworkError::Gateway(_)
            | NetworkError::Nameserver(_)
            | NetworkError::TooManyNameservers(_) => ErrorCode::BadRequest,
            NetworkError::NoSuchInterface(_) => ErrorCode::NotFound,
            _ => ErrorCode::Io,
        }
    }
}

fn valid_interface_name(name: &str) -> bool {
    // IFNAMSIZ is 16 with the terminating NUL.
    (1..16).contains(&name.len())
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

impl InterfaceConfig {
    /// Checks the fields of a `set_network` request (or the `tfc.ip` boot
    /// parameters).
    pub fn parse(
        interface: &str,
        address_cidr: &str,
        gateway: Option<&str>,
        nameservers: &[String],
    ) -> Result<Self, NetworkError> {
        if !valid_interface_name(interface) {
            return Err(NetworkError::InterfaceName(interface.into()));
        }
        let bad_cidr = || NetworkError::AddressCidr(address_cidr.into());
        let (address, prefix) = address_cidr.split_once('/').ok_or_else(bad_cidr)?;
        let address: Ipv4Addr = address.parse().map_err(|_| bad_cidr())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad_cidr())?;
        if !(1..=32).contains(&prefix) {
            return Err(bad_cidr());
        }
        let gateway = gateway
            .map(|text| {
                text.parse::<Ipv4Addr>()
                    .map_err(|_| NetworkError::Gateway(text.into()))
            })
            .transpose()?;
        if nameservers.len() > MAX_NAMESERVERS {
            return Err(NetworkError::TooManyNameservers(nameservers.len()));
        }
        let nameservers = nameservers
            .iter()
            .map(|text| {
                text.parse::<IpAddr>()
                    .map_err(|_| NetworkError::Nameserver(text.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(InterfaceConfig {
            interface: interface.into(),
            address,
            prefix,
            gateway,
            nameservers,
        })
    }

    fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.prefix)
    }
}

/// The index of interface `name`.
fn interface_index(name: &str) -> Result<u32, NetworkError> {
    let missing = || NetworkError::NoSuchInterface(name.into());
    let c_name = std::ffi::CString::new(name).map_err(|_| missing())?;
    // SAFETY: `c_name` is a valid NUL-terminated string for the call.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => Err(missing()),
        index => Ok(index),
    }
}

/// Sets IFF_UP on interface `name` (SIOCGIFFLAGS, then SIOCSIFFLAGS).
pub fn link_up(name: &str) -> io::Result<()> {
    if !valid_interface_name(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an interface name",
        ));
    }
    // SAFETY: socket takes no pointers; a non-negative result is a new fd
    // owned by nothing else.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just created and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all-zero is valid and NUL-terminates the
    // name, which is at most 15 bytes (checked above).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: `request` is a valid ifreq naming the interface; the kernel
    // writes the flags into its union.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; the kernel reads the name and the flags.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS as _, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives the interface exactly `config`'s address, its default route and
/// (when given) name servers. Blocking: a few round trips to the kernel.
///
/// The name servers are written first: a read-only image is the likeliest
/// failure, and then nothing has changed yet.
pub fn configure(config: &InterfaceConfig) -> Result<(), NetworkError> {
    let interface = &config.interface;
    let ifindex = interface_index(interface)?;
    if !config.nameservers.is_empty() {
        write_resolv_conf(&config.nameservers)?;
    }
    link_up(interface).map_err(|e| NetworkError::LinkUp {
        interface: interface.clone(),
        source: e,
    })?;
    let mut netlink = Rtnetlink::open().map_err(NetworkError::Netlink)?;
    let current = netlink
        .ipv4_addresses(ifindex)
        .map_err(|e| NetworkError::ListAddresses {
            interface: interface.clone(),
            source: e,
        })?;
    for (address, prefix) in current {
        netlink
            .delete_ipv4_address(ifindex, address, prefix)
            .map_err(|e| NetworkError::DeleteAddress {
                interface: interface.clone(),
                address: format!("{address}/{prefix}"),
                source: e,
            })?;
    }
    netlink
        .add_ipv4_address(ifindex, config.address, config.prefix)
        .map_err(|e| NetworkError::AddAddress {
            interface: interface.clone(),
            address: config.cidr(),
            source: e,
        })?;
    if let Some(gateway) = config.gateway {
        netlink
            .replace_default_route(ifindex, gateway)
            .map_err(|e| NetworkError::DefaultRoute {
                gateway,
                address: config.cidr(),
                source: e,
            })?;
    }
    Ok(())
}

/// Writes resolv.conf in place, through a symlink or a bind mount: a
/// rename would replace the link or fail on the mount. On a read-only root,
/// writes [`RUN_RESOLV_CONF`] and mounts it over [`RESOLV_CONF`].
fn write_resolv_conf(nameservers: &[IpAddr]) -> Result<(), NetworkError> {
    let mut text = String::from("# written by tfc-agent\n");
    for server in nameservers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    match write_in_place(RESOLV_CONF, &text) {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
        other => {
            return other.map_err(|source| NetworkError::ResolvConf {
                path: RESOLV_CONF,
                source,
            })
        }
    }
    let run_error = |source| NetworkError::ResolvConf {
        path: RUN_RESOLV_CONF,
        source,
    };
    if let Some(dir) = Path::new(RUN_RESOLV_CONF).parent() {
        std::fs::create_dir_all(dir).map_err(run_error)?;
    }
    write_in_place(RUN_RESOLV_CONF, &text).map_err(run_error)?;
    let (source, target) = (
        CString::new(RUN_RESOLV_CONF).expect("no NUL in a constant"),
        CString::new(RESOLV_CONF).expect("no NUL in a constant"),
    );
    // SAFETY: both paths are NUL-terminated strings alive for the call; the
    // other pointers may be null for a bind mount.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(NetworkError::MountResolvConf(io::Error::last_os_error()));
    }
    Ok(())
}

fn write_in_place(path: &str, text: &str) -> io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        address: &str,
        gateway: Option<&str>,
        dns: &[&str],
    ) -> Result<InterfaceConfig, NetworkError> {
        let dns: Vec<String> = dns.iter().map(|s| s.to_string()).collect();
        InterfaceConfig::parse("eth0", address, gateway, &dns)
    }

    #[test]
    fn a_full_request_parses() {
        let config = parse(
            "192.168.7.2/30",
            Some("192.168.7.1"),
            &["1.1.1.1", "2001:db8::1"],
        )
        .unwrap();
        assert_eq!(config.address, Ipv4Addr::new(192, 168, 7, 2));
        assert_eq!(config.prefix, 30);
        assert_eq!(config.gateway, Some(Ipv4Addr::new(192, 168, 7, 1)));
        assert_eq!(config.nameservers.len(), 2);
    }

    #[test]
    fn bad_fields_are_bad_requests() {
        for (address, gateway, dns) in [
            ("10.0.0.2", None, &[][..]),
            ("10.0.0.2/33", None, &[]),
            ("10.0.0.2/0", None, &[]),
            ("10.0.0/24", None, &[]),
            ("2001:db8::2/64", None, &[]),
            ("10.0.0.2/24", Some("gw"), &[]),
            ("10.0.0.2/24", None, &["dns"]),
            (
                "10.0.0.2/24",
                None,
                &["1.1.1.1", "1.0.0.1", "8.8.8.8", "9.9.9.9"],
            ),
        ] {
            let err = parse(address, gateway, dns).unwrap_err();
            assert_eq!(err.code(), ErrorCode::BadRequest, "{err}");
        }
        for name in ["", "eth0/x", "a:b", "sixteen-bytes-xx", "e th"] {
            let err = InterfaceConfig::parse(name, "10.0.0.2/24", None, &[]).unwrap_err();
            assert!(matches!(err, NetworkError::InterfaceName(_)), "{err}");
        }
    }

    #[test]
    fn a_missing_interface_is_not_found() {
        let config = InterfaceConfig::parse("tfc-none0", "10.0.0.2/24", None, &[]).unwrap();
        let err = configure(&config).unwrap_err();
        assert_eq!(err.code(), ErrorCode::NotFound, "{err}");
    }
}
