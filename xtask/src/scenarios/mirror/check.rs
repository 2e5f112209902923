//! The `guest-cpuid-mirror` scenario's assertions on what its script
//! printed: the registers each VM read, against its own counts and
//! exitprof's.
use std::collections::BTreeMap;

use anyhow::{Context as _, ensure};
use exitprof_common::guest_abi::{
    Discovery, EDX_INACTIVE, EDX_UNDEFINED, HYPERCALL_MAGIC, HYPERCALL_NR, SIGNATURE, join,
};
use serde_json::Value;

use super::{
    plan::{Plan, Query, Vm, host_queries, inactive_queries, plan},
    real_guest,
};
use crate::{
    sandbox::{Results, Vendor},
    scenarios::common::snapshot,
};

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

impl Vm {
    /// Checks one VM's answers against its own counts (not another's)
    /// and exitprof's count for its process.
    fn check(
        &self,
        p: &Plan,
        who: &str,
        vm: &Value,
        stat: &Value,
        host_scope: bool,
    ) -> anyhow::Result<()> {
        let answers = Answers::parse(vm, &Self::queries(p))?;
        for r in 1..=self.rounds {
            let [eax, ebx, tsc_khz, edx] = answers.get("discovery", r)?;
            let want = Discovery {
                version: 2,
                isa: p.isa as u32,
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
        let (ours, io) = (count_of(stat, pid, p.cpuid), count_of(stat, pid, p.io));
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

/// The checks, for the scenario `name`, with the real-guest part's if
/// `real_guest`.
#[expect(
    clippy::too_many_lines,
    reason = "one boot's assertions, read top to bottom beside its script"
)]
pub(super) fn check_as(
    vendor: Vendor,
    name: &str,
    results: &Results,
    real_guest: bool,
) -> anyhow::Result<()> {
    let p = plan(vendor);
    let (a, b) = (&p.a, &p.b);
    let get = |key: &str| results.get(key);
    ensure!(
        get("debugfs_boot")? == "inactive",
        "the patched kvm did not come up inactive: {:?}",
        get("debugfs_boot")?
    );
    // `exitprof guest` in the sandbox itself: the emulator has no patch
    // (QEMU's TCG says it is a hypervisor, Bochs does not).
    let l1 = get("l1_guest_stderr")?;
    let l1_expected = match vendor {
        Vendor::Svm => {
            l1.starts_with("exitprof: the hypervisor (") && l1.contains(") has no exitprof patch")
        }
        Vendor::Vmx => l1.starts_with("exitprof: not running in a virtual machine"),
    };
    ensure!(
        get("l1_guest_rc")? == "1" && l1_expected,
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
    let stat = snapshot(results, "stat")?;
    ensure!(
        stat["guest_mirror"] == "registered" && stat["guest_mirror_scope"] == "vm",
        "guest_mirror {} scope {}",
        stat["guest_mirror"],
        stat["guest_mirror_scope"]
    );
    let (vm_a, vm_b) = (snapshot(results, "a")?, snapshot(results, "b")?);
    a.check(&p, "VM A", &vm_a, &stat, false)?;
    b.check(&p, "VM B", &vm_b, &stat, false)?;
    let busy = snapshot(results, "busy")?;
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
    let inactive = inactive_queries(&p);
    let idle = Answers::parse(&snapshot(results, "idle")?, &inactive)?;
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

    // Host-wide scope: C sees D's CPUIDs beside its own.
    ensure!(
        get("debugfs_host")?.ends_with(" scope host"),
        "with --guest-mirror host the debugfs file says {:?}",
        get("debugfs_host")?
    );
    let (others, own) = (p.d_cpuids, p.c_cpuids);
    let seen = others + own + 2;
    let c = Answers::parse(&snapshot(results, "c")?, &host_queries(&p))?;
    let [eax, ebx, tsc_khz, _] = c.get("discovery", 1)?;
    ensure!(
        eax == SIGNATURE
            && Discovery::from_ebx(ebx)
                == Discovery {
                    version: 2,
                    isa: p.isa as u32,
                    active: true,
                    host_scope: true,
                },
        "host-scope discovery {:#x?}",
        c.get("discovery", 1)?
    );
    ensure!(
        c.get("cpuid", 1)? == [u32::try_from(seen)?, 0, 0, 0],
        "host scope: CPUID count {:?}, expected exactly {seen} (D's {others}, C's {own}, discovery, itself)",
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
        "a reason KVM does not handle ({:#x}): {:#x?}",
        p.unhandled,
        c.get("unhandled", 1)?
    );
    for name in ["undefined", "undefined_cycles"] {
        ensure!(
            c.get(name, 1)? == [0, 0, 0, EDX_UNDEFINED],
            "a reason the kernel does not name ({:#x}): {:#x?}",
            p.undefined,
            c.get(name, 1)?
        );
    }
    let [total, total_high, _, edx] = c.get("total", 1)?;
    ensure!(
        edx == 0 && total_high == 0 && u64::from(total) > seen,
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
    let killed = snapshot(results, "killed_vm")?;
    let regs = killed["queries"][0]["ebx"].as_u64().unwrap_or(0);
    ensure!(
        !Discovery::from_ebx(u32::try_from(regs)?).active,
        "the leaves stayed active after exitprof was killed"
    );
    if real_guest {
        real_guest::check(results)?;
    }
    println!(
        "[e2e] {name}: PASS (per-VM scope exact for two VMs at once; host scope only when asked: {seen} = {others} + {own} + 2; undefined edx=0xFFFFFFFF, unhandled zeros, total {total}; magic {HYPERCALL_MAGIC:#018x}; guest TSC {tsc_khz} kHz; inactive after stop and SIGKILL; busy for a second exitprof)"
    );
    Ok(())
}
