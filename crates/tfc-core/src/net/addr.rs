//! IPv4 networks, the configured address pool and its per-VM blocks.
//!
//! The pool (e.g. `10.200.0.0/16`) is split into `/30` blocks, one per VM with
//! networking. In block `n.n.n.b/30`:
//!
//! | address | what |
//! |---|---|
//! | `b + 0` | network address, never assigned |
//! | `b + 1` | host side: the host's end of the VM's veth pair |
//! | `b + 2` | the VM's address: the namespace's end of the veth, translated to the guest |
//! | `b + 3` | broadcast, never assigned |
//!
//! Why `/30` rather than `/31` (RFC 3021, two usable addresses and no
//! network/broadcast address): Linux would route a `/31` veth link just as
//! well, and it would double the VMs per pool. But a `/16` already holds
//! 16384 `/30` blocks, more VMs than one host runs, so the space is not what
//! limits us; in exchange, every block keeps the conventional layout that
//! every tool (firewalls, `ip`, a guest's or operator's mental arithmetic)
//! reads without special cases, and the unused network and broadcast addresses
//! separate neighbouring blocks, so an off-by-one in a rule or route for one VM
//! names an address no other VM holds.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::net::guest::guest_link;

/// Prefix length of one VM's block.
pub const BLOCK_PREFIX_LEN: u8 = 30;
/// Addresses in one block.
const BLOCK_SIZE: u32 = 1 << (32 - BLOCK_PREFIX_LEN);

/// Why an address, network or pool is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("{value:?} is not an IPv4 network: write it as ADDRESS/PREFIX, e.g. 10.200.0.0/16")]
    Parse { value: String },
    #[error("prefix length {prefix_len} of {value:?} is out of range: use 0 to 32")]
    PrefixLength { value: String, prefix_len: u32 },
    #[error("{value:?} has host bits set: its network address is {network}")]
    HostBitsSet { value: String, network: String },
    #[error(
        "address pool {pool} is smaller than one /{BLOCK_PREFIX_LEN} block: use a prefix \
         length of {BLOCK_PREFIX_LEN} or less, e.g. 10.200.0.0/16"
    )]
    PoolTooSmall { pool: Ipv4Cidr },
    #[error(
        "address pool {pool} overlaps the guest link {link} every VM has inside its \
         namespace: choose a pool outside it, e.g. 10.200.0.0/16"
    )]
    OverlapsGuestLink { pool: Ipv4Cidr, link: Ipv4Cidr },
}

/// An IPv4 network: an address with its host bits clear and a prefix length.
/// Written `a.b.c.d/len`; a bare address means `/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
    /// The network `network/prefix_len`; refuses an address with host bits set.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Result<Self, AddrError> {
        let value = || format!("{network}/{prefix_len}");
        if prefix_len > 32 {
            return Err(AddrError::PrefixLength {
                value: value(),
                prefix_len: prefix_len.into(),
            });
        }
        let masked = u32::from(network) & mask(prefix_len);
        if masked != u32::from(network) {
            return Err(AddrError::HostBitsSet {
                value: value(),
                network: format!("{}/{prefix_len}", Ipv4Addr::from(masked)),
            });
        }
        Ok(Self {
            network,
            prefix_len,
        })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The network's mask, e.g. `255.255.255.252` for a `/30`.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix_len))
    }

    /// Addresses in the network, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix_len))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix_len) == u32::from(self.network)
    }

    /// Whether the two networks share an address (one then contains the other).
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }
}

/// The mask of a prefix length (`0..=32`).
fn mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        n => u32::MAX << (32 - u32::from(n)),
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, AddrError> {
        let parse = || AddrError::Parse {
            value: s.to_owned(),
        };
        let (addr, prefix_len) = match s.split_once('/') {
            Some((addr, len)) => {
                // Digits only: `u32::from_str` would also take "+30".
                if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(parse());
                }
                let len: u32 = len.parse().map_err(|_| parse())?;
                if len > 32 {
                    return Err(AddrError::PrefixLength {
                        value: s.to_owned(),
                        prefix_len: len,
                    });
                }
                (addr, len as u8)
            }
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| parse())?;
        Ipv4Cidr::new(addr, prefix_len).map_err(|err| match err {
            AddrError::HostBitsSet { network, .. } => AddrError::HostBitsSet {
                value: s.to_owned(),
                network,
            },
            other => other,
        })
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = AddrError;
    fn try_from(value: String) -> Result<Self, AddrError> {
        value.parse()
    }
}

impl From<Ipv4Cidr> for String {
    fn from(cidr: Ipv4Cidr) -> String {
        cidr.to_string()
    }
}

/// The configured pool VM addresses come from: an IPv4 network of at least one
/// `/30` block. Its blocks are numbered from 0 at the lowest address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Pool {
    cidr: Ipv4Cidr,
}

impl Ipv4Pool {
    /// The pool a configuration gets when it names none.
    pub const DEFAULT: Ipv4Pool = Ipv4Pool {
        cidr: Ipv4Cidr {
            network: Ipv4Addr::new(10, 200, 0, 0),
            prefix_len: 16,
        },
    };

    pub fn new(cidr: Ipv4Cidr) -> Result<Self, AddrError> {
        if cidr.prefix_len > BLOCK_PREFIX_LEN {
            return Err(AddrError::PoolTooSmall { pool: cidr });
        }
        let link = guest_link();
        if cidr.overlaps(&link) {
            return Err(AddrError::OverlapsGuestLink { pool: cidr, link });
        }
        Ok(Self { cidr })
    }

    pub fn cidr(&self) -> Ipv4Cidr {
        self.cidr
    }

    /// Number of blocks, at least 1.
    pub fn capacity(&self) -> u32 {
        // At most 2^30: the prefix length is at most 30.
        (self.cidr.size() / u64::from(BLOCK_SIZE)) as u32
    }

    /// Block `index`, if the pool has one.
    pub fn block(&self, index: u32) -> Option<Block> {
        if index >= self.capacity() {
            return None;
        }
        let network = Ipv4Addr::from(u32::from(self.cidr.network) + index * BLOCK_SIZE);
        Some(Block { index, network })
    }

    /// The block holding `addr`, if the pool has one.
    pub fn block_of(&self, addr: Ipv4Addr) -> Option<Block> {
        if !self.cidr.contains(addr) {
            return None;
        }
        self.block((u32::from(addr) - u32::from(self.cidr.network)) / BLOCK_SIZE)
    }
}

impl Default for Ipv4Pool {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for Ipv4Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.cidr.fmt(f)
    }
}

impl FromStr for Ipv4Pool {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, AddrError> {
        Ipv4Pool::new(s.parse()?)
    }
}

impl TryFrom<String> for Ipv4Pool {
    type Error = AddrError;
    fn try_from(value: String) -> Result<Self, AddrError> {
        value.parse()
    }
}

impl From<Ipv4Pool> for String {
    fn from(pool: Ipv4Pool) -> String {
        pool.to_string()
    }
}

/// One VM's `/30` of the pool (the layout is in the module docs). Obtained only
/// from [`Ipv4Pool::block`], so it always lies inside its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Block {
    index: u32,
    network: Ipv4Addr,
}

impl Block {
    /// Position in the pool, from 0 at its lowest address.
    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn cidr(&self) -> Ipv4Cidr {
        Ipv4Cidr {
            network: self.network,
            prefix_len: BLOCK_PREFIX_LEN,
        }
    }

    /// The host's end of the VM's veth pair, and the VM's gateway.
    pub fn host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The VM's address as the host and the world see it.
    pub fn vm(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 2)
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.cidr().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_print() {
        for s in [
            "10.200.0.0/16",
            "0.0.0.0/0",
            "192.0.2.7/32",
            "172.16.0.0/30",
        ] {
            assert_eq!(cidr(s).to_string(), s);
        }
        assert_eq!(cidr("192.0.2.7"), cidr("192.0.2.7/32"));
        assert_eq!(
            cidr("10.200.0.0/16").netmask(),
            Ipv4Addr::new(255, 255, 0, 0)
        );
        assert_eq!(cidr("0.0.0.0/0").netmask(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(cidr("0.0.0.0/0").size(), 1 << 32);
    }

    #[test]
    fn bad_cidrs_say_what_is_wrong() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0/8",
            "10.0.0.0/+8",
            "x/8",
            "10.0.0.0/8/8",
        ] {
            assert!(
                matches!(bad.parse::<Ipv4Cidr>(), Err(AddrError::Parse { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            "10.0.0.0/33".parse::<Ipv4Cidr>(),
            Err(AddrError::PrefixLength {
                value: "10.0.0.0/33".into(),
                prefix_len: 33
            })
        );
        let err = "10.200.1.0/16".parse::<Ipv4Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"10.200.1.0/16\" has host bits set: its network address is 10.200.0.0/16"
        );
    }

    #[test]
    fn contains_and_overlaps() {
        let pool = cidr("10.200.0.0/16");
        assert!(pool.contains(Ipv4Addr::new(10, 200, 255, 255)));
        assert!(!pool.contains(Ipv4Addr::new(10, 201, 0, 0)));
        assert!(pool.overlaps(&cidr("10.200.4.0/30")));
        assert!(cidr("10.0.0.0/8").overlaps(&pool));
        assert!(!pool.overlaps(&cidr("172.16.0.0/30")));
        assert!(cidr("0.0.0.0/0").contains(Ipv4Addr::BROADCAST));
    }

    #[test]
    fn pool_blocks_follow_the_layout() {
        let pool: Ipv4Pool = "10.200.0.0/16".parse().unwrap();
        assert_eq!(pool, Ipv4Pool::default());
        assert_eq!(pool.capacity(), 16384);
        let b = pool.block(1).unwrap();
        assert_eq!(b.to_string(), "10.200.0.4/30");
        assert_eq!(b.host(), Ipv4Addr::new(10, 200, 0, 5));
        assert_eq!(b.vm(), Ipv4Addr::new(10, 200, 0, 6));
        let last = pool.block(16383).unwrap();
        assert_eq!(last.vm(), Ipv4Addr::new(10, 200, 255, 254));
        assert_eq!(pool.block(16384), None);
        assert_eq!(pool.block_of(Ipv4Addr::new(10, 200, 0, 7)), Some(b));
        assert_eq!(pool.block_of(Ipv4Addr::new(10, 201, 0, 7)), None);
    }

    #[test]
    fn pools_need_one_block() {
        assert_eq!("192.0.2.0/30".parse::<Ipv4Pool>().unwrap().capacity(), 1);
        let err = "192.0.2.0/31".parse::<Ipv4Pool>().unwrap_err();
        assert!(err
            .to_string()
            .contains("use a prefix length of 30 or less"));
        assert_eq!("0.0.0.0/1".parse::<Ipv4Pool>().unwrap().capacity(), 1 << 29);
        for overlapping in ["172.16.0.0/12", "172.16.0.0/30", "0.0.0.0/0"] {
            let err = overlapping.parse::<Ipv4Pool>().unwrap_err();
            assert!(
                matches!(err, AddrError::OverlapsGuestLink { .. }),
                "{overlapping}: {err}"
            );
        }
    }

    #[test]
    fn serde_uses_the_written_form() {
        let pool: Ipv4Pool = serde_json::from_str("\"10.200.0.0/16\"").unwrap();
        assert_eq!(serde_json::to_string(&pool).unwrap(), "\"10.200.0.0/16\"");
        assert!(serde_json::from_str::<Ipv4Pool>("\"10.200.0.1/16\"").is_err());
    }
}
