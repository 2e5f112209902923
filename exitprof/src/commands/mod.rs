//! One file per subcommand: its arguments (clap) and its `main`. Commands
//! compose the layers below (session, bpf, tui, present, model, host,
//! http, workload, guest); they hold no maps and no `unsafe`.
pub mod bench_readout;
pub mod guest;
pub mod record;
pub mod report;
pub mod serve;
pub mod stat;
pub mod top;
pub mod vm;

use std::path::Path;

use anyhow::Context as _;

use crate::{
    bpf::{AttachMode, InFlightMode, MirrorChoice},
    model::Symbols,
};

/// How the KVM programs attach, and what patched guests read: the options
/// `stat`, `top` and `serve` share.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct KvmArgs {
    /// Attach the KVM programs as raw tracepoints (offsets from BTF), as
    /// classic tracepoints (offsets from tracefs), or raw where possible.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach: AttachMode,
    /// Where vCPU threads' exits in flight are kept: task storage (Linux
    /// 5.12+, the default where possible) or hash maps by thread id.
    #[arg(long, value_enum, default_value_t = InFlightMode::Auto, hide = true)]
    pub in_flight: InFlightMode,
    /// With a KVM carrying exitprof's patch: each guest reads its own VM's
    /// exits (vm), every guest the whole host's (host: every tenant's
    /// activity, only where guests may see it), or no mirror (off).
    #[arg(long, value_enum, default_value_t = MirrorChoice::Vm, value_name = "SCOPE")]
    pub guest_mirror: MirrorChoice,
}

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
