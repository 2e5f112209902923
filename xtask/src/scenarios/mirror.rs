//! The `guest-cpuid-mirror` scenario (guest ABI 2): the patched KVM
//! modules (`cargo xtask kernel`) boot in the sandbox, exitprof registers
//! its mirror map with them, and workload VMs read the exitprof CPUID
//! leaves and hypercall from inside their guests. Asserted exactly:
//!
//! - two VMs at once under one `exitprof stat` (per-VM scope, the
//!   default): each guest's CPUID and I/O counts are exactly its own, and
//!   equal exitprof's count for its process;
//! - host-wide scope only when asked for (`--guest-mirror host`), which
//!   the discovery leaf reports, and then a guest sees another VM's exits;
//! - undefined and unhandled reasons, the totals, the hypercall, the
//!   inactive values after exitprof stops or is killed, and `busy` for a
//!   second exitprof.
use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context as _, ensure};
use exitprof_common::{
    Isa,
    guest_abi::{
        Discovery, EDX_INACTIVE, EDX_UNDEFINED, HYPERCALL_MAGIC, HYPERCALL_NR, LEAF_DISCOVERY,
        LEAF_REASON_CYCLES, LEAF_REASON_EXITS, LEAF_TOTAL_CYCLES, LEAF_TOTAL_EXITS, SIGNATURE,
        join,
    },
};
use serde_json::Value;

use crate::{
    kernel,
    sandbox::{self, KernelLine, Results, Scenario, run_scenario},
};

/// SVM exit codes the scenario asks about: `cpuid`, `ioio`, an exception
/// the host's uapi list names but KVM has no handler for (`DE excp`), and
/// one it does not name (`read_cr1`).
const CPUID: u32 = 0x72;
const IOIO: u32 = 0x7b;
const UNHANDLED: u32 = 0x40;
const UNDEFINED: u32 = 0x01;

/// One `--query` of `exitprof vm`, named for the assertions.
struct Query {
    name: &'static str,
    arg: String,
}

fn cpuid(name: &'static str, leaf: u32, subleaf: u32) -> Query {
    Query {
        name,
        arg: format!("--query cpuid:{leaf:#x}:{subleaf:#x}"),
    }
}

fn args(queries: &[Query]) -> String {
    queries
        .iter()
        .map(|q| q.arg.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The registers each query returned, by name and round (1-based):
/// `exitprof vm` runs its queries after every round's work, in order.
struct Answers(BTreeMap<(&'static str, u64), [u32; 4]>);

impl Answers {
    fn parse(vm: &Value, queries: &[Query]) -> anyhow::Result<Self> {
        let list = vm["queries"]
            .as_array()
            .context("no queries in the VM's report")?;
        let mut out = BTreeMap::new();
        for (i, q) in list.iter().enumerate() {
            let reg = |r: &str| {
                q[r].as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .with_context(|| format!("query {i} has no {r}: {q}"))
            };
            let round = u64::try_from(i / queries.len())? + 1;
            out.insert(
                (queries[i % queries.len()].name, round),
                [reg("eax")?, reg("ebx")?, reg("ecx")?, reg("edx")?],
            );
        }
        Ok(Self(out))
    }

    fn get(&self, name: &str, round: u64) -> anyhow::Result<[u32; 4]> {
        self.0
            .iter()
            .find(|((n, r), _)| *n == name && *r == round)
            .map(|(_, regs)| *regs)
            .with_context(|| format!("no answer to {name} in round {round}"))
    }
}

fn json(results: &Results, key: &str) -> anyhow::Result<Value> {
    let text = results.get(key)?;
    serde_json::from_str(text).with_context(|| format!("{key}: not JSON: {text:?}"))
}

/// exitprof's count of `reason` exits of process `pid` (its per-vCPU rows).
fn count_of(snapshot: &Value, pid: &Value, reason: u32) -> u64 {
    snapshot["exits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["pid"] == *pid && r["reason"] == reason)
        .filter_map(|r| r["count"].as_u64())
        .sum()
}

/// A workload VM of `rounds` rounds of `cpuids` CPUIDs, each followed by
/// the discovery query and its own CPUID and I/O counts.
struct Vm {
    cpuids: u64,
    rounds: u64,
}

impl Vm {
    fn queries() -> Vec<Query> {
        vec![
            cpuid("discovery", LEAF_DISCOVERY, 0),
            cpuid("cpuid", LEAF_REASON_EXITS, CPUID),
            cpuid("io", LEAF_REASON_EXITS, IOIO),
        ]
    }

    fn command(&self, pause_ms: u64) -> String {
        format!(
            "exitprof vm --json --cpuid {} --rounds {} --pause-ms {pause_ms} {}",
            self.cpuids,
            self.rounds,
            args(&Self::queries())
        )
    }

    /// Its CPUID exits when the `cpuid` query of round `r` runs: the
    /// workload's, three queries per earlier round, and this round's
    /// discovery query and the query itself.
    fn cpuid_at(&self, r: u64) -> u64 {
        r * self.cpuids + 3 * (r - 1) + 2
    }

    /// Its I/O exits when the `io` query of round `r` runs: four `out`s
    /// per query (the guest reports the registers) and one per round (the
    /// done port), so 13 per earlier round and this round's two queries.
    const fn io_at(r: u64) -> u64 {
        13 * (r - 1) + 8
    }

    /// Checks one VM's answers against its own counts (not another's)
    /// and exitprof's count for its process.
    fn check(&self, who: &str, vm: &Value, stat: &Value, host_scope: bool) -> anyhow::Result<()> {
        let answers = Answers::parse(vm, &Self::queries())?;
        for r in 1..=self.rounds {
            let [eax, ebx, tsc_khz, edx] = answers.get("discovery", r)?;
            let want = Discovery {
                version: 2,
                isa: Isa::Svm as u32,
                active: true,
                host_scope,
            };
            ensure!(
                eax == SIGNATURE && Discovery::from_ebx(ebx) == want && tsc_khz > 0 && edx == 0,
                "{who} round {r}: discovery {:#x?}",
                answers.get("discovery", r)?
            );
            let cpuid = answers.get("cpuid", r)?;
            ensure!(
                cpuid == [u32::try_from(self.cpuid_at(r))?, 0, 0, 0],
                "{who} round {r}: CPUID count {cpuid:?}, expected exactly [{}, 0, 0, 0] (its own)",
                self.cpuid_at(r)
            );
            let io = answers.get("io", r)?;
            ensure!(
                io == [u32::try_from(Self::io_at(r))?, 0, 0, 0],
                "{who} round {r}: I/O count {io:?}, expected exactly [{}, 0, 0, 0]",
                Self::io_at(r)
            );
        }
        let pid = &vm["pid"];
        let (ours, io) = (count_of(stat, pid, CPUID), count_of(stat, pid, IOIO));
        let rounds = self.rounds;
        ensure!(
            ours == self.cpuid_at(rounds) + 1 && io == 13 * rounds,
            "exitprof counted {ours} CPUID and {io} I/O exits for {who} (pid {pid}), expected {} and {}",
            self.cpuid_at(rounds) + 1,
            13 * rounds
        );
        Ok(())
    }
}

/// Runs the scenario on kernel `line` with its patched modules.
#[expect(
    clippy::too_many_lines,
    reason = "one boot: its script, then its assertions, read top to bottom"
)]
pub fn guest_cpuid_mirror(line: KernelLine, exitprof: &Path) -> anyhow::Result<()> {
    let kernel = sandbox::fetch_kernel_line(line)?;
    let modules = kernel::build(&kernel)?;
    let (a, b) = (
        Vm {
            cpuids: 2000,
            rounds: 6,
        },
        Vm {
            cpuids: 500,
            rounds: 2,
        },
    );
    let host_queries = [
        cpuid("discovery", LEAF_DISCOVERY, 0),
        cpuid("cpuid", LEAF_REASON_EXITS, CPUID),
        cpuid("cpuid_cycles", LEAF_REASON_CYCLES, CPUID),
        cpuid("unhandled", LEAF_REASON_EXITS, UNHANDLED),
        cpuid("undefined", LEAF_REASON_EXITS, UNDEFINED),
        cpuid("undefined_cycles", LEAF_REASON_CYCLES, UNDEFINED),
        cpuid("total", LEAF_TOTAL_EXITS, 0),
        cpuid("total_cycles", LEAF_TOTAL_CYCLES, 0),
        Query {
            name: "hypercall",
            arg: format!("--query hypercall:{HYPERCALL_NR:#x}"),
        },
    ];
    let inactive_queries = [
        cpuid("discovery", LEAF_DISCOVERY, 0),
        cpuid("cpuid", LEAF_REASON_EXITS, CPUID),
        cpuid("cpuid_cycles", LEAF_REASON_CYCLES, CPUID),
        cpuid("total", LEAF_TOTAL_EXITS, 0),
        cpuid("undefined", LEAF_REASON_EXITS, UNDEFINED),
    ];
    let script = format!(
        r#"
F=/sys/kernel/debug/kvm/exitprof
echo "@@EXITPROF debugfs_boot $(cat $F 2>&1)"
timeout 30 exitprof guest > /tmp/g.out 2> /tmp/g.err
echo "@@EXITPROF l1_guest_rc $?"
echo "@@EXITPROF l1_guest_stderr $(cat /tmp/g.err)"

# Per-VM scope (the default): two VMs at once, B inside A's run.
timeout 180 exitprof stat --json --by-vcpu --duration 170s > /tmp/stat.out 2> /tmp/stat.err &
STAT=$!
i=0; while ! grep -q registered $F && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "@@EXITPROF debugfs_vm $(cat $F)"
{a} > /tmp/a.out 2>&1 &
A=$!
sleep 0.5
{b} > /tmp/b.out 2>&1
kill -0 $A 2>/dev/null && echo "@@EXITPROF overlap yes" || echo "@@EXITPROF overlap no"
wait $A
echo "@@EXITPROF a $(cat /tmp/a.out)"
echo "@@EXITPROF b $(cat /tmp/b.out)"
timeout 60 exitprof stat --json --duration 1s > /tmp/busy.out 2>/dev/null
echo "@@EXITPROF busy $(cat /tmp/busy.out)"
kill -INT $STAT; wait $STAT
echo "@@EXITPROF stat_rc $?"
echo "@@EXITPROF stat $(cat /tmp/stat.out)"
while read -r l; do echo "@@EXITPROF stat_stderr $l"; done < /tmp/stat.err
echo "@@EXITPROF debugfs_after $(cat $F)"
timeout 60 exitprof vm --json {inactive} > /tmp/idle.out 2>&1
echo "@@EXITPROF idle $(cat /tmp/idle.out)"

# Host-wide scope, asked for: C sees D's exits too. Killed, it unregisters.
timeout 120 exitprof stat --guest-mirror host --duration 110s > /dev/null 2>&1 &
HOST=$!
i=0; while ! grep -q registered $F && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "@@EXITPROF debugfs_host $(cat $F)"
timeout 60 exitprof vm --cpuid 400 > /dev/null 2>&1
timeout 60 exitprof vm --json --cpuid 100 {host} > /tmp/c.out 2>&1
echo "@@EXITPROF c $(cat /tmp/c.out)"
kill -KILL $HOST; wait $HOST
sleep 0.5
echo "@@EXITPROF debugfs_killed $(cat $F)"
timeout 60 exitprof vm --json {discovery} > /tmp/k.out 2>&1
echo "@@EXITPROF killed_vm $(cat /tmp/k.out)"
"#,
        a = a.command(300),
        b = b.command(0),
        inactive = args(&inactive_queries),
        host = args(&host_queries),
        discovery = cpuid("discovery", LEAF_DISCOVERY, 0).arg,
    );
    let name = format!("guest-cpuid-mirror-{}", line.name());
    let results = run_scenario(
        &kernel,
        exitprof,
        &Scenario {
            name: &name,
            script: &script,
            npt: true,
            timeout: Duration::from_mins(8),
            modules: Some(&modules),
            extra: &[],
            cpus: 2,
        },
    )?;
    let get = |key: &str| results.get(key);
    ensure!(
        get("debugfs_boot")? == "inactive",
        "the patched kvm did not come up inactive: {:?}",
        get("debugfs_boot")?
    );
    // `exitprof guest` in the sandbox itself: QEMU's TCG has no patch.
    let l1 = get("l1_guest_stderr")?;
    ensure!(
        get("l1_guest_rc")? == "1"
            && l1.starts_with("exitprof: the hypervisor (")
            && l1.contains(") has no exitprof patch"),
        "exitprof guest under an unpatched hypervisor: {l1:?}"
    );

    // Per-VM scope.
    ensure!(
        get("debugfs_vm")?.starts_with("registered map id ")
            && get("debugfs_vm")?.ends_with(" scope vm"),
        "while stat ran, the debugfs file said {:?}",
        get("debugfs_vm")?
    );
    ensure!(
        get("overlap")? == "yes",
        "VM B did not run inside VM A's run"
    );
    ensure!(
        get("stat_rc")? == "130",
        "exitprof stat (interrupted) exited {}: {:?}",
        get("stat_rc")?,
        results.all("stat_stderr")
    );
    let stat = json(&results, "stat")?;
    ensure!(
        stat["guest_mirror"] == "registered" && stat["guest_mirror_scope"] == "vm",
        "guest_mirror {} scope {}",
        stat["guest_mirror"],
        stat["guest_mirror_scope"]
    );
    let (vm_a, vm_b) = (json(&results, "a")?, json(&results, "b")?);
    a.check("VM A", &vm_a, &stat, false)?;
    b.check("VM B", &vm_b, &stat, false)?;
    let busy = json(&results, "busy")?;
    ensure!(
        busy["guest_mirror"] == "busy",
        "a second exitprof reported guest_mirror {}",
        busy["guest_mirror"]
    );
    println!(
        "[e2e] per-VM scope: VM A read its own CPUID counts {}..{} and VM B {}..{} while both ran; each equals exitprof's count for its pid",
        a.cpuid_at(1),
        a.cpuid_at(a.rounds),
        b.cpuid_at(1),
        b.cpuid_at(b.rounds)
    );

    // Stopped: inactive.
    ensure!(
        get("debugfs_after")? == "inactive",
        "after exitprof stopped, the debugfs file says {:?}",
        get("debugfs_after")?
    );
    let idle = Answers::parse(&json(&results, "idle")?, &inactive_queries)?;
    let [eax, ebx, _, edx] = idle.get("discovery", 1)?;
    ensure!(
        eax == SIGNATURE && !Discovery::from_ebx(ebx).active && edx == 0,
        "inactive discovery {:#x?}",
        idle.get("discovery", 1)?
    );
    for name in ["cpuid", "cpuid_cycles", "total"] {
        ensure!(
            idle.get(name, 1)? == [0, 0, 0, EDX_INACTIVE],
            "inactive {name}: {:#x?}",
            idle.get(name, 1)?
        );
    }
    ensure!(
        idle.get("undefined", 1)? == [0, 0, 0, EDX_UNDEFINED],
        "an undefined reason stays undefined while inactive"
    );

    // Host-wide scope: C sees D's 400 CPUIDs beside its own 100.
    ensure!(
        get("debugfs_host")?.ends_with(" scope host"),
        "with --guest-mirror host the debugfs file says {:?}",
        get("debugfs_host")?
    );
    let c = Answers::parse(&json(&results, "c")?, &host_queries)?;
    let [eax, ebx, tsc_khz, _] = c.get("discovery", 1)?;
    ensure!(
        eax == SIGNATURE
            && Discovery::from_ebx(ebx)
                == Discovery {
                    version: 2,
                    isa: Isa::Svm as u32,
                    active: true,
                    host_scope: true,
                },
        "host-scope discovery {:#x?}",
        c.get("discovery", 1)?
    );
    ensure!(
        c.get("cpuid", 1)? == [400 + 100 + 2, 0, 0, 0],
        "host scope: CPUID count {:?}, expected exactly 502 (D's 400, C's 100, discovery, itself)",
        c.get("cpuid", 1)?
    );
    let [_, high, low, edx] = c.get("cpuid_cycles", 1)?;
    ensure!(
        edx == 0 && join(high, low) > 0,
        "CPUID cycles {:#x?}",
        c.get("cpuid_cycles", 1)?
    );
    ensure!(
        c.get("unhandled", 1)? == [0, 0, 0, 0],
        "a reason KVM does not handle ({UNHANDLED:#x}): {:#x?}",
        c.get("unhandled", 1)?
    );
    for name in ["undefined", "undefined_cycles"] {
        ensure!(
            c.get(name, 1)? == [0, 0, 0, EDX_UNDEFINED],
            "a reason the kernel does not name ({UNDEFINED:#x}): {:#x?}",
            c.get(name, 1)?
        );
    }
    let [total, total_high, _, edx] = c.get("total", 1)?;
    ensure!(
        edx == 0 && total_high == 0 && u64::from(total) > 502,
        "total exits {:#x?}",
        c.get("total", 1)?
    );
    let [_, high, low, _] = c.get("total_cycles", 1)?;
    ensure!(
        join(high, low) >= join(c.get("cpuid_cycles", 1)?[1], c.get("cpuid_cycles", 1)?[2]),
        "total cycles below the CPUID reason's"
    );
    let [magic_low, _, _, magic_high] = c.get("hypercall", 1)?;
    ensure!(
        join(magic_high, magic_low) == HYPERCALL_MAGIC,
        "hypercall {HYPERCALL_NR:#x} returned edx:eax = {magic_high:#x}:{magic_low:#x}"
    );
    ensure!(
        get("debugfs_killed")? == "inactive",
        "after SIGKILL the debugfs file says {:?}",
        get("debugfs_killed")?
    );
    let killed = json(&results, "killed_vm")?;
    let regs = killed["queries"][0]["ebx"].as_u64().unwrap_or(0);
    ensure!(
        !Discovery::from_ebx(u32::try_from(regs)?).active,
        "the leaves stayed active after exitprof was killed"
    );
    println!(
        "[e2e] {name}: PASS (per-VM scope exact for two VMs at once; host scope only when asked: 502 = 400 + 100 + 2; undefined edx=0xFFFFFFFF, unhandled zeros, total {total}; magic {HYPERCALL_MAGIC:#018x}; guest TSC {tsc_khz} kHz; inactive after stop and SIGKILL; busy for a second exitprof)"
    );
    Ok(())
}
