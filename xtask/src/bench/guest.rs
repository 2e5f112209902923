//! The real-guest part: inside the nested SVM sandbox, Debian's
//! `qemu-system-x86_64 -enable-kvm` boots a real Linux guest (the
//! sandbox's own Debian kernel and a busybox initramfs whose `/init` does a
//! fixed amount of work and powers off), end to end under each tracer,
//! interleaved round by round. Every tracer is attached before the clock
//! starts: exitprof through `--ready-file`, bpftrace when its program is
//! loaded, perf when its events are open (then 2 s more).
use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use super::{
    l2::{guest_initramfs, kvm_stat},
    types::{BPFTRACE_VMEXIT, GuestEvents, GuestTime, Report, Sizes, TRACERS, median},
};
use crate::sandbox::{self, BENCH_TOOLS, Kernel, Results, Scenario, Vendor};

/// Sandbox RAM for this part: the tools (~240 MB unpacked), QEMU and
/// its libraries, the guest's 256 MB and perf's recording.
const MEMORY_MB: u32 = 2048;

/// The real-guest part: one sandbox boot, every tracer, `rounds` rounds.
pub(super) fn guest_bench(
    kernel: &Kernel,
    exitprof: &Path,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let initrd = guest_initramfs(&sizes.guest_work)?;
    let l2 = sandbox::l2::qemu_files(kernel, &initrd)?;
    let mut extra: Vec<(&str, &str)> = BENCH_TOOLS.to_vec();
    extra.extend(l2.iter().map(|(a, b)| (a.as_str(), b.as_str())));
    let python = if sizes.guest_tracers.contains(&"kvm_stat") {
        match kvm_stat(kernel) {
            Ok(files) => Some(files),
            Err(e) => {
                println!("[bench] kvm_stat left out: {e:#}");
                report.guest_notes.push(format!("kvm_stat left out: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    if let Some(files) = &python {
        extra.extend(files.iter().map(|(a, b)| (a.as_str(), b.as_str())));
    }
    let tracers: Vec<&str> = TRACERS
        .iter()
        .copied()
        .filter(|t| sizes.guest_tracers.contains(t) && (*t != "kvm_stat" || python.is_some()))
        .collect();
    let script = script(sizes.guest_rounds, &tracers, sizes.guest_run_timeout_s);
    let results = sandbox::run_scenario_with_memory(
        kernel,
        exitprof,
        &Scenario {
            name: "bench-guest",
            script: &script,
            vendor: Vendor::Svm,
            nested_paging: true,
            timeout: Duration::from_secs(sizes.guest_timeout_s),
            modules: None,
            extra: &extra,
            cpus: sizes.guest_sandbox_cpus,
        },
        MEMORY_MB,
    )?;
    ensure!(
        results.get("exit")? == "0",
        "the real-guest script did not finish (see {})",
        results.log.display()
    );
    let mut failed = Vec::new();
    let (times, events) = parse(&results, &tracers, &mut failed)?;
    for f in &failed {
        println!("[bench] real guest: WARNING: {f}");
    }
    report.guest_notes.extend(failed);
    check_attach(&results)?;
    report.guest_work = Some(sizes.guest_work);
    report.guest = times;
    report.guest_events = events;
    Ok(())
}

/// The sandbox's script: `rounds` rounds of every tracer in turn.
fn script(rounds: usize, tracers: &[&str], run_s: u64) -> String {
    format!(
        r#"
G="qemu-system-x86_64 -enable-kvm -cpu qemu64 -m 256 -nodefaults -no-reboot -display none -monitor none -serial stdio -L /l2/fw -kernel /l2/vmlinuz -initrd /l2/initrd.gz"
A="console=ttyS0 quiet loglevel=1 panic=-1"
BT='{BPFTRACE_VMEXIT}'
up() {{ cut -d' ' -f1 /proc/uptime; }}
# A guest that did not finish (a run is bounded by timeout): its last lines.
l2fail() {{ grep -q '@@L2 done' /tmp/l2.log || tail -n 20 /tmp/l2.log | while IFS= read -r l; do echo "@@EXITPROF l2fail $1 $l"; done; }}
wait_prog() {{ i=0; while ! bpftool prog show | grep -q " name $1 " && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; }}
wait_file() {{ i=0; while [ ! -e $1 ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; }}
wait_gone() {{ i=0; while [ -e $1 ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; }}
# perf has its events open once /proc/PID/fd holds perf_event files; it
# enables them right after, so 2 s more covers it.
wait_perf() {{ i=0; while ! ls -l /proc/$1/fd 2>/dev/null | grep -q perf_event && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; sleep 2; }}
# SIGINT (every tracer writes its results then), SIGKILL after 20 s (perf
# kvm stat live without a terminal may not stop on SIGINT).
stop() {{ kill -INT $1; i=0; while kill -0 $1 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; if kill -0 $1 2>/dev/null; then echo "@@EXITPROF killed $2"; kill -KILL $1; fi; wait $1; }}
echo "@@EXITPROF qemu $(qemu-system-x86_64 --version | head -n 1)"
# A hung guest (seen once in a few hundred boots: QEMU in L1 no longer
# answered SIGTERM) gets SIGKILL 10 s after its time is up.
# One untimed run first: the first start of QEMU and of the guest pays for
# cold caches that no tracer should be charged with.
timeout -k 10 {run_s} $G -append "$A" > /tmp/l2.log 2>&1
echo "@@EXITPROF warmup $?"
l2fail warmup
# Tracers in a rotating order: round r starts with the r-th, so that no
# tracer always follows the same one.
set -- {tracers}
for r in $(seq {rounds}); do
  order="$*"
  set -- "$@" "$1"; shift
  for tracer in $order; do
    rm -f /tmp/ready /tmp/ep.json /tmp/perf.data
    PID=
    case $tracer in
      exitprof-raw) exitprof stat --attach raw --json --duration 1h --ready-file /tmp/ready > /tmp/ep.json 2>/tmp/ep.err & PID=$!; wait_file /tmp/ready ;;
      exitprof-classic) exitprof stat --attach classic --json --duration 1h --ready-file /tmp/ready > /tmp/ep.json 2>/tmp/ep.err & PID=$!; wait_file /tmp/ready ;;
      bpftrace) bpftrace -e "$BT" > /dev/null 2>&1 & PID=$!; wait_prog kvm_exit ;;
      perf-record) perf kvm stat record -a -o /tmp/perf.data > /dev/null 2>&1 & PID=$!; wait_perf $PID ;;
      perf-live) perf kvm stat live -d 1 < /dev/null > /dev/null 2>&1 & PID=$!; wait_perf $PID ;;
      kvm_stat) /usr/bin/python3.11 /bin/kvm_stat -t -l -s 1 < /dev/null > /dev/null 2>&1 & PID=$!; wait_perf $PID ;;
    esac
    t0=$(up)
    timeout -k 10 {run_s} $G -append "$A" > /tmp/l2.log 2>&1
    rc=$?
    t1=$(up)
    echo "@@EXITPROF guest $tracer $t0 $t1 $rc $(grep -c '@@L2 done' /tmp/l2.log)"
    l2fail $tracer
    if [ -n "$PID" ]; then stop $PID $tracer; fi
    wait_gone /tmp/ready
    if [ -s /tmp/ep.json ]; then echo "@@EXITPROF events $tracer $t0 $t1 $(tail -n 1 /tmp/ep.json)"; fi
  done
done
tail -n 5 /tmp/l2.log | while IFS= read -r l; do echo "@@EXITPROF l2log $l"; done
# Attach to and detach from the running guest, in the middle of its exits,
# with each store of exits in flight (the guest boots again and again
# until the last one, so that a short guest, as in --smoke, is running
# whenever exitprof attaches or detaches).
rm -f /tmp/attach-done
( while [ ! -e /tmp/attach-done ]; do timeout -k 10 {run_s} $G -append "$A" > /tmp/l2.log 2>&1; done ) &
LOOP=$!
sleep 3
for store in task-storage hash task-storage; do
  timeout 120 exitprof stat --json --duration 2s --in-flight $store > /tmp/attach.json 2>/dev/null
  echo "@@EXITPROF attach $store $(tail -n 1 /tmp/attach.json)"
done
touch /tmp/attach-done
wait $LOOP
"#,
        tracers = tracers.join(" "),
    )
}

/// The guest times and exitprof's event rates from the sandbox's lines.
fn parse(
    results: &Results,
    tracers: &[&str],
    failed: &mut Vec<String>,
) -> anyhow::Result<(Vec<GuestTime>, Vec<GuestEvents>)> {
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    for line in results.all("guest") {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [tracer, t0, t1, rc, done] = f[..] else {
            bail!("bad guest line {line:?}");
        };
        if rc != "0" || done != "1" {
            // Left out, and said: a guest that hangs (seen once in
            // SeaBIOS) must not cost the whole bench.
            let why = results
                .all("l2fail")
                .iter()
                .filter(|l| l.starts_with(tracer))
                .map(|l| (*l).to_owned())
                .collect::<Vec<_>>()
                .join(" | ");
            failed.push(format!(
                "a run under {tracer} did not finish (qemu exit {rc}): {why}"
            ));
            continue;
        }
        let i = tracers
            .iter()
            .position(|t| *t == tracer)
            .with_context(|| format!("unknown tracer {tracer}"))?;
        seconds[i].push(t1.parse::<f64>()? - t0.parse::<f64>()?);
    }
    ensure!(
        seconds.iter().all(|s| !s.is_empty()),
        "the sandbox timed no real guest for some tracer (see {})",
        results.log.display()
    );
    let base = median(seconds[0].clone());
    let times = tracers
        .iter()
        .zip(&seconds)
        .map(|(tracer, s)| {
            let m = median(s.clone());
            GuestTime {
                tracer: (*tracer).to_owned(),
                rounds: s.len(),
                median_s: m,
                min_s: s.iter().copied().fold(f64::INFINITY, f64::min),
                max_s: s.iter().copied().fold(0.0, f64::max),
                ratio: m / base,
            }
        })
        .collect();
    let mut events = Vec::new();
    for line in results.all("events") {
        let mut parts = line.splitn(4, ' ');
        let (Some(tracer), Some(t0), Some(t1), Some(json)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!("bad events line {line:?}");
        };
        let snapshot: Value = serde_json::from_str(json)
            .with_context(|| format!("{tracer}: exitprof stat printed no JSON"))?;
        let s = t1.parse::<f64>()? - t0.parse::<f64>()?;
        let (exits, counted) = exits_and_events(&snapshot);
        #[expect(clippy::cast_precision_loss, reason = "rates")]
        events.push(GuestEvents {
            tracer: tracer.to_owned(),
            seconds: s,
            exits,
            events: counted,
            exits_per_s: exits as f64 / s,
            events_per_s: counted as f64 / s,
        });
    }
    Ok((times, events))
}

/// Snapshots taken by attaching to the running guest and detaching from
/// it in the middle of its exits: an entry whose exit exitprof did not
/// see is ignored, so each reason has no more timed exits than exits, no
/// duration longer than the time attached, and a histogram that holds
/// exactly the timed ones.
fn check_attach(results: &Results) -> anyhow::Result<()> {
    let lines = results.all("attach");
    ensure!(
        lines.len() == 3,
        "the sandbox attached {} times, not 3 (see {})",
        lines.len(),
        results.log.display()
    );
    for line in lines {
        let (store, json) = line.split_once(' ').context("bad attach line")?;
        let snapshot: Value = serde_json::from_str(json)
            .with_context(|| format!("attaching ({store}): exitprof stat printed no JSON"))?;
        check_attached_snapshot(store, &snapshot)?;
    }
    Ok(())
}

fn check_attached_snapshot(store: &str, snapshot: &Value) -> anyhow::Result<()> {
    let interval = snapshot["interval_ns"].as_u64().unwrap_or(0);
    let rows: Vec<&Value> = snapshot["exits"]
        .as_array()
        .map(|r| r.iter().filter(|r| r.get("pid").is_none()).collect())
        .unwrap_or_default();
    ensure!(!rows.is_empty(), "attaching ({store}): no exits counted");
    for r in rows {
        let n = |f: &str| r[f].as_u64().unwrap_or(u64::MAX);
        let hist: u64 = r["hist_log2_ns"]
            .as_array()
            .map_or(0, |h| h.iter().filter_map(Value::as_u64).sum());
        ensure!(
            n("timed") <= n("count")
                && n("max_ns") <= interval
                && n("min_ns") <= n("max_ns")
                && hist == n("timed"),
            "attaching ({store}): absurd row {r} (attached {interval} ns)"
        );
    }
    Ok(())
}

/// `kvm_exit`s in a snapshot, and every event its programs handled:
/// exits, their entries, handler events, returns to user space and the
/// `KVM_RUN`s that closed their round trips.
fn exits_and_events(snapshot: &Value) -> (u64, u64) {
    let rows = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let sum = |v: &[Value], field: &str| v.iter().filter_map(|r| r[field].as_u64()).sum::<u64>();
    let exits: Vec<Value> = rows(&snapshot["exits"])
        .into_iter()
        .filter(|r| r.get("pid").is_none())
        .collect();
    let n_exits = sum(&exits, "count");
    let mut events = n_exits + sum(&exits, "timed");
    for kind in ["cpuid", "pio", "mmio", "msr", "hypercall"] {
        events += sum(&rows(&snapshot["events"][kind]), "count");
    }
    let userspace = rows(&snapshot["events"]["userspace_exit"]);
    events += sum(&userspace, "count") + sum(&userspace, "roundtrips");
    (n_exits, events)
}

/// The real-guest table.
pub(super) fn render(r: &Report, out: &mut String) {
    if r.guest.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "REAL GUEST (sandbox: qemu -enable-kvm boots Linux, end to end; median of rounds, ratio to untraced median)"
    );
    for t in &r.guest {
        let _ = writeln!(
            out,
            "  {:<17} {:>8.2} s  x{:.3}  (min {:.2}, max {:.2}, {} rounds)",
            t.tracer, t.median_s, t.ratio, t.min_s, t.max_s, t.rounds
        );
    }
    for note in &r.guest_notes {
        let _ = writeln!(out, "  ({note})");
    }
    for e in &r.guest_events {
        let _ = writeln!(
            out,
            "  {:<17} {:>10.0} exits/s  {:>10.0} events/s  ({} exits in {:.2} s)",
            e.tracer, e.exits_per_s, e.events_per_s, e.exits, e.seconds
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exits_and_every_event_handled() {
        let snapshot: Value = serde_json::from_str(
            r#"{"exits":[{"count":10,"timed":9},{"count":5,"timed":5,"pid":7}],
                "events":{"cpuid":[{"count":3}],"pio":[{"count":4},{"count":1}],
                "mmio":[],"msr":[{"count":2}],"hypercall":[],
                "userspace_exit":[{"count":6,"roundtrips":5}]}}"#,
        )
        .unwrap();
        // 10 exits + 9 entries + 3 + 5 + 2 + 6 + 5; per-vCPU rows are
        // the same exits again.
        assert_eq!(exits_and_events(&snapshot), (10, 40));
    }

    #[test]
    fn attached_snapshots_must_be_sane() {
        let row = |timed: u64, max: u64| {
            serde_json::json!({"count": 5, "timed": timed, "min_ns": 1, "max_ns": max,
                               "hist_log2_ns": [timed]})
        };
        let snap = |r| serde_json::json!({"interval_ns": 1000, "exits": [r]});
        assert!(check_attached_snapshot("x", &snap(row(5, 900))).is_ok());
        assert!(check_attached_snapshot("x", &snap(row(6, 900))).is_err());
        assert!(check_attached_snapshot("x", &snap(row(5, 2000))).is_err());
        assert!(check_attached_snapshot("x", &serde_json::json!({"exits": []})).is_err());
    }
}
