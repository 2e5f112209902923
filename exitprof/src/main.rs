//! exitprof: why and how long KVM guests leave the guest.
//!
//! Data flows one way: tracepoint → eBPF program → per-CPU map → readout
//! (`readout.rs`, one [`snapshot::Snapshot`]) → presenters.

mod backend;
mod batch;
mod btf;
mod cli;
mod guest;
mod loader;
mod mirror;
mod paging;
mod present;
mod readout;
mod record;
mod recording;
mod report;
mod signals;
mod snapshot;
mod stat;
mod tracefs;
mod tui;
mod workload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// KVM exit profiler: per-exit-reason counts and latencies from eBPF.
#[derive(Parser, Debug)]
#[command(
    name = "exitprof",
    version,
    about,
    after_help = "\
Examples:
  sudo exitprof stat -- exitprof vm --cpuid 1234 --pio 300 --mmio 200
  sudo exitprof stat --pid $(pidof qemu-system-x86_64) --duration 10s --json
  sudo exitprof top
  sudo exitprof record --ept both -o r.json && exitprof report r.json
  exitprof vm --cpuid 100 --hlt 5 --json
  exitprof guest          # inside a VM whose host runs the patched KVM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Count exits while COMMAND runs (or for a duration, or until
    /// Ctrl-C), then print a report.
    Stat(stat::StatArgs),
    /// Record a workload under nested and/or shadow paging into a file.
    Record(record::RecordArgs),
    /// Show a recording: tables, the paging comparison, CSV, JSON, SVG.
    Report(report::ReportArgs),
    /// Live tables of exits, refreshed every interval (q quits, ? helps).
    Top(tui::TopArgs),
    /// Inside a VM: read the hypervisor's exit statistics from the CPUID
    /// leaves of a KVM with exitprof's patch.
    Guest(guest::GuestArgs),
    /// Time snapshots of a per-vCPU map filled with KEYS synthetic keys
    /// (for `cargo xtask bench`).
    #[command(hide = true)]
    BenchReadout {
        /// Keys in the per-vCPU map.
        #[arg(long)]
        keys: u32,
        /// Snapshots to time.
        #[arg(long, default_value_t = 20)]
        repeat: u32,
    },
    /// Run the built-in workload VM: a tiny guest doing exactly the
    /// requested numbers of CPUID, port I/O, MMIO, MSR and HLT exits.
    Vm(workload::VmArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help, --version
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            // One line: what is wrong; the usage is one `--help` away.
            let text = err.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("exitprof: {first} (see `exitprof --help`)");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Stat(args) => stat::main(&args),
        Command::Record(args) => record::main(&args),
        Command::Report(args) => report::main(&args),
        Command::Top(args) => tui::main(&args),
        Command::Guest(args) => guest::main(&args),
        Command::BenchReadout { keys, repeat } => bench_readout(keys, repeat),
        Command::Vm(args) => workload::main(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("exitprof: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `exitprof bench-readout`: one JSON line with the snapshot times.
fn bench_readout(keys: u32, repeat: u32) -> anyhow::Result<ExitCode> {
    let mut profiler = loader::Profiler::start(&loader::Options {
        filter: loader::Filter::All,
        breakdown: true,
        map_entries: None,
        cost: false,
        attach: loader::AttachMode::Auto,
    })?;
    profiler.fill_breakdown_for_load_test(keys)?;
    let mut times = Vec::new();
    for _ in 0..repeat.max(1) {
        let started = std::time::Instant::now();
        let snapshot = profiler.snapshot()?;
        times.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        anyhow::ensure!(
            snapshot.exits.iter().filter(|r| r.pid.is_some()).count() >= keys as usize,
            "the snapshot lost keys"
        );
    }
    times.sort_unstable();
    println!(
        "{}",
        serde_json::json!({"keys": keys, "min_ns": times[0], "median_ns": times[times.len() / 2]})
    );
    Ok(ExitCode::SUCCESS)
}
