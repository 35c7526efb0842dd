//! A two-node cluster on this machine for acceptance tests: `twinsan init` writes it into a temporary folder,
//! `twinsan node run` runs each node (127.0.0.11 and 127.0.0.12, as init writes), and the CLI talks to them.
//!
//! Every daemon is stopped by its pid when the guard drops; the folder goes with the `TempDir`. The tests that
//! use it share the fixed addresses of `twinsan init`, so nextest runs them one at a time (test group
//! `cluster`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{run, text, twinsan_bin, TempDir};

pub const IQN: &str = "iqn.2025-08.local.twinsan:vol0";

/// A cluster made by `twinsan init`.
pub struct Cluster {
    pub dir: TempDir,
    pub config: PathBuf,
    pub nodes: [Option<NodeProc>; 2],
    /// Dropped last (fields drop in order): the daemons are gone before another test may take the addresses.
    _addresses: super::FixedAddresses,
}

/// A running `twinsan node run`.
pub struct NodeProc {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl NodeProc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the daemon is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child this guard started and has not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Cluster {
    /// `twinsan init DIR [--manual] --size SIZE`.
    pub fn init(tag: &str, manual: bool, size: &str) -> Cluster {
        let addresses = super::fixed_addresses();
        let dir = TempDir::new(tag);
        let mut cmd = Command::new(twinsan_bin());
        cmd.arg("init").arg(dir.path().join("c"));
        if manual {
            cmd.arg("--manual");
        }
        cmd.args(["--size", size]);
        let out = run(&mut cmd, Duration::from_secs(60));
        assert!(out.status.success(), "twinsan init failed:\n{}", text(&out));
        let config = dir.path().join("c").join("twinsan.toml");
        Cluster {
            dir,
            config,
            nodes: [None, None],
            _addresses: addresses,
        }
    }

    pub fn folder(&self) -> PathBuf {
        self.dir.path().join("c")
    }

    /// The data file of a node's copy of vol0.
    pub fn disk(&self, node: usize) -> PathBuf {
        self.folder().join(format!("node{node}")).join("vol0.img")
    }

    /// Starts node `n` (1 or 2) and waits until its admin socket answers.
    pub fn start(&mut self, n: usize) {
        self.start_with_env(n, &[]);
    }

    /// [`Cluster::start`] with these environment variables set for the daemon.
    pub fn start_with_env(&mut self, n: usize, env: &[(&str, &str)]) {
        let mut child = Command::new(twinsan_bin())
            .args(["node", "run", "--config"])
            .arg(&self.config)
            .args(["--node", &format!("node{n}")])
            .env("TWINSAN_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn twinsan node run");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        super::collect_lines(stderr, sink);
        self.nodes[n - 1] = Some(NodeProc { child, log });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.cli_raw(n, &["volume", "status", "--json", "vol0"]);
            if out.0 {
                return;
            }
            if let Some(p) = self.nodes[n - 1].as_mut() {
                if let Ok(Some(status)) = p.child.try_wait() {
                    panic!("node{n} exited ({status}):\n{}", self.log(n));
                }
            }
            assert!(
                Instant::now() < deadline,
                "node{n} did not answer on its admin socket:\n{}",
                self.log(n)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What node `n` logged.
    pub fn log(&self, n: usize) -> String {
        self.nodes[n - 1]
            .as_ref()
            .map(|p| p.log.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    /// Both logs, for assertion messages.
    pub fn logs(&self) -> String {
        format!("--- node1:\n{}\n--- node2:\n{}", self.log(1), self.log(2))
    }

    /// kill -9 of node `n`.
    pub fn kill(&mut self, n: usize) {
        if let Some(p) = self.nodes[n - 1].as_mut() {
            // SAFETY: kill(2) on the pid of our own child.
            unsafe {
                libc::kill(p.child.id() as i32, libc::SIGKILL);
            }
            let _ = p.child.wait();
        }
    }

    /// SIGTERM to node `n`; returns whether it exited with status 0.
    pub fn stop(&mut self, n: usize) -> bool {
        let Some(p) = self.nodes[n - 1].as_mut() else {
            return true;
        };
        // SAFETY: kill(2) on the pid of our own child.
        unsafe {
            libc::kill(p.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cli_raw(&self, n: usize, args: &[&str]) -> (bool, String) {
        let mut cmd = Command::new(twinsan_bin());
        cmd.arg("--config")
            .arg(&self.config)
            .args(["--node", &format!("node{n}")]);
        cmd.args(args);
        let out = run(&mut cmd, Duration::from_secs(120));
        (out.status.success(), text(&out))
    }

    /// `twinsan --config C --node nodeN ARGS`, which must succeed; its output.
    pub fn cli(&self, n: usize, args: &[&str]) -> String {
        let (ok, out) = self.cli_raw(n, args);
        assert!(
            ok,
            "twinsan {args:?} on node{n} failed:\n{out}\n{}",
            self.logs()
        );
        out
    }

    /// The same, expected to fail; its output.
    pub fn cli_fails(&self, n: usize, args: &[&str]) -> String {
        let (ok, out) = self.cli_raw(n, args);
        assert!(
            !ok,
            "twinsan {args:?} on node{n} should have failed:\n{out}"
        );
        out
    }

    /// `volume status --json vol0` on node `n`.
    pub fn status(&self, n: usize) -> serde_json::Value {
        self.volume_status(n, "vol0")
    }

    /// `volume status --json VOLUME` on node `n`.
    pub fn volume_status(&self, n: usize, volume: &str) -> serde_json::Value {
        let out = self.cli(n, &["volume", "status", "--json", volume]);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("status JSON ({e}):\n{out}"))
    }

    /// `twinsan status --json` (the cluster) on node `n`.
    pub fn cluster_status(&self, n: usize) -> serde_json::Value {
        let out = self.cli(n, &["status", "--json"]);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("status JSON ({e}):\n{out}"))
    }

    /// Polls `status --json` on node `n` until `pred` holds (at most `limit`); returns that status.
    pub fn wait_cluster(
        &self,
        n: usize,
        limit: Duration,
        what: &str,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.wait_for(limit, &format!("node{n}: {what}"), || {
            let s = self.cluster_status(n);
            pred(&s).then_some(s)
        })
    }

    /// Starts both nodes of a managed pair and waits until vol0's stack runs on one of them, both online;
    /// returns that node (1 or 2).
    pub fn start_both_until_stack(&mut self) -> usize {
        self.start(1);
        self.start(2);
        let s = self.wait_cluster(
            1,
            Duration::from_secs(30),
            "the stack up on one node",
            |s| stack_on(s).is_some() && online(s).len() == 2,
        );
        let node = stack_on(&s).unwrap_or_default();
        node.trim_start_matches("node").parse().unwrap_or(1)
    }

    /// A new pair (both disks Inconsistent): waits until node 1 is connected, skips the initial sync
    /// (`new-current-uuid --clear-bitmap` on node 1) and waits until each of `nodes` sees both copies UpToDate.
    pub fn skip_initial_sync(&self, nodes: &[usize]) {
        self.wait_status(1, Duration::from_secs(20), "Connected", |s| {
            peer(s, "connection") == "Connected"
        });
        self.cli(1, &["volume", "new-current-uuid", "--clear-bitmap", "vol0"]);
        for &n in nodes {
            self.wait_status(n, Duration::from_secs(20), "both UpToDate", in_sync);
        }
    }

    /// Polls node `n`'s status until `pred` holds, at most `limit`; returns the last status.
    pub fn wait_status(
        &self,
        n: usize,
        limit: Duration,
        what: &str,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.wait_for(limit, &format!("node{n}: {what}"), || {
            let s = self.status(n);
            pred(&s).then_some(s)
        })
    }

    /// Polls `probe` every 200 ms until it gives a value, at most `limit`; fails the test with both logs.
    pub fn wait_for<T>(&self, limit: Duration, what: &str, probe: impl FnMut() -> Option<T>) -> T {
        super::poll_until(limit, what, || self.logs(), probe)
    }

    /// The iSCSI URL of LUN 1 at node `n`'s address.
    pub fn url(&self, n: usize) -> String {
        format!("iscsi://127.0.0.1{n}:3260/{IQN}/1")
    }
}

/// `peers[0].FIELD` of a status.
/// The strings of a JSON array (empty for anything else).
pub fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Where resource `name` runs in a cluster status: (promoted, started), or None when there is no such resource.
pub fn placement(s: &serde_json::Value, name: &str) -> Option<(Vec<String>, Vec<String>)> {
    let r = s["resources"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)?;
    Some((names(&r["promoted"]), names(&r["started"])))
}

/// The node where vol0's stack runs, if it does: vol0 promoted there (only there) and VIP, target and LUN 1
/// started there (only there).
pub fn stack_on(s: &serde_json::Value) -> Option<String> {
    let (promoted, _) = placement(s, "vol0")?;
    let [node] = promoted.as_slice() else {
        return None;
    };
    for r in ["vol0-vip", "vol0-target", "vol0-lun1"] {
        if placement(s, r)?.1 != [node.clone()] {
            return None;
        }
    }
    Some(node.clone())
}

/// The nodes a cluster status shows online.
pub fn online(s: &serde_json::Value) -> Vec<String> {
    s["nodes"]
        .as_array()
        .map(|ns| {
            ns.iter()
                .filter(|n| n["online"] == true)
                .filter_map(|n| n["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn peer<'a>(s: &'a serde_json::Value, field: &str) -> &'a serde_json::Value {
    &s["peers"][0][field]
}

/// True when the volume is connected, Established and both disks are UpToDate.
pub fn in_sync(s: &serde_json::Value) -> bool {
    s["disk"] == "UpToDate"
        && peer(s, "peer_disk") == "UpToDate"
        && peer(s, "replication") == "Established"
        && peer(s, "connection") == "Connected"
}

/// Compares the first `len` bytes of two files; the offset of the first difference.
pub fn first_difference(a: &Path, b: &Path, len: u64) -> Option<u64> {
    let mut fa = std::fs::File::open(a).expect("open a");
    let mut fb = std::fs::File::open(b).expect("open b");
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = ((len - off) as usize).min(ba.len());
        fa.read_exact(&mut ba[..n]).expect("read a");
        fb.read_exact(&mut bb[..n]).expect("read b");
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Some(off + i as u64);
        }
        off += n as u64;
    }
    None
}

/// A table of our own in nftables that drops the replication traffic between the two nodes; removed on drop.
pub struct LinkCut {
    table: String,
}

impl LinkCut {
    pub fn new() -> LinkCut {
        let table = format!("twinsan_test_{}", std::process::id());
        let rules = format!(
            "table inet {table} {{\n  chain input {{ type filter hook input priority -10; \
             ip saddr {{ 127.0.0.11, 127.0.0.12 }} ip daddr {{ 127.0.0.11, 127.0.0.12 }} tcp dport 7789 drop; \
             ip saddr {{ 127.0.0.11, 127.0.0.12 }} ip daddr {{ 127.0.0.11, 127.0.0.12 }} tcp sport 7789 drop; }}\n}}\n"
        );
        let nft = super::require_tool_in(&["/usr/sbin", "/sbin"], "nft");
        let mut child = Command::new(&nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn nft");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .expect("write rules");
        assert!(
            child.wait().expect("nft").success(),
            "nft refused the rules:\n{rules}"
        );
        LinkCut { table }
    }
}

impl Drop for LinkCut {
    fn drop(&mut self) {
        let nft = super::require_tool_in(&["/usr/sbin", "/sbin"], "nft");
        let _ = Command::new(nft)
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}
