//! The tasks the README names: `setup`, `demo`, `test` (and `e2e`, the
//! sandbox part of `test`).
pub mod fuzz;
pub mod setup;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    sandbox::{self, Vendor},
    scenarios,
    util::{build_release, run, workspace_root},
};
use setup::setup;

/// Arguments of `cargo xtask e2e`.
#[derive(clap::Args, Default)]
pub struct E2eArgs {
    /// Run only the scenarios whose name contains this.
    #[arg(long)]
    pub only: Option<String>,
    /// Run only this sandbox's scenarios (both without it): svm (QEMU,
    /// kvm-amd) or vmx (Bochs, kvm-intel).
    #[arg(long, value_enum)]
    pub sandbox: Option<Vendor>,
}

impl E2eArgs {
    /// The sandboxes to run.
    fn vendors(&self) -> Vec<Vendor> {
        self.sandbox
            .map_or_else(|| Vendor::ALL.to_vec(), |v| vec![v])
    }
}

/// The built-in default workload: the workload VM's mix, in a loop.
pub const DEMO_WORKLOAD: &[&str] = &[
    "vm",
    "--cpuid",
    "2000",
    "--pio",
    "100",
    "--mmio",
    "50",
    "--msr",
    "20",
    "--hlt",
    "5",
    "--rounds",
    "0",
    "--pause-ms",
    "20",
];

/// Arguments of `cargo xtask demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Run the demo inside a nested sandbox, where `kvm_exit` fires (this
    /// host's KVM may not emit it, e.g. PVM): svm (the default, QEMU,
    /// kvm-amd) or vmx (Bochs, kvm-intel: VMX reason names).
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "svm")]
    pub sandbox: Option<Vendor>,
}

/// `cargo xtask demo`: `exitprof top` on the built-in workload VM (live
/// when stdout is a terminal, one interval as text otherwise).
///
/// # Errors
/// When setup, the build or the demo run fails.
pub fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    setup()?;
    if let Some(vendor) = args.sandbox {
        let kernel = sandbox::fetch_kernel()?;
        let exitprof = build_release()?;
        return scenarios::demo(&kernel, &exitprof, vendor, DEMO_WORKLOAD);
    }
    let exitprof = build_release()?;
    println!("[demo] exitprof {} &", DEMO_WORKLOAD.join(" "));
    let mut workload = Command::new(&exitprof)
        .args(DEMO_WORKLOAD)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting the workload VM")?;
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let top: &[&str] = if interactive {
        &["top"]
    } else {
        &["top", "--once", "-d", "2s"]
    };
    println!("[demo] exitprof {} (q quits)", top.join(" "));
    let result = run(Command::new(&exitprof).args(top));
    let _ = workload.kill();
    let _ = workload.wait();
    if !interactive {
        println!(
            "[demo] the vmexit view needs kvm_exit: `cargo xtask demo --sandbox [svm|vmx]` shows it from a nested sandbox"
        );
    }
    result.context("the demo failed: see exitprof's message above")
}

/// `cargo xtask test`: unit and root integration tests, the unit tests
/// again from a copy of the repository with nothing beside it, the
/// sandbox scenarios and the bench smoke run. Ends with one
/// `N passed, N failed` line over everything that ran.
///
/// # Errors
/// When any test fails.
pub fn test(args: &E2eArgs) -> anyhow::Result<()> {
    let mut tally = Tally::new();
    setup()?;
    // Style first: a lint failure fails in seconds, not after the sandbox.
    lint()?;
    let root = workspace_root();
    let exitprof = build_release()?;
    tally.lap("setup, lint, release build");
    // Root tests share kernel state (attached programs, tracefs): one at a
    // time.
    println!("[test] cargo test (unit and integration tests, one thread)");
    tally.count("cargo test", cargo_test(&root, &[], &[]));
    println!("[test] unit tests in a copy of the repository with nothing beside it");
    tally.count("isolated unit tests", isolated_unit_tests(&root));
    // The parsers of what the kernel or a user hands us, briefly, from the
    // committed seeds (`cargo xtask fuzz` runs them longer).
    println!("[test] fuzz targets, {FUZZ_SECONDS} s each");
    tally.each(
        "fuzz targets",
        fuzz::fuzz(&fuzz::FuzzArgs {
            seconds: FUZZ_SECONDS,
            target: None,
        }),
    );
    discard_on_ci(&root.join("fuzz/target"));
    for vendor in args.vendors() {
        println!(
            "[test] nested {} sandbox ({})",
            vendor.isa().to_uppercase(),
            vendor.emulator()
        );
        tally.each(
            &format!("{vendor} sandbox scenarios"),
            e2e_one(args, vendor),
        );
    }
    let everything = args.only.is_none() && args.sandbox.is_none();
    if everything {
        // VMs coming and going under exitprof top and stat, briefly
        // (`cargo xtask soak` runs it for 10 minutes).
        println!("[test] soak, {} s of VM churn", crate::soak::SHORT.seconds);
        tally.one(
            "short soak",
            crate::soak::run(&exitprof, &crate::soak::SHORT),
        );
        // The bench with small counts, so that it cannot rot (its numbers
        // are not judged here).
        println!("[test] cargo xtask bench --smoke");
        tally.one(
            "bench smoke run",
            crate::bench::bench(&crate::bench::BenchArgs {
                smoke: true,
                only: Vec::new(),
            }),
        );
    }
    tally.finish()
}

/// `cargo xtask lint`: rustfmt, and clippy (pedantic, as the workspace's
/// `[lints]` say) with warnings as errors, on user space and on the eBPF
/// crate (for its own target, with the nightly toolchain it builds with).
///
/// # Errors
/// When any of them complains.
pub fn lint() -> anyhow::Result<()> {
    let root = workspace_root();
    println!("[lint] cargo fmt --all --check");
    run(Command::new("cargo")
        .args(["fmt", "--all", "--check"])
        .current_dir(&root))
    .context("rustfmt wants changes: run `cargo fmt --all`")?;
    println!("[lint] imports run one way (ARCHITECTURE.md's codemap)");
    crate::layers::check(&root)?;
    println!("[lint] cargo clippy (user space, all targets)");
    run(Command::new("cargo")
        .args([
            "clippy",
            "--workspace",
            "--exclude",
            "exitprof-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .env("AYA_BUILD_SKIP", "1")
        .current_dir(&root))
    .context("clippy found problems in user space")?;
    // Both objects: in-flight records in task storage, and in hash maps.
    for features in [&[][..], &["--features", "hash-in-flight"]] {
        println!(
            "[lint] cargo clippy (the eBPF crate, bpfel-unknown-none) {}",
            features.join(" ")
        );
        run(Command::new("cargo")
            .args([
                "+nightly",
                "clippy",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
            .args(features)
            .args(["--", "-D", "warnings"])
            .current_dir(root.join("exitprof-ebpf")))
        .context("clippy found problems in the eBPF crate")?;
    }
    Ok(())
}

/// Seconds each fuzz target runs in `cargo xtask test`.
const FUZZ_SECONDS: u64 = 20;

/// Passed and failed tests over the stages of `cargo xtask test`, the
/// first error of each failed stage, and how long each stage took (the
/// whole must stay under 30 minutes on a fresh machine).
struct Tally {
    passed: u64,
    failed: u64,
    errors: Vec<anyhow::Error>,
    start: Instant,
    lap_start: Instant,
    laps: Vec<(String, Duration)>,
}

impl Tally {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            passed: 0,
            failed: 0,
            errors: Vec::new(),
            start: now,
            lap_start: now,
            laps: Vec::new(),
        }
    }

    /// Ends the current stage: its time is what passed since the last lap.
    /// Says so at once, with the disk space left (what ran out on a CI
    /// machine once).
    fn lap(&mut self, stage: &str) {
        let now = Instant::now();
        let took = now - self.lap_start;
        println!(
            "[test] {stage}: {:.1} s; {} free on the repository's disk",
            took.as_secs_f64(),
            free_disk(&workspace_root())
        );
        self.laps.push((stage.to_owned(), took));
        self.lap_start = now;
    }

    /// A stage that reports (passed, failed) counts.
    fn count(&mut self, stage: &str, result: anyhow::Result<(u64, u64)>) {
        self.lap(stage);
        match result {
            Ok((passed, failed)) => {
                self.passed += passed;
                self.failed += failed;
                if failed > 0 {
                    self.errors
                        .push(anyhow::anyhow!("{stage}: {failed} test(s) failed"));
                }
            }
            Err(e) => self.fail(stage, e),
        }
    }

    /// A stage that reports how many passed, or fails as a whole.
    fn each(&mut self, stage: &str, result: anyhow::Result<u64>) {
        self.count(stage, result.map(|n| (n, 0)));
    }

    /// A stage that is one test.
    fn one(&mut self, stage: &str, result: anyhow::Result<()>) {
        self.count(stage, result.map(|()| (1, 0)));
    }

    fn fail(&mut self, stage: &str, e: anyhow::Error) {
        self.failed += 1;
        self.errors.push(e.context(format!("{stage} failed")));
    }

    /// Prints the summary line; the first failure is the error.
    fn finish(self) -> anyhow::Result<()> {
        for (stage, took) in &self.laps {
            println!("[test] {:>7.1} s  {stage}", took.as_secs_f64());
        }
        println!(
            "[test] {:>7.1} s  in all",
            self.start.elapsed().as_secs_f64()
        );
        println!("{} passed, {} failed", self.passed, self.failed);
        for e in self.errors.iter().skip(1) {
            println!("[test] also: {e:#}");
        }
        match self.errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The space left on the file system holding `path`, as `df` says it
/// ("?" if it cannot).
fn free_disk(path: &Path) -> String {
    crate::util::output(Command::new("df").args(["-h", "--output=avail"]).arg(path))
        .and_then(|text| text.lines().nth(1).map(|l| l.trim().to_owned()))
        .unwrap_or_else(|| "?".to_owned())
}

/// On CI (`CI` set, as `.ci/run` sets it), removes `dir`: what a stage
/// built and no later stage reads, as a CI machine's disk is not large.
/// (Elsewhere it stays, so that the next run is faster.)
fn discard_on_ci(dir: &Path) {
    if std::env::var_os("CI").is_some() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Runs `cargo test ARGS -- --test-threads=1` in `dir` with `envs`,
/// echoing its output, and sums its `test result:` lines.
fn cargo_test(dir: &Path, args: &[&str], envs: &[(&str, &Path)]) -> anyhow::Result<(u64, u64)> {
    use std::io::{BufRead as _, BufReader};
    let mut cmd = Command::new("cargo");
    // --no-fail-fast: a failing unit-test binary must not keep the root
    // integration tests from running; every failure is reported at once.
    cmd.arg("test")
        .arg("--no-fail-fast")
        .args(args)
        .args(["--", "--test-threads=1"])
        .current_dir(dir)
        .stdout(std::process::Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                match (words.next(), words.next()) {
                    (Some("passed"), Some(n)) => passed += n.parse::<u64>().unwrap_or(0),
                    (Some("failed"), Some(n)) => failed += n.parse::<u64>().unwrap_or(0),
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        failed = 1; // a build failure or a crash: no result line
    }
    Ok((passed, failed))
}

/// The unit tests, run once more from a copy of the repository's files
/// in a fresh temporary directory, where nothing lies beside the checkout:
/// a test that reads outside the repository fails here. (User-space only,
/// `AYA_BUILD_SKIP=1`: unit tests need no eBPF object.)
fn isolated_unit_tests(root: &Path) -> anyhow::Result<(u64, u64)> {
    let files = crate::util::output(
        Command::new("git")
            .args([
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ])
            .current_dir(root),
    )
    .context("git ls-files failed: is this a git checkout?")?;
    let copy = std::env::temp_dir().join("exitprof-isolated");
    let _ = std::fs::remove_dir_all(&copy);
    let repo = copy.join("exitprof");
    for file in files.split('\0').filter(|f| !f.is_empty()) {
        let (from, to) = (root.join(file), repo.join(file));
        if from.is_file() {
            std::fs::create_dir_all(to.parent().expect("a file has a parent"))?;
            std::fs::copy(&from, &to).with_context(|| format!("copying {file}"))?;
        }
    }
    // The repository's own target directory: the copy's crates build
    // apart from the checkout's (cargo keys them by path), and the
    // dependencies, the same packages, are built once.
    let target = root.join("target");
    let result = cargo_test(
        &repo,
        &[
            "--workspace",
            "--exclude",
            "exitprof-ebpf",
            "--lib",
            "--bins",
        ],
        &[
            ("AYA_BUILD_SKIP", Path::new("1")),
            ("CARGO_TARGET_DIR", &target),
        ],
    );
    let _ = std::fs::remove_dir_all(&copy);
    result
}

/// `cargo xtask e2e`: every scenario of the chosen sandboxes; returns how
/// many passed.
///
/// # Errors
/// The first failure (after every sandbox ran).
pub fn e2e(args: &E2eArgs) -> anyhow::Result<u64> {
    let mut passed = 0;
    let mut first_error = None;
    for vendor in args.vendors() {
        match e2e_one(args, vendor) {
            Ok(n) => passed += n,
            Err(e) => {
                println!("[e2e] {vendor} sandbox: FAIL: {e:#}");
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(passed), Err)
}

/// One sandbox's scenarios.
fn e2e_one(args: &E2eArgs, vendor: Vendor) -> anyhow::Result<u64> {
    let kernel = sandbox::fetch_kernel()?;
    let exitprof = build_release()?;
    scenarios::run_all(&kernel, &exitprof, vendor, args.only.as_deref())
}
