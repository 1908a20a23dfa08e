//! What a VM is made of. A [`VmSpec`] is fully resolved: the daemon merges the VM
//! type from the configuration with the caller's overrides before building one, so
//! everything downstream works from a single validated value.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::id::VmTypeName;
use crate::limits::{LimitError, RateLimits};
use crate::net::{NetConfig, NetConfigError, NetMode};

/// Firecracker accepts 1 to 32 vCPUs.
pub const MAX_VCPUS: u8 = 32;
/// Smallest guest memory that boots the project's kernel with room to spare.
pub const MIN_MEMORY_MIB: u32 = 32;
/// Upper bound on guest memory for one VM (64 GiB).
pub const MAX_MEMORY_MIB: u32 = 65_536;
/// The x86 kernel command line holds at most 2048 bytes, and Firecracker appends
/// its own device entries, so callers get less than that.
pub const MAX_BOOT_ARGS_LEN: usize = 1536;

/// How the daemon decides that a booted VM is Ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Readiness {
    /// A line of the serial console contains this text (by default the kernel's
    /// `Run /init as init process`, printed just before it starts init).
    ConsoleLine { contains: String },
    /// The guest agent answers a `ping` on this vsock port (the agent runs as
    /// the guest's init). A VM with this readiness also gets the identity
    /// fix-up (clock, entropy) after every restore.
    Agent { port: u32 },
}

/// Where the built root filesystems hold the guest agent; a VM whose readiness
/// is the agent boots with `init=` this path.
pub const AGENT_INIT: &str = "/sbin/tfc-agent";

/// The guest agent's vsock port unless the VM type names another.
pub const DEFAULT_AGENT_PORT: u32 = 1024;

/// Which VMM runs a VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Vmm {
    /// Firecracker on KVM.
    #[default]
    Firecracker,
    /// QEMU's `microvm` machine under TCG software emulation: the same kernel,
    /// rootfs and agent with no hardware virtualization, much slower, and no
    /// snapshots.
    QemuTcg,
}

impl Vmm {
    pub fn as_str(self) -> &'static str {
        match self {
            Vmm::Firecracker => "firecracker",
            Vmm::QemuTcg => "qemu-tcg",
        }
    }

    /// Whether VMs on this VMM can be snapshotted (and so restored, and kept
    /// in pools, which restore templates).
    pub fn takes_snapshots(self) -> bool {
        match self {
            Vmm::Firecracker => true,
            Vmm::QemuTcg => false,
        }
    }
}

impl std::str::FromStr for Vmm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Vmm::Firecracker, Vmm::QemuTcg]
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown backend {s:?}: use firecracker or qemu-tcg"))
    }
}

impl std::fmt::Display for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the kernel prints as it starts the guest's init, whichever it is.
pub const INIT_STARTED_LINE: &str = "as init process";

impl Readiness {
    /// The console text a boot waits for first: the configured line, or for an
    /// agent VM the kernel starting its init (the agent's `ping` follows).
    pub fn console_marker(&self) -> &str {
        match self {
            Readiness::ConsoleLine { contains } => contains,
            Readiness::Agent { .. } => INIT_STARTED_LINE,
        }
    }

    /// The agent's vsock port, for VMs whose readiness is the agent.
    pub fn agent_port(&self) -> Option<u32> {
        match self {
            Readiness::ConsoleLine { .. } => None,
            Readiness::Agent { port } => Some(*port),
        }
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::ConsoleLine {
            contains: "Run /init as init process".to_owned(),
        }
    }
}

/// A complete description of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmSpec {
    /// The VM type this spec was resolved from.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub vm_type: VmTypeName,
    pub vcpus: u8,
    pub memory_mib: u32,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub kernel: PathBuf,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub rootfs: PathBuf,
    pub boot_args: String,
    pub readiness: Readiness,
    /// Track dirty guest pages from boot, which diff snapshots need (costs a
    /// little on every guest write fault).
    #[serde(default)]
    pub diff_snapshots: bool,
    /// Attach a vsock device (the host side is a socket in the VM's directory).
    #[serde(default)]
    pub vsock: bool,
    /// The VMM that runs this VM.
    #[serde(default)]
    pub vmm: Vmm,
    /// The VM's network as asked for; absent for no network interface (mode
    /// `none` is never stored here). A snapshot carries it, so every VM
    /// restored from one gets a network like its template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetConfig>,
    /// I/O limits of the network interface and the root drive (none: no
    /// limit); changeable while the VM runs.
    #[serde(default, skip_serializing_if = "RateLimits::is_empty")]
    pub rate_limits: RateLimits,
}

/// Why a spec is not acceptable. Each variant names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Vcpus(u8),
    #[error("memory_mib must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB}, got {0}")]
    Memory(u32),
    #[error("boot_args is longer than {MAX_BOOT_ARGS_LEN} bytes")]
    BootArgsTooLong,
    #[error("boot_args must be printable ASCII on one line")]
    BootArgsCharacters,
    #[error("boot_args must not declare devices ({0:?}); devices come from the VM type")]
    BootArgsDevice(String),
    #[error("readiness text must not be empty")]
    EmptyReadiness,
    #[error("boot_args {0:?} would hide the kernel's console messages, and readiness is read from the console; remove it")]
    HidesReadiness(String),
    #[error("agent port must be between 1 and 4294967294, got {0}")]
    AgentPort(u32),
    #[error("the guest agent needs the VM's vsock device")]
    AgentWithoutVsock,
    #[error("network mode none is written as no network")]
    NetworkNone,
    #[error("invalid network")]
    Network(#[source] NetConfigError),
    #[error("invalid rate limits")]
    RateLimits(#[source] LimitError),
    #[error("VMs on {0} have no rate limits: use the firecracker backend, or no limits")]
    RateLimitsVmm(Vmm),
    #[error("net_rx and net_tx limits need a network: give the VM one, or limit only the disk")]
    NetLimitWithoutNetwork,
}

impl VmSpec {
    /// Checks every field against the limits above.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(SpecError::Vcpus(self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(SpecError::Memory(self.memory_mib));
        }
        validate_boot_args(&self.boot_args)?;
        match &self.readiness {
            Readiness::ConsoleLine { contains } if contains.is_empty() => {
                Err(SpecError::EmptyReadiness)
            }
            Readiness::ConsoleLine { .. } => match console_silencer(&self.boot_args) {
                Some(word) => Err(SpecError::HidesReadiness(word.to_owned())),
                None => Ok(()),
            },
            Readiness::Agent { port } if *port == 0 || *port == u32::MAX => {
                Err(SpecError::AgentPort(*port))
            }
            Readiness::Agent { .. } if !self.vsock => Err(SpecError::AgentWithoutVsock),
            Readiness::Agent { .. } => Ok(()),
        }?;
        if let Some(network) = &self.network {
            if network.mode == NetMode::None {
                return Err(SpecError::NetworkNone);
            }
            network.validate().map_err(SpecError::Network)?;
        }
        self.rate_limits.validate().map_err(SpecError::RateLimits)?;
        if !self.rate_limits.is_empty() && self.vmm != Vmm::Firecracker {
            return Err(SpecError::RateLimitsVmm(self.vmm));
        }
        let net_limited = [self.rate_limits.net_rx, self.rate_limits.net_tx]
            .iter()
            .any(|l| l.is_some_and(|l| !l.is_unlimited()));
        if net_limited && self.network.is_none() {
            return Err(SpecError::NetLimitWithoutNetwork);
        }
        Ok(())
    }
}

/// The first boot argument that would keep the kernel's informational messages
/// (its "Run /init" line is KERN_INFO, level 6) off the console: `quiet`, or a
/// `loglevel` below 7.
pub fn console_silencer(args: &str) -> Option<&str> {
    args.split_whitespace().find(|word| {
        *word == "quiet"
            || word
                .strip_prefix("loglevel=")
                .is_some_and(|level| level.parse::<u8>().map_or(true, |n| n < 7))
    })
}

/// Boot arguments may tune the kernel but may not add devices behind the VMM's back.
pub fn validate_boot_args(args: &str) -> Result<(), SpecError> {
    if args.len() > MAX_BOOT_ARGS_LEN {
        return Err(SpecError::BootArgsTooLong);
    }
    if !args.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
        return Err(SpecError::BootArgsCharacters);
    }
    if let Some(word) = args
        .split_whitespace()
        .find(|w| w.starts_with("virtio_mmio.device="))
    {
        return Err(SpecError::BootArgsDevice(word.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            vm_type: VmTypeName::new("default").unwrap(),
            vcpus: 1,
            memory_mib: 128,
            kernel: "/k".into(),
            rootfs: "/r".into(),
            boot_args: "console=ttyS0 reboot=k panic=1".into(),
            readiness: Readiness::default(),
            diff_snapshots: false,
            vsock: true,
            vmm: Vmm::Firecracker,
            network: None,
            rate_limits: RateLimits::default(),
        }
    }

    #[test]
    fn valid_spec_passes() {
        assert_eq!(spec().validate(), Ok(()));
        let mut verbose = spec();
        verbose.boot_args.push_str(" loglevel=8");
        assert_eq!(verbose.validate(), Ok(()));
    }

    #[test]
    fn each_limit_is_enforced() {
        type Mutation = fn(&mut VmSpec);
        let cases: Vec<(Mutation, SpecError)> = vec![
            (|s| s.vcpus = 0, SpecError::Vcpus(0)),
            (|s| s.vcpus = 33, SpecError::Vcpus(33)),
            (|s| s.memory_mib = 8, SpecError::Memory(8)),
            (|s| s.memory_mib = 70_000, SpecError::Memory(70_000)),
            (
                |s| s.boot_args = "a".repeat(2000),
                SpecError::BootArgsTooLong,
            ),
            (
                |s| s.boot_args = "x\ny".into(),
                SpecError::BootArgsCharacters,
            ),
            (
                |s| s.boot_args = "quiet virtio_mmio.device=4K@0xd0000000:5".into(),
                SpecError::BootArgsDevice("virtio_mmio.device=4K@0xd0000000:5".into()),
            ),
            (
                |s| {
                    s.readiness = Readiness::ConsoleLine {
                        contains: String::new(),
                    }
                },
                SpecError::EmptyReadiness,
            ),
            (
                |s| s.boot_args.push_str(" quiet"),
                SpecError::HidesReadiness("quiet".into()),
            ),
            (
                |s| s.boot_args.push_str(" loglevel=4"),
                SpecError::HidesReadiness("loglevel=4".into()),
            ),
        ];
        for (mutate, expected) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert_eq!(s.validate(), Err(expected));
        }
    }
}
