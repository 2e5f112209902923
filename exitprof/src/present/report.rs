//! A recording for people: the comparison table and CSV rows of
//! `exitprof report` (the chart is `chart.rs`).
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
}
