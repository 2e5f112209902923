//! The nested sandbox: Debian's 6.1 kernel (or 6.12, see [`KernelLine`])
//! with `kvm-amd` in QEMU TCG (`-cpu qemu64,+svm,+npt`), booted from a
//! busybox initramfs that carries exitprof. `kvm_exit`/`kvm_entry` fire there (they never do on the PVM
//! hosts this project is built on). Each scenario is one boot: its shell
//! script runs as part of `/init`, and its results come back as
//! `@@EXITPROF <key> <value>` lines on the serial console.
//!
//! Downloads and builds are cached under `target/sandbox/`.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::util::{download_deb, output, run, workspace_root};

/// A Debian kernel line the sandbox boots and `kernel-patch/` has a series
/// for. The image is the one whose package version equals
/// `linux-source-<line>`'s candidate, so that modules built from that
/// source load into it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelLine {
    /// `linux-image-6.1.0-N-amd64` (Debian 12's own kernel).
    #[default]
    #[value(name = "6.1")]
    V6_1,
    /// `linux-image-6.12.N+deb12-amd64` (the LTS line Debian 12 backports).
    #[value(name = "6.12")]
    V6_12,
}

impl KernelLine {
    /// Every line, oldest first.
    pub const ALL: [Self; 2] = [Self::V6_1, Self::V6_12];

    /// `6.1` or `6.12`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
        }
    }

    /// `linux-source-6.1` or `linux-source-6.12`.
    #[must_use]
    pub fn source_package(self) -> String {
        format!("linux-source-{}", self.name())
    }

    /// The image packages' name pattern (for `apt-cache search`) and the
    /// ordinal between its prefix and suffix that orders them.
    const fn image_names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::V6_1 => (
                r"^linux-image-6\.1\.0-[0-9]+-amd64$",
                "linux-image-6.1.0-",
                "-amd64",
            ),
            Self::V6_12 => (
                r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$",
                "linux-image-6.12.",
                "+deb12-amd64",
            ),
        }
    }
}

/// The Debian kernel the sandbox boots.
pub struct Kernel {
    /// The kernel line.
    pub line: KernelLine,
    /// `uname -r`, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// Debian package version, e.g. `6.1.192-2`.
    pub package_version: String,
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>`.
    pub modules: PathBuf,
}

/// `target/sandbox`.
pub fn sandbox_dir() -> PathBuf {
    workspace_root().join("target/sandbox")
}

/// The candidate version of `linux-source-<line>`: the kernel patch builds
/// modules from it, so the image must be the same version.
fn source_version(line: KernelLine) -> anyhow::Result<String> {
    let source = line.source_package();
    let policy = output(Command::new("apt-cache").args(["policy", &source]))
        .with_context(|| format!("apt-cache policy {source} failed"))?;
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_owned())
        .filter(|v| v != "(none)")
        .with_context(|| format!("{source} has no candidate version: run `apt-get update`"))
}

/// The image package of `line` whose version is `version`.
fn image_package(line: KernelLine, version: &str) -> anyhow::Result<String> {
    let (pattern, prefix, suffix) = line.image_names();
    let names = output(Command::new("apt-cache").args(["search", "--names-only", pattern]))
        .context("apt-cache search failed")?;
    let mut names: Vec<(u32, String)> = names
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|n| {
            let abi = n.strip_prefix(prefix)?.strip_suffix(suffix)?;
            Some((abi.parse().ok()?, n.to_owned()))
        })
        .collect();
    names.sort();
    for (_, name) in names.iter().rev() {
        let madison = output(Command::new("apt-cache").args(["madison", name])).unwrap_or_default();
        if madison
            .lines()
            .any(|l| l.split('|').nth(1).is_some_and(|v| v.trim() == version))
        {
            return Ok(name.clone());
        }
    }
    bail!(
        "no {prefix}*{suffix} package has version {version} (the version of {})",
        line.source_package()
    )
}

/// Downloads and unpacks the 6.1 kernel image matching `linux-source-6.1`
/// (cached): the sandbox's default.
pub fn fetch_kernel() -> anyhow::Result<Kernel> {
    fetch_kernel_line(KernelLine::V6_1)
}

/// Downloads and unpacks the kernel image of `line` matching its
/// `linux-source` package (cached).
pub fn fetch_kernel_line(line: KernelLine) -> anyhow::Result<Kernel> {
    let version = source_version(line)?;
    let dir = sandbox_dir().join(format!("linux-image-{version}"));
    let stamp = dir.join(".unpacked");
    if !stamp.exists() {
        let package = image_package(line, &version)?;
        let deb = download_deb(&sandbox_dir().join("debs"), &package, &version)?;
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&dir))?;
        fs::write(&stamp, &package)?;
    }
    let boot = dir.join("boot");
    let vmlinuz = fs::read_dir(&boot)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .context("no vmlinuz in the image package")?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("vmlinuz name")?
        .to_owned();
    let modules = dir.join("lib/modules").join(&release);
    Ok(Kernel {
        line,
        release,
        package_version: version,
        vmlinuz,
        modules,
    })
}

/// `kvm-amd` and the modules it needs (their `depends=`; the same in 6.1
/// and 6.12, where the image ships them xz-compressed).
const KVM_AMD_MODULES: &[&str] = &[
    "virt/lib/irqbypass.ko",
    "arch/x86/kvm/kvm.ko",
    "drivers/crypto/ccp/ccp.ko",
    "arch/x86/kvm/kvm-amd.ko",
];

/// Busybox applets the init and the scenarios use.
const APPLETS: &[&str] = &[
    "sh", "mount", "mkdir", "insmod", "rmmod", "cat", "echo", "grep", "sed", "sort", "uniq",
    "tail", "head", "wc", "sleep", "poweroff", "ls", "dmesg", "kill", "pidof", "tr", "cut", "awk",
    "true", "false", "test", "[", "uname", "timeout", "depmod", "modprobe", "modinfo", "cp", "mv",
];

/// The tracers `cargo xtask bench` compares exitprof with, and bpftool
/// for their program statistics: (host path, path in the sandbox).
pub const BENCH_TOOLS: &[(&str, &str)] = &[
    ("/usr/bin/bpftrace", "/bin/bpftrace"),
    ("/usr/sbin/bpftool", "/bin/bpftool"),
    ("/usr/bin/perf", "/bin/perf"),
];

/// One boot of the sandbox.
pub struct Scenario<'a> {
    /// Name (log file `target/sandbox/<name>.log`).
    pub name: &'a str,
    /// Shell script run after boot; `exitprof` is on PATH.
    pub script: &'a str,
    /// `kvm-amd npt=` at boot.
    pub npt: bool,
    /// Kill QEMU after this long.
    pub timeout: Duration,
    /// A directory holding patched `arch/x86/kvm/kvm.ko` and `kvm-amd.ko`
    /// (`cargo xtask kernel`) to boot with instead of the image's.
    pub modules: Option<&'a Path>,
    /// More host programs to carry (with their libraries): (host path,
    /// path in the sandbox).
    pub extra: &'a [(&'a str, &'a str)],
    /// Virtual CPUs of the sandbox.
    pub cpus: u8,
}

/// What a scenario reported.
pub struct Results {
    /// `@@EXITPROF key value` lines, in order.
    pub values: Vec<(String, String)>,
    /// The serial log's path.
    pub log: PathBuf,
}

impl Results {
    /// The first value of `key`.
    pub fn get(&self, key: &str) -> anyhow::Result<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .with_context(|| {
                format!(
                    "the sandbox reported no `{key}` (see {})",
                    self.log.display()
                )
            })
    }

    /// Every value of `key`.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.values
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Copies `binary` and the shared libraries `ldd` lists (with the loader)
/// into `root`, keeping their paths.
fn add_binary(root: &Path, binary: &Path, dest: &str) -> anyhow::Result<()> {
    let target = root.join(dest.trim_start_matches('/'));
    fs::create_dir_all(target.parent().expect("dest has a parent"))?;
    fs::copy(binary, &target).with_context(|| format!("copying {}", binary.display()))?;
    let ldd = output(Command::new("ldd").arg(binary)).unwrap_or_default();
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let to = root.join(lib.trim_start_matches('/'));
        if !to.exists() {
            fs::create_dir_all(to.parent().expect("absolute"))?;
            fs::copy(lib, &to).with_context(|| format!("copying {lib}"))?;
        }
    }
    Ok(())
}

fn init_script(npt: bool) -> String {
    format!(
        "#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tracefs nodev /sys/kernel/tracing
mount -t debugfs nodev /sys/kernel/debug
depmod
modprobe kvm_amd npt={npt}
echo \"@@EXITPROF booted $(cut -d' ' -f1 /proc/uptime)\"
echo \"@@EXITPROF npt $(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null)\"
echo \"@@EXITPROF kvm $(ls /dev/kvm 2>&1)\"
sh /scenario.sh
echo \"@@EXITPROF exit $?\"
poweroff -f
",
        npt = u8::from(npt)
    )
}

/// Copies a module; 6.12's image ships `<m>.xz` instead, which busybox's
/// modprobe cannot load: it is unpacked.
fn copy_module(from: &Path, to: &Path) -> anyhow::Result<()> {
    if from.exists() {
        fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
        return Ok(());
    }
    let xz = from.with_extension("ko.xz");
    let out = fs::File::create(to)?;
    run(Command::new("xz").arg("-dc").arg(&xz).stdout(out))
        .with_context(|| format!("unpacking {}", xz.display()))
}

/// Packs an initramfs for `scenario` with `exitprof`.
fn build_initramfs(
    kernel: &Kernel,
    exitprof: &Path,
    scenario: &Scenario,
) -> anyhow::Result<PathBuf> {
    let root = sandbox_dir().join("initramfs").join(scenario.name);
    let _ = fs::remove_dir_all(&root);
    for dir in ["bin", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static is missing")?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    add_binary(&root, exitprof, "/bin/exitprof")?;
    for (from, to) in scenario.extra {
        add_binary(&root, Path::new(from), to)?;
    }
    // Under /lib/modules like an installed kernel, so that depmod and
    // modprobe (and exitprof record's module reload) work.
    let modules = root.join("lib/modules").join(&kernel.release);
    for m in KVM_AMD_MODULES {
        let patched = scenario
            .modules
            .map(|dir| dir.join(m))
            .filter(|p| p.exists());
        let from = patched.unwrap_or_else(|| kernel.modules.join("kernel").join(m));
        let to = modules.join("kernel").join(m);
        fs::create_dir_all(to.parent().expect("module path"))?;
        copy_module(&from, &to)?;
    }
    let init = root.join("init");
    fs::write(&init, init_script(scenario.npt))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    fs::write(root.join("scenario.sh"), scenario.script)?;
    let image = sandbox_dir().join(format!("{}.initramfs.gz", scenario.name));
    run(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find . -print | cpio -o -H newc --quiet | gzip -1 > {}",
            image.display()
        ))
        .current_dir(&root))?;
    Ok(image)
}

/// Boots `scenario` and collects its results. The scenarios bound every
/// exitprof command with `timeout`, so a hang of exitprof fails them with
/// exit code 124; a boot that still stalls as a whole is a stall of the
/// TCG emulation (seen once in about 70 boots), retried once, loudly.
pub fn run_scenario(
    kernel: &Kernel,
    exitprof: &Path,
    scenario: &Scenario,
) -> anyhow::Result<Results> {
    run_scenario_with_memory(kernel, exitprof, scenario, DEFAULT_MEMORY_MB)
}

/// Guest RAM of the sandbox, unless a scenario needs more.
pub const DEFAULT_MEMORY_MB: u32 = 1024;

/// [`run_scenario`] with `memory_mb` of sandbox RAM (a real VMM with a
/// guest OS inside the sandbox needs more than the default).
pub fn run_scenario_with_memory(
    kernel: &Kernel,
    exitprof: &Path,
    scenario: &Scenario,
    memory_mb: u32,
) -> anyhow::Result<Results> {
    match boot(kernel, exitprof, scenario, memory_mb) {
        Err(e) if e.downcast_ref::<Stalled>().is_some() => {
            println!(
                "[sandbox] {}: WARNING: {e:#}; booting again once",
                scenario.name
            );
            boot(kernel, exitprof, scenario, memory_mb)
        }
        other => other,
    }
}

/// The whole sandbox stopped making progress (QEMU was killed).
#[derive(Debug)]
struct Stalled(String);

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stalled {}

/// One boot of `scenario`.
fn boot(
    kernel: &Kernel,
    exitprof: &Path,
    scenario: &Scenario,
    memory_mb: u32,
) -> anyhow::Result<Results> {
    let started = Instant::now();
    let initramfs = build_initramfs(kernel, exitprof, scenario)?;
    let log = sandbox_dir().join(format!("{}.log", scenario.name));
    let _ = fs::remove_file(&log);
    println!(
        "[sandbox] {}: booting {} ({}, npt={})",
        scenario.name,
        kernel.release,
        kernel.package_version,
        u8::from(scenario.npt)
    );
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "qemu64,+svm,+npt", "-m"])
        .arg(memory_mb.to_string())
        .arg("-smp")
        .arg(scenario.cpus.to_string())
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initramfs)
        .args(["-append", "console=ttyS0 quiet loglevel=1 panic=-1"])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > scenario.timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Stalled(format!(
                "{}: the sandbox did not finish within {:?}; serial log {}:\n{}",
                scenario.name,
                scenario.timeout,
                log.display(),
                tail(&log)
            ))
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(
        status.success(),
        "QEMU failed ({status}); serial log {}:\n{}",
        log.display(),
        tail(&log)
    );
    let text = fs::read_to_string(&log).unwrap_or_default();
    let values: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("@@EXITPROF ")? + "@@EXITPROF ".len()..];
            let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
            Some((k.to_owned(), v.trim_end_matches('\r').to_owned()))
        })
        .collect();
    let results = Results { values, log };
    println!(
        "[sandbox] {}: finished in {:.1} s (booted after {} s of guest uptime)",
        scenario.name,
        started.elapsed().as_secs_f64(),
        results.get("booted").unwrap_or("?")
    );
    ensure!(
        results.get("kvm")? == "/dev/kvm",
        "kvm-amd did not load in the sandbox (see {})",
        results.log.display()
    );
    Ok(results)
}

/// The last lines of a log, for error messages.
fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
