//! The Debian kernel the sandboxes boot: `linux-image-6.1.0-N-amd64` (or
//! 6.12, see [`KernelLine`]) at the version of its `linux-source`
//! package (the kernel patch builds modules from that source), downloaded
//! and unpacked once under `target/sandbox/`.
use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use super::scenario::sandbox_dir;
use crate::util::{download_deb, output, run};

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
