//! Raw SCSI commands through libiscsi: `tests/tools/iscsi-cdb.c`, built here against the installed libiscsi
//! (libiscsi-dev), carries CDBs this module builds and returns status, sense and Data-In. It is how the tests
//! reach what libiscsi's shell tools do not expose — persistent reservations, VPD pages as bytes — while the
//! initiator on the wire is still libiscsi's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::{require_tool, run, text};

/// SCSI status GOOD.
pub const GOOD: u8 = 0x00;
/// SCSI status CHECK CONDITION.
pub const CHECK_CONDITION: u8 = 0x02;
/// SCSI status RESERVATION CONFLICT.
pub const RESERVATION_CONFLICT: u8 = 0x18;

/// PERSISTENT RESERVE OUT service actions.
pub const PR_REGISTER: u8 = 0x00;
pub const PR_RESERVE: u8 = 0x01;
/// PERSISTENT RESERVE IN service action READ FULL STATUS.
pub const PR_READ_FULL_STATUS: u8 = 0x03;
/// Reservation type Write Exclusive – Registrants Only.
pub const TYPE_WE_RO: u8 = 0x05;

/// The iscsi-cdb program, compiled once per test binary.
pub fn tool() -> &'static Path {
    static TOOL: OnceLock<PathBuf> = OnceLock::new();
    TOOL.get_or_init(|| libiscsi_tool("iscsi-cdb"))
}

/// Builds `tests/tools/NAME.c` against the installed libiscsi (libiscsi-dev) into the test binary's temporary
/// folder, and returns the program.
pub fn libiscsi_tool(name: &str) -> PathBuf {
    let cc = require_tool("cc");
    assert!(
        Path::new("/usr/include/iscsi/iscsi.h").is_file(),
        "libiscsi's headers are not installed: run scripts/test (it installs libiscsi-dev)"
    );
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/tools/{name}.c"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let built = run(
        Command::new(cc)
            .args(["-Wall", "-O2", "-o"])
            .arg(&out)
            .arg(&source)
            .arg("-liscsi"),
        Duration::from_secs(120),
    );
    assert!(
        built.status.success(),
        "building {name} failed:\n{}",
        text(&built)
    );
    out
}

/// One initiator port: an iSCSI name and the number in its ISID (the same pair is the same I_T nexus).
#[derive(Clone, Copy, Debug)]
pub struct Initiator {
    pub name: &'static str,
    pub isid: u32,
}

/// What a command got back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u8,
    pub sense_key: u8,
    pub ascq: u16,
    pub data: Vec<u8>,
}

/// One command: the CDB and its transfer.
pub enum Cmd {
    None(Vec<u8>),
    In(Vec<u8>, usize),
    Out(Vec<u8>, Vec<u8>),
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Logs in to `url` as `who` and runs `cmds` in order on that one session; `Err` with the tool's output when the
/// login or the transport failed (a target that is not there yet, for example).
pub fn try_run(url: &str, who: Initiator, cmds: &[Cmd]) -> Result<Vec<Answer>, String> {
    let mut c = Command::new(tool());
    c.arg(url).arg(who.name).arg(who.isid.to_string());
    for cmd in cmds {
        c.arg(match cmd {
            Cmd::None(cdb) => hex(cdb),
            Cmd::In(cdb, n) => format!("{}:in={n}", hex(cdb)),
            Cmd::Out(cdb, data) => format!("{}:out={}", hex(cdb), hex(data)),
        });
    }
    let out = run(&mut c, Duration::from_secs(60));
    if !out.status.success() {
        return Err(text(&out));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<Answer> = stdout
        .lines()
        .map(|line| {
            let field = |k: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .unwrap_or_default()
                    .to_string()
            };
            Answer {
                status: field("status=").parse().unwrap_or(0xff),
                sense_key: field("key=").parse().unwrap_or(0xff),
                ascq: u16::from_str_radix(field("ascq=").trim_start_matches("0x"), 16)
                    .unwrap_or(0xffff),
                data: unhex(&field("data=")),
            }
        })
        .collect();
    if answers.len() != cmds.len() {
        return Err(format!(
            "{} answers to {} commands:\n{}",
            answers.len(),
            cmds.len(),
            text(&out)
        ));
    }
    Ok(answers)
}

/// [`try_run`] that fails the test on a transport error.
pub fn run_cmds(url: &str, who: Initiator, cmds: &[Cmd]) -> Vec<Answer> {
    try_run(url, who, cmds).unwrap_or_else(|e| panic!("iscsi-cdb at {url} as {who:?}: {e}"))
}

/// TEST UNIT READY: the first command of a session takes any pending unit attention.
pub fn test_unit_ready() -> Cmd {
    Cmd::None(vec![0; 6])
}

/// INQUIRY for VPD page `page`.
pub fn inquiry_vpd(page: u8) -> Cmd {
    Cmd::In(vec![0x12, 0x01, page, 0x10, 0x00, 0x00], 4096)
}

/// PERSISTENT RESERVE OUT with the basic 24-byte parameter list.
pub fn pr_out(service_action: u8, pr_type: u8, key: u64, sa_key: u64) -> Cmd {
    let mut cdb = vec![0u8; 10];
    cdb[0] = 0x5f;
    cdb[1] = service_action;
    cdb[2] = pr_type; // scope 0 (LU_SCOPE) in the high nibble
    cdb[5..9].copy_from_slice(&24u32.to_be_bytes());
    let mut params = vec![0u8; 24];
    params[0..8].copy_from_slice(&key.to_be_bytes());
    params[8..16].copy_from_slice(&sa_key.to_be_bytes());
    Cmd::Out(cdb, params)
}

/// PERSISTENT RESERVE IN with `service_action`.
pub fn pr_in(service_action: u8) -> Cmd {
    let mut cdb = vec![0u8; 10];
    cdb[0] = 0x5e;
    cdb[1] = service_action;
    cdb[7..9].copy_from_slice(&8192u16.to_be_bytes());
    Cmd::In(cdb, 8192)
}

/// WRITE (16) of one 512-byte block of `byte` at `lba`.
pub fn write16(lba: u64, byte: u8) -> Cmd {
    let mut cdb = vec![0u8; 16];
    cdb[0] = 0x8a;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&1u32.to_be_bytes());
    Cmd::Out(cdb, vec![byte; 512])
}

/// One full status descriptor of READ FULL STATUS (SPC-4 6.15.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub key: u64,
    pub all_tg_pt: bool,
    pub holder: bool,
    pub scope_type: u8,
    pub relative_target_port: u16,
    /// The initiator's TransportID as sent.
    pub transport_id: Vec<u8>,
}

/// PRGENERATION and the descriptors of READ FULL STATUS parameter data.
pub fn parse_full_status(data: &[u8]) -> (u32, Vec<Registration>) {
    assert!(
        data.len() >= 8,
        "READ FULL STATUS data too short: {}",
        hex(data)
    );
    let generation = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let len = u32::from_be_bytes([data[4], data[5], data[6], data[7]]) as usize;
    let body = &data[8..(8 + len).min(data.len())];
    let mut out = Vec::new();
    let mut at = 0;
    while at + 24 <= body.len() {
        let d = &body[at..];
        let tid_len = u32::from_be_bytes([d[20], d[21], d[22], d[23]]) as usize;
        let end = (24 + tid_len).min(d.len());
        out.push(Registration {
            key: u64::from_be_bytes(d[0..8].try_into().unwrap_or_default()),
            all_tg_pt: d[12] & 0x02 != 0,
            holder: d[12] & 0x01 != 0,
            scope_type: d[13],
            relative_target_port: u16::from_be_bytes([d[18], d[19]]),
            transport_id: d[24..end].to_vec(),
        });
        at += 24 + tid_len;
    }
    (generation, out)
}
