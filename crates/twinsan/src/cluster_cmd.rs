//! The cluster commands: `twinsan status`, `cluster start|stop`, `node standby|unstandby`,
//! `resource move|clear|cleanup` and `target ls`, all through the local node's admin socket.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use twinsan_node::admin;
use twinsan_node::api::{ClusterStatus, Request, ResourceStatus, Response};
use twinsan_node::config::ClusterConfig;

use crate::volume_cmd::format_status;
use crate::Global;

/// `twinsan status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print the view as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `twinsan cluster ...`.
#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// Let NODE (default: this node) run resources again and rejoin the cluster.
    Start {
        /// The node.
        node: Option<String>,
    },
    /// Move every resource off NODE (default: this node), then take it out of the cluster (OFFLINE).
    Stop {
        /// The node.
        node: Option<String>,
    },
}

/// `twinsan resource ...`.
#[derive(clap::Subcommand, Debug)]
pub enum ResourceCommand {
    /// Move the stack RESOURCE belongs to (volume, VIP, target, LUNs) to NODE; without NODE, away from where it
    /// runs now. Stays in force until `resource clear`.
    Move {
        /// A volume, VIP, target or LUN resource (as `twinsan status` lists them).
        resource: String,
        /// The node to move it to.
        node: Option<String>,
    },
    /// Remove what `resource move` left; the stack then stays where it is (stickiness).
    Clear {
        /// The resource.
        resource: String,
    },
    /// Forget the failures of RESOURCE (of every resource without one) on both nodes.
    Cleanup {
        /// The resource.
        resource: Option<String>,
    },
}

/// `twinsan target ...`.
#[derive(clap::Subcommand, Debug)]
pub enum TargetCommand {
    /// The targets, their LUNs and portals as a tree, like `targetcli ls /`.
    Ls,
    /// Serve the configured target IQN on PORTAL(s), on this node, while all its LUNs' volumes are Primary here
    /// (manual mode, for an outside cluster manager: what `ocf:twinsan:target` runs). It is then no longer served
    /// at the node's own address; a demotion of one of its volumes stops it.
    #[command(after_help = TARGET_START_EXAMPLES)]
    Start {
        /// The target's IQN, as in the config.
        iqn: String,
        /// ADDR[:PORT] (port 3260 when left out), e.g. the virtual IP that ocf:heartbeat:IPaddr2 holds; repeat
        /// for more portals.
        #[arg(long, required = true, value_name = "ADDR[:PORT]", value_parser = crate::address::iscsi_portal)]
        portal: Vec<std::net::SocketAddr>,
    },
    /// Serve the target IQN nowhere on this node (manual mode), until `target start`.
    Stop {
        /// The target's IQN.
        iqn: String,
    },
    /// Where this node serves the target IQN (manual mode). Exits 0 only while it is served (with --portal: on
    /// that portal, and a login there is answered), 1 otherwise, 3 when the node daemon does not answer.
    Status {
        /// The target's IQN.
        iqn: String,
        /// Also send a login for IQN to this portal (stopping at the security stage: no session is made).
        #[arg(long, value_name = "ADDR[:PORT]", value_parser = crate::address::iscsi_portal)]
        portal: Option<std::net::SocketAddr>,
        /// Print JSON: {"iqn", "mode": automatic|started|stopped, "portals", and with --portal "login":
        /// answered|no-target|no-answer}.
        #[arg(long)]
        json: bool,
    },
}

/// `twinsan target start --help`'s examples.
const TARGET_START_EXAMPLES: &str = "\
Examples:
  twinsan target start iqn.2025-01.org.twinsan:vol0 --portal 198.18.0.100
      serve it on the VIP, port 3260 (its volumes are Primary here)
  twinsan target status iqn.2025-01.org.twinsan:vol0 --portal 198.18.0.100 --json
      what the OCF agent's monitor runs";

/// The config and the admin socket of the node `--node` names (or whose address is on this machine).
pub fn socket(global: &Global) -> anyhow::Result<(ClusterConfig, PathBuf)> {
    let config = ClusterConfig::load(&global.config)?;
    let node = config.this_node(global.node.as_deref())?;
    let socket = config.admin_socket(node);
    Ok((config, socket))
}

fn ask(socket: &std::path::Path, request: Request) -> anyhow::Result<()> {
    if let Some(message) = crate::volume_cmd::send(socket, &request)? {
        println!("{message}");
    }
    Ok(())
}

fn cluster_status(socket: &std::path::Path) -> anyhow::Result<ClusterStatus> {
    match admin::request(socket, &Request::ClusterStatus)? {
        Response::Cluster { status } => Ok(*status),
        Response::Error { message } => anyhow::bail!(message),
        _ => anyhow::bail!("the node daemon answered the status request without a cluster view"),
    }
}

/// `twinsan status [--json]`.
pub fn status(global: &Global, args: StatusArgs) -> anyhow::Result<()> {
    let (_, socket) = socket(global)?;
    let status = cluster_status(&socket)?;
    let text = if args.json {
        serde_json::to_string_pretty(&status).context("formatting the status")? + "\n"
    } else {
        format_cluster(&status)
    };
    let mut out = std::io::stdout();
    match out.write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// `twinsan cluster start|stop`.
pub fn cluster(global: &Global, cmd: ClusterCommand) -> anyhow::Result<()> {
    let (_, socket) = socket(global)?;
    let request = match cmd {
        ClusterCommand::Start { node } => Request::ClusterRun { node, stop: false },
        ClusterCommand::Stop { node } => Request::ClusterRun { node, stop: true },
    };
    ask(&socket, request)
}

/// `twinsan node standby|unstandby`.
pub fn standby(global: &Global, node: String, standby: bool) -> anyhow::Result<()> {
    let (_, socket) = socket(global)?;
    ask(&socket, Request::Standby { node, standby })
}

/// `twinsan node reload`: the daemon re-reads the config file it was started with.
pub fn reload(global: &Global) -> anyhow::Result<()> {
    let (_, socket) = socket(global)?;
    ask(&socket, Request::Reload)
}

/// `twinsan resource ...`.
pub fn resource(global: &Global, cmd: ResourceCommand) -> anyhow::Result<()> {
    let (_, socket) = socket(global)?;
    let request = match cmd {
        ResourceCommand::Move { resource, node } => Request::Move { resource, node },
        ResourceCommand::Clear { resource } => Request::Clear { resource },
        ResourceCommand::Cleanup { resource } => Request::Cleanup { resource },
    };
    ask(&socket, request)
}

/// `twinsan target ls`.
pub fn target(global: &Global, cmd: TargetCommand) -> anyhow::Result<()> {
    match cmd {
        TargetCommand::Ls => {
            let (config, socket) = socket(global)?;
            let status = cluster_status(&socket)?;
            print!("{}", format_target_tree(&config, &status));
            Ok(())
        }
        TargetCommand::Start { iqn, portal } => crate::target_cmd::start(global, iqn, portal),
        TargetCommand::Stop { iqn } => crate::target_cmd::stop(global, iqn),
        TargetCommand::Status { iqn, portal, json } => {
            crate::target_cmd::status(global, iqn, portal, json)
        }
    }
}

/// The node list without a cluster manager: no membership to be Online or OFFLINE in, so this node is itself and a
/// peer is what its replication links say of it, per volume.
fn manual_node_list(s: &ClusterStatus) -> String {
    let mut out = String::new();
    for n in &s.nodes {
        if n.name == s.node {
            out += &format!(
                "  * {}: this node (no cluster membership in manual mode)\n",
                n.name
            );
            continue;
        }
        let links: Vec<(&str, &str)> = s
            .volumes
            .iter()
            .flat_map(|v| v.peers.iter().map(move |p| (v.name.as_str(), p)))
            .filter(|(_, p)| p.node == n.name)
            .map(|(v, p)| (v, p.connection.as_str()))
            .collect();
        let connected: Vec<&str> = links
            .iter()
            .filter(|(_, c)| *c == "Connected")
            .map(|(v, _)| *v)
            .collect();
        let seen = if links.is_empty() {
            "no volume replicates to it".to_owned()
        } else if connected.is_empty() {
            let states: Vec<String> = links.iter().map(|(v, c)| format!("{v} {c}")).collect();
            format!("not reachable over replication ({})", states.join(", "))
        } else {
            format!(
                "reachable over replication ({} Connected)",
                connected.join(", ")
            )
        };
        out += &format!("  * {}: {seen}\n", n.name);
    }
    out
}

fn bracket(nodes: &[String]) -> String {
    if nodes.is_empty() {
        "[ ]".into()
    } else {
        format!("[ {} ]", nodes.join(" "))
    }
}

/// Where a resource runs, as `pcs status` says it: `Started node1`, `FAILED node2`, `Stopped`.
fn placement(r: &ResourceStatus) -> String {
    let mut parts: Vec<String> = r.started.iter().map(|n| format!("Started {n}")).collect();
    parts.extend(r.failed.iter().map(|n| format!("FAILED {n}")));
    if parts.is_empty() {
        "Stopped".into()
    } else {
        parts.join(", ")
    }
}

/// The cluster view in the layout of `pcs status`, then each volume as `twinsan volume status` shows it.
pub fn format_cluster(s: &ClusterStatus) -> String {
    let mut out = format!("Cluster name: {}\n", s.cluster);
    out += "Cluster Summary:\n";
    out += &format!("  * Stack: twinsan (as seen from {})\n", s.node);
    out += &format!("  * Quorum: {}\n", s.quorum);
    if let Some(w) = &s.witness {
        let vote = w.vote.as_deref().unwrap_or("nobody");
        let reach = if w.reachable {
            "reachable"
        } else {
            "UNREACHABLE"
        };
        out += &format!(
            "  * Witness: {} ({reach}), vote held by {vote}\n",
            w.address
        );
    }
    out += &format!("  * {} nodes configured\n", s.nodes.len());
    out += &format!(
        "  * {} resource instances configured\n",
        s.resources
            .iter()
            .map(|r| if r.kind == "volume" { 2 } else { 1 })
            .sum::<usize>()
    );
    if !s.managed {
        out += "  * manual mode: no cluster manager runs; roles change by `twinsan volume primary|secondary`\n";
    }
    if let Some(warning) = &s.config_warning {
        out += &format!("  * WARNING: {warning}\n");
    }
    out += "\nNode List:\n";
    if !s.managed {
        out += &manual_node_list(s);
    }
    let online: Vec<String> = s
        .nodes
        .iter()
        .filter(|n| n.online && !n.standby && s.managed)
        .map(|n| n.name.clone())
        .collect();
    // In manual mode there is no membership: a peer is shown by what replication knows of it (above), not OFFLINE.
    let offline: Vec<String> = s
        .nodes
        .iter()
        .filter(|n| !n.online && s.managed)
        .map(|n| n.name.clone())
        .collect();
    for n in s.nodes.iter().filter(|n| n.standby) {
        if n.online {
            out += &format!("  * Node {}: standby\n", n.name);
        }
    }
    if !online.is_empty() {
        out += &format!("  * Online: {}\n", bracket(&online));
    }
    if !offline.is_empty() {
        out += &format!("  * OFFLINE: {}\n", bracket(&offline));
    }
    for n in s.nodes.iter().filter(|n| n.stopped) {
        out += &format!(
            "  * Node {}: stopped by `twinsan cluster stop` (`twinsan cluster start {}` brings it back)\n",
            n.name, n.name
        );
    }
    out += "\nFull List of Resources:\n";
    for r in &s.resources {
        if r.kind == "volume" {
            out += &format!("  * Clone Set: {0}-clone [{0}] (promotable):\n", r.name);
            if !r.promoted.is_empty() {
                out += &format!("    * Promoted: {}\n", bracket(&r.promoted));
            }
            if !r.unpromoted.is_empty() {
                out += &format!("    * Unpromoted: {}\n", bracket(&r.unpromoted));
            }
            let stopped: Vec<String> = s
                .nodes
                .iter()
                .filter(|n| !r.started.contains(&n.name))
                .map(|n| n.name.clone())
                .collect();
            if !stopped.is_empty() {
                out += &format!("    * Stopped: {}\n", bracket(&stopped));
            }
        } else {
            out += &format!("  * {}\t({}):\t {}\n", r.name, r.agent, placement(r));
        }
        if let Some(why) = &r.last_error {
            out += &format!("    * last error: {why}\n");
        }
    }
    if !s.failed_actions.is_empty() {
        out += "\nFailed Resource Actions:\n";
        for a in &s.failed_actions {
            out += &format!("  * {a}\n");
        }
    }
    if !s.constraints.is_empty() {
        out += "\nConstraints:\n";
        for c in &s.constraints {
            out += &format!("  * {c}\n");
        }
    }
    if !s.properties.is_empty() {
        out += "\nCluster Properties:\n";
        for (k, v) in &s.properties {
            out += &format!("  {k}: {v}\n");
        }
    }
    if !s.volumes.is_empty() {
        out += &format!("\nVolumes (on {}):\n", s.node);
        for v in &s.volumes {
            out += &format_status(v);
        }
    }
    out
}

/// One line of the tree: `PREFIX o- name ....... [info]`, dotted out to a fixed width as targetcli does. The
/// prefix holds, per ancestor, `| ` when siblings follow it and two spaces when not.
fn tree_line(prefix: &str, name: &str, info: &str) -> String {
    let head = format!("{prefix}o- {name} ");
    let tail = format!(" [{info}]");
    let width: usize = 78;
    let dots = width.saturating_sub(head.len() + tail.len()).max(3);
    format!("{head}{}{tail}\n", ".".repeat(dots))
}

/// The targets as a tree like `targetcli ls /`: each target with its portal group, ACLs, LUNs (with the volume
/// behind each and where it is Primary) and portal (with where it is served).
pub fn format_target_tree(config: &ClusterConfig, s: &ClusterStatus) -> String {
    let mut out = tree_line("", "/", "...");
    out += &tree_line("  ", "iscsi", &format!("Targets: {}", config.targets.len()));
    let find = |name: &str| s.resources.iter().find(|r| r.name == name);
    let served = |name: &str| {
        find(name)
            .map(placement)
            .unwrap_or_else(|| "not managed".into())
    };
    for (ti, t) in config.targets.iter().enumerate() {
        let volume = t.lun.first().map(|l| l.volume.as_str()).unwrap_or("");
        let primary = find(volume)
            .and_then(|r| r.promoted.first().cloned())
            .unwrap_or_else(|| "nowhere".into());
        // Prefixes of the target, its portal group, the groups in it (acls, luns, portals) and their entries.
        let target = "    ";
        let tpg = format!(
            "{target}{}",
            if ti + 1 < config.targets.len() {
                "| "
            } else {
                "  "
            }
        );
        let group = format!("{tpg}  ");
        let listed = format!("{group}| ");
        let last = format!("{group}  ");
        out += &tree_line(target, &t.iqn, "TPGs: 1");
        // targetcli's words: CHAP set on the portal group (one user for every initiator) is tpg-auth.
        let acls = if t.allow.is_empty() {
            "gen-acls"
        } else {
            "no-gen-acls"
        };
        let auth = match (&t.chap_user, &t.mutual_chap_user) {
            (None, _) => "no-auth",
            (Some(_), None) => "tpg-auth, 1-way auth",
            (Some(_), Some(_)) => "tpg-auth, mutual auth",
        };
        out += &tree_line(&tpg, "tpg1", &format!("{acls}, {auth}"));
        out += &tree_line(&group, "acls", &format!("ACLs: {}", t.allow.len()));
        for a in &t.allow {
            out += &tree_line(&listed, a, "Mapped LUNs: all");
        }
        out += &tree_line(&group, "luns", &format!("LUNs: {}", t.lun.len()));
        for l in &t.lun {
            out += &tree_line(
                &listed,
                &format!("lun{}", l.lun),
                &format!(
                    "{} (replicated) Primary on {primary}, {}",
                    l.volume,
                    served(&format!("{}-lun{}", l.volume, l.lun))
                ),
            );
        }
        out += &tree_line(&group, "portals", "Portals: 1");
        out += &tree_line(
            &last,
            &std::net::SocketAddr::new(t.vip, t.port).to_string(),
            &format!("virtual IP, {}", served(&format!("{volume}-target"))),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinsan_node::api::NodeStatus;

    fn res(name: &str, kind: &str, started: &[&str]) -> ResourceStatus {
        ResourceStatus {
            name: name.into(),
            kind: kind.into(),
            agent: format!("twinsan:{kind}"),
            volume: "vol0".into(),
            detail: String::new(),
            started: started.iter().map(|s| s.to_string()).collect(),
            failed: vec![],
            last_error: None,
            fail_counts: Default::default(),
            promoted: if kind == "volume" {
                vec!["node1".into()]
            } else {
                vec![]
            },
            unpromoted: if kind == "volume" {
                vec!["node2".into()]
            } else {
                vec![]
            },
        }
    }

    fn sample(online2: bool) -> ClusterStatus {
        ClusterStatus {
            cluster: "demo".into(),
            node: "node1".into(),
            managed: true,
            quorum: "partition with quorum (2 of 2 votes)".into(),
            witness: None,
            nodes: vec![
                NodeStatus {
                    name: "node1".into(),
                    online: true,
                    standby: false,
                    stopped: false,
                    protocol: None,
                },
                NodeStatus {
                    name: "node2".into(),
                    online: online2,
                    standby: false,
                    stopped: false,
                    protocol: None,
                },
            ],
            resources: vec![
                res("vol0", "volume", &["node1", "node2"]),
                res("vol0-vip", "vip", &["node1"]),
                res("vol0-target", "target", &["node1"]),
                res("vol0-lun1", "lun", &["node1"]),
            ],
            failed_actions: vec![],
            constraints: vec![],
            notes: vec![],
            volumes: vec![],
            properties: vec![("resource-stickiness".into(), "100".into())],
            config_warning: None,
        }
    }

    #[test]
    fn status_in_the_layout_of_pcs_status() {
        let text = format_cluster(&sample(true));
        assert!(text.starts_with("Cluster name: demo\n"), "{text}");
        assert!(
            text.contains("Node List:\n  * Online: [ node1 node2 ]\n"),
            "{text}"
        );
        assert!(!text.contains("OFFLINE"), "{text}");
        assert!(text.contains("Full List of Resources:\n"), "{text}");
        assert!(
            text.contains(
                "  * Clone Set: vol0-clone [vol0] (promotable):\n    * Promoted: [ node1 ]\n    * Unpromoted: [ node2 ]\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  * vol0-vip\t(twinsan:vip):\t Started node1\n"),
            "{text}"
        );
        assert!(
            text.contains("  * vol0-lun1\t(twinsan:lun):\t Started node1\n"),
            "{text}"
        );
        assert!(
            text.contains("Cluster Properties:\n  resource-stickiness: 100\n"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_resource_says_why() {
        let mut s = sample(true);
        s.resources[2].started.clear();
        s.resources[3].started.clear();
        s.resources[3].failed = vec!["node1".into()];
        s.resources[3].last_error = Some(
            "start failed on node1: cannot serve iqn.2025-08.local.twinsan:vol0 at 127.0.0.10:3260: cannot listen \
             on 127.0.0.10:3260: Address already in use (os error 98) (failure 3 in a row; next try 800ms after it)"
                .into(),
        );
        let text = format_cluster(&s);
        assert!(
            text.contains(
                "  * vol0-target\t(twinsan:target):\t Stopped\n  * vol0-lun1\t(twinsan:lun):\t FAILED node1\n    \
                 * last error: start failed on node1: cannot serve"
            ),
            "{text}"
        );
        assert!(text.contains("Address already in use"), "{text}");
    }

    #[test]
    fn an_offline_node_is_listed_as_offline() {
        let text = format_cluster(&sample(false));
        assert!(
            text.contains("  * Online: [ node1 ]\n  * OFFLINE: [ node2 ]\n"),
            "{text}"
        );
    }
}
