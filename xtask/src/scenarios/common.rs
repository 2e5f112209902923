//! What the scenarios share: ftrace's ground truth and exitprof's
//! snapshots as counts by reason name.
use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use crate::sandbox::{Kernel, Results, Scenario, Vendor, run_scenario};

/// Counts of `name count` pairs, for comparisons.
pub type Counts = BTreeMap<String, u64>;

/// The SVM exit codes of CPUID and port I/O (the QEMU sandbox is AMD).
pub const SVM_CPUID: u32 = 0x72;
pub const SVM_IOIO: u32 = 0x7b;
/// The VMX basic exit reasons of CPUID and port I/O (the Bochs sandbox).
pub const VMX_CPUID: u32 = 10;
pub const VMX_IO_INSTRUCTION: u32 = 30;

/// CPUIDs of the vmexit scenario's workload.
pub const CPUIDS: u64 = 5000;

/// A scenario written once for both vendors: its name, its script and
/// the checks of what it printed. The SVM sandbox boots once for each;
/// the VMX sandbox runs them as sections of one boot (`vmx.rs`).
pub struct Part {
    pub name: &'static str,
    pub script: fn(Vendor) -> String,
    pub check: fn(Vendor, &Results) -> anyhow::Result<()>,
}

impl Part {
    /// Its own boot of the SVM sandbox.
    pub fn boot_svm(&self, kernel: &Kernel, exitprof: &Path) -> anyhow::Result<()> {
        let results = run_scenario(
            kernel,
            exitprof,
            &Scenario {
                name: self.name,
                vendor: Vendor::Svm,
                script: &(self.script)(Vendor::Svm),
                nested_paging: true,
                timeout: Duration::from_mins(4),
                modules: None,
                extra: &[],
                cpus: 2,
            },
        )?;
        (self.check)(Vendor::Svm, &results)
    }
}

/// What ftrace's counts are keyed by, besides the reason.
#[derive(Clone, Copy)]
pub enum By {
    /// The process that ran the vCPU (its thread's pid, as ftrace shows it).
    Pid,
    /// `kvm_exit`'s vCPU id.
    Vcpu,
}

/// Shell lines that print the `kvm_exit` records ftrace holds, counted by
/// pid or vCPU and reason name, as `@@EXITPROF <prefix>ftrace <count>
/// <pid|vcpu> <name>` (names may contain spaces: `PF excp`), plus whether
/// the trace buffer lost events (`<prefix>lost`).
///
/// The `sed` expressions have no groups: busybox's `sed` with a group
/// and leading `.*` took 14 s of Bochs's CPU for 5,000 records, these 3 s.
pub fn ftrace_counts_script(prefix: &str, by: By) -> String {
    let key = match by {
        By::Pid => r"s/^ *[^ ]*-//;s/ .* reason / /",
        By::Vcpu => r"s/.* kvm_exit: vcpu //;s/ reason / /",
    };
    format!(
        r#"
echo "@@EXITPROF {prefix}lost $(grep -c LOST /sys/kernel/tracing/trace)"
sed -n '/ kvm_exit: /{{s/ rip .*//;{key};p}}' /sys/kernel/tracing/trace | sort | uniq -c |
  while read -r n rest; do echo "@@EXITPROF {prefix}ftrace $n $rest"; done
"#
    )
}

/// Counts by pid or vCPU (see [`By`]), then by reason name.
pub type CountsBy = BTreeMap<u64, Counts>;

/// ftrace's counts reported under `<prefix>ftrace` (`<prefix>lost`).
///
/// # Errors
/// When the buffer lost events (no ground truth then) or a line is bad.
pub fn ftrace_counts(results: &Results, prefix: &str) -> anyhow::Result<CountsBy> {
    ensure!(
        results.get(&format!("{prefix}lost"))? == "0",
        "the ftrace buffer lost events: no ground truth"
    );
    let mut by = CountsBy::new();
    for line in results.all(&format!("{prefix}ftrace")) {
        let mut parts = line.splitn(3, ' ');
        let (Some(n), Some(key), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("bad ftrace line {line:?}");
        };
        by.entry(key.parse()?)
            .or_default()
            .insert(name.to_owned(), n.parse()?);
    }
    Ok(by)
}

/// The counts by reason name over every pid or vCPU.
pub fn total(by: &CountsBy) -> Counts {
    let mut total = Counts::new();
    for (name, n) in by.values().flatten() {
        *total.entry(name.clone()).or_default() += n;
    }
    total
}

/// The per-(process, vCPU) rows of an exitprof JSON snapshot
/// (`--by-vcpu`), by vCPU then reason name, and the pids they name.
pub fn exit_counts_by_vcpu(snapshot: &Value) -> (CountsBy, Vec<u64>) {
    let mut by = CountsBy::new();
    let mut pids = Vec::new();
    for row in snapshot["exits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r.get("pid").is_some())
    {
        pids.extend(row["pid"].as_u64());
        *by.entry(row["vcpu"].as_u64().unwrap_or(u64::MAX))
            .or_default()
            .entry(row["name"].as_str().unwrap_or("?").to_owned())
            .or_default() += row["count"].as_u64().unwrap_or(0);
    }
    pids.sort_unstable();
    pids.dedup();
    (by, pids)
}

/// What the scenarios expect of a vendor's KVM, by the names of the
/// kernel's `kvm_exit` print format (which exitprof's must equal).
pub struct Expect {
    /// CPUID's exit reason and its name.
    pub cpuid: (u32, &'static str),
    /// The exit reason of port I/O (`in`/`out`).
    pub io: u32,
    /// The exit of a nested-paging fault (none under shadow paging).
    pub nested_fault: &'static str,
    /// Exits of the workload's 200 paging rounds (a CR3 read and write and
    /// an INVLPG each) under shadow paging, and their exact counts; the
    /// report's chart must name the first.
    pub shadow: &'static [(&'static str, u64)],
    /// The exception exit of shadow paging's page faults.
    pub shadow_fault: &'static str,
    /// Raw mode gives exit sites (`--sites`). On VMX the RIP KVM has
    /// cached is stale at `kvm_exit`, so `--sites` makes exitprof attach
    /// `kvm_exit` classic there: the ground truth's raw run goes without
    /// it, so that raw mode's `vcpu_vmx.exit_reason` is what is checked.
    pub raw_sites: bool,
}

/// [`Expect`] of `vendor`.
pub const fn expect(vendor: Vendor) -> Expect {
    match vendor {
        Vendor::Svm => Expect {
            cpuid: (SVM_CPUID, "cpuid"),
            io: SVM_IOIO,
            nested_fault: "npf",
            shadow: &[("write_cr3", 200), ("invlpg", 200), ("read_cr3", 200)],
            shadow_fault: "PF excp",
            raw_sites: true,
        },
        // VMX has one exit for every control-register access: the 200 CR3
        // reads and 200 CR3 writes are CR_ACCESS.
        Vendor::Vmx => Expect {
            cpuid: (VMX_CPUID, "CPUID"),
            io: VMX_IO_INSTRUCTION,
            nested_fault: "EPT_VIOLATION",
            shadow: &[("CR_ACCESS", 400), ("INVLPG", 200)],
            shadow_fault: "EXCEPTION_NMI",
            raw_sites: false,
        },
    }
}

/// Per-reason rows (without `pid`) of an exitprof JSON snapshot.
pub fn exit_counts(snapshot: &Value) -> Counts {
    snapshot["exits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r.get("pid").is_none())
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("?").to_owned(),
                r["count"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The JSON exitprof printed under `key` (a snapshot, a recording, a
/// report).
pub fn snapshot(results: &Results, key: &str) -> anyhow::Result<Value> {
    let text = results.get(key)?;
    serde_json::from_str(text).with_context(|| {
        format!(
            "{key}: exitprof printed no JSON ({text:?}); its stderr: {:?}",
            results.all("stderr")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ftrace_count_scripts() {
        assert_eq!(
            ftrace_counts_script("classic_", By::Vcpu),
            r#"
echo "@@EXITPROF classic_lost $(grep -c LOST /sys/kernel/tracing/trace)"
sed -n '/ kvm_exit: /{s/ rip .*//;s/.* kvm_exit: vcpu //;s/ reason / /;p}' /sys/kernel/tracing/trace | sort | uniq -c |
  while read -r n rest; do echo "@@EXITPROF classic_ftrace $n $rest"; done
"#
        );
        assert!(
            ftrace_counts_script("", By::Pid)
                .contains(r"sed -n '/ kvm_exit: /{s/ rip .*//;s/^ *[^ ]*-//;s/ .* reason / /;p}'")
        );
    }

    #[test]
    fn ftrace_counts_by_key_and_in_total() {
        let results = Results {
            values: [
                ("lost", "0"),
                ("ftrace", "5000 0 CPUID"),
                ("ftrace", "3 0 PF excp"),
                ("ftrace", "2 1 CPUID"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .to_vec(),
            log: "log".into(),
        };
        let by = ftrace_counts(&results, "").unwrap();
        assert_eq!(by[&0]["PF excp"], 3);
        assert_eq!(by[&1]["CPUID"], 2);
        assert_eq!(total(&by)["CPUID"], 5002);
        let snapshot: Value = serde_json::from_str(
            r#"{"exits": [{"name": "CPUID", "count": 9},
                {"name": "CPUID", "pid": 7, "vcpu": 0, "count": 5},
                {"name": "CPUID", "pid": 7, "vcpu": 1, "count": 4}]}"#,
        )
        .unwrap();
        let (by_vcpu, pids) = exit_counts_by_vcpu(&snapshot);
        assert_eq!((by_vcpu[&0]["CPUID"], by_vcpu[&1]["CPUID"]), (5, 4));
        assert_eq!(pids, [7]);
    }
}
