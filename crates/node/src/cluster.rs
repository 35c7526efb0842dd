//! The cluster manager of one node: membership over the cluster links, the exchange of node reports, the
//! scheduler run on what this node knows, and the executor that carries out this node's share of each
//! transition (promote/demote the volume, add/remove the VIP, serve/stop the target and its LUNs), with monitors,
//! fail counts, resource-level fencing through the cluster, `cluster stop|start`, standby and moves.
//!
//! # How the two nodes agree without a leader
//! Each node runs the same pure scheduler on the same kind of input: its own state, read directly, and the
//! peer's, from the peer's last report (sent every heartbeat interval on every link). Each node carries out only
//! its own actions, and of each volume's ordered action list only the leading actions that are its own: an
//! action of this node that comes after one of the peer's waits until the peer's report shows the peer's part
//! done, at which point the schedule no longer contains it. So the old primary's stops and demotion always
//! happen (and are reported) before the new primary promotes and adds the VIP. The replicated volume itself
//! refuses a second Primary while the nodes are connected, whatever the schedulers think.
//!
//! # Threads
//! - one receiver per cluster link socket, passing datagrams to
//! - the **net** thread: membership (heartbeats), reports, fencing requests and answers, settings merges;
//! - the **executor** thread: monitors, the scheduler, the actions (which may block for seconds: a promotion
//!   waits for the peer's grant, a demotion for writes in flight) — never on the net thread, so heartbeats keep
//!   going while an action runs.

pub(crate) use twinsan_cluster::backoff;
use twinsan_cluster::message;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};
use twinsan_cluster::failover::{
    self, action_verb, FenceAnswer, Fences, GateInput, Hold, LocalResource, LocalVolume, NodeView,
    Timing, VipWatch, Vote,
};
use twinsan_cluster::lease::{LeaseConfig, LeaseGrantor, LeaseHolder};
use twinsan_cluster::membership::{Membership, MembershipConfig, Output as MemberOut};
use twinsan_cluster::scheduler::{
    self, Action, ClusterOptions, Fencing, NoQuorumPolicy, ResourceKind, Role, RunStatus,
    VolumeStack,
};
use twinsan_replication::engine::AdminCommand;
use twinsan_replication::generation::{GenerationIds, Role as VolumeRole, HISTORY_LEN};
use twinsan_replication::state::{ConnState, DiskState as VolumeDisk, FencingPolicy};
use twinsan_replication::wire;
use twinsan_scsi::LogicalUnit;
use twinsan_target::stats::IoStats;
use twinsan_target::{Running, Server};

use crate::api;
use crate::config::{ClusterConfig, NodeConfig, TargetChap, TargetSection};
use crate::vip::{Vip, VipSpec};
use crate::volume::Volume;
use crate::witness::WitnessLink;
use message::{
    Cleanup, LeaseReport, Location, Message, Report, ReportDisk, ReportRole, ReportStatus,
    ResourceReport, Settings, VolumeReport,
};

/// How often the executor looks at the cluster when nothing wakes it.
const EXECUTOR_PERIOD: Duration = Duration::from_millis(100);
/// The settings file in the node's state folder.
const SETTINGS_FILE: &str = "cluster-settings.json";

/// Why the cluster manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A socket or thread could not be set up.
    #[error("{0}")]
    Io(String),
    /// The config cannot be run as a cluster.
    #[error("{0}")]
    Config(String),
}

/// The resources of one target's stack as this node runs them, named after its first volume.
struct Stack {
    volume: String,
    /// Every volume of the stack (the volumes behind its LUNs), `volume` first: promoted together, in this order.
    volumes: Vec<String>,
    vip_name: String,
    target_name: String,
    /// LUN resource name and number.
    luns: Vec<(String, u64)>,
    /// The volume behind each LUN number.
    lun_volume: BTreeMap<u64, String>,
    /// Resource-only fencing for the stack: every one of its volumes has it.
    fencing: Fencing,
    target: TargetSection,
    vip: Vip,
}

impl Stack {
    /// The stack as the scheduler sees it.
    fn scheduled(&self) -> VolumeStack {
        VolumeStack {
            name: self.volume.clone(),
            volumes: self.volumes[1..].to_vec(),
            lun_volumes: self
                .luns
                .iter()
                .filter_map(|(name, lun)| {
                    let v = self.lun_volume.get(lun)?;
                    (*v != self.volume).then(|| (name.clone(), v.clone()))
                })
                .collect(),
            vip: self.vip_name.clone(),
            target: self.target_name.clone(),
            luns: self.luns.iter().map(|(n, _)| n.clone()).collect(),
            fencing: self.fencing,
        }
    }
}

/// What the net thread works on.
enum NetEvent {
    Datagram {
        link: u8,
        bytes: Vec<u8>,
    },
    Fence {
        volume: String,
        generations: GenerationIds,
    },
}

/// Everything both threads share, under one lock.
struct State {
    membership: Membership,
    settings: Settings,
    /// The peer's last report, and the (incarnation, seq) of the last message accepted from it.
    peer_report: Option<Report>,
    peer_seen: Option<(u64, u64)>,
    resources: BTreeMap<String, LocalResource>,
    /// This node's fence requests to the peer.
    fences: Fences,
    seq: u64,
    notes: Vec<String>,
    failed_actions: Vec<String>,
    /// This node's failing actions and when each is tried again.
    retries: backoff::Retries,
    cleanup_applied: u64,
    /// This node left the membership after `cluster stop` drained it.
    left: bool,
    /// The daemon is stopping: hand the resources over first.
    leaving: bool,
    /// The peer has been Online since this node started.
    peer_seen_once: bool,
    /// When the peer last went OFFLINE (while it is), on the node's clock (`Shared::now`).
    peer_offline_at: Option<Duration>,
    /// The leases the peer granted this node (SPEC invariant 8).
    holder: LeaseHolder,
    /// The leases this node granted the peer, for the takeover wait.
    grantor: LeaseGrantor,
    /// The newest lease stamp received from the peer, with the peer's incarnation (echoed when this node
    /// grants).
    peer_stamp: Option<(u64, u64)>,
    /// The peer's reports carry no lease (a release before leases): it neither grants nor waits.
    peer_without_leases: bool,
    /// The message version agreed on with the peer, from its last report.
    peer_messages: Option<message::MessageVersion>,
    /// Volumes this node is promoting while their replication link is down: the peer gets no grant for them.
    taking_over: BTreeSet<String>,
    /// When each volume became Primary here (`Shared::now`).
    primary_since: BTreeMap<String, Duration>,
    /// The last time a takeover waited for the peer's lease, logged once per wait.
    lease_wait_logged: BTreeSet<String>,
}

struct Shared {
    /// Where a volume's fence requests go (the net thread).
    fence_tx: Mutex<Sender<NetEvent>>,
    config: ClusterConfig,
    me: NodeConfig,
    peer: NodeConfig,
    cluster_id: u64,
    secret: Vec<u8>,
    incarnation: u64,
    /// The volumes, logical units and stacks this node runs: replaced as a whole by a config reload, read as a
    /// snapshot (`volumes()`, `luns()`, `stacks()`).
    running: Mutex<Live>,
    lease: LeaseConfig,
    runtime: tokio::runtime::Handle,
    sockets: Vec<UdpSocket>,
    peer_addrs: Vec<SocketAddr>,
    state: Mutex<State>,
    wake: Condvar,
    stop: AtomicBool,
    witness: Option<Arc<WitnessLink>>,
    settings_file: PathBuf,
    epoch: Instant,
    /// The iSCSI servers this node runs, by volume.
    servers: Mutex<BTreeMap<String, RunningServer>>,
    /// Held by the executor for each round of scheduling and actions, and by a reload while it swaps what runs.
    exec: Mutex<()>,
    /// Where the targets this node serves count their I/O, when the metrics are on.
    io: Option<Arc<IoStats>>,
    /// Times this node took a stack over after its peer was lost (the metrics' failovers).
    failovers: AtomicU64,
}

/// What a config reload changes: a snapshot is taken under the lock and used without it.
#[derive(Clone)]
struct Live {
    /// The hash of the running config, in every report.
    config_hash: String,
    /// The CHAP policies the targets are served with.
    chap: Arc<TargetChap>,
    volumes: Arc<BTreeMap<String, Arc<Volume>>>,
    luns: Arc<HashMap<String, Arc<LogicalUnit>>>,
    stacks: Arc<Vec<Arc<Stack>>>,
}

struct RunningServer {
    luns: BTreeSet<u64>,
    server: Running,
}

/// The running cluster manager of this node.
pub struct ClusterManager {
    shared: Arc<Shared>,
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
}

impl ClusterManager {
    /// Starts the cluster manager of node `me`: binds the cluster links, starts the witness link if configured,
    /// and from then on keeps the resources of `volumes` where the scheduler puts them. `secret` is the cluster's
    /// shared secret (`ClusterConfig::secret`, read once by the caller), `chap` the targets' CHAP policies
    /// (`ClusterConfig::load_chap`, likewise). The targets it serves count their I/O in `io` (the metrics), when
    /// given.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        config: ClusterConfig,
        me: NodeConfig,
        secret: Vec<u8>,
        chap: TargetChap,
        volumes: BTreeMap<String, Arc<Volume>>,
        luns: HashMap<String, Arc<LogicalUnit>>,
        runtime: tokio::runtime::Handle,
        io: Option<Arc<IoStats>>,
    ) -> Result<Arc<ClusterManager>, ClusterError> {
        let peer = config
            .peer_of(&me.name)
            .cloned()
            .ok_or_else(|| ClusterError::Config("the config has no peer node".into()))?;
        let cluster_id = wire::cluster_id(&config.cluster.name);
        // The incarnation only grows across restarts: the start time in milliseconds.
        let incarnation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let port = config.cluster.port;
        let mine = config.cluster_links(&me);
        let theirs = config.cluster_links(&peer);
        let mut sockets = Vec::new();
        for addr in &mine {
            let at = SocketAddr::new(*addr, port);
            let socket = UdpSocket::bind(at).map_err(|e| {
                ClusterError::Io(format!(
                    "cluster link {at}: cannot bind: {e} (is another twinsan node running here?)"
                ))
            })?;
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .map_err(|e| ClusterError::Io(format!("cluster link {at}: {e}")))?;
            sockets.push(socket);
        }
        let peer_addrs = theirs.iter().map(|a| SocketAddr::new(*a, port)).collect();
        let heartbeat = Duration::from_millis(config.cluster.heartbeat_interval_ms);
        let detection = Duration::from_millis(config.cluster.detection_timeout_ms);
        let lease = LeaseConfig::new(heartbeat, detection)
            .map_err(|e| ClusterError::Config(format!("[cluster] timers: {e}")))?;
        let membership = Membership::new(
            MembershipConfig {
                heartbeat_interval: heartbeat,
                detection_timeout: detection,
                // A node that was frozen judges its peer on what it hears after it resumes.
                pause_after: Some(heartbeat * 2),
                ..MembershipConfig::two_node(
                    cluster_id,
                    me.id,
                    peer.id,
                    mine.len() as u8,
                    incarnation,
                )
            },
            Duration::ZERO,
        )
        .map_err(|e| ClusterError::Config(format!("cluster links: {e}")))?;
        let stacks = stacks(&config)?;
        let state_dir = config.state_dir(&me);
        std::fs::create_dir_all(&state_dir).map_err(|e| {
            ClusterError::Io(format!(
                "state folder {}: cannot create it: {e}",
                state_dir.display()
            ))
        })?;
        let settings_file = state_dir.join(SETTINGS_FILE);
        let settings = load_settings(&settings_file)?;
        if settings.stopped.contains(&me.name) {
            warn!(
                "this node was stopped with `twinsan cluster stop`: it runs no resources until `twinsan cluster \
                 start {}`",
                me.name
            );
        }
        let witness = match config.cluster.witness {
            Some(addr) => Some(
                WitnessLink::start(
                    addr,
                    Some(me.address),
                    cluster_id,
                    me.id,
                    secret.clone(),
                    incarnation,
                )
                .map_err(|e| ClusterError::Io(format!("witness {addr}: {e}")))?,
            ),
            None => None,
        };
        let mut resources = BTreeMap::new();
        for s in &stacks {
            let mut add = |name: &str, kind| {
                resources.insert(
                    name.to_string(),
                    LocalResource {
                        kind,
                        volume: s.volume.clone(),
                        status: RunStatus::Stopped,
                        fail_count: 0,
                        last_failure: None,
                    },
                );
            };
            for v in &s.volumes {
                add(v, ResourceKind::Volume);
            }
            add(&s.vip_name, ResourceKind::Vip);
            add(&s.target_name, ResourceKind::Target);
            for (name, _) in &s.luns {
                add(name, ResourceKind::Lun);
            }
            // A VIP left behind by an earlier run (killed before it could remove it) counts as running: the
            // scheduler stops it unless the stack belongs here.
            if s.vip.monitor().unwrap_or(false) && !s.vip.is_loopback() {
                warn!(vip = %s.target.vip, "the virtual IP is present from an earlier run");
                if let Some(r) = resources.get_mut(&s.vip_name) {
                    r.status = RunStatus::Started;
                }
            }
        }
        let (net_tx, net_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            fence_tx: Mutex::new(net_tx.clone()),
            me: me.clone(),
            peer,
            cluster_id,
            secret,
            incarnation,
            running: Mutex::new(Live {
                config_hash: crate::config::reload::config_hash(&config),
                chap: Arc::new(chap),
                volumes: Arc::new(volumes),
                luns: Arc::new(luns),
                stacks: Arc::new(stacks.into_iter().map(Arc::new).collect()),
            }),
            lease,
            runtime,
            sockets,
            peer_addrs,
            state: Mutex::new(State {
                membership,
                settings,
                peer_report: None,
                peer_seen: None,
                resources,
                fences: Fences::new(),
                seq: 0,
                notes: Vec::new(),
                failed_actions: Vec::new(),
                retries: backoff::Retries::default(),
                cleanup_applied: 0,
                left: false,
                leaving: false,
                peer_seen_once: false,
                peer_offline_at: None,
                holder: LeaseHolder::new(lease),
                grantor: LeaseGrantor::new(lease),
                peer_stamp: None,
                peer_without_leases: false,
                peer_messages: None,
                taking_over: BTreeSet::new(),
                primary_since: BTreeMap::new(),
                lease_wait_logged: BTreeSet::new(),
            }),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            witness,
            settings_file,
            epoch: Instant::now(),
            servers: Mutex::new(BTreeMap::new()),
            exec: Mutex::new(()),
            io,
            failovers: AtomicU64::new(0),
            config,
        });
        for volume in shared.volumes().values() {
            shared.manage(volume);
        }
        let manager = Arc::new(ClusterManager {
            shared: shared.clone(),
            threads: Mutex::new(Vec::new()),
        });
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            thread::Builder::new()
                .name(name.clone())
                .spawn(f)
                .map_err(|e| ClusterError::Io(format!("cannot start thread {name}: {e}")))
        };
        let mut threads = Vec::new();
        for link in 0..shared.sockets.len() {
            let s = shared.clone();
            let tx = net_tx.clone();
            threads.push(spawn(
                format!("cluster-rx{link}"),
                Box::new(move || s.receive_loop(link, tx)),
            )?);
        }
        drop(net_tx);
        let s = shared.clone();
        threads.push(spawn(
            "cluster-net".into(),
            Box::new(move || s.net_loop(net_rx)),
        )?);
        let s = shared.clone();
        threads.push(spawn(
            "cluster-exec".into(),
            Box::new(move || s.executor_loop()),
        )?);
        *manager.threads.lock().unwrap_or_else(|p| p.into_inner()) = threads;
        info!(
            node = %me.name,
            links = ?shared.config.cluster_links(&me),
            port = shared.config.cluster.port,
            "cluster manager running"
        );
        Ok(manager)
    }

    /// Hands this node's resources over to the peer (they stop here in order and the volume is demoted; the
    /// peer, told that this node is leaving, takes them), waits up to `drain` for that, then stops the threads
    /// and whatever still runs.
    pub fn shutdown(&self, drain: Duration) {
        self.shared.lock().leaving = true;
        self.shared.wake.notify_all();
        self.shared.send_report();
        let deadline = Instant::now() + drain;
        while Instant::now() < deadline && !self.shared.idle() {
            thread::sleep(Duration::from_millis(50));
        }
        // Let the peer see the final state before the link goes.
        self.shared.send_report();
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        for t in self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = t.join();
        }
        self.shared.stop_everything();
        if let Some(w) = &self.shared.witness {
            w.stop();
        }
    }

    /// Answers a cluster request from the admin socket.
    pub fn handle(&self, request: api::Request) -> api::Response {
        self.shared.handle(request)
    }

    /// The cluster view for `twinsan status`.
    pub fn status(&self) -> api::ClusterStatus {
        self.shared.cluster_status()
    }

    /// Times this node took a stack over after its peer was lost, since it started.
    pub fn failovers(&self) -> u64 {
        self.shared.failovers.load(Ordering::Relaxed)
    }

    /// Takes a reloaded config (already checked by `config::reload::plan`): `volumes` and `luns` are every
    /// volume and logical unit of the new config on this node (new ones started by the caller), `chap` its CHAP
    /// policies. New stacks and members join the schedule stopped (the scheduler starts them); a removed stack
    /// is stopped here (target, VIP) before it goes; a running target serves its new LUN map at once (removed LUNs
    /// gone, sessions told with REPORTED LUNS DATA HAS CHANGED). Removed volumes are left to the caller, which
    /// takes them down after this returns. Nothing changes if the new stacks cannot be built.
    pub fn reload(
        &self,
        config: &ClusterConfig,
        chap: TargetChap,
        volumes: BTreeMap<String, Arc<Volume>>,
        luns: HashMap<String, Arc<LogicalUnit>>,
    ) -> Result<(), String> {
        self.shared.reload(config, chap, volumes, luns)
    }

    /// Whether `volume` is behind a LUN this node serves now.
    pub fn serves(&self, volume: &str) -> bool {
        self.shared.serves(volume)
    }
}

/// The stacks of `config`: one per target, named after the volume of its first LUN, with every volume its LUNs
/// are of.
fn stacks(config: &ClusterConfig) -> Result<Vec<Stack>, ClusterError> {
    let mut out = Vec::new();
    for t in &config.targets {
        let Some(first) = t.lun.first() else {
            continue;
        };
        let volume = first.volume.clone();
        let mut volumes: Vec<String> = Vec::new();
        for l in &t.lun {
            if !volumes.contains(&l.volume) {
                volumes.push(l.volume.clone());
            }
        }
        let prefix = t
            .vip_prefix
            .unwrap_or(if t.vip.is_ipv4() { 24 } else { 64 });
        let vip = Vip::new(VipSpec {
            address: t.vip,
            prefix_len: prefix,
            interface: t.vip_interface.clone(),
        })
        .map_err(|e| ClusterError::Config(e.to_string()))?;
        out.push(Stack {
            vip_name: format!("{volume}-vip"),
            target_name: format!("{volume}-target"),
            luns: t
                .lun
                .iter()
                .map(|l| (format!("{volume}-lun{}", l.lun), l.lun))
                .collect(),
            lun_volume: t.lun.iter().map(|l| (l.lun, l.volume.clone())).collect(),
            fencing: if volumes
                .iter()
                .all(|v| config.volume(v).map(|v| v.fencing()) == Some(FencingPolicy::ResourceOnly))
            {
                Fencing::ResourceOnly
            } else {
                Fencing::DontCare
            },
            volumes,
            volume,
            target: t.clone(),
            vip,
        });
    }
    Ok(out)
}

fn load_settings(path: &PathBuf) -> Result<Settings, ClusterError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            ClusterError::Config(format!(
                "{}: not cluster settings ({e}); move it away to start with none",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
        Err(e) => Err(ClusterError::Io(format!("{}: {e}", path.display()))),
    }
}

/// A volume's disk state by its name in reports (the same names: a one-to-one translation).
fn report_disk(disk: VolumeDisk) -> ReportDisk {
    match disk {
        VolumeDisk::Diskless => ReportDisk::Diskless,
        VolumeDisk::Attaching => ReportDisk::Attaching,
        VolumeDisk::Failed => ReportDisk::Failed,
        VolumeDisk::Inconsistent => ReportDisk::Inconsistent,
        VolumeDisk::Outdated => ReportDisk::Outdated,
        VolumeDisk::DUnknown => ReportDisk::DUnknown,
        VolumeDisk::Consistent => ReportDisk::Consistent,
        VolumeDisk::UpToDate => ReportDisk::UpToDate,
    }
}

fn report_role(role: VolumeRole) -> ReportRole {
    match role {
        VolumeRole::Primary => ReportRole::Primary,
        VolumeRole::Secondary => ReportRole::Secondary,
    }
}

fn generations_to_vec(g: &GenerationIds) -> Vec<u64> {
    let mut v = vec![g.current, g.bitmap];
    v.extend_from_slice(&g.history);
    v
}

fn generations_from_vec(v: &[u64]) -> Option<GenerationIds> {
    if v.len() != 2 + HISTORY_LEN {
        return None;
    }
    let mut history = [0u64; HISTORY_LEN];
    history.copy_from_slice(&v[2..]);
    Some(GenerationIds {
        current: v[0],
        bitmap: v[1],
        history,
    })
}

impl Shared {
    fn running(&self) -> Live {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The volumes now.
    fn volumes(&self) -> Arc<BTreeMap<String, Arc<Volume>>> {
        self.running().volumes
    }

    /// The logical units now, by volume.
    fn luns(&self) -> Arc<HashMap<String, Arc<LogicalUnit>>> {
        self.running().luns
    }

    /// The stacks now.
    fn stacks(&self) -> Arc<Vec<Arc<Stack>>> {
        self.running().stacks
    }

    /// Puts a volume under the cluster manager: no lease yet (a Primary completes I/O alone only under one), and
    /// its fence requests go to the peer through the net thread.
    fn manage(&self, volume: &Arc<Volume>) {
        volume.set_lease(self.epoch);
        let tx = Mutex::new(
            self.fence_tx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        );
        volume.set_fencer(Arc::new(move |name: &str, generations| {
            let _ = tx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .send(NetEvent::Fence {
                    volume: name.to_string(),
                    generations,
                });
        }));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_servers(&self) -> MutexGuard<'_, BTreeMap<String, RunningServer>> {
        self.servers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    // ----- the net thread -----

    fn receive_loop(&self, link: usize, tx: Sender<NetEvent>) {
        let mut buf = vec![0u8; 65_536];
        while !self.stopping() {
            match self.sockets[link].recv_from(&mut buf) {
                Ok((n, from)) => {
                    // Only the peer's addresses on this link are listened to.
                    if from.ip() != self.peer_addrs[link].ip() {
                        debug!(%from, link, "cluster datagram from a stranger, dropped");
                        continue;
                    }
                    let event = NetEvent::Datagram {
                        link: link as u8,
                        bytes: buf[..n].to_vec(),
                    };
                    if tx.send(event).is_err() {
                        return;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    debug!(link, "cluster link receive: {e}");
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    fn net_loop(&self, rx: Receiver<NetEvent>) {
        let heartbeat = Duration::from_millis(self.config.cluster.heartbeat_interval_ms);
        let mut next_report = Instant::now();
        while !self.stopping() {
            let wait = {
                let st = self.lock();
                st.membership
                    .next_tick()
                    .saturating_sub(self.now())
                    .min(heartbeat)
                    .max(Duration::from_millis(5))
            };
            match rx.recv_timeout(wait) {
                Ok(NetEvent::Datagram { link, bytes }) => self.on_datagram(link, &bytes),
                Ok(NetEvent::Fence {
                    volume,
                    generations,
                }) => {
                    info!(volume = %volume, peer = %self.peer.name, "fencing the peer through the cluster");
                    self.lock()
                        .fences
                        .request(&volume, generations_to_vec(&generations));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.tick_membership();
            self.update_leases();
            self.drive_fences();
            if Instant::now() >= next_report {
                next_report = Instant::now() + heartbeat;
                self.send_report();
            }
        }
    }

    fn tick_membership(&self) {
        let outs = {
            let mut st = self.lock();
            let now = self.now();
            let outs = st.membership.tick(now);
            // A node that left the cluster sends no heartbeats: the peer sees it OFFLINE.
            if st.left {
                outs.into_iter()
                    .filter(|o| !matches!(o, MemberOut::Send { .. }))
                    .collect()
            } else {
                outs
            }
        };
        self.membership_outputs(outs);
    }

    /// Gives each volume its lease: the peer's grant, or the alone lease while the peer is Offline on every
    /// link — judged over time this node was running — until the witness vote's belief ends, or without a
    /// witness until one lease after this tick (so it runs out while the node is frozen).
    fn update_leases(&self) {
        let now = self.now();
        let st = self.lock();
        let peer_online = self.peer_online(&st);
        let witness = self.witness.as_ref().map(|w| {
            w.vote_until()
                .map(|until| until.saturating_duration_since(self.epoch))
        });
        let alone = failover::alone_lease(
            peer_online,
            st.membership.settled(now),
            witness,
            now,
            self.lease.lease,
        );
        for (name, v) in self.volumes().iter() {
            let until = failover::lease_until(
                &st.holder,
                name,
                alone,
                st.peer_without_leases,
                peer_online,
                st.peer_report.as_ref(),
                now,
                self.lease.lease,
            );
            if let Some(until) = until {
                v.set_lease(self.epoch + until);
            }
        }
    }

    fn membership_outputs(&self, outs: Vec<MemberOut>) {
        let mut changed = false;
        for out in outs {
            match out {
                MemberOut::Send { link, bytes } => self.send_on(link, &bytes),
                MemberOut::PeerOnline { .. } => {
                    info!(node = %self.peer.name, "node {} is Online", self.peer.name);
                    let mut st = self.lock();
                    st.peer_seen_once = true;
                    st.peer_offline_at = None;
                    changed = true;
                }
                MemberOut::PeerOffline { .. } => {
                    warn!(node = %self.peer.name, "node {} is OFFLINE: no heartbeat on any cluster link", self.peer.name);
                    let mut st = self.lock();
                    st.peer_report = None;
                    st.peer_offline_at = Some(self.now());
                    changed = true;
                }
                MemberOut::PeerRestarted { .. } => {
                    info!(node = %self.peer.name, "node {} restarted", self.peer.name);
                    self.lock().peer_report = None;
                    changed = true;
                }
                MemberOut::LinkUp { link, .. } => {
                    info!(link, peer = %self.peer_addrs[link as usize], "cluster link {link} up")
                }
                MemberOut::LinkDown { link, .. } => {
                    warn!(link, peer = %self.peer_addrs[link as usize], "cluster link {link} down")
                }
                MemberOut::Refused { link, error } => {
                    debug!(link, "heartbeat refused: {error}")
                }
            }
        }
        if changed {
            self.wake.notify_all();
        }
    }

    fn send_on(&self, link: u8, bytes: &[u8]) {
        let link = usize::from(link);
        if let (Some(socket), Some(to)) = (self.sockets.get(link), self.peer_addrs.get(link)) {
            if let Err(e) = socket.send_to(bytes, to) {
                debug!(link, "cluster link send to {to}: {e}");
            }
        }
    }

    /// Sends `message` on every link.
    fn send_message(&self, message: &Message) {
        let seq = {
            let mut st = self.lock();
            st.seq += 1;
            st.seq
        };
        let Some(bytes) = message::encode(
            &self.secret,
            self.cluster_id,
            self.me.id,
            self.incarnation,
            seq,
            message,
        ) else {
            warn!("a cluster message is too large for one datagram; not sent");
            return;
        };
        for link in 0..self.sockets.len() {
            self.send_on(link as u8, &bytes);
        }
    }

    fn on_datagram(&self, link: u8, bytes: &[u8]) {
        if !message::is_message(bytes) {
            let outs = self.lock().membership.received(link, bytes, self.now());
            self.membership_outputs(outs);
            return;
        }
        let envelope = match message::decode(&self.secret, self.cluster_id, bytes) {
            Ok(e) => e,
            Err(e) => {
                warn!(link, "cluster message refused: {e}");
                return;
            }
        };
        if envelope.node_id != self.peer.id {
            warn!(
                link,
                node_id = envelope.node_id,
                "cluster message from a node id that is not the peer's; dropped"
            );
            return;
        }
        {
            let mut st = self.lock();
            if !failover::fresh(st.peer_seen, envelope.incarnation, envelope.seq) {
                return;
            }
            st.peer_seen = Some((envelope.incarnation, envelope.seq));
        }
        match envelope.message {
            Message::Report(report) => {
                let version = match message::negotiate(report.versions) {
                    Ok(version) => version,
                    Err(e) => {
                        warn!(link, "cluster report ignored: {e}");
                        return;
                    }
                };
                let mut st = self.lock();
                if st.peer_messages != Some(version) {
                    info!(
                        version = version.number(),
                        "cluster messages with the peer: version agreed"
                    );
                    st.peer_messages = Some(version);
                }
                // A release before leases (message version 1) neither grants nor waits.
                let now = self.now();
                let leases = failover::accept_leases(
                    &mut st.holder,
                    version,
                    report.lease.as_ref(),
                    envelope.incarnation,
                    self.incarnation,
                    now,
                );
                st.peer_without_leases = leases.without_leases;
                if leases.stamp.is_some() {
                    st.peer_stamp = leases.stamp;
                }
                if st.settings.older_than(&report.settings) {
                    let settings = report.settings.clone();
                    self.adopt_settings(&mut st, settings);
                }
                if self.peer_online(&st) {
                    st.peer_report = Some(*report);
                }
                drop(st);
                self.wake.notify_all();
            }
            Message::Fence {
                id,
                volume,
                generations,
            } => self.on_fence_request(id, &volume, &generations),
            Message::FenceReply {
                id,
                volume,
                outcome,
            } => {
                if self.lock().fences.answered(id).is_none() {
                    return;
                }
                let Some(v) = self.volumes().get(&volume).cloned() else {
                    return;
                };
                match outcome {
                    Ok(()) => {
                        info!(volume = %volume, peer = %self.peer.name, "the peer marked its copy Outdated: writes resume");
                        v.fence_result(true);
                    }
                    Err(why) => {
                        warn!(volume = %volume, peer = %self.peer.name, "the peer refused to be fenced: {why}; writes stay suspended");
                        v.fence_result(false);
                    }
                }
            }
        }
    }

    /// The peer asks us to mark our copy Outdated.
    fn on_fence_request(&self, id: u64, volume: &str, generations: &[u64]) {
        let Some(v) = self.volumes().get(volume).cloned() else {
            return;
        };
        let connected = v.status().connection == ConnState::Connected;
        let outcome = match failover::fence_request(connected, generations, 2 + HISTORY_LEN) {
            FenceAnswer::NotYet => return,
            FenceAnswer::Refuse(why) => Err(why),
            FenceAnswer::Outdate => {
                let Some(g) = generations_from_vec(generations) else {
                    return;
                };
                match v.outdate(g, self.peer.id) {
                    Ok(_) => {
                        info!(volume = %volume, peer = %self.peer.name, "fenced by the peer: this copy is now Outdated");
                        Ok(())
                    }
                    Err(why) => Err(why),
                }
            }
        };
        self.send_message(&Message::FenceReply {
            id,
            volume: volume.to_string(),
            outcome,
        });
    }

    /// Sends pending fence requests; answers them when the peer is out of reach (assumed down, as DRBD's
    /// crm-fence-peer does) and records the fence in the settings, so the peer is not promoted before it
    /// resyncs; drops them when the volume reconnected (the fence is moot).
    fn drive_fences(&self) {
        let heartbeat = Duration::from_millis(self.config.cluster.heartbeat_interval_ms);
        let (send, unreachable) = {
            let mut st = self.lock();
            if st.fences.pending().is_empty() {
                return;
            }
            let peer_online = self.peer_online(&st);
            let volumes = self.volumes();
            let now = self.now();
            let round = st.fences.drive(now, peer_online, heartbeat, |name| {
                volumes
                    .get(name)
                    .is_none_or(|v| v.status().connection == ConnState::Connected)
            });
            if !round.unreachable.is_empty() {
                let settings =
                    failover::fence_unreachable(&st.settings, &round.unreachable, &self.peer.name);
                self.change_settings(&mut st, settings);
            }
            (round.send, round.unreachable)
        };
        for m in &send {
            self.send_message(m);
        }
        for volume in unreachable {
            warn!(volume = %volume, peer = %self.peer.name,
                "the peer is out of reach on every cluster link: assumed down and marked Outdated in the cluster \
                 settings (it is not promoted before it resyncs); writes resume");
            if let Some(v) = self.volumes().get(&volume) {
                v.fence_result(true);
            }
        }
    }

    fn send_report(&self) {
        let report = {
            let mut st = self.lock();
            let now = self.now();
            // The peer may complete I/O alone on the volumes this node is not Primary of and not taking over,
            // while this node sees it (see `twinsan_cluster::lease`).
            let volumes = self.volumes();
            let granted = failover::grants(
                st.peer_stamp.is_some(),
                self.peer_online(&st),
                volumes
                    .iter()
                    .map(|(name, v)| (name.as_str(), v.is_primary())),
                &st.taking_over,
            );
            if !granted.is_empty() {
                st.grantor.granting(granted.iter().map(String::as_str), now);
            }
            let lease = LeaseReport {
                stamp: st.holder.stamp(now),
                echo: st.peer_stamp.filter(|_| !granted.is_empty()).map(|p| p.1),
                echo_for: st.peer_stamp.map_or(0, |p| p.0),
                volumes: granted,
            };
            Report {
                config_hash: Some(self.running().config_hash),
                stopped: st.left,
                leaving: st.leaving,
                volumes: self
                    .volumes()
                    .iter()
                    .map(|(name, v)| {
                        let s = v.status();
                        VolumeReport {
                            volume: name.clone(),
                            disk: report_disk(s.disk),
                            role: report_role(s.role),
                            connected: s.connection == ConnState::Connected,
                            generations: generations_to_vec(&s.generations),
                            primary_for_ms: st.primary_since.get(name).map(|&t| {
                                u64::try_from(now.saturating_sub(t).as_millis()).unwrap_or(u64::MAX)
                            }),
                        }
                    })
                    .collect(),
                resources: st
                    .resources
                    .iter()
                    .map(|(name, r)| ResourceReport {
                        resource: name.clone(),
                        status: ReportStatus::from(r.status),
                        fail_count: r.fail_count,
                        last_failure_ago_s: r.last_failure.map(|t| now.saturating_sub(t).as_secs()),
                    })
                    .collect(),
                settings: st.settings.clone(),
                failed_actions: st.failed_actions.clone(),
                lease: Some(lease),
                versions: Some(message::VERSIONS),
            }
        };
        self.send_message(&Message::Report(Box::new(report)));
    }

    // ----- settings -----

    /// Makes `settings` this node's copy as a new change: a version above both copies, this node the origin.
    fn change_settings(&self, st: &mut State, settings: Settings) {
        let settings = failover::changed_settings(&st.settings, settings, self.me.id);
        self.adopt_settings(st, settings);
    }

    /// Takes `settings` as this node's copy and stores it.
    fn adopt_settings(&self, st: &mut State, settings: Settings) {
        let st = &mut *st;
        failover::apply_cleanup(
            &settings,
            &mut st.cleanup_applied,
            &mut st.resources,
            &mut st.retries,
            &mut st.failed_actions,
        );
        st.settings = settings;
        let path = &self.settings_file;
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&st.settings)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            warn!(
                "cannot store the cluster settings in {}: {e}",
                path.display()
            );
        }
        self.wake.notify_all();
    }

    // ----- the executor -----

    fn executor_loop(&self) {
        let monitor_every = Duration::from_millis(self.config.cluster.monitor_interval_ms);
        let mut next_monitor = Instant::now() + monitor_every;
        let mut last_notes: Vec<String> = Vec::new();
        let mut waited_logged = false;
        let mut vips = VipWatch::new();
        while !self.stopping() {
            let exec = self.exec.lock().unwrap_or_else(|p| p.into_inner());
            if Instant::now() >= next_monitor {
                next_monitor = Instant::now() + monitor_every;
                self.monitor();
            }
            self.track_roles();
            self.announce_vips(&mut vips);
            self.clear_settled_fences();
            self.early_loss();
            // The peer is OFFLINE on every cluster link: a replication link silent as long is dead too, so the
            // survivor need not wait for the volume's own ping timeout.
            let silence = {
                let st = self.lock();
                failover::replication_silence(
                    self.peer_online(&st),
                    st.peer_seen_once,
                    self.timing(),
                    twinsan_replication::engine::PING_INTERVAL,
                )
            };
            if let Some(silence) = silence {
                for v in self.volumes().values() {
                    if v.status().connection == ConnState::Connected {
                        v.peer_silent(silence);
                    }
                }
            }
            let built = self.build_input();
            let schedule = scheduler::schedule(&built.input);
            if schedule.notes != last_notes {
                for note in &schedule.notes {
                    if !last_notes.contains(note) {
                        info!("scheduler: {note}");
                    }
                }
                last_notes = schedule.notes.clone();
            }
            self.lock().notes = schedule.notes.clone();
            let gated = self.gate(&schedule.actions, built.peer_unknown, built.left);
            if built.peer_unknown && !gated.share.is_empty() && !waited_logged {
                waited_logged = true;
                info!(
                    "waiting up to {:?} for node {} before running resources alone",
                    self.timing().startup_wait(),
                    self.peer.name
                );
            }
            if !gated.run.is_empty() {
                for a in &schedule.actions {
                    debug!("transition: {a}");
                }
                self.execute(&gated.run);
                continue;
            }
            // `cluster stop`: once nothing runs here, leave the membership; `cluster start`: come back.
            {
                let idle = self.idle();
                let mut st = self.lock();
                if built.stopped && !st.left && idle && gated.share.is_empty() {
                    st.left = true;
                    info!("cluster stop: nothing runs here any more; leaving the cluster (OFFLINE to the peer)");
                } else if !built.stopped && st.left {
                    st.left = false;
                    info!("cluster start: joining the cluster");
                }
            }
            drop(exec);
            let st = self.lock();
            let _ = self
                .wake
                .wait_timeout(st, EXECUTOR_PERIOD)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The cluster's timing.
    fn timing(&self) -> Timing {
        Timing {
            heartbeat: Duration::from_millis(self.config.cluster.heartbeat_interval_ms),
            detection: Duration::from_millis(self.config.cluster.detection_timeout_ms),
        }
    }

    /// Every gate between the schedule and what this node runs now (`failover::gate`); logs each held takeover
    /// once per wait and keeps the volumes being taken over (the peer gets no grant for them).
    fn gate(&self, actions: &[Action], peer_unknown: bool, left: bool) -> failover::Gated {
        let now = self.now();
        let stacks: Vec<String> = self.stacks().iter().map(|s| s.volume.clone()).collect();
        let volumes = self.volumes();
        let connected = |name: &str| {
            volumes
                .get(name)
                .is_some_and(|v| v.status().connection == ConnState::Connected)
        };
        let mut st = self.lock();
        let gated = failover::gate(
            actions,
            connected,
            &GateInput {
                me: &self.me.name,
                stacks: &stacks,
                witness: self.witness.is_some(),
                peer_offline_since: st.peer_offline_at,
                settled: st.membership.settled(now),
                grantor: &st.grantor,
                retries: &st.retries,
                peer_unknown,
                left,
                timing: self.timing(),
                now,
            },
        );
        for (volume, hold) in &gated.held {
            if st.lease_wait_logged.insert(volume.clone()) {
                match hold {
                    Hold::Lease { wait } => info!(volume = %volume,
                        "taking {volume} over after the lease granted to {} runs out, in {wait:?}", self.peer.name),
                    Hold::Paused => info!(volume = %volume,
                        "this node was paused: it listens for {:?} before it takes {volume} over",
                        self.timing().detection),
                }
            }
        }
        st.lease_wait_logged
            .retain(|volume| gated.held.contains_key(volume));
        st.taking_over = gated.taking_over.clone();
        gated
    }

    /// The peer is in this node's membership.
    fn peer_online(&self, st: &State) -> bool {
        st.membership
            .view()
            .iter()
            .any(|m| m.node == self.peer.id && m.online)
    }

    /// Nothing runs here: no resource started, no volume Primary.
    fn idle(&self) -> bool {
        let st = self.lock();
        !st.resources
            .values()
            .any(|r| r.status != RunStatus::Stopped && r.kind != ResourceKind::Volume)
            && !self.volumes().values().any(|v| v.is_primary())
    }

    /// Early loss detection (membership rule 8) on a replication link closed by the peer's side
    /// (`failover::early_loss`).
    fn early_loss(&self) {
        let closed: Vec<Duration> = self
            .volumes()
            .values()
            .filter_map(|v| v.peer_closed_ago())
            .collect();
        if closed.is_empty() {
            return;
        }
        let timing = self.timing();
        let outs = {
            let mut st = self.lock();
            let now = self.now();
            failover::early_loss(&mut st.membership, self.peer.id, closed, now, timing)
        };
        if outs
            .iter()
            .any(|o| matches!(o, MemberOut::PeerOffline { .. }))
        {
            info!(
                peer = %self.peer.name,
                "the peer closed its replication link and sent no heartbeat for {:?}: it is gone",
                timing.early_loss_silence()
            );
        }
        self.membership_outputs(outs);
    }

    /// Keeps when each volume became Primary here (reported, so two Primaries that meet keep the later one).
    fn track_roles(&self) {
        let primaries: BTreeSet<String> = self
            .volumes()
            .iter()
            .filter(|(_, v)| v.is_primary())
            .map(|(name, _)| name.clone())
            .collect();
        let now = self.now();
        failover::track_primaries(&mut self.lock().primary_since, &primaries, now);
    }

    /// Announces the VIPs this node holds again when the peer may have drawn initiators to itself
    /// ([`VipWatch`]). Each node that takes or keeps a VIP announces it; nothing waits for ARP caches to expire.
    fn announce_vips(&self, watch: &mut VipWatch) {
        let stacks = self.stacks();
        let announce = {
            let st = self.lock();
            let ours: BTreeSet<String> = stacks
                .iter()
                .filter(|s| {
                    st.resources
                        .get(&s.vip_name)
                        .is_some_and(|r| r.status == RunStatus::Started)
                })
                .map(|s| s.vip_name.clone())
                .collect();
            let vips: Vec<&str> = stacks.iter().map(|s| s.vip_name.as_str()).collect();
            watch.round(self.peer_online(&st), &vips, &ours, st.peer_report.as_ref())
        };
        for s in stacks.iter() {
            if announce.contains(&s.vip_name) && !s.vip.is_loopback() {
                info!(vip = %s.target.vip, "announcing the virtual IP again: the peer came back or released it");
                if let Err(e) = s.vip.start() {
                    warn!(vip = %s.target.vip, "announcing the virtual IP again: {e}");
                }
            }
        }
    }

    /// This node's volumes as the failover rules read them.
    fn local_volumes(&self) -> BTreeMap<String, LocalVolume> {
        self.volumes()
            .iter()
            .map(|(name, v)| {
                let s = v.status();
                let volume = LocalVolume {
                    disk: report_disk(s.disk),
                    role: report_role(s.role),
                    connected: s.connection == ConnState::Connected,
                    peer_disk: report_disk(s.peer_disk),
                    peer_role: s.peer_role.map(report_role),
                    generations: generations_to_vec(&s.generations),
                };
                (name.clone(), volume)
            })
            .collect()
    }

    /// The scheduler's input (`failover::build_input`) from one snapshot of this node's state.
    fn build_input(&self) -> failover::Built {
        let cfg = &self.config.cluster;
        let options = ClusterOptions {
            resource_stickiness: cfg.resource_stickiness,
            migration_threshold: cfg.migration_threshold,
            failure_timeout_s: (cfg.failure_timeout_s > 0).then_some(cfg.failure_timeout_s),
            no_quorum_policy: if self.config.no_quorum_stop() {
                NoQuorumPolicy::Stop
            } else {
                NoQuorumPolicy::Ignore
            },
            witness: self.witness.is_some(),
        };
        let stacks: Vec<VolumeStack> = self.stacks().iter().map(|s| s.scheduled()).collect();
        let vote = self.witness.as_ref().and_then(|w| {
            if w.holds_vote() {
                Some(Vote::Me)
            } else if w.holder() == Some(self.peer.id) {
                Some(Vote::Peer)
            } else {
                None
            }
        });
        let volumes = self.local_volumes();
        let st = self.lock();
        failover::build_input(&NodeView {
            me: &self.me.name,
            peer: &self.peer.name,
            options,
            stacks: &stacks,
            settings: &st.settings,
            now: self.now(),
            peer_online: self.peer_online(&st),
            peer_report: st.peer_report.as_ref(),
            peer_seen_once: st.peer_seen_once,
            left: st.left,
            leaving: st.leaving,
            vote,
            volumes: &volumes,
            primary_since: &st.primary_since,
            resources: &st.resources,
            timing: self.timing(),
        })
    }

    /// Runs this node's actions in order; stops at the first failure (recorded, and retried after a backoff; the
    /// next schedule sees it).
    fn execute(&self, actions: &[Action]) {
        // The share of a volume that retries a failed action is logged again only when something changes.
        let retrying: BTreeSet<String> = {
            let st = self.lock();
            actions
                .iter()
                .filter(|a| {
                    st.retries
                        .of(a.resource())
                        .any(|(verb, _)| verb == action_verb(a))
                })
                .map(|a| a.volume().to_string())
                .collect()
        };
        for (i, action) in actions.iter().enumerate() {
            if self.stopping() {
                return;
            }
            if retrying.contains(action.volume()) {
                debug!("action (retry): {action}");
            } else {
                info!("action: {action}");
            }
            let next = actions.get(i + 1);
            let result = self.run_action(action, next);
            if result.is_ok() {
                self.lock()
                    .retries
                    .succeeded(action.resource(), action_verb(action));
            }
            if let Err(why) = result {
                // A promotion refused by a connected peer is the two nodes deciding at the same moment: the
                // volume arbitrated, nothing failed; the next schedule sees the peer's role.
                let raced = failover::raced(
                    action,
                    self.volumes()
                        .get(action.volume())
                        .is_some_and(|v| v.status().connection == ConnState::Connected),
                );
                if raced {
                    info!("{action}: not now: {why}");
                } else {
                    let verdict = self.lock().retries.failed(
                        action.resource(),
                        action_verb(action),
                        &why,
                        self.now(),
                    );
                    if verdict.news {
                        warn!(
                            "action failed: {action}: {why}; next try in {:?}",
                            verdict.delay
                        );
                    } else {
                        debug!(
                            "action failed again ({} in a row): {action}: {why}; next try in {:?}",
                            verdict.failures, verdict.delay
                        );
                    }
                    self.record_failure(action.resource(), action_verb(action), &why);
                }
                let st = self.lock();
                let _ = self
                    .wake
                    .wait_timeout(st, EXECUTOR_PERIOD)
                    .unwrap_or_else(|p| p.into_inner());
                return;
            }
        }
    }

    fn run_action(&self, action: &Action, next: Option<&Action>) -> Result<(), String> {
        let volume_of = |name: &str| {
            self.volumes()
                .get(name)
                .cloned()
                .ok_or_else(|| format!("no volume {name} on this node"))
        };
        let stack = self
            .stacks()
            .iter()
            .find(|s| s.volume == action.volume())
            .cloned()
            .ok_or_else(|| format!("no stack for volume {}", action.volume()))?;
        match action {
            Action::Promote { volume, .. } => {
                let v = volume_of(volume)?;
                // A stack promoted here while its peer is lost (it was Online once, and the volume's link is
                // down) is a failover; counted once per stack, by its first volume.
                let takeover = {
                    let st = self.lock();
                    failover::is_failover(
                        *volume == stack.volume,
                        v.status().connection == ConnState::Connected,
                        st.peer_seen_once,
                        self.peer_online(&st),
                    )
                };
                v.admin(AdminCommand::Primary { force: false })?;
                if takeover {
                    self.failovers.fetch_add(1, Ordering::Relaxed);
                    info!(volume = %volume, "failover: took the stack of {volume} over from {}", self.peer.name);
                }
            }
            Action::Demote { volume, .. } => {
                // Nothing of the stack may run above a Secondary.
                self.stop_server(&stack.volume);
                volume_of(volume)?.admin(AdminCommand::Secondary)?;
            }
            Action::Start { kind, resource, .. } | Action::Stop { kind, resource, .. } => {
                let start = matches!(action, Action::Start { .. });
                match kind {
                    ResourceKind::Vip => {
                        if start {
                            stack.vip.start().map_err(|e| e.to_string())?;
                        } else {
                            self.stop_server(&stack.volume);
                            stack.vip.stop().map_err(|e| e.to_string())?;
                        }
                        self.set_status(resource, start);
                    }
                    ResourceKind::Target | ResourceKind::Lun => {
                        self.set_status(resource, start);
                        // Start the target with its LUNs in one go, and stop it the same way: the server is
                        // (re)built when the run of target and LUN actions ends.
                        let more = next.is_some_and(|n| {
                            n.volume() == stack.volume
                                && matches!(
                                    n,
                                    Action::Start {
                                        kind: ResourceKind::Target | ResourceKind::Lun,
                                        ..
                                    } | Action::Stop {
                                        kind: ResourceKind::Target | ResourceKind::Lun,
                                        ..
                                    }
                                )
                        });
                        if !more {
                            if let Err(why) = self.apply_server(&stack) {
                                self.set_status(&stack.target_name, false);
                                return Err(why);
                            }
                        }
                    }
                    ResourceKind::Volume => return Err("a volume is promoted, not started".into()),
                }
            }
        }
        Ok(())
    }

    fn set_status(&self, resource: &str, started: bool) {
        if let Some(r) = self.lock().resources.get_mut(resource) {
            r.status = if started {
                RunStatus::Started
            } else {
                RunStatus::Stopped
            };
        }
    }

    fn record_failure(&self, resource: &str, verb: &str, why: &str) {
        let mut st = self.lock();
        if let Some(r) = st.resources.get_mut(resource) {
            r.fail_count = r.fail_count.saturating_add(1);
            r.last_failure = Some(self.now());
            if r.kind != ResourceKind::Volume {
                r.status = RunStatus::Failed;
            }
        }
        // One line per action and node, with its latest reason.
        let head = format!("{resource}_{verb} on {} ", self.me.name);
        st.failed_actions.retain(|a| !a.starts_with(&head));
        st.failed_actions.push(format!("{head}'{why}'"));
        if st.failed_actions.len() > 32 {
            st.failed_actions.remove(0);
        }
    }

    /// Brings the iSCSI server of `stack` in line with its target and LUN resources.
    fn apply_server(&self, stack: &Stack) -> Result<(), String> {
        let (target_on, luns): (bool, BTreeSet<u64>) = {
            let st = self.lock();
            let on = |name: &str| {
                st.resources
                    .get(name)
                    .is_some_and(|r| r.status == RunStatus::Started)
            };
            (
                on(&stack.target_name),
                stack
                    .luns
                    .iter()
                    .filter(|(n, _)| on(n))
                    .map(|(_, l)| *l)
                    .collect(),
            )
        };
        // Each LUN number serves its own volume's logical unit.
        let lus = self.luns();
        let map_of = |served: &BTreeSet<u64>| {
            let mut map = BTreeMap::new();
            for l in &luns {
                let Some(lu) = stack.lun_volume.get(l).and_then(|v| lus.get(v).cloned()) else {
                    continue;
                };
                if !served.contains(l) {
                    // This node serves the volume from now on: the reservations the peer kept current through
                    // replication are the truth, not what this logical unit remembers from an earlier turn.
                    lu.reload_reservations();
                }
                map.insert(*l, lu);
            }
            map
        };
        {
            let mut servers = self.lock_servers();
            if let Some(running) = servers
                .get_mut(&stack.volume)
                .filter(|s| target_on && !s.server.is_finished())
            {
                if running.luns == luns {
                    return Ok(());
                }
                // A LUN added or removed while the target runs: its sessions stay, and see the new inventory.
                let map = map_of(&running.luns);
                if running.server.set_luns(&stack.target.iqn, map) {
                    info!(target = %stack.target.iqn, luns = ?luns, "serving a new LUN map");
                    running.luns = luns;
                    return Ok(());
                }
            }
        }
        self.stop_server(&stack.volume);
        if !target_on {
            return Ok(());
        }
        let map = map_of(&BTreeSet::new());
        let addr = SocketAddr::new(stack.target.vip, stack.target.port);
        let mut config = stack.target.server_config(map, &self.running().chap);
        config.stats = self.io.clone();
        let server = self
            .runtime
            .block_on(Server::bind(config, &[addr]))
            .map_err(|e| format!("cannot serve {} at {addr}: {e}", stack.target.iqn))?;
        let running = {
            let _runtime = self.runtime.enter();
            server.spawn()
        };
        info!(portal = %addr, target = %stack.target.iqn, luns = ?luns, "serving iSCSI");
        self.lock_servers().insert(
            stack.volume.clone(),
            RunningServer {
                luns,
                server: running,
            },
        );
        Ok(())
    }

    fn stop_server(&self, volume: &str) {
        let running = self.lock_servers().remove(volume);
        if let Some(running) = running {
            self.runtime.block_on(running.server.stop());
            info!(volume, "stopped serving iSCSI");
        }
    }

    /// Monitors: the VIP is on its interface, the target's server runs, a LUN's volume is Primary.
    fn monitor(&self) {
        let started: Vec<(String, ResourceKind, String)> = self
            .lock()
            .resources
            .iter()
            .filter(|(_, r)| r.status == RunStatus::Started)
            .map(|(n, r)| (n.clone(), r.kind, r.volume.clone()))
            .collect();
        for (name, kind, volume) in started {
            let Some(stack) = self.stacks().iter().find(|s| s.volume == volume).cloned() else {
                continue;
            };
            let failure = match kind {
                ResourceKind::Vip => match stack.vip.monitor() {
                    Ok(true) => None,
                    Ok(false) => Some("the address is gone from its interface".to_string()),
                    Err(e) => Some(e.to_string()),
                },
                ResourceKind::Target => {
                    let alive = self
                        .lock_servers()
                        .get(&volume)
                        .is_some_and(|s| !s.server.is_finished());
                    (!alive).then(|| "the iSCSI server is not running".to_string())
                }
                ResourceKind::Lun => {
                    let of = stack
                        .luns
                        .iter()
                        .find(|(n, _)| *n == name)
                        .and_then(|(_, l)| stack.lun_volume.get(l))
                        .unwrap_or(&stack.volume);
                    let primary = self.volumes().get(of).is_some_and(|v| v.is_primary());
                    (!primary).then(|| format!("volume {of} is not Primary here"))
                }
                ResourceKind::Volume => None,
            };
            if let Some(why) = failure {
                warn!(resource = %name, "monitor failed: {why}");
                let interval = self.config.cluster.monitor_interval_ms;
                self.record_failure(&name, &format!("monitor_{interval}"), &why);
            }
        }
    }

    /// A copy fenced in the settings is released once it is back in sync (`failover::settled_fences`).
    fn clear_settled_fences(&self) {
        if self.lock().settings.fenced.is_empty() {
            return;
        }
        let volumes = self.local_volumes();
        let mut st = self.lock();
        let settled = failover::settled_fences(&st.settings, &volumes);
        if settled.is_empty() {
            return;
        }
        let mut settings = st.settings.clone();
        for f in &settled {
            settings.fenced.remove(f);
            info!(volume = %f.0, node = %f.1, "the fenced copy has resynced: it may be promoted again");
        }
        self.change_settings(&mut st, settings);
    }

    /// At daemon stop: the stacks stopped from the top, volumes demoted.
    fn stop_everything(&self) {
        for s in self.stacks().iter() {
            if let Err(e) = self.stop_target_and_vip(s) {
                warn!(vip = %s.target.vip, "removing the virtual IP at stop: {e}");
            }
        }
    }

    /// Stops a stack from the top: its target's server, then its virtual IP if it is up.
    fn stop_target_and_vip(&self, s: &Stack) -> Result<(), crate::vip::VipError> {
        self.stop_server(&s.volume);
        let vip_on = self
            .lock()
            .resources
            .get(&s.vip_name)
            .is_some_and(|r| r.status != RunStatus::Stopped);
        if vip_on {
            s.vip.stop()?;
        }
        Ok(())
    }

    // ----- config reload -----

    fn reload(
        &self,
        config: &ClusterConfig,
        chap: TargetChap,
        volumes: BTreeMap<String, Arc<Volume>>,
        luns: HashMap<String, Arc<LogicalUnit>>,
    ) -> Result<(), String> {
        let new_stacks: Vec<Arc<Stack>> = stacks(config)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(Arc::new)
            .collect();
        let _exec = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.running();
        // Stacks that go: stopped here first, from the top (target, then VIP).
        for s in old
            .stacks
            .iter()
            .filter(|s| !new_stacks.iter().any(|n| n.target.iqn == s.target.iqn))
        {
            self.stop_target_and_vip(s)
                .map_err(|e| format!("target {}: removing its virtual IP: {e}", s.target.iqn))?;
            info!(target = %s.target.iqn, "reload: target removed");
        }
        for (name, v) in volumes.iter() {
            if !old.volumes.contains_key(name) {
                self.manage(v);
            }
        }
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Live {
            config_hash: crate::config::reload::config_hash(config),
            chap: Arc::new(chap),
            volumes: Arc::new(volumes),
            luns: Arc::new(luns),
            stacks: Arc::new(new_stacks.clone()),
        };
        {
            let mut st = self.lock();
            let mut names = BTreeSet::new();
            for s in &new_stacks {
                let members = s
                    .volumes
                    .iter()
                    .map(|v| (v.clone(), ResourceKind::Volume))
                    .chain([
                        (s.vip_name.clone(), ResourceKind::Vip),
                        (s.target_name.clone(), ResourceKind::Target),
                    ])
                    .chain(s.luns.iter().map(|(n, _)| (n.clone(), ResourceKind::Lun)));
                for (name, kind) in members {
                    names.insert(name.clone());
                    st.resources.entry(name).or_insert_with(|| LocalResource {
                        kind,
                        volume: s.volume.clone(),
                        status: RunStatus::Stopped,
                        fail_count: 0,
                        last_failure: None,
                    });
                }
            }
            st.resources.retain(|name, _| names.contains(name));
        }
        // Running targets serve their new LUN maps (a removed LUN's resource is gone, so it is left out), and
        // take their new access rules (allow-list, CHAP) for the logins from now on.
        let chap = self.running().chap;
        for s in &new_stacks {
            let running = self.lock_servers().contains_key(&s.volume);
            if running {
                self.apply_server(s)?;
                let wanted = s.target.server_config(BTreeMap::new(), &chap);
                let servers = self.lock_servers();
                if let (Some(r), Some(t)) = (servers.get(&s.volume), wanted.targets.first()) {
                    r.server.set_access(
                        &t.name,
                        t.allowed_initiators.clone(),
                        t.chap.clone(),
                        wanted.discovery_chap.clone(),
                    );
                }
            }
        }
        self.wake.notify_all();
        Ok(())
    }

    fn serves(&self, volume: &str) -> bool {
        let servers = self.lock_servers();
        self.stacks().iter().any(|s| {
            servers.get(&s.volume).is_some_and(|r| {
                r.luns
                    .iter()
                    .any(|l| s.lun_volume.get(l).is_some_and(|v| v == volume))
            })
        })
    }

    // ----- admin requests -----

    fn handle(&self, request: api::Request) -> api::Response {
        use api::Request as R;
        let ok = |message: String| api::Response::Ok {
            message: Some(message),
        };
        let result: Result<String, String> = match request {
            R::ClusterStatus => {
                return api::Response::Cluster {
                    status: Box::new(self.cluster_status()),
                }
            }
            R::ClusterRun { node, stop } => {
                let node = node.unwrap_or_else(|| self.me.name.clone());
                self.node_named(&node).map(|()| {
                    self.edit_settings(|s| {
                        if stop {
                            s.stopped.insert(node.clone());
                        } else {
                            s.stopped.remove(&node);
                        }
                    });
                    if stop {
                        format!("stopping the cluster on {node}: its resources move away, then it leaves")
                    } else {
                        format!("starting the cluster on {node}")
                    }
                })
            }
            R::Standby { node, standby } => self.node_named(&node).map(|()| {
                self.edit_settings(|s| {
                    if standby {
                        s.standby.insert(node.clone());
                    } else {
                        s.standby.remove(&node);
                    }
                });
                if standby {
                    format!("{node} is in standby: it runs no resources")
                } else {
                    format!("{node} may run resources again")
                }
            }),
            R::Move { resource, node } => self.resource_named(&resource).and_then(|()| {
                let target = match node {
                    Some(n) => {
                        self.node_named(&n)?;
                        Some(n)
                    }
                    None => None,
                };
                let here = self.where_runs(&resource);
                let (prefer, at) = match (target, here) {
                    (Some(n), _) => (true, n),
                    (None, Some(h)) => (false, h),
                    (None, None) => {
                        return Err(format!(
                            "{resource} runs nowhere: give the node to move it to"
                        ))
                    }
                };
                let stack = self.stack_of(&resource).unwrap_or_else(|| resource.clone());
                self.edit_settings(|s| {
                    s.locations.retain(|l| l.resource != stack);
                    s.locations.push(Location {
                        resource: stack.clone(),
                        node: at.clone(),
                        prefer,
                    });
                });
                Ok(if prefer {
                    format!("moving {stack} (with its VIP, target and LUNs) to {at}; `twinsan resource clear {stack}` lets it stay wherever it is then")
                } else {
                    format!("moving {stack} away from {at} (banned there until `twinsan resource clear {stack}`)")
                })
            }),
            R::Clear { resource } => self.resource_named(&resource).map(|()| {
                let stack = self.stack_of(&resource).unwrap_or_else(|| resource.clone());
                self.edit_settings(|s| s.locations.retain(|l| l.resource != stack));
                format!("removed the move constraints of {stack}")
            }),
            R::Cleanup { resource } => {
                let checked = match &resource {
                    Some(r) => self.resource_named(r),
                    None => Ok(()),
                };
                checked.map(|()| {
                    self.edit_settings(|s| {
                        s.cleanup = Cleanup {
                            generation: s.cleanup.generation + 1,
                            resource: resource.clone(),
                        }
                    });
                    match &resource {
                        Some(r) => format!("cleaned up {r}: failures forgotten on both nodes"),
                        None => "cleaned up every resource: failures forgotten on both nodes".into(),
                    }
                })
            }
            _ => Err("not a cluster request".into()),
        };
        match result {
            Ok(message) => ok(message),
            Err(message) => api::Response::Error { message },
        }
    }

    fn edit_settings(&self, edit: impl FnOnce(&mut Settings)) {
        let mut st = self.lock();
        let mut settings = st.settings.clone();
        edit(&mut settings);
        self.change_settings(&mut st, settings);
        drop(st);
        // The peer hears of it at once.
        self.send_report();
    }

    fn node_named(&self, name: &str) -> Result<(), String> {
        if name == self.me.name || name == self.peer.name {
            Ok(())
        } else {
            Err(format!(
                "no node is named {name} (the nodes are {} and {})",
                self.me.name, self.peer.name
            ))
        }
    }

    fn all_resources(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in self.stacks().iter() {
            out.extend(s.volumes.iter().cloned());
            out.push(s.vip_name.clone());
            out.push(s.target_name.clone());
            out.extend(s.luns.iter().map(|(n, _)| n.clone()));
        }
        out
    }

    fn resource_named(&self, name: &str) -> Result<(), String> {
        let all = self.all_resources();
        if all.iter().any(|r| r == name) {
            Ok(())
        } else {
            Err(format!(
                "no resource is named {name} (the resources are: {})",
                all.join(", ")
            ))
        }
    }

    /// The volume whose stack `resource` belongs to.
    fn stack_of(&self, resource: &str) -> Option<String> {
        self.stacks()
            .iter()
            .find(|s| {
                s.volumes.iter().any(|v| v == resource)
                    || s.vip_name == resource
                    || s.target_name == resource
                    || s.luns.iter().any(|(n, _)| n == resource)
            })
            .map(|s| s.volume.clone())
    }

    /// The node where the stack of `resource` is promoted now.
    fn where_runs(&self, resource: &str) -> Option<String> {
        let volume = self.stack_of(resource)?;
        let input = self.build_input().input;
        let state = &input.state;
        state
            .volumes
            .iter()
            .filter(|e| e.volume == volume && e.role == Role::Primary)
            .find(|e| state.nodes.iter().any(|n| n.name == e.node && n.online))
            .map(|e| e.node.clone())
    }

    fn cluster_status(&self) -> api::ClusterStatus {
        let input = self.build_input().input;
        let st = self.lock();
        let settings = &st.settings;
        let view_online = |name: &str| input.state.nodes.iter().any(|n| n.name == name && n.online);
        let mut both = [&self.me, &self.peer];
        both.sort_by(|a, b| a.name.cmp(&b.name));
        let nodes = both
            .iter()
            .map(|n| api::NodeStatus {
                name: n.name.clone(),
                online: if n.name == self.me.name {
                    !st.left
                } else {
                    view_online(&n.name)
                },
                standby: settings.standby.contains(&n.name),
                stopped: settings.stopped.contains(&n.name),
                protocol: (n.name != self.me.name)
                    .then_some(st.peer_messages)
                    .flatten()
                    .map(|v| u32::from(v.number())),
            })
            .collect();
        let fail_counts = |resource: &str| {
            input
                .state
                .resources
                .iter()
                .filter(|e| e.resource == resource && e.fail_count > 0)
                .map(|e| (e.node.clone(), e.fail_count))
                .collect()
        };
        let mut resources = Vec::new();
        for s in self.stacks().iter() {
            let mut vols = Vec::new();
            for name in &s.volumes {
                let mut vol = api::ResourceStatus {
                    name: name.clone(),
                    kind: "volume".into(),
                    agent: "twinsan:volume".into(),
                    volume: s.volume.clone(),
                    detail: format!("replicated volume {name}"),
                    started: vec![],
                    failed: vec![],
                    promoted: vec![],
                    unpromoted: vec![],
                    last_error: None,
                    fail_counts: fail_counts(name),
                };
                for e in input.state.volumes.iter().filter(|e| e.volume == *name) {
                    if !view_online(&e.node) {
                        continue;
                    }
                    vol.started.push(e.node.clone());
                    match e.role {
                        Role::Primary => vol.promoted.push(e.node.clone()),
                        _ => vol.unpromoted.push(e.node.clone()),
                    }
                }
                vols.push(vol);
            }
            let res_of = |name: &str, kind: &str, agent: &str, detail: String| {
                let mut r = api::ResourceStatus {
                    name: name.to_string(),
                    kind: kind.into(),
                    agent: agent.into(),
                    volume: s.volume.clone(),
                    detail,
                    started: vec![],
                    failed: vec![],
                    promoted: vec![],
                    unpromoted: vec![],
                    last_error: None,
                    fail_counts: fail_counts(name),
                };
                for e in input.state.resources.iter().filter(|e| e.resource == name) {
                    match e.status {
                        RunStatus::Started => r.started.push(e.node.clone()),
                        RunStatus::Failed => r.failed.push(e.node.clone()),
                        RunStatus::Stopped => {}
                    }
                }
                r
            };
            let portal = SocketAddr::new(s.target.vip, s.target.port);
            resources.extend(vols);
            resources.push(res_of(
                &s.vip_name,
                "vip",
                "twinsan:vip",
                format!(
                    "{}/{}",
                    s.target.vip,
                    s.target
                        .vip_prefix
                        .unwrap_or(if s.target.vip.is_ipv4() { 24 } else { 64 })
                ),
            ));
            resources.push(res_of(
                &s.target_name,
                "target",
                "twinsan:target",
                format!("{} {portal}", s.target.iqn),
            ));
            for (name, lun) in &s.luns {
                resources.push(res_of(name, "lun", "twinsan:lun", format!("LUN {lun}")));
            }
        }
        let peer_failed: &[String] = st
            .peer_report
            .as_ref()
            .map_or(&[], |r| r.failed_actions.as_slice());
        for r in &mut resources {
            r.last_error = self.resource_error(&st, peer_failed, r);
        }
        let quorum = {
            let votes = 1
                + usize::from(view_online(&self.peer.name))
                + usize::from(
                    input.state.witness_vote.as_deref() == Some(self.me.name.as_str())
                        && !view_online(&self.peer.name),
                );
            let total = 2 + usize::from(self.witness.is_some());
            if votes * 2 > total {
                format!("partition with quorum ({votes} of {total} votes)")
            } else if self.witness.is_some() || self.config.no_quorum_stop() {
                format!("partition WITHOUT quorum ({votes} of {total} votes): nothing runs here")
            } else {
                format!(
                    "partition without quorum ({votes} of {total} votes); no-quorum-policy ignore: runs alone"
                )
            }
        };
        let config_hash = self.running().config_hash;
        let config_warning = st
            .peer_report
            .as_ref()
            .filter(|_| view_online(&self.peer.name))
            .and_then(|r| r.config_hash.as_ref())
            .filter(|theirs| **theirs != config_hash)
            .map(|theirs| {
                format!(
                    "the nodes run different configs ({} has {}, {} has {theirs}): edit the file on both nodes \
                     and run `twinsan node reload` on each",
                    self.me.name, config_hash, self.peer.name
                )
            });
        api::ClusterStatus {
            config_warning,
            cluster: self.config.cluster.name.clone(),
            node: self.me.name.clone(),
            managed: true,
            quorum,
            witness: self.config.cluster.witness.map(|addr| {
                let w = self.witness.as_ref();
                api::WitnessStatus {
                    address: addr.to_string(),
                    reachable: w.is_some_and(|w| w.reachable()),
                    vote: input.state.witness_vote.clone(),
                }
            }),
            nodes,
            resources,
            failed_actions: {
                let mut all = st.failed_actions.clone();
                if let Some(r) = st.peer_report.as_ref() {
                    all.extend(r.failed_actions.iter().take(32).cloned());
                }
                all
            },
            constraints: settings
                .locations
                .iter()
                .map(|l| {
                    if l.prefer {
                        format!("{} prefers {} (resource move)", l.resource, l.node)
                    } else {
                        format!("{} banned from {} (resource move)", l.resource, l.node)
                    }
                })
                .chain(
                    settings
                        .fenced
                        .iter()
                        .map(|(v, n)| format!("{v} on {n}: fenced (Outdated) until it resyncs")),
                )
                .collect(),
            notes: st.notes.clone(),
            volumes: self.volumes().values().map(|v| v.api_status()).collect(),
            properties: self.properties(),
        }
    }
}

impl Shared {
    /// Why `r` failed (see [`api::ResourceStatus::last_error`]; `peer_failed`: the peer's failed actions).
    fn resource_error(
        &self,
        st: &State,
        peer_failed: &[String],
        r: &api::ResourceStatus,
    ) -> Option<String> {
        if let Some((verb, f)) = st.retries.of(&r.name).next() {
            return Some(format!(
                "{verb} failed on {}: {} (failure {} in a row; next try {:?} after it)",
                self.me.name, f.reason, f.failures, f.delay
            ));
        }
        r.failed.iter().find_map(|node| {
            let lines = if *node == self.me.name {
                &st.failed_actions[..]
            } else {
                peer_failed
            };
            let on = format!(" on {node} ");
            lines
                .iter()
                .rev()
                .find(|a| a.starts_with(&format!("{}_", r.name)) && a.contains(&on))
                .cloned()
        })
    }

    /// The cluster's properties under Pacemaker's names.
    fn properties(&self) -> Vec<(String, String)> {
        let c = &self.config.cluster;
        let mut p = vec![
            ("cluster-name", c.name.clone()),
            ("stonith-enabled", "false".to_string()),
            ("no-quorum-policy", c.no_quorum_policy.to_string()),
            ("resource-stickiness", c.resource_stickiness.to_string()),
            ("migration-threshold", c.migration_threshold.to_string()),
            (
                "failure-timeout",
                if c.failure_timeout_s == 0 {
                    "0 (never)".to_string()
                } else {
                    format!("{}s", c.failure_timeout_s)
                },
            ),
            (
                "heartbeat-interval",
                format!("{}ms", c.heartbeat_interval_ms),
            ),
            ("detection-timeout", format!("{}ms", c.detection_timeout_ms)),
            ("monitor-interval", format!("{}ms", c.monitor_interval_ms)),
        ];
        if let Some(w) = c.witness {
            p.push(("witness", w.to_string()));
        }
        p.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}
