//! The nested sandboxes, where `kvm_exit`/`kvm_entry` fire (they never do
//! on the PVM hosts this project is built on): Debian's 6.1 kernel (or
//! 6.12, see [`KernelLine`]) with KVM's vendor module, booted from a
//! busybox initramfs that carries exitprof, under an emulator of the
//! hardware virtualization:
//!
//! - SVM: `kvm-amd` under QEMU TCG (`qemu.rs`);
//! - VMX: `kvm-intel` under Bochs (`bochs.rs`, booting through `pvh.rs`).
//!
//! The Debian image (`debian.rs`), the initramfs (`initramfs.rs`) and the
//! result protocol (`results.rs`: `@@EXITPROF <key> <value>` lines on
//! the serial console, several scenarios per boot in sections) are the
//! same for both; only the boot differs.
//!
//! Downloads and builds are cached under `target/sandbox/`.
use std::{fmt::Write as _, path::Path, time::Instant};

use anyhow::ensure;

mod bochs;
mod debian;
mod initramfs;
pub mod l2;
mod pvh;
mod qemu;
mod results;
mod scenario;

pub use debian::{Kernel, KernelLine, fetch_kernel, fetch_kernel_line};
pub use initramfs::{STOP_KVM_KEEPER, add_binary};
pub use results::{Results, sections};
pub use scenario::{Scenario, Vendor, sandbox_dir};

/// The tracers `cargo xtask bench` compares exitprof with, and bpftool
/// for their program statistics: (host path, path in the sandbox).
pub const BENCH_TOOLS: &[(&str, &str)] = &[
    ("/usr/bin/bpftrace", "/bin/bpftrace"),
    ("/usr/sbin/bpftool", "/bin/bpftool"),
    ("/usr/bin/perf", "/bin/perf"),
];

/// Boots `scenario` and collects its results. The scenarios bound every
/// exitprof command with `timeout`, so a hang of exitprof fails them with
/// exit code 124; a boot that still stalls as a whole is a stall of the
/// emulation (seen once in about 70 boots of QEMU TCG), retried once,
/// loudly.
///
/// # Errors
/// When the boot fails, stalls twice, or the vendor module did not load.
pub fn run_scenario(
    kernel: &Kernel,
    exitprof: &Path,
    scenario: &Scenario,
) -> anyhow::Result<Results> {
    run_scenario_with_memory(kernel, exitprof, scenario, DEFAULT_MEMORY_MB)
}

/// Guest RAM of the SVM sandbox, unless a scenario needs more. (Bochs
/// sizes the VMX sandbox's RAM from its initramfs.)
pub const DEFAULT_MEMORY_MB: u32 = 1024;

/// [`run_scenario`] with `memory_mb` of SVM sandbox RAM (a real VMM with
/// a guest OS inside the sandbox needs more than the default).
pub fn run_scenario_with_memory(
    kernel: &Kernel,
    exitprof: &Path,
    scenario: &Scenario,
    memory_mb: u32,
) -> anyhow::Result<Results> {
    match boot(kernel, exitprof, scenario, memory_mb) {
        Err(e) if e.downcast_ref::<scenario::Stalled>().is_some() => {
            println!(
                "[sandbox] {}: WARNING: {e:#}; booting again once",
                scenario.name
            );
            boot(kernel, exitprof, scenario, memory_mb)
        }
        other => other,
    }
}

/// One boot of `scenario`.
fn boot(
    kernel: &Kernel,
    exitprof: &Path,
    scenario: &Scenario,
    memory_mb: u32,
) -> anyhow::Result<Results> {
    let started = Instant::now();
    let log = sandbox_dir().join(format!("{}.log", scenario.name));
    let _ = std::fs::remove_file(&log);
    let vendor = scenario.vendor;
    println!(
        "[sandbox] {}: booting {} ({}) under {} with {} {}={}",
        scenario.name,
        kernel.release,
        kernel.package_version,
        vendor.emulator(),
        vendor.module(),
        vendor.paging_param(),
        u8::from(scenario.nested_paging)
    );
    let times = match vendor {
        Vendor::Svm => qemu::boot(kernel, exitprof, scenario, memory_mb, &log)?,
        Vendor::Vmx => bochs::boot(kernel, exitprof, scenario, &log)?,
    };
    let results = Results::read(log)?;
    let mut took = format!("{:.1} s", started.elapsed().as_secs_f64());
    if let Some(cpu) = times.cpu_s {
        let _ = write!(took, ", {cpu:.1} s of emulator CPU");
    }
    if let Some(booted) = times.booted_s {
        let _ = write!(took, "; {} loaded after {booted:.1} s", vendor.module());
    }
    println!(
        "[sandbox] {}: finished in {took} (booted after {} s of guest uptime)",
        scenario.name,
        results.get("booted").unwrap_or("?")
    );
    ensure!(
        results.get("kvm")? == "/dev/kvm",
        "{} did not load in the sandbox (see {})",
        vendor.module(),
        results.log.display()
    );
    if results.get("exit").is_err() {
        // QEMU exits 0 on SIGTERM too: a sandbox that ended before its
        // script did was stopped from outside (or its kernel died).
        return Err(scenario::Stalled(format!(
            "{}: the sandbox ended before its script finished ({} stopped from outside, or a kernel panic); serial log {}:\n{}",
            scenario.name,
            vendor.emulator(),
            results.log.display(),
            scenario::tail(&results.log)
        ))
        .into());
    }
    Ok(results)
}
