//! One profiling run: attach, spawn the command held before `exec` until
//! it is tracked, wait for it, a duration or a signal, read the maps, and
//! detach on every way out. The process-handling `unsafe` code lives here
//! (`child.rs`) and in `signals.rs`, nowhere else.
mod child;
pub mod signals;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    bpf::{AttachMode, Filter, InFlightMode, MirrorChoice, Options, Profiler},
    host::vmname,
    model::Snapshot,
};
use child::GatedChild;

/// What to profile, and for how long.
#[derive(Default)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "the switches of one run, each its own command-line flag"
)]
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
    /// Whose exits the guests of a patched KVM read.
    pub mirror: MirrorChoice,
    /// Also take a cumulative snapshot every interval.
    pub interval: Option<Duration>,
    /// Count exits per guest RIP too (exit sites).
    pub sites: bool,
    /// Task storage or hash maps for what vCPU threads have in flight.
    pub in_flight: InFlightMode,
    /// Written once every program is attached, removed once detached.
    pub ready_file: Option<&'a Path>,
}

/// `--ready-file PATH`: the file exists exactly while exitprof is
/// attached. It holds exitprof's pid and a newline and appears at once
/// (written beside, then renamed), so that a script can wait for it
/// before it starts the clock, and wait for it to go after stopping
/// exitprof. Removed on drop, on every way out of the profile.
pub struct ReadyFile(Option<PathBuf>);

impl ReadyFile {
    /// Announces that every program is attached.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn announce(path: Option<&Path>) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let Some(path) = path else {
            return Ok(Self(None));
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write the ready file {}", path.display()))?;
        Ok(Self(Some(path.to_owned())))
    }
}

impl Drop for ReadyFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
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
    /// The names of the VMs of tracked processes (`host::vmname`), read
    /// while they ran: a VMM that exited has no `/proc` entry left.
    pub names: BTreeMap<u32, String>,
}

/// How often the names of tracked processes are read while they run.
const NAME_EVERY: Duration = Duration::from_millis(200);

/// Names by pid, and whether the VMM's command line gave it (not `comm`).
type Names = BTreeMap<u32, (String, bool)>;

/// Reads the names of `pids`. Names change at `exec` (the forked child is
/// exitprof, then the command), so a command-line name replaces what was
/// read before; a `comm` only fills in, and never replaces a command-line
/// name (an exited VMM's zombie has no command line left).
fn read_names(pids: &[u32], names: &mut Names) {
    for &pid in pids {
        if let Some(name) = vmname::cmdline_name(pid) {
            names.insert(pid, (name, true));
        } else if !names.get(&pid).is_some_and(|n| n.1)
            && let Some(name) = vmname::vm_name(pid)
        {
            names.insert(pid, (name, false));
        }
    }
}

/// Attaches, runs the command (held before exec until it is tracked),
/// waits for it, the duration or SIGINT/SIGTERM, and reads the maps. The
/// programs are detached when this returns, on every path.
///
/// # Errors
/// Loading, attaching, spawning or reading fails.
pub fn profile(run: &Run) -> anyhow::Result<Outcome> {
    if let Some(program) = run.command.first() {
        child::runnable(program)?;
    }
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
        in_flight: run.in_flight,
        mirror: run.mirror,
        sites: run.sites,
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
    let ready = ReadyFile::announce(run.ready_file)?;
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
    let mut names = Names::new();
    let mut next_names = started;
    loop {
        if (tracked_command || !run.pids.is_empty()) && Instant::now() >= next_names {
            read_names(&profiler.tracked_pids(), &mut names);
            next_names += NAME_EVERY;
        }
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
    drop(ready);
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
        names: names
            .into_iter()
            .map(|(pid, (name, _))| (pid, name))
            .collect(),
    })
}
