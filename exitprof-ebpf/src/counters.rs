//! Adding to per-CPU hash maps, counting what does not fit.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    maps::{PerCpuArray, PerCpuHashMap},
};
use exitprof_common::maps::{CachedCount, EVENT_CACHE_WAYS, drop_reason};

use crate::maps::DROPPED;

/// `DROPPED[reason] += 1`.
#[inline(always)]
pub fn drop_event(reason: u32) {
    drop_events(reason, 1);
}

/// Finds `key`'s value of this CPU, creating it as `init` when absent.
/// `None` (and a drop counted under `drop`) when the map is full.
#[inline(always)]
pub fn entry<K, V>(map: &PerCpuHashMap<K, V>, key: &K, init: &V, drop: u32) -> Option<*mut V> {
    if let Some(p) = map.get_ptr_mut(key) {
        return Some(p);
    }
    // Another CPU may create the key between the lookup and the insert;
    // BPF_NOEXIST then fails with EEXIST and the second lookup finds it.
    let _ = map.insert(key, init, u64::from(BPF_NOEXIST));
    let p = map.get_ptr_mut(key);
    if p.is_none() {
        drop_event(drop);
    }
    p
}

/// `DROPPED[reason] += n`.
#[inline(always)]
fn drop_events(reason: u32, n: u64) {
    if let Some(p) = DROPPED.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot of this CPU.
        unsafe { *p += n };
    }
}

/// `map[key] += 1` on this CPU, through the front cache `cache` (way
/// `way`, any number: it is reduced to the cache's ways). See
/// `CachedCount` for why the readout stays exact.
#[inline(always)]
pub fn increment_cached<K: Copy + PartialEq>(
    cache: &PerCpuArray<CachedCount<K>>,
    way: u32,
    map: &PerCpuHashMap<K, u64>,
    key: &K,
) {
    let Some(slot) = cache.get_ptr_mut(way % EVENT_CACHE_WAYS) else {
        increment(map, key, drop_reason::EVENT_MAP_FULL);
        return;
    };
    // SAFETY: this CPU's way; tracepoint programs do not nest on a CPU.
    let slot = unsafe { &mut *slot };
    if slot.count != 0 && slot.key == *key {
        slot.count += 1;
        return;
    }
    if slot.count != 0 {
        // Write the evicted key's total back.
        if let Some(p) = map.get_ptr_mut(slot.key) {
            // SAFETY: per-CPU value of this CPU.
            unsafe { *p = slot.count };
        } else if map.insert(slot.key, slot.count, 0).is_err() {
            // It was never in the map: its whole count is lost.
            drop_events(drop_reason::EVENT_MAP_FULL, slot.count);
        }
    }
    // SAFETY: per-CPU value of this CPU.
    let loaded = map.get_ptr(key).map_or(0, |p| unsafe { *p });
    slot.key = *key;
    slot.count = loaded + 1;
}

/// `map[key] += 1` on this CPU.
#[inline(always)]
pub fn increment<K>(map: &PerCpuHashMap<K, u64>, key: &K, drop: u32) {
    if let Some(p) = entry(map, key, &0, drop) {
        // SAFETY: per-CPU value of this CPU.
        unsafe { *p += 1 };
    }
}
