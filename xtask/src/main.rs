//! `cargo xtask`: exitprof's project tasks.
//!
//! - `setup`: install what a fresh machine lacks (idempotent)
//! - `demo`: the main job on the built-in default workload
//! - `lint`: rustfmt and clippy on every crate (the first step of `test`)
//! - `test`: every test (unit, root integration, nested sandbox)
//! - `e2e`: the nested sandboxes' scenarios only (SVM and VMX)
//! - `kernel`: the patched KVM modules and selftest for a sandbox kernel
//! - `bench`: exitprof's cost side by side with bpftrace and perf
//! - `soak`: VMs coming and going under exitprof for 10 minutes

mod bench;
mod kernel;
mod layers;
mod sandbox;
mod scenarios;
mod soak;
mod tasks;
mod util;

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
    /// rustfmt and clippy (pedantic, warnings as errors) on every crate.
    Lint,
    /// Run every test: unit, root integration, nested sandbox.
    Test(tasks::E2eArgs),
    /// Run the nested sandboxes' scenarios (kvm-amd under QEMU TCG on
    /// Debian 6.1, and 6.12 for the kernel series' selftest; kvm-intel
    /// under Bochs on Debian 6.1).
    E2e(tasks::E2eArgs),
    /// Apply kernel-patch/<line>/ to Debian's linux-source-<line> and build
    /// the patched kvm, kvm-amd and kvm-intel modules (with BTF) and the
    /// series' KVM selftest for the matching Debian image (cached under
    /// target/kernel).
    Kernel(kernel::KernelArgs),
    /// Fuzz the parsers (tracefs formats, BTF, recordings, guest CPUID)
    /// from the committed seeds.
    Fuzz(tasks::fuzz::FuzzArgs),
    /// Measure exitprof's cost side by side with bpftrace and perf kvm stat
    /// (host and sandbox); writes target/bench/bench.json.
    Bench(bench::BenchArgs),
    /// Churn workload VMs (1-8 vCPUs, up to 50 at once, some killed with
    /// SIGKILL) under exitprof top and stat for 10 minutes, and check
    /// memory, maps, drops, exact counts and CPU; writes target/soak/.
    Soak(soak::SoakArgs),
    /// The soak's churn, run as exitprof stat's command (internal).
    #[command(hide = true)]
    SoakChurn(soak::churn::ChurnArgs),
    /// Boot the sandbox once and run a shell script in it (exitprof is on
    /// PATH); prints the serial log. For trying things by hand.
    Sandbox {
        /// The script, e.g. 'exitprof vm --cpuid 10 --json'.
        script: String,
        /// Boot the VMX sandbox (Bochs, kvm-intel) instead of the SVM one.
        #[arg(long)]
        vmx: bool,
        /// Boot the vendor module with npt=0/ept=0 (shadow paging).
        #[arg(long)]
        shadow: bool,
        /// Boot the patched KVM modules of `cargo xtask kernel`.
        #[arg(long)]
        patched: bool,
        /// Also carry bpftrace, bpftool and perf (as the bench does).
        #[arg(long)]
        tools: bool,
        /// The Debian kernel line to boot (with --patched, the series'
        /// selftest is on PATH as `exitprof_test`).
        #[arg(long, value_enum, default_value_t)]
        kernel: sandbox::KernelLine,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Setup => tasks::setup::setup(),
        Task::Demo(args) => tasks::demo(&args),
        Task::Lint => tasks::lint(),
        Task::Fuzz(args) => {
            tasks::setup::setup()?;
            tasks::fuzz::fuzz(&args).map(|_| ())
        }
        Task::Test(args) => tasks::test(&args),
        Task::E2e(args) => {
            tasks::setup::setup()?;
            tasks::e2e(&args).map(|_| ())
        }
        Task::Kernel(args) => {
            tasks::setup::setup()?;
            kernel::kernel(&args)
        }
        Task::Soak(args) => {
            tasks::setup::setup()?;
            soak::soak(&args)
        }
        Task::SoakChurn(args) => soak::churn::churn(&args),
        Task::Bench(args) => {
            tasks::setup::setup()?;
            bench::bench(&args)
        }
        Task::Sandbox {
            script,
            vmx,
            shadow,
            patched,
            tools,
            kernel,
        } => {
            tasks::setup::setup()?;
            let kernel = sandbox::fetch_kernel_line(kernel)?;
            let exitprof = util::build_release()?;
            let modules = if patched {
                Some(kernel::build(&kernel)?)
            } else {
                None
            };
            let selftest = modules
                .as_ref()
                .map(|m| m.join(kernel::SELFTEST).display().to_string());
            let mut extra: Vec<(&str, &str)> = Vec::new();
            if tools {
                extra.extend_from_slice(sandbox::BENCH_TOOLS);
            }
            if let Some(selftest) = &selftest {
                extra.push((selftest, "/bin/exitprof_test"));
            }
            let results = sandbox::run_scenario(
                &kernel,
                &exitprof,
                &sandbox::Scenario {
                    name: "by-hand",
                    vendor: if vmx {
                        sandbox::Vendor::Vmx
                    } else {
                        sandbox::Vendor::Svm
                    },
                    script: &script,
                    nested_paging: !shadow,
                    timeout: std::time::Duration::from_mins(10),
                    modules: modules.as_deref(),
                    extra: &extra,
                    cpus: 2,
                },
            )?;
            print!("{}", std::fs::read_to_string(&results.log)?);
            Ok(())
        }
    }
}
