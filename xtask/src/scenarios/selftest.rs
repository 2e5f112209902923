//! The `kvm-selftest-6.1` and `kvm-selftest-6.12` sandbox scenarios: one
//! boot per kernel line with the patched modules of `cargo xtask kernel
//! --kernel <line>`, which runs the series' own KVM selftest
//! (`exitprof_test`, built from the same tree: it plays exitprof's part
//! with a map it fills itself, so it proves the kernel side alone; with
//! `kvm.force_emulation_prefix` set, so that it also asks the emulator's
//! CPUID), checks
//! that the patched modules carry BTF (`/sys/kernel/btf/kvm`, `kvm_amd`)
//! and that exitprof's raw attach mode uses it, and reports the query cost
//! the selftest measured.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, ensure};
use serde_json::Value;

use crate::{
    kernel,
    sandbox::{self, KernelLine, Results, Scenario, run_scenario},
};

/// CPUIDs of the raw attach check's workload.
const CPUIDS: u64 = 200;

/// Runs the scenario for `line`; returns the selftest's cost lines.
pub fn kvm_selftest(line: KernelLine, exitprof: &Path) -> anyhow::Result<Vec<String>> {
    let kernel = sandbox::fetch_kernel_line(line)?;
    let modules = kernel::build(&kernel)?;
    let selftest = modules.join(kernel::SELFTEST);
    let selftest = selftest.to_str().context("non-UTF-8 target directory")?;
    let script = format!(
        r#"
echo "@@EXITPROF uname $(uname -r)"
for m in kvm kvm_amd; do
  if [ -e /sys/kernel/btf/$m ]; then echo "@@EXITPROF btf_$m yes"; else echo "@@EXITPROF btf_$m no"; fi
done
echo "@@EXITPROF debugfs $(cat /sys/kernel/debug/kvm/exitprof 2>&1)"
# Also through the emulator's CPUID (em_cpuid), the other path to kvm_cpuid().
FEP=/sys/module/kvm/parameters/force_emulation_prefix
echo 1 > $FEP
timeout 600 /bin/exitprof_test > /tmp/t.out 2>&1
echo "@@EXITPROF selftest_rc $?"
echo 0 > $FEP
while IFS= read -r l; do echo "@@EXITPROF selftest $l"; done < /tmp/t.out
timeout 120 exitprof stat --attach raw --json -- exitprof vm --cpuid {CPUIDS} > /tmp/s.out 2> /tmp/s.err
echo "@@EXITPROF raw_rc $?"
echo "@@EXITPROF raw $(tail -n 1 /tmp/s.out)"
while read -r l; do echo "@@EXITPROF raw_stderr $l"; done < /tmp/s.err
"#
    );
    let name = format!("kvm-selftest-{}", line.name());
    let results = run_scenario(
        &kernel,
        exitprof,
        &Scenario {
            name: &name,
            script: &script,
            npt: true,
            timeout: Duration::from_mins(15),
            modules: Some(&modules),
            extra: &[(selftest, "/bin/exitprof_test")],
            cpus: 2,
        },
    )?;
    let log = results.log.display().to_string();
    ensure!(
        results.get("uname")? == kernel.release,
        "{name}: booted {}, not {} (see {log})",
        results.get("uname")?,
        kernel.release
    );
    for m in ["kvm", "kvm_amd"] {
        ensure!(
            results.get(&format!("btf_{m}"))? == "yes",
            "{name}: the patched {m} module has no /sys/kernel/btf/{m} (see {log})"
        );
    }
    ensure!(
        results.get("debugfs")? == "inactive",
        "{name}: /sys/kernel/debug/kvm/exitprof says {:?} at boot",
        results.get("debugfs")?
    );
    let costs = check_selftest(&name, &results)?;
    check_raw_attach(&name, &results)?;
    println!(
        "[e2e] {name}: PASS ({} on {}; BTF for kvm and kvm_amd; raw attach counted {CPUIDS} cpuid exits)",
        kernel.release, kernel.package_version
    );
    Ok(costs)
}

/// `exitprof_test` passed every check, the emulator's included; returns
/// its cost lines.
fn check_selftest(name: &str, results: &Results) -> anyhow::Result<Vec<String>> {
    let output = results.all("selftest");
    ensure!(
        results.get("selftest_rc")? == "0" && output.contains(&"exitprof_test: PASS"),
        "{name}: exitprof_test exited {}:\n{}",
        results.get("selftest_rc")?,
        output.join("\n")
    );
    for l in output.iter().filter(|l| l.starts_with("ok ")) {
        println!("[e2e] {name}: {l}");
    }
    ensure!(
        output
            .iter()
            .any(|l| l.starts_with("ok 1 ") && l.contains("also through the emulator")),
        "{name}: exitprof_test did not check the emulator's CPUID path"
    );
    let costs: Vec<String> = output
        .iter()
        .filter_map(|l| l.strip_prefix("exitprof_test: cost "))
        .map(str::to_owned)
        .collect();
    for c in &costs {
        println!("[e2e] {name}: cost {c}");
    }
    Ok(costs)
}

/// With BTF, raw mode attaches raw tracepoints to the patched modules and
/// counts the workload's CPUID exits.
fn check_raw_attach(name: &str, results: &Results) -> anyhow::Result<()> {
    ensure!(
        results.get("raw_rc")? == "0",
        "{name}: exitprof stat --attach raw failed: {:?}",
        results.all("raw_stderr")
    );
    let raw: Value = serde_json::from_str(results.get("raw")?)
        .with_context(|| format!("{name}: exitprof printed no JSON snapshot"))?;
    let cpuid = raw["exits"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == "cpuid" && r.get("pid").is_none())
        .and_then(|r| r["count"].as_u64());
    ensure!(
        raw["attach_mode"] == "raw" && cpuid == Some(CPUIDS),
        "{name}: attach mode {} and {cpuid:?} cpuid exits, expected raw and {CPUIDS}",
        raw["attach_mode"]
    );
    Ok(())
}
