//! Builds `exitprof-ebpf` for the bpf target with aya-build (nightly +
//! rust-src + bpf-linker, installed by `cargo xtask setup`), twice: the
//! object with task storage for what vCPU threads have in flight
//! (`OUT_DIR/exitprof`) and the one with hash maps for kernels without it
//! (`OUT_DIR/exitprof-hash`, feature `hash-in-flight`); `src/bpf/mod.rs`
//! embeds both and the attach plan picks one.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build for checks of user-space code
//! only; an empty object is embedded then and the loader says so.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    // aya-build forwards every line the inner cargo prints as a
    // `cargo:warning`, so a normal build showed ~130 lines of "Compiling".
    // Quiet, the inner cargo prints only diagnostics: nothing when the
    // eBPF build is clean, the compiler's own errors when it is not.
    // SAFETY: the build script has no other threads yet.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest.join("../exitprof-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let (object, hash_object) = (out.join("exitprof"), out.join("exitprof-hash"));
    let build = |features: &[&str]| {
        aya_build::build_ebpf(
            [aya_build::Package {
                name: "exitprof-ebpf",
                root_dir: ebpf_dir,
                features,
                ..Default::default()
            }],
            aya_build::Toolchain::default(),
        )
    };
    for stale in [&object, &hash_object] {
        let _ = fs::remove_file(stale);
    }
    build(&["hash-in-flight"])?;
    if object.exists() {
        fs::rename(&object, &hash_object)?;
    }
    build(&[])?;
    for object in [object, hash_object] {
        if !object.exists() {
            // AYA_BUILD_SKIP: keep `include_bytes_aligned!` compiling.
            fs::write(&object, [])?;
        }
    }
    Ok(())
}
