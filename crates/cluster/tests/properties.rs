//! Properties of the scheduler over random two-node inputs, weird ones included (a Primary with an Inconsistent
//! disk, links connected on one side only): whatever the state, the schedule keeps the safety rules, running its
//! actions leads to a state whose schedule is empty, and with a witness two separated nodes never both end up
//! Primary.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use twinsan_cluster::scheduler::{
    schedule, Action, ClusterInput, ClusterOptions, ClusterState, DiskState, Fencing, LocationKind,
    LocationPreference, NoQuorumPolicy, NodeStatus, ResourceStatus, Role, RunStatus,
    SchedulerConfig, VolumeStack, VolumeStatus,
};

const NODES: [&str; 2] = ["node1", "node2"];

fn stacks(lun_counts: &[usize], fencing: &[Fencing]) -> Vec<VolumeStack> {
    lun_counts
        .iter()
        .zip(fencing)
        .enumerate()
        .map(|(i, (&luns, &fencing))| VolumeStack {
            name: format!("vol{i}"),
            vip: format!("vol{i}-vip"),
            target: format!("vol{i}-target"),
            volumes: Vec::new(),
            lun_volumes: Default::default(),
            luns: (1..=luns).map(|l| format!("vol{i}-lun{l}")).collect(),
            fencing,
        })
        .collect()
}

fn resource_names(stacks: &[VolumeStack]) -> Vec<String> {
    stacks
        .iter()
        .flat_map(|s| {
            [s.name.clone(), s.vip.clone(), s.target.clone()]
                .into_iter()
                .chain(s.luns.iter().cloned())
        })
        .collect()
}

fn disk() -> impl Strategy<Value = DiskState> {
    prop_oneof![
        4 => Just(DiskState::UpToDate),
        1 => Just(DiskState::Outdated),
        1 => Just(DiskState::Inconsistent),
        1 => Just(DiskState::Consistent),
        1 => Just(DiskState::Diskless),
        1 => Just(DiskState::Unknown),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        2 => Just(Role::Primary),
        3 => Just(Role::Secondary),
        1 => Just(Role::Stopped),
    ]
}

fn run_status() -> impl Strategy<Value = RunStatus> {
    prop_oneof![
        3 => Just(RunStatus::Started),
        3 => Just(RunStatus::Stopped),
        1 => Just(RunStatus::Failed),
    ]
}

/// What one node knows of one volume, or nothing.
type VolumeDraw = Option<(DiskState, Role, bool, bool)>;
/// What one node knows of one resource, or nothing.
type ResourceDraw = Option<(RunStatus, u32, Option<u64>)>;

fn volume_draw() -> impl Strategy<Value = VolumeDraw> {
    prop::option::weighted(
        0.9,
        (disk(), role(), any::<bool>(), prop::bool::weighted(0.1)),
    )
}

fn resource_draw() -> impl Strategy<Value = ResourceDraw> {
    prop::option::weighted(
        0.8,
        (
            run_status(),
            prop_oneof![3 => Just(0u32), 1 => 1u32..5],
            prop::option::of(0u64..1000),
        ),
    )
}

fn options() -> impl Strategy<Value = ClusterOptions> {
    (
        prop::sample::select(vec![0u32, 100]),
        prop::sample::select(vec![0u32, 1, 3, 1_000_000]),
        prop::option::of(Just(600u64)),
        prop_oneof![Just(NoQuorumPolicy::Ignore), Just(NoQuorumPolicy::Stop)],
        any::<bool>(),
    )
        .prop_map(
            |(
                resource_stickiness,
                migration_threshold,
                failure_timeout_s,
                no_quorum_policy,
                witness,
            )| {
                ClusterOptions {
                    resource_stickiness,
                    migration_threshold,
                    failure_timeout_s,
                    no_quorum_policy,
                    witness,
                }
            },
        )
}

/// A random valid input: two nodes, one or two volumes with zero to two LUNs each.
fn input() -> impl Strategy<Value = ClusterInput> {
    (
        prop::collection::vec(0usize..3, 1..3),
        prop::collection::vec(
            prop_oneof![Just(Fencing::DontCare), Just(Fencing::ResourceOnly)],
            2,
        ),
        options(),
        [(any::<bool>(), prop::bool::weighted(0.2)); 2],
        0usize..3,
    )
        .prop_flat_map(|(luns, fencing, options, node_flags, vote)| {
            let stacks = stacks(&luns, &fencing);
            let names = resource_names(&stacks);
            let volumes = stacks.len();
            (
                Just(stacks),
                Just(options),
                Just(node_flags),
                Just(vote),
                prop::collection::vec(volume_draw(), volumes * 2),
                prop::collection::vec(resource_draw(), names.len() * 2),
                prop::collection::vec(
                    (
                        prop::sample::select(names),
                        prop::sample::select(NODES.to_vec()),
                        prop_oneof![Just(LocationKind::Prefer), Just(LocationKind::Ban)],
                    ),
                    0..3,
                ),
            )
        })
        .prop_map(
            |(stacks, options, node_flags, vote, volume_draws, resource_draws, locations)| {
                let names = resource_names(&stacks);
                let nodes = NODES
                    .iter()
                    .zip(node_flags)
                    .map(|(name, (online, standby))| NodeStatus {
                        name: name.to_string(),
                        online,
                        standby,
                    })
                    .collect();
                let witness_vote = if options.witness {
                    [None, Some("node1"), Some("node2")][vote].map(str::to_string)
                } else {
                    None
                };
                let volumes = stacks
                    .iter()
                    .flat_map(|s| NODES.iter().map(move |n| (s.name.clone(), n.to_string())))
                    .zip(volume_draws)
                    .filter_map(|((volume, node), draw)| {
                        draw.map(|(disk, role, connected, fenced)| VolumeStatus {
                            volume,
                            node,
                            disk,
                            role,
                            connected,
                            fenced,
                            generations: Vec::new(),
                            primary_since_s: None,
                        })
                    })
                    .collect();
                let resources = names
                    .iter()
                    .flat_map(|r| NODES.iter().map(move |n| (r.clone(), n.to_string())))
                    .zip(resource_draws)
                    .filter_map(|((resource, node), draw)| {
                        let is_volume = stacks.iter().any(|s| s.name == resource);
                        draw.map(|(status, fail_count, last_failure_s)| ResourceStatus {
                            // A volume's entry carries failures only; its running state is its role.
                            status: if is_volume && status == RunStatus::Started {
                                RunStatus::Stopped
                            } else {
                                status
                            },
                            resource,
                            node,
                            fail_count,
                            last_failure_s,
                        })
                    })
                    .collect();
                let locations = locations
                    .into_iter()
                    .map(|(resource, node, kind)| LocationPreference {
                        resource,
                        node: node.to_string(),
                        kind,
                    })
                    .collect();
                ClusterInput {
                    config: SchedulerConfig {
                        options,
                        volumes: stacks,
                        locations,
                    },
                    state: ClusterState {
                        now_s: 1000,
                        nodes,
                        witness_vote,
                        volumes,
                        resources,
                    },
                }
            },
        )
}

/// The state after the executor ran every action successfully.
fn apply(input: &ClusterInput, actions: &[Action]) -> ClusterInput {
    let mut next = input.clone();
    let state = &mut next.state;
    for action in actions {
        match action {
            Action::Promote { volume, node, .. } | Action::Demote { volume, node, .. } => {
                let role = if matches!(action, Action::Promote { .. }) {
                    Role::Primary
                } else {
                    Role::Secondary
                };
                match state
                    .volumes
                    .iter_mut()
                    .find(|e| &e.volume == volume && &e.node == node)
                {
                    Some(entry) => entry.role = role,
                    None => panic!("{action}: no volume entry to act on"),
                }
                // A demote or promote clears a failed volume, as a stop clears a failed resource.
                if let Some(entry) = state
                    .resources
                    .iter_mut()
                    .find(|e| &e.resource == volume && &e.node == node)
                {
                    entry.status = RunStatus::Stopped;
                }
            }
            Action::Start { resource, node, .. } | Action::Stop { resource, node, .. } => {
                let status = if matches!(action, Action::Start { .. }) {
                    RunStatus::Started
                } else {
                    RunStatus::Stopped
                };
                match state
                    .resources
                    .iter_mut()
                    .find(|e| &e.resource == resource && &e.node == node)
                {
                    Some(entry) => entry.status = status,
                    None => state.resources.push(ResourceStatus {
                        resource: resource.clone(),
                        node: node.clone(),
                        status,
                        fail_count: 0,
                        last_failure_s: None,
                    }),
                }
            }
        }
    }
    next
}

fn node<'a>(input: &'a ClusterInput, name: &str) -> &'a NodeStatus {
    input
        .state
        .nodes
        .iter()
        .find(|n| n.name == name)
        .expect("actions name configured nodes")
}

fn volume_entry<'a>(input: &'a ClusterInput, volume: &str, node: &str) -> Option<&'a VolumeStatus> {
    input
        .state
        .volumes
        .iter()
        .find(|e| e.volume == volume && e.node == node)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/properties.proptest-regressions"
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn schedules_keep_the_safety_rules(input in input()) {
        let out = schedule(&input);
        prop_assert!(
            !out.notes.iter().any(|n| n.starts_with("internal:") || n.starts_with("input:")),
            "{:?}", out.notes
        );
        let online_count = input.state.nodes.iter().filter(|n| n.online).count();
        for (i, action) in out.actions.iter().enumerate() {
            let n = node(&input, action.node());
            prop_assert!(n.online, "{action} on an offline node");
            if matches!(action, Action::Promote { .. } | Action::Start { .. }) {
                prop_assert!(!n.standby, "{action} on a standby node");
            }
            if let Action::Promote { volume, node, .. } = action {
                let entry = volume_entry(&input, volume, node);
                let Some(entry) = entry else {
                    return Err(TestCaseError::fail(format!("{action} without a known copy")));
                };
                prop_assert!(!entry.fenced, "{action}: a fenced copy");
                let fencing = input
                    .config
                    .volumes
                    .iter()
                    .find(|s| &s.name == volume)
                    .map(|s| s.fencing);
                match entry.disk {
                    DiskState::UpToDate => {}
                    DiskState::Consistent => prop_assert!(
                        !entry.connected && online_count == 1 && fencing == Some(Fencing::ResourceOnly),
                        "{action}: a Consistent copy that is not alone with resource-only fencing"
                    ),
                    other => prop_assert!(false, "{action}: a copy that is {other:?}"),
                }
                if input.config.options.witness && online_count == 1 {
                    prop_assert_eq!(
                        input.state.witness_vote.as_deref(),
                        Some(node.as_str()),
                        "{} promoted alone without the witness vote", node
                    );
                }
            }
            // A start's dependencies are up on that node by then: promoted or started earlier, or kept.
            if let Action::Start { volume, resource, node, .. } = action {
                let stack = input.config.volumes.iter().find(|s| &s.name == volume).expect("known volume");
                let parent = if resource == &stack.vip {
                    stack.name.clone()
                } else if resource == &stack.target {
                    stack.vip.clone()
                } else {
                    stack.target.clone()
                };
                let before = &out.actions[..i];
                let started_before = before.iter().any(|a| {
                    matches!(a, Action::Start { .. } | Action::Promote { .. })
                        && a.resource() == parent
                        && a.node() == node
                });
                let stopped_before = before.iter().any(|a| {
                    matches!(a, Action::Stop { .. } | Action::Demote { .. })
                        && a.resource() == parent
                        && a.node() == node
                });
                let was_up = if parent == stack.name {
                    volume_entry(&input, volume, node).is_some_and(|e| e.role == Role::Primary)
                } else {
                    input.state.resources.iter().any(|e| {
                        e.resource == parent && &e.node == node && e.status == RunStatus::Started
                    })
                };
                prop_assert!(
                    started_before || (was_up && !stopped_before),
                    "{action} before {parent} is up on {node}: {:?}",
                    out.actions.iter().map(|a| a.to_string()).collect::<Vec<_>>()
                );
            }
        }
        let after = apply(&input, &out.actions);
        for stack in &input.config.volumes {
            let primaries = after
                .state
                .nodes
                .iter()
                .filter(|n| n.online)
                .filter(|n| volume_entry(&after, &stack.name, &n.name).is_some_and(|e| e.role == Role::Primary))
                .count();
            prop_assert!(primaries <= 1, "{} Primary on {primaries} online nodes", stack.name);
        }
    }

    #[test]
    fn once_the_actions_have_run_nothing_changes(input in input()) {
        let first = schedule(&input);
        let after = apply(&input, &first.actions);
        let second = schedule(&after);
        prop_assert!(
            second.actions.is_empty(),
            "first: {:?}\nsecond: {:?}\nnotes: {:?}",
            first.actions.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            second.actions.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            second.notes
        );
    }

    #[test]
    fn the_order_of_entries_in_the_input_does_not_matter(input in input()) {
        let mut shuffled = input.clone();
        shuffled.state.nodes.reverse();
        shuffled.state.volumes.reverse();
        shuffled.state.resources.reverse();
        shuffled.config.locations.reverse();
        prop_assert_eq!(schedule(&input), schedule(&shuffled));
    }

    /// A full partition with a witness, each side scheduling from what it knows: whichever node the witness
    /// voted for, at most one side ends up Primary.
    #[test]
    fn with_a_witness_two_separated_nodes_never_both_end_up_primary(input in input(), vote in 0usize..3) {
        let mut input = input;
        input.config.options.witness = true;
        input.state.witness_vote = [None, Some("node1"), Some("node2")][vote].map(str::to_string);
        let mut primaries = Vec::new();
        for side in NODES {
            let mut view = input.clone();
            for n in &mut view.state.nodes {
                n.online = n.name == side;
            }
            // Cut off: no link to the other side.
            for e in &mut view.state.volumes {
                e.connected = false;
            }
            let after = apply(&view, &schedule(&view).actions);
            for stack in &input.config.volumes {
                if volume_entry(&after, &stack.name, side).is_some_and(|e| e.role == Role::Primary) {
                    primaries.push((stack.name.clone(), side));
                }
            }
        }
        for stack in &input.config.volumes {
            let sides = primaries.iter().filter(|(v, _)| *v == stack.name).count();
            prop_assert!(sides <= 1, "{} Primary on both sides of the partition", stack.name);
        }
    }
}
