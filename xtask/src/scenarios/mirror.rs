//! The `guest-cpuid-mirror` sandbox scenario: the patched KVM modules
//! (`cargo xtask kernel`) boot in the sandbox, exitprof registers its map
//! with them, and the built-in workload VM reads the exitprof CPUID leaves
//! and hypercall from inside its guest and reports the registers.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, ensure};
use exitprof_common::{
    Isa,
    guest_abi::{
        self, Discovery, EDX_INACTIVE, EDX_UNDEFINED, HYPERCALL_MAGIC, HYPERCALL_NR,
        LEAF_DISCOVERY, LEAF_REASON_CYCLES, LEAF_REASON_EXITS, LEAF_TOTAL_CYCLES, LEAF_TOTAL_EXITS,
        ReasonClass, SIGNATURE,
    },
};
use serde_json::Value;

use crate::sandbox::{Kernel, Results, Scenario, run_scenario};

/// SVM `cpuid` exit code.
const CPUID: u32 = 0x72;
/// SVM `ioio` exit code.
const IOIO: u32 = 0x7b;
/// CPUIDs the workload does before its queries.
const WORKLOAD_CPUIDS: u64 = 100;

/// The first SVM code of `class`'s kind, from exitprof-common's table.
fn svm_code(pick: fn(ReasonClass) -> bool) -> u32 {
    (0..0x100)
        .find(|&c| pick(guest_abi::classify(Isa::Svm, c)))
        .expect("the SVM table has such a code")
}

/// One query of `exitprof vm --query`.
fn cpuid(leaf: u32, subleaf: u32) -> String {
    format!("--query cpuid:{leaf:#x}:{subleaf:#x}")
}

/// The registers a query returned: eax, ebx, ecx, edx.
fn regs(vm: &Value, index: usize) -> anyhow::Result<[u32; 4]> {
    let q = &vm["queries"][index];
    let get = |r: &str| {
        q[r].as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .with_context(|| format!("query {index} has no {r}: {vm}"))
    };
    Ok([get("eax")?, get("ebx")?, get("ecx")?, get("edx")?])
}

fn json(results: &Results, key: &str) -> anyhow::Result<Value> {
    let text = results.get(key)?;
    serde_json::from_str(text).with_context(|| format!("{key}: not JSON: {text:?}"))
}

/// Runs the scenario with the patched modules in `modules`.
#[expect(
    clippy::too_many_lines,
    reason = "one boot: its script, then its assertions, read top to bottom"
)]
pub fn guest_cpuid_mirror(kernel: &Kernel, exitprof: &Path, modules: &Path) -> anyhow::Result<()> {
    let undefined = svm_code(|c| c == ReasonClass::Undefined);
    let unhandled = svm_code(|c| c == ReasonClass::Unhandled);
    // Queries while exitprof runs, in this order (indexes below):
    let active_queries = [
        cpuid(LEAF_DISCOVERY, 0),                       // 0
        cpuid(LEAF_REASON_EXITS, CPUID),                // 1
        cpuid(LEAF_REASON_EXITS, CPUID),                // 2
        cpuid(LEAF_REASON_EXITS, CPUID),                // 3
        cpuid(LEAF_REASON_CYCLES, CPUID),               // 4
        cpuid(LEAF_REASON_EXITS, unhandled),            // 5
        cpuid(LEAF_REASON_EXITS, undefined),            // 6
        cpuid(LEAF_REASON_CYCLES, undefined),           // 7
        cpuid(LEAF_TOTAL_EXITS, 0),                     // 8
        cpuid(LEAF_TOTAL_CYCLES, 0),                    // 9
        format!("--query hypercall:{HYPERCALL_NR:#x}"), // 10
        cpuid(LEAF_REASON_EXITS, IOIO),                 // 11
        cpuid(LEAF_REASON_EXITS, CPUID),                // 12: the last CPUID
    ]
    .join(" ");
    // The same leaves with no exitprof registered.
    let inactive_queries = [
        cpuid(LEAF_DISCOVERY, 0),
        cpuid(LEAF_REASON_EXITS, CPUID),
        cpuid(LEAF_REASON_CYCLES, CPUID),
        cpuid(LEAF_TOTAL_EXITS, 0),
        cpuid(LEAF_TOTAL_CYCLES, 0),
        cpuid(LEAF_REASON_EXITS, undefined),
        format!("--query hypercall:{HYPERCALL_NR:#x}"),
    ]
    .join(" ");
    let script = format!(
        r#"
F=/sys/kernel/debug/kvm/exitprof
echo "@@EXITPROF debugfs_boot $(cat $F 2>&1)"
timeout 30 exitprof guest > /tmp/g.out 2> /tmp/g.err
echo "@@EXITPROF l1_guest_rc $?"
echo "@@EXITPROF l1_guest_stdout_lines $(wc -l < /tmp/g.out)"
echo "@@EXITPROF l1_guest_stderr_lines $(wc -l < /tmp/g.err)"
echo "@@EXITPROF l1_guest_stderr $(cat /tmp/g.err)"
timeout 120 exitprof stat --json -- sh -c 'cat {debugfs}; exitprof vm --json --cpuid {WORKLOAD_CPUIDS} {active_queries}' > /tmp/stat.out 2> /tmp/stat.err
echo "@@EXITPROF stat_rc $?"
echo "@@EXITPROF debugfs_during $(head -n 1 /tmp/stat.out)"
echo "@@EXITPROF active_vm $(sed -n 2p /tmp/stat.out)"
echo "@@EXITPROF stat $(tail -n 1 /tmp/stat.out)"
while read -r l; do echo "@@EXITPROF stderr $l"; done < /tmp/stat.err
echo "@@EXITPROF debugfs_after $(cat $F)"
timeout 60 exitprof vm --json {inactive_queries} > /tmp/vm.out 2>&1
echo "@@EXITPROF inactive_vm $(cat /tmp/vm.out)"
timeout 60 exitprof stat --duration 60s > /dev/null 2>&1 &
HOLDER=$!
i=0
while ! grep -q registered $F && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "@@EXITPROF debugfs_holder $(cat $F)"
timeout 60 exitprof stat --json --duration 1s > /tmp/busy.out 2>/dev/null
echo "@@EXITPROF busy $(cat /tmp/busy.out)"
kill -KILL $HOLDER
wait $HOLDER
sleep 0.5
echo "@@EXITPROF debugfs_killed $(cat $F)"
timeout 60 exitprof vm --json {discovery} > /tmp/vm2.out 2>&1
echo "@@EXITPROF killed_vm $(cat /tmp/vm2.out)"
"#,
        debugfs = "/sys/kernel/debug/kvm/exitprof",
        discovery = cpuid(LEAF_DISCOVERY, 0),
    );
    let results = run_scenario(
        kernel,
        exitprof,
        &Scenario {
            name: "guest-cpuid-mirror",
            script: &script,
            npt: true,
            timeout: Duration::from_mins(5),
            modules: Some(modules),
            extra: &[],
            cpus: 2,
        },
    )?;
    ensure!(
        results.get("debugfs_boot")? == "inactive",
        "the patched kvm did not come up with an inactive {}: {:?}",
        "/sys/kernel/debug/kvm/exitprof",
        results.get("debugfs_boot")?
    );
    // `exitprof guest` in the sandbox itself: its hypervisor is QEMU's TCG,
    // which has no patch.
    ensure!(
        results.get("l1_guest_rc")? == "1"
            && results.get("l1_guest_stdout_lines")? == "0"
            && results.get("l1_guest_stderr_lines")? == "1",
        "exitprof guest under an unpatched hypervisor: rc {}, {} stdout lines, {} stderr lines",
        results.get("l1_guest_rc")?,
        results.get("l1_guest_stdout_lines")?,
        results.get("l1_guest_stderr_lines")?
    );
    let l1 = results.get("l1_guest_stderr")?;
    ensure!(
        l1.starts_with("exitprof: the hypervisor (") && l1.contains(") has no exitprof patch"),
        "exitprof guest said {l1:?}"
    );
    println!("[e2e] unpatched hypervisor: {l1}");

    ensure!(
        results.get("stat_rc")? == "0",
        "exitprof stat failed: {:?}",
        results.all("stderr")
    );
    ensure!(
        results
            .get("debugfs_during")?
            .starts_with("registered map id "),
        "while exitprof ran, the debugfs file said {:?}",
        results.get("debugfs_during")?
    );
    let stat = json(&results, "stat")?;
    ensure!(
        stat["guest_mirror"] == "registered",
        "guest_mirror {}",
        stat["guest_mirror"]
    );
    // The patched modules are built without BTF: auto mode falls back to
    // classic tracepoints and says why.
    ensure!(
        stat["attach_mode"] == "classic"
            && stat["attach_note"]
                .as_str()
                .is_some_and(|n| n.contains("BTF")),
        "with modules without BTF, auto mode chose {} ({})",
        stat["attach_mode"],
        stat["attach_note"]
    );
    println!("[e2e] fallback: {}", stat["attach_note"]);
    let vm = json(&results, "active_vm")?;
    let count = |name: &str| -> u64 {
        stat["exits"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == name && r.get("pid").is_none())
            .and_then(|r| r["count"].as_u64())
            .unwrap_or(0)
    };
    let cpuid_row = stat["exits"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["reason"] == CPUID && r.get("pid").is_none())
        .context("no cpuid row in exitprof's snapshot")?;

    // Discovery: signature, ABI 1, SVM, active, the host's TSC kHz.
    let [eax, ebx, tsc_khz, edx] = regs(&vm, 0)?;
    let discovery = Discovery::from_ebx(ebx);
    ensure!(
        eax == SIGNATURE
            && discovery
                == Discovery {
                    version: 1,
                    isa: Isa::Svm as u32,
                    active: true,
                    host_scope: false,
                }
            && tsc_khz > 0
            && edx == 0,
        "discovery returned {:#x?}",
        regs(&vm, 0)?
    );
    // The CPUID count rises by exactly one per query; the workload's 100
    // CPUIDs, the discovery query and the query itself are already counted.
    let first = u32::try_from(WORKLOAD_CPUIDS)? + 2;
    for (i, expected) in [(1, first), (2, first + 1), (3, first + 2)] {
        ensure!(
            regs(&vm, i)? == [expected, 0, 0, 0],
            "query {i}: CPUID count {:?}, expected exactly [{expected}, 0, 0, 0]",
            regs(&vm, i)?
        );
    }
    let [_, high, low, edx] = regs(&vm, 4)?;
    let cpuid_cycles = guest_abi::join(high, low);
    let snapshot_cycles =
        cpuid_row["total_ns"].as_u64().unwrap_or(0) * u64::from(tsc_khz) / 1_000_000;
    ensure!(
        edx == 0 && cpuid_cycles > 0 && cpuid_cycles <= snapshot_cycles,
        "CPUID cycles {cpuid_cycles} (edx {edx:#x}): expected 0 < cycles <= {snapshot_cycles}, exitprof's final total in cycles"
    );
    ensure!(
        regs(&vm, 5)? == [0, 0, 0, 0],
        "defined but unhandled reason {unhandled:#x}: {:#x?}",
        regs(&vm, 5)?
    );
    for i in [6, 7] {
        ensure!(
            regs(&vm, i)? == [0, 0, 0, EDX_UNDEFINED],
            "undefined reason {undefined:#x}: {:#x?}",
            regs(&vm, i)?
        );
    }
    // Totals: after query 8's exit the guest made exactly 4 + 5 * 4 + 1
    // more exits (4 outs per query, 4 more queries, the done port), plus
    // any interrupt/npf exits in between, which exitprof counts too.
    let [total_at_query, ..] = regs(&vm, 8)?;
    let total: u64 = stat["exits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r.get("pid").is_none())
        .filter_map(|r| r["count"].as_u64())
        .sum();
    let known_after = 4 + 4 * 5 + 1;
    let others = total - count("cpuid") - count("io") - count("hypercall");
    let after = total - u64::from(total_at_query);
    ensure!(
        (known_after..=known_after + others).contains(&after),
        "total exits {total_at_query} at the query, {total} in exitprof's snapshot: {after} after, expected {known_after} plus at most {others} interrupt/npf exits"
    );
    let [_, high, low, _] = regs(&vm, 9)?;
    ensure!(
        guest_abi::join(high, low) >= cpuid_cycles,
        "total cycles below the CPUID reason's"
    );
    let [magic_low, _, _, magic_high] = regs(&vm, 10)?;
    ensure!(
        guest_abi::join(magic_high, magic_low) == HYPERCALL_MAGIC,
        "hypercall {HYPERCALL_NR:#x} returned edx:eax = {magic_high:#x}:{magic_low:#x}"
    );
    // I/O so far: 4 outs for each of the 11 queries before query 11.
    ensure!(
        regs(&vm, 11)? == [4 * 11, 0, 0, 0],
        "io count {:?}, expected exactly 44",
        regs(&vm, 11)?
    );
    // The last CPUID's count equals exitprof's own final count.
    let [last, ..] = regs(&vm, 12)?;
    ensure!(
        u64::from(last) == count("cpuid") && count("cpuid") == WORKLOAD_CPUIDS + 12,
        "last CPUID count {last}, exitprof's snapshot {}, expected {}",
        count("cpuid"),
        WORKLOAD_CPUIDS + 12
    );
    ensure!(
        count("io") == 4 * 13 + 1 && count("hypercall") == 1,
        "exitprof counted {} io and {} hypercall exits",
        count("io"),
        count("hypercall")
    );

    // exitprof stopped: inactive values.
    ensure!(
        results.get("debugfs_after")? == "inactive",
        "after exitprof stopped, the debugfs file says {:?}",
        results.get("debugfs_after")?
    );
    let idle = json(&results, "inactive_vm")?;
    let [eax, ebx, _, edx] = regs(&idle, 0)?;
    ensure!(
        eax == SIGNATURE && !Discovery::from_ebx(ebx).active && edx == 0,
        "inactive discovery {:#x?}",
        regs(&idle, 0)?
    );
    for i in 1..=4 {
        ensure!(
            regs(&idle, i)? == [0, 0, 0, EDX_INACTIVE],
            "inactive query {i}: {:#x?}",
            regs(&idle, i)?
        );
    }
    ensure!(
        regs(&idle, 5)? == [0, 0, 0, EDX_UNDEFINED],
        "an undefined reason stays undefined while inactive: {:#x?}",
        regs(&idle, 5)?
    );
    let [magic_low, _, _, magic_high] = regs(&idle, 6)?;
    ensure!(
        guest_abi::join(magic_high, magic_low) == HYPERCALL_MAGIC,
        "hypercall while inactive"
    );

    // One registration at a time; a killed exitprof unregisters.
    ensure!(
        results.get("debugfs_holder")?.starts_with("registered"),
        "the background exitprof did not register: {:?}",
        results.get("debugfs_holder")?
    );
    let busy = json(&results, "busy")?;
    ensure!(
        busy["guest_mirror"] == "busy",
        "a second exitprof reported guest_mirror {}",
        busy["guest_mirror"]
    );
    ensure!(
        results.get("debugfs_killed")? == "inactive",
        "after SIGKILL the debugfs file says {:?}",
        results.get("debugfs_killed")?
    );
    let killed = json(&results, "killed_vm")?;
    ensure!(
        !Discovery::from_ebx(regs(&killed, 0)?[1]).active,
        "the leaves stayed active after exitprof was killed"
    );
    println!(
        "[e2e] guest-cpuid-mirror: PASS (CPUID count {first}, {}, {} per query; last {last} = exitprof's; undefined edx=0xFFFFFFFF; magic {HYPERCALL_MAGIC:#018x}; inactive after stop and after SIGKILL; TSC {tsc_khz} kHz)",
        first + 1,
        first + 2
    );
    Ok(())
}
