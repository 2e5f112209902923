//! The SVM sandbox's emulator: QEMU TCG with `-cpu qemu64,+svm,+npt`,
//! booting the Debian kernel directly (`-kernel`, `-initrd`), the serial
//! console into the log file; the guest powers off at the end.
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};

use super::{
    debian::Kernel,
    initramfs::{self, Signatures},
    scenario::{BootTimes, Scenario, Watchdog, sandbox_dir, tail},
};

/// Boots `scenario`; the serial console goes to `log`.
pub fn boot(
    kernel: &Kernel,
    exitprof: &Path,
    scenario: &Scenario,
    memory_mb: u32,
    log: &Path,
) -> anyhow::Result<BootTimes> {
    let started = Instant::now();
    let root = initramfs::root(kernel, exitprof, scenario, Signatures::Keep)?;
    let initramfs = sandbox_dir().join(format!("{}.initramfs.gz", scenario.name));
    initramfs::pack(&root, &initramfs, true)?;
    let heartbeat = log.with_extension("heartbeat");
    let _ = std::fs::remove_file(&heartbeat);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "qemu64,+svm,+npt", "-m"])
        .arg(memory_mb.to_string())
        .arg("-smp")
        .arg(scenario.cpus.to_string())
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initramfs)
        // nokaslr: the sandbox's /proc/kallsyms is then also the symbol map of
        // an L2 guest booting the same kernel with nokaslr (qemu-guest-sites).
        // tsc=reliable: under TCG the kernel finds the vCPUs' TSCs
        // unsynchronized and falls back to the HPET, whose every read is an
        // emulated MMIO access; every clock read of a BPF program
        // (`bpf_ktime_get_ns`) then paid it, and perf's (the TSC) did not.
        // A production host's clocksource is the TSC.
        .args([
            "-append",
            "console=ttyS0 quiet loglevel=1 panic=-1 nokaslr tsc=reliable",
        ])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        // ttyS1: /init's heartbeat (initramfs.rs), watched by the Watchdog.
        .arg("-serial")
        .arg(format!("file:{}", heartbeat.display()));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    let mut watchdog = Watchdog::new(scenario, log, Some(&heartbeat), child.id(), started);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Err(stalled) = watchdog.check() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(stalled);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(
        status.success(),
        "QEMU failed ({status}); serial log {}:\n{}",
        log.display(),
        tail(log)
    );
    Ok(BootTimes {
        booted_s: None,
        cpu_s: None,
    })
}
