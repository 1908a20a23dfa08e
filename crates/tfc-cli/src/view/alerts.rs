//! Human view of the daemon's alerts: active ones first, then those cleared
//! lately.

use tfc_api::{Alert, AlertList};

use super::moment;
use crate::table::{Align, Table};

/// `alerts`: a table of active alerts and one of recently cleared ones.
pub fn list(alerts: &AlertList, now_ms: u64) -> String {
    let mut text = String::new();
    if alerts.active.is_empty() {
        text.push_str("no active alerts: every target is met\n");
    } else {
        text.push_str(&table(&alerts.active, now_ms, false));
    }
    if !alerts.recent.is_empty() {
        text.push_str("\ncleared lately:\n");
        text.push_str(&table(&alerts.recent, now_ms, true));
    }
    text
}

fn table(alerts: &[Alert], now_ms: u64, cleared: bool) -> String {
    let mut table = Table::new(&[
        ("TYPE", Align::Left),
        ("TARGET", Align::Left),
        ("WANTED", Align::Right),
        ("VALUE", Align::Right),
        ("SAMPLES", Align::Right),
        (if cleared { "CLEARED" } else { "RAISED" }, Align::Left),
    ]);
    for alert in alerts {
        let at = if cleared {
            alert.cleared_at_ms.unwrap_or(alert.raised_at_ms)
        } else {
            alert.raised_at_ms
        };
        table.push(vec![
            alert.vm_type.clone(),
            alert.target.as_str().to_owned(),
            figure(alert, alert.threshold),
            figure(alert, alert.value),
            alert.samples.to_string(),
            moment(at, now_ms),
        ]);
    }
    table.to_string()
}

/// A latency in ms, a rate in percent.
fn figure(alert: &Alert, value: f64) -> String {
    if value.is_nan() {
        "-".to_owned()
    } else if alert.target.lower_is_better() {
        format!("{value:.2} ms")
    } else {
        format!("{:.1}%", value * 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tfc_api::AlertTarget;

    fn alert(target: AlertTarget, threshold: f64, value: f64) -> Alert {
        Alert {
            vm_type: "small".to_owned(),
            target,
            threshold,
            value,
            samples: 12,
            raised_at_ms: 1_000,
            cleared_at_ms: None,
            message: String::new(),
        }
    }

    #[test]
    fn active_and_cleared_alerts_read_in_their_units() {
        let mut cleared = alert(AlertTarget::PoolHitRate, 0.9, 0.95);
        cleared.cleared_at_ms = Some(5_000);
        let text = list(
            &AlertList {
                active: vec![alert(AlertTarget::AcquireP99Ms, 5.0, 8.214)],
                recent: vec![cleared],
            },
            65_000,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("TYPE"), "{text}");
        assert!(lines[1].contains("acquire_p99_ms"), "{text}");
        assert!(
            lines[1].contains("5.00 ms") && lines[1].contains("8.21 ms"),
            "{text}"
        );
        assert!(text.contains("cleared lately:"), "{text}");
        assert!(text.contains("90.0%") && text.contains("95.0%"), "{text}");
        assert!(text.contains("CLEARED"), "{text}");
        let none = list(
            &AlertList {
                active: vec![],
                recent: vec![],
            },
            0,
        );
        assert_eq!(none, "no active alerts: every target is met\n");
    }
}
