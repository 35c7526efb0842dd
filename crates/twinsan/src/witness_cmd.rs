//! `twinsan witness --listen ADDR[:PORT]`: the third-site tie-breaker of a two-node cluster. It lends its one vote
//! to at most one node at a time (the rules are in [`twinsan_cluster::witness`]), over UDP, authenticated with the
//! cluster's secret. It needs only the config file's `[cluster]` name and secret, and no root.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::{debug, info, warn};
use twinsan_cluster::error::WitnessError;
use twinsan_cluster::witness::{WitnessServer, WitnessServerConfig, DEFAULT_PORT};
use twinsan_node::config::ClusterConfig;

use crate::Global;

/// How long one receive waits, so a signal is acted on within it.
const POLL: Duration = Duration::from_millis(200);
/// At most one warning about refused datagrams per this period.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// `twinsan witness`.
#[derive(clap::Args, Debug)]
pub struct WitnessArgs {
    /// The address to answer on: ADDR or ADDR:PORT (port 5406 when not given), e.g. 198.18.0.3 or [::1]:5406.
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_listen)]
    pub listen: SocketAddr,
}

/// The witness's `--listen`: the one address syntax, port 5406 when not given.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    crate::address::parse_socket_addr(text, DEFAULT_PORT)
}

/// Runs the witness until SIGINT or SIGTERM.
pub fn run(global: &Global, args: WitnessArgs) -> anyhow::Result<()> {
    let config = ClusterConfig::load(&global.config)?;
    let secret = config.secret()?;
    let cluster_id = twinsan_replication::wire::cluster_id(&config.cluster.name);
    let stop = crate::signals::stop_on_signal()?;
    let socket = UdpSocket::bind(args.listen)
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    socket
        .set_read_timeout(Some(POLL))
        .context("setting the receive timeout")?;

    let origin = Instant::now();
    let mut server = WitnessServer::new(
        WitnessServerConfig::new(cluster_id),
        &secret,
        Duration::ZERO,
    )?;
    let lease_ms = server.config().lease.as_millis();
    info!(
        listen = %args.listen,
        cluster = %config.cluster.name,
        lease_ms,
        "witness: listening; lending the vote after a grace of one lease"
    );
    let mut log = WitnessLog::default();
    let mut buf = [0u8; 128];
    while !stop.load(Ordering::SeqCst) {
        match socket.recv_from(&mut buf) {
            Ok((len, from)) => match server.handle(&buf[..len], origin.elapsed()) {
                Ok(answer) => {
                    debug!(%from, node = answer.request.node_id, verdict = ?answer.reply.verdict, "witness: answer");
                    if let Err(e) = socket.send_to(&answer.bytes, from) {
                        log.refused(from, &format!("witness: cannot answer: {e}"));
                    }
                }
                // A duplicate or reordered request is the network's doing, not a peer's fault.
                Err(e @ WitnessError::NotNewer { .. }) => debug!(%from, "{e}"),
                Err(e) => log.refused(from, &format!("{e}; datagram refused, no answer")),
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            // ICMP errors of earlier answers (a node that went away) surface here; nothing to do.
            Err(e) => debug!("witness: receive: {e}"),
        }
        log.changes(&server, origin.elapsed());
    }
    info!("witness: stopped");
    Ok(())
}

/// What was logged, so that each change of holder is logged once and refusals at a bounded rate.
#[derive(Default)]
struct WitnessLog {
    grace_over: bool,
    holder: Option<(u8, u64)>,
    last_warning: Option<Instant>,
    suppressed: u64,
}

impl WitnessLog {
    fn changes(&mut self, server: &WitnessServer, now: Duration) {
        if !self.grace_over && now >= server.grants_from() {
            self.grace_over = true;
            info!("witness: grace over, the vote may be lent");
        }
        let holder = server.holder(now).map(|h| (h.node_id, h.incarnation));
        if holder == self.holder {
            return;
        }
        match (self.holder, holder) {
            (Some((before, _)), Some((node, incarnation))) if before == node => {
                info!(
                    node,
                    incarnation, "witness: vote kept by node {node}, restarted"
                );
            }
            (_, Some((node, incarnation))) => {
                info!(incarnation, "witness: vote granted to node {node}");
            }
            (Some((node, _)), None) => {
                info!(
                    node,
                    "witness: the lease of node {node} ran out; nobody holds the vote"
                );
            }
            (None, None) => {}
        }
        self.holder = holder;
    }

    /// The first refusal at once, then at most one per [`WARN_EVERY`] with the number left out.
    fn refused(&mut self, from: SocketAddr, why: &str) {
        if self
            .last_warning
            .is_some_and(|at| at.elapsed() < WARN_EVERY)
        {
            self.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        self.last_warning = Some(Instant::now());
        if suppressed == 0 {
            warn!(%from, "{why}");
        } else {
            warn!(%from, "{why} (and {suppressed} more since the last warning)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_listen;

    #[test]
    fn listen_defaults_to_the_witness_port() {
        let ok = |t: &str| parse_listen(t).map(|a| a.to_string());
        assert_eq!(ok("127.0.0.13"), Ok("127.0.0.13:5406".into()));
        assert_eq!(ok("[::1]:7000"), Ok("[::1]:7000".into()));
        assert!(parse_listen("witness.example:5406").is_err());
    }
}
