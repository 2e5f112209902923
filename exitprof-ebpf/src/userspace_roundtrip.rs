//! Userspace round trip: from `kvm:kvm_userspace_exit` (`KVM_RUN` returns to
//! the VMM) until the same thread is back: how long the VMM took to handle
//! an exit that reached user space.
//!
//! Where `kvm_entry` fires (SVM, VMX) the thread's next `kvm_entry` closes
//! it (`vmexit.rs`, with the clock read it makes anyway), so the VMM's
//! handling plus KVM's way back into the guest. Where it never fires (PVM)
//! the next `ioctl(KVM_RUN)` closes it (`sys_enter_ioctl`), and only there
//! is that program attached: a syscall tracepoint puts every syscall of
//! every process on the host on the slow path, and runs at each of their
//! ioctls (a real QEMU guest's boot: 834k ioctls, 977k syscalls, for 229k
//! returns to user space).
use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_ktime_get_ns,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use exitprof_common::{
    maps::{PendingUserspaceExit, TaskInFlight},
    userspace_exit,
};

use crate::{
    config::offset,
    in_flight::{self, Thread},
    maps::USERSPACE_EXITS,
};

/// `_IO(KVMIO, 0x80)`.
const KVM_RUN: u32 = 0xae80;

/// `kvm:kvm_userspace_exit`: counted here, timed when the thread is back.
#[tracepoint]
pub fn kvm_userspace_exit(ctx: TracePointContext) -> u32 {
    try_kvm_userspace_exit(&ctx).unwrap_or(1)
}

fn try_kvm_userspace_exit(ctx: &TracePointContext) -> Result<u32, i64> {
    let Thread::Counted(record) = in_flight::mine() else {
        return Ok(0);
    };
    // SAFETY: offsets were read from this kernel's tracefs format.
    let (reason, errno) = unsafe {
        (
            field::<u32, USERSPACE_EXIT_REASON_OFFSET>(ctx, offset!(userspace_exit_reason))?,
            field::<i32, USERSPACE_EXIT_ERRNO_OFFSET>(ctx, offset!(userspace_exit_errno))?,
        )
    };
    record_userspace_exit(record, reason, errno);
    Ok(0)
}

/// `kvm_userspace_exit(__u32 reason, int errno)`, raw.
#[raw_tracepoint(tracepoint = "kvm_userspace_exit")]
pub fn kvm_userspace_exit_raw(ctx: RawTracePointContext) -> u32 {
    if let Thread::Counted(record) = in_flight::mine() {
        record_userspace_exit(record, ctx.arg::<u64>(0) as u32, ctx.arg::<u64>(1) as i32);
    }
    0
}

/// Counts a return to user space and opens its round trip in the thread's
/// record (when it has one).
#[inline(always)]
fn record_userspace_exit(record: Option<*mut TaskInFlight>, reason: u32, errno: i32) {
    let slot = userspace_exit::slot(reason, errno);
    if let Some(stats) = USERSPACE_EXITS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot of this CPU.
        unsafe { (*stats).count += 1 };
    }
    if let Some(record) = record {
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: the current thread's record; only this thread writes it.
        unsafe {
            // Still open: `KVM_RUN` came back to the VMM without entering
            // the guest (a signal, `immediate_exit`); that trip ends here.
            if let Some(open) = in_flight::take_userspace(record) {
                close(open, now);
            }
            (*record).userspace = PendingUserspaceExit {
                ts_ns: now,
                reason: slot,
                _pad: 0,
            };
        }
    }
}

/// Adds the round trip `pending` opened, ended at `now`.
#[inline(always)]
pub fn close(pending: PendingUserspaceExit, now: u64) {
    let took = now.saturating_sub(pending.ts_ns);
    if let Some(stats) = USERSPACE_EXITS.get_ptr_mut(pending.reason) {
        // SAFETY: per-CPU value of this CPU.
        unsafe {
            (*stats).roundtrips += 1;
            (*stats).roundtrip_total_ns += took;
            if took > (*stats).roundtrip_max_ns {
                (*stats).roundtrip_max_ns = took;
            }
        }
    }
}

/// Where `cmd` is in a `sys_enter_ioctl` record: the syscall tracepoints'
/// record is `struct syscall_trace_enter` (an 8-byte header, the syscall
/// number, then the arguments as `unsigned long`s from offset 16), the
/// same on every kernel that has them.
const IOCTL_CMD_OFFSET: usize = 24;

/// Where `kvm_userspace_exit`'s `reason` and `errno` are in its record
/// (after the 8-byte header) on every kernel we know (`fixtures/tracefs`).
const USERSPACE_EXIT_REASON_OFFSET: usize = 8;
const USERSPACE_EXIT_ERRNO_OFFSET: usize = 12;

/// The field of a classic tracepoint's record at `offset` (from tracefs).
/// Where that is `USUAL`, a plain load from the record, which the
/// verifier allows at a constant offset; else `bpf_probe_read_kernel`, a
/// helper call, which a runtime offset needs and which cost about 55 ns
/// per call on the PVM host (`sys_enter_ioctl`, which runs at every ioctl
/// of every process: 178 -> 122 ns).
///
/// # Safety
/// `offset` is the field's, from this kernel's tracefs format, and `T` is
/// its type.
#[inline(always)]
unsafe fn field<T: Copy, const USUAL: usize>(
    ctx: &TracePointContext,
    offset: usize,
) -> Result<T, i32> {
    if offset == USUAL {
        // SAFETY: inside the record (the caller's); the verifier checks
        // the access to the context.
        return Ok(unsafe {
            ctx.as_ptr()
                .cast::<u8>()
                .add(USUAL)
                .cast::<T>()
                .read_volatile()
        });
    }
    // SAFETY: the caller's.
    unsafe { ctx.read_at::<T>(offset) }
}

/// `syscalls:sys_enter_ioctl`: closes the round trip on `KVM_RUN`, where
/// `kvm_entry` never fires (the loader attaches it only there).
#[tracepoint]
pub fn sys_enter_ioctl(ctx: TracePointContext) -> u32 {
    try_sys_enter_ioctl(&ctx).unwrap_or(1)
}

fn try_sys_enter_ioctl(ctx: &TracePointContext) -> Result<u32, i64> {
    // SAFETY: the offset is from this kernel's tracefs format.
    let cmd = unsafe { field::<u64, IOCTL_CMD_OFFSET>(ctx, offset!(ioctl_cmd))? };
    if cmd != u64::from(KVM_RUN) {
        return Ok(0);
    }
    // Only threads of wanted processes have a record.
    let Some(record) = in_flight::existing() else {
        return Ok(0);
    };
    // SAFETY: the current thread's record.
    if let Some(pending) = unsafe { in_flight::take_userspace(record) } {
        close(pending, unsafe { bpf_ktime_get_ns() });
    }
    Ok(0)
}
