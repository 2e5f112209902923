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

/// The built-in default: the workload VM's mix, profiled by `exitprof stat`.
pub const DEMO_WORKLOAD: &[&str] = &[
    "vm", "--cpuid", "2000", "--pio", "300", "--mmio", "200", "--msr", "100", "--hlt", "20",
];

/// `cargo xtask demo`.
///
/// # Errors
/// When setup, the build or the demo run fails.
pub fn demo() -> anyhow::Result<()> {
    setup()?;
    let exitprof = build_release()?;
    println!(
        "[demo] exitprof stat -- exitprof {}",
        DEMO_WORKLOAD.join(" ")
    );
    run(Command::new(&exitprof)
        .arg("stat")
        .arg("--")
        .arg(&exitprof)
        .args(DEMO_WORKLOAD))
    .context("the demo failed: see exitprof's message above")
}

/// `cargo xtask test`: unit and root integration tests, then the sandbox.
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
    run(Command::new("cargo")
        .args(["test", "--", "--test-threads=1"])
        .current_dir(&root))?;
    println!("[test] nested SVM sandbox");
    sandbox::e2e(args)
}
