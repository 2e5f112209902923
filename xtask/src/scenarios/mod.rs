//! The sandbox scenarios and their host-side assertions. Each scenario is
//! a script and the checks of what it printed, written once for both
//! vendors; the SVM sandbox boots once per scenario, the VMX sandbox
//! (Bochs, slower) runs them all in one boot.
use std::{path::Path, time::Duration};

use crate::sandbox::{Kernel, Scenario, Vendor, run_scenario};

mod common;
mod mirror;
mod qemu_guest;
mod record;
mod reload;
mod selftest;
mod serve;
mod vmexit;
mod vmx;

/// One SVM scenario, ready to run.
type Run<'a> = Box<dyn Fn() -> anyhow::Result<()> + 'a>;

/// Runs every scenario of `vendor`'s sandbox whose name contains `only`
/// (all without it), each to its end even when an earlier one failed;
/// returns how many ran (and passed).
///
/// # Errors
/// The first scenario that failed (every failure is printed).
pub fn run_all(
    kernel: &Kernel,
    exitprof: &Path,
    vendor: Vendor,
    only: Option<&str>,
) -> anyhow::Result<u64> {
    let wanted = |name: &str| only.is_none_or(|o| name.contains(o));
    if vendor == Vendor::Vmx {
        return vmx::run_all(kernel, exitprof, &wanted);
    }
    let mut scenarios: Vec<(String, Run)> = vec![
        (
            vmexit::PART.name.to_owned(),
            Box::new(|| vmexit::PART.boot_svm(kernel, exitprof)),
        ),
        (
            "qemu-guest-sites".to_owned(),
            Box::new(|| qemu_guest::qemu_guest_sites(kernel, exitprof)),
        ),
        (
            record::PART.name.to_owned(),
            Box::new(|| record::PART.boot_svm(kernel, exitprof)),
        ),
        (
            "module-reload".to_owned(),
            Box::new(|| {
                let modules = crate::kernel::build(kernel)?;
                reload::module_reload(kernel, exitprof, &modules)
            }),
        ),
    ];
    // The kernel side on its own, before exitprof's use of it.
    for line in crate::sandbox::KernelLine::ALL {
        scenarios.push((
            format!("kvm-selftest-{}", line.name()),
            Box::new(move || selftest::kvm_selftest(line, exitprof).map(drop)),
        ));
    }
    for line in crate::sandbox::KernelLine::ALL {
        scenarios.push((
            format!("{}-{}", mirror::NAME, line.name()),
            Box::new(move || mirror::guest_cpuid_mirror(line, exitprof)),
        ));
    }
    let mut passed = 0;
    let mut first_error = None;
    for (name, run) in scenarios.iter().filter(|(name, _)| wanted(name)) {
        match run() {
            Ok(()) => passed += 1,
            Err(e) => {
                println!("[e2e] {name}: FAIL: {e:#}");
                first_error.get_or_insert(e.context(name.clone()));
            }
        }
    }
    first_error.map_or(Ok(passed), Err)
}

/// `cargo xtask demo --sandbox`: the workload in a loop and one interval
/// of `exitprof top` in `vendor`'s sandbox, where the VM-exit view has
/// rows.
///
/// # Errors
/// When the sandbox fails.
pub fn demo(
    kernel: &Kernel,
    exitprof: &Path,
    vendor: Vendor,
    workload: &[&str],
) -> anyhow::Result<()> {
    let script = format!(
        "exitprof {} > /dev/null &\nsleep 1\nexitprof top --once -d 3s > /tmp/top.out 2>&1\nkill %1\nwhile IFS= read -r l; do echo \"@@EXITPROF top $l\"; done < /tmp/top.out\n",
        workload.join(" ")
    );
    let results = run_scenario(
        kernel,
        exitprof,
        &Scenario {
            name: &format!("demo-{vendor}"),
            vendor,
            script: &script,
            nested_paging: true,
            timeout: Duration::from_mins(if vendor == Vendor::Vmx { 15 } else { 4 }),
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
