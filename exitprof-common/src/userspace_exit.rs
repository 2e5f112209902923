//! `kvm_run.exit_reason` values (`KVM_EXIT_*` of `<linux/kvm.h>`) as the
//! `kvm_userspace_exit` tracepoint reports them.

/// A return from `KVM_RUN` with a negative errno is keyed as
/// `ERRNO_BASE + errno` (e.g. `-EINTR` → `ERRNO_BASE + 4`), so that it
/// cannot collide with a `KVM_EXIT_*` reason.
pub const ERRNO_BASE: u32 = 0x1_0000;

/// `EINTR`: `KVM_RUN` interrupted by a signal (shown as "restart").
pub const EINTR: u32 = 4;

/// Names of `KVM_EXIT_*` 0..=30 as the 6.1 and 6.18 print formats list them
/// (without the `KVM_EXIT_` prefix).
pub static NAMES: &[&str] = &[
    "UNKNOWN",
    "EXCEPTION",
    "IO",
    "HYPERCALL",
    "DEBUG",
    "HLT",
    "MMIO",
    "IRQ_WINDOW_OPEN",
    "SHUTDOWN",
    "FAIL_ENTRY",
    "INTR",
    "SET_TPR",
    "TPR_ACCESS",
    "S390_SIEIC",
    "S390_RESET",
    "DCR",
    "NMI",
    "INTERNAL_ERROR",
    "OSI",
    "PAPR_HCALL",
    "S390_UCONTROL",
    "WATCHDOG",
    "S390_TSCH",
    "EPR",
    "SYSTEM_EVENT",
    "S390_STSI",
    "IOAPIC_EOI",
    "HYPERV",
    "ARM_NISV",
    "X86_RDMSR",
    "X86_WRMSR",
];

/// `KVM_EXIT_IO`.
pub const IO: u32 = 2;
/// `KVM_EXIT_HLT`.
pub const HLT: u32 = 5;
/// `KVM_EXIT_MMIO`.
pub const MMIO: u32 = 6;

/// `USERSPACE_EXITS` is a per-CPU array: `KVM_EXIT_*` reasons below this
/// have a slot each (the same number)...
pub const REASON_SLOTS: u32 = 64;
/// ...then negative errnos below this, at `REASON_SLOTS + errno`...
pub const ERRNO_SLOTS: u32 = 192;
/// ...then one slot for anything else.
pub const SLOT_OTHER: u32 = REASON_SLOTS + ERRNO_SLOTS;
/// Slots of `USERSPACE_EXITS`.
pub const SLOTS: u32 = SLOT_OTHER + 1;
/// The reason key reported for [`SLOT_OTHER`].
pub const OTHER: u32 = u32::MAX;

/// The `USERSPACE_EXITS` slot of a return from `KVM_RUN`.
#[inline(always)]
#[expect(
    clippy::inline_always,
    reason = "the eBPF programs call it on the hot path; inlined, the verifier sees no call"
)]
#[must_use]
pub fn slot(reason: u32, errno: i32) -> u32 {
    if errno < 0 {
        let errno = errno.unsigned_abs();
        if errno < ERRNO_SLOTS {
            REASON_SLOTS + errno
        } else {
            SLOT_OTHER
        }
    } else if reason < REASON_SLOTS {
        reason
    } else {
        SLOT_OTHER
    }
}

/// The reason key of a slot: the `KVM_EXIT_*` value, `ERRNO_BASE + errno`,
/// or [`OTHER`].
#[must_use]
pub const fn slot_reason(slot: u32) -> u32 {
    if slot < REASON_SLOTS {
        slot
    } else if slot < SLOT_OTHER {
        ERRNO_BASE + slot - REASON_SLOTS
    } else {
        OTHER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip() {
        assert_eq!(slot(IO, 0), 2);
        assert_eq!(slot_reason(slot(IO, 0)), IO);
        assert_eq!(slot_reason(slot(0, -4)), ERRNO_BASE + EINTR);
        assert_eq!(slot(99, 0), SLOT_OTHER);
        assert_eq!(slot(0, -500), SLOT_OTHER);
        assert_eq!(slot_reason(SLOT_OTHER), OTHER);
    }
}
