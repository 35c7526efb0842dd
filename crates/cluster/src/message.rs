//! What nodes tell each other over the cluster links besides heartbeats: each node's report (its volumes, its
//! resources, the cluster settings it holds) and the resource-level fencing exchange.
//!
//! The peer's states that feed decisions (a copy's disk state and role, a resource's status) decode into typed
//! enums ([`ReportDisk`], [`ReportRole`], [`ReportStatus`]) with every name any release sends; an unknown name is
//! a decode error that names the field and the value, so the message is dropped rather than read as a guess.
//!
//! Layout of a datagram (big-endian, the same in every version): magic `TSCM` (4), version (1: the lowest
//! version the sender speaks, see [`VERSIONS`]), sender node id (1), reserved 0 (2),
//! cluster id (8), sender incarnation (8), sequence (8), body length (4), the body (JSON), then HMAC-SHA256 (32)
//! over everything before it, keyed with the cluster's shared secret. A receiver accepts from each sender only
//! sequence numbers above the last it accepted within an incarnation (and any newer incarnation), so a recorded
//! datagram cannot be replayed.

use std::collections::BTreeSet;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::scheduler::{DiskState, Role, RunStatus};

/// The magic of a cluster message.
pub const MAGIC: [u8; 4] = *b"TSCM";
/// The message versions this build speaks. 1: the release before version ranges (b3ce254), which sends and
/// accepts only 1; 2: reports carry the lease exchange ([`Report::lease`]). A datagram's version byte is the
/// sender's lowest version, which is all the release before ranges reads; each report announces the whole range
/// ([`Report::versions`]), and a receiver speaks the highest version both have with that sender
/// ([`negotiate`]). A release talks to the release before it (docs/upgrade.md).
pub const VERSIONS: VersionRange = VersionRange { min: 1, max: 2 };

/// A feature of the cluster messages that not every version has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Reports carry the lease exchange and the sender grants and waits for leases (SPEC invariant 8).
    Leases,
}

impl Feature {
    /// The first version that has it.
    pub const fn since(self) -> u8 {
        match self {
            Feature::Leases => 2,
        }
    }
}

/// A range of message versions, both ends included, as a report announces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    /// The lowest version.
    pub min: u8,
    /// The highest version.
    pub max: u8,
}

impl std::fmt::Display for VersionRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..={}", self.min, self.max)
        }
    }
}

/// The message version two nodes agreed on: the highest both speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MessageVersion(u8);

impl MessageVersion {
    /// The version number.
    pub const fn number(self) -> u8 {
        self.0
    }

    /// Whether a peer speaking this version has `feature`.
    pub const fn speaks(self, feature: Feature) -> bool {
        self.0 >= feature.since()
    }
}

/// A peer's report announces no message version this node speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the peer speaks cluster message versions {theirs}, this node speaks {ours}: no version in common; a release \
     talks only to the release before it, upgrade one step at a time (docs/upgrade.md)"
)]
pub struct NoCommonVersion {
    /// The peer's versions.
    pub theirs: VersionRange,
    /// This node's versions ([`VERSIONS`]).
    pub ours: VersionRange,
}

/// The version to speak with a peer whose report announced `theirs` (`None`: a release before ranges, which
/// speaks 1 only): the highest in both ranges.
pub fn negotiate(theirs: Option<VersionRange>) -> Result<MessageVersion, NoCommonVersion> {
    let theirs = theirs.unwrap_or(VersionRange { min: 1, max: 1 });
    let low = VERSIONS.min.max(theirs.min);
    let high = VERSIONS.max.min(theirs.max);
    if low <= high {
        Ok(MessageVersion(high))
    } else {
        Err(NoCommonVersion {
            theirs,
            ours: VERSIONS,
        })
    }
}
/// The header before the body.
const HEADER_LEN: usize = 36;
/// The authentication tag after the body.
const TAG_LEN: usize = 32;
/// The largest datagram: what one UDP datagram carries without fragmentation trouble on any link we support.
pub const MAX_DATAGRAM: usize = 60_000;

/// Why a datagram was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    /// Too short or too long for its header's length.
    #[error("cluster message of {len} bytes: the length does not match its header")]
    Length {
        /// The datagram's size.
        len: usize,
    },
    /// Not a cluster message.
    #[error("not a cluster message (bad magic)")]
    Magic,
    /// A version this node does not speak.
    #[error(
        "cluster message of version {0}: this node speaks versions {VERSIONS} (a release talks only to the \
         release before it: docs/upgrade.md)"
    )]
    Version(u8),
    /// Another cluster's message.
    #[error("cluster message from another cluster (id {0:#x})")]
    OtherCluster(u64),
    /// The tag does not match: a wrong secret or a forged or damaged datagram.
    #[error("cluster message from node {0} failed authentication (wrong shared secret?)")]
    BadTag(u8),
    /// The body is not a message.
    #[error("cluster message from node {node}: bad body: {why}")]
    Body {
        /// The sender.
        node: u8,
        /// What the parser said.
        why: String,
    },
}

/// A datagram's envelope, after authentication.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// The sender's node id.
    pub node_id: u8,
    /// The sender's incarnation.
    pub incarnation: u64,
    /// The sender's sequence number within the incarnation.
    pub seq: u64,
    /// What it says.
    pub message: Message,
}

/// What one node tells another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Message {
    /// The sender's state, sent every heartbeat interval (boxed: it is much larger than the other messages).
    Report(Box<Report>),
    /// Resource-level fencing: mark your copy of `volume` Outdated (the sender's data is newer).
    Fence {
        /// The request's id, echoed in the reply.
        id: u64,
        /// The volume.
        volume: String,
        /// The sender's generation identifiers: current, bitmap, history.
        generations: Vec<u64>,
    },
    /// The answer to [`Message::Fence`].
    FenceReply {
        /// The request's id.
        id: u64,
        /// The volume.
        volume: String,
        /// Outdated, or why not.
        outcome: Result<(), String>,
    },
}

/// A node's report of itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The node left the cluster (`cluster stop`): it runs nothing and counts as OFFLINE.
    pub stopped: bool,
    /// The node is shutting down: it hands its resources over (counts as standby) before it goes.
    #[serde(default)]
    pub leaving: bool,
    /// Its copy of each volume.
    pub volumes: Vec<VolumeReport>,
    /// Its resources: running, failed, fail counts.
    pub resources: Vec<ResourceReport>,
    /// The cluster settings it holds (the newer copy wins on the receiver).
    pub settings: Settings,
    /// Its failed actions, as `twinsan status` lists them.
    #[serde(default)]
    pub failed_actions: Vec<String>,
    /// The lease exchange (`twinsan_cluster::lease`); absent from a node of a release before leases.
    #[serde(default)]
    pub lease: Option<LeaseReport>,
    /// The message versions the sender speaks ([`VERSIONS`]); absent from a release before ranges (1 only).
    #[serde(default)]
    pub versions: Option<VersionRange>,
    /// A hash of the sender's running config (`config::reload::config_hash`); absent from a node of a release
    /// before reload. `twinsan status` warns while the two nodes' hashes differ.
    #[serde(default)]
    pub config_hash: Option<String>,
}

/// The lease part of a report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseReport {
    /// The sender's clock, in milliseconds: the receiver echoes it when it grants.
    pub stamp: u64,
    /// The newest stamp of the receiver's that the sender has, if it grants the receiver a lease.
    pub echo: Option<u64>,
    /// The receiver's incarnation that `echo` was stamped by: an echo for an earlier run of the receiver
    /// (whose clock had another origin) is no grant.
    pub echo_for: u64,
    /// The volumes the grant covers.
    pub volumes: Vec<String>,
}

/// Declares an enum sent as one of fixed names: serialized as the name, and decoded only from those names; any
/// other is an error naming the report field and the value.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident, $field:literal, $what:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The name on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value of a name on the wire; an unknown name is an error that says which field it was in.
            pub fn from_name(name: &str) -> Result<$name, UnknownName> {
                match name {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownName {
                        field: $field,
                        what: $what,
                        value: other.to_string(),
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
                $name::from_name(&name).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A name in a report that this release does not know (the report is refused, not read as a guess).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: unknown {what} {value:?}")]
pub struct UnknownName {
    /// The report field, as `volumes[].disk`.
    pub field: &'static str,
    /// What the field holds.
    pub what: &'static str,
    /// The name received.
    pub value: String,
}

named_enum!(
    /// A copy's disk state as reports name it: DRBD's names, all of `twinsan_replication::state::DiskState` (the
    /// same eight in b3ce254).
    ReportDisk, "volumes[].disk", "disk state", {
        /// No local disk.
        Diskless => "Diskless",
        /// The disk is being attached.
        Attaching => "Attaching",
        /// Detached after an I/O error.
        Failed => "Failed",
        /// Not a usable image.
        Inconsistent => "Inconsistent",
        /// Known older than the peer's.
        Outdated => "Outdated",
        /// The peer's disk, not known (never a local state).
        DUnknown => "DUnknown",
        /// Consistent, newest not known.
        Consistent => "Consistent",
        /// The newest data.
        UpToDate => "UpToDate",
    }
);

impl ReportDisk {
    /// What the scheduler makes of the state: a failed disk is as good as none; a disk still attaching, or a
    /// peer's disk not known, is not known.
    pub const fn scheduler(self) -> DiskState {
        match self {
            ReportDisk::UpToDate => DiskState::UpToDate,
            ReportDisk::Outdated => DiskState::Outdated,
            ReportDisk::Inconsistent => DiskState::Inconsistent,
            ReportDisk::Consistent => DiskState::Consistent,
            ReportDisk::Diskless | ReportDisk::Failed => DiskState::Diskless,
            ReportDisk::Attaching | ReportDisk::DUnknown => DiskState::Unknown,
        }
    }
}

named_enum!(
    /// A copy's role as reports name it.
    ReportRole, "volumes[].role", "role", {
        /// Promoted.
        Primary => "Primary",
        /// Up, not promoted.
        Secondary => "Secondary",
    }
);

impl ReportRole {
    /// The scheduler's role.
    pub const fn scheduler(self) -> Role {
        match self {
            ReportRole::Primary => Role::Primary,
            ReportRole::Secondary => Role::Secondary,
        }
    }
}

named_enum!(
    /// A resource's status as reports name it.
    ReportStatus, "resources[].status", "resource status", {
        /// Running.
        Started => "started",
        /// Not running.
        Stopped => "stopped",
        /// Its last start or monitor failed.
        Failed => "failed",
    }
);

impl ReportStatus {
    /// The scheduler's status.
    pub const fn scheduler(self) -> RunStatus {
        match self {
            ReportStatus::Started => RunStatus::Started,
            ReportStatus::Stopped => RunStatus::Stopped,
            ReportStatus::Failed => RunStatus::Failed,
        }
    }
}

impl From<RunStatus> for ReportStatus {
    fn from(status: RunStatus) -> ReportStatus {
        match status {
            RunStatus::Started => ReportStatus::Started,
            RunStatus::Stopped => ReportStatus::Stopped,
            RunStatus::Failed => ReportStatus::Failed,
        }
    }
}

/// One volume on the reporting node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeReport {
    /// The volume.
    pub volume: String,
    /// Its disk state (DRBD's name).
    pub disk: ReportDisk,
    /// `Primary` or `Secondary`.
    pub role: ReportRole,
    /// Its replication link is connected.
    pub connected: bool,
    /// Its generation identifiers, `[current, bitmap, history...]`.
    #[serde(default)]
    pub generations: Vec<u64>,
    /// How long it has been Primary, in milliseconds, while it is.
    #[serde(default)]
    pub primary_for_ms: Option<u64>,
}

/// One resource on the reporting node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceReport {
    /// The resource.
    pub resource: String,
    /// `started`, `stopped` or `failed`.
    pub status: ReportStatus,
    /// Failures since the last cleanup.
    pub fail_count: u32,
    /// Seconds since the last failure.
    pub last_failure_ago_s: Option<u64>,
}

/// The cluster's settings: what admins set (standby, `cluster stop`, moves) and what fencing recorded. Each node
/// holds a copy; a change raises `version` (and names its `origin`), and the copy with the higher
/// `(version, origin)` wins wherever the two meet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Raised by every change.
    pub version: u64,
    /// The id of the node that made the change.
    pub origin: u8,
    /// Nodes in standby.
    pub standby: BTreeSet<String>,
    /// Nodes stopped by `cluster stop`.
    pub stopped: BTreeSet<String>,
    /// `resource move` preferences and bans.
    pub locations: Vec<Location>,
    /// `(volume, node)`: copies marked Outdated by resource-level fencing while their node was out of reach;
    /// never promoted until they have resynced.
    pub fenced: BTreeSet<(String, String)>,
    /// The last `resource cleanup`.
    pub cleanup: Cleanup,
}

/// A location preference left by `resource move`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// The resource.
    pub resource: String,
    /// The node.
    pub node: String,
    /// Prefer (true) or ban (false).
    pub prefer: bool,
}

/// A `resource cleanup`: every node forgets the failures of `resource` (all, without one) once it sees a
/// generation above the last it applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleanup {
    /// Raised by each cleanup.
    pub generation: u64,
    /// The resource, or all.
    pub resource: Option<String>,
}

impl Settings {
    /// Whether `other` is newer than this copy.
    pub fn older_than(&self, other: &Settings) -> bool {
        (other.version, other.origin) > (self.version, self.origin)
    }
}

type HmacSha256 = Hmac<Sha256>;

fn tag(secret: &[u8], bytes: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length; the error case cannot happen.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(b"twinsan cluster message v1");
    mac.update(bytes);
    mac
}

/// Encodes `message` for sending; `None` if it does not fit in one datagram.
pub fn encode(
    secret: &[u8],
    cluster_id: u64,
    node_id: u8,
    incarnation: u64,
    seq: u64,
    message: &Message,
) -> Option<Vec<u8>> {
    let body = serde_json::to_vec(message).ok()?;
    if HEADER_LEN + body.len() + TAG_LEN > MAX_DATAGRAM {
        return None;
    }
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TAG_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSIONS.min);
    out.push(node_id);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&cluster_id.to_be_bytes());
    out.extend_from_slice(&incarnation.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    let t = tag(secret, &out).finalize().into_bytes();
    out.extend_from_slice(&t);
    Some(out)
}

/// Whether `bytes` looks like a cluster message (rather than a heartbeat).
pub fn is_message(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// Checks and decodes a datagram of cluster `cluster_id`.
pub fn decode(secret: &[u8], cluster_id: u64, bytes: &[u8]) -> Result<Envelope, MessageError> {
    let length = MessageError::Length { len: bytes.len() };
    if bytes.len() < HEADER_LEN + TAG_LEN {
        return Err(length);
    }
    if bytes[0..4] != MAGIC {
        return Err(MessageError::Magic);
    }
    if bytes[4] < VERSIONS.min || bytes[4] > VERSIONS.max {
        return Err(MessageError::Version(bytes[4]));
    }
    let node_id = bytes[5];
    let u64_at = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_be_bytes(word)
    };
    let their_cluster = u64_at(8);
    if their_cluster != cluster_id {
        return Err(MessageError::OtherCluster(their_cluster));
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&bytes[32..36]);
    let body_len = u32::from_be_bytes(len) as usize;
    if bytes.len() != HEADER_LEN + body_len + TAG_LEN || bytes[6..8] != [0, 0] {
        return Err(length);
    }
    let (signed, their_tag) = bytes.split_at(HEADER_LEN + body_len);
    tag(secret, signed)
        .verify_slice(their_tag)
        .map_err(|_| MessageError::BadTag(node_id))?;
    let message =
        serde_json::from_slice(&signed[HEADER_LEN..]).map_err(|e| MessageError::Body {
            node: node_id,
            why: e.to_string(),
        })?;
    Ok(Envelope {
        node_id,
        incarnation: u64_at(16),
        seq: u64_at(24),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn sample() -> Message {
        let mut settings = Settings {
            version: 7,
            origin: 2,
            ..Settings::default()
        };
        settings.standby.insert("node1".into());
        settings.fenced.insert(("vol0".into(), "node2".into()));
        settings.locations.push(Location {
            resource: "vol0".into(),
            node: "node2".into(),
            prefer: true,
        });
        Message::Report(Box::new(Report {
            stopped: false,
            leaving: false,
            config_hash: Some("0123456789abcdef".into()),
            volumes: vec![VolumeReport {
                volume: "vol0".into(),
                disk: ReportDisk::UpToDate,
                role: ReportRole::Primary,
                connected: true,
                generations: vec![0x1001, 0, 0x0a00],
                primary_for_ms: Some(1500),
            }],
            resources: vec![ResourceReport {
                resource: "vol0-vip".into(),
                status: ReportStatus::Started,
                fail_count: 1,
                last_failure_ago_s: Some(3),
            }],
            settings,
            failed_actions: vec!["vol0-vip_monitor_2000 on node1 'gone'".into()],
            lease: Some(LeaseReport {
                stamp: 12_345,
                echo: Some(6_789),
                echo_for: 99,
                volumes: vec!["vol0".into()],
            }),
            versions: Some(VERSIONS),
        }))
    }

    /// A report of the release before leases (no `lease`, no generations) still decodes: the mixed pair of a
    /// rolling upgrade keeps talking.
    #[test]
    fn a_report_without_the_lease_fields_decodes() {
        let mut old = serde_json::to_value(sample()).expect("json");
        old.as_object_mut().expect("object").remove("lease");
        let volume = &mut old["volumes"][0];
        volume
            .as_object_mut()
            .expect("object")
            .remove("generations");
        volume
            .as_object_mut()
            .expect("object")
            .remove("primary_for_ms");
        let message: Message = serde_json::from_value(old).expect("old report");
        let Message::Report(report) = message else {
            panic!("not a report")
        };
        assert_eq!(report.lease, None);
        assert!(report.volumes[0].generations.is_empty());
    }

    /// A report as the release before version ranges (b3ce254) sends it: version byte 1, its JSON fields only.
    fn b3ce254_datagram(version: u8) -> Vec<u8> {
        datagram(version, &b3ce254_body("UpToDate", "Primary", "started"))
    }

    /// b3ce254's report body with the given disk state, role and resource status names.
    fn b3ce254_body(disk: &str, role: &str, status: &str) -> Vec<u8> {
        format!(
            r#"{{"type":"report","stopped":false,"leaving":false,"volumes":[{{"volume":"vol0","disk":"{disk}","role":"{role}","connected":true}}],"resources":[{{"resource":"vol0-vip","status":"{status}","fail_count":0,"last_failure_ago_s":null}}],"settings":{{"version":3,"origin":1,"standby":[],"stopped":[],"locations":[],"fenced":[],"cleanup":{{"generation":0,"resource":null}}}},"failed_actions":[]}}"#
        )
        .into_bytes()
    }

    /// An authenticated datagram of cluster 9 from node 2 carrying `body`.
    fn datagram(version: u8, body: &[u8]) -> Vec<u8> {
        let mut out = b"TSCM".to_vec();
        out.extend_from_slice(&[version, 2, 0, 0]);
        out.extend_from_slice(&9u64.to_be_bytes());
        out.extend_from_slice(&77u64.to_be_bytes());
        out.extend_from_slice(&4u64.to_be_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        let t = tag(SECRET, &out).finalize().into_bytes();
        out.extend_from_slice(&t);
        out
    }

    /// Every disk state, role and resource status b3ce254 sends (its `DiskState::as_str`, its role and
    /// `run_status_name` names) decodes to the value it names, and this build sends the same names.
    #[test]
    fn every_name_of_the_previous_release_decodes() {
        let disks = [
            "Diskless",
            "Attaching",
            "Failed",
            "Inconsistent",
            "Outdated",
            "DUnknown",
            "Consistent",
            "UpToDate",
        ];
        assert_eq!(disks.len(), ReportDisk::ALL.len());
        for (disk, role, status) in disks.iter().flat_map(|d| {
            ["Primary", "Secondary"]
                .into_iter()
                .flat_map(move |r| ["started", "stopped", "failed"].map(|s| (*d, r, s)))
        }) {
            let env = decode(SECRET, 9, &datagram(1, &b3ce254_body(disk, role, status)))
                .unwrap_or_else(|e| panic!("{disk}/{role}/{status}: {e}"));
            let Message::Report(report) = env.message else {
                panic!("not a report")
            };
            assert_eq!(report.volumes[0].disk.as_str(), disk);
            assert_eq!(report.volumes[0].role.as_str(), role);
            assert_eq!(report.resources[0].status.as_str(), status);
            let again = serde_json::to_value(&*report).expect("json");
            assert_eq!(again["volumes"][0]["disk"], disk);
            assert_eq!(again["volumes"][0]["role"], role);
            assert_eq!(again["resources"][0]["status"], status);
        }
    }

    /// What the scheduler makes of each disk state a peer reports.
    #[test]
    fn reported_disk_states_map_to_the_scheduler_s() {
        use DiskState as S;
        let expected = [
            (ReportDisk::Diskless, S::Diskless),
            (ReportDisk::Attaching, S::Unknown),
            (ReportDisk::Failed, S::Diskless),
            (ReportDisk::Inconsistent, S::Inconsistent),
            (ReportDisk::Outdated, S::Outdated),
            (ReportDisk::DUnknown, S::Unknown),
            (ReportDisk::Consistent, S::Consistent),
            (ReportDisk::UpToDate, S::UpToDate),
        ];
        assert_eq!(expected.len(), ReportDisk::ALL.len());
        for (disk, state) in expected {
            assert_eq!(disk.scheduler(), state, "{disk}");
        }
    }

    /// A name no release sends is a decode error naming the field and the value: the report is dropped, the
    /// peer's state is not guessed.
    #[test]
    fn an_unknown_state_name_is_refused_with_its_field() {
        for (body, field) in [
            (
                b3ce254_body("Frozen", "Primary", "started"),
                r#"volumes[].disk: unknown disk state "Frozen""#,
            ),
            (
                b3ce254_body("UpToDate", "primary", "started"),
                r#"volumes[].role: unknown role "primary""#,
            ),
            (
                b3ce254_body("UpToDate", "Primary", "Started"),
                r#"resources[].status: unknown resource status "Started""#,
            ),
        ] {
            let error = decode(SECRET, 9, &datagram(1, &body)).unwrap_err();
            let MessageError::Body { node: 2, why } = &error else {
                panic!("not a body error: {error}")
            };
            assert!(why.starts_with(field), "{why}");
            assert!(error.to_string().contains(field), "{error}");
        }
    }

    #[test]
    fn versions_a_report_of_the_previous_release_decodes_and_speaks_1() {
        let env = decode(SECRET, 9, &b3ce254_datagram(1)).expect("b3ce254's report");
        let Message::Report(report) = env.message else {
            panic!("not a report")
        };
        assert_eq!(report.versions, None);
        assert_eq!(report.lease, None);
        let version = negotiate(report.versions).expect("1 in common");
        assert_eq!(version.number(), 1);
        assert!(!version.speaks(Feature::Leases));
    }

    /// b3ce254 takes a datagram of version byte 1 only and reads its report with serde, which skips fields it
    /// does not know: the structs below are its report's fields (as it declares them), so what this build sends
    /// must parse into them.
    #[test]
    fn versions_what_this_build_sends_the_previous_release_reads() {
        #[allow(dead_code)]
        #[derive(Deserialize)]
        #[serde(tag = "type", rename_all = "kebab-case")]
        enum OldMessage {
            Report(OldReport),
        }
        #[allow(dead_code)]
        #[derive(Deserialize)]
        struct OldReport {
            stopped: bool,
            #[serde(default)]
            leaving: bool,
            volumes: Vec<OldVolume>,
            resources: Vec<OldResource>,
            settings: Settings,
            #[serde(default)]
            failed_actions: Vec<String>,
        }
        #[allow(dead_code)]
        #[derive(Deserialize)]
        struct OldVolume {
            volume: String,
            disk: String,
            role: String,
            connected: bool,
        }
        #[allow(dead_code)]
        #[derive(Deserialize)]
        struct OldResource {
            resource: String,
            status: String,
            fail_count: u32,
            last_failure_ago_s: Option<u64>,
        }
        let bytes = encode(SECRET, 9, 1, 100, 5, &sample()).expect("fits");
        assert_eq!(bytes[4], 1, "the version byte b3ce254 accepts");
        let body = &bytes[HEADER_LEN..bytes.len() - TAG_LEN];
        let OldMessage::Report(old) = serde_json::from_slice(body).expect("b3ce254 reads it");
        assert_eq!(old.volumes.len(), 1);
    }

    #[test]
    fn versions_new_with_new_next_and_no_overlap() {
        let Message::Report(report) = sample() else {
            panic!("not a report")
        };
        assert_eq!(report.versions, Some(VERSIONS));
        let new = negotiate(report.versions).expect("common");
        assert_eq!(new.number(), 2);
        assert!(new.speaks(Feature::Leases));
        assert_eq!(
            negotiate(Some(VersionRange { min: 2, max: 3 })).map(MessageVersion::number),
            Ok(2)
        );
        let error = negotiate(Some(VersionRange { min: 3, max: 4 })).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the peer speaks cluster message versions 3..=4, this node speaks 1..=2: no version in common; a \
             release talks only to the release before it, upgrade one step at a time (docs/upgrade.md)"
        );
        // A datagram whose lowest version is above this node's range.
        let error = decode(SECRET, 9, &b3ce254_datagram(3)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "cluster message of version 3: this node speaks versions 1..=2 (a release talks only to the \
             release before it: docs/upgrade.md)"
        );
    }

    #[test]
    fn round_trip() {
        let bytes = encode(SECRET, 9, 1, 100, 5, &sample()).expect("fits");
        let env = decode(SECRET, 9, &bytes).expect("decodes");
        assert_eq!(
            env,
            Envelope {
                node_id: 1,
                incarnation: 100,
                seq: 5,
                message: sample()
            }
        );
    }

    #[test]
    fn wrong_secret_and_other_cluster_are_refused() {
        let bytes = encode(SECRET, 9, 1, 100, 5, &sample()).expect("fits");
        assert_eq!(
            decode(b"another secret, just as long....", 9, &bytes),
            Err(MessageError::BadTag(1))
        );
        assert_eq!(
            decode(SECRET, 8, &bytes),
            Err(MessageError::OtherCluster(9))
        );
    }

    #[test]
    fn a_too_large_message_is_not_encoded() {
        let message = Message::Fence {
            id: 1,
            volume: "x".repeat(MAX_DATAGRAM),
            generations: vec![],
        };
        assert!(encode(SECRET, 9, 1, 1, 1, &message).is_none());
    }

    proptest! {
        #[test]
        fn any_changed_byte_is_refused(at in 0usize..400, xor in 1u8..=255) {
            let bytes = encode(SECRET, 9, 1, 100, 5, &sample()).expect("fits");
            let mut bad = bytes.clone();
            let at = at % bad.len();
            bad[at] ^= xor;
            prop_assert!(decode(SECRET, 9, &bad).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(SECRET, 9, &bytes);
        }

        #[test]
        fn fence_messages_round_trip(id in any::<u64>(), gens in proptest::collection::vec(any::<u64>(), 0..6),
                                     refused in proptest::option::of("[a-z ]{0,40}")) {
            for message in [
                Message::Fence { id, volume: "vol0".into(), generations: gens.clone() },
                Message::FenceReply { id, volume: "vol0".into(), outcome: refused.clone().map_or(Ok(()), Err) },
            ] {
                let bytes = encode(SECRET, 3, 2, 1, id, &message).expect("fits");
                prop_assert_eq!(decode(SECRET, 3, &bytes).expect("decodes").message, message);
            }
        }
    }
}
