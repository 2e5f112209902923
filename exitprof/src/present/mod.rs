//! Presenters: turn a [`crate::model::Snapshot`] (or a recording, or a
//! guest report) into text for people. They never touch maps and do no
//! I/O.
pub mod chart;
pub mod events;
pub mod guest;
pub mod report;
pub mod table;

use crate::model::ExitRow;

/// `1.23 us`, `45.6 ms`, `2.00 s`: three significant digits.
#[must_use]
pub fn duration(ns: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    let v = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.2} us", v / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", v / 1e6)
    } else {
        format!("{:.2} s", v / 1e9)
    }
}

/// `part` as a percentage of `whole`, `0.00%` when `whole` is 0.
#[must_use]
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0.00%".to_owned();
    }
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    let p = part as f64 * 100.0 / whole as f64;
    format!("{p:.2}%")
}

/// The measured columns of an exit row, as every presenter shows them:
/// count%, total time, time%, avg, min, max.
#[must_use]
pub fn exit_columns(row: &ExitRow, total: u64, total_ns: u64) -> [String; 6] {
    // Exits whose entry never came (the VM ended) have no time: "-".
    let time = |ns| {
        if row.timed == 0 {
            "-".to_owned()
        } else {
            duration(ns)
        }
    };
    [
        percent(row.count, total),
        time(row.total_ns),
        percent(row.total_ns, total_ns),
        time(row.avg_ns()),
        time(row.min_ns),
        time(row.max_ns),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_percentages() {
        assert_eq!(duration(0), "0 ns");
        assert_eq!(duration(999), "999 ns");
        assert_eq!(duration(1_234), "1.23 us");
        assert_eq!(duration(45_600_000), "45.60 ms");
        assert_eq!(duration(2_000_000_000), "2.00 s");
        assert_eq!(percent(1, 3), "33.33%");
        assert_eq!(percent(5, 0), "0.00%");
    }
}
