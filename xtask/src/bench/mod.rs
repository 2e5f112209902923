//! `cargo xtask bench`: what watching exits costs, exitprof side by side
//! with bpftrace and `perf kvm stat record`, measured in one run and
//! reported as ratios (these machines are noisy), with PASS/FAIL against
//! the targets of issue #7. Writes `target/bench/bench.json` (`--smoke`:
//! `bench-smoke.json`, small counts, run by `cargo xtask test`).
//!
//! - host (real CPU, PVM backend: handler events only): per-event program
//!   cost from the kernel's BPF statistics, and the slowdown of a CPUID
//!   storm under exitprof (raw, classic) and bpftrace;
//! - sandboxes (nested SVM under QEMU TCG, nested VMX under Bochs:
//!   inflated, compare only ratios): per-event cost of
//!   `kvm_exit`/`kvm_entry` in both modes and bpftrace's, and the slowdown
//!   of a CPUID storm and an I/O storm under every tracer, one boot each;
//! - readout: one snapshot with 10, 1 000 and 10 000 keys;
//! - TUI: CPU share and RSS of `exitprof top` with 64 vCPUs x 30 reasons;
//! - exporter: `exitprof serve` with 64 VMs x 4 vCPUs x 30 reasons of
//!   keys: time and CPU per scrape, idle CPU, RSS, bytes per scrape.
use std::{fs, process::Command};

use anyhow::Context as _;

mod exporter;
mod host;
mod nested;
mod report;
mod tools;
mod types;

use types::{FULL, Report, SMOKE};

use crate::{
    sandbox::Vendor,
    util::{build_release, workspace_root},
};

/// Arguments of `cargo xtask bench`.
#[derive(clap::Args, Default)]
pub struct BenchArgs {
    /// Small counts and one repetition: checks that the bench works.
    #[arg(long)]
    pub smoke: bool,
    /// Only this part: host, readout, tui, exporter, sandbox (the SVM
    /// sandbox) or vmx (the VMX sandbox); the report then holds that
    /// part's figures and targets only.
    #[arg(long, value_parser = ["host", "readout", "tui", "exporter", "sandbox", "vmx"])]
    pub only: Option<String>,
}

/// `cargo xtask bench`.
///
/// # Errors
/// When a step cannot run (a missing tool, a failed workload); a missed
/// target is a FAIL line, not an error.
pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let sizes = if args.smoke { SMOKE } else { FULL };
    let wanted = |part: &str| args.only.as_deref().is_none_or(|o| o == part);
    let exitprof = build_release()?;
    let mut report = Report {
        smoke: args.smoke,
        ..Report::default()
    };
    if wanted("host") {
        println!("[bench] host: per-event cost and CPUID-storm slowdown");
        host::host(&exitprof, &sizes, &mut report)?;
    }
    if wanted("readout") {
        println!("[bench] readout");
        for keys in [10, 1_000, 10_000] {
            let out = tools::command_output(Command::new(&exitprof).args([
                "bench-readout",
                "--keys",
                &keys.to_string(),
                "--repeat",
                &sizes.readout_repeat.to_string(),
            ]))?;
            report
                .readout
                .push(serde_json::from_str(out.trim()).context("bench-readout printed no JSON")?);
        }
    }
    if wanted("tui") {
        println!("[bench] exitprof top, 64 vCPUs x 30 reasons");
        report.tui = Some(host::tui(&exitprof, sizes.tui_seconds)?);
    }
    if wanted("exporter") {
        println!("[bench] exitprof serve, 64 VMs x 4 vCPUs x 30 reasons");
        report.exporter = Some(exporter::exporter(
            &exitprof,
            sizes.exporter_scrapes,
            sizes.exporter_idle_s,
        )?);
    }
    if wanted("sandbox") {
        println!("[bench] SVM sandbox (one boot of QEMU TCG)");
        nested::sandbox_bench(&exitprof, Vendor::Svm, &sizes.svm, &mut report)?;
    }
    if wanted("vmx") {
        println!("[bench] VMX sandbox (one boot of Bochs)");
        nested::sandbox_bench(&exitprof, Vendor::Vmx, &sizes.vmx, &mut report)?;
    }
    report::targets(&mut report);
    let dir = workspace_root().join("target/bench");
    fs::create_dir_all(&dir)?;
    let path = dir.join(match (&args.only, args.smoke) {
        (Some(part), true) => format!("bench-smoke-{part}.json"),
        (Some(part), false) => format!("bench-{part}.json"),
        (None, true) => "bench-smoke.json".to_owned(),
        (None, false) => "bench.json".to_owned(),
    });
    fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    print!("{}", report::render(&report));
    println!("[bench] wrote {}", path.display());
    if args.smoke && args.only.is_none() {
        report::check_smoke(&report)?;
    }
    Ok(())
}
