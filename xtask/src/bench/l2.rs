//! What the sandbox carries for the real guest besides
//! [`sandbox::l2`]'s QEMU and kernel: the guest's `/init` doing a fixed
//! amount of work, and `kvm_stat` with the Python it runs on.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::ensure;

use super::types::GuestWork;
use crate::{
    sandbox::{self, Kernel},
    util::run,
};

/// The guest's `/init` (after [`sandbox::l2::initramfs`]'s mounts, before
/// its power-off): the fixed work.
fn guest_init(w: &GuestWork) -> String {
    format!(
        r#"mount -t tmpfs -o size=200m tmp /tmp
i=0
while [ $i -lt {lines} ]; do
  echo "exitprof real-guest bench: console line $i of {lines} ................"
  i=$((i+1))
done
i=0
while [ $i -lt {cpu} ]; do i=$((i+1)); done
r=0
while [ $r -lt {fault_rounds} ]; do
  dd if=/dev/zero of=/tmp/fault bs=1M count={fault_mb} 2>/dev/null
  rm /tmp/fault
  r=$((r+1))
done
i=0
while [ $i -lt {sleeps} ]; do sleep 0.05; i=$((i+1)); done
echo "@@L2 done""#,
        lines = w.console_lines,
        cpu = w.cpu_loop,
        fault_rounds = w.fault_rounds,
        fault_mb = w.fault_mb,
        sleeps = w.sleeps,
    )
}

/// The guest's initramfs, packed under `target/sandbox`.
pub(super) fn guest_initramfs(work: &GuestWork) -> anyhow::Result<PathBuf> {
    sandbox::l2::initramfs("l2-guest", &guest_init(work), &[])
}

/// `kvm_stat` (Linux's `tools/kvm/kvm_stat`, a Python script that counts
/// the `kvm_exit` tracepoint per reason with perf counters, from Debian's
/// `linux-source-6.1` of the sandbox kernel's version; cached) and the
/// Python it runs on (Debian's `/usr/bin/python3.11` and its standard
/// library), as (host path, sandbox path) pairs.
pub(super) fn kvm_stat(kernel: &Kernel) -> anyhow::Result<Vec<(String, String)>> {
    let python = Path::new("/usr/bin/python3.11");
    let stdlib = Path::new("/usr/lib/python3.11");
    ensure!(
        python.exists() && stdlib.is_dir(),
        "it runs on Python, and this host has no /usr/bin/python3.11 (apt-get install python3.11)"
    );
    let script = sandbox::sandbox_dir().join("kvm_stat");
    if !script.exists() {
        let debs = crate::util::workspace_root().join("target/kernel/debs");
        let deb = crate::util::download_deb(&debs, "linux-source-6.1", &kernel.package_version)?;
        println!(
            "[bench] extracting tools/kvm/kvm_stat from {}",
            deb.display()
        );
        let tmp = script.with_extension("tmp");
        run(Command::new("sh").arg("-c").arg(format!(
            "dpkg-deb --fsys-tarfile {} | tar -xO ./usr/src/linux-source-6.1.tar.xz | tar -xJO linux-source-6.1/tools/kvm/kvm_stat/kvm_stat > {}",
            deb.display(),
            tmp.display()
        )))?;
        fs::rename(&tmp, &script)?;
    }
    let mut files = vec![
        (script.display().to_string(), "/bin/kvm_stat".to_owned()),
        (
            python.display().to_string(),
            "/usr/bin/python3.11".to_owned(),
        ),
    ];
    let skip = [
        "test",
        "idlelib",
        "tkinter",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "turtledemo",
        "unittest",
    ];
    let mut dirs = vec![stdlib.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if skip.iter().any(|s| *s == name) || name.starts_with("config-") {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push((path.display().to_string(), path.display().to_string()));
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_init_does_the_work_then_powers_off() {
        let init = guest_init(&GuestWork {
            console_lines: 3,
            cpu_loop: 4,
            fault_mb: 5,
            fault_rounds: 6,
            sleeps: 7,
        });
        assert!(init.contains("while [ $i -lt 3 ]"));
        assert!(init.contains("bs=1M count=5"));
        assert!(init.ends_with("echo \"@@L2 done\""));
    }
}
