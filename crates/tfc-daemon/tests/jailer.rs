//! Tier 1: the daemon running the real `firecracker` under the real jailer.
//! One guest boots (~25 s on a nested-KVM host); its snapshot is restored
//! (milliseconds). Each jailed VMM is checked from the host: its uid/gid (one
//! of its own per VM), its root (the chroot), its cgroups and their limits,
//! seccomp on every thread, its PID namespace; after delete, and after the
//! start-up reaper, nothing is left: no process, chroot, cgroup or taken id.
//!
//! Needs root, KVM and built assets: `#[ignore]`d like every tier-1 test; a
//! run without root says NOT RUN and does not pass silently. The network
//! lane works only inside namespaces it creates.

mod common;
#[path = "../../tfc-net/tests/common/mod.rs"]
mod net;

use common::tier1::alive;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use tfc_daemon::config::{Config, ShutdownPolicy};
use tfc_daemon::manager::VmManager;

/// The jailed VMMs' ids (`firecracker.jail_ids`): unprivileged ids no
/// account uses here, so a check of them cannot pass by accident.
const IDS_START: u32 = 64_321;
const IDS_COUNT: u32 = 8;

struct Daemon {
    app: axum::Router,
    backend: tfc_daemon::backend::Backend,
    manager: VmManager,
    dir: tempfile::TempDir,
    /// This run's own parent cgroup, so concurrent runs never meet.
    parent_cgroup: String,
    /// The configuration text, for a restart.
    config: String,
}

/// A manager on `dir` with a SQLite store, recovered (adopting the VMMs of
/// its records) and with its networks reconciled, and the jails reaped, as
/// `tfc serve` starts. Returns the jailed VMMs the reaper ended.
async fn start(
    config: &str,
    dir: &Path,
    network: bool,
) -> (tfc_daemon::backend::Backend, VmManager, Vec<u32>) {
    let config = Config::parse(config, "jailer test").unwrap();
    let backend = tfc_daemon::build_backend(&config, dir).unwrap();
    let store = tfc_store::AnyStore::open(tfc_store::StoreKind::Sqlite, dir).unwrap();
    let manager = VmManager::new(backend.clone(), config, dir.to_owned(), store);
    if network {
        manager.enable_network().unwrap();
    }
    let recorded = manager.recover().await.unwrap();
    if network {
        manager.reconcile_network().await.unwrap();
    }
    let killed = backend.jailed_firecracker().unwrap().reap_jails(&recorded);
    (backend, manager, killed)
}

/// A daemon running its VMMs jailed; `extra` is appended to its
/// configuration (after the default VM type's keys).
async fn daemon(new_pid_ns: bool, network: Option<&net::TestNet>, extra: &str) -> Daemon {
    let manifest = common::tier1::assets();
    let dir = tempfile::tempdir().unwrap();
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let parent_cgroup = format!(
        "tfc-test-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let network_section = network.map_or_else(String::new, |t| {
        format!(
            "[network]\nenabled = true\nprefix = \"{}\"\nhost_netns = \"{}\"\nready_slots = 0\n",
            t.prefix,
            t.host_ns_name()
        )
    });
    let config = format!(
        "[firecracker]\nbinary = {:?}\nboot_timeout_secs = 240\nstop_grace_ms = 1000\n\
         jailer = true\njailer_binary = {:?}\njail_ids = \"{IDS_START}:{IDS_COUNT}\"\n\
         parent_cgroup = {parent_cgroup:?}\nnew_pid_ns = {new_pid_ns}\n{network_section}\
         [vm_types.default]\nkernel = {:?}\nrootfs = {:?}\nboot_args = {:?}\n{extra}",
        manifest.firecracker.path,
        manifest.jailer.path,
        manifest.kernel.vmlinux,
        manifest.rootfs.path,
        manifest.boot_args,
    );
    let (backend, manager, killed) = start(&config, dir.path(), network.is_some()).await;
    assert_eq!(killed, Vec::<u32>::new());
    Daemon {
        app: tfc_daemon::api::router(manager.clone()),
        backend,
        manager,
        dir,
        parent_cgroup,
        config,
    }
}

/// The jailer needs root; without it the lane cannot run, and says so.
fn root_or_not_run(test: &str) -> bool {
    // SAFETY: geteuid only reads this process's credentials.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("TFC_REQUIRE_TIER1").as_deref() == Ok("1") {
        panic!("{test}: the jailer lane is required (TFC_REQUIRE_TIER1=1) but needs root");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n!! {test}: jailer lane NOT RUN (this is not a pass): the jailer needs root\n"
    );
    false
}

impl Daemon {
    /// This daemon leaves its VMs running and a new one starts on its
    /// directory, as after an upgrade; returns the VMMs the new one's
    /// reaper ended.
    /// `between` runs while no daemon runs.
    async fn restart(&mut self, between: impl FnOnce()) -> Vec<u32> {
        self.manager.shutdown(ShutdownPolicy::LeaveRunning).await;
        between();
        let (backend, manager, killed) = start(&self.config, self.dir.path(), false).await;
        self.app = tfc_daemon::api::router(manager.clone());
        self.backend = backend;
        self.manager = manager;
        killed
    }

    async fn send(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        common::send(&self.app, method, uri, body.as_deref()).await
    }

    fn jail_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join("jail/firecracker").join(id)
    }

    /// The VM's cgroup in the controllers the jailer limits (v1 here).
    fn cgroups(&self, id: &str) -> Vec<PathBuf> {
        ["memory", "cpu"]
            .iter()
            .map(|c| {
                Path::new("/sys/fs/cgroup")
                    .join(c)
                    .join(&self.parent_cgroup)
                    .join(id)
            })
            .collect()
    }

    /// How many jail ids the daemon holds taken.
    fn ids_taken(&self) -> usize {
        let fc = self.backend.jailed_firecracker().unwrap();
        fc.jail_ids().unwrap().taken()
    }

    /// Checks everything the jailer promises about the VMM of `vm`;
    /// returns the id it runs as.
    fn check_jailed(&self, vm: &Value, new_pid_ns: bool) -> u32 {
        let id = vm["id"].as_str().unwrap();
        let pid = vm["pid"].as_u64().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| -> Vec<String> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        let uid: u32 = field("Uid")[0].parse().unwrap();
        assert!(
            (IDS_START..IDS_START + IDS_COUNT).contains(&uid),
            "{id}: uid {uid} is not one of jail_ids"
        );
        assert_eq!(field("Uid"), vec![uid.to_string(); 4], "{id}: uid");
        assert_eq!(field("Gid"), vec![uid.to_string(); 4], "{id}: gid = uid");

        let root = self.jail_dir(id).join("root");
        let jail = std::fs::metadata(&root).unwrap();
        assert_eq!((jail.uid(), jail.gid()), (uid, uid), "{id}: chroot owner");
        let seen = std::fs::metadata(format!("/proc/{pid}/root")).unwrap();
        assert_eq!(
            (seen.dev(), seen.ino()),
            (jail.dev(), jail.ino()),
            "{id}: the VMM's root is not {}",
            root.display()
        );

        // Firecracker filters each of its threads (VMM, API, vCPUs) itself.
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let task = task.unwrap().path();
            let status = std::fs::read_to_string(task.join("status")).unwrap();
            let name = std::fs::read_to_string(task.join("comm")).unwrap();
            assert!(
                status.lines().any(|l| l == "Seccomp:\t2"),
                "{id}: thread {} ({}) runs without a seccomp filter",
                task.display(),
                name.trim()
            );
        }

        let nspid = field("NSpid");
        let own_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
        let vmm_ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
        if new_pid_ns {
            assert_eq!(nspid, [pid.to_string(), "1".to_owned()], "{id}: NSpid");
            assert_ne!(own_ns, vmm_ns, "{id}: not in a PID namespace of its own");
        } else {
            assert_eq!(nspid, [pid.to_string()], "{id}: NSpid");
            assert_eq!(own_ns, vmm_ns);
        }

        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let own = format!("/{}/{id}", self.parent_cgroup);
        for controller in ["memory", "cpu"] {
            assert!(
                cgroup.lines().any(|l| {
                    let mut parts = l.splitn(3, ':');
                    let (_, names, path) = (parts.next(), parts.next(), parts.next());
                    names.is_some_and(|n| n.split(',').any(|n| n == controller))
                        && path == Some(own.as_str())
                }),
                "{id}: not in its {controller} cgroup {own}:\n{cgroup}"
            );
        }
        let [memory, cpu] = &self.cgroups(id)[..] else {
            unreachable!()
        };
        let read = |path: PathBuf| std::fs::read_to_string(path).unwrap().trim().to_owned();
        // 128 MiB of guest memory plus the VMM's 128 MiB allowance.
        assert_eq!(
            read(memory.join("memory.limit_in_bytes")),
            (256u64 << 20).to_string()
        );
        // One vCPU plus one core for the VMM's threads.
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "200000");
        assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
        uid
    }

    /// Nothing of VM `id` is left: no process in its jail, no jail, no cgroup.
    fn check_gone(&self, id: &str, pid: u64) {
        assert!(!alive(pid), "{id}: VMM {pid} survived");
        assert!(
            !self.jail_dir(id).exists(),
            "{id}: jail {} left",
            self.jail_dir(id).display()
        );
        for cgroup in self.cgroups(id) {
            assert!(!cgroup.exists(), "{id}: cgroup {} left", cgroup.display());
        }
    }

    async fn delete(&self, vm: &Value) {
        let id = vm["id"].as_str().unwrap();
        let (status, body) = self
            .send(Method::DELETE, &format!("/v1/vms/{id}?force=true"), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        self.check_gone(id, vm["pid"].as_u64().unwrap());
        assert!(!Path::new(vm["workdir"].as_str().unwrap()).exists());
    }
}

impl Drop for Daemon {
    /// The parent cgroups the jailer made for this run (empty by now when
    /// the test passed; a failed run's VMs are killed with their handles).
    fn drop(&mut self) {
        for controller in ["memory", "cpu"] {
            let dir = Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(&self.parent_cgroup);
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tier 1: needs root, KVM, firecracker, jailer and built assets; run by the project's test command"]
async fn jailed_vms_boot_snapshot_restore_and_leave_nothing_behind() {
    if !root_or_not_run("jailed_vms_boot_snapshot_restore_and_leave_nothing_behind") {
        return;
    }
    let mut d = daemon(true, None, "").await;

    // A cold boot under the jailer.
    let (status, vm) = d
        .send(Method::POST, "/v1/vms", Some(json!({"wait": true})))
        .await;
    assert_eq!(
        (status, vm["state"].as_str()),
        (StatusCode::CREATED, Some("ready")),
        "{vm}"
    );
    let id = vm["id"].as_str().unwrap().to_owned();
    let vm_uid = d.check_jailed(&vm, true);
    assert_eq!(d.ids_taken(), 1);
    // The root image is shared by hard link, not copied, and left as it was.
    let rootfs = common::tier1::assets().rootfs.path;
    let linked = std::fs::metadata(d.jail_dir(&id).join("root/rootfs.ext4")).unwrap();
    let original = std::fs::metadata(&rootfs).unwrap();
    assert_eq!(linked.ino(), original.ino());
    assert_eq!(original.mode() & 0o777, 0o644);

    // A snapshot: written in the jail, moved to the catalog, owned by the daemon.
    let (status, snapshot) = d
        .send(
            Method::POST,
            &format!("/v1/vms/{id}/snapshots"),
            Some(json!({"name": "jailed"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{snapshot}");
    let snapshot_dir = PathBuf::from(snapshot["dir"].as_str().unwrap());
    let memory = std::fs::metadata(snapshot_dir.join("memory")).unwrap();
    assert_eq!(memory.len(), 128 << 20);
    assert_eq!((memory.uid(), memory.gid()), (0, 0));
    assert!(!d.jail_dir(&id).join("root/snapshot.mem").exists());

    // Two clones restored from it at once (as a pool's refills do), each
    // into a jail of its own; the snapshot's files are unlinked from the
    // jail once loaded. The first is kept; the second is left to the
    // start-up reaper below, as if its daemon had died without a record.
    let restore = || {
        d.send(
            Method::POST,
            "/v1/vms",
            Some(json!({"from_snapshot": snapshot["id"]})),
        )
    };
    let ((status, clone), (orphan_status, orphan)) = tokio::join!(restore(), restore());
    // Both jails read the snapshot's files, which keep their owner and
    // group: one jail's group would have locked the other out.
    let memory = std::fs::metadata(snapshot_dir.join("memory")).unwrap();
    assert_eq!((memory.uid(), memory.gid()), (0, 0));
    assert_eq!(memory.mode() & 0o022, 0, "nobody may write the snapshot");
    assert_eq!(
        (status, clone["state"].as_str()),
        (StatusCode::CREATED, Some("ready")),
        "{clone}"
    );
    let clone_id = clone["id"].as_str().unwrap().to_owned();
    // Each VMM runs as a user of its own: no jailed VMM can signal or
    // trace another.
    let clone_uid = d.check_jailed(&clone, true);
    assert_ne!(clone_uid, vm_uid);
    assert_eq!(d.ids_taken(), 3, "the VM and both clones");
    assert!(!d.jail_dir(&clone_id).join("root/snapshot.mem").exists());

    // The second clone, left to the start-up reaper: its VMM is ended and
    // its jail removed.
    assert_eq!(
        (orphan_status, orphan["state"].as_str()),
        (StatusCode::CREATED, Some("ready")),
        "{orphan}"
    );
    let orphan_id = orphan["id"].as_str().unwrap().to_owned();
    let orphan_pid = orphan["pid"].as_u64().unwrap();
    let orphan_uid = d.check_jailed(&orphan, true);
    assert!(orphan_uid != vm_uid && orphan_uid != clone_uid);
    let recorded = HashSet::from([id.clone(), clone_id.clone()]);
    let fc = d.backend.jailed_firecracker().unwrap();
    let killed = fc.reap_jails(&recorded);
    assert_eq!(killed, [orphan_pid as u32]);
    d.check_gone(&orphan_id, orphan_pid);
    assert!(alive(vm["pid"].as_u64().unwrap()) && alive(clone["pid"].as_u64().unwrap()));
    let (status, body) = d
        .send(
            Method::DELETE,
            &format!("/v1/vms/{orphan_id}?force=true"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    // Its id is free again once its VM is deleted.
    assert_eq!(d.ids_taken(), 2);

    // A restarted daemon adopts the jailed VMMs it has records of; its
    // reaper leaves their jails alone. One VMM, stopped (SIGSTOP) while no
    // daemon ran, does not answer: it is ended with its VM, and its jail
    // removed.
    let clone_pid = clone["pid"].as_u64().unwrap();
    let killed = d
        .restart(|| {
            // SAFETY: kill only sends a signal to the clone's VMM, which runs
            // (checked above) and which the test owns.
            assert_eq!(unsafe { libc::kill(clone_pid as i32, libc::SIGSTOP) }, 0);
        })
        .await;
    assert_eq!(killed, Vec::<u32>::new());
    let (status, now) = d.send(Method::GET, &format!("/v1/vms/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{now}");
    assert!(
        matches!(now["state"].as_str(), Some("ready" | "running")),
        "{now}"
    );
    assert_eq!(now["pid"], vm["pid"], "{now}");
    assert_eq!(d.check_jailed(&now, true), vm_uid);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let failed = loop {
        let (_, now) = d
            .send(Method::GET, &format!("/v1/vms/{clone_id}"), None)
            .await;
        if now["state"] == "failed" {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the unanswering clone never failed: {now}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        failed["failure"]
            .to_string()
            .contains("did not survive the daemon restart"),
        "{failed}"
    );
    d.check_gone(&clone_id, clone_pid);
    // The adopted VM's id is marked taken; the failed clone's is not.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while d.ids_taken() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "ids taken after the restart: {} (expected the adopted VM's alone)",
            d.ids_taken()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // A VM restored by the new daemon never gets the adopted VM's id (the
    // new daemon's pool starts its search at the range's first id, which
    // the first VM took).
    let (status, late) = d
        .send(
            Method::POST,
            "/v1/vms",
            Some(json!({"from_snapshot": snapshot["id"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{late}");
    assert_eq!(vm_uid, IDS_START);
    assert_ne!(d.check_jailed(&late, true), vm_uid);
    assert_eq!(d.ids_taken(), 2);
    d.delete(&late).await;

    d.delete(&clone).await;
    d.delete(&vm).await;
    assert_eq!(d.ids_taken(), 0);
    // The jailed VMMs wrote their own counters (through a link in the jail)
    // and their last flush outlived the jail: the booted guest's console
    // wrote to the serial port.
    let text = tfc_daemon::metrics::render(&d.manager);
    let io_out: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("tfc_firecracker_vcpu_exit_io_out_total{vm_type=\"default\"} ")
        })
        .unwrap_or_else(|| panic!("no port-I/O exits in:\n{text}"))
        .parse()
        .unwrap();
    assert!(io_out > 0.0, "{text}");
    let left: Vec<_> = std::fs::read_dir(d.dir.path().join("jail/firecracker"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "jails left: {left:?}");
}

/// The jailer enters the VM's network namespace itself (`--netns`): the
/// VMM opens its tap through the jail's own `/dev/net/tun`, and the guest
/// kernel (configured by the `ip=` boot argument) answers at its address.
/// This VMM runs without a PID namespace of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tier 1: needs root, KVM, firecracker, jailer, built assets, ip and nft; run by the project's test command"]
async fn jailed_vm_runs_in_its_network_namespace_without_a_pid_namespace() {
    let test = "jailed_vm_runs_in_its_network_namespace_without_a_pid_namespace";
    if !root_or_not_run(test) || !net::lane(test) {
        return;
    }
    let t = net::TestNet::new();
    let before = t.inventory();
    let d = daemon(false, Some(&t), "network = \"isolated\"\n").await;

    let (status, vm) = d
        .send(Method::POST, "/v1/vms", Some(json!({"wait": true})))
        .await;
    assert_eq!(
        (status, vm["state"].as_str()),
        (StatusCode::CREATED, Some("ready")),
        "{vm}"
    );
    d.check_jailed(&vm, false);
    assert_eq!(d.ids_taken(), 1);
    let pid = vm["pid"].as_u64().unwrap();
    let ns = format!(
        "/run/netns/{}",
        vm["network"]["namespace"].as_str().unwrap()
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .to_string_lossy(),
        format!("net:[{}]", std::fs::metadata(&ns).unwrap().ino()),
        "the jailed VMM runs in the VM's namespace"
    );
    let address: std::net::Ipv4Addr = vm["network"]["address"].as_str().unwrap().parse().unwrap();
    net::ping(&t.host_ns, address, std::time::Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("the jailed guest kernel answers at {address}: {e}"));

    d.delete(&vm).await;
    assert_eq!(d.ids_taken(), 0);
    // The daemon's own network objects go with it.
    d.manager.shutdown(ShutdownPolicy::Stop).await;
    assert_eq!(t.inventory(), before);
}

/// The backend of a daemon on `dir` whose `[firecracker]` table names
/// `firecracker` and holds `keys`; an error as its whole chain.
fn firecracker_backend(
    firecracker: &Path,
    keys: &str,
    dir: &Path,
) -> Result<tfc_daemon::backend::Backend, String> {
    let config = format!("[firecracker]\nbinary = {firecracker:?}\n{keys}");
    let config = Config::parse(&config, "jailer test").unwrap();
    tfc_daemon::build_backend(&config, dir).map_err(|err| tfc_core::error_chain(&err))
}

/// Unset, `firecracker.jailer` is "auto": a daemon running as root that
/// finds the jailer runs every VMM under it; `false` turns it off; "auto"
/// with no jailer anywhere runs VMMs unconfined (and logs so), while a
/// `jailer_binary` named but missing stops the daemon.
#[test]
#[ignore = "tier 1: needs root and the built firecracker; run by the project's test command"]
fn a_root_daemon_jails_its_vmms_by_default() {
    if !root_or_not_run("a_root_daemon_jails_its_vmms_by_default") {
        return;
    }
    let manifest = common::tier1::assets();
    let dir = tempfile::tempdir().unwrap();
    let backend = |keys: &str| firecracker_backend(&manifest.firecracker.path, keys, dir.path());
    let jailer = format!("jailer_binary = {:?}\n", manifest.jailer.path);
    let jailed = |keys: &str| backend(keys).unwrap().jailed_firecracker().is_some();
    assert!(jailed(&jailer), "unset: jailed");
    assert!(jailed(&format!("jailer = \"auto\"\n{jailer}")));
    assert!(jailed(&format!("jailer = true\n{jailer}")));
    assert!(!jailed(&format!("jailer = false\n{jailer}")));
    // The data directory has no assets: without a jailer on PATH, "auto"
    // finds none.
    if tfc_host::find_on_path("jailer").is_none() {
        assert!(!jailed(""), "no jailer anywhere: unconfined");
        let err = backend("jailer_binary = \"/nonexistent/jailer\"\n").unwrap_err();
        assert!(err.contains("/nonexistent/jailer"), "{err}");
    }
}

/// A jailer configuration this host cannot honour stops the daemon at
/// start, with an error that says what to do: no jailer binary, or a
/// firecracker binary the jailer would refuse to run (its name).
#[test]
#[ignore = "tier 1: needs root and the built firecracker; run by the project's test command"]
fn jailer_settings_the_host_cannot_honour_stop_the_daemon_at_start() {
    if !root_or_not_run("jailer_settings_the_host_cannot_honour_stop_the_daemon_at_start") {
        return;
    }
    let manifest = common::tier1::assets();
    let dir = tempfile::tempdir().unwrap();
    let start = |firecracker: &Path, jailer: &Path| {
        let keys = format!("jailer = true\njailer_binary = {jailer:?}\n");
        firecracker_backend(firecracker, &keys, dir.path()).unwrap_err()
    };
    // Named in the configuration but absent. (PATH may hold a jailer, which
    // the daemon would then use: only checked when it holds none.)
    if tfc_host::find_on_path("jailer").is_none() {
        let err = start(&manifest.firecracker.path, Path::new("/nonexistent/jailer"));
        assert!(
            err.contains("firecracker.jailer_binary = /nonexistent/jailer")
                && err.contains("set firecracker.jailer_binary"),
            "{err}"
        );
    }
    let renamed = dir.path().join("vmm");
    std::fs::copy(&manifest.firecracker.path, &renamed).unwrap();
    let err = start(&renamed, &manifest.jailer.path);
    assert!(
        err.contains("whose name contains \"firecracker\"") && err.contains("rename the binary"),
        "{err}"
    );
    assert!(!dir.path().join("jail/firecracker").exists());
}
