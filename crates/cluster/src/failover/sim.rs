//! A seeded simulation of two nodes running the failover rules with the real scheduler, membership, leases and
//! message codec in the loop, over a simulated network and a simulated replicated volume, through crashes and
//! restarts, freezes (a paused process keeps its state and its socket buffers), partitions, `standby` moves and
//! a witness that one node may lose.
//!
//! Each node does what the driver does: heartbeats and reports every interval (encoded and authenticated as on
//! the wire), the membership's outputs, the leases it grants and holds, and at each wake the executor round —
//! early loss, [`build_input`], the scheduler, [`gate`] — carrying out what the gates let through on the simulated
//! volume and resources.
//!
//! The oracles:
//! - **One server**: at no instant do two nodes serve the stack — running, not frozen, the target started, the
//!   volume Primary and its lease valid on the node's own clock — except across a partition without a witness,
//!   where the SPEC lets both sides write.
//! - **One target** (runs with neither freezes nor partitions): at no instant do two nodes run the stack's
//!   target: the old side's stops always come before the new side's starts (which side starts).
//! - **Takeovers by the rules**, checked on the simulation's own records, not the node's state: a promotion while
//!   the replication link is down comes a full takeover wait after the last lease this node granted the peer
//!   (held takeovers), a detection timeout after this node's last long pause, with a witness a detection timeout
//!   after it saw the peer go OFFLINE (witness settling), and — if it has not seen the peer since it started —
//!   after the start-up wait.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;
use crate::backoff::Retries;
use crate::lease::LeaseConfig;
use crate::membership::{MembershipConfig, Output};
use crate::message::{self, LeaseReport, ResourceReport, VolumeReport};
use crate::scheduler::{schedule, Fencing, NoQuorumPolicy};
use crate::test_rng::Rng;

const CLUSTER: u64 = 0x51_3e11;
const SECRET: &[u8] = b"the simulation's shared secret..";
const NAMES: [&str; 2] = ["node1", "node2"];
const STACK: &str = "vol0";
const TARGET: &str = "vol0-target";
const HEARTBEAT_MS: u64 = 200;
const DETECTION_MS: u64 = 1000;
/// A freeze at least this long is a pause the membership notices (its `pause_after` is two heartbeats, plus a
/// wake's jitter); shorter ones stay below it.
const LONG_FREEZE_MS: u64 = 900;
/// How long the witness grants its vote, and how much earlier a node stops believing it holds it.
const WITNESS_LEASE_MS: u64 = 1500;
const WITNESS_MARGIN_MS: u64 = 200;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn timing() -> Timing {
    Timing {
        heartbeat: ms(HEARTBEAT_MS),
        detection: ms(DETECTION_MS),
    }
}

fn lease_config() -> LeaseConfig {
    LeaseConfig::new(ms(HEARTBEAT_MS), ms(DETECTION_MS)).expect("timings")
}

/// Which faults a run has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Faults {
    pub crashes: bool,
    pub freezes: bool,
    pub partitions: bool,
    pub witness: bool,
    pub moves: bool,
}

/// Which rules the nodes run: all, or (to show that the oracles catch it) one gate or all but the share left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rules {
    All,
    ShareOnly,
    NoTakeoverHold,
    NoSettling,
    NoStartupWait,
}

/// What a run exercised, and the first broken oracle.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub violation: Option<String>,
    pub takeovers: u32,
    pub target_starts: u32,
    pub startup_waits: u32,
    pub settling_holds: u32,
    pub lease_holds: u32,
    pub pause_holds: u32,
    pub early_losses: u32,
    pub serving_steps: u64,
}

/// The simulated volume and resources of one node, and the driver state the rules read.
struct Node {
    id: u8,
    /// Real time of the process start (its clock's origin).
    started: u64,
    incarnation: u64,
    up: bool,
    /// A crashed (or not yet started) node starts at this real time.
    down_until: Option<u64>,
    frozen_until: u64,
    next_wake: u64,
    membership: Membership,
    holder: LeaseHolder,
    grantor: LeaseGrantor,
    retries: Retries,
    settings: Settings,
    peer_report: Option<Report>,
    peer_seen: Option<(u64, u64)>,
    peer_seen_once: bool,
    peer_offline_at: Option<Duration>,
    peer_stamp: Option<(u64, u64)>,
    peer_closed_at: Option<Duration>,
    taking_over: BTreeSet<String>,
    primary_since: BTreeMap<String, Duration>,
    resources: BTreeMap<String, LocalResource>,
    primary: bool,
    generations: Vec<u64>,
    /// The lease the volume was last given (the driver's `set_lease`), on this node's clock.
    lease_until: Option<Duration>,
    seq: u64,
    next_report: Duration,
    inbox: Vec<(u64, Vec<u8>)>,
    vote_until: Option<Duration>,
    vote_holder: Option<(u8, Duration)>,
    next_witness: Duration,
    // The simulation's own records, for the takeover oracle.
    last_grant: Option<Duration>,
    resumed_at: Option<u64>,
    offline_seen: Option<Duration>,
    peer_seen_since_start: bool,
}

impl Node {
    fn new(i: usize, t: u64, settings: Settings) -> Node {
        let id = i as u8 + 1;
        let incarnation = t + 1;
        let mut config = MembershipConfig::two_node(CLUSTER, id, 3 - id, 1, incarnation);
        config.heartbeat_interval = ms(HEARTBEAT_MS);
        config.detection_timeout = ms(DETECTION_MS);
        config.pause_after = Some(ms(2 * HEARTBEAT_MS));
        let resources = [
            (STACK, ResourceKind::Volume),
            ("vol0-vip", ResourceKind::Vip),
            (TARGET, ResourceKind::Target),
            ("vol0-lun", ResourceKind::Lun),
        ]
        .into_iter()
        .map(|(name, kind)| {
            let r = LocalResource {
                kind,
                volume: STACK.into(),
                status: RunStatus::Stopped,
                fail_count: 0,
                last_failure: None,
            };
            (name.to_string(), r)
        })
        .collect();
        Node {
            id,
            started: t,
            incarnation,
            up: true,
            down_until: None,
            frozen_until: 0,
            next_wake: t,
            membership: Membership::new(config, Duration::ZERO).expect("membership"),
            holder: LeaseHolder::new(lease_config()),
            grantor: LeaseGrantor::new(lease_config()),
            retries: Retries::default(),
            settings,
            peer_report: None,
            peer_seen: None,
            peer_seen_once: false,
            peer_offline_at: None,
            peer_stamp: None,
            peer_closed_at: None,
            taking_over: BTreeSet::new(),
            primary_since: BTreeMap::new(),
            resources,
            primary: false,
            generations: vec![2, 0, 0, 0],
            lease_until: None,
            seq: 0,
            next_report: Duration::ZERO,
            inbox: Vec::new(),
            vote_until: None,
            vote_holder: None,
            next_witness: Duration::ZERO,
            last_grant: None,
            resumed_at: None,
            offline_seen: None,
            peer_seen_since_start: false,
        }
    }

    fn now(&self, t: u64) -> Duration {
        ms(t - self.started)
    }

    fn running(&self, t: u64) -> bool {
        self.up && t >= self.frozen_until
    }

    fn peer_online(&self) -> bool {
        super::peer_online(&self.membership, 3 - self.id)
    }

    fn target_started(&self) -> bool {
        self.resources
            .get(TARGET)
            .is_some_and(|r| r.status == RunStatus::Started)
    }

    /// Running, not frozen, the target started, the volume Primary and its lease valid.
    fn serves(&self, t: u64) -> bool {
        self.running(t)
            && self.target_started()
            && self.primary
            && self.lease_until.is_some_and(|u| self.now(t) < u)
    }

    fn holds_vote(&self, now: Duration) -> bool {
        self.vote_until.is_some_and(|u| now < u)
    }
}

/// The world: two nodes, the link between them, the witness.
struct World {
    nodes: Vec<Node>,
    /// The replication link is connected.
    link: bool,
    /// The nodes cannot reach each other (cluster and replication links).
    cut: bool,
    /// Which nodes cannot reach the witness.
    witness_cut: [bool; 2],
    /// The witness's holder and until when (real time).
    witness: Option<(usize, u64)>,
    /// A long freeze of a node to come (start, length): the survivor of a crash, frozen between seeing its peer
    /// OFFLINE and taking over.
    freeze_at: [Option<(u64, u64)>; 2],
    faults: Faults,
    rules: Rules,
    /// Ever partitioned without a witness: both sides may serve.
    split_allowed: bool,
    next_generation: u64,
}

/// The simulated time of one run.
const END_MS: u64 = 30_000;

pub(super) fn simulate(seed: u64, faults: Faults, rules: Rules) -> Outcome {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut out = Outcome::default();
    // The second node starts a little later, sometimes after the first's start-up wait.
    let second = [0, 300, 2_000, 7_000][rng.below(4) as usize];
    let mut w = World {
        nodes: vec![Node::new(0, 0, Settings::default())],
        link: false,
        cut: false,
        witness_cut: [false; 2],
        witness: None,
        freeze_at: [None; 2],
        faults,
        rules,
        split_allowed: false,
        next_generation: 4,
    };
    let mut second_node = Node::new(1, 0, Settings::default());
    second_node.up = false;
    second_node.down_until = Some(second);
    w.nodes.push(second_node);
    let mut t = 0u64;
    while t < END_MS && out.violation.is_none() {
        t += 5;
        // A crashed node restarts when its time comes, with the settings file it left.
        for i in 0..2 {
            if w.nodes[i].down_until.is_some_and(|at| t >= at) {
                let settings = w.nodes[i].settings.clone();
                w.nodes[i] = Node::new(i, t, settings);
            }
        }
        faults_at(&mut w, &mut rng, t);
        for i in 0..2 {
            if let Some((start, length)) = w.freeze_at[i].filter(|&(start, _)| t >= start) {
                w.freeze_at[i] = None;
                if w.nodes[i].running(t) {
                    w.nodes[i].frozen_until = start + length;
                    w.nodes[i].resumed_at = Some(start + length);
                }
            }
        }
        replication_link(&mut w, t);
        for i in 0..2 {
            let n = &w.nodes[i];
            if !n.running(t) || t < n.next_wake {
                continue;
            }
            w.nodes[i].next_wake = t + 5 + rng.below(40);
            step(&mut w, &mut rng, &mut out, i, t);
            if out.violation.is_some() {
                break;
            }
        }
        check(&w, &mut out, t);
    }
    out
}

/// Crashes, restarts, freezes, partitions, witness cuts and standby moves, at random.
fn faults_at(w: &mut World, rng: &mut Rng, t: u64) {
    if t < 3_000 || !rng.chance(1) || !rng.chance(10) {
        return;
    }
    let i = rng.below(2) as usize;
    match rng.below(5) {
        0 if w.faults.crashes && w.nodes[i].up && w.nodes[1 - i].up => {
            // The process dies: its resources and role go with it; the settings file stays.
            w.nodes[i].up = false;
            w.nodes[i].down_until = Some(t + 500 + rng.below(4_000));
            if w.faults.freezes && rng.chance(50) {
                w.freeze_at[1 - i] =
                    Some((t + 600 + rng.below(600), LONG_FREEZE_MS + rng.below(1_000)));
            }
        }
        1 if w.faults.freezes && w.nodes[i].running(t) && w.nodes[1 - i].running(t) => {
            let length = if rng.chance(50) {
                100 + rng.below(200)
            } else {
                LONG_FREEZE_MS + rng.below(4_000)
            };
            w.nodes[i].frozen_until = t + length;
            if length >= LONG_FREEZE_MS {
                w.nodes[i].resumed_at = Some(t + length);
            }
        }
        2 if w.faults.partitions => {
            w.cut = !w.cut;
            if w.cut && !w.faults.witness {
                w.split_allowed = true;
            }
        }
        3 if w.faults.witness => w.witness_cut[i] = !w.witness_cut[i],
        4 if w.faults.moves => {
            // `standby` on one node, or off again, as an admin would set it there.
            let n = &mut w.nodes[i];
            if n.up {
                let mut settings = n.settings.clone();
                let name = NAMES[rng.below(2) as usize].to_string();
                if !settings.standby.remove(&name) {
                    settings.standby.clear();
                    settings.standby.insert(name);
                }
                settings.version = n.settings.version + 1;
                settings.origin = n.id;
                n.settings = settings;
            }
        }
        _ => {}
    }
}

/// The replication link: up while both run, neither is frozen, they can reach each other and are not both
/// Primary (the volume refuses a second Primary); a connect resyncs the Secondary (or the older copy) from the
/// other. A crash closes it: the survivor's side sees the close (early loss evidence).
fn replication_link(w: &mut World, t: u64) {
    let (a, b) = (&w.nodes[0], &w.nodes[1]);
    let possible = a.running(t) && b.running(t) && !w.cut && !(a.primary && b.primary);
    if w.link && !possible {
        w.link = false;
        for i in 0..2 {
            if !w.nodes[1 - i].up && w.nodes[i].up {
                let now = w.nodes[i].now(t);
                w.nodes[i].peer_closed_at = Some(now);
            }
        }
    } else if !w.link && possible {
        w.link = true;
        // The Primary is the source; between two Secondaries, the copy of the newer generation.
        let source = usize::from(
            !w.nodes[0].primary
                && (w.nodes[1].primary || w.nodes[1].generations[0] > w.nodes[0].generations[0]),
        );
        let gens = w.nodes[source].generations.clone();
        w.nodes[1 - source].generations = gens;
    }
}

/// One wake of node `i`: its inbox, its membership, the witness, its report, the executor round, its leases.
fn step(w: &mut World, rng: &mut Rng, out: &mut Outcome, i: usize, t: u64) {
    let now = w.nodes[i].now(t);
    let mut sends: Vec<Vec<u8>> = Vec::new();
    // What arrived.
    let inbox = std::mem::take(&mut w.nodes[i].inbox);
    let (ready, later): (Vec<_>, Vec<_>) = inbox.into_iter().partition(|(at, _)| *at <= t);
    w.nodes[i].inbox = later;
    for (_, bytes) in ready {
        receive(&mut w.nodes[i], &bytes, now, out);
    }
    let outs = w.nodes[i].membership.tick(now);
    for o in outs {
        membership_output(&mut w.nodes[i], o, now, &mut sends);
    }
    witness(w, i, t);
    // The report, every heartbeat interval.
    let n = &mut w.nodes[i];
    if now >= n.next_report {
        n.next_report = now + ms(HEARTBEAT_MS);
        let granted = grants(
            n.peer_stamp.is_some(),
            n.peer_online(),
            [(STACK, n.primary)],
            &n.taking_over,
        );
        if !granted.is_empty() {
            n.grantor.granting(granted.iter().map(String::as_str), now);
            n.last_grant = Some(now);
        }
        let report = Report {
            stopped: false,
            leaving: false,
            volumes: vec![VolumeReport {
                volume: STACK.into(),
                disk: ReportDisk::UpToDate,
                role: if n.primary {
                    ReportRole::Primary
                } else {
                    ReportRole::Secondary
                },
                connected: w.link,
                generations: n.generations.clone(),
                primary_for_ms: n
                    .primary_since
                    .get(STACK)
                    .map(|&s| now.saturating_sub(s).as_millis() as u64),
            }],
            resources: n
                .resources
                .iter()
                .map(|(name, r)| ResourceReport {
                    resource: name.clone(),
                    status: ReportStatus::from(r.status),
                    fail_count: r.fail_count,
                    last_failure_ago_s: None,
                })
                .collect(),
            settings: n.settings.clone(),
            failed_actions: Vec::new(),
            lease: Some(LeaseReport {
                stamp: n.holder.stamp(now),
                echo: n.peer_stamp.filter(|_| !granted.is_empty()).map(|p| p.1),
                echo_for: n.peer_stamp.map_or(0, |p| p.0),
                volumes: granted,
            }),
            versions: Some(message::VERSIONS),
            config_hash: None,
        };
        n.seq += 1;
        let bytes = message::encode(
            SECRET,
            CLUSTER,
            n.id,
            n.incarnation,
            n.seq,
            &Message::Report(Box::new(report)),
        )
        .expect("fits");
        sends.push(bytes);
    }
    executor(w, out, i, t);
    // The leases, as the net thread sets them.
    let n = &mut w.nodes[i];
    let witness_belief = w.faults.witness.then_some(n.vote_until);
    let alone = alone_lease(
        n.peer_online(),
        n.membership.settled(now),
        witness_belief,
        now,
        lease_config().lease,
    );
    if let Some(until) = lease_until(
        &n.holder,
        STACK,
        alone,
        false,
        n.peer_online(),
        n.peer_report.as_ref(),
        now,
        lease_config().lease,
    ) {
        n.lease_until = Some(until);
    }
    // Datagrams go out, delayed, a few lost, none across a cut.
    for bytes in sends {
        if w.cut || rng.chance(2) {
            continue;
        }
        let arrives = t + rng.below(60);
        w.nodes[1 - i].inbox.push((arrives, bytes));
    }
}

fn membership_output(n: &mut Node, o: Output, now: Duration, sends: &mut Vec<Vec<u8>>) {
    match o {
        Output::Send { bytes, .. } => sends.push(bytes.to_vec()),
        Output::PeerOnline { .. } => {
            n.peer_seen_once = true;
            n.peer_seen_since_start = true;
            n.peer_offline_at = None;
            n.offline_seen = None;
        }
        Output::PeerOffline { .. } => {
            n.peer_report = None;
            n.peer_offline_at = Some(now);
            n.offline_seen = Some(now);
        }
        Output::PeerRestarted { .. } => n.peer_report = None,
        _ => {}
    }
}

/// A datagram, as the net thread takes it.
fn receive(n: &mut Node, bytes: &[u8], now: Duration, out: &mut Outcome) {
    if !message::is_message(bytes) {
        let outs = n.membership.received(0, bytes, now);
        let mut ignored = Vec::new();
        for o in outs {
            membership_output(n, o, now, &mut ignored);
        }
        return;
    }
    let envelope = match message::decode(SECRET, CLUSTER, bytes) {
        Ok(e) => e,
        Err(e) => {
            out.violation = Some(format!("a report of the simulation did not decode: {e}"));
            return;
        }
    };
    if !fresh(n.peer_seen, envelope.incarnation, envelope.seq) {
        return;
    }
    n.peer_seen = Some((envelope.incarnation, envelope.seq));
    let Message::Report(report) = envelope.message else {
        return;
    };
    if let Some(lease) = &report.lease {
        n.peer_stamp = Some((envelope.incarnation, lease.stamp));
        if let (Some(echo), true) = (lease.echo, lease.echo_for == n.incarnation) {
            n.holder
                .granted(echo, lease.volumes.iter().map(String::as_str), now);
        }
    }
    if n.settings.older_than(&report.settings) {
        n.settings = report.settings.clone();
    }
    if n.peer_online() {
        n.peer_report = Some(*report);
    }
}

/// The witness: it grants its vote to the first node that asks while no other holds it, for
/// [`WITNESS_LEASE_MS`]; a node believes it holds the vote until a margin before that, counted from its ask.
fn witness(w: &mut World, i: usize, t: u64) {
    if !w.faults.witness || w.witness_cut[i] {
        return;
    }
    let now = w.nodes[i].now(t);
    if now < w.nodes[i].next_witness {
        return;
    }
    w.nodes[i].next_witness = now + ms(HEARTBEAT_MS);
    let free = w
        .witness
        .is_none_or(|(holder, until)| holder == i || until <= t);
    if free {
        w.witness = Some((i, t + WITNESS_LEASE_MS));
        w.nodes[i].vote_until = Some(now + ms(WITNESS_LEASE_MS - WITNESS_MARGIN_MS));
        w.nodes[i].vote_holder = Some((w.nodes[i].id, now + ms(WITNESS_LEASE_MS)));
    } else if let Some((holder, until)) = w.witness {
        w.nodes[i].vote_holder = Some((holder as u8 + 1, now + ms(until - t)));
    }
}

/// The executor round: early loss, the scheduler's input, the schedule, the gates, the actions.
fn executor(w: &mut World, out: &mut Outcome, i: usize, t: u64) {
    let link = w.link;
    let witness = w.faults.witness;
    // The replication link tells the peer's role first hand.
    let peer_primary = w.nodes[1 - i].primary;
    let n = &mut w.nodes[i];
    let now = n.now(t);
    let primaries: BTreeSet<String> = n.primary.then(|| STACK.to_string()).into_iter().collect();
    track_primaries(&mut n.primary_since, &primaries, now);
    let closed = n.peer_closed_at.map(|c| now.saturating_sub(c));
    let outs = early_loss(&mut n.membership, 3 - n.id, closed, now, timing());
    if outs.iter().any(|o| matches!(o, Output::PeerOffline { .. })) {
        out.early_losses += 1;
    }
    let mut ignored = Vec::new();
    for o in outs {
        membership_output(n, o, now, &mut ignored);
    }
    let stacks = vec![VolumeStack {
        name: STACK.into(),
        volumes: Vec::new(),
        lun_volumes: BTreeMap::new(),
        vip: "vol0-vip".into(),
        target: TARGET.into(),
        luns: vec!["vol0-lun".into()],
        fencing: Fencing::DontCare,
    }];
    let volume = LocalVolume {
        disk: ReportDisk::UpToDate,
        role: if n.primary {
            ReportRole::Primary
        } else {
            ReportRole::Secondary
        },
        connected: link,
        peer_disk: if link {
            ReportDisk::UpToDate
        } else {
            ReportDisk::DUnknown
        },
        peer_role: link.then_some(if peer_primary {
            ReportRole::Primary
        } else {
            ReportRole::Secondary
        }),
        generations: n.generations.clone(),
    };
    let volumes: BTreeMap<String, LocalVolume> = [(STACK.to_string(), volume)].into();
    let vote = if n.holds_vote(now) {
        Some(Vote::Me)
    } else {
        n.vote_holder
            .filter(|&(holder, until)| holder != n.id && now < until)
            .map(|_| Vote::Peer)
    };
    let built = build_input(&NodeView {
        me: NAMES[i],
        peer: NAMES[1 - i],
        options: ClusterOptions {
            resource_stickiness: 100,
            migration_threshold: 3,
            failure_timeout_s: None,
            no_quorum_policy: if witness {
                NoQuorumPolicy::Stop
            } else {
                NoQuorumPolicy::Ignore
            },
            witness,
        },
        stacks: &stacks,
        settings: &n.settings,
        now,
        peer_online: n.peer_online(),
        peer_report: n.peer_report.as_ref(),
        peer_seen_once: n.peer_seen_once,
        left: false,
        leaving: false,
        vote,
        volumes: &volumes,
        primary_since: &n.primary_since,
        resources: &n.resources,
        timing: timing(),
    });
    let schedule = schedule(&built.input);
    let names = vec![STACK.to_string()];
    let no_grants = LeaseGrantor::new(lease_config());
    let rules = GateInput {
        me: NAMES[i],
        stacks: &names,
        witness,
        peer_offline_since: n.peer_offline_at,
        settled: n.membership.settled(now),
        grantor: &n.grantor,
        retries: &n.retries,
        peer_unknown: built.peer_unknown,
        left: false,
        timing: timing(),
        now,
    };
    let gated = match w.rules {
        Rules::All => gate(&schedule.actions, |_| link, &rules),
        Rules::NoTakeoverHold => gate(
            &schedule.actions,
            |_| link,
            &GateInput {
                settled: true,
                grantor: &no_grants,
                ..rules
            },
        ),
        Rules::NoSettling => gate(
            &schedule.actions,
            |_| link,
            &GateInput {
                witness: false,
                ..rules
            },
        ),
        Rules::NoStartupWait => gate(
            &schedule.actions,
            |_| link,
            &GateInput {
                peer_unknown: false,
                ..rules
            },
        ),
        Rules::ShareOnly => {
            let share = my_share(&schedule.actions, [STACK], NAMES[i]);
            Gated {
                run: share.clone(),
                share,
                ..Gated::default()
            }
        }
    };
    let mine = my_share(&schedule.actions, [STACK], NAMES[i]);
    if gated.share.len() < mine.len() {
        if settling(witness, n.peer_offline_at, now, timing()) {
            out.settling_holds += 1;
        }
        match gated.held.get(STACK) {
            Some(Hold::Lease { .. }) => out.lease_holds += 1,
            Some(Hold::Paused) => out.pause_holds += 1,
            None => {}
        }
    }
    if built.peer_unknown && !gated.share.is_empty() && !n.peer_seen_since_start {
        out.startup_waits += 1;
    }
    n.taking_over = gated.taking_over.clone();
    for action in &gated.run {
        match action {
            Action::Promote { .. } => {
                if link {
                    // The volume refuses a second Primary while connected.
                    if w.nodes[1 - i].primary {
                        break;
                    }
                } else {
                    takeover(w, out, i, t);
                    if out.violation.is_some() {
                        return;
                    }
                }
                let n = &mut w.nodes[i];
                n.primary = true;
                set(n, STACK, RunStatus::Stopped);
            }
            Action::Demote { .. } => w.nodes[i].primary = false,
            Action::Start { resource, .. } => {
                if resource == TARGET {
                    let other = &w.nodes[1 - i];
                    if !w.split_allowed
                        && !w.faults.freezes
                        && !w.faults.partitions
                        && other.up
                        && other.target_started()
                    {
                        out.violation = Some(format!(
                            "{t} ms: {} starts the target while {} runs it",
                            NAMES[i],
                            NAMES[1 - i]
                        ));
                        return;
                    }
                }
                if resource == TARGET {
                    out.target_starts += 1;
                }
                set(&mut w.nodes[i], resource, RunStatus::Started)
            }
            Action::Stop { resource, .. } => set(&mut w.nodes[i], resource, RunStatus::Stopped),
        }
    }
}

fn set(n: &mut Node, resource: &str, status: RunStatus) {
    if let Some(r) = n.resources.get_mut(resource) {
        r.status = status;
    }
}

/// A promotion while the replication link is down: checked against the rules on the simulation's own records,
/// then a new generation starts.
fn takeover(w: &mut World, out: &mut Outcome, i: usize, t: u64) {
    let n = &w.nodes[i];
    let now = n.now(t);
    let wait = lease_config().takeover_wait();
    let broken = if let Some(g) = n.last_grant.filter(|&g| now < g + wait) {
        Some(format!(
            "it granted the peer a lease at {g:?} (its clock), the takeover wait ends at {:?}",
            g + wait
        ))
    } else if let Some(r) = n.resumed_at.filter(|&r| t < r + DETECTION_MS) {
        Some(format!(
            "it resumed from a pause at {r} ms and has not listened for a detection timeout"
        ))
    } else if w.faults.witness && n.offline_seen.is_some_and(|o| now < o + ms(DETECTION_MS)) {
        Some(format!(
            "with a witness, it saw the peer OFFLINE at {:?} (its clock), less than a detection timeout ago",
            n.offline_seen
        ))
    } else if !n.peer_seen_since_start && now < timing().startup_wait() {
        Some(format!(
            "it has not seen the peer since it started, {now:?} ago, within the start-up wait"
        ))
    } else {
        None
    };
    if let Some(why) = broken {
        out.violation = Some(format!(
            "{t} ms: {} took {STACK} over too early: {why}",
            NAMES[i]
        ));
        return;
    }
    out.takeovers += 1;
    let generation = w.next_generation;
    w.next_generation += 2;
    let n = &mut w.nodes[i];
    let old = n.generations[0];
    n.generations = vec![generation, old, old, n.generations[2]];
}

/// The one-server oracle, at every step.
fn check(w: &World, out: &mut Outcome, t: u64) {
    if out.violation.is_some() {
        return;
    }
    let serving: Vec<usize> = (0..2).filter(|&i| w.nodes[i].serves(t)).collect();
    out.serving_steps += u64::from(!serving.is_empty());
    if serving.len() > 1 && !w.split_allowed {
        out.violation = Some(format!(
            "{t} ms: both nodes serve {STACK} (leases until {:?} and {:?})",
            w.nodes[0].lease_until.map(|u| ms(w.nodes[0].started) + u),
            w.nodes[1].lease_until.map(|u| ms(w.nodes[1].started) + u),
        ));
    }
}

const ALL: Faults = Faults {
    crashes: true,
    freezes: true,
    partitions: true,
    witness: true,
    moves: true,
};

/// The fault mixes the simulation runs, each over many seeds.
fn mixes() -> Vec<(&'static str, Faults)> {
    let none = Faults {
        crashes: false,
        freezes: false,
        partitions: false,
        witness: false,
        moves: false,
    };
    vec![
        (
            "crashes and moves",
            Faults {
                crashes: true,
                moves: true,
                ..none
            },
        ),
        (
            "freezes",
            Faults {
                freezes: true,
                ..none
            },
        ),
        (
            "crashes and freezes",
            Faults {
                crashes: true,
                freezes: true,
                ..none
            },
        ),
        (
            "partitions with a witness",
            Faults {
                partitions: true,
                witness: true,
                ..none
            },
        ),
        ("everything with a witness", ALL),
        (
            "partitions without a witness",
            Faults {
                partitions: true,
                crashes: true,
                ..none
            },
        ),
    ]
}

/// Seeds per fault mix.
const SEEDS: u64 = 40;

#[test]
fn failover_rules_hold_across_seeds_and_faults() {
    let mut failures = Vec::new();
    let mut total = Outcome::default();
    for (name, faults) in mixes() {
        for seed in 0..SEEDS {
            let o = simulate(0xfa11_0000 + seed, faults, Rules::All);
            if let Some(v) = &o.violation {
                failures.push(format!("{name}, seed {:#x}: {v}", 0xfa11_0000 + seed));
            }
            total.takeovers += o.takeovers;
            total.target_starts += o.target_starts;
            total.startup_waits += o.startup_waits;
            total.settling_holds += o.settling_holds;
            total.lease_holds += o.lease_holds;
            total.pause_holds += o.pause_holds;
            total.early_losses += o.early_losses;
            total.serving_steps += o.serving_steps;
        }
    }
    eprintln!(
        "{} runs of {} simulated seconds: {total:?}",
        mixes().len() as u64 * SEEDS,
        END_MS / 1000
    );
    assert!(
        failures.is_empty(),
        "{} runs broke an oracle:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Every rule was exercised.
    assert!(total.takeovers > 50, "{total:?}");
    assert!(total.target_starts > 50, "{total:?}");
    assert!(total.startup_waits > 20, "{total:?}");
    assert!(total.settling_holds > 20, "{total:?}");
    assert!(total.lease_holds > 20, "{total:?}");
    assert!(total.pause_holds > 5, "{total:?}");
    assert!(total.early_losses > 10, "{total:?}");
    assert!(total.serving_steps > 100_000, "{total:?}");
}

/// The oracles catch nodes that leave out a gate: each mutation breaks an oracle in some run (the search stops
/// at the first).
#[test]
fn the_oracles_catch_a_node_that_skips_a_gate() {
    for rules in [
        Rules::ShareOnly,
        Rules::NoTakeoverHold,
        Rules::NoSettling,
        Rules::NoStartupWait,
    ] {
        let caught = mixes()
            .into_iter()
            .flat_map(|(_, faults)| (0..SEEDS).map(move |seed| (seed, faults)))
            .find_map(|(seed, faults)| simulate(0xfa11_0000 + seed, faults, rules).violation);
        assert!(caught.is_some(), "no run caught {rules:?}");
        eprintln!("{rules:?}: {}", caught.unwrap_or_default());
    }
}
