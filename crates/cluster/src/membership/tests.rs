//! Unit tests on a simulated clock, property tests for the codec, and a two-node simulation over a lossy channel.

use super::*;
use proptest::prelude::*;

const CLUSTER: u64 = 0x7715_5a11;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn node(id: u8, peer: u8, links: u8, incarnation: u64) -> Membership {
    let config = MembershipConfig::two_node(CLUSTER, id, peer, links, incarnation);
    match Membership::new(config, ms(0)) {
        Ok(m) => m,
        Err(e) => panic!("valid config refused: {e}"),
    }
}

fn beat(node_id: u8, incarnation: u64, seq: u64, link: u8) -> [u8; HEARTBEAT_LEN] {
    Heartbeat {
        cluster_id: CLUSTER,
        node_id,
        incarnation,
        seq,
        link,
    }
    .encode()
}

/// Node 1 hears node 2 (incarnation `inc`, round `seq`) on each of `links` at `now`; returns the outputs.
fn hear_round(m: &mut Membership, inc: u64, seq: u64, links: &[u8], now: Duration) -> Vec<Output> {
    links
        .iter()
        .flat_map(|&l| m.received(l, &beat(2, inc, seq, l), now))
        .collect()
}

fn state_changes(out: &[Output]) -> Vec<Output> {
    out.iter()
        .filter(|o| !matches!(o, Output::Send { .. }))
        .cloned()
        .collect()
}

fn peer_online(m: &Membership) -> bool {
    m.view()[1].online
}

#[test]
fn tick_sends_one_heartbeat_per_link_per_interval() {
    let mut m = node(1, 2, 2, 9);
    let mut sent = Vec::new();
    for t in (0..1000).step_by(10) {
        for o in m.tick(ms(t)) {
            if let Output::Send { link, bytes } = o {
                sent.push((t, link, Heartbeat::decode(&bytes)));
            }
        }
    }
    let expected: Vec<_> = (0..5u64)
        .flat_map(|round| {
            (0..2u8).map(move |link| {
                let hb = Heartbeat {
                    cluster_id: CLUSTER,
                    node_id: 1,
                    incarnation: 9,
                    seq: round,
                    link,
                };
                (round * 200, link, Ok(hb))
            })
        })
        .collect();
    assert_eq!(sent, expected);
    assert_eq!(m.next_tick(), ms(1000));
}

#[test]
fn both_links_up_gives_online_within_one_interval() {
    let mut a = node(1, 2, 2, 1);
    let mut b = node(2, 1, 2, 1);
    let mut changes = Vec::new();
    for o in a.tick(ms(0)) {
        if let Output::Send { link, bytes } = o {
            changes.extend(b.received(link, &bytes, ms(3)));
        }
    }
    assert_eq!(
        changes,
        vec![
            Output::LinkUp { node: 1, link: 0 },
            Output::PeerOnline {
                node: 1,
                incarnation: 1
            },
            Output::LinkUp { node: 1, link: 1 },
        ]
    );
    assert_eq!(
        b.view(),
        vec![
            Member {
                node: 2,
                online: true,
                incarnation: Some(1)
            },
            Member {
                node: 1,
                online: true,
                incarnation: Some(1)
            },
        ]
    );
}

#[test]
fn one_silent_link_reports_link_down_only() {
    let mut m = node(1, 2, 2, 1);
    let mut changes = Vec::new();
    for (seq, t) in (0..3000).step_by(200).enumerate() {
        let links: &[u8] = if t < 1000 { &[0, 1] } else { &[0] };
        changes.extend(hear_round(&mut m, 1, seq as u64, links, ms(t)));
        for tick in (t..t + 200).step_by(10) {
            changes.extend(state_changes(&m.tick(ms(tick))));
        }
    }
    assert_eq!(
        changes,
        vec![
            Output::LinkUp { node: 2, link: 0 },
            Output::PeerOnline {
                node: 2,
                incarnation: 1
            },
            Output::LinkUp { node: 2, link: 1 },
            // Last heard on link 1 at 800 ms.
            Output::LinkDown { node: 2, link: 1 },
        ]
    );
    assert!(peer_online(&m));
    assert!(m.link_up(2, 0));
    assert!(!m.link_up(2, 1));
}

#[test]
fn all_links_silent_gives_offline_at_the_timeout_not_before() {
    let mut m = node(1, 2, 2, 1);
    hear_round(&mut m, 1, 0, &[0, 1], ms(0));
    hear_round(&mut m, 1, 1, &[0, 1], ms(400));
    m.tick(ms(0));
    assert_eq!(
        m.next_tick(),
        ms(200),
        "the next heartbeat round comes first"
    );
    m.tick(ms(200));
    m.tick(ms(400));
    m.tick(ms(600));
    m.tick(ms(800));
    m.tick(ms(1000));
    m.tick(ms(1200));
    assert_eq!(
        m.next_tick(),
        ms(1400),
        "the timeout of the last heartbeat comes before the next round"
    );
    assert_eq!(state_changes(&m.tick(ms(1399))), vec![]);
    assert!(peer_online(&m));
    assert_eq!(
        state_changes(&m.tick(ms(1401))),
        vec![
            Output::LinkDown { node: 2, link: 0 },
            Output::LinkDown { node: 2, link: 1 },
            Output::PeerOffline { node: 2 },
        ]
    );
    assert!(!peer_online(&m));
    assert_eq!(state_changes(&m.tick(ms(3000))), vec![], "reported once");
    // It comes back.
    assert_eq!(
        hear_round(&mut m, 1, 2, &[1], ms(3100)),
        vec![
            Output::LinkUp { node: 2, link: 1 },
            Output::PeerOnline {
                node: 2,
                incarnation: 1
            }
        ]
    );
}

#[test]
fn early_loss_needs_silence_on_every_link_and_a_heartbeat_undoes_it() {
    let mut m = node(1, 2, 2, 1);
    hear_round(&mut m, 1, 0, &[0, 1], ms(0));
    hear_round(&mut m, 1, 1, &[1], ms(300));
    // Link 1 heard from the peer 100 ms ago: not gone, whatever the driver suspects.
    assert_eq!(state_changes(&m.peer_gone(2, ms(400), ms(400))), vec![]);
    assert!(peer_online(&m));
    // 400 ms of silence on both links: Offline now, long before the 1 s detection timeout.
    assert_eq!(
        state_changes(&m.peer_gone(2, ms(400), ms(700))),
        vec![
            Output::LinkDown { node: 2, link: 0 },
            Output::LinkDown { node: 2, link: 1 },
            Output::PeerOffline { node: 2 },
        ]
    );
    assert!(!peer_online(&m));
    assert_eq!(
        state_changes(&m.peer_gone(2, ms(400), ms(800))),
        vec![],
        "reported once"
    );
    assert_eq!(
        state_changes(&m.tick(ms(1500))),
        vec![],
        "and not again at the timeout"
    );
    // An unknown node changes nothing; a heartbeat brings the peer back.
    assert_eq!(state_changes(&m.peer_gone(9, ms(0), ms(1600))), vec![]);
    assert_eq!(
        hear_round(&mut m, 1, 2, &[0], ms(1700)),
        vec![
            Output::LinkUp { node: 2, link: 0 },
            Output::PeerOnline {
                node: 2,
                incarnation: 1
            }
        ]
    );
}

#[test]
fn a_restarted_peer_is_reported_and_rejoins() {
    let mut m = node(1, 2, 1, 1);
    hear_round(&mut m, 5, 40, &[0], ms(0));
    // Restarted faster than the timeout: still reported, with the new incarnation; its seq starts over.
    assert_eq!(
        hear_round(&mut m, 6, 0, &[0], ms(300)),
        vec![
            Output::PeerRestarted {
                node: 2,
                previous: 5,
                incarnation: 6
            },
            Output::PeerOnline {
                node: 2,
                incarnation: 6
            },
        ]
    );
    assert_eq!(
        m.view()[1],
        Member {
            node: 2,
            online: true,
            incarnation: Some(6)
        }
    );
    // Restarted after it went offline.
    assert_eq!(
        state_changes(&m.tick(ms(1300))),
        vec![
            Output::LinkDown { node: 2, link: 0 },
            Output::PeerOffline { node: 2 },
        ]
    );
    assert_eq!(
        hear_round(&mut m, 7, 0, &[0], ms(5000)),
        vec![
            Output::PeerRestarted {
                node: 2,
                previous: 6,
                incarnation: 7
            },
            Output::LinkUp { node: 2, link: 0 },
            Output::PeerOnline {
                node: 2,
                incarnation: 7
            },
        ]
    );
}

#[test]
fn an_older_incarnation_is_ignored_and_is_no_liveness() {
    let mut m = node(1, 2, 1, 1);
    hear_round(&mut m, 6, 0, &[0], ms(0));
    for t in (100..2000).step_by(100) {
        let changes = state_changes(&m.tick(ms(t)));
        assert_eq!(hear_round(&mut m, 5, t, &[0], ms(t)), vec![], "at {t} ms");
        if t == 1000 {
            assert_eq!(
                changes,
                vec![
                    Output::LinkDown { node: 2, link: 0 },
                    Output::PeerOffline { node: 2 }
                ]
            );
        } else {
            assert_eq!(changes, vec![], "at {t} ms");
        }
    }
    assert_eq!(
        m.view()[1],
        Member {
            node: 2,
            online: false,
            incarnation: Some(6)
        }
    );
}

#[test]
fn duplicate_and_reordered_heartbeats_are_no_liveness() {
    let mut m = node(1, 2, 2, 1);
    hear_round(&mut m, 1, 10, &[0], ms(0));
    // Round 3 on link 1 is new there, even though link 0 has seen round 10.
    assert_eq!(
        hear_round(&mut m, 1, 3, &[1], ms(0)),
        vec![Output::LinkUp { node: 2, link: 1 }]
    );
    for t in (100..1000).step_by(100) {
        hear_round(&mut m, 1, 10, &[0], ms(t));
        hear_round(&mut m, 1, 9, &[0], ms(t));
        hear_round(&mut m, 1, 3, &[1], ms(t));
    }
    assert_eq!(state_changes(&m.tick(ms(999))), vec![]);
    assert_eq!(
        state_changes(&m.tick(ms(1000))),
        vec![
            Output::LinkDown { node: 2, link: 0 },
            Output::LinkDown { node: 2, link: 1 },
            Output::PeerOffline { node: 2 },
        ]
    );
}

#[test]
fn foreign_and_malformed_datagrams_are_refused() {
    let mut m = node(1, 2, 2, 1);
    let refused = |link, error| vec![Output::Refused { link, error }];
    let other_cluster = Heartbeat {
        cluster_id: 99,
        node_id: 2,
        incarnation: 1,
        seq: 0,
        link: 0,
    }
    .encode();
    assert_eq!(
        m.received(0, &other_cluster, ms(0)),
        refused(
            0,
            MembershipError::WrongCluster {
                cluster_id: 99,
                expected: CLUSTER
            }
        )
    );
    assert_eq!(
        m.received(0, &beat(3, 1, 0, 0), ms(0)),
        refused(0, MembershipError::UnknownNode { node: 3 })
    );
    assert_eq!(
        m.received(0, &beat(1, 1, 0, 0), ms(0)),
        refused(0, MembershipError::OwnNodeId { node: 1 })
    );
    assert_eq!(
        m.received(1, &beat(2, 1, 0, 0), ms(0)),
        refused(
            1,
            MembershipError::CrossedLinks {
                link: 1,
                sent_on: 0
            }
        )
    );
    assert_eq!(
        m.received(2, &beat(2, 1, 0, 2), ms(0)),
        refused(2, MembershipError::UnknownLink { link: 2, last: 1 })
    );
    assert_eq!(
        m.received(0, b"", ms(0)),
        refused(
            0,
            MembershipError::WrongLength {
                len: 0,
                expected: HEARTBEAT_LEN
            }
        )
    );
    assert_eq!(
        m.received(0, &[0u8; 100], ms(0)),
        refused(
            0,
            MembershipError::WrongLength {
                len: 100,
                expected: HEARTBEAT_LEN
            }
        )
    );
    assert_eq!(
        m.received(0, &[0xa5u8; HEARTBEAT_LEN], ms(0)),
        refused(0, MembershipError::BadMagic)
    );
    let mut bad = beat(2, 1, 0, 0);
    bad[4] = 2;
    assert_eq!(
        m.received(0, &bad, ms(0)),
        refused(
            0,
            MembershipError::UnsupportedVersion {
                version: 2,
                supported: 1
            }
        )
    );
    let mut bad = beat(2, 1, 0, 0);
    bad[7] = 1;
    assert_eq!(
        m.received(0, &bad, ms(0)),
        refused(0, MembershipError::ReservedNotZero { value: 1 })
    );
    // None of it counted.
    assert_eq!(
        m.view()[1],
        Member {
            node: 2,
            online: false,
            incarnation: None
        }
    );
}

#[test]
fn bad_configurations_are_refused() {
    let good = MembershipConfig::two_node(CLUSTER, 1, 2, 2, 1);
    let with = |f: &dyn Fn(&mut MembershipConfig)| {
        let mut c = good.clone();
        f(&mut c);
        Membership::new(c, ms(0)).err()
    };
    assert_eq!(with(&|_| {}), None);
    assert_eq!(
        with(&|c| c.links = 0),
        Some(MembershipError::LinkCount { links: 0 })
    );
    assert_eq!(
        with(&|c| c.links = 5),
        Some(MembershipError::LinkCount { links: 5 })
    );
    assert_eq!(with(&|c| c.peers.clear()), Some(MembershipError::NoPeers));
    assert_eq!(
        with(&|c| c.peers = vec![2, 2]),
        Some(MembershipError::DuplicatePeer { node: 2 })
    );
    assert_eq!(
        with(&|c| c.peers = vec![1]),
        Some(MembershipError::PeerIsSelf { node: 1 })
    );
    assert_eq!(
        with(&|c| c.heartbeat_interval = Duration::ZERO),
        Some(MembershipError::ZeroInterval)
    );
    assert_eq!(
        with(&|c| c.detection_timeout = ms(200)),
        Some(MembershipError::TimeoutTooShort {
            timeout_ms: 200,
            interval_ms: 200
        })
    );
}

proptest! {
    #[test]
    fn heartbeat_round_trips(cluster_id: u64, node_id: u8, incarnation: u64, seq: u64, link: u8) {
        let hb = Heartbeat { cluster_id, node_id, incarnation, seq, link };
        prop_assert_eq!(Heartbeat::decode(&hb.encode()), Ok(hb));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80), link: u8) {
        let _ = Heartbeat::decode(&bytes);
        let mut m = node(1, 2, 2, 1);
        let out = m.received(link, &bytes, ms(5));
        // Random bytes are never a heartbeat of this cluster from node 2.
        let all_refused = out.iter().all(|o| matches!(o, Output::Refused { .. }));
        prop_assert!(all_refused);
    }

    #[test]
    fn a_flipped_magic_or_version_byte_is_refused(index in 0usize..5, flip in 1u8..=255) {
        let mut bytes = beat(2, 1, 0, 0);
        bytes[index] ^= flip;
        prop_assert!(Heartbeat::decode(&bytes).is_err());
    }
}

use crate::test_rng::Rng;

/// Two nodes exchanging encoded heartbeats over two links on a 10 ms step: 20% loss, 5% duplicates, 0–30 ms of
/// delay (so reordering), then a cut of link 1, a full partition, a heal, a crash of node B and its restart with
/// a new incarnation. The oracle: a side that can hear the other (peer running, some link not cut) for a whole
/// detection timeout sees it Online; one that cannot for a timeout plus the in-flight delay sees it Offline;
/// reported changes always agree with the view.
#[test]
fn two_nodes_over_a_lossy_channel_agree_with_reality() {
    const SEED: u64 = 0x5eed_0004;
    const STEP_MS: u64 = 10;
    const STEPS: u64 = 800;
    const MAX_DELAY_STEPS: u64 = 3;
    // The detection timeout in steps, and the oracle's margins.
    const TIMEOUT_STEPS: u64 = 100;
    const OFFLINE_BY: u64 = TIMEOUT_STEPS + MAX_DELAY_STEPS + 1;
    // Phases: [0,150) both links; [150,300) link 1 cut; [300,450) partition; [450,550) healed;
    // [550,600) B crashed; [600,800) B restarted.
    let cut = |step: u64, link: u8| match step {
        150..300 => link == 1,
        300..450 => true,
        _ => false,
    };
    let b_alive = |step: u64| !(550..600).contains(&step);

    let mut rng = Rng(SEED);
    let mut nodes = [node(1, 2, 2, 1), node(2, 1, 2, 1)];
    // (delivery step, to index, link, bytes)
    let mut in_flight: Vec<(u64, usize, u8, [u8; HEARTBEAT_LEN])> = Vec::new();
    // Per observer: the shadow of the peer's state from the reported changes, and since when it could hear.
    let mut shadow_online = [false, false];
    let mut hearing_since: [Option<u64>; 2] = [None, None];
    let mut deaf_since: [Option<u64>; 2] = [Some(0), Some(0)];
    let mut restarts_seen_by_a = 0;
    let mut offline_during_link_cut = 0;

    for step in 0..STEPS {
        let now = ms(step * STEP_MS);
        if step == 600 {
            nodes[1] = node(2, 1, 2, 2);
            shadow_online[1] = false;
        }
        let alive = [true, b_alive(step)];
        let mut outputs: [Vec<Output>; 2] = [Vec::new(), Vec::new()];

        // Deliver what is due, in the order it was sent, to running nodes.
        let (due, later): (Vec<_>, Vec<_>) = in_flight.into_iter().partition(|p| p.0 <= step);
        in_flight = later;
        for (_, to, link, bytes) in due {
            if alive[to] {
                outputs[to].extend(nodes[to].received(link, &bytes, now));
            }
        }
        for i in 0..2 {
            if !alive[i] {
                continue;
            }
            for o in nodes[i].tick(now) {
                match o {
                    Output::Send { link, bytes } => {
                        if cut(step, link) || rng.chance(20) {
                            continue;
                        }
                        let copies = if rng.chance(5) { 2 } else { 1 };
                        for _ in 0..copies {
                            let delay = rng.next() % (MAX_DELAY_STEPS + 1);
                            in_flight.push((step + delay, 1 - i, link, bytes));
                        }
                    }
                    other => outputs[i].push(other),
                }
            }
        }

        for i in 0..2 {
            let peer = 1 - i;
            let can_hear = alive[peer] && (0..2).any(|l| !cut(step, l));
            if can_hear {
                hearing_since[i].get_or_insert(step);
                deaf_since[i] = None;
            } else {
                deaf_since[i].get_or_insert(step);
                hearing_since[i] = None;
            }
            if !alive[i] {
                // A crashed node knows nothing; after its restart it must hear the peer anew.
                hearing_since[i] = None;
                continue;
            }
            for o in &outputs[i] {
                match o {
                    Output::PeerOnline { .. } => shadow_online[i] = true,
                    Output::PeerOffline { .. } => {
                        assert!(
                            shadow_online[i],
                            "seed {SEED:#x} step {step}: offline reported twice"
                        );
                        shadow_online[i] = false;
                        if (150..300).contains(&step) {
                            offline_during_link_cut += 1;
                        }
                    }
                    Output::PeerRestarted { .. } => {
                        assert_eq!(i, 0, "seed {SEED:#x} step {step}: only B restarts");
                        restarts_seen_by_a += 1;
                    }
                    Output::Refused { error, .. } => {
                        panic!("seed {SEED:#x} step {step}: refused {error}")
                    }
                    _ => {}
                }
            }
            let viewed = nodes[i].view()[1].online;
            assert_eq!(
                viewed, shadow_online[i],
                "seed {SEED:#x} step {step}: view and reports disagree"
            );
            if hearing_since[i].is_some_and(|since| step >= since + TIMEOUT_STEPS) {
                assert!(
                    viewed,
                    "seed {SEED:#x} step {step}: node {i} should see its peer online"
                );
            }
            if deaf_since[i].is_some_and(|since| step >= since + OFFLINE_BY) {
                assert!(
                    !viewed,
                    "seed {SEED:#x} step {step}: node {i} should see its peer offline"
                );
            }
            if (150 + OFFLINE_BY..300).contains(&step) {
                assert!(
                    !nodes[i].link_up(nodes[i].view()[1].node, 1),
                    "seed {SEED:#x} step {step}: link 1 is cut"
                );
            }
        }
    }
    assert_eq!(
        restarts_seen_by_a, 1,
        "seed {SEED:#x}: A sees B's restart once"
    );
    assert_eq!(
        offline_during_link_cut, 0,
        "seed {SEED:#x}: one cut link of two is no peer loss"
    );
    assert_eq!(
        nodes[0].view()[1],
        Member {
            node: 2,
            online: true,
            incarnation: Some(2)
        }
    );
    assert_eq!(
        nodes[1].view()[1],
        Member {
            node: 1,
            online: true,
            incarnation: Some(1)
        }
    );
}
