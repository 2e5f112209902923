//! The sandbox scenarios and their host-side assertions.
use std::{path::Path, time::Duration};

use crate::sandbox::{Kernel, Scenario, run_scenario};

mod common;
mod mirror;
mod qemu_guest;
mod record;
mod reload;
mod selftest;
mod vmexit;

/// Runs every scenario whose name contains `only` (all without it);
/// returns how many ran (and passed).
pub fn run_all(kernel: &Kernel, exitprof: &Path, only: Option<&str>) -> anyhow::Result<u64> {
    let wanted = |name: &str| only.is_none_or(|o| name.contains(o));
    let mut passed = 0;
    if wanted("vmexit-ground-truth") {
        vmexit::vmexit_ground_truth(kernel, exitprof)?;
        passed += 1;
    }
    if wanted("qemu-guest-sites") {
        qemu_guest::qemu_guest_sites(kernel, exitprof)?;
        passed += 1;
    }
    if wanted("record-ept-both") {
        record::record_ept_both(kernel, exitprof)?;
        passed += 1;
    }
    if wanted("module-reload") {
        let modules = crate::kernel::build(kernel)?;
        reload::module_reload(kernel, exitprof, &modules)?;
        passed += 1;
    }
    // The kernel side on its own, before exitprof's use of it.
    for line in crate::sandbox::KernelLine::ALL {
        if wanted(&format!("kvm-selftest-{}", line.name())) {
            selftest::kvm_selftest(line, exitprof)?;
            passed += 1;
        }
    }
    for line in crate::sandbox::KernelLine::ALL {
        if wanted(&format!("guest-cpuid-mirror-{}", line.name())) {
            mirror::guest_cpuid_mirror(line, exitprof)?;
            passed += 1;
        }
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
            timeout: Duration::from_mins(4),
            modules: None,
            extra: &[],
            cpus: 2,
        },
    )?;
    for line in results.all("top") {
        println!("{line}");
    }
    Ok(())
}
