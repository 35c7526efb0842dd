//! `twinsan demo`: with no root and no config, a complete two-node cluster on this machine, the LUN at
//! 127.0.0.10:3260 seen by a real initiator, and a clean stop on SIGTERM. Uses init's fixed addresses, so it
//! runs in the nextest group `cluster`.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{qemu, require_tool, run, text, twinsan_bin};

const URL: &str = "iscsi://127.0.0.10:3260/iqn.2025-08.local.twinsan:vol0/1";

#[test]
fn demo_without_root_serves_the_lun_at_the_vip_and_stops_cleanly() {
    let iscsi_ls = require_tool("iscsi-ls");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = Command::new(twinsan_bin());
    cmd.arg("demo")
        .args(["--size", "64M"])
        .env("TWINSAN_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if root {
        // As CI runs: prove that the demo needs no root by running it as nobody.
        use std::os::unix::process::CommandExt;
        cmd.uid(65534).gid(65534).env("TMPDIR", "/tmp");
    }
    let mut child = cmd.spawn().expect("spawn twinsan demo");
    let out = Arc::new(Mutex::new(String::new()));
    let sink = out.clone();
    let stdout = child.stdout.take().expect("stdout");
    let reader = common::collect_lines(stdout, sink);
    let seen = |needle: &str| {
        out.lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(needle)
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !seen(URL) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "twinsan demo exited ({status}) before serving:\n{}",
                out.lock().unwrap_or_else(|p| p.into_inner())
            );
        }
        assert!(Instant::now() < deadline, "no URL printed within 90 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let printed = out.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for needle in ["cluster stop", "cluster start", "status", "Ctrl-C"] {
        assert!(
            printed.contains(needle),
            "the demo does not show {needle:?}:\n{printed}"
        );
    }
    let folder = printed
        .lines()
        .find_map(|l| l.strip_prefix("twinsan demo: a two-node cluster in "))
        .map(std::path::PathBuf::from)
        .expect("the folder is printed");

    // A real initiator sees the target and its LUN at the VIP, and I/O works.
    let listing = run(
        Command::new(iscsi_ls).args(["-s", "iscsi://127.0.0.10:3260"]),
        Duration::from_secs(30),
    );
    let listing = text(&listing);
    assert!(
        listing.contains("Target:iqn.2025-08.local.twinsan:vol0") && listing.contains("Lun:1"),
        "iscsi-ls:\n{listing}"
    );
    let plan = qemu::plan(1, 64 << 20, 1 << 20, 4);
    qemu::write(URL, &plan, 1 << 20);
    qemu::verify(URL, &plan, 1 << 20);
    // The live view goes on as plain lines without a terminal.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen("node2: Online, stack on node") {
        assert!(Instant::now() < deadline, "no status line:\n{printed}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGTERM stops both nodes and the demo, status 0; the temporary folder goes.
    // SAFETY: kill(2) on the pid of our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let Some(status) = common::wait_or_kill(&mut child, deadline, Duration::from_millis(100))
    else {
        panic!("twinsan demo did not stop within 90 s of SIGTERM");
    };
    let _ = reader.join();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let printed = out.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        status.success(),
        "twinsan demo exited with {status}:\n{printed}\n{err}"
    );
    assert!(printed.contains("stopped"), "{printed}");
    assert!(
        std::net::TcpStream::connect_timeout(
            &"127.0.0.10:3260".parse().unwrap(),
            Duration::from_secs(1)
        )
        .is_err(),
        "something still serves 127.0.0.10:3260 after the demo stopped"
    );
    assert!(
        !folder.exists(),
        "the temporary folder {} is still there",
        folder.display()
    );
}
