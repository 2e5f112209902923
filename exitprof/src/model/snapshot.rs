//! One snapshot of every counter, summed over CPUs: what every presenter
//! (table, JSON, TUI, record, exporter) reads. Field names are the
//! `--json` contract of README.md: add fields, never rename.
use exitprof_common::Isa;
use serde::{Deserialize, Serialize};

use super::events::Events;
use super::per_second::PerSecond;
use super::sites::{SiteRow, Symbols};
use super::status::{Attached, Backend, MirrorScope, MirrorState, isa_name};

/// One snapshot of every counter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The host's KVM backend.
    pub backend: Backend,
    /// Time the counters cover.
    pub interval_ns: u64,
    /// How the KVM programs are attached.
    #[serde(default)]
    pub attach_mode: Attached,
    /// Why programs are classic, when any are, and why exits in flight
    /// are kept in hash maps, when they are ("" when all are raw, in task
    /// storage).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub attach_note: String,
    /// Whether `kvm_exit`/`kvm_entry` fire on this backend; when false,
    /// `exits` is empty because nothing can be seen, not because nothing
    /// exited.
    #[serde(default)]
    pub vmexit_available: bool,
    /// Per exit reason (rows without `pid`), then, with a breakdown, per
    /// (process, vCPU, reason) (rows with `pid` and `vcpu`, no histogram).
    pub exits: Vec<ExitRow>,
    /// Exit-handler events.
    pub events: Events,
    /// Events lost to full maps.
    pub dropped: u64,
    /// The guest CPUID mirror of a patched KVM (absent in recordings older
    /// than the mirror).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mirror: Option<MirrorState>,
    /// Whose exits the guests read, while registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mirror_scope: Option<MirrorScope>,
    /// exitprof's own cost per program (with `--cost`; kernel BPF stats).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<ProgramCost>,
    /// Exits per second over `interval_ns`; absent where `kvm_exit` cannot
    /// fire (`vmexit_available` false), never a zero that means "cannot".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exits_per_s: Option<PerSecond>,
    /// Exit-handler events (every kind of `events`, userspace exits not
    /// included) per second over `interval_ns`.
    #[serde(default)]
    pub events_per_s: PerSecond,
    /// Exit sites (with `--sites`): exits by (VM, reason, guest RIP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<SiteRow>,
}

/// What one of exitprof's programs cost, from the kernel's BPF statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramCost {
    /// Program (and tracepoint) name.
    pub name: String,
    /// Runs.
    pub run_count: u64,
    /// Time in the program over all runs.
    pub run_time_ns: u64,
}

impl ProgramCost {
    /// Mean time per run.
    #[must_use]
    pub fn ns_per_run(&self) -> u64 {
        self.run_time_ns.checked_div(self.run_count).unwrap_or(0)
    }
}

/// One exit reason's statistics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRow {
    /// The isa whose table names `reason`.
    #[serde(with = "isa_name")]
    pub isa: Isa,
    /// Raw hardware code (VMX basic reason, SVM exit code).
    pub reason: u32,
    /// Name as the kernel prints it.
    pub name: String,
    /// VMM process id, in a per-process breakdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// vCPU id, in a per-vCPU breakdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu: Option<u32>,
    /// Exits (counted at exit).
    pub count: u64,
    /// Exits whose re-entry was seen (the ones the times cover).
    #[serde(default)]
    pub timed: u64,
    /// Sum of exit-to-entry durations.
    pub total_ns: u64,
    /// Shortest duration (0 when none was timed).
    pub min_ns: u64,
    /// Longest duration.
    pub max_ns: u64,
    /// log2 histogram: bucket i counts durations in [2^i, 2^(i+1)) ns.
    pub hist_log2_ns: Vec<u64>,
    /// The VM's name (`host::vmname`), in a per-process breakdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// Exits per second over the snapshot's interval.
    #[serde(default)]
    pub rate_per_s: PerSecond,
}

impl Default for ExitRow {
    fn default() -> Self {
        Self {
            isa: Isa::Vmx,
            reason: 0,
            name: String::new(),
            pid: None,
            vcpu: None,
            count: 0,
            timed: 0,
            total_ns: 0,
            min_ns: 0,
            max_ns: 0,
            hist_log2_ns: Vec::new(),
            vm: None,
            rate_per_s: PerSecond::default(),
        }
    }
}

impl ExitRow {
    /// Mean duration of the timed exits.
    #[must_use]
    pub fn avg_ns(&self) -> u64 {
        self.total_ns.checked_div(self.timed).unwrap_or(0)
    }
}

impl Snapshot {
    /// An empty snapshot of `backend`.
    #[must_use]
    pub fn empty(backend: Backend) -> Self {
        Self {
            backend,
            vmexit_available: backend.emits_vmexit(),
            ..Self::default()
        }
    }

    /// The per-reason rows (a breakdown adds rows with `pid`/`vcpu` after
    /// them, which repeat the same exits).
    pub fn reason_rows(&self) -> impl Iterator<Item = &ExitRow> {
        self.exits.iter().filter(|r| r.pid.is_none())
    }

    /// Total exits.
    #[must_use]
    pub fn total_exits(&self) -> u64 {
        self.reason_rows().map(|r| r.count).sum()
    }

    /// Total time in exits.
    #[must_use]
    pub fn total_exit_ns(&self) -> u64 {
        self.reason_rows().map(|r| r.total_ns).sum()
    }

    /// What happened between `earlier` and `self` (counters subtract;
    /// minimum and maximum stay those of `self`, they cannot be undone).
    /// Rows with no new events are left out.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        let mut out = self.clone();
        out.interval_ns = self.interval_ns.saturating_sub(earlier.interval_ns);
        out.dropped = self.dropped.saturating_sub(earlier.dropped);
        // An index, not a search per row: with thousands of (pid, vCPU,
        // reason) rows a search per row is quadratic.
        let before: std::collections::HashMap<_, &ExitRow> = earlier
            .exits
            .iter()
            .map(|e| ((e.isa, e.reason, e.pid, e.vcpu), e))
            .collect();
        out.exits = self
            .exits
            .iter()
            .filter_map(|row| {
                let before = before
                    .get(&(row.isa, row.reason, row.pid, row.vcpu))
                    .copied();
                let mut row = row.clone();
                if let Some(b) = before {
                    row.count = row.count.saturating_sub(b.count);
                    row.timed = row.timed.saturating_sub(b.timed);
                    row.total_ns = row.total_ns.saturating_sub(b.total_ns);
                    for (h, hb) in row.hist_log2_ns.iter_mut().zip(&b.hist_log2_ns) {
                        *h = h.saturating_sub(*hb);
                    }
                }
                (row.count > 0 || row.timed > 0).then_some(row)
            })
            .collect();
        out.programs = self
            .programs
            .iter()
            .map(|p| {
                let before = earlier.programs.iter().find(|b| b.name == p.name);
                ProgramCost {
                    name: p.name.clone(),
                    run_count: p
                        .run_count
                        .saturating_sub(before.map_or(0, |b| b.run_count)),
                    run_time_ns: p
                        .run_time_ns
                        .saturating_sub(before.map_or(0, |b| b.run_time_ns)),
                }
            })
            .collect();
        out.events = self.events.since(&earlier.events);
        let sites_before: std::collections::HashMap<_, &SiteRow> =
            earlier.sites.iter().map(|s| (s.key(), s)).collect();
        out.sites = self
            .sites
            .iter()
            .filter_map(|site| {
                let mut site = site.clone();
                if let Some(b) = sites_before.get(&site.key()) {
                    site.count = site.count.saturating_sub(b.count);
                    site.timed = site.timed.saturating_sub(b.timed);
                    site.total_ns = site.total_ns.saturating_sub(b.total_ns);
                }
                (site.count > 0 || site.timed > 0).then_some(site)
            })
            .collect();
        out.fill_rates();
        out
    }

    /// Names the VMs of the rows with a pid (per-vCPU rows and sites) from
    /// `name`, which knows the names of VM processes (`host::vmname`).
    pub fn name_vms(&mut self, name: impl Fn(u32) -> Option<String>) {
        for row in &mut self.exits {
            if let Some(pid) = row.pid {
                row.vm = name(pid);
            }
        }
        for site in &mut self.sites {
            site.vm = name(site.pid);
        }
    }

    /// Names each site's RIP with `symbols` (`--guest-symbols`).
    pub fn symbolize(&mut self, symbols: &Symbols) {
        for site in &mut self.sites {
            site.symbol = symbols.lookup(site.rip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::events::{CpuidRow, PioRow};

    fn exit(reason: u32, count: u64, timed: u64, total_ns: u64) -> ExitRow {
        ExitRow {
            isa: Isa::Svm,
            reason,
            name: "x".into(),
            count,
            timed,
            total_ns,
            min_ns: 1,
            max_ns: 9,
            hist_log2_ns: vec![timed, 0],
            ..ExitRow::default()
        }
    }

    #[test]
    fn since_subtracts_counters_and_drops_idle_rows() {
        let mut a = Snapshot::empty(Backend::Svm);
        a.interval_ns = 1_000;
        a.exits = vec![exit(0x72, 10, 10, 100), exit(0x78, 3, 3, 30)];
        a.events.pio = vec![PioRow {
            port: 0xe9,
            write: true,
            size: 1,
            count: 5,
            ..Default::default()
        }];
        a.dropped = 1;
        let mut b = a.clone();
        b.interval_ns = 3_000;
        b.exits = vec![
            exit(0x72, 25, 24, 260),
            exit(0x78, 3, 3, 30),
            exit(0x400, 2, 2, 8),
        ];
        b.events.pio[0].count = 12;
        b.dropped = 4;
        let d = b.since(&a);
        assert_eq!(d.interval_ns, 2_000);
        assert_eq!(d.dropped, 3);
        assert_eq!(d.exits.len(), 2);
        assert_eq!(
            (d.exits[0].count, d.exits[0].timed, d.exits[0].total_ns),
            (15, 14, 160)
        );
        assert_eq!(d.exits[0].hist_log2_ns, vec![14, 0]);
        assert_eq!((d.exits[1].reason, d.exits[1].count), (0x400, 2));
        assert_eq!(d.events.pio[0].count, 7);
    }

    #[test]
    fn json_field_names_follow_the_contract() {
        let mut s = Snapshot::empty(Backend::Pvm);
        s.exits = vec![exit(0x72, 1, 1, 5)];
        s.events.cpuid = vec![CpuidRow {
            leaf: 0,
            subleaf: Some(0),
            count: 7,
            ..Default::default()
        }];
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        for key in ["backend", "interval_ns", "exits", "events", "dropped"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["backend"], "pvm");
        let row = &v["exits"][0];
        for key in [
            "isa",
            "reason",
            "name",
            "count",
            "total_ns",
            "min_ns",
            "max_ns",
            "hist_log2_ns",
        ] {
            assert!(row.get(key).is_some(), "{key}");
        }
        assert!(row.get("pid").is_none(), "pid only in a breakdown");
        for key in ["cpuid", "pio", "mmio", "msr", "hypercall", "userspace_exit"] {
            assert!(v["events"].get(key).is_some(), "{key}");
        }
        assert_eq!(v["events"]["cpuid"][0]["count"], 7);
        let back: Snapshot = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}

#[cfg(test)]
pub(crate) mod contract {
    use super::*;
    use crate::model::events::{CpuidRow, HypercallRow, MmioRow, MsrRow, PioRow, UserspaceExitRow};

    /// A snapshot with every field of the `--json` contract set.
    #[expect(clippy::too_many_lines, reason = "every field of the contract, set")]
    pub fn fixed() -> Snapshot {
        let mut s = Snapshot::empty(Backend::Svm);
        s.interval_ns = 2_000_000_000;
        s.attach_mode = Attached::Mixed;
        s.attach_note = "kvm_exit/kvm_entry classic: kvm_amd has no BTF".into();
        s.guest_mirror = Some(MirrorState::Registered);
        s.guest_mirror_scope = Some(MirrorScope::Vm);
        let mut hist = vec![0; 31];
        hist[10] = 2;
        hist[11] = 1;
        s.exits = vec![
            ExitRow {
                isa: Isa::Svm,
                reason: 0x72,
                name: "cpuid".into(),
                count: 3,
                timed: 3,
                total_ns: 4_000,
                min_ns: 1_024,
                max_ns: 2_000,
                hist_log2_ns: hist,
                ..ExitRow::default()
            },
            ExitRow {
                isa: Isa::Svm,
                reason: 0x72,
                name: "cpuid".into(),
                pid: Some(4242),
                vcpu: Some(0),
                count: 3,
                timed: 3,
                total_ns: 4_000,
                min_ns: 0,
                max_ns: 2_000,
                hist_log2_ns: vec![],
                vm: Some("web1".into()),
                ..ExitRow::default()
            },
        ];
        s.sites = vec![SiteRow {
            isa: Isa::Svm,
            reason: 0x72,
            name: "cpuid".into(),
            pid: 4242,
            vm: Some("web1".into()),
            rip: 0xffff_ffff_8103_6a32,
            symbol: Some("native_cpuid+0x12".into()),
            count: 3,
            timed: 3,
            total_ns: 4_000,
            max_ns: 2_000,
            rate_per_s: PerSecond::default(),
        }];
        s.events = Events {
            cpuid: vec![CpuidRow {
                leaf: 0x4fff_fffd,
                subleaf: Some(0x72),
                count: 3,
                ..Default::default()
            }],
            pio: vec![PioRow {
                port: 0xe9,
                write: true,
                size: 1,
                count: 5,
                ..Default::default()
            }],
            mmio: vec![MmioRow {
                gpa: 0xd000_0000,
                write: false,
                count: 2,
                ..Default::default()
            }],
            msr: vec![MsrRow {
                index: 0x8b,
                write: true,
                count: 1,
                ..Default::default()
            }],
            hypercall: vec![HypercallRow {
                nr: 0x283,
                count: 1,
                ..Default::default()
            }],
            userspace_exit: vec![UserspaceExitRow {
                reason: 2,
                name: "IO".into(),
                count: 5,
                roundtrips: 5,
                roundtrip_total_ns: 50_000,
                roundtrip_max_ns: 20_000,
                ..Default::default()
            }],
        };
        s.dropped = 7;
        s.programs = vec![ProgramCost {
            name: "kvm_exit_raw".into(),
            run_count: 3,
            run_time_ns: 300,
        }];
        s.fill_rates();
        s
    }

    /// The example of README.md's "JSON" section: the contract, byte for
    /// byte, as `stat --json` prints it.
    fn readme_example() -> String {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("<!-- json-contract-example -->")
            .expect("README.md marks its JSON example");
        let block = &readme[start..];
        let body = &block[block.find("```json\n").expect("a json block") + 8..];
        body[..body.find("\n```").expect("the block ends")].to_owned()
    }

    #[test]
    fn stat_json_is_the_readme_example_byte_for_byte() {
        let printed = serde_json::to_string(&fixed()).unwrap();
        assert_eq!(printed, readme_example());
        let back: Snapshot = serde_json::from_str(&printed).unwrap();
        assert_eq!(back, fixed());
    }
}
