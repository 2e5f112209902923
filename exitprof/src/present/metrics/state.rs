//! The exporter's running totals: what `/metrics` shows, fed one snapshot
//! per readout. Every exported counter is a sum of the positive steps the
//! kernel's counter took between readouts (a kernel counter that goes
//! down was reset, and all of its new value is new), so an exported
//! counter never goes backwards, whatever happens to map entries. No I/O:
//! whether a process lives and what it is called come from a
//! [`Processes`] the caller hands in, and time is the caller's too.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::Duration,
};

use exitprof_common::{Isa, maps::HIST_BUCKETS};

use crate::model::{
    ExitRow, Snapshot,
    events::{EventKind, EventVisitor, UserspaceExitRow},
};

/// What the exporter needs to know about processes, and cannot look up
/// itself (presenters do no I/O).
pub trait Processes {
    /// Whether process `pid` is still running.
    fn alive(&self, pid: u32) -> bool;
    /// The VM's name (from its VMM's command line), "" when unknown.
    fn name(&self, pid: u32) -> String;
}

/// What a kernel counter gained since its reading `last`, which becomes
/// `now`: a counter that went down was reset (its entry deleted and
/// recreated), so all of `now` is new.
pub fn advance(last: &mut u64, now: u64) -> u64 {
    let gained = if now >= *last { now - *last } else { now };
    *last = now;
    gained
}

/// One exit reason, host-wide: a counter and the duration histogram.
///
/// The exits and their time are the sums of the VMs' steps (the per-vCPU
/// rows: `serve` always reads them), not steps of the per-reason row: a
/// VM's map entries are deleted when its series go, and the readout's
/// per-reason counts, which are sums of those entries, then drop by the
/// VM's exits; a drop is read as a reset, which would count the other
/// VMs' exits again. The histogram's buckets come from the per-reason
/// row (`EXIT_STATS`, whose entries are never deleted).
#[derive(Debug, Default, Clone)]
pub struct Reason {
    /// The reason's name.
    pub name: String,
    /// Exits.
    pub count: u64,
    /// Exits per log2 bucket (their sum is the histogram's count).
    pub buckets: [u64; HIST_BUCKETS],
    /// Sum of the timed exits' durations.
    pub total_ns: u64,
    last: ReasonReading,
}

#[derive(Debug, Default, Clone)]
struct ReasonReading {
    buckets: [u64; HIST_BUCKETS],
}

/// The key of one exit series of a VM: vCPU (with `--by-vcpu`), isa, code.
pub type VmSeriesKey = (Option<u32>, Isa, u32);

/// One VM series: exits and time in them.
#[derive(Debug, Default, Clone)]
pub struct VmSeries {
    /// The reason's name.
    pub name: String,
    /// Exits.
    pub count: u64,
    /// Time in the timed exits.
    pub total_ns: u64,
}

/// One VM (VMM process) and its series.
#[derive(Debug, Default, Clone)]
pub struct Vm {
    /// Its name, looked up once when first seen.
    pub name: String,
    /// When the process was first seen gone (time since the exporter
    /// started); its series go `grace` later.
    pub exited_at: Option<Duration>,
    /// Series by (vCPU, isa, reason).
    pub series: BTreeMap<VmSeriesKey, VmSeries>,
    /// Kernel readings by (vCPU, isa, reason): (count, time in ns).
    last: HashMap<(u32, Isa, u32), (u64, u64)>,
}

/// Metric labels of a handler event's key, as `EventKind::key_labels`
/// gives them.
pub type KeyLabels = Vec<(&'static str, String)>;

/// One handler-event kind, its cardinality capped: the `top` keys by
/// events since the exporter started have a series of their own, all
/// others add to one `other` series.
///
/// A step of a key's count goes to the series the key had after the
/// previous readout; the ranking is then redone. So a key's own series
/// starts at 0 (the events that revealed it count under `other`), a key
/// that drops out of the top keeps its series' value for when it comes
/// back, and the sum over a kind's series is every event exactly once.
#[derive(Debug, Default, Clone)]
pub struct Capped {
    /// The kind's `--json` name (`cpuid`, `pio`, ...).
    pub kind: &'static str,
    /// The `kvm:` tracepoint its events come from.
    pub tracepoint: &'static str,
    /// The label names of its keys (for the `other` series, which is
    /// there from the start, at 0, so that rates see its first events).
    pub label_names: Vec<&'static str>,
    /// The values of the series of keys, shown while the key is promoted.
    pub shown: BTreeMap<KeyLabels, u64>,
    /// The keys with a series of their own.
    pub promoted: BTreeSet<KeyLabels>,
    /// Events of every other key.
    pub other: u64,
    /// Events per key since the exporter started (the ranking).
    totals: HashMap<KeyLabels, u64>,
    /// Kernel readings per key.
    last: HashMap<KeyLabels, u64>,
}

impl Capped {
    /// Adds one readout's rows, then ranks again.
    fn update(&mut self, rows: impl Iterator<Item = (KeyLabels, u64)>, top: usize) {
        for (labels, now) in rows {
            let gained = advance(self.last.entry(labels.clone()).or_default(), now);
            if gained == 0 {
                continue;
            }
            if self.promoted.contains(&labels) {
                *self.shown.entry(labels.clone()).or_default() += gained;
            } else {
                self.other += gained;
            }
            *self.totals.entry(labels).or_default() += gained;
        }
        let mut ranked: Vec<(&KeyLabels, u64)> = self.totals.iter().map(|(k, v)| (k, *v)).collect();
        ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        self.promoted = ranked.iter().take(top).map(|(k, _)| (*k).clone()).collect();
        for key in &self.promoted {
            self.shown.entry(key.clone()).or_default();
        }
    }
}

/// One userspace-exit reason: returns to the VMM and their round trips.
#[derive(Debug, Default, Clone)]
pub struct Userspace {
    /// `IO`, `MMIO`, ...
    pub name: String,
    /// Returns of `KVM_RUN`.
    pub count: u64,
    /// Round trips closed when the thread was back (`kvm_entry`, or on
    /// PVM the next `KVM_RUN`).
    pub roundtrips: u64,
    /// Their total time.
    pub roundtrip_total_ns: u64,
    /// The longest seen since the exporter started.
    pub roundtrip_max_ns: u64,
    last: (u64, u64, u64),
}

/// A program's cost (with `serve --cost`).
#[derive(Debug, Default, Clone)]
pub struct Program {
    /// Runs.
    pub runs: u64,
    /// Time in the program.
    pub run_ns: u64,
    last: (u64, u64),
}

/// What the exporter shows about itself besides its own counters: set by
/// the command before each render.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Cost {
    /// Map readouts done.
    pub readouts: u64,
    /// Time in them.
    pub readout_ns: u64,
    /// `/metrics` requests answered.
    pub scrapes: u64,
    /// Time spent answering them (readout, update, rendering), up to the
    /// previous scrape.
    pub scrape_ns: u64,
    /// Connections refused because `--max-connections` were open.
    pub http_rejected: u64,
    /// Connections that ended in an HTTP error (malformed, too large,
    /// too slow).
    pub http_errors: u64,
    /// CPU time of the exporter process, user and system.
    pub cpu_seconds: f64,
    /// Its resident set.
    pub rss_bytes: u64,
}

/// The facts of the info metric.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Info {
    /// The KVM backend.
    pub backend: String,
    /// raw, classic or mixed.
    pub attach_mode: String,
    /// The guest CPUID mirror's state.
    pub guest_mirror: String,
    /// Whose exits its guests read (`vm`, `host`; "" unregistered).
    pub guest_mirror_scope: String,
    /// Whether `kvm_exit` fires here.
    pub vmexit_available: bool,
}

/// Everything `/metrics` shows.
#[derive(Debug, Default, Clone)]
pub struct State {
    /// From the latest snapshot.
    pub info: Info,
    /// Host-wide per reason.
    pub reasons: BTreeMap<(Isa, u32), Reason>,
    /// Per VM process.
    pub vms: BTreeMap<u32, Vm>,
    /// Handler events, one per kind in table order.
    pub events: Vec<Capped>,
    /// Userspace exits by reason code.
    pub userspace: BTreeMap<u32, Userspace>,
    /// Events lost to full maps.
    pub dropped: u64,
    last_dropped: u64,
    /// Programs by name (with `--cost`).
    pub programs: BTreeMap<String, Program>,
    /// The exporter's own cost.
    pub cost: Cost,
    /// VMs whose series were removed; their map entries are being deleted
    /// (until then, their rows are ignored).
    retired: HashSet<u32>,
}

/// How the state is kept.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Keys with a series of their own per handler-event kind.
    pub top_keys: usize,
    /// How long a VM's series stay after its process is gone.
    pub grace: Duration,
    /// Per-vCPU VM series.
    pub by_vcpu: bool,
}

/// Feeds each handler-event kind's rows to its [`Capped`].
struct EventFeed<'a> {
    events: &'a mut Vec<Capped>,
    at: usize,
    top: usize,
}

impl EventVisitor for EventFeed<'_> {
    fn rows<K: EventKind>(&mut self, rows: &[K]) {
        if self.events.len() <= self.at {
            // The names of the key's labels, from any row: the `other`
            // series exists (at 0) before the first event.
            let label_names = K::default().key_labels().iter().map(|(n, _)| *n).collect();
            self.events.push(Capped {
                kind: K::NAME,
                tracepoint: K::SOURCE.tracepoint,
                label_names,
                ..Capped::default()
            });
        }
        self.events[self.at].update(rows.iter().map(|r| (r.key_labels(), r.count())), self.top);
        self.at += 1;
    }
}

impl State {
    /// Adds a readout taken `now` (since the exporter started). Returns
    /// the VMs whose series were removed now (their grace ended): the
    /// caller deletes their map entries.
    pub fn update(
        &mut self,
        snapshot: &Snapshot,
        now: Duration,
        processes: &dyn Processes,
        rules: Rules,
    ) -> Vec<u32> {
        self.info = Info {
            backend: snapshot.backend.name().to_owned(),
            attach_mode: snapshot.attach_mode.name().to_owned(),
            guest_mirror: snapshot.guest_mirror.map_or("none", mirror_name).to_owned(),
            guest_mirror_scope: match snapshot.guest_mirror_scope {
                Some(crate::model::MirrorScope::Vm) => "vm",
                Some(crate::model::MirrorScope::Host) => "host",
                None => "",
            }
            .to_owned(),
            vmexit_available: snapshot.vmexit_available,
        };
        for row in snapshot.reason_rows() {
            self.add_reason(row);
        }
        let retired = self.update_vms(snapshot, now, processes, rules);
        snapshot.events.each(&mut EventFeed {
            events: &mut self.events,
            at: 0,
            top: rules.top_keys,
        });
        for row in &snapshot.events.userspace_exit {
            self.add_userspace(row);
        }
        self.dropped += advance(&mut self.last_dropped, snapshot.dropped);
        for p in &snapshot.programs {
            let program = self.programs.entry(p.name.clone()).or_default();
            program.runs += advance(&mut program.last.0, p.run_count);
            program.run_ns += advance(&mut program.last.1, p.run_time_ns);
        }
        retired
    }

    /// A per-reason row: only its histogram (see [`Reason`]).
    fn add_reason(&mut self, row: &ExitRow) {
        let reason = self.reasons.entry((row.isa, row.reason)).or_default();
        row.name.clone_into(&mut reason.name);
        for (i, now) in row.hist_log2_ns.iter().enumerate().take(HIST_BUCKETS) {
            reason.buckets[i] += advance(&mut reason.last.buckets[i], *now);
        }
    }

    fn add_userspace(&mut self, row: &UserspaceExitRow) {
        let u = self.userspace.entry(row.reason).or_default();
        row.name.clone_into(&mut u.name);
        u.count += advance(&mut u.last.0, row.count);
        u.roundtrips += advance(&mut u.last.1, row.roundtrips);
        u.roundtrip_total_ns += advance(&mut u.last.2, row.roundtrip_total_ns);
        u.roundtrip_max_ns = u.roundtrip_max_ns.max(row.roundtrip_max_ns);
    }

    fn update_vms(
        &mut self,
        snapshot: &Snapshot,
        now: Duration,
        processes: &dyn Processes,
        rules: Rules,
    ) -> Vec<u32> {
        let mut seen = HashSet::new();
        // Per pid: whether its rows count (a retired VM's do not, unless
        // the pid is a new process); one liveness check per pid.
        let mut counts: HashMap<u32, bool> = HashMap::new();
        for row in snapshot.exits.iter().filter(|r| r.pid.is_some()) {
            let (Some(pid), vcpu) = (row.pid, row.vcpu.unwrap_or(0)) else {
                continue;
            };
            seen.insert(pid);
            let retired = &mut self.retired;
            let counted = *counts.entry(pid).or_insert_with(|| {
                // Rows of a VM whose series are gone, before its map
                // entries are: ignored, unless the pid is a new process.
                !retired.contains(&pid) || (processes.alive(pid) && retired.remove(&pid))
            });
            if !counted {
                continue;
            }
            let vm = self.vms.entry(pid).or_insert_with(|| Vm {
                name: processes.name(pid),
                ..Vm::default()
            });
            let last = vm.last.entry((vcpu, row.isa, row.reason)).or_default();
            let count = advance(&mut last.0, row.count);
            let total_ns = advance(&mut last.1, row.total_ns);
            let key = (rules.by_vcpu.then_some(vcpu), row.isa, row.reason);
            let series = vm.series.entry(key).or_default();
            if series.name.is_empty() {
                row.name.clone_into(&mut series.name);
            }
            series.count += count;
            series.total_ns += total_ns;
            let reason = self.reasons.entry((row.isa, row.reason)).or_default();
            if reason.name.is_empty() {
                row.name.clone_into(&mut reason.name);
            }
            reason.count += count;
            reason.total_ns += total_ns;
        }
        self.retired.retain(|pid| seen.contains(pid));
        let mut retired = Vec::new();
        self.vms.retain(|pid, vm| {
            if vm.exited_at.is_none() && !processes.alive(*pid) {
                vm.exited_at = Some(now);
            }
            let over = vm.exited_at.is_some_and(|at| now >= at + rules.grace);
            if over {
                retired.push(*pid);
            }
            !over
        });
        self.retired.extend(&retired);
        retired
    }
}

/// The guest mirror's state as its `--json` name.
const fn mirror_name(state: crate::model::MirrorState) -> &'static str {
    use crate::model::MirrorState;
    match state {
        MirrorState::Registered => "registered",
        MirrorState::Unpatched => "unpatched",
        MirrorState::Busy => "busy",
        MirrorState::Failed => "failed",
        MirrorState::Off => "off",
    }
}
