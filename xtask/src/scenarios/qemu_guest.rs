//! The `qemu-guest-sites` scenario: a real VMM and a real guest OS.
//! Inside the SVM sandbox, Debian's `qemu-system-x86_64 -enable-kvm`
//! boots the sandbox's own Debian kernel (with `nokaslr`, so that its
//! System.map holds) and a busybox initramfs as an L2 guest, named with
//! `-name guest=l2web`, while exitprof watches:
//!
//! - `stat --sites --guest-symbols System.map -- qemu ...`: the top exit
//!   sites of the boot are kernel functions by name, and the VM is
//!   `l2web` in its per-vCPU rows and sites;
//! - `top --json` during the boot: in every snapshot, with a real VM
//!   running, each reason's total equals the sum of its per-vCPU rows
//!   exactly, and the rows name the VM;
//! - `top --once` during the boot: the text shows the VM by its name.
//!
//! Debian's `linux-image` package ships a placeholder `/boot/System.map`
//! ("The real System.map is in the linux-image-<version>-dbg package"),
//! so the real one is taken from the `-dbg` package (858 MB for
//! 6.1.0-56; downloaded once and cached, the one file extracted).
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use super::common::snapshot;
use crate::{
    sandbox::{Kernel, Scenario, run_scenario, sandbox_dir},
    util::{download_deb, run},
};

/// The L2 guest's name, as its QEMU command line gives it.
const NAME: &str = "l2web";
/// The guest's kernel addresses start here (x86-64 kernel text).
const KERNEL_TEXT: u64 = 0xffff_ffff_8000_0000;
/// Sites of the boot that are checked (by count).
const TOP: usize = 10;

/// QEMU's firmware for `-kernel` boots: (host path, name under `-L`).
const FIRMWARE: &[(&str, &str)] = &[
    ("/usr/share/seabios/bios-256k.bin", "bios-256k.bin"),
    ("/usr/share/qemu/linuxboot_dma.bin", "linuxboot_dma.bin"),
    ("/usr/share/qemu/kvmvapic.bin", "kvmvapic.bin"),
];

/// The real System.map of `kernel`, from its `-dbg` package (cached).
fn system_map(kernel: &Kernel) -> anyhow::Result<PathBuf> {
    let dir = sandbox_dir().join(format!("dbg-{}", kernel.package_version));
    let map = dir.join(format!("usr/lib/debug/boot/System.map-{}", kernel.release));
    if map.exists() {
        return Ok(map);
    }
    let deb = download_deb(
        &sandbox_dir().join("debs"),
        &format!("linux-image-{}-dbg", kernel.release),
        &kernel.package_version,
    )?;
    fs::create_dir_all(&dir)?;
    // The map is near the start of a 5.6 GB archive: stop at it.
    let member = format!("./usr/lib/debug/boot/System.map-{}", kernel.release);
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dpkg-deb --fsys-tarfile {} 2>/dev/null | tar -x --occurrence=1 -C {} {member}",
            deb.display(),
            dir.display()
        ))
        .status()
        .context("failed to run dpkg-deb | tar")?;
    ensure!(
        map.exists(),
        "no {member} in {} (tar: {status})",
        deb.display()
    );
    Ok(map)
}

/// The L2 guest's initramfs: busybox, and an init that says it booted
/// and powers off.
fn l2_initramfs() -> anyhow::Result<PathBuf> {
    let root = sandbox_dir().join("l2-initramfs");
    let _ = fs::remove_dir_all(&root);
    for dir in ["bin", "dev", "proc"] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static is missing")?;
    for applet in ["sh", "mount", "echo", "poweroff"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    let init = root.join("init");
    fs::write(
        &init,
        "#!/bin/sh\nexport PATH=/bin\nmount -t devtmpfs dev /dev\necho L2-BOOTED > /dev/ttyS0\npoweroff -f\n",
    )?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    let image = sandbox_dir().join("l2-initramfs.gz");
    run(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find . -print | cpio -o -H newc --quiet | gzip -1 > {}",
            image.display()
        ))
        .current_dir(&root))?;
    Ok(image)
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Runs the scenario.
#[expect(
    clippy::too_many_lines,
    reason = "one boot: its script, then its assertions, read top to bottom"
)]
pub(super) fn qemu_guest_sites(kernel: &Kernel, exitprof: &Path) -> anyhow::Result<()> {
    let map = system_map(kernel)?;
    let initrd = l2_initramfs()?;
    let mut extra = vec![
        ("/usr/bin/qemu-system-x86_64", "/bin/qemu-system-x86_64"),
        (path_str(&kernel.vmlinuz)?, "/l2/vmlinuz"),
        (path_str(&initrd)?, "/l2/initrd.gz"),
        (path_str(&map)?, "/l2/System.map"),
    ];
    let firmware: Vec<(&str, String)> = FIRMWARE
        .iter()
        .map(|(from, name)| (*from, format!("/l2/fw/{name}")))
        .collect();
    extra.extend(firmware.iter().map(|(from, to)| (*from, to.as_str())));
    let script = format!(
        r#"
cat > /tmp/qemu.sh <<'EOF'
exec qemu-system-x86_64 -name guest={NAME},debug-threads=on -enable-kvm -cpu qemu64 -m 256 \
  -nodefaults -display none -no-reboot -serial file:/tmp/l2.serial -L /l2/fw \
  -kernel /l2/vmlinuz -initrd /l2/initrd.gz -append "console=ttyS0 nokaslr panic=-1 loglevel=4"
EOF
timeout 300 exitprof top --json -d 2s > /tmp/top.json 2> /tmp/top.err &
TOP=$!
sleep 2
START=$(cut -d' ' -f1 /proc/uptime)
timeout 300 exitprof stat --json --by-vcpu --sites --guest-symbols /l2/System.map -- sh /tmp/qemu.sh > /tmp/stat.out 2> /tmp/stat.err &
STAT=$!
i=0
while ! grep -q '"vm":"{NAME}"' /tmp/top.json && [ $i -lt 600 ]; do sleep 0.5; i=$((i+1)); done
timeout 60 exitprof top --once -d 2s > /tmp/once.out 2>&1
echo "@@EXITPROF once_rc $?"
wait $STAT
echo "@@EXITPROF stat_rc $?"
echo "@@EXITPROF l2_seconds $(cut -d' ' -f1 /proc/uptime) $START"
kill -INT $TOP
wait $TOP
echo "@@EXITPROF top_rc $?"
echo "@@EXITPROF stat $(tail -n 1 /tmp/stat.out)"
while read -r l; do echo "@@EXITPROF top $l"; done < /tmp/top.json
while IFS= read -r l; do echo "@@EXITPROF once $l"; done < /tmp/once.out
while read -r l; do echo "@@EXITPROF serial $l"; done < /tmp/l2.serial
while read -r l; do echo "@@EXITPROF stderr $l"; done < /tmp/stat.err
while read -r l; do echo "@@EXITPROF top_stderr $l"; done < /tmp/top.err
"#
    );
    let results = run_scenario(
        kernel,
        exitprof,
        &Scenario {
            name: "qemu-guest-sites",
            script: &script,
            npt: true,
            timeout: Duration::from_mins(8),
            modules: None,
            extra: &extra,
            cpus: 2,
        },
    )?;
    let serial = results.all("serial");
    ensure!(
        results.get("stat_rc")? == "0",
        "exitprof stat -- qemu failed with {} (124: timeout); stderr {:?}; L2 serial {:?}",
        results.get("stat_rc")?,
        results.all("stderr"),
        serial
    );
    ensure!(
        serial.iter().any(|l| l.contains("L2-BOOTED")),
        "the L2 guest did not boot to its init; serial: {serial:?}"
    );
    if let Some((end, start)) = results.get("l2_seconds")?.split_once(' ') {
        let seconds: f64 = end.parse::<f64>()? - start.parse::<f64>()?;
        println!("[e2e] L2 guest booted and powered off in {seconds:.1} s of sandbox time");
    }
    let stat = snapshot(&results, "stat")?;
    check_stat(&stat)?;
    let tops: Vec<Value> = results
        .all("top")
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()
        .context("top --json printed a line that is no JSON")?;
    check_top(&tops)?;
    let once = results.all("once");
    ensure!(
        results.get("once_rc")? == "0",
        "top --once failed: {once:?}"
    );
    let named = once
        .iter()
        .filter(|l| l.split_whitespace().nth(1) == Some(NAME))
        .count();
    ensure!(
        named > 0,
        "top --once shows no per-vCPU row of VM {NAME}:\n{}",
        once.join("\n")
    );
    for line in once.iter().take(12) {
        println!("[e2e] top --once | {line}");
    }
    println!(
        "[e2e] qemu-guest-sites: PASS (L2 Linux guest shown as {NAME}; its top exit sites named from the System.map; every top snapshot's reasons equal its per-vCPU rows)"
    );
    Ok(())
}

/// `stat`: the VM's name on its rows, and the boot's top sites named.
fn check_stat(stat: &Value) -> anyhow::Result<()> {
    let rows: Vec<&Value> = stat["exits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r.get("pid").is_some())
        .collect();
    ensure!(!rows.is_empty(), "stat has no per-vCPU rows: {stat}");
    ensure!(
        rows.iter().all(|r| r["vm"] == NAME),
        "per-vCPU rows not all of VM {NAME}: {:?}",
        rows.iter().map(|r| &r["vm"]).collect::<Vec<_>>()
    );
    let mut sites: Vec<&Value> = stat["sites"].as_array().into_iter().flatten().collect();
    ensure!(!sites.is_empty(), "stat --sites listed no sites");
    sites.sort_by_key(|s| std::cmp::Reverse(s["count"].as_u64().unwrap_or(0)));
    let total: u64 = sites.iter().filter_map(|s| s["count"].as_u64()).sum();
    println!(
        "[e2e] {} exit sites, {total} exits; the top {TOP}:",
        sites.len()
    );
    let mut kernel_sites = 0;
    for s in sites.iter().take(TOP) {
        let rip = s["rip"].as_u64().unwrap_or(0);
        let symbol = s["symbol"].as_str();
        println!(
            "[e2e]   {:>8} {:<10} {rip:#018x} {}",
            s["count"],
            s["name"].as_str().unwrap_or("?"),
            symbol.unwrap_or("-")
        );
        ensure!(s["vm"] == NAME, "a site of VM {} (not {NAME})", s["vm"]);
        if rip >= KERNEL_TEXT {
            kernel_sites += 1;
            ensure!(
                symbol.is_some_and(|sym| sym.contains("+0x")),
                "kernel site {rip:#x} has no symbol from the System.map"
            );
        }
    }
    if kernel_sites < 3 {
        bail!("only {kernel_sites} of the boot's top {TOP} exit sites are in the kernel");
    }
    Ok(())
}

/// `top --json`: while the VM runs, every snapshot's per-reason rows are
/// exactly the sums of its per-vCPU rows, which name the VM.
fn check_top(tops: &[Value]) -> anyhow::Result<()> {
    let mut busy = 0;
    for (i, snap) in tops.iter().enumerate() {
        let rows = snap["exits"].as_array().into_iter().flatten();
        let mut reasons = std::collections::BTreeMap::<String, u64>::new();
        let mut vcpus = std::collections::BTreeMap::<String, u64>::new();
        for r in rows {
            let name = r["name"].as_str().unwrap_or("?").to_owned();
            let count = r["count"].as_u64().unwrap_or(0);
            if r.get("pid").is_some() {
                *vcpus.entry(name).or_default() += count;
                if r["vm"] != NAME {
                    bail!(
                        "snapshot {i}: a per-vCPU row of VM {} (not {NAME})",
                        r["vm"]
                    );
                }
            } else {
                *reasons.entry(name).or_default() += count;
            }
        }
        ensure!(
            reasons == vcpus,
            "snapshot {i}: per-reason {reasons:?} != sum of per-vCPU rows {vcpus:?}"
        );
        if reasons.values().sum::<u64>() > 0 {
            busy += 1;
        }
    }
    ensure!(
        busy >= 2,
        "only {busy} of {} top snapshots saw exits while the guest ran",
        tops.len()
    );
    println!(
        "[e2e] top --json: {busy} snapshots with exits while the guest ran, reasons = per-vCPU sums in each"
    );
    Ok(())
}
