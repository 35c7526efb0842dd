//! The scheduler: a pure function from configuration and cluster state to the ordered actions of one transition
//! ([`schedule`]), in the manner of Pacemaker's scheduler, reduced to what twinsan runs — one resource stack per
//! replicated volume.
//!
//! No clock, file, socket or random number: the time comes in as [`ClusterState::now_s`], and the same input
//! always gives the same [`Schedule`]. The cluster manager builds the input from what this node knows, runs the
//! actions, and calls `schedule` again whenever anything changes; once the actions have run, the next schedule is
//! empty. Every decision comes with a note in [`Schedule::notes`], so `twinsan status` and the log can say why.
//!
//! - [`input`]: the input types (deserializable: golden cases are written in TOML) and their validation;
//! - [`quorum`]: votes, the witness and `no_quorum_policy`;
//! - [`placement`]: eligibility, the choice of the node, the stops and starts;
//! - [`stack`]: a volume's stack, its dependencies, and the ordering of stops and starts;
//! - [`output`]: [`Action`] and [`Schedule`].
//!
//! # Rules
//! 1. **The stack.** Per volume: promote the volume → start its VIP → start its target → start its LUNs, all on
//!    the node where the volume is Primary (the seed's INFINITY colocations and mandatory orders). LUNs depend on
//!    the target, not on each other.
//! 2. **Order.** Per volume, in configuration order: every stop before every start; stops from the end of the
//!    stack (LUNs in reverse, target, VIP, then demote), starts from the front (promote, VIP, target, LUNs).
//!    Monitors are not actions here.
//! 3. **At most one Primary.** A volume is promoted on at most one node of this partition, and a node that is
//!    demoted is demoted before the other is promoted.
//! 4. **Who may be promoted.** An online, non-standby node where the volume is up (not role Stopped), not banned
//!    (location ban or fail count), not fenced, whose copy is **UpToDate**. **Outdated**, **Inconsistent**,
//!    **Unknown** and fenced copies are never promoted (SPEC 3, invariant 3). A **Consistent** copy is promoted
//!    only when the node is alone — every other node offline and its replication link not connected — and the
//!    volume has `resource-only` fencing: the volume then outdates the peer through the cluster before it
//!    becomes Primary, which is what makes the copy UpToDate (as the replicated volume's own rules require); with
//!    a reachable peer the handshake decides first. A **Diskless** node is never promoted; one that is already
//!    Primary and connected to an UpToDate peer keeps serving from it only if no node with a copy of its own
//!    qualifies. A node whose replication link is connected is not promoted while a node out of the membership
//!    still reports Primary over that link (never two primaries while the nodes can reach each other on any
//!    link).
//! 5. **Which one.** Among the nodes that qualify, by these criteria in turn: the one that can run more of the
//!    stack (fewer members banned there); `resource move` preferences (Pacemaker's INFINITY: they outweigh
//!    stickiness); stickiness — resource-stickiness for each active member of the stack there (the volume
//!    counts when Primary), as Pacemaker sums a group's stickiness; the node running more of the stack (so that
//!    stickiness 0 still does not move a healthy stack for nothing); the lower node name.
//! 6. **Failures.** A fail count counts until `failure_timeout_s` after the last failure (then it is ignored, and
//!    noted). A member whose fail count on a node reached `migration_threshold` (0 disables the check) may not
//!    run there, nor may anything that depends on it; the stack moves to a node that can run more of it, else the
//!    banned members stay stopped and the rest keeps running. A member whose status is Failed on the node that
//!    keeps the stack is restarted in place: it and the members that depend on it are stopped, then started.
//! 7. **Standby** nodes run nothing: their stack is stopped and the volume demoted (its copy stays up as
//!    Secondary, so it stays in sync).
//! 8. **Moves and bans.** `resource move` (prefer) and `resource ban` apply to a member and, through the stack,
//!    move the whole stack; `resource clear` removes them, and then stickiness keeps the stack where it is.
//! 9. **Quorum** ([`quorum`]): with a witness, a partition without quorum (a lone node without the witness vote)
//!    promotes nothing and stops what it runs; without a witness, `no_quorum_policy` `ignore` lets each side
//!    decide alone (both may promote after a partition; the volume reports the split brain on heal) and `stop`
//!    stops everything.
//! 10. **Offline nodes** get no actions, and what they ran counts as stopped (the seed runs without STONITH).
//! 11. **Whole stacks.** Members running on a node other than the chosen one are stopped there; on the chosen
//!     node, what runs healthy on top of kept members is kept, and whatever comes after a member that (re)starts
//!     is restarted with it.
//! 12. **Nothing to do** gives an empty action list.
//!
//! The result is checked before it is returned (see [`schedule`]); an input that fails
//! [`ClusterInput::validate`] schedules nothing and the note says why.

pub mod input;
pub mod output;
pub mod placement;
pub mod quorum;
pub mod stack;

pub use input::{
    ClusterInput, ClusterOptions, ClusterState, DiskState, Fencing, LocationKind,
    LocationPreference, NoQuorumPolicy, NodeStatus, ResourceStatus, Role, RunStatus,
    SchedulerConfig, VolumeStack, VolumeStatus,
};
pub use output::{Action, ResourceKind, Schedule};

use quorum::QuorumVerdict;

/// Decides the actions of one transition. Pure: the same input gives the same schedule.
///
/// Before returning, the schedule is checked against the safety rules (no action for an offline node, nothing
/// started on a standby node, at most one Primary per volume afterwards, no promotion of a copy known not to be
/// the newest, nothing started without quorum, stops before starts). A schedule that breaks one would be a bug
/// here; it is replaced by an empty one whose note says what was wrong, as an assertion that stays on in
/// production.
pub fn schedule(input: &ClusterInput) -> Schedule {
    if let Err(err) = input.validate() {
        return Schedule {
            actions: Vec::new(),
            notes: vec![format!("input: nothing scheduled: {err}")],
        };
    }
    let mut notes = Vec::new();
    let quorum = quorum::assess(input, &mut notes);
    let mut actions = Vec::new();
    for volume in &input.config.volumes {
        actions.extend(placement::plan_volume(input, &quorum, volume, &mut notes));
    }
    if let Err(broken) = check(input, &quorum, &actions) {
        notes.push(format!("internal: nothing scheduled: {broken}"));
        return Schedule {
            actions: Vec::new(),
            notes,
        };
    }
    Schedule { actions, notes }
}

/// The safety rules a schedule must keep, whatever placement decided.
fn check(input: &ClusterInput, quorum: &QuorumVerdict, actions: &[Action]) -> Result<(), String> {
    let state = &input.state;
    for action in actions {
        let node = state
            .nodes
            .iter()
            .find(|n| n.name == action.node())
            .ok_or_else(|| format!("`{action}` names an unknown node"))?;
        if !node.online {
            return Err(format!("`{action}` is for an offline node"));
        }
        let starts = matches!(action, Action::Promote { .. } | Action::Start { .. });
        if starts && node.standby {
            return Err(format!("`{action}` starts something on a standby node"));
        }
        if starts && *quorum != QuorumVerdict::MayRun {
            return Err(format!("`{action}` starts something without quorum"));
        }
        if let Action::Promote { volume, node, .. } = action {
            let entry = state
                .volumes
                .iter()
                .find(|e| &e.volume == volume && &e.node == node);
            let promotable = entry.is_some_and(|e| {
                !e.fenced && matches!(e.disk, DiskState::UpToDate | DiskState::Consistent)
            });
            if !promotable {
                return Err(format!(
                    "`{action}` promotes a copy that is not known to be the newest"
                ));
            }
        }
    }
    for stack in &input.config.volumes {
        let mine: Vec<&Action> = actions
            .iter()
            .filter(|a| a.volume() == stack.name)
            .collect();
        if let Some(first_start) = mine
            .iter()
            .position(|a| matches!(a, Action::Promote { .. } | Action::Start { .. }))
        {
            if let Some(late) = mine[first_start..]
                .iter()
                .find(|a| matches!(a, Action::Demote { .. } | Action::Stop { .. }))
            {
                return Err(format!("`{late}` comes after a start"));
            }
        }
    }
    let all_volumes = input
        .config
        .volumes
        .iter()
        .flat_map(|s| std::iter::once(&s.name).chain(&s.volumes));
    for name in all_volumes {
        let name = name.as_str();
        let mine: Vec<&Action> = actions
            .iter()
            .filter(|a| matches!(a, Action::Promote { .. } | Action::Demote { .. }))
            .filter(|a| a.resource() == name)
            .collect();
        let primaries = state
            .nodes
            .iter()
            .filter(|n| n.online)
            .filter(|n| {
                let now = state
                    .volumes
                    .iter()
                    .any(|e| e.volume == name && e.node == n.name && e.role == Role::Primary);
                let promoted = mine
                    .iter()
                    .any(|a| matches!(a, Action::Promote { node, .. } if *node == n.name));
                let demoted = mine
                    .iter()
                    .any(|a| matches!(a, Action::Demote { node, .. } if *node == n.name));
                promoted || (now && !demoted)
            })
            .count();
        if primaries > 1 {
            return Err(format!("{name} would be Primary on {primaries} nodes"));
        }
    }
    Ok(())
}
