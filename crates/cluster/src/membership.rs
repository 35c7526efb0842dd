//! Membership: which nodes are up, from heartbeats sent on one or more cluster links (redundant links, as with
//! corosync's knet).
//!
//! No clock, socket or random number: the driver passes the time (a [`Duration`] since any fixed origin, never
//! going backwards) and the datagrams it receives, calls [`Membership::tick`] at least every
//! [`Membership::next_tick`], sends the [`Output::Send`] datagrams on the link they name, and acts on the state
//! changes.
//!
//! # Rules
//! 1. **Heartbeats.** Every `heartbeat_interval` this node sends one [`Heartbeat`] on each link, all of one round
//!    with the same `seq`; `seq` increases by one per round within an incarnation.
//! 2. **Refused** (an [`Output::Refused`] to log, nothing else changes): a datagram that does not decode, another
//!    cluster's id, this node's own id, a node id that is not a configured peer, a link that is not configured,
//!    or a heartbeat sent on one link that arrived on another.
//! 3. **Incarnations.** A peer's incarnation only grows (the driver raises it at each start). A heartbeat from an
//!    older incarnation than the one known is ignored; a newer one means the peer restarted: it is reported
//!    ([`Output::PeerRestarted`]), then the peer is reported Online with its new incarnation even if it never
//!    looked offline, and its per-link sequence numbers start over.
//! 4. **Sequence.** Within an incarnation, a heartbeat on a link whose `seq` is not above the last one accepted on
//!    that link (duplicate or reordered) is ignored: it is no evidence of liveness.
//! 5. **Links.** A link to a peer is up while a heartbeat was accepted on it less than `detection_timeout` ago
//!    (at exactly `detection_timeout` it is down).
//! 6. **Peers.** A peer is Online while at least one of its links is up, Offline when none is. Losing one link of
//!    several reports only [`Output::LinkDown`].
//! 7. **Changes are reported once**, when they happen, in this order: links down, peer offline; restart, link up,
//!    peer online. This node is always Online in its own [`Membership::view`].
//! 8. **Early loss.** With other evidence that a peer is gone (the driver saw its replication connection reset),
//!    [`Membership::peer_gone`] makes it Offline once every link has been silent for a shorter time than the
//!    detection timeout; a later heartbeat makes it Online again as usual.
//!
//! 9. **Own pauses are not the peer's silence.** With [`MembershipConfig::pause_after`] set, a gap longer than
//!    that between two inputs means this node itself was not running (frozen, paused, stalled): the time it lost
//!    is added to every link's last heard time, so a node that resumes judges its peer on what it hears from
//!    then on (the heartbeats it buffered, and new ones) and declares it Offline only after a detection timeout
//!    of its own running time — never on its first tick after the pause.
//!
//! Heartbeats are **not authenticated**: anyone who can send datagrams on a cluster link can make a peer look
//! alive. The cluster links are assumed to be private networks; authentication is left out for now.

use std::time::Duration;

use crate::error::MembershipError;

/// The size of an encoded [`Heartbeat`].
pub const HEARTBEAT_LEN: usize = 32;
/// The most cluster links.
pub const MAX_LINKS: u8 = 4;
/// The format version this node speaks.
pub const HEARTBEAT_VERSION: u8 = 1;
/// The default heartbeat interval.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);
/// The default detection timeout.
pub const DEFAULT_DETECTION_TIMEOUT: Duration = Duration::from_secs(1);

const MAGIC: [u8; 4] = *b"TSHB";

/// One heartbeat datagram.
///
/// Layout (big-endian, 32 bytes): magic `TSHB` (4), version (1), node id (1), link (1), reserved 0 (1),
/// cluster id (8), incarnation (8), seq (8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The cluster the sender belongs to.
    pub cluster_id: u64,
    /// The sender's node id.
    pub node_id: u8,
    /// The sender's incarnation: raised at each start of the sender.
    pub incarnation: u64,
    /// The round number within the incarnation.
    pub seq: u64,
    /// The link the sender sent it on.
    pub link: u8,
}

impl Heartbeat {
    /// The datagram's bytes.
    pub fn encode(&self) -> [u8; HEARTBEAT_LEN] {
        let mut bytes = [0u8; HEARTBEAT_LEN];
        bytes[0..4].copy_from_slice(&MAGIC);
        bytes[4] = HEARTBEAT_VERSION;
        bytes[5] = self.node_id;
        bytes[6] = self.link;
        bytes[7] = 0;
        bytes[8..16].copy_from_slice(&self.cluster_id.to_be_bytes());
        bytes[16..24].copy_from_slice(&self.incarnation.to_be_bytes());
        bytes[24..32].copy_from_slice(&self.seq.to_be_bytes());
        bytes
    }

    /// Parses a datagram; anything but a well-formed heartbeat of this version is refused.
    pub fn decode(bytes: &[u8]) -> Result<Heartbeat, MembershipError> {
        let bytes: &[u8; HEARTBEAT_LEN] =
            bytes.try_into().map_err(|_| MembershipError::WrongLength {
                len: bytes.len(),
                expected: HEARTBEAT_LEN,
            })?;
        if bytes[0..4] != MAGIC {
            return Err(MembershipError::BadMagic);
        }
        if bytes[4] != HEARTBEAT_VERSION {
            return Err(MembershipError::UnsupportedVersion {
                version: bytes[4],
                supported: HEARTBEAT_VERSION,
            });
        }
        if bytes[7] != 0 {
            return Err(MembershipError::ReservedNotZero { value: bytes[7] });
        }
        Ok(Heartbeat {
            node_id: bytes[5],
            link: bytes[6],
            cluster_id: u64_at(bytes, 8),
            incarnation: u64_at(bytes, 16),
            seq: u64_at(bytes, 24),
        })
    }
}

fn u64_at(bytes: &[u8; HEARTBEAT_LEN], offset: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_be_bytes(word)
}

/// What the membership needs to know, validated by [`Membership::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    /// The cluster's id: heartbeats with another id are refused.
    pub cluster_id: u64,
    /// This node's id.
    pub node_id: u8,
    /// The other nodes' ids (a two-node cluster has one).
    pub peers: Vec<u8>,
    /// The number of cluster links, 1 to [`MAX_LINKS`]; they are numbered from 0.
    pub links: u8,
    /// How often a heartbeat is sent on each link.
    pub heartbeat_interval: Duration,
    /// How long a link may stay silent before it is down; longer than the interval, a few intervals in practice.
    pub detection_timeout: Duration,
    /// This node's incarnation: the driver raises it at each start (from the boot time, or a stored counter).
    pub incarnation: u64,
    /// A gap between two inputs longer than this is this node's own pause, not the peer's silence (rule 9);
    /// `None`: every gap counts as silence.
    pub pause_after: Option<Duration>,
}

impl MembershipConfig {
    /// A two-node cluster over `links` links with the default interval and timeout.
    pub fn two_node(
        cluster_id: u64,
        node_id: u8,
        peer: u8,
        links: u8,
        incarnation: u64,
    ) -> MembershipConfig {
        MembershipConfig {
            cluster_id,
            node_id,
            peers: vec![peer],
            links,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            detection_timeout: DEFAULT_DETECTION_TIMEOUT,
            incarnation,
            pause_after: None,
        }
    }

    fn validate(&self) -> Result<(), MembershipError> {
        if self.links == 0 || self.links > MAX_LINKS {
            return Err(MembershipError::LinkCount { links: self.links });
        }
        if self.peers.is_empty() {
            return Err(MembershipError::NoPeers);
        }
        for (i, &peer) in self.peers.iter().enumerate() {
            if peer == self.node_id {
                return Err(MembershipError::PeerIsSelf { node: peer });
            }
            if self.peers[..i].contains(&peer) {
                return Err(MembershipError::DuplicatePeer { node: peer });
            }
        }
        if self.heartbeat_interval.is_zero() {
            return Err(MembershipError::ZeroInterval);
        }
        if self.detection_timeout <= self.heartbeat_interval {
            return Err(MembershipError::TimeoutTooShort {
                timeout_ms: self.detection_timeout.as_millis(),
                interval_ms: self.heartbeat_interval.as_millis(),
            });
        }
        if let Some(pause) = self.pause_after {
            if pause <= self.heartbeat_interval {
                return Err(MembershipError::PauseTooShort {
                    pause_ms: pause.as_millis(),
                    interval_ms: self.heartbeat_interval.as_millis(),
                });
            }
        }
        Ok(())
    }
}

/// What the driver does, or logs, after an input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send this datagram on this link.
    Send {
        /// The link.
        link: u8,
        /// The encoded [`Heartbeat`].
        bytes: [u8; HEARTBEAT_LEN],
    },
    /// A peer became Online (or came back Online with a new incarnation).
    PeerOnline {
        /// The peer.
        node: u8,
        /// Its incarnation.
        incarnation: u64,
    },
    /// A peer became Offline: no link heard it within the detection timeout.
    PeerOffline {
        /// The peer.
        node: u8,
    },
    /// A peer restarted: what it ran before is gone.
    PeerRestarted {
        /// The peer.
        node: u8,
        /// The incarnation known before.
        previous: u64,
        /// The new incarnation.
        incarnation: u64,
    },
    /// A link to a peer came up.
    LinkUp {
        /// The peer.
        node: u8,
        /// The link.
        link: u8,
    },
    /// A link to a peer went down.
    LinkDown {
        /// The peer.
        node: u8,
        /// The link.
        link: u8,
    },
    /// A datagram was refused; log it.
    Refused {
        /// The link it arrived on.
        link: u8,
        /// Why.
        error: MembershipError,
    },
}

/// One node as this node's membership sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node's id.
    pub node: u8,
    /// Online (this node always is).
    pub online: bool,
    /// The incarnation last heard, if any.
    pub incarnation: Option<u64>,
}

#[derive(Clone, Debug, Default)]
struct LinkState {
    last_heard: Option<Duration>,
    last_seq: Option<u64>,
    up: bool,
}

#[derive(Clone, Debug)]
struct PeerState {
    node: u8,
    incarnation: Option<u64>,
    online: bool,
    links: Vec<LinkState>,
}

/// The membership of this node: heartbeats out, heartbeats in, peer and link states.
#[derive(Clone, Debug)]
pub struct Membership {
    config: MembershipConfig,
    seq: u64,
    next_send: Duration,
    peers: Vec<PeerState>,
    /// The time of the last input, for rule 9.
    last_input: Option<Duration>,
    /// When this node last resumed from a pause (rule 9).
    resumed_at: Option<Duration>,
}

impl Membership {
    /// Starts with every peer Offline; the first [`tick`](Membership::tick) sends heartbeats.
    pub fn new(config: MembershipConfig, now: Duration) -> Result<Membership, MembershipError> {
        config.validate()?;
        let peers = config
            .peers
            .iter()
            .map(|&node| PeerState {
                node,
                incarnation: None,
                online: false,
                links: vec![LinkState::default(); usize::from(config.links)],
            })
            .collect();
        Ok(Membership {
            config,
            seq: 0,
            next_send: now,
            peers,
            last_input: None,
            resumed_at: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// Sends the heartbeats that are due and reports links and peers that timed out.
    pub fn tick(&mut self, now: Duration) -> Vec<Output> {
        let mut out = Vec::new();
        self.expire(now, &mut out);
        if now >= self.next_send {
            for link in 0..self.config.links {
                let heartbeat = Heartbeat {
                    cluster_id: self.config.cluster_id,
                    node_id: self.config.node_id,
                    incarnation: self.config.incarnation,
                    seq: self.seq,
                    link,
                };
                out.push(Output::Send {
                    link,
                    bytes: heartbeat.encode(),
                });
            }
            self.seq += 1;
            self.next_send += self.config.heartbeat_interval;
            // After a stall, send at the interval from now rather than a burst of late rounds.
            if self.next_send <= now {
                self.next_send = now + self.config.heartbeat_interval;
            }
        }
        out
    }

    /// Takes a datagram received on `link`.
    pub fn received(&mut self, link: u8, bytes: &[u8], now: Duration) -> Vec<Output> {
        let mut out = Vec::new();
        self.expire(now, &mut out);
        if let Err(error) = self.accept(link, bytes, now, &mut out) {
            out.push(Output::Refused { link, error });
        }
        out
    }

    /// When [`tick`](Membership::tick) must be called next: the next heartbeat round or the next link timeout.
    pub fn next_tick(&self) -> Duration {
        self.peers
            .iter()
            .flat_map(|peer| &peer.links)
            .filter(|link| link.up)
            .filter_map(|link| link.last_heard)
            .map(|heard| heard + self.config.detection_timeout)
            .fold(self.next_send, Duration::min)
    }

    /// Early loss: the driver has other evidence that `node` is gone (its replication connection was reset or
    /// closed by the peer's side). If no link has heard from it for `min_silence` either, it is Offline now rather
    /// than at the detection timeout; a heartbeat that still arrives brings it back as usual.
    pub fn peer_gone(&mut self, node: u8, min_silence: Duration, now: Duration) -> Vec<Output> {
        let mut out = Vec::new();
        self.expire(now, &mut out);
        let Some(peer) = self.peers.iter_mut().find(|p| p.node == node) else {
            return out;
        };
        let silent = peer.links.iter().all(|l| {
            l.last_heard
                .is_none_or(|heard| now.saturating_sub(heard) >= min_silence)
        });
        if !peer.online || !silent {
            return out;
        }
        for (index, link) in (0u8..).zip(peer.links.iter_mut()) {
            if link.up {
                link.up = false;
                out.push(Output::LinkDown { node, link: index });
            }
        }
        peer.online = false;
        out.push(Output::PeerOffline { node });
        out
    }

    /// Every node, this one first (always Online), then the peers in configuration order.
    pub fn view(&self) -> Vec<Member> {
        let this = Member {
            node: self.config.node_id,
            online: true,
            incarnation: Some(self.config.incarnation),
        };
        let peers = self.peers.iter().map(|p| Member {
            node: p.node,
            online: p.online,
            incarnation: p.incarnation,
        });
        std::iter::once(this).chain(peers).collect()
    }

    /// Whether `link` to `node` is up; false for an unknown node or link.
    pub fn link_up(&self, node: u8, link: u8) -> bool {
        self.peers
            .iter()
            .find(|p| p.node == node)
            .and_then(|p| p.links.get(usize::from(link)))
            .is_some_and(|l| l.up)
    }

    fn expire(&mut self, now: Duration, out: &mut Vec<Output>) {
        self.skip_own_pause(now);
        let timeout = self.config.detection_timeout;
        for peer in &mut self.peers {
            for (index, link) in (0u8..).zip(peer.links.iter_mut()) {
                let silent = link
                    .last_heard
                    .is_none_or(|heard| now.saturating_sub(heard) >= timeout);
                if link.up && silent {
                    link.up = false;
                    out.push(Output::LinkDown {
                        node: peer.node,
                        link: index,
                    });
                }
            }
            if peer.online && peer.links.iter().all(|l| !l.up) {
                peer.online = false;
                out.push(Output::PeerOffline { node: peer.node });
            }
        }
    }

    /// Rule 9: a gap longer than `pause_after` since the last input was this node's own pause.
    fn skip_own_pause(&mut self, now: Duration) {
        let last = self
            .last_input
            .replace(now.max(self.last_input.unwrap_or_default()));
        let (Some(pause_after), Some(last)) = (self.config.pause_after, last) else {
            return;
        };
        let gap = now.saturating_sub(last);
        if gap <= pause_after {
            return;
        }
        self.resumed_at = Some(now);
        for link in self.peers.iter_mut().flat_map(|p| p.links.iter_mut()) {
            if let Some(heard) = link.last_heard.as_mut() {
                *heard += gap;
            }
        }
    }

    /// Whether this node has run for at least a detection timeout since its last pause (rule 9), so that a peer
    /// it sees Offline has been silent while it listened. A node that resumes may still see a peer Offline from
    /// before its pause; it must not act alone on that (take a volume over, or complete I/O alone) until this
    /// holds.
    pub fn settled(&self, now: Duration) -> bool {
        self.resumed_at
            .is_none_or(|t| now.saturating_sub(t) >= self.config.detection_timeout)
    }

    fn accept(
        &mut self,
        link: u8,
        bytes: &[u8],
        now: Duration,
        out: &mut Vec<Output>,
    ) -> Result<(), MembershipError> {
        if link >= self.config.links {
            return Err(MembershipError::UnknownLink {
                link,
                last: self.config.links - 1,
            });
        }
        let heartbeat = Heartbeat::decode(bytes)?;
        if heartbeat.cluster_id != self.config.cluster_id {
            return Err(MembershipError::WrongCluster {
                cluster_id: heartbeat.cluster_id,
                expected: self.config.cluster_id,
            });
        }
        if heartbeat.node_id == self.config.node_id {
            return Err(MembershipError::OwnNodeId {
                node: heartbeat.node_id,
            });
        }
        let peer = self
            .peers
            .iter_mut()
            .find(|p| p.node == heartbeat.node_id)
            .ok_or(MembershipError::UnknownNode {
                node: heartbeat.node_id,
            })?;
        if heartbeat.link != link {
            return Err(MembershipError::CrossedLinks {
                link,
                sent_on: heartbeat.link,
            });
        }

        let mut restarted = false;
        match peer.incarnation {
            Some(known) if heartbeat.incarnation < known => return Ok(()),
            Some(known) if heartbeat.incarnation > known => {
                restarted = true;
                // The links themselves kept working: only the sequence numbers start over.
                for state in &mut peer.links {
                    state.last_seq = None;
                }
                out.push(Output::PeerRestarted {
                    node: peer.node,
                    previous: known,
                    incarnation: heartbeat.incarnation,
                });
            }
            _ => {}
        }
        peer.incarnation = Some(heartbeat.incarnation);

        let state = &mut peer.links[usize::from(link)];
        if state.last_seq.is_some_and(|last| heartbeat.seq <= last) {
            return Ok(());
        }
        state.last_seq = Some(heartbeat.seq);
        state.last_heard = Some(now);
        if !state.up {
            state.up = true;
            out.push(Output::LinkUp {
                node: peer.node,
                link,
            });
        }
        if !peer.online || restarted {
            peer.online = true;
            out.push(Output::PeerOnline {
                node: peer.node,
                incarnation: heartbeat.incarnation,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
