//! exitprof: why and how long KVM guests leave the guest.

mod workload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// KVM exit profiler: per-exit-reason counts and latencies from eBPF.
#[derive(Parser, Debug)]
#[command(name = "exitprof", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the built-in workload VM: a tiny guest doing exactly the
    /// requested numbers of CPUID, port I/O, MMIO, MSR and HLT exits.
    Vm(workload::VmArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
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
