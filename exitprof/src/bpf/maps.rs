//! Reading and writing the object's maps: typed views by name, and whole
//! per-CPU maps in a few batched syscalls (`batch.rs`), with aya's
//! iterators as the fallback where the kernel cannot batch.
use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};

use aya::{
    Ebpf, Pod,
    maps::{Map, MapError, PerCpuArray, PerCpuHashMap},
};

use super::{batch, error::LoadError};
pub use batch::PerCpuEntries as Entries;

/// An error of map `map`.
pub fn map_error(map: &'static str, source: MapError) -> LoadError {
    LoadError::Map {
        map,
        source: Box::new(source),
    }
}

/// A failed system call on map `map`.
pub fn syscall_error(map: &'static str, call: &'static str, io_error: std::io::Error) -> LoadError {
    map_error(
        map,
        MapError::SyscallError(aya::sys::SyscallError { call, io_error }),
    )
}

fn no_such_map(name: &'static str) -> LoadError {
    map_error(name, MapError::InvalidName { name: name.into() })
}

/// A writable view of map `name`.
///
/// # Errors
/// No such map, or not of type `T`.
pub fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<&'a mut Map, Error = MapError>,
{
    let map = ebpf.map_mut(name).ok_or_else(|| no_such_map(name))?;
    T::try_from(map).map_err(|e| map_error(name, e))
}

/// A read-only view of map `name`.
///
/// # Errors
/// No such map, or not of type `T`.
pub fn map_ref<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<&'a Map, Error = MapError>,
{
    let map = ebpf.map(name).ok_or_else(|| no_such_map(name))?;
    T::try_from(map).map_err(|e| map_error(name, e))
}

/// The number of possible CPUs (the length of every per-CPU value).
///
/// # Errors
/// When the kernel's CPU list cannot be read.
pub fn possible_cpus(map: &'static str) -> Result<usize, LoadError> {
    aya::util::nr_cpus().map_err(|(_, e)| syscall_error(map, "nr_cpus", e))
}

/// The fd of per-CPU map `name`.
fn per_cpu_fd(ebpf: &Ebpf, name: &'static str) -> Result<RawFd, LoadError> {
    match ebpf.map(name).ok_or_else(|| no_such_map(name))? {
        Map::PerCpuHashMap(d) | Map::PerCpuArray(d) => Ok(d.fd().as_fd().as_raw_fd()),
        _ => Err(map_error(name, MapError::InvalidMapType { map_type: 0 })),
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

/// Every `(key, per-CPU values)` of per-CPU map `name` in a few batched
/// syscalls; `None` when this kernel cannot batch the map (then iterate).
fn batched<K: Pod, V: Pod>(
    ebpf: &Ebpf,
    name: &'static str,
) -> Result<Option<Entries<K, V>>, LoadError> {
    let fd = per_cpu_fd(ebpf, name)?;
    let cpus = possible_cpus(name)?;
    match batch::lookup_all::<K, V>(fd, cpus) {
        Ok(entries) => Ok(Some(entries)),
        Err(e) if cannot_batch(&e) => Ok(None),
        Err(e) => Err(syscall_error(name, "bpf_map_lookup_batch", e)),
    }
}

/// Every `(key, per-CPU values)` of per-CPU hash map `name`.
///
/// # Errors
/// When the map cannot be read.
pub fn hash_entries<K: Pod, V: Pod>(
    ebpf: &Ebpf,
    name: &'static str,
) -> Result<Entries<K, V>, LoadError> {
    if let Some(entries) = batched(ebpf, name)? {
        return Ok(entries);
    }
    let cpus = possible_cpus(name)?;
    let map: PerCpuHashMap<_, K, V> = map_ref(ebpf, name)?;
    let pairs = map
        .iter()
        .map(|item| {
            let (k, v) = item.map_err(|e| map_error(name, e))?;
            Ok((k, v.iter().copied().collect()))
        })
        .collect::<Result<Vec<_>, LoadError>>()?;
    Ok(Entries::from_pairs(cpus, pairs))
}

/// Per-CPU values of every slot of per-CPU array `name`, in slot order.
///
/// # Errors
/// When the map cannot be read.
pub fn array_entries<V: Pod>(ebpf: &Ebpf, name: &'static str) -> Result<Vec<Vec<V>>, LoadError> {
    if let Some(entries) = batched::<u32, V>(ebpf, name)? {
        let mut slots: Vec<(u32, &[V])> = entries.iter().map(|(k, v)| (*k, v)).collect();
        slots.sort_unstable_by_key(|e| e.0);
        return Ok(slots.into_iter().map(|e| e.1.to_vec()).collect());
    }
    let map: PerCpuArray<_, V> = map_ref(ebpf, name)?;
    (0..map.len())
        .map(|i| {
            Ok(map
                .get(&i, 0)
                .map_err(|e| map_error(name, e))?
                .iter()
                .copied()
                .collect())
        })
        .collect()
}
