//! `cargo xtask`: exitprof's project tasks.
//!
//! - `setup`: install what a fresh machine lacks (idempotent)
//! - `demo`: the main job on the built-in default workload
//! - `test`: every test (unit, root integration, nested sandbox)
//! - `e2e`: the nested SVM sandbox scenarios only

mod sandbox;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "exitprof project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run the nested SVM sandbox scenarios (QEMU TCG, Debian 6.1, kvm-amd).
    E2e(sandbox::E2eArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::E2e(args) => sandbox::e2e(&args),
    }
}
