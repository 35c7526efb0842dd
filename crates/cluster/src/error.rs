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
