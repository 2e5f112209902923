//! Facts about processes and the host from `/proc`.
use std::fs;

/// The host's name ("?" when it cannot be read).
#[must_use]
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "?".to_owned(), |h| h.trim().to_owned())
}

/// The running kernel's release (`uname -r`; "" when it cannot be read).
#[must_use]
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| String::new(), |r| r.trim().to_owned())
}

/// `/proc/<pid>/comm`, if the process exists.
#[must_use]
pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_owned())
}

/// Whether process `pid` holds a KVM file open (`/dev/kvm`, a VM or a
/// vCPU); `None` when its descriptors cannot be read (not root).
#[must_use]
pub fn holds_kvm(pid: u32) -> Option<bool> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(fds.filter_map(Result::ok).any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|l| {
            let l = l.to_string_lossy();
            l == "/dev/kvm" || l.starts_with("anon_inode:kvm-")
        })
    }))
}

/// The first of `pids` that is surely no VM (holds no KVM file), as a
/// one-line reason, for `--pid` arguments.
#[must_use]
pub fn not_a_vm(pids: &[u32]) -> Option<String> {
    pids.iter().find(|&&pid| holds_kvm(pid) == Some(false)).map(|&pid| {
        format!(
            "pid {pid} ({}) is not a VM: it has neither /dev/kvm nor a KVM VM open; give the VMM's pid (pidof qemu-system-x86_64), or run the VMM under `exitprof stat -- COMMAND`",
            comm(pid).unwrap_or_else(|| "?".to_owned())
        )
    })
}

/// The first process other than `except` that holds a KVM VM open.
#[must_use]
pub fn other_vm(except: &[u32]) -> Option<u32> {
    let procs = fs::read_dir("/proc").ok()?;
    for entry in procs.filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if except.contains(&pid) {
            continue;
        }
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            if fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == "anon_inode:kvm-vm") {
                return Some(pid);
            }
        }
    }
    None
}
