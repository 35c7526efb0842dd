//! `twinsan demo`: with no root and no config, a complete two-node cluster on this machine, the LUN at
//! 127.0.0.10:3260 seen by a real initiator, and a clean stop on SIGTERM; with the portal's port taken by
//! another program, no URL it does not serve; after `kill -9` of the demo, none of its nodes left running. Uses
//! init's fixed addresses, so it runs in the nextest group `cluster`.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{qemu, require_tool, run, text, twinsan_bin};

const URL: &str = "iscsi://127.0.0.10:3260/iqn.2025-08.local.twinsan:vol0/1";

/// `twinsan demo --size 64M`, its output piped; as nobody when the test runs as root (as CI does), which proves
/// the demo needs no root.
fn demo_command() -> Command {
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
        use std::os::unix::process::CommandExt;
        cmd.uid(65534).gid(65534).env("TMPDIR", "/tmp");
    }
    cmd
}

#[test]
fn demo_without_root_serves_the_lun_at_the_vip_and_stops_cleanly() {
    let _addresses = common::fixed_addresses();
    let iscsi_ls = require_tool("iscsi-ls");
    let mut child = demo_command().spawn().expect("spawn twinsan demo");
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
    for needle in [
        "cluster stop",
        "cluster start",
        "status",
        "Ctrl-C",
        "http://127.0.0.11:9942/",
        "password for its actions: ",
    ] {
        assert!(
            printed.contains(needle),
            "the demo does not show {needle:?}:\n{printed}"
        );
    }
    // The console URL it prints answers.
    let console = common::http::get("127.0.0.11:9942", "/").expect("GET the console");
    assert_eq!(console.status, 200, "{}", console.headers);
    assert!(
        console.body.contains("id=\"node-node1\""),
        "{}",
        console.body
    );
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

/// A process as /proc shows it: its pid and start time (so a reused pid is not taken for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Proc {
    pid: u32,
    start: u64,
}

/// Parent pid, state and start time from /proc/PID/stat (the command name, in parentheses, may hold spaces).
fn stat(pid: u32) -> Option<(u32, char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (field 3), ppid (4), ..., starttime (22).
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, state, start))
}

/// The children of `parent`.
fn children(parent: u32) -> Vec<Proc> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some((ppid, _, start)) = stat(pid) {
            if ppid == parent {
                found.push(Proc { pid, start });
            }
        }
    }
    found
}

/// Still running: the same process (same start time) and not a zombie.
fn alive(p: Proc) -> bool {
    stat(p.pid).is_some_and(|(_, state, start)| start == p.start && state != 'Z')
}

/// Kills the node processes a killed demo left, by pid, and removes its folder, whatever the test's outcome.
struct Leftovers {
    nodes: Vec<Proc>,
    folder: Option<PathBuf>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for p in &self.nodes {
            if alive(*p) {
                // SAFETY: kill(2) on a process this test started (through the demo), checked by its start time.
                unsafe {
                    libc::kill(p.pid as i32, libc::SIGKILL);
                }
            }
        }
        if let Some(folder) = &self.folder {
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.nodes.iter().any(|p| alive(*p)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = std::fs::remove_dir_all(folder);
        }
    }
}

/// A demo started by [`demo_until`]: the process and everything it printed (stdout and stderr).
struct Demo {
    child: Child,
    out: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Demo {
    fn printed(&self) -> String {
        self.out.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits for the output's end (the demo exited) and returns all of it.
    fn finished_output(&mut self) -> String {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.printed()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // A failed test: the demo goes (and its nodes with it).
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
    }
}

/// Runs the demo until it prints `until` or exits.
fn demo_until(until: &str, limit: Duration) -> Demo {
    let mut child = demo_command().spawn().expect("spawn twinsan demo");
    let out = Arc::new(Mutex::new(String::new()));
    let readers = vec![
        common::collect_lines(child.stdout.take().expect("stdout"), out.clone()),
        common::collect_lines(child.stderr.take().expect("stderr"), out.clone()),
    ];
    let mut demo = Demo {
        child,
        out,
        readers,
    };
    let deadline = Instant::now() + limit;
    loop {
        if demo.printed().contains(until) {
            break;
        }
        if let Ok(Some(_)) = demo.child.try_wait() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the demo neither printed {until:?} nor exited within {limit:?}:\n{}",
            demo.printed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    demo
}

/// Every `iscsi://` URL in `printed` answers a real initiator's INQUIRY.
fn every_url_answers(printed: &str) {
    let inq = require_tool("iscsi-inq");
    let urls: std::collections::BTreeSet<&str> = printed
        .split_whitespace()
        .filter(|w| w.starts_with("iscsi://") && w.matches('/').count() >= 4)
        .collect();
    for url in urls {
        let out = run(Command::new(&inq).arg(url), Duration::from_secs(30));
        assert!(
            out.status.success(),
            "the demo printed {url}, which does not answer:\n{}\n--- the demo printed:\n{printed}",
            text(&out)
        );
    }
}

#[test]
fn demo_with_its_port_taken_prints_no_url_it_does_not_serve_and_its_nodes_die_with_it() {
    // Another program on 0.0.0.0:3260, which also keeps anyone from binding 127.0.0.10:3260. (If the machine has
    // one already, that one does it.)
    let _addresses = common::fixed_addresses();
    let held = TcpListener::bind("0.0.0.0:3260").ok();
    let mut demo = demo_until(URL, Duration::from_secs(90));
    match demo.child.try_wait() {
        Ok(Some(status)) => {
            // It says why it cannot run, naming the port.
            let printed = demo.finished_output();
            assert!(!status.success(), "the demo exited with 0:\n{printed}");
            assert!(
                printed.contains("127.0.0.10:3260") && printed.contains("in use"),
                "the demo failed without naming the port in use:\n{printed}"
            );
        }
        _ => {
            // Or it serves somewhere else, and says where.
            every_url_answers(&demo.printed());
            // SAFETY: kill(2) on the pid of our own child, not yet reaped.
            unsafe {
                libc::kill(demo.child.id() as i32, libc::SIGTERM);
            }
            let stopped = common::wait_or_kill(
                &mut demo.child,
                Instant::now() + Duration::from_secs(90),
                Duration::from_millis(100),
            );
            assert!(stopped.is_some(), "the demo did not stop on SIGTERM");
        }
    }
    drop(held);

    // With the port free: once it serves, kill -9 of the demo takes its nodes with it.
    let mut demo = demo_until(URL, Duration::from_secs(90));
    let printed = demo.printed();
    let leftovers = Leftovers {
        nodes: children(demo.child.id()),
        folder: printed
            .lines()
            .find_map(|l| l.strip_prefix("twinsan demo: a two-node cluster in "))
            .map(PathBuf::from),
    };
    assert!(
        matches!(demo.child.try_wait(), Ok(None)),
        "the demo exited:\n{printed}"
    );
    every_url_answers(&printed);
    assert_eq!(
        leftovers.nodes.len(),
        2,
        "the demo runs two nodes: {:?}",
        leftovers.nodes
    );
    // SAFETY: kill(2) on the pid of our own child, not yet reaped.
    unsafe {
        libc::kill(demo.child.id() as i32, libc::SIGKILL);
    }
    let _ = demo.child.wait();
    let deadline = Instant::now() + Duration::from_secs(60);
    while leftovers.nodes.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "nodes of the killed demo still run 60 s later: {:?}",
            leftovers.nodes
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        std::net::TcpStream::connect_timeout(
            &"127.0.0.10:3260".parse().unwrap(),
            Duration::from_secs(1)
        )
        .is_err(),
        "something still serves 127.0.0.10:3260 after the demo's nodes died"
    );
}
