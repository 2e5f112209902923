//! The tasks the README names: `setup`, `demo`, `test` (and `e2e`, the
//! sandbox part of `test`).
pub mod fuzz;
pub mod setup;

use std::{path::Path, process::Command};

use anyhow::Context as _;

use crate::{
    sandbox, scenarios,
    util::{build_release, run, workspace_root},
};
use setup::setup;

/// Arguments of `cargo xtask e2e`.
#[derive(clap::Args, Default)]
pub struct E2eArgs {
    /// Run only the scenarios whose name contains this.
    #[arg(long)]
    pub only: Option<String>,
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
    /// Run the demo inside the nested SVM sandbox, where `kvm_exit` fires
    /// (this host's KVM may not emit it, e.g. PVM).
    #[arg(long)]
    pub sandbox: bool,
}

/// `cargo xtask demo`: `exitprof top` on the built-in workload VM (live
/// when stdout is a terminal, one interval as text otherwise).
///
/// # Errors
/// When setup, the build or the demo run fails.
pub fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    setup()?;
    if args.sandbox {
        let kernel = sandbox::fetch_kernel()?;
        let exitprof = build_release()?;
        return scenarios::demo(&kernel, &exitprof, DEMO_WORKLOAD);
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
            "[demo] the vmexit view needs kvm_exit: `cargo xtask demo --sandbox` shows it from the nested SVM sandbox"
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
    setup()?;
    // Style first: a lint failure fails in seconds, not after the sandbox.
    lint()?;
    let root = workspace_root();
    build_release()?;
    let mut tally = Tally::default();
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
    println!("[test] nested SVM sandbox");
    tally.each("sandbox scenarios", e2e(args));
    // VMs coming and going under exitprof top and stat, briefly (`cargo
    // xtask soak` runs it for 10 minutes).
    if args.only.is_none() {
        println!("[test] soak, {} s of VM churn", crate::soak::SHORT.seconds);
        let exitprof = workspace_root().join("target/release/exitprof");
        tally.one(
            "short soak",
            crate::soak::run(&exitprof, &crate::soak::SHORT),
        );
    }
    if args.only.is_none() {
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

/// Passed and failed tests over the stages of `cargo xtask test`, and the
/// first error of each failed stage.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    errors: Vec<anyhow::Error>,
}

impl Tally {
    /// A stage that reports (passed, failed) counts.
    fn count(&mut self, stage: &str, result: anyhow::Result<(u64, u64)>) {
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

/// Runs `cargo test ARGS -- --test-threads=1` in `dir` with `envs`,
/// echoing its output, and sums its `test result:` lines.
fn cargo_test(dir: &Path, args: &[&str], envs: &[(&str, &Path)]) -> anyhow::Result<(u64, u64)> {
    use std::io::{BufRead as _, BufReader};
    let mut cmd = Command::new("cargo");
    cmd.arg("test")
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
    let target = root.join("target/isolated");
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

/// `cargo xtask e2e`: every scenario; returns how many passed.
pub fn e2e(args: &E2eArgs) -> anyhow::Result<u64> {
    let kernel = sandbox::fetch_kernel()?;
    let exitprof = build_release()?;
    scenarios::run_all(&kernel, &exitprof, args.only.as_deref())
}
