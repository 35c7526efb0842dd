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

// TEMPORARY (admin-cli branch): a placeholder with the agreed signature so `twinsan volume create-md` compiles.
// The real `create_md` comes with `twinsan init` and replaces this function at merge.
/// Writes fresh metadata for `volume` on this node's disk; refuses existing metadata or a filesystem unless `force`.
pub fn create_md(_global: &crate::Global, volume: &str, _force: bool) -> anyhow::Result<()> {
    anyhow::bail!("twinsan volume create-md {volume}: not built yet on this branch")
}
