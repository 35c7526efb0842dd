//! REPORT LUNS (SPC-4 6.33) and REPORT SUPPORTED OPERATION CODES (SPC-4 6.35) parameter data, plus the LUN
//! encoding both REPORT LUNS and the iSCSI LUN field use.

use crate::cdb::{has_service_actions, SupportedCommand, SUPPORTED_COMMANDS};
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

/// A command timeouts descriptor with both timeouts "not specified".
const TIMEOUTS_DESCRIPTOR: [u8; 12] = [0x00, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// SUPPORT field values of the one-command format.
const NOT_SUPPORTED: u8 = 0x01;
const SUPPORTED: u8 = 0x03;

/// REPORT SUPPORTED OPERATION CODES parameter data.
pub(super) fn report_supported_opcodes(
    rctd: bool,
    reporting_options: u8,
    opcode: u8,
    service_action: u16,
) -> Result<Vec<u8>, Sense> {
    // INVALID FIELD IN CDB points at REPORTING OPTIONS (byte 2): byte 1 would read as "service action not
    // supported" to initiators that probe this way.
    let wrong_options = || Sense::invalid_field_in_cdb(2, 2);
    let lookup = |sa: Option<u16>| {
        SUPPORTED_COMMANDS
            .iter()
            .find(|c| c.opcode == opcode && c.service_action == sa)
    };
    match reporting_options {
        0 => Ok(all_commands(rctd)),
        1 if has_service_actions(opcode) => Err(wrong_options()),
        1 => Ok(one_command(rctd, lookup(None))),
        2 if !has_service_actions(opcode) => Err(wrong_options()),
        2 => Ok(one_command(rctd, lookup(Some(service_action)))),
        3 if has_service_actions(opcode) => Ok(one_command(rctd, lookup(Some(service_action)))),
        3 => Ok(one_command(rctd, lookup(None))),
        _ => Err(wrong_options()),
    }
}

fn all_commands(rctd: bool) -> Vec<u8> {
    let mut list = Vec::new();
    for c in SUPPORTED_COMMANDS {
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

fn one_command(rctd: bool, command: Option<&SupportedCommand>) -> Vec<u8> {
    match command {
        None => vec![0, NOT_SUPPORTED, 0, 0],
        Some(c) => {
            let ctdp = if rctd { 0x80 } else { 0 };
            let mut b = vec![0, ctdp | SUPPORTED];
            b.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
            b.extend_from_slice(c.usage);
            if rctd {
                b.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
            }
            b
        }
    }
}
