//! Readout: every map summed over CPUs into one [`Snapshot`]; presenters
//! read snapshots, never maps.
use std::{collections::BTreeMap, sync::OnceLock};

use aya::{Ebpf, Pod};
use exitprof_common::{
    maps::{BreakdownKey, BreakdownStats, CachedCount, ExitStats, SiteKey, UserspaceExitStats},
    reasons::{self, Isa, SLOT_VMX_OTHER},
    userspace_exit,
};

use super::{
    error::LoadError,
    maps::{Entries, array_entries, hash_entries},
};
use crate::model::{
    Backend, Events, ExitRow, PerSecond, SiteRow, Snapshot,
    events::{EventKind, EventReader, UserspaceExitRow},
};

/// Code reported for the "other" slots, whose raw code the array does not
/// keep: VMX (basic reasons are 16 bits, so this is no real code) ...
pub const OTHER_VMX_CODE: u32 = u32::MAX;
/// ... and SVM.
pub const OTHER_SVM_CODE: u32 = u32::MAX - 1;

/// Reads every map. With the per-vCPU `breakdown`, the per-reason
/// counts and times are the sums of the per-vCPU rows of the same read,
/// so that the two always agree (see [`reason_rows`]).
///
/// # Errors
/// When a map cannot be read.
pub fn read(ebpf: &Ebpf, backend: Backend, breakdown: bool) -> Result<Snapshot, LoadError> {
    let mut snapshot = Snapshot::empty(backend);
    // The handler events first: an exit is counted at kvm_exit, before its
    // handler's event, so events read before the exits never exceed them
    // (CPUID leaves under cpuid); read after, they would run ahead by the
    // exits in between.
    snapshot.events = read_events(ebpf)?;
    let stats = array_entries::<ExitStats>(ebpf, "EXIT_STATS")?;
    let per_vcpu = if breakdown {
        Some(hash_entries::<BreakdownKey, BreakdownStats>(
            ebpf,
            "EXIT_BREAKDOWN",
        )?)
    } else {
        None
    };
    snapshot.exits = reason_rows(&stats, per_vcpu.as_ref());
    if let Some(per_vcpu) = &per_vcpu {
        snapshot.exits.extend(vcpu_rows(per_vcpu));
    }
    snapshot.dropped = array_entries::<u64>(ebpf, "DROPPED")?
        .iter()
        .flatten()
        .sum();
    Ok(snapshot)
}

/// The per-reason rows. Without a breakdown they are `EXIT_STATS` summed
/// over CPUs. With one, `EXIT_STATS` and `EXIT_BREAKDOWN` are two maps
/// read one after the other while VMs run, so their counts would differ
/// by the exits in between: then count, timed, total and max of a reason
/// are the sums of its per-vCPU rows (the same read, so they agree
/// exactly), and only the minimum and the histogram, which the breakdown
/// does not keep, come from `EXIT_STATS`. Exits that found the breakdown
/// map full are in `dropped`, in neither.
#[must_use]
pub fn reason_rows(
    stats: &[Vec<ExitStats>],
    breakdown: Option<&Entries<BreakdownKey, BreakdownStats>>,
) -> Vec<ExitRow> {
    let mut sums: Vec<ExitStats> = stats
        .iter()
        .map(|per_cpu| sum_exit_stats(per_cpu))
        .collect();
    if let Some(breakdown) = breakdown {
        let mut derived = vec![ExitStats::ZERO; sums.len()];
        for (key, per_cpu) in breakdown.iter() {
            let Some(d) = derived.get_mut(key.slot as usize) else {
                continue;
            };
            let b = sum_breakdown(per_cpu);
            d.count += b.count;
            d.timed += b.timed;
            d.total_ns += b.total_ns;
            d.max_ns = d.max_ns.max(b.max_ns);
        }
        for (sum, d) in sums.iter_mut().zip(derived) {
            sum.count = d.count;
            sum.timed = d.timed;
            sum.total_ns = d.total_ns;
            sum.max_ns = d.max_ns;
            if d.timed == 0 {
                sum.min_ns = 0;
            }
        }
    }
    sums.iter()
        .enumerate()
        .filter(|(_, sum)| sum.count > 0 || sum.timed > 0)
        .map(|(slot, sum)| exit_row(u32::try_from(slot).unwrap_or(u32::MAX), None, sum))
        .collect()
}

/// Sums one per-vCPU key over CPUs (as [`ExitStats`] without minimum and
/// histogram).
fn sum_breakdown(per_cpu: &[BreakdownStats]) -> ExitStats {
    let mut sum = ExitStats::ZERO;
    for v in per_cpu {
        sum.count += v.count;
        sum.timed += v.timed;
        sum.total_ns += v.total_ns;
        sum.max_ns = sum.max_ns.max(v.max_ns);
    }
    sum
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

/// The per-vCPU rows, ordered by (process, vCPU, reason). The order is
/// found on small keys first and each row is built once, in place: with
/// 10,000 keys, sorting the built rows and giving each a histogram it
/// then dropped were a third of a snapshot (BENCHMARKS.md, "Readout").
fn vcpu_rows(per_vcpu: &Entries<BreakdownKey, BreakdownStats>) -> Vec<ExitRow> {
    let slots = slot_names();
    let reason = |slot: u32| slots.get(slot as usize).map_or(u32::MAX, |s| s.1);
    let mut order: Vec<(u32, u32, u32, &BreakdownKey, &[BreakdownStats])> = per_vcpu
        .iter()
        .map(|(key, per_cpu)| (key.pid, key.vcpu, reason(key.slot), key, per_cpu))
        .collect();
    order.sort_unstable_by_key(|&(pid, vcpu, reason, ..)| (pid, vcpu, reason));
    order
        .into_iter()
        .map(|(pid, vcpu, _, key, per_cpu)| {
            let sum = sum_breakdown(per_cpu);
            exit_row_with(key.slot, Some((pid, vcpu)), &sum, Vec::new())
        })
        .collect()
}

/// Each slot's (isa, code, name), computed once: a name is a search of
/// the reason table, and a snapshot names every row.
fn slot_names() -> &'static [(Isa, u32, &'static str)] {
    static NAMES: OnceLock<Vec<(Isa, u32, &'static str)>> = OnceLock::new();
    NAMES.get_or_init(|| {
        (0..reasons::SLOTS)
            .map(|slot| match reasons::slot_reason(slot) {
                Some((isa, code)) => (isa, code, reasons::name(isa, code)),
                None if slot == SLOT_VMX_OTHER => (Isa::Vmx, OTHER_VMX_CODE, "other"),
                None => (Isa::Svm, OTHER_SVM_CODE, "other"),
            })
            .collect()
    })
}

fn exit_row(slot: u32, who: Option<(u32, u32)>, sum: &ExitStats) -> ExitRow {
    exit_row_with(slot, who, sum, sum.hist_log2_ns.to_vec())
}

/// A row of `slot` with histogram `hist` (empty in per-vCPU rows).
fn exit_row_with(slot: u32, who: Option<(u32, u32)>, sum: &ExitStats, hist: Vec<u64>) -> ExitRow {
    let (isa, reason, name) =
        slot_names()
            .get(slot as usize)
            .copied()
            .unwrap_or((Isa::Svm, OTHER_SVM_CODE, "other"));
    ExitRow {
        isa,
        reason,
        name: name.to_owned(),
        pid: who.map(|w| w.0),
        vcpu: who.map(|w| w.1),
        count: sum.count,
        timed: sum.timed,
        total_ns: sum.total_ns,
        min_ns: sum.min_ns,
        max_ns: sum.max_ns,
        hist_log2_ns: hist,
        ..ExitRow::default()
    }
}

/// Every exit site (`EXIT_SITES`) summed over CPUs, most exits first.
///
/// # Errors
/// When the map cannot be read.
pub fn read_sites(ebpf: &Ebpf) -> Result<Vec<SiteRow>, LoadError> {
    let mut sites: Vec<SiteRow> = hash_entries::<SiteKey, BreakdownStats>(ebpf, "EXIT_SITES")?
        .iter()
        .map(|(key, per_cpu)| site_row(key, &sum_breakdown(per_cpu)))
        .collect();
    sites.sort_unstable_by(|a, b| b.count.cmp(&a.count).then(a.key().cmp(&b.key())));
    Ok(sites)
}

fn site_row(key: &SiteKey, sum: &ExitStats) -> SiteRow {
    let row = exit_row(key.slot, None, sum);
    SiteRow {
        isa: row.isa,
        reason: row.reason,
        name: row.name,
        pid: key.pid,
        vm: None,
        rip: key.rip,
        symbol: None,
        count: sum.count,
        timed: sum.timed,
        total_ns: sum.total_ns,
        max_ns: sum.max_ns,
        rate_per_s: PerSecond::default(),
    }
}

/// Sums a per-CPU hash map of counters, and its per-CPU front cache
/// (`CachedCount`) when it has one, into `(key, total)`, sorted by key.
/// The cache is read first: per (CPU, key) the larger of cache and map is
/// the count, which never goes backwards while events arrive (see
/// `CachedCount`).
fn counts<K: Pod + Ord>(
    ebpf: &Ebpf,
    name: &'static str,
    cache: Option<&'static str>,
) -> Result<Vec<(K, u64)>, LoadError> {
    let cached = match cache {
        Some(cache) => array_entries::<CachedCount<K>>(ebpf, cache)?,
        None => Vec::new(),
    };
    let mut per_key: BTreeMap<K, Vec<u64>> = hash_entries::<K, u64>(ebpf, name)?
        .iter()
        .map(|(k, v)| (*k, v.to_vec()))
        .collect();
    for way in &cached {
        for (cpu, c) in way.iter().enumerate() {
            if c.count == 0 {
                continue;
            }
            let values = per_key.entry(c.key).or_default();
            if values.len() <= cpu {
                values.resize(cpu + 1, 0);
            }
            values[cpu] = values[cpu].max(c.count);
        }
    }
    Ok(per_key
        .into_iter()
        .map(|(k, v)| (k, v.iter().sum()))
        .collect())
}

/// Reads each handler-event kind of the table from its maps.
struct Reader<'a>(&'a Ebpf);

impl EventReader for Reader<'_> {
    type Error = LoadError;

    fn read<K: EventKind>(&mut self) -> Result<Vec<K>, LoadError> {
        let source = K::SOURCE;
        Ok(counts::<K::Key>(self.0, source.map, source.cache)?
            .iter()
            .map(|(key, count)| K::from_key(key, *count))
            .collect())
    }
}

fn read_events(ebpf: &Ebpf) -> Result<Events, LoadError> {
    let mut userspace_exit = Vec::new();
    for (slot, per_cpu) in array_entries::<UserspaceExitStats>(ebpf, "USERSPACE_EXITS")?
        .iter()
        .enumerate()
    {
        if per_cpu.iter().all(|v| v.count == 0 && v.roundtrips == 0) {
            continue;
        }
        let reason = userspace_exit::slot_reason(u32::try_from(slot).unwrap_or(u32::MAX));
        let mut row = UserspaceExitRow {
            reason,
            name: userspace_exit_name(reason),
            ..UserspaceExitRow::default()
        };
        for v in per_cpu {
            row.count += v.count;
            row.roundtrips += v.roundtrips;
            row.roundtrip_total_ns += v.roundtrip_total_ns;
            row.roundtrip_max_ns = row.roundtrip_max_ns.max(v.roundtrip_max_ns);
        }
        userspace_exit.push(row);
    }
    userspace_exit.sort_by_key(|r| r.reason);
    Events::read(&mut Reader(ebpf), userspace_exit)
}

/// `IO`, `HLT`, ..., or `restart (EINTR)` / `error (errno N)`.
#[must_use]
pub fn userspace_exit_name(reason: u32) -> String {
    if reason == userspace_exit::OTHER {
        return "other (reason >= 64 or errno >= 192)".to_owned();
    }
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

    /// With a breakdown, a reason's count and times are its per-vCPU rows'
    /// sums even when `EXIT_STATS` was read at another moment.
    #[test]
    fn reason_rows_are_the_sums_of_the_per_vcpu_rows() {
        let slot = exitprof_common::reasons::slot(Isa::Svm as u32, 0x72);
        let mut stats = vec![vec![ExitStats::ZERO; 2]; reasons::SLOTS as usize];
        // Read first: 10 exits then; the breakdown, read later, has 13.
        stats[slot as usize][0].count = 10;
        stats[slot as usize][0].timed = 9;
        stats[slot as usize][0].min_ns = 100;
        stats[slot as usize][0].hist_log2_ns[7] = 9;
        let key = |vcpu| BreakdownKey {
            pid: 42,
            vcpu,
            slot,
            _pad: 0,
        };
        let value = |count, max_ns| BreakdownStats {
            count,
            timed: count,
            total_ns: count * 200,
            max_ns,
        };
        let breakdown = vec![
            (key(0), vec![value(5, 300), value(3, 900)]),
            (key(1), vec![value(5, 400), BreakdownStats::default()]),
        ];
        let breakdown = Entries::from_pairs(2, breakdown);
        let rows = reason_rows(&stats, Some(&breakdown));
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.name.as_str(), r.count, r.timed), ("cpuid", 13, 13));
        assert_eq!((r.total_ns, r.min_ns, r.max_ns), (2_600, 100, 900));
        assert_eq!(r.hist_log2_ns[7], 9, "the histogram is EXIT_STATS'");
        let plain = reason_rows(&stats, None);
        assert_eq!((plain[0].count, plain[0].timed), (10, 9));
    }

    /// Per-vCPU rows come ordered by (process, vCPU, reason code), each
    /// summed over CPUs, named, without a histogram.
    #[test]
    fn vcpu_rows_are_ordered_summed_and_named() {
        let key = |pid, vcpu, code| BreakdownKey {
            pid,
            vcpu,
            slot: reasons::slot(Isa::Svm as u32, code),
            _pad: 0,
        };
        let value = |count| BreakdownStats {
            count,
            timed: count,
            total_ns: 10 * count,
            max_ns: count,
        };
        let entries = Entries::from_pairs(
            2,
            [
                (key(9, 0, 0x72), vec![value(1), value(2)]),
                (key(3, 1, 0x7b), vec![value(4), value(0)]),
                (key(3, 1, 0x72), vec![value(5), value(6)]),
                (key(3, 0, 0x400), vec![value(7), value(8)]),
            ],
        );
        let rows = vcpu_rows(&entries);
        let order: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{:?} {:?} {:#x} {} {}",
                    r.pid, r.vcpu, r.reason, r.name, r.count
                )
            })
            .collect();
        assert_eq!(
            order,
            [
                "Some(3) Some(0) 0x400 npf 15",
                "Some(3) Some(1) 0x72 cpuid 11",
                "Some(3) Some(1) 0x7b io 4",
                "Some(9) Some(0) 0x72 cpuid 3",
            ]
        );
        assert!(rows.iter().all(|r| r.hist_log2_ns.is_empty()));
        assert_eq!((rows[1].total_ns, rows[1].max_ns), (110, 6));
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
