//! What the scheduler decides from: the configuration part ([`SchedulerConfig`]) and the state part
//! ([`ClusterState`]) as this node knows them, and the checks that the two agree ([`ClusterInput::validate`]).
//!
//! Every type deserializes from TOML (or any serde format), so a golden case is the input written out by hand.
//! An entry the state leaves out has a default that says "nothing known": a volume with no entry for a node is
//! `Unknown`/`Stopped` there, a resource with no entry is stopped with no failures.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::error::InputError;

/// Everything one run of the scheduler decides from.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterInput {
    /// The configuration: volumes and their resource stacks, cluster options, `resource move` preferences.
    pub config: SchedulerConfig,
    /// The cluster state as this node sees it, at `state.now_s`.
    pub state: ClusterState,
}

/// The configuration part of the input.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Cluster-wide options (`[config.options]`).
    #[serde(default)]
    pub options: ClusterOptions,
    /// One resource stack per replicated volume (`[[config.volume]]`), in the order they are scheduled.
    #[serde(rename = "volume", default)]
    pub volumes: Vec<VolumeStack>,
    /// Location preferences left by `resource move` / `resource ban` (`[[config.location]]`); `resource clear`
    /// removes them.
    #[serde(rename = "location", default)]
    pub locations: Vec<LocationPreference>,
}

/// Cluster-wide options, with Pacemaker's names in snake case and the seed's values as defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterOptions {
    /// Score each active resource of a stack adds to the node it runs on (the seed sets 100).
    pub resource_stickiness: u32,
    /// Failures of one resource on one node after which it may no longer run there; 0 disables the check.
    pub migration_threshold: u32,
    /// Seconds after the last failure at which a fail count stops counting; `None` (or 0): never.
    pub failure_timeout_s: Option<u64>,
    /// What a partition without quorum does when no witness is configured.
    pub no_quorum_policy: NoQuorumPolicy,
    /// A `twinsan witness` is configured: it is the third vote, and only a partition with quorum promotes.
    pub witness: bool,
}

/// The default migration-threshold: Pacemaker's INFINITY, a large finite number.
pub const DEFAULT_MIGRATION_THRESHOLD: u32 = 1_000_000;
/// The default resource-stickiness: the seed's `resource-stickiness=100`.
pub const DEFAULT_RESOURCE_STICKINESS: u32 = 100;

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            resource_stickiness: DEFAULT_RESOURCE_STICKINESS,
            migration_threshold: DEFAULT_MIGRATION_THRESHOLD,
            failure_timeout_s: None,
            no_quorum_policy: NoQuorumPolicy::Ignore,
            witness: false,
        }
    }
}

/// Pacemaker's `no-quorum-policy`, reduced to the two values a two-node cluster uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoQuorumPolicy {
    /// Act as if quorate (the seed's two-node mode): a lone node keeps and takes resources.
    #[default]
    Ignore,
    /// Stop every resource in the partition.
    Stop,
}

/// The resource stack of one replicated volume: the volume (promotable) → its VIP → its target → its LUNs, all on
/// the node where the volume is Primary, started in that order and stopped in reverse.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeStack {
    /// The volume, which is also the name of its promotable resource, and the name of the stack.
    pub name: String,
    /// Further volumes of the stack, when its target serves LUNs of several volumes: they are promoted together
    /// with `name`, in this order after it, on the same node, and the VIP starts only once all of them are Primary
    /// (the volumes of one DRBD resource). Empty for a stack of one volume.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// For a stack of several volumes: the volume behind each LUN that is not of the first volume (LUN name →
    /// volume). A further volume with no usable copy on any online node (new, before its initial sync) does not
    /// hold the stack back: the stack runs without it and without its LUNs.
    #[serde(default)]
    pub lun_volumes: std::collections::BTreeMap<String, String>,
    /// The name of its virtual IP resource.
    pub vip: String,
    /// The name of its iSCSI target resource.
    pub target: String,
    /// The names of its LUN resources, in start order. Each depends on the target only.
    #[serde(default)]
    pub luns: Vec<String>,
    /// The volume's fencing policy (DRBD's `fencing`): decides whether a lone Consistent copy may be promoted. For
    /// a stack of several volumes, `resource-only` only if every one of them has it.
    #[serde(default)]
    pub fencing: Fencing,
}

/// A volume's fencing policy, as the replicated volume applies it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fencing {
    /// No fencing: a Consistent copy is never promoted without `--force`.
    #[default]
    DontCare,
    /// The volume marks the peer Outdated through the cluster before it goes on alone, which is what lets a
    /// Consistent copy become UpToDate on promotion.
    ResourceOnly,
}

/// A location preference on one resource, as `resource move` (prefer) and `resource ban` leave them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationPreference {
    /// The resource: a volume, VIP, target or LUN. The stack runs together, so a preference moves the stack.
    pub resource: String,
    /// The node preferred or banned.
    pub node: String,
    /// Prefer (Pacemaker's INFINITY: outweighs stickiness) or ban (never there).
    pub kind: LocationKind,
}

/// What a [`LocationPreference`] asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LocationKind {
    /// Run there whenever it can (`resource move RESOURCE NODE`).
    Prefer,
    /// Never run there (`resource ban RESOURCE NODE`, or `resource move` without a node).
    Ban,
}

/// The state part of the input: what this node knows at `now_s`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterState {
    /// The current time, seconds on the clock fail times are recorded with.
    pub now_s: u64,
    /// Every configured node (`[[state.node]]`), whether this node can see it or not.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeStatus>,
    /// With a witness configured: the node the witness gave its vote to, or `None` if no node has it.
    #[serde(default)]
    pub witness_vote: Option<String>,
    /// Each volume on each node (`[[state.volume]]`).
    #[serde(rename = "volume", default)]
    pub volumes: Vec<VolumeStatus>,
    /// Each resource on each node (`[[state.resource]]`): running or not, failures.
    #[serde(rename = "resource", default)]
    pub resources: Vec<ResourceStatus>,
}

/// One node as the membership sees it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeStatus {
    /// The node's name.
    pub name: String,
    /// In this node's membership (reachable over a cluster link). An offline node gets no actions, and what it
    /// was running counts as stopped: without STONITH nothing better can be known.
    pub online: bool,
    /// `node standby`: the node runs no resource and holds no promoted volume.
    #[serde(default)]
    pub standby: bool,
}

/// One volume on one node, as its replicated volume reports it. For a node out of the membership this is what
/// the replication link last said, and it is used only while the link is connected.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeStatus {
    /// The volume.
    pub volume: String,
    /// The node.
    pub node: String,
    /// The state of that node's copy.
    pub disk: DiskState,
    /// The volume's role there.
    pub role: Role,
    /// Its replication link to the peer is connected.
    #[serde(default)]
    pub connected: bool,
    /// The peer marked this copy Outdated through the cluster (resource-level fencing, Pacemaker's
    /// `crm-fence-peer` constraint): it may not be promoted until it has resynced.
    #[serde(default)]
    pub fenced: bool,
    /// The copy's generation identifiers, `[current, bitmap, history...]` (DRBD's UUIDs; bit 0 of each is the
    /// primary flag), where known: between two Primaries, the one whose data descends from the other's is the
    /// newer and is kept (SPEC invariant 8).
    #[serde(default)]
    pub generations: Vec<u64>,
    /// When this copy's node last became Primary (scheduler seconds), where known: between two Primaries whose
    /// data diverged, the one that took over last served most recently and is kept.
    #[serde(default)]
    pub primary_since_s: Option<u64>,
}

/// The state of a node's copy of a volume (DRBD's disk states, those the scheduler distinguishes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum DiskState {
    /// The newest data: may be promoted.
    UpToDate,
    /// Known older than the peer's: never promoted until resynced.
    Outdated,
    /// Not a usable image (never synced, or a resync into it has not finished): never promoted.
    Inconsistent,
    /// Consistent, but whether it is the newest is not known (a node started alone).
    Consistent,
    /// No local disk (detached after an I/O error, or never attached).
    Diskless,
    /// Not known: the volume is not up there, or no report came.
    #[default]
    Unknown,
}

impl DiskState {
    /// DRBD's name for the state.
    pub fn name(self) -> &'static str {
        match self {
            DiskState::UpToDate => "UpToDate",
            DiskState::Outdated => "Outdated",
            DiskState::Inconsistent => "Inconsistent",
            DiskState::Consistent => "Consistent",
            DiskState::Diskless => "Diskless",
            DiskState::Unknown => "Unknown",
        }
    }
}

/// A volume's role on a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum Role {
    /// Promoted: accepts writes.
    Primary,
    /// Up, not promoted.
    Secondary,
    /// Not up on that node.
    #[default]
    Stopped,
}

/// One resource on one node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceStatus {
    /// The resource: a VIP, target or LUN, or a volume (then only its failures count; its role is in
    /// [`VolumeStatus`]).
    pub resource: String,
    /// The node.
    pub node: String,
    /// Whether it runs there.
    #[serde(default)]
    pub status: RunStatus,
    /// Failures recorded for it on that node since the last `resource cleanup`.
    #[serde(default)]
    pub fail_count: u32,
    /// When the last of them happened, seconds on the `now_s` clock.
    #[serde(default)]
    pub last_failure_s: Option<u64>,
}

/// Whether a resource runs on a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum RunStatus {
    /// Running, and its last monitor passed.
    Started,
    /// Not running.
    #[default]
    Stopped,
    /// Its last monitor (or start) failed: it must be stopped before it is started again.
    Failed,
}

impl ClusterInput {
    /// Checks that the configuration and the state agree: unique names, every name refers to something
    /// configured, at most one entry per resource and node. [`schedule`](super::schedule) schedules nothing
    /// for an input that fails this, and says why.
    pub fn validate(&self) -> Result<(), InputError> {
        let state = &self.state;
        if state.nodes.is_empty() {
            return Err(InputError::NoNodes);
        }
        let mut nodes = BTreeSet::new();
        for (i, node) in state.nodes.iter().enumerate() {
            if node.name.is_empty() {
                return Err(InputError::EmptyName {
                    field: format!("state.node[{i}].name"),
                });
            }
            if !nodes.insert(node.name.as_str()) {
                return Err(InputError::DuplicateNode {
                    node: node.name.clone(),
                });
            }
        }
        let known_node = |field: String, node: &str| {
            if nodes.contains(node) {
                Ok(())
            } else {
                Err(InputError::UnknownNode {
                    field,
                    node: node.to_string(),
                })
            }
        };

        let mut volumes = BTreeSet::new();
        let mut resources = BTreeSet::new();
        for (i, stack) in self.config.volumes.iter().enumerate() {
            let names = std::iter::once(("name", &stack.name))
                .chain(stack.volumes.iter().map(|v| ("volumes", v)))
                .chain([("vip", &stack.vip), ("target", &stack.target)])
                .chain(stack.luns.iter().map(|lun| ("luns", lun)));
            for (key, name) in names {
                if name.is_empty() {
                    return Err(InputError::EmptyName {
                        field: format!("config.volume[{i}].{key}"),
                    });
                }
                if !resources.insert(name.as_str()) {
                    return Err(InputError::DuplicateResource {
                        resource: name.clone(),
                    });
                }
            }
            volumes.insert(stack.name.as_str());
            volumes.extend(stack.volumes.iter().map(String::as_str));
        }

        for stack in &self.config.volumes {
            for (lun, volume) in &stack.lun_volumes {
                let field = format!("config.volume[{}].lun_volumes.{lun}", stack.name);
                if !stack.luns.contains(lun) {
                    return Err(InputError::UnknownResource {
                        field,
                        resource: lun.clone(),
                    });
                }
                if *volume != stack.name && !stack.volumes.contains(volume) {
                    return Err(InputError::UnknownVolume {
                        field,
                        volume: volume.clone(),
                    });
                }
            }
        }

        for pref in &self.config.locations {
            let field = format!("config.location[{}@{}]", pref.resource, pref.node);
            if !resources.contains(pref.resource.as_str()) {
                return Err(InputError::UnknownResource {
                    field,
                    resource: pref.resource.clone(),
                });
            }
            known_node(field, &pref.node)?;
        }

        if let Some(holder) = &state.witness_vote {
            if !self.config.options.witness {
                return Err(InputError::WitnessNotConfigured {
                    node: holder.clone(),
                });
            }
            known_node("state.witness_vote".to_string(), holder)?;
        }

        let mut seen = BTreeSet::new();
        for entry in &state.volumes {
            let field = format!("state.volume[{}@{}]", entry.volume, entry.node);
            if !volumes.contains(entry.volume.as_str()) {
                return Err(InputError::UnknownVolume {
                    field,
                    volume: entry.volume.clone(),
                });
            }
            known_node(field.clone(), &entry.node)?;
            if !seen.insert((entry.volume.as_str(), entry.node.as_str())) {
                return Err(InputError::DuplicateEntry { field });
            }
        }

        let mut seen = BTreeSet::new();
        for entry in &state.resources {
            let field = format!("state.resource[{}@{}]", entry.resource, entry.node);
            if !resources.contains(entry.resource.as_str()) {
                return Err(InputError::UnknownResource {
                    field,
                    resource: entry.resource.clone(),
                });
            }
            known_node(field.clone(), &entry.node)?;
            if !seen.insert((entry.resource.as_str(), entry.node.as_str())) {
                return Err(InputError::DuplicateEntry { field });
            }
            if volumes.contains(entry.resource.as_str()) && entry.status == RunStatus::Started {
                return Err(InputError::VolumeStarted { field });
            }
        }
        Ok(())
    }
}
