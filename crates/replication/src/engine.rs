//! The volume engine: one replicated volume on one node, driven by inputs and answering with outputs.
//!
//! The engine composes the decision modules — [`state`](crate::state) for the states and their rules,
//! [`generation`](crate::generation) for the connect decision, [`metadata`](crate::metadata),
//! [`bitmap`](crate::bitmap) and [`activity_log`] for what is on disk,
//! [`wire`] for the link and [`resync`](crate::resync) for the copying — into the behaviour of a
//! DRBD volume: application writes go to the local disk and to the peer, and complete per the protocol; the link
//! is authenticated, then the generation tuples decide whether and which way to resync; a lost peer leaves the
//! written blocks marked out of sync and starts a new generation before any further write is acknowledged.
//!
//! # I/O
//! The engine does no I/O of its own. The local disk is a [`Storage`] the driver hands in; its calls are
//! synchronous and the engine's decisions are made in the order the calls return, which keeps every rule of the
//! form "X is on disk before Y" a matter of statement order (the activity-log transaction before the data, the
//! superblock with a new generation before the write's acknowledgement). The driver (`twinsan-node`'s
//! `volume.rs`) keeps the engine behind a lock and runs it on whichever thread brings an input: a connection's
//! task for an application write, the blocking pool for flushes and reads that are not page-cache quick, the
//! link's receiver thread for frames, the timer thread for ticks, the admin thread for commands. The [`Storage`]
//! calls therefore run on that thread, under that lock. Everything else leaves as an [`Output`]: frames for the peer, completions for the
//! application, and requests to open or close the link. The clock and the randomness come in as arguments, so
//! a simulation can drive two engines deterministically.
//!
//! # Writes (Primary)
//! 1. [`Input::Write`]: refused unless [`VolumeState::may_write`]; queued while writes are suspended (fencing).
//! 2. The activity log admits the write: a transaction that adds its extent is written first (after the bitmap
//!    pages that changed since the last one, so an evicted extent's bits are on disk).
//! 3. The data goes to the local disk (and is flushed first if FUA), then to the peer as a `Data` frame in the
//!    current epoch. Without a peer to receive it, its blocks are marked out of sync instead.
//! 4. The write completes when the local write returned and the peer acknowledged it as the protocol asks (A:
//!    when sent; B: `RecvAck`; C: `WriteAck`). A peer that fails it (`NegAck`) or goes away leaves its blocks
//!    marked out of sync; then it completes, after the superblock with a new generation is on disk — unless this
//!    node holds no UpToDate copy of it (a diskless Primary, or one whose disk resyncs): then it fails.
//!
//! # Resync
//! Both sides send their bitmaps when a resync starts and each merges the other's (the union is what differs).
//! The SyncSource then pushes: [`ResyncPlan`] chooses the requests, the source reads and sends `ResyncData`, the
//! target writes it, clears the bits and answers `ResyncAck`. Application writes to the source during the resync
//! are replicated as usual and also marked in the plan, so a block written while it was being copied is sent
//! again. The source ends the resync when the plan is done and says so with its state; the target then takes
//! the source's generation. A read and its send happen in one step of the engine, and the link keeps order, so
//! resync data never overtakes a newer application write to the same block.
//!
//! # Disks
//! A disk that fails (or `volume detach`) is closed cleanly if it still takes metadata writes and released
//! ([`Storage::release`]). From then on the peer tracks what the disk misses: a Primary marks its writes when the
//! peer's disk is gone, and a node storing a diskless Primary's writes marks them too. `volume attach`
//! ([`AdminCommand::Attach`], or [`Engine::attach_disk`] with a disk opened again) reads the superblock, the
//! bitmap and the activity log as at start and, while connected, exchanges the generations again on the live
//! link: the connect decision then resyncs the union of both bitmaps, or everything for a new disk. A diskless
//! Primary attaches too, under a connected UpToDate peer: its disk becomes the peer's SyncTarget while it serves
//! (writes to both disks, reads from the peer until the resync ends), and is dropped again if the peer can no
//! longer serve it first.
//!
//! # Invariants
//! - No application write completes before the local write (if any) returned and the peer acknowledged it as the
//!   protocol asks, or its blocks are marked out of sync and any new generation it calls for is on disk.
//! - A data write to an extent not in the committed activity log never starts.
//! - Nothing from the peer is acted on before the handshake authenticated it; a frame that breaks the protocol
//!   closes the link.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::time::Duration;

use bytes::Bytes;

use crate::activity_log::{self, ActivityLog, AlDecision, TRANSACTION_BYTES};
use crate::bitmap::{DirtyBitmap, PAGE_BYTES};
use crate::generation::{
    connect_decision, resolve_split_brain, AfterSbPolicies, ChangedBlocks, ConnectDecision,
    Direction, Flags as GenFlags, GenerationIds, Role, Side,
};
use crate::metadata::{
    Flags, Layout, Placement, Superblock, ACTIVITY_LOG_SLOTS, RESERVATIONS_CAPACITY,
};
use crate::resync::{block_digest, Request, ResyncConfig, ResyncPlan, Verify};
use crate::state::{
    Action, Config as StateConfig, ConnState, DiskState, Event, FencingPolicy, ReplState,
    StateError, VolumeState,
};
use crate::version::{Feature, ProtocolVersion};
use crate::wire::{
    self, Handshake, HandshakeConfig, HandshakeStep, Message, ReplicationProtocol,
    ReplicationState as WireRepl, SharedSecret, NONCE_LEN,
};

/// The activity log's table: extents of 4 MiB that may be hot at once (1 GiB).
pub const AL_EXTENTS: u32 = 257;
/// A link that says nothing for this long is dead (a ping goes out every quarter second while idle, so a live
/// link is heard from several times a second and [`Input::PeerSilent`] can tell a silent one quickly).
pub const PEER_TIMEOUT: Duration = Duration::from_secs(4);
/// How often an idle link is pinged.
pub const PING_INTERVAL: Duration = Duration::from_millis(250);
/// Changed bitmap pages are written at least this often.
const BITMAP_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// The largest application write or read the engine takes (the SCSI layer's maximum transfer).
pub const MAX_REQUEST: u32 = 8 << 20;

/// The local disk of a volume: data area and metadata area. Calls are synchronous; an error is a disk failure.
pub trait Storage {
    /// Reads `buf.len()` bytes of data at `offset`.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes data at `offset`; durable only after [`Storage::flush`].
    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every data write that returned durable.
    fn flush(&mut self) -> io::Result<()>;
    /// Deallocates `len` bytes at `offset` so they read as zeros (a hole punched in a file, a discard that zeroes
    /// on a block device); durable only after [`Storage::flush`]. The default writes zeros.
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        write_zeroes(self, offset, len)
    }
    /// Reads from the metadata device at `offset` (the offsets of [`Layout`]).
    fn read_meta(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes to the metadata device at `offset`, durably (the call returns once it is on stable storage).
    fn write_meta(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// The engine detached the disk and will not call this storage again: let it go (close the files, end the
    /// claim on them) so the admin can repair or replace it. The default keeps it.
    fn release(&mut self) {}
    /// The sizes of the devices now, for `volume resize`: the backing device's size in bytes and the placement
    /// with the metadata device's size now. The default: this storage cannot grow.
    fn current_sizes(&mut self) -> io::Result<(u64, Placement)> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this storage cannot report its size",
        ))
    }
}

/// Writes `len` zero bytes at `offset` through [`Storage::write`], 1 MiB at a time: the default
/// [`Storage::discard`], and the fallback of a storage whose deallocation fails.
pub fn write_zeroes<S: Storage + ?Sized>(storage: &mut S, offset: u64, len: u64) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; len.min(CHUNK) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK);
        storage.write(offset + done, &zeros[..n as usize])?;
        done += n;
    }
    Ok(())
}

/// What the engine needs to know besides the disk.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The volume's name, for messages.
    pub volume: String,
    /// This node's id.
    pub node_id: u8,
    /// The peer's id.
    pub peer_node_id: u8,
    /// The peer's name, for messages.
    pub peer_name: String,
    /// [`wire::cluster_id`] of the cluster's name.
    pub cluster_id: u64,
    /// The replication link's secret.
    pub secret: SharedSecret,
    /// When a write completes.
    pub protocol: ReplicationProtocol,
    /// The fencing policy.
    pub fencing: FencingPolicy,
    /// The after-split-brain policies.
    pub policies: AfterSbPolicies,
    /// Resync pacing.
    pub resync: ResyncConfig,
    /// Checksum-based resync: the source sends a digest first and the data only where the target's differs.
    pub checksum_resync: bool,
}

/// Something for the engine to act on.
#[derive(Debug)]
pub enum Input {
    /// An application write (Primary only).
    Write {
        /// The caller's id, returned in [`Output::WriteDone`].
        id: u64,
        /// Byte offset.
        offset: u64,
        /// The data, shared with the caller (and, on the way to the peer, with the frame): never copied here.
        data: Bytes,
        /// Force unit access: durable on both nodes before completion.
        fua: bool,
    },
    /// An application discard (UNMAP, WRITE SAME with UNMAP), Primary only: the range reads as zeros after it,
    /// on both nodes, and its space is given back where the disk can. Completes like a write, with
    /// [`Output::WriteDone`].
    Discard {
        /// The caller's id, returned in [`Output::WriteDone`].
        id: u64,
        /// Byte offset.
        offset: u64,
        /// Bytes, at most [`MAX_REQUEST`].
        len: u64,
    },
    /// An application flush (SYNCHRONIZE CACHE): every completed write durable on both nodes.
    Flush {
        /// The caller's id, returned in [`Output::FlushDone`].
        id: u64,
    },
    /// An application read (Primary only).
    Read {
        /// The caller's id, returned in [`Output::ReadDone`].
        id: u64,
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u32,
    },
    /// An admin command.
    Admin {
        /// The caller's id, returned in [`Output::AdminDone`].
        id: u64,
        /// The command.
        command: AdminCommand,
    },
    /// A transport connection to the peer is open (either direction); the handshake starts.
    LinkUp {
        /// Identifies this connection in later inputs.
        link: u64,
        /// A fresh random challenge.
        nonce: [u8; NONCE_LEN],
    },
    /// A frame from the peer.
    Received {
        /// The connection it came on.
        link: u64,
        /// The frame.
        message: Message,
    },
    /// The connection is gone (closed by either side, or broken).
    LinkDown {
        /// The connection.
        link: u64,
        /// Why, for the log.
        reason: String,
    },
    /// The cluster has heard nothing from the peer on any cluster link for a while: if the replication link has
    /// been silent for at least `silence` too, the peer is gone and the link is dropped now rather than at
    /// [`PEER_TIMEOUT`]. A link that still hears from the peer is kept — the nodes can reach each other.
    PeerSilent {
        /// How long the replication link must have heard nothing.
        silence: Duration,
    },
    /// Time passes; the engine runs timers (pings, resync pacing, bitmap flushes).
    Tick,
    /// The lease the cluster grants this node now (SPEC invariant 8); see [`Lease`].
    Lease(Lease),
    /// The answer to [`Output::FencePeer`]: whether the cluster marked the peer Outdated.
    FenceResult {
        /// The peer is marked Outdated.
        outdated: bool,
    },
    /// New SCSI persistent reservation state for the volume's logical unit (Primary only): kept in this node's
    /// superblock, then sent to a connected peer; [`Output::ReservationsStored`] comes once the peer has it on
    /// disk too (or is gone: it then gets the state again when it resyncs from this node).
    StoreReservations {
        /// The caller's id, returned in [`Output::ReservationsStored`].
        id: u64,
        /// The encoded state, at most [`RESERVATIONS_CAPACITY`] bytes.
        data: Vec<u8>,
    },
    /// Fencing by the peer: the cluster asks this node to mark its data Outdated. Answered with
    /// [`Output::AdminDone`]; refused if this node is Primary, connected, or its data is not older.
    OutdateRequest {
        /// The caller's id.
        id: u64,
        /// The requester's generation identifiers, carried by the cluster.
        requester: GenerationIds,
        /// The requester's node id.
        requester_node_id: u8,
    },
}

/// The lease under which a Primary may complete I/O without its peer's acknowledgement (SPEC invariant 8).
///
/// A write the peer acknowledged is on both disks whatever happens next, so it needs no lease. Anything a
/// Primary completes *alone* — a write or flush while the peer is unreachable, a write under protocol A, a write
/// that was in flight when the link broke, and the new generation that makes this copy the newer one — is safe
/// only if the peer cannot have taken over meanwhile. The cluster knows that (its peer granted the lease
/// recently, or this node has been awake and alone long enough, or holds the witness vote) and says so with
/// [`Input::Lease`]; the engine checks the deadline against the `now` of the request itself, so a node that was
/// frozen finds its lease run out the moment it resumes, before it acknowledges anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// No cluster manager decides failover (manual mode, `twinsan volume primary` by hand): like DRBD, the
    /// Primary completes I/O alone whenever its state allows.
    NotEnforced,
    /// Valid before this engine time (a time at or before `now` is no lease at all).
    Until(Duration),
}

/// Admin commands (`twinsan volume ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// `volume up`: attach the disk and connect.
    Up,
    /// `volume down`: disconnect and detach cleanly.
    Down,
    /// `volume primary [--force]`.
    Primary {
        /// `--force`.
        force: bool,
    },
    /// `volume secondary`.
    Secondary,
    /// `volume connect [--discard-my-data]`.
    Connect {
        /// `--discard-my-data`.
        discard_my_data: bool,
    },
    /// `volume disconnect`.
    Disconnect,
    /// `volume verify`.
    Verify,
    /// `volume invalidate`.
    Invalidate,
    /// `volume new-current-uuid [--clear-bitmap]`.
    NewCurrentUuid {
        /// `--clear-bitmap`.
        clear_bitmap: bool,
    },
    /// `volume detach`: close the activity log, write the bitmap, and give the disk up (refused on a Primary
    /// without a connected UpToDate peer); the link stays.
    Detach,
    /// `volume attach` on the storage the engine has: read its superblock again and attach it (a node driver
    /// with a disk to open again uses [`Engine::attach_disk`]). Refused while a disk is attached, and on a Primary
    /// without a connected UpToDate peer (of protocol 5 or later) to resync it from.
    Attach,
    /// `volume resize [--size SIZE] [--assume-clean]`, after the backing devices grew on both nodes.
    Resize {
        /// `--size` in bytes: exactly this size, refused if a node cannot hold it.
        size: Option<u64>,
        /// `--assume-clean`: the new area is taken as equal on both nodes, not resynced.
        assume_clean: bool,
    },
}

/// Why an application request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IoFailure {
    /// The volume may not be written or read here now (not Primary, no UpToDate data in reach).
    #[error("{0}")]
    NotAvailable(String),
    /// The request is outside the volume or too large.
    #[error("{0}")]
    OutOfRange(String),
    /// The local disk failed and no peer holds the data.
    #[error("{0}")]
    Medium(String),
}

/// What the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Send this frame on connection `link`.
    Send {
        /// The connection.
        link: u64,
        /// The frame.
        message: Message,
    },
    /// Close connection `link` (a [`Input::LinkDown`] follows).
    Close {
        /// The connection.
        link: u64,
    },
    /// An application write completed.
    WriteDone {
        /// Its id.
        id: u64,
        /// Its result.
        result: Result<(), IoFailure>,
    },
    /// An application flush completed.
    FlushDone {
        /// Its id.
        id: u64,
        /// Its result.
        result: Result<(), IoFailure>,
    },
    /// An application read completed.
    ReadDone {
        /// Its id.
        id: u64,
        /// The data, or why not.
        result: Result<Vec<u8>, IoFailure>,
    },
    /// An admin command completed: a message for the admin, or why it was refused.
    AdminDone {
        /// Its id.
        id: u64,
        /// The result.
        result: Result<Option<String>, String>,
    },
    /// A [`Input::StoreReservations`] completed.
    ReservationsStored {
        /// Its id.
        id: u64,
        /// Its result.
        result: Result<(), IoFailure>,
    },
    /// The status changed (for `volume events`).
    Changed,
    /// The volume now holds `data_size` bytes (online resize): the driver makes the device that size.
    Resized {
        /// Bytes of data.
        data_size: u64,
    },
    /// A split brain was found on connect: report it (event, `split-brain` handler).
    SplitBrain,
    /// This Primary lost a split brain it cannot resolve by itself: run the `pri-lost-after-sb` handler (DRBD's
    /// `call-pri-lost-after-sb` policies).
    PriLostAfterSplitBrain,
    /// This Primary needed its lease and has none ([`Lease`]): I/O is held and nothing is acknowledged without
    /// the peer until [`Input::Lease`] renews it or the node is demoted (held requests then fail).
    LeaseLapsed,
    /// Resource-only fencing: ask the cluster to mark the peer Outdated (answer with [`Input::FenceResult`]).
    /// Writes stay suspended until then.
    FencePeer {
        /// This node's generation identifiers, for the peer's check that its data is older.
        generations: GenerationIds,
    },
    /// Something an admin should read in the log.
    Log {
        /// Error or warning (true), information (false).
        warn: bool,
        /// The text.
        text: String,
    },
}

/// The engine's view for `volume status`.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    /// This node's role.
    pub role: Role,
    /// The local disk.
    pub disk: DiskState,
    /// An unresolved split brain.
    pub split_brain: bool,
    /// Writes suspended (fencing, or no lease).
    pub suspended: bool,
    /// I/O held because this Primary has no lease from the cluster.
    pub lease_hold: bool,
    /// The link.
    pub connection: ConnState,
    /// The peer's role, if connected.
    pub peer_role: Option<Role>,
    /// The peer's disk.
    pub peer_disk: DiskState,
    /// The replication state.
    pub replication: ReplState,
    /// Percent done of a resync, in hundredths.
    pub done_hundredths: Option<u16>,
    /// Bytes known out of sync.
    pub out_of_sync_bytes: u64,
    /// Bytes the running (or last) resync sent as source.
    pub resync_sent_bytes: u64,
    /// Resync rate, KiB/s.
    pub rate_kib_s: u64,
    /// Seconds left.
    pub eta_s: Option<u64>,
    /// The generation identifiers.
    pub generations: GenerationIds,
    /// Bytes of data the volume holds (the size both nodes agreed on).
    pub data_size_bytes: u64,
    /// Bytes the last online verify found different (marked out of sync).
    pub verify_out_of_sync_bytes: u64,
    /// The replication protocol version agreed on with the peer, while a connection is authenticated.
    pub peer_protocol: Option<ProtocolVersion>,
    /// Why the link to the peer is not up: the last refusal or loss since it was last established (the peer's
    /// size, secret or data refused, the peer disconnected, the connection broke); `None` once connected.
    pub last_error: Option<String>,
}

/// An error that keeps the engine from starting on this disk.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Reading the metadata failed.
    #[error("reading the metadata of {volume}: {source}")]
    Io {
        /// The volume.
        volume: String,
        /// The error.
        source: io::Error,
    },
    /// The metadata is unusable.
    #[error("the metadata of {volume} is unusable: {why}; nothing was written")]
    Corrupt {
        /// The volume.
        volume: String,
        /// What is wrong.
        why: String,
    },
    /// The disk is sound, but the volume's state refuses it now (a Primary without a peer to resync it from).
    #[error("{0}")]
    Refused(StateError),
}

/// The link to the peer, once a transport connection exists.
struct Link {
    id: u64,
    phase: Phase,
    /// Last time anything arrived.
    heard: Duration,
    /// Last time anything was sent.
    spoke: Duration,
    ping_seq: u64,
    /// Why this connection failed is in `last_error` already (what follows only echoes it).
    failed: bool,
    /// The protocol version agreed on with the peer, once authenticated.
    version: Option<ProtocolVersion>,
    /// The last `Uuids` the peer sent while connected: the first part of a generation exchange the peer starts
    /// on a live link (its disk attached), completed by the `Sizes` and `State` that follow it.
    peer_uuids: Option<(GenerationIds, GenFlags, u64)>,
}

enum Phase {
    /// Authenticating.
    Handshake(Option<Handshake>),
    /// Authenticated; waiting for the peer's generation tuple, size and state.
    Exchange(PeerInfo),
    /// Connected: the state machine knows.
    Up,
    /// Connected, and the generations are compared again because a disk attached on one side: writes, reads and
    /// acknowledgements go on as when `Up` (a diskless Primary keeps serving through it); the peer's tuple, size
    /// and state are collected as in `Exchange`, and the connect decision then picks the resync.
    Reexchange(PeerInfo),
}

impl Phase {
    /// Data, acknowledgements and state changes flow.
    fn is_up(&self) -> bool {
        matches!(self, Phase::Up | Phase::Reexchange(_))
    }
}

#[derive(Clone, Copy, Default)]
struct PeerInfo {
    uuids: Option<(GenerationIds, GenFlags, u64)>,
    size: Option<u64>,
    state: Option<(Role, DiskState)>,
}

/// What a frame did to a generation exchange.
enum Collected {
    /// It was the last part: the peer's tuple, size and state.
    Complete((GenerationIds, GenFlags, u64), u64, (Role, DiskState)),
    /// A part, more to come.
    Part,
    /// Not part of the exchange: handed back.
    Other(Message),
}

impl PeerInfo {
    /// Takes `message` if it is part of the peer's side of the exchange (`Uuids`, `Sizes`, `State`).
    fn collect(&mut self, message: Message) -> Collected {
        match message {
            Message::Uuids {
                ids,
                flags,
                bitmap_weight,
                ..
            } => self.uuids = Some((ids, flags, bitmap_weight)),
            Message::Sizes { data_size, .. } => self.size = Some(data_size),
            Message::State { role, disk, .. } => self.state = Some((role, map_disk(disk))),
            other => return Collected::Other(other),
        }
        match *self {
            PeerInfo {
                uuids: Some(u),
                size: Some(size),
                state: Some(st),
            } => Collected::Complete(u, size, st),
            _ => Collected::Part,
        }
    }
}

/// An application write waiting for its peer acknowledgement.
struct PendingWrite {
    id: Option<u64>,
    offset: u64,
    len: u64,
    /// Part of the activity log (a local write was admitted).
    al: bool,
    /// On this node's UpToDate disk already: if the peer never acknowledges it, the write still completes (its
    /// blocks marked out of sync). Without it (a diskless Primary, or one whose disk is still being resynced)
    /// the peer's acknowledgement is the only proof the data is anywhere, and a write that loses it fails.
    stored_here: bool,
    /// When its frame was handed to the link (engine time), for the [`AckObserver`].
    sent: Duration,
}

/// Told how long each replicated write waited for its acknowledgement (protocol C's `WriteAck`, B's `RecvAck`),
/// from the moment its frame was handed to the link: the driver's metrics. It runs inside `handle`, so it must
/// be quick (a counter or a histogram bucket).
pub type AckObserver = Box<dyn Fn(Duration) + Send>;

/// A write sent under protocol A or B, kept until the barrier of its epoch is acknowledged (the peer has it
/// on its disk): DRBD's transfer log. If the link breaks first, its blocks are marked out of sync.
struct TlEntry {
    epoch: u64,
    offset: u64,
    len: u64,
    /// It holds a reference in the activity log until then.
    al: bool,
}

/// What an application write puts on the disk: data, or zeros by deallocation (a discard).
enum Body {
    Data(Bytes),
    Discard(u64),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Data(data) => data.len() as u64,
            Body::Discard(len) => *len,
        }
    }

    /// The input that carries this write again (queued while writes are suspended or the activity log is full).
    fn into_input(self, id: u64, offset: u64, fua: bool) -> Input {
        match self {
            Body::Data(data) => Input::Write {
                id,
                offset,
                data,
                fua,
            },
            Body::Discard(len) => Input::Discard { id, offset, len },
        }
    }
}

/// A flush waiting for its barrier acknowledgement.
struct PendingFlush {
    id: u64,
    epoch: u64,
    /// This node's UpToDate disk was flushed: the flush holds even if the peer's answer never comes.
    stored_here: bool,
}

/// The resync that runs, seen from this node.
enum Resync {
    /// Waiting for the peer's bitmap before starting.
    AwaitBitmap { source: Direction },
    /// This node is the source.
    Source {
        plan: Box<ResyncPlan>,
        requests: BTreeMap<u64, Request>,
    },
    /// This node is the target: the bits clear as data arrives.
    Target { total: u64 },
}

/// Online verify, as VerifyS: ranges of [`VERIFY_REQUEST`] bytes, compared by one digest per range; a range
/// that differs is marked out of sync as a whole (a later resync copies it), never repaired here.
struct Verifying {
    verify: Verify,
    requests: BTreeMap<u64, Request>,
}

/// Bytes of one verify request: the granularity at which a difference is marked.
pub const VERIFY_REQUEST: u64 = 64 << 10;

/// A `volume resize` waiting for the peer.
struct PendingResize {
    /// The admin command's id.
    id: u64,
    assume_clean: bool,
}

/// One replicated volume on one node.
pub struct Engine<S: Storage> {
    cfg: EngineConfig,
    scfg: StateConfig,
    storage: S,
    layout: Layout,
    sb: Superblock,
    gen: GenerationIds,
    state: VolumeState,
    bitmap: DirtyBitmap,
    al: ActivityLog,
    /// The next activity-log ring slot to write (transactions say their own).
    link: Option<Link>,
    peer_gen: Option<GenerationIds>,
    /// While a disk attached under a Primary resyncs from the peer, the generation the Primary serves (the
    /// peer's; `gen` is the disk's until the resync ends): it becomes `gen` again if the disk is dropped, so a
    /// reconnect finds the generation it served (`check_diskless_primary_peer`).
    served: Option<GenerationIds>,
    next_seq: u64,
    epoch: u64,
    writes_in_epoch: u32,
    pending: HashMap<u64, PendingWrite>,
    transfer_log: VecDeque<TlEntry>,
    flushes: Vec<PendingFlush>,
    peer_reads: HashMap<u64, u64>,
    suspended_queue: VecDeque<Input>,
    /// The cluster's lease (SPEC invariant 8).
    lease: Lease,
    /// Completions of requests that finished while I/O is held for the lease: delivered once the lease is back,
    /// failed if the node is demoted first.
    held: Vec<Output>,
    al_waiting: VecDeque<Input>,
    resync: Option<Resync>,
    resync_sent: u64,
    verifying: Option<Verifying>,
    /// Bytes the last online verify found different.
    verify_out_of_sync: u64,
    /// Why the link is not up (see [`Status::last_error`]).
    last_error: Option<String>,
    bitmap_in: Option<DirtyBitmap>,
    pending_promotion: Option<u64>,
    /// Reservation states sent to the peer and not yet acknowledged: sequence number → caller's id.
    pending_reservations: BTreeMap<u64, u64>,
    /// `volume resize` run here, waiting for the peer's [`Message::ResizeReply`].
    resizing: Option<PendingResize>,
    attached: bool,
    ack_observer: Option<AckObserver>,
    now: Duration,
    last_bitmap_flush: Duration,
    rng: u64,
    out: Vec<Output>,
}

impl<S: Storage> fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Engine({}: {})", self.cfg.volume, self.state)
    }
}

fn io_err(volume: &str) -> impl Fn(io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        volume: volume.to_owned(),
        source,
    }
}

impl<S: Storage> Engine<S> {
    /// Opens the volume on `storage` whose metadata `sb` was read with `layout` (the driver read and checked
    /// both superblock slots), attaches the disk and replays the activity log if the last run did not close it.
    /// `seed` seeds the generator of new generation UUIDs; `now` is the engine's clock.
    pub fn open(
        cfg: EngineConfig,
        storage: S,
        layout: Layout,
        sb: Superblock,
        seed: u64,
        now: Duration,
    ) -> Result<Self, OpenError> {
        let scfg = StateConfig {
            volume: cfg.volume.clone(),
            fencing: cfg.fencing,
        };
        let gen = GenerationIds {
            current: sb.current_uuid,
            bitmap: sb.bitmap_uuid,
            history: sb.history_uuids,
        };
        let data_size = sb.data_size;
        let al =
            ActivityLog::new(AL_EXTENTS, ACTIVITY_LOG_SLOTS).map_err(|e| OpenError::Corrupt {
                volume: cfg.volume.clone(),
                why: e.to_string(),
            })?;
        let mut engine = Engine {
            scfg,
            storage,
            layout,
            gen,
            state: VolumeState::new(),
            bitmap: DirtyBitmap::new(data_size),
            al,
            link: None,
            peer_gen: None,
            served: None,
            next_seq: 1,
            epoch: 1,
            writes_in_epoch: 0,
            pending: HashMap::new(),
            transfer_log: VecDeque::new(),
            flushes: Vec::new(),
            peer_reads: HashMap::new(),
            suspended_queue: VecDeque::new(),
            lease: Lease::NotEnforced,
            held: Vec::new(),
            al_waiting: VecDeque::new(),
            resync: None,
            resync_sent: 0,
            verifying: None,
            verify_out_of_sync: 0,
            last_error: None,
            bitmap_in: None,
            pending_promotion: None,
            pending_reservations: BTreeMap::new(),
            resizing: None,
            attached: false,
            ack_observer: None,
            now,
            last_bitmap_flush: now,
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
            out: Vec::new(),
            sb,
            cfg,
        };
        engine.attach()?;
        Ok(engine)
    }

    /// Reads the bitmap and the activity log, and attaches the disk.
    fn attach(&mut self) -> Result<(), OpenError> {
        let volume = self.cfg.volume.clone();
        let data_size = self.sb.data_size;
        let mut bytes = vec![0u8; DirtyBitmap::image_bytes(data_size)];
        self.storage
            .read_meta(self.layout.bitmap.offset, &mut bytes)
            .map_err(io_err(&volume))?;
        if let Placement::External { .. } = self.layout.placement {
            crate::resize::clear_bits_beyond(data_size, &mut bytes);
        }
        self.bitmap =
            DirtyBitmap::from_pages(data_size, &bytes).map_err(|e| OpenError::Corrupt {
                volume: volume.clone(),
                why: format!("bitmap: {e}"),
            })?;
        let mut slots = vec![[0u8; TRANSACTION_BYTES]; ACTIVITY_LOG_SLOTS as usize];
        for (i, slot) in slots.iter_mut().enumerate() {
            let region =
                self.layout
                    .activity_log_slot(i as u32)
                    .ok_or_else(|| OpenError::Corrupt {
                        volume: volume.clone(),
                        why: "activity log layout".into(),
                    })?;
            self.storage
                .read_meta(region.offset, slot)
                .map_err(io_err(&volume))?;
        }
        let recovered = activity_log::recover(&slots).map_err(|e| OpenError::Corrupt {
            volume: volume.clone(),
            why: format!("activity log: {e}"),
        })?;
        if !self.sb.flags.al_clean {
            // Writes to these extents may have reached one disk only: resync them.
            let ranges: Vec<_> = recovered.byte_ranges(data_size).collect();
            for &(offset, len) in &ranges {
                let _ = self.bitmap.set_range(offset, len);
            }
            if !ranges.is_empty() {
                self.log(
                    false,
                    format!(
                        "{volume}: the last run did not close the activity log; {} extents of 4 MiB marked out of sync",
                        ranges.len()
                    ),
                );
            }
        }
        self.al = ActivityLog::resume(AL_EXTENTS, ACTIVITY_LOG_SLOTS, recovered.next_transaction)
            .map_err(|e| OpenError::Corrupt {
            volume: volume.clone(),
            why: format!("activity log: {e}"),
        })?;
        self.flush_bitmap_all().map_err(io_err(&volume))?;
        let flags = self.sb.flags;
        self.log(
            false,
            format!(
                "{volume}: attaching the disk: generations {}, flags {flags:?}, superblock sequence {}",
                self.gen, self.sb.sequence
            ),
        );
        self.event(Event::AttachStarted);
        let actions = self.state.handle(Event::Attach { flags }, &self.scfg);
        match actions {
            Ok(actions) => self.run_actions(actions),
            Err(e) => return Err(OpenError::Refused(e)),
        }
        // From now on the log is in use until a clean shutdown.
        self.attached = true;
        self.sb.flags.al_clean = false;
        self.write_superblock();
        Ok(())
    }

    /// Takes the outputs produced so far.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// Moves the outputs produced so far into `spare`, an empty vector the caller keeps: the engine gets
    /// `spare`'s buffer in exchange, so neither side allocates a list per call (the driver's data path).
    pub fn swap_outputs(&mut self, spare: &mut Vec<Output>) {
        debug_assert!(spare.is_empty(), "outputs not carried out would be lost");
        spare.clear();
        std::mem::swap(&mut self.out, spare);
    }

    /// The state, for status and tests.
    pub fn state(&self) -> &VolumeState {
        &self.state
    }

    /// The generation identifiers.
    pub fn generations(&self) -> GenerationIds {
        self.gen
    }

    /// The volume's size in bytes.
    pub fn data_size(&self) -> u64 {
        self.sb.data_size
    }

    /// The SCSI persistent reservation state kept with this copy (empty: none).
    pub fn reservations(&self) -> &[u8] {
        &self.sb.reservations
    }

    /// Sets the reservation state of this copy alone, without the peer: for the node daemon at start, which
    /// drops the state a power loss ends (registrations made without APTPL) before any link is up.
    pub fn set_local_reservations(&mut self, data: Vec<u8>) -> Result<(), IoFailure> {
        self.check_reservations_len(data.len())?;
        if self.sb.reservations != data {
            self.sb.reservations = data;
            self.write_superblock();
        }
        Ok(())
    }

    /// True while a disk is attached (the storage is in use).
    pub fn has_disk(&self) -> bool {
        self.attached
    }

    /// The volume's UUID.
    pub fn volume_uuid(&self) -> u128 {
        self.sb.volume_uuid
    }

    /// Reports every acknowledged replicated write's wait to `observer` from now on.
    pub fn observe_acks(&mut self, observer: AckObserver) {
        self.ack_observer = Some(observer);
    }

    /// True if application reads may go straight to the local disk (Primary on UpToDate data).
    pub fn reads_local(&self) -> bool {
        self.state.read_from() == Some(Direction::Local)
    }

    /// True while the engine wants a connection to the peer.
    pub fn wants_link(&self) -> bool {
        // A Primary holding I/O for its lease does not connect: its peer may have taken over, and two Primaries
        // would only refuse each other. It connects once the cluster renews the lease or demotes it.
        matches!(
            self.state.peer().conn,
            ConnState::Connecting | ConnState::Connected
        ) && !self.state.lease_hold()
    }

    /// The id of the current connection, if any.
    pub fn link_id(&self) -> Option<u64> {
        self.link.as_ref().map(|l| l.id)
    }

    /// The storage (for tests and the simulation).
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The storage, mutably (for the simulation's fault injection).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Whether the peer on the current connection understands `feature`: false without an authenticated
    /// connection, and for a feature newer than the version agreed on (the peer runs an older release).
    pub fn peer_speaks(&self, feature: Feature) -> bool {
        self.peer_protocol()
            .is_some_and(|version| version.speaks(feature))
    }

    /// The protocol version agreed on with the peer, while a connection is authenticated.
    pub fn peer_protocol(&self) -> Option<ProtocolVersion> {
        self.link.as_ref().and_then(|l| l.version)
    }

    /// The status now.
    pub fn status(&self) -> Status {
        let peer = self.state.peer();
        let (mut done, mut rate, mut eta) = (None, 0, None);
        let mut oos = self.bitmap.dirty_bytes();
        match &self.resync {
            Some(Resync::Source { plan, .. }) => {
                let p = plan.progress(self.now);
                done = Some(p.percent_done.hundredths());
                rate = p.rate_kib_s;
                eta = p.eta.map(|d| d.as_secs());
                oos = plan.bitmap().dirty_bytes();
            }
            Some(Resync::Target { total }) => {
                let left = self.bitmap.dirty_bytes();
                done = Some(
                    crate::resync::PercentDone::of(total.saturating_sub(left), *total).hundredths(),
                );
            }
            Some(Resync::AwaitBitmap { .. }) => done = Some(0),
            None => {
                if let Some(v) = &self.verifying {
                    let p = v.verify.progress(self.now);
                    done = Some(p.percent_done.hundredths());
                    rate = p.rate_kib_s;
                    eta = p.eta.map(|d| d.as_secs());
                }
            }
        }
        Status {
            role: self.state.role(),
            disk: self.state.disk(),
            split_brain: self.state.split_brain(),
            suspended: self.state.io_suspended(),
            lease_hold: self.state.lease_hold(),
            connection: peer.conn,
            peer_role: peer.role,
            peer_disk: peer.disk,
            replication: peer.repl,
            done_hundredths: done,
            out_of_sync_bytes: oos,
            resync_sent_bytes: self.resync_sent,
            rate_kib_s: rate,
            eta_s: eta,
            generations: self.gen,
            data_size_bytes: self.sb.data_size,
            verify_out_of_sync_bytes: self.verify_out_of_sync,
            peer_protocol: self.peer_protocol(),
            last_error: self.last_error.clone(),
        }
    }

    /// Handles one input at time `now`.
    pub fn handle(&mut self, input: Input, now: Duration) {
        self.now = self.now.max(now);
        match input {
            Input::Write {
                id,
                offset,
                data,
                fua,
            } => self.app_write(id, offset, Body::Data(data), fua),
            Input::Discard { id, offset, len } => {
                self.app_write(id, offset, Body::Discard(len), false)
            }
            Input::Flush { id } => self.app_flush(id),
            Input::Read { id, offset, len } => self.app_read(id, offset, len),
            Input::Admin { id, command } => self.admin(id, command),
            Input::LinkUp { link, nonce } => self.link_up(link, nonce),
            Input::Received { link, message } => {
                if self.link.as_ref().is_some_and(|l| l.id == link) {
                    if let Some(l) = self.link.as_mut() {
                        l.heard = self.now;
                    }
                    self.received(message);
                }
            }
            Input::LinkDown { link, reason } => {
                if self.link.as_ref().is_some_and(|l| l.id == link) {
                    self.link_down(&reason);
                }
            }
            Input::StoreReservations { id, data } => self.store_reservations(id, data),
            Input::Tick => self.tick(),
            Input::Lease(lease) => {
                self.lease = lease;
                if self.state.lease_hold() && self.lease_valid() {
                    self.log(
                        false,
                        format!(
                            "{}: the cluster renewed this Primary's lease: held I/O goes on",
                            self.cfg.volume
                        ),
                    );
                    self.event(Event::LeaseRenewed);
                }
            }
            Input::PeerSilent { silence } => {
                let now = self.now;
                let silent = self
                    .link
                    .as_ref()
                    .filter(|l| now.saturating_sub(l.heard) >= silence)
                    .map(|l| l.id);
                if let Some(id) = silent {
                    let text = format!(
                        "{}: the peer {} is silent on every cluster link and on the replication link for {:?}: \
                         it is gone",
                        self.cfg.volume, self.cfg.peer_name, silence
                    );
                    self.drop_dead_link(id, text);
                }
            }
            Input::FenceResult { outdated } => {
                self.event(if outdated {
                    Event::PeerOutdatedAck
                } else {
                    Event::FenceFailed
                });
                self.promotion_settled();
                self.out.push(Output::Changed);
            }
            Input::OutdateRequest {
                id,
                requester,
                requester_node_id,
            } => {
                let local = self.local_side(false);
                let peer = Side {
                    ids: requester,
                    flags: GenFlags {
                        consistent: true,
                        crashed_primary: false,
                        discard_my_data: false,
                    },
                    role: Role::Primary,
                    node_id: requester_node_id,
                };
                let outcome = Some(connect_decision(&local, &peer));
                let result = self.try_event(Event::OutdateRequest { outcome });
                self.out.push(Output::AdminDone { id, result });
                self.out.push(Output::Changed);
            }
        }
    }

    // ----- application I/O -----

    fn check_range(&self, offset: u64, len: u64) -> Result<(), IoFailure> {
        if len > u64::from(MAX_REQUEST)
            || offset
                .checked_add(len)
                .is_none_or(|end| end > self.sb.data_size)
        {
            return Err(IoFailure::OutOfRange(format!(
                "{}: {len} bytes at {offset} are outside the volume of {} bytes or larger than {MAX_REQUEST}",
                self.cfg.volume, self.sb.data_size
            )));
        }
        Ok(())
    }

    fn not_available(&self) -> IoFailure {
        IoFailure::NotAvailable(format!(
            "{} cannot serve I/O here: {}",
            self.cfg.volume, self.state
        ))
    }

    fn app_write(&mut self, id: u64, offset: u64, body: Body, fua: bool) {
        let len = body.len();
        if let Err(e) = self.check_range(offset, len) {
            return self.out.push(Output::WriteDone { id, result: Err(e) });
        }
        // Completed without the peer's acknowledgement: only under the lease.
        let alone = !self.peer_stores_writes() || self.cfg.protocol == ReplicationProtocol::A;
        if alone {
            self.alone_allowed();
        }
        if self.state.io_suspended() {
            self.suspended_queue
                .push_back(body.into_input(id, offset, fua));
            return;
        }
        if !self.state.may_write() {
            let e = self.not_available();
            return self.out.push(Output::WriteDone { id, result: Err(e) });
        }
        let targets = self.state.write_targets();
        let mut al = false;
        if targets.local {
            match self.al.begin_write(offset, len) {
                Ok(AlDecision::Proceed) => al = true,
                Ok(AlDecision::CommitFirst(tx)) => {
                    if !self.commit_al(&tx) {
                        return self.fail_local_then_retry(body.into_input(id, offset, fua));
                    }
                    al = true;
                }
                Ok(AlDecision::AfterCommit(_)) => al = true,
                Ok(AlDecision::Wait) => {
                    self.al_waiting.push_back(body.into_input(id, offset, fua));
                    return;
                }
                Err(e) => {
                    return self.out.push(Output::WriteDone {
                        id,
                        result: Err(IoFailure::OutOfRange(e.to_string())),
                    })
                }
            }
            let mut ok = match &body {
                Body::Data(data) => self.storage.write(offset, data),
                Body::Discard(len) => self.storage.discard(offset, *len),
            }
            .is_ok();
            if ok && fua {
                ok = self.storage.flush().is_ok();
            }
            if !ok {
                let _ = self.al.end_write(offset, len);
                return self.fail_local_then_retry(body.into_input(id, offset, fua));
            }
            if let Some(Resync::Source { plan, .. }) = &mut self.resync {
                let _ = plan.app_write(offset, len);
            }
        } else if self.state.disk().is_attached() {
            // A disk attached under this Primary, before its resync starts: it lacks this write, and the bitmap
            // it sends when the resync starts says so.
            let _ = self.bitmap.set_range(offset, len);
        }
        let link = self.connected_link();
        if targets.peer && link.is_some() {
            let seq = self.next_seq;
            self.next_seq += 1;
            let stored_here = targets.local && self.state.disk() == DiskState::UpToDate;
            // Protocols A and B acknowledge before the peer's disk has the write because this node's has it. A
            // Primary without UpToDate data of its own (diskless, or its disk resyncing) has only the peer's:
            // its writes go as protocol C, whatever the volume's protocol.
            let protocol = if stored_here {
                self.cfg.protocol
            } else {
                ReplicationProtocol::C
            };
            let epoch = self.epoch;
            self.send(match body {
                Body::Data(data) => Message::Data {
                    seq,
                    offset,
                    epoch,
                    fua,
                    flush: false,
                    protocol,
                    data,
                },
                Body::Discard(len) => Message::WriteZeroes {
                    seq,
                    offset,
                    // check_range kept it within MAX_REQUEST.
                    len: len as u32,
                    epoch,
                    unmap: true,
                    protocol,
                },
            });
            self.writes_in_epoch += 1;
            if protocol != ReplicationProtocol::C {
                // Acknowledged before the peer's disk has it: kept in the transfer log (with its activity-log
                // reference) until the barrier of its epoch comes back.
                self.transfer_log.push_back(TlEntry {
                    epoch: self.epoch,
                    offset,
                    len,
                    al,
                });
            }
            if protocol == ReplicationProtocol::A {
                self.out.push(Output::WriteDone { id, result: Ok(()) });
            } else {
                // C: until WriteAck; B: until RecvAck.
                let al = al && protocol == ReplicationProtocol::C;
                self.pending.insert(
                    seq,
                    PendingWrite {
                        id: Some(id),
                        offset,
                        len,
                        al,
                        stored_here,
                        sent: self.now,
                    },
                );
            }
        } else if !targets.local {
            // Neither disk took it (no link that carries writes): the write did not happen anywhere.
            self.finish_write(None, offset, len, al);
            let e = self.not_available();
            self.out.push(Output::WriteDone { id, result: Err(e) });
        } else {
            // Nobody else has these blocks now.
            self.mark_out_of_sync(offset, len);
            self.finish_write(None, offset, len, al);
            self.out.push(Output::WriteDone { id, result: Ok(()) });
        }
    }

    /// The local disk failed under an application request: detach it, then try the request again (served by
    /// the peer if there is one with UpToDate data).
    fn fail_local_then_retry(&mut self, input: Input) {
        self.log(
            true,
            format!(
                "{}: I/O error on the local disk; detaching it",
                self.cfg.volume
            ),
        );
        self.event(Event::DiskFailed);
        let now = self.now;
        if let Input::Write { id, .. } | Input::Discard { id, .. } | Input::Read { id, .. } = &input
        {
            if !self.state.may_write() && self.state.read_from().is_none() {
                let e = IoFailure::Medium(format!(
                    "{}: the local disk failed and no connected peer has UpToDate data",
                    self.cfg.volume
                ));
                match input {
                    Input::Write { .. } | Input::Discard { .. } => {
                        self.out.push(Output::WriteDone {
                            id: *id,
                            result: Err(e),
                        })
                    }
                    _ => self.out.push(Output::ReadDone {
                        id: *id,
                        result: Err(e),
                    }),
                }
                return;
            }
        }
        self.handle(input, now);
    }

    fn finish_write(&mut self, _id: Option<u64>, offset: u64, len: u64, al: bool) {
        if al && matches!(self.al.end_write(offset, len), Ok(true)) {
            // An extent became idle: writes waiting for room in the log may go now.
            let waiting: Vec<_> = self.al_waiting.drain(..).collect();
            let now = self.now;
            for input in waiting {
                self.handle(input, now);
            }
        }
    }

    fn commit_al(&mut self, tx: &activity_log::Transaction) -> bool {
        // The bits of extents this transaction evicts must be on disk first.
        if self.flush_bitmap().is_err() {
            return false;
        }
        let Some(region) = self.layout.activity_log_slot(tx.ring_slot() as u32) else {
            return false;
        };
        if self
            .storage
            .write_meta(region.offset, &tx.encode())
            .is_err()
        {
            return false;
        }
        match self.al.committed(tx.number()) {
            Ok(None) => true,
            Ok(Some(next)) => self.commit_al(&next),
            Err(_) => false,
        }
    }

    /// Why a request that only the peer held failed when the link went before its acknowledgement.
    fn lost_before_acknowledged(&self, what: &str) -> IoFailure {
        IoFailure::NotAvailable(format!(
            "{}: the link to {} was lost before it acknowledged the {what}, and this node holds no UpToDate copy \
             of its own: the {what} failed (it may or may not have reached {})",
            self.cfg.volume, self.cfg.peer_name, self.cfg.peer_name
        ))
    }

    fn app_flush(&mut self, id: u64) {
        if !self.peer_stores_writes() {
            self.alone_allowed();
        }
        if self.state.lease_hold() {
            self.suspended_queue.push_back(Input::Flush { id });
            return;
        }
        if self.attached && self.state.disk().is_attached() && self.storage.flush().is_err() {
            self.log(
                true,
                format!(
                    "{}: I/O error flushing the local disk; detaching it",
                    self.cfg.volume
                ),
            );
            self.event(Event::DiskFailed);
        }
        if self.state.read_from().is_none() && self.state.role() == Role::Primary {
            // Neither the local disk nor a connected UpToDate peer holds the data: nothing is durable.
            let e = IoFailure::Medium(format!(
                "{}: cannot flush: no UpToDate copy is reachable",
                self.cfg.volume
            ));
            return self.out.push(Output::FlushDone { id, result: Err(e) });
        }
        if self.connected_link().is_some() && self.state.peer().disk.is_attached() {
            let epoch = self.epoch;
            self.send(Message::Barrier { epoch });
            self.epoch += 1;
            self.writes_in_epoch = 0;
            let stored_here = self.attached && self.state.disk() == DiskState::UpToDate;
            self.flushes.push(PendingFlush {
                id,
                epoch,
                stored_here,
            });
        } else {
            self.out.push(Output::FlushDone { id, result: Ok(()) });
        }
    }

    fn app_read(&mut self, id: u64, offset: u64, len: u32) {
        if let Err(e) = self.check_range(offset, u64::from(len)) {
            return self.out.push(Output::ReadDone { id, result: Err(e) });
        }
        // A Primary cut off from its peer answers reads only under its lease: after a takeover the peer's copy
        // is the newer one.
        if !self.peer_stores_writes() {
            self.alone_allowed();
        }
        if self.state.lease_hold() {
            self.suspended_queue
                .push_back(Input::Read { id, offset, len });
            return;
        }
        match self.state.read_from() {
            Some(Direction::Local) => {
                let mut buf = vec![0u8; len as usize];
                if self.storage.read(offset, &mut buf).is_ok() {
                    self.out.push(Output::ReadDone {
                        id,
                        result: Ok(buf),
                    });
                } else {
                    self.fail_local_then_retry(Input::Read { id, offset, len });
                }
            }
            Some(Direction::Peer) if self.connected_link().is_some() => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.peer_reads.insert(seq, id);
                self.send(Message::ReadRequest { seq, offset, len });
            }
            _ => {
                let e = self.not_available();
                self.out.push(Output::ReadDone { id, result: Err(e) });
            }
        }
    }

    fn store_reservations(&mut self, id: u64, data: Vec<u8>) {
        if let Err(e) = self.check_reservations_len(data.len()) {
            return self
                .out
                .push(Output::ReservationsStored { id, result: Err(e) });
        }
        if !self.peer_stores_writes() {
            self.alone_allowed();
        }
        if self.state.io_suspended() {
            self.suspended_queue
                .push_back(Input::StoreReservations { id, data });
            return;
        }
        // Only the node that serves the volume changes its reservations, as only it writes.
        if self.state.role() != Role::Primary || !self.state.may_write() {
            let e = self.not_available();
            return self
                .out
                .push(Output::ReservationsStored { id, result: Err(e) });
        }
        if self.sb.reservations != data {
            self.sb.reservations = data;
            self.write_superblock();
            if !self.attached {
                let e = IoFailure::Medium(format!(
                    "{}: the reservation state could not be written to the local disk",
                    self.cfg.volume
                ));
                return self
                    .out
                    .push(Output::ReservationsStored { id, result: Err(e) });
            }
        }
        match self.send_reservations() {
            Some(seq) => {
                self.pending_reservations.insert(seq, id);
            }
            None => self
                .out
                .push(Output::ReservationsStored { id, result: Ok(()) }),
        }
    }

    /// Reservation state must fit the superblock.
    fn check_reservations_len(&self, len: usize) -> Result<(), IoFailure> {
        if len > RESERVATIONS_CAPACITY {
            return Err(IoFailure::OutOfRange(format!(
                "{}: {len} bytes of reservation state, more than the {RESERVATIONS_CAPACITY} the metadata holds",
                self.cfg.volume
            )));
        }
        Ok(())
    }

    /// Sends this node's reservation state to a connected peer with a disk; the sequence number to expect in
    /// its acknowledgement, or `None` if there is no such peer.
    fn send_reservations(&mut self) -> Option<u64> {
        let up = self.link.as_ref().is_some_and(|l| l.phase.is_up());
        if !up || !self.state.peer().disk.is_attached() {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let data = self.sb.reservations.clone();
        self.send(Message::Reservations { seq, data });
        Some(seq)
    }

    /// The peer's reservation state, from the node that serves the volume: kept in the superblock, then
    /// acknowledged. A Primary never takes it (only one node serves; the pair is never Primary twice while
    /// connected) but answers, so the sender is not left waiting.
    fn peer_reservations(&mut self, seq: u64, data: Vec<u8>) {
        if self.state.role() != Role::Primary && self.attached && self.sb.reservations != data {
            self.sb.reservations = data;
            self.write_superblock();
        }
        self.send(Message::ReservationsAck { seq });
    }

    fn mark_out_of_sync(&mut self, offset: u64, len: u64) {
        match &mut self.resync {
            Some(Resync::Source { plan, .. }) => {
                let _ = plan.app_write(offset, len);
            }
            _ => {
                let _ = self.bitmap.set_range(offset, len);
            }
        }
    }

    // ----- admin -----

    fn admin(&mut self, id: u64, command: AdminCommand) {
        let result = match command {
            AdminCommand::Up => self.admin_up(),
            AdminCommand::Down => self.admin_down(),
            AdminCommand::Primary { force } => {
                if self.state.role() == Role::Primary {
                    Ok(None)
                } else if !self.lease_valid() {
                    Err(format!(
                        "{}: the cluster grants this node no lease now (it may have been frozen, or cannot reach \
                         its peer or the witness): it is not promoted",
                        self.cfg.volume
                    ))
                } else {
                    match self.state.handle(Event::Promote { force }, &self.scfg) {
                        Ok(actions) => {
                            self.run_actions(actions);
                            if self.state.promotion().is_some() {
                                // Waits for the peer's grant or the fence.
                                self.pending_promotion = Some(id);
                                self.out.push(Output::Changed);
                                return;
                            }
                            Ok(None)
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
            }
            AdminCommand::Secondary => {
                if !self.pending.is_empty() {
                    Err(format!(
                        "{}: {} writes are still in flight; stop the target first",
                        self.cfg.volume,
                        self.pending.len()
                    ))
                } else {
                    self.try_event(Event::Demote)
                }
            }
            AdminCommand::Connect { discard_my_data } => {
                if self.state.peer().conn != ConnState::StandAlone {
                    Ok(Some(format!(
                        "{} is already {}",
                        self.cfg.volume,
                        self.state.peer().conn
                    )))
                } else {
                    self.try_event(Event::Connect { discard_my_data })
                }
            }
            AdminCommand::Disconnect => {
                if self.state.peer().conn == ConnState::StandAlone {
                    Ok(None)
                } else {
                    self.try_event(Event::Disconnect)
                }
            }
            AdminCommand::Verify => self.verify_start(),
            AdminCommand::Resize { size, assume_clean } => {
                match self.resize_start(id, size, assume_clean) {
                    // Answered when the peer replies.
                    Ok(()) => return self.out.push(Output::Changed),
                    Err(e) => Err(e),
                }
            }
            AdminCommand::Invalidate => self.try_event(Event::Invalidate),
            AdminCommand::Detach => self.admin_detach(),
            AdminCommand::Attach => self.admin_attach(),
            AdminCommand::NewCurrentUuid { clear_bitmap } => {
                if clear_bitmap {
                    self.try_event(Event::ClearBitmap)
                } else if self.state.role() == Role::Primary
                    || self.state.disk() == DiskState::UpToDate
                {
                    let fresh = self.random();
                    self.gen.new_current_uuid(fresh);
                    self.write_superblock();
                    Ok(None)
                } else {
                    Err(format!(
                        "{}: new-current-uuid needs UpToDate data",
                        self.cfg.volume
                    ))
                }
            }
        };
        self.out.push(Output::AdminDone { id, result });
        self.out.push(Output::Changed);
    }

    fn try_event(&mut self, event: Event) -> Result<Option<String>, String> {
        match self.state.handle(event, &self.scfg) {
            Ok(actions) => {
                self.run_actions(actions);
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn admin_up(&mut self) -> Result<Option<String>, String> {
        if !self.attached {
            self.reread_superblock()?;
            self.attach().map_err(|e| e.to_string())?;
        }
        if self.state.peer().conn == ConnState::StandAlone && !self.state.split_brain() {
            self.try_event(Event::Connect {
                discard_my_data: false,
            })?;
        }
        Ok(None)
    }

    fn reread_superblock(&mut self) -> Result<(), String> {
        let mut slots = [[0u8; crate::metadata::SUPERBLOCK_SIZE]; 2];
        for (i, slot) in slots.iter_mut().enumerate() {
            self.storage
                .read_meta(self.layout.superblocks[i].offset, slot)
                .map_err(|e| format!("{}: reading the superblock: {e}", self.cfg.volume))?;
        }
        let chosen = crate::metadata::choose(&slots[0], &slots[1])
            .map_err(|e| format!("{}: {e}", self.cfg.volume))?;
        self.sb = chosen.superblock;
        self.gen = GenerationIds {
            current: self.sb.current_uuid,
            bitmap: self.sb.bitmap_uuid,
            history: self.sb.history_uuids,
        };
        Ok(())
    }

    fn admin_down(&mut self) -> Result<Option<String>, String> {
        if self.state.role() == Role::Primary {
            return Err(format!(
                "{} is Primary; demote it first (volume secondary)",
                self.cfg.volume
            ));
        }
        if self.state.peer().conn != ConnState::StandAlone {
            self.try_event(Event::Disconnect)?;
            if let Some(link) = self.link.take() {
                self.out.push(Output::Close { link: link.id });
                self.after_link_lost("volume down");
            }
        }
        if self.attached {
            self.detach_cleanly()?;
        }
        Ok(None)
    }

    /// Closes the activity log, writes the bitmap, marks the log clean, and detaches (the state machine's
    /// [`Action::Detach`] does the closing).
    fn detach_cleanly(&mut self) -> Result<(), String> {
        self.try_event(Event::Detach)?;
        Ok(())
    }

    /// Gives the disk up, on request or after an I/O error: if it still takes writes, the data is flushed, the
    /// activity log closed, the bitmap written and the log marked clean, so an attach later resyncs only what
    /// the bitmaps say (the peer marks what it writes from now on, and every write this disk failed); a disk
    /// that does not is left with its log open, and an attach resyncs the log's extents too. Then the storage
    /// is released.
    fn close_disk(&mut self) {
        if self.attached {
            let clean = self.storage.flush().is_ok()
                && self.al.clean_shutdown().is_ok()
                && self.flush_bitmap_all().is_ok();
            if clean {
                self.sb.flags.al_clean = true;
                self.write_superblock();
            } else {
                self.log(
                    true,
                    format!(
                        "{}: the disk could not be closed cleanly; an attach resyncs the extents of its activity \
                         log as well",
                        self.cfg.volume
                    ),
                );
            }
            self.attached = false;
            self.storage.release();
            if let Some(g) = self.served.take() {
                if self.state.role() == Role::Primary {
                    self.gen = g;
                }
            }
            self.log(
                false,
                format!("{}: the disk is detached and released", self.cfg.volume),
            );
        }
        self.event(Event::Detached);
    }

    fn admin_detach(&mut self) -> Result<Option<String>, String> {
        if !self.attached {
            return Ok(Some(format!("{} has no disk attached", self.cfg.volume)));
        }
        self.detach_cleanly()?;
        Ok(None)
    }

    /// Whether a disk may be attached now: no disk attached; on a Primary, only under a connected UpToDate peer
    /// whose protocol compares generations on the live link (an older peer would close the link the Primary
    /// serves through).
    fn may_attach(&self) -> Result<(), String> {
        if self.attached {
            return Err(format!(
                "{}: a disk is attached already ({})",
                self.cfg.volume,
                self.state.disk()
            ));
        }
        self.state
            .may_attach(&self.scfg)
            .map_err(|e| e.to_string())?;
        let version = self.link.as_ref().and_then(|l| l.version);
        if self.state.role() == Role::Primary
            && !version.is_some_and(|v| v.speaks(Feature::LiveReexchange))
        {
            return Err(format!(
                "{}: refusing to attach a disk while Primary: {} speaks replication protocol {}, which cannot \
                 compare generations on a live link (protocol {} can); upgrade it first, or demote this node (or \
                 switch over) first",
                self.cfg.volume,
                self.cfg.peer_name,
                version.map_or_else(|| "?".to_owned(), |v| v.to_string()),
                Feature::LiveReexchange.since()
            ));
        }
        Ok(())
    }

    fn admin_attach(&mut self) -> Result<Option<String>, String> {
        self.may_attach()?;
        self.attach_again(Self::reread_superblock)
    }

    /// Loads the disk's superblock (and with it `gen`) with `load`, then attaches it; on failure the storage is
    /// released. A Primary keeps the generation it serves in `served` until its disk is UpToDate.
    fn attach_again(
        &mut self,
        load: impl FnOnce(&mut Self) -> Result<(), String>,
    ) -> Result<Option<String>, String> {
        let served = (self.state.role() == Role::Primary).then_some(self.gen);
        let attached = load(self).and_then(|()| self.attach().map_err(|e| e.to_string()));
        match (&attached, served) {
            (Err(_), Some(g)) => self.gen = g,
            (Ok(()), Some(_)) if self.state.disk() != DiskState::UpToDate => self.served = served,
            _ => {}
        }
        if attached.is_err() {
            self.storage.release();
        }
        attached.map(|()| None)
    }

    /// Attaches a disk the driver opened again (`volume attach` after a failure or a detach, or a new disk after
    /// `volume create-md`): `storage` with the `layout` and superblock `sb` the driver read and checked. Refused,
    /// with `storage` dropped and nothing written, on a Primary without a connected UpToDate peer to resync it
    /// from, while a disk is attached, or when the superblock
    /// belongs to another volume, to another node, or to a disk of another size. Then the bitmap and the
    /// activity log are read as at start; if the peer is connected the generations are exchanged again and the
    /// connect decision picks the resync: of the bitmaps' blocks if this disk's generation is one the peer's
    /// bitmap covers, in full for a new disk.
    pub fn attach_disk(
        &mut self,
        storage: S,
        layout: Layout,
        sb: Superblock,
    ) -> Result<Option<String>, String> {
        let volume = &self.cfg.volume;
        self.may_attach()?;
        if sb.volume_uuid != self.sb.volume_uuid {
            return Err(format!(
                "{volume}: the disk belongs to volume uuid {:032x}, not {:032x}; nothing was written",
                sb.volume_uuid, self.sb.volume_uuid
            ));
        }
        if (sb.node_id, sb.peer_node_id) != (self.cfg.node_id, self.cfg.peer_node_id) {
            return Err(format!(
                "{volume}: the disk's metadata is node {}'s (peer {}), not node {}'s; nothing was written",
                sb.node_id, sb.peer_node_id, self.cfg.node_id
            ));
        }
        if sb.data_size != self.sb.data_size {
            return Err(format!(
                "{volume}: the disk holds {} bytes of data, the volume {}; nothing was written",
                sb.data_size, self.sb.data_size
            ));
        }
        let attached = self.attach_again(|e| {
            e.storage = storage;
            e.layout = layout;
            e.sb = sb;
            e.gen = GenerationIds {
                current: e.sb.current_uuid,
                bitmap: e.sb.bitmap_uuid,
                history: e.sb.history_uuids,
            };
            Ok(())
        });
        self.out.push(Output::Changed);
        attached
    }

    /// A clean stop of the daemon: disconnect, flush and close the log (the volume must not be Primary with
    /// writes in flight: the driver stops the target first).
    pub fn shutdown(&mut self) {
        if let Some(link) = self.link.take() {
            self.send_on(
                link.id,
                Message::Disconnect {
                    reason: wire::DisconnectReason::Shutdown,
                },
            );
            self.out.push(Output::Close { link: link.id });
        }
        let _ = self.flush_bitmap_all();
        if self.attached && self.al.clean_shutdown().is_ok() {
            self.sb.flags.al_clean = true;
            self.write_superblock();
        }
    }

    // ----- the link -----

    fn connected_link(&self) -> Option<u64> {
        self.link.as_ref().filter(|l| l.phase.is_up()).map(|l| l.id)
    }

    fn link_up(&mut self, link: u64, nonce: [u8; NONCE_LEN]) {
        if !self.wants_link() || self.state.peer().conn == ConnState::Connected {
            self.out.push(Output::Close { link });
            return;
        }
        if let Some(old) = self.link.take() {
            self.out.push(Output::Close { link: old.id });
        }
        let (hs, hello) = Handshake::start(
            HandshakeConfig {
                peer: self.cfg.peer_name.clone(),
                node_id: self.cfg.node_id,
                peer_node_id: self.cfg.peer_node_id,
                volume_uuid: self.sb.volume_uuid,
                cluster_id: self.cfg.cluster_id,
                secret: self.cfg.secret.clone(),
            },
            nonce,
        );
        self.link = Some(Link {
            id: link,
            phase: Phase::Handshake(Some(hs)),
            heard: self.now,
            spoke: self.now,
            ping_seq: 0,
            failed: false,
            version: None,
            peer_uuids: None,
        });
        for m in hello {
            self.send(m);
        }
    }

    fn close_link(&mut self, reason: wire::DisconnectReason, why: String) {
        self.link_failed(why.clone());
        if let Some(link) = self.link.as_ref() {
            let id = link.id;
            self.send_on(id, Message::Disconnect { reason });
            self.out.push(Output::Close { link: id });
        }
        self.log(
            true,
            format!(
                "{}: closing the link to {}: {why}",
                self.cfg.volume, self.cfg.peer_name
            ),
        );
    }

    fn link_down(&mut self, reason: &str) {
        let was_up = self.connected_link().is_some();
        self.link_failed(if was_up {
            format!("lost the link: {reason}")
        } else {
            format!("the connection ended before it was established: {reason}")
        });
        self.link = None;
        if was_up {
            self.log(
                true,
                format!(
                    "{}: lost the link to {}: {reason}",
                    self.cfg.volume, self.cfg.peer_name
                ),
            );
        } else {
            self.log(
                true,
                format!(
                    "{}: a connection with {} ended before it was established: {reason}",
                    self.cfg.volume, self.cfg.peer_name
                ),
            );
        }
        self.after_link_lost(reason);
    }

    /// Keeps why the current connection failed, for `volume status`: the first reason given on one connection.
    fn link_failed(&mut self, why: String) {
        match self.link.as_mut() {
            Some(link) if link.failed => {}
            Some(link) => {
                link.failed = true;
                self.last_error = Some(why);
            }
            None => self.last_error = Some(why),
        }
    }

    /// The connection is gone (already removed from `self.link`): the state machine hears it, pending writes
    /// complete with their blocks out of sync, after the new generation is on disk.
    fn after_link_lost(&mut self, _reason: &str) {
        // What was in flight now completes alone, after a new generation: both need the lease. Checked before
        // the state machine hears of the loss, so a node without one starts no generation.
        self.alone_allowed();
        self.bitmap_in = None;
        self.verifying = None;
        if let Some(Resync::Source { plan, .. }) = self.resync.take() {
            self.bitmap = plan.into_bitmap();
        }
        let pending: Vec<_> = self.pending.drain().map(|(_, w)| w).collect();
        for w in &pending {
            let _ = self.bitmap.set_range(w.offset, w.len);
        }
        let unconfirmed: Vec<TlEntry> = self.transfer_log.drain(..).collect();
        for e in &unconfirmed {
            let _ = self.bitmap.set_range(e.offset, e.len);
        }
        if matches!(
            self.state.peer().conn,
            ConnState::Connected | ConnState::Disconnecting
        ) {
            self.event(Event::PeerLost);
        }
        self.peer_gen = None;
        // The new generation (if any) is on disk: now the writes may complete.
        for e in unconfirmed {
            self.finish_write(None, e.offset, e.len, e.al);
        }
        for w in pending {
            self.finish_write(w.id, w.offset, w.len, w.al);
            if let Some(id) = w.id {
                if w.stored_here {
                    self.complete_alone(Output::WriteDone { id, result: Ok(()) });
                } else {
                    let e = self.lost_before_acknowledged("write");
                    self.out.push(Output::WriteDone { id, result: Err(e) });
                }
            }
        }
        for f in std::mem::take(&mut self.flushes) {
            if f.stored_here {
                self.complete_alone(Output::FlushDone {
                    id: f.id,
                    result: Ok(()),
                });
            } else {
                let e = self.lost_before_acknowledged("flush");
                self.out.push(Output::FlushDone {
                    id: f.id,
                    result: Err(e),
                });
            }
        }
        // Like the writes: the peer is behind now, and gets the state again when it resyncs from this node.
        for (_, id) in std::mem::take(&mut self.pending_reservations) {
            self.complete_alone(Output::ReservationsStored { id, result: Ok(()) });
        }
        for (_, id) in std::mem::take(&mut self.peer_reads) {
            let e = self.not_available();
            self.out.push(Output::ReadDone { id, result: Err(e) });
        }
        if let Some(r) = self.resizing.take() {
            self.out.push(Output::AdminDone {
                id: r.id,
                result: Err(format!(
                    "{}: the link to {} was lost before it answered the resize; this node still holds {} \
                     (if the peer grew already, this node grows to match when the link is back; compare \
                     `volume status` on both nodes once they are connected)",
                    self.cfg.volume,
                    self.cfg.peer_name,
                    crate::metadata::human_size(self.sb.data_size)
                )),
            });
        }
        self.out.push(Output::Changed);
    }

    fn received(&mut self, message: Message) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        match &mut link.phase {
            Phase::Handshake(hs) => {
                let Some(h) = hs.take() else { return };
                match h.receive(message) {
                    Ok(HandshakeStep::Continue { handshake, send }) => {
                        *hs = Some(handshake);
                        if let Some(m) = send {
                            self.send(m);
                        }
                    }
                    Ok(HandshakeStep::Done(done)) => {
                        link.phase = Phase::Exchange(PeerInfo::default());
                        link.version = Some(done.version);
                        self.log(
                            false,
                            format!(
                                "{}: {} authenticated, protocol version {}",
                                self.cfg.volume, self.cfg.peer_name, done.version
                            ),
                        );
                        self.send_exchange();
                    }
                    Err(e) => {
                        let reason = e
                            .disconnect_reason()
                            .unwrap_or(wire::DisconnectReason::ProtocolError);
                        self.close_link(reason, e.to_string());
                    }
                }
            }
            Phase::Exchange(info) => match info.collect(message) {
                Collected::Complete(u, size, st) => self.exchange_done(u, size, st),
                Collected::Part => {}
                Collected::Other(Message::Disconnect { reason }) => {
                    self.close_link(reason, format!("the peer disconnected ({reason})"))
                }
                Collected::Other(Message::Ping { seq }) => self.send(Message::PingAck { seq }),
                Collected::Other(Message::PingAck { .. }) => {}
                Collected::Other(other) => self.close_link(
                    wire::DisconnectReason::ProtocolError,
                    format!("{} before the generation exchange finished", other.name()),
                ),
            },
            Phase::Reexchange(info) => {
                match &message {
                    Message::Uuids { ids, .. } => self.peer_gen = Some(*ids),
                    // The peer's part is `Uuids`, `Sizes`, `State` in one go: a `State` before its `Sizes` was a
                    // change of state on its way before the peer took part, not its answer.
                    Message::Sizes { .. } => info.state = None,
                    _ => {}
                }
                match info.collect(message) {
                    Collected::Complete(u, size, st) => self.exchange_done(u, size, st),
                    Collected::Part => {}
                    Collected::Other(other) => self.received_up(other),
                }
            }
            Phase::Up => match message {
                // The peer compares generations again (its disk attached): its `Uuids` came first; answer with
                // this node's, then take its `State` as the last part.
                Message::Sizes { data_size, .. } => {
                    let uuids = link.peer_uuids.take();
                    link.phase = Phase::Reexchange(PeerInfo {
                        uuids,
                        size: Some(data_size),
                        state: None,
                    });
                    if uuids.is_none() {
                        return self.close_link(
                            wire::DisconnectReason::ProtocolError,
                            "Sizes without Uuids before it on a connected link".into(),
                        );
                    }
                    self.send_exchange();
                }
                other => self.received_up(other),
            },
        }
    }

    /// This node's part of a generation exchange: generations, size, state.
    fn send_exchange(&mut self) {
        self.send_uuids(false);
        self.send(Message::Sizes {
            data_size: self.sb.data_size,
            max_request: MAX_REQUEST,
        });
        self.send_state();
    }

    fn local_side(&self, discard_my_data: bool) -> Side {
        Side {
            ids: self.gen,
            flags: GenFlags {
                consistent: self.sb.flags.consistent,
                crashed_primary: self.sb.flags.crashed_primary,
                discard_my_data,
            },
            role: self.state.role(),
            node_id: self.cfg.node_id,
        }
    }

    fn send_uuids(&mut self, skip_initial_sync: bool) {
        let side = self.local_side(self.state.discard_my_data());
        self.send(Message::Uuids {
            ids: side.ids,
            flags: side.flags,
            skip_initial_sync,
            bitmap_weight: self.bitmap.dirty_blocks(),
        });
    }

    fn exchange_done(
        &mut self,
        (peer_ids, peer_flags, peer_weight): (GenerationIds, GenFlags, u64),
        peer_size: u64,
        (peer_role, peer_disk): (Role, DiskState),
    ) {
        let both_disks = self.state.disk().is_attached() && peer_disk.is_attached();
        if let Err(why) = self.check_diskless_primary_peer(peer_ids, peer_role, peer_disk) {
            return self.close_link(wire::DisconnectReason::Incompatible, why);
        }
        let mut larger = None;
        if peer_size != self.sb.data_size {
            match self.agree_size_at_connect(peer_size, both_disks) {
                Ok(side) => larger = Some(side),
                Err(why) => return self.close_link(wire::DisconnectReason::Incompatible, why),
            }
        }
        if let Some(l) = self.link.as_mut() {
            l.phase = Phase::Up;
        }
        self.last_error = None;
        self.peer_gen = Some(peer_ids);
        let local = self.local_side(self.state.discard_my_data());
        let peer = Side {
            ids: peer_ids,
            flags: peer_flags,
            role: peer_role,
            node_id: self.cfg.peer_node_id,
        };
        let mut outcome = both_disks.then(|| connect_decision(&local, &peer));
        if let (Some(o), Some(larger)) = (outcome.as_mut(), larger) {
            if o.decision == ConnectDecision::NoSync {
                // Same generation, but the copies grew apart in size: only the new area differs (marked in both
                // bitmaps by whoever grew). Its content is nobody's data yet; sync it from the Primary, if there is
                // one, else from the copy that was larger. Both nodes reach the same answer.
                let source = match (local.role, peer_role) {
                    (Role::Primary, _) => Direction::Local,
                    (_, Role::Primary) => Direction::Peer,
                    _ => larger,
                };
                o.decision = ConnectDecision::BitmapResync { source };
            }
        }
        let resolution = match outcome.map(|o| o.decision) {
            Some(ConnectDecision::SplitBrain { kind }) => Some(resolve_split_brain(
                kind,
                &self.cfg.policies,
                &local,
                &peer,
                ChangedBlocks {
                    local: self.bitmap.dirty_blocks(),
                    peer: peer_weight,
                },
            )),
            _ => None,
        };
        if let Some(o) = outcome {
            self.log(
                false,
                format!(
                    "{}: connected to {}; generations {} (here) and {} (peer): {:?} by rule {}",
                    self.cfg.volume,
                    self.cfg.peer_name,
                    self.gen,
                    peer_ids,
                    o.decision,
                    o.rule.number()
                ),
            );
        }
        let attached_under_primary = self.state.primary_disk_behind();
        self.event(Event::PeerConnected {
            outcome,
            resolution,
            peer_role,
            peer_disk,
        });
        if attached_under_primary && !self.state.disk().is_attached() {
            let decision = outcome.map(|o| o.decision);
            self.log(
                true,
                format!(
                    "{}: the disk attached on this Primary cannot be resynced from {} (the connect decision is \
                     {decision:?}, not a resync from the peer): detached again; this node goes on serving through \
                     {}. Attach it after a switchover, or attach a new disk (`volume create-md`)",
                    self.cfg.volume, self.cfg.peer_name, self.cfg.peer_name
                ),
            );
        }
        // A Primary's reservation state is the volume's: a peer that joins without a resync gets it too.
        if self.state.role() == Role::Primary {
            self.send_reservations();
        }
        self.out.push(Output::Changed);
    }

    /// A diskless Primary serves the generation it last had, through the peer: only a peer disk of that very
    /// generation holds what it acknowledged. Any other (older: it lacks writes the Primary's lost disk took while
    /// the two were apart; newer: the peer was promoted meanwhile) would silently change the data under the
    /// application, so the connection is refused, from both ends (DRBD's "can only connect to data with current
    /// UUID").
    fn check_diskless_primary_peer(
        &self,
        peer_ids: GenerationIds,
        peer_role: Role,
        peer_disk: DiskState,
    ) -> Result<(), String> {
        let local_attached = self.state.disk().is_attached();
        let diskless_primary_here =
            self.state.role() == Role::Primary && !local_attached && peer_disk.is_attached();
        let diskless_primary_there =
            peer_role == Role::Primary && !peer_disk.is_attached() && local_attached;
        if !(diskless_primary_here || diskless_primary_there)
            || crate::generation::same_generation(self.gen.current, peer_ids.current)
        {
            return Ok(());
        }
        let (primary, holder, served, held) = if diskless_primary_here {
            (
                "this node",
                self.cfg.peer_name.as_str(),
                self.gen.current,
                peer_ids.current,
            )
        } else {
            (
                self.cfg.peer_name.as_str(),
                "this node",
                peer_ids.current,
                self.gen.current,
            )
        };
        Err(format!(
            "{}: {primary} is a diskless Primary serving generation {served:016X}, but {holder}'s disk holds \
             generation {held:016X}: it is not the data the Primary acknowledged, so it cannot serve it; demote \
             the Primary (or attach its own disk) first",
            self.cfg.volume
        ))
    }

    fn received_up(&mut self, message: Message) {
        match message {
            Message::Data {
                seq,
                offset,
                fua,
                protocol,
                data,
                ..
            } => self.peer_write(seq, offset, fua, protocol, Body::Data(data)),
            Message::WriteZeroes {
                seq,
                offset,
                len,
                protocol,
                ..
            } => self.peer_write(seq, offset, false, protocol, Body::Discard(u64::from(len))),
            Message::WriteAck { seq } | Message::RecvAck { seq } => {
                if let Some(w) = self.pending.remove(&seq) {
                    if let Some(observe) = &self.ack_observer {
                        observe(self.now.saturating_sub(w.sent));
                    }
                    self.finish_write(w.id, w.offset, w.len, w.al);
                    if let Some(id) = w.id {
                        self.out.push(Output::WriteDone { id, result: Ok(()) });
                    }
                }
            }
            Message::NegAck { seq } => {
                if let Some(w) = self.pending.remove(&seq) {
                    self.mark_out_of_sync(w.offset, w.len);
                    self.event(Event::PeerWriteFailed);
                    self.finish_write(w.id, w.offset, w.len, w.al);
                    if let Some(id) = w.id {
                        let result = if w.stored_here {
                            Ok(())
                        } else {
                            Err(IoFailure::Medium(format!(
                                "{}: {} could not store the write, and this node holds no UpToDate copy of its \
                                 own: the write failed",
                                self.cfg.volume, self.cfg.peer_name
                            )))
                        };
                        self.out.push(Output::WriteDone { id, result });
                    }
                }
            }
            Message::Barrier { epoch } => {
                let ok = !self.state.disk().is_attached() || self.storage.flush().is_ok();
                if !ok {
                    self.event(Event::DiskFailed);
                }
                self.send(Message::BarrierAck { epoch, writes: 0 });
            }
            Message::BarrierAck { epoch, .. } => {
                while self.transfer_log.front().is_some_and(|e| e.epoch <= epoch) {
                    if let Some(e) = self.transfer_log.pop_front() {
                        self.finish_write(None, e.offset, e.len, e.al);
                    }
                }
                let (done, left): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flushes)
                    .into_iter()
                    .partition(|f| f.epoch <= epoch);
                self.flushes = left;
                for f in done {
                    self.out.push(Output::FlushDone {
                        id: f.id,
                        result: Ok(()),
                    });
                }
            }
            Message::ReadRequest { seq, offset, len } => {
                let mut buf = vec![0u8; len as usize];
                let ok = self.state.disk() == DiskState::UpToDate
                    && self.check_range(offset, u64::from(len)).is_ok()
                    && self.storage.read(offset, &mut buf).is_ok();
                if ok {
                    self.send(Message::ReadReply { seq, data: buf });
                } else {
                    self.send(Message::ReadFailed { seq });
                }
            }
            Message::ReadReply { seq, data } => {
                if let Some(id) = self.peer_reads.remove(&seq) {
                    self.out.push(Output::ReadDone {
                        id,
                        result: Ok(data),
                    });
                }
            }
            Message::ReadFailed { seq } => {
                if let Some(id) = self.peer_reads.remove(&seq) {
                    self.out.push(Output::ReadDone {
                        id,
                        result: Err(IoFailure::Medium(format!(
                            "{}: the peer could not read the data",
                            self.cfg.volume
                        ))),
                    });
                }
            }
            Message::State {
                role,
                disk,
                replication,
            } => self.peer_state(role, map_disk(disk), replication),
            Message::Uuids {
                ids,
                flags,
                bitmap_weight,
                skip_initial_sync,
            } => {
                self.peer_gen = Some(ids);
                if let Some(l) = self.link.as_mut() {
                    l.peer_uuids = Some((ids, flags, bitmap_weight));
                }
                if !self.state.disk().is_attached() && self.state.role() == Role::Primary {
                    // A diskless Primary serves the peer's copy: when the peer starts a new generation (it holds
                    // the only copy now), that is the generation this Primary exposes, and the one a later
                    // reconnect must find (see `check_diskless_primary_peer`).
                    self.gen.adopt_current(ids.current);
                } else if let Some(served) = self.served.as_mut() {
                    served.adopt_current(ids.current);
                }
                if skip_initial_sync && self.gen.accept_skip_initial_sync(ids.current) {
                    self.bitmap.clear_all();
                    let _ = self.flush_bitmap_all();
                    self.write_superblock();
                    self.event(Event::PeerClearedBitmap);
                }
            }
            Message::PromoteRequest => self.event(Event::PeerRequestsPromotion),
            Message::ResizeRequest {
                size,
                exact,
                assume_clean,
            } => self.peer_resize(size, exact, assume_clean),
            Message::ResizeReply { size, refusal } => self.resize_replied(size, refusal),
            Message::PromoteReply { granted } => {
                let event = if granted {
                    Event::PromotionGranted
                } else {
                    Event::PromotionRefused
                };
                self.event(event);
                self.promotion_settled();
            }
            Message::BitmapChunk {
                first_word,
                words,
                last,
            } => self.bitmap_chunk(first_word, &words, last),
            Message::ResyncData { offset, data } => self.resync_data(offset, data),
            Message::ChecksumResyncRequest {
                offset,
                len,
                digest,
            } => {
                let mut data = vec![0u8; len as usize];
                let readable = self.state.disk().is_attached()
                    && self.check_range(offset, u64::from(len)).is_ok()
                    && self.storage.read(offset, &mut data).is_ok();
                if readable && block_digest(&data) == digest {
                    let _ = self
                        .bitmap
                        .clear_blocks(offset / 4096, u64::from(len).div_ceil(4096));
                    self.send(Message::InSync { offset, len });
                } else {
                    self.send(Message::ResyncRequest { offset, len });
                }
            }
            Message::InSync { offset, len } => self.resync_ack(offset, len, true),
            Message::ResyncRequest { offset, len } => self.resend_resync_data(offset, len),
            Message::VerifyRequest { offset, len } => {
                let mut data = vec![0u8; len as usize];
                if self.check_range(offset, u64::from(len)).is_ok()
                    && self.state.disk().is_attached()
                    && self.storage.read(offset, &mut data).is_ok()
                {
                    let digest = block_digest(&data);
                    self.send(Message::VerifyReply {
                        offset,
                        len,
                        digest,
                    });
                } else {
                    self.close_link(
                        wire::DisconnectReason::ProtocolError,
                        "cannot answer a verify request".into(),
                    );
                }
            }
            Message::VerifyReply {
                offset,
                len,
                digest,
            } => self.verify_reply(offset, len, digest),
            Message::ResyncAck { offset, len } => self.resync_ack(offset, len, true),
            Message::ResyncFailed { offset, len } => self.resync_ack(offset, len, false),
            Message::Ping { seq } => self.send(Message::PingAck { seq }),
            Message::PingAck { .. } => {}
            Message::Reservations { seq, data } => self.peer_reservations(seq, data),
            Message::ReservationsAck { seq } => {
                if let Some(id) = self.pending_reservations.remove(&seq) {
                    self.out
                        .push(Output::ReservationsStored { id, result: Ok(()) });
                }
            }
            Message::Disconnect { reason } => {
                self.link_failed(format!("the peer disconnected: {reason}"));
                let link = self.link.as_ref().map(|l| l.id);
                if let Some(id) = link {
                    self.out.push(Output::Close { link: id });
                }
                self.log(
                    false,
                    format!("{}: the peer disconnected ({reason})", self.cfg.volume),
                );
            }
            other => self.close_link(
                wire::DisconnectReason::ProtocolError,
                format!("unexpected {} from the peer", other.name()),
            ),
        }
    }

    fn peer_write(
        &mut self,
        seq: u64,
        offset: u64,
        fua: bool,
        protocol: ReplicationProtocol,
        body: Body,
    ) {
        if protocol == ReplicationProtocol::B {
            self.send(Message::RecvAck { seq });
        }
        let len = body.len();
        let disk = self.state.disk();
        // A Primary without UpToDate data of its own (diskless, or its disk still resyncing from here) has this
        // node's copy as the only one: the write counts only if it lands on UpToDate data here.
        let writer_lacks_data = self.state.peer().disk != DiskState::UpToDate;
        let refused = writer_lacks_data && !self.state.stores_up_to_date_copy();
        let mut ok = self.check_range(offset, len).is_ok() && disk.is_attached() && !refused;
        if ok {
            // The peer's writes go through this node's activity log too: if this node loses power, the extents
            // it may have lost from its cache are resynced, not trusted.
            ok = match self.al.begin_write(offset, len) {
                Ok(AlDecision::CommitFirst(tx)) => self.commit_al(&tx),
                Ok(AlDecision::Proceed | AlDecision::AfterCommit(_)) => true,
                Ok(AlDecision::Wait) | Err(_) => false,
            };
            if ok {
                ok = match &body {
                    Body::Data(data) => self.storage.write(offset, data),
                    Body::Discard(len) => self.storage.discard(offset, *len),
                }
                .is_ok()
                    && (!fua || self.storage.flush().is_ok());
                let _ = self.al.end_write(offset, len);
            }
            if !ok {
                self.log(
                    true,
                    format!(
                        "{}: I/O error writing the peer's data; detaching",
                        self.cfg.volume
                    ),
                );
                self.event(Event::DiskFailed);
            } else if writer_lacks_data {
                match &mut self.resync {
                    // The writer's disk resyncs from here and took this write too (what it wrote before it knew
                    // came in its bitmap), but a resync block already on its way may carry older data.
                    Some(Resync::Source { plan, .. }) => plan.rewritten_in_flight(offset, len),
                    // A diskless writer's disk, or one still comparing generations, lacks these blocks.
                    _ => self.mark_out_of_sync(offset, len),
                }
            }
        }
        if protocol == ReplicationProtocol::C {
            if ok {
                self.send(Message::WriteAck { seq });
            } else {
                self.send(Message::NegAck { seq });
            }
        }
    }

    fn peer_state(&mut self, role: Role, disk: DiskState, replication: WireRepl) {
        let mine = self.state.peer().repl;
        if mine == ReplState::Established
            && matches!(replication, WireRepl::SyncSource | WireRepl::SyncTarget)
        {
            let source = if replication == WireRepl::SyncSource {
                Direction::Peer
            } else {
                Direction::Local
            };
            if self.state.disk().is_attached() {
                self.event(Event::ResyncStartedByPeer { source });
                if self.state.peer().repl != ReplState::Established {
                    self.begin_resync(source);
                }
            }
        } else if mine == ReplState::Established && replication == WireRepl::VerifySource {
            self.event(Event::PeerStartedVerify);
        } else if mine == ReplState::VerifyT && replication == WireRepl::Established {
            self.event(Event::VerifyFinished);
        } else if matches!(mine, ReplState::SyncTarget | ReplState::PausedSyncT)
            && replication == WireRepl::Established
        {
            // The source finished.
            self.bitmap.clear_all();
            let _ = self.flush_bitmap_all();
            self.resync = None;
            self.event(Event::ResyncFinished);
        }
        if self.link.is_some() {
            self.event(Event::PeerChanged { role, disk });
        }
        self.out.push(Output::Changed);
    }

    fn promotion_settled(&mut self) {
        if self.state.promotion().is_none() {
            if let Some(id) = self.pending_promotion.take() {
                let result = if self.state.role() == Role::Primary {
                    Ok(None)
                } else {
                    Err(format!(
                        "{}: promotion refused by the peer",
                        self.cfg.volume
                    ))
                };
                self.out.push(Output::AdminDone { id, result });
            }
        }
    }

    // ----- online resize -----

    /// The two copies hold different sizes at connect (a resize whose reply the link lost, or a copy grown while
    /// the other was away): the smaller grows to the larger, as the resize would have ended, and the new area is
    /// resynced. Returns which side was the larger; an error (the link closes with it) when the two cannot agree.
    fn agree_size_at_connect(
        &mut self,
        peer_size: u64,
        both_disks: bool,
    ) -> Result<Direction, String> {
        let volume = self.cfg.volume.clone();
        let mine = self.sb.data_size;
        let differ = format!(
            "{volume}: {} holds {} ({peer_size} bytes) and this node {} ({mine} bytes)",
            self.cfg.peer_name,
            crate::metadata::human_size(peer_size),
            crate::metadata::human_size(mine)
        );
        if !both_disks {
            return Err(format!(
                "{differ}; a diskless node cannot take part in a size agreement: attach its disk first"
            ));
        }
        if !self.peer_speaks(Feature::SizeAtConnect) {
            return Err(format!(
                "{differ}; both copies must have the same size, and the peer runs a twinsan that cannot agree on \
                 one at connect: upgrade it (docs/upgrade.md), or grow the smaller node's backing device and run \
                 `volume resize` once they are connected"
            ));
        }
        if peer_size < mine {
            self.log(
                false,
                format!("{differ}: the peer grows to match (a resize the link cut short)"),
            );
            return Ok(Direction::Local);
        }
        let (usable, _, _) = self.usable_now()?;
        if usable < peer_size {
            return Err(format!(
                "{differ}; this node's backing device can hold only {}: grow it to hold {}, then reconnect",
                crate::metadata::human_size(usable),
                crate::metadata::human_size(peer_size)
            ));
        }
        self.log(
            false,
            format!(
                "{differ}: growing to match (a resize the link cut short); the new area resyncs"
            ),
        );
        self.grow(peer_size, false)?;
        Ok(Direction::Peer)
    }

    /// The data size this node's devices can hold now, and the placement with the metadata device's size now.
    fn usable_now(&mut self) -> Result<(u64, u64, Placement), String> {
        let (backing, placement) = self.storage.current_sizes().map_err(|e| {
            format!(
                "{}: reading the size of the backing device: {e}",
                self.cfg.volume
            )
        })?;
        let layout =
            Layout::compute(backing, placement).map_err(|e| format!("{}: {e}", self.cfg.volume))?;
        Ok((layout.data_size, backing, placement))
    }

    /// `volume resize` here: checks, then asks the peer, which grows first; this node grows when it answers.
    fn resize_start(
        &mut self,
        id: u64,
        size: Option<u64>,
        assume_clean: bool,
    ) -> Result<(), String> {
        let volume = self.cfg.volume.clone();
        if self.resizing.is_some() {
            return Err(format!("{volume}: a resize is already running"));
        }
        self.state
            .check_resize(&self.scfg, true)
            .map_err(|e| e.to_string())?;
        if !self.peer_speaks(Feature::OnlineResize) {
            // A protocol 2 peer refuses frames it does not know and drops the link.
            return Err(format!(
                "{volume}: the peer {} runs a twinsan that cannot resize a volume online; upgrade it first",
                self.cfg.peer_name
            ));
        }
        let (usable, backing, placement) = self.usable_now()?;
        let current = self.sb.data_size;
        // This node's side of the agreement; the peer checks its own.
        let offer = match size {
            Some(size) => {
                crate::resize::agree_size(current, usable, size, Some(size))
                    .map_err(|e| format!("{volume}: {e}"))?;
                size
            }
            None => {
                crate::resize::agree_size(current, usable, usable, None)
                    .map_err(|e| format!("{volume}: {e}"))?;
                usable
            }
        };
        // Whether this node's metadata can move is checked before the peer grows: once it has, the two must end
        // at one size.
        crate::resize::new_layout(&self.layout, backing, placement, offer)
            .map_err(|e| format!("{volume}: {e}"))?;
        self.log(
            false,
            format!(
                "{volume}: resize: asking {} to grow to {} (this node can hold {})",
                self.cfg.peer_name,
                crate::metadata::human_size(offer),
                crate::metadata::human_size(usable)
            ),
        );
        self.resizing = Some(PendingResize { id, assume_clean });
        self.send(Message::ResizeRequest {
            size: offer,
            exact: size.is_some(),
            assume_clean,
        });
        Ok(())
    }

    /// The peer runs `volume resize`: agree on the size, grow here, answer.
    fn peer_resize(&mut self, size: u64, exact: bool, assume_clean: bool) {
        let result = self.peer_resize_inner(size, exact, assume_clean);
        let reply = match result {
            Ok(new) => Message::ResizeReply {
                size: new,
                refusal: None,
            },
            Err(why) => {
                self.log(
                    true,
                    format!("{}: refusing the peer's resize: {why}", self.cfg.volume),
                );
                Message::ResizeReply {
                    size: self.sb.data_size,
                    refusal: Some(why),
                }
            }
        };
        self.send(reply);
        self.out.push(Output::Changed);
    }

    fn peer_resize_inner(
        &mut self,
        size: u64,
        exact: bool,
        assume_clean: bool,
    ) -> Result<u64, String> {
        if self.resizing.is_some() {
            return Err("a resize started on this node is running".to_string());
        }
        self.state
            .check_resize(&self.scfg, false)
            .map_err(|e| e.to_string())?;
        let (usable, _, _) = self.usable_now()?;
        let new = crate::resize::agree_size(self.sb.data_size, usable, size, exact.then_some(size))
            .map_err(|e| e.to_string())?;
        self.grow(new, assume_clean)?;
        Ok(new)
    }

    /// The peer answered the resize started here.
    fn resize_replied(&mut self, size: u64, refusal: Option<String>) {
        let Some(pending) = self.resizing.take() else {
            return self.log(
                true,
                format!("{}: a resize reply nobody asked for", self.cfg.volume),
            );
        };
        let volume = self.cfg.volume.clone();
        let result = match refusal {
            Some(why) => Err(format!(
                "{volume}: {} refused the resize: {why}",
                self.cfg.peer_name
            )),
            None => self.grow(size, pending.assume_clean).map(|()| {
                if !pending.assume_clean {
                    self.event(Event::ResizeResync);
                }
                Some(format!(
                    "{volume} now holds {}{}",
                    crate::metadata::human_size(size),
                    if pending.assume_clean {
                        " (new area taken as in sync: --assume-clean)"
                    } else {
                        "; the new area resyncs to the peer"
                    }
                ))
            }),
        };
        self.out.push(Output::AdminDone {
            id: pending.id,
            result,
        });
        self.out.push(Output::Changed);
    }

    /// Grows this node's copy to `new_size` bytes: moves the metadata (crash-safe, see [`crate::resize`]), marks
    /// the new area out of sync unless `assume_clean`, and tells the driver the new size.
    fn grow(&mut self, new_size: u64, assume_clean: bool) -> Result<(), String> {
        let volume = self.cfg.volume.clone();
        let (_, backing, placement) = self.usable_now()?;
        let new = crate::resize::new_layout(&self.layout, backing, placement, new_size)
            .map_err(|e| format!("{volume}: {e}"))?;
        if let Some(Resync::Source { plan, .. }) = self.resync.take() {
            self.bitmap = plan.into_bitmap();
        }
        let grown = crate::resize::grown_bitmap(&self.bitmap, new_size, assume_clean);
        self.sb.current_uuid = self.gen.current;
        self.sb.bitmap_uuid = self.gen.bitmap;
        self.sb.history_uuids = self.gen.history;
        // In-flight data to the old area is unaffected; the data itself does not move.
        let moved = crate::resize::grow_metadata(
            &mut self.storage,
            &self.layout,
            &new,
            &self.sb,
            &grown,
            new_size,
        );
        match moved {
            Ok(sb) => {
                let old = self.sb.data_size;
                self.sb = sb;
                self.layout = new;
                self.bitmap = grown;
                self.bitmap.mark_flushed();
                self.log(
                    false,
                    format!(
                        "{volume}: grown from {} to {}; metadata at offset {}",
                        crate::metadata::human_size(old),
                        crate::metadata::human_size(new_size),
                        self.layout.metadata.offset
                    ),
                );
                self.out.push(Output::Resized {
                    data_size: new_size,
                });
                Ok(())
            }
            Err(e) => {
                self.log(
                    true,
                    format!("{volume}: I/O error moving the metadata: {e}"),
                );
                self.event(Event::DiskFailed);
                Err(format!(
                    "{volume}: I/O error moving the metadata: {e}; the disk was detached"
                ))
            }
        }
    }

    // ----- resync -----

    fn begin_resync(&mut self, source: Direction) {
        if let Some(Resync::Source { plan, .. }) = self.resync.take() {
            self.bitmap = plan.into_bitmap();
        }
        self.resync = Some(Resync::AwaitBitmap { source });
        self.resync_sent = 0;
        // The sync target takes the source's data, and with it the reservations that go with that data.
        if source == Direction::Local {
            self.send_reservations();
        }
        // Send ours; the peer sends its own.
        let words: Vec<u64> = self
            .bitmap
            .to_bytes()
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        let per_chunk = wire::bitmap_words_per_chunk(wire::max_payload_for(MAX_REQUEST)).max(1);
        if words.is_empty() {
            self.send(Message::BitmapChunk {
                first_word: 0,
                words: Vec::new(),
                last: true,
            });
        }
        let chunks = words.len().div_ceil(per_chunk);
        for (i, chunk) in words.chunks(per_chunk).enumerate() {
            self.send(Message::BitmapChunk {
                first_word: (i * per_chunk) as u64,
                words: chunk.to_vec(),
                last: i + 1 == chunks,
            });
        }
        if let Some(b) = self.bitmap_in.take() {
            self.bitmap_complete(b);
        }
    }

    fn bitmap_chunk(&mut self, first_word: u64, words: &[u64], last: bool) {
        let size = self.sb.data_size;
        let incoming = self.bitmap_in.get_or_insert_with(|| DirtyBitmap::new(size));
        let mut bytes = incoming.to_bytes();
        let start = first_word as usize * 8;
        if start + words.len() * 8 > bytes.len() {
            return self.close_link(
                wire::DisconnectReason::ProtocolError,
                "bitmap chunk beyond the volume".into(),
            );
        }
        for (i, w) in words.iter().enumerate() {
            bytes[start + i * 8..start + i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        match DirtyBitmap::from_pages(size, &bytes) {
            Ok(b) => *incoming = b,
            Err(e) => {
                return self.close_link(
                    wire::DisconnectReason::ProtocolError,
                    format!("bitmap: {e}"),
                )
            }
        }
        if last && matches!(self.resync, Some(Resync::AwaitBitmap { .. })) {
            if let Some(b) = self.bitmap_in.take() {
                self.bitmap_complete(b);
            }
        }
    }

    /// Both bitmaps are known: merge and start copying.
    fn bitmap_complete(&mut self, peer: DirtyBitmap) {
        let Some(Resync::AwaitBitmap { source }) = self.resync else {
            self.bitmap_in = Some(peer);
            return;
        };
        let _ = self.bitmap.merge(&peer);
        let _ = self.flush_bitmap();
        match source {
            Direction::Local => {
                match ResyncPlan::new(self.bitmap.clone(), self.cfg.resync, self.now) {
                    Ok(plan) => {
                        self.resync = Some(Resync::Source {
                            plan: Box::new(plan),
                            requests: BTreeMap::new(),
                        })
                    }
                    Err(e) => {
                        self.resync = None;
                        return self.log(true, format!("{}: resync: {e}", self.cfg.volume));
                    }
                }
                self.log(
                    false,
                    format!(
                        "{}: resync to {} started: {} KiB out of sync",
                        self.cfg.volume,
                        self.cfg.peer_name,
                        self.bitmap.dirty_bytes() / 1024
                    ),
                );
                self.pump_resync();
            }
            Direction::Peer => {
                self.resync = Some(Resync::Target {
                    total: self.bitmap.dirty_bytes(),
                });
            }
        }
        self.out.push(Output::Changed);
    }

    fn pump_resync(&mut self) {
        if self.state.peer().repl != ReplState::SyncSource {
            return;
        }
        loop {
            let now = self.now;
            let Some(Resync::Source { plan, .. }) = &mut self.resync else {
                return;
            };
            let Some(request) = plan.next_request(now) else {
                break;
            };
            let mut data = vec![0u8; request.len as usize];
            if self.storage.read(request.offset, &mut data).is_err() {
                self.log(
                    true,
                    format!(
                        "{}: I/O error reading resync data; detaching",
                        self.cfg.volume
                    ),
                );
                self.event(Event::DiskFailed);
                return;
            }
            if let Some(Resync::Source { requests, .. }) = &mut self.resync {
                requests.insert(request.offset, request);
            }
            if self.cfg.checksum_resync {
                // The data goes only if the target's digest differs (it answers InSync or ResyncRequest).
                self.send(Message::ChecksumResyncRequest {
                    offset: request.offset,
                    len: request.len as u32,
                    digest: block_digest(&data),
                });
            } else {
                self.resync_sent += request.len;
                self.send(Message::ResyncData {
                    offset: request.offset,
                    data,
                });
            }
        }
        let finished =
            matches!(&self.resync, Some(Resync::Source { plan, .. }) if plan.is_finished());
        if finished {
            if let Some(Resync::Source { plan, .. }) = self.resync.take() {
                self.bitmap = plan.into_bitmap();
            }
            let _ = self.flush_bitmap_all();
            self.log(
                false,
                format!(
                    "{}: resync to {} finished; sent {} KiB",
                    self.cfg.volume,
                    self.cfg.peer_name,
                    self.resync_sent / 1024
                ),
            );
            self.event(Event::ResyncFinished);
            self.send_state();
            self.out.push(Output::Changed);
        }
    }

    /// Checksum resync: the target's digest differed, so the data goes after all.
    fn resend_resync_data(&mut self, offset: u64, len: u32) {
        let known = matches!(&self.resync, Some(Resync::Source { requests, .. }) if requests.get(&offset).is_some_and(|r| r.len == u64::from(len)));
        if !known {
            return self.close_link(
                wire::DisconnectReason::ProtocolError,
                "resync request for a range not offered".into(),
            );
        }
        let mut data = vec![0u8; len as usize];
        if self.storage.read(offset, &mut data).is_err() {
            self.event(Event::DiskFailed);
            return;
        }
        self.resync_sent += u64::from(len);
        self.send(Message::ResyncData { offset, data });
    }

    fn resync_data(&mut self, offset: u64, data: Vec<u8>) {
        let len = data.len() as u64;
        let len32 = len as u32;
        if !self.state.disk().is_attached() || self.check_range(offset, len).is_err() {
            return self.send(Message::ResyncFailed { offset, len: len32 });
        }
        let ok = self.storage.write(offset, &data).is_ok();
        if !ok {
            // Detach: the new state stops the source's resync (it would only resend into a failing disk).
            self.log(
                true,
                format!(
                    "{}: I/O error writing resync data; detaching",
                    self.cfg.volume
                ),
            );
            self.event(Event::DiskFailed);
        }
        if ok {
            let _ = self.bitmap.clear_blocks(offset / 4096, len.div_ceil(4096));
            self.send(Message::ResyncAck { offset, len: len32 });
        } else {
            self.send(Message::ResyncFailed { offset, len: len32 });
        }
    }

    fn resync_ack(&mut self, offset: u64, _len: u32, ok: bool) {
        if let Some(Resync::Source { plan, requests }) = &mut self.resync {
            if let Some(request) = requests.remove(&offset) {
                if plan.completed(&request, ok).is_err() {
                    return self.close_link(
                        wire::DisconnectReason::ProtocolError,
                        "resync ack for a request not in flight".into(),
                    );
                }
            }
        }
        self.pump_resync();
    }

    fn verify_start(&mut self) -> Result<Option<String>, String> {
        self.try_event(Event::VerifyStart)?;
        Ok(Some(format!(
            "{}: online verify started; differences are marked out of sync, not repaired",
            self.cfg.volume
        )))
    }

    fn pump_verify(&mut self) {
        loop {
            let now = self.now;
            let Some(v) = &mut self.verifying else { return };
            let Some(request) = v.verify.next_request(now) else {
                break;
            };
            v.requests.insert(request.offset, request);
            self.send(Message::VerifyRequest {
                offset: request.offset,
                len: request.len as u32,
            });
        }
        if self
            .verifying
            .as_ref()
            .is_some_and(|v| v.verify.is_finished())
        {
            let Some(v) = self.verifying.take() else {
                return;
            };
            self.verify_out_of_sync = v.verify.out_of_sync_blocks() * 4096;
            let _ = self.flush_bitmap();
            self.log(
                self.verify_out_of_sync > 0,
                format!(
                    "{}: online verify finished: {} KiB out of sync",
                    self.cfg.volume,
                    self.verify_out_of_sync / 1024
                ),
            );
            self.event(Event::VerifyFinished);
            self.send_state();
            self.out.push(Output::Changed);
        }
    }

    fn verify_reply(&mut self, offset: u64, len: u32, peer_digest: [u8; 32]) {
        let Some(request) = self
            .verifying
            .as_mut()
            .and_then(|v| v.requests.remove(&offset))
        else {
            return self.close_link(
                wire::DisconnectReason::ProtocolError,
                "verify reply for a range not asked for".into(),
            );
        };
        if u64::from(len) != request.len {
            return self.close_link(
                wire::DisconnectReason::ProtocolError,
                "verify reply of the wrong length".into(),
            );
        }
        let mut data = vec![0u8; request.len as usize];
        if self.storage.read(offset, &mut data).is_err() {
            self.event(Event::DiskFailed);
            return;
        }
        let ours = block_digest(&data);
        let blocks = request.blocks() as usize;
        let local = vec![ours; blocks];
        // One digest stands for the range: equal, or every block of it is marked.
        let peer = if ours == peer_digest {
            local.clone()
        } else {
            let mut other = ours;
            other[0] ^= 1;
            vec![other; blocks]
        };
        let Some(v) = self.verifying.as_mut() else {
            return;
        };
        if v.verify
            .compare(&request, &local, &peer, &mut self.bitmap)
            .is_err()
        {
            return self.close_link(
                wire::DisconnectReason::ProtocolError,
                "verify reply out of order".into(),
            );
        }
        self.pump_verify();
    }

    // ----- timers -----

    /// The link `id` is dead: closed, and the volume goes on without the peer.
    fn drop_dead_link(&mut self, id: u64, text: String) {
        let why = text
            .strip_prefix(&format!("{}: ", self.cfg.volume))
            .unwrap_or(&text);
        self.link_failed(format!("lost the link: {why}"));
        self.log(true, text);
        self.out.push(Output::Close { link: id });
        self.link = None;
        self.after_link_lost("ping timeout");
    }

    fn tick(&mut self) {
        let now = self.now;
        let mut ping = None;
        let mut dead = None;
        if let Some(link) = self.link.as_mut() {
            if now.saturating_sub(link.heard) > PEER_TIMEOUT {
                dead = Some(link.id);
            } else if now.saturating_sub(link.spoke) >= PING_INTERVAL {
                link.ping_seq += 1;
                ping = Some(link.ping_seq);
            }
        }
        if let Some(id) = dead {
            let text = format!(
                "{}: the peer {} did not answer for {:?}",
                self.cfg.volume, self.cfg.peer_name, PEER_TIMEOUT
            );
            self.drop_dead_link(id, text);
        } else if let Some(seq) = ping {
            self.send(Message::Ping { seq });
        }
        // Protocols A and B: close the epoch now and then, so the transfer log empties as the peer confirms.
        if self.cfg.protocol != ReplicationProtocol::C
            && self.writes_in_epoch > 0
            && self.connected_link().is_some()
        {
            let epoch = self.epoch;
            self.send(Message::Barrier { epoch });
            self.epoch += 1;
            self.writes_in_epoch = 0;
        }
        self.pump_resync();
        self.pump_verify();
        if self.attached && now.saturating_sub(self.last_bitmap_flush) >= BITMAP_FLUSH_INTERVAL {
            self.last_bitmap_flush = now;
            let _ = self.flush_bitmap();
        }
    }

    // ----- state machine actions -----

    fn event(&mut self, event: Event) {
        let name = event.name();
        match self.state.handle(event, &self.scfg) {
            Ok(actions) => self.run_actions(actions),
            Err(StateError::Unexpected { .. }) => {}
            Err(e) => self.log(true, format!("{}: {name}: {e}", self.cfg.volume)),
        }
    }

    // ----- the lease (SPEC invariant 8) -----

    fn lease_valid(&self) -> bool {
        match self.lease {
            Lease::NotEnforced => true,
            Lease::Until(until) => self.now < until,
        }
    }

    /// A connected peer with a disk receives (and acknowledges) this node's writes.
    fn peer_stores_writes(&self) -> bool {
        self.connected_link().is_some() && self.state.peer().disk.is_attached()
    }

    /// Whether this node may complete I/O without the peer now. A Primary without a lease holds I/O from here on
    /// (the state machine's `LeaseLapsed`), and says so once.
    fn alone_allowed(&mut self) -> bool {
        if self.state.role() != Role::Primary || self.lease_valid() {
            return true;
        }
        if !self.state.lease_hold() {
            self.log(
                true,
                format!(
                    "{}: this Primary's lease from the cluster has run out (the node was frozen or paused, or cut \
                     off from its peer and the witness): I/O is held and nothing is acknowledged without the peer \
                     until the cluster renews the lease or demotes this node",
                    self.cfg.volume
                ),
            );
            self.event(Event::LeaseLapsed);
            self.out.push(Output::LeaseLapsed);
        }
        false
    }

    /// Delivers a completion that did not wait for the peer, or holds it while I/O is held for the lease.
    fn complete_alone(&mut self, done: Output) {
        if self.state.lease_hold() {
            self.held.push(done);
        } else {
            self.out.push(done);
        }
    }

    /// Held completions go out once the lease is back (the generation they need is on disk by then); a node
    /// demoted meanwhile fails them: it never acknowledges them.
    fn settle_held(&mut self) {
        if self.held.is_empty() || self.state.lease_hold() {
            return;
        }
        let primary = self.state.role() == Role::Primary;
        for done in std::mem::take(&mut self.held) {
            if primary {
                self.out.push(done);
                continue;
            }
            let e = IoFailure::NotAvailable(format!(
                "{}: demoted while the request waited for the lease; it was not acknowledged",
                self.cfg.volume
            ));
            self.out.push(match done {
                Output::WriteDone { id, .. } => Output::WriteDone { id, result: Err(e) },
                Output::FlushDone { id, .. } => Output::FlushDone { id, result: Err(e) },
                Output::ReservationsStored { id, .. } => {
                    Output::ReservationsStored { id, result: Err(e) }
                }
                other => other,
            });
        }
    }

    fn run_actions(&mut self, actions: Vec<Action>) {
        for action in actions {
            self.run_action(action);
        }
        self.follow_replication_state();
        self.settle_held();
        self.out.push(Output::Changed);
    }

    /// A resync or verify the state machine ended (the peer's disk went away, the link closed, ...) ends here
    /// too; a source's plan gives its bitmap back, so no block it still knew to be out of sync is forgotten.
    fn follow_replication_state(&mut self) {
        let repl = self.state.peer().repl;
        let resyncing = matches!(
            repl,
            ReplState::SyncSource
                | ReplState::SyncTarget
                | ReplState::PausedSyncS
                | ReplState::PausedSyncT
        );
        if !resyncing {
            if let Some(Resync::Source { plan, .. }) = self.resync.take() {
                self.bitmap = plan.into_bitmap();
            }
            self.bitmap_in = None;
        }
        if repl != ReplState::VerifyS {
            self.verifying = None;
        }
    }

    fn run_action(&mut self, action: Action) {
        match action {
            Action::NewCurrentUuid { clear_bitmap } => {
                let fresh = self.random();
                if clear_bitmap {
                    self.gen.clear_bitmap(fresh);
                    self.bitmap.clear_all();
                    let _ = self.flush_bitmap_all();
                } else {
                    self.gen.new_current_uuid(fresh);
                }
                self.write_superblock();
                // A connected peer learns the new generation at once (DRBD sends its UUIDs again): it is what a
                // resync target takes as its own when the resync ends, and what the next handshake compares.
                if self.link.as_ref().is_some_and(|l| l.phase.is_up()) && !clear_bitmap {
                    self.send_uuids(false);
                }
            }
            Action::SetRoleMarker(role) => {
                self.gen.set_role(role);
                self.write_superblock();
            }
            Action::CompleteResync { source } => {
                match source {
                    Direction::Local => self.gen.finish_resync_as_source(),
                    Direction::Peer => {
                        if let Some(p) = self.peer_gen {
                            self.gen.finish_resync_as_target(&p);
                        }
                        self.served = None;
                    }
                }
                self.write_superblock();
            }
            Action::PersistFlags(flags) => {
                let al_clean = self.sb.flags.al_clean;
                self.sb.flags = Flags { al_clean, ..flags };
                self.write_superblock();
            }
            Action::SendState => self.send_state(),
            Action::ExchangeGenerations => {
                // Started here; one the peer started (or this node answered already) needs nothing more.
                let Some(l) = self.link.as_mut().filter(|l| matches!(l.phase, Phase::Up)) else {
                    return;
                };
                // A peer before protocol 5 takes this `Sizes` as a protocol error and closes the link: the two
                // then exchange at the reconnect, as that release did.
                let live = l.version.is_some_and(|v| v.speaks(Feature::LiveReexchange));
                l.phase = if live {
                    Phase::Reexchange(PeerInfo::default())
                } else {
                    Phase::Exchange(PeerInfo::default())
                };
                self.send_exchange();
            }
            Action::RequestPromotion => self.send(Message::PromoteRequest),
            Action::GrantPromotion => self.send(Message::PromoteReply { granted: true }),
            Action::RefusePromotion => self.send(Message::PromoteReply { granted: false }),
            Action::PromoteFailed(e) => {
                if let Some(id) = self.pending_promotion.take() {
                    self.out.push(Output::AdminDone {
                        id,
                        result: Err(e.to_string()),
                    });
                }
            }
            Action::Connect => {}
            Action::Disconnect { reason } => {
                let wire_reason = match reason {
                    crate::state::DisconnectReason::Admin => wire::DisconnectReason::Operator,
                    crate::state::DisconnectReason::SplitBrain => {
                        wire::DisconnectReason::SplitBrain
                    }
                    crate::state::DisconnectReason::UnrelatedData => {
                        wire::DisconnectReason::UnrelatedData
                    }
                    _ => wire::DisconnectReason::Incompatible,
                };
                if reason == crate::state::DisconnectReason::Admin {
                    self.last_error = None;
                } else {
                    let why = match wire_reason {
                        wire::DisconnectReason::SplitBrain
                        | wire::DisconnectReason::UnrelatedData => wire_reason.to_string(),
                        _ => reason.to_string(),
                    };
                    self.link_failed(format!("disconnected from {}: {why}", self.cfg.peer_name));
                }
                if let Some(link) = self.link.as_ref() {
                    let id = link.id;
                    self.send_on(
                        id,
                        Message::Disconnect {
                            reason: wire_reason,
                        },
                    );
                    self.out.push(Output::Close { link: id });
                }
                self.log(
                    true,
                    format!(
                        "{}: disconnecting from {}: {reason}",
                        self.cfg.volume, self.cfg.peer_name
                    ),
                );
            }
            Action::StartResync { source, full } => {
                if let Some(Resync::Source { plan, .. }) = self.resync.take() {
                    self.bitmap = plan.into_bitmap();
                }
                if full {
                    self.bitmap.set_all();
                }
                self.send_state();
                self.begin_resync(source);
            }
            Action::PauseResync | Action::ResumeResync => {}
            Action::StartVerify => {
                let config = ResyncConfig {
                    max_request_bytes: VERIFY_REQUEST,
                    max_in_flight: 32,
                    rate: self.cfg.resync.rate,
                };
                match Verify::new(self.sb.data_size, config, self.now) {
                    Ok(verify) => {
                        self.verifying = Some(Verifying {
                            verify,
                            requests: BTreeMap::new(),
                        });
                        self.verify_out_of_sync = 0;
                        self.send_state();
                        self.pump_verify();
                    }
                    Err(e) => self.log(true, format!("{}: verify: {e}", self.cfg.volume)),
                }
            }
            Action::SendSkipInitialSync => self.send_uuids(true),
            Action::SuspendIo => {}
            Action::ResumeIo => {
                let queued: Vec<_> = self.suspended_queue.drain(..).collect();
                let now = self.now;
                for input in queued {
                    self.handle(input, now);
                }
            }
            Action::FencePeer => {
                self.log(
                    true,
                    format!(
                        "{}: fencing {}: writes are suspended until the cluster marks it Outdated",
                        self.cfg.volume, self.cfg.peer_name
                    ),
                );
                self.out.push(Output::FencePeer {
                    generations: self.gen,
                });
            }
            Action::Detach => self.close_disk(),
            Action::ReportSplitBrain { kind, resolution } => {
                self.log(
                    true,
                    format!(
                        "{}: split brain detected with {} ({kind:?}); {resolution:?}",
                        self.cfg.volume, self.cfg.peer_name
                    ),
                );
                self.out.push(Output::SplitBrain);
            }
            Action::PriLostAfterSplitBrain => {
                self.log(
                    true,
                    format!(
                        "{}: this Primary lost the split brain and cannot discard the data it serves; running the \
                         pri-lost-after-sb handler (demote it, then reconnect)",
                        self.cfg.volume
                    ),
                );
                self.out.push(Output::PriLostAfterSplitBrain);
            }
        }
    }

    fn send_state(&mut self) {
        let repl = map_repl(self.state.peer().repl);
        self.send(Message::State {
            role: self.state.role(),
            disk: unmap_disk(self.state.disk()),
            replication: repl,
        });
    }

    // ----- disk metadata -----

    fn write_superblock(&mut self) {
        if !self.attached {
            // No disk: the generations live in memory; an attach reads the disk's own.
            return;
        }
        self.sb.current_uuid = self.gen.current;
        self.sb.bitmap_uuid = self.gen.bitmap;
        self.sb.history_uuids = self.gen.history;
        self.sb.sequence += 1;
        let slot = self.sb.slot();
        let region = self.layout.superblocks[slot];
        let bytes = self.sb.encode();
        if self.storage.write_meta(region.offset, &bytes).is_err() {
            self.log(
                true,
                format!("{}: I/O error writing the superblock", self.cfg.volume),
            );
            if self.attached {
                self.event(Event::DiskFailed);
            }
        }
    }

    fn flush_bitmap(&mut self) -> io::Result<()> {
        let pages: Vec<u64> = match &self.resync {
            Some(Resync::Source { plan, .. }) => plan.bitmap().unflushed_pages().collect(),
            _ => self.bitmap.unflushed_pages().collect(),
        };
        if pages.is_empty() {
            return Ok(());
        }
        // A bit cleared on disk says the block is in sync: the data that made it so must be durable first.
        self.storage.flush()?;
        for page in pages {
            let bytes = match &self.resync {
                Some(Resync::Source { plan, .. }) => plan.bitmap().page_bytes(page),
                _ => self.bitmap.page_bytes(page),
            }
            .map_err(|e| io::Error::other(e.to_string()))?;
            let offset = self.layout.bitmap.offset + page * PAGE_BYTES as u64;
            let image = DirtyBitmap::image_bytes(self.sb.data_size) as u64;
            let len = (image - page * PAGE_BYTES as u64).min(PAGE_BYTES as u64) as usize;
            self.storage.write_meta(offset, &bytes[..len])?;
        }
        match &mut self.resync {
            Some(Resync::Source { plan, .. }) => plan.mark_bitmap_flushed(),
            _ => self.bitmap.mark_flushed(),
        }
        Ok(())
    }

    fn flush_bitmap_all(&mut self) -> io::Result<()> {
        if self.attached {
            self.storage.flush()?;
        }
        let bytes = match &self.resync {
            Some(Resync::Source { plan, .. }) => plan.bitmap().to_bytes(),
            _ => self.bitmap.to_bytes(),
        };
        self.storage.write_meta(self.layout.bitmap.offset, &bytes)?;
        self.bitmap.mark_flushed();
        Ok(())
    }

    // ----- helpers -----

    fn send(&mut self, message: Message) {
        if let Some(link) = self.link.as_mut() {
            link.spoke = self.now;
            let id = link.id;
            self.out.push(Output::Send { link: id, message });
        }
    }

    fn send_on(&mut self, link: u64, message: Message) {
        self.out.push(Output::Send { link, message });
    }

    fn log(&mut self, warn: bool, text: String) {
        self.out.push(Output::Log { warn, text });
    }

    /// splitmix64: the generator of generation UUIDs, seeded by the driver from the OS.
    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn map_disk(d: wire::DiskState) -> DiskState {
    match d {
        wire::DiskState::Diskless => DiskState::Diskless,
        wire::DiskState::Attaching => DiskState::Attaching,
        wire::DiskState::Failed => DiskState::Failed,
        wire::DiskState::Inconsistent => DiskState::Inconsistent,
        wire::DiskState::Outdated => DiskState::Outdated,
        wire::DiskState::Consistent => DiskState::Consistent,
        wire::DiskState::UpToDate => DiskState::UpToDate,
    }
}

fn unmap_disk(d: DiskState) -> wire::DiskState {
    match d {
        DiskState::Diskless | DiskState::DUnknown => wire::DiskState::Diskless,
        DiskState::Attaching => wire::DiskState::Attaching,
        DiskState::Failed => wire::DiskState::Failed,
        DiskState::Inconsistent => wire::DiskState::Inconsistent,
        DiskState::Outdated => wire::DiskState::Outdated,
        DiskState::Consistent => wire::DiskState::Consistent,
        DiskState::UpToDate => wire::DiskState::UpToDate,
    }
}

fn map_repl(r: ReplState) -> WireRepl {
    match r {
        ReplState::Off => WireRepl::Off,
        ReplState::Established => WireRepl::Established,
        ReplState::SyncSource => WireRepl::SyncSource,
        ReplState::SyncTarget => WireRepl::SyncTarget,
        ReplState::PausedSyncS => WireRepl::PausedSyncSource,
        ReplState::PausedSyncT => WireRepl::PausedSyncTarget,
        ReplState::VerifyS => WireRepl::VerifySource,
        ReplState::VerifyT => WireRepl::VerifyTarget,
    }
}
