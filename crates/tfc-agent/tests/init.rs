//! Tier 0, init lane: the `tfc-agent` binary as PID 1 of new PID, mount,
//! UTS and network namespaces on the host (`unshare`, as root), and on a
//! vsock loopback. No VM.
//!
//! Its own small runner (`harness = false`), because a case whose host
//! cannot run it must be reported as *ignored* with the reason, never as
//! passed, and the standard harness can only ignore at compile time. The
//! output follows libtest's lines ("test NAME ... ok", "test result: ...")
//! so `./scripts/test` counts it with the rest. `--ignored` runs nothing
//! (no case is ignored unconditionally); positional arguments filter by
//! name, `--list` lists.
//!
//! The agent's socket lives under `CARGO_TARGET_TMPDIR`: the agent mounts a
//! tmpfs on /tmp and /run of its namespace, which would hide a socket there.

mod common;

use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{exec, expect_error, mounts_at_agent_targets, Client};
use tfc_agent_proto::{ErrorCode, FrameBody, Reply, Request};

const AGENT: &str = env!("CARGO_BIN_EXE_tfc-agent");

/// What a case needs from the host.
#[derive(Debug, Clone, Copy)]
enum Needs {
    /// Root and `unshare` (util-linux).
    Namespaces,
    /// The same, and iproute2's `ip` with veth support.
    NamespacesAndIp,
    /// A vsock loopback transport (`vsock_loopback`).
    VsockLoopback,
}

fn run_ok(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Why the host cannot run a case, or `None` when it can.
fn unmet(needs: Needs) -> Option<String> {
    if matches!(needs, Needs::Namespaces | Needs::NamespacesAndIp) {
        // SAFETY: geteuid cannot fail and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            return Some("needs root (it creates PID, mount, UTS and network namespaces)".into());
        }
        if !run_ok("unshare", &["--version"]) {
            return Some("needs `unshare` from util-linux".into());
        }
    }
    if matches!(needs, Needs::NamespacesAndIp)
        && !run_ok(
            "unshare",
            &[
                "--net", "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
            ],
        )
    {
        return Some("needs iproute2's `ip` and veth interfaces in a network namespace".into());
    }
    if matches!(needs, Needs::VsockLoopback) {
        return vsock_loopback_unavailable();
    }
    None
}

fn vsock_loopback_unavailable() -> Option<String> {
    // Binding to the local CID succeeds only when the loopback transport
    // is there; the port is the kernel's pick.
    match tfc_agent::vsock::bind(tfc_agent::vsock::CID_LOCAL, libc::VMADDR_PORT_ANY) {
        Ok(_) => None,
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            Some(format!("this kernel has no vsock support ({e})"))
        }
        Err(e) => Some(format!(
            "no vsock loopback transport: binding to CID 1 failed ({e}); /dev/vsock {}; \
             load it with `modprobe vsock_loopback` (CONFIG_VSOCKETS_LOOPBACK)",
            if Path::new("/dev/vsock").exists() {
                "exists (a guest-to-host transport only)"
            } else {
                "is missing"
            }
        )),
    }
}

// ---------------------------------------------------------------------
// The agent as PID 1 of new namespaces.

/// `tfc-agent --unix` as PID 1 under `unshare`. Dropping it kills `unshare`,
/// whose `--kill-child` then kills the namespace's init, which ends every
/// process of the namespace.
struct NsAgent {
    unshare: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl NsAgent {
    fn start(kernel_params: &str) -> Self {
        // The agent mounts tmpfs on /tmp, /run and /dev/shm in its namespace,
        // which would hide a socket beneath them: a checkout under /tmp (as a
        // CI clone may be) keeps its socket in /var/tmp instead.
        let hidden = |path: &Path| ["/tmp", "/run", "/dev"].iter().any(|h| path.starts_with(h));
        let base = [
            Path::new(env!("CARGO_TARGET_TMPDIR")),
            Path::new("/var/tmp"),
        ]
        .into_iter()
        .find(|p| !hidden(p))
        .expect("/var/tmp is never hidden");
        let dir = tempfile::Builder::new()
            .prefix("init-")
            .tempdir_in(base)
            .unwrap();
        let socket = dir.path().join("agent.sock");
        let cmdline = dir.path().join("cmdline");
        std::fs::write(&cmdline, format!("console=ttyS0 {kernel_params}\n")).unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let unshare = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--uts",
                "--net",
                "--propagation",
                "private",
                "--",
                AGENT,
            ])
            .arg("--unix")
            .arg(&socket)
            .arg("--cmdline")
            .arg(&cmdline)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut agent = NsAgent {
            unshare,
            socket,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&agent.socket).is_err() {
            if let Some(status) = agent.unshare.try_wait().unwrap() {
                panic!(
                    "the agent ended ({status}) before serving:\n{}",
                    agent.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the agent never listened:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        agent
    }

    fn connect(&self) -> Client {
        Client::connect(&self.socket).unwrap()
    }

    /// Runs `sh -c script` in the namespaces; stdout and exit code.
    fn sh(&self, script: &str) -> (String, Option<i32>) {
        self.connect().sh(1, script)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.unshare.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl NsAgent {
    /// The host's pid of the namespace's init (`unshare`'s only child).
    fn init_host_pid(&self) -> Option<u32> {
        let pid = self.unshare.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for NsAgent {
    fn drop(&mut self) {
        // Killing the namespace's init ends every process in it; `unshare`
        // then reaps it and exits. Killing `unshare` first would leave the
        // init to the host's init to reap.
        if let Some(init) = self.init_host_pid() {
            // SAFETY: kill has no memory effects; `init` is unshare's child,
            // which unshare has not reaped while it runs.
            unsafe { libc::kill(init as libc::pid_t, libc::SIGKILL) };
            if self.wait_exit(Duration::from_secs(5)).is_some() {
                return;
            }
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

fn host_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap()
}

/// `(pid, state, ppid)` of every line of `/proc/PID/stat` text.
fn process_states(stats: &str) -> Vec<(u32, char, u32)> {
    stats
        .lines()
        .filter_map(|line| {
            let pid = line.split(' ').next()?.parse().ok()?;
            // The command name may hold spaces and parentheses: the fields
            // after it start at the last ')'.
            let rest = &line[line.rfind(')')? + 2..];
            let mut fields = rest.split(' ');
            let state = fields.next()?.chars().next()?;
            let ppid = fields.next()?.parse().ok()?;
            Some((pid, state, ppid))
        })
        .collect()
}

fn init_mounts_its_filesystems_in_its_namespace_only() {
    let mounts_before = mounts_at_agent_targets();
    let hostname_before = host_hostname();
    let agent = NsAgent::start("tfc.hostname=tfc-init-test tfc.agent_port=5005");

    let (mountinfo, code) = agent.sh("cat /proc/self/mountinfo");
    assert_eq!(code, Some(0));
    let points = tfc_agent::init::mount_points(&mountinfo);
    for mount in &tfc_agent::init::MOUNTS {
        assert!(
            points.iter().any(|p| p == mount.target),
            "{} is not mounted in the namespace: {points:?}",
            mount.target
        );
    }
    // The /proc inside is the namespace's own: its PID 1 is the agent.
    assert_eq!(agent.sh("cat /proc/1/comm").0, "tfc-agent\n");
    assert_eq!(
        agent.sh("cat /proc/sys/kernel/hostname").0,
        "tfc-init-test\n"
    );
    let (links, _) = agent.sh("ip -o link show lo");
    assert!(links.contains("LOOPBACK,UP"), "lo is not up: {links}");

    // What the host sees has not changed.
    assert_eq!(mounts_at_agent_targets(), mounts_before);
    assert_eq!(host_hostname(), hostname_before);

    let log = agent.log();
    assert!(log.contains("mounted /proc"), "{log}");
    let serving = format!(
        "tfc-agent: serving on unix socket {}",
        agent.socket.display()
    );
    assert!(log.contains(&serving), "{log}");
    // The host's clock is not the namespace's to set.
    let message = expect_error(
        agent
            .connect()
            .request(2, Request::SyncClock { unix_ns: 0 }),
        ErrorCode::PermissionDenied,
    );
    assert!(message.contains("--guest"), "{message}");
    drop(agent);
    assert_eq!(mounts_at_agent_targets(), mounts_before);
}

fn init_reaps_orphans_without_taking_exec_statuses() {
    let agent = NsAgent::start("");
    // The shell exits at once; its background sleep is orphaned and handed
    // to the namespace's init.
    let (out, code) = agent.sh("sleep 0.5 >/dev/null 2>&1 & echo $!; exit 0");
    assert_eq!(code, Some(0));
    let orphan: u32 = out.trim().parse().unwrap();
    let (stat, _) = agent.sh(&format!("cat /proc/{orphan}/stat"));
    let states = process_states(&stat);
    assert!(
        matches!(states[..], [(pid, _, 1)] if pid == orphan),
        "the orphan's parent is not init: {stat}"
    );

    // Meanwhile, on one connection, commands that each leave an orphan
    // behind: every exit status still reaches its exec.
    let mut client = agent.connect();
    for id in 1..=20 {
        client.send(
            id,
            exec(&["sh", "-c", "sleep 0.1 >/dev/null 2>&1 & exit 7"]),
        );
    }
    let mut exits = 0;
    while exits < 20 {
        let frame = client.recv();
        if let FrameBody::Reply(reply) = frame.body {
            match reply {
                Reply::ExecStarted { .. } => {}
                Reply::Exit { code, .. } => {
                    assert_eq!(code, Some(7), "exec {} lost its status", frame.id);
                    exits += 1;
                }
                other => panic!("exec {}: {other:?}", frame.id),
            }
        }
    }

    // Once the orphans ended: no zombie anywhere in the namespace.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (stats, _) = agent.sh("for f in /proc/[0-9]*/stat; do cat $f; done 2>/dev/null");
        let states = process_states(&stats);
        let zombies: Vec<_> = states
            .iter()
            .filter(|(_, state, _)| *state == 'Z')
            .collect();
        let orphan_gone = states.iter().all(|(pid, _, _)| *pid != orphan);
        if zombies.is_empty() && orphan_gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "zombies left: {zombies:?}, the orphan gone: {orphan_gone}\n{stats}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(agent.log().contains("reaped an orphan"), "{}", agent.log());
}

fn init_restarts_a_dead_agent() {
    let agent = NsAgent::start("");
    let first = agent.sh("echo $PPID").0;
    // The command's parent is the agent: kill it mid-request.
    let mut client = agent.connect();
    client.send(1, exec(&["sh", "-c", "kill -KILL $PPID; sleep 5"]));
    while let Ok(Some(_)) = client.reader.read_frame() {}
    // The listening socket stayed open in init: a new connection waits in
    // its backlog until the new agent accepts it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answered = Client::connect(&agent.socket)
            .map(|mut client| matches!(client.request(1, Request::Ping), Reply::Pong { .. }));
        if answered.unwrap_or(false) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no agent again:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = agent.sh("echo $PPID").0;
    assert_ne!(first, second, "the same agent answers");
    let log = agent.log();
    assert!(log.contains("was killed by signal 9"), "{log}");
    assert_eq!(log.matches("tfc-agent: serving on").count(), 2, "{log}");
}

fn set_network(interface: &str, cidr: &str, gateway: Option<&str>, dns: &[&str]) -> Request {
    Request::SetNetwork {
        interface: interface.into(),
        address_cidr: cidr.into(),
        gateway: gateway.map(String::from),
        nameservers: dns.iter().map(|s| s.to_string()).collect(),
    }
}

fn init_set_network_readdresses_an_interface() {
    let agent = NsAgent::start("");
    // An eth0 for the namespace, and a resolv.conf of the test's own bound
    // over the host's (in the namespace only).
    let resolv = agent.dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 192.0.2.99\n").unwrap();
    let script = format!(
        "ip link add eth0 type veth peer name peer0 && ip link set peer0 up && \
         mount --bind {} /etc/resolv.conf",
        resolv.display()
    );
    assert_eq!(agent.sh(&script).1, Some(0), "{}", agent.log());

    let mut client = agent.connect();
    let request = set_network(
        "eth0",
        "10.123.0.2/24",
        Some("10.123.0.1"),
        &["10.123.0.53", "2001:db8::53"],
    );
    assert_eq!(client.request(1, request), Reply::Done);
    let (addresses, _) = agent.sh("ip -4 -o addr show dev eth0");
    assert!(addresses.contains("inet 10.123.0.2/24"), "{addresses}");
    let (routes, _) = agent.sh("ip -4 route show default");
    assert!(
        routes.contains("default via 10.123.0.1 dev eth0"),
        "{routes}"
    );
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        "# written by tfc-agent\nnameserver 10.123.0.53\nnameserver 2001:db8::53\n"
    );

    // A clone's new identity: the old address and its routes are gone.
    let request = set_network("eth0", "10.77.3.9/16", Some("10.77.0.1"), &[]);
    assert_eq!(client.request(2, request), Reply::Done);
    let (addresses, _) = agent.sh("ip -4 -o addr show dev eth0");
    assert!(addresses.contains("inet 10.77.3.9/16"), "{addresses}");
    assert!(!addresses.contains("10.123.0.2"), "{addresses}");
    let (routes, _) = agent.sh("ip -4 route show");
    assert!(
        routes.contains("default via 10.77.0.1 dev eth0"),
        "{routes}"
    );
    assert!(!routes.contains("10.123."), "{routes}");
    assert!(
        std::fs::read_to_string(&resolv)
            .unwrap()
            .contains("10.123.0.53"),
        "resolv.conf is left alone without name servers"
    );

    // A read-only /etc (a shared image): the name servers go to /run and
    // are mounted over /etc/resolv.conf.
    let host_resolv = std::fs::read("/etc/resolv.conf").unwrap();
    assert_eq!(
        agent.sh("mount -o remount,bind,ro /etc/resolv.conf").1,
        Some(0)
    );
    let request = set_network("eth0", "10.77.3.9/16", Some("10.77.0.1"), &["10.77.0.53"]);
    assert_eq!(client.request(6, request), Reply::Done);
    let written = "# written by tfc-agent\nnameserver 10.77.0.53\n";
    assert_eq!(agent.sh("cat /etc/resolv.conf").0, written);
    assert_eq!(agent.sh("cat /run/tfc/resolv.conf").0, written);
    assert!(std::fs::read_to_string(&resolv)
        .unwrap()
        .contains("10.123.0.53"));
    assert_eq!(std::fs::read("/etc/resolv.conf").unwrap(), host_resolv);

    // Mistakes are told apart.
    let reply = client.request(3, set_network("nope0", "10.0.0.2/24", None, &[]));
    expect_error(reply, ErrorCode::NotFound);
    let reply = client.request(4, set_network("eth0", "10.0.0.2", None, &[]));
    expect_error(reply, ErrorCode::BadRequest);
    let reply = client.request(
        5,
        set_network("eth0", "10.0.0.2/24", Some("192.0.2.1"), &[]),
    );
    let message = expect_error(reply, ErrorCode::Io);
    assert!(message.contains("default route via 192.0.2.1"), "{message}");

    // The host's own network never saw any of it.
    let host = Command::new("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&host.stdout);
    assert!(
        !host.contains("10.77.3.9") && !host.contains("10.123.0.2"),
        "{host}"
    );
}

fn pid_namespace_of(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

fn init_shutdown_ends_the_namespace() {
    let mounts_before = mounts_at_agent_targets();
    let mut agent = NsAgent::start("");
    let (namespace, _) = agent.sh("readlink /proc/self/ns/pid");
    let namespace = PathBuf::from(namespace.trim());
    // Never ask for a power-off unless the agent is in a PID namespace of
    // its own: there reboot() ends the namespace, not the machine.
    let own = pid_namespace_of(std::process::id()).unwrap();
    assert_ne!(namespace, own, "the agent shares the test's PID namespace");
    let init = agent.init_host_pid().unwrap();
    assert_eq!(pid_namespace_of(init), Some(namespace.clone()));

    // A command still running when the shutdown comes.
    let mut busy = agent.connect();
    busy.send(1, exec(&["sleep", "30"]));
    assert!(matches!(busy.recv_reply(1), Reply::ExecStarted { .. }));

    let mut client = agent.connect();
    assert_eq!(client.request(7, Request::Shutdown), Reply::Done);
    let status = agent
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the namespace did not end:\n{}", agent.log()));
    // The kernel ends a PID namespace rebooted with RB_POWER_OFF by killing
    // its init "with SIGINT" (reboot(2)), and unshare passes that on.
    assert_eq!(
        status.signal(),
        Some(libc::SIGINT),
        "{status:?}\n{}",
        agent.log()
    );
    assert!(agent.log().contains("powering off"), "{}", agent.log());
    // The connection ended after the answer.
    assert!(matches!(client.reader.read_frame(), Ok(None) | Err(_)));

    // No process of the namespace is left on the host.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .filter(|pid| pid_namespace_of(*pid).as_ref() == Some(&namespace))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes left: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(mounts_at_agent_targets(), mounts_before);
}

// ---------------------------------------------------------------------
// vsock.

fn vsock_loopback_serves_like_a_unix_socket() {
    use tfc_agent_proto::nonblocking::{AsyncFrameReader, AsyncFrameWriter};
    use tfc_agent_proto::{DataKind, Frame};

    // A port unlikely to be in use; on a clash the agent fails to bind and
    // the test says so.
    let port = 40_000 + std::process::id() % 20_000;
    let mut agent = Command::new(AGENT)
        .args(["--vsock", &port.to_string(), "--vsock-cid", "1"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let agent = Kill(&mut agent);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match tfc_agent::vsock::VsockStream::connect(tfc_agent::vsock::CID_LOCAL, port).await {
                Ok(stream) => break stream,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "no agent on vsock port {port}: {e}"
                    );
                    assert!(
                        agent.0.try_wait().unwrap().is_none(),
                        "the agent exited (port {port} taken?)"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let (read, write) = tokio::io::split(stream);
        let (mut reader, mut writer) = (AsyncFrameReader::new(read), AsyncFrameWriter::new(write));
        writer
            .write_frame(&Frame::request(1, Request::Ping))
            .await
            .unwrap();
        let pong = reader.read_frame().await.unwrap().unwrap();
        assert!(
            matches!(pong.body, FrameBody::Reply(Reply::Pong { .. })),
            "{pong:?}"
        );
        writer
            .write_frame(&Frame::request(2, exec(&["echo", "over vsock"])))
            .await
            .unwrap();
        let mut stdout = Vec::new();
        loop {
            let frame = reader.read_frame().await.unwrap().unwrap();
            match frame.body {
                FrameBody::Data {
                    kind: DataKind::Stdout,
                    bytes,
                } => stdout.extend(bytes),
                FrameBody::Reply(Reply::Exit { code, .. }) => {
                    assert_eq!(code, Some(0));
                    break;
                }
                _ => {}
            }
        }
        assert_eq!(stdout, b"over vsock\n");
    });
}

// ---------------------------------------------------------------------
// The runner.

struct Case {
    name: &'static str,
    needs: Needs,
    run: fn(),
}

const CASES: &[Case] = &[
    Case {
        name: "init_mounts_its_filesystems_in_its_namespace_only",
        needs: Needs::Namespaces,
        run: init_mounts_its_filesystems_in_its_namespace_only,
    },
    Case {
        name: "init_reaps_orphans_without_taking_exec_statuses",
        needs: Needs::Namespaces,
        run: init_reaps_orphans_without_taking_exec_statuses,
    },
    Case {
        name: "init_restarts_a_dead_agent",
        needs: Needs::Namespaces,
        run: init_restarts_a_dead_agent,
    },
    Case {
        name: "init_set_network_readdresses_an_interface",
        needs: Needs::NamespacesAndIp,
        run: init_set_network_readdresses_an_interface,
    },
    Case {
        name: "init_shutdown_ends_the_namespace",
        needs: Needs::Namespaces,
        run: init_shutdown_ends_the_namespace,
    },
    Case {
        name: "vsock_loopback_serves_like_a_unix_socket",
        needs: Needs::VsockLoopback,
        run: vsock_loopback_serves_like_a_unix_socket,
    },
];

/// libtest's flags that take a value as the next argument.
const VALUE_FLAGS: &[&str] = &[
    "--test-threads",
    "--color",
    "--format",
    "--logfile",
    "--skip",
    "-Z",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let (mut only_ignored, mut list, mut exact) = (false, false, false);
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "--ignored" => only_ignored = true,
            "--list" => list = true,
            "--exact" => exact = true,
            "--skip" => skips.extend(words.next().cloned()),
            flag if VALUE_FLAGS.contains(&flag) => {
                words.next();
            }
            flag if flag.starts_with('-') => {}
            filter => filters.push(filter.to_owned()),
        }
    }
    let matches = |name: &str, pattern: &String| {
        if exact {
            name == pattern
        } else {
            name.contains(pattern.as_str())
        }
    };
    let selected: Vec<&Case> = CASES
        .iter()
        .filter(|case| filters.is_empty() || filters.iter().any(|f| matches(case.name, f)))
        .filter(|case| !skips.iter().any(|s| matches(case.name, s)))
        .filter(|_| !only_ignored)
        .collect();
    let filtered_out = CASES.len() - selected.len();
    if list {
        for case in &selected {
            println!("{}: test", case.name);
        }
        return ExitCode::SUCCESS;
    }

    let started = Instant::now();
    println!("\nrunning {} tests", selected.len());
    let (mut passed, mut failed, mut ignored) = (Vec::new(), Vec::new(), Vec::new());
    for case in selected {
        if let Some(reason) = unmet(case.needs) {
            println!("test {} ... ignored, {reason}", case.name);
            ignored.push((case.name, reason));
            continue;
        }
        print!("test {} ... ", case.name);
        let _ = std::io::stdout().flush();
        match std::panic::catch_unwind(case.run) {
            Ok(()) => {
                println!("ok");
                passed.push(case.name);
            }
            Err(_) => {
                println!("FAILED");
                failed.push(case.name);
            }
        }
    }
    if !ignored.is_empty() {
        println!();
        println!("!! NOT RUN on this host (reported as ignored, not passed):");
        for (name, reason) in &ignored {
            println!("!!   {name}: {reason}");
        }
    }
    if !failed.is_empty() {
        println!("\nfailures:");
        for name in &failed {
            println!("    {name}");
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed; {} ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        passed.len(),
        failed.len(),
        ignored.len(),
        filtered_out,
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
