//! `twinsan volume ...`: talk to the local node over its admin socket, in the manner of `drbdadm`.
//!
//! Every subcommand but `create-md` is one request to the node daemon; `status` and `events` print what it
//! answers in the shape of `drbdadm status` and `drbdsetup events2` (or JSON with `--json`).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;

use twinsan_node::admin;
use twinsan_node::api::{EventLine, PeerStatus, Request, Response, VolumeStatus};

use crate::Global;

/// `twinsan volume ...`.
#[derive(clap::Subcommand, Debug)]
pub enum VolumeCommand {
    /// Write fresh metadata for VOLUME on this node's disk (refuses to overwrite metadata or a filesystem).
    CreateMd {
        volume: String,
        /// Overwrite existing metadata or a filesystem signature.
        #[arg(long)]
        force: bool,
    },
    /// Attach the disk and start connecting to the peer.
    Up { volume: String },
    /// Disconnect from the peer and detach the disk.
    Down { volume: String },
    /// Give up this node's disk and stay connected (like `drbdadm detach`): a Primary serves from the peer.
    /// Refused on a Primary without a connected UpToDate peer.
    Detach { volume: String },
    /// Open this node's disk again and attach it (like `drbdadm attach`), after a detach, a disk failure or a
    /// new `create-md`: the metadata is checked first (a foreign or damaged superblock is refused, nothing
    /// written), then the peer resyncs what changed meanwhile, or everything on a new disk. On a diskless Primary
    /// only while its peer is connected with UpToDate data: it serves on while its disk resyncs.
    Attach { volume: String },
    /// Make this node the primary of VOLUME.
    Primary {
        volume: String,
        /// Promote data that is not known to be up to date (a new volume, or a disaster); starts a full sync.
        #[arg(long)]
        force: bool,
    },
    /// Make this node a secondary of VOLUME.
    Secondary { volume: String },
    /// Connect to the peer.
    Connect {
        volume: String,
        /// After a split brain: throw away this node's changes and resync from the peer.
        #[arg(long)]
        discard_my_data: bool,
    },
    /// Disconnect from the peer (the volume goes StandAlone).
    Disconnect { volume: String },
    /// Show a volume (all volumes without a name), like `drbdadm status`.
    Status {
        volume: Option<String>,
        /// One JSON object per volume.
        #[arg(long)]
        json: bool,
    },
    /// Print the state, then every change until interrupted, like `drbdsetup events2 --timestamps`.
    Events {
        volume: Option<String>,
        /// One JSON object per line (with a `time` field).
        #[arg(long)]
        json: bool,
        /// Leave out the time at the start of each line (the lines of `drbdsetup events2`).
        #[arg(long)]
        no_timestamps: bool,
    },
    /// Compare both copies online; differences are marked out of sync, never repaired silently.
    Verify { volume: String },
    /// Throw away this node's copy and resync it in full from the peer.
    Invalidate { volume: String },
    /// Start a new data generation; with --clear-bitmap, skip the initial sync of two empty new disks.
    NewCurrentUuid {
        volume: String,
        /// Mark both copies identical (only for new, empty disks).
        #[arg(long)]
        clear_bitmap: bool,
    },
    /// Grow VOLUME online after its backing file or device grew on both nodes (run it on the Primary): both
    /// nodes take the smaller of their usable sizes, move their metadata to the new end, and the new area
    /// resyncs; the LUN's capacity grows and initiators get CAPACITY DATA HAS CHANGED. Shrinking is refused.
    #[command(
        after_help = "Grow the backing files (e.g. `truncate -s +1G FILE`) or devices (`lvextend`) on both \
                      nodes first; `volume status --json` shows the size as size_kib."
    )]
    Resize {
        volume: String,
        /// Grow to exactly this size (K, M, G, T suffixes; a multiple of 4 KiB), refused if a node cannot hold
        /// it or if it is smaller than the volume.
        #[arg(long, value_parser = crate::size::parse_size)]
        size: Option<u64>,
        /// Take the new area as identical on both nodes (e.g. both grown with zeros) and skip its resync.
        #[arg(long)]
        assume_clean: bool,
    },
}

impl VolumeCommand {
    /// The request for the commands that are one request and one answer, and whether it may start a resync
    /// or verify worth following with a progress bar.
    fn simple_request(&self) -> Option<(Request, Option<Follow>)> {
        let v = |s: &String| s.clone();
        Some(match self {
            VolumeCommand::Up { volume } => (Request::Up { volume: v(volume) }, None),
            VolumeCommand::Down { volume } => (Request::Down { volume: v(volume) }, None),
            VolumeCommand::Detach { volume } => (Request::Detach { volume: v(volume) }, None),
            VolumeCommand::Attach { volume } => (Request::Attach { volume: v(volume) }, None),
            VolumeCommand::Primary { volume, force } => (
                Request::Primary {
                    volume: v(volume),
                    force: *force,
                },
                force.then_some(Follow::Promotion),
            ),
            VolumeCommand::Secondary { volume } => (Request::Secondary { volume: v(volume) }, None),
            VolumeCommand::Connect {
                volume,
                discard_my_data,
            } => (
                Request::Connect {
                    volume: v(volume),
                    discard_my_data: *discard_my_data,
                },
                Some(Follow::Connect),
            ),
            VolumeCommand::Disconnect { volume } => {
                (Request::Disconnect { volume: v(volume) }, None)
            }
            VolumeCommand::Verify { volume } => {
                (Request::Verify { volume: v(volume) }, Some(Follow::Started))
            }
            VolumeCommand::Invalidate { volume } => (
                Request::Invalidate { volume: v(volume) },
                Some(Follow::Started),
            ),
            VolumeCommand::NewCurrentUuid {
                volume,
                clear_bitmap,
            } => (
                Request::NewCurrentUuid {
                    volume: v(volume),
                    clear_bitmap: *clear_bitmap,
                },
                None,
            ),
            VolumeCommand::Resize {
                volume,
                size,
                assume_clean,
            } => (
                Request::Resize {
                    volume: v(volume),
                    size_bytes: *size,
                    assume_clean: *assume_clean,
                },
                (!assume_clean).then_some(Follow::Started),
            ),
            VolumeCommand::CreateMd { .. }
            | VolumeCommand::Status { .. }
            | VolumeCommand::Events { .. } => return None,
        })
    }
}

/// Runs one `twinsan volume` command.
pub fn run(global: &Global, cmd: VolumeCommand) -> anyhow::Result<()> {
    if let VolumeCommand::CreateMd { volume, force } = &cmd {
        return crate::init_cmd::create_md(global, volume, *force);
    }
    let (_, socket) = crate::cluster_cmd::socket(global)?;
    let interactive = std::io::stdout().is_terminal();
    execute(&socket, cmd, &mut std::io::stdout(), interactive)
}

/// Everything after the config: talk to `socket`, print to `out`; `interactive` allows a progress bar.
fn execute(
    socket: &Path,
    cmd: VolumeCommand,
    out: &mut dyn Write,
    interactive: bool,
) -> anyhow::Result<()> {
    match cmd {
        VolumeCommand::Status { volume, json } => print_status(socket, volume, json, out),
        VolumeCommand::Events {
            volume,
            json,
            no_timestamps,
        } => print_events(socket, volume.as_deref(), json, !no_timestamps, out),
        other => {
            let Some((request, follow)) = other.simple_request() else {
                anyhow::bail!("{other:?} is not a request to the node daemon");
            };
            let volume = request_volume(&request).to_string();
            // Subscribe before asking, so that a resync that starts and ends quickly is still seen.
            let watcher = match follow {
                Some(follow) if interactive => {
                    crate::progress::SyncWatcher::subscribe(socket, &volume, follow)
                }
                _ => None,
            };
            if let Some(message) = send(socket, &request)? {
                writeln!(out, "{message}")?;
                out.flush()?;
            }
            if let Some(watcher) = watcher {
                watcher.follow(out)?;
            }
            Ok(())
        }
    }
}

/// What a command may start, for the progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    /// `primary --force`: a full sync, if the peer is connected.
    Promotion,
    /// `connect`: a resync, once connected, if the generations say so.
    Connect,
    /// `verify`, `invalidate`: a verify or resync right away.
    Started,
}

fn request_volume(request: &Request) -> &str {
    match request {
        Request::Up { volume }
        | Request::Down { volume }
        | Request::Detach { volume }
        | Request::Attach { volume }
        | Request::Primary { volume, .. }
        | Request::Secondary { volume }
        | Request::Connect { volume, .. }
        | Request::Disconnect { volume }
        | Request::Verify { volume }
        | Request::Invalidate { volume }
        | Request::NewCurrentUuid { volume, .. }
        | Request::Resize { volume, .. } => volume,
        Request::Status { volume } | Request::Events { volume } => volume.as_deref().unwrap_or(""),
        _ => "",
    }
}

/// Sends a request that is answered `Ok` or `Error`; an `Error` becomes the command's error.
pub fn send(socket: &Path, request: &Request) -> anyhow::Result<Option<String>> {
    match admin::request(socket, request)? {
        Response::Ok { message } => Ok(message),
        Response::Error { message } => Err(anyhow::anyhow!(message)),
        Response::Status { .. } | Response::Cluster { .. } | Response::Target { .. } => {
            anyhow::bail!("the node daemon answered a status to {request:?}")
        }
    }
}

fn print_status(
    socket: &Path,
    volume: Option<String>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let request = Request::Status {
        volume: volume.clone(),
    };
    let mut volumes = match admin::request(socket, &request)? {
        Response::Status { volumes } => volumes,
        Response::Error { message } => anyhow::bail!(message),
        Response::Ok { .. } | Response::Cluster { .. } | Response::Target { .. } => {
            anyhow::bail!("the node daemon answered the status request without a status")
        }
    };
    if let Some(name) = &volume {
        volumes.retain(|v| &v.name == name);
        if volumes.is_empty() {
            anyhow::bail!("no volume named {name} on this node");
        }
        volumes.truncate(1);
    }
    for (i, v) in volumes.iter().enumerate() {
        if json {
            writeln!(out, "{}", serde_json::to_string(v)?)?;
        } else {
            if i > 0 {
                writeln!(out)?;
            }
            write!(out, "{}", format_status(v))?;
        }
    }
    out.flush()?;
    Ok(())
}

fn print_events(
    socket: &Path,
    volume: Option<&str>,
    json: bool,
    timestamps: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut lines = EventLines::default();
    for event in admin::events(socket, volume)? {
        let event = event?;
        let text = if json {
            vec![serde_json::to_string(&event)?]
        } else if timestamps {
            // A node of a release before timestamps sends none: the events stream live, so the time this
            // command received it is within a moment of the node's.
            let time = event
                .time
                .clone()
                .unwrap_or_else(|| twinsan_node::api::timestamp(std::time::SystemTime::now()));
            lines
                .render(&event)
                .into_iter()
                .map(|line| format!("{time} {line}"))
                .collect()
        } else {
            lines.render(&event)
        };
        // One flush per event, so that a reader on a pipe sees each line as it happens.
        let written = text
            .iter()
            .try_for_each(|line| writeln!(out, "{line}"))
            .and_then(|()| out.flush());
        match written {
            Ok(()) => {}
            // `twinsan volume events | head`: the reader has seen enough.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A volume's status as `drbdadm status` shows a resource: the volume and its disk, then each peer and, when
/// connected, the peer's disk and the replication state. Ends with a newline.
pub fn format_status(v: &VolumeStatus) -> String {
    let mut s = format!("{} role:{}", v.name, v.role);
    if v.suspended {
        s.push_str(suspended_word(v));
    }
    if v.split_brain {
        s.push_str(" split-brain:yes");
    }
    s.push_str(&format!("\n  disk:{}\n", v.disk));
    for p in &v.peers {
        let connected = p.connection == "Connected";
        if connected {
            s.push_str(&format!("  {} role:{}\n", p.node, p.role));
        } else {
            s.push_str(&format!("  {} connection:{}\n", p.node, p.connection));
        }
        let mut fields = Vec::new();
        if connected {
            // drbdadm leaves out the normal case.
            if p.replication != "Established" {
                fields.push(format!("replication:{}", p.replication));
            }
            fields.push(format!("peer-disk:{}", p.peer_disk));
            if let Some(done) = p.done {
                fields.push(format!("done:{done:.2}"));
            }
        }
        fields.extend(sync_counters(p));
        if !fields.is_empty() {
            s.push_str(&format!("    {}\n", fields.join(" ")));
        }
        if let Some(why) = &p.last_error {
            s.push_str(&format!("    last-error: {why}\n"));
        }
    }
    s
}

/// The out-of-sync amounts worth showing (non-zero ones).
fn sync_counters(p: &PeerStatus) -> Vec<String> {
    let mut fields = Vec::new();
    if p.out_of_sync_kib > 0 {
        fields.push(format!("out-of-sync:{}KiB", p.out_of_sync_kib));
    }
    if p.verify_out_of_sync_kib > 0 {
        fields.push(format!(
            "verify-out-of-sync:{}KiB",
            p.verify_out_of_sync_kib
        ));
    }
    fields
}

/// Turns event objects into `drbdsetup events2`-style lines. A `change` event carries the whole status; only the
/// lines that differ from the last ones printed for that volume are printed again.
#[derive(Default)]
pub struct EventLines {
    last: HashMap<String, Vec<(String, String)>>,
}

impl EventLines {
    /// The lines to print for `event`.
    pub fn render(&mut self, event: &EventLine) -> Vec<String> {
        let v = &event.status;
        let objects = object_lines(v);
        let previous = self.last.insert(v.name.clone(), objects.clone());
        let mut lines = Vec::new();
        let kind = match event.kind.as_str() {
            "exists" => {
                return objects
                    .into_iter()
                    .map(|(_, body)| format!("exists {body}"))
                    .collect();
            }
            "split-brain" => {
                if v.peers.is_empty() {
                    lines.push(format!("split-brain volume name:{}", v.name));
                }
                for p in &v.peers {
                    lines.push(format!(
                        "split-brain volume name:{} peer-node:{}",
                        v.name, p.node
                    ));
                }
                "change"
            }
            other => other,
        };
        for (key, body) in objects {
            let unchanged = previous
                .as_ref()
                .is_some_and(|prev| prev.iter().any(|(k, b)| *k == key && *b == body));
            if !unchanged {
                lines.push(format!("{kind} {body}"));
            }
        }
        lines
    }
}

/// The `volume` object and one `peer` object per peer, each as (key, text without the event kind).
fn object_lines(v: &VolumeStatus) -> Vec<(String, String)> {
    let mut volume = format!("volume name:{} role:{} disk:{}", v.name, v.role, v.disk);
    if v.suspended {
        volume.push_str(suspended_word(v));
    }
    if v.split_brain {
        volume.push_str(" split-brain:yes");
    }
    let mut objects = vec![(String::new(), volume)];
    for p in &v.peers {
        let mut peer = format!(
            "peer name:{} peer-node:{} connection:{} role:{} peer-disk:{} replication:{}",
            v.name, p.node, p.connection, p.role, p.peer_disk, p.replication
        );
        if let Some(done) = p.done {
            peer.push_str(&format!(" done:{done:.2}"));
        }
        for field in sync_counters(p) {
            peer.push(' ');
            peer.push_str(&field);
        }
        objects.push((p.node.clone(), peer));
    }
    objects
}

/// Why writes wait: ` suspended:lease` (no lease from the cluster: the node may have been frozen) or
/// ` suspended:yes` (fencing).
fn suspended_word(v: &VolumeStatus) -> &'static str {
    if v.lease_hold {
        " suspended:lease"
    } else {
        " suspended:yes"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::path::PathBuf;
    use twinsan_node::config::ClusterConfig;

    fn peer(connection: &str, replication: &str) -> PeerStatus {
        PeerStatus {
            node: "node2".into(),
            connection: connection.into(),
            role: if connection == "Connected" {
                "Secondary"
            } else {
                "Unknown"
            }
            .into(),
            peer_disk: if connection == "Connected" {
                "UpToDate"
            } else {
                "DUnknown"
            }
            .into(),
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

    fn volume(role: &str, peer: PeerStatus) -> VolumeStatus {
        VolumeStatus {
            name: "vol0".into(),
            role: role.into(),
            disk: "UpToDate".into(),
            split_brain: false,
            size_kib: 65536,
            suspended: false,
            lease_hold: false,
            peers: vec![peer],
        }
    }

    #[test]
    fn status_of_a_healthy_pair() {
        let v = volume("Primary", peer("Connected", "Established"));
        assert_eq!(
            format_status(&v),
            "vol0 role:Primary\n  disk:UpToDate\n  node2 role:Secondary\n    peer-disk:UpToDate\n"
        );
    }

    #[test]
    fn status_during_a_resync() {
        let mut p = peer("Connected", "SyncSource");
        p.peer_disk = "Inconsistent".into();
        p.done = Some(42.1666);
        p.out_of_sync_kib = 151_552;
        let v = volume("Primary", p);
        assert_eq!(
            format_status(&v),
            "vol0 role:Primary\n  disk:UpToDate\n  node2 role:Secondary\n    \
             replication:SyncSource peer-disk:Inconsistent done:42.17 out-of-sync:151552KiB\n"
        );
    }

    #[test]
    fn status_while_not_connected() {
        let v = volume("Secondary", peer("Connecting", "Off"));
        assert_eq!(
            format_status(&v),
            "vol0 role:Secondary\n  disk:UpToDate\n  node2 connection:Connecting\n"
        );

        let mut p = peer("StandAlone", "Off");
        p.out_of_sync_kib = 4096;
        let mut v = volume("Primary", p);
        v.split_brain = true;
        v.suspended = true;
        assert_eq!(
            format_status(&v),
            "vol0 role:Primary suspended:yes split-brain:yes\n  disk:UpToDate\n  node2 connection:StandAlone\n    \
             out-of-sync:4096KiB\n"
        );
    }

    #[test]
    fn a_connecting_peer_says_why() {
        let mut p = peer("Connecting", "Off");
        p.last_error =
            Some("replication peer node2 failed authentication: wrong shared secret".into());
        assert_eq!(
            format_status(&volume("Secondary", p)),
            "vol0 role:Secondary\n  disk:UpToDate\n  node2 connection:Connecting\n    \
             last-error: replication peer node2 failed authentication: wrong shared secret\n"
        );
    }

    #[test]
    fn status_after_a_verify_that_found_differences() {
        let mut p = peer("Connected", "Established");
        p.verify_out_of_sync_kib = 8;
        p.out_of_sync_kib = 8;
        let v = volume("Primary", p);
        assert!(format_status(&v)
            .ends_with("    peer-disk:UpToDate out-of-sync:8KiB verify-out-of-sync:8KiB\n"));
    }

    fn event(kind: &str, status: VolumeStatus) -> EventLine {
        EventLine {
            kind: kind.into(),
            status,
            time: None,
        }
    }

    #[test]
    fn events_print_exists_then_only_what_changed() {
        let mut lines = EventLines::default();
        let start = volume("Primary", peer("Connected", "Established"));
        assert_eq!(
            lines.render(&event("exists", start.clone())),
            [
                "exists volume name:vol0 role:Primary disk:UpToDate",
                "exists peer name:vol0 peer-node:node2 connection:Connected role:Secondary peer-disk:UpToDate \
                 replication:Established",
            ]
        );

        let mut syncing = start.clone();
        syncing.peers[0].replication = "SyncSource".into();
        syncing.peers[0].peer_disk = "Inconsistent".into();
        syncing.peers[0].done = Some(12.344);
        assert_eq!(
            lines.render(&event("change", syncing.clone())),
            ["change peer name:vol0 peer-node:node2 connection:Connected role:Secondary peer-disk:Inconsistent \
              replication:SyncSource done:12.34"]
        );

        // Only the rate moved: nothing to print.
        syncing.peers[0].rate_kib_s = 1000;
        assert!(lines.render(&event("change", syncing.clone())).is_empty());

        let mut secondary = syncing;
        secondary.role = "Secondary".into();
        assert_eq!(
            lines.render(&event("change", secondary)),
            ["change volume name:vol0 role:Secondary disk:UpToDate"]
        );
    }

    #[test]
    fn a_split_brain_has_its_own_line() {
        let mut lines = EventLines::default();
        lines.render(&event(
            "exists",
            volume("Primary", peer("Connecting", "Off")),
        ));
        let mut v = volume("Primary", peer("StandAlone", "Off"));
        v.split_brain = true;
        assert_eq!(
            lines.render(&event("split-brain", v)),
            [
                "split-brain volume name:vol0 peer-node:node2",
                "change volume name:vol0 role:Primary disk:UpToDate split-brain:yes",
                "change peer name:vol0 peer-node:node2 connection:StandAlone role:Unknown peer-disk:DUnknown \
                 replication:Off",
            ]
        );
    }

    #[test]
    fn a_change_for_a_volume_not_seen_before_prints_everything() {
        let mut lines = EventLines::default();
        let out = lines.render(&event(
            "change",
            volume("Secondary", peer("Connecting", "Off")),
        ));
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|l| l.starts_with("change ")));
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        for args in [
            &[
                "twinsan", "--node", "node2", "volume", "status", "vol0", "--json",
            ][..],
            &[
                "twinsan", "volume", "status", "vol0", "--json", "--node", "node2",
            ][..],
        ] {
            let cli = crate::Cli::try_parse_from(args).expect("parses");
            assert_eq!(cli.global.node.as_deref(), Some("node2"));
            assert!(matches!(
                cli.command,
                crate::Command::Volume(VolumeCommand::Status { volume: Some(ref v), json: true }) if v == "vol0"
            ));
        }
        let cli = crate::Cli::try_parse_from(["twinsan", "volume", "new-current-uuid", "vol0"])
            .expect("parses");
        assert!(matches!(
            cli.command,
            crate::Command::Volume(VolumeCommand::NewCurrentUuid {
                clear_bitmap: false,
                ..
            })
        ));
        let cli = crate::Cli::try_parse_from([
            "twinsan",
            "volume",
            "connect",
            "--discard-my-data",
            "vol0",
        ])
        .expect("parses");
        assert!(matches!(
            cli.command,
            crate::Command::Volume(VolumeCommand::Connect {
                discard_my_data: true,
                ..
            })
        ));
        assert!(
            crate::Cli::try_parse_from(["twinsan", "volume", "primary"]).is_err(),
            "VOLUME is required"
        );
    }

    /// A daemon that knows vol0 (Primary, syncing to node2), refuses `down`, and streams one change per
    /// subscriber before closing the stream.
    struct FakeDaemon;

    fn syncing() -> VolumeStatus {
        let mut p = peer("Connected", "SyncSource");
        p.peer_disk = "Inconsistent".into();
        p.done = Some(50.0);
        volume("Primary", p)
    }

    impl admin::AdminService for FakeDaemon {
        fn handle(&self, request: Request) -> Response {
            match request {
                Request::Status {
                    volume: None | Some(_),
                } => Response::Status {
                    volumes: vec![
                        syncing(),
                        VolumeStatus {
                            name: "vol1".into(),
                            ..syncing()
                        },
                    ],
                },
                Request::Down { volume } => Response::Error {
                    message: format!("{volume} is primary: demote it first"),
                },
                Request::Up { volume } => Response::Ok {
                    message: Some(format!("{volume} is up")),
                },
                _ => Response::Ok { message: None },
            }
        }

        fn subscribe(
            &self,
            _volume: Option<&str>,
        ) -> Result<(Vec<EventLine>, tokio::sync::broadcast::Receiver<EventLine>), String> {
            let (tx, rx) = tokio::sync::broadcast::channel(4);
            let mut done = syncing();
            done.peers[0].replication = "Established".into();
            done.peers[0].peer_disk = "UpToDate".into();
            done.peers[0].done = None;
            tx.send(event("change", done)).map_err(|e| e.to_string())?;
            Ok((vec![event("exists", syncing())], rx))
        }
    }

    /// The fake daemon on its own runtime thread, in a temp dir removed on drop.
    struct Daemon {
        dir: tempfile::TempDir,
        stop: Option<tokio::sync::watch::Sender<bool>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Daemon {
        fn start(tag: &str) -> Daemon {
            let dir = tempfile::Builder::new()
                .prefix(&format!("twinsan-volume-cmd-{tag}-"))
                .tempdir()
                .expect("temp dir");
            let socket = dir.path().join("node1.sock");
            let (stop, rx) = tokio::sync::watch::channel(false);
            let path = socket.clone();
            let thread = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(admin::serve(&path, std::sync::Arc::new(FakeDaemon), rx))
                    .expect("serve");
            });
            for _ in 0..500 {
                if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Daemon {
                dir,
                stop: Some(stop),
                thread: Some(thread),
            }
        }

        fn socket(&self) -> PathBuf {
            self.dir.path().join("node1.sock")
        }

        fn run(&self, args: &[&str]) -> anyhow::Result<String> {
            let mut argv = vec!["twinsan", "volume"];
            argv.extend_from_slice(args);
            let cli = crate::Cli::try_parse_from(argv)?;
            let crate::Command::Volume(cmd) = cli.command else {
                anyhow::bail!("not a volume command");
            };
            let mut out = Vec::new();
            execute(&self.socket(), cmd, &mut out, false)?;
            Ok(String::from_utf8(out)?)
        }
    }

    impl Drop for Daemon {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(true);
            }
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    #[test]
    fn commands_against_a_daemon() {
        let daemon = Daemon::start("e2e");
        assert_eq!(daemon.run(&["up", "vol0"]).expect("up"), "vol0 is up\n");
        assert_eq!(daemon.run(&["secondary", "vol0"]).expect("secondary"), "");
        let err = daemon
            .run(&["down", "vol0"])
            .expect_err("refused")
            .to_string();
        assert_eq!(err, "vol0 is primary: demote it first");

        let text = daemon.run(&["status"]).expect("status");
        assert!(text.starts_with("vol0 role:Primary\n"), "{text}");
        assert!(
            text.contains("\n\nvol1 role:Primary\n"),
            "a blank line between volumes: {text}"
        );

        let one = daemon
            .run(&["status", "vol1", "--json"])
            .expect("status --json");
        assert_eq!(one.lines().count(), 1, "{one}");
        let parsed: VolumeStatus = serde_json::from_str(&one).expect("one JSON object");
        assert_eq!(parsed.name, "vol1");
        let all = daemon.run(&["status", "--json"]).expect("status --json");
        assert_eq!(all.lines().count(), 2, "{all}");
        let err = daemon
            .run(&["status", "vol7"])
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("vol7"), "{err}");

        // The fake's event stream ends after one change. Its events carry no time (a node of a release before
        // timestamps): each line gets the time it was received, unless --no-timestamps.
        let stamped = daemon.run(&["events", "vol0"]).expect("events");
        assert!(
            stamped.lines().all(|l| l
                .split_once(' ')
                .is_some_and(|(t, _)| t.ends_with('Z') && t.contains('T'))),
            "{stamped}"
        );
        let events = daemon
            .run(&["events", "--no-timestamps", "vol0"])
            .expect("events");
        let lines: Vec<&str> = events.lines().collect();
        assert_eq!(lines.len(), 3, "{events}");
        assert!(
            lines[0].starts_with("exists volume name:vol0 role:Primary"),
            "{events}"
        );
        assert!(
            lines[1].contains("replication:SyncSource done:50.00"),
            "{events}"
        );
        assert!(
            lines[2].starts_with("change peer name:vol0 peer-node:node2"),
            "{events}"
        );
        assert!(lines[2].contains("replication:Established"), "{events}");
        let json = daemon.run(&["events", "--json"]).expect("events --json");
        let kinds: Vec<String> = json
            .lines()
            .map(|l| {
                serde_json::from_str::<EventLine>(l)
                    .expect("an event object")
                    .kind
            })
            .collect();
        assert_eq!(kinds, ["exists", "change"]);
    }

    #[test]
    fn a_started_resync_is_followed_to_its_end_on_a_terminal() {
        let daemon = Daemon::start("follow");
        let cli = crate::Cli::try_parse_from(["twinsan", "volume", "invalidate", "vol0"])
            .expect("parses");
        let crate::Command::Volume(cmd) = cli.command else {
            panic!("volume command");
        };
        let mut out = Vec::new();
        execute(&daemon.socket(), cmd, &mut out, true).expect("invalidate");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "vol0: resync finished: disk:UpToDate peer-disk:UpToDate\n"
        );
        // Without a terminal nothing extra is printed.
        assert_eq!(daemon.run(&["invalidate", "vol0"]).expect("invalidate"), "");
    }

    #[test]
    fn no_daemon_is_a_clear_error() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path();
        let cli = crate::Cli::try_parse_from(["twinsan", "volume", "up", "vol0"]).expect("parses");
        let crate::Command::Volume(cmd) = cli.command else {
            panic!("volume command");
        };
        let err =
            execute(&dir.join("node1.sock"), cmd, &mut Vec::new(), false).expect_err("no daemon");
        assert!(
            err.to_string().contains("is `twinsan node run` running"),
            "{err}"
        );
    }

    const CONFIG: &str = r#"
[cluster]
name = "t"
secret = "a test secret of sufficient length"

[[node]]
name = "node1"
id = 1
address = "127.0.0.11"
admin_socket = "n1.sock"

[[node]]
name = "node2"
id = 2
address = "127.0.0.12"
"#;

    #[test]
    fn the_node_is_picked_by_name() {
        let path = Path::new("/etc/twinsan/twinsan.toml");
        let config = ClusterConfig::parse(CONFIG, path, Path::new("/srv/t")).expect("valid");
        let n1 = config.this_node(Some("node1")).expect("node1");
        assert_eq!(config.admin_socket(n1), Path::new("/srv/t/n1.sock"));
        let err = config
            .this_node(Some("node3"))
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("no [[node]] is named node3"), "{err}");
    }
}
