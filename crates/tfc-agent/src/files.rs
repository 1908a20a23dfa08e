//! `put_file` and `get_file`.
//!
//! A put writes to a temporary file beside the target (same directory, so the
//! rename cannot cross filesystems), checks that exactly the declared size
//! arrived, fsyncs, sets the mode, renames into place and fsyncs the
//! directory: after a crash the target is the old file or the whole new one.
//! Any failure removes the temporary file (`Scratch`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tfc_agent_proto::{DataKind, ErrorCode, Frame, Reply};
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::server::{Inbound, Outbox};
use crate::CHUNK;

/// The largest file either request moves.
pub const MAX_FILE_SIZE: u64 = 1024 * 1024 * 1024;

/// Why a file request failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("path {0:?} is not absolute")]
    RelativePath(String),
    #[error("{size} bytes is over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("the put declared {declared} bytes but {arrived} arrived")]
    SizeMismatch { declared: u64, arrived: u64 },
    #[error("{0} is not a regular file")]
    NotAFile(String),
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path} failed")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path} failed")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} shrank while it was read ({sent} of {size} bytes sent)")]
    Shrank { path: String, sent: u64, size: u64 },
    #[error("the connection closed during the transfer")]
    ConnectionClosed,
}

impl FileError {
    pub fn code(&self) -> ErrorCode {
        let io_code = |source: &std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound => ErrorCode::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
            _ => ErrorCode::Io,
        };
        match self {
            FileError::RelativePath(_)
            | FileError::SizeMismatch { .. }
            | FileError::NotAFile(_) => ErrorCode::BadRequest,
            FileError::TooLarge { .. } => ErrorCode::TooLarge,
            FileError::Open { source, .. }
            | FileError::Write { source, .. }
            | FileError::Read { source, .. } => io_code(source),
            FileError::Shrank { .. } | FileError::ConnectionClosed => ErrorCode::Io,
        }
    }
}

/// A file being written that is removed unless committed.
#[derive(Debug)]
struct Scratch {
    path: PathBuf,
    committed: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Receives `size` bytes for request `id` and writes them to `path`.
pub async fn put(
    id: u64,
    path: &str,
    mode: u32,
    size: u64,
    atomic: bool,
    mut inbound: mpsc::Receiver<Inbound>,
) -> Result<(), FileError> {
    let target = Path::new(path);
    if !target.is_absolute() {
        return Err(FileError::RelativePath(path.into()));
    }
    if size > MAX_FILE_SIZE {
        return Err(FileError::TooLarge {
            size,
            limit: MAX_FILE_SIZE,
        });
    }
    let written_path = if atomic {
        let name = target.file_name().ok_or(FileError::NotAFile(path.into()))?;
        let mut temp = name.to_os_string();
        temp.push(format!(".tfc-put-{}-{id}", std::process::id()));
        target.with_file_name(temp)
    } else {
        target.to_path_buf()
    };
    let shown = written_path.display().to_string();
    let write_err = |source| FileError::Write {
        path: shown.clone(),
        source,
    };
    // The scratch name is predictable: create it afresh and never through a
    // symlink, or a guest user could point it at a file of root's.
    let mut options = OpenOptions::new();
    options.write(true).mode(0o600);
    if atomic {
        options.create_new(true).custom_flags(libc::O_NOFOLLOW);
    } else {
        options.create(true).truncate(true);
    }
    let mut file = options
        .open(&written_path)
        .await
        .map_err(|source| FileError::Open {
            path: shown.clone(),
            source,
        })?;
    let mut scratch = Scratch {
        path: written_path.clone(),
        committed: false,
    };

    let mut arrived = 0u64;
    loop {
        match inbound.recv().await {
            Some(Inbound::Data(DataKind::File, bytes)) => {
                arrived += bytes.len() as u64;
                if arrived > size {
                    return Err(FileError::SizeMismatch {
                        declared: size,
                        arrived,
                    });
                }
                file.write_all(&bytes).await.map_err(write_err)?;
            }
            Some(Inbound::Eof(DataKind::File)) => break,
            Some(other) => tracing::debug!(id, ?other, "ignoring a non-file frame sent to a put"),
            None => return Err(FileError::ConnectionClosed),
        }
    }
    if arrived != size {
        return Err(FileError::SizeMismatch {
            declared: size,
            arrived,
        });
    }
    file.sync_all().await.map_err(write_err)?;
    // Set explicitly: the mode given at open is filtered by the umask.
    file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
        .await
        .map_err(write_err)?;
    drop(file);
    if atomic {
        tokio::fs::rename(&written_path, target)
            .await
            .map_err(write_err)?;
        // The rename is durable only once the directory is synced.
        if let Some(dir) = target.parent() {
            if let Ok(dir) = File::open(dir).await {
                let _ = dir.sync_all().await;
            }
        }
    }
    scratch.committed = true;
    Ok(())
}

/// Sends `file_info` and the contents of `path` as file data frames for
/// request `id`; the caller sends the closing `eof`.
pub async fn get(
    id: u64,
    path: &str,
    max_size: Option<u64>,
    outbox: &Outbox,
) -> Result<(), FileError> {
    if !Path::new(path).is_absolute() {
        return Err(FileError::RelativePath(path.into()));
    }
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
    // writer, holding a thread of the agent for as long; it is refused
    // below like any file that is not regular. Regular files ignore the
    // flag.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .await
        .map_err(|source| FileError::Open {
            path: path.into(),
            source,
        })?;
    let read_err = |source| FileError::Read {
        path: path.into(),
        source,
    };
    let meta = file.metadata().await.map_err(read_err)?;
    if !meta.is_file() {
        return Err(FileError::NotAFile(path.into()));
    }
    let limit = max_size.unwrap_or(MAX_FILE_SIZE).min(MAX_FILE_SIZE);
    let size = meta.len();
    if size > limit {
        return Err(FileError::TooLarge { size, limit });
    }
    let info = Reply::FileInfo {
        size,
        mode: meta.permissions().mode() & 0o7777,
    };
    send(outbox, Frame::reply(id, info)).await?;
    // Exactly `size` bytes, so the contents agree with the info even when
    // the file grows meanwhile.
    let mut contents = file.take(size);
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = contents.read(&mut buf).await.map_err(read_err)?;
        if n == 0 {
            break;
        }
        sent += n as u64;
        send(outbox, Frame::data(id, DataKind::File, buf[..n].to_vec())).await?;
    }
    if sent != size {
        return Err(FileError::Shrank {
            path: path.into(),
            sent,
            size,
        });
    }
    Ok(())
}

async fn send(outbox: &Outbox, frame: Frame) -> Result<(), FileError> {
    outbox
        .send(frame)
        .await
        .map_err(|_| FileError::ConnectionClosed)
}
