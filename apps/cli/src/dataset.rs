//! `wtb dataset ...` (being written).

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum DatasetCommand {
    /// Per-category counts.
    Stats,
}

pub fn run(_command: DatasetCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
