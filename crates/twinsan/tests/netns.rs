//! The namespace lab of the multi-host tests (common/netns.rs), exercised for real: hosts reach each other on
//! their links and only there, cuts are symmetric and heal, an address can be added and moved, a program run in
//! a namespace has the pid we signal, leftovers of dead runs are swept and nothing else, and iSCSI works from
//! the client namespace to `twinsan serve` in node1's. Root only (CI runs as root).

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::{
    ip_netns_list, owner_pid, require_root, sweep, Lab, LabOptions, Proc, CLIENT, NODE1, NODE2,
    SWITCH, WITNESS,
};
use common::{qemu, require_tool, require_tool_in, run, text, twinsan_bin, TempDir};

const SECOND: Duration = Duration::from_secs(1);

fn lab(tag: &str, second_link: bool, witness: bool) -> Lab {
    let lab = Lab::new(LabOptions {
        second_link,
        witness,
        ..LabOptions::new(tag)
    });
    eprintln!(
        "lab {:?} set up in {:?}",
        lab.namespaces(),
        lab.setup_time()
    );
    lab
}

#[test]
fn lab_connects_and_cleans_up() {
    let lab = lab("conn", true, true);
    let names = lab.namespaces().to_vec();
    assert_eq!(
        names.len(),
        5,
        "switch, node1, node2, client, witness: {names:?}"
    );
    let listed = ip_netns_list();
    for n in &names {
        assert!(listed.contains(n), "{n} not in ip netns list: {listed:?}");
        assert_eq!(owner_pid(n), Some(std::process::id()), "{n}");
    }

    // Addresses as documented, on predictable interface names; no IPv6.
    assert_eq!(lab.addrs(NODE1, "eth0"), ["198.18.0.11/24"]);
    assert_eq!(lab.addrs(NODE1, "eth1"), ["198.18.1.11/24"]);
    assert_eq!(lab.addrs(NODE2, "eth0"), ["198.18.0.12/24"]);
    assert_eq!(lab.addrs(NODE2, "eth1"), ["198.18.1.12/24"]);
    assert_eq!(lab.addrs(CLIENT, "eth0"), ["198.18.0.100/24"]);
    assert_eq!(lab.addrs(WITNESS, "eth0"), ["198.18.0.13/24"]);
    assert_eq!(lab.addrs(NODE1, "lo"), ["127.0.0.1/8"]);

    // Every veth in the switch has its peer in a lab namespace: the root namespace holds no end.
    let veths = lab.ip(SWITCH, &["-o", "link", "show", "type", "veth"]);
    let peers: Vec<&str> = veths
        .lines()
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let i = t.iter().position(|w| *w == "link-netns")?;
            t.get(i + 1).copied()
        })
        .collect();
    assert_eq!(peers.len(), 6, "six veth ports in the switch:\n{veths}");
    assert!(
        peers.iter().all(|p| names.iter().any(|n| n == p)),
        "a veth peer outside the lab:\n{veths}"
    );

    let probes = [
        (CLIENT, "198.18.0.11"),
        (CLIENT, "198.18.0.12"),
        (CLIENT, "198.18.0.13"),
        (NODE1, "198.18.1.12"),
        (NODE2, "198.18.1.11"),
        (WITNESS, "198.18.0.11"),
        (NODE1, "127.0.0.1"),    // lo is up
        (CLIENT, "198.18.1.11"), // the client is not on link 1: no route
        (NODE1, "198.18.1.100"), // nobody there
    ];
    let got = lab.pings(&probes);
    let want = [true, true, true, true, true, true, true, false, false];
    assert_eq!(
        got.as_slice(),
        want.as_slice(),
        "reachability of {probes:?}"
    );

    // The client resolved node1's address to node1's eth0.
    assert_eq!(
        lab.neigh(CLIENT, "198.18.0.11"),
        Some(lab.mac(NODE1, "eth0")),
        "client's neighbour entry for node1"
    );
    assert_eq!(lab.neigh(CLIENT, "198.18.0.99"), None);

    drop(lab);
    let listed = ip_netns_list();
    for n in &names {
        assert!(
            !listed.contains(n),
            "{n} still listed after drop: {listed:?}"
        );
        assert!(
            !std::path::Path::new("/run/netns").join(n).exists(),
            "/run/netns/{n} still exists"
        );
    }
}

#[test]
fn cuts_are_symmetric_and_heal() {
    let lab = lab("cuts", true, false);
    let between = [
        (NODE1, "198.18.0.12"),
        (NODE1, "198.18.1.12"),
        (NODE2, "198.18.0.11"),
        (NODE2, "198.18.1.11"),
    ];
    let with_client = [
        (NODE1, "198.18.0.100"),
        (NODE2, "198.18.0.100"),
        (CLIENT, "198.18.0.11"),
        (CLIENT, "198.18.0.12"),
    ];
    assert_eq!(lab.pings(&between), [true; 4], "before any cut");

    // Split brain: cluster and replication links cut, the client still reaches both.
    lab.cut_between_nodes();
    let started = Instant::now();
    assert_eq!(
        lab.pings(&between),
        [false; 4],
        "node1 <-> node2 after cut_between_nodes:\n{}",
        lab.faults()
    );
    assert!(started.elapsed() < 3 * SECOND, "the pings run in parallel");
    assert_eq!(
        lab.pings(&with_client),
        [true; 4],
        "the client after cut_between_nodes:\n{}",
        lab.faults()
    );
    // TCP is cut too, both ways: nothing listens on the node's port 9, so a reachable node would refuse at once
    // (a reset): a time-out means the traffic was dropped.
    let t = Instant::now();
    assert!(!lab.tcp_connect(NODE1, "198.18.1.12:9".parse().unwrap(), SECOND));
    assert!(
        t.elapsed() >= SECOND - Duration::from_millis(50),
        "TCP was refused, not dropped"
    );

    lab.heal_between_nodes();
    for (from, to) in between {
        assert!(
            lab.wait_ping(from, to, 5 * SECOND),
            "{from} -> {to} after heal:\n{}",
            lab.faults()
        );
    }
    // With the path back, that TCP connection is refused at once.
    let t = Instant::now();
    assert!(!lab.tcp_connect(NODE1, "198.18.1.12:9".parse().unwrap(), 3 * SECOND));
    assert!(t.elapsed() < 2 * SECOND, "TCP still dropped after heal");

    // One link of one node: that link only, both directions.
    lab.cut_link(NODE2, 1);
    assert_eq!(
        lab.pings(&[
            (NODE1, "198.18.1.12"),
            (NODE2, "198.18.1.11"),
            (NODE1, "198.18.0.12"),
            (NODE2, "198.18.0.11"),
        ]),
        [false, false, true, true],
        "after cut_link(node2, 1):\n{}",
        lab.faults()
    );
    lab.heal_link(NODE2, 1);
    assert!(lab.wait_ping(NODE1, "198.18.1.12", 5 * SECOND));

    // Isolation: nobody reaches node1, node1 reaches nobody; the others still meet.
    lab.isolate(NODE1);
    assert_eq!(
        lab.pings(&[
            (CLIENT, "198.18.0.11"),
            (NODE2, "198.18.0.11"),
            (NODE2, "198.18.1.11"),
            (NODE1, "198.18.0.100"),
            (CLIENT, "198.18.0.12"),
        ]),
        [false, false, false, false, true],
        "after isolate(node1):\n{}",
        lab.faults()
    );
    // Cuts of different kinds add up, and each heal undoes only its own.
    lab.cut_between_nodes();
    lab.heal_node(NODE1);
    assert!(lab.wait_ping(CLIENT, "198.18.0.11", 5 * SECOND));
    assert_eq!(
        lab.pings(&between),
        [false; 4],
        "cut_between_nodes still in force"
    );
    lab.heal_all();
    assert!(lab.wait_ping(NODE1, "198.18.1.12", 5 * SECOND));
    assert!(lab.wait_ping(NODE2, "198.18.0.11", 5 * SECOND));
}

#[test]
fn an_added_address_is_reachable_removable_and_movable() {
    let lab = lab("addr", false, false);
    let vip = "198.18.0.10";
    lab.ip(NODE1, &["addr", "add", "198.18.0.10/24", "dev", "eth0"]);
    assert!(lab
        .addrs(NODE1, "eth0")
        .contains(&"198.18.0.10/24".to_owned()));
    assert!(
        lab.wait_ping(CLIENT, vip, 5 * SECOND),
        "client -> VIP on node1"
    );
    assert_eq!(lab.neigh(CLIENT, vip), Some(lab.mac(NODE1, "eth0")));

    lab.ip(NODE1, &["addr", "del", "198.18.0.10/24", "dev", "eth0"]);
    assert_eq!(lab.addrs(NODE1, "eth0"), ["198.18.0.11/24"]);
    assert!(!lab.ping(CLIENT, vip), "the VIP answers after its removal");

    // Moved to node2: once the client forgets the old MAC (here by a flush; an announcement in the real
    // thing), it reaches node2.
    lab.ip(NODE2, &["addr", "add", "198.18.0.10/24", "dev", "eth0"]);
    lab.ip(CLIENT, &["neigh", "flush", "to", vip]);
    assert!(
        lab.wait_ping(CLIENT, vip, 5 * SECOND),
        "client -> VIP on node2"
    );
    assert_eq!(lab.neigh(CLIENT, vip), Some(lab.mac(NODE2, "eth0")));
    assert_ne!(lab.mac(NODE1, "eth0"), lab.mac(NODE2, "eth0"));
}

#[test]
fn command_pid_is_the_program() {
    let lab = lab("pid", false, false);
    let sleep = require_tool("sleep");
    let mut p = Proc::spawn("sleep", lab.command(NODE2, &sleep).arg("30"));
    let pid = p.pid();
    // Until ip has exec'd, the pid shows `ip`; then it is sleep's, in node2's namespace.
    let deadline = Instant::now() + 5 * SECOND;
    let comm = loop {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "sleep" || Instant::now() > deadline {
            break comm;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        comm.trim(),
        "sleep",
        "pid {pid} is not the program:\n{}",
        p.log()
    );
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    assert_eq!(
        exe.file_name(),
        std::fs::canonicalize(&sleep).expect("sleep").file_name(),
        "pid {pid} runs {exe:?}"
    );
    let in_ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).expect("ns of pid");
    let lab_ns = std::fs::metadata(format!("/run/netns/{}", lab.ns(NODE2))).expect("lab ns");
    assert_eq!(
        (in_ns.dev(), in_ns.ino()),
        (lab_ns.dev(), lab_ns.ino()),
        "pid {pid} is not in node2's namespace"
    );
    let own = std::fs::metadata("/proc/self/ns/net").expect("own ns");
    assert_ne!(own.ino(), in_ns.ino());
    // SIGTERM to that pid ends the program itself.
    let status = p.terminate(5 * SECOND);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}");
}

#[test]
fn a_proc_dies_with_the_thread_that_spawned_it() {
    // What makes a test killed by the runner leave no orphan: PR_SET_PDEATHSIG, across ip netns exec.
    let lab = lab("orphan", false, false);
    let sleep = require_tool("sleep");
    let mut cmd = lab.command(CLIENT, &sleep);
    cmd.arg("30");
    let mut p = std::thread::spawn(move || Proc::spawn("sleep", &mut cmd))
        .join()
        .expect("spawning thread");
    let deadline = Instant::now() + 5 * SECOND;
    let status = loop {
        if let Some(s) = p.exited() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.and_then(|s| s.signal()),
        Some(libc::SIGKILL),
        "pid {} outlived the thread that spawned it",
        p.pid()
    );
}

/// A namespace made by hand, deleted on drop (when the sweep has not).
struct LooseNs(String);

impl LooseNs {
    fn add(name: String) -> LooseNs {
        let ip = require_tool_in(&["/usr/sbin", "/sbin"], "ip");
        let out = run(
            Command::new(ip).args(["netns", "add", &name]),
            Duration::from_secs(20),
        );
        assert!(out.status.success(), "ip netns add {name}: {}", text(&out));
        LooseNs(name)
    }
}

impl Drop for LooseNs {
    fn drop(&mut self) {
        if std::path::Path::new("/run/netns").join(&self.0).exists() {
            let ip = require_tool_in(&["/usr/sbin", "/sbin"], "ip");
            let _ = Command::new(ip).args(["netns", "del", &self.0]).status();
        }
    }
}

#[test]
fn sweep_deletes_only_leftovers_of_dead_owners() {
    require_root();
    // A pid that is dead: a child we ran and reaped.
    let mut done = Command::new(require_tool("true"))
        .spawn()
        .expect("spawn true");
    let dead = done.id();
    done.wait().expect("wait true");
    // A pid that is alive: a child that sleeps until the end of the test.
    let mut alive = Proc::spawn("sleep", Command::new(require_tool("sleep")).arg("60"));
    let me = std::process::id();
    let left = LooseNs::add(format!("ts{dead}-sweep-node1"));
    let live = LooseNs::add(format!("ts{}-sweep-node1", alive.pid()));
    let own = LooseNs::add(format!("ts{me}-sweep-node1"));
    let other = LooseNs::add(format!("tsx{dead}-sweep-node1")); // not a lab name

    sweep();
    let listed = ip_netns_list();
    assert!(
        !listed.contains(&left.0),
        "leftover of dead pid {dead} kept: {listed:?}"
    );
    assert!(
        listed.contains(&live.0),
        "namespace of a live process deleted"
    );
    assert!(listed.contains(&own.0), "namespace of this process deleted");
    assert!(
        listed.contains(&other.0),
        "a namespace that is not the lab's deleted"
    );
    alive.kill();
}

const IQN: &str = "iqn.2025-08.local.twinsan:netns";
const DISK: u64 = 64 << 20;
const CHUNK: u64 = 64 << 10;

/// qemu-io in the client namespace; fails the test on any error. Its output.
fn qemu_io(lab: &Lab, url: &str, cmds: &[String]) -> String {
    qemu::qemu_io_via(lab.command(CLIENT, require_tool("qemu-io")), url, cmds)
}

#[test]
fn iscsi_through_the_lab() {
    let dir = TempDir::new("netns-iscsi");
    // Declared before the server: dropped after it.
    let lab = lab("iscsi", false, false);
    let img = dir.path().join("lun1.img");
    let lun = format!("1={}", img.display());
    let mut serve = Proc::spawn(
        "twinsan serve",
        lab.command(NODE1, twinsan_bin())
            .args(["serve", "--iqn", IQN, "--listen", "198.18.0.11:3260"])
            .args(["--lun", &lun, "--create", "64M"])
            .env("TWINSAN_LOG", "info"),
    );
    let portal = "198.18.0.11:3260".parse().unwrap();
    lab.wait_listening(CLIENT, portal, Duration::from_secs(20), &mut serve);

    let url = format!("iscsi://198.18.0.11:3260/{IQN}/1");
    let plan = qemu::plan(0x6e65_746e_735f_6c61, DISK, CHUNK, 64);
    let writes: Vec<String> = plan
        .iter()
        .map(|(off, p)| format!("write -P {p:#04x} {off} {CHUNK}"))
        .collect();
    let out = qemu_io(&lab, &url, &writes);
    let wrote = out
        .lines()
        .filter(|l| l.starts_with(&format!("wrote {CHUNK}/{CHUNK} bytes")))
        .count();
    assert_eq!(wrote, plan.len(), "not every write completed:\n{out}");
    let reads: Vec<String> = plan
        .iter()
        .map(|(off, p)| format!("read -P {p:#04x} {off} {CHUNK}"))
        .collect();
    let out = qemu_io(&lab, &url, &reads);
    let verified = out
        .lines()
        .filter(|l| l.starts_with(&format!("read {CHUNK}/{CHUNK} bytes")))
        .count();
    assert_eq!(verified, plan.len(), "not every read verified:\n{out}");

    // The data is in node1's file, and the sessions came from the client's address.
    let mut f = std::fs::File::open(&img).expect("open the LUN file");
    let mut buf = vec![0u8; CHUNK as usize];
    for (off, p) in &plan {
        f.seek(SeekFrom::Start(*off)).expect("seek");
        f.read_exact(&mut buf).expect("read");
        assert!(
            buf.iter().all(|b| b == p),
            "LUN file at {off}: not {p:#04x}"
        );
    }
    let log = serve.log();
    assert!(
        log.contains("login complete") && log.contains("198.18.0.100"),
        "no login from the client's address in the server log:\n{log}"
    );

    let status = serve.terminate(Duration::from_secs(15));
    assert!(
        status.success(),
        "twinsan serve exited with {status} on SIGTERM:\n{}",
        serve.log()
    );
}
