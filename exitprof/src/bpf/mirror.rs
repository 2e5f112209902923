//! The guest CPUID mirror: hands exitprof's mirror map (`GUEST_MIRROR`,
//! per VMM process and reason, see `exitprof_common::guest_abi`) to a KVM
//! carrying `kernel-patch/`, which then answers the exitprof CPUID leaves
//! of its guests from the live map: by default each guest its own VM's
//! exits, host-wide only when asked for (`--guest-mirror host`). The
//! registration lasts while the debugfs file stays open, so it ends with
//! the `Mirror` (and with the process, however it dies).
use std::{
    fs::{File, OpenOptions},
    io::{ErrorKind, Write as _},
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use exitprof_common::guest_abi::{self, DEBUGFS_FILE, Scope};

use crate::{host::tracefs, model::MirrorState};

/// Where debugfs lives.
const DEBUGFS: &str = "/sys/kernel/debug";

/// Whose exits guests read (`--guest-mirror`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MirrorChoice {
    /// Each guest its own VM's exits (its VMM process's).
    #[default]
    Vm,
    /// Every guest the whole host's exits: every tenant's activity, only
    /// for hosts whose guests may see it.
    Host,
    /// No registration.
    Off,
}

impl MirrorChoice {
    /// The ABI's scope, when there is a registration.
    #[must_use]
    pub const fn scope(self) -> Option<Scope> {
        match self {
            Self::Vm => Some(Scope::Vm),
            Self::Host => Some(Scope::Host),
            Self::Off => None,
        }
    }
}

/// The outcome of registering with KVM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorStatus {
    /// Registered: guests read this exitprof's map, in this scope.
    Registered(Scope),
    /// Not asked for (`--guest-mirror off`).
    Off,
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
            Self::Registered(_) => MirrorState::Registered,
            Self::Off => MirrorState::Off,
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

    /// What `choice` asks for with `map` (`GUEST_MIRROR`): a registration,
    /// or none; a failure is also said on stderr, as a note. `patched`:
    /// see [`patched`].
    #[must_use]
    pub fn choose(map: Option<&aya::maps::Map>, choice: MirrorChoice, patched: bool) -> Self {
        let mirror = match (choice.scope(), map.and_then(map_fd)) {
            (None, _) => Self::unregistered(MirrorStatus::Off),
            (Some(_), _) if !patched => Self::unregistered(MirrorStatus::Unpatched),
            (Some(scope), Some(fd)) => Self::register(fd, scope),
            (Some(_), None) => Self::unregistered(MirrorStatus::Failed(
                "GUEST_MIRROR is not a per-CPU hash map".to_owned(),
            )),
        };
        if let MirrorStatus::Failed(why) = &mirror.status {
            eprintln!("exitprof: note: guest CPUID mirror: {why}");
        }
        mirror
    }

    /// Registers the map behind `map` with KVM in `scope`, mounting
    /// debugfs first when it is missing.
    #[must_use]
    pub fn register(map: std::os::fd::BorrowedFd<'_>, scope: Scope) -> Self {
        let debugfs = Path::new(DEBUGFS);
        tracefs::ensure_debugfs(DEBUGFS);
        let path = debugfs_file(debugfs);
        let unregistered = Self::unregistered;
        let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return unregistered(MirrorStatus::Unpatched);
            }
            Err(e) => return unregistered(MirrorStatus::Failed(refused(&path, "opening", &e))),
        };
        let text = guest_abi::registration(map.as_raw_fd(), scope).to_string();
        match file.write_all(text.as_bytes()) {
            Ok(()) => Self {
                _file: Some(file),
                status: MirrorStatus::Registered(scope),
            },
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => unregistered(MirrorStatus::Busy),
            Err(e) => unregistered(MirrorStatus::Failed(refused(&path, "writing", &e))),
        }
    }
}

/// Whether this KVM carries the patch (its debugfs file exists), mounting
/// debugfs first when it is missing. Decided before the programs load, so
/// that on a KVM without the patch they leave the mirror map alone.
#[must_use]
pub fn patched() -> bool {
    tracefs::ensure_debugfs(DEBUGFS);
    debugfs_file(Path::new(DEBUGFS)).exists()
}

/// Why registering through `path` failed, in one line that says what to
/// do.
fn refused(path: &Path, doing: &str, e: &std::io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => {
            ": the kernel refuses debugfs to this process (lockdown, or not root); the guest mirror stays off"
        }
        Some(libc::EINVAL) => {
            ": the patched KVM refused the map (an exitprof and a kernel patch of different ABI versions?)"
        }
        _ => "",
    };
    format!("{doing} {}: {e}{hint}", path.display())
}

/// The borrowed descriptor of a map, for [`Mirror::register`].
#[must_use]
pub fn map_fd(map: &aya::maps::Map) -> Option<std::os::fd::BorrowedFd<'_>> {
    match map {
        aya::maps::Map::PerCpuHashMap(data) => Some(data.fd().as_fd()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_states() {
        assert_eq!(MirrorStatus::Busy.state(), MirrorState::Busy);
        assert_eq!(MirrorStatus::Off.state(), MirrorState::Off);
        assert_eq!(
            MirrorStatus::Registered(Scope::Host).state(),
            MirrorState::Registered
        );
        assert_eq!(
            MirrorStatus::Failed("x".into()).state(),
            MirrorState::Failed
        );
        assert_eq!(MirrorChoice::Off.scope(), None);
        assert_eq!(
            debugfs_file(Path::new(DEBUGFS)),
            Path::new("/sys/kernel/debug/kvm/exitprof")
        );
    }

    #[test]
    fn lockdown_reads_as_what_to_do() {
        let e = std::io::Error::from_raw_os_error(libc::EPERM);
        assert_eq!(
            refused(Path::new("/sys/kernel/debug/kvm/exitprof"), "opening", &e),
            "opening /sys/kernel/debug/kvm/exitprof: Operation not permitted (os error 1): the kernel refuses debugfs to this process (lockdown, or not root); the guest mirror stays off"
        );
    }
}
