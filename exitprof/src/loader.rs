//! Loads the embedded eBPF object, hands it its configuration (record
//! offsets from tracefs, the process filter), attaches the programs and
//! keeps them attached for the `Profiler`'s lifetime: dropping it detaches
//! every program (also on Ctrl-C and on errors, by unwinding the owner).
use std::time::Instant;

use aya::{
    Ebpf, EbpfLoader,
    maps::HashMap,
    programs::{ProgramError, RawTracePoint, TracePoint},
};
use exitprof_common::{
    Config,
    config::{FILTER_ALL, FILTER_TRACKED, Offsets, RawOffsets},
};

use crate::{
    backend::Backend,
    btf::{Arg, Btf, Vmlinux},
    mirror::{Mirror, MirrorStatus},
    readout,
    snapshot::{ProgramCost, Snapshot},
    tracefs::{self, Format, TracefsError},
};

/// The eBPF object `build.rs` produced (empty with `AYA_BUILD_SKIP=1`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/exitprof"));

/// Errors of loading and attaching.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not running as root.
    #[error("exitprof needs root to load eBPF programs (CAP_BPF, CAP_PERFMON): run it with sudo")]
    NotRoot,
    /// The binary was built without its eBPF object.
    #[error(
        "this exitprof binary was built with AYA_BUILD_SKIP=1 and carries no eBPF programs: rebuild it with `cargo build` after `cargo xtask setup`"
    )]
    NoObject,
    /// tracefs trouble (mount, missing tracepoint, format).
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    /// The kernel refused the object.
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program would not load or attach.
    #[error("attaching {program} to {category}:{event} failed: {source}")]
    Attach {
        /// Program name.
        program: &'static str,
        /// Tracepoint category.
        category: &'static str,
        /// Tracepoint name.
        event: &'static str,
        /// Why.
        source: Box<ProgramError>,
    },
    /// `--attach raw` was asked for, but this kernel's BTF does not allow it.
    #[error("raw tracepoints are not possible here: {0} (use --attach classic or auto)")]
    RawUnavailable(String),
    /// A map could not be read or written.
    #[error("eBPF map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Why.
        source: Box<aya::maps::MapError>,
    },
}

/// Which processes are counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Every VM on the host.
    All,
    /// These processes and the processes they fork from now on.
    Tracked(Vec<u32>),
}

/// What to load.
#[derive(Clone, Debug)]
pub struct Options {
    /// Process filter.
    pub filter: Filter,
    /// Also count exits per (process, vCPU, reason).
    pub breakdown: bool,
    /// Capacity of every hash map of events (and of the breakdown), when
    /// not the built-in one: small values show drop accounting in tests.
    pub map_entries: Option<u32>,
    /// Turn on the kernel's BPF run-time statistics while profiling, so
    /// that snapshots say what each program cost. It adds two clock reads
    /// to every program run, so it is off unless asked for.
    pub cost: bool,
    /// Raw or classic tracepoints for the KVM programs.
    pub attach: AttachMode,
}

/// How the KVM programs attach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Raw where this kernel's BTF allows it, classic elsewhere.
    #[default]
    Auto,
    /// Raw tracepoints (offsets from BTF), or an error.
    Raw,
    /// Classic tracepoints (offsets from tracefs).
    Classic,
}

/// The two groups of KVM programs that attach raw or classic together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    /// `kvm_exit` and `kvm_entry`: raw needs vendor structure offsets.
    Vmexit,
    /// The exit-handler events: raw needs only their prototypes.
    Handlers,
}

/// What the raw program of a hook reads of its arguments.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// An integer of this many bytes.
    Int(u32),
    /// `struct kvm_vcpu *`.
    Vcpu,
}

/// The raw program of a hook.
struct RawHook {
    program: &'static str,
    group: Group,
    /// The leading arguments it reads, checked against BTF.
    args: &'static [Want],
}

/// The hash maps whose capacity `Options::map_entries` sets.
const SIZED_MAPS: &[&str] = &[
    "CPUID_EVENTS",
    "PIO_EVENTS",
    "MMIO_EVENTS",
    "MSR_EVENTS",
    "HYPERCALL_EVENTS",
    "EXIT_BREAKDOWN",
];

/// One program and the tracepoint it belongs on.
struct Hook {
    program: &'static str,
    category: &'static str,
    event: &'static str,
    /// Absent from the kernel: an error (true) or a feature left out.
    required: bool,
    /// Its raw tracepoint program, if it has one.
    raw: Option<RawHook>,
}

const HOOKS: &[Hook] = &[
    Hook {
        program: "kvm_cpuid",
        category: "kvm",
        event: "kvm_cpuid",
        required: true,
        raw: Some(RawHook {
            program: "kvm_cpuid_raw",
            group: Group::Handlers,
            args: &[Want::Int(4), Want::Int(4)],
        }),
    },
    Hook {
        program: "kvm_pio",
        category: "kvm",
        event: "kvm_pio",
        required: true,
        raw: Some(RawHook {
            program: "kvm_pio_raw",
            group: Group::Handlers,
            args: &[Want::Int(4), Want::Int(4), Want::Int(4)],
        }),
    },
    Hook {
        program: "kvm_mmio",
        category: "kvm",
        event: "kvm_mmio",
        required: true,
        raw: Some(RawHook {
            program: "kvm_mmio_raw",
            group: Group::Handlers,
            args: &[Want::Int(4), Want::Int(4), Want::Int(8)],
        }),
    },
    Hook {
        program: "kvm_msr",
        category: "kvm",
        event: "kvm_msr",
        required: true,
        raw: Some(RawHook {
            program: "kvm_msr_raw",
            group: Group::Handlers,
            args: &[Want::Int(4), Want::Int(4)],
        }),
    },
    Hook {
        program: "kvm_hypercall",
        category: "kvm",
        event: "kvm_hypercall",
        required: true,
        raw: Some(RawHook {
            program: "kvm_hypercall_raw",
            group: Group::Handlers,
            args: &[Want::Int(8)],
        }),
    },
    Hook {
        program: "kvm_userspace_exit",
        category: "kvm",
        event: "kvm_userspace_exit",
        required: true,
        raw: Some(RawHook {
            program: "kvm_userspace_exit_raw",
            group: Group::Handlers,
            args: &[Want::Int(4), Want::Int(4)],
        }),
    },
    Hook {
        program: "kvm_exit",
        category: "kvm",
        event: "kvm_exit",
        required: true,
        raw: Some(RawHook {
            program: "kvm_exit_raw",
            group: Group::Vmexit,
            args: &[Want::Vcpu, Want::Int(4)],
        }),
    },
    Hook {
        program: "kvm_entry",
        category: "kvm",
        event: "kvm_entry",
        required: true,
        raw: Some(RawHook {
            program: "kvm_entry_raw",
            group: Group::Vmexit,
            args: &[Want::Vcpu],
        }),
    },
    Hook {
        program: "sys_enter_ioctl",
        category: "syscalls",
        event: "sys_enter_ioctl",
        required: false,
        raw: None,
    },
    Hook {
        program: "sched_process_fork",
        category: "sched",
        event: "sched_process_fork",
        required: true,
        raw: None,
    },
    Hook {
        program: "sched_process_exit",
        category: "sched",
        event: "sched_process_exit",
        required: true,
        raw: None,
    },
];

/// Attached programs and their maps.
pub struct Profiler {
    ebpf: Ebpf,
    backend: Backend,
    started: Instant,
    /// Programs attached, by name.
    attached: Vec<&'static str>,
    /// Holds `kernel.bpf_stats_enabled` on while open (`Options::cost`).
    stats: Option<std::os::fd::OwnedFd>,
    /// The registration with a patched KVM's guest CPUID mirror.
    mirror: Mirror,
    /// See [`RawPlan::mode_name`].
    attach_mode: &'static str,
    /// See [`RawPlan::note`].
    attach_note: String,
}

impl Profiler {
    /// Loads and attaches everything `options` asks for.
    ///
    /// # Errors
    /// See [`LoadError`]; every variant says what to do.
    pub fn start(options: &Options) -> Result<Self, LoadError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(LoadError::NotRoot);
        }
        if EBPF_OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        let root = tracefs::ensure_mounted()?;
        let read = |category, event| tracefs::read_format(&root, category, event);
        let mut formats = Vec::new();
        for hook in HOOKS {
            match read(hook.category, hook.event) {
                Ok(format) => formats.push((hook, Some(format))),
                Err(TracefsError::MissingEvent { .. }) if !hook.required => {
                    formats.push((hook, None));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let find = |event: &str| {
            formats
                .iter()
                .find(|(h, _)| h.event == event)
                .and_then(|(_, f)| f.as_ref())
        };
        let plan = RawPlan::decide(options.attach)?;
        let config = Config {
            filter: match options.filter {
                Filter::All => FILTER_ALL,
                Filter::Tracked(_) => FILTER_TRACKED,
            },
            breakdown: u32::from(options.breakdown),
            offsets: offsets(&find)?,
            raw: plan.offsets,
        };
        let mut loader = EbpfLoader::new();
        loader.override_global("CONFIG", &config, true);
        if let Some(entries) = options.map_entries {
            for map in SIZED_MAPS {
                loader.map_max_entries(map, entries);
            }
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| LoadError::Load(Box::new(e)))?;
        if let Filter::Tracked(pids) = &options.filter {
            let mut tracked: HashMap<_, u32, u8> = map_mut(&mut ebpf, "TRACKED_TGIDS")?;
            for pid in pids {
                tracked
                    .insert(pid, 1, 0)
                    .map_err(|e| map_error("TRACKED_TGIDS", e))?;
            }
        }
        let mut attached = Vec::new();
        for (hook, format) in &formats {
            if format.is_none() {
                log::warn!(
                    "{}:{} is missing: {} is not attached",
                    hook.category,
                    hook.event,
                    hook.program
                );
                continue;
            }
            match &hook.raw {
                Some(raw) if plan.is_raw(raw.group) => {
                    attach(&mut ebpf, hook, Some(raw))?;
                    attached.push(raw.program);
                }
                _ => {
                    attach(&mut ebpf, hook, None)?;
                    attached.push(hook.program);
                }
            }
        }
        let stats = if options.cost {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    eprintln!(
                        "exitprof: note: cannot enable BPF run-time statistics ({e}): no cost figures"
                    );
                    None
                }
            }
        } else {
            None
        };
        let mirror = match ebpf.map("EXIT_STATS").and_then(crate::mirror::map_fd) {
            Some(fd) => Mirror::register(fd),
            None => Mirror::unregistered(MirrorStatus::Failed(
                "EXIT_STATS is not a per-CPU array".to_owned(),
            )),
        };
        if let MirrorStatus::Failed(why) = &mirror.status {
            eprintln!("exitprof: note: guest CPUID mirror: {why}");
        }
        Ok(Self {
            ebpf,
            backend: Backend::detect(),
            started: Instant::now(),
            attached,
            stats,
            mirror,
            attach_mode: plan.mode_name(),
            attach_note: plan.note(),
        })
    }

    /// Counts process `pid` (and its future children) from now on.
    ///
    /// # Errors
    /// When the map of tracked processes is full.
    pub fn track(&mut self, pid: u32) -> Result<(), LoadError> {
        let mut tracked: HashMap<_, u32, u8> = map_mut(&mut self.ebpf, "TRACKED_TGIDS")?;
        tracked
            .insert(pid, 1, 0)
            .map_err(|e| map_error("TRACKED_TGIDS", e))
    }

    /// Fills the per-vCPU breakdown map with `keys` synthetic keys (pid
    /// 4_000_000, 30 SVM reasons from 0x60 per vCPU), so that the readout
    /// and the TUI can be measured under a big host's load on a machine
    /// whose KVM emits no `kvm_exit`. Never used for a real profile.
    ///
    /// # Errors
    /// When the map refuses the keys.
    pub fn fill_breakdown_for_load_test(&mut self, keys: u32) -> Result<(), LoadError> {
        use aya::maps::{PerCpuHashMap, PerCpuValues};
        use exitprof_common::{
            maps::{BreakdownKey, BreakdownStats},
            reasons::{Isa, slot},
        };
        let cpus =
            aya::util::nr_cpus().map_err(|(_, e)| syscall_error("EXIT_BREAKDOWN", "nr_cpus", e))?;
        let mut map: PerCpuHashMap<_, BreakdownKey, BreakdownStats> =
            map_mut(&mut self.ebpf, "EXIT_BREAKDOWN")?;
        for i in 0..keys {
            let (vcpu, r) = (i / 30, i % 30);
            let key = BreakdownKey {
                pid: 4_000_000,
                vcpu,
                slot: slot(Isa::Svm as u32, 0x60 + r),
                _pad: 0,
            };
            let value = BreakdownStats {
                count: u64::from(vcpu + r + 1),
                timed: u64::from(vcpu + r + 1),
                total_ns: 1_000 * u64::from(vcpu + r + 1),
                max_ns: 2_000,
            };
            let values = PerCpuValues::try_from(vec![value; cpus])
                .map_err(|e| syscall_error("EXIT_BREAKDOWN", "per-cpu values", e))?;
            map.insert(key, values, 0)
                .map_err(|e| map_error("EXIT_BREAKDOWN", e))?;
        }
        Ok(())
    }

    /// Whether userspace round trips are measured (`sys_enter_ioctl`).
    #[must_use]
    pub fn measures_roundtrips(&self) -> bool {
        self.attached.contains(&"sys_enter_ioctl")
    }

    /// Reads every map into one snapshot covering the time since start.
    ///
    /// # Errors
    /// When a map cannot be read.
    pub fn snapshot(&self) -> Result<Snapshot, LoadError> {
        let mut snapshot = readout::read(&self.ebpf, self.backend)?;
        if self.stats.is_some() {
            snapshot.programs = self
                .attached
                .iter()
                .filter_map(|name| {
                    let info = self.ebpf.program(name)?.info().ok()?;
                    Some(ProgramCost {
                        name: (*name).to_owned(),
                        run_count: info.run_count(),
                        run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                    })
                })
                .collect();
        }
        snapshot.interval_ns = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.mirror
            .status
            .name()
            .clone_into(&mut snapshot.guest_mirror);
        self.attach_mode.clone_into(&mut snapshot.attach_mode);
        self.attach_note.clone_into(&mut snapshot.attach_note);
        Ok(snapshot)
    }
}

/// The record offsets every program needs, from the formats found.
fn offsets<'a>(find: &impl Fn(&str) -> Option<&'a Format>) -> Result<Offsets, TracefsError> {
    let get = |event: &str, field: &str| -> Result<u32, TracefsError> {
        match find(event) {
            Some(format) => format.offset(field),
            // Optional event, missing: its program is not attached.
            None => Ok(0),
        }
    };
    Ok(Offsets {
        cpuid_function: get("kvm_cpuid", "function")?,
        cpuid_index: get("kvm_cpuid", "index")?,
        pio_rw: get("kvm_pio", "rw")?,
        pio_port: get("kvm_pio", "port")?,
        pio_size: get("kvm_pio", "size")?,
        mmio_type: get("kvm_mmio", "type")?,
        mmio_gpa: get("kvm_mmio", "gpa")?,
        msr_write: get("kvm_msr", "write")?,
        msr_ecx: get("kvm_msr", "ecx")?,
        hypercall_nr: get("kvm_hypercall", "nr")?,
        userspace_exit_reason: get("kvm_userspace_exit", "reason")?,
        userspace_exit_errno: get("kvm_userspace_exit", "errno")?,
        exit_reason: get("kvm_exit", "exit_reason")?,
        exit_isa: get("kvm_exit", "isa")?,
        exit_vcpu_id: get("kvm_exit", "vcpu_id")?,
        ioctl_cmd: get("sys_enter_ioctl", "cmd")?,
        fork_parent_pid: get("sched_process_fork", "parent_pid")?,
        fork_child_pid: get("sched_process_fork", "child_pid")?,
    })
}

/// Loads and attaches `hook`'s classic program, or its raw one.
fn attach(ebpf: &mut Ebpf, hook: &Hook, raw: Option<&RawHook>) -> Result<(), LoadError> {
    let name = raw.map_or(hook.program, |r| r.program);
    let fail = |source: ProgramError| LoadError::Attach {
        program: name,
        category: hook.category,
        event: hook.event,
        source: Box::new(source),
    };
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| fail(ProgramError::UnexpectedProgramType))?;
    if raw.is_some() {
        let program: &mut RawTracePoint = program.try_into().map_err(fail)?;
        program.load().map_err(fail)?;
        program.attach(hook.event).map_err(fail)?;
    } else {
        let program: &mut TracePoint = program.try_into().map_err(fail)?;
        program.load().map_err(fail)?;
        program.attach(hook.category, hook.event).map_err(fail)?;
    }
    Ok(())
}

/// Which groups attach raw, with the offsets they need, or why not.
struct RawPlan {
    vmexit: Result<(), String>,
    handlers: Result<(), String>,
    offsets: RawOffsets,
}

/// Where the kernel publishes BTF.
const BTF_DIR: &str = "/sys/kernel/btf";

impl RawPlan {
    /// Decides per group from this kernel's BTF.
    fn decide(mode: AttachMode) -> Result<Self, LoadError> {
        let mut plan = Self {
            vmexit: Err("--attach classic".to_owned()),
            handlers: Err("--attach classic".to_owned()),
            offsets: RawOffsets::default(),
        };
        if mode == AttachMode::Classic {
            return Ok(plan);
        }
        match resolve_raw(&mut plan.offsets) {
            Ok((vmexit, handlers)) => {
                plan.vmexit = vmexit;
                plan.handlers = handlers;
            }
            Err(why) => {
                plan.vmexit = Err(why.clone());
                plan.handlers = Err(why);
            }
        }
        if mode == AttachMode::Raw {
            // kvm_exit/kvm_entry never fire on a backend without VMX/SVM
            // exits (PVM): classic ones there cost nothing.
            let vmexit_needed = Backend::detect().emits_vmexit();
            for (group, needed) in [(&plan.vmexit, vmexit_needed), (&plan.handlers, true)] {
                if let (Err(why), true) = (group, needed) {
                    return Err(LoadError::RawUnavailable(why.clone()));
                }
            }
        }
        Ok(plan)
    }

    fn is_raw(&self, group: Group) -> bool {
        match group {
            Group::Vmexit => self.vmexit.is_ok(),
            Group::Handlers => self.handlers.is_ok(),
        }
    }

    /// "raw", "classic" or "mixed".
    fn mode_name(&self) -> &'static str {
        match (self.vmexit.is_ok(), self.handlers.is_ok()) {
            (true, true) => "raw",
            (false, false) => "classic",
            _ => "mixed",
        }
    }

    /// Why any group is classic ("" when all are raw).
    fn note(&self) -> String {
        match (&self.vmexit, &self.handlers) {
            (Err(a), Err(b)) if a == b => format!("all classic: {a}"),
            (vmexit, handlers) => [
                vmexit
                    .as_ref()
                    .err()
                    .map(|why| format!("kvm_exit/kvm_entry classic: {why}")),
                handlers
                    .as_ref()
                    .err()
                    .map(|why| format!("handler events classic: {why}")),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; "),
        }
    }
}

/// Whether each group can go raw: (`vmexit`, `handlers`), or why not.
type GroupsRaw = (Result<(), String>, Result<(), String>);

/// Reads this kernel's BTF once (vmlinux, then kvm's and the vendor's
/// split BTF on top of it) and decides per group, filling the offsets the
/// raw `kvm_exit` needs; `Err` when no group can go raw.
fn resolve_raw(offsets: &mut RawOffsets) -> Result<GroupsRaw, String> {
    let dir = std::path::Path::new(BTF_DIR);
    let module = dir.join("kvm").exists().then_some("kvm");
    if module.is_none() && std::path::Path::new("/sys/module/kvm/initstate").exists() {
        return Err(format!(
            "the kvm module has no BTF ({BTF_DIR}/kvm is missing: it was built without it)"
        ));
    }
    let no_btf = |e: crate::btf::BtfError| format!("no kernel BTF ({e})");
    let vmlinux = Vmlinux::load(dir).map_err(no_btf)?;
    let kvm = vmlinux.with_module(dir, module).map_err(no_btf)?;
    let vmexit =
        check_args(&kvm, Group::Vmexit).and_then(|()| vmexit_offsets(dir, &vmlinux, &kvm, offsets));
    Ok((vmexit, check_args(&kvm, Group::Handlers)))
}

/// Checks the raw programs of `group` against their BTF prototypes.
fn check_args(btf: &Btf, group: Group) -> Result<(), String> {
    for hook in HOOKS {
        let Some(raw) = hook.raw.as_ref().filter(|r| r.group == group) else {
            continue;
        };
        let args = btf.tracepoint_args(hook.event).ok_or_else(|| {
            format!(
                "no BTF prototype for {} (btf_trace_{})",
                hook.event, hook.event
            )
        })?;
        for (i, want) in raw.args.iter().enumerate() {
            let ok = match (want, args.get(i)) {
                (Want::Int(size), Some(Arg::Int(got))) => got == size,
                (Want::Vcpu, Some(Arg::StructPtr(name))) => name == "kvm_vcpu",
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "{} argument {i} is {:?} in BTF, not {want:?}",
                    hook.event,
                    args.get(i)
                ));
            }
        }
    }
    Ok(())
}

/// The vendor offsets of the raw `kvm_exit` program.
fn vmexit_offsets(
    dir: &std::path::Path,
    vmlinux: &Vmlinux,
    kvm: &Btf,
    offsets: &mut RawOffsets,
) -> Result<(), String> {
    let field = |btf: &Btf, name: &str, path: &[&str], sizes: &[u32]| match btf.offset(name, path) {
        Some((off, size)) if sizes.contains(&size) => Ok(off),
        Some((_, size)) => Err(format!(
            "struct {name}.{} is {size} bytes in BTF",
            path.join(".")
        )),
        None => Err(format!("no struct {name}.{} in BTF", path.join("."))),
    };
    offsets.kvm_vcpu_id = field(kvm, "kvm_vcpu", &["vcpu_id"], &[4])?;
    let vendor = ["kvm_amd", "kvm_intel"]
        .into_iter()
        .find(|m| std::path::Path::new("/sys/module").join(m).exists())
        .ok_or_else(|| "no VMX/SVM vendor module (kvm_amd, kvm_intel) is loaded".to_owned())?;
    let module_btf;
    let btf = if dir.join(vendor).exists() {
        module_btf = vmlinux
            .with_module(dir, Some(vendor))
            .map_err(|e| e.to_string())?;
        &module_btf
    } else if std::path::Path::new("/sys/module")
        .join(vendor)
        .join("initstate")
        .exists()
    {
        return Err(format!(
            "{vendor} has no BTF ({BTF_DIR}/{vendor} is missing: the module was built without it)"
        ));
    } else {
        // Built into the kernel (and so is kvm): its types are in vmlinux.
        kvm
    };
    if vendor == "kvm_amd" {
        offsets.svm_vmcb = field(btf, "vcpu_svm", &["vmcb"], &[8])?;
        offsets.vmcb_exit_code = field(btf, "vmcb", &["control", "exit_code"], &[4, 8])?;
    } else {
        offsets.vmx_exit_reason = field(btf, "vcpu_vmx", &["exit_reason"], &[4])?;
    }
    Ok(())
}

/// A failed system call on map `map`, as a [`LoadError`].
pub(crate) fn syscall_error(
    map: &'static str,
    call: &'static str,
    io_error: std::io::Error,
) -> LoadError {
    map_error(
        map,
        aya::maps::MapError::SyscallError(aya::sys::SyscallError { call, io_error }),
    )
}

fn map_error(map: &'static str, source: aya::maps::MapError) -> LoadError {
    LoadError::Map {
        map,
        source: Box::new(source),
    }
}

fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map_mut(name)
        .ok_or_else(|| map_error(name, aya::maps::MapError::InvalidName { name: name.into() }))?;
    T::try_from(map).map_err(|e| map_error(name, e))
}

/// A read-only view of a map.
pub(crate) fn map_ref<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map(name)
        .ok_or_else(|| map_error(name, aya::maps::MapError::InvalidName { name: name.into() }))?;
    T::try_from(map).map_err(|e| map_error(name, e))
}
