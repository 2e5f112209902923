//! Readout: every map summed over CPUs into one [`Snapshot`]. The only code
//! besides the loader that touches maps; presenters read snapshots.
use aya::{
    Ebpf,
    maps::{MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
};
use exitprof_common::{
    maps::{
        BreakdownKey, BreakdownStats, CpuidKey, ExitStats, MmioKey, MsrKey, PioKey,
        UserspaceExitStats, drop_reason,
    },
    reasons::{self, Isa, SLOT_VMX_OTHER, SLOTS},
    userspace_exit,
};

use crate::{
    backend::Backend,
    loader::{LoadError, map_ref},
    snapshot::{
        CpuidRow, Events, ExitRow, HypercallRow, MmioRow, MsrRow, PioRow, Snapshot,
        UserspaceExitRow,
    },
};

/// Code reported for the "other" slots, whose raw code the array does not
/// keep: VMX (basic reasons are 16 bits, so this is no real code) ...
pub const OTHER_VMX_CODE: u32 = u32::MAX;
/// ... and SVM.
pub const OTHER_SVM_CODE: u32 = u32::MAX - 1;

fn err(map: &'static str) -> impl Fn(MapError) -> LoadError {
    move |source| LoadError::Map {
        map,
        source: Box::new(source),
    }
}

/// Reads every map.
///
/// # Errors
/// When a map cannot be read.
pub fn read(ebpf: &Ebpf, backend: Backend) -> Result<Snapshot, LoadError> {
    let mut snapshot = Snapshot::empty(backend);
    let stats: PerCpuArray<_, ExitStats> = map_ref(ebpf, "EXIT_STATS")?;
    for slot in 0..SLOTS {
        let per_cpu = stats.get(&slot, 0).map_err(err("EXIT_STATS"))?;
        let sum = sum_exit_stats(&per_cpu);
        if sum.count == 0 && sum.timed == 0 {
            continue;
        }
        snapshot.exits.push(exit_row(slot, None, &sum));
    }
    let breakdown: PerCpuHashMap<_, BreakdownKey, BreakdownStats> =
        map_ref(ebpf, "EXIT_BREAKDOWN")?;
    let mut rows = Vec::new();
    for item in breakdown.iter() {
        let (key, per_cpu) = item.map_err(err("EXIT_BREAKDOWN"))?;
        let mut sum = ExitStats::ZERO;
        for v in per_cpu.iter() {
            sum.count += v.count;
            sum.timed += v.timed;
            sum.total_ns += v.total_ns;
            sum.max_ns = sum.max_ns.max(v.max_ns);
        }
        let mut row = exit_row(key.slot, Some((key.pid, key.vcpu)), &sum);
        row.hist_log2_ns.clear();
        rows.push(row);
    }
    rows.sort_by_key(|r| (r.pid, r.vcpu, r.reason));
    snapshot.exits.extend(rows);
    snapshot.events = read_events(ebpf)?;
    let dropped: PerCpuArray<_, u64> = map_ref(ebpf, "DROPPED")?;
    for slot in 0..drop_reason::SLOTS {
        let per_cpu = dropped.get(&slot, 0).map_err(err("DROPPED"))?;
        snapshot.dropped += per_cpu.iter().sum::<u64>();
    }
    Ok(snapshot)
}

/// Sums one slot over CPUs: counters add, min/max combine.
#[must_use]
pub fn sum_exit_stats(per_cpu: &[ExitStats]) -> ExitStats {
    let mut sum = ExitStats::ZERO;
    for v in per_cpu {
        sum.count += v.count;
        sum.timed += v.timed;
        sum.total_ns += v.total_ns;
        if v.timed > 0 && (sum.min_ns == 0 || v.min_ns < sum.min_ns) {
            sum.min_ns = v.min_ns;
        }
        sum.max_ns = sum.max_ns.max(v.max_ns);
        for (s, b) in sum.hist_log2_ns.iter_mut().zip(v.hist_log2_ns) {
            *s += b;
        }
    }
    sum
}

fn exit_row(slot: u32, who: Option<(u32, u32)>, sum: &ExitStats) -> ExitRow {
    let (isa, reason, name) = match reasons::slot_reason(slot) {
        Some((isa, code)) => (isa, code, reasons::name(isa, code)),
        None if slot == SLOT_VMX_OTHER => (Isa::Vmx, OTHER_VMX_CODE, "other"),
        None => (Isa::Svm, OTHER_SVM_CODE, "other"),
    };
    ExitRow {
        isa: isa.name().to_owned(),
        reason,
        name: name.to_owned(),
        pid: who.map(|w| w.0),
        vcpu: who.map(|w| w.1),
        count: sum.count,
        timed: sum.timed,
        total_ns: sum.total_ns,
        min_ns: sum.min_ns,
        max_ns: sum.max_ns,
        hist_log2_ns: sum.hist_log2_ns.to_vec(),
    }
}

/// Sums a per-CPU hash map of counters into `(key, total)`, sorted by key.
fn counts<K: aya::Pod + Ord>(ebpf: &Ebpf, name: &'static str) -> Result<Vec<(K, u64)>, LoadError> {
    let map: PerCpuHashMap<_, K, u64> = map_ref(ebpf, name)?;
    let mut out = Vec::new();
    for item in map.iter() {
        let (key, per_cpu): (K, PerCpuValues<u64>) = item.map_err(err(name))?;
        out.push((key, per_cpu.iter().sum()));
    }
    out.sort_by_key(|a| a.0);
    Ok(out)
}

fn read_events(ebpf: &Ebpf) -> Result<Events, LoadError> {
    let cpuid = counts::<CpuidKey>(ebpf, "CPUID_EVENTS")?
        .into_iter()
        .map(|(k, count)| CpuidRow {
            leaf: k.leaf,
            subleaf: Some(k.subleaf),
            count,
        })
        .collect();
    let pio = counts::<PioKey>(ebpf, "PIO_EVENTS")?
        .into_iter()
        .map(|(k, count)| PioRow {
            port: k.port,
            write: k.write != 0,
            size: k.size,
            count,
        })
        .collect();
    let mmio = counts::<MmioKey>(ebpf, "MMIO_EVENTS")?
        .into_iter()
        .map(|(k, count)| MmioRow {
            gpa: k.gpa,
            write: k.write != 0,
            count,
        })
        .collect();
    let msr = counts::<MsrKey>(ebpf, "MSR_EVENTS")?
        .into_iter()
        .map(|(k, count)| MsrRow {
            index: k.index,
            write: k.write != 0,
            count,
        })
        .collect();
    let hypercall = counts::<u64>(ebpf, "HYPERCALL_EVENTS")?
        .into_iter()
        .map(|(nr, count)| HypercallRow { nr, count })
        .collect();
    let map: PerCpuHashMap<_, u32, UserspaceExitStats> = map_ref(ebpf, "USERSPACE_EXITS")?;
    let mut userspace_exit = Vec::new();
    for item in map.iter() {
        let (reason, per_cpu) = item.map_err(err("USERSPACE_EXITS"))?;
        let mut row = UserspaceExitRow {
            reason,
            name: userspace_exit_name(reason),
            ..UserspaceExitRow::default()
        };
        for v in per_cpu.iter() {
            row.count += v.count;
            row.roundtrips += v.roundtrips;
            row.roundtrip_total_ns += v.roundtrip_total_ns;
            row.roundtrip_max_ns = row.roundtrip_max_ns.max(v.roundtrip_max_ns);
        }
        userspace_exit.push(row);
    }
    userspace_exit.sort_by_key(|r| r.reason);
    Ok(Events {
        cpuid,
        pio,
        mmio,
        msr,
        hypercall,
        userspace_exit,
    })
}

/// `IO`, `HLT`, ..., or `restart (EINTR)` / `error (errno N)`.
#[must_use]
pub fn userspace_exit_name(reason: u32) -> String {
    if let Some(errno) = reason.checked_sub(userspace_exit::ERRNO_BASE) {
        if errno == userspace_exit::EINTR {
            "restart (EINTR)".to_owned()
        } else {
            format!("error (errno {errno})")
        }
    } else {
        userspace_exit::NAMES
            .get(reason as usize)
            .map_or_else(|| format!("exit_{reason}"), |n| (*n).to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_combines_min_max_and_histograms() {
        let mut a = ExitStats::ZERO;
        a.count = 3;
        a.timed = 3;
        a.total_ns = 300;
        a.min_ns = 50;
        a.max_ns = 200;
        a.hist_log2_ns[5] = 1;
        a.hist_log2_ns[7] = 2;
        let mut b = ExitStats::ZERO;
        b.count = 2;
        b.timed = 1;
        b.total_ns = 40;
        b.min_ns = 40;
        b.max_ns = 40;
        b.hist_log2_ns[5] = 1;
        // A CPU that never timed an exit must not pull the minimum to 0.
        let idle = ExitStats::ZERO;
        let s = sum_exit_stats(&[a, idle, b]);
        assert_eq!((s.count, s.timed, s.total_ns), (5, 4, 340));
        assert_eq!((s.min_ns, s.max_ns), (40, 200));
        assert_eq!((s.hist_log2_ns[5], s.hist_log2_ns[7]), (2, 2));
    }

    #[test]
    fn userspace_exit_names() {
        assert_eq!(userspace_exit_name(2), "IO");
        assert_eq!(userspace_exit_name(5), "HLT");
        assert_eq!(userspace_exit_name(6), "MMIO");
        assert_eq!(userspace_exit_name(0x1_0004), "restart (EINTR)");
        assert_eq!(userspace_exit_name(0x1_000e), "error (errno 14)");
        assert_eq!(userspace_exit_name(99), "exit_99");
    }
}
