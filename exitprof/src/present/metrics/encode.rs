//! The state as metric families, written by prometheus-client's own
//! OpenMetrics encoder (a [`Collector`]). Names follow Prometheus'
//! conventions: the unit in the name (`_seconds`, `_bytes`), `_total` on
//! counters, base units only.
use std::{
    fmt::{self, Write as _},
    sync::{Arc, Mutex, PoisonError},
};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, LabelSetEncoder,
        MetricEncoder, NoLabelSet,
    },
    metrics::MetricType,
    registry::Unit,
};

use super::state::{Capped, State, Userspace, VmSeries};

static SECONDS: Unit = Unit::Seconds;
static BYTES: Unit = Unit::Bytes;

/// Nanoseconds per second, for `_seconds` values.
const NS: f64 = 1e9;

/// What stays the same for the exporter's lifetime.
#[derive(Debug, Clone)]
pub struct Fixed {
    /// exitprof's version.
    pub version: &'static str,
    /// What is counted: `all` processes, or `pids` given with `--pid`.
    pub scope: &'static str,
    /// Keys with a series of their own per handler-event kind.
    pub top_keys: usize,
}

/// The collector: the shared state and the fixed facts.
#[derive(Debug)]
pub struct Families {
    /// Updated by the exporter, read here at each encoding.
    pub state: Arc<Mutex<State>>,
    /// The info metric's constant labels.
    pub fixed: Fixed,
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        encode_all(&state, &self.fixed, &mut encoder)
    }
}

/// A label set of (name, value) pairs. The encoder escapes the values
/// (since prometheus-client 0.25.2), and a VM's name may hold anything.
struct Labels<'a>(&'a [(&'a str, &'a str)]);

impl EncodeLabelSet for Labels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        for (name, value) in self.0 {
            let mut label = encoder.encode_label();
            let mut key = label.encode_label_key()?;
            key.write_str(name)?;
            let mut out = key.encode_label_value()?;
            out.write_str(value)?;
            out.finish()?;
        }
        Ok(())
    }
}

fn counter(
    m: &mut MetricEncoder,
    labels: &[(&str, &str)],
    v: &impl EncodeCounterValue,
) -> fmt::Result {
    if labels.is_empty() {
        return m.encode_counter::<NoLabelSet, _, f64>(v, None);
    }
    m.encode_family(&Labels(labels))?
        .encode_counter::<NoLabelSet, _, f64>(v, None)
}

fn gauge(m: &mut MetricEncoder, labels: &[(&str, &str)], v: &impl EncodeGaugeValue) -> fmt::Result {
    if labels.is_empty() {
        return m.encode_gauge(v);
    }
    m.encode_family(&Labels(labels))?.encode_gauge(v)
}

#[expect(
    clippy::cast_precision_loss,
    reason = "seconds for people and dashboards; exact counts stay in the _count and _total series"
)]
fn seconds(ns: u64) -> f64 {
    ns as f64 / NS
}

/// The upper bounds of the kernel's log2 buckets in seconds: bucket `i`
/// holds whole nanoseconds in `[2^i, 2^(i+1) - 1]`, so `le` is
/// `2^(i+1) - 1` ns, exactly; the last bucket is open (`+Inf`).
fn log2_bounds() -> impl Iterator<Item = f64> {
    (0..exitprof_common::maps::HIST_BUCKETS).map(|i| {
        if i + 1 == exitprof_common::maps::HIST_BUCKETS {
            f64::INFINITY
        } else {
            seconds((2_u64 << i) - 1)
        }
    })
}

fn encode_all(state: &State, fixed: &Fixed, enc: &mut DescriptorEncoder) -> fmt::Result {
    let mut m = enc.encode_descriptor(
        "exitprof",
        "What this exporter watches and how: backend, attach mode, guest mirror, version",
        None,
        MetricType::Info,
    )?;
    let info = &state.info;
    let top = fixed.top_keys.to_string();
    m.encode_info(&Labels(&[
        ("version", fixed.version),
        ("backend", &info.backend),
        ("attach_mode", &info.attach_mode),
        ("guest_mirror", &info.guest_mirror),
        ("guest_mirror_scope", &info.guest_mirror_scope),
        (
            "vmexit_available",
            if info.vmexit_available {
                "true"
            } else {
                "false"
            },
        ),
        ("scope", fixed.scope),
        ("top_keys", &top),
    ]))?;
    encode_exits(state, enc)?;
    for kind in &state.events {
        encode_events(kind, enc)?;
    }
    encode_userspace(state, enc)?;
    let mut m = enc.encode_descriptor(
        "exitprof_dropped_events",
        "Events lost to full eBPF maps",
        None,
        MetricType::Counter,
    )?;
    counter(&mut m, &[], &state.dropped)?;
    encode_self(state, enc)
}

fn encode_exits(state: &State, enc: &mut DescriptorEncoder) -> fmt::Result {
    let mut m = enc.encode_descriptor(
        "exitprof_exits",
        "VM exits per exit reason, host-wide (kvm:kvm_exit; VMX and SVM hosts)",
        None,
        MetricType::Counter,
    )?;
    for ((isa, code), r) in &state.reasons {
        let reason = format!("{code:#x}");
        counter(
            &mut m,
            &[("isa", isa.name()), ("reason", &reason), ("name", &r.name)],
            &r.count,
        )?;
    }
    let mut m = enc.encode_descriptor(
        "exitprof_exit_duration",
        "Time from VM exit to the next entry of the same vCPU thread, per exit reason, in the kernel's log2 buckets",
        Some(&SECONDS),
        MetricType::Histogram,
    )?;
    for ((isa, code), r) in &state.reasons {
        let reason = format!("{code:#x}");
        let buckets: Vec<(f64, u64)> = log2_bounds().zip(r.buckets).collect();
        m.encode_family(&Labels(&[
            ("isa", isa.name()),
            ("reason", &reason),
            ("name", &r.name),
        ]))?
        .encode_histogram::<NoLabelSet>(
            seconds(r.total_ns),
            r.buckets.iter().sum(),
            &buckets,
            None,
        )?;
    }
    let mut exits = enc.encode_descriptor(
        "exitprof_vm_exits",
        "VM exits per VM process (pid, vm name) and exit reason",
        None,
        MetricType::Counter,
    )?;
    for_vm_series(state, |labels, s| counter(&mut exits, labels, &s.count))?;
    let mut time = enc.encode_descriptor(
        "exitprof_vm_exit_time",
        "Time in VM exits (exit to next entry) per VM process and exit reason",
        Some(&SECONDS),
        MetricType::Counter,
    )?;
    for_vm_series(state, |labels, s| {
        counter(&mut time, labels, &seconds(s.total_ns))
    })
}

/// Calls `f` with each VM series and its labels.
fn for_vm_series(
    state: &State,
    mut f: impl FnMut(&[(&str, &str)], &VmSeries) -> fmt::Result,
) -> fmt::Result {
    for (pid, vm) in &state.vms {
        let pid = pid.to_string();
        for ((vcpu, isa, code), s) in &vm.series {
            let reason = format!("{code:#x}");
            match vcpu {
                Some(vcpu) => {
                    let vcpu = vcpu.to_string();
                    f(
                        &[
                            ("pid", &pid),
                            ("vm", &vm.name),
                            ("vcpu", &vcpu),
                            ("isa", isa.name()),
                            ("reason", &reason),
                            ("name", &s.name),
                        ],
                        s,
                    )?;
                }
                None => f(
                    &[
                        ("pid", &pid),
                        ("vm", &vm.name),
                        ("isa", isa.name()),
                        ("reason", &reason),
                        ("name", &s.name),
                    ],
                    s,
                )?,
            }
        }
    }
    Ok(())
}

fn encode_events(kind: &Capped, enc: &mut DescriptorEncoder) -> fmt::Result {
    let name = format!("exitprof_{}_events", kind.kind);
    let help = format!(
        "Exit-handler events of kvm:{} by key: the keys with the most events have a series each, the rest add up in the series labelled other",
        kind.tracepoint
    );
    let mut m = enc.encode_descriptor(&name, &help, None, MetricType::Counter)?;
    for key in &kind.promoted {
        let labels: Vec<(&str, &str)> = key.iter().map(|(k, v)| (*k, v.as_str())).collect();
        counter(&mut m, &labels, &kind.shown.get(key).copied().unwrap_or(0))?;
    }
    let other: Vec<(&str, &str)> = kind.label_names.iter().map(|k| (*k, "other")).collect();
    counter(&mut m, &other, &kind.other)
}

fn encode_userspace(state: &State, enc: &mut DescriptorEncoder) -> fmt::Result {
    let rows: Vec<(String, &Userspace)> = state
        .userspace
        .iter()
        .map(|(code, u)| (code.to_string(), u))
        .collect();
    let mut m = enc.encode_descriptor(
        "exitprof_userspace_exits",
        "Returns of KVM_RUN to the VMM per KVM_EXIT reason (kvm:kvm_userspace_exit)",
        None,
        MetricType::Counter,
    )?;
    for (code, u) in &rows {
        counter(&mut m, &[("reason", code), ("name", &u.name)], &u.count)?;
    }
    let mut m = enc.encode_descriptor(
        "exitprof_vmm_roundtrip",
        "VMM round trip: from KVM_RUN returning to the VMM until the thread is back in the guest (kvm_entry; on PVM, its next KVM_RUN), per KVM_EXIT reason (sum and count: the kernel keeps no buckets for it)",
        Some(&SECONDS),
        MetricType::Histogram,
    )?;
    for (code, u) in &rows {
        m.encode_family(&Labels(&[("reason", code), ("name", &u.name)]))?
            .encode_histogram::<NoLabelSet>(
                seconds(u.roundtrip_total_ns),
                u.roundtrips,
                &[(f64::INFINITY, u.roundtrips)],
                None,
            )?;
    }
    let mut m = enc.encode_descriptor(
        "exitprof_vmm_roundtrip_max",
        "Longest VMM round trip since the exporter started, per KVM_EXIT reason",
        Some(&SECONDS),
        MetricType::Gauge,
    )?;
    for (code, u) in &rows {
        gauge(
            &mut m,
            &[("reason", code), ("name", &u.name)],
            &seconds(u.roundtrip_max_ns),
        )?;
    }
    Ok(())
}

/// One family of one unlabelled sample.
fn single(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    write: impl FnOnce(&mut MetricEncoder) -> fmt::Result,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, metric_type)?;
    write(&mut m)
}

fn encode_self(state: &State, enc: &mut DescriptorEncoder) -> fmt::Result {
    if !state.programs.is_empty() {
        let mut m = enc.encode_descriptor(
            "exitprof_bpf_program_runs",
            "Runs of each of exitprof's eBPF programs (serve --cost: the kernel's BPF statistics)",
            None,
            MetricType::Counter,
        )?;
        for (name, p) in &state.programs {
            counter(&mut m, &[("program", name)], &p.runs)?;
        }
        let mut m = enc.encode_descriptor(
            "exitprof_bpf_program_run_time",
            "Time in each of exitprof's eBPF programs (serve --cost)",
            Some(&SECONDS),
            MetricType::Counter,
        )?;
        for (name, p) in &state.programs {
            counter(&mut m, &[("program", name)], &seconds(p.run_ns))?;
        }
    }
    let cost = &state.cost;
    let count = MetricType::Counter;
    single(
        enc,
        "exitprof_readouts",
        "Readouts of the eBPF maps (driven by scrapes, at most one per --max-age)",
        None,
        count,
        |m| counter(m, &[], &cost.readouts),
    )?;
    single(
        enc,
        "exitprof_readout",
        "Time spent reading the eBPF maps",
        Some(&SECONDS),
        count,
        |m| counter(m, &[], &seconds(cost.readout_ns)),
    )?;
    single(
        enc,
        "exitprof_scrapes",
        "Requests of /metrics answered",
        None,
        count,
        |m| counter(m, &[], &cost.scrapes),
    )?;
    single(
        enc,
        "exitprof_scrape",
        "Time spent answering /metrics (readout, totals, encoding), up to the previous request",
        Some(&SECONDS),
        count,
        |m| counter(m, &[], &seconds(cost.scrape_ns)),
    )?;
    single(
        enc,
        "exitprof_http_connections_rejected",
        "Connections closed at once because --max-connections were open",
        None,
        count,
        |m| counter(m, &[], &cost.http_rejected),
    )?;
    single(
        enc,
        "exitprof_http_errors",
        "Connections that ended in an error: malformed, too large or too slow requests",
        None,
        count,
        |m| counter(m, &[], &cost.http_errors),
    )?;
    single(
        enc,
        "process_cpu",
        "CPU time of the exporter process, user and system",
        Some(&SECONDS),
        count,
        |m| counter(m, &[], &cost.cpu_seconds),
    )?;
    single(
        enc,
        "process_resident_memory",
        "Resident memory of the exporter process",
        Some(&BYTES),
        MetricType::Gauge,
        |m| gauge(m, &[], &cost.rss_bytes),
    )
}
