//! The host part: per-event cost, the CPUID storm, exitprof top.
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;

use super::{
    tools::{
        Tracer, bpftool_costs, command_output, exitprof_costs, has_program, loaded_programs,
        push_slowdowns, vm_ms,
    },
    types::{BPFTRACE_HOST, ProgramCost, Report, Sizes},
};
use crate::util::{clock_ticks_per_s, cpu_ticks, output, run, status_kb};

pub(super) fn host(exitprof: &Path, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let cpuid = sizes.host_cpuid.to_string();
    // A tenth as many port I/O pairs: each is two returns to user space.
    let pio = (sizes.host_cpuid / 10).to_string();
    let storm = [
        "--cpuid",
        cpuid.as_str(),
        "--pio",
        pio.as_str(),
        "--mmio",
        "1000",
        "--msr",
        "1000",
    ];
    // Per-event cost: exitprof's own statistics, each mode (raw with the
    // hash store of exits in flight too: before and after task storage),
    // interleaved over rounds.
    let modes: [(&str, &[&str]); 3] = [
        ("exitprof-raw", &["--attach", "raw"]),
        (
            "exitprof-raw-hash",
            &["--attach", "raw", "--in-flight", "hash"],
        ),
        ("exitprof-classic", &["--attach", "classic"]),
    ];
    let mut costs = Vec::new();
    for _ in 0..sizes.host_rounds.min(3) {
        for (tracer, args) in modes {
            let out = command_output(
                Command::new(exitprof)
                    .args(["stat", "--cost", "--json"])
                    .args(args)
                    .arg("--")
                    .arg(exitprof)
                    .arg("vm")
                    .args(storm),
            )?;
            let snapshot: Value = serde_json::from_str(out.lines().last().unwrap_or(""))
                .context("exitprof stat printed no JSON")?;
            costs.extend(exitprof_costs(&snapshot, tracer));
        }
    }
    report.host_cost.extend(ProgramCost::merge_rounds(costs));
    // bpftrace's program, with the kernel's statistics on while it runs.
    {
        let _stats = BpfStats::on()?;
        let _bpftrace =
            Tracer::start(Command::new("bpftrace").args(["-e", BPFTRACE_HOST]), || {
                has_program("kvm_cpuid")
            })?;
        vm_ms(exitprof, &["--cpuid", &cpuid])?;
        report.host_cost.extend(bpftool_costs(
            &loaded_programs(),
            "bpftrace",
            &["kvm_cpuid"],
        ));
    }
    // Slowdown of a CPUID storm, tracers interleaved round by round.
    let tracers = ["none", "exitprof-raw", "exitprof-classic", "bpftrace"];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    for _ in 0..sizes.host_rounds {
        for (i, tracer) in tracers.iter().enumerate() {
            let _running = match *tracer {
                "none" => None,
                "bpftrace" => Some(Tracer::start(
                    Command::new("bpftrace").args(["-e", BPFTRACE_HOST]),
                    || has_program("kvm_cpuid"),
                )?),
                exitprof_mode => {
                    let (mode, program) = if exitprof_mode == "exitprof-raw" {
                        ("raw", "kvm_cpuid_raw")
                    } else {
                        ("classic", "kvm_cpuid")
                    };
                    Some(Tracer::start(
                        Command::new(exitprof).args([
                            "stat",
                            "--attach",
                            mode,
                            "--duration",
                            "10m",
                        ]),
                        || has_program(program),
                    )?)
                }
            };
            times[i].push(vm_ms(exitprof, &["--cpuid", &cpuid])?);
        }
    }
    push_slowdowns(&mut report.host_slowdown, "cpuid-storm", &tracers, times);
    Ok(())
}

/// `kernel.bpf_stats_enabled` on while alive.
pub(super) struct BpfStats;

pub(super) const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn on() -> anyhow::Result<Self> {
        fs::write(BPF_STATS, "1").with_context(|| format!("cannot enable {BPF_STATS}"))?;
        Ok(Self)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, "0");
    }
}

/// CPU share and RSS of `exitprof top` under tmux with the load-test map.
pub(super) fn tui(exitprof: &Path, seconds: u64) -> anyhow::Result<Value> {
    let session = format!("exitprof-bench-{}", std::process::id());
    let workload = Command::new(exitprof)
        .args([
            "vm",
            "--cpuid",
            "200",
            "--pio",
            "5",
            "--rounds",
            "0",
            "--pause-ms",
            "10",
        ])
        .stdout(Stdio::null())
        .spawn()
        .context("starting the workload VM")?;
    let _workload = Tracer(workload);
    let top = format!("{} top -d 1s --load-test-vcpus 64", exitprof.display());
    run(Command::new("tmux").args([
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "160",
        "-y",
        "50",
        &top,
    ]))?;
    let result = (|| -> anyhow::Result<Value> {
        let pid = (0..100)
            .find_map(|_| {
                sleep(Duration::from_millis(100));
                // The exitprof process itself, not the shell tmux runs it in.
                output(Command::new("pgrep").args(["-f", "top -d 1s --load-test-vcpus 64"]))?
                    .lines()
                    .filter_map(|l| l.trim().parse::<u32>().ok())
                    .find(|pid| {
                        fs::read_to_string(format!("/proc/{pid}/comm"))
                            .is_ok_and(|c| c.trim() == "exitprof")
                    })
            })
            .context("exitprof top did not start")?;
        // The vCPU view: the 1,920 rows are drawn every second.
        run(Command::new("tmux").args(["send-keys", "-t", &session, "3"]))?;
        sleep(Duration::from_secs(2));
        let ticks = |pid: u32| cpu_ticks(pid).context("exitprof top is gone");
        let before = ticks(pid)?;
        let started = Instant::now();
        sleep(Duration::from_secs(seconds));
        let used = ticks(pid)? - before;
        #[expect(clippy::cast_precision_loss, reason = "kB")]
        let rss_kb = status_kb(pid, "VmRSS:").context("no VmRSS")? as f64;
        let hz = clock_ticks_per_s();
        #[expect(clippy::cast_precision_loss, reason = "a percentage")]
        let cpu = used as f64 / hz / started.elapsed().as_secs_f64() * 100.0;
        Ok(serde_json::json!({
            "vcpus": 64, "reasons": 30, "interval_s": 1, "seconds": seconds,
            "cpu_percent": cpu, "rss_mb": rss_kb / 1024.0,
        }))
    })();
    let _ = Command::new("tmux")
        .args(["send-keys", "-t", &session, "q"])
        .status();
    sleep(Duration::from_millis(500));
    // Usually gone already: `q` ended the session.
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", &session])
        .stderr(Stdio::null())
        .status();
    result
}
