//! exitprof's eBPF programs. One module per kernel hook; every program
//! aggregates into per-CPU maps (`maps.rs`) and never formats anything.
//! Configuration (record field offsets, the process filter) arrives in the
//! `CONFIG` global, set by the loader before the object is loaded.
#![no_std]
#![no_main]
// Deliberate, crate-wide (the eBPF side differs from user space here):
#![expect(
    clippy::inline_always,
    reason = "every helper runs on the hot path of every VM exit: inlined, the verifier sees straight-line code and no BPF-to-BPF calls"
)]
#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "raw tracepoint arguments arrive as u64 registers; a cast takes the width of the tracepoint's C type"
)]
#![expect(
    clippy::cast_ptr_alignment,
    reason = "kernel memory is read with bpf_probe_read_kernel, which copies and needs no alignment"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros pass the context by value"
)]

mod config;
mod counters;
mod handler_events;
mod in_flight;
mod maps;
mod mirror;
mod process;
mod userspace_roundtrip;
mod vmexit;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
