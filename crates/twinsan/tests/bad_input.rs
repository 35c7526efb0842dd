//! Acceptance test of SPEC 2.1 "Bad input" and invariant 6: malformed and oversize PDUs, garbage before login,
//! wrong digests, commands outside the CmdSN window, clients that never speak, thousands of connections and
//! random garbage after login each get a Reject or a closed connection with a log line saying why, memory stays
//! bounded, and the sessions that behave keep working.
//!
//! Two good initiators run through the whole bad-input phase: QEMU's iSCSI driver (`qemu-io`, one new session per
//! round of patterned writes and verified reads) and one long-lived session of the small blocking initiator in
//! `common/initiator.rs` (WRITE(10)/READ(10) round trips with verification, immediate data and R2T-solicited
//! Data-Out, under CRC32C digests). The small initiator is also what sends the bad input: it frames PDUs itself,
//! so it can get every length, digest and sequence number wrong on purpose.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use twinsan_iscsi::pdu::{self, opcode, Pdu, BHS_LEN, RESERVED_TAG};

use common::initiator::{
    connect, expect_closed, frame, frame_with_ahs, recv_pdu, rw10, unique_isid, Damage, Digests,
    LoginOptions, MiniInitiator, RecvError, BLOCK, DEFAULT_MRDSL, LUN1,
};

const IQN: &str = "iqn.2025-01.test.twinsan:bad-input";
/// The login timeout of the target (ServerConfig::login_timeout) and how much later than that a close may come.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
const CLOSE_MARGIN: Duration = Duration::from_secs(6);
/// The target's connection limit (ServerConfig::max_connections).
const MAX_CONNECTIONS: usize = 1024;
const FLOOD_CONNECTIONS: usize = 2000;
/// The server's resident memory must stay under this through the whole test (VmHWM, its peak).
const RSS_LIMIT_KIB: u64 = 200 * 1024;
/// The long-lived session's region of the LUN (qemu-io uses the first 8 MiB).
const LONG_LIVED_BASE_LBA: u32 = (48 << 20) / BLOCK as u32;
const LONG_LIVED_SLOT_BYTES: usize = 128 * 1024;
/// A round trip of the good session that takes longer than this counts as an interruption.
const MAX_ROUND_TRIP: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------------------------
// Seeded pseudo-random bytes (SplitMix64): the same garbage on every run, a different seed with
// TWINSAN_BAD_INPUT_SEED.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// Bytes of a patterned block region: different for every (round, slot) so a stale or misplaced read shows.
fn pattern(round: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(round.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x6a09_e667);
    rng.bytes(len)
}

// ---------------------------------------------------------------------------------------------------------------
// The server process: its pid (the harness has no accessor) and its memory.

/// A `Vm*:` field of /proc/PID/status, in KiB.
fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read /proc/PID/status of the server");
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn raise_open_file_limit(want: libc::rlim_t) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        assert_eq!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim),
            0,
            "getrlimit(RLIMIT_NOFILE)"
        );
        if lim.rlim_cur < want {
            let new = want.min(lim.rlim_max);
            let raised = libc::rlimit {
                rlim_cur: new,
                rlim_max: lim.rlim_max,
            };
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &raised),
                0,
                "setrlimit(RLIMIT_NOFILE, {new})"
            );
            lim.rlim_cur = new;
        }
    }
    assert!(
        lim.rlim_cur >= want,
        "the open-file limit is {} (hard {}); this test needs {want}",
        lim.rlim_cur,
        lim.rlim_max
    );
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------------------------
// The good initiators.

/// One qemu-io process: eight 1 MiB regions written with distinct patterns, then each read back and verified.
fn qemu_round(url: &str, round: u64) -> Result<(), String> {
    let mut cmd = std::process::Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    let pat = |k: u64| ((round * 8 + k) % 250 + 1) as u8;
    for k in 0..8 {
        cmd.arg("-c")
            .arg(format!("write -P {:#04x} {}M 1M", pat(k), k));
    }
    for k in 0..8 {
        cmd.arg("-c")
            .arg(format!("read -P {:#04x} {}M 1M", pat(k), k));
    }
    cmd.arg(url);
    let out = common::run(&mut cmd, Duration::from_secs(60));
    let text = common::text(&out);
    let lower = text.to_lowercase();
    let wrote = text.matches("wrote 1048576/1048576 bytes").count();
    let read = text.matches("read 1048576/1048576 bytes").count();
    if !out.status.success()
        || lower.contains("fail")
        || lower.contains("error")
        || wrote != 8
        || read != 8
    {
        return Err(format!(
            "qemu-io round {round}: {} (wrote {wrote}/8, read {read}/8):\n{text}",
            out.status
        ));
    }
    Ok(())
}

struct QemuReport {
    rounds: u64,
    failures: Vec<String>,
}

fn spawn_qemu_rounds(url: String, stop: Arc<AtomicBool>) -> JoinHandle<QemuReport> {
    thread::spawn(move || {
        let mut report = QemuReport {
            rounds: 0,
            failures: Vec::new(),
        };
        while !stop.load(Ordering::SeqCst) {
            if let Err(e) = qemu_round(&url, report.rounds) {
                report.failures.push(e);
            }
            report.rounds += 1;
        }
        report
    })
}

struct LongLivedReport {
    rounds: u64,
    slowest: Duration,
    error: Option<String>,
}

/// One session for the whole test: per round a 128 KiB write (64 KiB immediate data, the rest solicited by an R2T)
/// of a fresh pattern, read back and compared; every fourth round a 4 KiB all-immediate write and a ping.
fn long_lived_round(s: &mut MiniInitiator, round: u64) -> Result<(), String> {
    let slot = (round % 16) as u32;
    let lba = LONG_LIVED_BASE_LBA + slot * (LONG_LIVED_SLOT_BYTES / BLOCK) as u32;
    let data = pattern(round, LONG_LIVED_SLOT_BYTES);
    s.write10(lba, &data)?;
    let back = s.read10(lba, data.len())?;
    if back != data {
        let at = back
            .iter()
            .zip(&data)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(format!(
            "round {round}: read back differs from what was written, first at byte {at} of LBA {lba}"
        ));
    }
    if round & 3 == 0 {
        let small_lba = LONG_LIVED_BASE_LBA + 16 * (LONG_LIVED_SLOT_BYTES / BLOCK) as u32;
        let small = pattern(round ^ 0xffff, 4096);
        s.write10(small_lba, &small)?;
        if s.read10(small_lba, small.len())? != small {
            return Err(format!("round {round}: 4 KiB read back differs"));
        }
        s.ping(format!("alive {round}").as_bytes())?;
    }
    Ok(())
}

fn spawn_long_lived(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> JoinHandle<LongLivedReport> {
    thread::spawn(move || {
        let mut report = LongLivedReport {
            rounds: 0,
            slowest: Duration::ZERO,
            error: None,
        };
        let mut s = match login_session(addr, "long-lived", digests_on()) {
            Ok(s) => s,
            Err(e) => {
                report.error = Some(format!("login: {e}"));
                return report;
            }
        };
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            if let Err(e) = long_lived_round(&mut s, report.rounds) {
                report.error = Some(e);
                return report;
            }
            report.slowest = report.slowest.max(t.elapsed());
            report.rounds += 1;
            progress.store(report.rounds, Ordering::SeqCst);
        }
        if let Err(e) = s.logout() {
            report.error = Some(e);
        }
        report
    })
}

fn wait_for_progress(progress: &AtomicU64, from: u64, rounds: u64, within: Duration, when: &str) {
    let deadline = Instant::now() + within;
    while progress.load(Ordering::SeqCst) < from + rounds {
        assert!(
            Instant::now() < deadline,
            "the long-lived session did {} rounds in {within:?} {when} (wanted {rounds})",
            progress.load(Ordering::SeqCst) - from
        );
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The bad-input cases. Each returns a one-line summary of what the target did.

fn digests_on() -> Digests {
    Digests::CRC32C
}

fn digests_off() -> Digests {
    Digests::NONE
}

/// A normal session of the small initiator to this test's target, with a fresh ISID.
fn login_session(addr: SocketAddr, name: &str, digests: Digests) -> Result<MiniInitiator, String> {
    let opts = LoginOptions {
        digests,
        ..LoginOptions::normal(IQN, name)
    };
    MiniInitiator::login(addr, &opts)
}

/// (a) Bytes that are not a Login Request before login.
fn case_garbage_before_login(addr: SocketAddr) -> String {
    // Something else's protocol: its "data segment length" bytes are large, so framing alone refuses it.
    let mut s = connect(addr).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: twinsan\r\nUser-Agent: bad-input-test\r\n\r\n")
        .expect("send HTTP request");
    let http = expect_closed(&mut s, Duration::from_secs(5), "HTTP request before login");
    // A well-framed PDU of the wrong kind: a SCSI Command (TEST UNIT READY) as the first PDU.
    let mut s = connect(addr).expect("connect");
    let cmd = Pdu::ScsiCommand(pdu::ScsiCommand {
        immediate: false,
        final_: true,
        read: false,
        write: false,
        attr: 1,
        ahs_words: 0,
        data_len: 0,
        lun: LUN1,
        itt: 1,
        expected_len: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
        cdb: [0; 16],
    });
    s.write_all(&cmd.encode()).expect("send SCSI Command");
    let scsi = expect_closed(&mut s, Duration::from_secs(5), "SCSI Command before login");
    format!(
        "(a) garbage before login: HTTP request closed after {http:?}, SCSI Command as first PDU \
         closed after {scsi:?}"
    )
}

/// (b) Oversize and malformed segments: a Login Request announcing 16 MiB, a NOP-Out over the target's
/// MaxRecvDataSegmentLength after login, an AHS over the limit.
fn case_oversize(addr: SocketAddr) -> String {
    let mut s = connect(addr).expect("connect");
    let login = Pdu::LoginRequest(pdu::LoginRequest {
        transit: true,
        cont: false,
        csg: 1,
        nsg: 3,
        version_max: 0,
        version_min: 0,
        data_len: (1 << 24) - 1,
        isid: unique_isid(),
        tsih: 0,
        itt: 1,
        cid: 1,
        cmd_sn: 1,
        exp_stat_sn: 0,
    });
    s.write_all(&login.encode())
        .expect("send oversize Login Request header");
    // Start streaming the "segment"; the target may close before all of it is written.
    let _ = s.write_all(&vec![b'A'; 64 * 1024]);
    let login_closed = expect_closed(
        &mut s,
        Duration::from_secs(5),
        "Login Request with a 16 MiB data segment",
    );

    let mut m =
        login_session(addr, "oversize-ffp", digests_off()).expect("login for the oversize case");
    let over = m.target_mrdsl + 4096;
    let nop = Pdu::NopOut(pdu::NopOut {
        immediate: true,
        lun: 0,
        itt: 7,
        ttt: RESERVED_TAG,
        cmd_sn: m.cmd_sn,
        exp_stat_sn: m.exp_stat_sn,
        data_len: over,
    });
    m.send_raw(&nop.encode())
        .expect("send oversize NOP-Out header");
    let _ = m.send_raw(&vec![0u8; 64 * 1024]);
    let ffp_closed = expect_closed(
        &mut m.stream,
        Duration::from_secs(5),
        "NOP-Out over MaxRecvDataSegmentLength",
    );

    let mut m = login_session(addr, "ahs-too-long", digests_off()).expect("login for the AHS case");
    let mut bhs = m.nop_out(8, &[]).encode();
    bhs[4] = 255; // TotalAHSLength: 1020 bytes
    let _ = m.send_raw(&frame_with_ahs(&bhs, &[0u8; 1020], &[], Digests::default()));
    let ahs_closed = expect_closed(
        &mut m.stream,
        Duration::from_secs(5),
        "PDU with a 1020-byte AHS",
    );
    format!(
        "(b) oversize: Login Request announcing 16 MiB closed after {login_closed:?}; NOP-Out of {over} bytes after \
         login (MRDSL {}) closed after {ffp_closed:?}; 1020-byte AHS closed after {ahs_closed:?}",
        m.target_mrdsl
    )
}

/// (c) Digests: a wrong data digest is rejected (reason 0x02) and the connection goes on; a wrong header digest
/// closes the connection.
fn case_digests(addr: SocketAddr) -> String {
    let mut m = login_session(addr, "digests", digests_on()).expect("login with CRC32C digests");
    m.ping(b"before").expect("good ping before the bad digests");

    let itt = m.itt();
    let payload = b"ping with a wrong data digest";
    let nop = m.nop_out(itt, payload);
    m.send_damaged(&nop, payload, Damage::DataDigest)
        .expect("send NOP-Out with a wrong data digest");
    let r = m
        .recv(Duration::from_secs(5))
        .expect("an answer to a wrong data digest");
    match &r.pdu {
        Pdu::Reject(j) => {
            assert_eq!(
                j.reason, 0x02,
                "Reject reason for a data digest error (want 0x02 Data Digest Error)"
            );
            assert_eq!(
                r.data.len(),
                BHS_LEN,
                "a Reject carries the rejected PDU's header"
            );
            assert_eq!(
                pdu::itt_of(r.data[..].try_into().expect("48 bytes")),
                itt,
                "the Reject names the rejected NOP-Out"
            );
        }
        other => panic!("wrong data digest: expected a Reject, got {other:?}"),
    }
    m.ping(b"after the rejected data digest")
        .expect("the connection goes on after a data digest Reject");

    let nop = m.nop_out(m.next_itt, b"x");
    m.send_damaged(&nop, b"x", Damage::HeaderDigest)
        .expect("send NOP-Out with a wrong header digest");
    let closed = expect_closed(&mut m.stream, Duration::from_secs(5), "wrong header digest");
    format!(
        "(c) digests: wrong data digest -> Reject 0x02 naming the PDU, connection still answers pings; wrong header \
         digest -> closed after {closed:?}"
    )
}

/// (d) Opcodes an initiator may not send: an unknown one and a target-only one are rejected; the connection goes on.
fn case_unknown_opcode(addr: SocketAddr) -> String {
    let mut m = login_session(addr, "unknown-opcode", digests_on()).expect("login");
    let mut seen = Vec::new();
    for op in [0x1c_u8, opcode::NOP_IN] {
        let mut bhs = m.nop_out(0x77, &[]).encode();
        bhs[0] = 0x40 | op;
        let bytes = frame(&bhs, &[], m.digests);
        m.send_raw(&bytes).expect("send PDU with a bad opcode");
        let r = m
            .recv(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("opcode {op:#04x}: no answer: {e}"));
        match &r.pdu {
            Pdu::Reject(j) => {
                assert_eq!(
                    &r.data[..],
                    &bhs[..],
                    "the Reject of opcode {op:#04x} carries its header"
                );
                seen.push(format!("{op:#04x} -> Reject {:#04x}", j.reason));
            }
            other => panic!("opcode {op:#04x}: expected a Reject, got {other:?}"),
        }
        m.ping(b"still there")
            .unwrap_or_else(|e| panic!("after rejecting opcode {op:#04x}: {e}"));
    }
    let unknown_reason = seen[0].clone();
    assert!(
        unknown_reason.ends_with("0x05"),
        "unknown opcode should be rejected as Command not supported (0x05): {unknown_reason}"
    );
    format!(
        "(d) bad opcodes: {}; connection kept working",
        seen.join(", ")
    )
}

/// (e) CmdSN outside [ExpCmdSN, MaxCmdSN]: far ahead and already used, both dropped without an answer; the next
/// in-window command is answered.
fn case_cmd_sn_window(addr: SocketAddr) -> String {
    let mut m = login_session(addr, "cmdsn-window", digests_on()).expect("login");
    m.read10(LONG_LIVED_BASE_LBA, BLOCK)
        .expect("a first in-window READ(10)");
    let exp = m.cmd_sn;
    let mut dropped = Vec::new();
    for (label, sn) in [
        ("far ahead", exp.wrapping_add(0x4000_0000)),
        ("behind", exp.wrapping_sub(1)),
    ] {
        let itt = m.itt();
        m.cmd_sn = sn;
        let cmd = m.command(itt, rw10(0x28, LONG_LIVED_BASE_LBA, 1), 0, BLOCK, 0);
        m.cmd_sn = exp;
        m.send(&cmd, &[]).expect("send out-of-window command");
        dropped.push((label, sn, itt));
    }
    match m.recv(Duration::from_millis(1500)) {
        Err(RecvError::Timeout) => {}
        other => {
            panic!("commands outside the CmdSN window must be dropped silently, got {other:?}")
        }
    }
    let data = m
        .read10(LONG_LIVED_BASE_LBA, BLOCK)
        .expect("an in-window command after the dropped ones");
    assert_eq!(data.len(), BLOCK);
    m.ping(b"after").expect("ping after the window test");
    let window: Vec<String> = dropped
        .iter()
        .map(|(l, sn, _)| format!("{l} (CmdSN {sn:#x} vs ExpCmdSN {exp:#x})"))
        .collect();
    format!(
        "(e) CmdSN window: {} dropped with no answer; the next in-window READ(10) answered",
        window.join(" and ")
    )
}

/// (f) Clients that never speak: nothing at all, half a header, and a logged-in session that never answers pings.
fn spawn_silent_clients(addr: SocketAddr) -> Vec<JoinHandle<String>> {
    let silent = thread::spawn(move || {
        let mut s = connect(addr).expect("connect silent client");
        let t = expect_closed(
            &mut s,
            LOGIN_TIMEOUT + CLOSE_MARGIN,
            "client that never speaks",
        );
        assert!(
            t >= LOGIN_TIMEOUT - Duration::from_secs(2),
            "a silent client was closed after only {t:?}"
        );
        format!("(f) silent client closed after {t:?}")
    });
    let half = thread::spawn(move || {
        let mut s = connect(addr).expect("connect half-header client");
        let login = Pdu::LoginRequest(pdu::LoginRequest {
            transit: true,
            cont: false,
            csg: 1,
            nsg: 3,
            version_max: 0,
            version_min: 0,
            data_len: 0,
            isid: unique_isid(),
            tsih: 0,
            itt: 1,
            cid: 1,
            cmd_sn: 1,
            exp_stat_sn: 0,
        });
        s.write_all(&login.encode()[..20])
            .expect("send half a header");
        let t = expect_closed(
            &mut s,
            LOGIN_TIMEOUT + CLOSE_MARGIN,
            "client that stops after 20 bytes of a header",
        );
        format!("(f) client stalled after 20 header bytes closed after {t:?}")
    });
    let mute = thread::spawn(move || {
        let mut m = login_session(addr, "mute-after-login", digests_on())
            .expect("login of the mute session");
        let start = Instant::now();
        let deadline = start + Duration::from_secs(30);
        let mut pings = 0;
        loop {
            match recv_pdu(&mut m.stream, m.digests, DEFAULT_MRDSL, deadline) {
                Ok(p) => match p.pdu {
                    Pdu::NopIn(n) if n.itt == RESERVED_TAG && n.ttt != RESERVED_TAG => pings += 1,
                    other => panic!("mute session: unexpected {other:?}"),
                },
                Err(RecvError::Closed) => break,
                Err(e) => panic!("mute session: {e}"),
            }
        }
        let t = start.elapsed();
        assert!(
            pings >= 1,
            "the target closed a mute session without pinging it first"
        );
        format!("(f) logged-in session that never answers: {pings} NOP-In ping(s), then closed after {t:?}")
    });
    vec![silent, half, mute]
}

/// (g) 2000 connections at once, held open: the limit holds, the good session keeps working, memory stays bounded.
fn case_flood(addr: SocketAddr, pid: u32, progress: &AtomicU64) -> String {
    let before = progress.load(Ordering::SeqCst);
    let start = Instant::now();
    let mut held = Vec::with_capacity(FLOOD_CONNECTIONS);
    let mut connect_failures = 0;
    for _batch in 0..FLOOD_CONNECTIONS / 250 {
        for _ in 0..250 {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(s) => held.push(s),
                Err(_) => connect_failures += 1,
            }
        }
        // Let the accept loop drain its queue, so the kernel does not drop SYNs (a 1 s retransmit each).
        thread::sleep(Duration::from_millis(20));
    }
    let opened = start.elapsed();
    // Hold them while the good session does several more round trips.
    wait_for_progress(
        progress,
        progress.load(Ordering::SeqCst),
        5,
        Duration::from_secs(10),
        "while 2000 connections were held",
    );
    // At the limit, one more client is accepted and closed at once.
    let mut extra = connect(addr).expect("connect one more");
    let refused = expect_closed(
        &mut extra,
        Duration::from_secs(5),
        "a connection over the limit",
    );
    let rss_during = vm_kib(pid, "VmRSS:");
    let mut open = 0;
    let mut closed = 0;
    for s in &held {
        s.set_nonblocking(true).expect("set_nonblocking");
        let mut b = [0u8; 1];
        match (&*s).read(&mut b) {
            Ok(0) => closed += 1,
            Ok(_) => panic!("the target sent data to a flood connection that never logged in"),
            Err(e) if e.kind() == ErrorKind::WouldBlock => open += 1,
            Err(_) => closed += 1,
        }
    }
    assert!(
        open <= MAX_CONNECTIONS,
        "{open} flood connections still open: over the limit of {MAX_CONNECTIONS}"
    );
    assert!(
        closed + connect_failures >= FLOOD_CONNECTIONS - MAX_CONNECTIONS,
        "only {closed} flood connections were closed (and {connect_failures} refused) of {FLOOD_CONNECTIONS}"
    );
    drop(held);
    // The server notices the closes and has room again.
    thread::sleep(Duration::from_millis(500));
    let during_rounds = progress.load(Ordering::SeqCst) - before;
    format!(
        "(g) {FLOOD_CONNECTIONS} connections opened in {opened:?} ({connect_failures} connects failed): {open} held \
         open, {closed} closed by the target at once; one more was closed after {refused:?}; server RSS {rss_during} \
         KiB; long-lived session did {during_rounds} round trips meanwhile"
    )
}

/// (h) Random garbage after a good login (and a few before): seeded, bounded. Every connection ends with the
/// target closing it after our half-close, every PDU it sent on the way is well formed, and the server lives.
fn case_random_garbage(addr: SocketAddr, serve: &mut common::Serve, seed: u64) -> String {
    const SESSIONS: usize = 48;
    let mut rng = Rng(seed);
    let mut answers = 0;
    let mut rejects = 0;
    let mut pdus_sent = 0;
    // Opcodes to build headers from: every initiator opcode but Task Management (a random TARGET RESET would give
    // the good sessions a legitimate UNIT ATTENTION), target-only ones and unknown ones.
    let opcodes: Vec<u8> = [
        0x00, 0x01, 0x03, 0x04, 0x05, 0x06, 0x10, 0x20, 0x21, 0x25, 0x3f, 0x07, 0x0f, 0x1c, 0x2a,
        0x3e,
    ]
    .to_vec();
    for i in 0..SESSIONS {
        let digests = if i % 2 == 0 {
            digests_on()
        } else {
            digests_off()
        };
        let pre_login = i % 8 == 7;
        let mut m = if pre_login {
            None
        } else {
            Some(
                login_session(addr, &format!("fuzz-{i}"), digests)
                    .unwrap_or_else(|e| panic!("fuzz session {i}: {e}")),
            )
        };
        let d = m.as_ref().map(|m| m.digests).unwrap_or_default();
        let cmd_sn = m.as_ref().map(|m| m.cmd_sn).unwrap_or(1);
        let mut wire = Vec::new();
        for _ in 0..1 + rng.below(8) {
            let mut bhs = [0u8; BHS_LEN];
            rng.fill(&mut bhs);
            let op = opcodes[rng.below(opcodes.len() as u64) as usize];
            bhs[0] = (bhs[0] & 0x40) | op;
            let ahs_words = match rng.below(16) {
                0 => rng.below(256) as usize,
                1..=3 => 1 + rng.below(4) as usize,
                _ => 0,
            };
            bhs[4] = ahs_words as u8;
            let data_len = match rng.below(16) {
                0 => rng.below(1 << 24) as usize,
                1..=2 => rng.below(9000) as usize,
                _ => rng.below(600) as usize,
            };
            bhs[5..8].copy_from_slice(&(data_len as u32).to_be_bytes()[1..]);
            if rng.chance(2) {
                bhs[24..28].copy_from_slice(&cmd_sn.to_be_bytes());
            }
            if op == opcode::SCSI_COMMAND && (rng.chance(2) || bhs[8..16] == LUN1.to_be_bytes()) {
                // LUN 0 does not exist: random CDBs there exercise the engine without touching the good data.
                bhs[8..16].fill(0);
            }
            let ahs = rng.bytes(ahs_words * 4);
            let data = rng.bytes(data_len.min(16 * 1024));
            let mut f = frame_with_ahs(&bhs, &ahs, &data, d);
            if rng.chance(8) {
                let at = rng.below(f.len() as u64) as usize;
                f[at] ^= 1 << rng.below(8);
            }
            wire.extend_from_slice(&f);
            pdus_sent += 1;
        }
        if rng.chance(4) {
            let tail_len = rng.below(100) as usize;
            let mut tail = rng.bytes(tail_len);
            if let Some(b) = tail.first_mut() {
                if *b & 0x3f == opcode::TASK_MGMT_REQUEST {
                    *b ^= 0x01;
                }
            }
            wire.extend_from_slice(&tail);
        }
        let mut stream = match m.take() {
            Some(m) => m.stream,
            None => connect(addr).expect("connect for pre-login garbage"),
        };
        // The target may close while we write; that is one of the allowed outcomes.
        let _ = stream.write_all(&wire);
        let _ = stream.shutdown(Shutdown::Write);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match recv_pdu(&mut stream, d, DEFAULT_MRDSL, deadline) {
                Ok(p) => {
                    answers += 1;
                    if matches!(p.pdu, Pdu::Reject(_)) {
                        rejects += 1;
                    }
                }
                Err(RecvError::Closed) => break,
                Err(RecvError::Timeout) => panic!(
                    "fuzz session {i} (seed {seed:#x}): the target neither answered nor closed within 10 s"
                ),
                Err(RecvError::Broken(why)) => panic!("fuzz session {i} (seed {seed:#x}): {why}"),
            }
        }
        assert!(
            serve.alive(),
            "the server died during fuzz session {i} (seed {seed:#x}):\n{}",
            serve.log()
        );
    }
    format!(
        "(h) random garbage (seed {seed:#x}): {SESSIONS} connections, {pdus_sent} random PDUs; the target sent \
         {answers} well-formed PDUs ({rejects} Rejects) and closed every connection"
    )
}

// ---------------------------------------------------------------------------------------------------------------

#[test]
fn bad_input_while_good_session_does_io() {
    common::require_tool("qemu-io");
    raise_open_file_limit(2 * FLOOD_CONNECTIONS as libc::rlim_t + 512);
    let test_start = Instant::now();
    let dir = common::TempDir::new("bad-input");
    let lun = dir.path().join("lun1.img");
    let lun_arg = format!("1={}", lun.display());
    let mut serve = common::Serve::start(IQN, &["--lun", &lun_arg, "--create", "64M"]);
    let addr = serve.addr;
    let pid = serve.pid().expect("twinsan serve is running");
    let rss_start = vm_kib(pid, "VmRSS:");

    // The good initiators.
    qemu_round(&serve.url(1), 1000)
        .unwrap_or_else(|e| panic!("qemu-io before any bad input: {e}\n{}", serve.log()));
    let stop_qemu = Arc::new(AtomicBool::new(false));
    let qemu = spawn_qemu_rounds(serve.url(1), stop_qemu.clone());
    let stop_long = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let long = spawn_long_lived(addr, stop_long.clone(), progress.clone());
    wait_for_progress(
        &progress,
        0,
        3,
        Duration::from_secs(20),
        "before the bad input",
    );

    // The slow cases (login timeout, ping timeout) run beside the others.
    let silent = spawn_silent_clients(addr);

    let mut summary = vec![
        case_garbage_before_login(addr),
        case_oversize(addr),
        case_digests(addr),
        case_unknown_opcode(addr),
        case_cmd_sn_window(addr),
    ];
    let seed = std::env::var("TWINSAN_BAD_INPUT_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x7ee7_5a17_bad1_0001);
    summary.push(case_random_garbage(addr, &mut serve, seed));
    for h in silent {
        summary.push(h.join().unwrap_or_else(|p| {
            panic!(
                "silent-client case failed: {}\n{}",
                panic_message(p),
                serve.log()
            )
        }));
    }
    assert!(
        serve.alive(),
        "the server died during the bad input:\n{}",
        serve.log()
    );

    // The flood fills the connection table, so new qemu-io sessions would be refused by design: stop them first.
    stop_qemu.store(true, Ordering::SeqCst);
    let qemu = qemu
        .join()
        .unwrap_or_else(|p| panic!("qemu-io thread: {}", panic_message(p)));
    summary.push(case_flood(addr, pid, &progress));
    assert!(
        serve.alive(),
        "the server died during the connection flood:\n{}",
        serve.log()
    );

    // After the flood: fresh sessions log in and work, the long-lived one still does.
    qemu_round(&serve.url(1), 2000)
        .unwrap_or_else(|e| panic!("qemu-io after the flood: {e}\n{}", serve.log()));
    let mut fresh =
        login_session(addr, "after-flood", digests_on()).expect("a fresh login after the flood");
    fresh
        .ping(b"fresh")
        .expect("ping on a fresh session after the flood");
    fresh.logout().expect("logout of the fresh session");
    wait_for_progress(
        &progress,
        progress.load(Ordering::SeqCst),
        3,
        Duration::from_secs(10),
        "after the flood",
    );

    stop_long.store(true, Ordering::SeqCst);
    let long = long
        .join()
        .unwrap_or_else(|p| panic!("long-lived session thread: {}", panic_message(p)));
    let rss_end = vm_kib(pid, "VmRSS:");
    let rss_peak = vm_kib(pid, "VmHWM:");
    assert!(serve.alive(), "the server died:\n{}", serve.log());
    let log = serve.log();

    for line in &summary {
        eprintln!("{line}");
    }
    eprintln!(
        "good I/O: {} qemu-io rounds during the bad input ({} failed); long-lived session {} round trips, slowest \
         {:?}; server RSS start {rss_start} KiB, end {rss_end} KiB, peak {rss_peak} KiB; test took {:?}",
        qemu.rounds,
        qemu.failures.len(),
        long.rounds,
        long.slowest,
        test_start.elapsed()
    );

    assert!(
        qemu.failures.is_empty(),
        "qemu-io rounds failed during the bad input:\n{}\n--- server log ---\n{log}",
        qemu.failures.join("\n")
    );
    assert!(
        qemu.rounds >= 2,
        "only {} qemu-io rounds ran during the bad input",
        qemu.rounds
    );
    assert!(
        long.error.is_none(),
        "the long-lived session failed: {}\n--- server log ---\n{log}",
        long.error.as_deref().unwrap_or("")
    );
    assert!(
        long.slowest < MAX_ROUND_TRIP,
        "a round trip of the long-lived session took {:?}",
        long.slowest
    );
    assert!(
        rss_peak < RSS_LIMIT_KIB,
        "the server's peak RSS was {rss_peak} KiB (limit {RSS_LIMIT_KIB} KiB)"
    );

    // Every closure and Reject has a log line saying why.
    for why in [
        "is not a Login Request",
        "exceeds MaxRecvDataSegmentLength 8192",
        "exceeds MaxRecvDataSegmentLength 262144",
        "additional header segments of 1020 bytes",
        "header digest mismatch",
        "data digest mismatch",
        "unknown or target-only opcode 0x1c",
        "login did not complete in time",
        "did not answer a NOP-In ping",
        "too many connections",
    ] {
        assert!(
            log.contains(why),
            "the server log has no line saying {why:?}:\n{log}"
        );
    }
    assert!(
        serve.stop(),
        "twinsan serve did not exit cleanly on SIGTERM:\n{}",
        serve.log()
    );
}
