//! `twinsan witness`: the real binary on 127.0.0.13 with a config from `twinsan init`, asked by raw requests
//! built with the codec (so every verdict is seen) and by the node's `WitnessLink`: one vote, lent to one node at
//! a time, taken over only after the lease; a wrong secret gets no answer and is logged; SIGTERM stops it with
//! status 0. Every wait is bounded; the only process stopped is the witness this test started.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{run, text, twinsan_bin, TempDir};
use twinsan_cluster::witness::{Reply, Request, Verdict, WitnessKey, DEFAULT_LEASE, REPLY_LEN};
use twinsan_node::config::ClusterConfig;
use twinsan_node::witness::WitnessLink;

const WITNESS_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 13);
/// How long a request waits for its answer (loopback: far more than needed, even on a loaded machine).
const REPLY_WAIT: Duration = Duration::from_secs(2);

/// A running `twinsan witness`, killed by its pid if the test ends without stopping it.
struct Witness {
    child: Option<Child>,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Witness {
    fn start(config: &std::path::Path) -> Witness {
        // A free UDP port on the witness address.
        let port = UdpSocket::bind((WITNESS_IP, 0))
            .and_then(|s| s.local_addr())
            .expect("a free UDP port on 127.0.0.13")
            .port();
        let addr = SocketAddr::new(IpAddr::V4(WITNESS_IP), port);
        let mut child = Command::new(twinsan_bin())
            .arg("--config")
            .arg(config)
            .args(["witness", "--listen", &addr.to_string()])
            .env("TWINSAN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn twinsan witness");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        common::collect_lines(stderr, sink);
        let w = Witness {
            child: Some(child),
            addr,
            log,
        };
        w.wait_log("witness: listening", Duration::from_secs(10));
        w
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn wait_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "the witness did not log {needle:?} within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits; the exit status code, or None if it did not exit within 10 s (then it is killed).
    fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the pid of a child this guard started and has not reaped.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        common::wait_or_kill(&mut child, deadline, Duration::from_millis(20))?.code()
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One node speaking the protocol by hand, from its own address.
struct RawNode {
    socket: UdpSocket,
    key: WitnessKey,
    cluster_id: u64,
    node_id: u8,
    seq: u64,
}

impl RawNode {
    fn new(
        ip: Ipv4Addr,
        witness: SocketAddr,
        cluster_id: u64,
        node_id: u8,
        secret: &[u8],
    ) -> RawNode {
        let socket = UdpSocket::bind((ip, 0)).expect("bind a node address");
        socket.connect(witness).expect("connect");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        RawNode {
            socket,
            key: WitnessKey::new(secret),
            cluster_id,
            node_id,
            seq: 0,
        }
    }

    /// Sends the next request; its verdict, or None if no answer came within [`REPLY_WAIT`].
    fn ask(&mut self) -> Option<Verdict> {
        let request = Request {
            version: 1,
            cluster_id: self.cluster_id,
            node_id: self.node_id,
            incarnation: 1,
            seq: self.seq,
        };
        self.seq += 1;
        self.socket
            .send(&request.encode(&self.key))
            .expect("send a request");
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + REPLY_WAIT;
        while Instant::now() < deadline {
            let Ok(len) = self.socket.recv(&mut buf) else {
                continue;
            };
            assert_eq!(len, REPLY_LEN, "a reply's length");
            let reply = Reply::decode(&buf[..len], &self.key).expect("an authentic reply");
            if reply.seq != request.seq {
                continue;
            }
            assert_eq!(
                (reply.cluster_id, reply.node_id, reply.incarnation),
                (self.cluster_id, self.node_id, 1),
                "the reply echoes the request"
            );
            return Some(reply.verdict);
        }
        None
    }
}

fn init_cluster(tmp: &TempDir) -> (std::path::PathBuf, u64, Vec<u8>) {
    let dir = tmp.path().join("c");
    let out = run(
        Command::new(twinsan_bin())
            .arg("init")
            .arg(&dir)
            .args(["--size", "4M"]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "twinsan init:\n{}", text(&out));
    let path = dir.join("twinsan.toml");
    let config = ClusterConfig::load(&path).expect("the config loads");
    let secret = config.secret().expect("the secret");
    let cluster_id = twinsan_replication::wire::cluster_id(&config.cluster.name);
    (path, cluster_id, secret)
}

#[test]
fn witness_lends_one_vote_at_a_time_and_stops_on_sigterm() {
    let tmp = TempDir::new("witness");
    let (config, cluster_id, secret) = init_cluster(&tmp);
    let mut witness = Witness::start(&config);
    let mut one = RawNode::new(
        Ipv4Addr::new(127, 0, 0, 11),
        witness.addr,
        cluster_id,
        1,
        &secret,
    );
    let mut two = RawNode::new(
        Ipv4Addr::new(127, 0, 0, 12),
        witness.addr,
        cluster_id,
        2,
        &secret,
    );

    // A fresh witness lends nothing for one lease; then node 1, asking first, is granted.
    let first = one.ask();
    // (Asked right after it logged that it listens: well inside its 3 s grace.)
    assert!(
        matches!(first, Some(Verdict::Waiting { remaining_ms }) if remaining_ms <= 3000),
        "{first:?}\n{}",
        witness.log()
    );
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        match one.ask() {
            Some(Verdict::Granted { lease_ms }) => {
                assert_eq!(u128::from(lease_ms), DEFAULT_LEASE.as_millis());
                break;
            }
            Some(Verdict::Waiting { .. }) | None => {}
            other => panic!("node 1 got {other:?}\n{}", witness.log()),
        }
        assert!(Instant::now() < deadline, "no grant:\n{}", witness.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    witness.wait_log("witness: vote granted to node 1", Duration::from_secs(2));
    assert_eq!(two.ask(), Some(Verdict::Denied { holder: 1 }));

    // Node 1 renews once, then stops asking: node 2 is denied until the lease of that renewal has run out.
    let last_grant_sent = {
        let sent = Instant::now();
        assert!(matches!(one.ask(), Some(Verdict::Granted { .. })));
        sent
    };
    let deadline = Instant::now() + Duration::from_secs(8);
    let granted_after = loop {
        match two.ask() {
            Some(Verdict::Granted { .. }) => break last_grant_sent.elapsed(),
            Some(Verdict::Denied { holder: 1 }) | None => {}
            other => panic!("node 2 got {other:?}\n{}", witness.log()),
        }
        assert!(
            Instant::now() < deadline,
            "node 2 never granted:\n{}",
            witness.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        granted_after >= DEFAULT_LEASE && granted_after < DEFAULT_LEASE + Duration::from_secs(2),
        "node 2 granted {granted_after:?} after node 1's last grant was asked for"
    );
    witness.wait_log("witness: vote granted to node 2", Duration::from_secs(2));
    assert_eq!(one.ask(), Some(Verdict::Denied { holder: 2 }));

    // A request MAC'd with another secret gets no answer, and the refusal is logged.
    let mut stranger = RawNode::new(
        Ipv4Addr::new(127, 0, 0, 11),
        witness.addr,
        cluster_id,
        1,
        b"not the secret",
    );
    stranger.seq = 1000;
    assert_eq!(stranger.ask(), None, "a forged request is answered");
    witness.wait_log("witness: bad MAC", Duration::from_secs(2));
    assert!(
        witness
            .log()
            .contains("datagram refused, no answer from=127.0.0.11:"),
        "{}",
        witness.log()
    );

    // The node's driver against the real witness: node 1 restarted (a new incarnation) sees node 2 holding the
    // vote, and takes it once node 2 stops asking (node 2 renews first, so its lease outlasts the link's start).
    assert!(matches!(two.ask(), Some(Verdict::Granted { .. })));
    let local = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)));
    let link = WitnessLink::start(witness.addr, local, cluster_id, 1, secret.clone(), 2)
        .expect("start the link");
    let deadline = Instant::now() + Duration::from_secs(3);
    while link.holder() != Some(2) {
        assert!(
            Instant::now() < deadline,
            "the link never saw node 2 holding:\n{}",
            witness.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(link.reachable() && !link.holds_vote());
    let deadline = Instant::now() + Duration::from_secs(6);
    while !link.holds_vote() {
        assert!(
            Instant::now() < deadline,
            "the link never took the vote:\n{}",
            witness.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(link.holder(), Some(1));
    assert_eq!(two.ask(), Some(Verdict::Denied { holder: 1 }));
    link.stop();

    let status = witness.terminate();
    assert_eq!(status, Some(0), "SIGTERM: clean exit\n{}", witness.log());
    assert!(
        witness.log().contains("witness: stopped"),
        "{}",
        witness.log()
    );
}

#[test]
fn witness_refuses_a_config_it_cannot_read() {
    let tmp = TempDir::new("witness-noconfig");
    let out = run(
        Command::new(twinsan_bin())
            .arg("--config")
            .arg(tmp.path().join("missing.toml"))
            .args(["witness", "--listen", "127.0.0.13:1"]),
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("missing.toml"), "{}", text(&out));
}
