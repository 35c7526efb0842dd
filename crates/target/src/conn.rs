//! One iSCSI connection: the login phase, then the full feature phase.
//!
//! A connection is one tokio task that owns all of its state (tasks, CmdSN window, StatSN), so there is no
//! locking on the data path. It reads PDUs from the socket, runs SCSI commands on the blocking pool, and writes
//! its output straight to the socket when it can, waiting for writability only when it must. Its session is the
//! connection's own: MaxConnections is 1.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use twinsan_iscsi::error::{LoginStatus, RejectReason};
use twinsan_iscsi::frame::{self, DecodeError, FrameLimits, RawPdu};
use twinsan_iscsi::login::{ChapPolicy, Login, LoginEnv, LoginStep, Negotiated, SessionType};
use twinsan_iscsi::pdu::{self, tmf, Pdu, BHS_LEN, RESERVED_TAG};
use twinsan_iscsi::seq::{sn_le, sn_lt, CmdSnCheck, CmdWindow};
use twinsan_iscsi::text::TextPairs;
use twinsan_scsi::{LogicalUnit, Nexus, Outcome, Request, Sense};

use crate::output::Output;
use crate::server::{LunMap, SessionKey, Shared};
use crate::stats::{LoginFailure, OpKind, TargetStats};

/// Largest data buffer one command may hold (reads and writes); bigger transfers are refused by the SCSI layer's
/// block limits before any data moves.
const MAX_TASK_DATA: u32 = 16 * 1024 * 1024;
/// Output waiting for the socket beyond which the connection stops reading new requests.
const MAX_PENDING_OUTPUT: usize = 16 * 1024 * 1024;
/// Longest Text Request accepted across C-bit continuations.
const MAX_TEXT_REQUEST: usize = 64 * 1024;
/// How many bytes of a text response are kept for continuation.
const MAX_TEXT_RESPONSE: usize = 1024 * 1024;

struct Env<'a> {
    shared: &'a Shared,
}

impl LoginEnv for Env<'_> {
    fn normal_access(
        &self,
        target: &str,
        initiator: &str,
    ) -> Result<Option<ChapPolicy>, LoginStatus> {
        // The access rules now: a config reload may have replaced them (`Running::set_access`).
        let t = self
            .shared
            .target_index(target)
            .ok_or(LoginStatus::NotFound)?;
        if !self.shared.allows(t, initiator) {
            return Err(LoginStatus::AuthorizationFailure);
        }
        Ok(self.shared.chap(t))
    }
    fn discovery_access(&self, _initiator: &str) -> Result<Option<ChapPolicy>, LoginStatus> {
        Ok(self.shared.discovery_chap())
    }
}

/// The LUN number of a BHS LUN field, in the SAM format REPORT LUNS uses.
fn lun_number(field: u64) -> u64 {
    twinsan_scsi::decode_lun(field.to_be_bytes())
}

fn random_bytes(buf: &mut [u8]) {
    if getrandom::fill(buf).is_err() {
        // No entropy source would make CHAP predictable; refuse to go on rather than weaken it.
        panic!("the operating system's random number generator failed");
    }
}

/// Reads one PDU, or None at end of stream. Decoding errors are returned for the caller to act on.
async fn read_pdu(
    rd: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    limits: &FrameLimits,
) -> std::io::Result<Option<Result<RawPdu, DecodeError>>> {
    loop {
        match frame::decode(buf, limits) {
            Ok(Some(p)) => return Ok(Some(Ok(p))),
            Ok(None) => {}
            Err(e) => return Ok(Some(Err(e))),
        }
        if buf.capacity() - buf.len() < 8192 {
            buf.reserve(64 * 1024);
        }
        if rd.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Serves one accepted connection to its end.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut inbuf = BytesMut::with_capacity(16 * 1024);

    let timeout = shared.config.login_timeout;
    let login = tokio::time::timeout(
        timeout,
        login_phase(&shared, &mut rd, &mut inbuf, &mut wr, peer),
    )
    .await;
    let done = match login {
        Err(_) => {
            warn!(%peer, timeout_s = timeout.as_secs(), "login did not complete in time; closing");
            shared.login_failed(None, LoginFailure::Timeout);
            None
        }
        Ok(None) => None,
        Ok(Some(done)) => Some(done),
    };
    if let Some(done) = done {
        full_feature(shared, rd, wr, inbuf, done, local, shutdown).await;
    } else {
        let _ = wr.shutdown().await;
    }
}

/// What the login phase hands to the full feature phase.
struct LoggedIn {
    n: Negotiated,
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
    exp_cmd_sn: u32,
    stat_sn: u32,
    session: Option<(SessionKey, watch::Receiver<bool>, watch::Sender<()>)>,
}

async fn login_phase(
    shared: &Arc<Shared>,
    rd: &mut OwnedReadHalf,
    inbuf: &mut BytesMut,
    wr: &mut OwnedWriteHalf,
    peer: SocketAddr,
) -> Option<LoggedIn> {
    let limits = FrameLimits::default();
    let mut login = Login::new(shared.config.limits.clone());
    let mut stat_sn: Option<u32> = None;
    let depth = shared.config.queue_depth;
    loop {
        let raw = match read_pdu(rd, inbuf, &limits).await {
            Ok(Some(Ok(raw))) => raw,
            Ok(Some(Err(DecodeError::Fatal(e))))
            | Ok(Some(Err(DecodeError::Reject { error: e, .. }))) => {
                warn!(%peer, error = %e, "bad PDU during login; closing");
                shared.login_failed(None, LoginFailure::Protocol);
                return None;
            }
            Ok(None) => {
                debug!(%peer, "connection closed during login");
                return None;
            }
            Err(e) => {
                debug!(%peer, error = %e, "read failed during login");
                return None;
            }
        };
        let req = match Pdu::decode(&raw.bhs) {
            Ok(Pdu::LoginRequest(r)) => r,
            Ok(_) | Err(_) => {
                warn!(
                    %peer,
                    opcode = format_args!("{:#04x}", pdu::opcode_of(&raw.bhs)),
                    "PDU before login completed is not a Login Request; closing"
                );
                shared.login_failed(None, LoginFailure::Protocol);
                return None;
            }
        };
        // StatSN starts where the initiator expects it and advances by one per Login Response.
        let sn = *stat_sn.get_or_insert(req.exp_stat_sn);
        stat_sn = Some(sn.wrapping_add(1));
        let step = login.step(&req, &raw.data, &Env { shared }, &mut random_bytes);
        let (reply, complete, failure) = match step {
            LoginStep::Continue(r) => (r, None, None),
            LoginStep::Complete(r, n) => (r, Some(n), None),
            LoginStep::Fail(r, why) => (r, None, Some(why)),
        };
        let mut tsih = req.tsih;
        let mut status = reply.status;
        let mut session = None;
        let mut failure = failure;
        if failure.is_none() && req.tsih != 0 {
            // Adding a connection to an existing session: MaxConnections is 1.
            status = if shared.tsih_exists(req.tsih) {
                LoginStatus::TooManyConnections
            } else {
                LoginStatus::SessionDoesNotExist
            };
            failure = Some(format!("login with TSIH {} refused: {status}", req.tsih));
        }
        if failure.is_none() {
            if let Some(n) = &complete {
                if n.session_type == SessionType::Normal {
                    let key = SessionKey {
                        initiator: n.initiator_name.clone(),
                        isid: req.isid,
                        target: n.target_name.clone().unwrap_or_default(),
                    };
                    let (stop_tx, stop_rx) = watch::channel(false);
                    let (done_tx, done_rx) = watch::channel(());
                    tsih = shared.register(key.clone(), stop_tx, done_rx).await;
                    session = Some((key, stop_rx, done_tx));
                } else {
                    tsih = shared.discovery_tsih();
                }
            }
        }
        let text = if failure.is_some() {
            Vec::new()
        } else {
            reply.text.encode()
        };
        let resp = Pdu::LoginResponse(pdu::LoginResponse {
            transit: failure.is_none() && reply.transit,
            cont: false,
            csg: reply.csg,
            nsg: reply.nsg,
            version_max: 0,
            version_active: 0,
            data_len: text.len() as u32,
            isid: req.isid,
            tsih: if failure.is_some() { 0 } else { tsih },
            itt: req.itt,
            stat_sn: sn,
            exp_cmd_sn: req.cmd_sn,
            max_cmd_sn: req.cmd_sn.wrapping_add(depth - 1),
            status_class: status.class(),
            status_detail: status.detail(),
        });
        let mut out = BytesMut::new();
        frame::encode(&mut out, &resp.encode(), &[], &text, &limits);
        if wr.write_all(&out).await.is_err() {
            return None;
        }
        if let Some(why) = failure {
            let n = login.negotiated();
            warn!(%peer, initiator = %n.initiator_name, target = ?n.target_name, status = %status, "login refused: {why}");
            shared.login_failed(n.target_name.as_deref(), LoginFailure::of(status));
            return None;
        }
        if let Some(n) = complete {
            info!(
                %peer,
                initiator = %n.initiator_name,
                target = ?n.target_name,
                tsih,
                kind = ?n.session_type,
                header_digest = n.header_digest,
                data_digest = n.data_digest,
                "login complete"
            );
            return Some(LoggedIn {
                n: *n,
                isid: req.isid,
                tsih,
                cid: req.cid,
                exp_cmd_sn: req.cmd_sn,
                stat_sn: sn.wrapping_add(1),
                session,
            });
        }
    }
}

/// Where a command stands.
#[derive(Debug, PartialEq, Eq)]
enum TaskState {
    /// Received but waiting for an earlier CmdSN.
    Held,
    /// Delivered; collecting Data-Out.
    Collecting,
    /// Running on the blocking pool.
    Executing,
}

struct R2tSeq {
    ttt: u32,
    offset: u32,
    len: u32,
    next_data_sn: u32,
}

struct Task {
    itt: u32,
    lun: u64,
    cdb: Vec<u8>,
    read: bool,
    edtl: u32,
    state: TaskState,
    aborted: bool,
    lu: Option<Arc<LogicalUnit>>,
    /// Write data collected so far (bytes beyond `keep` are counted but not stored).
    data: Vec<u8>,
    keep: u32,
    received: u32,
    /// Unsolicited Data-Out sequence still open (F bit not yet seen).
    unsolicited_open: bool,
    unsolicited_end: u32,
    unsolicited_next_data_sn: u32,
    r2t: Option<R2tSeq>,
    next_r2t_sn: u32,
    /// Whether this command took a CmdSN window slot.
    holds_slot: bool,
    /// A Data-Out broke the DataSN sequence: the data is taken in but not used, and the command fails.
    data_sn_error: bool,
    /// When the command arrived, if its LUN is counted (the metrics' command duration).
    arrived: Option<Instant>,
}

struct Completion {
    itt: u32,
    outcome: Outcome,
}

/// A task management response waiting for aborted commands to finish running.
struct TmfWait {
    itt: u32,
    response: u8,
    waiting: HashSet<u32>,
    close_after: bool,
}

struct TextContinuation {
    itt: u32,
    ttt: u32,
    rest: Vec<u8>,
}

struct Conn {
    shared: Arc<Shared>,
    n: Negotiated,
    cid: u16,
    target: Option<usize>,
    nexus: Arc<Nexus>,
    /// The target's LUNs as of `lun_generation`; refreshed before each command when the server's changed.
    lun_map: Arc<LunMap>,
    lun_generation: u64,
    local: SocketAddr,
    window: CmdWindow,
    held: HashMap<u32, RawPdu>,
    tasks: HashMap<u32, Task>,
    stat_sn: u32,
    next_ttt: u32,
    out: Output,
    send_limits: FrameLimits,
    recv_limits: FrameLimits,
    done_tx: mpsc::UnboundedSender<Completion>,
    tmf_waits: Vec<TmfWait>,
    ping: Option<(u32, Instant)>,
    last_rx: Instant,
    logout: Option<(u32, u8)>,
    text: Option<TextContinuation>,
    text_request: Vec<u8>,
    /// (ITT, TTT) on which a Text Request continued with the C bit goes on.
    text_request_ttt: Option<(u32, u32)>,
    close: bool,
}

async fn full_feature(
    shared: Arc<Shared>,
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    mut inbuf: BytesMut,
    li: LoggedIn,
    local: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let target =
        li.n.target_name
            .as_deref()
            .and_then(|t| shared.config.targets.iter().position(|c| c.name == t));
    let lun_generation = shared
        .lun_generation
        .load(std::sync::atomic::Ordering::SeqCst);
    let lun_map = shared.lun_map(target.unwrap_or(usize::MAX));
    let nexus = Arc::new(Nexus {
        id: shared.nexus_id(&li.n.initiator_name, li.isid),
        initiator_name: li.n.initiator_name.clone(),
        isid: li.isid,
        target_portal_group: shared.config.limits.portal_group_tag,
    });
    if let Some(t) = target {
        // The logical units learn of the nexus now, so a reset before its first command still reaches it.
        shared.nexus_up(t, &nexus);
        for lu in lun_map.luns.values() {
            lu.nexus_joined(&nexus);
        }
    }
    let limits = |max: u32| FrameLimits {
        header_digest: li.n.header_digest,
        data_digest: li.n.data_digest,
        max_data_len: max,
    };
    let (session_key, mut stop_rx, _done_guard) = match li.session {
        Some((k, s, d)) => (Some(k), Some(s), Some(d)),
        None => (None, None, None),
    };
    // A normal session counts in its target's sessions until this connection ends, however it ends.
    let _counted = match (target, &session_key) {
        (Some(t), Some(_)) => shared
            .target_stats(t)
            .map(|stats| SessionCount::new(stats, &li.n.initiator_name)),
        _ => None,
    };
    let mut conn = Conn {
        send_limits: limits(li.n.initiator_mrdsl),
        recv_limits: limits(li.n.target_mrdsl),
        window: CmdWindow::new(li.exp_cmd_sn, shared.config.queue_depth),
        shared: shared.clone(),
        cid: li.cid,
        target,
        nexus,
        lun_map,
        lun_generation,
        local,
        held: HashMap::new(),
        tasks: HashMap::new(),
        stat_sn: li.stat_sn,
        next_ttt: 1,
        out: Output::default(),
        done_tx,
        tmf_waits: Vec::new(),
        ping: None,
        last_rx: Instant::now(),
        logout: None,
        text: None,
        text_request: Vec::new(),
        text_request_ttt: None,
        close: false,
        n: li.n,
    };
    let tsih = li.tsih;
    let mut shutdown = shutdown;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                info!(tsih, "target shutting down; closing session");
                break;
            }
            _ = async { match stop_rx.as_mut() { Some(s) => { let _ = s.changed().await; } None => std::future::pending().await } } => {
                info!(tsih, "session reinstated by the initiator; closing the old connection");
                break;
            }
            Some(c) = done_rx.recv() => {
                conn.on_completion(c);
                while let Ok(c) = done_rx.try_recv() {
                    conn.on_completion(c);
                }
            }
            w = wr.writable(), if !conn.out.is_empty() => {
                if let Err(e) = w {
                    debug!(tsih, error = %e, "socket not writable");
                    break;
                }
            }
            // Stop taking requests while the initiator does not take our responses (backpressure).
            r = read_some(&mut rd, &mut inbuf), if conn.out.len() < MAX_PENDING_OUTPUT => {
                match r {
                    Ok(0) => {
                        debug!(tsih, "initiator closed the connection");
                        break;
                    }
                    Ok(_) => {
                        conn.last_rx = Instant::now();
                        conn.ping = None;
                        if let Err(why) = conn.on_bytes(&mut inbuf) {
                            warn!(tsih, initiator = %conn.n.initiator_name, "closing connection: {why}");
                            conn.close = true;
                        }
                    }
                    Err(e) => {
                        debug!(tsih, error = %e, "read failed");
                        break;
                    }
                }
            }
            _ = tick.tick() => conn.on_tick(),
        }
        if let Err(e) = conn.out.write_now(&wr) {
            debug!(tsih, error = %e, "write failed");
            break;
        }
        if conn.close {
            break;
        }
    }
    // The last responses (a Logout Response, a task management answer) still go out, within reason.
    if !conn.out.is_empty() {
        let rest = conn.out.take_all();
        let _ = tokio::time::timeout(Duration::from_secs(5), wr.write_all(&rest)).await;
    }
    let _ = wr.shutdown().await;
    // Commands still running finish on the blocking pool; their results are dropped with the channel.
    if let Some(k) = session_key {
        shared.unregister(&k, tsih);
    }
    if let Some(t) = conn.target {
        // I_T nexus loss: the logical units drop what they kept for it, so memory follows the live sessions.
        shared.nexus_down(t, &conn.nexus);
        for lu in shared.lun_map(t).luns.values() {
            lu.nexus_gone(&conn.nexus);
        }
    }
}

/// One session in its target's session gauge and list of initiators, for as long as it lives.
struct SessionCount {
    stats: Arc<TargetStats>,
    initiator: String,
}

impl SessionCount {
    fn new(stats: Arc<TargetStats>, initiator: &str) -> SessionCount {
        stats.session_up(initiator);
        SessionCount {
            stats,
            initiator: initiator.to_string(),
        }
    }
}

impl Drop for SessionCount {
    fn drop(&mut self) {
        self.stats.session_down(&self.initiator);
    }
}

async fn read_some(rd: &mut OwnedReadHalf, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 8192 {
        buf.reserve(64 * 1024);
    }
    rd.read_buf(buf).await
}

/// A fresh Target Transfer Tag from the counter (never the reserved 0xffffffff).
fn alloc_ttt(next: &mut u32) -> u32 {
    let ttt = *next;
    *next = match next.wrapping_add(1) {
        RESERVED_TAG => 1,
        n => n,
    };
    ttt
}

/// Why a connection is closed.
type Fatal = String;

impl Conn {
    fn discovery(&self) -> bool {
        self.n.session_type == SessionType::Discovery
    }

    fn lu(&self, lun: u64) -> Option<Arc<LogicalUnit>> {
        self.target?;
        self.lun_map.luns.get(&lun_number(lun)).cloned()
    }

    /// Takes the target's current LUNs if they changed since this connection last looked (a config reload).
    fn refresh_luns(&mut self) {
        let generation = self
            .shared
            .lun_generation
            .load(std::sync::atomic::Ordering::SeqCst);
        if generation != self.lun_generation {
            self.lun_generation = generation;
            if let Some(t) = self.target {
                self.lun_map = self.shared.lun_map(t);
            }
        }
    }

    fn emit(&mut self, p: &Pdu, data: &[u8]) {
        self.out.push(&p.encode(), data, &self.send_limits);
    }

    /// StatSN for a PDU that carries status, advancing it.
    fn next_stat_sn(&mut self) -> u32 {
        let s = self.stat_sn;
        self.stat_sn = s.wrapping_add(1);
        s
    }

    fn reject(&mut self, bhs: &[u8; BHS_LEN], reason: RejectReason) {
        let stat_sn = self.next_stat_sn();
        let p = Pdu::Reject(pdu::Reject {
            reason: reason as u8,
            data_len: BHS_LEN as u32,
            stat_sn,
            exp_cmd_sn: self.window.exp_cmd_sn(),
            max_cmd_sn: self.window.max_cmd_sn(),
            data_sn: 0,
        });
        self.emit(&p, bhs);
    }

    fn on_bytes(&mut self, inbuf: &mut BytesMut) -> Result<(), Fatal> {
        loop {
            match frame::decode(inbuf, &self.recv_limits) {
                Ok(Some(raw)) => self.on_pdu(raw)?,
                Ok(None) => return Ok(()),
                Err(DecodeError::Fatal(e)) => return Err(e.to_string()),
                Err(DecodeError::Reject { bhs, error }) => {
                    warn!(initiator = %self.n.initiator_name, "rejecting PDU: {error}");
                    self.reject(
                        &bhs,
                        error.reject_reason().unwrap_or(RejectReason::ProtocolError),
                    );
                }
            }
            if self.close {
                return Ok(());
            }
        }
    }

    fn on_pdu(&mut self, raw: RawPdu) -> Result<(), Fatal> {
        let pdu = match Pdu::decode(&raw.bhs) {
            Ok(p) => p,
            Err(e) => {
                warn!(initiator = %self.n.initiator_name, "rejecting PDU: {e}");
                self.reject(
                    &raw.bhs,
                    e.reject_reason().unwrap_or(RejectReason::ProtocolError),
                );
                return Ok(());
            }
        };
        if self.logout.is_some() {
            // After a Logout Request only Data-Out for running commands is still meaningful.
            if !matches!(pdu, Pdu::DataOut(_)) {
                self.reject(&raw.bhs, RejectReason::WaitingForLogout);
            }
            return Ok(());
        }
        match &pdu {
            Pdu::DataOut(d) => return self.on_data_out(d, &raw.data),
            Pdu::SnackRequest(_) => {
                // ErrorRecoveryLevel 0 has no SNACK.
                self.reject(&raw.bhs, RejectReason::ProtocolError);
                return Ok(());
            }
            Pdu::LoginRequest(_) => {
                return Err("Login Request in the full feature phase".into());
            }
            Pdu::NopOut(_)
            | Pdu::ScsiCommand(_)
            | Pdu::TaskMgmtRequest(_)
            | Pdu::TextRequest(_)
            | Pdu::LogoutRequest(_) => {}
            _ => {
                // Target-only opcodes.
                self.reject(&raw.bhs, RejectReason::ProtocolError);
                return Ok(());
            }
        }
        if self.discovery()
            && !matches!(
                pdu,
                Pdu::TextRequest(_) | Pdu::LogoutRequest(_) | Pdu::NopOut(_)
            )
        {
            warn!(initiator = %self.n.initiator_name, "discovery session sent a command other than Text/Logout; rejecting");
            self.reject(&raw.bhs, RejectReason::ProtocolError);
            return Ok(());
        }
        let (immediate, cmd_sn) = match &pdu {
            Pdu::NopOut(p) => (p.immediate, p.cmd_sn),
            Pdu::ScsiCommand(p) => (p.immediate, p.cmd_sn),
            Pdu::TaskMgmtRequest(p) => (p.immediate, p.cmd_sn),
            Pdu::TextRequest(p) => (p.immediate, p.cmd_sn),
            Pdu::LogoutRequest(p) => (p.immediate, p.cmd_sn),
            _ => unreachable!("filtered above"),
        };
        if let Pdu::NopOut(p) = &pdu {
            if p.itt == RESERVED_TAG {
                // An answer to our ping (or a one-way ping): never acknowledged, never ordered.
                if !p.immediate {
                    self.reject(&raw.bhs, RejectReason::ProtocolError);
                }
                return Ok(());
            }
        }
        if immediate {
            if self.window.in_use() >= 2 * self.shared.config.queue_depth {
                self.reject(&raw.bhs, RejectReason::ImmediateCommandReject);
                return Ok(());
            }
            return self.dispatch(raw, pdu, true);
        }
        match self.window.check(cmd_sn) {
            CmdSnCheck::InOrder => {
                self.window.advance();
                self.dispatch(raw, pdu, false)?;
                // Commands that were waiting for this one can go now.
                while let Some(next) = self.held.remove(&self.window.exp_cmd_sn()) {
                    self.window.advance();
                    let p = Pdu::decode(&next.bhs).map_err(|e| e.to_string())?;
                    if let Pdu::ScsiCommand(c) = &p {
                        if self
                            .tasks
                            .get(&c.itt)
                            .is_some_and(|t| t.state == TaskState::Held)
                        {
                            self.deliver(c.itt);
                        } else {
                            // Aborted while it waited for its turn: its CmdSN passes, it does not run.
                            self.window.release();
                        }
                    } else {
                        self.dispatch(next, p, false)?;
                    }
                }
                Ok(())
            }
            CmdSnCheck::Ahead => {
                if self.held.contains_key(&cmd_sn) {
                    debug!(cmd_sn, "duplicate CmdSN dropped");
                    return Ok(());
                }
                if let Pdu::ScsiCommand(c) = &pdu {
                    // Accept its data now; it runs when its turn comes.
                    if !self.new_task(c, &raw)? {
                        return Ok(());
                    }
                }
                self.held.insert(cmd_sn, raw);
                Ok(())
            }
            CmdSnCheck::Drop => {
                debug!(
                    cmd_sn,
                    exp_cmd_sn = self.window.exp_cmd_sn(),
                    max_cmd_sn = self.window.max_cmd_sn(),
                    "CmdSN outside the window; dropped"
                );
                Ok(())
            }
        }
    }

    /// Runs an ordered (or immediate) PDU. Non-SCSI PDUs give their window slot back at once.
    fn dispatch(&mut self, raw: RawPdu, pdu: Pdu, immediate: bool) -> Result<(), Fatal> {
        match pdu {
            Pdu::ScsiCommand(c) => {
                if immediate {
                    self.window.hold();
                }
                if self.new_task(&c, &raw)? {
                    if let Some(t) = self.tasks.get_mut(&c.itt) {
                        t.holds_slot = true;
                    }
                    self.deliver(c.itt);
                } else {
                    self.window.release();
                }
                return Ok(());
            }
            Pdu::NopOut(p) => self.on_nop_out(&p, &raw.data),
            Pdu::TaskMgmtRequest(p) => self.on_tmf(&p),
            Pdu::TextRequest(p) => self.on_text(&p, &raw.data),
            Pdu::LogoutRequest(p) => self.on_logout(&p),
            _ => {}
        }
        if !immediate {
            self.window.release();
        }
        Ok(())
    }

    fn on_nop_out(&mut self, p: &pdu::NopOut, data: &[u8]) {
        let data = &data[..data.len().min(self.send_limits.max_data_len as usize)];
        let stat_sn = self.next_stat_sn();
        let r = Pdu::NopIn(pdu::NopIn {
            data_len: data.len() as u32,
            lun: p.lun,
            itt: p.itt,
            ttt: RESERVED_TAG,
            stat_sn,
            exp_cmd_sn: self.window.exp_cmd_sn(),
            max_cmd_sn: self.window.max_cmd_sn(),
        });
        self.emit(&r, data);
    }

    /// Registers a SCSI command and takes its immediate data. Returns false if it was answered or refused.
    fn new_task(&mut self, c: &pdu::ScsiCommand, raw: &RawPdu) -> Result<bool, Fatal> {
        self.refresh_luns();
        if self.tasks.contains_key(&c.itt) {
            warn!(
                itt = c.itt,
                "command reuses the tag of a running task; rejecting"
            );
            self.reject(&raw.bhs, RejectReason::TaskInProgress);
            return Ok(false);
        }
        let mut cdb = c.cdb.to_vec();
        if !raw.ahs.is_empty() {
            // Extended CDB AHS (type 1): the CDB continues past the BHS's 16 bytes.
            let ahs = &raw.ahs;
            let len = u16::from_be_bytes([ahs[0], ahs[1]]) as usize;
            if ahs[2] == 1 && len >= 1 && 3 + len <= ahs.len() {
                cdb.extend_from_slice(&ahs[4..3 + len]);
            }
        }
        let imm = raw.data.len() as u32;
        if imm > 0
            && (!c.write
                || !self.n.immediate_data
                || imm > self.n.first_burst_length
                || imm > c.expected_len)
        {
            warn!(
                itt = c.itt,
                len = imm,
                edtl = c.expected_len,
                "immediate data not allowed here (W bit, ImmediateData, FirstBurstLength or EDTL); rejecting"
            );
            self.reject(&raw.bhs, RejectReason::ProtocolError);
            return Ok(false);
        }
        if !c.final_ && (!c.write || self.n.initial_r2t) {
            warn!(
                itt = c.itt,
                "unsolicited data announced but not allowed; rejecting"
            );
            self.reject(&raw.bhs, RejectReason::ProtocolError);
            return Ok(false);
        }
        let lu = self.lu(c.lun);
        let need = if c.write {
            lu.as_ref()
                .and_then(|lu| lu.data_out_len(&cdb).ok())
                .unwrap_or(0)
        } else {
            0
        };
        let keep = need.min(c.expected_len).min(MAX_TASK_DATA);
        let mut data = Vec::with_capacity(keep as usize);
        let store = imm.min(keep) as usize;
        data.extend_from_slice(&raw.data[..store]);
        let unsolicited_end = if c.write {
            c.expected_len.min(self.n.first_burst_length)
        } else {
            0
        };
        self.tasks.insert(
            c.itt,
            Task {
                itt: c.itt,
                lun: c.lun,
                cdb,
                read: c.read,
                edtl: if c.read || c.write { c.expected_len } else { 0 },
                state: TaskState::Held,
                aborted: false,
                lu,
                data,
                keep,
                received: imm,
                unsolicited_open: c.write && !c.final_ && imm < unsolicited_end,
                unsolicited_end,
                unsolicited_next_data_sn: 0,
                r2t: None,
                next_r2t_sn: 0,
                holds_slot: false,
                data_sn_error: false,
                arrived: self
                    .lun_map
                    .stats
                    .contains_key(&lun_number(c.lun))
                    .then(Instant::now),
            },
        );
        Ok(true)
    }

    /// The command's CmdSN turn has come: collect the rest of its data or run it.
    fn deliver(&mut self, itt: u32) {
        if let Some(t) = self.tasks.get_mut(&itt) {
            t.state = TaskState::Collecting;
            t.holds_slot = true;
        }
        self.progress(itt);
    }

    /// Moves a delivered task on: an R2T if it needs data, execution when it has it all.
    fn progress(&mut self, itt: u32) {
        let max_burst = self.n.max_burst_length;
        let Some(t) = self.tasks.get_mut(&itt) else {
            return;
        };
        if t.state != TaskState::Collecting {
            return;
        }
        if t.received < t.edtl && !t.read {
            if t.unsolicited_open || t.r2t.is_some() {
                return;
            }
            let ttt = alloc_ttt(&mut self.next_ttt);
            let len = (t.edtl - t.received).min(max_burst);
            let r2t_sn = t.next_r2t_sn;
            t.next_r2t_sn += 1;
            t.r2t = Some(R2tSeq {
                ttt,
                offset: t.received,
                len,
                next_data_sn: 0,
            });
            let (lun, offset) = (t.lun, t.received);
            let p = Pdu::R2t(pdu::R2t {
                lun,
                itt,
                ttt,
                stat_sn: self.stat_sn,
                exp_cmd_sn: self.window.exp_cmd_sn(),
                max_cmd_sn: self.window.max_cmd_sn(),
                r2t_sn,
                buffer_offset: offset,
                desired_len: len,
            });
            self.emit(&p, &[]);
            return;
        }
        self.execute(itt);
    }

    fn execute(&mut self, itt: u32) {
        let Some(t) = self.tasks.get_mut(&itt) else {
            return;
        };
        t.state = TaskState::Executing;
        if t.data_sn_error {
            // RFC 7143 section 7.4 leaves recovery to ERL >= 1; failing the one command keeps the session.
            let outcome = Outcome::check_condition(Sense::data_phase_error());
            self.on_completion(Completion { itt, outcome });
            return;
        }
        // A command whose Data-Out has a fixed structure (WRITE SAME, COMPARE AND WRITE) can not be taken apart
        // from a Data-Out of another length than the CDB implies.
        let edtl = if t.read { 0 } else { t.edtl };
        if let Some(Err(sense)) =
            t.lu.as_ref()
                .map(|lu| lu.check_expected_length(&t.cdb, edtl))
        {
            self.on_completion(Completion {
                itt,
                outcome: Outcome::check_condition(sense),
            });
            return;
        }
        if let Some(lu) = t.lu.clone().filter(|lu| lu.submits(&t.cdb)) {
            // A write the device completes by itself (a replicated volume waits for its peer): no thread waits.
            let tx = self.done_tx.clone();
            let (cdb, data) = (t.cdb.clone(), std::mem::take(&mut t.data));
            let req = Request {
                nexus: &self.nexus,
                cdb: &cdb,
                data_out: &data,
                luns: &self.lun_map.numbers,
            };
            lu.submit(
                &req,
                Box::new(move |outcome| {
                    let _ = tx.send(Completion { itt, outcome });
                }),
            );
            return;
        }
        let cdb = t.cdb.clone();
        let data = std::mem::take(&mut t.data);
        let lu = t.lu.clone();
        let (nexus, luns) = (self.nexus.clone(), self.lun_map.numbers.clone());
        let run = move || {
            let req = Request {
                nexus: &nexus,
                cdb: &cdb,
                data_out: &data,
                luns: &luns,
            };
            match &lu {
                Some(lu) => lu.execute(&req),
                // No such LUN: answered from the emulation alone.
                None => twinsan_scsi::execute_no_lun(&req),
            }
        };
        let quick = t.lu.as_ref().is_none_or(|lu| lu.is_quick(&t.cdb));
        if quick {
            // Page-cache sized I/O and commands without I/O: cheaper here than two thread hand-offs.
            let outcome = run();
            self.on_completion(Completion { itt, outcome });
        } else {
            let tx = self.done_tx.clone();
            tokio::task::spawn_blocking(move || {
                let _ = tx.send(Completion {
                    itt,
                    outcome: run(),
                });
            });
        }
    }

    fn on_data_out(&mut self, d: &pdu::DataOut, data: &[u8]) -> Result<(), Fatal> {
        let Some(t) = self.tasks.get_mut(&d.itt) else {
            // The command may have been aborted or answered early; its data is no longer wanted.
            debug!(itt = d.itt, "Data-Out for no running command; discarded");
            return Ok(());
        };
        let len = data.len() as u32;
        if d.ttt == RESERVED_TAG {
            if !t.unsolicited_open {
                return Err(format!(
                    "unsolicited Data-Out for ITT {:#x} that allows none",
                    d.itt
                ));
            }
            if d.data_sn != t.unsolicited_next_data_sn {
                warn!(
                    itt = d.itt,
                    got = d.data_sn,
                    expected = t.unsolicited_next_data_sn,
                    "Data-Out DataSN out of sequence; the command will fail"
                );
                t.data_sn_error = true;
            }
            if d.buffer_offset != t.received || t.received.saturating_add(len) > t.unsolicited_end {
                return Err(format!(
                    "unsolicited Data-Out at offset {} length {} outside the first burst (ITT {:#x})",
                    d.buffer_offset, len, d.itt
                ));
            }
            t.unsolicited_next_data_sn += 1;
            if d.final_ || t.received + len == t.unsolicited_end {
                t.unsolicited_open = false;
            }
        } else {
            let Some(r) = t.r2t.as_mut().filter(|r| r.ttt == d.ttt) else {
                return Err(format!(
                    "Data-Out with unknown Target Transfer Tag {:#x} (ITT {:#x})",
                    d.ttt, d.itt
                ));
            };
            if d.data_sn != r.next_data_sn {
                warn!(
                    itt = d.itt,
                    got = d.data_sn,
                    expected = r.next_data_sn,
                    "Data-Out DataSN out of sequence; the command will fail"
                );
                t.data_sn_error = true;
            }
            if d.buffer_offset != t.received
                || d.buffer_offset.saturating_add(len) > r.offset + r.len
            {
                return Err(format!(
                    "Data-Out at offset {} length {} outside the R2T's {}+{} (ITT {:#x})",
                    d.buffer_offset, len, r.offset, r.len, d.itt
                ));
            }
            r.next_data_sn += 1;
            let end = r.offset + r.len;
            if d.buffer_offset + len == end {
                t.r2t = None;
            } else if d.final_ {
                return Err(format!(
                    "Data-Out sequence ended before the R2T's length (ITT {:#x})",
                    d.itt
                ));
            }
        }
        // Store what the command needs; count the rest.
        let start = t.received;
        if start < t.keep {
            let n = (t.keep - start).min(len) as usize;
            t.data.extend_from_slice(&data[..n]);
        }
        t.received += len;
        let itt = d.itt;
        self.progress(itt);
        Ok(())
    }

    fn on_completion(&mut self, c: Completion) {
        let Some(t) = self.tasks.remove(&c.itt) else {
            return;
        };
        if t.holds_slot {
            self.window.release();
        }
        if t.aborted {
            self.task_quiesced(c.itt);
            return;
        }
        self.respond(t, c.outcome);
        self.maybe_finish_logout();
    }

    /// Sends Data-In and status for a finished command.
    fn respond(&mut self, t: Task, outcome: Outcome) {
        let Outcome {
            status,
            data_in,
            sense,
        } = outcome;
        // Data-In PDUs take slices of the read buffer without copying it.
        let data_in = Bytes::from(data_in);
        let status = status as u8;
        let mut overflow = false;
        let mut underflow = false;
        let mut residual = 0u32;
        let mut send = 0usize;
        if t.read {
            let asked =
                t.lu.as_ref()
                    .and_then(|lu| lu.data_in_len(&t.cdb).ok())
                    .unwrap_or(data_in.len() as u32)
                    .max(data_in.len() as u32);
            send = data_in.len().min(t.edtl as usize);
            if asked > t.edtl {
                overflow = true;
                residual = asked - t.edtl;
            } else if (send as u32) < t.edtl {
                underflow = true;
                residual = t.edtl - send as u32;
            }
        } else if t.edtl > 0 || t.received > 0 {
            let need =
                t.lu.as_ref()
                    .and_then(|lu| lu.data_out_len(&t.cdb).ok())
                    .unwrap_or(0);
            if need > t.edtl {
                overflow = true;
                residual = need - t.edtl;
            } else if need < t.edtl {
                underflow = true;
                residual = t.edtl - need;
            }
        } else if let Some(need) =
            t.lu.as_ref()
                .and_then(|lu| lu.data_out_len(&t.cdb).ok())
                .filter(|&n| n > 0)
        {
            // A write CDB sent with no W bit and EDTL 0: nothing was transferred.
            overflow = true;
            residual = need;
        }
        if let Some(arrived) = t.arrived {
            if let Some(stats) = self.lun_map.stats.get(&lun_number(t.lun)) {
                let op = OpKind::of(t.cdb.first().copied().unwrap_or(0));
                stats.record(op, send as u64, u64::from(t.received), arrived.elapsed());
            }
        }
        let good_collapsed = sense.is_none() && send > 0;
        let seg = self.send_limits.max_data_len as usize;
        let burst = self.n.max_burst_length as usize;
        let mut off = 0usize;
        let mut data_sn = 0u32;
        while off < send {
            let end = (off + seg).min(send).min((off / burst + 1) * burst);
            let last = end == send;
            let final_ = last || end.is_multiple_of(burst);
            let with_status = last && good_collapsed;
            let stat_sn = if with_status { self.next_stat_sn() } else { 0 };
            let p = Pdu::DataIn(pdu::DataIn {
                final_,
                ack: false,
                overflow: with_status && overflow,
                underflow: with_status && underflow,
                status_present: with_status,
                status: if with_status { status } else { 0 },
                data_len: (end - off) as u32,
                lun: t.lun,
                itt: t.itt,
                ttt: RESERVED_TAG,
                stat_sn,
                exp_cmd_sn: self.window.exp_cmd_sn(),
                max_cmd_sn: self.window.max_cmd_sn(),
                data_sn,
                buffer_offset: off as u32,
                residual: if with_status { residual } else { 0 },
            });
            self.out
                .push_shared(&p.encode(), data_in.slice(off..end), &self.send_limits);
            data_sn += 1;
            off = end;
        }
        if good_collapsed {
            return;
        }
        let sense_data = sense.map(|s| {
            let b = s.to_bytes();
            let mut v = Vec::with_capacity(2 + b.len());
            v.extend_from_slice(&(b.len() as u16).to_be_bytes());
            v.extend_from_slice(&b);
            v
        });
        let data = sense_data.unwrap_or_default();
        let stat_sn = self.next_stat_sn();
        let p = Pdu::ScsiResponse(pdu::ScsiResponse {
            bidi_overflow: false,
            bidi_underflow: false,
            overflow,
            underflow,
            response: 0,
            status,
            data_len: data.len() as u32,
            itt: t.itt,
            snack_tag: 0,
            stat_sn,
            exp_cmd_sn: self.window.exp_cmd_sn(),
            max_cmd_sn: self.window.max_cmd_sn(),
            exp_data_sn: data_sn,
            bidi_residual: 0,
            residual,
        });
        self.emit(&p, &data);
    }

    /// Aborts a task: removed at once unless it is running, in which case its result will be dropped.
    /// Returns true if the abort has to wait for the task to stop running.
    fn abort(&mut self, itt: u32) -> bool {
        let Some(t) = self.tasks.get_mut(&itt) else {
            return false;
        };
        if t.state == TaskState::Executing {
            t.aborted = true;
            return true;
        }
        let t = self.tasks.remove(&itt).expect("present");
        if t.holds_slot {
            self.window.release();
        }
        // A held command keeps its place in `held`: its CmdSN still has to pass for later ones to flow.
        false
    }

    fn task_quiesced(&mut self, itt: u32) {
        let mut ready = Vec::new();
        for (i, w) in self.tmf_waits.iter_mut().enumerate() {
            w.waiting.remove(&itt);
            if w.waiting.is_empty() {
                ready.push(i);
            }
        }
        for i in ready.into_iter().rev() {
            let w = self.tmf_waits.remove(i);
            self.tmf_response(w.itt, w.response);
            if w.close_after {
                self.close = true;
            }
        }
        self.maybe_finish_logout();
    }

    fn tmf_response(&mut self, itt: u32, response: u8) {
        let stat_sn = self.next_stat_sn();
        let p = Pdu::TaskMgmtResponse(pdu::TaskMgmtResponse {
            response,
            itt,
            stat_sn,
            exp_cmd_sn: self.window.exp_cmd_sn(),
            max_cmd_sn: self.window.max_cmd_sn(),
        });
        self.emit(&p, &[]);
    }

    fn on_tmf(&mut self, p: &pdu::TaskMgmtRequest) {
        let lun = lun_number(p.lun);
        self.refresh_luns();
        let lun_exists = self.target.is_some() && self.lun_map.luns.contains_key(&lun);
        let mut victims: Vec<u32> = Vec::new();
        let mut close_after = false;
        let response = match p.function {
            tmf::ABORT_TASK => {
                if self.tasks.contains_key(&p.referenced_tag) && p.referenced_tag != p.itt {
                    victims.push(p.referenced_tag);
                    tmf::COMPLETE
                } else if sn_le(self.window.exp_cmd_sn(), p.ref_cmd_sn)
                    && sn_lt(p.ref_cmd_sn, p.cmd_sn)
                {
                    // The command was sent but has not arrived (RFC 7143 section 11.5.1): it counts as aborted.
                    tmf::COMPLETE
                } else {
                    tmf::TASK_DOES_NOT_EXIST
                }
            }
            tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET | tmf::LOGICAL_UNIT_RESET => {
                if !lun_exists {
                    tmf::LUN_DOES_NOT_EXIST
                } else {
                    victims.extend(
                        self.tasks
                            .values()
                            .filter(|t| lun_number(t.lun) == lun)
                            .map(|t| t.itt),
                    );
                    if p.function == tmf::LOGICAL_UNIT_RESET {
                        if let Some(lu) = self.lu(p.lun) {
                            lu.reset(&self.nexus);
                        }
                    }
                    tmf::COMPLETE
                }
            }
            tmf::TARGET_WARM_RESET | tmf::TARGET_COLD_RESET => {
                victims.extend(self.tasks.keys().copied());
                for lu in self.lun_map.luns.values() {
                    lu.reset(&self.nexus);
                }
                close_after = p.function == tmf::TARGET_COLD_RESET;
                tmf::COMPLETE
            }
            tmf::CLEAR_ACA => tmf::NOT_SUPPORTED,
            tmf::TASK_REASSIGN => tmf::REASSIGN_NOT_SUPPORTED,
            _ => tmf::REJECTED,
        };
        info!(
            function = p.function,
            lun,
            referenced = p.referenced_tag,
            response,
            tasks = victims.len(),
            "task management"
        );
        let mut waiting = HashSet::new();
        for itt in victims {
            if self.abort(itt) {
                waiting.insert(itt);
            }
        }
        if waiting.is_empty() {
            self.tmf_response(p.itt, response);
            if close_after {
                self.close = true;
            }
        } else {
            self.tmf_waits.push(TmfWait {
                itt: p.itt,
                response,
                waiting,
                close_after,
            });
        }
    }

    fn on_text(&mut self, p: &pdu::TextRequest, data: &[u8]) {
        let header = Pdu::TextRequest(p.clone()).encode();
        if p.ttt == RESERVED_TAG {
            // A new request resets whatever exchange was in progress (RFC 7143 section 11.10.4).
            self.text = None;
            self.text_request.clear();
            self.text_request_ttt = None;
        } else if self.text_request_ttt == Some((p.itt, p.ttt)) {
            self.text_request_ttt = None;
        } else {
            match self.text.take() {
                // The initiator asks for the next part of a long response.
                Some(c) if c.ttt == p.ttt && c.itt == p.itt => self.send_text(p.itt, p.lun, c.rest),
                _ => {
                    warn!(
                        initiator = %self.n.initiator_name,
                        itt = p.itt,
                        ttt = p.ttt,
                        "Text Request with a Target Transfer Tag of no exchange in progress; rejecting"
                    );
                    self.reject(&header, RejectReason::InvalidPduField);
                }
            }
            return;
        }
        if self.text_request.len() + data.len() > MAX_TEXT_REQUEST {
            warn!(initiator = %self.n.initiator_name, "Text Request longer than {MAX_TEXT_REQUEST} bytes; rejecting");
            self.text_request.clear();
            self.reject(&header, RejectReason::ProtocolError);
            return;
        }
        self.text_request.extend_from_slice(data);
        if p.cont {
            // More request text follows: answer with an empty response and a TTT to continue on.
            let ttt = alloc_ttt(&mut self.next_ttt);
            self.text_request_ttt = Some((p.itt, ttt));
            let stat_sn = self.next_stat_sn();
            let r = Pdu::TextResponse(pdu::TextResponse {
                final_: false,
                cont: false,
                data_len: 0,
                lun: p.lun,
                itt: p.itt,
                ttt,
                stat_sn,
                exp_cmd_sn: self.window.exp_cmd_sn(),
                max_cmd_sn: self.window.max_cmd_sn(),
            });
            self.emit(&r, &[]);
            return;
        }
        let req = std::mem::take(&mut self.text_request);
        let mut reply = TextPairs::default();
        match TextPairs::parse(&req) {
            Ok(pairs) => {
                for (k, v) in &pairs.0 {
                    if k == "SendTargets" {
                        self.send_targets(v, &mut reply);
                    } else {
                        reply.push(k.clone(), "NotUnderstood");
                    }
                }
            }
            Err(e) => {
                warn!(initiator = %self.n.initiator_name, "malformed Text Request: {e}; rejecting");
                self.reject(&header, RejectReason::ProtocolError);
                return;
            }
        }
        let mut body = reply.encode();
        body.truncate(MAX_TEXT_RESPONSE);
        self.send_text(p.itt, p.lun, body);
    }

    fn send_text(&mut self, itt: u32, lun: u64, mut body: Vec<u8>) {
        let max = self.send_limits.max_data_len as usize;
        let rest = if body.len() > max {
            body.split_off(max)
        } else {
            Vec::new()
        };
        let more = !rest.is_empty();
        let ttt = if more {
            let t = alloc_ttt(&mut self.next_ttt);
            self.text = Some(TextContinuation { itt, ttt: t, rest });
            t
        } else {
            RESERVED_TAG
        };
        let stat_sn = self.next_stat_sn();
        let r = Pdu::TextResponse(pdu::TextResponse {
            final_: !more,
            cont: more,
            data_len: body.len() as u32,
            lun,
            itt,
            ttt,
            stat_sn,
            exp_cmd_sn: self.window.exp_cmd_sn(),
            max_cmd_sn: self.window.max_cmd_sn(),
        });
        self.emit(&r, &body);
    }

    /// SendTargets=All (discovery) or SendTargets= (this session's target): each target the initiator may use,
    /// with the portal the connection arrived on.
    fn send_targets(&self, which: &str, reply: &mut TextPairs) {
        let tpgt = self.shared.config.limits.portal_group_tag;
        let addr = match self.local {
            SocketAddr::V4(a) => format!("{}:{},{}", a.ip(), a.port(), tpgt),
            SocketAddr::V6(a) => format!("[{}]:{},{}", a.ip(), a.port(), tpgt),
        };
        for (i, t) in self.shared.config.targets.iter().enumerate() {
            let wanted = match which {
                "All" => self.discovery() || Some(i) == self.target,
                "" => Some(i) == self.target,
                name => name == t.name && (self.discovery() || Some(i) == self.target),
            };
            if wanted && self.shared.allows(i, &self.n.initiator_name) {
                reply.push("TargetName", t.name.clone());
                reply.push("TargetAddress", addr.clone());
            }
        }
    }

    fn on_logout(&mut self, p: &pdu::LogoutRequest) {
        let response = match p.reason {
            0 => 0,
            1 if p.cid == self.cid => 0,
            1 => 1,
            _ => 2,
        };
        if response != 0 {
            self.logout_response(p.itt, response);
            return;
        }
        info!(initiator = %self.n.initiator_name, reason = p.reason, "logout requested");
        self.logout = Some((p.itt, response));
        // Commands not yet running end now; running ones finish first.
        let idle: Vec<u32> = self
            .tasks
            .values()
            .filter(|t| t.state != TaskState::Executing)
            .map(|t| t.itt)
            .collect();
        for itt in idle {
            self.abort(itt);
        }
        self.held.clear();
        self.maybe_finish_logout();
    }

    fn maybe_finish_logout(&mut self) {
        if let Some((itt, response)) = self.logout {
            if self.tasks.is_empty() && !self.close {
                self.logout_response(itt, response);
                self.close = true;
            }
        }
    }

    fn logout_response(&mut self, itt: u32, response: u8) {
        let stat_sn = self.next_stat_sn();
        let r = Pdu::LogoutResponse(pdu::LogoutResponse {
            response,
            itt,
            stat_sn,
            exp_cmd_sn: self.window.exp_cmd_sn(),
            max_cmd_sn: self.window.max_cmd_sn(),
            time2wait: 0,
            time2retain: 0,
        });
        self.emit(&r, &[]);
    }

    /// Once a second: ping an idle initiator, drop one that does not answer.
    fn on_tick(&mut self) {
        let cfg = &self.shared.config;
        if let Some((_, sent)) = self.ping {
            if sent.elapsed() > cfg.nop_timeout {
                warn!(initiator = %self.n.initiator_name, "initiator did not answer a NOP-In ping; closing connection");
                self.close = true;
            }
            return;
        }
        if self.last_rx.elapsed() >= cfg.nop_interval {
            let ttt = alloc_ttt(&mut self.next_ttt);
            self.ping = Some((ttt, Instant::now()));
            let p = Pdu::NopIn(pdu::NopIn {
                data_len: 0,
                lun: 0,
                itt: RESERVED_TAG,
                ttt,
                stat_sn: self.stat_sn,
                exp_cmd_sn: self.window.exp_cmd_sn(),
                max_cmd_sn: self.window.max_cmd_sn(),
            });
            self.emit(&p, &[]);
        }
    }
}
