//! The errors of this crate. Each variant's text is what the admin reads; it names the field at fault.

/// An input the scheduler refuses: the configuration and the state disagree, so no decision taken from them
/// could be explained.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The state lists no node at all.
    #[error("state.node: no node is listed")]
    NoNodes,
    /// A name is empty.
    #[error("{field}: the name is empty")]
    EmptyName {
        /// The field, as a path.
        field: String,
    },
    /// Two nodes have the same name.
    #[error("state.node: node {node} is listed twice")]
    DuplicateNode {
        /// The repeated name.
        node: String,
    },
    /// Two resources (volumes, VIPs, targets, LUNs) have the same name.
    #[error("config.volume: resource name {resource} is used twice")]
    DuplicateResource {
        /// The repeated name.
        resource: String,
    },
    /// A field names a node that is not in `state.node`.
    #[error("{field}: no node is named {node}")]
    UnknownNode {
        /// The field, as a path.
        field: String,
        /// The name it gives.
        node: String,
    },
    /// A field names a resource that no volume stack configures.
    #[error("{field}: no resource is named {resource}")]
    UnknownResource {
        /// The field, as a path.
        field: String,
        /// The name it gives.
        resource: String,
    },
    /// A field names a volume that is not configured.
    #[error("{field}: no volume is named {volume}")]
    UnknownVolume {
        /// The field, as a path.
        field: String,
        /// The name it gives.
        volume: String,
    },
    /// The state has two entries for the same thing on the same node.
    #[error("{field}: given twice")]
    DuplicateEntry {
        /// The field, as a path.
        field: String,
    },
    /// A witness vote is reported while no witness is configured.
    #[error("state.witness_vote: {node} holds a witness vote but config.options.witness is false")]
    WitnessNotConfigured {
        /// The node said to hold it.
        node: String,
    },
    /// A resource entry says a volume is Started: a volume's running state is its role.
    #[error("{field}: a volume is not Started or Stopped; its role is in state.volume (this entry may only carry failures, status Stopped or Failed)")]
    VolumeStarted {
        /// The field, as a path.
        field: String,
    },
}

/// A heartbeat the membership refuses, or a membership configuration it cannot run with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The datagram is not the size of a heartbeat.
    #[error("heartbeat: {len} bytes, a heartbeat is {expected}")]
    WrongLength {
        /// The datagram's length.
        len: usize,
        /// The length of a heartbeat.
        expected: usize,
    },
    /// The datagram does not start with the heartbeat magic: not a twinsan heartbeat.
    #[error("heartbeat: bad magic, not a twinsan heartbeat")]
    BadMagic,
    /// The heartbeat's format version is not one this node speaks.
    #[error("heartbeat: format version {version} is not supported (this node speaks {supported})")]
    UnsupportedVersion {
        /// The version in the heartbeat.
        version: u8,
        /// The version this node speaks.
        supported: u8,
    },
    /// The reserved byte is not zero.
    #[error("heartbeat: reserved byte is {value}, not 0")]
    ReservedNotZero {
        /// Its value.
        value: u8,
    },
    /// The heartbeat belongs to another cluster (two clusters sharing a network, or a misconfigured cluster id).
    #[error("heartbeat from cluster {cluster_id}, this node is in cluster {expected}")]
    WrongCluster {
        /// The cluster id in the heartbeat.
        cluster_id: u64,
        /// This node's cluster id.
        expected: u64,
    },
    /// The heartbeat comes from a node id that is not a configured peer.
    #[error("heartbeat from node {node}, which is not a configured peer")]
    UnknownNode {
        /// The node id in the heartbeat.
        node: u8,
    },
    /// The heartbeat carries this node's own id: a loop in the network, or two nodes configured with one id.
    #[error("heartbeat carries this node's own id {node}: a network loop, or two nodes configured with the same id")]
    OwnNodeId {
        /// The id.
        node: u8,
    },
    /// The driver passed a link number that is not configured.
    #[error("heartbeat on link {link}, but only links 0 to {last} are configured")]
    UnknownLink {
        /// The link it arrived on.
        link: u8,
        /// The last configured link.
        last: u8,
    },
    /// The heartbeat was sent on one link and arrived on another: the links are crossed.
    #[error(
        "heartbeat sent on link {sent_on} arrived on link {link}: the cluster links are crossed"
    )]
    CrossedLinks {
        /// The link it arrived on.
        link: u8,
        /// The link the peer sent it on.
        sent_on: u8,
    },
    /// The number of links is not 1 to 4.
    #[error("membership.links: {links}, expected 1 to 4")]
    LinkCount {
        /// The configured number.
        links: u8,
    },
    /// No peer is configured.
    #[error("membership.peers: no peer is configured")]
    NoPeers,
    /// A peer is listed twice.
    #[error("membership.peers: node {node} is listed twice")]
    DuplicatePeer {
        /// The repeated id.
        node: u8,
    },
    /// A peer has this node's own id.
    #[error("membership.peers: node {node} is this node")]
    PeerIsSelf {
        /// The id.
        node: u8,
    },
    /// The heartbeat interval is zero.
    #[error("membership.heartbeat_interval: must be more than zero")]
    ZeroInterval,
    /// The detection timeout is not longer than the heartbeat interval, so every peer would flap.
    #[error("membership.detection_timeout: {timeout_ms} ms must be longer than the heartbeat interval ({interval_ms} ms)")]
    TimeoutTooShort {
        /// The detection timeout.
        timeout_ms: u128,
        /// The heartbeat interval.
        interval_ms: u128,
    },
    /// A pause threshold not above the heartbeat interval would take every ordinary gap for a pause.
    #[error("membership.pause_after: {pause_ms} ms must be longer than the heartbeat interval ({interval_ms} ms)")]
    PauseTooShort {
        /// The pause threshold.
        pause_ms: u128,
        /// The heartbeat interval.
        interval_ms: u128,
    },
}

/// A witness datagram that is refused or ignored, or a witness configuration that cannot run. No reply is sent
/// for a refused datagram.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WitnessError {
    /// The datagram is not the size of the message expected.
    #[error("witness: {len} bytes, expected {expected}")]
    WrongLength {
        /// The datagram's length.
        len: usize,
        /// The length of the message expected.
        expected: usize,
    },
    /// The datagram does not start with the witness magic: not a twinsan witness message.
    #[error("witness: bad magic, not a twinsan witness message")]
    BadMagic,
    /// The message's format version is not one this program speaks.
    #[error(
        "witness: format version {version} is not supported (this program speaks {min}..={max}; a release \
         talks only to the release before it: docs/upgrade.md)"
    )]
    UnsupportedVersion {
        /// The version in the message.
        version: u8,
        /// The lowest version this program speaks.
        min: u8,
        /// The highest version this program speaks.
        max: u8,
    },
    /// A reply where a request was expected, or the other way round (a reflected datagram).
    #[error("witness: message kind {kind}, expected {expected} (1 request, 2 reply)")]
    WrongKind {
        /// The kind in the message.
        kind: u8,
        /// The kind expected here.
        expected: u8,
    },
    /// The MAC does not verify: the sender does not know the cluster's secret, or the datagram was damaged.
    #[error("witness: bad MAC: the sender does not have this cluster's secret, or the datagram was damaged")]
    BadMac,
    /// An authenticated message with a field no correct peer sends.
    #[error("witness: field {field} has the invalid value {value}")]
    Malformed {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The message belongs to another cluster that shares the secret (a misconfigured cluster name).
    #[error("witness: message of cluster {cluster_id}, this is cluster {expected}")]
    WrongCluster {
        /// The cluster id in the message.
        cluster_id: u64,
        /// This side's cluster id.
        expected: u64,
    },
    /// A request from an older incarnation of a node than one already answered: a datagram from before the
    /// node's restart, or the node's incarnation went backwards.
    #[error("witness: node {node} incarnation {incarnation} is older than incarnation {known} already answered")]
    StaleIncarnation {
        /// The node.
        node: u8,
        /// The incarnation in the request.
        incarnation: u64,
        /// The newest incarnation answered.
        known: u64,
    },
    /// A request not newer than the last one answered for its node: a duplicate, reordered or replayed datagram.
    #[error(
        "witness: node {node} request seq {seq} is not newer than seq {last} already answered"
    )]
    NotNewer {
        /// The node.
        node: u8,
        /// The seq in the request.
        seq: u64,
        /// The last seq answered.
        last: u64,
    },
    /// A reply meant for another node (two nodes configured with one address, or a misrouted datagram).
    #[error("witness: reply for node {node}, this is node {expected}")]
    WrongNode {
        /// The node id in the reply.
        node: u8,
        /// This node's id.
        expected: u8,
    },
    /// A reply to a previous incarnation of this node.
    #[error("witness: reply for incarnation {incarnation}, this node runs incarnation {expected}")]
    WrongIncarnation {
        /// The incarnation in the reply.
        incarnation: u64,
        /// This node's incarnation.
        expected: u64,
    },
    /// A reply to no request waiting for one: a duplicate, a reply to a request too old to remember, or to one
    /// never sent.
    #[error("witness: reply to request seq {seq}, which is not waiting for a reply")]
    NotOutstanding {
        /// The seq in the reply.
        seq: u64,
    },
    /// The lease is zero, not whole milliseconds, or more than `u32::MAX` ms.
    #[error(
        "witness.lease: {lease_ns} ns; expected whole milliseconds, from 1 ms to 4294967295 ms"
    )]
    BadLease {
        /// The configured lease.
        lease_ns: u128,
    },
    /// Node id 0 is not a node.
    #[error("witness.node_id: 0 is not a node id")]
    NodeIdZero,
    /// The request interval is zero.
    #[error("witness.interval: must be more than zero")]
    ZeroInterval,
    /// The lease margin is zero, so a node's belief could outlive the witness's lease.
    #[error("witness.lease_margin: must be more than zero")]
    ZeroMargin,
    /// The freshness is not longer than the interval, so the witness would look unreachable between answers.
    #[error(
        "witness.fresh_for: {fresh_ms} ms must be longer than the interval ({interval_ms} ms)"
    )]
    FreshTooShort {
        /// The configured freshness.
        fresh_ms: u128,
        /// The interval.
        interval_ms: u128,
    },
}
