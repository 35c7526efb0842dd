use std::time::Duration;

use super::*;
use crate::membership::{Membership, MembershipConfig, Output, HEARTBEAT_LEN};
use crate::test_rng::Rng;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config() -> LeaseConfig {
    LeaseConfig::new(ms(200), ms(1000)).expect("default timings")
}

#[test]
fn the_default_lease_is_three_fifths_of_the_detection_timeout_and_the_wait_covers_the_rate_error() {
    let c = config();
    assert_eq!(c.lease, ms(600));
    // 600 ms + 0.1 % of it + 20 ms.
    assert_eq!(c.takeover_wait(), ms(620) + Duration::from_micros(600));
    assert!(c.takeover_wait() < ms(1000));
}

#[test]
fn timings_that_cannot_work_are_refused() {
    assert_eq!(
        LeaseConfig::new(ms(700), ms(1000)),
        Err(LeaseConfigError::TooShort {
            lease_ms: 600,
            interval_ms: 700
        })
    );
    // A detection timeout so short that the margin alone reaches it.
    assert!(matches!(
        LeaseConfig::new(ms(1), ms(40)),
        Err(LeaseConfigError::TooLong { .. })
    ));
}

#[test]
fn a_grant_runs_from_the_stamp_it_echoes_and_never_shortens_a_longer_one() {
    let mut h = LeaseHolder::new(config());
    assert_eq!(h.until("vol0", None), None);
    let stamp = h.stamp(ms(1000));
    h.granted(stamp, ["vol0"], ms(1300));
    assert_eq!(h.until("vol0", None), Some(ms(1600)));
    // A stale echo, buffered while the node was frozen, gives nothing new.
    h.granted(h.stamp(ms(400)), ["vol0"], ms(9000));
    assert_eq!(h.until("vol0", None), Some(ms(1600)));
    // Other volumes are not granted by it.
    assert_eq!(h.until("vol1", None), None);
    // The alone lease counts when it runs longer.
    assert_eq!(h.until("vol0", Some(ms(2000))), Some(ms(2000)));
    assert_eq!(h.until("vol1", Some(ms(2000))), Some(ms(2000)));
}

#[test]
fn a_stamp_from_the_future_is_no_grant() {
    let mut h = LeaseHolder::new(config());
    h.granted(5000, ["vol0"], ms(1000));
    assert_eq!(h.until("vol0", None), None);
}

#[test]
fn the_grantor_takes_over_only_after_the_wait_from_its_last_grant() {
    let c = config();
    let mut g = LeaseGrantor::new(c);
    assert!(
        g.may_take_over("vol0", ms(0)),
        "never granted: nothing to wait for"
    );
    g.granting(["vol0"], ms(1000));
    assert!(!g.may_take_over("vol0", ms(1000) + c.takeover_wait() - ms(1)));
    assert_eq!(g.wait_left("vol0", ms(1100)), c.takeover_wait() - ms(100));
    assert!(g.may_take_over("vol0", ms(1000) + c.takeover_wait()));
    assert!(g.may_take_over("vol1", ms(1000)));
}

// ----- a two-node simulation with frozen nodes -----

/// What crosses the cluster link in the simulation.
#[derive(Clone, Copy)]
enum Datagram {
    Heartbeat([u8; HEARTBEAT_LEN]),
    Report {
        /// The sender's stamp.
        stamp: u64,
        /// The echo of the receiver's stamp, when the sender grants the volume.
        grant: Option<u64>,
        /// The sender serves the volume, and since when (real time of its takeover).
        primary_since: Option<u64>,
    },
}

struct Node {
    /// Local clock rate, parts per million off real time.
    rate_ppm: i64,
    membership: Membership,
    holder: LeaseHolder,
    grantor: LeaseGrantor,
    /// Alone lease, as the driver last set it.
    alone_until: Option<Duration>,
    /// The newest stamp received from the peer.
    peer_stamp: Option<u64>,
    /// Serves the volume since this real time.
    primary_since: Option<u64>,
    /// The peer's last report of its role.
    peer_primary_since: Option<u64>,
    next_report: Duration,
    next_wake: u64,
    frozen_until: u64,
    inbox: Vec<(u64, Datagram)>,
}

impl Node {
    fn local(&self, real_ms: u64) -> Duration {
        let scaled = (real_ms as i64 * 1000) * (1_000_000 + self.rate_ppm) / 1_000_000;
        Duration::from_micros(scaled as u64)
    }
}

/// Takes what arrived by real time `t`, in arrival order (the socket buffer).
fn deliver(n: &mut Node, t: u64, now: Duration) {
    let mut inbox = std::mem::take(&mut n.inbox);
    inbox.sort_by_key(|m| m.0);
    let (due, later): (Vec<_>, Vec<_>) = inbox.into_iter().partition(|m| m.0 <= t);
    n.inbox = later;
    for (_, d) in due {
        match d {
            Datagram::Heartbeat(bytes) => {
                n.membership.received(0, &bytes, now);
            }
            Datagram::Report {
                stamp,
                grant,
                primary_since,
            } => {
                n.peer_stamp = Some(n.peer_stamp.map_or(stamp, |s| s.max(stamp)));
                if let Some(echo) = grant {
                    n.holder.granted(echo, ["vol0"], now);
                }
                n.peer_primary_since = primary_since;
            }
        }
    }
}

/// The oracle's verdict on one seed, and what the run exercised.
struct Outcome {
    violation: Option<String>,
    takeovers: u32,
    acks: u64,
}

/// Runs one seed: node 0 starts as the Primary; both freeze at random (a paused process keeps its state and its
/// socket buffers), messages are delayed and reordered but not lost (a partition is a different fault: both
/// sides may write then, as the SPEC allows without a witness). A node takes the volume over when it sees its
/// peer Offline, has run a detection timeout since its own last pause, and its grantor's wait is over; a
/// Primary that hears its peer serves the volume since later steps down. The oracle: an acknowledgement at
/// real time `t` comes only from the node that took the volume over last at or before `t` — never two nodes
/// acknowledging in the same interval.
fn simulate(seed: u64, pause_aware: bool) -> Outcome {
    const END_MS: u64 = 40_000;
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let c = config();
    let heartbeat = ms(200);
    let mut nodes: Vec<Node> = (0..2u8)
        .map(|i| {
            let mut mc = MembershipConfig::two_node(7, i + 1, 2 - i, 1, 1);
            mc.pause_after = pause_aware.then_some(heartbeat * 2);
            Node {
                rate_ppm: rng.below(801) as i64 - 400,
                membership: Membership::new(mc, Duration::ZERO).expect("membership"),
                holder: LeaseHolder::new(c),
                grantor: LeaseGrantor::new(c),
                alone_until: None,
                peer_stamp: None,
                primary_since: (i == 0).then_some(0),
                peer_primary_since: None,
                next_report: Duration::ZERO,
                next_wake: 0,
                frozen_until: 0,
                inbox: Vec::new(),
            }
        })
        .collect();
    // The pair starts connected: each has heard the other once.
    for i in 0..2 {
        let beats: Vec<_> = nodes[i].membership.tick(Duration::ZERO);
        for o in beats {
            if let Output::Send { bytes, .. } = o {
                nodes[1 - i].membership.received(0, &bytes, Duration::ZERO);
            }
        }
    }
    // Who may acknowledge from when on: (real time, node).
    let mut epochs: Vec<(u64, usize)> = vec![(0, 0)];
    let mut outcome = Outcome {
        violation: None,
        takeovers: 0,
        acks: 0,
    };
    let mut t = 0u64;
    while t < END_MS && outcome.violation.is_none() {
        t += 5;
        // Freezes: a few per run, from a tenth of a second to several detection timeouts.
        if rng.chance(1) && rng.chance(8) {
            let i = rng.below(2) as usize;
            let length = [150, 400, 900, 2_000, 5_000][rng.below(5) as usize] + rng.below(300);
            nodes[i].frozen_until = nodes[i].frozen_until.max(t + length);
        }
        for i in 0..2 {
            if t < nodes[i].next_wake || t < nodes[i].frozen_until {
                continue;
            }
            nodes[i].next_wake = t + 5 + rng.below(60);
            let now = nodes[i].local(t);
            let ack = |n: &Node, outcome: &mut Outcome, epochs: &[(u64, usize)]| {
                if n.primary_since.is_none() {
                    return;
                }
                let until = n.holder.until("vol0", n.alone_until);
                if until.is_some_and(|u| now < u) {
                    outcome.acks += 1;
                    let owner = epochs
                        .iter()
                        .rev()
                        .find(|(start, _)| *start <= t)
                        .map(|e| e.1);
                    if owner != Some(i) && outcome.violation.is_none() {
                        outcome.violation = Some(format!(
                            "node {i} acknowledged at {t} ms but node {owner:?} took the volume over at {:?}",
                            epochs.last()
                        ));
                    }
                }
            };
            // A node that resumes may acknowledge before it has looked at anything.
            if rng.chance(50) {
                ack(&nodes[i], &mut outcome, &epochs);
            }
            // The socket buffer and the timer race when a node resumes: either may come first.
            let inbox_first = rng.chance(50);
            let mut sends = Vec::new();
            if inbox_first {
                deliver(&mut nodes[i], t, now);
            }
            let n = &mut nodes[i];
            for o in n.membership.tick(now) {
                if let Output::Send { bytes, .. } = o {
                    sends.push(Datagram::Heartbeat(bytes));
                }
            }
            let peer_online = n.membership.view()[1].online;
            let settled = n.membership.settled(now);
            // The driver's alone lease: renewed at each of its own ticks while the peer is Offline.
            if !peer_online && settled {
                n.alone_until = Some(now + c.lease);
            }
            // A Primary that hears its peer took the volume over later steps down.
            if let (Some(mine), Some(theirs)) = (n.primary_since, n.peer_primary_since) {
                if peer_online && theirs > mine {
                    n.primary_since = None;
                }
            }
            if n.primary_since.is_none()
                && !peer_online
                && settled
                && n.grantor.may_take_over("vol0", now)
            {
                n.primary_since = Some(t);
                epochs.push((t, i));
                outcome.takeovers += 1;
            }
            if now >= n.next_report {
                n.next_report = now + heartbeat;
                let grants = peer_online && n.primary_since.is_none();
                let grant = n.peer_stamp.filter(|_| grants);
                if grant.is_some() {
                    n.grantor.granting(["vol0"], now);
                }
                sends.push(Datagram::Report {
                    stamp: n.holder.stamp(now),
                    grant,
                    primary_since: n.primary_since,
                });
            }
            if !inbox_first {
                deliver(&mut nodes[i], t, now);
            }
            ack(&nodes[i], &mut outcome, &epochs);
            for d in sends {
                let arrives = t + rng.below(120);
                nodes[1 - i].inbox.push((arrives, d));
            }
        }
    }
    outcome
}

#[test]
fn frozen_nodes_never_acknowledge_in_the_same_interval_over_many_seeds() {
    let mut takeovers = 0;
    let mut acks = 0;
    let mut failures = Vec::new();
    for seed in 1..=200u64 {
        let outcome = simulate(seed, true);
        takeovers += outcome.takeovers;
        acks += outcome.acks;
        if let Some(v) = outcome.violation {
            failures.push(format!("seed {seed}: {v}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 200 seeds broke the lease oracle:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The faults happened: the volume moved, and was served, many times.
    assert!(takeovers > 50, "only {takeovers} takeovers in 200 seeds");
    assert!(acks > 100_000, "only {acks} acknowledgements in 200 seeds");
}

#[test]
fn the_oracle_bites_a_node_that_takes_its_own_pause_for_the_peer_s_silence() {
    let broken = (1..=200u64)
        .filter(|&seed| simulate(seed, false).violation.is_some())
        .count();
    assert!(
        broken > 0,
        "without rule 9 a resumed node acts on a stale view; the simulation must catch it"
    );
}
