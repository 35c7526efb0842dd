//! Basic Header Segments (RFC 7143 section 11), one typed struct per opcode.
//!
//! `decode` reads a 48-byte BHS and checks only what makes the header meaningless; protocol rules that depend on
//! session state belong to the engine. `encode` writes every field, including the data segment length and the
//! AHS length the caller passes in, so `decode(encode(x)) == x` for every PDU.

use crate::error::ProtocolError;

/// Size of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// Reserved tag value ("no task", "no TTT").
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// PDU opcodes (the low six bits of byte 0).
pub mod opcode {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_COMMAND: u8 = 0x01;
    pub const TASK_MGMT_REQUEST: u8 = 0x02;
    pub const LOGIN_REQUEST: u8 = 0x03;
    pub const TEXT_REQUEST: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQUEST: u8 = 0x06;
    pub const SNACK_REQUEST: u8 = 0x10;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESPONSE: u8 = 0x21;
    pub const TASK_MGMT_RESPONSE: u8 = 0x22;
    pub const LOGIN_RESPONSE: u8 = 0x23;
    pub const TEXT_RESPONSE: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESPONSE: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC_MESSAGE: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

const F_BIT: u8 = 0x80;
const I_BIT: u8 = 0x40;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be24(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([0, b[at], b[at + 1], b[at + 2]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
fn put24(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 3].copy_from_slice(&v.to_be_bytes()[1..]);
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// Opcode of a raw BHS.
pub fn opcode_of(bhs: &[u8; BHS_LEN]) -> u8 {
    bhs[0] & 0x3f
}
/// TotalAHSLength of a raw BHS, in bytes.
pub fn ahs_len_of(bhs: &[u8; BHS_LEN]) -> usize {
    bhs[4] as usize * 4
}
/// DataSegmentLength of a raw BHS, in bytes (unpadded).
pub fn data_len_of(bhs: &[u8; BHS_LEN]) -> u32 {
    be24(bhs, 5)
}
/// Initiator Task Tag of a raw BHS.
pub fn itt_of(bhs: &[u8; BHS_LEN]) -> u32 {
    be32(bhs, 16)
}

/// Fields every BHS has, filled by `encode`.
fn header(b: &mut [u8; BHS_LEN], op: u8, immediate: bool, ahs_words: u8, data_len: u32) {
    b[0] = op | if immediate { I_BIT } else { 0 };
    b[4] = ahs_words;
    put24(b, 5, data_len);
}

/// NOP-Out (initiator ping or answer to a target NOP-In).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data_len: u32,
}

/// SCSI Command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    /// F bit: no unsolicited Data-Out follows.
    pub final_: bool,
    pub read: bool,
    pub write: bool,
    /// Task attributes (0 untagged, 1 simple, 2 ordered, 3 head of queue, 4 ACA).
    pub attr: u8,
    pub ahs_words: u8,
    pub data_len: u32,
    pub lun: u64,
    pub itt: u32,
    pub expected_len: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub cdb: [u8; 16],
}

/// Task Management Function Request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: u8,
    pub lun: u64,
    pub itt: u32,
    pub referenced_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

/// Task management function codes.
pub mod tmf {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;

    /// Task management responses.
    pub const COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    pub const REASSIGN_NOT_SUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const AUTHORIZATION_FAILED: u8 = 6;
    pub const REJECTED: u8 = 255;
}

/// Login Request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub data_len: u32,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Text Request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_: bool,
    pub cont: bool,
    pub data_len: u32,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SCSI Data-Out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataOut {
    pub final_: bool,
    pub data_len: u32,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
}

/// Logout Request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutRequest {
    pub immediate: bool,
    /// 0 close session, 1 close connection, 2 remove connection for recovery.
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SNACK Request (not used at ErrorRecoveryLevel 0; decoded so it can be rejected precisely).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnackRequest {
    pub kind: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

/// NOP-In (answer to a NOP-Out, or target ping).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NopIn {
    pub data_len: u32,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// SCSI Response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiResponse {
    pub bidi_overflow: bool,
    pub bidi_underflow: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// iSCSI service response: 0 command completed at target, 1 target failure.
    pub response: u8,
    /// SCSI status byte.
    pub status: u8,
    pub data_len: u32,
    pub itt: u32,
    pub snack_tag: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_data_sn: u32,
    pub bidi_residual: u32,
    pub residual: u32,
}

/// Task Management Function Response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskMgmtResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// Login Response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub data_len: u32,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub status_class: u8,
    pub status_detail: u8,
}

/// Text Response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextResponse {
    pub final_: bool,
    pub cont: bool,
    pub data_len: u32,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// SCSI Data-In.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataIn {
    pub final_: bool,
    pub ack: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// S bit: this PDU carries the command's status (phase collapse).
    pub status_present: bool,
    pub status: u8,
    pub data_len: u32,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub residual: u32,
}

/// Logout Response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutResponse {
    /// 0 closed successfully, 1 CID not found, 2 recovery not supported, 3 cleanup failed.
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

/// Ready To Transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct R2t {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_len: u32,
}

/// Asynchronous Message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsyncMessage {
    pub data_len: u32,
    pub lun: u64,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    /// 1 = target requests logout, 2 = target will drop the connection, ...
    pub event: u8,
    pub vcode: u8,
    pub param1: u16,
    pub param2: u16,
    pub param3: u16,
}

/// Reject; its data segment is the rejected PDU's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub reason: u8,
    pub data_len: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
}

/// Any PDU, by opcode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pdu {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    SnackRequest(SnackRequest),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

impl Pdu {
    /// Decodes a BHS of any opcode.
    pub fn decode(b: &[u8; BHS_LEN]) -> Result<Pdu, ProtocolError> {
        let imm = b[0] & I_BIT != 0;
        let f = b[1] & F_BIT != 0;
        let data_len = be24(b, 5);
        let pdu = match opcode_of(b) {
            opcode::NOP_OUT => Pdu::NopOut(NopOut {
                immediate: imm,
                lun: be64(b, 8),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
                data_len,
            }),
            opcode::SCSI_COMMAND => {
                let mut cdb = [0u8; 16];
                cdb.copy_from_slice(&b[32..48]);
                Pdu::ScsiCommand(ScsiCommand {
                    immediate: imm,
                    final_: f,
                    read: b[1] & 0x40 != 0,
                    write: b[1] & 0x20 != 0,
                    attr: b[1] & 0x07,
                    ahs_words: b[4],
                    data_len,
                    lun: be64(b, 8),
                    itt: be32(b, 16),
                    expected_len: be32(b, 20),
                    cmd_sn: be32(b, 24),
                    exp_stat_sn: be32(b, 28),
                    cdb,
                })
            }
            opcode::TASK_MGMT_REQUEST => Pdu::TaskMgmtRequest(TaskMgmtRequest {
                immediate: imm,
                function: b[1] & 0x7f,
                lun: be64(b, 8),
                itt: be32(b, 16),
                referenced_tag: be32(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
                ref_cmd_sn: be32(b, 32),
                exp_data_sn: be32(b, 36),
            }),
            opcode::LOGIN_REQUEST => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                Pdu::LoginRequest(LoginRequest {
                    transit: b[1] & 0x80 != 0,
                    cont: b[1] & 0x40 != 0,
                    csg: (b[1] >> 2) & 3,
                    nsg: b[1] & 3,
                    version_max: b[2],
                    version_min: b[3],
                    data_len,
                    isid,
                    tsih: be16(b, 14),
                    itt: be32(b, 16),
                    cid: be16(b, 20),
                    cmd_sn: be32(b, 24),
                    exp_stat_sn: be32(b, 28),
                })
            }
            opcode::TEXT_REQUEST => Pdu::TextRequest(TextRequest {
                immediate: imm,
                final_: f,
                cont: b[1] & 0x40 != 0,
                data_len,
                lun: be64(b, 8),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
            }),
            opcode::DATA_OUT => Pdu::DataOut(DataOut {
                final_: f,
                data_len,
                lun: be64(b, 8),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                exp_stat_sn: be32(b, 28),
                data_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
            }),
            opcode::LOGOUT_REQUEST => Pdu::LogoutRequest(LogoutRequest {
                immediate: imm,
                reason: b[1] & 0x7f,
                itt: be32(b, 16),
                cid: be16(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
            }),
            opcode::SNACK_REQUEST => Pdu::SnackRequest(SnackRequest {
                kind: b[1] & 0x0f,
                lun: be64(b, 8),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                exp_stat_sn: be32(b, 28),
                beg_run: be32(b, 40),
                run_length: be32(b, 44),
            }),
            opcode::NOP_IN => Pdu::NopIn(NopIn {
                data_len,
                lun: be64(b, 8),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
            }),
            opcode::SCSI_RESPONSE => Pdu::ScsiResponse(ScsiResponse {
                bidi_overflow: b[1] & 0x10 != 0,
                bidi_underflow: b[1] & 0x08 != 0,
                overflow: b[1] & 0x04 != 0,
                underflow: b[1] & 0x02 != 0,
                response: b[2],
                status: b[3],
                data_len,
                itt: be32(b, 16),
                snack_tag: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                exp_data_sn: be32(b, 36),
                bidi_residual: be32(b, 40),
                residual: be32(b, 44),
            }),
            opcode::TASK_MGMT_RESPONSE => Pdu::TaskMgmtResponse(TaskMgmtResponse {
                response: b[2],
                itt: be32(b, 16),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
            }),
            opcode::LOGIN_RESPONSE => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                Pdu::LoginResponse(LoginResponse {
                    transit: b[1] & 0x80 != 0,
                    cont: b[1] & 0x40 != 0,
                    csg: (b[1] >> 2) & 3,
                    nsg: b[1] & 3,
                    version_max: b[2],
                    version_active: b[3],
                    data_len,
                    isid,
                    tsih: be16(b, 14),
                    itt: be32(b, 16),
                    stat_sn: be32(b, 24),
                    exp_cmd_sn: be32(b, 28),
                    max_cmd_sn: be32(b, 32),
                    status_class: b[36],
                    status_detail: b[37],
                })
            }
            opcode::TEXT_RESPONSE => Pdu::TextResponse(TextResponse {
                final_: f,
                cont: b[1] & 0x40 != 0,
                data_len,
                lun: be64(b, 8),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
            }),
            opcode::DATA_IN => Pdu::DataIn(DataIn {
                final_: f,
                ack: b[1] & 0x40 != 0,
                overflow: b[1] & 0x04 != 0,
                underflow: b[1] & 0x02 != 0,
                status_present: b[1] & 0x01 != 0,
                status: b[3],
                data_len,
                lun: be64(b, 8),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                data_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
                residual: be32(b, 44),
            }),
            opcode::LOGOUT_RESPONSE => Pdu::LogoutResponse(LogoutResponse {
                response: b[2],
                itt: be32(b, 16),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                time2wait: be16(b, 40),
                time2retain: be16(b, 42),
            }),
            opcode::R2T => Pdu::R2t(R2t {
                lun: be64(b, 8),
                itt: be32(b, 16),
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                r2t_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
                desired_len: be32(b, 44),
            }),
            opcode::ASYNC_MESSAGE => Pdu::AsyncMessage(AsyncMessage {
                data_len,
                lun: be64(b, 8),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                event: b[36],
                vcode: b[37],
                param1: be16(b, 38),
                param2: be16(b, 40),
                param3: be16(b, 42),
            }),
            opcode::REJECT => Pdu::Reject(Reject {
                reason: b[2],
                data_len,
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                data_sn: be32(b, 36),
            }),
            other => return Err(ProtocolError::UnknownOpcode(other)),
        };
        Ok(pdu)
    }

    /// Encodes the BHS. Reserved bytes are zero.
    pub fn encode(&self) -> [u8; BHS_LEN] {
        let mut b = [0u8; BHS_LEN];
        match self {
            Pdu::NopOut(p) => {
                header(&mut b, opcode::NOP_OUT, p.immediate, 0, p.data_len);
                b[1] = F_BIT;
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.cmd_sn);
                put32(&mut b, 28, p.exp_stat_sn);
            }
            Pdu::ScsiCommand(p) => {
                header(
                    &mut b,
                    opcode::SCSI_COMMAND,
                    p.immediate,
                    p.ahs_words,
                    p.data_len,
                );
                b[1] = (if p.final_ { F_BIT } else { 0 })
                    | (if p.read { 0x40 } else { 0 })
                    | (if p.write { 0x20 } else { 0 })
                    | (p.attr & 7);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.expected_len);
                put32(&mut b, 24, p.cmd_sn);
                put32(&mut b, 28, p.exp_stat_sn);
                b[32..48].copy_from_slice(&p.cdb);
            }
            Pdu::TaskMgmtRequest(p) => {
                header(&mut b, opcode::TASK_MGMT_REQUEST, p.immediate, 0, 0);
                b[1] = F_BIT | (p.function & 0x7f);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.referenced_tag);
                put32(&mut b, 24, p.cmd_sn);
                put32(&mut b, 28, p.exp_stat_sn);
                put32(&mut b, 32, p.ref_cmd_sn);
                put32(&mut b, 36, p.exp_data_sn);
            }
            Pdu::LoginRequest(p) => {
                header(&mut b, opcode::LOGIN_REQUEST, true, 0, p.data_len);
                b[1] = login_flags(p.transit, p.cont, p.csg, p.nsg);
                b[2] = p.version_max;
                b[3] = p.version_min;
                b[8..14].copy_from_slice(&p.isid);
                put16(&mut b, 14, p.tsih);
                put32(&mut b, 16, p.itt);
                put16(&mut b, 20, p.cid);
                put32(&mut b, 24, p.cmd_sn);
                put32(&mut b, 28, p.exp_stat_sn);
            }
            Pdu::TextRequest(p) => {
                header(&mut b, opcode::TEXT_REQUEST, p.immediate, 0, p.data_len);
                b[1] = (if p.final_ { F_BIT } else { 0 }) | (if p.cont { 0x40 } else { 0 });
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.cmd_sn);
                put32(&mut b, 28, p.exp_stat_sn);
            }
            Pdu::DataOut(p) => {
                header(&mut b, opcode::DATA_OUT, false, 0, p.data_len);
                b[1] = if p.final_ { F_BIT } else { 0 };
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 28, p.exp_stat_sn);
                put32(&mut b, 36, p.data_sn);
                put32(&mut b, 40, p.buffer_offset);
            }
            Pdu::LogoutRequest(p) => {
                header(&mut b, opcode::LOGOUT_REQUEST, p.immediate, 0, 0);
                b[1] = F_BIT | (p.reason & 0x7f);
                put32(&mut b, 16, p.itt);
                put16(&mut b, 20, p.cid);
                put32(&mut b, 24, p.cmd_sn);
                put32(&mut b, 28, p.exp_stat_sn);
            }
            Pdu::SnackRequest(p) => {
                header(&mut b, opcode::SNACK_REQUEST, false, 0, 0);
                b[1] = F_BIT | (p.kind & 0x0f);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 28, p.exp_stat_sn);
                put32(&mut b, 40, p.beg_run);
                put32(&mut b, 44, p.run_length);
            }
            Pdu::NopIn(p) => {
                header(&mut b, opcode::NOP_IN, false, 0, p.data_len);
                b[1] = F_BIT;
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
            }
            Pdu::ScsiResponse(p) => {
                header(&mut b, opcode::SCSI_RESPONSE, false, 0, p.data_len);
                b[1] = F_BIT
                    | (if p.bidi_overflow { 0x10 } else { 0 })
                    | (if p.bidi_underflow { 0x08 } else { 0 })
                    | (if p.overflow { 0x04 } else { 0 })
                    | (if p.underflow { 0x02 } else { 0 });
                b[2] = p.response;
                b[3] = p.status;
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.snack_tag);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                put32(&mut b, 36, p.exp_data_sn);
                put32(&mut b, 40, p.bidi_residual);
                put32(&mut b, 44, p.residual);
            }
            Pdu::TaskMgmtResponse(p) => {
                header(&mut b, opcode::TASK_MGMT_RESPONSE, false, 0, 0);
                b[1] = F_BIT;
                b[2] = p.response;
                put32(&mut b, 16, p.itt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
            }
            Pdu::LoginResponse(p) => {
                header(&mut b, opcode::LOGIN_RESPONSE, false, 0, p.data_len);
                b[1] = login_flags(p.transit, p.cont, p.csg, p.nsg);
                b[2] = p.version_max;
                b[3] = p.version_active;
                b[8..14].copy_from_slice(&p.isid);
                put16(&mut b, 14, p.tsih);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                b[36] = p.status_class;
                b[37] = p.status_detail;
            }
            Pdu::TextResponse(p) => {
                header(&mut b, opcode::TEXT_RESPONSE, false, 0, p.data_len);
                b[1] = (if p.final_ { F_BIT } else { 0 }) | (if p.cont { 0x40 } else { 0 });
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
            }
            Pdu::DataIn(p) => {
                header(&mut b, opcode::DATA_IN, false, 0, p.data_len);
                b[1] = (if p.final_ { F_BIT } else { 0 })
                    | (if p.ack { 0x40 } else { 0 })
                    | (if p.overflow { 0x04 } else { 0 })
                    | (if p.underflow { 0x02 } else { 0 })
                    | (if p.status_present { 0x01 } else { 0 });
                b[3] = p.status;
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                put32(&mut b, 36, p.data_sn);
                put32(&mut b, 40, p.buffer_offset);
                put32(&mut b, 44, p.residual);
            }
            Pdu::LogoutResponse(p) => {
                header(&mut b, opcode::LOGOUT_RESPONSE, false, 0, 0);
                b[1] = F_BIT;
                b[2] = p.response;
                put32(&mut b, 16, p.itt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                put16(&mut b, 40, p.time2wait);
                put16(&mut b, 42, p.time2retain);
            }
            Pdu::R2t(p) => {
                header(&mut b, opcode::R2T, false, 0, 0);
                b[1] = F_BIT;
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                put32(&mut b, 36, p.r2t_sn);
                put32(&mut b, 40, p.buffer_offset);
                put32(&mut b, 44, p.desired_len);
            }
            Pdu::AsyncMessage(p) => {
                header(&mut b, opcode::ASYNC_MESSAGE, false, 0, p.data_len);
                b[1] = F_BIT;
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, RESERVED_TAG);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                b[36] = p.event;
                b[37] = p.vcode;
                put16(&mut b, 38, p.param1);
                put16(&mut b, 40, p.param2);
                put16(&mut b, 42, p.param3);
            }
            Pdu::Reject(p) => {
                header(&mut b, opcode::REJECT, false, 0, p.data_len);
                b[1] = F_BIT;
                b[2] = p.reason;
                put32(&mut b, 16, RESERVED_TAG);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                put32(&mut b, 36, p.data_sn);
            }
        }
        b
    }

    /// The data segment length the header announces.
    pub fn data_len(&self) -> u32 {
        match self {
            Pdu::NopOut(p) => p.data_len,
            Pdu::ScsiCommand(p) => p.data_len,
            Pdu::LoginRequest(p) => p.data_len,
            Pdu::TextRequest(p) => p.data_len,
            Pdu::DataOut(p) => p.data_len,
            Pdu::NopIn(p) => p.data_len,
            Pdu::ScsiResponse(p) => p.data_len,
            Pdu::LoginResponse(p) => p.data_len,
            Pdu::TextResponse(p) => p.data_len,
            Pdu::DataIn(p) => p.data_len,
            Pdu::AsyncMessage(p) => p.data_len,
            Pdu::Reject(p) => p.data_len,
            Pdu::TaskMgmtRequest(_)
            | Pdu::LogoutRequest(_)
            | Pdu::SnackRequest(_)
            | Pdu::TaskMgmtResponse(_)
            | Pdu::LogoutResponse(_)
            | Pdu::R2t(_) => 0,
        }
    }
}

fn login_flags(transit: bool, cont: bool, csg: u8, nsg: u8) -> u8 {
    (if transit { 0x80 } else { 0 }) | (if cont { 0x40 } else { 0 }) | ((csg & 3) << 2) | (nsg & 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_pdu() -> impl Strategy<Value = Pdu> {
        let d24 = 0u32..(1 << 24);
        prop_oneof![
            (
                any::<bool>(),
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                d24.clone()
            )
                .prop_map(
                    |(immediate, lun, itt, ttt, cmd_sn, exp_stat_sn, data_len)| Pdu::NopOut(
                        NopOut {
                            immediate,
                            lun,
                            itt,
                            ttt,
                            cmd_sn,
                            exp_stat_sn,
                            data_len
                        }
                    )
                ),
            (
                (
                    any::<bool>(),
                    any::<bool>(),
                    any::<bool>(),
                    any::<bool>(),
                    0u8..8,
                    any::<u8>(),
                    d24.clone()
                ),
                (
                    any::<u64>(),
                    any::<u32>(),
                    any::<u32>(),
                    any::<u32>(),
                    any::<u32>(),
                    any::<[u8; 16]>()
                )
            )
                .prop_map(
                    |(
                        (immediate, final_, read, write, attr, ahs_words, data_len),
                        (lun, itt, expected_len, cmd_sn, exp_stat_sn, cdb),
                    )| {
                        Pdu::ScsiCommand(ScsiCommand {
                            immediate,
                            final_,
                            read,
                            write,
                            attr,
                            ahs_words,
                            data_len,
                            lun,
                            itt,
                            expected_len,
                            cmd_sn,
                            exp_stat_sn,
                            cdb,
                        })
                    }
                ),
            (
                any::<bool>(),
                0u8..128,
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>()
            )
                .prop_map(
                    |(
                        immediate,
                        function,
                        lun,
                        itt,
                        referenced_tag,
                        cmd_sn,
                        exp_stat_sn,
                        ref_cmd_sn,
                        exp_data_sn,
                    )| {
                        Pdu::TaskMgmtRequest(TaskMgmtRequest {
                            immediate,
                            function,
                            lun,
                            itt,
                            referenced_tag,
                            cmd_sn,
                            exp_stat_sn,
                            ref_cmd_sn,
                            exp_data_sn,
                        })
                    }
                ),
            (
                (
                    any::<bool>(),
                    any::<bool>(),
                    0u8..4,
                    0u8..4,
                    any::<u8>(),
                    any::<u8>(),
                    d24.clone()
                ),
                (
                    any::<[u8; 6]>(),
                    any::<u16>(),
                    any::<u32>(),
                    any::<u16>(),
                    any::<u32>(),
                    any::<u32>()
                )
            )
                .prop_map(
                    |(
                        (transit, cont, csg, nsg, version_max, version_min, data_len),
                        (isid, tsih, itt, cid, cmd_sn, exp_stat_sn),
                    )| {
                        Pdu::LoginRequest(LoginRequest {
                            transit,
                            cont,
                            csg,
                            nsg,
                            version_max,
                            version_min,
                            data_len,
                            isid,
                            tsih,
                            itt,
                            cid,
                            cmd_sn,
                            exp_stat_sn,
                        })
                    }
                ),
            (
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                d24.clone(),
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>()
            )
                .prop_map(
                    |(immediate, final_, cont, data_len, lun, itt, ttt, cmd_sn, exp_stat_sn)| {
                        Pdu::TextRequest(TextRequest {
                            immediate,
                            final_,
                            cont,
                            data_len,
                            lun,
                            itt,
                            ttt,
                            cmd_sn,
                            exp_stat_sn,
                        })
                    }
                ),
            (
                any::<bool>(),
                d24.clone(),
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>()
            )
                .prop_map(
                    |(final_, data_len, lun, itt, ttt, exp_stat_sn, data_sn, buffer_offset)| {
                        Pdu::DataOut(DataOut {
                            final_,
                            data_len,
                            lun,
                            itt,
                            ttt,
                            exp_stat_sn,
                            data_sn,
                            buffer_offset,
                        })
                    }
                ),
            (
                any::<bool>(),
                0u8..128,
                any::<u32>(),
                any::<u16>(),
                any::<u32>(),
                any::<u32>()
            )
                .prop_map(|(immediate, reason, itt, cid, cmd_sn, exp_stat_sn)| {
                    Pdu::LogoutRequest(LogoutRequest {
                        immediate,
                        reason,
                        itt,
                        cid,
                        cmd_sn,
                        exp_stat_sn,
                    })
                }),
            (
                (
                    any::<bool>(),
                    any::<bool>(),
                    any::<bool>(),
                    any::<bool>(),
                    any::<u8>(),
                    any::<u8>(),
                    d24.clone()
                ),
                (
                    any::<u32>(),
                    any::<u32>(),
                    any::<u32>(),
                    any::<u32>(),
                    any::<u32>(),
                    any::<u32>(),
                    any::<u32>(),
                    any::<u32>()
                )
            )
                .prop_map(
                    |(
                        (
                            bidi_overflow,
                            bidi_underflow,
                            overflow,
                            underflow,
                            response,
                            status,
                            data_len,
                        ),
                        (
                            itt,
                            snack_tag,
                            stat_sn,
                            exp_cmd_sn,
                            max_cmd_sn,
                            exp_data_sn,
                            bidi_residual,
                            residual,
                        ),
                    )| {
                        Pdu::ScsiResponse(ScsiResponse {
                            bidi_overflow,
                            bidi_underflow,
                            overflow,
                            underflow,
                            response,
                            status,
                            data_len,
                            itt,
                            snack_tag,
                            stat_sn,
                            exp_cmd_sn,
                            max_cmd_sn,
                            exp_data_sn,
                            bidi_residual,
                            residual,
                        })
                    }
                ),
            (
                (
                    any::<bool>(),
                    any::<bool>(),
                    any::<bool>(),
                    any::<bool>(),
                    any::<bool>(),
                    any::<u8>(),
                    d24
                ),
                (
                    any::<u64>(),
                    any::<u32>(),
                    any::<u32>(),
                    any::<u32>(),
                    any::<u32>(),
                    any::<u32>(),
                    any::<u32>(),
                    any::<u32>(),
                    any::<u32>()
                )
            )
                .prop_map(
                    |(
                        (final_, ack, overflow, underflow, status_present, status, data_len),
                        (
                            lun,
                            itt,
                            ttt,
                            stat_sn,
                            exp_cmd_sn,
                            max_cmd_sn,
                            data_sn,
                            buffer_offset,
                            residual,
                        ),
                    )| {
                        Pdu::DataIn(DataIn {
                            final_,
                            ack,
                            overflow,
                            underflow,
                            status_present,
                            status,
                            data_len,
                            lun,
                            itt,
                            ttt,
                            stat_sn,
                            exp_cmd_sn,
                            max_cmd_sn,
                            data_sn,
                            buffer_offset,
                            residual,
                        })
                    }
                ),
            (
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>()
            )
                .prop_map(
                    |(
                        lun,
                        itt,
                        ttt,
                        stat_sn,
                        exp_cmd_sn,
                        max_cmd_sn,
                        r2t_sn,
                        buffer_offset,
                        desired_len,
                    )| {
                        Pdu::R2t(R2t {
                            lun,
                            itt,
                            ttt,
                            stat_sn,
                            exp_cmd_sn,
                            max_cmd_sn,
                            r2t_sn,
                            buffer_offset,
                            desired_len,
                        })
                    }
                ),
        ]
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_identity(pdu in arb_pdu()) {
            let bytes = pdu.encode();
            prop_assert_eq!(Pdu::decode(&bytes).unwrap(), pdu);
        }

        #[test]
        fn decode_never_panics(bytes in any::<[u8; 32]>(), tail in any::<[u8; 16]>()) {
            let mut b = [0u8; BHS_LEN];
            b[..32].copy_from_slice(&bytes);
            b[32..].copy_from_slice(&tail);
            let _ = Pdu::decode(&b);
        }
    }

    #[test]
    fn login_response_layout() {
        let r = Pdu::LoginResponse(LoginResponse {
            transit: true,
            cont: false,
            csg: 1,
            nsg: 3,
            version_max: 0,
            version_active: 0,
            data_len: 0x123,
            isid: [0x80, 1, 2, 3, 4, 5],
            tsih: 7,
            itt: 9,
            stat_sn: 1,
            exp_cmd_sn: 2,
            max_cmd_sn: 3,
            status_class: 2,
            status_detail: 1,
        })
        .encode();
        assert_eq!(r[0], 0x23);
        assert_eq!(r[1], 0x87);
        assert_eq!(&r[5..8], &[0, 1, 0x23]);
        assert_eq!(&r[36..38], &[2, 1]);
    }
}
