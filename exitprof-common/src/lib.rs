//! Types shared by exitprof's eBPF programs (`exitprof-ebpf`) and its user
//! space (`exitprof`): map keys and values, the loader's configuration
//! global, the exit-reason tables with their dense index, and the guest
//! CPUID ABI constants.
//!
//! Everything here is `#[repr(C)]` and `no_std`; the `user` feature adds
//! `aya::Pod` impls so user space can read the maps.
#![no_std]

pub mod config;
pub mod events;
pub mod guest_abi;
pub mod maps;
pub mod reasons;
pub mod userspace_exit;

pub use config::Config;
pub use reasons::Isa;
