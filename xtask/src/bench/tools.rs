//! Running the tracers and reading their programs' statistics.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use serde_json::Value;

use super::types::{ProgramCost, Slowdown, median};
use crate::util::output;

/// Stdout of a command that must succeed.
pub(super) fn command_output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed with {}", out.status);
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `duration_ns` of one `exitprof vm --json` run, in ms.
pub(super) fn vm_ms(exitprof: &Path, args: &[&str]) -> anyhow::Result<f64> {
    let out = command_output(Command::new(exitprof).arg("vm").arg("--json").args(args))?;
    let v: Value = serde_json::from_str(out.trim()).context("exitprof vm printed no JSON")?;
    #[expect(clippy::cast_precision_loss, reason = "milliseconds for display")]
    Ok(v["duration_ns"].as_u64().context("no duration_ns")? as f64 / 1e6)
}

/// A tracer running in the background, stopped with SIGINT on drop.
pub(super) struct Tracer(pub(super) Child);

impl Tracer {
    pub(super) fn start(cmd: &mut Command, ready: impl Fn() -> bool) -> anyhow::Result<Self> {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("failed to run {cmd:?}"))?;
        let tracer = Self(child);
        let deadline = Instant::now() + Duration::from_mins(1);
        while !ready() {
            ensure!(Instant::now() < deadline, "{cmd:?} did not attach in 60 s");
            sleep(Duration::from_millis(50));
        }
        Ok(tracer)
    }
}

impl Drop for Tracer {
    /// SIGINT (the tracers write their results then), again after 5 s
    /// (bpftrace 0.17 has been seen to miss the first one right after it
    /// attached, and the bench then waited for it forever), SIGKILL after
    /// 20 s.
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let interrupt = || {
            let _ = Command::new("kill").args(["-INT", &pid]).status();
        };
        let started = Instant::now();
        let mut again = true;
        interrupt();
        while matches!(self.0.try_wait(), Ok(None)) {
            let waited = started.elapsed();
            if waited > Duration::from_secs(20) {
                let _ = self.0.kill();
                let _ = self.0.wait();
                return;
            }
            if again && waited > Duration::from_secs(5) {
                again = false;
                interrupt();
            }
            sleep(Duration::from_millis(50));
        }
    }
}

/// Names of the BPF programs loaded now, from bpftool.
pub(super) fn loaded_programs() -> Vec<Value> {
    output(Command::new("bpftool").args(["prog", "show", "-j"]))
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

pub(super) fn has_program(name: &str) -> bool {
    loaded_programs().iter().any(|p| p["name"] == name)
}

/// Mean cost per run of the programs in `programs` (kernel BPF
/// statistics as bpftool, `runs_field` = `run_cnt`, or exitprof's
/// `--cost`, `run_count`, list them) that ran and that `keep` names.
pub(super) fn program_costs(
    programs: &[Value],
    tracer: &str,
    runs_field: &str,
    keep: impl Fn(&str) -> bool,
) -> Vec<ProgramCost> {
    programs
        .iter()
        .filter_map(|p| {
            let name = p["name"].as_str()?;
            let runs = p[runs_field].as_u64().filter(|&r| r > 0)?;
            let ns = p["run_time_ns"].as_u64()?;
            #[expect(clippy::cast_precision_loss, reason = "a mean for display")]
            let per = ns as f64 / runs as f64;
            keep(name).then(|| ProgramCost {
                tracer: tracer.to_owned(),
                program: name.to_owned(),
                runs,
                ns_per_run: per,
                rounds: 1,
                min_ns: per,
                max_ns: per,
            })
        })
        .collect()
}

/// bpftool's statistics of the programs named in `names`.
pub(super) fn bpftool_costs(programs: &[Value], tracer: &str, names: &[&str]) -> Vec<ProgramCost> {
    program_costs(programs, tracer, "run_cnt", |n| names.contains(&n))
}

/// exitprof's own `--cost` figures from a snapshot.
pub(super) fn exitprof_costs(snapshot: &Value, tracer: &str) -> Vec<ProgramCost> {
    let programs = snapshot["programs"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    program_costs(programs, tracer, "run_count", |_| true)
}

pub(super) fn push_slowdowns(
    into: &mut Vec<Slowdown>,
    workload: &str,
    tracers: &[&str],
    times: Vec<Vec<f64>>,
) {
    let mins: Vec<f64> = times
        .iter()
        .map(|t| t.iter().copied().fold(f64::INFINITY, f64::min))
        .collect();
    let base = mins[0];
    for ((tracer, t), min) in tracers.iter().zip(times).zip(mins) {
        into.push(Slowdown {
            workload: workload.to_owned(),
            tracer: (*tracer).to_owned(),
            rounds: t.len(),
            min_ms: min,
            median_ms: median(t),
            ratio: min / base,
        });
    }
}
