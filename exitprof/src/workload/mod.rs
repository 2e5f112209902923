//! The built-in workload VM (`exitprof vm`): a guest whose exits are known
//! in advance. It performs exactly the requested numbers of CPUID, port
//! I/O, MMIO, MSR, hypercall and HLT exits, checks that every exit that
//! must reach user space did, and reports what it did.
//!
//! It is the default workload of the demo and of every test that needs
//! known exits, on this host's `/dev/kvm` and inside the nested sandbox.
mod guest;
mod vmm;

use std::{
    collections::BTreeMap,
    process::ExitCode,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{backend::Backend, cli::parse_number};
pub use guest::{DONE_PORT, Hypercall, MAX_QUERIES, Params, Query};

/// Arguments of `exitprof vm`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
Each round runs the guest program once: N CPUIDs, N `out` + N `in` on the
port, N 4-byte MMIO writes + N reads, N rdmsr + N wrmsr, N hypercalls,
N HLTs, N paging rounds (CR3 write, INVLPG, 64 page touches; paging is
on only with --paging), then one `out` to port 0xf4 (the done signal, not counted with the
workload's port).

--query runs after them, in order, and reports the result registers: for
cpuid:LEAF[:SUBLEAF] the eax, ebx, ecx, edx of CPUID; for hypercall:NR those
after the vendor's hypercall instruction (eax = NR, ebx = edx = 0). Each
query adds one CPUID or hypercall exit and four `out`s to port 0xf0.

Examples:
  exitprof vm --cpuid 1234 --pio 300 --mmio 200 --json
  exitprof vm --query cpuid:0x4ffffffb --query cpuid:0x4ffffffd:0x72 --query hypercall:0x283
  exitprof vm --cpuid 100 --hlt 5 --rounds 0 --pause-ms 100   # until Ctrl-C")]
pub struct VmArgs {
    /// CPUID instructions per round.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub cpuid: u32,
    /// eax of the CPUIDs.
    #[arg(long, default_value = "0", value_parser = parse_u32, value_name = "LEAF")]
    pub cpuid_leaf: u32,
    /// ecx of the CPUIDs.
    #[arg(long, default_value = "0", value_parser = parse_u32, value_name = "SUBLEAF")]
    pub cpuid_subleaf: u32,
    /// Port-I/O pairs per round: N `out` and N `in`.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub pio: u32,
    /// The I/O port (not 0xf4, the done port).
    #[arg(long, default_value = "0xe9", value_parser = parse_port, value_name = "PORT")]
    pub pio_port: u16,
    /// MMIO pairs per round: N writes and N reads of 4 bytes.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub mmio: u32,
    /// The MMIO guest-physical address (outside guest RAM: >= 1 MiB).
    #[arg(long, default_value = "0xd0000000", value_parser = parse_mmio_gpa, value_name = "GPA")]
    pub mmio_gpa: u32,
    /// MSR pairs per round: N rdmsr and N wrmsr (writing back the value read).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub msr: u32,
    /// The MSR: IA32_UCODE_REV by default, which KVM traps and handles on
    /// every backend and which ignores guest writes.
    #[arg(long, default_value = "0x8b", value_parser = parse_u32, value_name = "INDEX")]
    pub msr_index: u32,
    /// Hypercalls per round (vmcall on Intel, vmmcall otherwise).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub hypercall: u32,
    /// The hypercall number (rax).
    #[arg(long, default_value = "0x283", value_parser = parse_u32, value_name = "NR")]
    pub hypercall_nr: u32,
    /// HLTs per round (each one a KVM_EXIT_HLT: there is no in-kernel irqchip).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub hlt: u32,
    /// Paging work per round: turns 32-bit paging on, then N times writes
    /// CR3, does an INVLPG and touches 64 pages (cheap under nested paging,
    /// exits under shadow paging).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub paging: u32,
    /// Rounds to run; 0 runs until Ctrl-C or SIGTERM.
    /// Query and report: cpuid:LEAF[:SUBLEAF] or hypercall:NR (repeatable).
    #[arg(long = "query", value_parser = parse_query, value_name = "QUERY")]
    pub queries: Vec<Query>,
    #[arg(long, default_value_t = 1, value_name = "R")]
    pub rounds: u64,
    /// Pause between rounds, in milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub pause_ms: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn parse_u32(text: &str) -> Result<u32, String> {
    u32::try_from(parse_number(text)?).map_err(|_| format!("{text} does not fit in 32 bits"))
}

fn parse_query(text: &str) -> Result<Query, String> {
    let mut parts = text.split(':');
    let kind = parts.next().unwrap_or_default();
    let numbers: Vec<u32> = parts.map(parse_u32).collect::<Result<_, _>>()?;
    match (kind, numbers.as_slice()) {
        ("cpuid", [leaf]) => Ok(Query::Cpuid {
            leaf: *leaf,
            subleaf: 0,
        }),
        ("cpuid", [leaf, subleaf]) => Ok(Query::Cpuid {
            leaf: *leaf,
            subleaf: *subleaf,
        }),
        ("hypercall", [nr]) => Ok(Query::Hypercall { nr: *nr }),
        _ => Err(format!(
            "{text:?}: expected cpuid:LEAF, cpuid:LEAF:SUBLEAF or hypercall:NR"
        )),
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    let port = u16::try_from(parse_number(text)?)
        .map_err(|_| format!("{text} is no I/O port (0..=0xffff)"))?;
    if port == DONE_PORT {
        return Err(format!(
            "{DONE_PORT:#x} is the workload's done port; pick another"
        ));
    }
    Ok(port)
}

fn parse_mmio_gpa(text: &str) -> Result<u32, String> {
    let gpa = parse_u32(text)?;
    if (gpa as usize) < vmm::RAM_BYTES {
        return Err(format!(
            "{gpa:#x} is guest RAM; MMIO needs an address at or above {:#x}",
            vmm::RAM_BYTES
        ));
    }
    if gpa > u32::MAX - 3 {
        return Err(format!("{gpa:#x}: a 4-byte access would wrap"));
    }
    Ok(gpa)
}

/// Errors of the workload VM.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// `/dev/kvm` cannot be opened.
    #[error("{}", open_kvm_message(.0))]
    OpenKvm(std::io::Error),
    /// Guest RAM could not be mapped.
    #[error("cannot map guest memory: {0}")]
    Memory(std::io::Error),
    /// A KVM ioctl failed.
    #[error("{what} failed: {source}")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// The guest stopped in a way the program never does.
    #[error(
        "the guest stopped unexpectedly ({exit}) at rip {rip:#x}; this backend may not support the workload's guest mode"
    )]
    UnexpectedExit {
        /// The exit as kvm-ioctls names it.
        exit: String,
        /// Where.
        rip: u64,
    },
    /// The backend cannot run part of the request.
    #[error("{0}")]
    Unsupported(&'static str),
    /// More queries than the guest's list holds.
    #[error("too many --query ({0}): the guest's query list holds at most {MAX_QUERIES}")]
    TooManyQueries(usize),
    /// The exits that reached user space are not the ones requested.
    #[error("expected {expected} {reason} exits to user space in {rounds} round(s), saw {seen}")]
    Mismatch {
        /// `IO`, `MMIO`, `HLT`.
        reason: &'static str,
        /// Expected count.
        expected: u64,
        /// Seen count.
        seen: u64,
        /// Rounds run.
        rounds: u64,
    },
}

/// What to say when `/dev/kvm` cannot be opened.
#[must_use]
pub fn open_kvm_message(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => "/dev/kvm does not exist: exitprof vm needs KVM (load kvm_intel or kvm_amd, or enable nested virtualization for this VM)".to_owned(),
        std::io::ErrorKind::PermissionDenied => "/dev/kvm: permission denied: run as root or add your user to the kvm group".to_owned(),
        _ => format!("cannot open /dev/kvm: {err}"),
    }
}

/// What the workload did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The VMM's process id (the one `exitprof stat --pid` would filter).
    pub pid: u32,
    /// KVM backend.
    pub backend: Backend,
    /// Guest mode.
    pub mode: &'static str,
    /// Rounds completed.
    pub rounds: u64,
    /// What each round did.
    pub requested: Requested,
    /// Exits that reached user space, by `KVM_EXIT_*` name, over all rounds.
    pub userspace_exits: BTreeMap<&'static str, u64>,
    /// Every query of every round, in the order the guest ran them.
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
        let (kind, eax_in, ecx_in) = match query {
            Query::Cpuid { leaf, subleaf } => ("cpuid", leaf, subleaf),
            Query::Hypercall { nr } => ("hypercall", nr, 0),
        };
        Self {
            kind,
            eax_in,
            ecx_in,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
        }
    }
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

impl From<&VmArgs> for Requested {
    fn from(a: &VmArgs) -> Self {
        Self {
            cpuid: a.cpuid,
            cpuid_leaf: a.cpuid_leaf,
            cpuid_subleaf: a.cpuid_subleaf,
            pio: a.pio,
            pio_port: a.pio_port,
            mmio: a.mmio,
            mmio_gpa: a.mmio_gpa,
            msr: a.msr,
            msr_index: a.msr_index,
            hypercall: a.hypercall,
            hypercall_nr: a.hypercall_nr,
            hlt: a.hlt,
            paging: a.paging,
        }
    }
}

/// Runs the workload described by `args`.
///
/// # Errors
/// See [`WorkloadError`].
pub fn run(args: &VmArgs) -> Result<Report, WorkloadError> {
    let backend = Backend::detect();
    if args.queries.len() > MAX_QUERIES {
        return Err(WorkloadError::TooManyQueries(args.queries.len()));
    }
    let hypercall_queries = args
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
        queries: u32::try_from(args.queries.len()).expect("at most MAX_QUERIES"),
    };
    let hypercall = if backend == Backend::Vmx {
        Hypercall::Vmcall
    } else {
        Hypercall::Vmmcall
    };
    let mut machine = vmm::Machine::new(params, &args.queries, hypercall, args.mmio_gpa)?;
    let mut exits = BTreeMap::new();
    let started = Instant::now();
    let mut rounds = 0;
    while args.rounds == 0 || rounds < args.rounds {
        if crate::signals::received().is_some() || !machine.run_once(&mut exits)? {
            break;
        }
        rounds += 1;
        if args.pause_ms > 0 && (args.rounds == 0 || rounds < args.rounds) {
            std::thread::sleep(Duration::from_millis(args.pause_ms));
        }
    }
    let expected = [
        (
            "IO",
            (2 * u64::from(args.pio) + 1 + 4 * args.queries.len() as u64) * rounds,
        ),
        ("MMIO", 2 * u64::from(args.mmio) * rounds),
        ("HLT", u64::from(args.hlt) * rounds),
    ];
    // An interrupted round may have done part of its work: check only
    // complete runs.
    if crate::signals::received().is_none() {
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
    Ok(Report {
        pid: std::process::id(),
        backend,
        mode: if args.paging > 0 {
            "protected32-paging"
        } else {
            "protected32"
        },
        rounds,
        requested: Requested::from(args),
        userspace_exits: exits,
        queries: machine
            .reported
            .chunks_exact(4)
            .zip(args.queries.iter().cycle())
            .map(|(regs, query)| QueryResult::new(*query, regs))
            .collect(),
        duration_ns: u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
    })
}

/// `exitprof vm`.
///
/// # Errors
/// See [`WorkloadError`].
pub fn main(args: &VmArgs) -> anyhow::Result<ExitCode> {
    crate::signals::install();
    let report = run(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let r = &report.requested;
        println!(
            "exitprof vm: pid {}, backend {}, {} round(s) in {}",
            report.pid,
            report.backend.name(),
            report.rounds,
            crate::present::duration(report.duration_ns)
        );
        println!(
            "  per round: {} cpuid (leaf {:#x}/{:#x}), {} out + {} in on port {:#x}, {} write + {} read at gpa {:#x}, {} rdmsr + {} wrmsr of {:#x}, {} hypercall(s) {:#x}, {} hlt",
            r.cpuid,
            r.cpuid_leaf,
            r.cpuid_subleaf,
            r.pio,
            r.pio,
            r.pio_port,
            r.mmio,
            r.mmio,
            r.mmio_gpa,
            r.msr,
            r.msr,
            r.msr_index,
            r.hypercall,
            r.hypercall_nr,
            r.hlt
        );
        let exits: Vec<String> = report
            .userspace_exits
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!("  exits to user space: {}", exits.join(", "));
        for q in &report.queries {
            println!(
                "  {} {:#x}/{:#x}: eax={:#010x} ebx={:#010x} ecx={:#010x} edx={:#010x}",
                q.kind, q.eax_in, q.ecx_in, q.eax, q.ebx, q.ecx, q.edx
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_checks() {
        assert_eq!(parse_port("0xe9"), Ok(0xe9));
        assert!(parse_port("70000").unwrap_err().contains("no I/O port"));
        assert!(parse_port("0xf4").unwrap_err().contains("done port"));
        assert!(parse_mmio_gpa("0x1000").unwrap_err().contains("guest RAM"));
        assert_eq!(parse_mmio_gpa("0xd0000000"), Ok(0xd000_0000));
        assert!(parse_u32("0x1_0000_0000").is_err());
    }

    #[test]
    fn kvm_open_errors_say_what_to_do() {
        let missing = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert!(open_kvm_message(&missing).starts_with("/dev/kvm does not exist"));
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(open_kvm_message(&denied).contains("kvm group"));
    }
}
