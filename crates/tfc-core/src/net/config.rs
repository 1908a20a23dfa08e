//! What a VM asks of its network: a mode, an optional egress allowlist and
//! port forwards from the host. Checked here, before anything is created.
//!
//! | mode | NIC | the VM reaches | reaches the VM |
//! |---|---|---|---|
//! | `none` | no | nothing | nothing |
//! | `isolated` | yes | the host side of its link only | the host; port forwards |
//! | `nat` | yes | the host, and the world through the uplink (masqueraded), limited by the allowlist if one is set | the host; port forwards |
//!
//! In every mode a VM never reaches another VM.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::net::addr::Ipv4Cidr;

/// Most egress rules one VM may have; each is one nftables rule.
pub const MAX_EGRESS_RULES: usize = 64;
/// Most port forwards one VM may have.
pub const MAX_PORT_FORWARDS: usize = 32;

/// Why a network configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetConfigError {
    #[error("{what} needs a network: set mode to \"isolated\" or \"nat\"")]
    NeedsNetwork { what: &'static str },
    #[error(
        "an egress allowlist only applies in mode \"nat\" (mode \"isolated\" reaches the host \
         only): set mode to \"nat\" or remove egress_allow"
    )]
    AllowlistNeedsNat,
    #[error("{count} {what} is more than the {max} allowed: merge some")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("port 0 in a port forward: use 1 to 65535")]
    ZeroPort,
    #[error("host port {port}/{protocol} is forwarded twice: give each forward its own host port")]
    DuplicateHostPort { port: u16, protocol: Protocol },
    #[error("{value:?} is not a port or port range: write e.g. 443 or 8000-8100 (1 to 65535)")]
    BadPortRange { value: String },
    #[error("{value:?} is not a port forward: write HOST_PORT:VM_PORT, optionally /tcp or /udp (e.g. 8080:80)")]
    BadForward { value: String },
    #[error("{value:?} is not a protocol: use tcp or udp")]
    BadProtocol { value: String },
    #[error(
        "{value:?} is not a destination: write an IPv4 address or network (e.g. 192.0.2.0/24)"
    )]
    BadDestination { value: String },
    #[error("{value:?} is not an egress rule: write TO[:tcp|udp][:PORTS] (e.g. 192.0.2.0/24:tcp:443,8000-8100)")]
    BadEgressRule { value: String },
}

/// How a VM is connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// No network interface.
    #[default]
    None,
    /// Host <-> VM only.
    Isolated,
    /// Host <-> VM, and egress through the host's uplink, masqueraded.
    Nat,
}

impl NetMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetMode::None => "none",
            NetMode::Isolated => "isolated",
            NetMode::Nat => "nat",
        }
    }
}

impl fmt::Display for NetMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transport protocol in rules and forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port or an inclusive range of ports, `first <= last`, never port 0.
/// Written `443` or `8000-8100`; a bare number is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "PortRangeRepr", into = "String")]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    pub fn new(first: u16, last: u16) -> Result<Self, NetConfigError> {
        if first == 0 || first > last {
            return Err(NetConfigError::BadPortRange {
                value: format!("{first}-{last}"),
            });
        }
        Ok(Self { first, last })
    }

    pub fn first(&self) -> u16 {
        self.first
    }

    pub fn last(&self) -> u16 {
        self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = NetConfigError;
    fn from_str(s: &str) -> Result<Self, NetConfigError> {
        let bad = || NetConfigError::BadPortRange {
            value: s.to_owned(),
        };
        let port = |p: &str| -> Result<u16, NetConfigError> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        PortRange::new(first, last).map_err(|_| bad())
    }
}

/// What a port range may be written as in JSON or TOML.
#[derive(Deserialize)]
#[serde(untagged)]
enum PortRangeRepr {
    Number(u16),
    Text(String),
}

impl TryFrom<PortRangeRepr> for PortRange {
    type Error = NetConfigError;
    fn try_from(repr: PortRangeRepr) -> Result<Self, NetConfigError> {
        match repr {
            PortRangeRepr::Number(port) => {
                PortRange::new(port, port).map_err(|_| NetConfigError::BadPortRange {
                    value: port.to_string(),
                })
            }
            PortRangeRepr::Text(text) => text.parse(),
        }
    }
}

impl From<PortRange> for String {
    fn from(range: PortRange) -> String {
        range.to_string()
    }
}

/// One destination a VM in mode `nat` with an allowlist may reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    /// Destination network, e.g. `192.0.2.0/24`, or one address.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "192.0.2.0/24"))]
    pub to: Ipv4Cidr,
    /// Only this protocol; both TCP and UDP when absent. Without `ports`, every
    /// port of the protocol(s); without both, every protocol (ICMP included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Destination ports (`443`, `"8000-8100"`); every port when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub ports: Vec<PortRange>,
}

/// Traffic to a port of the host sent on to a port of the VM. The VM sees
/// such connections coming from its host-side address, so they work in mode
/// `isolated` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    pub host_port: u16,
    pub vm_port: u16,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

/// What one VM asks of its network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    #[serde(default)]
    pub mode: NetMode,
    /// Mode `nat` only. Absent: egress is not limited. Present: the VM reaches
    /// only these destinations (and always its host side); an empty list
    /// leaves the host side only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_allow: Option<Vec<EgressRule>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_forwards: Vec<PortForward>,
}

impl NetConfig {
    /// Refuses a configuration the network cannot carry out, saying what to change.
    pub fn validate(&self) -> Result<(), NetConfigError> {
        if self.mode == NetMode::None {
            if self.egress_allow.is_some() {
                return Err(NetConfigError::NeedsNetwork {
                    what: "an egress allowlist",
                });
            }
            if !self.port_forwards.is_empty() {
                return Err(NetConfigError::NeedsNetwork {
                    what: "a port forward",
                });
            }
        }
        if let Some(rules) = &self.egress_allow {
            if self.mode != NetMode::Nat {
                return Err(NetConfigError::AllowlistNeedsNat);
            }
            if rules.len() > MAX_EGRESS_RULES {
                return Err(NetConfigError::TooMany {
                    what: "egress rules",
                    count: rules.len(),
                    max: MAX_EGRESS_RULES,
                });
            }
        }
        if self.port_forwards.len() > MAX_PORT_FORWARDS {
            return Err(NetConfigError::TooMany {
                what: "port forwards",
                count: self.port_forwards.len(),
                max: MAX_PORT_FORWARDS,
            });
        }
        let mut seen = BTreeSet::new();
        for forward in &self.port_forwards {
            if forward.host_port == 0 || forward.vm_port == 0 {
                return Err(NetConfigError::ZeroPort);
            }
            if !seen.insert((forward.protocol, forward.host_port)) {
                return Err(NetConfigError::DuplicateHostPort {
                    port: forward.host_port,
                    protocol: forward.protocol,
                });
            }
        }
        Ok(())
    }
}

/// Written `HOST:VM` or `HOST:VM/udp` (as `docker run -p` does; TCP when no
/// protocol is given).
impl FromStr for PortForward {
    type Err = NetConfigError;
    fn from_str(s: &str) -> Result<Self, NetConfigError> {
        let bad = || NetConfigError::BadForward {
            value: s.to_owned(),
        };
        let (ports, protocol) = match s.split_once('/') {
            Some((ports, protocol)) => (ports, protocol.parse().map_err(|_| bad())?),
            None => (s, Protocol::Tcp),
        };
        let (host, vm) = ports.split_once(':').ok_or_else(bad)?;
        let port = |p: &str| -> Result<u16, NetConfigError> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            match p.parse() {
                Ok(0) => Err(NetConfigError::ZeroPort),
                Ok(port) => Ok(port),
                Err(_) => Err(bad()),
            }
        };
        Ok(PortForward {
            host_port: port(host)?,
            vm_port: port(vm)?,
            protocol,
        })
    }
}

impl FromStr for Protocol {
    type Err = NetConfigError;
    fn from_str(s: &str) -> Result<Self, NetConfigError> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(NetConfigError::BadProtocol {
                value: s.to_owned(),
            }),
        }
    }
}

/// Written `TO[:PROTOCOL][:PORTS]`: a network or address, then optionally
/// `tcp` or `udp`, then optionally ports separated by commas, e.g.
/// `192.0.2.0/24`, `192.0.2.7:udp:53`, `198.51.100.0/24:tcp:443,8000-8100`.
impl FromStr for EgressRule {
    type Err = NetConfigError;
    fn from_str(s: &str) -> Result<Self, NetConfigError> {
        let mut parts = s.split(':');
        let to = parts.next().unwrap_or_default();
        let to: Ipv4Cidr = to.parse().map_err(|_| NetConfigError::BadDestination {
            value: to.to_owned(),
        })?;
        let mut rule = EgressRule {
            to,
            protocol: None,
            ports: Vec::new(),
        };
        for part in parts {
            if rule.protocol.is_none() && rule.ports.is_empty() {
                if let Ok(protocol) = part.parse() {
                    rule.protocol = Some(protocol);
                    continue;
                }
            }
            if !rule.ports.is_empty() {
                return Err(NetConfigError::BadEgressRule {
                    value: s.to_owned(),
                });
            }
            rule.ports = part.split(',').map(str::parse).collect::<Result<_, _>>()?;
        }
        Ok(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_and_egress_rules_parse_from_their_short_forms() {
        let forward: PortForward = "8080:80".parse().unwrap();
        assert_eq!(
            forward,
            PortForward {
                host_port: 8080,
                vm_port: 80,
                protocol: Protocol::Tcp
            }
        );
        let forward: PortForward = "5353:53/udp".parse().unwrap();
        assert_eq!(forward.protocol, Protocol::Udp);
        for bad in ["8080", "8080:", ":80", "a:80", "8080:80/icmp", "70000:80"] {
            assert!(
                matches!(
                    bad.parse::<PortForward>(),
                    Err(NetConfigError::BadForward { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!("0:80".parse::<PortForward>(), Err(NetConfigError::ZeroPort));

        let rule: EgressRule = "192.0.2.0/24".parse().unwrap();
        assert_eq!(rule.to.to_string(), "192.0.2.0/24");
        assert_eq!((rule.protocol, rule.ports.len()), (None, 0));
        let rule: EgressRule = "192.0.2.7:udp:53".parse().unwrap();
        assert_eq!(rule.to.to_string(), "192.0.2.7/32");
        assert_eq!(rule.protocol, Some(Protocol::Udp));
        assert_eq!(rule.ports, vec![PortRange::new(53, 53).unwrap()]);
        let rule: EgressRule = "198.51.100.0/24:443,8000-8100".parse().unwrap();
        assert_eq!(rule.protocol, None);
        assert_eq!(rule.ports.len(), 2);
        assert!(matches!(
            "nope:tcp".parse::<EgressRule>(),
            Err(NetConfigError::BadDestination { .. })
        ));
        assert!(matches!(
            "192.0.2.0/24:443:80".parse::<EgressRule>(),
            Err(NetConfigError::BadEgressRule { .. })
        ));
        assert!(matches!(
            "192.0.2.0/24:tcp:http".parse::<EgressRule>(),
            Err(NetConfigError::BadPortRange { .. })
        ));
    }
    fn config(json: &str) -> NetConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_default_is_no_network() {
        let c = config("{}");
        assert_eq!(c, NetConfig::default());
        assert_eq!(c.mode, NetMode::None);
        c.validate().unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"mode":"none"}"#);
    }

    #[test]
    fn a_full_nat_config_round_trips() {
        let c = config(
            r#"{"mode":"nat",
                "egress_allow":[{"to":"192.0.2.0/24","protocol":"tcp","ports":[443,"8000-8100"]},
                                {"to":"198.51.100.53"}],
                "port_forwards":[{"host_port":8080,"vm_port":80},
                                 {"host_port":8080,"vm_port":80,"protocol":"udp"}]}"#,
        );
        c.validate().unwrap();
        let rules = c.egress_allow.as_ref().unwrap();
        assert_eq!(rules[0].ports[1], PortRange::new(8000, 8100).unwrap());
        assert_eq!(rules[1].to.to_string(), "198.51.100.53/32");
        assert_eq!(c.port_forwards[0].protocol, Protocol::Tcp);
        let again: NetConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn unknown_fields_and_modes_are_refused() {
        assert!(serde_json::from_str::<NetConfig>(r#"{"mode":"bridge"}"#).is_err());
        assert!(serde_json::from_str::<NetConfig>(r#"{"mode":"nat","egress":[]}"#).is_err());
    }

    #[test]
    fn allowlists_need_nat() {
        let isolated = config(r#"{"mode":"isolated","egress_allow":[]}"#);
        assert_eq!(isolated.validate(), Err(NetConfigError::AllowlistNeedsNat));
        let none = config(r#"{"egress_allow":[]}"#);
        assert!(matches!(
            none.validate(),
            Err(NetConfigError::NeedsNetwork { .. })
        ));
        let forward = config(r#"{"port_forwards":[{"host_port":1,"vm_port":2}]}"#);
        let err = forward.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "a port forward needs a network: set mode to \"isolated\" or \"nat\""
        );
    }

    #[test]
    fn port_forwards_are_checked() {
        let zero = config(r#"{"mode":"isolated","port_forwards":[{"host_port":0,"vm_port":2}]}"#);
        assert_eq!(zero.validate(), Err(NetConfigError::ZeroPort));
        let twice = config(
            r#"{"mode":"isolated","port_forwards":[{"host_port":9,"vm_port":2},{"host_port":9,"vm_port":3}]}"#,
        );
        assert_eq!(
            twice.validate(),
            Err(NetConfigError::DuplicateHostPort {
                port: 9,
                protocol: Protocol::Tcp
            })
        );
        let many = NetConfig {
            mode: NetMode::Nat,
            egress_allow: None,
            port_forwards: (1..=33)
                .map(|p| PortForward {
                    host_port: p,
                    vm_port: p,
                    protocol: Protocol::Tcp,
                })
                .collect(),
        };
        assert!(matches!(
            many.validate(),
            Err(NetConfigError::TooMany { count: 33, .. })
        ));
    }

    #[test]
    fn port_ranges_parse_strictly() {
        assert_eq!("443".parse::<PortRange>().unwrap().to_string(), "443");
        assert_eq!("1-65535".parse::<PortRange>().unwrap().last(), 65535);
        for bad in ["0", "", "-", "5-4", "1-", "+5", "65536", "1-2-3", " 80"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<PortRange>("0").is_err());
        assert_eq!(serde_json::from_str::<PortRange>("22").unwrap().first(), 22);
    }
}
