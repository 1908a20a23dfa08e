//! Identifiers. Both kinds end up in file names and URLs, so their alphabet is
//! restricted to characters that are safe in both: `[a-z0-9_-]`, at most 64 long,
//! starting with a letter or digit. That rules out path traversal by construction.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest identifier accepted.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {MAX_ID_LEN} characters")]
    TooLong { kind: &'static str },
    #[error("{kind} {value:?} may contain only a-z, 0-9, '-' and '_', and must start with a letter or digit")]
    BadCharacter { kind: &'static str, value: String },
}

fn validate(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { kind });
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    let first_ok = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok || !value.chars().all(allowed) {
        return Err(IdError::BadCharacter {
            kind,
            value: value.to_owned(),
        });
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `value` as this kind of identifier.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate($kind, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
    };
}

identifier!(
    /// Identifier of one VM, e.g. `vm-3f9c2a7b01de`.
    VmId,
    "VM id"
);
identifier!(
    /// Name of a VM type from the configuration, e.g. `default`.
    VmTypeName,
    "VM type name"
);

identifier!(
    /// Identifier of one snapshot, e.g. `snap-3f9c2a7b01de`.
    SnapshotId,
    "snapshot id"
);

fn from_random(prefix: &str, bytes: [u8; 6]) -> String {
    let mut s = String::from(prefix);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl VmId {
    /// Builds an id from random bytes supplied by the caller (the domain does no I/O).
    pub fn from_random(bytes: [u8; 6]) -> Self {
        Self(from_random("vm-", bytes))
    }
}

impl SnapshotId {
    /// Builds an id from random bytes supplied by the caller.
    pub fn from_random(bytes: [u8; 6]) -> Self {
        Self(from_random("snap-", bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_ids_and_rejects_traversal() {
        assert!(VmId::new("vm-0a1b2c").is_ok());
        assert!(VmTypeName::new("default").is_ok());
        for bad in ["", "../etc", "a/b", "-lead", "UPPER", "sp ace", "dot.ted"] {
            assert!(VmId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            VmId::new("x".repeat(65)),
            Err(IdError::TooLong { kind: "VM id" })
        );
    }

    #[test]
    fn random_ids_are_well_formed() {
        let id = VmId::from_random([0, 1, 0xab, 0xcd, 0xef, 0xff]);
        assert_eq!(id.as_str(), "vm-0001abcdefff");
        assert!(VmId::new(id.as_str()).is_ok());
    }

    #[test]
    fn serde_rejects_invalid_ids() {
        let r: Result<VmId, _> = serde_json::from_str("\"../../x\"");
        assert!(r.is_err());
    }
}
