//! `exitprof guest`: inside a VM, the hypervisor's exit statistics from
//! the CPUID leaves of a KVM with exitprof's patch.
use std::process::ExitCode;

use crate::{
    guest::{Native, query},
    present::guest::render,
};

/// Arguments of `exitprof guest`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Runs inside a virtual machine whose host runs a KVM with exitprof's patch
(kernel-patch/, guest ABI 2) and `sudo exitprof stat`, `top` or `serve`.
By default it sees only its own VM's exits (the exits of its VMM process);
the host's operator can choose host-wide scope (--guest-mirror host), and
the report says which it reads. Cycles are at this guest's TSC frequency.
Every query is itself a CPUID exit, so the CPUID row includes this
command's own queries.

Examples:
  exitprof guest
  exitprof guest --all --json")]
pub struct GuestArgs {
    /// Also list reasons with no exits.
    #[arg(long)]
    pub all: bool,
    /// One JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `exitprof guest`.
///
/// # Errors
/// When the statistics cannot be read (one line, see [`GuestError`]).
pub fn main(args: &GuestArgs) -> anyhow::Result<ExitCode> {
    let report = query(&mut Native, args.all)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}
