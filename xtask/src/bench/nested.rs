//! The sandbox part: one boot of each nested sandbox (SVM under QEMU TCG,
//! VMX under Bochs), every tracer.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use super::{
    tools::{bpftool_costs, exitprof_costs, push_slowdowns},
    types::{BPFTRACE_VMEXIT, Nested, ProgramCost, Report},
};
use crate::sandbox::{self, BENCH_TOOLS, Results, Scenario, Vendor};

/// The tracers each sandbox compares (perf kvm stat only on SVM: under
/// Bochs its recording would take longer than the rest of the bench).
fn tracers(vendor: Vendor) -> &'static [&'static str] {
    match vendor {
        Vendor::Svm => &[
            "none",
            "exitprof-raw",
            "exitprof-classic",
            "bpftrace",
            "perf",
        ],
        Vendor::Vmx => &["none", "exitprof-raw", "exitprof-classic", "bpftrace"],
    }
}

/// The sandbox part: one boot of `vendor`'s sandbox, every tracer; its
/// figures go to the report's `sandbox_*` (SVM) or `vmx_*` lists.
pub(super) fn sandbox_bench(
    exitprof: &Path,
    vendor: Vendor,
    sizes: &Nested,
    report: &mut Report,
) -> anyhow::Result<()> {
    let kernel = sandbox::fetch_kernel()?;
    let cpuid = sizes.cpuid;
    let pio = sizes.pio;
    let rounds = sizes.rounds;
    let cost_rounds = sizes.rounds.min(2);
    let tracers = tracers(vendor);
    let tracer_list = tracers.join(" ");
    let script = format!(
        r#"
T() {{ sed 's/.*"duration_ns":\([0-9]*\).*/\1/'; }}
CPUID="exitprof vm --json --cpuid {cpuid}"
IO="exitprof vm --json --pio {pio}"
BT='{BPFTRACE_VMEXIT}'
wait_prog() {{ i=0; while ! bpftool prog show | grep -q " name $1 " && [ $i -lt 1800 ]; do sleep 0.1; i=$((i+1)); done; }}
# Per-event cost: exitprof's own statistics in each mode, bpftrace's from bpftool.
# (raw with the hash store of exits in flight too; interleaved rounds)
for r in $(seq {cost_rounds}); do
  for mode in raw raw-hash classic; do
    case $mode in
      raw-hash) A="--attach raw --in-flight hash" ;;
      *) A="--attach $mode" ;;
    esac
    timeout 300 exitprof stat --cost --json $A -- $CPUID > /tmp/cost.out 2>/dev/null
    echo "@@EXITPROF cost $mode $(tail -n 1 /tmp/cost.out)"
  done
done
echo 1 > /proc/sys/kernel/bpf_stats_enabled
bpftrace -e "$BT" > /dev/null 2>&1 &
wait_prog kvm_exit
$CPUID > /dev/null
echo "@@EXITPROF cost_bpftrace $(bpftool prog show -j)"
kill -INT $!; wait $!
echo 0 > /proc/sys/kernel/bpf_stats_enabled
# Slowdown: every tracer, interleaved, {rounds} round(s).
for r in $(seq {rounds}); do
  for tracer in {tracer_list}; do
    case $tracer in
      none) PID= ;;
      exitprof-raw) exitprof stat --attach raw --duration 10m > /dev/null 2>&1 & PID=$!; wait_prog kvm_exit_raw ;;
      exitprof-classic) exitprof stat --attach classic --duration 10m > /dev/null 2>&1 & PID=$!; wait_prog kvm_exit ;;
      bpftrace) bpftrace -e "$BT" > /dev/null 2>&1 & PID=$!; wait_prog kvm_exit ;;
      perf) perf kvm stat record -a -o /tmp/perf.data > /dev/null 2>&1 & PID=$!; sleep 5 ;;
    esac
    echo "@@EXITPROF time $tracer cpuid-storm $($CPUID | T)"
    echo "@@EXITPROF time $tracer io-storm $($IO | T)"
    if [ -n "$PID" ]; then kill -INT $PID; wait $PID; fi
  done
done
"#
    );
    let (name, extra): (&str, &[(&str, &str)]) = match vendor {
        Vendor::Svm => ("bench", BENCH_TOOLS),
        // bpftrace and bpftool, not perf.
        Vendor::Vmx => ("bench-vmx", &BENCH_TOOLS[..2]),
    };
    let results = sandbox::run_scenario(
        &kernel,
        exitprof,
        &Scenario {
            name,
            vendor,
            script: &script,
            nested_paging: true,
            timeout: Duration::from_secs(sizes.timeout_s),
            modules: None,
            extra,
            cpus: 1,
        },
    )?;
    let (costs, slowdowns) = match vendor {
        Vendor::Svm => (&mut report.sandbox_cost, &mut report.sandbox_slowdown),
        Vendor::Vmx => (&mut report.vmx_cost, &mut report.vmx_slowdown),
    };
    let mut runs = Vec::new();
    for line in results.all("cost") {
        let (mode, json) = line.split_once(' ').context("bad cost line")?;
        let snapshot: Value = serde_json::from_str(json)
            .with_context(|| format!("exitprof stat ({mode}) printed no JSON"))?;
        runs.extend(exitprof_costs(&snapshot, &format!("exitprof-{mode}")));
    }
    costs.extend(ProgramCost::merge_rounds(runs));
    let programs: Value = serde_json::from_str(results.get("cost_bpftrace")?)
        .context("bpftool printed no JSON in the sandbox")?;
    costs.extend(bpftool_costs(
        programs.as_array().map_or(&[][..], Vec::as_slice),
        "bpftrace",
        &["kvm_exit", "kvm_entry"],
    ));
    for workload in ["cpuid-storm", "io-storm"] {
        let times = sandbox_times(&results, workload, tracers)?;
        push_slowdowns(slowdowns, workload, tracers, times);
    }
    Ok(())
}

pub(super) fn sandbox_times(
    results: &Results,
    workload: &str,
    tracers: &[&str],
) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut times = vec![Vec::new(); tracers.len()];
    for line in results.all("time") {
        let mut parts = line.split_whitespace();
        let (Some(tracer), Some(w), Some(ns)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("bad time line {line:?}");
        };
        if w != workload {
            continue;
        }
        let i = tracers
            .iter()
            .position(|t| *t == tracer)
            .with_context(|| format!("unknown tracer {tracer}"))?;
        let ns: f64 = ns
            .parse()
            .with_context(|| format!("{tracer} {workload}: the workload failed ({ns:?})"))?;
        times[i].push(ns / 1e6);
    }
    ensure!(
        times.iter().all(|t| !t.is_empty()),
        "the sandbox timed no {workload} for some tracer (see {})",
        results.log.display()
    );
    Ok(times)
}
