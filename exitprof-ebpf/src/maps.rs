//! The maps of the VM-exit, userspace round-trip and process programs.
//! (The handler-event maps live with their programs in
//! `handler_events.rs`, the in-flight store in `in_flight.rs`.) Names are the interface with the loader.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
};
use exitprof_common::{
    maps::{
        BREAKDOWN_MAP_ENTRIES, BreakdownKey, BreakdownStats, ExitStats, LastTracked,
        SITES_MAP_ENTRIES, SiteKey, TRACKED_MAP_ENTRIES, UserspaceExitStats, drop_reason,
    },
    reasons::SLOTS,
    userspace_exit,
};

/// Per dense exit-reason slot: count, time, min, max, histogram.
#[map]
pub static EXIT_STATS: PerCpuArray<ExitStats> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Per (process, vCPU, reason slot), filled when `CONFIG.breakdown != 0`.
#[map]
pub static EXIT_BREAKDOWN: PerCpuHashMap<BreakdownKey, BreakdownStats> =
    PerCpuHashMap::with_max_entries(BREAKDOWN_MAP_ENTRIES, 0);

/// Per (process, reason slot, guest RIP), filled when `CONFIG.sites != 0`
/// (the loader shrinks it to one entry otherwise).
#[map]
pub static EXIT_SITES: PerCpuHashMap<SiteKey, BreakdownStats> =
    PerCpuHashMap::with_max_entries(SITES_MAP_ENTRIES, 0);

/// `kvm_userspace_exit` by slot (`userspace_exit::slot`), with the round
/// trip until the thread is back (`userspace_roundtrip.rs`).
#[map]
pub static USERSPACE_EXITS: PerCpuArray<UserspaceExitStats> =
    PerCpuArray::with_max_entries(userspace_exit::SLOTS, 0);

/// Process ids whose events are counted when `CONFIG.filter` says so.
#[map]
pub static TRACKED_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(TRACKED_MAP_ENTRIES, 0);

/// Per CPU, the last process found in `TRACKED_TGIDS` (0: none) and the
/// value of `UNTRACKED` then: while no process has left the set since, a
/// hit here is the hash map's answer without the hash lookup.
#[map]
pub static LAST_TRACKED: PerCpuArray<LastTracked> = PerCpuArray::with_max_entries(1, 0);

/// How many times a process left `TRACKED_TGIDS` (`sched_process_exit`):
/// a `LAST_TRACKED` entry from before names a process that may be gone,
/// whose id a new process may have taken.
#[map]
pub static UNTRACKED: Array<u64> = Array::with_max_entries(1, 0);

/// Events not counted, by [`drop_reason`].
#[map]
pub static DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_reason::SLOTS, 0);
