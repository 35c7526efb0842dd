//! The witness client driver (placeholder: being written).
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The link.
pub struct WitnessLink;

impl WitnessLink {
    /// Starts.
    pub fn start(
        _server: SocketAddr,
        _local_ip: Option<IpAddr>,
        _cluster_id: u64,
        _node_id: u8,
        _secret: Vec<u8>,
        _incarnation: u64,
    ) -> std::io::Result<Arc<WitnessLink>> {
        Ok(Arc::new(WitnessLink))
    }
    /// Holds.
    pub fn holds_vote(&self) -> bool {
        false
    }
    /// Holder.
    pub fn holder(&self) -> Option<u8> {
        None
    }
    /// Reachable.
    pub fn reachable(&self) -> bool {
        false
    }
    /// Stop.
    pub fn stop(&self) {}
}
