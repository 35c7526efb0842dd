//! Two `twinsan node run` daemons on 127.0.0.11 and 127.0.0.12, as `twinsan init --manual` writes them, driven
//! by the CLI like an admin drives DRBD with drbdadm: initial sync, failover after kill -9, resync of only what
//! changed, split brain, crashes, bad metadata and a wrong secret.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{first_difference, in_sync, peer, Cluster, LinkCut};
use common::qemu;
use common::scsi;
use common::twinsan_bin;

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 256 << 10;

/// `twinsan volume events vol0 [--json]` on a node, its lines collected until `stop`.
struct EventStream {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl EventStream {
    fn start(c: &Cluster, node: usize, json: bool) -> EventStream {
        let mut cmd = Command::new(twinsan_bin());
        cmd.arg("--config").arg(&c.config).args([
            "--node",
            &format!("node{node}"),
            "volume",
            "events",
            "vol0",
        ]);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn volume events");
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        EventStream { child, lines }
    }

    /// Stops the stream; the lines it printed.
    fn stop(mut self) -> Vec<String> {
        // SAFETY: kill(2) on the pid of our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Both nodes up, connected, and the initial sync skipped (new empty disks): both UpToDate, node1 Primary.
fn ready_pair(tag: &str) -> Cluster {
    let mut c = Cluster::init(tag, true, "256M");
    c.start(1);
    c.start(2);
    c.skip_initial_sync(&[1, 2]);
    c.cli(1, &["volume", "primary", "vol0"]);
    c
}

#[test]
fn cluster_initial_sync_after_primary_force() {
    let mut c = Cluster::init("initial-sync", true, "256M");
    c.start(1);
    c.start(2);
    let s = c.wait_status(1, Duration::from_secs(20), "Connected", |s| {
        peer(s, "connection") == "Connected"
    });
    assert_eq!(
        s["disk"], "Inconsistent",
        "a new volume is Inconsistent: {s}"
    );
    assert_eq!(peer(&s, "peer_disk"), "Inconsistent");
    // Promoting Inconsistent data without --force is refused, with the reason.
    let refused = c.cli_fails(1, &["volume", "primary", "vol0"]);
    assert!(refused.contains("UpToDate"), "{refused}");

    // Follow the event stream while the sync runs.
    let events = EventStream::start(&c, 1, false);

    c.cli(1, &["volume", "primary", "--force", "vol0"]);
    let mut seen_progress = Vec::new();
    let s = c.wait_status(1, Duration::from_secs(120), "initial sync done", |s| {
        if let Some(d) = peer(s, "done").as_f64() {
            if peer(s, "replication") == "SyncSource" {
                seen_progress.push(d);
            }
        }
        in_sync(s)
    });
    assert_eq!(s["role"], "Primary");
    c.wait_status(2, Duration::from_secs(20), "UpToDate on node2", in_sync);
    let text = c.cli(1, &["volume", "status", "vol0"]);
    assert!(text.contains("disk:UpToDate"), "{text}");
    let sent = peer(&s, "resync_sent_kib")
        .as_u64()
        .expect("resync_sent_kib");
    assert_eq!(
        sent,
        256 * 1024,
        "the initial sync sends the whole volume once"
    );

    let lines = events.stop();
    let progress: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("replication:SyncSource") && l.contains("done:"))
        .collect();
    assert!(
        !progress.is_empty() || seen_progress.iter().any(|&d| d > 0.0 && d < 100.0),
        "no sync progress was visible in events or status; events:\n{}",
        lines.join("\n")
    );
    // Each line starts with the time the node saw the event (UTC, RFC 3339), then the event as drbdsetup's.
    let kind = |l: &String| -> Option<String> {
        let (time, rest) = l.split_once(' ')?;
        let t = time.as_bytes();
        (time.ends_with('Z') && t.get(4) == Some(&b'-') && t.get(10) == Some(&b'T'))
            .then(|| rest.split(' ').next().unwrap_or_default().to_string())
    };
    assert!(
        lines.iter().all(|l| kind(l).is_some()),
        "a line without its time:\n{}",
        lines.join("\n")
    );
    for wanted in ["exists", "change"] {
        assert!(
            lines.iter().any(|l| kind(l).as_deref() == Some(wanted)),
            "no {wanted} line:\n{}",
            lines.join("\n")
        );
    }

    // The two copies are byte-identical.
    assert!(c.stop(1), "node1 did not stop cleanly:\n{}", c.logs());
    assert!(c.stop(2), "node2 did not stop cleanly:\n{}", c.logs());
    assert_eq!(first_difference(&c.disk(1), &c.disk(2), 256 * MIB), None);
}

#[test]
fn cluster_kill_primary_and_promote_the_peer() {
    let mut c = ready_pair("failover");
    let plan = qemu::plan(0x5eed_0001, 256 * MIB, CHUNK, 256);
    qemu::write(&c.url(1), &plan, CHUNK);
    c.kill(1);
    c.wait_status(2, Duration::from_secs(20), "the peer gone", |s| {
        peer(s, "connection") != "Connected"
    });
    c.cli(2, &["volume", "primary", "vol0"]);
    let s = c.status(2);
    assert_eq!(s["role"], "Primary", "{s}");
    assert_eq!(s["disk"], "UpToDate", "{s}");
    qemu::verify(&c.url(2), &plan, CHUNK);
}

#[test]
fn cluster_resync_sends_only_what_changed_and_verify_agrees() {
    let mut c = ready_pair("resync");
    assert!(c.stop(2), "node2 did not stop cleanly:\n{}", c.logs());
    let plan = qemu::plan(0x5eed_0002, 256 * MIB, CHUNK, 64);
    qemu::write(&c.url(1), &plan, CHUNK);
    let s = c.status(1);
    let dirty = peer(&s, "out_of_sync_kib")
        .as_u64()
        .expect("out_of_sync_kib");
    assert_eq!(dirty, 16 * 1024, "16 MiB written while node2 was away: {s}");
    c.start(2);
    let s = c.wait_status(1, Duration::from_secs(60), "resync done", in_sync);
    let sent = peer(&s, "resync_sent_kib")
        .as_u64()
        .expect("resync_sent_kib");
    assert!(
        sent >= dirty && sent * 100 <= dirty * 105,
        "resync sent {sent} KiB for {dirty} KiB of dirty data"
    );
    c.wait_status(2, Duration::from_secs(20), "UpToDate on node2", in_sync);
    c.cli(1, &["volume", "verify", "vol0"]);
    let s = c.wait_status(1, Duration::from_secs(120), "verify done", |s| {
        peer(s, "replication") == "Established" && peer(s, "done").is_null()
    });
    assert_eq!(peer(&s, "verify_out_of_sync_kib"), 0, "{s}");
    assert_eq!(peer(&s, "out_of_sync_kib"), 0, "{s}");
    assert!(
        c.log(1)
            .contains("online verify finished: 0 KiB out of sync"),
        "{}",
        c.logs()
    );
    qemu::verify(&c.url(1), &plan, CHUNK);
}

/// Cuts the link, promotes and writes on the sides given, demotes those in `demote`, and heals.
fn split(c: &Cluster, writers: &[(usize, u64)], promote: &[usize], demote: &[usize]) {
    let cut = LinkCut::new();
    for n in [1, 2] {
        c.wait_status(n, Duration::from_secs(20), "link lost", |s| {
            peer(s, "connection") != "Connected"
        });
    }
    for &n in promote {
        c.cli(n, &["volume", "primary", "vol0"]);
    }
    for &(n, seed) in writers {
        let plan = qemu::plan(seed, 256 * MIB, CHUNK, 8);
        qemu::write(&c.url(n), &plan, CHUNK);
    }
    for &n in demote {
        c.cli(n, &["volume", "secondary", "vol0"]);
    }
    drop(cut);
}

#[test]
fn cluster_split_brain_is_reported_and_resolved_by_discard_my_data() {
    let c = ready_pair("split-brain");
    let events = EventStream::start(&c, 1, true);
    // node1 is Primary: it goes on; node2 is promoted too once the link is down.
    split(&c, &[(1, 0x51), (2, 0x52)], &[2], &[]);
    for n in [1, 2] {
        let s = c.wait_status(n, Duration::from_secs(30), "split brain", |s| {
            s["split_brain"] == true
        });
        assert_eq!(peer(&s, "connection"), "StandAlone", "{s}");
    }
    assert!(
        c.log(1).contains("split brain") && c.log(2).contains("split brain"),
        "{}",
        c.logs()
    );
    let lines = events.stop();
    let event = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["kind"] == "split-brain");
    let event =
        event.unwrap_or_else(|| panic!("no split-brain event on node1:\n{}", lines.join("\n")));
    assert_eq!(event["status"]["split_brain"], true, "{event}");
    assert!(
        event["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "the event has no time: {event}"
    );
    // The victim: node2 discards its changes.
    c.cli(2, &["volume", "secondary", "vol0"]);
    c.cli(2, &["volume", "connect", "--discard-my-data", "vol0"]);
    c.cli(1, &["volume", "connect", "vol0"]);
    let s = c.wait_status(1, Duration::from_secs(60), "resolved and in sync", in_sync);
    assert_eq!(s["split_brain"], false, "{s}");
    let sent = peer(&s, "resync_sent_kib")
        .as_u64()
        .expect("resync_sent_kib");
    // Both sides wrote 8 × 256 KiB: the union of the two bitmaps, never the whole 256 MiB.
    assert!(
        (2 * 1024..=4 * 1024).contains(&sent),
        "a bitmap resync sends the changed blocks only, sent {sent} KiB"
    );
    let s2 = c.wait_status(2, Duration::from_secs(20), "node2 in sync", in_sync);
    assert_eq!(s2["role"], "Secondary");
    // node1's writes are what both hold now.
    let plan = qemu::plan(0x51, 256 * MIB, CHUNK, 8);
    qemu::verify(&c.url(1), &plan, CHUNK);
}

#[test]
fn cluster_split_brain_with_zero_changes_resolves_by_itself() {
    let mut c = Cluster::init("split-zero", true, "256M");
    let text = std::fs::read_to_string(&c.config).expect("config");
    let text = text.replacen(
        "after_sb_0pri = \"disconnect\"",
        "after_sb_0pri = \"discard-zero-changes\"",
        1,
    );
    assert!(
        text.contains("discard-zero-changes"),
        "init's config has no after_sb_0pri line:\n{text}"
    );
    // The split-brain handler runs on detection, told what happened through its environment.
    let handler_log = c.folder().join("handler.log");
    let text = text.replacen(
        "after_sb_1pri",
        &format!(
            "handler_split_brain = \"echo \\\"$TWINSAN_HANDLER $TWINSAN_VOLUME $TWINSAN_PEER\\\" >> {}\"\nafter_sb_1pri",
            handler_log.display()
        ),
        1,
    );
    std::fs::write(&c.config, text).expect("write config");
    c.start(1);
    c.start(2);
    c.skip_initial_sync(&[2]);
    // Both become Primary while cut off, only node1 writes, both step down before the link heals.
    split(&c, &[(1, 0x61)], &[1, 2], &[1, 2]);
    let s = c.wait_status(1, Duration::from_secs(60), "resolved and in sync", in_sync);
    assert_eq!(s["split_brain"], false, "{s}");
    assert!(
        c.log(1).contains("split brain") || c.log(2).contains("split brain"),
        "the split brain must still be reported:\n{}",
        c.logs()
    );
    c.wait_status(2, Duration::from_secs(20), "node2 in sync", in_sync);
    c.cli(2, &["volume", "primary", "vol0"]);
    qemu::verify(&c.url(2), &qemu::plan(0x61, 256 * MIB, CHUNK, 8), CHUNK);
    let ran = std::fs::read_to_string(&handler_log).unwrap_or_default();
    assert!(
        ran.contains("split-brain vol0 node2") || ran.contains("split-brain vol0 node1"),
        "the split-brain handler did not run (log: {ran:?}):\n{}",
        c.logs()
    );
}

/// Runs `node run` for node `n`, which must fail (`why` says what it would mean if it did not); its output.
fn node_run_fails(c: &Cluster, n: usize, why: &str) -> String {
    let out = common::run(
        Command::new(twinsan_bin())
            .args(["node", "run", "--config"])
            .arg(&c.config)
            .args(["--node", &format!("node{n}")]),
        Duration::from_secs(30),
    );
    let text = common::text(&out);
    assert!(!out.status.success(), "{why}:\n{text}");
    text
}

#[test]
fn cluster_corrupt_superblock_is_refused_and_left_alone() {
    let c = Cluster::init("corrupt-sb", true, "64M");
    let path = c.disk(1);
    let mut bytes = std::fs::read(&path).expect("read disk");
    let magic = b"\x89TWINSMD";
    let at: Vec<usize> = (0..bytes.len() - magic.len())
        .rev()
        .take(4 << 20)
        .filter(|&i| &bytes[i..i + magic.len()] == magic)
        .collect();
    assert!(!at.is_empty(), "no superblock found in {}", path.display());
    for &i in &at {
        bytes[i + 16] ^= 0x5a;
    }
    std::fs::write(&path, &bytes).expect("write disk");
    let text = node_run_fails(&c, 1, "a node with a corrupt superblock started");
    assert!(
        text.contains("vol0.img") && text.contains("superblock"),
        "the error must name the file and the superblock:\n{text}"
    );
    assert_eq!(
        std::fs::read(&path).expect("read disk"),
        bytes,
        "the corrupt metadata was modified"
    );
}

#[test]
fn cluster_a_disk_of_another_volume_is_refused() {
    let c = Cluster::init("wrong-uuid", true, "64M");
    let text = std::fs::read_to_string(&c.config).expect("config");
    let line = text
        .lines()
        .find(|l| l.starts_with("uuid = "))
        .expect("a uuid line")
        .to_string();
    std::fs::write(
        &c.config,
        text.replacen(&line, "uuid = \"0123456789abcdef0123456789abcdef\"", 1),
    )
    .expect("config");
    let before = std::fs::read(c.disk(1)).expect("read disk");
    let text = node_run_fails(&c, 1, "a node started on another volume's disk");
    assert!(
        text.contains("belongs to volume uuid")
            && text.contains("0123456789abcdef0123456789abcdef"),
        "the error must say which uuids disagree:\n{text}"
    );
    assert!(
        std::fs::read(c.disk(1)).expect("read disk") == before,
        "the disk was modified"
    );
}

#[test]
fn cluster_peer_with_the_wrong_secret_is_refused() {
    let mut c = Cluster::init("secret", true, "64M");
    let text = std::fs::read_to_string(&c.config).expect("config");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("secret ="))
        .expect("init writes an inline secret")
        .to_owned();
    let other = c.folder().join("node2.toml");
    std::fs::write(
        &other,
        text.replace(&line, "secret = \"a different secret of enough length\""),
    )
    .expect("write");
    c.start(1);
    // Alone, node1 (the one that dials) says why it is not connected.
    let error_has = |s: &serde_json::Value, what: &str| {
        peer(s, "last_error")
            .as_str()
            .is_some_and(|e| e.contains(what))
    };
    c.wait_status(1, Duration::from_secs(20), "cannot connect", |s| {
        error_has(s, "cannot connect to 127.0.0.12:7789")
    });
    let good = c.config.clone();
    c.config = other;
    c.start(2);
    c.config = good;
    std::thread::sleep(Duration::from_secs(3));
    let s = c.status(1);
    assert_ne!(peer(&s, "connection"), "Connected", "{s}");
    assert!(
        c.logs().contains("wrong shared secret"),
        "the refusal must be logged:\n{}",
        c.logs()
    );
    // Both say why in `volume status --json` and `volume status`: the handshake's refusal.
    for n in [1, 2] {
        c.wait_status(
            n,
            Duration::from_secs(20),
            "the refusal in last_error",
            |s| error_has(s, "authentication"),
        );
    }
    let text = c.cli(1, &["volume", "status", "vol0"]);
    assert!(
        text.contains("last-error: ") && text.contains("authentication"),
        "{text}"
    );
}

/// Sets `resync_max_kib_s` on vol0, so a resync lasts long enough to be interrupted.
fn slow_resync(c: &Cluster, kib_s: u64) {
    let text = std::fs::read_to_string(&c.config).expect("config");
    let text = text.replacen(
        "protocol = \"C\"",
        &format!("protocol = \"C\"\nresync_max_kib_s = {kib_s}"),
        1,
    );
    std::fs::write(&c.config, text).expect("write config");
}

#[test]
fn cluster_primary_killed_mid_resync_resumes_without_a_full_sync() {
    let mut c = Cluster::init("mid-resync", true, "256M");
    slow_resync(&c, 16 * 1024);
    c.start(1);
    c.start(2);
    c.skip_initial_sync(&[1]);
    c.cli(1, &["volume", "primary", "vol0"]);
    assert!(c.stop(2), "node2 did not stop cleanly:\n{}", c.logs());
    // 48 MiB in the first 64 MiB of the volume: the activity log covers 16 extents of 4 MiB.
    let plan = qemu::plan(0x5eed_0005, 64 * MIB, CHUNK, 192);
    qemu::write(&c.url(1), &plan, CHUNK);
    c.start(2);
    c.wait_status(1, Duration::from_secs(30), "resync under way", |s| {
        peer(s, "replication") == "SyncSource" && peer(s, "done").as_f64().is_some_and(|d| d > 5.0)
    });
    c.kill(1);
    c.start(1);
    let s = c.wait_status(
        1,
        Duration::from_secs(60),
        "resync done after the restart",
        in_sync,
    );
    let sent = peer(&s, "resync_sent_kib")
        .as_u64()
        .expect("resync_sent_kib");
    assert!(
        sent <= 64 * 1024,
        "after the restart the resync sent {sent} KiB: more than the 64 MiB the activity log covers"
    );
    eprintln!("killed mid-resync: the resync after the restart sent {sent} KiB");
    c.wait_status(2, Duration::from_secs(20), "node2 in sync", in_sync);
    c.cli(1, &["volume", "primary", "vol0"]);
    qemu::verify(&c.url(1), &plan, CHUNK);
    assert!(
        c.stop(1) && c.stop(2),
        "the nodes did not stop cleanly:\n{}",
        c.logs()
    );
    assert_eq!(first_difference(&c.disk(1), &c.disk(2), 256 * MIB), None);
}

#[test]
fn cluster_both_killed_under_write_load_lose_nothing_acknowledged() {
    const SMALL: u64 = 64 << 10;
    let mut c = ready_pair("both-killed");
    // Rounds of 8 writes of 64 KiB at distinct offsets in the first 32 MiB; a round whose qemu-io exited 0 was
    // acknowledged in full.
    let plan = qemu::plan(0x5eed_0006, 32 * MIB, SMALL, 512);
    let done_rounds = Arc::new(Mutex::new(Vec::<usize>::new()));
    let running = Arc::new(Mutex::new(None::<u32>));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (done_rounds, running, stop) = (done_rounds.clone(), running.clone(), stop.clone());
        let url = c.url(1);
        let plan = plan.clone();
        std::thread::spawn(move || {
            for (round, chunk) in plan.chunks(8).enumerate() {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let mut cmd = Command::new(common::require_tool("qemu-io"));
                cmd.args(["-f", "raw"]);
                for (off, p) in chunk {
                    cmd.arg("-c")
                        .arg(format!("write -P {p:#04x} {off} {SMALL}"));
                }
                cmd.arg(&url).stdout(Stdio::null()).stderr(Stdio::null());
                let Ok(mut child) = cmd.spawn() else { break };
                *running.lock().unwrap_or_else(|p| p.into_inner()) = Some(child.id());
                let ok = child.wait().is_ok_and(|s| s.success());
                *running.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if ok {
                    done_rounds
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(round);
                } else {
                    break;
                }
            }
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while done_rounds.lock().unwrap_or_else(|p| p.into_inner()).len() < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "writes do not complete:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c.kill(1);
    c.kill(2);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(pid) = *running.lock().unwrap_or_else(|p| p.into_inner()) {
        // SAFETY: kill(2) on the qemu-io this test started (it may wait for a target that is gone).
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    let _ = writer.join();
    let acked: Vec<(u64, u8)> = done_rounds
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .flat_map(|&r| plan[r * 8..(r * 8 + 8).min(plan.len())].to_vec())
        .collect();
    c.start(1);
    c.start(2);
    let s = c.wait_status(1, Duration::from_secs(60), "back in sync", in_sync);
    let sent = peer(&s, "resync_sent_kib")
        .as_u64()
        .expect("resync_sent_kib");
    assert!(
        sent <= 40 * 1024,
        "the resync after the crash sent {sent} KiB: a full sync is 262144 KiB"
    );
    eprintln!("both killed: {} writes acknowledged before the kill; resync after the restart sent {sent} KiB", acked.len());
    c.wait_status(2, Duration::from_secs(20), "node2 in sync", in_sync);
    c.cli(1, &["volume", "primary", "vol0"]);
    qemu::verify(&c.url(1), &acked, SMALL);
    assert!(
        c.stop(1) && c.stop(2),
        "the nodes did not stop cleanly:\n{}",
        c.logs()
    );
    assert_eq!(first_difference(&c.disk(1), &c.disk(2), 256 * MIB), None);
}

/// Opens a TCP connection from 127.0.0.11 (node1's address, so the acceptor takes it) to node2's replication
/// port and writes `bytes`; returns what came back before the connection closed (at most 5 s).
fn speak_to_node2(bytes: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;
    // std has no bind-before-connect for TcpStream: build the socket by hand.
    // SAFETY: plain socket(2); the descriptor is owned by the TcpStream built from it.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is ours.
    let mut stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let addr = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let local = addr([127, 0, 0, 11], 0);
    let peer = addr([127, 0, 0, 12], 7789);
    // SAFETY: valid sockaddr_in values of `len` bytes, alive for the calls.
    unsafe {
        assert_eq!(
            libc::bind(fd, &local as *const _ as *const libc::sockaddr, len),
            0,
            "bind"
        );
        assert_eq!(
            libc::connect(fd, &peer as *const _ as *const libc::sockaddr, len),
            0,
            "connect"
        );
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = stream.write_all(bytes);
    let mut back = Vec::new();
    let _ = stream.read_to_end(&mut back);
    back
}

#[test]
fn cluster_peer_speaking_garbage_is_disconnected_and_never_displaces_the_link() {
    let mut c = Cluster::init("garbage", true, "64M");
    c.start(2);
    // node1 is not running: a client at its address speaks garbage to node2's replication port.
    let mut garbage = b"\x89TWR this is not a replication frame at all".to_vec();
    garbage.extend(std::iter::repeat_n(0xa5u8, 4096));
    speak_to_node2(&garbage);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !c.log(2).contains("bad frame") {
        assert!(
            std::time::Instant::now() < deadline,
            "the garbage was not refused with a log line:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.start(1);
    c.skip_initial_sync(&[1]);
    c.cli(1, &["volume", "primary", "vol0"]);
    // While connected, a stray connection is closed at once and the live link goes on.
    speak_to_node2(&garbage);
    let plan = qemu::plan(0x5eed_0007, 64 * MIB, CHUNK, 16);
    qemu::write(&c.url(1), &plan, CHUNK);
    let s = c.status(1);
    assert!(in_sync(&s), "{s}\n{}", c.logs());
    assert_eq!(
        peer(&s, "out_of_sync_kib"),
        0,
        "every write reached node2: {s}"
    );
}

#[test]
fn cluster_manual_status_shows_the_peer_as_replication_sees_it() {
    let mut c = Cluster::init("manual-status", true, "64M");
    c.start(1);
    c.start(2);
    c.wait_status(1, Duration::from_secs(20), "Connected", |s| {
        peer(s, "connection") == "Connected"
    });
    // No cluster membership in manual mode: a connected peer is never OFFLINE beside a Connected volume.
    let text = c.cli(1, &["status"]);
    assert!(
        text.contains("  * node1: this node")
            && text.contains("  * node2: reachable over replication (vol0 Connected)"),
        "{text}"
    );
    assert!(!text.contains("OFFLINE"), "{text}");

    assert!(c.stop(2), "node2 did not stop cleanly:\n{}", c.logs());
    c.wait_status(1, Duration::from_secs(20), "not Connected", |s| {
        peer(s, "connection") != "Connected"
    });
    let text = c.cli(1, &["status"]);
    assert!(
        text.contains("  * node2: not reachable over replication (vol0 "),
        "{text}"
    );
    assert!(c.stop(1), "node1 did not stop cleanly:\n{}", c.logs());
}

/// Resource-only fencing in manual mode goes through `handler_fence_peer` (what an outside cluster manager's
/// fence is: the Pacemaker agent's fence-peer, tests/pacemaker.rs): the Primary that loses its peer suspends
/// writes until the handler exits 0, then writes alone; once both copies are UpToDate and connected again
/// `handler_unfence_peer` runs. A handler that fails keeps the writes suspended.
#[test]
fn cluster_manual_fencing_runs_the_fence_peer_handler() {
    let mut c = Cluster::init("fencehandler", true, "64M");
    let dir = c.folder();
    let log = dir.join("fence.log");
    let refuse = dir.join("refuse");
    let toml = std::fs::read_to_string(&c.config).expect("config");
    let fencing = "fencing = \"dont-care\"";
    assert!(toml.contains(fencing), "{toml}");
    let toml = toml.replacen(
        fencing,
        &format!(
            "fencing = \"resource-only\"\n\
             handler_fence_peer = \"echo fence $TWINSAN_PEER >> '{log}'; test ! -e '{refuse}'\"\n\
             handler_unfence_peer = \"echo unfence $TWINSAN_PEER >> '{log}'\"",
            log = log.display(),
            refuse = refuse.display()
        ),
        1,
    );
    std::fs::write(&c.config, toml).expect("write config");
    let lines = |what: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == what)
            .count()
    };
    c.start(1);
    c.start(2);
    c.skip_initial_sync(&[1]);
    c.cli(1, &["volume", "primary", "vol0"]);
    c.wait_for(Duration::from_secs(20), "unfence-peer on both", || {
        (lines("unfence node2") >= 1 && lines("unfence node1") >= 1).then_some(())
    });
    assert_eq!(lines("fence node2"), 0, "no fence while connected");

    // The peer dies: node1 fences it (the handler exits 0) and writes alone.
    c.kill(2);
    let plan = qemu::plan(0xfe1c_0001, 64 * MIB, CHUNK, 32);
    qemu::write(&c.url(1), &plan, CHUNK);
    assert_eq!(lines("fence node2"), 1, "{}", c.logs());
    let s = c.status(1);
    assert_eq!(s["suspended"], false, "{s}");
    // It comes back and resyncs: unfence-peer.
    c.start(2);
    c.wait_status(2, Duration::from_secs(60), "node2 resynced", in_sync);
    c.wait_for(
        Duration::from_secs(20),
        "unfence-peer after the resync",
        || (lines("unfence node2") >= 2).then_some(()),
    );

    // A fence that fails: writes stay suspended.
    std::fs::write(&refuse, "").expect("refuse");
    c.kill(2);
    c.wait_for(Duration::from_secs(30), "the second fence-peer", || {
        (lines("fence node2") == 2).then_some(())
    });
    // Once node1 has taken the handler's answer, the writes are still suspended.
    c.wait_for(Duration::from_secs(20), "the failed fence logged", || {
        c.log(1).contains("fence-peer handler failed").then_some(())
    });
    let s = c.status(1);
    assert_eq!(s["role"], "Primary", "{s}");
    assert_eq!(
        s["suspended"], true,
        "a failed fence resumed the writes: {s}"
    );
}

const VOL1: &str = r#"
[[volume]]
name = "vol1"
uuid = "7d2f0c4b8a1e4f6d9b3c5a7e1f2d4c6b"
port = 7790
protocol = "C"
fencing = "dont-care"
after_sb_0pri = "disconnect"
after_sb_1pri = "disconnect"
after_sb_2pri = "disconnect"
disk = { node1 = { path = "node1/vol1.img" }, node2 = { path = "node2/vol1.img" } }
"#;

/// Issue 15: no runtime worker waits for the peer. With the Secondary frozen (SIGSTOP), a COMPARE AND WRITE of
/// LUN 1's first block (vol0) waits for it holding that block exclusively, and protocol C writes to LUN 1 in four
/// sessions wait too — eight of each session's on that block, so they wait behind the COMPARE AND WRITE in the
/// SCSI range lock — while reads of LUN 2 (vol1, another volume on the same node) must still complete. They must complete *while* the
/// writes wait: if they only finished after vol0 dropped the silent peer (4 s) and the writes completed, the
/// round proves nothing and runs again; three such rounds fail the test.
#[test]
fn cluster_reads_of_another_volume_go_on_while_writes_wait_for_a_frozen_peer() {
    let mut c = Cluster::init("frozen-reads", true, "64M");
    let config = std::fs::read_to_string(&c.config).expect("read config");
    let luns = r#"lun = [ { lun = 1, volume = "vol0" } ]"#;
    assert!(config.contains(luns), "unexpected init config:\n{config}");
    let at = config.find("\n[[target]]").expect("a [[target]]");
    let config = format!("{}{VOL1}{}", &config[..at], &config[at..]).replace(
        luns,
        r#"lun = [ { lun = 1, volume = "vol0" }, { lun = 2, volume = "vol1" } ]"#,
    );
    std::fs::write(&c.config, config).expect("write config");
    for n in [1, 2] {
        let f = std::fs::File::create(c.folder().join(format!("node{n}/vol1.img")))
            .expect("create vol1.img");
        f.set_len(64 * MIB).expect("size vol1.img");
        c.cli(n, &["volume", "create-md", "vol1"]);
    }
    c.start(1);
    c.start(2);
    c.skip_initial_sync(&[1, 2]);
    c.wait_for(Duration::from_secs(20), "vol1 connected", || {
        (c.volume_status(1, "vol1")["peers"][0]["connection"] == "Connected").then_some(())
    });
    c.cli(1, &["volume", "new-current-uuid", "--clear-bitmap", "vol1"]);
    for n in [1, 2] {
        c.wait_for(Duration::from_secs(20), "vol1 in sync", || {
            in_sync(&c.volume_status(n, "vol1")).then_some(())
        });
    }
    c.cli(1, &["volume", "primary", "vol0"]);
    c.cli(1, &["volume", "primary", "vol1"]);
    let lun = |n: u64| c.url(1).trim_end_matches('1').to_string() + &n.to_string();
    let plan = qemu::plan(0x5eed_0015, 64 * MIB, 64 << 10, 32);
    qemu::write(&lun(2), &plan, 64 << 10);

    let node2 = c.nodes[1].as_ref().expect("node2 runs").pid() as i32;
    // In each of four sessions: eight writes on one 64 KiB range (each waits for the one before in the range lock) and eight elsewhere;
    // the first read says the session is up, and then the writes are submitted at once.
    let mut cmds = vec!["read 0 4k".to_string()];
    for i in 0..16u64 {
        let off = if i < 8 { 0 } else { i * (1 << 20) };
        cmds.push(format!("aio_write -P {:#04x} {off} 64k", 0x40 + i));
    }
    cmds.push("aio_flush".to_string());
    let mut proven = false;
    let who = scsi::Initiator {
        name: "iqn.2025-08.local.test:frozen-caw",
        isid: 1,
    };
    for round in 1..=3 {
        // What the first block holds: the COMPARE AND WRITE compares with it, so it goes on to the write and waits.
        let read10 = vec![0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        let first = scsi::run_cmds(&lun(1), who, &[scsi::Cmd::In(read10, 512)]);
        let mut caw_data = first[0].data.clone();
        assert_eq!(caw_data.len(), 512, "{first:?}");
        caw_data.extend_from_slice(&[0x70 + round as u8; 512]);
        let caw_cdb = [0x89u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
        // SAFETY: kill(2) on the pid of a daemon this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(node2, libc::SIGSTOP) }, 0);
        let hexed = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut caw = Command::new(scsi::tool())
            .arg(lun(1))
            .arg(who.name)
            .arg(who.isid.to_string())
            .arg(format!("{}:out={}", hexed(&caw_cdb), hexed(&caw_data)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn iscsi-cdb");
        // Time for its login and command to reach node1 (if the writes came first, the COMPARE AND WRITE would
        // queue behind them instead, and the round would test less, not pass wrongly).
        std::thread::sleep(Duration::from_millis(500));
        // Four sessions, more than the runtime has workers (one per core): a write that held a worker while it
        // waited would leave none for the reads.
        let mut writers = Vec::new();
        for _ in 0..4 {
            let mut writer = qemu::line_buffered(|program| Command::new(program));
            writer.args(["-f", "raw"]);
            for cmd in &cmds {
                writer.arg("-c").arg(cmd);
            }
            let mut writer = writer
                .arg(lun(1))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn qemu-io");
            let mut out = BufReader::new(writer.stdout.take().expect("stdout"));
            let mut first = String::new();
            out.read_line(&mut first).expect("read qemu-io");
            assert!(first.starts_with("read 4096/4096"), "qemu-io: {first}");
            writers.push((writer, out));
        }
        // The writes are on their way to node1; they wait for node2 (frozen) until vol0 drops it.
        qemu::verify(&lun(2), &plan, 64 << 10);
        let writes_waiting = writers
            .iter_mut()
            .all(|(w, _)| matches!(w.try_wait(), Ok(None)))
            && matches!(caw.try_wait(), Ok(None))
            && c.volume_status(1, "vol0")["peers"][0]["connection"] == "Connected";
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(node2, libc::SIGCONT) }, 0);
        let mut done = 0;
        for (mut writer, mut out) in writers {
            let status = writer.wait().expect("wait qemu-io");
            let mut rest = String::new();
            std::io::Read::read_to_string(&mut out, &mut rest).expect("read qemu-io");
            assert!(status.success(), "qemu-io writes failed ({status}): {rest}");
            done += rest.matches("wrote 65536/65536").count();
        }
        println!(
            "round {round}: 32 reads of 64 KiB at LUN 2 verified; the COMPARE AND WRITE and the writes at LUN 1 \
             were {}waiting then; \
             {done} of 64 writes done after node2 resumed",
            if writes_waiting { "" } else { "no longer " },
        );
        assert_eq!(done, 64);
        let caw = caw.wait_with_output().expect("wait iscsi-cdb");
        let answer = String::from_utf8_lossy(&caw.stdout).to_string();
        assert!(
            caw.status.success() && answer.starts_with("status=0 "),
            "COMPARE AND WRITE: {answer} {}",
            String::from_utf8_lossy(&caw.stderr)
        );
        for n in [1, 2] {
            c.wait_for(Duration::from_secs(30), "vol0 in sync", || {
                in_sync(&c.volume_status(n, "vol0")).then_some(())
            });
        }
        if writes_waiting {
            proven = true;
            break;
        }
    }
    assert!(
        proven,
        "in three rounds the reads of LUN 2 completed only once the writes to LUN 1 no longer waited for the \
         frozen peer: the node's runtime was blocked by the writes\n{}",
        c.logs()
    );
}
