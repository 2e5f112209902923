//! Facts of the host kernel, read without aya: the KVM backend and vendor
//! module (one detection), the paging mode and module reloads, tracefs and
//! debugfs, kernel BTF, `/proc`, and the names of VMs (`vmname.rs`).
pub mod backend;
pub mod btf;
pub mod paging;
pub mod procfs;
pub mod reload;
pub mod tracefs;
pub mod vmname;
