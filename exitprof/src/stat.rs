//! `exitprof stat`: count while a command runs (or for a duration, or until
//! Ctrl-C), then print one report, like `perf stat`.
use std::{
    io::Write as _,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Child, Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    cli::{parse_duration, parse_live_pid},
    loader::{Filter, Options, Profiler},
    present::table,
    signals,
};

/// Arguments of `exitprof stat`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  sudo exitprof stat -- exitprof vm --cpuid 1234 --pio 300 --mmio 200
      count the built-in workload VM's exits (and only its process tree)
  sudo exitprof stat --pid $(pidof qemu-system-x86_64) --duration 10s
      count one running VM for 10 seconds
  sudo exitprof stat --json --duration 5s
      every VM on the host, one JSON snapshot")]
pub struct StatArgs {
    /// Print one JSON snapshot (see DESIGN.md) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Count only this process (and its children from now on); repeatable.
    #[arg(short, long = "pid", value_name = "PID", value_parser = parse_live_pid, conflicts_with = "command")]
    pub pids: Vec<u32>,
    /// Stop after this long (500ms, 5s, 2m); default: until COMMAND exits
    /// or Ctrl-C.
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// With COMMAND: count every VM on the host, not only COMMAND's tree.
    #[arg(short, long, requires = "command")]
    pub all: bool,
    /// Also break exits down per VM process and vCPU.
    #[arg(long)]
    pub by_vcpu: bool,
    /// The command to run and profile.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Runs `exitprof stat`.
///
/// # Errors
/// Loading, attaching, spawning or reading fails; each error says why.
pub fn main(args: &StatArgs) -> anyhow::Result<ExitCode> {
    signals::install();
    let filter = if !args.pids.is_empty() {
        Filter::Tracked(args.pids.clone())
    } else if args.command.is_empty() || args.all {
        Filter::All
    } else {
        // The command's pid is tracked once it is spawned, before it runs.
        Filter::Tracked(Vec::new())
    };
    let tracked_command = matches!(filter, Filter::Tracked(ref p) if p.is_empty());
    let mut profiler = Profiler::start(&Options {
        filter,
        breakdown: args.by_vcpu,
    })?;
    let scope = if !args.pids.is_empty() {
        let pids: Vec<String> = args.pids.iter().map(u32::to_string).collect();
        format!("pid {} and children", pids.join(","))
    } else if tracked_command {
        format!("`{}` and its children", args.command.join(" "))
    } else {
        "all processes".to_owned()
    };
    let mut child = if args.command.is_empty() {
        None
    } else {
        Some(spawn_gated(&args.command, |pid| {
            if tracked_command {
                profiler.track(pid)?;
            }
            Ok(())
        })?)
    };
    let deadline = args.duration.map(|d| Instant::now() + d);
    let mut status = None;
    loop {
        if let Some(c) = child.as_mut() {
            if let Some(s) = c.try_wait().context("waiting for the command")? {
                status = Some(s);
                break;
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) || signals::received().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let snapshot = profiler.snapshot()?;
    // Detach before printing: the report is final.
    drop(profiler);
    if args.json {
        println!("{}", serde_json::to_string(&snapshot)?);
    } else {
        print!("{}", table::render(&snapshot, &scope));
    }
    if let (Some(c), None) = (child.as_mut(), status) {
        // Stopped by the deadline or a signal while the command runs: end
        // it as `perf stat --timeout` does (SIGTERM, then reap).
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(c.id().cast_signed(), libc::SIGTERM) };
        let _ = c.wait();
    }
    Ok(match status {
        Some(s) if s.success() => ExitCode::SUCCESS,
        Some(s) => ExitCode::from(u8::try_from(s.code().unwrap_or(1)).unwrap_or(1)),
        None if signals::received().is_some() => ExitCode::from(130),
        None => ExitCode::SUCCESS,
    })
}

/// Spawns `command` stopped before `exec` until `ready(pid)` returned, so
/// that not one of its events happens before it is tracked.
fn spawn_gated(
    command: &[String],
    ready: impl FnOnce(u32) -> Result<(), crate::loader::LoadError>,
) -> anyhow::Result<Child> {
    let (gate_read, mut gate_write) = std::io::pipe().context("creating a pipe")?;
    let read_fd = gate_read.as_raw_fd();
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]);
    // SAFETY: the closure only calls async-signal-safe read(2) and close(2).
    unsafe {
        cmd.pre_exec(move || {
            let mut byte = 0u8;
            let n = libc::read(read_fd, (&raw mut byte).cast(), 1);
            libc::close(read_fd);
            if n == 1 {
                Ok(())
            } else {
                Err(std::io::Error::other(
                    "exitprof stat went away before the command started",
                ))
            }
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {:?}", command[0]))?;
    drop(gate_read);
    if let Err(e) = ready(child.id()) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e.into());
    }
    gate_write.write_all(&[1]).context("starting the command")?;
    Ok(child)
}
