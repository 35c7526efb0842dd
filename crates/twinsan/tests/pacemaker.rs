//! twinsan under a real Pacemaker 2.1 + Corosync 3 cluster (Debian's packages), configured with the guide's pcs
//! commands and twinsan's OCF agents in place of ocf:linbit:drbd, iSCSITarget and iSCSILogicalUnit
//! (docs/pacemaker.md): node1 and node2 each in a network namespace of the lab (Corosync on 198.18.0.0/24,
//! replication on 198.18.1.0/24) and, per daemon, a mount namespace with the node's own /etc/corosync,
//! /var/lib/corosync, /var/lib/pacemaker, /var/log/pacemaker, /run and /dev/shm (bind mounts of folders of this
//! test), plus the test's agents over /usr/lib/ocf/resource.d. ocf:heartbeat:IPaddr2 holds the VIP 198.18.0.50;
//! qemu-io in the client namespace writes at it. pcsd does not run: Corosync's config comes from `pcs cluster
//! setup --corosync_conf` (offline), the resources from `pcs -f CIB` edits pushed with `pcs cluster cib-push`.
//!
//! Then the guide's failover test: node1's cluster stack stops (`pcs cluster stop` needs systemd or pcsd, neither
//! of which runs here, so the test does what it does: SIGTERM to pacemakerd, then to corosync), the resources are
//! Started on the other node with the data intact at the VIP; node1's stack starts again, both are Online and the
//! resources stay. Resource-level fencing: the replication link breaks while the primary writes, the volume's
//! fence-peer handler (the agent's crm-fence-peer) puts the constraint in the CIB, the resync after the link
//! heals removes it (unfence-peer). Last, a kill -9 of the primary's twinsan daemon under QD1 FUA writes
//! (tests/tools/iscsi-writer.c): Pacemaker's monitor sees it and promotes the other node; every write the
//! initiator saw acknowledged reads back.
//!
//! Needs root (namespaces, bind mounts). One test at a time (nextest group `netns`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::{Lab, LabOptions, Proc, CLIENT, NODE1, NODE2};
use common::scsi::libiscsi_tool;
use common::{poll_until, qemu, require_tool, require_tool_in, run, text, twinsan_bin, TempDir};

const IQN: &str = "iqn.2025-08.local.twinsan:vol0";
const VIP: &str = "198.18.0.50";
const CHUNK: u64 = 64 << 10;
const SIZE: u64 = 64 << 20;
/// The promotable clone, and the constraint its fence-peer handler places.
const CLONE: &str = "p_twinsan-clone";
const FENCE: &str = "twinsan-fence-p_twinsan-clone";

/// The folders each node gets over the machine's: (its name under the node's folder, the path it covers).
const STATE: [(&str, &str); 6] = [
    ("etc-corosync", "/etc/corosync"),
    ("var-lib-corosync", "/var/lib/corosync"),
    ("var-lib-pacemaker", "/var/lib/pacemaker"),
    ("var-log-pacemaker", "/var/log/pacemaker"),
    ("run", "/run"),
    ("dev-shm", "/dev/shm"),
];

fn host(n: usize) -> &'static str {
    [NODE1, NODE2][n - 1]
}

fn url() -> String {
    format!("iscsi://{VIP}:3260/{IQN}/1")
}

/// The cluster: the lab, the folders, and the corosync and pacemakerd of each node. Its drop stops what runs
/// (the processes it started by their pids, and the twinsan daemons the agents started by the pids the agent
/// wrote), before the lab and the folder go.
struct Pcmk {
    corosync: [Option<Proc>; 2],
    pacemakerd: [Option<Proc>; 2],
    dir: TempDir,
    lab: Lab,
}

impl Pcmk {
    fn node_dir(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("node{n}"))
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("tw").join("twinsan.toml")
    }

    /// `PROGRAM ARGS` on node `n`: in its network namespace, in a mount namespace of its own with the node's
    /// folders bound over the machine's. `ip netns exec`, `unshare` and `sh` each exec the next: the spawned
    /// child's pid is PROGRAM's.
    fn command(&self, n: usize, program: &str) -> Command {
        let d = self.node_dir(n);
        let mut script = String::new();
        for (name, path) in STATE {
            script += &format!("mount --bind '{}' '{path}' && ", d.join(name).display());
        }
        script += &format!(
            "mount --bind '{}' /usr/lib/ocf/resource.d && exec \"$@\"",
            self.dir.path().join("ocf/lib/ocf/resource.d").display()
        );
        let mut cmd = self.lab.command(host(n), "unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .arg(program);
        cmd
    }

    /// Runs `PROGRAM ARGS` on node `n` (at most 120 s): success and output.
    fn on(&self, n: usize, program: &str, args: &[&str]) -> (bool, String) {
        let out = run(
            self.command(n, program).args(args),
            Duration::from_secs(120),
        );
        (out.status.success(), text(&out))
    }

    /// `pcs ARGS` on node `n`, which must succeed.
    fn pcs(&self, n: usize, args: &[&str]) -> String {
        let (ok, out) = self.on(n, "pcs", args);
        assert!(
            ok,
            "pcs {args:?} on node{n} failed:\n{out}\n{}",
            self.logs()
        );
        out
    }

    /// The fencing constraint (its XML) as node `n`'s CIB holds it, if it does.
    fn fence(&self, n: usize) -> Option<String> {
        let xpath = format!("//constraints/rsc_location[@id='{FENCE}']");
        let (ok, out) = self.on(n, "cibadmin", &["--query", "--xpath", &xpath]);
        ok.then_some(out)
    }

    /// `pcs status` on node `n`.
    fn status(&self, n: usize) -> String {
        self.on(n, "pcs", &["status"]).1
    }

    /// `twinsan volume status --json vol0` on node `n`.
    fn volume(&self, n: usize) -> serde_json::Value {
        let out = run(
            self.lab
                .command(host(n), twinsan_bin())
                .arg("--config")
                .arg(self.config())
                .args(["volume", "status", "--json", "vol0"]),
            Duration::from_secs(30),
        );
        serde_json::from_str(text(&out).trim()).unwrap_or(serde_json::Value::Null)
    }

    /// qemu-io in the client namespace.
    fn client(&self) -> Command {
        self.lab.command(CLIENT, require_tool("qemu-io"))
    }

    fn start_stack(&mut self, n: usize) {
        let corosync = Proc::spawn(
            &format!("corosync node{n}"),
            self.command(n, "corosync").arg("-f"),
        );
        self.corosync[n - 1] = Some(corosync);
        let pacemakerd = Proc::spawn(
            &format!("pacemakerd node{n}"),
            &mut self.command(n, "pacemakerd"),
        );
        self.pacemakerd[n - 1] = Some(pacemakerd);
    }

    /// What `pcs cluster stop` does through systemd: pacemakerd stops (its resources stop or move first), then
    /// corosync.
    fn stop_stack(&mut self, n: usize) {
        if let Some(mut p) = self.pacemakerd[n - 1].take() {
            let status = p.terminate(Duration::from_secs(180));
            assert!(
                status.success(),
                "pacemakerd on node{n}: {status}\n{}",
                p.log()
            );
        }
        if let Some(mut c) = self.corosync[n - 1].take() {
            let status = c.terminate(Duration::from_secs(60));
            assert!(
                status.success(),
                "corosync on node{n}: {status}\n{}",
                c.log()
            );
        }
    }

    /// The pid of the twinsan daemon that node `n`'s volume agent started, if it still runs.
    fn daemon_pid(&self, n: usize) -> Option<i32> {
        let file = self
            .node_dir(n)
            .join("run/resource-agents/twinsan-volume-local.pid");
        let pid: i32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
        // Only ours: its command line names this test's config.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let config = self.config().display().to_string();
        String::from_utf8_lossy(&cmdline)
            .contains(&config)
            .then_some(pid)
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for n in 1..=2 {
            let log = |name: &str| {
                let text =
                    std::fs::read_to_string(self.node_dir(n).join("var-log-pacemaker").join(name))
                        .unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            };
            out += &format!(
                "--- node{n} twinsan.log (last lines):\n{}\n--- node{n} pacemaker.log (last lines):\n{}\n",
                log("twinsan.log"),
                log("pacemaker.log")
            );
        }
        out
    }

    /// Waits (at most `limit`) until `pcs status` on node `n` holds every line of `want`.
    fn wait_status(&self, n: usize, limit: Duration, want: &[&str]) -> String {
        poll_until(
            limit,
            &format!("pcs status on node{n} shows {want:?}"),
            || format!("{}\n{}", self.status(n), self.logs()),
            || {
                let s = self.status(n);
                want.iter()
                    .all(|w| s.lines().any(|l| l.trim() == *w))
                    .then_some(s)
            },
        )
    }

    /// The node where `pcs status` on `n` shows the clone Promoted, once one is.
    fn promoted(&self, n: usize, limit: Duration) -> usize {
        poll_until(
            limit,
            "a promoted node",
            || self.status(n),
            || {
                let s = self.status(n);
                (1..=2).find(|p| {
                    s.lines()
                        .any(|l| l.trim() == format!("* Promoted: [ node{p} ]"))
                })
            },
        )
    }
}

impl Drop for Pcmk {
    fn drop(&mut self) {
        for n in 1..=2 {
            if let Some(p) = self.pacemakerd[n - 1].as_mut() {
                // pacemakerd's subdaemons (and the agents pacemaker-execd runs) outlive a SIGKILL of pacemakerd:
                // they go first, by pid, deepest first.
                if p.exited().is_none() {
                    for pid in descendants(p.pid()).into_iter().rev() {
                        // SAFETY: kill(2) on a process this test started (a descendant of its pacemakerd).
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                        }
                    }
                }
                p.kill();
            }
            if let Some(c) = self.corosync[n - 1].as_mut() {
                c.kill();
            }
            if let Some(pid) = self.daemon_pid(n) {
                // SAFETY: kill(2) on the daemon this test's agent started (checked by its command line).
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        // The killed daemons leave their namespaces before the lab deletes them.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The processes under `pid` (children before their own children), from /proc.
fn descendants(pid: u32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "PID (COMM) STATE PPID ...": COMM may hold spaces, so count from its closing parenthesis.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parents.push((child, ppid));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid as i32];
    while let Some(p) = frontier.pop() {
        for &(child, ppid) in &parents {
            if ppid == p && !out.contains(&child) {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out
}

/// The lab, the twinsan pair (`init --manual`, moved to the lab's addresses), the agents, and the Corosync
/// config written by the guide's `pcs cluster setup` (offline, `--corosync_conf`: pcsd does not run here).
fn build() -> Pcmk {
    for tool in [
        "corosync",
        "pacemakerd",
        "pcs",
        "crm_mon",
        "corosync-keygen",
    ] {
        require_tool_in(&["/usr/sbin", "/sbin"], tool);
    }
    require_tool("qemu-io");
    assert!(
        Path::new("/usr/lib/ocf/resource.d/heartbeat/IPaddr2").is_file(),
        "resource-agents is not installed: run scripts/install-test-deps"
    );
    let lab = Lab::new(LabOptions {
        second_link: true,
        ..LabOptions::new("pcmk")
    });
    let dir = TempDir::new("pacemaker");
    let d = dir.path();
    let ok = |cmd: &mut Command, what: &str| {
        let out = run(cmd, Duration::from_secs(120));
        assert!(out.status.success(), "{what}:\n{}", text(&out));
        text(&out)
    };
    ok(
        Command::new(twinsan_bin())
            .arg("init")
            .arg(d.join("tw"))
            .args(["--manual", "--size", "64M"]),
        "twinsan init",
    );
    let config = d.join("tw/twinsan.toml");
    let toml = std::fs::read_to_string(&config).expect("read the config");
    // Replication on link 1 (198.18.1.0/24), Corosync on link 0: the replication link can break alone. The
    // guide's resource-only fencing, with the agent's fence-peer / unfence-peer as the volume's handlers (what
    // crm-fence-peer / crm-unfence-peer are to DRBD).
    let agent = "/usr/lib/ocf/resource.d/twinsan/volume";
    let toml = toml
        .replace("127.0.0.11", lab.addr(NODE1, 1))
        .replace("127.0.0.12", lab.addr(NODE2, 1))
        .replace("127.0.0.10", VIP)
        .replace(
            "fencing = \"dont-care\"",
            &format!(
                "fencing = \"resource-only\"\nhandler_fence_peer = \"{agent} fence-peer {CLONE}\"\n\
                 handler_unfence_peer = \"{agent} unfence-peer {CLONE}\""
            ),
        );
    assert!(toml.contains("resource-only"), "{toml}");
    std::fs::write(&config, toml).expect("write the config");

    // The agents as `twinsan ocf install` puts them, beside copies of the machine's other providers: this folder
    // goes over /usr/lib/ocf/resource.d in the nodes' mount namespaces (the machine's stays untouched).
    let prefix = d.join("ocf");
    ok(
        Command::new(twinsan_bin())
            .args(["ocf", "install", "--prefix"])
            .arg(&prefix),
        "twinsan ocf install",
    );
    for provider in ["heartbeat", "pacemaker"] {
        ok(
            Command::new("cp")
                .arg("-a")
                .arg(format!("/usr/lib/ocf/resource.d/{provider}"))
                .arg(prefix.join("lib/ocf/resource.d")),
            "copy an OCF provider",
        );
    }

    let conf = d.join("corosync.conf");
    ok(
        Command::new("pcs")
            .args([
                "cluster",
                "setup",
                "twinsan",
                "node1",
                "addr=198.18.0.11",
                "node2",
                "addr=198.18.0.12",
                "transport",
                "knet",
                "--corosync_conf",
            ])
            .arg(&conf)
            .arg("--overwrite"),
        "pcs cluster setup --corosync_conf",
    );
    // Its log goes to the node's own /var/log/pacemaker (the machine may have no /var/log/corosync), no syslog.
    let conf = std::fs::read_to_string(&conf)
        .expect("corosync.conf")
        .replace(
            "/var/log/corosync/corosync.log",
            "/var/log/pacemaker/corosync.log",
        )
        .replace("to_syslog: yes", "to_syslog: no");
    let key = d.join("authkey");
    ok(
        Command::new("corosync-keygen").arg("-k").arg(&key),
        "corosync-keygen",
    );
    for n in 1..=2 {
        let nd = d.join(format!("node{n}"));
        for (name, _) in STATE {
            std::fs::create_dir_all(nd.join(name)).expect("node folder");
        }
        for (name, from) in [
            ("var-lib-pacemaker", "/var/lib/pacemaker/."),
            ("var-log-pacemaker", "/var/log/pacemaker/."),
        ] {
            ok(
                Command::new("cp").arg("-a").arg(from).arg(nd.join(name)),
                "copy the pacemaker folders (owned by hacluster)",
            );
        }
        ok(
            Command::new("chmod").arg("1777").arg(nd.join("dev-shm")),
            "chmod /dev/shm",
        );
        std::fs::write(nd.join("etc-corosync/corosync.conf"), &conf).expect("corosync.conf");
        ok(
            Command::new("cp")
                .arg("-p")
                .arg(&key)
                .arg(nd.join("etc-corosync/authkey")),
            "copy the authkey",
        );
    }
    Pcmk {
        corosync: [None, None],
        pacemakerd: [None, None],
        dir,
        lab,
    }
}

#[test]
fn pacemaker_runs_twinsan_with_the_guides_commands_and_fails_over() {
    let mut c = build();
    c.start_stack(1);
    c.start_stack(2);
    c.wait_status(1, Duration::from_secs(180), &["* Online: [ node1 node2 ]"]);

    // The guide's resources and constraints, as docs/pacemaker.md gives them, edited offline in a copy of the CIB
    // (`pcs -f`) and pushed at once, so nothing starts half-configured.
    let cib = c.dir.path().join("cib.xml").display().to_string();
    let config = c.config().display().to_string();
    let bin = twinsan_bin().display().to_string();
    c.pcs(1, &["cluster", "cib", &cib]);
    let f = |args: &[&str]| {
        let mut all = vec!["-f", cib.as_str()];
        all.extend_from_slice(args);
        c.pcs(1, &all);
    };
    f(&["property", "set", "stonith-enabled=false"]);
    f(&["property", "set", "no-quorum-policy=ignore"]);
    f(&["resource", "defaults", "update", "resource-stickiness=100"]);
    f(&[
        "resource",
        "create",
        "ClusterIP",
        "ocf:heartbeat:IPaddr2",
        &format!("ip={VIP}"),
        "cidr_netmask=24",
        "op",
        "monitor",
        "interval=30s",
    ]);
    f(&[
        "resource",
        "create",
        "p_twinsan",
        "ocf:twinsan:volume",
        &format!("config={config}"),
        "volume=vol0",
        &format!("binary={bin}"),
        "daemon_log=/var/log/pacemaker/twinsan.log",
        "op",
        "monitor",
        "interval=29s",
        "role=Promoted",
        "op",
        "monitor",
        "interval=31s",
        "role=Unpromoted",
    ]);
    f(&[
        "resource",
        "promotable",
        "p_twinsan",
        "promoted-max=1",
        "promoted-node-max=1",
        "clone-max=2",
        "clone-node-max=1",
        "notify=true",
    ]);
    f(&[
        "resource",
        "create",
        "p_iSCSITarget",
        "ocf:twinsan:target",
        &format!("config={config}"),
        &format!("iqn={IQN}"),
        &format!("portal={VIP}:3260"),
        &format!("binary={bin}"),
        "op",
        "monitor",
        "interval=10s",
    ]);
    f(&[
        "constraint",
        "colocation",
        "add",
        "ClusterIP",
        "with",
        "Promoted",
        "p_twinsan-clone",
        "INFINITY",
    ]);
    f(&[
        "constraint",
        "order",
        "promote",
        "p_twinsan-clone",
        "then",
        "start",
        "ClusterIP",
    ]);
    f(&[
        "constraint",
        "colocation",
        "add",
        "p_iSCSITarget",
        "with",
        "ClusterIP",
        "INFINITY",
    ]);
    f(&["constraint", "order", "ClusterIP", "then", "p_iSCSITarget"]);
    c.pcs(1, &["cluster", "cib-push", &cib, "--config"]);

    // The agents start a daemon on each node; two new disks: both Secondary, Inconsistent, never promoted.
    c.wait_status(
        1,
        Duration::from_secs(120),
        &["* Unpromoted: [ node1 node2 ]"],
    );
    poll_until(
        Duration::from_secs(60),
        "vol0 connected",
        || c.logs(),
        || (c.volume(1)["peers"][0]["connection"] == "Connected").then_some(()),
    );
    // The initial sync of two empty disks skipped (the guide's `drbdadm primary --force` would copy one over the
    // other); the agents' monitors then give both UpToDate copies a promotion score and Pacemaker promotes one.
    let out = run(
        c.lab
            .command(NODE1, twinsan_bin())
            .arg("--config")
            .arg(c.config())
            .args(["volume", "new-current-uuid", "--clear-bitmap", "vol0"]),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", text(&out));
    c.pcs(1, &["resource", "refresh", "p_twinsan-clone"]);
    let a = c.promoted(1, Duration::from_secs(120));
    let b = 3 - a;
    let s = c.wait_status(
        1,
        Duration::from_secs(120),
        &[
            &format!("* ClusterIP\t(ocf:heartbeat:IPaddr2):\t Started node{a}"),
            &format!("* p_iSCSITarget\t(ocf:twinsan:target):\t Started node{a}"),
        ],
    );
    println!("pcs status:\n{s}");
    let constraints = c.pcs(1, &["constraint"]);
    assert!(
        constraints.contains("with-rsc-role:Promoted"),
        "{constraints}"
    );
    assert!(
        c.lab
            .addrs(host(a), "eth0")
            .iter()
            .any(|x| x.starts_with(VIP)),
        "IPaddr2 put {VIP} on node{a}: {:?}",
        c.lab.addrs(host(a), "eth0")
    );

    // Writes at the VIP.
    let plan = qemu::plan(0x9ace_0001, SIZE, CHUNK, 250);
    qemu::write_via(c.client(), &url(), &plan[..100], CHUNK);

    // The guide's failover test: the leading node's cluster stack stops.
    c.stop_stack(a);
    let s = c.wait_status(
        b,
        Duration::from_secs(180),
        &[
            &format!("* Online: [ node{b} ]"),
            &format!("* OFFLINE: [ node{a} ]"),
            &format!("* Promoted: [ node{b} ]"),
            &format!("* ClusterIP\t(ocf:heartbeat:IPaddr2):\t Started node{b}"),
            &format!("* p_iSCSITarget\t(ocf:twinsan:target):\t Started node{b}"),
        ],
    );
    println!("after stopping node{a}:\n{s}");
    qemu::verify_via(c.client(), &url(), &plan[..100], CHUNK);
    qemu::write_via(c.client(), &url(), &plan[100..200], CHUNK);

    // ... and starts again: both Online, the resources stay where they are (stickiness), node{a} resyncs.
    c.start_stack(a);
    let s = c.wait_status(
        b,
        Duration::from_secs(180),
        &[
            "* Online: [ node1 node2 ]",
            &format!("* Promoted: [ node{b} ]"),
            &format!("* Unpromoted: [ node{a} ]"),
            &format!("* ClusterIP\t(ocf:heartbeat:IPaddr2):\t Started node{b}"),
            &format!("* p_iSCSITarget\t(ocf:twinsan:target):\t Started node{b}"),
        ],
    );
    println!("after starting node{a} again:\n{s}");
    // node{b}, promoted while node{a} was away, fenced it (a location constraint against promoting it elsewhere);
    // the resync lifts that fence.
    poll_until(
        Duration::from_secs(120),
        "node{a} back in sync and the fence lifted",
        || format!("{:?}\n{}", c.fence(b), c.logs()),
        || {
            let v = c.volume(a);
            let synced = v["disk"] == "UpToDate" && v["peers"][0]["peer_disk"] == "UpToDate";
            (synced && c.fence(b).is_none()).then_some(())
        },
    );

    // Resource-level fencing: the replication link breaks (Corosync's stays) while node{b}, the primary, writes.
    // Its writes wait until the fence-peer handler has put the constraint in the CIB, then go on alone; node{a}'s
    // copy is not promotable while the constraint stands. The link heals, node{a} resyncs, and unfence-peer
    // removes it.
    assert_eq!(c.fence(b), None, "no fence before the link breaks");
    c.lab.cut_link(host(a), 1);
    qemu::write_via(c.client(), &url(), &plan[200..250], CHUNK);
    let fence = poll_until(
        Duration::from_secs(60),
        "the fencing constraint",
        || c.logs(),
        || c.fence(b),
    );
    println!("fence-peer placed, while the replication link is down:\n{fence}");
    assert!(
        fence.contains("role=\"Promoted\"")
            && fence.contains("score=\"-INFINITY\"")
            && fence.contains(&format!("operation=\"ne\" value=\"node{b}\"")),
        "the constraint keeps the promotion on node{b}: {fence}"
    );
    assert_eq!(
        c.fence(a),
        Some(fence.clone()),
        "node{a}'s CIB holds it too"
    );
    assert_ne!(
        c.volume(a)["peers"][0]["connection"],
        "Connected",
        "{}",
        c.logs()
    );
    c.lab.heal_link(host(a), 1);
    poll_until(
        Duration::from_secs(120),
        "in sync again and the fence lifted",
        || c.logs(),
        || {
            let v = c.volume(a);
            let synced = v["disk"] == "UpToDate" && v["peers"][0]["peer_disk"] == "UpToDate";
            (synced && c.fence(b).is_none()).then_some(())
        },
    );
    let s = c.wait_status(
        b,
        Duration::from_secs(60),
        &[&format!("* Promoted: [ node{b} ]")],
    );
    println!("after the resync, unfence-peer removed the constraint:\n{s}");
    // Everything written so far reads back at the VIP, the writes while fenced included.
    qemu::verify_via(c.client(), &url(), &plan, CHUNK);

    // kill -9 of the primary's twinsan daemon under QD1 FUA writes (tests/tools/iscsi-writer.c, which logs in
    // again as an initiator does): Pacemaker's monitors see it, promote node{a} (its fence-peer handler fences
    // node{b}), and start the volume on node{b} again, which resyncs. Every write the writer saw acknowledged
    // reads back.
    let writer = libiscsi_tool("iscsi-writer");
    let log = c.dir.path().join("writer.log");
    let acked = |log: &Path| {
        let body = std::fs::read_to_string(log).unwrap_or_default();
        body.lines().filter(|l| l.starts_with("A ")).count()
    };
    let victim = c.daemon_pid(b).expect("the twinsan daemon of the primary");
    let mut w = Proc::spawn(
        "iscsi-writer",
        c.lab
            .command(CLIENT, &writer)
            .args(["write", &url(), "30", "1"])
            .arg(&log),
    );
    poll_until(
        Duration::from_secs(30),
        "writes acknowledged",
        || w.log(),
        || (acked(&log) >= 50).then_some(()),
    );
    let before = acked(&log);
    // SAFETY: kill(2) on the daemon this test's agent started (daemon_pid checked its command line).
    unsafe {
        libc::kill(victim, libc::SIGKILL);
    }
    let killed_at = Instant::now();
    let status = poll_until(
        Duration::from_secs(90),
        "the writer's end",
        || "iscsi-writer still runs".to_owned(),
        || w.exited(),
    );
    assert!(status.success(), "iscsi-writer: {status}\n{}", w.log());
    let body = std::fs::read_to_string(&log).unwrap_or_default();
    let after = acked(&log) - before;
    let failed = body.lines().filter(|l| l.starts_with("F ")).count();
    // The longest gap between two acknowledgements: the I/O pause the initiator saw.
    let times: Vec<u64> = body
        .lines()
        .filter(|l| l.starts_with("A "))
        .filter_map(|l| l.split_whitespace().nth(3)?.parse().ok())
        .collect();
    let pause = times.windows(2).map(|p| p[1] - p[0]).max().unwrap_or(0);
    println!(
        "kill -9 of node{b}'s twinsan under writes: {} acknowledged ({after} after the kill, {:?} after it the \
         writer stopped), {failed} failed, longest pause {pause} ms",
        acked(&log),
        killed_at.elapsed()
    );
    assert!(
        after > 0,
        "no write was acknowledged after the kill:\n{body}\n{}",
        c.logs()
    );
    let s = c.wait_status(
        a,
        Duration::from_secs(180),
        &[
            &format!("* Promoted: [ node{a} ]"),
            &format!("* Unpromoted: [ node{b} ]"),
            &format!("* ClusterIP\t(ocf:heartbeat:IPaddr2):\t Started node{a}"),
            &format!("* p_iSCSITarget\t(ocf:twinsan:target):\t Started node{a}"),
        ],
    );
    println!("after kill -9 of node{b}'s twinsan:\n{s}");
    assert!(
        s.contains("monitor on node"),
        "the failure is recorded: {s}"
    );
    // 0 acknowledged writes lost, at the VIP (node{a}) ...
    let verify = |what: &str| {
        let out = run(
            c.lab
                .command(CLIENT, &writer)
                .args(["verify", &url()])
                .arg(&log),
            Duration::from_secs(120),
        );
        let report = text(&out);
        assert!(
            out.status.success(),
            "{what}: acknowledged writes lost:\n{report}\n{}",
            c.logs()
        );
        let (checked, lost) = report
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                match f[..] {
                    ["checked", n, "lost", l] => {
                        Some((n.parse::<u64>().ok()?, l.parse::<u64>().ok()?))
                    }
                    _ => None,
                }
            })
            .unwrap_or_else(|| panic!("{what}: the writer's verify did not report:\n{report}"));
        println!("{what}: the writer's verify: {checked} blocks checked, {lost} lost");
        assert!(checked > 0 && lost == 0, "{what}:\n{report}");
    };
    verify("after the kill");
    // ... and on node{b} once it has resynced, which also lifts node{a}'s fence.
    poll_until(
        Duration::from_secs(120),
        "node{b} back in sync and the fence lifted",
        || c.logs(),
        || {
            let v = c.volume(b);
            let synced = v["disk"] == "UpToDate" && v["peers"][0]["peer_disk"] == "UpToDate";
            (synced && c.fence(a).is_none()).then_some(())
        },
    );
    // The cluster stops cleanly: pacemakerd stops the resources (the agents demote and take the volume down).
    c.stop_stack(b);
    c.stop_stack(a);
}
