//! The guest's side of the CPUID mirror: inside a VM, reads the exit
//! statistics of its own hypervisor from the CPUID leaves of a KVM
//! carrying `kernel-patch/` (ABI: `exitprof_common::guest_abi`), through
//! a [`CpuidSource`] so that tests can answer for the CPU.
//!
//! It reads the discovery leaf first and refuses, in one line, on bare
//! metal, on a hypervisor without the patch and while no exitprof is
//! registered on the host: it never shows zeros that are not data.
use exitprof_common::{
    Isa,
    guest_abi::{
        ABI_VERSION, Discovery, EDX_INACTIVE, EDX_UNDEFINED, LEAF_DISCOVERY, LEAF_REASON_CYCLES,
        LEAF_REASON_EXITS, LEAF_TOTAL_CYCLES, LEAF_TOTAL_EXITS, ReasonClass, SIGNATURE, classify,
        join,
    },
    reasons,
};
use serde::Serialize;

/// Executes CPUID.
pub trait CpuidSource {
    /// eax, ebx, ecx, edx of CPUID with `leaf` in eax and `subleaf` in ecx.
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4];
}

/// The CPU's own CPUID instruction.
pub struct Native;

impl CpuidSource for Native {
    #[cfg(target_arch = "x86_64")]
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = std::arch::x86_64::__cpuid_count(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn cpuid(&mut self, _leaf: u32, _subleaf: u32) -> [u32; 4] {
        [0; 4]
    }
}

/// Why there is no table.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuestError {
    /// CPUID.1:ECX bit 31 is clear.
    #[error(
        "not running in a virtual machine (CPUID.1:ECX.hypervisor is clear): exitprof guest reads the exit statistics of the hypervisor it runs under"
    )]
    NotVirtual,
    /// No signature in the discovery leaf.
    #[error(
        "the hypervisor ({vendor}) has no exitprof patch: CPUID {LEAF_DISCOVERY:#X} returned eax={eax:#010x}, not the \"EXPF\" signature (see kernel-patch/)"
    )]
    Unpatched {
        /// Vendor string of leaf 0x40000000.
        vendor: String,
        /// What the discovery leaf returned in eax.
        eax: u32,
    },
    /// A newer ABI than this exitprof knows.
    #[error(
        "the hypervisor speaks exitprof guest ABI {0}; this exitprof knows version {ABI_VERSION}"
    )]
    Version(u32),
    /// An isa this exitprof has no table for.
    #[error("the hypervisor reports isa {0}, which this exitprof has no exit-reason table for")]
    Isa(u32),
    /// Patched, but nothing registered.
    #[error(
        "the hypervisor has the exitprof patch, but no exitprof is running on the host: start `sudo exitprof stat` or `sudo exitprof top` there"
    )]
    Inactive,
}

/// One reason's statistics as the guest sees them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuestRow {
    /// Raw exit code.
    pub reason: u32,
    /// Name from exitprof-common's table.
    pub name: &'static str,
    /// Exits.
    pub exits: u64,
    /// TSC cycles (at this guest's TSC frequency) spent in these exits.
    pub cycles: u64,
}

/// Everything `exitprof guest` read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuestReport {
    /// "vmx" or "svm".
    pub isa: &'static str,
    /// ABI version of the patch.
    pub abi_version: u32,
    /// Whose exits these are: "vm" (this VM's own, the default) or
    /// "host" (every VM's, when the host's operator asked for it).
    pub scope: &'static str,
    /// This guest's TSC frequency, which the cycles are counted in.
    pub tsc_khz: u32,
    /// Total exits.
    pub total_exits: u64,
    /// Total TSC cycles in exits.
    pub total_cycles: u64,
    /// Reasons exitprof's table defines that the host's kernel does not
    /// count (its own uapi lists name them not).
    pub not_counted_by_host: Vec<u32>,
    /// CPUID queries this report took (each is a CPUID exit).
    pub queries: u32,
    /// Per reason, most exits first.
    pub reasons: Vec<GuestRow>,
}

/// Counts the CPUIDs it executes.
struct Counting<'a, S> {
    source: &'a mut S,
    queries: u32,
}

impl<S: CpuidSource> Counting<'_, S> {
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        self.queries += 1;
        self.source.cpuid(leaf, subleaf)
    }
}

/// Reads the statistics through `source`. `all` keeps reasons without
/// exits.
///
/// # Errors
/// See [`GuestError`].
pub fn query(source: &mut impl CpuidSource, all: bool) -> Result<GuestReport, GuestError> {
    const HYPERVISOR_BIT: u32 = 1 << 31;
    let mut cpu = Counting { source, queries: 0 };
    if cpu.cpuid(1, 0)[2] & HYPERVISOR_BIT == 0 {
        return Err(GuestError::NotVirtual);
    }
    let [eax, ebx, ecx, _] = cpu.cpuid(LEAF_DISCOVERY, 0);
    if eax != SIGNATURE {
        let v = cpu.cpuid(0x4000_0000, 0);
        let vendor: Vec<u8> = [v[1], v[2], v[3]]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .filter(u8::is_ascii_graphic)
            .collect();
        let vendor = String::from_utf8_lossy(&vendor).into_owned();
        return Err(GuestError::Unpatched {
            vendor: if vendor.is_empty() {
                "no vendor signature".to_owned()
            } else {
                vendor
            },
            eax,
        });
    }
    let discovery = Discovery::from_ebx(ebx);
    if discovery.version != ABI_VERSION {
        return Err(GuestError::Version(discovery.version));
    }
    let isa = Isa::from_raw(discovery.isa).ok_or(GuestError::Isa(discovery.isa))?;
    if !discovery.active {
        return Err(GuestError::Inactive);
    }
    // Reads one statistics leaf; stopping exitprof midway shows as edx
    // (`None`: the host does not count this reason).
    let stats = |cpu: &mut Counting<'_, _>, leaf, reason| match cpu.cpuid(leaf, reason) {
        [.., EDX_INACTIVE] => Err(GuestError::Inactive),
        [.., EDX_UNDEFINED] => Ok(None),
        regs => Ok(Some(regs)),
    };
    let mut rows = Vec::new();
    let mut not_counted_by_host = Vec::new();
    for r in reasons::table(isa).iter().filter(|r| r.defined) {
        // A reason KVM does not handle reads as zeros by the ABI: no
        // query (each one is a CPUID exit) for it.
        let exits = if classify(isa, r.code) == ReasonClass::Unhandled {
            0
        } else if let Some([low, high, ..]) = stats(&mut cpu, LEAF_REASON_EXITS, r.code)? {
            join(high, low)
        } else {
            not_counted_by_host.push(r.code);
            continue;
        };
        if exits == 0 {
            if all {
                rows.push(GuestRow {
                    reason: r.code,
                    name: r.name,
                    exits,
                    cycles: 0,
                });
            }
            continue;
        }
        let [_, high, low, _] = stats(&mut cpu, LEAF_REASON_CYCLES, r.code)?.unwrap_or_default();
        rows.push(GuestRow {
            reason: r.code,
            name: r.name,
            exits,
            cycles: join(high, low),
        });
    }
    let [low, high, ..] = stats(&mut cpu, LEAF_TOTAL_EXITS, 0)?.unwrap_or_default();
    let total_exits = join(high, low);
    let [_, high, low, _] = stats(&mut cpu, LEAF_TOTAL_CYCLES, 0)?.unwrap_or_default();
    rows.sort_by(|a, b| b.exits.cmp(&a.exits).then(a.reason.cmp(&b.reason)));
    Ok(GuestReport {
        isa: isa.name(),
        abi_version: discovery.version,
        scope: if discovery.host_scope { "host" } else { "vm" },
        tsc_khz: ecx,
        total_exits,
        total_cycles: join(high, low),
        not_counted_by_host,
        queries: cpu.queries,
        reasons: rows,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use exitprof_common::guest_abi::{EDX_INACTIVE, FLAG_ACTIVE, FLAG_SCOPE_HOST};

    use super::*;
    use crate::present::guest::render;

    /// Answers from a table; anything not in it returns zeros.
    #[derive(Default)]
    struct Fake {
        answers: HashMap<(u32, u32), [u32; 4]>,
        asked: Vec<(u32, u32)>,
    }

    impl Fake {
        fn with(mut self, leaf: u32, subleaf: u32, regs: [u32; 4]) -> Self {
            self.answers.insert((leaf, subleaf), regs);
            self
        }

        /// A patched SVM hypervisor, active or not.
        fn svm(active: bool) -> Self {
            let ebx = ABI_VERSION | 2 << 8 | if active { FLAG_ACTIVE } else { 0 };
            Self::default().with(1, 0, [0, 0, 1 << 31, 0]).with(
                0x4fff_fffb,
                0,
                [0x4650_5845, ebx, 2_000_000, 0],
            )
        }
    }

    impl CpuidSource for Fake {
        fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
            self.asked.push((leaf, subleaf));
            self.answers
                .get(&(leaf, subleaf))
                .copied()
                .unwrap_or([0; 4])
        }
    }

    #[test]
    fn bare_metal_is_refused() {
        let mut cpu = Fake::default().with(1, 0, [0, 0, 0x7ffa_3203, 0]);
        assert_eq!(query(&mut cpu, false), Err(GuestError::NotVirtual));
    }

    #[test]
    fn an_unpatched_kvm_is_named_and_refused_in_one_line() {
        // KVM without the patch answers the out-of-range leaf like its
        // highest hypervisor leaf, or with zeros.
        let mut cpu = Fake::default()
            .with(1, 0, [0, 0, 1 << 31, 0])
            .with(
                0x4000_0000,
                0,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            )
            .with(0x4fff_fffb, 0, [0x0100_0000, 0, 0, 0]);
        let err = query(&mut cpu, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the hypervisor (KVMKVMKVM) has no exitprof patch: CPUID 0x4FFFFFFB returned eax=0x01000000, not the \"EXPF\" signature (see kernel-patch/)"
        );
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn patched_but_inactive_is_refused() {
        let mut cpu = Fake::svm(false);
        assert_eq!(query(&mut cpu, false), Err(GuestError::Inactive));
        // Nothing but the two identification leaves was asked.
        assert_eq!(cpu.asked, [(1, 0), (0x4fff_fffb, 0)]);
    }

    #[test]
    fn exitprof_stopping_midway_is_inactive_not_zero() {
        let mut cpu = Fake::svm(true).with(0x4fff_fffd, 0x0, [0, 0, 0, EDX_INACTIVE]);
        assert_eq!(query(&mut cpu, false), Err(GuestError::Inactive));
    }

    #[test]
    fn active_svm_decodes_registers_into_sorted_rows() {
        let mut cpu = Fake::svm(true)
            .with(0x4fff_fffd, 0x72, [300, 0, 0, 0])
            .with(0x4fff_fffc, 0x72, [0, 0x1, 0x0000_0010, 0])
            // More than 32 bits of io exits: eax low, ebx high.
            .with(0x4fff_fffd, 0x7b, [500, 2, 0, 0])
            .with(0x4fff_fffc, 0x7b, [0, 0, 1_000_000, 0])
            // A reason the host's kernel does not count.
            .with(0x4fff_fffd, 0x60, [0, 0, 0, EDX_UNDEFINED])
            .with(0x4fff_ffff, 0, [812, 2, 0, 0])
            .with(0x4fff_fffe, 0, [0, 0x1, 0x0010_0000, 0]);
        let report = query(&mut cpu, false).unwrap();
        assert_eq!(report.isa, "svm");
        assert_eq!(report.scope, "vm");
        assert_eq!(report.tsc_khz, 2_000_000);
        assert_eq!(report.total_exits, 0x2_0000_032c);
        assert_eq!(report.total_cycles, 0x1_0010_0000);
        assert_eq!(report.not_counted_by_host, [0x60]);
        let rows: Vec<(u32, &str, u64, u64)> = report
            .reasons
            .iter()
            .map(|r| (r.reason, r.name, r.exits, r.cycles))
            .collect();
        assert_eq!(
            rows,
            [
                (0x7b, "io", 0x2_0000_01f4, 1_000_000),
                (0x72, "cpuid", 300, 0x1_0000_0010)
            ]
        );
        // Per SVM reason KVM handles one exits query (none for the
        // defined but unhandled ones, which read as zeros by the ABI), per
        // row one cycles query, plus leaf 1, discovery and the two totals.
        let counted = u32::try_from(
            reasons::table(Isa::Svm)
                .iter()
                .filter(|r| matches!(classify(Isa::Svm, r.code), ReasonClass::Counted(_)))
                .count(),
        )
        .unwrap();
        assert_eq!(counted, 79);
        assert_eq!(report.queries, counted + 2 + 4);
        assert!(
            !cpu.asked.contains(&(0x4fff_fffd, 0x001)),
            "read_cr1 is unhandled"
        );
        let text = render(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "exitprof guest: hypervisor isa svm, exitprof ABI 2, exits of this VM's own, cycles at this guest's TSC (2000000 kHz)"
        );
        assert_eq!(
            lines[1],
            "total: 8589935404 exits, 4296015872 cycles in exits"
        );
        assert_eq!(
            lines[3],
            "    REASON  NAME                          EXITS   EXITS%         CYCLES  CYCLES%    AVG CYC"
        );
        assert_eq!(
            lines[4],
            "      0x7b  io                       8589935092  100.00%        1000000    0.02%          0"
        );
        assert_eq!(
            lines[5],
            "      0x72  cpuid                           300    0.00%     4294967312   99.98%   14316557"
        );
        assert_eq!(
            lines.last().unwrap(),
            &"note: the host's kernel does not count 1 reason(s) exitprof knows: 0x60"
        );
    }

    #[test]
    fn host_scope_is_said() {
        let mut cpu = Fake::svm(true);
        let ebx = ABI_VERSION | 2 << 8 | FLAG_ACTIVE | FLAG_SCOPE_HOST;
        cpu.answers
            .insert((0x4fff_fffb, 0), [0x4650_5845, ebx, 2_000_000, 0]);
        let report = query(&mut cpu, false).unwrap();
        assert_eq!(report.scope, "host");
        assert!(render(&report).starts_with(
            "exitprof guest: hypervisor isa svm, exitprof ABI 2, exits of every VM on the host (host-wide scope)"
        ));
    }

    #[test]
    fn an_older_abi_is_refused() {
        let mut cpu = Fake::svm(true);
        cpu.answers.insert(
            (0x4fff_fffb, 0),
            [0x4650_5845, 1 | 2 << 8 | FLAG_ACTIVE, 0, 0],
        );
        assert_eq!(
            query(&mut cpu, false).unwrap_err().to_string(),
            "the hypervisor speaks exitprof guest ABI 1; this exitprof knows version 2"
        );
    }

    #[test]
    fn all_keeps_zero_rows() {
        let mut cpu = Fake::svm(true);
        let report = query(&mut cpu, true).unwrap();
        let defined = reasons::table(Isa::Svm)
            .iter()
            .filter(|r| r.defined)
            .count();
        assert_eq!(report.reasons.len(), defined);
        assert!(report.reasons.iter().all(|r| r.exits == 0));
    }
}
