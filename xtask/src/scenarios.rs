//! The sandbox scenarios and their host-side assertions.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use crate::sandbox::{Counts, Kernel, Results, Scenario, run_scenario};

/// CPUIDs of the vmexit scenario's workload.
const CPUIDS: u64 = 5000;

/// Runs every scenario whose name contains `only` (all without it);
/// returns how many ran (and passed).
pub fn run_all(kernel: &Kernel, exitprof: &Path, only: Option<&str>) -> anyhow::Result<u64> {
    let wanted = |name: &str| only.is_none_or(|o| name.contains(o));
    let mut passed = 0;
    if wanted("vmexit-ground-truth") {
        vmexit_ground_truth(kernel, exitprof)?;
        passed += 1;
    }
    Ok(passed)
}

/// `cargo xtask demo --sandbox`: the workload in a loop and one interval
/// of `exitprof top` in the sandbox, where the VM-exit view has rows.
pub fn demo(kernel: &Kernel, exitprof: &Path, workload: &[&str]) -> anyhow::Result<()> {
    let script = format!(
        "exitprof {} > /dev/null &\nsleep 1\nexitprof top --once -d 3s > /tmp/top.out 2>&1\nkill %1\nwhile IFS= read -r l; do echo \"@@EXITPROF top $l\"; done < /tmp/top.out\n",
        workload.join(" ")
    );
    let results = run_scenario(
        kernel,
        exitprof,
        &Scenario {
            name: "demo",
            script: &script,
            npt: true,
            timeout: Duration::from_secs(300),
        },
    )?;
    for line in results.all("top") {
        println!("{line}");
    }
    Ok(())
}

/// Shell lines that print the `kvm_exit` records ftrace holds, counted by
/// reason name, as `@@EXITPROF ftrace <count> <name>` (names may contain
/// spaces: `PF excp`), plus whether the trace buffer lost events.
const FTRACE_COUNTS: &str = r#"
echo "@@EXITPROF lost $(grep -c LOST /sys/kernel/tracing/trace)"
sed -n 's/.* kvm_exit: .* reason \(.*\) rip .*/\1/p' /sys/kernel/tracing/trace | sort | uniq -c |
  while read -r n r; do echo "@@EXITPROF ftrace $n $r"; done
"#;

fn ftrace_counts(results: &Results) -> anyhow::Result<Counts> {
    ensure!(
        results.get("lost")? == "0",
        "the ftrace buffer lost events: no ground truth"
    );
    results
        .all("ftrace")
        .into_iter()
        .map(|line| {
            let (n, name) = line.split_once(' ').context("ftrace line")?;
            Ok((name.to_owned(), n.parse()?))
        })
        .collect()
}

/// Per-reason rows (without `pid`) of an exitprof JSON snapshot.
fn exit_counts(snapshot: &Value) -> Counts {
    snapshot["exits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r.get("pid").is_none())
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("?").to_owned(),
                r["count"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn snapshot(results: &Results, key: &str) -> anyhow::Result<Value> {
    let text = results.get(key)?;
    serde_json::from_str(text).with_context(|| {
        format!(
            "exitprof printed no JSON snapshot ({text:?}); its stderr: {:?}",
            results.all("stderr")
        )
    })
}

/// `exitprof stat -- exitprof vm --cpuid 5000` against ftrace's own count
/// of `kvm_exit` by reason, in the same boot and the same interval.
fn vmexit_ground_truth(kernel: &Kernel, exitprof: &Path) -> anyhow::Result<()> {
    let script = format!(
        r#"
T=/sys/kernel/tracing
echo 16384 > $T/buffer_size_kb
echo > $T/trace
echo 1 > $T/events/kvm/kvm_exit/enable
exitprof stat --json --by-vcpu -- exitprof vm --json --cpuid {CPUIDS} > /tmp/stat.out 2> /tmp/stat.err
echo "@@EXITPROF stat_rc $?"
echo 0 > $T/events/kvm/kvm_exit/enable
echo "@@EXITPROF vm $(head -n 1 /tmp/stat.out)"
echo "@@EXITPROF stat $(tail -n 1 /tmp/stat.out)"
while read -r l; do echo "@@EXITPROF stderr $l"; done < /tmp/stat.err
{FTRACE_COUNTS}
exitprof stat -- exitprof vm --cpuid 1000 --pio 50 --mmio 20 --hlt 5 > /tmp/table.out 2>&1
while IFS= read -r l; do echo "@@EXITPROF table $l"; done < /tmp/table.out
"#
    );
    let results = run_scenario(
        kernel,
        exitprof,
        &Scenario {
            name: "vmexit-ground-truth",
            script: &script,
            npt: true,
            timeout: Duration::from_secs(300),
        },
    )?;
    ensure!(
        results.get("npt")? == "Y",
        "kvm-amd did not come up with npt=1"
    );
    let snap = snapshot(&results, "stat")?;
    ensure!(
        results.get("stat_rc")? == "0",
        "exitprof stat failed: {:?}",
        results.all("stderr")
    );
    ensure!(
        snap["backend"] == "svm",
        "backend {} (expected svm)",
        snap["backend"]
    );
    ensure!(
        snap["vmexit_available"] == true,
        "vmexit source not available"
    );
    let ours = exit_counts(&snap);
    let truth = ftrace_counts(&results)?;
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
    let cpuid = snap["exits"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["isa"] == "svm" && r["reason"] == 0x72 && r.get("pid").is_none())
        .context("no svm cpuid (0x72) row")?;
    ensure!(cpuid["name"] == "cpuid", "0x72 is named {}", cpuid["name"]);
    ensure!(
        cpuid["count"] == CPUIDS,
        "cpuid count {} (expected exactly {CPUIDS})",
        cpuid["count"]
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
    // The per-(process, vCPU) breakdown repeats the same exits: one VM,
    // one vCPU (0), the workload's pid.
    let vm = snapshot(&results, "vm")?;
    let mut by_vcpu = Counts::new();
    for row in snap["exits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r.get("pid").is_some())
    {
        ensure!(
            row["pid"] == vm["pid"],
            "breakdown pid {} is not the workload's {}",
            row["pid"],
            vm["pid"]
        );
        ensure!(row["vcpu"] == 0, "breakdown vcpu {}", row["vcpu"]);
        *by_vcpu
            .entry(row["name"].as_str().unwrap_or("?").to_owned())
            .or_default() += row["count"].as_u64().unwrap_or(0);
    }
    ensure!(
        by_vcpu == ours,
        "breakdown {by_vcpu:?} differs from the per-reason rows {ours:?}"
    );
    ensure!(snap["dropped"] == 0, "dropped {}", snap["dropped"]);
    for line in results.all("table") {
        println!("[e2e] | {line}");
    }
    println!(
        "[e2e] vmexit-ground-truth: PASS (cpuid exactly {CPUIDS}, every reason equal to ftrace)"
    );
    Ok(())
}
