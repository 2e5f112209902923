//! What the sandbox carries for the real guest: the guest's initramfs
//! (busybox and an `/init` doing a fixed amount of work), QEMU's firmware,
//! and `kvm_stat` with the Python it runs on.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use super::types::GuestWork;
use crate::{
    sandbox::{self, Kernel},
    util::run,
};

/// The guest's `/init`: the fixed work, then power off.
fn guest_init(w: &GuestWork) -> String {
    format!(
        r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev
mount -t tmpfs -o size=200m tmp /tmp
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
echo "@@L2 done"
poweroff -f
"#,
        lines = w.console_lines,
        cpu = w.cpu_loop,
        fault_rounds = w.fault_rounds,
        fault_mb = w.fault_mb,
        sleeps = w.sleeps,
    )
}

/// Packs the guest's initramfs (busybox and `/init`) under
/// `target/sandbox`.
pub(super) fn guest_initramfs(work: &GuestWork) -> anyhow::Result<PathBuf> {
    let root = sandbox::sandbox_dir().join("initramfs").join("l2-guest");
    let _ = fs::remove_dir_all(&root);
    for dir in ["bin", "proc", "dev", "tmp"] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static is missing")?;
    for applet in [
        "sh", "mount", "echo", "dd", "rm", "sleep", "poweroff", "grep", "cat",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    let init = root.join("init");
    fs::write(&init, guest_init(work))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    let image = sandbox::sandbox_dir().join("l2-guest.initramfs.gz");
    run(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find . -print | cpio -o -H newc --quiet | gzip -1 > {}",
            image.display()
        ))
        .current_dir(&root))?;
    Ok(image)
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

/// The firmware `qemu-system-x86_64 -L` needs for `-kernel` on the PC
/// machine: the BIOS (seabios), the option ROM that loads the kernel, the vAPIC
/// ROM.
pub(super) fn firmware() -> anyhow::Result<Vec<PathBuf>> {
    let want = [
        "bios-256k.bin",
        "linuxboot_dma.bin",
        "kvmvapic.bin",
        "efi-e1000.rom",
    ];
    let dirs = [
        "/usr/share/seabios",
        "/usr/share/qemu",
        "/usr/lib/ipxe/qemu",
    ];
    let mut found = Vec::new();
    for name in want {
        match dirs
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
        {
            Some(p) => found.push(p),
            // -nodefaults has no NIC: its ROM is optional.
            None if name == "efi-e1000.rom" => {}
            None => bail!(
                "{name} not found in {dirs:?}: install qemu-system-x86 and seabios (`cargo xtask setup`)"
            ),
        }
    }
    Ok(found)
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
        assert!(init.trim_end().ends_with("echo \"@@L2 done\"\npoweroff -f"));
    }
}
