//! exitprof: why and how long KVM guests leave the guest.
//!
//! Data flows one way: tracepoint → eBPF program → per-CPU map → readout
//! (`bpf/`, one [`model::Snapshot`]) → presenters (`present/`, `tui/`).
//! ARCHITECTURE.md has the codemap and which folder may import which.

mod bpf;
mod cli;
mod commands;
mod guest;
mod host;
mod http;
mod model;
mod present;
mod session;
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
  sudo exitprof serve     # Prometheus metrics on http://127.0.0.1:9283/metrics
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
    Stat(commands::stat::StatArgs),
    /// Record a workload under nested and/or shadow paging into a file.
    Record(commands::record::RecordArgs),
    /// Show a recording: tables, the paging comparison, CSV, JSON, SVG.
    Report(commands::report::ReportArgs),
    /// Live tables of exits, refreshed every interval (q quits, ? helps).
    Top(commands::top::TopArgs),
    /// Export exit counts, durations and handler events to Prometheus
    /// (OpenMetrics on /metrics), until SIGTERM.
    Serve(commands::serve::ServeArgs),
    /// Inside a VM: read the hypervisor's exit statistics from the CPUID
    /// leaves of a KVM with exitprof's patch.
    Guest(commands::guest::GuestArgs),
    /// Time snapshots of a per-vCPU map filled with KEYS synthetic keys
    /// (for `cargo xtask bench`).
    #[command(hide = true)]
    BenchReadout(commands::bench_readout::BenchReadoutArgs),
    /// Run the built-in workload VM: a tiny guest doing exactly the
    /// requested numbers of CPUID, port I/O, MMIO, MSR and HLT exits.
    Vm(commands::vm::VmArgs),
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
        Command::Stat(args) => commands::stat::main(&args),
        Command::Record(args) => commands::record::main(&args),
        Command::Report(args) => commands::report::main(&args),
        Command::Top(args) => commands::top::main(&args),
        Command::Serve(args) => commands::serve::main(&args),
        Command::Guest(args) => commands::guest::main(&args),
        Command::BenchReadout(args) => commands::bench_readout::main(&args),
        Command::Vm(args) => commands::vm::main(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("exitprof: {err:#}");
            ExitCode::FAILURE
        }
    }
}
