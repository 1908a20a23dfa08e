//! The project's kernel config fragment and the check that the kernel's
//! `olddefconfig` kept it: Kconfig silently drops an enabled option whose
//! dependencies are off, and silently re-enables defaults we turned off.

use std::collections::HashMap;

/// Options set on top of `tinyconfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    pub enable: &'static [&'static str],
    pub disable: &'static [&'static str],
}

/// The guest kernel: serial console, virtio-mmio block/net/vsock, ext4, the
/// pieces a busybox userspace needs, and as little else as boots.
pub const GUEST: Fragment = Fragment {
    enable: &[
        "64BIT",
        "SMP",
        "PRINTK",
        "TTY",
        "SERIAL_8250",
        "SERIAL_8250_CONSOLE",
        "HYPERVISOR_GUEST",
        "PARAVIRT",
        "KVM_GUEST",
        "BLOCK",
        "BLK_DEV",
        // VIRTIO_MMIO hides behind this menu; without it olddefconfig drops
        // every virtio option below.
        "VIRTIO_MENU",
        "VIRTIO",
        "VIRTIO_MMIO",
        // Firecracker describes its devices on the kernel command line.
        "VIRTIO_MMIO_CMDLINE_DEVICES",
        "VIRTIO_BLK",
        "NET",
        "NETDEVICES",
        "NET_CORE",
        "VIRTIO_NET",
        "INET",
        "UNIX",
        "PACKET",
        "VSOCKETS",
        "VIRTIO_VSOCKETS",
        "EXT4_FS",
        "BINFMT_ELF",
        "BINFMT_SCRIPT",
        "DEVTMPFS",
        "DEVTMPFS_MOUNT",
        "PROC_FS",
        "SYSFS",
        "SHMEM",
        "TMPFS",
        "FUTEX",
        "EPOLL",
        // tokio (the guest agent) wakes its reactor through an eventfd; the
        // rest are what ordinary userspace (a Debian guest) expects of Linux.
        "EVENTFD",
        "SIGNALFD",
        "TIMERFD",
        "FILE_LOCKING",
        "INOTIFY_USER",
        "POSIX_TIMERS",
        "MULTIUSER",
        "IP_PNP",
        // Ptys for a guest agent's interactive exec.
        "UNIX98_PTYS",
    ],
    disable: &[
        "MODULES",
        "ACPI",
        "PCI",
        // The KVM PTP clock's clock-pairing hypercall spins forever on
        // kvm_pvm hosts; PTP and PPS would pull it back in.
        "PTP_1588_CLOCK_KVM",
        "PTP_1588_CLOCK",
        "PPS",
        // No keyboard or framebuffer in a microVM; probing them costs boot time.
        "VT",
        "INPUT",
        "SERIO",
        // pty_init registers 256 legacy pty pairs: measured 32 s of a 68 s
        // boot on a kvm_pvm host (`initcall_debug`).
        "LEGACY_PTYS",
        // inet6_init + sit_init: 1.5 s there; guests are addressed over IPv4.
        "IPV6",
    ],
};

/// An option's value after `olddefconfig` differs from the fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub option: &'static str,
    pub wanted: bool,
    /// `y`, `m`, a value, or `None` when the option is unset or absent.
    pub found: Option<String>,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let wanted = if self.wanted { "y" } else { "off" };
        let found = self.found.as_deref().unwrap_or("not set");
        write!(f, "CONFIG_{} wanted {wanted}, found {found}", self.option)
    }
}

impl Fragment {
    /// The fragment as `.config` text; part of the kernel cache key.
    pub fn text(&self) -> String {
        let mut text = String::new();
        for o in self.enable {
            text.push_str(&format!("CONFIG_{o}=y\n"));
        }
        for o in self.disable {
            text.push_str(&format!("# CONFIG_{o} is not set\n"));
        }
        text
    }

    /// Arguments for the kernel's `scripts/config --file .config`.
    pub fn script_args(&self) -> Vec<String> {
        let enable = self.enable.iter().map(|o| ("--enable", o));
        let disable = self.disable.iter().map(|o| ("--disable", o));
        enable
            .chain(disable)
            .flat_map(|(flag, o)| [flag.to_string(), o.to_string()])
            .collect()
    }

    /// Every option whose value in `config` (a `.config` text) differs from
    /// the fragment. Modules count as off: the guest kernel loads none.
    pub fn verify(&self, config: &str) -> Vec<Mismatch> {
        let values = parse_config(config);
        let on = |o: &str| values.get(o).map(String::as_str) == Some("y");
        let found = |o: &str| values.get(o).cloned();
        let mut bad = Vec::new();
        for &o in self.enable {
            if !on(o) {
                bad.push(Mismatch {
                    option: o,
                    wanted: true,
                    found: found(o),
                });
            }
        }
        for &o in self.disable {
            if let Some(v) = found(o) {
                bad.push(Mismatch {
                    option: o,
                    wanted: false,
                    found: Some(v),
                });
            }
        }
        bad
    }
}

/// Option name (without `CONFIG_`) to value, for options that are set.
/// `# CONFIG_X is not set` and absent options are both "not set".
pub fn parse_config(config: &str) -> HashMap<String, String> {
    config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("CONFIG_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: Fragment = Fragment {
        enable: &["VIRTIO_MMIO", "VIRTIO_MMIO_CMDLINE_DEVICES", "PRINTK"],
        disable: &["PTP_1588_CLOCK_KVM", "MODULES", "ACPI"],
    };

    #[test]
    fn text_and_script_args() {
        assert_eq!(
            SAMPLE.text(),
            "CONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\nCONFIG_PRINTK=y\n\
             # CONFIG_PTP_1588_CLOCK_KVM is not set\n# CONFIG_MODULES is not set\n\
             # CONFIG_ACPI is not set\n"
        );
        let args = SAMPLE.script_args();
        assert_eq!(&args[..2], ["--enable", "VIRTIO_MMIO"]);
        assert_eq!(&args[6..8], ["--disable", "PTP_1588_CLOCK_KVM"]);
        assert_eq!(args.len(), 12);
    }

    #[test]
    fn accepts_a_config_that_kept_the_fragment() {
        let config = "#\n# Automatically generated file; DO NOT EDIT.\n#\n\
            CONFIG_CC_VERSION_TEXT=\"gcc (Debian 12.2.0-14) 12.2.0\"\n\
            CONFIG_PRINTK=y\nCONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\n\
            # CONFIG_MODULES is not set\n# CONFIG_PTP_1588_CLOCK_KVM is not set\n";
        assert_eq!(SAMPLE.verify(config), Vec::new());
    }

    #[test]
    fn reports_dropped_and_resurrected_options() {
        // What olddefconfig does when VIRTIO_MENU is off and something
        // selects the KVM PTP clock.
        let config = "CONFIG_PRINTK=y\n# CONFIG_VIRTIO_MMIO is not set\n\
            CONFIG_PTP_1588_CLOCK_KVM=y\nCONFIG_ACPI=m\n";
        let bad = SAMPLE.verify(config);
        let shown: Vec<String> = bad.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "CONFIG_VIRTIO_MMIO wanted y, found not set",
                "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES wanted y, found not set",
                "CONFIG_PTP_1588_CLOCK_KVM wanted off, found y",
                "CONFIG_ACPI wanted off, found m",
            ]
        );
    }

    #[test]
    fn parses_values() {
        let v =
            parse_config("CONFIG_A=y\nCONFIG_B=\"x y\"\n# CONFIG_C is not set\nCONFIG_D=0x10\n");
        assert_eq!(v.get("A").map(String::as_str), Some("y"));
        assert_eq!(v.get("B").map(String::as_str), Some("x y"));
        assert_eq!(v.get("C"), None);
        assert_eq!(v.get("D").map(String::as_str), Some("0x10"));
    }

    #[test]
    fn guest_fragment_has_no_contradictions() {
        for o in GUEST.enable {
            assert!(!GUEST.disable.contains(o), "{o} both enabled and disabled");
        }
    }
}
