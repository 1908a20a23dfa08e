//! The guest kernel, built from Debian's `linux-source-6.1` with the
//! project's config fragment (and, for the nested profile, one source patch).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::kconfig::{self, Mismatch};
use super::key::{self, KeyBuilder};
use super::prereq::{HostTools, PrereqError, Requirement};
use super::tool::{ToolError, ToolLog};
use crate::profile::Profile;

pub const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
/// The top directory inside [`SOURCE_TARBALL`].
const SOURCE_TOP: &str = "linux-source-6.1";

const PREREQS: [Requirement; 10] = [
    Requirement::File {
        path: SOURCE_TARBALL,
        package: "linux-source-6.1",
    },
    Requirement::Program {
        name: "tar",
        package: "tar",
    },
    Requirement::Program {
        name: "xz",
        package: "xz-utils",
    },
    Requirement::Program {
        name: "make",
        package: "make",
    },
    Requirement::Program {
        name: "gcc",
        package: "gcc",
    },
    Requirement::Program {
        name: "flex",
        package: "flex",
    },
    Requirement::Program {
        name: "bison",
        package: "bison",
    },
    Requirement::Program {
        name: "bc",
        package: "bc",
    },
    Requirement::File {
        path: "/usr/include/libelf.h",
        package: "libelf-dev",
    },
    Requirement::File {
        path: "/usr/include/openssl/ssl.h",
        package: "libssl-dev",
    },
];

/// A string edit of one kernel source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePatch {
    /// Part of the cache key; bump it when `find` or `replace` change.
    pub id: &'static str,
    pub file: &'static str,
    /// Must occur exactly once in `file`.
    pub find: &'static str,
    pub replace: &'static str,
}

/// The INT3 self-test stops kvm_pvm's instruction emulator with an internal
/// error. `if (0)` keeps the static function referenced, so the build does
/// not gain an unused-function warning.
pub const SKIP_INT3_SELFTEST: SourcePatch = SourcePatch {
    id: "skip-int3-selftest-v1",
    file: "arch/x86/kernel/alternative.c",
    // The leading newline and single tab pin the call site (one statement
    // at function level) and keep the replacement from matching again.
    find: "\n\tint3_selftest();\n",
    replace: "\n\t/* tfc nested profile: kvm_pvm cannot emulate this self-test. */\n\
              \tif (0)\n\t\tint3_selftest();\n",
};

pub fn patches(profile: Profile) -> &'static [SourcePatch] {
    match profile {
        Profile::Default => &[],
        Profile::Nested => &[SKIP_INT3_SELFTEST],
    }
}

/// Building the guest kernel failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Prereq(#[from] PrereqError),
    #[error("cannot read the kernel source {}: reinstall linux-source-6.1", .path.display())]
    SourceDigest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare {}: check permissions and free space (the kernel build needs about 1.5 GB)", .path.display())]
    Workdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(ToolError),
    #[error("extracting the kernel source failed")]
    Extract(#[source] ToolError),
    #[error("{} is not in the kernel tarball: reinstall linux-source-6.1", .path.display())]
    SourceLayout { path: PathBuf },
    #[error("cannot apply kernel patch `{patch}` to {}", .path.display())]
    PatchIo {
        patch: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel patch `{patch}` expects `{}` exactly once in {file}, found it {found} times: the kernel source changed, update the patch in tfc-host's assets/kernel.rs", .find.trim())]
    PatchNotApplicable {
        patch: &'static str,
        file: &'static str,
        find: &'static str,
        found: usize,
    },
    #[error("`make tinyconfig` failed")]
    Tinyconfig(#[source] ToolError),
    #[error("applying the config fragment with scripts/config failed")]
    Configure(#[source] ToolError),
    #[error("`make olddefconfig` failed")]
    Olddefconfig(#[source] ToolError),
    #[error("cannot read the generated kernel config {}", .path.display())]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("olddefconfig did not keep the config fragment ({}): a dependency is missing from tfc-host's assets/kconfig.rs; inspect {}", .mismatches.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "), .config.display())]
    ConfigNotKept {
        mismatches: Vec<Mismatch>,
        config: PathBuf,
    },
    #[error("compiling the kernel failed")]
    Make(#[source] ToolError),
    #[error("cannot install the built kernel into {}", .path.display())]
    Install {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A built kernel in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltKernel {
    pub key: String,
    pub dir: PathBuf,
    pub vmlinux: PathBuf,
    pub bzimage: PathBuf,
    pub cached: bool,
}

/// The cache key: source identity, fragment, patches, profile.
pub fn cache_key(source_sha256: &str, profile: Profile) -> String {
    let patch_ids: Vec<&str> = patches(profile).iter().map(|p| p.id).collect();
    KeyBuilder::new("kernel")
        .part("source-sha256", source_sha256)
        .part("fragment", kconfig::GUEST.text())
        .part("patches", patch_ids.join(","))
        .part("profile", profile.as_str())
        .finish()
}

/// The tarball's sha256, remembered under `assets_dir` between runs.
pub fn source_sha256(tools: &HostTools, assets_dir: &Path) -> Result<String, KernelError> {
    let path = tools.path(SOURCE_TARBALL);
    key::memoized_file_sha256(&path, &assets_dir.join("kernel/source-sha256.json"))
        .map_err(|source| KernelError::SourceDigest { path, source })
}

/// The key a build with today's inputs would produce, if the source exists.
pub fn expected_key(tools: &HostTools, assets_dir: &Path, profile: Profile) -> Option<String> {
    source_sha256(tools, assets_dir)
        .ok()
        .map(|s| cache_key(&s, profile))
}

pub fn output_dir(assets_dir: &Path, key: &str) -> PathBuf {
    assets_dir.join("kernel").join(key::short(key))
}

/// Applies `patch` to the text of its file.
pub fn apply_patch(text: &str, patch: &SourcePatch) -> Result<String, KernelError> {
    let found = text.matches(patch.find).count();
    if found != 1 {
        return Err(KernelError::PatchNotApplicable {
            patch: patch.id,
            file: patch.file,
            find: patch.find,
            found,
        });
    }
    Ok(text.replacen(patch.find, patch.replace, 1))
}

fn workdir_err(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Workdir {
        path: path.to_path_buf(),
        source,
    }
}

/// Make inherits a jobserver from these when tfc itself runs under make or
/// cargo; the kernel build must use its own `-j`.
fn make(src: &Path) -> Command {
    let mut cmd = Command::new("make");
    cmd.current_dir(src)
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .arg("ARCH=x86_64");
    cmd
}

/// Builds (or finds cached) `vmlinux` and `bzImage` for `profile`.
pub fn build(
    tools: &HostTools,
    assets_dir: &Path,
    profile: Profile,
    jobs: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltKernel, KernelError> {
    tools.require(&PREREQS)?;
    let source_sha256 = source_sha256(tools, assets_dir)?;
    let key = cache_key(&source_sha256, profile);
    let dir = output_dir(assets_dir, &key);
    let done = |cached| BuiltKernel {
        key: key.clone(),
        vmlinux: dir.join("vmlinux"),
        bzimage: dir.join("bzImage"),
        dir: dir.clone(),
        cached,
    };
    if dir.join("vmlinux").is_file() && dir.join("bzImage").is_file() {
        return Ok(done(true));
    }

    let short = key::short(&key);
    let build_dir = assets_dir.join("build").join(format!("kernel-{short}"));
    let mut log = ToolLog::open(
        "kernel",
        assets_dir.join(format!("logs/kernel-{short}.log")),
    )
    .map_err(KernelError::Log)?;
    progress(&format!(
        "[kernel] building profile {profile} (key {short}) in {}; about 5 minutes on 2 cores",
        build_dir.display()
    ));
    let started = Instant::now();
    // A tree left by an interrupted build may be half-configured; start over.
    if build_dir.exists() {
        std::fs::remove_dir_all(&build_dir).map_err(workdir_err(&build_dir))?;
    }
    std::fs::create_dir_all(&build_dir).map_err(workdir_err(&build_dir))?;

    let tarball = tools.path(SOURCE_TARBALL);
    log.run(
        "extract linux-source-6.1.tar.xz",
        Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(&build_dir),
        progress,
    )
    .map_err(KernelError::Extract)?;
    let src = build_dir.join(SOURCE_TOP);
    if !src.join("Makefile").is_file() {
        return Err(KernelError::SourceLayout { path: src });
    }

    for patch in patches(profile) {
        let path = src.join(patch.file);
        let io_err = |source| KernelError::PatchIo {
            patch: patch.id,
            path: path.clone(),
            source,
        };
        let text = std::fs::read_to_string(&path).map_err(io_err)?;
        let patched = apply_patch(&text, patch)?;
        std::fs::write(&path, patched).map_err(io_err)?;
        log.note(&format!("applied patch {} to {}", patch.id, patch.file))
            .map_err(KernelError::Log)?;
    }

    log.run("make tinyconfig", make(&src).arg("tinyconfig"), progress)
        .map_err(KernelError::Tinyconfig)?;
    log.run(
        "scripts/config",
        Command::new(src.join("scripts/config"))
            .current_dir(&src)
            .args(["--file", ".config"])
            .args(kconfig::GUEST.script_args()),
        progress,
    )
    .map_err(KernelError::Configure)?;
    log.run(
        "make olddefconfig",
        make(&src).arg("olddefconfig"),
        progress,
    )
    .map_err(KernelError::Olddefconfig)?;
    let config_path = src.join(".config");
    let config =
        std::fs::read_to_string(&config_path).map_err(|source| KernelError::ReadConfig {
            path: config_path.clone(),
            source,
        })?;
    let mismatches = kconfig::GUEST.verify(&config);
    if !mismatches.is_empty() {
        return Err(KernelError::ConfigNotKept {
            mismatches,
            config: config_path,
        });
    }

    log.run(
        "make vmlinux bzImage",
        make(&src)
            .arg(format!("-j{jobs}"))
            .args(["vmlinux", "bzImage"]),
        progress,
    )
    .map_err(KernelError::Make)?;

    install(&src, &dir)?;
    // The extracted tree is about 1.3 GB; the log and the config are kept.
    std::fs::remove_dir_all(&build_dir).map_err(workdir_err(&build_dir))?;
    log.note(&format!(
        "kernel {short} built in {:.0} s",
        started.elapsed().as_secs_f64()
    ))
    .map_err(KernelError::Log)?;
    Ok(done(false))
}

/// Copies the outputs into a staging directory, then renames it into place
/// so that a present output directory is always complete.
fn install(src: &Path, dir: &Path) -> Result<(), KernelError> {
    let install_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KernelError::Install { path, source }
    };
    let staging = dir.with_extension("partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(install_err(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(install_err(&staging))?;
    for (from, to) in [
        ("vmlinux", "vmlinux"),
        ("arch/x86/boot/bzImage", "bzImage"),
        (".config", "config"),
    ] {
        std::fs::copy(src.join(from), staging.join(to)).map_err(install_err(&src.join(from)))?;
    }
    std::fs::rename(&staging, dir).map_err(install_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALTERNATIVE_C: &str = "void __init alternative_instructions(void)\n{\n\
        \tu64 ibt;\n\n\tint3_selftest();\n\n\t/*\n\t * The patching is not fully atomic\n";

    #[test]
    fn int3_patch_applies_once() {
        let out = apply_patch(ALTERNATIVE_C, &SKIP_INT3_SELFTEST).expect("applies");
        assert!(out.contains("\tif (0)\n\t\tint3_selftest();\n"));
        assert!(!out.contains("\n\tint3_selftest();"));
        // Applying twice must fail rather than silently do nothing.
        let again = apply_patch(&out, &SKIP_INT3_SELFTEST);
        assert!(matches!(
            again,
            Err(KernelError::PatchNotApplicable { found: 0, .. })
        ));
    }

    #[test]
    fn missing_call_site_is_a_clear_error() {
        let msg = apply_patch("static void int3_selftest(void) {}\n", &SKIP_INT3_SELFTEST)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("expects `int3_selftest();` exactly once"),
            "{msg}"
        );
        assert!(msg.contains("found it 0 times"), "{msg}");
    }

    #[test]
    fn key_depends_on_profile_and_source() {
        let d = cache_key("aa", Profile::Default);
        assert_eq!(d, cache_key("aa", Profile::Default));
        assert_ne!(d, cache_key("aa", Profile::Nested));
        assert_ne!(d, cache_key("bb", Profile::Default));
    }

    #[test]
    fn missing_packages_are_named() {
        let root = tempfile::tempdir().expect("tempdir");
        let tools = HostTools::with_root(root.path());
        let msg = build(&tools, root.path(), Profile::Nested, 2, &mut |_| {})
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("/usr/src/linux-source-6.1.tar.xz (Debian package linux-source-6.1)"),
            "{msg}"
        );
        assert!(
            msg.contains("/usr/include/openssl/ssl.h (Debian package libssl-dev)"),
            "{msg}"
        );
        assert!(
            msg.contains("apt-get install linux-source-6.1 tar xz-utils make gcc flex bison bc libelf-dev libssl-dev"),
            "{msg}"
        );
    }
}
