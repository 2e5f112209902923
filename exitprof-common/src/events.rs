//! Exit-handler events (`kvm_cpuid`, `kvm_pio`, `kvm_mmio`, `kvm_msr`,
//! `kvm_hypercall`): the map key of each kind and the record offsets its
//! classic program reads. A new kind adds its key and its offsets here,
//! its maps and programs in `exitprof-ebpf/src/handler_events.rs`, and one
//! table entry in `exitprof/src/model/events.rs` (see ARCHITECTURE.md).

/// A key of a handler-event map. User space reads these maps, so with the
/// `user` feature a key is also `aya::Pod`.
#[cfg(feature = "user")]
pub trait EventKey: aya::Pod + Ord + core::fmt::Debug {}
/// A key of a handler-event map.
#[cfg(not(feature = "user"))]
pub trait EventKey: Copy {}

/// Byte offsets of the record fields the classic handler-event programs
/// read, counted from the start of the record (the `common_type` field),
/// as tracefs prints them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventOffsets {
    /// `kvm_cpuid.function`
    pub cpuid_function: u32,
    /// `kvm_cpuid.index`
    pub cpuid_index: u32,
    /// `kvm_pio.rw` (1 = write)
    pub pio_rw: u32,
    /// `kvm_pio.port`
    pub pio_port: u32,
    /// `kvm_pio.size`
    pub pio_size: u32,
    /// `kvm_mmio.type` (0 unsatisfied read, 1 read, 2 write)
    pub mmio_type: u32,
    /// `kvm_mmio.gpa`
    pub mmio_gpa: u32,
    /// `kvm_msr.write`
    pub msr_write: u32,
    /// `kvm_msr.ecx` (the MSR index)
    pub msr_ecx: u32,
    /// `kvm_hypercall.nr`
    pub hypercall_nr: u32,
}

impl EventOffsets {
    /// All zero: the initializer of the eBPF side's `CONFIG`.
    pub const ZERO: Self = Self {
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
    };
}

/// Key of `CPUID_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CpuidKey {
    /// eax on entry.
    pub leaf: u32,
    /// ecx on entry.
    pub subleaf: u32,
}

/// Key of `PIO_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PioKey {
    /// I/O port.
    pub port: u16,
    /// 1 for `out`, 0 for `in`.
    pub write: u8,
    /// Access size in bytes (1, 2, 4).
    pub size: u8,
    /// Always 0 (keeps the key 8 bytes, like the other event keys).
    #[expect(
        clippy::pub_underscore_fields,
        reason = "padding: always 0, and named so"
    )]
    pub _pad: u32,
}

/// Key of `MMIO_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MmioKey {
    /// Guest physical address.
    pub gpa: u64,
    /// 1 for a write, 0 for a (satisfied) read.
    pub write: u32,
    /// Always 0.
    #[expect(
        clippy::pub_underscore_fields,
        reason = "padding: always 0, and named so"
    )]
    pub _pad: u32,
}

/// Key of `MSR_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsrKey {
    /// MSR index (ecx).
    pub index: u32,
    /// 1 for `wrmsr`, 0 for `rdmsr`.
    pub write: u32,
}

/// Key of `HYPERCALL_EVENTS`: the hypercall number (rax).
pub type HypercallKey = u64;

impl EventKey for CpuidKey {}
impl EventKey for PioKey {}
impl EventKey for MmioKey {}
impl EventKey for MsrKey {}
impl EventKey for HypercallKey {}

#[cfg(feature = "user")]
mod pod {
    use super::{CpuidKey, MmioKey, MsrKey, PioKey};
    // SAFETY: `repr(C)` integers with explicit padding fields.
    unsafe impl aya::Pod for CpuidKey {}
    unsafe impl aya::Pod for PioKey {}
    unsafe impl aya::Pod for MmioKey {}
    unsafe impl aya::Pod for MsrKey {}
}
