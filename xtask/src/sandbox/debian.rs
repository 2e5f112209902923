//! The Debian kernel both sandboxes boot: `linux-image-6.1.0-N-amd64`
//! at the version of `linux-source-6.1` (the kernel patch builds modules
//! from that source), downloaded and unpacked once under
//! `target/sandbox/`.
use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use super::scenario::sandbox_dir;
use crate::util::{download_deb, output, run};

/// The Debian kernel the sandbox boots.
pub struct Kernel {
    /// `uname -r`, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// Debian package version, e.g. `6.1.192-2`.
    pub package_version: String,
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>`.
    pub modules: PathBuf,
}

/// The candidate version of `linux-source-6.1`: the kernel patch builds
/// modules from it, so the image must be the same version.
fn source_version() -> anyhow::Result<String> {
    let policy = output(Command::new("apt-cache").args(["policy", "linux-source-6.1"]))
        .context("apt-cache policy linux-source-6.1 failed")?;
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_owned())
        .filter(|v| v != "(none)")
        .context("linux-source-6.1 has no candidate version: run `apt-get update`")
}

/// The `linux-image-6.1.0-N-amd64` package whose version is `version`.
fn image_package(version: &str) -> anyhow::Result<String> {
    let names = output(Command::new("apt-cache").args([
        "search",
        "--names-only",
        r"^linux-image-6\.1\.0-[0-9]+-amd64$",
    ]))
    .context("apt-cache search failed")?;
    let mut names: Vec<(u32, String)> = names
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|n| {
            let abi = n
                .strip_prefix("linux-image-6.1.0-")?
                .strip_suffix("-amd64")?;
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
        "no linux-image-6.1.0-*-amd64 package has version {version} (the version of linux-source-6.1)"
    )
}

/// Downloads and unpacks the kernel image matching `linux-source-6.1`
/// (cached).
pub fn fetch_kernel() -> anyhow::Result<Kernel> {
    let version = source_version()?;
    let dir = sandbox_dir().join(format!("linux-image-{version}"));
    let stamp = dir.join(".unpacked");
    if !stamp.exists() {
        let package = image_package(&version)?;
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
        release,
        package_version: version,
        vmlinuz,
        modules,
    })
}
