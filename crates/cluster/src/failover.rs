//! The failover rules of one node: what it makes of its own state and its peer's report (the scheduler's input),
//! which of the scheduler's actions it may carry out now, its leases, and the resource-level fencing exchange.
//! Pure: the node's driver passes the time in (a [`Duration`] since the node started) with what it read from its
//! volumes, membership and witness link, and carries the answers out.
//!
//! # How the two nodes agree without a leader
//! Each node runs the same scheduler on the same kind of input ([`build_input`]): its own state, read directly,
//! and the peer's, from the peer's last report. Each carries out only its own actions, and of each volume's
//! ordered list only the leading actions that are its own ([`my_share`]): an action that comes after one of the
//! peer's waits until the peer's report shows the peer's part done. So the old Primary's stops and demotion
//! always happen (and are reported) before the new Primary promotes and adds the VIP.
//!
//! # The gates ([`gate`]), in order
//! 1. **Which side starts**: the leading actions of each stack that are this node's ([`my_share`]).
//! 2. **Witness settling**: with a witness, a node that takes over waits one detection timeout after its peer
//!    went OFFLINE — the peer, cut off on its side at about the same moment, has lost quorum by then and stopped —
//!    so promotions and starts are cut ([`settling`], [`without_starts`]); stops are never held back.
//! 3. **Held takeovers**: a promotion while the volume's replication link is down waits until the lease this node
//!    last granted the peer has run out and this node has listened for a detection timeout since its own last
//!    pause ([`hold_takeovers`]).
//! 4. **Retries**: a share that would retry a failed action before its time waits ([`due`]).
//! 5. **Start-up wait / unknown peer**: nothing runs while the peer is Online without a report, or has not been
//!    seen since this node started and the start-up wait ([`Timing::startup_wait`]) is not over
//!    ([`peer_unknown`]); nothing runs either once this node left the cluster.
//!
//! **Early loss** ([`early_loss`]): the peer's end of a replication link closed just now and every cluster link
//! has been silent for two heartbeat intervals: the peer is OFFLINE now, not at the detection timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::backoff::Retries;
use crate::lease::{LeaseGrantor, LeaseHolder};
use crate::membership::{Membership, Output as MemberOut};
use crate::message::{
    Feature, LeaseReport, Message, MessageVersion, Report, ReportDisk, ReportRole, ReportStatus,
    Settings,
};
use crate::scheduler::{
    Action, ClusterInput, ClusterOptions, ClusterState, DiskState, LocationKind,
    LocationPreference, NodeStatus, ResourceKind, ResourceStatus, Role, RunStatus, SchedulerConfig,
    VolumeStack, VolumeStatus,
};

/// A replication link the peer closed this recently counts for early loss.
pub const RECENT_CLOSE: Duration = Duration::from_secs(5);

/// Offset of the scheduler's clock in seconds, so that "seconds ago" never goes below zero.
pub const SCHEDULER_EPOCH_S: u64 = 1_000_000;

/// The cluster's timing, as the rules use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// The heartbeat (and report) interval.
    pub heartbeat: Duration,
    /// The detection timeout: a peer silent on every link this long is OFFLINE.
    pub detection: Duration,
}

impl Timing {
    /// How long a starting node waits for its peer before it acts alone (DRBD's wait-for-connection at boot:
    /// the peer may hold the newer data): five detection timeouts.
    pub fn startup_wait(self) -> Duration {
        self.detection * 5
    }

    /// How long every cluster link must have been silent for early loss: two heartbeat intervals.
    pub fn early_loss_silence(self) -> Duration {
        self.heartbeat * 2
    }
}

/// Seconds on the scheduler's clock at `now`.
pub fn scheduler_seconds(now: Duration) -> u64 {
    now.as_secs() + SCHEDULER_EPOCH_S
}

// ----- start-up wait, settling, early loss -----

/// The peer's state is unknown, so nothing may be acted on: it is Online but has not reported yet (it just came
/// up, or came back), or it has not been seen since this node started and the start-up wait is not over.
pub fn peer_unknown(
    peer_online: bool,
    reported: bool,
    seen_once: bool,
    now: Duration,
    timing: Timing,
) -> bool {
    (peer_online && !reported) || (!seen_once && now < timing.startup_wait())
}

/// Witness settling: with a witness, for one detection timeout after the peer went OFFLINE (at
/// `peer_offline_since`) nothing is promoted or started.
pub fn settling(
    witness: bool,
    peer_offline_since: Option<Duration>,
    now: Duration,
    timing: Timing,
) -> bool {
    witness && peer_offline_since.is_some_and(|t| now.saturating_sub(t) < timing.detection)
}

/// Early loss detection (membership rule 8): the peer closed a replication link less than [`RECENT_CLOSE`] ago
/// (`closed_ago`, one per volume that saw it) while it is Online here; it is declared gone if every cluster link
/// has been silent for [`Timing::early_loss_silence`]. The membership's outputs (a `PeerOffline` if it went).
pub fn early_loss(
    membership: &mut Membership,
    peer: u8,
    closed_ago: impl IntoIterator<Item = Duration>,
    now: Duration,
    timing: Timing,
) -> Vec<MemberOut> {
    let recent = closed_ago.into_iter().any(|ago| ago < RECENT_CLOSE);
    if !recent || !peer_online(membership, peer) {
        return Vec::new();
    }
    membership.peer_gone(peer, timing.early_loss_silence(), now)
}

/// The peer is Online in `membership`.
pub fn peer_online(membership: &Membership, peer: u8) -> bool {
    membership.view().iter().any(|m| m.node == peer && m.online)
}

/// With the peer OFFLINE on every cluster link after it was seen, a replication link silent this long is dead
/// too (a hung or cut-off peer sends no RST): at least the detection timeout and four replication pings.
pub fn replication_silence(
    peer_online: bool,
    seen_once: bool,
    timing: Timing,
    ping_interval: Duration,
) -> Option<Duration> {
    (!peer_online && seen_once).then(|| timing.detection.max(ping_interval * 4))
}

// ----- which side starts, holds, retries -----

/// `actions` cut, per volume, before the first action for which `at` holds: that action and every later one of
/// its volume are dropped; other volumes' actions stay.
pub fn cut_from(actions: Vec<Action>, mut at: impl FnMut(&Action) -> bool) -> Vec<Action> {
    let mut cut: BTreeSet<String> = BTreeSet::new();
    actions
        .into_iter()
        .filter(|a| {
            if cut.contains(a.volume()) {
                return false;
            }
            if at(a) {
                cut.insert(a.volume().to_string());
                return false;
            }
            true
        })
        .collect()
}

/// `actions` cut, per volume, before its first promotion or start.
pub fn without_starts(actions: Vec<Action>) -> Vec<Action> {
    cut_from(actions, |a| {
        matches!(a, Action::Promote { .. } | Action::Start { .. })
    })
}

/// Which side starts: the leading actions of each stack's list (stacks in `stacks`' order) that are `me`'s.
pub fn my_share<'a>(
    actions: &[Action],
    stacks: impl IntoIterator<Item = &'a str>,
    me: &str,
) -> Vec<Action> {
    let mut mine = Vec::new();
    for stack in stacks {
        for a in actions.iter().filter(|a| a.volume() == stack) {
            if a.node() != me {
                break;
            }
            mine.push(a.clone());
        }
    }
    mine
}

/// The verb the retries know an action by.
pub fn action_verb(action: &Action) -> &'static str {
    match action {
        Action::Promote { .. } => "promote",
        Action::Demote { .. } => "demote",
        Action::Start { .. } => "start",
        Action::Stop { .. } => "stop",
    }
}

/// `actions` without the volumes whose share holds an action that failed and waits for its retry.
pub fn due(actions: &[Action], retries: &Retries, now: Duration) -> Vec<Action> {
    let waiting: BTreeSet<&str> = actions
        .iter()
        .filter(|a| retries.wait(a.resource(), action_verb(a), now).is_some())
        .map(|a| a.volume())
        .collect();
    actions
        .iter()
        .filter(|a| !waiting.contains(a.volume()))
        .cloned()
        .collect()
}

/// Why a takeover waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The lease this node granted the peer runs for `wait` more.
    Lease {
        /// What is left of it.
        wait: Duration,
    },
    /// This node was paused: it listens for a detection timeout first.
    Paused,
}

/// The actions after [`hold_takeovers`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Takeovers {
    /// The actions, each held volume's cut before its promotion.
    pub actions: Vec<Action>,
    /// Every volume promoted while its replication link is down (held or not): the peer gets no new grant for
    /// these.
    pub taking_over: BTreeSet<String>,
    /// The volumes held, and why.
    pub held: BTreeMap<String, Hold>,
}

/// Held takeovers: a promotion while the volume's replication link is down (`connected` says it is up) takes
/// the volume over from the peer; it waits until the lease this node last granted the peer for that volume has
/// run out ([`LeaseGrantor::wait_left`]) and until this node's membership has `settled` (it listened for a
/// detection timeout since its own last pause). The actions of a waiting volume are cut before the promotion.
pub fn hold_takeovers(
    actions: Vec<Action>,
    connected: impl Fn(&str) -> bool,
    grantor: &LeaseGrantor,
    settled: bool,
    now: Duration,
) -> Takeovers {
    let mut taking_over = BTreeSet::new();
    let mut held = BTreeMap::new();
    for a in &actions {
        let Action::Promote { volume, .. } = a else {
            continue;
        };
        if connected(volume) {
            continue;
        }
        taking_over.insert(volume.clone());
        let wait = grantor.wait_left(volume, now);
        if !settled {
            held.insert(volume.clone(), Hold::Paused);
        } else if !wait.is_zero() {
            held.insert(volume.clone(), Hold::Lease { wait });
        }
    }
    let actions = if held.is_empty() {
        actions
    } else {
        cut_from(actions, |a| {
            matches!(a, Action::Promote { .. }) && held.contains_key(a.resource())
        })
    };
    Takeovers {
        actions,
        taking_over,
        held,
    }
}

/// What the gates look at besides the schedule.
#[derive(Clone, Copy, Debug)]
pub struct GateInput<'a> {
    /// This node's name.
    pub me: &'a str,
    /// The stacks, by name, in order.
    pub stacks: &'a [String],
    /// The cluster has a witness.
    pub witness: bool,
    /// When the peer went OFFLINE, while it is.
    pub peer_offline_since: Option<Duration>,
    /// This node's membership has settled ([`Membership::settled`]).
    pub settled: bool,
    /// The leases this node granted the peer.
    pub grantor: &'a LeaseGrantor,
    /// This node's failing actions.
    pub retries: &'a Retries,
    /// The peer's state is unknown ([`peer_unknown`]), judged on the snapshot the schedule was made from.
    pub peer_unknown: bool,
    /// This node has left the cluster (`cluster stop` done).
    pub left: bool,
    /// The timing.
    pub timing: Timing,
    /// Now.
    pub now: Duration,
}

/// What the gates let through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gated {
    /// This node's share after settling and the takeover holds (what it would do when allowed).
    pub share: Vec<Action>,
    /// What it does now: the share's volumes not waiting for a retry, and nothing while the peer's state is
    /// unknown or this node has left.
    pub run: Vec<Action>,
    /// The volumes being taken over ([`Takeovers::taking_over`]).
    pub taking_over: BTreeSet<String>,
    /// The takeovers held, and why.
    pub held: BTreeMap<String, Hold>,
}

/// Every gate between the schedule's `actions` and what this node carries out now, in the order of the module
/// documentation. `connected` says whether a volume's replication link is up.
pub fn gate(actions: &[Action], connected: impl Fn(&str) -> bool, g: &GateInput<'_>) -> Gated {
    let mut mine = my_share(actions, g.stacks.iter().map(String::as_str), g.me);
    if settling(g.witness, g.peer_offline_since, g.now, g.timing) {
        mine = without_starts(mine);
    }
    let takeovers = hold_takeovers(mine, connected, g.grantor, g.settled, g.now);
    let run = if g.peer_unknown || g.left {
        Vec::new()
    } else {
        due(&takeovers.actions, g.retries, g.now)
    };
    Gated {
        share: takeovers.actions,
        run,
        taking_over: takeovers.taking_over,
        held: takeovers.held,
    }
}

/// A promotion refused while the volume's replication link is up is the two nodes deciding at the same moment:
/// the volume arbitrated, nothing failed (not counted as a failure; the next schedule sees the peer's role).
pub fn raced(action: &Action, connected: bool) -> bool {
    matches!(action, Action::Promote { .. }) && connected
}

// ----- the scheduler's input -----

/// One of this node's volumes, as its driver reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalVolume {
    /// This copy's disk state.
    pub disk: ReportDisk,
    /// This copy's role.
    pub role: ReportRole,
    /// The replication link is connected.
    pub connected: bool,
    /// The peer's disk state, as the replication link tells it.
    pub peer_disk: ReportDisk,
    /// The peer's role, as the replication link tells it (while connected).
    pub peer_role: Option<ReportRole>,
    /// The generation identifiers, `[current, bitmap, history...]`.
    pub generations: Vec<u64>,
}

impl LocalVolume {
    /// Connected, both copies UpToDate: a copy fenced in the settings may be released.
    pub fn in_sync(&self) -> bool {
        self.connected
            && self.disk == ReportDisk::UpToDate
            && self.peer_disk == ReportDisk::UpToDate
    }
}

/// One of this node's resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResource {
    /// What it is.
    pub kind: ResourceKind,
    /// Its stack.
    pub volume: String,
    /// Whether it runs.
    pub status: RunStatus,
    /// Failures since the last cleanup.
    pub fail_count: u32,
    /// When it last failed.
    pub last_failure: Option<Duration>,
}

/// Who holds the witness vote, as this node's witness link says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vote {
    /// This node.
    Me,
    /// The peer.
    Peer,
}

/// What this node knows, for [`build_input`].
#[derive(Clone, Debug)]
pub struct NodeView<'a> {
    /// This node's name.
    pub me: &'a str,
    /// The peer's name.
    pub peer: &'a str,
    /// The scheduler's options.
    pub options: ClusterOptions,
    /// The stacks, in order.
    pub stacks: &'a [VolumeStack],
    /// The cluster settings this node holds.
    pub settings: &'a Settings,
    /// Now, since this node started.
    pub now: Duration,
    /// The peer is Online in the membership.
    pub peer_online: bool,
    /// The peer's last report (kept only while it is Online).
    pub peer_report: Option<&'a Report>,
    /// The peer has been Online since this node started.
    pub peer_seen_once: bool,
    /// This node left the cluster (`cluster stop` done).
    pub left: bool,
    /// This node is shutting down and hands its resources over.
    pub leaving: bool,
    /// Who holds the witness vote, if anyone (no witness: `None`).
    pub vote: Option<Vote>,
    /// This node's volumes.
    pub volumes: &'a BTreeMap<String, LocalVolume>,
    /// When each volume became Primary here.
    pub primary_since: &'a BTreeMap<String, Duration>,
    /// This node's resources.
    pub resources: &'a BTreeMap<String, LocalResource>,
    /// The timing.
    pub timing: Timing,
}

/// The scheduler's input and what else the executor needs from the same snapshot.
#[derive(Clone, Debug)]
pub struct Built {
    /// The input.
    pub input: ClusterInput,
    /// This node has left the cluster.
    pub left: bool,
    /// This node is stopped (`cluster stop`).
    pub stopped: bool,
    /// The peer's state is unknown: nothing may be acted on ([`peer_unknown`]).
    pub peer_unknown: bool,
}

/// Whether `report` says its node is Primary of `volume`.
pub fn reports_primary(report: Option<&Report>, volume: &str) -> bool {
    report.is_some_and(|r| {
        r.volumes
            .iter()
            .any(|x| x.volume == volume && x.role == ReportRole::Primary)
    })
}

/// The scheduler's input: this node's state read directly, the peer's from its report while it is Online and
/// not stopped — except a connected volume's peer copy, which the replication link tells first hand (the report
/// may be a heartbeat old). A peer's resource this node does not know is left out, and a volume is never
/// "started" (its role says it), whatever the report claims.
pub fn build_input(v: &NodeView<'_>) -> Built {
    let reported = v.peer_report.is_some();
    let peer_unknown = peer_unknown(v.peer_online, reported, v.peer_seen_once, v.now, v.timing);
    let settings = v.settings;
    let peer_online = v.peer_online && !v.peer_report.is_some_and(|r| r.stopped);
    let peer_leaving = v.peer_report.is_some_and(|r| r.leaving);
    let me_stopped = settings.stopped.contains(v.me);
    let now_s = scheduler_seconds(v.now);
    let ago_s = |t: Duration| now_s.saturating_sub(v.now.saturating_sub(t).as_secs());
    let locations = settings
        .locations
        .iter()
        .map(|l| LocationPreference {
            resource: l.resource.clone(),
            node: l.node.clone(),
            kind: if l.prefer {
                LocationKind::Prefer
            } else {
                LocationKind::Ban
            },
        })
        .collect();
    let nodes = vec![
        NodeStatus {
            name: v.me.to_string(),
            online: true,
            standby: me_stopped || v.leaving || settings.standby.contains(v.me),
        },
        NodeStatus {
            name: v.peer.to_string(),
            online: peer_online && !v.left,
            standby: peer_leaving
                || settings.standby.contains(v.peer)
                || settings.stopped.contains(v.peer),
        },
    ];
    let witness_vote = v.vote.map(|vote| match vote {
        Vote::Me => v.me.to_string(),
        Vote::Peer => v.peer.to_string(),
    });
    let report = v.peer_report.filter(|_| peer_online);
    let mut vols = Vec::new();
    for name in v
        .stacks
        .iter()
        .flat_map(|s| std::iter::once(&s.name).chain(&s.volumes))
    {
        let Some(local) = v.volumes.get(name) else {
            continue;
        };
        vols.push(VolumeStatus {
            volume: name.clone(),
            node: v.me.to_string(),
            disk: local.disk.scheduler(),
            role: local.role.scheduler(),
            connected: local.connected,
            fenced: settings.fenced.contains(&(name.clone(), v.me.to_string())),
            generations: local.generations.clone(),
            primary_since_s: v.primary_since.get(name).map(|&t| ago_s(t)),
        });
        let reported = report.and_then(|r| r.volumes.iter().find(|x| x.volume == *name));
        let peer_entry: Option<(DiskState, Role, bool)> = if local.connected {
            Some((
                local.peer_disk.scheduler(),
                match local.peer_role {
                    Some(ReportRole::Primary) => Role::Primary,
                    _ => Role::Secondary,
                },
                true,
            ))
        } else {
            reported.map(|x| (x.disk.scheduler(), x.role.scheduler(), x.connected))
        };
        if let Some((disk, role, connected)) = peer_entry {
            vols.push(VolumeStatus {
                volume: name.clone(),
                node: v.peer.to_string(),
                disk,
                role,
                connected,
                fenced: settings
                    .fenced
                    .contains(&(name.clone(), v.peer.to_string())),
                generations: reported.map(|x| x.generations.clone()).unwrap_or_default(),
                primary_since_s: reported
                    .and_then(|x| x.primary_for_ms)
                    .map(|ms| now_s.saturating_sub(ms / 1000)),
            });
        }
    }
    let mut resources = Vec::new();
    for (name, r) in v.resources {
        resources.push(ResourceStatus {
            resource: name.clone(),
            node: v.me.to_string(),
            status: r.status,
            fail_count: r.fail_count,
            last_failure_s: r.last_failure.map(ago_s),
        });
    }
    for r in report.iter().flat_map(|r| &r.resources) {
        let Some(known) = v.resources.get(&r.resource) else {
            continue;
        };
        let status = match r.status.scheduler() {
            RunStatus::Started if known.kind == ResourceKind::Volume => RunStatus::Stopped,
            status => status,
        };
        resources.push(ResourceStatus {
            resource: r.resource.clone(),
            node: v.peer.to_string(),
            status,
            fail_count: r.fail_count,
            last_failure_s: r.last_failure_ago_s.map(|ago| now_s.saturating_sub(ago)),
        });
    }
    Built {
        input: ClusterInput {
            config: SchedulerConfig {
                options: v.options.clone(),
                volumes: v.stacks.to_vec(),
                locations,
            },
            state: ClusterState {
                now_s,
                nodes,
                witness_vote,
                volumes: vols,
                resources,
            },
        },
        left: v.left,
        stopped: me_stopped,
        peer_unknown,
    }
}

/// Keeps when each volume became Primary here: `primaries` are the volumes Primary now.
pub fn track_primaries(
    primary_since: &mut BTreeMap<String, Duration>,
    primaries: &BTreeSet<String>,
    now: Duration,
) {
    primary_since.retain(|name, _| primaries.contains(name));
    for name in primaries {
        primary_since.entry(name.clone()).or_insert(now);
    }
}

// ----- leases -----

/// The alone lease: while the peer is Offline on every link and this node's membership has settled, until the
/// witness vote's belief ends (`witness`: `Some(vote_until)`), or without a witness until one `lease` after now
/// (so it runs out while the node is frozen).
pub fn alone_lease(
    peer_online: bool,
    settled: bool,
    witness: Option<Option<Duration>>,
    now: Duration,
    lease: Duration,
) -> Option<Duration> {
    if peer_online || !settled {
        return None;
    }
    match witness {
        Some(vote_until) => vote_until,
        None => Some(now + lease),
    }
}

/// The lease of `volume` until which this node may complete I/O: the peer's grant or the alone lease — or, with a
/// peer of the release before leases (`legacy_peer`, which grants nothing and does not wait), one `lease` from
/// now while it is Online and not Primary of the volume, as that release ran.
#[allow(clippy::too_many_arguments)]
pub fn lease_until(
    holder: &LeaseHolder,
    volume: &str,
    alone: Option<Duration>,
    legacy_peer: bool,
    peer_online: bool,
    peer_report: Option<&Report>,
    now: Duration,
    lease: Duration,
) -> Option<Duration> {
    if legacy_peer && peer_online && !reports_primary(peer_report, volume) {
        Some(now + lease)
    } else {
        holder.until(volume, alone)
    }
}

/// The volumes this node grants the peer a lease for in its next report: while it sees the peer (and has a stamp
/// of it to echo), those it is not Primary of and not taking over. `volumes` are `(name, primary here)`.
pub fn grants<'a>(
    have_peer_stamp: bool,
    peer_online: bool,
    volumes: impl IntoIterator<Item = (&'a str, bool)>,
    taking_over: &BTreeSet<String>,
) -> Vec<String> {
    if !have_peer_stamp || !peer_online {
        return Vec::new();
    }
    volumes
        .into_iter()
        .filter(|(name, primary)| !primary && !taking_over.contains(*name))
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Whether a message of `(incarnation, seq)` from the peer is new: above the last accepted (`seen`) within an
/// incarnation, or of a newer incarnation; a replayed or reordered one is not.
pub fn fresh(seen: Option<(u64, u64)>, incarnation: u64, seq: u64) -> bool {
    match seen {
        None => true,
        Some((inc, last)) => incarnation > inc || (incarnation == inc && seq > last),
    }
}

/// What a peer's report says about its leases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerLeases {
    /// The peer neither grants nor waits (a release before leases: message version 1, or no lease part).
    pub without_leases: bool,
    /// The peer's newest stamp with its incarnation, to echo when this node grants; `None`: keep the last.
    pub stamp: Option<(u64, u64)>,
}

/// Takes the lease part of a report from the peer's incarnation `sender`, in message `version`: a grant echoing a
/// stamp of this node's incarnation `me` goes into `holder` (an echo for an earlier run of this node, whose clock
/// had another origin, is no grant).
pub fn accept_leases(
    holder: &mut LeaseHolder,
    version: MessageVersion,
    lease: Option<&LeaseReport>,
    sender: u64,
    me: u64,
    now: Duration,
) -> PeerLeases {
    let Some(lease) = lease else {
        return PeerLeases {
            without_leases: true,
            stamp: None,
        };
    };
    if let (Some(echo), true) = (lease.echo, lease.echo_for == me) {
        holder.granted(echo, lease.volumes.iter().map(String::as_str), now);
    }
    PeerLeases {
        without_leases: !version.speaks(Feature::Leases),
        stamp: Some((sender, lease.stamp)),
    }
}

/// A stack promoted here counts as a failover when the promotion is of its first volume, with the replication
/// link down, and the peer — Online once since this node started — is lost.
pub fn is_failover(
    first_volume: bool,
    connected: bool,
    peer_seen_once: bool,
    peer_online: bool,
) -> bool {
    first_volume && !connected && peer_seen_once && !peer_online
}

// ----- settings -----

/// `settings` as a change made by this node (`me`) to its copy `current`: a version above both, this node the
/// origin.
pub fn changed_settings(current: &Settings, mut settings: Settings, me: u8) -> Settings {
    settings.version = current.version.max(settings.version) + 1;
    settings.origin = me;
    settings
}

/// Applies a `resource cleanup` carried by `settings` once (`applied` is the last generation applied): the
/// failures of its resource (or all) are forgotten — fail counts, last failures, retries and failed actions.
pub fn apply_cleanup(
    settings: &Settings,
    applied: &mut u64,
    resources: &mut BTreeMap<String, LocalResource>,
    retries: &mut Retries,
    failed_actions: &mut Vec<String>,
) {
    if settings.cleanup.generation <= *applied {
        return;
    }
    *applied = settings.cleanup.generation;
    let only = settings.cleanup.resource.as_deref();
    for (name, r) in resources.iter_mut() {
        if only.is_none_or(|only| only == name) {
            r.fail_count = 0;
            r.last_failure = None;
        }
    }
    retries.clear(only);
    failed_actions.retain(|a| only.is_some_and(|r| !a.starts_with(&format!("{r}_"))));
}

// ----- fencing -----

/// A fence request of one of this node's volumes, waiting for the peer's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingFence {
    /// The request's id.
    pub id: u64,
    /// The volume.
    pub volume: String,
    /// This node's generation identifiers.
    pub generations: Vec<u64>,
    /// When it was last sent.
    pub last_sent: Option<Duration>,
}

/// One round of [`Fences::drive`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FenceRound {
    /// Requests to send (again).
    pub send: Vec<Message>,
    /// Volumes whose peer is out of reach: assumed down (as DRBD's crm-fence-peer does), recorded as fenced in
    /// the settings ([`fence_unreachable`]), and their writes resume.
    pub unreachable: Vec<String>,
}

/// This node's fence requests to the peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fences {
    pending: Vec<PendingFence>,
    next_id: u64,
}

impl Fences {
    /// Nothing pending.
    pub fn new() -> Fences {
        Fences::default()
    }

    /// A volume asks to fence the peer (replacing an earlier request of the same volume); the request's id (the
    /// first is 1).
    pub fn request(&mut self, volume: &str, generations: Vec<u64>) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.pending.retain(|f| f.volume != volume);
        self.pending.push(PendingFence {
            id,
            volume: volume.to_string(),
            generations,
            last_sent: None,
        });
        id
    }

    /// The peer answered request `id`: its volume, if it was pending.
    pub fn answered(&mut self, id: u64) -> Option<String> {
        let pos = self.pending.iter().position(|f| f.id == id)?;
        Some(self.pending.remove(pos).volume)
    }

    /// The pending requests.
    pub fn pending(&self) -> &[PendingFence] {
        &self.pending
    }

    /// Drops the requests of volumes that reconnected or are gone (`moot`: the fence is moot); with the peer out of
    /// reach, answers the rest as unreachable; otherwise sends each again every `heartbeat`.
    pub fn drive(
        &mut self,
        now: Duration,
        peer_online: bool,
        heartbeat: Duration,
        moot: impl Fn(&str) -> bool,
    ) -> FenceRound {
        let mut round = FenceRound::default();
        self.pending.retain(|f| !moot(&f.volume));
        if !peer_online {
            round.unreachable = self.pending.drain(..).map(|f| f.volume).collect();
            return round;
        }
        for f in &mut self.pending {
            if f.last_sent
                .is_none_or(|t| now.saturating_sub(t) >= heartbeat)
            {
                f.last_sent = Some(now);
                round.send.push(Message::Fence {
                    id: f.id,
                    volume: f.volume.clone(),
                    generations: f.generations.clone(),
                });
            }
        }
        round
    }
}

/// `settings` with the copies of `peer` of the unreachable `volumes` recorded as fenced: not promoted before they
/// resync.
pub fn fence_unreachable(settings: &Settings, volumes: &[String], peer: &str) -> Settings {
    let mut settings = settings.clone();
    for volume in volumes {
        settings.fenced.insert((volume.clone(), peer.to_string()));
    }
    settings
}

/// What to do with the peer's request to mark this node's copy Outdated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceAnswer {
    /// This side of the replication link has not noticed the break yet: no answer (the peer asks again).
    NotYet,
    /// Refuse: the request is malformed.
    Refuse(String),
    /// Mark the copy Outdated against these generations, and answer with the outcome.
    Outdate,
}

/// The rule for a fence request carrying `generations` (`expected_len` identifiers) for a volume whose
/// replication link is `connected` here.
pub fn fence_request(connected: bool, generations: &[u64], expected_len: usize) -> FenceAnswer {
    if generations.len() != expected_len {
        FenceAnswer::Refuse("malformed generation identifiers".to_string())
    } else if connected {
        FenceAnswer::NotYet
    } else {
        FenceAnswer::Outdate
    }
}

/// The fenced copies in `settings` that may be released: their volume here is back in sync.
pub fn settled_fences(
    settings: &Settings,
    volumes: &BTreeMap<String, LocalVolume>,
) -> Vec<(String, String)> {
    settings
        .fenced
        .iter()
        .filter(|(volume, _)| volumes.get(volume).is_some_and(LocalVolume::in_sync))
        .cloned()
        .collect()
}

// ----- the VIPs -----

/// When to announce the VIPs this node holds again: when the peer may have drawn initiators to itself — it came
/// back Online (it may have held an address while frozen or cut off), or it stopped a VIP of a stack this node
/// runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipWatch {
    peer_vips: BTreeMap<String, bool>,
    peer_was_online: bool,
}

impl VipWatch {
    /// Nothing seen yet.
    pub fn new() -> VipWatch {
        VipWatch::default()
    }

    /// One look: the peer is `online`, the stacks' VIPs are `vips`, this node runs `ours`, the peer's report
    /// is `report`. The VIPs to announce again.
    pub fn round(
        &mut self,
        online: bool,
        vips: &[&str],
        ours: &BTreeSet<String>,
        report: Option<&Report>,
    ) -> Vec<String> {
        let theirs: BTreeMap<String, bool> = vips
            .iter()
            .map(|vip| {
                let running = report.is_some_and(|r| {
                    r.resources
                        .iter()
                        .any(|x| x.resource == *vip && x.status == ReportStatus::Started)
                });
                (vip.to_string(), running)
            })
            .collect();
        let came_back = online && !self.peer_was_online;
        self.peer_was_online = online;
        let mut announce = Vec::new();
        for vip in vips {
            let released = self.peer_vips.get(*vip).copied().unwrap_or(false)
                && !theirs.get(*vip).copied().unwrap_or(false);
            if ours.contains(*vip) && (came_back || released) {
                announce.push(vip.to_string());
            }
        }
        self.peer_vips = theirs;
        announce
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod sim;
