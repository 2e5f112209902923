//! Exit-reason tables (Intel SDM basic exit reasons for VMX, AMD APM exit
//! codes for SVM) and the dense slot index the per-CPU arrays use.
//!
//! This is the only place in Rust where exit reasons are named.

/// The hardware virtualization extension an exit reason belongs to. The
/// numeric values are the ones `kvm_exit`'s `isa` field carries.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Intel VMX (`KVM_ISA_VMX`).
    Vmx = 1,
    /// AMD SVM (`KVM_ISA_SVM`).
    Svm = 2,
}

impl Isa {
    /// The name used in JSON and tables.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Vmx => "vmx",
            Self::Svm => "svm",
        }
    }

    /// From `kvm_exit`'s `isa` field.
    #[must_use]
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Vmx),
            2 => Some(Self::Svm),
            _ => None,
        }
    }
}

/// One exit reason of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitReason {
    /// Raw hardware code (VMX basic exit reason, SVM `EXITCODE`).
    pub code: u32,
    /// The name the kernel's `kvm_exit` print format uses.
    pub name: &'static str,
    /// The Intel SDM (VMX) or AMD APM (SVM) defines this code.
    pub defined: bool,
    /// KVM has a handler for it (it is not a "defined but unexpected" exit).
    pub handled: bool,
}

// --- Dense slots -----------------------------------------------------------
//
// The per-CPU array `EXIT_STATS` has one slot per reason. Slots are computed
// on the hot path with a handful of compares, so the layout is a few dense
// ranges, not a lookup table. The layout is ABI between the eBPF object, the
// user space and the kernel patch; change it only together with
// `kernel-patch/`.

/// First slot of VMX basic exit reasons 0..[`VMX_BASIC_LIMIT`].
pub const SLOT_VMX_BASE: u32 = 0;
/// VMX basic exit reasons below this get their own slot.
pub const VMX_BASIC_LIMIT: u32 = 96;
/// First slot of SVM codes 0x000..=0x0ff.
pub const SLOT_SVM_LOW_BASE: u32 = SLOT_VMX_BASE + VMX_BASIC_LIMIT;
/// First slot of SVM codes 0x400..=0x40f (npf, avic, vmgexit).
pub const SLOT_SVM_HIGH_BASE: u32 = SLOT_SVM_LOW_BASE + 0x100;
/// First slot of SVM software exit codes `0x8000_0000..=0x8000_001f`.
pub const SLOT_SVM_SW_BASE: u32 = SLOT_SVM_HIGH_BASE + 0x10;
/// First slot of SVM software exit codes `0x8000_fffd..=0x8000_ffff`.
pub const SLOT_SVM_SW_TOP_BASE: u32 = SLOT_SVM_SW_BASE + 0x20;
/// Slot of SVM code `0xffff_ffff` (`invalid_guest_state`).
pub const SLOT_SVM_INVALID: u32 = SLOT_SVM_SW_TOP_BASE + 3;
/// Slot of any VMX code outside the table's range.
pub const SLOT_VMX_OTHER: u32 = SLOT_SVM_INVALID + 1;
/// Slot of any SVM code outside the table's ranges.
pub const SLOT_SVM_OTHER: u32 = SLOT_VMX_OTHER + 1;
/// Number of slots (the `EXIT_STATS` array length).
pub const SLOTS: u32 = SLOT_SVM_OTHER + 1;

/// Dense slot of a raw exit reason. VMX reasons are reduced to their basic
/// reason (bits 15:0), as the kernel's print format does.
#[inline(always)]
#[expect(
    clippy::inline_always,
    reason = "the eBPF programs call it on the hot path; inlined, the verifier sees no call"
)]
#[must_use]
pub fn slot(isa: u32, code: u32) -> u32 {
    if isa == Isa::Vmx as u32 {
        let basic = code & 0xffff;
        if basic < VMX_BASIC_LIMIT {
            SLOT_VMX_BASE + basic
        } else {
            SLOT_VMX_OTHER
        }
    } else if code < 0x100 {
        SLOT_SVM_LOW_BASE + code
    } else if (0x400..0x410).contains(&code) {
        SLOT_SVM_HIGH_BASE + (code - 0x400)
    } else if (0x8000_0000..0x8000_0020).contains(&code) {
        SLOT_SVM_SW_BASE + (code - 0x8000_0000)
    } else if (0x8000_fffd..=0x8000_ffff).contains(&code) {
        SLOT_SVM_SW_TOP_BASE + (code - 0x8000_fffd)
    } else if code == 0xffff_ffff {
        SLOT_SVM_INVALID
    } else {
        SLOT_SVM_OTHER
    }
}

/// The isa and raw code of a slot; `None` for the two "other" slots, whose
/// code is not known.
#[inline(always)]
#[expect(
    clippy::inline_always,
    reason = "the eBPF programs call it on the hot path; inlined, the verifier sees no call"
)]
#[must_use]
pub fn slot_reason(slot: u32) -> Option<(Isa, u32)> {
    match slot {
        s if s < SLOT_SVM_LOW_BASE => Some((Isa::Vmx, s - SLOT_VMX_BASE)),
        s if s < SLOT_SVM_HIGH_BASE => Some((Isa::Svm, s - SLOT_SVM_LOW_BASE)),
        s if s < SLOT_SVM_SW_BASE => Some((Isa::Svm, 0x400 + s - SLOT_SVM_HIGH_BASE)),
        s if s < SLOT_SVM_SW_TOP_BASE => Some((Isa::Svm, 0x8000_0000 + s - SLOT_SVM_SW_BASE)),
        s if s < SLOT_SVM_INVALID => Some((Isa::Svm, 0x8000_fffd + s - SLOT_SVM_SW_TOP_BASE)),
        SLOT_SVM_INVALID => Some((Isa::Svm, 0xffff_ffff)),
        _ => None,
    }
}

/// The table of an isa.
#[must_use]
pub fn table(isa: Isa) -> &'static [ExitReason] {
    match isa {
        Isa::Vmx => VMX_REASONS,
        Isa::Svm => SVM_REASONS,
    }
}

/// Looks a raw code up in the table of its isa (VMX: basic reason).
#[must_use]
pub fn lookup(isa: Isa, code: u32) -> Option<&'static ExitReason> {
    let code = match isa {
        Isa::Vmx => code & 0xffff,
        Isa::Svm => code,
    };
    table(isa).iter().find(|r| r.code == code)
}

/// Display name of a raw code: the table's name, or `vmx_0x..`/`svm_0x..`
/// for codes the table does not know.
#[must_use]
pub fn name(isa: Isa, code: u32) -> &'static str {
    match lookup(isa, code) {
        Some(r) => r.name,
        None => match isa {
            Isa::Vmx => "unknown_vmx",
            Isa::Svm => "unknown_svm",
        },
    }
}

/// The exit reasons whose KVM handlers emit each handler-event tracepoint,
/// by tracepoint name: the drill-down under a reason, as `perf kvm stat
/// --event=ioport|mmio|msr` shows it. (MMIO reaches KVM through the
/// nested-paging fault exits; under shadow paging through page faults,
/// which are too many other things to drill into.)
pub static HANDLER_EXITS: &[(&str, Isa, u32)] = &[
    ("kvm_cpuid", Isa::Vmx, 10),
    ("kvm_cpuid", Isa::Svm, 0x072),
    ("kvm_pio", Isa::Vmx, 30),
    ("kvm_pio", Isa::Svm, 0x07b),
    ("kvm_mmio", Isa::Vmx, 48),
    ("kvm_mmio", Isa::Vmx, 49),
    ("kvm_mmio", Isa::Svm, 0x400),
    ("kvm_msr", Isa::Vmx, 31),
    ("kvm_msr", Isa::Vmx, 32),
    ("kvm_msr", Isa::Svm, 0x07c),
    ("kvm_hypercall", Isa::Vmx, 18),
    ("kvm_hypercall", Isa::Svm, 0x081),
];

/// The exit reasons under which `tracepoint`'s events are a drill-down.
pub fn handler_exits(tracepoint: &str) -> impl Iterator<Item = (Isa, u32)> + '_ {
    HANDLER_EXITS
        .iter()
        .filter(move |(t, _, _)| *t == tracepoint)
        .map(|&(_, isa, code)| (isa, code))
}

/// Table entry: `r(code, name, defined, handled)`.
const fn r(code: u32, name: &'static str, defined: bool, handled: bool) -> ExitReason {
    ExitReason {
        code,
        name,
        defined,
        handled,
    }
}

// Flags for readability: D = the spec defines it, H = KVM (Linux 6.1)
// handles it.
const D: bool = true;
const H: bool = true;
const N: bool = false;

/// Intel SDM Vol. 3C Appendix C, VMX basic exit reasons. Codes the SDM
/// reserves (35, 38, 42, 71, 82, 83) are not in the table: a lookup miss
/// means "not defined". Names are those of the kernel's `kvm_exit` print
/// format, or the SDM's in the same style where the kernel has none.
/// `handled`: an entry in Linux 6.1's `kvm_vmx_exit_handlers`.
pub static VMX_REASONS: &[ExitReason] = &[
    r(0, "EXCEPTION_NMI", D, H),
    r(1, "EXTERNAL_INTERRUPT", D, H),
    r(2, "TRIPLE_FAULT", D, H),
    r(3, "INIT_SIGNAL", D, N),
    r(4, "SIPI_SIGNAL", D, N),
    r(5, "IO_SMI", D, N),
    r(6, "OTHER_SMI", D, N),
    r(7, "INTERRUPT_WINDOW", D, H),
    r(8, "NMI_WINDOW", D, H),
    r(9, "TASK_SWITCH", D, H),
    r(10, "CPUID", D, H),
    r(11, "GETSEC", D, N),
    r(12, "HLT", D, H),
    r(13, "INVD", D, H),
    r(14, "INVLPG", D, H),
    r(15, "RDPMC", D, H),
    r(16, "RDTSC", D, N),
    r(17, "RSM", D, N),
    r(18, "VMCALL", D, H),
    r(19, "VMCLEAR", D, H),
    r(20, "VMLAUNCH", D, H),
    r(21, "VMPTRLD", D, H),
    r(22, "VMPTRST", D, H),
    r(23, "VMREAD", D, H),
    r(24, "VMRESUME", D, H),
    r(25, "VMWRITE", D, H),
    r(26, "VMOFF", D, H),
    r(27, "VMON", D, H),
    r(28, "CR_ACCESS", D, H),
    r(29, "DR_ACCESS", D, H),
    r(30, "IO_INSTRUCTION", D, H),
    r(31, "MSR_READ", D, H),
    r(32, "MSR_WRITE", D, H),
    r(33, "INVALID_STATE", D, N),
    r(34, "MSR_LOAD_FAIL", D, N),
    r(36, "MWAIT_INSTRUCTION", D, H),
    r(37, "MONITOR_TRAP_FLAG", D, H),
    r(39, "MONITOR_INSTRUCTION", D, H),
    r(40, "PAUSE_INSTRUCTION", D, H),
    r(41, "MCE_DURING_VMENTRY", D, H),
    r(43, "TPR_BELOW_THRESHOLD", D, H),
    r(44, "APIC_ACCESS", D, H),
    r(45, "EOI_INDUCED", D, H),
    r(46, "GDTR_IDTR", D, H),
    r(47, "LDTR_TR", D, H),
    r(48, "EPT_VIOLATION", D, H),
    r(49, "EPT_MISCONFIG", D, H),
    r(50, "INVEPT", D, H),
    r(51, "RDTSCP", D, N),
    r(52, "PREEMPTION_TIMER", D, H),
    r(53, "INVVPID", D, H),
    r(54, "WBINVD", D, H),
    r(55, "XSETBV", D, H),
    r(56, "APIC_WRITE", D, H),
    r(57, "RDRAND", D, H),
    r(58, "INVPCID", D, H),
    r(59, "VMFUNC", D, H),
    r(60, "ENCLS", D, H),
    r(61, "RDSEED", D, H),
    r(62, "PML_FULL", D, H),
    r(63, "XSAVES", D, N),
    r(64, "XRSTORS", D, N),
    r(65, "PCONFIG", D, N),
    r(66, "SPP_EVENT", D, N),
    r(67, "UMWAIT", D, H),
    r(68, "TPAUSE", D, H),
    r(69, "LOADIWKEY", D, N),
    r(70, "ENCLV", D, N),
    r(72, "ENQCMD_PASID_FAIL", D, N),
    r(73, "ENQCMDS_PASID_FAIL", D, N),
    r(74, "BUS_LOCK", D, H),
    r(75, "NOTIFY", D, H),
    r(76, "SEAMCALL", D, N),
    r(77, "TDCALL", D, N),
    r(78, "RDMSRLIST", D, N),
    r(79, "WRMSRLIST", D, N),
    r(80, "URDMSR", D, N),
    r(81, "UWRMSR", D, N),
    r(84, "MSR_READ_IMM", D, N),
    r(85, "MSR_WRITE_IMM", D, N),
];

/// AMD APM Vol. 2 Appendix C, SVM intercept exit codes, plus the SEV-ES
/// `VMGEXIT` software exit codes Linux names. Codes the APM reserves are
/// not in the table. Names are those of the kernel's `kvm_exit` print
/// format, or in its style where it has none. `handled`: an entry in Linux
/// 6.1's `svm_exit_handlers` (or `sev_handle_vmgexit` for the software
/// codes).
pub static SVM_REASONS: &[ExitReason] = &[
    r(0x000, "read_cr0", D, H),
    r(0x001, "read_cr1", D, N),
    r(0x002, "read_cr2", D, N),
    r(0x003, "read_cr3", D, H),
    r(0x004, "read_cr4", D, H),
    r(0x005, "read_cr5", D, N),
    r(0x006, "read_cr6", D, N),
    r(0x007, "read_cr7", D, N),
    r(0x008, "read_cr8", D, H),
    r(0x009, "read_cr9", D, N),
    r(0x00a, "read_cr10", D, N),
    r(0x00b, "read_cr11", D, N),
    r(0x00c, "read_cr12", D, N),
    r(0x00d, "read_cr13", D, N),
    r(0x00e, "read_cr14", D, N),
    r(0x00f, "read_cr15", D, N),
    r(0x010, "write_cr0", D, H),
    r(0x011, "write_cr1", D, N),
    r(0x012, "write_cr2", D, N),
    r(0x013, "write_cr3", D, H),
    r(0x014, "write_cr4", D, H),
    r(0x015, "write_cr5", D, N),
    r(0x016, "write_cr6", D, N),
    r(0x017, "write_cr7", D, N),
    r(0x018, "write_cr8", D, H),
    r(0x019, "write_cr9", D, N),
    r(0x01a, "write_cr10", D, N),
    r(0x01b, "write_cr11", D, N),
    r(0x01c, "write_cr12", D, N),
    r(0x01d, "write_cr13", D, N),
    r(0x01e, "write_cr14", D, N),
    r(0x01f, "write_cr15", D, N),
    r(0x020, "read_dr0", D, H),
    r(0x021, "read_dr1", D, H),
    r(0x022, "read_dr2", D, H),
    r(0x023, "read_dr3", D, H),
    r(0x024, "read_dr4", D, H),
    r(0x025, "read_dr5", D, H),
    r(0x026, "read_dr6", D, H),
    r(0x027, "read_dr7", D, H),
    r(0x028, "read_dr8", D, N),
    r(0x029, "read_dr9", D, N),
    r(0x02a, "read_dr10", D, N),
    r(0x02b, "read_dr11", D, N),
    r(0x02c, "read_dr12", D, N),
    r(0x02d, "read_dr13", D, N),
    r(0x02e, "read_dr14", D, N),
    r(0x02f, "read_dr15", D, N),
    r(0x030, "write_dr0", D, H),
    r(0x031, "write_dr1", D, H),
    r(0x032, "write_dr2", D, H),
    r(0x033, "write_dr3", D, H),
    r(0x034, "write_dr4", D, H),
    r(0x035, "write_dr5", D, H),
    r(0x036, "write_dr6", D, H),
    r(0x037, "write_dr7", D, H),
    r(0x038, "write_dr8", D, N),
    r(0x039, "write_dr9", D, N),
    r(0x03a, "write_dr10", D, N),
    r(0x03b, "write_dr11", D, N),
    r(0x03c, "write_dr12", D, N),
    r(0x03d, "write_dr13", D, N),
    r(0x03e, "write_dr14", D, N),
    r(0x03f, "write_dr15", D, N),
    r(0x040, "DE excp", D, N),
    r(0x041, "DB excp", D, H),
    r(0x042, "NMI excp", D, N),
    r(0x043, "BP excp", D, H),
    r(0x044, "OF excp", D, N),
    r(0x045, "BR excp", D, N),
    r(0x046, "UD excp", D, H),
    r(0x047, "NM excp", D, N),
    r(0x048, "DF excp", D, N),
    r(0x049, "CSO excp", D, N),
    r(0x04a, "TS excp", D, N),
    r(0x04b, "NP excp", D, N),
    r(0x04c, "SS excp", D, N),
    r(0x04d, "GP excp", D, H),
    r(0x04e, "PF excp", D, H),
    r(0x04f, "excp 15", D, N),
    r(0x050, "MF excp", D, N),
    r(0x051, "AC excp", D, H),
    r(0x052, "MC excp", D, H),
    r(0x053, "XF excp", D, N),
    r(0x054, "VE excp", D, N),
    r(0x055, "CP excp", D, N),
    r(0x056, "excp 22", D, N),
    r(0x057, "excp 23", D, N),
    r(0x058, "excp 24", D, N),
    r(0x059, "excp 25", D, N),
    r(0x05a, "excp 26", D, N),
    r(0x05b, "excp 27", D, N),
    r(0x05c, "HV excp", D, N),
    r(0x05d, "VC excp", D, N),
    r(0x05e, "SX excp", D, N),
    r(0x05f, "excp 31", D, N),
    r(0x060, "interrupt", D, H),
    r(0x061, "nmi", D, H),
    r(0x062, "smi", D, H),
    r(0x063, "init", D, H),
    r(0x064, "vintr", D, H),
    r(0x065, "cr0_sel_write", D, H),
    r(0x066, "read_idtr", D, N),
    r(0x067, "read_gdtr", D, N),
    r(0x068, "read_ldtr", D, N),
    r(0x069, "read_rt", D, N),
    r(0x06a, "write_idtr", D, N),
    r(0x06b, "write_gdtr", D, N),
    r(0x06c, "write_ldtr", D, N),
    r(0x06d, "write_rt", D, N),
    r(0x06e, "rdtsc", D, N),
    r(0x06f, "rdpmc", D, H),
    r(0x070, "pushf", D, N),
    r(0x071, "popf", D, N),
    r(0x072, "cpuid", D, H),
    r(0x073, "rsm", D, H),
    r(0x074, "iret", D, H),
    r(0x075, "swint", D, N),
    r(0x076, "invd", D, H),
    r(0x077, "pause", D, H),
    r(0x078, "hlt", D, H),
    r(0x079, "invlpg", D, H),
    r(0x07a, "invlpga", D, H),
    r(0x07b, "io", D, H),
    r(0x07c, "msr", D, H),
    r(0x07d, "task_switch", D, H),
    r(0x07e, "ferr_freeze", D, N),
    r(0x07f, "shutdown", D, H),
    r(0x080, "vmrun", D, H),
    r(0x081, "hypercall", D, H),
    r(0x082, "vmload", D, H),
    r(0x083, "vmsave", D, H),
    r(0x084, "stgi", D, H),
    r(0x085, "clgi", D, H),
    r(0x086, "skinit", D, H),
    r(0x087, "rdtscp", D, H),
    r(0x088, "icebp", D, N),
    r(0x089, "wbinvd", D, H),
    r(0x08a, "monitor", D, H),
    r(0x08b, "mwait", D, H),
    r(0x08c, "mwait_cond", D, N),
    r(0x08d, "xsetbv", D, H),
    r(0x08e, "rdpru", D, H),
    r(0x08f, "write_efer_trap", D, H),
    r(0x090, "write_cr0_trap", D, H),
    r(0x091, "write_cr1_trap", D, N),
    r(0x092, "write_cr2_trap", D, N),
    r(0x093, "write_cr3_trap", D, N),
    r(0x094, "write_cr4_trap", D, H),
    r(0x095, "write_cr5_trap", D, N),
    r(0x096, "write_cr6_trap", D, N),
    r(0x097, "write_cr7_trap", D, N),
    r(0x098, "write_cr8_trap", D, H),
    r(0x099, "write_cr9_trap", D, N),
    r(0x09a, "write_cr10_trap", D, N),
    r(0x09b, "write_cr11_trap", D, N),
    r(0x09c, "write_cr12_trap", D, N),
    r(0x09d, "write_cr13_trap", D, N),
    r(0x09e, "write_cr14_trap", D, N),
    r(0x09f, "write_cr15_trap", D, N),
    r(0x0a0, "invlpgb", D, N),
    r(0x0a1, "invlpgb_illegal", D, N),
    r(0x0a2, "invpcid", D, H),
    r(0x0a3, "mcommit", D, N),
    r(0x0a4, "tlbsync", D, N),
    r(0x0a5, "buslock", D, N),
    r(0x0a6, "idle-halt", D, N),
    r(0x400, "npf", D, H),
    r(0x401, "avic_incomplete_ipi", D, H),
    r(0x402, "avic_unaccelerated_access", D, H),
    r(0x403, "vmgexit", D, H),
    r(0x8000_0001, "vmgexit_mmio_read", D, H),
    r(0x8000_0002, "vmgexit_mmio_write", D, H),
    r(0x8000_0003, "vmgexit_nmi_complete", D, H),
    r(0x8000_0004, "vmgexit_ap_hlt_loop", D, H),
    r(0x8000_0005, "vmgexit_ap_jump_table", D, H),
    r(0x8000_0010, "vmgexit_page_state_change", D, N),
    r(0x8000_0011, "vmgexit_guest_request", D, N),
    r(0x8000_0012, "vmgexit_ext_guest_request", D, N),
    r(0x8000_0013, "vmgexit_ap_creation", D, N),
    r(0x8000_fffd, "vmgexit_hypervisor_feature", D, N),
    r(0x8000_ffff, "vmgexit_unsupported_event", D, H),
    r(0xffff_ffff, "invalid_guest_state", D, H),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip() {
        for s in 0..SLOTS {
            if let Some((isa, code)) = slot_reason(s) {
                assert_eq!(
                    slot(isa as u32, code),
                    s,
                    "slot {s} isa {isa:?} code {code:#x}"
                );
            }
        }
        // VMX flags (bit 31: failed VM entry) do not change the slot.
        assert_eq!(slot(1, 0x8000_0021), 33);
        assert_eq!(slot(2, 0x72), SLOT_SVM_LOW_BASE + 0x72);
        assert_eq!(slot(2, 0x400), SLOT_SVM_HIGH_BASE);
        assert_eq!(slot(2, 0x500), SLOT_SVM_OTHER);
        assert_eq!(slot(1, 200), SLOT_VMX_OTHER);
    }

    extern crate std;
    use std::{collections::BTreeMap, format, fs, string::String, vec::Vec};

    /// `(code, name)` pairs of the VMX and the SVM `__print_symbolic` lists
    /// of a fixture kernel's `kvm_exit` print format.
    fn print_fmt_names(kernel: &str) -> (BTreeMap<u32, String>, BTreeMap<u32, String>) {
        let path = format!(
            "{}/../fixtures/tracefs/{kernel}.kvm_exit.format",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = fs::read_to_string(&path).unwrap();
        let fmt = &text[text.find("print fmt:").unwrap()..];
        let list = |marker: &str| {
            let start = fmt.find(marker).unwrap() + marker.len();
            let body = &fmt[start..];
            let body = &body[..body.find(')').unwrap()];
            let mut out = BTreeMap::new();
            for entry in body.split('{').skip(1) {
                let (code, rest) = entry.split_once(',').unwrap();
                let name = rest.split('"').nth(1).unwrap();
                let code = code.trim();
                let value = if code == "-1" {
                    u32::MAX
                } else if let Some((base, add)) = code.split_once('+') {
                    parse(base) + parse(add)
                } else {
                    parse(code)
                };
                out.insert(value, String::from(name));
            }
            out
        };
        (
            list("__print_symbolic(REC->exit_reason & 0xffff,"),
            list("__print_symbolic(REC->exit_reason,"),
        )
    }

    fn parse(text: &str) -> u32 {
        let text = text.trim();
        match text.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16).unwrap(),
            None => text.parse().unwrap(),
        }
    }

    fn check_kernel(kernel: &str, vmx_missing: &[u32], svm_missing: &[u32]) {
        let (vmx, svm) = print_fmt_names(kernel);
        for (isa, names) in [(Isa::Vmx, &vmx), (Isa::Svm, &svm)] {
            for (code, name) in names {
                let entry = lookup(isa, *code).unwrap_or_else(|| {
                    panic!("{kernel}: {isa:?} {code:#x} {name} not in the table")
                });
                assert_eq!(entry.name, name, "{kernel}: {isa:?} {code:#x}");
            }
        }
        // Table entries this kernel's print format does not name: exactly
        // the ones listed, so a change to either side is deliberate.
        let unnamed = |isa, names: &BTreeMap<u32, String>| -> Vec<u32> {
            table(isa)
                .iter()
                .filter(|r| !names.contains_key(&r.code))
                .map(|r| r.code)
                .collect()
        };
        assert_eq!(unnamed(Isa::Vmx, &vmx), vmx_missing, "{kernel} VMX");
        assert_eq!(unnamed(Isa::Svm, &svm), svm_missing, "{kernel} SVM");
    }

    /// Defined by the SDM/APM, but not named by the 6.18 print format.
    const VMX_UNNAMED_6_18: &[u32] = &[5, 6, 11, 17, 65, 66, 69, 70, 72, 73, 76, 78, 79, 80, 81];
    fn svm_unnamed_6_18() -> Vec<u32> {
        let mut v: Vec<u32> = [0x001, 0x005, 0x006, 0x007]
            .into_iter()
            .chain(0x009..=0x00f)
            .chain([0x011, 0x015, 0x016, 0x017])
            .chain(0x019..=0x01f)
            .chain(0x028..=0x02f)
            .chain(0x038..=0x03f)
            .chain([0x042, 0x049, 0x04f])
            .chain(0x054..=0x05f)
            .chain([0x08c, 0x08e, 0x091, 0x092, 0x093, 0x095, 0x096, 0x097])
            .chain(0x099..=0x0a1)
            .chain([0x0a3, 0x0a4, 0x8000_ffff])
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn names_match_the_6_18_print_format() {
        check_kernel("linux-6.18-pvm", VMX_UNNAMED_6_18, &svm_unnamed_6_18());
    }

    #[test]
    fn names_match_the_6_1_print_format() {
        let mut vmx: Vec<u32> = VMX_UNNAMED_6_18.to_vec();
        vmx.extend([77, 84, 85]);
        vmx.sort_unstable();
        let mut svm = svm_unnamed_6_18();
        svm.extend([0x0a5, 0x0a6]);
        svm.sort_unstable();
        check_kernel("linux-6.1-debian-svm", &vmx, &svm);
    }

    /// The `(code, name)` entries of a uapi list macro (`VMX_EXIT_REASONS`
    /// in `vmx.h`, `SVM_EXIT_REASONS` in `svm.h`) of a fixture kernel's
    /// headers (`fixtures/uapi/`), with the `#define`s of `vmx.h`, `svm.h`
    /// and `kvm.h` (the `*_VECTOR`s) resolved.
    fn uapi_list(kernel: &str, header: &str, list: &str) -> BTreeMap<u32, String> {
        let dir = format!("{}/../fixtures/uapi/{kernel}", env!("CARGO_MANIFEST_DIR"));
        let read = |file: &str| fs::read_to_string(format!("{dir}/{file}")).unwrap();
        let mut defines = BTreeMap::new();
        for file in ["vmx.h", "svm.h", "kvm.h"] {
            for line in read(file).lines() {
                let mut words = line.split_whitespace();
                if let (Some("#define"), Some(name), Some(value)) =
                    (words.next(), words.next(), words.next())
                {
                    let value = if value == "-1" {
                        Some(u32::MAX)
                    } else if let Some(hex) = value.strip_prefix("0x") {
                        u32::from_str_radix(hex, 16).ok()
                    } else {
                        value.parse().ok()
                    };
                    if let Some(value) = value {
                        defines.insert(String::from(name), value);
                    }
                }
            }
        }
        let text = read(header);
        let start = text
            .find(&format!("#define {list} \\"))
            .unwrap_or_else(|| panic!("{kernel}/{header} has no {list}"));
        let mut body = String::new();
        for line in text[start..].lines().skip(1) {
            body.push_str(line);
            if !line.trim_end().ends_with('\\') {
                break;
            }
        }
        let mut out = BTreeMap::new();
        for entry in body.split('{').skip(1) {
            let (expr, rest) = entry.split_once(',').unwrap();
            let name = rest.split('"').nth(1).unwrap();
            let code = expr
                .split('+')
                .map(|term| {
                    let term = term.trim();
                    defines.get(term).copied().unwrap_or_else(|| parse(term))
                })
                .fold(0u32, u32::wrapping_add);
            assert!(
                out.insert(code, String::from(name)).is_none(),
                "{kernel} {list}: {code:#x} twice"
            );
        }
        out
    }

    /// exitprof's tables against the kernel's own lists of "defined"
    /// reasons, which the kernel patch (v2) answers
    /// `EDX_UNDEFINED` for when a code is not in them.
    fn check_uapi(kernel: &str) {
        for (isa, header, list) in [
            (Isa::Vmx, "vmx.h", "VMX_EXIT_REASONS"),
            (Isa::Svm, "svm.h", "SVM_EXIT_REASONS"),
        ] {
            let named = uapi_list(kernel, header, list);
            assert!(named.len() > 50, "{kernel} {list}: {} entries", named.len());
            // Every reason the kernel names is defined in the table, with
            // the kernel's name.
            for (code, name) in &named {
                let entry = table(isa)
                    .iter()
                    .find(|r| r.code == *code)
                    .unwrap_or_else(|| {
                        panic!("{kernel} {list}: {code:#x} {name} is not in the table")
                    });
                assert!(
                    entry.defined,
                    "{kernel} {list}: {code:#x} {name} not defined"
                );
                assert_eq!(entry.name, name, "{kernel} {list}: {code:#x}");
            }
            // What the table defines beyond the kernel's list (SDM/APM
            // reasons Linux does not name): exactly these, so that a change
            // on either side is deliberate. The kernel patch reads them as
            // undefined.
            let beyond: Vec<u32> = table(isa)
                .iter()
                .filter(|r| r.defined && !named.contains_key(&r.code))
                .map(|r| r.code)
                .collect();
            let expected = match isa {
                Isa::Vmx => VMX_UNNAMED_6_1.to_vec(),
                Isa::Svm => svm_unnamed_6_1(),
            };
            assert_eq!(beyond, expected, "{kernel} {list}: defined beyond the list");
        }
    }

    /// VMX reasons the SDM defines that the 6.1 and 6.12 uapi list does not
    /// name.
    const VMX_UNNAMED_6_1: &[u32] = &[
        5, 6, 11, 17, 65, 66, 69, 70, 72, 73, 76, 77, 78, 79, 80, 81, 84, 85,
    ];
    fn svm_unnamed_6_1() -> Vec<u32> {
        let mut v = svm_unnamed_6_18();
        v.extend([0x0a5, 0x0a6]);
        v.sort_unstable();
        v
    }

    #[test]
    fn tables_match_the_6_1_uapi_lists() {
        check_uapi("linux-6.1");
    }

    #[test]
    fn tables_match_the_6_12_uapi_lists() {
        check_uapi("linux-6.12");
    }

    #[test]
    fn tables_are_sorted_unique_and_slotted() {
        for isa in [Isa::Vmx, Isa::Svm] {
            let t = table(isa);
            assert!(
                t.windows(2).all(|w| w[0].code < w[1].code),
                "{isa:?} sorted"
            );
            let mut slots: Vec<u32> = t.iter().map(|r| slot(isa as u32, r.code)).collect();
            assert!(
                slots
                    .iter()
                    .all(|&s| s != SLOT_VMX_OTHER && s != SLOT_SVM_OTHER),
                "{isa:?}: an entry falls into an other slot"
            );
            slots.sort_unstable();
            slots.dedup();
            assert_eq!(slots.len(), t.len(), "{isa:?}: two entries share a slot");
        }
    }

    #[test]
    fn spot_checks() {
        assert_eq!(lookup(Isa::Vmx, 10), Some(&r(10, "CPUID", D, H)));
        assert_eq!(lookup(Isa::Vmx, 35), None, "reserved in the SDM");
        assert_eq!(
            lookup(Isa::Svm, 0x72).map(|e| (e.name, e.handled)),
            Some(("cpuid", true))
        );
        assert_eq!(lookup(Isa::Svm, 0x400).map(|e| e.name), Some("npf"));
        assert_eq!(lookup(Isa::Svm, 0x0a7), None, "reserved in the APM");
        assert_eq!(
            lookup(Isa::Svm, 0x06e).map(|e| (e.defined, e.handled)),
            Some((true, false))
        );
        assert_eq!(name(Isa::Vmx, 0x8000_0021), "INVALID_STATE");
    }

    #[test]
    fn handler_exits_name_handled_reasons() {
        for &(tracepoint, isa, code) in HANDLER_EXITS {
            let entry = lookup(isa, code).expect("a defined reason");
            assert!(entry.handled, "{tracepoint}: {} is not handled", entry.name);
        }
        let names: Vec<&str> = handler_exits("kvm_pio").map(|(i, c)| name(i, c)).collect();
        assert_eq!(names, ["IO_INSTRUCTION", "io"]);
    }
}
