//! Unit tests of each failover rule, on a simulated clock.

use super::*;
use crate::backoff::Retries;
use crate::lease::LeaseConfig;
use crate::membership::{Heartbeat, MembershipConfig};
use crate::message::{self, LeaseReport, Location, ResourceReport, VolumeReport};
use crate::scheduler::{Fencing, NoQuorumPolicy};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const TIMING: Timing = Timing {
    heartbeat: Duration::from_millis(200),
    detection: Duration::from_millis(1000),
};

fn lease() -> LeaseConfig {
    LeaseConfig::new(TIMING.heartbeat, TIMING.detection).expect("timings")
}

fn promote(volume: &str, node: &str) -> Action {
    Action::Promote {
        volume: volume.into(),
        node: node.into(),
        stack: volume.into(),
    }
}

fn demote(volume: &str, node: &str) -> Action {
    Action::Demote {
        volume: volume.into(),
        node: node.into(),
        stack: volume.into(),
    }
}

fn start(volume: &str, kind: ResourceKind, node: &str) -> Action {
    Action::Start {
        volume: volume.into(),
        kind,
        resource: format!("{volume}-{}", kind.name()),
        node: node.into(),
    }
}

fn stop(volume: &str, kind: ResourceKind, node: &str) -> Action {
    Action::Stop {
        volume: volume.into(),
        kind,
        resource: format!("{volume}-{}", kind.name()),
        node: node.into(),
    }
}

/// The full start of `volume`'s stack on `node`.
fn bring_up(volume: &str, node: &str) -> Vec<Action> {
    vec![
        promote(volume, node),
        start(volume, ResourceKind::Vip, node),
        start(volume, ResourceKind::Target, node),
        start(volume, ResourceKind::Lun, node),
    ]
}

/// The full stop of `volume`'s stack on `node`.
fn bring_down(volume: &str, node: &str) -> Vec<Action> {
    vec![
        stop(volume, ResourceKind::Lun, node),
        stop(volume, ResourceKind::Target, node),
        stop(volume, ResourceKind::Vip, node),
        demote(volume, node),
    ]
}

// ----- start-up wait -----

#[test]
fn startup_wait_is_five_detection_timeouts_and_early_loss_waits_two_heartbeats() {
    assert_eq!(TIMING.startup_wait(), ms(5000));
    assert_eq!(TIMING.early_loss_silence(), ms(400));
    assert_eq!(scheduler_seconds(ms(2500)), SCHEDULER_EPOCH_S + 2);
}

#[test]
fn startup_wait_the_peer_is_unknown_until_seen_or_the_wait_is_over() {
    // Never seen, within the wait: unknown; at the end of the wait: known (absent).
    assert!(peer_unknown(false, false, false, ms(0), TIMING));
    assert!(peer_unknown(false, false, false, ms(4999), TIMING));
    assert!(!peer_unknown(false, false, false, ms(5000), TIMING));
    // Seen once, now Offline: known at once.
    assert!(!peer_unknown(false, false, true, ms(10), TIMING));
    // Online without a report: unknown, at any time; with one: known.
    assert!(peer_unknown(true, false, true, ms(60_000), TIMING));
    assert!(!peer_unknown(true, true, true, ms(10), TIMING));
}

// ----- witness settling -----

#[test]
fn settling_holds_for_one_detection_timeout_after_the_loss_and_only_with_a_witness() {
    let lost = Some(ms(3000));
    assert!(settling(true, lost, ms(3000), TIMING));
    assert!(settling(true, lost, ms(3999), TIMING));
    assert!(!settling(true, lost, ms(4000), TIMING));
    assert!(!settling(false, lost, ms(3000), TIMING));
    assert!(!settling(true, None, ms(3000), TIMING));
}

#[test]
fn settling_cuts_promotions_and_starts_but_never_stops() {
    let mut actions = bring_down("vol1", "a");
    actions.extend(bring_up("vol0", "a"));
    actions.push(stop("vol2", ResourceKind::Vip, "a"));
    actions.push(start("vol2", ResourceKind::Target, "a"));
    let kept = without_starts(actions);
    let mut expected = bring_down("vol1", "a");
    expected.push(stop("vol2", ResourceKind::Vip, "a"));
    assert_eq!(kept, expected);
}

// ----- early loss -----

fn membership(id: u8, peer: u8) -> Membership {
    let config = MembershipConfig {
        heartbeat_interval: TIMING.heartbeat,
        detection_timeout: TIMING.detection,
        ..MembershipConfig::two_node(7, id, peer, 2, 1)
    };
    Membership::new(config, ms(0)).expect("membership")
}

fn hear(m: &mut Membership, seq: u64, now: Duration) {
    for link in 0..2 {
        let beat = Heartbeat {
            cluster_id: 7,
            node_id: 2,
            incarnation: 5,
            seq,
            link,
        }
        .encode();
        m.received(link, &beat, now);
    }
}

fn went_offline(outs: &[MemberOut]) -> bool {
    outs.iter()
        .any(|o| matches!(o, MemberOut::PeerOffline { node: 2 }))
}

#[test]
fn early_loss_needs_a_recent_close_and_two_silent_heartbeats() {
    let mut m = membership(1, 2);
    hear(&mut m, 1, ms(100));
    assert!(peer_online(&m, 2));
    // Closed long ago: no early loss.
    assert!(early_loss(&mut m, 2, [ms(5000)], ms(600), TIMING).is_empty());
    // Closed just now, but a heartbeat came 300 ms ago (< 400): not yet.
    hear(&mut m, 2, ms(300));
    assert!(!went_offline(&early_loss(
        &mut m,
        2,
        [ms(10)],
        ms(600),
        TIMING
    )));
    assert!(peer_online(&m, 2));
    // No close at all: nothing, however long the silence (below the detection timeout).
    assert!(early_loss(&mut m, 2, [], ms(700), TIMING).is_empty());
    // Closed just now and 400 ms of silence on every link: gone, long before the detection timeout.
    let outs = early_loss(&mut m, 2, [ms(5000), ms(10)], ms(700), TIMING);
    assert!(went_offline(&outs), "{outs:?}");
    assert!(!peer_online(&m, 2));
    // Already Offline: nothing more.
    assert!(early_loss(&mut m, 2, [ms(10)], ms(800), TIMING).is_empty());
}

#[test]
fn a_silent_peer_s_replication_link_is_dead_after_the_longer_of_detection_and_four_pings() {
    let ping = ms(100);
    assert_eq!(replication_silence(true, true, TIMING, ping), None);
    assert_eq!(replication_silence(false, false, TIMING, ping), None);
    assert_eq!(
        replication_silence(false, true, TIMING, ping),
        Some(ms(1000))
    );
    assert_eq!(
        replication_silence(false, true, TIMING, ms(400)),
        Some(ms(1600))
    );
}

// ----- which side starts -----

#[test]
fn which_side_starts_only_the_leading_actions_of_each_stack_that_are_mine() {
    // The old Primary b stops first; a's promotion waits behind b's demotion.
    let mut actions = bring_down("vol0", "b");
    actions.extend(bring_up("vol0", "a"));
    assert!(my_share(&actions, ["vol0"], "a").is_empty());
    assert_eq!(my_share(&actions, ["vol0"], "b"), bring_down("vol0", "b"));
    // Once b's part is done (no longer scheduled), a's is its share.
    assert_eq!(
        my_share(&bring_up("vol0", "a"), ["vol0"], "a"),
        bring_up("vol0", "a")
    );
    // Stacks are independent, and taken in the given order; an unlisted stack is nobody's share.
    let mut two = bring_up("vol1", "a");
    two.extend(bring_up("vol0", "b"));
    two.extend(bring_up("vol2", "a"));
    assert_eq!(my_share(&two, ["vol0", "vol1"], "a"), bring_up("vol1", "a"));
    assert_eq!(my_share(&two, ["vol0", "vol1"], "b"), bring_up("vol0", "b"));
}

#[test]
fn cut_from_drops_the_first_match_and_the_rest_of_its_volume_only() {
    let mut actions = bring_up("vol0", "a");
    actions.extend(bring_up("vol1", "a"));
    let cut = cut_from(actions, |a| {
        a.volume() == "vol0"
            && matches!(
                a,
                Action::Start {
                    kind: ResourceKind::Target,
                    ..
                }
            )
    });
    let mut expected = bring_up("vol0", "a")[..2].to_vec();
    expected.extend(bring_up("vol1", "a"));
    assert_eq!(cut, expected);
}

// ----- retries -----

#[test]
fn due_holds_back_a_volume_whose_action_waits_for_its_retry() {
    let mut retries = Retries::default();
    let mut actions = bring_up("vol0", "a");
    actions.extend(bring_up("vol1", "a"));
    retries.failed("vol0-target", "start", "port busy", ms(1000));
    // The first retry comes 200 ms later: until then vol0's whole share waits, vol1's runs.
    assert_eq!(due(&actions, &retries, ms(1100)), bring_up("vol1", "a"));
    assert_eq!(due(&actions, &retries, ms(1200)), actions);
    // Another verb of the same resource is not held.
    let stopping = vec![stop("vol0", ResourceKind::Target, "a")];
    assert_eq!(due(&stopping, &retries, ms(1100)), stopping);
    assert_eq!(action_verb(&stopping[0]), "stop");
}

// ----- held takeovers -----

#[test]
fn held_takeovers_wait_for_the_granted_lease_to_run_out() {
    let mut grantor = LeaseGrantor::new(lease());
    grantor.granting(["vol0"], ms(1000));
    let wait = lease().takeover_wait();
    let mut actions = bring_up("vol0", "a");
    actions.extend(bring_up("vol1", "a"));
    // Link down: vol0 was granted at 1000 ms, so its promotion waits; vol1 was never granted.
    let t = hold_takeovers(actions.clone(), |_| false, &grantor, true, ms(1100));
    assert_eq!(t.actions, bring_up("vol1", "a"));
    assert_eq!(
        t.taking_over,
        ["vol0", "vol1"].map(String::from).into_iter().collect()
    );
    assert_eq!(
        t.held.get("vol0"),
        Some(&Hold::Lease {
            wait: ms(1000) + wait - ms(1100)
        })
    );
    assert!(!t.held.contains_key("vol1"));
    // At the end of the wait, both go.
    let t = hold_takeovers(actions.clone(), |_| false, &grantor, true, ms(1000) + wait);
    assert_eq!(t.actions, actions);
    assert!(t.held.is_empty());
    // A connected volume is no takeover: promoted at once (the volume itself arbitrates).
    let t = hold_takeovers(actions.clone(), |_| true, &grantor, true, ms(1100));
    assert_eq!(t.actions, actions);
    assert!(t.taking_over.is_empty());
}

#[test]
fn held_takeovers_wait_after_this_node_s_own_pause() {
    let grantor = LeaseGrantor::new(lease());
    let actions = bring_up("vol0", "a");
    let t = hold_takeovers(actions.clone(), |_| false, &grantor, false, ms(9000));
    assert!(t.actions.is_empty());
    assert_eq!(t.held.get("vol0"), Some(&Hold::Paused));
    // Stops and demotions are never held.
    let down = bring_down("vol0", "a");
    let t = hold_takeovers(down.clone(), |_| false, &grantor, false, ms(9000));
    assert_eq!(t.actions, down);
}

// ----- the gates together -----

fn gate_input<'a>(
    stacks: &'a [String],
    grantor: &'a LeaseGrantor,
    retries: &'a Retries,
) -> GateInput<'a> {
    GateInput {
        me: "a",
        stacks,
        witness: false,
        peer_offline_since: None,
        settled: true,
        grantor,
        retries,
        peer_unknown: false,
        left: false,
        timing: TIMING,
        now: ms(20_000),
    }
}

#[test]
fn gate_applies_every_rule_in_order() {
    let stacks = vec!["vol0".to_string()];
    let mut grantor = LeaseGrantor::new(lease());
    let retries = Retries::default();
    let actions = bring_up("vol0", "a");
    let open = gate_input(&stacks, &grantor, &retries);
    let g = gate(&actions, |_| false, &open);
    assert_eq!(g.run, actions);
    assert_eq!(g.share, actions);
    // The peer's state unknown (start-up wait), or this node left: the share is known, nothing runs.
    for g in [
        gate(
            &actions,
            |_| false,
            &GateInput {
                peer_unknown: true,
                ..open
            },
        ),
        gate(&actions, |_| false, &GateInput { left: true, ..open }),
    ] {
        assert_eq!(g.share, actions);
        assert!(g.run.is_empty());
    }
    // Witness settling.
    let settling_in = GateInput {
        witness: true,
        peer_offline_since: Some(ms(19_500)),
        ..open
    };
    let g = gate(&actions, |_| false, &settling_in);
    assert!(g.share.is_empty() && g.run.is_empty());
    // The peer's actions come first: nothing of ours runs.
    let mut theirs = bring_down("vol0", "b");
    theirs.extend(bring_up("vol0", "a"));
    let g = gate(&theirs, |_| true, &open);
    assert!(g.share.is_empty() && g.run.is_empty());
    // A held takeover.
    grantor.granting(["vol0"], ms(19_900));
    let g = gate(
        &actions,
        |_| false,
        &gate_input(&stacks, &grantor, &retries),
    );
    assert!(g.run.is_empty());
    assert!(g.held.contains_key("vol0"));
    assert!(g.taking_over.contains("vol0"));
}

#[test]
fn a_promotion_refused_while_connected_is_a_race_not_a_failure() {
    assert!(raced(&promote("vol0", "a"), true));
    assert!(!raced(&promote("vol0", "a"), false));
    assert!(!raced(&start("vol0", ResourceKind::Vip, "a"), true));
}

// ----- the scheduler's input -----

fn stack() -> VolumeStack {
    VolumeStack {
        name: "vol0".into(),
        volumes: Vec::new(),
        lun_volumes: BTreeMap::new(),
        vip: "vol0-vip".into(),
        target: "vol0-target".into(),
        luns: vec!["vol0-lun".into()],
        fencing: Fencing::ResourceOnly,
    }
}

fn options() -> ClusterOptions {
    ClusterOptions {
        resource_stickiness: 100,
        migration_threshold: 3,
        failure_timeout_s: None,
        no_quorum_policy: NoQuorumPolicy::Ignore,
        witness: false,
    }
}

fn local(connected: bool, role: ReportRole) -> LocalVolume {
    LocalVolume {
        disk: ReportDisk::UpToDate,
        role,
        connected,
        peer_disk: if connected {
            ReportDisk::UpToDate
        } else {
            ReportDisk::DUnknown
        },
        peer_role: connected.then_some(ReportRole::Secondary),
        generations: vec![0x10, 0],
    }
}

fn resources() -> BTreeMap<String, LocalResource> {
    [
        ("vol0", ResourceKind::Volume),
        ("vol0-vip", ResourceKind::Vip),
        ("vol0-target", ResourceKind::Target),
        ("vol0-lun", ResourceKind::Lun),
    ]
    .into_iter()
    .map(|(name, kind)| {
        (
            name.to_string(),
            LocalResource {
                kind,
                volume: "vol0".into(),
                status: RunStatus::Stopped,
                fail_count: 0,
                last_failure: None,
            },
        )
    })
    .collect()
}

fn peer_report(disk: ReportDisk, role: ReportRole) -> Report {
    Report {
        volumes: vec![VolumeReport {
            volume: "vol0".into(),
            disk,
            role,
            connected: false,
            generations: vec![0x20, 0],
            primary_for_ms: Some(4000),
        }],
        resources: vec![
            ResourceReport {
                resource: "vol0".into(),
                status: ReportStatus::Started,
                fail_count: 0,
                last_failure_ago_s: None,
            },
            ResourceReport {
                resource: "vol0-vip".into(),
                status: ReportStatus::Started,
                fail_count: 2,
                last_failure_ago_s: Some(7),
            },
            ResourceReport {
                resource: "other-vip".into(),
                status: ReportStatus::Started,
                fail_count: 0,
                last_failure_ago_s: None,
            },
        ],
        ..Report::default()
    }
}

struct Fixture {
    stacks: Vec<VolumeStack>,
    settings: Settings,
    volumes: BTreeMap<String, LocalVolume>,
    primary_since: BTreeMap<String, Duration>,
    resources: BTreeMap<String, LocalResource>,
    report: Option<Report>,
}

impl Fixture {
    fn new(connected: bool) -> Fixture {
        Fixture {
            stacks: vec![stack()],
            settings: Settings::default(),
            volumes: [("vol0".to_string(), local(connected, ReportRole::Secondary))].into(),
            primary_since: BTreeMap::new(),
            resources: resources(),
            report: Some(peer_report(ReportDisk::UpToDate, ReportRole::Primary)),
        }
    }

    fn view(&self) -> NodeView<'_> {
        NodeView {
            me: "a",
            peer: "b",
            options: options(),
            stacks: &self.stacks,
            settings: &self.settings,
            now: ms(60_000),
            peer_online: true,
            peer_report: self.report.as_ref(),
            peer_seen_once: true,
            left: false,
            leaving: false,
            vote: None,
            volumes: &self.volumes,
            primary_since: &self.primary_since,
            resources: &self.resources,
            timing: TIMING,
        }
    }
}

fn entry<'a>(built: &'a Built, node: &str) -> Option<&'a VolumeStatus> {
    built
        .input
        .state
        .volumes
        .iter()
        .find(|v| v.node == node && v.volume == "vol0")
}

#[test]
fn build_input_reads_the_peer_s_copy_from_its_report_while_disconnected() {
    let f = Fixture::new(false);
    let built = build_input(&f.view());
    assert!(!built.peer_unknown && !built.left && !built.stopped);
    let now_s = scheduler_seconds(ms(60_000));
    assert_eq!(built.input.state.now_s, now_s);
    let peer = entry(&built, "b").expect("peer entry");
    assert_eq!(
        (peer.disk, peer.role, peer.connected),
        (DiskState::UpToDate, Role::Primary, false)
    );
    assert_eq!(peer.generations, vec![0x20, 0]);
    assert_eq!(peer.primary_since_s, Some(now_s - 4));
    let me = entry(&built, "a").expect("own entry");
    assert_eq!((me.disk, me.role), (DiskState::UpToDate, Role::Secondary));
    // The peer's resources: only those this node knows, a volume never "started".
    let theirs: Vec<_> = built
        .input
        .state
        .resources
        .iter()
        .filter(|r| r.node == "b")
        .map(|r| {
            (
                r.resource.as_str(),
                r.status,
                r.fail_count,
                r.last_failure_s,
            )
        })
        .collect();
    assert_eq!(
        theirs,
        vec![
            ("vol0", RunStatus::Stopped, 0, None),
            ("vol0-vip", RunStatus::Started, 2, Some(now_s - 7)),
        ]
    );
    assert_eq!(built.input.config.volumes.len(), 1);
    assert_eq!(built.input.config.volumes[0].name, "vol0");
    assert_eq!(built.input.state.nodes.len(), 2);
    assert!(built
        .input
        .state
        .nodes
        .iter()
        .all(|n| n.online && !n.standby));
}

#[test]
fn build_input_takes_the_replication_link_s_word_over_the_report_while_connected() {
    let f = Fixture::new(true);
    let built = build_input(&f.view());
    let peer = entry(&built, "b").expect("peer entry");
    // The report says Primary (a heartbeat old); the link says Secondary, UpToDate, connected.
    assert_eq!(
        (peer.disk, peer.role, peer.connected),
        (DiskState::UpToDate, Role::Secondary, true)
    );
}

#[test]
fn build_input_without_the_peer_online_has_no_peer_entries_and_a_peer_disk_maps_typed() {
    let mut f = Fixture::new(false);
    let built = build_input(&NodeView {
        peer_online: false,
        ..f.view()
    });
    assert!(entry(&built, "b").is_none());
    assert!(built.input.state.resources.iter().all(|r| r.node == "a"));
    assert!(!built.input.state.nodes[1].online);
    // A stopped peer (`cluster stop`) counts as Offline; its report is not read.
    f.report.as_mut().expect("report").stopped = true;
    let built = build_input(&f.view());
    assert!(!built.input.state.nodes[1].online);
    assert!(entry(&built, "b").is_none());
    // A Failed disk in a report is Diskless to the scheduler, Attaching is Unknown.
    for (disk, state) in [
        (ReportDisk::Failed, DiskState::Diskless),
        (ReportDisk::Attaching, DiskState::Unknown),
        (ReportDisk::Outdated, DiskState::Outdated),
    ] {
        f.report = Some(peer_report(disk, ReportRole::Secondary));
        let built = build_input(&f.view());
        assert_eq!(entry(&built, "b").map(|e| e.disk), Some(state));
    }
}

#[test]
fn build_input_carries_settings_standby_fences_votes_and_times() {
    let mut f = Fixture::new(false);
    f.settings.standby.insert("b".into());
    f.settings.stopped.insert("a".into());
    f.settings.fenced.insert(("vol0".into(), "b".into()));
    f.settings.locations.push(Location {
        resource: "vol0".into(),
        node: "a".into(),
        prefer: false,
    });
    f.primary_since.insert("vol0".into(), ms(50_000));
    f.resources.get_mut("vol0-vip").expect("vip").last_failure = Some(ms(57_000));
    let built = build_input(&NodeView {
        vote: Some(Vote::Peer),
        ..f.view()
    });
    assert!(built.stopped);
    assert!(built.input.state.nodes[0].standby && built.input.state.nodes[1].standby);
    assert_eq!(built.input.state.witness_vote.as_deref(), Some("b"));
    assert_eq!(built.input.config.locations[0].kind, LocationKind::Ban);
    let now_s = scheduler_seconds(ms(60_000));
    let me = entry(&built, "a").expect("own");
    assert_eq!(me.primary_since_s, Some(now_s - 10));
    assert!(!me.fenced);
    assert!(entry(&built, "b").expect("peer").fenced);
    let vip = built
        .input
        .state
        .resources
        .iter()
        .find(|r| r.node == "a" && r.resource == "vol0-vip")
        .expect("vip");
    assert_eq!(vip.last_failure_s, Some(now_s - 3));
    // Leaving counts as standby for this node; a leaving peer as standby for the peer.
    f.settings = Settings::default();
    f.report.as_mut().expect("report").leaving = true;
    let built = build_input(&NodeView {
        leaving: true,
        vote: Some(Vote::Me),
        ..f.view()
    });
    assert!(built.input.state.nodes[0].standby && built.input.state.nodes[1].standby);
    assert_eq!(built.input.state.witness_vote.as_deref(), Some("a"));
}

#[test]
fn build_input_says_the_peer_is_unknown_during_the_startup_wait() {
    let f = Fixture::new(false);
    let built = build_input(&NodeView {
        peer_online: false,
        peer_seen_once: false,
        now: ms(4000),
        ..f.view()
    });
    assert!(built.peer_unknown);
    let built = build_input(&NodeView {
        peer_report: None,
        ..f.view()
    });
    assert!(built.peer_unknown);
}

#[test]
fn primaries_are_tracked_from_when_they_became_primary() {
    let mut since = BTreeMap::new();
    let vol0: BTreeSet<String> = ["vol0".to_string()].into();
    track_primaries(&mut since, &vol0, ms(100));
    track_primaries(&mut since, &vol0, ms(900));
    assert_eq!(since.get("vol0"), Some(&ms(100)));
    track_primaries(&mut since, &BTreeSet::new(), ms(1000));
    assert!(since.is_empty());
}

// ----- leases -----

#[test]
fn the_alone_lease_needs_the_peer_offline_and_this_node_settled() {
    let lease = ms(600);
    assert_eq!(alone_lease(true, true, None, ms(1000), lease), None);
    assert_eq!(alone_lease(false, false, None, ms(1000), lease), None);
    assert_eq!(
        alone_lease(false, true, None, ms(1000), lease),
        Some(ms(1600))
    );
    // With a witness: as long as the vote's belief, none without the vote.
    assert_eq!(
        alone_lease(false, true, Some(Some(ms(3000))), ms(1000), lease),
        Some(ms(3000))
    );
    assert_eq!(alone_lease(false, true, Some(None), ms(1000), lease), None);
}

#[test]
fn a_peer_of_the_release_before_leases_is_run_with_as_that_release_did() {
    let holder = LeaseHolder::new(lease());
    let secondary = peer_report(ReportDisk::UpToDate, ReportRole::Secondary);
    let primary = peer_report(ReportDisk::UpToDate, ReportRole::Primary);
    let now = ms(1000);
    let lease = ms(600);
    assert_eq!(
        lease_until(
            &holder,
            "vol0",
            None,
            true,
            true,
            Some(&secondary),
            now,
            lease
        ),
        Some(ms(1600))
    );
    // Not while the legacy peer is Primary, not while it is Offline, never for a peer with leases.
    assert_eq!(
        lease_until(
            &holder,
            "vol0",
            None,
            true,
            true,
            Some(&primary),
            now,
            lease
        ),
        None
    );
    assert_eq!(
        lease_until(
            &holder,
            "vol0",
            None,
            true,
            false,
            Some(&secondary),
            now,
            lease
        ),
        None
    );
    assert_eq!(
        lease_until(
            &holder,
            "vol0",
            None,
            false,
            true,
            Some(&secondary),
            now,
            lease
        ),
        None
    );
    assert_eq!(
        lease_until(
            &holder,
            "vol0",
            Some(ms(1200)),
            false,
            false,
            None,
            now,
            lease
        ),
        Some(ms(1200))
    );
    assert!(reports_primary(Some(&primary), "vol0"));
    assert!(!reports_primary(Some(&primary), "vol1"));
}

#[test]
fn grants_cover_the_volumes_neither_primary_here_nor_taken_over() {
    let taking: BTreeSet<String> = ["vol2".to_string()].into();
    let volumes = [("vol0", false), ("vol1", true), ("vol2", false)];
    assert_eq!(
        grants(true, true, volumes, &taking),
        vec!["vol0".to_string()]
    );
    assert!(grants(false, true, volumes, &taking).is_empty());
    assert!(grants(true, false, volumes, &taking).is_empty());
}

#[test]
fn only_newer_messages_are_fresh() {
    assert!(fresh(None, 1, 1));
    assert!(fresh(Some((5, 10)), 5, 11));
    assert!(!fresh(Some((5, 10)), 5, 10));
    assert!(!fresh(Some((5, 10)), 5, 3));
    assert!(fresh(Some((5, 10)), 6, 1));
    assert!(!fresh(Some((5, 10)), 4, 99));
}

// ----- fencing -----

#[test]
fn fence_requests_are_sent_each_heartbeat_until_answered() {
    let mut f = Fences::new();
    let id = f.request("vol0", vec![1, 2]);
    assert_eq!(id, 1);
    let hb = TIMING.heartbeat;
    let round = f.drive(ms(0), true, hb, |_| false);
    assert_eq!(
        round.send,
        vec![Message::Fence {
            id,
            volume: "vol0".into(),
            generations: vec![1, 2]
        }]
    );
    assert!(f.drive(ms(100), true, hb, |_| false).send.is_empty());
    assert_eq!(f.drive(ms(200), true, hb, |_| false).send.len(), 1);
    // A second request of the same volume replaces the first.
    let again = f.request("vol0", vec![3, 4]);
    assert_eq!(f.pending().len(), 1);
    assert_eq!(f.answered(id), None);
    assert_eq!(f.answered(again).as_deref(), Some("vol0"));
    assert!(f.pending().is_empty());
}

#[test]
fn fence_requests_of_an_unreachable_peer_are_answered_and_recorded_and_moot_ones_dropped() {
    let mut f = Fences::new();
    f.request("vol0", vec![1]);
    f.request("vol1", vec![1]);
    let round = f.drive(ms(0), false, TIMING.heartbeat, |v| v == "vol1");
    assert_eq!(round.unreachable, vec!["vol0".to_string()]);
    assert!(round.send.is_empty());
    assert!(f.pending().is_empty());
    let settings = fence_unreachable(&Settings::default(), &round.unreachable, "b");
    assert!(settings.fenced.contains(&("vol0".into(), "b".into())));
    assert_eq!(settings.fenced.len(), 1);
}

#[test]
fn a_fence_request_is_answered_only_once_the_link_is_down_and_if_well_formed() {
    assert_eq!(fence_request(false, &[1, 2, 3], 3), FenceAnswer::Outdate);
    assert_eq!(fence_request(true, &[1, 2, 3], 3), FenceAnswer::NotYet);
    assert_eq!(
        fence_request(false, &[1, 2], 3),
        FenceAnswer::Refuse("malformed generation identifiers".into())
    );
}

#[test]
fn fenced_copies_are_released_once_in_sync() {
    let mut settings = Settings::default();
    settings.fenced.insert(("vol0".into(), "b".into()));
    settings.fenced.insert(("vol1".into(), "b".into()));
    settings.fenced.insert(("gone".into(), "b".into()));
    let mut volumes = BTreeMap::new();
    volumes.insert("vol0".to_string(), local(true, ReportRole::Primary));
    let mut behind = local(true, ReportRole::Primary);
    behind.peer_disk = ReportDisk::Inconsistent;
    volumes.insert("vol1".to_string(), behind);
    assert_eq!(
        settled_fences(&settings, &volumes),
        vec![("vol0".to_string(), "b".to_string())]
    );
}

// ----- VIPs -----

#[test]
fn vips_are_announced_again_when_the_peer_comes_back_or_releases_one() {
    let mut w = VipWatch::new();
    let vips = ["vol0-vip", "vol1-vip"];
    let ours: BTreeSet<String> = ["vol0-vip".to_string()].into();
    let holding = peer_report(ReportDisk::UpToDate, ReportRole::Primary);
    // The peer comes Online: announce ours.
    assert_eq!(
        w.round(true, &vips, &ours, Some(&holding)),
        vec!["vol0-vip"]
    );
    // Nothing changes: nothing.
    assert!(w.round(true, &vips, &ours, Some(&holding)).is_empty());
    // The peer released vol0-vip: announce it again.
    let released = Report::default();
    assert_eq!(
        w.round(true, &vips, &ours, Some(&released)),
        vec!["vol0-vip"]
    );
    // Not ours: never.
    assert!(w.round(false, &vips, &BTreeSet::new(), None).is_empty());
    assert!(w
        .round(true, &vips, &BTreeSet::new(), Some(&holding))
        .is_empty());
}

// ----- a report's leases, failovers, settings -----

#[test]
fn a_report_s_lease_grants_only_when_it_echoes_this_incarnation() {
    let v2 = message::negotiate(Some(message::VERSIONS)).expect("common");
    let v1 = message::negotiate(None).expect("common");
    let mut holder = LeaseHolder::new(lease());
    let stamp = holder.stamp(ms(1000));
    let grant = LeaseReport {
        stamp: 77,
        echo: Some(stamp),
        echo_for: 9,
        volumes: vec!["vol0".into()],
    };
    // An echo for another incarnation of this node: the stamp is kept, nothing granted.
    let got = accept_leases(&mut holder, v2, Some(&grant), 5, 8, ms(1100));
    assert_eq!(
        got,
        PeerLeases {
            without_leases: false,
            stamp: Some((5, 77))
        }
    );
    assert_eq!(holder.until("vol0", None), None);
    // For this incarnation: granted from the echoed stamp.
    accept_leases(&mut holder, v2, Some(&grant), 5, 9, ms(1100));
    assert_eq!(holder.until("vol0", None), Some(ms(1000) + lease().lease));
    // Version 1 or no lease part: a peer that neither grants nor waits.
    assert!(accept_leases(&mut holder, v1, Some(&grant), 5, 9, ms(1200)).without_leases);
    assert_eq!(
        accept_leases(&mut holder, v2, None, 5, 9, ms(1200)),
        PeerLeases {
            without_leases: true,
            stamp: None
        }
    );
}

#[test]
fn a_failover_is_the_first_volume_promoted_with_the_link_down_and_the_peer_lost() {
    assert!(is_failover(true, false, true, false));
    assert!(!is_failover(false, false, true, false));
    assert!(!is_failover(true, true, true, false));
    assert!(!is_failover(true, false, false, false));
    assert!(!is_failover(true, false, true, true));
}

#[test]
fn a_settings_change_goes_above_both_versions_with_this_node_as_origin() {
    let current = Settings {
        version: 7,
        origin: 2,
        ..Settings::default()
    };
    let mut edited = current.clone();
    edited.standby.insert("a".into());
    let changed = changed_settings(&current, edited, 1);
    assert_eq!((changed.version, changed.origin), (8, 1));
    assert!(current.older_than(&changed));
    let ahead = Settings {
        version: 12,
        ..Settings::default()
    };
    assert_eq!(changed_settings(&current, ahead, 1).version, 13);
}

#[test]
fn a_cleanup_is_applied_once_to_its_resource_or_all() {
    let mut resources = resources();
    for r in resources.values_mut() {
        r.fail_count = 2;
        r.last_failure = Some(ms(10));
    }
    let mut retries = Retries::default();
    retries.failed("vol0-vip", "start", "busy", ms(0));
    retries.failed("vol0-target", "start", "busy", ms(0));
    let mut failed = vec![
        "vol0-vip_start_0 on a 'busy'".to_string(),
        "vol0-target_start_0 on a 'busy'".to_string(),
    ];
    let mut applied = 0;
    let mut settings = Settings::default();
    settings.cleanup.generation = 1;
    settings.cleanup.resource = Some("vol0-vip".into());
    apply_cleanup(
        &settings,
        &mut applied,
        &mut resources,
        &mut retries,
        &mut failed,
    );
    assert_eq!(applied, 1);
    assert_eq!(resources["vol0-vip"].fail_count, 0);
    assert_eq!(resources["vol0-vip"].last_failure, None);
    assert_eq!(resources["vol0-target"].fail_count, 2);
    assert!(retries.wait("vol0-vip", "start", ms(1)).is_none());
    assert!(retries.wait("vol0-target", "start", ms(1)).is_some());
    assert_eq!(failed, vec!["vol0-target_start_0 on a 'busy'".to_string()]);
    // The same generation again changes nothing; a new one for all clears the rest.
    resources.get_mut("vol0-vip").expect("vip").fail_count = 5;
    apply_cleanup(
        &settings,
        &mut applied,
        &mut resources,
        &mut retries,
        &mut failed,
    );
    assert_eq!(resources["vol0-vip"].fail_count, 5);
    settings.cleanup.generation = 2;
    settings.cleanup.resource = None;
    apply_cleanup(
        &settings,
        &mut applied,
        &mut resources,
        &mut retries,
        &mut failed,
    );
    assert!(resources.values().all(|r| r.fail_count == 0));
    assert!(failed.is_empty());
    assert!(retries.wait("vol0-target", "start", ms(1)).is_none());
}
