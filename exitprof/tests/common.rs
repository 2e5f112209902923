//! Helpers shared by the integration tests (`mod common;`).
#![allow(dead_code, reason = "each test binary uses a part")]
#![allow(
    clippy::missing_panics_doc,
    reason = "test helpers: their panic is the failing test's message (fires only in the targets that use them all)"
)]

use std::process::{Command, Output};

/// The binary under test.
pub const EXITPROF: &str = env!("CARGO_BIN_EXE_exitprof");

/// Root tests share kernel state (attached programs, tracefs): they hold
/// this lock, so they run one at a time even under a parallel `cargo test`.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A guard that serializes the root tests, when this machine can run them
/// (root, BPF, `/dev/kvm`); `None` when it cannot. Under `CI=true` a
/// missing capability fails the test instead of skipping it: CI machines
/// have all three.
pub fn can_profile(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let kvm = std::path::Path::new("/dev/kvm").exists();
    if root && kvm {
        return Some(
            SERIAL
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }
    let why = format!("{test} needs root and /dev/kvm (root: {root}, /dev/kvm: {kvm})");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}; CI machines have both, so this is a failure there"
    );
    eprintln!("SKIPPED: {why}");
    None
}

/// Runs exitprof with `args`.
#[must_use]
pub fn exitprof(args: &[&str]) -> Output {
    Command::new(EXITPROF)
        .args(args)
        .output()
        .expect("exitprof runs")
}

/// Stdout as one JSON value.
#[must_use]
pub fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exitprof failed: {}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The `count` of the row of `rows` for which `pick` holds; 0 if none.
pub fn count_where(rows: &serde_json::Value, pick: impl Fn(&serde_json::Value) -> bool) -> u64 {
    rows.as_array()
        .expect("an array")
        .iter()
        .filter(|r| pick(r))
        .map(|r| r["count"].as_u64().expect("count"))
        .sum()
}

/// Stderr as text, asserting it is one line.
#[must_use]
pub fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "expected a one-line error, got:\n{err}"
    );
    err
}
