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
//! A hand-over that resumes a paused VM gives normal priority to the VMM's
//! control threads first ([`Threads::Control`]) and to its vCPUs only
//! afterwards. A vCPU woken at normal priority takes the CPU it lands on and
//! keeps it for its whole time slice, with its guest running, and the
//! threads that must carry the resume's answer back woken onto that CPU
//! then wait for the next scheduler tick (4 ms at 250 Hz) unless another CPU
//! takes them first; a woken idle vCPU gives way at once. Measured on a
//! 2-core host: a raw resume 4.1 ms median, the same with the vCPU idle
//! 0.76 ms.
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

/// Which of a VMM's threads a priority change applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// Every thread.
    All,
    /// Every thread but the vCPUs': the VMM's main thread, which carries out
    /// API requests, and its API thread, which answers them.
    Control,
    /// The vCPU threads.
    Vcpus,
}

/// The name Firecracker gives its vCPU threads, followed by the index.
const VCPU_THREAD: &str = "fc_vcpu";

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

/// The thread ids of process `pid`.
fn threads(pid: u32) -> Result<Vec<libc::pid_t>, PriorityError> {
    let list = |source| PriorityError::ListThreads { pid, source };
    let mut tids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).map_err(list)? {
        let name = entry.map_err(list)?.file_name();
        if let Some(tid) = name.to_str().and_then(|n| n.parse::<libc::pid_t>().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// Whether thread `tid` of process `pid` runs a vCPU (by its name; a thread
/// that ended meanwhile is none).
fn is_vcpu(pid: u32, tid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .is_ok_and(|name| name.starts_with(VCPU_THREAD))
}

/// Sets `priority` on the threads of process `pid` that `which` names.
/// Threads it starts afterwards inherit the policy of the thread that
/// starts them.
pub fn set_process(pid: u32, priority: Priority, which: Threads) -> Result<(), PriorityError> {
    for tid in threads(pid)? {
        let named = match which {
            Threads::All => true,
            Threads::Control => !is_vcpu(pid, tid),
            Threads::Vcpus => is_vcpu(pid, tid),
        };
        if !named {
            continue;
        }
        match set_thread(tid, priority) {
            Ok(()) => {}
            // A thread that ended meanwhile needs no priority.
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {}
            Err(source) => return Err(PriorityError::SetPolicy { pid, tid, source }),
        }
    }
    Ok(())
}

/// The priority process `pid` runs at: idle when any of its threads is (a
/// hand-over may have given its control threads normal priority but not yet
/// its vCPUs).
pub fn process_priority(pid: u32) -> Result<Priority, PriorityError> {
    let get = |source| PriorityError::GetPolicy { pid, source };
    for tid in threads(pid)? {
        match thread_priority(tid) {
            Ok(Priority::Idle) => return Ok(Priority::Idle),
            Ok(Priority::Normal) => {}
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {}
            Err(source) => return Err(get(source)),
        }
    }
    Ok(Priority::Normal)
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
        set_process(child.id(), Priority::Idle, Threads::All).unwrap();
        assert_eq!(process_priority(child.id()).unwrap(), Priority::Idle);
        set_process(child.id(), Priority::Normal, Threads::All).unwrap();
        assert_eq!(process_priority(child.id()).unwrap(), Priority::Normal);
        set_process(child.id(), Priority::Idle, Threads::All).unwrap();
        assert_eq!(process_priority(child.id()).unwrap(), Priority::Idle);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn every_thread_the_vcpus_or_the_others_change() {
        if !can_leave_idle() {
            eprintln!("NOT RUN: this process cannot leave SCHED_IDLE (needs CAP_SYS_NICE)");
            return;
        }
        // This test process plays the VMM, with a thread named as a vCPU and
        // one named as the API's, among the test harness's own; a child with
        // threads of its own would need a helper binary. One test, so that
        // no other in this process changes its threads meanwhile.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let done_rx = std::sync::Arc::new(std::sync::Mutex::new(done_rx));
        let worker = |name: &str| {
            let (tx, rx) = std::sync::mpsc::channel();
            let done_rx = done_rx.clone();
            let handle = std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || {
                    // SAFETY: gettid only reads the calling thread's id.
                    tx.send(unsafe { libc::gettid() }).unwrap();
                    let _ = done_rx.lock().unwrap().recv();
                })
                .unwrap();
            (rx.recv().unwrap(), handle)
        };
        let (vcpu, vcpu_thread) = worker("fc_vcpu 0");
        let (api, api_thread) = worker("fc_api");
        let pid = std::process::id();
        for tid in [vcpu, api] {
            set_thread(tid, Priority::Idle).unwrap();
            assert_eq!(thread_priority(tid).unwrap(), Priority::Idle);
        }

        set_process(pid, Priority::Normal, Threads::Control).unwrap();
        assert_eq!(thread_priority(api).unwrap(), Priority::Normal);
        assert_eq!(thread_priority(vcpu).unwrap(), Priority::Idle);
        // One idle thread is enough for the process to read as idle.
        assert_eq!(process_priority(pid).unwrap(), Priority::Idle);

        set_process(pid, Priority::Normal, Threads::All).unwrap();
        assert_eq!(thread_priority(vcpu).unwrap(), Priority::Normal);
        assert_eq!(thread_priority(api).unwrap(), Priority::Normal);

        set_process(pid, Priority::Idle, Threads::Vcpus).unwrap();
        assert_eq!(thread_priority(vcpu).unwrap(), Priority::Idle);
        assert_eq!(thread_priority(api).unwrap(), Priority::Normal);
        set_process(pid, Priority::Normal, Threads::Vcpus).unwrap();
        assert_eq!(thread_priority(vcpu).unwrap(), Priority::Normal);
        drop(done_tx);
        vcpu_thread.join().unwrap();
        api_thread.join().unwrap();
    }

    #[test]
    fn a_missing_process_is_an_error() {
        let err = set_process(u32::MAX, Priority::Normal, Threads::All).unwrap_err();
        assert!(matches!(err, PriorityError::ListThreads { .. }), "{err}");
        assert!(process_priority(u32::MAX).is_err());
    }
}
