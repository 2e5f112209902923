//! `cargo xtask kernel --kernel 6.1|6.12`: the series of
//! `kernel-patch/<line>/` applied to Debian's `linux-source-<line>` and
//! built into `kvm.ko`, `kvm-amd.ko` and `kvm-intel.ko` for the matching
//! Debian image, with module BTF, plus the series' KVM selftest
//! (`exitprof_test`); cached under `target/kernel/`.
//!
//! Module BTF: `make M=` skips it when the tree has no `vmlinux`
//! ("Skipping BTF generation ... due to unavailability of vmlinux"), so the
//! image's vmlinux is extracted with the tree's `scripts/extract-vmlinux`
//! (the image's ELF keeps its `.BTF` section) and put at the top of the
//! tree, where `scripts/Makefile.modfinal` runs `pahole --btf_base vmlinux`
//! and `resolve_btfids -b vmlinux` on each module.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};

use crate::{
    sandbox::{self, Kernel, KernelLine},
    util::{download_deb, run, workspace_root},
};

/// Arguments of `cargo xtask kernel`.
#[derive(clap::Args)]
pub struct KernelArgs {
    /// The Debian kernel line to build for.
    #[arg(long, value_enum, default_value_t)]
    pub kernel: KernelLine,
}

/// The directory of the patch series against `line`.
pub fn patch_dir(line: KernelLine) -> PathBuf {
    workspace_root().join("kernel-patch").join(line.name())
}

/// The patched modules, relative to the kernel tree and to
/// `lib/modules/<release>/kernel`.
pub const MODULES: &[&str] = &[
    "arch/x86/kvm/kvm.ko",
    "arch/x86/kvm/kvm-amd.ko",
    "arch/x86/kvm/kvm-intel.ko",
];

/// The series' selftest, in the tree and in the build's output directory.
pub const SELFTEST: &str = "tools/testing/selftests/kvm/x86_64/exitprof_test";

/// Bumped when the build steps change, to rebuild cached outputs.
const BUILD_RECIPE: &str = "v2: module BTF, stripped, selftest";

/// The patch files of the series for `line`, in order.
pub fn series(line: KernelLine) -> anyhow::Result<Vec<PathBuf>> {
    let dir = patch_dir(line);
    let mut patches: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("{} is missing", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "patch"))
        .collect();
    patches.sort();
    ensure!(!patches.is_empty(), "{} holds no patch", dir.display());
    Ok(patches)
}

/// `target/kernel`.
fn kernel_dir() -> PathBuf {
    workspace_root().join("target/kernel")
}

/// The patched modules and the selftest for `kernel`, built once and
/// cached: their directory (holding `arch/x86/kvm/*.ko` and
/// [`SELFTEST`]).
pub fn build(kernel: &Kernel) -> anyhow::Result<PathBuf> {
    let line = kernel.line;
    let patches = series(line)?;
    let mut stamp_text = format!("{BUILD_RECIPE}\n{}\n", kernel.package_version);
    for p in &patches {
        stamp_text.push_str(&fs::read_to_string(p)?);
    }
    let out = kernel_dir().join(format!("modules-{}", kernel.release));
    let stamp = out.join(".built");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == stamp_text) {
        return Ok(out);
    }
    let started = Instant::now();
    let mut step = Steps::new();
    let version = &kernel.package_version;
    let flavour = kernel
        .release
        .strip_suffix("-amd64")
        .context("the sandbox kernel is not an amd64 flavour")?;
    let debs = kernel_dir().join("debs");
    let source_package = line.source_package();
    let source = download_deb(&debs, &source_package, version)?;
    let headers = download_deb(&debs, &format!("linux-headers-{}", kernel.release), version)?;
    let common = download_deb(&debs, &format!("linux-headers-{flavour}-common"), version)?;
    step.done("download");

    let work = kernel_dir().join(format!("build-{}", line.name()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    for deb in [&source, &headers, &common] {
        run(Command::new("dpkg").arg("-x").arg(deb).arg(&work))?;
    }
    println!("[kernel] extracting {source_package}");
    run(Command::new("tar")
        .arg("-xaf")
        .arg(format!("usr/src/{source_package}.tar.xz"))
        .current_dir(&work))?;
    let tree = work.join(&source_package);
    step.done("extract");
    apply(&tree, &patches, &source_package)?;
    step.done("apply");
    let headers_dir = work.join(format!("usr/src/linux-headers-{}", kernel.release));
    fs::copy(headers_dir.join(".config"), tree.join(".config"))?;
    fs::copy(
        headers_dir.join("Module.symvers"),
        tree.join("Module.symvers"),
    )?;
    extract_vmlinux(&tree, &kernel.vmlinuz)?;
    let jobs = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    // Debian's release string (e.g. 6.1.0-56-amd64) is not the source's
    // version (6.1.192): name it, or the modules' vermagic will not match.
    let release = format!("KERNELRELEASE={}", kernel.release);
    let make = |dir: &Path, args: &[&str]| {
        run(Command::new("make")
            .arg(format!("-j{jobs}"))
            .arg(&release)
            .args(args)
            .current_dir(dir))
    };
    println!("[kernel] make modules_prepare");
    make(&tree, &["olddefconfig"])?;
    make(&tree, &["modules_prepare"])?;
    step.done("modules_prepare");
    println!("[kernel] make M=arch/x86/kvm modules");
    let text = run_logged(
        Command::new("make")
            .arg(format!("-j{jobs}"))
            .arg(&release)
            .args(["M=arch/x86/kvm", "modules"])
            .current_dir(&tree),
        &work.join("kvm-build.log"),
    )?;
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| {
            (l.contains("warning:") && l.contains("exitprof"))
                || l.contains("Skipping BTF generation")
        })
        .collect();
    ensure!(
        warnings.is_empty(),
        "the patched modules build with warnings or without BTF:\n{}",
        warnings.join("\n")
    );
    step.done("kvm modules");
    println!("[kernel] make headers; make the KVM selftest {SELFTEST}");
    make(&tree, &["headers"])?;
    build_selftest(&tree, jobs, &work.join("selftest-build.log"))?;
    step.done("selftest");
    install(&tree, &out, kernel)?;
    fs::write(&stamp, stamp_text)?;
    // The tree stays (target/kernel/build-<line>, about 2 GB) until the
    // next build of the line: deleting its ~100k files took minutes on a
    // busy machine, and it is where to run scripts/checkpatch.pl.
    step.done("copy, check, strip");
    println!(
        "[kernel] built {} patched modules with BTF and the selftest for {} in {:.0} s ({}): {}",
        MODULES.len(),
        kernel.release,
        started.elapsed().as_secs_f64(),
        step.summary(),
        out.display()
    );
    Ok(out)
}

/// The series' selftest, built in `tree` (after `make headers`).
fn build_selftest(tree: &Path, jobs: usize, log: &Path) -> anyhow::Result<()> {
    // 6.12's selftests build with -march=x86-64-v2; the sandbox's CPU
    // (qemu64) has no SSSE3/SSE4/POPCNT. Explicit -mno- flags win over
    // -march whatever their order.
    run_logged(
        Command::new("make")
            .arg(format!("-j{jobs}"))
            .arg("EXTRA_CFLAGS=-mno-ssse3 -mno-sse4.1 -mno-sse4.2 -mno-popcnt")
            .arg(tree.join(SELFTEST))
            .current_dir(tree.join("tools/testing/selftests/kvm")),
        log,
    )?;
    Ok(())
}

/// Copies the modules and the selftest from `tree` to `out`, checks the
/// modules and strips their debug info.
fn install(tree: &Path, out: &Path, kernel: &Kernel) -> anyhow::Result<()> {
    let _ = fs::remove_dir_all(out);
    for m in MODULES.iter().chain([&SELFTEST]) {
        let to = out.join(m);
        fs::create_dir_all(to.parent().expect("module path"))?;
        fs::copy(tree.join(m), &to).with_context(|| format!("copying {m}"))?;
    }
    for m in MODULES {
        check_module(&out.join(m), kernel)?;
        // The modules are built with DWARF (for pahole); the sandbox's
        // initramfs only needs the code and .BTF, which strip keeps.
        run(Command::new("strip").arg("--strip-debug").arg(out.join(m)))?;
    }
    Ok(())
}

/// Wall-clock times of the build's steps, for the final line.
struct Steps {
    last: Instant,
    done: Vec<(&'static str, f64)>,
}

impl Steps {
    fn new() -> Self {
        Self {
            last: Instant::now(),
            done: Vec::new(),
        }
    }

    fn done(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done.push((name, (now - self.last).as_secs_f64()));
        self.last = now;
    }

    fn summary(&self) -> String {
        self.done
            .iter()
            .map(|(name, s)| format!("{name} {s:.0} s"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Runs `cmd` with stdout and stderr in `log`; returns the output, or
/// fails with its last lines.
fn run_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<String> {
    let file = fs::File::create(log)?;
    let status = cmd
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    let text = fs::read_to_string(log).unwrap_or_default();
    if !status.success() {
        let mut tail: Vec<&str> = text.lines().rev().take(30).collect();
        tail.reverse();
        bail!(
            "{cmd:?} failed ({status}); {} ends with:\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    Ok(text)
}

/// The image's vmlinux at the top of `tree`, for module BTF.
fn extract_vmlinux(tree: &Path, image: &Path) -> anyhow::Result<()> {
    let elf_path = tree.join("vmlinux");
    let out = fs::File::create(&elf_path)?;
    run(Command::new(tree.join("scripts/extract-vmlinux"))
        .arg(image)
        .stdout(out))?;
    let elf = fs::read(&elf_path)?;
    ensure!(
        elf.starts_with(b"\x7fELF") && has_section(&elf, ".BTF"),
        "extract-vmlinux gave no ELF with a .BTF section from {}",
        image.display()
    );
    Ok(())
}

/// Whether an ELF file's section name table names `name` (a byte search
/// for `\0name\0`, good enough for the sections the build adds).
fn has_section(elf: &[u8], name: &str) -> bool {
    let needle = format!("\0{name}\0");
    elf.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A built module carries the patch, the image's vermagic and BTF.
fn check_module(path: &Path, kernel: &Kernel) -> anyhow::Result<()> {
    let bytes = fs::read(path)?;
    if path.ends_with("kvm.ko") {
        ensure!(
            bytes
                .windows(b"exitprof_cpuid".len())
                .any(|w| w == b"exitprof_cpuid"),
            "the built kvm.ko lacks the patch (no exitprof_cpuid symbol)"
        );
    }
    ensure!(
        has_section(&bytes, ".BTF"),
        "{} has no .BTF section",
        path.display()
    );
    let vermagic = modinfo(&bytes, "vermagic").context("no vermagic in the module")?;
    ensure!(
        vermagic.starts_with(&format!("{} ", kernel.release)),
        "{} has vermagic {vermagic:?}, not the image's {}",
        path.display(),
        kernel.release
    );
    Ok(())
}

/// A `key=value` string of a module's `.modinfo`.
fn modinfo(bytes: &[u8], key: &str) -> Option<String> {
    let needle = format!("{key}=");
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())?;
    let rest = &bytes[at + needle.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// `git apply --check`, then `git apply`, of every patch onto `tree`.
fn apply(tree: &Path, patches: &[PathBuf], source: &str) -> anyhow::Result<()> {
    for p in patches {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        println!("[kernel] git apply {name}");
        for check in [true, false] {
            let mut cmd = Command::new("git");
            cmd.arg("apply");
            if check {
                cmd.arg("--check");
            }
            // The tree lies inside exitprof's own repository (target/):
            // stop git from finding it, or `git apply` would resolve the
            // paths against that repository and skip them all silently.
            let status = cmd
                .arg(p)
                .current_dir(tree)
                .env(
                    "GIT_CEILING_DIRECTORIES",
                    tree.parent().expect("the tree has a parent"),
                )
                .status()
                .with_context(|| format!("failed to run {cmd:?}"))?;
            if !status.success() {
                bail!("{name} does not apply to {source} ({status})");
            }
        }
    }
    ensure!(
        tree.join("arch/x86/kvm/exitprof.c").exists(),
        "git apply reported success but arch/x86/kvm/exitprof.c is missing"
    );
    Ok(())
}

/// `cargo xtask kernel`.
pub fn kernel(args: &KernelArgs) -> anyhow::Result<()> {
    let kernel = sandbox::fetch_kernel_line(args.kernel)?;
    let out = build(&kernel)?;
    for m in MODULES.iter().chain([&SELFTEST]) {
        println!("{}", out.join(m).display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use exitprof_common::guest_abi;

    use super::*;

    #[test]
    fn every_patch_is_signed_off_and_numbered() {
        for line in KernelLine::ALL {
            let patches = series(line).unwrap();
            for (i, p) in patches.iter().enumerate() {
                let text = fs::read_to_string(p).unwrap();
                let n = patches.len();
                assert!(
                    text.contains(&format!("Subject: [PATCH {}/{n}] KVM: ", i + 1)),
                    "{}",
                    p.display()
                );
                assert!(text.contains("\nSigned-off-by: "), "{}", p.display());
            }
        }
    }

    /// The added lines of a series, without the `+`.
    fn added(line: KernelLine) -> String {
        series(line)
            .unwrap()
            .iter()
            .flat_map(|p| {
                fs::read_to_string(p)
                    .unwrap()
                    .lines()
                    .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
                    .map(|l| format!("{}\n", &l[1..]))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The value of `#define name value` in C source (hex, decimal or
    /// `BIT(n)`), the first one.
    fn define(source: &str, name: &str) -> u64 {
        let value = source
            .lines()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some("#define") && words.next() == Some(name))
                    .then(|| words.next().expect("a value").to_owned())
            })
            .unwrap_or_else(|| panic!("no #define {name}"));
        let value = value.trim_end_matches(['u', 'U', 'l', 'L']);
        if let Some(bit) = value.strip_prefix("BIT(").and_then(|v| v.strip_suffix(')')) {
            1 << bit.parse::<u32>().unwrap()
        } else if let Some(hex) = value.strip_prefix("0x") {
            u64::from_str_radix(hex, 16).unwrap()
        } else {
            value.parse().unwrap()
        }
    }

    /// The kernel side and `exitprof_common::guest_abi` agree on every
    /// number of the ABI, in both series.
    #[test]
    fn series_constants_equal_guest_abi() {
        for line in KernelLine::ALL {
            let c = added(line);
            let expect = [
                ("EXITPROF_LEAF_TOTAL_EXITS", guest_abi::LEAF_TOTAL_EXITS),
                ("EXITPROF_LEAF_TOTAL_CYCLES", guest_abi::LEAF_TOTAL_CYCLES),
                ("EXITPROF_LEAF_REASON_EXITS", guest_abi::LEAF_REASON_EXITS),
                ("EXITPROF_LEAF_REASON_CYCLES", guest_abi::LEAF_REASON_CYCLES),
                ("EXITPROF_LEAF_DISCOVERY", guest_abi::LEAF_DISCOVERY),
                ("EXITPROF_SIGNATURE", guest_abi::SIGNATURE),
                ("EXITPROF_VERSION", guest_abi::ABI_VERSION),
                ("EXITPROF_ACTIVE", guest_abi::FLAG_ACTIVE),
                ("EXITPROF_SCOPE_HOST", guest_abi::FLAG_SCOPE_HOST),
                ("EXITPROF_EDX_UNDEFINED", guest_abi::EDX_UNDEFINED),
                ("EXITPROF_EDX_INACTIVE", guest_abi::EDX_INACTIVE),
                ("EXITPROF_REASON_TOTAL", guest_abi::REASON_TOTAL),
                ("KVM_HC_EXITPROF", guest_abi::HYPERCALL_NR),
            ];
            for (name, value) in expect {
                assert_eq!(
                    define(&c, name),
                    u64::from(value),
                    "{name} in kernel-patch/{}",
                    line.name()
                );
            }
            let magic = format!("ret = {:#018x}ULL;", guest_abi::HYPERCALL_MAGIC);
            assert!(
                c.contains(&magic),
                "{magic} in kernel-patch/{}",
                line.name()
            );
            for text in [
                format!("debugfs_create_file(\"{}\", 0600", guest_abi::DEBUGFS_FILE),
                format!("strcmp(scope, \"{}\")", guest_abi::DEBUGFS_SCOPE_HOST),
                "\"registered map id %u scope %s\\n\"".to_owned(),
                "reg->host ? \"host\" : \"vm\"".to_owned(),
                "char buf[64] = \"inactive\\n\";".to_owned(),
                "key.tgid = reg->host ? 0 : task_tgid_nr(current);".to_owned(),
                "map->map_type != BPF_MAP_TYPE_PERCPU_HASH".to_owned(),
            ] {
                assert!(c.contains(&text), "{text} in kernel-patch/{}", line.name());
            }
            // The map's key and value, field by field, as guest_abi has
            // them (8 and 16 bytes, checked there).
            for field in [
                "\tu32 tgid;",
                "\tu32 reason;",
                "\tu64 count;",
                "\tu64 total_ns;",
            ] {
                assert!(c.contains(field), "{field} in kernel-patch/{}", line.name());
            }
            // The selftest has its own copy of the numbers: it checks the
            // kernel, not exitprof, but must say the same.
            for (name, value) in [
                ("LEAF_REASON_EXITS", guest_abi::LEAF_REASON_EXITS),
                ("SIGNATURE", guest_abi::SIGNATURE),
                ("VERSION", guest_abi::ABI_VERSION),
                ("REASON_TOTAL", guest_abi::REASON_TOTAL),
                ("HC_EXITPROF", guest_abi::HYPERCALL_NR),
            ] {
                assert_eq!(define(&c, name), u64::from(value), "selftest {name}");
            }
        }
    }

    /// The two series are the same change: the new files are identical
    /// but for what 6.12 needs.
    #[test]
    fn series_agree_across_kernels() {
        let old = added(KernelLine::V6_1);
        let new = added(KernelLine::V6_12)
            .replace(
                "kvm_x86_call(has_exit_handler)",
                "static_call(kvm_x86_has_exit_handler)",
            )
            .replace("\nMODULE_IMPORT_NS(BPF_INTERNAL);\n", "");
        let file = |text: &str, start: &str| -> String {
            let at = text.find(start).unwrap_or_else(|| panic!("{start}"));
            text[at..].lines().take(200).collect::<Vec<_>>().join("\n")
        };
        for start in [
            "// SPDX-License-Identifier: GPL-2.0-only\n/*\n * CPUID leaves",
            ".. SPDX-License-Identifier: GPL-2.0\n",
        ] {
            assert_eq!(file(&old, start), file(&new, start), "{start}");
        }
    }
}
