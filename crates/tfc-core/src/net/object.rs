//! The objects a VM's network is made of, how they are named and how they are
//! recorded.
//!
//! Every object tfc creates on the host side carries a name of the form
//! `<prefix>-<slot>` (a [`NamePrefix`] and a slot number in lowercase hex), so
//! that start-up reconciliation can recognise leftovers no record owns. A slot
//! is one VM network: its namespace, the host end of its veth pair and its
//! host-side nftables table (port forwards) all share the slot's name; inside
//! the namespace the names are fixed (see [`crate::net::guest`]). The longest
//! name, a 6-character prefix with an 8-digit slot, is 15 bytes: Linux's limit
//! for interface names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest prefix: leaves room for `-` and 8 hex digits in 15 bytes.
pub const MAX_PREFIX_LEN: usize = 6;

/// Why a prefix or a recorded object is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    #[error(
        "network name prefix {value:?} must be 1 to {MAX_PREFIX_LEN} characters, a-z and 0-9, \
         starting with a letter"
    )]
    BadPrefix { value: String },
    #[error("unknown network object kind {kind:?}")]
    UnknownKind { kind: String },
    #[error("a {kind} record {has} a namespace, which it must {must}")]
    Namespace {
        kind: &'static str,
        has: &'static str,
        must: &'static str,
    },
}

/// The prefix of every host-side object name: 1 to 6 characters, `[a-z0-9]`,
/// starting with a letter. No `-`, so that no prefix's names start with
/// another's `<prefix>-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NamePrefix(String);

impl NamePrefix {
    /// The prefix the daemon uses unless configured otherwise.
    pub fn standard() -> Self {
        Self("tfc".to_owned())
    }

    pub fn new(value: impl Into<String>) -> Result<Self, ObjectError> {
        let value = value.into();
        let ok = (1..=MAX_PREFIX_LEN).contains(&value.len())
            && value.starts_with(|c: char| c.is_ascii_lowercase())
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok {
            return Err(ObjectError::BadPrefix { value });
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of slot `slot`: `<prefix>-<slot in hex>`.
    pub fn slot_name(&self, slot: u32) -> String {
        format!("{}-{slot:x}", self.0)
    }

    /// The slot a name belongs to, if it is one of this prefix's slot names.
    pub fn slot_of(&self, name: &str) -> Option<u32> {
        let hex = name.strip_prefix(&self.0)?.strip_prefix('-')?;
        let digits_ok = (1..=8).contains(&hex.len())
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !digits_ok {
            return None;
        }
        u32::from_str_radix(hex, 16).ok()
    }
}

impl fmt::Display for NamePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for NamePrefix {
    type Err = ObjectError;
    fn from_str(s: &str) -> Result<Self, ObjectError> {
        Self::new(s)
    }
}

impl TryFrom<String> for NamePrefix {
    type Error = ObjectError;
    fn try_from(value: String) -> Result<Self, ObjectError> {
        Self::new(value)
    }
}

impl From<NamePrefix> for String {
    fn from(prefix: NamePrefix) -> String {
        prefix.0
    }
}

/// One object created for a VM's network, recorded before it is created so
/// that a crash at any point leaves a record of everything that may exist.
/// Removing an object that does not exist is not an error, so a record may
/// name objects that were never made.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NetObject {
    /// A named network namespace, bind-mounted at `/run/netns/<name>`.
    Namespace { name: String },
    /// A veth pair, by the name of its end in the host namespace. Its other
    /// end lives in a VM namespace; deleting either end deletes both.
    Veth { name: String },
    /// A persistent tap device inside a namespace.
    Tap { namespace: String, name: String },
    /// An nftables table of family `ip`: in the host namespace when
    /// `namespace` is `None`, else in that namespace.
    NftTable {
        namespace: Option<String>,
        name: String,
    },
}

impl NetObject {
    /// The kinds, as [`NetObject::kind`] names them.
    pub const KINDS: [&'static str; 4] = ["namespace", "veth", "tap", "nft_table"];

    pub fn kind(&self) -> &'static str {
        match self {
            NetObject::Namespace { .. } => "namespace",
            NetObject::Veth { .. } => "veth",
            NetObject::Tap { .. } => "tap",
            NetObject::NftTable { .. } => "nft_table",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            NetObject::Namespace { name }
            | NetObject::Veth { name }
            | NetObject::Tap { name, .. }
            | NetObject::NftTable { name, .. } => name,
        }
    }

    /// The namespace the object lives in, when that is not the host's.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            NetObject::Tap { namespace, .. } => Some(namespace),
            NetObject::NftTable { namespace, .. } => namespace.as_deref(),
            NetObject::Namespace { .. } | NetObject::Veth { .. } => None,
        }
    }

    /// Rebuilds an object from its kind, name and namespace, as a store keeps them.
    pub fn from_parts(
        kind: &str,
        name: String,
        namespace: Option<String>,
    ) -> Result<Self, ObjectError> {
        let refuse = |kind, has, must| Err(ObjectError::Namespace { kind, has, must });
        match (kind, namespace) {
            ("namespace", None) => Ok(NetObject::Namespace { name }),
            ("veth", None) => Ok(NetObject::Veth { name }),
            ("tap", Some(namespace)) => Ok(NetObject::Tap { namespace, name }),
            ("nft_table", namespace) => Ok(NetObject::NftTable { namespace, name }),
            ("namespace", Some(_)) => refuse("namespace", "has", "not have"),
            ("veth", Some(_)) => refuse("veth", "has", "not have"),
            ("tap", None) => refuse("tap", "lacks", "have"),
            (other, _) => Err(ObjectError::UnknownKind {
                kind: other.to_owned(),
            }),
        }
    }
}

impl fmt::Display for NetObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.namespace() {
            Some(ns) => write!(f, "{} {} in namespace {ns}", self.kind(), self.name()),
            None => write!(f, "{} {}", self.kind(), self.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_short_and_plain() {
        for ok in ["tfc", "a", "t1b2c3"] {
            NamePrefix::new(ok).unwrap();
        }
        for bad in ["", "1tfc", "tfc-a", "Tfc", "toolong", "t_c"] {
            assert!(NamePrefix::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn slot_names_fit_an_interface_name_and_parse_back() {
        let p = NamePrefix::new("abcdef").unwrap();
        let longest = p.slot_name(u32::MAX);
        assert_eq!(longest, "abcdef-ffffffff");
        assert!(longest.len() <= 15);
        assert_eq!(p.slot_of(&longest), Some(u32::MAX));
        let tfc = NamePrefix::standard();
        assert_eq!(tfc.slot_name(26), "tfc-1a");
        assert_eq!(tfc.slot_of("tfc-1a"), Some(26));
        for foreign in [
            "tfc",
            "tfc-",
            "tfc-1A",
            "tfc-1g",
            "tfcx-1",
            "tfc-123456789",
            "xtfc-1",
        ] {
            assert_eq!(tfc.slot_of(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn objects_rebuild_from_their_parts() {
        let objects = [
            NetObject::Namespace {
                name: "tfc-1".into(),
            },
            NetObject::Veth {
                name: "tfc-1".into(),
            },
            NetObject::Tap {
                namespace: "tfc-1".into(),
                name: "tap0".into(),
            },
            NetObject::NftTable {
                namespace: None,
                name: "tfc-1".into(),
            },
            NetObject::NftTable {
                namespace: Some("tfc-1".into()),
                name: "tfc".into(),
            },
        ];
        for object in objects {
            assert!(NetObject::KINDS.contains(&object.kind()));
            let rebuilt = NetObject::from_parts(
                object.kind(),
                object.name().to_owned(),
                object.namespace().map(str::to_owned),
            );
            assert_eq!(rebuilt.as_ref(), Ok(&object));
            let json = serde_json::to_string(&object).unwrap();
            assert_eq!(serde_json::from_str::<NetObject>(&json).unwrap(), object);
        }
        assert!(NetObject::from_parts("tap", "tap0".into(), None).is_err());
        assert!(NetObject::from_parts("veth", "v".into(), Some("ns".into())).is_err());
        assert_eq!(
            NetObject::from_parts("bridge", "br0".into(), None),
            Err(ObjectError::UnknownKind {
                kind: "bridge".into()
            })
        );
    }
}
