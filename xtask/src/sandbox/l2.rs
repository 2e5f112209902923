//! An L2 guest inside the SVM sandbox: Debian's `qemu-system-x86_64
//! -enable-kvm` booting the sandbox's own kernel with a busybox
//! initramfs. The scenarios (exit sites of a real boot, the guest mirror
//! read by a real Linux guest) and the real-guest bench use it.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use super::{
    Kernel, add_binary,
    initramfs::{busybox_tree, pack},
    scenario::sandbox_dir,
};

/// QEMU's firmware for `-kernel` boots: (host path, name under `-L`).
const FIRMWARE: &[(&str, &str)] = &[
    ("/usr/share/seabios/bios-256k.bin", "bios-256k.bin"),
    ("/usr/share/qemu/linuxboot_dma.bin", "linuxboot_dma.bin"),
    ("/usr/share/qemu/kvmvapic.bin", "kvmvapic.bin"),
];

/// The busybox applets an L2 guest's `/init` may call.
const APPLETS: &[&str] = &[
    "sh", "mount", "echo", "poweroff", "sleep", "cat", "dd", "rm", "grep",
];

/// An L2 guest's initramfs `name` (packed into
/// `target/sandbox/<name>.gz`): busybox, the `binaries` (host path, path
/// in the guest; with their libraries), and `init` as `/init`, with
/// `PATH=/bin`, `/dev`, `/proc` and `/sys` mounted before it and a
/// power-off after it.
///
/// # Errors
/// When busybox is missing or packing fails.
pub fn initramfs(name: &str, init: &str, binaries: &[(&Path, &str)]) -> anyhow::Result<PathBuf> {
    let root = busybox_tree(name, APPLETS)?;
    for (from, to) in binaries {
        add_binary(&root, from, to)?;
    }
    let script = root.join("init");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nexport PATH=/bin\nmount -t devtmpfs dev /dev\nmount -t proc proc /proc\nmount -t sysfs sys /sys\n{init}\npoweroff -f\n"
        ),
    )?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    let image = sandbox_dir().join(format!("{name}.gz"));
    pack(&root, &image, true)?;
    Ok(image)
}

/// What a sandbox needs to boot an L2 guest with QEMU (host path, path in
/// the sandbox): QEMU, its firmware under `/l2/fw`, the kernel as
/// `/l2/vmlinuz` and `initrd` as `/l2/initrd.gz`.
///
/// # Errors
/// When a path is not UTF-8.
pub fn qemu_files(kernel: &Kernel, initrd: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut files = vec![
        (
            "/usr/bin/qemu-system-x86_64".to_owned(),
            "/bin/qemu-system-x86_64".to_owned(),
        ),
        (
            path_str(&kernel.vmlinuz)?.to_owned(),
            "/l2/vmlinuz".to_owned(),
        ),
        (path_str(initrd)?.to_owned(), "/l2/initrd.gz".to_owned()),
    ];
    files.extend(
        FIRMWARE
            .iter()
            .map(|(from, name)| ((*from).to_owned(), format!("/l2/fw/{name}"))),
    );
    Ok(files)
}

/// The QEMU command line that boots the L2 guest `name` (1 vCPU, 256 MB,
/// the files of [`qemu_files`]) with its serial console in `serial`.
#[must_use]
pub fn qemu_command(name: &str, serial: &str) -> String {
    format!(
        "qemu-system-x86_64 -name guest={name},debug-threads=on -enable-kvm -cpu qemu64 -m 256 \\\n  -nodefaults -display none -no-reboot -serial file:{serial} -L /l2/fw \\\n  -kernel /l2/vmlinuz -initrd /l2/initrd.gz -append \"console=ttyS0 nokaslr panic=-1 loglevel=4\""
    )
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
