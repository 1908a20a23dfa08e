//! The few rtnetlink requests `set_network` needs, over a raw
//! `NETLINK_ROUTE` socket: list, add and delete an interface's IPv4
//! addresses, and replace the default route.
//!
//! Messages are built byte by byte in native endianness, as the kernel
//! expects on the machine it runs on: `nlmsghdr`, then `ifaddrmsg` or
//! `rtmsg`, then attributes, each padded to 4 bytes. Every request asks for
//! an acknowledgement, so a refusal comes back as the kernel's errno.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const NLMSG_HDRLEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const RTMSG_LEN: usize = 12;
/// How long a reply from the kernel may take before the request fails.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// One request being built.
struct Message {
    bytes: Vec<u8>,
}

impl Message {
    fn new(kind: u16, flags: u16, seq: u32) -> Self {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // length, set in finish
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        Message { bytes }
    }

    fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        self.bytes.resize(align(self.bytes.len()), 0);
    }

    fn attribute(&mut self, kind: u16, data: &[u8]) {
        let len = (4 + data.len()) as u16;
        self.bytes.extend_from_slice(&len.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.push(data);
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.bytes.len() as u32;
        self.bytes[..4].copy_from_slice(&len.to_ne_bytes());
        self.bytes
    }
}

/// `struct ifaddrmsg` for IPv4.
fn ifaddrmsg(prefix: u8, ifindex: u32) -> [u8; IFADDRMSG_LEN] {
    let mut bytes = [0u8; IFADDRMSG_LEN];
    bytes[0] = libc::AF_INET as u8;
    bytes[1] = prefix;
    // flags 0, scope RT_SCOPE_UNIVERSE (0)
    bytes[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    bytes
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn malformed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed rtnetlink reply")
}

/// A `NETLINK_ROUTE` socket.
#[derive(Debug)]
pub struct Rtnetlink {
    fd: OwnedFd,
    seq: u32,
}

impl Rtnetlink {
    pub fn open() -> io::Result<Self> {
        // SAFETY: socket takes no pointers; a non-negative result is a new
        // fd owned by nothing else.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let timeout = libc::timeval {
            tv_sec: REPLY_TIMEOUT.as_secs() as _,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a valid timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Rtnetlink { fd, seq: 0 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, message: &[u8]) -> io::Result<()> {
        // SAFETY: `message` is readable for its length; a netlink socket
        // with no address sends to the kernel.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != message.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short send on a netlink socket",
            ));
        }
        Ok(())
    }

    /// Receives one datagram, which holds one or more messages.
    fn receive(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is writable for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Sends `message` (sequence `seq`) and reads replies until the kernel's
    /// acknowledgement or the end of a dump, handing each other message of
    /// the exchange (type, payload) to `each`.
    fn exchange(
        &mut self,
        message: &[u8],
        seq: u32,
        mut each: impl FnMut(u16, &[u8]),
    ) -> io::Result<()> {
        self.send(message)?;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = self.receive(&mut buf)?;
            let mut rest = &buf[..n];
            while rest.len() >= NLMSG_HDRLEN {
                let len = u32_at(rest, 0).ok_or_else(malformed)? as usize;
                let kind = u16_at(rest, 4).ok_or_else(malformed)?;
                let msg_seq = u32_at(rest, 8).ok_or_else(malformed)?;
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(malformed());
                }
                let payload = &rest[NLMSG_HDRLEN..len];
                rest = &rest[align(len).min(rest.len())..];
                if msg_seq != seq {
                    // A late answer to an earlier request that timed out.
                    continue;
                }
                match kind as libc::c_int {
                    libc::NLMSG_ERROR => {
                        let errno = u32_at(payload, 0).ok_or_else(malformed)? as i32;
                        return if errno == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-errno))
                        };
                    }
                    libc::NLMSG_DONE => return Ok(()),
                    _ => each(kind, payload),
                }
            }
        }
    }

    /// The IPv4 addresses (with prefix lengths) of interface `ifindex`.
    pub fn ipv4_addresses(&mut self, ifindex: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        let seq = self.next_seq();
        let mut message = Message::new(libc::RTM_GETADDR, libc::NLM_F_DUMP as u16, seq);
        message.push(&ifaddrmsg(0, 0));
        let mut found = Vec::new();
        let mut bad = false;
        self.exchange(&message.finish(), seq, |kind, payload| {
            if kind != libc::RTM_NEWADDR || payload.len() < IFADDRMSG_LEN {
                return;
            }
            let (family, prefix) = (payload[0], payload[1]);
            let index = u32_at(payload, 4).unwrap_or(0);
            if family != libc::AF_INET as u8 || index != ifindex {
                return;
            }
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the
            // peer's on point-to-point links); take it when present.
            let mut local = None;
            let mut address = None;
            let mut attrs = &payload[IFADDRMSG_LEN..];
            while attrs.len() >= 4 {
                let len = u16_at(attrs, 0).unwrap_or(0) as usize;
                let kind = u16_at(attrs, 2).unwrap_or(0);
                if len < 4 || len > attrs.len() {
                    bad = true;
                    return;
                }
                if let Ok(octets) = <[u8; 4]>::try_from(&attrs[4..len]) {
                    match kind {
                        libc::IFA_LOCAL => local = Some(Ipv4Addr::from(octets)),
                        libc::IFA_ADDRESS => address = Some(Ipv4Addr::from(octets)),
                        _ => {}
                    }
                }
                attrs = &attrs[align(len).min(attrs.len())..];
            }
            if let Some(addr) = local.or(address) {
                found.push((addr, prefix));
            }
        })?;
        if bad {
            return Err(malformed());
        }
        Ok(found)
    }

    fn address_request(
        &mut self,
        kind: u16,
        flags: u16,
        ifindex: u32,
        address: Ipv4Addr,
        prefix: u8,
    ) -> io::Result<()> {
        let seq = self.next_seq();
        let mut message = Message::new(kind, flags | libc::NLM_F_ACK as u16, seq);
        message.push(&ifaddrmsg(prefix, ifindex));
        message.attribute(libc::IFA_LOCAL, &address.octets());
        message.attribute(libc::IFA_ADDRESS, &address.octets());
        if kind == libc::RTM_NEWADDR && prefix < 31 {
            let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
            let broadcast = Ipv4Addr::from(u32::from(address) | host_bits);
            message.attribute(libc::IFA_BROADCAST, &broadcast.octets());
        }
        self.exchange(&message.finish(), seq, |_, _| {})
    }

    /// Adds `address/prefix` to interface `ifindex` (and with it the route
    /// to its subnet).
    pub fn add_ipv4_address(
        &mut self,
        ifindex: u32,
        address: Ipv4Addr,
        prefix: u8,
    ) -> io::Result<()> {
        let flags = (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
        self.address_request(libc::RTM_NEWADDR, flags, ifindex, address, prefix)
    }

    /// Removes `address/prefix` from interface `ifindex`. When it was the
    /// interface's last IPv4 address, the kernel also drops every route
    /// through the interface (the old default route among them).
    pub fn delete_ipv4_address(
        &mut self,
        ifindex: u32,
        address: Ipv4Addr,
        prefix: u8,
    ) -> io::Result<()> {
        self.address_request(libc::RTM_DELADDR, 0, ifindex, address, prefix)
    }

    /// Makes `gateway`, through interface `ifindex`, the default IPv4 route
    /// of the main table, replacing any there was.
    pub fn replace_default_route(&mut self, ifindex: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let seq = self.next_seq();
        let flags = (libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
        let mut message = Message::new(libc::RTM_NEWROUTE, flags, seq);
        let mut rtmsg = [0u8; RTMSG_LEN];
        rtmsg[0] = libc::AF_INET as u8; // family; dst_len, src_len, tos 0
        rtmsg[4] = libc::RT_TABLE_MAIN;
        rtmsg[5] = libc::RTPROT_BOOT;
        rtmsg[6] = libc::RT_SCOPE_UNIVERSE;
        rtmsg[7] = libc::RTN_UNICAST;
        message.push(&rtmsg);
        message.attribute(libc::RTA_GATEWAY, &gateway.octets());
        message.attribute(libc::RTA_OIF, &ifindex.to_ne_bytes());
        self.exchange(&message.finish(), seq, |_, _| {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_their_length_and_padded_attributes() {
        let mut message = Message::new(libc::RTM_NEWADDR, 0, 7);
        message.push(&ifaddrmsg(24, 3));
        message.attribute(libc::IFA_LOCAL, &[10, 0, 0, 2]);
        message.attribute(libc::IFA_LABEL, b"eth0\0"); // 9 bytes, padded to 12
        let bytes = message.finish();
        assert_eq!(bytes.len(), NLMSG_HDRLEN + IFADDRMSG_LEN + 8 + 12);
        assert_eq!(u32_at(&bytes, 0), Some(bytes.len() as u32));
        assert_eq!(u16_at(&bytes, 4), Some(libc::RTM_NEWADDR));
        assert_eq!(
            u16_at(&bytes, 6),
            Some(libc::NLM_F_REQUEST as u16),
            "every message is a request"
        );
        assert_eq!(u32_at(&bytes, 8), Some(7));
        assert_eq!(bytes[NLMSG_HDRLEN + 1], 24, "prefix length");
        assert_eq!(u32_at(&bytes, NLMSG_HDRLEN + 4), Some(3), "ifindex");
        let label = NLMSG_HDRLEN + IFADDRMSG_LEN + 8;
        assert_eq!(u16_at(&bytes, label), Some(9), "unpadded attribute length");
        assert_eq!(&bytes[label + 4..label + 9], b"eth0\0");
    }
}
