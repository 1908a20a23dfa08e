//! Frame reader and writer over blocking `std::io` streams.

use std::io::{self, Read, Write};

use crate::frame::{DataKind, Frame, FrameBody, FrameError, Header, HEADER_LEN};

/// Reads frames from a byte stream, one exact frame per call.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader { inner }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next frame, or `None` when the stream ended cleanly between
    /// frames. An end inside a frame is [`FrameError::TruncatedHeader`] or
    /// [`FrameError::TruncatedPayload`].
    pub fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let mut raw = [0u8; HEADER_LEN];
        match fill(&mut self.inner, &mut raw).map_err(FrameError::Read)? {
            0 => return Ok(None),
            HEADER_LEN => {}
            got => return Err(FrameError::TruncatedHeader { got }),
        }
        let header = Header::parse(&raw)?;
        // Allocated only now: `parse` bounded `len` by MAX_PAYLOAD.
        let mut payload = vec![0u8; header.len as usize];
        let got = fill(&mut self.inner, &mut payload).map_err(FrameError::Read)?;
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

/// Reads into `buf` until it is full or the stream ends; returns how much
/// was read.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Writes frames to a byte stream.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        FrameWriter { inner }
    }

    pub fn into_inner(self) -> W {
        self.inner
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Writes and flushes one frame.
    pub fn write_frame(&mut self, frame: &Frame) -> Result<(), FrameError> {
        match &frame.body {
            // Data goes out without the copy `Frame::to_bytes` would make.
            FrameBody::Data { kind, bytes } => self.write_data(frame.id, *kind, bytes),
            _ => {
                let bytes = frame.to_bytes()?;
                self.inner.write_all(&bytes).map_err(FrameError::Write)?;
                self.inner.flush().map_err(FrameError::Write)
            }
        }
    }

    /// Writes and flushes one data chunk of at most [`crate::MAX_PAYLOAD`] bytes.
    pub fn write_data(&mut self, id: u64, kind: DataKind, bytes: &[u8]) -> Result<(), FrameError> {
        let header = Header::encode(kind.frame_kind(), id, bytes.len())?;
        self.inner.write_all(&header).map_err(FrameError::Write)?;
        self.inner.write_all(bytes).map_err(FrameError::Write)?;
        self.inner.flush().map_err(FrameError::Write)
    }

    /// Writes a raw header and payload as given, unchecked: for tests that
    /// must produce frames a correct writer never would.
    #[doc(hidden)]
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.inner.write_all(bytes).map_err(FrameError::Write)?;
        self.inner.flush().map_err(FrameError::Write)
    }
}
