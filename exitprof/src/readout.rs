//! Readout: every map summed over CPUs into one [`Snapshot`]. The only code
//! besides the loader that touches maps; presenters read snapshots.
use std::collections::BTreeMap;

use aya::{
    Ebpf, Pod,
    maps::{MapError, PerCpuArray, PerCpuHashMap},
};
use exitprof_common::{
    maps::{
        BreakdownKey, BreakdownStats, CachedCount, CpuidKey, ExitStats, MmioKey, MsrKey, PioKey,
        UserspaceExitStats,
    },
    reasons::{self, Isa, SLOT_VMX_OTHER},
    userspace_exit,
};

use crate::{
    backend::Backend,
    loader::{LoadError, map_ref, syscall_error},
    snapshot::{
        CpuidRow, Events, ExitRow, HypercallRow, MmioRow, MsrRow, PioRow, Snapshot,
        UserspaceExitRow,
    },
};

/// Every `(key, per-CPU values)` of a per-CPU map.
type Entries<K, V> = Vec<(K, Vec<V>)>;

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

/// Whether an error means "this kernel cannot batch this map".
fn cannot_batch(e: &std::io::Error) -> bool {
    // ENOTSUPP (524) is the kernel-internal code bpf() returns for it.
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
    )
}

/// The fd of map `name` and the number of possible CPUs.
fn fd_and_cpus(ebpf: &Ebpf, name: &'static str) -> Result<(std::os::fd::RawFd, usize), LoadError> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let map = ebpf.map(name).ok_or_else(|| LoadError::Map {
        map: name,
        source: Box::new(MapError::InvalidName { name: name.into() }),
    })?;
    let data = match map {
        aya::maps::Map::PerCpuHashMap(d) | aya::maps::Map::PerCpuArray(d) => d,
        _ => return Err(err(name)(MapError::InvalidMapType { map_type: 0 })),
    };
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| syscall_error(name, "nr_cpus", e))?;
    Ok((data.fd().as_fd().as_raw_fd(), cpus))
}

/// Every `(key, per-CPU values)` of per-CPU map `name` in a few batched
/// syscalls; `None` when this kernel cannot batch the map (then iterate).
fn batched<K: Copy, V: Copy>(
    ebpf: &Ebpf,
    name: &'static str,
) -> Result<Option<Entries<K, V>>, LoadError> {
    let (fd, cpus) = fd_and_cpus(ebpf, name)?;
    match crate::batch::lookup_all::<K, V>(fd, cpus) {
        Ok(entries) => Ok(Some(entries)),
        Err(e) if cannot_batch(&e) => Ok(None),
        Err(e) => Err(syscall_error(name, "bpf_map_lookup_batch", e)),
    }
}

/// Every `(key, per-CPU values)` of per-CPU hash map `name`.
fn hash_entries<K: Pod + Copy, V: Pod + Copy>(
    ebpf: &Ebpf,
    name: &'static str,
) -> Result<Entries<K, V>, LoadError> {
    if let Some(entries) = batched(ebpf, name)? {
        return Ok(entries);
    }
    let map: PerCpuHashMap<_, K, V> = map_ref(ebpf, name)?;
    map.iter()
        .map(|item| {
            let (k, v) = item.map_err(err(name))?;
            Ok((k, v.iter().copied().collect()))
        })
        .collect()
}

/// Per-CPU values of every slot of per-CPU array `name`, in slot order.
fn array_entries<V: Pod + Copy>(ebpf: &Ebpf, name: &'static str) -> Result<Vec<Vec<V>>, LoadError> {
    if let Some(mut entries) = batched::<u32, V>(ebpf, name)? {
        entries.sort_by_key(|e| e.0);
        return Ok(entries.into_iter().map(|e| e.1).collect());
    }
    let map: PerCpuArray<_, V> = map_ref(ebpf, name)?;
    (0..map.len())
        .map(|i| Ok(map.get(&i, 0).map_err(err(name))?.iter().copied().collect()))
        .collect()
}

/// Reads every map.
///
/// # Errors
/// When a map cannot be read.
pub fn read(ebpf: &Ebpf, backend: Backend) -> Result<Snapshot, LoadError> {
    let mut snapshot = Snapshot::empty(backend);
    for (slot, per_cpu) in array_entries::<ExitStats>(ebpf, "EXIT_STATS")?
        .iter()
        .enumerate()
    {
        let sum = sum_exit_stats(per_cpu);
        if sum.count == 0 && sum.timed == 0 {
            continue;
        }
        snapshot.exits.push(exit_row(
            u32::try_from(slot).unwrap_or(u32::MAX),
            None,
            &sum,
        ));
    }
    let mut rows = Vec::new();
    for (key, per_cpu) in hash_entries::<BreakdownKey, BreakdownStats>(ebpf, "EXIT_BREAKDOWN")? {
        let mut sum = ExitStats::ZERO;
        for v in &per_cpu {
            sum.count += v.count;
            sum.timed += v.timed;
            sum.total_ns += v.total_ns;
            sum.max_ns = sum.max_ns.max(v.max_ns);
        }
        let mut row = exit_row(key.slot, Some((key.pid, key.vcpu)), &sum);
        row.hist_log2_ns.clear();
        rows.push(row);
    }
    rows.sort_unstable_by_key(|r| (r.pid, r.vcpu, r.reason));
    snapshot.exits.extend(rows);
    snapshot.events = read_events(ebpf)?;
    snapshot.dropped = array_entries::<u64>(ebpf, "DROPPED")?
        .iter()
        .flatten()
        .sum();
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

/// Sums a per-CPU hash map of counters, and its per-CPU front cache
/// (`CachedCount`) when it has one, into `(key, total)`, sorted by key.
/// The cache is read first: per (CPU, key) the larger of cache and map is
/// the count, which never goes backwards while events arrive (see
/// `CachedCount`).
fn counts<K: Pod + Copy + Ord>(
    ebpf: &Ebpf,
    name: &'static str,
    cache: Option<&'static str>,
) -> Result<Vec<(K, u64)>, LoadError> {
    let cached = match cache {
        Some(cache) => array_entries::<CachedCount<K>>(ebpf, cache)?,
        None => Vec::new(),
    };
    let mut per_key: BTreeMap<K, Vec<u64>> =
        hash_entries::<K, u64>(ebpf, name)?.into_iter().collect();
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

fn read_events(ebpf: &Ebpf) -> Result<Events, LoadError> {
    let cpuid = counts::<CpuidKey>(ebpf, "CPUID_EVENTS", Some("CPUID_CACHE"))?
        .into_iter()
        .map(|(k, count)| CpuidRow {
            leaf: k.leaf,
            subleaf: Some(k.subleaf),
            count,
        })
        .collect();
    let pio = counts::<PioKey>(ebpf, "PIO_EVENTS", Some("PIO_CACHE"))?
        .into_iter()
        .map(|(k, count)| PioRow {
            port: k.port,
            write: k.write != 0,
            size: k.size,
            count,
        })
        .collect();
    let mmio = counts::<MmioKey>(ebpf, "MMIO_EVENTS", Some("MMIO_CACHE"))?
        .into_iter()
        .map(|(k, count)| MmioRow {
            gpa: k.gpa,
            write: k.write != 0,
            count,
        })
        .collect();
    let msr = counts::<MsrKey>(ebpf, "MSR_EVENTS", Some("MSR_CACHE"))?
        .into_iter()
        .map(|(k, count)| MsrRow {
            index: k.index,
            write: k.write != 0,
            count,
        })
        .collect();
    let hypercall = counts::<u64>(ebpf, "HYPERCALL_EVENTS", None)?
        .into_iter()
        .map(|(nr, count)| HypercallRow { nr, count })
        .collect();
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
