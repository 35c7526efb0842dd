//! `twinsan node run`: the daemon of one cluster node.

use anyhow::Context;
use twinsan_node::config::ClusterConfig;

use crate::Global;

/// `twinsan node ...`.
#[derive(clap::Subcommand, Debug)]
pub enum NodeCommand {
    /// Run this node's daemon (what systemd starts): its volumes, and the iSCSI target of those it is Primary for.
    Run,
    /// Put NODE in standby: its resources move to the other node, and it runs none until `unstandby`.
    Standby {
        /// The node.
        node: String,
    },
    /// Let NODE run resources again.
    Unstandby {
        /// The node.
        node: String,
    },
    /// Make the running daemon of this node re-read its config file (as SIGHUP does): the file is checked as a
    /// whole against the running config; an invalid file, or a change that cannot be made live (a node's address
    /// or id, the [cluster] section, a volume's settings), is refused with the field named and nothing changes.
    Reload,
}

pub fn run(global: &Global, cmd: NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::Run => {
            let config = ClusterConfig::load(&global.config)?;
            let node = config.this_node(global.node.as_deref())?.name.clone();
            // The CHAP secret files are read once, here: a bad one stops the node before it touches a disk.
            let chap = config.load_chap()?;
            twinsan_node::daemon::run(config, chap, &node).with_context(|| format!("node {node}"))
        }
        NodeCommand::Standby { node } => crate::cluster_cmd::standby(global, node, true),
        NodeCommand::Unstandby { node } => crate::cluster_cmd::standby(global, node, false),
        NodeCommand::Reload => crate::cluster_cmd::reload(global),
    }
}
