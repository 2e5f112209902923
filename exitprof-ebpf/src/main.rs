//! exitprof's eBPF programs. One module per kernel hook; every program
//! aggregates into per-CPU maps (`maps.rs`) and never formats anything.
//! Configuration (record field offsets, the process filter) arrives in the
//! `CONFIG` global, set by the loader before the object is loaded.
#![no_std]
#![no_main]

mod config;
mod counters;
mod handler_events;
mod maps;
mod process;
mod userspace_roundtrip;
mod vmexit;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
