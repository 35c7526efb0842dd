//! Typed configuration of a running target; built once at the edge (CLI or cluster config).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use twinsan_iscsi::login::{ChapPolicy, TargetLimits};
use twinsan_scsi::LogicalUnit;

use crate::stats::IoStats;

/// One iSCSI target: a name, its logical units and who may use them.
pub struct TargetConfig {
    /// The target's iSCSI name (iqn.… or eui.…).
    pub name: String,
    /// Logical units by LUN number.
    pub luns: BTreeMap<u64, Arc<LogicalUnit>>,
    /// Initiator names allowed to log in; empty means any initiator.
    pub allowed_initiators: Vec<String>,
    /// CHAP policy; None means no authentication.
    pub chap: Option<ChapPolicy>,
}

impl TargetConfig {
    /// Whether `initiator` is on the allow-list (or the list is empty).
    pub fn allows(&self, initiator: &str) -> bool {
        self.allowed_initiators.is_empty() || self.allowed_initiators.iter().any(|a| a == initiator)
    }
}

/// Everything the server needs.
pub struct ServerConfig {
    pub targets: Vec<TargetConfig>,
    /// Negotiation limits and the portal group tag.
    pub limits: TargetLimits,
    /// CHAP policy of discovery sessions.
    pub discovery_chap: Option<ChapPolicy>,
    /// Most connections open at once; more are accepted and closed at once, with a log line.
    pub max_connections: usize,
    /// How long a connection may take from accept to the end of login.
    pub login_timeout: Duration,
    /// Idle time after which the target pings the initiator with a NOP-In.
    pub nop_interval: Duration,
    /// How long the initiator has to answer a ping before the connection is dropped.
    pub nop_timeout: Duration,
    /// Commands a session may have queued or running (the CmdSN window).
    pub queue_depth: u32,
    /// Where sessions, refused logins and per-LUN commands are counted (the metrics endpoint's source); `None`:
    /// nothing is counted.
    pub stats: Option<Arc<IoStats>>,
}

impl ServerConfig {
    /// A server for `targets` with the default limits and timers.
    pub fn new(targets: Vec<TargetConfig>) -> Self {
        ServerConfig {
            targets,
            limits: TargetLimits::default(),
            discovery_chap: None,
            max_connections: 1024,
            login_timeout: Duration::from_secs(15),
            nop_interval: Duration::from_secs(5),
            nop_timeout: Duration::from_secs(10),
            queue_depth: 128,
            stats: None,
        }
    }

    /// The target called `name`.
    pub fn target(&self, name: &str) -> Option<&TargetConfig> {
        self.targets.iter().find(|t| t.name == name)
    }
}
