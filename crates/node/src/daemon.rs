//! `twinsan node run`: one cluster node — its volumes, the iSCSI target for the volumes it is Primary for, and
//! the admin socket.
//!
//! A volume's LUN is served only where the volume is Primary: the target comes up after a promotion and goes
//! down before a demotion (a write in flight finishes first), so a Secondary never answers an initiator for a
//! volume it does not own. Until the cluster manager exists, roles change only by `twinsan volume primary` and
//! `secondary` (the `manual` mode of the config).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::{broadcast, watch};
use tracing::{error, info, warn};
use twinsan_replication::engine::{AdminCommand, EngineConfig};
use twinsan_replication::resync::{RateConfig, ResyncConfig};
use twinsan_replication::wire::{self, SharedSecret};
use twinsan_scsi::LogicalUnit;
use twinsan_target::stats::IoStats;
use twinsan_target::{Running, Server, ServerConfig};

use crate::admin::{self, AdminService};
use crate::api::{self, Request, Response};
use crate::cluster::ClusterManager;
use crate::config::reload::Change;
use crate::config::{ClusterConfig, HttpEndpoint, NodeConfig, TargetChap};
use crate::http::{self, MetricsSource};
use crate::metrics::{ClusterSample, Snapshot, VolumeSample};
use crate::process::ProcessSample;
use crate::volume::{ClaimedDisk, DiskPaths, Handlers, LinkConfig, ReplicatedDevice, Volume};

/// An error that stops the daemon from starting; the text tells the admin what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config is unusable for this node.
    #[error("{0}")]
    Config(String),
    /// A volume could not be started.
    #[error("volume {volume}: {source}")]
    Volume {
        /// The volume.
        volume: String,
        /// Why.
        source: crate::volume::VolumeError,
    },
    /// The runtime or a socket could not be set up.
    #[error("{0}")]
    Io(String),
}

/// How long a stopping node waits for its resources to move to the peer before it stops what still runs.
const DRAIN_AT_STOP: Duration = Duration::from_secs(30);

/// The running node.
struct Node {
    /// What a config reload replaces: the config, the targets' CHAP policies, the volumes and their logical
    /// units. Read as a snapshot ([`Node::live`]).
    live: Mutex<NodeLive>,
    /// One reload at a time.
    reloading: Mutex<()>,
    me: NodeConfig,
    peer: NodeConfig,
    /// The replication secret, read once at start.
    secret: Vec<u8>,
    events: broadcast::Sender<api::EventLine>,
    targets: Mutex<Targets>,
    /// One reconciliation at a time (the periodic one and an admin command's).
    reconciling: tokio::sync::Mutex<()>,
    runtime: tokio::runtime::Handle,
    /// The cluster manager; `None` in manual mode.
    cluster: Option<Arc<ClusterManager>>,
    /// Where the targets count their I/O: `None` when the node has no HTTP endpoint (nothing is counted).
    io: Option<Arc<IoStats>>,
}

/// The parts of a running node a config reload replaces.
#[derive(Clone)]
struct NodeLive {
    config: Arc<ClusterConfig>,
    chap: Arc<TargetChap>,
    volumes: Arc<BTreeMap<String, Arc<Volume>>>,
    luns: Arc<HashMap<String, Arc<LogicalUnit>>>,
}

/// The iSCSI server of this node and the targets it serves now.
#[derive(Default)]
struct Targets {
    serving: BTreeSet<String>,
    server: Option<Running>,
    /// Volumes being demoted: their targets stay down.
    held: HashSet<String>,
    /// Targets that `target start|stop` decides (manual mode, for an outside cluster manager): never served by
    /// the automatic server at the node's own address.
    commanded: BTreeMap<String, Commanded>,
}

/// A target that `target start` or `target stop` took over from the automatic server.
enum Commanded {
    /// Served on these portals by a server of its own.
    Started {
        portals: Vec<SocketAddr>,
        server: Running,
    },
    /// Served nowhere on this node.
    Stopped,
}

/// Runs node `node_name` of `config` until SIGINT or SIGTERM, serving the targets with the CHAP policies `chap`
/// (`ClusterConfig::load_chap`, read by the caller before anything starts).
pub fn run(config: ClusterConfig, chap: TargetChap, node_name: &str) -> Result<(), DaemonError> {
    let me = config.node(node_name).cloned().ok_or_else(|| {
        DaemonError::Config(format!(
            "no [[node]] is named {node_name} in {}",
            config.source.display()
        ))
    })?;
    let peer = config
        .peer_of(node_name)
        .cloned()
        .ok_or_else(|| DaemonError::Config("the config has no peer node".into()))?;
    let secret = config
        .secret()
        .map_err(|e| DaemonError::Config(e.to_string()))?;
    // Every disk of this node is claimed before any is read and before any socket is bound: a second daemon for
    // this node (or one whose disk another process holds) stops here, and the running one's disks stay as they
    // are (SPEC 3, invariant 9).
    let mut disks = Vec::new();
    for v in &config.volumes {
        if let Some(claimed) = claim_disk(&config, &me, v)? {
            disks.push((v, claimed));
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("twinsan")
        .build()
        .map_err(|e| DaemonError::Io(format!("cannot start the runtime: {e}")))?;
    // The HTTP endpoint is bound before anything starts: a configured one that cannot be bound stops the node
    // here; the default one is left out with a warning (another program may hold port 9942).
    let http_listener = match config.http_endpoint(&me) {
        HttpEndpoint::Off => None,
        HttpEndpoint::Configured(addr) => {
            Some(runtime.block_on(http::bind(addr)).map_err(|e| {
                DaemonError::Io(format!(
                "node[{}].http: cannot listen on {addr}: {e} (give another port, or http = false)",
                me.name
            ))
            })?)
        }
        HttpEndpoint::Default(addr) => match runtime.block_on(http::bind(addr)) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!(
                    "no metrics endpoint: cannot listen on {addr}: {e}; set http = \"ADDR:PORT\" in this node's \
                     [[node]] section, or http = false"
                );
                None
            }
        },
    };
    let io = http_listener.as_ref().map(|_| Arc::new(IoStats::default()));
    let (events, _) = broadcast::channel(1024);
    let mut volumes = BTreeMap::new();
    for (v, disk) in disks {
        let volume = start_volume(&config, &me, &peer, &secret, v, disk, &events)?;
        volumes.insert(v.name.clone(), volume);
    }
    let mut luns = HashMap::new();
    for t in &config.targets {
        for l in &t.lun {
            if let Some(volume) = volumes.get(&l.volume) {
                luns.insert(l.volume.clone(), logical_unit(volume, &t.iqn));
            }
        }
    }
    let cluster = if config.cluster.manual {
        None
    } else {
        Some(
            ClusterManager::start(
                config.clone(),
                me.clone(),
                secret.clone(),
                chap.clone(),
                volumes.clone(),
                luns.clone(),
                runtime.handle().clone(),
                io.clone(),
            )
            .map_err(|e| DaemonError::Io(format!("cluster manager: {e}")))?,
        )
    };
    let socket = config.admin_socket(&me);
    let node = Arc::new(Node {
        cluster,
        me: me.clone(),
        peer,
        secret,
        live: Mutex::new(NodeLive {
            config: Arc::new(config),
            chap: Arc::new(chap),
            volumes: Arc::new(volumes),
            luns: Arc::new(luns),
        }),
        reloading: Mutex::new(()),
        events,
        targets: Mutex::new(Targets::default()),
        reconciling: tokio::sync::Mutex::new(()),
        runtime: runtime.handle().clone(),
        io,
    });
    let result = runtime.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        let admin_node: Arc<dyn AdminService> = node.clone();
        let admin_task = {
            let socket = socket.clone();
            let stop = stop_rx.clone();
            tokio::spawn(async move { admin::serve(&socket, admin_node, stop).await })
        };
        // The admin socket must be up, or the node is not manageable.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if admin_task.is_finished() {
            return match admin_task.await {
                Ok(Err(e)) => Err(DaemonError::Io(format!(
                    "admin socket {}: {e}",
                    socket.display()
                ))),
                _ => Err(DaemonError::Io(format!(
                    "admin socket {} stopped",
                    socket.display()
                ))),
            };
        }
        let http_task = http_listener.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                info!(node = %me.name, "metrics at http://{addr}/metrics");
            }
            let source: Arc<dyn MetricsSource> = node.clone();
            let console: Arc<dyn crate::console::ConsoleSource> = node.clone();
            tokio::spawn(http::serve(
                listener,
                source,
                Some(console),
                stop_rx.clone(),
            ))
        });
        info!(node = %me.name, socket = %socket.display(), "node running");
        // systemd (Type=notify): the node answers its admin socket, its volumes run and the cluster manager
        // decides from here on. Without NOTIFY_SOCKET (not under systemd) this does nothing.
        notify_systemd(&[
            NotifyState::Ready,
            NotifyState::Status(&format!("node {} running", me.name)),
        ]);
        // In manual mode the daemon serves the targets of the volumes that are Primary here, at its own address;
        // with the cluster manager, the manager runs them on their virtual IPs.
        let reconciler = node.cluster.is_none().then(|| {
            let node = node.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        _ = tick.tick() => node.reconcile().await,
                    }
                }
            })
        });
        // SIGHUP: reload the config, as `twinsan node reload` does; the outcome goes to the log.
        let reloader = {
            let node = node.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let mut hup = match signal(SignalKind::hangup()) {
                    Ok(s) => s,
                    Err(e) => {
                        error!("cannot watch SIGHUP (config reload): {e}");
                        return;
                    }
                };
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        _ = hup.recv() => {
                            let node = node.clone();
                            match tokio::task::spawn_blocking(move || node.reload()).await {
                                Ok(Ok(message)) => info!("SIGHUP: {message}"),
                                Ok(Err(message)) => warn!("SIGHUP: {message}"),
                                Err(e) => error!("SIGHUP: the reload did not finish: {e}"),
                            }
                        }
                    }
                }
            })
        };
        wait_for_signal().await;
        info!("stopping");
        notify_systemd(&[
            NotifyState::Stopping,
            NotifyState::Status("handing over and stopping"),
        ]);
        if let Some(cluster) = &node.cluster {
            // Hand the resources over while the admin socket still answers.
            let cluster = cluster.clone();
            let _ = tokio::task::spawn_blocking(move || cluster.shutdown(DRAIN_AT_STOP)).await;
        }
        let _ = stop_tx.send(true);
        let _ = reloader.await;
        if let Some(reconciler) = reconciler {
            let _ = reconciler.await;
        }
        node.stop_targets().await;
        node.stop_commanded().await;
        let _ = admin_task.await;
        if let Some(task) = http_task {
            let _ = task.await;
        }
        Ok(())
    });
    // Demote what is Primary (the target is down, so nothing is in flight) and close every volume cleanly.
    for volume in node.live().volumes.values() {
        if volume.is_primary() {
            if let Err(e) = volume.admin(AdminCommand::Secondary) {
                warn!(volume = %volume.name(), "demote at stop: {e}");
            }
        }
        volume.shutdown();
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

/// Tells systemd where the node is (`sd_notify`); a failure to reach it only goes to the debug log.
fn notify_systemd(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// Starts volume `v` of `config` on node `me` with its claimed disk: the engine, the link to `peer`.
fn start_volume(
    config: &ClusterConfig,
    me: &NodeConfig,
    peer: &NodeConfig,
    secret: &[u8],
    v: &crate::config::VolumeConfig,
    disk: ClaimedDisk,
    events: &broadcast::Sender<api::EventLine>,
) -> Result<Arc<Volume>, DaemonError> {
    // The controller re-requests what completed once per 100 ms step, so the fill target bounds the rate to
    // fill / step; DRBD's defaults (fill of a few MiB, 2 s to close a gap) are sized for WAN links and keep a
    // local resync near 100 MiB/s. Here: up to 64 MiB in flight (so up to 640 MiB/s), a gap closed in 300 ms.
    let rate = RateConfig {
        target: twinsan_replication::resync::RateTarget::Fill { bytes: 64 << 20 },
        plan_ahead: Duration::from_millis(300),
        ..RateConfig::default()
    };
    let resync = ResyncConfig {
        rate: match v.resync_max_kib_s {
            Some(max) => RateConfig {
                max_rate_kib_s: max,
                ..rate
            },
            None => rate,
        },
        max_in_flight: 64,
        ..ResyncConfig::default()
    };
    let engine_config = EngineConfig {
        volume: v.name.clone(),
        node_id: me.id,
        peer_node_id: peer.id,
        peer_name: peer.name.clone(),
        cluster_id: wire::cluster_id(&config.cluster.name),
        secret: SharedSecret::new(secret.to_vec()),
        protocol: v.protocol(),
        fencing: v.fencing(),
        policies: v.policies(config),
        resync,
        checksum_resync: v.checksum_resync,
    };
    let link = LinkConfig {
        local: SocketAddr::new(me.address, v.port),
        peer: SocketAddr::new(peer.address, v.port),
        dial: me.id < peer.id,
    };
    let handlers = Handlers {
        split_brain: v.handler_split_brain.clone(),
        pri_lost_after_sb: v.handler_pri_lost_after_sb.clone(),
        fence_peer: v.handler_fence_peer.clone(),
        unfence_peer: v.handler_unfence_peer.clone(),
    };
    let volume = Volume::start(
        &v.name,
        &peer.name,
        engine_config,
        disk,
        link,
        handlers,
        events.clone(),
    )
    .map_err(|source| DaemonError::Volume {
        volume: v.name.clone(),
        source,
    })?;
    info!(volume = %v.name, "volume started: {}", volume.api_status().disk);
    Ok(volume)
}

/// The logical unit of `volume` as LUN of target `iqn` (its identity derives from both).
fn logical_unit(volume: &Arc<Volume>, iqn: &str) -> Arc<LogicalUnit> {
    let identity = twinsan_target::identity::derive(
        &[b"replicated-volume", &volume.uuid().to_be_bytes()],
        iqn,
        1,
    );
    let dev = Arc::new(ReplicatedDevice::new(volume.clone()));
    Arc::new(LogicalUnit::new(dev, identity, false))
}

/// Claims the disk of volume `v` on node `me`.
fn claim_disk(
    config: &ClusterConfig,
    me: &NodeConfig,
    v: &crate::config::VolumeConfig,
) -> Result<Option<ClaimedDisk>, DaemonError> {
    let Some(disk) = v.disk.get(&me.name) else {
        return Ok(None);
    };
    let paths = DiskPaths {
        data: config.resolve(&disk.path),
        meta: disk.meta.as_ref().map(|m| config.resolve(m)),
        volume_uuid: v.uuid_value(),
    };
    ClaimedDisk::claim(paths)
        .map(Some)
        .map_err(|source| DaemonError::Volume {
            volume: v.name.clone(),
            source,
        })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

impl Node {
    fn live(&self) -> NodeLive {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the config file this node was started with and applies the difference to the running node
    /// (`config::reload::plan`, executed here). A file that does not parse or validate, whose CHAP secret files are
    /// unusable, that changes what cannot change live, or whose new volumes cannot be started (a disk without
    /// `volume create-md`, a disk in use) is refused as a whole, with the field or the volume named; the running
    /// config is then untouched.
    ///
    /// Order: new volumes are started (attached, connecting to the peer); the cluster manager takes the new
    /// stacks (a running target serves its new LUN map at once: removed LUNs stop answering, sessions get
    /// REPORTED LUNS DATA HAS CHANGED; new LUNs start once their volume is Primary); removed volumes — no longer
    /// behind any LUN — are demoted if Primary and taken down last.
    fn reload(&self) -> Result<String, String> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let live = self.live();
        let path = live.config.source.clone();
        let refused =
            |why: String| format!("reload refused: {why}; the running config is unchanged");
        let new = ClusterConfig::load(&path).map_err(|e| refused(e.to_string()))?;
        let chap = new.load_chap().map_err(|e| refused(e.to_string()))?;
        let plan = crate::config::reload::plan(&live.config, &new)
            .map_err(|e| format!("reload refused: {}: {e}", path.display()))?;
        let hash = crate::config::reload::config_hash(&new);
        if plan.changes.is_empty() {
            info!(config = %path.display(), "reload: the config is unchanged");
            return Ok(format!(
                "{}: unchanged (config hash {hash}): nothing to apply",
                path.display()
            ));
        }
        let changes: Vec<String> = plan.changes.iter().map(|c| c.to_string()).collect();
        let Some(cluster) = &self.cluster else {
            return Err(refused(format!(
                "{}: {}: in manual mode a node applies a changed config at its next start (restart it)",
                path.display(),
                changes.join("; ")
            )));
        };
        // New volumes: every disk claimed and every engine started before anything else changes.
        let mut started: Vec<Arc<Volume>> = Vec::new();
        let mut volumes = (*live.volumes).clone();
        let give_back = |started: &[Arc<Volume>]| {
            for v in started {
                v.shutdown();
            }
        };
        for change in &plan.changes {
            let Change::AddVolume { volume } = change else {
                continue;
            };
            let Some(v) = new.volume(volume) else {
                continue;
            };
            let result = claim_disk(&new, &self.me, v).and_then(|disk| match disk {
                Some(disk) => start_volume(
                    &new,
                    &self.me,
                    &self.peer,
                    &self.secret,
                    v,
                    disk,
                    &self.events,
                )
                .map(Some),
                None => Ok(None),
            });
            match result {
                Ok(Some(started_volume)) => {
                    volumes.insert(volume.clone(), started_volume.clone());
                    started.push(started_volume);
                }
                Ok(None) => {}
                Err(e) => {
                    give_back(&started);
                    return Err(refused(format!("add volume {volume}: {e}")));
                }
            }
        }
        let removed: Vec<String> = plan
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::RemoveVolume { volume } => Some(volume.clone()),
                _ => None,
            })
            .collect();
        let mut luns = (*live.luns).clone();
        for t in &new.targets {
            for l in &t.lun {
                if let (false, Some(v)) = (luns.contains_key(&l.volume), volumes.get(&l.volume)) {
                    luns.insert(l.volume.clone(), logical_unit(v, &t.iqn));
                }
            }
        }
        let gone: Vec<Arc<Volume>> = removed.iter().filter_map(|r| volumes.remove(r)).collect();
        for r in &removed {
            luns.remove(r);
        }
        if let Err(e) = cluster.reload(&new, chap.clone(), volumes.clone(), luns.clone()) {
            give_back(&started);
            return Err(refused(e));
        }
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = NodeLive {
            config: Arc::new(new),
            chap: Arc::new(chap),
            volumes: Arc::new(volumes),
            luns: Arc::new(luns),
        };
        // Removed volumes: nothing serves them any more; demoted if Primary, then closed.
        let mut notes = Vec::new();
        for v in gone {
            if cluster.serves(v.name()) {
                warn!(volume = %v.name(), "reload: the volume is still served; left running");
                notes.push(format!(
                    "volume {} is still served here and was left running",
                    v.name()
                ));
                continue;
            }
            if v.is_primary() {
                if let Err(e) = v.admin(AdminCommand::Secondary) {
                    warn!(volume = %v.name(), "reload: demoting the removed volume: {e}");
                }
            }
            v.shutdown();
            info!(volume = %v.name(), "reload: volume taken down");
        }
        info!(changes = ?changes, hash = %hash, "reload: applied");
        let mut message = format!(
            "{}: applied (config hash {hash}): {}",
            path.display(),
            changes.join("; ")
        );
        for n in notes {
            message.push_str(&format!("; {n}"));
        }
        Ok(message)
    }

    fn lock_targets(&self) -> std::sync::MutexGuard<'_, Targets> {
        self.targets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The targets the automatic server should serve here now: every LUN's volume Primary here, none being
    /// demoted, and not taken over by `target start|stop`.
    fn desired_targets(&self) -> BTreeSet<String> {
        let (held, commanded): (HashSet<String>, BTreeSet<String>) = {
            let t = self.lock_targets();
            (t.held.clone(), t.commanded.keys().cloned().collect())
        };
        let live = self.live();
        live.config
            .targets
            .iter()
            .filter(|t| !commanded.contains(&t.iqn) && all_primary(&live, t, &held))
            .map(|t| t.iqn.clone())
            .collect()
    }

    /// The server config for the targets `iqns`, with their LUNs' reservation state reloaded (serving starts).
    fn server_config(&self, iqns: &BTreeSet<String>) -> ServerConfig {
        let mut targets = Vec::new();
        let live = self.live();
        for t in live.config.targets.iter().filter(|t| iqns.contains(&t.iqn)) {
            let mut luns = BTreeMap::new();
            for l in &t.lun {
                if let Some(lu) = live.luns.get(&l.volume) {
                    // Serving starts here: the replicated reservation state is the truth (see the cluster's).
                    lu.reload_reservations();
                    luns.insert(l.lun, lu.clone());
                }
            }
            targets.push(t.target_config(luns, &live.chap));
        }
        let mut config = ServerConfig::new(targets);
        // Discovery on this one portal lists every target; validation gives them all the same CHAP in manual mode.
        config.discovery_chap = config.targets.first().and_then(|t| t.chap.clone());
        config.stats = self.io.clone();
        config
    }

    /// Brings the iSCSI server in line with the roles: (re)started with the targets that should be served.
    async fn reconcile(&self) {
        let _one = self.reconciling.lock().await;
        let desired = self.desired_targets();
        if desired == self.lock_targets().serving {
            return;
        }
        self.stop_targets().await;
        if desired.is_empty() {
            return;
        }
        let port = self
            .live()
            .config
            .targets
            .iter()
            .filter(|t| desired.contains(&t.iqn))
            .map(|t| t.port)
            .next_back()
            .unwrap_or(3260);
        let addr = SocketAddr::new(self.me.address, port);
        let config = self.server_config(&desired);
        match Server::bind(config, &[addr]).await {
            Ok(server) => {
                let running = server.spawn();
                info!(portal = %addr, targets = ?desired, "serving iSCSI");
                let mut t = self.lock_targets();
                t.serving = desired;
                t.server = Some(running);
            }
            Err(e) => warn!(portal = %addr, "cannot serve iSCSI: {e}; retrying"),
        }
    }

    async fn stop_targets(&self) {
        let (server, was) = {
            let mut t = self.lock_targets();
            (t.server.take(), std::mem::take(&mut t.serving))
        };
        if let Some(server) = server {
            server.stop().await;
            info!(targets = ?was, "stopped serving iSCSI");
        }
    }

    /// Stops every server that `target start` started (the node is stopping).
    async fn stop_commanded(&self) {
        let started: Vec<(String, Running)> = {
            let mut t = self.lock_targets();
            std::mem::take(&mut t.commanded)
                .into_iter()
                .filter_map(|(iqn, c)| match c {
                    Commanded::Started { server, .. } => Some((iqn, server)),
                    Commanded::Stopped => None,
                })
                .collect()
        };
        for (iqn, server) in started {
            server.stop().await;
            info!(target = %iqn, "stopped serving iSCSI");
        }
    }

    /// `target start IQN --portal ...`: serves the target on `portals`, by a server of its own, while all its
    /// LUNs' volumes are Primary here; the automatic server at the node's address no longer serves it.
    async fn target_start(&self, iqn: &str, portals: &[String]) -> Result<Option<String>, String> {
        let target = self.commanded_target(iqn)?;
        let mut addrs = Vec::new();
        for p in portals {
            addrs.push(
                p.parse::<SocketAddr>()
                    .map_err(|_| format!("portal {p:?} is not ADDR:PORT"))?,
            );
        }
        if addrs.is_empty() {
            return Err(format!("target start {iqn}: no portal given"));
        }
        let _one = self.reconciling.lock().await;
        let held = self.lock_targets().held.clone();
        let live = self.live();
        if !all_primary(&live, &target, &held) {
            let held = held.clone();
            let roles: Vec<String> = target
                .lun
                .iter()
                .map(|l| match live.volumes.get(&l.volume) {
                    _ if held.contains(&l.volume) => format!("{} being demoted", l.volume),
                    Some(v) if v.is_primary() => format!("{} Primary", l.volume),
                    Some(_) => format!("{} not Primary", l.volume),
                    None => format!("{} has no disk on this node", l.volume),
                })
                .collect();
            return Err(format!(
                "{iqn} is served only where all its LUNs' volumes are Primary, and on node {} {}: promote them first",
                self.me.name,
                roles.join(", ")
            ));
        }
        let previous = self.lock_targets().commanded.remove(iqn);
        match previous {
            Some(Commanded::Started {
                portals: now,
                server,
            }) if now == addrs => {
                self.lock_targets().commanded.insert(
                    iqn.to_owned(),
                    Commanded::Started {
                        portals: now,
                        server,
                    },
                );
                return Ok(Some(format!("{iqn} is already served on {}", list(&addrs))));
            }
            Some(Commanded::Started { server, .. }) => server.stop().await,
            Some(Commanded::Stopped) | None => {}
        }
        // Taken from the automatic server first: one portal set per target.
        self.lock_targets()
            .commanded
            .insert(iqn.to_owned(), Commanded::Stopped);
        drop(_one);
        self.reconcile().await;
        // Checked again under the lock that a demotion's `stop_commanded_of` takes: a volume demoted meanwhile is
        // held, and its target is not started.
        let _one = self.reconciling.lock().await;
        let held = self.lock_targets().held.clone();
        if !all_primary(&self.live(), &target, &held) {
            return Err(format!(
                "{iqn}: a volume of it left Primary on node {} while it was being started",
                self.me.name
            ));
        }
        let config = self.server_config(&BTreeSet::from([iqn.to_owned()]));
        match Server::bind(config, &addrs).await {
            Ok(server) => {
                let running = server.spawn();
                info!(target = %iqn, portals = %list(&addrs), "serving iSCSI (target start)");
                self.lock_targets().commanded.insert(
                    iqn.to_owned(),
                    Commanded::Started {
                        portals: addrs.clone(),
                        server: running,
                    },
                );
                Ok(Some(format!("{iqn} served on {}", list(&addrs))))
            }
            Err(e) => Err(format!("cannot serve {iqn} on {}: {e}", list(&addrs))),
        }
    }

    /// `target stop IQN`: serves it nowhere on this node (writes in flight finish first).
    async fn target_stop(&self, iqn: &str) -> Result<Option<String>, String> {
        self.commanded_target(iqn)?;
        let _one = self.reconciling.lock().await;
        let previous = self
            .lock_targets()
            .commanded
            .insert(iqn.to_owned(), Commanded::Stopped);
        drop(_one);
        // The automatic server drops it too, if it served it.
        self.reconcile().await;
        match previous {
            Some(Commanded::Started { portals, server }) => {
                server.stop().await;
                info!(target = %iqn, portals = %list(&portals), "stopped serving iSCSI (target stop)");
                Ok(Some(format!(
                    "{iqn} no longer served on {}",
                    list(&portals)
                )))
            }
            Some(Commanded::Stopped) | None => Ok(Some(format!(
                "{iqn} is not served on node {}",
                self.me.name
            ))),
        }
    }

    /// `target status IQN`.
    fn target_status(&self, iqn: &str) -> Result<api::TargetServing, String> {
        self.commanded_target(iqn)?;
        let t = self.lock_targets();
        let (mode, portals) = match t.commanded.get(iqn) {
            Some(Commanded::Started { portals, server }) if !server.is_finished() => (
                api::TargetMode::Started,
                portals.iter().map(|p| p.to_string()).collect(),
            ),
            Some(Commanded::Started { .. }) | Some(Commanded::Stopped) => {
                (api::TargetMode::Stopped, Vec::new())
            }
            None => {
                let served =
                    t.serving.contains(iqn) && t.server.as_ref().is_some_and(|s| !s.is_finished());
                let portals = self
                    .live()
                    .config
                    .targets
                    .iter()
                    .filter(|c| served && c.iqn == iqn)
                    .map(|c| SocketAddr::new(self.me.address, c.port).to_string())
                    .collect();
                (api::TargetMode::Automatic, portals)
            }
        };
        Ok(api::TargetServing {
            iqn: iqn.to_owned(),
            mode,
            portals,
        })
    }

    /// The configured target `iqn`, for `target start|stop|status`, which only manual mode has.
    fn commanded_target(&self, iqn: &str) -> Result<crate::config::TargetSection, String> {
        let live = self.live();
        if self.cluster.is_some() {
            return Err(format!(
                "the cluster manager serves the targets on their virtual IPs here; `target start|stop|status` are \
                 for a node with cluster.manual = true in {} (under an outside cluster manager such as Pacemaker)",
                live.config.source.display()
            ));
        }
        live.config
            .targets
            .iter()
            .find(|t| t.iqn == iqn)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "no target {iqn} in {} (configured: {})",
                    live.config.source.display(),
                    live.config
                        .targets
                        .iter()
                        .map(|t| t.iqn.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    /// Stops the `target start` servers whose target has a LUN on `volume` (it is being demoted or taken down):
    /// they count as stopped from then on.
    async fn stop_commanded_of(&self, volume: &str) {
        let iqns: BTreeSet<String> = self
            .live()
            .config
            .targets
            .iter()
            .filter(|t| t.lun.iter().any(|l| l.volume == volume))
            .map(|t| t.iqn.clone())
            .collect();
        let _one = self.reconciling.lock().await;
        let servers: Vec<(String, Running)> = {
            let mut t = self.lock_targets();
            let mut out = Vec::new();
            for iqn in &iqns {
                if let Some(Commanded::Started { .. }) = t.commanded.get(iqn) {
                    if let Some(Commanded::Started { server, .. }) =
                        t.commanded.insert(iqn.clone(), Commanded::Stopped)
                    {
                        out.push((iqn.clone(), server));
                    }
                }
            }
            out
        };
        for (iqn, server) in servers {
            server.stop().await;
            warn!(target = %iqn, volume, "stopped serving iSCSI: its volume leaves Primary");
        }
    }

    fn volume(&self, name: &str) -> Result<Arc<Volume>, String> {
        self.live()
            .volumes
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no volume named {name} on node {}", self.me.name))
    }

    fn command(&self, name: &str, command: AdminCommand) -> Response {
        let volume = match self.volume(name) {
            Ok(v) => v.clone(),
            Err(message) => return Response::Error { message },
        };
        // `primary --force` stays the admin's: the first primary of a new pair (the initial sync) or a copy forced
        // up after a disaster; the cluster then keeps the stack where the only newest copy is.
        if self.cluster.is_some()
            && matches!(
                command,
                AdminCommand::Primary { force: false }
                    | AdminCommand::Secondary
                    | AdminCommand::Down
            )
        {
            return Response::Error {
                message: format!(
                    "{name} is managed by the cluster manager, which decides where it is Primary: use `twinsan \
                     resource move {name} NODE`, `twinsan node standby NODE` or `twinsan cluster stop NODE` (only \
                     `volume primary --force`, for a first sync or after a disaster, is left to the admin; or set \
                     cluster.manual = true to change roles by hand)"
                ),
            };
        }
        let result = match command {
            AdminCommand::Secondary | AdminCommand::Down => {
                // The target goes down first; its writes in flight finish.
                self.lock_targets().held.insert(name.to_owned());
                self.runtime.block_on(self.stop_commanded_of(name));
                self.runtime.block_on(self.reconcile());
                let r = volume.admin(command);
                self.lock_targets().held.remove(name);
                r
            }
            AdminCommand::Primary { .. } => {
                let r = volume.admin(command);
                if r.is_ok() {
                    self.runtime.block_on(self.reconcile());
                }
                r
            }
            _ => volume.admin(command),
        };
        match result {
            Ok(message) => Response::Ok { message },
            Err(message) => Response::Error { message },
        }
    }
}

impl MetricsSource for Node {
    fn snapshot(&self) -> Snapshot {
        let live = self.live();
        Snapshot {
            volumes: live.volumes.values().map(|v| VolumeSample::of(v)).collect(),
            cluster: self
                .cluster
                .as_ref()
                .map(|c| ClusterSample::of(&c.status(), c.failovers())),
            targets: self.io.as_ref().map(|io| io.targets()).unwrap_or_default(),
            process: ProcessSample::now(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "node {} of cluster {}",
            self.me.name,
            self.live().config.cluster.name
        )
    }
}

impl crate::console::ConsoleSource for Node {
    fn cluster_status(&self) -> api::ClusterStatus {
        match &self.cluster {
            Some(cluster) => cluster.status(),
            None => self.manual_status(),
        }
    }

    fn events(&self) -> broadcast::Receiver<api::EventLine> {
        self.events.subscribe()
    }

    fn handle(&self, request: Request) -> Response {
        AdminService::handle(self, request)
    }

    fn password_hash(&self) -> Option<String> {
        self.live().config.cluster.console_password_hash.clone()
    }

    fn sessions(&self) -> Vec<crate::console::TargetSessions> {
        // Logins refused before a target was named count under "": no sessions there.
        self.io
            .as_ref()
            .map(|io| {
                io.targets()
                    .into_iter()
                    .filter(|(name, _)| !name.is_empty())
                    .map(|(target, t)| crate::console::TargetSessions {
                        target,
                        initiators: t.initiators(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Node {
    /// `twinsan status` in manual mode: the nodes as configured, the volumes as this node sees them.
    fn manual_status(&self) -> api::ClusterStatus {
        api::ClusterStatus {
            config_warning: None,
            cluster: self.live().config.cluster.name.clone(),
            node: self.me.name.clone(),
            managed: false,
            quorum: "manual mode: no cluster manager".into(),
            witness: None,
            nodes: self
                .live()
                .config
                .nodes
                .iter()
                .map(|n| api::NodeStatus {
                    name: n.name.clone(),
                    online: n.name == self.me.name,
                    standby: false,
                    stopped: false,
                    protocol: None,
                })
                .collect(),
            resources: Vec::new(),
            failed_actions: Vec::new(),
            constraints: Vec::new(),
            notes: Vec::new(),
            volumes: self
                .live()
                .volumes
                .values()
                .map(|v| v.api_status())
                .collect(),
            properties: vec![(
                "cluster-name".into(),
                self.live().config.cluster.name.clone(),
            )],
        }
    }
}

impl AdminService for Node {
    fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status { volume } => {
                let volumes = match volume {
                    Some(name) => match self.volume(&name) {
                        Ok(v) => vec![v.api_status()],
                        Err(message) => return Response::Error { message },
                    },
                    None => self.live().volumes.values().map(|v| v.api_status()).collect(),
                };
                Response::Status { volumes }
            }
            Request::Up { volume } => self.command(&volume, AdminCommand::Up),
            Request::Down { volume } => self.command(&volume, AdminCommand::Down),
            Request::Detach { volume } => self.command(&volume, AdminCommand::Detach),
            Request::Attach { volume } => self.command(&volume, AdminCommand::Attach),
            Request::Primary { volume, force } => {
                self.command(&volume, AdminCommand::Primary { force })
            }
            Request::Secondary { volume } => self.command(&volume, AdminCommand::Secondary),
            Request::Connect {
                volume,
                discard_my_data,
            } => self.command(&volume, AdminCommand::Connect { discard_my_data }),
            Request::Disconnect { volume } => self.command(&volume, AdminCommand::Disconnect),
            Request::Verify { volume } => self.command(&volume, AdminCommand::Verify),
            Request::Invalidate { volume } => self.command(&volume, AdminCommand::Invalidate),
            Request::NewCurrentUuid {
                volume,
                clear_bitmap,
            } => self.command(&volume, AdminCommand::NewCurrentUuid { clear_bitmap }),
            Request::Resize {
                volume,
                size_bytes,
                assume_clean,
            } => self.command(
                &volume,
                AdminCommand::Resize {
                    size: size_bytes,
                    assume_clean,
                },
            ),
            Request::Reload => match self.reload() {
                Ok(message) => Response::Ok {
                    message: Some(message),
                },
                Err(message) => Response::Error { message },
            },
            Request::TargetStart { iqn, portals } => {
                into_response(self.runtime.block_on(self.target_start(&iqn, &portals)))
            }
            Request::TargetStop { iqn } => into_response(self.runtime.block_on(self.target_stop(&iqn))),
            Request::TargetStatus { iqn } => match self.target_status(&iqn) {
                Ok(status) => Response::Target { status },
                Err(message) => Response::Error { message },
            },
            Request::Events { .. } => Response::Error {
                message: "events are streamed, not answered".into(),
            },
            Request::ClusterStatus
            | Request::ClusterRun { .. }
            | Request::Standby { .. }
            | Request::Move { .. }
            | Request::Clear { .. }
            | Request::Cleanup { .. } => match &self.cluster {
                Some(cluster) => cluster.handle(request),
                None if request == Request::ClusterStatus => Response::Cluster {
                    status: Box::new(self.manual_status()),
                },
                None => Response::Error {
                    message: format!(
                        "no cluster manager runs: {} sets cluster.manual = true, so roles change only by `twinsan \
                         volume primary|secondary`",
                        self.live().config.source.display()
                    ),
                },
            },
        }
    }

    fn subscribe(
        &self,
        volume: Option<&str>,
    ) -> Result<(Vec<api::EventLine>, broadcast::Receiver<api::EventLine>), String> {
        let rx = self.events.subscribe();
        let lines = match volume {
            Some(name) => vec![self.volume(name)?.api_status()],
            None => self
                .live()
                .volumes
                .values()
                .map(|v| v.api_status())
                .collect(),
        }
        .into_iter()
        .map(|status| api::EventLine::now("exists", status))
        .collect();
        Ok((lines, rx))
    }
}

fn into_response(result: Result<Option<String>, String>) -> Response {
    match result {
        Ok(message) => Response::Ok { message },
        Err(message) => Response::Error { message },
    }
}

/// `a, b` for a list of portals.
fn list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every LUN of `target` has its volume Primary here, none of them in `held`.
fn all_primary(
    live: &NodeLive,
    target: &crate::config::TargetSection,
    held: &HashSet<String>,
) -> bool {
    !target.lun.is_empty()
        && target.lun.iter().all(|l| {
            !held.contains(&l.volume) && live.volumes.get(&l.volume).is_some_and(|v| v.is_primary())
        })
}
