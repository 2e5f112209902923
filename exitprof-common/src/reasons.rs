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
/// First slot of SVM software exit codes 0x8000_0000..=0x8000_001f.
pub const SLOT_SVM_SW_BASE: u32 = SLOT_SVM_HIGH_BASE + 0x10;
/// First slot of SVM software exit codes 0x8000_fffd..=0x8000_ffff.
pub const SLOT_SVM_SW_TOP_BASE: u32 = SLOT_SVM_SW_BASE + 0x20;
/// Slot of SVM code 0xffff_ffff (`invalid_guest_state`).
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
    } else if code >= 0x400 && code < 0x410 {
        SLOT_SVM_HIGH_BASE + (code - 0x400)
    } else if code >= 0x8000_0000 && code < 0x8000_0020 {
        SLOT_SVM_SW_BASE + (code - 0x8000_0000)
    } else if code >= 0x8000_fffd && code <= 0x8000_ffff {
        SLOT_SVM_SW_TOP_BASE + (code - 0x8000_fffd)
    } else if code == 0xffff_ffff {
        SLOT_SVM_INVALID
    } else {
        SLOT_SVM_OTHER
    }
}

/// The isa and raw code of a slot; `None` for the two "other" slots, whose
/// code is not known.
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

/// Intel SDM Vol. 3 Appendix C, basic exit reasons.
pub static VMX_REASONS: &[ExitReason] = &[];

/// AMD APM Vol. 2 Appendix C, SVM intercept exit codes (plus the SEV-ES
/// `VMGEXIT` software exit codes Linux names).
pub static SVM_REASONS: &[ExitReason] = &[];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip() {
        for s in 0..SLOTS {
            if let Some((isa, code)) = slot_reason(s) {
                assert_eq!(slot(isa as u32, code), s, "slot {s} isa {isa:?} code {code:#x}");
            }
        }
        // VMX flags (bit 31: failed VM entry) do not change the slot.
        assert_eq!(slot(1, 0x8000_0021), 33);
        assert_eq!(slot(2, 0x72), SLOT_SVM_LOW_BASE + 0x72);
        assert_eq!(slot(2, 0x400), SLOT_SVM_HIGH_BASE);
        assert_eq!(slot(2, 0x500), SLOT_SVM_OTHER);
        assert_eq!(slot(1, 200), SLOT_VMX_OTHER);
    }
}
