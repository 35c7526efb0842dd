//! The settings of the config file that take one of a few words: typed when the file is read, so that a word
//! that is not one of them is a TOML error naming the key (the line shown), the value and the words allowed,
//! and nothing past the parser ever matches a string.
//!
//! Each prints (`Debug`) as the quoted word it was written as, exactly as the `String` it replaced did:
//! `config::reload::config_hash` hashes that text, and a file must hash as it did in earlier releases.

use std::fmt;

use serde::Deserialize;
use twinsan_replication::generation::{AfterSb0Pri, AfterSb1Pri, AfterSb2Pri};
use twinsan_replication::state::FencingPolicy;
use twinsan_replication::wire::ReplicationProtocol;

/// Implements `Debug` as the quoted word and `Display` as the word.
macro_rules! shown_as_word {
    ($t:ty) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// `protocol`: when a write completes (DRBD's protocols).
#[derive(Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// Once on the local disk and sent.
    A,
    /// Once on the local disk and received by the peer.
    B,
    /// Once on both disks.
    #[default]
    C,
}

impl Protocol {
    /// The word in the file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::A => "A",
            Protocol::B => "B",
            Protocol::C => "C",
        }
    }
}

impl From<Protocol> for ReplicationProtocol {
    fn from(p: Protocol) -> ReplicationProtocol {
        match p {
            Protocol::A => ReplicationProtocol::A,
            Protocol::B => ReplicationProtocol::B,
            Protocol::C => ReplicationProtocol::C,
        }
    }
}

/// `fencing`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fencing {
    /// No fencing.
    #[default]
    DontCare,
    /// The peer is marked Outdated before a node without it is promoted.
    ResourceOnly,
}

impl Fencing {
    /// The word in the file.
    pub fn as_str(self) -> &'static str {
        FencingPolicy::from(self).as_str()
    }
}

impl From<Fencing> for FencingPolicy {
    fn from(f: Fencing) -> FencingPolicy {
        match f {
            Fencing::DontCare => FencingPolicy::DontCare,
            Fencing::ResourceOnly => FencingPolicy::ResourceOnly,
        }
    }
}

/// `after_sb_0pri`: a split brain with no primary. `discard-node-NAME` names a node; that it is one of the
/// configured nodes is checked by `ClusterConfig::validate`, which knows them (a derived enum cannot take a word
/// with a name in it, so this one is read from the string).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum AfterSb0 {
    /// `disconnect`.
    #[default]
    Disconnect,
    /// `discard-younger-primary`.
    DiscardYoungerPrimary,
    /// `discard-older-primary`.
    DiscardOlderPrimary,
    /// `discard-zero-changes`.
    DiscardZeroChanges,
    /// `discard-least-changes`.
    DiscardLeastChanges,
    /// `discard-node-NAME`.
    DiscardNode(String),
}

/// The words of `after_sb_0pri` that name no node.
const AFTER_SB_0: [(AfterSb0Pri, AfterSb0); 5] = [
    (AfterSb0Pri::Disconnect, AfterSb0::Disconnect),
    (
        AfterSb0Pri::DiscardYoungerPrimary,
        AfterSb0::DiscardYoungerPrimary,
    ),
    (
        AfterSb0Pri::DiscardOlderPrimary,
        AfterSb0::DiscardOlderPrimary,
    ),
    (
        AfterSb0Pri::DiscardZeroChanges,
        AfterSb0::DiscardZeroChanges,
    ),
    (
        AfterSb0Pri::DiscardLeastChanges,
        AfterSb0::DiscardLeastChanges,
    ),
];

const DISCARD_NODE: &str = "discard-node-";

impl AfterSb0 {
    /// The word in the file.
    pub fn word(&self) -> std::borrow::Cow<'static, str> {
        match self {
            AfterSb0::DiscardNode(name) => format!("{DISCARD_NODE}{name}").into(),
            other => AFTER_SB_0
                .iter()
                .find(|(_, s)| s == other)
                .map(|(p, _)| p.as_str())
                .unwrap_or("disconnect")
                .into(),
        }
    }

    /// The policy, with `discard-node-NAME` resolved to the id `node_id` gives for NAME (`None`: no such node).
    pub fn policy(&self, node_id: impl Fn(&str) -> Option<u8>) -> Option<AfterSb0Pri> {
        match self {
            AfterSb0::DiscardNode(name) => node_id(name).map(AfterSb0Pri::DiscardNode),
            other => AFTER_SB_0.iter().find(|(_, s)| s == other).map(|&(p, _)| p),
        }
    }
}

impl TryFrom<String> for AfterSb0 {
    type Error = String;

    fn try_from(word: String) -> Result<AfterSb0, String> {
        if let Some((_, setting)) = AFTER_SB_0.iter().find(|(p, _)| p.as_str() == word) {
            return Ok(setting.clone());
        }
        match word.strip_prefix(DISCARD_NODE) {
            Some(name) if !name.is_empty() => Ok(AfterSb0::DiscardNode(name.to_string())),
            _ => Err(format!(
                "invalid after_sb_0pri `{word}`, expected one of {}, `{DISCARD_NODE}NAME`",
                AFTER_SB_0
                    .iter()
                    .map(|(p, _)| format!("`{}`", p.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

impl fmt::Debug for AfterSb0 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.word(), f)
    }
}

impl fmt::Display for AfterSb0 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.word())
    }
}

/// `after_sb_1pri`: a split brain with one primary.
#[derive(Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterSb1 {
    /// `disconnect`.
    #[default]
    Disconnect,
    /// `consensus`.
    Consensus,
    /// `discard-secondary`.
    DiscardSecondary,
    /// `call-pri-lost-after-sb`.
    CallPriLostAfterSb,
}

impl From<AfterSb1> for AfterSb1Pri {
    fn from(s: AfterSb1) -> AfterSb1Pri {
        match s {
            AfterSb1::Disconnect => AfterSb1Pri::Disconnect,
            AfterSb1::Consensus => AfterSb1Pri::Consensus,
            AfterSb1::DiscardSecondary => AfterSb1Pri::DiscardSecondary,
            AfterSb1::CallPriLostAfterSb => AfterSb1Pri::CallPriLostAfterSb,
        }
    }
}

impl AfterSb1 {
    /// The word in the file.
    pub fn as_str(self) -> &'static str {
        AfterSb1Pri::from(self).as_str()
    }
}

/// `after_sb_2pri`: a split brain with two primaries.
#[derive(Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterSb2 {
    /// `disconnect`.
    #[default]
    Disconnect,
    /// `call-pri-lost-after-sb`.
    CallPriLostAfterSb,
}

impl From<AfterSb2> for AfterSb2Pri {
    fn from(s: AfterSb2) -> AfterSb2Pri {
        match s {
            AfterSb2::Disconnect => AfterSb2Pri::Disconnect,
            AfterSb2::CallPriLostAfterSb => AfterSb2Pri::CallPriLostAfterSb,
        }
    }
}

impl AfterSb2 {
    /// The word in the file.
    pub fn as_str(self) -> &'static str {
        AfterSb2Pri::from(self).as_str()
    }
}

/// `no_quorum_policy` (Pacemaker's): what a node that has lost quorum does.
#[derive(Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoQuorumPolicy {
    /// The seed's two-node mode: a lone node runs its resources.
    #[default]
    Ignore,
    /// A node without quorum stops its resources.
    Stop,
}

impl NoQuorumPolicy {
    /// The word in the file.
    pub const fn as_str(self) -> &'static str {
        match self {
            NoQuorumPolicy::Ignore => "ignore",
            NoQuorumPolicy::Stop => "stop",
        }
    }
}

shown_as_word!(Protocol);
shown_as_word!(Fencing);
shown_as_word!(AfterSb1);
shown_as_word!(AfterSb2);
shown_as_word!(NoQuorumPolicy);
