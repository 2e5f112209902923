//! The `CONFIG` global and the process filter.
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use exitprof_common::{
    Config,
    config::{FILTER_ALL, Offsets, RawOffsets},
};

use crate::maps::{LAST_TRACKED, TRACKED_TGIDS};

/// Set by the loader (`EbpfLoader::set_global("CONFIG", ..)`); read with
/// volatile loads so the compiler cannot fold the zero initializer.
#[unsafe(no_mangle)]
pub(crate) static CONFIG: Config = Config {
    filter: FILTER_ALL,
    breakdown: 0,
    offsets: Offsets {
        cpuid_function: 0,
        cpuid_index: 0,
        pio_rw: 0,
        pio_port: 0,
        pio_size: 0,
        mmio_type: 0,
        mmio_gpa: 0,
        msr_write: 0,
        msr_ecx: 0,
        hypercall_nr: 0,
        userspace_exit_reason: 0,
        userspace_exit_errno: 0,
        exit_reason: 0,
        exit_isa: 0,
        exit_vcpu_id: 0,
        ioctl_cmd: 0,
        fork_parent_pid: 0,
        fork_child_pid: 0,
    },
    raw: RawOffsets {
        kvm_vcpu_id: 0,
        svm_vmcb: 0,
        vmcb_exit_code: 0,
        vmx_exit_reason: 0,
    },
};

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
    ($field:ident) => {
        $crate::config::config!(offsets.$field) as usize
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
/// answers that without a hash lookup.
#[inline(always)]
pub fn wanted(tgid: u32) -> bool {
    if config!(filter) == FILTER_ALL {
        return true;
    }
    let last = LAST_TRACKED.get_ptr_mut(0);
    if let Some(last) = last {
        // SAFETY: this CPU's slot.
        if unsafe { *last } == tgid {
            return true;
        }
    }
    if TRACKED_TGIDS.get_ptr(tgid).is_none() {
        return false;
    }
    if let Some(last) = last {
        // SAFETY: as above.
        unsafe { *last = tgid };
    }
    true
}
