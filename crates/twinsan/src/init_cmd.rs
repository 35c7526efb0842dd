//! `twinsan init DIR [--manual] [--size SIZE]`: a ready two-node cluster on this machine.

use std::path::PathBuf;

/// `twinsan init` arguments.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// The folder to write the config and the disks into (created if missing).
    pub dir: PathBuf,
    /// Nodes never change roles by themselves: promote and demote by hand (DRBD without a cluster manager).
    #[arg(long)]
    pub manual: bool,
    /// Size of the volume (K, M, G, T suffixes).
    #[arg(long, default_value = "1G")]
    pub size: String,
}

pub fn run(_args: InitArgs) -> anyhow::Result<()> {
    anyhow::bail!("twinsan init is not built yet")
}
