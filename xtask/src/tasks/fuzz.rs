//! `cargo xtask fuzz`: the cargo-fuzz targets (`fuzz/`) of the parsers of
//! what the kernel or a user hands exitprof (tracefs formats, BTF,
//! recordings, the guest's CPUID registers), each for a bounded time from
//! the committed seeds (`fuzz/seeds/`, and `fixtures/tracefs` for the
//! format parser). A crash fails the task and leaves its input under
//! `fuzz/artifacts/`; turn each into a unit test of the parser.
use std::{fs, process::Command, time::Instant};

use anyhow::{Context as _, bail};

use crate::util::{run, workspace_root};

/// The targets, and where their seeds are (relative to the workspace).
pub const TARGETS: &[(&str, &str)] = &[
    ("tracefs_format", "fixtures/tracefs"),
    ("btf", "fuzz/seeds/btf"),
    ("recording", "fuzz/seeds/recording"),
    ("guest_cpuid", "fuzz/seeds/guest_cpuid"),
];

/// Arguments of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only this target.
    #[arg(long)]
    pub target: Option<String>,
}

/// Runs the targets; returns how many ran without a crash.
///
/// # Errors
/// A build failure or a crash (naming the target and the input).
pub fn fuzz(args: &FuzzArgs) -> anyhow::Result<u64> {
    let root = workspace_root();
    let mut passed = 0;
    for (target, seeds) in TARGETS {
        if args.target.as_deref().is_some_and(|t| t != *target) {
            continue;
        }
        let corpus = root.join("fuzz/corpus").join(target);
        fs::create_dir_all(&corpus)?;
        for seed in fs::read_dir(root.join(seeds)).with_context(|| format!("reading {seeds}"))? {
            let seed = seed?.path();
            if let Some(name) = seed.file_name() {
                fs::copy(&seed, corpus.join(name))?;
            }
        }
        println!("[fuzz] {target}: {} s from {seeds}", args.seconds);
        let started = Instant::now();
        let result = run(Command::new("cargo")
            .args(["+nightly", "fuzz", "run", "--fuzz-dir", "fuzz"])
            // Safe Rust parsers: the crashes hunted are panics and
            // arithmetic overflow (checked: cargo-fuzz builds with debug
            // assertions). AddressSanitizer would triple the build.
            .args(["--sanitizer", "none", target])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .args(["-rss_limit_mb=2048", "-timeout=10"])
            // The library, without the eBPF object it does not need here.
            .env("AYA_BUILD_SKIP", "1")
            .current_dir(&root));
        if let Err(e) = result {
            let artifacts = root.join("fuzz/artifacts").join(target);
            bail!(
                "{target} crashed ({e:#}): the input is in {}; add it as a unit test of the parser",
                artifacts.display()
            );
        }
        println!(
            "[fuzz] {target}: no crash in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        passed += 1;
    }
    if passed == 0 {
        bail!("no fuzz target is called {:?}", args.target);
    }
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every target has its source, its `[[bin]]` and seeds.
    #[test]
    fn every_target_is_wired() {
        let root = workspace_root();
        let manifest = fs::read_to_string(root.join("fuzz/Cargo.toml")).unwrap();
        for (target, seeds) in TARGETS {
            assert!(
                root.join("fuzz/fuzz_targets")
                    .join(format!("{target}.rs"))
                    .is_file(),
                "{target}: no source"
            );
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target}: no [[bin]]"
            );
            let n = fs::read_dir(root.join(seeds)).map_or(0, Iterator::count);
            assert!(n > 0, "{target}: no seeds in {seeds}");
        }
    }
}
