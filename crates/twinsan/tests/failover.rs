//! The cluster manager on this machine: both nodes of a managed `twinsan init` config (127.0.0.11 and
//! 127.0.0.12), the target at the virtual IP 127.0.0.10:3260, QEMU's iSCSI driver as the initiator.
//!
//! Run one at a time with the other two-daemon tests (nextest test group `cluster`): they share init's addresses.

mod common;

use std::time::{Duration, Instant};

use std::process::Command;

use common::cluster::{in_sync, names, online, stack_on, Cluster, LinkCut, IQN};
use common::{qemu, require_tool, scsi};

const VIP_URL: &str = "iscsi://127.0.0.10:3260/iqn.2025-08.local.twinsan:vol0/1";

fn resource<'a>(s: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    s["resources"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no resource {name} in {s}"))
}

fn other(n: usize) -> usize {
    3 - n
}

#[test]
fn managed_cluster_promotes_one_node_and_serves_at_the_vip() {
    require_tool("qemu-io");
    let mut c = Cluster::init("failover-up", false, "64M");
    let p = c.start_both_until_stack();
    // Both nodes agree, and the text is laid out as `pcs status` lays it out.
    for n in [1, 2] {
        let s = c.wait_cluster(n, Duration::from_secs(10), "the same view", |s| {
            stack_on(s) == Some(format!("node{p}")) && online(s).len() == 2
        });
        assert_eq!(
            names(&resource(&s, "vol0")["unpromoted"]),
            [format!("node{}", other(p))]
        );
        let text = c.cli(n, &["status"]);
        for line in [
            "Node List:".to_string(),
            "  * Online: [ node1 node2 ]".to_string(),
            "Full List of Resources:".to_string(),
            "  * Clone Set: vol0-clone [vol0] (promotable):".to_string(),
            format!("    * Promoted: [ node{p} ]"),
            format!("    * Unpromoted: [ node{} ]", other(p)),
            format!("  * vol0-vip\t(twinsan:vip):\t Started node{p}"),
            format!("  * vol0-target\t(twinsan:target):\t Started node{p}"),
            format!("  * vol0-lun1\t(twinsan:lun):\t Started node{p}"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "`twinsan status` on node{n} lacks the line {line:?}:\n{text}"
            );
        }
        assert!(!text.contains("OFFLINE"), "{text}");
        assert!(text.starts_with("Cluster name: c\n"), "{text}");
    }
    // The LUN answers at the virtual IP.
    let plan = qemu::plan(7, 64 << 20, 256 << 10, 16);
    qemu::write(VIP_URL, &plan, 256 << 10);
    qemu::verify(VIP_URL, &plan, 256 << 10);
    // targetcli-like tree.
    let tree = c.cli(1, &["target", "ls"]);
    for needle in [IQN, "tpg1", "luns", "lun1", "127.0.0.10:3260", "portals"] {
        assert!(tree.contains(needle), "target ls lacks {needle}:\n{tree}");
    }
    assert!(
        tree.lines().next().is_some_and(|l| l.starts_with("o- / ")),
        "{tree}"
    );
    // A managed volume's role is the cluster's business.
    let refused = c.cli_fails(other(p), &["volume", "primary", "vol0"]);
    assert!(
        refused.contains("managed by the cluster manager"),
        "{refused}"
    );
    for n in [1, 2] {
        assert!(c.stop(n), "node{n} did not stop cleanly:\n{}", c.logs());
    }
}

#[test]
fn kill_primary_under_io_fails_over_and_the_old_primary_rejoins() {
    require_tool("qemu-io");
    let mut c = Cluster::init("failover-kill", false, "128M");
    let p = c.start_both_until_stack();
    let q = other(p);
    // 600 writes of 64 KiB, each at its own slot with its own pattern, through the VIP; node p is killed -9 once
    // the writes are under way.
    let chunk = 64u64 << 10;
    let plan = qemu::plan(11, 128 << 20, chunk, 600);
    let cmds = qemu::write_cmds(&plan, chunk);
    let pid = c.nodes[p - 1].as_ref().map(|n| n.pid()).unwrap_or(0);
    let mut killed_at = Instant::now();
    let stream = qemu::stream_via(
        qemu::line_buffered(|program| Command::new(program)),
        VIP_URL,
        &cmds,
        |progress| {
            progress.wait_acked(100);
            killed_at = Instant::now();
            // SAFETY: kill(2) on the pid of the node daemon this test started.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        },
    );
    c.kill(p);
    stream.check_failover(killed_at, plan.len(), Duration::from_secs(5), || c.logs());
    // The survivor runs the stack, and every acknowledged write reads back through the VIP.
    let s = c.wait_cluster(
        q,
        Duration::from_secs(10),
        "the stack on the survivor",
        |s| stack_on(s) == Some(format!("node{q}")),
    );
    assert_eq!(online(&s), [format!("node{q}")], "{s:#}");
    let text = c.cli(q, &["status"]);
    assert!(
        text.contains(&format!("  * OFFLINE: [ node{p} ]")),
        "{text}"
    );
    qemu::verify(VIP_URL, &plan, chunk);
    // The killed node comes back as Secondary, resyncs, and the stack stays where it is (stickiness).
    c.start(p);
    c.wait_status(p, Duration::from_secs(60), "back in sync", in_sync);
    let s = c.wait_cluster(p, Duration::from_secs(10), "both online", |s| {
        online(s).len() == 2
    });
    assert_eq!(
        stack_on(&s),
        Some(format!("node{q}")),
        "the stack moved back: {s:#}"
    );
    assert_eq!(
        names(&resource(&s, "vol0")["unpromoted"]),
        [format!("node{p}")]
    );
    std::thread::sleep(Duration::from_secs(2));
    let s = c.cluster_status(q);
    assert_eq!(
        stack_on(&s),
        Some(format!("node{q}")),
        "the stack moved back later: {s:#}"
    );
    qemu::verify(VIP_URL, &plan, chunk);
    for n in [1, 2] {
        assert!(c.stop(n), "node{n} did not stop cleanly:\n{}", c.logs());
    }
    // Both copies are identical.
    assert_eq!(
        common::cluster::first_difference(&c.disk(1), &c.disk(2), 128 << 20),
        None,
        "the copies differ"
    );
}

#[test]
fn cluster_stop_and_start_reproduce_the_seed_failover_test() {
    require_tool("qemu-io");
    let mut c = Cluster::init("failover-stop", false, "64M");
    let p = c.start_both_until_stack();
    let q = other(p);
    let chunk = 256u64 << 10;
    // Distinct slots: the first 16 written before the stop, the next 16 after it.
    let slots = qemu::plan(3, 64 << 20, chunk, 32);
    let (before, after) = slots.split_at(16);
    qemu::write(VIP_URL, before, chunk);
    // 1. The leading node is the one on the vol0-vip line. 2. Stop it, from the other node.
    let out = c.cli(q, &["cluster", "stop", &format!("node{p}")]);
    assert!(out.contains("stopping the cluster"), "{out}");
    // 3. On the other: node p OFFLINE, the resources Started there.
    let s = c.wait_cluster(q, Duration::from_secs(30), "the stop done", |s| {
        stack_on(s) == Some(format!("node{q}")) && online(s) == [format!("node{q}")]
    });
    assert!(s["nodes"].as_array().is_some_and(|ns| ns
        .iter()
        .any(|n| n["name"] == format!("node{p}") && n["stopped"] == true)));
    let text = c.cli(q, &["status"]);
    assert!(
        text.contains(&format!(
            "  * Online: [ node{q} ]\n  * OFFLINE: [ node{p} ]"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("  * vol0-vip\t(twinsan:vip):\t Started node{q}")),
        "{text}"
    );
    // 4. The storage is reachable at the VIP, with what was written before.
    qemu::verify(VIP_URL, before, chunk);
    qemu::write(VIP_URL, after, chunk);
    // The stopped node's daemon still runs and keeps its copy in sync as Secondary.
    c.wait_status(p, Duration::from_secs(30), "in sync while stopped", in_sync);
    // 5. Start it again: both Online; the resources stay (stickiness).
    c.cli(q, &["cluster", "start", &format!("node{p}")]);
    let s = c.wait_cluster(q, Duration::from_secs(30), "both online", |s| {
        online(s).len() == 2
    });
    let text = c.cli(q, &["status"]);
    assert!(text.contains("  * Online: [ node1 node2 ]"), "{text}");
    assert_eq!(stack_on(&s), Some(format!("node{q}")), "{s:#}");
    // Standby, move and clear.
    c.cli(p, &["node", "standby", &format!("node{q}")]);
    c.wait_cluster(
        p,
        Duration::from_secs(30),
        "the stack off the standby node",
        |s| stack_on(s) == Some(format!("node{p}")),
    );
    c.cli(p, &["node", "unstandby", &format!("node{q}")]);
    c.cli(p, &["resource", "move", "vol0-vip", &format!("node{q}")]);
    let s = c.wait_cluster(q, Duration::from_secs(30), "the moved stack", |s| {
        stack_on(s) == Some(format!("node{q}"))
    });
    assert!(
        names(&s["constraints"])
            .iter()
            .any(|x| x.contains(&format!("vol0 prefers node{q}"))),
        "{s:#}"
    );
    c.cli(q, &["resource", "clear", "vol0"]);
    let s = c.wait_cluster(p, Duration::from_secs(10), "the constraint gone", |s| {
        names(&s["constraints"]).is_empty()
    });
    assert_eq!(
        stack_on(&s),
        Some(format!("node{q}")),
        "clear moved the stack: {s:#}"
    );
    qemu::verify(VIP_URL, before, chunk);
    qemu::verify(VIP_URL, after, chunk);
    for n in [1, 2] {
        assert!(c.stop(n), "node{n} did not stop cleanly:\n{}", c.logs());
    }
}

#[test]
fn resource_only_fencing_outdates_the_peer_through_the_cluster() {
    require_tool("qemu-io");
    let mut c = Cluster::init("failover-fence", false, "64M");
    // `twinsan init` writes the guide's choice for a managed pair.
    let text = std::fs::read_to_string(&c.config).expect("config");
    assert!(text.contains("fencing = \"resource-only\""), "{text}");
    let p = c.start_both_until_stack();
    let q = other(p);
    let chunk = 256u64 << 10;
    let plan = qemu::plan(5, 64 << 20, chunk, 8);
    // The replication link breaks; the cluster link (UDP) still works. Writes through the VIP go on once the
    // primary has marked the peer Outdated through the cluster.
    let cut = LinkCut::new();
    qemu::write(VIP_URL, &plan, chunk);
    c.wait_status(q, Duration::from_secs(20), "fenced: Outdated", |s| {
        s["disk"] == "Outdated"
    });
    assert!(
        c.log(p).contains("the peer marked its copy Outdated"),
        "{}",
        c.logs()
    );
    assert!(c.log(q).contains("fenced by the peer"), "{}", c.logs());
    // Healed while both run: the Outdated copy resyncs from the primary and is UpToDate again.
    drop(cut);
    c.wait_status(
        q,
        Duration::from_secs(60),
        "resynced after the heal",
        in_sync,
    );
    qemu::verify(VIP_URL, &plan, chunk);
    // Cut again: fenced again once the primary writes.
    let cut = LinkCut::new();
    let plan = qemu::plan(6, 64 << 20, chunk, 8);
    qemu::write(VIP_URL, &plan, chunk);
    c.wait_status(q, Duration::from_secs(20), "fenced again", |s| {
        s["disk"] == "Outdated"
    });
    // The primary dies: the Outdated copy is never promoted.
    c.kill(p);
    c.wait_cluster(q, Duration::from_secs(10), "node p OFFLINE", |s| {
        online(s) == [format!("node{q}")]
    });
    std::thread::sleep(Duration::from_secs(3));
    let s = c.cluster_status(q);
    assert!(
        names(&resource(&s, "vol0")["promoted"]).is_empty(),
        "an Outdated copy was promoted: {s:#}\n{}",
        c.logs()
    );
    assert!(
        names(&s["notes"]).iter().any(|n| n.contains("Outdated")),
        "the notes do not say why nothing runs: {s:#}"
    );
    // The link heals and the old primary returns: the Outdated copy resyncs, the stack runs at p again.
    drop(cut);
    c.start(p);
    c.wait_status(q, Duration::from_secs(60), "resynced", in_sync);
    c.wait_cluster(q, Duration::from_secs(30), "the stack back on p", |s| {
        stack_on(s) == Some(format!("node{p}"))
    });
    qemu::verify(VIP_URL, &plan, chunk);
    for n in [1, 2] {
        assert!(c.stop(n), "node{n} did not stop cleanly:\n{}", c.logs());
    }
}

/// VPD pages 80h (unit serial number) and 83h (device identification) read at `url`.
fn lun_identity(url: &str, who: scsi::Initiator) -> (Vec<u8>, Vec<u8>) {
    let a = scsi::run_cmds(
        url,
        who,
        &[
            scsi::test_unit_ready(),
            scsi::inquiry_vpd(0x80),
            scsi::inquiry_vpd(0x83),
        ],
    );
    for (page, answer) in [(0x80, &a[1]), (0x83, &a[2])] {
        assert_eq!(answer.status, scsi::GOOD, "VPD {page:#04x}: {answer:?}");
        assert_eq!(
            answer.data.get(1),
            Some(&page),
            "VPD {page:#04x}: {answer:?}"
        );
    }
    (a[1].data.clone(), a[2].data.clone())
}

/// READ FULL STATUS at `url`, once the target answers there (it may be moving).
fn full_status(c: &Cluster, url: &str, who: scsi::Initiator) -> (u32, Vec<scsi::Registration>) {
    let answer = c.wait_for(
        Duration::from_secs(30),
        "the target answering at the VIP",
        || {
            scsi::try_run(
                url,
                who,
                &[
                    scsi::test_unit_ready(),
                    scsi::pr_in(scsi::PR_READ_FULL_STATUS),
                ],
            )
            .ok()
            .map(|mut a| a.remove(1))
        },
    );
    assert_eq!(answer.status, scsi::GOOD, "READ FULL STATUS: {answer:?}");
    scsi::parse_full_status(&answer.data)
}

/// One write of a block from `who`; its SCSI status.
fn write_status(url: &str, who: scsi::Initiator, lba: u64) -> u8 {
    let a = scsi::run_cmds(
        url,
        who,
        &[scsi::test_unit_ready(), scsi::write16(lba, 0x5a)],
    );
    a[1].status
}

#[test]
fn reservations_and_lun_identity_survive_failover() {
    scsi::tool();
    const HOLDER: scsi::Initiator = scsi::Initiator {
        name: "iqn.2025-08.local.test:holder",
        isid: 0x1234,
    };
    const MEMBER: scsi::Initiator = scsi::Initiator {
        name: "iqn.2025-08.local.test:member",
        isid: 0x42,
    };
    const OUTSIDER: scsi::Initiator = scsi::Initiator {
        name: "iqn.2025-08.local.test:outsider",
        isid: 0x77,
    };
    const HOLDER_KEY: u64 = 0x1111_2222_3333_4444;
    const MEMBER_KEY: u64 = 0x5555_6666_7777_8888;

    let mut c = Cluster::init("failover-pr", false, "64M");
    let p = c.start_both_until_stack();
    let identity_before = lun_identity(VIP_URL, HOLDER);

    // Two registrants, one of them holding Write Exclusive – Registrants Only.
    for (who, cmd) in [
        (HOLDER, scsi::pr_out(scsi::PR_REGISTER, 0, 0, HOLDER_KEY)),
        (MEMBER, scsi::pr_out(scsi::PR_REGISTER, 0, 0, MEMBER_KEY)),
        (
            HOLDER,
            scsi::pr_out(scsi::PR_RESERVE, scsi::TYPE_WE_RO, HOLDER_KEY, 0),
        ),
    ] {
        let a = scsi::run_cmds(VIP_URL, who, &[scsi::test_unit_ready(), cmd]);
        assert_eq!(a[1].status, scsi::GOOD, "{who:?}: {:?}\n{}", a[1], c.logs());
    }
    let before = full_status(&c, VIP_URL, OUTSIDER);
    let keys: Vec<(u64, bool)> = before.1.iter().map(|r| (r.key, r.holder)).collect();
    assert!(
        keys.contains(&(HOLDER_KEY, true))
            && keys.contains(&(MEMBER_KEY, false))
            && keys.len() == 2,
        "READ FULL STATUS before the failover: {before:?}"
    );
    // SCOPE and TYPE mean something only in the holder's descriptor (SPC-4 6.16.5).
    assert!(
        before
            .1
            .iter()
            .filter(|r| r.holder)
            .all(|r| r.scope_type == scsi::TYPE_WE_RO),
        "{before:?}"
    );
    assert_eq!(
        write_status(VIP_URL, OUTSIDER, 8),
        scsi::RESERVATION_CONFLICT
    );
    assert_eq!(write_status(VIP_URL, MEMBER, 8), scsi::GOOD);

    // The primary dies; the other node takes the stack.
    c.kill(p);
    let q = other(p);
    c.wait_cluster(
        q,
        Duration::from_secs(30),
        "the stack on the survivor",
        |s| stack_on(s) == Some(format!("node{q}")),
    );

    eprintln!("failed over from node{p} to node{q}");
    // The new primary enforces exactly the same registrations and reservation.
    let after = full_status(&c, VIP_URL, OUTSIDER);
    assert_eq!(
        after, before,
        "READ FULL STATUS at node{q} after the failover"
    );
    assert_eq!(
        write_status(VIP_URL, OUTSIDER, 16),
        scsi::RESERVATION_CONFLICT,
        "an unregistered initiator's write at node{q}"
    );
    assert_eq!(
        write_status(VIP_URL, HOLDER, 16),
        scsi::GOOD,
        "the holder's write at node{q}"
    );
    // The LUN is the same device to every initiator: same serial, same designators.
    let identity_after = lun_identity(VIP_URL, HOLDER);
    assert_eq!(
        identity_after, identity_before,
        "VPD 80h/83h changed with the failover"
    );
    assert!(c.stop(q), "node{q} did not stop cleanly:\n{}", c.logs());
    drop(c);

    // Another cluster made the same way (same names, same IQN): another volume, another identity.
    let mut c2 = Cluster::init("failover-pr-2", false, "64M");
    c2.start_both_until_stack();
    let identity_other = lun_identity(VIP_URL, HOLDER);
    assert_ne!(
        identity_other.0, identity_before.0,
        "two clusters share a serial"
    );
    assert_ne!(
        identity_other.1, identity_before.1,
        "two clusters share a device identifier"
    );
    for n in [1, 2] {
        assert!(c2.stop(n), "node{n} did not stop cleanly:\n{}", c2.logs());
    }
}

/// Bytes from `offset` that are a hole in `path` (0 when `offset` is allocated), up to `len`.
fn hole_length(path: &std::path::Path, offset: u64, len: u64) -> u64 {
    let f = std::fs::File::open(path).expect("open disk file");
    match twinsan_target::file_mapped_extent(&f, offset, len).expect("SEEK_DATA") {
        (true, _) => 0,
        (false, n) => n,
    }
}

#[test]
fn unmap_at_the_vip_deallocates_the_range_on_both_nodes() {
    require_tool("qemu-io");
    const MIB: u64 = 1 << 20;
    let mut c = Cluster::init("failover-unmap", false, "64M");
    c.start_both_until_stack();
    // QEMU passes discards on as UNMAP only with discard=unmap (qemu-io -d unmap), and only to a LUN that
    // reports logical block provisioning: the replicated LUN does.
    let mut cmd = qemu::local();
    cmd.args(["-d", "unmap"]);
    qemu::qemu_io_via(
        cmd,
        VIP_URL,
        &[
            "write -P 0xab 0 4M".to_string(),
            "discard 1M 2M".to_string(),
            "read -P 0 1M 2M".to_string(),
            "read -P 0xab 0 1M".to_string(),
            "read -P 0xab 3M 1M".to_string(),
        ],
    );
    // Protocol C: the discard completed on both copies before GOOD.
    for n in [1, 2] {
        let disk = c.disk(n);
        let bytes = std::fs::read(&disk).expect("read disk file");
        assert!(
            bytes[..MIB as usize].iter().all(|&b| b == 0xab),
            "node{n}: data before the range"
        );
        assert!(
            bytes[MIB as usize..3 * MIB as usize]
                .iter()
                .all(|&b| b == 0),
            "node{n}: the discarded range does not read zeros"
        );
        assert!(
            bytes[3 * MIB as usize..4 * MIB as usize]
                .iter()
                .all(|&b| b == 0xab),
            "node{n}: data after the range"
        );
        assert!(
            hole_length(&disk, MIB, 2 * MIB) >= 2 * MIB,
            "node{n}: the discarded range is still allocated (hole of {} bytes at 1 MiB)",
            hole_length(&disk, MIB, 2 * MIB)
        );
        assert_eq!(
            hole_length(&disk, 0, MIB),
            0,
            "node{n}: the written data is a hole"
        );
    }
    for n in [1, 2] {
        assert!(c.stop(n), "node{n} did not stop cleanly:\n{}", c.logs());
    }
}
