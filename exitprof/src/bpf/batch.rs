//! `BPF_MAP_LOOKUP_BATCH`: a whole map in a few syscalls instead of two
//! per key (get-next-key, lookup), which is what aya 0.14's iterators do.
//! Measured with 10 000 keys: iterating took 10.6 ms per snapshot.
use std::{io, os::fd::RawFd};

/// `BPF_MAP_LOOKUP_BATCH` from `<linux/bpf.h>`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every `(key, per-CPU values)` of a per-CPU map (hash or array), `cpus`
/// values each.
///
/// # Errors
/// The kernel's error; `EINVAL`/`ENOTSUPP` mean it cannot batch this map
/// and the caller should iterate.
pub fn lookup_all<K: Copy, V: Copy>(fd: RawFd, cpus: usize) -> io::Result<Vec<(K, Vec<V>)>> {
    let key_size = size_of::<K>();
    let value_stride = size_of::<V>().next_multiple_of(8);
    let mut chunk: usize = 1024;
    let mut out = Vec::new();
    let mut token = [0u64; 1];
    let mut first = true;
    loop {
        let mut keys = vec![0u8; chunk * key_size];
        let mut values = vec![0u8; chunk * value_stride * cpus];
        let mut next = [0u64; 1];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_mut_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(chunk).unwrap_or(u32::MAX),
            map_fd: u32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers sized for `count` elements; the
        // kernel writes at most that many.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        match err.as_ref().and_then(io::Error::raw_os_error) {
            // A hash bucket holds more than `chunk` keys: bigger buffers.
            Some(libc::ENOSPC) => {
                chunk *= 4;
                continue;
            }
            None | Some(libc::ENOENT) => {}
            Some(_) => return Err(err.expect("an error")),
        }
        for i in 0..attr.count as usize {
            // SAFETY: the kernel filled `attr.count` keys and values of
            // these sizes; reads are unaligned-safe.
            let key = unsafe { keys.as_ptr().add(i * key_size).cast::<K>().read_unaligned() };
            let per_cpu = (0..cpus)
                .map(|c| unsafe {
                    values
                        .as_ptr()
                        .add((i * cpus + c) * value_stride)
                        .cast::<V>()
                        .read_unaligned()
                })
                .collect();
            out.push((key, per_cpu));
        }
        if err.is_some() {
            // ENOENT: that was the last batch.
            return Ok(out);
        }
        token = next;
        first = false;
    }
}
