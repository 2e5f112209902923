//! `exitprof top`: live tables of exits (the TUI), or one interval as
//! text (`--once`, or stdout no terminal), or a JSON snapshot per interval.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::IsTerminal as _,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use crate::{
    bpf::{Filter, Options, Profiler},
    cli::{parse_duration, parse_live_pid},
    host::{paging, procfs, vmname},
    model::{Snapshot, Symbols},
    present::table,
    session::{ReadyFile, signals},
    tui::{self, app::App},
};

/// Arguments of `exitprof top`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  sudo exitprof top                   live tables, refreshed every second
  sudo exitprof top -d 500ms --pid $(pidof qemu-system-x86_64)
  sudo exitprof top --once            one interval as text, like top -b -n 1
  sudo exitprof top --json -d 2s      one JSON snapshot per interval
  sudo exitprof top --sites --guest-symbols System.map
                                      view 5: where in the guest the exits come from")]
pub struct TopArgs {
    /// Refresh interval (500ms, 1s, 2s).
    #[arg(short, long, default_value = "1s", value_parser = parse_duration)]
    pub delay: Duration,
    /// Count only this process (and its children from now on); repeatable.
    #[arg(short, long = "pid", value_name = "PID", value_parser = parse_live_pid)]
    pub pids: Vec<u32>,
    /// Print one interval as text tables and exit (also when stdout is no
    /// terminal).
    #[arg(long)]
    pub once: bool,
    /// Print one JSON snapshot per interval (counts of that interval).
    #[arg(long, conflicts_with = "once")]
    pub json: bool,
    /// `--attach`, `--in-flight`, `--guest-mirror`.
    #[command(flatten)]
    pub kvm: super::KvmArgs,
    /// Write exitprof's pid to this file once every program is attached,
    /// and remove it once detached (see `stat --help`).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Also count exits per guest RIP (view 5; costs one more map update
    /// per exit, see BENCHMARKS.md).
    #[arg(long)]
    pub sites: bool,
    /// Name the sites' RIPs with this guest System.map or copy of the
    /// guest's /proc/kallsyms (implies --sites).
    #[arg(long, value_name = "FILE")]
    pub guest_symbols: Option<PathBuf>,
    /// Load test of exitprof itself: fill the per-vCPU map with this many
    /// synthetic vCPUs × 30 reasons before starting.
    #[arg(long, hide = true, value_name = "VCPUS")]
    pub load_test_vcpus: Option<u32>,
}

/// Runs `exitprof top`.
///
/// # Errors
/// Loading, reading or the terminal fails; each error says why.
pub fn main(args: &TopArgs) -> anyhow::Result<ExitCode> {
    if let Some(why) = procfs::not_a_vm(&args.pids) {
        anyhow::bail!(why);
    }
    let symbols = args
        .guest_symbols
        .as_deref()
        .map(super::guest_symbols)
        .transpose()?;
    let filter = if args.pids.is_empty() {
        Filter::All
    } else {
        Filter::Tracked(args.pids.clone())
    };
    let mut profiler = Profiler::start(&Options {
        filter,
        breakdown: true,
        map_entries: None,
        cost: false,
        attach: args.kvm.attach,
        in_flight: args.kvm.in_flight,
        mirror: args.kvm.guest_mirror,
        sites: args.sites || symbols.is_some(),
    })?;
    let _ready = ReadyFile::announce(args.ready_file.as_deref())?;
    let mut names = BTreeMap::new();
    let symbols = symbols.as_ref();
    if args.json {
        signals::install();
        return stream_json(&mut || read(&profiler, &mut names, symbols), args.delay);
    }
    if args.once || !std::io::stdout().is_terminal() {
        signals::install();
        sleep_unless_signalled(args.delay);
        let scope = if args.pids.is_empty() {
            "all processes".to_owned()
        } else {
            format!("pid {:?}", args.pids)
        };
        print!(
            "{}",
            table::render(&read(&profiler, &mut names, symbols)?, &scope)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut app = App::new(
        read(&profiler, &mut names, symbols)?,
        procfs::hostname(),
        paging::paging_label(),
    );
    app.sites_counted = args.sites || symbols.is_some();
    if let Some(vcpus) = args.load_test_vcpus {
        // After the baseline, so the synthetic rows show as new exits.
        profiler.fill_breakdown_for_load_test(vcpus * 30)?;
    }
    let mut terminal = ratatui::init();
    let result = runtime.block_on(tui::run(&mut terminal, app, args.delay, || {
        read(&profiler, &mut names, symbols)
    }));
    // Restored on every path out of `run`, errors included (and by
    // ratatui's panic hook on a panic).
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

/// Sleeps `total`, returning early on SIGINT/SIGTERM.
fn sleep_unless_signalled(total: Duration) {
    let end = Instant::now() + total;
    while Instant::now() < end && signals::received().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stream_json(
    read: &mut impl FnMut() -> anyhow::Result<Snapshot>,
    delay: Duration,
) -> anyhow::Result<ExitCode> {
    let mut previous = read()?;
    loop {
        sleep_unless_signalled(delay);
        if signals::received().is_some() {
            return Ok(ExitCode::SUCCESS);
        }
        let now = read()?;
        println!("{}", serde_json::to_string(&now.since(&previous))?);
        previous = now;
    }
}

/// A snapshot with its VMs named (`host::vmname`, read once per pid and
/// kept in `names`, so a VM that ended keeps its name, and a pid that is
/// no process is not looked up again) and its sites' RIPs symbolized.
fn read(
    profiler: &Profiler,
    names: &mut BTreeMap<u32, Option<String>>,
    symbols: Option<&Symbols>,
) -> anyhow::Result<Snapshot> {
    let mut snapshot = profiler.snapshot()?;
    let pids: BTreeSet<u32> = snapshot
        .exits
        .iter()
        .filter_map(|r| r.pid)
        .chain(snapshot.sites.iter().map(|s| s.pid))
        .collect();
    for pid in pids {
        names.entry(pid).or_insert_with(|| vmname::vm_name(pid));
    }
    snapshot.name_vms(|pid| names.get(&pid).cloned().flatten());
    if let Some(symbols) = symbols {
        snapshot.symbolize(symbols);
    }
    Ok(snapshot)
}
