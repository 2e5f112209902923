//! `exitprof record`: the same workload under nested paging (EPT/NPT) and
//! under shadow paging, recorded to a file `exitprof report` reads.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    bpf::MirrorChoice,
    cli::parse_duration,
    host::{
        backend::{self, SYS_MODULE, VendorModule},
        paging::{self, PagingError},
        procfs,
        reload::{self, Reload, Restore, System},
    },
    model::{
        Backend,
        recording::{FORMAT, PagingMode, Recording, Run as RecordedRun, VERSION},
    },
    session::{Run, profile, signals},
};

/// Which paging modes to record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Ept {
    /// Nested paging (EPT/NPT) only.
    On,
    /// Shadow paging only.
    Off,
    /// Both, nested first.
    Both,
}

/// Arguments of `exitprof record`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Without COMMAND the built-in workload VM runs a mix that makes the paging
difference visible (CPUID, port I/O, MMIO, HLT, and where paging works,
CR3 writes, INVLPG and page touches). Switching reloads kvm_intel (ept=)
or kvm_amd (npt=) with every other parameter kept, and puts the original
mode back at the end, after a failure and after Ctrl-C.

Before unloading anything it proves that the module can come back: the
file modprobe would load (or --module FILE for insmod) must be the running
module (same build id), and must accept every parameter passed. If a load
fails, the original is loaded again; only if that fails too does record
exit with the commands that restore the host. After a SIGKILL, the next
record, or `record --restore`, puts the original mode back.

Examples:
  sudo exitprof record --ept both -o r.json
  sudo exitprof record --ept both --module /opt/kvm/kvm-amd.ko   # loaded with insmod
  sudo exitprof record --ept off -- qemu-system-x86_64 -enable-kvm ...
  sudo exitprof record --restore
  exitprof report r.json --svg r.svg")]
pub struct RecordArgs {
    /// Paging modes to record; without it, the current mode only.
    #[arg(long, value_enum)]
    pub ept: Option<Ept>,
    /// The recording to write.
    #[arg(short, long, default_value = "exitprof-record.json")]
    pub output: PathBuf,
    /// Stop each run after this long (default: when COMMAND exits).
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Snapshot interval within a run.
    #[arg(short, long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// With a KVM carrying exitprof's patch: each guest reads its own VM's
    /// exits (vm), every guest the whole host's (host: every tenant's
    /// activity, only where guests may see it), or no mirror (off).
    #[arg(long, value_enum, default_value_t = MirrorChoice::Vm, value_name = "SCOPE")]
    pub guest_mirror: MirrorChoice,
    /// Reload the KVM module even when other VMs run (they will die).
    #[arg(long)]
    pub force: bool,
    /// Reload the vendor module from this `.ko` file with insmod (for a
    /// module loaded with insmod, e.g. a patched KVM); it must be the
    /// running module.
    #[arg(long, value_name = "FILE", requires = "ept")]
    pub module: Option<PathBuf>,
    /// Only put back the paging mode a killed record left switched, and
    /// exit.
    #[arg(long, conflicts_with_all = ["ept", "module", "command", "duration"])]
    pub restore: bool,
    /// The workload; default: the built-in workload VM.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// The built-in workload: CPUID, I/O, MMIO and HLT, plus paging work
/// where the backend can page (not PVM).
fn default_workload(backend: Backend) -> anyhow::Result<Vec<String>> {
    let exe = std::env::current_exe().context("finding exitprof's own path")?;
    let mut cmd = vec![exe.display().to_string()];
    cmd.extend(
        [
            "vm", "--cpuid", "1000", "--pio", "100", "--mmio", "50", "--hlt", "10",
        ]
        .map(String::from),
    );
    if backend != Backend::Pvm {
        cmd.extend(["--paging", "200"].map(String::from));
    }
    Ok(cmd)
}

/// What `record` does about the paging mode.
enum Plan {
    /// Record once, in whatever mode the host runs (the vendor module whose
    /// mode is named in the recording, when there is one).
    Current(Option<VendorModule>),
    /// Record once per mode, switching the module between them; the
    /// guard restores the original mode.
    Switch(VendorModule, Restore, Vec<bool>),
}

impl Plan {
    /// The plan for `--ept` (and `--module`), on this host: a switch only
    /// once reloading is proven safe.
    fn new(ept: Option<Ept>, module_file: Option<&Path>) -> anyhow::Result<Self> {
        let module = match paging::switchable() {
            Ok(m) => m,
            Err(PagingError::NotSwitchable(why)) => {
                if ept.is_some() {
                    eprintln!(
                        "exitprof: cannot switch the paging mode: {why}; recording the current mode only"
                    );
                }
                return Ok(Self::Current(None));
            }
            Err(e) => return Err(e.into()),
        };
        let modes = match ept {
            None => return Ok(Self::Current(Some(module))),
            Some(Ept::On) => vec![true],
            Some(Ept::Off) => vec![false],
            Some(Ept::Both) => vec![true, false],
        };
        let reload = Reload::prove(Path::new(SYS_MODULE), &module, module_file, &System)?;
        Ok(Self::Switch(module, Restore::new(reload)?, modes))
    }
}

/// Puts back what a killed record left switched, saying what it did.
fn repair(quiet_when_clean: bool) -> anyhow::Result<()> {
    match reload::repair()? {
        Some(done) => {
            eprintln!("exitprof: a record was stopped before it restored the paging mode: {done}");
        }
        None if !quiet_when_clean => eprintln!("exitprof: nothing to restore"),
        None => {}
    }
    Ok(())
}

/// Fails now, not after the runs, when the recording cannot be written.
fn check_writable(path: &Path) -> anyhow::Result<()> {
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("cannot write the recording to {}", path.display()))?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Writes `recording` to `path`, saying so.
fn write(path: &Path, recording: &Recording) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string(recording)?)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "exitprof: wrote {} ({} run(s)); `exitprof report {}` shows it",
        path.display(),
        recording.runs.len(),
        path.display()
    );
    Ok(())
}

/// Runs `exitprof record`.
///
/// # Errors
/// Profiling, switching or writing fails; the paging mode is restored.
pub fn main(args: &RecordArgs) -> anyhow::Result<ExitCode> {
    signals::install();
    if args.restore {
        repair(false)?;
        return Ok(ExitCode::SUCCESS);
    }
    repair(true)?;
    check_writable(&args.output)?;
    let backend = backend::detect();
    let command = if args.command.is_empty() {
        default_workload(backend)?
    } else {
        args.command.clone()
    };
    let plan = Plan::new(args.ept, args.module.as_deref())?;
    let modes: Vec<Option<bool>> = match &plan {
        Plan::Switch(_, _, modes) => modes.iter().copied().map(Some).collect(),
        Plan::Current(Some(m)) => vec![Some(paging::nested(m)?)],
        Plan::Current(None) => vec![None],
    };
    let module = match &plan {
        Plan::Switch(m, _, _) | Plan::Current(Some(m)) => Some(*m),
        Plan::Current(None) => None,
    };
    let mut runs = Vec::new();
    for nested in modes {
        if signals::received().is_some() {
            break;
        }
        if let (Plan::Switch(m, restore, _), Some(nested)) = (&plan, nested)
            && paging::nested(m)? != nested
        {
            if !args.force
                && let Some(pid) = procfs::other_vm(&[std::process::id()])
            {
                return Err(PagingError::VmRunning(pid).into());
            }
            eprintln!(
                "exitprof: reloading {} with {}",
                m.name,
                paging::setting(m, nested)
            );
            restore.reload().switch(nested)?;
        }
        let mode = nested.map_or(PagingMode::Current, PagingMode::of);
        eprintln!(
            "exitprof: recording `{}` ({} paging)",
            command.join(" "),
            mode.name()
        );
        let outcome = profile(&Run {
            command: &command,
            duration: args.duration,
            // Per-process rows name the workload's pid in each run.
            breakdown: true,
            mirror: args.guest_mirror,
            interval: Some(args.interval),
            ..Run::default()
        })?;
        if let Some(code) = outcome.status
            && code != 0
        {
            eprintln!(
                "exitprof: the workload exited with {code} under {} paging",
                mode.name()
            );
        }
        runs.push(RecordedRun {
            mode,
            paging: module.zip(nested).map(|(m, n)| paging::setting(&m, n)),
            exit_status: outcome.status,
            interval_ns: u64::try_from(args.interval.as_nanos()).unwrap_or(u64::MAX),
            snapshots: outcome.intervals,
            total: outcome.snapshot,
        });
    }
    // Restores the original mode (the guard in the plan).
    drop(plan);
    write(
        &args.output,
        &Recording {
            format: FORMAT.to_owned(),
            version: VERSION,
            host: procfs::hostname(),
            backend,
            command,
            runs,
        },
    )?;
    Ok(if signals::received().is_some() {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}
