//! One description of a VM's boot configuration, applied either through the API
//! socket or written as a `--config-file`. Every caller that boots a VM (the
//! daemon, the benchmark's raw baseline, the host probe) builds it here, so "the
//! same kernel, rootfs and arguments" holds by construction.

use std::path::PathBuf;

use crate::client::{ApiClient, ApiError};
use crate::models::{BootSource, ConfigFile, Drive, MachineConfiguration};

/// Drive id of the root filesystem.
pub const ROOT_DRIVE_ID: &str = "rootfs";

/// Kernel, root filesystem and machine size of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub boot_args: String,
    /// Attached read-only as the root device, so many VMs share one image.
    pub rootfs: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u32,
}

impl VmConfig {
    fn machine(&self) -> MachineConfiguration {
        MachineConfiguration {
            vcpu_count: self.vcpus,
            mem_size_mib: self.memory_mib,
            smt: None,
            track_dirty_pages: None,
            huge_pages: None,
        }
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
            path_on_host: Some(self.rootfs.display().to_string()),
            is_root_device: true,
            is_read_only: Some(true),
            partuuid: None,
            cache_type: None,
            io_engine: None,
            rate_limiter: None,
        }
    }

    /// Configures a fresh Firecracker process through its API (before boot).
    pub async fn apply(&self, api: &ApiClient) -> Result<(), ApiError> {
        api.put_machine_config(&self.machine()).await?;
        api.put_boot_source(&self.boot_source()).await?;
        api.put_drive(&self.root_drive()).await
    }

    /// The same configuration as a `firecracker --config-file` document.
    pub fn to_config_file(&self) -> ConfigFile {
        ConfigFile {
            boot_source: self.boot_source(),
            drives: vec![self.root_drive()],
            machine_config: self.machine(),
            network_interfaces: Vec::new(),
            vsock: None,
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
        };
        assert_eq!(
            serde_json::to_value(config.to_config_file()).unwrap(),
            serde_json::json!({
                "boot-source": {"kernel_image_path": "/k/vmlinux", "boot_args": "console=ttyS0"},
                "drives": [{"drive_id": "rootfs", "path_on_host": "/r/rootfs.ext4",
                            "is_root_device": true, "is_read_only": true}],
                "machine-config": {"vcpu_count": 2, "mem_size_mib": 256}
            })
        );
    }
}
