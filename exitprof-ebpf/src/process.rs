//! Process lifecycle: `sched:sched_process_fork` tracks the children of
//! tracked processes (so `exitprof stat -- COMMAND` counts COMMAND's whole
//! tree), `sched:sched_process_exit` reclaims a dying thread's entries in
//! flight (hash store only, see `in_flight.rs`).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use exitprof_common::config::FILTER_TRACKED;

use crate::{
    config::{config, current, offset},
    in_flight,
    maps::TRACKED_TGIDS,
};

/// `sched:sched_process_fork`, run in the parent's context.
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    try_sched_process_fork(&ctx).unwrap_or(1)
}

fn try_sched_process_fork(ctx: &TracePointContext) -> Result<u32, i64> {
    if config!(filter) != FILTER_TRACKED {
        return Ok(0);
    }
    let parent = current().0;
    if TRACKED_TGIDS.get_ptr(parent).is_none() {
        return Ok(0);
    }
    // SAFETY: offset read from this kernel's tracefs format.
    let child = unsafe { ctx.read_at::<i32>(offset!(fork_child_pid))? } as u32;
    // A new thread of a tracked process is inserted too (the record cannot
    // tell threads from processes); it is harmless, as its tgid is tracked.
    let _ = TRACKED_TGIDS.insert(child, 1, 0);
    Ok(0)
}

/// `sched:sched_process_exit`: a thread that dies between an exit and its
/// entry (a killed VM) leaves nothing in flight behind. Only the hash
/// store needs it (the loader attaches it then): task storage goes with
/// the thread.
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    in_flight::forget();
    0
}
