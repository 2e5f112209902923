//! What can go wrong loading, attaching and reading: one line each,
//! saying what to do.
use aya::programs::ProgramError;

use crate::host::tracefs::TracefsError;

/// Errors of loading and attaching.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Neither root nor `CAP_BPF` with `CAP_PERFMON` (nor `CAP_SYS_ADMIN`).
    #[error("exitprof needs root to load eBPF programs (CAP_BPF, CAP_PERFMON): run it with sudo")]
    NotRoot,
    /// The binary was built without its eBPF object.
    #[error(
        "this exitprof binary was built with AYA_BUILD_SKIP=1 and carries no eBPF programs: rebuild it with `cargo build` after `cargo xtask setup`"
    )]
    NoObject,
    /// tracefs trouble (mount, missing tracepoint, format).
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    /// The kernel refused the object.
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program would not load or attach.
    #[error("attaching {program} to {category}:{event} failed: {source}")]
    Attach {
        /// Program name.
        program: &'static str,
        /// Tracepoint category.
        category: &'static str,
        /// Tracepoint name.
        event: &'static str,
        /// Why.
        source: Box<ProgramError>,
    },
    /// `--attach raw` was asked for, but this kernel's BTF does not allow it.
    #[error("raw tracepoints are not possible here: {0} (use --attach classic or auto)")]
    RawUnavailable(String),
    /// `--in-flight task-storage` was asked for, but this kernel lacks it.
    #[error("task storage is not possible here: {0} (use --in-flight hash or auto)")]
    TaskStorageUnavailable(String),
    /// A map could not be read or written.
    #[error("eBPF map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Why.
        source: Box<aya::maps::MapError>,
    },
}
