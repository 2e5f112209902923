//! The guest CPUID mirror: hands exitprof's per-reason map (`EXIT_STATS`)
//! to a KVM carrying `kernel-patch/`, which then answers the exitprof CPUID
//! leaves of its guests from the live map. The registration lasts while
//! the debugfs file stays open, so it ends with the `Mirror` (and with the
//! process, however it dies).
use std::{
    fs::{File, OpenOptions},
    io::{ErrorKind, Write as _},
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use exitprof_common::guest_abi::DEBUGFS_FILE;

use crate::{host::tracefs, model::MirrorState};

/// Where debugfs lives.
const DEBUGFS: &str = "/sys/kernel/debug";

/// The outcome of registering with KVM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorStatus {
    /// Registered: guests read this exitprof's maps.
    Registered,
    /// This KVM has no exitprof patch (no debugfs file).
    Unpatched,
    /// Another exitprof holds the registration.
    Busy,
    /// Registration failed for another reason.
    Failed(String),
}

impl MirrorStatus {
    /// The state a snapshot reports.
    #[must_use]
    pub const fn state(&self) -> MirrorState {
        match self {
            Self::Registered => MirrorState::Registered,
            Self::Unpatched => MirrorState::Unpatched,
            Self::Busy => MirrorState::Busy,
            Self::Failed(_) => MirrorState::Failed,
        }
    }
}

fn debugfs_file(debugfs: &Path) -> PathBuf {
    debugfs.join("kvm").join(DEBUGFS_FILE)
}

/// A registration (or the reason there is none).
#[derive(Debug)]
pub struct Mirror {
    /// Open while registered.
    _file: Option<File>,
    /// What happened.
    pub status: MirrorStatus,
}

impl Mirror {
    /// No registration, for `status`.
    #[must_use]
    pub fn unregistered(status: MirrorStatus) -> Self {
        Self {
            _file: None,
            status,
        }
    }

    /// Registers the map behind `map` with KVM, mounting debugfs first
    /// when it is missing.
    #[must_use]
    pub fn register(map: std::os::fd::BorrowedFd<'_>) -> Self {
        let debugfs = Path::new(DEBUGFS);
        tracefs::ensure_debugfs(DEBUGFS);
        let path = debugfs_file(debugfs);
        let unregistered = Self::unregistered;
        let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return unregistered(MirrorStatus::Unpatched);
            }
            Err(e) => {
                return unregistered(MirrorStatus::Failed(format!("{}: {e}", path.display())));
            }
        };
        match file.write_all(map.as_raw_fd().to_string().as_bytes()) {
            Ok(()) => Self {
                _file: Some(file),
                status: MirrorStatus::Registered,
            },
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => unregistered(MirrorStatus::Busy),
            Err(e) => unregistered(MirrorStatus::Failed(format!(
                "writing {}: {e}",
                path.display()
            ))),
        }
    }
}

/// The borrowed descriptor of a map, for [`Mirror::register`].
#[must_use]
pub fn map_fd(map: &aya::maps::Map) -> Option<std::os::fd::BorrowedFd<'_>> {
    match map {
        aya::maps::Map::PerCpuArray(data) => Some(data.fd().as_fd()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_states() {
        assert_eq!(MirrorStatus::Busy.state(), MirrorState::Busy);
        assert_eq!(
            MirrorStatus::Failed("x".into()).state(),
            MirrorState::Failed
        );
        assert_eq!(
            debugfs_file(Path::new(DEBUGFS)),
            Path::new("/sys/kernel/debug/kvm/exitprof")
        );
    }
}
