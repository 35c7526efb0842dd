//! `twinsan volume ...`: talk to the local node over its admin socket.

use crate::Global;

/// `twinsan volume ...`.
#[derive(clap::Subcommand, Debug)]
pub enum VolumeCommand {
    /// Show a volume (all volumes without a name), like `drbdadm status`.
    Status {
        volume: Option<String>,
        /// One JSON object per volume.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(_global: &Global, _cmd: VolumeCommand) -> anyhow::Result<()> {
    anyhow::bail!("twinsan volume is not built yet")
}
