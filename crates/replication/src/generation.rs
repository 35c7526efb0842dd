//! Generation identifiers (DRBD's "GI tuple") and the decision two nodes take when they connect.
//!
//! Every node keeps a [`GenerationIds`] tuple in its metadata superblock. The *current* UUID names the data
//! generation the node holds; the *bitmap* UUID names the generation its dirty bitmap counts changes against (zero
//! while the peer is in sync); the two *history* UUIDs name older generations this data descends from. A new current
//! UUID starts a generation whenever the two copies may start to differ: the first write after a primary loses its
//! peer, a promotion while disconnected, `primary --force`, `new-current-uuid`. When the nodes connect, each side
//! compares its tuple with the peer's in a fixed rule order ([`connect_decision`]) and both sides reach mirrored
//! answers: no sync, a bitmap resync, a full sync, a split brain, or unrelated data. A split brain is then either
//! resolved by the after-split-brain policies or by `connect --discard-my-data`, or left to the operator
//! ([`resolve_split_brain`]).
//!
//! Nothing here does I/O or draws random numbers: the engine passes fresh UUIDs in, persists the tuple before it
//! acknowledges the write that needed it, and carries the decision out.
//!
//! # Rule order
//! Rules are tried in this order; the first that matches decides, and its number travels in [`ConnectOutcome`] so
//! logs and tests can say which rule fired ("local" is the node deciding, "peer" the other one; comparisons ignore
//! bit 0, see below).
//!
//! | rule | name | condition | decision |
//! |---:|---|---|---|
//! | 10 | `same-node-id` | both sides claim the same node id | refuse ([`ConnectDecision::Unrelated`]) |
//! | 20 | `just-created-both` | both current UUIDs are just-created | no sync |
//! | 30 | `just-created-local` | only the local current UUID is just-created | full sync from the peer |
//! | 31 | `just-created-peer` | only the peer's current UUID is just-created | full sync from local |
//! | 40 | `equal-inconsistent` | equal current UUIDs, not both consistent | full sync from the consistent side; none if neither is |
//! | 41 | `equal-missed-resync-end` | equal current UUIDs, only one side has a bitmap UUID | bitmap resync from it |
//! | 42 | `equal-crashed-primary` | equal current UUIDs, crashed-primary flag set | bitmap resync from the crashed primary (tie: lower node id) |
//! | 43 | `equal` | equal current UUIDs | no sync |
//! | 50 | `bitmap-crossed` | each side's current UUID is the other's bitmap UUID | split brain, full sync needed |
//! | 51 | `bitmap-peer` | local current UUID = peer's bitmap UUID | bitmap resync from the peer |
//! | 52 | `bitmap-local` | local bitmap UUID = peer's current UUID | bitmap resync from local |
//! | 60 | `history-peer` | local current UUID only in the peer's history | full sync from the peer |
//! | 61 | `history-local` | peer's current UUID only in the local history | full sync from local |
//! | 70 | `bitmap-both` | equal non-zero bitmap UUIDs | split brain, resolvable from the bitmaps |
//! | 80 | `history-both` | a common ancestor (bitmap or history UUID) | split brain, full sync needed |
//! | 90 | `nothing-in-common` | — | unrelated data, refuse |
//!
//! This is the order of DRBD 9's `drbd_uuid_compare()` (LINBIT drbd, `drbd/drbd_receiver.c`) for two nodes: the
//! order of the 2006 DRBD 8 design notes with DRBD 9's two refinements, which make the answer the same from both
//! sides: both bitmap rules come before both history rules (DRBD 8 interleaved them), and a current UUID counts as
//! "in the other's history" only if the reverse is not also true.
//!
//! # Bit 0 of a UUID
//! DRBD uses bit 0 of a UUID as a role marker (`UUID_PRIMARY`): set on the current UUID while the node is primary,
//! cleared while it is secondary. When a new generation starts, the old current UUID moves into the bitmap slot with
//! its marker, so the bitmap UUID remembers whether this node was primary at the moment the data diverged. We keep
//! that convention, because it is the only record of "who was primary first" that needs no clock (nodes' clocks
//! differ, and a core takes no time input for this): `discard-younger-primary` and `discard-older-primary` read it.
//! The price is that bit 0 is not part of a generation's identity, so every comparison goes through the private
//! `generation()` mask, and a generation has 63 random bits.
//!
//! # Where this deliberately differs from DRBD
//! - A new generation while the bitmap UUID is already set moves the old current UUID into the history instead of
//!   doing nothing (DRBD 8.4 and 9 then keep writing under the old current UUID). The new writes then get a fresh
//!   identity, so a peer that caught up to the old current UUID (a resync whose end this node missed) cannot mistake
//!   them for its own data: the pair sees a split brain instead of silently overwriting one side.
//! - `history-both` also counts bitmap UUIDs as ancestors (DRBD compares history slots only). With two history
//!   slots, a split whose common ancestor still sits in one side's bitmap slot would otherwise read as unrelated data.
//! - A SyncTarget that finishes takes the source's whole lineage ([`GenerationIds::finish_resync_as_target`]), so
//!   after a resync both tuples are equal; DRBD also pushes the target's discarded generation into its history.
//! - Rule 42 follows DRBD 8: the crashed primary is the SyncSource. DRBD 9, with protocol C, prefers a peer that
//!   survived connected; both are correct, because the blocks in question were never acknowledged.
//! - `--discard-my-data` wins over every automatic policy, and it only acts on a split brain (DRBD 9 can also
//!   reverse an ordinary resync with it).
//! - The `violently-as0p` policies are left out: they overwrite the data under a running primary.
//! - The rules that repair a lost "resync started" packet (DRBD's protocol < 110 fix-ups) do not exist here: our
//!   SyncTarget adopts the source's current UUID only when the resync ends.

use std::cmp::Ordering;
use std::fmt;

/// Current UUID of a volume whose metadata was just created and that never held replicated data (DRBD's
/// `UUID_JUST_CREATED`). A current UUID of 0 (DRBD before 8.0.2) reads the same.
pub const UUID_JUST_CREATED: u64 = 4;

/// Bit 0 of a UUID: the role marker, not part of the generation's identity (DRBD's `UUID_PRIMARY`). Set on the
/// current UUID while the node is primary; in the bitmap UUID it says the node was primary when the data diverged.
pub const UUID_PRIMARY: u64 = 1;

/// Number of history UUIDs in a tuple (DRBD 8's two; DRBD 9 keeps more because it has up to 31 peers).
pub const HISTORY_LEN: usize = 2;

/// The identity of a generation: the UUID without its role marker.
const fn generation(uuid: u64) -> u64 {
    uuid & !UUID_PRIMARY
}

/// True if two UUIDs name the same generation (whatever their role markers say).
pub const fn same_generation(a: u64, b: u64) -> bool {
    generation(a) == generation(b)
}

/// True if `uuid` names a real generation: not empty and not just-created.
const fn is_real(uuid: u64) -> bool {
    let g = generation(uuid);
    g != 0 && g != UUID_JUST_CREATED
}

/// A fresh UUID from the engine's random source, made usable: bit 0 cleared (it is the role marker) and the two
/// reserved values (0 and just-created) moved out of the way, which only a 1-in-2^62 draw needs.
const fn usable(fresh: u64) -> u64 {
    let g = generation(fresh);
    if g == 0 || g == UUID_JUST_CREATED {
        g | 1 << 63
    } else {
        g
    }
}

/// A node's role for a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Serves the volume and accepts writes.
    Primary,
    /// Receives the primary's writes; does not serve the volume.
    Secondary,
}

/// A node's generation identifier tuple, as stored in its metadata superblock (DRBD's GI tuple).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GenerationIds {
    /// The generation of the data this node holds; bit 0 set while the node is primary.
    pub current: u64,
    /// The generation the dirty bitmap counts changes against, i.e. where the peer was when the copies diverged; 0
    /// while the peer is in sync. With two nodes there is one peer, hence one bitmap UUID.
    pub bitmap: u64,
    /// Older generations this data descends from, most recent first; 0 for an unused slot.
    pub history: [u64; HISTORY_LEN],
}

impl Default for GenerationIds {
    fn default() -> Self {
        Self::JUST_CREATED
    }
}

impl fmt::Display for GenerationIds {
    /// The tuple as DRBD logs it: `CURRENT:BITMAP:HISTORY1:HISTORY2` in hexadecimal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}:{:016X}", self.current, self.bitmap)?;
        for h in self.history {
            write!(f, ":{h:016X}")?;
        }
        Ok(())
    }
}

impl GenerationIds {
    /// The tuple `create-md` writes: current UUID just-created, no bitmap UUID, no history.
    pub const JUST_CREATED: Self = Self {
        current: UUID_JUST_CREATED,
        bitmap: 0,
        history: [0; HISTORY_LEN],
    };

    /// True if this volume never held replicated data (current UUID just-created, or 0 from old metadata).
    pub const fn is_just_created(&self) -> bool {
        !is_real(self.current)
    }

    /// True if this node was primary when its data diverged from the peer's (bit 0 of the bitmap UUID). Input of
    /// `discard-younger-primary` / `discard-older-primary`.
    pub const fn primary_at_split(&self) -> bool {
        is_real(self.bitmap) && self.bitmap & UUID_PRIMARY != 0
    }

    /// True if `uuid` names one of the history generations.
    pub fn in_history(&self, uuid: u64) -> bool {
        is_real(uuid)
            && self
                .history
                .iter()
                .any(|&h| is_real(h) && generation(h) == generation(uuid))
    }

    /// The generations this data descends from, most recent first: the bitmap UUID, then the history, without
    /// duplicates, empty slots or the current generation.
    pub fn lineage(&self) -> [u64; HISTORY_LEN] {
        self.ancestry([self.bitmap, self.history[0], self.history[1]], 0)
    }

    /// Records a role change on the current UUID: DRBD sets bit 0 on promotion and clears it on demotion.
    ///
    /// Call it after [`new_current_uuid`](Self::new_current_uuid) when a promotion starts a generation, so that the
    /// old current UUID enters the bitmap slot with the role the node had when the data diverged.
    pub fn set_role(&mut self, role: Role) {
        match role {
            Role::Primary => self.current |= UUID_PRIMARY,
            Role::Secondary => self.current &= !UUID_PRIMARY,
        }
    }

    /// Starts a new data generation with the random UUID `fresh` (DRBD's `drbd_uuid_new_current()`).
    ///
    /// The engine calls it, and persists the result, before acknowledging the first write after a primary lost its
    /// peer, and when a node is promoted while disconnected ([`promote_disconnected`](Self::promote_disconnected)).
    /// The old current UUID becomes the bitmap UUID if the bitmap UUID is empty (the bitmap starts counting from the
    /// generation the peer still has); if the bitmap already counts from an older generation, the old current UUID
    /// goes to the history instead and the bitmap keeps counting (see the module docs for why this differs from
    /// DRBD). A just-created current UUID is replaced without being kept anywhere: it names no data. The new current
    /// UUID keeps the role marker of the old one. `fresh` must come from a random source.
    pub fn new_current_uuid(&mut self, fresh: u64) {
        let old = self.current;
        self.current = usable(fresh) | (old & UUID_PRIMARY);
        if !is_real(old) {
            return;
        }
        if is_real(self.bitmap) {
            self.push_history(old);
        } else {
            self.bitmap = old;
        }
    }

    /// Promotion while disconnected from the peer: a new generation, then the primary marker (DRBD's
    /// `drbd_set_role()` creates a new current UUID when the peer is not connected and up to date).
    pub fn promote_disconnected(&mut self, fresh: u64) {
        self.new_current_uuid(fresh);
        self.set_role(Role::Primary);
    }

    /// `primary --force`: this node's data becomes the truth, in a new generation (DRBD forces a new current UUID).
    ///
    /// On a fresh volume the just-created UUID is simply replaced, so the peer, still just-created, gets a full sync
    /// from this node (rule 31) — the initial sync. On a volume that held data it is a new generation like any other.
    /// If the peer is connected and Inconsistent, the engine must also set every bit of the bitmap: it only records
    /// writes from now on, not what the peer lacks already.
    pub fn force_primary(&mut self, fresh: u64) {
        self.promote_disconnected(fresh);
    }

    /// `new-current-uuid --clear-bitmap`, on the node where the operator runs it (DRBD's `drbdadm new-current-uuid
    /// --clear-bitmap`); the engine also clears every bit of the bitmap.
    ///
    /// On a just-created volume connected to a just-created peer, this skips the initial sync of empty disks: the
    /// node takes `fresh` as its current UUID, sends it to the peer, which calls
    /// [`accept_skip_initial_sync`](Self::accept_skip_initial_sync), and both become UpToDate. If the peer misses
    /// that message it stays just-created, and the next connect does a full sync (rule 31): slower, never wrong.
    ///
    /// On a volume that held data it is DRBD's "truck-based replication" step: the old bitmap UUID goes to the
    /// history, the current UUID becomes the bitmap UUID, and with the bitmap empty, a peer still at that generation
    /// (a copy shipped by other means) gets a bitmap resync of nothing, i.e. is declared in sync.
    pub fn clear_bitmap(&mut self, fresh: u64) {
        let old_bitmap = self.bitmap;
        self.bitmap = 0;
        self.push_history(old_bitmap);
        self.new_current_uuid(fresh);
    }

    /// A diskless Primary exposes the peer's data: take the peer's current generation as the one it serves (its
    /// own role marker kept). Nothing is written: a diskless node has no superblock to write, and attaching a disk
    /// again reads the disk's own tuple.
    pub fn adopt_current(&mut self, peer_current: u64) {
        self.current = generation(peer_current) | (self.current & UUID_PRIMARY);
    }

    /// The peer ran `new-current-uuid --clear-bitmap` on a fresh pair: adopt its current UUID without a sync (DRBD
    /// 8.4's "skip initial sync" UUID flag). Accepted only while this volume is just-created and `peer_current` names
    /// a real generation; returns whether it was.
    pub fn accept_skip_initial_sync(&mut self, peer_current: u64) -> bool {
        if !self.is_just_created() || !is_real(peer_current) {
            return false;
        }
        self.current = generation(peer_current) | (self.current & UUID_PRIMARY);
        self.bitmap = 0;
        true
    }

    /// End of a resync on the SyncSource: the peer now has this generation, so the bitmap UUID goes to the history
    /// and is cleared (DRBD's `drbd_uuid_set_bitmap(peer_device, 0)` after `drbd_resync_finished()`).
    pub fn finish_resync_as_source(&mut self) {
        let old_bitmap = self.bitmap;
        self.bitmap = 0;
        self.push_history(old_bitmap);
    }

    /// End of a resync on the SyncTarget: adopt the source's current UUID and its lineage (DRBD's
    /// `drbd_uuid_resync_finished()`, which also inherits the source's history).
    ///
    /// The target's own bitmap UUID is cleared: whatever it counted was overwritten by the resync. Its old current
    /// UUID is normally the source's bitmap UUID or in the source's history, so it stays in the lineage; after a
    /// split brain it names discarded data and is dropped (DRBD keeps it; with two history slots the source's
    /// lineage is worth more). Taking `source` before or after its own
    /// [`finish_resync_as_source`](Self::finish_resync_as_source) gives the same result, and both tuples end equal.
    pub fn finish_resync_as_target(&mut self, source: &GenerationIds) {
        self.history = source.lineage();
        self.current = generation(source.current) | (self.current & UUID_PRIMARY);
        self.bitmap = 0;
    }

    /// Puts `uuid` in front of the history unless it is empty, just-created, the current or the bitmap UUID
    /// (DRBD's `_drbd_uuid_push_history()`). A generation already in the history moves to the front instead of
    /// appearing twice, and empty slots close up; the oldest entry falls off.
    fn push_history(&mut self, uuid: u64) {
        self.history = self.ancestry([uuid, self.history[0], self.history[1]], self.bitmap);
    }

    /// The first [`HISTORY_LEN`] distinct real generations of `candidates`, leaving out the current generation and
    /// `exclude` (if real).
    fn ancestry(&self, candidates: [u64; HISTORY_LEN + 1], exclude: u64) -> [u64; HISTORY_LEN] {
        let mut out = [0; HISTORY_LEN];
        let mut n = 0;
        for uuid in candidates {
            let g = generation(uuid);
            let excluded =
                g == generation(self.current) || (is_real(exclude) && g == generation(exclude));
            if n < HISTORY_LEN && is_real(uuid) && !excluded && !out[..n].contains(&g) {
                out[n] = g;
                n += 1;
            }
        }
        out
    }

    /// The ancestors used by rule 80: bitmap and history generations.
    fn ancestors(&self) -> impl Iterator<Item = u64> + '_ {
        [self.bitmap, self.history[0], self.history[1]]
            .into_iter()
            .filter(|&u| is_real(u))
            .map(generation)
    }
}

/// Per-node flags that enter the connect decision besides the UUIDs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    /// The data is consistent: not just created, not a SyncTarget in the middle of a resync (DRBD's
    /// `MDF_CONSISTENT`). Rule 40 reads it.
    pub consistent: bool,
    /// The node was primary when it stopped without demoting (DRBD's `MDF_CRASHED_PRIMARY`, set at attach when the
    /// "primary" metadata flag is still on): its activity log may cover writes the peer never got, or the reverse.
    /// Rule 42 reads it. The engine clears it once a connection with the peer is established.
    pub crashed_primary: bool,
    /// `volume connect --discard-my-data` was given on this node: if the connect finds a split brain, this node is
    /// the victim (DRBD's `--discard-my-data` net option, sent as `UUID_FLAG_DISCARD_MY_DATA`). Not persisted; the
    /// engine clears it once a connection is established. [`resolve_split_brain`] reads it.
    pub discard_my_data: bool,
}

/// One side of a connection, as the connect decision sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Side {
    /// The side's generation identifier tuple.
    pub ids: GenerationIds,
    /// The side's flags.
    pub flags: Flags,
    /// The side's role now.
    pub role: Role,
    /// The side's node id from the configuration, which refuses two nodes with the same id. Breaks ties: on a tie
    /// the node with the lower id keeps its data (DRBD uses the connection's `RESOLVE_CONFLICTS` bit instead).
    pub node_id: u8,
}

/// Which side of the connection a decision points at, seen from the node deciding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// This node.
    Local,
    /// The other node.
    Peer,
}

impl Direction {
    /// The same side seen from the other node.
    pub const fn mirrored(self) -> Self {
        match self {
            Direction::Local => Direction::Peer,
            Direction::Peer => Direction::Local,
        }
    }
}

/// How much a split brain costs to resolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SplitBrainKind {
    /// Both sides diverged from the same generation, their bitmap UUID: once a victim is chosen, resyncing the blocks
    /// set in either bitmap (their union) makes the copies equal. After-split-brain policies may pick the victim.
    Resolvable,
    /// The sides share only an older ancestor, so no bitmap covers all differences: resolving takes a full sync, and
    /// only the operator's `--discard-my-data` may do it.
    NeedsFullSync,
}

/// What the connect handshake decides, seen from the node deciding.
///
/// A resync needs an UpToDate source: the engine checks disk states before it starts one, and refuses to make a
/// Primary with consistent data a SyncTarget (DRBD's `rr-conflict disconnect`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectDecision {
    /// The copies hold the same generation: connect without resync.
    NoSync,
    /// Resync the blocks set in the bitmaps, from `source` to the other side.
    BitmapResync {
        /// The SyncSource.
        source: Direction,
    },
    /// Set every bit and resync the whole device from `source`.
    FullSync {
        /// The SyncSource.
        source: Direction,
    },
    /// Both sides wrote in different generations since they were last connected: report it, then resolve it with
    /// [`resolve_split_brain`] or stay StandAlone.
    SplitBrain {
        /// Whether a bitmap resync can resolve it.
        kind: SplitBrainKind,
    },
    /// Nothing in common (or the peer claims our node id): refuse the connection.
    Unrelated,
}

impl ConnectDecision {
    /// The same decision seen from the other node.
    pub const fn mirrored(self) -> Self {
        match self {
            Self::BitmapResync { source } => Self::BitmapResync {
                source: source.mirrored(),
            },
            Self::FullSync { source } => Self::FullSync {
                source: source.mirrored(),
            },
            other => other,
        }
    }

    /// The SyncSource, if this decision resyncs.
    pub const fn sync_source(self) -> Option<Direction> {
        match self {
            Self::BitmapResync { source } | Self::FullSync { source } => Some(source),
            _ => None,
        }
    }

    /// The SyncTarget, if this decision resyncs.
    pub const fn sync_target(self) -> Option<Direction> {
        match self.sync_source() {
            Some(source) => Some(source.mirrored()),
            None => None,
        }
    }
}

impl fmt::Display for ConnectDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |d: &Direction| match d {
            Direction::Local => "local",
            Direction::Peer => "peer",
        };
        match self {
            Self::NoSync => f.write_str("no-sync"),
            Self::BitmapResync { source } => write!(f, "bitmap-resync source={}", side(source)),
            Self::FullSync { source } => write!(f, "full-sync source={}", side(source)),
            Self::SplitBrain {
                kind: SplitBrainKind::Resolvable,
            } => f.write_str("split-brain resolvable"),
            Self::SplitBrain {
                kind: SplitBrainKind::NeedsFullSync,
            } => f.write_str("split-brain needs-full-sync"),
            Self::Unrelated => f.write_str("unrelated-data"),
        }
    }
}

/// The rule of [`connect_decision`] that decided; the discriminant is the rule number (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Rule {
    /// Both sides claim the same node id: refuse.
    SameNodeId = 10,
    /// Both volumes are just created: no sync until `primary --force` or `new-current-uuid --clear-bitmap`.
    JustCreatedBoth = 20,
    /// Only the local volume is just created: full sync from the peer.
    JustCreatedLocal = 30,
    /// Only the peer's volume is just created: full sync to it (the initial sync).
    JustCreatedPeer = 31,
    /// Same generation, but not both consistent: full sync from the consistent side, none if neither is.
    EqualInconsistent = 40,
    /// Same generation, one side still has a bitmap UUID: it missed the end of a resync as SyncSource and resyncs
    /// what its bitmap still holds (DRBD's `sync-source-missed-finish`).
    EqualMissedResyncEnd = 41,
    /// Same generation, a primary crashed: bitmap resync (its activity-log extents) from the crashed primary.
    EqualCrashedPrimary = 42,
    /// Same generation: no sync.
    Equal = 43,
    /// Each side's current UUID is the other's bitmap UUID, which no sequence of generations produces: split brain.
    BitmapCrossed = 50,
    /// The local current UUID is the peer's bitmap UUID: the peer moved on, bitmap resync from it.
    BitmapPeer = 51,
    /// The peer's current UUID is the local bitmap UUID: this node moved on, bitmap resync to the peer.
    BitmapLocal = 52,
    /// The local current UUID is only in the peer's history: full sync from the peer.
    HistoryPeer = 60,
    /// The peer's current UUID is only in the local history: full sync to the peer.
    HistoryLocal = 61,
    /// Equal non-zero bitmap UUIDs: both diverged from that generation, a resolvable split brain.
    BitmapBoth = 70,
    /// A common older ancestor: split brain needing a full sync.
    HistoryBoth = 80,
    /// Nothing in common: unrelated data.
    NothingInCommon = 90,
}

impl Rule {
    /// Every rule, in the order they are tried.
    pub const ALL: [Rule; 16] = [
        Rule::SameNodeId,
        Rule::JustCreatedBoth,
        Rule::JustCreatedLocal,
        Rule::JustCreatedPeer,
        Rule::EqualInconsistent,
        Rule::EqualMissedResyncEnd,
        Rule::EqualCrashedPrimary,
        Rule::Equal,
        Rule::BitmapCrossed,
        Rule::BitmapPeer,
        Rule::BitmapLocal,
        Rule::HistoryPeer,
        Rule::HistoryLocal,
        Rule::BitmapBoth,
        Rule::HistoryBoth,
        Rule::NothingInCommon,
    ];

    /// The rule number, as logged.
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// The rule name, as logged (DRBD 9 style, with "local" for DRBD's "self").
    pub const fn name(self) -> &'static str {
        match self {
            Rule::SameNodeId => "same-node-id",
            Rule::JustCreatedBoth => "just-created-both",
            Rule::JustCreatedLocal => "just-created-local",
            Rule::JustCreatedPeer => "just-created-peer",
            Rule::EqualInconsistent => "equal-inconsistent",
            Rule::EqualMissedResyncEnd => "equal-missed-resync-end",
            Rule::EqualCrashedPrimary => "equal-crashed-primary",
            Rule::Equal => "equal",
            Rule::BitmapCrossed => "bitmap-crossed",
            Rule::BitmapPeer => "bitmap-peer",
            Rule::BitmapLocal => "bitmap-local",
            Rule::HistoryPeer => "history-peer",
            Rule::HistoryLocal => "history-local",
            Rule::BitmapBoth => "bitmap-both",
            Rule::HistoryBoth => "history-both",
            Rule::NothingInCommon => "nothing-in-common",
        }
    }

    /// The rule that fires on the other node for the same pair.
    pub const fn mirrored(self) -> Self {
        match self {
            Rule::JustCreatedLocal => Rule::JustCreatedPeer,
            Rule::JustCreatedPeer => Rule::JustCreatedLocal,
            Rule::BitmapPeer => Rule::BitmapLocal,
            Rule::BitmapLocal => Rule::BitmapPeer,
            Rule::HistoryPeer => Rule::HistoryLocal,
            Rule::HistoryLocal => Rule::HistoryPeer,
            other => other,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.number(), self.name())
    }
}

/// The result of [`connect_decision`]: the decision and the rule that took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectOutcome {
    /// What to do.
    pub decision: ConnectDecision,
    /// Which rule decided.
    pub rule: Rule,
}

impl ConnectOutcome {
    /// The outcome the other node computes for the same pair.
    pub const fn mirrored(self) -> Self {
        Self {
            decision: self.decision.mirrored(),
            rule: self.rule.mirrored(),
        }
    }
}

impl fmt::Display for ConnectOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} by rule {}", self.decision, self.rule)
    }
}

/// The node that gives way on a tie: the one with the higher node id (None if the ids are equal).
fn tie_loser(local: &Side, peer: &Side) -> Option<Direction> {
    match local.node_id.cmp(&peer.node_id) {
        Ordering::Less => Some(Direction::Peer),
        Ordering::Greater => Some(Direction::Local),
        Ordering::Equal => None,
    }
}

/// Decides what two nodes do when they connect, from each side's tuple, flags and node id, in the rule order of the
/// module docs (DRBD's `drbd_uuid_compare()`).
///
/// Pure and total: any input gives an answer, and the peer, calling it with the sides swapped, gets
/// [`ConnectOutcome::mirrored`] of this node's answer, so the two nodes never disagree about who is SyncSource.
pub fn connect_decision(local: &Side, peer: &Side) -> ConnectOutcome {
    use ConnectDecision::{BitmapResync, FullSync, NoSync, SplitBrain, Unrelated};
    use Direction::{Local, Peer};
    let outcome = |decision, rule| ConnectOutcome { decision, rule };
    let (l, p) = (&local.ids, &peer.ids);

    // 10: ties are broken by node id, and a peer with our id is a misconfiguration or not our peer.
    if local.node_id == peer.node_id {
        return outcome(Unrelated, Rule::SameNodeId);
    }

    // 20-31: a just-created volume holds nothing worth keeping.
    match (l.is_just_created(), p.is_just_created()) {
        (true, true) => return outcome(NoSync, Rule::JustCreatedBoth),
        (true, false) => return outcome(FullSync { source: Peer }, Rule::JustCreatedLocal),
        (false, true) => return outcome(FullSync { source: Local }, Rule::JustCreatedPeer),
        (false, false) => {}
    }

    let (l_cur, p_cur) = (generation(l.current), generation(p.current));
    if l_cur == p_cur {
        // 40: same generation, but a copy that is not consistent lacks blocks no bitmap names.
        match (local.flags.consistent, peer.flags.consistent) {
            (true, false) => return outcome(FullSync { source: Local }, Rule::EqualInconsistent),
            (false, true) => return outcome(FullSync { source: Peer }, Rule::EqualInconsistent),
            (false, false) => return outcome(NoSync, Rule::EqualInconsistent),
            (true, true) => {}
        }
        // 41: the target adopted the generation, the source crashed before clearing its bitmap UUID. Resyncing
        // what the bitmap still holds is harmless and ends with the bitmap UUID cleared.
        match (is_real(l.bitmap), is_real(p.bitmap)) {
            (true, false) => {
                return outcome(BitmapResync { source: Local }, Rule::EqualMissedResyncEnd)
            }
            (false, true) => {
                return outcome(BitmapResync { source: Peer }, Rule::EqualMissedResyncEnd)
            }
            _ => {}
        }
        // 42: a crashed primary's activity-log extents may differ from the peer's, in either direction; neither
        // version was acknowledged, so either is correct as long as both sides agree. DRBD 8 picks the crashed
        // primary, which has those extents marked in its bitmap.
        return match (local.flags.crashed_primary, peer.flags.crashed_primary) {
            (true, false) => outcome(BitmapResync { source: Local }, Rule::EqualCrashedPrimary),
            (false, true) => outcome(BitmapResync { source: Peer }, Rule::EqualCrashedPrimary),
            (true, true) => {
                let source = tie_loser(local, peer).map_or(Peer, Direction::mirrored);
                outcome(BitmapResync { source }, Rule::EqualCrashedPrimary)
            }
            // 43
            (false, false) => outcome(NoSync, Rule::Equal),
        };
    }

    // 50-52: one side is still at the generation the other's bitmap counts from.
    let local_is_behind = is_real(p.bitmap) && l_cur == generation(p.bitmap);
    let peer_is_behind = is_real(l.bitmap) && p_cur == generation(l.bitmap);
    match (local_is_behind, peer_is_behind) {
        (true, true) => {
            return outcome(
                SplitBrain {
                    kind: SplitBrainKind::NeedsFullSync,
                },
                Rule::BitmapCrossed,
            )
        }
        (true, false) => return outcome(BitmapResync { source: Peer }, Rule::BitmapPeer),
        (false, true) => return outcome(BitmapResync { source: Local }, Rule::BitmapLocal),
        (false, false) => {}
    }

    // 60-61: one side is an older generation of the other, but no bitmap covers the difference.
    let local_in_peer_history = p.in_history(l.current);
    let peer_in_local_history = l.in_history(p.current);
    match (local_in_peer_history, peer_in_local_history) {
        (true, false) => return outcome(FullSync { source: Peer }, Rule::HistoryPeer),
        (false, true) => return outcome(FullSync { source: Local }, Rule::HistoryLocal),
        _ => {}
    }

    // 70: both diverged from the same generation; each bitmap holds its own changes since.
    if is_real(l.bitmap) && generation(l.bitmap) == generation(p.bitmap) {
        return outcome(
            SplitBrain {
                kind: SplitBrainKind::Resolvable,
            },
            Rule::BitmapBoth,
        );
    }

    // 80: related data that diverged further back than any bitmap reaches. Currents in each other's history
    // (a cycle) count too: related, and ambiguous.
    let common_ancestor = l.ancestors().any(|a| p.ancestors().any(|b| a == b));
    if common_ancestor || (local_in_peer_history && peer_in_local_history) {
        return outcome(
            SplitBrain {
                kind: SplitBrainKind::NeedsFullSync,
            },
            Rule::HistoryBoth,
        );
    }

    // 90
    outcome(Unrelated, Rule::NothingInCommon)
}

/// Number of blocks each side changed since the split: the weight of the bitmap it holds against the other side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChangedBlocks {
    /// Blocks this node changed.
    pub local: u64,
    /// Blocks the peer changed.
    pub peer: u64,
}

impl ChangedBlocks {
    /// The same counts seen from the other node.
    pub const fn mirrored(self) -> Self {
        Self {
            local: self.peer,
            peer: self.local,
        }
    }
}

/// `after-sb-0pri`: what to do with a resolvable split brain when no node is primary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AfterSb0Pri {
    /// Leave it to the operator (DRBD's default).
    #[default]
    Disconnect,
    /// The node that became primary later discards its changes; if that cannot be told (both or neither were
    /// primary at the split), as `discard-least-changes`.
    DiscardYoungerPrimary,
    /// The node that was primary first discards its changes; otherwise as `discard-least-changes`.
    DiscardOlderPrimary,
    /// A node that wrote nothing since the split discards (= syncs from the other); if both wrote, disconnect.
    DiscardZeroChanges,
    /// The node with fewer changed blocks discards its changes.
    DiscardLeastChanges,
    /// The node with this id discards its changes (DRBD's `discard-node-NODENAME`).
    DiscardNode(u8),
}

impl AfterSb0Pri {
    /// The policy's name in the configuration (DRBD's spelling).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Disconnect => "disconnect",
            Self::DiscardYoungerPrimary => "discard-younger-primary",
            Self::DiscardOlderPrimary => "discard-older-primary",
            Self::DiscardZeroChanges => "discard-zero-changes",
            Self::DiscardLeastChanges => "discard-least-changes",
            Self::DiscardNode(_) => "discard-node",
        }
    }
}

/// `after-sb-1pri`: what to do with a resolvable split brain when one node is primary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AfterSb1Pri {
    /// Leave it to the operator (DRBD's default).
    #[default]
    Disconnect,
    /// Apply `after-sb-0pri`; accept its answer only if the victim is the secondary, else disconnect.
    Consensus,
    /// The secondary discards its changes, whatever they are.
    DiscardSecondary,
    /// Apply `after-sb-0pri`; if the victim is the primary, it must demote first, and if it cannot, the engine runs
    /// the `pri-lost-after-sb` handler (DRBD's `call-pri-lost-after-sb`).
    CallPriLostAfterSb,
}

impl AfterSb1Pri {
    /// The policy's name in the configuration (DRBD's spelling).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Disconnect => "disconnect",
            Self::Consensus => "consensus",
            Self::DiscardSecondary => "discard-secondary",
            Self::CallPriLostAfterSb => "call-pri-lost-after-sb",
        }
    }
}

/// `after-sb-2pri`: what to do with a resolvable split brain when both nodes are primary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AfterSb2Pri {
    /// Leave it to the operator (DRBD's default).
    #[default]
    Disconnect,
    /// Apply `after-sb-0pri` to pick the victim, which must demote first; if it cannot, the engine runs the
    /// `pri-lost-after-sb` handler.
    CallPriLostAfterSb,
}

impl AfterSb2Pri {
    /// The policy's name in the configuration (DRBD's spelling).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Disconnect => "disconnect",
            Self::CallPriLostAfterSb => "call-pri-lost-after-sb",
        }
    }
}

/// The three after-split-brain policies of a volume; identical on both nodes, like the rest of the configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AfterSbPolicies {
    /// `after-sb-0pri`.
    pub zero_primaries: AfterSb0Pri,
    /// `after-sb-1pri`.
    pub one_primary: AfterSb1Pri,
    /// `after-sb-2pri`.
    pub two_primaries: AfterSb2Pri,
}

/// How a split brain ends, seen from the node deciding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// Not resolved: stay StandAlone, keep reporting the split brain.
    Disconnect,
    /// `victim` discards its changes since the split and becomes SyncTarget ([`Resolution::decision`]).
    Discard {
        /// The side whose changes are lost.
        victim: Direction,
    },
    /// `victim` is primary: it must demote before it becomes SyncTarget; if it cannot, the engine runs the
    /// `pri-lost-after-sb` handler and disconnects (DRBD's `call-pri-lost-after-sb`).
    DemoteThenDiscard {
        /// The side whose changes are lost.
        victim: Direction,
    },
}

impl Resolution {
    /// The same resolution seen from the other node.
    pub const fn mirrored(self) -> Self {
        match self {
            Self::Disconnect => Self::Disconnect,
            Self::Discard { victim } => Self::Discard {
                victim: victim.mirrored(),
            },
            Self::DemoteThenDiscard { victim } => Self::DemoteThenDiscard {
                victim: victim.mirrored(),
            },
        }
    }

    /// The side whose changes are lost, if any.
    pub const fn victim(self) -> Option<Direction> {
        match self {
            Self::Disconnect => None,
            Self::Discard { victim } | Self::DemoteThenDiscard { victim } => Some(victim),
        }
    }

    /// The resync that carries this resolution out for a split brain of `kind`: from the bitmaps if resolvable
    /// (their union: each side's changes since the split), in full otherwise.
    pub const fn decision(self, kind: SplitBrainKind) -> Option<ConnectDecision> {
        let Some(victim) = self.victim() else {
            return None;
        };
        let source = victim.mirrored();
        Some(match kind {
            SplitBrainKind::Resolvable => ConnectDecision::BitmapResync { source },
            SplitBrainKind::NeedsFullSync => ConnectDecision::FullSync { source },
        })
    }
}

/// The resolution that makes `victim` discard, demoting it first if it is primary.
fn discard(victim: Direction, local: &Side, peer: &Side) -> Resolution {
    let role = match victim {
        Direction::Local => local.role,
        Direction::Peer => peer.role,
    };
    match role {
        Role::Primary => Resolution::DemoteThenDiscard { victim },
        Role::Secondary => Resolution::Discard { victim },
    }
}

/// `discard-least-changes`: fewer changed blocks loses; a tie goes to the node id.
fn least_changes_victim(local: &Side, peer: &Side, changes: ChangedBlocks) -> Option<Direction> {
    match changes.local.cmp(&changes.peer) {
        Ordering::Less => Some(Direction::Local),
        Ordering::Greater => Some(Direction::Peer),
        Ordering::Equal => tie_loser(local, peer),
    }
}

/// The victim `after-sb-0pri` picks, None for disconnect (DRBD's `drbd_asb_recover_0p()`).
fn zero_primaries_victim(
    policy: AfterSb0Pri,
    local: &Side,
    peer: &Side,
    changes: ChangedBlocks,
) -> Option<Direction> {
    let at_split = (local.ids.primary_at_split(), peer.ids.primary_at_split());
    match policy {
        AfterSb0Pri::Disconnect => None,
        // The peer was secondary at the split and became primary later: it is the younger primary.
        AfterSb0Pri::DiscardYoungerPrimary => match at_split {
            (true, false) => Some(Direction::Peer),
            (false, true) => Some(Direction::Local),
            _ => least_changes_victim(local, peer, changes),
        },
        AfterSb0Pri::DiscardOlderPrimary => match at_split {
            (true, false) => Some(Direction::Local),
            (false, true) => Some(Direction::Peer),
            _ => least_changes_victim(local, peer, changes),
        },
        AfterSb0Pri::DiscardZeroChanges => match (changes.local == 0, changes.peer == 0) {
            (true, true) => tie_loser(local, peer),
            (true, false) => Some(Direction::Local),
            (false, true) => Some(Direction::Peer),
            (false, false) => None,
        },
        AfterSb0Pri::DiscardLeastChanges => least_changes_victim(local, peer, changes),
        AfterSb0Pri::DiscardNode(id) => match (local.node_id == id, peer.node_id == id) {
            (true, false) => Some(Direction::Local),
            (false, true) => Some(Direction::Peer),
            _ => None,
        },
    }
}

/// `after-sb-0pri` for a resolvable split brain with no primary (DRBD's `drbd_asb_recover_0p()`).
pub fn after_sb_0pri(
    policy: AfterSb0Pri,
    local: &Side,
    peer: &Side,
    changes: ChangedBlocks,
) -> Resolution {
    zero_primaries_victim(policy, local, peer, changes)
        .map_or(Resolution::Disconnect, |v| discard(v, local, peer))
}

/// `after-sb-1pri` for a resolvable split brain with exactly one primary (DRBD's `drbd_asb_recover_1p()`);
/// `zero_primaries` is the volume's `after-sb-0pri`, which `consensus` and `call-pri-lost-after-sb` consult.
/// Disconnects if the roles are not one primary and one secondary.
pub fn after_sb_1pri(
    policy: AfterSb1Pri,
    zero_primaries: AfterSb0Pri,
    local: &Side,
    peer: &Side,
    changes: ChangedBlocks,
) -> Resolution {
    let secondary = match (local.role, peer.role) {
        (Role::Primary, Role::Secondary) => Direction::Peer,
        (Role::Secondary, Role::Primary) => Direction::Local,
        _ => return Resolution::Disconnect,
    };
    let by_zero_primaries = || zero_primaries_victim(zero_primaries, local, peer, changes);
    match policy {
        AfterSb1Pri::Disconnect => Resolution::Disconnect,
        AfterSb1Pri::Consensus => match by_zero_primaries() {
            Some(victim) if victim == secondary => Resolution::Discard { victim },
            _ => Resolution::Disconnect,
        },
        AfterSb1Pri::DiscardSecondary => Resolution::Discard { victim: secondary },
        AfterSb1Pri::CallPriLostAfterSb => {
            by_zero_primaries().map_or(Resolution::Disconnect, |v| discard(v, local, peer))
        }
    }
}

/// `after-sb-2pri` for a resolvable split brain with two primaries (DRBD's `drbd_asb_recover_2p()`);
/// `zero_primaries` picks the victim for `call-pri-lost-after-sb`. Disconnects unless both are primary.
pub fn after_sb_2pri(
    policy: AfterSb2Pri,
    zero_primaries: AfterSb0Pri,
    local: &Side,
    peer: &Side,
    changes: ChangedBlocks,
) -> Resolution {
    if (local.role, peer.role) != (Role::Primary, Role::Primary) {
        return Resolution::Disconnect;
    }
    match policy {
        AfterSb2Pri::Disconnect => Resolution::Disconnect,
        AfterSb2Pri::CallPriLostAfterSb => {
            zero_primaries_victim(zero_primaries, local, peer, changes)
                .map_or(Resolution::Disconnect, |v| discard(v, local, peer))
        }
    }
}

/// Resolves a split brain found by [`connect_decision`] (the rest of DRBD's `drbd_sync_handshake()`).
///
/// In order: `--discard-my-data` on exactly one side makes it the victim (on both sides it is refused, as DRBD
/// refuses the connection); a split brain that needs a full sync is left to the operator; otherwise the policy for
/// the number of primaries now decides. Use [`Resolution::decision`] for the resync. Mirrored like
/// [`connect_decision`] when the peer swaps the sides and the changes.
pub fn resolve_split_brain(
    kind: SplitBrainKind,
    policies: &AfterSbPolicies,
    local: &Side,
    peer: &Side,
    changes: ChangedBlocks,
) -> Resolution {
    match (local.flags.discard_my_data, peer.flags.discard_my_data) {
        (true, true) => return Resolution::Disconnect,
        (true, false) => return discard(Direction::Local, local, peer),
        (false, true) => return discard(Direction::Peer, local, peer),
        (false, false) => {}
    }
    // DRBD applies the policies to an ambiguous split brain only with `always-asbp`; we never do.
    if kind == SplitBrainKind::NeedsFullSync {
        return Resolution::Disconnect;
    }
    match (local.role, peer.role) {
        (Role::Secondary, Role::Secondary) => {
            after_sb_0pri(policies.zero_primaries, local, peer, changes)
        }
        (Role::Primary, Role::Primary) => after_sb_2pri(
            policies.two_primaries,
            policies.zero_primaries,
            local,
            peer,
            changes,
        ),
        _ => after_sb_1pri(
            policies.one_primary,
            policies.zero_primaries,
            local,
            peer,
            changes,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ConnectDecision::{BitmapResync, FullSync, NoSync, SplitBrain, Unrelated};
    use Direction::{Local, Peer};
    use SplitBrainKind::{NeedsFullSync, Resolvable};

    // Generations named by letter; bit 0 clear, so `| P` adds the primary marker.
    const P: u64 = UUID_PRIMARY;
    const S: u64 = 0x5000;
    const T: u64 = 0x7000;
    const U: u64 = 0x0000_0000_0000_9000;
    const V: u64 = 0x5656_0000_0000_0000;
    const W: u64 = 0x7777_0000_0000_0000;
    const X: u64 = 0x8888_0000_0000_0000;
    const Y: u64 = 0x9999_0000_0000_0000;
    const Z: u64 = 0xAAAA_0000_0000_0000;
    const JC: u64 = UUID_JUST_CREATED;

    /// Stand-ins for the engine's random draws.
    const FRESH: [u64; 6] = [
        0x1F2E_3D4C_5B6A_7988,
        0x2E3D_4C5B_6A79_8810,
        0x3D4C_5B6A_7988_1020,
        0x4C5B_6A79_8810_2030,
        0x5B6A_7988_1020_3040,
        0x6A79_8810_2030_4050,
    ];

    fn ids(current: u64, bitmap: u64, history: [u64; 2]) -> GenerationIds {
        GenerationIds {
            current,
            bitmap,
            history,
        }
    }

    /// A consistent secondary with node id `node_id`.
    fn node(node_id: u8, ids: GenerationIds) -> Side {
        let flags = Flags {
            consistent: true,
            ..Flags::default()
        };
        Side {
            ids,
            flags,
            role: Role::Secondary,
            node_id,
        }
    }

    /// Local side of the table: node 0.
    fn l(current: u64, bitmap: u64, history: [u64; 2]) -> Side {
        node(0, ids(current, bitmap, history))
    }

    /// Peer side of the table: node 1.
    fn p(current: u64, bitmap: u64, history: [u64; 2]) -> Side {
        node(1, ids(current, bitmap, history))
    }

    impl Side {
        fn primary(mut self) -> Self {
            self.role = Role::Primary;
            self
        }
        fn inconsistent(mut self) -> Self {
            self.flags.consistent = false;
            self
        }
        fn crashed(mut self) -> Self {
            self.flags.crashed_primary = true;
            self
        }
        fn id(mut self, node_id: u8) -> Self {
            self.node_id = node_id;
            self
        }
    }

    struct Case {
        name: &'static str,
        local: Side,
        peer: Side,
        want: ConnectDecision,
        rule: Rule,
    }

    fn case(
        name: &'static str,
        local: Side,
        peer: Side,
        want: ConnectDecision,
        rule: Rule,
    ) -> Case {
        Case {
            name,
            local,
            peer,
            want,
            rule,
        }
    }

    /// The golden table: every rule at least twice, most of them once from each side.
    #[rustfmt::skip]
    fn cases() -> Vec<Case> {
        let jc = || l(JC, 0, [0, 0]).inconsistent();
        let pjc = || p(JC, 0, [0, 0]).inconsistent();
        vec![
            // 10
            case("peer claims our id", jc(), pjc().id(0), Unrelated, Rule::SameNodeId),
            case("same id, same data", l(X, 0, [0, 0]).id(3), p(X, 0, [0, 0]).id(3), Unrelated, Rule::SameNodeId),
            // 20
            case("fresh pair", jc(), pjc(), NoSync, Rule::JustCreatedBoth),
            case("fresh pair, old zero current", l(0, 0, [0, 0]).inconsistent(), pjc(), NoSync, Rule::JustCreatedBoth),
            // 30 / 31
            case("local fresh", jc(), p(Y, 0, [0, 0]), FullSync { source: Peer }, Rule::JustCreatedLocal),
            case("local fresh, peer primary ahead", jc(), p(Y | P, X | P, [W, 0]).primary(), FullSync { source: Peer }, Rule::JustCreatedLocal),
            case("peer fresh: initial sync", l(Y | P, 0, [0, 0]).primary(), pjc(), FullSync { source: Local }, Rule::JustCreatedPeer),
            case("peer replaced, zero current", l(Y, X, [W, 0]), p(0, 0, [0, 0]).inconsistent(), FullSync { source: Local }, Rule::JustCreatedPeer),
            // 40
            case("equal, peer inconsistent", l(X, 0, [0, 0]), p(X, 0, [0, 0]).inconsistent(), FullSync { source: Local }, Rule::EqualInconsistent),
            case("equal, local inconsistent", l(X, 0, [0, 0]).inconsistent(), p(X | P, 0, [0, 0]).primary(), FullSync { source: Peer }, Rule::EqualInconsistent),
            case("equal, both inconsistent", l(X, 0, [0, 0]).inconsistent(), p(X, 0, [0, 0]).inconsistent(), NoSync, Rule::EqualInconsistent),
            // 41
            case("local missed resync end", l(Y, X, [0, 0]), p(Y, 0, [X, 0]), BitmapResync { source: Local }, Rule::EqualMissedResyncEnd),
            case("peer missed resync end", l(Y, 0, [X, 0]), p(Y | P, X | P, [0, 0]).primary(), BitmapResync { source: Peer }, Rule::EqualMissedResyncEnd),
            // 42
            case("local crashed primary", l(X | P, 0, [0, 0]).crashed(), p(X, 0, [0, 0]), BitmapResync { source: Local }, Rule::EqualCrashedPrimary),
            case("peer crashed primary", l(X, 0, [0, 0]), p(X | P, 0, [0, 0]).crashed(), BitmapResync { source: Peer }, Rule::EqualCrashedPrimary),
            case("both crashed, lower id wins", l(X, 0, [0, 0]).crashed(), p(X, 0, [0, 0]).crashed(), BitmapResync { source: Local }, Rule::EqualCrashedPrimary),
            case("both crashed, peer lower id", l(X, 0, [0, 0]).crashed().id(5), p(X, 0, [0, 0]).crashed().id(2), BitmapResync { source: Peer }, Rule::EqualCrashedPrimary),
            // 43
            case("equal", l(X, 0, [W, 0]), p(X, 0, [W, 0]), NoSync, Rule::Equal),
            case("equal, role marker ignored", l(X | P, 0, [0, 0]).primary(), p(X, 0, [V, 0]), NoSync, Rule::Equal),
            // 50
            case("bitmaps crossed", l(Y, X, [0, 0]), p(X, Y, [0, 0]), SplitBrain { kind: NeedsFullSync }, Rule::BitmapCrossed),
            case("bitmaps crossed, markers", l(Y | P, X, [0, 0]).primary(), p(X, Y | P, [0, 0]), SplitBrain { kind: NeedsFullSync }, Rule::BitmapCrossed),
            // 51 / 52
            case("peer moved on", l(X, 0, [0, 0]), p(Y | P, X | P, [0, 0]).primary(), BitmapResync { source: Peer }, Rule::BitmapPeer),
            case("peer moved on twice", l(X, 0, [W, 0]), p(Z, X, [Y, W]), BitmapResync { source: Peer }, Rule::BitmapPeer),
            case("local moved on", l(Y | P, X | P, [0, 0]).primary(), p(X, 0, [0, 0]), BitmapResync { source: Local }, Rule::BitmapLocal),
            case("bitmap rules before history rules", l(Y, Z, [0, 0]), p(Z, 0, [Y, 0]), BitmapResync { source: Local }, Rule::BitmapLocal),
            case("local moved on, peer outdated primary marker", l(Y, X, [W, 0]), p(X | P, 0, [W, 0]), BitmapResync { source: Local }, Rule::BitmapLocal),
            // 60 / 61
            case("local older, in peer history", l(X, 0, [0, 0]), p(Y, 0, [X, W]), FullSync { source: Peer }, Rule::HistoryPeer),
            case("local older, peer history[1]", l(W, 0, [0, 0]), p(Z, Y, [X, W]), FullSync { source: Peer }, Rule::HistoryPeer),
            case("peer older, in local history", l(Y, 0, [X, W]), p(X, 0, [0, 0]).inconsistent(), FullSync { source: Local }, Rule::HistoryLocal),
            case("peer older, local history[1]", l(Z | P, Y, [X, W]).primary(), p(W, 0, [0, 0]), FullSync { source: Local }, Rule::HistoryLocal),
            case("history rules before bitmap-both", l(Y, X, [0, 0]), p(Z, X, [Y, 0]), FullSync { source: Peer }, Rule::HistoryPeer),
            // 70
            case("both diverged from X", l(Y, X, [0, 0]), p(Z, X, [0, 0]), SplitBrain { kind: Resolvable }, Rule::BitmapBoth),
            case("both diverged from X, markers", l(Y | P, X | P, [W, 0]).primary(), p(Z | P, X, [W, 0]).primary(), SplitBrain { kind: Resolvable }, Rule::BitmapBoth),
            // 80
            case("common history", l(Y, 0, [W, 0]), p(Z, 0, [W, 0]), SplitBrain { kind: NeedsFullSync }, Rule::HistoryBoth),
            case("local history meets peer bitmap", l(Y, V, [X, 0]), p(Z, X, [0, 0]), SplitBrain { kind: NeedsFullSync }, Rule::HistoryBoth),
            case("currents in each other's history", l(Y, 0, [Z, 0]), p(Z, 0, [Y, 0]), SplitBrain { kind: NeedsFullSync }, Rule::HistoryBoth),
            // 90
            case("strangers", l(Y, 0, [0, 0]), p(Z, 0, [0, 0]), Unrelated, Rule::NothingInCommon),
            case("strangers with pasts", l(Y, X, [W, V]), p(Z, U, [T, S]), Unrelated, Rule::NothingInCommon),
        ]
    }

    #[test]
    fn golden_table() {
        for c in cases() {
            let got = connect_decision(&c.local, &c.peer);
            assert_eq!(
                got,
                ConnectOutcome {
                    decision: c.want,
                    rule: c.rule
                },
                "{}: local side",
                c.name
            );
            // The peer runs the same function with the sides swapped and must agree on who is SyncSource.
            let mirrored = connect_decision(&c.peer, &c.local);
            assert_eq!(mirrored, got.mirrored(), "{}: peer side", c.name);
        }
    }

    #[test]
    fn golden_table_covers_every_rule_twice() {
        let table = cases();
        for rule in Rule::ALL {
            let n = table
                .iter()
                .filter(|c| c.rule == rule || c.rule.mirrored() == rule)
                .count();
            assert!(n >= 2, "rule {rule} has {n} cases");
        }
    }

    #[test]
    fn rules_are_numbered_in_order() {
        let numbers: Vec<u8> = Rule::ALL.iter().map(|r| r.number()).collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
        assert_eq!(Rule::BitmapPeer.to_string(), "51 (bitmap-peer)");
        let outcome = ConnectOutcome {
            decision: BitmapResync { source: Peer },
            rule: Rule::BitmapPeer,
        };
        assert_eq!(
            outcome.to_string(),
            "bitmap-resync source=peer by rule 51 (bitmap-peer)"
        );
    }

    // ---- transitions ----

    #[test]
    fn new_current_uuid_rotates_into_bitmap_then_history() {
        let mut g = ids(X | P, 0, [W, 0]);
        g.new_current_uuid(Y);
        assert_eq!(
            g,
            ids(Y | P, X | P, [W, 0]),
            "current -> empty bitmap, marker kept on both"
        );
        g.new_current_uuid(Z | P);
        assert_eq!(
            g,
            ids(Z | P, X | P, [Y, W]),
            "bitmap already counting: current -> history"
        );
    }

    #[test]
    fn new_current_uuid_on_a_fresh_volume_keeps_nothing() {
        let mut g = GenerationIds::JUST_CREATED;
        g.new_current_uuid(Y);
        assert_eq!(g, ids(Y, 0, [0, 0]));
    }

    #[test]
    fn fresh_uuids_avoid_reserved_values_and_bit_0() {
        for (fresh, want) in [
            (0, 1 << 63),
            (1, 1 << 63),
            (JC, JC | 1 << 63),
            (JC | P, JC | 1 << 63),
            (Y | P, Y),
        ] {
            let mut g = GenerationIds::JUST_CREATED;
            g.new_current_uuid(fresh);
            assert_eq!(g.current, want, "fresh {fresh:#x}");
            assert!(!g.is_just_created());
        }
    }

    #[test]
    fn role_marker_follows_the_role() {
        let mut g = ids(X, 0, [0, 0]);
        g.set_role(Role::Primary);
        assert_eq!(g.current, X | P);
        g.set_role(Role::Secondary);
        assert_eq!(g.current, X);
        g.promote_disconnected(Y);
        assert_eq!(g, ids(Y | P, X, [0, 0]), "was secondary when it diverged");
        assert!(!g.primary_at_split());
    }

    #[test]
    fn resync_end_leaves_equal_tuples() {
        let mut source = ids(Z | P, X | P, [Y, W]);
        let before = source;
        source.finish_resync_as_source();
        assert_eq!(source, ids(Z | P, 0, [X, Y]));
        // The target may see the source's tuple from before or after the source rotated it.
        for seen in [before, source] {
            let mut target = ids(X, 0, [W, 0]);
            target.finish_resync_as_target(&seen);
            assert_eq!(target, ids(Z, 0, [X, Y]));
        }
    }

    #[test]
    fn skip_initial_sync_only_on_a_fresh_volume() {
        let mut fresh = GenerationIds::JUST_CREATED;
        assert!(!fresh.accept_skip_initial_sync(JC));
        assert!(fresh.accept_skip_initial_sync(Y | P));
        assert_eq!(fresh, ids(Y, 0, [0, 0]));
        let mut used = ids(X, 0, [0, 0]);
        assert!(!used.accept_skip_initial_sync(Y));
        assert_eq!(used, ids(X, 0, [0, 0]));
    }

    #[test]
    fn clear_bitmap_on_a_used_volume_declares_the_peer_in_sync() {
        // Truck-based replication: the peer got a copy of generation X by other means.
        let mut a = ids(X, 0, [W, 0]);
        a.clear_bitmap(Y);
        assert_eq!(a, ids(Y, X, [W, 0]));
        // A stale bitmap UUID is retired to the history first.
        let mut b = ids(Y, V, [W, 0]);
        b.clear_bitmap(Z);
        assert_eq!(b, ids(Z, Y, [V, W]));
        let out = connect_decision(&node(0, a), &node(1, ids(X, 0, [W, 0])));
        assert_eq!(
            out,
            ConnectOutcome {
                decision: BitmapResync { source: Local },
                rule: Rule::BitmapLocal
            }
        );
    }

    // ---- lifecycle scenarios ----

    /// Both nodes of a pair, as the engine would hold them.
    struct Pair {
        a: Side,
        b: Side,
    }

    impl Pair {
        fn fresh() -> Self {
            let flags = Flags::default();
            let side = |node_id| Side {
                ids: GenerationIds::JUST_CREATED,
                flags,
                role: Role::Secondary,
                node_id,
            };
            Pair {
                a: side(0),
                b: side(1),
            }
        }

        fn connect(&self) -> ConnectOutcome {
            let from_a = connect_decision(&self.a, &self.b);
            assert_eq!(
                connect_decision(&self.b, &self.a),
                from_a.mirrored(),
                "both nodes agree"
            );
            from_a
        }

        /// Carries out a resync decided by A, then connects again.
        fn resync(&mut self, decision: ConnectDecision) -> ConnectOutcome {
            let (source, target) = match decision.sync_source() {
                Some(Local) => (&mut self.a, &mut self.b),
                Some(Peer) => (&mut self.b, &mut self.a),
                None => panic!("{decision} is not a resync"),
            };
            source.ids.finish_resync_as_source();
            target.ids.finish_resync_as_target(&source.ids);
            target.flags.consistent = true;
            self.a.flags.crashed_primary = false;
            self.b.flags.crashed_primary = false;
            self.a.flags.discard_my_data = false;
            self.b.flags.discard_my_data = false;
            self.connect()
        }

        fn assert_in_sync(&self) {
            let strip = |s: &Side| GenerationIds {
                current: generation(s.ids.current),
                ..s.ids
            };
            assert_eq!(
                strip(&self.a),
                strip(&self.b),
                "{} vs {}",
                self.a.ids,
                self.b.ids
            );
            assert_eq!(
                self.connect(),
                ConnectOutcome {
                    decision: NoSync,
                    rule: Rule::Equal
                }
            );
        }

        /// Fresh pair, A forced primary, initial sync done; A primary, B secondary, generation FRESH[0].
        fn running() -> Self {
            let mut pair = Pair::fresh();
            pair.a.ids.force_primary(FRESH[0]);
            pair.a.flags.consistent = true;
            pair.a.role = Role::Primary;
            let initial = pair.connect();
            pair.resync(initial.decision);
            pair
        }
    }

    #[test]
    fn lifecycle_initial_sync_after_primary_force() {
        let mut pair = Pair::fresh();
        assert_eq!(
            pair.connect(),
            ConnectOutcome {
                decision: NoSync,
                rule: Rule::JustCreatedBoth
            }
        );
        pair.a.ids.force_primary(FRESH[0]);
        pair.a.flags.consistent = true;
        pair.a.role = Role::Primary;
        let initial = pair.connect();
        assert_eq!(
            initial,
            ConnectOutcome {
                decision: FullSync { source: Local },
                rule: Rule::JustCreatedPeer
            }
        );
        pair.resync(initial.decision);
        pair.assert_in_sync();
        assert_eq!(
            pair.b.ids,
            ids(FRESH[0], 0, [0, 0]),
            "a just-created UUID never enters a history"
        );
    }

    #[test]
    fn lifecycle_skip_initial_sync_with_clear_bitmap() {
        let mut pair = Pair::fresh();
        pair.a.ids.clear_bitmap(FRESH[0]);
        assert!(pair.b.ids.accept_skip_initial_sync(pair.a.ids.current));
        pair.a.flags.consistent = true;
        pair.b.flags.consistent = true;
        pair.assert_in_sync();

        // If B missed the new UUID it stays just-created: a full sync, slower but right.
        let mut missed = Pair::fresh();
        missed.a.ids.clear_bitmap(FRESH[0]);
        missed.a.flags.consistent = true;
        let out = missed.connect();
        assert_eq!(
            out,
            ConnectOutcome {
                decision: FullSync { source: Local },
                rule: Rule::JustCreatedPeer
            }
        );
    }

    #[test]
    fn lifecycle_primary_loses_peer_then_bitmap_resync() {
        let mut pair = Pair::running();
        // The link drops; A's first write after that starts a generation.
        pair.a.ids.new_current_uuid(FRESH[1]);
        let out = pair.connect();
        assert_eq!(
            out,
            ConnectOutcome {
                decision: BitmapResync { source: Local },
                rule: Rule::BitmapLocal
            }
        );
        assert_eq!(connect_decision(&pair.b, &pair.a).rule, Rule::BitmapPeer);
        pair.resync(out.decision);
        pair.assert_in_sync();
    }

    #[test]
    fn lifecycle_primary_crash_without_failover() {
        let mut pair = Pair::running();
        // A crashes as primary; B is not promoted. A reattaches with the crashed-primary flag.
        pair.a.flags.crashed_primary = true;
        pair.a.role = Role::Secondary;
        let out = pair.connect();
        assert_eq!(
            out,
            ConnectOutcome {
                decision: BitmapResync { source: Local },
                rule: Rule::EqualCrashedPrimary
            }
        );
        pair.resync(out.decision);
        pair.assert_in_sync();
    }

    #[test]
    fn lifecycle_primary_crash_with_failover() {
        let mut pair = Pair::running();
        // A crashes as primary; the cluster promotes B, which writes; A comes back.
        pair.a.flags.crashed_primary = true;
        pair.a.role = Role::Secondary;
        pair.a.ids.set_role(Role::Secondary);
        pair.b.ids.promote_disconnected(FRESH[1]);
        pair.b.role = Role::Primary;
        let out = pair.connect();
        // A's activity-log extents travel in its own bitmap, which the resync merges; the direction is B -> A.
        assert_eq!(
            out,
            ConnectOutcome {
                decision: BitmapResync { source: Peer },
                rule: Rule::BitmapPeer
            }
        );
        pair.resync(out.decision);
        pair.assert_in_sync();
    }

    #[test]
    fn lifecycle_interrupted_resync_resumes_from_the_bitmap() {
        let mut pair = Pair::running();
        pair.a.ids.new_current_uuid(FRESH[1]);
        // The resync starts, B becomes Inconsistent, the link drops, A writes on.
        pair.b.flags.consistent = false;
        pair.a.ids.new_current_uuid(FRESH[2]);
        let out = pair.connect();
        assert_eq!(
            out,
            ConnectOutcome {
                decision: BitmapResync { source: Local },
                rule: Rule::BitmapLocal
            }
        );
        pair.resync(out.decision);
        pair.assert_in_sync();
    }

    #[test]
    fn lifecycle_resync_end_lost_on_either_side() {
        // The source crashed before clearing its bitmap UUID: same generation, the source finishes the job.
        let mut pair = Pair::running();
        pair.a.ids.new_current_uuid(FRESH[1]);
        let source_before = pair.a.ids;
        pair.b.ids.finish_resync_as_target(&source_before);
        let out = pair.connect();
        assert_eq!(
            out,
            ConnectOutcome {
                decision: BitmapResync { source: Local },
                rule: Rule::EqualMissedResyncEnd
            }
        );
        pair.resync(out.decision);
        pair.assert_in_sync();

        // The target crashed before adopting the generation: only the history links them, so a full sync.
        let mut pair = Pair::running();
        pair.a.ids.new_current_uuid(FRESH[1]);
        pair.a.ids.finish_resync_as_source();
        pair.b.flags.consistent = false;
        let out = pair.connect();
        assert_eq!(
            out,
            ConnectOutcome {
                decision: FullSync { source: Local },
                rule: Rule::HistoryLocal
            }
        );
        pair.resync(out.decision);
        pair.assert_in_sync();
    }

    #[test]
    fn lifecycle_missed_resync_end_then_split_brain_is_detected() {
        // Why a new generation with a bitmap UUID already set moves the old current UUID to the history: B adopted
        // A's generation, A missed it, then both were promoted apart. DRBD would write on under the old UUID and
        // see "B is ahead" (bitmap-peer), overwriting A's new writes; here the split brain shows.
        let mut pair = Pair::running();
        pair.a.ids.new_current_uuid(FRESH[1]);
        pair.b.ids.finish_resync_as_target(&pair.a.ids);
        pair.a.ids.new_current_uuid(FRESH[2]);
        pair.b.ids.promote_disconnected(FRESH[3]);
        pair.b.role = Role::Primary;
        let out = pair.connect();
        assert_eq!(
            out,
            ConnectOutcome {
                decision: SplitBrain {
                    kind: NeedsFullSync
                },
                rule: Rule::HistoryBoth
            }
        );
    }

    /// A and B were in sync (A primary); the link broke; A wrote on, the cluster promoted B, which wrote too.
    fn partitioned_pair() -> Pair {
        let mut pair = Pair::running();
        pair.a.ids.new_current_uuid(FRESH[1]);
        pair.b.ids.promote_disconnected(FRESH[2]);
        pair.b.role = Role::Primary;
        pair
    }

    #[test]
    fn lifecycle_split_brain_is_resolvable() {
        let pair = partitioned_pair();
        assert!(
            pair.a.ids.primary_at_split(),
            "A was primary when the data diverged"
        );
        assert!(
            !pair.b.ids.primary_at_split(),
            "B was promoted later: the younger primary"
        );
        let out = pair.connect();
        assert_eq!(
            out,
            ConnectOutcome {
                decision: SplitBrain { kind: Resolvable },
                rule: Rule::BitmapBoth
            }
        );
    }

    struct PolicyCase {
        name: &'static str,
        roles: (Role, Role),
        policies: AfterSbPolicies,
        changes: ChangedBlocks,
        want: Resolution,
    }

    /// After-split-brain policies applied to [`partitioned_pair`].
    #[rustfmt::skip]
    fn policy_cases() -> Vec<PolicyCase> {
        use Role::{Primary as Pri, Secondary as Sec};
        let pol = |zero_primaries, one_primary, two_primaries| AfterSbPolicies {
            zero_primaries,
            one_primary,
            two_primaries,
        };
        let zero = |p0| pol(p0, AfterSb1Pri::Disconnect, AfterSb2Pri::Disconnect);
        let one = |p1, p0| pol(p0, p1, AfterSb2Pri::Disconnect);
        let two = |p2, p0| pol(p0, AfterSb1Pri::Disconnect, p2);
        let ch = |local, peer| ChangedBlocks { local, peer };
        let discard = |victim| Resolution::Discard { victim };
        let demote = |victim| Resolution::DemoteThenDiscard { victim };
        let disconnect = Resolution::Disconnect;
        // A (local, node 0) was primary at the split; B (peer, node 1) was promoted later.
        vec![
            // after-sb-0pri: both demoted since.
            PolicyCase { name: "0pri disconnect", roles: (Sec, Sec), policies: zero(AfterSb0Pri::Disconnect), changes: ch(5, 0), want: disconnect },
            PolicyCase { name: "0pri zero-changes: B wrote nothing", roles: (Sec, Sec), policies: zero(AfterSb0Pri::DiscardZeroChanges), changes: ch(5, 0), want: discard(Peer) },
            PolicyCase { name: "0pri zero-changes: A wrote nothing", roles: (Sec, Sec), policies: zero(AfterSb0Pri::DiscardZeroChanges), changes: ch(0, 7), want: discard(Local) },
            PolicyCase { name: "0pri zero-changes: both wrote", roles: (Sec, Sec), policies: zero(AfterSb0Pri::DiscardZeroChanges), changes: ch(5, 7), want: disconnect },
            PolicyCase { name: "0pri zero-changes: neither wrote, higher id yields", roles: (Sec, Sec), policies: zero(AfterSb0Pri::DiscardZeroChanges), changes: ch(0, 0), want: discard(Peer) },
            PolicyCase { name: "0pri least-changes", roles: (Sec, Sec), policies: zero(AfterSb0Pri::DiscardLeastChanges), changes: ch(5, 7), want: discard(Local) },
            PolicyCase { name: "0pri least-changes tie", roles: (Sec, Sec), policies: zero(AfterSb0Pri::DiscardLeastChanges), changes: ch(7, 7), want: discard(Peer) },
            PolicyCase { name: "0pri younger-primary: B", roles: (Sec, Sec), policies: zero(AfterSb0Pri::DiscardYoungerPrimary), changes: ch(1, 900), want: discard(Peer) },
            PolicyCase { name: "0pri older-primary: A", roles: (Sec, Sec), policies: zero(AfterSb0Pri::DiscardOlderPrimary), changes: ch(900, 1), want: discard(Local) },
            PolicyCase { name: "0pri discard-node 1", roles: (Sec, Sec), policies: zero(AfterSb0Pri::DiscardNode(1)), changes: ch(0, 9), want: discard(Peer) },
            PolicyCase { name: "0pri discard-node unknown", roles: (Sec, Sec), policies: zero(AfterSb0Pri::DiscardNode(7)), changes: ch(0, 9), want: disconnect },
            // after-sb-1pri: A demoted, B still primary.
            PolicyCase { name: "1pri disconnect", roles: (Sec, Pri), policies: one(AfterSb1Pri::Disconnect, AfterSb0Pri::DiscardZeroChanges), changes: ch(0, 9), want: disconnect },
            PolicyCase { name: "1pri discard-secondary", roles: (Sec, Pri), policies: one(AfterSb1Pri::DiscardSecondary, AfterSb0Pri::Disconnect), changes: ch(9, 1), want: discard(Local) },
            PolicyCase { name: "1pri consensus agrees", roles: (Sec, Pri), policies: one(AfterSb1Pri::Consensus, AfterSb0Pri::DiscardLeastChanges), changes: ch(1, 9), want: discard(Local) },
            PolicyCase { name: "1pri consensus refuses to hit the primary", roles: (Sec, Pri), policies: one(AfterSb1Pri::Consensus, AfterSb0Pri::DiscardLeastChanges), changes: ch(9, 1), want: disconnect },
            PolicyCase { name: "1pri call-pri-lost: younger primary demotes", roles: (Sec, Pri), policies: one(AfterSb1Pri::CallPriLostAfterSb, AfterSb0Pri::DiscardYoungerPrimary), changes: ch(0, 0), want: demote(Peer) },
            PolicyCase { name: "1pri call-pri-lost: older primary demotes", roles: (Pri, Sec), policies: one(AfterSb1Pri::CallPriLostAfterSb, AfterSb0Pri::DiscardOlderPrimary), changes: ch(0, 0), want: demote(Local) },
            PolicyCase { name: "1pri call-pri-lost: 0pri disconnects", roles: (Pri, Sec), policies: one(AfterSb1Pri::CallPriLostAfterSb, AfterSb0Pri::Disconnect), changes: ch(0, 0), want: disconnect },
            PolicyCase { name: "1pri call-pri-lost: secondary victim", roles: (Sec, Pri), policies: one(AfterSb1Pri::CallPriLostAfterSb, AfterSb0Pri::DiscardOlderPrimary), changes: ch(0, 0), want: discard(Local) },
            // after-sb-2pri: both still primary.
            PolicyCase { name: "2pri disconnect", roles: (Pri, Pri), policies: two(AfterSb2Pri::Disconnect, AfterSb0Pri::DiscardLeastChanges), changes: ch(1, 9), want: disconnect },
            PolicyCase { name: "2pri call-pri-lost: younger demotes", roles: (Pri, Pri), policies: two(AfterSb2Pri::CallPriLostAfterSb, AfterSb0Pri::DiscardYoungerPrimary), changes: ch(1, 9), want: demote(Peer) },
            PolicyCase { name: "2pri call-pri-lost: 0pri disconnects", roles: (Pri, Pri), policies: two(AfterSb2Pri::CallPriLostAfterSb, AfterSb0Pri::DiscardZeroChanges), changes: ch(1, 9), want: disconnect },
        ]
    }

    #[test]
    fn lifecycle_split_brain_policies() {
        for c in policy_cases() {
            let mut pair = partitioned_pair();
            (pair.a.role, pair.b.role) = c.roles;
            let got = resolve_split_brain(Resolvable, &c.policies, &pair.a, &pair.b, c.changes);
            assert_eq!(got, c.want, "{}", c.name);
            let mirrored = resolve_split_brain(
                Resolvable,
                &c.policies,
                &pair.b,
                &pair.a,
                c.changes.mirrored(),
            );
            assert_eq!(mirrored, got.mirrored(), "{}: peer side", c.name);
            // Carry the resolution out: a bitmap resync from the survivor, after which the pair is in sync.
            if let Some(decision) = got.decision(Resolvable) {
                assert_eq!(decision.sync_target(), got.victim());
                assert!(matches!(decision, BitmapResync { .. }), "{}", c.name);
                pair.resync(decision);
                pair.assert_in_sync();
            }
        }
    }

    #[test]
    fn lifecycle_discard_my_data() {
        let mut pair = partitioned_pair();
        pair.a.role = Role::Secondary;
        pair.b.role = Role::Secondary;
        let out = pair.connect();
        assert_eq!(out.decision, SplitBrain { kind: Resolvable });
        // The operator picks B as the victim; the policy would have picked A.
        pair.b.flags.discard_my_data = true;
        let policies = AfterSbPolicies {
            zero_primaries: AfterSb0Pri::DiscardOlderPrimary,
            ..Default::default()
        };
        let resolution = resolve_split_brain(
            Resolvable,
            &policies,
            &pair.a,
            &pair.b,
            ChangedBlocks::default(),
        );
        assert_eq!(resolution, Resolution::Discard { victim: Peer });
        let decision = resolution.decision(Resolvable);
        assert_eq!(
            decision,
            Some(BitmapResync { source: Local }),
            "from the bitmaps, not in full"
        );
        pair.resync(BitmapResync { source: Local });
        pair.assert_in_sync();

        // On both sides it is refused; on a primary victim, the victim demotes first.
        let both = pair_with_discard(true, true);
        let r = resolve_split_brain(
            Resolvable,
            &AfterSbPolicies::default(),
            &both.a,
            &both.b,
            ChangedBlocks::default(),
        );
        assert_eq!(r, Resolution::Disconnect);
        let mut primary_victim = pair_with_discard(true, false);
        primary_victim.a.role = Role::Primary;
        let r = resolve_split_brain(
            Resolvable,
            &AfterSbPolicies::default(),
            &primary_victim.a,
            &primary_victim.b,
            ChangedBlocks::default(),
        );
        assert_eq!(r, Resolution::DemoteThenDiscard { victim: Local });
    }

    fn pair_with_discard(a: bool, b: bool) -> Pair {
        let mut pair = partitioned_pair();
        pair.a.role = Role::Secondary;
        pair.b.role = Role::Secondary;
        pair.a.flags.discard_my_data = a;
        pair.b.flags.discard_my_data = b;
        pair
    }

    #[test]
    fn lifecycle_split_brain_needing_full_sync() {
        // Split brain from X, then A ran `new-current-uuid --clear-bitmap`: X now sits in A's history only.
        let mut pair = partitioned_pair();
        pair.a.ids.clear_bitmap(FRESH[3]);
        let out = pair.connect();
        assert_eq!(
            out,
            ConnectOutcome {
                decision: SplitBrain {
                    kind: NeedsFullSync
                },
                rule: Rule::HistoryBoth
            }
        );
        // No policy touches it...
        let eager = AfterSbPolicies {
            zero_primaries: AfterSb0Pri::DiscardLeastChanges,
            one_primary: AfterSb1Pri::DiscardSecondary,
            two_primaries: AfterSb2Pri::CallPriLostAfterSb,
        };
        let r = resolve_split_brain(
            NeedsFullSync,
            &eager,
            &pair.a,
            &pair.b,
            ChangedBlocks { local: 1, peer: 9 },
        );
        assert_eq!(r, Resolution::Disconnect);
        // ...but the operator may: a full sync from the survivor.
        pair.a.flags.discard_my_data = true;
        pair.a.role = Role::Secondary;
        let r = resolve_split_brain(
            NeedsFullSync,
            &eager,
            &pair.a,
            &pair.b,
            ChangedBlocks::default(),
        );
        assert_eq!(r, Resolution::Discard { victim: Local });
        let decision = r.decision(NeedsFullSync);
        assert_eq!(decision, Some(FullSync { source: Peer }));
        pair.resync(FullSync { source: Peer });
        pair.assert_in_sync();
    }

    #[test]
    fn lifecycle_unrelated_volumes() {
        let mut a = Pair::fresh();
        a.a.ids.force_primary(FRESH[0]);
        let mut other = Pair::fresh();
        other.b.ids.force_primary(FRESH[1]);
        let pair = Pair {
            a: a.a,
            b: Side {
                flags: Flags {
                    consistent: true,
                    ..Flags::default()
                },
                ..other.b
            },
        };
        assert_eq!(
            pair.connect(),
            ConnectOutcome {
                decision: Unrelated,
                rule: Rule::NothingInCommon
            }
        );
    }

    // ---- properties ----

    fn uuid() -> impl Strategy<Value = u64> {
        // Mostly a small pool so that UUIDs collide and every rule is reached; some fully random.
        prop_oneof![
            4 => prop::sample::select(vec![0, 1, JC, JC | P, X, X | P, Y, Y | P, Z, W]),
            1 => any::<u64>(),
        ]
    }

    fn generation_ids() -> impl Strategy<Value = GenerationIds> {
        (uuid(), uuid(), uuid(), uuid()).prop_map(|(c, b, h0, h1)| ids(c, b, [h0, h1]))
    }

    fn side() -> impl Strategy<Value = Side> {
        (generation_ids(), any::<[bool; 3]>(), any::<bool>(), 0u8..3).prop_map(
            |(ids, f, primary, node_id)| Side {
                ids,
                flags: Flags {
                    consistent: f[0],
                    crashed_primary: f[1],
                    discard_my_data: f[2],
                },
                role: if primary {
                    Role::Primary
                } else {
                    Role::Secondary
                },
                node_id,
            },
        )
    }

    fn policies() -> impl Strategy<Value = AfterSbPolicies> {
        let zero = prop_oneof![
            Just(AfterSb0Pri::Disconnect),
            Just(AfterSb0Pri::DiscardYoungerPrimary),
            Just(AfterSb0Pri::DiscardOlderPrimary),
            Just(AfterSb0Pri::DiscardZeroChanges),
            Just(AfterSb0Pri::DiscardLeastChanges),
            (0u8..3).prop_map(AfterSb0Pri::DiscardNode),
        ];
        let one = prop::sample::select(vec![
            AfterSb1Pri::Disconnect,
            AfterSb1Pri::Consensus,
            AfterSb1Pri::DiscardSecondary,
            AfterSb1Pri::CallPriLostAfterSb,
        ]);
        let two = prop::sample::select(vec![
            AfterSb2Pri::Disconnect,
            AfterSb2Pri::CallPriLostAfterSb,
        ]);
        (zero, one, two).prop_map(
            |(zero_primaries, one_primary, two_primaries)| AfterSbPolicies {
                zero_primaries,
                one_primary,
                two_primaries,
            },
        )
    }

    proptest! {
        #[test]
        fn connect_decision_is_mirrored(local in side(), peer in side()) {
            let from_local = connect_decision(&local, &peer);
            prop_assert_eq!(connect_decision(&peer, &local), from_local.mirrored());
        }

        #[test]
        fn resolution_is_mirrored(
            local in side(),
            peer in side(),
            policies in policies(),
            resolvable in any::<bool>(),
            changes in (0u64..4, 0u64..4),
        ) {
            let kind = if resolvable { Resolvable } else { NeedsFullSync };
            let changes = ChangedBlocks { local: changes.0, peer: changes.1 };
            let r = resolve_split_brain(kind, &policies, &local, &peer, changes);
            prop_assert_eq!(resolve_split_brain(kind, &policies, &peer, &local, changes.mirrored()), r.mirrored());
            // A primary is never resynced over without demoting first.
            if let Resolution::Discard { victim } = r {
                let role = if victim == Local { local.role } else { peer.role };
                prop_assert_eq!(role, Role::Secondary);
            }
        }

        #[test]
        fn a_new_generation_is_a_resync_source_toward_its_old_self(old in generation_ids(), fresh in any::<u64>()) {
            let mut new = old;
            new.new_current_uuid(fresh);
            let known = [old.current, old.bitmap, old.history[0], old.history[1]];
            prop_assume!(known.iter().all(|&k| generation(k) != generation(new.current)));
            let local = node(0, new);
            let past = node(1, old);
            let out = connect_decision(&local, &past);
            prop_assert_eq!(out.decision.sync_source(), Some(Local), "{} vs {}: {}", new, old, out);
        }

        #[test]
        fn resync_end_makes_tuples_equal(source in generation_ids(), target in generation_ids(), rotated in any::<bool>()) {
            prop_assume!(!source.is_just_created());
            let mut s = source;
            let mut t = target;
            s.finish_resync_as_source();
            t.finish_resync_as_target(if rotated { &s } else { &source });
            prop_assert_eq!(generation(t.current), generation(s.current));
            prop_assert_eq!(t.bitmap, 0);
            prop_assert_eq!(t.lineage(), s.lineage());
            let out = connect_decision(&node(0, s), &node(1, t));
            prop_assert_eq!(out, ConnectOutcome { decision: NoSync, rule: Rule::Equal });
        }
    }
}
