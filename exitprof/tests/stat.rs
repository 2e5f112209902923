//! `exitprof stat` against real BPF and the real `/dev/kvm`, with the
//! built-in workload VM as the guest whose exits are known in advance.
mod common;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{
    EXITPROF, can_profile, count_where, exitprof, exitprof_bpf_ids, json, loaded_since,
    one_line_error, still_loaded,
};

/// The acceptance run of the foundation issue: exact handler-event counts
/// of the workload's process tree.
#[test]
fn stat_counts_exactly_what_the_workload_vm_did() {
    let Some(_serial) = can_profile("stat_counts_exactly_what_the_workload_vm_did") else {
        return;
    };
    let out = exitprof(&[
        "stat",
        "--json",
        "--",
        EXITPROF,
        "vm",
        "--cpuid",
        "1234",
        "--cpuid-leaf",
        "0x7",
        "--cpuid-subleaf",
        "1",
        "--pio",
        "300",
        "--mmio",
        "200",
        "--json",
    ]);
    // stdout holds the workload's JSON line, then stat's.
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\n{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = text.lines();
    let vm: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let snap: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(vm["userspace_exits"]["MMIO"], 400, "{vm}");

    let events = &snap["events"];
    assert_eq!(
        count_where(&events["cpuid"], |r| r["leaf"] == 7 && r["subleaf"] == 1),
        1234,
        "{events}"
    );
    let port = 0xe9;
    assert_eq!(
        count_where(&events["pio"], |r| r["port"] == port && r["write"] == true),
        300
    );
    assert_eq!(
        count_where(&events["pio"], |r| r["port"] == port && r["write"] == false),
        300
    );
    let gpa = 0xd000_0000_u64;
    assert_eq!(
        count_where(&events["mmio"], |r| r["gpa"] == gpa && r["write"] == true),
        200
    );
    assert_eq!(
        count_where(&events["mmio"], |r| r["gpa"] == gpa && r["write"] == false),
        200
    );
    // Every MMIO exit reached the VMM and came back: one round trip each.
    let userspace = |name: &str| {
        events["userspace_exit"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no {name} userspace exits: {events}"))
            .clone()
    };
    let mmio = userspace("MMIO");
    assert_eq!(mmio["count"], 400);
    assert_eq!(mmio["roundtrips"], 400);
    assert!(mmio["roundtrip_total_ns"].as_u64().unwrap() > 0);
    // Port I/O: 600 exits plus the done port's, which ends the run: no
    // KVM_RUN follows it, so it has no round trip.
    let io = userspace("IO");
    assert_eq!(io["count"], 601);
    assert_eq!(io["roundtrips"], 600);
    assert_eq!(count_where(&events["pio"], |r| r["port"] == 0xf4), 1);
    assert_eq!(snap["dropped"], 0);
    match snap["backend"].as_str().unwrap() {
        "pvm" => {
            assert_eq!(snap["vmexit_available"], false);
            assert_eq!(snap["exits"].as_array().unwrap().len(), 0);
        }
        "svm" | "vmx" => assert_eq!(snap["vmexit_available"], true),
        other => panic!("unexpected backend {other}"),
    }
}

/// Only the command's tree is counted: a second VM outside it is not.
#[test]
fn stat_command_filter_leaves_other_vms_out() {
    let Some(_serial) = can_profile("stat_command_filter_leaves_other_vms_out") else {
        return;
    };
    let mut outsider = Command::new(EXITPROF)
        .args([
            "vm",
            "--cpuid",
            "1000",
            "--cpuid-leaf",
            "0x8000ffff",
            "--rounds",
            "0",
            "--pause-ms",
            "1",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = exitprof(&[
        "stat",
        "--json",
        "--",
        EXITPROF,
        "vm",
        "--cpuid",
        "10",
        "--cpuid-leaf",
        "0x8000ffff",
    ]);
    outsider.kill().unwrap();
    outsider.wait().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let snap: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(
        count_where(&snap["events"]["cpuid"], |r| r["leaf"] == 0x8000_ffff_u32),
        10,
        "{snap}"
    );
}

#[test]
fn stat_with_a_pid_that_does_not_exist() {
    let out = exitprof(&["stat", "--pid", "4194304"]);
    let err = one_line_error(&out);
    assert!(err.contains("no process with pid 4194304"), "{err}");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unknown_flags_are_one_line_errors() {
    let out = exitprof(&["stat", "--frobnicate"]);
    let err = one_line_error(&out);
    assert!(err.contains("--frobnicate"), "{err}");
    assert_eq!(out.status.code(), Some(2));
    let out = exitprof(&["stat", "--duration", "soon"]);
    let err = one_line_error(&out);
    assert!(err.contains("\"soon\" is not a duration"), "{err}");
}

#[test]
fn stat_without_root_says_so() {
    let Some(_serial) = can_profile("stat_without_root_says_so") else {
        return;
    };
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            EXITPROF,
            "stat",
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    let err = one_line_error(&out);
    assert_eq!(
        err.trim_end(),
        "exitprof: exitprof needs root to load eBPF programs (CAP_BPF, CAP_PERFMON): run it with sudo"
    );
}

/// Runs exitprof in a private mount namespace after `setup` (a shell
/// snippet) changed what it sees under /sys/kernel.
fn in_mount_namespace(setup: &str, args: &str) -> std::process::Output {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("{setup} && exec {EXITPROF} {args}"))
        .output()
        .unwrap()
}

#[test]
fn stat_when_tracefs_cannot_be_mounted() {
    let Some(_serial) = can_profile("stat_when_tracefs_cannot_be_mounted") else {
        return;
    };
    // An empty /sys/kernel: no tracing directory to mount tracefs on.
    let out = in_mount_namespace("mount -t tmpfs none /sys/kernel", "stat --duration 1s");
    let err = one_line_error(&out);
    assert!(
        err.starts_with("exitprof: tracefs is not mounted at /sys/kernel/tracing and mounting it failed: No such file or directory"),
        "{err}"
    );
    assert!(
        err.contains("mount -t tracefs nodev /sys/kernel/tracing"),
        "{err}"
    );
}

#[test]
fn stat_when_a_tracepoint_is_missing() {
    let Some(_serial) = can_profile("stat_when_a_tracepoint_is_missing") else {
        return;
    };
    // A tracing directory whose events lack kvm, as on a kernel without
    // the kvm module.
    let out = in_mount_namespace(
        "mount -t tmpfs none /sys/kernel/tracing && mkdir -p /sys/kernel/tracing/events/sched",
        "stat --duration 1s",
    );
    let err = one_line_error(&out);
    assert_eq!(
        err.trim_end(),
        "exitprof: tracepoint kvm:kvm_cpuid does not exist in this kernel (/sys/kernel/tracing/events/kvm/kvm_cpuid/format is missing): is the kvm module loaded? (`modprobe kvm`)"
    );
}

/// Ctrl-C detaches every program and still prints the snapshot; the
/// `--ready-file` exists exactly while the programs are attached.
#[test]
fn stat_interrupted_prints_and_detaches() {
    let Some(_serial) = can_profile("stat_interrupted_prints_and_detaches") else {
        return;
    };
    let before = exitprof_bpf_ids();
    let ready = std::env::temp_dir().join(format!("exitprof-ready-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let child = Command::new(EXITPROF)
        .args(["stat", "--json", "--ready-file"])
        .arg(&ready)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    while !ready.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no ready file in 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Attached as soon as the file is there, with exitprof's pid in it.
    let ours = loaded_since(&before);
    assert!(
        ours.iter().filter(|(kind, _)| *kind == 'p').count() >= 2,
        "programs attached once ready: {ours:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&ready).unwrap(),
        format!("{}\n", child.id())
    );
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id().cast_signed(), libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(snap["interval_ns"].as_u64().unwrap() >= 1_000_000_000);
    assert!(
        !ready.exists(),
        "the ready file goes when exitprof detaches"
    );
    assert_eq!(still_loaded(&ours), std::collections::BTreeSet::new());
}

/// Events that do not fit a full map are counted as dropped, never lost
/// silently. With one map entry, leaves 1, 5 and 9 share one way of the
/// per-CPU front cache (pinned to one CPU): leaf 1 is written back to the
/// map when leaf 5 takes the way, leaf 5 finds the map full when leaf 9
/// takes it, and leaf 9 stays cached.
#[test]
fn stat_reports_events_dropped_by_full_maps() {
    let Some(_serial) = can_profile("stat_reports_events_dropped_by_full_maps") else {
        return;
    };
    let script = format!(
        "{EXITPROF} vm --cpuid 5 --cpuid-leaf 1 >/dev/null && {EXITPROF} vm --cpuid 7 --cpuid-leaf 5 >/dev/null && {EXITPROF} vm --cpuid 3 --cpuid-leaf 9 >/dev/null"
    );
    let out = exitprof(&[
        "stat",
        "--json",
        "--map-entries",
        "1",
        "--",
        "taskset",
        "-c",
        "0",
        "sh",
        "-c",
        &script,
    ]);
    let snap = json(&out);
    let cpuid = &snap["events"]["cpuid"];
    assert_eq!(count_where(cpuid, |r| r["leaf"] == 1), 5, "{snap}");
    assert_eq!(count_where(cpuid, |r| r["leaf"] == 5), 0, "{snap}");
    assert_eq!(count_where(cpuid, |r| r["leaf"] == 9), 3, "{snap}");
    assert_eq!(snap["dropped"], 7, "{snap}");
}

/// Raw and classic tracepoints count the same events, exactly.
#[test]
fn stat_raw_and_classic_modes_count_the_same() {
    let Some(_serial) = can_profile("stat_raw_and_classic_modes_count_the_same") else {
        return;
    };
    let run = |mode: &str| {
        let out = exitprof(&[
            "stat", "--json", "--attach", mode, "--", EXITPROF, "vm", "--cpuid", "300", "--pio",
            "40", "--mmio", "30", "--msr", "20",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let snap: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        snap
    };
    let raw = run("raw");
    let classic = run("classic");
    assert_eq!(classic["attach_mode"], "classic", "{classic}");
    assert_ne!(raw["attach_mode"], "classic", "{raw}");
    // The counts, key by key (rates depend on each run's duration).
    let keys_and_counts = |rows: &serde_json::Value| -> Vec<serde_json::Value> {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.as_object_mut().unwrap().remove("rate_per_s");
                r
            })
            .collect()
    };
    for kind in ["cpuid", "pio", "mmio", "msr", "hypercall"] {
        assert_eq!(
            keys_and_counts(&raw["events"][kind]),
            keys_and_counts(&classic["events"][kind]),
            "{kind}"
        );
    }
    // Round-trip times differ from run to run; the counts do not.
    let counts = |snap: &serde_json::Value| -> Vec<(String, u64)> {
        snap["events"]["userspace_exit"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["name"].to_string(), r["count"].as_u64().unwrap()))
            .collect()
    };
    assert_eq!(counts(&raw), counts(&classic));
    assert_eq!(
        count_where(&raw["events"]["cpuid"], |r| r["leaf"] == 0),
        300
    );
    assert_eq!(
        count_where(&raw["events"]["pio"], |r| r["port"] == 0xe9),
        80
    );
    assert_eq!(
        count_where(&raw["events"]["mmio"], |r| r["gpa"] == 0xd000_0000u64),
        60
    );
    assert_eq!(
        count_where(&raw["events"]["msr"], |r| r["index"] == 0x8b),
        40
    );
}

/// `--cost`: exitprof's own programs, from the kernel's BPF statistics.
#[test]
fn stat_reports_its_own_cost() {
    let Some(_serial) = can_profile("stat_reports_its_own_cost") else {
        return;
    };
    let out = exitprof(&[
        "stat",
        "--cost",
        "--json",
        "--",
        EXITPROF,
        "vm",
        "--cpuid",
        "1000",
        "--cpuid-leaf",
        "0x5151",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let snap: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let cpuid = snap["programs"]
        .as_array()
        .expect("programs with --cost")
        .iter()
        .find(|p| p["name"] == "kvm_cpuid" || p["name"] == "kvm_cpuid_raw")
        .expect("kvm_cpuid's cost");
    // Every guest CPUID ran the program once (other processes' too, had
    // any run: the filter is inside the program).
    assert!(cpuid["run_count"].as_u64().unwrap() >= 1000, "{cpuid}");
    assert!(cpuid["run_time_ns"].as_u64().unwrap() > 0, "{cpuid}");
    let plain = exitprof(&["stat", "--json", "--duration", "100ms"]);
    let plain: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    assert!(
        plain.get("programs").is_none(),
        "no cost figures unless asked"
    );
}

/// Exits in flight kept in task storage (the default here) or in hash
/// maps (kernels without task storage) give the same counts and close
/// the same round trips.
#[test]
fn stat_in_flight_stores_count_the_same() {
    let Some(_serial) = can_profile("stat_in_flight_stores_count_the_same") else {
        return;
    };
    let mut seen = Vec::new();
    for store in ["task-storage", "hash"] {
        let out = exitprof(&[
            "stat",
            "--json",
            "--in-flight",
            store,
            "--",
            EXITPROF,
            "vm",
            "--vcpus",
            "2",
            "--pio",
            "300",
            "--mmio",
            "20",
            "--rounds",
            "2",
        ]);
        assert!(out.status.success(), "{store}: {out:?}");
        // The workload's own report comes first on the shared stdout.
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let snap: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        let io = &snap["events"]["userspace_exit"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "IO")
            .cloned()
            .unwrap_or_else(|| panic!("{store}: no IO row in {snap}"));
        // 2 vCPUs x 2 rounds x (300 out + 300 in + 1 done); each vCPU's
        // last done-port exit never returns to KVM_RUN.
        assert_eq!(io["count"], 2 * 2 * 601, "{store}");
        assert_eq!(io["roundtrips"], 2 * 2 * 601 - 2, "{store}");
        assert_eq!(
            snap.get("attach_note")
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .contains("exits in flight in hash maps"),
            store == "hash",
            "{store}: {snap}"
        );
        seen.push((io["count"].clone(), io["roundtrips"].clone()));
    }
    assert_eq!(seen[0], seen[1]);
}

/// The tracked set forgets dead processes and threads: after more short
/// lived children than it has room for (1,024), a VM the command starts
/// is still counted exactly.
#[test]
fn stat_tracks_a_command_that_outlives_many_children() {
    let Some(_serial) = can_profile("stat_tracks_a_command_that_outlives_many_children") else {
        return;
    };
    let script = format!(
        "i=0; while [ $i -lt 1100 ]; do /bin/true; i=$((i+1)); done; {EXITPROF} vm --vcpus 2 --pio 5 --rounds 3 > /dev/null"
    );
    let out = exitprof(&["stat", "--json", "--", "sh", "-c", &script]);
    let snap = json(&out);
    let pio = &snap["events"]["pio"];
    // 2 vCPUs x 3 rounds x 5 outs (and as many ins) on port 0xe9.
    assert_eq!(
        count_where(pio, |r| r["port"] == 0xe9 && r["write"] == true),
        30,
        "{snap}"
    );
    assert_eq!(
        count_where(pio, |r| r["port"] == 0xe9 && r["write"] == false),
        30
    );
}

/// Attaching to VMs in the middle of their exits, and detaching from
/// them the same way, several times in a row: a `KVM_RUN` whose return to
/// user space exitprof never saw is ignored, so no round trip is longer
/// than the time exitprof was attached, and none is counted that was not
/// opened (both stores).
#[test]
fn stat_attaches_and_detaches_while_vms_exit() {
    let Some(_serial) = can_profile("stat_attaches_and_detaches_while_vms_exit") else {
        return;
    };
    let vms: Vec<Child> = (0..3)
        .map(|_| {
            Command::new(EXITPROF)
                .args(["vm", "--vcpus", "2", "--pio", "20", "--mmio", "5"])
                .args(["--rounds", "0", "--pause-ms", "1"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let _vms = KillOnDrop(vms);
    std::thread::sleep(Duration::from_millis(300));
    for (i, store) in ["task-storage", "hash"].iter().cycle().take(6).enumerate() {
        let duration_ms = 300 + 100 * i as u64;
        let out = exitprof(&[
            "stat",
            "--json",
            "--in-flight",
            store,
            "--duration",
            &format!("{duration_ms}ms"),
        ]);
        let snap = json(&out);
        let interval_ns = snap["interval_ns"].as_u64().unwrap();
        let rows = snap["events"]["userspace_exit"].as_array().unwrap();
        assert!(!rows.is_empty(), "{store}: the VMs exited: {snap}");
        for r in rows {
            let (count, trips) = (
                r["count"].as_u64().unwrap(),
                r["roundtrips"].as_u64().unwrap(),
            );
            let (total, max) = (
                r["roundtrip_total_ns"].as_u64().unwrap(),
                r["roundtrip_max_ns"].as_u64().unwrap(),
            );
            assert!(trips <= count, "{store}: {r}");
            assert!(
                max <= interval_ns,
                "{store}: {max} ns > {interval_ns} ns attached: {r}"
            );
            assert!(total <= trips * max, "{store}: {r}");
        }
    }
}

/// Kills the VMs a test started, however it ends.
struct KillOnDrop(Vec<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for vm in &mut self.0 {
            let _ = vm.kill();
            let _ = vm.wait();
        }
    }
}
