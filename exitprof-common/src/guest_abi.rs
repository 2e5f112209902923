//! The guest CPUID ABI of the KVM patch (`kernel-patch/`, version 2): a
//! guest reads the exit statistics of its own VM with CPUID leaves in the
//! hypervisor range and identifies the patch with a hypercall.
//!
//! | leaf (eax) | ecx | returns |
//! | --- | --- | --- |
//! | [`LEAF_TOTAL_EXITS`] | — | eax = exits, low 32 bits; ebx = high 32 bits |
//! | [`LEAF_TOTAL_CYCLES`] | — | ebx:ecx = TSC cycles in exits (high:low) |
//! | [`LEAF_REASON_EXITS`] | reason | eax:ebx = exits with that reason (low:high) |
//! | [`LEAF_REASON_CYCLES`] | reason | ebx:ecx = TSC cycles for that reason |
//! | [`LEAF_DISCOVERY`] | — | eax = [`SIGNATURE`], ebx = [`Discovery`], ecx = the guest's TSC kHz, edx = 0 |
//!
//! Reasons are the raw exit codes of the host's isa (VMX basic exit
//! reason, SVM exit code). A reason the host kernel's uapi
//! `VMX_EXIT_REASONS`/`SVM_EXIT_REASONS` do not name gives edx =
//! [`EDX_UNDEFINED`] (eax = ebx = ecx = 0); one its vendor module has no
//! exit handler for gives all four 0. With no map registered, the four
//! statistics leaves give eax = ebx = ecx = 0 and edx = [`EDX_INACTIVE`];
//! live data always has edx = 0. Cycles are `total_ns` at the guest's TSC
//! frequency; sums and cycles saturate at `u64::MAX`.
//!
//! **Scope.** The kernel reads exitprof's mirror map ([`MirrorKey`] →
//! [`MirrorValue`], a `BPF_MAP_TYPE_PERCPU_HASH`, separate from
//! `EXIT_STATS`) under the tgid of the VMM process whose vCPU executes
//! CPUID ([`Scope::Vm`], the default), or under [`TGID_HOST`] when exitprof
//! registered host-wide ([`Scope::Host`]), which [`FLAG_SCOPE_HOST`] tells
//! the guest. A VMM process running several VMs gives each the sum of all.
//!
//! **Registration.** exitprof writes [`registration`]'s text to
//! `<debugfs>/kvm/`[`DEBUGFS_FILE`] and keeps the file open; closing it
//! unregisters. Reading the file gives [`Status`]'s text.
//!
//! The constants are checked against the committed patch series by a test
//! in `xtask` (`kernel.rs`).

use core::fmt;

use crate::reasons::{self, Isa};

/// Total exits: eax = low 32 bits, ebx = high 32 bits.
pub const LEAF_TOTAL_EXITS: u32 = 0x4FFF_FFFF;
/// Total TSC cycles spent in exits: ebx = high 32, ecx = low 32 bits.
pub const LEAF_TOTAL_CYCLES: u32 = 0x4FFF_FFFE;
/// Exits with the reason in ecx: eax = low 32, ebx = high 32 bits.
pub const LEAF_REASON_EXITS: u32 = 0x4FFF_FFFD;
/// TSC cycles of the reason in ecx: ebx = high 32, ecx = low 32 bits.
pub const LEAF_REASON_CYCLES: u32 = 0x4FFF_FFFC;
/// Discovery: signature, ABI version, isa, registration, scope, TSC kHz.
pub const LEAF_DISCOVERY: u32 = 0x4FFF_FFFB;
/// The lowest leaf the patch answers; every leaf below is KVM's as before.
pub const LEAF_FIRST: u32 = LEAF_DISCOVERY;

/// eax of [`LEAF_DISCOVERY`] on a patched KVM: "EXPF" in little-endian
/// byte order.
pub const SIGNATURE: u32 = u32::from_le_bytes(*b"EXPF");
/// The ABI version this module describes. Version 1 had no high count
/// bits, no scope and the host's TSC frequency.
pub const ABI_VERSION: u32 = 2;
/// ebx bit of [`LEAF_DISCOVERY`]: an exitprof has registered its map.
pub const FLAG_ACTIVE: u32 = 1 << 16;
/// ebx bit of [`LEAF_DISCOVERY`]: the registration is host-wide
/// ([`Scope::Host`]); clear for per-VM scope.
pub const FLAG_SCOPE_HOST: u32 = 1 << 17;

/// edx of the statistics leaves for a reason the host kernel does not
/// name.
pub const EDX_UNDEFINED: u32 = 0xFFFF_FFFF;
/// edx of the statistics leaves while no exitprof is registered.
pub const EDX_INACTIVE: u32 = 0xFFFF_FFFE;

/// [`MirrorKey::reason`] of the running totals over all reasons of a
/// tgid. No isa defines this exit code (VMX basic reasons are 16 bits,
/// SVM's error code is `0xFFFF_FFFF`), so the kernel reads it only for
/// [`LEAF_TOTAL_EXITS`] and [`LEAF_TOTAL_CYCLES`] and a guest asking
/// [`LEAF_REASON_EXITS`] for it gets [`EDX_UNDEFINED`].
pub const REASON_TOTAL: u32 = 0xFFFF_FFFE;
/// [`MirrorKey::tgid`] of the host-wide entries ([`Scope::Host`]).
pub const TGID_HOST: u32 = 0;

/// The hypercall (rax) that identifies the patch.
pub const HYPERCALL_NR: u32 = 0x283;
/// What [`HYPERCALL_NR`] returns in rax: "CMPE283" in little-endian byte
/// order. A caller outside 64-bit mode gets the low half in eax and the
/// high half in edx.
pub const HYPERCALL_MAGIC: u64 = 0x0033_3832_4550_4D43;

/// The debugfs file (under KVM's debugfs directory) that exitprof writes
/// [`registration`]'s text to and keeps open.
pub const DEBUGFS_FILE: &str = "exitprof";
/// The word after the descriptor that asks for [`Scope::Host`].
pub const DEBUGFS_SCOPE_HOST: &str = "host";

/// Key of the mirror map, a `BPF_MAP_TYPE_PERCPU_HASH` that exitprof's
/// eBPF programs fill for the kernel: 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MirrorKey {
    /// The VMM process: the tgid, in the initial pid namespace, of the
    /// vCPU thread that exited (`bpf_get_current_pid_tgid() >> 32`); or
    /// [`TGID_HOST`] for the host-wide entries.
    pub tgid: u32,
    /// The raw exit reason (VMX: basic exit reason, bits 15:0; SVM: the
    /// exit code as is), or [`REASON_TOTAL`].
    pub reason: u32,
}

/// Value of the mirror map, per CPU: 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MirrorValue {
    /// Exits, added at `kvm_exit` (so a guest's CPUID exit is counted
    /// when it reads the leaf).
    pub count: u64,
    /// Time from `kvm_exit` to `kvm_entry`, added at `kvm_entry`.
    pub total_ns: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `repr(C)` integers without padding (sizes checked in the
    // tests).
    unsafe impl aya::Pod for super::MirrorKey {}
    unsafe impl aya::Pod for super::MirrorValue {}
}

/// Whose exits a guest reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Its own VMM process's (the default).
    Vm,
    /// The whole host's, under [`TGID_HOST`]; only when asked for.
    Host,
}

/// What exitprof writes to the debugfs file: `"<fd>"` for [`Scope::Vm`],
/// `"<fd> host"` for [`Scope::Host`]. The kernel answers `EINVAL` for
/// anything else or a map of the wrong type or sizes, `EBADF` for a
/// descriptor that is not open, `EBUSY` while another file is registered.
#[must_use]
pub fn registration(map_fd: i32, scope: Scope) -> impl fmt::Display {
    struct Text(i32, Scope);
    impl fmt::Display for Text {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.1 {
                Scope::Vm => write!(f, "{}", self.0),
                Scope::Host => write!(f, "{} {DEBUGFS_SCOPE_HOST}", self.0),
            }
        }
    }
    Text(map_fd, scope)
}

/// What reading the debugfs file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// `inactive`
    Inactive,
    /// `registered map id <id> scope vm|host`
    Registered {
        /// The registered map's id.
        map_id: u32,
        /// Its scope.
        scope: Scope,
    },
}

impl Status {
    /// Parses the file's text (a trailing newline is allowed).
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim_end();
        if text == "inactive" {
            return Some(Self::Inactive);
        }
        let rest = text.strip_prefix("registered map id ")?;
        let (id, scope) = rest.split_once(" scope ")?;
        let scope = match scope {
            "vm" => Scope::Vm,
            DEBUGFS_SCOPE_HOST => Scope::Host,
            _ => return None,
        };
        Some(Self::Registered {
            map_id: id.parse().ok()?,
            scope,
        })
    }
}

/// ebx of [`LEAF_DISCOVERY`], decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Discovery {
    /// ABI version, bits 7:0.
    pub version: u32,
    /// The host's isa, bits 15:8 ([`Isa`] raw value).
    pub isa: u32,
    /// [`FLAG_ACTIVE`].
    pub active: bool,
    /// [`FLAG_SCOPE_HOST`]: the guest reads host-wide totals.
    pub host_scope: bool,
}

impl Discovery {
    /// ebx as the patch builds it.
    #[must_use]
    pub const fn to_ebx(self) -> u32 {
        (self.version & 0xff)
            | (self.isa & 0xff) << 8
            | if self.active { FLAG_ACTIVE } else { 0 }
            | if self.host_scope { FLAG_SCOPE_HOST } else { 0 }
    }

    /// ebx decoded.
    #[must_use]
    pub const fn from_ebx(ebx: u32) -> Self {
        Self {
            version: ebx & 0xff,
            isa: (ebx >> 8) & 0xff,
            active: ebx & FLAG_ACTIVE != 0,
            host_scope: ebx & FLAG_SCOPE_HOST != 0,
        }
    }
}

/// How exitprof's own tables ([`crate::reasons`]) expect the patch to
/// treat a reason code of the statistics leaves.
///
/// The host kernel decides from its own lists, which may differ: a code
/// the SDM/APM defines but the host's uapi `VMX_EXIT_REASONS` /
/// `SVM_EXIT_REASONS` do not name (e.g. VMX `IO_SMI`, SVM `read_cr1`) is
/// [`EDX_UNDEFINED`] there, and "handled" is its vendor module's exit
/// handler table. `reasons.rs`'s tests pin the differences against the
/// uapi headers of Linux 6.1 and 6.12.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasonClass {
    /// Not defined by the SDM/APM: edx = [`EDX_UNDEFINED`].
    Undefined,
    /// Defined, but KVM has no handler: all four registers 0.
    Unhandled,
    /// Counted; the dense slot of `EXIT_STATS` (the mirror map itself is
    /// keyed by the raw code).
    Counted(u32),
}

/// The class of a raw reason code as exitprof's tables see it: exact
/// codes of the isa's table (no masking of VMX's high bits).
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
    extern crate std;
    use std::string::ToString as _;

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
            host_scope: false,
        };
        assert_eq!(d.to_ebx(), 0x0001_0202);
        assert_eq!(Discovery::from_ebx(0x0001_0202), d);
        let host = Discovery {
            host_scope: true,
            ..d
        };
        assert_eq!(host.to_ebx(), 0x0003_0202);
        assert_eq!(Discovery::from_ebx(0x0003_0202), host);
        assert!(!Discovery::from_ebx(0x0000_0102).active);
    }

    #[test]
    fn mirror_types_have_the_kernel_s_sizes() {
        assert_eq!(size_of::<MirrorKey>(), 8);
        assert_eq!(size_of::<MirrorValue>(), 16);
        assert_eq!(core::mem::offset_of!(MirrorKey, reason), 4);
        assert_eq!(core::mem::offset_of!(MirrorValue, total_ns), 8);
    }

    #[test]
    fn total_is_no_reason() {
        for isa in [Isa::Vmx, Isa::Svm] {
            assert_eq!(classify(isa, REASON_TOTAL), ReasonClass::Undefined);
        }
    }

    #[test]
    fn registration_and_status_texts() {
        assert_eq!(registration(7, Scope::Vm).to_string(), "7");
        assert_eq!(registration(7, Scope::Host).to_string(), "7 host");
        assert_eq!(Status::parse("inactive\n"), Some(Status::Inactive));
        assert_eq!(
            Status::parse("registered map id 42 scope vm\n"),
            Some(Status::Registered {
                map_id: 42,
                scope: Scope::Vm
            })
        );
        assert_eq!(
            Status::parse("registered map id 3 scope host"),
            Some(Status::Registered {
                map_id: 3,
                scope: Scope::Host
            })
        );
        assert_eq!(Status::parse("registered map id 3"), None);
        assert_eq!(Status::parse("registered map id x scope vm"), None);
    }

    #[test]
    fn classify_follows_the_tables() {
        assert_eq!(
            classify(Isa::Svm, 0x72),
            ReasonClass::Counted(reasons::slot(Isa::Svm as u32, 0x72))
        );
        assert_eq!(classify(Isa::Vmx, 10), ReasonClass::Counted(10));
        // RDTSC: defined by the SDM, KVM has no handler.
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
