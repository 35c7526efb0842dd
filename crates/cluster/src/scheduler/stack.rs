//! A volume's resource stack — the volume, its VIP, its target, its LUNs — with the dependencies the seed's
//! constraints give it, and the ordering helper that turns the changes the placement decided into actions in a
//! safe order.
//!
//! Dependencies (each is an INFINITY colocation plus a mandatory order in the seed): the VIP depends on the
//! promoted volume, the target on the VIP, each LUN on the target. LUNs do not depend on each other.
//!
//! Order of one transition ([`ordered_actions`]): every stop before every start; stops from the end of the stack
//! backwards (LUNs in reverse configuration order, the target, the VIP, then the volume's demote); starts from
//! the front (promote, VIP, target, LUNs in configuration order). Within one member, nodes go in name order.

use super::input::VolumeStack;
use super::output::{Action, ResourceKind};

/// One member of a stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    /// The resource's name.
    pub name: &'a str,
    /// Its kind.
    pub kind: ResourceKind,
}

/// The members of one stack in start order: index 0 is the (first) volume, then its further volumes, the VIP, the
/// target, then the LUNs.
#[derive(Clone, Debug)]
pub struct Stack<'a> {
    volume: &'a str,
    members: Vec<Member<'a>>,
    /// Index of the VIP: one past the last volume.
    vip: usize,
}

/// Index of the (first) volume in a [`Stack`].
pub const VOLUME: usize = 0;

impl<'a> Stack<'a> {
    /// The stack a volume's configuration describes.
    pub fn new(config: &'a VolumeStack) -> Stack<'a> {
        let mut members: Vec<Member<'a>> = std::iter::once(&config.name)
            .chain(&config.volumes)
            .map(|name| Member {
                name,
                kind: ResourceKind::Volume,
            })
            .collect();
        let vip = members.len();
        members.push(Member {
            name: &config.vip,
            kind: ResourceKind::Vip,
        });
        members.push(Member {
            name: &config.target,
            kind: ResourceKind::Target,
        });
        members.extend(config.luns.iter().map(|lun| Member {
            name: lun,
            kind: ResourceKind::Lun,
        }));
        Stack {
            volume: &config.name,
            members,
            vip,
        }
    }

    /// The indexes of the stack's volumes (promoted together, in this order).
    pub fn volumes(&self) -> std::ops::Range<usize> {
        0..self.vip
    }

    /// Whether member `m` is one of the stack's volumes.
    pub fn is_volume(&self, m: usize) -> bool {
        m < self.vip
    }

    /// The volume's name.
    pub fn volume(&self) -> &'a str {
        self.volume
    }

    /// The members, in start order.
    pub fn members(&self) -> &[Member<'a>] {
        &self.members
    }

    /// The member a member depends on (must run before it, on the same node); `None` for the first volume. A
    /// further volume depends on the one before it (they are promoted together, in order, on one node), the VIP
    /// on the last volume — so on all of them.
    pub fn parent(&self, member: usize) -> Option<usize> {
        match self.members.get(member)?.kind {
            ResourceKind::Volume => member.checked_sub(1),
            ResourceKind::Vip => Some(self.vip - 1),
            ResourceKind::Target => Some(self.vip),
            ResourceKind::Lun => Some(self.vip + 1),
        }
    }

    /// Whether `member` depends on `ancestor`, directly or through others (a member depends on itself).
    pub fn depends_on(&self, member: usize, ancestor: usize) -> bool {
        let mut at = Some(member);
        while let Some(m) = at {
            if m == ancestor {
                return true;
            }
            at = self.parent(m);
        }
        false
    }

    /// The index of a member by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == name)
    }
}

/// A change to one member on one node: stopped (demoted, for the volume) or started (promoted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change<'n> {
    /// Index of the member in its [`Stack`].
    pub member: usize,
    /// The node.
    pub node: &'n str,
}

/// Puts one volume's stops and starts in order (see the module doc) and turns them into actions. Repeated
/// changes appear once.
pub fn ordered_actions(
    stack: &Stack<'_>,
    stops: &[Change<'_>],
    starts: &[Change<'_>],
) -> Vec<Action> {
    let mut stops = stops.to_vec();
    stops.sort_by(|a, b| b.member.cmp(&a.member).then(a.node.cmp(b.node)));
    stops.dedup();
    let mut starts = starts.to_vec();
    starts.sort();
    starts.dedup();

    let action = |change: &Change<'_>, start: bool| -> Option<Action> {
        let member = stack.members.get(change.member)?;
        let volume = stack.volume.to_string();
        let node = change.node.to_string();
        Some(match (member.kind, start) {
            (ResourceKind::Volume, true) => Action::Promote {
                volume: member.name.to_string(),
                node,
                stack: volume,
            },
            (ResourceKind::Volume, false) => Action::Demote {
                volume: member.name.to_string(),
                node,
                stack: volume,
            },
            (kind, true) => Action::Start {
                volume,
                kind,
                resource: member.name.to_string(),
                node,
            },
            (kind, false) => Action::Stop {
                volume,
                kind,
                resource: member.name.to_string(),
                node,
            },
        })
    };
    stops
        .iter()
        .filter_map(|c| action(c, false))
        .chain(starts.iter().filter_map(|c| action(c, true)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::input::Fencing;

    fn config(luns: &[&str]) -> VolumeStack {
        VolumeStack {
            name: "vol0".into(),
            vip: "vip".into(),
            target: "tgt".into(),
            volumes: Vec::new(),
            lun_volumes: Default::default(),
            luns: luns.iter().map(|l| l.to_string()).collect(),
            fencing: Fencing::DontCare,
        }
    }

    fn all<'n>(stack: &Stack<'_>, node: &'n str) -> Vec<Change<'n>> {
        (0..stack.members().len())
            .map(|member| Change { member, node })
            .collect()
    }

    fn text(actions: &[Action]) -> Vec<String> {
        actions.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn starts_go_in_stack_order_from_the_promote() {
        let cfg = config(&["lun1", "lun2"]);
        let stack = Stack::new(&cfg);
        let mut starts = all(&stack, "node1");
        starts.reverse();
        assert_eq!(
            text(&ordered_actions(&stack, &[], &starts)),
            [
                "promote vol0 on node1",
                "start vip on node1",
                "start tgt on node1",
                "start lun1 on node1",
                "start lun2 on node1"
            ]
        );
    }

    #[test]
    fn stops_go_in_reverse_order_down_to_the_demote() {
        let cfg = config(&["lun1", "lun2"]);
        let stack = Stack::new(&cfg);
        assert_eq!(
            text(&ordered_actions(&stack, &all(&stack, "node1"), &[])),
            [
                "stop lun2 on node1",
                "stop lun1 on node1",
                "stop tgt on node1",
                "stop vip on node1",
                "demote vol0 on node1"
            ]
        );
    }

    #[test]
    fn a_switchover_stops_everything_before_it_starts_anything() {
        let cfg = config(&["lun1"]);
        let stack = Stack::new(&cfg);
        let actions = ordered_actions(&stack, &all(&stack, "node1"), &all(&stack, "node2"));
        assert_eq!(
            text(&actions),
            [
                "stop lun1 on node1",
                "stop tgt on node1",
                "stop vip on node1",
                "demote vol0 on node1",
                "promote vol0 on node2",
                "start vip on node2",
                "start tgt on node2",
                "start lun1 on node2"
            ]
        );
        assert!(actions.iter().all(|a| a.volume() == "vol0"));
    }

    #[test]
    fn a_restart_in_place_stops_then_starts_the_same_members() {
        let cfg = config(&["lun1"]);
        let stack = Stack::new(&cfg);
        let from_vip: Vec<_> = all(&stack, "node1").into_iter().skip(1).collect();
        assert_eq!(
            text(&ordered_actions(&stack, &from_vip, &from_vip)),
            [
                "stop lun1 on node1",
                "stop tgt on node1",
                "stop vip on node1",
                "start vip on node1",
                "start tgt on node1",
                "start lun1 on node1"
            ]
        );
    }

    #[test]
    fn nodes_go_in_name_order_within_a_member_and_repeats_collapse() {
        let cfg = config(&[]);
        let stack = Stack::new(&cfg);
        let stops = [
            Change {
                member: 1,
                node: "node2",
            },
            Change {
                member: 1,
                node: "node1",
            },
            Change {
                member: 1,
                node: "node2",
            },
            Change {
                member: 0,
                node: "node2",
            },
        ];
        assert_eq!(
            text(&ordered_actions(&stack, &stops, &[])),
            [
                "stop vip on node1",
                "stop vip on node2",
                "demote vol0 on node2"
            ]
        );
    }

    #[test]
    fn an_index_outside_the_stack_is_dropped() {
        let cfg = config(&[]);
        let stack = Stack::new(&cfg);
        let starts = [Change {
            member: 7,
            node: "node1",
        }];
        assert!(ordered_actions(&stack, &[], &starts).is_empty());
    }

    #[test]
    fn dependencies_follow_the_seed_constraints() {
        let cfg = config(&["lun1", "lun2"]);
        let stack = Stack::new(&cfg);
        assert_eq!(stack.parent(0), None);
        assert_eq!(stack.parent(1), Some(0));
        assert_eq!(stack.parent(2), Some(1));
        assert_eq!(stack.parent(3), Some(2));
        assert_eq!(stack.parent(4), Some(2));
        assert!(stack.depends_on(4, 0));
        assert!(stack.depends_on(4, 1));
        assert!(!stack.depends_on(4, 3), "LUNs do not depend on each other");
        assert!(!stack.depends_on(1, 2));
        assert_eq!(stack.index_of("lun2"), Some(4));
        assert_eq!(stack.index_of("nope"), None);
    }
}
