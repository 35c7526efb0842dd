//! REPORT LUNS (SPC-4 6.33) and REPORT SUPPORTED OPERATION CODES (SPC-4 6.35) parameter data, plus the LUN
//! encoding both REPORT LUNS and the iSCSI LUN field use.

use crate::cdb::opcode::*;
use crate::cdb::service_action;
use crate::sense::Sense;

/// The 8-byte SAM LUN structure for LUN number `lun`: peripheral device addressing below 256, flat space
/// addressing below 16384; a larger value is taken to be a raw LUN structure already and sent as is.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    if lun < 256 {
        b[1] = lun as u8;
    } else if lun < 0x4000 {
        b[0] = 0x40 | (lun >> 8) as u8;
        b[1] = lun as u8;
    } else {
        b = lun.to_be_bytes();
    }
    b
}

/// The LUN number of an 8-byte SAM LUN structure (the inverse of [`encode_lun`]); a structure in neither
/// peripheral (bus 0) nor flat space form comes back as its raw big-endian value.
pub fn decode_lun(b: [u8; 8]) -> u64 {
    let single_level = b[2..].iter().all(|&x| x == 0);
    match b[0] >> 6 {
        0 if single_level && b[0] == 0 => u64::from(b[1]),
        1 if single_level => (u64::from(b[0] & 0x3F) << 8) | u64::from(b[1]),
        _ => u64::from_be_bytes(b),
    }
}

/// REPORT LUNS parameter data for `select_report` (00h/02h: every LUN; 01h: well-known LUNs, of which we
/// have none).
pub(super) fn report_luns(select_report: u8, luns: &[u64]) -> Vec<u8> {
    let listed: &[u64] = if select_report == 0x01 { &[] } else { luns };
    let list_len = u32::try_from(listed.len().saturating_mul(8)).unwrap_or(u32::MAX);
    let mut b = Vec::with_capacity(8 + listed.len() * 8);
    b.extend_from_slice(&list_len.to_be_bytes());
    b.extend_from_slice(&[0; 4]);
    for &lun in listed {
        b.extend_from_slice(&encode_lun(lun));
    }
    b
}

/// One command the logical unit implements, as REPORT SUPPORTED OPERATION CODES describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SupportedCommand {
    /// Operation code.
    pub opcode: u8,
    /// Service action, for opcodes that have them.
    pub service_action: Option<u16>,
    /// CDB USAGE DATA: byte 0 is the opcode, then a mask of the bits the device server evaluates (bits that are
    /// only checked to be zero are not shown).
    pub usage: &'static [u8],
}

/// Every command the logical unit implements, sorted by opcode and service action. UNMAP is listed only for a
/// thin provisioned logical unit (see [`listed`]).
pub(super) const SUPPORTED_COMMANDS: &[SupportedCommand] = {
    const fn op(opcode: u8, usage: &'static [u8]) -> SupportedCommand {
        SupportedCommand {
            opcode,
            service_action: None,
            usage,
        }
    }
    const fn sa(opcode: u8, service_action: u16, usage: &'static [u8]) -> SupportedCommand {
        SupportedCommand {
            opcode,
            service_action: Some(service_action),
            usage,
        }
    }
    const F: u8 = 0xFF;
    const PRIN: &[u8] = &[PERSISTENT_RESERVE_IN, 0x1F, 0, 0, 0, 0, 0, F, F, 0];
    const PROUT: &[u8] = &[PERSISTENT_RESERVE_OUT, 0x1F, F, 0, 0, F, F, F, F, 0];
    const SAI: &[u8] = &[
        SERVICE_ACTION_IN_16,
        0x1F,
        F,
        F,
        F,
        F,
        F,
        F,
        F,
        F,
        F,
        F,
        F,
        F,
        0x01,
        0,
    ];
    const GLS: &[u8] = &[
        SERVICE_ACTION_IN_16,
        0x1F,
        F,
        F,
        F,
        F,
        F,
        F,
        F,
        F,
        F,
        F,
        F,
        F,
        0,
        0,
    ];
    &[
        op(TEST_UNIT_READY, &[TEST_UNIT_READY, 0, 0, 0, 0, 0]),
        op(REQUEST_SENSE, &[REQUEST_SENSE, 0x01, 0, 0, F, 0]),
        op(READ_6, &[READ_6, 0x1F, F, F, F, 0]),
        op(WRITE_6, &[WRITE_6, 0x1F, F, F, F, 0]),
        op(INQUIRY, &[INQUIRY, 0x01, F, F, F, 0]),
        op(MODE_SELECT_6, &[MODE_SELECT_6, 0x10, 0, 0, F, 0]),
        op(RESERVE_6, &[RESERVE_6, 0x11, 0, 0, 0, 0]),
        op(RELEASE_6, &[RELEASE_6, 0x11, 0, 0, 0, 0]),
        op(MODE_SENSE_6, &[MODE_SENSE_6, 0x08, F, F, F, 0]),
        op(START_STOP_UNIT, &[START_STOP_UNIT, 0x01, 0, 0, 0x07, 0]),
        op(
            PREVENT_ALLOW_MEDIUM_REMOVAL,
            &[PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0x03, 0],
        ),
        op(
            READ_CAPACITY_10,
            &[READ_CAPACITY_10, 0, F, F, F, F, 0, 0, 0x01, 0],
        ),
        op(READ_10, &[READ_10, 0x18, F, F, F, F, 0, F, F, 0]),
        op(WRITE_10, &[WRITE_10, 0x18, F, F, F, F, 0, F, F, 0]),
        op(
            WRITE_AND_VERIFY_10,
            &[WRITE_AND_VERIFY_10, 0x16, F, F, F, F, 0, F, F, 0],
        ),
        op(VERIFY_10, &[VERIFY_10, 0x16, F, F, F, F, 0, F, F, 0]),
        op(PRE_FETCH_10, &[PRE_FETCH_10, 0x02, F, F, F, F, 0, F, F, 0]),
        op(
            SYNCHRONIZE_CACHE_10,
            &[SYNCHRONIZE_CACHE_10, 0x02, F, F, F, F, 0, F, F, 0],
        ),
        op(
            WRITE_SAME_10,
            &[WRITE_SAME_10, 0x08, F, F, F, F, 0, F, F, 0],
        ),
        op(UNMAP, &[UNMAP, 0, 0, 0, 0, 0, 0, F, F, 0]),
        op(
            MODE_SELECT_10,
            &[MODE_SELECT_10, 0x10, 0, 0, 0, 0, 0, F, F, 0],
        ),
        op(RESERVE_10, &[RESERVE_10, 0x13, 0, 0, 0, 0, 0, 0, 0, 0]),
        op(RELEASE_10, &[RELEASE_10, 0x13, 0, 0, 0, 0, 0, 0, 0, 0]),
        op(
            MODE_SENSE_10,
            &[MODE_SENSE_10, 0x18, F, F, 0, 0, 0, F, F, 0],
        ),
        sa(PERSISTENT_RESERVE_IN, service_action::PR_IN_READ_KEYS, PRIN),
        sa(
            PERSISTENT_RESERVE_IN,
            service_action::PR_IN_READ_RESERVATION,
            PRIN,
        ),
        sa(
            PERSISTENT_RESERVE_IN,
            service_action::PR_IN_REPORT_CAPABILITIES,
            PRIN,
        ),
        sa(
            PERSISTENT_RESERVE_IN,
            service_action::PR_IN_READ_FULL_STATUS,
            PRIN,
        ),
        sa(PERSISTENT_RESERVE_OUT, 0x00, PROUT),
        sa(PERSISTENT_RESERVE_OUT, 0x01, PROUT),
        sa(PERSISTENT_RESERVE_OUT, 0x02, PROUT),
        sa(PERSISTENT_RESERVE_OUT, 0x03, PROUT),
        sa(PERSISTENT_RESERVE_OUT, 0x04, PROUT),
        sa(PERSISTENT_RESERVE_OUT, 0x05, PROUT),
        sa(PERSISTENT_RESERVE_OUT, 0x06, PROUT),
        sa(PERSISTENT_RESERVE_OUT, service_action::PR_OUT_LAST, PROUT),
        op(
            READ_16,
            &[READ_16, 0x18, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
        ),
        op(
            COMPARE_AND_WRITE,
            &[
                COMPARE_AND_WRITE,
                0x18,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                0,
                0,
                0,
                F,
                0,
                0,
            ],
        ),
        op(
            WRITE_16,
            &[WRITE_16, 0x18, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
        ),
        op(
            ORWRITE_16,
            &[ORWRITE_16, 0x18, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
        ),
        op(
            WRITE_AND_VERIFY_16,
            &[
                WRITE_AND_VERIFY_16,
                0x16,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                0,
                0,
            ],
        ),
        op(
            VERIFY_16,
            &[VERIFY_16, 0x16, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
        ),
        op(
            PRE_FETCH_16,
            &[PRE_FETCH_16, 0x02, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0],
        ),
        op(
            SYNCHRONIZE_CACHE_16,
            &[
                SYNCHRONIZE_CACHE_16,
                0x02,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                0,
                0,
            ],
        ),
        op(
            WRITE_SAME_16,
            &[
                WRITE_SAME_16,
                0x09,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                F,
                0,
                0,
            ],
        ),
        sa(SERVICE_ACTION_IN_16, service_action::READ_CAPACITY_16, SAI),
        sa(SERVICE_ACTION_IN_16, service_action::GET_LBA_STATUS, GLS),
        op(REPORT_LUNS, &[REPORT_LUNS, 0, F, 0, 0, 0, F, F, F, F, 0, 0]),
        sa(
            MAINTENANCE_IN,
            service_action::REPORT_SUPPORTED_OPCODES,
            &[MAINTENANCE_IN, 0x1F, 0x87, F, F, F, F, F, F, F, 0, 0],
        ),
        op(READ_12, &[READ_12, 0x18, F, F, F, F, F, F, F, F, 0, 0]),
        op(WRITE_12, &[WRITE_12, 0x18, F, F, F, F, F, F, F, F, 0, 0]),
        op(
            WRITE_AND_VERIFY_12,
            &[WRITE_AND_VERIFY_12, 0x16, F, F, F, F, F, F, F, F, 0, 0],
        ),
        op(VERIFY_12, &[VERIFY_12, 0x16, F, F, F, F, F, F, F, F, 0, 0]),
    ]
};

/// Whether `c` is implemented by a logical unit that is (`thin`) or is not thin provisioned: a fully provisioned
/// one has no UNMAP.
pub(super) fn listed(c: &SupportedCommand, thin: bool) -> bool {
    thin || c.opcode != UNMAP
}

/// The CDB usage data of `c`: the UNMAP bit of WRITE SAME is evaluated only by a thin provisioned logical unit.
fn usage(c: &SupportedCommand, thin: bool) -> Vec<u8> {
    let mut u = c.usage.to_vec();
    if !thin && matches!(c.opcode, WRITE_SAME_10 | WRITE_SAME_16) {
        u[1] &= !0x08;
    }
    u
}

/// Whether `op` multiplexes service actions (its table entries carry one).
pub(super) fn has_service_actions(op: u8) -> bool {
    SUPPORTED_COMMANDS
        .iter()
        .any(|c| c.opcode == op && c.service_action.is_some())
}

/// A command timeouts descriptor with both timeouts "not specified".
const TIMEOUTS_DESCRIPTOR: [u8; 12] = [0x00, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// SUPPORT field values of the one-command format.
const NOT_SUPPORTED: u8 = 0x01;
const SUPPORTED: u8 = 0x03;

/// REPORT SUPPORTED OPERATION CODES parameter data for a logical unit that is (`thin`) or is not thin provisioned.
pub(super) fn report_supported_opcodes(
    rctd: bool,
    reporting_options: u8,
    opcode: u8,
    service_action: u16,
    thin: bool,
) -> Result<Vec<u8>, Sense> {
    // INVALID FIELD IN CDB points at REPORTING OPTIONS (byte 2): byte 1 would read as "service action not
    // supported" to initiators that probe this way.
    let wrong_options = || Sense::invalid_field_in_cdb(2, 2);
    let lookup = |sa: Option<u16>| {
        SUPPORTED_COMMANDS
            .iter()
            .filter(|c| listed(c, thin))
            .find(|c| c.opcode == opcode && c.service_action == sa)
    };
    let one = |c| one_command(rctd, c, thin);
    match reporting_options {
        0 => Ok(all_commands(rctd, thin)),
        1 if has_service_actions(opcode) => Err(wrong_options()),
        1 => Ok(one(lookup(None))),
        2 if !has_service_actions(opcode) => Err(wrong_options()),
        2 => Ok(one(lookup(Some(service_action)))),
        3 if has_service_actions(opcode) => Ok(one(lookup(Some(service_action)))),
        3 => Ok(one(lookup(None))),
        _ => Err(wrong_options()),
    }
}

fn all_commands(rctd: bool, thin: bool) -> Vec<u8> {
    let mut list = Vec::new();
    for c in SUPPORTED_COMMANDS.iter().filter(|c| listed(c, thin)) {
        let [sa_hi, sa_lo] = c.service_action.unwrap_or(0).to_be_bytes();
        let flags = if rctd { 0x02 } else { 0 } | u8::from(c.service_action.is_some());
        let [len_hi, len_lo] = (c.usage.len() as u16).to_be_bytes();
        list.extend_from_slice(&[c.opcode, 0, sa_hi, sa_lo, 0, flags, len_hi, len_lo]);
        if rctd {
            list.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
        }
    }
    let mut b = (list.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(&list);
    b
}

fn one_command(rctd: bool, command: Option<&SupportedCommand>, thin: bool) -> Vec<u8> {
    match command {
        None => vec![0, NOT_SUPPORTED, 0, 0],
        Some(c) => {
            let ctdp = if rctd { 0x80 } else { 0 };
            let mut b = vec![0, ctdp | SUPPORTED];
            b.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
            b.extend_from_slice(&usage(c, thin));
            if rctd {
                b.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
            }
            b
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdb::{cdb_size, CdbSize, Command};

    #[test]
    fn supported_commands_table_matches_decoder() {
        let mut prev = (0u8, 0u16);
        for (i, sc) in SUPPORTED_COMMANDS.iter().enumerate() {
            assert_eq!(sc.usage[0], sc.opcode);
            let key = (sc.opcode, sc.service_action.unwrap_or(0));
            assert!(i == 0 || key > prev, "table sorted and unique: {sc:?}");
            prev = key;
            assert_eq!(
                Some(sc.usage.len()),
                cdb_size(sc.opcode).map(CdbSize::bytes),
                "{sc:?}"
            );
            // A CDB of just the opcode (and service action) decodes, except where a zero field is invalid.
            let mut cdb = [0u8; 16];
            cdb[0] = sc.opcode;
            if let Some(sa) = sc.service_action {
                cdb[1] = sa as u8;
            }
            if sc.opcode == REPORT_LUNS {
                cdb[9] = 16;
            }
            assert!(Command::decode(&cdb).is_ok(), "{sc:?}");
        }
        // Every opcode the decoder knows is in the table.
        for op in 0..=255u8 {
            if cdb_size(op).is_some() {
                assert!(SUPPORTED_COMMANDS.iter().any(|s| s.opcode == op), "{op:#x}");
            }
        }
    }

    #[test]
    fn unmap_is_listed_only_when_thin() {
        let count = |thin| {
            SUPPORTED_COMMANDS
                .iter()
                .filter(|c| listed(c, thin))
                .count()
        };
        assert_eq!(count(true), count(false) + 1);
        let ws = SUPPORTED_COMMANDS
            .iter()
            .find(|c| c.opcode == WRITE_SAME_16)
            .unwrap();
        assert_eq!(usage(ws, true)[1], 0x09);
        assert_eq!(usage(ws, false)[1], 0x01);
    }
}
