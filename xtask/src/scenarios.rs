//! The sandbox scenarios and their host-side assertions.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use crate::sandbox::{Counts, Kernel, Results, Scenario, run_scenario};

/// CPUIDs of the vmexit scenario's workload.
const CPUIDS: u64 = 5000;

/// Runs every scenario whose name contains `only` (all without it);
/// returns how many ran (and passed).
pub fn run_all(kernel: &Kernel, exitprof: &Path, only: Option<&str>) -> anyhow::Result<u64> {
    let wanted = |name: &str| only.is_none_or(|o| name.contains(o));
    let mut passed = 0;
    if wanted("vmexit-ground-truth") {
        vmexit_ground_truth(kernel, exitprof)?;
        passed += 1;
    }
    if wanted("record-ept-both") {
        record_ept_both(kernel, exitprof)?;
        passed += 1;
    }
    if wanted("guest-cpuid-mirror") {
        let modules = crate::kernel::build(kernel)?;
        crate::mirror_scenario::guest_cpuid_mirror(kernel, exitprof, &modules)?;
        passed += 1;
    }
    for line in crate::sandbox::KernelLine::ALL {
        if wanted(&format!("kvm-selftest-{}", line.name())) {
            crate::selftest_scenario::kvm_selftest(line, exitprof)?;
            passed += 1;
        }
    }
    Ok(passed)
}

/// `cargo xtask demo --sandbox`: the workload in a loop and one interval
/// of `exitprof top` in the sandbox, where the VM-exit view has rows.
pub fn demo(kernel: &Kernel, exitprof: &Path, workload: &[&str]) -> anyhow::Result<()> {
    let script = format!(
        "exitprof {} > /dev/null &\nsleep 1\nexitprof top --once -d 3s > /tmp/top.out 2>&1\nkill %1\nwhile IFS= read -r l; do echo \"@@EXITPROF top $l\"; done < /tmp/top.out\n",
        workload.join(" ")
    );
    let results = run_scenario(
        kernel,
        exitprof,
        &Scenario {
            name: "demo",
            script: &script,
            npt: true,
            timeout: Duration::from_secs(240),
            modules: None,
            extra: &[],
            cpus: 2,
        },
    )?;
    for line in results.all("top") {
        println!("{line}");
    }
    Ok(())
}

/// Shell lines that print the `kvm_exit` records ftrace holds, counted by
/// reason name, as `@@EXITPROF ftrace <count> <name>` (names may contain
/// spaces: `PF excp`), plus whether the trace buffer lost events.
const FTRACE_COUNTS: &str = r#"
echo "@@EXITPROF lost $(grep -c LOST /sys/kernel/tracing/trace)"
sed -n 's/.* kvm_exit: .* reason \(.*\) rip .*/\1/p' /sys/kernel/tracing/trace | sort | uniq -c |
  while read -r n r; do echo "@@EXITPROF ftrace $n $r"; done
"#;

/// ftrace's counts reported under `<prefix>ftrace` (`<prefix>lost`).
fn ftrace_counts(results: &Results, prefix: &str) -> anyhow::Result<Counts> {
    ensure!(
        results.get(&format!("{prefix}lost"))? == "0",
        "the ftrace buffer lost events: no ground truth"
    );
    results
        .all(&format!("{prefix}ftrace"))
        .into_iter()
        .map(|line| {
            let (n, name) = line.split_once(' ').context("ftrace line")?;
            Ok((name.to_owned(), n.parse()?))
        })
        .collect()
}

/// Per-reason rows (without `pid`) of an exitprof JSON snapshot.
fn exit_counts(snapshot: &Value) -> Counts {
    snapshot["exits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r.get("pid").is_none())
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("?").to_owned(),
                r["count"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn snapshot(results: &Results, key: &str) -> anyhow::Result<Value> {
    let text = results.get(key)?;
    serde_json::from_str(text).with_context(|| {
        format!(
            "exitprof printed no JSON snapshot ({text:?}); its stderr: {:?}",
            results.all("stderr")
        )
    })
}

/// `exitprof stat -- exitprof vm --cpuid 5000` against ftrace's own count
/// of `kvm_exit` by reason, in the same boot and the same interval.
fn vmexit_ground_truth(kernel: &Kernel, exitprof: &Path) -> anyhow::Result<()> {
    let script = format!(
        r#"
T=/sys/kernel/tracing
echo 16384 > $T/buffer_size_kb
echo > $T/trace
echo 1 > $T/events/kvm/kvm_exit/enable
timeout 120 exitprof stat --json --by-vcpu -- exitprof vm --json --cpuid {CPUIDS} > /tmp/stat.out 2> /tmp/stat.err
echo "@@EXITPROF stat_rc $?"
echo 0 > $T/events/kvm/kvm_exit/enable
echo "@@EXITPROF vm $(head -n 1 /tmp/stat.out)"
echo "@@EXITPROF stat $(tail -n 1 /tmp/stat.out)"
while read -r l; do echo "@@EXITPROF stderr $l"; done < /tmp/stat.err
{FTRACE_COUNTS}
echo > $T/trace
echo 1 > $T/events/kvm/kvm_exit/enable
timeout 120 exitprof stat --attach classic --json -- exitprof vm --json --cpuid {CPUIDS} > /tmp/classic.out 2> /tmp/classic.err
echo "@@EXITPROF classic_rc $?"
echo 0 > $T/events/kvm/kvm_exit/enable
echo "@@EXITPROF classic $(tail -n 1 /tmp/classic.out)"
while read -r l; do echo "@@EXITPROF classic_stderr $l"; done < /tmp/classic.err
echo "@@EXITPROF classic_lost $(grep -c LOST $T/trace)"
sed -n 's/.* kvm_exit: .* reason \(.*\) rip .*/\1/p' $T/trace | sort | uniq -c |
  while read -r n r; do echo "@@EXITPROF classic_ftrace $n $r"; done
timeout 120 exitprof stat -- exitprof vm --cpuid 1000 --pio 50 --mmio 20 --hlt 5 > /tmp/table.out 2>&1
echo "@@EXITPROF table_rc $?"
while IFS= read -r l; do echo "@@EXITPROF table $l"; done < /tmp/table.out
"#
    );
    let results = run_scenario(
        kernel,
        exitprof,
        &Scenario {
            name: "vmexit-ground-truth",
            script: &script,
            npt: true,
            timeout: Duration::from_secs(240),
            modules: None,
            extra: &[],
            cpus: 2,
        },
    )?;
    ensure!(
        results.get("npt")? == "Y",
        "kvm-amd did not come up with npt=1"
    );
    let snap = snapshot(&results, "stat")?;
    ensure!(
        results.get("stat_rc")? == "0",
        "exitprof stat failed: {:?}",
        results.all("stderr")
    );
    ensure!(
        snap["backend"] == "svm",
        "backend {} (expected svm)",
        snap["backend"]
    );
    ensure!(
        snap["vmexit_available"] == true,
        "vmexit source not available"
    );
    ensure!(
        snap["attach_mode"] == "raw",
        "with the image's modules (which carry BTF) auto mode chose {} ({})",
        snap["attach_mode"],
        snap["attach_note"]
    );
    let ours = exit_counts(&snap);
    let truth = ftrace_counts(&results, "")?;
    println!("[e2e] {:<28} {:>10} {:>10}", "reason", "exitprof", "ftrace");
    for name in ours
        .keys()
        .chain(truth.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        println!(
            "[e2e] {:<28} {:>10} {:>10}",
            name,
            ours.get(name).copied().unwrap_or(0),
            truth.get(name).copied().unwrap_or(0)
        );
    }
    let cpuid = snap["exits"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["isa"] == "svm" && r["reason"] == 0x72 && r.get("pid").is_none())
        .context("no svm cpuid (0x72) row")?;
    ensure!(cpuid["name"] == "cpuid", "0x72 is named {}", cpuid["name"]);
    ensure!(
        cpuid["count"] == CPUIDS,
        "cpuid count {} (expected exactly {CPUIDS})",
        cpuid["count"]
    );
    if ours != truth {
        bail!(
            "exitprof's per-reason counts differ from ftrace's: exitprof {ours:?}, ftrace {truth:?}"
        );
    }
    for row in snap["exits"].as_array().into_iter().flatten() {
        let (timed, total, min, max) = (
            row["timed"].as_u64().unwrap_or(0),
            row["total_ns"].as_u64().unwrap_or(0),
            row["min_ns"].as_u64().unwrap_or(0),
            row["max_ns"].as_u64().unwrap_or(0),
        );
        if timed == 0 || row.get("pid").is_some() {
            continue;
        }
        let avg = total / timed;
        ensure!(
            total > 0 && min > 0 && min <= avg && avg <= max,
            "{}: durations out of order: min {min} avg {avg} max {max} total {total}",
            row["name"]
        );
        let hist: u64 = row["hist_log2_ns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .sum();
        ensure!(
            hist == timed,
            "{}: histogram holds {hist} of {timed} timed exits",
            row["name"]
        );
    }
    // The per-(process, vCPU) breakdown repeats the same exits: one VM,
    // one vCPU (0), the workload's pid.
    let vm = snapshot(&results, "vm")?;
    let mut by_vcpu = Counts::new();
    for row in snap["exits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r.get("pid").is_some())
    {
        ensure!(
            row["pid"] == vm["pid"],
            "breakdown pid {} is not the workload's {}",
            row["pid"],
            vm["pid"]
        );
        ensure!(row["vcpu"] == 0, "breakdown vcpu {}", row["vcpu"]);
        *by_vcpu
            .entry(row["name"].as_str().unwrap_or("?").to_owned())
            .or_default() += row["count"].as_u64().unwrap_or(0);
    }
    ensure!(
        by_vcpu == ours,
        "breakdown {by_vcpu:?} differs from the per-reason rows {ours:?}"
    );
    ensure!(snap["dropped"] == 0, "dropped {}", snap["dropped"]);
    // The same workload with classic tracepoints: equal to ftrace as well.
    ensure!(
        results.get("classic_rc")? == "0",
        "exitprof stat --attach classic failed: {:?}",
        results.all("classic_stderr")
    );
    let classic = snapshot(&results, "classic")?;
    ensure!(
        classic["attach_mode"] == "classic",
        "--attach classic ran in mode {}",
        classic["attach_mode"]
    );
    let classic_counts = exit_counts(&classic);
    let classic_truth = ftrace_counts(&results, "classic_")?;
    ensure!(
        classic_counts == classic_truth,
        "classic mode: exitprof {classic_counts:?} != ftrace {classic_truth:?}"
    );
    ensure!(
        classic_counts.get("cpuid") == ours.get("cpuid"),
        "cpuid: classic {:?}, raw {:?}",
        classic_counts.get("cpuid"),
        ours.get("cpuid")
    );
    println!("[e2e] classic mode: {classic_counts:?} (equal to ftrace)");
    ensure!(
        results.get("table_rc")? == "0",
        "the second exitprof stat run failed with {} (124: it hung and timeout ended it)",
        results.get("table_rc")?
    );
    for line in results.all("table") {
        println!("[e2e] | {line}");
    }
    println!(
        "[e2e] vmexit-ground-truth: PASS (cpuid exactly {CPUIDS}, every reason equal to ftrace, in raw and in classic mode)"
    );
    Ok(())
}

/// `exitprof record --ept both` with the built-in workload: nested paging
/// shows npf exits, shadow paging none; each run's counts equal ftrace's
/// for that run's workload pid; npt is back to 1 afterwards, also when
/// record is killed during the shadow-paging run; the report's SVG chart
/// parses and renders.
fn record_ept_both(kernel: &Kernel, exitprof: &Path) -> anyhow::Result<()> {
    let script = r#"
T=/sys/kernel/tracing
echo 16384 > $T/buffer_size_kb
echo > $T/trace
echo 1 > $T/events/kvm/kvm_exit/enable
timeout 120 exitprof record --ept both -o /tmp/r.json 2>/tmp/rec.err
echo "@@EXITPROF record_rc $?"
echo 0 > $T/events/kvm/kvm_exit/enable
while read -r l; do echo "@@EXITPROF stderr $l"; done < /tmp/rec.err
echo "@@EXITPROF npt_after $(cat /sys/module/kvm_amd/parameters/npt)"
echo "@@EXITPROF recording $(cat /tmp/r.json)"
echo "@@EXITPROF lost $(grep -c LOST $T/trace)"
sed -n 's/^ *[^ ]*-\([0-9][0-9]*\) .* kvm_exit: .* reason \(.*\) rip .*/\1 \2/p' $T/trace | sort | uniq -c |
  while read -r n rest; do echo "@@EXITPROF ftrace $n $rest"; done
timeout 60 exitprof report /tmp/r.json --svg /tmp/r.svg > /tmp/report.txt
echo "@@EXITPROF summary $(tail -n 1 /tmp/report.txt)"
while IFS= read -r l; do echo "@@EXITPROF svg $l"; done < /tmp/r.svg
exitprof record --ept both --duration 3s -o /tmp/k.json -- exitprof vm --cpuid 100 --rounds 0 --pause-ms 5 > /dev/null 2>&1 &
REC=$!
i=0
while [ "$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null)" != "N" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
sleep 1
echo "@@EXITPROF npt_during $(cat /sys/module/kvm_amd/parameters/npt)"
kill -TERM $REC
wait $REC
echo "@@EXITPROF kill_rc $?"
echo "@@EXITPROF npt_after_kill $(cat /sys/module/kvm_amd/parameters/npt)"
"#;
    let results = run_scenario(
        kernel,
        exitprof,
        &Scenario {
            name: "record-ept-both",
            script,
            npt: true,
            timeout: Duration::from_secs(240),
            modules: None,
            extra: &[],
            cpus: 2,
        },
    )?;
    ensure!(
        results.get("record_rc")? == "0",
        "exitprof record failed: {:?}",
        results.all("stderr")
    );
    ensure!(
        results.get("npt_after")? == "Y",
        "npt was not restored to 1"
    );
    let recording = snapshot(&results, "recording")?;
    let runs = recording["runs"].as_array().context("runs")?;
    ensure!(runs.len() == 2, "{} runs recorded", runs.len());
    ensure!(results.get("lost")? == "0", "the ftrace buffer lost events");
    // ftrace: (pid, reason) -> count.
    let mut truth: std::collections::BTreeMap<u64, Counts> = std::collections::BTreeMap::new();
    for line in results.all("ftrace") {
        let mut parts = line.splitn(3, ' ');
        let (Some(n), Some(pid), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("bad ftrace line {line:?}");
        };
        truth
            .entry(pid.parse()?)
            .or_default()
            .insert(name.to_owned(), n.parse()?);
    }
    for (run, (mode, paging)) in runs.iter().zip([("nested", "npt=1"), ("shadow", "npt=0")]) {
        ensure!(
            run["mode"] == mode && run["paging"] == paging,
            "run {} {}",
            run["mode"],
            run["paging"]
        );
        let total = &run["final"];
        let ours = exit_counts(total);
        let pid = total["exits"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|r| r["pid"].as_u64())
            .context("no per-process rows in the recording")?;
        let theirs = truth.get(&pid).cloned().unwrap_or_default();
        println!("[e2e] {mode} paging (pid {pid}): exitprof {ours:?}");
        ensure!(
            ours == theirs,
            "{mode}: exitprof {ours:?} != ftrace {theirs:?}"
        );
        let npf = ours.get("npf").copied().unwrap_or(0);
        match mode {
            "nested" => ensure!(npf > 0, "nested paging shows no npf exits"),
            _ => {
                ensure!(npf == 0, "shadow paging shows {npf} npf exits");
                ensure!(
                    ours.get("write_cr3") == Some(&200),
                    "write_cr3 {:?}",
                    ours.get("write_cr3")
                );
                ensure!(
                    ours.get("invlpg") == Some(&200),
                    "invlpg {:?}",
                    ours.get("invlpg")
                );
            }
        }
    }
    println!("[e2e] {}", results.get("summary")?);
    ensure!(
        results.get("npt_during")? == "N",
        "the killed record never reached shadow paging"
    );
    ensure!(
        results.get("kill_rc")? == "130",
        "record after SIGTERM exited {}",
        results.get("kill_rc")?
    );
    ensure!(
        results.get("npt_after_kill")? == "Y",
        "killing record left npt at {}",
        results.get("npt_after_kill")?
    );
    check_svg(&results.all("svg").join("\n"))?;
    println!(
        "[e2e] record-ept-both: PASS (npf only with NPT, counts equal ftrace per run, npt restored also after SIGTERM)"
    );
    Ok(())
}

/// The report's chart: bars per reason and run, labels, a legend, and it
/// renders to a PNG.
fn check_svg(svg: &str) -> anyhow::Result<()> {
    ensure!(
        svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"),
        "not an SVG document"
    );
    let bars = svg.matches("<rect class=\"bar\"").count();
    let labels = svg.matches("class=\"label\"").count();
    ensure!(
        labels > 0 && bars == 2 * labels,
        "{bars} bars for {labels} reasons"
    );
    for reason in ["npf", "write_cr3", "PF excp"] {
        ensure!(
            svg.contains(&format!(">{reason}</text>")),
            "no label {reason}"
        );
    }
    ensure!(
        svg.contains(">nested paging</text>") && svg.contains(">shadow paging</text>"),
        "no legend"
    );
    let dir = crate::sandbox::sandbox_dir();
    let (svg_path, png_path) = (dir.join("report.svg"), dir.join("report.png"));
    std::fs::write(&svg_path, svg)?;
    crate::setup::run(
        std::process::Command::new("rsvg-convert")
            .arg("-o")
            .arg(&png_path)
            .arg(&svg_path),
    )?;
    let png = std::fs::read(&png_path)?;
    ensure!(
        png.starts_with(b"\x89PNG") && png.len() > 1000,
        "rsvg-convert made no image"
    );
    println!(
        "[e2e] chart rendered: {} ({} bytes)",
        png_path.display(),
        png.len()
    );
    Ok(())
}
