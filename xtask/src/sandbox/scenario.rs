//! What one boot of a sandbox is asked to do, and what both backends
//! share: the place of their files and the error of a boot that stalled.
use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::util::{clock_ticks_per_s, cpu_ticks, workspace_root};

/// Which hardware virtualization the nested sandbox emulates (and so
/// which KVM vendor module runs in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Vendor {
    /// AMD SVM: `kvm-amd` under QEMU TCG (`-cpu qemu64,+svm,+npt`).
    Svm,
    /// Intel VMX: `kvm-intel` under Bochs (`corei7_haswell_4770`: VMX with
    /// EPT, VPID and unrestricted guest).
    Vmx,
}

impl Vendor {
    /// Both, in the order `cargo xtask test` runs them.
    pub const ALL: [Self; 2] = [Self::Svm, Self::Vmx];

    /// `svm`/`vmx`, as exitprof's JSON names the ISA.
    #[must_use]
    pub const fn isa(self) -> &'static str {
        match self {
            Self::Svm => "svm",
            Self::Vmx => "vmx",
        }
    }

    /// The vendor module's name in `/sys/module`.
    #[must_use]
    pub const fn module(self) -> &'static str {
        match self {
            Self::Svm => "kvm_amd",
            Self::Vmx => "kvm_intel",
        }
    }

    /// The vendor module's nested-paging parameter (NPT, EPT).
    #[must_use]
    pub const fn paging_param(self) -> &'static str {
        match self {
            Self::Svm => "npt",
            Self::Vmx => "ept",
        }
    }

    /// The vendor module and the modules it needs (their `depends=`),
    /// loading order, as paths under `lib/modules/<release>/kernel`.
    #[must_use]
    pub const fn module_files(self) -> &'static [&'static str] {
        match self {
            Self::Svm => &[
                "virt/lib/irqbypass.ko",
                "arch/x86/kvm/kvm.ko",
                "drivers/crypto/ccp/ccp.ko",
                "arch/x86/kvm/kvm-amd.ko",
            ],
            Self::Vmx => &[
                "virt/lib/irqbypass.ko",
                "arch/x86/kvm/kvm.ko",
                "arch/x86/kvm/kvm-intel.ko",
            ],
        }
    }

    /// The emulator, for messages.
    #[must_use]
    pub const fn emulator(self) -> &'static str {
        match self {
            Self::Svm => "QEMU TCG",
            Self::Vmx => "Bochs",
        }
    }
}

impl std::fmt::Display for Vendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.isa())
    }
}

/// One boot of a sandbox.
pub struct Scenario<'a> {
    /// Name (serial log `target/sandbox/<name>.log`).
    pub name: &'a str,
    /// The sandbox it boots.
    pub vendor: Vendor,
    /// Shell script run after boot; `exitprof` is on PATH. Several
    /// scenarios share one boot through [`super::sections`].
    pub script: &'a str,
    /// The vendor module's nested paging (`npt=`/`ept=`) at boot.
    pub nested_paging: bool,
    /// Stop the emulator after this long.
    pub timeout: Duration,
    /// A directory holding patched `arch/x86/kvm/kvm.ko` and the vendor
    /// module (`cargo xtask kernel`) to boot with instead of the image's.
    pub modules: Option<&'a Path>,
    /// More host programs to carry (with their libraries): (host path,
    /// path in the sandbox).
    pub extra: &'a [(&'a str, &'a str)],
    /// Virtual CPUs of the sandbox (QEMU; Bochs always emulates one).
    pub cpus: u8,
}

/// How long a boot took, for the log line.
pub struct BootTimes {
    /// Host seconds from starting the emulator until `/init` reported the
    /// vendor module loaded (`@@EXITPROF booted`), when known.
    pub booted_s: Option<f64>,
    /// CPU seconds the emulator used, when known (wall time on these
    /// shared machines says little).
    pub cpu_s: Option<f64>,
}

/// `target/sandbox`.
pub fn sandbox_dir() -> PathBuf {
    workspace_root().join("target/sandbox")
}

/// The whole sandbox stopped making progress (the emulator was killed).
#[derive(Debug)]
pub struct Stalled(pub String);

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stalled {}

/// How long a boot may sit idle before it counts as stalled: its emulator
/// used less than [`IDLE_CPU_SHARE`] of a core and its serial console
/// grew by nothing. Every script keeps the sandbox busy or prints within
/// seconds. A frozen sandbox (seen a few times under QEMU TCG: every vCPU
/// halted, waiting for an interrupt that never came) stays at 0% for good,
/// and used to hold its scenario until the timeout, up to 15 minutes.
pub const IDLE_LIMIT: Duration = Duration::from_mins(1);

/// The emulator's CPU share below which a silent sandbox is idle (an idle
/// QEMU TCG guest with a tickless kernel uses well under this).
pub const IDLE_CPU_SHARE: f64 = 0.02;

/// How long the sandbox's kernel may go without a heartbeat (a line from
/// `/init`'s background loop every 2 s, on a serial port of its own) once
/// it has sent one. Both vCPUs stuck in the kernel with interrupts off
/// (seen under QEMU's multi-threaded TCG: both looping on a stale int3 of
/// the kernel's code patching, at 100% CPU, neither idle nor reporting a
/// soft lockup) stop it.
pub const HEARTBEAT_LIMIT: Duration = Duration::from_secs(30);

/// Watches one boot's emulator for the ways a sandbox stops making
/// progress: running past the scenario's timeout, idling for
/// [`IDLE_LIMIT`], a soft lockup, and a heartbeat that stopped
/// ([`HEARTBEAT_LIMIT`]). The caller kills the emulator when
/// [`Self::check`] fails.
pub struct Watchdog<'a> {
    scenario: &'a Scenario<'a>,
    log: &'a Path,
    pid: u32,
    started: Instant,
    /// When progress was last seen, with the emulator's CPU ticks and the
    /// serial log's length then.
    since: Instant,
    ticks: u64,
    log_len: u64,
    idle_limit: Duration,
    /// The heartbeat's file, its length at the last check, and when it
    /// last grew.
    heartbeat: Option<(&'a Path, u64, Instant)>,
    heartbeat_limit: Duration,
}

impl<'a> Watchdog<'a> {
    /// Starts watching emulator `pid`, started at `started`, whose guest
    /// writes a heartbeat to `heartbeat`, if it has one.
    #[must_use]
    pub fn new(
        scenario: &'a Scenario<'a>,
        log: &'a Path,
        heartbeat: Option<&'a Path>,
        pid: u32,
        started: Instant,
    ) -> Self {
        Self {
            scenario,
            log,
            pid,
            started,
            since: Instant::now(),
            ticks: cpu_ticks(pid).unwrap_or(0),
            log_len: len(log),
            idle_limit: IDLE_LIMIT,
            heartbeat: heartbeat.map(|h| (h, 0, Instant::now())),
            heartbeat_limit: HEARTBEAT_LIMIT,
        }
    }

    /// Checks progress now.
    ///
    /// # Errors
    /// [`Stalled`] when the boot is past its timeout or idle.
    pub fn check(&mut self) -> anyhow::Result<()> {
        if self.started.elapsed() > self.scenario.timeout {
            return Err(self.stalled(&format!(
                "the sandbox did not finish within {:?}",
                self.scenario.timeout
            )));
        }
        let mut beat = false;
        if let Some((file, beats, at)) = &mut self.heartbeat {
            let now = len(file);
            if now != *beats {
                *beats = now;
                *at = Instant::now();
                beat = true;
            } else if now > 0 && at.elapsed() > self.heartbeat_limit {
                let silent = at.elapsed().as_secs_f64();
                return Err(self.stalled(&format!(
                    "the sandbox's kernel stopped running its tasks: no heartbeat for {silent:.0} s (a CPU stuck with interrupts off)"
                )));
            }
        }
        let log_len = len(self.log);
        let ticks = cpu_ticks(self.pid).unwrap_or(self.ticks);
        let idle_for = self.since.elapsed();
        #[expect(clippy::cast_precision_loss, reason = "clock ticks")]
        let cpu_s = ticks.saturating_sub(self.ticks) as f64 / clock_ticks_per_s();
        let busy = cpu_s > IDLE_CPU_SHARE * idle_for.as_secs_f64();
        if log_len != self.log_len && self.soft_lockup(log_len) {
            return Err(self.stalled(
                "the sandbox's kernel reported a soft lockup (a CPU stuck in the kernel for over 20 s)",
            ));
        }
        // A beating kernel is not frozen, however quiet its scenario.
        if log_len != self.log_len || beat || (idle_for >= self.idle_limit && busy) {
            self.since = Instant::now();
            self.ticks = ticks;
            self.log_len = log_len;
        } else if idle_for >= self.idle_limit {
            return Err(self.stalled(&format!(
                "the sandbox idled for {:.0} s ({cpu_s:.2} s of emulator CPU, no console output): frozen",
                idle_for.as_secs_f64()
            )));
        }
        Ok(())
    }

    /// Whether the serial log's new part, from the last check to
    /// `log_len`, holds the kernel's soft lockup report. A stuck sandbox
    /// stays at full CPU, so only this tells it early (seen once: two
    /// vCPUs of a 2-vCPU QEMU TCG sandbox stuck for good while a BPF
    /// program was attached).
    fn soft_lockup(&self, log_len: u64) -> bool {
        const NEEDLE: &[u8] = b"BUG: soft lockup";
        let Ok(mut file) = fs::File::open(self.log) else {
            return false;
        };
        // From a little before the new part: the report may straddle it.
        let from = self.log_len.saturating_sub(NEEDLE.len() as u64);
        let mut new = Vec::new();
        if file.seek(SeekFrom::Start(from)).is_err()
            || file.take(log_len - from).read_to_end(&mut new).is_err()
        {
            return false;
        }
        new.windows(NEEDLE.len()).any(|w| w == NEEDLE)
    }

    fn stalled(&self, why: &str) -> anyhow::Error {
        Stalled(format!(
            "{}: {why}; serial log {}:\n{}",
            self.scenario.name,
            self.log.display(),
            tail(self.log)
        ))
        .into()
    }
}

fn len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// The last lines of a log, for error messages.
pub fn tail(log: &Path) -> String {
    let text = fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn scenario(timeout: Duration) -> Scenario<'static> {
        Scenario {
            name: "watchdog-test",
            vendor: Vendor::Svm,
            script: "",
            nested_paging: true,
            timeout,
            modules: None,
            extra: &[],
            cpus: 1,
        }
    }

    /// A fresh serial log path of this test's own.
    fn log_file() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xtask-watchdog-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        dir.join("serial.log")
    }

    /// Runs `script` (`sh -c`, its serial log in `$LOG`, which holds
    /// "booted") as the emulator and checks it every 50 ms for `for_`, with
    /// an idle limit of 600 ms; the error, if any.
    fn watch(script: &str, timeout: Duration, for_: Duration) -> Option<String> {
        let log = log_file();
        fs::write(&log, "booted\n").unwrap();
        let mut child = Command::new("sh")
            .args(["-c", script])
            .env("LOG", &log)
            .env("BEAT", log.with_extension("heartbeat"))
            .spawn()
            .unwrap();
        let scenario = scenario(timeout);
        let started = Instant::now();
        let beat = log.with_extension("heartbeat");
        let mut dog = Watchdog::new(&scenario, &log, Some(&beat), child.id(), started);
        dog.idle_limit = Duration::from_millis(600);
        dog.heartbeat_limit = Duration::from_millis(600);
        let result = loop {
            if let Err(e) = dog.check() {
                assert!(e.downcast_ref::<Stalled>().is_some(), "{e:#}");
                break Some(format!("{e}"));
            }
            if started.elapsed() > for_ {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = child.kill();
        let _ = child.wait();
        let _ = fs::remove_dir_all(log.parent().unwrap());
        result
    }

    const BUSY: &str = "while :; do :; done";

    #[test]
    fn an_idle_silent_emulator_is_stalled_after_the_idle_limit() {
        let started = Instant::now();
        let error = watch("sleep 30", Duration::from_secs(30), Duration::from_secs(5))
            .expect("an idle sandbox is stalled");
        let took = started.elapsed();
        assert!(error.contains("the sandbox idled for"), "{error}");
        assert!(error.contains("no console output): frozen"), "{error}");
        assert!(error.ends_with("booted"), "the log's tail: {error}");
        assert!(
            took >= Duration::from_millis(600) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[test]
    fn a_busy_emulator_is_never_idle() {
        assert_eq!(
            watch(BUSY, Duration::from_secs(30), Duration::from_secs(2)),
            None
        );
    }

    #[test]
    fn a_printing_emulator_is_never_idle() {
        let printing = "while :; do echo tick >> $LOG; sleep 0.2; done";
        assert_eq!(
            watch(printing, Duration::from_secs(30), Duration::from_secs(2)),
            None
        );
    }

    #[test]
    fn a_soft_lockup_report_stalls_a_busy_emulator_at_once() {
        let script = format!(
            "sleep 0.3; echo '[  872.478023] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [qemu-system-x86:1512]' >> $LOG; {BUSY}"
        );
        let error =
            watch(&script, Duration::from_secs(30), Duration::from_secs(3)).expect("a soft lockup");
        assert!(
            error.starts_with("watchdog-test: the sandbox's kernel reported a soft lockup"),
            "{error}"
        );
        assert!(
            error.ends_with("stuck for 22s! [qemu-system-x86:1512]"),
            "{error}"
        );
    }

    #[test]
    fn a_busy_emulator_whose_heartbeat_stopped_is_stalled() {
        let script = format!(
            "i=0; while [ $i -lt 5 ]; do echo beat >> $BEAT; sleep 0.1; i=$((i+1)); done; {BUSY}"
        );
        let error = watch(&script, Duration::from_secs(30), Duration::from_secs(3))
            .expect("a stopped heartbeat");
        assert!(
            error.starts_with("watchdog-test: the sandbox's kernel stopped running its tasks: no heartbeat for 1 s"),
            "{error}"
        );
    }

    #[test]
    fn an_idle_emulator_whose_kernel_beats_is_never_stalled() {
        let beating = "while :; do echo beat >> $BEAT; sleep 0.2; done";
        assert_eq!(
            watch(beating, Duration::from_secs(30), Duration::from_secs(2)),
            None
        );
    }

    #[test]
    fn a_beating_busy_emulator_is_never_stalled() {
        // One process (the helper kills only its child): busy, beating
        // between stretches of work.
        let script = "while :; do echo beat >> $BEAT; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; done";
        assert_eq!(
            watch(script, Duration::from_secs(30), Duration::from_secs(2)),
            None
        );
    }

    #[test]
    fn a_boot_past_its_timeout_is_stalled_whatever_it_does() {
        let error = watch(BUSY, Duration::from_millis(300), Duration::from_secs(5))
            .expect("past its timeout");
        assert!(
            error
                .starts_with("watchdog-test: the sandbox did not finish within 300ms; serial log "),
            "{error}"
        );
    }
}
