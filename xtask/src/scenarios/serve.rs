//! `exitprof serve` inside the sandbox, where `kvm_exit` fires: part of
//! the `vmexit-ground-truth` boot (boots are expensive). A workload VM
//! runs in a loop and is killed; exitprof's own `/metrics`, fetched from
//! inside with busybox wget, must give that VM's exits per reason exactly
//! as ftrace counted its `kvm_exit` records, keep its series through the
//! grace period and drop them after it; SIGTERM must end serve with 0.
use std::collections::BTreeMap;

use anyhow::{Context as _, ensure};

use super::common::{By, Counts, ftrace_counts, ftrace_counts_script};
use crate::sandbox::Results;

/// The grace period serve runs with here, in seconds.
const GRACE_S: u32 = 2;

/// The script's part (after the vmexit scenario's own).
pub(super) fn script() -> String {
    format!(
        r#"
ifconfig lo 127.0.0.1 up
timeout 120 exitprof serve --max-age 0s --grace {GRACE_S}s > /dev/null 2> /tmp/serve.err &
SERVE=$!
i=0
while ! grep -q listening /tmp/serve.err && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo > $T/trace
echo 1 > $T/events/kvm/kvm_exit/enable
exitprof vm --cpuid 500 --pio 5 --rounds 0 --pause-ms 100 > /dev/null &
VM=$!
sleep 2
wget -q -O /tmp/m1 http://127.0.0.1:9283/metrics
echo "@@EXITPROF serve_m1_rc $?"
kill -9 $VM
wait $VM 2>/dev/null
echo 0 > $T/events/kvm/kvm_exit/enable
wget -q -O /tmp/m2 http://127.0.0.1:9283/metrics
echo "@@EXITPROF serve_m2_rc $?"
sleep {after}
wget -q -O /tmp/m3 http://127.0.0.1:9283/metrics
echo "@@EXITPROF serve_m3_rc $?"
echo "@@EXITPROF serve_vm_pid $VM"
for f in m1 m2 m3; do
  grep '^exitprof_vm_exits_total' /tmp/$f | while IFS= read -r l; do echo "@@EXITPROF serve_$f $l"; done
done
grep '^exitprof_info\|^exitprof_exits_total\|^exitprof_exit_duration_seconds_count' /tmp/m2 |
  while IFS= read -r l; do echo "@@EXITPROF serve_host $l"; done
{ftrace}kill -TERM $SERVE
wait $SERVE
echo "@@EXITPROF serve_rc $?"
while IFS= read -r l; do echo "@@EXITPROF serve_stderr $l"; done < /tmp/serve.err
"#,
        after = GRACE_S + 1,
        ftrace = ftrace_counts_script("serve_", By::Pid),
    )
}

/// The sample `name{labels} value` as (labels, value).
fn parse_sample(line: &str) -> anyhow::Result<(BTreeMap<String, String>, f64)> {
    let (series, value) = line.rsplit_once(' ').context("no value")?;
    let labels = series
        .split_once('{')
        .and_then(|(_, l)| l.strip_suffix('}'))
        .context("no labels")?;
    let mut out = BTreeMap::new();
    for pair in labels.split("\",") {
        let (k, v) = pair.split_once("=\"").context("label")?;
        out.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
    }
    Ok((out, value.parse()?))
}

/// Exits per reason name of `pid` in one scrape's `exitprof_vm_exits_total`.
fn vm_counts(results: &Results, key: &str, pid: &str) -> anyhow::Result<Counts> {
    let mut counts = Counts::new();
    for line in results.all(key) {
        let (labels, value) = parse_sample(line)?;
        if labels.get("pid").map(String::as_str) == Some(pid) {
            let name = labels.get("name").context("no name label")?.clone();
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a counter of whole exits"
            )]
            let n = value as u64;
            *counts.entry(name).or_default() += n;
        }
    }
    Ok(counts)
}

/// The assertions on what [`script`] printed.
pub(super) fn check(results: &Results) -> anyhow::Result<()> {
    for key in ["serve_m1_rc", "serve_m2_rc", "serve_m3_rc"] {
        ensure!(
            results.get(key)? == "0",
            "fetching /metrics failed ({key} {}); serve said {:?}",
            results.get(key)?,
            results.all("serve_stderr")
        );
    }
    let pid = results.get("serve_vm_pid")?;
    let truth = ftrace_counts(results, "serve_")?
        .remove(&pid.parse()?)
        .unwrap_or_default();
    let live = vm_counts(results, "serve_m1", pid)?;
    ensure!(
        live.get("cpuid").is_some_and(|n| *n > 0),
        "no cpuid series for the running VM {pid}: {live:?}"
    );
    let final_counts = vm_counts(results, "serve_m2", pid)?;
    println!("[e2e] serve: VM {pid} after kill -9: /metrics {final_counts:?}");
    ensure!(
        final_counts == truth,
        "serve's exitprof_vm_exits_total of the killed VM {pid} differ from ftrace's kvm_exit records of it: serve {final_counts:?}, ftrace {truth:?}"
    );
    let retired = vm_counts(results, "serve_m3", pid)?;
    ensure!(
        retired.is_empty(),
        "the killed VM's series are still there a second after the {GRACE_S} s grace period: {retired:?}"
    );
    let host = results.all("serve_host");
    ensure!(
        host.iter().any(|l| l.starts_with("exitprof_info{")
            && l.contains(r#"backend="svm""#)
            && l.contains(r#"vmexit_available="true""#)),
        "no svm info metric: {host:?}"
    );
    let cpuid_total = host
        .iter()
        .filter(|l| l.starts_with("exitprof_exits_total{") && l.contains(r#"name="cpuid""#))
        .map(|l| parse_sample(l).map(|(_, v)| v))
        .next()
        .context("no host-wide cpuid exits")??;
    #[expect(clippy::cast_precision_loss, reason = "a count of exits")]
    let vm_cpuid = final_counts.get("cpuid").copied().unwrap_or(0) as f64;
    ensure!(
        cpuid_total >= vm_cpuid,
        "host-wide cpuid exits {cpuid_total} < the VM's {vm_cpuid}"
    );
    ensure!(
        host.iter()
            .any(|l| l.starts_with("exitprof_exit_duration_seconds_count{")
                && l.contains(r#"name="cpuid""#)),
        "no cpuid duration histogram: {host:?}"
    );
    ensure!(
        results.get("serve_rc")? == "0",
        "exitprof serve ended with {} after SIGTERM (124: it hung)",
        results.get("serve_rc")?
    );
    println!(
        "[e2e] serve: PASS (a killed VM's exits per reason in /metrics equal ftrace's, series gone after the {GRACE_S} s grace period, SIGTERM exits 0)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse() {
        let (labels, v) = parse_sample(
            r#"exitprof_vm_exits_total{pid="42",vm="exitprof",isa="svm",reason="0x72",name="cpuid"} 500"#,
        )
        .unwrap();
        assert_eq!(labels["pid"], "42");
        assert_eq!(labels["name"], "cpuid");
        assert!((v - 500.0).abs() < f64::EPSILON);
    }
}
