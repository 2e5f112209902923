//! The `exitprof` command: the clap root and the dispatch to
//! [`exitprof::commands`].

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand, error::ErrorKind};

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
            eprintln!("exitprof: {}", usage_error(&err));
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

/// One line for a usage error: what is wrong (with the arguments clap
/// lists on lines of their own, such as the missing ones), and which
/// `--help` shows the usage.
fn usage_error(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("invalid arguments");
    let mut what = first.strip_prefix("error: ").unwrap_or(first).to_owned();
    let known: Vec<String> = Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_owned())
        .collect();
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand
    ) {
        return format!(
            "which command? one of {} (see `exitprof --help`)",
            known.join(", ")
        );
    }
    if err.kind() == ErrorKind::MissingRequiredArgument {
        let missing: Vec<&str> = lines
            .take_while(|l| l.starts_with("  "))
            .map(str::trim)
            .collect();
        what = format!("{} {}", what.trim_end_matches(':'), missing.join(", "))
            .replace("were not provided", "are missing:");
    }
    // The subcommand the user typed, for its own help.
    let sub = std::env::args().skip(1).find(|a| known.contains(a));
    match sub {
        Some(sub) => format!("{what} (see `exitprof {sub} --help`)"),
        None => format!("{what} (see `exitprof --help`)"),
    }
}
