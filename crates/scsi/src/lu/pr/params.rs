//! PERSISTENT RESERVE OUT parameter lists (SPC-4 6.16.3 and 6.16.4).
//!
//! The basic list is 24 bytes (keys and the SPEC_I_PT / ALL_TG_PT / APTPL bits), followed with SPEC_I_PT by a
//! TransportID list; REGISTER AND MOVE has its own layout with one TransportID. The lengths must agree exactly
//! (PARAMETER LIST LENGTH ERROR otherwise); a bad field is INVALID FIELD IN PARAMETER LIST with its position.

use super::state::InitiatorPort;
use super::transport_id;
use crate::cdb::PrOutAction;
use crate::sense::Sense;

/// Length of the basic parameter list and of the REGISTER AND MOVE header.
const BASIC_LEN: usize = 24;

/// A parsed PERSISTENT RESERVE OUT parameter list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Params {
    /// Every service action but REGISTER AND MOVE.
    Basic(BasicParams),
    /// REGISTER AND MOVE.
    Move(MoveParams),
}

/// The basic parameter list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BasicParams {
    /// RESERVATION KEY.
    pub key: u64,
    /// SERVICE ACTION RESERVATION KEY.
    pub sa_key: u64,
    /// SPEC_I_PT: register the initiator ports of `transport_ids` too (REGISTER only).
    pub spec_i_pt: bool,
    /// ALL_TG_PT: register through every target port (REGISTER, REGISTER AND IGNORE EXISTING KEY).
    pub all_tg_pt: bool,
    /// APTPL: keep the state through a power loss (the REGISTER service actions).
    pub aptpl: bool,
    /// The initiator ports of the TransportIDs (with SPEC_I_PT).
    pub transport_ids: Vec<InitiatorPort>,
}

/// The REGISTER AND MOVE parameter list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MoveParams {
    /// RESERVATION KEY.
    pub key: u64,
    /// SERVICE ACTION RESERVATION KEY: the key registered for the destination.
    pub sa_key: u64,
    /// UNREG: the issuer's registration goes after the move.
    pub unreg: bool,
    /// APTPL.
    pub aptpl: bool,
    /// RELATIVE TARGET PORT IDENTIFIER of the destination I_T nexus.
    pub rtpi: u16,
    /// The destination's initiator port.
    pub dest: InitiatorPort,
}

/// Parses the parameter list of `action`: `param_len` from the CDB, `data` the Data-Out that arrived.
pub(crate) fn parse(action: PrOutAction, param_len: u32, data: &[u8]) -> Result<Params, Sense> {
    let len = usize::try_from(param_len).unwrap_or(usize::MAX);
    // The transport delivered less than the CDB announced: the list can not be read.
    let list = data
        .get(..len)
        .ok_or_else(Sense::invalid_field_in_information_unit)?;
    if list.len() < BASIC_LEN {
        return Err(Sense::parameter_list_length_error());
    }
    let key = be64(&list[0..8]);
    let sa_key = be64(&list[8..16]);
    if action == PrOutAction::RegisterAndMove {
        return parse_move(list, key, sa_key).map(Params::Move);
    }
    let flags = list[20];
    let spec_i_pt = flags & 0x08 != 0;
    let registers = matches!(
        action,
        PrOutAction::Register | PrOutAction::RegisterAndIgnoreExistingKey
    );
    let mut transport_ids = Vec::new();
    if spec_i_pt {
        if action != PrOutAction::Register {
            return Err(Sense::invalid_field_in_parameter_list(20, 3));
        }
        let tpdl = list
            .get(24..28)
            .map(be32)
            .ok_or_else(Sense::parameter_list_length_error)?;
        if Some(list.len()) != usize::try_from(tpdl).ok().and_then(|n| n.checked_add(28)) {
            return Err(Sense::parameter_list_length_error());
        }
        let mut at = 28;
        while at < list.len() {
            let (port, n) = transport_id::parse(&list[at..], at)?;
            transport_ids.push(port);
            at += n;
        }
    } else if list.len() != BASIC_LEN {
        return Err(Sense::parameter_list_length_error());
    }
    Ok(Params::Basic(BasicParams {
        key,
        sa_key,
        spec_i_pt,
        // ALL_TG_PT and APTPL are ignored by the service actions that do not register.
        all_tg_pt: registers && flags & 0x04 != 0,
        aptpl: registers && flags & 0x01 != 0,
        transport_ids,
    }))
}

fn parse_move(list: &[u8], key: u64, sa_key: u64) -> Result<MoveParams, Sense> {
    let tpdl = be32(&list[20..24]);
    if Some(list.len())
        != usize::try_from(tpdl)
            .ok()
            .and_then(|n| n.checked_add(BASIC_LEN))
    {
        return Err(Sense::parameter_list_length_error());
    }
    if tpdl == 0 {
        return Err(Sense::invalid_field_in_parameter_list(20, 7));
    }
    let (dest, n) = transport_id::parse(&list[BASIC_LEN..], BASIC_LEN)?;
    if BASIC_LEN + n != list.len() {
        return Err(Sense::parameter_list_length_error());
    }
    Ok(MoveParams {
        key,
        sa_key,
        unreg: list[17] & 0x02 != 0,
        aptpl: list[17] & 0x01 != 0,
        rtpi: u16::from_be_bytes([list[18], list[19]]),
        dest,
    })
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}
