//! A recording for people: the comparison table, CSV rows and the SVG
//! chart of `exitprof report`.
use std::fmt::Write as _;

use crate::{
    model::{
        comparison::{Compared, ratio},
        recording::Recording,
    },
    present::duration,
};

/// The comparison table.
#[must_use]
pub fn comparison_text(recording: &Recording, rows: &[Compared]) -> String {
    let (a, b) = (recording.runs[0].mode.name(), recording.runs[1].mode.name());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:>10} {:>10} {:>8} {:>11} {:>11} {:>8} {:>12}",
        "VM-EXIT",
        format!("{a} N"),
        format!("{b} N"),
        "RATIO",
        format!("{a} T"),
        format!("{b} T"),
        "RATIO",
        "T DIFF"
    );
    for r in rows {
        let diff = r.time_diff_ns();
        let sign = if diff < 0 { "-" } else { "+" };
        let _ = writeln!(
            out,
            "{:<28} {:>10} {:>10} {:>8} {:>11} {:>11} {:>8} {:>12}",
            format!("{} ({:#x})", r.name, r.reason),
            r.count[0],
            r.count[1],
            ratio(r.count[0], r.count[1]),
            duration(r.total_ns[0]),
            duration(r.total_ns[1]),
            ratio(r.total_ns[0], r.total_ns[1]),
            format!(
                "{sign}{}",
                duration(u64::try_from(diff.unsigned_abs()).unwrap_or(u64::MAX))
            )
        );
    }
    out
}

/// One CSV row per run and reason.
#[must_use]
pub fn csv(recording: &Recording) -> String {
    let mut out = String::from("mode,paging,isa,reason,name,count,total_ns,avg_ns,min_ns,max_ns\n");
    for run in &recording.runs {
        for r in run.total.reason_rows() {
            let _ = writeln!(
                out,
                "{},{},{},{},\"{}\",{},{},{},{},{}",
                run.mode.name(),
                run.paging.as_deref().unwrap_or(""),
                r.isa.name(),
                r.reason,
                r.name,
                r.count,
                r.total_ns,
                r.avg_ns(),
                r.min_ns,
                r.max_ns
            );
        }
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A grouped bar chart (exits per reason, one bar per run) of the `rows`
/// with the most impact, as SVG.
#[must_use]
pub fn svg(recording: &Recording, rows: &[Compared]) -> String {
    const COLORS: [&str; 2] = ["#4e79a7", "#e15759"];
    let rows: Vec<&Compared> = rows.iter().take(12).collect();
    let runs: Vec<&str> = recording
        .runs
        .iter()
        .take(2)
        .map(|r| r.mode.name())
        .collect();
    let max = rows.iter().flat_map(|r| r.count).max().unwrap_or(1).max(1);
    let (left, top, plot_h, group_w, bar_w) = (70u64, 50u64, 300u64, 90u64, 32u64);
    let width = left + group_w * u64::try_from(rows.len()).unwrap_or(1) + 40;
    let height = top + plot_h + 90;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="{width}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{left}" y="24" font-size="16" font-weight="bold">VM exits per reason: {}</text>"#,
        escape(
            &runs
                .iter()
                .map(|r| format!("{r} paging"))
                .collect::<Vec<_>>()
                .join(" vs ")
        )
    );
    let base = top + plot_h;
    let _ = writeln!(
        out,
        r#"<line x1="{left}" y1="{base}" x2="{}" y2="{base}" stroke="black"/>"#,
        width - 20
    );
    let _ = writeln!(out, r#"<text x="10" y="{top}" class="axis">{max}</text>"#);
    let _ = writeln!(out, r#"<text x="10" y="{base}" class="axis">0</text>"#);
    for (g, r) in rows.iter().enumerate() {
        let gx = left + group_w * u64::try_from(g).unwrap_or(0) + 10;
        for (i, count) in r.count.iter().enumerate().take(runs.len()) {
            let h = count * plot_h / max;
            let x = gx + bar_w * u64::try_from(i).unwrap_or(0);
            let _ = writeln!(
                out,
                r#"<rect class="bar" data-reason="{}" data-run="{}" x="{x}" y="{}" width="{}" height="{h}" fill="{}"><title>{}: {count}</title></rect>"#,
                escape(&r.name),
                runs[i],
                base - h,
                bar_w - 4,
                COLORS[i],
                escape(&r.name)
            );
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}" text-anchor="middle" font-size="10">{count}</text>"#,
                x + (bar_w - 4) / 2,
                base - h - 3
            );
        }
        let _ = writeln!(
            out,
            r#"<text class="label" x="{}" y="{}" text-anchor="end" transform="rotate(-35 {} {})">{}</text>"#,
            gx + bar_w,
            base + 16,
            gx + bar_w,
            base + 16,
            escape(&r.name)
        );
    }
    for (i, run) in runs.iter().enumerate() {
        let y = height - 20;
        let x = left + 160 * u64::try_from(i).unwrap_or(0);
        let _ = writeln!(
            out,
            r#"<g class="legend"><rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{y}">{run} paging</text></g>"#,
            y - 10,
            COLORS[i],
            x + 18
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{comparison::compare, recording::tests::sample};

    #[test]
    fn comparison_table_by_impact() {
        let r = sample();
        let rows = compare(&r);
        let text = comparison_text(&r, &rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "VM-EXIT                        nested N   shadow N    RATIO    nested T    shadow T    RATIO       T DIFF"
        );
        assert_eq!(
            lines[1],
            "PF excp (0x4e)                        0         40      new        0 ns     8.00 ms      new     +8.00 ms"
        );
        assert_eq!(
            lines[3],
            "npf (0x400)                          10          0    0.00x   500.00 us        0 ns    0.00x   -500.00 us"
        );
        assert_eq!(
            lines[4],
            "cpuid (0x72)                        100        100    1.00x     1.00 ms     1.00 ms    1.00x        +0 ns"
        );
    }

    #[test]
    fn csv_rows_per_run_and_reason() {
        let text = csv(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "mode,paging,isa,reason,name,count,total_ns,avg_ns,min_ns,max_ns"
        );
        assert_eq!(
            lines[1],
            "nested,npt=1,svm,114,\"cpuid\",100,1000000,10000,1,1000000"
        );
        assert_eq!(lines.len(), 1 + 2 + 3);
        assert_eq!(
            lines[5],
            "shadow,npt=0,svm,78,\"PF excp\",40,8000000,200000,1,8000000"
        );
    }

    #[test]
    fn svg_has_bars_labels_and_legend() {
        let r = sample();
        let text = svg(&r, &compare(&r));
        assert!(text.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(text.trim_end().ends_with("</svg>"));
        assert_eq!(
            text.matches("<rect class=\"bar\"").count(),
            8,
            "4 reasons x 2 runs"
        );
        assert!(text.contains(
            r#"data-reason="PF excp" data-run="shadow" x="112" y="230" width="28" height="120""#
        ));
        assert_eq!(text.matches("class=\"label\"").count(), 4);
        assert!(text.contains(">nested paging</text>") && text.contains(">shadow paging</text>"));
    }
}
