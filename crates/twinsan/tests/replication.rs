//! Two `twinsan node run` daemons on 127.0.0.11 and 127.0.0.12, as `twinsan init --manual` writes them, driven
//! by the CLI like an admin drives DRBD with drbdadm: initial sync, failover after kill -9, resync of only what
//! changed, split brain, crashes, bad metadata and a wrong secret.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{first_difference, in_sync, peer, Cluster};
use common::qemu;
use common::twinsan_bin;

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 256 << 10;

/// Both nodes up, connected, and the initial sync skipped (new empty disks): both UpToDate, node1 Primary.
fn ready_pair(tag: &str) -> Cluster {
    let mut c = Cluster::init(tag, true, "256M");
    c.start(1);
    c.start(2);
    c.wait_status(1, Duration::from_secs(20), "Connected", |s| peer(s, "connection") == "Connected");
    c.cli(1, &["volume", "new-current-uuid", "--clear-bitmap", "vol0"]);
    c.wait_status(1, Duration::from_secs(20), "both UpToDate", in_sync);
    c.wait_status(2, Duration::from_secs(20), "both UpToDate", in_sync);
    c.cli(1, &["volume", "primary", "vol0"]);
    c
}

#[test]
fn cluster_initial_sync_after_primary_force() {
    let mut c = Cluster::init("initial-sync", true, "256M");
    c.start(1);
    c.start(2);
    let s = c.wait_status(1, Duration::from_secs(20), "Connected", |s| peer(s, "connection") == "Connected");
    assert_eq!(s["disk"], "Inconsistent", "a new volume is Inconsistent: {s}");
    assert_eq!(peer(&s, "peer_disk"), "Inconsistent");
    // Promoting Inconsistent data without --force is refused, with the reason.
    let refused = c.cli_fails(1, &["volume", "primary", "vol0"]);
    assert!(refused.contains("UpToDate"), "{refused}");

    // Follow the event stream while the sync runs.
    let mut events = Command::new(twinsan_bin())
        .arg("--config")
        .arg(&c.config)
        .args(["--node", "node1", "volume", "events", "vol0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn volume events");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let out = events.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });

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
    let sent = peer(&s, "resync_sent_kib").as_u64().expect("resync_sent_kib");
    assert_eq!(sent, 256 * 1024, "the initial sync sends the whole volume once");

    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(events.id() as i32, libc::SIGTERM);
    }
    let _ = events.wait();
    let lines = lines.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let progress: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("replication:SyncSource") && l.contains("done:"))
        .collect();
    assert!(
        !progress.is_empty() || seen_progress.iter().any(|&d| d > 0.0 && d < 100.0),
        "no sync progress was visible in events or status; events:\n{}",
        lines.join("\n")
    );
    assert!(lines.iter().any(|l| l.starts_with("exists")), "{}", lines.join("\n"));
    assert!(lines.iter().any(|l| l.starts_with("change")), "{}", lines.join("\n"));

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
    c.wait_status(2, Duration::from_secs(20), "the peer gone", |s| peer(s, "connection") != "Connected");
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
    let dirty = peer(&s, "out_of_sync_kib").as_u64().expect("out_of_sync_kib");
    assert_eq!(dirty, 16 * 1024, "16 MiB written while node2 was away: {s}");
    c.start(2);
    let s = c.wait_status(1, Duration::from_secs(60), "resync done", in_sync);
    let sent = peer(&s, "resync_sent_kib").as_u64().expect("resync_sent_kib");
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
    assert!(c.log(1).contains("online verify finished: 0 KiB out of sync"), "{}", c.logs());
    qemu::verify(&c.url(1), &plan, CHUNK);
}
