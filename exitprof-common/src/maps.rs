//! Map keys and values. Keys mirror the `--json` contract in README.md so
//! that the readout only sums over CPUs and never reinterprets.
//!
//! Every struct is `#[repr(C)]` with explicit padding fields (always 0), so
//! that keys hash identically on both sides.

/// Number of log2 latency buckets: bucket `i` counts durations `d` with
/// `2^i <= d < 2^(i+1)` nanoseconds (bucket 0 also takes `d = 0`); the last
/// bucket takes everything from `2^(HIST_BUCKETS-1)` ns (~1 s) up.
pub const HIST_BUCKETS: usize = 31;

/// Capacity of the per-event hash maps; an event whose key does not fit is
/// counted in `DROPPED` instead.
pub const EVENT_MAP_ENTRIES: u32 = 4096;
/// Capacity of the (process, vCPU, reason) breakdown map.
pub const BREAKDOWN_MAP_ENTRIES: u32 = 16384;
/// Capacity of the per-thread "exit in flight" hash maps of kernels
/// without task storage (LRU: a thread whose entry never comes, e.g. a
/// killed VM, is evicted instead of leaking).
pub const PENDING_MAP_ENTRIES: u32 = 8192;
/// Capacity of the guest mirror map (`GUEST_MIRROR`): (VMM process,
/// reason) pairs, with one totals entry per process.
pub const MIRROR_MAP_ENTRIES: u32 = 16384;
/// Capacity of the set of tracked process ids (`--pid`, `-- COMMAND`).
pub const TRACKED_MAP_ENTRIES: u32 = 1024;
/// Capacity of the exit-site map, (process, reason, guest RIP) keys
/// (`--sites`; 1 entry otherwise, so that it costs no memory).
pub const SITES_MAP_ENTRIES: u32 = 16384;

/// `DROPPED` slots: why an event was not counted.
pub mod drop_reason {
    /// A per-event hash map was full.
    pub const EVENT_MAP_FULL: u32 = 0;
    /// The breakdown map was full.
    pub const BREAKDOWN_MAP_FULL: u32 = 1;
    /// A pending (in flight) map update failed.
    pub const PENDING_MAP_FULL: u32 = 2;
    /// The guest mirror map was full.
    pub const MIRROR_MAP_FULL: u32 = 3;
    /// The exit-site map was full.
    pub const SITES_MAP_FULL: u32 = 4;
    /// Number of slots in `DROPPED`.
    pub const SLOTS: u32 = 5;
}

/// Per-exit-reason statistics: one per dense reason slot in the per-CPU
/// array `EXIT_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStats {
    /// Exits seen (counted at `kvm_exit`).
    pub count: u64,
    /// Exits whose `kvm_entry` was seen (the ones `total_ns` covers).
    pub timed: u64,
    /// Sum of exit-to-entry durations.
    pub total_ns: u64,
    /// Shortest duration; 0 while `timed == 0`.
    pub min_ns: u64,
    /// Longest duration.
    pub max_ns: u64,
    /// log2 histogram of durations, see [`HIST_BUCKETS`].
    pub hist_log2_ns: [u64; HIST_BUCKETS],
}

impl ExitStats {
    /// All zero.
    pub const ZERO: Self = Self {
        count: 0,
        timed: 0,
        total_ns: 0,
        min_ns: 0,
        max_ns: 0,
        hist_log2_ns: [0; HIST_BUCKETS],
    };
}

/// Key of the breakdown map `EXIT_BREAKDOWN`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BreakdownKey {
    /// Process id (tgid) of the VMM.
    pub pid: u32,
    /// vCPU id as KVM reports it.
    pub vcpu: u32,
    /// Dense reason slot, see [`crate::reasons::slot`].
    pub slot: u32,
    /// Always 0.
    #[expect(
        clippy::pub_underscore_fields,
        reason = "padding: always 0, and named so"
    )]
    pub _pad: u32,
}

/// Value of the breakdown map: the histogram stays per reason only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BreakdownStats {
    /// Exits seen.
    pub count: u64,
    /// Exits whose entry was seen.
    pub timed: u64,
    /// Sum of durations.
    pub total_ns: u64,
    /// Longest duration.
    pub max_ns: u64,
}

/// Key of the exit-site map `EXIT_SITES`: where in the guest exits of a
/// reason come from. The value is a [`BreakdownStats`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteKey {
    /// Process id (tgid) of the VMM: guest addresses mean something only
    /// within one VM.
    pub pid: u32,
    /// Dense reason slot.
    pub slot: u32,
    /// The guest's RIP at the exit.
    pub rip: u64,
}

/// An exit in flight, part of its thread's [`TaskInFlight`]: the vCPU
/// thread may sleep and migrate between exit and entry, so the CPU is no
/// key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingExit {
    /// `bpf_ktime_get_ns()` at `kvm_exit`.
    pub ts_ns: u64,
    /// Dense reason slot.
    pub slot: u32,
    /// vCPU id.
    pub vcpu: u32,
    /// The guest's RIP at the exit (with exit sites; 0 otherwise).
    pub rip: u64,
}

/// Value of `LAST_TRACKED`: the process the filter last found tracked on
/// this CPU, and how many processes had left the tracked set then.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastTracked {
    /// Process id (0: none).
    pub tgid: u32,
    /// Always 0.
    #[expect(
        clippy::pub_underscore_fields,
        reason = "padding: always 0, and named so"
    )]
    pub _pad: u32,
    /// `UNTRACKED` when `tgid` was found.
    pub untracked: u64,
}

/// Ways of each per-CPU front cache of event counts (`*_CACHE` maps).
pub const EVENT_CACHE_WAYS: u32 = 4;

/// One way of a per-CPU front cache in front of a per-CPU hash map of
/// counts: the hot key's whole count on this CPU, so that a storm of one
/// key costs an array access per event instead of a hash lookup. When
/// another key needs the way, the count is written back to the hash map
/// (which then holds the same total), and the new key's count is loaded.
///
/// So for each (CPU, key) the cache, when it holds the key, is never
/// behind the hash map: the readout reads the caches first, then the hash
/// maps, and takes the larger of the two, which is exact when quiet and
/// never goes backwards while events arrive.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedCount<K> {
    /// The key's count on this CPU; 0 when the way is empty.
    pub count: u64,
    /// The key.
    pub key: K,
}

/// Value of `USERSPACE_EXITS`, keyed by userspace-exit reason
/// (see [`crate::userspace_exit`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserspaceExitStats {
    /// Returns from `KVM_RUN` with this reason.
    pub count: u64,
    /// Round trips closed when the thread is back: at its next
    /// `kvm_entry`, or, where that never fires (PVM), its next
    /// `ioctl(KVM_RUN)`.
    pub roundtrips: u64,
    /// Sum of round-trip durations.
    pub roundtrip_total_ns: u64,
    /// Longest round trip.
    pub roundtrip_max_ns: u64,
}

/// A return to user space in flight, part of its thread's
/// [`TaskInFlight`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingUserspaceExit {
    /// `bpf_ktime_get_ns()` at `kvm_userspace_exit`.
    pub ts_ns: u64,
    /// `USERSPACE_EXITS` slot (`userspace_exit::slot`).
    pub reason: u32,
    /// Always 0.
    #[expect(
        clippy::pub_underscore_fields,
        reason = "padding: always 0, and named so"
    )]
    pub _pad: u32,
}

/// Everything a vCPU thread has in flight: its exit waiting for
/// `kvm_entry` and its return to user space waiting for the thread to be
/// back, and its process. The value of `IN_FLIGHT`: task
/// storage (the kernel keeps it in the thread's `task_struct` and frees it
/// with the thread), or, on kernels without, an LRU hash map by thread id.
/// A thread has one only if its events are counted, so finding it answers
/// the process filter too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskInFlight {
    /// Open while `exit.ts_ns != 0`.
    pub exit: PendingExit,
    /// Open while `userspace.ts_ns != 0`.
    pub userspace: PendingUserspaceExit,
    /// The thread's process id (tgid).
    pub tgid: u32,
    /// Always 0.
    #[expect(
        clippy::pub_underscore_fields,
        reason = "padding: always 0, and named so"
    )]
    pub _pad: u32,
}

/// Log2 bucket of a duration: `floor(log2(d))`, clamped to the last bucket.
/// Written as a bounded binary search so the eBPF verifier accepts it.
#[inline(always)]
#[expect(
    clippy::inline_always,
    reason = "the eBPF programs call it on the hot path; inlined, the verifier sees no call"
)]
#[must_use]
pub fn log2_bucket(d: u64) -> usize {
    let mut v = d;
    let mut r = 0usize;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    if r >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        r
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::{
        BreakdownKey, BreakdownStats, ExitStats, PendingExit, PendingUserspaceExit, SiteKey,
        TaskInFlight, UserspaceExitStats,
    };
    // SAFETY: all of these are `repr(C)` integers with explicit padding.
    unsafe impl aya::Pod for ExitStats {}
    unsafe impl aya::Pod for BreakdownKey {}
    unsafe impl aya::Pod for SiteKey {}
    unsafe impl aya::Pod for BreakdownStats {}
    unsafe impl aya::Pod for PendingExit {}
    unsafe impl aya::Pod for UserspaceExitStats {}
    unsafe impl aya::Pod for PendingUserspaceExit {}
    unsafe impl aya::Pod for TaskInFlight {}
    // SAFETY: a u64 and a key that is a multiple of 8 bytes (checked in
    // the tests): no padding.
    unsafe impl<K: aya::Pod> aya::Pod for super::CachedCount<K> {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_bucket_edges() {
        assert_eq!(log2_bucket(0), 0);
        assert_eq!(log2_bucket(1), 0);
        assert_eq!(log2_bucket(2), 1);
        assert_eq!(log2_bucket(3), 1);
        assert_eq!(log2_bucket(1023), 9);
        assert_eq!(log2_bucket(1024), 10);
        assert_eq!(log2_bucket(1 << 29), 29);
        assert_eq!(log2_bucket((1 << 30) + 5), 30);
        assert_eq!(log2_bucket(u64::MAX), HIST_BUCKETS - 1);
    }

    #[test]
    fn keys_have_no_implicit_padding() {
        use crate::events::{CpuidKey, MmioKey, MsrKey, PioKey};
        assert_eq!(core::mem::size_of::<PioKey>(), 8);
        assert_eq!(core::mem::size_of::<CachedCount<PioKey>>(), 16);
        assert_eq!(core::mem::size_of::<CachedCount<CpuidKey>>(), 16);
        assert_eq!(core::mem::size_of::<CachedCount<MsrKey>>(), 16);
        assert_eq!(core::mem::size_of::<CachedCount<MmioKey>>(), 24);
        assert_eq!(core::mem::size_of::<MmioKey>(), 16);
        assert_eq!(core::mem::size_of::<BreakdownKey>(), 16);
        assert_eq!(core::mem::size_of::<PendingExit>(), 24);
        assert_eq!(core::mem::size_of::<SiteKey>(), 16);
        assert_eq!(core::mem::size_of::<TaskInFlight>(), 48);
        assert_eq!(core::mem::size_of::<ExitStats>(), 8 * (5 + HIST_BUCKETS));
    }
}
