//! `exitprof guest`'s table, like `perf kvm stat report`.
use std::fmt::Write as _;

use crate::{guest::GuestReport, present::percent};

/// The table, like `perf kvm stat report`.
#[must_use]
pub fn render(report: &GuestReport) -> String {
    let mut out = String::new();
    let whose = if report.scope == "host" {
        "every VM on the host (host-wide scope)"
    } else {
        "this VM's own"
    };
    let _ = writeln!(
        out,
        "exitprof guest: hypervisor isa {}, exitprof ABI {}, exits of {whose}, cycles at this guest's TSC ({} kHz)",
        report.isa, report.abi_version, report.tsc_khz
    );
    let _ = writeln!(
        out,
        "total: {} exits, {} cycles in exits",
        report.total_exits, report.total_cycles
    );
    out.push('\n');
    let _ = writeln!(
        out,
        "{:>10}  {:<24} {:>10} {:>8} {:>14} {:>8} {:>10}",
        "REASON", "NAME", "EXITS", "EXITS%", "CYCLES", "CYCLES%", "AVG CYC"
    );
    for r in &report.reasons {
        let _ = writeln!(
            out,
            "{:>10}  {:<24} {:>10} {:>8} {:>14} {:>8} {:>10}",
            format!("{:#x}", r.reason),
            r.name,
            r.exits,
            percent(r.exits, report.total_exits),
            r.cycles,
            percent(r.cycles, report.total_cycles),
            r.cycles.checked_div(r.exits).unwrap_or(0)
        );
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "note: this report took {} CPUID exits, counted in its CPUID row",
        report.queries
    );
    if !report.not_counted_by_host.is_empty() {
        let codes: Vec<String> = report
            .not_counted_by_host
            .iter()
            .map(|c| format!("{c:#x}"))
            .collect();
        let _ = writeln!(
            out,
            "note: the host's kernel does not count {} reason(s) exitprof knows: {}",
            codes.len(),
            codes.join(", ")
        );
    }
    out
}
