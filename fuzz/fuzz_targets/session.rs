//! The full feature phase core over arbitrary sequences of PDUs (well-formed and not), command completions and
//! time steps. It must never panic, and what it sends must keep the sequencing rules:
//! - StatSN goes up by exactly one per PDU that carries status; R2Ts and NOP-In pings carry the next one unused;
//! - ExpCmdSN and MaxCmdSN never go back;
//! - a PDU's DataSegmentLength is its data's length, and no segment is longer than the initiator accepts;
//! - Data-In of one command: DataSN 0, 1, 2, ... at contiguous offsets, status only on the last, never more than
//!   the Expected Data Transfer Length;
//! - R2Ts ask for at most MaxBurstLength, R2TSN counts up from 0 per command, inside the EDTL;
//! - a command runs at most once at a time, with no more data than its EDTL, and only when its CmdSN came;
//! - nothing is done after the session closed.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use twinsan_iscsi::error::ProtocolError;
use twinsan_iscsi::frame::{DecodeError, RawPdu};
use twinsan_iscsi::login::SessionType;
use twinsan_iscsi::pdu::{self, Pdu, BHS_LEN, RESERVED_TAG};
use twinsan_iscsi::seq::sn_le;
use twinsan_iscsi::session::{Completion, SessionEnv, SessionParams};
use twinsan_iscsi::text::TextPairs;

struct Env;

/// A CDB as the harness decodes it: the operation code and the bytes a READ(10)/WRITE(10) moves.
type Dec = (u8, u32);
type Session = twinsan_iscsi::session::Session<Dec>;
type Action = twinsan_iscsi::session::Action<Dec>;

impl SessionEnv for Env {
    type Decoded = Dec;
    fn lun_number(&self, lun: u64) -> u64 {
        lun >> 48
    }
    fn lun_exists(&self, lun: u64) -> bool {
        lun >> 48 < 2
    }
    fn decode(&self, _lun: u64, cdb: &[u8]) -> Dec {
        (cdb[0], u32::from(u16::from_be_bytes([cdb[7], cdb[8]])) * 512)
    }
    fn data_out_len(&self, lun: u64, &(op, len): &Dec) -> u32 {
        match (self.lun_exists(lun), op) {
            (true, 0x2a) => len,
            _ => 0,
        }
    }
    fn data_in_len(&self, lun: u64, &(op, len): &Dec) -> Option<u32> {
        match (self.lun_exists(lun), op) {
            (true, 0x28) => Some(len),
            _ => None,
        }
    }
    fn send_targets(&self, _which: &str, reply: &mut TextPairs) {
        for i in 0..40 {
            reply.push("TargetName", format!("iqn.2025-08.fuzz:target-{i:04}"));
        }
    }
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }
}

/// What the harness remembers of one command it sent.
#[derive(Default)]
struct Sent {
    edtl: u32,
    /// R2Ts seen: (TTT, offset, length), in order.
    r2ts: Vec<(u32, u32, u32)>,
    next_r2t_sn: u32,
    /// Data-Out sent so far (the next offset of a well-formed one).
    sent: u32,
}

struct Checker {
    p: SessionParams,
    stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    running: HashMap<u32, u32>,
    /// Per ITT: next DataSN and offset of its Data-In.
    data_in: HashMap<u32, (u32, u32)>,
    closed: bool,
}

impl Checker {
    fn windows(&mut self, exp: u32, max: u32) {
        assert!(
            sn_le(self.exp_cmd_sn, exp),
            "ExpCmdSN went back: {} -> {exp}",
            self.exp_cmd_sn
        );
        assert!(
            sn_le(self.max_cmd_sn, max),
            "MaxCmdSN went back: {} -> {max}",
            self.max_cmd_sn
        );
        self.exp_cmd_sn = exp;
        self.max_cmd_sn = max;
    }

    fn status(&mut self, sn: u32) {
        assert_eq!(sn, self.stat_sn, "StatSN out of sequence");
        self.stat_sn = sn.wrapping_add(1);
    }

    fn check(&mut self, s: &mut Session, cmds: &mut HashMap<u32, Sent>) {
        while let Some(a) = s.next_action() {
            assert!(!self.closed, "action after close: {a:?}");
            match a {
                Action::Send(p, data) => {
                    assert_eq!(
                        p.data_len() as usize,
                        data.len(),
                        "DataSegmentLength of {p:?}"
                    );
                    if !matches!(p, Pdu::Reject(_)) {
                        assert!(
                            data.len() <= self.p.initiator_mrdsl as usize,
                            "segment too long: {p:?}"
                        );
                    }
                    self.sent(p, cmds);
                }
                Action::Execute(c) => {
                    assert!(
                        self.running.insert(c.itt, c.expected_len).is_none(),
                        "ITT {:#x} runs twice",
                        c.itt
                    );
                    assert!(
                        c.data.len() as u32 <= c.expected_len,
                        "more data than the EDTL"
                    );
                }
                Action::DataPhaseError(itt) => {
                    assert!(
                        self.running.insert(itt, 0).is_none(),
                        "ITT {itt:#x} runs twice"
                    );
                }
                Action::Close(_) => self.closed = true,
                Action::Reset(_) | Action::Finished(_) | Action::Log(..) => {}
            }
        }
        assert_eq!(s.is_closed(), self.closed);
    }

    fn sent(&mut self, p: Pdu, cmds: &mut HashMap<u32, Sent>) {
        match p {
            Pdu::ScsiResponse(r) => {
                self.status(r.stat_sn);
                self.windows(r.exp_cmd_sn, r.max_cmd_sn);
                self.data_in.remove(&r.itt);
            }
            Pdu::DataIn(d) => {
                if d.status_present {
                    self.status(d.stat_sn);
                    assert!(d.final_);
                }
                self.windows(d.exp_cmd_sn, d.max_cmd_sn);
                let (sn, off) = self.data_in.get(&d.itt).copied().unwrap_or((0, 0));
                assert_eq!(
                    (d.data_sn, d.buffer_offset),
                    (sn, off),
                    "Data-In sequence of {:#x}",
                    d.itt
                );
                let end = off + d.data_len;
                if let Some(c) = cmds.get(&d.itt).filter(|_| d.itt < 0x4000_0000) {
                    assert!(end <= c.edtl, "Data-In past the EDTL");
                }
                if d.status_present {
                    self.data_in.remove(&d.itt);
                } else {
                    self.data_in.insert(d.itt, (sn + 1, end));
                }
            }
            Pdu::R2t(r) => {
                assert_eq!(r.stat_sn, self.stat_sn, "R2T carries the next StatSN");
                self.windows(r.exp_cmd_sn, r.max_cmd_sn);
                assert!(r.desired_len > 0 && r.desired_len <= self.p.max_burst_length);
                assert_ne!(r.ttt, RESERVED_TAG);
                if r.itt >= 0x4000_0000 {
                    return;
                }
                let c = cmds.entry(r.itt).or_default();
                assert_eq!(r.r2t_sn, c.next_r2t_sn, "R2TSN of {:#x}", r.itt);
                assert!(
                    r.buffer_offset + r.desired_len <= c.edtl,
                    "R2T past the EDTL"
                );
                c.next_r2t_sn += 1;
                c.r2ts.push((r.ttt, r.buffer_offset, r.desired_len));
            }
            Pdu::NopIn(n) => {
                if n.itt == RESERVED_TAG {
                    assert_eq!(n.stat_sn, self.stat_sn, "a ping carries the next StatSN");
                } else {
                    self.status(n.stat_sn);
                }
                self.windows(n.exp_cmd_sn, n.max_cmd_sn);
            }
            Pdu::TaskMgmtResponse(r) => {
                self.status(r.stat_sn);
                self.windows(r.exp_cmd_sn, r.max_cmd_sn);
            }
            Pdu::TextResponse(r) => {
                self.status(r.stat_sn);
                self.windows(r.exp_cmd_sn, r.max_cmd_sn);
            }
            Pdu::LogoutResponse(r) => {
                self.status(r.stat_sn);
                self.windows(r.exp_cmd_sn, r.max_cmd_sn);
            }
            Pdu::Reject(r) => {
                self.status(r.stat_sn);
                self.windows(r.exp_cmd_sn, r.max_cmd_sn);
            }
            other => panic!("the target sent an initiator PDU: {other:?}"),
        }
    }
}

fn raw(p: Pdu, data: Bytes) -> RawPdu {
    RawPdu {
        bhs: p.encode(),
        ahs: Bytes::new(),
        data,
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let burst = 512 * (1 + u32::from(inp.u8() % 64));
    let p = SessionParams {
        session_type: if inp.u8() % 8 == 0 {
            SessionType::Discovery
        } else {
            SessionType::Normal
        },
        cid: 1,
        initiator_mrdsl: 512 * (1 + u32::from(inp.u8() % 32)),
        max_burst_length: burst,
        first_burst_length: 512 * (1 + u32::from(inp.u8() % 64)).min(burst / 512),
        initial_r2t: inp.bool(),
        immediate_data: inp.bool(),
        max_outstanding_r2t: 1 + u32::from(inp.u8() % 4),
        queue_depth: 1 + u32::from(inp.u8() % 8),
        max_task_data: 1024 * 1024,
        nop_interval: Duration::from_secs(5),
        nop_timeout: Duration::from_secs(10),
    };
    let exp0 = inp.u32();
    let stat0 = inp.u32();
    let mut now = Instant::now();
    let mut s = Session::new(p.clone(), exp0, stat0, now);
    let mut ck = Checker {
        stat_sn: stat0,
        exp_cmd_sn: exp0,
        max_cmd_sn: s.max_cmd_sn(),
        p: p.clone(),
        running: HashMap::new(),
        data_in: HashMap::new(),
        closed: false,
    };
    let mut cmds: HashMap<u32, Sent> = HashMap::new();
    let mut next_cmd_sn = exp0;
    let mut next_itt = 0u32;
    let payload = Bytes::from(vec![0xa5u8; 64 * 1024]);
    let mut steps = 0;
    while !inp.0.is_empty() && steps < 2000 {
        steps += 1;
        let exp_stat_sn = ck.stat_sn.wrapping_sub(u32::from(inp.u8() % 3));
        match inp.u8() % 12 {
            // A SCSI command: mostly the next CmdSN, sometimes out of order or immediate.
            0 | 1 | 2 => {
                // Tags are never reused, so what the harness knows of each command stays true.
                let itt = next_itt;
                next_itt += 1;
                let kind = inp.u8() % 4;
                let blocks = u16::from(inp.u8() % 96);
                let mut cdb = [0u8; 16];
                cdb[0] = [0x2a, 0x28, 0x00, 0x12][kind as usize];
                cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
                let flags = inp.u8();
                let (read, write) = (kind == 1 || flags & 4 != 0, kind == 0 || flags & 8 != 0);
                let edtl = match flags >> 4 {
                    0 => 0,
                    1 => inp.u32() % (256 * 1024),
                    _ => u32::from(blocks) * 512,
                };
                let imm = (inp.u16() as u32 % (2 * p.first_burst_length + 1)).min(edtl);
                let imm = if flags & 16 != 0 { imm } else { 0 };
                let cmd_sn = match inp.u8() % 8 {
                    0 => next_cmd_sn.wrapping_add(u32::from(inp.u8() % 8)),
                    1 => next_cmd_sn.wrapping_sub(1),
                    _ => next_cmd_sn,
                };
                let immediate = flags & 2 != 0;
                if !immediate && cmd_sn == next_cmd_sn {
                    next_cmd_sn = next_cmd_sn.wrapping_add(1);
                }
                cmds.insert(
                    itt,
                    Sent {
                        edtl,
                        sent: imm,
                        ..Sent::default()
                    },
                );
                let pdu = Pdu::ScsiCommand(pdu::ScsiCommand {
                    immediate,
                    final_: flags & 1 != 0,
                    read,
                    write,
                    attr: 1,
                    ahs_words: 0,
                    data_len: imm,
                    lun: u64::from(inp.u8() % 3) << 48,
                    itt,
                    expected_len: edtl,
                    cmd_sn,
                    exp_stat_sn,
                    cdb,
                });
                s.on_pdu(raw(pdu, payload.slice(..imm as usize)), now, &Env);
            }
            // Data-Out: mostly the next piece of an R2T or of the first burst, sometimes anything.
            3 | 4 | 5 => {
                let itt = next_itt.wrapping_sub(1 + u32::from(inp.u8() % 4));
                let how = inp.u8();
                let c = cmds.entry(itt).or_default();
                let (ttt, limit) = match c.r2ts.iter().find(|r| r.1 + r.2 > c.sent) {
                    Some(&(ttt, off, len)) if how & 1 == 0 => (ttt, off + len),
                    _ => (RESERVED_TAG, p.first_burst_length.min(c.edtl)),
                };
                let len = (u32::from(inp.u16()) % (p.initiator_mrdsl + 1))
                    .min(limit.saturating_sub(c.sent).max(1));
                let offset = if how & 2 == 0 {
                    c.sent
                } else {
                    inp.u32() % (512 * 1024)
                };
                let data_sn = if how & 4 == 0 {
                    inp.u8() as u32 % 4
                } else {
                    inp.u32()
                };
                let final_ = how & 8 != 0 || c.sent + len >= limit;
                if offset == c.sent {
                    c.sent += len;
                }
                let pdu = Pdu::DataOut(pdu::DataOut {
                    final_,
                    data_len: len,
                    lun: 0,
                    itt,
                    ttt,
                    exp_stat_sn,
                    data_sn,
                    buffer_offset: offset,
                });
                s.on_pdu(
                    raw(pdu, payload.slice(..len.min(64 * 1024) as usize)),
                    now,
                    &Env,
                );
            }
            // A running command finishes.
            6 | 7 => {
                let pick = inp.u8() as usize;
                let itts: Vec<u32> = {
                    let mut v: Vec<u32> = ck.running.keys().copied().collect();
                    v.sort_unstable();
                    v
                };
                if let Some(&itt) = itts.get(pick % itts.len().max(1)) {
                    ck.running.remove(&itt);
                    let len = inp.u16() as usize % (64 * 1024);
                    let status = if inp.u8() % 4 == 0 { 2 } else { 0 };
                    let c = Completion {
                        status,
                        sense: (status == 2).then(|| {
                            vec![0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0]
                        }),
                        data_in: payload.slice(..len),
                    };
                    s.complete(itt, c, &Env);
                }
            }
            // Time passes.
            8 => {
                now += Duration::from_millis(u64::from(inp.u16()) * 10);
                s.on_timer(now);
            }
            // NOP-Out, task management, Text, Logout.
            9 | 10 => {
                let which = inp.u8();
                let immediate = which & 0x80 != 0;
                let cmd_sn = next_cmd_sn;
                if !immediate {
                    next_cmd_sn = next_cmd_sn.wrapping_add(1);
                }
                let itt = 0x4000_0000 + u32::from(inp.u8() % 4);
                let pdu = match which % 4 {
                    0 => Pdu::NopOut(pdu::NopOut {
                        immediate,
                        lun: 0,
                        itt: if inp.bool() { RESERVED_TAG } else { itt },
                        ttt: RESERVED_TAG,
                        cmd_sn,
                        exp_stat_sn,
                        data_len: 0,
                    }),
                    1 => Pdu::TaskMgmtRequest(pdu::TaskMgmtRequest {
                        immediate,
                        function: inp.u8() % 10,
                        lun: u64::from(inp.u8() % 3) << 48,
                        itt,
                        referenced_tag: next_itt.wrapping_sub(1 + u32::from(inp.u8() % 4)),
                        cmd_sn,
                        exp_stat_sn,
                        ref_cmd_sn: cmd_sn.wrapping_sub(u32::from(inp.u8() % 4)),
                        exp_data_sn: 0,
                    }),
                    2 => {
                        let cont = inp.bool();
                        let ttt = if inp.bool() {
                            RESERVED_TAG
                        } else {
                            u32::from(inp.u8() % 8)
                        };
                        let text: &[u8] = if inp.bool() {
                            b"SendTargets=All\0"
                        } else {
                            b"X=1\0Send"
                        };
                        let p = Pdu::TextRequest(pdu::TextRequest {
                            immediate,
                            final_: !cont,
                            cont,
                            data_len: text.len() as u32,
                            lun: 0,
                            itt,
                            ttt,
                            cmd_sn,
                            exp_stat_sn,
                        });
                        s.on_pdu(raw(p, Bytes::from_static(text)), now, &Env);
                        ck.check(&mut s, &mut cmds);
                        continue;
                    }
                    _ => Pdu::LogoutRequest(pdu::LogoutRequest {
                        immediate,
                        reason: inp.u8() % 3,
                        itt,
                        cid: u16::from(inp.u8() % 2),
                        cmd_sn,
                        exp_stat_sn,
                    }),
                };
                s.on_pdu(raw(pdu, Bytes::new()), now, &Env);
            }
            // Any header at all, or a framing error.
            _ => {
                let mut bhs = [0u8; BHS_LEN];
                for b in bhs.iter_mut() {
                    *b = inp.u8();
                }
                // Its tag is apart from the harness's own commands (checked more closely).
                bhs[16] |= 0x80;
                match inp.u8() % 8 {
                    0 => s.on_frame_error(
                        DecodeError::Reject {
                            bhs: Box::new(bhs),
                            error: ProtocolError::DataDigest {
                                received: 0,
                                computed: 1,
                            },
                        },
                        now,
                    ),
                    1 => s.on_frame_error(
                        DecodeError::Fatal(ProtocolError::HeaderDigest {
                            received: 0,
                            computed: 1,
                        }),
                        now,
                    ),
                    _ => {
                        let len = (pdu::data_len_of(&bhs) as usize).min(payload.len());
                        s.on_pdu(
                            RawPdu {
                                bhs,
                                ahs: Bytes::new(),
                                data: payload.slice(..len),
                            },
                            now,
                            &Env,
                        );
                    }
                }
            }
        }
        ck.check(&mut s, &mut cmds);
    }
});
