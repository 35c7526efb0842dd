//! The witness client driver: one thread and one UDP socket around [`WitnessClient`], asking the witness for its
//! vote every interval, so the node can tell at any moment whether it holds the vote.
//!
//! Time is a monotonic clock ([`Instant`], CLOCK_MONOTONIC: never steps; NTP may only slew its rate, by far less
//! than the lease margin allows) measured from the link's start. The socket is connected to the witness, so the
//! kernel drops datagrams from any other address; what comes from the witness's address is still authenticated
//! by the core. The rules and the safety argument are in [`twinsan_cluster::witness`].

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use twinsan_cluster::error::WitnessError;
use twinsan_cluster::witness::{WitnessClient, WitnessClientConfig};

/// The longest the thread sleeps in one receive, so that [`WitnessLink::stop`] is quick.
const MAX_WAIT: Duration = Duration::from_millis(50);
/// At most one warning per this period about datagrams refused or sends failing.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Larger than any witness datagram, so a longer one is seen whole and refused for its length.
const RECV_BUF: usize = 128;

/// A node's link to the witness: its thread keeps asking; the queries answer from the latest replies at the time
/// they are called.
pub struct WitnessLink {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    client: Mutex<WitnessClient>,
    origin: Instant,
    server: SocketAddr,
    stop: AtomicBool,
}

impl Shared {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn client(&self) -> MutexGuard<'_, WitnessClient> {
        // The client's state is consistent after every call: a panic elsewhere cannot leave it half-changed.
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl WitnessLink {
    /// Binds a UDP socket (on `local_ip` if given, an ephemeral port), connects it to the witness at `server`
    /// and starts the thread that asks for the vote every 200 ms (the defaults of [`WitnessClientConfig`]).
    /// `incarnation` must grow at each start of the node (the wall-clock time at start in nanoseconds will do),
    /// or the witness refuses the node until the witness itself restarts.
    pub fn start(
        server: SocketAddr,
        local_ip: Option<IpAddr>,
        cluster_id: u64,
        node_id: u8,
        secret: Vec<u8>,
        incarnation: u64,
    ) -> io::Result<Arc<WitnessLink>> {
        let origin = Instant::now();
        let config = WitnessClientConfig::new(cluster_id, node_id, incarnation);
        let client = WitnessClient::new(config, &secret, Duration::ZERO)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let local_ip = local_ip.unwrap_or(match server {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        });
        let socket = UdpSocket::bind(SocketAddr::new(local_ip, 0))?;
        socket.connect(server)?;
        let shared = Arc::new(Shared {
            client: Mutex::new(client),
            origin,
            server,
            stop: AtomicBool::new(false),
        });
        let runner = shared.clone();
        let thread = thread::Builder::new()
            .name(format!("witness-{node_id}"))
            .spawn(move || run(&runner, &socket))?;
        info!(witness = %server, node = node_id, "witness: asking for the vote");
        Ok(Arc::new(WitnessLink {
            shared,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Whether this node holds the witness's vote now. It stops being true `lease_margin` (1 s) before the
    /// witness may lend the vote to the other node: a node that acts on it must stop writing within that time.
    pub fn holds_vote(&self) -> bool {
        let now = self.shared.now();
        self.shared.client().holds_vote(now)
    }

    /// When this node's belief that it holds the vote ends (in the past once it has), if it ever held it: the
    /// alone lease of a node with a witness (see `twinsan_cluster::lease`).
    pub fn vote_until(&self) -> Option<Instant> {
        self.shared
            .client()
            .vote_until()
            .map(|d| self.shared.origin + d)
    }

    /// The node holding the vote as far as this node knows now (itself while [`holds_vote`](Self::holds_vote));
    /// `None` when nobody does or the witness's last answer is more than a second old.
    pub fn holder(&self) -> Option<u8> {
        let now = self.shared.now();
        self.shared.client().holder(now)
    }

    /// Whether the witness answered within the last second.
    pub fn reachable(&self) -> bool {
        let now = self.shared.now();
        self.shared.client().reachable(now)
    }

    /// The witness's address.
    pub fn server(&self) -> SocketAddr {
        self.shared.server
    }

    /// Stops asking and waits for the thread to end. The vote is not given back: the witness lends it to the
    /// other node when the lease runs out, 3 s after the last grant at most.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            if handle.thread().id() != thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for WitnessLink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the thread last logged, so that each change is logged once.
#[derive(Default)]
struct Logged {
    holds_vote: bool,
    holder: Option<u8>,
    reachable: bool,
    last_warning: Option<Instant>,
    suppressed: u64,
}

impl Logged {
    /// Warns about a refused datagram or a failed send: the first at once, then at most one per [`WARN_EVERY`]
    /// with how many were not logged.
    fn warn(&mut self, server: SocketAddr, what: &str) {
        let due = self
            .last_warning
            .is_none_or(|at| at.elapsed() >= WARN_EVERY);
        if !due {
            self.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        self.last_warning = Some(Instant::now());
        warn!(witness = %server, suppressed, "witness: {what}");
    }
}

fn run(shared: &Shared, socket: &UdpSocket) {
    let server = shared.server;
    let mut logged = Logged::default();
    let mut buf = [0u8; RECV_BUF];
    while !shared.stop.load(Ordering::SeqCst) {
        let (request, next_tick) = {
            let mut client = shared.client();
            (client.tick(shared.now()), client.next_tick())
        };
        if let Some(bytes) = request {
            match socket.send(&bytes) {
                Ok(_) => {}
                // An earlier request's ICMP port unreachable is reported here: the witness is not running.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => logged.warn(server, &format!("cannot send a request: {e}")),
            }
        }
        let wait = next_tick
            .saturating_sub(shared.now())
            .clamp(Duration::from_millis(1), MAX_WAIT);
        if let Err(e) = socket.set_read_timeout(Some(wait)) {
            logged.warn(server, &format!("cannot set the receive timeout: {e}"));
            thread::sleep(wait);
        }
        match socket.recv(&mut buf) {
            Ok(len) => {
                let outcome = shared.client().received(&buf[..len], shared.now());
                match outcome {
                    Ok(verdict) => debug!(witness = %server, ?verdict, "witness: reply"),
                    // Late duplicates are normal on a lossy path; anything else is worth a warning.
                    Err(WitnessError::NotOutstanding { seq }) => {
                        debug!(witness = %server, seq, "witness: late or duplicate reply ignored");
                    }
                    Err(e) => logged.warn(server, &format!("reply refused: {e}")),
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => {
                logged.warn(server, &format!("cannot receive: {e}"));
                thread::sleep(wait);
            }
        }
        log_changes(shared, &mut logged);
    }
    debug!(witness = %server, "witness: link stopped");
}

fn log_changes(shared: &Shared, logged: &mut Logged) {
    let server = shared.server;
    let now = shared.now();
    let (holds_vote, holder, reachable, node) = {
        let client = shared.client();
        (
            client.holds_vote(now),
            client.holder(now),
            client.reachable(now),
            client.config().node_id,
        )
    };
    if reachable != logged.reachable {
        if reachable {
            info!(witness = %server, "witness: reachable");
        } else {
            warn!(witness = %server, "witness: unreachable (no answer for a second)");
        }
        logged.reachable = reachable;
    }
    if holds_vote != logged.holds_vote {
        if holds_vote {
            info!(witness = %server, node, "witness: this node holds the vote");
        } else {
            warn!(witness = %server, node, "witness: this node no longer holds the vote");
        }
        logged.holds_vote = holds_vote;
    }
    if holder != logged.holder {
        match holder {
            Some(h) if h != node => {
                info!(witness = %server, holder = h, "witness: node {h} holds the vote")
            }
            _ => {}
        }
        logged.holder = holder;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinsan_cluster::witness::{WitnessServer, WitnessServerConfig};

    const SECRET: &[u8] = b"a secret of the cluster, 32 b...";

    /// A witness core behind a UDP socket on 127.0.0.1, in a thread of this test; the grace is skipped by
    /// starting the core `lease` in the past.
    fn witness() -> (SocketAddr, Arc<AtomicBool>, JoinHandle<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = thread::spawn(move || {
            let origin = Instant::now();
            let lease = WitnessServerConfig::new(7).lease;
            let mut server =
                WitnessServer::new(WitnessServerConfig::new(7), SECRET, Duration::ZERO)
                    .expect("config");
            let mut buf = [0u8; 128];
            while !stopped.load(Ordering::SeqCst) {
                if let Ok((len, from)) = socket.recv_from(&mut buf) {
                    if let Ok(answer) = server.handle(&buf[..len], origin.elapsed() + lease) {
                        let _ = socket.send_to(&answer.bytes, from);
                    }
                }
            }
        });
        (addr, stop, handle)
    }

    fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !done() {
            assert!(Instant::now() < deadline, "{what} within {limit:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn two_links_one_vote() {
        let (addr, stop, handle) = witness();
        let local = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let one = WitnessLink::start(addr, local, 7, 1, SECRET.to_vec(), 1).expect("start 1");
        wait_until("node 1 holds the vote", Duration::from_secs(5), || {
            one.holds_vote()
        });
        let two = WitnessLink::start(addr, local, 7, 2, SECRET.to_vec(), 1).expect("start 2");
        wait_until(
            "node 2 hears that node 1 holds it",
            Duration::from_secs(5),
            || two.holder() == Some(1),
        );
        assert!(two.reachable() && !two.holds_vote());
        assert_eq!(one.holder(), Some(1));
        one.stop();
        let stopped_at = Instant::now();
        wait_until("node 2 takes over", Duration::from_secs(6), || {
            assert!(!(one.holds_vote() && two.holds_vote()));
            two.holds_vote()
        });
        assert!(
            stopped_at.elapsed() >= Duration::from_secs(2),
            "not before node 1's lease ran out"
        );
        assert!(!one.holds_vote());
        two.stop();
        stop.store(true, Ordering::SeqCst);
        handle.join().expect("witness thread");
    }

    #[test]
    fn a_wrong_secret_never_holds_the_vote_and_a_silent_witness_is_unreachable() {
        let (addr, stop, handle) = witness();
        let local = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let wrong =
            WitnessLink::start(addr, local, 7, 1, b"not the secret".to_vec(), 1).expect("start");
        thread::sleep(Duration::from_millis(600));
        assert!(!wrong.holds_vote() && !wrong.reachable() && wrong.holder().is_none());
        drop(wrong);
        stop.store(true, Ordering::SeqCst);
        handle.join().expect("witness thread");

        let right = WitnessLink::start(addr, local, 7, 1, SECRET.to_vec(), 1).expect("start");
        thread::sleep(Duration::from_millis(600));
        assert!(!right.holds_vote() && !right.reachable(), "nobody answers");
    }

    #[test]
    fn node_id_zero_is_refused_at_start() {
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let err = WitnessLink::start(addr, None, 7, 0, SECRET.to_vec(), 1).err();
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
    }
}
