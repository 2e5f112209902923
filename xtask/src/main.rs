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
    /// Boot the sandbox once and run a shell script in it (exitprof is on
    /// PATH); prints the serial log. For trying things by hand.
    Sandbox {
        /// The script, e.g. 'exitprof vm --cpuid 10 --json'.
        script: String,
        /// Boot kvm-amd with npt=0 (shadow paging).
        #[arg(long)]
        shadow: bool,
    },
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
        Task::Sandbox { script, shadow } => {
            setup::setup()?;
            let kernel = sandbox::fetch_kernel()?;
            let exitprof = tasks::build_release()?;
            let results = sandbox::run_scenario(
                &kernel,
                &exitprof,
                &sandbox::Scenario {
                    name: "by-hand",
                    script: &script,
                    npt: !shadow,
                    timeout: std::time::Duration::from_secs(600),
                },
            )?;
            print!("{}", std::fs::read_to_string(&results.log)?);
            Ok(())
        }
    }
}
