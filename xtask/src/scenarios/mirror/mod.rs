//! The `guest-cpuid-mirror` scenario (guest ABI 2): the patched KVM
//! modules (`cargo xtask kernel`) boot in the sandbox, exitprof registers
//! its mirror map with them, and workload VMs read the exitprof CPUID
//! leaves and hypercall from inside their guests. One script and one
//! check for both vendors, with the vendor's exit codes: on SVM (kvm-amd,
//! one boot per kernel line) and on VMX (kvm-intel under Bochs, a section
//! of the shared VMX boot, with fewer CPUIDs). Asserted exactly:
//!
//! - two VMs at once under one `exitprof stat` (per-VM scope, the
//!   default): each guest's CPUID and I/O counts are exactly its own, and
//!   equal exitprof's count for its process;
//! - host-wide scope only when asked for (`--guest-mirror host`), which
//!   the discovery leaf reports, and then a guest sees another VM's exits;
//! - undefined and unhandled reasons, the totals, the hypercall, the
//!   inactive values after exitprof stops or is killed, and `busy` for a
//!   second exitprof;
//! - on SVM and 6.1, a real VMM and a real guest OS: Debian's QEMU boots
//!   the sandbox's kernel as an L2 guest that runs `exitprof guest` after
//!   a busy workload VM: the guest's numbers never exceed exitprof's count
//!   for its QEMU process, and the busy VM's exits are not among them
//!   (QEMU with KVM inside Bochs would need nested VMX: SVM only).
use std::{path::Path, time::Duration};

mod check;
mod plan;
mod real_guest;

use exitprof_common::guest_abi::LEAF_DISCOVERY;
use plan::{args, cpuid, host_queries, inactive_queries, plan};

use crate::{
    kernel,
    sandbox::{self, KernelLine, Results, Scenario, Vendor, run_scenario},
    scenarios::common::Part,
};

/// The scenario's name: its section of the VMX boot. On SVM each kernel
/// line boots it on its own, as `guest-cpuid-mirror-<line>`.
pub(super) const NAME: &str = "guest-cpuid-mirror";

/// Its section of the VMX boot (on SVM it boots per kernel line, with the
/// real L2 guest on 6.1: [`guest_cpuid_mirror`]).
pub(super) const PART: Part = Part {
    name: NAME,
    script,
    check,
};

/// The SVM sandbox's boot of the scenario on kernel `line` with its
/// patched modules.
pub fn guest_cpuid_mirror(line: KernelLine, exitprof: &Path) -> anyhow::Result<()> {
    let kernel = sandbox::fetch_kernel_line(line)?;
    let modules = kernel::build(&kernel)?;
    // The real guest runs on one line only: one boot of QEMU's L2 is
    // enough to show it, and boots are expensive.
    let real_guest = line == KernelLine::V6_1;
    let files = if real_guest {
        real_guest::files(&kernel, exitprof)?
    } else {
        Vec::new()
    };
    let extra: Vec<(&str, &str)> = files
        .iter()
        .map(|(f, t)| (f.as_str(), t.as_str()))
        .collect();
    let name = format!("{NAME}-{}", line.name());
    let results = run_scenario(
        &kernel,
        exitprof,
        &Scenario {
            name: &name,
            script: &script_with(Vendor::Svm, real_guest),
            vendor: Vendor::Svm,
            nested_paging: true,
            timeout: Duration::from_mins(12),
            modules: Some(&modules),
            extra: &extra,
            cpus: 2,
        },
    )?;
    check::check_as(Vendor::Svm, &name, &results, real_guest)
}

/// The scenario's script on `vendor` (the VMX boot's section).
pub(super) fn script(vendor: Vendor) -> String {
    script_with(vendor, false)
}

/// The script, with the real-guest part (SVM on 6.1) if `real_guest`.
fn script_with(vendor: Vendor, real_guest: bool) -> String {
    let p = plan(vendor);
    format!(
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
timeout 60 exitprof vm --cpuid {d} > /dev/null 2>&1
timeout 60 exitprof vm --json --cpuid {c} {host} > /tmp/c.out 2>&1
echo "@@EXITPROF c $(cat /tmp/c.out)"
kill -KILL $HOST; wait $HOST
sleep 0.5
echo "@@EXITPROF debugfs_killed $(cat $F)"
timeout 60 exitprof vm --json {discovery} > /tmp/k.out 2>&1
echo "@@EXITPROF killed_vm $(cat /tmp/k.out)"
{real}
"#,
        real = if real_guest {
            real_guest::script()
        } else {
            String::new()
        },
        a = p.a.command(&p, p.a_pause_ms),
        b = p.b.command(&p, 0),
        d = p.d_cpuids,
        c = p.c_cpuids,
        inactive = args(&inactive_queries(&p)),
        host = args(&host_queries(&p)),
        discovery = cpuid("discovery", LEAF_DISCOVERY, 0).arg,
    )
}

/// The checks of what [`script`] printed on `vendor` (the VMX boot's
/// section).
pub(super) fn check(vendor: Vendor, results: &Results) -> anyhow::Result<()> {
    check::check_as(vendor, NAME, results, false)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use exitprof_common::reasons::lookup;

    use super::*;
    use crate::util::workspace_root;

    /// The unhandled reason of each vendor is named by both kernels' uapi
    /// lists (the kernel patch's "defined") and has no handler in
    /// exitprof's table (which follows KVM's handler tables); the undefined
    /// one is named by neither list (exitprof's tables hold every reason
    /// the uapi lists name: a test of `exitprof-common` checks that).
    #[test]
    fn the_unhandled_and_undefined_reasons() {
        for (vendor, header) in [(Vendor::Svm, "svm.h"), (Vendor::Vmx, "vmx.h")] {
            let p = plan(vendor);
            let unhandled = lookup(p.isa, p.unhandled).expect("named");
            assert!(unhandled.defined && !unhandled.handled, "{vendor}");
            let undefined = lookup(p.isa, p.undefined).map(|r| r.name);
            for line in ["linux-6.1", "linux-6.12"] {
                let path = workspace_root()
                    .join("fixtures/uapi")
                    .join(line)
                    .join(header);
                let uapi = fs::read_to_string(path).unwrap();
                let names = |name: &str| uapi.contains(&format!("\"{name}\" }}"));
                assert!(names(unhandled.name), "{line} {header}: {unhandled:?}");
                assert!(
                    undefined.is_none_or(|name| !names(name)),
                    "{line} {header}: {undefined:?}"
                );
            }
        }
    }
}
