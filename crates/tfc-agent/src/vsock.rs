//! AF_VSOCK for tokio: a listener and its streams, over `libc` and
//! [`AsyncFd`].
//!
//! The listening socket is made by [`bind`] without a runtime, so PID 1 can
//! create it once before it forks the agent and keep it across restarts of
//! the agent (connections waiting in the backlog are served by the next
//! one). [`VsockListener::from_fd`] hands it to tokio inside the agent.
//!
//! Every socket here is non-blocking and close-on-exec: the processes that
//! `exec` starts never inherit a connection to the host.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Any CID of this machine: the guest's own, whatever the VMM assigned.
pub const CID_ANY: u32 = libc::VMADDR_CID_ANY;

/// The local loopback CID (1), served by the `vsock_loopback` transport.
pub const CID_LOCAL: u32 = libc::VMADDR_CID_LOCAL;

/// Connections the kernel queues before the agent accepts them.
const BACKLOG: libc::c_int = 128;

fn socket_address(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain integers; all-zero is valid (and the
    // reserved and padding fields must be zero).
    let mut address: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    address.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    address.svm_cid = cid;
    address.svm_port = port;
    address
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Registers `fd` with the current tokio runtime.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is an open fd that it alone closes, on drop, and
    // its as_raw_fd always returns that same fd.
    Ok(unsafe { AsyncFd::register(fd) }?)
}

/// A new non-blocking, close-on-exec stream socket of AF_VSOCK.
fn stream_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers; a non-negative result is a new fd
    // that nothing else owns.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_VSOCK,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: `fd` was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Binds a listening vsock socket to `cid` ([`CID_ANY`] in a guest) and
/// `port`. Needs no runtime.
pub fn bind(cid: u32, port: u32) -> io::Result<OwnedFd> {
    let fd = stream_socket()?;
    let address = socket_address(cid, port);
    // SAFETY: `address` is a valid sockaddr_vm that outlives the call and
    // the length passed is its size.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&address as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    })?;
    // SAFETY: listen takes no pointers.
    check(unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) })?;
    Ok(fd)
}

/// The `(cid, port)` a vsock socket is bound to.
pub fn local_address(fd: RawFd) -> io::Result<(u32, u32)> {
    // SAFETY: all-zero is a valid sockaddr_vm for the kernel to overwrite.
    let mut address: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `address` and `len` are writable and sized as declared.
    check(unsafe {
        libc::getsockname(
            fd,
            (&mut address as *mut libc::sockaddr_vm).cast(),
            &mut len,
        )
    })?;
    Ok((address.svm_cid, address.svm_port))
}

/// A listening vsock socket registered with tokio.
#[derive(Debug)]
pub struct VsockListener {
    fd: AsyncFd<OwnedFd>,
}

impl VsockListener {
    /// Takes over a socket made by [`bind`]. Must be called inside a tokio
    /// runtime.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        Ok(VsockListener { fd: register(fd)? })
    }

    /// The next connection and the peer's `(cid, port)`.
    pub async fn accept(&self) -> io::Result<(VsockStream, (u32, u32))> {
        loop {
            let mut ready = self.fd.readable().await?;
            // SAFETY: all-zero is a valid sockaddr_vm for the kernel to
            // overwrite.
            let mut peer: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
            let accepted = ready.try_io(|fd| {
                // SAFETY: `peer` and `len` are writable and sized as declared;
                // a non-negative result is a new fd owned by nothing else.
                check(unsafe {
                    libc::accept4(
                        fd.as_raw_fd(),
                        (&mut peer as *mut libc::sockaddr_vm).cast(),
                        &mut len,
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    )
                })
            });
            match accepted {
                Ok(Ok(raw)) => {
                    // SAFETY: accept4 returned a new fd that nothing else owns.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    let stream = VsockStream {
                        fd: register(owned)?,
                    };
                    return Ok((stream, (peer.svm_cid, peer.svm_port)));
                }
                Ok(Err(e)) => return Err(e),
                // Not ready after all: readiness was cleared, wait again.
                Err(_would_block) => continue,
            }
        }
    }
}

/// A connected vsock stream registered with tokio.
#[derive(Debug)]
pub struct VsockStream {
    fd: AsyncFd<OwnedFd>,
}

impl VsockStream {
    /// Connects to `(cid, port)`: for tests through the loopback transport
    /// (CID 1); the host itself connects through the VMM's Unix socket.
    pub async fn connect(cid: u32, port: u32) -> io::Result<Self> {
        let fd = stream_socket()?;
        let address = socket_address(cid, port);
        // SAFETY: `address` is a valid sockaddr_vm that outlives the call.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&address as *const libc::sockaddr_vm).cast(),
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        let stream = VsockStream { fd: register(fd)? };
        // A non-blocking connect completes when the socket turns writable;
        // SO_ERROR then says how it went.
        let _ready = stream.fd.writable().await?;
        let mut error: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `error` and `len` are writable and sized as declared.
        check(unsafe {
            libc::getsockopt(
                stream.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut error as *mut libc::c_int).cast(),
                &mut len,
            )
        })?;
        if error != 0 {
            return Err(io::Error::from_raw_os_error(error));
        }
        Ok(stream)
    }
}

impl AsyncRead for VsockStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let read = ready.try_io(|fd| {
                // SAFETY: `unfilled` is writable for its length and
                // outlives the call.
                let n = unsafe {
                    libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match read {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for VsockStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut ready = ready!(self.fd.poll_write_ready(cx))?;
            let written = ready.try_io(|fd| {
                // SAFETY: `buf` is readable for its length and outlives the
                // call. MSG_NOSIGNAL: a closed peer is an EPIPE error here,
                // never a SIGPIPE for the whole agent.
                let n = unsafe {
                    libc::send(
                        fd.as_raw_fd(),
                        buf.as_ptr().cast(),
                        buf.len(),
                        libc::MSG_NOSIGNAL,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match written {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered in user space.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: shutdown takes no pointers; the fd is open while `self` is.
        let rc = unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_WR) };
        Poll::Ready(check(rc).map(drop))
    }
}
