//! The human tables of `exitprof stat` (and `top --once`): VM exits like
//! `perf kvm stat report`, the exit sites, then the exit-handler events
//! (under their exit reasons where exits are seen).
use std::fmt::Write as _;

use crate::{
    model::{PerSecond, SiteRow, Snapshot},
    present::{
        duration,
        events::{USERSPACE_TITLE, event_groups},
        exit_columns, percent,
    },
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
    let _ = writeln!(out, "rates: {}", rates_line(snapshot));
    if let Some(note) = snapshot.backend.vmexit_note() {
        let _ = writeln!(out, "note: {note}");
    }
    if !snapshot.attach_note.is_empty() {
        let _ = writeln!(out, "attach: {}", snapshot.attach_note);
    }
    if let Some(mirror) = snapshot.guest_mirror {
        let _ = writeln!(
            out,
            "guest mirror: {}",
            mirror.describe(snapshot.guest_mirror_scope)
        );
    }
    out.push('\n');
    if snapshot.vmexit_available {
        render_exits(&mut out, snapshot);
    }
    render_sites(&mut out, snapshot, SITES_PER_REASON);
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

/// `12.5 exits/s, 3.0 events/s`; where exits cannot be seen, only events.
#[must_use]
pub fn rates_line(snapshot: &Snapshot) -> String {
    let events = format!("{} events/s", rate(snapshot.events_per_s));
    match snapshot.exits_per_s {
        Some(exits) => format!("{} exits/s, {events}", rate(exits)),
        None => events,
    }
}

/// A rate for a table: whole numbers from 100/s, one decimal from 1/s,
/// two below (a rare event is not "0").
#[must_use]
pub fn rate(r: PerSecond) -> String {
    if r.0 >= 100.0 {
        format!("{:.0}", r.0)
    } else if r.0 >= 1.0 {
        format!("{:.1}", r.0)
    } else {
        format!("{:.2}", r.0)
    }
}

fn render_exits(out: &mut String, snapshot: &Snapshot) {
    let total = snapshot.total_exits();
    let total_ns = snapshot.total_exit_ns();
    let mut rows: Vec<_> = snapshot.reason_rows().collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
    let _ = writeln!(
        out,
        "{:<28} {:>10} {:>10} {:>8} {:>11} {:>8} {:>10} {:>10} {:>10}",
        "VM-EXIT", "COUNT", "RATE/s", "COUNT%", "TIME", "TIME%", "AVG", "MIN", "MAX"
    );
    for r in &rows {
        let label = format!("{} ({:#x})", r.name, r.reason);
        let [count_pct, time, time_pct, avg, min, max] = exit_columns(r, total, total_ns);
        let _ = writeln!(
            out,
            "{label:<28} {:>10} {:>10} {count_pct:>8} {time:>11} {time_pct:>8} {avg:>10} {min:>10} {max:>10}",
            r.count,
            rate(r.rate_per_s),
        );
    }
    let _ = writeln!(
        out,
        "{:<28} {:>10} {:>10} {:>8} {:>11}\n",
        "total",
        total,
        snapshot.exits_per_s.map(rate).unwrap_or_default(),
        "",
        duration(total_ns)
    );
    let breakdown: Vec<_> = snapshot.exits.iter().filter(|r| r.pid.is_some()).collect();
    if !breakdown.is_empty() {
        let _ = writeln!(
            out,
            "{:>8} {:<16} {:>5} {:<28} {:>10} {:>11} {:>10}",
            "PID", "VM", "VCPU", "VM-EXIT", "COUNT", "TIME", "AVG"
        );
        for r in breakdown {
            let _ = writeln!(
                out,
                "{:>8} {:<16} {:>5} {:<28} {:>10} {:>11} {:>10}",
                r.pid.unwrap_or_default(),
                r.vm.as_deref().unwrap_or("-"),
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

/// Sites shown per reason in the `stat` report.
pub const SITES_PER_REASON: usize = 10;

/// The exit sites (`--sites`): per reason, the `per_reason` sites with the
/// most exits, each with its share of the reason's sites.
pub fn render_sites(out: &mut String, snapshot: &Snapshot, per_reason: usize) {
    if snapshot.sites.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "{:<44} {:<16} {:>10} {:>10} {:>8} {:>11} {:>10}",
        "EXIT SITE (GUEST RIP)", "VM", "COUNT", "RATE/s", "COUNT%", "TIME", "AVG"
    );
    let mut reasons: Vec<(String, u64)> = Vec::new();
    for s in &snapshot.sites {
        let label = format!("{} ({:#x})", s.name, s.reason);
        match reasons.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += s.count,
            None => reasons.push((label, s.count)),
        }
    }
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for (label, total) in &reasons {
        let mut sites: Vec<&SiteRow> = snapshot
            .sites
            .iter()
            .filter(|s| format!("{} ({:#x})", s.name, s.reason) == *label)
            .collect();
        sites.sort_by(|a, b| b.count.cmp(&a.count).then(a.key().cmp(&b.key())));
        let _ = writeln!(out, "{label:<44} {:<16} {total:>10}", "");
        for s in sites.iter().take(per_reason) {
            let _ = writeln!(
                out,
                "{:<44} {:<16} {:>10} {:>10} {:>8} {:>11} {:>10}",
                site_label(s),
                s.vm.as_deref().unwrap_or("-"),
                s.count,
                rate(s.rate_per_s),
                percent(s.count, *total),
                untimed_or(s.timed, duration(s.total_ns)),
                untimed_or(s.timed, duration(s.avg_ns())),
            );
        }
        if sites.len() > per_reason {
            let rest: u64 = sites[per_reason..].iter().map(|s| s.count).sum();
            let _ = writeln!(
                out,
                "  ({} more sites, {rest} exits)",
                sites.len() - per_reason
            );
        }
    }
    out.push('\n');
}

/// `time`, or `-` when no exit was timed (the VM ended before re-entry).
fn untimed_or(timed: u64, time: String) -> String {
    if timed == 0 { "-".to_owned() } else { time }
}

/// `  0xffffffff81001012 native_cpuid+0x12`, or the RIP alone.
#[must_use]
pub fn site_label(site: &SiteRow) -> String {
    match &site.symbol {
        Some(symbol) => format!("  {:#018x} {symbol}", site.rip),
        None => format!("  {:#018x}", site.rip),
    }
}

/// The exit-handler event tables (one per kind of the event-kind table
/// that saw events, under its exit reason where exits are seen), then the
/// userspace exits; a section without rows is left out, and when all are,
/// one line says so.
pub fn render_events(out: &mut String, snapshot: &Snapshot) {
    let groups: Vec<_> = event_groups(snapshot)
        .into_iter()
        .filter(|g| !g.lines.is_empty())
        .collect();
    if groups.is_empty() {
        out.push_str(
            "no exit-handler events (cpuid, pio, mmio, msr, hypercall, userspace exits)\n\n",
        );
    }
    for group in groups {
        if group.title == USERSPACE_TITLE {
            let _ = writeln!(
                out,
                "{:<44} {:>10} {:>10} {:>12} {:>12}",
                group.title, "COUNT", "RATE/s", "AVG VMM RT", "MAX VMM RT"
            );
            for l in &group.lines {
                let _ = writeln!(
                    out,
                    "{:<44} {:>10} {:>10} {:>12} {:>12}",
                    l.label,
                    l.count,
                    rate(l.rate),
                    duration(l.avg_ns()),
                    duration(l.max_ns())
                );
            }
            out.push('\n');
            continue;
        }
        let title = match &group.parent {
            Some(p) => format!("{} under {}", group.title, p.label),
            None => group.title.to_owned(),
        };
        let _ = writeln!(out, "{title:<44} {:>10} {:>10}", "COUNT", "RATE/s");
        for l in &group.lines {
            let _ = writeln!(out, "{:<44} {:>10} {:>10}", l.label, l.count, rate(l.rate));
        }
        out.push('\n');
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
            ..Default::default()
        }];
        s.events.pio = vec![PioRow {
            port: 0xe9,
            write: true,
            size: 1,
            count: 7,
            ..Default::default()
        }];
        s.events.userspace_exit = vec![UserspaceExitRow {
            reason: 2,
            name: "IO".into(),
            count: 7,
            roundtrips: 7,
            roundtrip_total_ns: 7_000,
            roundtrip_max_ns: 2_500,
            ..Default::default()
        }];
        s.fill_rates();
        s
    }

    #[test]
    fn exits_sorted_by_count_with_exact_columns() {
        let text = render(&snapshot(), "all processes");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..8],
            [
                "exitprof: backend svm, all processes counted over 1.50 s (classic tracepoints)",
                "rates: 2.7 exits/s, 6.7 events/s",
                "",
                "VM-EXIT                           COUNT     RATE/s   COUNT%        TIME    TIME%        AVG        MIN        MAX",
                "cpuid (0x72)                          3        2.0   75.00%     3.00 us   50.00%    1.00 us     500 ns    2.00 us",
                "hlt (0x78)                            1       0.67   25.00%     3.00 us   50.00%    3.00 us    3.00 us    3.00 us",
                "total                                 4        2.7              6.00 us",
                "",
            ]
        );
        // The events drill down under their exit reason where it is seen.
        assert!(
            text.contains(
                "\nCPUID LEAF/SUBLEAF under cpuid (0x72)             COUNT     RATE/s\n\
             0x00000000/0x0                                        3        2.0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "\nI/O PORT                                          COUNT     RATE/s\n\
             0x00e9 out 1B                                         7        4.7\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "\nIO                                                    7        4.7      1.00 us      2.50 us\n"
        ), "{text}");
        assert!(text.ends_with("dropped: 0\n"));
    }

    #[test]
    fn per_vcpu_rows_and_sites_name_their_vm() {
        let mut s = snapshot();
        s.exits.push(ExitRow {
            isa: Isa::Svm,
            reason: 0x72,
            name: "cpuid".into(),
            pid: Some(4242),
            vcpu: Some(1),
            count: 3,
            timed: 3,
            total_ns: 3_000,
            vm: Some("web1".into()),
            ..ExitRow::default()
        });
        let site = |rip, count, symbol: Option<&str>| SiteRow {
            isa: Isa::Svm,
            reason: 0x72,
            name: "cpuid".into(),
            pid: 4242,
            vm: Some("web1".into()),
            rip,
            symbol: symbol.map(Into::into),
            count,
            timed: count,
            total_ns: count * 1_000,
            max_ns: 1_000,
            rate_per_s: PerSecond::default(),
        };
        s.sites = vec![
            site(0xffff_ffff_8103_6a32, 2, Some("native_cpuid+0x12")),
            site(0x40_1000, 1, None),
        ];
        s.fill_rates();
        let text = render(&s, "all processes");
        assert!(text.contains(
            "\n     PID VM                VCPU VM-EXIT                           COUNT        TIME        AVG\n\
             \x20   4242 web1                 1 cpuid (0x72)                          3     3.00 us    1.00 us\n"
        ), "{text}");
        assert!(text.contains(
            "\nEXIT SITE (GUEST RIP)                        VM                    COUNT     RATE/s   COUNT%        TIME        AVG\n\
             cpuid (0x72)                                                           3\n\
             \x20 0xffffffff81036a32 native_cpuid+0x12       web1                      2        1.3   66.67%     2.00 us    1.00 us\n\
             \x20 0x0000000000401000                         web1                      1       0.67   33.33%     1.00 us    1.00 us\n"
        ), "{text}");
        let mut few = String::new();
        render_sites(&mut few, &s, 1);
        assert!(few.contains("\n  (1 more sites, 1 exits)\n"), "{few}");
    }

    #[test]
    fn untimed_exits_show_no_time() {
        let mut s = snapshot();
        s.exits[0].timed = 0;
        s.exits[0].total_ns = 0;
        let text = render(&s, "all processes");
        assert!(
            text.contains(
                "\nhlt (0x78)                            1       0.67   25.00%           -    0.00%          -          -          -\n"
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
        s.fill_rates();
        let text = render(&s, "pid 42 and its children");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1], "rates: 6.7 events/s",
            "no exit rate where none can be seen"
        );
        assert!(lines[2].starts_with(
            "note: this host's KVM backend is PVM: kvm_exit/kvm_entry are not emitted there"
        ));
        assert!(!text.contains("VM-EXIT"));
        assert!(
            text.contains("\nCPUID LEAF/SUBLEAF                                COUNT     RATE/s\n")
        );
    }
}
