//! The `module-reload` scenario: `record --ept both` on a host whose KVM
//! modules were loaded with insmod from a private directory (as kernel
//! developers load a patched KVM), where modprobe cannot bring them back.
//!
//! - Without `--module`, record refuses in one line and touches nothing.
//! - With `--module`, both modes are recorded, the original mode comes
//!   back, and the patched module's guest-mirror file is still there.
//! - Killed with SIGKILL during the shadow run, record leaves no program
//!   attached; `record --restore` puts the original mode back.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, ensure};

use super::common::snapshot;
use crate::sandbox::{Kernel, Scenario, Vendor, run_scenario};

/// The scenario, booting the patched modules in `modules`.
#[expect(
    clippy::too_many_lines,
    reason = "one boot: its script, then its assertions, read top to bottom"
)]
pub(super) fn module_reload(
    kernel: &Kernel,
    exitprof: &Path,
    modules: &Path,
) -> anyhow::Result<()> {
    let script = crate::sandbox::STOP_KVM_KEEPER.to_owned()
        + r#"
NPT=/sys/module/kvm_amd/parameters/npt
K=/lib/modules/$(uname -r)/kernel/arch/x86/kvm
# Load the modules from a private directory, with nothing in /lib/modules.
rmmod kvm_amd && rmmod kvm
mkdir -p /opt/kvm && cp $K/kvm.ko $K/kvm-amd.ko /opt/kvm/
mv /lib/modules /lib/modules.hidden
insmod /opt/kvm/kvm.ko && insmod /opt/kvm/kvm-amd.ko npt=1
echo "@@EXITPROF private_npt $(cat $NPT)"
echo "@@EXITPROF mirror_before $(ls /sys/kernel/debug/kvm/exitprof 2>&1)"

timeout 60 exitprof record --ept both -o /tmp/a.json > /dev/null 2> /tmp/a.err
echo "@@EXITPROF refuse_rc $?"
echo "@@EXITPROF refuse_lines $(wc -l < /tmp/a.err)"
echo "@@EXITPROF refuse_err $(cat /tmp/a.err)"
echo "@@EXITPROF refuse_npt $(cat $NPT 2>&1)"

timeout 180 exitprof record --ept both --module /opt/kvm/kvm-amd.ko -o /tmp/b.json > /dev/null 2> /tmp/b.err
echo "@@EXITPROF module_rc $?"
while read -r l; do echo "@@EXITPROF module_stderr $l"; done < /tmp/b.err
echo "@@EXITPROF recording $(cat /tmp/b.json)"
echo "@@EXITPROF module_npt $(cat $NPT 2>&1)"
echo "@@EXITPROF mirror_after $(ls /sys/kernel/debug/kvm/exitprof 2>&1)"

exitprof record --ept both --module /opt/kvm/kvm-amd.ko --duration 20s -o /tmp/k.json -- exitprof vm --cpuid 100 --rounds 0 --pause-ms 5 > /dev/null 2>&1 &
REC=$!
i=0
while [ "$(cat $NPT 2>/dev/null)" != "N" ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done
sleep 2
echo "@@EXITPROF killed_during $(cat $NPT)"
kill -KILL $REC
wait $REC
echo "@@EXITPROF killed_npt $(cat $NPT)"
i=0
while bpftool prog show | grep -q 'name kvm_'; do [ $i -lt 50 ] || break; sleep 0.1; i=$((i+1)); done
echo "@@EXITPROF killed_progs $(bpftool prog show | grep -c 'name kvm_')"
echo "@@EXITPROF killed_maps $(bpftool map show | grep -c 'name EXIT_STATS')"
# The killed record's workload VM still runs: the module is in use.
timeout 60 exitprof record --restore 2> /tmp/busy.err
echo "@@EXITPROF busy_rc $?"
echo "@@EXITPROF busy_err $(cat /tmp/busy.err)"
kill -KILL $(pidof exitprof)
sleep 1
timeout 60 exitprof record --restore 2> /tmp/r.err
echo "@@EXITPROF restore_rc $?"
echo "@@EXITPROF restore_err $(cat /tmp/r.err)"
echo "@@EXITPROF restored_npt $(cat $NPT)"
timeout 60 exitprof record --restore 2> /tmp/r2.err
echo "@@EXITPROF restore_again $(cat /tmp/r2.err)"
"#;
    let results = run_scenario(
        kernel,
        exitprof,
        &Scenario {
            name: "module-reload",
            vendor: Vendor::Svm,
            script: &script,
            nested_paging: true,
            timeout: Duration::from_mins(10),
            modules: Some(modules),
            extra: &[("/usr/sbin/bpftool", "/bin/bpftool")],
            cpus: 2,
        },
    )?;
    let get = |key: &str| results.get(key);
    ensure!(
        get("private_npt")? == "Y",
        "the private modules did not load"
    );
    ensure!(
        get("mirror_before")? == "/sys/kernel/debug/kvm/exitprof",
        "the patched kvm has no mirror file: {:?}",
        get("mirror_before")?
    );
    // 1. Refused, in one line, before touching anything.
    let refusal = get("refuse_err")?;
    ensure!(
        get("refuse_rc")? == "1" && get("refuse_lines")? == "1",
        "without --module: rc {}, {} stderr lines: {refusal}",
        get("refuse_rc")?,
        get("refuse_lines")?
    );
    ensure!(
        refusal.starts_with("exitprof: cannot reload kvm_amd safely: modprobe cannot find it (")
            && refusal.ends_with("if it was loaded with insmod, pass --module PATH of that .ko"),
        "the refusal says {refusal:?}"
    );
    ensure!(get("refuse_npt")? == "Y", "the refusal touched kvm_amd");
    println!("[e2e] insmod-loaded kvm_amd: {refusal}");
    // 2. With --module: both modes, original mode back, mirror intact.
    ensure!(
        get("module_rc")? == "0",
        "record --module failed: {:?}",
        results.all("module_stderr")
    );
    let recording = snapshot(&results, "recording")?;
    let modes: Vec<&str> = recording["runs"]
        .as_array()
        .context("runs")?
        .iter()
        .filter_map(|r| r["mode"].as_str())
        .collect();
    ensure!(modes == ["nested", "shadow"], "recorded modes {modes:?}");
    ensure!(
        get("module_npt")? == "Y",
        "npt not restored: {}",
        get("module_npt")?
    );
    ensure!(
        get("mirror_after")? == "/sys/kernel/debug/kvm/exitprof",
        "the patched module did not survive the reloads: {:?}",
        get("mirror_after")?
    );
    // 3. SIGKILL during the shadow run: nothing attached, --restore.
    ensure!(
        get("killed_during")? == "N",
        "the killed record never reached shadow paging"
    );
    ensure!(
        get("killed_npt")? == "N",
        "after SIGKILL npt is {}",
        get("killed_npt")?
    );
    ensure!(
        get("killed_progs")? == "0" && get("killed_maps")? == "0",
        "after SIGKILL {} programs and {} EXIT_STATS maps remain",
        get("killed_progs")?,
        get("killed_maps")?
    );
    let busy = get("busy_err")?;
    ensure!(
        get("busy_rc")? == "1"
            && busy.starts_with("exitprof: kvm_amd is in use by pid ")
            && busy.ends_with("a VM: stop it, then run `exitprof record --restore`"),
        "--restore with the workload VM still running: rc {}, said {busy:?}",
        get("busy_rc")?
    );
    ensure!(
        get("restore_rc")? == "0"
            && get("restore_err")?
                == "exitprof: a record was stopped before it restored the paging mode: restored kvm_amd npt=1"
            && get("restored_npt")? == "Y",
        "record --restore: rc {}, said {:?}, npt {}",
        get("restore_rc")?,
        get("restore_err")?,
        get("restored_npt")?
    );
    ensure!(
        get("restore_again")? == "exitprof: nothing to restore",
        "a second --restore said {:?}",
        get("restore_again")?
    );
    println!(
        "[e2e] module-reload: PASS (insmod modules refused without --module; --module recorded {modes:?} and restored npt=1 with the mirror file intact; after SIGKILL no program attached and --restore put npt=1 back)"
    );
    Ok(())
}
