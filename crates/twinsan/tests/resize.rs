//! Online resize of a managed pair (`twinsan volume resize`, issue 13 item 3): both backing files grown under
//! writes at the virtual IP, the LUN grows without a new login, an open session gets CAPACITY DATA HAS CHANGED,
//! data before and after the old end reads back the same on both nodes; shrinking and a resize with nothing to
//! grow are refused with a message.
//!
//! Uses `twinsan init`'s fixed addresses (nextest group `cluster`: `binary(resize)` in .config/nextest.toml).

mod common;

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{in_sync, peer, Cluster};
use common::scsi::{self, libiscsi_tool, Initiator};
use common::{require_tool, run, text, TempDir};

const VIP_URL: &str = "iscsi://127.0.0.10:3260/iqn.2025-08.local.twinsan:vol0/1";
/// Bytes each backing file grows by, per resize.
const GROWTH: u64 = 64 << 20;

/// A child this test started, killed by its pid if still running when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped.
            unsafe {
                libc::kill(self.0.id() as i32, libc::SIGKILL);
            }
        }
        let _ = self.0.wait();
    }
}

fn start_both(c: &mut Cluster) -> usize {
    c.start(1);
    c.start(2);
    c.wait_for(Duration::from_secs(60), "one Primary, both in sync", || {
        let (a, b) = (c.status(1), c.status(2));
        if !(in_sync(&a) && in_sync(&b)) {
            return None;
        }
        match (a["role"].as_str(), b["role"].as_str()) {
            (Some("Primary"), Some("Secondary")) => Some(1),
            (Some("Secondary"), Some("Primary")) => Some(2),
            _ => None,
        }
    })
}

/// The `Total size:` (bytes) that libiscsi's `iscsi-readcapacity16` prints for `url`, in a new session.
fn readcapacity16_bytes(url: &str) -> u64 {
    let tool = require_tool("iscsi-readcapacity16");
    let out = run(Command::new(tool).arg(url), Duration::from_secs(30));
    assert!(out.status.success(), "iscsi-readcapacity16: {}", text(&out));
    let all = text(&out);
    all.lines()
        .find_map(|l| l.strip_prefix("Total size:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Total size in:\n{all}"))
}

fn block_of(path: &std::path::Path, offset: u64) -> Vec<u8> {
    let mut f = std::fs::File::open(path).expect("open disk");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut buf = vec![0u8; 512];
    f.read_exact(&mut buf).expect("read block");
    buf
}

/// The acknowledged records of an iscsi-writer log, as (record, lba), and the number of failed ones.
fn writer_records(log: &std::path::Path) -> (Vec<(u64, u64)>, usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let acked = text
        .lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("A ")?.split(' ');
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect();
    let failed = text.lines().filter(|l| l.starts_with("F ")).count();
    (acked, failed)
}

/// Grows both nodes' backing files by [`GROWTH`] (`truncate -s +64M`).
fn grow_backing_files(c: &Cluster) {
    for n in [1, 2] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(c.disk(n))
            .expect("open backing file");
        let len = f.metadata().expect("metadata").len();
        f.set_len(len + GROWTH).expect("grow backing file");
    }
}

/// `size_kib` of both nodes, which must agree.
fn size_kib(c: &Cluster) -> u64 {
    let (a, b) = (c.status(1), c.status(2));
    assert_eq!(
        a["size_kib"], b["size_kib"],
        "the nodes disagree:\n{a}\n{b}"
    );
    a["size_kib"].as_u64().expect("size_kib")
}

#[test]
fn cluster_resize_grows_the_lun_online_under_writes() {
    let writer = libiscsi_tool("iscsi-writer");
    let capacity = libiscsi_tool("iscsi-capacity");
    let work = TempDir::new("resize-work");
    let mut c = Cluster::init("resize", false, "64M");
    let p = start_both(&mut c);
    let s = 3 - p;
    let old_kib = size_kib(&c);
    assert_eq!(readcapacity16_bytes(VIP_URL), old_kib * 1024);
    let old_blocks = old_kib * 2;

    // Nothing grew yet, a shrink, and the Secondary: refused, each with its reason.
    let refused = c.cli_fails(p, &["volume", "resize", "vol0"]);
    assert!(refused.contains("nothing to do"), "{refused}");
    let refused = c.cli_fails(p, &["volume", "resize", "vol0", "--size", "32M"]);
    assert!(refused.contains("shrinking is not supported"), "{refused}");
    let refused = c.cli_fails(s, &["volume", "resize", "vol0"]);
    assert!(refused.contains("on the Primary"), "{refused}");
    assert_eq!(size_kib(&c), old_kib, "a refused resize changed the size");

    // One session open across the resize.
    let mut session = Proc(
        Command::new(&capacity)
            .arg(VIP_URL)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn iscsi-capacity"),
    );
    let mut session_out = BufReader::new(session.0.stdout.take().expect("stdout"));
    let mut line = String::new();
    session_out.read_line(&mut line).expect("before line");
    assert_eq!(line.trim(), format!("before {old_blocks}"));

    // Writes go on through the resize: QD1 writes with FUA at the VIP, record r at LBA r % blocks. The records
    // start 500 blocks below the old end: they fill the last old blocks and wrap to the start, and the resize
    // waits for that; its unit attention makes the writer log in again, it reads the new capacity and its next
    // records land past the old end.
    let log = work.path().join("writer.log");
    let first_record = old_blocks - 500;
    let mut w = Proc(
        Command::new(&writer)
            .args(["write", VIP_URL, "20"])
            .arg(first_record.to_string())
            .arg(&log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn iscsi-writer"),
    );
    c.wait_for(
        Duration::from_secs(15),
        "writes acknowledged on both sides of the old end",
        || {
            let (acked, _) = writer_records(&log);
            acked
                .iter()
                .any(|(record, _)| *record >= old_blocks + 20)
                .then_some(())
        },
    );

    // Both backing files grow; then the resize, on the Primary.
    grow_backing_files(&c);
    let acked_before = writer_records(&log).0.len();
    let done = c.cli(p, &["volume", "resize", "vol0"]);
    assert!(done.contains("now holds"), "{done}");
    let new_kib = size_kib(&c);
    assert!(
        new_kib > old_kib + (60 << 10),
        "grew from {old_kib} KiB to only {new_kib} KiB"
    );
    let new_blocks = new_kib * 2;

    // The open session: 2A/09 once, then the new capacity, without a new login.
    session
        .0
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("go-ahead");
    let mut rest = String::new();
    session_out
        .read_to_string(&mut rest)
        .expect("session output");
    assert!(session.0.wait().expect("wait").success(), "{rest}");
    let lines: Vec<&str> = rest.lines().collect();
    assert_eq!(
        lines,
        ["sense 06 2a 09".to_string(), format!("after {new_blocks}")],
        "the session across the resize"
    );
    // A new session sees it too.
    assert_eq!(readcapacity16_bytes(VIP_URL), new_kib * 1024);

    // Blocks of the new area the writer does not touch: its middle and its last block.
    let who = Initiator {
        name: "iqn.2025-08.local.twinsan:resize",
        isid: 5,
    };
    let middle = old_blocks + (new_blocks - old_blocks) / 2;
    let last = new_blocks - 1;
    let answers = scsi::run_cmds(
        VIP_URL,
        who,
        &[scsi::write16(middle, 0x5a), scsi::write16(last, 0xa5)],
    );
    for a in &answers {
        assert_eq!(a.status, scsi::GOOD, "{a:?}");
    }
    // A write past the new end is still refused.
    let beyond = scsi::run_cmds(VIP_URL, who, &[scsi::write16(last + 1, 1)]);
    assert_eq!(beyond[0].status, scsi::CHECK_CONDITION);

    // The writer ran through it; everything it was told is on the volume, before and after the old end.
    let deadline = Instant::now() + Duration::from_secs(60);
    while matches!(w.0.try_wait(), Ok(None)) {
        assert!(Instant::now() < deadline, "the writer did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (acked, failed) = writer_records(&log);
    assert!(
        acked.len() > acked_before,
        "no write acknowledged after the resize began ({} in all)",
        acked.len()
    );
    let below = acked.iter().filter(|(_, lba)| *lba < old_blocks).count();
    let past = acked.iter().filter(|(_, lba)| *lba >= old_blocks).count();
    assert!(
        below > 0 && past > 0,
        "acknowledged writes: {below} below the old end, {past} past it"
    );
    let verify = run(
        Command::new(&writer).args(["verify", VIP_URL]).arg(&log),
        Duration::from_secs(60),
    );
    if !verify.status.success() {
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        let events: Vec<&str> = log_text.lines().filter(|l| !l.starts_with("A ")).collect();
        let vtext = text(&verify);
        let copies: Vec<String> = vtext
            .lines()
            .filter_map(|l| {
                l.strip_prefix("LOST ")?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .take(3)
            .map(|lba| {
                let [a, b] = [1, 2].map(|n| block_of(&c.disk(n), lba * 512)[..24].to_vec());
                format!("LBA {lba}: node1 {a:02x?} node2 {b:02x?}")
            })
            .collect();
        panic!(
            "verify: {vtext}\nwriter: first record {first_record}, {acked_before} acknowledged before the resize, \
             logins and failures: {events:?}\ncopies: {copies:#?}\nstatus: {} {}\n{}",
            c.status(1),
            c.status(2),
            c.logs()
        );
    }

    // The new area resyncs to the Secondary.
    let synced = c.wait_for(
        Duration::from_secs(60),
        "both in sync after the resize",
        || {
            let (a, b) = (c.status(p), c.status(s));
            (in_sync(&a) && in_sync(&b)).then_some(a)
        },
    );
    let sent_kib = peer(&synced, "resync_sent_kib").as_u64().unwrap_or(0);
    assert!(
        sent_kib >= new_kib - old_kib,
        "the new area was not resynced: {sent_kib} KiB sent for {} KiB of new area",
        new_kib - old_kib
    );
    eprintln!(
        "resize: {old_kib} KiB -> {new_kib} KiB under writes ({} acknowledged: {below} below the old end, {past} \
         past it; {failed} failed and retried by the writer); resync sent {sent_kib} KiB",
        acked.len()
    );

    // Again with --assume-clean: the new area (zeros on both nodes) is taken as in sync, nothing is resynced.
    let sent_before: Vec<serde_json::Value> = [1, 2]
        .map(|n| peer(&c.status(n), "resync_sent_kib").clone())
        .into();
    grow_backing_files(&c);
    let done = c.cli(p, &["volume", "resize", "vol0", "--assume-clean"]);
    assert!(done.contains("--assume-clean"), "{done}");
    let clean_kib = size_kib(&c);
    assert!(
        clean_kib > new_kib + (60 << 10),
        "{new_kib} KiB -> {clean_kib} KiB"
    );
    for n in [1, 2] {
        let st = c.status(n);
        assert!(
            in_sync(&st),
            "node{n} is not in sync right after --assume-clean: {st}"
        );
        assert_eq!(
            peer(&st, "resync_sent_kib"),
            &sent_before[n - 1],
            "node{n} resynced after --assume-clean: {st}"
        );
    }
    assert_eq!(readcapacity16_bytes(VIP_URL), clean_kib * 1024);
    let clean_last = clean_kib * 2 - 1;
    let answers = scsi::run_cmds(
        VIP_URL,
        who,
        &[scsi::test_unit_ready(), scsi::write16(clean_last, 0x3c)],
    );
    // The nexus of `who` was known before this resize: its first command may get the unit attention.
    assert!(
        answers[0].status == scsi::GOOD
            || (answers[0].status == scsi::CHECK_CONDITION
                && answers[0].sense_key == 6
                && answers[0].ascq == 0x2a09),
        "{:?}",
        answers[0]
    );
    assert_eq!(answers[1].status, scsi::GOOD, "{:?}", answers[1]);
    eprintln!("resize --assume-clean: {new_kib} KiB -> {clean_kib} KiB; resync sent nothing");

    // Both copies hold the same data, before and after both old ends.
    c.wait_for(Duration::from_secs(30), "both in sync", || {
        (in_sync(&c.status(p)) && in_sync(&c.status(s))).then_some(())
    });
    // The Secondary first, so the Primary's going does not make it take over.
    for n in [s, p] {
        assert!(c.stop(n), "node{n} did not stop cleanly:\n{}", c.logs());
    }
    assert_eq!(
        common::cluster::first_difference(&c.disk(1), &c.disk(2), clean_kib * 1024),
        None,
        "the data areas differ"
    );
    for n in [1, 2] {
        assert_eq!(block_of(&c.disk(n), middle * 512), vec![0x5a; 512]);
        assert_eq!(block_of(&c.disk(n), last * 512), vec![0xa5; 512]);
        assert_eq!(block_of(&c.disk(n), clean_last * 512), vec![0x3c; 512]);
    }
    // After a restart both attach at the new size (the metadata is at the new end) and connect in sync.
    let p = start_both(&mut c);
    assert_eq!(size_kib(&c), clean_kib);
    assert_eq!(readcapacity16_bytes(VIP_URL), clean_kib * 1024);
    for n in [3 - p, p] {
        assert!(c.stop(n), "node{n} did not stop cleanly:\n{}", c.logs());
    }
}
