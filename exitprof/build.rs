//! Builds `exitprof-ebpf` for the bpf target with aya-build (nightly +
//! rust-src + bpf-linker, installed by `cargo xtask setup`) and leaves the
//! object in `OUT_DIR/exitprof`, which `src/loader.rs` embeds.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build for checks of user-space code
//! only; an empty object is embedded then and the loader says so.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
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
