//! The initramfs both sandboxes boot: static busybox, exitprof (and any
//! extra programs) with their libraries, the KVM modules under
//! `/lib/modules` with their `modules.dep`, and an `/init` that loads the
//! vendor module and runs the scenario's script.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};

use super::{
    debian::Kernel,
    scenario::{Scenario, Vendor, sandbox_dir},
};
use crate::util::{output, run};

/// Busybox applets the init and the scenarios use.
const APPLETS: &[&str] = &[
    "sh", "mount", "mkdir", "insmod", "rmmod", "cat", "echo", "grep", "sed", "sort", "uniq",
    "tail", "head", "wc", "sleep", "poweroff", "ls", "dmesg", "kill", "pidof", "tr", "cut", "awk",
    "true", "false", "test", "[", "uname", "timeout", "depmod", "modprobe", "modinfo", "cp", "mv",
    "ifconfig", "wget",
];

/// What happens to the modules' appended signatures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Signatures {
    /// The image's files as they are.
    Keep,
    /// Cut off: the module's code, its BTF and its build id stay the same,
    /// and the kernel (which does not enforce signatures) loads it tainted
    /// `E`. Under Bochs verifying the signatures of kvm and kvm-intel costs
    /// about 3 s of CPU per load (of about 5 s), and `record` loads
    /// kvm-intel four times.
    Strip,
}

/// The end of a signed module (`MODULE_SIG_STRING`).
const SIGNATURE_MAGIC: &[u8] = b"~Module signature appended~\n";

/// A module's bytes without its appended signature (unchanged when it
/// has none): the signer's name, the key id and the signature, then
/// `struct module_signature` (12 bytes: their lengths at 3, 4 and, big
/// endian, 8..12) precede the magic string.
fn strip_signature(module: &[u8]) -> &[u8] {
    let Some(body) = module.strip_suffix(SIGNATURE_MAGIC) else {
        return module;
    };
    let Some(info) = body.len().checked_sub(12).map(|at| &body[at..]) else {
        return module;
    };
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    let appended = 12 + usize::from(info[3]) + usize::from(info[4]) + sig_len;
    body.len()
        .checked_sub(appended)
        .map_or(module, |end| &body[..end])
}

/// A module's bytes; 6.12's image ships `<m>.xz` instead, which busybox's
/// modprobe cannot load: it is unpacked.
fn read_module(from: &Path) -> anyhow::Result<Vec<u8>> {
    if from.exists() {
        return fs::read(from).with_context(|| format!("reading {}", from.display()));
    }
    let xz = from.with_extension("ko.xz");
    let out = Command::new("xz")
        .arg("-dc")
        .arg(&xz)
        .output()
        .with_context(|| format!("failed to run xz for {}", xz.display()))?;
    ensure!(
        out.status.success(),
        "unpacking {} failed: {}",
        xz.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

/// Copies `binary` and the shared libraries `ldd` lists (with the loader)
/// into `root`, keeping their paths.
///
/// # Errors
/// When a file cannot be copied.
pub fn add_binary(root: &Path, binary: &Path, dest: &str) -> anyhow::Result<()> {
    let target = root.join(dest.trim_start_matches('/'));
    fs::create_dir_all(target.parent().expect("dest has a parent"))?;
    fs::copy(binary, &target).with_context(|| format!("copying {}", binary.display()))?;
    let ldd = output(Command::new("ldd").arg(binary)).unwrap_or_default();
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let to = root.join(lib.trim_start_matches('/'));
        if !to.exists() {
            fs::create_dir_all(to.parent().expect("absolute"))?;
            fs::copy(lib, &to).with_context(|| format!("copying {lib}"))?;
        }
    }
    Ok(())
}

/// `/init`: mounts, the vendor module with the scenario's paging mode,
/// the scenario, and `@@EXITPROF exit <status>` as the last line (the
/// Bochs backend stops the emulator when it reads it; QEMU's ends at the
/// power-off).
fn init_script(vendor: Vendor, nested_paging: bool) -> String {
    let (module, param) = (vendor.module(), vendor.paging_param());
    let (keeper, heartbeat) = if vendor == Vendor::Svm {
        (SVM_KEEPER, SVM_HEARTBEAT)
    } else {
        ("", "")
    };
    format!(
        "#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tracefs nodev /sys/kernel/tracing
mount -t debugfs nodev /sys/kernel/debug
modprobe {module} {param}={on}
echo \"@@EXITPROF booted $(cut -d' ' -f1 /proc/uptime)\"
echo \"@@EXITPROF nested_paging $(cat /sys/module/{module}/parameters/{param} 2>/dev/null)\"
echo \"@@EXITPROF kvm $(ls /dev/kvm 2>&1)\"
{keeper}{heartbeat}sh /scenario.sh
echo \"@@EXITPROF exit $?\"
# Power off once the UART has sent what the console holds (its tx count
# stands still): Bochs times the UART, and power-off drops the rest.
i=0
while [ $i -lt 100 ]; do
  tx=$(grep -o 'tx:[0-9]*' /proc/tty/driver/serial | head -n 1)
  [ \"$tx\" = \"$last\" ] && break
  last=$tx; i=$((i+1)); sleep 0.1
done
poweroff -f
",
        on = u8::from(nested_paging)
    )
}

/// The SVM sandbox's VM held for the whole boot (its one round runs at
/// once, then it sleeps: no exits after). KVM switches a static key when
/// the first VM is created and the last destroyed, which patches
/// `__schedule`; under QEMU's multi-threaded TCG the other vCPU may then
/// run a stale int3 from the patching forever (seen: both vCPUs looping in
/// `exc_int3` from `__schedule+0x2ac` after a few dozen VMs came and went;
/// on 6.12 an "Oops: int3" there). With this VM alive the key never
/// switches again. Scenarios that reload the vendor module stop it first
/// (`$KVM_KEEPER`).
const SVM_KEEPER: &str = "exitprof vm --rounds 0 --pause-ms 86400000 > /dev/null 2>&1 &
export KVM_KEEPER=$!
";

/// The SVM sandbox kernel's heartbeat, on QEMU's second serial port (the
/// boot's `.heartbeat` file), which the watchdog reads
/// (`scenario::HEARTBEAT_LIMIT`).
const SVM_HEARTBEAT: &str = "( while :; do echo beat > /dev/ttyS1; sleep 2; done ) &
";

/// Script lines that stop [`SVM_KEEPER`]'s VM and wait until it is gone
/// (a zombie holds no file, so no VM), for a scenario that reloads the
/// vendor module; nothing where there is none.
pub const STOP_KVM_KEEPER: &str = "if [ -n \"$KVM_KEEPER\" ]; then
  kill $KVM_KEEPER
  while [ -d /proc/$KVM_KEEPER ] && ! grep -q '^State:.*Z' /proc/$KVM_KEEPER/status 2>/dev/null; do sleep 0.1; done
fi
";

/// A fresh `target/sandbox/initramfs/<name>` with `/bin/busybox` and
/// its `applets`, and empty `/dev`, `/proc`, `/sys` and `/tmp`.
pub(super) fn busybox_tree(name: &str, applets: &[&str]) -> anyhow::Result<PathBuf> {
    let root = sandbox_dir().join("initramfs").join(name);
    let _ = fs::remove_dir_all(&root);
    for dir in ["bin", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static is missing")?;
    for applet in applets {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    Ok(root)
}

/// Assembles the initramfs's files for `scenario` in
/// `target/sandbox/initramfs/<name>` and returns that directory.
pub fn root(
    kernel: &Kernel,
    exitprof: &Path,
    scenario: &Scenario,
    signatures: Signatures,
) -> anyhow::Result<PathBuf> {
    let root = busybox_tree(scenario.name, APPLETS)?;
    add_binary(&root, exitprof, "/bin/exitprof")?;
    for (from, to) in scenario.extra {
        add_binary(&root, Path::new(from), to)?;
    }
    // Under /lib/modules like an installed kernel, so that modprobe (and
    // exitprof record's module reload) work.
    let modules = root.join("lib/modules").join(&kernel.release);
    for m in scenario.vendor.module_files() {
        let patched = scenario
            .modules
            .map(|dir| dir.join(m))
            .filter(|p| p.exists());
        let from = patched.unwrap_or_else(|| kernel.modules.join("kernel").join(m));
        let to = modules.join("kernel").join(m);
        fs::create_dir_all(to.parent().expect("module path"))?;
        let bytes = read_module(&from)?;
        let bytes = match signatures {
            Signatures::Keep => &bytes[..],
            Signatures::Strip => strip_signature(&bytes),
        };
        fs::write(&to, bytes)?;
    }
    // modules.dep made here by the same busybox the sandbox runs: the
    // guest's own depmod costs a second of emulated CPU per boot.
    run(Command::new("/bin/busybox")
        .args(["depmod", "-b"])
        .arg(&root)
        .arg(&kernel.release))?;
    let init = root.join("init");
    fs::write(&init, init_script(scenario.vendor, scenario.nested_paging))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    fs::write(root.join("scenario.sh"), scenario.script)?;
    Ok(root)
}

/// Packs `root` as a `newc` cpio archive at `image`, gzipped (`-1`) or
/// not, and then removes `root` (a few hundred MB for the bench: the disk
/// of a CI machine is not large). (Bochs loads an uncompressed one faster
/// than its kernel inflates a compressed one; QEMU's loader is fast either
/// way.)
pub fn pack(root: &Path, image: &Path, gzip: bool) -> anyhow::Result<()> {
    let compress = if gzip { " | gzip -1" } else { "" };
    run(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find . -print | cpio -o -H newc --quiet{compress} > '{}'",
            image.display()
        ))
        .current_dir(root))?;
    ensure!(
        fs::metadata(image).is_ok_and(|m| m.len() > 0),
        "packing {} left no archive",
        root.display()
    );
    fs::remove_dir_all(root)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_cut_at_their_recorded_length() {
        let mut module = b"\x7fELF code".to_vec();
        let signature = [0xAB; 5];
        module.extend_from_slice(&signature);
        module.extend_from_slice(&[1, 4, 2, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
        module.extend_from_slice(SIGNATURE_MAGIC);
        assert_eq!(strip_signature(&module), b"\x7fELF code");
        assert_eq!(strip_signature(b"\x7fELF unsigned"), b"\x7fELF unsigned");
        // A length longer than the file leaves the file alone.
        let mut bogus = b"x".to_vec();
        bogus.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        bogus.extend_from_slice(SIGNATURE_MAGIC);
        assert_eq!(strip_signature(&bogus), &bogus[..]);
    }

    #[test]
    fn init_loads_the_vendor_module_in_the_asked_mode() {
        let vmx = init_script(Vendor::Vmx, false);
        assert!(vmx.contains("modprobe kvm_intel ept=0\n"));
        assert!(vmx.contains("/sys/module/kvm_intel/parameters/ept"));
        assert!(init_script(Vendor::Svm, true).contains("modprobe kvm_amd npt=1\n"));
        assert!(vmx.contains("echo \"@@EXITPROF exit $?\"\n"));
        assert!(vmx.trim_end().ends_with("done\npoweroff -f"));
    }
}
