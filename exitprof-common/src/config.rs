//! The configuration the loader hands to the eBPF programs as one global
//! (`CONFIG`): the process filter and the field offsets of every classic
//! tracepoint record, read from tracefs at load time because they differ
//! between kernels (see `fixtures/tracefs` at the repository root).

use crate::events::EventOffsets;

/// No process filter: every VM on the host is counted.
pub const FILTER_ALL: u32 = 0;
/// Only threads whose process id is a key of the `TRACKED_TGIDS` map are
/// counted; `sched_process_fork` adds the children of tracked processes.
pub const FILTER_TRACKED: u32 = 1;

/// `GUEST_MIRROR` is left empty.
pub const MIRROR_OFF: u32 = 0;
/// `GUEST_MIRROR` counts each exit under its VMM process's tgid.
pub const MIRROR_VM: u32 = 1;
/// `GUEST_MIRROR` counts every exit under `guest_abi::TGID_HOST`.
pub const MIRROR_HOST: u32 = 2;

/// Byte offsets of the record fields the classic programs read. Offsets count from
/// the start of the record (the `common_type` field), as tracefs prints them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// The handler-event programs' fields.
    pub events: EventOffsets,
    /// `kvm_userspace_exit.reason`
    pub userspace_exit_reason: u32,
    /// `kvm_userspace_exit.errno`
    pub userspace_exit_errno: u32,
    /// `kvm_exit.exit_reason`
    pub exit_reason: u32,
    /// `kvm_exit.isa` (1 = VMX, 2 = SVM)
    pub exit_isa: u32,
    /// `kvm_exit.vcpu_id`
    pub exit_vcpu_id: u32,
    /// `kvm_exit.guest_rip` (an `unsigned long`)
    pub exit_guest_rip: u32,
    /// `sys_enter_ioctl.cmd`
    pub ioctl_cmd: u32,
    /// `sched_process_fork.parent_pid`
    pub fork_parent_pid: u32,
    /// `sched_process_fork.child_pid`
    pub fork_child_pid: u32,
    /// `sched_process_exit.group_dead` (a bool; Linux 6.16 and later), or
    /// [`NO_FIELD`].
    pub exit_group_dead: u32,
}

/// The offset of a record field this kernel does not have.
pub const NO_FIELD: u32 = u32::MAX;

impl Offsets {
    /// All zero.
    pub const ZERO: Self = Self {
        events: EventOffsets::ZERO,
        userspace_exit_reason: 0,
        userspace_exit_errno: 0,
        exit_reason: 0,
        exit_isa: 0,
        exit_vcpu_id: 0,
        exit_guest_rip: 0,
        ioctl_cmd: 0,
        fork_parent_pid: 0,
        fork_child_pid: 0,
        exit_group_dead: NO_FIELD,
    };
}

/// Byte offsets into kernel structures for the raw `kvm_exit` program,
/// resolved from the kernel's BTF at load time (raw attach mode).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawOffsets {
    /// `struct kvm_vcpu.vcpu_id` (int).
    pub kvm_vcpu_id: u32,
    /// `struct vcpu_svm.vmcb` (a `struct vmcb *`), from the `kvm_vcpu`
    /// it embeds at offset 0.
    pub svm_vmcb: u32,
    /// `struct vmcb.control.exit_code`.
    pub vmcb_exit_code: u32,
    /// `struct vcpu_vmx.exit_reason` (`union vmx_exit_reason`, 32 bits).
    pub vmx_exit_reason: u32,
    /// `struct vmcb.save.rip`: the guest's RIP, which the processor saved
    /// at `#VMEXIT` (exit sites on SVM). VMX has no equivalent at
    /// `kvm_exit`: KVM reads `GUEST_RIP` from the VMCS on demand, and
    /// `vcpu->arch.regs[VCPU_REGS_RIP]` still holds the previous value
    /// there, so exit sites on VMX use the classic record's `guest_rip`.
    pub vmcb_save_rip: u32,
}

impl RawOffsets {
    /// All zero.
    pub const ZERO: Self = Self {
        kvm_vcpu_id: 0,
        svm_vmcb: 0,
        vmcb_exit_code: 0,
        vmx_exit_reason: 0,
        vmcb_save_rip: 0,
    };
}

/// The one global the loader sets before loading the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// [`FILTER_ALL`] or [`FILTER_TRACKED`].
    pub filter: u32,
    /// Non-zero: also aggregate exits per (process, vCPU, reason).
    pub breakdown: u32,
    /// Fill `GUEST_MIRROR` for a patched KVM: [`MIRROR_OFF`],
    /// [`MIRROR_VM`] or [`MIRROR_HOST`].
    pub mirror: u32,
    /// Non-zero: also aggregate exits per (process, reason, guest RIP).
    pub sites: u32,
    /// Record field offsets for the classic tracepoints.
    pub offsets: Offsets,
    /// Structure offsets for the raw tracepoints.
    pub raw: RawOffsets,
}

impl Config {
    /// All zero: no filter, no breakdown, no offsets (the eBPF side's
    /// initializer, which the loader overrides).
    pub const ZERO: Self = Self {
        filter: FILTER_ALL,
        breakdown: 0,
        mirror: MIRROR_OFF,
        sites: 0,
        offsets: Offsets::ZERO,
        raw: RawOffsets::ZERO,
    };
}

#[cfg(feature = "user")]
// SAFETY: plain `repr(C)` integers without padding.
unsafe impl aya::Pod for Config {}
