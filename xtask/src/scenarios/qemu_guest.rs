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
//! ("The real System.map is in the linux-image-<version>-dbg package",
//! 858 MB for 6.1.0-56). The sandbox runs the same kernel with `nokaslr`,
//! so its own `/proc/kallsyms` (without module symbols) is that map: the
//! scenario writes it to a file and hands it to `--guest-symbols`.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use super::common::snapshot;
use crate::sandbox::{Kernel, Scenario, Vendor, l2, run_scenario};

/// The L2 guest's name, as its QEMU command line gives it.
const NAME: &str = "l2web";
/// The guest's kernel addresses start here (x86-64 kernel text).
const KERNEL_TEXT: u64 = 0xffff_ffff_8000_0000;
/// `_stext` without KASLR: `__START_KERNEL_map` plus Debian's
/// `CONFIG_PHYSICAL_START` (16 MB).
const STEXT: u64 = 0xffff_ffff_8100_0000;
/// Sites of the boot that are checked (by count).
const TOP: usize = 10;

/// Runs the scenario.
pub(super) fn qemu_guest_sites(kernel: &Kernel, exitprof: &Path) -> anyhow::Result<()> {
    let initrd = l2::initramfs("l2-initramfs", "echo L2-BOOTED > /dev/ttyS0", &[])?;
    let extra = l2::qemu_files(kernel, &initrd)?;
    let extra: Vec<(&str, &str)> = extra
        .iter()
        .map(|(f, t)| (f.as_str(), t.as_str()))
        .collect();
    let script = format!(
        r#"
cat > /tmp/qemu.sh <<'EOF'
exec {qemu}
EOF
grep -v '\[' /proc/kallsyms > /l2/System.map
echo "@@EXITPROF map $(grep -c . /l2/System.map) $(grep ' T _stext$' /l2/System.map)"
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
"#,
        qemu = l2::qemu_command(NAME, "/tmp/l2.serial"),
    );
    let results = run_scenario(
        kernel,
        exitprof,
        &Scenario {
            name: "qemu-guest-sites",
            script: &script,
            vendor: Vendor::Svm,
            nested_paging: true,
            timeout: Duration::from_mins(8),
            modules: None,
            extra: &extra,
            cpus: 2,
        },
    )?;
    check_map(results.get("map")?)?;
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

/// The sandbox's `/proc/kallsyms` as a System.map (`map` is its line
/// count and its `_stext` line): the kernel's text starts at its link
/// address when KASLR is off, and kallsyms shows it only when addresses
/// are not hidden.
fn check_map(map: &str) -> anyhow::Result<()> {
    ensure!(
        map.ends_with(&format!("{STEXT:x} T _stext")),
        "the sandbox's /proc/kallsyms is no System.map of a nokaslr boot: {map:?}"
    );
    println!("[e2e] the System.map from the sandbox's /proc/kallsyms: {map} (symbols, _stext)");
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
