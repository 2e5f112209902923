//! The bench's sizes, the tracers' programs, and the report it writes.
use serde::Serialize;
use serde_json::Value;

/// What the guest's `/init` does, once.
#[derive(Clone, Copy, Debug, Serialize)]
pub(super) struct GuestWork {
    /// Lines of 72 characters written to the serial console (each byte an
    /// `out` that QEMU, in user space, handles).
    pub(super) console_lines: u32,
    /// Iterations of a shell arithmetic loop (CPU, no exits).
    pub(super) cpu_loop: u32,
    /// MB written into a fresh tmpfs file and freed, per round: the first
    /// touch of every guest page faults (nested page faults in the host).
    pub(super) fault_mb: u32,
    /// Rounds of `fault_mb`.
    pub(super) fault_rounds: u32,
    /// `sleep 0.05` calls (HLT, timer interrupts).
    pub(super) sleeps: u32,
}

/// The tracers, in the order each round runs them.
pub(super) const TRACERS: &[&str] = &[
    "none",
    "exitprof-raw",
    "exitprof-classic",
    "bpftrace",
    "perf-record",
    "perf-live",
    "kvm_stat",
];

/// One tracer's end-to-end guest times.
#[derive(Debug, Serialize)]
pub(super) struct GuestTime {
    pub(super) tracer: String,
    pub(super) rounds: usize,
    pub(super) median_s: f64,
    pub(super) min_s: f64,
    pub(super) max_s: f64,
    /// Median over the untraced median.
    pub(super) ratio: f64,
}

/// What exitprof counted during one guest run.
#[derive(Debug, Serialize)]
pub(super) struct GuestEvents {
    pub(super) tracer: String,
    pub(super) seconds: f64,
    /// `kvm_exit`s counted.
    pub(super) exits: u64,
    /// Events its programs handled: exits, entries, handler events and
    /// returns to user space.
    pub(super) events: u64,
    pub(super) exits_per_s: f64,
    pub(super) events_per_s: f64,
}

/// Keys in the per-vCPU map of each readout measurement.
pub(super) const READOUT_KEYS: [u32; 4] = [10, 1_000, 10_000, 100_000];

/// Workload sizes and repetitions.
pub(super) struct Sizes {
    pub(super) host_cpuid: u32,
    pub(super) host_rounds: usize,
    /// The SVM sandbox (QEMU TCG).
    pub(super) svm: Nested,
    /// The VMX sandbox (Bochs: slower, and bpftrace's LLVM takes about
    /// 25 s of its CPU to start, so smaller).
    pub(super) vmx: Nested,
    pub(super) readout_repeat: u32,
    pub(super) tui_seconds: u64,
    /// Scrapes of the exporter measured, per configuration.
    pub(super) exporter_scrapes: usize,
    /// Seconds the exporter is watched idle.
    pub(super) exporter_idle_s: u64,
    /// The real guest's work.
    pub(super) guest_work: GuestWork,
    /// Rounds of the real guest under every tracer.
    pub(super) guest_rounds: usize,
    /// Which tracers the real guest runs under.
    pub(super) guest_tracers: &'static [&'static str],
    /// Longest the real-guest sandbox boot may take.
    pub(super) guest_timeout_s: u64,
    /// Longest one guest run may take before it counts as hung.
    pub(super) guest_run_timeout_s: u64,
    /// vCPUs of the sandbox the real guest runs in. The full run uses two:
    /// with one, its sandbox twice stopped running at all minutes into
    /// the run (QEMU at 0% CPU: L1's timers no longer fired). The smoke
    /// run's short guest has passed every time with one, and with two the
    /// full run's last attach check once met a soft lockup of both L1
    /// vCPUs (QEMU's vCPU thread and exitprof attaching) under TCG.
    pub(super) guest_sandbox_cpus: u8,
}

/// The workloads of one nested sandbox.
pub(super) struct Nested {
    pub(super) cpuid: u32,
    pub(super) pio: u32,
    pub(super) rounds: usize,
    /// Longest the sandbox boot may take before it counts as a stall of
    /// the emulation (and is retried once).
    pub(super) timeout_s: u64,
}

pub(super) const FULL: Sizes = Sizes {
    host_cpuid: 200_000,
    host_rounds: 5,
    svm: Nested {
        cpuid: 10_000,
        pio: 2_000,
        rounds: 5,
        timeout_s: 1800,
    },
    vmx: Nested {
        cpuid: 2_000,
        pio: 500,
        rounds: 3,
        timeout_s: 3600,
    },
    readout_repeat: 20,
    tui_seconds: 60,
    exporter_scrapes: 30,
    exporter_idle_s: 15,
    guest_work: GuestWork {
        console_lines: 2_000,
        cpu_loop: 200_000,
        fault_mb: 150,
        fault_rounds: 2,
        sleeps: 40,
    },
    guest_rounds: 3,
    guest_tracers: TRACERS,
    guest_timeout_s: 5400,
    guest_run_timeout_s: 400,
    guest_sandbox_cpus: 2,
};

pub(super) const SMOKE: Sizes = Sizes {
    host_cpuid: 2_000,
    host_rounds: 1,
    svm: Nested {
        cpuid: 500,
        pio: 100,
        rounds: 1,
        timeout_s: 300,
    },
    vmx: Nested {
        cpuid: 300,
        pio: 50,
        rounds: 1,
        timeout_s: 1200,
    },
    readout_repeat: 3,
    tui_seconds: 5,
    exporter_scrapes: 3,
    exporter_idle_s: 2,
    guest_work: GuestWork {
        console_lines: 20,
        cpu_loop: 1_000,
        fault_mb: 8,
        fault_rounds: 1,
        sleeps: 2,
    },
    guest_rounds: 1,
    guest_tracers: &["none", "exitprof-raw", "kvm_stat"],
    guest_timeout_s: 600,
    guest_run_timeout_s: 150,
    guest_sandbox_cpus: 1,
};

/// The bpftrace equivalent of exitprof's handler path on the host: count
/// CPUIDs per leaf and subleaf.
pub(super) const BPFTRACE_HOST: &str =
    "tracepoint:kvm:kvm_cpuid { @cpuid[args->function, args->index] = count(); }";

/// The bpftrace equivalent of exitprof's vmexit path: count per reason,
/// time exit to entry per thread, latency stats and a log2 histogram per
/// reason.
pub(super) const BPFTRACE_VMEXIT: &str = "tracepoint:kvm:kvm_exit { @exits[args->isa, args->exit_reason] = count(); @start[tid] = nsecs; @reason[tid] = args->exit_reason; } tracepoint:kvm:kvm_entry /@start[tid]/ { $d = nsecs - @start[tid]; @ns[@reason[tid]] = stats($d); @hist[@reason[tid]] = hist($d); delete(@start[tid]); }";

/// One program's cost per run.
#[derive(Debug, Serialize)]
pub(super) struct ProgramCost {
    pub(super) tracer: String,
    pub(super) program: String,
    pub(super) runs: u64,
    /// The median over `rounds` interleaved runs (each run's mean).
    pub(super) ns_per_run: f64,
    pub(super) rounds: usize,
    pub(super) min_ns: f64,
    pub(super) max_ns: f64,
}

impl ProgramCost {
    /// One figure per (tracer, program) from several rounds: the median
    /// of the rounds' means, with their spread, and the runs added up.
    pub(super) fn merge_rounds(costs: Vec<Self>) -> Vec<Self> {
        let mut merged: Vec<(Self, Vec<f64>)> = Vec::new();
        for c in costs {
            if let Some((m, ns)) = merged
                .iter_mut()
                .find(|(m, _)| m.tracer == c.tracer && m.program == c.program)
            {
                m.runs += c.runs;
                ns.push(c.ns_per_run);
            } else {
                let ns = vec![c.ns_per_run];
                merged.push((c, ns));
            }
        }
        merged
            .into_iter()
            .map(|(mut m, ns)| {
                m.rounds = ns.len();
                m.min_ns = ns.iter().copied().fold(f64::INFINITY, f64::min);
                m.max_ns = ns.iter().copied().fold(0.0, f64::max);
                m.ns_per_run = median(ns);
                m
            })
            .collect()
    }
}

/// One workload's time under one tracer. Noise on these machines only
/// adds time, so the fastest of the interleaved rounds is the figure
/// compared (`ratio` = its min over the untraced min); the median is
/// kept for reference.
#[derive(Debug, Serialize)]
pub(super) struct Slowdown {
    pub(super) workload: String,
    pub(super) tracer: String,
    pub(super) rounds: usize,
    pub(super) min_ms: f64,
    pub(super) median_ms: f64,
    pub(super) ratio: f64,
}

/// One target of the issue.
#[derive(Debug, Serialize)]
pub(super) struct Target {
    pub(super) name: String,
    pub(super) value: f64,
    pub(super) limit: f64,
    pub(super) pass: bool,
}

#[derive(Debug, Default, Serialize)]
pub(super) struct Report {
    pub(super) smoke: bool,
    pub(super) host_cost: Vec<ProgramCost>,
    pub(super) host_slowdown: Vec<Slowdown>,
    /// The SVM sandbox's.
    pub(super) sandbox_cost: Vec<ProgramCost>,
    pub(super) sandbox_slowdown: Vec<Slowdown>,
    /// The VMX sandbox's.
    pub(super) vmx_cost: Vec<ProgramCost>,
    pub(super) vmx_slowdown: Vec<Slowdown>,
    pub(super) readout: Vec<Value>,
    pub(super) tui: Option<Value>,
    pub(super) exporter: Option<Value>,
    /// The real guest's work, when that part ran.
    pub(super) guest_work: Option<GuestWork>,
    /// The real guest's times under each tracer.
    pub(super) guest: Vec<GuestTime>,
    /// What exitprof counted while the real guest ran.
    pub(super) guest_events: Vec<GuestEvents>,
    /// Why a tracer of the real guest was left out, if one was.
    pub(super) guest_notes: Vec<String>,
    pub(super) targets: Vec<Target>,
}

impl Report {
    pub(super) fn target(&mut self, name: &str, value: f64, limit: f64) {
        self.targets.push(Target {
            name: name.to_owned(),
            value,
            limit,
            pass: value < limit,
        });
    }

    pub(super) fn cost(costs: &[ProgramCost], tracer: &str, programs: &[&str]) -> Option<f64> {
        let found: Vec<f64> = programs
            .iter()
            .filter_map(|p| {
                costs
                    .iter()
                    .find(|c| c.tracer == tracer && c.program == *p)
                    .map(|c| c.ns_per_run)
            })
            .collect();
        (found.len() == programs.len()).then(|| found.iter().sum())
    }

    pub(super) fn ratio(slowdowns: &[Slowdown], workload: &str, tracer: &str) -> Option<f64> {
        slowdowns
            .iter()
            .find(|s| s.workload == workload && s.tracer == tracer)
            .map(|s| s.ratio)
    }
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
