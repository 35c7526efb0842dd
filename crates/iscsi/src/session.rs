//! The full feature phase of one connection (RFC 7143, ErrorRecoveryLevel 0, MaxConnections 1), with no I/O.
//!
//! [`Session`] takes what happens on a connection — a PDU off the wire (or a framing error), a SCSI command
//! finishing, time passing — and answers with [`Action`]s for the driver to carry out: send a PDU, execute a
//! SCSI command with its data, answer a command with DATA PHASE ERROR, reset logical units, record a finished
//! command, log a warning, close the connection. It holds every protocol decision: the CmdSN window (ExpCmdSN,
//! MaxCmdSN), StatSN, immediate and unsolicited data, R2T generation (MaxBurstLength, FirstBurstLength,
//! MaxOutstandingR2T, R2TSN), DataSN checks, Data-In sequencing with status in the last Data-In and residuals,
//! task management, NOP-Out/NOP-In and the target's own ping with its timeout, Text requests with continuation,
//! SNACK (rejected at ErrorRecoveryLevel 0), Logout, and every Reject. The clock is an argument (`now`); the
//! driver arms one timer at [`Session::deadline`] and calls [`Session::on_timer`] when it fires.
//!
//! What only the SCSI layer and the configuration know (how much data a CDB moves, which LUNs exist, which
//! targets SendTargets lists) comes through [`SessionEnv`], as the login core's `LoginEnv` does. The SCSI layer
//! decodes each CDB once, when its command arrives ([`SessionEnv::decode`]); the session keeps that value, opaque
//! to it, with the task and hands it back in [`Command::decoded`] and to every later question about the command.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::error::RejectReason;
use crate::frame::{DecodeError, RawPdu};
use crate::login::{Negotiated, SessionType};
use crate::pdu::{self, tmf, Pdu, BHS_LEN, RESERVED_TAG};
use crate::seq::{sn_le, sn_lt, CmdSnCheck, CmdWindow};
use crate::text::TextPairs;

/// Longest Text Request accepted across C-bit continuations.
pub const MAX_TEXT_REQUEST: usize = 64 * 1024;
/// How many bytes of a text response are kept for continuation.
pub const MAX_TEXT_RESPONSE: usize = 1024 * 1024;

/// What the driver tells the session about the SCSI layer and the configuration.
pub trait SessionEnv {
    /// What the SCSI layer makes of a CDB, decoded once when the command arrives; the session only stores it.
    type Decoded: Clone + std::fmt::Debug;
    /// The LUN number (SAM format, as REPORT LUNS gives it) of a BHS LUN field.
    fn lun_number(&self, lun: u64) -> u64;
    /// Whether the session's target has this LUN (BHS field).
    fn lun_exists(&self, lun: u64) -> bool;
    /// Decodes the CDB of a command for this LUN (BHS field), whatever it holds: a CDB that does not decode is
    /// answered by the SCSI layer when the command runs.
    fn decode(&self, lun: u64, cdb: &[u8]) -> Self::Decoded;
    /// Bytes of Data-Out the command transfers on this LUN; 0 when the LUN or CDB is unknown or moves none.
    fn data_out_len(&self, lun: u64, cmd: &Self::Decoded) -> u32;
    /// Bytes of Data-In the command asks for on this LUN, None when unknown.
    fn data_in_len(&self, lun: u64, cmd: &Self::Decoded) -> Option<u32>;
    /// SendTargets=`which`: the TargetName/TargetAddress pairs this initiator may see.
    fn send_targets(&self, which: &str, reply: &mut TextPairs);
}

/// The session's parameters: what login negotiated and the target's own settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionParams {
    pub session_type: SessionType,
    /// This connection's CID (Logout reason 1 names it).
    pub cid: u16,
    /// The initiator's MaxRecvDataSegmentLength: the longest data segment sent.
    pub initiator_mrdsl: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    /// Commands the CmdSN window holds (MaxCmdSN - ExpCmdSN + 1 when idle).
    pub queue_depth: u32,
    /// Largest data buffer one command holds; bytes beyond it are counted, not stored.
    pub max_task_data: u32,
    /// Idle time after which the target pings the initiator.
    pub nop_interval: Duration,
    /// How long the initiator has to answer that ping before the connection is closed.
    pub nop_timeout: Duration,
}

impl SessionParams {
    /// The parameters of a session logged in with `n` on connection `cid`.
    pub fn new(
        n: &Negotiated,
        cid: u16,
        queue_depth: u32,
        nop_interval: Duration,
        nop_timeout: Duration,
    ) -> Self {
        SessionParams {
            session_type: n.session_type,
            cid,
            initiator_mrdsl: n.initiator_mrdsl,
            max_burst_length: n.max_burst_length,
            first_burst_length: n.first_burst_length,
            initial_r2t: n.initial_r2t,
            immediate_data: n.immediate_data,
            max_outstanding_r2t: n.max_outstanding_r2t.max(1),
            queue_depth: queue_depth.max(1),
            max_task_data: 16 * 1024 * 1024,
            nop_interval,
            nop_timeout,
        }
    }
}

/// A command descriptor block: the BHS's 16 bytes, or longer with an Extended CDB AHS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cdb {
    Short([u8; 16]),
    Long(Bytes),
}

impl Cdb {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Cdb::Short(b) => b,
            Cdb::Long(b) => b,
        }
    }
}

/// A SCSI command ready to run, with all of its Data-Out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command<D> {
    pub itt: u32,
    /// The BHS LUN field.
    pub lun: u64,
    pub cdb: Cdb,
    /// The CDB as [`SessionEnv::decode`] decoded it when the command arrived.
    pub decoded: D,
    pub read: bool,
    pub write: bool,
    /// Expected Data Transfer Length (0 when neither R nor W is set).
    pub expected_len: u32,
    /// The Data-Out the command needs (at most what the CDB transfers). One PDU's segment when it carried it
    /// all, without a copy; otherwise the task buffer the Data-Out PDUs were assembled into.
    pub data: Bytes,
}

impl<D> Command<D> {
    /// The Expected Data Transfer Length of the Data-Out direction (0 for a read).
    pub fn data_out_expected(&self) -> u32 {
        if self.read {
            0
        } else {
            self.expected_len
        }
    }
}

/// How a command ended, from the SCSI layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// SCSI status byte.
    pub status: u8,
    /// Sense data of a CHECK CONDITION.
    pub sense: Option<Vec<u8>>,
    /// Data-In, already cut to the allocation length.
    pub data_in: Bytes,
}

/// A command answered: for the per-LUN metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    /// The BHS LUN field.
    pub lun: u64,
    /// The CDB's operation code.
    pub opcode: u8,
    /// Data-In bytes sent.
    pub data_in: u64,
    /// Data-Out bytes received.
    pub data_out: u64,
    /// When the command arrived.
    pub arrived: Instant,
}

/// Which logical units a reset reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetScope {
    /// LOGICAL UNIT RESET of this LUN (BHS field).
    Lun(u64),
    /// TARGET WARM/COLD RESET: every LUN of the target.
    Target,
}

/// Why the session closes its connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The Logout Response went out.
    Logout,
    /// TARGET COLD RESET was answered.
    ColdReset,
    /// The initiator did not answer a NOP-In ping within NopTimeout.
    NopTimeout,
    /// The initiator broke a rule that ErrorRecoveryLevel 0 cannot recover from.
    Protocol(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Logout => write!(f, "logout complete"),
            CloseReason::ColdReset => write!(f, "target cold reset"),
            CloseReason::NopTimeout => write!(f, "initiator did not answer a NOP-In ping"),
            CloseReason::Protocol(why) => write!(f, "{why}"),
        }
    }
}

/// What the driver does for the session, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<D> {
    /// Send this PDU with this data segment (its header's DataSegmentLength matches).
    Send(Pdu, Bytes),
    /// Run this SCSI command and report its end with [`Session::complete`].
    Execute(Command<D>),
    /// Answer this command with CHECK CONDITION, DATA PHASE ERROR (its Data-Out broke the DataSN sequence) through
    /// [`Session::complete`].
    DataPhaseError(u32),
    /// Reset these logical units for this nexus.
    Reset(ResetScope),
    /// A command was answered.
    Finished(Finished),
    /// A line for the log: something the initiator did wrong and how it was answered, or a notable request.
    Log(Level, String),
    /// Close the connection once what was sent before is written. The session takes no more input.
    Close(CloseReason),
}

/// How much a [`Action::Log`] line matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
}

/// Where a command stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TaskState {
    /// Received but waiting for an earlier CmdSN.
    Held,
    /// Delivered; collecting Data-Out.
    Collecting,
    /// Handed to the driver to run.
    Executing,
}

/// One outstanding R2T.
#[derive(Clone, Copy, Debug)]
struct R2tSeq {
    ttt: u32,
    offset: u32,
    len: u32,
    next_data_sn: u32,
}

/// A command's Data-Out as it arrives.
#[derive(Debug)]
enum TaskData {
    /// Everything the command needs came in one segment: kept as it is.
    Whole(Bytes),
    /// Assembled from several PDUs.
    Building(BytesMut),
}

#[derive(Debug)]
struct Task<D> {
    itt: u32,
    lun: u64,
    cdb: Cdb,
    /// The CDB decoded, once, on arrival.
    decoded: D,
    read: bool,
    write: bool,
    edtl: u32,
    state: TaskState,
    aborted: bool,
    data: TaskData,
    /// Bytes of Data-Out stored (the rest is counted, not stored).
    keep: u32,
    received: u32,
    /// Unsolicited Data-Out sequence still open (F bit not yet seen).
    unsolicited_open: bool,
    unsolicited_end: u32,
    unsolicited_next_data_sn: u32,
    /// The R2T whose data comes next (sequences arrive in order: DataSequenceInOrder=Yes).
    r2t: Option<R2tSeq>,
    /// Further outstanding R2Ts, only with MaxOutstandingR2T > 1.
    more_r2t: VecDeque<R2tSeq>,
    /// End offset of the data asked for so far (unsolicited + R2Ts).
    asked_end: u32,
    next_r2t_sn: u32,
    /// Whether this command took a CmdSN window slot.
    holds_slot: bool,
    /// A Data-Out broke the DataSN sequence: the data is taken in but not used, and the command fails.
    data_sn_error: bool,
    arrived: Instant,
}

/// A command waiting for its CmdSN turn.
#[derive(Debug)]
enum Held {
    /// A SCSI command whose task exists (state Held) unless it was aborted meanwhile.
    Command(u32),
    /// A SCSI command that was rejected: its CmdSN passes without running anything.
    Refused,
    /// Any other ordered request.
    Other(RawPdu, Pdu),
}

/// A task management response waiting for aborted commands to finish running.
#[derive(Debug)]
struct TmfWait {
    itt: u32,
    response: u8,
    waiting: HashSet<u32>,
    close_after: bool,
}

#[derive(Debug)]
struct TextContinuation {
    itt: u32,
    ttt: u32,
    rest: Vec<u8>,
}

/// The full feature phase state of one connection.
#[derive(Debug)]
pub struct Session<D> {
    p: SessionParams,
    window: CmdWindow,
    held: HashMap<u32, Held>,
    tasks: HashMap<u32, Task<D>>,
    stat_sn: u32,
    /// Highest ExpStatSN the initiator acknowledged (every status before it was received).
    exp_stat_sn: u32,
    next_ttt: u32,
    tmf_waits: Vec<TmfWait>,
    /// Our NOP-In ping waiting for an answer: its TTT and when it went out.
    ping: Option<(u32, Instant)>,
    last_rx: Instant,
    logout: Option<(u32, u8)>,
    text: Option<TextContinuation>,
    text_request: Vec<u8>,
    /// (ITT, TTT) on which a Text Request continued with the C bit goes on.
    text_request_ttt: Option<(u32, u32)>,
    closed: bool,
    out: VecDeque<Action<D>>,
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

fn cmd_sn_of(pdu: &Pdu) -> Option<(bool, u32)> {
    match pdu {
        Pdu::NopOut(p) => Some((p.immediate, p.cmd_sn)),
        Pdu::ScsiCommand(p) => Some((p.immediate, p.cmd_sn)),
        Pdu::TaskMgmtRequest(p) => Some((p.immediate, p.cmd_sn)),
        Pdu::TextRequest(p) => Some((p.immediate, p.cmd_sn)),
        Pdu::LogoutRequest(p) => Some((p.immediate, p.cmd_sn)),
        _ => None,
    }
}

fn exp_stat_sn_of(pdu: &Pdu) -> Option<u32> {
    match pdu {
        Pdu::NopOut(p) => Some(p.exp_stat_sn),
        Pdu::ScsiCommand(p) => Some(p.exp_stat_sn),
        Pdu::TaskMgmtRequest(p) => Some(p.exp_stat_sn),
        Pdu::TextRequest(p) => Some(p.exp_stat_sn),
        Pdu::LogoutRequest(p) => Some(p.exp_stat_sn),
        Pdu::DataOut(p) => Some(p.exp_stat_sn),
        Pdu::SnackRequest(p) => Some(p.exp_stat_sn),
        _ => None,
    }
}

impl<D: Clone> Session<D> {
    /// The session as login left it: `exp_cmd_sn` is the leading login's CmdSN, `stat_sn` the next StatSN.
    pub fn new(p: SessionParams, exp_cmd_sn: u32, stat_sn: u32, now: Instant) -> Self {
        Session {
            window: CmdWindow::new(exp_cmd_sn, p.queue_depth),
            p,
            held: HashMap::new(),
            tasks: HashMap::new(),
            stat_sn,
            exp_stat_sn: stat_sn,
            next_ttt: 1,
            tmf_waits: Vec::new(),
            ping: None,
            last_rx: now,
            logout: None,
            text: None,
            text_request: Vec::new(),
            text_request_ttt: None,
            closed: false,
            out: VecDeque::new(),
        }
    }

    /// The next action to carry out, in order.
    pub fn next_action(&mut self) -> Option<Action<D>> {
        self.out.pop_front()
    }

    /// Whether the session asked for its connection to close.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The next StatSN to be assigned.
    pub fn stat_sn(&self) -> u32 {
        self.stat_sn
    }

    /// The highest ExpStatSN the initiator sent (statuses before it are acknowledged).
    pub fn acked_stat_sn(&self) -> u32 {
        self.exp_stat_sn
    }

    /// ExpCmdSN as the next response carries it.
    pub fn exp_cmd_sn(&self) -> u32 {
        self.window.exp_cmd_sn()
    }

    /// MaxCmdSN as the next response carries it.
    pub fn max_cmd_sn(&self) -> u32 {
        self.window.max_cmd_sn()
    }

    /// Commands known to the session (held, collecting data or running).
    pub fn tasks(&self) -> usize {
        self.tasks.len()
    }

    /// When [`Session::on_timer`] must be called next: the ping's timeout while one is out, else the end of the
    /// idle interval. Calling it earlier does no harm.
    pub fn deadline(&self) -> Instant {
        match self.ping {
            Some((_, sent)) => sent + self.p.nop_timeout,
            None => self.last_rx + self.p.nop_interval,
        }
    }

    fn discovery(&self) -> bool {
        self.p.session_type == SessionType::Discovery
    }

    fn send(&mut self, p: Pdu, data: Bytes) {
        self.out.push_back(Action::Send(p, data));
    }

    fn warn(&mut self, why: String) {
        self.out.push_back(Action::Log(Level::Warn, why));
    }

    fn log(&mut self, level: Level, line: String) {
        self.out.push_back(Action::Log(level, line));
    }

    fn close(&mut self, why: CloseReason) {
        if !self.closed {
            self.closed = true;
            self.out.push_back(Action::Close(why));
        }
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
        self.send(p, Bytes::copy_from_slice(bhs));
    }

    /// Time passed: ping an idle initiator, close on one that did not answer.
    pub fn on_timer(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if let Some((_, sent)) = self.ping {
            // At the deadline itself, so a timer armed at `deadline()` never fires in vain.
            if now.saturating_duration_since(sent) >= self.p.nop_timeout {
                self.close(CloseReason::NopTimeout);
            }
            return;
        }
        if now.saturating_duration_since(self.last_rx) >= self.p.nop_interval {
            let ttt = alloc_ttt(&mut self.next_ttt);
            self.ping = Some((ttt, now));
            let p = Pdu::NopIn(pdu::NopIn {
                data_len: 0,
                lun: 0,
                itt: RESERVED_TAG,
                ttt,
                stat_sn: self.stat_sn,
                exp_cmd_sn: self.window.exp_cmd_sn(),
                max_cmd_sn: self.window.max_cmd_sn(),
            });
            self.send(p, Bytes::new());
        }
    }

    /// The frame reader refused a PDU: reject it, or close when the stream can not be trusted.
    pub fn on_frame_error(&mut self, e: DecodeError, now: Instant) {
        if self.closed {
            return;
        }
        self.last_rx = now;
        self.ping = None;
        match e {
            DecodeError::Fatal(e) => self.close(CloseReason::Protocol(e.to_string())),
            DecodeError::Reject { bhs, error } => {
                self.warn(format!("rejecting PDU: {error}"));
                self.reject(
                    &bhs,
                    error.reject_reason().unwrap_or(RejectReason::ProtocolError),
                );
            }
        }
    }

    /// A PDU arrived.
    pub fn on_pdu(&mut self, raw: RawPdu, now: Instant, env: &impl SessionEnv<Decoded = D>) {
        if self.closed {
            return;
        }
        // Anything from the initiator shows it is alive: the ping is answered.
        self.last_rx = now;
        self.ping = None;
        let pdu = match Pdu::decode(&raw.bhs) {
            Ok(p) => p,
            Err(e) => {
                self.warn(format!("rejecting PDU: {e}"));
                self.reject(
                    &raw.bhs,
                    e.reject_reason().unwrap_or(RejectReason::ProtocolError),
                );
                return;
            }
        };
        if let Some(e) = exp_stat_sn_of(&pdu) {
            // Only an acknowledgement of statuses actually sent moves it (RFC 7143 section 3.2.2.2).
            if sn_lt(self.exp_stat_sn, e) && sn_le(e, self.stat_sn) {
                self.exp_stat_sn = e;
            }
        }
        if self.logout.is_some() {
            // After a Logout Request only Data-Out for running commands is still meaningful.
            if let Pdu::DataOut(d) = &pdu {
                self.on_data_out(d, &raw.data);
            } else {
                self.reject(&raw.bhs, RejectReason::WaitingForLogout);
            }
            return;
        }
        match &pdu {
            Pdu::DataOut(d) => return self.on_data_out(d, &raw.data),
            Pdu::SnackRequest(_) => {
                // ErrorRecoveryLevel 0 has no SNACK.
                self.reject(&raw.bhs, RejectReason::ProtocolError);
                return;
            }
            Pdu::LoginRequest(_) => {
                return self.close(CloseReason::Protocol(
                    "Login Request in the full feature phase".into(),
                ));
            }
            _ => {}
        }
        let Some((immediate, cmd_sn)) = cmd_sn_of(&pdu) else {
            // Target-only opcodes.
            self.reject(&raw.bhs, RejectReason::ProtocolError);
            return;
        };
        if self.discovery()
            && !matches!(
                pdu,
                Pdu::TextRequest(_) | Pdu::LogoutRequest(_) | Pdu::NopOut(_)
            )
        {
            self.warn("discovery session sent a command other than Text/Logout; rejecting".into());
            self.reject(&raw.bhs, RejectReason::ProtocolError);
            return;
        }
        if let Pdu::NopOut(p) = &pdu {
            if p.itt == RESERVED_TAG {
                // An answer to our ping (or a one-way ping): never acknowledged, never ordered.
                if !p.immediate {
                    self.reject(&raw.bhs, RejectReason::ProtocolError);
                }
                return;
            }
        }
        if immediate {
            if self.window.in_use() >= 2 * self.p.queue_depth {
                self.reject(&raw.bhs, RejectReason::ImmediateCommandReject);
                return;
            }
            return self.dispatch(raw, pdu, true, now, env);
        }
        match self.window.check(cmd_sn) {
            CmdSnCheck::InOrder => {
                self.window.advance();
                self.dispatch(raw, pdu, false, now, env);
                self.run_held(env);
            }
            CmdSnCheck::Ahead => {
                if self.held.contains_key(&cmd_sn) {
                    self.log(Level::Debug, format!("duplicate CmdSN {cmd_sn} dropped"));
                    return;
                }
                let held = match pdu {
                    // Accept its data now; it runs when its turn comes.
                    Pdu::ScsiCommand(c) => match self.new_task(&c, &raw, now, env) {
                        true => Held::Command(c.itt),
                        false => Held::Refused,
                    },
                    other => Held::Other(raw, other),
                };
                self.held.insert(cmd_sn, held);
            }
            CmdSnCheck::Drop => {
                self.log(
                    Level::Debug,
                    format!(
                        "CmdSN {cmd_sn} outside the window [{}, {}]; dropped",
                        self.window.exp_cmd_sn(),
                        self.window.max_cmd_sn()
                    ),
                );
            }
        }
    }

    /// Commands that were waiting for the one just taken go now, in CmdSN order.
    fn run_held(&mut self, env: &impl SessionEnv<Decoded = D>) {
        while let Some(next) = self.held.remove(&self.window.exp_cmd_sn()) {
            if self.closed {
                return;
            }
            self.window.advance();
            match next {
                Held::Command(itt)
                    if self
                        .tasks
                        .get(&itt)
                        .is_some_and(|t| t.state == TaskState::Held) =>
                {
                    self.deliver(itt)
                }
                // Aborted while it waited for its turn, or refused: its CmdSN passes, it does not run.
                Held::Command(_) | Held::Refused => self.window.release(),
                Held::Other(raw, pdu) => {
                    let now = self.last_rx;
                    self.dispatch(raw, pdu, false, now, env)
                }
            }
        }
    }

    /// Runs an ordered (or immediate) request. Non-SCSI requests give their window slot back at once.
    fn dispatch(
        &mut self,
        raw: RawPdu,
        pdu: Pdu,
        immediate: bool,
        now: Instant,
        env: &impl SessionEnv<Decoded = D>,
    ) {
        match pdu {
            Pdu::ScsiCommand(c) => {
                if immediate {
                    self.window.hold();
                }
                if self.new_task(&c, &raw, now, env) {
                    self.deliver(c.itt);
                } else {
                    self.window.release();
                }
                return;
            }
            Pdu::NopOut(p) => self.on_nop_out(&p, raw.data),
            Pdu::TaskMgmtRequest(p) => self.on_tmf(&p, env),
            Pdu::TextRequest(p) => self.on_text(&p, &raw, env),
            Pdu::LogoutRequest(p) => self.on_logout(&p),
            _ => {}
        }
        if !immediate {
            self.window.release();
        }
    }

    fn on_nop_out(&mut self, p: &pdu::NopOut, mut data: Bytes) {
        data.truncate(self.p.initiator_mrdsl as usize);
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
        self.send(r, data);
    }

    /// Registers a SCSI command and takes its immediate data. Returns false if it was refused (rejected).
    fn new_task(
        &mut self,
        c: &pdu::ScsiCommand,
        raw: &RawPdu,
        now: Instant,
        env: &impl SessionEnv<Decoded = D>,
    ) -> bool {
        if self.tasks.contains_key(&c.itt) {
            self.warn(format!(
                "command reuses the tag {:#x} of a running task; rejecting",
                c.itt
            ));
            self.reject(&raw.bhs, RejectReason::TaskInProgress);
            return false;
        }
        let imm = raw.data.len() as u32;
        if imm > 0
            && (!c.write
                || !self.p.immediate_data
                || imm > self.p.first_burst_length
                || imm > c.expected_len)
        {
            self.warn(format!(
                "immediate data of {imm} bytes not allowed here (W bit, ImmediateData, FirstBurstLength or EDTL {}) for ITT {:#x}; rejecting",
                c.expected_len, c.itt
            ));
            self.reject(&raw.bhs, RejectReason::ProtocolError);
            return false;
        }
        if !c.final_ && (!c.write || self.p.initial_r2t) {
            self.warn(format!(
                "unsolicited data announced but not allowed for ITT {:#x}; rejecting",
                c.itt
            ));
            self.reject(&raw.bhs, RejectReason::ProtocolError);
            return false;
        }
        let cdb = if raw.ahs.len() >= 4 && raw.ahs[2] == 1 {
            // Extended CDB AHS (type 1): the CDB continues past the BHS's 16 bytes.
            let len = u16::from_be_bytes([raw.ahs[0], raw.ahs[1]]) as usize;
            if len >= 1 && 3 + len <= raw.ahs.len() {
                let mut b = BytesMut::with_capacity(16 + len - 1);
                b.extend_from_slice(&c.cdb);
                b.extend_from_slice(&raw.ahs[4..3 + len]);
                Cdb::Long(b.freeze())
            } else {
                Cdb::Short(c.cdb)
            }
        } else {
            Cdb::Short(c.cdb)
        };
        let decoded = env.decode(c.lun, cdb.as_slice());
        let need = if c.write {
            env.data_out_len(c.lun, &decoded)
        } else {
            0
        };
        let keep = need.min(c.expected_len).min(self.p.max_task_data);
        let data = if imm >= keep {
            // The whole write in this PDU (the common small write): no copy.
            TaskData::Whole(raw.data.slice(..keep as usize))
        } else {
            let mut b = BytesMut::with_capacity(keep as usize);
            b.extend_from_slice(&raw.data);
            TaskData::Building(b)
        };
        let unsolicited_end = if c.write {
            c.expected_len.min(self.p.first_burst_length)
        } else {
            0
        };
        let unsolicited_open = c.write && !c.final_ && imm < unsolicited_end;
        self.tasks.insert(
            c.itt,
            Task {
                itt: c.itt,
                lun: c.lun,
                cdb,
                decoded,
                read: c.read,
                write: c.write,
                edtl: if c.read || c.write { c.expected_len } else { 0 },
                state: TaskState::Held,
                aborted: false,
                data,
                keep,
                received: imm,
                unsolicited_open,
                unsolicited_end,
                unsolicited_next_data_sn: 0,
                r2t: None,
                more_r2t: VecDeque::new(),
                asked_end: if unsolicited_open {
                    unsolicited_end
                } else {
                    imm
                },
                next_r2t_sn: 0,
                holds_slot: false,
                data_sn_error: false,
                arrived: now,
            },
        );
        true
    }

    /// The command's CmdSN turn has come: collect the rest of its data or run it.
    fn deliver(&mut self, itt: u32) {
        if let Some(t) = self.tasks.get_mut(&itt) {
            t.state = TaskState::Collecting;
            t.holds_slot = true;
        }
        self.progress(itt);
    }

    /// Moves a delivered task on: R2Ts while it needs data, execution when it has it all.
    fn progress(&mut self, itt: u32) {
        let (max_burst, max_r2t) = (self.p.max_burst_length.max(1), self.p.max_outstanding_r2t);
        let Some(t) = self.tasks.get_mut(&itt) else {
            return;
        };
        if t.state != TaskState::Collecting {
            return;
        }
        if t.received < t.edtl && !t.read {
            if t.unsolicited_open {
                return;
            }
            // Ask for the rest in bursts of MaxBurstLength, at most MaxOutstandingR2T at a time.
            while t.asked_end < t.edtl
                && (t.r2t.is_some() as u32 + t.more_r2t.len() as u32) < max_r2t
            {
                let ttt = alloc_ttt(&mut self.next_ttt);
                let offset = t.asked_end;
                let len = (t.edtl - offset).min(max_burst);
                let r2t_sn = t.next_r2t_sn;
                t.next_r2t_sn += 1;
                t.asked_end = offset + len;
                let seq = R2tSeq {
                    ttt,
                    offset,
                    len,
                    next_data_sn: 0,
                };
                if t.r2t.is_none() {
                    t.r2t = Some(seq);
                } else {
                    t.more_r2t.push_back(seq);
                }
                let p = Pdu::R2t(pdu::R2t {
                    lun: t.lun,
                    itt,
                    ttt,
                    stat_sn: self.stat_sn,
                    exp_cmd_sn: self.window.exp_cmd_sn(),
                    max_cmd_sn: self.window.max_cmd_sn(),
                    r2t_sn,
                    buffer_offset: offset,
                    desired_len: len,
                });
                self.out.push_back(Action::Send(p, Bytes::new()));
            }
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
            self.out.push_back(Action::DataPhaseError(itt));
            return;
        }
        let data = match std::mem::replace(&mut t.data, TaskData::Whole(Bytes::new())) {
            TaskData::Whole(b) => b,
            TaskData::Building(b) => b.freeze(),
        };
        let cmd = Command {
            itt,
            lun: t.lun,
            cdb: t.cdb.clone(),
            decoded: t.decoded.clone(),
            read: t.read,
            write: t.write,
            expected_len: t.edtl,
            data,
        };
        self.out.push_back(Action::Execute(cmd));
    }

    fn on_data_out(&mut self, d: &pdu::DataOut, data: &Bytes) {
        let Some(t) = self.tasks.get_mut(&d.itt) else {
            // The command may have been aborted or answered early; its data is no longer wanted.
            let line = format!(
                "Data-Out for no running command (ITT {:#x}); discarded",
                d.itt
            );
            return self.log(Level::Debug, line);
        };
        let len = data.len() as u32;
        let mut warning = None;
        if d.ttt == RESERVED_TAG {
            if !t.unsolicited_open {
                return self.close(CloseReason::Protocol(format!(
                    "unsolicited Data-Out for ITT {:#x} that allows none",
                    d.itt
                )));
            }
            if d.data_sn != t.unsolicited_next_data_sn {
                warning = Some(format!(
                    "Data-Out DataSN {} out of sequence (expected {}) for ITT {:#x}; the command will fail",
                    d.data_sn, t.unsolicited_next_data_sn, d.itt
                ));
                t.data_sn_error = true;
            }
            if d.buffer_offset != t.received || t.received.saturating_add(len) > t.unsolicited_end {
                return self.close(CloseReason::Protocol(format!(
                    "unsolicited Data-Out at offset {} length {} outside the first burst (ITT {:#x})",
                    d.buffer_offset, len, d.itt
                )));
            }
            t.unsolicited_next_data_sn = t.unsolicited_next_data_sn.wrapping_add(1);
            if d.final_ || t.received + len == t.unsolicited_end {
                t.unsolicited_open = false;
                // What was not sent unsolicited is asked for with R2Ts from here.
                t.asked_end = t.received + len;
            }
        } else {
            let Some(r) = t.r2t.as_mut().filter(|r| r.ttt == d.ttt) else {
                return self.close(CloseReason::Protocol(format!(
                    "Data-Out with unknown Target Transfer Tag {:#x} (ITT {:#x})",
                    d.ttt, d.itt
                )));
            };
            if d.data_sn != r.next_data_sn {
                warning = Some(format!(
                    "Data-Out DataSN {} out of sequence (expected {}) for ITT {:#x}; the command will fail",
                    d.data_sn, r.next_data_sn, d.itt
                ));
                t.data_sn_error = true;
            }
            let end = r.offset + r.len;
            if d.buffer_offset != t.received || d.buffer_offset.saturating_add(len) > end {
                let why = format!(
                    "Data-Out at offset {} length {} outside the R2T's {}+{} (ITT {:#x})",
                    d.buffer_offset, len, r.offset, r.len, d.itt
                );
                return self.close(CloseReason::Protocol(why));
            }
            r.next_data_sn = r.next_data_sn.wrapping_add(1);
            if d.buffer_offset + len == end {
                t.r2t = t.more_r2t.pop_front();
            } else if d.final_ {
                let why = format!(
                    "Data-Out sequence ended before the R2T's length (ITT {:#x})",
                    d.itt
                );
                return self.close(CloseReason::Protocol(why));
            }
        }
        // Store what the command needs; count the rest.
        let start = t.received;
        if start < t.keep {
            let n = (t.keep - start).min(len) as usize;
            if let TaskData::Building(b) = &mut t.data {
                b.extend_from_slice(&data[..n]);
            }
        }
        t.received += len;
        if let Some(w) = warning {
            self.warn(w);
        }
        self.progress(d.itt);
    }

    /// The command with this tag finished running.
    pub fn complete(&mut self, itt: u32, c: Completion, env: &impl SessionEnv<Decoded = D>) {
        let Some(t) = self.tasks.get(&itt) else {
            return;
        };
        if t.state != TaskState::Executing {
            return;
        }
        let t = self.tasks.remove(&itt).expect("present");
        if t.holds_slot {
            self.window.release();
        }
        if t.aborted {
            self.task_quiesced(itt);
            return;
        }
        if self.closed {
            return;
        }
        self.respond(t, c, env);
        self.maybe_finish_logout();
    }

    /// Sends Data-In and status for a finished command.
    fn respond(&mut self, t: Task<D>, c: Completion, env: &impl SessionEnv<Decoded = D>) {
        let Completion {
            status,
            sense,
            data_in,
        } = c;
        let mut overflow = false;
        let mut underflow = false;
        let mut residual = 0u32;
        let mut send = 0usize;
        let cdb = t.cdb.as_slice();
        if t.read {
            let got = data_in.len() as u32;
            let asked = env.data_in_len(t.lun, &t.decoded).unwrap_or(got).max(got);
            send = data_in.len().min(t.edtl as usize);
            if asked > t.edtl {
                overflow = true;
                residual = asked - t.edtl;
            } else if (send as u32) < t.edtl {
                underflow = true;
                residual = t.edtl - send as u32;
            }
        } else if t.edtl > 0 || t.received > 0 {
            let need = env.data_out_len(t.lun, &t.decoded);
            if need > t.edtl {
                overflow = true;
                residual = need - t.edtl;
            } else if need < t.edtl {
                underflow = true;
                residual = t.edtl - need;
            }
        } else {
            let need = env.data_out_len(t.lun, &t.decoded);
            if need > 0 {
                // A write CDB sent with no W bit and EDTL 0: nothing was transferred.
                overflow = true;
                residual = need;
            }
        }
        self.out.push_back(Action::Finished(Finished {
            lun: t.lun,
            opcode: cdb.first().copied().unwrap_or(0),
            data_in: send as u64,
            data_out: u64::from(t.received),
            arrived: t.arrived,
        }));
        let good_collapsed = sense.is_none() && send > 0;
        let seg = (self.p.initiator_mrdsl as usize).max(1);
        let burst = (self.p.max_burst_length as usize).max(1);
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
            self.send(p, data_in.slice(off..end));
            data_sn += 1;
            off = end;
        }
        if good_collapsed {
            return;
        }
        let data = match sense {
            Some(s) => {
                let mut v = BytesMut::with_capacity(2 + s.len());
                v.extend_from_slice(&(s.len() as u16).to_be_bytes());
                v.extend_from_slice(&s);
                v.freeze()
            }
            None => Bytes::new(),
        };
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
        self.send(p, data);
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
            if self.closed {
                continue;
            }
            self.tmf_response(w.itt, w.response);
            if w.close_after {
                self.close(CloseReason::ColdReset);
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
        self.send(p, Bytes::new());
    }

    fn on_tmf(&mut self, p: &pdu::TaskMgmtRequest, env: &impl SessionEnv<Decoded = D>) {
        let lun = env.lun_number(p.lun);
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
                if !env.lun_exists(p.lun) {
                    tmf::LUN_DOES_NOT_EXIST
                } else {
                    victims.extend(
                        self.tasks
                            .values()
                            .filter(|t| env.lun_number(t.lun) == lun)
                            .map(|t| t.itt),
                    );
                    if p.function == tmf::LOGICAL_UNIT_RESET {
                        self.out.push_back(Action::Reset(ResetScope::Lun(p.lun)));
                    }
                    tmf::COMPLETE
                }
            }
            tmf::TARGET_WARM_RESET | tmf::TARGET_COLD_RESET => {
                victims.extend(self.tasks.keys().copied());
                self.out.push_back(Action::Reset(ResetScope::Target));
                close_after = p.function == tmf::TARGET_COLD_RESET;
                tmf::COMPLETE
            }
            tmf::CLEAR_ACA => tmf::NOT_SUPPORTED,
            tmf::TASK_REASSIGN => tmf::REASSIGN_NOT_SUPPORTED,
            _ => tmf::REJECTED,
        };
        self.log(
            Level::Info,
            format!(
                "task management function {} on LUN {lun}, referenced tag {:#x}: response {response}, {} tasks",
                p.function,
                p.referenced_tag,
                victims.len()
            ),
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
                self.close(CloseReason::ColdReset);
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

    fn on_text(&mut self, p: &pdu::TextRequest, raw: &RawPdu, env: &impl SessionEnv<Decoded = D>) {
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
                    self.warn(format!(
                        "Text Request (ITT {:#x}) with a Target Transfer Tag {:#x} of no exchange in progress; rejecting",
                        p.itt, p.ttt
                    ));
                    self.reject(&raw.bhs, RejectReason::InvalidPduField);
                }
            }
            return;
        }
        if self.text_request.len() + raw.data.len() > MAX_TEXT_REQUEST {
            self.warn(format!(
                "Text Request longer than {MAX_TEXT_REQUEST} bytes; rejecting"
            ));
            self.text_request.clear();
            self.reject(&raw.bhs, RejectReason::ProtocolError);
            return;
        }
        self.text_request.extend_from_slice(&raw.data);
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
            self.send(r, Bytes::new());
            return;
        }
        let req = std::mem::take(&mut self.text_request);
        let mut reply = TextPairs::default();
        match TextPairs::parse(&req) {
            Ok(pairs) => {
                for (k, v) in &pairs.0 {
                    if k == "SendTargets" {
                        env.send_targets(v, &mut reply);
                    } else {
                        reply.push(k.clone(), "NotUnderstood");
                    }
                }
            }
            Err(e) => {
                self.warn(format!("malformed Text Request: {e}; rejecting"));
                self.reject(&raw.bhs, RejectReason::ProtocolError);
                return;
            }
        }
        let mut body = reply.encode();
        body.truncate(MAX_TEXT_RESPONSE);
        self.send_text(p.itt, p.lun, body);
    }

    fn send_text(&mut self, itt: u32, lun: u64, mut body: Vec<u8>) {
        let max = (self.p.initiator_mrdsl as usize).max(1);
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
        self.send(r, Bytes::from(body));
    }

    fn on_logout(&mut self, p: &pdu::LogoutRequest) {
        let response = match p.reason {
            0 => 0,
            1 if p.cid == self.p.cid => 0,
            1 => 1,
            _ => 2,
        };
        if response != 0 {
            self.logout_response(p.itt, response);
            return;
        }
        self.log(
            Level::Info,
            format!("logout requested (reason {})", p.reason),
        );
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
            if self.tasks.is_empty() && !self.closed {
                self.logout_response(itt, response);
                self.close(CloseReason::Logout);
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
        self.send(r, Bytes::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRITE_10: u8 = 0x2a;
    const READ_10: u8 = 0x28;

    /// One LUN (0) of 512-byte blocks; READ(10)/WRITE(10) move what their transfer length says.
    struct Env {
        targets: usize,
    }

    /// A CDB as the test environment decodes it: the operation code and the bytes a READ(10)/WRITE(10) moves.
    type Dec = (u8, u32);
    type Session = super::Session<Dec>;
    type Action = super::Action<Dec>;

    impl SessionEnv for Env {
        type Decoded = Dec;
        fn lun_number(&self, lun: u64) -> u64 {
            lun >> 48
        }
        fn lun_exists(&self, lun: u64) -> bool {
            lun >> 48 == 0
        }
        fn decode(&self, _lun: u64, cdb: &[u8]) -> Dec {
            (
                cdb[0],
                u32::from(u16::from_be_bytes([cdb[7], cdb[8]])) * 512,
            )
        }
        fn data_out_len(&self, lun: u64, &(op, len): &Dec) -> u32 {
            match (self.lun_exists(lun), op) {
                (true, WRITE_10) => len,
                _ => 0,
            }
        }
        fn data_in_len(&self, lun: u64, &(op, len): &Dec) -> Option<u32> {
            match (self.lun_exists(lun), op) {
                (true, READ_10) => Some(len),
                _ => None,
            }
        }
        fn send_targets(&self, _which: &str, reply: &mut TextPairs) {
            for i in 0..self.targets {
                reply.push("TargetName", format!("iqn.2025-08.test:target-{i:04}"));
                reply.push("TargetAddress", "192.0.2.1:3260,1");
            }
        }
    }

    const ENV: Env = Env { targets: 1 };

    fn params() -> SessionParams {
        SessionParams {
            session_type: SessionType::Normal,
            cid: 1,
            initiator_mrdsl: 8192,
            max_burst_length: 16384,
            first_burst_length: 8192,
            initial_r2t: false,
            immediate_data: true,
            max_outstanding_r2t: 1,
            queue_depth: 4,
            max_task_data: 16 * 1024 * 1024,
            nop_interval: Duration::from_secs(5),
            nop_timeout: Duration::from_secs(10),
        }
    }

    fn session(p: SessionParams) -> (Session, Instant) {
        let now = Instant::now();
        (Session::new(p, 10, 100, now), now)
    }

    fn raw(p: Pdu, data: Bytes) -> RawPdu {
        RawPdu {
            bhs: p.encode(),
            ahs: Bytes::new(),
            data,
        }
    }

    fn cdb(op: u8, blocks: u16) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = op;
        c[7..9].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    struct Cmd {
        itt: u32,
        cmd_sn: u32,
        immediate: bool,
        final_: bool,
        read: bool,
        write: bool,
        edtl: u32,
        cdb: [u8; 16],
        data: Bytes,
    }

    fn write(itt: u32, cmd_sn: u32, bytes: u32) -> Cmd {
        Cmd {
            itt,
            cmd_sn,
            immediate: false,
            final_: true,
            read: false,
            write: true,
            edtl: bytes,
            cdb: cdb(WRITE_10, (bytes / 512) as u16),
            data: Bytes::new(),
        }
    }

    fn read(itt: u32, cmd_sn: u32, bytes: u32) -> Cmd {
        Cmd {
            read: true,
            write: false,
            cdb: cdb(READ_10, (bytes / 512) as u16),
            ..write(itt, cmd_sn, bytes)
        }
    }

    fn tur(itt: u32, cmd_sn: u32) -> Cmd {
        Cmd {
            write: false,
            edtl: 0,
            cdb: [0u8; 16],
            ..write(itt, cmd_sn, 0)
        }
    }

    fn cmd_pdu(c: Cmd) -> RawPdu {
        let p = Pdu::ScsiCommand(pdu::ScsiCommand {
            immediate: c.immediate,
            final_: c.final_,
            read: c.read,
            write: c.write,
            attr: 1,
            ahs_words: 0,
            data_len: c.data.len() as u32,
            lun: 0,
            itt: c.itt,
            expected_len: c.edtl,
            cmd_sn: c.cmd_sn,
            exp_stat_sn: 100,
            cdb: c.cdb,
        });
        raw(p, c.data)
    }

    fn data_out(
        itt: u32,
        ttt: u32,
        data_sn: u32,
        offset: u32,
        data: Bytes,
        final_: bool,
    ) -> RawPdu {
        let p = Pdu::DataOut(pdu::DataOut {
            final_,
            data_len: data.len() as u32,
            lun: 0,
            itt,
            ttt,
            exp_stat_sn: 0,
            data_sn,
            buffer_offset: offset,
        });
        raw(p, data)
    }

    fn nop_out(itt: u32, ttt: u32, cmd_sn: u32, immediate: bool, data: Bytes) -> RawPdu {
        let p = Pdu::NopOut(pdu::NopOut {
            immediate,
            lun: 0,
            itt,
            ttt,
            cmd_sn,
            exp_stat_sn: 0,
            data_len: data.len() as u32,
        });
        raw(p, data)
    }

    fn tmf_pdu(function: u8, itt: u32, referenced_tag: u32, cmd_sn: u32) -> RawPdu {
        raw(
            Pdu::TaskMgmtRequest(pdu::TaskMgmtRequest {
                immediate: true,
                function,
                lun: 0,
                itt,
                referenced_tag,
                cmd_sn,
                exp_stat_sn: 0,
                ref_cmd_sn: cmd_sn,
                exp_data_sn: 0,
            }),
            Bytes::new(),
        )
    }

    fn text_pdu(itt: u32, ttt: u32, cmd_sn: u32, cont: bool, data: &[u8]) -> RawPdu {
        raw(
            Pdu::TextRequest(pdu::TextRequest {
                immediate: false,
                final_: !cont,
                cont,
                data_len: data.len() as u32,
                lun: 0,
                itt,
                ttt,
                cmd_sn,
                exp_stat_sn: 0,
            }),
            Bytes::copy_from_slice(data),
        )
    }

    fn logout_pdu(itt: u32, cmd_sn: u32, reason: u8, cid: u16) -> RawPdu {
        raw(
            Pdu::LogoutRequest(pdu::LogoutRequest {
                immediate: true,
                reason,
                itt,
                cid,
                cmd_sn,
                exp_stat_sn: 0,
            }),
            Bytes::new(),
        )
    }

    fn pattern(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>()
            .into()
    }

    /// The actions so far, without log lines.
    fn drain(s: &mut Session) -> Vec<Action> {
        let mut v = Vec::new();
        while let Some(a) = s.next_action() {
            if !matches!(a, Action::Log(..)) {
                v.push(a);
            }
        }
        v
    }

    fn executed(actions: &[Action]) -> Vec<u32> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Execute(c) => Some(c.itt),
                _ => None,
            })
            .collect()
    }

    fn good() -> Completion {
        Completion {
            status: 0,
            sense: None,
            data_in: Bytes::new(),
        }
    }

    fn response(actions: &[Action]) -> pdu::ScsiResponse {
        let found: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(Pdu::ScsiResponse(r), _) => Some(r.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(found.len(), 1, "one SCSI Response in {actions:?}");
        found[0].clone()
    }

    fn r2ts(actions: &[Action]) -> Vec<pdu::R2t> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(Pdu::R2t(r), _) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    fn reject(actions: &[Action]) -> (u8, Bytes) {
        match actions {
            [Action::Send(Pdu::Reject(r), data)] => (r.reason, data.clone()),
            other => panic!("expected one Reject, got {other:?}"),
        }
    }

    #[test]
    fn cmd_sn_window_orders_holds_and_drops() {
        let (mut s, now) = session(params());
        assert_eq!((s.exp_cmd_sn(), s.max_cmd_sn()), (10, 13));
        // Ahead of a gap: held, nothing runs.
        s.on_pdu(cmd_pdu(tur(2, 12)), now, &ENV);
        s.on_pdu(cmd_pdu(tur(3, 11)), now, &ENV);
        assert_eq!(drain(&mut s), vec![]);
        assert_eq!(s.exp_cmd_sn(), 10);
        // Outside the window (past MaxCmdSN, or already taken): dropped silently.
        s.on_pdu(cmd_pdu(tur(9, 14)), now, &ENV);
        s.on_pdu(cmd_pdu(tur(9, 9)), now, &ENV);
        assert_eq!(drain(&mut s), vec![]);
        assert_eq!(s.tasks(), 2);
        // The gap fills: all three run in CmdSN order.
        s.on_pdu(cmd_pdu(tur(1, 10)), now, &ENV);
        let a = drain(&mut s);
        assert_eq!(executed(&a), vec![1, 3, 2]);
        assert_eq!(s.exp_cmd_sn(), 13);
        // Three slots taken until they complete: MaxCmdSN stays at 13 (one free slot).
        assert_eq!(s.max_cmd_sn(), 13);
        s.complete(3, good(), &ENV);
        let r = response(&drain(&mut s));
        assert_eq!(
            (r.itt, r.stat_sn, r.exp_cmd_sn, r.max_cmd_sn, r.status),
            (3, 100, 13, 14, 0)
        );
        s.complete(1, good(), &ENV);
        s.complete(2, good(), &ENV);
        let a = drain(&mut s);
        let sns: Vec<(u32, u32)> = a
            .iter()
            .filter_map(|a| match a {
                Action::Send(Pdu::ScsiResponse(r), _) => Some((r.stat_sn, r.max_cmd_sn)),
                _ => None,
            })
            .collect();
        assert_eq!(sns, vec![(101, 15), (102, 16)]);
    }

    #[test]
    fn immediate_commands_do_not_advance_exp_cmd_sn() {
        let (mut s, now) = session(params());
        let mut c = tur(1, 10);
        c.immediate = true;
        s.on_pdu(cmd_pdu(c), now, &ENV);
        assert_eq!(executed(&drain(&mut s)), vec![1]);
        // It holds a slot, but MaxCmdSN never goes back: the window advertised stays open.
        assert_eq!((s.exp_cmd_sn(), s.max_cmd_sn()), (10, 13));
        s.complete(1, good(), &ENV);
        let r = response(&drain(&mut s));
        assert_eq!((r.exp_cmd_sn, r.max_cmd_sn), (10, 13));
        // The next ordered command still uses CmdSN 10.
        s.on_pdu(cmd_pdu(tur(2, 10)), now, &ENV);
        assert_eq!(executed(&drain(&mut s)), vec![2]);
        assert_eq!(s.exp_cmd_sn(), 11);

        // While an immediate command holds a slot, every CmdSN advertised is still taken.
        let (mut s, now) = session(params());
        let mut c = read(1, 10, 512);
        c.immediate = true;
        s.on_pdu(cmd_pdu(c), now, &ENV);
        for (itt, cmd_sn) in (2..6).zip(10..14) {
            s.on_pdu(cmd_pdu(read(itt, cmd_sn, 512)), now, &ENV);
        }
        assert_eq!(executed(&drain(&mut s)), vec![1, 2, 3, 4, 5]);
        assert_eq!((s.exp_cmd_sn(), s.max_cmd_sn()), (14, 13));
        s.on_pdu(cmd_pdu(read(6, 14, 512)), now, &ENV);
        assert_eq!(executed(&drain(&mut s)), vec![]);
    }

    #[test]
    fn immediate_commands_beyond_twice_the_queue_are_rejected() {
        let (mut s, now) = session(params());
        for itt in 0..8 {
            let mut c = tur(itt, 10);
            c.immediate = true;
            s.on_pdu(cmd_pdu(c), now, &ENV);
        }
        assert_eq!(executed(&drain(&mut s)).len(), 8);
        let mut c = tur(8, 10);
        c.immediate = true;
        s.on_pdu(cmd_pdu(c), now, &ENV);
        let (reason, _) = reject(&drain(&mut s));
        assert_eq!(reason, RejectReason::ImmediateCommandReject as u8);
    }

    #[test]
    fn exp_stat_sn_acknowledges_only_statuses_sent() {
        let (mut s, now) = session(params());
        let nop = |exp_stat_sn: u32, itt: u32, cmd_sn: u32| {
            raw(
                Pdu::NopOut(pdu::NopOut {
                    immediate: false,
                    lun: 0,
                    itt,
                    ttt: RESERVED_TAG,
                    cmd_sn,
                    exp_stat_sn,
                    data_len: 0,
                }),
                Bytes::new(),
            )
        };
        s.on_pdu(nop(100, 1, 10), now, &ENV);
        s.on_pdu(nop(101, 2, 11), now, &ENV);
        assert_eq!(s.acked_stat_sn(), 101);
        // Beyond what was sent (StatSN 102 is next): ignored.
        s.on_pdu(nop(200, 3, 12), now, &ENV);
        assert_eq!(s.acked_stat_sn(), 101);
        // Never backwards.
        s.on_pdu(nop(100, 4, 13), now, &ENV);
        assert_eq!(s.acked_stat_sn(), 101);
        let a = drain(&mut s);
        let stat_sns: Vec<u32> = a
            .iter()
            .filter_map(|a| match a {
                Action::Send(Pdu::NopIn(n), _) => Some(n.stat_sn),
                _ => None,
            })
            .collect();
        assert_eq!(stat_sns, vec![100, 101, 102, 103]);
    }

    #[test]
    fn r2ts_split_by_max_burst_length_one_at_a_time() {
        let mut p = params();
        p.initial_r2t = true;
        let (mut s, now) = session(p);
        let payload = pattern(40960, 7);
        s.on_pdu(cmd_pdu(write(5, 10, 40960)), now, &ENV);
        let r = r2ts(&drain(&mut s));
        assert_eq!(r.len(), 1);
        assert_eq!(
            (
                r[0].itt,
                r[0].r2t_sn,
                r[0].buffer_offset,
                r[0].desired_len,
                r[0].stat_sn
            ),
            (5, 0, 0, 16384, 100)
        );
        let mut expect = vec![(1, 16384, 16384), (2, 32768, 8192)];
        let mut off = 0u32;
        let mut ttt = r[0].ttt;
        let mut end = 16384;
        let mut data_sn = 0;
        while off < 40960 {
            let len = 8192.min(end - off);
            let last = off + len == end;
            s.on_pdu(
                data_out(
                    5,
                    ttt,
                    data_sn,
                    off,
                    payload.slice(off as usize..(off + len) as usize),
                    last,
                ),
                now,
                &ENV,
            );
            data_sn += 1;
            off += len;
            let a = drain(&mut s);
            if off == 40960 {
                match &a[..] {
                    [Action::Execute(c)] => {
                        assert_eq!(c.data, payload);
                        assert_eq!((c.itt, c.expected_len, c.write), (5, 40960, true));
                    }
                    other => panic!("expected the command to run: {other:?}"),
                }
            } else if last {
                let r = r2ts(&a);
                assert_eq!(r.len(), 1, "{a:?}");
                let (sn, o, l) = expect.remove(0);
                assert_eq!(
                    (r[0].r2t_sn, r[0].buffer_offset, r[0].desired_len),
                    (sn, o, l)
                );
                assert_ne!(r[0].ttt, ttt);
                ttt = r[0].ttt;
                end = o + l;
                data_sn = 0;
            } else {
                assert_eq!(a, vec![]);
            }
        }
        assert!(expect.is_empty());
    }

    #[test]
    fn r2ts_up_to_max_outstanding_r2t() {
        let mut p = params();
        p.initial_r2t = true;
        p.max_outstanding_r2t = 2;
        p.max_burst_length = 8192;
        let (mut s, now) = session(p);
        s.on_pdu(cmd_pdu(write(5, 10, 32768)), now, &ENV);
        let r = r2ts(&drain(&mut s));
        let got: Vec<_> = r
            .iter()
            .map(|r| (r.r2t_sn, r.buffer_offset, r.desired_len))
            .collect();
        assert_eq!(got, vec![(0, 0, 8192), (1, 8192, 8192)]);
        // The first sequence done: one more R2T, never more than two out.
        s.on_pdu(
            data_out(5, r[0].ttt, 0, 0, pattern(8192, 1), true),
            now,
            &ENV,
        );
        let r3 = r2ts(&drain(&mut s));
        assert_eq!(
            r3.iter()
                .map(|r| (r.r2t_sn, r.buffer_offset, r.desired_len))
                .collect::<Vec<_>>(),
            vec![(2, 16384, 8192)]
        );
        s.on_pdu(
            data_out(5, r[1].ttt, 0, 8192, pattern(8192, 2), true),
            now,
            &ENV,
        );
        let r4 = r2ts(&drain(&mut s));
        assert_eq!(r4[0].r2t_sn, 3);
        s.on_pdu(
            data_out(5, r3[0].ttt, 0, 16384, pattern(8192, 3), true),
            now,
            &ENV,
        );
        assert_eq!(drain(&mut s), vec![]);
        s.on_pdu(
            data_out(5, r4[0].ttt, 0, 24576, pattern(8192, 4), true),
            now,
            &ENV,
        );
        assert_eq!(executed(&drain(&mut s)), vec![5]);
    }

    #[test]
    fn whole_write_in_immediate_data_is_not_copied() {
        let (mut s, now) = session(params());
        let payload = pattern(4096, 3);
        let mut c = write(1, 10, 4096);
        c.data = payload.clone();
        s.on_pdu(cmd_pdu(c), now, &ENV);
        match &drain(&mut s)[..] {
            [Action::Execute(c)] => {
                assert_eq!(c.data, payload);
                assert_eq!(c.data.as_ptr(), payload.as_ptr(), "the PDU's own buffer");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unsolicited_data_up_to_first_burst_then_r2t() {
        let (mut s, now) = session(params());
        let payload = pattern(20480, 9);
        let mut c = write(1, 10, 20480);
        c.final_ = false;
        c.data = payload.slice(..4096);
        s.on_pdu(cmd_pdu(c), now, &ENV);
        // Unsolicited Data-Out up to FirstBurstLength (8192) comes next: no R2T yet.
        assert_eq!(drain(&mut s), vec![]);
        s.on_pdu(
            data_out(1, RESERVED_TAG, 0, 4096, payload.slice(4096..8192), true),
            now,
            &ENV,
        );
        let r = r2ts(&drain(&mut s));
        assert_eq!(
            r.iter()
                .map(|r| (r.r2t_sn, r.buffer_offset, r.desired_len))
                .collect::<Vec<_>>(),
            vec![(0, 8192, 12288)]
        );
        s.on_pdu(
            data_out(1, r[0].ttt, 0, 8192, payload.slice(8192..16384), false),
            now,
            &ENV,
        );
        s.on_pdu(
            data_out(1, r[0].ttt, 1, 16384, payload.slice(16384..), true),
            now,
            &ENV,
        );
        match &drain(&mut s)[..] {
            [Action::Execute(c)] => assert_eq!(c.data, payload),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unsolicited_data_rules_are_enforced() {
        // InitialR2T=Yes: a command announcing unsolicited data (F=0) is rejected.
        let mut p = params();
        p.initial_r2t = true;
        let (mut s, now) = session(p);
        let mut c = write(1, 10, 8192);
        c.final_ = false;
        s.on_pdu(cmd_pdu(c), now, &ENV);
        let (reason, bhs) = reject(&drain(&mut s));
        assert_eq!(reason, RejectReason::ProtocolError as u8);
        assert_eq!(bhs.len(), BHS_LEN);
        // Its CmdSN was consumed: the next one runs.
        s.on_pdu(cmd_pdu(tur(2, 11)), now, &ENV);
        assert_eq!(executed(&drain(&mut s)), vec![2]);

        // Immediate data beyond FirstBurstLength, or with ImmediateData=No: rejected.
        let (mut s, now) = session(params());
        let mut c = write(1, 10, 16384);
        c.data = pattern(12288, 0);
        s.on_pdu(cmd_pdu(c), now, &ENV);
        assert_eq!(reject(&drain(&mut s)).0, RejectReason::ProtocolError as u8);
        let mut p = params();
        p.immediate_data = false;
        let (mut s, now) = session(p);
        let mut c = write(1, 10, 4096);
        c.data = pattern(4096, 0);
        s.on_pdu(cmd_pdu(c), now, &ENV);
        assert_eq!(reject(&drain(&mut s)).0, RejectReason::ProtocolError as u8);

        // Unsolicited Data-Out past FirstBurstLength closes the connection.
        let (mut s, now) = session(params());
        let mut c = write(1, 10, 20480);
        c.final_ = false;
        s.on_pdu(cmd_pdu(c), now, &ENV);
        s.on_pdu(
            data_out(1, RESERVED_TAG, 0, 0, pattern(12288, 0), true),
            now,
            &ENV,
        );
        assert!(matches!(
            &drain(&mut s)[..],
            [Action::Close(CloseReason::Protocol(_))]
        ));
        assert!(s.is_closed());
    }

    #[test]
    fn data_sn_out_of_sequence_fails_the_command_only() {
        let mut p = params();
        p.initial_r2t = true;
        let (mut s, now) = session(p);
        s.on_pdu(cmd_pdu(write(1, 10, 16384)), now, &ENV);
        let r = r2ts(&drain(&mut s));
        s.on_pdu(
            data_out(1, r[0].ttt, 1, 0, pattern(8192, 0), false),
            now,
            &ENV,
        );
        let mut logged = false;
        while let Some(a) = s.next_action() {
            logged |= matches!(a, Action::Log(Level::Warn, ref l) if l.contains("DataSN 1 out of sequence"));
        }
        assert!(logged);
        s.on_pdu(
            data_out(1, r[0].ttt, 2, 8192, pattern(8192, 0), true),
            now,
            &ENV,
        );
        assert_eq!(drain(&mut s), vec![Action::DataPhaseError(1)]);
        s.complete(
            1,
            Completion {
                status: 2,
                sense: Some(vec![0x70, 0, 0x0b]),
                data_in: Bytes::new(),
            },
            &ENV,
        );
        let a = drain(&mut s);
        let r = response(&a);
        assert_eq!((r.status, r.stat_sn, r.exp_data_sn), (2, 100, 0));
        match &a[..] {
            [Action::Finished(_), Action::Send(_, sense)] => {
                assert_eq!(&sense[..], &[0, 3, 0x70, 0, 0x0b]);
            }
            other => panic!("{other:?}"),
        }
        assert!(!s.is_closed());
    }

    #[test]
    fn data_out_breaking_the_r2t_closes_the_connection() {
        let mut p = params();
        p.initial_r2t = true;
        for (ttt_delta, offset, len, final_) in [
            (1u32, 0u32, 4096usize, false), // unknown Target Transfer Tag
            (0, 4096, 4096, false),         // wrong offset
            (0, 0, 20480, false),           // past the R2T's length
            (0, 0, 4096, true),             // F before the R2T's length
        ] {
            let (mut s, now) = session(p.clone());
            s.on_pdu(cmd_pdu(write(1, 10, 16384)), now, &ENV);
            let r = r2ts(&drain(&mut s));
            s.on_pdu(
                data_out(1, r[0].ttt + ttt_delta, 0, offset, pattern(len, 0), final_),
                now,
                &ENV,
            );
            assert!(
                matches!(
                    &drain(&mut s)[..],
                    [Action::Close(CloseReason::Protocol(_))]
                ),
                "case {ttt_delta} {offset} {len} {final_}"
            );
            // Nothing more is taken.
            s.on_pdu(cmd_pdu(tur(2, 11)), now, &ENV);
            assert_eq!(drain(&mut s), vec![]);
        }
    }

    fn data_ins(a: &[Action]) -> Vec<(pdu::DataIn, usize)> {
        a.iter()
            .filter_map(|a| match a {
                Action::Send(Pdu::DataIn(d), data) => Some((d.clone(), data.len())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn data_in_split_by_mrdsl_with_status_in_the_last() {
        let mut p = params();
        p.max_burst_length = 1024 * 1024;
        let (mut s, now) = session(p);
        s.on_pdu(cmd_pdu(read(1, 10, 20480)), now, &ENV);
        assert_eq!(executed(&drain(&mut s)), vec![1]);
        let data = pattern(20480, 5);
        s.complete(
            1,
            Completion {
                status: 0,
                sense: None,
                data_in: data.clone(),
            },
            &ENV,
        );
        let a = drain(&mut s);
        let d = data_ins(&a);
        let fields: Vec<_> = d
            .iter()
            .map(|(d, len)| {
                (
                    d.data_sn,
                    d.buffer_offset,
                    *len,
                    d.final_,
                    d.status_present,
                    d.stat_sn,
                    d.underflow || d.overflow,
                )
            })
            .collect();
        assert_eq!(
            fields,
            vec![
                (0, 0, 8192, false, false, 0, false),
                (1, 8192, 8192, false, false, 0, false),
                (2, 16384, 4096, true, true, 100, false),
            ]
        );
        assert_eq!((d[2].0.exp_cmd_sn, d[2].0.max_cmd_sn), (11, 14));
        // The segments are slices of the one buffer.
        match &a[1] {
            Action::Send(_, seg) => assert_eq!(seg.as_ptr(), data.as_ptr()),
            other => panic!("{other:?}"),
        }
        assert!(!a
            .iter()
            .any(|a| matches!(a, Action::Send(Pdu::ScsiResponse(_), _))));
    }

    #[test]
    fn data_in_final_at_each_burst_and_residuals() {
        // MaxBurstLength 16384: F at the end of each burst.
        let (mut s, now) = session(params());
        s.on_pdu(cmd_pdu(read(1, 10, 32768)), now, &ENV);
        drain(&mut s);
        s.complete(
            1,
            Completion {
                status: 0,
                sense: None,
                data_in: pattern(32768, 0),
            },
            &ENV,
        );
        let f: Vec<bool> = data_ins(&drain(&mut s))
            .iter()
            .map(|(d, _)| d.final_)
            .collect();
        assert_eq!(f, vec![false, true, false, true]);

        // Underflow: less data than the Expected Data Transfer Length.
        let (mut s, now) = session(params());
        s.on_pdu(cmd_pdu(read(1, 10, 8192)), now, &ENV);
        drain(&mut s);
        s.complete(
            1,
            Completion {
                status: 0,
                sense: None,
                data_in: pattern(2048, 0),
            },
            &ENV,
        );
        let d = data_ins(&drain(&mut s));
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].0.underflow, d[0].0.overflow, d[0].0.residual, d[0].1),
            (true, false, 6144, 2048)
        );

        // Overflow: the CDB asks for more than the EDTL; only EDTL bytes go out.
        let (mut s, now) = session(params());
        let mut c = read(1, 10, 8192);
        c.edtl = 4096;
        s.on_pdu(cmd_pdu(c), now, &ENV);
        drain(&mut s);
        s.complete(
            1,
            Completion {
                status: 0,
                sense: None,
                data_in: pattern(8192, 0),
            },
            &ENV,
        );
        let d = data_ins(&drain(&mut s));
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].0.underflow, d[0].0.overflow, d[0].0.residual, d[0].1),
            (false, true, 4096, 4096)
        );

        // A write with a larger EDTL than the CDB's: underflow in the SCSI Response.
        let (mut s, now) = session(params());
        let mut c = write(1, 10, 4096);
        c.edtl = 8192;
        s.on_pdu(cmd_pdu(c), now, &ENV);
        let r = r2ts(&drain(&mut s));
        s.on_pdu(
            data_out(1, r[0].ttt, 0, 0, pattern(8192, 0), true),
            now,
            &ENV,
        );
        match &drain(&mut s)[..] {
            [Action::Execute(c)] => {
                assert_eq!(c.data.len(), 4096, "only what the CDB needs is kept")
            }
            other => panic!("{other:?}"),
        }
        s.complete(1, good(), &ENV);
        let r = response(&drain(&mut s));
        assert_eq!((r.underflow, r.overflow, r.residual), (true, false, 4096));
    }

    #[test]
    fn abort_task_with_data_outstanding() {
        let mut p = params();
        p.initial_r2t = true;
        let (mut s, now) = session(p);
        s.on_pdu(cmd_pdu(write(1, 10, 16384)), now, &ENV);
        let r = r2ts(&drain(&mut s));
        assert_eq!(s.max_cmd_sn(), 13);
        s.on_pdu(tmf_pdu(tmf::ABORT_TASK, 2, 1, 11), now, &ENV);
        match &drain(&mut s)[..] {
            [Action::Send(Pdu::TaskMgmtResponse(t), _)] => {
                assert_eq!(
                    (t.itt, t.response, t.stat_sn, t.max_cmd_sn),
                    (2, tmf::COMPLETE, 100, 14)
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.tasks(), 0);
        // Its data still arriving is discarded, the connection stays.
        s.on_pdu(
            data_out(1, r[0].ttt, 0, 0, pattern(8192, 0), false),
            now,
            &ENV,
        );
        assert_eq!(drain(&mut s), vec![]);
        assert!(!s.is_closed());
        // A tag that is not there.
        s.on_pdu(tmf_pdu(tmf::ABORT_TASK, 3, 77, 8), now, &ENV);
        match &drain(&mut s)[..] {
            [Action::Send(Pdu::TaskMgmtResponse(t), _)] => {
                assert_eq!(t.response, tmf::TASK_DOES_NOT_EXIST)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn abort_of_a_running_task_answers_when_it_stops() {
        let (mut s, now) = session(params());
        s.on_pdu(cmd_pdu(read(1, 10, 4096)), now, &ENV);
        s.on_pdu(cmd_pdu(read(2, 11, 4096)), now, &ENV);
        drain(&mut s);
        s.on_pdu(tmf_pdu(tmf::ABORT_TASK_SET, 9, 0, 12), now, &ENV);
        assert_eq!(drain(&mut s), vec![]);
        s.complete(1, good(), &ENV);
        assert_eq!(drain(&mut s), vec![]);
        s.complete(2, good(), &ENV);
        match &drain(&mut s)[..] {
            [Action::Send(Pdu::TaskMgmtResponse(t), _)] => {
                assert_eq!((t.itt, t.response, t.stat_sn), (9, tmf::COMPLETE, 100))
            }
            other => panic!("{other:?}"),
        }
        // LUN RESET of a LUN that does not exist; a reset of one that does reaches the logical unit.
        let mut t = tmf_pdu(tmf::LOGICAL_UNIT_RESET, 10, 0, 12);
        t.bhs[8] = 0x00;
        t.bhs[9] = 0x05;
        s.on_pdu(t, now, &ENV);
        match &drain(&mut s)[..] {
            [Action::Send(Pdu::TaskMgmtResponse(t), _)] => {
                assert_eq!(t.response, tmf::LUN_DOES_NOT_EXIST)
            }
            other => panic!("{other:?}"),
        }
        s.on_pdu(tmf_pdu(tmf::LOGICAL_UNIT_RESET, 11, 0, 12), now, &ENV);
        match &drain(&mut s)[..] {
            [Action::Reset(ResetScope::Lun(0)), Action::Send(Pdu::TaskMgmtResponse(t), _)] => {
                assert_eq!(t.response, tmf::COMPLETE)
            }
            other => panic!("{other:?}"),
        }
        s.on_pdu(tmf_pdu(tmf::TARGET_COLD_RESET, 12, 0, 12), now, &ENV);
        match &drain(&mut s)[..] {
            [Action::Reset(ResetScope::Target), Action::Send(Pdu::TaskMgmtResponse(_), _), Action::Close(CloseReason::ColdReset)] =>
                {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nop_out_is_echoed() {
        let (mut s, now) = session(params());
        s.on_pdu(
            nop_out(7, RESERVED_TAG, 10, false, Bytes::from_static(b"ping")),
            now,
            &ENV,
        );
        match &drain(&mut s)[..] {
            [Action::Send(Pdu::NopIn(n), data)] => {
                // The NOP-Out's slot is given back after its answer is made.
                assert_eq!(
                    (n.itt, n.ttt, n.stat_sn, n.exp_cmd_sn, n.max_cmd_sn),
                    (7, RESERVED_TAG, 100, 11, 13)
                );
                assert_eq!(&data[..], b"ping");
            }
            other => panic!("{other:?}"),
        }
        // A non-immediate NOP-Out with the reserved ITT breaks the rules.
        s.on_pdu(
            nop_out(RESERVED_TAG, RESERVED_TAG, 11, false, Bytes::new()),
            now,
            &ENV,
        );
        assert_eq!(reject(&drain(&mut s)).0, RejectReason::ProtocolError as u8);
    }

    #[test]
    fn nop_ping_and_its_timeout() {
        let (mut s, t0) = session(params());
        assert_eq!(s.deadline(), t0 + Duration::from_secs(5));
        s.on_timer(t0 + Duration::from_secs(4));
        assert_eq!(drain(&mut s), vec![]);
        let t1 = t0 + Duration::from_secs(5);
        s.on_timer(t1);
        let ttt = match &drain(&mut s)[..] {
            [Action::Send(Pdu::NopIn(n), _)] => {
                assert_eq!((n.itt, n.stat_sn), (RESERVED_TAG, 100));
                assert_ne!(n.ttt, RESERVED_TAG);
                n.ttt
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(s.deadline(), t1 + Duration::from_secs(10));
        // The answer clears it.
        let t2 = t1 + Duration::from_secs(3);
        s.on_pdu(nop_out(RESERVED_TAG, ttt, 10, true, Bytes::new()), t2, &ENV);
        assert_eq!(drain(&mut s), vec![]);
        assert_eq!(s.stat_sn(), 100);
        assert_eq!(s.deadline(), t2 + Duration::from_secs(5));
        // No answer this time: closed once NopTimeout has passed.
        let t3 = t2 + Duration::from_secs(5);
        s.on_timer(t3);
        assert!(matches!(
            &drain(&mut s)[..],
            [Action::Send(Pdu::NopIn(_), _)]
        ));
        s.on_timer(t3 + Duration::from_millis(9999));
        assert_eq!(drain(&mut s), vec![]);
        assert_eq!(s.deadline(), t3 + Duration::from_secs(10));
        s.on_timer(s.deadline());
        assert_eq!(drain(&mut s), vec![Action::Close(CloseReason::NopTimeout)]);
        // Nothing after the close.
        s.on_timer(t3 + Duration::from_secs(20));
        s.on_pdu(cmd_pdu(tur(1, 10)), t3, &ENV);
        assert_eq!(drain(&mut s), vec![]);
        assert!(s.is_closed());
    }

    fn text_responses(a: &[Action]) -> Vec<(pdu::TextResponse, Bytes)> {
        a.iter()
            .filter_map(|a| match a {
                Action::Send(Pdu::TextResponse(t), d) => Some((t.clone(), d.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn text_response_continues_over_several_pdus() {
        let mut p = params();
        p.session_type = SessionType::Discovery;
        let env = Env { targets: 200 };
        let (mut s, now) = session(p);
        s.on_pdu(
            text_pdu(1, RESERVED_TAG, 10, false, b"SendTargets=All\0"),
            now,
            &env,
        );
        let mut body = Vec::new();
        let mut t = text_responses(&drain(&mut s));
        let mut cmd_sn = 11;
        let mut parts = 0;
        loop {
            assert_eq!(t.len(), 1);
            let (r, d) = t.remove(0);
            assert!(d.len() <= 8192);
            body.extend_from_slice(&d);
            parts += 1;
            if r.final_ {
                assert_eq!((r.cont, r.ttt), (false, RESERVED_TAG));
                break;
            }
            assert!(r.cont);
            assert_eq!(d.len(), 8192);
            s.on_pdu(text_pdu(1, r.ttt, cmd_sn, false, b""), now, &env);
            cmd_sn += 1;
            t = text_responses(&drain(&mut s));
        }
        assert!(parts > 1);
        // Every pair came through whole, in order.
        let pairs: Vec<&[u8]> = body.split(|&b| b == 0).filter(|p| !p.is_empty()).collect();
        assert_eq!(pairs.len(), 400);
        assert_eq!(pairs[398], b"TargetName=iqn.2025-08.test:target-0199");
        // A continuation on a tag of no exchange is rejected.
        s.on_pdu(text_pdu(1, 4242, cmd_sn, false, b""), now, &env);
        assert_eq!(
            reject(&drain(&mut s)).0,
            RejectReason::InvalidPduField as u8
        );
    }

    #[test]
    fn text_request_continues_with_the_c_bit() {
        let (mut s, now) = session(params());
        s.on_pdu(text_pdu(1, RESERVED_TAG, 10, true, b"SendTarg"), now, &ENV);
        let t = text_responses(&drain(&mut s));
        assert_eq!(t.len(), 1);
        let (r, d) = &t[0];
        assert_eq!(
            (r.final_, r.cont, d.len(), r.stat_sn),
            (false, false, 0, 100)
        );
        assert_ne!(r.ttt, RESERVED_TAG);
        s.on_pdu(text_pdu(1, r.ttt, 11, false, b"ets=\0Foo=1\0"), now, &ENV);
        let t = text_responses(&drain(&mut s));
        let pairs = TextPairs::parse(&t[0].1).expect("text");
        assert_eq!(
            pairs.value("TargetName"),
            Some("iqn.2025-08.test:target-0000")
        );
        assert_eq!(pairs.value("Foo"), Some("NotUnderstood"));
        assert!(t[0].0.final_);
    }

    #[test]
    fn logout_waits_for_running_commands() {
        let (mut s, now) = session(params());
        s.on_pdu(cmd_pdu(read(1, 10, 4096)), now, &ENV);
        drain(&mut s);
        s.on_pdu(logout_pdu(2, 11, 0, 9), now, &ENV);
        assert_eq!(drain(&mut s), vec![]);
        // Anything but Data-Out is refused while the logout is pending.
        s.on_pdu(cmd_pdu(tur(3, 11)), now, &ENV);
        assert_eq!(
            reject(&drain(&mut s)).0,
            RejectReason::WaitingForLogout as u8
        );
        s.complete(1, good(), &ENV);
        let a = drain(&mut s);
        match &a[..] {
            [Action::Finished(_), Action::Send(Pdu::ScsiResponse(r), _), Action::Send(Pdu::LogoutResponse(l), _), Action::Close(CloseReason::Logout)] =>
            {
                // StatSN 100 went to the Reject.
                assert_eq!((r.stat_sn, l.stat_sn, l.itt, l.response), (101, 102, 2, 0));
            }
            other => panic!("{other:?}"),
        }
        assert!(s.is_closed());
    }

    #[test]
    fn logout_of_another_connection_is_refused() {
        let (mut s, now) = session(params());
        s.on_pdu(logout_pdu(2, 10, 1, 9), now, &ENV);
        match &drain(&mut s)[..] {
            [Action::Send(Pdu::LogoutResponse(l), _)] => assert_eq!(l.response, 1),
            other => panic!("{other:?}"),
        }
        assert!(!s.is_closed());
        s.on_pdu(logout_pdu(3, 10, 1, 1), now, &ENV);
        assert!(matches!(
            &drain(&mut s)[..],
            [
                Action::Send(Pdu::LogoutResponse(_), _),
                Action::Close(CloseReason::Logout)
            ]
        ));
    }

    #[test]
    fn snack_target_opcodes_and_bad_frames() {
        let (mut s, now) = session(params());
        let snack = raw(
            Pdu::SnackRequest(pdu::SnackRequest {
                kind: 0,
                lun: 0,
                itt: 1,
                ttt: RESERVED_TAG,
                exp_stat_sn: 0,
                beg_run: 0,
                run_length: 0,
            }),
            Bytes::new(),
        );
        s.on_pdu(snack, now, &ENV);
        assert_eq!(reject(&drain(&mut s)).0, RejectReason::ProtocolError as u8);
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = 0x1c; // no such opcode
        s.on_pdu(
            RawPdu {
                bhs,
                ahs: Bytes::new(),
                data: Bytes::new(),
            },
            now,
            &ENV,
        );
        assert_eq!(
            reject(&drain(&mut s)).0,
            RejectReason::CommandNotSupported as u8
        );
        s.on_frame_error(
            DecodeError::Reject {
                bhs: Box::new(bhs),
                error: crate::error::ProtocolError::DataDigest {
                    received: 1,
                    computed: 2,
                },
            },
            now,
        );
        assert_eq!(reject(&drain(&mut s)).0, RejectReason::DataDigest as u8);
        s.on_frame_error(
            DecodeError::Fatal(crate::error::ProtocolError::HeaderDigest {
                received: 1,
                computed: 2,
            }),
            now,
        );
        assert!(matches!(
            &drain(&mut s)[..],
            [Action::Close(CloseReason::Protocol(_))]
        ));
    }

    #[test]
    fn discovery_sessions_take_no_scsi_commands() {
        let mut p = params();
        p.session_type = SessionType::Discovery;
        let (mut s, now) = session(p);
        s.on_pdu(cmd_pdu(tur(1, 10)), now, &ENV);
        assert_eq!(reject(&drain(&mut s)).0, RejectReason::ProtocolError as u8);
    }

    #[test]
    fn reused_tag_is_rejected() {
        let (mut s, now) = session(params());
        s.on_pdu(cmd_pdu(read(1, 10, 512)), now, &ENV);
        drain(&mut s);
        s.on_pdu(cmd_pdu(read(1, 11, 512)), now, &ENV);
        assert_eq!(reject(&drain(&mut s)).0, RejectReason::TaskInProgress as u8);
        // Its CmdSN passed: the window moved on.
        assert_eq!(s.exp_cmd_sn(), 12);
    }
}
