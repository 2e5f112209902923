//! The `record-ept-both` scenario: `exitprof record --ept both` under
//! nested and shadow paging, checked against ftrace per run.
use anyhow::{Context as _, ensure};

use super::{
    common::Part,
    common::{By, exit_counts, expect, ftrace_counts, ftrace_counts_script, snapshot},
};
use crate::sandbox::{Results, Vendor};

/// The scenario (its name is also its section in a shared boot).
pub(super) const PART: Part = Part {
    name: "record-ept-both",
    script,
    check,
};

/// `exitprof record --ept both` with the built-in workload, with ftrace
/// recording `kvm_exit` alongside; the report and its chart; then a record
/// killed with SIGTERM during its shadow-paging run.
pub(super) fn script(vendor: Vendor) -> String {
    format!(
        r#"
P=/sys/module/{module}/parameters/{param}
T=/sys/kernel/tracing
{stop_keeper}echo 16384 > $T/buffer_size_kb
echo > $T/trace
echo 1 > $T/events/kvm/kvm_exit/enable
timeout 120 exitprof record --ept both -o /tmp/r.json 2>/tmp/rec.err
echo "@@EXITPROF record_rc $?"
echo 0 > $T/events/kvm/kvm_exit/enable
while read -r l; do echo "@@EXITPROF stderr $l"; done < /tmp/rec.err
echo "@@EXITPROF paging_after $(cat $P)"
echo "@@EXITPROF recording $(cat /tmp/r.json)"
{ftrace}timeout 60 exitprof report /tmp/r.json --svg /tmp/r.svg > /tmp/report.txt
echo "@@EXITPROF summary $(tail -n 1 /tmp/report.txt)"
while IFS= read -r l; do echo "@@EXITPROF svg $l"; done < /tmp/r.svg
exitprof record --ept both --duration 3s -o /tmp/k.json -- exitprof vm --cpuid 100 --rounds 0 --pause-ms 5 > /dev/null 2>&1 &
REC=$!
i=0
while [ "$(cat $P 2>/dev/null)" != "N" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
sleep 1
echo "@@EXITPROF paging_during $(cat $P)"
kill -TERM $REC
wait $REC
echo "@@EXITPROF kill_rc $?"
echo "@@EXITPROF paging_after_kill $(cat $P)"
"#,
        module = vendor.module(),
        param = vendor.paging_param(),
        ftrace = ftrace_counts_script("", By::Pid),
        stop_keeper = crate::sandbox::STOP_KVM_KEEPER,
    )
}

/// The assertions on what [`script`] reported: nested paging shows its
/// fault exits, shadow paging none but its own; each run's counts equal
/// ftrace's for that run's workload pid; the paging parameter is back to
/// 1 afterwards, also when record is killed during the shadow-paging run;
/// the report's SVG chart parses and renders.
pub(super) fn check(vendor: Vendor, results: &Results) -> anyhow::Result<()> {
    let param = vendor.paging_param();
    let expect = expect(vendor);
    ensure!(
        results.get("record_rc")? == "0",
        "exitprof record failed: {:?}",
        results.all("stderr")
    );
    ensure!(
        results.get("paging_after")? == "Y",
        "{param} was not restored to 1"
    );
    let recording = snapshot(results, "recording")?;
    let runs = recording["runs"].as_array().context("runs")?;
    ensure!(runs.len() == 2, "{} runs recorded", runs.len());
    // ftrace: pid -> reason -> count.
    let truth = ftrace_counts(results, "")?;
    for (run, mode) in runs.iter().zip(["nested", "shadow"]) {
        let paging = format!("{param}={}", u8::from(mode == "nested"));
        ensure!(
            run["mode"] == mode && run["paging"] == paging.as_str(),
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
        let fault = expect.nested_fault;
        let faults = ours.get(fault).copied().unwrap_or(0);
        if mode == "nested" {
            ensure!(faults > 0, "nested paging shows no {fault} exits");
        } else {
            ensure!(faults == 0, "shadow paging shows {faults} {fault} exits");
            for &(name, count) in expect.shadow {
                ensure!(
                    ours.get(name) == Some(&count),
                    "shadow paging: {name} {:?} (expected {count})",
                    ours.get(name)
                );
            }
            ensure!(
                ours.get(expect.shadow_fault).is_some_and(|&n| n > 0),
                "shadow paging shows no {} exits",
                expect.shadow_fault
            );
        }
        for (name, count) in &ours {
            println!("[e2e] {mode:<6} {name:<28} {count:>8}");
        }
    }
    println!("[e2e] {}", results.get("summary")?);
    ensure!(
        results.get("paging_during")? == "N",
        "the killed record never reached shadow paging"
    );
    ensure!(
        results.get("kill_rc")? == "130",
        "record after SIGTERM exited {}",
        results.get("kill_rc")?
    );
    ensure!(
        results.get("paging_after_kill")? == "Y",
        "killing record left {param} at {}",
        results.get("paging_after_kill")?
    );
    check_svg(vendor, &results.all("svg").join("\n"))?;
    println!(
        "[e2e] {vendor} {}: PASS ({} only with nested paging, counts equal ftrace per run, {param} restored also after SIGTERM)",
        PART.name, expect.nested_fault
    );
    Ok(())
}

/// The report's chart: one bar per reason and run (plotters fills each
/// run's bars, and its legend swatch, with the run's colour), the reason
/// names and the legend as text, and it renders to a PNG.
fn check_svg(vendor: Vendor, svg: &str) -> anyhow::Result<()> {
    ensure!(
        svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"),
        "not an SVG document"
    );
    let texts: Vec<&str> = svg
        .split("<text")
        .skip(1)
        .filter_map(|t| Some(t[t.find('>')? + 1..t.find("</text>")?].trim()))
        .collect();
    let nested = svg.matches("fill=\"#4E79A7\"").count();
    let shadow = svg.matches("fill=\"#E15759\"").count();
    ensure!(
        nested > 1 && nested == shadow,
        "{nested} nested and {shadow} shadow bars (each with its legend swatch)"
    );
    let expect = expect(vendor);
    for text in [
        expect.nested_fault,
        expect.shadow[0].0,
        expect.shadow_fault,
        "nested paging",
        "shadow paging",
    ] {
        ensure!(texts.contains(&text), "the chart has no text {text:?}");
    }
    let dir = crate::sandbox::sandbox_dir();
    let (svg_path, png_path) = (
        dir.join(format!("report-{vendor}.svg")),
        dir.join(format!("report-{vendor}.png")),
    );
    std::fs::write(&svg_path, svg)?;
    crate::util::run(
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
