//! What the scenarios share: ftrace's ground truth and exitprof's
//! snapshots as counts by reason name.
use std::collections::BTreeMap;

use anyhow::{Context as _, ensure};
use serde_json::Value;

use crate::sandbox::Results;

/// Counts of `name count` pairs, for comparisons.
pub type Counts = BTreeMap<String, u64>;

/// The SVM exit codes of CPUID and port I/O (the sandbox is AMD).
pub const SVM_CPUID: u32 = 0x72;
pub const SVM_IOIO: u32 = 0x7b;

/// CPUIDs of the vmexit scenario's workload.
pub const CPUIDS: u64 = 5000;

/// Shell lines that print the `kvm_exit` records ftrace holds, counted by
/// reason name, as `@@EXITPROF <prefix>ftrace <count> <name>` (names may
/// contain spaces: `PF excp`), or with `by_pid` as `<count> <pid> <name>`,
/// plus whether the trace buffer lost events (`<prefix>lost`).
pub fn ftrace_counts_script(prefix: &str, by_pid: bool) -> String {
    let (pid, keep) = if by_pid {
        (r"^ *[^ ]*-\([0-9][0-9]*\)", r"\1 \2")
    } else {
        (".*", r"\1")
    };
    format!(
        r#"
echo "@@EXITPROF {prefix}lost $(grep -c LOST /sys/kernel/tracing/trace)"
sed -n 's/{pid} .* kvm_exit: .* reason \(.*\) rip .*/{keep}/p' /sys/kernel/tracing/trace | sort | uniq -c |
  while read -r n rest; do echo "@@EXITPROF {prefix}ftrace $n $rest"; done
"#
    )
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
            ftrace_counts_script("classic_", false),
            r#"
echo "@@EXITPROF classic_lost $(grep -c LOST /sys/kernel/tracing/trace)"
sed -n 's/.* .* kvm_exit: .* reason \(.*\) rip .*/\1/p' /sys/kernel/tracing/trace | sort | uniq -c |
  while read -r n rest; do echo "@@EXITPROF classic_ftrace $n $rest"; done
"#
        );
        assert!(ftrace_counts_script("", true).contains(
            r"sed -n 's/^ *[^ ]*-\([0-9][0-9]*\) .* kvm_exit: .* reason \(.*\) rip .*/\1 \2/p'"
        ));
    }
}
