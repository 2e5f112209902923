//! What the scenarios share: ftrace's ground truth and exitprof's
//! snapshots as counts by reason name.
use std::collections::BTreeMap;

use anyhow::{Context as _, ensure};
use serde_json::Value;

use crate::sandbox::{Results, Vendor};

/// Counts of `name count` pairs, for comparisons.
pub type Counts = BTreeMap<String, u64>;

/// CPUIDs of the vmexit scenario's workload.
pub const CPUIDS: u64 = 5000;

/// Shell lines that print the `kvm_exit` records ftrace holds, counted by
/// reason name, as `@@EXITPROF <prefix>ftrace <count> <name>` (names may
/// contain spaces: `PF excp`), or with `by_pid` as `<count> <pid> <name>`,
/// plus whether the trace buffer lost events (`<prefix>lost`).
///
/// The `sed` expressions have no groups: busybox's `sed` with a group
/// and leading `.*` took 14 s of Bochs's CPU for 5,000 records, these 3 s.
pub fn ftrace_counts_script(prefix: &str, by_pid: bool) -> String {
    let pid = if by_pid {
        r"s/^ *[^ ]*-//;s/ .* reason / /"
    } else {
        r"s/.* reason //"
    };
    format!(
        r#"
echo "@@EXITPROF {prefix}lost $(grep -c LOST /sys/kernel/tracing/trace)"
sed -n '/ kvm_exit: /{{s/ rip .*//;{pid};p}}' /sys/kernel/tracing/trace | sort | uniq -c |
  while read -r n rest; do echo "@@EXITPROF {prefix}ftrace $n $rest"; done
"#
    )
}

/// What the scenarios expect of a vendor's KVM, by the names of the
/// kernel's `kvm_exit` print format (which exitprof's must equal).
pub struct Expect {
    /// CPUID's exit reason and its name.
    pub cpuid: (u32, &'static str),
    /// The exit of a nested-paging fault (none under shadow paging).
    pub nested_fault: &'static str,
    /// Exits of the workload's 200 paging rounds (a CR3 read and write and
    /// an INVLPG each) under shadow paging, and their exact counts; the
    /// report's chart must name the first.
    pub shadow: &'static [(&'static str, u64)],
    /// The exception exit of shadow paging's page faults.
    pub shadow_fault: &'static str,
}

/// [`Expect`] of `vendor`.
pub const fn expect(vendor: Vendor) -> Expect {
    match vendor {
        Vendor::Svm => Expect {
            cpuid: (0x72, "cpuid"),
            nested_fault: "npf",
            shadow: &[("write_cr3", 200), ("invlpg", 200), ("read_cr3", 200)],
            shadow_fault: "PF excp",
        },
        // VMX has one exit for every control-register access: the 200 CR3
        // reads and 200 CR3 writes are CR_ACCESS.
        Vendor::Vmx => Expect {
            cpuid: (10, "CPUID"),
            nested_fault: "EPT_VIOLATION",
            shadow: &[("CR_ACCESS", 400), ("INVLPG", 200)],
            shadow_fault: "EXCEPTION_NMI",
        },
    }
}

/// ftrace's counts reported under `<prefix>ftrace` (`<prefix>lost`).
pub fn ftrace_counts(results: &Results, prefix: &str) -> anyhow::Result<Counts> {
    ensure!(
        results.get(&format!("{prefix}lost"))? == "0",
        "the ftrace buffer lost events: no ground truth"
    );
    results
        .all(&format!("{prefix}ftrace"))
        .into_iter()
        .map(|line| {
            let (n, name) = line.split_once(' ').context("ftrace line")?;
            Ok((name.to_owned(), n.parse()?))
        })
        .collect()
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

pub fn snapshot(results: &Results, key: &str) -> anyhow::Result<Value> {
    let text = results.get(key)?;
    serde_json::from_str(text).with_context(|| {
        format!(
            "exitprof printed no JSON snapshot ({text:?}); its stderr: {:?}",
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
            ftrace_counts_script("classic_", false),
            r#"
echo "@@EXITPROF classic_lost $(grep -c LOST /sys/kernel/tracing/trace)"
sed -n '/ kvm_exit: /{s/ rip .*//;s/.* reason //;p}' /sys/kernel/tracing/trace | sort | uniq -c |
  while read -r n rest; do echo "@@EXITPROF classic_ftrace $n $rest"; done
"#
        );
        assert!(
            ftrace_counts_script("", true)
                .contains(r"sed -n '/ kvm_exit: /{s/ rip .*//;s/^ *[^ ]*-//;s/ .* reason / /;p}'")
        );
    }
}
