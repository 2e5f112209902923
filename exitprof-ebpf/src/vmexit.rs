//! VM exits: `kvm:kvm_exit` counts and opens, `kvm:kvm_entry` closes and
//! times. Keyed by thread: the vCPU thread may sleep and migrate between
//! exit and entry. A thread whose entry never comes (VM killed) is evicted
//! from the LRU map of exits in flight instead of leaking.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use exitprof_common::{
    maps::{BreakdownKey, BreakdownStats, PendingExit, drop_reason, log2_bucket},
    reasons::slot,
};

use crate::{
    config::{config, current, offset, wanted},
    counters::{close, entry, open},
    maps::{EXIT_BREAKDOWN, EXIT_STATS, PENDING_EXITS},
};

/// `kvm:kvm_exit`.
#[tracepoint]
pub fn kvm_exit(ctx: TracePointContext) -> u32 {
    try_kvm_exit(&ctx).unwrap_or(1)
}

fn try_kvm_exit(ctx: &TracePointContext) -> Result<u32, i64> {
    let (tgid, tid) = current();
    if !wanted(tgid) {
        return Ok(0);
    }
    // SAFETY: offsets were read from this kernel's tracefs format.
    let (isa, reason, vcpu) = unsafe {
        (
            ctx.read_at::<u32>(offset!(exit_isa))?,
            ctx.read_at::<u32>(offset!(exit_reason))?,
            ctx.read_at::<u32>(offset!(exit_vcpu_id))?,
        )
    };
    let slot = slot(isa, reason);
    if let Some(stats) = EXIT_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot of this CPU.
        unsafe { (*stats).count += 1 };
    }
    if config!(breakdown) != 0 {
        let key = BreakdownKey {
            pid: tgid,
            vcpu,
            slot,
            _pad: 0,
        };
        let init = BreakdownStats::default();
        if let Some(stats) = entry(
            &EXIT_BREAKDOWN,
            &key,
            &init,
            drop_reason::BREAKDOWN_MAP_FULL,
        ) {
            // SAFETY: per-CPU value of this CPU.
            unsafe { (*stats).count += 1 };
        }
    }
    let pending = PendingExit {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        slot,
        vcpu,
    };
    open(&PENDING_EXITS, tid, &pending);
    Ok(0)
}

/// `kvm:kvm_entry`.
#[tracepoint]
pub fn kvm_entry(_ctx: TracePointContext) -> u32 {
    try_kvm_entry().unwrap_or(1)
}

fn try_kvm_entry() -> Result<u32, i64> {
    let (tgid, tid) = current();
    // Only threads of wanted processes have an open entry.
    let Some(pending) = close(&PENDING_EXITS, tid) else {
        return Ok(0);
    };
    let took = unsafe { bpf_ktime_get_ns() }.saturating_sub(pending.ts_ns);
    if let Some(stats) = EXIT_STATS.get_ptr_mut(pending.slot) {
        // SAFETY: per-CPU slot of this CPU.
        unsafe {
            let s = &mut *stats;
            s.timed += 1;
            s.total_ns += took;
            if s.min_ns == 0 || took < s.min_ns {
                s.min_ns = took;
            }
            if took > s.max_ns {
                s.max_ns = took;
            }
            let bucket = log2_bucket(took);
            if let Some(b) = s.hist_log2_ns.get_mut(bucket) {
                *b += 1;
            }
        }
    }
    if config!(breakdown) != 0 {
        let key = BreakdownKey {
            pid: tgid,
            vcpu: pending.vcpu,
            slot: pending.slot,
            _pad: 0,
        };
        if let Some(stats) = EXIT_BREAKDOWN.get_ptr_mut(&key) {
            // SAFETY: per-CPU value of this CPU.
            unsafe {
                (*stats).timed += 1;
                (*stats).total_ns += took;
                if took > (*stats).max_ns {
                    (*stats).max_ns = took;
                }
            }
        }
    }
    Ok(0)
}
