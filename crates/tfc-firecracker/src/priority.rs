//! CPU priority of VMM processes.
//!
//! A VMM started ahead of demand (a pool's prewarmed VM) can run at idle
//! priority, Linux's `SCHED_IDLE`: it gets only CPU time that no normal
//! thread wants, so restoring and waiting VMs never delay the VMs in use or
//! the requests being answered (on a small host a refill's restore, or an
//! idle guest that spins, otherwise does: a woken thread can wait a whole
//! time slice behind them). When the VM is handed out, every thread of its
//! VMM is given the normal policy back.
//!
//! Leaving `SCHED_IDLE` needs `CAP_SYS_NICE` (or a `RLIMIT_NICE` that allows
//! nice 0), so [`can_leave_idle`] is asked before any VMM is made idle: a
//! VMM that could not be given its priority back must never be made so.
//!
//! A VMM is made idle by its pid right after its spawn, never by lowering
//! the spawning thread for the spawn: the child of a spawn runs before the
//! spawn returns, and an idle child on a CPU kept busy by normal threads
//! (running guests) took seconds to exec, holding a daemon thread with it.

use std::io;

/// A scheduling class a VMM's threads run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// `SCHED_OTHER` (the default; its nice value is left as it was).
    Normal,
    /// `SCHED_IDLE`: runs only when no normal thread wants the CPU.
    Idle,
}

impl Priority {
    fn policy(self) -> libc::c_int {
        match self {
            Priority::Normal => libc::SCHED_OTHER,
            Priority::Idle => libc::SCHED_IDLE,
        }
    }
}

/// Failures to read or change a process's priority.
#[derive(Debug, thiserror::Error)]
pub enum PriorityError {
    #[error("cannot list the threads of process {pid}")]
    ListThreads {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the scheduling policy of thread {tid} of process {pid}")]
    SetPolicy {
        pid: u32,
        tid: i32,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the scheduling policy of process {pid}")]
    GetPolicy {
        pid: u32,
        #[source]
        source: io::Error,
    },
}

/// Sets `priority` on thread `tid` (0: the calling thread).
fn set_thread(tid: libc::pid_t, priority: Priority) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the pid, the policy and the param it
    // is given a valid pointer to; it changes only the scheduler's state.
    if unsafe { libc::sched_setscheduler(tid, priority.policy(), &param) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The priority thread `tid` (0: the calling thread) runs at; a real-time
/// or batch policy reads as [`Priority::Normal`] (not idle).
fn thread_priority(tid: libc::pid_t) -> io::Result<Priority> {
    // SAFETY: sched_getscheduler only reads the scheduler's state.
    match unsafe { libc::sched_getscheduler(tid) } {
        -1 => Err(io::Error::last_os_error()),
        libc::SCHED_IDLE => Ok(Priority::Idle),
        _ => Ok(Priority::Normal),
    }
}

/// Whether this process may start VMMs idle: it can take a thread to
/// `SCHED_IDLE` and back. Asked once, on a scratch thread, so no thread
/// that matters is ever left idle by the probe.
pub fn can_leave_idle() -> bool {
    std::thread::Builder::new()
        .name("tfc-sched-probe".into())
        .spawn(|| {
            matches!(thread_priority(0), Ok(Priority::Normal))
                && set_thread(0, Priority::Idle).is_ok()
                && set_thread(0, Priority::Normal).is_ok()
        })
        .ok()
        .and_then(|probe| probe.join().ok())
        .unwrap_or(false)
}

/// Sets `priority` on every thread of process `pid`. Threads it starts
/// afterwards inherit the policy of the thread that starts them.
pub fn set_process(pid: u32, priority: Priority) -> Result<(), PriorityError> {
    let list = |source| PriorityError::ListThreads { pid, source };
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).map_err(list)? {
        let name = entry.map_err(list)?.file_name();
        let Some(tid) = name.to_str().and_then(|n| n.parse::<libc::pid_t>().ok()) else {
            continue;
        };
        match set_thread(tid, priority) {
            Ok(()) => {}
            // A thread that ended meanwhile needs no priority.
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {}
            Err(source) => return Err(PriorityError::SetPolicy { pid, tid, source }),
        }
    }
    Ok(())
}

/// The priority of process `pid`'s main thread, which starts its others.
pub fn process_priority(pid: u32) -> Result<Priority, PriorityError> {
    let tid = libc::pid_t::try_from(pid).map_err(|_| PriorityError::GetPolicy {
        pid,
        source: io::Error::from_raw_os_error(libc::ESRCH),
    })?;
    thread_priority(tid).map_err(|source| PriorityError::GetPolicy { pid, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_can_be_made_idle_and_given_normal_back() {
        if !can_leave_idle() {
            eprintln!("NOT RUN: this process cannot leave SCHED_IDLE (needs CAP_SYS_NICE)");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert_eq!(process_priority(child.id()).unwrap(), Priority::Normal);
        set_process(child.id(), Priority::Idle).unwrap();
        assert_eq!(process_priority(child.id()).unwrap(), Priority::Idle);
        set_process(child.id(), Priority::Normal).unwrap();
        assert_eq!(process_priority(child.id()).unwrap(), Priority::Normal);
        set_process(child.id(), Priority::Idle).unwrap();
        assert_eq!(process_priority(child.id()).unwrap(), Priority::Idle);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn every_thread_of_a_process_changes() {
        if !can_leave_idle() {
            eprintln!("NOT RUN: this process cannot leave SCHED_IDLE (needs CAP_SYS_NICE)");
            return;
        }
        // This test process has several threads (the test harness's); a
        // child with threads of its own would need a helper binary.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            // SAFETY: gettid only reads the calling thread's id.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        set_thread(tid, Priority::Idle).unwrap();
        assert_eq!(thread_priority(tid).unwrap(), Priority::Idle);
        set_process(std::process::id(), Priority::Normal).unwrap();
        assert_eq!(thread_priority(tid).unwrap(), Priority::Normal);
        assert_eq!(thread_priority(0).unwrap(), Priority::Normal);
        done_tx.send(()).unwrap();
        worker.join().unwrap();
    }

    #[test]
    fn a_missing_process_is_an_error() {
        let err = set_process(u32::MAX, Priority::Normal).unwrap_err();
        assert!(matches!(err, PriorityError::ListThreads { .. }), "{err}");
        assert!(process_priority(u32::MAX).is_err());
    }
}
