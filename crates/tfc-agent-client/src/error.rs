//! Every way talking to the agent fails, named for the step that failed.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tfc_agent_proto::{ErrorCode, FrameError};

/// Why a connection could not be opened or a call failed.
///
/// The connection-wide failures ([`AgentError::Send`],
/// [`AgentError::Receive`], [`AgentError::ConnectionClosed`]) are reported to
/// every call pending when the connection died and to every later call, so
/// their causes are shared (`Arc`).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot connect to the socket {path}")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("sending the vsock CONNECT request failed")]
    HandshakeWrite(#[source] io::Error),
    #[error("reading the answer to the vsock CONNECT request failed")]
    HandshakeRead(#[source] io::Error),
    #[error(
        "the VMM closed the connection to guest vsock port {port}: nothing listens there \
         (is the agent running in the guest?)"
    )]
    Refused { port: u32 },
    #[error("unexpected answer to `CONNECT {port}` on the vsock socket: {answer:?}")]
    UnexpectedAnswer { port: u32, answer: String },
    #[error("no answer to the vsock handshake within {0:?}")]
    HandshakeTimeout(Duration),

    #[error("sending to the agent failed")]
    Send(#[source] Arc<FrameError>),
    #[error("reading from the agent failed")]
    Receive(#[source] Arc<FrameError>),
    #[error("the agent closed the connection")]
    ConnectionClosed,

    /// The agent answered the request with an error reply.
    #[error("the agent refused the request ({code:?}): {message}")]
    Agent { code: ErrorCode, message: String },
    #[error("the agent sent {got} where {expected} was due")]
    UnexpectedReply { expected: &'static str, got: String },

    #[error("stdin of this exec is not open: request it with `ExecRequest::stdin` and write before closing it")]
    StdinNotOpen,
    #[error("reading the local source of a put_file failed")]
    ReadSource(#[source] io::Error),
    #[error("writing the contents of a get_file locally failed")]
    WriteSink(#[source] io::Error),
    #[error(
        "this call's caller read too slowly: more than {limit} bytes of its frames waited unread, \
         so the call was ended and cancelled in the guest (read the output as it comes)"
    )]
    FellBehind { limit: usize },
    #[error("the call took longer than {0:?}")]
    Timeout(Duration),
}

impl AgentError {
    /// The agent's error code, when the agent refused the request.
    pub fn agent_code(&self) -> Option<ErrorCode> {
        match self {
            AgentError::Agent { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn unexpected(expected: &'static str, got: impl std::fmt::Debug) -> Self {
        AgentError::UnexpectedReply {
            expected,
            got: format!("{got:?}"),
        }
    }
}
