//! `exitprof serve` for real: against real BPF and the real `/dev/kvm`,
//! scraped by a real Prometheus (Debian's 2.42, `cargo xtask setup`
//! installs it) and checked with its `promtool`, run without root with
//! the systemd unit's capabilities, and stopped with SIGTERM.
mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::sleep,
    time::{Duration, Instant},
};

use common::{EXITPROF, can_profile};
use serde_json::Value;

/// A child process killed (and reaped) when the test ends, however.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `exitprof serve`: its address and what it printed.
struct Serve {
    child: Killed,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

/// Starts `exitprof serve ARGS` (on an ephemeral loopback port unless
/// ARGS say `--listen`) through `wrap` (e.g. setpriv), and waits until
/// it listens; `Err` with its stderr when it exits first.
fn try_serve(wrap: &[&str], args: &[&str]) -> Result<Serve, String> {
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(EXITPROF);
            c
        }
        None => Command::new(EXITPROF),
    };
    cmd.arg("serve");
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    let mut child = cmd
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exitprof serve starts");
    let stderr = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let pipe = child.stderr.take().expect("piped");
    let sink = Arc::clone(&stderr);
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.split('/').next().unwrap_or("").to_owned());
            }
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    if let Ok(addr) = rx.recv_timeout(Duration::from_secs(30)) {
        return Ok(Serve {
            child: Killed(child),
            addr: addr.parse().expect("an address"),
            stderr,
        });
    }
    let _ = child.kill();
    let _ = child.wait();
    sleep(Duration::from_millis(100));
    Err(stderr.lock().unwrap().clone())
}

fn serve(args: &[&str]) -> Serve {
    try_serve(&[], args).unwrap_or_else(|e| panic!("exitprof serve did not start:\n{e}"))
}

/// One HTTP/1.0 GET (the server closes, no chunking): status, headers,
/// body.
fn get(addr: SocketAddr, target: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connects");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let accept = accept.map_or_else(String::new, |a| format!("Accept: {a}\r\n"));
    write!(s, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("a response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

fn metrics(addr: SocketAddr) -> String {
    let (status, head, body) = get(addr, "/metrics", None);
    assert_eq!(status, 200, "{head}\n{body}");
    body
}

/// The value of the sample written exactly `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

/// A Debian tool the test needs (`cargo xtask setup` installs it):
/// `None` and a loud skip without it, a failure under `CI=true`.
fn tool(path: &str, test: &str) -> Option<PathBuf> {
    if Path::new(path).exists() {
        return Some(PathBuf::from(path));
    }
    let why = format!("{test} needs {path}: run `cargo xtask setup`");
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    eprintln!("SKIPPED: {why}");
    None
}

fn workload(args: &[&str]) -> Value {
    let out = Command::new(EXITPROF)
        .arg("vm")
        .args(args)
        .arg("--json")
        .output()
        .expect("exitprof vm runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the workload's report")
}

/// Polls `f` every 200 ms until it gives `Some`, for at most `limit`.
fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        sleep(Duration::from_millis(200));
    }
}

/// A leaf no other test and no real guest uses, so that its series is
/// the workload's.
const LEAF: &str = "0x4242c0de";
const LEAF_LABEL: &str = r#"leaf="0x4242c0de",subleaf="0x0""#;

/// Percent-encoding for a URL's query.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Debian's Prometheus on 127.0.0.1, scraping `target` every second.
struct Prometheus {
    _child: Killed,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    fn start(binary: &Path, target: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("exitprof-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: exitprof\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // A free port for its web API.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus starts");
        let prometheus = Self {
            _child: Killed(child),
            addr,
            dir,
        };
        let ready = wait_for(Duration::from_mins(1), || {
            TcpStream::connect(addr).ok()?;
            (get(addr, "/-/ready", None).0 == 200).then_some(())
        });
        assert!(
            ready.is_some(),
            "prometheus did not get ready: {}",
            std::fs::read_to_string(prometheus.dir.join("prometheus.log")).unwrap_or_default()
        );
        prometheus
    }

    /// The `result` of an instant query, at `time` (seconds) or now.
    fn query(&self, expr: &str, time: Option<&str>) -> Vec<Value> {
        let at = time.map_or_else(String::new, |t| format!("&time={t}"));
        let (status, _, body) = get(
            self.addr,
            &format!("/api/v1/query?query={}{at}", encode(expr)),
            None,
        );
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(status, 200, "{expr}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value of an instant query, as a whole number (counts
    /// are compared exactly), if it has one.
    fn count(&self, expr: &str, time: Option<&str>) -> Option<u64> {
        let result = self.query(expr, time);
        let text = result.first()?["value"][1].as_str()?.to_owned();
        Some(
            text.parse()
                .unwrap_or_else(|_| panic!("{expr} = {text}, not a whole number")),
        )
    }

    /// The single value of an instant query, whatever it is.
    fn value(&self, expr: &str, time: Option<&str>) -> Option<String> {
        let result = self.query(expr, time);
        Some(result.first()?["value"][1].as_str()?.to_owned())
    }
}

/// The acceptance test of the exporter: Prometheus scrapes it every
/// second while the workload VM does exactly 2 × 1000 CPUIDs, and its API
/// gives the workload's counts exactly; a killed VM's series are gone
/// after the grace period.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one Prometheus run, its steps in order"
)]
fn prometheus_sees_exact_counts_and_a_killed_vm_go() {
    let Some(_serial) = can_profile("prometheus_sees_exact_counts_and_a_killed_vm_go") else {
        return;
    };
    let Some(binary) = tool("/usr/bin/prometheus", "prometheus_sees_exact_counts") else {
        return;
    };
    // A VM to kill. This host's KVM may not emit kvm_exit (PVM), so its
    // per-vCPU rows are synthetic keys for its real pid: its death, seen
    // in /proc, retires them as it would real ones.
    let doomed = Killed(
        Command::new(EXITPROF)
            .args(["vm", "--cpuid", "10", "--rounds", "0", "--pause-ms", "100"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let doomed_pid = doomed.0.id().to_string();
    // The counted workload: a shell that waits for a line, then becomes
    // the workload VM (exec keeps its pid, the one serve counts). Two
    // rounds: the first reveals the leaf (its events count under
    // leaf="other", and the leaf gets a series of its own, from 0), the
    // second counts in that series.
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "read _ && exec {EXITPROF} vm --cpuid 1000 --cpuid-leaf {LEAF} --rounds 2 --pause-ms 3000 --json"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let holder_pid = holder.id().to_string();
    let serve = serve(&[
        "--pid",
        &holder_pid,
        "--load-test-pid",
        &doomed_pid,
        "--grace",
        "3s",
    ]);
    let prometheus = Prometheus::start(&binary, serve.addr);
    let other = r#"exitprof_cpuid_events_total{leaf="other"}"#;
    assert_eq!(
        wait_for(Duration::from_secs(30), || prometheus.count(other, None)),
        Some(0),
        "Prometheus never scraped exitprof: {}",
        serve.stderr.lock().unwrap()
    );
    let doomed_series = format!(r#"count(exitprof_vm_exits_total{{pid="{doomed_pid}"}})"#);
    assert_eq!(prometheus.count(&doomed_series, None), Some(30));

    holder.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = holder.wait_with_output().unwrap();
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["pid"].to_string(), holder_pid, "exec kept the pid");
    assert_eq!(report["rounds"], 2);
    // The raw counters: every CPUID of the workload's pid, once.
    let total = "sum(exitprof_cpuid_events_total)";
    assert_eq!(
        wait_for(Duration::from_secs(20), || prometheus
            .count(total, None)
            .filter(|v| *v == 2000)),
        Some(2000),
        "Prometheus holds {:?} CPUIDs of pid {holder_pid}",
        prometheus.count(total, None)
    );
    // increase() extrapolates a range's first and last samples to the
    // range's edges. Evaluated at the timestamp of the latest scrape there
    // is nothing to extrapolate at the end, and at the start every series
    // begins at 0 (the leaf's own series starts at 0 by design, `other`
    // is there at 0 before the first event), where Prometheus stops
    // extrapolating. So increase() is the counters' exact difference.
    let latest = prometheus.query(&format!("{other}[1m]"), None);
    let values = latest[0]["values"].as_array().unwrap();
    let at = values.last().unwrap()[0].as_f64().unwrap();
    let at = format!("{at:.3}");
    let increase = |expr: &str, at: &str| prometheus.count(expr, Some(at));
    assert_eq!(
        increase("sum(increase(exitprof_cpuid_events_total[2m]))", &at),
        Some(2000),
        "increase() over every series of pid {holder_pid}"
    );
    let leaf = format!("increase(exitprof_cpuid_events_total{{{LEAF_LABEL}}}[2m])");
    assert_eq!(
        increase(&leaf, &at),
        Some(1000),
        "the leaf's own series holds the second round"
    );
    // Between scrapes, the same query is extrapolated (so not exact): shown
    // for the record, not judged.
    let between = format!("{:.3}", at.parse::<f64>().unwrap() + 0.5);
    println!(
        "increase() at the latest scrape: {:?}; 0.5 s later (extrapolated): {:?}",
        prometheus.value(&leaf, Some(&at)),
        prometheus.value(&leaf, Some(&between))
    );

    // Kill the VM: its series stay for the grace period (3 s), then go.
    drop(doomed);
    let killed = Instant::now();
    sleep(Duration::from_millis(1500));
    assert_eq!(
        prometheus.count(&doomed_series, None),
        Some(30),
        "gone before the grace period ended"
    );
    let gone = wait_for(Duration::from_secs(15), || {
        prometheus
            .query(
                &format!(r#"exitprof_vm_exits_total{{pid="{doomed_pid}"}}"#),
                None,
            )
            .is_empty()
            .then(Instant::now)
    })
    .expect("the killed VM's series never went");
    let after = gone.duration_since(killed);
    assert!(after >= Duration::from_secs(3), "gone after {after:?}");
    assert!(!metrics(serve.addr).contains(&format!(r#"pid="{doomed_pid}""#)));
    println!("the killed VM's series went {after:?} after the kill (grace 3 s, scrapes every 1 s)");
}

/// Metric names used by the Grafana dashboard's queries.
fn dashboard_names() -> (Vec<String>, Vec<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    collect_queries(&dashboard, &mut queries);
    assert!(queries.len() > 10, "{queries:?}");
    let name = regex_lite::Regex::new(r"\b(?:exitprof|process)_[a-z0-9_]+").unwrap();
    let by = regex_lite::Regex::new(r"\b(?:by|without) \(([^)]*)\)").unwrap();
    let mut names = Vec::new();
    let mut labels = Vec::new();
    for q in &queries {
        names.extend(name.find_iter(q).map(|m| m.as_str().to_owned()));
        for c in by.captures_iter(q) {
            labels.extend(c[1].split(',').map(|l| l.trim().to_owned()));
        }
    }
    (names, labels)
}

fn collect_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(q)) => out.push(q.clone()),
                    _ => collect_queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_queries(v, out)),
        _ => {}
    }
}

/// Names and label names of the samples of a text-format scrape.
fn served(text: &str) -> (Vec<String>, Vec<String>) {
    let mut names = Vec::new();
    let mut labels = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            // A family is served even before it has samples (no VM exits
            // on a PVM host): its samples' names.
            let (name, kind) = rest.split_once(' ').unwrap();
            names.push(name.to_owned());
            if kind == "histogram" {
                names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
            }
        } else if !line.starts_with('#') {
            let (name, rest) = line.split_once(['{', ' ']).unwrap();
            names.push(name.to_owned());
            if let Some(set) = rest.split_once('}').map(|(s, _)| s) {
                labels.extend(
                    set.split(',')
                        .filter_map(|l| Some(l.split_once('=')?.0.to_owned())),
                );
            }
        }
    }
    (names, labels)
}

#[test]
fn serve_speaks_both_formats_promtool_agrees_and_the_dashboard_fits() {
    let Some(_serial) = can_profile("serve_speaks_both_formats") else {
        return;
    };
    let Some(promtool) = tool("/usr/bin/promtool", "serve_speaks_both_formats") else {
        return;
    };
    let serve = serve(&["--by-vcpu", "--load-test-vms", "2"]);
    workload(&[
        "--cpuid", "100", "--pio", "10", "--mmio", "10", "--msr", "5", "--hlt", "2",
    ]);
    // Twice: the second time every handler-event key has its own series.
    metrics(serve.addr);
    sleep(Duration::from_millis(1100));
    workload(&["--cpuid", "100", "--cpuid-leaf", LEAF]);
    sleep(Duration::from_millis(1100));
    let (status, head, text) = get(serve.addr, "/metrics", None);
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let om = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (status, head, open_metrics) = get(serve.addr, "/metrics", Some(om));
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(open_metrics.ends_with("# EOF\n"));
    // Synthetic: vCPU 3's reason 0x60 of the second load-test VM holds
    // 3 + 0 + 1 exits on each possible CPU (see `fill_vms_for_load_test`).
    let synthetic = format!(
        r#"exitprof_vm_exits_total{{pid="4000001",vm="load-test-1",vcpu="3",isa="svm",reason="0x60",name="interrupt"}} {}"#,
        4 * possible_cpus()
    );
    for needle in [
        "# TYPE exitprof info\n",
        "# TYPE exitprof_vm_exits counter\n",
        &synthetic,
        &format!("exitprof_cpuid_events_total{{{LEAF_LABEL}}} 0"),
    ] {
        assert!(open_metrics.contains(needle), "{needle}:\n{open_metrics}");
    }
    assert!(text.contains("exitprof_info{version=\""), "{text}");
    // Every metric and grouping label of the dashboard is served.
    let (used, used_labels) = dashboard_names();
    let (names, mut labels) = served(&text);
    labels.extend(["instance", "job", "le"].map(String::from));
    for name in &used {
        assert!(
            names.contains(name),
            "the dashboard uses {name}, which is not served"
        );
    }
    for label in &used_labels {
        assert!(
            labels.contains(label),
            "the dashboard groups by {label}, which no series has"
        );
    }
    // Other paths and methods.
    assert_eq!(get(serve.addr, "/", None).0, 200);
    assert_eq!(get(serve.addr, "/nope", None).0, 404);
    // Idle, it does nothing: no readouts without requests.
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", serve.child.0.id())).unwrap();
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let before = ticks();
    sleep(Duration::from_secs(3));
    let idle = ticks() - before;
    assert!(idle <= 1, "{idle} ticks of CPU in 3 s without a request");
}

/// The number of possible CPUs (`/sys/devices/system/cpu/possible`:
/// `0-N`, or `0`).
fn possible_cpus() -> u64 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    text.trim()
        .split(',')
        .map(|range| match range.split_once('-') {
            Some((a, b)) => b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// The programs `pid` holds: the `prog_id` of each of its bpf fds.
fn program_ids(pid: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        ids.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u32>().ok()),
        );
    }
    ids
}

#[test]
fn serve_detaches_every_program_on_sigterm_and_exits_0() {
    let Some(_serial) = can_profile("serve_detaches_every_program_on_sigterm") else {
        return;
    };
    let mut serve = serve(&[]);
    let ids = program_ids(serve.child.0.id());
    assert!(ids.len() >= 6, "{ids:?}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(serve.child.0.id().cast_signed(), libc::SIGTERM) };
    let status = serve.child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", serve.stderr.lock().unwrap());
    sleep(Duration::from_millis(200));
    assert!(
        serve
            .stderr
            .lock()
            .unwrap()
            .contains("stopped; every program detached")
    );
    let alive: Vec<u32> = ids
        .into_iter()
        .filter(|id| {
            // The kernel frees a raw tracepoint's link after an RCU grace
            // period: give it a moment.
            wait_for(Duration::from_secs(5), || {
                let shown = Command::new("bpftool")
                    .args(["prog", "show", "id", &id.to_string()])
                    .output()
                    .unwrap();
                (!shown.status.success()).then_some(())
            })
            .is_none()
        })
        .collect();
    assert!(alive.is_empty(), "programs still loaded: {alive:?}");
}

/// The capabilities the systemd unit grants (`AmbientCapabilities=`),
/// checked equal to its bounding set.
fn unit_capabilities() -> (String, Vec<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/exitprof-serve.service");
    let unit = std::fs::read_to_string(path).unwrap();
    let list = |key: &str| -> Vec<String> {
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("the unit has no {key}"));
        line.split_whitespace().map(String::from).collect()
    };
    let caps = list("AmbientCapabilities=");
    assert_eq!(caps, list("CapabilityBoundingSet="));
    (unit, caps)
}

#[test]
fn serve_runs_without_root_with_the_units_capabilities_and_no_fewer() {
    let Some(_serial) = can_profile("serve_runs_without_root") else {
        return;
    };
    let (unit, caps) = unit_capabilities();
    let Some(analyze) = tool("/usr/bin/systemd-analyze", "serve_runs_without_root") else {
        return;
    };
    // The unit as systemd reads it, with this binary in ExecStart.
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let (program, args) = exec.split_once(' ').unwrap();
    let dir = std::env::temp_dir().join(format!("exitprof-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("exitprof-serve.service");
    std::fs::write(&copy, unit.replace(program, EXITPROF)).unwrap();
    let verified = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        verified.status.success() && verified.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let setpriv = |caps: &[String]| -> Vec<String> {
        let list: Vec<String> = caps
            .iter()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        let list = format!("-all,{}", list.join(","));
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ]
        .into_iter()
        .map(String::from)
        .chain([
            format!("--inh-caps={list}"),
            format!("--ambient-caps={list}"),
            format!("--bounding-set={list}"),
        ])
        .collect()
    };
    // The unit's own arguments, on an ephemeral port.
    let mut args: Vec<&str> = args.split_whitespace().collect();
    let listen = args.iter().position(|a| *a == "--listen").unwrap();
    args[listen + 1] = "127.0.0.1:0";
    let wrap = setpriv(&caps);
    let wrap: Vec<&str> = wrap.iter().map(String::as_str).collect();
    let serve = try_serve(&wrap, &args[1..])
        .unwrap_or_else(|e| panic!("serve with {caps:?} as nobody did not start:\n{e}"));
    let uid = std::fs::read_to_string(format!("/proc/{}/status", serve.child.0.id())).unwrap();
    assert!(uid.lines().any(|l| l.starts_with("Uid:\t65534")), "{uid}");
    workload(&["--cpuid", "7", "--cpuid-leaf", LEAF]);
    metrics(serve.addr);
    sleep(Duration::from_millis(1100));
    workload(&["--cpuid", "7", "--cpuid-leaf", LEAF]);
    sleep(Duration::from_millis(1100));
    let text = metrics(serve.addr);
    let series = format!("exitprof_cpuid_events_total{{{LEAF_LABEL}}}");
    assert_eq!(sample(&text, &series), Some(7.0), "{text}");
    drop(serve);
    // And not with one fewer.
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let wrap = setpriv(&fewer);
        let wrap: Vec<&str> = wrap.iter().map(String::as_str).collect();
        let Err(err) = try_serve(&wrap, &args[1..]) else {
            panic!("serve started without {missing}");
        };
        assert_eq!(err.lines().count(), 1, "without {missing}: {err}");
        println!("without {missing}: {}", err.trim_end());
    }
}
