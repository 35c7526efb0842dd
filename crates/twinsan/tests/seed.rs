//! The seed guide ("iSCSI storage on a two-node Pacemaker cluster", ../shared/seed/SEED-EN.md) walked section by
//! section on a twinsan cluster in network namespaces, asserting at each step what the guide says the admin sees —
//! with twinsan's commands in place of drbdadm, pcs and targetcli (docs/from-pacemaker-drbd.md maps them).
//!
//! The guide's addresses are replaced by the lab's (198.18.0.0/24, 198.18.1.0/24), its DRBD resource `dvolume` by
//! `vol0`, its nodes pcmk-1/pcmk-2 by node1/node2. Needs root (namespaces).

mod common;

use std::time::{Duration, Instant};

use common::cluster::in_sync;
use common::nscluster::{NsCluster, CHUNK, URL};
use common::qemu;

fn lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim_end).collect()
}

fn has_line(text: &str, line: &str) -> bool {
    lines(text).contains(&line)
}

#[test]
fn the_seed_guide_walked_through() {
    let mut c = NsCluster::new("seed", false);
    // The guide's replicated device: protocol C, `fencing resource-only` (crm-fence-peer: a lost peer may not be
    // promoted until it has resynced).
    // `twinsan init` writes both for a managed pair.
    let cfg = std::fs::read_to_string(&c.config).expect("config");
    assert!(cfg.contains("protocol = \"C\""), "{cfg}");
    assert!(cfg.contains("fencing = \"resource-only\""), "{cfg}");

    // --- Replicated device, step 1: create-md on each node ("initializing activity log, bitmap ... meta data
    // created"). Both copies start Inconsistent, as after `drbdadm create-md`.
    for n in [1, 2] {
        let out = c.cli(n, &["volume", "create-md", "--force", "vol0"]);
        assert!(
            out.contains("initialised twinsan metadata") && out.contains("bitmap"),
            "create-md on node{n}:\n{out}"
        );
    }

    // Steps 2–3: the resource up; with the peer down: `role:Secondary disk:Inconsistent / peer connection:Connecting`.
    c.start(1);
    let status = c.cli(1, &["volume", "status", "vol0"]);
    assert!(has_line(&status, "vol0 role:Secondary"), "{status}");
    assert!(has_line(&status, "  disk:Inconsistent"), "{status}");
    assert!(
        has_line(&status, "  node2 connection:Connecting"),
        "{status}"
    );
    // With the peer up: both `role:Secondary disk:Inconsistent`, connected. Nothing is promoted: neither copy is
    // known to be good.
    c.start(2);
    c.wait(
        Duration::from_secs(20),
        "both connected, both Inconsistent",
        || {
            let s = c.volume(1);
            (s["peers"][0]["connection"] == "Connected"
                && s["disk"] == "Inconsistent"
                && s["peers"][0]["peer_disk"] == "Inconsistent")
                .then_some(())
        },
    );
    let status = c.cli(2, &["volume", "status", "vol0"]);
    assert!(has_line(&status, "vol0 role:Secondary"), "{status}");
    assert!(has_line(&status, "  node1 role:Secondary"), "{status}");
    assert!(has_line(&status, "    peer-disk:Inconsistent"), "{status}");

    // Step 5: on the first node only, `primary --force` starts the initial full sync:
    // `role:Primary disk:UpToDate / peer role:Secondary replication:SyncSource peer-disk:Inconsistent done:...`.
    c.cli(1, &["volume", "primary", "--force", "vol0"]);
    let mut saw_sync = false;
    let synced = c.wait(Duration::from_secs(120), "the initial sync done", || {
        let s = c.volume(1);
        if s["peers"][0]["replication"] == "SyncSource" && s["peers"][0]["done"].is_number() {
            saw_sync = true;
        }
        in_sync(&s).then_some(s)
    });
    // Step 6 (`drbdsetup events2`) is `twinsan volume events`, a stream: tests/replication.rs follows it through
    // an initial sync.
    // Step 7: `dvolume role:Primary disk:UpToDate / pcmk-2 role:Secondary peer-disk:UpToDate`.
    assert_eq!(synced["role"], "Primary");
    let status = c.cli(1, &["volume", "status", "vol0"]);
    for line in [
        "vol0 role:Primary",
        "  disk:UpToDate",
        "  node2 role:Secondary",
        "    peer-disk:UpToDate",
    ] {
        assert!(has_line(&status, line), "no {line:?} in\n{status}");
    }
    println!("initial sync observed in progress: {saw_sync}");

    // --- Cluster resources: the promoted volume, then the VIP, the target and the LUN, all on node1, started in
    // that order; `pcs status` shows the clone set Promoted/Unpromoted and each resource Started.
    c.wait(Duration::from_secs(30), "the stack on node1", || {
        (c.stack_on(1) == Some(1) && c.stack_on(2) == Some(1)).then_some(())
    });
    let log = c.log(1);
    let order: Vec<usize> = [
        "action: start vol0-vip on node1",
        "action: start vol0-target on node1",
        "action: start vol0-lun1 on node1",
    ]
    .iter()
    .map(|a| {
        log.find(a)
            .unwrap_or_else(|| panic!("no {a:?} in node1's log"))
    })
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "started out of order: {order:?}"
    );
    let status = c.cli(2, &["status"]);
    for line in [
        "  * Clone Set: vol0-clone [vol0] (promotable):",
        "    * Promoted: [ node1 ]",
        "    * Unpromoted: [ node2 ]",
        "  * vol0-vip\t(twinsan:vip):\t Started node1",
        "  * vol0-target\t(twinsan:target):\t Started node1",
        "  * vol0-lun1\t(twinsan:lun):\t Started node1",
    ] {
        assert!(has_line(&status, line), "no {line:?} in\n{status}");
    }
    // --- Cluster properties: stonith-enabled=false, resource-stickiness=100, no-quorum-policy ignore, the
    // cluster's name.
    for line in [
        "  stonith-enabled: false",
        "  resource-stickiness: 100",
        "  no-quorum-policy: ignore",
        "  cluster-name: c",
    ] {
        assert!(has_line(&status, line), "no {line:?} in\n{status}");
    }
    let plan = qemu::plan(31, 64 << 20, CHUNK, 32);
    let (before, after) = plan.split_at(16);
    qemu::write_via(c.client(), URL, before, CHUNK);

    // --- Failover test. 1. The leading node is the one on the `vol0-vip ... Started` line.
    assert!(has_line(
        &status,
        "  * vol0-vip\t(twinsan:vip):\t Started node1"
    ));
    // 2. Stop it. 3. On node2: `Online: [ node2 ] OFFLINE: [ node1 ]`, the VIP Started on node2.
    c.cli(2, &["cluster", "stop", "node1"]);
    c.wait(
        Duration::from_secs(30),
        "node1 OFFLINE, the stack on node2",
        || {
            let s = c.cli(2, &["status"]);
            (has_line(&s, "  * Online: [ node2 ]")
                && has_line(&s, "  * OFFLINE: [ node1 ]")
                && has_line(&s, "  * vol0-vip\t(twinsan:vip):\t Started node2"))
            .then_some(())
        },
    );
    // 4. The storage is reachable at its virtual IP, with everything written before.
    qemu::verify_via(c.client(), URL, before, CHUNK);
    qemu::write_via(c.client(), URL, after, CHUNK);
    // 5. Start node1 again: `Online: [ node1 node2 ]`.
    c.cli(2, &["cluster", "start", "node1"]);
    c.wait(Duration::from_secs(30), "both Online", || {
        has_line(&c.cli(1, &["status"]), "  * Online: [ node1 node2 ]").then_some(())
    });

    // --- After a stop or a failure: `pcs status`, `drbdadm status`, `targetcli ls /` all answer and agree.
    c.wait(Duration::from_secs(60), "back in sync", || {
        in_sync(&c.volume(2)).then_some(())
    });
    let status = c.cli(1, &["status"]);
    assert!(
        has_line(&status, "    * Promoted: [ node2 ]"),
        "stickiness kept the stack on node2:\n{status}"
    );
    let volume = c.cli(1, &["volume", "status"]);
    assert!(
        has_line(&volume, "vol0 role:Secondary") && has_line(&volume, "  disk:UpToDate"),
        "{volume}"
    );
    let tree = c.cli(1, &["target", "ls"]);
    for needle in [
        "o- iscsi",
        "iqn.2025-08.local.twinsan:vol0",
        "lun1",
        "198.18.0.10:3260",
    ] {
        assert!(tree.contains(needle), "target ls lacks {needle}:\n{tree}");
    }
    qemu::verify_via(c.client(), URL, &plan, CHUNK);

    // --- Split brain: after a network failure both sides went on alone (no STONITH, no witness). On heal the
    // status shows `connection:StandAlone` on both, one `role:Primary disk:UpToDate`, the other
    // `role:Secondary disk:UpToDate`.
    c.lab.cut_between_nodes();
    c.wait(
        Duration::from_secs(30),
        "both Primary during the cut",
        || (c.volume(1)["role"] == "Primary" && c.volume(2)["role"] == "Primary").then_some(()),
    );
    c.lab.heal_between_nodes();
    let keeper = c.wait(
        Duration::from_secs(30),
        "StandAlone on both, one Primary",
        || {
            let (a, b) = (c.volume(1), c.volume(2));
            let standalone = |v: &serde_json::Value| v["peers"][0]["connection"] == "StandAlone";
            if !(standalone(&a) && standalone(&b)) {
                return None;
            }
            match (a["role"].as_str(), b["role"].as_str()) {
                (Some("Primary"), Some("Secondary")) => Some(1),
                (Some("Secondary"), Some("Primary")) => Some(2),
                _ => None,
            }
        },
    );
    let loser = 3 - keeper;
    for (n, role) in [(keeper, "Primary"), (loser, "Secondary")] {
        let s = c.cli(n, &["volume", "status", "vol0"]);
        assert!(
            has_line(&s, &format!("vol0 role:{role} split-brain:yes")),
            "{s}\n{}",
            c.logs()
        );
        assert!(has_line(&s, "  disk:UpToDate"), "{s}");
        assert!(
            has_line(&s, &format!("  node{} connection:StandAlone", 3 - n)),
            "{s}"
        );
    }
    // The recovery the guide leaves out: one side discards its changes, then both connect.
    c.cli(loser, &["volume", "connect", "--discard-my-data", "vol0"]);
    c.cli(keeper, &["volume", "connect", "vol0"]);
    let start = Instant::now();
    c.wait(Duration::from_secs(60), "resolved", || {
        let v = c.volume(keeper);
        (in_sync(&v) && v["split_brain"] == false).then_some(())
    });
    println!("split brain resolved in {:?}", start.elapsed());
    assert_eq!(c.volume(loser)["split_brain"], false);
    c.stop(1);
    c.stop(2);
}
