//! The kernel command line: the `tfc.` parameters the agent reads as PID 1.
//!
//! | parameter | meaning | default |
//! |---|---|---|
//! | `tfc.agent_port=N` | vsock port the agent listens on | [`DEFAULT_AGENT_PORT`] |
//! | `tfc.hostname=NAME` | the guest's hostname | [`DEFAULT_HOSTNAME`] |
//! | `tfc.ip=ADDRESS/PREFIX` | IPv4 address of `tfc.iface` at boot | none: the interface is left alone |
//! | `tfc.gw=ADDRESS` | default route (with `tfc.ip`) | none |
//! | `tfc.dns=ADDRESS[,ADDRESS...]` | `/etc/resolv.conf` (with `tfc.ip`) | left alone |
//! | `tfc.iface=NAME` | the interface `tfc.ip` configures | `eth0` |
//!
//! The kernel's own `ip=` (IP_PNP) configures the interface before init
//! runs; when it is present the agent leaves networking to it and ignores
//! `tfc.ip`. Dotted parameters are not passed to init as arguments or
//! environment, so the agent reads them from `/proc/cmdline`.
//!
//! A bad value never stops the boot: it is reported as a [`CmdlineWarning`]
//! and the default is used, since PID 1 failing takes the kernel down with it.

use crate::network::{InterfaceConfig, NetworkError};

/// The vsock port the agent serves on unless `tfc.agent_port` says otherwise;
/// the same as `tfc_core::spec::DEFAULT_AGENT_PORT` (kept as a constant here
/// so the guest binary does not depend on the host's domain crate).
pub const DEFAULT_AGENT_PORT: u32 = 1024;

/// The hostname unless `tfc.hostname` says otherwise.
pub const DEFAULT_HOSTNAME: &str = "tfc";

/// The interface `tfc.ip` configures unless `tfc.iface` says otherwise.
pub const DEFAULT_INTERFACE: &str = "eth0";

/// The longest hostname the kernel takes (`__NEW_UTS_LEN`).
pub const MAX_HOSTNAME: usize = 64;

/// What PID 1 takes from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    pub agent_port: u32,
    pub hostname: String,
    /// The interface to configure at boot (`tfc.ip` and friends).
    pub network: Option<InterfaceConfig>,
    /// The kernel's `ip=` is present: it configured networking already.
    pub kernel_ip: bool,
}

impl Default for BootParams {
    fn default() -> Self {
        BootParams {
            agent_port: DEFAULT_AGENT_PORT,
            hostname: DEFAULT_HOSTNAME.into(),
            network: None,
            kernel_ip: false,
        }
    }
}

/// A parameter that was ignored, and why.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineWarning {
    #[error(
        "tfc.agent_port={0:?} is not a port number (1 to 4294967294); using {DEFAULT_AGENT_PORT}"
    )]
    AgentPort(String),
    #[error("tfc.hostname={0:?} is not a hostname (1 to {MAX_HOSTNAME} letters, digits, '-' and '.'); using {DEFAULT_HOSTNAME:?}")]
    Hostname(String),
    #[error("tfc.ip and friends ignored")]
    Network(#[source] NetworkError),
    #[error("{0} ignored: it needs tfc.ip")]
    WithoutAddress(&'static str),
    #[error("tfc.ip ignored: the kernel's ip= configured networking already")]
    KernelIp,
    #[error("unknown parameter {0:?} ignored")]
    Unknown(String),
}

/// Whether `name` is a hostname the agent sets: what RFC 1123 allows, so
/// nothing in the guest trips over it.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HOSTNAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
}

/// Reads the parameters from the text of `/proc/cmdline`.
pub fn parse(text: &str) -> (BootParams, Vec<CmdlineWarning>) {
    let mut params = BootParams::default();
    let mut warnings = Vec::new();
    let (mut ip, mut gw, mut dns, mut iface) = (None, None, None, None);
    // Everything after a lone `--` is for init's argv, not parameters.
    for word in text.split_whitespace().take_while(|word| *word != "--") {
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        match key {
            "ip" => params.kernel_ip = true,
            "tfc.agent_port" => match value.parse::<u32>() {
                // VMADDR_PORT_ANY (u32::MAX) would let the kernel pick one.
                Ok(port) if port != 0 && port != u32::MAX => params.agent_port = port,
                _ => warnings.push(CmdlineWarning::AgentPort(value.into())),
            },
            "tfc.hostname" if valid_hostname(value) => params.hostname = value.into(),
            "tfc.hostname" => warnings.push(CmdlineWarning::Hostname(value.into())),
            "tfc.ip" => ip = Some(value),
            "tfc.gw" => gw = Some(value),
            "tfc.dns" => dns = Some(value),
            "tfc.iface" => iface = Some(value),
            other if other.starts_with("tfc.") => {
                warnings.push(CmdlineWarning::Unknown(word.into()))
            }
            _ => {}
        }
    }
    match ip {
        Some(_) if params.kernel_ip => warnings.push(CmdlineWarning::KernelIp),
        Some(address) => {
            let nameservers: Vec<String> = dns
                .map(|list| {
                    list.split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            match InterfaceConfig::parse(
                iface.unwrap_or(DEFAULT_INTERFACE),
                address,
                gw,
                &nameservers,
            ) {
                Ok(config) => params.network = Some(config),
                Err(e) => warnings.push(CmdlineWarning::Network(e)),
            }
        }
        None => {
            for (given, name) in [(gw, "tfc.gw"), (dns, "tfc.dns"), (iface, "tfc.iface")] {
                if given.is_some() {
                    warnings.push(CmdlineWarning::WithoutAddress(name));
                }
            }
        }
    }
    (params, warnings)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn defaults_without_tfc_parameters() {
        let (params, warnings) = parse("console=ttyS0 reboot=k panic=1 root=/dev/vda ro\n");
        assert_eq!(params, BootParams::default());
        assert!(warnings.is_empty());
        assert_eq!(params.agent_port, 1024);
        assert_eq!(params.hostname, "tfc");
    }

    #[test]
    fn reads_port_hostname_and_network() {
        let (params, warnings) = parse(
            "console=ttyS0 tfc.agent_port=5000 tfc.hostname=vm-7.local \
             tfc.ip=10.0.0.2/24 tfc.gw=10.0.0.1 tfc.dns=10.0.0.1,9.9.9.9 -- tfc.hostname=argv",
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(params.agent_port, 5000);
        assert_eq!(params.hostname, "vm-7.local");
        let network = params.network.unwrap();
        assert_eq!(network.interface, "eth0");
        assert_eq!(network.address, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(network.prefix, 24);
        assert_eq!(network.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(network.nameservers.len(), 2);
    }

    #[test]
    fn bad_values_warn_and_keep_defaults() {
        let (params, warnings) = parse(
            "tfc.agent_port=0 tfc.hostname=-bad tfc.ip=10.0.0.2 tfc.colour=blue tfc.agent_port=x",
        );
        assert_eq!(params.agent_port, DEFAULT_AGENT_PORT);
        assert_eq!(params.hostname, DEFAULT_HOSTNAME);
        assert_eq!(params.network, None);
        assert_eq!(warnings.len(), 5, "{warnings:?}");
        assert!(matches!(warnings[0], CmdlineWarning::AgentPort(_)));
        assert!(matches!(warnings[1], CmdlineWarning::Hostname(_)));
        assert!(matches!(warnings[2], CmdlineWarning::Unknown(_)));
        assert!(matches!(warnings[4], CmdlineWarning::Network(_)));
    }

    #[test]
    fn the_kernels_ip_wins_over_tfc_ip() {
        let (params, warnings) =
            parse("ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off tfc.ip=10.0.0.9/24");
        assert!(params.kernel_ip);
        assert_eq!(params.network, None);
        assert!(
            matches!(warnings[..], [CmdlineWarning::KernelIp]),
            "{warnings:?}"
        );
    }

    #[test]
    fn gateway_without_address_is_reported() {
        let (params, warnings) = parse("tfc.gw=10.0.0.1");
        assert_eq!(params.network, None);
        assert!(
            matches!(warnings[..], [CmdlineWarning::WithoutAddress("tfc.gw")]),
            "{warnings:?}"
        );
    }

    #[test]
    fn hostnames() {
        assert!(valid_hostname("tfc"));
        assert!(valid_hostname("a-b.c9"));
        assert!(!valid_hostname(""));
        assert!(!valid_hostname("has space"));
        assert!(!valid_hostname(".lead"));
        assert!(!valid_hostname(&"x".repeat(65)));
    }
}
