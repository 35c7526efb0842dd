//! iSCSI TransportIDs (SPC-4 7.6.4.6): how PERSISTENT RESERVE names initiator ports.
//!
//! Format 00b is the iSCSI name alone (every port of that initiator); format 01b adds the ISID
//! (`name,i,0x<12 hex digits>`), naming one initiator port. Both are null-terminated and padded to a multiple
//! of four bytes, at least 24 bytes in all.

use super::state::{InitiatorPort, MAX_NAME_BYTES};
use crate::sense::Sense;

/// PROTOCOL IDENTIFIER of iSCSI.
const ISCSI: u8 = 0x5;
/// FORMAT CODE 00b: initiator device name.
const FORMAT_NAME: u8 = 0b00;
/// FORMAT CODE 01b: initiator port (name and ISID).
const FORMAT_PORT: u8 = 0b01;
/// Between the name and the ISID in format 01b.
const SEPARATOR: &str = ",i,0x";
/// Smallest TransportID.
const MIN_LEN: usize = 24;

/// The TransportID of `port`: format 01b with an ISID, 00b without.
pub(crate) fn encode(port: &InitiatorPort) -> Vec<u8> {
    let (format, text) = match port.isid {
        Some(isid) => {
            let hex: String = isid.iter().map(|b| format!("{b:02x}")).collect();
            (FORMAT_PORT, format!("{}{SEPARATOR}{hex}", port.name))
        }
        None => (FORMAT_NAME, port.name.clone()),
    };
    let mut b = vec![(format << 6) | ISCSI, 0, 0, 0];
    b.extend_from_slice(text.as_bytes());
    b.push(0);
    let len = b.len().max(MIN_LEN).next_multiple_of(4);
    b.resize(len, 0);
    let additional = u16::try_from(len - 4).unwrap_or(u16::MAX);
    b[2..4].copy_from_slice(&additional.to_be_bytes());
    b
}

/// Parses the TransportID at the start of `b`, which sits at byte `at` of the parameter list (for field
/// pointers). Returns the initiator port and the TransportID's length.
pub(crate) fn parse(b: &[u8], at: usize) -> Result<(InitiatorPort, usize), Sense> {
    let field = |offset: usize, bit: u8| {
        Sense::invalid_field_in_parameter_list(u16::try_from(at + offset).unwrap_or(u16::MAX), bit)
    };
    let header = b.get(..4).ok_or_else(Sense::parameter_list_length_error)?;
    if header[0] & 0x0F != ISCSI {
        return Err(field(0, 3));
    }
    let format = header[0] >> 6;
    if format != FORMAT_NAME && format != FORMAT_PORT {
        return Err(field(0, 7));
    }
    let additional = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if additional % 4 != 0 || additional + 4 < MIN_LEN {
        return Err(field(2, 7));
    }
    let len = 4 + additional;
    let body = b
        .get(4..len)
        .ok_or_else(Sense::parameter_list_length_error)?;
    let end = body
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| field(4, 7))?;
    let text = std::str::from_utf8(&body[..end]).map_err(|_| field(4, 7))?;
    let port = if format == FORMAT_NAME {
        InitiatorPort {
            name: valid_name(text).ok_or_else(|| field(4, 7))?,
            isid: None,
        }
    } else {
        let split = text
            .to_ascii_lowercase()
            .find(SEPARATOR)
            .ok_or_else(|| field(4, 7))?;
        let (name, rest) = text.split_at(split);
        InitiatorPort {
            name: valid_name(name).ok_or_else(|| field(4, 7))?,
            isid: Some(isid(&rest[SEPARATOR.len()..]).ok_or_else(|| field(4 + split, 7))?),
        }
    };
    Ok((port, len))
}

/// `name` if it can be an iSCSI name: 1..=223 bytes, no control characters, no comma (the separator).
fn valid_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && !name.chars().any(|c| c.is_control() || c == ',');
    ok.then(|| name.to_owned())
}

/// An ISID from exactly twelve hex digits.
fn isid(hex: &str) -> Option<[u8; 6]> {
    if hex.len() != 12 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut isid = [0u8; 6];
    for (i, b) in isid.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(isid)
}
