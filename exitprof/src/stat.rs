//! `exitprof stat`: count while a command runs (or for a duration, or until
//! Ctrl-C), then print one report, like `perf stat`.
use std::{
    ffi::CString,
    io::Write as _,
    os::fd::AsRawFd as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    cli::{parse_duration, parse_live_pid},
    loader::{AttachMode, Filter, Options, Profiler},
    present::table,
    signals,
    snapshot::Snapshot,
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
      every VM on the host, one JSON snapshot
  sudo exitprof stat --cost --attach classic -- exitprof vm --cpuid 100000
      what each program costs per event with classic tracepoints")]
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
    /// Also report exitprof's own cost: runs and time per program, from
    /// the kernel's BPF statistics (adds a little to every program run).
    #[arg(long)]
    pub cost: bool,
    /// Attach the KVM programs as raw tracepoints (offsets from BTF), as
    /// classic tracepoints (offsets from tracefs), or raw where possible.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach: AttachMode,
    /// Capacity of the event maps (testing drop accounting).
    #[arg(long, hide = true, value_name = "N")]
    pub map_entries: Option<u32>,
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
    let outcome = profile(&Run {
        command: &args.command,
        pids: &args.pids,
        all: args.all,
        duration: args.duration,
        breakdown: args.by_vcpu,
        map_entries: args.map_entries,
        cost: args.cost,
        attach: args.attach,
        interval: None,
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&outcome.snapshot)?);
    } else {
        print!("{}", table::render(&outcome.snapshot, &outcome.scope));
    }
    Ok(match outcome.status {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None if signals::received().is_some() => ExitCode::from(130),
        None => ExitCode::SUCCESS,
    })
}

/// What to profile, and for how long.
pub struct Run<'a> {
    /// Command to run and count (its process tree unless `all`).
    pub command: &'a [String],
    /// Processes to count (exclusive with `command`).
    pub pids: &'a [u32],
    /// With a command: count the whole host.
    pub all: bool,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Per (process, vCPU) rows too.
    pub breakdown: bool,
    /// Event map capacity override.
    pub map_entries: Option<u32>,
    /// Report exitprof's own cost per program.
    pub cost: bool,
    /// Raw or classic tracepoints.
    pub attach: AttachMode,
    /// Also take a cumulative snapshot every interval.
    pub interval: Option<Duration>,
}

/// What a profiled run saw.
pub struct Outcome {
    /// Everything, at the end.
    pub snapshot: Snapshot,
    /// Cumulative snapshots every `Run::interval`.
    pub intervals: Vec<Snapshot>,
    /// The command's exit code, when it exited (128 + signal if killed).
    pub status: Option<i32>,
    /// What was counted, for people.
    pub scope: String,
}

/// Attaches, runs the command (held before exec until it is tracked),
/// waits for it, the duration or SIGINT/SIGTERM, and reads the maps. The
/// programs are detached when this returns, on every path.
///
/// # Errors
/// Loading, attaching, spawning or reading fails.
pub fn profile(run: &Run) -> anyhow::Result<Outcome> {
    let filter = if !run.pids.is_empty() {
        Filter::Tracked(run.pids.to_vec())
    } else if run.command.is_empty() || run.all {
        Filter::All
    } else {
        // The command's pid is tracked once it is spawned, before it runs.
        Filter::Tracked(Vec::new())
    };
    let tracked_command = matches!(filter, Filter::Tracked(ref p) if p.is_empty());
    let mut profiler = Profiler::start(&Options {
        filter,
        breakdown: run.breakdown,
        map_entries: run.map_entries,
        cost: run.cost,
        attach: run.attach,
    })?;
    if !profiler.measures_roundtrips() {
        eprintln!(
            "exitprof: note: syscalls:sys_enter_ioctl is missing (CONFIG_FTRACE_SYSCALLS): userspace round trips are not measured"
        );
    }
    let scope = if !run.pids.is_empty() {
        let pids: Vec<String> = run.pids.iter().map(u32::to_string).collect();
        format!("pid {} and children", pids.join(","))
    } else if tracked_command {
        format!("`{}` and its children", run.command.join(" "))
    } else {
        "all processes".to_owned()
    };
    let mut child = if run.command.is_empty() {
        None
    } else {
        let mut child = GatedChild::fork(run.command)?;
        if tracked_command && let Err(e) = profiler.track(child.id()) {
            child.terminate();
            return Err(e.into());
        }
        child.release()?;
        Some(child)
    };
    let started = Instant::now();
    let deadline = run.duration.map(|d| started + d);
    let mut next_interval = run.interval.map(|i| started + i);
    let mut intervals = Vec::new();
    let mut status = None;
    loop {
        if let Some(c) = child.as_mut()
            && let Some(s) = c.try_wait()?
        {
            status = Some(s);
            break;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) || signals::received().is_some() {
            break;
        }
        if let (Some(at), Some(every)) = (next_interval, run.interval)
            && now >= at
        {
            intervals.push(profiler.snapshot()?);
            next_interval = Some(at + every);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let snapshot = profiler.snapshot()?;
    drop(profiler);
    if let (Some(c), None) = (child.as_mut(), status) {
        // Stopped by the deadline or a signal while the command runs: end
        // it as `perf stat --timeout` does.
        c.terminate();
    }
    Ok(Outcome {
        snapshot,
        intervals,
        status,
        scope,
    })
}

/// A command forked by `stat`, held before `exec` until released.
struct GatedChild {
    pid: libc::pid_t,
    /// Write end of the gate; closing it without writing makes the child
    /// exit instead of running the command.
    gate: Option<std::io::PipeWriter>,
    status: Option<i32>,
}

impl GatedChild {
    /// Forks; the child waits on a pipe before it `exec`s `command`.
    /// (`std::process::Command` cannot do this: `spawn` waits for `exec`.)
    fn fork(command: &[String]) -> anyhow::Result<Self> {
        let argv: Vec<CString> = command
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .context("COMMAND contains a NUL byte")?;
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let (gate_read, gate_write) = std::io::pipe().context("creating a pipe")?;
        let read_fd = gate_read.as_raw_fd();
        // SAFETY: after fork the child only calls async-signal-safe
        // functions (read, close, execvp, write, _exit) on memory prepared
        // before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("fork failed: {}", std::io::Error::last_os_error());
        }
        if pid == 0 {
            unsafe {
                let mut byte = 0u8;
                let n = libc::read(read_fd, (&raw mut byte).cast(), 1);
                libc::close(read_fd);
                if n != 1 {
                    libc::_exit(127);
                }
                libc::execvp(argv_ptrs[0], argv_ptrs.as_ptr());
                let msg = b"exitprof: cannot run COMMAND (execvp failed)\n";
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::_exit(127);
            }
        }
        drop(gate_read);
        Ok(Self {
            pid,
            gate: Some(gate_write),
            status: None,
        })
    }

    fn id(&self) -> u32 {
        self.pid.cast_unsigned()
    }

    /// Lets the command run.
    fn release(&mut self) -> anyhow::Result<()> {
        if let Some(mut gate) = self.gate.take() {
            gate.write_all(&[1]).context("starting the command")?;
        }
        Ok(())
    }

    /// The exit code (128 + signal when killed), once it exited.
    fn try_wait(&mut self) -> anyhow::Result<Option<i32>> {
        if self.status.is_none() {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            let rc = unsafe { libc::waitpid(self.pid, &raw mut status, libc::WNOHANG) };
            if rc < 0 {
                bail!(
                    "waiting for the command: {}",
                    std::io::Error::last_os_error()
                );
            }
            if rc == self.pid {
                self.status = Some(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                });
            }
        }
        Ok(self.status)
    }

    /// Ends the command (SIGTERM) and reaps it.
    fn terminate(&mut self) {
        self.gate = None;
        if self.status.is_none() {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGTERM);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}
