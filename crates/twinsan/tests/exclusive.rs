//! One process owns a backing store (SPEC 3, invariant 9): a second `twinsan node run` of a running node, a
//! `volume create-md` on its disk, or a second `twinsan serve` of a served file or block device is refused with
//! the holder's pid, and leaves the store byte for byte as it was while the first process goes on.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::cluster::Cluster;
use common::initiator::{LoginOptions, MiniInitiator};
use common::{free_port, require_tool, run, text, twinsan_bin, Serve, TempDir};

const IQN: &str = "iqn.2025-08.local.twinsan:exclusive";

/// The SHA-256 of the whole file or device, in hex.
fn sha256(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hash = Sha256::new();
    std::io::copy(&mut file, &mut hash).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    format!("{:x}", hash.finalize())
}

/// Checks that `out` is a refusal with status 1 (the operation failed) naming `path` and the holder `pid`.
fn assert_refused(out: &Output, what: &str, path: &Path, pid: u32) -> String {
    let shown = text(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what} must fail with status 1:\n{shown}"
    );
    for part in [
        path.display().to_string(),
        format!("in use by process {pid}"),
        "nothing was read or written".to_string(),
    ] {
        assert!(
            shown.contains(&part),
            "{what}: {part:?} missing from the refusal:\n{shown}"
        );
    }
    shown
}

#[test]
fn cluster_a_second_node_run_of_a_running_primary_is_refused_and_changes_nothing() {
    let mut c = Cluster::init("excl-node", true, "64M");
    c.start(1);
    // Alone and forced: Primary, so its superblock says so (the flags a second attach would rewrite).
    c.cli(1, &["volume", "primary", "--force", "vol0"]);
    c.wait_status(1, Duration::from_secs(20), "Primary", |s| {
        s["role"] == "Primary"
    });
    let pid = c.nodes[0].as_ref().expect("node1 runs").pid();
    let disk = c.disk(1);
    let before = sha256(&disk);

    let out = run(
        Command::new(twinsan_bin())
            .args(["node", "run", "--config"])
            .arg(&c.config)
            .args(["--node", "node1"])
            .env("TWINSAN_LOG", "info"),
        Duration::from_secs(30),
    );
    let shown = assert_refused(&out, "a second node run of node1", &disk, pid);
    assert!(
        !shown.contains("attaching") && !shown.contains("volume started"),
        "the second daemon got as far as the disk:\n{shown}"
    );

    // The offline metadata command is refused the same way, --force or not.
    let out = run(
        Command::new(twinsan_bin())
            .arg("--config")
            .arg(&c.config)
            .args(["--node", "node1", "volume", "create-md", "--force", "vol0"]),
        Duration::from_secs(30),
    );
    assert_refused(&out, "create-md on the running node's disk", &disk, pid);

    assert_eq!(
        sha256(&disk),
        before,
        "the running Primary's disk changed\n{}",
        c.logs()
    );
    let s = c.status(1);
    assert_eq!(s["role"], "Primary", "node1 after the refusals: {s}");
    assert!(
        c.nodes[0].as_mut().is_some_and(|p| p.running()),
        "node1 stopped:\n{}",
        c.logs()
    );
}

/// `twinsan serve --iqn IQN --listen 127.0.0.1:PORT --lun 1=STORE ARGS`, run to its end.
fn second_serve(store: &Path, args: &[&str]) -> Output {
    run(
        Command::new(twinsan_bin())
            .args(["serve", "--iqn", IQN, "--listen"])
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--lun")
            .arg(format!("1={}", store.display()))
            .args(args),
        Duration::from_secs(30),
    )
}

/// Logs in to `serve`, writes a pattern at LBA 8 and reads it back; the pattern.
fn write_and_read(serve: &Serve, who: &str, fill: u8) -> Vec<u8> {
    let mut ini = MiniInitiator::login(serve.addr, &LoginOptions::normal(IQN, who))
        .unwrap_or_else(|e| panic!("login as {who}: {e}\n{}", serve.log()));
    let data = vec![fill; 4096];
    ini.write10(8, &data)
        .unwrap_or_else(|e| panic!("WRITE(10) as {who}: {e}\n{}", serve.log()));
    assert_eq!(
        ini.read10(8, data.len())
            .unwrap_or_else(|e| panic!("READ(10) as {who}: {e}\n{}", serve.log())),
        data
    );
    ini.logout()
        .unwrap_or_else(|e| panic!("logout as {who}: {e}"));
    data
}

#[test]
fn a_second_serve_of_a_served_file_is_refused_and_the_first_keeps_serving() {
    let dir = TempDir::new("excl-serve");
    let store = dir.path().join("lun1.img");
    let lun = format!("1={}", store.display());
    let mut first = Serve::start(IQN, &["--lun", &lun, "--create", "16M"]);
    let pid = first.pid().expect("the first serve runs");
    write_and_read(&first, "first", 0xa5);
    let before = sha256(&store);

    // --create would grow the file to 32 MiB if the claim came after it.
    let out = second_serve(&store, &["--create", "32M"]);
    assert_refused(&out, "a second serve of the file", &store, pid);
    let out = second_serve(&store, &["--read-only"]);
    assert_refused(&out, "a read-only second serve of the file", &store, pid);
    assert_eq!(sha256(&store), before, "the served file changed");
    assert_eq!(
        std::fs::metadata(&store).expect("stat").len(),
        16 << 20,
        "the served file was resized"
    );

    assert!(first.alive(), "the first serve stopped:\n{}", first.log());
    write_and_read(&first, "after", 0x5a);
    assert!(first.stop(), "the first serve did not stop cleanly");
    // Released with the process: the store can be served again.
    let mut again = Serve::start(IQN, &["--lun", &lun]);
    assert!(again.stop(), "the store was not released:\n{}", again.log());
}

/// A loop device over a file in a folder of ours, detached on drop (needs root, as the test command runs).
struct LoopDevice {
    losetup: PathBuf,
    dev: PathBuf,
}

impl LoopDevice {
    fn new(backing: &Path) -> LoopDevice {
        let losetup = require_tool("losetup");
        let out = run(
            Command::new(&losetup)
                .args(["--find", "--show"])
                .arg(backing),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "losetup failed (the test command runs as root): {}",
            text(&out)
        );
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        LoopDevice { losetup, dev }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new(&self.losetup)
            .arg("-d")
            .arg(&self.dev)
            .status();
    }
}

#[test]
fn a_second_serve_of_a_served_block_device_is_refused() {
    let dir = TempDir::new("excl-block");
    let backing = dir.path().join("backing.img");
    std::fs::write(&backing, vec![0u8; 8 << 20]).expect("write the backing file");
    let dev = LoopDevice::new(&backing);
    let lun = format!("1={}", dev.dev.display());
    let first = Serve::start(IQN, &["--lun", &lun]);
    let pid = first.pid().expect("the first serve runs");
    write_and_read(&first, "block-first", 0x3c);
    let before = sha256(&dev.dev);

    // O_EXCL refuses the open; the first serve's shared lock on the device node names it.
    let out = second_serve(&dev.dev, &[]);
    assert_refused(&out, "a second serve of the block device", &dev.dev, pid);
    assert_eq!(sha256(&dev.dev), before, "the served device changed");
    write_and_read(&first, "block-after", 0xc3);
}
