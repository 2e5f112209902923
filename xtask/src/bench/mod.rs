//! `cargo xtask bench`: what watching exits costs, exitprof side by side
//! with bpftrace and `perf kvm stat record`, measured in one run and
//! reported as ratios (these machines are noisy), with PASS/FAIL against
//! the targets of issue #7. Writes `target/bench/bench.json` (`--smoke`:
//! `bench-smoke.json`, small counts, run by `cargo xtask test`).
//!
//! - host (real CPU, PVM backend: handler events only): per-event program
//!   cost from the kernel's BPF statistics, and the slowdown of a CPUID
//!   storm under exitprof (raw, classic) and bpftrace;
//! - real guest (in the SVM sandbox, QEMU with KVM boots Linux with a
//!   fixed workload): end-to-end time under every tracer, and exitprof's
//!   event rate: the headline;
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
mod guest;
mod host;
mod l2;
mod nested;
mod report;
mod tools;
mod types;

use types::{FULL, READOUT_KEYS, Report, SMOKE};

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
    /// Run only these parts (comma-separated: host, readout, tui,
    /// exporter, sandbox (the SVM sandbox's micro-storms), vmx (the VMX
    /// sandbox's), guest (the real guest)); the report then holds only
    /// their figures and is written to `bench-PARTS.json`.
    #[arg(long, value_delimiter = ',', value_parser = ["host", "readout", "tui", "exporter", "sandbox", "vmx", "guest"])]
    pub only: Vec<String>,
}

/// `cargo xtask bench`.
///
/// # Errors
/// When a step cannot run (a missing tool, a failed workload); a missed
/// target is a FAIL line, not an error.
pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    let sizes = if args.smoke { SMOKE } else { FULL };
    let exitprof = build_release()?;
    let mut report = Report {
        smoke: args.smoke,
        ..Report::default()
    };
    let dir = workspace_root().join("target/bench");
    fs::create_dir_all(&dir)?;
    let name = if args.only.is_empty() {
        "bench".to_owned()
    } else {
        format!("bench-{}", args.only.join("-"))
    };
    let path = dir.join(if args.smoke {
        format!("{name}-smoke.json")
    } else {
        format!("{name}.json")
    });
    // Written after every part: a part that fails late (the sandbox runs
    // for most of an hour) leaves the earlier parts' figures.
    let save = |report: &Report| -> anyhow::Result<()> {
        fs::write(&path, serde_json::to_string_pretty(report)?)?;
        Ok(())
    };
    // The smoke run of every part leaves out the VMX sandbox's
    // micro-storms: nearly two minutes of Bochs in `cargo xtask test` for
    // the SVM part's code with other sizes (the VMX e2e boot runs every
    // VMX path of exitprof); `--smoke --only vmx` runs them.
    let part = |name: &str| {
        if args.only.is_empty() {
            !(args.smoke && name == "vmx")
        } else {
            args.only.iter().any(|o| o == name)
        }
    };
    if part("host") {
        println!("[bench] host: per-event cost and CPUID-storm slowdown");
        host::host(&exitprof, &sizes, &mut report)?;
        save(&report)?;
    }
    if part("readout") {
        println!("[bench] readout");
        for keys in READOUT_KEYS {
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
        save(&report)?;
    }
    if part("tui") {
        println!("[bench] exitprof top, 64 vCPUs x 30 reasons");
        report.tui = Some(host::tui(&exitprof, sizes.tui_seconds)?);
        save(&report)?;
    }
    if part("exporter") {
        println!("[bench] exitprof serve, 64 VMs x 4 vCPUs x 30 reasons");
        report.exporter = Some(exporter::exporter(
            &exitprof,
            sizes.exporter_scrapes,
            sizes.exporter_idle_s,
        )?);
        save(&report)?;
    }
    if part("sandbox") {
        println!("[bench] SVM sandbox: micro-storms (one boot of QEMU TCG)");
        nested::sandbox_bench(&exitprof, Vendor::Svm, &sizes.svm, &mut report)?;
        save(&report)?;
    }
    if part("vmx") {
        println!("[bench] VMX sandbox: micro-storms (one boot of Bochs)");
        nested::sandbox_bench(&exitprof, Vendor::Vmx, &sizes.vmx, &mut report)?;
        save(&report)?;
    }
    if part("guest") {
        println!("[bench] sandbox: a real guest under every tracer (one boot)");
        let kernel = crate::sandbox::fetch_kernel()?;
        guest::guest_bench(&kernel, &exitprof, &sizes, &mut report)?;
    }
    report::targets(&mut report);
    save(&report)?;
    print!("{}", report::render(&report));
    println!("[bench] wrote {}", path.display());
    if args.smoke && args.only.is_empty() {
        report::check_smoke(&report)?;
    }
    Ok(())
}
