//! Helpers shared by the integration tests (`mod common;`).
#![allow(dead_code, reason = "each test binary uses a part")]
#![allow(
    clippy::missing_panics_doc,
    reason = "test helpers: their panic is the failing test's message (fires only in the targets that use them all)"
)]

use std::{
    process::{Command, Output},
    time::Duration,
};

/// The binary under test.
pub const EXITPROF: &str = env!("CARGO_BIN_EXE_exitprof");

/// Root tests share kernel state (attached programs, tracefs): they hold
/// this lock, so they run one at a time even under a parallel `cargo test`.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The same across processes (several checkouts testing on one machine):
/// an exclusive `flock` on this file.
const SERIAL_FILE: &str = "/tmp/exitprof-root-tests.lock";

/// Held while a root test runs.
pub struct Serial {
    _in_process: std::sync::MutexGuard<'static, ()>,
    _across_processes: std::fs::File,
}

/// A guard that serializes the root tests, when this machine can run them
/// (root, BPF, `/dev/kvm`); `None` when it cannot. Under `CI=true` a
/// missing capability fails the test instead of skipping it: CI machines
/// have all three.
pub fn can_profile(test: &str) -> Option<Serial> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let kvm = std::path::Path::new("/dev/kvm").exists();
    if root && kvm {
        let in_process = SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(SERIAL_FILE)
            .expect("the lock file opens");
        // SAFETY: flock on a descriptor we own; it blocks until free.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {SERIAL_FILE}");
        return Some(Serial {
            _in_process: in_process,
            _across_processes: file,
        });
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

/// The exitprof programs loaded now, once the count is `want` or 5 s
/// have passed: the kernel frees a raw tracepoint's link from a work
/// queue after an RCU grace period, so a program outlives the process
/// that held it by a few milliseconds.
#[must_use]
pub fn attached_exitprof_programs_settled(want: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = attached_exitprof_programs();
        if n == want || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many of exitprof's `kvm_cpuid` and `kvm_exit` programs bpftool
/// lists now.
#[must_use]
pub fn attached_exitprof_programs() -> usize {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("bpftool runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("name kvm_cpuid") || l.contains("name kvm_exit"))
        .count()
}

/// Names (as the kernel truncates them, 15 bytes) of exitprof's maps
/// that bpftool lists now.
#[must_use]
pub fn exitprof_maps() -> Vec<String> {
    const OURS: &[&str] = &[
        "EXIT_STATS",
        "EXIT_BREAKDOWN",
        "PENDING_EXITS",
        "CPUID_EVENTS",
        "DROPPED",
    ];
    let out = Command::new("bpftool")
        .args(["map", "show"])
        .output()
        .expect("bpftool runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("name ").nth(1)?.split_whitespace().next())
        .filter(|n| OURS.iter().any(|o| o.starts_with(*n) && n.len() >= 8))
        .map(str::to_owned)
        .collect()
}
