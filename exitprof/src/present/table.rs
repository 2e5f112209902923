//! The human tables of `exitprof stat` (and `top --once`): VM exits like
//! `perf kvm stat report`, then the exit-handler events.
use std::fmt::Write as _;

use crate::{
    model::{
        Snapshot,
        events::{EventKind, EventVisitor},
    },
    present::{duration, exit_columns},
};

/// Renders `snapshot` as the `stat` report. `scope` says what was counted
/// (e.g. "pid 1234 and its children", "all processes").
#[must_use]
pub fn render(snapshot: &Snapshot, scope: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "exitprof: backend {}, {} counted over {} ({} tracepoints)",
        snapshot.backend.name(),
        scope,
        duration(snapshot.interval_ns),
        snapshot.attach_mode.name(),
    );
    if let Some(note) = snapshot.backend.vmexit_note() {
        let _ = writeln!(out, "note: {note}");
    }
    if !snapshot.attach_note.is_empty() {
        let _ = writeln!(out, "attach: {}", snapshot.attach_note);
    }
    if let Some(mirror) = snapshot.guest_mirror {
        let _ = writeln!(out, "guest mirror: {}", mirror.describe());
    }
    out.push('\n');
    if snapshot.vmexit_available {
        render_exits(&mut out, snapshot);
    }
    render_events(&mut out, snapshot);
    if !snapshot.programs.is_empty() {
        let _ = writeln!(
            out,
            "{:<36} {:>10} {:>12} {:>12}",
            "EXITPROF PROGRAM (OWN COST)", "RUNS", "PER RUN", "TOTAL"
        );
        for p in &snapshot.programs {
            let _ = writeln!(
                out,
                "{:<36} {:>10} {:>12} {:>12}",
                p.name,
                p.run_count,
                duration(p.ns_per_run()),
                duration(p.run_time_ns)
            );
        }
        out.push('\n');
    }
    let _ = writeln!(out, "dropped: {}", snapshot.dropped);
    out
}

fn render_exits(out: &mut String, snapshot: &Snapshot) {
    let total = snapshot.total_exits();
    let total_ns = snapshot.total_exit_ns();
    let mut rows: Vec<_> = snapshot.reason_rows().collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
    let _ = writeln!(
        out,
        "{:<28} {:>10} {:>8} {:>11} {:>8} {:>10} {:>10} {:>10}",
        "VM-EXIT", "COUNT", "COUNT%", "TIME", "TIME%", "AVG", "MIN", "MAX"
    );
    for r in &rows {
        let label = format!("{} ({:#x})", r.name, r.reason);
        let [count_pct, time, time_pct, avg, min, max] = exit_columns(r, total, total_ns);
        let _ = writeln!(
            out,
            "{label:<28} {:>10} {count_pct:>8} {time:>11} {time_pct:>8} {avg:>10} {min:>10} {max:>10}",
            r.count,
        );
    }
    let _ = writeln!(
        out,
        "{:<28} {:>10} {:>8} {:>11}\n",
        "total",
        total,
        "",
        duration(total_ns)
    );
    let breakdown: Vec<_> = snapshot.exits.iter().filter(|r| r.pid.is_some()).collect();
    if !breakdown.is_empty() {
        let _ = writeln!(
            out,
            "{:>8} {:>5} {:<28} {:>10} {:>11} {:>10}",
            "PID", "VCPU", "VM-EXIT", "COUNT", "TIME", "AVG"
        );
        for r in breakdown {
            let _ = writeln!(
                out,
                "{:>8} {:>5} {:<28} {:>10} {:>11} {:>10}",
                r.pid.unwrap_or_default(),
                r.vcpu.unwrap_or_default(),
                format!("{} ({:#x})", r.name, r.reason),
                r.count,
                duration(r.total_ns),
                duration(r.avg_ns()),
            );
        }
        out.push('\n');
    }
}

/// The exit-handler event tables (also the TUI's events view): one per
/// kind of the event-kind table that saw events, then the userspace
/// exits; a section without rows is left out, and when all are, one line
/// says so.
pub fn render_events(out: &mut String, snapshot: &Snapshot) {
    struct Tables<'a>(&'a mut String);
    impl EventVisitor for Tables<'_> {
        fn rows<K: EventKind>(&mut self, rows: &[K]) {
            if rows.is_empty() {
                return;
            }
            let _ = writeln!(self.0, "{:<36} {:>10}", K::TITLE, "COUNT");
            for r in rows {
                let _ = writeln!(self.0, "{:<36} {:>10}", r.label(), r.count());
            }
            self.0.push('\n');
        }
    }
    let e = &snapshot.events;
    let before = out.len();
    e.each(&mut Tables(out));
    if !e.userspace_exit.is_empty() {
        let _ = writeln!(
            out,
            "{:<36} {:>10} {:>12} {:>12}",
            "USERSPACE EXIT", "COUNT", "AVG VMM RT", "MAX VMM RT"
        );
        for r in &e.userspace_exit {
            let avg = r.roundtrip_total_ns.checked_div(r.roundtrips).unwrap_or(0);
            let _ = writeln!(
                out,
                "{:<36} {:>10} {:>12} {:>12}",
                r.name,
                r.count,
                duration(avg),
                duration(r.roundtrip_max_ns)
            );
        }
        out.push('\n');
    }
    if out.len() == before {
        out.push_str(
            "no exit-handler events (cpuid, pio, mmio, msr, hypercall, userspace exits)\n\n",
        );
    }
}

#[cfg(test)]
mod tests {
    use exitprof_common::Isa;

    use super::*;
    use crate::model::{Backend, CpuidRow, ExitRow, PioRow, UserspaceExitRow};

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::empty(Backend::Svm);
        s.interval_ns = 1_500_000_000;
        s.exits = vec![
            ExitRow {
                isa: Isa::Svm,
                reason: 0x78,
                name: "hlt".into(),
                count: 1,
                timed: 1,
                total_ns: 3_000,
                min_ns: 3_000,
                max_ns: 3_000,
                hist_log2_ns: vec![],
                ..ExitRow::default()
            },
            ExitRow {
                isa: Isa::Svm,
                reason: 0x72,
                name: "cpuid".into(),
                count: 3,
                timed: 3,
                total_ns: 3_000,
                min_ns: 500,
                max_ns: 2_000,
                hist_log2_ns: vec![],
                ..ExitRow::default()
            },
        ];
        s.events.cpuid = vec![CpuidRow {
            leaf: 0,
            subleaf: Some(0),
            count: 3,
        }];
        s.events.pio = vec![PioRow {
            port: 0xe9,
            write: true,
            size: 1,
            count: 7,
        }];
        s.events.userspace_exit = vec![UserspaceExitRow {
            reason: 2,
            name: "IO".into(),
            count: 7,
            roundtrips: 7,
            roundtrip_total_ns: 7_000,
            roundtrip_max_ns: 2_500,
        }];
        s
    }

    #[test]
    fn exits_sorted_by_count_with_exact_columns() {
        let text = render(&snapshot(), "all processes");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "exitprof: backend svm, all processes counted over 1.50 s (classic tracepoints)"
        );
        assert_eq!(lines[1], "");
        assert_eq!(
            lines[2],
            "VM-EXIT                           COUNT   COUNT%        TIME    TIME%        AVG        MIN        MAX"
        );
        assert_eq!(
            lines[3],
            "cpuid (0x72)                          3   75.00%     3.00 us   50.00%    1.00 us     500 ns    2.00 us"
        );
        assert_eq!(
            lines[4],
            "hlt (0x78)                            1   25.00%     3.00 us   50.00%    3.00 us    3.00 us    3.00 us"
        );
        assert_eq!(
            lines[5],
            "total                                 4              6.00 us"
        );
        assert!(text.contains("\n0x00000000/0x0                                3\n"));
        assert!(text.contains("\n0x00e9 out 1B                                 7\n"));
        assert!(text.contains(
            "\nIO                                            7      1.00 us      2.50 us\n"
        ));
        assert!(text.ends_with("dropped: 0\n"));
    }

    #[test]
    fn untimed_exits_show_no_time() {
        let mut s = snapshot();
        s.exits[0].timed = 0;
        s.exits[0].total_ns = 0;
        let text = render(&s, "all processes");
        assert!(
            text.contains(
                "\nhlt (0x78)                            1   25.00%           -    0.00%          -          -          -\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn empty_sections_are_left_out() {
        let text = render(&snapshot(), "all processes");
        assert!(!text.contains("HYPERCALL"), "{text}");
        assert!(!text.contains("MMIO GPA"), "{text}");
        let mut quiet = snapshot();
        quiet.events = crate::model::Events::default();
        let text = render(&quiet, "all processes");
        assert!(
            text.contains(
                "\nno exit-handler events (cpuid, pio, mmio, msr, hypercall, userspace exits)\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn pvm_says_why_there_are_no_exit_rows() {
        let mut s = snapshot();
        s.backend = Backend::Pvm;
        s.vmexit_available = false;
        s.exits.clear();
        let text = render(&s, "pid 42 and its children");
        assert!(text.lines().nth(1).unwrap().starts_with(
            "note: this host's KVM backend is PVM: kvm_exit/kvm_entry are not emitted there"
        ));
        assert!(!text.contains("VM-EXIT"));
        assert!(text.contains("CPUID LEAF/SUBLEAF"));
    }
}
