//! The driver of one replicated volume: the engine behind a lock, run by whichever thread holds it, and the
//! [`BlockDevice`] the SCSI layer writes through.
//!
//! ```text
//!  SCSI Write (connection task) ── queue ─┐ (taken by the next lock holder)
//!  SCSI Flush, slow Read (blocking pool) ─┤
//!  admin socket ──────────Admin───────────┤
//!  receiver thread (per connection) ──────┼──▶ lock(engine).handle(input) ──▶ frames: send(MSG_DONTWAIT) on the
//!  connector/acceptor ────LinkUp──────────┤                                    socket, the rest queued to the
//!  engine thread ─────Tick, queued writes─┘                                    connection's sender thread
//!                                                   └──▶ completions, status snapshot, events
//! ```
//! The engine is a state machine that makes every decision in the order its inputs arrive; a lock gives it
//! that order. Frames go straight to the socket while it takes them; when it does not, they queue (in order)
//! for the connection's sender thread. Nothing under the lock waits for the network; the disk calls of the
//! engine take time there — pwrite, the activity log's O_DSYNC commits, bitmap flushes, fdatasync for FUA.
//! Connections' tasks (tokio workers) therefore never take the lock: a write is queued
//! (`SubmissionQueue`) and run by the next thread that holds the lock — the receiver thread, which takes the
//! queue with every batch of acknowledgements under load, or the engine thread, woken by the first write queued
//! (and every `TICK` for the engine's tick). Reads that the page cache serves (Primary with an UpToDate disk)
//! go to the data file directly, without the lock.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, IoSlice, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tracing::{error, info, warn};
use twinsan_replication::engine::{
    write_zeroes, AdminCommand, Engine, EngineConfig, Input, IoFailure, Lease, Output, Status,
    Storage, MAX_REQUEST,
};
use twinsan_replication::generation::{GenerationIds, Role};
use twinsan_replication::metadata::{self, Layout, Placement, RESERVATIONS_CAPACITY};
use twinsan_replication::wire::{self, FrameDecoder};
use twinsan_scsi::BlockDevice;
use twinsan_target::stats::{DurationHistogram, HistogramSnapshot};
use twinsan_target::{BackingClaim, TargetError};

use crate::api;
use crate::cluster::backoff::RETRY;

/// How often the engine's timers run.
const TICK: Duration = Duration::from_millis(100);
/// The receiver's read buffer to begin with; it grows to hold a whole payload (at most `max_payload_for
/// (MAX_REQUEST)` bytes) when one is bigger, and keeps that size.
const READ_BUFFER: usize = 256 << 10;
/// The least room the receiver gives a read.
const READ_MIN: usize = 64 << 10;

/// The files of one volume on this node.
#[derive(Clone, Debug)]
pub struct DiskPaths {
    /// The data file or device.
    pub data: PathBuf,
    /// External metadata, or `None` for internal.
    pub meta: Option<PathBuf>,
    /// The volume uuid the config gives: the metadata must carry it.
    pub volume_uuid: u128,
}

/// A volume's files claimed for this process (SPEC 3, invariant 9): the data and any external metadata, claimed
/// before anything reads or writes them and held as long as the volume's storage is open.
#[derive(Debug)]
pub struct ClaimedDisk {
    paths: DiskPaths,
    _data: BackingClaim,
    _meta: Option<BackingClaim>,
}

impl ClaimedDisk {
    /// Claims the files of `paths`; [`VolumeError::InUse`] names the one another process holds, and its pid.
    pub fn claim(paths: DiskPaths) -> Result<ClaimedDisk, VolumeError> {
        let claim = |path: &Path| {
            BackingClaim::acquire(path).map_err(|error| match error {
                TargetError::Backing { path, source } => VolumeError::Io { path, source },
                error => VolumeError::InUse(error),
            })
        };
        Ok(ClaimedDisk {
            _data: claim(&paths.data)?,
            _meta: paths.meta.as_deref().map(claim).transpose()?,
            paths,
        })
    }

    /// The files claimed.
    pub fn paths(&self) -> &DiskPaths {
        &self.paths
    }
}

/// Why a volume could not be started.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Another process holds the data or metadata file: another `twinsan node run` for this node, a `twinsan
    /// serve`, or a mount of the block device. Nothing was read or written.
    #[error("{0}")]
    InUse(TargetError),
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The metadata is missing, corrupt or does not fit.
    #[error("{path}: {why}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The metadata belongs to another volume.
    #[error(
        "the disk {path} belongs to volume uuid {on_disk:032x}, but the config gives uuid {expected:032x}: a wrong \
         disk or a wrong config; nothing was changed"
    )]
    WrongVolume {
        /// The data file or device.
        path: PathBuf,
        /// The uuid in its metadata.
        on_disk: u128,
        /// The uuid the config gives.
        expected: u128,
    },
}

/// The local disk: data and metadata files. Metadata writes are durable on return (O_DSYNC); data writes are
/// made durable by [`Storage::flush`] (fdatasync).
pub struct FileStorage {
    /// `None` once the engine released the disk (detached): the files are closed and the claim ended.
    open: Option<DiskFiles>,
}

struct DiskFiles {
    data: File,
    meta: File,
    /// The metadata is on its own device (the `meta` file), not at the end of `data`.
    external: bool,
    /// No other process has these files while the storage is open.
    _disk: ClaimedDisk,
}

impl FileStorage {
    fn files(&self) -> io::Result<&DiskFiles> {
        self.open
            .as_ref()
            .ok_or_else(|| io::Error::other("the disk is detached"))
    }
}

impl Storage for FileStorage {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.files()?.data.read_exact_at(buf, offset)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.files()?.data.write_all_at(data, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.files()?.data.sync_data()
    }
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if twinsan_target::punch_hole(&self.files()?.data, offset, len).is_ok() {
            return Ok(());
        }
        // A filesystem or device that cannot deallocate still reads zeros after this.
        write_zeroes(self, offset, len)
    }
    fn read_meta(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.files()?.meta.read_exact_at(buf, offset)
    }
    fn write_meta(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.files()?.meta.write_all_at(data, offset)
    }
    fn release(&mut self) {
        self.open = None;
    }
    fn current_sizes(&mut self) -> io::Result<(u64, Placement)> {
        let size = |file: &File| {
            device_size(file, Path::new("")).map_err(|e| match e {
                VolumeError::Io { source, .. } => source,
                other => io::Error::other(other.to_string()),
            })
        };
        let files = self.files()?;
        let backing = size(&files.data)?;
        let placement = if files.external {
            Placement::External {
                device_size: size(&files.meta)?,
            }
        } else {
            Placement::Internal
        };
        Ok((backing, placement))
    }
}

fn open_rw(path: &Path, flags: i32) -> Result<File, VolumeError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|source| VolumeError::Io {
            path: path.into(),
            source,
        })
}

/// Size of a file or block device.
pub fn device_size(file: &File, path: &Path) -> Result<u64, VolumeError> {
    let io = |source| VolumeError::Io {
        path: path.into(),
        source,
    };
    let meta = file.metadata().map_err(io)?;
    if meta.file_type().is_file() {
        return Ok(meta.len());
    }
    twinsan_target::block_device_size(file).map_err(io)
}

/// Opens the volume's files, claimed for this process, and reads its superblock: the layout, the chosen
/// superblock and the storage (which keeps the claim).
pub fn open_disk(
    disk: ClaimedDisk,
) -> Result<(FileStorage, Layout, metadata::Superblock), VolumeError> {
    let paths = &disk.paths;
    let data = open_rw(&paths.data, 0)?;
    let backing = device_size(&data, &paths.data)?;
    let (meta, placement, meta_path) = match &paths.meta {
        None => (
            open_rw(&paths.data, libc::O_DSYNC)?,
            Placement::Internal,
            paths.data.clone(),
        ),
        Some(p) => {
            let f = open_rw(p, libc::O_DSYNC)?;
            let size = device_size(&f, p)?;
            (f, Placement::External { device_size: size }, p.clone())
        }
    };
    let bad = |why: String| VolumeError::Metadata {
        path: meta_path.clone(),
        why,
    };
    // Where `Layout::compute` puts it, or where a grow that was not (or not completely) followed by `volume
    // resize` left it.
    let (layout, chosen) = metadata::locate(backing, placement, |offset, buf| {
        meta.read_exact_at(buf, offset)
    })
    .map_err(|e| {
        bad(format!(
            "{e}; the metadata was left as it is (run `twinsan volume create-md --force` only to start this copy over)"
        ))
    })?;
    if let Some(why) = &chosen.other {
        warn!(path = %meta_path.display(), "superblock slot {} unusable ({why}); using slot {}", 1 - chosen.slot, chosen.slot);
    }
    if layout.metadata.end() < Layout::compute(backing, placement).map_or(0, |l| l.metadata.end()) {
        info!(path = %meta_path.display(), data_size = chosen.superblock.data_size,
            "the backing device grew; the metadata is still at its old place until `twinsan volume resize`");
    }
    // Checked before anything is written to the disk.
    if chosen.superblock.volume_uuid != paths.volume_uuid {
        return Err(VolumeError::WrongVolume {
            path: paths.data.clone(),
            on_disk: chosen.superblock.volume_uuid,
            expected: paths.volume_uuid,
        });
    }
    Ok((
        FileStorage {
            open: Some(DiskFiles {
                data,
                meta,
                external: matches!(placement, Placement::External { .. }),
                _disk: disk,
            }),
        },
        layout,
        chosen.superblock,
    ))
}

/// Shell commands run on volume events (DRBD's handlers).
#[derive(Clone, Debug, Default)]
pub struct Handlers {
    /// On a split brain found on connect.
    pub split_brain: Option<String>,
    /// On a Primary that lost a split brain.
    pub pri_lost_after_sb: Option<String>,
    /// Resource-level fencing without twinsan's cluster manager (manual mode, DRBD's `fence-peer`, e.g. the
    /// `fence-peer` action of the Pacemaker agent): run when the peer must be marked Outdated; exit status 0
    /// means it is (writes resume), anything else that it is not (writes stay suspended).
    pub fence_peer: Option<String>,
    /// Undoes `fence_peer` (DRBD's `unfence-peer`): run when both copies are UpToDate and connected again.
    pub unfence_peer: Option<String>,
}

/// A fencing handler's job, run in order on the volume's handler thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FenceJob {
    Fence,
    Unfence,
}

/// Where the peer is and who connects to whom.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// This node's replication address (listened on by the node with the higher id).
    pub local: SocketAddr,
    /// The peer's replication address (dialled by the node with the lower id).
    pub peer: SocketAddr,
    /// This node dials (lower node id).
    pub dial: bool,
}

enum Reply {
    Write(SyncSender<Result<(), IoFailure>>),
    /// A submitted write: called with the result.
    Submitted(twinsan_scsi::WriteDone),
    Read(SyncSender<Result<Vec<u8>, IoFailure>>),
    Admin(SyncSender<Result<Option<String>, String>>),
    Reservations(SyncSender<Result<(), IoFailure>>),
}

/// An application write handed over by a connection's task (which never takes the engine's lock): the engine
/// thread runs it. A submission that is dropped unanswered (the volume stopped first) fails its write.
struct Submission {
    id: u64,
    input: Option<Input>,
    done: Option<twinsan_scsi::WriteDone>,
}

impl Drop for Submission {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(Err(io::Error::other("the volume is stopping")));
        }
    }
}

#[derive(Default)]
struct SubmissionQueue {
    queued: Vec<Submission>,
    /// The volume stopped: nothing is queued any more (a late submission fails at once).
    closed: bool,
}

/// Request ids of submissions: a range of their own, so they never meet the ids the lock holders take.
const SUBMISSION_IDS: u64 = 1 << 62;

enum ToSender {
    /// Frame bytes the socket did not take at once, in order (a `Data` frame's data by reference).
    Frame(Bytes),
    Close,
}

/// The frames for one connection that one lock hold sends together, kept in [`Core`] so its buffers keep their
/// capacity: every byte in `small`, except the data of `Data` frames, which stays where it is (the
/// application's buffer) and is sent by reference: `(at, data)` goes before `small[at..]`.
#[derive(Default)]
struct FrameBatch {
    link: u64,
    small: Vec<u8>,
    bulk: Vec<(usize, Bytes)>,
}

/// Most pieces one `sendmsg` of a [`FrameBatch`] takes (two per `Data` frame); more go in the next call.
const MAX_IOV: usize = 64;

/// A stretch of a [`FrameBatch`]'s bytes.
enum Piece<'a> {
    Small(&'a [u8]),
    Bulk(&'a Bytes),
}

impl<'a> Piece<'a> {
    /// The piece's bytes, borrowed from the batch (not from the piece), so a send can keep them.
    fn bytes(&self) -> &'a [u8] {
        match *self {
            Piece::Small(b) => b,
            Piece::Bulk(b) => b,
        }
    }
}

impl FrameBatch {
    fn is_empty(&self) -> bool {
        self.small.is_empty() && self.bulk.is_empty()
    }

    fn len(&self) -> usize {
        self.small.len() + self.bulk.iter().map(|(_, data)| data.len()).sum::<usize>()
    }

    /// Encodes `message` for connection `link`; the caller sent what the batch held for another link first.
    fn add(&mut self, link: u64, message: wire::Message) {
        self.link = link;
        if let Some((at, data)) = wire::encode_split(message, &mut self.small) {
            self.bulk.push((at, data));
        }
    }

    /// The batch's bytes in order, without empty pieces.
    fn pieces(&self) -> impl Iterator<Item = Piece<'_>> {
        let mut from = 0;
        let last = self.bulk.last().map_or(0, |(at, _)| *at);
        self.bulk
            .iter()
            .flat_map(move |(at, data)| {
                let small = &self.small[from..*at];
                from = *at;
                [Piece::Small(small), Piece::Bulk(data)]
            })
            .chain([Piece::Small(&self.small[last..])])
            .filter(|piece| !piece.bytes().is_empty())
    }

    /// The pieces after the first `skip` bytes, as at most `iov.len()` slices; returns how many it filled.
    fn slices_after<'a>(&'a self, mut skip: usize, iov: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        for piece in self.pieces() {
            if filled == iov.len() {
                break;
            }
            let bytes = piece.bytes();
            if skip >= bytes.len() {
                skip -= bytes.len();
                continue;
            }
            iov[filled] = IoSlice::new(&bytes[skip..]);
            skip = 0;
            filled += 1;
        }
        filled
    }

    /// The bytes after the first `skip`, for the sender thread: small bytes copied, data by reference.
    fn rest_after(&self, mut skip: usize) -> Vec<Bytes> {
        let mut rest = Vec::new();
        for piece in self.pieces() {
            let len = piece.bytes().len();
            if skip >= len {
                skip -= len;
                continue;
            }
            rest.push(match piece {
                Piece::Small(b) => Bytes::copy_from_slice(&b[skip..]),
                Piece::Bulk(b) => b.slice(skip..),
            });
            skip = 0;
        }
        rest
    }

    fn clear(&mut self) {
        self.small.clear();
        self.bulk.clear();
    }
}

/// One open connection's sending side.
struct OpenLink {
    /// The socket, for sends that must not block (`MSG_DONTWAIT`).
    stream: TcpStream,
    /// The sender thread's queue, for what the socket did not take at once.
    queue: Sender<ToSender>,
    /// Bytes queued for the sender thread and not yet written: while non-zero, everything queues (order).
    backlog: Arc<AtomicUsize>,
}

/// The open connections by id: the engine's link, and any new connection it has not yet accepted or refused (a
/// stray one never displaces the live link; the engine decides).
#[derive(Default)]
struct LinkSlot {
    open: HashMap<u64, OpenLink>,
}

/// The engine and what waits on it.
struct Core {
    engine: Engine<FileStorage>,
    replies: HashMap<u64, Reply>,
    next_id: u64,
    stopped: bool,
    /// The lease last given to the engine ([`Volume::lease_until_ns`]).
    lease_fed: u64,
    /// Frames being gathered for one send ([`Volume::process_once`]).
    frames: FrameBatch,
    /// The engine's outputs being carried out, and the submissions being handed to it: kept for their capacity.
    outputs: Vec<Output>,
    submissions: Vec<Submission>,
}

/// What the rest of the daemon sees of a running volume.
pub struct Volume {
    name: String,
    peer_name: String,
    core: Mutex<Core>,
    status: Mutex<Status>,
    events: tokio::sync::broadcast::Sender<api::EventLine>,
    /// Bytes of data, as the SCSI layer sees them; grows with an online resize.
    size: AtomicU64,
    uuid: u128,
    reads_local: AtomicBool,
    /// The data file for a Primary's reads straight from its UpToDate disk; replaced when a disk is attached.
    read_file: RwLock<Option<Arc<File>>>,
    /// The volume's files, opened again by `volume attach`.
    paths: DiskPaths,
    wants_link: AtomicBool,
    /// Connections open (the dialler dials only when there is none).
    links_open: AtomicUsize,
    stop: AtomicBool,
    links: Mutex<LinkSlot>,
    next_link: AtomicU64,
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
    /// Application writes submitted by connections' tasks, for whichever thread holds the engine's lock next
    /// ([`Volume::process`]); the engine thread ([`Volume::engine_loop`]) waits on `submitted` for them.
    submissions: Mutex<SubmissionQueue>,
    submitted: std::sync::Condvar,
    next_submission: AtomicU64,
    handlers: Handlers,
    /// Where resource-only fencing requests go (the cluster manager, or the fence-peer handler in manual mode);
    /// without one a fence fails.
    fencer: Mutex<Option<Fencer>>,
    /// The queue of the thread that runs the fence-peer and unfence-peer handlers one after the other (when
    /// either is configured).
    fence_jobs: Mutex<Option<Sender<FenceJob>>>,
    /// When the established replication link was last closed or reset from the peer's side (its process or
    /// host went away, or it disconnected): evidence for the cluster's early loss detection.
    peer_closed_at: Mutex<Option<Instant>>,
    /// The engine's clock origin: every `now` given to the engine is the time since.
    epoch: Instant,
    /// The cluster's lease for this volume, in nanoseconds of the engine's clock: [`LEASE_NOT_ENFORCED`] without
    /// a cluster manager. Set by the cluster without taking the core lock (which disk I/O may hold); the engine
    /// gets it with its next input. It only grows, so a late delivery is a shorter lease, never a longer one.
    lease_until_ns: AtomicU64,
    /// Why this node cannot connect to the peer or listen for it now (the engine knows why a connection failed).
    link_error: Mutex<Option<String>>,
    /// How many times the link got established: the dialler backs off from connections that never do.
    established: AtomicU64,
    /// Bytes of frames handed to the replication link (sent at once or queued for the sender thread), and bytes
    /// read from it: the metrics' replication traffic.
    sent_bytes: AtomicU64,
    received_bytes: AtomicU64,
    /// How long replicated writes waited for the peer's acknowledgement (the engine reports each).
    ack_durations: Arc<DurationHistogram>,
}

/// [`Volume::lease_until_ns`] when no cluster manager enforces leases (manual mode).
const LEASE_NOT_ENFORCED: u64 = u64::MAX;

/// Takes a fence request: the volume and this node's generation identifiers. It must not block (it runs under
/// the volume's lock); the answer comes back through [`Volume::fence_result`].
pub type Fencer = Arc<dyn Fn(&str, GenerationIds) + Send + Sync>;

impl Volume {
    /// Starts the volume: its timer and link threads. The disk, claimed for this process, is attached and the
    /// volume starts connecting to its peer.
    pub fn start(
        name: &str,
        peer_name: &str,
        engine_config: EngineConfig,
        disk: ClaimedDisk,
        link: LinkConfig,
        handlers: Handlers,
        events: tokio::sync::broadcast::Sender<api::EventLine>,
    ) -> Result<Arc<Volume>, VolumeError> {
        let paths = disk.paths().clone();
        let (storage, layout, sb) = open_disk(disk)?;
        let read_file = File::open(&paths.data).map_err(|source| VolumeError::Io {
            path: paths.data.clone(),
            source,
        })?;
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| VolumeError::Io {
            path: paths.data.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        let mut engine = Engine::open(
            engine_config,
            storage,
            layout,
            sb,
            u64::from_le_bytes(seed),
            Duration::ZERO,
        )
        .map_err(|e| VolumeError::Metadata {
            path: paths.meta.clone().unwrap_or_else(|| paths.data.clone()),
            why: e.to_string(),
        })?;
        // The process starting is this copy's power-on: SCSI registrations made without APTPL end here (SPC-4
        // 5.13.5). A node that rejoins a peer still serving gets the live state back when it connects; a whole
        // cluster restarted keeps only what asked to persist through power loss.
        let at_power_on = twinsan_scsi::reservations_after_power_loss(engine.reservations());
        if at_power_on != engine.reservations() {
            engine
                .set_local_reservations(at_power_on)
                .map_err(|e| VolumeError::Metadata {
                    path: paths.meta.clone().unwrap_or_else(|| paths.data.clone()),
                    why: e.to_string(),
                })?;
        }
        // Bring it up: connect.
        engine.handle(
            Input::Admin {
                id: 0,
                command: AdminCommand::Up,
            },
            Duration::ZERO,
        );
        let ack_durations = Arc::new(DurationHistogram::default());
        {
            let acks = ack_durations.clone();
            engine.observe_acks(Box::new(move |waited| acks.observe(waited)));
        }
        let status = engine.status();
        let (size, uuid) = (engine.data_size(), engine.volume_uuid());
        let epoch = Instant::now();
        let volume = Arc::new(Volume {
            name: name.to_owned(),
            peer_name: peer_name.to_owned(),
            core: Mutex::new(Core {
                engine,
                replies: HashMap::new(),
                next_id: 1,
                stopped: false,
                lease_fed: LEASE_NOT_ENFORCED,
                frames: FrameBatch::default(),
                outputs: Vec::new(),
                submissions: Vec::new(),
            }),
            status: Mutex::new(status),
            events,
            size: AtomicU64::new(size),
            uuid,
            reads_local: AtomicBool::new(false),
            read_file: RwLock::new(Some(Arc::new(read_file))),
            paths: paths.clone(),
            wants_link: AtomicBool::new(false),
            links_open: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            links: Mutex::new(LinkSlot::default()),
            next_link: AtomicU64::new(1),
            threads: Mutex::new(Vec::new()),
            submissions: Mutex::new(SubmissionQueue::default()),
            submitted: std::sync::Condvar::new(),
            next_submission: AtomicU64::new(SUBMISSION_IDS),
            handlers,
            fencer: Mutex::new(None),
            fence_jobs: Mutex::new(None),
            peer_closed_at: Mutex::new(None),
            epoch,
            lease_until_ns: AtomicU64::new(LEASE_NOT_ENFORCED),
            link_error: Mutex::new(None),
            established: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            ack_durations,
        });
        volume.start_fence_handlers()?;
        volume.with_core(|_| None);
        let v = volume.clone();
        let timer_thread = thread::Builder::new()
            .name(format!("{name}-engine"))
            .spawn(move || v.engine_loop())
            .map_err(|source| VolumeError::Io {
                path: paths.data.clone(),
                source,
            })?;
        let v = volume.clone();
        let link_thread = thread::Builder::new()
            .name(format!("{name}-link"))
            .spawn(move || v.link_loop(link))
            .map_err(|source| VolumeError::Io {
                path: paths.data.clone(),
                source,
            })?;
        volume.lock_threads().extend([timer_thread, link_thread]);
        Ok(volume)
    }

    fn lock_threads(&self) -> std::sync::MutexGuard<'_, Vec<thread::JoinHandle<()>>> {
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_links(&self) -> std::sync::MutexGuard<'_, LinkSlot> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The volume's UUID (the LUN identity derives from it).
    pub fn uuid(&self) -> u128 {
        self.uuid
    }

    /// The status now.
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The peer node's name.
    pub fn peer_name(&self) -> &str {
        &self.peer_name
    }

    /// Bytes handed to the replication link and read from it since the volume started: (sent, received).
    pub fn link_traffic(&self) -> (u64, u64) {
        (
            self.sent_bytes.load(Ordering::Relaxed),
            self.received_bytes.load(Ordering::Relaxed),
        )
    }

    /// How long replicated writes waited for the peer's acknowledgement.
    pub fn ack_durations(&self) -> HistogramSnapshot {
        self.ack_durations.snapshot()
    }

    /// True if this node is Primary for the volume.
    pub fn is_primary(&self) -> bool {
        self.status().role == Role::Primary
    }

    /// The status as the admin socket reports it.
    pub fn api_status(&self) -> api::VolumeStatus {
        let mut status = to_api(&self.name, &self.peer_name, &self.status());
        if let Some(why) = self.lock_link_error().clone() {
            for p in &mut status.peers {
                p.last_error = Some(why.clone());
            }
        }
        status
    }

    fn lock_link_error(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.link_error.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records why connecting or listening fails now (`None`: it works); true when that is news.
    fn set_link_error(&self, why: Option<String>) -> bool {
        let mut current = self.lock_link_error();
        let news = *current != why;
        *current = why;
        news
    }

    fn lock_core(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the engine on the input `make` builds from a fresh request id (with the reply to wait on, if any),
    /// and carries out what it says. `None` runs it on nothing (publishes the state).
    fn with_core(&self, make: impl FnOnce(u64) -> Option<(Input, Option<Reply>)>) -> bool {
        let mut core = self.lock_core();
        if core.stopped {
            return false;
        }
        let id = core.next_id;
        core.next_id += 1;
        self.feed_lease(&mut core);
        if let Some((input, reply)) = make(id) {
            if let Some(reply) = reply {
                core.replies.insert(id, reply);
            }
            let now = self.epoch.elapsed();
            core.engine.handle(input, now);
        }
        self.process(&mut core);
        true
    }

    /// Gives the engine the cluster's newest lease, if it changed.
    fn feed_lease(&self, core: &mut Core) {
        let until = self.lease_until_ns.load(Ordering::SeqCst);
        if until == core.lease_fed {
            return;
        }
        core.lease_fed = until;
        let lease = match until {
            LEASE_NOT_ENFORCED => Lease::NotEnforced,
            ns => Lease::Until(Duration::from_nanos(ns)),
        };
        let now = self.epoch.elapsed();
        core.engine.handle(Input::Lease(lease), now);
    }

    /// The cluster's lease for this volume (SPEC invariant 8): this node may complete I/O without its peer until
    /// `until` (a time in the past is no lease). Only a later time is taken: a lease never shrinks. Takes no lock
    /// the disk I/O may hold; the engine gets it with its next input (the timer ticks every few milliseconds).
    pub fn set_lease(&self, until: Instant) {
        let ns = u64::try_from(until.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(LEASE_NOT_ENFORCED - 1)
            .min(LEASE_NOT_ENFORCED - 1);
        let current = self.lease_until_ns.load(Ordering::SeqCst);
        if current == LEASE_NOT_ENFORCED || ns > current {
            self.lease_until_ns.store(ns, Ordering::SeqCst);
        }
    }

    /// Whether this node's lease for the volume runs now (always without a cluster manager).
    fn lease_runs(&self) -> bool {
        match self.lease_until_ns.load(Ordering::SeqCst) {
            LEASE_NOT_ENFORCED => true,
            ns => self.epoch.elapsed() < Duration::from_nanos(ns),
        }
    }

    /// Hands the engine several inputs that wait for nothing, under one lock; `inputs` is left empty (its
    /// capacity kept for the next batch).
    fn with_core_all(&self, inputs: &mut Vec<Input>) -> bool {
        let mut core = self.lock_core();
        if core.stopped {
            return false;
        }
        self.feed_lease(&mut core);
        for input in inputs.drain(..) {
            let now = self.epoch.elapsed();
            core.engine.handle(input, now);
        }
        self.process(&mut core);
        true
    }

    /// Hands the engine an input that waits for nothing.
    fn input(&self, input: Input) {
        self.with_core(|_| Some((input, None)));
    }

    /// Runs an admin command and waits for its result. `attach`, and `up` without a disk, first open the disk
    /// again ([`Volume::attach`]).
    pub fn admin(&self, command: AdminCommand) -> Result<Option<String>, String> {
        match command {
            AdminCommand::Attach => return self.attach(),
            AdminCommand::Up if !self.lock_core().engine.has_disk() => {
                self.attach()?;
            }
            _ => {}
        }
        let (reply, rx) = mpsc::sync_channel(1);
        let running =
            self.with_core(|id| Some((Input::Admin { id, command }, Some(Reply::Admin(reply)))));
        if !running {
            return Err(format!("{}: the volume is stopping", self.name));
        }
        rx.recv_timeout(Duration::from_secs(60)).map_err(|_| {
            format!(
                "{}: no answer from the volume engine within 60 s",
                self.name
            )
        })?
    }

    /// `volume attach`: opens the volume's files again (claimed for this process), reads and checks the
    /// superblock — a damaged one, or one of another volume, is refused here with the reason and nothing is
    /// written — and hands them to the engine, which decides: refused on a Primary or with a disk attached,
    /// else attached, and with the peer connected the generations are exchanged again and the resync starts.
    pub fn attach(&self) -> Result<Option<String>, String> {
        {
            // Refused before the files are opened: a disk in use is claimed by this very process.
            let mut core = self.lock_core();
            if core.stopped {
                return Err(format!("{}: the volume is stopping", self.name));
            }
            if core.engine.has_disk() {
                let id = core.next_id;
                core.next_id += 1;
                let (reply, rx) = mpsc::sync_channel(1);
                core.replies.insert(id, Reply::Admin(reply));
                let now = self.epoch.elapsed();
                core.engine.handle(
                    Input::Admin {
                        id,
                        command: AdminCommand::Attach,
                    },
                    now,
                );
                self.process(&mut core);
                drop(core);
                return rx
                    .recv_timeout(Duration::from_secs(10))
                    .map_err(|_| format!("{}: no answer from the volume engine", self.name))?;
            }
        }
        let opened = ClaimedDisk::claim(self.paths.clone()).and_then(|disk| {
            let (storage, layout, sb) = open_disk(disk)?;
            let read_file = File::open(&self.paths.data).map_err(|source| VolumeError::Io {
                path: self.paths.data.clone(),
                source,
            })?;
            Ok((storage, layout, sb, read_file))
        });
        let (storage, layout, sb, read_file) = opened.map_err(|e| {
            warn!(volume = %self.name, "attach refused: {e}");
            format!("{}: cannot attach the disk: {e}", self.name)
        })?;
        let mut core = self.lock_core();
        if core.stopped {
            return Err(format!("{}: the volume is stopping", self.name));
        }
        self.feed_lease(&mut core);
        let result = core.engine.attach_disk(storage, layout, sb);
        if result.is_ok() {
            *self.read_file.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(read_file));
            info!(volume = %self.name, "disk {} attached", self.paths.data.display());
        }
        self.process(&mut core);
        result
    }

    /// The cluster lost the peer on every cluster link: drop the replication link if it has been silent for
    /// `silence` too.
    pub fn peer_silent(&self, silence: Duration) {
        self.input(Input::PeerSilent { silence });
    }

    /// Sends resource-only fencing requests to `fencer` from now on.
    pub fn set_fencer(&self, fencer: Fencer) {
        *self.fencer.lock().unwrap_or_else(|p| p.into_inner()) = Some(fencer);
    }

    /// With a fence-peer or unfence-peer handler: the thread that runs them in order, and the fencer that queues
    /// fence-peer (a cluster manager sets its own fencer over it). The thread holds the volume weakly and ends
    /// with the queue.
    fn start_fence_handlers(self: &Arc<Self>) -> Result<(), VolumeError> {
        if self.handlers.fence_peer.is_none() && self.handlers.unfence_peer.is_none() {
            return Ok(());
        }
        let (tx, rx) = mpsc::channel::<FenceJob>();
        let weak = Arc::downgrade(self);
        thread::Builder::new()
            .name(format!("{}-fence", self.name))
            .spawn(move || {
                for job in rx {
                    let Some(v) = weak.upgrade() else { return };
                    v.run_fence_job(job);
                }
            })
            .map_err(|source| VolumeError::Io {
                path: PathBuf::from(&self.name),
                source,
            })?;
        if self.handlers.fence_peer.is_some() {
            let queue = Mutex::new(tx.clone());
            self.set_fencer(Arc::new(move |_name: &str, _generations| {
                let _ = queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .send(FenceJob::Fence);
            }));
        }
        *self.fence_jobs.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        Ok(())
    }

    /// Runs one fencing handler and waits for it (on the handler thread); a fence-peer's exit status answers the
    /// engine's fence request.
    fn run_fence_job(&self, job: FenceJob) {
        let (which, command) = match job {
            FenceJob::Fence => ("fence-peer", self.handlers.fence_peer.as_deref()),
            FenceJob::Unfence => ("unfence-peer", self.handlers.unfence_peer.as_deref()),
        };
        let Some(command) = command else { return };
        info!(volume = %self.name, peer = %self.peer_name, "running the {which} handler: {command}");
        let status = self.handler_command(which, command).status();
        let ok = match status {
            Ok(status) if status.success() => {
                info!(volume = %self.name, "{which} handler finished");
                true
            }
            Ok(status) => {
                warn!(volume = %self.name, "{which} handler failed: {status}");
                false
            }
            Err(e) => {
                warn!(volume = %self.name, "cannot run the {which} handler: {e}");
                false
            }
        };
        if job == FenceJob::Fence {
            self.fence_result(ok);
        }
    }

    /// The answer to a fence request: whether the peer is marked Outdated (or known down).
    pub fn fence_result(&self, outdated: bool) {
        self.input(Input::FenceResult { outdated });
    }

    /// Fencing by the peer, carried by the cluster: mark this node's data Outdated if it is older than the
    /// requester's (refused while Primary or connected).
    pub fn outdate(
        &self,
        requester: GenerationIds,
        requester_node_id: u8,
    ) -> Result<Option<String>, String> {
        let (reply, rx) = mpsc::sync_channel(1);
        let running = self.with_core(|id| {
            Some((
                Input::OutdateRequest {
                    id,
                    requester,
                    requester_node_id,
                },
                Some(Reply::Admin(reply)),
            ))
        });
        if !running {
            return Err(format!("{}: the volume is stopping", self.name));
        }
        rx.recv_timeout(Duration::from_secs(10)).map_err(|_| {
            format!(
                "{}: no answer from the volume engine within 10 s",
                self.name
            )
        })?
    }

    /// Stops the engine cleanly (the activity log closed, the bitmap written) and the link threads.
    pub fn shutdown(&self) {
        {
            let mut core = self.lock_core();
            if !core.stopped {
                core.engine.shutdown();
                self.process(&mut core);
                core.stopped = true;
            }
        }
        // What is still queued fails as it drops; later submissions fail at once.
        let late = {
            let mut q = self.lock_submissions();
            q.closed = true;
            std::mem::take(&mut q.queued)
        };
        drop(late);
        self.submitted.notify_all();
        self.stop.store(true, Ordering::SeqCst);
        self.wants_link.store(false, Ordering::SeqCst);
        for (_, link) in self.lock_links().open.drain() {
            let _ = link.queue.send(ToSender::Close);
            let _ = link.stream.shutdown(Shutdown::Both);
        }
        let threads: Vec<_> = self.lock_threads().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }

    /// Runs a handler command with `sh -c`, in the background; its exit status is logged. The environment tells
    /// it what happened: `TWINSAN_VOLUME`, `TWINSAN_PEER`, `TWINSAN_HANDLER`.
    fn run_handler(&self, which: &'static str, command: Option<&str>) {
        let Some(command) = command else { return };
        let spawned = self.handler_command(which, command).spawn();
        let volume = self.name.clone();
        match spawned {
            Ok(mut child) => {
                let _ = thread::Builder::new()
                    .name(format!("{volume}-handler"))
                    .spawn(move || match child.wait() {
                        Ok(status) if status.success() => {
                            info!(%volume, "{which} handler finished")
                        }
                        Ok(status) => warn!(%volume, "{which} handler failed: {status}"),
                        Err(e) => warn!(%volume, "{which} handler: {e}"),
                    });
            }
            Err(e) => warn!(%volume, "cannot run the {which} handler: {e}"),
        }
    }

    /// The data file for reads straight from the local disk, while a disk is attached (a read lock held only to
    /// clone the `Arc`; never across the read).
    fn local_file(&self) -> Option<Arc<File>> {
        self.read_file
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A handler's `sh -c COMMAND`, with the environment that tells it what happened: `TWINSAN_VOLUME`,
    /// `TWINSAN_PEER`, `TWINSAN_HANDLER`.
    fn handler_command(&self, which: &str, command: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(command)
            .env("TWINSAN_VOLUME", &self.name)
            .env("TWINSAN_PEER", &self.peer_name)
            .env("TWINSAN_HANDLER", which)
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// The engine thread: the engine's tick every [`TICK`], and the application writes that connections' tasks
    /// queue when no other thread holding the engine's lock has taken them first (the link's receiver thread
    /// does, in [`Volume::process`], while acknowledgements keep it busy). The tasks only queue, so no runtime
    /// worker waits for the lock, and none runs the engine's disk I/O.
    fn engine_loop(self: Arc<Self>) {
        let mut next_tick = Instant::now() + TICK;
        while !self.stop.load(Ordering::SeqCst) {
            {
                let mut q = self.lock_submissions();
                while q.queued.is_empty() && !q.closed {
                    let left = next_tick.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    q = self
                        .submitted
                        .wait_timeout(q, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
            let mut core = self.lock_core();
            if core.stopped {
                break;
            }
            self.feed_lease(&mut core);
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + TICK;
                let now = self.epoch.elapsed();
                core.engine.handle(Input::Tick, now);
            }
            self.process(&mut core);
        }
    }

    fn lock_submissions(&self) -> MutexGuard<'_, SubmissionQueue> {
        self.submissions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands the engine the application writes queued since the last look (called with the engine's lock held).
    fn take_submissions(&self, core: &mut Core) -> bool {
        // Swapped with the core's empty list: neither vector is allocated again.
        std::mem::swap(&mut self.lock_submissions().queued, &mut core.submissions);
        if core.submissions.is_empty() {
            return false;
        }
        let mut queued = std::mem::take(&mut core.submissions);
        for mut submission in queued.drain(..) {
            if let (Some(input), Some(done)) = (submission.input.take(), submission.done.take()) {
                core.replies.insert(submission.id, Reply::Submitted(done));
                let now = self.epoch.elapsed();
                core.engine.handle(input, now);
            }
        }
        core.submissions = queued;
        true
    }

    fn process(&self, core: &mut Core) {
        loop {
            let took = !core.stopped && self.take_submissions(core);
            let fed_back = self.process_once(core);
            if fed_back.is_empty() && !took {
                return;
            }
            for input in fed_back {
                let now = self.epoch.elapsed();
                core.engine.handle(input, now);
            }
        }
    }

    /// Carries out the engine's outputs; returns inputs they feed back.
    fn process_once(&self, core: &mut Core) -> Vec<Input> {
        let Core {
            engine,
            replies,
            frames,
            outputs,
            ..
        } = core;
        let mut fed_back = Vec::new();
        // The status is published before any caller is answered: whoever acts on an answer (the target
        // reconciliation after a promotion) sees the state the answer reports.
        engine.swap_outputs(outputs);
        self.publish(engine);
        // Frames for one connection leave in one send, in order; a Close goes after what preceded it.
        for output in outputs.drain(..) {
            let send_first = match &output {
                Output::Send { link, .. } => *link != frames.link,
                _ => true,
            };
            if send_first {
                self.send_frames(frames);
            }
            match output {
                Output::Send { link, message } => frames.add(link, message),
                Output::Close { link } => {
                    if let Some(open) = self.lock_links().open.remove(&link) {
                        let _ = open.queue.send(ToSender::Close);
                    }
                }
                Output::WriteDone { id, result } | Output::FlushDone { id, result } => {
                    match replies.remove(&id) {
                        Some(Reply::Write(r)) => {
                            let _ = r.send(result);
                        }
                        Some(Reply::Submitted(done)) => {
                            done(result.map_err(|e| io::Error::other(e.to_string())))
                        }
                        _ => {}
                    }
                }
                Output::ReadDone { id, result } => {
                    if let Some(Reply::Read(r)) = replies.remove(&id) {
                        let _ = r.send(result);
                    }
                }
                Output::ReservationsStored { id, result } => {
                    if let Some(Reply::Reservations(r)) = replies.remove(&id) {
                        let _ = r.send(result);
                    }
                }
                Output::AdminDone { id, result } => {
                    if let Some(Reply::Admin(r)) = replies.remove(&id) {
                        let _ = r.send(result);
                    }
                }
                Output::Changed => {}
                Output::Resized { data_size } => {
                    // The LUN reads the size through `BlockDevice::size_bytes` and raises CAPACITY DATA HAS
                    // CHANGED for every nexus on the next command it sees.
                    self.size.store(data_size, Ordering::SeqCst);
                    info!(volume = %self.name, data_size, "the volume grew");
                }
                Output::SplitBrain => {
                    let status = to_api(&self.name, &self.peer_name, &engine.status());
                    let _ = self.events.send(api::EventLine::now("split-brain", status));
                    self.run_handler("split-brain", self.handlers.split_brain.as_deref());
                }
                Output::PriLostAfterSplitBrain => {
                    self.run_handler(
                        "pri-lost-after-sb",
                        self.handlers.pri_lost_after_sb.as_deref(),
                    );
                }
                Output::FencePeer { generations } => {
                    // Resource-only fencing goes through the fencer: the cluster manager's, or in manual mode the
                    // fence-peer handler's (an outside cluster manager); without one the fence fails and writes
                    // stay suspended.
                    let fencer = self
                        .fencer
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    match fencer {
                        Some(fence) => fence(&self.name, generations),
                        None => {
                            warn!(volume = %self.name, "cannot fence the peer: no cluster manager runs on this node");
                            fed_back.push(Input::FenceResult { outdated: false });
                        }
                    }
                }
                Output::LeaseLapsed => {
                    let status = to_api(&self.name, &self.peer_name, &engine.status());
                    let _ = self
                        .events
                        .send(api::EventLine::now("lease-lapsed", status));
                }
                Output::Log { warn: true, text } => warn!("{text}"),
                Output::Log { warn: false, text } => info!("{text}"),
            }
        }
        self.send_frames(frames);
        self.publish(engine);
        fed_back
    }

    /// Publishes the status (and a change event when it changed).
    fn publish(&self, engine: &mut Engine<FileStorage>) {
        let status = engine.status();
        self.reads_local
            .store(engine.reads_local(), Ordering::SeqCst);
        if !engine.has_disk() {
            // Detached: no file of the disk stays open (the admin may replace or unmount it).
            self.read_file
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .take();
        }
        self.wants_link.store(engine.wants_link(), Ordering::SeqCst);
        let mut current = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if *current != status {
            use twinsan_replication::state::{ConnState, DiskState};
            if status.connection == ConnState::Connected
                && current.connection != ConnState::Connected
            {
                self.established.fetch_add(1, Ordering::SeqCst);
            }
            let whole = |s: &Status| {
                s.connection == ConnState::Connected
                    && s.disk == DiskState::UpToDate
                    && s.peer_disk == DiskState::UpToDate
            };
            if whole(&status) && !whole(&current) && self.handlers.unfence_peer.is_some() {
                if let Some(q) = self
                    .fence_jobs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                {
                    let _ = q.send(FenceJob::Unfence);
                }
            }
            let changed_shape = current.role != status.role
                || current.disk != status.disk
                || current.connection != status.connection
                || current.replication != status.replication
                || current.peer_disk != status.peer_disk
                || current.done_hundredths != status.done_hundredths
                || current.split_brain != status.split_brain;
            *current = status.clone();
            drop(current);
            if changed_shape {
                let _ = self.events.send(api::EventLine::now(
                    "change",
                    to_api(&self.name, &self.peer_name, &status),
                ));
            }
        }
    }

    /// Sends the gathered frames on their connection and empties the batch: straight to the socket while it
    /// takes them (vectored: a `Data` frame's data goes from the application's buffer, not copied), the rest
    /// queued for the connection's sender thread (and everything after, until it has caught up).
    fn send_frames(&self, frames: &mut FrameBatch) {
        if frames.is_empty() {
            return;
        }
        let link = frames.link;
        let mut slot = self.lock_links();
        let Some(open) = slot.open.get(&link) else {
            frames.clear();
            return;
        };
        let total = frames.len();
        self.sent_bytes.fetch_add(total as u64, Ordering::Relaxed);
        let mut sent = 0;
        if open.backlog.load(Ordering::SeqCst) == 0 {
            let socket = socket2::SockRef::from(&open.stream);
            while sent < total {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let filled = frames.slices_after(sent, &mut iov);
                // Full (EAGAIN) or broken: the sender thread takes the rest (and finds out which).
                match socket.send_vectored_with_flags(
                    &iov[..filled],
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                ) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sent += n,
                }
            }
        }
        if sent < total {
            open.backlog.fetch_add(total - sent, Ordering::SeqCst);
            for rest in frames.rest_after(sent) {
                if open.queue.send(ToSender::Frame(rest)).is_err() {
                    slot.open.remove(&link);
                    break;
                }
            }
        }
        frames.clear();
    }

    // ----- the link -----

    fn link_loop(self: Arc<Self>, config: LinkConfig) {
        let listener = if config.dial {
            None
        } else {
            loop {
                if self.stop.load(Ordering::SeqCst) {
                    return;
                }
                match TcpListener::bind(config.local) {
                    Ok(l) => {
                        let _ = l.set_nonblocking(true);
                        self.set_link_error(None);
                        break Some(l);
                    }
                    Err(e) => {
                        let why = format!("cannot listen for the peer at {}: {e}", config.local);
                        if self.set_link_error(Some(why.clone())) {
                            warn!(volume = %self.name, "{why}; retrying every second");
                        }
                        thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        };
        // The dialler waits longer after each connection in a row the peer refused (wrong secret, other size): a
        // refusal repeats itself, and each one logs on both nodes.
        let mut refused = 0u32;
        let mut next_dial = Instant::now();
        let mut dialled: Option<u64> = None;
        while !self.stop.load(Ordering::SeqCst) {
            match &listener {
                Some(l) => match l.accept() {
                    Ok((stream, from)) => {
                        if from.ip() != config.peer.ip() {
                            warn!(volume = %self.name, %from, "replication connection from an address that is not the peer's; closed");
                            continue;
                        }
                        if !self.wants_link.load(Ordering::SeqCst) {
                            continue;
                        }
                        let _ = stream.set_nonblocking(false);
                        self.setup_link(stream);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(50))
                    }
                    Err(e) => {
                        warn!(volume = %self.name, "accept: {e}");
                        thread::sleep(Duration::from_millis(200));
                    }
                },
                None => {
                    let wants = self.wants_link.load(Ordering::SeqCst);
                    let idle = self.links_open.load(Ordering::SeqCst) == 0;
                    if let (true, Some(at)) = (idle, dialled) {
                        // The last connection ended: established, or refused once more.
                        dialled = None;
                        if self.established.load(Ordering::SeqCst) == at {
                            refused = refused.saturating_add(1);
                            next_dial = Instant::now() + RETRY.delay(refused);
                        } else {
                            refused = 0;
                        }
                    }
                    if !wants {
                        // An admin's `connect` dials at once.
                        refused = 0;
                        next_dial = Instant::now();
                        self.set_link_error(None);
                    }
                    if wants && idle && Instant::now() < next_dial {
                        thread::sleep(Duration::from_millis(50));
                    } else if wants && idle {
                        match connect_from(config.local, config.peer) {
                            Ok(stream) => {
                                self.set_link_error(None);
                                dialled = Some(self.established.load(Ordering::SeqCst));
                                self.setup_link(stream)
                            }
                            Err(e) => {
                                self.set_link_error(Some(format!(
                                    "cannot connect to {}: {e}",
                                    config.peer
                                )));
                                thread::sleep(Duration::from_millis(300))
                            }
                        }
                    } else {
                        thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
    }

    fn setup_link(self: &Arc<Self>, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let Ok(reader) = stream.try_clone() else {
            return;
        };
        let link = self.next_link.fetch_add(1, Ordering::SeqCst);
        let mut nonce = [0u8; wire::NONCE_LEN];
        if getrandom::fill(&mut nonce).is_err() {
            error!(volume = %self.name, "no randomness for the link challenge");
            return;
        }
        let Ok(for_sends) = stream.try_clone() else {
            return;
        };
        let (tx, rx) = mpsc::channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        self.lock_links().open.insert(
            link,
            OpenLink {
                stream: for_sends,
                queue: tx,
                backlog: backlog.clone(),
            },
        );
        self.links_open.fetch_add(1, Ordering::SeqCst);
        let writer = stream;
        let _ = thread::Builder::new()
            .name(format!("{}-send", self.name))
            .spawn(move || sender_loop(writer, rx, backlog));
        self.input(Input::LinkUp { link, nonce });
        let v = self.clone();
        let _ = thread::Builder::new()
            .name(format!("{}-recv", self.name))
            .spawn(move || v.receiver_loop(reader, link));
    }

    fn receiver_loop(self: Arc<Self>, stream: TcpStream, link: u64) {
        let mut decoder = FrameDecoder::new(wire::max_payload_for(
            twinsan_replication::engine::MAX_REQUEST,
        ));
        let mut buf = BytesMut::with_capacity(READ_BUFFER);
        let mut batch = Vec::new();
        let mut by_peer = false;
        let reason = 'read: loop {
            // Room for a read, and for the whole of a payload the decoder waits for: it takes payloads in place.
            let awaited = decoder.awaited_payload().unwrap_or(0);
            buf.reserve(awaited.saturating_sub(buf.len()).max(READ_MIN));
            let read = socket2::SockRef::from(&stream).recv(buf.spare_capacity_mut());
            let n = match read {
                Ok(0) => {
                    by_peer = true;
                    break 'read "the peer closed the connection".to_string();
                }
                Ok(n) => {
                    self.received_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    by_peer = e.kind() == io::ErrorKind::ConnectionReset;
                    break 'read format!("read: {e}");
                }
            };
            // SAFETY: recv wrote the first `n` bytes of the spare capacity it was given.
            unsafe { buf.set_len(buf.len() + n) };
            // Every frame of one read is handed to the engine under one lock, so what it answers (acks) leaves
            // in one send. A `Data` frame's payload is a slice of `buf` (no copy); the engine writes it and drops
            // it before the next read, so `buf` gets its space back (`reserve` moves the unfinished frame's bytes
            // to the front when it wraps).
            let mut failed = None;
            loop {
                decoder.push_in_place(&mut buf);
                match decoder.next_frame() {
                    Ok(Some(message)) => batch.push(Input::Received { link, message }),
                    Ok(None) => break,
                    Err(e) => {
                        failed = Some(format!("the peer sent a bad frame: {e}"));
                        break;
                    }
                }
            }
            if !batch.is_empty() && !self.with_core_all(&mut batch) {
                break 'read "stopping".to_string();
            }
            if let Some(reason) = failed {
                break 'read reason;
            }
        };
        let _ = stream.shutdown(Shutdown::Both);
        if let Some(open) = self.lock_links().open.remove(&link) {
            let _ = open.queue.send(ToSender::Close);
        }
        self.links_open.fetch_sub(1, Ordering::SeqCst);
        let was_connected =
            self.status().connection == twinsan_replication::state::ConnState::Connected;
        self.input(Input::LinkDown { link, reason });
        // Only the established link's end counts (a stray connection closing leaves the state as it was).
        if by_peer
            && was_connected
            && self.status().connection != twinsan_replication::state::ConnState::Connected
        {
            *self
                .peer_closed_at
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
    }

    /// How long ago the established replication link was closed or reset from the peer's side, if it was.
    pub fn peer_closed_ago(&self) -> Option<Duration> {
        self.peer_closed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }
}

/// How long one connection attempt to the peer may take: a peer whose SYNs are dropped (a firewall, a host that is
/// gone) would otherwise hold the link thread in connect(2) for the kernel's SYN retries (about two minutes), and a
/// stop or an admin's `connect` would wait for it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to `peer` from this node's own address, so the peer sees where the connection comes from; gives up
/// after [`CONNECT_TIMEOUT`].
fn connect_from(local: SocketAddr, peer: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(peer), Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(local.ip(), 0).into())?;
    socket.connect_timeout(&peer.into(), CONNECT_TIMEOUT)?;
    Ok(socket.into())
}

fn sender_loop(stream: TcpStream, rx: Receiver<ToSender>, backlog: Arc<AtomicUsize>) {
    let mut out = BufWriter::with_capacity(256 << 10, &stream);
    'run: while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(msg) = next {
            match msg {
                ToSender::Frame(bytes) => {
                    if out.write_all(&bytes).is_err() {
                        break 'run;
                    }
                    written += bytes.len();
                }
                ToSender::Close => {
                    let _ = out.flush();
                    break 'run;
                }
            }
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            break;
        }
        // On the wire (or in the kernel's buffer): direct sends may go again once nothing is queued.
        backlog.fetch_sub(written, Ordering::SeqCst);
    }
    drop(out);
    let _ = stream.shutdown(Shutdown::Both);
}

fn role_str(role: Option<Role>) -> String {
    match role {
        Some(Role::Primary) => "Primary".into(),
        Some(Role::Secondary) => "Secondary".into(),
        None => "Unknown".into(),
    }
}

/// The engine's status in the admin socket's terms.
pub fn to_api(name: &str, peer: &str, s: &Status) -> api::VolumeStatus {
    api::VolumeStatus {
        name: name.to_owned(),
        role: role_str(Some(s.role)),
        disk: s.disk.to_string(),
        split_brain: s.split_brain,
        size_kib: s.data_size_bytes / 1024,
        suspended: s.suspended,
        lease_hold: s.lease_hold,
        peers: vec![api::PeerStatus {
            node: peer.to_owned(),
            connection: s.connection.to_string(),
            role: role_str(s.peer_role),
            peer_disk: s.peer_disk.to_string(),
            replication: s.replication.to_string(),
            done: s.done_hundredths.map(|h| f64::from(h) / 100.0),
            out_of_sync_kib: s.out_of_sync_bytes / 1024,
            resync_sent_kib: s.resync_sent_bytes / 1024,
            rate_kib_s: s.rate_kib_s,
            eta_s: s.eta_s,
            verify_out_of_sync_kib: s.verify_out_of_sync_bytes / 1024,
            last_error: s.last_error.clone(),
            protocol: s.peer_protocol.map(|v| v.number()),
        }],
    }
}

/// The volume as the SCSI layer's block device.
pub struct ReplicatedDevice {
    volume: Arc<Volume>,
}

impl ReplicatedDevice {
    /// A block device over `volume`.
    pub fn new(volume: Arc<Volume>) -> Self {
        ReplicatedDevice { volume }
    }

    fn call<T>(
        &self,
        make: impl FnOnce(u64, SyncSender<Result<T, IoFailure>>) -> (Input, Reply),
    ) -> io::Result<T> {
        let (reply, rx) = mpsc::sync_channel(1);
        if !self.volume.with_core(|id| {
            let (input, r) = make(id, reply);
            Some((input, Some(r)))
        }) {
            return Err(io::Error::other("the volume is stopping"));
        }
        match rx.recv() {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(io::Error::other(e.to_string())),
            Err(_) => Err(io::Error::other("the volume stopped")),
        }
    }
}

impl BlockDevice for ReplicatedDevice {
    fn size_bytes(&self) -> u64 {
        self.volume.size.load(Ordering::SeqCst)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        // The fast path reads the local disk directly, only while the lease runs: a node that was frozen reads
        // through the engine, which holds the read until it knows whether the peer took over.
        if self.volume.reads_local.load(Ordering::SeqCst) && self.volume.lease_runs() {
            let file = self.volume.local_file();
            if let Some(file) = file {
                return file.read_exact_at(buf, offset);
            }
        }
        let len = u32::try_from(buf.len()).map_err(io::Error::other)?;
        let data = self.call(|id, reply| (Input::Read { id, offset, len }, Reply::Read(reply)))?;
        if data.len() != buf.len() {
            return Err(io::Error::other("short read from the peer"));
        }
        buf.copy_from_slice(&data);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        let data = Bytes::copy_from_slice(buf);
        self.call(|id, reply| {
            (
                Input::Write {
                    id,
                    offset,
                    data,
                    fua,
                },
                Reply::Write(reply),
            )
        })
    }

    fn supports_unmap(&self) -> bool {
        // A discard is replicated and zeroes the range on both nodes (a hole where the disk can, zeros written
        // where it cannot), so LBPRZ holds whatever the disks are.
        true
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(u64::from(MAX_REQUEST));
            let at = offset + done;
            self.call(|id, reply| {
                (
                    Input::Discard {
                        id,
                        offset: at,
                        len: n,
                    },
                    Reply::Write(reply),
                )
            })?;
            done += n;
        }
        Ok(())
    }

    fn mapped_extent(&self, offset: u64, len: u64) -> io::Result<(bool, u64)> {
        // The Primary's own copy answers; served from the peer, everything counts as mapped.
        if self.volume.reads_local.load(Ordering::SeqCst) {
            let file = self.volume.local_file();
            match file {
                Some(file) => twinsan_target::file_mapped_extent(&file, offset, len),
                None => Ok((true, len)),
            }
        } else {
            Ok((true, len))
        }
    }

    fn reservation_capacity(&self) -> usize {
        RESERVATIONS_CAPACITY
    }

    fn load_reservations(&self) -> io::Result<Vec<u8>> {
        Ok(self.volume.lock_core().engine.reservations().to_vec())
    }

    fn store_reservations(&self, state: &[u8]) -> io::Result<()> {
        let data = state.to_vec();
        self.call(|id, reply| {
            (
                Input::StoreReservations { id, data },
                Reply::Reservations(reply),
            )
        })
    }

    fn quick_io_limit(&self) -> usize {
        // Reads of Primary data on this node are page-cache copies, like a local file's.
        if self.volume.reads_local.load(Ordering::SeqCst) {
            64 << 10
        } else {
            0
        }
    }

    fn quick_write_limit(&self) -> usize {
        // A write waits for the peer: never on the connection's own task.
        0
    }

    fn submits_writes(&self) -> bool {
        true
    }

    fn submit_write(&self, buf: Bytes, offset: u64, fua: bool, done: twinsan_scsi::WriteDone) {
        // Called on a connection's task: queued for the next holder of the engine's lock, never run here.
        let id = self.volume.next_submission.fetch_add(1, Ordering::Relaxed);
        let submission = Submission {
            id,
            input: Some(Input::Write {
                id,
                offset,
                data: buf,
                fua,
            }),
            done: Some(done),
        };
        let mut q = self.volume.lock_submissions();
        if q.closed {
            // Dropped: the write fails.
            return;
        }
        q.queued.push(submission);
        if q.queued.len() == 1 {
            self.volume.submitted.notify_one();
        }
    }

    fn flush(&self) -> io::Result<()> {
        self.call(|id, reply| (Input::Flush { id }, Reply::Write(reply)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinsan_replication::wire::{Message, ReplicationProtocol};

    fn data(seq: u64, byte: u8, len: usize) -> Message {
        Message::Data {
            seq,
            offset: seq * 4096,
            epoch: 1,
            fua: false,
            flush: false,
            protocol: ReplicationProtocol::C,
            data: Bytes::from(vec![byte; len]),
        }
    }

    #[test]
    fn frame_batch_sends_the_encoded_bytes_from_any_point() {
        let messages = [
            Message::Ping { seq: 1 },
            data(2, 0x11, 4096),
            data(3, 0x22, 100),
            Message::WriteAck { seq: 2 },
            data(4, 0x33, 512),
        ];
        let whole: Vec<u8> = messages.iter().flat_map(wire::encode).collect();
        let mut batch = FrameBatch::default();
        for message in messages {
            batch.add(7, message);
        }
        assert_eq!(batch.link, 7);
        assert_eq!(batch.len(), whole.len());
        assert_eq!(batch.bulk.len(), 3, "each Data frame's data by reference");
        for skip in 0..=whole.len() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let filled = batch.slices_after(skip, &mut iov);
            let sent: Vec<u8> = iov[..filled]
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect();
            assert_eq!(sent, whole[skip..], "vectored from {skip}");
            let queued: Vec<u8> = batch.rest_after(skip).concat();
            assert_eq!(queued, whole[skip..], "queued from {skip}");
        }
        // A short iovec array takes the first pieces only.
        let mut iov = [IoSlice::new(&[]); 2];
        assert_eq!(batch.slices_after(0, &mut iov), 2);
        assert_eq!(iov[1].len(), 4096);
        batch.clear();
        assert!(batch.is_empty());
    }
}
