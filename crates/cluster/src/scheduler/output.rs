//! What the scheduler returns: the ordered [`Action`]s of one transition and the [`Schedule::notes`] that explain
//! them.

use std::fmt;

/// The kind of a resource in a volume's stack, in start order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    /// The replicated volume (promotable): promoted and demoted, never started or stopped here.
    Volume,
    /// Its virtual IP.
    Vip,
    /// Its iSCSI target.
    Target,
    /// One of its LUNs.
    Lun,
}

impl ResourceKind {
    /// The lower-case name used in notes.
    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::Volume => "volume",
            ResourceKind::Vip => "vip",
            ResourceKind::Target => "target",
            ResourceKind::Lun => "lun",
        }
    }
}

/// One step of a transition, for the node it names. The executor runs them in order and stops at the first that
/// fails (the next scheduler run sees the failure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make the volume Primary on the node.
    Promote {
        /// The volume.
        volume: String,
        /// Where.
        node: String,
        /// The stack it belongs to (its first volume's name; `volume` itself unless the stack has several).
        stack: String,
    },
    /// Make the volume Secondary on the node.
    Demote {
        /// The volume.
        volume: String,
        /// Where.
        node: String,
        /// The stack it belongs to (its first volume's name; `volume` itself unless the stack has several).
        stack: String,
    },
    /// Start a VIP, target or LUN on the node.
    Start {
        /// The volume whose stack it belongs to.
        volume: String,
        /// What kind of resource it is (which agent runs it).
        kind: ResourceKind,
        /// The resource.
        resource: String,
        /// Where.
        node: String,
    },
    /// Stop a VIP, target or LUN on the node.
    Stop {
        /// The volume whose stack it belongs to.
        volume: String,
        /// What kind of resource it is (which agent runs it).
        kind: ResourceKind,
        /// The resource.
        resource: String,
        /// Where.
        node: String,
    },
}

impl Action {
    /// The node the action runs on.
    pub fn node(&self) -> &str {
        match self {
            Action::Promote { node, .. }
            | Action::Demote { node, .. }
            | Action::Start { node, .. }
            | Action::Stop { node, .. } => node,
        }
    }

    /// The stack the action belongs to, by its (first) volume's name. For a promote or demote of a further
    /// volume of a stack of several, that is not the volume promoted: see [`Action::resource`].
    pub fn volume(&self) -> &str {
        match self {
            Action::Promote { stack, .. } | Action::Demote { stack, .. } => stack,
            Action::Start { volume, .. } | Action::Stop { volume, .. } => volume,
        }
    }

    /// The resource the action changes (for promote and demote, the volume).
    pub fn resource(&self) -> &str {
        match self {
            Action::Promote { volume, .. } | Action::Demote { volume, .. } => volume,
            Action::Start { resource, .. } | Action::Stop { resource, .. } => resource,
        }
    }
}

/// `promote vol0 on node1`, `stop vol0-vip on node2`: the form golden cases and logs use.
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self {
            Action::Promote { .. } => "promote",
            Action::Demote { .. } => "demote",
            Action::Start { .. } => "start",
            Action::Stop { .. } => "stop",
        };
        write!(f, "{verb} {} on {}", self.resource(), self.node())
    }
}

/// The result of one scheduler run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// What to do, in order. Empty when nothing needs to change.
    pub actions: Vec<Action>,
    /// Why, in sentences an admin reads, each starting with what it is about: a volume (`vol0: ...`),
    /// `quorum:`, `input:` (the input was refused; nothing is scheduled) or `internal:` (a safety check caught a
    /// bug in the scheduler; nothing is scheduled).
    pub notes: Vec<String>,
}
