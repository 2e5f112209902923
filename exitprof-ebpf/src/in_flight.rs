//! What a vCPU thread has in flight: its exit between `kvm_exit` and
//! `kvm_entry`, and its return to user space from `kvm_userspace_exit`
//! until it is back (`userspace_roundtrip.rs`), in one record per thread
//! ([`TaskInFlight`]). Both belong to the thread (it may sleep and migrate
//! in between: no per-CPU structure can hold them).
//!
//! A thread gets a record at its first counted event, and only if its
//! process is wanted (`config::wanted`); afterwards finding the record is
//! the whole filter, and the record carries the process id, so the hot
//! path needs neither `bpf_get_current_pid_tgid` nor the filter's maps.
//!
//! Two stores, one interface; the object is built once with each
//! (`exitprof/build.rs`) and the loader picks one per kernel
//! (`exitprof/src/bpf/plan.rs`):
//!
//! - **task storage** (default; `BPF_MAP_TYPE_TASK_STORAGE`, which tracing
//!   programs may use since Linux 5.12): the record lives in the thread's
//!   `task_struct`, is found through the map's cache slot there without
//!   hashing, and the kernel frees it with the thread;
//! - **hash** (feature `hash-in-flight`, for older kernels or kernels
//!   without BTF): an LRU hash map by thread id, whose entry
//!   `sched_process_exit` removes when the thread dies.
use exitprof_common::maps::{PendingExit, PendingUserspaceExit, TaskInFlight};

#[cfg(feature = "hash-in-flight")]
pub use hash::{forget, mine};
#[cfg(not(feature = "hash-in-flight"))]
pub use task::{forget, mine};

/// The current thread's record, if it has one; else, if its process is
/// wanted, a new one. `Counted(None)`: wanted, but there was no room for
/// a record (counted as a drop).
pub enum Thread {
    /// Its events are not counted.
    Unwanted,
    /// Its events are counted; its record, if it could have one.
    Counted(Option<*mut TaskInFlight>),
}

/// Closes the exit of `record` and returns it, if one was open.
///
/// # Safety
/// `record` is the current thread's (from [`mine`] or [`existing`]); only
/// this thread writes it.
#[inline(always)]
pub unsafe fn take_exit(record: *mut TaskInFlight) -> Option<PendingExit> {
    // SAFETY: the caller's.
    let exit = unsafe { &mut (*record).exit };
    if exit.ts_ns == 0 {
        return None;
    }
    let open = *exit;
    exit.ts_ns = 0;
    Some(open)
}

/// Closes the return to user space of `record` and returns it, if one was
/// open.
///
/// # Safety
/// As for [`take_exit`].
#[inline(always)]
pub unsafe fn take_userspace(record: *mut TaskInFlight) -> Option<PendingUserspaceExit> {
    // SAFETY: the caller's.
    let userspace = unsafe { &mut (*record).userspace };
    if userspace.ts_ns == 0 {
        return None;
    }
    let open = *userspace;
    userspace.ts_ns = 0;
    Some(open)
}

/// A new record for process `tgid`.
#[inline(always)]
fn fresh(tgid: u32) -> TaskInFlight {
    TaskInFlight {
        tgid,
        ..TaskInFlight::default()
    }
}

#[cfg(not(feature = "hash-in-flight"))]
mod task {
    use core::ptr;

    use aya_ebpf::{
        bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type},
        helpers::generated::{bpf_get_current_task_btf, bpf_task_storage_get},
        macros::btf_map,
    };
    use exitprof_common::maps::{TaskInFlight, drop_reason};

    use super::{Thread, fresh};
    use crate::{
        config::{current, wanted},
        counters::drop_event,
    };

    /// A `BPF_MAP_TYPE_TASK_STORAGE` map definition in BTF form (aya-ebpf
    /// 0.2.1 has inode, socket and cgroup storage, not task storage). The
    /// loader reads the map's type, flags and value type from these
    /// fields' BTF types; they are never dereferenced.
    #[repr(C)]
    pub struct TaskStorage<T> {
        r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
        key: *const i32,
        value: *const T,
        max_entries: *const [i32; 0],
        map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
    }

    // SAFETY: a definition of null pointers the loader reads as BTF; no
    // state to share.
    unsafe impl<T> Sync for TaskStorage<T> {}

    impl<T> TaskStorage<T> {
        /// The definition (the kernel requires `max_entries` 0 and
        /// `BPF_F_NO_PREALLOC`).
        pub const fn new() -> Self {
            Self {
                r#type: ptr::null(),
                key: ptr::null(),
                value: ptr::null(),
                max_entries: ptr::null(),
                map_flags: ptr::null(),
            }
        }

        /// The current thread's value; with `init`, created as `*init`
        /// when absent. `None` when absent (or, creating, when the kernel
        /// could not allocate it).
        #[inline(always)]
        fn current(&self, init: Option<&mut T>) -> Option<*mut T> {
            let (value, flags) = match init {
                Some(v) => (
                    ptr::from_mut(v).cast(),
                    u64::from(BPF_LOCAL_STORAGE_GET_F_CREATE),
                ),
                None => (ptr::null_mut(), 0),
            };
            // SAFETY: the helper takes the map's address (relocated by
            // the loader), the current task as `bpf_get_current_task_btf`
            // returns it, and an initial value it copies.
            let p = unsafe {
                bpf_task_storage_get(
                    ptr::from_ref(self).cast_mut().cast(),
                    bpf_get_current_task_btf(),
                    value,
                    flags,
                )
            };
            (!p.is_null()).then_some(p.cast())
        }
    }

    /// Exits and returns to user space in flight, in each thread's
    /// `task_struct`.
    #[btf_map]
    static IN_FLIGHT: TaskStorage<TaskInFlight> = TaskStorage::new();

    /// The current thread (see [`Thread`]).
    #[inline(always)]
    pub fn mine() -> Thread {
        if let Some(p) = IN_FLIGHT.current(None) {
            return Thread::Counted(Some(p));
        }
        let tgid = current().0;
        if !wanted(tgid) {
            return Thread::Unwanted;
        }
        let p = IN_FLIGHT.current(Some(&mut fresh(tgid)));
        if p.is_none() {
            drop_event(drop_reason::PENDING_MAP_FULL);
        }
        Thread::Counted(p)
    }

    /// The current thread's record, if it has one (never creates one).
    #[inline(always)]
    pub fn existing() -> Option<*mut TaskInFlight> {
        IN_FLIGHT.current(None)
    }

    /// A thread exits: the kernel frees its storage with it.
    #[inline(always)]
    pub fn forget() {}
}

#[cfg(feature = "hash-in-flight")]
mod hash {
    use aya_ebpf::{macros::map, maps::LruHashMap};
    use exitprof_common::maps::{PENDING_MAP_ENTRIES, TaskInFlight, drop_reason};

    use super::{Thread, fresh};
    use crate::{
        config::{current, wanted},
        counters::drop_event,
    };

    /// Records of threads, by thread id. A thread's entry stays between
    /// exits and goes at thread exit (`forget`) or by LRU eviction.
    #[map]
    static IN_FLIGHT: LruHashMap<u32, TaskInFlight> =
        LruHashMap::with_max_entries(PENDING_MAP_ENTRIES, 0);

    /// The current thread (see [`Thread`]). Its entry stays between
    /// events and is rewritten in place: far cheaper than an LRU insert
    /// and delete per event (measured on the host: `kvm_userspace_exit`
    /// 302 -> 135 ns; in the sandbox `kvm_exit` -31%).
    #[inline(always)]
    #[expect(
        clippy::similar_names,
        reason = "tgid and tid are the kernel's names for the process and the thread"
    )]
    pub fn mine() -> Thread {
        let (tgid, tid) = current();
        if let Some(p) = IN_FLIGHT.get_ptr_mut(tid) {
            return Thread::Counted(Some(p));
        }
        if !wanted(tgid) {
            return Thread::Unwanted;
        }
        if IN_FLIGHT.insert(tid, fresh(tgid), 0).is_err() {
            drop_event(drop_reason::PENDING_MAP_FULL);
            return Thread::Counted(None);
        }
        Thread::Counted(IN_FLIGHT.get_ptr_mut(tid))
    }

    /// The current thread's record, if it has one (never creates one).
    #[inline(always)]
    pub fn existing() -> Option<*mut TaskInFlight> {
        IN_FLIGHT.get_ptr_mut(current().1)
    }

    /// The current thread exits: its entry goes now (the LRU would evict
    /// it eventually).
    #[inline(always)]
    pub fn forget() {
        let _ = IN_FLIGHT.remove(current().1);
    }
}

#[cfg(feature = "hash-in-flight")]
pub use hash::existing;
#[cfg(not(feature = "hash-in-flight"))]
pub use task::existing;
