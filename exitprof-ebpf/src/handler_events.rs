//! Exit-handler events: what KVM's handlers saw (every backend, PVM too).
//! Each event has a classic program (record offsets from tracefs through
//! `CONFIG.offsets`) and a raw one (the `TP_PROTO` arguments, whose types
//! the loader checks against BTF), both thin wrappers around one
//! `record_*` body.
//!
//! A new kind is one key (with its offsets) in `exitprof-common`'s
//! `events.rs`, its maps and programs here, and one table entry in user
//! space (`exitprof/src/model/events.rs`). Map names are the interface
//! with user space's readout.
use aya_ebpf::{
    macros::{map, raw_tracepoint, tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::{RawTracePointContext, TracePointContext},
};
use exitprof_common::{
    events::{CpuidKey, HypercallKey, MmioKey, MsrKey, PioKey},
    maps::{CachedCount, EVENT_CACHE_WAYS, EVENT_MAP_ENTRIES, drop_reason},
};

use crate::{
    config::{current, offset, wanted},
    counters::{increment, increment_cached},
};

/// `kvm_cpuid` by (leaf, subleaf).
#[map]
pub static CPUID_EVENTS: PerCpuHashMap<CpuidKey, u64> =
    PerCpuHashMap::with_max_entries(EVENT_MAP_ENTRIES, 0);

/// Per-CPU front cache of `CPUID_EVENTS` (see `CachedCount`).
#[map]
pub static CPUID_CACHE: PerCpuArray<CachedCount<CpuidKey>> =
    PerCpuArray::with_max_entries(EVENT_CACHE_WAYS, 0);

/// `kvm_pio` by (port, direction, size).
#[map]
pub static PIO_EVENTS: PerCpuHashMap<PioKey, u64> =
    PerCpuHashMap::with_max_entries(EVENT_MAP_ENTRIES, 0);

/// Per-CPU front cache of `PIO_EVENTS`.
#[map]
pub static PIO_CACHE: PerCpuArray<CachedCount<PioKey>> =
    PerCpuArray::with_max_entries(EVENT_CACHE_WAYS, 0);

/// `kvm_mmio` by (gpa, direction); unsatisfied reads are not counted.
#[map]
pub static MMIO_EVENTS: PerCpuHashMap<MmioKey, u64> =
    PerCpuHashMap::with_max_entries(EVENT_MAP_ENTRIES, 0);

/// Per-CPU front cache of `MMIO_EVENTS`.
#[map]
pub static MMIO_CACHE: PerCpuArray<CachedCount<MmioKey>> =
    PerCpuArray::with_max_entries(EVENT_CACHE_WAYS, 0);

/// `kvm_msr` by (index, direction).
#[map]
pub static MSR_EVENTS: PerCpuHashMap<MsrKey, u64> =
    PerCpuHashMap::with_max_entries(EVENT_MAP_ENTRIES, 0);

/// Per-CPU front cache of `MSR_EVENTS`.
#[map]
pub static MSR_CACHE: PerCpuArray<CachedCount<MsrKey>> =
    PerCpuArray::with_max_entries(EVENT_CACHE_WAYS, 0);

/// `kvm_hypercall` by number.
#[map]
pub static HYPERCALL_EVENTS: PerCpuHashMap<HypercallKey, u64> =
    PerCpuHashMap::with_max_entries(EVENT_MAP_ENTRIES, 0);

/// `kvm_mmio.type` of a read that still waits for user space; the matching
/// satisfied read (`1`) follows, so only that one is counted.
const MMIO_UNSATISFIED_READ: u32 = 0;
/// `kvm_mmio.type` of a write.
const MMIO_WRITE: u32 = 2;

/// `kvm:kvm_cpuid` (`kvm_emulate_cpuid`): one per guest CPUID.
#[tracepoint]
pub fn kvm_cpuid(ctx: TracePointContext) -> u32 {
    try_kvm_cpuid(&ctx).unwrap_or(1)
}

fn try_kvm_cpuid(ctx: &TracePointContext) -> Result<u32, i64> {
    if !wanted(current().0) {
        return Ok(0);
    }
    // SAFETY: offsets were read from this kernel's tracefs format.
    let key = unsafe {
        CpuidKey {
            leaf: ctx.read_at::<u32>(offset!(events.cpuid_function))?,
            subleaf: ctx.read_at::<u32>(offset!(events.cpuid_index))?,
        }
    };
    record_cpuid(&key);
    Ok(0)
}

/// `kvm_cpuid(unsigned int function, unsigned int index, ...)`, raw.
#[raw_tracepoint(tracepoint = "kvm_cpuid")]
pub fn kvm_cpuid_raw(ctx: RawTracePointContext) -> u32 {
    if wanted(current().0) {
        let key = CpuidKey {
            leaf: ctx.arg::<u64>(0) as u32,
            subleaf: ctx.arg::<u64>(1) as u32,
        };
        record_cpuid(&key);
    }
    0
}

#[inline(always)]
fn record_cpuid(key: &CpuidKey) {
    increment_cached(&CPUID_CACHE, key.leaf ^ key.subleaf, &CPUID_EVENTS, key);
}

/// `kvm:kvm_pio` (`kernel_pio`/`emulator_pio_in_out`): one per port access.
#[tracepoint]
pub fn kvm_pio(ctx: TracePointContext) -> u32 {
    try_kvm_pio(&ctx).unwrap_or(1)
}

fn try_kvm_pio(ctx: &TracePointContext) -> Result<u32, i64> {
    if !wanted(current().0) {
        return Ok(0);
    }
    // SAFETY: as above.
    let key = unsafe {
        PioKey {
            port: ctx.read_at::<u32>(offset!(events.pio_port))? as u16,
            write: u8::from(ctx.read_at::<u32>(offset!(events.pio_rw))? != 0),
            size: ctx.read_at::<u32>(offset!(events.pio_size))? as u8,
            _pad: 0,
        }
    };
    record_pio(&key);
    Ok(0)
}

/// `kvm_pio(unsigned int rw, unsigned int port, unsigned int size, ...)`,
/// raw.
#[raw_tracepoint(tracepoint = "kvm_pio")]
pub fn kvm_pio_raw(ctx: RawTracePointContext) -> u32 {
    if wanted(current().0) {
        let key = PioKey {
            port: ctx.arg::<u64>(1) as u16,
            write: u8::from(ctx.arg::<u64>(0) as u32 != 0),
            size: ctx.arg::<u64>(2) as u8,
            _pad: 0,
        };
        record_pio(&key);
    }
    0
}

/// `out` and `in` of one port alternate: they get different ways.
#[inline(always)]
fn record_pio(key: &PioKey) {
    increment_cached(
        &PIO_CACHE,
        u32::from(key.write) | u32::from(key.port) << 1,
        &PIO_EVENTS,
        key,
    );
}

/// `kvm:kvm_mmio`: MMIO reads and writes KVM emulated.
#[tracepoint]
pub fn kvm_mmio(ctx: TracePointContext) -> u32 {
    try_kvm_mmio(&ctx).unwrap_or(1)
}

fn try_kvm_mmio(ctx: &TracePointContext) -> Result<u32, i64> {
    if !wanted(current().0) {
        return Ok(0);
    }
    // SAFETY: as above.
    let (kind, gpa) = unsafe {
        (
            ctx.read_at::<u32>(offset!(events.mmio_type))?,
            ctx.read_at::<u64>(offset!(events.mmio_gpa))?,
        )
    };
    record_mmio(kind, gpa);
    Ok(0)
}

/// `kvm_mmio(int type, int len, u64 gpa, void *val)`, raw.
#[raw_tracepoint(tracepoint = "kvm_mmio")]
pub fn kvm_mmio_raw(ctx: RawTracePointContext) -> u32 {
    if wanted(current().0) {
        record_mmio(ctx.arg::<u64>(0) as u32, ctx.arg::<u64>(2));
    }
    0
}

#[inline(always)]
fn record_mmio(kind: u32, gpa: u64) {
    if kind == MMIO_UNSATISFIED_READ {
        return;
    }
    let key = MmioKey {
        gpa,
        write: u32::from(kind == MMIO_WRITE),
        _pad: 0,
    };
    increment_cached(
        &MMIO_CACHE,
        key.write | ((key.gpa >> 2) as u32) << 1,
        &MMIO_EVENTS,
        &key,
    );
}

/// `kvm:kvm_msr`: `rdmsr`/`wrmsr` KVM handled.
#[tracepoint]
pub fn kvm_msr(ctx: TracePointContext) -> u32 {
    try_kvm_msr(&ctx).unwrap_or(1)
}

fn try_kvm_msr(ctx: &TracePointContext) -> Result<u32, i64> {
    if !wanted(current().0) {
        return Ok(0);
    }
    // SAFETY: as above.
    let key = unsafe {
        MsrKey {
            index: ctx.read_at::<u32>(offset!(events.msr_ecx))?,
            write: u32::from(ctx.read_at::<u32>(offset!(events.msr_write))? != 0),
        }
    };
    record_msr(&key);
    Ok(0)
}

/// `kvm_msr(unsigned write, u32 ecx, u64 data, bool exception)`, raw.
#[raw_tracepoint(tracepoint = "kvm_msr")]
pub fn kvm_msr_raw(ctx: RawTracePointContext) -> u32 {
    if wanted(current().0) {
        let key = MsrKey {
            index: ctx.arg::<u64>(1) as u32,
            write: u32::from(ctx.arg::<u64>(0) as u32 != 0),
        };
        record_msr(&key);
    }
    0
}

/// `rdmsr` and `wrmsr` of one MSR alternate: they get different ways.
#[inline(always)]
fn record_msr(key: &MsrKey) {
    increment_cached(&MSR_CACHE, key.write | key.index << 1, &MSR_EVENTS, key);
}

/// `kvm:kvm_hypercall`: `vmcall`/`vmmcall` KVM handled.
#[tracepoint]
pub fn kvm_hypercall(ctx: TracePointContext) -> u32 {
    try_kvm_hypercall(&ctx).unwrap_or(1)
}

fn try_kvm_hypercall(ctx: &TracePointContext) -> Result<u32, i64> {
    if !wanted(current().0) {
        return Ok(0);
    }
    // SAFETY: as above.
    let nr = unsafe { ctx.read_at::<u64>(offset!(events.hypercall_nr))? };
    increment(&HYPERCALL_EVENTS, &nr, drop_reason::EVENT_MAP_FULL);
    Ok(0)
}

/// `kvm_hypercall(unsigned long nr, ...)`, raw.
#[raw_tracepoint(tracepoint = "kvm_hypercall")]
pub fn kvm_hypercall_raw(ctx: RawTracePointContext) -> u32 {
    if wanted(current().0) {
        let nr = ctx.arg::<u64>(0);
        increment(&HYPERCALL_EVENTS, &nr, drop_reason::EVENT_MAP_FULL);
    }
    0
}
