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

/// The ids of the BPF programs and maps of exitprof's names loaded now
/// (by anyone: other checkouts may test on the same machine).
#[must_use]
pub fn exitprof_bpf_ids() -> std::collections::BTreeSet<(char, u64)> {
    const MAPS: &[&str] = &[
        "EXIT_STATS",
        "EXIT_BREAKDOWN",
        "PENDING_EXITS",
        "CPUID_EVENTS",
        "DROPPED",
    ];
    let mut ids = std::collections::BTreeSet::new();
    for (kind, what) in [('p', "prog"), ('m', "map")] {
        let out = Command::new("bpftool")
            .args([what, "show", "-j"])
            .output()
            .expect("bpftool runs");
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        for item in list.as_array().into_iter().flatten() {
            let name = item["name"].as_str().unwrap_or("");
            let ours = match kind {
                'p' => name.starts_with("kvm_") || name.starts_with("sched_process_"),
                _ => MAPS.iter().any(|m| m.starts_with(name) && name.len() >= 8),
            };
            if let (true, Some(id)) = (ours, item["id"].as_u64()) {
                ids.insert((kind, id));
            }
        }
    }
    ids
}

/// The ids of exitprof's names that appeared since `before`: those of
/// the exitprof a test started (give it time to attach first).
#[must_use]
pub fn loaded_since(
    before: &std::collections::BTreeSet<(char, u64)>,
) -> std::collections::BTreeSet<(char, u64)> {
    exitprof_bpf_ids().difference(before).copied().collect()
}

/// Of `ids`, those still loaded after up to 5 s.
#[must_use]
pub fn still_loaded(
    ids: &std::collections::BTreeSet<(char, u64)>,
) -> std::collections::BTreeSet<(char, u64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left: std::collections::BTreeSet<_> =
            exitprof_bpf_ids().intersection(ids).copied().collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
