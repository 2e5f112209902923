//! `cargo xtask soak`: exitprof on a host where VMs come and go. For a
//! while (10 minutes; 70 s in `cargo xtask test`), workload VMs with 1-8
//! vCPUs start and end continuously, up to 50 at once, three in ten of
//! them killed with SIGKILL in the middle of their exits, while `exitprof
//! top` (every VM on the host, task storage) and `exitprof stat` (the
//! churn's process tree, the hash store of exits in flight) run the whole
//! time. It asserts:
//!
//! - the RSS of both exitprof processes and the entries of every hash map
//!   they hold stay flat after warm-up, and nothing is left in flight or
//!   tracked once the VMs are gone;
//! - `dropped` stays 0;
//! - exitprof's counts of the keys only lived VMs used (their CPUID
//!   leaves, ports and MMIO pages) equal the sums of those VMs' own
//!   reports, in `stat`'s snapshot and in `top`'s intervals added up;
//! - each exitprof process used less than 2% of a core.
//!
//! It writes `target/soak/<name>.json` and a chart of RSS and map entries
//! over time, `target/soak/<name>.svg` (rendered to PNG to check it).
pub mod churn;
mod plot;
mod sample;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};

use crate::util::{build_release, workspace_root};
use churn::{CPUID, KEYS, LIVED, MMIO, PIO};
use sample::Sample;

/// Arguments of `cargo xtask soak`.
#[derive(clap::Args)]
pub struct SoakArgs {
    /// Churn this long, in seconds.
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
    /// Most VMs at once.
    #[arg(long, default_value_t = 50)]
    pub max_vms: usize,
}

/// One soak's sizes.
pub struct Plan {
    pub name: &'static str,
    pub seconds: u64,
    pub max_vms: usize,
    /// Seconds between samples.
    pub every_s: u64,
    /// Samples before this are warm-up.
    pub warmup_s: f64,
}

/// The short soak of `cargo xtask test`.
pub const SHORT: Plan = Plan {
    name: "soak-short",
    seconds: 70,
    max_vms: 20,
    every_s: 3,
    warmup_s: 20.0,
};

/// The most RSS may grow after warm-up.
const RSS_SLACK_KB: u64 = 2048;
/// The most CPU an exitprof process may use, percent of one core.
const CPU_LIMIT_PERCENT: f64 = 2.0;

/// `cargo xtask soak`.
///
/// # Errors
/// When the soak cannot run or an assertion fails.
pub fn soak(args: &SoakArgs) -> anyhow::Result<()> {
    let exitprof = build_release()?;
    run(
        &exitprof,
        &Plan {
            name: "soak",
            seconds: args.seconds,
            max_vms: args.max_vms,
            every_s: 5,
            warmup_s: 60.0_f64.min(Duration::from_secs(args.seconds).as_secs_f64() / 4.0),
        },
    )
}

/// A background process, stopped with SIGINT (then SIGKILL) on drop.
struct Background(Child);

impl Background {
    fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id().cast_signed(), libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.0.kill();
                bail!("exitprof (pid {}) did not stop on SIGINT", self.0.id());
            }
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_for(path: &Path, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_mins(2);
    while !path.exists() {
        ensure!(Instant::now() < deadline, "{what} did not attach in 2 min");
        sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Runs one soak.
///
/// # Errors
/// When it cannot run or an assertion fails.
pub fn run(exitprof: &Path, plan: &Plan) -> anyhow::Result<()> {
    let dir = workspace_root().join("target/soak");
    fs::create_dir_all(&dir)?;
    let file = |ext: &str| dir.join(format!("{}.{ext}", plan.name));
    let (top_ready, stat_ready, vms_out) =
        (file("top.ready"), file("stat.ready"), file("vms.jsonl"));
    for f in [&top_ready, &stat_ready] {
        let _ = fs::remove_file(f);
    }
    println!(
        "[soak] {}: {} s of VM churn (up to {} VMs, 1-8 vCPUs) under exitprof top and stat",
        plan.name, plan.seconds, plan.max_vms
    );
    let mut top = Background(
        Command::new(exitprof)
            .args(["top", "--json", "-d", "1s", "--ready-file"])
            .arg(&top_ready)
            .stdout(fs::File::create(file("top.jsonl"))?)
            .stderr(Stdio::null())
            .spawn()
            .context("starting exitprof top")?,
    );
    wait_for(&top_ready, "exitprof top")?;
    let xtask = std::env::current_exe()?;
    let mut stat = Background(
        Command::new(exitprof)
            .args(["stat", "--json", "--in-flight", "hash", "--ready-file"])
            .arg(&stat_ready)
            .arg("--")
            .arg(&xtask)
            .arg("soak-churn")
            .arg("--exitprof")
            .arg(exitprof)
            .args(["--seconds", &plan.seconds.to_string()])
            .args(["--max-vms", &plan.max_vms.to_string()])
            .args(["--linger-s", &(plan.every_s + 2).to_string()])
            .arg("--out")
            .arg(&vms_out)
            .stdout(fs::File::create(file("stat.json"))?)
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting exitprof stat")?,
    );
    wait_for(&stat_ready, "exitprof stat")?;
    let pids = [("top", top.0.id()), ("stat", stat.0.id())];
    let hz = crate::util::clock_ticks_per_s();
    let started = Instant::now();
    let (mut samples, stat_status) = sample_until_done(&pids, &mut stat, plan, started)?;
    ensure!(
        stat_status.success(),
        "the churn under exitprof stat failed: {stat_status}"
    );
    // Every VM is gone: what stays in top's maps is what leaked.
    sleep(Duration::from_millis(2500));
    samples.push(take(&pids[..1], None, started));
    let top_status = top.stop()?;
    ensure!(
        top_status.success() || top_status.code() == Some(130),
        "exitprof top failed: {top_status}"
    );
    // The samples first: a failed check below leaves them to look at.
    fs::write(file("samples.json"), serde_json::to_string(&samples)?)?;
    let report = check(
        plan,
        &samples,
        hz,
        &file("stat.json"),
        &file("top.jsonl"),
        &vms_out,
    )?;
    fs::write(file("json"), serde_json::to_string_pretty(&report)?)?;
    let svg = plot::svg(
        &samples,
        &format!(
            "exitprof under VM churn: {} s, up to {} VMs of 1-8 vCPUs",
            plan.seconds, plan.max_vms
        ),
    )?;
    plot::write_and_check(
        &svg,
        &file("svg"),
        &[
            "exitprof top: RSS MB",
            "exitprof stat: RSS MB",
            "stat: IN_FLIGHT",
            "live vCPU threads",
        ],
    )?;
    println!(
        "[soak] {}: passed ({}); {} and {}",
        plan.name,
        report["summary"],
        file("json").display(),
        file("svg").display()
    );
    Ok(())
}

/// Samples every `plan.every_s` until exitprof stat (and its churn) ends.
fn sample_until_done(
    pids: &[(&str, u32)],
    stat: &mut Background,
    plan: &Plan,
    started: Instant,
) -> anyhow::Result<(Vec<Sample>, std::process::ExitStatus)> {
    let mut samples = Vec::new();
    loop {
        let churn = churn_pid(stat.0.id());
        samples.push(take(pids, churn, started));
        let next = Instant::now() + Duration::from_secs(plan.every_s);
        while Instant::now() < next {
            if stat.0.try_wait()?.is_some() {
                break;
            }
            sleep(Duration::from_millis(100));
        }
        if let Some(status) = stat.0.try_wait()? {
            return Ok((samples, status));
        }
    }
}

/// The churn process: stat's child.
fn churn_pid(stat: u32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{stat}/task/{stat}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn take(pids: &[(&str, u32)], churn: Option<u32>, started: Instant) -> Sample {
    let live = || churn.map_or((0, 0), sample::vms);
    let (vms, vcpu_threads) = live();
    let t_s = started.elapsed().as_secs_f64();
    let processes = pids
        .iter()
        .filter_map(|(name, pid)| Some(((*name).to_owned(), sample::process(*pid)?)))
        .collect();
    let (vms_after, vcpu_threads_after) = live();
    Sample {
        t_s,
        vms,
        vcpu_threads,
        vms_after,
        vcpu_threads_after,
        processes,
    }
}

/// Expected counts of the lived keys, from the lived VMs' own reports:
/// `kind key` -> count.
fn expected(vms: &str) -> anyhow::Result<(BTreeMap<String, u64>, Value)> {
    let mut want = BTreeMap::new();
    let mut summary = Value::Null;
    for line in vms.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).context("a VM report is no JSON")?;
        if v.get("summary").is_some() {
            summary = v["summary"].clone();
            continue;
        }
        let r = &v["requested"];
        let n = v["vcpus"].as_u64().context("vcpus")? * v["rounds"].as_u64().context("rounds")?;
        let io = v["userspace_exits"]["IO"].as_u64().unwrap_or(0);
        ensure!(
            io == n * (2 * u64::from(PIO) + 1),
            "a lived VM reported {io} IO exits for {n} vCPU rounds"
        );
        let (leaf, port, gpa) = (&r["cpuid_leaf"], &r["pio_port"], &r["mmio_gpa"]);
        *want.entry(format!("cpuid {leaf}")).or_default() += n * u64::from(CPUID);
        for dir in ["true", "false"] {
            *want.entry(format!("pio {port} {dir}")).or_default() += n * u64::from(PIO);
            *want.entry(format!("mmio {gpa} {dir}")).or_default() += n * u64::from(MMIO);
        }
    }
    Ok((want, summary))
}

/// exitprof's counts of the lived keys in one snapshot, added to `into`.
fn lived_counts(snapshot: &Value, into: &mut BTreeMap<String, u64>) {
    let rows = |kind: &str| {
        snapshot["events"][kind]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let in_range = |v: &Value, base: u64| {
        v.as_u64()
            .is_some_and(|x| (base..base + u64::from(KEYS)).contains(&x))
    };
    for r in rows("cpuid") {
        if in_range(&r["leaf"], u64::from(LIVED.cpuid_leaf)) && r["subleaf"] == 0 {
            *into.entry(format!("cpuid {}", r["leaf"])).or_default() +=
                r["count"].as_u64().unwrap_or(0);
        }
    }
    for r in rows("pio") {
        if in_range(&r["port"], u64::from(LIVED.port)) {
            *into
                .entry(format!("pio {} {}", r["port"], r["write"]))
                .or_default() += r["count"].as_u64().unwrap_or(0);
        }
    }
    for r in rows("mmio") {
        let page = r["gpa"]
            .as_u64()
            .unwrap_or(0)
            .checked_sub(u64::from(LIVED.gpa));
        if page.is_some_and(|p| p % 0x1000 == 0 && p / 0x1000 < u64::from(KEYS)) {
            *into
                .entry(format!("mmio {} {}", r["gpa"], r["write"]))
                .or_default() += r["count"].as_u64().unwrap_or(0);
        }
    }
}

/// Every assertion; the report of the run.
fn check(
    plan: &Plan,
    samples: &[Sample],
    hz: f64,
    stat_json: &PathBuf,
    top_jsonl: &PathBuf,
    vms_out: &PathBuf,
) -> anyhow::Result<Value> {
    let (want, summary) = expected(&fs::read_to_string(vms_out)?)?;
    ensure!(!want.is_empty(), "no VM lived to report");
    let stat_text = fs::read_to_string(stat_json)?;
    let stat: Value = serde_json::from_str(stat_text.lines().last().unwrap_or(""))
        .context("exitprof stat printed no JSON")?;
    let mut from_stat = BTreeMap::new();
    lived_counts(&stat, &mut from_stat);
    ensure!(
        from_stat == want,
        "stat's counts of the lived VMs' keys {from_stat:?} are not their own {want:?}"
    );
    let (mut from_top, mut top_dropped) = (BTreeMap::new(), 0);
    for line in fs::read_to_string(top_jsonl)?
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let interval: Value = serde_json::from_str(line).context("a top interval is no JSON")?;
        lived_counts(&interval, &mut from_top);
        top_dropped += interval["dropped"].as_u64().unwrap_or(0);
    }
    ensure!(
        from_top == want,
        "top's counts of the lived VMs' keys {from_top:?} are not their own {want:?}"
    );
    ensure!(
        stat["dropped"] == 0 && top_dropped == 0,
        "events dropped: stat {}, top {top_dropped}",
        stat["dropped"]
    );
    let mut figures = serde_json::Map::new();
    for name in ["top", "stat"] {
        let series: Vec<(f64, &sample::ProcessSample)> = samples
            .iter()
            .filter_map(|s| Some((s.t_s, s.processes.get(name)?)))
            .collect();
        let (first, last) = (
            series.first().context("no sample")?,
            series.last().context("no sample")?,
        );
        let warm = series
            .iter()
            .find(|(t, _)| *t >= plan.warmup_s)
            .unwrap_or(last);
        let rss_after = series
            .iter()
            .filter(|(t, _)| *t >= warm.0)
            .map(|(_, p)| p.rss_kb);
        let rss_max = rss_after.clone().max().unwrap_or(0);
        ensure!(
            rss_max <= warm.1.rss_kb + RSS_SLACK_KB,
            "exitprof {name}'s RSS grew after warm-up: {} kB then, {rss_max} kB at most",
            warm.1.rss_kb
        );
        #[expect(clippy::cast_precision_loss, reason = "a percentage")]
        let cpu = (last.1.cpu_ticks - first.1.cpu_ticks) as f64 / hz / (last.0 - first.0).max(1.0)
            * 100.0;
        ensure!(
            cpu < CPU_LIMIT_PERCENT,
            "exitprof {name} used {cpu:.2}% of a core"
        );
        figures.insert(
            name.to_owned(),
            json!({"rss_kb_warm": warm.1.rss_kb, "rss_kb_max_after": rss_max,
                   "rss_kb_last": last.1.rss_kb, "cpu_percent": cpu,
                   "maps_last": last.1.maps}),
        );
    }
    check_maps(plan, samples)?;
    let vcpus_max = samples.iter().map(|s| s.vcpu_threads).max().unwrap_or(0);
    let vms_max = samples.iter().map(|s| s.vms).max().unwrap_or(0);
    Ok(json!({
        "summary": {"vms": summary, "vms_at_once_max": vms_max, "vcpu_threads_max": vcpus_max,
                    "lived_keys": want.len(), "lived_exits_checked": want.values().sum::<u64>()},
        "figures": figures,
        "samples": samples,
    }))
}

/// Hash maps after warm-up: event maps no larger than at warm-up's end
/// (their keys are a fixed set), the exits in flight (stat's hash store)
/// and the tracked set within what lives, and at the end empty.
fn check_maps(plan: &Plan, samples: &[Sample]) -> anyhow::Result<()> {
    let warm = samples
        .iter()
        .position(|s| s.t_s >= plan.warmup_s)
        .unwrap_or(0);
    for s in &samples[warm..] {
        let vcpus = s.vcpu_threads.max(s.vcpu_threads_after);
        let live = (s.vms + s.vcpu_threads).max(s.vms_after + s.vcpu_threads_after);
        for (name, p) in &s.processes {
            for (map, &n) in &p.maps {
                let at_warm = samples[warm]
                    .processes
                    .get(name)
                    .and_then(|w| w.maps.get(map))
                    .copied()
                    .unwrap_or(0);
                // Room for the VMs started between the two readings of
                // what lives (the churn starts tens a second): half again.
                let bound = match map.as_str() {
                    // One per vCPU thread.
                    "IN_FLIGHT" => vcpus * 3 / 2 + 64,
                    // The churn, its VMs and their threads.
                    "TRACKED_TGIDS" => live * 3 / 2 + 64,
                    _ => at_warm.max(u64::from(4 * KEYS) + 8),
                };
                ensure!(
                    n <= bound,
                    "exitprof {name}'s {map} holds {n} entries at {:.0} s (bound {bound}, {at_warm} after warm-up)",
                    s.t_s
                );
            }
        }
    }
    // After the last VM (the churn lingers): nothing left in flight, and
    // only the churn itself tracked. A sample taken while exitprof stat
    // was closing its maps read none: it says nothing.
    let after = samples[warm..]
        .iter()
        .rev()
        .find(|s| {
            s.vms == 0
                && s.processes
                    .get("stat")
                    .is_some_and(|p| p.maps.contains_key("TRACKED_TGIDS"))
        })
        .context("no reading of exitprof stat's maps after the last VM")?;
    let maps = &after.processes["stat"].maps;
    let (in_flight, tracked) = (maps.get("IN_FLIGHT"), maps.get("TRACKED_TGIDS"));
    ensure!(
        in_flight == Some(&0) && tracked.is_some_and(|&n| n <= 2),
        "after every VM was gone, exitprof stat kept {in_flight:?} entries in flight and {tracked:?} tracked ids"
    );
    Ok(())
}
