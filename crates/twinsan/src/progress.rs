//! A progress bar for a resync or verify that a command started, fed by the node's event stream.
//!
//! Only on a terminal: the caller decides. The watcher subscribes before the command is sent, waits a short while
//! for a resync or verify to start, then shows percent done, rate and ETA as the daemon reports them, until the
//! replication is back to `Established` (or stops for another reason, which it says).

use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use twinsan_node::admin::{self, ClientError};
use twinsan_node::api::{EventLine, PeerStatus, VolumeStatus};

use crate::volume_cmd::Follow;

/// How long to wait after the answer for a resync or verify to start before printing nothing more.
const START_WAIT: Duration = Duration::from_secs(3);

/// The bar counts hundredths of a percent.
const BAR_LENGTH: u64 = 10_000;

/// Events of one volume, read on a thread so that waiting for them can time out.
pub struct SyncWatcher {
    volume: String,
    follow: Follow,
    events: mpsc::Receiver<Result<EventLine, ClientError>>,
}

impl SyncWatcher {
    /// Subscribes to `volume`'s events; `None` if that fails (the command itself will then say why).
    pub fn subscribe(socket: &Path, volume: &str, follow: Follow) -> Option<SyncWatcher> {
        let stream = admin::events(socket, Some(volume)).ok()?;
        let (tx, events) = mpsc::channel();
        std::thread::Builder::new()
            .name("volume-events".into())
            .spawn(move || {
                for event in stream {
                    let last = event.is_err();
                    if tx.send(event).is_err() || last {
                        break;
                    }
                }
            })
            .ok()?;
        Some(SyncWatcher {
            volume: volume.to_string(),
            follow,
            events,
        })
    }

    /// Shows the bar until the resync or verify ends; returns at once if none starts within [`START_WAIT`].
    pub fn follow(self, out: &mut dyn Write) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_WAIT;
        let mut running: Option<Running> = None;
        loop {
            let event = match &running {
                Some(_) => self.events.recv().ok(),
                None => match self
                    .events
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    Ok(event) => Some(event),
                    Err(mpsc::RecvTimeoutError::Timeout) => return Ok(()),
                    Err(mpsc::RecvTimeoutError::Disconnected) => None,
                },
            };
            let event = match event {
                Some(Ok(event)) if event.status.name == self.volume => event,
                Some(Ok(_)) => continue,
                // The command itself succeeded; a lost event stream only ends the bar.
                Some(Err(_)) | None => {
                    if let Some(r) = running {
                        r.bar.abandon_with_message("lost the node's event stream");
                        writeln!(out)?;
                    }
                    return Ok(());
                }
            };
            match step(&event, self.follow, running.as_ref().map(|r| r.verify)) {
                Step::Wait => {}
                Step::NothingToFollow => return Ok(()),
                Step::Progress(peer) => {
                    let r = running.get_or_insert_with(|| Running::start(&self.volume, &peer));
                    r.update(&peer);
                }
                Step::Finished(summary) => {
                    if let Some(r) = running {
                        r.bar.finish_and_clear();
                    }
                    writeln!(out, "{summary}")?;
                    out.flush()?;
                    return Ok(());
                }
            }
        }
    }
}

/// A resync or verify on screen.
struct Running {
    bar: ProgressBar,
    verify: bool,
}

impl Running {
    fn start(volume: &str, peer: &PeerStatus) -> Running {
        let bar = ProgressBar::with_draw_target(Some(BAR_LENGTH), ProgressDrawTarget::stdout());
        if let Ok(style) = ProgressStyle::with_template("{prefix} [{wide_bar}] {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        let verify = is_verify(&peer.replication);
        let what = if verify { "verify" } else { "resync" };
        bar.set_prefix(format!("{volume} {what} with {}", peer.node));
        Running { bar, verify }
    }

    fn update(&self, peer: &PeerStatus) {
        let done = peer.done.unwrap_or(0.0).clamp(0.0, 100.0);
        self.bar.set_position((done * 100.0).round() as u64);
        self.bar.set_message(progress_message(peer));
    }
}

/// What one event means for the watcher.
#[derive(Debug, PartialEq)]
enum Step {
    /// Nothing started yet; keep waiting.
    Wait,
    /// Nothing will start (no connection for a promotion, nothing to sync on connect).
    NothingToFollow,
    /// A resync or verify runs with this peer.
    Progress(PeerStatus),
    /// It ended; the line says how.
    Finished(String),
}

/// `verify`: `Some(true)` while following a verify, `Some(false)` a resync, `None` before one started.
fn step(event: &EventLine, follow: Follow, verify: Option<bool>) -> Step {
    let v = &event.status;
    if let Some(peer) = v.peers.iter().find(|p| is_running(&p.replication)) {
        return Step::Progress(peer.clone());
    }
    match verify {
        Some(verify) => Step::Finished(summary(v, verify)),
        None => {
            let connected = v.peers.iter().any(|p| p.connection == "Connected");
            let established = v
                .peers
                .iter()
                .any(|p| p.connection == "Connected" && p.replication == "Established");
            match follow {
                Follow::Promotion if !connected => Step::NothingToFollow,
                // The state from before the request is in the `exists` lines: only a change says the connect
                // found nothing to sync.
                Follow::Connect if established && event.kind != "exists" => Step::NothingToFollow,
                _ => Step::Wait,
            }
        }
    }
}

fn is_running(replication: &str) -> bool {
    matches!(
        replication,
        "SyncSource" | "SyncTarget" | "PausedSyncS" | "PausedSyncT" | "VerifyS" | "VerifyT"
    )
}

fn is_verify(replication: &str) -> bool {
    replication.starts_with("Verify")
}

/// The line printed when the resync or verify is over.
fn summary(v: &VolumeStatus, verify: bool) -> String {
    let what = if verify { "verify" } else { "resync" };
    let Some(p) = v.peers.first() else {
        return format!("{}: {what} ended", v.name);
    };
    if p.connection != "Connected" || p.replication != "Established" {
        return format!(
            "{}: {what} stopped: {} connection:{} replication:{}",
            v.name, p.node, p.connection, p.replication
        );
    }
    if verify {
        match p.verify_out_of_sync_kib {
            0 => format!("{}: verify finished: no difference with {}", v.name, p.node),
            kib => format!(
                "{}: verify finished: {kib} KiB differ from {} and are marked out of sync",
                v.name, p.node
            ),
        }
    } else {
        format!(
            "{}: resync finished: disk:{} peer-disk:{}",
            v.name, v.disk, p.peer_disk
        )
    }
}

/// `42.17%  12.0 MiB/s  ETA 3m05s`.
fn progress_message(p: &PeerStatus) -> String {
    let mut s = format!("{:.2}%", p.done.unwrap_or(0.0));
    if p.rate_kib_s > 0 {
        s.push_str(&format!(
            "  {}/s",
            HumanBytes(p.rate_kib_s.saturating_mul(1024))
        ));
    }
    if let Some(eta) = p.eta_s {
        s.push_str(&format!("  ETA {}", compact_duration(eta)));
    }
    if p.replication.starts_with("Paused") {
        s.push_str("  (paused)");
    }
    s
}

/// `42s`, `3m05s`, `1h02m`.
fn compact_duration(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(connection: &str, replication: &str) -> PeerStatus {
        PeerStatus {
            node: "node2".into(),
            connection: connection.into(),
            role: "Secondary".into(),
            peer_disk: "UpToDate".into(),
            replication: replication.into(),
            done: None,
            out_of_sync_kib: 0,
            resync_sent_kib: 0,
            rate_kib_s: 0,
            eta_s: None,
            verify_out_of_sync_kib: 0,
            last_error: None,
            protocol: None,
        }
    }

    fn event(kind: &str, peer: PeerStatus) -> EventLine {
        EventLine {
            time: None,
            kind: kind.into(),
            status: VolumeStatus {
                name: "vol0".into(),
                role: "Primary".into(),
                disk: "UpToDate".into(),
                split_brain: false,
                size_kib: 65536,
                suspended: false,
                lease_hold: false,
                peers: vec![peer],
            },
        }
    }

    #[test]
    fn a_running_resync_is_followed_until_established() {
        let mut p = peer("Connected", "SyncSource");
        p.done = Some(10.0);
        let e = event("change", p.clone());
        assert_eq!(step(&e, Follow::Promotion, None), Step::Progress(p));
        let done = event("change", peer("Connected", "Established"));
        assert_eq!(
            step(&done, Follow::Promotion, Some(false)),
            Step::Finished("vol0: resync finished: disk:UpToDate peer-disk:UpToDate".into())
        );
        let lost = event("change", peer("Connecting", "Off"));
        assert_eq!(
            step(&lost, Follow::Started, Some(true)),
            Step::Finished(
                "vol0: verify stopped: node2 connection:Connecting replication:Off".into()
            )
        );
    }

    #[test]
    fn waiting_for_a_start() {
        // A promotion without a connection starts no sync.
        let alone = event("exists", peer("Connecting", "Off"));
        assert_eq!(step(&alone, Follow::Promotion, None), Step::NothingToFollow);
        // Connect: the old state says nothing; a fresh Established says there is nothing to sync.
        let old = event("exists", peer("Connected", "Established"));
        assert_eq!(step(&old, Follow::Connect, None), Step::Wait);
        let fresh = event("change", peer("Connected", "Established"));
        assert_eq!(step(&fresh, Follow::Connect, None), Step::NothingToFollow);
        assert_eq!(step(&fresh, Follow::Started, None), Step::Wait);
    }

    #[test]
    fn verify_summary_names_the_differences() {
        let mut p = peer("Connected", "Established");
        p.verify_out_of_sync_kib = 64;
        let Step::Finished(text) = step(&event("change", p), Follow::Started, Some(true)) else {
            panic!("finished expected");
        };
        assert!(
            text.starts_with("vol0: verify finished: 64 KiB differ from node2"),
            "{text}"
        );
    }

    #[test]
    fn message_shows_percent_rate_and_eta() {
        let mut p = peer("Connected", "SyncTarget");
        p.done = Some(42.166);
        p.rate_kib_s = 12 * 1024;
        p.eta_s = Some(185);
        assert_eq!(progress_message(&p), "42.17%  12.00 MiB/s  ETA 3m05s");
        p.replication = "PausedSyncT".into();
        p.rate_kib_s = 0;
        p.eta_s = None;
        assert_eq!(progress_message(&p), "42.17%  (paused)");
        assert_eq!(compact_duration(42), "42s");
        assert_eq!(compact_duration(3720), "1h02m");
    }
}
