//! The built-in workload VM (`exitprof vm`): a guest whose exits are known
//! in advance. It performs exactly the requested numbers of CPUID, port
//! I/O, MMIO, MSR, hypercall and HLT exits, checks that every exit that
//! must reach user space did, and reports what it did.
//!
//! It is the default workload of the demo and of every test that needs
//! known exits, on this host's `/dev/kvm` and inside the nested sandbox.
mod error;
mod guest;
mod vmm;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{host::backend, model::Backend, session::signals};
pub use error::WorkloadError;
pub use guest::{DONE_PORT, Hypercall, MAX_QUERIES, Params, Query};
pub use vmm::RAM_BYTES;

/// What the workload did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The VMM's process id (the one `exitprof stat --pid` would filter).
    pub pid: u32,
    /// KVM backend.
    pub backend: Backend,
    /// Guest mode.
    pub mode: &'static str,
    /// vCPUs, each running every round.
    pub vcpus: u32,
    /// Rounds completed (by each vCPU).
    pub rounds: u64,
    /// What each round did.
    pub requested: Requested,
    /// Exits that reached user space, by `KVM_EXIT_*` name, over all rounds
    /// and vCPUs.
    pub userspace_exits: BTreeMap<&'static str, u64>,
    /// Every query of every round, in the order the guest ran them (vCPU
    /// 0's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub queries: Vec<QueryResult>,
    /// Wall time of all rounds.
    pub duration_ns: u64,
}

/// What one query returned in the guest.
#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
    /// "cpuid" or "hypercall".
    pub kind: &'static str,
    /// eax in (leaf or hypercall number).
    pub eax_in: u32,
    /// ecx in (subleaf; 0 for hypercalls).
    pub ecx_in: u32,
    /// Result registers.
    pub eax: u32,
    /// Result registers.
    pub ebx: u32,
    /// Result registers.
    pub ecx: u32,
    /// Result registers.
    pub edx: u32,
}

impl QueryResult {
    fn new(query: Query, regs: &[u32]) -> Self {
        let (kind, eax, ecx) = match query {
            Query::Cpuid { leaf, subleaf } => ("cpuid", leaf, subleaf),
            Query::Hypercall { nr } => ("hypercall", nr, 0),
        };
        Self {
            kind,
            eax_in: eax,
            ecx_in: ecx,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
        }
    }
}

/// What to run: a round's request, the queries after it, how many rounds.
#[derive(Debug, Clone)]
pub struct Spec {
    /// What each round does.
    pub per_round: Requested,
    /// Queries after each round's work, in order.
    pub queries: Vec<Query>,
    /// Rounds to run; 0 runs until SIGINT or SIGTERM.
    pub rounds: u64,
    /// Pause between rounds, in milliseconds.
    pub pause_ms: u64,
    /// vCPUs, each running the same program on its own thread.
    pub vcpus: u32,
}

/// The per-round request, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Requested {
    /// CPUIDs.
    pub cpuid: u32,
    /// Their leaf.
    pub cpuid_leaf: u32,
    /// Their subleaf.
    pub cpuid_subleaf: u32,
    /// `out`/`in` pairs.
    pub pio: u32,
    /// Their port.
    pub pio_port: u16,
    /// MMIO write/read pairs.
    pub mmio: u32,
    /// Their address.
    pub mmio_gpa: u32,
    /// rdmsr/wrmsr pairs.
    pub msr: u32,
    /// Their MSR.
    pub msr_index: u32,
    /// Hypercalls.
    pub hypercall: u32,
    /// Their number.
    pub hypercall_nr: u32,
    /// HLTs.
    pub hlt: u32,
    /// Paging rounds (CR3 write, INVLPG, 64 page touches).
    pub paging: u32,
}

/// Runs the workload `spec` describes.
///
/// # Errors
/// See [`WorkloadError`].
///
/// # Panics
/// When a vCPU thread panics (a bug: they return errors).
pub fn run(spec: &Spec) -> Result<Report, WorkloadError> {
    let args = &spec.per_round;
    let backend = backend::detect();
    if spec.queries.len() > MAX_QUERIES {
        return Err(WorkloadError::TooManyQueries(spec.queries.len()));
    }
    let hypercall_queries = spec
        .queries
        .iter()
        .any(|q| matches!(q, Query::Hypercall { .. }));
    if backend == Backend::Pvm && (args.hypercall > 0 || hypercall_queries) {
        // Measured: under PVM the guest's vmmcall never completes (the
        // vCPU spins in KVM_RUN), so refuse instead of hanging.
        return Err(WorkloadError::Unsupported(
            "--hypercall and --query hypercall:NR are not supported on the PVM backend: its vmmcall does not complete there",
        ));
    }
    if backend == Backend::Pvm && args.paging > 0 {
        // Measured: PVM shuts the guest down at its first instruction
        // with 32-bit paging on.
        return Err(WorkloadError::Unsupported(
            "--paging is not supported on the PVM backend: it shuts a 32-bit paging guest down",
        ));
    }
    let params = Params {
        cpuid: (args.cpuid, args.cpuid_leaf, args.cpuid_subleaf),
        pio: (args.pio, u32::from(args.pio_port)),
        mmio: (args.mmio, args.mmio_gpa),
        msr: (args.msr, args.msr_index),
        hypercall: (args.hypercall, args.hypercall_nr),
        hlt: args.hlt,
        paging: args.paging,
        queries: u32::try_from(spec.queries.len())
            .map_err(|_| WorkloadError::TooManyQueries(spec.queries.len()))?,
    };
    let hypercall = if backend == Backend::Vmx {
        Hypercall::Vmcall
    } else {
        Hypercall::Vmmcall
    };
    let mut machine = vmm::Machine::new(
        params,
        &spec.queries,
        hypercall,
        args.mmio_gpa,
        spec.vcpus.max(1),
    )?;
    let started = Instant::now();
    // vCPU 0 runs on this thread, the others on threads of their own: a
    // one-vCPU VM is then one thread, whose id is the process's, as ftrace
    // and perf show it (the sandbox's ground truth is keyed by it).
    let runs: Vec<Result<VcpuRun, WorkloadError>> = std::thread::scope(|scope| {
        let (first, others) = machine
            .vcpus
            .split_first_mut()
            .expect("a machine has at least one vCPU");
        let threads: Vec<_> = others
            .iter_mut()
            .map(|vcpu| scope.spawn(move || run_vcpu(vcpu, spec)))
            .collect();
        let mut runs = vec![run_vcpu(first, spec)];
        runs.extend(
            threads
                .into_iter()
                .map(|t| t.join().expect("a vCPU thread panicked")),
        );
        runs
    });
    let duration_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let mut exits = BTreeMap::new();
    let mut rounds = None;
    for run in runs {
        let run = run?;
        for (name, n) in run.exits {
            *exits.entry(name).or_default() += n;
        }
        rounds.get_or_insert(run.rounds);
    }
    let rounds = rounds.unwrap_or(0);
    let reported = machine
        .vcpus
        .first_mut()
        .map(|v| std::mem::take(&mut v.reported))
        .unwrap_or_default();
    Ok(Report {
        pid: std::process::id(),
        vcpus: spec.vcpus.max(1),
        backend,
        mode: if args.paging > 0 {
            "protected32-paging"
        } else {
            "protected32"
        },
        rounds,
        requested: args.clone(),
        userspace_exits: exits,
        queries: reported
            .chunks_exact(4)
            .zip(spec.queries.iter().cycle())
            .map(|(regs, query)| QueryResult::new(*query, regs))
            .collect(),
        duration_ns,
    })
}

/// What one vCPU did.
struct VcpuRun {
    rounds: u64,
    exits: BTreeMap<&'static str, u64>,
}

/// Runs `spec`'s rounds on one vCPU and checks that exactly the exits
/// each round must bring to user space did.
fn run_vcpu(vcpu: &mut vmm::Vcpu, spec: &Spec) -> Result<VcpuRun, WorkloadError> {
    let args = &spec.per_round;
    let mut exits = BTreeMap::new();
    let mut rounds = 0;
    while spec.rounds == 0 || rounds < spec.rounds {
        if signals::received().is_some() || !vcpu.run_once(&mut exits)? {
            break;
        }
        rounds += 1;
        if spec.pause_ms > 0 && (spec.rounds == 0 || rounds < spec.rounds) {
            std::thread::sleep(Duration::from_millis(spec.pause_ms));
        }
    }
    let expected = [
        (
            "IO",
            (2 * u64::from(args.pio) + 1 + 4 * spec.queries.len() as u64) * rounds,
        ),
        ("MMIO", 2 * u64::from(args.mmio) * rounds),
        ("HLT", u64::from(args.hlt) * rounds),
    ];
    // An interrupted round may have done part of its work: check only
    // complete runs.
    if signals::received().is_none() {
        for (reason, expected) in expected {
            let seen = exits.get(reason).copied().unwrap_or(0);
            if seen != expected {
                return Err(WorkloadError::Mismatch {
                    reason,
                    expected,
                    seen,
                    rounds,
                });
            }
        }
    }
    Ok(VcpuRun { rounds, exits })
}
