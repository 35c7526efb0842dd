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
    /// Stream events: first one `exists` line per volume, then a `change` line for every change, until the
    /// client goes away.
    Events { volume: Option<String> },
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
    /// True while writes are suspended (fencing in progress).
    #[serde(default)]
    pub suspended: bool,
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
}

/// One line of `volume events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventLine {
    /// `exists` for the initial state, `change` afterwards, `split-brain` when one is detected.
    pub kind: String,
    /// The volume's full status after the change.
    pub status: VolumeStatus,
}
