//! Portals (listening sockets), the connection limit and the table of sessions.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{info, warn, Instrument};
use twinsan_iscsi::login::ChapPolicy;
use twinsan_scsi::{LogicalUnit, Nexus, Sense};

use crate::config::ServerConfig;
use crate::conn;
use crate::error::TargetError;
use crate::stats::{LoginFailure, LunStats, TargetStats};

/// Identifies a session for reinstatement: the I_T nexus plus the target (RFC 7143 section 6.3.5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SessionKey {
    pub initiator: String,
    pub isid: [u8; 6],
    pub target: String,
}

/// A live session as the table sees it.
pub(crate) struct SessionEntry {
    pub tsih: u16,
    /// Set to true to make the session end (reinstatement, shutdown).
    pub stop: watch::Sender<bool>,
    /// Closed when the session's connection task has ended.
    pub done: watch::Receiver<()>,
}

#[derive(Default)]
pub(crate) struct SessionTable {
    next_tsih: u16,
    sessions: HashMap<SessionKey, SessionEntry>,
}

impl SessionTable {
    /// The next non-zero TSIH no live normal session holds.
    fn fresh_tsih(&mut self) -> u16 {
        loop {
            self.next_tsih = self.next_tsih.wrapping_add(1);
            let candidate = self.next_tsih;
            if candidate != 0 && !self.sessions.values().any(|s| s.tsih == candidate) {
                return candidate;
            }
        }
    }
}

/// The LUNs of one target as sessions see them now; replaced as a whole by [`Running::set_luns`].
pub(crate) struct LunMap {
    pub luns: BTreeMap<u64, Arc<LogicalUnit>>,
    /// The LUN numbers, for REPORT LUNS.
    pub numbers: Arc<[u64]>,
    /// Each LUN's counters, when the server counts ([`ServerConfig::stats`]): looked up here, once per map.
    pub stats: BTreeMap<u64, Arc<LunStats>>,
}

impl LunMap {
    fn new(luns: BTreeMap<u64, Arc<LogicalUnit>>, target: Option<&TargetStats>) -> Arc<LunMap> {
        let numbers = luns.keys().copied().collect();
        let stats = match target {
            Some(t) => luns.keys().map(|&n| (n, t.lun(n))).collect(),
            None => BTreeMap::new(),
        };
        Arc::new(LunMap {
            luns,
            numbers,
            stats,
        })
    }
}

/// The nexuses logged in, by (target index, nexus id), with their connection count.
type NexusTable = HashMap<(usize, u64), (Arc<Nexus>, usize)>;

/// Who may log in to one target, and how: replaced as a whole by [`Running::set_access`].
#[derive(Clone)]
struct Access {
    allowed_initiators: Vec<String>,
    chap: Option<ChapPolicy>,
}

/// State shared by every connection of the server.
pub(crate) struct Shared {
    pub config: ServerConfig,
    pub table: Mutex<SessionTable>,
    connections: AtomicUsize,
    /// Per target (index in `config.targets`): its current LUNs (`config.targets[i].luns` at the start).
    lun_maps: Mutex<Vec<Arc<LunMap>>>,
    /// Bumped by every LUN map change: a connection compares it before each command.
    pub lun_generation: AtomicU64,
    /// The nexuses of the sessions logged in to each target, with how many connections each has.
    nexuses: Mutex<NexusTable>,
    /// Per target: its allow-list and CHAP policy now (from `config.targets[i]` at the start); and the CHAP
    /// policy of discovery sessions now. Read at each login and discovery.
    access: Mutex<(Vec<Access>, Option<ChapPolicy>)>,
}

impl Shared {
    /// The counters of target `t`, when the server counts.
    pub fn target_stats(&self, t: usize) -> Option<Arc<TargetStats>> {
        let stats = self.config.stats.as_ref()?;
        Some(stats.target(&self.config.targets.get(t)?.name))
    }

    /// Counts a refused login, under the target it named if that is one of this server's (else under `""`).
    pub fn login_failed(&self, target: Option<&str>, why: LoginFailure) {
        let Some(stats) = &self.config.stats else {
            return;
        };
        let name = target
            .filter(|n| self.target_index(n).is_some())
            .unwrap_or("");
        stats.target(name).login_failed(why);
    }

    /// The index of the target called `name`.
    pub fn target_index(&self, name: &str) -> Option<usize> {
        self.config.targets.iter().position(|c| c.name == name)
    }

    /// Whether `initiator` may log in to target `t` now (its allow-list is empty or names it).
    pub fn allows(&self, t: usize, initiator: &str) -> bool {
        let access = self.access.lock().unwrap_or_else(|p| p.into_inner());
        access.0.get(t).is_some_and(|a| {
            a.allowed_initiators.is_empty() || a.allowed_initiators.iter().any(|i| i == initiator)
        })
    }

    /// The CHAP policy of target `t` now.
    pub fn chap(&self, t: usize) -> Option<ChapPolicy> {
        let access = self.access.lock().unwrap_or_else(|p| p.into_inner());
        access.0.get(t).and_then(|a| a.chap.clone())
    }

    /// The CHAP policy of discovery sessions now.
    pub fn discovery_chap(&self) -> Option<ChapPolicy> {
        let access = self.access.lock().unwrap_or_else(|p| p.into_inner());
        access.1.clone()
    }

    /// The current LUNs of target `t`.
    pub fn lun_map(&self, t: usize) -> Arc<LunMap> {
        let maps = self.lun_maps.lock().unwrap_or_else(|p| p.into_inner());
        maps.get(t)
            .cloned()
            .unwrap_or_else(|| LunMap::new(BTreeMap::new(), None))
    }

    /// A session's connection to target `t` is in full feature phase.
    pub fn nexus_up(&self, t: usize, nexus: &Arc<Nexus>) {
        let mut all = self.nexuses.lock().unwrap_or_else(|p| p.into_inner());
        all.entry((t, nexus.id)).or_insert((nexus.clone(), 0)).1 += 1;
    }

    /// That connection ended.
    pub fn nexus_down(&self, t: usize, nexus: &Nexus) {
        let mut all = self.nexuses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = all.get_mut(&(t, nexus.id)) {
            entry.1 -= 1;
            if entry.1 == 0 {
                all.remove(&(t, nexus.id));
            }
        }
    }

    /// Replaces the LUNs of target `t`: every nexus logged in to it joins the new logical units, forgets the
    /// removed ones, and gets REPORTED LUNS DATA HAS CHANGED on each logical unit it can reach now.
    fn set_luns(&self, t: usize, luns: BTreeMap<u64, Arc<LogicalUnit>>) {
        let nexuses: Vec<Arc<Nexus>> = {
            let all = self.nexuses.lock().unwrap_or_else(|p| p.into_inner());
            all.iter()
                .filter(|((target, _), _)| *target == t)
                .map(|(_, (n, _))| n.clone())
                .collect()
        };
        let old = {
            let mut maps = self.lun_maps.lock().unwrap_or_else(|p| p.into_inner());
            let Some(slot) = maps.get_mut(t) else {
                return;
            };
            let new = LunMap::new(luns, self.target_stats(t).as_deref());
            for lu in new.luns.values() {
                for n in &nexuses {
                    lu.nexus_joined(n);
                }
            }
            std::mem::replace(slot, new)
        };
        self.lun_generation.fetch_add(1, Ordering::SeqCst);
        let new = self.lun_map(t);
        for (number, lu) in &old.luns {
            if !new.luns.values().any(|l| Arc::ptr_eq(l, lu)) {
                for n in &nexuses {
                    lu.nexus_gone(n);
                }
                info!(lun = number, "LUN removed from the running target");
            }
        }
        for lu in new.luns.values() {
            lu.queue_unit_attention(Sense::reported_luns_changed(), None);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SessionTable> {
        // A panic while holding the lock cannot leave the table half-updated in a way that matters more than
        // refusing service, so a poisoned lock is taken over.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a session with this TSIH exists.
    pub fn tsih_exists(&self, tsih: u16) -> bool {
        self.lock().sessions.values().any(|s| s.tsih == tsih)
    }

    /// The id of an I_T nexus (initiator port) for per-nexus SCSI state: the same for a reinstated session, and
    /// computed rather than stored, so clients that come and go leave nothing behind.
    pub fn nexus_id(&self, initiator: &str, isid: [u8; 6]) -> u64 {
        use std::hash::{Hash, Hasher};
        // DefaultHasher::new() has fixed keys: ids are stable for the life of the process, which is all they need.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        initiator.hash(&mut h);
        isid.hash(&mut h);
        h.finish()
    }

    /// Registers a new session, first ending any session with the same key (reinstatement). Returns its TSIH.
    pub async fn register(
        &self,
        key: SessionKey,
        stop: watch::Sender<bool>,
        done: watch::Receiver<()>,
    ) -> u16 {
        let old = self.lock().sessions.remove(&key);
        if let Some(mut old) = old {
            info!(tsih = old.tsih, initiator = %key.initiator, "reinstating session: ending the old one first");
            let _ = old.stop.send(true);
            // The old session's tasks end before the new session starts; a wedged old session is not allowed
            // to block the initiator forever.
            let ended = tokio::time::timeout(Duration::from_secs(30), async {
                while old.done.changed().await.is_ok() {}
            })
            .await;
            if ended.is_err() {
                warn!(
                    tsih = old.tsih,
                    "old session did not end within 30 s; reinstating anyway"
                );
            }
        }
        let mut t = self.lock();
        let tsih = t.fresh_tsih();
        t.sessions.insert(key, SessionEntry { tsih, stop, done });
        tsih
    }

    /// A TSIH for a discovery session, which is not in the table (it cannot be reinstated or joined).
    pub fn discovery_tsih(&self) -> u16 {
        self.lock().fresh_tsih()
    }

    /// Removes the session if it is still the one with `tsih` (a reinstated session has been replaced).
    pub fn unregister(&self, key: &SessionKey, tsih: u16) {
        let mut t = self.lock();
        if t.sessions.get(key).is_some_and(|s| s.tsih == tsih) {
            t.sessions.remove(key);
        }
    }
}

/// A server serving on a task of its own ([`Server::spawn`]).
pub struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
}

impl Running {
    /// Replaces the LUNs of the target called `target` while it serves: sessions see the new LUN inventory from
    /// their next command on, with a unit attention REPORTED LUNS DATA HAS CHANGED (3Fh/0Eh) on every logical
    /// unit of the target; a LUN no longer in the map answers LOGICAL UNIT NOT SUPPORTED. Commands already
    /// running on a removed LUN finish. Returns false if the server has no such target.
    pub fn set_luns(&self, target: &str, luns: BTreeMap<u64, Arc<LogicalUnit>>) -> bool {
        let Some(t) = self
            .shared
            .config
            .targets
            .iter()
            .position(|c| c.name == target)
        else {
            return false;
        };
        self.shared.set_luns(t, luns);
        true
    }

    /// Replaces who may log in to the target called `target` (its allow-list and CHAP policy) and the CHAP
    /// policy of discovery sessions, while it serves: logins and discovery from now on use them; sessions
    /// already logged in stay. Returns false if the server has no such target.
    pub fn set_access(
        &self,
        target: &str,
        allowed_initiators: Vec<String>,
        chap: Option<ChapPolicy>,
        discovery_chap: Option<ChapPolicy>,
    ) -> bool {
        let Some(t) = self.shared.target_index(target) else {
            return false;
        };
        let mut access = self.shared.access.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = access.0.get_mut(t) {
            *slot = Access {
                allowed_initiators,
                chap,
            };
        }
        access.1 = discovery_chap;
        info!(target, "new access rules for logins");
        true
    }

    /// The LUN numbers the target called `target` serves now.
    pub fn luns(&self, target: &str) -> Option<Vec<u64>> {
        let t = self
            .shared
            .config
            .targets
            .iter()
            .position(|c| c.name == target)?;
        Some(self.shared.lun_map(t).numbers.to_vec())
    }

    /// Whether it has stopped (by itself: its task ended).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Ends it: no new connections, every session ended, and waits until that is done.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// A running iSCSI target server.
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
}

impl Server {
    /// Binds every portal address.
    pub async fn bind(config: ServerConfig, addrs: &[SocketAddr]) -> Result<Server, TargetError> {
        let mut listeners = Vec::new();
        for &addr in addrs {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| TargetError::Listen { addr, source })?;
            listeners.push(l);
        }
        let lun_maps = config
            .targets
            .iter()
            .map(|t| {
                let stats = config.stats.as_ref().map(|s| s.target(&t.name));
                LunMap::new(t.luns.clone(), stats.as_deref())
            })
            .collect();
        let access = config
            .targets
            .iter()
            .map(|t| Access {
                allowed_initiators: t.allowed_initiators.clone(),
                chap: t.chap.clone(),
            })
            .collect();
        let discovery_chap = config.discovery_chap.clone();
        Ok(Server {
            shared: Arc::new(Shared {
                config,
                table: Mutex::default(),
                connections: AtomicUsize::new(0),
                lun_maps: Mutex::new(lun_maps),
                lun_generation: AtomicU64::new(0),
                nexuses: Mutex::default(),
                access: Mutex::new((access, discovery_chap)),
            }),
            listeners,
        })
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves on a task of the current runtime until [`Running::stop`].
    pub fn spawn(self) -> Running {
        let (stop, shutdown) = watch::channel(false);
        let shared = self.shared.clone();
        Running {
            stop,
            task: tokio::spawn(self.run(shutdown)),
            shared,
        }
    }

    /// Serves until `shutdown` becomes true, then ends every session and returns.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let mut accepts = Vec::new();
        for l in self.listeners {
            let shared = self.shared.clone();
            let shutdown = shutdown.clone();
            accepts.push(tokio::spawn(accept_loop(shared, l, shutdown)));
        }
        for a in accepts {
            let _ = a.await;
        }
        // Accept loops have ended: stop every session and wait for them.
        let sessions: Vec<_> = {
            let mut t = self.shared.lock();
            t.sessions.drain().map(|(_, s)| s).collect()
        };
        for mut s in sessions {
            let _ = s.stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                while s.done.changed().await.is_ok() {}
            })
            .await;
        }
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let portal = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(?portal, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let n = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
        if n > shared.config.max_connections {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            warn!(%peer, limit = shared.config.max_connections, "connection refused: too many connections");
            drop(stream);
            continue;
        }
        let shared2 = shared.clone();
        let shutdown = shutdown.clone();
        let span = tracing::info_span!("conn", %peer);
        tokio::spawn(
            async move {
                run_connection(shared2.clone(), stream, peer, shutdown).await;
                shared2.connections.fetch_sub(1, Ordering::SeqCst);
            }
            .instrument(span),
        );
    }
}

async fn run_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    conn::serve(shared, stream, peer, local, shutdown).await;
}
