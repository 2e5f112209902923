//! VM exits: `kvm:kvm_exit` counts and opens, `kvm:kvm_entry` closes and
//! times. The exit in flight belongs to the thread (`in_flight.rs`): the
//! vCPU thread may sleep and migrate between exit and entry, and a thread
//! whose entry never comes (VM killed) leaves nothing behind.
//!
//! Each hook has a classic program (the tracepoint's record, offsets from
//! tracefs) and a raw one (`kvm_exit(struct kvm_vcpu *vcpu, u32 isa)`:
//! the reason is read from the vendor's vCPU structure with offsets from
//! BTF, skipping the record the classic tracepoint builds). Both share one
//! body, so both modes count the same.
//!
//! With exit sites (`CONFIG.sites`), each exit is also counted under the
//! guest's RIP: the classic record's `guest_rip`, or on SVM in raw mode
//! `vmcb->save.rip`. (VMX raw mode has no valid RIP at `kvm_exit`; the
//! loader attaches these programs classic there when sites are asked for.)
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use exitprof_common::{
    Isa,
    maps::{
        BreakdownKey, BreakdownStats, PendingExit, SiteKey, TaskInFlight, drop_reason, log2_bucket,
    },
    reasons::{slot, slot_reason},
};

use crate::{
    config::{config, current, offset},
    counters::entry,
    in_flight::{self, Thread},
    maps::{EXIT_BREAKDOWN, EXIT_SITES, EXIT_STATS},
    userspace_roundtrip,
};

/// `kvm:kvm_exit`.
#[tracepoint]
pub fn kvm_exit(ctx: TracePointContext) -> u32 {
    try_kvm_exit(&ctx).unwrap_or(1)
}

fn try_kvm_exit(ctx: &TracePointContext) -> Result<u32, i64> {
    let Thread::Counted(record) = in_flight::mine() else {
        return Ok(0);
    };
    // SAFETY: offsets were read from this kernel's tracefs format.
    let (isa, reason, vcpu, rip) = unsafe {
        (
            ctx.read_at::<u32>(offset!(exit_isa))?,
            ctx.read_at::<u32>(offset!(exit_reason))?,
            ctx.read_at::<u32>(offset!(exit_vcpu_id))?,
            if config!(sites) != 0 {
                ctx.read_at::<u64>(offset!(exit_guest_rip))?
            } else {
                0
            },
        )
    };
    count_exit(record, isa, reason, vcpu, rip);
    Ok(0)
}

/// `kvm_exit` as a raw tracepoint.
#[raw_tracepoint(tracepoint = "kvm_exit")]
pub fn kvm_exit_raw(ctx: RawTracePointContext) -> u32 {
    try_kvm_exit_raw(&ctx).unwrap_or(1)
}

fn try_kvm_exit_raw(ctx: &RawTracePointContext) -> Result<u32, i32> {
    let Thread::Counted(record) = in_flight::mine() else {
        return Ok(0);
    };
    let vcpu = ctx.arg::<u64>(0) as *const u8;
    let isa = ctx.arg::<u64>(1) as u32;
    // SAFETY: probe reads of kernel memory at offsets from this kernel's
    // BTF; a bad address fails the read, it cannot fault.
    let (reason, vcpu_id, rip) = unsafe {
        // Only the per-vCPU breakdown needs the vCPU id: skip the read
        // otherwise.
        let vcpu_id = if config!(breakdown) != 0 {
            bpf_probe_read_kernel(vcpu.add(config!(raw.kvm_vcpu_id) as usize).cast::<u32>())?
        } else {
            0
        };
        if isa == Isa::Svm as u32 {
            let vmcb = bpf_probe_read_kernel(
                vcpu.add(config!(raw.svm_vmcb) as usize).cast::<*const u8>(),
            )?;
            let reason = bpf_probe_read_kernel(
                vmcb.add(config!(raw.vmcb_exit_code) as usize).cast::<u32>(),
            )?;
            let rip = if config!(sites) != 0 {
                bpf_probe_read_kernel(vmcb.add(config!(raw.vmcb_save_rip) as usize).cast::<u64>())?
            } else {
                0
            };
            (reason, vcpu_id, rip)
        } else {
            let reason = bpf_probe_read_kernel(
                vcpu.add(config!(raw.vmx_exit_reason) as usize)
                    .cast::<u32>(),
            )?;
            (reason, vcpu_id, 0)
        }
    };
    count_exit(record, isa, reason, vcpu_id, rip);
    Ok(0)
}

/// Counts an exit (per reason, and per vCPU and per site when asked for)
/// and opens it for its entry in the thread's record (when it has one).
#[inline(always)]
fn count_exit(record: Option<*mut TaskInFlight>, isa: u32, reason: u32, vcpu: u32, rip: u64) {
    let slot = slot(isa, reason);
    if let Some(stats) = EXIT_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot of this CPU.
        unsafe { (*stats).count += 1 };
    }
    // Once: without a record (no room for one) it is a helper call.
    let tgid = match record {
        // SAFETY: the current thread's record.
        Some(r) => unsafe { (*r).tgid },
        None => current().0,
    };
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
    crate::mirror::exit(tgid, isa, reason);
    if config!(sites) != 0 {
        let key = SiteKey {
            pid: tgid,
            slot,
            rip,
        };
        let init = BreakdownStats::default();
        if let Some(stats) = entry(&EXIT_SITES, &key, &init, drop_reason::SITES_MAP_FULL) {
            // SAFETY: per-CPU value of this CPU.
            unsafe { (*stats).count += 1 };
        }
    }
    if let Some(record) = record {
        // SAFETY: the current thread's record; only this thread writes it.
        unsafe {
            (*record).exit = PendingExit {
                ts_ns: bpf_ktime_get_ns(),
                slot,
                vcpu,
                rip,
            };
        }
    }
}

/// `kvm:kvm_entry`.
#[tracepoint]
pub fn kvm_entry(_ctx: TracePointContext) -> u32 {
    time_entry();
    0
}

/// `kvm_entry` as a raw tracepoint (it needs no argument).
#[raw_tracepoint(tracepoint = "kvm_entry")]
pub fn kvm_entry_raw(_ctx: RawTracePointContext) -> u32 {
    time_entry();
    0
}

/// Closes the thread's exit in flight and adds its duration; and its
/// return to user space, if one is open (`userspace_roundtrip.rs`), with
/// the same clock read.
#[inline(always)]
fn time_entry() {
    // Only threads of wanted processes have a record.
    let Some(record) = in_flight::existing() else {
        return;
    };
    // SAFETY: the current thread's record (here and below).
    if unsafe { (*record).exit.ts_ns == 0 && (*record).userspace.ts_ns == 0 } {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(userspace) = unsafe { in_flight::take_userspace(record) } {
        userspace_roundtrip::close(userspace, now);
    }
    let Some(pending) = (unsafe { in_flight::take_exit(record) }) else {
        return;
    };
    // SAFETY: as above.
    let tgid = unsafe { (*record).tgid };
    let took = now.saturating_sub(pending.ts_ns);
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
    if let Some((isa, reason)) = slot_reason(pending.slot) {
        crate::mirror::entry_time(tgid, isa as u32, reason, took);
    }
    if config!(breakdown) != 0 {
        let key = BreakdownKey {
            pid: tgid,
            vcpu: pending.vcpu,
            slot: pending.slot,
            _pad: 0,
        };
        if let Some(stats) = EXIT_BREAKDOWN.get_ptr_mut(key) {
            add_time(stats, took);
        }
    }
    if config!(sites) != 0 {
        let key = SiteKey {
            pid: tgid,
            slot: pending.slot,
            rip: pending.rip,
        };
        if let Some(stats) = EXIT_SITES.get_ptr_mut(key) {
            add_time(stats, took);
        }
    }
}

/// Adds one timed exit of `took` ns to a breakdown or site value.
#[inline(always)]
fn add_time(stats: *mut BreakdownStats, took: u64) {
    // SAFETY: a per-CPU value of this CPU, from a map lookup.
    unsafe {
        (*stats).timed += 1;
        (*stats).total_ns += took;
        if took > (*stats).max_ns {
            (*stats).max_ns = took;
        }
    }
}
