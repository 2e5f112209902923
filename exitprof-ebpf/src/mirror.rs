//! The guest mirror (`GUEST_MIRROR`): what a KVM carrying exitprof's patch
//! reads to answer its guests' CPUID leaves (`exitprof_common::guest_abi`):
//! per VMM process (or host-wide, under `TGID_HOST`) and raw exit reason,
//! the count (added at exit, so the CPUID being handled is already
//! counted) and the time (added at entry), with a running total per
//! process so that a query is one key, never a scan of reasons.
//!
//! Off (`CONFIG.mirror == MIRROR_OFF`, the loader's choice on a KVM
//! without the patch) it costs one load and one compare per exit.
use aya_ebpf::{macros::map, maps::PerCpuHashMap};
use exitprof_common::{
    Isa,
    config::{MIRROR_HOST, MIRROR_OFF},
    guest_abi::{MirrorKey, MirrorValue, REASON_TOTAL, TGID_HOST},
    maps::{MIRROR_MAP_ENTRIES, drop_reason},
};

use crate::{config::config, counters::entry};

/// (VMM process, raw reason) → count and time, per CPU.
#[map]
pub static GUEST_MIRROR: PerCpuHashMap<MirrorKey, MirrorValue> =
    PerCpuHashMap::with_max_entries(MIRROR_MAP_ENTRIES, 0);

/// The two keys an exit of `reason` of process `tgid` adds to: its reason
/// and the process's total; `None` while the mirror is off.
#[inline(always)]
fn keys(tgid: u32, isa: u32, reason: u32) -> Option<[MirrorKey; 2]> {
    let mode = config!(mirror);
    if mode == MIRROR_OFF {
        return None;
    }
    let tgid = if mode == MIRROR_HOST { TGID_HOST } else { tgid };
    // The ABI keys VMX exits by basic reason, as the guest asks for them.
    let reason = if isa == Isa::Vmx as u32 {
        reason & 0xffff
    } else {
        reason
    };
    Some([
        MirrorKey { tgid, reason },
        MirrorKey {
            tgid,
            reason: REASON_TOTAL,
        },
    ])
}

/// Counts an exit.
#[inline(always)]
pub fn exit(tgid: u32, isa: u32, reason: u32) {
    let Some(keys) = keys(tgid, isa, reason) else {
        return;
    };
    let init = MirrorValue::default();
    for key in &keys {
        if let Some(v) = entry(&GUEST_MIRROR, key, &init, drop_reason::MIRROR_MAP_FULL) {
            // SAFETY: per-CPU value of this CPU.
            unsafe { (*v).count += 1 };
        }
    }
}

/// Adds the time of an exit at its entry.
#[inline(always)]
pub fn entry_time(tgid: u32, isa: u32, reason: u32, took_ns: u64) {
    let Some(keys) = keys(tgid, isa, reason) else {
        return;
    };
    for key in &keys {
        if let Some(v) = GUEST_MIRROR.get_ptr_mut(key) {
            // SAFETY: per-CPU value of this CPU.
            unsafe { (*v).total_ns += took_ns };
        }
    }
}
