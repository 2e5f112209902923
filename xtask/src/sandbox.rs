//! The nested sandbox (placeholder; being written).

/// Arguments of `cargo xtask e2e`.
#[derive(clap::Args)]
pub struct E2eArgs {}

/// Runs the sandbox scenarios.
pub fn e2e(_args: &E2eArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
