//! The `record-ept-both` scenario: `exitprof record --ept both` under
//! nested and shadow paging, checked against ftrace per run.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail, ensure};

use super::common::{Counts, exit_counts, ftrace_counts_script, snapshot};
use crate::sandbox::{Kernel, Scenario, run_scenario};

/// `exitprof record --ept both` with the built-in workload: nested paging
/// shows npf exits, shadow paging none; each run's counts equal ftrace's
/// for that run's workload pid; npt is back to 1 afterwards, also when
/// record is killed during the shadow-paging run; the report's SVG chart
/// parses and renders.
#[expect(
    clippy::too_many_lines,
    reason = "one boot: its script, then its assertions, read top to bottom"
)]
pub(super) fn record_ept_both(kernel: &Kernel, exitprof: &Path) -> anyhow::Result<()> {
    let script = format!(
        r#"
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
{ftrace}timeout 60 exitprof report /tmp/r.json --svg /tmp/r.svg > /tmp/report.txt
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
"#,
        ftrace = ftrace_counts_script("", true)
    );
    let results = run_scenario(
        kernel,
        exitprof,
        &Scenario {
            name: "record-ept-both",
            script: &script,
            npt: true,
            timeout: Duration::from_mins(4),
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
        if mode == "nested" {
            ensure!(npf > 0, "nested paging shows no npf exits");
        } else {
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

/// The report's chart: one bar per reason and run (plotters fills each
/// run's bars, and its legend swatch, with the run's colour), the reason
/// names and the legend as text, and it renders to a PNG.
fn check_svg(svg: &str) -> anyhow::Result<()> {
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
    for text in [
        "npf",
        "write_cr3",
        "PF excp",
        "nested paging",
        "shadow paging",
    ] {
        ensure!(texts.contains(&text), "the chart has no text {text:?}");
    }
    let dir = crate::sandbox::sandbox_dir();
    let (svg_path, png_path) = (dir.join("report.svg"), dir.join("report.png"));
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
