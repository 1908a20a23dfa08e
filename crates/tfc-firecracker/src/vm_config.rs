//! One description of a VM's boot configuration, applied either through the API
//! socket or written as a `--config-file`. Every caller that boots a VM (the
//! daemon, the benchmark's raw baseline, the host probe) builds it here, so "the
//! same kernel, rootfs and arguments" holds by construction.

use std::path::{Path, PathBuf};

use crate::client::{ApiClient, ApiError};
use crate::models::{
    BootSource, ConfigFile, Drive, MachineConfiguration, NetworkInterface, RateLimiter, Vsock,
};

/// Drive id of the root filesystem.
pub const ROOT_DRIVE_ID: &str = "rootfs";
/// The root drive as the VMM sees it: a link in the VM's directory to the
/// shared image. The path is relative to the VMM's working directory (the VM's
/// directory), and a snapshot records it as given, so every VM restored from
/// one snapshot opens the link in its own directory.
pub const ROOTFS_LINK: &str = "rootfs.ext4";
/// The host side of the guest's vsock device, relative for the same reason.
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// Id of the guest's network interface (one per VM).
pub const NET_IFACE_ID: &str = "eth0";
/// The guest's vsock context id (3 is the first a guest may have). Every VM can
/// use the same one: each has its own device and host socket.
pub const GUEST_CID: u32 = 3;

/// Kernel, root filesystem and machine size of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub boot_args: String,
    /// Attached read-only as the root device, so many VMs share one image.
    pub rootfs: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// Attach a vsock device (host side: [`VSOCK_SOCKET`] in the VM's directory).
    pub vsock: bool,
    /// Track dirty pages from boot, so diff snapshots can be taken.
    pub track_dirty_pages: bool,
    /// The guest's network interface; its tap must exist in the network
    /// namespace the VMM runs in.
    pub network: Option<NetworkInterface>,
    /// Limits on the root drive's bandwidth and operations.
    pub rootfs_rate_limiter: Option<RateLimiter>,
}

impl VmConfig {
    /// Links the root image into `workdir` as [`ROOTFS_LINK`]. Call before
    /// applying the configuration; the VMM must run with `workdir` as its
    /// working directory.
    pub fn link_into(&self, workdir: &Path) -> std::io::Result<()> {
        let link = workdir.join(ROOTFS_LINK);
        match std::fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::os::unix::fs::symlink(&self.rootfs, link)
    }

    fn machine(&self) -> MachineConfiguration {
        MachineConfiguration {
            vcpu_count: self.vcpus,
            mem_size_mib: self.memory_mib,
            smt: None,
            track_dirty_pages: self.track_dirty_pages.then_some(true),
            huge_pages: None,
        }
    }

    fn vsock_device(&self) -> Option<Vsock> {
        self.vsock.then(|| Vsock {
            guest_cid: GUEST_CID,
            uds_path: VSOCK_SOCKET.to_owned(),
        })
    }

    fn boot_source(&self) -> BootSource {
        BootSource {
            kernel_image_path: self.kernel.display().to_string(),
            boot_args: Some(self.boot_args.clone()),
            initrd_path: None,
        }
    }

    fn root_drive(&self) -> Drive {
        Drive {
            drive_id: ROOT_DRIVE_ID.to_owned(),
            path_on_host: Some(ROOTFS_LINK.to_owned()),
            is_root_device: true,
            is_read_only: Some(true),
            partuuid: None,
            cache_type: None,
            io_engine: None,
            rate_limiter: self.rootfs_rate_limiter.clone(),
        }
    }

    /// Configures a fresh Firecracker process through its API (before boot).
    pub async fn apply(&self, api: &ApiClient) -> Result<(), ApiError> {
        api.put_machine_config(&self.machine()).await?;
        api.put_boot_source(&self.boot_source()).await?;
        api.put_drive(&self.root_drive()).await?;
        if let Some(network) = &self.network {
            api.put_network_interface(network).await?;
        }
        if let Some(vsock) = self.vsock_device() {
            api.put_vsock(&vsock).await?;
        }
        Ok(())
    }

    /// The same configuration as a `firecracker --config-file` document.
    pub fn to_config_file(&self) -> ConfigFile {
        ConfigFile {
            boot_source: self.boot_source(),
            drives: vec![self.root_drive()],
            machine_config: self.machine(),
            network_interfaces: self.network.iter().cloned().collect(),
            vsock: self.vsock_device(),
            logger: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_has_firecrackers_key_names() {
        let config = VmConfig {
            kernel: "/k/vmlinux".into(),
            boot_args: "console=ttyS0".into(),
            rootfs: "/r/rootfs.ext4".into(),
            vcpus: 2,
            memory_mib: 256,
            vsock: true,
            track_dirty_pages: true,
            network: None,
            rootfs_rate_limiter: None,
        };
        assert_eq!(
            serde_json::to_value(config.to_config_file()).unwrap(),
            serde_json::json!({
                "boot-source": {"kernel_image_path": "/k/vmlinux", "boot_args": "console=ttyS0"},
                "drives": [{"drive_id": "rootfs", "path_on_host": "rootfs.ext4",
                            "is_root_device": true, "is_read_only": true}],
                "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "track_dirty_pages": true},
                "vsock": {"guest_cid": 3, "uds_path": "vsock.sock"}
            })
        );
    }

    #[test]
    fn a_network_interface_and_rate_limits_are_written_as_firecracker_names_them() {
        let bucket = |size| crate::models::TokenBucket {
            size,
            one_time_burst: None,
            refill_time: 1000,
        };
        let config = VmConfig {
            kernel: "/k/vmlinux".into(),
            boot_args: String::new(),
            rootfs: "/r/rootfs.ext4".into(),
            vcpus: 1,
            memory_mib: 128,
            vsock: false,
            track_dirty_pages: false,
            network: Some(NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: "tap0".into(),
                guest_mac: Some("06:00:ac:10:00:02".into()),
                rx_rate_limiter: Some(RateLimiter {
                    bandwidth: Some(bucket(1_000_000)),
                    ops: None,
                }),
                tx_rate_limiter: None,
            }),
            rootfs_rate_limiter: Some(RateLimiter {
                bandwidth: None,
                ops: Some(bucket(100)),
            }),
        };
        let file = serde_json::to_value(config.to_config_file()).unwrap();
        assert_eq!(
            file["network-interfaces"],
            serde_json::json!([{"iface_id": "eth0", "host_dev_name": "tap0",
                "guest_mac": "06:00:ac:10:00:02",
                "rx_rate_limiter": {"bandwidth": {"size": 1_000_000, "refill_time": 1000}}}])
        );
        assert_eq!(
            file["drives"][0]["rate_limiter"],
            serde_json::json!({"ops": {"size": 100, "refill_time": 1000}})
        );
    }

    #[test]
    fn the_root_image_is_linked_into_the_vm_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = VmConfig {
            kernel: "/k".into(),
            boot_args: String::new(),
            rootfs: "/images/a.ext4".into(),
            vcpus: 1,
            memory_mib: 128,
            vsock: false,
            track_dirty_pages: false,
            network: None,
            rootfs_rate_limiter: None,
        };
        config.link_into(dir.path()).unwrap();
        config.rootfs = "/images/b.ext4".into();
        config.link_into(dir.path()).unwrap();
        let target = std::fs::read_link(dir.path().join(ROOTFS_LINK)).unwrap();
        assert_eq!(target, Path::new("/images/b.ext4"));
    }
}
