//! Rebuild when `bpf-linker` changes: the link step of the bpf target runs
//! it, but cargo cannot know that.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
