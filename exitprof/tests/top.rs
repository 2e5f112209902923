//! `exitprof top` for real: under tmux, against the workload VM running
//! in a loop, keys sent with `send-keys`, the screen read with
//! `capture-pane`.
mod common;

use std::{
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use common::{EXITPROF, can_profile, exitprof};

/// A distinctive CPUID leaf, so that the row is the workload's.
const LEAF: &str = "0x4242";

struct Workload(Child);

impl Workload {
    fn start() -> Self {
        let child = Command::new(EXITPROF)
            .args([
                "vm",
                "--cpuid",
                "200",
                "--cpuid-leaf",
                LEAF,
                "--pio",
                "5",
                "--rounds",
                "0",
                "--pause-ms",
                "10",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pane's text, polled until `want` shows up (or 10 s pass).
fn screen_with(session: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]);
        if screen.contains(want) || Instant::now() > deadline {
            return screen;
        }
        sleep(Duration::from_millis(200));
    }
}

/// Starts `exitprof top` in a detached 120x40 tmux session; the shell
/// prints `TOP-EXIT=<code>` when it ends and keeps the pane open.
fn start_top(session: &str) {
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", session])
        .output();
    let status = Command::new("tmux")
        .args(["new-session", "-d", "-s", session, "-x", "120", "-y", "40"])
        .arg(format!(
            "{EXITPROF} top -d 500ms; echo TOP-EXIT=$?; sleep 30"
        ))
        .status()
        .unwrap();
    assert!(status.success());
}

/// `exitprof top` in `session` exited 0 and left the alternate screen
/// (its header is no longer on the pane); ends the session.
fn assert_ended_cleanly(session: &str) {
    let after = screen_with(session, "TOP-EXIT=");
    assert!(after.contains("TOP-EXIT=0"), "{after}");
    assert!(!after.contains("exitprof top | backend"), "{after}");
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", session])
        .output();
}

#[test]
fn top_shows_live_rows_and_restores_the_terminal() {
    let Some(_serial) = can_profile("top_shows_live_rows_and_restores_the_terminal") else {
        return;
    };
    let _workload = Workload::start();
    let session = "exitprof-top-test";
    start_top(session);
    let screen = screen_with(session, "0x00004242/0x0");
    assert!(screen.starts_with("exitprof top | backend "), "{screen}");
    let backend = exitprof(&["stat", "--json", "--duration", "100ms"]);
    let pvm = String::from_utf8_lossy(&backend.stdout).contains("\"backend\":\"pvm\"");
    if pvm {
        assert!(
            screen.contains(
                "note: this host's KVM backend is PVM: kvm_exit/kvm_entry are not emitted there"
            ),
            "{screen}"
        );
    }
    // The workload's CPUID row: `  0x00004242/0x0  COUNT  RATE/s  SHARE ...`,
    // with a count that grows and a rate that is not zero.
    let row = |screen: &str| -> (u64, u64) {
        let line = screen
            .lines()
            .find(|l| l.trim_start().starts_with("0x00004242/0x0"))
            .unwrap_or_else(|| panic!("no row for leaf {LEAF}:\n{screen}"));
        let mut cols = line.split_whitespace().skip(1);
        let mut number = || cols.next().unwrap().parse::<u64>().unwrap();
        (number(), number())
    };
    // The header's events/s (after a full interval: not the first frame).
    sleep(Duration::from_millis(1200));
    let screen = tmux(&["capture-pane", "-p", "-t", session]);
    let (first, rate) = row(&screen);
    assert!(
        first > 0 && rate > 0,
        "count {first}, rate {rate}:\n{screen}"
    );
    let header = screen.lines().next().unwrap();
    let events_per_s: u64 = header
        .strip_suffix(" events/s")
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no events/s at the end of the header: {header}"));
    assert!(events_per_s > 0, "{header}");
    if pvm {
        assert!(!header.contains("exits/s"), "no exit rate on PVM: {header}");
    }
    sleep(Duration::from_millis(1200));
    let (later, _) = row(&tmux(&["capture-pane", "-p", "-t", session]));
    assert!(later > first, "the row does not move: {first} then {later}");

    // View 5 without --sites says how to get sites.
    tmux(&["send-keys", "-t", session, "5"]);
    let sites = screen_with(session, "exit sites are not counted");
    assert!(sites.contains("start top with --sites"), "{sites}");
    tmux(&["send-keys", "-t", session, "2"]);

    tmux(&["send-keys", "-t", session, "?"]);
    let help = screen_with(session, "q, Ctrl-C   quit");
    assert!(help.contains("┌ keys "), "{help}");
    tmux(&["send-keys", "-t", session, "?"]);

    tmux(&["send-keys", "-t", session, "q"]);
    assert_ended_cleanly(session);
}

#[test]
fn top_ends_cleanly_on_sigterm() {
    let Some(_serial) = can_profile("top_ends_cleanly_on_sigterm") else {
        return;
    };
    let session = "exitprof-top-sigterm";
    start_top(session);
    let screen = screen_with(session, "exitprof top | backend");
    assert!(screen.contains("exitprof top | backend"), "{screen}");
    let pid = tmux(&["list-panes", "-t", session, "-F", "#{pane_pid}"]);
    let shell: u32 = pid.trim().parse().unwrap();
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap();
    let top: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: signalling the test's own exitprof.
    unsafe { libc::kill(top, libc::SIGTERM) };
    assert_ended_cleanly(session);
}

#[test]
fn top_once_prints_tables_and_exits() {
    let Some(_serial) = can_profile("top_once_prints_tables_and_exits") else {
        return;
    };
    let _workload = Workload::start();
    let out = exitprof(&["top", "--once", "-d", "700ms"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("exitprof: backend "), "{text}");
    assert!(text.contains("0x00004242/0x0"), "{text}");
    let rates = text.lines().nth(1).unwrap();
    assert!(
        rates.starts_with("rates: ") && rates.ends_with(" events/s"),
        "{text}"
    );
    assert!(text.ends_with("dropped: 0\n"), "{text}");
}

#[test]
fn top_json_streams_one_interval_per_line() {
    let Some(_serial) = can_profile("top_json_streams_one_interval_per_line") else {
        return;
    };
    let _workload = Workload::start();
    let child = Command::new(EXITPROF)
        .args(["top", "--json", "-d", "400ms"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(1500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id().cast_signed(), libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 2, "{text}");
    for snap in &lines {
        let interval = snap["interval_ns"].as_u64().unwrap();
        // 400 ms apart, with room for a loaded CI machine.
        assert!(
            (350_000_000..2_000_000_000).contains(&interval),
            "{interval}"
        );
        let cpuid = common::count_where(&snap["events"]["cpuid"], |r| r["leaf"] == 0x4242);
        assert!(cpuid > 0, "{snap}");
        // Rates of the interval: the row's, and all events'.
        let row = snap["events"]["cpuid"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["leaf"] == 0x4242)
            .unwrap();
        assert!(row["rate_per_s"].as_f64().unwrap() > 0.0, "{snap}");
        assert!(snap["events_per_s"].as_f64().unwrap() > 0.0, "{snap}");
        if snap["vmexit_available"] == false {
            assert!(snap.get("exits_per_s").is_none(), "{snap}");
        }
    }
}
