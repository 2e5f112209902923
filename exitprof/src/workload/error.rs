//! What can go wrong running the workload VM, one line each.
use super::guest::MAX_QUERIES;

/// Errors of the workload VM.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// `/dev/kvm` cannot be opened.
    #[error("{}", open_kvm_message(.0))]
    OpenKvm(std::io::Error),
    /// Guest RAM could not be mapped.
    #[error("cannot map guest memory: {0}")]
    Memory(std::io::Error),
    /// A KVM ioctl failed.
    #[error("{what} failed: {source}")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// The guest stopped in a way the program never does.
    #[error(
        "the guest stopped unexpectedly ({exit}) at rip {rip:#x}; this backend may not support the workload's guest mode"
    )]
    UnexpectedExit {
        /// The exit as kvm-ioctls names it.
        exit: String,
        /// Where.
        rip: u64,
    },
    /// The backend cannot run part of the request.
    #[error("{0}")]
    Unsupported(&'static str),
    /// More queries than the guest's list holds.
    #[error("too many --query ({0}): the guest's query list holds at most {MAX_QUERIES}")]
    TooManyQueries(usize),
    /// The exits that reached user space are not the ones requested.
    #[error("expected {expected} {reason} exits to user space in {rounds} round(s), saw {seen}")]
    Mismatch {
        /// `IO`, `MMIO`, `HLT`.
        reason: &'static str,
        /// Expected count.
        expected: u64,
        /// Seen count.
        seen: u64,
        /// Rounds run.
        rounds: u64,
    },
}

/// What to say when `/dev/kvm` cannot be opened.
#[must_use]
pub fn open_kvm_message(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => "/dev/kvm does not exist: exitprof vm needs KVM (load kvm_intel or kvm_amd, or enable nested virtualization for this VM)".to_owned(),
        std::io::ErrorKind::PermissionDenied => "/dev/kvm: permission denied: run as root or add your user to the kvm group".to_owned(),
        _ => format!("cannot open /dev/kvm: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_open_errors_say_what_to_do() {
        let missing = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert!(open_kvm_message(&missing).starts_with("/dev/kvm does not exist"));
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(open_kvm_message(&denied).contains("kvm group"));
    }
}
