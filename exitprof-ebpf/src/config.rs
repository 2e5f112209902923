//! The `CONFIG` global and the process filter.
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use exitprof_common::{Config, config::FILTER_ALL};

use crate::maps::{LAST_TRACKED, TRACKED_TGIDS, UNTRACKED};

/// Set by the loader (`EbpfLoader::set_global("CONFIG", ..)`); read with
/// volatile loads so the compiler cannot fold the zero initializer.
#[unsafe(no_mangle)]
pub(crate) static CONFIG: Config = Config::ZERO;

/// Reads one field of `CONFIG`.
macro_rules! config {
    ($($field:ident).+) => {
        {
            // SAFETY: reading a static through a raw pointer; volatile so
            // the loader's value is read, not the compile-time initializer.
            // (Callers may already be inside `unsafe`.)
            #[allow(unused_unsafe)]
            let value =
                unsafe { core::ptr::read_volatile(&raw const crate::config::CONFIG.$($field).+) };
            value
        }
    };
}
pub(crate) use config;

/// Record offset of a tracepoint field, as a `usize` for `read_at`.
macro_rules! offset {
    ($($field:ident).+) => {
        $crate::config::config!(offsets.$($field).+) as usize
    };
}
pub(crate) use offset;

/// The current thread's process id (tgid) and thread id.
#[inline(always)]
pub fn current() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

/// Whether events of process `tgid` are counted. A storm of one VM's
/// exits asks for the same process again and again: `LAST_TRACKED`
/// answers that without a hash lookup, as long as no process has left the
/// tracked set since (`UNTRACKED`).
#[inline(always)]
pub fn wanted(tgid: u32) -> bool {
    if config!(filter) == FILTER_ALL {
        return true;
    }
    // SAFETY: the one slot of an array map.
    let untracked = UNTRACKED.get_ptr(0).map_or(0, |p| unsafe { *p });
    let last = LAST_TRACKED.get_ptr_mut(0);
    if let Some(last) = last {
        // SAFETY: this CPU's slot.
        let last = unsafe { &*last };
        if last.tgid == tgid && last.untracked == untracked {
            return true;
        }
    }
    if TRACKED_TGIDS.get_ptr(tgid).is_none() {
        return false;
    }
    if let Some(last) = last {
        // SAFETY: as above.
        unsafe {
            (*last).tgid = tgid;
            (*last).untracked = untracked;
        }
    }
    true
}
