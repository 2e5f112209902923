//! The recording format of `exitprof record`, read back by `exitprof
//! report`: one JSON object, versioned. Version 1:
//!
//! ```text
//! {"format": "exitprof-record", "version": 1, "host": str, "backend": str,
//!  "command": [str],
//!  "runs": [{"mode": "nested"|"shadow"|"current", "paging": "npt=1"?,
//!            "exit_status": i32?, "interval_ns": u64,
//!            "snapshots": [Snapshot], "final": Snapshot}]}
//! ```
//!
//! `Snapshot` is the `--json` contract of README.md; `snapshots` are
//! cumulative, one per interval; `final` covers the whole run.
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{snapshot::Snapshot, status::Backend};

/// The `format` field.
pub const FORMAT: &str = "exitprof-record";
/// The version this exitprof writes and reads.
pub const VERSION: u32 = 1;

/// A recording.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recording {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// Host name.
    pub host: String,
    /// KVM backend.
    pub backend: Backend,
    /// The workload.
    pub command: Vec<String>,
    /// One per paging mode.
    pub runs: Vec<Run>,
}

/// The paging mode a run was recorded under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PagingMode {
    /// Nested paging (EPT on Intel, NPT on AMD).
    Nested,
    /// Shadow paging (`ept=0`/`npt=0`).
    Shadow,
    /// Whatever the host runs; it could not be switched or read.
    Current,
}

impl PagingMode {
    /// "nested", "shadow" or "current".
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Nested => "nested",
            Self::Shadow => "shadow",
            Self::Current => "current",
        }
    }

    /// The mode of a module whose nested paging is `nested`.
    #[must_use]
    pub const fn of(nested: bool) -> Self {
        if nested { Self::Nested } else { Self::Shadow }
    }
}

/// One run of the workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The paging mode of this run.
    pub mode: PagingMode,
    /// The module parameter in force, e.g. "npt=1".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paging: Option<String>,
    /// The workload's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// Interval of `snapshots`.
    pub interval_ns: u64,
    /// Cumulative snapshots, one per interval.
    pub snapshots: Vec<Snapshot>,
    /// The whole run.
    #[serde(rename = "final")]
    pub total: Snapshot,
}

/// Why a recording cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The file cannot be read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// Not JSON, or not an exitprof recording.
    #[error("{path} is not an exitprof recording: {why}")]
    NotARecording {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// Another version.
    #[error("{path} is a version {found} recording; this exitprof reads version {VERSION}")]
    Version {
        /// The file.
        path: String,
        /// Its version.
        found: u64,
    },
    /// Right format and version, wrong content.
    #[error("{path} is damaged: {why}")]
    Damaged {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
}

impl Recording {
    /// Parses `text` (from `path`, for messages).
    ///
    /// # Errors
    /// See [`RecordingError`].
    pub fn parse(text: &str, path: &str) -> Result<Self, RecordingError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| RecordingError::NotARecording {
                path: path.to_owned(),
                why: format!("not JSON ({e})"),
            })?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(RecordingError::NotARecording {
                path: path.to_owned(),
                why: format!("no \"format\": \"{FORMAT}\""),
            });
        }
        let found = value
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if found != u64::from(VERSION) {
            return Err(RecordingError::Version {
                path: path.to_owned(),
                found,
            });
        }
        serde_json::from_value(value).map_err(|e| RecordingError::Damaged {
            path: path.to_owned(),
            why: e.to_string(),
        })
    }

    /// Reads a recording file.
    ///
    /// # Errors
    /// See [`RecordingError`].
    pub fn load(path: &Path) -> Result<Self, RecordingError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|error| RecordingError::Io {
            path: shown.clone(),
            error,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| RecordingError::NotARecording {
            path: shown.clone(),
            why: "not JSON (not even UTF-8 text)".to_owned(),
        })?;
        Self::parse(&text, &shown)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::ExitRow;
    use exitprof_common::Isa;

    /// A two-run recording: nested (cpuid 100, npf 10) and shadow
    /// (cpuid 100, `write_cr3` 50, PF excp 40).
    pub fn sample() -> Recording {
        let row = |name: &str, reason: u32, count: u64, total_ns: u64| ExitRow {
            isa: Isa::Svm,
            reason,
            name: name.into(),
            count,
            timed: count,
            total_ns,
            min_ns: 1,
            max_ns: total_ns,
            hist_log2_ns: vec![0; 31],
            ..ExitRow::default()
        };
        let run = |mode: PagingMode, paging: &str, rows: Vec<ExitRow>| {
            let mut total = Snapshot::empty(Backend::Svm);
            total.interval_ns = 1_000_000_000;
            total.exits = rows;
            Run {
                mode,
                paging: Some(paging.into()),
                exit_status: Some(0),
                interval_ns: 1_000_000_000,
                snapshots: vec![total.clone()],
                total,
            }
        };
        Recording {
            format: FORMAT.into(),
            version: VERSION,
            host: "h".into(),
            backend: Backend::Svm,
            command: vec!["exitprof".into(), "vm".into()],
            runs: vec![
                run(
                    PagingMode::Nested,
                    "npt=1",
                    vec![
                        row("cpuid", 0x72, 100, 1_000_000),
                        row("npf", 0x400, 10, 500_000),
                    ],
                ),
                run(
                    PagingMode::Shadow,
                    "npt=0",
                    vec![
                        row("cpuid", 0x72, 100, 1_000_000),
                        row("write_cr3", 0x13, 50, 2_000_000),
                        row("PF excp", 0x4e, 40, 8_000_000),
                    ],
                ),
            ],
        }
    }

    #[test]
    fn round_trip_and_errors() {
        let text = serde_json::to_string(&sample()).unwrap();
        assert!(text.contains("\"final\":"), "the contract's name");
        assert_eq!(Recording::parse(&text, "r.json").unwrap(), sample());
        let err = Recording::parse("{]", "r.json").unwrap_err().to_string();
        assert!(
            err.starts_with("r.json is not an exitprof recording: not JSON"),
            "{err}"
        );
        let err = Recording::parse("{\"a\": 1}", "r.json")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "r.json is not an exitprof recording: no \"format\": \"exitprof-record\""
        );
        let v2 = text.replace("\"version\":1", "\"version\":2");
        let err = Recording::parse(&v2, "r.json").unwrap_err().to_string();
        assert_eq!(
            err,
            "r.json is a version 2 recording; this exitprof reads version 1"
        );
        let damaged = text.replace("\"runs\":[", "\"runs\":[7,");
        let err = Recording::parse(&damaged, "r.json")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("r.json is damaged: "), "{err}");
        let cut = &text[..text.len() / 2];
        assert!(Recording::parse(cut, "r.json").is_err());
    }
}
