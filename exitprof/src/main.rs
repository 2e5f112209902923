//! The `exitprof` command: the clap root and the dispatch to
//! [`exitprof::commands`].

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
    Stat(exitprof::commands::stat::StatArgs),
    /// Record a workload under nested and/or shadow paging into a file.
    Record(exitprof::commands::record::RecordArgs),
    /// Show a recording: tables, the paging comparison, CSV, JSON, SVG.
    Report(exitprof::commands::report::ReportArgs),
    /// Live tables of exits, refreshed every interval (q quits, ? helps).
    Top(exitprof::commands::top::TopArgs),
    /// Inside a VM: read the hypervisor's exit statistics from the CPUID
    /// leaves of a KVM with exitprof's patch.
    Guest(exitprof::commands::guest::GuestArgs),
    /// Time snapshots of a per-vCPU map filled with KEYS synthetic keys
    /// (for `cargo xtask bench`).
    #[command(hide = true)]
    BenchReadout(exitprof::commands::bench_readout::BenchReadoutArgs),
    /// Run the built-in workload VM: a tiny guest doing exactly the
    /// requested numbers of CPUID, port I/O, MMIO, MSR and HLT exits.
    Vm(exitprof::commands::vm::VmArgs),
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
        Command::Stat(args) => exitprof::commands::stat::main(&args),
        Command::Record(args) => exitprof::commands::record::main(&args),
        Command::Report(args) => exitprof::commands::report::main(&args),
        Command::Top(args) => exitprof::commands::top::main(&args),
        Command::Guest(args) => exitprof::commands::guest::main(&args),
        Command::BenchReadout(args) => exitprof::commands::bench_readout::main(&args),
        Command::Vm(args) => exitprof::commands::vm::main(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("exitprof: {err:#}");
            ExitCode::FAILURE
        }
    }
}
