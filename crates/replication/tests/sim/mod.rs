//! A deterministic two-node harness for the volume engine: in-memory disks with a volatile write cache, a
//! network of in-order links that can be cut, and a clock that moves only when told.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use twinsan_replication::engine::{
    AdminCommand, Engine, EngineConfig, Input, IoFailure, Lease, Output, Storage,
};
use twinsan_replication::generation::{AfterSbPolicies, UUID_JUST_CREATED};
use twinsan_replication::metadata::{Layout, Placement, Superblock};
use twinsan_replication::resync::{RateConfig, ResyncConfig};
use twinsan_replication::state::FencingPolicy;
use twinsan_replication::wire::{self, Message, ReplicationProtocol, SharedSecret};

/// A disk: what is durable, and what sits in the volatile cache until a flush.
#[derive(Clone, Debug)]
pub struct MemDisk {
    pub durable: Vec<u8>,
    pub cache: Vec<u8>,
    pub failing: bool,
    /// Full (ENOSPC on a thin or tmpfs file): data writes fail; metadata, already allocated, and flushes work.
    pub full: bool,
    /// The process dies in the middle of the metadata write after this many more: half of it lands.
    pub tear_after: Option<u32>,
    /// The process died in a torn write; every further call fails.
    pub dead: bool,
}

impl MemDisk {
    pub fn new(size: usize) -> Self {
        MemDisk {
            durable: vec![0; size],
            cache: vec![0; size],
            failing: false,
            full: false,
            tear_after: None,
            dead: false,
        }
    }

    /// Power loss: the cache is gone.
    pub fn crash(&mut self) {
        self.cache = self.durable.clone();
        self.dead = false;
        self.tear_after = None;
    }
}

/// The storage of one node: data at the start of the disk, internal metadata at its end.
pub struct MemStorage {
    pub disk: MemDisk,
}

fn range(disk: &MemDisk, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
    let start = usize::try_from(offset).map_err(io::Error::other)?;
    let end = start.checked_add(len).filter(|&e| e <= disk.cache.len());
    match end {
        Some(end) if !disk.failing && !disk.dead => Ok(start..end),
        _ => Err(io::Error::other("I/O error")),
    }
}

impl MemDisk {
    /// The backing device grew by `more` bytes (an LV extended, a file made longer), the new area holding `fill`.
    pub fn grow(&mut self, more: usize, fill: u8) {
        let size = self.cache.len() + more;
        self.cache.resize(size, fill);
        self.durable.resize(size, fill);
    }

    /// The backing device shrank to `size` bytes (replaced by a smaller one).
    pub fn truncate(&mut self, size: usize) {
        self.cache.truncate(size);
        self.durable.truncate(size);
    }
}

impl Storage for MemStorage {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let r = range(&self.disk, offset, buf.len())?;
        buf.copy_from_slice(&self.disk.cache[r]);
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.disk.full {
            return Err(io::Error::other("no space left on device"));
        }
        let r = range(&self.disk, offset, data.len())?;
        self.disk.cache[r].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.disk.failing {
            return Err(io::Error::other("I/O error"));
        }
        self.disk.durable = self.disk.cache.clone();
        Ok(())
    }
    fn read_meta(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read(offset, buf)
    }
    fn current_sizes(&mut self) -> io::Result<(u64, Placement)> {
        Ok((self.disk.cache.len() as u64, Placement::Internal))
    }
    fn write_meta(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let r = range(&self.disk, offset, data.len())?;
        match self.disk.tear_after {
            Some(0) => {
                let half = r.start..r.start + data.len() / 2;
                self.disk.durable[half.clone()].copy_from_slice(&data[..data.len() / 2]);
                self.disk.cache[half].copy_from_slice(&data[..data.len() / 2]);
                self.disk.dead = true;
                return Err(io::Error::other("power lost"));
            }
            Some(n) => self.disk.tear_after = Some(n - 1),
            None => {}
        }
        self.disk.cache[r.clone()].copy_from_slice(data);
        self.disk.durable[r].copy_from_slice(data);
        Ok(())
    }
}

pub const VOLUME_UUID: u128 = 0x1234_5678_9abc_def0_1122_3344_5566_7788;

/// Formats a disk of `backing` bytes for node `node` (1 or 2): `create-md`.
pub fn format(backing: u64, node: u8) -> (MemDisk, Layout) {
    let layout = Layout::compute(backing, Placement::Internal).expect("layout");
    let sb =
        Superblock::create(&layout, VOLUME_UUID, node, 3 - node, UUID_JUST_CREATED).expect("sb");
    let mut disk = MemDisk::new(backing as usize);
    let mut st = MemStorage { disk };
    st.write_meta(layout.superblocks[0].offset, &sb.encode())
        .expect("write");
    disk = st.disk;
    (disk, layout)
}

pub fn config(node: u8, protocol: ReplicationProtocol) -> EngineConfig {
    EngineConfig {
        volume: "vol0".into(),
        node_id: node,
        peer_node_id: 3 - node,
        peer_name: format!("node{}", 3 - node),
        cluster_id: wire::cluster_id("sim"),
        secret: SharedSecret::new(b"a shared secret of the simulation".to_vec()),
        protocol,
        fencing: FencingPolicy::DontCare,
        policies: AfterSbPolicies::default(),
        resync: ResyncConfig {
            max_request_bytes: 256 << 10,
            max_in_flight: 8,
            rate: RateConfig::unlimited(),
        },
        checksum_resync: false,
    }
}

/// Opens an engine on `disk` (reading the superblock as the driver does).
pub fn open(
    node: u8,
    disk: MemDisk,
    layout: Layout,
    protocol: ReplicationProtocol,
    seed: u64,
    now: Duration,
    csums: bool,
) -> Engine<MemStorage> {
    let mut st = MemStorage { disk };
    // Where the metadata is now, as the driver finds it: the layout of the device's size, or the place a resize
    // has not moved it from yet.
    let backing = st.disk.cache.len() as u64;
    let (layout, chosen) =
        twinsan_replication::metadata::locate(backing, Placement::Internal, |offset, buf| {
            st.read_meta(offset, buf)
        })
        .unwrap_or_else(|e| {
            panic!("no metadata on a {backing}-byte disk made for {layout:?}: {e}")
        });
    let mut cfg = config(node, protocol);
    cfg.checksum_resync = csums;
    Engine::open(cfg, st, layout, chosen.superblock, seed, now).expect("open")
}

/// Two nodes and the link between them.
pub struct Pair {
    pub nodes: [Option<Engine<MemStorage>>; 2],
    pub layout: Layout,
    pub disks: [MemDisk; 2],
    pub now: Duration,
    /// Frames in flight on the current link, per direction (0 → 1 at index 0).
    pub wire: [VecDeque<Message>; 2],
    pub link: Option<u64>,
    pub next_link: u64,
    pub cut: bool,
    pub done: Vec<(usize, Output)>,
    pub logs: Vec<String>,
    pub protocol: ReplicationProtocol,
    pub next_id: u64,
    /// Seeds each engine's UUID generator; different at every start, as the driver's OS randomness is.
    pub uuid_seed: u64,
    /// Checksum-based resync.
    pub csums: bool,
    /// Frozen nodes (SIGSTOP, a paused VM): they take no input and send nothing; what reaches them waits.
    pub frozen: [bool; 2],
    /// A link loss that happened while the node was frozen, delivered when it resumes.
    pub pending_down: [Option<u64>; 2],
    /// The cluster's lease (SPEC invariant 8): when set, every running node that `leases_to` allows gets
    /// `now + lease` at each tick, as the cluster manager renews it.
    pub lease: Option<Duration>,
    /// Which nodes the cluster grants a lease now.
    pub leases_to: [bool; 2],
    /// When the last link went down: the next connect waits for the clock to move, as a driver's retry interval
    /// does (a pair that refuses each other at once would otherwise reconnect forever within one instant).
    pub closed_at: Option<Duration>,
    /// The link a node is closing: its last frames are on their way to the peer.
    pub closing: Option<u64>,
}

impl Pair {
    pub fn new(backing: u64, protocol: ReplicationProtocol) -> Pair {
        let (d1, layout) = format(backing, 1);
        let (d2, _) = format(backing, 2);
        let mut pair = Pair {
            nodes: [None, None],
            layout,
            disks: [d1, d2],
            now: Duration::ZERO,
            wire: [VecDeque::new(), VecDeque::new()],
            link: None,
            next_link: 1,
            cut: false,
            done: Vec::new(),
            logs: Vec::new(),
            protocol,
            next_id: 1,
            uuid_seed: 1000,
            csums: false,
            frozen: [false, false],
            pending_down: [None, None],
            lease: None,
            leases_to: [true, true],
            closed_at: None,
            closing: None,
        };
        pair.start(0);
        pair.start(1);
        pair
    }

    pub fn start(&mut self, i: usize) {
        let disk = self.disks[i].clone();
        self.uuid_seed = self
            .uuid_seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut e = open(
            i as u8 + 1,
            disk,
            self.layout,
            self.protocol,
            self.uuid_seed,
            self.now,
            self.csums,
        );
        e.handle(
            Input::Admin {
                id: 0,
                command: AdminCommand::Up,
            },
            self.now,
        );
        self.nodes[i] = Some(e);
        self.collect(i);
    }

    /// kill -9 (or power loss with `lose_cache`): the engine is gone, the link breaks.
    pub fn kill(&mut self, i: usize, lose_cache: bool) {
        if let Some(e) = self.nodes[i].take() {
            let mut disk = e.storage().disk.clone();
            if lose_cache || disk.dead {
                disk.crash();
            }
            disk.tear_after = None;
            // A disk fault in the simulation is transient: gone after a restart.
            disk.failing = false;
            disk.full = false;
            self.disks[i] = disk;
        }
        self.drop_link("killed");
    }

    pub fn engine(&mut self, i: usize) -> &mut Engine<MemStorage> {
        self.nodes[i].as_mut().expect("node running")
    }

    fn drop_link(&mut self, why: &str) {
        if let Some(link) = self.link.take() {
            self.closed_at = Some(self.now);
            self.wire = [VecDeque::new(), VecDeque::new()];
            for i in 0..2 {
                if self.frozen[i] {
                    self.pending_down[i] = Some(link);
                    continue;
                }
                if let Some(e) = self.nodes[i].as_mut() {
                    e.handle(
                        Input::LinkDown {
                            link,
                            reason: why.into(),
                        },
                        self.now,
                    );
                    self.collect(i);
                }
            }
        }
    }

    pub fn collect(&mut self, i: usize) {
        if self.frozen[i] {
            return;
        }
        let Some(e) = self.nodes[i].as_mut() else {
            return;
        };
        let outputs = e.take_outputs();
        if e.storage().disk.dead {
            // The process died during this step: nothing it said afterwards left it.
            return;
        }
        for o in outputs {
            match o {
                Output::Send { link, message } => {
                    if Some(link) == self.link {
                        self.wire[i].push_back(message);
                    }
                }
                Output::Close { link } => {
                    // A node that closes reads nothing more: when the peer closes too while this one's last frames
                    // reach it, the peer's own last frames are lost with the socket.
                    if Some(link) == self.link && self.closing != Some(link) {
                        self.closing = Some(link);
                        // A graceful close: what node i sent before reaches the peer first — unless the peer is
                        // frozen, which then finds the connection reset when it resumes.
                        let to = 1 - i;
                        if self.frozen[to] {
                            self.wire[i].clear();
                        }
                        while let Some(m) = self.wire[i].pop_front() {
                            if self.link != Some(link) {
                                break;
                            }
                            if let Some(e) = self.nodes[to].as_mut() {
                                e.handle(Input::Received { link, message: m }, self.now);
                            }
                            self.collect(to);
                        }
                        self.drop_link("closed");
                    }
                }
                Output::Log { text, .. } => self.logs.push(format!("node{}: {text}", i + 1)),
                Output::Changed => {}
                Output::WriteDone { id, ref result } => {
                    self.logs
                        .push(format!("node{}: write {id} done: {result:?}", i + 1));
                    self.done.push((i, o));
                }
                other => self.done.push((i, other)),
            }
        }
    }

    /// Connects if both want to and the network allows.
    fn maybe_connect(&mut self) {
        if self.link.is_some()
            || self.cut
            || self.frozen.iter().any(|&f| f)
            || self.closed_at == Some(self.now)
        {
            return;
        }
        let want = self
            .nodes
            .iter()
            .all(|n| n.as_ref().is_some_and(|e| e.wants_link()));
        if !want {
            return;
        }
        let link = self.next_link;
        self.next_link += 1;
        self.link = Some(link);
        for i in 0..2 {
            let mut nonce = [0u8; 32];
            nonce[0] = i as u8 + 1;
            nonce[1..9].copy_from_slice(&link.to_le_bytes());
            if let Some(e) = self.nodes[i].as_mut() {
                e.handle(Input::LinkUp { link, nonce }, self.now);
            }
            self.collect(i);
        }
    }

    /// Delivers up to `max` frames; returns how many.
    pub fn step(&mut self, max: usize) -> usize {
        self.maybe_connect();
        let mut n = 0;
        while n < max {
            let Some(link) = self.link else { break };
            let mut moved = false;
            for from in 0..2 {
                if self.frozen[from] || self.frozen[1 - from] {
                    continue;
                }
                if let Some(m) = self.wire[from].pop_front() {
                    let to = 1 - from;
                    if let Some(e) = self.nodes[to].as_mut() {
                        e.handle(Input::Received { link, message: m }, self.now);
                    }
                    self.collect(to);
                    n += 1;
                    moved = true;
                    if self.link != Some(link) {
                        break;
                    }
                }
            }
            if !moved {
                break;
            }
        }
        n
    }

    /// Delivers the next frame node `from` sent, if there is one; frames the other way wait.
    pub fn deliver_one(&mut self, from: usize) -> bool {
        let Some(link) = self.link else { return false };
        if self.frozen[from] || self.frozen[1 - from] {
            return false;
        }
        let Some(m) = self.wire[from].pop_front() else {
            return false;
        };
        let to = 1 - from;
        if let Some(e) = self.nodes[to].as_mut() {
            e.handle(Input::Received { link, message: m }, self.now);
        }
        self.collect(to);
        true
    }

    /// Runs until the network is quiet, ticking the clock by 100 ms whenever it is, at most `ticks` times.
    pub fn settle(&mut self, ticks: u32) {
        self.run(ticks, true);
    }

    /// Lets exactly `ticks` ticks of 100 ms pass, quiet or not.
    pub fn advance(&mut self, ticks: u32) {
        self.run(ticks, false);
    }

    fn run(&mut self, ticks: u32, until_quiet: bool) {
        for _ in 0..ticks {
            while self.step(10_000) > 0 {}
            self.now += Duration::from_millis(100);
            for i in 0..2 {
                if self.frozen[i] {
                    continue;
                }
                let lease = self
                    .lease
                    .filter(|_| self.leases_to[i])
                    .map(|l| Lease::Until(self.now + l));
                if let Some(e) = self.nodes[i].as_mut() {
                    if let Some(lease) = lease {
                        e.handle(Input::Lease(lease), self.now);
                    }
                    e.handle(Input::Tick, self.now);
                }
                self.collect(i);
            }
            self.maybe_connect();
            if until_quiet && self.wire.iter().all(VecDeque::is_empty) && self.quiet() {
                break;
            }
        }
    }

    fn quiet(&self) -> bool {
        self.nodes.iter().flatten().all(|e| {
            let s = e.status();
            s.done_hundredths.is_none()
        })
    }

    /// Hands node `i` an admin command without letting anything else happen; its id.
    pub fn submit_admin(&mut self, i: usize, command: AdminCommand) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let now = self.now;
        self.engine(i).handle(Input::Admin { id, command }, now);
        self.collect(i);
        id
    }

    pub fn admin(&mut self, i: usize, command: AdminCommand) -> Result<Option<String>, String> {
        let id = self.submit_admin(i, command);
        self.settle(600);
        let pos = self
            .done
            .iter()
            .position(|(n, o)| *n == i && matches!(o, Output::AdminDone { id: x, .. } if *x == id));
        match pos.map(|p| self.done.remove(p)) {
            Some((_, Output::AdminDone { result, .. })) => result,
            _ => Err("no answer".into()),
        }
    }

    /// Submits a write at node `i`; returns its id.
    pub fn submit_write(&mut self, i: usize, offset: u64, data: Vec<u8>, fua: bool) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let now = self.now;
        self.engine(i).handle(
            Input::Write {
                id,
                offset,
                data: data.into(),
                fua,
            },
            now,
        );
        self.collect(i);
        id
    }

    /// Submits a discard at node `i`; returns its id (the result comes as a write's).
    pub fn submit_discard(&mut self, i: usize, offset: u64, len: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let now = self.now;
        self.engine(i)
            .handle(Input::Discard { id, offset, len }, now);
        self.collect(i);
        id
    }

    /// Submits a flush (SYNCHRONIZE CACHE) at node `i`; returns its id.
    pub fn submit_flush(&mut self, i: usize) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let now = self.now;
        self.engine(i).handle(Input::Flush { id }, now);
        self.collect(i);
        id
    }

    /// Submits new reservation state at node `i`; returns its id.
    pub fn submit_reservations(&mut self, i: usize, data: Vec<u8>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let now = self.now;
        self.engine(i)
            .handle(Input::StoreReservations { id, data }, now);
        self.collect(i);
        id
    }

    /// The result of reservation store `id`, if it completed.
    pub fn reservations_result(&mut self, id: u64) -> Option<Result<(), IoFailure>> {
        let pos = self
            .done
            .iter()
            .position(|(_, o)| matches!(o, Output::ReservationsStored { id: x, .. } if *x == id))?;
        match self.done.remove(pos).1 {
            Output::ReservationsStored { result, .. } => Some(result),
            _ => None,
        }
    }

    /// The result of write `id`, if it completed.
    pub fn write_result(&mut self, id: u64) -> Option<Result<(), IoFailure>> {
        let pos = self
            .done
            .iter()
            .position(|(_, o)| matches!(o, Output::WriteDone { id: x, .. } if *x == id))?;
        match self.done.remove(pos).1 {
            Output::WriteDone { result, .. } => Some(result),
            _ => None,
        }
    }

    pub fn read(&mut self, i: usize, offset: u64, len: u32) -> Result<Vec<u8>, IoFailure> {
        let id = self.next_id;
        self.next_id += 1;
        let now = self.now;
        self.engine(i).handle(Input::Read { id, offset, len }, now);
        self.collect(i);
        self.settle(50);
        let pos = self
            .done
            .iter()
            .position(|(_, o)| matches!(o, Output::ReadDone { id: x, .. } if *x == id))
            .expect("read answered");
        match self.done.remove(pos).1 {
            Output::ReadDone { result, .. } => result,
            _ => unreachable!(),
        }
    }

    /// The data area of node `i`'s disk as the node sees it.
    pub fn data(&self, i: usize) -> Vec<u8> {
        match &self.nodes[i] {
            Some(e) => e.storage().disk.cache[..e.data_size() as usize].to_vec(),
            None => self.disks[i].cache[..self.layout.data_size as usize].to_vec(),
        }
    }

    /// Node `i`'s backing device grows by `more` bytes holding `fill` (running or not).
    pub fn grow_disk(&mut self, i: usize, more: usize, fill: u8) {
        match self.nodes[i].as_mut() {
            Some(e) => e.storage_mut().disk.grow(more, fill),
            None => self.disks[i].grow(more, fill),
        }
    }

    /// Node `i`'s backing device shrinks to `size` bytes (running or not).
    pub fn truncate_disk(&mut self, i: usize, size: usize) {
        match self.nodes[i].as_mut() {
            Some(e) => e.storage_mut().disk.truncate(size),
            None => self.disks[i].truncate(size),
        }
    }

    /// Freezes node `i`: from now on it takes no step until [`Pair::thaw`].
    pub fn freeze(&mut self, i: usize) {
        self.logs.push(format!("node{}: frozen", i + 1));
        self.frozen[i] = true;
    }

    /// Node `i` resumes with the state it had: it first hears of a link lost meanwhile, at the current time.
    pub fn thaw(&mut self, i: usize) {
        self.logs.push(format!("node{}: resumes", i + 1));
        self.frozen[i] = false;
        if let Some(link) = self.pending_down[i].take() {
            if let Some(e) = self.nodes[i].as_mut() {
                e.handle(
                    Input::LinkDown {
                        link,
                        reason: "closed by the peer while this node was frozen".into(),
                    },
                    self.now,
                );
            }
            self.collect(i);
        }
    }

    /// The survivor closes the link to a frozen peer (the cluster found it silent on every link).
    pub fn drop_link_to_frozen(&mut self) {
        self.drop_link("the peer is silent on every cluster link");
    }

    pub fn cut(&mut self) {
        self.cut = true;
        self.drop_link("cut");
    }

    pub fn heal(&mut self) {
        self.cut = false;
    }
}
