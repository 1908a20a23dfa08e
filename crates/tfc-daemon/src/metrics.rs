//! The daemon's Prometheus metrics, served at `GET /metrics` in the text
//! exposition format.
//!
//! Two kinds of figures:
//! - events counted as they happen, kept here: API requests, VM start phases,
//!   pool acquires, and Firecracker's own per-VM counters;
//! - state read at scrape time from their owners: VMs per state, pool sizes
//!   and counters, active alerts, the store and the data directory.
//!
//! Firecracker writes its counters as one JSON object per flush (every 60 s,
//! and when the daemon stops a VM), each value the change since the flush
//! before; the daemon reads each VM's file from where it left off and sums.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Firecracker's metrics file, in each Firecracker VM's directory.
pub const FIRECRACKER_METRICS_FILE: &str = "metrics.json";

/// Latency buckets, in seconds: from a pool hand-over (sub-millisecond) to a
/// cold boot under emulation (tens of seconds).
const BUCKETS: [f64; 18] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];

/// Most bytes of a Firecracker metrics file read in one scrape; the rest is
/// read at the next.
const MAX_READ_PER_SCRAPE: u64 = 4 * 1024 * 1024;

/// Longest line kept while waiting for its end; a longer one (no flush is
/// near this) is dropped up to its newline.
const MAX_PARTIAL_LINE: usize = 1024 * 1024;

/// The Firecracker counters summed: (section, field, metric name, help).
/// Every one is a per-flush delta in Firecracker's output.
pub const FIRECRACKER_COUNTERS: &[(&str, &str, &str, &str)] = &[
    (
        "vcpu",
        "exit_io_in",
        "vcpu_exit_io_in",
        "vCPU exits for port-I/O reads",
    ),
    (
        "vcpu",
        "exit_io_out",
        "vcpu_exit_io_out",
        "vCPU exits for port-I/O writes",
    ),
    (
        "vcpu",
        "exit_mmio_read",
        "vcpu_exit_mmio_read",
        "vCPU exits for MMIO reads",
    ),
    (
        "vcpu",
        "exit_mmio_write",
        "vcpu_exit_mmio_write",
        "vCPU exits for MMIO writes",
    ),
    ("vcpu", "failures", "vcpu_failures", "vCPU run failures"),
    (
        "block",
        "read_bytes",
        "block_read_bytes",
        "bytes read from block devices",
    ),
    (
        "block",
        "write_bytes",
        "block_write_bytes",
        "bytes written to block devices",
    ),
    (
        "block",
        "read_count",
        "block_read_ops",
        "block device read operations",
    ),
    (
        "block",
        "write_count",
        "block_write_ops",
        "block device write operations",
    ),
    (
        "block",
        "execute_fails",
        "block_errors",
        "block requests that failed",
    ),
    (
        "block",
        "rate_limiter_throttled_events",
        "block_throttled",
        "block requests delayed by the rate limiter",
    ),
    (
        "net",
        "rx_bytes_count",
        "net_rx_bytes",
        "bytes received by the guest",
    ),
    (
        "net",
        "tx_bytes_count",
        "net_tx_bytes",
        "bytes sent by the guest",
    ),
    (
        "net",
        "rx_packets_count",
        "net_rx_packets",
        "packets received by the guest",
    ),
    (
        "net",
        "tx_packets_count",
        "net_tx_packets",
        "packets sent by the guest",
    ),
    ("net", "rx_fails", "net_rx_errors", "receive failures"),
    ("net", "tx_fails", "net_tx_errors", "transmit failures"),
    (
        "net",
        "rx_rate_limiter_throttled",
        "net_rx_throttled",
        "receive events delayed by the rate limiter",
    ),
    (
        "net",
        "tx_rate_limiter_throttled",
        "net_tx_throttled",
        "transmit events delayed by the rate limiter",
    ),
];

/// Counts of one latency distribution.
#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Per bucket (not cumulative), plus one past the last bound.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let i = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }
}

/// Sums of [`FIRECRACKER_COUNTERS`], in that order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerTotals(pub [u64; FIRECRACKER_COUNTERS.len()]);

impl Default for FirecrackerTotals {
    fn default() -> Self {
        Self([0; FIRECRACKER_COUNTERS.len()])
    }
}

impl FirecrackerTotals {
    /// Adds one flush (a JSON object on one line). A line that is not such
    /// an object is skipped and `false` returned; fields missing from it, or
    /// not unsigned integers, count as 0.
    pub fn add_line(&mut self, line: &str) -> bool {
        let Ok(serde_json::Value::Object(flush)) = serde_json::from_str(line) else {
            return false;
        };
        for (total, (section, field, _, _)) in self.0.iter_mut().zip(FIRECRACKER_COUNTERS) {
            let value = flush
                .get(*section)
                .and_then(|s| s.get(*field))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            *total = total.saturating_add(value);
        }
        true
    }

    fn add(&mut self, other: &FirecrackerTotals) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_add(b);
        }
    }
}

/// Where the daemon is in one VM's Firecracker metrics file.
#[derive(Debug)]
struct FirecrackerFile {
    vm_type: String,
    path: PathBuf,
    offset: u64,
    /// The start of a line not yet terminated.
    partial: Vec<u8>,
    /// Inside an overlong line, which is skipped to its end.
    skipping: bool,
    totals: FirecrackerTotals,
}

impl FirecrackerFile {
    /// Reads what was appended since the last read (a bounded amount).
    fn catch_up(&mut self) {
        // A jailed VMM's user owns the file (a hard link into its jail): it
        // is read as untrusted, never through a link or from a FIFO.
        let Ok(mut file) = tfc_firecracker::open_untrusted(&self.path) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut fresh = Vec::new();
        let Ok(read) = file
            .take(MAX_READ_PER_SCRAPE)
            .read_to_end(&mut fresh)
            .map(|n| n as u64)
        else {
            return;
        };
        self.offset += read;
        let mut fresh = &fresh[..];
        if self.skipping {
            match fresh.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    self.skipping = false;
                    fresh = &fresh[end + 1..];
                }
                None => return,
            }
        }
        self.partial.extend_from_slice(fresh);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
            if self.partial.len() > MAX_PARTIAL_LINE {
                self.partial.clear();
                self.skipping = true;
            }
            return;
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for line in String::from_utf8_lossy(&complete).lines() {
            if !line.trim().is_empty() {
                self.totals.add_line(line);
            }
        }
    }
}

/// The metrics recorded as events happen. Two locks: the one every request
/// takes never waits on file reads, which happen under the other.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Recorded>,
    files: Mutex<Files>,
}

#[derive(Debug, Default)]
struct Files {
    /// Firecracker files of VMs still in the table, by VM id.
    firecracker: HashMap<String, FirecrackerFile>,
    /// Totals of VMs that have ended, per VM type.
    firecracker_ended: BTreeMap<String, FirecrackerTotals>,
}

#[derive(Debug, Default)]
struct Recorded {
    /// (method, route, status).
    requests: BTreeMap<(String, String, u16), Histogram>,
    /// (VM type, level, method, phase): time from the request to the phase.
    phases: BTreeMap<(String, &'static str, &'static str, &'static str), Histogram>,
    /// (VM type, tier).
    acquires: BTreeMap<(String, &'static str), Histogram>,
}

/// A VM's start as [`Metrics::vm_started`] records it.
#[derive(Debug, Clone, Copy)]
pub struct Start<'a> {
    pub vm_type: &'a str,
    pub level: &'static str,
    pub method: &'static str,
    pub timeline: &'a tfc_core::BootTimeline,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn files(&self) -> std::sync::MutexGuard<'_, Files> {
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One API request answered.
    pub fn request(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.lock()
            .requests
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// A VM reached Ready: every phase of its timeline is observed.
    pub fn vm_started(&self, start: Start<'_>) {
        let mut recorded = self.lock();
        for mark in &start.timeline.0 {
            recorded
                .phases
                .entry((
                    start.vm_type.to_owned(),
                    start.level,
                    start.method,
                    mark.phase.as_str(),
                ))
                .or_default()
                .observe(mark.at_us as f64 / 1e6);
        }
    }

    /// A pool served an acquire from `tier` in `us`.
    pub fn acquired(&self, vm_type: &str, tier: &'static str, us: u64) {
        self.lock()
            .acquires
            .entry((vm_type.to_owned(), tier))
            .or_default()
            .observe(us as f64 / 1e6);
    }

    /// Starts following the Firecracker metrics file of VM `id`.
    pub fn follow_firecracker(&self, id: &str, vm_type: &str, workdir: &Path) {
        self.files()
            .firecracker
            .entry(id.to_owned())
            .or_insert_with(|| FirecrackerFile {
                vm_type: vm_type.to_owned(),
                path: workdir.join(FIRECRACKER_METRICS_FILE),
                offset: 0,
                partial: Vec::new(),
                skipping: false,
                totals: FirecrackerTotals::default(),
            });
    }

    /// VM `id` has ended: its file is read a last time and its totals kept
    /// under its type. Call before its directory goes, off the async
    /// threads (it reads a file); a second call is a no-op.
    pub fn vm_ended(&self, id: &str) {
        let mut files = self.files();
        if let Some(mut file) = files.firecracker.remove(id) {
            file.catch_up();
            files
                .firecracker_ended
                .entry(file.vm_type)
                .or_default()
                .add(&file.totals);
        }
    }

    /// Firecracker totals per VM type, live and ended VMs together, after
    /// reading what the live VMs' files gained.
    pub fn firecracker_totals(&self) -> BTreeMap<String, FirecrackerTotals> {
        let mut files = self.files();
        let mut totals = files.firecracker_ended.clone();
        for file in files.firecracker.values_mut() {
            file.catch_up();
            totals
                .entry(file.vm_type.clone())
                .or_default()
                .add(&file.totals);
        }
        totals
    }

    /// The recorded families, in the text format.
    fn render_recorded(&self, out: &mut Exposition) {
        let firecracker = self.firecracker_totals();
        let recorded = self.lock();
        out.histograms(
            "tfc_http_request_duration_seconds",
            "API requests, by method, route and status: time to the answer's head",
            recorded
                .requests
                .iter()
                .map(|((method, route, status), h)| {
                    (
                        vec![
                            ("method", method.clone()),
                            ("route", route.clone()),
                            ("status", status.to_string()),
                        ],
                        h,
                    )
                }),
        );
        out.histograms(
            "tfc_vm_start_phase_seconds",
            "time from a VM's create request to each start phase it reached, by VM type, level asked, method that served and phase",
            recorded.phases.iter().map(|((vm_type, level, method, phase), h)| {
                (
                    vec![
                        ("vm_type", vm_type.clone()),
                        ("level", (*level).to_owned()),
                        ("method", (*method).to_owned()),
                        ("phase", (*phase).to_owned()),
                    ],
                    h,
                )
            }),
        );
        out.histograms(
            "tfc_pool_acquire_seconds",
            "pool acquires served, by VM type and tier: request to answer",
            recorded.acquires.iter().map(|((vm_type, tier), h)| {
                (
                    vec![("vm_type", vm_type.clone()), ("tier", (*tier).to_owned())],
                    h,
                )
            }),
        );
        for (i, (_, _, name, help)) in FIRECRACKER_COUNTERS.iter().enumerate() {
            out.family(
                &format!("tfc_firecracker_{name}_total"),
                "counter",
                &format!("Firecracker's count of {help}, summed over the VMs of each type"),
            );
            for (vm_type, totals) in &firecracker {
                out.sample(
                    &format!("tfc_firecracker_{name}_total"),
                    &[("vm_type", vm_type.clone())],
                    totals.0[i] as f64,
                );
            }
        }
    }
}

/// A text exposition being written.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family: its HELP and TYPE lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, String)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }

    /// A family with one sample per label set.
    pub fn gauges(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, f64)>,
    ) {
        self.family(name, kind, help);
        for (labels, value) in samples {
            self.sample(name, &labels, value);
        }
    }

    fn histograms<'a>(
        &mut self,
        name: &str,
        help: &str,
        series: impl Iterator<Item = (Vec<(&'static str, String)>, &'a Histogram)>,
    ) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (labels, h) in series {
            let mut cumulative = 0;
            for (i, bound) in BUCKETS
                .iter()
                .map(|b| format_value(*b))
                .chain(std::iter::once("+Inf".to_owned()))
                .enumerate()
            {
                cumulative += h.counts[i];
                let mut with_le = labels.clone();
                with_le.push(("le", bound));
                self.sample(&bucket, &with_le, cumulative as f64);
            }
            self.sample(&format!("{name}_sum"), &labels, h.sum);
            self.sample(&format!("{name}_count"), &labels, h.count as f64);
        }
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The whole exposition: what was recorded and the state `manager` holds
/// now. Reads files and the store: call it off the async threads.
pub fn render(manager: &crate::manager::VmManager) -> String {
    let mut out = Exposition::default();
    manager.metrics().render_recorded(&mut out);
    render_state(manager, &mut out);
    out.finish()
}

fn render_state(manager: &crate::manager::VmManager, out: &mut Exposition) {
    let vms = manager.list();
    let mut by_state: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    for vm in &vms {
        *by_state
            .entry((vm.spec.vm_type.to_string(), vm.state.as_str()))
            .or_default() += 1;
    }
    out.gauges(
        "tfc_vms",
        "gauge",
        "VMs in the daemon's table, by VM type and state",
        by_state.into_iter().map(|((vm_type, state), n)| {
            (
                vec![("vm_type", vm_type), ("state", state.to_owned())],
                n as f64,
            )
        }),
    );
    let live = vms.iter().filter(|vm| !vm.state.is_terminal()).count();
    out.gauges(
        "tfc_vms_live",
        "gauge",
        "VMs whose VMM may be running (not stopped or failed)",
        [(vec![], live as f64)],
    );

    let pools = manager.pools().list(manager);
    let per_pool = |f: &dyn Fn(&tfc_api::PoolInfo) -> f64| {
        pools
            .iter()
            .map(|p| (vec![("vm_type", p.vm_type.clone())], f(p)))
            .collect::<Vec<_>>()
    };
    out.gauges(
        "tfc_pool_vms",
        "gauge",
        "pooled VMs, by VM type and state (running and hot wait; starting, needs_maintenance and acquired do not)",
        pools.iter().flat_map(|p| {
            let s = &p.sizes;
            [
                ("running", s.running),
                ("hot", s.hot),
                ("starting", s.starting),
                ("needs_maintenance", s.needs_maintenance),
                ("acquired", s.acquired),
            ]
            .map(|(state, n)| {
                (
                    vec![("vm_type", p.vm_type.clone()), ("state", state.to_owned())],
                    f64::from(n),
                )
            })
        }),
    );
    out.gauges(
        "tfc_pool_target",
        "gauge",
        "hot-tier VMs a pool keeps waiting",
        per_pool(&|p| f64::from(p.target)),
    );
    out.gauges(
        "tfc_pool_running_target",
        "gauge",
        "running-tier VMs a pool keeps waiting",
        per_pool(&|p| f64::from(p.running)),
    );
    out.gauges(
        "tfc_pool_acquires_total",
        "counter",
        "acquires asked of a pool",
        per_pool(&|p| p.stats.acquires as f64),
    );
    out.gauges(
        "tfc_pool_unserved_total",
        "counter",
        "acquires answered 503: nothing could serve within the wait",
        per_pool(&|p| p.stats.unserved as f64),
    );
    out.gauges(
        "tfc_pool_serve_failures_total",
        "counter",
        "attempts to serve an acquire that failed (the next tier was tried)",
        per_pool(&|p| p.stats.failed as f64),
    );
    out.gauges(
        "tfc_pool_served_total",
        "counter",
        "acquires served, by VM type and tier",
        pools.iter().flat_map(|p| {
            p.stats.tiers.iter().map(|t| {
                (
                    vec![
                        ("vm_type", p.vm_type.clone()),
                        ("tier", t.tier.as_str().to_owned()),
                    ],
                    t.count as f64,
                )
            })
        }),
    );
    out.gauges(
        "tfc_pool_hit_ratio",
        "gauge",
        "share of served acquires each tier served",
        pools.iter().flat_map(|p| {
            p.stats.tiers.iter().map(|t| {
                (
                    vec![
                        ("vm_type", p.vm_type.clone()),
                        ("tier", t.tier.as_str().to_owned()),
                    ],
                    t.hit_rate,
                )
            })
        }),
    );
    out.gauges(
        "tfc_pool_prewarmed_total",
        "counter",
        "VMs started into a pool",
        per_pool(&|p| p.stats.prewarmed as f64),
    );
    out.gauges(
        "tfc_pool_refill_failures_total",
        "counter",
        "starts into a pool that failed",
        per_pool(&|p| p.stats.prewarm_failures as f64),
    );
    out.gauges(
        "tfc_pool_consecutive_failures",
        "gauge",
        "refill failures in a row (refills back off while above 0)",
        per_pool(&|p| f64::from(p.stats.consecutive_failures)),
    );
    out.gauges(
        "tfc_pool_replaced_total",
        "counter",
        "waiting VMs replaced, by reason",
        pools.iter().flat_map(|p| {
            [
                ("unhealthy", p.stats.replaced_unhealthy),
                ("aged", p.stats.replaced_aged),
            ]
            .map(|(reason, n)| {
                (
                    vec![
                        ("vm_type", p.vm_type.clone()),
                        ("reason", reason.to_owned()),
                    ],
                    n as f64,
                )
            })
        }),
    );

    let alerts = manager.monitor().counts();
    out.gauges(
        "tfc_alert_active",
        "gauge",
        "1 while the VM type's target is missed (see GET /v1/alerts)",
        alerts.iter().map(|(vm_type, target, active, _)| {
            (
                vec![
                    ("vm_type", vm_type.clone()),
                    ("target", target.as_str().to_owned()),
                ],
                if *active { 1.0 } else { 0.0 },
            )
        }),
    );
    out.gauges(
        "tfc_alerts_raised_total",
        "counter",
        "alerts raised, by VM type and target",
        alerts.iter().map(|(vm_type, target, _, raised)| {
            (
                vec![
                    ("vm_type", vm_type.clone()),
                    ("target", target.as_str().to_owned()),
                ],
                *raised as f64,
            )
        }),
    );

    let snapshots = manager.snapshots();
    let mut by_state: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for snapshot in &snapshots {
        let state = serde_json::to_value(snapshot.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let entry = by_state.entry(state).or_default();
        entry.0 += 1;
        entry.1 += snapshot.size_bytes;
    }
    out.gauges(
        "tfc_snapshots",
        "gauge",
        "snapshots in the catalog, by state",
        by_state
            .iter()
            .map(|(state, (n, _))| (vec![("state", state.clone())], *n as f64)),
    );
    out.gauges(
        "tfc_snapshot_bytes",
        "gauge",
        "bytes of snapshot files, by state",
        by_state
            .iter()
            .map(|(state, (_, bytes))| (vec![("state", state.clone())], *bytes as f64)),
    );
    match tfc_store::Store::stats(manager.store()) {
        Ok(stats) => {
            out.gauges(
                "tfc_store_rows",
                "gauge",
                "rows in the state store, by table",
                stats
                    .rows
                    .iter()
                    .map(|(table, n)| (vec![("table", table.clone())], *n as f64)),
            );
            if let Some(bytes) = stats.size_bytes {
                out.gauges(
                    "tfc_store_bytes",
                    "gauge",
                    "bytes the state store takes on disk (database and write-ahead log)",
                    [(vec![], bytes as f64)],
                );
            }
            out.gauges(
                "tfc_store_up",
                "gauge",
                "1 when the state store answered this scrape",
                [(vec![], 1.0)],
            );
        }
        Err(err) => {
            tracing::warn!(error = %tfc_core::error_chain(&err), "cannot read the store's statistics");
            out.gauges(
                "tfc_store_up",
                "gauge",
                "1 when the state store answered this scrape",
                [(vec![], 0.0)],
            );
        }
    }
    if let Some((free, total)) = filesystem_space(manager.data_dir()) {
        out.gauges(
            "tfc_data_dir_free_bytes",
            "gauge",
            "bytes available to the daemon on the data directory's filesystem",
            [(vec![], free as f64)],
        );
        out.gauges(
            "tfc_data_dir_size_bytes",
            "gauge",
            "size of the data directory's filesystem",
            [(vec![], total as f64)],
        );
    }
}

/// Bytes available to unprivileged users and the size of the filesystem
/// holding `path`.
fn filesystem_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call and
    // `stat` points to writable memory of the right size.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `stat` in.
    let stat = unsafe { stat.assume_init() };
    let fragment = stat.f_frsize;
    Some((stat.f_bavail * fragment, stat.f_blocks * fragment))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_inf() {
        let mut h = Histogram::default();
        for s in [0.0001, 0.003, 0.003, 7.0, 1000.0] {
            h.observe(s);
        }
        let mut out = Exposition::default();
        out.histograms(
            "x_seconds",
            "test",
            std::iter::once((vec![("vm_type", "a\"b".to_owned())], &h)),
        );
        let text = out.finish();
        assert!(text.contains("x_seconds_bucket{vm_type=\"a\\\"b\",le=\"0.0005\"} 1\n"));
        assert!(text.contains("x_seconds_bucket{vm_type=\"a\\\"b\",le=\"0.005\"} 3\n"));
        assert!(text.contains("x_seconds_bucket{vm_type=\"a\\\"b\",le=\"5\"} 3\n"));
        assert!(text.contains("x_seconds_bucket{vm_type=\"a\\\"b\",le=\"10\"} 4\n"));
        assert!(text.contains("x_seconds_bucket{vm_type=\"a\\\"b\",le=\"+Inf\"} 5\n"));
        assert!(text.contains("x_seconds_count{vm_type=\"a\\\"b\"} 5\n"));
        assert!(text.contains("x_seconds_sum{vm_type=\"a\\\"b\"} 1007.0061"));
        assert!(text.starts_with("# HELP x_seconds test\n# TYPE x_seconds histogram\n"));
    }

    #[test]
    fn firecracker_flushes_are_summed_and_junk_is_skipped() {
        let mut totals = FirecrackerTotals::default();
        assert!(totals.add_line(
            r#"{"utc_timestamp_ms":1,"vcpu":{"exit_mmio_read":5,"failures":0},"net":{"rx_bytes_count":100,"tx_rate_limiter_throttled":2}}"#
        ));
        assert!(totals.add_line(
            r#"{"vcpu":{"exit_mmio_read":7},"net":{"rx_bytes_count":"x"},"block":{"read_bytes":4096}}"#
        ));
        assert!(!totals.add_line("not json"));
        assert!(!totals.add_line("[1,2]"));
        let get = |name: &str| {
            let i = FIRECRACKER_COUNTERS
                .iter()
                .position(|c| c.2 == name)
                .unwrap();
            totals.0[i]
        };
        assert_eq!(get("vcpu_exit_mmio_read"), 12);
        assert_eq!(get("net_rx_bytes"), 100);
        assert_eq!(get("net_tx_throttled"), 2);
        assert_eq!(get("block_read_bytes"), 4096);
        assert_eq!(get("vcpu_failures"), 0);
    }

    #[test]
    fn a_file_is_read_incrementally_and_a_partial_line_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FIRECRACKER_METRICS_FILE);
        std::fs::write(&path, "").unwrap();
        let metrics = Metrics::default();
        metrics.follow_firecracker("vm1", "small", dir.path());
        let mmio = |m: &Metrics| m.firecracker_totals()["small"].0[2];
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"{\"vcpu\":{\"exit_mmio_read\":3}}\n{\"vcpu\":{\"exit_mm")
            .unwrap();
        assert_eq!(mmio(&metrics), 3);
        file.write_all(b"io_read\":4}}\n").unwrap();
        assert_eq!(mmio(&metrics), 7);
        // Read again: nothing new, nothing counted twice.
        assert_eq!(mmio(&metrics), 7);
        file.write_all(b"{\"vcpu\":{\"exit_mmio_read\":1}}\n")
            .unwrap();
        metrics.vm_ended("vm1");
        std::fs::remove_file(&path).unwrap();
        // The ended VM's totals stay, under its type.
        assert_eq!(mmio(&metrics), 8);
        metrics.vm_ended("vm1");
        assert_eq!(mmio(&metrics), 8);
    }

    #[test]
    fn an_overlong_line_is_dropped_to_its_end_and_a_fifo_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FIRECRACKER_METRICS_FILE);
        let metrics = Metrics::default();
        metrics.follow_firecracker("vm1", "small", dir.path());
        let mmio = |m: &Metrics| m.firecracker_totals()["small"].0[2];
        use std::io::Write;
        let mut file = std::fs::File::create(&path).unwrap();
        // More than a line may hold, with no newline: dropped, not kept.
        file.write_all(&vec![b'x'; MAX_PARTIAL_LINE + 10]).unwrap();
        assert_eq!(mmio(&metrics), 0);
        assert!(metrics.files().firecracker["vm1"].partial.is_empty());
        file.write_all(b"xx\n{\"vcpu\":{\"exit_mmio_read\":2}}\n")
            .unwrap();
        assert_eq!(mmio(&metrics), 2);
        // A FIFO (or a link) where the file was is not opened.
        std::fs::remove_file(&path).unwrap();
        let fifo = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(mmio(&metrics), 2, "a FIFO would have blocked here");
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        assert_eq!(mmio(&metrics), 2);
    }

    proptest::proptest! {
        #[test]
        fn any_line_is_summed_or_skipped_without_panic(line in ".{0,200}") {
            let mut totals = FirecrackerTotals::default();
            let counted = totals.add_line(&line);
            if !counted {
                proptest::prop_assert_eq!(totals, FirecrackerTotals::default());
            }
        }

        #[test]
        fn label_values_round_trip_through_escaping(value in ".{0,40}") {
            let escaped = escape_label(&value);
            proptest::prop_assert!(!escaped.contains('\n'));
            let mut unescaped = String::new();
            let mut chars = escaped.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    match chars.next() {
                        Some('n') => unescaped.push('\n'),
                        Some(other) => unescaped.push(other),
                        None => proptest::prop_assert!(false, "dangling escape"),
                    }
                } else {
                    proptest::prop_assert!(c != '"', "unescaped quote");
                    unescaped.push(c);
                }
            }
            proptest::prop_assert_eq!(unescaped, value);
        }
    }
}
