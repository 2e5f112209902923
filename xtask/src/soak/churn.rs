//! The churn itself (`xtask soak-churn`, run as `exitprof stat`'s
//! COMMAND so that every VM is a tracked child): workload VMs started and
//! ended continuously, up to a number at once, 1-8 vCPUs each. Most run a
//! fixed number of rounds and report their own counts ("lived"); the
//! others exit continuously until they are killed with SIGKILL in the
//! middle of their exits ("doomed"). The two use disjoint CPUID leaves,
//! ports and MMIO addresses, so that exitprof's counts of the lived keys
//! can be compared exactly with what the lived VMs report.
use std::{
    fs,
    io::{Read as _, Write as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// Arguments of the hidden `xtask soak-churn`.
#[derive(clap::Args)]
pub struct ChurnArgs {
    /// The exitprof binary (its `vm`).
    #[arg(long)]
    pub exitprof: PathBuf,
    /// How long to churn.
    #[arg(long)]
    pub seconds: u64,
    /// Most VMs at once.
    #[arg(long)]
    pub max_vms: usize,
    /// Where each lived VM's report goes, one JSON line each, then one
    /// summary line.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the choices.
    #[arg(long, default_value_t = 16)]
    pub seed: u64,
    /// Seconds to stay, without VMs, after the last one is gone (so that
    /// the soak samples exitprof with nothing left to track).
    #[arg(long, default_value_t = 0)]
    pub linger_s: u64,
}

/// Keys of one kind of VM: 8 CPUID leaves, ports and MMIO pages.
pub struct Keys {
    pub cpuid_leaf: u32,
    pub port: u16,
    pub gpa: u32,
}

/// Lived VMs' keys (`i` from 0 to 7).
pub const LIVED: Keys = Keys {
    cpuid_leaf: 0x5150_0000,
    port: 0x200,
    gpa: 0xd010_0000,
};
/// Doomed VMs' keys.
pub const DOOMED: Keys = Keys {
    cpuid_leaf: 0x5160_0000,
    port: 0x300,
    gpa: 0xd020_0000,
};
/// Keys per kind of VM.
pub const KEYS: u32 = 8;

/// Per round: CPUIDs, port I/O pairs, MMIO pairs (each vCPU).
pub const CPUID: u32 = 40;
pub const PIO: u32 = 10;
pub const MMIO: u32 = 4;

/// A small, fixed-seed generator (xorshift64*): the churn is the same
/// from run to run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

struct Vm {
    child: Child,
    /// When a doomed VM gets its SIGKILL.
    kill_at: Option<Instant>,
}

/// `xtask soak-churn`.
///
/// # Errors
/// When a VM cannot be started, or a lived VM fails.
pub fn churn(args: &ChurnArgs) -> anyhow::Result<()> {
    let mut rng = Rng::new(args.seed);
    let mut out =
        fs::File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut vms: Vec<Vm> = Vec::new();
    let (mut started, mut lived, mut killed) = (0u64, 0u64, 0u64);
    while Instant::now() < deadline || !vms.is_empty() {
        let now = Instant::now();
        let mut i = 0;
        while i < vms.len() {
            if vms[i]
                .kill_at
                .is_some_and(|at| now >= at || now >= deadline)
            {
                // In the middle of its exits: it exits continuously.
                let _ = vms[i].child.kill();
            }
            if let Some(status) = vms[i].child.try_wait()? {
                let mut vm = vms.swap_remove(i);
                if vm.kill_at.is_some() {
                    killed += 1;
                    continue;
                }
                anyhow::ensure!(status.success(), "a lived VM failed: {status}");
                let mut report = String::new();
                if let Some(mut stdout) = vm.child.stdout.take() {
                    stdout.read_to_string(&mut report)?;
                }
                writeln!(out, "{}", report.trim())?;
                lived += 1;
                continue;
            }
            i += 1;
        }
        while now < deadline && vms.len() < args.max_vms {
            vms.push(start(&args.exitprof, &mut rng, started)?);
            started += 1;
        }
        sleep(Duration::from_millis(20));
    }
    writeln!(
        out,
        "{}",
        serde_json::json!({"summary": {"started": started, "lived": lived, "killed": killed}})
    )?;
    sleep(Duration::from_secs(args.linger_s));
    Ok(())
}

/// Starts VM number `n`: 1-8 vCPUs; three in ten doomed.
fn start(exitprof: &std::path::Path, rng: &mut Rng, n: u64) -> anyhow::Result<Vm> {
    let doomed = rng.below(10) < 3;
    let keys = if doomed { &DOOMED } else { &LIVED };
    let k = u32::try_from(n % u64::from(KEYS)).unwrap_or(0);
    let vcpus = 1 + rng.below(8);
    let (rounds, pause) = if doomed {
        (0, 1)
    } else {
        (5 + rng.below(40), 10 + rng.below(20))
    };
    let mut cmd = Command::new(exitprof);
    cmd.args(["vm", "--json"])
        .args(["--vcpus", &vcpus.to_string()])
        .args(["--cpuid", &CPUID.to_string()])
        .args(["--cpuid-leaf", &(keys.cpuid_leaf + k).to_string()])
        .args(["--pio", &PIO.to_string()])
        .args(["--pio-port", &(u32::from(keys.port) + k).to_string()])
        .args(["--mmio", &MMIO.to_string()])
        .args(["--mmio-gpa", &(keys.gpa + 0x1000 * k).to_string()])
        .args(["--rounds", &rounds.to_string()])
        .args(["--pause-ms", &pause.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let child = cmd
        .spawn()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    let kill_at = doomed.then(|| Instant::now() + Duration::from_millis(100 + rng.below(2_000)));
    Ok(Vm { child, kill_at })
}
