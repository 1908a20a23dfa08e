//! Benchmark: a VM network's setup and teardown, from the slot pool and on
//! demand, measured on this host. Entry point [`run`], which `tfc bench net`
//! calls.
//!
//! It never touches the host's own network: it creates a namespace to play
//! the host (`<prefix>-host`), makes every slot against it, and removes it
//! all at the end, also when a step fails. Needs root.
//!
//! Each sample is timed around the library call the daemon would make:
//! [`SlotPool::acquire`] (lease in the store, slot, record, the VM's part)
//! and [`VmNetwork::teardown`] (objects, record, lease). Slot creation
//! ahead of need (what the pool does off the request path) is reported too.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tfc_core::net::{NamePrefix, NetConfig, NetMode};
use tfc_core::VmId;
use tfc_store::Store;

use crate::host::{HostConfig, HostError, HostNet};
use crate::netns::{Netns, NetnsError};
use crate::pool::SlotPool;
use crate::slot::{SetupError, TeardownError, VmNetwork};
use crate::sysctl::{self, SysctlError};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Measured samples per path.
    pub count: usize,
    /// Unmeasured samples first, per path.
    pub warmup: usize,
    /// What each VM asks for: mode `isolated` or `nat`, and optionally an
    /// allowlist and port forwards (each costs one `nft` run at setup).
    pub config: NetConfig,
    /// Prefix of every name the benchmark makes; keep it apart from a
    /// running daemon's (whose reconciliation would remove ours).
    pub prefix: NamePrefix,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            count: 50,
            warmup: 3,
            config: NetConfig {
                mode: NetMode::Isolated,
                ..NetConfig::default()
            },
            prefix: NamePrefix::new("tfcb").expect("a valid prefix"),
        }
    }
}

/// Why the benchmark stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("mode none has no network to measure: use isolated or nat")]
    NoNetwork,
    #[error("nothing to measure: ask for at least one sample")]
    NoSamples,
    #[error("cannot create the namespace that plays the host")]
    HostNamespace(#[source] NetnsError),
    #[error("cannot enable forwarding in the namespace that plays the host")]
    Forwarding(#[source] SysctlError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("setup of sample {sample} failed")]
    Setup {
        sample: usize,
        #[source]
        source: SetupError,
    },
    #[error("teardown of sample {sample} failed")]
    Teardown {
        sample: usize,
        #[source]
        source: TeardownError,
    },
    #[error("cannot remove the benchmark's slots")]
    Drain(#[source] TeardownError),
}

/// Order statistics of one measured step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub min: Duration,
    pub median: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    /// Nearest-rank statistics of `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        let mut sorted: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
        sorted.sort_by(f64::total_cmp);
        let at = |p| tfc_core::pool::percentile(&sorted, p).map(Duration::from_secs_f64);
        Some(Summary {
            count: samples.len(),
            min: at(0.0)?,
            median: at(50.0)?,
            p99: at(99.0)?,
            max: at(100.0)?,
        })
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "min {:.3} / median {:.3} / p99 {:.3} / max {:.3} ms (n={})",
            ms(self.min),
            ms(self.median),
            ms(self.p99),
            ms(self.max),
            self.count
        )
    }
}

/// The measurements.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub config: NetConfig,
    /// Making one slot ahead of need (off the request path).
    pub slot_create: Summary,
    /// A VM's setup with a ready slot.
    pub pooled_setup: Summary,
    pub pooled_teardown: Summary,
    /// A VM's setup with no ready slot: the slot is made for it.
    pub on_demand_setup: Summary,
    pub on_demand_teardown: Summary,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "network setup and teardown per VM: mode {}, {} egress rules, {} port forwards",
            c.mode,
            c.egress_allow
                .as_ref()
                .map_or("no".to_owned(), |r| r.len().to_string()),
            c.port_forwards.len()
        )?;
        writeln!(f, "  slot creation (pool fill):  {}", self.slot_create)?;
        writeln!(f, "  setup from the slot pool:   {}", self.pooled_setup)?;
        writeln!(f, "  teardown (pooled):          {}", self.pooled_teardown)?;
        writeln!(f, "  setup on demand:            {}", self.on_demand_setup)?;
        writeln!(
            f,
            "  teardown (on demand):       {}",
            self.on_demand_teardown
        )?;
        let target = Duration::from_millis(5);
        write!(
            f,
            "  target: setup from the pool <= 5 ms median: {}",
            if self.pooled_setup.median <= target {
                "met"
            } else {
                "MISSED"
            }
        )
    }
}

/// Runs the benchmark with `store` for leases and records (the daemon's
/// kind of store, so its writes are in the figures).
pub fn run(options: &BenchOptions, store: &dyn Store) -> Result<BenchReport, BenchError> {
    if options.config.mode == NetMode::None {
        return Err(BenchError::NoNetwork);
    }
    if options.count == 0 {
        return Err(BenchError::NoSamples);
    }
    let host_ns = format!("{}-host", options.prefix);
    let netns = Netns::create(&host_ns).map_err(BenchError::HostNamespace)?;
    let result = netns
        .run(|| sysctl::set("net.ipv4.ip_forward", "1"))
        .map_err(BenchError::HostNamespace)
        .and_then(|set| set.map_err(BenchError::Forwarding))
        .and_then(|()| measure(options, &host_ns, store));
    drop(netns);
    if let Err(err) = Netns::delete(&host_ns) {
        tracing::error!(netns = %host_ns, error = %tfc_core::error_chain(&err),
            "cannot remove the benchmark's host namespace");
    }
    result
}

fn measure(
    options: &BenchOptions,
    host_ns: &str,
    store: &dyn Store,
) -> Result<BenchReport, BenchError> {
    let mut config = HostConfig::new("10.200.0.0/16".parse().expect("a valid pool"));
    config.prefix = options.prefix.clone();
    config.host_netns = Some(host_ns.to_owned());
    // Masqueraded egress needs an uplink name; the host stand-in has no
    // world behind it, and the rule costs the same either way.
    config.uplink = Some("uplink0".to_owned());
    let host = Arc::new(HostNet::new(config)?);
    host.install()?;
    let net = options.config.clone();
    let samples = options.warmup + options.count;
    let pooled = SlotPool::new(Arc::clone(&host), samples);
    let on_demand = SlotPool::new(Arc::clone(&host), 0);

    let result = sample(options, &host, &pooled, &on_demand, &net, store);
    let drained = pooled.drain().map_err(BenchError::Drain);
    let uninstalled = host.uninstall().map_err(BenchError::from);
    let report = result?;
    drained?;
    uninstalled?;
    Ok(report)
}

/// Fills `pooled` one slot at a time, then alternates a pooled and an
/// on-demand VM per sample.
fn sample(
    options: &BenchOptions,
    host: &HostNet,
    pooled: &SlotPool,
    on_demand: &SlotPool,
    net: &NetConfig,
    store: &dyn Store,
) -> Result<BenchReport, BenchError> {
    let samples = options.warmup + options.count;
    let mut slot_create = Vec::new();
    for _ in 0..samples {
        let start = Instant::now();
        pooled
            .fill_one()
            .map_err(|source| BenchError::Setup { sample: 0, source })?;
        slot_create.push(start.elapsed());
    }
    let mut times = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for sample in 0..samples {
        for (path, pool) in [(0, pooled), (2, on_demand)] {
            let vm = VmId::new(format!("bench-{path}-{sample}")).expect("a valid id");
            let start = Instant::now();
            let network = pool
                .acquire(&vm, net, store)
                .map_err(|source| BenchError::Setup { sample, source })?;
            let setup = start.elapsed();
            let start = Instant::now();
            teardown(network, host, store, sample)?;
            let teardown = start.elapsed();
            if sample >= options.warmup {
                times[path].push(setup);
                times[path + 1].push(teardown);
            }
        }
    }
    let summary = |samples: &[Duration]| Summary::of(samples).expect("count > 0 samples");
    Ok(BenchReport {
        config: options.config.clone(),
        slot_create: summary(&slot_create[options.warmup..]),
        pooled_setup: summary(&times[0]),
        pooled_teardown: summary(&times[1]),
        on_demand_setup: summary(&times[2]),
        on_demand_teardown: summary(&times[3]),
    })
}

fn teardown(
    network: VmNetwork,
    host: &HostNet,
    store: &dyn Store,
    sample: usize,
) -> Result<(), BenchError> {
    network
        .teardown(host, store)
        .map_err(|source| BenchError::Teardown { sample, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&samples).unwrap();
        assert_eq!(
            (s.min, s.median, s.p99, s.max),
            (
                Duration::from_millis(1),
                Duration::from_millis(50),
                Duration::from_millis(99),
                Duration::from_millis(100)
            )
        );
        assert_eq!(Summary::of(&[]), None);
        assert!(s.to_string().starts_with("min 1.000 / median 50.000"));
    }
}
