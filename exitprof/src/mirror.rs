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
    /// The `guest_mirror` value of the JSON output.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Unpatched => "unpatched",
            Self::Busy => "busy",
            Self::Failed(_) => "failed",
        }
    }

    /// One line for humans about the status named `name` (see
    /// [`Self::name`]).
    #[must_use]
    pub fn describe(name: &str) -> String {
        let file = debugfs_file(Path::new(DEBUGFS));
        match name {
            "registered" => format!(
                "registered with KVM ({}): guests read these counts with CPUID 0x4FFFFFFB..0x4FFFFFFF",
                file.display()
            ),
            "unpatched" => format!(
                "off: this KVM has no exitprof patch (no {}; see kernel-patch/)",
                file.display()
            ),
            "busy" => "off: another exitprof holds KVM's CPUID mirror; stop it to mirror this one"
                .to_owned(),
            _ => "off: registering with KVM failed (see the note above)".to_owned(),
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
        ensure_debugfs();
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

/// Mounts debugfs when nothing is mounted there (a fresh machine may not
/// have it); a failure surfaces as "unpatched" or "failed" later.
fn ensure_debugfs() {
    let dir = Path::new(DEBUGFS);
    if dir.join("kvm").exists() || dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return;
    }
    let _ = crate::tracefs::mount_pseudo("debugfs", DEBUGFS);
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
    fn statuses_read_as_one_line_each() {
        assert_eq!(
            MirrorStatus::describe(MirrorStatus::Unpatched.name()),
            "off: this KVM has no exitprof patch (no /sys/kernel/debug/kvm/exitprof; see kernel-patch/)"
        );
        assert_eq!(
            MirrorStatus::describe(MirrorStatus::Busy.name()),
            "off: another exitprof holds KVM's CPUID mirror; stop it to mirror this one"
        );
        assert_eq!(MirrorStatus::Registered.name(), "registered");
        assert_eq!(MirrorStatus::Failed("x".into()).name(), "failed");
    }
}
