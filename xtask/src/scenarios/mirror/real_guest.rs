//! The real-guest part of the `guest-cpuid-mirror` scenario (6.1 only):
//! Debian's QEMU boots the sandbox's kernel as an L2 Linux guest whose
//! init runs `exitprof guest`, after a busy workload VM, while
//! `exitprof stat` watches the whole host.
use std::path::Path;

use anyhow::{Context as _, ensure};
use serde_json::Value;

use crate::{
    sandbox::{Kernel, Results, l2},
    scenarios::common::{SVM_CPUID, snapshot},
};

/// The files the sandbox needs for the L2 guest: its kernel and an
/// initramfs with `exitprof` and [`L2_INIT`].
pub(super) fn files(kernel: &Kernel, exitprof: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let initrd = l2::initramfs(
        "l2-mirror-initramfs",
        L2_INIT,
        &[(exitprof, "/bin/exitprof")],
    )?;
    l2::qemu_files(kernel, &initrd)
}

/// The L2 guest of the real-guest part: its name, and what its init
/// prints on the serial console (`exitprof guest` twice as JSON, then
/// once as the table).
const L2_NAME: &str = "mirrorvm";
const L2_INIT: &str = "echo L2-BOOTED > /dev/ttyS0
for i in 1 2; do echo \"L2GUEST $(exitprof guest --json 2>&1)\" > /dev/ttyS0; sleep 1; done
exitprof guest > /tmp/t 2>&1; while read -r l; do echo \"L2TABLE $l\" > /dev/ttyS0; done < /tmp/t";

/// CPUID exits of the VM that runs before the L2 guest boots: many more
/// than the L2 guest makes, so a report that counted them would show.
const BUSY_CPUID: u64 = 50_000;

/// The script lines of the real-guest part (per-VM scope, stat running).
pub(super) fn script() -> String {
    format!(
        r#"
timeout 300 exitprof stat --json --by-vcpu --duration 280s > /tmp/q.out 2> /tmp/q.err &
QSTAT=$!
i=0; while ! grep -q registered $F && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
exitprof vm --cpuid {BUSY_CPUID} > /dev/null 2>&1 &
BUSY=$!
echo "@@EXITPROF busy_pid $BUSY"
wait $BUSY
timeout 240 {qemu}
echo "@@EXITPROF qemu_rc $?"
kill -INT $QSTAT; wait $QSTAT
echo "@@EXITPROF qstat $(cat /tmp/q.out)"
while read -r l; do echo "@@EXITPROF qstat_stderr $l"; done < /tmp/q.err
while IFS= read -r l; do echo "@@EXITPROF l2 $l"; done < /tmp/l2.serial
"#,
        qemu = l2::qemu_command(L2_NAME, "/tmp/l2.serial"),
    )
}

/// The real guest's reports against exitprof's counts for its QEMU.
pub(super) fn check(results: &Results) -> anyhow::Result<()> {
    let serial = results.all("l2");
    ensure!(
        results.get("qemu_rc")? == "0" && serial.iter().any(|l| l.contains("L2-BOOTED")),
        "the L2 guest did not run (QEMU exit {}): {serial:?}",
        results.get("qemu_rc")?
    );
    let stat = snapshot(results, "qstat")?;
    let rows: Vec<&Value> = stat["exits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r.get("pid").is_some())
        .collect();
    // Two VM processes ran in this phase, one after the other: the busy
    // workload VM and the L2 guest's QEMU (which ended before stat did, so
    // stat, watching the whole host, has no name for it: it is the other
    // pid).
    let busy_pid: u64 = results.get("busy_pid")?.parse()?;
    let of = |busy: bool, reason: Option<u32>| -> u64 {
        rows.iter()
            .filter(|r| (r["pid"] == busy_pid) == busy)
            .filter(|r| reason.is_none_or(|c| r["reason"] == c))
            .filter_map(|r| r["count"].as_u64())
            .sum()
    };
    let qemu_total = of(false, None);
    let qemu_cpuid = of(false, Some(SVM_CPUID));
    let busy_cpuid = of(true, Some(SVM_CPUID));
    let qemu_pids: std::collections::BTreeSet<u64> = rows
        .iter()
        .filter_map(|r| r["pid"].as_u64())
        .filter(|&p| p != busy_pid)
        .collect();
    ensure!(
        qemu_pids.len() == 1,
        "VM processes besides the busy one: {qemu_pids:?}"
    );
    let reports: Vec<Value> = serial
        .iter()
        .filter_map(|l| l.split_once("L2GUEST ").map(|(_, j)| j))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("exitprof guest --json printed no JSON in the L2 guest")?;
    ensure!(
        reports.len() == 2,
        "{} reports from the L2 guest: {serial:?}",
        reports.len()
    );
    ensure!(
        busy_cpuid == BUSY_CPUID && busy_cpuid > 10 * qemu_cpuid.max(1),
        "exitprof counted {busy_cpuid} CPUID exits for the busy VM (expected {BUSY_CPUID}), {qemu_cpuid} for the L2 QEMU"
    );
    let mut previous = 0;
    for (i, r) in reports.iter().enumerate() {
        let total = r["total_exits"].as_u64().context("total_exits")?;
        let cpuid = r["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|row| row["reason"] == SVM_CPUID)
            .and_then(|row| row["exits"].as_u64())
            .unwrap_or(0);
        ensure!(
            r["scope"] == "vm" && total >= previous && total <= qemu_total && cpuid <= qemu_cpuid,
            "report {i} of the L2 guest: scope {}, {total} exits ({cpuid} CPUID); exitprof counted {qemu_total} ({qemu_cpuid} CPUID) for its QEMU; the busy VM made {busy_cpuid} CPUID exits",
            r["scope"]
        );
        previous = total;
    }
    let table: Vec<&str> = serial
        .iter()
        .filter_map(|l| l.split_once("L2TABLE ").map(|(_, t)| t))
        .collect();
    ensure!(
        table.first().is_some_and(|l| l.starts_with(
            "exitprof guest: hypervisor isa svm, exitprof ABI 2, exits of this VM's own"
        )) && table.iter().any(|l| l.contains("cpuid")),
        "exitprof guest's table in the L2 guest: {table:?}"
    );
    for line in table.iter().take(8) {
        println!("[e2e] L2 guest | {line}");
    }
    println!(
        "[e2e] real guest: exitprof guest in a QEMU L2 Linux read {previous} exits (exitprof counted {qemu_total} for its QEMU) after a busy VM's {busy_cpuid} CPUID exits"
    );
    Ok(())
}
