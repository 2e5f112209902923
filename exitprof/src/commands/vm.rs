//! `exitprof vm`: the built-in workload VM, a guest whose exits are known
//! in advance (see `workload/`).
use std::process::ExitCode;

use crate::{
    cli::parse_number,
    present::duration,
    session::signals,
    workload::{self, DONE_PORT, Query, RAM_BYTES, Requested, Spec},
};

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
  exitprof vm --cpuid 100 --hlt 5 --rounds 0 --pause-ms 100   # until Ctrl-C
  exitprof vm --vcpus 4 --pio 100 --json   # 4 x (100 out + 100 in + 1 done)")]
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
    /// The MSR: `IA32_UCODE_REV` by default, which KVM traps and handles on
    /// every backend and which ignores guest writes.
    #[arg(long, default_value = "0x8b", value_parser = parse_u32, value_name = "INDEX")]
    pub msr_index: u32,
    /// Hypercalls per round (vmcall on Intel, vmmcall otherwise).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub hypercall: u32,
    /// The hypercall number (rax).
    #[arg(long, default_value = "0x283", value_parser = parse_u32, value_name = "NR")]
    pub hypercall_nr: u32,
    /// HLTs per round (each one a `KVM_EXIT_HLT`: there is no in-kernel irqchip).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub hlt: u32,
    /// Paging work per round: turns 32-bit paging on, then N times writes
    /// CR3, does an INVLPG and touches 64 pages (cheap under nested paging,
    /// exits under shadow paging).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub paging: u32,
    /// Query and report: cpuid:LEAF[:SUBLEAF] or hypercall:NR (repeatable).
    #[arg(long = "query", value_parser = parse_query, value_name = "QUERY")]
    pub queries: Vec<Query>,
    /// vCPUs: each runs every round of the same program on its own thread
    /// (so every count is multiplied by N), checked exactly per vCPU.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64), value_name = "N")]
    pub vcpus: u32,
    /// Rounds to run; 0 runs until Ctrl-C or SIGTERM.
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
    if (gpa as usize) < RAM_BYTES {
        return Err(format!(
            "{gpa:#x} is guest RAM; MMIO needs an address at or above {RAM_BYTES:#x}"
        ));
    }
    if gpa > u32::MAX - 3 {
        return Err(format!("{gpa:#x}: a 4-byte access would wrap"));
    }
    Ok(gpa)
}

impl From<&VmArgs> for Spec {
    fn from(a: &VmArgs) -> Self {
        Self {
            per_round: Requested {
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
            },
            queries: a.queries.clone(),
            rounds: a.rounds,
            pause_ms: a.pause_ms,
            vcpus: a.vcpus,
        }
    }
}

/// `exitprof vm`.
///
/// # Errors
/// See [`WorkloadError`].
pub fn main(args: &VmArgs) -> anyhow::Result<ExitCode> {
    signals::install();
    let report = workload::run(&Spec::from(args))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let r = &report.requested;
        println!(
            "exitprof vm: pid {}, backend {}, {} vCPU(s), {} round(s) each in {}",
            report.pid,
            report.backend.name(),
            report.vcpus,
            report.rounds,
            duration(report.duration_ns)
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
}
