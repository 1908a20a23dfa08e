//! The host programs of the qemu-tcg backend, `qemu-system-x86_64` and
//! `vhost-device-vsock`: where they are, which versions, and what to install
//! when one is missing. The daemon and `tfc doctor` find them here alike.
//!
//! Lookup order: the configured path, else `$PATH` (and the sbin
//! directories), else cargo's install directory (`$CARGO_HOME/bin`, by
//! default `~/.cargo/bin`), where `cargo install` and `./scripts/setup-host`
//! put `vhost-device-vsock`, so the daemon finds it without PATH changes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::assets::prereq::{is_executable, HostTools};

/// The QEMU system emulator the backend runs.
pub const QEMU: Program = Program {
    name: "qemu-system-x86_64",
    banner: "QEMU emulator version ",
    key: "qemu.binary",
    install: "apt install qemu-system-x86",
};

/// The vhost-user vsock device the backend's VMs get their vsock from.
pub const VHOST_VSOCK: Program = Program {
    name: "vhost-device-vsock",
    banner: "vhost-device-vsock ",
    key: "qemu.vhost_device_vsock",
    install: VHOST_VSOCK_INSTALL,
};

/// The vhost-device-vsock release whose command line the backend uses;
/// `./scripts/setup-host` installs exactly this one.
pub const VHOST_VSOCK_VERSION: &str = "0.3.0";

const VHOST_VSOCK_INSTALL: &str =
    "cargo install vhost-device-vsock --version 0.3.0 --locked (or run ./scripts/setup-host)";

/// A `--version` answer takes milliseconds; this bounds a wedged binary.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// One of the two programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Program {
    pub name: &'static str,
    /// Start of the first line of `<program> --version`.
    pub banner: &'static str,
    /// The daemon's configuration key that names it.
    pub key: &'static str,
    /// What to run to install it.
    pub install: &'static str,
}

/// Where a found program came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Named in the daemon's configuration.
    Configured,
    /// On `$PATH` or in an sbin directory.
    Path,
    /// In cargo's install directory.
    CargoBin,
}

/// A program found and run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    pub path: PathBuf,
    /// The version it printed, without the banner (e.g. `0.3.0`,
    /// `7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)`).
    pub version: String,
    pub origin: Origin,
}

/// Why a program cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("{name} not found at {path} (set by `{key}`): fix the path or remove the key to search PATH and {cargo_bin}")]
    ConfiguredMissing {
        name: &'static str,
        key: &'static str,
        path: PathBuf,
        cargo_bin: String,
    },
    #[error("{name} not found on PATH nor in {cargo_bin}: {install}, or set `{key}`")]
    NotFound {
        name: &'static str,
        key: &'static str,
        install: &'static str,
        cargo_bin: String,
    },
    #[error("cannot run `{} --version`", .path.display())]
    Version {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{} --version` printed {printed:?}, not `{banner}…`: is it really {name}?", .path.display())]
    Unrecognized {
        name: &'static str,
        banner: &'static str,
        path: PathBuf,
        printed: String,
    },
}

/// Cargo's install directory: `$CARGO_HOME/bin`, else `~/.cargo/bin`.
pub fn cargo_bin() -> Option<PathBuf> {
    let nonempty = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    match nonempty("CARGO_HOME") {
        Some(home) => Some(PathBuf::from(home).join("bin")),
        None => nonempty("HOME").map(|home| PathBuf::from(home).join(".cargo/bin")),
    }
}

fn cargo_bin_text() -> String {
    cargo_bin().map_or_else(|| "~/.cargo/bin".to_owned(), |p| p.display().to_string())
}

impl Program {
    /// Finds the program (see the module's lookup order) and reads its
    /// version.
    pub fn find(&self, configured: Option<&Path>) -> Result<Found, ProgramError> {
        self.find_in(configured, &HostTools::system(), cargo_bin().as_deref())
    }

    fn find_in(
        &self,
        configured: Option<&Path>,
        tools: &HostTools,
        cargo_bin: Option<&Path>,
    ) -> Result<Found, ProgramError> {
        let (path, origin) = match configured {
            Some(path) if is_executable(path) => (path.to_owned(), Origin::Configured),
            Some(path) => {
                return Err(ProgramError::ConfiguredMissing {
                    name: self.name,
                    key: self.key,
                    path: path.to_owned(),
                    cargo_bin: cargo_bin_text(),
                })
            }
            None => match tools.find_program(self.name) {
                Some(path) => (path, Origin::Path),
                None => match cargo_bin
                    .map(|dir| dir.join(self.name))
                    .filter(|p| is_executable(p))
                {
                    Some(path) => (path, Origin::CargoBin),
                    None => {
                        return Err(ProgramError::NotFound {
                            name: self.name,
                            key: self.key,
                            install: self.install,
                            cargo_bin: cargo_bin_text(),
                        })
                    }
                },
            },
        };
        let version = self.version(&path)?;
        Ok(Found {
            path,
            version,
            origin,
        })
    }

    /// The version `path --version` prints after the banner.
    pub fn version(&self, path: &Path) -> Result<String, ProgramError> {
        let out = crate::assets::tool::output_within(
            Command::new(path).arg("--version"),
            VERSION_TIMEOUT,
        )
        .map_err(|source| ProgramError::Version {
            path: path.to_owned(),
            source,
        })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let first = crate::probe::first_line(&text);
        match first.strip_prefix(self.banner) {
            Some(version) if out.status.success() && !version.is_empty() => {
                Ok(version.trim().to_owned())
            }
            _ => Err(ProgramError::Unrecognized {
                name: self.name,
                banner: self.banner,
                path: path.to_owned(),
                printed: first,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// An executable script at `path` printing `output` for `--version`.
    fn script(path: &Path, output: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("#!/bin/sh\necho '{output}'\n")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn path_comes_before_cargo_bin_and_versions_lose_their_banner() {
        let root = tempfile::tempdir().unwrap();
        let tools = HostTools::with_root(root.path());
        let cargo = root.path().join("cargo/bin");
        script(
            &cargo.join("vhost-device-vsock"),
            "vhost-device-vsock 0.3.0",
        );
        let found = VHOST_VSOCK.find_in(None, &tools, Some(&cargo)).unwrap();
        assert_eq!(found.origin, Origin::CargoBin);
        assert_eq!(found.version, VHOST_VSOCK_VERSION);

        let on_path = root.path().join("usr/bin/vhost-device-vsock");
        script(&on_path, "vhost-device-vsock 0.2.0");
        let found = VHOST_VSOCK.find_in(None, &tools, Some(&cargo)).unwrap();
        assert_eq!((found.origin, found.path), (Origin::Path, on_path));
        assert_eq!(found.version, "0.2.0");
    }

    #[test]
    fn missing_programs_say_what_to_install() {
        let root = tempfile::tempdir().unwrap();
        let tools = HostTools::with_root(root.path());
        let err = QEMU.find_in(None, &tools, None).unwrap_err().to_string();
        assert!(err.contains("apt install qemu-system-x86"), "{err}");
        let err = VHOST_VSOCK
            .find_in(None, &tools, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cargo install vhost-device-vsock --version 0.3.0 --locked")
                && err.contains("setup-host"),
            "{err}"
        );
        let err = QEMU
            .find_in(Some(Path::new("/nonexistent/qemu")), &tools, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/qemu") && err.contains("qemu.binary"),
            "{err}"
        );
    }

    /// `./scripts/setup-host` installs the version the daemon's command line
    /// is written for.
    #[test]
    fn setup_host_installs_the_pinned_version() {
        let script = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/setup-host"),
        )
        .unwrap();
        assert!(
            script.contains(&format!("vhost_version={VHOST_VSOCK_VERSION}\n")),
            "scripts/setup-host does not pin vhost-device-vsock {VHOST_VSOCK_VERSION}"
        );
        assert!(VHOST_VSOCK_INSTALL.contains(&format!("--version {VHOST_VSOCK_VERSION} ")));
    }

    #[test]
    fn a_program_that_is_not_the_one_named_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let fake = root.path().join("qemu");
        script(&fake, "something else 1.0");
        let err = QEMU.version(&fake).unwrap_err();
        assert!(matches!(err, ProgramError::Unrecognized { .. }), "{err}");
    }
}
