//! Builds `exitprof-ebpf` for the bpf target with aya-build (nightly +
//! rust-src + bpf-linker, installed by `cargo xtask setup`) and leaves the
//! object in `OUT_DIR/exitprof`, which `src/loader.rs` embeds.
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
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "exitprof-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    let object = PathBuf::from(env::var("OUT_DIR")?).join("exitprof");
    if !object.exists() {
        // AYA_BUILD_SKIP: keep `include_bytes_aligned!` compiling.
        fs::write(&object, [])?;
    }
    Ok(())
}
