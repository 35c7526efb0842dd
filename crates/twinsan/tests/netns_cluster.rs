//! The managed cluster across network namespaces (SPEC 4): node1 and node2 each in a namespace of their own,
//! joined by two links (198.18.0.0/24 for the cluster, replication and clients; 198.18.1.0/24 a second cluster
//! link), a client namespace running QEMU's iSCSI driver, and a real virtual IP, 198.18.0.10, that the cluster
//! manager adds with netlink and announces with gratuitous ARP. Optionally a witness in a namespace of its own.
//!
//! Needs root (namespaces); CI runs as root. One test at a time (nextest group `netns`).

mod common;

use std::time::{Duration, Instant};

use common::cluster::in_sync;
use common::netns::CLIENT;
use common::nscluster::{host, other, up, NsCluster, CHUNK, URL, VIP};
use common::qemu;

#[test]
fn vip_moves_to_the_survivor_and_the_client_follows_at_once() {
    let mut c = NsCluster::new("vip", false);
    let p = up(&mut c);
    let q = other(p);
    assert!(
        c.has_vip(p),
        "the VIP is not on node{p}'s eth0: {:?}",
        c.lab.addrs(host(p), "eth0")
    );
    assert!(!c.has_vip(q), "the VIP is on node{q} too");
    let plan = qemu::plan(21, 64 << 20, CHUNK, 400);
    qemu::write_via(c.client(), URL, &plan[..16], CHUNK);
    let mac_p = c.lab.mac(host(p), "eth0");
    let mac_q = c.lab.mac(host(q), "eth0");
    assert_eq!(
        c.lab.neigh(CLIENT, VIP),
        Some(mac_p.clone()),
        "the client reached the VIP at node{p}"
    );
    // The primary's machine dies: the daemon is killed and its links go silent at once.
    let cmds = qemu::write_cmds(&plan[16..], CHUNK);
    let mut killed_at = Instant::now();
    let lab = &c.lab;
    let node = &mut c.nodes[p - 1];
    let stream = qemu::stream_via(
        qemu::line_buffered(|program| lab.command(CLIENT, program)),
        URL,
        &cmds,
        |progress| {
            progress.wait_acked(64);
            killed_at = Instant::now();
            if let Some(proc) = node.as_mut() {
                proc.kill();
            }
            lab.isolate(host(p));
        },
    );
    stream.check_failover(killed_at, plan.len() - 16, Duration::from_secs(5), || {
        c.logs()
    });
    // The client's neighbour entry for the VIP points at the survivor: the gratuitous ARP updated it (an entry
    // left to expire would still name the dead node's MAC for tens of seconds).
    assert_eq!(
        c.lab.neigh(CLIENT, VIP),
        Some(mac_q),
        "the client's ARP entry for the VIP"
    );
    assert!(c.has_vip(q), "the VIP is not on node{q}");
    qemu::verify_via(c.client(), URL, &plan, CHUNK);
    // The old primary's machine comes back: its daemon removes the VIP left on its interface, it resyncs as
    // Secondary, and the stack stays on the survivor.
    c.lab.heal_node(host(p));
    c.start(p);
    c.wait(
        Duration::from_secs(20),
        "the stale VIP removed from the returning node",
        || (!c.has_vip(p)).then_some(()),
    );
    c.wait(Duration::from_secs(60), "back in sync", || {
        in_sync(&c.volume(q)).then_some(())
    });
    assert_eq!(c.stack_on(p), Some(q), "{:#}", c.cluster(p));
    qemu::verify_via(c.client(), URL, &plan, CHUNK);
    c.stop(p);
    c.stop(q);
    assert!(!c.has_vip(q), "a stopped node left its VIP behind");
}

#[test]
fn split_brain_without_witness_is_reported_on_heal() {
    let mut c = NsCluster::new("sb", false);
    let p = up(&mut c);
    let q = other(p);
    qemu::write_via(c.client(), URL, &qemu::plan(5, 64 << 20, CHUNK, 8), CHUNK);
    // Every link between the nodes is cut; the client still reaches both. The seed's two-node mode: each side
    // decides alone, so the other node promotes too.
    c.lab.cut_between_nodes();
    c.wait(Duration::from_secs(20), "both sides Primary", || {
        (c.volume(p)["role"] == "Primary" && c.volume(q)["role"] == "Primary").then_some(())
    });
    assert_eq!(c.stack_on(q), Some(q), "{:#}", c.cluster(q));
    c.lab.heal_between_nodes();
    // On heal the split brain is detected and reported on both sides, and the cluster keeps one Primary.
    for n in [p, q] {
        c.wait(Duration::from_secs(20), "the split brain reported", || {
            let v = c.volume(n);
            (v["split_brain"] == true && v["peers"][0]["connection"] == "StandAlone").then_some(())
        });
        assert!(
            c.log(n).contains("split brain"),
            "node{n} did not log it:\n{}",
            c.log(n)
        );
    }
    let keeper = c.wait(Duration::from_secs(20), "one Primary again", || {
        let roles = [c.volume(1)["role"].clone(), c.volume(2)["role"].clone()];
        match roles {
            [a, b] if a == "Primary" && b == "Secondary" => Some(1),
            [a, b] if a == "Secondary" && b == "Primary" => Some(2),
            _ => None,
        }
    });
    let text = c.cli(keeper, &["status"]);
    assert!(text.contains("split-brain:yes"), "{text}");
    // The documented recovery: the other node discards its changes.
    let loser = other(keeper);
    c.cli(loser, &["volume", "connect", "--discard-my-data", "vol0"]);
    c.cli(keeper, &["volume", "connect", "vol0"]);
    c.wait(Duration::from_secs(60), "resolved and in sync", || {
        let v = c.volume(keeper);
        (in_sync(&v) && v["split_brain"] == false).then_some(())
    });
    c.stop(1);
    c.stop(2);
}

#[test]
fn witness_keeps_a_single_primary_through_the_cut() {
    let mut c = NsCluster::new("wit", true);
    c.start_witness();
    let p = up(&mut c);
    let q = other(p);
    let holder = c.wait(Duration::from_secs(10), "the witness vote held", || {
        c.cluster(p)["witness"]["vote"].as_str().map(str::to_string)
    });
    let plan = qemu::plan(9, 64 << 20, CHUNK, 8);
    qemu::write_via(c.client(), URL, &plan, CHUNK);
    c.lab.cut_between_nodes();
    // Checked continuously for 8 s: never two Primaries.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut samples = 0;
    let mut last = (String::new(), String::new());
    while Instant::now() < deadline {
        let a = c.volume(1)["role"].as_str().unwrap_or("").to_string();
        let b = c.volume(2)["role"].as_str().unwrap_or("").to_string();
        assert!(
            !(a == "Primary" && b == "Primary"),
            "two Primaries during the cut (sample {samples}; the vote was at {holder})\n{}",
            c.logs()
        );
        samples += 1;
        last = (a, b);
    }
    println!("witness: {samples} samples during the cut, last roles {last:?}, vote at {holder}");
    // The side with the vote runs the stack; the other runs nothing.
    let winner: usize = c.wait(
        Duration::from_secs(10),
        "the stack on the side with the vote",
        || [1, 2].into_iter().find(|&n| c.stack_on(n) == Some(n)),
    );
    let v = c.cluster(winner);
    assert_eq!(v["witness"]["vote"], format!("node{winner}"), "{v:#}");
    assert_eq!(c.volume(other(winner))["role"], "Secondary");
    qemu::verify_via(c.client(), URL, &plan, CHUNK);
    // Healed: no split brain, back in sync — and still never two Primaries while the nodes meet again.
    c.lab.heal_between_nodes();
    c.wait(Duration::from_secs(60), "in sync after the cut", || {
        let v = c.volume(winner);
        let loser = c.volume(other(winner));
        assert!(
            !(v["role"] == "Primary" && loser["role"] == "Primary"),
            "two Primaries after the heal\n{}",
            c.logs()
        );
        (in_sync(&v) && v["split_brain"] == false).then_some(())
    });
    assert_eq!(c.volume(q)["split_brain"], false);
    c.stop(1);
    c.stop(2);
    if let Some(mut w) = c.witness.take() {
        assert!(
            w.terminate(Duration::from_secs(10)).success(),
            "{}",
            w.log()
        );
    }
}

#[test]
fn monitor_failures_restart_in_place_then_move_at_the_threshold() {
    let mut c = NsCluster::with_options(
        "mon",
        false,
        "migration_threshold = 2\nmonitor_interval_ms = 500",
    );
    let p = up(&mut c);
    let q = other(p);
    let plan = qemu::plan(13, 64 << 20, CHUNK, 8);
    qemu::write_via(c.client(), URL, &plan, CHUNK);
    let failed = |n: usize| -> Vec<String> {
        c.cluster(n)["failed_actions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    // Someone removes the VIP by hand: the monitor notices, the VIP (and what depends on it) restarts in place.
    c.lab.ip(
        host(p),
        &["addr", "del", &format!("{VIP}/24"), "dev", "eth0"],
    );
    c.wait(
        Duration::from_secs(20),
        "the failure recorded and the VIP back on the same node",
        || {
            let f = failed(p);
            (f.iter()
                .any(|a| a.starts_with("vol0-vip_monitor_500 on node"))
                && c.has_vip(p)
                && c.stack_on(p) == Some(p))
            .then_some(())
        },
    );
    let text = c.cli(p, &["status"]);
    assert!(text.contains("Failed Resource Actions:"), "{text}");
    qemu::verify_via(c.client(), URL, &plan, CHUNK);
    // A second failure reaches migration-threshold 2: the stack moves to the other node.
    c.lab.ip(
        host(p),
        &["addr", "del", &format!("{VIP}/24"), "dev", "eth0"],
    );
    c.wait(
        Duration::from_secs(30),
        "the stack moved at the threshold",
        || (c.stack_on(p) == Some(q) && c.stack_on(q) == Some(q)).then_some(()),
    );
    assert!(c.has_vip(q) && !c.has_vip(p));
    // Either node lists the failures (as `pcs status` does, cluster-wide).
    c.wait(
        Duration::from_secs(5),
        "the failures listed on the other node",
        || {
            failed(q)
                .iter()
                .any(|a| a.contains(&format!("on node{p}")))
                .then_some(())
        },
    );
    qemu::verify_via(c.client(), URL, &plan, CHUNK);
    // `resource cleanup` forgets the failures on both nodes; the stack stays where it is (stickiness).
    let out = c.cli(q, &["resource", "cleanup", "vol0-vip"]);
    assert!(out.contains("cleaned up vol0-vip"), "{out}");
    c.wait(Duration::from_secs(10), "failures forgotten", || {
        (failed(p).is_empty() && failed(q).is_empty()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.stack_on(q), Some(q));
    c.stop(1);
    c.stop(2);
}

#[test]
fn a_second_cluster_link_keeps_the_nodes_together() {
    let mut c = NsCluster::new("links", false);
    let p = up(&mut c);
    let q = other(p);
    let plan = qemu::plan(17, 64 << 20, CHUNK, 4);
    qemu::write_via(c.client(), URL, &plan, CHUNK);
    // Link 0 carries the replication, the clients and cluster link 0; link 1 is cluster link 1 only. Cut the
    // primary's link 0: the membership holds through link 1, so nothing fails over (the primary goes on alone,
    // its replication link down).
    c.lab.cut_link(host(p), 0);
    c.wait(
        Duration::from_secs(20),
        "cluster link 0 down, link 1 up",
        || {
            let logged = |n: usize| c.log(n).contains("cluster link 0 down");
            (logged(p) && logged(q)).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    for n in [p, q] {
        let s = c.cluster(n);
        let online: Vec<&str> = s["nodes"]
            .as_array()
            .map(|ns| {
                ns.iter()
                    .filter(|x| x["online"] == true)
                    .filter_map(|x| x["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            online,
            ["node1", "node2"],
            "node{n} lost the peer with one link left: {s:#}"
        );
        assert_eq!(
            c.stack_on(n),
            Some(p),
            "the stack moved although the peer was reachable: {s:#}"
        );
    }
    assert_eq!(c.volume(q)["role"], "Secondary");
    c.lab.heal_all();
    c.wait(Duration::from_secs(60), "in sync after the heal", || {
        in_sync(&c.volume(p)).then_some(())
    });
    qemu::verify_via(c.client(), URL, &plan, CHUNK);
    c.stop(1);
    c.stop(2);
}

/// Runs `nft SCRIPT` in `host`'s namespace (its own rules: the lab's are in the switch's namespace).
fn nft_in(c: &NsCluster, host: &str, script: &str) {
    let nft = common::require_tool_in(&["/usr/sbin", "/sbin"], "nft");
    let out = common::run(
        c.lab.command(host, nft).arg(script),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "nft {script}:\n{}",
        common::text(&out)
    );
}

/// The replication link's connect is bounded in time: with every SYN node1 sends to node2's replication port
/// dropped (no RST, no ICMP: connect(2) alone would wait for the kernel's SYN retries, about two minutes), node1's
/// dialler reports a timeout and tries again, connects once the drop ends, and a stop while it dials completes.
#[test]
fn a_stop_and_a_reconnect_do_not_hang_on_dropped_syns() {
    const DROP: &str = "add table inet tsdrop; \
        add chain inet tsdrop out { type filter hook output priority 0; }; \
        add rule inet tsdrop out ip daddr 198.18.0.12 tcp dport 7789 tcp flags & (syn | ack) == syn drop";
    let timed_out = |s: &serde_json::Value| {
        s["peers"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("198.18.0.12:7789") && e.contains("timed out"))
    };
    let mut c = NsCluster::new("syndrop", false);
    // node1 has the lower id: it dials, node2 listens.
    c.start(2);
    nft_in(&c, host(1), DROP);
    c.start(1);
    c.wait(
        Duration::from_secs(60),
        "node1's connect to the dropped port timed out",
        || timed_out(&c.volume(1)).then_some(()),
    );
    // The drop ends: the next attempt connects.
    nft_in(&c, host(1), "delete table inet tsdrop");
    c.wait(
        Duration::from_secs(60),
        "the replication link connected",
        || (c.volume(1)["peers"][0]["connection"] == "Connected").then_some(()),
    );
    // Dropped again, and node2 gone: node1 dials into the drop once more, and is stopped while it does.
    nft_in(&c, host(1), DROP);
    c.stop(2);
    c.wait(
        Duration::from_secs(60),
        "node1's connect timed out again",
        || timed_out(&c.volume(1)).then_some(()),
    );
    // Generous: the stop must complete at all (before the bound, it took the kernel's SYN retries).
    c.stop(1);
}
