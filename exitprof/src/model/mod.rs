//! The readout model: plain data with typed enums that every presenter
//! (table, JSON, TUI, record/report, exporter) reads. Nothing here touches
//! a map, a file or the kernel; field names are the `--json` contract of
//! README.md ("JSON"): add fields, never rename.
pub mod comparison;
pub mod events;
pub mod per_second;
pub mod rates;
pub mod recording;
pub mod sites;
pub mod snapshot;
pub mod status;

pub use events::Events;
#[cfg(test)]
pub use events::{CpuidRow, PioRow, UserspaceExitRow};
pub use per_second::PerSecond;
pub use sites::{SiteRow, Symbols};
pub use snapshot::{ExitRow, ProgramCost, Snapshot};
pub use status::{Attached, Backend, MirrorScope, MirrorState};
