//! Control messages: what the host asks ([`Request`]) and what the agent
//! answers or reports ([`Reply`]). They travel as JSON in control frames; the
//! bulk data they refer to travels in data frames with the same id.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the host asks of the agent. The frame's id names the request; frames
/// that belong to it (stdin, file contents, a signal) reuse that id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Liveness and identity; answered with [`Reply::Pong`].
    Ping,
    /// Runs `argv[0]` with `argv`, in a new process group. Answered with
    /// [`Reply::ExecStarted`], then stdout/stderr data frames as output comes,
    /// an `eof` for each, and finally [`Reply::Exit`].
    Exec {
        argv: Vec<String>,
        /// The whole environment of the process: nothing is inherited from
        /// the agent, so a run does not depend on how the agent was started.
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        cwd: Option<String>,
        /// When true, stdin comes as stdin data frames ended by an `eof`;
        /// when false, the process reads `/dev/null`.
        #[serde(default)]
        stdin: bool,
        /// After this long the whole process group gets SIGKILL.
        #[serde(default)]
        timeout_ms: Option<u64>,
        /// Run as this uid (and its gid); only an agent running as root can.
        #[serde(default)]
        uid: Option<u32>,
    },
    /// Sends `signal` to the process group of the running exec with this id.
    /// No reply on success (the exec's [`Reply::Exit`] tells the outcome); an
    /// [`Reply::Error`] when no exec runs under the id or the number is bad.
    Signal { signal: i32 },
    /// Writes `size` bytes, sent as file data frames ended by an `eof`, to
    /// `path` with permission bits `mode`. Answered with [`Reply::Done`].
    PutFile {
        path: String,
        mode: u32,
        size: u64,
        /// Write a temporary file beside `path` and rename it into place, so
        /// readers see the old file or the whole new one, never a part.
        #[serde(default)]
        atomic: bool,
    },
    /// Reads `path`: answered with [`Reply::FileInfo`], file data frames and
    /// an `eof`.
    GetFile {
        path: String,
        #[serde(default)]
        max_size: Option<u64>,
    },
    /// Re-addresses an interface in the guest (a clone's new identity): the
    /// interface is brought up and left with exactly this IPv4 address; the
    /// default route goes through `gateway` when given; `nameservers`, when
    /// not empty, are written to `/etc/resolv.conf` (at most 3). Answered
    /// with [`Reply::Done`].
    SetNetwork {
        interface: String,
        /// `ADDRESS/PREFIX`, IPv4.
        address_cidr: String,
        #[serde(default)]
        gateway: Option<String>,
        /// Left out of the JSON when empty, so agents that predate the field
        /// still accept requests that do not use it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        nameservers: Vec<String>,
    },
    /// Sets the guest's realtime clock (after a snapshot restore the guest
    /// clock is as old as the snapshot).
    SyncClock { unix_ns: u64 },
    /// Mixes fresh host randomness into the guest pool (after a restore,
    /// clones of one snapshot would otherwise share their random state).
    ReseedEntropy {
        #[serde(with = "base64_bytes")]
        seed: Vec<u8>,
    },
    /// Powers the guest off: answered with [`Reply::Done`] once the agent
    /// (as the guest's PID 1) accepted it; the connection then closes as the
    /// guest stops. An agent that is not the guest's init answers
    /// `unsupported`.
    Shutdown,
}

/// What the agent answers, or reports while a request runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Reply {
    Pong {
        /// The agent's [`crate::PROTOCOL_VERSION`].
        version: u8,
        agent_version: String,
        /// Time since the guest kernel booted.
        uptime_ms: u64,
        /// The guest kernel's boot id: it changes on every boot, not on a
        /// snapshot restore.
        boot_id: String,
    },
    ExecStarted {
        pid: u32,
    },
    /// The end of an exec. `code` when it exited, `signal` when a signal
    /// ended it; `timed_out` when the agent killed it for its timeout.
    Exit {
        #[serde(default)]
        code: Option<i32>,
        #[serde(default)]
        signal: Option<i32>,
        #[serde(default)]
        timed_out: bool,
    },
    /// Sent before the contents of a `get_file`.
    FileInfo {
        size: u64,
        mode: u32,
    },
    /// A request without a more specific answer succeeded.
    Done,
    /// `reseed_entropy` succeeded: the seed was mixed into the pool;
    /// `credited` says whether the kernel also counted it as entropy (that
    /// needs root and the agent's guest mode).
    Reseeded {
        credited: bool,
    },
    /// The request failed; nothing more comes for this id.
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl Reply {
    /// An error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Reply::Error {
            code,
            message: message.into(),
        }
    }
}

/// Stable error codes: a host decides on these, never on the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed or inconsistent (also: an id already in use).
    BadRequest,
    NotFound,
    PermissionDenied,
    /// A size limit was exceeded.
    TooLarge,
    Timeout,
    /// This agent does not implement the request.
    Unsupported,
    /// An I/O error in the guest.
    Io,
    /// The frame itself was unreadable; the agent closes the connection after
    /// sending this, because it can no longer find the next frame.
    Protocol,
}

/// `Vec<u8>` as standard base64 in JSON.
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_use_snake_case_ops_and_defaults() {
        let request: Request = serde_json::from_str(r#"{"op":"exec","argv":["true"]}"#).unwrap();
        assert_eq!(
            request,
            Request::Exec {
                argv: vec!["true".into()],
                env: BTreeMap::new(),
                cwd: None,
                stdin: false,
                timeout_ms: None,
                uid: None,
            }
        );
        let text = serde_json::to_string(&Request::SyncClock { unix_ns: 7 }).unwrap();
        assert_eq!(text, r#"{"op":"sync_clock","unix_ns":7}"#);
    }

    #[test]
    fn set_network_leaves_out_empty_nameservers() {
        let request = Request::SetNetwork {
            interface: "eth0".into(),
            address_cidr: "10.0.0.2/24".into(),
            gateway: None,
            nameservers: Vec::new(),
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(
            text,
            r#"{"op":"set_network","interface":"eth0","address_cidr":"10.0.0.2/24","gateway":null}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
    }

    #[test]
    fn requests_refuse_unknown_fields_and_ops() {
        let err = serde_json::from_str::<Request>(r#"{"op":"exec","argv":[],"timout_ms":5}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        // serde checks fields of struct variants only: the field-less ops
        // (`ping`, `shutdown`) ignore extra fields. Pinned here so a change
        // in serde's behaviour is noticed.
        let ping = serde_json::from_str::<Request>(r#"{"op":"ping","extra":1}"#).unwrap();
        assert_eq!(ping, Request::Ping);
        let err = serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
    }

    #[test]
    fn replies_accept_unknown_fields_from_newer_agents() {
        let reply: Reply = serde_json::from_str(r#"{"op":"done","new_field":true}"#).unwrap();
        assert_eq!(reply, Reply::Done);
    }

    #[test]
    fn seed_is_base64_in_json() {
        let request = Request::ReseedEntropy {
            seed: vec![0, 1, 254, 255],
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(text, r#"{"op":"reseed_entropy","seed":"AAH+/w=="}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        let err =
            serde_json::from_str::<Request>(r#"{"op":"reseed_entropy","seed":"!!"}"#).unwrap_err();
        assert!(err.is_data(), "{err}");
    }

    #[test]
    fn error_codes_are_stable_strings() {
        let text = serde_json::to_string(&Reply::error(ErrorCode::PermissionDenied, "no")).unwrap();
        assert_eq!(
            text,
            r#"{"op":"error","code":"permission_denied","message":"no"}"#
        );
    }
}
