//! `exitprof stat`: count while a command runs (or for a duration, or until
//! Ctrl-C), then print one report, like `perf stat`.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use crate::{
    cli::{parse_duration, parse_live_pid},
    host::{procfs, vmname},
    present::table,
    session::{Run, profile, signals},
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
      what each program costs per event with classic tracepoints
  sudo exitprof stat --ready-file /tmp/ready & while [ ! -e /tmp/ready ]; do sleep 0.1; done
      start timing a workload only once exitprof is attached
  sudo exitprof stat --sites --guest-symbols System.map-6.1.0-56-amd64 -- qemu-system-x86_64 ...
      where in the guest kernel the exits come from, by function")]
#[expect(
    clippy::struct_excessive_bools,
    reason = "command-line flags, each its own switch"
)]
pub struct StatArgs {
    /// Print one JSON snapshot (the contract in README.md, "JSON") instead
    /// of tables.
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
    /// `--attach`, `--in-flight`, `--guest-mirror`.
    #[command(flatten)]
    pub kvm: super::KvmArgs,
    /// Write exitprof's pid to this file once every program is attached
    /// (it appears at once, by rename), and remove it once detached: a
    /// script waits for it before starting what it measures.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Also count exits per guest RIP and list the top sites per reason
    /// (costs one more map update per exit; see BENCHMARKS.md).
    #[arg(long)]
    pub sites: bool,
    /// Name the sites' RIPs with this guest System.map or copy of the
    /// guest's /proc/kallsyms (implies --sites; a System.map matches a
    /// guest kernel booted with `nokaslr`).
    #[arg(long, value_name = "FILE")]
    pub guest_symbols: Option<PathBuf>,
    /// Capacity of the event maps (testing drop accounting).
    #[arg(long, hide = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
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
    if let Some(why) = procfs::not_a_vm(&args.pids) {
        anyhow::bail!(why);
    }
    let symbols = args
        .guest_symbols
        .as_deref()
        .map(super::guest_symbols)
        .transpose()?;
    signals::install();
    let mut outcome = profile(&Run {
        command: &args.command,
        pids: &args.pids,
        all: args.all,
        duration: args.duration,
        breakdown: args.by_vcpu,
        map_entries: args.map_entries,
        cost: args.cost,
        attach: args.kvm.attach,
        mirror: args.kvm.guest_mirror,
        interval: None,
        in_flight: args.kvm.in_flight,
        ready_file: args.ready_file.as_deref(),
        sites: args.sites || symbols.is_some(),
    })?;
    let names = &outcome.names;
    outcome
        .snapshot
        .name_vms(|pid| names.get(&pid).cloned().or_else(|| vmname::vm_name(pid)));
    if let Some(symbols) = &symbols {
        outcome.snapshot.symbolize(symbols);
    }
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
