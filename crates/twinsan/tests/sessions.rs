//! Acceptance tests of SPEC 2.1 on the wire: sessions (reinstatement, unknown TSIH), login refusals and their
//! exact status, discovery, text continuation, NOP-In pings, Logout and ABORT TASK while a write waits for its
//! data. Each test starts its own `twinsan serve` on a free loopback port and talks to it with the small blocking
//! initiator of `common/initiator.rs`, checking the fields of every PDU the target sends back.
//!
//! The clients that never answer a ping, never speak or stall mid-header are in `bad_input.rs`.

mod common;

use std::time::{Duration, Instant};

use twinsan_iscsi::pdu::{self, tmf, Pdu, RESERVED_TAG};
use twinsan_iscsi::text::TextPairs;

use common::initiator::{
    rw10, LoginOptions, LoginReply, MiniInitiator, RecvError, BLOCK, LOGIN_ITT, LUN1,
};

const IQN: &str = "iqn.2025-01.test.twinsan:sessions";
/// The target's NOP-In timers (ServerConfig::nop_interval and nop_timeout).
const NOP_INTERVAL: Duration = Duration::from_secs(5);
const NOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the target may take to close a connection it has decided to close.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// A running `twinsan serve` with one 16 MiB LUN, and the folder that holds its backing file.
struct Target {
    serve: common::Serve,
    _dir: common::TempDir,
}

fn start(tag: &str) -> Target {
    let dir = common::TempDir::new(tag);
    let lun = format!("1={}", dir.path().join("lun1.img").display());
    let serve = common::Serve::start(IQN, &["--lun", &lun, "--create", "16M"]);
    Target { serve, _dir: dir }
}

/// The first server log line that contains every one of `needles`, waiting up to 5 s for it (the log is read by
/// a thread); panics with the whole log if there is none.
fn log_line(serve: &common::Serve, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = serve.log();
        if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the server log has no line with all of {needles:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bytes that differ for every seed, so a stale or misplaced block shows.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> TextPairs {
    TextPairs(
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// What SendTargets=All must answer for this server: its one target at the portal the connection came in on.
fn send_targets_answer(t: &Target) -> TextPairs {
    let addr = format!("{},1", t.serve.addr);
    pairs(&[("TargetName", IQN), ("TargetAddress", &addr)])
}

/// Sends a WRITE(10) of `blocks` blocks with no immediate data and waits for the R2T that asks for all of it.
/// Returns the command's ITT and CmdSN.
fn start_write_until_r2t(m: &mut MiniInitiator, lba: u32, blocks: u16) -> (u32, u32) {
    let len = blocks as usize * BLOCK;
    let itt = m.itt();
    let cmd_sn = m.cmd_sn;
    let cmd = m.command(itt, rw10(0x2a, lba, blocks), len, 0, 0);
    m.send(&cmd, &[]).expect("send WRITE(10) without data");
    let r = m
        .recv(Duration::from_secs(5))
        .expect("an R2T for the WRITE(10)");
    match &r.pdu {
        Pdu::R2t(t)
            if t.itt == itt
                && t.ttt != RESERVED_TAG
                && t.r2t_sn == 0
                && t.buffer_offset == 0
                && t.desired_len == len as u32 => {}
        other => panic!("expected an R2T for all {len} bytes of ITT {itt:#x}, got {other:?}"),
    }
    (itt, cmd_sn)
}

/// Checks the fields every refused Login Response must have; the status itself is checked by the caller.
fn check_refusal(what: &str, reply: &LoginReply) {
    let r = &reply.response;
    assert!(
        !r.transit,
        "{what}: a refused Login Response must not have T=1: {r:?}"
    );
    assert_eq!(
        r.itt, LOGIN_ITT,
        "{what}: the Login Response must carry the request's ITT"
    );
}

// ---------------------------------------------------------------------------------------------------------------

/// A login with the InitiatorName and ISID of a live session and TSIH 0 reinstates it (RFC 7143 section 6.3.5):
/// the new login succeeds, the old connection is closed by the target, the new session sees the old one's
/// writes, and the log says so.
#[test]
fn session_reinstatement_replaces_the_old_session() {
    let t = start("reinstate");
    let addr = t.serve.addr;
    let opts = LoginOptions::normal(IQN, "reinstate");
    let mut old = MiniInitiator::login(addr, &opts)
        .unwrap_or_else(|e| panic!("first login: {e}\n{}", t.serve.log()));
    let data = pattern(1, 4096);
    old.write10(100, &data)
        .expect("WRITE(10) in the first session");

    let start = Instant::now();
    let mut new = MiniInitiator::login(addr, &opts).unwrap_or_else(|e| {
        panic!(
            "a second login with the same InitiatorName and ISID and TSIH 0 must reinstate the session: {e}\n{}",
            t.serve.log()
        )
    });
    let login_took = start.elapsed();
    let closed = old.wait_closed(CLOSE_WITHIN).unwrap_or_else(|e| {
        panic!(
            "the reinstated session's connection: {e}\n{}",
            t.serve.log()
        )
    });
    let back = new
        .read10(100, data.len())
        .expect("READ(10) in the new session");
    assert!(
        back == data,
        "the new session does not read back what the reinstated one wrote"
    );
    let line = log_line(
        &t.serve,
        &[
            "reinstating session",
            &common::initiator::initiator_iqn("reinstate"),
        ],
    );
    log_line(&t.serve, &["session reinstated by the initiator"]);
    new.ping(b"after reinstatement")
        .expect("ping in the new session");
    let (old_tsih, new_tsih) = (old.tsih, new.tsih);
    new.logout().expect("logout of the new session");
    eprintln!(
        "reinstatement: second login took {login_took:?}; old connection (TSIH {old_tsih}) closed {closed:?} after \
         it; new TSIH {new_tsih}; log: {line}"
    );
}

/// A login with a non-zero TSIH that no session has is refused with 0x020a "session does not exist" and the
/// connection is closed; the live session beside it is untouched.
#[test]
fn login_with_unknown_tsih_is_refused() {
    let t = start("unknown-tsih");
    let addr = t.serve.addr;
    let mut live = MiniInitiator::login(addr, &LoginOptions::normal(IQN, "live"))
        .unwrap_or_else(|e| panic!("login: {e}\n{}", t.serve.log()));
    let tsih = live.tsih.wrapping_add(0x1234).max(1);
    let opts = LoginOptions {
        tsih,
        ..LoginOptions::normal(IQN, "unknown-tsih")
    };
    let (mut m, reply) = MiniInitiator::attempt(addr, &opts).expect("Login Response");
    assert_eq!(
        reply.status(),
        0x020a,
        "login with unknown TSIH {tsih:#x} (live session has {:#x}): want status 0x020a (session does not exist), \
         got {:?}",
        live.tsih,
        reply.response
    );
    check_refusal("unknown TSIH", &reply);
    let closed = m
        .wait_closed(CLOSE_WITHIN)
        .unwrap_or_else(|e| panic!("after the refusal: {e}"));
    let line = log_line(&t.serve, &["login refused", "session does not exist"]);
    live.ping(b"still here")
        .expect("the live session after the refused login");
    live.logout().expect("logout");
    eprintln!("unknown TSIH {tsih:#x}: status 0x020a, closed after {closed:?}; log: {line}");
}

/// Logins the target must refuse, each with its exact Status-Class/Detail (RFC 7143 section 11.13.5), a closed
/// connection and a log line that names the reason. A good login still works afterwards.
#[test]
fn login_refusals_carry_the_exact_status() {
    let t = start("refusals");
    let addr = t.serve.addr;
    let cases: Vec<(&str, LoginOptions, u16, Vec<&str>)> = vec![
        (
            "unknown TargetName",
            LoginOptions::normal("iqn.2025-01.test.twinsan:no-such-target", "refuse-target"),
            0x0203,
            vec!["login refused", "no-such-target", "target not found"],
        ),
        (
            "no InitiatorName",
            LoginOptions {
                initiator_name: None,
                ..LoginOptions::normal(IQN, "refuse-name")
            },
            0x0207,
            vec!["login refused", "InitiatorName"],
        ),
        (
            "SessionType=Foo",
            LoginOptions {
                session_type: Some("Foo".into()),
                ..LoginOptions::normal(IQN, "refuse-type")
            },
            0x0209,
            vec!["login refused", "SessionType", "Foo"],
        ),
        (
            "version_min 1",
            LoginOptions {
                version_max: 1,
                version_min: 1,
                ..LoginOptions::normal(IQN, "refuse-version")
            },
            0x0205,
            vec!["login refused", "version"],
        ),
    ];
    let mut summary = Vec::new();
    for (what, opts, want, needles) in cases {
        let (mut m, reply) = MiniInitiator::attempt(addr, &opts)
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", t.serve.log()));
        assert_eq!(
            reply.status(),
            want,
            "{what}: want status {want:#06x}, got {:#06x} ({:?})",
            reply.status(),
            reply.response
        );
        check_refusal(what, &reply);
        let closed = m
            .wait_closed(CLOSE_WITHIN)
            .unwrap_or_else(|e| panic!("{what}: after the refusal: {e}"));
        let line = log_line(&t.serve, &needles);
        summary.push(format!(
            "{what}: {want:#06x}, closed after {closed:?}; log: {line}"
        ));
    }
    let m = MiniInitiator::login(addr, &LoginOptions::normal(IQN, "after-refusals"))
        .unwrap_or_else(|e| panic!("a good login after the refusals: {e}\n{}", t.serve.log()));
    m.logout().expect("logout");
    for s in summary {
        eprintln!("{s}");
    }
}

/// A discovery session: SendTargets=All lists the target at the portal the connection came in on; a SCSI
/// Command is rejected (reason 0x04, protocol error) without taking its CmdSN, and after the initiator plugs the
/// gap (RFC 7143 section 11.17.1) the session still answers a Text Request.
#[test]
fn discovery_session_lists_the_target_and_rejects_scsi_commands() {
    let t = start("discovery");
    let addr = t.serve.addr;
    let mut d = MiniInitiator::login(addr, &LoginOptions::discovery("discovery"))
        .unwrap_or_else(|e| panic!("discovery login: {e}\n{}", t.serve.log()));
    let want = send_targets_answer(&t);
    let first = d
        .text(&pairs(&[("SendTargets", "All")]))
        .expect("SendTargets=All");
    assert_eq!(first.pairs, want, "SendTargets=All in a discovery session");

    let itt = d.itt();
    let cmd_sn = d.cmd_sn;
    let cmd = d.command(itt, rw10(0x28, 0, 1), 0, BLOCK, 0);
    d.send(&cmd, &[]).expect("send READ(10)");
    let r = d
        .recv(Duration::from_secs(5))
        .expect("an answer to a SCSI Command in a discovery session");
    match &r.pdu {
        Pdu::Reject(j) => {
            assert_eq!(
                j.reason, 0x04,
                "Reject reason for a SCSI Command in a discovery session (want 0x04 protocol error)"
            );
            assert_eq!(
                r.data,
                cmd.encode().to_vec(),
                "the Reject carries the rejected header"
            );
            assert_eq!(
                j.exp_cmd_sn, cmd_sn,
                "a rejected command's CmdSN is not received (RFC 7143 section 11.17.1): ExpCmdSN stays at it"
            );
        }
        other => panic!("SCSI Command in a discovery session: expected a Reject, got {other:?}"),
    }
    log_line(
        &t.serve,
        &["discovery session sent a command other than Text/Logout"],
    );
    // Plug the CmdSN gap with the next command, as the initiator must.
    d.cmd_sn = cmd_sn;
    let again = d
        .text(&pairs(&[("SendTargets", "All")]))
        .expect("SendTargets=All after the Reject");
    assert_eq!(again.pairs, want, "SendTargets=All after the Reject");
    d.ping(b"discovery")
        .expect("NOP-Out in a discovery session");
    d.logout().expect("logout of the discovery session");
}

/// A long Text Request sent in pieces with the C bit (RFC 7143 sections 11.10.2 and 11.10.4): the target answers
/// each piece but the last with an empty Text Response, F=0 and a Target Transfer Tag; the initiator copies that
/// TTT into the next piece; the last piece (C=0, F=1) gets the complete answer.
#[test]
fn text_request_continuation() {
    let t = start("text-request");
    let addr = t.serve.addr;
    let opts = LoginOptions {
        max_recv_data_segment_length: 512,
        ..LoginOptions::discovery("text-request")
    };
    let mut d = MiniInitiator::login(addr, &opts)
        .unwrap_or_else(|e| panic!("discovery login: {e}\n{}", t.serve.log()));
    let itt = d.itt();
    // "SendTargets=All" cut mid-key and mid-value: pairs may span PDU boundaries (RFC 7143 section 6.1).
    let pieces: [&[u8]; 3] = [b"SendTar", b"gets=A", b"ll\0"];
    let mut ttt = RESERVED_TAG;
    let mut seen = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let last = i == pieces.len() - 1;
        let p = d.text_request(itt, ttt, last, !last, piece.len());
        d.send(&p, piece).expect("send a Text Request piece");
        let r = d
            .recv(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("piece {i}: no answer: {e}\n{}", t.serve.log()));
        let Pdu::TextResponse(resp) = &r.pdu else {
            panic!(
                "piece {i} of the Text Request (C={}, TTT {ttt:#x}): expected a Text Response, got {:?} \
                 (data {:02x?}); Text Responses so far: [{}]\n{}",
                !last,
                r.pdu,
                &r.data[..r.data.len().min(48)],
                seen.join("; "),
                t.serve.log()
            );
        };
        assert_eq!(resp.itt, itt, "piece {i}: Text Response ITT");
        seen.push(format!("{resp:?}"));
        if !last {
            assert!(
                !resp.final_ && !resp.cont && r.data.is_empty() && resp.ttt != RESERVED_TAG,
                "piece {i} (C=1): want an empty Text Response with F=0, C=0 and a TTT, got {resp:?} with {} bytes",
                r.data.len()
            );
            ttt = resp.ttt;
        } else {
            assert!(
                resp.final_ && !resp.cont && resp.ttt == RESERVED_TAG,
                "last piece: want F=1, C=0, TTT 0xffffffff, got {resp:?}"
            );
            let answer = TextPairs::parse(&r.data).expect("answer text");
            assert_eq!(
                answer,
                send_targets_answer(&t),
                "the answer to the reassembled request"
            );
        }
    }
    d.logout().expect("logout");
    eprintln!("text request continuation: {}", seen.join("; "));
}

/// A Text Response longer than the MaxRecvDataSegmentLength the initiator declared (512) comes in pieces: every
/// piece fits, each but the last has F=0 and a TTT that the initiator copies into an empty Text Request to get
/// the next one, the last has F=1 and TTT 0xffffffff, and the pieces make up the whole answer.
#[test]
fn text_response_continuation_within_small_mrdsl() {
    let t = start("text-response");
    let addr = t.serve.addr;
    let opts = LoginOptions {
        max_recv_data_segment_length: 512,
        ..LoginOptions::discovery("text-response")
    };
    let mut d = MiniInitiator::login(addr, &opts)
        .unwrap_or_else(|e| panic!("discovery login: {e}\n{}", t.serve.log()));
    // Unknown keys are each answered key=NotUnderstood (RFC 7143 section 6.2): 24 of them make a long answer.
    let keys: Vec<String> = (0..24)
        .map(|i| format!("X-org.twinsan.test.key{i:02}"))
        .collect();
    let mut request = TextPairs::default();
    for k in &keys {
        request.push(k.clone(), "value");
    }
    request.push("SendTargets", "All");
    let mut want = TextPairs::default();
    for k in &keys {
        want.push(k.clone(), "NotUnderstood");
    }
    want.0.extend(send_targets_answer(&t).0);
    let answer = d
        .text(&request)
        .unwrap_or_else(|e| panic!("long text exchange: {e}\n{}", t.serve.log()));
    assert!(
        want.encode().len() > 512,
        "the expected answer must not fit one PDU"
    );
    assert!(
        answer.responses.len() >= 2,
        "an answer of {} bytes came in {} Text Response(s) under MaxRecvDataSegmentLength 512",
        want.encode().len(),
        answer.responses.len()
    );
    assert_eq!(answer.pairs, want, "the reassembled answer");
    d.ping(b"after").expect("ping after the long answer");
    d.logout().expect("logout");
    eprintln!(
        "text response continuation: {} bytes in {} Text Responses",
        want.encode().len(),
        answer.responses.len()
    );
}

/// After 5 s of silence the target pings with a NOP-In (ITT 0xffffffff, a TTT, StatSN not advanced); answering
/// it (immediate NOP-Out, ITT 0xffffffff, same TTT) keeps the connection up past the 10 s ping timeout.
#[test]
fn nop_in_ping_answered_keeps_the_connection() {
    let t = start("nop-in");
    let addr = t.serve.addr;
    let mut m = MiniInitiator::login(addr, &LoginOptions::normal(IQN, "nop-in"))
        .unwrap_or_else(|e| panic!("login: {e}\n{}", t.serve.log()));
    let start = Instant::now();
    let exp_stat_sn = m.exp_stat_sn;
    let r = m
        .recv_raw(NOP_INTERVAL + Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("waiting for a NOP-In ping: {e}\n{}", t.serve.log()));
    let first = start.elapsed();
    let ping = match r.pdu {
        Pdu::NopIn(n) if n.itt == RESERVED_TAG => n,
        other => panic!("an idle session: expected a NOP-In ping, got {other:?}"),
    };
    assert_ne!(
        ping.ttt, RESERVED_TAG,
        "a ping asking for an answer has a TTT"
    );
    assert_eq!(
        ping.stat_sn, exp_stat_sn,
        "a ping carries the next StatSN without advancing it"
    );
    assert!(r.data.is_empty(), "the ping carries no data");
    assert!(
        first >= NOP_INTERVAL - Duration::from_millis(500)
            && first <= NOP_INTERVAL + Duration::from_secs(2),
        "the first ping came after {first:?} of silence (nop_interval {NOP_INTERVAL:?})"
    );
    m.answer_ping(&ping).expect("answer the ping");
    // Stay until well past the ping timeout, answering every ping.
    let until = Instant::now() + NOP_TIMEOUT + Duration::from_secs(3);
    let mut pings = 1;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match m.recv_raw(left) {
            Err(RecvError::Timeout) => break,
            Err(e) => panic!(
                "the target dropped a session that answered its ping: {e} ({:?} after the first ping)\n{}",
                start.elapsed() - first,
                t.serve.log()
            ),
            Ok(p) => match p.pdu {
                Pdu::NopIn(n) if n.itt == RESERVED_TAG && n.ttt != RESERVED_TAG => {
                    pings += 1;
                    m.answer_ping(&n).expect("answer a later ping");
                }
                other => panic!("an idle session: unexpected {other:?}"),
            },
        }
    }
    m.ping(b"still up").unwrap_or_else(|e| {
        panic!(
            "the connection after {:?}: {e}\n{}",
            start.elapsed(),
            t.serve.log()
        )
    });
    assert!(
        !t.serve.log().contains("did not answer a NOP-In ping"),
        "the target logged an unanswered ping:\n{}",
        t.serve.log()
    );
    m.logout().expect("logout");
    eprintln!(
        "NOP-In: first ping after {first:?} (TTT {:#x}); {pings} pings answered; connection up after {:?}",
        ping.ttt,
        start.elapsed()
    );
}

/// A Logout (close the session) while a WRITE waits for the data its R2T asked for: the Logout Response comes
/// (no SCSI Response for the write), the connection closes, and the write never reached the LUN.
#[test]
fn logout_while_a_write_waits_for_data() {
    let t = start("logout-r2t");
    let addr = t.serve.addr;
    let mut m = MiniInitiator::login(addr, &LoginOptions::normal(IQN, "logout-r2t"))
        .unwrap_or_else(|e| panic!("login: {e}\n{}", t.serve.log()));
    let before = pattern(2, 8 * BLOCK);
    m.write10(64, &before).expect("first WRITE(10)");
    let (write_itt, _) = start_write_until_r2t(&mut m, 64, 8);

    let itt = m.itt();
    let logout = Pdu::LogoutRequest(pdu::LogoutRequest {
        immediate: true,
        reason: 0,
        itt,
        cid: 1,
        cmd_sn: m.cmd_sn,
        exp_stat_sn: m.exp_stat_sn,
    });
    m.send(&logout, &[]).expect("send Logout Request");
    let r = m
        .recv(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("waiting for the Logout Response: {e}\n{}", t.serve.log()));
    match &r.pdu {
        Pdu::LogoutResponse(l) if l.itt == itt => {
            assert_eq!(l.response, 0, "Logout Response: {l:?}")
        }
        other => panic!(
            "with WRITE ITT {write_itt:#x} waiting for Data-Out, a Logout got {other:?} instead of a Logout Response"
        ),
    }
    let closed = m
        .wait_closed(CLOSE_WITHIN)
        .unwrap_or_else(|e| panic!("after the Logout Response: {e}"));
    log_line(&t.serve, &["logout requested"]);

    let mut check = MiniInitiator::login(addr, &LoginOptions::normal(IQN, "logout-check"))
        .unwrap_or_else(|e| panic!("second login: {e}\n{}", t.serve.log()));
    let back = check.read10(64, before.len()).expect("READ(10)");
    assert!(
        back == before,
        "the write cut short by the Logout changed the LUN"
    );
    check.logout().expect("logout");
    eprintln!("logout with a write waiting for Data-Out: Logout Response, connection closed after {closed:?}");
}

/// ABORT TASK for a WRITE waiting for Data-Out: TMF response 0 (function complete), no SCSI Response for the
/// aborted command, the write never reaches the LUN, and the session goes on.
#[test]
fn abort_task_of_a_write_waiting_for_data() {
    let t = start("abort-task");
    let addr = t.serve.addr;
    let mut m = MiniInitiator::login(addr, &LoginOptions::normal(IQN, "abort-task"))
        .unwrap_or_else(|e| panic!("login: {e}\n{}", t.serve.log()));
    let before = pattern(3, 8 * BLOCK);
    m.write10(128, &before).expect("first WRITE(10)");
    let (write_itt, write_sn) = start_write_until_r2t(&mut m, 128, 8);

    let itt = m.itt();
    let abort = Pdu::TaskMgmtRequest(pdu::TaskMgmtRequest {
        immediate: true,
        function: tmf::ABORT_TASK,
        lun: LUN1,
        itt,
        referenced_tag: write_itt,
        cmd_sn: m.cmd_sn,
        exp_stat_sn: m.exp_stat_sn,
        ref_cmd_sn: write_sn,
        exp_data_sn: 0,
    });
    m.send(&abort, &[]).expect("send ABORT TASK");
    let r = m
        .recv(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("waiting for the TMF response: {e}\n{}", t.serve.log()));
    match &r.pdu {
        Pdu::TaskMgmtResponse(x) if x.itt == itt => assert_eq!(
            x.response,
            tmf::COMPLETE,
            "ABORT TASK of a write waiting for Data-Out: {x:?}"
        ),
        other => panic!("ABORT TASK of ITT {write_itt:#x}: expected a TMF response, got {other:?}"),
    }
    match m.recv(Duration::from_millis(1500)) {
        Err(RecvError::Timeout) => {}
        other => {
            panic!("after ABORT TASK nothing more may come for the aborted write, got {other:?}")
        }
    }

    let back = m
        .read10(128, before.len())
        .expect("READ(10) after the abort");
    assert!(back == before, "the aborted write changed the LUN");
    let after = pattern(4, 8 * BLOCK);
    m.write10(256, &after).expect("WRITE(10) after the abort");
    assert!(
        m.read10(256, after.len()).expect("READ(10)") == after,
        "read back after the abort differs"
    );
    m.ping(b"after abort").expect("ping after the abort");
    m.logout().expect("logout");
}
