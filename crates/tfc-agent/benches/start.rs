//! How long the agent takes from being started to answering a `ping`.
//!
//! ```sh
//! cargo bench -p tfc-agent --bench start
//! TFC_AGENT_BIN=target/x86_64-unknown-linux-musl/release/tfc-agent TFC_BENCH_RUNS=50 \
//!     cargo bench -p tfc-agent --bench start      # the static guest build
//! ```
//!
//! Each sample runs from just before the spawn until the pong is read,
//! polling the socket every 100 µs. Measured in the same run, for scale:
//! spawning `/bin/true` and waiting for it (the cost of any process), and
//! `unshare ... /bin/true` (the cost of the namespaces alone). The init
//! mode (PID 1 of new PID, mount, UTS and network namespaces: mounts,
//! hostname, `lo`, the fork of the agent) needs root and `unshare`; without
//! them it prints that it did not run.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tfc_agent_proto::{Frame, FrameBody, FrameReader, FrameWriter, Reply, Request};

const NAMESPACES: [&str; 8] = [
    "--pid",
    "--fork",
    "--kill-child",
    "--mount",
    "--uts",
    "--net",
    "--propagation",
    "private",
];

fn ping(socket: &Path) -> bool {
    let Ok(stream) = UnixStream::connect(socket) else {
        return false;
    };
    let Ok(read) = stream.try_clone() else {
        return false;
    };
    let mut writer = FrameWriter::new(stream);
    let mut reader = FrameReader::new(read);
    if writer
        .write_frame(&Frame::request(1, Request::Ping))
        .is_err()
    {
        return false;
    }
    matches!(
        reader.read_frame(),
        Ok(Some(Frame {
            body: FrameBody::Reply(Reply::Pong { .. }),
            ..
        }))
    )
}

/// Spawns `command`, waits for a pong on `socket`; the time it took.
fn time_to_pong(mut command: Command, socket: &Path) -> Duration {
    let _ = std::fs::remove_file(socket);
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning the agent");
    let deadline = started + Duration::from_secs(10);
    while !ping(socket) {
        assert!(Instant::now() < deadline, "the agent never answered");
        std::thread::sleep(Duration::from_micros(100));
    }
    let took = started.elapsed();
    stop(&mut child);
    took
}

/// Ends `child`; under `unshare --kill-child`, through the namespace's init.
fn stop(child: &mut Child) {
    let pid = child.id();
    let init = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()
        .and_then(|text| text.trim().parse::<libc::pid_t>().ok());
    match init {
        // SAFETY: kill has no memory effects; `init` is unshare's unreaped child.
        Some(init) => unsafe {
            libc::kill(init, libc::SIGKILL);
        },
        None => {
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}

fn time_to_exit(mut command: Command) -> Duration {
    let started = Instant::now();
    let status = command.status().expect("spawning");
    assert!(status.success());
    started.elapsed()
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Prints min / median / max; returns (min, median).
fn summary(name: &str, mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let median = samples[samples.len() / 2];
    println!(
        "{name:<44} min {:>7.2} ms   median {:>7.2} ms   max {:>7.2} ms   (n={})",
        ms(samples[0]),
        ms(median),
        ms(*samples.last().unwrap()),
        samples.len()
    );
    (samples[0], median)
}

/// How much `of` adds to `over`, by min and by median (the machine may be
/// busy: the min is the steadier figure).
fn share(name: &str, of: (Duration, Duration), over: (Duration, Duration)) {
    println!(
        "  {name:<42} min {:>7.2} ms   median {:>7.2} ms",
        ms(of.0.saturating_sub(over.0)),
        ms(of.1.saturating_sub(over.1))
    );
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let binary = std::env::var_os("TFC_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tfc-agent")));
    let runs: usize = std::env::var("TFC_BENCH_RUNS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::Builder::new()
        .prefix("start-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let socket = dir.path().join("agent.sock");
    let cmdline = dir.path().join("cmdline");
    std::fs::write(&cmdline, "tfc.hostname=bench\n").unwrap();
    println!(
        "agent: {} ({} bytes)",
        binary.display(),
        std::fs::metadata(&binary).map(|m| m.len()).unwrap_or(0)
    );

    let floor = summary(
        "spawn /bin/true and wait",
        (0..runs)
            .map(|_| time_to_exit(Command::new("/bin/true")))
            .collect(),
    );
    let plain = summary(
        "agent --unix: spawn to pong",
        (0..runs)
            .map(|_| {
                let mut command = Command::new(&binary);
                command.arg("--unix").arg(&socket);
                time_to_pong(command, &socket)
            })
            .collect(),
    );
    share("the agent's share over /bin/true", plain, floor);

    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let unshare = Command::new("unshare")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !(root && unshare) {
        println!("!! init mode NOT MEASURED: it needs root and unshare (util-linux)");
        return;
    }
    let ns_floor = summary(
        "unshare (namespaces) /bin/true",
        (0..runs)
            .map(|_| {
                let mut command = Command::new("unshare");
                command.args(NAMESPACES).arg("/bin/true");
                time_to_exit(command)
            })
            .collect(),
    );
    let init = summary(
        "agent as PID 1 in namespaces: spawn to pong",
        (0..runs)
            .map(|_| {
                let mut command = Command::new("unshare");
                command
                    .args(NAMESPACES)
                    .arg(&binary)
                    .arg("--unix")
                    .arg(&socket)
                    .arg("--cmdline")
                    .arg(&cmdline);
                time_to_pong(command, &socket)
            })
            .collect(),
    );
    share("init's and the agent's share over unshare", init, ns_floor);
}
