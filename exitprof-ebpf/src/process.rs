//! Process lifecycle: `sched:sched_process_fork` tracks the children of
//! tracked processes (so `exitprof stat -- COMMAND` counts COMMAND's whole
//! tree), `sched:sched_process_exit` forgets what a dying thread had in
//! flight (hash store, see `in_flight.rs`) and the tracked ids of dead
//! processes and threads: on a host where VMs come and go, the set of
//! tracked ids would otherwise fill and new VMs would go uncounted.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use exitprof_common::config::{FILTER_TRACKED, NO_FIELD};

use crate::{
    config::{config, current, offset},
    in_flight,
    maps::{TRACKED_TGIDS, UNTRACKED},
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

/// `sched:sched_process_exit`, run by every exiting thread: a thread that
/// dies between an exit and its entry (a killed VM) leaves nothing in
/// flight behind (task storage goes with the thread by itself), and with
/// the process filter, the dead thread's id (`sched_process_fork` adds
/// threads too) and, once the whole process is dead, its id leave the
/// tracked set.
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    in_flight::forget();
    if config!(filter) == FILTER_TRACKED {
        untrack(&ctx);
    }
    0
}

#[inline(always)]
#[expect(
    clippy::similar_names,
    reason = "tgid and tid are the kernel's names for the process and the thread"
)]
fn untrack(ctx: &TracePointContext) {
    let (tgid, tid) = current();
    if tid != tgid {
        let _ = TRACKED_TGIDS.remove(tid);
    }
    let group_dead = if config!(offsets.exit_group_dead) == NO_FIELD {
        // Before Linux 6.16 the record does not say; the leader's exit is
        // taken for the process's (a leader that exits before its other
        // threads untracks them early).
        tid == tgid
    } else {
        // SAFETY: offset read from this kernel's tracefs format.
        unsafe { ctx.read_at::<u8>(offset!(exit_group_dead)) }.is_ok_and(|d| d != 0)
    };
    if group_dead && TRACKED_TGIDS.remove(tgid).is_ok() {
        // Every CPU's `LAST_TRACKED` is stale now: a new process may take
        // the dead one's id (pid_max is often 32,768). Not an atomic add
        // (the bpf target has no atomic read-modify-write in Rust): two
        // removals at the same instant may add 1 once. That is enough: each
        // removal comes before its read of the counter, so no CPU can have
        // found the removed process after the counter took its new value.
        if let Some(n) = UNTRACKED.get_ptr_mut(0) {
            // SAFETY: the one slot of an array map.
            unsafe { n.write_volatile(n.read_volatile().wrapping_add(1)) };
        }
    }
}
