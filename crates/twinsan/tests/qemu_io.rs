//! QEMU's iSCSI driver against `twinsan serve`: 64 MiB of patterned writes at pseudo-random offsets read back
//! verified, also after a restart; libiscsi's tools show the target, the LUN and identifiers that do not change.

mod common;

use std::process::Command;
use std::time::Duration;

use common::initiator::{rw10, LoginOptions, MiniInitiator};
use common::qemu::{self, qemu_io};
use common::{require_tool, run, text, Serve, TempDir};

const IQN: &str = "iqn.2025-08.local.twinsan:qemu";
const DISK: u64 = 256 << 20;
const CHUNK: u64 = 256 << 10;
const CHUNKS: u64 = 256; // 64 MiB in all

fn plan(seed: u64) -> Vec<(u64, u8)> {
    qemu::plan(seed, DISK, CHUNK, CHUNKS as usize)
}

fn verify(url: &str, plan: &[(u64, u8)]) {
    qemu::verify(url, plan, CHUNK)
}

fn identifiers(url: &str) -> (String, String) {
    let inq = require_tool("iscsi-inq");
    let serial = text(&run(
        Command::new(&inq).args(["-e", "1", "-c", "128", url]),
        Duration::from_secs(30),
    ));
    let ids = text(&run(
        Command::new(&inq).args(["-e", "1", "-c", "131", url]),
        Duration::from_secs(30),
    ));
    (serial, ids)
}

#[test]
fn patterned_writes_survive_a_restart() {
    let dir = TempDir::new("qemu");
    let img = dir.path().join("lun1.img");
    let lun = format!("1={}", img.display());
    let args = ["--lun", lun.as_str(), "--create", "256M"];
    let mut s = Serve::start(IQN, &args);
    let url = s.url(1);
    let plan = plan(0x7457_696e_5341_4e21);
    qemu::write(&url, &plan, CHUNK);
    verify(&url, &plan);

    let listing = text(&run(
        Command::new(require_tool("iscsi-ls")).args(["-s", &s.portal_url()]),
        Duration::from_secs(30),
    ));
    assert!(
        listing.contains(&format!("Target:{IQN}")),
        "iscsi-ls does not show the target:\n{listing}"
    );
    assert!(
        listing.contains("Lun:1") && listing.contains("DIRECT_ACCESS"),
        "iscsi-ls does not show LUN 1:\n{listing}"
    );
    let (serial, ids) = identifiers(&url);
    assert!(
        serial.contains("Unit Serial Number:["),
        "no serial number:\n{serial}"
    );
    assert!(
        ids.contains("Designator Type:(3) NAA"),
        "no NAA designator:\n{ids}"
    );
    assert!(
        ids.contains(&format!("Designator:[{IQN}]")),
        "no target name designator:\n{ids}"
    );

    assert!(
        s.stop(),
        "twinsan serve did not exit cleanly on SIGTERM:\n{}",
        s.log()
    );
    let s2 = Serve::start_at(IQN, s.addr, &args);
    verify(&s2.url(1), &plan);
    assert_eq!(
        identifiers(&s2.url(1)),
        (serial, ids),
        "LUN identifiers changed across a restart"
    );
}

#[test]
fn plan_is_distinct_and_covers_64_mib() {
    let p = plan(1);
    let mut offs: Vec<u64> = p.iter().map(|x| x.0).collect();
    offs.sort();
    offs.dedup();
    assert_eq!(offs.len() as u64 * CHUNK, 64 << 20);
    assert!(p.iter().all(|&(o, pat)| o + CHUNK <= DISK && pat != 0));
}

/// Writes and reads that are not 4 KiB aligned, with O_DIRECT on the backing file (the bounce-buffer path).
#[test]
fn direct_io_handles_unaligned_requests() {
    let dir = TempDir::new("direct");
    let lun = format!("1={}", dir.path().join("lun1.img").display());
    let s = Serve::start(IQN, &["--lun", &lun, "--create", "16M", "--direct"]);
    let url = s.url(1);
    let cmds: Vec<String> = [
        (512u64, 1536u64, 0x11u8),
        (4096, 8192, 0x22),
        (1_049_088, 70_144, 0x33),
    ]
    .iter()
    .flat_map(|(off, len, p)| {
        [
            format!("write -P {p:#04x} {off} {len}"),
            format!("read -P {p:#04x} {off} {len}"),
        ]
    })
    .collect();
    let out = qemu_io(&url, &cmds);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("read ")).count(),
        3,
        "{out}"
    );
    // The bytes around an unaligned write are untouched (read-modify-write kept them).
    let out = qemu_io(
        &url,
        &[
            "read -P 0 0 512".to_string(),
            "read -P 0 2048 2048".to_string(),
        ],
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with("read ")).count(),
        2,
        "{out}"
    );
}

/// With --read-only, reads work, QEMU sees a write-protected LUN, and a WRITE gets DATA PROTECT without changing
/// the data.
#[test]
fn read_only_refuses_writes() {
    let dir = TempDir::new("ro");
    let img = dir.path().join("lun1.img");
    std::fs::write(&img, vec![0x5au8; 1 << 20]).expect("write image");
    let lun = format!("1={}", img.display());
    let s = Serve::start(IQN, &["--lun", &lun, "--read-only"]);
    let mut cmd = Command::new(require_tool("qemu-io"));
    cmd.args(["-r", "-f", "raw", "-c", "read -P 0x5a 0 64k", &s.url(1)]);
    let out = run(&mut cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "read-only open and read failed:\n{}",
        text(&out)
    );
    let mut cmd = Command::new(require_tool("qemu-io"));
    cmd.args(["-f", "raw", "-c", "write -P 0x11 0 4k", &s.url(1)]);
    let t = text(&run(&mut cmd, Duration::from_secs(60)));
    assert!(
        t.contains("write protected"),
        "QEMU did not see the LUN as write protected:\n{t}"
    );

    let mut ini = MiniInitiator::login(s.addr, &LoginOptions::normal(IQN, "ro")).expect("login");
    let o = ini
        .scsi(rw10(0x2a, 0, 1), &[0x11; 512], 0)
        .expect("WRITE(10) answered");
    assert_eq!(
        o.status, 0x02,
        "WRITE(10) to a read-only LUN: status {:#04x}",
        o.status
    );
    assert_eq!(
        (o.sense.get(2).map(|k| k & 0x0f), o.sense.get(12)),
        (Some(0x07), Some(&0x27)),
        "sense {:02x?}",
        o.sense
    );
    assert_eq!(
        std::fs::read(&img).expect("read image"),
        vec![0x5au8; 1 << 20],
        "read-only image changed"
    );
}

/// A block device as the LUN: a loop device over a file (needs root, as the test command runs).
#[test]
fn block_device_lun() {
    let losetup = require_tool("losetup");
    let dir = TempDir::new("blockdev");
    let img = dir.path().join("backing.img");
    std::fs::write(&img, vec![0u8; 8 << 20]).expect("write backing file");
    let out = run(
        Command::new(&losetup).args(["--find", "--show"]).arg(&img),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "losetup failed (the test command runs as root): {}",
        text(&out)
    );
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Detach the loop device whatever happens below.
    struct Detach(std::path::PathBuf, String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new(&self.0).args(["-d", &self.1]).status();
        }
    }
    let _detach = Detach(losetup, dev.clone());
    let lun = format!("1={dev}");
    let s = Serve::start(IQN, &["--lun", &lun]);
    let info = text(&run(
        Command::new(require_tool("qemu-img")).args(["info", &s.url(1)]),
        Duration::from_secs(30),
    ));
    assert!(
        info.contains("(8388608 bytes)"),
        "the block device's size is not what READ CAPACITY reports:\n{info}"
    );
    qemu_io(
        &s.url(1),
        &[
            "write -P 0x77 4096 64k".to_string(),
            "read -P 0x77 4096 64k".to_string(),
        ],
    );
}
