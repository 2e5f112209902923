//! `cargo xtask setup`: installs exactly what a fresh machine lacks, one
//! printed step at a time. Idempotent: a second run checks and does nothing.
use std::{process::Command, time::Instant};

use anyhow::Context as _;

use crate::util::{output, run};

/// Debian packages the project needs, and why.
const PACKAGES: &[(&str, &str)] = &[
    (
        "llvm-22-dev",
        "bpf-linker links the eBPF object with LLVM 22",
    ),
    ("libzstd-dev", "bpf-linker build"),
    ("zlib1g-dev", "bpf-linker build"),
    (
        "qemu-system-x86",
        "the nested SVM sandbox (cargo xtask e2e)",
    ),
    (
        "bochs",
        "the nested VMX sandbox: Bochs emulates VMX (cargo xtask e2e --sandbox vmx)",
    ),
    ("bochsbios", "the VMX sandbox's BIOS"),
    ("vgabios", "the VMX sandbox's VGA BIOS"),
    (
        "bochs-term",
        "the VMX sandbox's headless display (Debian's Bochs has no nogui)",
    ),
    (
        "binutils",
        "assembling the VMX sandbox's boot loader (as, ld)",
    ),
    ("busybox-static", "the sandbox's initramfs"),
    ("cpio", "packing the sandbox's initramfs"),
    ("bpftool", "tests check that programs are detached"),
    ("tmux", "the exitprof top test drives the TUI in a terminal"),
    (
        "librsvg2-bin",
        "the e2e test renders exitprof report's SVG chart",
    ),
    ("xz-utils", "unpacking linux-source-6.1"),
    ("procps", "cargo xtask bench finds exitprof top with pgrep"),
    ("flex", "building the patched KVM modules (kconfig)"),
    ("bison", "building the patched KVM modules (kconfig)"),
    ("bc", "building the patched KVM modules"),
    ("libelf-dev", "building the patched KVM modules (objtool)"),
    ("libssl-dev", "building the patched KVM modules (sign-file)"),
    (
        "dwarves",
        "building the patched KVM modules (pahole, module BTF)",
    ),
    ("git", "cargo xtask kernel applies the patch with git apply"),
    (
        "bpftrace",
        "cargo xtask bench compares exitprof with bpftrace",
    ),
    (
        "linux-perf",
        "cargo xtask bench compares exitprof with perf kvm stat record",
    ),
    (
        "prometheus",
        "the exporter's tests scrape exitprof serve with a real Prometheus and run promtool",
    ),
    (
        "systemd",
        "the exporter's test verifies packaging/exitprof-serve.service with systemd-analyze",
    ),
];

/// cargo-fuzz version of `cargo xtask fuzz`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// bpf-linker version that builds with LLVM 22 and aya 0.14.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Runs every setup step.
///
/// # Errors
/// A step failed; the message names the command and what to do.
pub fn setup() -> anyhow::Result<()> {
    let started = Instant::now();
    // Two independent chains, side by side on a fresh machine: Debian's
    // packages then bpf-linker (which links with their LLVM), and the
    // nightly toolchain then cargo-fuzz (a build that needs neither). The
    // first is mostly download and unpacking, the second mostly compiling.
    std::thread::scope(|scope| {
        let toolchains = scope.spawn(|| -> anyhow::Result<()> {
            ensure_nightly()?;
            ensure_cargo_fuzz()
        });
        let packages = ensure_packages(PACKAGES).and_then(|()| ensure_bpf_linker());
        let toolchains = toolchains
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the toolchain setup thread panicked")));
        packages.and(toolchains)
    })?;
    println!("[setup] ready ({:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.contains("install ok installed"))
}

/// Installs the Debian packages of `packages` that are missing.
///
/// # Errors
/// When apt-get fails even after `apt-get update`.
pub fn ensure_packages(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(p, _)| !installed(p))
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        println!("[setup] Debian packages: all {} present", packages.len());
        return Ok(());
    }
    for (p, why) in packages.iter().filter(|(p, _)| missing.contains(p)) {
        println!("[setup] installing {p} ({why})");
    }
    // A fresh machine's package lists may be old or absent: refresh them
    // once, before the first install (a second setup run never gets here).
    println!("[setup] apt-get update");
    run(Command::new("apt-get").arg("update")).context(
        "apt-get update failed: check that Debian's package mirror is reachable and that you are root",
    )?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| {
        format!(
            "installing {missing:?} failed: run `apt-get install {}` by hand to see why",
            missing.join(" ")
        )
    })
}

fn ensure_nightly() -> anyhow::Result<()> {
    let has_nightly = output(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|s| s.lines().any(|l| l.starts_with("nightly")));
    if !has_nightly {
        println!(
            "[setup] installing the nightly toolchain with rust-src (eBPF builds need build-std)"
        );
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
            "--component",
            "clippy",
        ]))
        .context("is rustup on PATH and its distribution server reachable?")?;
        return Ok(());
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    // rust-src: the eBPF crate builds core itself; clippy: `cargo xtask
    // lint` checks the eBPF crate for its own target.
    for component in ["rust-src", "clippy"] {
        if installed.lines().any(|l| l.starts_with(component)) {
            println!("[setup] nightly toolchain with {component}: present");
        } else {
            println!("[setup] adding {component} to the nightly toolchain");
            run(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                "nightly",
            ]))?;
        }
    }
    Ok(())
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version"));
    if version
        .as_deref()
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        println!("[setup] bpf-linker {BPF_LINKER_VERSION}: present");
        return Ok(());
    }
    println!("[setup] building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 3 minutes)");
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
    .context("building bpf-linker failed: check that llvm-22-dev is installed (/usr/lib/llvm-22)")
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let version = output(Command::new("cargo").args(["fuzz", "--version"]));
    if version
        .as_deref()
        .is_some_and(|v| v.contains(CARGO_FUZZ_VERSION))
    {
        println!("[setup] cargo-fuzz {CARGO_FUZZ_VERSION}: present");
        return Ok(());
    }
    println!("[setup] building cargo-fuzz {CARGO_FUZZ_VERSION} (cargo xtask fuzz; about 1 minute)");
    run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
    .context("building cargo-fuzz failed: is crates.io reachable?")
}
