//! Host integration for Terraphim Firecracker.
//!
//! Layout:
//! - [`paths`]: where the daemon keeps its socket, data and runtime files.
//! - [`profile`]: the guest profile (real KVM vs. nested `kvm_pvm` hosts).
//! - [`lockfile`]: exclusive file locks that die with their holder.
//! - [`kvm`]: which KVM this host has and whether `/dev/kvm` answers
//!   ([`kvm::check_device`]).
//! - [`assets`]: firecracker/jailer, guest kernel and rootfs, built and cached
//!   under `<data_dir>/assets/`, and the manifest the daemon reads; host
//!   programs are found with [`find_on_path`].
//! - [`qemu`]: the qemu-tcg backend's programs (`qemu-system-x86_64`,
//!   `vhost-device-vsock`): lookup, versions, what to install.
//! - [`probe`]: `tfc doctor`'s host checks, which backends this host can run,
//!   and the guest-userspace boot probe.
//! - [`digest`]: sha256 of large files (kernel, rootfs), cached per process
//!   while the file is unchanged.
//! - [`cpu`]: the host CPU's identity and whether a snapshot taken on one CPU
//!   may be restored on another.
//!
//! Dependencies point one way: `probe` reads `assets`, `kvm` and `qemu` and boots
//! through the Firecracker adapter (`tfc-firecracker`); `assets` reads `kvm`
//! (to pick a profile); `profile`, `digest` and `cpu` depend on nothing.

pub mod assets;
pub mod cpu;
pub mod digest;
pub mod kvm;
pub mod lockfile;
pub mod paths;
pub mod probe;
pub mod profile;
pub mod qemu;

pub use assets::find_on_path;
