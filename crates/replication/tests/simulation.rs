//! Deterministic simulation of a two-node volume under faults: writes from a client, partial delivery, link
//! cuts, crashes with and without losing the disk cache, torn metadata writes, failovers, and frozen nodes (a
//! node that takes no step for a while — SIGSTOP, a paused VM — and resumes with its old state, processing the
//! requests that waited for it). A client oracle checks SPEC invariants 1–4 for every seed, and invariant 8: no
//! write is acknowledged by a Primary that was taken over while it was frozen, so no acknowledged write is ever
//! lost and never do two nodes acknowledge writes in the same interval. A failure prints the seed (rerun one with
//! `TWINSAN_SIM_SEED=N`, more with `TWINSAN_SIM_SEEDS=N`).

mod sim;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Takeovers of a frozen Primary over all seeds: the fault must actually happen.
static TAKEOVERS: AtomicU64 = AtomicU64::new(0);
/// Disks a serving Primary attached and resynced to UpToDate over all seeds.
static PRIMARY_ATTACHES: AtomicU64 = AtomicU64::new(0);

use sim::Pair;
use twinsan_replication::engine::{AdminCommand, IoFailure, Output};
use twinsan_replication::generation::Role;
use twinsan_replication::state::{ConnState, DiskState, ReplState};
use twinsan_replication::wire::ReplicationProtocol;

const BACKING: u64 = 12 << 20;
const BLOCK: u64 = 4096;
/// The cluster's lease, as the node driver sets it for the default timers.
const LEASE: Duration = Duration::from_millis(600);

/// xorshift64*: the simulation's only source of randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What the client may read from one block.
#[derive(Default, Clone)]
struct BlockTruth {
    /// The last acknowledged value: what a read must return, unless a power loss since made it uncertain.
    expect: u8,
    /// The last value known durable (FUA, or acknowledged before a completed flush).
    durable: u8,
    /// `expect` is not yet durable.
    volatile: bool,
    /// Other values a read may return: writes in flight or orphaned, and after a power loss every value
    /// acknowledged since the last durable one.
    also: Vec<u8>,
    since_durable: Vec<u8>,
}

/// What the client knows, per block (SCSI with a write-back cache: WCE=1, so only FUA and SYNCHRONIZE CACHE
/// promise durability through a power loss; a process crash loses nothing acknowledged).
#[derive(Default)]
struct Oracle {
    blocks: HashMap<u64, BlockTruth>,
    in_flight: HashMap<u64, (u64, u8, bool)>,
    flushes: HashMap<u64, Vec<(u64, u8)>>,
}

impl Oracle {
    fn issued(&mut self, id: u64, block: u64, value: u8, fua: bool) {
        self.in_flight.insert(id, (block, value, fua));
        self.blocks.entry(block).or_default().also.push(value);
    }
    fn answered(&mut self, id: u64, result: &Result<(), IoFailure>) {
        let Some((block, value, fua)) = self.in_flight.remove(&id) else {
            return;
        };
        if result.is_err() {
            return;
        }
        let still: Vec<u8> = self
            .in_flight
            .values()
            .filter(|(b, _, _)| *b == block)
            .map(|&(_, v, _)| v)
            .collect();
        let t = self.blocks.entry(block).or_default();
        t.expect = value;
        if fua {
            t.durable = value;
            t.volatile = false;
            t.since_durable.clear();
        } else {
            t.volatile = true;
            t.since_durable.push(value);
        }
        // Older values are overwritten for good; what is still in flight may land after.
        let mut also = still;
        if t.volatile && t.also.contains(&t.durable) && t.expect != t.durable {
            // A power loss earlier left the durable value possible; the new acknowledgement settles it.
        }
        also.retain(|&v| v != value);
        t.also = also;
    }
    fn flush_issued(&mut self, id: u64) {
        let snapshot = self
            .blocks
            .iter()
            .filter(|(_, t)| t.volatile)
            .map(|(&b, t)| (b, t.expect))
            .collect();
        self.flushes.insert(id, snapshot);
    }
    fn flush_answered(&mut self, id: u64, result: &Result<(), IoFailure>) {
        let Some(snapshot) = self.flushes.remove(&id) else {
            return;
        };
        if result.is_err() {
            return;
        }
        for (block, value) in snapshot {
            if let Some(t) = self.blocks.get_mut(&block) {
                if t.expect == value {
                    t.durable = value;
                    t.volatile = false;
                    t.since_durable.clear();
                }
            }
        }
    }
    /// A power loss: what was acknowledged but not durable may be gone (or come back from the other copy).
    fn power_loss(&mut self) {
        for t in self.blocks.values_mut() {
            if t.volatile {
                let mut also = std::mem::take(&mut t.also);
                also.push(t.expect);
                also.extend(t.since_durable.iter().copied());
                t.also = also;
                t.expect = t.durable;
            }
        }
    }
    /// Writes whose answer can never come (the node died): they may or may not be on disk.
    fn orphan_all(&mut self) {
        self.in_flight.clear();
        self.flushes.clear();
    }
    fn check(&self, block: u64, got: u8) -> Result<(), String> {
        let t = self.blocks.get(&block).cloned().unwrap_or_default();
        if got == t.expect || t.also.contains(&got) {
            Ok(())
        } else {
            Err(format!(
                "block {block} reads {got:#04x}; last acknowledged {:#04x} (durable {:#04x}), also possible {:?}",
                t.expect, t.durable, t.also
            ))
        }
    }
}

fn run_seed(seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut p = Pair::new(BACKING, ReplicationProtocol::C);
    p.uuid_seed = seed;
    p.lease = Some(LEASE);
    p.settle(20);
    p.admin(0, AdminCommand::NewCurrentUuid { clear_bitmap: true })
        .map_err(|e| format!("clear bitmap: {e}"))?;
    p.admin(0, AdminCommand::Primary { force: false })
        .map_err(|e| format!("promote: {e}"))?;
    let blocks = p.engine(0).data_size() / BLOCK;
    let mut oracle = Oracle::default();
    let mut primary = 0usize;
    let mut next_value: u8 = 1;
    // A Primary taken over while it was frozen, until it is demoted: it must never acknowledge a write.
    let mut deposed: Option<usize> = None;
    for _step in 0..150 {
        // Answers that came in.
        let done: Vec<_> = std::mem::take(&mut p.done);
        for (node, out) in done {
            match out {
                Output::WriteDone { result: Ok(()), id } if Some(node) == deposed => {
                    return Err(format!(
                        "node{} acknowledged write {id} after node{} took the volume over while it was frozen \
                         (invariant 8)\n{}",
                        node + 1,
                        2 - node,
                        p.logs[p.logs.len().saturating_sub(20)..].join("\n")
                    ));
                }
                Output::WriteDone { id, result } if node == primary => oracle.answered(id, &result),
                Output::FlushDone { id, result } if node == primary => {
                    oracle.flush_answered(id, &result)
                }
                Output::AdminDone { .. } | Output::WriteDone { .. } | Output::FlushDone { .. } => {}
                other => p.done.push((node, other)),
            }
        }
        check_two_primaries(&mut p)?;
        if rng.chance(4) {
            freeze_round(
                &mut p,
                &mut rng,
                &mut oracle,
                &mut primary,
                &mut deposed,
                &mut next_value,
            )?;
            continue;
        }
        match rng.below(100) {
            0..=44 => {
                if p.nodes[primary]
                    .as_ref()
                    .is_some_and(|e| e.state().may_write())
                {
                    let block = rng.below(blocks);
                    let value = next_value;
                    next_value = next_value.wrapping_add(1).max(1);
                    let fua = rng.chance(10);
                    let id =
                        p.submit_write(primary, block * BLOCK, vec![value; BLOCK as usize], fua);
                    oracle.issued(id, block, value, fua);
                }
            }
            45..=74 => {
                let k = rng.below(6) as usize + 1;
                p.step(k);
            }
            75..=80 => p.settle(1),
            81..=84 => {
                if p.nodes[primary]
                    .as_ref()
                    .is_some_and(|e| e.state().may_write())
                {
                    let id = p.submit_flush(primary);
                    oracle.flush_issued(id);
                }
            }
            85..=88 => {
                if p.cut {
                    p.heal();
                } else {
                    p.cut();
                }
            }
            89..=92 => {
                // A crash: of the primary (failover when the peer has everything), or of the secondary.
                let victim = if rng.chance(50) { primary } else { 1 - primary };
                if p.nodes[victim].is_none() {
                    continue;
                }
                let other = 1 - victim;
                let peer_complete = p.nodes[other].as_ref().is_some_and(|e| {
                    let s = e.status();
                    // A disk about to fail is not a failover target: a diskless Primary keeps serving from its
                    // peer and is never given a disk back while Primary (that is `volume attach`, later).
                    !e.storage().disk.failing
                        && !e.storage().disk.full
                        && s.disk == DiskState::UpToDate
                        && s.connection == ConnState::Connected
                        && s.replication == ReplState::Established
                });
                let lose_cache = rng.chance(50);
                p.kill(victim, lose_cache);
                if lose_cache {
                    oracle.power_loss();
                }
                if victim == primary {
                    oracle.orphan_all();
                    if peer_complete {
                        p.settle(2);
                        let result = p.admin(other, AdminCommand::Primary { force: false });
                        primary = other;
                        if p.engine(other).storage().disk.dead {
                            // It died in a torn metadata write during the promotion: handled below.
                        } else if let Err(e) = result {
                            let s = p.engine(other).status();
                            let tail = p.logs[p.logs.len().saturating_sub(12)..].join("\n");
                            return Err(format!(
                                "failover to node{}: {e}; {s:?}\n{tail}",
                                other + 1
                            ));
                        }
                    }
                }
            }
            93..=96 => {
                repair_disks(&mut p, rng.chance(50));
                for i in 0..2 {
                    if p.nodes[i].is_none() {
                        p.start(i);
                        if i == primary {
                            // The old primary comes back as Secondary; it is promoted again once in sync.
                            p.settle(40);
                            let s = p.engine(i).status();
                            if s.disk == DiskState::UpToDate {
                                let _ = p.admin(i, AdminCommand::Primary { force: false });
                            }
                        }
                    }
                }
            }
            97 => match rng.below(4) {
                // A disk error on the secondary: it detaches, the primary marks what it misses.
                0 => {
                    if let Some(e) = p.nodes[1 - primary].as_mut() {
                        e.storage_mut().disk.failing = true;
                    }
                }
                // A disk that fills up (its metadata and flushes still work): on the primary, which then
                // serves from its peer (diskless Primary), or on the secondary.
                1 | 2 => {
                    let i = if rng.chance(50) { primary } else { 1 - primary };
                    if let Some(e) = p.nodes[i].as_mut() {
                        e.storage_mut().disk.full = true;
                    }
                }
                // `volume detach` on the secondary; a later repair round attaches it again.
                _ => {
                    if p.nodes[1 - primary].is_some() {
                        if let Err(e) = p.admin(1 - primary, AdminCommand::Detach) {
                            p.logs
                                .push(format!("node{}: volume detach: {e}", 2 - primary));
                        }
                    }
                }
            },
            _ => {
                // A torn metadata write: the node dies in the middle of its next metadata write.
                let i = rng.below(2) as usize;
                if let Some(e) = p.nodes[i].as_mut() {
                    e.storage_mut().disk.tear_after = Some(rng.below(3) as u32);
                }
            }
        }
        // A node that died in a torn write is gone.
        for i in 0..2 {
            if p.nodes[i].as_ref().is_some_and(|e| e.storage().disk.dead) {
                p.kill(i, true);
                oracle.power_loss();
                if i == primary {
                    oracle.orphan_all();
                }
            }
        }
    }
    // The end: heal, repair, restart, wait for both copies to agree, promote the primary, read every block.
    p.heal();
    for i in 0..2 {
        if let Some(e) = p.nodes[i].as_mut() {
            e.storage_mut().disk.tear_after = None;
        }
        if p.nodes[i].as_ref().is_some_and(|e| e.storage().disk.dead) {
            p.kill(i, true);
            oracle.power_loss();
        }
        if p.nodes[i].is_none() {
            p.start(i);
        }
    }
    // Half the seeds let a diskless Primary attach while it serves (once the link is back up): the one the faults
    // left, or one made now, under writes.
    let on_primary = rng.chance(50);
    if on_primary {
        p.settle(30);
        attach_round(&mut p, &mut rng, &mut oracle, primary, &mut next_value);
    }
    repair_disks(&mut p, on_primary);
    let done: Vec<_> = std::mem::take(&mut p.done);
    for (node, out) in done {
        match out {
            Output::WriteDone { id, result } if node == primary => oracle.answered(id, &result),
            Output::FlushDone { id, result } if node == primary => {
                oracle.flush_answered(id, &result)
            }
            _ => {}
        }
    }
    p.settle(400);
    for i in 0..2 {
        let s = p.engine(i).status();
        if s.role == Role::Primary && i != primary {
            return Err(format!(
                "node{} is Primary, node{} was expected",
                i + 1,
                primary + 1
            ));
        }
        if !(s.disk == DiskState::UpToDate && s.replication == ReplState::Established) {
            let other = p.engine(1 - i).status();
            return Err(format!(
                "node{} did not get back in sync: {s:?}\nnode{}: {other:?}\n{}",
                i + 1,
                2 - i,
                p.logs.join("\n")
            ));
        }
    }
    let (a, b) = (p.data(0), p.data(1));
    if a != b {
        let differ: Vec<u64> = (0..blocks)
            .filter(|&k| {
                a[(k * BLOCK) as usize..((k + 1) * BLOCK) as usize]
                    != b[(k * BLOCK) as usize..((k + 1) * BLOCK) as usize]
            })
            .take(8)
            .collect();
        return Err(format!(
            "both UpToDate after resync, but the copies differ (invariant 4) in blocks {differ:?}\n{}",
            p.logs.join("\n")
        ));
    }
    if p.engine(primary).state().role() != Role::Primary {
        p.admin(primary, AdminCommand::Primary { force: false })
            .map_err(|e| format!("final promotion: {e}"))?;
    }
    let data = p.data(primary);
    for block in 0..blocks {
        let got = data[(block * BLOCK) as usize];
        oracle
            .check(block, got)
            .map_err(|e| format!("{e} (invariant 1)"))?;
    }
    Ok(())
}

/// One node freezes; the client keeps sending it requests, which wait in its socket buffer. A long freeze of a
/// Primary whose peer was in sync ends in a takeover, as the cluster manager does it: the survivor drops the link
/// and promotes only after the frozen node's lease has certainly run out, and grants it no new one. The frozen
/// node resumes, hears that its link is gone, processes the requests that waited (none may be acknowledged
/// then), and is demoted by the cluster (two Primaries meet: the one taken over goes), after which it resyncs.
/// The Primary's disk fills up under writes (it detaches and serves through its peer), gets room again, and is
/// attached while writes go on: they keep completing, and the disk resyncs from the peer. Only when the Primary
/// has its disk and a connected UpToDate peer.
fn attach_round(
    p: &mut Pair,
    rng: &mut Rng,
    oracle: &mut Oracle,
    primary: usize,
    next_value: &mut u8,
) {
    let ready = p.nodes[primary].as_ref().is_some_and(|e| {
        let st = e.state();
        e.has_disk()
            && st.role() == Role::Primary
            && st.peer().conn == ConnState::Connected
            && st.peer().disk == DiskState::UpToDate
    });
    if !ready {
        return;
    }
    let blocks = p.engine(primary).data_size() / BLOCK;
    let mut writes = |p: &mut Pair, rng: &mut Rng, oracle: &mut Oracle, n: usize| {
        for _ in 0..n {
            if p.engine(primary).state().may_write() {
                let block = rng.below(blocks);
                let value = *next_value;
                *next_value = next_value.wrapping_add(1).max(1);
                let id = p.submit_write(primary, block * BLOCK, vec![value; BLOCK as usize], false);
                oracle.issued(id, block, value, false);
            }
            p.step(rng.below(4) as usize + 1);
        }
    };
    p.engine(primary).storage_mut().disk.full = true;
    writes(p, rng, oracle, 8);
    p.engine(primary).storage_mut().disk.full = false;
    p.submit_admin(primary, AdminCommand::Attach);
    writes(p, rng, oracle, 16);
    p.settle(40);
    let s = p.engine(primary).status();
    if s.role == Role::Primary && s.disk == DiskState::UpToDate {
        PRIMARY_ATTACHES.fetch_add(1, Ordering::Relaxed);
    }
}

fn freeze_round(
    p: &mut Pair,
    rng: &mut Rng,
    oracle: &mut Oracle,
    primary: &mut usize,
    deposed: &mut Option<usize>,
    next_value: &mut u8,
) -> Result<(), String> {
    let victim = if rng.chance(60) {
        *primary
    } else {
        1 - *primary
    };
    let other = 1 - victim;
    if p.nodes[victim].is_none() || p.nodes[other].is_none() || p.cut {
        return Ok(());
    }
    // Disk faults have their own rounds; a freeze is about time.
    let healthy = |e: &twinsan_replication::engine::Engine<sim::MemStorage>| {
        let disk = &e.storage().disk;
        !disk.failing
            && !disk.full
            && disk.tear_after.is_none()
            && e.status().disk == DiskState::UpToDate
    };
    if !p.nodes.iter().flatten().all(healthy) {
        return Ok(());
    }
    let peer_complete = p.nodes[other].as_ref().is_some_and(|e| {
        let s = e.status();
        s.disk == DiskState::UpToDate
            && s.connection == ConnState::Connected
            && s.replication == ReplState::Established
            && p.nodes[victim]
                .as_ref()
                .is_some_and(|v| v.state().role() == Role::Primary)
    });
    let blocks = p.engine(victim).data_size() / BLOCK;
    p.freeze(victim);
    let long = rng.chance(60);
    let ticks = if long {
        12 + rng.below(30) as u32
    } else {
        1 + rng.below(4) as u32
    };
    // Requests that reach the frozen node wait in its socket buffer.
    let mut waiting = Vec::new();
    let take_over = victim == *primary && peer_complete && long;
    for _ in 0..ticks {
        if victim == *primary && rng.chance(50) {
            let block = rng.below(blocks);
            let value = *next_value;
            *next_value = next_value.wrapping_add(1).max(1);
            waiting.push((block, value, rng.chance(20)));
        }
        p.advance(1);
    }
    if take_over {
        // The survivor waits out the lease it last granted (the frozen node's last renewal was at the freeze),
        // closes the link and promotes; from now on the frozen node gets no lease.
        p.leases_to[victim] = false;
        p.advance(((LEASE.as_millis() / 100) + 1) as u32);
        p.drop_link_to_frozen();
        // What the frozen node had in flight may land or not.
        oracle.orphan_all();
        if let Err(e) = p.admin(other, AdminCommand::Primary { force: false }) {
            let tail = p.logs[p.logs.len().saturating_sub(12)..].join("\n");
            return Err(format!(
                "takeover by node{}: {e}\n{tail}\n{:?}",
                other + 1,
                p.engine(other).status()
            ));
        }
        *primary = other;
        *deposed = Some(victim);
        TAKEOVERS.fetch_add(1, Ordering::Relaxed);
        // The survivor serves.
        for _ in 0..rng.below(6) {
            let block = rng.below(blocks);
            let value = *next_value;
            *next_value = next_value.wrapping_add(1).max(1);
            let fua = rng.chance(20);
            let id = p.submit_write(other, block * BLOCK, vec![value; BLOCK as usize], fua);
            oracle.issued(id, block, value, fua);
            p.settle(1);
        }
    }
    // The frozen node resumes with its old state; the requests that waited reach it.
    p.thaw(victim);
    for (block, value, fua) in waiting {
        if p.nodes[victim].is_none() {
            break;
        }
        let id = p.submit_write(victim, block * BLOCK, vec![value; BLOCK as usize], fua);
        if victim == *primary {
            oracle.issued(id, block, value, fua);
        } else {
            // Sent to the old Primary: it must never be acknowledged (checked on every answer); its data may land
            // on the old Primary's disk, which resyncs from the survivor.
            oracle.blocks.entry(block).or_default();
        }
    }
    p.settle(3);
    if *deposed == Some(victim) {
        // Two Primaries meet: the cluster demotes the one that was taken over; it grants and is granted again.
        no_ack_from(p, victim, "after it was taken over")?;
        p.admin(victim, AdminCommand::Secondary)
            .map_err(|e| format!("demoting the old primary node{}: {e}", victim + 1))?;
        no_ack_from(p, victim, "while it was demoted after a takeover")?;
        p.leases_to[victim] = true;
        *deposed = None;
    } else {
        p.leases_to[victim] = true;
    }
    Ok(())
}

/// Invariant 8: node `victim`, taken over while it was frozen, acknowledged none of the answers waiting in `p.done`.
fn no_ack_from(p: &mut Pair, victim: usize, when: &str) -> Result<(), String> {
    let acked = p.done.iter().find_map(|(node, out)| match out {
        Output::WriteDone { result: Ok(()), id } if *node == victim => Some(*id),
        _ => None,
    });
    match acked {
        Some(id) => Err(format!(
            "node{} acknowledged write {id} {when} (invariant 8)\n{}",
            victim + 1,
            p.logs[p.logs.len().saturating_sub(20)..].join("\n")
        )),
        None => Ok(()),
    }
}

/// Replaces failed disks' faults (an error, no space) and attaches every detached disk again (`volume attach`,
/// then `volume up` to connect a node left StandAlone). A diskless Primary attaches its disk while it serves
/// (`on_primary`, when its peer is connected with UpToDate data: it resyncs from it), or is demoted first and
/// promoted again once its disk is back UpToDate.
fn repair_disks(p: &mut Pair, on_primary: bool) {
    for i in 0..2 {
        let Some(e) = p.nodes[i].as_mut() else {
            continue;
        };
        let disk = &mut e.storage_mut().disk;
        disk.failing = false;
        disk.full = false;
        if e.has_disk() {
            continue;
        }
        // Only a Primary its connected peer serves may attach its disk (else refused: tested on its own).
        let st = e.state();
        let primary = st.role() == Role::Primary;
        let served =
            st.peer().conn == ConnState::Connected && st.peer().disk == DiskState::UpToDate;
        let serving = primary && on_primary && served;
        let was_primary = primary && !serving;
        if was_primary {
            // Its writes in flight finish first.
            p.settle(20);
            if let Err(e) = p.admin(i, AdminCommand::Secondary) {
                p.logs
                    .push(format!("node{}: diskless Primary not demoted: {e}", i + 1));
                continue;
            }
        }
        match p.admin(i, AdminCommand::Attach) {
            Err(e) => p.logs.push(format!("node{}: volume attach: {e}", i + 1)),
            Ok(_) if serving => {
                p.settle(40);
                let s = p.engine(i).status();
                if s.role == Role::Primary && s.disk == DiskState::UpToDate {
                    PRIMARY_ATTACHES.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
        }
        if let Err(e) = p.admin(i, AdminCommand::Up) {
            p.logs.push(format!("node{}: volume up: {e}", i + 1));
        }
        if was_primary {
            p.settle(40);
            if p.engine(i).status().disk == DiskState::UpToDate {
                let _ = p.admin(i, AdminCommand::Primary { force: false });
            }
        }
    }
}

/// Invariant 2: never two Primaries while connected.
fn check_two_primaries(p: &mut Pair) -> Result<(), String> {
    let both = p
        .nodes
        .iter()
        .flatten()
        .filter(|e| e.state().role() == Role::Primary)
        .count()
        == 2;
    let connected = p
        .nodes
        .iter()
        .flatten()
        .any(|e| e.status().connection == ConnState::Connected);
    if both && connected {
        return Err("two Primaries while connected (invariant 2)".into());
    }
    Ok(())
}

#[test]
fn simulation_keeps_the_invariants_over_many_seeds() {
    let seeds: Vec<u64> = match std::env::var("TWINSAN_SIM_SEED") {
        Ok(one) => vec![one.parse().expect("TWINSAN_SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("TWINSAN_SIM_SEEDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(200u64);
            (1..=n).collect()
        }
    };
    let mut failures = Vec::new();
    for &seed in &seeds {
        if let Err(e) = run_seed(seed) {
            failures.push(format!("seed {seed}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds broke an invariant (rerun one with TWINSAN_SIM_SEED=N):\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
    if seeds.len() >= 100 {
        let takeovers = TAKEOVERS.load(Ordering::Relaxed);
        assert!(
            takeovers >= 20,
            "only {takeovers} takeovers of a frozen Primary in {} seeds",
            seeds.len()
        );
        let attaches = PRIMARY_ATTACHES.load(Ordering::Relaxed);
        eprintln!(
            "{takeovers} takeovers, {attaches} disks attached and resynced under a serving Primary"
        );
        assert!(
            attaches >= 10,
            "only {attaches} disks attached under a serving Primary in {} seeds",
            seeds.len()
        );
    }
}
