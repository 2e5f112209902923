//! `exitprof serve`'s presenter: snapshots in, Prometheus exposition out.
//! It keeps the exporter's running totals (`state.rs`: counters that never
//! go backwards, handler-event keys capped at a top N plus `other`, VM
//! series retired a grace period after their process is gone), has
//! prometheus-client encode them (`encode.rs`), and writes OpenMetrics or
//! Prometheus' text format (`text.rs`). No I/O: the command reads the
//! maps, asks `/proc`, and serves HTTP.
mod encode;
mod state;
mod text;

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use prometheus_client::registry::Registry;

pub use encode::Fixed;
use state::State;
pub use state::{Cost, Processes, Rules};
pub use text::Format;

use crate::model::Snapshot;

/// The exporter's state and its encoder.
#[derive(Debug)]
pub struct Exporter {
    registry: Registry,
    state: Arc<Mutex<State>>,
    rules: Rules,
}

impl Exporter {
    /// An exporter that has seen nothing yet.
    #[must_use]
    pub fn new(fixed: Fixed, rules: Rules) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(encode::Families {
            state: Arc::clone(&state),
            fixed,
        }));
        Self {
            registry,
            state,
            rules,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a snapshot read `now` (time since the exporter started);
    /// returns the VM processes whose series were removed now, whose map
    /// entries the caller should delete.
    pub fn update(
        &mut self,
        snapshot: &Snapshot,
        now: Duration,
        processes: &dyn Processes,
    ) -> Vec<u32> {
        let rules = self.rules;
        self.state().update(snapshot, now, processes, rules)
    }

    /// Sets what the exporter reports about its own cost.
    pub fn set_cost(&mut self, cost: Cost) {
        self.state().cost = cost;
    }

    /// The VM processes that have series now.
    #[cfg(test)]
    #[must_use]
    pub fn vms(&self) -> Vec<u32> {
        self.state().vms.keys().copied().collect()
    }

    /// Everything, in `format`.
    #[must_use]
    pub fn render(&self, format: Format) -> String {
        let mut open_metrics = String::new();
        // Writing into a String cannot fail, and our collector only fails
        // when its writer does.
        let _ = prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry);
        match format {
            Format::OpenMetrics => open_metrics,
            Format::Text => text::to_text_format(&open_metrics),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use exitprof_common::Isa;

    use super::*;
    use crate::model::{
        Backend, CpuidRow, ExitRow, MirrorState, PioRow, UserspaceExitRow,
        events::{HypercallRow, MmioRow, MsrRow},
    };

    /// Processes for tests: alive unless listed dead; names by pid.
    #[derive(Default)]
    struct Fake {
        dead: BTreeSet<u32>,
        names: BTreeMap<u32, String>,
    }

    impl Processes for Fake {
        fn alive(&self, pid: u32) -> bool {
            !self.dead.contains(&pid)
        }
        fn name(&self, pid: u32) -> String {
            self.names.get(&pid).cloned().unwrap_or_default()
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    fn exporter(top_keys: usize, by_vcpu: bool) -> Exporter {
        Exporter::new(
            Fixed {
                version: "0.1.0",
                scope: "all",
                top_keys,
            },
            Rules {
                top_keys,
                grace: Duration::from_secs(10),
                by_vcpu,
            },
        )
    }

    fn vm_row(pid: u32, vcpu: u32, count: u64, total_ns: u64) -> ExitRow {
        ExitRow {
            isa: Isa::Svm,
            reason: 0x72,
            name: "cpuid".into(),
            pid: Some(pid),
            vcpu: Some(vcpu),
            count,
            timed: count,
            total_ns,
            max_ns: 0,
            ..ExitRow::default()
        }
    }

    /// One of everything.
    fn fixture() -> Snapshot {
        let mut s = Snapshot::empty(Backend::Svm);
        s.attach_mode = crate::model::Attached::Raw;
        s.guest_mirror = Some(MirrorState::Unpatched);
        let mut hist = vec![0; 31];
        hist[10] = 2;
        hist[11] = 1;
        hist[30] = 1;
        s.exits = vec![
            ExitRow {
                isa: Isa::Svm,
                reason: 0x72,
                name: "cpuid".into(),
                count: 4,
                timed: 4,
                total_ns: 2_000_004_000,
                min_ns: 1_024,
                max_ns: 2_000_000_000,
                hist_log2_ns: hist,
                ..ExitRow::default()
            },
            vm_row(4242, 0, 3, 3_000),
            vm_row(4242, 1, 1, 2_000_001_000),
        ];
        s.events.cpuid = vec![CpuidRow {
            leaf: 0x4fff_fffd,
            subleaf: Some(0x72),
            count: 4,
            ..CpuidRow::default()
        }];
        s.events.pio = vec![PioRow {
            port: 0xe9,
            write: true,
            size: 1,
            count: 5,
            ..PioRow::default()
        }];
        s.events.mmio = vec![MmioRow {
            gpa: 0xd000_0000,
            write: false,
            count: 2,
            ..MmioRow::default()
        }];
        s.events.msr = vec![MsrRow {
            index: 0x8b,
            write: true,
            count: 1,
            ..MsrRow::default()
        }];
        s.events.hypercall = vec![HypercallRow {
            nr: 0x283,
            count: 1,
            ..HypercallRow::default()
        }];
        s.events.userspace_exit = vec![UserspaceExitRow {
            reason: 2,
            name: "IO".into(),
            count: 5,
            roundtrips: 4,
            roundtrip_total_ns: 50_000,
            roundtrip_max_ns: 20_000,
            ..UserspaceExitRow::default()
        }];
        s.dropped = 7;
        s
    }

    fn rendered() -> Exporter {
        let mut e = exporter(20, false);
        let procs = Fake {
            names: [(4242, "web \"1\"".to_owned())].into(),
            ..Fake::default()
        };
        // The first readout reveals every handler-event key: its events
        // count under "other", and the key has its own series from now on.
        let first = fixture();
        e.update(&Snapshot::empty(Backend::Svm), Duration::ZERO, &procs);
        e.update(&first, SECOND, &procs);
        e.set_cost(Cost {
            readouts: 2,
            readout_ns: 1_500_000,
            scrapes: 1,
            scrape_ns: 2_000_000,
            http_rejected: 0,
            http_errors: 1,
            cpu_seconds: 0.25,
            rss_bytes: 12_345_678,
        });
        e
    }

    /// The whole exposition of [`fixture`], byte for byte.
    const FIXTURE_OPEN_METRICS: &str = r#"# HELP exitprof What this exporter watches and how: backend, attach mode, guest mirror, version
# TYPE exitprof info
exitprof_info{version="0.1.0",backend="svm",attach_mode="raw",guest_mirror="unpatched",guest_mirror_scope="",vmexit_available="true",scope="all",top_keys="20"} 1
# HELP exitprof_exits VM exits per exit reason, host-wide (kvm:kvm_exit; VMX and SVM hosts)
# TYPE exitprof_exits counter
exitprof_exits_total{isa="svm",reason="0x72",name="cpuid"} 4
# HELP exitprof_exit_duration_seconds Time from VM exit to the next entry of the same vCPU thread, per exit reason, in the kernel's log2 buckets
# TYPE exitprof_exit_duration_seconds histogram
# UNIT exitprof_exit_duration_seconds seconds
exitprof_exit_duration_seconds_sum{isa="svm",reason="0x72",name="cpuid"} 2.000004
exitprof_exit_duration_seconds_count{isa="svm",reason="0x72",name="cpuid"} 4
exitprof_exit_duration_seconds_bucket{le="1e-9",isa="svm",reason="0x72",name="cpuid"} 0
exitprof_exit_duration_seconds_bucket{le="3e-9",isa="svm",reason="0x72",name="cpuid"} 0
exitprof_exit_duration_seconds_bucket{le="7e-9",isa="svm",reason="0x72",name="cpuid"} 0
exitprof_exit_duration_seconds_bucket{le="1.5e-8",isa="svm",reason="0x72",name="cpuid"} 0
exitprof_exit_duration_seconds_bucket{le="3.1e-8",isa="svm",reason="0x72",name="cpuid"} 0
exitprof_exit_duration_seconds_bucket{le="6.3e-8",isa="svm",reason="0x72",name="cpuid"} 0
exitprof_exit_duration_seconds_bucket{le="1.27e-7",isa="svm",reason="0x72",name="cpuid"} 0
exitprof_exit_duration_seconds_bucket{le="2.55e-7",isa="svm",reason="0x72",name="cpuid"} 0
exitprof_exit_duration_seconds_bucket{le="5.11e-7",isa="svm",reason="0x72",name="cpuid"} 0
exitprof_exit_duration_seconds_bucket{le="0.000001023",isa="svm",reason="0x72",name="cpuid"} 0
exitprof_exit_duration_seconds_bucket{le="0.000002047",isa="svm",reason="0x72",name="cpuid"} 2
exitprof_exit_duration_seconds_bucket{le="0.000004095",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="0.000008191",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="0.000016383",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="0.000032767",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="0.000065535",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="0.000131071",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="0.000262143",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="0.000524287",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="0.001048575",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="0.002097151",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="0.004194303",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="0.008388607",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="0.016777215",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="0.033554431",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="0.067108863",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="0.134217727",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="0.268435455",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="0.536870911",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="1.073741823",isa="svm",reason="0x72",name="cpuid"} 3
exitprof_exit_duration_seconds_bucket{le="+Inf",isa="svm",reason="0x72",name="cpuid"} 4
# HELP exitprof_vm_exits VM exits per VM process (pid, vm name) and exit reason
# TYPE exitprof_vm_exits counter
exitprof_vm_exits_total{pid="4242",vm="web \"1\"",isa="svm",reason="0x72",name="cpuid"} 4
# HELP exitprof_vm_exit_time_seconds Time in VM exits (exit to next entry) per VM process and exit reason
# TYPE exitprof_vm_exit_time_seconds counter
# UNIT exitprof_vm_exit_time_seconds seconds
exitprof_vm_exit_time_seconds_total{pid="4242",vm="web \"1\"",isa="svm",reason="0x72",name="cpuid"} 2.000004
# HELP exitprof_cpuid_events Exit-handler events of kvm:kvm_cpuid by key: the keys with the most events have a series each, the rest add up in the series labelled other
# TYPE exitprof_cpuid_events counter
exitprof_cpuid_events_total{leaf="0x4ffffffd",subleaf="0x72"} 0
exitprof_cpuid_events_total{leaf="other",subleaf="other"} 4
# HELP exitprof_pio_events Exit-handler events of kvm:kvm_pio by key: the keys with the most events have a series each, the rest add up in the series labelled other
# TYPE exitprof_pio_events counter
exitprof_pio_events_total{port="0x00e9",direction="out",size="1"} 0
exitprof_pio_events_total{port="other",direction="other",size="other"} 5
# HELP exitprof_mmio_events Exit-handler events of kvm:kvm_mmio by key: the keys with the most events have a series each, the rest add up in the series labelled other
# TYPE exitprof_mmio_events counter
exitprof_mmio_events_total{gpa="0x0000d0000000",direction="read"} 0
exitprof_mmio_events_total{gpa="other",direction="other"} 2
# HELP exitprof_msr_events Exit-handler events of kvm:kvm_msr by key: the keys with the most events have a series each, the rest add up in the series labelled other
# TYPE exitprof_msr_events counter
exitprof_msr_events_total{msr="0x0000008b",direction="write"} 0
exitprof_msr_events_total{msr="other",direction="other"} 1
# HELP exitprof_hypercall_events Exit-handler events of kvm:kvm_hypercall by key: the keys with the most events have a series each, the rest add up in the series labelled other
# TYPE exitprof_hypercall_events counter
exitprof_hypercall_events_total{nr="0x283"} 0
exitprof_hypercall_events_total{nr="other"} 1
# HELP exitprof_userspace_exits Returns of KVM_RUN to the VMM per KVM_EXIT reason (kvm:kvm_userspace_exit)
# TYPE exitprof_userspace_exits counter
exitprof_userspace_exits_total{reason="2",name="IO"} 5
# HELP exitprof_vmm_roundtrip_seconds VMM round trip: from KVM_RUN returning to the VMM until the thread is back in the guest (kvm_entry; on PVM, its next KVM_RUN), per KVM_EXIT reason (sum and count: the kernel keeps no buckets for it)
# TYPE exitprof_vmm_roundtrip_seconds histogram
# UNIT exitprof_vmm_roundtrip_seconds seconds
exitprof_vmm_roundtrip_seconds_sum{reason="2",name="IO"} 0.00005
exitprof_vmm_roundtrip_seconds_count{reason="2",name="IO"} 4
exitprof_vmm_roundtrip_seconds_bucket{le="+Inf",reason="2",name="IO"} 4
# HELP exitprof_vmm_roundtrip_max_seconds Longest VMM round trip since the exporter started, per KVM_EXIT reason
# TYPE exitprof_vmm_roundtrip_max_seconds gauge
# UNIT exitprof_vmm_roundtrip_max_seconds seconds
exitprof_vmm_roundtrip_max_seconds{reason="2",name="IO"} 0.00002
# HELP exitprof_dropped_events Events lost to full eBPF maps
# TYPE exitprof_dropped_events counter
exitprof_dropped_events_total 7
# HELP exitprof_readouts Readouts of the eBPF maps (driven by scrapes, at most one per --max-age)
# TYPE exitprof_readouts counter
exitprof_readouts_total 2
# HELP exitprof_readout_seconds Time spent reading the eBPF maps
# TYPE exitprof_readout_seconds counter
# UNIT exitprof_readout_seconds seconds
exitprof_readout_seconds_total 0.0015
# HELP exitprof_scrapes Requests of /metrics answered
# TYPE exitprof_scrapes counter
exitprof_scrapes_total 1
# HELP exitprof_scrape_seconds Time spent answering /metrics (readout, totals, encoding), up to the previous request
# TYPE exitprof_scrape_seconds counter
# UNIT exitprof_scrape_seconds seconds
exitprof_scrape_seconds_total 0.002
# HELP exitprof_http_connections_rejected Connections closed at once because --max-connections were open
# TYPE exitprof_http_connections_rejected counter
exitprof_http_connections_rejected_total 0
# HELP exitprof_http_errors Connections that ended in an error: malformed, too large or too slow requests
# TYPE exitprof_http_errors counter
exitprof_http_errors_total 1
# HELP process_cpu_seconds CPU time of the exporter process, user and system
# TYPE process_cpu_seconds counter
# UNIT process_cpu_seconds seconds
process_cpu_seconds_total 0.25
# HELP process_resident_memory_bytes Resident memory of the exporter process
# TYPE process_resident_memory_bytes gauge
# UNIT process_resident_memory_bytes bytes
process_resident_memory_bytes 12345678
# EOF
"#;

    #[test]
    fn one_of_everything_reads_exactly_so() {
        let e = rendered();
        assert_eq!(e.render(Format::OpenMetrics), FIXTURE_OPEN_METRICS);
        assert_eq!(
            e.render(Format::Text),
            text::to_text_format(FIXTURE_OPEN_METRICS)
        );
    }

    /// The value of the sample `name{labels}` (labels as written).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn counters_never_go_backwards() {
        let mut e = exporter(20, false);
        let procs = Fake::default();
        let mut s = Snapshot::empty(Backend::Svm);
        s.exits = vec![vm_row(7, 0, 10, 100)];
        s.dropped = 5;
        e.update(&s, Duration::ZERO, &procs);
        // The kernel's counters went down: the entries were deleted and
        // counted again from zero, so all of the new values are new.
        s.exits = vec![vm_row(7, 0, 3, 30)];
        s.dropped = 2;
        e.update(&s, SECOND, &procs);
        s.exits = vec![vm_row(7, 0, 5, 50)];
        e.update(&s, 2 * SECOND, &procs);
        let text = e.render(Format::Text);
        let series =
            r#"exitprof_vm_exits_total{pid="7",vm="",isa="svm",reason="0x72",name="cpuid"}"#;
        assert_eq!(sample(&text, series), Some(15.0), "{text}");
        assert_eq!(sample(&text, "exitprof_dropped_events_total"), Some(7.0));
    }

    fn pio(port: u16, count: u64) -> PioRow {
        PioRow {
            port,
            write: true,
            size: 1,
            count,
            ..PioRow::default()
        }
    }

    #[test]
    fn top_keys_cap_the_series_and_other_counts_every_event_once() {
        let mut e = exporter(1, false);
        let procs = Fake::default();
        let mut s = Snapshot::empty(Backend::Pvm);
        let at = |port: u16| {
            format!(r#"exitprof_pio_events_total{{port="{port:#06x}",direction="out",size="1"}}"#)
        };
        let other = r#"exitprof_pio_events_total{port="other",direction="other",size="other"}"#;
        s.events.pio = vec![pio(0x10, 10), pio(0x20, 5)];
        e.update(&s, Duration::ZERO, &procs);
        let text = e.render(Format::Text);
        assert_eq!(sample(&text, other), Some(15.0), "{text}");
        assert_eq!(sample(&text, &at(0x10)), Some(0.0), "{text}");
        assert_eq!(sample(&text, &at(0x20)), None, "only the top key: {text}");
        // 0x20 overtakes 0x10: its steps went to other until now; 0x10's
        // series stops, keeping its value for when it comes back.
        s.events.pio = vec![pio(0x10, 12), pio(0x20, 20)];
        e.update(&s, SECOND, &procs);
        let text = e.render(Format::Text);
        assert_eq!(sample(&text, &at(0x10)), None, "{text}");
        assert_eq!(sample(&text, &at(0x20)), Some(0.0), "{text}");
        assert_eq!(sample(&text, other), Some(30.0), "{text}");
        s.events.pio = vec![pio(0x10, 40), pio(0x20, 21)];
        e.update(&s, 2 * SECOND, &procs);
        let text = e.render(Format::Text);
        assert_eq!(
            sample(&text, &at(0x10)),
            Some(2.0),
            "resumes at its value: {text}"
        );
        assert_eq!(sample(&text, &at(0x20)), None, "{text}");
        // Every event exactly once: 2 in 0x10's series, 1 in 0x20's
        // (shown at 1 until it stopped), 58 under other; 40 + 21 = 61.
        assert_eq!(sample(&text, other), Some(58.0), "{text}");
    }

    #[test]
    fn a_vm_that_exits_goes_after_the_grace_period() {
        let mut e = exporter(20, false);
        let mut procs = Fake::default();
        let mut s = Snapshot::empty(Backend::Svm);
        s.exits = vec![vm_row(7, 0, 10, 100), vm_row(8, 0, 1, 1)];
        assert!(e.update(&s, Duration::ZERO, &procs).is_empty());
        procs.dead.insert(7);
        assert!(e.update(&s, SECOND, &procs).is_empty());
        assert_eq!(e.vms(), [7, 8], "within the grace period");
        assert!(e.update(&s, 10 * SECOND, &procs).is_empty());
        assert_eq!(e.update(&s, 11 * SECOND, &procs), [7]);
        assert_eq!(e.vms(), [8]);
        let text = e.render(Format::OpenMetrics);
        assert!(!text.contains(r#"pid="7""#), "{text}");
        // Its map entries may outlive its series for a readout: ignored.
        assert!(e.update(&s, 12 * SECOND, &procs).is_empty());
        assert_eq!(e.vms(), [8]);
        // A new process with the same pid is a new VM.
        procs.dead.remove(&7);
        s.exits = vec![vm_row(7, 0, 1, 1), vm_row(8, 0, 1, 1)];
        e.update(&s, 13 * SECOND, &procs);
        assert_eq!(e.vms(), [7, 8]);
    }

    /// The readout's per-reason counts are sums of the per-vCPU entries,
    /// so they drop when a retired VM's entries are deleted: the host-wide
    /// counter must not read that as a reset.
    #[test]
    fn deleting_a_retired_vms_entries_does_not_count_the_others_again() {
        let mut e = exporter(20, false);
        let mut procs = Fake::default();
        let mut s = Snapshot::empty(Backend::Svm);
        let reason_row = |count| ExitRow {
            isa: Isa::Svm,
            reason: 0x72,
            name: "cpuid".into(),
            count,
            ..ExitRow::default()
        };
        s.exits = vec![reason_row(150), vm_row(7, 0, 100, 0), vm_row(8, 0, 50, 0)];
        e.update(&s, Duration::ZERO, &procs);
        procs.dead.insert(7);
        e.update(&s, SECOND, &procs);
        assert_eq!(e.update(&s, 11 * SECOND, &procs), [7]);
        // Entries of 7 deleted; 8 did 5 more.
        s.exits = vec![reason_row(55), vm_row(8, 0, 55, 0)];
        e.update(&s, 12 * SECOND, &procs);
        let text = e.render(Format::Text);
        let series = r#"exitprof_exits_total{isa="svm",reason="0x72",name="cpuid"}"#;
        assert_eq!(sample(&text, series), Some(155.0), "{text}");
    }

    #[test]
    fn by_vcpu_keeps_a_series_per_vcpu() {
        let mut e = exporter(20, true);
        let mut s = Snapshot::empty(Backend::Svm);
        s.exits = vec![vm_row(7, 0, 10, 100), vm_row(7, 3, 2, 20)];
        e.update(&s, Duration::ZERO, &Fake::default());
        let text = e.render(Format::Text);
        for (vcpu, count) in [(0, 10.0), (3, 2.0)] {
            let series = format!(
                r#"exitprof_vm_exits_total{{pid="7",vm="",vcpu="{vcpu}",isa="svm",reason="0x72",name="cpuid"}}"#
            );
            assert_eq!(sample(&text, &series), Some(count), "{text}");
        }
    }

    #[test]
    fn every_kinds_other_series_is_there_before_its_first_event() {
        let mut e = exporter(20, false);
        e.update(
            &Snapshot::empty(Backend::Pvm),
            Duration::ZERO,
            &Fake::default(),
        );
        let text = e.render(Format::Text);
        for series in [
            r#"exitprof_cpuid_events_total{leaf="other",subleaf="other"}"#,
            r#"exitprof_pio_events_total{port="other",direction="other",size="other"}"#,
            r#"exitprof_mmio_events_total{gpa="other",direction="other"}"#,
            r#"exitprof_msr_events_total{msr="other",direction="other"}"#,
            r#"exitprof_hypercall_events_total{nr="other"}"#,
        ] {
            assert_eq!(sample(&text, series), Some(0.0), "{series}:\n{text}");
        }
    }

    /// `packaging/grafana-dashboard.json` queries only what the exporter
    /// serves: a renamed metric or label fails here (and in the root test
    /// `serve_speaks_both_formats...`, against a real scrape).
    #[test]
    fn the_grafana_dashboard_queries_only_served_metrics_and_labels() {
        fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(map) => {
                    for (k, v) in map {
                        match (k.as_str(), v) {
                            ("expr" | "definition", serde_json::Value::String(q)) => {
                                out.push(q.clone());
                            }
                            _ => queries(v, out),
                        }
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
                _ => {}
            }
        }
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../../packaging/grafana-dashboard.json"))
                .unwrap();
        let mut found = Vec::new();
        queries(&dashboard, &mut found);
        let text = rendered().render(Format::Text);
        let metric = regex_lite::Regex::new(r"\b(?:exitprof|process)_[a-z0-9_]+").unwrap();
        let grouping = regex_lite::Regex::new(r"\b(?:by|without) \(([^)]*)\)").unwrap();
        for query in &found {
            for name in metric.find_iter(query).map(|m| m.as_str()) {
                assert!(
                    text.contains(&format!("\n{name}{{")) || text.contains(&format!("\n{name} ")),
                    "the dashboard queries {name}, which the exporter does not serve"
                );
            }
            for labels in grouping.captures_iter(query) {
                for label in labels[1].split(',').map(str::trim) {
                    assert!(
                        ["instance", "job", "le"].contains(&label)
                            || text.contains(&format!("{{{label}=\""))
                            || text.contains(&format!(",{label}=\"")),
                        "the dashboard groups by {label}, which no series has"
                    );
                }
            }
        }
        assert!(found.len() > 10, "{found:?}");
    }

    #[test]
    fn help_texts_need_no_escaping() {
        for line in FIXTURE_OPEN_METRICS
            .lines()
            .filter(|l| l.starts_with("# HELP"))
        {
            assert!(!line.contains('"') && !line.contains('\\'), "{line}");
        }
    }
}
