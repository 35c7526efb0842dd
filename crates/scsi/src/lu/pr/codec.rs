//! The stored form of [`PrState`]: what [`BlockDevice::store_reservations`](crate::BlockDevice) keeps.
//!
//! ```text
//! header (20 bytes)
//!   0..4   magic "TWPR"
//!   4      version (1)
//!   5      flags: bit 0 APTPL
//!   6      reservation TYPE code, 0 for none
//!   7      reservation SCOPE (0)
//!   8..12  PRGENERATION
//!   12..14 number of registrations
//!   14..16 reserved (0)
//!   16..20 length of the registrations that follow
//! registration (20 bytes + name), repeated
//!   0..8   reservation key (not 0)
//!   8      flags: bit 0 ALL_TG_PT, bit 1 reservation holder, bit 2 ISID present
//!   9      reserved (0)
//!   10..12 target portal group tag
//!   12..18 ISID (zero when absent)
//!   18..20 length of the iSCSI name (1..=223)
//!   20..   iSCSI name, UTF-8
//! trailer
//!   CRC-32C (Castagnoli) of everything before it
//! ```
//! All integers are big-endian. Zero bytes (nothing ever stored) decode to the empty state. Decoding checks
//! every length, the checksum and the state's own rules (one holder, no two registrations for one I_T nexus),
//! and refuses anything else with a [`DecodeError`], never a panic.

use super::state::{InitiatorPort, PrState, PrType, Registration, LU_SCOPE, MAX_NAME_BYTES};

const MAGIC: &[u8; 4] = b"TWPR";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 20;
const ENTRY_LEN: usize = 20;
const CRC_LEN: usize = 4;

const APTPL: u8 = 0x01;
const ALL_TG_PT: u8 = 0x01;
const HOLDER: u8 = 0x02;
const HAS_ISID: u8 = 0x04;

/// Why stored reservation state can not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// Shorter than a header and checksum, or lengths that do not add up.
    #[error("reservation state truncated or of inconsistent length")]
    Length,
    /// Not reservation state of this program.
    #[error("reservation state has no TWPR magic")]
    Magic,
    /// Written by a newer version.
    #[error("reservation state version {0} is not supported")]
    Version(u8),
    /// The checksum does not match: the bytes were damaged.
    #[error("reservation state checksum mismatch")]
    Checksum,
    /// A field holds a value the format does not allow.
    #[error("reservation state field {0} is invalid")]
    Field(&'static str),
    /// The fields are valid one by one but not together (holders, overlapping registrations).
    #[error("reservation state is inconsistent: {0}")]
    Inconsistent(&'static str),
}

/// The stored form of `state`.
pub(crate) fn encode(state: &PrState) -> Vec<u8> {
    let mut body = Vec::new();
    for r in &state.registrations {
        let mut flags = 0;
        if r.all_tg_pt {
            flags |= ALL_TG_PT;
        }
        if r.holder {
            flags |= HOLDER;
        }
        if r.initiator.isid.is_some() {
            flags |= HAS_ISID;
        }
        body.extend_from_slice(&r.key.to_be_bytes());
        body.extend_from_slice(&[flags, 0]);
        body.extend_from_slice(&r.tpgt.to_be_bytes());
        body.extend_from_slice(&r.initiator.isid.unwrap_or_default());
        // Names are at most 223 bytes (checked where they come in), so the length fits.
        body.extend_from_slice(&(r.initiator.name.len() as u16).to_be_bytes());
        body.extend_from_slice(r.initiator.name.as_bytes());
    }
    let mut b = Vec::with_capacity(HEADER_LEN + body.len() + CRC_LEN);
    b.extend_from_slice(MAGIC);
    b.push(VERSION);
    b.push(if state.aptpl { APTPL } else { 0 });
    b.push(state.reservation.map_or(0, PrType::code));
    b.push(LU_SCOPE);
    b.extend_from_slice(&state.generation.to_be_bytes());
    b.extend_from_slice(&(state.registrations.len() as u16).to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(body.len() as u32).to_be_bytes());
    b.extend_from_slice(&body);
    let crc = crc32c(&b);
    b.extend_from_slice(&crc.to_be_bytes());
    b
}

/// The state stored as `b`.
pub(crate) fn decode(b: &[u8]) -> Result<PrState, DecodeError> {
    if b.is_empty() {
        return Ok(PrState::default());
    }
    if b.len() < HEADER_LEN + CRC_LEN {
        return Err(DecodeError::Length);
    }
    if &b[0..4] != MAGIC {
        return Err(DecodeError::Magic);
    }
    if b[4] != VERSION {
        return Err(DecodeError::Version(b[4]));
    }
    let (content, crc) = b.split_at(b.len() - CRC_LEN);
    if crc32c(content) != be32(crc) {
        return Err(DecodeError::Checksum);
    }
    let h = &content[..HEADER_LEN];
    if h[5] & !APTPL != 0 {
        return Err(DecodeError::Field("flags"));
    }
    let reservation = match h[6] {
        0 => None,
        code => Some(PrType::from_code(code).ok_or(DecodeError::Field("type"))?),
    };
    if h[7] != LU_SCOPE {
        return Err(DecodeError::Field("scope"));
    }
    if h[14..16] != [0, 0] {
        return Err(DecodeError::Field("reserved"));
    }
    let count = usize::from(u16::from_be_bytes([h[12], h[13]]));
    let body = &content[HEADER_LEN..];
    if usize::try_from(be32(&h[16..20])).ok() != Some(body.len()) {
        return Err(DecodeError::Length);
    }
    let mut registrations = Vec::with_capacity(count.min(body.len() / ENTRY_LEN));
    let mut rest = body;
    for _ in 0..count {
        let (r, n) = decode_registration(rest)?;
        registrations.push(r);
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        return Err(DecodeError::Length);
    }
    let state = PrState {
        generation: be32(&h[8..12]),
        aptpl: h[5] & APTPL != 0,
        registrations,
        reservation,
    };
    check_consistent(&state)?;
    Ok(state)
}

fn decode_registration(b: &[u8]) -> Result<(Registration, usize), DecodeError> {
    let e = b.get(..ENTRY_LEN).ok_or(DecodeError::Length)?;
    let key = u64::from_be_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
    if key == 0 {
        return Err(DecodeError::Field("reservation key"));
    }
    let flags = e[8];
    if flags & !(ALL_TG_PT | HOLDER | HAS_ISID) != 0 || e[9] != 0 {
        return Err(DecodeError::Field("registration flags"));
    }
    let mut isid = [0u8; 6];
    isid.copy_from_slice(&e[12..18]);
    if flags & HAS_ISID == 0 && isid != [0; 6] {
        return Err(DecodeError::Field("isid"));
    }
    let name_len = usize::from(u16::from_be_bytes([e[18], e[19]]));
    if name_len == 0 || name_len > MAX_NAME_BYTES {
        return Err(DecodeError::Field("name length"));
    }
    let name = b
        .get(ENTRY_LEN..ENTRY_LEN + name_len)
        .ok_or(DecodeError::Length)?;
    let name = std::str::from_utf8(name).map_err(|_| DecodeError::Field("name"))?;
    if name.chars().any(|c| c.is_control() || c == ',') {
        return Err(DecodeError::Field("name"));
    }
    let r = Registration {
        key,
        initiator: InitiatorPort {
            name: name.to_owned(),
            isid: (flags & HAS_ISID != 0).then_some(isid),
        },
        tpgt: u16::from_be_bytes([e[10], e[11]]),
        all_tg_pt: flags & ALL_TG_PT != 0,
        holder: flags & HOLDER != 0,
    };
    Ok((r, ENTRY_LEN + name_len))
}

/// The rules [`PrState`] keeps: holders only for a reservation of a single-holder type, exactly one then; an
/// all-registrants reservation has registrants; no I_T nexus is registered twice.
fn check_consistent(s: &PrState) -> Result<(), DecodeError> {
    let holders = s.registrations.iter().filter(|r| r.holder).count();
    let holders_ok = match s.reservation {
        None => holders == 0,
        Some(t) if t.all_registrants() => holders == 0 && !s.registrations.is_empty(),
        Some(_) => holders == 1,
    };
    if !holders_ok {
        return Err(DecodeError::Inconsistent("reservation holder"));
    }
    for (i, a) in s.registrations.iter().enumerate() {
        if s.registrations[i + 1..].iter().any(|b| a.overlaps(b)) {
            return Err(DecodeError::Inconsistent("overlapping registrations"));
        }
    }
    Ok(())
}

/// CRC-32C (Castagnoli, reflected polynomial 82F63B78h), bit by bit: the state is small and stored rarely.
pub(super) fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
