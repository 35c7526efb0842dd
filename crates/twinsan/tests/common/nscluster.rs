//! A managed two-node cluster in the namespaces of a [`Lab`](super::netns::Lab): `twinsan init`'s layout moved onto
//! the lab's addresses (node1 198.18.0.11 + 198.18.1.11, node2 198.18.0.12 + 198.18.1.12, the VIP 198.18.0.10 on
//! eth0, optionally a witness at 198.18.0.13), each daemon in its node's namespace, QEMU in the client's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::netns::{require_root, Lab, LabOptions, Proc, CLIENT, NODE1, NODE2, WITNESS};
use super::{require_tool, run, text, twinsan_bin, TempDir};

pub const VIP: &str = "198.18.0.10";
pub const URL: &str = "iscsi://198.18.0.10:3260/iqn.2025-08.local.twinsan:vol0/1";
pub const WITNESS_ADDR: &str = "198.18.0.13:5406";
pub const CHUNK: u64 = 64 << 10;

/// A managed cluster in the lab. Fields drop in order: the daemons, then the lab, then the folder.
pub struct NsCluster {
    pub nodes: [Option<Proc>; 2],
    pub witness: Option<Proc>,
    pub lab: Lab,
    pub config: PathBuf,
    /// The binary each node runs (and whose CLI talks to it): [`twinsan_bin`] unless a test changes it (the
    /// rolling upgrade runs the previous release's).
    pub bins: [PathBuf; 2],
    _dir: TempDir,
}

pub fn host(n: usize) -> &'static str {
    if n == 1 {
        NODE1
    } else {
        NODE2
    }
}

impl NsCluster {
    /// `twinsan init` (managed), then the config moved onto the lab's addresses: node addresses on link 0, a
    /// second cluster link, the VIP on eth0; with `witness`, the witness address.
    pub fn new(tag: &str, witness: bool) -> NsCluster {
        Self::with_options(tag, witness, "")
    }

    /// [`NsCluster::new`] with more `[cluster]` options.
    pub fn with_options(tag: &str, witness: bool, options: &str) -> NsCluster {
        Self::with_bin(tag, witness, options, &twinsan_bin())
    }

    /// [`NsCluster::with_options`] made with `bin`'s `init`, both nodes running `bin`.
    pub fn with_bin(tag: &str, witness: bool, options: &str, bin: &Path) -> NsCluster {
        require_root();
        require_tool("qemu-io");
        let dir = TempDir::new(tag);
        let folder = dir.path().join("c");
        let out = run(
            std::process::Command::new(bin)
                .arg("init")
                .arg(&folder)
                .args(["--size", "64M"]),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "twinsan init:\n{}", text(&out));
        let config = folder.join("twinsan.toml");
        let mut cfg = std::fs::read_to_string(&config).expect("config");
        for (from, to) in [
            (
                "address = \"127.0.0.11\"",
                "address = \"198.18.0.11\"\nlinks = [\"198.18.1.11\"]",
            ),
            (
                "address = \"127.0.0.12\"",
                "address = \"198.18.0.12\"\nlinks = [\"198.18.1.12\"]",
            ),
            (
                "vip = \"127.0.0.10\"",
                "vip = \"198.18.0.10\"\nvip_prefix = 24\nvip_interface = \"eth0\"",
            ),
        ] {
            assert!(cfg.contains(from), "init's config lacks {from}:\n{cfg}");
            cfg = cfg.replacen(from, to, 1);
        }
        cfg = cfg.replacen("manual = false", &format!("manual = false\n{options}"), 1);
        if witness {
            cfg = cfg.replacen(
                "manual = false",
                &format!("manual = false\nwitness = \"{WITNESS_ADDR}\""),
                1,
            );
        }
        std::fs::write(&config, cfg).expect("write config");
        let lab = Lab::new(LabOptions {
            second_link: true,
            witness,
            ..LabOptions::new(tag)
        });
        NsCluster {
            nodes: [None, None],
            witness: None,
            lab,
            config,
            bins: [bin.to_path_buf(), bin.to_path_buf()],
            _dir: dir,
        }
    }

    pub fn start_witness(&mut self) {
        let mut cmd = self.lab.command(WITNESS, twinsan_bin());
        cmd.arg("--config")
            .arg(&self.config)
            .args(["witness", "--listen", WITNESS_ADDR])
            .env("TWINSAN_LOG", "info");
        self.witness = Some(Proc::spawn("twinsan witness", &mut cmd));
    }

    /// Starts node `n` in its namespace and waits for its admin socket.
    pub fn start(&mut self, n: usize) {
        let mut cmd = self.lab.command(host(n), &self.bins[n - 1]);
        cmd.args(["node", "run", "--config"])
            .arg(&self.config)
            .args(["--node", host(n)])
            .env("TWINSAN_LOG", "info");
        self.nodes[n - 1] = Some(Proc::spawn(&format!("node{n}"), &mut cmd));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.cli_raw(n, &["volume", "status", "--json", "vol0"]).0 {
            if let Some(p) = self.nodes[n - 1].as_mut() {
                if let Some(status) = p.exited() {
                    panic!("node{n} exited ({status}):\n{}", p.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "node{n} did not come up:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self, n: usize) -> String {
        self.nodes[n - 1]
            .as_ref()
            .map(|p| p.log())
            .unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        let w = self.witness.as_ref().map(|p| p.log()).unwrap_or_default();
        format!(
            "--- node1:\n{}\n--- node2:\n{}\n--- witness:\n{w}",
            self.log(1),
            self.log(2)
        )
    }

    /// The admin socket is a Unix socket in the folder: the CLI reaches it from outside the namespaces.
    pub fn cli_raw(&self, n: usize, args: &[&str]) -> (bool, String) {
        let mut cmd = std::process::Command::new(&self.bins[n - 1]);
        cmd.arg("--config")
            .arg(&self.config)
            .args(["--node", host(n)])
            .args(args);
        let out = run(&mut cmd, Duration::from_secs(60));
        (out.status.success(), text(&out))
    }

    pub fn cli(&self, n: usize, args: &[&str]) -> String {
        let (ok, out) = self.cli_raw(n, args);
        assert!(ok, "twinsan {args:?} on node{n}:\n{out}\n{}", self.logs());
        out
    }

    pub fn json(&self, n: usize, args: &[&str]) -> serde_json::Value {
        let out = self.cli(n, args);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("JSON ({e}):\n{out}"))
    }

    pub fn volume(&self, n: usize) -> serde_json::Value {
        self.json(n, &["volume", "status", "--json", "vol0"])
    }

    pub fn cluster(&self, n: usize) -> serde_json::Value {
        self.json(n, &["status", "--json"])
    }

    pub fn wait<T>(&self, limit: Duration, what: &str, probe: impl FnMut() -> Option<T>) -> T {
        super::poll_until(limit, what, || self.logs(), probe)
    }

    /// Where the whole stack runs in node `n`'s view.
    pub fn stack_on(&self, n: usize) -> Option<usize> {
        let s = self.cluster(n);
        let res = |name: &str| -> serde_json::Value {
            s["resources"]
                .as_array()
                .and_then(|rs| rs.iter().find(|r| r["name"] == name).cloned())
                .unwrap_or_default()
        };
        let promoted = res("vol0")["promoted"].clone();
        let node = promoted.as_array().filter(|a| a.len() == 1)?[0]
            .as_str()?
            .to_string();
        for r in ["vol0-vip", "vol0-target", "vol0-lun1"] {
            if res(r)["started"] != serde_json::json!([node.clone()]) {
                return None;
            }
        }
        node.trim_start_matches("node").parse().ok()
    }

    pub fn client(&self) -> std::process::Command {
        self.lab.command(CLIENT, require_tool("qemu-io"))
    }

    pub fn has_vip(&self, n: usize) -> bool {
        self.lab
            .addrs(host(n), "eth0")
            .iter()
            .any(|a| a.starts_with(&format!("{VIP}/")))
    }

    pub fn stop(&mut self, n: usize) {
        if let Some(mut p) = self.nodes[n - 1].take() {
            let status = p.terminate(Duration::from_secs(40));
            assert!(
                status.success(),
                "node{n} stopped with {status}:\n{}",
                p.log()
            );
        }
    }
}

pub fn other(n: usize) -> usize {
    3 - n
}

/// Both nodes up and the stack on one; returns it.
pub fn up(c: &mut NsCluster) -> usize {
    c.start(1);
    c.start(2);
    c.wait(Duration::from_secs(30), "the stack up on one node", || {
        c.stack_on(1).filter(|&p| c.stack_on(2) == Some(p))
    })
}
