//! The identity of a host CPU, parsed from `/proc/cpuinfo` text (the host
//! crate reads the file).
//!
//! A guest snapshot carries the CPU state and the CPUID its kernel and
//! programs saw. Restored on a CPU that lacks a feature the guest already
//! chose to use (AVX-512, say), the guest dies of SIGILL at the first such
//! instruction; restored on another vendor or model, CPUID and MSR state no
//! longer describe the hardware. [`CpuIdentity::compatibility`] refuses both.
//!
//! The `flags` line also holds flags the host kernel synthesizes (for example
//! `constant_tsc`, bug-mitigation flags), so the check is conservative: two
//! hosts with the same silicon but different kernels or microcode may refuse
//! each other's snapshots. Only x86 `/proc/cpuinfo` is understood.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// The CPU that a snapshot was taken on, or this host's. A restore on a CPU
/// that lacks any of these flags is refused: the guest may already use them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CpuIdentity {
    /// `vendor_id`, e.g. `GenuineIntel`, `AuthenticAMD`.
    pub vendor: String,
    /// `model name`; for people only, never compared. Empty when absent.
    pub model_name: String,
    pub family: u32,
    pub model: u32,
    /// Absent (or `unknown`) under some hypervisors; never compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stepping: Option<u32>,
    /// Sorted and deduplicated.
    pub flags: Vec<String>,
}

/// Why a snapshot taken on one CPU must not be restored on this host's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuMismatch {
    /// Vendor, family or model differ.
    #[error("snapshot was taken on {snapshot}, this host is {host}")]
    Processor { snapshot: String, host: String },
    /// This host lacks feature flags the snapshot's CPU had (sorted).
    #[error("this host's CPU lacks flags the snapshot's CPU had: {}", list_flags(.missing))]
    MissingFlags { missing: Vec<String> },
}

/// How many missing flags a [`CpuMismatch::MissingFlags`] message names.
const FLAGS_SHOWN: usize = 10;

fn list_flags(flags: &[String]) -> String {
    let shown = flags[..flags.len().min(FLAGS_SHOWN)].join(", ");
    match flags.len().saturating_sub(FLAGS_SHOWN) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

impl CpuIdentity {
    /// E.g. `GenuineIntel family 6 model 85 (Intel(R) Xeon(R) ...)`.
    fn describe(&self) -> String {
        let mut s = format!(
            "{} family {} model {}",
            self.vendor, self.family, self.model
        );
        if !self.model_name.is_empty() {
            s.push_str(&format!(" ({})", self.model_name));
        }
        s
    }

    /// Whether a snapshot taken on `self` may be restored on `here`: same
    /// vendor, family and model, and `here` has every flag `self` had.
    /// Extra flags on `here` and a different stepping are fine.
    pub fn compatibility(&self, here: &CpuIdentity) -> Result<(), CpuMismatch> {
        if (&self.vendor, self.family, self.model) != (&here.vendor, here.family, here.model) {
            return Err(CpuMismatch::Processor {
                snapshot: self.describe(),
                host: here.describe(),
            });
        }
        let present: BTreeSet<&str> = here.flags.iter().map(String::as_str).collect();
        let missing: BTreeSet<&str> = self
            .flags
            .iter()
            .map(String::as_str)
            .filter(|f| !present.contains(f))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(CpuMismatch::MissingFlags {
                missing: missing.into_iter().map(str::to_owned).collect(),
            })
        }
    }
}

/// The identity described by the first processor block of `cpuinfo` (the
/// text of `/proc/cpuinfo`). `None` when vendor, family, model or flags are
/// missing or malformed.
pub fn parse(cpuinfo: &str) -> Option<CpuIdentity> {
    let mut vendor = None;
    let mut model_name = None;
    let mut family = None;
    let mut model = None;
    let mut stepping = None;
    let mut flags = None;
    let mut started = false;
    for line in cpuinfo.lines() {
        if line.trim().is_empty() {
            if started {
                break;
            }
            continue;
        }
        started = true;
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "vendor_id" => vendor = Some(value.to_owned()),
            "model name" => model_name = Some(value.to_owned()),
            "cpu family" => family = Some(value.parse().ok()?),
            "model" => model = Some(value.parse().ok()?),
            "stepping" => stepping = value.parse().ok(),
            "flags" => {
                let set: BTreeSet<&str> = value.split_whitespace().collect();
                flags = Some(set.into_iter().map(str::to_owned).collect());
            }
            _ => {}
        }
    }
    Some(CpuIdentity {
        vendor: vendor.filter(|v: &String| !v.is_empty())?,
        model_name: model_name.unwrap_or_default(),
        family: family?,
        model: model?,
        stepping,
        flags: flags?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const XEON: &str = "\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz
stepping\t: 7
microcode\t: 0x5003604
cpu MHz\t\t: 2499.998
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 sse4_1 sse4_2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni aes fma bmi1 bmi2 adx rdseed sse
bugs\t\t: spectre_v1 spectre_v2
bogomips\t: 4999.99

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
flags\t\t: fpu
";

    const EPYC: &str = "\
processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7R13 Processor
stepping\t: 1
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 sse4_1 sse4_2 avx avx2 aes fma bmi1 bmi2 adx rdseed sha_ni clzero
";

    fn xeon() -> CpuIdentity {
        parse(XEON).expect("xeon sample parses")
    }

    fn with_flags(base: &CpuIdentity, flags: &[&str]) -> CpuIdentity {
        CpuIdentity {
            flags: flags.iter().map(|f| f.to_string()).collect(),
            ..base.clone()
        }
    }

    #[test]
    fn parses_the_first_processor_block() {
        let cpu = xeon();
        assert_eq!(cpu.vendor, "GenuineIntel");
        assert_eq!(
            cpu.model_name,
            "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz"
        );
        assert_eq!((cpu.family, cpu.model, cpu.stepping), (6, 85, Some(7)));
        assert!(cpu.flags.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
        assert_eq!(cpu.flags.iter().filter(|f| *f == "sse").count(), 1);
        assert!(cpu.flags.contains(&"avx512f".to_string()));
    }

    #[test]
    fn stepping_may_be_absent_or_unknown_but_the_rest_may_not() {
        let amd = parse(EPYC).unwrap();
        let without = parse(&EPYC.replace("stepping\t: 1\n", "")).unwrap();
        assert_eq!(without.stepping, None);
        assert_eq!(
            parse(&EPYC.replace("stepping\t: 1", "stepping\t: unknown"))
                .unwrap()
                .stepping,
            None
        );
        assert_eq!(
            CpuIdentity {
                stepping: None,
                ..amd
            },
            without
        );
        assert_eq!(parse(&EPYC.replace("model\t\t: 1\n", "")), None);
        assert_eq!(
            parse(&EPYC.replace("cpu family\t: 25", "cpu family\t: x")),
            None
        );
        assert_eq!(
            parse(&EPYC.replace("vendor_id\t: AuthenticAMD\n", "")),
            None
        );
        assert_eq!(parse(""), None);
    }

    #[test]
    fn identical_cpus_and_extra_flags_or_stepping_are_compatible() {
        let cpu = xeon();
        assert_eq!(cpu.compatibility(&cpu), Ok(()));
        let mut newer = cpu.clone();
        newer.flags.push("zzz_new_feature".into());
        newer.stepping = Some(4);
        assert_eq!(cpu.compatibility(&newer), Ok(()));
    }

    #[test]
    fn another_vendor_or_model_is_refused() {
        let err = xeon().compatibility(&parse(EPYC).unwrap()).unwrap_err();
        assert!(matches!(err, CpuMismatch::Processor { .. }));
        assert_eq!(
            err.to_string(),
            "snapshot was taken on GenuineIntel family 6 model 85 \
             (Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz), \
             this host is AuthenticAMD family 25 model 1 (AMD EPYC 7R13 Processor)"
        );
        let other_model = CpuIdentity {
            model: 106,
            ..xeon()
        };
        assert!(matches!(
            xeon().compatibility(&other_model),
            Err(CpuMismatch::Processor { .. })
        ));
    }

    #[test]
    fn missing_flags_are_listed_sorted() {
        let cpu = xeon();
        let here = CpuIdentity {
            flags: cpu
                .flags
                .iter()
                .filter(|f| !f.starts_with("avx512"))
                .cloned()
                .collect(),
            ..cpu.clone()
        };
        let err = cpu.compatibility(&here).unwrap_err();
        assert_eq!(
            err.to_string(),
            "this host's CPU lacks flags the snapshot's CPU had: \
             avx512_vnni, avx512bw, avx512cd, avx512dq, avx512f, avx512vl"
        );
        // Reversed roles: the host with more flags restores the other's snapshot.
        assert_eq!(here.compatibility(&cpu), Ok(()));
    }

    #[test]
    fn a_long_list_of_missing_flags_is_shortened() {
        let names: Vec<String> = (0..13).map(|i| format!("f{i:02}")).collect();
        let snap = CpuIdentity {
            flags: names.clone(),
            ..xeon()
        };
        let err = snap.compatibility(&with_flags(&snap, &[])).unwrap_err();
        assert_eq!(
            err,
            CpuMismatch::MissingFlags {
                missing: names.clone()
            }
        );
        assert_eq!(
            err.to_string(),
            "this host's CPU lacks flags the snapshot's CPU had: \
             f00, f01, f02, f03, f04, f05, f06, f07, f08, f09 and 3 more"
        );
    }

    #[test]
    fn identity_round_trips_through_json() {
        let cpu = xeon();
        let json = serde_json::to_string(&cpu).unwrap();
        assert_eq!(serde_json::from_str::<CpuIdentity>(&json).unwrap(), cpu);
    }
}
