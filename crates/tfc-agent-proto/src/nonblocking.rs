//! Frame reader and writer over tokio's `AsyncRead`/`AsyncWrite`, with the same
//! contract as [`crate::blocking`]: one exact frame per read, the length checked
//! before allocating.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{DataKind, Frame, FrameBody, FrameError, Header, HEADER_LEN};

/// Reads frames from an async byte stream.
#[derive(Debug)]
pub struct AsyncFrameReader<R> {
    inner: R,
}

impl<R: AsyncRead + Unpin> AsyncFrameReader<R> {
    pub fn new(inner: R) -> Self {
        AsyncFrameReader { inner }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next frame, or `None` on a clean end between frames.
    ///
    /// Not cancel-safe: dropping the future mid-frame loses the stream's
    /// position. Run it in a task of its own rather than in a `select!`.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let mut raw = [0u8; HEADER_LEN];
        match fill(&mut self.inner, &mut raw)
            .await
            .map_err(FrameError::Read)?
        {
            0 => return Ok(None),
            HEADER_LEN => {}
            got => return Err(FrameError::TruncatedHeader { got }),
        }
        let header = Header::parse(&raw)?;
        // Allocated only now: `parse` bounded `len` by MAX_PAYLOAD.
        let mut payload = vec![0u8; header.len as usize];
        let got = fill(&mut self.inner, &mut payload)
            .await
            .map_err(FrameError::Read)?;
        if got < payload.len() {
            return Err(FrameError::TruncatedPayload {
                expected: header.len,
                got,
            });
        }
        let body = FrameBody::decode(&header, payload)?;
        Ok(Some(Frame {
            id: header.id,
            body,
        }))
    }
}

async fn fill(reader: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]).await {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Writes frames to an async byte stream.
#[derive(Debug)]
pub struct AsyncFrameWriter<W> {
    inner: W,
}

impl<W: AsyncWrite + Unpin> AsyncFrameWriter<W> {
    pub fn new(inner: W) -> Self {
        AsyncFrameWriter { inner }
    }

    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Writes and flushes one frame.
    pub async fn write_frame(&mut self, frame: &Frame) -> Result<(), FrameError> {
        match &frame.body {
            FrameBody::Data { kind, bytes } => self.write_data(frame.id, *kind, bytes).await,
            _ => {
                let bytes = frame.to_bytes()?;
                self.inner
                    .write_all(&bytes)
                    .await
                    .map_err(FrameError::Write)?;
                self.inner.flush().await.map_err(FrameError::Write)
            }
        }
    }

    /// Writes and flushes one data chunk of at most [`crate::MAX_PAYLOAD`] bytes.
    pub async fn write_data(
        &mut self,
        id: u64,
        kind: DataKind,
        bytes: &[u8],
    ) -> Result<(), FrameError> {
        let header = Header::encode(kind.frame_kind(), id, bytes.len())?;
        self.inner
            .write_all(&header)
            .await
            .map_err(FrameError::Write)?;
        self.inner
            .write_all(bytes)
            .await
            .map_err(FrameError::Write)?;
        self.inner.flush().await.map_err(FrameError::Write)
    }

    /// Writes raw bytes as given, unchecked: for tests of malformed input.
    #[doc(hidden)]
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.inner
            .write_all(bytes)
            .await
            .map_err(FrameError::Write)?;
        self.inner.flush().await.map_err(FrameError::Write)
    }
}
