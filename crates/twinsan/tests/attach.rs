//! `twinsan volume detach` and `volume attach` on two `twinsan node run` daemons (127.0.0.11/12, manual mode), like
//! `drbdadm detach/attach`: a disk that fills up (ENOSPC on a small tmpfs) is detached under writes and the
//! writes go on; a Secondary's and a Primary's disk come back with `volume attach` (the Primary's while it serves,
//! under the verifying writer) and a bitmap resync of only what was written meanwhile; detach and attach by command; the refusals (a Primary's only copy, a foreign or
//! unreadable superblock, left unchanged) and a new `create-md` disk synced in full.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cluster::{first_difference, in_sync, peer, Cluster};
use common::netns::Proc;
use common::scsi::libiscsi_tool;
use common::{poll_until, qemu, run, text, writer, TempDir};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 256 << 10;
/// The volume's size: `twinsan init --size 64M`.
const VOLUME: u64 = 64 * MIB;
/// The tmpfs holding one node's disk: the metadata and the first writes, and room for the resync later.
const TMPFS_MIB: u64 = 12;
/// The tmpfs of the Primary's disk, which the verifying writer also writes to after the attach (up to a few MiB,
/// as fast as the machine is): room enough that the disk does not fill up again.
const PRIMARY_TMPFS_MIB: u64 = 40;

/// A tmpfs mounted on a directory of a `TempDir`; unmounted on drop (lazily if a file on it is still open).
struct Tmpfs {
    dir: PathBuf,
    mib: u64,
}

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Tmpfs {
        let out = run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700")])
                .arg("twinsan-test")
                .arg(dir),
            Duration::from_secs(20),
        );
        assert!(out.status.success(), "mount tmpfs: {}", text(&out));
        Tmpfs {
            dir: dir.to_path_buf(),
            mib,
        }
    }

    /// Fills the tmpfs with a filler file until it has no free page; the filler's path.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).expect("create filler");
        // Bounded: the tmpfs holds `mib` MiB.
        for size in [MIB as usize, 4096] {
            let block = vec![0x5a_u8; size];
            for _ in 0..(self.mib * MIB) as usize / size + 1 {
                if file.write_all(&block).is_err() {
                    break;
                }
            }
        }
        let _ = file.flush();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// `count` chunks from chunk slot `first` on, every other slot, with their pattern bytes.
fn chunks(first: u64, count: u64, pattern: u8) -> Vec<(u64, u8)> {
    (0..count)
        .map(|k| ((first + 2 * k) * CHUNK, pattern.wrapping_add(k as u8) | 1))
        .collect()
}

fn kib(plan: &[(u64, u8)]) -> u64 {
    plan.len() as u64 * CHUNK / 1024
}

/// A manual pair of 64 MiB whose node `on_tmpfs` has its disk on the tmpfs at `mnt` (created there, then
/// `volume create-md` by the CLI, the config pointed at it): both connected, in sync (a new pair,
/// `--clear-bitmap`), node1 Primary. Returns the cluster and that node's data file.
fn pair_with_disk_on(tag: &str, on_tmpfs: usize, mnt: &Path) -> (Cluster, PathBuf) {
    let mut c = Cluster::init(tag, true, "64M");
    let size = std::fs::metadata(c.disk(on_tmpfs)).expect("disk").len();
    let disk = mnt.join("vol0.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(size))
        .expect("disk on the tmpfs");
    let config = std::fs::read_to_string(&c.config).expect("config");
    let old = format!("path = \"node{on_tmpfs}/vol0.img\"");
    assert!(config.contains(&old), "{config}");
    let config = config.replacen(&old, &format!("path = \"{}\"", disk.display()), 1);
    std::fs::write(&c.config, config).expect("config");
    c.cli(on_tmpfs, &["volume", "create-md", "vol0"]);
    start_in_sync(&mut c);
    (c, disk)
}

fn start_in_sync(c: &mut Cluster) {
    c.start(1);
    c.start(2);
    c.skip_initial_sync(&[1, 2]);
    c.cli(1, &["volume", "primary", "vol0"]);
}

fn diskless(s: &serde_json::Value) -> bool {
    s["disk"] == "Diskless"
}

/// Waits for the resync to end on `source`; asserts it sent at least `written` KiB and at most 5 % more.
fn assert_bitmap_resync(c: &Cluster, source: usize, written: u64) -> u64 {
    let s = c.wait_status(source, Duration::from_secs(60), "resync done", in_sync);
    let sent = peer(&s, "resync_sent_kib")
        .as_u64()
        .expect("resync_sent_kib");
    println!("resync sent {sent} KiB for {written} KiB written while the disk was away");
    assert!(
        sent >= written && sent * 100 <= written * 105,
        "a bitmap resync of what changed: sent {sent} KiB for {written} KiB written meanwhile: {s}"
    );
    c.wait_status(
        3 - source,
        Duration::from_secs(20),
        "UpToDate on the other",
        in_sync,
    );
    sent
}

fn assert_identical(c: &Cluster, a: &Path, b: &Path) {
    assert_eq!(
        first_difference(a, b, VOLUME),
        None,
        "the data areas differ\n{}",
        c.logs()
    );
}

#[test]
fn cluster_a_secondary_disk_that_fills_up_is_detached_and_attach_resyncs_what_it_missed() {
    let mnt = TempDir::new("attach-tmpfs");
    let tmpfs = Tmpfs::mount(mnt.path(), TMPFS_MIB);
    let (c, disk2) = pair_with_disk_on("attach-enospc", 2, mnt.path());
    let before = chunks(0, 4, 0x10);
    qemu::write(&c.url(1), &before, CHUNK);
    let filler = tmpfs.fill();
    // The first of these fails on node2's full disk: node2 detaches it, node1 marks it and the rest.
    let meanwhile = chunks(40, 16, 0x40);
    qemu::write(&c.url(1), &meanwhile, CHUNK);
    let s2 = c.wait_status(2, Duration::from_secs(20), "Diskless", diskless);
    assert_eq!(s2["role"], "Secondary", "{s2}");
    assert!(c.log(2).contains("I/O error"), "{}", c.logs());
    let s1 = c.status(1);
    assert_eq!(peer(&s1, "peer_disk"), "Diskless", "{s1}");
    assert_eq!(peer(&s1, "out_of_sync_kib"), kib(&meanwhile), "{s1}");
    // Room again: attach, and only what was written meanwhile travels.
    std::fs::remove_file(&filler).expect("remove the filler");
    c.cli(2, &["volume", "attach", "vol0"]);
    assert_bitmap_resync(&c, 1, kib(&meanwhile));
    assert_identical(&c, &c.disk(1), &disk2);
    qemu::verify(&c.url(1), &meanwhile, CHUNK);
    qemu::verify(&c.url(1), &before, CHUNK);
}

#[test]
fn cluster_a_primary_whose_disk_fills_up_serves_through_its_peer_and_attaches_it_again_while_serving(
) {
    let mnt = TempDir::new("attach-tmpfs");
    let tmpfs = Tmpfs::mount(mnt.path(), PRIMARY_TMPFS_MIB);
    let (c, disk1) = pair_with_disk_on("attach-primary", 1, mnt.path());
    let before = chunks(0, 4, 0x20);
    qemu::write(&c.url(1), &before, CHUNK);
    let filler = tmpfs.fill();
    // Writes and reads at the Primary go on: its disk is detached and node2's copy serves.
    let meanwhile = chunks(60, 16, 0x60);
    qemu::write(&c.url(1), &meanwhile, CHUNK);
    let s1 = c.wait_status(1, Duration::from_secs(20), "Diskless", diskless);
    assert_eq!(s1["role"], "Primary", "{s1}");
    assert_eq!(peer(&s1, "peer_disk"), "UpToDate", "{s1}");
    qemu::verify(&c.url(1), &meanwhile, CHUNK);
    qemu::verify(&c.url(1), &before, CHUNK);
    let s2 = c.status(2);
    assert_eq!(peer(&s2, "peer_disk"), "Diskless", "{s2}");
    assert_eq!(peer(&s2, "out_of_sync_kib"), kib(&meanwhile), "{s2}");
    // Room again: the Primary attaches its disk while it serves (DRBD's attach on a diskless primary), under the
    // verifying writer (records from 40 MiB on, clear of the chunks above). It resyncs from node2.
    std::fs::remove_file(&filler).expect("remove the filler");
    let dir = TempDir::new("attach-primary-writer");
    let log = dir.path().join("writer.log");
    let writer = start_writer(&c, 40 * MIB / SECTOR, &log);
    let t0 = monotonic_ms();
    c.cli(1, &["volume", "attach", "vol0"]);
    let s2 = c.wait_status(2, Duration::from_secs(60), "resync done", in_sync);
    let t1 = monotonic_ms();
    writer::finish(writer, WRITER_S);
    // Nothing failed (`read_writer_log`), and writes were acknowledged before the attach and after the resync.
    let acks = read_writer_log(&log);
    let before_attach = acks.iter().filter(|a| a.ms < t0).count();
    let after_resync = acks.iter().filter(|a| a.ms > t1).count();
    assert!(
        before_attach > 0 && after_resync > 0,
        "the attach did not fall within the writes: {before_attach} acknowledged before it, {after_resync} after \
         the resync"
    );
    // The resync sent what was written while the disk was away: the chunks above, and the writer's blocks up to the
    // attach (node1 was still diskless); at most also the blocks it wrote until the resync ended (a write before
    // the resync starts reaches only node2's disk), and the one in flight then (queue depth 1).
    let blocks_until = |end: u64| -> BTreeSet<u64> {
        let mut blocks: BTreeSet<u64> = acks
            .iter()
            .filter(|a| a.ms < end)
            .map(|a| a.lba * SECTOR / 4096)
            .collect();
        if let Some(next) = acks.iter().find(|a| a.ms >= end) {
            blocks.insert(next.lba * SECTOR / 4096);
        }
        blocks
    };
    let sent = peer(&s2, "resync_sent_kib")
        .as_u64()
        .expect("resync_sent_kib");
    let chunks_kib = kib(&meanwhile);
    let least = chunks_kib + (blocks_until(t0).len() as u64 - 1) * 4;
    let most = chunks_kib + blocks_until(t1).len() as u64 * 4;
    println!(
        "resync sent {sent} KiB for {least}..{most} KiB written while the disk was away ({chunks_kib} KiB by qemu-io, \
         the rest by the writer: {before_attach} writes acknowledged before the attach, {after_resync} after the \
         resync)"
    );
    assert!(
        sent >= least && sent * 100 <= most * 105,
        "a bitmap resync of what changed: sent {sent} KiB for {least}..{most} KiB: {s2}"
    );
    let s1 = c.wait_status(1, Duration::from_secs(20), "UpToDate", in_sync);
    assert_eq!(s1["role"], "Primary", "{s1}");
    assert!(!c.log(1).contains("lost the link"), "{}", c.logs());
    assert_identical(&c, &disk1, &c.disk(2));
    for data in [&before, &meanwhile] {
        qemu::verify(&c.url(1), data, CHUNK);
    }
    verify_writer(&c, &log);
}

/// Reads back at node1 every block the writer's log names: nothing it was told was written is lost.
fn verify_writer(c: &Cluster, log: &Path) {
    let out = run(
        Command::new(libiscsi_tool("iscsi-writer"))
            .args(["verify", &c.url(1)])
            .arg(log),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "the writer's acknowledged blocks read back: {}",
        text(&out)
    );
}

/// Starts the verifying writer at node1 for [`WRITER_S`] from record `first_record`, logging to `log`, and waits
/// for its first hundred acknowledged writes.
fn start_writer(c: &Cluster, first_record: u64, log: &Path) -> Proc {
    let writer = Proc::spawn(
        "iscsi-writer",
        Command::new(libiscsi_tool("iscsi-writer"))
            .args([
                "write",
                &c.url(1),
                &WRITER_S.to_string(),
                &first_record.to_string(),
            ])
            .arg(log),
    );
    poll_until(
        Duration::from_secs(30),
        "the writer's first writes acknowledged",
        || writer.log(),
        || (read_writer_log(log).len() >= 100).then_some(()),
    );
    writer
}

/// The logical block of the volume's LUN (the writer writes one per record).
const SECTOR: u64 = 512;
/// How long the verifying writer writes.
const WRITER_S: u64 = 4;

/// One record the writer logged as acknowledged.
struct Ack {
    lba: u64,
    ms: u64,
}

/// The acknowledged records of an `iscsi-writer` log, in order; fails the test on a failed one (nothing here
/// should fail: the Primary keeps its disk).
fn read_writer_log(log: &Path) -> Vec<Ack> {
    let body = std::fs::read_to_string(log).unwrap_or_default();
    let mut acks = Vec::new();
    for line in body.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
        match (f.first().copied(), num(2), num(3)) {
            (Some("A"), Some(lba), Some(ms)) => acks.push(Ack { lba, ms }),
            (Some("F"), _, _) => panic!("a write failed: {line}\n{body}"),
            _ => {}
        }
    }
    acks
}

/// CLOCK_MONOTONIC in milliseconds, the writer's clock.
fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes the timespec we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// The sha256 of a file, by `sha256sum`.
fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path), Duration::from_secs(60));
    assert!(out.status.success(), "sha256sum: {}", text(&out));
    text(&out)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn cluster_detach_and_attach_by_command_refusals_and_a_new_disk_synced_in_full() {
    let mut c = Cluster::init("attach-cmd", true, "64M");
    start_in_sync(&mut c);
    // Detach under writes: the verifying writer runs at node1 while node2's disk goes, and its log says which
    // blocks were written when (CLOCK_MONOTONIC ms).
    let dir = TempDir::new("attach-writer");
    let log = dir.path().join("writer.log");
    let writer = start_writer(&c, 0, &log);
    let t0 = monotonic_ms();
    c.cli(2, &["volume", "detach", "vol0"]);
    let s2 = c.wait_status(2, Duration::from_secs(20), "Diskless", diskless);
    let t1 = monotonic_ms();
    assert_eq!(peer(&s2, "connection"), "Connected", "{s2}");
    writer::finish(writer, WRITER_S);
    let acks = read_writer_log(&log);
    // Written while the disk was away, by the writer's own log: at most every block acknowledged from the
    // start of the detach command on (one acknowledged before it is on both disks: protocol C); at least every
    // block written after node2 reported Diskless (queue depth 1: a record whose predecessor was acknowledged
    // after t1 was sent after t1).
    let most: BTreeSet<u64> = acks.iter().filter(|a| a.ms >= t0).map(|a| a.lba).collect();
    let least: BTreeSet<u64> = acks
        .windows(2)
        .filter(|w| w[0].ms > t1)
        .map(|w| w[1].lba)
        .collect();
    let before_detach = acks.iter().filter(|a| a.ms < t0).count();
    assert!(
        before_detach > 0 && !least.is_empty(),
        "the detach did not fall within the writes: {before_detach} acknowledged before it, {} after",
        least.len()
    );
    // The only copy of a Primary is not given up.
    let refused = c.cli_fails(1, &["volume", "detach", "vol0"]);
    assert!(
        refused.contains("Primary") && refused.contains("UpToDate"),
        "{refused}"
    );
    assert_eq!(c.status(1)["disk"], "UpToDate");
    let after = chunks(80, 8, 0x70);
    qemu::write(&c.url(1), &after, CHUNK);
    c.cli(2, &["volume", "attach", "vol0"]);
    let s = c.wait_status(1, Duration::from_secs(60), "resync done", in_sync);
    let sent = peer(&s, "resync_sent_kib")
        .as_u64()
        .expect("resync_sent_kib");
    let (least_kib, most_kib) = (
        least.len() as u64 * SECTOR / 1024 + kib(&after),
        most.len() as u64 * SECTOR / 1024 + kib(&after),
    );
    println!(
        "resync sent {sent} KiB; written while detached (distinct): between {least_kib} and {most_kib} KiB \
         ({} and {} writer blocks of {SECTOR} bytes, plus {} KiB by qemu-io)",
        least.len(),
        most.len(),
        kib(&after)
    );
    assert!(
        sent >= least_kib && sent * 100 <= most_kib * 105,
        "a bitmap resync of what changed: sent {sent} KiB for {least_kib}..{most_kib} KiB written meanwhile: {s}"
    );
    c.wait_status(2, Duration::from_secs(20), "UpToDate", in_sync);
    assert_identical(&c, &c.disk(1), &c.disk(2));
    verify_writer(&c, &log);

    // A foreign superblock (another volume's metadata) and an unreadable one: refused, the disk unchanged.
    c.cli(2, &["volume", "detach", "vol0"]);
    let config = std::fs::read_to_string(&c.config).expect("config");
    let uuid_line = config
        .lines()
        .find(|l| l.starts_with("uuid = "))
        .expect("uuid line")
        .to_owned();
    let foreign_config = c.folder().join("foreign.toml");
    std::fs::write(
        &foreign_config,
        config.replacen(&uuid_line, "uuid = \"0123456789abcdef0123456789abcdef\"", 1),
    )
    .expect("foreign config");
    let out = run(
        Command::new(common::twinsan_bin())
            .arg("--config")
            .arg(&foreign_config)
            .args(["--node", "node2", "volume", "create-md", "--force", "vol0"]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "create-md: {}", text(&out));
    let sha = sha256(&c.disk(2));
    let refused = c.cli_fails(2, &["volume", "attach", "vol0"]);
    assert!(
        refused.contains("belongs to volume uuid 0123456789abcdef0123456789abcdef"),
        "{refused}"
    );
    assert_eq!(
        sha256(&c.disk(2)),
        sha,
        "a refused attach wrote to the disk"
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(c.disk(2))
        .expect("disk");
    let len = file.metadata().expect("len").len();
    use std::os::unix::fs::FileExt;
    file.write_all_at(&vec![0xa5; (len - VOLUME) as usize], VOLUME)
        .expect("garbage over the metadata");
    file.flush().expect("flush");
    drop(file);
    let sha = sha256(&c.disk(2));
    let refused = c.cli_fails(2, &["volume", "attach", "vol0"]);
    assert!(refused.contains("no twinsan metadata"), "{refused}");
    assert_eq!(
        sha256(&c.disk(2)),
        sha,
        "a refused attach wrote to the disk"
    );
    assert_eq!(c.status(2)["disk"], "Diskless");

    // A new disk: create-md, attach, a full sync.
    c.cli(2, &["volume", "create-md", "--force", "vol0"]);
    c.cli(2, &["volume", "attach", "vol0"]);
    let s = c.wait_status(1, Duration::from_secs(120), "full sync done", in_sync);
    let sent = peer(&s, "resync_sent_kib")
        .as_u64()
        .expect("resync_sent_kib");
    assert_eq!(sent, VOLUME / 1024, "a full sync of a new disk: {s}");
    c.wait_status(2, Duration::from_secs(20), "UpToDate", in_sync);
    assert_identical(&c, &c.disk(1), &c.disk(2));
    qemu::verify(&c.url(1), &after, CHUNK);
}
