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
//! disk = { node1 = { path = "node1/vol0.img" }, node2 = { path = "node2/vol0.img", meta = "node2/vol0.md" } }
//!
//! [[target]]
//! iqn = "iqn.2025-08.local.twinsan:vol0"
//! vip = "127.0.0.10"
//! port = 3260
//! lun = [ { lun = 1, volume = "vol0" } ]
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A config that cannot be used. The text names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
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

/// `[cluster]`.
#[derive(Clone, Debug, Deserialize)]
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
}

/// `[[node]]`.
#[derive(Clone, Debug, Deserialize)]
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
    /// `A`, `B` or `C`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// `dont-care` or `resource-only`.
    #[serde(default = "default_fencing")]
    pub fencing: String,
    /// After-split-brain policy with no primary.
    #[serde(default = "default_disconnect")]
    pub after_sb_0pri: String,
    /// After-split-brain policy with one primary.
    #[serde(default = "default_disconnect")]
    pub after_sb_1pri: String,
    /// After-split-brain policy with two primaries.
    #[serde(default = "default_disconnect")]
    pub after_sb_2pri: String,
    /// Checksum-based resync.
    #[serde(default)]
    pub checksum_resync: bool,
    /// Highest resync rate, KiB/s (DRBD c-max-rate).
    #[serde(default)]
    pub resync_max_kib_s: Option<u64>,
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
    /// Initiators allowed; empty: any.
    #[serde(default)]
    pub allow: Vec<String>,
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

fn default_protocol() -> String {
    "C".into()
}
fn default_fencing() -> String {
    "dont-care".into()
}
fn default_disconnect() -> String {
    "disconnect".into()
}
fn default_iscsi_port() -> u16 {
    3260
}

impl ClusterConfig {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
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

    /// Checks what the types cannot: names that refer to something, uniqueness, safe values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes.len() != 2 {
            return Err(self.invalid(
                "node",
                format!("a cluster has exactly two nodes; {} are configured", self.nodes.len()),
            ));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if !(1..=31).contains(&n.id) {
                return Err(self.invalid(format!("node[{}].id", n.name), "must be 1..=31"));
            }
            for m in &self.nodes[..i] {
                if m.name == n.name {
                    return Err(self.invalid(format!("node[{}].name", n.name), "two nodes have this name"));
                }
                if m.id == n.id {
                    return Err(self.invalid(
                        format!("node[{}].id", n.name),
                        format!("node {} has the same id {}", m.name, n.id),
                    ));
                }
            }
        }
        for (i, v) in self.volumes.iter().enumerate() {
            let field = |f: &str| format!("volume[{}].{f}", v.name);
            if self.volumes[..i].iter().any(|w| w.name == v.name) {
                return Err(self.invalid(field("name"), "two volumes have this name"));
            }
            if let Some(w) = self.volumes[..i].iter().find(|w| w.port == v.port) {
                return Err(self.invalid(field("port"), format!("volume {} uses the same port", w.name)));
            }
            if parse_uuid(&v.uuid).is_none() {
                return Err(self.invalid(field("uuid"), "must be 32 hex digits, not all zero"));
            }
            for node in v.disk.keys() {
                if self.node(node).is_none() {
                    return Err(self.invalid(field(&format!("disk.{node}")), format!("no [[node]] is named {node}")));
                }
            }
            for n in &self.nodes {
                if !v.disk.contains_key(&n.name) {
                    return Err(self.invalid(field("disk"), format!("no disk for node {}", n.name)));
                }
            }
        }
        for t in &self.targets {
            for l in &t.lun {
                if self.volume(&l.volume).is_none() {
                    return Err(self.invalid(
                        format!("target[{}].lun[{}].volume", t.iqn, l.lun),
                        format!("no [[volume]] is named {}", l.volume),
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

    /// `path` resolved against the config file's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The admin socket of `node`.
    pub fn admin_socket(&self, node: &NodeConfig) -> PathBuf {
        match &node.admin_socket {
            Some(p) => self.resolve(p),
            None => PathBuf::from(format!("/run/twinsan/{}.sock", node.name)),
        }
    }

    /// The shared secret of the replication link.
    pub fn secret(&self) -> Result<Vec<u8>, ConfigError> {
        match (&self.cluster.secret, &self.cluster.secret_file) {
            (Some(s), None) => Ok(s.as_bytes().to_vec()),
            (None, Some(f)) => {
                let path = self.resolve(f);
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path, source })?;
                Ok(text.lines().next().unwrap_or("").trim().as_bytes().to_vec())
            }
            _ => Err(self.invalid("cluster.secret", "give exactly one of secret and secret_file")),
        }
    }
}

/// Parses 32 hex digits (dashes allowed) into a non-zero u128.
pub fn parse_uuid(text: &str) -> Option<u128> {
    let hex: String = text.chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok().filter(|&u| u != 0)
}
