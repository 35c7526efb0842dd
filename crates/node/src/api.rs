//! What the admin socket carries: requests from `twinsan volume ...` to the local node and the node's answers,
//! one JSON object per line in each direction.
//!
//! The status objects are also what `volume status --json` prints, so their field names are a public interface.

use serde::{Deserialize, Serialize};

/// A request from the CLI to the node daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// The status of one volume, or of all when `volume` is `None`.
    Status { volume: Option<String> },
    /// Attach the disk and start connecting (`volume up`).
    Up { volume: String },
    /// Disconnect and detach (`volume down`).
    Down { volume: String },
    /// Give up the disk, staying connected (`volume detach`).
    Detach { volume: String },
    /// Open the disk again and attach it (`volume attach`).
    Attach { volume: String },
    /// `volume primary [--force]`.
    Primary { volume: String, force: bool },
    /// `volume secondary`.
    Secondary { volume: String },
    /// `volume connect [--discard-my-data]`.
    Connect {
        volume: String,
        discard_my_data: bool,
    },
    /// `volume disconnect`.
    Disconnect { volume: String },
    /// `volume verify`.
    Verify { volume: String },
    /// `volume invalidate`.
    Invalidate { volume: String },
    /// `volume new-current-uuid --clear-bitmap`.
    NewCurrentUuid { volume: String, clear_bitmap: bool },
    /// `volume resize [--size BYTES] [--assume-clean]`.
    Resize {
        volume: String,
        size_bytes: Option<u64>,
        assume_clean: bool,
    },
    /// Stream events: first one `exists` line per volume, then a `change` line for every change, until the
    /// client goes away.
    Events { volume: Option<String> },
    /// The cluster as this node sees it (`twinsan status`).
    ClusterStatus,
    /// `twinsan node reload` (and SIGHUP): re-read the config file the daemon was started with and apply the
    /// difference, or refuse the new config as a whole.
    Reload,
    /// `cluster stop [NODE]` (`stop: true`) or `cluster start [NODE]`; `None`: this node.
    ClusterRun { node: Option<String>, stop: bool },
    /// `node standby NODE` (`standby: true`) or `node unstandby NODE`.
    Standby { node: String, standby: bool },
    /// `resource move RESOURCE [NODE]`: prefer NODE, or without one ban the node it runs on now.
    Move {
        resource: String,
        node: Option<String>,
    },
    /// `resource clear RESOURCE`: remove what `move` left.
    Clear { resource: String },
    /// `resource cleanup [RESOURCE]`: forget failures (of every resource without one).
    Cleanup { resource: Option<String> },
    /// `target start IQN --portal ADDR:PORT...` (manual mode, for an outside cluster manager such as Pacemaker):
    /// serve the configured target IQN on these portals, here, while all its LUNs' volumes are Primary here.
    TargetStart { iqn: String, portals: Vec<String> },
    /// `target stop IQN`: serve it nowhere on this node (also not at the node's own address).
    TargetStop { iqn: String },
    /// `target status IQN`.
    TargetStatus { iqn: String },
}

/// The answer to a request other than `Events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    /// Done; `message` is a line for the admin, if there is something to say.
    Ok { message: Option<String> },
    /// The status of the volumes asked for.
    Status { volumes: Vec<VolumeStatus> },
    /// Refused or failed; `message` says why, in words an admin can act on.
    Error { message: String },
    /// The cluster view.
    Cluster { status: Box<ClusterStatus> },
    /// The answer to `TargetStatus`.
    Target { status: TargetServing },
}

/// Where a node serves one target: what `target status --json` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetServing {
    /// The target's IQN.
    pub iqn: String,
    /// `started` (by `target start`, on `portals`), `stopped` (by `target stop`), or `automatic` (manual mode's
    /// default: served at the node's own address while all its LUNs' volumes are Primary here).
    pub mode: TargetMode,
    /// The portals it is served on now (`ADDR:PORT`); empty when it is not served.
    pub portals: Vec<String>,
}

/// Who decides where a target is served on a manual-mode node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetMode {
    /// Served at the node's own address while its volumes are Primary here (no `target start|stop` yet).
    Automatic,
    /// `target start`: served on the portals given.
    Started,
    /// `target stop`, or its volume was demoted after a `target start`: served nowhere.
    Stopped,
}

/// The cluster as one node sees it: what `twinsan status --json` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The cluster's name.
    pub cluster: String,
    /// The node that answered.
    pub node: String,
    /// False in `manual` mode: no cluster manager runs, roles change by hand.
    pub managed: bool,
    /// Quorum as this node sees it, in words.
    pub quorum: String,
    /// The witness, when one is configured.
    pub witness: Option<WitnessStatus>,
    /// Every configured node.
    pub nodes: Vec<NodeStatus>,
    /// Every resource: per volume the volume, its VIP, its target and its LUNs.
    pub resources: Vec<ResourceStatus>,
    /// Failures recorded and not yet cleaned up, as `pcs status` lists them.
    pub failed_actions: Vec<String>,
    /// `resource move` preferences and bans in force.
    pub constraints: Vec<String>,
    /// The cluster's properties, as `pcs property` names them (`resource-stickiness`, `no-quorum-policy`, ...).
    #[serde(default)]
    pub properties: Vec<(String, String)>,
    /// Why the cluster did what it last did (the scheduler's notes).
    pub notes: Vec<String>,
    /// This node's volumes (replication state).
    pub volumes: Vec<VolumeStatus>,
    /// Set while the two nodes run configs that differ (their hashes, from the cluster messages): edit the
    /// file on both nodes and `twinsan node reload` each.
    #[serde(default)]
    pub config_warning: Option<String>,
}

/// The witness as a node sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WitnessStatus {
    /// Its address.
    pub address: String,
    /// Answering.
    pub reachable: bool,
    /// The node that holds its vote, if known.
    pub vote: Option<String>,
}

/// One node in the cluster view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its name.
    pub name: String,
    /// In the membership.
    pub online: bool,
    /// `node standby`.
    pub standby: bool,
    /// `cluster stop`: runs nothing and has left the membership.
    pub stopped: bool,
    /// For the peer: the cluster message version agreed on with it (docs/upgrade.md), once it reported.
    #[serde(default)]
    pub protocol: Option<u32>,
}

/// One resource in the cluster view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// Its name (`vol0`, `vol0-vip`, `vol0-target`, `vol0-lun1`).
    pub name: String,
    /// `volume`, `vip`, `target` or `lun`.
    pub kind: String,
    /// The agent, as `pcs status` shows it (`twinsan:vip`).
    pub agent: String,
    /// The volume whose stack it belongs to.
    pub volume: String,
    /// What it is: the address, the IQN and portal, the LUN number.
    pub detail: String,
    /// Nodes it runs on (for a volume: where it is up).
    pub started: Vec<String>,
    /// Nodes where it failed.
    pub failed: Vec<String>,
    /// For a volume: where it is Primary.
    pub promoted: Vec<String>,
    /// For a volume: where it is up and Secondary.
    pub unpromoted: Vec<String>,
    /// Why it failed: an action of the answering node that failed (kept until it succeeds or `resource cleanup`,
    /// with its retry), else the last failed action of a node where it is FAILED; `None` when nothing failed.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Its fail count on each node where it is not zero (failures since the last `resource cleanup`, as
    /// `pcs resource failcount show` counts them).
    #[serde(default)]
    pub fail_counts: std::collections::BTreeMap<String, u32>,
}

/// One volume on one node, as `volume status --json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeStatus {
    /// The volume's name.
    pub name: String,
    /// `Primary` or `Secondary`.
    pub role: String,
    /// The local disk: `UpToDate`, `Inconsistent`, `Outdated`, `Diskless`, ... (DRBD's names).
    pub disk: String,
    /// True while a split brain found on connect is unresolved.
    pub split_brain: bool,
    /// The volume's size in KiB: the size both nodes last agreed on (what the LUN shows).
    #[serde(default)]
    pub size_kib: u64,
    /// True while writes are suspended (fencing in progress, or no lease).
    #[serde(default)]
    pub suspended: bool,
    /// True while I/O is held because this Primary has no lease from the cluster (SPEC invariant 8).
    #[serde(default)]
    pub lease_hold: bool,
    /// The peer (one, in a two-node cluster).
    pub peers: Vec<PeerStatus>,
}

/// What a node knows of its peer for one volume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's node name.
    pub node: String,
    /// `StandAlone`, `Connecting`, `Connected`, `Disconnecting`.
    pub connection: String,
    /// `Primary`, `Secondary` or `Unknown`.
    pub role: String,
    /// The peer's disk (`DUnknown` while not connected).
    pub peer_disk: String,
    /// `Off`, `Established`, `SyncSource`, `SyncTarget`, `PausedSyncS`, `PausedSyncT`, `VerifyS`, `VerifyT`.
    pub replication: String,
    /// Percent done of the running resync or verify, two decimals; `None` when none runs.
    pub done: Option<f64>,
    /// Data this node knows differs from the peer's copy, in KiB.
    pub out_of_sync_kib: u64,
    /// Data sent by the resync since it started (this node as SyncSource), in KiB.
    pub resync_sent_kib: u64,
    /// Resync or verify rate over the last seconds, KiB/s; 0 when none runs.
    #[serde(default)]
    pub rate_kib_s: u64,
    /// Estimated seconds left for the running resync or verify.
    #[serde(default)]
    pub eta_s: Option<u64>,
    /// Blocks the last online verify found different, in KiB (marked out of sync, never repaired silently).
    #[serde(default)]
    pub verify_out_of_sync_kib: u64,
    /// Why the link is not up: what refused or broke the last connection (the peer's size, secret or data, a
    /// disconnect), or why this node cannot connect or listen; `None` while connected.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The replication protocol version agreed on with the peer (docs/upgrade.md), while connected; `None`
    /// otherwise, and from a node of a release before version ranges.
    #[serde(default)]
    pub protocol: Option<u32>,
}

/// One line of `volume events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventLine {
    /// `exists` for the initial state, `change` afterwards, `split-brain` when one is detected.
    pub kind: String,
    /// The volume's full status after the change.
    pub status: VolumeStatus,
    /// When the node saw it, UTC, RFC 3339 with microseconds (`2026-12-07T15:09:52.123456Z`); absent from a node
    /// of a release before timestamps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

impl EventLine {
    /// An event of `kind` seen now.
    pub fn now(kind: &str, status: VolumeStatus) -> EventLine {
        EventLine {
            kind: kind.to_string(),
            status,
            time: Some(timestamp(std::time::SystemTime::now())),
        }
    }
}

/// `at` as events show it: UTC, RFC 3339, microseconds.
pub fn timestamp(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}
