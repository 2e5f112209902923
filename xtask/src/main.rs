//! `cargo xtask`: exitprof's project tasks.
//!
//! - `setup`: install what a fresh machine lacks (idempotent)
//! - `demo`: the main job on the built-in default workload
//! - `test`: every test (unit, root integration, nested sandbox)
//! - `e2e`: the nested SVM sandbox scenarios only

mod sandbox;
mod scenarios;
mod setup;
mod tasks;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "exitprof project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks (Debian packages, nightly rust-src,
    /// bpf-linker). Idempotent.
    Setup,
    /// Build and run the main job (exitprof top) on the built-in workload VM.
    Demo(tasks::DemoArgs),
    /// Run every test: unit, root integration, nested sandbox.
    Test(sandbox::E2eArgs),
    /// Run the nested SVM sandbox scenarios (QEMU TCG, Debian 6.1, kvm-amd).
    E2e(sandbox::E2eArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::setup(),
        Task::Demo(args) => tasks::demo(&args),
        Task::Test(args) => tasks::test(&args),
        Task::E2e(args) => {
            setup::setup()?;
            sandbox::e2e(&args).map(|_| ())
        }
    }
}
