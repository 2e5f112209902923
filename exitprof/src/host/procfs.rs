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

/// Whether process `pid` runs: it exists and is no zombie (a killed VMM
/// whose parent has not reaped it yet has ended).
#[must_use]
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which may hold spaces and ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X"))
}

/// The kernel's `USER_HZ`: `/proc` counts CPU time in ticks of
/// 1/100 s on every architecture Linux's ABI fixes it for (x86 included).
const USER_HZ: f64 = 100.0;

/// This process's CPU time (user and system, in seconds) and resident
/// memory (bytes), from `/proc/self/stat` and `/proc/self/status`.
#[must_use]
pub fn own_usage() -> Option<(f64, u64)> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may hold spaces and ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    #[expect(clippy::cast_precision_loss, reason = "ticks of a process's lifetime")]
    Some((ticks as f64 / USER_HZ, rss_kb * 1024))
}

/// This process's effective capabilities (`CapEff`), as a bit set.
#[must_use]
pub fn effective_capabilities() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_uses_memory() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
        // A child that exited and is not reaped yet is a zombie: ended.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!alive(pid), "a zombie counts as alive");
        child.wait().unwrap();
        let (cpu, rss) = own_usage().unwrap();
        assert!(cpu >= 0.0 && rss > 1024 * 1024, "{cpu} {rss}");
    }
}
