//! Helpers every task uses: the workspace's place, running commands,
//! building exitprof, downloading Debian packages. Imports nothing of the
//! crate.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The workspace root (xtask lives one level below it).
#[must_use]
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// `cargo build --release -p exitprof`, returning the binary's path.
///
/// # Errors
/// When the build fails.
pub fn build_release() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    println!("[build] cargo build --release -p exitprof");
    run(Command::new("cargo")
        .args(["build", "--release", "-p", "exitprof"])
        .current_dir(&root))?;
    Ok(root.join("target/release/exitprof"))
}

/// Runs `cmd`, failing with its name when it cannot start or fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Stdout of `cmd`, or `None` when it cannot run or fails.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Downloads Debian package `package=version` into `debs` (kept there as
/// a cache) and returns the `.deb`.
pub fn download_deb(debs: &Path, package: &str, version: &str) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(debs)?;
    // The version is part of the name (apt writes an epoch's ':' as
    // "%3a"): a cached linux-source-6.12 of an older version must not
    // stand in for the one the image needs.
    let prefix = format!("{package}_{}_", version.replace(':', "%3a"));
    let find = || {
        fs::read_dir(debs).ok().and_then(|entries| {
            entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&prefix) && Path::new(n).extension().is_some_and(|e| e == "deb")
                })
            })
        })
    };
    if let Some(deb) = find() {
        return Ok(deb);
    }
    println!("[download] {package} {version}");
    let download = || {
        run(Command::new("apt-get")
            .args(["download", &format!("{package}={version}")])
            .current_dir(debs))
    };
    if download().is_err() {
        // Lists older than the mirror name files it no longer has.
        println!("[download] failed; refreshing package lists and retrying");
        run(Command::new("apt-get").arg("update"))?;
        download()?;
    }
    find().context("apt-get download left no .deb")
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat`'s CPU times.
#[must_use]
pub fn clock_ticks_per_s() -> f64 {
    output(Command::new("getconf").arg("CLK_TCK"))
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// The user and system CPU time process `pid` has used, in clock ticks
/// (`/proc/<pid>/stat`); `None` once it is gone.
#[must_use]
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses, which may hold anything.
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(tick(11)? + tick(12)?)
}

/// A `kB` field of `/proc/<pid>/status` (`field` with its colon, e.g.
/// `VmRSS:`); `None` once the process is gone.
#[must_use]
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
