//! Every subcommand with wrong inputs: missing and contradictory flags;
//! zero, negative and huge numbers and durations; a pid that does not
//! exist and one that is no VM; damaged, truncated, empty and
//! wrong-version recordings; unwritable paths; a command that cannot run;
//! a non-UTF-8 argument. Each must end in one line on stderr that names
//! the problem, exit 2 for usage and 1 at run time, and never panic.
mod common;

use std::{
    ffi::{OsStr, OsString},
    os::unix::ffi::OsStrExt as _,
    path::PathBuf,
    process::Command,
};

use common::{EXITPROF, can_profile};

/// One wrong invocation and what it must say.
struct Case {
    args: Vec<OsString>,
    code: i32,
    says: &'static str,
    /// Needs root (it gets past argument parsing into the kernel or /proc).
    root: bool,
}

fn case(args: &[&str], code: i32, says: &'static str) -> Case {
    Case {
        args: args.iter().map(OsString::from).collect(),
        code,
        says,
        root: false,
    }
}

fn root_case(args: &[&str], code: i32, says: &'static str) -> Case {
    Case {
        root: true,
        ..case(args, code, says)
    }
}

/// A directory of recordings: valid, and damaged in each way.
fn recordings() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("exitprof-bad-input-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let snapshot = r#"{"backend":"svm","interval_ns":1,"attach_mode":"raw","vmexit_available":true,"exits":[],"events":{"cpuid":[],"pio":[],"mmio":[],"msr":[],"hypercall":[],"userspace_exit":[]},"dropped":0}"#;
    let good = format!(
        r#"{{"format":"exitprof-record","version":1,"host":"h","backend":"svm","command":["x"],"runs":[{{"mode":"nested","interval_ns":1,"snapshots":[],"final":{snapshot}}}]}}"#
    );
    let files: [(&str, Vec<u8>); 7] = [
        ("good.json", good.clone().into_bytes()),
        ("empty.json", Vec::new()),
        ("truncated.json", good.as_bytes()[..good.len() / 2].to_vec()),
        (
            "v2.json",
            good.replace("\"version\":1", "\"version\":2").into_bytes(),
        ),
        (
            "damaged.json",
            good.replace("\"runs\":[", "\"runs\":[7,").into_bytes(),
        ),
        ("other.json", b"{\"hello\": \"world\"}".to_vec()),
        ("binary.json", vec![0xff, 0xfe, 0x00, 0x13, 0x37]),
    ];
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    std::fs::create_dir_all(dir.join("a-directory.json")).unwrap();
    dir
}

#[expect(clippy::too_many_lines, reason = "the table: one line per case")]
fn cases(dir: &str) -> Vec<Case> {
    let file = |name: &str| format!("{dir}/{name}");
    let (good, empty, truncated, v2, damaged, other, binary, directory) = (
        file("good.json"),
        file("empty.json"),
        file("truncated.json"),
        file("v2.json"),
        file("damaged.json"),
        file("other.json"),
        file("binary.json"),
        file("a-directory.json"),
    );
    let mut non_utf8 = case(&["stat", "--pid"], 2, "invalid UTF-8");
    non_utf8
        .args
        .push(OsStr::from_bytes(b"\xff\xfe").to_owned());
    let mut non_utf8_path = case(&["report"], 1, "cannot read");
    non_utf8_path
        .args
        .push(OsStr::from_bytes(b"/nonexistent/\xff.json").to_owned());
    vec![
        // Subcommands and flags.
        case(
            &[],
            2,
            "which command? one of stat, record, report, top, guest, vm",
        ),
        case(&["frobnicate"], 2, "unrecognized subcommand 'frobnicate'"),
        case(&["stat", "--bogus"], 2, "unexpected argument '--bogus'"),
        case(&["top", "--bogus"], 2, "unexpected argument '--bogus'"),
        case(&["guest", "--bogus"], 2, "unexpected argument '--bogus'"),
        // Missing and contradictory flags.
        case(
            &["stat", "--all", "--duration", "1s"],
            2,
            "arguments are missing: <COMMAND>...",
        ),
        case(
            &["stat", "--pid", "1", "--", "true"],
            2,
            "cannot be used with",
        ),
        case(&["top", "--once", "--json"], 2, "cannot be used with"),
        case(
            &["record", "--module", "/x.ko"],
            2,
            "arguments are missing: --ept <EPT>",
        ),
        case(
            &["record", "--restore", "--ept", "both"],
            2,
            "cannot be used with",
        ),
        case(&["report"], 2, "arguments are missing: <FILE>"),
        case(&["report", &good, &good], 2, "unexpected argument"),
        case(
            &["report", "--json", "--csv", &good],
            2,
            "cannot be used with",
        ),
        case(
            &["stat", "--attach", "sideways"],
            2,
            "invalid value 'sideways'",
        ),
        case(
            &["record", "--ept", "sideways"],
            2,
            "invalid value 'sideways'",
        ),
        // Pids.
        case(&["stat", "--pid", "abc"], 2, "\"abc\" is not a process id"),
        case(&["stat", "--pid", "0"], 2, "no process with pid 0"),
        case(
            &["stat", "--pid", "4194304"],
            2,
            "no process with pid 4194304",
        ),
        case(&["top", "--pid", "99999999999"], 2, "is not a process id"),
        case(&["stat", "--pid", "-5"], 2, "unexpected argument '-5'"),
        root_case(
            &["stat", "--pid", "1", "--duration", "1s"],
            1,
            "is not a VM: it has neither /dev/kvm nor a KVM VM open",
        ),
        // Durations: zero, negative, huge, nonsense.
        case(
            &["stat", "--duration", "0"],
            2,
            "the duration must be more than zero",
        ),
        case(
            &["top", "-d", "0s"],
            2,
            "the duration must be more than zero",
        ),
        case(
            &["record", "-i", "0ms"],
            2,
            "the duration must be more than zero",
        ),
        case(
            &["stat", "--duration", "-1s"],
            2,
            "unexpected argument '-1'",
        ),
        case(
            &["stat", "--duration", "99999999h"],
            2,
            "the longest duration is a year",
        ),
        case(
            &["record", "-d", "1000000000000000000000s"],
            2,
            "is not a duration",
        ),
        case(&["top", "-d", "soon"], 2, "\"soon\" is not a duration"),
        // Numbers.
        case(
            &["stat", "--map-entries", "0"],
            2,
            "0 is not in 1..=4294967295",
        ),
        case(&["vm", "--cpuid", "-1"], 2, "unexpected argument '-1'"),
        case(
            &["vm", "--cpuid", "99999999999"],
            2,
            "invalid value '99999999999'",
        ),
        case(&["vm", "--rounds", "x"], 2, "invalid value 'x'"),
        case(
            &["vm", "--cpuid-leaf", "0xzz"],
            2,
            "\"0xzz\" is not a number",
        ),
        case(
            &["vm", "--cpuid-leaf", "0x100000000"],
            2,
            "does not fit in 32 bits",
        ),
        case(
            &["vm", "--pio-port", "0xf4"],
            2,
            "is the workload's done port",
        ),
        case(&["vm", "--pio-port", "70000"], 2, "is no I/O port"),
        case(&["vm", "--mmio-gpa", "0x1000"], 2, "is guest RAM"),
        case(
            &["vm", "--mmio-gpa", "0xfffffffe"],
            2,
            "a 4-byte access would wrap",
        ),
        case(&["vm", "--query", "cpuid"], 2, "expected cpuid:LEAF"),
        case(&["vm", "--query", "bogus:1"], 2, "expected cpuid:LEAF"),
        // Recordings.
        case(
            &["report", "/nonexistent/r.json"],
            1,
            "cannot read /nonexistent/r.json",
        ),
        case(
            &["report", &empty],
            1,
            "is not an exitprof recording: not JSON",
        ),
        case(
            &["report", &truncated],
            1,
            "is not an exitprof recording: not JSON",
        ),
        case(
            &["report", &binary],
            1,
            "is not an exitprof recording: not JSON",
        ),
        case(&["report", &other], 1, "no \"format\": \"exitprof-record\""),
        case(
            &["report", &v2],
            1,
            "is a version 2 recording; this exitprof reads version 1",
        ),
        case(&["report", &damaged], 1, "is damaged"),
        case(&["report", &directory], 1, "Is a directory"),
        // Unwritable outputs; commands that cannot run.
        case(
            &["report", &good, "--svg", "/nonexistent/dir/r.svg"],
            1,
            "writing /nonexistent/dir/r.svg",
        ),
        root_case(
            &["record", "-o", "/nonexistent/dir/r.json"],
            1,
            "cannot write the recording to /nonexistent/dir/r.json",
        ),
        root_case(
            &["stat", "--", "/nonexistent/vmm"],
            1,
            "cannot run `/nonexistent/vmm`",
        ),
        root_case(
            &["stat", "--", "no-such-program-anywhere"],
            1,
            "cannot run `no-such-program-anywhere`",
        ),
        // Non-UTF-8 arguments.
        non_utf8,
        non_utf8_path,
    ]
}

#[test]
fn every_bad_input_is_one_line_and_the_right_exit_code() {
    let dir = recordings();
    let all = cases(dir.to_str().unwrap());
    assert!(all.len() >= 40, "{} cases", all.len());
    let serial = all
        .iter()
        .any(|c| c.root)
        .then(|| can_profile("bad_input (root cases)"));
    let mut failures = Vec::new();
    for c in &all {
        if c.root && !matches!(serial, Some(Some(_))) {
            continue;
        }
        let out = Command::new(EXITPROF)
            .args(&c.args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.trim_end().lines().collect();
        let ok = out.status.code() == Some(c.code)
            && lines.len() == 1
            && lines[0].starts_with("exitprof: ")
            && lines[0].contains(c.says)
            && !err.contains("panicked")
            && !err.contains("backtrace");
        if !ok {
            failures.push(format!(
                "{:?}: exit {:?} (want {}), stderr {err:?} (want one line with {:?})",
                c.args,
                out.status.code(),
                c.code,
                c.says
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}
