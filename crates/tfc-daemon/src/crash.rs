//! Named crash points for fault-injection tests. In debug builds (what the test
//! suite runs), `TFC_CRASH_AT=<name>` makes the daemon SIGKILL itself when it
//! reaches that point, exactly as `kill -9` would at that moment. Release builds
//! compile the points away.
//!
//! Points: `create.after_intent` (record stored, nothing started),
//! `create.after_spawn` (VMM spawned and configured, not booted),
//! `create.after_start` (guest started, boot recorded), `stop.after_intent`
//! (`stopping` stored, VMM not signalled), `stop.after_exit` (VMM ended,
//! `stopped` not stored), `delete.after_files` (directory removed, record not).

/// Dies here if `TFC_CRASH_AT` names this point (debug builds only).
pub fn point(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("TFC_CRASH_AT").is_ok_and(|at| at == name) {
        tracing::error!(point = name, "crash point reached: SIGKILL");
        // SAFETY: kill(2) of our own pid has no memory-safety preconditions.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
