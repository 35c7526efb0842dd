//! Placement of one volume's stack: what is known of it on each node, which nodes may promote it, which of them
//! is chosen, and the stops and starts that get it there. The rules are listed in the
//! [module doc](super#rules).

use std::cmp::Reverse;

use super::input::{
    ClusterInput, DiskState, Fencing, LocationKind, NodeStatus, ResourceStatus, Role, RunStatus,
    VolumeStack,
};
use super::output::Action;
use super::quorum::QuorumVerdict;
use super::stack::{ordered_actions, Change, Stack, VOLUME};

/// Why a member may not run on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ban {
    /// `resource ban` (or `resource move` without a node).
    Location,
    /// Its fail count there reached migration-threshold.
    FailCount { count: u32, threshold: u32 },
}

/// One member of the stack on one node.
#[derive(Clone, Debug)]
struct MemberFacts {
    /// Running: for the volume, Primary; for the others, Started.
    active: bool,
    /// Its last monitor failed: it must be stopped before it runs again.
    failed: bool,
    /// The fail count that still counts (0 once expired).
    fail_count: u32,
    /// Why it may not run there by itself, if so.
    ban: Option<Ban>,
    /// It may run there: no ban on it or on anything it depends on.
    runnable: bool,
}

impl MemberFacts {
    /// Something of it is up there that a stop must take down (a demote, for a volume).
    fn present(&self, is_volume: bool) -> bool {
        self.active || (!is_volume && self.failed)
    }
}

/// The volume on one node, as its replicated volume reports it.
#[derive(Clone, Debug)]
struct VolumeFacts {
    disk: DiskState,
    role: Role,
    connected: bool,
    fenced: bool,
    generations: Vec<u64>,
    primary_since_s: Option<u64>,
}

/// Everything about one node that placing this stack needs.
#[derive(Clone, Debug)]
struct NodeFacts<'a> {
    name: &'a str,
    online: bool,
    standby: bool,
    /// The stack's first volume here (`volumes[0]`).
    volume: VolumeFacts,
    /// Each volume of the stack here, in stack order.
    volumes: Vec<VolumeFacts>,
    members: Vec<MemberFacts>,
    /// `resource move` preferences for any member of the stack naming this node.
    prefers: usize,
    /// Set only while two online nodes are Primary at once: which of them served most recently.
    recency: Recency,
}

/// Between two Primaries: the one whose data descends from the other's (it took over and wrote a new
/// generation), then the one that became Primary last. Never the node name (SPEC invariant 8).
type Recency = (bool, u64);

impl NodeFacts<'_> {
    fn active_count(&self) -> usize {
        self.members.iter().filter(|m| m.active).count()
    }

    /// Some volume of the stack is Primary here.
    fn primary(&self) -> bool {
        self.volumes.iter().any(|v| v.role == Role::Primary)
    }

    fn coverage(&self) -> usize {
        self.members.iter().filter(|m| m.runnable).count()
    }
}

/// How a node's copy qualifies for promotion, best first (a stack of several volumes counts as its worst).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Data {
    UpToDate,
    /// Consistent, alone, with resource-only fencing: the volume outdates the peer before it becomes Primary.
    ConsistentAlone,
    /// Already Primary without a disk, connected to a peer with an UpToDate copy it serves from. Kept only when
    /// no node with data of its own qualifies.
    DisklessServedByPeer,
}

/// Whether a node may hold the volume promoted.
enum Eligibility {
    Promotable(Data),
    /// Not; with the sentence that says why, or `None` if a note already said it.
    Not(Option<String>),
}

/// Plans one volume: adds its notes and returns its actions, in order.
pub fn plan_volume(
    input: &ClusterInput,
    quorum: &QuorumVerdict,
    config: &VolumeStack,
    notes: &mut Vec<String>,
) -> Vec<Action> {
    let config = &without_unusable_volumes(input, config, notes);
    let stack = Stack::new(config);
    let v = stack.volume();
    let facts = gather(input, &stack, notes);

    let link_up_here = facts
        .iter()
        .any(|f| f.online && f.volumes.iter().any(|v| v.connected));
    for node in facts.iter().filter(|f| !f.online && f.active_count() > 0) {
        if link_up_here && node.primary() {
            // Not taken as stopped: the replication link says otherwise (eligibility notes it).
            continue;
        }
        let fate = if input.config.options.witness {
            "without the witness vote it stops what it ran there"
        } else {
            "what it ran counts as stopped (without STONITH nothing can confirm it)"
        };
        notes.push(format!(
            "{v}: {} is offline: {fate}, and it gets no actions",
            node.name
        ));
    }

    let target = match quorum {
        QuorumVerdict::StopAll(why) => {
            notes.push(format!("{v}: no quorum ({why}): nothing is promoted"));
            None
        }
        QuorumVerdict::MayRun => choose(
            &facts,
            &stack,
            config,
            input.config.options.resource_stickiness,
            notes,
        ),
    };

    let chosen = target;
    let target = chosen.map(|(i, _)| i);

    let primaries: Vec<&str> = facts
        .iter()
        .filter(|f| f.online && f.primary())
        .map(|f| f.name)
        .collect();
    if primaries.len() > 1 {
        let keep = match target {
            Some(t) if primaries.contains(&facts[t].name) => {
                format!("{} stays Primary and the others are demoted", facts[t].name)
            }
            _ => "all are demoted".to_string(),
        };
        notes.push(format!(
            "{v}: Primary on {} at once (a split brain): {keep}; no data is discarded here, the volume resolves the \
             split brain when they connect",
            primaries.join(" and ")
        ));
    }

    for (i, node) in facts.iter().enumerate() {
        if node.prefers > 0 && Some(i) != target {
            let why = if !node.online {
                "it is offline"
            } else if target.is_none() {
                "nothing may be promoted"
            } else {
                "it cannot take the stack now (see above)"
            };
            notes.push(format!(
                "{v}: resource move prefers {}, but {why}",
                node.name
            ));
        }
    }

    let mut stops = Vec::new();
    let mut starts = Vec::new();
    for (i, node) in facts.iter().enumerate().filter(|(_, f)| f.online) {
        if Some(i) != target {
            for (m, member) in node.members.iter().enumerate() {
                if member.present(stack.is_volume(m)) {
                    stops.push(Change {
                        member: m,
                        node: node.name,
                    });
                }
            }
            continue;
        }
        // The target: keep what runs healthy on top of kept members; restart the rest. A Primary without a disk
        // is not restarted: once demoted it could not be promoted again.
        let diskless = matches!(chosen, Some((_, Data::DisklessServedByPeer)));
        if diskless && node.members[VOLUME].failed {
            notes.push(format!(
                "{v}: {v} failed on {}, which has no disk of its own: it is not restarted (once demoted it could not \
                 be promoted again)",
                node.name
            ));
        }
        // `carried[m]`: what runs on top of member m may stay — m is kept, or m is a further volume of the stack
        // that is promoted here for the first time (one added to a running stack by a config reload): promoting
        // it restarts nothing above it, the new LUN just starts after it.
        let mut keep = vec![false; node.members.len()];
        let mut carried = vec![false; node.members.len()];
        for (m, member) in node.members.iter().enumerate() {
            let parent_kept = stack.parent(m).is_none_or(|p| carried[p]);
            let healthy = !member.failed || (stack.is_volume(m) && diskless);
            keep[m] = member.active && healthy && member.runnable && parent_kept;
            let joins = m != VOLUME
                && stack.is_volume(m)
                && !member.active
                && !member.failed
                && member.runnable
                && parent_kept;
            carried[m] = keep[m] || joins;
            if member.present(stack.is_volume(m)) && !keep[m] {
                stops.push(Change {
                    member: m,
                    node: node.name,
                });
            }
            if member.runnable && !keep[m] {
                starts.push(Change {
                    member: m,
                    node: node.name,
                });
            }
        }
        explain_target(v, &stack, node, &carried, input, notes);
    }
    ordered_actions(&stack, &stops, &starts)
}

/// The stack without its further volumes that have no usable copy on any online node — Primary nowhere, UpToDate
/// or Consistent nowhere: a volume added to a running stack before its initial sync, or one whose data is gone —
/// and without their LUNs: such a volume does not hold back the rest of the stack. The first volume is always
/// kept.
fn without_unusable_volumes(
    input: &ClusterInput,
    config: &VolumeStack,
    notes: &mut Vec<String>,
) -> VolumeStack {
    let usable = |volume: &str| {
        input.state.volumes.iter().any(|e| {
            e.volume == volume
                && input
                    .state
                    .nodes
                    .iter()
                    .any(|n| n.online && n.name == e.node)
                && (e.role == Role::Primary
                    || matches!(e.disk, DiskState::UpToDate | DiskState::Consistent))
        })
    };
    let mut kept = config.clone();
    kept.volumes.retain(|volume| {
        if usable(volume) {
            return true;
        }
        let luns: Vec<&str> = config
            .lun_volumes
            .iter()
            .filter(|(_, v)| *v == volume)
            .map(|(lun, _)| lun.as_str())
            .collect();
        let with = if luns.is_empty() {
            String::new()
        } else {
            format!(" and {}", luns.join(", "))
        };
        notes.push(format!(
            "{}: {volume} has no usable copy on any online node (a new volume before its initial sync: volume \
             primary --force on the node that runs the stack starts it): the stack runs without it{with}",
            config.name
        ));
        false
    });
    kept.luns.retain(|lun| {
        config
            .lun_volumes
            .get(lun)
            .is_none_or(|v| *v == config.name || kept.volumes.contains(v))
    });
    kept
}

/// Reads the state of every member of the stack on every node (nodes in name order), and notes expired fail
/// counts and bans on online nodes.
fn gather<'a>(
    input: &'a ClusterInput,
    stack: &Stack<'_>,
    notes: &mut Vec<String>,
) -> Vec<NodeFacts<'a>> {
    let v = stack.volume();
    let mut nodes: Vec<_> = input.state.nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));

    let mut facts = nodes
        .into_iter()
        .map(|node| {
            let facts_of = |v: &str| {
                input
                    .state
                    .volumes
                    .iter()
                    .find(|e| e.volume == v && e.node == node.name)
                    .map_or(
                        VolumeFacts {
                            disk: DiskState::Unknown,
                            role: Role::Stopped,
                            connected: false,
                            fenced: false,
                            generations: Vec::new(),
                            primary_since_s: None,
                        },
                        |e| VolumeFacts {
                            disk: e.disk,
                            role: e.role,
                            connected: e.connected,
                            fenced: e.fenced,
                            generations: e.generations.clone(),
                            primary_since_s: e.primary_since_s,
                        },
                    )
            };
            let volumes: Vec<VolumeFacts> = stack
                .volumes()
                .map(|m| facts_of(stack.members()[m].name))
                .collect();
            let volume = facts_of(v);
            let mut members: Vec<MemberFacts> = Vec::with_capacity(stack.members().len());
            for m in 0..stack.members().len() {
                let parent_runnable = stack.parent(m).is_none_or(|p| members[p].runnable);
                let primary = volumes.get(m).is_some_and(|f| f.role == Role::Primary);
                let facts = member_facts(input, stack, m, node, primary, parent_runnable, notes);
                members.push(facts);
            }
            let prefers = input
                .config
                .locations
                .iter()
                .filter(|l| {
                    l.kind == LocationKind::Prefer
                        && l.node == node.name
                        && stack.index_of(&l.resource).is_some()
                })
                .count();
            NodeFacts {
                name: &node.name,
                online: node.online,
                standby: node.standby,
                volume,
                volumes,
                members,
                prefers,
                recency: (false, 0),
            }
        })
        .collect::<Vec<_>>();
    fill_recency(&mut facts);
    facts
}

/// Fills [`NodeFacts::recency`] when two online nodes are Primary at once.
fn fill_recency(facts: &mut [NodeFacts<'_>]) {
    let primaries: Vec<usize> = (0..facts.len())
        .filter(|&i| facts[i].online && facts[i].primary())
        .collect();
    if primaries.len() < 2 {
        return;
    }
    for &i in &primaries {
        let descends = primaries
            .iter()
            .filter(|&&j| j != i)
            .any(|&j| descends_from(&facts[i].volume.generations, &facts[j].volume.generations));
        facts[i].recency = (descends, facts[i].volume.primary_since_s.unwrap_or(0));
    }
}

/// Whether data with generations `a` was written after data with generations `b` (both `[current, bitmap,
/// history...]`): `a` started a new generation from `b`'s current one (its bitmap or history holds it), and
/// `b` did not do the same from `a`'s.
fn descends_from(a: &[u64], b: &[u64]) -> bool {
    let strip = |g: u64| g & !1;
    let holds = |x: &[u64], y: &[u64]| {
        let Some(&current) = y.first() else {
            return false;
        };
        let current = strip(current);
        current != 0
            && x.first().is_some_and(|&c| strip(c) != current)
            && x.iter().skip(1).any(|&g| strip(g) == current)
    };
    holds(a, b) && !holds(b, a)
}

/// Reads one member of the stack on one node; notes an expired fail count or a ban on an online node.
fn member_facts(
    input: &ClusterInput,
    stack: &Stack<'_>,
    m: usize,
    node: &NodeStatus,
    primary: bool,
    parent_runnable: bool,
    notes: &mut Vec<String>,
) -> MemberFacts {
    let v = stack.volume();
    let options = &input.config.options;
    let now = input.state.now_s;
    let name = stack.members()[m].name;
    let entry = input
        .state
        .resources
        .iter()
        .find(|e| e.resource == name && e.node == node.name);
    let status = entry.map_or(RunStatus::Stopped, |e| e.status);
    let raw_count = entry.map_or(0, |e| e.fail_count);
    let expired = entry.is_some_and(|e| fail_count_expired(e, options.failure_timeout_s, now));
    let fail_count = if expired { 0 } else { raw_count };
    if let (true, true, Some(e)) = (expired, node.online, entry) {
        notes.push(format!(
            "{v}: the fail count of {name} on {} ({raw_count}) has expired (last failure at {} s, failure-timeout \
             {} s, now {now} s): it no longer counts",
            node.name,
            e.last_failure_s.unwrap_or_default(),
            options.failure_timeout_s.unwrap_or_default(),
        ));
    }
    let location_ban = input
        .config
        .locations
        .iter()
        .any(|l| l.kind == LocationKind::Ban && l.resource == name && l.node == node.name);
    let threshold = options.migration_threshold;
    let ban = if location_ban {
        Some(Ban::Location)
    } else if threshold > 0 && fail_count >= threshold {
        Some(Ban::FailCount {
            count: fail_count,
            threshold,
        })
    } else {
        None
    };
    if node.online {
        match ban {
            Some(Ban::Location) => notes.push(format!(
                "{v}: {name} is banned from {} (resource ban or move; resource clear lifts it)",
                node.name
            )),
            Some(Ban::FailCount { count, threshold }) => notes.push(format!(
                "{v}: {name} may not run on {}: its fail count {count} reached migration-threshold {threshold} \
                 (resource cleanup resets it)",
                node.name
            )),
            None => {}
        }
    }
    MemberFacts {
        active: if stack.is_volume(m) {
            primary
        } else {
            status == RunStatus::Started
        },
        failed: status == RunStatus::Failed,
        fail_count,
        ban,
        runnable: ban.is_none() && parent_runnable,
    }
}

/// A fail count expires `failure_timeout_s` after its last failure (0 or `None`: never).
fn fail_count_expired(entry: &ResourceStatus, failure_timeout_s: Option<u64>, now_s: u64) -> bool {
    match (failure_timeout_s, entry.last_failure_s) {
        (Some(timeout), Some(last)) if timeout > 0 && entry.fail_count > 0 => {
            now_s >= last.saturating_add(timeout)
        }
        _ => false,
    }
}

/// Whether every volume of the stack may be promoted (or stay Primary) on `facts[i]`, an online node: the stack
/// goes where all its volumes can be Primary, and its data is as good as its worst volume's.
fn eligibility(
    facts: &[NodeFacts<'_>],
    i: usize,
    stack: &Stack<'_>,
    config: &VolumeStack,
) -> Eligibility {
    let several = stack.volumes().len() > 1;
    let mut worst = Data::UpToDate;
    for k in stack.volumes() {
        match volume_eligibility(facts, i, k, config) {
            Eligibility::Promotable(data) => worst = worst.max(data),
            Eligibility::Not(Some(why)) if several => {
                let name = stack.members()[k].name;
                return Eligibility::Not(Some(format!(
                    "volume {name}: {why}; the stack's volumes are promoted together, so the stack does not run on \
                     {}",
                    facts[i].name
                )));
            }
            not => return not,
        }
    }
    Eligibility::Promotable(worst)
}

/// Whether the stack's volume `k` may be promoted (or stay Primary) on `facts[i]`, an online node.
fn volume_eligibility(
    facts: &[NodeFacts<'_>],
    i: usize,
    k: usize,
    config: &VolumeStack,
) -> Eligibility {
    let node = &facts[i];
    let n = node.name;
    let vol = &node.volumes[k];
    let others = || {
        facts
            .iter()
            .enumerate()
            .filter(move |(j, _)| *j != i)
            .map(|(_, f)| f)
    };
    if node.standby {
        return Eligibility::Not(Some(format!("{n} is in standby: it runs nothing")));
    }
    if node.members[k].ban.is_some() {
        return Eligibility::Not(None);
    }
    if vol.role == Role::Stopped {
        return Eligibility::Not(Some(format!(
            "the volume is not up on {n} (role Stopped): it cannot be promoted there"
        )));
    }
    if vol.connected {
        if let Some(peer) = others().find(|f| !f.online && f.volumes[k].role == Role::Primary) {
            return Eligibility::Not(Some(format!(
                "{} is out of the membership but still Primary over {n}'s replication link: {n} is not promoted \
                 (never two primaries while the nodes can reach each other)",
                peer.name
            )));
        }
    }
    if vol.fenced {
        return Eligibility::Not(Some(format!(
            "{n}'s copy was marked Outdated by its peer through the cluster and may not be promoted until it has \
             resynced"
        )));
    }
    match vol.disk {
        DiskState::UpToDate => Eligibility::Promotable(Data::UpToDate),
        DiskState::Consistent => {
            let alone = !vol.connected && others().all(|f| !f.online);
            if alone && config.fencing == Fencing::ResourceOnly {
                Eligibility::Promotable(Data::ConsistentAlone)
            } else if alone {
                Eligibility::Not(Some(format!(
                    "{n} is Consistent (it may not hold the newest data) and the volume has no resource-level \
                     fencing to outdate its peer first: it is not promoted (volume primary --force does it by hand)"
                )))
            } else {
                Eligibility::Not(Some(format!(
                    "{n} is Consistent (it may not hold the newest data) and its peer is reachable: it is not \
                     promoted until the volume's handshake makes it UpToDate"
                )))
            }
        }
        DiskState::Diskless => {
            let peer_has_data = others().any(|f| f.volumes[k].disk == DiskState::UpToDate);
            if vol.role == Role::Primary && vol.connected && peer_has_data {
                Eligibility::Promotable(Data::DisklessServedByPeer)
            } else {
                Eligibility::Not(Some(format!("{n} has no disk (Diskless): it is not promoted")))
            }
        }
        DiskState::Outdated => Eligibility::Not(Some(format!(
            "{n} is Outdated and may not be promoted until it has resynced"
        ))),
        DiskState::Inconsistent => Eligibility::Not(Some(format!(
            "{n} is Inconsistent and is never promoted: its data is not usable until a resync into it finishes \
             (a new volume needs volume primary --force once, on the node whose data counts)"
        ))),
        DiskState::Unknown => Eligibility::Not(Some(format!(
            "the state of {n}'s copy is Unknown: it is not promoted"
        ))),
    }
}

/// The order of preference between candidates: more of the stack runnable there, then `resource move`
/// preferences, then stickiness (per active resource), then active resources (stickiness 0 still does not move a
/// running stack for nothing), then the lower node name.
type Rank<'a> = (Recency, usize, usize, u64, usize, Reverse<&'a str>);

fn rank<'a>(node: &NodeFacts<'a>, stickiness: u32) -> Rank<'a> {
    let active = node.active_count();
    (
        node.recency,
        node.coverage(),
        node.prefers,
        u64::from(stickiness) * active as u64,
        active,
        Reverse(node.name),
    )
}

/// Chooses the node where the volume is promoted, with the notes that say why; `None` if no node may be.
fn choose(
    facts: &[NodeFacts<'_>],
    stack: &Stack<'_>,
    config: &VolumeStack,
    stickiness: u32,
    notes: &mut Vec<String>,
) -> Option<(usize, Data)> {
    let v = stack.volume();
    let mut with_data = Vec::new();
    let mut diskless = Vec::new();
    for (i, _) in facts.iter().enumerate().filter(|(_, f)| f.online) {
        match eligibility(facts, i, stack, config) {
            Eligibility::Promotable(data @ (Data::UpToDate | Data::ConsistentAlone)) => {
                with_data.push((i, data))
            }
            Eligibility::Promotable(data @ Data::DisklessServedByPeer) => diskless.push((i, data)),
            Eligibility::Not(Some(why)) => notes.push(format!("{v}: {why}")),
            Eligibility::Not(None) => {}
        }
    }
    let candidates = if with_data.is_empty() {
        for &(i, _) in &diskless {
            notes.push(format!(
                "{v}: {} is Primary without a disk (Diskless) and keeps serving from its peer's UpToDate copy: no \
                 node with a copy of its own may be promoted",
                facts[i].name
            ));
        }
        diskless
    } else {
        for &(i, _) in &diskless {
            notes.push(format!(
                "{v}: {} is Primary without a disk (Diskless, served by its peer's copy): the volume moves to a node \
                 with an UpToDate copy",
                facts[i].name
            ));
        }
        with_data
    };

    let Some((best, data)) = candidates
        .iter()
        .copied()
        .max_by_key(|&(i, _)| rank(&facts[i], stickiness))
    else {
        notes.push(format!(
            "{v}: no node may be promoted, so its stack does not run"
        ));
        return None;
    };
    let runner_up = candidates
        .iter()
        .map(|&(i, _)| i)
        .filter(|&i| i != best)
        .max_by_key(|&i| rank(&facts[i], stickiness));

    let chosen = &facts[best];
    let t = chosen.name;
    let verb = if chosen.volume.role == Role::Primary {
        format!("keeping {t} Primary")
    } else if let Some(from) = facts
        .iter()
        .filter(|f| f.online && f.name != t && f.active_count() > 0)
        .max_by_key(|f| (f.active_count(), Reverse(f.name)))
    {
        format!("moving from {} to {t}", from.name)
    } else {
        format!("promoting {t}")
    };
    let why = match runner_up {
        None => "it is the only node that may be promoted".to_string(),
        Some(r) => compare(chosen, &facts[r], stack, stickiness),
    };
    notes.push(format!("{v}: {verb}: {why}"));
    if data == Data::ConsistentAlone && chosen.volume.role != Role::Primary {
        notes.push(format!(
            "{v}: {t} is Consistent and alone: the volume outdates its peer through the cluster (resource-only \
             fencing) before it becomes Primary"
        ));
    }
    Some((best, data))
}

/// Says why `chosen` wins over `other`, by the first criterion of [`rank`] that tells them apart.
fn compare(
    chosen: &NodeFacts<'_>,
    other: &NodeFacts<'_>,
    stack: &Stack<'_>,
    stickiness: u32,
) -> String {
    let total = stack.members().len();
    let (c, o) = (rank(chosen, stickiness), rank(other, stickiness));
    if c.0 != o.0 {
        let why = if c.0 .0 != o.0 .0 {
            "its data descends from the other's (it took over and wrote a newer generation)"
        } else {
            "it became Primary after the other (it served most recently)"
        };
        return format!(
            "both it and {} are Primary, and {why}; {} is demoted and keeps its data for the split-brain \
             resolution",
            other.name, other.name
        );
    }
    let (c, o) = ((c.1, c.2, c.3, c.4, c.5), (o.1, o.2, o.3, o.4, o.5));
    if c.0 != o.0 {
        let blocked: Vec<&str> = other
            .members
            .iter()
            .zip(stack.members())
            .filter(|(f, _)| f.ban.is_some())
            .map(|(_, m)| m.name)
            .collect();
        return format!(
            "{} can run {} of the {total} resources of the stack, {} only {} ({} may not run there)",
            chosen.name,
            c.0,
            other.name,
            o.0,
            blocked.join(", ")
        );
    }
    if c.1 != o.1 {
        return format!(
            "resource move prefers {}, which outweighs stickiness ({} has {})",
            chosen.name, other.name, o.2
        );
    }
    if c.2 != o.2 {
        return format!(
            "stickiness {stickiness} for each of its {} active resources ({}) outweighs {} ({})",
            c.3, c.2, other.name, o.2
        );
    }
    if c.3 != o.3 {
        return format!(
            "it already runs {} of the stack's resources and {} runs {} (stickiness is 0, so a running stack does \
             not move for nothing)",
            c.3, other.name, o.3
        );
    }
    format!(
        "{} and {} are equally suitable; the lower node name wins",
        chosen.name, other.name
    )
}

/// Notes what happens on the node that holds the stack: members restarted in place, members that may not run.
fn explain_target(
    v: &str,
    stack: &Stack<'_>,
    node: &NodeFacts<'_>,
    keep: &[bool],
    input: &ClusterInput,
    notes: &mut Vec<String>,
) {
    let n = node.name;
    let members = stack.members();
    let restarted = |m: usize| {
        node.members[m].present(stack.is_volume(m)) && node.members[m].runnable && !keep[m]
    };
    for (m, member) in node.members.iter().enumerate() {
        let name = members[m].name;
        if !member.runnable {
            if member.ban.is_none() {
                notes.push(format!(
                    "{v}: {name} may not run on {n}, where the stack runs, because what it depends on may not: it \
                     stays stopped"
                ));
            } else {
                notes.push(format!(
                    "{v}: {name} may not run on {n}, where the stack runs: it stays stopped"
                ));
            }
            continue;
        }
        // Roots of what restarts: a member whose parent is kept (or that has none) but that is not kept itself.
        let parent_kept = stack.parent(m).is_none_or(|p| keep[p]);
        if keep[m] || !parent_kept || !restarted(m) {
            if !keep[m] && parent_kept && !member.present(stack.is_volume(m)) {
                // It starts here fresh: say which running members restart after it, if any.
                let deps = dependents_restarted(stack, m, &restarted);
                if !deps.is_empty() {
                    notes.push(format!(
                        "{v}: restarting {} on {n}: they start after {name}, which starts there",
                        deps.join(", ")
                    ));
                }
            }
            continue;
        }
        let deps = dependents_restarted(stack, m, &restarted);
        let with = if deps.is_empty() {
            String::new()
        } else {
            format!(", with {} that depend on it", deps.join(", "))
        };
        if member.failed {
            let threshold = input.config.options.migration_threshold;
            let limit = if threshold == 0 {
                "migration-threshold disabled".to_string()
            } else {
                format!("migration-threshold {threshold}")
            };
            notes.push(format!(
                "{v}: {name} failed on {n} (fail count {}, {limit}): restarting it in place{with}",
                member.fail_count
            ));
        } else {
            notes.push(format!("{v}: restarting {name} on {n}{with}"));
        }
    }
}

fn dependents_restarted<'a>(
    stack: &Stack<'a>,
    root: usize,
    restarted: &dyn Fn(usize) -> bool,
) -> Vec<&'a str> {
    stack
        .members()
        .iter()
        .enumerate()
        .filter(|&(m, _)| m != root && stack.depends_on(m, root) && restarted(m))
        .map(|(_, member)| member.name)
        .collect()
}
