//! The command lines of one VM's two processes, built from a
//! [`MachineConfig`]: QEMU's `microvm` machine under TCG, and the
//! `vhost-device-vsock` backend serving its vsock device. Pure, so every
//! argument is tested without starting anything.
//!
//! Files live in the VM's working directory, under the names below; the
//! root image is the link `rootfs.ext4` there (as for Firecracker), and the
//! host side of the vsock device is `vsock.sock`, the socket a Firecracker
//! VM's vsock has, so whatever talks to one talks to the other unchanged.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

pub use tfc_firecracker::process::CONSOLE_LOG;
pub use tfc_firecracker::vm_config::{GUEST_CID, ROOTFS_LINK, VSOCK_SOCKET};

/// QEMU's QMP socket.
pub const QMP_SOCKET: &str = "qmp.sock";
/// The vhost-user socket between QEMU and `vhost-device-vsock`.
pub const VHOST_SOCKET: &str = "vhost-user.sock";
/// QEMU's own messages (the serial console goes to [`CONSOLE_LOG`]).
pub const QEMU_STDERR: &str = "qemu.stderr";
/// `vhost-device-vsock`'s output.
pub const VHOST_LOG: &str = "vhost-device-vsock.log";

/// Kernel, root device and machine size of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    /// A `bzImage` (QEMU's direct kernel boot does not take an ELF `vmlinux`
    /// without a PVH note).
    pub kernel: PathBuf,
    /// The kernel command line; the root device arguments are appended.
    pub boot_args: String,
    /// The root image, attached read-only through the link [`ROOTFS_LINK`]
    /// in the VM's directory.
    pub rootfs: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// Attach a vsock device served by `vhost-device-vsock`.
    pub vsock: bool,
    /// A virtio-net device on this tap, which must exist in the network
    /// namespace QEMU runs in.
    pub network: Option<NetDevice>,
}

/// The guest's network interface: a tap of the host and the guest's
/// hardware address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    pub tap: String,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

/// Appended to the boot arguments: the root image is the first (only)
/// virtio block device, read-only so many VMs share one image.
pub const ROOT_ARGS: &str = "root=/dev/vda ro";
/// Appended last, so it wins over the VM type's `reboot=k`: the microvm
/// machine has no keyboard controller to reset through, and a reset by
/// triple fault is what ends QEMU under `-no-reboot` (the guest's power-off
/// and `panic=1` both end in a reset).
pub const RESET_ARGS: &str = "reboot=t";

/// `path` inside a QEMU option string, where a comma ends the value unless
/// doubled.
fn option_value(path: &Path) -> OsString {
    let mut escaped = Vec::new();
    for &byte in path.as_os_str().as_bytes() {
        escaped.push(byte);
        if byte == b',' {
            escaped.push(b',');
        }
    }
    OsString::from_vec(escaped)
}

fn joined(parts: &[&OsStr]) -> OsString {
    let mut out = OsString::new();
    for part in parts {
        out.push(part);
    }
    out
}

/// The value of QEMU's `-qmp` argument: a server on [`QMP_SOCKET`] that
/// does not wait for a client before starting. It names the VM's directory,
/// so it also identifies the VM's QEMU among processes.
pub fn qmp_arg(workdir: &Path) -> OsString {
    joined(&[
        "unix:".as_ref(),
        &option_value(&workdir.join(QMP_SOCKET)),
        ",server=on,wait=off".as_ref(),
    ])
}

/// QEMU's arguments. The guest is created with its vCPUs stopped (`-S`):
/// QMP `cont` boots it, so spawning and booting are separate steps as they
/// are for Firecracker.
pub fn qemu_args(config: &MachineConfig, workdir: &Path) -> Vec<OsString> {
    let memory = format!("{}M", config.memory_mib);
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |values: &[&OsStr]| args.extend(values.iter().map(|v| v.to_os_string()));
    // `acpi=off` makes QEMU describe its virtio-mmio devices on the kernel
    // command line (`virtio_mmio.device=`), as Firecracker does; the
    // memory is a shared memfd because a vhost-user backend maps it.
    push(&[
        "-machine".as_ref(),
        "microvm,x-option-roms=off,rtc=off,acpi=off,memory-backend=mem".as_ref(),
        "-object".as_ref(),
        format!("memory-backend-memfd,id=mem,size={memory},share=on").as_ref(),
        "-m".as_ref(),
        memory.as_ref(),
        "-accel".as_ref(),
        "tcg".as_ref(),
        "-cpu".as_ref(),
        "max".as_ref(),
        "-smp".as_ref(),
        config.vcpus.to_string().as_ref(),
        "-nodefaults".as_ref(),
        "-no-user-config".as_ref(),
        "-display".as_ref(),
        "none".as_ref(),
        // The guest's serial port on stdout, which is the console file.
        "-serial".as_ref(),
        "stdio".as_ref(),
        // A guest reset (its power-off, `panic=1`) ends QEMU instead.
        "-no-reboot".as_ref(),
        "-S".as_ref(),
        "-qmp".as_ref(),
        qmp_arg(workdir).as_ref(),
        "-kernel".as_ref(),
        config.kernel.as_os_str(),
        "-append".as_ref(),
        format!("{} {ROOT_ARGS} {RESET_ARGS}", config.boot_args.trim()).as_ref(),
        "-drive".as_ref(),
        format!("id=root,file={ROOTFS_LINK},format=raw,if=none,readonly=on").as_ref(),
        "-device".as_ref(),
        "virtio-blk-device,drive=root".as_ref(),
    ]);
    if let Some(net) = &config.network {
        // The tap exists (persistent, made by the daemon): QEMU only opens
        // it, and runs no scripts.
        push(&[
            "-netdev".as_ref(),
            format!("tap,id=net0,ifname={},script=no,downscript=no", net.tap).as_ref(),
            "-device".as_ref(),
            format!("virtio-net-device,netdev=net0,mac={}", net.mac).as_ref(),
        ]);
    }
    if config.vsock {
        push(&[
            "-chardev".as_ref(),
            joined(&[
                "socket,id=vsock,path=".as_ref(),
                &option_value(&workdir.join(VHOST_SOCKET)),
            ])
            .as_ref(),
            "-device".as_ref(),
            "vhost-user-vsock-device,chardev=vsock".as_ref(),
        ]);
    }
    args
}

/// `vhost-device-vsock`'s arguments: it listens for QEMU on
/// [`VHOST_SOCKET`] and for the host on [`VSOCK_SOCKET`] (`CONNECT <port>`).
pub fn vhost_vsock_args(workdir: &Path) -> Vec<OsString> {
    vec![
        "--guest-cid".into(),
        GUEST_CID.to_string().into(),
        "--socket".into(),
        workdir.join(VHOST_SOCKET).into(),
        "--uds-path".into(),
        workdir.join(VSOCK_SOCKET).into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vsock: bool) -> MachineConfig {
        MachineConfig {
            kernel: "/k/bzImage".into(),
            boot_args: "console=ttyS0 panic=1 ".into(),
            rootfs: "/r/rootfs.ext4".into(),
            vcpus: 2,
            memory_mib: 256,
            vsock,
            network: None,
        }
    }

    #[test]
    fn a_network_is_a_virtio_net_device_on_the_existing_tap() {
        let mut with_net = config(false);
        with_net.network = Some(NetDevice {
            tap: "tap0".to_owned(),
            mac: "06:00:ac:10:00:02".to_owned(),
        });
        let args = text(&qemu_args(&with_net, Path::new("/vms/a")));
        let at = args.iter().position(|a| a == "-netdev").unwrap();
        assert_eq!(
            args[at + 1],
            "tap,id=net0,ifname=tap0,script=no,downscript=no"
        );
        assert!(args
            .iter()
            .any(|a| a == "virtio-net-device,netdev=net0,mac=06:00:ac:10:00:02"));
        assert!(!text(&qemu_args(&config(false), Path::new("/vms/a")))
            .iter()
            .any(|a| a == "-netdev"));
    }

    fn text(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// The value following `flag`, for each occurrence.
    fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn a_machine_with_vsock() {
        let args = text(&qemu_args(&config(true), Path::new("/vms/a")));
        assert_eq!(values(&args, "-m"), ["256M"]);
        assert_eq!(
            values(&args, "-object"),
            ["memory-backend-memfd,id=mem,size=256M,share=on"]
        );
        assert_eq!(values(&args, "-accel"), ["tcg"]);
        assert_eq!(values(&args, "-smp"), ["2"]);
        assert_eq!(values(&args, "-kernel"), ["/k/bzImage"]);
        assert_eq!(
            values(&args, "-append"),
            ["console=ttyS0 panic=1 root=/dev/vda ro reboot=t"]
        );
        assert_eq!(
            values(&args, "-qmp"),
            ["unix:/vms/a/qmp.sock,server=on,wait=off"]
        );
        assert_eq!(
            values(&args, "-chardev"),
            ["socket,id=vsock,path=/vms/a/vhost-user.sock"]
        );
        assert_eq!(
            values(&args, "-device"),
            [
                "virtio-blk-device,drive=root",
                "vhost-user-vsock-device,chardev=vsock"
            ]
        );
        assert!(args.contains(&"-S".to_owned()));
        assert!(args.contains(&"-no-reboot".to_owned()));
    }

    #[test]
    fn no_vsock_device_without_vsock() {
        let args = text(&qemu_args(&config(false), Path::new("/vms/a")));
        assert!(values(&args, "-chardev").is_empty());
        assert_eq!(values(&args, "-device"), ["virtio-blk-device,drive=root"]);
    }

    #[test]
    fn commas_in_paths_are_doubled_in_option_strings() {
        let args = text(&qemu_args(&config(true), Path::new("/vms/a,b")));
        assert_eq!(
            values(&args, "-qmp"),
            ["unix:/vms/a,,b/qmp.sock,server=on,wait=off"]
        );
        assert_eq!(
            values(&args, "-chardev"),
            ["socket,id=vsock,path=/vms/a,,b/vhost-user.sock"]
        );
    }

    #[test]
    fn the_vsock_backend_listens_where_firecrackers_vsock_does() {
        let args = text(&vhost_vsock_args(Path::new("/vms/a")));
        assert_eq!(
            args,
            [
                "--guest-cid",
                "3",
                "--socket",
                "/vms/a/vhost-user.sock",
                "--uds-path",
                "/vms/a/vsock.sock"
            ]
        );
    }
}
