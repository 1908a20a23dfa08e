//! A minimal rtnetlink client: the dozen requests a VM network needs (veth
//! pairs, link state, addresses, routes, one policy rule, link listing), each
//! sent synchronously on a `NETLINK_ROUTE` socket and answered by the kernel's
//! acknowledgement.
//!
//! Why our own rather than the `rtnetlink` crate: that crate is asynchronous
//! (a connection task on a tokio runtime), while a netlink socket belongs to
//! the network namespace it was opened in, so every namespace would need a
//! runtime task started inside it. Here a slot opens one plain socket inside
//! its namespace and keeps it: later requests go straight to that namespace
//! from any thread, with no namespace switch and no runtime, which is what
//! keeps a slot's hand-over to a VM within a few hundred microseconds. The
//! messages are few and fixed; their layouts are those of the kernel's uapi
//! headers (`linux/netlink.h`, `linux/rtnetlink.h`, `linux/if_link.h`,
//! `linux/fib_rules.h`), named below as there.

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use tfc_core::net::Ipv4Cidr;

// linux/netlink.h
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
/// In an error message: the original request is cut to its header.
const NLM_F_CAPPED: u16 = 0x100;
/// In an error message: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const SOL_NETLINK: libc::c_int = 270;
const NLMSGERR_ATTR_MSG: u16 = 1;

// linux/rtnetlink.h
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RTM_NEWRULE: u16 = 32;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RTN_UNICAST: u8 = 1;
const RTN_PROHIBIT: u8 = 8;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTNH_F_ONLINK: u32 = 4;

// linux/if_link.h, linux/veth.h, linux/if_addr.h
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFF_UP: u32 = 1;

// linux/fib_rules.h
const FRA_IIFNAME: u16 = 3;
const FRA_PRIORITY: u16 = 6;
const FRA_TABLE: u16 = 15;
const FR_ACT_TO_TBL: u8 = 1;

const AF_INET: u8 = libc::AF_INET as u8;
/// Large enough for any one datagram of a link dump.
const RECV_BUFFER: usize = 64 * 1024;

/// Why a netlink request failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket")]
    Open(#[source] io::Error),
    #[error("cannot send the netlink request to {request}")]
    Send {
        request: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the kernel's answer to {request}")]
    Receive {
        request: String,
        #[source]
        source: io::Error,
    },
    /// The kernel refused; `detail` is its extended-ack message, if it gave one.
    #[error("the kernel refused to {request}{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        request: String,
        detail: Option<String>,
        #[source]
        source: io::Error,
    },
    #[error("the kernel's answer to {request} is malformed: {what}")]
    Malformed { request: String, what: &'static str },
}

impl NetlinkError {
    /// The errno of a refusal, e.g. `ENODEV` for a missing link.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A link as a dump lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The driver kind (`veth`, `tun`, ...), for links made through rtnetlink.
    pub kind: Option<String>,
    pub up: bool,
}

/// What a route does with matching packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// Send them out `oif`, through `gateway` if given.
    Forward { oif: u32, gateway: Option<Ipv4Addr> },
    /// Refuse them with ICMP "administratively prohibited".
    Prohibit,
}

/// A route to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub table: u32,
    pub dst: Ipv4Cidr,
    pub kind: RouteKind,
}

/// A netlink request under construction: header, family header, attributes.
struct Request {
    buf: Vec<u8>,
}

impl Request {
    fn new(kind: u16, flags: u16, family_header: &[u8]) -> Self {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(family_header);
        let mut request = Self { buf };
        request.pad();
        request
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + payload.len()).expect("attributes here are small");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    fn attr_u32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.attr(kind, &value.to_ne_bytes())
    }

    fn attr_str(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes)
    }

    /// Opens a nested attribute; [`Request::end_nest`] closes it.
    fn nest(&mut self, kind: u16) -> usize {
        let start = self.buf.len();
        self.attr(kind, &[]);
        start
    }

    fn end_nest(&mut self, start: usize) {
        let len = u16::try_from(self.buf.len() - start).expect("nests here are small");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// The bytes to send, with length and sequence number filled in.
    fn finish(&mut self, seq: u32) -> &[u8] {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}

/// `struct ifinfomsg`.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

/// Attributes of a netlink payload: (kind, payload) pairs.
fn attrs(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & 0x3fff; // drop NLA_F_NESTED etc.
        if len < 4 || len > bytes.len() {
            return None;
        }
        let payload = &bytes[4..len];
        bytes = &bytes[((len + 3) & !3).min(bytes.len())..];
        Some((kind, payload))
    })
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// One open `NETLINK_ROUTE` socket, bound to the network namespace of the
/// thread that opened it for as long as it lives.
#[derive(Debug)]
pub struct Rtnl {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(NetlinkError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        for option in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            let on: libc::c_int = 1;
            // SAFETY: `on` outlives the call and its size is passed with it.
            // Failure is tolerated: both options only make errors more telling.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    option,
                    (&on as *const libc::c_int).cast(),
                    mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        // SAFETY: an all-zero sockaddr_nl is valid (pid 0: the kernel picks one).
        let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a valid sockaddr_nl and its size is passed with it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(NetlinkError::Open(io::Error::last_os_error()));
        }
        Ok(Self {
            fd,
            seq: 0,
            buf: vec![0u8; RECV_BUFFER],
        })
    }

    fn send(
        &mut self,
        request: &mut Request,
        what: &dyn Fn() -> String,
    ) -> Result<u32, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = request.finish(seq);
        // SAFETY: `bytes` is valid for its length for the whole call.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if sent < 0 {
            return Err(NetlinkError::Send {
                request: what(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(seq)
    }

    /// Reads one datagram into the buffer; returns its length.
    fn recv(&mut self, what: &dyn Fn() -> String) -> Result<usize, NetlinkError> {
        loop {
            // SAFETY: the buffer is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(NetlinkError::Receive {
                    request: what(),
                    source: err,
                });
            }
        }
    }

    /// Sends `request` and reads messages until the kernel's answer to it:
    /// every message of a dump (`dump`), or its acknowledgement. Returns the
    /// payloads (after the netlink header) of the answer's data messages.
    fn exchange(
        &mut self,
        mut request: Request,
        dump: bool,
        what: &dyn Fn() -> String,
    ) -> Result<Vec<Vec<u8>>, NetlinkError> {
        let seq = self.send(&mut request, what)?;
        let malformed = |what_: &'static str| NetlinkError::Malformed {
            request: what(),
            what: what_,
        };
        let mut out = Vec::new();
        loop {
            let n = self.recv(what)?;
            let mut rest = &self.buf[..n];
            while rest.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let flags = u16::from_ne_bytes([rest[6], rest[7]]);
                let msg_seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(malformed("a message length runs past the datagram"));
                }
                let payload = &rest[NLMSG_HDRLEN..len];
                rest = &rest[((len + 3) & !3).min(rest.len())..];
                if msg_seq != seq {
                    // An answer to an earlier request we gave up on: skip it.
                    continue;
                }
                match kind {
                    NLMSG_ERROR => {
                        if payload.len() < 4 {
                            return Err(malformed("an error message without its code"));
                        }
                        let code = i32::from_ne_bytes(payload[0..4].try_into().expect("4 bytes"));
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(NetlinkError::Refused {
                            request: what(),
                            detail: ext_ack_message(payload, flags),
                            source: io::Error::from_raw_os_error(-code),
                        });
                    }
                    NLMSG_DONE if dump => return Ok(out),
                    _ => out.push(payload.to_vec()),
                }
            }
        }
    }

    /// Sends a request that changes something and waits for its acknowledgement.
    fn change(&mut self, request: Request, what: &dyn Fn() -> String) -> Result<(), NetlinkError> {
        self.exchange(request, false, what).map(drop)
    }

    /// The index of link `name`, if it exists.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let mut request = Request::new(RTM_GETLINK, NLM_F_ACK, &ifinfomsg(0, 0, 0));
        request.attr_str(IFLA_IFNAME, name);
        let what = || format!("look up link {name}");
        match self.exchange(request, false, &what) {
            Ok(messages) => {
                let first = messages.first().ok_or(NetlinkError::Malformed {
                    request: what(),
                    what: "no link in the answer",
                })?;
                Ok(Some(parse_link(first, &what)?.index))
            }
            Err(err) if err.errno() == Some(libc::ENODEV) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Every link in the socket's namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let request = Request::new(RTM_GETLINK, NLM_F_DUMP, &ifinfomsg(0, 0, 0));
        let what = || "list links".to_owned();
        self.exchange(request, true, &what)?
            .iter()
            .map(|m| parse_link(m, &what))
            .collect()
    }

    /// Creates veth pair `name` here, its peer `peer` in the namespace `peer_ns`.
    pub fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_ns: BorrowedFd<'_>,
    ) -> Result<(), NetlinkError> {
        let mut request = Request::new(
            RTM_NEWLINK,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &ifinfomsg(0, 0, 0),
        );
        request.attr_str(IFLA_IFNAME, name);
        let info = request.nest(IFLA_LINKINFO);
        request.attr_str(IFLA_INFO_KIND, "veth");
        let data = request.nest(IFLA_INFO_DATA);
        let peer_info = request.nest(VETH_INFO_PEER);
        // The peer's own ifinfomsg comes first in VETH_INFO_PEER.
        request.buf.extend_from_slice(&ifinfomsg(0, 0, 0));
        request.attr_str(IFLA_IFNAME, peer);
        request.attr_u32(IFLA_NET_NS_FD, peer_ns.as_raw_fd() as u32);
        request.end_nest(peer_info);
        request.end_nest(data);
        request.end_nest(info);
        self.change(request, &|| format!("create veth pair {name} / {peer}"))
    }

    /// Brings link `index` up.
    pub fn set_up(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let request = Request::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, IFF_UP, IFF_UP));
        self.change(request, &|| format!("bring link {name} up"))
    }

    /// Sets the hardware address of link `index`.
    pub fn set_mac(&mut self, index: u32, name: &str, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let mut request = Request::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(index, 0, 0));
        request.attr(IFLA_ADDRESS, &mac);
        self.change(request, &|| {
            format!("set the hardware address of link {name}")
        })
    }

    /// Deletes link `name`; `false` if there was none.
    pub fn delete_link(&mut self, name: &str) -> Result<bool, NetlinkError> {
        let mut request = Request::new(RTM_DELLINK, NLM_F_ACK, &ifinfomsg(0, 0, 0));
        request.attr_str(IFLA_IFNAME, name);
        match self.change(request, &|| format!("delete link {name}")) {
            Ok(()) => Ok(true),
            Err(err) if err.errno() == Some(libc::ENODEV) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Adds `addr/prefix_len` to link `index`.
    pub fn add_address(
        &mut self,
        index: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        // struct ifaddrmsg: family, prefixlen, flags, scope, index.
        let mut header = [0u8; 8];
        header[0] = AF_INET;
        header[1] = prefix_len;
        header[3] = RT_SCOPE_UNIVERSE;
        header[4..8].copy_from_slice(&index.to_ne_bytes());
        let mut request = Request::new(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &header);
        request.attr(IFA_LOCAL, &addr.octets());
        request.attr(IFA_ADDRESS, &addr.octets());
        self.change(request, &|| {
            format!("add address {addr}/{prefix_len} to link {index}")
        })
    }

    /// Adds `route`. A gateway is taken as on-link: it is the peer of a point-to-point veth.
    pub fn add_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        let (kind, scope, flags) = match route.kind {
            RouteKind::Forward {
                gateway: Some(_), ..
            } => (RTN_UNICAST, RT_SCOPE_UNIVERSE, RTNH_F_ONLINK),
            RouteKind::Forward { gateway: None, .. } => (RTN_UNICAST, RT_SCOPE_LINK, 0),
            RouteKind::Prohibit => (RTN_PROHIBIT, RT_SCOPE_UNIVERSE, 0),
        };
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let mut header = [0u8; 12];
        header[0] = AF_INET;
        header[1] = route.dst.prefix_len();
        header[4] = u8::try_from(route.table).unwrap_or(0); // RT_TABLE_UNSPEC: see RTA_TABLE
        header[5] = RTPROT_STATIC;
        header[6] = scope;
        header[7] = kind;
        header[8..12].copy_from_slice(&flags.to_ne_bytes());
        let mut request =
            Request::new(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &header);
        request.attr_u32(RTA_TABLE, route.table);
        if route.dst.prefix_len() > 0 {
            request.attr(RTA_DST, &route.dst.network().octets());
        }
        if let RouteKind::Forward { oif, gateway } = route.kind {
            request.attr_u32(RTA_OIF, oif);
            if let Some(gateway) = gateway {
                request.attr(RTA_GATEWAY, &gateway.octets());
            }
        }
        self.change(request, &|| {
            format!("add route {} to table {}", route.dst, route.table)
        })
    }

    /// Adds the policy rule "packets arriving on `iif` look up `table`", at `priority`.
    pub fn add_iif_rule(
        &mut self,
        iif: &str,
        table: u32,
        priority: u32,
    ) -> Result<(), NetlinkError> {
        // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags.
        let mut header = [0u8; 12];
        header[0] = AF_INET;
        header[4] = u8::try_from(table).unwrap_or(0);
        header[7] = FR_ACT_TO_TBL;
        let mut request = Request::new(RTM_NEWRULE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &header);
        request.attr_str(FRA_IIFNAME, iif);
        request.attr_u32(FRA_TABLE, table);
        request.attr_u32(FRA_PRIORITY, priority);
        self.change(request, &|| format!("add rule iif {iif} lookup {table}"))
    }
}

fn parse_link(payload: &[u8], what: &dyn Fn() -> String) -> Result<Link, NetlinkError> {
    if payload.len() < 16 {
        return Err(NetlinkError::Malformed {
            request: what(),
            what: "a link message shorter than its header",
        });
    }
    let index = u32::from_ne_bytes(payload[4..8].try_into().expect("4 bytes"));
    let flags = u32::from_ne_bytes(payload[8..12].try_into().expect("4 bytes"));
    let mut name = None;
    let mut kind = None;
    for (attr, value) in attrs(&payload[16..]) {
        match attr {
            IFLA_IFNAME => name = Some(c_string(value)),
            IFLA_LINKINFO => {
                kind = attrs(value)
                    .find(|(a, _)| *a == IFLA_INFO_KIND)
                    .map(|(_, v)| c_string(v));
            }
            _ => {}
        }
    }
    let name = name.ok_or(NetlinkError::Malformed {
        request: what(),
        what: "a link without a name",
    })?;
    Ok(Link {
        index,
        name,
        kind,
        up: flags & IFF_UP != 0,
    })
}

/// The extended-ack message of an error answer (`struct nlmsgerr` then, with
/// `NLM_F_ACK_TLVS`, attributes after the echoed request).
fn ext_ack_message(payload: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < 4 + NLMSG_HDRLEN {
        return None;
    }
    let echoed = &payload[4..4 + NLMSG_HDRLEN];
    let echoed_len = u32::from_ne_bytes(echoed[0..4].try_into().ok()?) as usize;
    let skip = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        (echoed_len + 3) & !3
    };
    let tlvs = payload.get(4 + skip..)?;
    attrs(tlvs)
        .find(|(kind, _)| *kind == NLMSGERR_ATTR_MSG)
        .map(|(_, v)| c_string(v))
        .filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_laid_out_as_the_kernel_reads_them() {
        let mut request = Request::new(RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(7, IFF_UP, IFF_UP));
        request.attr_str(IFLA_IFNAME, "ab");
        let nest = request.nest(IFLA_LINKINFO);
        request.attr_str(IFLA_INFO_KIND, "veth");
        request.end_nest(nest);
        let bytes = request.finish(42).to_vec();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize,
            bytes.len()
        );
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), RTM_NEWLINK);
        assert_eq!(
            u16::from_ne_bytes([bytes[6], bytes[7]]),
            NLM_F_ACK | NLM_F_REQUEST
        );
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 42);
        // ifinfomsg: index 7, IFF_UP in flags and change.
        assert_eq!(u32::from_ne_bytes(bytes[20..24].try_into().unwrap()), 7);
        let parsed: Vec<(u16, Vec<u8>)> =
            attrs(&bytes[32..]).map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(parsed[0], (IFLA_IFNAME, b"ab\0".to_vec()));
        assert_eq!(parsed[1].0, IFLA_LINKINFO);
        // "veth\0" is 5 bytes, padded to 8, plus a 4-byte attribute header.
        assert_eq!(parsed[1].1.len(), 12);
        let inner: Vec<_> = attrs(&parsed[1].1).collect();
        assert_eq!(inner, vec![(IFLA_INFO_KIND, &b"veth\0"[..])]);
    }

    #[test]
    fn link_messages_parse() {
        let mut request = Request::new(RTM_NEWLINK, 0, &ifinfomsg(3, IFF_UP, 0));
        request.attr_str(IFLA_IFNAME, "tap0");
        let nest = request.nest(IFLA_LINKINFO);
        request.attr_str(IFLA_INFO_KIND, "tun");
        request.end_nest(nest);
        let bytes = request.finish(1).to_vec();
        let link = parse_link(&bytes[NLMSG_HDRLEN..], &|| "test".into()).unwrap();
        assert_eq!(
            link,
            Link {
                index: 3,
                name: "tap0".into(),
                kind: Some("tun".into()),
                up: true
            }
        );
        assert!(parse_link(&bytes[NLMSG_HDRLEN..NLMSG_HDRLEN + 8], &|| "test".into()).is_err());
    }

    #[test]
    fn truncated_attributes_end_the_walk() {
        // A length that runs past the buffer, and one shorter than a header.
        assert_eq!(attrs(&[40, 0, 3, 0, b'a']).count(), 0);
        assert_eq!(attrs(&[2, 0, 3, 0]).count(), 0);
        assert_eq!(attrs(&[5, 0, 3, 0, b'a']).count(), 1);
    }

    #[test]
    fn extended_ack_messages_are_found() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&(-17i32).to_ne_bytes());
        payload.extend_from_slice(&[0u8; NLMSG_HDRLEN]); // the capped request header
        payload.extend_from_slice(&11u16.to_ne_bytes()); // header + "exists\0"

        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(b"exists\0\0");
        assert_eq!(
            ext_ack_message(&payload, NLM_F_ACK_TLVS | NLM_F_CAPPED).as_deref(),
            Some("exists")
        );
        assert_eq!(ext_ack_message(&payload, 0), None);
    }
}
