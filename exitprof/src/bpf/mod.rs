//! The only code that holds an `aya::Ebpf`: loads the embedded eBPF
//! object, hands it its configuration (record offsets from tracefs,
//! structure offsets from BTF, the process filter), attaches the programs
//! of the hook table and keeps them attached for the [`Profiler`]'s
//! lifetime: dropping it detaches every program (also on Ctrl-C and on
//! errors, by unwinding the owner). Snapshots come out; maps never do.
mod batch;
pub mod error;
pub mod hooks;
mod maps;
mod mirror;
pub mod plan;
pub mod readout;

use std::time::Instant;

use aya::{
    Ebpf, EbpfLoader,
    maps::HashMap,
    programs::{ProgramError, RawTracePoint, TracePoint},
};
use exitprof_common::{
    Config,
    config::{FILTER_ALL, FILTER_TRACKED, MIRROR_HOST, MIRROR_OFF, MIRROR_VM},
    guest_abi::Scope,
};

use crate::{
    host::{
        backend, procfs,
        tracefs::{self, TracefsError},
    },
    model::{Attached, Backend, MirrorScope, ProgramCost, Snapshot},
};
pub use error::LoadError;
use hooks::{Hook, RawHook};
use maps::{map_error, map_mut, syscall_error};
pub use mirror::MirrorChoice;
use mirror::{Mirror, MirrorStatus};
pub use plan::{AttachMode, InFlightMode, InFlightStore};
use plan::{Host, RawPlan};

/// The eBPF object `build.rs` produced (empty with `AYA_BUILD_SKIP=1`),
/// keeping what vCPU threads have in flight in task storage ...
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/exitprof"));
/// ... and the same programs with hash maps instead, for kernels without
/// task storage ([`InFlightStore`]).
static EBPF_OBJECT_HASH: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/exitprof-hash"));

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
    /// Task storage or hash maps for what vCPU threads have in flight.
    pub in_flight: InFlightMode,
    /// Whose exits the guests of a patched KVM read.
    pub mirror: MirrorChoice,
    /// Also count exits per (process, reason, guest RIP): exit sites. It
    /// costs a map update per exit, so it is off unless asked for.
    pub sites: bool,
}

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
    /// See [`RawPlan::attached`].
    attached_as: Attached,
    /// See [`RawPlan::note`].
    attach_note: String,
    /// Whether exits are broken down per (process, vCPU).
    breakdown: bool,
    /// Whether exit sites are counted.
    sites: bool,
}

impl Profiler {
    /// Loads and attaches everything `options` asks for.
    ///
    /// # Errors
    /// See [`LoadError`]; every variant says what to do.
    pub fn start(options: &Options) -> Result<Self, LoadError> {
        if !may_load_bpf() {
            return Err(LoadError::NotRoot);
        }
        let host = Host::this();
        let backend = backend::detect_in(&host.sys_module);
        let (object, hooks, why_hash) = object_for(options.in_flight, &host, backend)?;
        let formats = read_formats(&hooks)?;
        let find = |event: &str| {
            formats
                .iter()
                .find(|(h, _)| h.event == event)
                .and_then(|(_, f)| f.as_ref())
        };
        let plan = RawPlan::decide(options.attach, &host, options.sites)?;
        let patched = options.mirror != MirrorChoice::Off && mirror::patched();
        let config = Config {
            filter: match options.filter {
                Filter::All => FILTER_ALL,
                Filter::Tracked(_) => FILTER_TRACKED,
            },
            breakdown: u32::from(options.breakdown),
            mirror: match options.mirror {
                _ if !patched => MIRROR_OFF,
                MirrorChoice::Off => MIRROR_OFF,
                MirrorChoice::Vm => MIRROR_VM,
                MirrorChoice::Host => MIRROR_HOST,
            },
            sites: u32::from(options.sites),
            offsets: hooks::offsets(&find)?,
            raw: plan.offsets,
        };
        let mut loader = EbpfLoader::new();
        loader.override_global("CONFIG", &config, true);
        // aya 0.14 has no type for task storage maps (`Map::Unsupported`);
        // user space never opens `IN_FLIGHT`, only the programs use it.
        loader.allow_unsupported_maps();
        size_maps(&mut loader, options);
        let mut ebpf = loader
            .load(object)
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
        let mirror = Mirror::choose(ebpf.map("GUEST_MIRROR"), options.mirror, patched);
        Ok(Self {
            ebpf,
            backend,
            started: Instant::now(),
            attached,
            stats,
            mirror,
            attached_as: plan.attached(),
            attach_note: join_notes(&plan.note(), &why_hash),
            breakdown: options.breakdown,
            sites: options.sites,
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

    /// The processes counted under `Filter::Tracked`: those given, and
    /// the ones they forked since (empty under `Filter::All`).
    #[must_use]
    pub fn tracked_pids(&self) -> Vec<u32> {
        let Ok(tracked) = maps::map_ref::<HashMap<_, u32, u8>>(&self.ebpf, "TRACKED_TGIDS") else {
            return Vec::new();
        };
        tracked.keys().filter_map(Result::ok).collect()
    }

    /// Fills the per-vCPU breakdown map with `keys` synthetic keys (pid
    /// `4_000_000`, 30 SVM reasons from 0x60 per vCPU), so that the readout
    /// and the TUI can be measured under a big host's load on a machine
    /// whose KVM emits no `kvm_exit`. Never used for a real profile.
    ///
    /// # Errors
    /// When the map refuses the keys.
    pub fn fill_breakdown_for_load_test(&mut self, keys: u32) -> Result<(), LoadError> {
        self.fill_synthetic((0..keys).map(|i| (4_000_000, i / 30, i % 30)))
    }

    /// Like [`Self::fill_breakdown_for_load_test`], for VMs: `vcpus` vCPUs
    /// × 30 reasons for each process of `pids` (the exporter's load test,
    /// and its series-retirement test on hosts without `kvm_exit`).
    ///
    /// # Errors
    /// When the map refuses the keys.
    pub fn fill_vms_for_load_test(&mut self, pids: &[u32], vcpus: u32) -> Result<(), LoadError> {
        self.fill_synthetic(
            pids.iter()
                .flat_map(|&pid| (0..vcpus * 30).map(move |i| (pid, i / 30, i % 30))),
        )
    }

    /// Inserts a synthetic breakdown key per (pid, vCPU, reason index).
    fn fill_synthetic(
        &mut self,
        keys: impl Iterator<Item = (u32, u32, u32)>,
    ) -> Result<(), LoadError> {
        use aya::maps::{PerCpuHashMap, PerCpuValues};
        use exitprof_common::{
            maps::{BreakdownKey, BreakdownStats},
            reasons::{Isa, slot},
        };
        let cpus = maps::possible_cpus("EXIT_BREAKDOWN")?;
        let mut map: PerCpuHashMap<_, BreakdownKey, BreakdownStats> =
            map_mut(&mut self.ebpf, "EXIT_BREAKDOWN")?;
        for (pid, vcpu, r) in keys {
            let key = BreakdownKey {
                pid,
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

    /// Deletes the per-vCPU breakdown entries of processes `pids` (VMs
    /// that are gone), so that the map does not fill up with the dead on
    /// a host whose VMs come and go; returns how many were deleted.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn forget_processes(&mut self, pids: &[u32]) -> Result<usize, LoadError> {
        use aya::maps::PerCpuHashMap;
        use exitprof_common::maps::{BreakdownKey, BreakdownStats};
        let mut map: PerCpuHashMap<_, BreakdownKey, BreakdownStats> =
            map_mut(&mut self.ebpf, "EXIT_BREAKDOWN")?;
        let doomed: Vec<BreakdownKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| pids.contains(&k.pid))
            .collect();
        for key in &doomed {
            // Already gone is as good as deleted.
            let _ = map.remove(key);
        }
        Ok(doomed.len())
    }

    /// Whether userspace round trips are measured: `kvm_entry` ends them
    /// where it fires, `sys_enter_ioctl` elsewhere.
    #[must_use]
    pub fn measures_roundtrips(&self) -> bool {
        self.backend.emits_vmexit() || self.attached.contains(&"sys_enter_ioctl")
    }

    /// Reads every map into one snapshot covering the time since start.
    ///
    /// # Errors
    /// When a map cannot be read.
    pub fn snapshot(&self) -> Result<Snapshot, LoadError> {
        let mut snapshot = readout::read(&self.ebpf, self.backend, self.breakdown)?;
        if self.sites {
            snapshot.sites = readout::read_sites(&self.ebpf)?;
        }
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
        snapshot.guest_mirror = Some(self.mirror.status.state());
        snapshot.guest_mirror_scope = match self.mirror.status {
            MirrorStatus::Registered(Scope::Vm) => Some(MirrorScope::Vm),
            MirrorStatus::Registered(Scope::Host) => Some(MirrorScope::Host),
            _ => None,
        };
        snapshot.attach_mode = self.attached_as;
        self.attach_note.clone_into(&mut snapshot.attach_note);
        snapshot.fill_rates();
        Ok(snapshot)
    }
}

/// Whether this process may load and attach tracing programs: root, or
/// `CAP_BPF` with `CAP_PERFMON` (Linux 5.8 and later), or `CAP_SYS_ADMIN`. A
/// service can then run without full root (see `packaging/`).
fn may_load_bpf() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let caps = procfs::effective_capabilities();
    let has = |cap: u32| caps & (1 << cap) != 0;
    (has(CAP_BPF) && has(CAP_PERFMON)) || has(CAP_SYS_ADMIN)
}

/// The eBPF object for the in-flight store `mode` asks for on `host`, its
/// hooks on `backend`, and why it keeps exits in flight in hash maps (""
/// in task storage).
fn object_for(
    mode: InFlightMode,
    host: &Host,
    backend: Backend,
) -> Result<(&'static [u8], Vec<Hook>, String), LoadError> {
    let (store, why) = InFlightStore::decide(mode, host)?;
    let object = match store {
        InFlightStore::TaskStorage => EBPF_OBJECT,
        InFlightStore::Hash => EBPF_OBJECT_HASH,
    };
    if object.is_empty() {
        return Err(LoadError::NoObject);
    }
    let hooks = hooks::for_backend(backend);
    let note = match store {
        InFlightStore::TaskStorage => String::new(),
        InFlightStore::Hash => format!("exits in flight in hash maps: {why}"),
    };
    Ok((object, hooks, note))
}

/// `a; b`, or whichever is not empty.
fn join_notes(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (_, true) => a.to_owned(),
        (true, false) => b.to_owned(),
        (false, false) => format!("{a}; {b}"),
    }
}

/// Map capacities other than the built-in ones.
fn size_maps(loader: &mut EbpfLoader, options: &Options) {
    if let Some(entries) = options.map_entries {
        for map in hooks::sized_maps() {
            loader.map_max_entries(map, entries);
        }
    }
    if !options.sites {
        // Preallocated per CPU: unused, it would still cost memory.
        loader.map_max_entries("EXIT_SITES", 1);
    }
}

/// Each hook with its tracepoint's format; `None` for an optional
/// tracepoint this kernel lacks (its program is not attached).
fn read_formats(hooks: &[Hook]) -> Result<Vec<(&Hook, Option<tracefs::Format>)>, LoadError> {
    let root = tracefs::ensure_mounted()?;
    let mut formats = Vec::new();
    for hook in hooks {
        match tracefs::read_format(&root, hook.category, hook.event) {
            Ok(format) => formats.push((hook, Some(format))),
            Err(TracefsError::MissingEvent { .. }) if !hook.required => {
                formats.push((hook, None));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(formats)
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
