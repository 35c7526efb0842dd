//! `twinsan node run`: the daemon of one cluster node.

use crate::Global;

/// `twinsan node ...`.
#[derive(clap::Subcommand, Debug)]
pub enum NodeCommand {
    /// Run this node's daemon (what systemd starts).
    Run,
}

pub fn run(_global: &Global, _cmd: NodeCommand) -> anyhow::Result<()> {
    anyhow::bail!("twinsan node run is not built yet")
}
