//! The `tfc` binary end to end (tier 0): `tfc serve` with the fake backend as a
//! child process in a private directory, driven by `tfc vm ...` invocations
//! exactly as a user would type them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use tfc_firecracker::models::InstanceState;

#[path = "../../tfc-net/tests/common/mod.rs"]
mod net;

const TFC: &str = env!("CARGO_BIN_EXE_tfc");

/// A well-formed id that no daemon hands out in these tests.
const UNKNOWN_ID: &str = "vm-000000000000";

const FAKE_CONFIG: &str = "[daemon]\nbackend = \"fake\"\n";

/// A `tfc` run's outcome, with stdout and stderr as text.
#[derive(Debug)]
struct Run {
    args: Vec<String>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from_output(args: &[&str], output: Output) -> Self {
        Self {
            args: args.iter().map(|a| a.to_string()).collect(),
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Stdout of a run that must succeed.
    fn ok(self) -> String {
        assert!(
            self.status.success(),
            "tfc {:?} failed: {self:#?}",
            self.args
        );
        self.stdout
    }

    /// Stdout of a successful run, parsed as JSON.
    fn json(self) -> Value {
        let args = self.args.clone();
        let stdout = self.ok();
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("tfc {args:?} printed no JSON ({e}): {stdout}"))
    }

    /// The single stderr line of a run that must fail with exit code 1.
    fn error_line(self) -> String {
        assert_eq!(
            self.status.code(),
            Some(1),
            "tfc {:?}: {self:#?}",
            self.args
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "tfc {:?}: one error line expected: {self:#?}",
            self.args
        );
        assert!(lines[0].starts_with("error: "), "{self:#?}");
        lines[0].to_owned()
    }
}

/// Runs `tfc` against `socket`, with no logging from the environment so that
/// stderr holds only what the command itself reports.
fn tfc_at(socket: &Path, args: &[&str]) -> Run {
    let output = Command::new(TFC)
        .args(args)
        .env("TFC_SOCKET", socket)
        .env_remove("RUST_LOG")
        .output()
        .expect("tfc runs");
    Run::from_output(args, output)
}

/// `tfc serve` running with the fake backend in its own temporary directory.
/// Dropping it ends the daemon (by its pid), also when a test panics.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Daemon {
    fn start() -> Self {
        Self::start_with(FAKE_CONFIG)
    }

    fn start_with(config_text: &str) -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), config_text)
    }

    /// [`Daemon::start_with`] in `dir`, which may hold files the config names.
    fn start_in(dir: tempfile::TempDir, config_text: &str) -> Self {
        std::fs::write(dir.path().join("tfc.toml"), config_text).expect("config written");
        let socket = dir.path().join("tfc.sock");
        let child = Self::spawn(dir.path(), &socket);
        // The guard exists before the wait, so a daemon that never comes up is
        // still ended.
        let mut daemon = Self { child, dir, socket };
        daemon.wait_until_listening();
        daemon
    }

    fn spawn(dir: &Path, socket: &Path) -> Child {
        Self::spawn_with_env(dir, socket, &[])
    }

    fn spawn_with_env(dir: &Path, socket: &Path, env: &[(&str, &str)]) -> Child {
        let log = File::options()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .expect("log file");
        Command::new(TFC)
            .arg("serve")
            .arg("--config")
            .arg(dir.join("tfc.toml"))
            .env("TFC_SOCKET", socket)
            .env("TFC_DATA_DIR", dir.join("data"))
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("tfc serve starts")
    }

    /// Kills the daemon with SIGKILL (no shutdown runs) and starts a new one on
    /// the same socket and data directory.
    fn crash_and_restart(&mut self) {
        self.child.kill().expect("SIGKILL the daemon");
        self.child.wait().expect("reap the daemon");
        self.child = Self::spawn(self.dir.path(), &self.socket);
        self.wait_until_listening();
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("tfc serve exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "tfc serve did not listen on {} within 30 s:\n{}",
                self.socket.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn tfc(&self, args: &[&str]) -> Run {
        tfc_at(&self.socket, args)
    }

    /// Stdout of a `tfc` run that must succeed; on failure the daemon's log is
    /// part of the report (long tests need it to explain themselves).
    fn must(&self, args: &[&str]) -> String {
        let run = self.tfc(args);
        if !run.status.success() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "tfc {args:?} failed: {run:#?}\ndaemon log (last 60 lines):\n{}",
                tail.join("\n")
            );
        }
        run.stdout
    }

    fn must_json(&self, args: &[&str]) -> Value {
        let stdout = self.must(args);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("tfc {args:?} printed no JSON ({e}): {stdout}"))
    }

    fn state_of(&self, id: &str) -> String {
        let vm = self.tfc(&["vm", "show", id, "--json"]).json();
        vm["state"].as_str().expect("state is a string").to_owned()
    }

    /// Sends SIGTERM and waits for the daemon to exit; None if it did not
    /// within `limit`.
    fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill has no memory-safety preconditions; the pid is our own
        // child, not yet reaped, so it cannot name another process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.terminate(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // SIGTERM leaves VMs running by default; a test that ends (or panics)
        // must not. End every Firecracker its daemon started, by pid.
        for pid in firecrackers_of(&self.dir.path().join("data")) {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) of a Firecracker this test's daemon started,
                // found by its socket inside the test's own directory.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn a_vm_goes_through_its_life_from_the_command_line() {
    let mut daemon = Daemon::start();

    let created = daemon.tfc(&["vm", "create", "--wait", "--json"]).json();
    assert_eq!(created["state"], "ready", "{created:#}");
    let id = created["id"].as_str().expect("id").to_owned();
    let phases: Vec<&str> = created["timeline"]
        .as_array()
        .expect("timeline is a list")
        .iter()
        .map(|m| m["phase"].as_str().expect("phase"))
        .collect();
    assert_eq!(phases.last(), Some(&"ready"), "{created:#}");

    let table = daemon.tfc(&["vm", "ls"]).ok();
    let header = table.lines().next().expect("header");
    for column in [
        "ID", "TYPE", "BACKEND", "STATE", "VCPUS", "MEM", "PID", "AGE", "BOOT",
    ] {
        assert!(header.contains(column), "{column} missing: {table}");
    }
    let row = table.lines().find(|l| l.starts_with(&id)).expect("row");
    assert!(row.contains(" ready ") && row.contains("ms"), "{table}");

    let listed = daemon.tfc(&["vm", "ls", "--json"]).json();
    assert_eq!(listed["vms"][0]["id"], id.as_str(), "{listed:#}");

    let page = daemon.tfc(&["vm", "show", &id]).ok();
    for line in [
        format!("id:          {id}\n"),
        "state:       ready\n".to_owned(),
        "console log: ".to_owned(),
        "\nPHASE ".to_owned(),
    ] {
        assert!(page.contains(&line), "{line:?} missing from:\n{page}");
    }
    assert_eq!(
        daemon.tfc(&["vm", "show", &id, "--json"]).json()["id"],
        id.as_str()
    );

    assert_eq!(
        daemon.tfc(&["vm", "pause", &id]).ok(),
        format!("{id}: paused\n")
    );
    let resumed = daemon.tfc(&["vm", "resume", &id, "--json"]).json();
    assert_eq!(resumed["state"], "running", "{resumed:#}");

    let stopped = daemon.tfc(&["vm", "stop", &id, "--json"]).json();
    assert!(
        ["stopping", "stopped"].contains(&stopped["state"].as_str().unwrap_or_default()),
        "{stopped:#}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.state_of(&id) != "stopped" {
        assert!(Instant::now() < deadline, "VM never reached stopped");
        std::thread::sleep(Duration::from_millis(20));
    }

    let refused = daemon.tfc(&["vm", "pause", &id]).error_line();
    assert!(refused.contains("stopped"), "{refused}");

    assert_eq!(daemon.tfc(&["vm", "rm", &id]).ok(), format!("{id}\n"));
    let listed = daemon.tfc(&["vm", "ls", "--json"]).json();
    assert_eq!(listed["vms"], Value::Array(vec![]), "{listed:#}");

    let unknown = daemon.tfc(&["vm", "rm", UNKNOWN_ID]).error_line();
    assert!(unknown.contains(UNKNOWN_ID), "{unknown}");

    let status = daemon
        .terminate(Duration::from_secs(10))
        .expect("daemon exits on SIGTERM");
    assert!(status.success(), "daemon exit {status}:\n{}", daemon.log());
}

#[test]
fn create_without_wait_prints_the_id_and_rm_needs_force_while_alive() {
    let daemon = Daemon::start();

    let out = daemon
        .tfc(&[
            "vm",
            "create",
            "--vcpus",
            "2",
            "--memory",
            "256",
            "--boot-arg",
            "random.trust_cpu=on",
        ])
        .ok();
    let id = out.trim_end().to_owned();
    assert_eq!(out, format!("{id}\n"), "only the id is printed");
    assert!(id.starts_with("vm-"), "{out}");
    let vm = daemon.tfc(&["vm", "show", &id, "--json"]).json();
    assert_eq!(vm["spec"]["vcpus"], 2, "{vm:#}");
    assert_eq!(vm["spec"]["memory_mib"], 256, "{vm:#}");
    assert!(
        vm["spec"]["boot_args"]
            .as_str()
            .unwrap_or_default()
            .ends_with(" random.trust_cpu=on"),
        "{vm:#}"
    );

    let refused = daemon.tfc(&["vm", "rm", &id]).error_line();
    assert!(
        refused.contains("it is creating")
            || refused.contains("it is booting")
            || refused.contains("it is ready"),
        "{refused}"
    );
    assert!(refused.contains("delete with force"), "{refused}");
    assert_eq!(
        daemon.tfc(&["vm", "rm", "--force", &id]).ok(),
        format!("{id}\n")
    );
    daemon.tfc(&["vm", "show", &id]).error_line();
}

#[test]
fn create_with_wait_prints_id_summary_and_timeline() {
    let daemon = Daemon::start();

    let out = daemon
        .tfc(&["vm", "create", "--wait", "--timeout", "30"])
        .ok();
    let mut lines = out.lines();
    let id = lines.next().expect("id line");
    assert!(id.starts_with("vm-"), "{out}");
    assert!(out.contains("state:       ready (boot "), "{out}");
    let timeline = out.split("\nPHASE").nth(1).expect("timeline table");
    assert!(
        timeline.contains("\nready ") && timeline.contains("+"),
        "{out}"
    );
}

#[test]
fn create_asks_for_a_backend_and_show_names_it() {
    let daemon = Daemon::start();
    let created = daemon
        .tfc(&["vm", "create", "--backend", "qemu-tcg", "--wait", "--json"])
        .json();
    assert_eq!(created["spec"]["vmm"], "qemu-tcg", "{created:#}");
    let id = created["id"].as_str().expect("id");
    let page = daemon.tfc(&["vm", "show", id]).ok();
    assert!(page.contains("backend:     qemu-tcg\n"), "{page}");
    let table = daemon.tfc(&["vm", "ls"]).ok();
    let row = table.lines().find(|l| l.starts_with(id)).expect("row");
    assert!(row.contains(" qemu-tcg "), "{table}");
    // The fake takes snapshots, but the daemon refuses them for a qemu-tcg VM.
    let refused = daemon.tfc(&["vm", "snapshot", id]).error_line();
    assert!(
        refused.contains("not supported by the qemu-tcg backend"),
        "{refused}"
    );
}

#[test]
fn bad_values_are_refused_before_any_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nobody.sock");
    for (args, expected) in [
        (&["vm", "create", "--vcpus", "0"][..], "1..=32"),
        (&["vm", "create", "--memory", "1"][..], "--memory"),
        (&["vm", "create", "--timeout", "5"][..], "--wait"),
        (&["vm", "show", "../../etc"][..], "may contain only"),
        (&["pool", "resize", "default"][..], "--target"),
        (&["pool", "acquire", "Default"][..], "may contain only"),
        (
            &["vm", "create", "--backend", "kvm"][..],
            "use firecracker or qemu-tcg",
        ),
    ] {
        let run = tfc_at(&socket, args);
        assert_eq!(run.status.code(), Some(2), "{run:#?}");
        assert!(run.stderr.contains(expected), "{run:#?}");
        assert!(!run.stderr.contains("cannot reach"), "{run:#?}");
    }
}

#[test]
fn a_missing_daemon_is_reported_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nobody.sock");
    let line = tfc_at(&socket, &["vm", "ls"]).error_line();
    let expected = format!(
        "error: cannot reach the tfc daemon at {}: is `tfc serve` running? (",
        socket.display()
    );
    assert!(line.starts_with(&expected), "{line}");

    let flag = dir.path().join("flag.sock");
    let line = tfc_at(
        &socket,
        &["--socket", flag.to_str().expect("utf-8"), "vm", "ls"],
    )
    .error_line();
    assert!(
        line.contains(&flag.display().to_string()),
        "--socket wins over TFC_SOCKET: {line}"
    );
}

#[test]
fn serve_with_a_missing_config_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("absent.toml");
    let mut child = Command::new(TFC)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("TFC_SOCKET", dir.path().join("tfc.sock"))
        .env("TFC_DATA_DIR", dir.path().join("data"))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tfc serve starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tfc serve kept running with a missing config");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = Run::from_output(&["serve"], child.wait_with_output().expect("output"));
    let line = run.error_line();
    assert!(line.contains(&config.display().to_string()), "{line}");
}

fn process_alive(pid: u64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // A zombie has exited; only its parent's wait is pending.
    !stat.is_empty() && !stat.contains(") Z ")
}

/// A second daemon on the same data directory must refuse to start before its
/// start-up cleanup could touch the first one's VMs.
#[test]
fn a_second_daemon_on_the_same_data_dir_refuses_to_start() {
    let daemon = Daemon::start();
    let id = daemon.tfc(&["vm", "create", "--wait"]).ok();
    let id = id.lines().next().expect("id line").to_owned();
    let output = Command::new(TFC)
        .args(["serve", "--config"])
        .arg(daemon.dir.path().join("tfc.toml"))
        .env("TFC_SOCKET", daemon.dir.path().join("other.sock"))
        .env("TFC_DATA_DIR", daemon.dir.path().join("data"))
        .env_remove("RUST_LOG")
        .output()
        .expect("tfc serve runs");
    let run = Run::from_output(&["serve"], output);
    let line = run.error_line();
    assert!(
        line.contains("another tfc daemon is using the data directory"),
        "{line}"
    );
    // The first daemon and its VM are untouched.
    let vm = daemon.tfc(&["vm", "show", &id, "--json"]).json();
    assert_eq!(vm["state"], "ready", "{vm:#}");
    assert!(daemon.dir.path().join("data/vms").join(&id).is_dir());
}

/// A corrupt state database stops the daemon at start with an error that names
/// the file and what to do, and the file is left as it was for inspection.
#[test]
fn a_corrupt_state_database_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tfc.toml"), FAKE_CONFIG).expect("config");
    let data = dir.path().join("data");
    // Private, as the daemon makes it (a looser one would add a warning line).
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&data)
        .expect("data dir");
    let garbage = b"this is not a SQLite database, not even close".repeat(100);
    std::fs::write(data.join("state.db"), &garbage).expect("garbage");
    let output = Command::new(TFC)
        .args(["serve", "--config"])
        .arg(dir.path().join("tfc.toml"))
        .env("TFC_SOCKET", dir.path().join("tfc.sock"))
        .env("TFC_DATA_DIR", &data)
        .env_remove("RUST_LOG")
        .output()
        .expect("tfc serve runs");
    let line = Run::from_output(&["serve"], output).error_line();
    assert!(line.contains("state.db"), "{line}");
    assert!(line.contains("move"), "{line}");
    assert_eq!(std::fs::read(data.join("state.db")).expect("kept"), garbage);
    assert!(!dir.path().join("tfc.sock").exists());
}

/// With the fake backend nothing survives a daemon kill (fake VMs live in the
/// daemon's memory): after a restart the stored VMs are recorded failed with
/// the reason, stopped ones stay stopped, and all of them can be deleted.
#[test]
fn a_restart_accounts_for_every_stored_vm() {
    let mut daemon = Daemon::start();
    let live = daemon.tfc(&["vm", "create", "--wait", "--json"]).json();
    let stopped = daemon.tfc(&["vm", "create", "--wait", "--json"]).json();
    let live_id = live["id"].as_str().expect("id").to_owned();
    let stopped_id = stopped["id"].as_str().expect("id").to_owned();
    daemon.tfc(&["vm", "stop", &stopped_id]).ok();
    daemon.crash_and_restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.state_of(&live_id) != "failed" {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let vm = daemon.tfc(&["vm", "show", &live_id, "--json"]).json();
    assert!(
        vm["failure"]
            .as_str()
            .unwrap_or_default()
            .contains("did not survive the daemon restart"),
        "{vm:#}"
    );
    assert_eq!(daemon.state_of(&stopped_id), "stopped");
    for id in [&live_id, &stopped_id] {
        daemon.tfc(&["vm", "rm", id]).ok();
    }
    assert_eq!(
        daemon.tfc(&["vm", "ls", "--json"]).json()["vms"],
        serde_json::json!([])
    );
}

/// Firecracker config for tier-1 tests: the built assets, plus `extra` TOML.
fn firecracker_config(extra: &str) -> String {
    firecracker_config_with_type(extra, "")
}

/// [`firecracker_config`] with `type_keys` (TOML keys) added to the default
/// VM type.
fn firecracker_config_with_type(extra: &str, type_keys: &str) -> String {
    let assets = std::env::var_os("TFC_ASSETS_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(tfc_host::paths::data_dir);
    let manifest = tfc_host::assets::load_manifest(&assets)
        .unwrap_or_else(|e| panic!("tier-1 tests need built assets ({e})"));
    format!(
        "{extra}\n[firecracker]\nbinary = {:?}\njailer = false\n[vm_types.default]\nkernel = {:?}\nrootfs = {:?}\nboot_args = {:?}\n{type_keys}\n",
        manifest.firecracker.path, manifest.kernel.vmlinux, manifest.rootfs.path, manifest.boot_args,
    )
}

impl Daemon {
    /// Creates a VM without waiting and returns its id and Firecracker pid.
    fn create_with_pid(&self) -> (String, u64) {
        let id = self.tfc(&["vm", "create"]).ok().trim().to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let vm = self.tfc(&["vm", "show", &id, "--json"]).json();
            if let Some(pid) = vm["pid"].as_u64() {
                return (id, pid);
            }
            assert!(Instant::now() < deadline, "no firecracker pid: {vm:#}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn vm_dirs(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("data/vms"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// Tier 1: VMs outlive the daemon. A SIGKILLed daemon and a SIGTERMed one
/// (default policy `leave_running`) both come back to the same Firecracker
/// processes, re-adopted from the SQLite store with their state; deleting them
/// afterwards leaves nothing.
#[test]
#[ignore = "tier 1: needs KVM, firecracker and built assets; run by the project's test command"]
fn vms_survive_daemon_restarts_and_are_re_adopted() {
    let mut daemon = Daemon::start_with(&firecracker_config(""));
    let (a, a_pid) = daemon.create_with_pid();

    daemon.crash_and_restart();
    let vm = daemon.tfc(&["vm", "show", &a, "--json"]).json();
    assert_eq!(vm["pid"].as_u64(), Some(a_pid), "{vm:#}\n{}", daemon.log());
    assert!(
        matches!(vm["state"].as_str(), Some("booting") | Some("ready")),
        "{vm:#}"
    );
    assert!(process_alive(a_pid));
    // Adoption runs in the VM's owner task, right after the daemon starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.log().contains("re-adopted VM") {
        assert!(
            Instant::now() < deadline,
            "not re-adopted:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let (b, b_pid) = daemon.create_with_pid();
    assert_eq!(
        daemon.terminate(Duration::from_secs(30)).map(|s| s.code()),
        Some(Some(0)),
        "{}",
        daemon.log()
    );
    assert!(
        process_alive(a_pid) && process_alive(b_pid),
        "SIGTERM must leave VMs running"
    );
    daemon.child = Daemon::spawn(daemon.dir.path(), &daemon.socket);
    daemon.wait_until_listening();
    for (id, pid) in [(&a, a_pid), (&b, b_pid)] {
        let vm = daemon.tfc(&["vm", "show", id, "--json"]).json();
        assert_eq!(vm["pid"].as_u64(), Some(pid), "{vm:#}");
        // The adopted VM is fully under control: pause works on its API socket
        // once it is ready; stop works in any live state.
        let stopped = daemon.tfc(&["vm", "stop", id, "--json"]).json();
        assert_eq!(stopped["state"], "stopped", "{stopped:#}");
        assert!(!process_alive(pid), "firecracker {pid} survived stop");
        daemon.tfc(&["vm", "rm", id]).ok();
    }
    assert_eq!(daemon.vm_dirs(), 0, "VM directories left behind");
}

/// Tier 1: with nothing recorded (a memory store), a SIGKILLed daemon's
/// Firecracker is an orphan: the next `tfc serve` ends it and removes its files
/// before serving. With `shutdown_policy = "stop"`, SIGTERM stops every VM.
#[test]
#[ignore = "tier 1: needs KVM, firecracker and built assets; run by the project's test command"]
fn orphans_are_ended_and_the_stop_policy_stops_everything() {
    let config = firecracker_config("[daemon]\nstorage = \"memory\"\nshutdown_policy = \"stop\"");
    let mut daemon = Daemon::start_with(&config);
    let (id, pid) = daemon.create_with_pid();
    let vm_dir = daemon.dir.path().join("data/vms").join(&id);
    assert!(vm_dir.is_dir());

    daemon.crash_and_restart();
    assert!(
        !process_alive(pid),
        "firecracker {pid} leaked:\n{}",
        daemon.log()
    );
    assert!(!vm_dir.exists(), "VM directory leaked");
    assert_eq!(
        daemon.tfc(&["vm", "ls", "--json"]).json()["vms"],
        serde_json::json!([])
    );
    assert!(
        daemon.log().contains("ended VMM left by an earlier daemon"),
        "{}",
        daemon.log()
    );

    let pids: Vec<u64> = (0..2).map(|_| daemon.create_with_pid().1).collect();
    assert_eq!(
        daemon.terminate(Duration::from_secs(30)).map(|s| s.code()),
        Some(Some(0)),
        "{}",
        daemon.log()
    );
    for pid in pids {
        assert!(!process_alive(pid), "firecracker {pid} survived SIGTERM");
    }
    assert_eq!(daemon.vm_dirs(), 0, "VM directories left behind");
    assert!(!daemon.socket.exists(), "socket left behind");
}

/// Firecracker processes started for this daemon's data directory (their API
/// socket lives in it), found from /proc, by pid, in order.
fn firecrackers_of(data: &Path) -> Vec<u64> {
    processes_named_under(data, |cmdline| cmdline.contains("firecracker"))
}

/// Live processes whose command line names a path under `data`'s VM
/// directories and passes `wanted`, by pid, in order.
fn processes_named_under(data: &Path, wanted: impl Fn(&str) -> bool) -> Vec<u64> {
    let needle = data.join("vms").display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("procfs").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if wanted(&cmdline) && cmdline.contains(&needle) && process_alive(pid) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

impl Daemon {
    /// Restarts the daemon with `TFC_CRASH_AT=point`, runs `trigger` (which
    /// reaches the point; its own outcome does not matter: the daemon dies under
    /// it), checks the daemon died of SIGKILL, and starts a clean one.
    fn crash_at(&mut self, point: &str, trigger: impl FnOnce(&Daemon)) {
        self.terminate(Duration::from_secs(30));
        self.child =
            Self::spawn_with_env(self.dir.path(), &self.socket, &[("TFC_CRASH_AT", point)]);
        self.wait_until_listening();
        trigger(self);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "crash point {point} never reached:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{point}: {status}");
        self.child = Self::spawn(self.dir.path(), &self.socket);
        self.wait_until_listening();
    }

    /// The consistency audit after a restart: no VM is left half-made or
    /// half-stopped; every recorded live VM has exactly its own running
    /// Firecracker and every running Firecracker a live VM; every VM directory
    /// belongs to a record. Returns the recorded VMs.
    fn audit(&self, point: &str) -> Vec<Value> {
        let data = self.dir.path().join("data");
        // Adoption finishes in the owner tasks, just after start.
        let deadline = Instant::now() + Duration::from_secs(10);
        // A re-adopted VM whose guest turns out not to run is stopped, then
        // recorded failed: for a moment its record and the process table
        // disagree. Settled means no transitional state and both agree.
        let live = |vms: &[Value]| {
            let mut pids: Vec<u64> = vms.iter().filter_map(|vm| vm["pid"].as_u64()).collect();
            pids.sort_unstable();
            pids
        };
        let vms = loop {
            let vms = self.must_json(&["vm", "ls", "--json"])["vms"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let settled = vms
                .iter()
                .all(|vm| vm["state"] != "creating" && vm["state"] != "stopping")
                && live(&vms) == firecrackers_of(&data);
            if settled || Instant::now() > deadline {
                break vms;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut live_pids = Vec::new();
        for vm in &vms {
            let state = vm["state"].as_str().unwrap_or_default();
            assert!(!matches!(state, "creating" | "stopping"), "{point}: {vm:#}");
            if let Some(pid) = vm["pid"].as_u64() {
                assert!(!matches!(state, "stopped" | "failed"), "{point}: {vm:#}");
                live_pids.push(pid);
            }
        }
        live_pids.sort_unstable();
        assert_eq!(
            firecrackers_of(&data),
            live_pids,
            "{point}: processes vs records:\n{}",
            self.log()
        );
        for dir in &dir_entries(&data.join("vms")) {
            assert!(
                vms.iter().any(|vm| vm["id"] == dir.as_str()),
                "{point}: orphan directory {dir}"
            );
        }
        self.audit_snapshots(point);
        vms
    }

    /// The snapshot half of the audit: every listed snapshot is complete (ready,
    /// its directory with a manifest) and every directory under
    /// `data/snapshots` is a listed snapshot's. Returns the snapshots.
    fn audit_snapshots(&self, point: &str) -> Vec<Value> {
        let snapshots = self.must_json(&["snapshot", "ls", "--json"])["snapshots"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let root = self.dir.path().join("data/snapshots");
        for snapshot in &snapshots {
            assert_eq!(snapshot["state"], "ready", "{point}: {snapshot:#}");
            let id = snapshot["id"].as_str().expect("snapshot id");
            assert!(
                root.join(id).join("manifest.json").is_file(),
                "{point}: snapshot {id} has no manifest in {}",
                root.display()
            );
        }
        for dir in dir_entries(&root) {
            assert!(
                snapshots.iter().any(|s| s["id"] == dir.as_str()),
                "{point}: orphan snapshot directory {dir}:\n{}",
                self.log()
            );
        }
        snapshots
    }

    /// Stops and deletes every VM and snapshot, then checks nothing at all is
    /// left.
    fn clear_and_check_empty(&self, point: &str) {
        for vm in self.audit(point) {
            let id = vm["id"].as_str().expect("id");
            self.must(&["vm", "rm", "--force", id]);
        }
        // Newest first: no diff outlives its parent, so none needs merging.
        for snapshot in self.audit_snapshots(point).iter().rev() {
            let id = snapshot["id"].as_str().expect("snapshot id");
            self.must(&["snapshot", "rm", "--force", id]);
        }
        let data = self.dir.path().join("data");
        assert_eq!(firecrackers_of(&data), Vec::<u64>::new(), "{point}");
        assert_eq!(self.vm_dirs(), 0, "{point}");
        assert_eq!(
            dir_entries(&data.join("snapshots")),
            Vec::<String>::new(),
            "{point}"
        );
        assert_eq!(
            self.tfc(&["vm", "ls", "--json"]).json()["vms"],
            serde_json::json!([]),
            "{point}"
        );
    }
}

/// The names in a directory, sorted (none if it does not exist).
fn dir_entries(root: &Path) -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// Tier 1 fault injection: the daemon is SIGKILLed at each named crash point of
/// create, stop and delete, restarted, and audited: store consistent, no leaked
/// process or directory, every VM usable or cleanly gone.
#[test]
#[ignore = "tier 1: needs KVM, firecracker and built assets; run by the project's test command"]
fn the_daemon_can_be_killed_at_every_crash_point() {
    let mut daemon = Daemon::start_with(&firecracker_config(""));
    let create = |d: &Daemon| {
        let _ = d.tfc(&["vm", "create"]);
    };
    let mut tried = Vec::new();

    // Creation interrupted before or after the VMM exists: rolled back.
    for point in ["create.after_intent", "create.after_spawn"] {
        daemon.crash_at(point, create);
        let vms = daemon.audit(point);
        assert!(
            vms.is_empty(),
            "{point}: a half-created VM survived: {vms:?}"
        );
        tried.push(point);
    }

    // Creation interrupted once the guest started: the VM is re-adopted.
    daemon.crash_at("create.after_start", create);
    let vms = daemon.audit("create.after_start");
    assert_eq!(vms.len(), 1, "{vms:?}");
    assert!(vms[0]["pid"].is_u64(), "{:#}", vms[0]);
    daemon.clear_and_check_empty("create.after_start");
    tried.push("create.after_start");

    // A stop interrupted before or after the VMM ended: finished on restart.
    for point in ["stop.after_intent", "stop.after_exit"] {
        let (id, _) = daemon.create_with_pid();
        daemon.crash_at(point, |d| {
            let _ = d.tfc(&["vm", "stop", &id]);
        });
        let vms = daemon.audit(point);
        assert_eq!(vms.len(), 1, "{point}: {vms:?}");
        assert_eq!(vms[0]["state"], "stopped", "{point}: {:#}", vms[0]);
        daemon.clear_and_check_empty(point);
        tried.push(point);
    }

    // A delete interrupted after the files went: the record remains, and a
    // second delete finishes the job.
    let (id, _) = daemon.create_with_pid();
    daemon.tfc(&["vm", "stop", &id]).ok();
    daemon.crash_at("delete.after_files", |d| {
        let _ = d.tfc(&["vm", "rm", &id]);
    });
    let vms = daemon.audit("delete.after_files");
    assert_eq!(vms.len(), 1, "{vms:?}");
    daemon.clear_and_check_empty("delete.after_files");
    tried.push("delete.after_files");

    eprintln!(
        "crash points tried, each audited clean: {}",
        tried.join(", ")
    );
}

/// What a VM's own Firecracker says about its guest (`GET /` on its API
/// socket): running or paused, whatever the daemon's record claims.
fn firecracker_run_state(vm: &Value) -> InstanceState {
    let workdir = PathBuf::from(vm["workdir"].as_str().expect("workdir"));
    let api = tfc_firecracker::ApiClient::new(workdir.join(tfc_firecracker::process::API_SOCKET));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(api.describe_instance())
        .unwrap_or_else(|e| panic!("firecracker of {} does not answer: {e}", vm["id"]))
        .state
}

impl Daemon {
    /// Waits until the VM's Firecracker reports `want` (adoption resumes in
    /// the VM's owner task, just after start).
    fn await_run_state(&self, id: &str, want: InstanceState) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let vm = self.must_json(&["vm", "show", id, "--json"]);
            let state = firecracker_run_state(&vm);
            if state == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: firecracker reports {state:?}, not {want:?}; record {vm:#}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn snapshot_ids(&self) -> Vec<String> {
        self.must_json(&["snapshot", "ls", "--json"])["snapshots"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|s| s["id"].as_str().expect("snapshot id").to_owned())
            .collect()
    }
}

/// Tier 1 fault injection for snapshots and restores, on one booted VM: the
/// daemon is SIGKILLed at each crash point of taking, restoring and deleting a
/// snapshot, restarted, and audited: only complete snapshots are listed, no
/// snapshot or VM directory is orphaned, no VMM leaks, the VM is re-adopted in
/// the state its Firecracker is really in, and a restore recorded before its
/// resume is resumed.
#[test]
#[ignore = "tier 1: needs KVM, firecracker and built assets; run by the project's test command"]
fn snapshot_and_restore_survive_a_daemon_killed_at_every_step() {
    let mut daemon = Daemon::start_with(&firecracker_config_with_type("", "diff_snapshots = true"));
    let data = daemon.dir.path().join("data");
    let vm = daemon.must_json(&["vm", "create", "--wait", "--json"]);
    assert_eq!(vm["state"], "ready", "{vm:#}");
    let id = vm["id"].as_str().expect("id").to_owned();
    let pid = vm["pid"].as_u64().expect("pid");
    let base = daemon.must_json(&["vm", "snapshot", &id, "--name", "base", "--json"]);
    let base_id = base["id"].as_str().expect("snapshot id").to_owned();
    let mut tried = Vec::new();

    // A snapshot interrupted at any step is undone; the VM is re-adopted as
    // the dead daemon left it: running, or paused (still consistent) and then
    // resumed by hand. At `after_files` the VM has been resumed already,
    // unless the snapshot was asked to leave it paused. (Once a diff got as far
    // as its files, the next diff has no parent: the last one is a full.)
    for (point, flag, left) in [
        ("snapshot.after_intent", "--diff", "running"),
        ("snapshot.after_pause", "--diff", "paused"),
        ("snapshot.after_files", "--diff", "running"),
        ("snapshot.after_files", "--no-resume", "snapshotted"),
    ] {
        daemon.crash_at(point, |d| {
            let _ = d.tfc(&["vm", "snapshot", &id, flag]);
        });
        let vms = daemon.audit(point);
        assert_eq!(vms.len(), 1, "{point}: {vms:#?}");
        assert_eq!(vms[0]["id"], id.as_str(), "{point}");
        assert_eq!(vms[0]["pid"].as_u64(), Some(pid), "{point}: not re-adopted");
        assert_eq!(vms[0]["state"], left, "{point}: {:#}", vms[0]);
        assert_eq!(daemon.snapshot_ids(), [base_id.as_str()], "{point}");
        if left == "running" {
            daemon.await_run_state(&id, InstanceState::Running);
        } else {
            daemon.await_run_state(&id, InstanceState::Paused);
            let resumed = daemon.must_json(&["vm", "resume", &id, "--json"]);
            assert_eq!(resumed["state"], "running", "{point}: {resumed:#}");
            daemon.await_run_state(&id, InstanceState::Running);
        }
        if !tried.contains(&point) {
            tried.push(point);
        }
    }
    // The interrupted snapshots were written but never recorded: a diff has
    // nothing to be relative to, and says so.
    let refused = daemon.tfc(&["vm", "snapshot", &id, "--diff"]).error_line();
    assert!(refused.contains("take a full snapshot first"), "{refused}");

    // A restore killed once its VMM runs, before any record: that VMM is
    // ended and its directory removed at restart.
    let before = firecrackers_of(&data);
    let mut while_dead = Vec::new();
    daemon.crash_at("restore.after_spawn", |d| {
        let _ = d.tfc(&["vm", "create", "--from-snapshot", &base_id]);
        // The daemon is dead by the time tfc returns.
        while_dead = firecrackers_of(&d.dir.path().join("data"));
    });
    assert_eq!(
        while_dead.len(),
        before.len() + 1,
        "the restore's VMM was not running when the daemon died: {while_dead:?}"
    );
    let vms = daemon.audit("restore.after_spawn");
    assert_eq!(vms.len(), 1, "{vms:#?}");
    assert_eq!(firecrackers_of(&data), before, "{}", daemon.log());
    assert_eq!(daemon.vm_dirs(), 1);
    tried.push("restore.after_spawn");

    // A restore killed once recorded, its VMM loading the snapshot: the
    // load finishes without the daemon, and the VM is re-adopted running.
    daemon.crash_at("restore.after_record", |d| {
        let _ = d.tfc(&["vm", "create", "--from-snapshot", &base_id]);
    });
    let vms = daemon.audit("restore.after_record");
    assert_eq!(vms.len(), 2, "{vms:#?}");
    let clone = vms.iter().find(|v| v["id"] != id.as_str()).expect("clone");
    let clone_id = clone["id"].as_str().expect("id").to_owned();
    assert_eq!(clone["start"]["snapshot"], base_id.as_str(), "{clone:#}");
    // The load was under way in the VMM when the daemon died; almost always
    // it had been sent and finished on its own. If the daemon died before
    // sending it, the VM must be recorded failed for that reason, not ready.
    if clone["state"] == "failed" {
        let failure = clone["failure"].as_str().unwrap_or_default();
        assert!(failure.contains("guest was not running"), "{clone:#}");
    } else {
        assert_eq!(clone["state"], "ready", "{clone:#}");
        assert!(process_alive(clone["pid"].as_u64().expect("pid")));
        daemon.await_run_state(&clone_id, InstanceState::Running);
    }
    // A restored guest spins a core here: end it at once.
    daemon.must(&["vm", "rm", "--force", &clone_id]);
    tried.push("restore.after_record");

    // A delete killed after the row went: the directory goes at restart.
    daemon.crash_at("snapshot_delete.after_row", |d| {
        let _ = d.tfc(&["snapshot", "rm", &base_id]);
    });
    daemon.audit("snapshot_delete.after_row");
    assert_eq!(daemon.snapshot_ids(), Vec::<String>::new());
    assert!(!data.join("snapshots").join(&base_id).exists());
    daemon.tfc(&["snapshot", "show", &base_id]).error_line();
    tried.push("snapshot_delete.after_row");

    daemon.clear_and_check_empty("snapshot crash points end");
    eprintln!(
        "crash points tried, each audited clean: {}",
        tried.join(", ")
    );
}

/// A small deterministic generator (64-bit LCG), so a failing soak replays.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

/// Tier 1 soak, scaled to CI: mixed operations on real VMs (at most three live
/// at once, so guests booting under emulation do not starve the host), VMMs
/// killed from outside, and the daemon killed every ~50 operations (plainly or
/// at a random crash point). Each restart is audited; the run ends with a full
/// cleanup that must leave nothing. `TFC_SOAK_OPS` sets the length and
/// `TFC_SOAK_SEED` the operation sequence.
#[test]
#[ignore = "tier 1: needs KVM, firecracker and built assets; run by the project's test command"]
fn soak_mixed_operations_with_daemon_kills() {
    let ops: u64 = std::env::var("TFC_SOAK_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let points = [
        "create.after_intent",
        "create.after_spawn",
        "create.after_start",
        "stop.after_intent",
        "stop.after_exit",
        "delete.after_files",
    ];
    let seed = std::env::var("TFC_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x7fc_2026);
    let mut rng = Lcg(seed);
    let mut daemon = Daemon::start_with(&firecracker_config(""));
    let (mut restarts, mut outside_kills) = (0, 0);
    let ids = |d: &Daemon| -> Vec<(String, String, Option<u64>)> {
        d.must_json(&["vm", "ls", "--json"])["vms"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|vm| {
                (
                    vm["id"].as_str().unwrap_or_default().to_owned(),
                    vm["state"].as_str().unwrap_or_default().to_owned(),
                    vm["pid"].as_u64(),
                )
            })
            .collect()
    };
    for i in 0..ops {
        let vms = ids(&daemon);
        let live = vms.iter().filter(|v| v.2.is_some()).count();
        let pick = |rng: &mut Lcg| -> Option<String> {
            (!vms.is_empty()).then(|| vms[rng.next(vms.len() as u64) as usize].0.clone())
        };
        // Every command either succeeds or fails with one clear error line.
        let run = |d: &Daemon, args: &[&str]| {
            let r = d.tfc(args);
            if !r.status.success() {
                r.error_line();
            }
        };
        match rng.next(10) {
            0..=2 if live < 3 => run(&daemon, &["vm", "create"]),
            3 => {
                if let Some(id) = pick(&mut rng) {
                    run(&daemon, &["vm", "stop", &id]);
                }
            }
            4 => {
                if let Some(id) = pick(&mut rng) {
                    run(&daemon, &["vm", "rm", "--force", &id]);
                }
            }
            5 => {
                if let Some(id) = pick(&mut rng) {
                    run(&daemon, &["vm", "pause", &id]);
                }
            }
            6 => {
                if let Some(id) = pick(&mut rng) {
                    run(&daemon, &["vm", "resume", &id]);
                }
            }
            7 => {
                // A VMM killed from outside.
                if let Some(pid) = vms.iter().find_map(|v| v.2) {
                    // SAFETY: kill(2) of a Firecracker this test's daemon started.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    outside_kills += 1;
                }
            }
            _ => {
                if let Some(id) = pick(&mut rng) {
                    run(&daemon, &["vm", "show", &id]);
                }
            }
        }
        if i % 50 == 49 {
            if rng.next(2) == 0 {
                daemon.crash_and_restart();
            } else {
                let point = points[rng.next(points.len() as u64) as usize];
                let target = pick(&mut rng);
                daemon.crash_at(point, |d| {
                    let _ = d.tfc(&["vm", "create"]);
                    if let Some(id) = &target {
                        let _ = d.tfc(&["vm", "stop", id]);
                        let _ = d.tfc(&["vm", "rm", id]);
                    }
                    // Not every trigger reaches the point (e.g. no VM to stop):
                    // then a plain kill stands in.
                    std::thread::sleep(Duration::from_millis(200));
                    if d.child.id() > 0 {
                        // SAFETY: kill(2) of our own child, not yet reaped.
                        unsafe { libc::kill(d.child.id() as i32, libc::SIGKILL) };
                    }
                });
            }
            restarts += 1;
            daemon.audit(&format!("soak restart {restarts} (op {i})"));
        }
    }
    daemon.clear_and_check_empty("soak end");
    eprintln!("soak (seed {seed}): {ops} operations, {restarts} daemon kills, {outside_kills} VMMs killed from outside; every audit clean");
}

/// Tier 1: the kernel file of a VM type disappears. New VMs of that type fail
/// at once with an error that says what to do; a VM already started from it is
/// unaffected (Firecracker loaded the kernel at start).
#[test]
#[ignore = "tier 1: needs KVM, firecracker and built assets; run by the project's test command"]
fn a_removed_kernel_fails_new_vms_clearly_and_spares_running_ones() {
    let assets = std::env::var_os("TFC_ASSETS_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(tfc_host::paths::data_dir);
    let manifest = tfc_host::assets::load_manifest(&assets).expect("built assets");
    let kernels = tempfile::tempdir().expect("tempdir");
    let kernel = kernels.path().join("vmlinux");
    std::fs::copy(&manifest.kernel.vmlinux, &kernel).expect("kernel copied");
    let config = format!(
        "[firecracker]\nbinary = {:?}\njailer = false\n[vm_types.default]\nkernel = {:?}\nrootfs = {:?}\nboot_args = {:?}\n",
        manifest.firecracker.path, kernel, manifest.rootfs.path, manifest.boot_args,
    );
    let daemon = Daemon::start_with(&config);
    let (running, pid) = daemon.create_with_pid();
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.state_of(&running) != "booting" {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_file(&kernel).expect("kernel removed");

    let line = daemon.tfc(&["vm", "create", "--wait"]).error_line();
    assert!(line.contains("kernel not found at"), "{line}");
    assert!(line.contains("tfc assets build"), "{line}");
    assert!(process_alive(pid), "the running VM was hurt");
    assert_eq!(daemon.state_of(&running), "booting");
    for vm in daemon.tfc(&["vm", "ls", "--json"]).json()["vms"]
        .as_array()
        .expect("list")
    {
        daemon
            .tfc(&["vm", "rm", "--force", vm["id"].as_str().expect("id")])
            .ok();
    }
    assert!(!process_alive(pid));
    assert_eq!(daemon.vm_dirs(), 0);
}

/// A tmpfs mounted for one test and unmounted when dropped, also on panic.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tfc-test"])
            .arg(at)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mount tmpfs at {}: {status}",
            at.display()
        );
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a daemon still holding files there (a panicking test drops the
        // mount first) must not keep the mount alive.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full data disk (a small tmpfs): a new VM is refused with an error that
/// says the disk is full, nothing half-made is left, the VMs already there are
/// untouched, and once space is freed everything works again, across a
/// restart too. Needs root for the mount, hence the tier-1 lane.
#[test]
#[ignore = "tier 1: mounts a tmpfs (root); run by the project's test command"]
fn a_full_data_disk_refuses_new_vms_and_loses_nothing() {
    let mut daemon = Daemon::start();
    daemon.terminate(Duration::from_secs(10));
    let data = daemon.dir.path().join("data");
    let _tmpfs = Tmpfs::mount(&data, "4m");
    daemon.child = Daemon::spawn(daemon.dir.path(), &daemon.socket);
    daemon.wait_until_listening();

    let kept = daemon.tfc(&["vm", "create", "--wait", "--json"]).json();
    let kept_id = kept["id"].as_str().expect("id").to_owned();
    // Fill the disk.
    let filler = data.join("filler");
    {
        use std::io::Write;
        let mut file = File::create(&filler).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
    }
    let line = daemon.tfc(&["vm", "create", "--wait"]).error_line();
    assert!(line.contains("full"), "{line}");
    let listed = daemon.tfc(&["vm", "ls", "--json"]).json();
    assert_eq!(
        listed["vms"].as_array().map(Vec::len),
        Some(1),
        "{listed:#}"
    );
    assert_eq!(daemon.state_of(&kept_id), "ready");
    assert_eq!(daemon.vm_dirs(), 1, "a half-made VM directory was left");

    std::fs::remove_file(&filler).expect("space freed");
    let added = daemon.tfc(&["vm", "create", "--wait", "--json"]).json();
    assert_eq!(added["state"], "ready", "{added:#}");
    daemon.crash_and_restart();
    let listed = daemon.tfc(&["vm", "ls", "--json"]).json();
    assert_eq!(
        listed["vms"].as_array().map(Vec::len),
        Some(2),
        "{listed:#}"
    );
    daemon.terminate(Duration::from_secs(10));
}

/// Tier 1: a snapshot that does not fit on the data disk (a tmpfs smaller than
/// guest memory) fails with one clear error line and leaves nothing: no
/// snapshot row or directory, the VM running again (also as recorded, across a
/// restart), and stop and delete still work. Needs root for the mount.
#[test]
#[ignore = "tier 1: needs KVM, firecracker, built assets and root (tmpfs); run by the project's test command"]
fn a_full_data_disk_fails_a_snapshot_cleanly() {
    // The VM type points at the built assets by absolute path: only the
    // state store, the VM directory and the snapshot land on the tmpfs.
    let mut daemon = Daemon::start_with(&firecracker_config(""));
    daemon.terminate(Duration::from_secs(10));
    let data = daemon.dir.path().join("data");
    let _tmpfs = Tmpfs::mount(&data, "64m");
    daemon.child = Daemon::spawn(daemon.dir.path(), &daemon.socket);
    daemon.wait_until_listening();

    let vm = daemon.must_json(&["vm", "create", "--wait", "--json"]);
    let id = vm["id"].as_str().expect("id").to_owned();
    let pid = vm["pid"].as_u64().expect("pid");
    // 128 MiB of guest memory on a 64 MiB disk.
    let line = daemon.tfc(&["vm", "snapshot", &id]).error_line();
    eprintln!("snapshot on a full disk: {line}");
    assert!(line.contains("No space left on device"), "{line}");

    assert_eq!(daemon.snapshot_ids(), Vec::<String>::new());
    assert_eq!(dir_entries(&data.join("snapshots")), Vec::<String>::new());
    let vm = daemon.must_json(&["vm", "show", &id, "--json"]);
    assert_eq!(vm["state"], "running", "{vm:#}\n{}", daemon.log());
    assert_eq!(firecracker_run_state(&vm), InstanceState::Running);
    // The stored record says so too (it was written while the disk was
    // still full): a restart re-adopts the VM running.
    daemon.crash_and_restart();
    let vms = daemon.audit("after a snapshot on a full disk");
    assert_eq!(
        vms[0]["state"],
        "running",
        "stored state vs firecracker's {:?}:\n{}",
        firecracker_run_state(&vms[0]),
        daemon.log()
    );
    daemon.await_run_state(&id, InstanceState::Running);

    let stopped = daemon.must_json(&["vm", "stop", &id, "--json"]);
    assert_eq!(stopped["state"], "stopped", "{stopped:#}");
    assert!(!process_alive(pid));
    daemon.must(&["vm", "rm", &id]);
    daemon.clear_and_check_empty("after a snapshot on a full disk");
    daemon.terminate(Duration::from_secs(10));
}

/// `tfc serve` (fake backend) with two pooled VM types: `default` keeps one
/// hot VM, restored from the template the daemon builds on its own; `hotonly`
/// may serve only from its hot tier, which it keeps empty. The types name
/// tiny real kernel and rootfs files so that the template's inputs digest.
fn pool_daemon() -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("vmlinux");
    let rootfs = dir.path().join("rootfs.ext4");
    std::fs::write(&kernel, b"kernel").expect("kernel written");
    std::fs::write(&rootfs, b"rootfs").expect("rootfs written");
    let machine = format!(
        "kernel = {:?}\nrootfs = {:?}\nboot_args = \"console=ttyS0\"\n",
        kernel.display().to_string(),
        rootfs.display().to_string()
    );
    let config = format!(
        "{FAKE_CONFIG}\
         [vm_types.default]\n{machine}\
         [vm_types.default.pool]\ntarget = 1\n\
         [vm_types.hotonly]\n{machine}\
         [vm_types.hotonly.pool]\ntarget = 0\ntiers = [\"hot\"]\n"
    );
    Daemon::start_in(dir, &config)
}

impl Daemon {
    /// Waits until `vm_type`'s pool has `hot` VMs waiting; returns the pool.
    fn await_hot(&self, vm_type: &str, hot: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pool = self.must_json(&["pool", "show", vm_type, "--json"]);
            if pool["sizes"]["hot"].as_u64() == Some(hot) {
                return pool;
            }
            assert!(
                Instant::now() < deadline,
                "pool {vm_type} never had {hot} hot VMs: {pool:#}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_pool_hands_out_prewarmed_vms_and_takes_them_back() {
    let daemon = pool_daemon();

    let table = daemon.must(&["pool", "ls"]);
    let header = table.lines().next().expect("header");
    for column in [
        "TYPE", "TIERS", "RUNNING", "HOT", "STARTING", "ACQUIRED", "ACQUIRES", "HIT%", "HOT P50",
        "HOT P99", "STATUS",
    ] {
        assert!(header.contains(column), "{column} missing: {table}");
    }
    let row = table
        .lines()
        .find(|l| l.starts_with("hotonly "))
        .expect("hotonly row");
    assert!(
        row.contains(" hot ") && row.contains(" 0/0 ") && row.ends_with(" ok"),
        "{table}"
    );

    let pool = daemon.await_hot("default", 1);
    assert_eq!(pool["vm_type"], "default", "{pool:#}");
    assert_eq!(pool["target"], 1, "{pool:#}");
    assert_eq!(
        pool["tiers"],
        serde_json::json!(["running", "hot", "warm", "cold"]),
        "{pool:#}"
    );
    assert!(pool["template"].is_string(), "{pool:#}");
    let table = daemon.must(&["pool", "ls"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("default "))
        .expect("default row");
    assert!(
        row.contains("running,hot,warm,cold") && row.contains(" 0/0  1/1 "),
        "{table}"
    );

    let acquired = daemon.must_json(&["pool", "acquire", "default", "--json"]);
    assert_eq!(acquired["tier"], "hot", "{acquired:#}");
    assert!(acquired["acquire_us"].is_u64(), "{acquired:#}");
    assert_eq!(acquired["vm"]["state"], "running", "{acquired:#}");
    assert!(
        acquired["vm"]["pool"]["acquired_at_ms"].is_u64(),
        "{acquired:#}"
    );
    let id = acquired["vm"]["id"].as_str().expect("id").to_owned();

    let page = daemon.must(&["vm", "show", &id]);
    assert!(
        page.contains("pool:") && page.contains(" hot tier, acquired "),
        "{page}"
    );
    let table = daemon.must(&["vm", "ls"]);
    let row = table.lines().find(|l| l.starts_with(&id)).expect("row");
    assert!(row.contains(" pool/hot "), "{table}");

    // Whichever tier serves the second one, the answer reads the same way.
    let out = daemon.must(&["pool", "acquire", "default", "--wait-ms", "10000"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let second = lines[0].to_owned();
    assert!(second.starts_with("vm-") && second != id, "{out}");
    assert!(lines[1].starts_with("tier:    "), "{out}");
    assert!(
        lines[2].starts_with("acquire: ") && lines[2].ends_with("ms"),
        "{out}"
    );

    for vm in [&id, &second] {
        assert_eq!(
            daemon.must(&["vm", "release", vm]),
            format!("{vm}: released\n")
        );
        let gone = daemon.tfc(&["vm", "show", vm]).error_line();
        assert!(gone.contains(vm.as_str()), "{gone}");
    }

    let page = daemon.must(&["pool", "show", "default"]);
    assert!(page.contains("2 (0 unserved, 0 failed)"), "{page}");
    assert!(
        page.contains("\nTIER ") && page.contains("\nhot "),
        "{page}"
    );

    // Only a VM a pool handed out can be released.
    let own = daemon.must_json(&["vm", "create", "--wait", "--json"]);
    let own = own["id"].as_str().expect("id");
    let refused = daemon.tfc(&["vm", "release", own]).error_line();
    assert!(
        refused.contains(own) && refused.contains("not handed out by a pool"),
        "{refused}"
    );
}

#[test]
fn an_empty_pool_says_when_to_retry_and_resize_checks_bounds() {
    let daemon = pool_daemon();

    let refused = daemon
        .tfc(&["pool", "acquire", "hotonly", "--wait-ms", "50"])
        .error_line();
    assert!(
        refused.contains("hotonly") && refused.contains("; retry after "),
        "{refused}"
    );
    let run = daemon.tfc(&["pool", "acquire", "hotonly", "--wait-ms", "50", "--json"]);
    assert!(run.stdout.is_empty(), "{run:#?}");
    assert!(run.error_line().contains("retry after"));
    let pool = daemon.must_json(&["pool", "show", "hotonly", "--json"]);
    assert_eq!(pool["stats"]["unserved"], 2, "{pool:#}");

    let refused = daemon
        .tfc(&["pool", "resize", "default", "--target", "500"])
        .error_line();
    assert!(
        refused.contains("target") && refused.contains("0..=8"),
        "{refused}"
    );
    let refused = daemon
        .tfc(&["pool", "resize", "default", "--min", "5", "--max", "4"])
        .error_line();
    assert!(refused.contains("min"), "{refused}");
    let unknown = daemon.tfc(&["pool", "show", "nosuch"]).error_line();
    assert!(unknown.contains("unknown VM type"), "{unknown}");

    assert_eq!(
        daemon.must(&["pool", "resize", "hotonly", "--max", "2"]),
        "hotonly: running target 0, hot target 0 (min 0, max 2)\n"
    );
    let resized = daemon.must_json(&[
        "pool", "resize", "hotonly", "--min", "1", "--target", "1", "--json",
    ]);
    assert_eq!(
        (
            resized["min"].clone(),
            resized["target"].clone(),
            resized["max"].clone()
        ),
        (1.into(), 1.into(), 2.into()),
        "{resized:#}"
    );
}

/// The `tfc-agent` binary the fake backend runs behind fake VMs' vsock
/// sockets, built now when needed (`cargo build -p tfc-agent`, into the
/// same target directory), once per test process.
fn agent_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            let output = Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "tfc-agent",
                    "--bin",
                    "tfc-agent",
                    "--message-format=json",
                ])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("cargo runs");
            assert!(output.status.success(), "building tfc-agent failed");
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|message| {
                    message["reason"] == "compiler-artifact"
                        && message["target"]["name"] == "tfc-agent"
                        && message["executable"].is_string()
                })
                .map(|message| message["executable"].as_str().unwrap().into())
                .expect("cargo named the tfc-agent executable")
        })
        .clone()
}

/// Fake VMM + real agent: a daemon whose fake VMs run a real `tfc-agent` on
/// this host behind their vsock sockets (`default` has the agent, `plain`
/// does not), and one ready VM of each. Says nothing about Firecracker.
fn agent_daemon() -> (Daemon, String, String) {
    let config = format!(
        "[daemon]\nbackend = \"fake\"\nshutdown_policy = \"stop\"\n\
         [fake]\nagent = \"{}\"\n\
         [vm_types.default]\nagent = \"on\"\n\
         [vm_types.plain]\nagent = \"off\"\n",
        agent_binary().display()
    );
    let daemon = Daemon::start_with(&config);
    let vm = daemon.must_json(&["vm", "create", "--wait", "--json"]);
    assert_eq!(vm["state"], "ready", "{vm:#}");
    let plain = daemon.must_json(&["vm", "create", "--type", "plain", "--wait", "--json"]);
    let id = |vm: &Value| vm["id"].as_str().unwrap().to_owned();
    (daemon, id(&vm), id(&plain))
}

/// Runs `tfc` with `input` piped to its stdin.
fn tfc_with_stdin(socket: &Path, args: &[&str], input: &[u8]) -> Run {
    use std::io::Write;
    let mut child = Command::new(TFC)
        .args(args)
        .env("TFC_SOCKET", socket)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tfc runs");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("tfc ends");
    writer.join().unwrap().expect("stdin written");
    Run::from_output(args, output)
}

#[test]
fn tfc_exec_streams_the_output_and_exits_with_the_commands_code() {
    let (daemon, id, plain) = agent_daemon();
    let run = daemon.tfc(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(run.status.code(), Some(7), "{run:#?}");
    assert_eq!(
        (run.stdout.as_str(), run.stderr.as_str()),
        ("out\n", "err\n")
    );

    let run = daemon.tfc(&["exec", &id, "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(run.status.code(), Some(128 + 15), "{run:#?}");

    let run = daemon.tfc(&["exec", &id, "--timeout", "0.3", "--", "sleep", "30"]);
    assert_eq!(run.status.code(), Some(124), "{run:#?}");
    assert!(run.stderr.contains("--timeout of 0.3 s"), "{run:#?}");

    let run = daemon.tfc(&[
        "exec",
        &id,
        "-e",
        "GREETING=hi there",
        "--cwd",
        "/",
        "--",
        "sh",
        "-c",
        "echo $GREETING; pwd",
    ]);
    assert_eq!(run.stdout, "hi there\n/\n", "{run:#?}");

    let piped = tfc_with_stdin(
        &daemon.socket,
        &["exec", &id, "--", "wc", "-c"],
        &[b'x'; 100_000],
    );
    assert_eq!(piped.stdout.trim(), "100000", "{piped:#?}");
    let ignored = tfc_with_stdin(
        &daemon.socket,
        &["exec", &id, "-n", "--", "wc", "-c"],
        b"abc",
    );
    assert_eq!(ignored.stdout.trim(), "0", "{ignored:#?}");

    let json = daemon.tfc(&["exec", &id, "--json", "--", "echo", "hi"]);
    assert_eq!(json.status.code(), Some(0), "{json:#?}");
    let events: Vec<Value> = json
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["started", "stdout", "exit"], "{events:?}");
    assert_eq!(events[1]["data"], "aGkK");

    // tfc's own failures: exit 255 and one line that says why.
    for (args, says) in [
        (vec!["exec", UNKNOWN_ID, "--", "true"], "no VM with id"),
        (
            vec!["exec", plain.as_str(), "--", "true"],
            "has no guest agent",
        ),
        (
            vec!["exec", id.as_str(), "--", "/nonexistent/program"],
            "cannot start",
        ),
    ] {
        let run = daemon.tfc(&args);
        assert_eq!(run.status.code(), Some(255), "{run:#?}");
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("error: ") && lines[0].contains(says),
            "{run:#?}"
        );
    }
    daemon.must(&["vm", "pause", &id]);
    let paused = daemon.tfc(&["exec", &id, "--", "true"]);
    assert_eq!(paused.status.code(), Some(255), "{paused:#?}");
    assert!(paused.stderr.contains("resume it first"), "{paused:#?}");
    daemon.must(&["vm", "resume", &id]);
    assert_eq!(
        daemon.tfc(&["exec", &id, "--", "true"]).status.code(),
        Some(0)
    );
    // `--` is required before the command.
    let usage = daemon.tfc(&["exec", &id, "true"]);
    assert_eq!(usage.status.code(), Some(2), "{usage:#?}");
}

#[test]
fn killing_tfc_exec_kills_the_command_in_the_guest() {
    use std::io::BufRead;
    let (daemon, id, _) = agent_daemon();
    let mut child = Command::new(TFC)
        .args(["exec", &id, "--", "sh", "-c", "echo $$; exec sleep 60"])
        .env("TFC_SOCKET", &daemon.socket)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tfc runs");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid: u64 = line.trim().parse().expect("the command printed its pid");
    let alive = |pid: u64| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
    };
    assert!(alive(pid));
    // SIGKILL: tfc gets no chance to say goodbye; the daemon notices the
    // closed connection.
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the command outlived its client:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn tfc_cp_copies_both_ways_and_keeps_the_mode_on_upload() {
    use std::os::unix::fs::PermissionsExt;
    let (daemon, id, _) = agent_daemon();
    // The "guest" is this host: its paths are in the test's directory.
    let dir = daemon.dir.path().join("files");
    std::fs::create_dir(&dir).unwrap();
    let local = dir.join("script.sh");
    let contents: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&local, &contents).unwrap();
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o750)).unwrap();
    let guest = dir.join("in-guest.sh").display().to_string();
    let target = format!("{id}:{guest}");

    daemon.must(&["cp", local.to_str().unwrap(), &target]);
    assert!(std::fs::read(&guest).unwrap() == contents);
    let mode = std::fs::metadata(&guest).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o750);

    let back = dir.join("back.sh");
    daemon.must(&["cp", &target, back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == contents);
    // Into a directory: the guest file's name.
    let into = dir.join("into");
    std::fs::create_dir(&into).unwrap();
    daemon.must(&["cp", &target, into.to_str().unwrap()]);
    assert!(std::fs::read(into.join("in-guest.sh")).unwrap() == contents);
    // To stdout.
    let run = daemon.tfc(&["cp", &target, "-"]);
    assert!(run.status.success(), "{run:#?}");
    assert_eq!(run.stdout.len(), String::from_utf8_lossy(&contents).len());

    // From stdin, with the default mode; --json says what was written.
    let piped = dir.join("piped.txt").display().to_string();
    let run = tfc_with_stdin(
        &daemon.socket,
        &["cp", "-", &format!("{id}:{piped}"), "--json"],
        b"from stdin\n",
    );
    let written: Value = serde_json::from_str(&run.ok()).unwrap();
    assert_eq!(written["size"], 11);
    assert_eq!(written["mode"], 0o644);
    assert_eq!(std::fs::read(&piped).unwrap(), b"from stdin\n");

    // Failures: one line, nothing half-written.
    let missing = format!("{id}:{}", dir.join("missing").display());
    let fetched = dir.join("fetched");
    let err = daemon
        .tfc(&["cp", &missing, fetched.to_str().unwrap()])
        .error_line();
    assert!(
        err.contains("NotFound") || err.contains("No such file"),
        "{err}"
    );
    assert!(!fetched.exists());
    let before: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    let err = daemon
        .tfc(&[
            "cp",
            local.to_str().unwrap(),
            &format!("{id}:relative/path"),
        ])
        .error_line();
    assert!(err.contains("not absolute"), "{err}");
    // Refused by the agent while the file is being sent: the answer still
    // arrives whole, not as a broken pipe.
    let err = daemon
        .tfc(&[
            "cp",
            local.to_str().unwrap(),
            &format!("{id}:{}", dir.join("no/such/dir/f").display()),
        ])
        .error_line();
    assert!(err.contains("No such file"), "{err}");
    let err = daemon.tfc(&["cp", "a", "b"]).error_line();
    assert!(err.contains("ID:PATH"), "{err}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), before.len());
}

/// Live processes whose command line names a path under `data`'s VM
/// directories (a VM's VMM and its helpers, whatever the backend).
fn processes_under(data: &Path) -> Vec<u64> {
    processes_named_under(data, |_| true)
}

/// The qemu-tcg lane from the command line, as a user on a host without
/// usable KVM would go: `tfc vm create --backend qemu-tcg --wait` on a
/// Firecracker daemon with its embedded VM type, then `tfc exec` and `tfc cp`
/// into the real guest (the agent as its init), then `tfc vm rm --force`.
#[test]
#[ignore = "qemu-tcg lane: needs qemu-system-x86_64, vhost-device-vsock and built assets; run by the project's test command"]
fn qemu_tcg_vm_serves_tfc_exec_and_tfc_cp() {
    let assets = std::env::var_os("TFC_ASSETS_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(tfc_host::paths::data_dir);
    let mut missing: Vec<String> = [tfc_host::qemu::QEMU, tfc_host::qemu::VHOST_VSOCK]
        .iter()
        .filter_map(|p| p.find(None).err().map(|e| e.to_string()))
        .collect();
    let manifest = tfc_host::assets::load_manifest(&assets)
        .map_err(|e| missing.push(e.to_string()))
        .ok();
    let Some(manifest) = manifest.filter(|_| missing.is_empty()) else {
        let why = missing.join("; ");
        if std::env::var("TFC_REQUIRE_TIER1").as_deref() == Ok("1") {
            panic!("the qemu-tcg lane is required (TFC_REQUIRE_TIER1=1) but cannot run: {why}");
        }
        eprintln!("NOT RUN (this is not a pass): qemu_tcg_vm_serves_tfc_exec_and_tfc_cp: {why}");
        return;
    };
    // The daemon's own data directory, holding the built assets' manifest:
    // the embedded VM type takes its kernel (the bzImage for QEMU) and
    // rootfs from it.
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest_path = tfc_host::assets::manifest_path(&dir.path().join("data"));
    std::fs::create_dir_all(manifest_path.parent().unwrap()).unwrap();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let config = format!(
        "[daemon]\nstorage = \"memory\"\nshutdown_policy = \"stop\"\n[firecracker]\nbinary = {:?}\njailer = false\n",
        manifest.firecracker.path
    );
    let daemon = Daemon::start_in(dir, &config);

    let created = daemon.must(&["vm", "create", "--backend", "qemu-tcg", "--wait"]);
    let id = created.lines().next().expect("the id").to_owned();
    assert!(created.contains("agent_ready"), "{created}");
    let vm = daemon.must_json(&["vm", "show", &id, "--json"]);
    assert_eq!(vm["state"], "ready", "{vm:#}");
    assert_eq!(vm["spec"]["vmm"], "qemu-tcg", "{vm:#}");

    let run = daemon.tfc(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo hi; echo oops >&2; exit 3",
    ]);
    assert_eq!(run.status.code(), Some(3), "{run:#?}");
    assert_eq!(run.stdout, "hi\n");
    assert_eq!(run.stderr, "oops\n");

    let local = daemon.dir.path().join("upload.txt");
    std::fs::write(&local, "into the guest\n").unwrap();
    daemon.must(&[
        "cp",
        local.to_str().unwrap(),
        &format!("{id}:/tmp/upload.txt"),
    ]);
    let run = daemon.tfc(&["exec", &id, "--", "cat", "/tmp/upload.txt"]);
    assert_eq!(run.stdout, "into the guest\n", "{run:#?}");
    let back = daemon.dir.path().join("download.txt");
    daemon.must(&[
        "cp",
        &format!("{id}:/tmp/upload.txt"),
        back.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "into the guest\n");
    let missing = daemon.tfc(&["cp", &format!("{id}:/no/such/file"), back.to_str().unwrap()]);
    assert!(missing.error_line().contains("No such file"));
    let run = daemon.tfc(&["exec", &id, "--", "hostname"]);
    assert_eq!(run.stdout, "tfc\n", "{run:#?}");

    let data = daemon.dir.path().join("data");
    assert!(!processes_under(&data).is_empty(), "no QEMU found");
    daemon.must(&["vm", "rm", "--force", &id]);
    assert_eq!(processes_under(&data), Vec::<u64>::new(), "processes left");
    assert_eq!(daemon.vm_dirs(), 0, "VM directories left behind");
}

/// Network lane (root): `tfc serve` killed at each step of setting up a VM's
/// network (slot made on demand: namespace, tap, veth; the VM's record, its
/// addresses) leaves records a restarted daemon reconciles: afterwards no
/// lease, no namespace and nothing on the (stand-in) host is left, and the
/// restarted daemon gives new VMs networks as before.
#[test]
#[ignore = "network lane: needs root, /dev/net/tun, ip and nft; run by the project's test command"]
fn network_a_daemon_killed_while_setting_up_a_network_leaves_nothing() {
    if !net::lane("network_a_daemon_killed_while_setting_up_a_network_leaves_nothing") {
        return;
    }
    let t = net::TestNet::new();
    let before = t.inventory();
    let config = format!(
        "{FAKE_CONFIG}[network]\nenabled = true\nprefix = \"{}\"\nuplink = \"{}\"\n\
         host_netns = \"{}\"\nready_slots = 0\n",
        t.prefix,
        net::UPLINK,
        t.host_ns_name()
    );
    let mut daemon = Daemon::start_with(&config);
    let vm_namespaces = || -> Vec<String> {
        tfc_net::Netns::list()
            .unwrap()
            .into_iter()
            .filter(|n| {
                n.starts_with(&format!("{}-", t.prefix))
                    && *n != t.host_ns_name()
                    && *n != format!("{}-wan", t.prefix)
            })
            .collect()
    };
    for point in [
        "net.slot.after_namespace",
        "net.slot.after_tap",
        "net.slot.after_veth",
        "net.attach.after_record",
        "net.attach.after_addresses",
    ] {
        daemon.crash_at(point, |d| {
            let _ = d.tfc(&["vm", "create", "--network", "nat"]);
        });
        // The restarted daemon removed what the dead one left.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !vm_namespaces().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(vm_namespaces(), Vec::<String>::new(), "{point}");
        let status = daemon.must_json(&["net", "ls", "--json"]);
        assert_eq!(
            status["leases"],
            serde_json::json!([]),
            "{point}: {status:#}"
        );
        for vm in daemon.must_json(&["vm", "ls", "--json"])["vms"]
            .as_array()
            .unwrap()
        {
            assert_ne!(vm["state"], "creating", "{point}: {vm:#}");
            assert!(vm.get("network").is_none(), "{point}: {vm:#}");
        }
    }
    // And it still gives VMs networks.
    let vm = daemon.must_json(&["vm", "create", "--network", "isolated", "--wait", "--json"]);
    assert_eq!(vm["network"]["mode"], "isolated", "{vm:#}");
    let shown = daemon.must(&["vm", "show", vm["id"].as_str().unwrap()]);
    assert!(
        shown.contains("network") && shown.contains("tap0"),
        "{shown}"
    );
    let listed = daemon.must(&["net", "ls"]);
    assert!(listed.contains(vm["id"].as_str().unwrap()), "{listed}");
    daemon.must(&["vm", "rm", vm["id"].as_str().unwrap(), "--force"]);
    assert_eq!(vm_namespaces(), Vec::<String>::new());
    assert_eq!(
        daemon.terminate(Duration::from_secs(30)).map(|s| s.code()),
        Some(Some(0)),
        "{}",
        daemon.log()
    );
    assert_eq!(t.inventory(), before);
}

#[test]
fn top_and_alerts_show_pools_vms_and_a_missed_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("vmlinux");
    let rootfs = dir.path().join("rootfs.ext4");
    std::fs::write(&kernel, b"kernel").expect("kernel written");
    std::fs::write(&rootfs, b"rootfs").expect("rootfs written");
    // A 1 µs acquire target no hand-over can meet, checked every second.
    let config = format!(
        "{FAKE_CONFIG}\
         [alerts]\ninterval_secs = 1\nmin_samples = 1\n\
         [vm_types.default]\nkernel = {:?}\nrootfs = {:?}\nboot_args = \"console=ttyS0\"\n\
         [vm_types.default.pool]\ntarget = 1\n\
         [vm_types.default.targets]\nacquire_p99_ms = 0.001\n",
        kernel.display().to_string(),
        rootfs.display().to_string()
    );
    let daemon = Daemon::start_in(dir, &config);
    daemon.await_hot("default", 1);
    assert_eq!(
        daemon.must(&["alerts"]),
        "no active alerts: every target is met\n"
    );
    let acquired = daemon.must_json(&["pool", "acquire", "default", "--json"]);
    let id = acquired["vm"]["id"].as_str().expect("id").to_owned();

    let deadline = Instant::now() + Duration::from_secs(30);
    let alerts = loop {
        let alerts = daemon.must_json(&["alerts", "--json"]);
        if alerts["active"].as_array().is_some_and(|a| !a.is_empty()) {
            break alerts;
        }
        assert!(
            Instant::now() < deadline,
            "no alert raised: {alerts:#}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(alerts["active"][0]["target"], "acquire_p99_ms");
    let table = daemon.must(&["alerts"]);
    assert!(table.starts_with("TYPE"), "{table}");
    assert!(
        table.contains("acquire_p99_ms") && table.contains("0.00 ms"),
        "{table}"
    );
    assert!(daemon.log().contains("alert raised"), "{}", daemon.log());

    let top = daemon.must(&["top", "--once"]);
    let first = top.lines().next().expect("header line");
    assert!(first.starts_with("tfc top"), "{top}");
    assert!(first.contains("1 active alert"), "{top}");
    assert!(
        top.contains("\nPOOLS\n") && top.contains("\nALERTS\n"),
        "{top}"
    );
    assert!(top.contains(&id), "the acquired VM is listed: {top}");
    // Nothing but the view: no screen control codes when not on a terminal.
    assert!(!top.contains('\x1b'), "{top:?}");
    let refused = daemon.tfc(&["top", "--interval", "0"]);
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("between 0.1 and 3600"),
        "{}",
        refused.stderr
    );
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // The parent is the second field after the command's `)`.
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            ppid == Some(pid)
        })
        .collect()
}

/// Whether the environment `pid` started with holds `name`.
fn started_with_env(pid: u32, name: &str) -> bool {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let prefix = format!("{name}=");
    environ
        .split(|b| *b == 0)
        .any(|var| var.starts_with(prefix.as_bytes()))
}

/// The daemon takes `TFC_TOKEN` out of its environment before it starts
/// anything: a process it starts (here a fake VM's real guest agent) does
/// not inherit the API's token.
#[test]
fn processes_the_daemon_starts_do_not_inherit_its_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "[daemon]\nbackend = \"fake\"\nshutdown_policy = \"stop\"\n\
         [fake]\nagent = \"{}\"\n[vm_types.default]\nagent = \"on\"\n",
        agent_binary().display()
    );
    std::fs::write(dir.path().join("tfc.toml"), config).expect("config written");
    let socket = dir.path().join("tfc.sock");
    let child = Daemon::spawn_with_env(
        dir.path(),
        &socket,
        &[("TFC_TOKEN", "env-token-0123456789abcdef")],
    );
    let mut daemon = Daemon { child, dir, socket };
    daemon.wait_until_listening();
    let vm = daemon.must_json(&["vm", "create", "--wait", "--json"]);
    assert_eq!(vm["state"], "ready", "{vm:#}");
    let pid = daemon.child.id();
    // The daemon itself was started with the token (its start-up
    // environment, which /proc shows, does not change)...
    assert!(started_with_env(pid, "TFC_TOKEN"));
    // ...the agent it started was not.
    let children = children_of(pid);
    assert!(!children.is_empty(), "the fake VM's agent is not running");
    for child in children {
        assert!(
            !started_with_env(child, "TFC_TOKEN"),
            "process {child} inherited TFC_TOKEN"
        );
        assert!(
            started_with_env(child, "TFC_DATA_DIR"),
            "process {child}: environment unreadable"
        );
    }
}

#[test]
fn json_logs_carry_the_request_and_vm_of_each_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tfc.toml"), FAKE_CONFIG).expect("config written");
    let socket = dir.path().join("tfc.sock");
    let child = Daemon::spawn_with_env(
        dir.path(),
        &socket,
        &[("TFC_LOG_FORMAT", "json"), ("RUST_LOG", "tfc_daemon=debug")],
    );
    let mut daemon = Daemon { child, dir, socket };
    daemon.wait_until_listening();
    let out = daemon.must(&["vm", "create", "--wait"]);
    let id = out.lines().next().expect("id line");
    daemon.must(&["vm", "show", id]);
    let log = daemon.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // The answer to `GET /v1/vms/{id}` is logged inside its request's span,
    // which names the route's template and the VM.
    let answered = lines
        .iter()
        .find(|l| {
            l["fields"]["message"] == "answered"
                && l["span"]["route"] == "/v1/vms/{id}"
                && l["span"]["vm"] == id
        })
        .unwrap_or_else(|| panic!("no answer logged for GET /v1/vms/{id}:\n{log}"));
    assert_eq!(answered["span"]["method"], "GET");
    assert_eq!(answered["fields"]["status"], 200);
    // What the VM's owner logs (its boot here) is in a span naming the VM.
    assert!(
        lines.iter().any(|l| l["span"]["name"] == "vm_owner"
            && l["span"]["vm"] == id
            && l["fields"]["message"] == "VM ready"),
        "no owner line for {id}:\n{log}"
    );
    assert!(lines
        .iter()
        .any(|l| l["fields"]["message"] == "tfc daemon listening"));
}

#[test]
fn the_data_directory_is_the_daemons_users_alone() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().expect("tempdir");
    // A data directory someone made world-readable is tightened, with a warning.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let daemon = Daemon::start_in(dir, FAKE_CONFIG);
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    // (The socket's mode is checked in tfc-daemon's tests/access.rs.)
    assert_eq!(mode(&data), 0o700);
    assert!(
        daemon
            .log()
            .contains("the data directory was open to other users"),
        "{}",
        daemon.log()
    );
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    assert_eq!(std::fs::metadata(&data).expect("stat").uid(), me);
}

/// The TCP address `tfc serve` reported listening on, from its log. The
/// TCP listener's task logs it as it starts serving, which may be just
/// after the Unix socket answers: the log is read again until it shows.
fn tcp_address(daemon: &Daemon) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = daemon.log();
        if log.contains("API listening on TCP") || Instant::now() >= deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let line = log
        .lines()
        .find(|line| line.contains("API listening on TCP"))
        .unwrap_or_else(|| panic!("no TCP listener in the log:\n{log}"));
    let addr = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {line}"));
    addr.to_owned()
}

#[test]
#[ignore = "network lane: needs root (TCP inside a network namespace of its own); run by the project's test command"]
fn a_tcp_daemon_needs_its_token_from_the_command_line() {
    // The daemon and the clients this thread starts share its namespace.
    if !net::private_netns("a_tcp_daemon_needs_its_token_from_the_command_line") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "cli-token-0123456789abcdef\n").expect("token written");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let config = format!(
        "{FAKE_CONFIG}[api]\ntcp = \"127.0.0.1:0\"\ntoken_file = {:?}\n",
        token_file
    );
    let daemon = Daemon::start_in(dir, &config);
    let host = format!("http://{}", tcp_address(&daemon));
    let tfc = |args: &[&str], env: &[(&str, &str)]| {
        let output = Command::new(TFC)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("TFC_TOKEN")
            .env_remove("TFC_TOKEN_FILE")
            .envs(env.iter().copied())
            .output()
            .expect("tfc runs");
        Run::from_output(args, output)
    };
    let line = tfc(&["--host", &host, "vm", "list"], &[]).error_line();
    assert!(
        line.contains("needs its API token") && line.contains("--token-file"),
        "{line}"
    );
    let line = tfc(
        &[
            "--host",
            &host,
            "--token",
            "not-the-token-at-all",
            "vm",
            "list",
        ],
        &[],
    )
    .error_line();
    assert!(line.contains("refused the token"), "{line}");
    // Refusals of one client are logged at most once a second: a third,
    // after that second, is logged with the count of those left out.
    std::thread::sleep(tfc_daemon::access::REFUSAL_LOG_INTERVAL);
    let line = tfc(
        &[
            "--host",
            &host,
            "--token",
            "still-not-the-token-at-all",
            "vm",
            "list",
        ],
        &[],
    )
    .error_line();
    assert!(line.contains("refused the token"), "{line}");
    let token_path = token_file.to_str().expect("utf-8 path");
    let listed = tfc(
        &[
            "--host",
            &host,
            "--token-file",
            token_path,
            "vm",
            "list",
            "--json",
        ],
        &[],
    );
    assert_eq!(listed.json()["vms"], Value::Array(vec![]));
    let listed = tfc(
        &["vm", "list", "--json"],
        &[
            ("TFC_HOST", &host),
            ("TFC_TOKEN", "cli-token-0123456789abcdef"),
        ],
    );
    assert_eq!(listed.json()["vms"], Value::Array(vec![]));
    // Each refusal is logged with its peer and reason, never with what was sent.
    let log = daemon.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("refused an API request without a valid token"))
        .collect();
    assert_eq!(refusals.len(), 2, "{log}");
    assert!(
        refusals.iter().all(|line| line.contains("peer=127.0.0.1:")),
        "{log}"
    );
    assert!(refusals[0].contains("no Authorization header"), "{log}");
    assert!(
        refusals[1].contains("wrong token") && refusals[1].contains("suppressed=1"),
        "{log}"
    );
    assert!(
        !log.contains("not-the-token-at-all") && !log.contains("cli-token-"),
        "{log}"
    );
    // The token never shows in help, even when it is in the environment.
    let help = tfc(
        &["vm", "list", "--help"],
        &[("TFC_TOKEN", "cli-token-0123456789abcdef")],
    );
    assert!(!help.ok().contains("cli-token-0123456789abcdef"));
}

#[test]
fn serve_refuses_a_tcp_listener_without_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tfc.toml");
    std::fs::write(
        &config,
        format!("{FAKE_CONFIG}[api]\ntcp = \"127.0.0.1:0\"\n"),
    )
    .expect("config written");
    let output = Command::new(TFC)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("TFC_SOCKET", dir.path().join("tfc.sock"))
        .env("TFC_DATA_DIR", dir.path().join("data"))
        .env_remove("RUST_LOG")
        .env_remove("TFC_TOKEN")
        .output()
        .expect("tfc serve runs");
    let line = Run::from_output(&["serve"], output).error_line();
    assert!(
        line.contains("api.tcp is set but there is no token") && line.contains("api.token_file"),
        "{line}"
    );
    assert!(!dir.path().join("tfc.sock").exists());
}

#[test]
fn logs_prints_tails_and_follows_a_vms_console_until_it_stops() {
    let daemon = Daemon::start();
    let vm = daemon.must_json(&["vm", "create", "--wait", "--json"]);
    let id = vm["id"].as_str().expect("id").to_owned();
    // The fake runs no VMM; the test writes the console file a backend would.
    let console = PathBuf::from(vm["console_log"].as_str().expect("console_log"));
    std::fs::write(&console, "first\nsecond\n").expect("console written");
    assert_eq!(daemon.must(&["logs", &id]), "first\nsecond\n");
    assert_eq!(daemon.must(&["logs", &id, "--tail", "1"]), "second\n");
    assert_eq!(daemon.must(&["logs", &id, "--vmm"]), "");

    let mut follower = Command::new(TFC)
        .args(["logs", &id, "--follow"])
        .env("TFC_SOCKET", &daemon.socket)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tfc logs --follow starts");
    std::thread::sleep(Duration::from_millis(700));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&console)
        .expect("console opened");
    std::io::Write::write_all(&mut file, b"third\n").expect("console appended");
    std::thread::sleep(Duration::from_millis(700));
    daemon.must(&["vm", "stop", &id]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while follower.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = follower.kill();
            let _ = follower.wait();
            panic!("tfc logs --follow kept running after the VM stopped");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = Run::from_output(
        &["logs", "--follow"],
        follower.wait_with_output().expect("output"),
    );
    assert_eq!(run.ok(), "first\nsecond\nthird\n");
}
