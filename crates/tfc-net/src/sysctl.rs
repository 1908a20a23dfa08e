//! Network sysctls of one namespace. `/proc/sys/net` shows the namespace of
//! the thread that opens the file, so callers run these inside the namespace
//! they mean ([`crate::netns::Netns::run`]).

use std::io;
use std::path::PathBuf;

/// Why a sysctl could not be read or set.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("cannot set {key} to {value}")]
    Write {
        key: String,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {key}")]
    Read {
        key: String,
        #[source]
        source: io::Error,
    },
}

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Sets `key` (dotted, e.g. `net.ipv4.ip_forward`) to `value`.
pub fn set(key: &str, value: &str) -> Result<(), SysctlError> {
    std::fs::write(path(key), value).map_err(|source| SysctlError::Write {
        key: key.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// Reads `key`, trimmed.
pub fn get(key: &str) -> Result<String, SysctlError> {
    std::fs::read_to_string(path(key))
        .map(|v| v.trim().to_owned())
        .map_err(|source| SysctlError::Read {
            key: key.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn dotted_keys_map_to_proc_paths() {
        assert_eq!(
            super::path("net.ipv4.conf.all.rp_filter"),
            std::path::Path::new("/proc/sys/net/ipv4/conf/all/rp_filter")
        );
    }
}
