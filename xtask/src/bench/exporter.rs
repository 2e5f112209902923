//! The exporter's cost: `exitprof serve` with 64 VMs × 4 vCPUs × 30
//! reasons of keys in its per-vCPU map (synthetic: this host's KVM emits
//! no `kvm_exit`), scraped as Prometheus scrapes it. Per configuration
//! (per VM, and `--by-vcpu`): the time a scrape takes as the scraper sees
//! it, the exporter's CPU time per scrape and while idle, its RSS, and
//! the bytes of a scrape in both formats.
use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::types::median;

/// The exporter, killed if a measurement fails half way.
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        // A no-op once it has been waited for.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The load: VMs, vCPUs each (× 30 reasons each).
const VMS: u32 = 64;
const VCPUS: u32 = 4;

/// What Prometheus 2.42 asks for.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The scrape interval the target is judged at.
pub(super) const INTERVAL_S: f64 = 15.0;

/// One scrape: seconds from connecting to the last byte, and the body.
fn scrape(addr: SocketAddr, accept: Option<&str>) -> anyhow::Result<(f64, String)> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let accept = accept.map_or_else(String::new, |a| format!("Accept: {a}\r\n"));
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}\r\n")?;
    // Big reads: xtask is a debug build, and `read_to_end`'s small first
    // reads cost more there than the exporter's whole answer.
    let mut raw = Vec::with_capacity(4 << 20);
    let mut chunk = vec![0_u8; 1 << 20];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
    }
    let took = started.elapsed().as_secs_f64();
    let raw = String::from_utf8(raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("scrape failed: {head}");
    }
    Ok((took, body.to_owned()))
}

/// CPU time of every thread of `pid`, in nanoseconds (schedstat).
fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = fs::read_to_string(task?.path().join("schedstat"))?;
        total += stat
            .split_whitespace()
            .next()
            .context("schedstat")?
            .parse::<u64>()?;
    }
    Ok(total)
}

/// `VmRSS` and `VmHWM` of `pid`, in MB.
fn memory_mb(pid: u32) -> anyhow::Result<(f64, f64)> {
    #[expect(clippy::cast_precision_loss, reason = "kB")]
    let field = |name: &str| -> anyhow::Result<f64> {
        Ok(
            crate::util::status_kb(pid, name).with_context(|| format!("no {name} of {pid}"))?
                as f64
                / 1024.0,
        )
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Measures one configuration.
fn measure(exitprof: &Path, by_vcpu: bool, scrapes: usize, idle_s: u64) -> anyhow::Result<Value> {
    let vms = VMS.to_string();
    let vcpus = VCPUS.to_string();
    let mut cmd = Command::new(exitprof);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--max-age",
        "0s",
        "--load-test-vms",
        &vms,
        "--load-test-vcpus",
        &vcpus,
    ]);
    if by_vcpu {
        cmd.arg("--by-vcpu");
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting exitprof serve")?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut serve = Serve(child);
    let pid = serve.0.id();
    let mut lines = BufReader::new(stderr).lines();
    let addr: SocketAddr = loop {
        let line = lines
            .next()
            .context("exitprof serve ended before listening")??;
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split('/').next().unwrap_or("").parse()?;
        }
    };
    // The first readout creates every series.
    let (_, text) = scrape(addr, None)?;
    let (_, open_metrics) = scrape(addr, Some(PROMETHEUS_ACCEPT))?;
    let series = open_metrics.lines().filter(|l| !l.starts_with('#')).count();
    let idle_from = cpu_ns(pid)?;
    let idle_started = Instant::now();
    sleep(Duration::from_secs(idle_s));
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds")]
    let idle_cpu_share =
        (cpu_ns(pid)? - idle_from) as f64 / 1e9 / idle_started.elapsed().as_secs_f64();
    let own = |text: &str| -> anyhow::Result<(f64, f64)> {
        let value = |name: &str| -> anyhow::Result<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .with_context(|| format!("no {name} in the scrape"))?
                .parse()
                .map_err(Into::into)
        };
        Ok((
            value("exitprof_scrape_seconds_total")?,
            value("exitprof_scrapes_total")?,
        ))
    };
    let (seconds_before, scrapes_before) = own(&scrape(addr, None)?.1)?;
    let mut times = Vec::new();
    let from = cpu_ns(pid)?;
    for _ in 0..scrapes {
        times.push(scrape(addr, Some(PROMETHEUS_ACCEPT))?.0 * 1e3);
        // Not back to back: a scraper's connections come one at a time.
        sleep(Duration::from_millis(20));
    }
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds")]
    let cpu_ms_per_scrape = (cpu_ns(pid)? - from) as f64 / 1e6 / scrapes as f64;
    let (rss_mb, peak_rss_mb) = memory_mb(pid)?;
    // Its own count of the time it spent answering (readout, totals,
    // encoding), which is what a scrape costs without the network and
    // the scraper.
    let (seconds_after, scrapes_after) = own(&scrape(addr, None)?.1)?;
    let server_ms_per_scrape =
        (seconds_after - seconds_before) * 1e3 / (scrapes_after - scrapes_before);
    crate::util::run(Command::new("kill").args(["-TERM", &pid.to_string()]))?;
    let status = serve.0.wait()?;
    if !status.success() {
        bail!("exitprof serve exited {status} after SIGTERM");
    }
    let max_ms = times.iter().copied().fold(0.0, f64::max);
    let cpu_percent = (cpu_ms_per_scrape / 1e3 + idle_cpu_share * INTERVAL_S) / INTERVAL_S * 100.0;
    Ok(json!({
        "by_vcpu": by_vcpu,
        "series": series,
        "bytes_openmetrics": open_metrics.len(),
        "bytes_text": text.len(),
        "scrapes": scrapes,
        "scrape_ms_median": median(times),
        "scrape_ms_max": max_ms,
        "server_ms_per_scrape": server_ms_per_scrape,
        "cpu_ms_per_scrape": cpu_ms_per_scrape,
        "idle_cpu_percent": idle_cpu_share * 100.0,
        "cpu_percent_at_15s": cpu_percent,
        "rss_mb": rss_mb,
        "peak_rss_mb": peak_rss_mb,
    }))
}

/// Both configurations.
pub(super) fn exporter(exitprof: &Path, scrapes: usize, idle_s: u64) -> anyhow::Result<Value> {
    let configs = [false, true]
        .into_iter()
        .map(|by_vcpu| measure(exitprof, by_vcpu, scrapes, idle_s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(json!({
        "vms": VMS, "vcpus": VCPUS, "reasons": 30, "keys": VMS * VCPUS * 30,
        "interval_s": INTERVAL_S, "configs": configs,
    }))
}
