//! What the `guest-cpuid-mirror` scenario asks of each vendor's KVM (its
//! exit codes) and its VMs' work, and the queries the VMs make.
use exitprof_common::{
    Isa,
    guest_abi::{
        HYPERCALL_NR, LEAF_DISCOVERY, LEAF_REASON_CYCLES, LEAF_REASON_EXITS, LEAF_TOTAL_CYCLES,
        LEAF_TOTAL_EXITS,
    },
};

use crate::{sandbox::Vendor, scenarios::common::expect};

/// What the scenario asks of a vendor's KVM, and how much its VMs do.
pub(super) struct Plan {
    pub(super) isa: Isa,
    /// The exit reasons of CPUID and port I/O.
    pub(super) cpuid: u32,
    pub(super) io: u32,
    /// A reason the kernel's uapi list names but the vendor module has no
    /// exit handler for: all four registers 0.
    pub(super) unhandled: u32,
    /// A reason the kernel's uapi list does not name: edx = 0xFFFFFFFF.
    pub(super) undefined: u32,
    /// The two VMs of the per-VM part (B runs inside A's run), and A's
    /// pause between rounds.
    pub(super) a: Vm,
    pub(super) b: Vm,
    pub(super) a_pause_ms: u64,
    /// CPUIDs of VM D, whose exits VM C sees under host scope, and of C.
    pub(super) d_cpuids: u64,
    pub(super) c_cpuids: u64,
}

/// [`Plan`] of `vendor`. SVM: `DE excp` (0x40, an exception intercept
/// `svm_exit_handlers` has no entry for) and `read_cr1` (0x01, not in
/// `SVM_EXIT_REASONS`). VMX: `RDTSC` (16: in `VMX_EXIT_REASONS`, but KVM
/// never intercepts it, so `kvm_vmx_exit_handlers` has no entry) and 35
/// (reserved by the SDM, not in `VMX_EXIT_REASONS`). On VMX the VMs make
/// a tenth of SVM's CPUIDs, since Bochs is the costly sandbox (the section
/// took 27.4 s, 26.3 s of Bochs's CPU, of a 117.4 s boot), and A pauses
/// 1.5 s between rounds so that B, started 0.5 s after A, runs inside A's
/// run (A took 3.07 s there, B 21 ms).
pub(super) fn plan(vendor: Vendor) -> Plan {
    let e = expect(vendor);
    let (cpuid, io) = (e.cpuid.0, e.io);
    match vendor {
        Vendor::Svm => Plan {
            isa: Isa::Svm,
            cpuid,
            io,
            unhandled: 0x40,
            undefined: 0x01,
            a: Vm {
                cpuids: 2000,
                rounds: 6,
            },
            b: Vm {
                cpuids: 500,
                rounds: 2,
            },
            a_pause_ms: 300,
            d_cpuids: 400,
            c_cpuids: 100,
        },
        Vendor::Vmx => Plan {
            isa: Isa::Vmx,
            cpuid,
            io,
            unhandled: 16,
            undefined: 35,
            a: Vm {
                cpuids: 200,
                rounds: 3,
            },
            b: Vm {
                cpuids: 50,
                rounds: 2,
            },
            a_pause_ms: 1500,
            d_cpuids: 40,
            c_cpuids: 10,
        },
    }
}

/// One `--query` of `exitprof vm`, named for the assertions.
pub(super) struct Query {
    pub(super) name: &'static str,
    pub(super) arg: String,
}

pub(super) fn cpuid(name: &'static str, leaf: u32, subleaf: u32) -> Query {
    Query {
        name,
        arg: format!("--query cpuid:{leaf:#x}:{subleaf:#x}"),
    }
}

pub(super) fn args(queries: &[Query]) -> String {
    queries
        .iter()
        .map(|q| q.arg.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A workload VM of `rounds` rounds of `cpuids` CPUIDs, each followed by
/// the discovery query and its own CPUID and I/O counts.
pub(super) struct Vm {
    pub(super) cpuids: u64,
    pub(super) rounds: u64,
}

impl Vm {
    pub(super) fn queries(p: &Plan) -> Vec<Query> {
        vec![
            cpuid("discovery", LEAF_DISCOVERY, 0),
            cpuid("cpuid", LEAF_REASON_EXITS, p.cpuid),
            cpuid("io", LEAF_REASON_EXITS, p.io),
        ]
    }

    pub(super) fn command(&self, p: &Plan, pause_ms: u64) -> String {
        format!(
            "exitprof vm --json --cpuid {} --rounds {} --pause-ms {pause_ms} {}",
            self.cpuids,
            self.rounds,
            args(&Self::queries(p))
        )
    }

    /// Its CPUID exits when the `cpuid` query of round `r` runs: the
    /// workload's, three queries per earlier round, and this round's
    /// discovery query and the query itself.
    pub(super) fn cpuid_at(&self, r: u64) -> u64 {
        r * self.cpuids + 3 * (r - 1) + 2
    }

    /// Its I/O exits when the `io` query of round `r` runs: four `out`s
    /// per query (the guest reports the registers) and one per round (the
    /// done port), so 13 per earlier round and this round's two queries.
    pub(super) const fn io_at(r: u64) -> u64 {
        13 * (r - 1) + 8
    }
}

/// The queries of VM C under host scope: everything a guest can ask.
pub(super) fn host_queries(p: &Plan) -> [Query; 9] {
    [
        cpuid("discovery", LEAF_DISCOVERY, 0),
        cpuid("cpuid", LEAF_REASON_EXITS, p.cpuid),
        cpuid("cpuid_cycles", LEAF_REASON_CYCLES, p.cpuid),
        cpuid("unhandled", LEAF_REASON_EXITS, p.unhandled),
        cpuid("undefined", LEAF_REASON_EXITS, p.undefined),
        cpuid("undefined_cycles", LEAF_REASON_CYCLES, p.undefined),
        cpuid("total", LEAF_TOTAL_EXITS, 0),
        cpuid("total_cycles", LEAF_TOTAL_CYCLES, 0),
        Query {
            name: "hypercall",
            arg: format!("--query hypercall:{HYPERCALL_NR:#x}"),
        },
    ]
}

/// The queries of a VM while no exitprof is registered.
pub(super) fn inactive_queries(p: &Plan) -> [Query; 5] {
    [
        cpuid("discovery", LEAF_DISCOVERY, 0),
        cpuid("cpuid", LEAF_REASON_EXITS, p.cpuid),
        cpuid("cpuid_cycles", LEAF_REASON_CYCLES, p.cpuid),
        cpuid("total", LEAF_TOTAL_EXITS, 0),
        cpuid("undefined", LEAF_REASON_EXITS, p.undefined),
    ]
}
