//! A small blocking iSCSI initiator for the acceptance tests.
//!
//! It frames PDUs itself, written independently of `twinsan_iscsi::frame`, so a test can get any length, digest
//! or sequence number wrong on purpose; it uses `twinsan_iscsi::pdu` only to encode and decode the 48-byte
//! headers. Everything the target sends back is checked: digests, padding, a target opcode, a data segment no
//! larger than the MaxRecvDataSegmentLength this initiator declared.
//!
//! The API in a few lines:
//! - [`LoginOptions`] says what the single Login Request carries (names, ISID, TSIH, session type, digests,
//!   MaxRecvDataSegmentLength, extra keys); [`MiniInitiator::attempt`] sends it and returns the target's answer
//!   whatever its status, [`MiniInitiator::login`] insists on a session in the full feature phase.
//! - [`MiniInitiator::send`] / [`MiniInitiator::send_damaged`] write one PDU (the latter with a broken digest);
//!   [`MiniInitiator::recv_raw`] reads the next PDU, [`MiniInitiator::recv`] does the same but answers the
//!   target's NOP-In pings on the way.
//! - [`MiniInitiator::write10`], [`MiniInitiator::read10`], [`MiniInitiator::ping`], [`MiniInitiator::text`]
//!   and [`MiniInitiator::logout`] run whole exchanges.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use twinsan_iscsi::frame::crc32c;
use twinsan_iscsi::pdu::{self, Pdu, BHS_LEN, RESERVED_TAG};
use twinsan_iscsi::text::TextPairs;

/// LUN 1 in the 8-byte LUN field (peripheral addressing).
pub const LUN1: u64 = 1 << 48;
/// The logical block size of the LUNs `twinsan serve` exports.
pub const BLOCK: usize = 512;
/// The MaxRecvDataSegmentLength this initiator declares unless a test chooses another.
pub const DEFAULT_MRDSL: u32 = 262_144;
/// During login each side may send at most 8192 bytes of text per PDU (RFC 7143 section 13.12).
const LOGIN_MRDSL: u32 = 8192;
/// The ITT of the Login Request.
pub const LOGIN_ITT: u32 = 0x1000;

// ---------------------------------------------------------------------------------------------------------------
// Framing.

/// Which CRC32C digests a connection uses (or a frame carries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

impl Digests {
    /// No digests.
    pub const NONE: Digests = Digests {
        header: false,
        data: false,
    };
    /// CRC32C header and data digests.
    pub const CRC32C: Digests = Digests {
        header: true,
        data: true,
    };
}

/// `n` rounded up to a multiple of 4 (the padding of data segments).
pub fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// One PDU as bytes: BHS, AHS, header digest, data padded to 4 bytes, data digest.
pub fn frame_with_ahs(bhs: &[u8; BHS_LEN], ahs: &[u8], data: &[u8], d: Digests) -> Vec<u8> {
    let mut out = Vec::with_capacity(BHS_LEN + ahs.len() + 8 + pad4(data.len()));
    out.extend_from_slice(bhs);
    out.extend_from_slice(ahs);
    if d.header {
        let crc = crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    if !data.is_empty() {
        let start = out.len();
        out.extend_from_slice(data);
        out.resize(start + pad4(data.len()), 0);
        if d.data {
            let crc = crc32c(&out[start..]);
            out.extend_from_slice(&crc.to_le_bytes());
        }
    }
    out
}

/// One PDU without AHS as bytes.
pub fn frame(bhs: &[u8; BHS_LEN], data: &[u8], d: Digests) -> Vec<u8> {
    frame_with_ahs(bhs, &[], data, d)
}

/// A PDU received from the target, digests checked.
#[derive(Debug)]
pub struct Incoming {
    pub pdu: Pdu,
    pub data: Vec<u8>,
}

/// Why no PDU was received.
#[derive(Debug)]
pub enum RecvError {
    /// Nothing arrived before the deadline (the stream is still in sync).
    Timeout,
    /// The target closed the connection (end of stream or reset) between PDUs.
    Closed,
    /// Anything else: a broken PDU, a close in the middle of one, an I/O error.
    Broken(String),
}

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecvError::Timeout => write!(f, "no PDU before the deadline"),
            RecvError::Closed => write!(f, "the target closed the connection"),
            RecvError::Broken(why) => write!(f, "{why}"),
        }
    }
}

/// Fills `buf` before `deadline`. `mid_pdu` says whether a PDU has already begun (a timeout or close is then an
/// error rather than an answer).
fn read_full(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    mid_pdu: bool,
) -> Result<(), RecvError> {
    let mut filled = 0;
    while filled < buf.len() {
        let now = Instant::now();
        if now >= deadline {
            return Err(if !mid_pdu && filled == 0 {
                RecvError::Timeout
            } else {
                RecvError::Broken(format!(
                    "timed out in the middle of a PDU ({filled}/{} bytes)",
                    buf.len()
                ))
            });
        }
        let wait = (deadline - now).max(Duration::from_millis(1));
        stream
            .set_read_timeout(Some(wait))
            .map_err(|e| RecvError::Broken(format!("set_read_timeout: {e}")))?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) if !mid_pdu && filled == 0 => return Err(RecvError::Closed),
            Ok(0) => {
                return Err(RecvError::Broken(
                    "connection closed in the middle of a PDU".into(),
                ))
            }
            Ok(n) => filled += n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                return Err(RecvError::Closed)
            }
            Err(e) => return Err(RecvError::Broken(format!("read: {e}"))),
        }
    }
    Ok(())
}

/// Reads one PDU sent by the target and checks it: digests, padding, a target opcode, a data segment of at most
/// `max_data_len` bytes (the MaxRecvDataSegmentLength the reader declared).
pub fn recv_pdu(
    stream: &mut TcpStream,
    d: Digests,
    max_data_len: u32,
    deadline: Instant,
) -> Result<Incoming, RecvError> {
    let mut bhs = [0u8; BHS_LEN];
    read_full(stream, &mut bhs, deadline, false)?;
    let ahs_len = pdu::ahs_len_of(&bhs);
    let data_len = pdu::data_len_of(&bhs) as usize;
    if data_len > max_data_len as usize {
        return Err(RecvError::Broken(format!(
            "target sent a {data_len}-byte data segment (opcode {:#04x}), over our MaxRecvDataSegmentLength \
             {max_data_len}",
            pdu::opcode_of(&bhs)
        )));
    }
    let mut ahs = vec![0u8; ahs_len];
    read_full(stream, &mut ahs, deadline, true)?;
    if d.header {
        let mut crc = [0u8; 4];
        read_full(stream, &mut crc, deadline, true)?;
        let mut covered = bhs.to_vec();
        covered.extend_from_slice(&ahs);
        if u32::from_le_bytes(crc) != crc32c(&covered) {
            return Err(RecvError::Broken(
                "target sent a PDU with a wrong header digest".into(),
            ));
        }
    }
    let mut data = vec![0u8; pad4(data_len)];
    read_full(stream, &mut data, deadline, true)?;
    if d.data && data_len > 0 {
        let mut crc = [0u8; 4];
        read_full(stream, &mut crc, deadline, true)?;
        if u32::from_le_bytes(crc) != crc32c(&data) {
            return Err(RecvError::Broken(
                "target sent a PDU with a wrong data digest".into(),
            ));
        }
    }
    data.truncate(data_len);
    let op = pdu::opcode_of(&bhs);
    if op & 0x20 == 0 {
        return Err(RecvError::Broken(format!(
            "target sent an initiator opcode {op:#04x}"
        )));
    }
    let pdu = Pdu::decode(&bhs)
        .map_err(|e| RecvError::Broken(format!("target sent an undecodable PDU: {e}")))?;
    Ok(Incoming { pdu, data })
}

/// A TCP connection to `addr` with Nagle off and a write timeout.
pub fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true)
        .map_err(|e| format!("set_nodelay: {e}"))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| format!("set_write_timeout: {e}"))?;
    Ok(s)
}

/// Waits for the target to close `stream` without sending anything. Returns how long that took; panics with
/// `what` otherwise.
pub fn expect_closed(stream: &mut TcpStream, within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    match recv_pdu(stream, Digests::NONE, DEFAULT_MRDSL, start + within) {
        Err(RecvError::Closed) => start.elapsed(),
        Err(RecvError::Timeout) => {
            panic!("{what}: the target kept the connection open for {within:?}")
        }
        Err(RecvError::Broken(why)) => panic!("{what}: {why}"),
        Ok(p) => panic!(
            "{what}: the target answered with {:?} instead of closing",
            p.pdu
        ),
    }
}

/// A fresh ISID: type 0x80 ("random" format) plus a per-process counter, so every session is a distinct I_T
/// nexus unless a test reuses an ISID on purpose.
pub fn unique_isid() -> [u8; 6] {
    static N: AtomicU64 = AtomicU64::new(1);
    let n = N.fetch_add(1, Ordering::SeqCst);
    [
        0x80,
        0x42,
        (n >> 24) as u8,
        (n >> 16) as u8,
        (n >> 8) as u8,
        n as u8,
    ]
}

/// The initiator IQN the tests use for a short name.
pub fn initiator_iqn(short: &str) -> String {
    format!("iqn.2025-01.test.twinsan.initiator:{short}")
}

/// A READ(10) (0x28) or WRITE(10) (0x2a) CDB.
pub fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = op;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

// ---------------------------------------------------------------------------------------------------------------
// Login.

/// What the single Login Request (CSG=1 operational, NSG=3 full feature, T=1, no authentication) carries.
#[derive(Clone, Debug)]
pub struct LoginOptions {
    /// InitiatorName; None leaves the key out.
    pub initiator_name: Option<String>,
    /// TargetName; None leaves the key out (discovery sessions).
    pub target_name: Option<String>,
    /// SessionType value ("Normal", "Discovery" or anything else on purpose); None leaves the key out.
    pub session_type: Option<String>,
    pub isid: [u8; 6],
    /// 0 for a new session (or session reinstatement); anything else asks to join that session.
    pub tsih: u16,
    pub version_max: u8,
    pub version_min: u8,
    /// Digests asked for (and, if the target agrees, used after login).
    pub digests: Digests,
    /// The MaxRecvDataSegmentLength declared: the target must never send a larger data segment after login.
    pub max_recv_data_segment_length: u32,
    /// More keys, sent after the standard ones in this order.
    pub extra_keys: Vec<(String, String)>,
}

impl LoginOptions {
    /// A normal session of initiator `iqn.2025-01.test.twinsan.initiator:SHORT` to `target`, with a fresh ISID,
    /// no digests and the default MaxRecvDataSegmentLength.
    pub fn normal(target: &str, short: &str) -> LoginOptions {
        LoginOptions {
            initiator_name: Some(initiator_iqn(short)),
            target_name: Some(target.to_owned()),
            session_type: Some("Normal".into()),
            isid: unique_isid(),
            tsih: 0,
            version_max: 0,
            version_min: 0,
            digests: Digests::NONE,
            max_recv_data_segment_length: DEFAULT_MRDSL,
            extra_keys: Vec::new(),
        }
    }

    /// A discovery session (SessionType=Discovery, no TargetName).
    pub fn discovery(short: &str) -> LoginOptions {
        LoginOptions {
            target_name: None,
            session_type: Some("Discovery".into()),
            ..LoginOptions::normal("", short)
        }
    }

    fn is_discovery(&self) -> bool {
        self.session_type.as_deref() == Some("Discovery")
    }

    fn text(&self) -> Vec<u8> {
        let digest = |on: bool| if on { "CRC32C" } else { "None" };
        let mut text = TextPairs::default();
        if let Some(n) = &self.initiator_name {
            text.push("InitiatorName", n.clone());
        }
        if let Some(t) = &self.target_name {
            text.push("TargetName", t.clone());
        }
        if let Some(s) = &self.session_type {
            text.push("SessionType", s.clone());
        }
        text.push("HeaderDigest", digest(self.digests.header));
        text.push("DataDigest", digest(self.digests.data));
        text.push(
            "MaxRecvDataSegmentLength",
            self.max_recv_data_segment_length.to_string(),
        );
        if !self.is_discovery() {
            // Keys that are irrelevant in a discovery session (RFC 7143 section 13).
            text.push("InitialR2T", "Yes");
            text.push("ImmediateData", "Yes");
            text.push("FirstBurstLength", "65536");
            text.push("MaxBurstLength", "262144");
            text.push("MaxOutstandingR2T", "1");
        }
        text.push("ErrorRecoveryLevel", "0");
        for (k, v) in &self.extra_keys {
            text.push(k.clone(), v.clone());
        }
        text.encode()
    }
}

/// The target's answer to the Login Request.
#[derive(Clone, Debug)]
pub struct LoginReply {
    pub response: pdu::LoginResponse,
    /// The keys the target answered with (empty on a refusal).
    pub keys: TextPairs,
}

impl LoginReply {
    /// Status-Class and Status-Detail as one number, e.g. 0x0203 for "target not found".
    pub fn status(&self) -> u16 {
        u16::from(self.response.status_class) << 8 | u16::from(self.response.status_detail)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The initiator.

/// The reassembled answer of a text exchange and the headers of the Text Responses that carried it.
#[derive(Debug)]
pub struct TextAnswer {
    pub pairs: TextPairs,
    pub responses: Vec<pdu::TextResponse>,
}

/// What a SCSI command ended with.
#[derive(Debug)]
pub struct ScsiOutcome {
    pub status: u8,
    pub data: Vec<u8>,
    pub sense: Vec<u8>,
}

/// Which digest [`MiniInitiator::send_damaged`] breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The header digest: the target must drop the connection.
    HeaderDigest,
    /// The data digest: the target must reject the PDU (reason 0x02) and go on.
    DataDigest,
}

/// One connection (and its session) of the small initiator. Fields are public so a test can put any value in
/// the next PDU; the helpers keep CmdSN, ExpStatSN and the ITTs consistent.
pub struct MiniInitiator {
    pub stream: TcpStream,
    /// A short label for messages (the initiator name).
    pub name: String,
    /// Digests in force (none before or after a refused login).
    pub digests: Digests,
    /// The MaxRecvDataSegmentLength this initiator declared.
    pub our_mrdsl: u32,
    /// CmdSN of the next non-immediate command.
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub next_itt: u32,
    /// The target's MaxRecvDataSegmentLength (8192 unless it declared another).
    pub target_mrdsl: u32,
    pub first_burst: u32,
    pub immediate_data: bool,
    pub isid: [u8; 6],
    /// The session's TSIH (0 if the login was refused).
    pub tsih: u16,
}

impl MiniInitiator {
    /// Connects and sends the Login Request; returns the connection and the target's answer whatever its status.
    pub fn attempt(
        addr: SocketAddr,
        opts: &LoginOptions,
    ) -> Result<(MiniInitiator, LoginReply), String> {
        let stream = connect(addr)?;
        Self::attempt_on(stream, opts)
    }

    /// Sends the Login Request on an open connection; returns it with the target's answer whatever its status.
    pub fn attempt_on(
        mut stream: TcpStream,
        opts: &LoginOptions,
    ) -> Result<(MiniInitiator, LoginReply), String> {
        let name = opts
            .initiator_name
            .as_deref()
            .map(|n| n.rsplit(':').next().unwrap_or(n).to_owned())
            .unwrap_or_else(|| "(no InitiatorName)".into());
        let body = opts.text();
        let req = Pdu::LoginRequest(pdu::LoginRequest {
            transit: true,
            cont: false,
            csg: 1,
            nsg: 3,
            version_max: opts.version_max,
            version_min: opts.version_min,
            data_len: body.len() as u32,
            isid: opts.isid,
            tsih: opts.tsih,
            itt: LOGIN_ITT,
            cid: 1,
            cmd_sn: 1,
            exp_stat_sn: 0,
        });
        stream
            .write_all(&frame(&req.encode(), &body, Digests::NONE))
            .map_err(|e| format!("{name}: sending the Login Request: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let resp = recv_pdu(&mut stream, Digests::NONE, LOGIN_MRDSL, deadline)
            .map_err(|e| format!("{name}: waiting for the Login Response: {e}"))?;
        let Pdu::LoginResponse(r) = resp.pdu else {
            return Err(format!(
                "{name}: expected a Login Response, got {:?}",
                resp.pdu
            ));
        };
        let keys = TextPairs::parse(&resp.data)
            .map_err(|e| format!("{name}: login response text: {e}"))?;
        let reply = LoginReply { response: r, keys };
        let accepted = reply.status() == 0;
        let number = |key: &str, default: u32| -> Result<u32, String> {
            match reply.keys.value(key) {
                None => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| format!("{name}: {key}={v} is not a number")),
            }
        };
        let m = MiniInitiator {
            target_mrdsl: number("MaxRecvDataSegmentLength", 8192)?,
            first_burst: number("FirstBurstLength", 65536)?,
            immediate_data: reply.keys.value("ImmediateData").unwrap_or("Yes") == "Yes",
            stream,
            name,
            digests: if accepted {
                opts.digests
            } else {
                Digests::NONE
            },
            our_mrdsl: opts.max_recv_data_segment_length,
            cmd_sn: reply.response.exp_cmd_sn,
            exp_stat_sn: reply.response.stat_sn.wrapping_add(1),
            next_itt: 1,
            isid: opts.isid,
            tsih: reply.response.tsih,
        };
        Ok((m, reply))
    }

    /// Connects and logs in straight to the full feature phase; fails unless the target accepted the login
    /// with the digests asked for.
    pub fn login(addr: SocketAddr, opts: &LoginOptions) -> Result<MiniInitiator, String> {
        let (m, reply) = Self::attempt(addr, opts)?;
        let r = &reply.response;
        let name = &m.name;
        if r.status_class != 0 || !r.transit || r.nsg != 3 || r.tsih == 0 || r.itt != LOGIN_ITT {
            return Err(format!(
                "{name}: login not accepted: class {:#04x} detail {:#04x} T={} NSG={} TSIH={} ITT={:#x}; keys {:?}",
                r.status_class, r.status_detail, r.transit, r.nsg, r.tsih, r.itt, reply.keys
            ));
        }
        let digest = |on: bool| if on { "CRC32C" } else { "None" };
        for (key, on) in [
            ("HeaderDigest", opts.digests.header),
            ("DataDigest", opts.digests.data),
        ] {
            if reply.keys.value(key) != Some(digest(on)) {
                return Err(format!(
                    "{name}: asked {key}={}, the target answered {:?}",
                    digest(on),
                    reply.keys.value(key)
                ));
            }
        }
        Ok(m)
    }

    /// The next Initiator Task Tag (never 0 or the reserved 0xffffffff).
    pub fn itt(&mut self) -> u32 {
        let t = self.next_itt;
        self.next_itt = self.next_itt.wrapping_add(1);
        if self.next_itt == RESERVED_TAG || self.next_itt == 0 {
            self.next_itt = 1;
        }
        t
    }

    /// Writes raw bytes (anything, framed or not).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .map_err(|e| format!("{}: write: {e}", self.name))
    }

    /// Writes one PDU framed with the negotiated digests. The PDU's data length must match `data`.
    pub fn send(&mut self, p: &Pdu, data: &[u8]) -> Result<(), String> {
        assert_eq!(
            p.data_len() as usize,
            data.len(),
            "PDU data length field and data disagree"
        );
        let bytes = frame(&p.encode(), data, self.digests);
        self.send_raw(&bytes)
    }

    /// Writes one PDU with a broken digest (that digest must have been negotiated; a data digest needs data).
    pub fn send_damaged(&mut self, p: &Pdu, data: &[u8], damage: Damage) -> Result<(), String> {
        assert_eq!(
            p.data_len() as usize,
            data.len(),
            "PDU data length field and data disagree"
        );
        let mut bytes = frame(&p.encode(), data, self.digests);
        match damage {
            Damage::HeaderDigest => {
                assert!(self.digests.header, "no header digest to damage");
                bytes[BHS_LEN] ^= 0xff; // first byte of the header digest (no AHS)
            }
            Damage::DataDigest => {
                assert!(
                    self.digests.data && !data.is_empty(),
                    "no data digest to damage"
                );
                let n = bytes.len();
                bytes[n - 1] ^= 0x5a; // last byte of the data digest
            }
        }
        self.send_raw(&bytes)
    }

    /// The next PDU from the target, whatever it is (NOP-In pings included, unanswered). Keeps ExpStatSN.
    pub fn recv_raw(&mut self, within: Duration) -> Result<Incoming, RecvError> {
        let p = recv_pdu(
            &mut self.stream,
            self.digests,
            self.our_mrdsl,
            Instant::now() + within,
        )?;
        let stat_sn = match &p.pdu {
            // A ping's StatSN is the next one, not a new one (RFC 7143 section 11.19).
            Pdu::NopIn(n) if n.itt == RESERVED_TAG => None,
            Pdu::NopIn(n) => Some(n.stat_sn),
            Pdu::ScsiResponse(r) => Some(r.stat_sn),
            Pdu::DataIn(d) if d.status_present => Some(d.stat_sn),
            Pdu::TextResponse(t) => Some(t.stat_sn),
            Pdu::LogoutResponse(l) => Some(l.stat_sn),
            Pdu::TaskMgmtResponse(t) => Some(t.stat_sn),
            Pdu::Reject(r) => Some(r.stat_sn),
            Pdu::AsyncMessage(a) => Some(a.stat_sn),
            _ => None,
        };
        if let Some(sn) = stat_sn {
            self.exp_stat_sn = sn.wrapping_add(1);
        }
        Ok(p)
    }

    /// The next PDU that is not a NOP-In ping; pings met on the way are answered.
    pub fn recv(&mut self, within: Duration) -> Result<Incoming, RecvError> {
        let deadline = Instant::now() + within;
        loop {
            let p = self.recv_raw(deadline.saturating_duration_since(Instant::now()))?;
            if let Pdu::NopIn(n) = &p.pdu {
                if n.itt == RESERVED_TAG {
                    self.answer_ping(n).map_err(RecvError::Broken)?;
                    continue;
                }
            }
            return Ok(p);
        }
    }

    /// Answers a target's NOP-In ping: an immediate NOP-Out, ITT reserved, its TTT and LUN echoed.
    pub fn answer_ping(&mut self, ping: &pdu::NopIn) -> Result<(), String> {
        let pong = Pdu::NopOut(pdu::NopOut {
            immediate: true,
            lun: ping.lun,
            itt: RESERVED_TAG,
            ttt: ping.ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data_len: 0,
        });
        self.send(&pong, &[])
    }

    /// An immediate NOP-Out ping with `payload`, answered by a NOP-In echoing it.
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), String> {
        let itt = self.itt();
        let p = self.nop_out(itt, payload);
        self.send(&p, payload)?;
        let r = self
            .recv(Duration::from_secs(10))
            .map_err(|e| format!("{}: waiting for the NOP-In: {e}", self.name))?;
        match &r.pdu {
            Pdu::NopIn(n) if n.itt == itt && r.data == payload => Ok(()),
            other => Err(format!(
                "{}: expected the NOP-In echo of ITT {itt:#x}, got {other:?}",
                self.name
            )),
        }
    }

    /// An immediate NOP-Out asking for an answer (not yet sent).
    pub fn nop_out(&self, itt: u32, payload: &[u8]) -> Pdu {
        Pdu::NopOut(pdu::NopOut {
            immediate: true,
            lun: 0,
            itt,
            ttt: RESERVED_TAG,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data_len: payload.len() as u32,
        })
    }

    /// A SCSI Command PDU to LUN 1 for `cdb`, taking the next CmdSN (not yet sent).
    pub fn command(
        &mut self,
        itt: u32,
        cdb: [u8; 16],
        write_len: usize,
        read_len: usize,
        imm: usize,
    ) -> Pdu {
        let cmd_sn = self.cmd_sn;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        Pdu::ScsiCommand(pdu::ScsiCommand {
            immediate: false,
            final_: true,
            read: read_len > 0,
            write: write_len > 0,
            attr: 1,
            ahs_words: 0,
            data_len: imm as u32,
            lun: LUN1,
            itt,
            expected_len: (write_len + read_len) as u32,
            cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb,
        })
    }

    /// A non-immediate Text Request taking the next CmdSN (not yet sent).
    pub fn text_request(
        &mut self,
        itt: u32,
        ttt: u32,
        final_: bool,
        cont: bool,
        data_len: usize,
    ) -> Pdu {
        let cmd_sn = self.cmd_sn;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        Pdu::TextRequest(pdu::TextRequest {
            immediate: false,
            final_,
            cont,
            data_len: data_len as u32,
            lun: 0,
            itt,
            ttt,
            cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        })
    }

    /// Runs one SCSI command to its status: immediate data, Data-Out for each R2T, Data-In in order.
    pub fn scsi(
        &mut self,
        cdb: [u8; 16],
        write: &[u8],
        read_len: usize,
    ) -> Result<ScsiOutcome, String> {
        let itt = self.itt();
        let imm = if self.immediate_data {
            write
                .len()
                .min(self.first_burst as usize)
                .min(self.target_mrdsl as usize)
        } else {
            0
        };
        let cmd = self.command(itt, cdb, write.len(), read_len, imm);
        self.send(&cmd, &write[..imm])?;
        let name = self.name.clone();
        let mut data = Vec::new();
        loop {
            let r = self
                .recv(Duration::from_secs(15))
                .map_err(|e| format!("{name}: ITT {itt:#x}: {e}"))?;
            match &r.pdu {
                Pdu::DataIn(d) if d.itt == itt => {
                    if d.buffer_offset as usize != data.len() {
                        return Err(format!(
                            "{name}: Data-In at offset {} after {} bytes",
                            d.buffer_offset,
                            data.len()
                        ));
                    }
                    data.extend_from_slice(&r.data);
                    if d.status_present {
                        return Ok(ScsiOutcome {
                            status: d.status,
                            data,
                            sense: Vec::new(),
                        });
                    }
                }
                Pdu::R2t(t) if t.itt == itt => {
                    let (offset, len) = (t.buffer_offset as usize, t.desired_len as usize);
                    if offset + len > write.len() {
                        return Err(format!(
                            "{name}: R2T for {len} bytes at {offset} beyond the {} to write",
                            write.len()
                        ));
                    }
                    self.send_data_out(itt, t.ttt, &write[offset..offset + len], offset)?;
                }
                Pdu::ScsiResponse(s) if s.itt == itt => {
                    if s.response != 0 {
                        return Err(format!(
                            "{name}: iSCSI response {:#04x} (target failure)",
                            s.response
                        ));
                    }
                    let sense = r.data.get(2..).unwrap_or_default().to_vec();
                    return Ok(ScsiOutcome {
                        status: s.status,
                        data,
                        sense,
                    });
                }
                other => {
                    return Err(format!(
                        "{name}: ITT {itt:#x}: unexpected {other:?} (data {:02x?})",
                        &r.data[..r.data.len().min(64)]
                    ))
                }
            }
        }
    }

    /// Answers an R2T: `data` from buffer offset `offset`, cut to the target's MaxRecvDataSegmentLength, DataSN
    /// from 0, F bit on the last PDU.
    pub fn send_data_out(
        &mut self,
        itt: u32,
        ttt: u32,
        data: &[u8],
        offset: usize,
    ) -> Result<(), String> {
        let mut at = 0;
        let mut data_sn = 0;
        while at < data.len() {
            let n = (data.len() - at).min(self.target_mrdsl as usize);
            let out = Pdu::DataOut(pdu::DataOut {
                final_: at + n == data.len(),
                data_len: n as u32,
                lun: LUN1,
                itt,
                ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn,
                buffer_offset: (offset + at) as u32,
            });
            self.send(&out, &data[at..at + n])?;
            at += n;
            data_sn += 1;
        }
        Ok(())
    }

    /// WRITE(10) of whole blocks at `lba`; GOOD status or an error.
    pub fn write10(&mut self, lba: u32, data: &[u8]) -> Result<(), String> {
        assert_eq!(data.len() % BLOCK, 0);
        let o = self.scsi(rw10(0x2a, lba, (data.len() / BLOCK) as u16), data, 0)?;
        if o.status != 0 {
            return Err(format!(
                "{}: WRITE(10) at LBA {lba}: status {:#04x} sense {:02x?}",
                self.name, o.status, o.sense
            ));
        }
        Ok(())
    }

    /// READ(10) of `len` bytes (whole blocks) at `lba`; the data, or an error unless GOOD with all of it.
    pub fn read10(&mut self, lba: u32, len: usize) -> Result<Vec<u8>, String> {
        assert_eq!(len % BLOCK, 0);
        let o = self.scsi(rw10(0x28, lba, (len / BLOCK) as u16), &[], len)?;
        if o.status != 0 {
            return Err(format!(
                "{}: READ(10) at LBA {lba}: status {:#04x} sense {:02x?}",
                self.name, o.status, o.sense
            ));
        }
        if o.data.len() != len {
            return Err(format!(
                "{}: READ(10) at LBA {lba}: {} bytes instead of {len}",
                self.name,
                o.data.len()
            ));
        }
        Ok(o.data)
    }

    /// A whole text exchange: `request` in one Text Request (F=1), then empty Text Requests carrying the
    /// target's TTT for as long as it answers with F=0. Checks the F/C/TTT rules of RFC 7143 section 11.11 on
    /// every Text Response and returns the reassembled answer.
    pub fn text(&mut self, request: &TextPairs) -> Result<TextAnswer, String> {
        let name = self.name.clone();
        let itt = self.itt();
        let mut body = request.encode();
        let mut ttt = RESERVED_TAG;
        let mut answer = Vec::new();
        let mut responses = Vec::new();
        for _ in 0..256 {
            let p = self.text_request(itt, ttt, true, false, body.len());
            self.send(&p, &body)?;
            body.clear();
            let r = self
                .recv(Duration::from_secs(10))
                .map_err(|e| format!("{name}: waiting for the Text Response: {e}"))?;
            let Pdu::TextResponse(t) = &r.pdu else {
                return Err(format!(
                    "{name}: expected a Text Response to ITT {itt:#x}, got {:?}",
                    r.pdu
                ));
            };
            if t.itt != itt {
                return Err(format!(
                    "{name}: Text Response for ITT {:#x}, expected {itt:#x}",
                    t.itt
                ));
            }
            if t.final_ && t.cont {
                return Err(format!(
                    "{name}: Text Response with both F and C set: {t:?}"
                ));
            }
            if t.final_ != (t.ttt == RESERVED_TAG) {
                return Err(format!(
                    "{name}: Text Response with F={} and TTT {:#x} (F=0 needs a TTT, F=1 must have 0xffffffff)",
                    t.final_, t.ttt
                ));
            }
            answer.extend_from_slice(&r.data);
            responses.push(t.clone());
            if t.final_ {
                let pairs = TextPairs::parse(&answer)
                    .map_err(|e| format!("{name}: text answer {answer:?}: {e}"))?;
                return Ok(TextAnswer { pairs, responses });
            }
            ttt = t.ttt;
        }
        Err(format!("{name}: the Text Response never ended"))
    }

    /// Logout (close the session) and wait for the Logout Response and the close.
    pub fn logout(mut self) -> Result<(), String> {
        let itt = self.itt();
        let p = Pdu::LogoutRequest(pdu::LogoutRequest {
            immediate: true,
            reason: 0,
            itt,
            cid: 1,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        });
        self.send(&p, &[])?;
        let r = self
            .recv(Duration::from_secs(10))
            .map_err(|e| format!("{}: waiting for the Logout Response: {e}", self.name))?;
        match &r.pdu {
            Pdu::LogoutResponse(l) if l.itt == itt && l.response == 0 => {}
            other => {
                return Err(format!(
                    "{}: expected a Logout Response, got {other:?}",
                    self.name
                ))
            }
        }
        match self.recv(Duration::from_secs(10)) {
            Err(RecvError::Closed) => Ok(()),
            other => Err(format!(
                "{}: after the Logout Response the connection was not closed: {other:?}",
                self.name
            )),
        }
    }

    /// Waits up to `within` for the target to close the connection, ignoring NOP-In pings (which a target may
    /// send to any idle connection). Returns how long it took; any other PDU is an error.
    pub fn wait_closed(&mut self, within: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let left = (start + within).saturating_duration_since(Instant::now());
            match self.recv_raw(left) {
                Err(RecvError::Closed) => return Ok(start.elapsed()),
                Err(RecvError::Timeout) => {
                    return Err(format!(
                        "{}: the target kept the connection open for {within:?}",
                        self.name
                    ))
                }
                Err(RecvError::Broken(why)) => return Err(format!("{}: {why}", self.name)),
                Ok(p) => match p.pdu {
                    Pdu::NopIn(n) if n.itt == RESERVED_TAG => {}
                    other => {
                        return Err(format!(
                            "{}: expected the connection to close, got {other:?} (data {:02x?})",
                            self.name,
                            &p.data[..p.data.len().min(64)]
                        ))
                    }
                },
            }
        }
    }
}
