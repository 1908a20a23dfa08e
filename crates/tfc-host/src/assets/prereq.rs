//! Host programs and files the asset builds need, each tied to the Debian
//! package that provides it, so a missing one is reported by package name.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Something the build needs from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// An executable found in one of the search directories.
    Program {
        name: &'static str,
        package: &'static str,
    },
    /// An absolute path (resolved under the host root).
    File {
        path: &'static str,
        package: &'static str,
    },
}

impl Requirement {
    pub fn package(self) -> &'static str {
        match self {
            Requirement::Program { package, .. } | Requirement::File { package, .. } => package,
        }
    }

    fn describe(self) -> String {
        match self {
            Requirement::Program { name, .. } => format!("program `{name}`"),
            Requirement::File { path, .. } => path.to_string(),
        }
    }
}

/// Host prerequisites are missing.
#[derive(Debug, thiserror::Error)]
pub enum PrereqError {
    #[error("missing on this host: {}; install with `apt-get install {}`", describe_missing(.missing), packages(.missing).join(" "))]
    Missing { missing: Vec<Requirement> },
}

fn describe_missing(missing: &[Requirement]) -> String {
    missing
        .iter()
        .map(|r| format!("{} (Debian package {})", r.describe(), r.package()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn packages(missing: &[Requirement]) -> Vec<&'static str> {
    let mut pkgs: Vec<&'static str> = Vec::new();
    for r in missing {
        if !pkgs.contains(&r.package()) {
            pkgs.push(r.package());
        }
    }
    pkgs
}

/// Where to look for host programs and files. Tests point `root` at a fake
/// tree; real runs use `/` and `$PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTools {
    root: PathBuf,
    search_dirs: Vec<PathBuf>,
}

/// Where Debian installs administrator tools such as `mkfs.ext4`; a user's
/// `$PATH` often lacks them.
const SBIN_DIRS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

impl HostTools {
    /// `/` with `$PATH` plus the sbin directories.
    pub fn system() -> Self {
        let mut search_dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        for d in SBIN_DIRS.iter().chain(&["/usr/bin", "/bin"]) {
            let d = PathBuf::from(d);
            if !search_dirs.contains(&d) {
                search_dirs.push(d);
            }
        }
        search_dirs.retain(|d| d.is_absolute());
        HostTools {
            root: PathBuf::from("/"),
            search_dirs,
        }
    }

    /// A fake host rooted at `root`, searching its standard bin directories.
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        HostTools {
            root: root.into(),
            search_dirs: ["/usr/local/bin", "/usr/bin", "/bin"]
                .iter()
                .chain(&SBIN_DIRS)
                .map(PathBuf::from)
                .collect(),
        }
    }

    /// `abs` (an absolute host path) under this host's root.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// The first executable called `name` in the search directories. A name
    /// with a `/` in it is not a program name and is never found (as with a
    /// shell's lookup, which does not search for such names).
    pub fn find_program(&self, name: &str) -> Option<PathBuf> {
        if name.is_empty() || name.contains('/') {
            return None;
        }
        self.search_dirs.iter().find_map(|dir| {
            let rel = dir.strip_prefix("/").unwrap_or(dir);
            let candidate = self.root.join(rel).join(name);
            is_executable(&candidate).then_some(candidate)
        })
    }

    fn satisfied(&self, req: Requirement) -> bool {
        match req {
            Requirement::Program { name, .. } => self.find_program(name).is_some(),
            Requirement::File { path, .. } => self.path(path).is_file(),
        }
    }

    /// Checks all of `reqs` and reports every missing one at once.
    pub fn require(&self, reqs: &[Requirement]) -> Result<(), PrereqError> {
        let missing: Vec<Requirement> = reqs
            .iter()
            .copied()
            .filter(|r| !self.satisfied(*r))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(PrereqError::Missing { missing })
        }
    }
}

/// Where this host has the program `name`: the first executable file of that
/// name in the directories of `$PATH`, then in `/usr/local/sbin`, `/usr/sbin`,
/// `/sbin`, `/usr/bin` and `/bin` (administrator tools such as `nft`, `ip` and
/// `mkfs.ext4` live in sbin directories that a user's `$PATH` often lacks).
/// Relative `$PATH` entries are ignored. `None` for a name containing `/`.
///
/// Reads `$PATH` on every call and touches only file metadata.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    HostTools::system().find_program(name)
}

pub(crate) fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQS: [Requirement; 3] = [
        Requirement::Program {
            name: "flex",
            package: "flex",
        },
        Requirement::File {
            path: "/usr/include/libelf.h",
            package: "libelf-dev",
        },
        Requirement::File {
            path: "/usr/include/gelf.h",
            package: "libelf-dev",
        },
    ];

    fn touch(path: &Path, mode: u32) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, b"").expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn names_every_missing_package_once() {
        let root = tempfile::tempdir().expect("tempdir");
        let tools = HostTools::with_root(root.path());
        let msg = tools
            .require(&REQS)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("program `flex` (Debian package flex)"),
            "{msg}"
        );
        assert!(
            msg.contains("/usr/include/libelf.h (Debian package libelf-dev)"),
            "{msg}"
        );
        assert!(
            msg.ends_with("install with `apt-get install flex libelf-dev`"),
            "{msg}"
        );
    }

    #[test]
    fn finds_present_ones() {
        let root = tempfile::tempdir().expect("tempdir");
        let tools = HostTools::with_root(root.path());
        touch(&root.path().join("usr/bin/flex"), 0o755);
        touch(&root.path().join("usr/include/libelf.h"), 0o644);
        let msg = tools
            .require(&REQS)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!msg.contains("flex"), "{msg}");
        assert!(msg.contains("gelf.h"), "{msg}");
        touch(&root.path().join("usr/include/gelf.h"), 0o644);
        assert!(tools.require(&REQS).is_ok());
        assert_eq!(
            tools.find_program("flex"),
            Some(root.path().join("usr/bin/flex"))
        );
    }

    #[test]
    fn finds_programs_on_path_but_not_paths() {
        assert!(find_on_path("sh").is_some_and(|p| p.is_absolute() && p.ends_with("sh")));
        assert_eq!(find_on_path("tfc-no-such-program"), None);
        assert_eq!(find_on_path("/bin/sh"), None);
        assert_eq!(find_on_path("bin/sh"), None);
        assert_eq!(find_on_path(""), None);
    }

    #[test]
    fn non_executable_is_not_a_program() {
        let root = tempfile::tempdir().expect("tempdir");
        touch(&root.path().join("sbin/mkfs.ext4"), 0o644);
        let tools = HostTools::with_root(root.path());
        assert_eq!(tools.find_program("mkfs.ext4"), None);
    }
}
