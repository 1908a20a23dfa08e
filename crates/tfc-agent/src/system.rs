//! Facts about the machine (`ping`) and changes to it (`sync_clock`,
//! `reseed_entropy`).
//!
//! Changes to the machine happen only in guest mode ([`AgentConfig::guest`]):
//! the same binary runs on the host for tests, often as root, and must never
//! set the host's clock there. A host test that needs `sync_clock` to
//! succeed gives the agent a clock file ([`AgentConfig::clock_file`]) that
//! records the request instead.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

use tfc_agent_proto::{ErrorCode, Reply, PROTOCOL_VERSION};

use crate::server::AgentConfig;

/// The largest seed accepted; the kernel pool takes at most a few KiB per
/// write anyway.
pub const MAX_SEED: usize = 4096;

/// `RNDADDENTROPY`, `_IOW('R', 0x03, int[2])`: the same on every Linux
/// architecture Firecracker runs (x86_64, aarch64). Not exported by `libc`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;

/// Why changing the machine failed.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("{0} needs the agent's guest mode (--guest); refusing to change the machine the agent runs on")]
    NotGuest(&'static str),
    #[error("{0} needs root")]
    NotRoot(&'static str),
    #[error("setting the clock failed")]
    SetClock(#[source] std::io::Error),
    #[error("recording the requested time in the clock file failed")]
    RecordClock(#[source] std::io::Error),
    #[error("the seed must hold 1 to {MAX_SEED} bytes, not {0}")]
    SeedSize(usize),
    #[error("writing the seed to /dev/urandom failed")]
    WriteSeed(#[source] std::io::Error),
    #[error("crediting the seed to the kernel's entropy count failed")]
    CreditSeed(#[source] std::io::Error),
    #[error("{0} needs the agent's guest mode (--guest) or init mode (PID 1); refusing to change the network of the machine the agent runs on")]
    NotGuestOrInit(&'static str),
    #[error("shutdown needs the agent to be the guest's init (PID 1); this agent {0}")]
    NotInit(&'static str),
}

impl SystemError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SystemError::NotGuest(_) | SystemError::NotRoot(_) | SystemError::NotGuestOrInit(_) => {
                ErrorCode::PermissionDenied
            }
            SystemError::NotInit(_) => ErrorCode::Unsupported,
            SystemError::SeedSize(0) => ErrorCode::BadRequest,
            SystemError::SeedSize(_) => ErrorCode::TooLarge,
            SystemError::SetClock(e)
            | SystemError::RecordClock(e)
            | SystemError::WriteSeed(e)
            | SystemError::CreditSeed(e) => match e.kind() {
                std::io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
                _ => ErrorCode::Io,
            },
        }
    }
}

/// When the agent started: fixed by the first call, which `main` makes
/// first thing (an agent forked by init inherits init's).
pub fn started() -> Instant {
    static STARTED: OnceLock<Instant> = OnceLock::new();
    *STARTED.get_or_init(Instant::now)
}

/// The kernel's uptime, when /proc is mounted.
pub fn kernel_uptime() -> Option<std::time::Duration> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let seconds: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(std::time::Duration::from_secs_f64(seconds))
}

/// The answer to `ping`.
pub fn pong() -> Reply {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    // The kernel's uptime; the agent's own when /proc is not mounted (early
    // in a guest's boot).
    let uptime_ms = kernel_uptime()
        .unwrap_or_else(|| started().elapsed())
        .as_millis() as u64;
    Reply::Pong {
        version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        uptime_ms,
        boot_id,
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Sets `CLOCK_REALTIME` to `unix_ns` (or, with a clock file, only records
/// that it was asked to).
pub fn sync_clock(unix_ns: u64, config: &AgentConfig) -> Result<(), SystemError> {
    if let Some(path) = &config.clock_file {
        return std::fs::write(path, format!("{unix_ns}\n")).map_err(SystemError::RecordClock);
    }
    if !config.guest {
        return Err(SystemError::NotGuest("sync_clock"));
    }
    if !is_root() {
        return Err(SystemError::NotRoot("sync_clock"));
    }
    let time = libc::timespec {
        tv_sec: (unix_ns / 1_000_000_000) as _,
        tv_nsec: (unix_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `time` is a valid timespec that outlives the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &time) } != 0 {
        return Err(SystemError::SetClock(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Mixes `seed` into the kernel pool by writing /dev/urandom (allowed to
/// anyone, counts for nothing); in guest mode as root also credits it with
/// RNDADDENTROPY, so a guest blocked on entropy after a restore wakes.
/// Returns whether it was credited.
pub fn reseed_entropy(seed: &[u8], config: &AgentConfig) -> Result<bool, SystemError> {
    if seed.is_empty() || seed.len() > MAX_SEED {
        return Err(SystemError::SeedSize(seed.len()));
    }
    let mut urandom = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(SystemError::WriteSeed)?;
    urandom.write_all(seed).map_err(SystemError::WriteSeed)?;
    if !(config.guest && is_root()) {
        return Ok(false);
    }
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + seed.len());
    info.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    info.extend_from_slice(seed);
    // The kernel reads `buf` as u32s; pad so it never reads past the vector.
    info.resize(8 + seed.len().div_ceil(4) * 4, 0);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&urandom);
    // SAFETY: `info` is a rand_pool_info laid out as the kernel expects,
    // alive for the call; the kernel reads `buf_size` bytes after the header.
    if unsafe { libc::ioctl(fd, RNDADDENTROPY as _, info.as_ptr()) } != 0 {
        return Err(SystemError::CreditSeed(std::io::Error::last_os_error()));
    }
    Ok(true)
}

/// Whether `set_network` may run: in guest mode or when the agent's own
/// init started it (then the network it changes is its guest's, or its
/// network namespace's).
pub fn may_configure_network(config: &AgentConfig) -> Result<(), SystemError> {
    if config.guest || config.init.is_some() {
        Ok(())
    } else {
        Err(SystemError::NotGuestOrInit("set_network"))
    }
}

/// A power-off that init agreed to be asked for.
#[derive(Debug)]
pub struct PowerOff {
    init: i32,
}

/// Checks that `shutdown` can be done: only an agent started by its own
/// init, when that init is PID 1.
pub fn power_off(config: &AgentConfig) -> Result<PowerOff, SystemError> {
    match config.init {
        None => Err(SystemError::NotInit("was not started as init")),
        Some(link) if !link.can_power_off => Err(SystemError::NotInit(
            "runs under an --init that is not PID 1",
        )),
        Some(link) => Ok(PowerOff { init: link.pid }),
    }
}

impl PowerOff {
    /// Asks init to power off; init then stops every process, this agent
    /// included.
    pub fn start(self) -> std::io::Result<()> {
        // SAFETY: kill has no memory effects; `init` is the agent's parent.
        if unsafe { libc::kill(self.init, crate::supervisor::POWER_OFF_SIGNAL) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pong_reports_this_protocol_and_a_boot_id() {
        match pong() {
            Reply::Pong {
                version, boot_id, ..
            } => {
                assert_eq!(version, PROTOCOL_VERSION);
                assert!(!boot_id.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn outside_guest_mode_the_clock_is_never_touched() {
        let err = sync_clock(0, &AgentConfig::default()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::PermissionDenied);
        assert!(err.to_string().contains("--guest"), "{err}");
    }

    #[test]
    fn a_clock_file_records_the_time_and_touches_no_clock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clock");
        let config = AgentConfig {
            guest: false,
            clock_file: Some(path.clone()),
            init: None,
        };
        sync_clock(1_234_567_890_123, &config).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1234567890123\n");
        let missing = AgentConfig {
            guest: false,
            clock_file: Some(dir.path().join("no/such/dir/clock")),
            init: None,
        };
        assert_eq!(sync_clock(1, &missing).unwrap_err().code(), ErrorCode::Io);
    }

    #[test]
    fn shutdown_and_set_network_need_init_or_guest_mode() {
        let host = AgentConfig::default();
        assert_eq!(power_off(&host).unwrap_err().code(), ErrorCode::Unsupported);
        let err = may_configure_network(&host).unwrap_err();
        assert_eq!(err.code(), ErrorCode::PermissionDenied);
        let sub_init = AgentConfig {
            guest: false,
            clock_file: None,
            init: Some(crate::server::InitLink {
                pid: 77,
                can_power_off: false,
            }),
        };
        assert!(may_configure_network(&sub_init).is_ok());
        assert_eq!(
            power_off(&sub_init).unwrap_err().code(),
            ErrorCode::Unsupported
        );
        let guest = AgentConfig {
            guest: true,
            clock_file: None,
            init: None,
        };
        assert!(may_configure_network(&guest).is_ok());
        assert!(power_off(&guest).is_err());
    }

    #[test]
    fn seeds_are_mixed_but_not_credited_outside_guest_mode() {
        let config = AgentConfig::default();
        assert!(!reseed_entropy(&[7; 32], &config).unwrap());
        assert_eq!(
            reseed_entropy(&[], &config).unwrap_err().code(),
            ErrorCode::BadRequest
        );
        assert_eq!(
            reseed_entropy(&[0; MAX_SEED + 1], &config)
                .unwrap_err()
                .code(),
            ErrorCode::TooLarge
        );
    }
}
