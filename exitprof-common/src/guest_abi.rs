//! The guest CPUID ABI of the KVM patch (`kernel-patch/`): a guest reads
//! its hypervisor's exit statistics with CPUID leaves in the hypervisor
//! range and identifies the patch with a hypercall.
//!
//! | leaf (eax) | ecx | returns |
//! | --- | --- | --- |
//! | [`LEAF_TOTAL_EXITS`] | — | eax = total exits (low 32 bits) |
//! | [`LEAF_TOTAL_CYCLES`] | — | ebx:ecx = total TSC cycles in exits |
//! | [`LEAF_REASON_EXITS`] | reason | eax = exits with that reason |
//! | [`LEAF_REASON_CYCLES`] | reason | ebx:ecx = TSC cycles for that reason |
//! | [`LEAF_DISCOVERY`] | — | eax = [`SIGNATURE`], ebx = [`Discovery`], ecx = host TSC kHz |
//!
//! Reasons are the raw hardware codes of the host's isa. A reason the
//! SDM/APM does not define gives edx = [`EDX_UNDEFINED`] (eax = ebx = ecx
//! = 0); one KVM does not handle gives all four 0. With no exitprof
//! registered, the four statistics leaves give eax = ebx = ecx = 0 and
//! edx = [`EDX_INACTIVE`]; live data always has edx = 0.
//!
//! The C header of the patch is generated from this module and from
//! [`crate::reasons`] (`cargo xtask kernel-header`); a test checks that the
//! committed patch carries exactly the generated header.

use crate::reasons::{self, Isa};

/// Total exits, low 32 bits in eax.
pub const LEAF_TOTAL_EXITS: u32 = 0x4FFF_FFFF;
/// Total TSC cycles spent in exits: ebx = high 32, ecx = low 32 bits.
pub const LEAF_TOTAL_CYCLES: u32 = 0x4FFF_FFFE;
/// Exits with the reason in ecx, low 32 bits in eax.
pub const LEAF_REASON_EXITS: u32 = 0x4FFF_FFFD;
/// TSC cycles of the reason in ecx: ebx = high 32, ecx = low 32 bits.
pub const LEAF_REASON_CYCLES: u32 = 0x4FFF_FFFC;
/// Discovery: signature, ABI version, isa, registration, TSC frequency.
pub const LEAF_DISCOVERY: u32 = 0x4FFF_FFFB;
/// The lowest leaf the patch answers; every leaf below is KVM's as before.
pub const LEAF_FIRST: u32 = LEAF_DISCOVERY;

/// eax of [`LEAF_DISCOVERY`] on a patched KVM: "EXPF" in little-endian
/// byte order.
pub const SIGNATURE: u32 = u32::from_le_bytes(*b"EXPF");
/// The ABI version this module describes.
pub const ABI_VERSION: u32 = 1;
/// ebx bit of [`LEAF_DISCOVERY`]: an exitprof has registered its maps.
pub const FLAG_ACTIVE: u32 = 1 << 16;

/// edx of the statistics leaves for a reason the SDM/APM does not define.
pub const EDX_UNDEFINED: u32 = 0xFFFF_FFFF;
/// edx of the statistics leaves while no exitprof is registered.
pub const EDX_INACTIVE: u32 = 0xFFFF_FFFE;

/// The hypercall (rax) that identifies the patch.
pub const HYPERCALL_NR: u32 = 0x283;
/// What [`HYPERCALL_NR`] returns in rax: "CMPE283" in little-endian byte
/// order. A 32-bit caller gets the low half in eax and the high half in
/// edx.
pub const HYPERCALL_MAGIC: u64 = 0x0033_3832_4550_4D43;

/// The debugfs file (under KVM's debugfs directory) that exitprof writes
/// its `EXIT_STATS` map's file descriptor to, in decimal, and keeps open.
pub const DEBUGFS_FILE: &str = "exitprof";

/// ebx of [`LEAF_DISCOVERY`], decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Discovery {
    /// ABI version, bits 7:0.
    pub version: u32,
    /// The host's isa, bits 15:8 ([`Isa`] raw value).
    pub isa: u32,
    /// [`FLAG_ACTIVE`].
    pub active: bool,
}

impl Discovery {
    /// ebx as the patch builds it.
    #[must_use]
    pub const fn to_ebx(self) -> u32 {
        (self.version & 0xff) | (self.isa & 0xff) << 8 | if self.active { FLAG_ACTIVE } else { 0 }
    }

    /// ebx decoded.
    #[must_use]
    pub const fn from_ebx(ebx: u32) -> Self {
        Self {
            version: ebx & 0xff,
            isa: (ebx >> 8) & 0xff,
            active: ebx & FLAG_ACTIVE != 0,
        }
    }
}

/// How the patch treats a reason code of the statistics leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasonClass {
    /// Not defined by the SDM/APM: edx = [`EDX_UNDEFINED`].
    Undefined,
    /// Defined, but KVM has no handler: all four registers 0.
    Unhandled,
    /// Counted in this dense slot of `EXIT_STATS`.
    Counted(u32),
}

/// The class of a raw reason code as the ABI sees it: exact codes of the
/// isa's table (no masking of VMX's high bits).
#[must_use]
pub fn classify(isa: Isa, code: u32) -> ReasonClass {
    match reasons::table(isa).iter().find(|r| r.code == code) {
        Some(r) if r.defined && r.handled => ReasonClass::Counted(reasons::slot(isa as u32, code)),
        Some(r) if r.defined => ReasonClass::Unhandled,
        _ => ReasonClass::Undefined,
    }
}

/// Two 32-bit halves (high, low) as one value.
#[must_use]
pub const fn join(high: u32, low: u32) -> u64 {
    (high as u64) << 32 | low as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_and_magic_spell_their_names() {
        assert_eq!(SIGNATURE, 0x4650_5845);
        assert_eq!(&HYPERCALL_MAGIC.to_le_bytes(), b"CMPE283\0");
    }

    #[test]
    fn discovery_round_trips() {
        let d = Discovery {
            version: ABI_VERSION,
            isa: Isa::Svm as u32,
            active: true,
        };
        assert_eq!(d.to_ebx(), 0x0001_0201);
        assert_eq!(Discovery::from_ebx(0x0001_0201), d);
        assert!(!Discovery::from_ebx(0x0000_0101).active);
    }

    #[test]
    fn classify_follows_the_tables() {
        assert_eq!(
            classify(Isa::Svm, 0x72),
            ReasonClass::Counted(reasons::slot(Isa::Svm as u32, 0x72))
        );
        assert_eq!(classify(Isa::Vmx, 10), ReasonClass::Counted(10));
        // RDTSC: defined by the SDM, KVM 6.1 has no handler.
        assert_eq!(classify(Isa::Vmx, 16), ReasonClass::Unhandled);
        // 35 is reserved by the SDM; high bits are not masked.
        assert_eq!(classify(Isa::Vmx, 35), ReasonClass::Undefined);
        assert_eq!(classify(Isa::Vmx, 0x8000_000a), ReasonClass::Undefined);
    }

    #[test]
    fn join_halves() {
        assert_eq!(join(0x1, 0x2), 0x1_0000_0002);
    }
}
