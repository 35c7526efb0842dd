//! The volume engine, two nodes at a time over the deterministic harness in `sim/`.

mod sim;

use sim::Pair;
use std::time::Duration;

use twinsan_replication::engine::{AdminCommand, Input, IoFailure, Output};
use twinsan_replication::generation::Role;
use twinsan_replication::metadata::RESERVATIONS_CAPACITY;
use twinsan_replication::state::{ConnState, DiskState, ReplState};
use twinsan_replication::wire::ReplicationProtocol;

const BACKING: u64 = 16 << 20;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed as usize * 31 + i * 7) as u8)
        .collect()
}

/// A protocol C pair of empty disks, connected and UpToDate on both sides (`--clear-bitmap`), both Secondary.
fn new_pair_in_sync() -> Pair {
    let mut p = Pair::new(BACKING, ReplicationProtocol::C);
    p.settle(20);
    p.admin(0, AdminCommand::NewCurrentUuid { clear_bitmap: true })
        .expect("clear bitmap");
    p.settle(20);
    p
}

#[test]
fn initial_sync_after_force_then_writes_replicate() {
    let mut p = Pair::new(BACKING, ReplicationProtocol::C);
    p.settle(20);
    for i in 0..2 {
        let s = p.engine(i).status();
        assert_eq!(s.connection, ConnState::Connected, "{:?}", p.logs);
        assert_eq!(s.disk, DiskState::Inconsistent);
    }
    // Something on node1's disk that must reach node2.
    let size = p.engine(0).data_size();
    assert!(
        p.admin(0, AdminCommand::Primary { force: true }).is_ok(),
        "{:?}",
        p.logs
    );
    p.settle(200);
    for i in 0..2 {
        let s = p.engine(i).status();
        assert_eq!(
            s.disk,
            DiskState::UpToDate,
            "node{} {:?} {:?}",
            i + 1,
            s,
            p.logs
        );
        assert_eq!(s.peer_disk, DiskState::UpToDate);
        assert_eq!(s.replication, ReplState::Established);
    }
    assert_eq!(p.engine(0).status().resync_sent_bytes, size);
    let id = p.submit_write(0, 4096 * 3, pattern(1, 8192), false);
    p.settle(5);
    assert_eq!(p.write_result(id), Some(Ok(())));
    assert_eq!(p.data(0), p.data(1));
    assert_eq!(p.read(0, 4096 * 3, 8192).expect("read"), pattern(1, 8192));
}

#[test]
fn after_the_initial_sync_both_share_a_generation_and_a_later_split_brain_is_resolvable() {
    // Found by the seed walk-through: the sync target took the generation the source had at the handshake (the
    // just-created one) instead of the one `primary --force` made, so it had no ancestry and a later split brain
    // read as unrelated data.
    let mut p = Pair::new(BACKING, ReplicationProtocol::C);
    p.settle(20);
    p.admin(0, AdminCommand::Primary { force: true })
        .expect("force");
    p.settle(200);
    let (g0, g1) = (
        p.engine(0).status().generations,
        p.engine(1).status().generations,
    );
    assert_eq!(g0.current & !1, g1.current & !1, "{g0} vs {g1}");
    assert!(g1.current > 4, "the target holds a real generation: {g1}");
    // Both promote while cut off, and write: the heal finds a split brain between relatives.
    p.admin(0, AdminCommand::Secondary).expect("demote");
    p.settle(5);
    p.cut();
    p.settle(2);
    for i in 0..2 {
        p.admin(i, AdminCommand::Primary { force: false })
            .expect("promote");
        let id = p.submit_write(i, (i as u64) << 20, pattern(i as u64 + 7, 4096), false);
        p.settle(1);
        assert_eq!(p.write_result(id), Some(Ok(())));
    }
    p.heal();
    p.settle(20);
    for i in 0..2 {
        let s = p.engine(i).status();
        assert!(s.split_brain, "node{}: {s:?} {:?}", i + 1, p.logs);
        assert!(
            !p.logs.iter().any(|l| l.contains("unrelated")),
            "{:?}",
            p.logs
        );
    }
}

/// Advances the clock by `ticks` × 100 ms, ticking both engines; frames are delivered only with `deliver`.
fn idle(p: &mut Pair, ticks: u32, deliver: bool) {
    for _ in 0..ticks {
        p.now += Duration::from_millis(100);
        for i in 0..2 {
            let now = p.now;
            p.engine(i).handle(Input::Tick, now);
            p.collect(i);
        }
        if deliver {
            while p.step(10_000) > 0 {}
        }
    }
}

#[test]
fn a_replication_link_silent_while_the_cluster_lost_the_peer_is_dropped_early() {
    let mut p = Pair::new(BACKING, ReplicationProtocol::C);
    p.settle(20);
    p.admin(0, AdminCommand::NewCurrentUuid { clear_bitmap: true })
        .expect("in sync");
    p.settle(5);
    // An idle live link is heard from several times a second: the cluster's word alone does not drop it.
    idle(&mut p, 30, true);
    let now = p.now;
    p.engine(0).handle(
        Input::PeerSilent {
            silence: Duration::from_secs(1),
        },
        now,
    );
    p.collect(0);
    assert_eq!(p.engine(0).status().connection, ConnState::Connected);
    // The peer hangs: nothing arrives. After 1.2 s of silence the link is dropped at once, long before the
    // volume's own PEER_TIMEOUT.
    idle(&mut p, 12, false);
    assert_eq!(p.engine(0).status().connection, ConnState::Connected);
    let now = p.now;
    p.engine(0).handle(
        Input::PeerSilent {
            silence: Duration::from_secs(1),
        },
        now,
    );
    p.collect(0);
    assert_ne!(p.engine(0).status().connection, ConnState::Connected);
    assert!(
        p.logs.iter().any(|l| l.contains("it is gone")),
        "{:?}",
        p.logs
    );
}

#[test]
fn protocol_c_write_waits_for_the_peer() {
    let mut p = new_pair_in_sync();
    assert_eq!(
        p.engine(1).status().disk,
        DiskState::UpToDate,
        "{:?}",
        p.logs
    );
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    let id = p.submit_write(0, 0, pattern(2, 4096), false);
    assert_eq!(
        p.write_result(id),
        None,
        "completed before the peer acknowledged"
    );
    p.step(1);
    p.step(1);
    p.settle(2);
    assert_eq!(p.write_result(id), Some(Ok(())));
}

#[test]
fn failover_keeps_every_acknowledged_write() {
    let mut p = new_pair_in_sync();
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    let mut acked = Vec::new();
    for k in 0..50u64 {
        let id = p.submit_write(0, (k * 37 % 1000) * 4096, pattern(k, 4096), false);
        p.settle(1);
        if p.write_result(id) == Some(Ok(())) {
            acked.push(k);
        }
    }
    assert_eq!(acked.len(), 50);
    p.kill(0, true);
    p.settle(2);
    assert_eq!(p.engine(1).status().connection, ConnState::Connecting);
    p.admin(1, AdminCommand::Primary { force: false })
        .expect("promote node2");
    let mut expect = std::collections::HashMap::new();
    for &k in &acked {
        expect.insert(k * 37 % 1000, k);
    }
    for (block, k) in expect {
        assert_eq!(
            p.read(1, block * 4096, 4096).expect("read"),
            pattern(k, 4096)
        );
    }
}

#[test]
fn secondary_away_resyncs_only_what_changed() {
    let mut p = new_pair_in_sync();
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    p.kill(1, false);
    let mut written = 0;
    for k in 0..64u64 {
        let id = p.submit_write(0, k * 65536, pattern(k, 16384), false);
        p.settle(1);
        assert_eq!(p.write_result(id), Some(Ok(())));
        written += 16384;
    }
    assert_eq!(p.engine(0).status().out_of_sync_bytes, written);
    // `volume status` says why the peer is not connected.
    let why = p.engine(0).status().last_error;
    assert!(
        why.as_deref().is_some_and(|w| w.contains("lost the link")),
        "{why:?}"
    );
    p.start(1);
    p.settle(200);
    let s = p.engine(0).status();
    assert_eq!(s.replication, ReplState::Established, "{:?}", p.logs);
    assert_eq!(s.last_error, None, "connected again: nothing to explain");
    assert_eq!(p.engine(1).status().disk, DiskState::UpToDate);
    assert_eq!(s.resync_sent_bytes, written);
    assert_eq!(s.out_of_sync_bytes, 0);
    assert_eq!(p.data(0), p.data(1));
    p.admin(0, AdminCommand::Verify).expect("verify");
    p.settle(200);
    assert_eq!(p.engine(0).status().verify_out_of_sync_bytes, 0);
    assert_eq!(p.engine(0).status().replication, ReplState::Established);
}

#[test]
fn split_brain_is_reported_and_discard_my_data_resolves_it_by_bitmap() {
    let mut p = new_pair_in_sync();
    p.settle(5);
    p.cut();
    p.settle(2);
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote 1");
    p.admin(1, AdminCommand::Primary { force: false })
        .expect("promote 2");
    for i in 0..2 {
        let id = p.submit_write(i, (i as u64) << 20, pattern(i as u64, 8192), false);
        p.settle(1);
        assert_eq!(p.write_result(id), Some(Ok(())));
    }
    p.heal();
    p.settle(20);
    for i in 0..2 {
        let s = p.engine(i).status();
        assert!(s.split_brain, "node{} {:?} {:?}", i + 1, s, p.logs);
        assert_eq!(s.connection, ConnState::StandAlone);
        assert!(
            s.last_error
                .as_deref()
                .is_some_and(|w| w.contains("split brain")),
            "node{}: {:?}",
            i + 1,
            s.last_error
        );
    }
    p.admin(1, AdminCommand::Secondary).expect("demote 2");
    p.admin(
        1,
        AdminCommand::Connect {
            discard_my_data: true,
        },
    )
    .expect("connect victim");
    p.admin(
        0,
        AdminCommand::Connect {
            discard_my_data: false,
        },
    )
    .expect("connect");
    p.settle(100);
    let s = p.engine(0).status();
    assert_eq!(s.replication, ReplState::Established, "{:?}", p.logs);
    assert!(!s.split_brain);
    assert_eq!(s.last_error, None);
    assert_eq!(
        s.resync_sent_bytes, 16384,
        "a bitmap resync of both sides' changes"
    );
    assert_eq!(p.engine(1).status().role, Role::Secondary);
    assert_eq!(p.data(0), p.data(1));
}

#[test]
fn checksum_resync_sends_only_blocks_that_differ() {
    let mut p = Pair::new(BACKING, ReplicationProtocol::C);
    p.csums = true;
    for i in 0..2 {
        p.kill(i, false);
        p.start(i);
    }
    p.settle(20);
    p.admin(0, AdminCommand::NewCurrentUuid { clear_bitmap: true })
        .expect("clear bitmap");
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    p.kill(1, false);
    // 8 blocks written while node2 is away; the same data also lands on node2's disk by other means for 6 of
    // them (as after a full sync of mostly identical disks): only 2 blocks differ.
    for k in 0..8u64 {
        let id = p.submit_write(0, k * 65536, pattern(k, 4096), false);
        p.settle(1);
        assert_eq!(p.write_result(id), Some(Ok(())));
    }
    for k in 0..6u64 {
        let at = (k * 65536) as usize;
        p.disks[1].cache[at..at + 4096].copy_from_slice(&pattern(k, 4096));
    }
    p.start(1);
    p.settle(100);
    let s = p.engine(0).status();
    assert_eq!(s.replication, ReplState::Established, "{:?}", p.logs);
    assert_eq!(
        s.resync_sent_bytes,
        2 * 4096,
        "only the blocks whose digest differs travel"
    );
    assert_eq!(p.data(0), p.data(1));
}

#[test]
fn a_failing_disk_is_detached_and_the_primary_serves_from_the_peer() {
    let mut p = new_pair_in_sync();
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    let id = p.submit_write(0, 0, pattern(7, 4096), false);
    p.settle(2);
    assert_eq!(p.write_result(id), Some(Ok(())));
    p.engine(0).storage_mut().disk.failing = true;
    let id = p.submit_write(0, 8192, pattern(8, 4096), false);
    p.settle(2);
    assert_eq!(p.write_result(id), Some(Ok(())), "{:?}", p.logs);
    let s = p.engine(0).status();
    assert_eq!(s.role, Role::Primary);
    assert_eq!(s.disk, DiskState::Diskless, "{:?}", p.logs);
    assert!(!p.engine(0).reads_local());
    assert_eq!(
        p.read(0, 0, 4096).expect("read from the peer"),
        pattern(7, 4096)
    );
    assert_eq!(
        p.read(0, 8192, 4096).expect("read from the peer"),
        pattern(8, 4096)
    );
    assert!(
        p.logs.iter().any(|l| l.contains("I/O error")),
        "{:?}",
        p.logs
    );
}

#[test]
fn protocols_a_and_b_complete_earlier_than_c() {
    for (protocol, after_send) in [
        (ReplicationProtocol::A, true),
        (ReplicationProtocol::B, false),
    ] {
        let mut p = Pair::new(BACKING, protocol);
        p.settle(20);
        p.admin(0, AdminCommand::NewCurrentUuid { clear_bitmap: true })
            .expect("clear bitmap");
        p.admin(0, AdminCommand::Primary { force: false })
            .expect("promote");
        let id = p.submit_write(0, 0, pattern(3, 4096), false);
        assert_eq!(p.write_result(id).is_some(), after_send, "{protocol:?}");
        p.settle(2);
        assert_eq!(p.write_result(id).or(Some(Ok(()))), Some(Ok(())));
        assert_eq!(p.data(0), p.data(1), "{protocol:?}");
    }
}

#[test]
fn invalidate_resyncs_everything_from_the_peer() {
    let mut p = new_pair_in_sync();
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    let id = p.submit_write(0, 0, pattern(9, 8192), false);
    p.settle(2);
    assert_eq!(p.write_result(id), Some(Ok(())));
    // node2's copy silently damaged (a bad disk, a stray dd): invalidate discards it all.
    p.engine(1).storage_mut().disk.cache[..4096].fill(0xee);
    assert_ne!(p.data(0), p.data(1));
    let refused = p
        .admin(0, AdminCommand::Invalidate)
        .expect_err("a Primary is never invalidated");
    assert!(refused.contains("Primary"), "{refused}");
    p.admin(1, AdminCommand::Invalidate)
        .expect("invalidate node2");
    p.settle(100);
    let s = p.engine(0).status();
    assert_eq!(s.replication, ReplState::Established, "{:?}", p.logs);
    assert_eq!(
        s.resync_sent_bytes,
        p.engine(0).data_size(),
        "a full resync"
    );
    assert_eq!(p.engine(1).status().disk, DiskState::UpToDate);
    assert_eq!(p.data(0), p.data(1));
}

#[test]
fn down_closes_the_activity_log_and_up_resyncs_only_what_changed() {
    let mut p = new_pair_in_sync();
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    let refused = p
        .admin(0, AdminCommand::Down)
        .expect_err("a Primary is not taken down");
    assert!(refused.contains("secondary"), "{refused}");
    p.admin(1, AdminCommand::Down).expect("down node2");
    let s = p.engine(1).status();
    assert_eq!(
        (s.disk, s.connection),
        (DiskState::Diskless, ConnState::StandAlone)
    );
    for k in 0..4u64 {
        let id = p.submit_write(0, k * (1 << 20), pattern(k, 4096), false);
        p.settle(1);
        assert_eq!(p.write_result(id), Some(Ok(())));
    }
    p.admin(1, AdminCommand::Up).expect("up node2");
    p.settle(100);
    let s = p.engine(0).status();
    assert_eq!(s.replication, ReplState::Established, "{:?}", p.logs);
    assert_eq!(
        s.resync_sent_bytes,
        4 * 4096,
        "only the four blocks written while node2 was down"
    );
    assert!(
        !p.logs
            .iter()
            .any(|l| l.starts_with("node2") && l.contains("did not close the activity log")),
        "a clean down closes the activity log: {:?}",
        p.logs
    );
    assert_eq!(p.data(0), p.data(1));
}

#[test]
fn protocol_a_writes_lost_with_the_link_are_resynced() {
    let mut p = Pair::new(BACKING, ReplicationProtocol::A);
    p.settle(20);
    p.admin(0, AdminCommand::NewCurrentUuid { clear_bitmap: true })
        .expect("clear bitmap");
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    // Completed at once (protocol A), then the link breaks before the frame reaches node2.
    let id = p.submit_write(0, 4096 * 5, pattern(5, 4096), false);
    assert_eq!(p.write_result(id), Some(Ok(())));
    p.cut();
    assert_eq!(
        p.engine(0).status().out_of_sync_bytes,
        4096,
        "the unconfirmed write is out of sync"
    );
    p.heal();
    p.settle(100);
    assert_eq!(
        p.engine(0).status().replication,
        ReplState::Established,
        "{:?}",
        p.logs
    );
    assert_eq!(p.engine(0).status().out_of_sync_bytes, 0);
    assert_eq!(p.data(0), p.data(1));
    // Writes the peer confirmed by a barrier leave the transfer log: nothing to resync after a later cut.
    let id = p.submit_write(0, 4096 * 6, pattern(6, 4096), false);
    assert_eq!(p.write_result(id), Some(Ok(())));
    p.settle(3);
    p.cut();
    assert_eq!(p.engine(0).status().out_of_sync_bytes, 0, "{:?}", p.logs);
}

#[test]
fn reservations_reach_the_peer_before_they_complete_and_follow_the_data() {
    let mut p = new_pair_in_sync();
    // Only the Primary changes them.
    let refused = p.submit_reservations(1, b"secondary".to_vec());
    assert!(matches!(
        p.reservations_result(refused),
        Some(Err(IoFailure::NotAvailable(_)))
    ));
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    let id = p.submit_reservations(0, b"state one".to_vec());
    assert_eq!(
        p.reservations_result(id),
        None,
        "completed before the peer had it"
    );
    p.settle(5);
    assert_eq!(p.reservations_result(id), Some(Ok(())));
    assert_eq!(p.engine(1).reservations(), b"state one");
    // Too large for the superblock: refused, nothing changes.
    let big = p.submit_reservations(0, vec![7; RESERVATIONS_CAPACITY + 1]);
    assert!(matches!(
        p.reservations_result(big),
        Some(Err(IoFailure::OutOfRange(_)))
    ));
    assert_eq!(p.engine(0).reservations(), b"state one");

    // The peer away: the change completes here alone, and the peer gets it when it comes back and resyncs.
    p.kill(1, false);
    p.settle(2);
    let id = p.submit_reservations(0, b"state two".to_vec());
    p.settle(1);
    assert_eq!(p.reservations_result(id), Some(Ok(())));
    p.start(1);
    p.settle(100);
    assert_eq!(
        p.engine(1).status().disk,
        DiskState::UpToDate,
        "{:?}",
        p.logs
    );
    assert_eq!(p.engine(1).reservations(), b"state two");

    // Kept on disk: after a crash of both and a failover, the new Primary has the last acknowledged state.
    let id = p.submit_reservations(0, b"state three".to_vec());
    p.settle(5);
    assert_eq!(p.reservations_result(id), Some(Ok(())));
    p.kill(0, true);
    p.kill(1, true);
    p.start(1);
    assert_eq!(p.engine(1).reservations(), b"state three");

    // The link lost before the peer acknowledged: the change still completes (the peer is behind).
    p.start(0);
    p.settle(100);
    p.admin(1, AdminCommand::Primary { force: false })
        .expect("promote node2");
    let id = p.submit_reservations(1, b"state four".to_vec());
    p.cut();
    p.settle(2);
    assert_eq!(p.reservations_result(id), Some(Ok(())));
    assert_eq!(p.engine(0).reservations(), b"state three");
    p.heal();
    p.settle(100);
    let healed = p.engine(0).reservations().to_vec();
    assert_eq!(healed, b"state four", "{:?}", p.logs);
}

#[test]
fn a_discard_zeroes_the_range_on_both_nodes_and_resyncs_like_a_write() {
    let mut p = new_pair_in_sync();
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    let id = p.submit_write(0, 0, pattern(5, 256 << 10), false);
    p.settle(5);
    assert_eq!(p.write_result(id), Some(Ok(())));
    // Connected: the discard completes once the peer has done it too.
    let id = p.submit_discard(0, 64 << 10, 64 << 10);
    assert_eq!(p.write_result(id), None, "completed before the peer had it");
    p.settle(5);
    assert_eq!(p.write_result(id), Some(Ok(())));
    let mut expect = pattern(5, 256 << 10);
    expect[64 << 10..128 << 10].fill(0);
    assert!(
        p.data(1)[..256 << 10] == expect[..],
        "the peer's copy differs"
    );
    assert_eq!(p.data(0), p.data(1));
    // The peer away: the discarded range is out of sync and travels with the resync.
    p.kill(1, false);
    p.settle(2);
    let id = p.submit_discard(0, 192 << 10, 32 << 10);
    p.settle(1);
    assert_eq!(p.write_result(id), Some(Ok(())));
    assert_eq!(p.engine(0).status().out_of_sync_bytes, 32 << 10);
    p.start(1);
    p.settle(200);
    assert_eq!(
        p.engine(1).status().disk,
        DiskState::UpToDate,
        "{:?}",
        p.logs
    );
    // The discarded range, and the activity-log extent the killed node had open (its cache may be lost).
    let sent = p.engine(0).status().resync_sent_bytes;
    assert!(
        (32 << 10..=(4 << 20) + (32 << 10)).contains(&sent),
        "resync sent {sent} bytes"
    );
    assert_eq!(p.data(0), p.data(1));
    assert!(p.data(1)[192 << 10..224 << 10].iter().all(|&b| b == 0));
    // Out of range: refused like a write.
    let id = p.submit_discard(0, BACKING, 4096);
    p.settle(1);
    assert!(matches!(
        p.write_result(id),
        Some(Err(IoFailure::OutOfRange(_)))
    ));
}

/// A Primary frozen with a write in flight, whose peer took over meanwhile: when it resumes, its lease has run
/// out, so the write is held — not acknowledged — and no new generation is started; demoted, it fails the
/// write, and its copy is the older one on reconnect: a bitmap resync from the survivor, no split brain.
#[test]
fn a_primary_without_a_lease_holds_its_writes_and_starts_no_generation() {
    let mut p = new_pair_in_sync();
    p.lease = Some(Duration::from_millis(600));
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    let before = p.engine(0).generations();
    // Frozen with a write in flight.
    let id = p.submit_write(0, 0, pattern(1, 4096), true);
    p.freeze(0);
    p.leases_to[0] = false;
    p.advance(12);
    p.drop_link_to_frozen();
    p.admin(1, AdminCommand::Primary { force: false })
        .expect("takeover");
    p.thaw(0);
    p.settle(3);
    assert_eq!(p.write_result(id), None, "held, not answered: {:?}", p.logs);
    let s = p.engine(0).status();
    assert!(s.lease_hold && s.suspended, "{s:?}");
    assert_eq!(s.role, Role::Primary);
    assert_eq!(
        s.connection,
        ConnState::Connecting,
        "it does not connect: {s:?}"
    );
    assert_eq!(p.engine(0).generations(), before, "no new generation");
    // A read waits too: the survivor's copy may be newer.
    let read_id = {
        let id = p.next_id;
        p.next_id += 1;
        let now = p.now;
        p.engine(0).handle(
            Input::Read {
                id,
                offset: 0,
                len: 4096,
            },
            now,
        );
        p.collect(0);
        id
    };
    p.settle(2);
    assert!(!p
        .done
        .iter()
        .any(|(_, o)| matches!(o, twinsan_replication::engine::Output::ReadDone { id, .. } if *id == read_id)));
    // The cluster demotes it: the held write fails, it connects and resyncs from the survivor.
    p.admin(0, AdminCommand::Secondary).expect("demote");
    assert!(
        matches!(p.write_result(id), Some(Err(IoFailure::NotAvailable(_)))),
        "{:?}",
        p.logs
    );
    p.leases_to[0] = true;
    p.settle(100);
    let s = p.engine(0).status();
    assert_eq!(s.connection, ConnState::Connected, "{:?}", p.logs);
    assert!(!s.split_brain, "{:?}", p.logs);
    assert_eq!(s.disk, DiskState::UpToDate, "{:?}", p.logs);
    assert_eq!(p.data(0), p.data(1));
}

/// A short freeze that nobody acted on: the held write completes once the cluster renews the lease, after the
/// new generation (the link was lost) is on disk.
#[test]
fn a_renewed_lease_releases_held_writes_after_the_new_generation() {
    let mut p = new_pair_in_sync();
    p.lease = Some(Duration::from_millis(600));
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    let before = p.engine(0).generations();
    p.freeze(0);
    p.advance(8);
    p.thaw(0);
    p.cut();
    let id = p.submit_write(0, 4096, pattern(2, 4096), false);
    assert_eq!(p.write_result(id), None, "no lease: held");
    assert!(p.engine(0).status().lease_hold);
    p.settle(1);
    assert_eq!(p.write_result(id), Some(Ok(())), "{:?}", p.logs);
    let after = p.engine(0).generations();
    assert_ne!(
        after.current, before.current,
        "a new generation before the acknowledgement"
    );
    assert!(!p.engine(0).status().lease_hold);
}

/// Without a lease the cluster does not promote a node (the engine refuses too).
#[test]
fn no_promotion_without_a_lease() {
    let mut p = new_pair_in_sync();
    p.lease = Some(Duration::from_millis(600));
    p.leases_to[1] = false;
    p.settle(2);
    p.cut();
    let now = p.now;
    p.engine(1).handle(
        Input::Lease(twinsan_replication::engine::Lease::Until(now)),
        now,
    );
    let e = p
        .admin(1, AdminCommand::Primary { force: false })
        .expect_err("refused");
    assert!(e.contains("no lease"), "{e}");
}

/// Writes `count` blocks of 4 KiB at node `i`, 1 MiB apart from `first`, each acknowledged.
fn write_blocks(p: &mut Pair, i: usize, first: u64, count: u64, seed: u64) {
    for k in 0..count {
        let id = p.submit_write(i, first + k * (1 << 20), pattern(seed + k, 4096), false);
        p.settle(1);
        assert_eq!(p.write_result(id), Some(Ok(())), "{:?}", p.logs);
    }
}

#[test]
fn a_secondary_disk_that_fills_up_detaches_and_attach_resyncs_only_what_it_missed() {
    let mut p = new_pair_in_sync();
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    write_blocks(&mut p, 0, 0, 2, 1);
    // ENOSPC on node2: the write it fails is marked on node1, and every write after it.
    p.engine(1).storage_mut().disk.full = true;
    write_blocks(&mut p, 0, 4096, 5, 10);
    let s = p.engine(1).status();
    assert_eq!(
        (s.disk, s.connection),
        (DiskState::Diskless, ConnState::Connected)
    );
    assert_eq!(p.engine(0).status().peer_disk, DiskState::Diskless);
    assert_eq!(p.engine(0).status().out_of_sync_bytes, 5 * 4096);
    // Room again: attach resyncs the five blocks, no activity-log extent (the disk was closed cleanly).
    p.engine(1).storage_mut().disk.full = false;
    p.admin(1, AdminCommand::Attach).expect("attach");
    p.settle(100);
    let s = p.engine(0).status();
    assert_eq!(s.replication, ReplState::Established, "{:?}", p.logs);
    assert_eq!(s.resync_sent_bytes, 5 * 4096, "{:?}", p.logs);
    assert_eq!(p.engine(1).status().disk, DiskState::UpToDate);
    assert_eq!(p.data(0), p.data(1));
}

#[test]
fn detach_and_attach_by_command_on_a_connected_secondary() {
    let mut p = new_pair_in_sync();
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    p.admin(1, AdminCommand::Detach).expect("detach node2");
    let s = p.engine(1).status();
    assert_eq!(
        (s.disk, s.connection),
        (DiskState::Diskless, ConnState::Connected)
    );
    assert!(!p.engine(1).has_disk());
    let again = p.admin(1, AdminCommand::Detach).expect("detach again");
    assert!(again.is_some_and(|m| m.contains("no disk")));
    write_blocks(&mut p, 0, 0, 3, 20);
    p.admin(1, AdminCommand::Attach).expect("attach node2");
    let refused = p
        .admin(1, AdminCommand::Attach)
        .expect_err("attached already");
    assert!(refused.contains("attached already"), "{refused}");
    p.settle(100);
    let s = p.engine(0).status();
    assert_eq!(s.replication, ReplState::Established, "{:?}", p.logs);
    assert_eq!(s.resync_sent_bytes, 3 * 4096);
    // The generations were compared again on the live link, not by a reconnect.
    assert!(
        !p.logs.iter().any(|l| l.contains("lost the link")),
        "{:?}",
        p.logs
    );
    assert_eq!(p.engine(1).status().disk, DiskState::UpToDate);
    assert_eq!(p.data(0), p.data(1));
}

#[test]
fn detach_is_refused_on_a_primary_without_a_connected_up_to_date_peer() {
    let mut p = new_pair_in_sync();
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    p.admin(1, AdminCommand::Detach).expect("detach node2");
    let refused = p.admin(0, AdminCommand::Detach).expect_err("the only copy");
    assert!(
        refused.contains("Primary") && refused.contains("UpToDate"),
        "{refused}"
    );
    assert_eq!(p.engine(0).status().disk, DiskState::UpToDate);
    // With node2 back, node1's disk may go: it serves from node2.
    p.admin(1, AdminCommand::Attach).expect("attach node2");
    p.settle(100);
    p.admin(0, AdminCommand::Detach).expect("detach node1");
    assert_eq!(
        p.read(0, 0, 4096).expect("read from the peer"),
        vec![0; 4096]
    );
    // Without node2, a diskless Primary has nothing to resync its disk from.
    p.cut();
    let refused = p.admin(0, AdminCommand::Attach).expect_err("no peer");
    assert!(
        refused.contains("Primary") && refused.contains("connect the peer first"),
        "{refused}"
    );
}

/// The answer to admin command `id` on node `i`, if it came.
fn admin_result(p: &sim::Pair, i: usize, id: u64) -> Option<Result<Option<String>, String>> {
    p.done.iter().find_map(|(n, o)| match o {
        Output::AdminDone { id: x, result } if *n == i && *x == id => Some(result.clone()),
        _ => None,
    })
}

/// Writes `count` blocks of 4 KiB at `offset` on node `i` without waiting for each: all submitted, then the
/// frames move one at a time (from both nodes in turn), so writes, acknowledgements and resync frames interleave.
fn write_interleaved(p: &mut Pair, i: usize, offset: u64, count: u64, seed: u64) -> Vec<u64> {
    let ids: Vec<u64> = (0..count)
        .map(|b| p.submit_write(i, offset + b * 4096, pattern(seed + b, 4096), false))
        .collect();
    for _ in 0..count {
        p.deliver_one(0);
        p.deliver_one(1);
    }
    ids
}

#[test]
fn a_diskless_primary_attaches_its_disk_again_and_serves_on_while_it_resyncs() {
    let mut p = new_pair_in_sync();
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    write_blocks(&mut p, 0, 0, 4, 70);
    // Node1's disk fills up: it detaches and serves through node2; what it writes meanwhile is marked there.
    p.engine(0).storage_mut().disk.full = true;
    write_blocks(&mut p, 0, 64 << 10, 8, 80);
    assert_eq!(p.engine(0).status().disk, DiskState::Diskless);
    p.engine(0).storage_mut().disk.full = false;
    // Attach while writes are on their way in both directions: nothing is refused, the link stays up.
    let mut ids = write_interleaved(&mut p, 0, 128 << 10, 4, 90);
    let attach = p.submit_admin(0, AdminCommand::Attach);
    ids.extend(write_interleaved(&mut p, 0, 4096, 4, 100));
    ids.extend(write_interleaved(&mut p, 0, 256 << 10, 4, 110));
    assert_eq!(admin_result(&p, 0, attach), Some(Ok(None)));
    assert!(
        p.read(0, 64 << 10, 4096).is_ok(),
        "reads go on: {:?}",
        p.logs
    );
    p.settle(200);
    for id in ids {
        assert_eq!(p.write_result(id), Some(Ok(())), "{:?}", p.logs);
    }
    let s = p.engine(0).status();
    assert_eq!(
        (s.role, s.disk, s.connection, s.replication),
        (
            Role::Primary,
            DiskState::UpToDate,
            ConnState::Connected,
            ReplState::Established
        ),
        "{:?}",
        p.logs
    );
    assert!(
        !p.logs.iter().any(|l| l.contains("lost the link")),
        "the attach cost the link: {:?}",
        p.logs
    );
    // The resync sent what node1's disk missed: the eight blocks written while it was away and whatever it wrote
    // before its own resync started; not the whole disk.
    let sent = p.engine(1).status().resync_sent_bytes;
    assert!(
        (8 * 4096..=24 * 4096).contains(&sent),
        "resync sent {sent}: {:?}",
        p.logs
    );
    assert!(p.data(0) == p.data(1), "the copies differ after the resync");
    assert_eq!(
        p.data(0)[64 << 10..(64 << 10) + 4096],
        pattern(80, 4096)[..]
    );
    // Node1 reads its own disk now, and a link loss leaves it serving alone from it.
    p.cut();
    p.settle(5);
    assert_eq!(p.read(0, 4096, 4096).expect("read"), pattern(100, 4096));
}

#[test]
fn a_disk_attached_under_a_primary_is_dropped_when_the_link_goes_during_its_resync() {
    let mut p = new_pair_in_sync();
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    p.engine(0).storage_mut().disk.full = true;
    write_blocks(&mut p, 0, 0, 12, 120);
    p.engine(0).storage_mut().disk.full = false;
    p.submit_admin(0, AdminCommand::Attach);
    // Up to the resync's start, then the link goes.
    let mut frames = 0;
    while p.engine(0).status().replication != ReplState::SyncTarget {
        assert!(
            p.deliver_one(0) | p.deliver_one(1) && frames < 100,
            "{:?}",
            p.logs
        );
        frames += 1;
    }
    p.cut();
    p.settle(2);
    let s = p.engine(0).status();
    assert_eq!(
        (s.role, s.disk),
        (Role::Primary, DiskState::Diskless),
        "{:?}",
        p.logs
    );
    assert!(
        p.read(0, 0, 4096).is_err(),
        "nothing serves a diskless Primary alone"
    );
    // The link comes back: the Primary serves the peer's data again, and attaching once more completes.
    p.heal();
    p.settle(30);
    assert_eq!(
        p.engine(0).status().replication,
        ReplState::Established,
        "{:?}",
        p.logs
    );
    assert_eq!(p.read(0, 0, 4096).expect("read"), pattern(120, 4096));
    p.admin(0, AdminCommand::Attach).expect("attach again");
    p.settle(200);
    assert_eq!(
        p.engine(0).status().disk,
        DiskState::UpToDate,
        "{:?}",
        p.logs
    );
    assert!(p.data(0) == p.data(1));
}

#[test]
fn a_diskless_primarys_write_that_the_link_lost_fails_rather_than_being_acknowledged() {
    // Found while building attach under a Primary: a write (or flush) a diskless Primary had only sent when the
    // link went completed with success, though no disk may ever have stored it.
    let mut p = new_pair_in_sync();
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    p.engine(0).storage_mut().disk.full = true;
    write_blocks(&mut p, 0, 0, 1, 130);
    assert_eq!(p.engine(0).status().disk, DiskState::Diskless);
    let write = p.submit_write(0, 8192, pattern(131, 4096), false);
    let flush = p.submit_flush(0);
    p.cut();
    p.settle(3);
    assert!(
        matches!(p.write_result(write), Some(Err(IoFailure::NotAvailable(ref m))) if m.contains("no UpToDate copy")),
        "{:?}",
        p.write_result(write)
    );
    let flushed = p.done.iter().find_map(|(n, o)| match o {
        Output::FlushDone { id, result } if *n == 0 && *id == flush => Some(result.clone()),
        _ => None,
    });
    assert!(matches!(flushed, Some(Err(_))), "{flushed:?}");
    assert_eq!(p.data(1)[8192..12288], [0; 4096][..]);
}

#[test]
fn a_diskless_primary_writes_as_protocol_c_whatever_the_volumes_protocol() {
    // Protocols A and B acknowledge before the peer's disk has the write, on the strength of the Primary's own
    // copy: a diskless Primary has none, so its writes wait for the peer's disk.
    for protocol in [ReplicationProtocol::A, ReplicationProtocol::B] {
        let mut p = Pair::new(BACKING, protocol);
        p.settle(20);
        p.admin(0, AdminCommand::NewCurrentUuid { clear_bitmap: true })
            .expect("clear bitmap");
        p.settle(20);
        p.admin(0, AdminCommand::Primary { force: false })
            .expect("promote");
        p.engine(0).storage_mut().disk.full = true;
        write_blocks(&mut p, 0, 0, 1, 140);
        assert_eq!(
            p.engine(0).status().disk,
            DiskState::Diskless,
            "{protocol:?}"
        );
        let id = p.submit_write(0, 8192, pattern(141, 4096), false);
        assert_eq!(
            p.write_result(id),
            None,
            "{protocol:?}: acknowledged when sent"
        );
        p.cut();
        p.settle(3);
        assert!(
            matches!(p.write_result(id), Some(Err(_))),
            "{protocol:?}: {:?}",
            p.write_result(id)
        );
        // With the link up, such a write completes on the peer's acknowledgement.
        p.heal();
        p.settle(30);
        write_blocks(&mut p, 0, 16384, 1, 142);
        assert_eq!(
            p.data(1)[16384..20480],
            pattern(142, 4096)[..],
            "{protocol:?}"
        );
    }
}

#[test]
fn a_diskless_primary_writes_through_the_peer_and_its_disk_gets_them_after_a_switchover() {
    let mut p = new_pair_in_sync();
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    write_blocks(&mut p, 0, 0, 2, 30);
    p.engine(0).storage_mut().disk.full = true;
    // The first of these fails on node1's disk and goes on through node2.
    write_blocks(&mut p, 0, 8192, 4, 40);
    let s = p.engine(0).status();
    assert_eq!((s.role, s.disk), (Role::Primary, DiskState::Diskless));
    assert_eq!(p.read(0, 8192, 4096).expect("read"), pattern(40, 4096));
    assert_eq!(p.engine(1).status().out_of_sync_bytes, 4 * 4096);
    // Switch over, then attach: only the four blocks come back.
    p.engine(0).storage_mut().disk.full = false;
    p.admin(0, AdminCommand::Secondary).expect("demote");
    p.admin(1, AdminCommand::Primary { force: false })
        .expect("promote node2");
    p.admin(0, AdminCommand::Attach).expect("attach node1");
    p.settle(100);
    let s = p.engine(1).status();
    assert_eq!(s.replication, ReplState::Established, "{:?}", p.logs);
    assert_eq!(s.resync_sent_bytes, 4 * 4096, "{:?}", p.logs);
    assert_eq!(p.engine(0).status().disk, DiskState::UpToDate);
    assert_eq!(p.data(0), p.data(1));
}

/// Starts `volume resize` on node `i` and delivers frames one at a time until the peer has grown, then cuts the
/// link: the peer's reply is lost, so the peer holds the new size and node `i` the old one.
fn resize_cut_after_the_peer_grew(p: &mut Pair, i: usize) -> (u64, u64) {
    let old = p.engine(i).data_size();
    let id = p.submit_admin(
        i,
        AdminCommand::Resize {
            size: None,
            assume_clean: false,
        },
    );
    let mut frames = 0;
    while p.engine(1 - i).data_size() == old {
        assert!(
            p.deliver_one(i) && frames < 100,
            "the peer never grew: {:?}",
            p.logs
        );
        frames += 1;
    }
    let new = p.engine(1 - i).data_size();
    p.cut();
    assert_eq!(p.engine(i).data_size(), old, "{:?}", p.logs);
    let answer = p.done.iter().find_map(|(n, o)| match o {
        Output::AdminDone { id: x, result } if *n == i && *x == id => Some(result.clone()),
        _ => None,
    });
    let Some(Err(why)) = answer else {
        panic!("the resize did not fail when the link went: {answer:?}");
    };
    assert!(
        why.contains("grows to match when the link is back"),
        "{why}"
    );
    (old, new)
}

#[test]
fn a_resize_the_link_cut_short_completes_at_the_next_connect() {
    // With and without writes at the Primary while the two are apart (a bitmap resync, or the same generation).
    for write_while_apart in [true, false] {
        let mut p = new_pair_in_sync();
        p.admin(0, AdminCommand::Primary { force: false })
            .expect("primary");
        let old_end = p.engine(0).data_size();
        let before = p.submit_write(0, old_end - 8192, pattern(1, 8192), true);
        p.settle(5);
        assert_eq!(p.write_result(before), Some(Ok(())));
        // Both devices grow; the new area holds different bytes on each, as fresh disk space does.
        p.grow_disk(0, BACKING as usize, 0xaa);
        p.grow_disk(1, BACKING as usize, 0x55);
        let (old, new) = resize_cut_after_the_peer_grew(&mut p, 0);
        assert!(new > old);
        if write_while_apart {
            let id = p.submit_write(0, 4096, pattern(2, 4096), false);
            p.settle(2);
            assert_eq!(p.write_result(id), Some(Ok(())));
        }
        p.heal();
        p.settle(300);
        for i in 0..2 {
            let s = p.engine(i).status();
            assert_eq!(p.engine(i).data_size(), new, "node{} {:?}", i + 1, p.logs);
            assert_eq!(s.replication, ReplState::Established, "{s:?} {:?}", p.logs);
            assert_eq!(
                (s.disk, s.peer_disk),
                (DiskState::UpToDate, DiskState::UpToDate)
            );
            assert_eq!(s.out_of_sync_bytes, 0);
        }
        // Node1 told its driver it grew (the LUN's capacity, and CAPACITY DATA HAS CHANGED).
        assert!(p.done.iter().any(
            |(n, o)| *n == 0 && matches!(o, Output::Resized { data_size } if *data_size == new)
        ));
        // The new area came from the Primary: both copies are the same over the whole new size.
        assert!(
            p.engine(0).status().resync_sent_bytes >= new - old,
            "{:?}",
            p.logs
        );
        assert!(p.data(0) == p.data(1), "the copies differ after the resync");
        assert_eq!(
            p.data(0)[(old_end - 8192) as usize..old_end as usize],
            pattern(1, 8192)
        );
        if write_while_apart {
            assert_eq!(p.data(1)[4096..8192], pattern(2, 4096));
        }
        // And it serves past the old end.
        let id = p.submit_write(0, old_end + 4096, pattern(3, 4096), true);
        p.settle(5);
        assert_eq!(p.write_result(id), Some(Ok(())));
        assert_eq!(
            p.read(1, old_end + 4096, 4096).ok(),
            None,
            "a Secondary serves no reads"
        );
        assert_eq!(
            &p.data(1)[(old_end + 4096) as usize..(old_end + 8192) as usize],
            &pattern(3, 4096)[..]
        );
        // A restart of each finds the moved metadata.
        for i in 0..2 {
            p.kill(i, true);
            p.start(i);
            assert_eq!(p.engine(i).data_size(), new);
        }
    }
}

#[test]
fn a_smaller_copy_that_cannot_grow_refuses_the_connection_until_its_device_grows() {
    let mut p = new_pair_in_sync();
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("primary");
    p.grow_disk(0, BACKING as usize, 0);
    p.grow_disk(1, BACKING as usize, 0);
    let (old, new) = resize_cut_after_the_peer_grew(&mut p, 0);
    // Node1's device went back to its old size (replaced) before the link came back.
    p.truncate_disk(0, BACKING as usize);
    p.heal();
    p.settle(50);
    let s = p.engine(0).status();
    assert_ne!(s.replication, ReplState::Established, "{:?}", p.logs);
    assert_eq!(p.engine(0).data_size(), old);
    let refusal = p
        .logs
        .iter()
        .find(|l| l.contains("can hold only"))
        .unwrap_or_else(|| panic!("no refusal naming the size: {:?}", p.logs));
    assert!(refusal.contains("grow it to hold"), "{refusal}");
    // Writes at the Primary go on meanwhile.
    let id = p.submit_write(0, 0, pattern(4, 4096), false);
    p.settle(2);
    assert_eq!(p.write_result(id), Some(Ok(())));
    // The device grows again: the next connect agrees.
    p.grow_disk(0, BACKING as usize, 0);
    p.settle(300);
    for i in 0..2 {
        let s = p.engine(i).status();
        assert_eq!(p.engine(i).data_size(), new);
        assert_eq!(s.replication, ReplState::Established, "{s:?} {:?}", p.logs);
        assert_eq!(s.out_of_sync_bytes, 0);
    }
    assert!(p.data(0) == p.data(1));
}

#[test]
fn a_diskless_primary_refuses_a_peer_that_lacks_what_it_acknowledged() {
    // Found by the simulation (seed 68 once reconnects waited for the clock): the Primary wrote alone while the
    // link was down, then lost its disk; the peer came back with the older data, and the Primary served that as
    // the volume — the writes it had acknowledged were gone.
    let mut p = new_pair_in_sync();
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    p.cut();
    let alone = p.submit_write(0, 0, pattern(7, 4096), false);
    p.settle(2);
    assert_eq!(p.write_result(alone), Some(Ok(())));
    p.engine(0).storage_mut().disk.failing = true;
    let lost_disk = p.submit_write(0, 4096, pattern(8, 4096), false);
    p.settle(2);
    assert!(matches!(p.write_result(lost_disk), Some(Err(_))));
    assert_eq!(p.engine(0).status().disk, DiskState::Diskless);
    p.heal();
    p.settle(20);
    let s = p.engine(0).status();
    assert_ne!(s.replication, ReplState::Established, "{s:?} {:?}", p.logs);
    assert!(
        p.logs
            .iter()
            .any(|l| l.contains("is a diskless Primary serving generation")),
        "{:?}",
        p.logs
    );
    // Nothing is served from the peer's older copy: a read and a write fail rather than change the data.
    assert!(p.read(0, 0, 4096).is_err());
    let refused = p.submit_write(0, 8192, pattern(9, 4096), false);
    p.settle(2);
    assert!(matches!(p.write_result(refused), Some(Err(_))));
    assert_eq!(p.data(1)[8192..12288], [0; 4096][..]);
    // Node1 gets its disk back (a restart after the repair): it is the newer copy and resyncs node2.
    p.kill(0, false);
    p.start(0);
    p.settle(300);
    let s = p.engine(1).status();
    assert_eq!(
        (s.disk, s.replication),
        (DiskState::UpToDate, ReplState::Established),
        "{:?}",
        p.logs
    );
    assert_eq!(p.data(1)[..4096], pattern(7, 4096)[..]);
}

#[test]
fn a_diskless_primary_follows_the_peers_new_generation_and_reconnects_after_a_blip() {
    // The peer starts a new generation when it holds the only copy under a diskless Primary; the Primary must
    // serve that one, or the next connect (after a short link loss) would find "another" generation and refuse.
    let mut p = new_pair_in_sync();
    p.admin(0, AdminCommand::Primary { force: false })
        .expect("promote");
    p.engine(0).storage_mut().disk.full = true;
    write_blocks(&mut p, 0, 0, 2, 50);
    let s = p.engine(0).status();
    assert_eq!((s.role, s.disk), (Role::Primary, DiskState::Diskless));
    p.settle(5);
    let (g0, g1) = (
        p.engine(0).status().generations.current,
        p.engine(1).status().generations.current,
    );
    assert_eq!(
        g0 & !1,
        g1 & !1,
        "the Primary exposes the peer's new generation"
    );
    p.cut();
    p.heal();
    p.settle(30);
    let s = p.engine(0).status();
    assert_eq!(s.replication, ReplState::Established, "{:?}", p.logs);
    write_blocks(&mut p, 0, 16384, 2, 60);
    assert_eq!(p.read(0, 16384, 4096).expect("read"), pattern(60, 4096));
    assert_eq!(p.read(0, 0, 4096).expect("read"), pattern(50, 4096));
}
