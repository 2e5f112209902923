//! Adding to per-CPU hash maps, counting what does not fit.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap},
};
use exitprof_common::maps::{
    CachedCount, EVENT_CACHE_WAYS, PendingExit, PendingUserspaceExit, drop_reason,
};

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

/// An entry of an in-flight map (keyed by thread): open while
/// `ts_ns != 0`.
pub trait InFlight: Copy {
    /// When it was opened; 0 when closed.
    fn ts_ns(&self) -> u64;
    /// Marks it closed.
    fn close(&mut self);
}

impl InFlight for PendingExit {
    fn ts_ns(&self) -> u64 {
        self.ts_ns
    }
    fn close(&mut self) {
        self.ts_ns = 0;
    }
}

impl InFlight for PendingUserspaceExit {
    fn ts_ns(&self) -> u64 {
        self.ts_ns
    }
    fn close(&mut self) {
        self.ts_ns = 0;
    }
}

/// Opens thread `tid`'s entry. A vCPU thread exits again and again, so
/// its entry stays between exits (closed) and is rewritten in place: far
/// cheaper than an LRU insert and delete per exit (measured on the host:
/// `kvm_userspace_exit` 302 -> 135 ns; in the sandbox `kvm_exit` -31%).
#[inline(always)]
pub fn open<V: InFlight>(map: &LruHashMap<u32, V>, tid: u32, value: &V) {
    if let Some(slot) = map.get_ptr_mut(tid) {
        // SAFETY: this thread's entry; only this thread writes it.
        unsafe { *slot = *value };
    } else if map.insert(tid, value, 0).is_err() {
        drop_event(drop_reason::PENDING_MAP_FULL);
    }
}

/// Closes thread `tid`'s entry and returns it, if one was open.
#[inline(always)]
pub fn close<V: InFlight>(map: &LruHashMap<u32, V>, tid: u32) -> Option<V> {
    let slot = map.get_ptr_mut(tid)?;
    // SAFETY: this thread's entry; only this thread writes it.
    let value = unsafe { *slot };
    if value.ts_ns() == 0 {
        return None;
    }
    unsafe { (*slot).close() };
    Some(value)
}
