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
