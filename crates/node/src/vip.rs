//! The virtual IP agent (placeholder: being written).
use std::net::IpAddr;

/// What the agent manages.
pub struct VipSpec {
    /// The address.
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The interface, or the one in the subnet.
    pub interface: Option<String>,
}

/// Why the agent failed.
#[derive(Debug, thiserror::Error)]
#[error("vip: {0}")]
pub struct VipError(String);

/// The agent.
pub struct Vip {
    spec: VipSpec,
}

impl Vip {
    /// Validates.
    pub fn new(spec: VipSpec) -> Result<Vip, VipError> {
        Ok(Vip { spec })
    }
    /// Loopback.
    pub fn is_loopback(&self) -> bool {
        self.spec.address.is_loopback()
    }
    /// Adds.
    pub fn start(&self) -> Result<(), VipError> {
        Ok(())
    }
    /// Removes.
    pub fn stop(&self) -> Result<(), VipError> {
        Ok(())
    }
    /// Present.
    pub fn monitor(&self) -> Result<bool, VipError> {
        Ok(self.is_loopback())
    }
}
