//! Content keys for the asset cache: an asset's directory is named by a hash
//! of everything that went into it, so a changed input builds a new asset
//! beside the old one instead of silently reusing it.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Hashes labelled parts. Each part is length-prefixed so that moving bytes
/// from one part to the next changes the key.
#[derive(Debug, Clone)]
pub struct KeyBuilder {
    hasher: Sha256,
}

impl KeyBuilder {
    /// `kind` separates key spaces (a kernel and a rootfs never share a key).
    pub fn new(kind: &str) -> Self {
        let mut b = KeyBuilder {
            hasher: Sha256::new(),
        };
        b.feed(b"tfc-asset-key-v1");
        b.feed(kind.as_bytes());
        b
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.hasher.update((bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
    }

    pub fn part(mut self, label: &str, value: impl AsRef<[u8]>) -> Self {
        self.feed(label.as_bytes());
        self.feed(value.as_ref());
        self
    }

    /// The full hex digest; asset directories use its first 16 characters.
    pub fn finish(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

/// The directory-name form of a key: short enough to read in a path, long
/// enough (64 bits) that two different inputs do not collide in one cache.
pub fn short(key: &str) -> &str {
    key.get(..16).unwrap_or(key)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn file_sha256(path: &Path) -> io::Result<String> {
    reader_sha256(&mut File::open(path)?)
}

/// Hex sha256 of everything `reader` yields.
pub(crate) fn reader_sha256(reader: &mut impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(reader, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// A remembered digest of a large file, valid while its size and mtime hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DigestMemo {
    path: String,
    size: u64,
    mtime_ns: i128,
    sha256: String,
}

fn stat_id(path: &Path) -> io::Result<(u64, i128)> {
    let meta = path.metadata()?;
    let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    Ok((meta.size(), mtime_ns))
}

/// The sha256 of `path`, remembered in `memo`. Hashing the 130 MiB kernel
/// source tarball takes seconds in an unoptimized build; a cached
/// `tfc assets build` must finish in about one.
pub fn memoized_file_sha256(path: &Path, memo: &Path) -> io::Result<String> {
    let (size, mtime_ns) = stat_id(path)?;
    let shown = path.display().to_string();
    let remembered = std::fs::read(memo)
        .ok()
        .and_then(|b| serde_json::from_slice::<DigestMemo>(&b).ok());
    if let Some(m) = remembered {
        if m.path == shown && m.size == size && m.mtime_ns == mtime_ns {
            return Ok(m.sha256);
        }
    }
    let sha256 = file_sha256(path)?;
    let memo_entry = DigestMemo {
        path: shown,
        size,
        mtime_ns,
        sha256: sha256.clone(),
    };
    // A memo that cannot be written only costs time on the next run.
    if let Ok(json) = serde_json::to_vec_pretty(&memo_entry) {
        let _ = crate::assets::write_atomic(memo, &json);
    }
    Ok(sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_input_sensitive() {
        let k = |a: &str, b: &str| KeyBuilder::new("kernel").part("a", a).part("b", b).finish();
        // Pinned: a change here invalidates every cached asset, which must be
        // a deliberate decision, not an accident of refactoring.
        assert_eq!(
            k("x", "y"),
            "b29fd454527ccbf146472b90646d0e4916d3d67dbe2d453fb352bd290d72e16d"
        );
        assert_eq!(k("x", "y"), k("x", "y"));
        assert_ne!(k("xy", ""), k("x", "y"));
        assert_ne!(
            KeyBuilder::new("rootfs")
                .part("a", "x")
                .part("b", "y")
                .finish(),
            k("x", "y")
        );
        assert_eq!(short(&k("x", "y")).len(), 16);
    }

    #[test]
    fn memo_reused_until_file_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("src.tar.xz");
        let memo = dir.path().join("memo.json");
        std::fs::write(&file, b"one").expect("write");
        let first = memoized_file_sha256(&file, &memo).expect("hash");
        assert_eq!(first, sha256_hex(b"one"));
        assert!(memo.exists());
        // A memo pointing at a different size is ignored.
        std::fs::write(&file, b"three").expect("write");
        assert_eq!(
            memoized_file_sha256(&file, &memo).expect("hash"),
            sha256_hex(b"three")
        );
    }
}
