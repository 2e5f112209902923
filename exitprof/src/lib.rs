//! exitprof: why and how long KVM guests leave the guest.
//!
//! Data flows one way: tracepoint → eBPF program → per-CPU map → readout
//! (`bpf/`, one [`model::Snapshot`]) → presenters (`present/`, `tui/`).
//! ARCHITECTURE.md has the codemap and which folder may import which.
//!
//! The binary (`main.rs`) is the clap root over [`commands`]; the library
//! exists so that the fuzz targets and tests can reach the parsers.

pub mod bpf;
pub mod cli;
pub mod commands;
pub mod guest;
pub mod host;
pub mod model;
pub mod present;
pub mod session;
pub mod tui;
pub mod workload;
