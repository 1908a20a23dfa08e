//! This host's CPU identity, read from `/proc/cpuinfo` (parsed and compared
//! by [`tfc_core::cpu`]).

use std::io;

pub use tfc_core::cpu::{parse, CpuIdentity, CpuMismatch};

/// This host's CPU.
pub fn read() -> io::Result<CpuIdentity> {
    let text = std::fs::read_to_string("/proc/cpuinfo")?;
    parse(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "/proc/cpuinfo lacks vendor_id, cpu family, model or flags",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn this_host_is_readable_and_compatible_with_itself() {
        let here = read().expect("/proc/cpuinfo parses on x86_64");
        assert!(!here.vendor.is_empty());
        assert!(here.flags.iter().any(|f| f == "sse2"), "{here:?}");
        assert_eq!(here.compatibility(&here), Ok(()));
    }
}
