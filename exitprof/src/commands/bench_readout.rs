//! `exitprof bench-readout` (hidden, for `cargo xtask bench`): how long a
//! snapshot takes with a per-vCPU map of KEYS synthetic keys.
use std::{process::ExitCode, time::Instant};

use exitprof_common::maps::BREAKDOWN_MAP_ENTRIES;

use crate::bpf::{AttachMode, Filter, InFlightMode, MirrorChoice, Options, Profiler};

/// Arguments of `exitprof bench-readout`.
#[derive(clap::Args, Debug)]
pub struct BenchReadoutArgs {
    /// Keys in the per-vCPU map.
    #[arg(long)]
    pub keys: u32,
    /// Snapshots to time.
    #[arg(long, default_value_t = 20)]
    pub repeat: u32,
}

/// Prints one JSON line with the snapshot times.
///
/// # Errors
/// Loading, filling or reading fails.
pub fn main(args: &BenchReadoutArgs) -> anyhow::Result<ExitCode> {
    let mut profiler = Profiler::start(&Options {
        filter: Filter::All,
        breakdown: true,
        // Room for every key (the built-in capacity is 16,384).
        map_entries: (args.keys > BREAKDOWN_MAP_ENTRIES).then_some(args.keys),
        cost: false,
        attach: AttachMode::Auto,
        in_flight: InFlightMode::Auto,
        mirror: MirrorChoice::Off,
        sites: false,
    })?;
    profiler.fill_breakdown_for_load_test(args.keys)?;
    let mut times = Vec::new();
    for _ in 0..args.repeat.max(1) {
        let started = Instant::now();
        let snapshot = profiler.snapshot()?;
        times.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        anyhow::ensure!(
            snapshot.exits.iter().filter(|r| r.pid.is_some()).count() >= args.keys as usize,
            "the snapshot lost keys"
        );
    }
    times.sort_unstable();
    println!(
        "{}",
        serde_json::json!({"keys": args.keys, "min_ns": times[0], "median_ns": times[times.len() / 2]})
    );
    Ok(ExitCode::SUCCESS)
}
