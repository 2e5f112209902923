//! One file per subcommand: its arguments (clap) and its `main`. Commands
//! compose the layers below (session, bpf, tui, present, model, host,
//! workload, guest); they hold no maps and no `unsafe`.
pub mod bench_readout;
pub mod guest;
pub mod record;
pub mod report;
pub mod stat;
pub mod top;
pub mod vm;

use std::path::Path;

use anyhow::Context as _;

use crate::model::Symbols;

/// The guest symbols of `--guest-symbols FILE` (a `System.map` or a copy
/// of the guest's `/proc/kallsyms`).
///
/// # Errors
/// The file cannot be read or holds no code symbols.
pub fn guest_symbols(path: &Path) -> anyhow::Result<Symbols> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read guest symbols from {}: give a System.map or a copy of the guest's /proc/kallsyms",
            path.display()
        )
    })?;
    Symbols::parse(&text).map_err(|why| {
        anyhow::anyhow!(
            "{} is no symbol file: {why}; give a System.map or a copy of the guest's /proc/kallsyms",
            path.display()
        )
    })
}
