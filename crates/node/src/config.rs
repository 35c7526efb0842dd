//! The cluster configuration: one TOML file, identical on both nodes (SPEC 1.2).
//!
//! [`ClusterConfig::load`] parses and validates; everything else in the daemon and the CLI reads the typed result
//! and never the file. A config that names something that does not exist, repeats what must be unique, or would be
//! unsafe is refused with a message that names the field.
//!
//! ```toml
//! [cluster]
//! name = "demo"
//! manual = true                  # roles change only by `twinsan volume primary|secondary`
//! secret = "64 hex digits"       # replication link secret (or secret_file = "path")
//!
//! [[node]]
//! name = "node1"
//! id = 1
//! address = "127.0.0.11"         # replication, cluster link and iSCSI portal address of the node
//! admin_socket = "node1.sock"    # default /run/twinsan/NAME.sock; relative to the config file's folder
//! http = "127.0.0.11:9942"       # metrics (and console); default ADDRESS:9942, `false` for none
//!
//! [[volume]]
//! name = "vol0"
//! uuid = "32 hex digits"         # identity of the volume and of its LUN, created once by `twinsan init`
//! port = 7789                    # replication port, on each node's address
//! protocol = "C"
//! fencing = "dont-care"          # or "resource-only"
//! after_sb_0pri = "disconnect"
//! after_sb_1pri = "disconnect"
//! after_sb_2pri = "disconnect"
//! handler_split_brain = "logger -t twinsan split brain on $TWINSAN_VOLUME"   # optional, like DRBD's handlers
//! handler_pri_lost_after_sb = "..."                                          # optional
//! disk = { node1 = { path = "node1/vol0.img" }, node2 = { path = "node2/vol0.img", meta = "node2/vol0.md" } }
//!
//! [[target]]
//! iqn = "iqn.2025-08.local.twinsan:vol0"
//! vip = "127.0.0.10"
//! port = 3260
//! lun = [ { lun = 1, volume = "vol0" } ]
//! chap_user = "initiator1"                        # optional: CHAP, discovery sessions included
//! chap_secret_file = "chap.secret"                # chmod 600; one line, at least 12 characters
//! mutual_chap_user = "vol0"                       # optional: mutual CHAP, the target proves itself too
//! mutual_chap_secret_file = "mutual-chap.secret"
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use twinsan_replication::generation::AfterSbPolicies;
use twinsan_replication::metadata::PlacementKind;
use twinsan_replication::state::FencingPolicy;
use twinsan_replication::wire::ReplicationProtocol;

mod chap;
pub mod reload;
pub mod setting;

pub use chap::{TargetChap, MAX_CHAP_LEN, MIN_CHAP_SECRET_LEN};
pub use setting::{AfterSb0, AfterSb1, AfterSb2, Fencing, NoQuorumPolicy, Protocol};

/// A config that cannot be used. The text names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file does not exist.
    #[error(
        "{} does not exist: name the config file with --config FILE, or write one with `twinsan init DIR`",
        path.display()
    )]
    Missing {
        /// The config file.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("{path}: {error}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why (not a `source`: the message already says it, and error chains would say it twice).
        error: std::io::Error,
    },
    /// Not TOML, or a key of the wrong type, a missing or unknown key.
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with the line and the key.
        message: String,
    },
    /// Well-formed but inconsistent or unsafe.
    #[error("{path}: {field}: {why}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The field, as a path: `volume[vol0].disk.node3`.
        field: String,
        /// What is wrong and what to do.
        why: String,
    },
    /// Which configured node this machine is could not be decided (`--node`).
    #[error("{path}: {why}")]
    ThisNode {
        /// The config file.
        path: PathBuf,
        /// What is wrong and what to do.
        why: String,
    },
}

/// The whole file, as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `[cluster]`.
    pub cluster: ClusterSection,
    /// `[[node]]`: exactly two.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeConfig>,
    /// `[[volume]]`.
    #[serde(rename = "volume", default)]
    pub volumes: Vec<VolumeConfig>,
    /// `[[target]]`.
    #[serde(rename = "target", default)]
    pub targets: Vec<TargetSection>,
    /// The folder relative paths are resolved against (the config file's); set by `load`.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file this was read from; set by `load`.
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[cluster]`. Its `Debug` leaves the secret out, so a logged config never shows it.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The cluster's name.
    pub name: String,
    /// Nodes never change roles by themselves (DRBD without a cluster manager).
    #[serde(default)]
    pub manual: bool,
    /// The replication link's shared secret, inline.
    #[serde(default)]
    pub secret: Option<String>,
    /// The replication link's shared secret, from a file (first line).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The UDP port of the cluster links (heartbeats and cluster messages), on each node's addresses.
    #[serde(default = "default_cluster_port")]
    pub port: u16,
    /// How often a heartbeat goes out on each cluster link, ms.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// How long every cluster link to a node may stay silent before the node is OFFLINE, ms.
    #[serde(default = "default_detection_timeout_ms")]
    pub detection_timeout_ms: u64,
    /// How often the resources running on a node are checked (monitors), ms.
    #[serde(default = "default_monitor_interval_ms")]
    pub monitor_interval_ms: u64,
    /// Pacemaker's resource-stickiness: what a running stack adds to staying where it is (the seed's 100).
    #[serde(default = "default_resource_stickiness")]
    pub resource_stickiness: u32,
    /// Failures of a resource on a node after which it may no longer run there (0: never banned).
    #[serde(default = "default_migration_threshold")]
    pub migration_threshold: u32,
    /// Seconds after the last failure at which a fail count expires (0: never).
    #[serde(default)]
    pub failure_timeout_s: u64,
    /// `ignore` (the seed's two-node mode: a lone node runs its resources) or `stop`.
    #[serde(default)]
    pub no_quorum_policy: NoQuorumPolicy,
    /// A `twinsan witness` (ADDRESS:PORT): the third vote; only the side that holds it may promote.
    #[serde(default)]
    pub witness: Option<std::net::SocketAddr>,
    /// The web console's password, as an argon2 PHC string (`twinsan passwd` prints the line); without it the
    /// console is read-only.
    #[serde(default)]
    pub console_password_hash: Option<String>,
}

impl std::fmt::Debug for ClusterSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("ClusterSection");
        d.field("name", &self.name)
            .field("manual", &self.manual)
            .field("secret", &self.secret.as_ref().map(|_| "(hidden)"))
            .field("secret_file", &self.secret_file)
            .field("port", &self.port)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("detection_timeout_ms", &self.detection_timeout_ms)
            .field("monitor_interval_ms", &self.monitor_interval_ms)
            .field("resource_stickiness", &self.resource_stickiness)
            .field("migration_threshold", &self.migration_threshold)
            .field("failure_timeout_s", &self.failure_timeout_s)
            .field("no_quorum_policy", &self.no_quorum_policy)
            .field("witness", &self.witness);
        // A newer setting only when set: `config_hash` hashes this text, and a file without it must hash as it
        // did in 0.2.0. The hash itself stays out (any change shows through the reload's refusal).
        if self.console_password_hash.is_some() {
            d.field("console_password_hash", &"(set)");
        }
        d.finish()
    }
}

/// `[[node]]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name, as `--node` gives it.
    pub name: String,
    /// Its id, 1..=31, unique.
    pub id: u8,
    /// Replication, cluster-link and iSCSI portal address.
    pub address: IpAddr,
    /// The admin socket; default `/run/twinsan/NAME.sock`.
    #[serde(default)]
    pub admin_socket: Option<PathBuf>,
    /// Addresses of further cluster links (redundant heartbeat paths, as corosync's knet links), in link order;
    /// `address` is link 0. Both nodes list the same number.
    #[serde(default)]
    pub links: Vec<IpAddr>,
    /// Where the node keeps the cluster's settings (standby, moves, `cluster stop`); default
    /// `/var/lib/twinsan/NAME`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// The HTTP endpoint (`/metrics`): `"ADDR:PORT"`, `false` for none; default `address`:[`DEFAULT_HTTP_PORT`].
    #[serde(default)]
    pub http: Option<HttpSetting>,
}

/// The fields of 0.2.0 always, a newer one only when it is set: `config::reload::config_hash` hashes this text,
/// so a file that does not use the newer settings hashes the same in both releases (no "different configs"
/// warning in a mixed pair during a rolling upgrade).
impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("NodeConfig");
        d.field("name", &self.name)
            .field("id", &self.id)
            .field("address", &self.address)
            .field("admin_socket", &self.admin_socket)
            .field("links", &self.links)
            .field("state_dir", &self.state_dir);
        if let Some(http) = &self.http {
            d.field("http", http);
        }
        d.finish()
    }
}

/// The port of a node's HTTP endpoint when its `http` is not given (drbd-reactor's Prometheus port).
pub const DEFAULT_HTTP_PORT: u16 = 9942;

/// `http = ...` of a `[[node]]` as written.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged, expecting = "\"ADDR:PORT\", or false for no HTTP endpoint")]
pub enum HttpSetting {
    /// `true`: the default endpoint; `false`: none.
    Enabled(bool),
    /// `"ADDR:PORT"`.
    At(String),
}

/// Where a node serves HTTP, as its config says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpEndpoint {
    /// `http = false`.
    Off,
    /// Not given (or `true`): the node's address, port [`DEFAULT_HTTP_PORT`]. A port another program holds is
    /// logged and the node runs without it.
    Default(std::net::SocketAddr),
    /// Given: a port that cannot be bound stops the node at start.
    Configured(std::net::SocketAddr),
}

/// `[[volume]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    /// The volume's name.
    pub name: String,
    /// 32 hex digits: the identity of the volume and its LUN.
    pub uuid: String,
    /// The replication port on each node's address.
    pub port: u16,
    /// `A`, `B` or `C` (default).
    #[serde(default)]
    pub protocol: Protocol,
    /// `dont-care` (default) or `resource-only`.
    #[serde(default)]
    pub fencing: Fencing,
    /// After-split-brain policy with no primary.
    #[serde(default)]
    pub after_sb_0pri: AfterSb0,
    /// After-split-brain policy with one primary.
    #[serde(default)]
    pub after_sb_1pri: AfterSb1,
    /// After-split-brain policy with two primaries.
    #[serde(default)]
    pub after_sb_2pri: AfterSb2,
    /// Checksum-based resync.
    #[serde(default)]
    pub checksum_resync: bool,
    /// Highest resync rate, KiB/s (DRBD c-max-rate).
    #[serde(default)]
    pub resync_max_kib_s: Option<u64>,
    /// Shell command run when a split brain is detected (DRBD's `split-brain` handler), e.g. to notify.
    #[serde(default)]
    pub handler_split_brain: Option<String>,
    /// Shell command run on a Primary that lost a split brain it cannot discard under it (DRBD's
    /// `pri-lost-after-sb` handler, for the `call-pri-lost-after-sb` policies).
    #[serde(default)]
    pub handler_pri_lost_after_sb: Option<String>,
    /// Manual mode: shell command that fences the peer for resource-only fencing (DRBD's `fence-peer` handler,
    /// e.g. the Pacemaker agent's `fence-peer` action); exit status 0 when the peer is marked Outdated.
    #[serde(default)]
    pub handler_fence_peer: Option<String>,
    /// Manual mode: shell command that lifts the fence once both copies are UpToDate again (DRBD's
    /// `unfence-peer` handler).
    #[serde(default)]
    pub handler_unfence_peer: Option<String>,
    /// The backing disk on each node, by node name.
    pub disk: BTreeMap<String, DiskConfig>,
}

/// A volume's backing disk on one node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The data file or block device.
    pub path: PathBuf,
    /// External metadata file or device; internal (at the end of `path`) when absent.
    #[serde(default)]
    pub meta: Option<PathBuf>,
}

/// `[[target]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// The target's IQN.
    pub iqn: String,
    /// The virtual IP the target is reachable at (its portal), once the cluster manager runs.
    pub vip: IpAddr,
    /// The iSCSI port.
    #[serde(default = "default_iscsi_port")]
    pub port: u16,
    /// The prefix length the virtual IP is added with (default 24 for IPv4, 64 for IPv6).
    #[serde(default)]
    pub vip_prefix: Option<u8>,
    /// The interface the virtual IP goes on; default: the one with an address in the VIP's subnet.
    #[serde(default)]
    pub vip_interface: Option<String>,
    /// Initiators allowed; empty: any.
    #[serde(default)]
    pub allow: Vec<String>,
    /// CHAP: the user name initiators log in with, discovery sessions included; none: no CHAP.
    #[serde(default)]
    pub chap_user: Option<String>,
    /// The file holding `chap_user`'s secret; `node run` reads it ([`ClusterConfig::load_chap`]).
    #[serde(default)]
    pub chap_secret_file: Option<PathBuf>,
    /// Mutual CHAP: the user name the target answers the initiator's challenge with; needs `chap_user`.
    #[serde(default)]
    pub mutual_chap_user: Option<String>,
    /// The file holding `mutual_chap_user`'s secret.
    #[serde(default)]
    pub mutual_chap_secret_file: Option<PathBuf>,
    /// LUNs.
    #[serde(default)]
    pub lun: Vec<LunConfig>,
}

/// `lun = [{ lun = 1, volume = "vol0" }]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunConfig {
    /// The LUN number.
    pub lun: u64,
    /// The volume behind it.
    pub volume: String,
}

fn default_iscsi_port() -> u16 {
    3260
}
fn default_cluster_port() -> u16 {
    5405
}
fn default_heartbeat_interval_ms() -> u64 {
    200
}
fn default_detection_timeout_ms() -> u64 {
    1000
}
fn default_monitor_interval_ms() -> u64 {
    2000
}
fn default_resource_stickiness() -> u32 {
    100
}
fn default_migration_threshold() -> u32 {
    1_000_000
}

/// The highest LUN number: what single-level flat space addressing (SAM) can carry.
pub const MAX_LUN: u64 = 16383;
/// The fewest characters an inline replication secret may have.
pub const MIN_SECRET_LEN: usize = 16;
/// The longest node or volume name.
const MAX_NAME_LEN: usize = 64;
/// The longest iSCSI name, in bytes (RFC 7143 section 4.2.7.1).
const MAX_ISCSI_NAME_LEN: usize = 223;

impl ClusterConfig {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                ConfigError::Missing { path: path.into() }
            } else {
                ConfigError::Read {
                    path: path.into(),
                    error,
                }
            }
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::parse(&text, path, &base)
    }

    /// Parses and validates `text`, read from `path`, resolving relative paths against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<ClusterConfig, ConfigError> {
        let mut config: ClusterConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        config.base_dir = base.to_path_buf();
        config.source = path.to_path_buf();
        config.validate()?;
        Ok(config)
    }

    fn invalid(&self, field: impl Into<String>, why: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.clone(),
            field: field.into(),
            why: why.into(),
        }
    }

    /// Checks what the types cannot: names that refer to something, uniqueness, safe values. Reports the first
    /// problem, in file order: `[cluster]`, the nodes, the volumes, the targets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_cluster()?;
        self.validate_nodes()?;
        self.validate_volumes()?;
        self.validate_targets()
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let cluster = &self.cluster;
        if cluster.name.trim().is_empty() {
            return Err(self.invalid("cluster.name", "is empty: give the cluster a name"));
        }
        self.validate_cluster_options()?;
        if let Some(hash) = &cluster.console_password_hash {
            crate::console::auth::check_hash(hash)
                .map_err(|why| self.invalid("cluster.console_password_hash", why))?;
        }
        match (&cluster.secret, &cluster.secret_file) {
            (Some(_), Some(_)) => Err(self.invalid(
                "cluster.secret",
                "both secret and secret_file are given: keep exactly one of them",
            )),
            (None, None) => Err(self.invalid(
                "cluster.secret",
                format!(
                    "is missing: the replication link needs a shared secret; give secret = \"...\" (at least \
                     {MIN_SECRET_LEN} characters; `openssl rand -hex 32` makes a good one) or secret_file = \"PATH\""
                ),
            )),
            (Some(secret), None) => match secret_weakness(secret) {
                Some(why) => Err(self.invalid("cluster.secret", why)),
                None => Ok(()),
            },
            (None, Some(file)) if file.as_os_str().is_empty() => Err(self.invalid(
                "cluster.secret_file",
                "is empty: give the path of the file that holds the secret",
            )),
            (None, Some(_)) => Ok(()),
        }
    }

    fn validate_cluster_options(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if c.port == 0 {
            return Err(self.invalid(
                "cluster.port",
                "is 0: give the UDP port of the cluster links (5405 is usual), or leave it out",
            ));
        }
        if !(10..=10_000).contains(&c.heartbeat_interval_ms) {
            return Err(self.invalid(
                "cluster.heartbeat_interval_ms",
                format!(
                    "is {}: give 10..=10000 ms (default 200)",
                    c.heartbeat_interval_ms
                ),
            ));
        }
        if c.detection_timeout_ms < 2 * c.heartbeat_interval_ms || c.detection_timeout_ms > 120_000
        {
            return Err(self.invalid(
                "cluster.detection_timeout_ms",
                format!(
                    "is {}: it must be at least two heartbeat intervals ({} ms) and at most 120000 ms, or one \
                     late heartbeat would make a node look dead",
                    c.detection_timeout_ms,
                    2 * c.heartbeat_interval_ms
                ),
            ));
        }
        if !(100..=600_000).contains(&c.monitor_interval_ms) {
            return Err(self.invalid(
                "cluster.monitor_interval_ms",
                format!(
                    "is {}: give 100..=600000 ms (default 2000)",
                    c.monitor_interval_ms
                ),
            ));
        }
        if let Some(w) = c.witness {
            if w.port() == 0 || w.ip().is_unspecified() || w.ip().is_multicast() {
                return Err(self.invalid(
                    "cluster.witness",
                    format!("{w} is not a witness address: give ADDRESS:PORT of `twinsan witness --listen`"),
                ));
            }
            if let Some(n) = self
                .nodes
                .iter()
                .find(|n| n.address == w.ip() || n.links.contains(&w.ip()))
            {
                return Err(self.invalid(
                    "cluster.witness",
                    format!(
                        "{w} is on node {}: the witness must run on a third machine, or it cannot break a tie",
                        n.name
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_nodes(&self) -> Result<(), ConfigError> {
        if self.nodes.len() != 2 {
            return Err(self.invalid(
                "node",
                format!(
                    "a cluster has exactly two [[node]] sections; {} are configured",
                    self.nodes.len()
                ),
            ));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let key = entry_key("node", i, &n.name);
            let field = |f: &str| format!("{key}.{f}");
            if let Some(why) = name_problem(&n.name) {
                return Err(self.invalid(field("name"), why));
            }
            if !(1..=31).contains(&n.id) {
                return Err(self.invalid(field("id"), format!("is {}: node ids are 1..=31", n.id)));
            }
            if n.address.is_unspecified() || n.address.is_multicast() {
                return Err(self.invalid(
                    field("address"),
                    format!(
                        "{} cannot be a node's address: give the address this node is reached at",
                        n.address
                    ),
                ));
            }
            if n.admin_socket
                .as_ref()
                .is_some_and(|p| p.as_os_str().is_empty())
            {
                return Err(self.invalid(
                    field("admin_socket"),
                    "is empty: give a path, or leave it out for /run/twinsan/NAME.sock",
                ));
            }
            if n.links.len() + 1 > usize::from(twinsan_cluster::membership::MAX_LINKS) {
                return Err(self.invalid(
                    field("links"),
                    format!(
                        "lists {} addresses: a node has at most {} cluster links, `address` and {} more",
                        n.links.len(),
                        twinsan_cluster::membership::MAX_LINKS,
                        twinsan_cluster::membership::MAX_LINKS - 1
                    ),
                ));
            }
            for (j, a) in n.links.iter().enumerate() {
                if a.is_unspecified()
                    || a.is_multicast()
                    || *a == n.address
                    || n.links[..j].contains(a)
                {
                    return Err(self.invalid(
                        field(&format!("links[{j}]")),
                        format!("{a} cannot be a further cluster link: give another address of this node, once"),
                    ));
                }
            }
            if let Some(HttpSetting::At(at)) = &n.http {
                match at.parse::<std::net::SocketAddr>() {
                    Ok(a) if a.port() != 0 => {}
                    Ok(_) => {
                        return Err(self.invalid(
                            field("http"),
                            format!("is {at:?}: give the port the endpoint listens on, e.g. {}:{DEFAULT_HTTP_PORT}", n.address),
                        ))
                    }
                    Err(_) => {
                        return Err(self.invalid(
                            field("http"),
                            format!(
                                "is {at:?}, not ADDR:PORT: give e.g. \"{}\", or false for no HTTP endpoint",
                                std::net::SocketAddr::new(n.address, DEFAULT_HTTP_PORT)
                            ),
                        ))
                    }
                }
            }
            if n.state_dir
                .as_ref()
                .is_some_and(|p| p.as_os_str().is_empty())
            {
                return Err(self.invalid(
                    field("state_dir"),
                    "is empty: give a folder, or leave it out for /var/lib/twinsan/NAME",
                ));
            }
            for m in &self.nodes[..i] {
                if m.links.len() != n.links.len() {
                    return Err(self.invalid(
                        field("links"),
                        format!(
                            "node {} has {} further cluster links and this one {}: each link joins both nodes, \
                             so both list the same number",
                            m.name,
                            m.links.len(),
                            n.links.len()
                        ),
                    ));
                }
                if m.name == n.name {
                    return Err(
                        self.invalid(field("name"), "two nodes have this name: give each its own")
                    );
                }
                if m.id == n.id {
                    return Err(self.invalid(
                        field("id"),
                        format!(
                            "node {} has the same id {}: give each node its own id",
                            m.name, n.id
                        ),
                    ));
                }
                if m.address == n.address {
                    return Err(self.invalid(
                        field("address"),
                        format!(
                            "node {} has the same address {}: each node needs an address of its own",
                            m.name, n.address
                        ),
                    ));
                }
                if self.admin_socket(m) == self.admin_socket(n) {
                    return Err(self.invalid(
                        field("admin_socket"),
                        format!(
                            "node {} uses the same socket {}: give each node its own",
                            m.name,
                            self.admin_socket(n).display()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_volumes(&self) -> Result<(), ConfigError> {
        for (i, v) in self.volumes.iter().enumerate() {
            let key = entry_key("volume", i, &v.name);
            let field = |f: &str| format!("{key}.{f}");
            if let Some(why) = name_problem(&v.name) {
                return Err(self.invalid(field("name"), why));
            }
            let earlier = &self.volumes[..i];
            if earlier.iter().any(|w| w.name == v.name) {
                return Err(self.invalid(
                    field("name"),
                    "two volumes have this name: give each its own",
                ));
            }
            if v.port == 0 {
                return Err(self.invalid(
                    field("port"),
                    "is 0: give the replication port (7789 is usual)",
                ));
            }
            if let Some(w) = earlier.iter().find(|w| w.port == v.port) {
                return Err(self.invalid(
                    field("port"),
                    format!(
                        "volume {} uses the same port {}: each volume needs its own replication port",
                        w.name, v.port
                    ),
                ));
            }
            let Some(uuid) = parse_uuid(&v.uuid) else {
                return Err(self.invalid(
                    field("uuid"),
                    format!(
                        "{:?} is not a volume uuid: it must be 32 hex digits (dashes allowed), not all zero, as \
                         `twinsan init` writes them",
                        v.uuid
                    ),
                ));
            };
            if let Some(w) = earlier.iter().find(|w| parse_uuid(&w.uuid) == Some(uuid)) {
                return Err(self.invalid(
                    field("uuid"),
                    format!(
                        "volume {} has the same uuid: every volume needs its own",
                        w.name
                    ),
                ));
            }
            if v.fencing == Fencing::ResourceOnly
                && self.cluster.manual
                && v.handler_fence_peer.is_none()
            {
                return Err(self.invalid(
                    field("fencing"),
                    "resource-only fencing marks the peer Outdated through the cluster manager, and with \
                     cluster.manual = true none runs: writes would stay suspended whenever the link breaks; \
                     set handler_fence_peer (the outside cluster manager's fence, e.g. the Pacemaker agent's \
                     fence-peer), use \"dont-care\" or turn manual off",
                ));
            }
            if !self.cluster.manual
                && (v.handler_fence_peer.is_some() || v.handler_unfence_peer.is_some())
            {
                return Err(self.invalid(
                    field("handler_fence_peer"),
                    "the fence-peer and unfence-peer handlers are for cluster.manual = true (an outside cluster \
                     manager); twinsan's own cluster manager fences through its cluster messages",
                ));
            }
            if let AfterSb0::DiscardNode(name) = &v.after_sb_0pri {
                if !self.nodes.iter().any(|n| &n.name == name) {
                    return Err(self.invalid(
                        field("after_sb_0pri"),
                        format!(
                            "\"discard-node-{name}\" names no configured node: use {}",
                            names(
                                self.nodes
                                    .iter()
                                    .map(|n| format!("discard-node-{}", n.name))
                            )
                        ),
                    ));
                }
            }
            if v.resync_max_kib_s == Some(0) {
                return Err(self.invalid(
                    field("resync_max_kib_s"),
                    "is 0, which would stop every resync: give a rate above 0, or leave it out for no limit",
                ));
            }
            self.validate_disks(v, &key, earlier)?;
        }
        Ok(())
    }

    /// The disks of volume `v` (its field path `key`): one per node, usable paths, no file shared with the disk
    /// of an `earlier` volume on the same node.
    fn validate_disks(
        &self,
        v: &VolumeConfig,
        key: &str,
        earlier: &[VolumeConfig],
    ) -> Result<(), ConfigError> {
        let node_names = names(self.nodes.iter().map(|n| n.name.as_str()));
        for (node, disk) in &v.disk {
            let field = |f: &str| format!("{key}.disk.{node}{f}");
            if self.node(node).is_none() {
                return Err(self.invalid(
                    field(""),
                    format!(
                        "no [[node]] is named {node}: disks are given by node name ({node_names})"
                    ),
                ));
            }
            if disk.path.as_os_str().is_empty() {
                return Err(self.invalid(
                    field(".path"),
                    "is empty: give the data file or block device",
                ));
            }
            if let Some(meta) = &disk.meta {
                if meta.as_os_str().is_empty() {
                    return Err(self.invalid(
                        field(".meta"),
                        "is empty: give the external metadata file or device, or leave meta out for internal \
                         metadata",
                    ));
                }
                if self.resolve(meta) == self.resolve(&disk.path) {
                    return Err(self.invalid(
                        field(".meta"),
                        "is the same as path: external metadata needs a file or device of its own; leave meta out \
                         for internal metadata (at the end of path)",
                    ));
                }
            }
            let ours = disk_files(self, disk);
            for w in earlier {
                let Some(theirs) = w.disk.get(node) else {
                    continue;
                };
                for (what, file) in &ours {
                    if let Some((their_what, _)) =
                        disk_files(self, theirs).iter().find(|(_, f)| f == file)
                    {
                        return Err(self.invalid(
                            field(&format!(".{what}")),
                            format!(
                                "{} is also the {their_what} of volume {} on {node}: each volume needs files of its own",
                                file.display(),
                                w.name
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(n) = self.nodes.iter().find(|n| !v.disk.contains_key(&n.name)) {
            return Err(self.invalid(
                format!("{key}.disk"),
                format!(
                    "has no disk for node {0}: add {0} = {{ path = \"...\" }}",
                    n.name
                ),
            ));
        }
        Ok(())
    }

    fn validate_targets(&self) -> Result<(), ConfigError> {
        // Which LUN each volume is behind so far: a volume may be behind one LUN only.
        let mut lun_of: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
        for (i, t) in self.targets.iter().enumerate() {
            let key = entry_key("target", i, &t.iqn);
            let field = |f: &str| format!("{key}.{f}");
            if let Some(why) = target_name_problem(&t.iqn) {
                return Err(self.invalid(field("iqn"), why));
            }
            let earlier = &self.targets[..i];
            if earlier.iter().any(|u| u.iqn == t.iqn) {
                return Err(self.invalid(
                    field("iqn"),
                    "two targets have this name: give each its own",
                ));
            }
            if t.vip.is_unspecified() || t.vip.is_multicast() {
                return Err(self.invalid(
                    field("vip"),
                    format!(
                        "{} cannot be a virtual IP: give the address initiators connect to",
                        t.vip
                    ),
                ));
            }
            if let Some(n) = self
                .nodes
                .iter()
                .find(|n| n.address == t.vip || n.links.contains(&t.vip))
            {
                return Err(self.invalid(
                    field("vip"),
                    format!(
                        "{} is the address of node {}: the portal must be a virtual IP of its own, which moves with \
                         the primary",
                        t.vip, n.name
                    ),
                ));
            }
            if t.port == 0 {
                return Err(
                    self.invalid(field("port"), "is 0: give the iSCSI port (3260 is usual)")
                );
            }
            if let Some(u) = earlier.iter().find(|u| (u.vip, u.port) == (t.vip, t.port)) {
                return Err(self.invalid(
                    field("vip"),
                    format!(
                        "target {} also listens on {}: give each target its own virtual IP or port",
                        u.iqn,
                        std::net::SocketAddr::new(t.vip, t.port)
                    ),
                ));
            }
            let max_prefix = if t.vip.is_ipv4() { 32 } else { 128 };
            if t.vip_prefix.is_some_and(|p| p == 0 || p > max_prefix) {
                return Err(self.invalid(
                    field("vip_prefix"),
                    format!(
                        "is {}: give 1..={max_prefix}, the prefix length of the VIP's subnet",
                        t.vip_prefix.unwrap_or(0)
                    ),
                ));
            }
            if t.vip_interface
                .as_deref()
                .is_some_and(|i| i.is_empty() || i.len() > 15 || i.contains(['/', ' ']))
            {
                return Err(self.invalid(
                    field("vip_interface"),
                    "is not an interface name: give one like \"eth0\", or leave it out to use the interface in \
                     the VIP's subnet",
                ));
            }
            for (j, initiator) in t.allow.iter().enumerate() {
                if let Some(why) = initiator_name_problem(initiator) {
                    return Err(self.invalid(field(&format!("allow[{j}]")), why));
                }
            }
            self.validate_chap(t, &key)?;
            if t.lun.is_empty() {
                return Err(self.invalid(
                    field("lun"),
                    "is empty: a target needs at least one LUN, as in lun = [ { lun = 1, volume = \"vol0\" } ]",
                ));
            }
            for (j, l) in t.lun.iter().enumerate() {
                let field = |f: &str| format!("{key}.lun[{}].{f}", l.lun);
                if l.lun > MAX_LUN {
                    return Err(self.invalid(
                        field("lun"),
                        format!("is {}: LUN numbers are 0..={MAX_LUN}", l.lun),
                    ));
                }
                if t.lun[..j].iter().any(|k| k.lun == l.lun) {
                    return Err(
                        self.invalid(field("lun"), "two LUNs of this target have this number")
                    );
                }
                if self.volume(&l.volume).is_none() {
                    let volumes = names(self.volumes.iter().map(|v| v.name.as_str()));
                    return Err(self.invalid(
                        field("volume"),
                        format!(
                            "no [[volume]] is named {:?} (the volumes are: {volumes})",
                            l.volume
                        ),
                    ));
                }
                if let Some((iqn, lun)) = lun_of.insert(&l.volume, (&t.iqn, l.lun)) {
                    return Err(self.invalid(
                        field("volume"),
                        format!(
                            "volume {} is already LUN {lun} of target {iqn}: a volume is behind one LUN only",
                            l.volume
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The other node.
    pub fn peer_of(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name != name)
    }

    /// The volume called `name`.
    pub fn volume(&self, name: &str) -> Option<&VolumeConfig> {
        self.volumes.iter().find(|v| v.name == name)
    }

    /// The node this machine is: the one called `name` (`--node`), or without a name the one node whose address
    /// is assigned on this machine, found by binding a UDP socket to it (nothing is sent).
    pub fn this_node(&self, name: Option<&str>) -> Result<&NodeConfig, ConfigError> {
        let listed = || names(self.nodes.iter().map(|n| n.name.as_str()));
        let refuse = |why: String| ConfigError::ThisNode {
            path: self.source.clone(),
            why,
        };
        if let Some(name) = name {
            return self.node(name).ok_or_else(|| {
                refuse(format!(
                    "--node {name}: no [[node]] is named {name} (the nodes are: {})",
                    listed()
                ))
            });
        }
        let local: Vec<&NodeConfig> = self
            .nodes
            .iter()
            .filter(|n| address_is_local(n.address))
            .collect();
        let addresses = || {
            names(
                self.nodes
                    .iter()
                    .map(|n| format!("{} {}", n.name, n.address)),
            )
        };
        match local.as_slice() {
            [node] => Ok(node),
            [] => Err(refuse(format!(
                "no node's address ({}) is assigned on this machine: pass --node NAME to say which node this is",
                addresses()
            ))),
            _ => Err(refuse(format!(
                "the addresses of several nodes ({}) are all on this machine: pass --node NAME to say which node \
                 this is",
                addresses()
            ))),
        }
    }

    /// `path` resolved against the config file's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The addresses of `node`'s cluster links, link 0 first.
    pub fn cluster_links(&self, node: &NodeConfig) -> Vec<IpAddr> {
        std::iter::once(node.address)
            .chain(node.links.iter().copied())
            .collect()
    }

    /// Where `node` keeps the cluster settings.
    pub fn state_dir(&self, node: &NodeConfig) -> PathBuf {
        match &node.state_dir {
            Some(p) => self.resolve(p),
            None => PathBuf::from(format!("/var/lib/twinsan/{}", node.name)),
        }
    }

    /// `no_quorum_policy = "stop"`.
    pub fn no_quorum_stop(&self) -> bool {
        self.cluster.no_quorum_policy == NoQuorumPolicy::Stop
    }

    /// Where `node` serves HTTP (checked by `validate`).
    pub fn http_endpoint(&self, node: &NodeConfig) -> HttpEndpoint {
        match &node.http {
            Some(HttpSetting::Enabled(false)) => HttpEndpoint::Off,
            None | Some(HttpSetting::Enabled(true)) => {
                HttpEndpoint::Default(std::net::SocketAddr::new(node.address, DEFAULT_HTTP_PORT))
            }
            Some(HttpSetting::At(at)) => match at.parse() {
                Ok(a) => HttpEndpoint::Configured(a),
                Err(_) => HttpEndpoint::Off,
            },
        }
    }

    /// The admin socket of `node`.
    pub fn admin_socket(&self, node: &NodeConfig) -> PathBuf {
        match &node.admin_socket {
            Some(p) => self.resolve(p),
            None => PathBuf::from(format!("/run/twinsan/{}.sock", node.name)),
        }
    }

    /// The shared secret of the replication link, read from `secret_file` when the config names one; a secret in
    /// that file must be as strong as an inline one.
    pub fn secret(&self) -> Result<Vec<u8>, ConfigError> {
        match (&self.cluster.secret, &self.cluster.secret_file) {
            (Some(s), None) => Ok(s.as_bytes().to_vec()),
            (None, Some(f)) => {
                let path = self.resolve(f);
                let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::Read {
                    path: path.clone(),
                    error,
                })?;
                let secret = text.lines().next().unwrap_or("").trim();
                if let Some(why) = secret_weakness(secret) {
                    return Err(self.invalid(
                        "cluster.secret_file",
                        format!("the secret in {}: {why}", path.display()),
                    ));
                }
                Ok(secret.as_bytes().to_vec())
            }
            _ => Err(self.invalid(
                "cluster.secret",
                "give exactly one of secret and secret_file",
            )),
        }
    }
}

impl VolumeConfig {
    /// The replication protocol.
    pub fn protocol(&self) -> ReplicationProtocol {
        self.protocol.into()
    }

    /// The fencing policy.
    pub fn fencing(&self) -> FencingPolicy {
        self.fencing.into()
    }

    /// The after-split-brain policies, `discard-node-NAME` resolved to the node's id through `cluster` (validation
    /// refuses a name that is not a node's; were it not, the policy would read as `disconnect`, the default).
    pub fn policies(&self, cluster: &ClusterConfig) -> AfterSbPolicies {
        let node_id = |name: &str| cluster.nodes.iter().find(|n| n.name == name).map(|n| n.id);
        AfterSbPolicies {
            zero_primaries: self.after_sb_0pri.policy(node_id).unwrap_or_default(),
            one_primary: self.after_sb_1pri.into(),
            two_primaries: self.after_sb_2pri.into(),
        }
    }

    /// The volume uuid as a number; 0 (which no volume has) if it is not one, which validation refuses.
    pub fn uuid_value(&self) -> u128 {
        parse_uuid(&self.uuid).unwrap_or(0)
    }
}

impl TargetSection {
    /// The target as the iSCSI server takes it, with `luns` and the CHAP policy `chap` loaded for it.
    pub fn target_config(
        &self,
        luns: BTreeMap<u64, std::sync::Arc<twinsan_scsi::LogicalUnit>>,
        chap: &TargetChap,
    ) -> twinsan_target::TargetConfig {
        twinsan_target::TargetConfig {
            name: self.iqn.clone(),
            luns,
            allowed_initiators: self.allow.clone(),
            chap: chap.policy(&self.iqn).cloned(),
        }
    }

    /// The iSCSI server of this target alone (on its virtual IP): discovery sessions require the target's CHAP,
    /// as `twinsan serve` does.
    pub fn server_config(
        &self,
        luns: BTreeMap<u64, std::sync::Arc<twinsan_scsi::LogicalUnit>>,
        chap: &TargetChap,
    ) -> twinsan_target::ServerConfig {
        let mut server = twinsan_target::ServerConfig::new(vec![self.target_config(luns, chap)]);
        server.discovery_chap = chap.policy(&self.iqn).cloned();
        server
    }
}

impl DiskConfig {
    /// Internal metadata (at the end of `path`) or external (on `meta`).
    pub fn placement(&self) -> PlacementKind {
        match self.meta {
            Some(_) => PlacementKind::External,
            None => PlacementKind::Internal,
        }
    }
}

/// Parses 32 hex digits (dashes allowed) into a non-zero u128.
pub fn parse_uuid(text: &str) -> Option<u128> {
    let hex: String = text.chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok().filter(|&u| u != 0)
}

/// `kind[name]`, or `kind[#N]` (1-based position) for an entry whose name is empty.
fn entry_key(kind: &str, index: usize, name: &str) -> String {
    if name.is_empty() {
        format!("{kind}[#{}]", index + 1)
    } else {
        format!("{kind}[{name}]")
    }
}

/// Why `name` cannot name a node or volume (they appear in commands, file names and logs), if it cannot.
fn name_problem(name: &str) -> Option<String> {
    const ALLOWED: &str = "letters, digits, '.', '_' and '-'";
    if name.is_empty() {
        return Some(format!("is empty: give a name of {ALLOWED}"));
    }
    if name.len() > MAX_NAME_LEN {
        return Some(format!(
            "is {} characters long: at most {MAX_NAME_LEN}",
            name.len()
        ));
    }
    name.chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .map(|c| format!("{name:?} has the character {c:?}: use only {ALLOWED}"))
}

/// Why `secret` is too weak for the replication link, if it is. The text never quotes the secret.
fn secret_weakness(secret: &str) -> Option<String> {
    let len = secret.chars().count();
    if len < MIN_SECRET_LEN {
        return Some(format!(
            "is {len} characters long, too short to protect the replication link: use at least {MIN_SECRET_LEN} \
             (`openssl rand -hex 32` makes a good one)"
        ));
    }
    let distinct = secret
        .chars()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    // Random hex has all 16 digits with near certainty; 4 or fewer kinds of character is a pattern, not a secret.
    if distinct <= 4 {
        return Some(format!(
            "is made of only {distinct} different characters, which is easy to guess: use random characters \
             (`openssl rand -hex 32` makes a good secret)"
        ));
    }
    None
}

/// Why `name` is not a name a target may have, if it is not: `iqn.YYYY-MM.reverse.domain[:anything]` in lower
/// case, or `eui.` and 16 hex digits (RFC 7143 section 4.2.7).
fn target_name_problem(name: &str) -> Option<String> {
    if let Some(why) = iscsi_name_length_problem(name) {
        return Some(why);
    }
    if let Some(hex) = name.strip_prefix("eui.") {
        return (hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| {
            format!("{name:?} is not an EUI name: eui. is followed by exactly 16 hex digits")
        });
    }
    if name.starts_with("iqn.") {
        return iqn_problem(name);
    }
    Some(format!(
        "{name:?} is not a target name: use iqn.YYYY-MM.reverse.domain[:name] in lower case (as in \
         iqn.2025-08.com.example:vol0), or eui. and 16 hex digits"
    ))
}

/// Why `name` is not an initiator name an allow-list may hold, if it is not: an iqn, eui or naa name.
fn initiator_name_problem(name: &str) -> Option<String> {
    if let Some(why) = iscsi_name_length_problem(name) {
        return Some(why);
    }
    if let Some(hex) = name.strip_prefix("naa.") {
        return (!matches!(hex.len(), 16 | 32) || !hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| {
                format!("{name:?} is not an NAA name: naa. is followed by 16 or 32 hex digits")
            });
    }
    target_name_problem(name).map(|_| {
        format!(
            "{name:?} is not an initiator name: give the initiator's iqn.YYYY-MM.reverse.domain[:name] (lower case), \
             eui. or naa. name, as its /etc/iscsi/initiatorname.iscsi says"
        )
    })
}

fn iscsi_name_length_problem(name: &str) -> Option<String> {
    (name.len() > MAX_ISCSI_NAME_LEN).then(|| {
        format!(
            "is {} bytes long: iSCSI names have at most {MAX_ISCSI_NAME_LEN}",
            name.len()
        )
    })
}

/// Why `name`, which starts with `iqn.`, is not a well-formed iqn name, if it is not.
fn iqn_problem(name: &str) -> Option<String> {
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | ':')))
    {
        return Some(format!(
            "{name:?} has the character {c:?}: an iqn name has only lower-case letters, digits, '-', '.' and ':'"
        ));
    }
    let rest = name.get(4..).unwrap_or("");
    let authority = rest
        .split_once(':')
        .map_or(rest, |(authority, _)| authority);
    let bytes = authority.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|b| b.iter().all(u8::is_ascii_digit))
    };
    let month = authority.get(5..7).and_then(|m| m.parse::<u8>().ok());
    let dated = digits(0..4)
        && bytes.get(4) == Some(&b'-')
        && digits(5..7)
        && month.is_some_and(|m| (1..=12).contains(&m))
        && bytes.get(7) == Some(&b'.');
    if !dated {
        return Some(format!(
            "{name:?} has no date: iqn. is followed by the year and month the naming authority held its domain \
             (YYYY-MM), as in iqn.2025-08.com.example:vol0"
        ));
    }
    let domain = authority.get(8..).unwrap_or("");
    let labels_ok = domain
        .split('.')
        .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'));
    if !labels_ok {
        return Some(format!(
            "{name:?} has no reversed domain name after the date, as in iqn.2025-08.com.example:vol0"
        ));
    }
    None
}

/// Whether `address` is assigned on this machine: binding a UDP socket to it succeeds only then (unless the
/// kernel allows binding foreign addresses, `net.ipv4.ip_nonlocal_bind`).
fn address_is_local(address: IpAddr) -> bool {
    std::net::UdpSocket::bind(std::net::SocketAddr::new(address, 0)).is_ok()
}

/// `a, b, c`, or `(none)`.
fn names<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    let list: Vec<String> = items.into_iter().map(|s| s.as_ref().to_string()).collect();
    if list.is_empty() {
        "(none)".to_string()
    } else {
        list.join(", ")
    }
}

/// The files a disk uses, resolved, with the key naming each (`path`, `meta`).
fn disk_files(config: &ClusterConfig, disk: &DiskConfig) -> Vec<(&'static str, PathBuf)> {
    let mut files = vec![("path", config.resolve(&disk.path))];
    if let Some(meta) = &disk.meta {
        files.push(("meta", config.resolve(meta)));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinsan_replication::generation::{AfterSb0Pri, AfterSb1Pri, AfterSb2Pri};

    /// A valid config with everything the checks look at: two volumes (one with external metadata on node2), two
    /// targets (an iqn and an eui name).
    pub(super) const VALID: &str = r#"
[cluster]
name = "test"
secret = "5f3c9a1e7b2d4068a9e1c3b5d7f90246"

[[node]]
name = "node1"
id = 1
address = "127.0.0.11"
admin_socket = "node1.sock"

[[node]]
name = "node2"
id = 2
address = "127.0.0.12"
admin_socket = "node2.sock"

[[volume]]
name = "vol0"
uuid = "0123456789abcdef0123456789abcdef"
port = 7789
disk = { node1 = { path = "node1/vol0.img" }, node2 = { path = "node2/vol0.img", meta = "node2/vol0.md" } }

[[volume]]
name = "vol1"
uuid = "fedcba98-7654-3210-fedc-ba9876543210"
port = 7790
protocol = "A"
fencing = "resource-only"
after_sb_0pri = "discard-node-node2"
after_sb_1pri = "consensus"
after_sb_2pri = "call-pri-lost-after-sb"
checksum_resync = true
resync_max_kib_s = 102400
disk = { node1 = { path = "/dev/vg0/vol1" }, node2 = { path = "/dev/vg0/vol1" } }

[[target]]
iqn = "iqn.2025-08.local.twinsan:vol0"
vip = "127.0.0.10"
port = 3260
allow = ["iqn.1994-05.com.redhat:client1", "eui.0123456789ABCDEF", "naa.0123456789abcdef"]
lun = [ { lun = 1, volume = "vol0" } ]

[[target]]
iqn = "eui.0123456789ABCDEF"
vip = "127.0.0.20"
lun = [ { lun = 0, volume = "vol1" } ]
"#;

    fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        ClusterConfig::parse(
            text,
            Path::new("/etc/twinsan/twinsan.toml"),
            Path::new("/etc/twinsan"),
        )
    }

    /// `VALID` with `from` (which must occur exactly once) replaced by `to`.
    fn edited(from: &str, to: &str) -> String {
        assert_eq!(
            VALID.matches(from).count(),
            1,
            "{from:?} must occur once in VALID"
        );
        VALID.replacen(from, to, 1)
    }

    /// Asserts `text` is refused for `field` with a message containing `why`, and that the text the admin sees
    /// names the file and the field.
    #[track_caller]
    fn assert_refused(text: &str, field: &str, why: &str) {
        match parse(text) {
            Err(error @ ConfigError::Invalid { .. }) => {
                let ConfigError::Invalid {
                    field: got,
                    why: got_why,
                    ..
                } = &error
                else {
                    unreachable!()
                };
                assert_eq!(got, field, "{error}");
                assert!(got_why.contains(why), "{error}\n  should contain {why:?}");
                let shown = error.to_string();
                assert!(shown.starts_with("/etc/twinsan/twinsan.toml: "), "{shown}");
                assert!(shown.contains(field), "{shown}");
            }
            other => panic!("expected {field} to be refused, got {other:?}"),
        }
    }

    /// Each case: (from, to, field, part of the message).
    #[track_caller]
    fn assert_cases(cases: &[(&str, &str, &str, &str)]) {
        for &(from, to, field, why) in cases {
            assert_refused(&edited(from, to), field, why);
        }
    }

    #[test]
    fn the_http_endpoint_is_a_socket_address_false_or_the_default() {
        let a = "address = \"127.0.0.11\"";
        let with = |v: &str| edited(a, &format!("{a}\nhttp = {v}"));
        let config = parse(VALID).expect("valid");
        let node1 = &config.nodes[0];
        assert_eq!(
            config.http_endpoint(node1),
            HttpEndpoint::Default("127.0.0.11:9942".parse().expect("addr"))
        );
        for (value, want) in [
            ("false", HttpEndpoint::Off),
            (
                "true",
                HttpEndpoint::Default("127.0.0.11:9942".parse().expect("addr")),
            ),
            (
                "\"198.18.0.5:9100\"",
                HttpEndpoint::Configured("198.18.0.5:9100".parse().expect("addr")),
            ),
            (
                "\"[::1]:9942\"",
                HttpEndpoint::Configured("[::1]:9942".parse().expect("addr")),
            ),
        ] {
            let c = parse(&with(value)).expect(value);
            assert_eq!(c.http_endpoint(&c.nodes[0]), want, "{value}");
        }
        let wrong_type = parse(&with("9942")).expect_err("a number").to_string();
        assert!(
            wrong_type.contains("\"ADDR:PORT\", or false for no HTTP endpoint"),
            "{wrong_type}"
        );
        for (value, why) in [
            ("\"127.0.0.11\"", "not ADDR:PORT"),
            ("\"metrics.example:9942\"", "not ADDR:PORT"),
            ("\"127.0.0.11:0\"", "give the port"),
        ] {
            assert_refused(&with(value), "node[node1].http", why);
        }
    }

    #[test]
    fn manual_resource_only_fencing_takes_a_fence_peer_handler() {
        let text = edited(
            "fencing = \"resource-only\"",
            "fencing = \"resource-only\"\nhandler_fence_peer = \"fence $TWINSAN_PEER\"\n\
             handler_unfence_peer = \"unfence $TWINSAN_PEER\"",
        )
        .replacen("name = \"test\"\n", "name = \"test\"\nmanual = true\n", 1);
        let config = parse(&text).expect("manual, resource-only with a fence-peer handler");
        let vol1 = &config.volumes[1];
        assert_eq!(vol1.fencing(), FencingPolicy::ResourceOnly);
        assert_eq!(
            vol1.handler_fence_peer.as_deref(),
            Some("fence $TWINSAN_PEER")
        );
        assert_eq!(
            vol1.handler_unfence_peer.as_deref(),
            Some("unfence $TWINSAN_PEER")
        );
    }

    #[test]
    fn the_valid_config_parses_into_typed_values() {
        let config = parse(VALID).expect("valid");
        assert_eq!(config.cluster.name, "test");
        assert!(!config.cluster.manual);
        assert_eq!(config.nodes.len(), 2);
        let vol0 = config.volume("vol0").expect("vol0");
        assert_eq!(vol0.protocol(), ReplicationProtocol::C);
        assert_eq!(vol0.fencing(), FencingPolicy::DontCare);
        assert_eq!(vol0.policies(&config), AfterSbPolicies::default());
        assert_eq!(vol0.uuid_value(), 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(vol0.disk["node1"].placement(), PlacementKind::Internal);
        assert_eq!(vol0.disk["node2"].placement(), PlacementKind::External);
        assert_eq!(vol0.resync_max_kib_s, None);
        let vol1 = config.volume("vol1").expect("vol1");
        assert_eq!(vol1.protocol(), ReplicationProtocol::A);
        assert_eq!(vol1.fencing(), FencingPolicy::ResourceOnly);
        assert_eq!(
            vol1.policies(&config),
            AfterSbPolicies {
                zero_primaries: AfterSb0Pri::DiscardNode(2),
                one_primary: AfterSb1Pri::Consensus,
                two_primaries: AfterSb2Pri::CallPriLostAfterSb,
            }
        );
        assert_eq!(vol1.uuid_value(), 0xfedc_ba98_7654_3210_fedc_ba98_7654_3210);
        assert!(vol1.checksum_resync);
        assert_eq!(vol1.resync_max_kib_s, Some(102_400));
        assert_eq!(config.targets[0].port, 3260);
        assert_eq!(config.targets[1].port, 3260, "default iSCSI port");
        assert_eq!(
            config.resolve(Path::new("node1/vol0.img")),
            Path::new("/etc/twinsan/node1/vol0.img")
        );
        assert_eq!(
            config.resolve(Path::new("/dev/vg0/vol1")),
            Path::new("/dev/vg0/vol1")
        );
        let node1 = config.node("node1").expect("node1");
        assert_eq!(
            config.admin_socket(node1),
            Path::new("/etc/twinsan/node1.sock")
        );
        assert_eq!(config.peer_of("node1").map(|n| n.id), Some(2));
        assert_eq!(
            config.secret().expect("inline"),
            b"5f3c9a1e7b2d4068a9e1c3b5d7f90246"
        );
    }

    #[test]
    fn every_policy_spelling_is_accepted() {
        let zero = [
            ("disconnect", AfterSb0Pri::Disconnect),
            (
                "discard-younger-primary",
                AfterSb0Pri::DiscardYoungerPrimary,
            ),
            ("discard-older-primary", AfterSb0Pri::DiscardOlderPrimary),
            ("discard-zero-changes", AfterSb0Pri::DiscardZeroChanges),
            ("discard-least-changes", AfterSb0Pri::DiscardLeastChanges),
            ("discard-node-node1", AfterSb0Pri::DiscardNode(1)),
        ];
        for (text, policy) in zero {
            let config = parse(&edited("discard-node-node2", text)).expect(text);
            assert_eq!(config.volumes[1].policies(&config).zero_primaries, policy);
        }
        let one = [
            ("disconnect", AfterSb1Pri::Disconnect),
            ("consensus", AfterSb1Pri::Consensus),
            ("discard-secondary", AfterSb1Pri::DiscardSecondary),
            ("call-pri-lost-after-sb", AfterSb1Pri::CallPriLostAfterSb),
        ];
        for (text, policy) in one {
            let config = parse(&edited("\"consensus\"", &format!("{text:?}"))).expect(text);
            assert_eq!(config.volumes[1].policies(&config).one_primary, policy);
        }
        for (text, policy) in [
            ("disconnect", AfterSb2Pri::Disconnect),
            ("call-pri-lost-after-sb", AfterSb2Pri::CallPriLostAfterSb),
        ] {
            let config =
                parse(&edited("\"call-pri-lost-after-sb\"", &format!("{text:?}"))).expect(text);
            assert_eq!(config.volumes[1].policies(&config).two_primaries, policy);
        }
        for (text, protocol) in [
            ("A", ReplicationProtocol::A),
            ("B", ReplicationProtocol::B),
            ("C", ReplicationProtocol::C),
        ] {
            let config =
                parse(&edited("protocol = \"A\"", &format!("protocol = {text:?}"))).expect(text);
            assert_eq!(config.volumes[1].protocol(), protocol);
        }
        for (text, fencing) in [
            ("dont-care", FencingPolicy::DontCare),
            ("resource-only", FencingPolicy::ResourceOnly),
        ] {
            let config = parse(&edited("\"resource-only\"", &format!("{text:?}"))).expect(text);
            assert_eq!(config.volumes[1].fencing(), fencing);
        }
    }

    #[test]
    fn a_round_trip_through_a_file() {
        let dir = temp_dir("roundtrip");
        let file = dir.path().join("twinsan.toml");
        std::fs::write(&file, VALID).expect("write");
        let loaded = ClusterConfig::load(&file).expect("loads");
        assert_eq!(loaded.source, file);
        assert_eq!(loaded.base_dir, dir.path());
        assert_eq!(
            loaded.admin_socket(&loaded.nodes[1]),
            dir.path().join("node2.sock")
        );
        let disk = &loaded.volumes[0].disk["node2"];
        assert_eq!(
            loaded.resolve(&disk.path),
            dir.path().join("node2/vol0.img")
        );
        assert_eq!(
            disk.meta.as_deref().map(|m| loaded.resolve(m)),
            Some(dir.path().join("node2/vol0.md"))
        );
        // The same text parsed from memory gives the same config.
        let parsed = ClusterConfig::parse(VALID, &file, dir.path()).expect("parses");
        assert_eq!(format!("{parsed:?}"), format!("{loaded:?}"));

        let missing = dir.path().join("missing.toml");
        let error = ClusterConfig::load(&missing).expect_err("no file");
        let shown = error.to_string();
        assert!(
            shown.starts_with(&missing.display().to_string())
                && shown.contains("--config")
                && shown.contains("twinsan init"),
            "{error}"
        );
    }

    #[test]
    fn parse_errors_name_the_file_and_the_key() {
        let error = parse(&edited("port = 7790", "port = \"seven\"")).expect_err("wrong type");
        let shown = error.to_string();
        assert!(shown.starts_with("/etc/twinsan/twinsan.toml: "), "{shown}");
        assert!(shown.contains("port"), "{shown}");
        let error = parse(&edited("checksum_resync = true", "checksum_resyncc = true"))
            .expect_err("unknown key");
        assert!(error.to_string().contains("checksum_resyncc"), "{error}");
        let error = parse(&edited(
            "address = \"127.0.0.12\"",
            "address = \"node2.example\"",
        ))
        .expect_err("not an IP");
        assert!(matches!(error, ConfigError::Parse { .. }), "{error:?}");
    }

    /// A word that is not one of a setting's is refused by the parser: the message shows the line (the key and the
    /// value) and lists the words allowed.
    #[test]
    fn a_wrong_word_is_refused_naming_the_key_the_value_and_the_words() {
        for (from, key, value, words) in [
            (
                "protocol = \"A\"",
                "protocol",
                "D",
                &["`A`", "`B`", "`C`"][..],
            ),
            (
                "fencing = \"resource-only\"",
                "fencing",
                "resource-and-stonith",
                &["`dont-care`", "`resource-only`"],
            ),
            (
                "after_sb_0pri = \"discard-node-node2\"",
                "after_sb_0pri",
                "discard-secondary",
                &[
                    "`disconnect`",
                    "`discard-younger-primary`",
                    "`discard-older-primary`",
                    "`discard-zero-changes`",
                    "`discard-least-changes`",
                    "`discard-node-NAME`",
                ],
            ),
            (
                "after_sb_0pri = \"discard-node-node2\"",
                "after_sb_0pri",
                "discard-node-",
                &["`discard-node-NAME`"],
            ),
            (
                "after_sb_1pri = \"consensus\"",
                "after_sb_1pri",
                "discard-younger-primary",
                &[
                    "`disconnect`",
                    "`consensus`",
                    "`discard-secondary`",
                    "`call-pri-lost-after-sb`",
                ],
            ),
            (
                "after_sb_2pri = \"call-pri-lost-after-sb\"",
                "after_sb_2pri",
                "discard-secondary",
                &["`disconnect`", "`call-pri-lost-after-sb`"],
            ),
            (
                "name = \"test\"\n",
                "no_quorum_policy",
                "freeze",
                &["`ignore`", "`stop`"],
            ),
            // The words are case-sensitive, as they always were.
            ("protocol = \"A\"", "protocol", "c", &["`C`"]),
            (
                "fencing = \"resource-only\"",
                "fencing",
                "Resource-Only",
                &["`resource-only`"],
            ),
        ] {
            let line = format!("{key} = \"{value}\"");
            let to = if key == "no_quorum_policy" {
                format!("{from}{line}\n")
            } else {
                line.clone()
            };
            let error = parse(&edited(from, &to)).expect_err(&line);
            let shown = error.to_string();
            assert!(matches!(error, ConfigError::Parse { .. }), "{shown}");
            assert!(shown.starts_with("/etc/twinsan/twinsan.toml: "), "{shown}");
            assert!(
                shown.contains(&line),
                "{line}: the line is not shown: {shown}"
            );
            assert!(
                shown.contains(&format!("`{value}`")),
                "{line}: the value is not named: {shown}"
            );
            for word in words {
                assert!(
                    shown.contains(word),
                    "{line}: {word} is not listed: {shown}"
                );
            }
        }
    }

    #[test]
    fn cluster_refusals() {
        const SECRET: &str = "secret = \"5f3c9a1e7b2d4068a9e1c3b5d7f90246\"";
        let with = |extra: &str| format!("{SECRET}\n{extra}");
        for (extra, field, why) in [
            ("port = 0", "cluster.port", "is 0"),
            (
                "heartbeat_interval_ms = 5",
                "cluster.heartbeat_interval_ms",
                "10..=10000",
            ),
            (
                "heartbeat_interval_ms = 600\ndetection_timeout_ms = 1000",
                "cluster.detection_timeout_ms",
                "at least two heartbeat intervals (1200 ms)",
            ),
            (
                "monitor_interval_ms = 10",
                "cluster.monitor_interval_ms",
                "100..=600000",
            ),
            (
                "witness = \"127.0.0.11:5406\"",
                "cluster.witness",
                "on node node1",
            ),
            (
                "witness = \"0.0.0.0:5406\"",
                "cluster.witness",
                "not a witness address",
            ),
            (
                "console_password_hash = \"hunter2\"",
                "cluster.console_password_hash",
                "twinsan passwd",
            ),
            (
                "console_password_hash = \"$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$YWJjZGVmZ2hpamtsbW5vcA\"",
                "cluster.console_password_hash",
                "argon2",
            ),
        ] {
            assert_refused(&edited(SECRET, &with(extra)), field, why);
        }
        let options = parse(&edited(
            SECRET,
            &with("witness = \"127.0.0.13:5406\"\nresource_stickiness = 0\nno_quorum_policy = \"stop\""),
        ))
        .expect("valid options");
        assert_eq!(options.cluster.resource_stickiness, 0);
        assert!(options.no_quorum_stop());
        let defaults = parse(VALID).expect("valid");
        assert_eq!(
            (
                defaults.cluster.port,
                defaults.cluster.heartbeat_interval_ms,
                defaults.cluster.detection_timeout_ms,
                defaults.cluster.resource_stickiness
            ),
            (5405, 200, 1000, 100)
        );
        assert!(!defaults.no_quorum_stop());
        assert_cases(&[
            (
                "name = \"test\"",
                "name = \" \"",
                "cluster.name",
                "is empty",
            ),
            (
                "secret = \"5f3c9a1e7b2d4068a9e1c3b5d7f90246\"",
                "secret = \"5f3c9a1e7b2d4068a9e1c3b5d7f90246\"\nsecret_file = \"secret\"",
                "cluster.secret",
                "keep exactly one",
            ),
            (
                "secret = \"5f3c9a1e7b2d4068a9e1c3b5d7f90246\"",
                "",
                "cluster.secret",
                "is missing",
            ),
            (
                "secret = \"5f3c9a1e7b2d4068a9e1c3b5d7f90246\"",
                "secret = \"\"",
                "cluster.secret",
                "0 characters",
            ),
            (
                "secret = \"5f3c9a1e7b2d4068a9e1c3b5d7f90246\"",
                "secret = \"hunter2\"",
                "cluster.secret",
                "at least 16",
            ),
            (
                "secret = \"5f3c9a1e7b2d4068a9e1c3b5d7f90246\"",
                "secret = \"abababababababababab\"",
                "cluster.secret",
                "easy to guess",
            ),
            (
                "secret = \"5f3c9a1e7b2d4068a9e1c3b5d7f90246\"",
                "secret_file = \"\"",
                "cluster.secret_file",
                "is empty",
            ),
        ]);
        // The message never repeats a secret, weak or not.
        let error =
            parse(&edited("5f3c9a1e7b2d4068a9e1c3b5d7f90246", "hunter2")).expect_err("weak");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn the_secret_is_not_in_debug_output() {
        let config = parse(VALID).expect("valid");
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("5f3c9a1e7b2d4068a9e1c3b5d7f90246"),
            "{shown}"
        );
        assert!(shown.contains("(hidden)"), "{shown}");
    }

    #[test]
    fn a_secret_file_is_read_and_checked() {
        let dir = temp_dir("secret");
        std::fs::write(
            dir.path().join("secret"),
            "  f00dfeedfacecafe1234  \nignored\n",
        )
        .expect("write");
        let text = edited(
            "secret = \"5f3c9a1e7b2d4068a9e1c3b5d7f90246\"",
            "secret_file = \"secret\"",
        );
        let file = dir.path().join("twinsan.toml");
        let config = ClusterConfig::parse(&text, &file, dir.path()).expect("valid");
        assert_eq!(config.secret().expect("read"), b"f00dfeedfacecafe1234");
        std::fs::write(dir.path().join("secret"), "short\n").expect("write");
        let error = config.secret().expect_err("weak");
        assert!(
            matches!(&error, ConfigError::Invalid { field, .. } if field == "cluster.secret_file"),
            "{error:?}"
        );
        assert!(error.to_string().contains("at least 16"), "{error}");
        std::fs::remove_file(dir.path().join("secret")).expect("remove");
        let error = config.secret().expect_err("missing");
        assert!(error.to_string().contains("secret"), "{error}");
    }

    const NODE2: &str =
        "name = \"node2\"\nid = 2\naddress = \"127.0.0.12\"\nadmin_socket = \"node2.sock\"";

    #[test]
    fn node_refusals() {
        let links = |n1: &str, n2: &str| {
            edited(
                "address = \"127.0.0.11\"",
                &format!("address = \"127.0.0.11\"\nlinks = [{n1}]"),
            )
            .replacen(
                "address = \"127.0.0.12\"",
                &format!("address = \"127.0.0.12\"\nlinks = [{n2}]"),
                1,
            )
        };
        let ok = parse(&links("\"127.0.1.11\"", "\"127.0.1.12\"")).expect("two links");
        assert_eq!(
            ok.cluster_links(&ok.nodes[1]),
            [
                "127.0.0.12".parse::<IpAddr>().unwrap(),
                "127.0.1.12".parse().unwrap()
            ]
        );
        assert_refused(
            &links("\"127.0.1.11\"", ""),
            "node[node2].links",
            "both list the same number",
        );
        assert_refused(
            &links("\"127.0.0.11\"", "\"127.0.1.12\""),
            "node[node1].links[0]",
            "cannot be a further cluster link",
        );
        let third =
            format!("{NODE2}\n\n[[node]]\nname = \"node3\"\nid = 3\naddress = \"127.0.0.13\"");
        assert_refused(
            &edited(NODE2, &third),
            "node",
            "exactly two [[node]] sections; 3 are configured",
        );
        let one = VALID.replacen(&format!("[[node]]\n{NODE2}"), "", 1);
        assert_refused(&one, "node", "1 are configured");
        assert_cases(&[
            (
                "name = \"node2\"\nid",
                "name = \"\"\nid",
                "node[#2].name",
                "is empty",
            ),
            (
                "name = \"node2\"\nid",
                "name = \"node 2\"\nid",
                "node[node 2].name",
                "' '",
            ),
            (
                "name = \"node2\"\nid",
                "name = \"node1\"\nid",
                "node[node1].name",
                "two nodes have this name",
            ),
            ("id = 1\n", "id = 0\n", "node[node1].id", "1..=31"),
            ("id = 2\n", "id = 32\n", "node[node2].id", "1..=31"),
            (
                "id = 2\n",
                "id = 1\n",
                "node[node2].id",
                "node node1 has the same id 1",
            ),
            (
                "address = \"127.0.0.12\"",
                "address = \"127.0.0.11\"",
                "node[node2].address",
                "same address",
            ),
            (
                "address = \"127.0.0.11\"",
                "address = \"0.0.0.0\"",
                "node[node1].address",
                "cannot be",
            ),
            (
                "admin_socket = \"node2.sock\"",
                "admin_socket = \"node1.sock\"",
                "node[node2].admin_socket",
                "node node1",
            ),
            (
                "admin_socket = \"node2.sock\"",
                "admin_socket = \"\"",
                "node[node2].admin_socket",
                "is empty",
            ),
        ]);
        // Absolute and relative spellings of one socket are the same socket.
        assert_refused(
            &edited(
                "admin_socket = \"node2.sock\"",
                "admin_socket = \"/etc/twinsan/node1.sock\"",
            ),
            "node[node2].admin_socket",
            "same socket",
        );
    }

    #[test]
    fn volume_refusals() {
        assert_cases(&[
            (
                "name = \"vol1\"",
                "name = \"\"",
                "volume[#2].name",
                "is empty",
            ),
            (
                "name = \"vol1\"",
                "name = \"vol/1\"",
                "volume[vol/1].name",
                "'/'",
            ),
            (
                "name = \"vol1\"",
                "name = \"vol0\"",
                "volume[vol0].name",
                "two volumes",
            ),
            ("port = 7790", "port = 0", "volume[vol1].port", "is 0"),
            (
                "port = 7790",
                "port = 7789",
                "volume[vol1].port",
                "volume vol0 uses the same port 7789",
            ),
            (
                "fedcba98-7654-3210-fedc-ba9876543210",
                "fedcba98",
                "volume[vol1].uuid",
                "32 hex digits",
            ),
            (
                "fedcba98-7654-3210-fedc-ba9876543210",
                "fedcba98-7654-3210-fedc-ba987654321g",
                "volume[vol1].uuid",
                "32 hex",
            ),
            (
                "fedcba98-7654-3210-fedc-ba9876543210",
                "+edcba9876543210fedcba9876543210",
                "volume[vol1].uuid",
                "32 hex",
            ),
            (
                "fedcba98-7654-3210-fedc-ba9876543210",
                "00000000000000000000000000000000",
                "volume[vol1].uuid",
                "not all zero",
            ),
            (
                "fedcba98-7654-3210-fedc-ba9876543210",
                "0123456789ABCDEF0123456789ABCDEF",
                "volume[vol1].uuid",
                "volume vol0 has the same uuid",
            ),
            (
                "name = \"test\"\n",
                "name = \"test\"\nmanual = true\n",
                "volume[vol1].fencing",
                "with cluster.manual = true none runs",
            ),
            (
                "fencing = \"resource-only\"",
                "fencing = \"resource-only\"\nhandler_fence_peer = \"true\"",
                "volume[vol1].handler_fence_peer",
                "for cluster.manual = true",
            ),
            (
                "\"discard-node-node2\"",
                "\"discard-node-node3\"",
                "volume[vol1].after_sb_0pri",
                "discard-node-node1, discard-node-node2",
            ),
            (
                "resync_max_kib_s = 102400",
                "resync_max_kib_s = 0",
                "volume[vol1].resync_max_kib_s",
                "above 0",
            ),
        ]);
    }

    #[test]
    fn disk_refusals() {
        const DISKS: &str =
            "disk = { node1 = { path = \"/dev/vg0/vol1\" }, node2 = { path = \"/dev/vg0/vol1\" } }";
        let disks = |text: &str| edited(DISKS, text);
        assert_refused(
            &disks("disk = { node1 = { path = \"a\" }, node2 = { path = \"b\" }, node3 = { path = \"c\" } }"),
            "volume[vol1].disk.node3",
            "no [[node]] is named node3",
        );
        assert_refused(
            &disks("disk = { node1 = { path = \"a\" } }"),
            "volume[vol1].disk",
            "no disk for node node2",
        );
        assert_refused(
            &disks("disk = {}"),
            "volume[vol1].disk",
            "no disk for node node1",
        );
        assert_refused(
            &disks("disk = { node1 = { path = \"\" }, node2 = { path = \"b\" } }"),
            "volume[vol1].disk.node1.path",
            "is empty",
        );
        assert_refused(
            &disks("disk = { node1 = { path = \"a\", meta = \"\" }, node2 = { path = \"b\" } }"),
            "volume[vol1].disk.node1.meta",
            "is empty",
        );
        assert_refused(
            &disks("disk = { node1 = { path = \"a\" }, node2 = { path = \"b\", meta = \"/etc/twinsan/b\" } }"),
            "volume[vol1].disk.node2.meta",
            "the same as path",
        );
        // Two volumes on one file of one node: one would overwrite the other.
        assert_refused(
            &disks("disk = { node1 = { path = \"node1/vol0.img\" }, node2 = { path = \"b\" } }"),
            "volume[vol1].disk.node1.path",
            "is also the path of volume vol0 on node1",
        );
        assert_refused(
            &disks("disk = { node1 = { path = \"a\" }, node2 = { path = \"b\", meta = \"node2/vol0.md\" } }"),
            "volume[vol1].disk.node2.meta",
            "is also the meta of volume vol0 on node2",
        );
        assert_refused(
            &disks("disk = { node1 = { path = \"a\" }, node2 = { path = \"node2/vol0.md\" } }"),
            "volume[vol1].disk.node2.path",
            "is also the meta of volume vol0",
        );
        // The same path on different nodes is normal (each node has its own disks).
        parse(&disks("disk = { node1 = { path = \"node2/vol0.img\" }, node2 = { path = \"node1/vol0.img\" } }"))
            .expect("same path on the other node");
    }

    #[test]
    fn target_refusals() {
        const T0: &str = "target[iqn.2025-08.local.twinsan:vol0]";
        let two_volumes = edited(
            "lun = [ { lun = 0, volume = \"vol1\" } ]",
            "lun = [ { lun = 0, volume = \"vol1\" } ]\nvip_prefix = 33",
        );
        assert_refused(
            &two_volumes,
            "target[eui.0123456789ABCDEF].vip_prefix",
            "give 1..=32",
        );
        let mixed = edited(
            "lun = [ { lun = 1, volume = \"vol0\" } ]",
            "lun = [ { lun = 1, volume = \"vol0\" }, { lun = 2, volume = \"vol1\" } ]",
        );
        // vol1 is still LUN 0 of the second target.
        assert_refused(
            &mixed,
            "target[eui.0123456789ABCDEF].lun[0].volume",
            &format!(
                "volume vol1 is already LUN 2 of target {}",
                &T0[7..T0.len() - 1]
            ),
        );
        // Without it, one target serves both volumes in a managed cluster too: they fail over together.
        let end = mixed
            .find("[[target]]\niqn = \"eui.")
            .expect("second target");
        let together = parse(&mixed[..end]).expect("one target with LUNs of two volumes");
        assert!(!together.cluster.manual);
        assert_eq!(together.targets.len(), 1);
        assert_eq!(together.targets[0].lun.len(), 2);
        let manual = mixed
            .replacen("name = \"test\"", "name = \"test\"\nmanual = true", 1)
            .replacen("fencing = \"resource-only\"", "", 1);
        let refused = parse(&manual).expect_err("vol1 behind two LUNs");
        assert!(refused.to_string().contains("already LUN 2"), "{refused}");
        assert_cases(&[
            (
                "\"iqn.2025-08.local.twinsan:vol0\"",
                "\"iqn.2025-08.local.Twinsan:vol0\"",
                "target[iqn.2025-08.local.Twinsan:vol0].iqn",
                "'T'",
            ),
            (
                "\"iqn.2025-08.local.twinsan:vol0\"",
                "\"iqn.2025-13.local.twinsan:vol0\"",
                "target[iqn.2025-13.local.twinsan:vol0].iqn",
                "no date",
            ),
            (
                "\"iqn.2025-08.local.twinsan:vol0\"",
                "\"iqn.local.twinsan:vol0\"",
                "target[iqn.local.twinsan:vol0].iqn",
                "no date",
            ),
            (
                "\"iqn.2025-08.local.twinsan:vol0\"",
                "\"iqn.2025-08.:vol0\"",
                "target[iqn.2025-08.:vol0].iqn",
                "reversed domain",
            ),
            (
                "\"iqn.2025-08.local.twinsan:vol0\"",
                "\"iqn.2025-08.local..x\"",
                "target[iqn.2025-08.local..x].iqn",
                "reversed domain",
            ),
            (
                "\"iqn.2025-08.local.twinsan:vol0\"",
                "\"vol0\"",
                "target[vol0].iqn",
                "not a target name",
            ),
            (
                "\"iqn.2025-08.local.twinsan:vol0\"",
                "\"\"",
                "target[#1].iqn",
                "not a target name",
            ),
            (
                "\"iqn.2025-08.local.twinsan:vol0\"",
                "\"naa.0123456789abcdef\"",
                "target[naa.0123456789abcdef].iqn",
                "not a target name",
            ),
            (
                "iqn = \"eui.0123456789ABCDEF\"",
                "iqn = \"eui.0123\"",
                "target[eui.0123].iqn",
                "16 hex digits",
            ),
            (
                "iqn = \"eui.0123456789ABCDEF\"",
                "iqn = \"iqn.2025-08.local.twinsan:vol0\"",
                &format!("{T0}.iqn"),
                "two targets have this name",
            ),
            (
                "vip = \"127.0.0.10\"",
                "vip = \"127.0.0.11\"",
                &format!("{T0}.vip"),
                "is the address of node node1",
            ),
            (
                "vip = \"127.0.0.10\"",
                "vip = \"0.0.0.0\"",
                &format!("{T0}.vip"),
                "cannot be a virtual IP",
            ),
            ("port = 3260", "port = 0", &format!("{T0}.port"), "is 0"),
            (
                "vip = \"127.0.0.20\"",
                "vip = \"127.0.0.10\"",
                "target[eui.0123456789ABCDEF].vip",
                "also listens on 127.0.0.10:3260",
            ),
            (
                "\"iqn.1994-05.com.redhat:client1\"",
                "\"client1\"",
                &format!("{T0}.allow[0]"),
                "not an initiator name",
            ),
            (
                "\"naa.0123456789abcdef\"",
                "\"naa.0123\"",
                &format!("{T0}.allow[2]"),
                "16 or 32 hex digits",
            ),
            (
                "lun = [ { lun = 1, volume = \"vol0\" } ]",
                "lun = []",
                &format!("{T0}.lun"),
                "at least one LUN",
            ),
            (
                "{ lun = 1, volume = \"vol0\" }",
                "{ lun = 16384, volume = \"vol0\" }",
                &format!("{T0}.lun[16384].lun"),
                "0..=16383",
            ),
            (
                "{ lun = 1, volume = \"vol0\" }",
                "{ lun = 1, volume = \"vol0\" }, { lun = 1, volume = \"vol1\" }",
                &format!("{T0}.lun[1].lun"),
                "two LUNs",
            ),
            (
                "{ lun = 1, volume = \"vol0\" }",
                "{ lun = 1, volume = \"vol9\" }",
                &format!("{T0}.lun[1].volume"),
                "no [[volume]] is named \"vol9\" (the volumes are: vol0, vol1)",
            ),
            (
                "{ lun = 1, volume = \"vol0\" }",
                "{ lun = 1, volume = \"vol0\" }, { lun = 2, volume = \"vol0\" }",
                &format!("{T0}.lun[2].volume"),
                "already LUN 1 of target iqn.2025-08.local.twinsan:vol0",
            ),
            (
                "{ lun = 0, volume = \"vol1\" }",
                "{ lun = 0, volume = \"vol0\" }",
                "target[eui.0123456789ABCDEF].lun[0].volume",
                "already LUN 1",
            ),
        ]);
        // The same vip on another port is a different portal; LUN 16383 is the last one.
        parse(&edited(
            "vip = \"127.0.0.20\"",
            "vip = \"127.0.0.10\"\nport = 3261",
        ))
        .expect("other port");
        parse(&edited(
            "{ lun = 1, volume = \"vol0\" }",
            "{ lun = 16383, volume = \"vol0\" }",
        ))
        .expect("last LUN");
        // A volume behind no LUN is allowed (replicated, not exported yet).
        parse(
            &edited(
                "lun = [ { lun = 0, volume = \"vol1\" } ]",
                "lun = [ { lun = 0, volume = \"vol0\" } ]",
            )
            .replacen(
                "lun = [ { lun = 1, volume = \"vol0\" } ]",
                "lun = [ { lun = 1, volume = \"vol1\" } ]",
                1,
            ),
        )
        .expect("swapped");
    }

    #[test]
    fn this_node_by_name_or_by_address() {
        let config = parse(VALID).expect("valid");
        assert_eq!(config.this_node(Some("node2")).map(|n| n.id).ok(), Some(2));
        let error = config.this_node(Some("node9")).expect_err("unknown");
        let shown = error.to_string();
        assert!(
            shown.contains("--node node9") && shown.contains("node1, node2"),
            "{shown}"
        );
        // Both loopback addresses are on this machine: the node cannot be told from the addresses.
        let error = config.this_node(None).expect_err("both local");
        assert!(error.to_string().contains("pass --node NAME"), "{error}");
        // 198.51.100.0/24 and 203.0.113.0/24 are reserved for documentation: no machine here has them.
        let one = edited("address = \"127.0.0.11\"", "address = \"198.51.100.1\"");
        let config = parse(&one).expect("valid");
        assert_eq!(
            config.this_node(None).map(|n| n.name.as_str()).ok(),
            Some("node2")
        );
        let none = one.replacen("address = \"127.0.0.12\"", "address = \"203.0.113.1\"", 1);
        let config = parse(&none).expect("valid");
        let error = config.this_node(None).expect_err("none local");
        let shown = error.to_string();
        assert!(
            shown.contains("node1 198.51.100.1, node2 203.0.113.1") && shown.contains("--node"),
            "{shown}"
        );
    }

    #[test]
    fn iscsi_names() {
        for good in [
            "iqn.2025-08.local.twinsan:vol0",
            "iqn.1994-05.com.redhat:5c1f7d8a2b",
            "iqn.2001-04.com.example",
            "iqn.2001-04.com.example:storage:disk2.sys1.xyz",
            "eui.02004567a425678d",
        ] {
            assert_eq!(target_name_problem(good), None, "{good}");
        }
        for bad in [
            "iqn.2025-8.local.x",
            "iqn.2025-00.local.x",
            "iqn.20a5-01.local.x",
            "iqn.",
            "iqn.2025-01.-local.x",
            "eui.0123456789abcdeg",
            "IQN.2025-01.local.x",
        ] {
            assert!(target_name_problem(bad).is_some(), "{bad}");
        }
        assert!(target_name_problem(&format!("iqn.2025-01.local.x:{}", "a".repeat(300))).is_some());
        assert_eq!(
            initiator_name_problem("naa.0123456789abcdef0123456789abcdef"),
            None
        );
    }

    /// A temporary folder under the system's, removed on drop.
    pub(super) fn temp_dir(tag: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("twinsan-config-{tag}-"))
            .tempdir()
            .expect("create temp dir")
    }
}
