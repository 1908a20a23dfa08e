//! Named crash points for fault-injection tests, as the daemon has them: in
//! debug builds, `TFC_CRASH_AT=<name>` makes the process SIGKILL itself when
//! it reaches that point, exactly as `kill -9` would at that moment. Release
//! builds compile the points away.
//!
//! Points: `net.slot.after_namespace`, `net.slot.after_ruleset`,
//! `net.slot.after_tap`, `net.slot.after_veth` (a slot half made),
//! `net.attach.after_record` (a VM's objects recorded, its addresses not yet
//! set), `net.attach.after_addresses`, `net.teardown.after_objects` (every
//! object removed, record and lease still stored).

/// Dies here if `TFC_CRASH_AT` names this point (debug builds only).
pub(crate) fn point(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("TFC_CRASH_AT").is_ok_and(|at| at == name) {
        tracing::error!(point = name, "crash point reached: SIGKILL");
        // SAFETY: kill(2) of our own pid has no memory-safety preconditions.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
