//! The guest profile: what differs between a host with real KVM and a host
//! that is itself a microVM (`kvm_pvm`), where the guest kernel runs mostly
//! inside the host's instruction emulator.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Boot arguments every profile uses. `quiet` is deliberately absent: the
/// kernel's `Run /init as init process` console line is the readiness marker.
const BASE_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off";

/// The emulator on `kvm_pvm` hosts lacks XSAVE, FSGSBASE, POPCNT and SMAP
/// support good enough for a booting kernel, and probing the extra 8250 UARTs
/// costs seconds of emulated port I/O each.
const NESTED_BOOT_ARGS: &str = "noxsave nofsgsbase clearcpuid=popcnt,smap 8250.nr_uarts=1";

/// Which guest kernel and init the assets are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Real hardware virtualization (`kvm_intel`, `kvm_amd`).
    Default,
    /// A host whose `/dev/kvm` comes from `kvm_pvm`: patched kernel, extra boot
    /// args, and an init that makes no system calls.
    Nested,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::Nested => "nested",
        }
    }

    /// The kernel command line for this profile, starting `init` as PID 1.
    /// Firecracker appends `root=` and the `virtio_mmio.device=` entries itself.
    pub fn boot_args_with_init(self, init: &str) -> String {
        let mut args = format!("{BASE_BOOT_ARGS} init={init}");
        if self == Profile::Nested {
            args.push(' ');
            args.push_str(NESTED_BOOT_ARGS);
        }
        args
    }

    /// The default kernel command line recorded in the asset manifest.
    pub fn boot_args(self) -> String {
        self.boot_args_with_init("/init")
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The user typed a profile name that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("unknown profile `{0}`: use `default` (real KVM) or `nested` (kvm_pvm hosts)")]
pub struct ParseProfileError(String);

impl FromStr for Profile {
    type Err = ParseProfileError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "default" => Ok(Profile::Default),
            "nested" => Ok(Profile::Nested),
            _ => Err(ParseProfileError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_args_per_profile() {
        assert_eq!(
            Profile::Default.boot_args(),
            "console=ttyS0 reboot=k panic=1 pci=off init=/init"
        );
        assert_eq!(
            Profile::Nested.boot_args_with_init("/init.sh"),
            "console=ttyS0 reboot=k panic=1 pci=off init=/init.sh \
             noxsave nofsgsbase clearcpuid=popcnt,smap 8250.nr_uarts=1"
        );
    }

    #[test]
    fn parses_names() {
        assert_eq!("Nested".parse::<Profile>().ok(), Some(Profile::Nested));
        assert_eq!("default".parse::<Profile>().ok(), Some(Profile::Default));
        let err = "pvm".parse::<Profile>().err().map(|e| e.to_string());
        assert!(err.is_some_and(|m| m.contains("use `default`")));
    }
}
