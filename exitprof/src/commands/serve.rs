//! `exitprof serve`: a Prometheus exporter. The programs stay attached;
//! each `/metrics` request reads the maps (unless a readout younger than
//! `--max-age` can answer it), adds the readout to the exporter's running
//! totals and answers in OpenMetrics or Prometheus' text format. Nothing
//! runs between requests. SIGTERM or SIGINT detaches every program and
//! exits 0.
use std::{
    io::ErrorKind,
    net::SocketAddr,
    process::ExitCode,
    sync::{Arc, Mutex, PoisonError, atomic::Ordering},
    time::{Duration, Instant},
};

use hyper::body::Bytes;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    bpf::{Filter, LoadError, Options, Profiler},
    cli::{parse_duration, parse_live_pid},
    host::{procfs, vmname},
    http::{self, Counters, Limits, Request, Response},
    present::metrics::{Cost, Exporter, Fixed, Format, Processes, Rules},
};

/// Arguments of `exitprof serve`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  sudo exitprof serve                              every VM, on http://127.0.0.1:9283/metrics
  sudo exitprof serve --by-vcpu --grace 5m         per-vCPU series, kept 5 minutes after a VM ends
  sudo exitprof serve --listen 10.0.0.5:9283       reachable from other machines (say so explicitly)
  curl -s localhost:9283/metrics | promtool check metrics

Prometheus (prometheus.yml):
  scrape_configs:
    - job_name: exitprof
      static_configs: [{targets: ['127.0.0.1:9283']}]")]
pub struct ServeArgs {
    /// Address to listen on. Loopback by default: give another address
    /// to let other machines scrape (the metrics tell what every VM on
    /// the host does).
    #[arg(long, default_value = "127.0.0.1:9283", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Count only this process (and its children from now on); repeatable.
    /// Unlike `stat` and `top`, a process that holds no VM yet is taken:
    /// children it starts later are counted.
    #[arg(short, long = "pid", value_name = "PID", value_parser = parse_live_pid)]
    pub pids: Vec<u32>,
    /// VM series per vCPU too (a series per VM, vCPU and reason).
    #[arg(long)]
    pub by_vcpu: bool,
    /// Handler-event keys (CPUID leaves, ports, MMIO addresses, MSRs,
    /// hypercalls) with a series of their own, per kind: the N with the
    /// most events; the others add up in a series labelled `other`.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub top_keys: usize,
    /// How long a VM's series stay after its process is gone.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub grace: Duration,
    /// A readout of the maps answers requests for at most this long
    /// (several Prometheus servers then cost one readout).
    /// (0 reads the maps for every request.)
    #[arg(long, default_value = "1s", value_parser = parse_age)]
    pub max_age: Duration,
    /// Connections served at once; more are closed at once.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_connections: u16,
    /// `--attach`, `--in-flight`, `--guest-mirror`.
    #[command(flatten)]
    pub kvm: super::KvmArgs,
    /// Also export each eBPF program's runs and time (kernel BPF
    /// statistics, which add two clock reads to every program run).
    #[arg(long)]
    pub cost: bool,
    /// Load test of exitprof itself: synthetic per-vCPU keys for this many
    /// VMs (pids from 4,000,000, counted as running).
    #[arg(long, hide = true, value_name = "VMS")]
    pub load_test_vms: Option<u32>,
    /// vCPUs of each load-test VM (× 30 reasons each).
    #[arg(long, hide = true, default_value_t = 4, value_name = "VCPUS")]
    pub load_test_vcpus: u32,
    /// Synthetic per-vCPU keys for this real process, whose end retires
    /// them (testing retirement where `kvm_exit` never fires).
    #[arg(long, hide = true, value_name = "PID")]
    pub load_test_pid: Vec<u32>,
}

/// A duration, or zero (`0`, `0s`, `0ms`).
fn parse_age(text: &str) -> Result<Duration, String> {
    let digits = text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if !digits.is_empty() && digits.bytes().all(|b| b == b'0') {
        return Ok(Duration::ZERO);
    }
    parse_duration(text)
}

/// First pid of the load test's synthetic VMs.
const SYNTHETIC_PID: u32 = 4_000_000;

/// Runs `exitprof serve`.
///
/// # Errors
/// Loading, attaching or listening fails; each error says why.
pub fn main(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    // Listen first: a taken port fails before anything is attached.
    let listener = std::net::TcpListener::bind(args.listen).map_err(|e| {
        let why = match e.kind() {
            ErrorKind::AddrInUse => {
                "it is in use: is another exporter running there? (pick another port with --listen)"
                    .to_owned()
            }
            ErrorKind::AddrNotAvailable => {
                "no interface of this machine has that address".to_owned()
            }
            ErrorKind::PermissionDenied => {
                "ports below 1024 need root or CAP_NET_BIND_SERVICE".to_owned()
            }
            _ => e.to_string(),
        };
        anyhow::anyhow!("cannot listen on {}: {why}", args.listen)
    })?;
    let filter = if args.pids.is_empty() {
        Filter::All
    } else {
        Filter::Tracked(args.pids.clone())
    };
    let mut profiler = Profiler::start(&Options {
        filter,
        breakdown: true,
        map_entries: None,
        cost: args.cost,
        attach: args.kvm.attach,
        in_flight: args.kvm.in_flight,
        sites: false,
        mirror: args.kvm.guest_mirror,
    })?;
    let synthetic: Vec<u32> = (0..args.load_test_vms.unwrap_or(0))
        .map(|i| SYNTHETIC_PID + i)
        .collect();
    profiler.fill_vms_for_load_test(&synthetic, args.load_test_vcpus)?;
    profiler.fill_vms_for_load_test(&args.load_test_pid, 1)?;
    listener.set_nonblocking(true)?;
    let counters = Arc::new(Counters::default());
    let scraper = Arc::new(Mutex::new(Scraper::new(
        profiler,
        args,
        synthetic,
        Arc::clone(&counters),
    )));
    let limits = Limits {
        max_connections: usize::from(args.max_connections),
        header_timeout: Duration::from_secs(5),
        connection_timeout: Duration::from_secs(10),
        max_header_bytes: 8192,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handler_scraper = Arc::clone(&scraper);
    let served = runtime.block_on(async move {
        // Signals first: a SIGTERM right after the address is printed
        // must detach and exit 0, not kill.
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let scope = if args.pids.is_empty() {
            "every VM".to_owned()
        } else {
            format!("pid {:?} and children", args.pids)
        };
        eprintln!("exitprof serve: listening on http://{addr}/metrics ({scope})");
        if !addr.ip().is_loopback() {
            eprintln!(
                "exitprof serve: note: {addr} is not loopback: other machines can read what every VM on this host does"
            );
        }
        let handler = move |request: &Request| answer(&handler_scraper, request);
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
        };
        http::serve(listener, limits, counters, handler, shutdown).await;
        anyhow::Ok(())
    });
    // Connections still in progress hold the handler: drop them with the
    // runtime, then the profiler with the last reference (detaching).
    drop(runtime);
    drop(scraper);
    served?;
    eprintln!("exitprof serve: stopped; every program detached");
    Ok(ExitCode::SUCCESS)
}

/// The answer to one request.
fn answer(scraper: &Mutex<Scraper>, request: &Request) -> Response {
    match request.path {
        "/metrics" => {
            let format = Format::negotiate(request.accept);
            let mut scraper = scraper.lock().unwrap_or_else(PoisonError::into_inner);
            match scraper.metrics(format) {
                Ok(body) => Response {
                    status: 200,
                    content_type: format.content_type(),
                    body,
                },
                Err(e) => {
                    log::error!("reading the maps failed: {e}");
                    Response::text(
                        500,
                        "exitprof: reading the eBPF maps failed (see its log)\n",
                    )
                }
            }
        }
        "/" => Response::text(200, "exitprof exporter: metrics at /metrics\n"),
        _ => Response::text(404, "not found: metrics are at /metrics\n"),
    }
}

/// The VM's name for the `vm` label: from its VMM's command line (QEMU
/// `-name`, Firecracker `--id`, ...), or its process name.
fn vm_name(pid: u32) -> String {
    vmname::vm_name(pid).unwrap_or_default()
}

/// Processes as `/proc` sees them, and the load test's synthetic VMs.
struct Host<'a> {
    synthetic: &'a [u32],
}

impl Processes for Host<'_> {
    fn alive(&self, pid: u32) -> bool {
        self.synthetic.contains(&pid) || procfs::alive(pid)
    }

    fn name(&self, pid: u32) -> String {
        if self.synthetic.contains(&pid) {
            format!("load-test-{}", pid - SYNTHETIC_PID)
        } else {
            vm_name(pid)
        }
    }
}

/// The profiler, the exporter, and the latest readout's answers.
struct Scraper {
    profiler: Profiler,
    exporter: Exporter,
    started: Instant,
    max_age: Duration,
    synthetic: Vec<u32>,
    counters: Arc<Counters>,
    /// When the latest readout was taken.
    read_at: Option<Instant>,
    /// Its answer in each format, once rendered.
    rendered: [Option<Bytes>; 2],
    cost: Cost,
}

impl Scraper {
    fn new(
        profiler: Profiler,
        args: &ServeArgs,
        synthetic: Vec<u32>,
        counters: Arc<Counters>,
    ) -> Self {
        let exporter = Exporter::new(
            Fixed {
                version: env!("CARGO_PKG_VERSION"),
                scope: if args.pids.is_empty() { "all" } else { "pids" },
                top_keys: args.top_keys,
            },
            Rules {
                top_keys: args.top_keys,
                grace: args.grace,
                by_vcpu: args.by_vcpu,
            },
        );
        Self {
            profiler,
            exporter,
            started: Instant::now(),
            max_age: args.max_age,
            synthetic,
            counters,
            read_at: None,
            rendered: [None, None],
            cost: Cost::default(),
        }
    }

    /// The metrics in `format`, from a readout at most `max_age` old.
    fn metrics(&mut self, format: Format) -> Result<Bytes, LoadError> {
        let started = Instant::now();
        if self.read_at.is_none_or(|at| at.elapsed() >= self.max_age) {
            let snapshot = self.profiler.snapshot()?;
            self.cost.readouts += 1;
            self.cost.readout_ns += nanos(started.elapsed());
            let host = Host {
                synthetic: &self.synthetic,
            };
            let retired = self
                .exporter
                .update(&snapshot, self.started.elapsed(), &host);
            if !retired.is_empty()
                && let Err(e) = self.profiler.forget_processes(&retired)
            {
                log::warn!("deleting the map entries of ended VMs {retired:?} failed: {e}");
            }
            self.read_at = Some(Instant::now());
            self.rendered = [None, None];
        }
        let slot = usize::from(format == Format::Text);
        let body = if let Some(body) = &self.rendered[slot] {
            body.clone()
        } else {
            let (cpu_seconds, rss_bytes) = procfs::own_usage().unwrap_or_default();
            self.exporter.set_cost(Cost {
                http_rejected: self.counters.rejected.load(Ordering::Relaxed),
                http_errors: self.counters.errors.load(Ordering::Relaxed),
                cpu_seconds,
                rss_bytes,
                ..self.cost
            });
            let body = Bytes::from(self.exporter.render(format));
            self.rendered[slot] = Some(body.clone());
            body
        };
        self.cost.scrapes += 1;
        self.cost.scrape_ns += nanos(started.elapsed());
        Ok(body)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_may_be_zero() {
        assert_eq!(parse_age("0"), Ok(Duration::ZERO));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_age("00ms"), Ok(Duration::ZERO));
        assert_eq!(parse_age("1s"), Ok(Duration::from_secs(1)));
        assert!(parse_age("s").is_err());
        assert!(parse_age("soon").is_err());
    }
}
