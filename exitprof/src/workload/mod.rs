//! The built-in workload VM (placeholder; being written).
use std::process::ExitCode;

/// Arguments of `exitprof vm`.
#[derive(clap::Args, Debug)]
pub struct VmArgs {}

/// Runs `exitprof vm`.
pub fn main(_args: &VmArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
