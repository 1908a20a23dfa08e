//! Human views of VM types' templates: the `template ls` table and the
//! record `template build` prints.

use tfc_api::{StartStats, TemplateInfo, TemplateStatus};

use super::ms_f64;
use crate::table::{Align, Fields, Table};

/// `template ls`: one row per VM type and start method measured, so the
/// times line up; a type's own columns are filled on its first row only.
pub fn list(templates: &[TemplateInfo]) -> String {
    let mut templates: Vec<&TemplateInfo> = templates.iter().collect();
    templates.sort_by(|a, b| a.vm_type.cmp(&b.vm_type));
    let mut table = Table::new(&[
        ("TYPE", Align::Left),
        ("STATUS", Align::Left),
        ("SNAPSHOT", Align::Left),
        ("METHOD", Align::Left),
        ("STARTS", Align::Right),
        ("MEDIAN", Align::Right),
        ("MIN", Align::Right),
        ("MAX", Align::Right),
        ("REASON", Align::Left),
    ]);
    for template in templates {
        let mut first = vec![
            template.vm_type.clone(),
            status(template.status).to_owned(),
            template.snapshot.clone().unwrap_or_else(|| "-".to_owned()),
        ];
        let reason = template.reason.clone().unwrap_or_default();
        let mut starts = template.starts.iter();
        match starts.next() {
            Some(stats) => first.extend(stats_cells(stats)),
            None => first.extend(["-", "-", "-", "-", "-"].map(str::to_owned)),
        }
        first.push(reason);
        table.push(first);
        for stats in starts {
            let mut row = vec![String::new(); 3];
            row.extend(stats_cells(stats));
            row.push(String::new());
            table.push(row);
        }
    }
    table.to_string()
}

/// After `template build`: the template's record, one line per start method.
pub fn detail(template: &TemplateInfo) -> String {
    let mut fields = Fields::default();
    fields.push("type", template.vm_type.as_str());
    fields.push("status", status(template.status));
    fields.push(
        "snapshot",
        template.snapshot.as_deref().unwrap_or("-").to_owned(),
    );
    if let Some(reason) = &template.reason {
        fields.push("reason", reason.as_str());
    }
    let starts = if template.starts.is_empty() {
        "none measured yet".to_owned()
    } else {
        let lines: Vec<String> = template.starts.iter().map(stats_line).collect();
        lines.join("\n")
    };
    fields.push("starts", starts);
    fields.to_string()
}

fn stats_cells(stats: &StartStats) -> [String; 5] {
    [
        stats.method.to_string(),
        stats.count.to_string(),
        ms_f64(stats.median_ms),
        ms_f64(stats.min_ms),
        ms_f64(stats.max_ms),
    ]
}

/// `cold_boot 27012.0ms median (min 26900.4ms, max 27100.9ms, n=3)`.
fn stats_line(stats: &StartStats) -> String {
    format!(
        "{} {} median (min {}, max {}, n={})",
        stats.method,
        ms_f64(stats.median_ms),
        ms_f64(stats.min_ms),
        ms_f64(stats.max_ms),
        stats.count
    )
}

fn status(status: TemplateStatus) -> &'static str {
    match status {
        TemplateStatus::Missing => "missing",
        TemplateStatus::Building => "building",
        TemplateStatus::Ready => "ready",
        TemplateStatus::Stale => "stale",
        TemplateStatus::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use tfc_core::StartMethod;

    use super::*;

    fn stats(method: StartMethod, count: u64, [min_ms, median_ms, max_ms]: [f64; 3]) -> StartStats {
        StartStats {
            method,
            count,
            min_ms,
            median_ms,
            max_ms,
        }
    }

    fn templates() -> Vec<TemplateInfo> {
        vec![
            TemplateInfo {
                vm_type: "small".to_owned(),
                status: TemplateStatus::Stale,
                snapshot: Some("snap-bb".to_owned()),
                reason: Some("kernel changed".to_owned()),
                starts: vec![],
            },
            TemplateInfo {
                vm_type: "default".to_owned(),
                status: TemplateStatus::Ready,
                snapshot: Some("snap-aa".to_owned()),
                reason: None,
                starts: vec![
                    stats(StartMethod::ColdBoot, 3, [26_950.2, 27_012.0, 27_431.9]),
                    stats(StartMethod::Restore, 12, [9.8, 11.5, 14.25]),
                ],
            },
        ]
    }

    #[test]
    fn list_has_a_row_per_measured_method_under_its_type() {
        assert_eq!(
            list(&templates()),
            "TYPE     STATUS  SNAPSHOT  METHOD     STARTS     MEDIAN        MIN        MAX  REASON\n\
             default  ready   snap-aa   cold_boot       3  27012.0ms  26950.2ms  27431.9ms\n\
             \x20                          restore        12     11.5ms      9.8ms     14.2ms\n\
             small    stale   snap-bb   -               -          -          -          -  kernel changed\n"
        );
        assert_eq!(
            list(&[]),
            "TYPE  STATUS  SNAPSHOT  METHOD  STARTS  MEDIAN  MIN  MAX  REASON\n"
        );
    }

    #[test]
    fn detail_has_a_line_per_method() {
        let [_, default] = templates().try_into().unwrap();
        assert_eq!(
            detail(&default),
            "type:     default\n\
             status:   ready\n\
             snapshot: snap-aa\n\
             starts:   cold_boot 27012.0ms median (min 26950.2ms, max 27431.9ms, n=3)\n          \
                       restore 11.5ms median (min 9.8ms, max 14.2ms, n=12)\n"
        );
        let [small, _] = templates().try_into().unwrap();
        let text = detail(&small);
        assert!(
            text.contains("reason:   kernel changed\nstarts:   none measured yet\n"),
            "{text}"
        );
    }
}
