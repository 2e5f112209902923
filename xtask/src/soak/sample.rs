//! One sample of the soak: each exitprof process's RSS and CPU time, the
//! entries of each of its hash maps (from bpftool, for the maps
//! `/proc/PID/fdinfo` says it holds), and how many VMs and vCPU threads
//! live.
use std::{collections::BTreeMap, fs, process::Command};

use serde::Serialize;
use serde_json::Value;

use crate::util::{cpu_ticks, output, status_kb};

/// One process's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProcessSample {
    pub rss_kb: u64,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Entries by map name, for the hash maps (task storage cannot be
    /// listed: its entries live in the threads and go with them).
    pub maps: BTreeMap<String, u64>,
}

/// Everything at one moment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    pub t_s: f64,
    /// Live VMs and their vCPU threads, read before the maps.
    pub vms: u64,
    pub vcpu_threads: u64,
    /// The same, read after the maps: the churn goes on while bpftool
    /// dumps them (a second or so under load), so a map's entries lie
    /// within what lived at either moment, give or take the VMs that
    /// came and went between.
    pub vms_after: u64,
    pub vcpu_threads_after: u64,
    pub processes: BTreeMap<String, ProcessSample>,
}

/// Map types whose entries come and go (bpftool's names).
const HASH_TYPES: &[&str] = &["hash", "lru_hash", "percpu_hash", "lru_percpu_hash"];

/// `pid`'s figures; `None` once it is gone.
pub fn process(pid: u32) -> Option<ProcessSample> {
    let rss_kb = status_kb(pid, "VmRSS:")?;
    let cpu_ticks = cpu_ticks(pid)?;
    let mut maps = BTreeMap::new();
    for id in map_ids(pid) {
        let Some(info) = output(
            Command::new("bpftool")
                .args(["-j", "map", "show", "id"])
                .arg(id.to_string()),
        )
        .and_then(|s| serde_json::from_str::<Value>(&s).ok()) else {
            continue;
        };
        let (Some(name), Some(kind)) = (info["name"].as_str(), info["type"].as_str()) else {
            continue;
        };
        if !HASH_TYPES.contains(&kind) {
            continue;
        }
        let entries = output(
            Command::new("bpftool")
                .args(["-j", "map", "dump", "id"])
                .arg(id.to_string()),
        )
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0);
        maps.insert(name.to_owned(), entries as u64);
    }
    Some(ProcessSample {
        rss_kb,
        cpu_ticks,
        maps,
    })
}

/// The ids of the BPF maps `pid` holds (`map_id:` in its fdinfo).
fn map_ids(pid: u32) -> Vec<u32> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = fds
        .filter_map(Result::ok)
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The live VMs (children of `parent`) and their vCPU threads (threads
/// but the main one).
pub fn vms(parent: u32) -> (u64, u64) {
    let children = fs::read_dir(format!("/proc/{parent}/task"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        });
    let (mut vms, mut threads) = (0, 0);
    for pid in children {
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let n: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1);
        vms += 1;
        threads += n.saturating_sub(1);
    }
    (vms, threads)
}
