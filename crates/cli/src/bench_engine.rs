//! `storeline bench engine` (being written).

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct EngineArgs {}

pub async fn run(_args: EngineArgs) -> Result<()> {
    anyhow::bail!("not written yet")
}
