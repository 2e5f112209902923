//! The `vmexit-ground-truth` scenario: exitprof's per-reason counts
//! against ftrace's own `kvm_exit` records, in raw and in classic mode,
//! and the exit sites (`--sites`) of the workload's CPUID loop: one guest
//! RIP with exactly the workload's count, the same in both modes; and, on
//! SVM, `exitprof serve`'s per-VM counts against ftrace too (`serve.rs`).
use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use super::{
    common::Part,
    common::{
        By, CPUIDS, CountsBy, exit_counts, exit_counts_by_vcpu, expect, ftrace_counts,
        ftrace_counts_script, snapshot, total,
    },
};
use crate::sandbox::{Results, Vendor};

/// The scenario (its name is also its section in a shared boot).
pub(super) const PART: Part = Part {
    name: "vmexit-ground-truth",
    script,
    check,
};

/// `exitprof stat --by-vcpu -- exitprof vm --cpuid 5000` against ftrace's
/// own count of `kvm_exit` by vCPU and reason, in the same boot and the
/// same interval, in raw and in classic mode; then the table of a mixed
/// workload.
pub(super) fn script(vendor: Vendor) -> String {
    format!(
        r#"
T=/sys/kernel/tracing
echo "@@EXITPROF nested_paging $(cat /sys/module/{module}/parameters/{param})"
echo 16384 > $T/buffer_size_kb
echo > $T/trace
echo 1 > $T/events/kvm/kvm_exit/enable
timeout 120 exitprof stat --json --by-vcpu {raw_sites}-- exitprof vm --json --cpuid {CPUIDS} > /tmp/stat.out 2> /tmp/stat.err
echo "@@EXITPROF stat_rc $?"
echo 0 > $T/events/kvm/kvm_exit/enable
echo "@@EXITPROF vm $(head -n 1 /tmp/stat.out)"
echo "@@EXITPROF stat $(tail -n 1 /tmp/stat.out)"
while read -r l; do echo "@@EXITPROF stderr $l"; done < /tmp/stat.err
{ftrace}
echo > $T/trace
echo 1 > $T/events/kvm/kvm_exit/enable
timeout 120 exitprof stat --attach classic --json --by-vcpu --sites -- exitprof vm --json --cpuid {CPUIDS} > /tmp/classic.out 2> /tmp/classic.err
echo "@@EXITPROF classic_rc $?"
echo 0 > $T/events/kvm/kvm_exit/enable
echo "@@EXITPROF classic $(tail -n 1 /tmp/classic.out)"
while read -r l; do echo "@@EXITPROF classic_stderr $l"; done < /tmp/classic.err
{classic_ftrace}timeout 120 exitprof stat --json --cost -- exitprof vm --pio 300 --mmio 200 > /tmp/rt.out 2> /tmp/rt.err
echo "@@EXITPROF rt_rc $?"
echo "@@EXITPROF rt $(tail -n 1 /tmp/rt.out)"
while read -r l; do echo "@@EXITPROF rt_stderr $l"; done < /tmp/rt.err
timeout 120 exitprof stat --sites -- exitprof vm --cpuid 1000 --pio 50 --mmio 20 --hlt 5 > /tmp/table.out 2>&1
echo "@@EXITPROF table_rc $?"
while IFS= read -r l; do echo "@@EXITPROF table $l"; done < /tmp/table.out
{serve}"#,
        module = vendor.module(),
        param = vendor.paging_param(),
        raw_sites = if expect(vendor).raw_sites {
            "--sites "
        } else {
            ""
        },
        ftrace = ftrace_counts_script("", By::Vcpu),
        classic_ftrace = ftrace_counts_script("classic_", By::Vcpu),
        // exitprof serve against ftrace, on SVM (its boot is quick).
        serve = if vendor == Vendor::Svm {
            super::serve::script()
        } else {
            String::new()
        },
    )
}

/// The assertions on what [`script`] reported.
#[expect(
    clippy::too_many_lines,
    reason = "one scenario's assertions, read top to bottom"
)]
pub(super) fn check(vendor: Vendor, results: &Results) -> anyhow::Result<()> {
    let (module, param) = (vendor.module(), vendor.paging_param());
    ensure!(
        results.get("nested_paging")? == "Y",
        "{module} did not come up with {param}=1"
    );
    let snap = snapshot(results, "stat")?;
    ensure!(
        results.get("stat_rc")? == "0",
        "exitprof stat failed: {:?}",
        results.all("stderr")
    );
    ensure!(
        snap["backend"] == vendor.isa(),
        "backend {} (expected {vendor})",
        snap["backend"]
    );
    ensure!(
        snap["vmexit_available"] == true,
        "vmexit source not available"
    );
    ensure!(
        snap["attach_mode"] == "raw",
        "with the image's modules (which carry BTF) auto mode chose {} ({})",
        snap["attach_mode"],
        snap["attach_note"]
    );
    let ours = exit_counts(&snap);
    let truth_by_vcpu = ftrace_counts(results, "")?;
    let truth = total(&truth_by_vcpu);
    println!("[e2e] {:<28} {:>10} {:>10}", "reason", "exitprof", "ftrace");
    for name in ours
        .keys()
        .chain(truth.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        println!(
            "[e2e] {:<28} {:>10} {:>10}",
            name,
            ours.get(name).copied().unwrap_or(0),
            truth.get(name).copied().unwrap_or(0)
        );
    }
    let (code, name) = expect(vendor).cpuid;
    let cpuid = snap["exits"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["isa"] == vendor.isa() && r["reason"] == code && r.get("pid").is_none())
        .with_context(|| format!("no {vendor} {name} ({code:#x}) row"))?;
    ensure!(
        cpuid["name"] == name,
        "{code:#x} is named {} (the kernel: {name})",
        cpuid["name"]
    );
    ensure!(
        cpuid["count"] == CPUIDS,
        "cpuid count {} (expected exactly {CPUIDS})",
        cpuid["count"]
    );
    // Once the VM is quiet, the CPUID handler events (the drill-down under
    // cpuid) equal the cpuid exits of the same snapshot.
    let cpuid_events: u64 = snap["events"]["cpuid"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["count"].as_u64())
        .sum();
    ensure!(
        cpuid_events == CPUIDS,
        "{cpuid_events} CPUID events under {CPUIDS} cpuid exits"
    );
    if ours != truth {
        bail!(
            "exitprof's per-reason counts differ from ftrace's: exitprof {ours:?}, ftrace {truth:?}"
        );
    }
    for row in snap["exits"].as_array().into_iter().flatten() {
        let (timed, total, min, max) = (
            row["timed"].as_u64().unwrap_or(0),
            row["total_ns"].as_u64().unwrap_or(0),
            row["min_ns"].as_u64().unwrap_or(0),
            row["max_ns"].as_u64().unwrap_or(0),
        );
        if timed == 0 || row.get("pid").is_some() {
            continue;
        }
        let avg = total / timed;
        ensure!(
            total > 0 && min > 0 && min <= avg && avg <= max,
            "{}: durations out of order: min {min} avg {avg} max {max} total {total}",
            row["name"]
        );
        let hist: u64 = row["hist_log2_ns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .sum();
        ensure!(
            hist == timed,
            "{}: histogram holds {hist} of {timed} timed exits",
            row["name"]
        );
    }
    // The per-(process, vCPU) breakdown: ftrace's counts per vCPU, all of
    // them the workload's.
    let vm = snapshot(results, "vm")?;
    check_breakdown(&snap, Some(&vm), &truth_by_vcpu, "raw")?;
    ensure!(snap["dropped"] == 0, "dropped {}", snap["dropped"]);
    // The same workload with classic tracepoints: equal to ftrace as well.
    ensure!(
        results.get("classic_rc")? == "0",
        "exitprof stat --attach classic failed: {:?}",
        results.all("classic_stderr")
    );
    let classic = snapshot(results, "classic")?;
    ensure!(
        classic["attach_mode"] == "classic",
        "--attach classic ran in mode {}",
        classic["attach_mode"]
    );
    let classic_counts = exit_counts(&classic);
    let classic_by_vcpu = ftrace_counts(results, "classic_")?;
    let classic_truth = total(&classic_by_vcpu);
    ensure!(
        classic_counts == classic_truth,
        "classic mode: exitprof {classic_counts:?} != ftrace {classic_truth:?}"
    );
    check_breakdown(&classic, None, &classic_by_vcpu, "classic")?;
    ensure!(
        classic_counts.get(name) == ours.get(name),
        "{name}: classic {:?}, raw {:?}",
        classic_counts.get(name),
        ours.get(name)
    );
    println!("[e2e] classic mode: {classic_counts:?} (equal to ftrace)");
    check_roundtrips(results)?;
    ensure!(
        results.get("table_rc")? == "0",
        "the second exitprof stat run failed with {} (124: it hung and timeout ended it)",
        results.get("table_rc")?
    );
    for line in results.all("table") {
        println!("[e2e] | {line}");
    }
    let classic_rip = cpuid_site(vendor, &classic, "classic")?;
    let modes = if expect(vendor).raw_sites {
        let raw_rip = cpuid_site(vendor, &snap, "raw")?;
        ensure!(
            raw_rip == classic_rip,
            "the {name} loop is at {raw_rip:#x} by the raw program's guest RIP but at {classic_rip:#x} by the record's guest_rip (classic)"
        );
        "raw and classic"
    } else {
        "classic"
    };
    let heading = format!("{name} ({code:#x})");
    let table_sites = text_sites(&results.all("table"), &heading)?;
    ensure!(
        table_sites.len() == 1 && table_sites[0].1 == 1000,
        "stat --sites prints {table_sites:?} under {heading}, not one site with 1000"
    );
    if vendor == Vendor::Svm {
        super::serve::check(results)?;
    }
    println!(
        "[e2e] exit sites: the CPUID loop is one site, {classic_rip:#x}, with exactly {CPUIDS} exits ({modes}), and 1000 in the text table"
    );
    println!(
        "[e2e] {vendor} {}: PASS ({name} exactly {CPUIDS}, every reason and vCPU equal to ftrace, in raw and in classic mode; one {name} site with {CPUIDS})",
        PART.name
    );
    Ok(())
}

/// Userspace round trips where `kvm_entry` ends them: every port and
/// MMIO access of `exitprof vm --pio 300 --mmio 200` returned to the VMM
/// and came back, but the done port's, after which the VM stops; no
/// syscall tracepoint was attached; and the round trips fit inside the
/// exits (each exit's time runs from `kvm_exit` to `kvm_entry`, its round
/// trip from `kvm_userspace_exit` to the same `kvm_entry`).
fn check_roundtrips(results: &Results) -> anyhow::Result<()> {
    ensure!(
        results.get("rt_rc")? == "0",
        "exitprof stat -- exitprof vm --pio 300 --mmio 200 failed: {:?}",
        results.all("rt_stderr")
    );
    let snap = snapshot(results, "rt")?;
    let row = |name: &str| {
        snap["events"]["userspace_exit"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == name)
            .cloned()
            .with_context(|| format!("no {name} userspace exits in {snap}"))
    };
    let (io, mmio) = (row("IO")?, row("MMIO")?);
    ensure!(
        io["count"] == 601 && io["roundtrips"] == 600,
        "IO: {} returns to the VMM and {} round trips (expected 601 and 600)",
        io["count"],
        io["roundtrips"]
    );
    ensure!(
        mmio["count"] == 400 && mmio["roundtrips"] == 400,
        "MMIO: {} returns to the VMM and {} round trips (expected 400 and 400)",
        mmio["count"],
        mmio["roundtrips"]
    );
    let programs: Vec<&str> = snap["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    ensure!(
        programs.iter().any(|p| p.starts_with("kvm_entry"))
            && !programs.contains(&"sys_enter_ioctl"),
        "attached programs {programs:?}: kvm_entry ends round trips, sys_enter_ioctl must not be attached"
    );
    let ns = |v: &Value, field: &str| v[field].as_u64().unwrap_or(0);
    let roundtrips = ns(&io, "roundtrip_total_ns") + ns(&mmio, "roundtrip_total_ns");
    let exits: u64 = snap["exits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r.get("pid").is_none())
        .map(|r| ns(r, "total_ns"))
        .sum();
    ensure!(
        ns(&io, "roundtrip_total_ns") > 0
            && ns(&mmio, "roundtrip_total_ns") > 0
            && roundtrips <= exits,
        "round trips {roundtrips} ns (IO {}, MMIO {}) against {exits} ns in exits",
        ns(&io, "roundtrip_total_ns"),
        ns(&mmio, "roundtrip_total_ns")
    );
    println!(
        "[e2e] round trips: IO 601/600, MMIO 400/400, ended at kvm_entry ({programs:?}), {roundtrips} ns of {exits} ns in exits"
    );
    Ok(())
}

/// exitprof's per-(process, vCPU) rows against ftrace's counts per vCPU:
/// equal, and all of one process (the workload VM's, when `vm` is its
/// report).
fn check_breakdown(
    snap: &Value,
    vm: Option<&Value>,
    truth: &CountsBy,
    mode: &str,
) -> anyhow::Result<()> {
    let (ours, pids) = exit_counts_by_vcpu(snap);
    ensure!(
        ours == *truth,
        "{mode} mode: the vCPU breakdown {ours:?} differs from ftrace's {truth:?}"
    );
    ensure!(
        pids.len() == 1,
        "{mode} mode: the breakdown names processes {pids:?} (one VM ran)"
    );
    if let Some(vm) = vm {
        ensure!(
            vm["pid"] == pids[0],
            "{mode} mode: breakdown pid {} is not the workload's {}",
            pids[0],
            vm["pid"]
        );
    }
    Ok(())
}

/// The one CPUID site of a `--sites` snapshot of `exitprof vm --cpuid
/// N`: its RIP, after checking that it holds exactly the N CPUIDs.
fn cpuid_site(vendor: Vendor, snap: &Value, mode: &str) -> anyhow::Result<u64> {
    let code = expect(vendor).cpuid.0;
    let sites: Vec<&Value> = snap["sites"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["isa"] == vendor.isa() && s["reason"] == code)
        .collect();
    ensure!(
        sites.len() == 1,
        "{mode}: {} CPUID sites (expected the loop's one): {sites:?}",
        sites.len()
    );
    ensure!(
        sites[0]["count"] == CPUIDS && sites[0]["timed"] == CPUIDS,
        "{mode}: the CPUID site has {} exits ({} timed), not {CPUIDS}",
        sites[0]["count"],
        sites[0]["timed"]
    );
    sites[0]["rip"]
        .as_u64()
        .with_context(|| format!("{mode}: a site without a rip"))
}

/// `(rip, count)` of the sites `stat --sites` prints under `reason`.
fn text_sites(lines: &[&str], reason: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let table = lines
        .iter()
        .position(|l| l.starts_with("EXIT SITE (GUEST RIP)"))
        .context("stat --sites printed no EXIT SITE table")?;
    let under = lines[table..]
        .iter()
        .position(|l| l.starts_with(reason))
        .with_context(|| format!("no {reason} in the EXIT SITE table"))?;
    lines[table + under + 1..]
        .iter()
        .take_while(|l| l.starts_with("  0x"))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // rip, vm, count, ... (no symbol without --guest-symbols)
            Ok((
                cols[0].to_owned(),
                cols.get(2).context("a site line")?.parse()?,
            ))
        })
        .collect()
}
