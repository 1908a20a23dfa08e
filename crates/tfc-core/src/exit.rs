//! How a VMM process ended.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Exit code or terminating signal of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitReason {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitReason {
    /// Killed by SIGKILL.
    pub const KILLED: ExitReason = ExitReason {
        code: None,
        signal: Some(9),
    };

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exited with code {code}"),
            (None, Some(sig)) => write!(f, "killed by signal {sig} ({})", signal_name(sig)),
            (None, None) => f.write_str("ended for an unknown reason"),
        }
    }
}

/// Names of the signals a VMM is likely to die of (x86-64 Linux numbering).
fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        31 => "SIGSYS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons_read_well() {
        assert_eq!(
            ExitReason::KILLED.to_string(),
            "killed by signal 9 (SIGKILL)"
        );
        let failed = ExitReason {
            code: Some(1),
            signal: None,
        };
        assert_eq!(failed.to_string(), "exited with code 1");
        assert!(!failed.success());
    }
}
