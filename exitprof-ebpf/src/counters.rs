//! Adding to per-CPU hash maps, counting what does not fit.
use aya_ebpf::{bindings::BPF_NOEXIST, maps::PerCpuHashMap};

use crate::maps::DROPPED;

/// `DROPPED[reason] += 1`.
#[inline(always)]
pub fn drop_event(reason: u32) {
    if let Some(p) = DROPPED.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot of this CPU.
        unsafe { *p += 1 };
    }
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

/// `map[key] += 1` on this CPU.
#[inline(always)]
pub fn increment<K>(map: &PerCpuHashMap<K, u64>, key: &K, drop: u32) {
    if let Some(p) = entry(map, key, &0, drop) {
        // SAFETY: per-CPU value of this CPU.
        unsafe { *p += 1 };
    }
}
