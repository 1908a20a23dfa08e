//! The performance monitor: per VM type targets (boot p99, acquire p99, pool
//! hit rate, allocation success rate) checked over a sliding window. A missed
//! target raises an alert; it clears only once the figure beats the target by
//! a margin (hysteresis), so a figure hovering at the target does not flap.
//! Alerts show at `GET /v1/alerts`, in the log, as metrics, and are POSTed to
//! a webhook when one is configured.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Deserialize;
use tfc_api::{Alert, AlertList, AlertTarget};
use tokio::time::Instant;

use crate::config::ConfigError;

/// Most cleared alerts kept for `GET /v1/alerts`.
const RECENT_LIMIT: usize = 100;
/// Most samples kept per window; the oldest go first beyond this.
const SAMPLE_LIMIT: usize = 100_000;

/// `[alerts]`: how targets are checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// How often the targets are checked.
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// The figures cover this much of the recent past.
    #[serde(default = "default_window")]
    pub window_secs: u64,
    /// Fewer samples in the window leave an alert as it is (an empty window
    /// clears it: nothing is being missed).
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    /// An alert clears once the figure beats its target by this share: a
    /// latency at or below `target * (1 - margin)`, a rate at or above
    /// `target + (1 - target) * margin`.
    #[serde(default = "default_margin")]
    pub clear_margin: f64,
    /// `http://host:port/path`: each raise and clear is POSTed here as JSON.
    #[serde(default)]
    pub webhook: Option<String>,
    #[serde(default = "default_webhook_timeout")]
    pub webhook_timeout_ms: u64,
}

fn default_interval() -> u64 {
    10
}
fn default_window() -> u64 {
    300
}
fn default_min_samples() -> u64 {
    5
}
fn default_margin() -> f64 {
    0.1
}
fn default_webhook_timeout() -> u64 {
    2000
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            interval_secs: default_interval(),
            window_secs: default_window(),
            min_samples: default_min_samples(),
            clear_margin: default_margin(),
            webhook: None,
            webhook_timeout_ms: default_webhook_timeout(),
        }
    }
}

impl AlertsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| ConfigError::Invalid {
            key: format!("alerts.{key}"),
            reason: reason.to_owned(),
        };
        if !(1..=3600).contains(&self.interval_secs) {
            return Err(invalid("interval_secs", "must be between 1 and 3600"));
        }
        if !(1..=86_400).contains(&self.window_secs) {
            return Err(invalid("window_secs", "must be between 1 and 86400"));
        }
        if !(1..=1_000_000).contains(&self.min_samples) {
            return Err(invalid("min_samples", "must be between 1 and 1000000"));
        }
        if !(0.0..1.0).contains(&self.clear_margin) {
            return Err(invalid("clear_margin", "must be at least 0 and below 1"));
        }
        if !(1..=60_000).contains(&self.webhook_timeout_ms) {
            return Err(invalid("webhook_timeout_ms", "must be between 1 and 60000"));
        }
        if let Some(url) = &self.webhook {
            Webhook::parse(url).map_err(|reason| invalid("webhook", &reason))?;
        }
        Ok(())
    }
}

/// `[vm_types.NAME.targets]`: what the type's figures should be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    pub boot_p99_ms: Option<f64>,
    pub acquire_p99_ms: Option<f64>,
    pub pool_hit_rate: Option<f64>,
    pub allocation_success_rate: Option<f64>,
}

impl Targets {
    pub fn get(&self, target: AlertTarget) -> Option<f64> {
        match target {
            AlertTarget::BootP99Ms => self.boot_p99_ms,
            AlertTarget::AcquireP99Ms => self.acquire_p99_ms,
            AlertTarget::PoolHitRate => self.pool_hit_rate,
            AlertTarget::AllocationSuccessRate => self.allocation_success_rate,
        }
    }

    /// `prefix` is the table's key (`vm_types.NAME.targets`).
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        for target in AlertTarget::ALL {
            let Some(value) = self.get(target) else {
                continue;
            };
            let ok = if target.lower_is_better() {
                value > 0.0 && value <= 3_600_000.0
            } else {
                (0.0..=1.0).contains(&value)
            };
            if !ok {
                return Err(ConfigError::Invalid {
                    key: format!("{prefix}.{}", target.as_str()),
                    reason: if target.lower_is_better() {
                        "must be above 0 and at most 3600000 (ms)".to_owned()
                    } else {
                        "must be between 0 and 1".to_owned()
                    },
                });
            }
        }
        Ok(())
    }
}

/// One observation of a VM type.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Observed {
    /// A VM started for a caller: request to ready, ms.
    Boot(f64),
    /// An acquire served: ms, and whether a waiting VM served it.
    Acquire { ms: f64, hit: bool },
    /// An acquire answered 503.
    Unserved,
}

#[derive(Debug)]
struct Sample {
    at: Instant,
    vm_type: String,
    observed: Observed,
}

/// What one evaluation does to one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Raise,
    Clear,
    Keep,
}

/// The rule: raise when the figure misses the target; clear when it beats
/// the target by `margin`, or when the window holds no samples at all; with
/// too few samples, keep.
pub fn decide(
    active: bool,
    target: AlertTarget,
    threshold: f64,
    figure: Option<(f64, u64)>,
    min_samples: u64,
    margin: f64,
) -> Transition {
    let Some((value, samples)) = figure else {
        return if active {
            Transition::Clear
        } else {
            Transition::Keep
        };
    };
    if samples < min_samples {
        return Transition::Keep;
    }
    let (missed, comfortably_met) = if target.lower_is_better() {
        (value > threshold, value <= threshold * (1.0 - margin))
    } else {
        (
            value < threshold,
            value >= threshold + (1.0 - threshold) * margin,
        )
    };
    match (active, missed, comfortably_met) {
        (false, true, _) => Transition::Raise,
        (true, _, true) => Transition::Clear,
        _ => Transition::Keep,
    }
}

/// The 99th percentile (nearest rank) of `values`; `None` when empty.
fn p99(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64) * 0.99).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

/// The figure of `target` over `samples` of one type, and how many samples
/// it rests on; `None` when there are none it could rest on.
fn figure<'a>(
    target: AlertTarget,
    samples: impl Iterator<Item = &'a Observed>,
) -> Option<(f64, u64)> {
    let samples: Vec<&Observed> = samples.collect();
    match target {
        AlertTarget::BootP99Ms => {
            let mut ms: Vec<f64> = samples
                .iter()
                .filter_map(|o| match o {
                    Observed::Boot(ms) => Some(*ms),
                    _ => None,
                })
                .collect();
            let n = ms.len() as u64;
            p99(&mut ms).map(|v| (v, n))
        }
        AlertTarget::AcquireP99Ms => {
            let mut ms: Vec<f64> = samples
                .iter()
                .filter_map(|o| match o {
                    Observed::Acquire { ms, .. } => Some(*ms),
                    _ => None,
                })
                .collect();
            let n = ms.len() as u64;
            p99(&mut ms).map(|v| (v, n))
        }
        AlertTarget::PoolHitRate | AlertTarget::AllocationSuccessRate => {
            let (mut asked, mut good) = (0u64, 0u64);
            for o in &samples {
                match o {
                    Observed::Acquire { hit, .. } => {
                        asked += 1;
                        if *hit || target == AlertTarget::AllocationSuccessRate {
                            good += 1;
                        }
                    }
                    Observed::Unserved => asked += 1,
                    Observed::Boot(_) => {}
                }
            }
            (asked > 0).then(|| (good as f64 / asked as f64, asked))
        }
    }
}

/// A raise or clear, as the webhook receives it.
#[derive(Debug, Clone, serde::Serialize)]
struct Event<'a> {
    event: &'static str,
    alert: &'a Alert,
}

/// The monitor of one daemon.
#[derive(Debug)]
pub struct Monitor {
    config: AlertsConfig,
    targets: BTreeMap<String, Targets>,
    webhook: Option<Webhook>,
    state: Mutex<State>,
    started: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    samples: VecDeque<Sample>,
    active: BTreeMap<(String, AlertTarget), Alert>,
    recent: VecDeque<Alert>,
    raised: BTreeMap<(String, AlertTarget), u64>,
}

impl Monitor {
    pub fn new(config: AlertsConfig, targets: BTreeMap<String, Targets>) -> Self {
        let webhook = config
            .webhook
            .as_deref()
            .and_then(|url| Webhook::parse(url).ok());
        Self {
            config,
            targets,
            webhook,
            state: Mutex::new(State::default()),
            started: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn observe(&self, vm_type: &str, observed: Observed) {
        if !self.targets.contains_key(vm_type) {
            return;
        }
        let mut state = self.lock();
        if state.samples.len() >= SAMPLE_LIMIT {
            state.samples.pop_front();
        }
        state.samples.push_back(Sample {
            at: Instant::now(),
            vm_type: vm_type.to_owned(),
            observed,
        });
    }

    /// A VM of `vm_type` started for a caller in `ms`.
    pub fn boot(&self, vm_type: &str, ms: f64) {
        self.observe(vm_type, Observed::Boot(ms));
    }

    /// An acquire of `vm_type` served in `ms`; `hit` when a waiting VM served it.
    pub fn acquired(&self, vm_type: &str, ms: f64, hit: bool) {
        self.observe(vm_type, Observed::Acquire { ms, hit });
    }

    /// An acquire of `vm_type` answered 503.
    pub fn unserved(&self, vm_type: &str) {
        self.observe(vm_type, Observed::Unserved);
    }

    /// Checks every target now; returns the alerts raised and cleared, which
    /// are also logged and sent to the webhook.
    pub fn evaluate(&self) -> Vec<(Transition, Alert)> {
        let now = Instant::now();
        let window = Duration::from_secs(self.config.window_secs);
        let now_ms = crate::vm::now_ms();
        let mut changes = Vec::new();
        let mut state = self.lock();
        while state
            .samples
            .front()
            .is_some_and(|s| now.duration_since(s.at) > window)
        {
            state.samples.pop_front();
        }
        for (vm_type, targets) in &self.targets {
            for target in AlertTarget::ALL {
                let Some(threshold) = targets.get(target) else {
                    continue;
                };
                let key = (vm_type.clone(), target);
                let figure = figure(
                    target,
                    state
                        .samples
                        .iter()
                        .filter(|s| &s.vm_type == vm_type)
                        .map(|s| &s.observed),
                );
                let active = state.active.contains_key(&key);
                let transition = decide(
                    active,
                    target,
                    threshold,
                    figure,
                    self.config.min_samples,
                    self.config.clear_margin,
                );
                let (value, samples) = figure.unwrap_or((f64::NAN, 0));
                match transition {
                    Transition::Raise => {
                        let alert = Alert {
                            vm_type: vm_type.clone(),
                            target,
                            threshold,
                            value,
                            samples,
                            raised_at_ms: now_ms,
                            cleared_at_ms: None,
                            message: describe(target, vm_type, threshold, value, samples, window),
                        };
                        *state.raised.entry(key.clone()).or_default() += 1;
                        state.active.insert(key, alert.clone());
                        changes.push((transition, alert));
                    }
                    Transition::Clear => {
                        if let Some(mut alert) = state.active.remove(&key) {
                            alert.cleared_at_ms = Some(now_ms);
                            if samples > 0 {
                                alert.value = value;
                                alert.samples = samples;
                            }
                            if state.recent.len() >= RECENT_LIMIT {
                                state.recent.pop_back();
                            }
                            state.recent.push_front(alert.clone());
                            changes.push((transition, alert));
                        }
                    }
                    Transition::Keep => {
                        if let (Some(alert), true) = (state.active.get_mut(&key), samples > 0) {
                            alert.value = value;
                            alert.samples = samples;
                        }
                    }
                }
            }
        }
        drop(state);
        for (transition, alert) in &changes {
            if *transition == Transition::Raise {
                tracing::warn!(vm_type = %alert.vm_type, target = alert.target.as_str(), threshold = alert.threshold, value = alert.value, samples = alert.samples, "alert raised: {}", alert.message);
            } else {
                tracing::info!(vm_type = %alert.vm_type, target = alert.target.as_str(), value = alert.value, "alert cleared: {}", alert.message);
            }
            if let Some(webhook) = &self.webhook {
                let event = Event {
                    event: if *transition == Transition::Raise {
                        "raised"
                    } else {
                        "cleared"
                    },
                    alert,
                };
                let body = serde_json::to_vec(&event).expect("an alert serializes");
                let webhook = webhook.clone();
                let timeout = Duration::from_millis(self.config.webhook_timeout_ms);
                tokio::spawn(async move {
                    if let Err(err) = webhook.post(body, timeout).await {
                        tracing::warn!(url = %webhook.shown, error = %err, "cannot deliver an alert to the webhook");
                    }
                });
            }
        }
        changes
    }

    /// Active and recently cleared alerts.
    pub fn list(&self) -> AlertList {
        let state = self.lock();
        AlertList {
            active: state.active.values().cloned().collect(),
            recent: state.recent.iter().cloned().collect(),
        }
    }

    /// Per (VM type, target) with a target set: whether an alert is active,
    /// and how many times one was raised.
    pub fn counts(&self) -> Vec<(String, AlertTarget, bool, u64)> {
        let state = self.lock();
        let mut counts = Vec::new();
        for (vm_type, targets) in &self.targets {
            for target in AlertTarget::ALL {
                if targets.get(target).is_some() {
                    let key = (vm_type.clone(), target);
                    counts.push((
                        vm_type.clone(),
                        target,
                        state.active.contains_key(&key),
                        state.raised.get(&key).copied().unwrap_or(0),
                    ));
                }
            }
        }
        counts
    }

    /// Evaluates every `interval_secs` until the monitor is dropped; once.
    pub fn start(self: &Arc<Self>) {
        if self.targets.is_empty() || self.started.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Monitor> = Arc::downgrade(self);
        let period = Duration::from_secs(self.config.interval_secs);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(monitor) = weak.upgrade() else {
                    return;
                };
                monitor.evaluate();
            }
        });
    }
}

fn describe(
    target: AlertTarget,
    vm_type: &str,
    threshold: f64,
    value: f64,
    samples: u64,
    window: Duration,
) -> String {
    let over = format!("over the last {} s ({samples} samples)", window.as_secs());
    match target {
        AlertTarget::BootP99Ms => {
            format!("VM type {vm_type}: boot p99 {value:.1} ms {over}, target {threshold} ms")
        }
        AlertTarget::AcquireP99Ms => {
            format!("VM type {vm_type}: acquire p99 {value:.2} ms {over}, target {threshold} ms")
        }
        AlertTarget::PoolHitRate => format!(
            "VM type {vm_type}: pool hit rate {:.1}% {over}, target {:.1}%",
            value * 100.0,
            threshold * 100.0
        ),
        AlertTarget::AllocationSuccessRate => format!(
            "VM type {vm_type}: allocation success rate {:.1}% {over}, target {:.1}%",
            value * 100.0,
            threshold * 100.0
        ),
    }
}

/// A plain-HTTP endpoint alerts are POSTed to.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// The URL as logs show it: without its query, which webhook services
    /// often use to carry their secret key.
    shown: String,
    authority: String,
    path: String,
}

impl Webhook {
    /// Accepts `http://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: axum::http::Uri = url
            .parse()
            .map_err(|e| format!("not a URL ({e}): expected http://host:port/path"))?;
        if uri.scheme_str() != Some("http") {
            return Err("only http:// URLs are supported".to_owned());
        }
        let authority = uri
            .authority()
            .ok_or("the URL names no host")?
            .as_str()
            .to_owned();
        if authority.contains('@') {
            return Err("credentials in the URL are not supported".to_owned());
        }
        let path = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        Ok(Self {
            shown: format!("http://{authority}{}", uri.path()),
            authority,
            path,
        })
    }

    /// POSTs `body` (JSON); an answer other than 2xx is an error.
    async fn post(&self, body: Vec<u8>, timeout: Duration) -> Result<(), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let exchange = async {
            let address = if self.authority.contains(':') && !self.authority.ends_with(']') {
                self.authority.clone()
            } else {
                format!("{}:80", self.authority)
            };
            let mut stream = tokio::net::TcpStream::connect(&address)
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            let head = format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: tfc/{}\r\n\r\n",
                self.path,
                self.authority,
                body.len(),
                env!("CARGO_PKG_VERSION"),
            );
            stream
                .write_all(head.as_bytes())
                .await
                .map_err(|e| format!("cannot send: {e}"))?;
            stream
                .write_all(&body)
                .await
                .map_err(|e| format!("cannot send: {e}"))?;
            let mut answer = Vec::new();
            let mut buf = [0u8; 512];
            while !answer.windows(2).any(|w| w == b"\r\n") {
                let n = stream
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("no answer: {e}"))?;
                if n == 0 || answer.len() > 8192 {
                    break;
                }
                answer.extend_from_slice(&buf[..n]);
            }
            let status_line = String::from_utf8_lossy(&answer);
            let status = status_line.split_whitespace().nth(1).unwrap_or("");
            if status.starts_with('2') && status.len() == 3 {
                Ok(())
            } else {
                Err(format!(
                    "answered {:?}",
                    status_line.lines().next().unwrap_or("")
                ))
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor(targets: Targets) -> Monitor {
        Monitor::new(
            AlertsConfig {
                window_secs: 60,
                min_samples: 3,
                ..AlertsConfig::default()
            },
            [("small".to_owned(), targets)].into(),
        )
    }

    #[test]
    fn decide_has_hysteresis_for_latencies_and_rates() {
        use AlertTarget::*;
        use Transition::*;
        let d = |active, target, value| decide(active, target, 10.0, Some((value, 5)), 3, 0.1);
        assert_eq!(d(false, AcquireP99Ms, 10.0), Keep, "at the target is met");
        assert_eq!(d(false, AcquireP99Ms, 10.5), Raise);
        assert_eq!(
            d(true, AcquireP99Ms, 9.5),
            Keep,
            "met, but not by the margin"
        );
        assert_eq!(d(true, AcquireP99Ms, 9.0), Clear);
        let r = |active, value| decide(active, PoolHitRate, 0.9, Some((value, 5)), 3, 0.1);
        assert_eq!(r(false, 0.9), Keep);
        assert_eq!(r(false, 0.85), Raise);
        assert_eq!(r(true, 0.905), Keep);
        assert_eq!(r(true, 0.91), Clear);
        // Too few samples: nothing changes; none at all: an alert clears.
        assert_eq!(
            decide(false, BootP99Ms, 10.0, Some((99.0, 2)), 3, 0.1),
            Keep
        );
        assert_eq!(decide(true, BootP99Ms, 10.0, Some((1.0, 2)), 3, 0.1), Keep);
        assert_eq!(decide(true, BootP99Ms, 10.0, None, 3, 0.1), Clear);
        assert_eq!(decide(false, BootP99Ms, 10.0, None, 3, 0.1), Keep);
    }

    #[test]
    fn p99_is_the_nearest_rank() {
        assert_eq!(p99(&mut []), None);
        assert_eq!(p99(&mut [5.0]), Some(5.0));
        let mut values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(p99(&mut values), Some(99.0));
        let mut values: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        assert_eq!(p99(&mut values), Some(990.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_acquire_p99_raises_then_clears_when_the_window_moves_on() {
        let monitor = monitor(Targets {
            acquire_p99_ms: Some(5.0),
            ..Targets::default()
        });
        for _ in 0..5 {
            monitor.acquired("small", 2.0, true);
        }
        assert!(monitor.evaluate().is_empty());
        monitor.acquired("small", 40.0, true);
        let changes = monitor.evaluate();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0, Transition::Raise);
        assert_eq!(changes[0].1.value, 40.0);
        assert_eq!(changes[0].1.samples, 6);
        assert_eq!(monitor.list().active.len(), 1);
        // Still inside the window: still active, no second raise.
        tokio::time::advance(Duration::from_secs(30)).await;
        for _ in 0..5 {
            monitor.acquired("small", 1.0, true);
        }
        assert!(monitor.evaluate().is_empty());
        // The slow one leaves the window; the fast ones beat 5 ms by far.
        tokio::time::advance(Duration::from_secs(31)).await;
        let changes = monitor.evaluate();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0, Transition::Clear);
        let list = monitor.list();
        assert!(list.active.is_empty());
        assert_eq!(list.recent.len(), 1);
        assert!(list.recent[0].cleared_at_ms.is_some());
        assert_eq!(
            monitor.counts(),
            vec![("small".to_owned(), AlertTarget::AcquireP99Ms, false, 1)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hit_and_success_rates_count_misses_and_503s() {
        let monitor = monitor(Targets {
            pool_hit_rate: Some(0.8),
            allocation_success_rate: Some(0.99),
            ..Targets::default()
        });
        // 3 hot hits, 1 warm (a miss of the pool, still served), 1 unserved.
        for _ in 0..3 {
            monitor.acquired("small", 1.0, true);
        }
        monitor.acquired("small", 12.0, false);
        monitor.unserved("small");
        // Another type's figures are not this type's.
        monitor.unserved("other");
        let mut changes = monitor.evaluate();
        changes.sort_by_key(|(_, a)| a.target);
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].1.target, AlertTarget::PoolHitRate);
        assert!((changes[0].1.value - 0.6).abs() < 1e-9);
        assert_eq!(changes[1].1.target, AlertTarget::AllocationSuccessRate);
        assert!((changes[1].1.value - 0.8).abs() < 1e-9);
        // With no samples left in the window, both clear.
        tokio::time::advance(Duration::from_secs(61)).await;
        let changes = monitor.evaluate();
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().all(|(t, _)| *t == Transition::Clear));
    }

    #[tokio::test(start_paused = true)]
    async fn boots_below_min_samples_raise_nothing() {
        let monitor = monitor(Targets {
            boot_p99_ms: Some(100.0),
            ..Targets::default()
        });
        monitor.boot("small", 5000.0);
        monitor.boot("small", 5000.0);
        assert!(monitor.evaluate().is_empty());
        monitor.boot("small", 5000.0);
        assert_eq!(monitor.evaluate()[0].0, Transition::Raise);
    }

    #[tokio::test(start_paused = true)]
    async fn the_periodic_task_evaluates_and_ends_with_the_monitor() {
        let monitor = Arc::new(monitor(Targets {
            acquire_p99_ms: Some(5.0),
            ..Targets::default()
        }));
        for _ in 0..3 {
            monitor.acquired("small", 50.0, true);
        }
        monitor.start();
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(monitor.list().active.len(), 1);
        let weak = Arc::downgrade(&monitor);
        drop(monitor);
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn config_refuses_bad_values_naming_the_key() {
        let bad = Targets {
            pool_hit_rate: Some(1.5),
            ..Targets::default()
        };
        let err = bad.validate("vm_types.x.targets").unwrap_err().to_string();
        assert!(err.contains("vm_types.x.targets.pool_hit_rate"), "{err}");
        let bad = Targets {
            boot_p99_ms: Some(0.0),
            ..Targets::default()
        };
        assert!(bad.validate("t").is_err());
        for url in ["https://x/y", "ftp://x", "not a url", "http://u:p@host/x"] {
            let config = AlertsConfig {
                webhook: Some(url.to_owned()),
                ..AlertsConfig::default()
            };
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("alerts.webhook"), "{url}: {err}");
        }
        let config = AlertsConfig {
            clear_margin: 1.0,
            ..AlertsConfig::default()
        };
        assert!(config.validate().is_err());
        let webhook = Webhook::parse("http://127.0.0.1:9/hooks/tfc?key=s3cret").unwrap();
        assert_eq!(webhook.authority, "127.0.0.1:9");
        assert_eq!(webhook.path, "/hooks/tfc?key=s3cret");
        // Logs name the webhook without the query, which may hold a key.
        assert_eq!(webhook.shown, "http://127.0.0.1:9/hooks/tfc");
    }
}
