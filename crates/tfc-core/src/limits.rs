//! I/O rate limits of a VM: its network interface's receive and transmit
//! and its root drive, each in bytes and operations per second. The VMM
//! enforces them with token buckets, refilled every second to the rate, so a
//! limit of N per second allows a burst of N, then N per second.

use serde::{Deserialize, Serialize};

/// Highest rate accepted: 100 GB/s or 100 G operations/s, far above any
/// device, so a mistyped unit is caught rather than silently unlimited.
pub const MAX_RATE: u64 = 100_000_000_000;

/// One device direction's limit. A field left out is not limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct IoLimit {
    /// Bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<u64>,
    /// Operations (packets, or block requests) per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_per_sec: Option<u64>,
    /// Bytes allowed once, on top of the rate, before it applies (e.g. so a
    /// guest boots at full speed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_bytes: Option<u64>,
}

impl IoLimit {
    /// Limits nothing.
    pub fn is_unlimited(&self) -> bool {
        self.bytes_per_sec.is_none() && self.ops_per_sec.is_none()
    }
}

/// A VM's I/O limits. A device left out is not limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// What the guest receives over its network interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_rx: Option<IoLimit>,
    /// What the guest sends over its network interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_tx: Option<IoLimit>,
    /// The root drive's reads and writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<IoLimit>,
}

/// Why limits are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{field} must be between 1 and {MAX_RATE}, got {value}: leave it out for no limit")]
    OutOfRange { field: String, value: u64 },
    #[error("{field}.burst_bytes needs {field}.bytes_per_sec")]
    BurstWithoutRate { field: String },
}

impl RateLimits {
    /// Nothing is limited.
    pub fn is_empty(&self) -> bool {
        self.devices()
            .iter()
            .all(|(_, l)| l.is_none_or(|l| l.is_unlimited()))
    }

    fn devices(&self) -> [(&'static str, Option<IoLimit>); 3] {
        [
            ("net_rx", self.net_rx),
            ("net_tx", self.net_tx),
            ("disk", self.disk),
        ]
    }

    /// Refuses a rate of 0 (which would stop the device) or beyond
    /// [`MAX_RATE`], and a burst without a byte rate.
    pub fn validate(&self) -> Result<(), LimitError> {
        for (device, limit) in self.devices() {
            let Some(limit) = limit else { continue };
            for (name, value) in [
                ("bytes_per_sec", limit.bytes_per_sec),
                ("ops_per_sec", limit.ops_per_sec),
                ("burst_bytes", limit.burst_bytes),
            ] {
                if let Some(value) = value.filter(|v| *v == 0 || *v > MAX_RATE) {
                    return Err(LimitError::OutOfRange {
                        field: format!("{device}.{name}"),
                        value,
                    });
                }
            }
            if limit.burst_bytes.is_some() && limit.bytes_per_sec.is_none() {
                return Err(LimitError::BurstWithoutRate {
                    field: device.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// `self` with each device given in `update` replaced by it (an
    /// unlimited one removes that device's limit).
    pub fn merged(&self, update: &RateLimits) -> RateLimits {
        let pick = |old: Option<IoLimit>, new: Option<IoLimit>| match new {
            Some(limit) if limit.is_unlimited() => None,
            Some(limit) => Some(limit),
            None => old,
        };
        RateLimits {
            net_rx: pick(self.net_rx, update.net_rx),
            net_tx: pick(self.net_tx, update.net_tx),
            disk: pick(self.disk, update.disk),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(bytes: Option<u64>, ops: Option<u64>) -> IoLimit {
        IoLimit {
            bytes_per_sec: bytes,
            ops_per_sec: ops,
            burst_bytes: None,
        }
    }

    #[test]
    fn zero_huge_and_lone_bursts_are_refused_naming_the_field() {
        let ok = RateLimits {
            net_rx: Some(limit(Some(1_000_000), None)),
            net_tx: None,
            disk: Some(limit(None, Some(500))),
        };
        assert_eq!(ok.validate(), Ok(()));
        assert!(!ok.is_empty());
        assert!(RateLimits::default().is_empty());
        let zero = RateLimits {
            net_tx: Some(limit(Some(0), None)),
            ..RateLimits::default()
        };
        assert_eq!(
            zero.validate(),
            Err(LimitError::OutOfRange {
                field: "net_tx.bytes_per_sec".to_owned(),
                value: 0
            })
        );
        let huge = RateLimits {
            disk: Some(limit(None, Some(MAX_RATE + 1))),
            ..RateLimits::default()
        };
        assert!(huge
            .validate()
            .unwrap_err()
            .to_string()
            .contains("disk.ops_per_sec"));
        let burst = RateLimits {
            disk: Some(IoLimit {
                burst_bytes: Some(10),
                ..limit(None, Some(5))
            }),
            ..RateLimits::default()
        };
        assert_eq!(
            burst.validate(),
            Err(LimitError::BurstWithoutRate {
                field: "disk".to_owned()
            })
        );
    }

    #[test]
    fn an_update_replaces_the_devices_it_names_and_unlimited_removes() {
        let now = RateLimits {
            net_rx: Some(limit(Some(1), None)),
            net_tx: Some(limit(Some(2), None)),
            disk: None,
        };
        let update = RateLimits {
            net_rx: Some(IoLimit::default()),
            net_tx: None,
            disk: Some(limit(None, Some(3))),
        };
        assert_eq!(
            now.merged(&update),
            RateLimits {
                net_rx: None,
                net_tx: Some(limit(Some(2), None)),
                disk: Some(limit(None, Some(3))),
            }
        );
    }
}
