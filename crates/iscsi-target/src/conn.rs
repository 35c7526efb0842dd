//! One iSCSI connection: the login phase, then the full feature phase, as thin drivers of the protocol cores.
//!
//! A connection is one tokio task that owns all of its state, so there is no locking on the data path. Every
//! protocol decision is made by the sans-I/O cores of `twinsan-iscsi` — [`Login`] during login, [`Session`]
//! after it (CmdSN window, StatSN, R2T, Data-In, task management, NOP ping, Text, Logout, Rejects). This file
//! only moves bytes and carries out their actions: it reads PDUs from the socket, runs SCSI commands on the
//! logical units (inline, on the blocking pool, or on a device that completes by itself), records the metrics,
//! and writes the output straight to the socket when it can, waiting for writability only when it must. Its
//! session is the connection's own: MaxConnections is 1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use twinsan_iscsi::error::LoginStatus;
use twinsan_iscsi::frame::{self, DecodeError, FrameLimits, RawPdu};
use twinsan_iscsi::login::{ChapPolicy, Login, LoginEnv, LoginStep, Negotiated, SessionType};
use twinsan_iscsi::pdu::{self, Pdu};
use twinsan_iscsi::session::{
    Action, CloseReason, Command, Completion, Level, ResetScope, Session, SessionEnv, SessionParams,
};
use twinsan_iscsi::text::TextPairs;
use twinsan_scsi::{Decoded, LogicalUnit, Nexus, Outcome, Request, Sense};

use crate::output::Output;
use crate::server::{LunMap, SessionKey, Shared};
use crate::stats::{LoginFailure, OpKind, TargetStats};

/// Largest data buffer one command may hold (reads and writes); bigger transfers are refused by the SCSI layer's
/// block limits before any data moves.
const MAX_TASK_DATA: u32 = 16 * 1024 * 1024;
/// Output waiting for the socket beyond which the connection stops reading new requests.
const MAX_PENDING_OUTPUT: usize = 16 * 1024 * 1024;

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

/// A command that ran, back from the blocking pool or the device.
struct Done {
    itt: u32,
    outcome: Outcome,
}

/// A command's Data-In buffer, given back to the SCSI layer's free list when the last PDU over it is written.
struct DataIn(Vec<u8>);

impl AsRef<[u8]> for DataIn {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for DataIn {
    fn drop(&mut self) {
        twinsan_scsi::recycle_data_in(std::mem::take(&mut self.0));
    }
}

/// The session's outcome of a SCSI command.
fn completion(outcome: Outcome) -> Completion {
    let Outcome {
        status,
        data_in,
        sense,
    } = outcome;
    Completion {
        status: status as u8,
        sense: sense.map(|s| s.to_bytes()),
        // Data-In PDUs take slices of the read buffer without copying it; a large one is reused for a later READ
        // when the last of them is written (a small one is not worth the owner's allocation).
        data_in: if data_in.capacity() >= twinsan_scsi::POOLED_DATA_IN_BYTES {
            Bytes::from_owner(DataIn(data_in))
        } else {
            Bytes::from(data_in)
        },
    }
}

/// The I/O side of the full feature phase: the socket's output, the logical units, the metrics. Every protocol
/// decision is the [`Session`]'s; this carries out its actions.
struct Driver {
    shared: Arc<Shared>,
    initiator: String,
    target: Option<usize>,
    nexus: Arc<Nexus>,
    /// The target's LUNs as of `lun_generation`; refreshed before each batch of PDUs when the server's changed.
    lun_map: Arc<LunMap>,
    lun_generation: u64,
    local: SocketAddr,
    discovery: bool,
    out: Output,
    send_limits: FrameLimits,
    recv_limits: FrameLimits,
    done_tx: mpsc::UnboundedSender<Done>,
}

impl SessionEnv for Driver {
    type Decoded = Decoded;

    fn lun_number(&self, lun: u64) -> u64 {
        lun_number(lun)
    }

    fn lun_exists(&self, lun: u64) -> bool {
        self.target.is_some() && self.lun_map.luns.contains_key(&lun_number(lun))
    }

    /// The one decode of a command's CDB.
    fn decode(&self, _lun: u64, cdb: &[u8]) -> Decoded {
        Decoded::new(cdb)
    }

    fn data_out_len(&self, lun: u64, cmd: &Decoded) -> u32 {
        self.lu(lun)
            .and_then(|lu| lu.data_out_len(cmd).ok())
            .unwrap_or(0)
    }

    fn data_in_len(&self, lun: u64, cmd: &Decoded) -> Option<u32> {
        self.lu(lun).and_then(|lu| lu.data_in_len(cmd).ok())
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
                "All" => self.discovery || Some(i) == self.target,
                "" => Some(i) == self.target,
                name => name == t.name && (self.discovery || Some(i) == self.target),
            };
            if wanted && self.shared.allows(i, &self.initiator) {
                reply.push("TargetName", t.name.clone());
                reply.push("TargetAddress", addr.clone());
            }
        }
    }
}

impl Driver {
    fn lu(&self, lun: u64) -> Option<&Arc<LogicalUnit>> {
        self.target?;
        self.lun_map.luns.get(&lun_number(lun))
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

    /// Takes the PDUs whole in `inbuf` to the session.
    fn on_bytes(&mut self, session: &mut Session<Decoded>, inbuf: &mut BytesMut, now: Instant) {
        self.refresh_luns();
        while !session.is_closed() {
            match frame::decode(inbuf, &self.recv_limits) {
                Ok(Some(raw)) => session.on_pdu(raw, now, &*self),
                Ok(None) => return,
                Err(e) => session.on_frame_error(e, now),
            }
            self.run(session);
        }
    }

    /// Carries out the session's actions, in order, until it has none.
    fn run(&mut self, session: &mut Session<Decoded>) {
        while let Some(action) = session.next_action() {
            match action {
                Action::Send(p, data) => self.out.push_shared(&p.encode(), data, &self.send_limits),
                Action::Execute(cmd) => self.execute(session, cmd),
                Action::DataPhaseError(itt) => {
                    let outcome = Outcome::check_condition(Sense::data_phase_error());
                    session.complete(itt, completion(outcome), &*self);
                }
                Action::Reset(ResetScope::Lun(lun)) => {
                    if let Some(lu) = self.lu(lun) {
                        lu.reset(&self.nexus);
                    }
                }
                Action::Reset(ResetScope::Target) => {
                    for lu in self.lun_map.luns.values() {
                        lu.reset(&self.nexus);
                    }
                }
                Action::Finished(f) => {
                    if let Some(stats) = self.lun_map.stats.get(&lun_number(f.lun)) {
                        stats.record(
                            OpKind::of(f.opcode),
                            f.data_in,
                            f.data_out,
                            f.arrived.elapsed(),
                        );
                    }
                }
                Action::Log(Level::Debug, line) => debug!(initiator = %self.initiator, "{line}"),
                Action::Log(Level::Info, line) => info!(initiator = %self.initiator, "{line}"),
                Action::Log(Level::Warn, line) => warn!(initiator = %self.initiator, "{line}"),
                Action::Close(CloseReason::Logout) => {
                    debug!(initiator = %self.initiator, "logout complete; closing connection")
                }
                Action::Close(CloseReason::ColdReset) => {
                    info!(initiator = %self.initiator, "target cold reset answered; closing connection")
                }
                Action::Close(why) => {
                    warn!(initiator = %self.initiator, "closing connection: {why}")
                }
            }
        }
    }

    /// Runs a command on its logical unit: a device that completes by itself, here for quick commands, or on
    /// the blocking pool.
    fn execute(&self, session: &mut Session<Decoded>, cmd: Command<Decoded>) {
        let itt = cmd.itt;
        let lu = self.lu(cmd.lun);
        let cdb = cmd.cdb.as_slice();
        let decoded = &cmd.decoded;
        // A command whose Data-Out has a fixed structure (WRITE SAME, COMPARE AND WRITE) can not be taken apart
        // from a Data-Out of another length than the CDB implies.
        if let Some(Err(sense)) =
            lu.map(|lu| lu.check_expected_length(decoded, cmd.data_out_expected()))
        {
            session.complete(itt, completion(Outcome::check_condition(sense)), self);
            return;
        }
        if let Some(lu) = lu.filter(|lu| lu.submits(decoded)) {
            // A write the device completes by itself (a replicated volume waits for its peer): no thread waits.
            let tx = self.done_tx.clone();
            let req = Request {
                nexus: &self.nexus,
                cdb,
                data_out: &cmd.data,
                luns: &self.lun_map.numbers,
            };
            let submitted = lu.submit(
                &req,
                decoded,
                &cmd.data,
                Box::new(move |outcome| {
                    let _ = tx.send(Done { itt, outcome });
                }),
            );
            if submitted.is_ok() {
                return;
            }
            // Its blocks wait for a COMPARE AND WRITE in progress: waited for on the blocking pool, below, never
            // on this task.
        }
        if lu.is_none_or(|lu| lu.is_quick(decoded)) {
            // Page-cache sized I/O and commands without I/O: cheaper here than two thread hand-offs.
            let req = Request {
                nexus: &self.nexus,
                cdb,
                data_out: &cmd.data,
                luns: &self.lun_map.numbers,
            };
            let outcome = match lu {
                Some(lu) => lu.execute(&req, decoded),
                // No such LUN: answered from the emulation alone.
                None => twinsan_scsi::execute_no_lun(&req, decoded),
            };
            session.complete(itt, completion(outcome), self);
            return;
        }
        let lu = lu.cloned();
        let (nexus, luns) = (self.nexus.clone(), self.lun_map.numbers.clone());
        let tx = self.done_tx.clone();
        tokio::task::spawn_blocking(move || {
            let req = Request {
                nexus: &nexus,
                cdb: cmd.cdb.as_slice(),
                data_out: &cmd.data,
                luns: &luns,
            };
            let outcome = match &lu {
                Some(lu) => lu.execute(&req, &cmd.decoded),
                None => twinsan_scsi::execute_no_lun(&req, &cmd.decoded),
            };
            let _ = tx.send(Done { itt, outcome });
        });
    }
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
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
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
    let cfg = &shared.config;
    let mut params = SessionParams::new(
        &li.n,
        li.cid,
        cfg.queue_depth,
        cfg.nop_interval,
        cfg.nop_timeout,
    );
    params.max_task_data = MAX_TASK_DATA;
    let mut session = Session::new(params, li.exp_cmd_sn, li.stat_sn, Instant::now());
    let mut d = Driver {
        send_limits: limits(li.n.initiator_mrdsl),
        recv_limits: limits(li.n.target_mrdsl),
        shared: shared.clone(),
        initiator: li.n.initiator_name.clone(),
        discovery: li.n.session_type == SessionType::Discovery,
        target,
        nexus,
        lun_map,
        lun_generation,
        local,
        out: Output::default(),
        done_tx,
    };
    let tsih = li.tsih;
    let mut shutdown = shutdown;
    // The session's one timer (NOP ping and its timeout); re-armed only when its deadline comes earlier, since an
    // early wake-up costs nothing.
    let mut armed = session.deadline();
    let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(armed));
    tokio::pin!(timer);

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
                session.complete(c.itt, completion(c.outcome), &d);
                d.run(&mut session);
                while let Ok(c) = done_rx.try_recv() {
                    session.complete(c.itt, completion(c.outcome), &d);
                    d.run(&mut session);
                }
            }
            w = wr.writable(), if !d.out.is_empty() => {
                if let Err(e) = w {
                    debug!(tsih, error = %e, "socket not writable");
                    break;
                }
            }
            // Stop taking requests while the initiator does not take our responses (backpressure).
            r = read_some(&mut rd, &mut inbuf), if d.out.len() < MAX_PENDING_OUTPUT => {
                match r {
                    Ok(0) => {
                        debug!(tsih, "initiator closed the connection");
                        break;
                    }
                    Ok(_) => d.on_bytes(&mut session, &mut inbuf, Instant::now()),
                    Err(e) => {
                        debug!(tsih, error = %e, "read failed");
                        break;
                    }
                }
            }
            _ = &mut timer => {
                session.on_timer(Instant::now());
                d.run(&mut session);
                armed = session.deadline();
                timer.as_mut().reset(tokio::time::Instant::from_std(armed));
            }
        }
        let deadline = session.deadline();
        if deadline < armed {
            armed = deadline;
            timer.as_mut().reset(tokio::time::Instant::from_std(armed));
        }
        if let Err(e) = d.out.write_now(&wr) {
            debug!(tsih, error = %e, "write failed");
            break;
        }
        if session.is_closed() {
            break;
        }
    }
    // The last responses (a Logout Response, a task management answer) still go out, within reason.
    if !d.out.is_empty() {
        let rest = d.out.take_all();
        let _ = tokio::time::timeout(Duration::from_secs(5), wr.write_all(&rest)).await;
    }
    let _ = wr.shutdown().await;
    // Commands still running finish on the blocking pool; their results are dropped with the channel.
    if let Some(k) = session_key {
        shared.unregister(&k, tsih);
    }
    if let Some(t) = d.target {
        // I_T nexus loss: the logical units drop what they kept for it, so memory follows the live sessions.
        shared.nexus_down(t, &d.nexus);
        for lu in shared.lun_map(t).luns.values() {
            lu.nexus_gone(&d.nexus);
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
