//! `cargo xtask demo` and `cargo xtask test`: the README's two commands.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{
    sandbox,
    setup::{run, setup},
};

/// The workspace root (xtask lives one level below it).
#[must_use]
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// `cargo build --release -p exitprof`, returning the binary's path.
///
/// # Errors
/// When the build fails.
pub fn build_release() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    println!("[build] cargo build --release -p exitprof");
    run(Command::new("cargo")
        .args(["build", "--release", "-p", "exitprof"])
        .current_dir(&root))?;
    Ok(root.join("target/release/exitprof"))
}

/// The built-in default workload: the workload VM's mix, in a loop.
pub const DEMO_WORKLOAD: &[&str] = &[
    "vm",
    "--cpuid",
    "2000",
    "--pio",
    "100",
    "--mmio",
    "50",
    "--msr",
    "20",
    "--hlt",
    "5",
    "--rounds",
    "0",
    "--pause-ms",
    "20",
];

/// Arguments of `cargo xtask demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Run the demo inside the nested SVM sandbox, where kvm_exit fires
    /// (this host's KVM may not emit it, e.g. PVM).
    #[arg(long)]
    pub sandbox: bool,
}

/// `cargo xtask demo`: `exitprof top` on the built-in workload VM (live
/// when stdout is a terminal, one interval as text otherwise).
///
/// # Errors
/// When setup, the build or the demo run fails.
pub fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    setup()?;
    if args.sandbox {
        let kernel = sandbox::fetch_kernel()?;
        let exitprof = build_release()?;
        return crate::scenarios::demo(&kernel, &exitprof, DEMO_WORKLOAD);
    }
    let exitprof = build_release()?;
    println!("[demo] exitprof {} &", DEMO_WORKLOAD.join(" "));
    let mut workload = Command::new(&exitprof)
        .args(DEMO_WORKLOAD)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting the workload VM")?;
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let top: &[&str] = if interactive {
        &["top"]
    } else {
        &["top", "--once", "-d", "2s"]
    };
    println!("[demo] exitprof {} (q quits)", top.join(" "));
    let result = run(Command::new(&exitprof).args(top));
    let _ = workload.kill();
    let _ = workload.wait();
    if !interactive {
        println!(
            "[demo] the vmexit view needs kvm_exit: `cargo xtask demo --sandbox` shows it from the nested SVM sandbox"
        );
    }
    result.context("the demo failed: see exitprof's message above")
}

/// `cargo xtask test`: unit and root integration tests, then the sandbox.
/// Ends with one `N passed, N failed` line over everything that ran.
///
/// # Errors
/// When any test fails.
pub fn test(args: &sandbox::E2eArgs) -> anyhow::Result<()> {
    setup()?;
    let root = workspace_root();
    build_release()?;
    // Root tests share kernel state (attached programs, tracefs): one at a
    // time.
    println!("[test] cargo test (unit and integration tests, one thread)");
    let (passed, failed) = cargo_test(&root)?;
    println!("[test] nested SVM sandbox");
    let scenarios = sandbox::e2e(args);
    let (e2e_passed, e2e_failed) = match &scenarios {
        Ok(n) => (*n, 0),
        Err(_) => (0, 1),
    };
    // The bench with small counts, so that it cannot rot (its numbers are
    // not judged here).
    println!("[test] cargo xtask bench --smoke");
    let smoke = if args.only.is_none() {
        Some(crate::bench::bench(&crate::bench::BenchArgs {
            smoke: true,
        }))
    } else {
        None
    };
    let (smoke_passed, smoke_failed) = match &smoke {
        Some(Ok(())) => (1, 0),
        Some(Err(_)) => (0, 1),
        None => (0, 0),
    };
    println!(
        "{} passed, {} failed",
        passed + e2e_passed + smoke_passed,
        failed + e2e_failed + smoke_failed
    );
    scenarios.map(|_| ())?;
    if let Some(result) = smoke {
        result.context("the bench smoke run failed")?;
    }
    anyhow::ensure!(failed == 0, "{failed} cargo test(s) failed");
    Ok(())
}

/// Runs `cargo test`, echoing its output, and sums its `test result:`
/// lines.
fn cargo_test(root: &Path) -> anyhow::Result<(u64, u64)> {
    use std::io::{BufRead as _, BufReader};
    let mut child = Command::new("cargo")
        .args(["test", "--", "--test-threads=1"])
        .current_dir(root)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("failed to run cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                match (words.next(), words.next()) {
                    (Some("passed"), Some(n)) => passed += n.parse::<u64>().unwrap_or(0),
                    (Some("failed"), Some(n)) => failed += n.parse::<u64>().unwrap_or(0),
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        failed = 1; // a build failure or a crash: no result line
    }
    Ok((passed, failed))
}
