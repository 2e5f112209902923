//! The VMX sandbox's scenarios: `vmexit-ground-truth`, `record-ept-both`
//! and `guest-cpuid-mirror` (the same scripts and checks as on SVM, with
//! VMX's reason names and codes) in one boot of Bochs with the patched
//! kvm/kvm-intel modules of `cargo xtask kernel`, each in its own section
//! of the results.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, ensure};

use super::{common::Part, mirror, record, vmexit};
use crate::{
    kernel,
    sandbox::{Kernel, Scenario, Vendor, run_scenario, sections},
};

/// The longest the boot may take before it counts as stalled: about 4
/// minutes of wall time on a quiet 2-core machine, and these machines are
/// shared.
const TIMEOUT: Duration = Duration::from_mins(20);

const PARTS: [Part; 3] = [
    vmexit::PART,
    record::PART,
    // After record's reloads of kvm_intel: the mirror comes up again with
    // the reloaded module.
    mirror::PART,
];

/// Runs the wanted scenarios in one boot; returns how many passed.
///
/// # Errors
/// When the boot fails, or with the first failed scenario (after the
/// others have been checked and printed).
pub(super) fn run_all(
    kernel: &Kernel,
    exitprof: &Path,
    wanted: &dyn Fn(&str) -> bool,
) -> anyhow::Result<u64> {
    let parts: Vec<&Part> = PARTS.iter().filter(|p| wanted(p.name)).collect();
    if parts.is_empty() {
        return Ok(0);
    }
    let scripts: Vec<(&str, String)> = parts
        .iter()
        .map(|p| (p.name, (p.script)(Vendor::Vmx)))
        .collect();
    let script = sections(
        &scripts
            .iter()
            .map(|(name, s)| (*name, s.as_str()))
            .collect::<Vec<_>>(),
    );
    // The patched modules for every part: the mirror needs them, and the
    // other parts show that they change nothing else.
    let modules = kernel::build(kernel)?;
    let results = run_scenario(
        kernel,
        exitprof,
        &Scenario {
            name: "vmx",
            vendor: Vendor::Vmx,
            script: &script,
            nested_paging: true,
            timeout: TIMEOUT,
            modules: Some(&modules),
            extra: &[],
            cpus: 1,
        },
    )?;
    let mut first_error = None;
    let mut passed = 0;
    for part in parts {
        let section = results.section(part.name);
        let outcome = (|| {
            ensure!(
                !section.values.is_empty(),
                "the boot never reached it (see {})",
                results.log.display()
            );
            (part.check)(Vendor::Vmx, &section)
        })()
        .with_context(|| format!("vmx {}", part.name));
        match outcome {
            Ok(()) => passed += 1,
            Err(e) => {
                println!("[e2e] vmx {}: FAIL: {e:#}", part.name);
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(passed),
    }
}
