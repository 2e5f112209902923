//! Two runs of a recording side by side: per reason, their counts and
//! times, ordered by impact, and the one-line summary.
use std::collections::BTreeMap;

use exitprof_common::Isa;
use serde::Serialize;

use super::{recording::Recording, status::isa_name};

/// One reason in two runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Compared {
    /// The isa whose table names `reason`.
    #[serde(with = "isa_name")]
    pub isa: Isa,
    /// Raw code.
    pub reason: u32,
    /// Name.
    pub name: String,
    /// Exits in run A and B.
    pub count: [u64; 2],
    /// Time in exits in run A and B.
    pub total_ns: [u64; 2],
}

impl Compared {
    /// B's time minus A's.
    #[must_use]
    pub fn time_diff_ns(&self) -> i128 {
        i128::from(self.total_ns[1]) - i128::from(self.total_ns[0])
    }
}

/// `b / a` as text: "3.00x", "new" when a is 0, "-" when both are.
#[must_use]
pub fn ratio(a: u64, b: u64) -> String {
    match (a, b) {
        (0, 0) => "-".to_owned(),
        (0, _) => "new".to_owned(),
        #[expect(clippy::cast_precision_loss, reason = "display only")]
        _ => format!("{:.2}x", b as f64 / a as f64),
    }
}

/// The per-reason comparison of the first two runs, by impact (|time
/// difference|, then count difference).
#[must_use]
pub fn compare(recording: &Recording) -> Vec<Compared> {
    let mut by_reason: BTreeMap<(Isa, u32), Compared> = BTreeMap::new();
    for (i, run) in recording.runs.iter().take(2).enumerate() {
        for row in run.total.reason_rows() {
            let c = by_reason
                .entry((row.isa, row.reason))
                .or_insert_with(|| Compared {
                    isa: row.isa,
                    reason: row.reason,
                    name: row.name.clone(),
                    count: [0; 2],
                    total_ns: [0; 2],
                });
            c.count[i] = row.count;
            c.total_ns[i] = row.total_ns;
        }
    }
    let mut rows: Vec<Compared> = by_reason.into_values().collect();
    rows.sort_by(|a, b| {
        b.time_diff_ns()
            .abs()
            .cmp(&a.time_diff_ns().abs())
            .then((b.count[1].abs_diff(b.count[0])).cmp(&a.count[1].abs_diff(a.count[0])))
            .then(a.name.cmp(&b.name))
    });
    rows
}

/// "shadow paging vs nested paging: 3.40x the exits, 10.67x the time; top:
/// PF excp, `write_cr3`, npf".
#[must_use]
pub fn summary(recording: &Recording, rows: &[Compared]) -> Option<String> {
    let [a, b] = [recording.runs.first()?, recording.runs.get(1)?];
    let top: Vec<&str> = rows.iter().take(3).map(|r| r.name.as_str()).collect();
    Some(format!(
        "{} paging vs {} paging: {} the exits, {} the time; top: {}",
        b.mode.name(),
        a.mode.name(),
        ratio(a.total.total_exits(), b.total.total_exits()),
        ratio(a.total.total_exit_ns(), b.total.total_exit_ns()),
        top.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::recording::tests::sample;

    #[test]
    fn comparison_by_impact_with_summary() {
        let r = sample();
        let rows = compare(&r);
        let names: Vec<&str> = rows.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["PF excp", "write_cr3", "npf", "cpuid"]);
        assert_eq!(rows[2].count, [10, 0]);
        assert_eq!(
            summary(&r, &rows).unwrap(),
            "shadow paging vs nested paging: 1.73x the exits, 7.33x the time; top: PF excp, write_cr3, npf"
        );
    }
}
