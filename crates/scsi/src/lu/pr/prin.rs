//! PERSISTENT RESERVE IN parameter data (SPC-4 6.15), before truncation to the allocation length.

use super::state::{PrState, PrType, TargetPort, LU_SCOPE};
use super::transport_id;
use crate::cdb::PrInAction;

/// What the logical unit can do, for REPORT CAPABILITIES.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Capabilities {
    /// The state survives a power loss when asked to (the device keeps it): PTPL_C.
    pub persist_through_power_loss: bool,
}

/// The full parameter data of `action` for `state`.
pub(crate) fn data(
    action: PrInAction,
    state: &PrState,
    port: TargetPort,
    caps: Capabilities,
) -> Vec<u8> {
    match action {
        PrInAction::ReadKeys => read_keys(state),
        PrInAction::ReadReservation => read_reservation(state),
        PrInAction::ReportCapabilities => report_capabilities(state, caps),
        PrInAction::ReadFullStatus => read_full_status(state, port),
    }
}

/// PRGENERATION and ADDITIONAL LENGTH, then `list`. ADDITIONAL LENGTH is the full length whatever the
/// allocation length cuts off.
fn with_header(state: &PrState, list: Vec<u8>) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + list.len());
    b.extend_from_slice(&state.generation.to_be_bytes());
    b.extend_from_slice(&u32::try_from(list.len()).unwrap_or(u32::MAX).to_be_bytes());
    b.extend_from_slice(&list);
    b
}

/// READ KEYS (6.15.2): one key per registration.
fn read_keys(state: &PrState) -> Vec<u8> {
    let keys = state
        .registrations
        .iter()
        .flat_map(|r| r.key.to_be_bytes())
        .collect();
    with_header(state, keys)
}

/// SCOPE and TYPE in one byte.
fn scope_type(t: PrType) -> u8 {
    (LU_SCOPE << 4) | t.code()
}

/// READ RESERVATION (6.15.3): one descriptor if there is a reservation; its key is the holder's, or zero for
/// the all-registrants types.
fn read_reservation(state: &PrState) -> Vec<u8> {
    let mut d = Vec::new();
    if let Some(t) = state.reservation {
        let key = match state.holder() {
            Some(h) if !t.all_registrants() => h.key,
            _ => 0,
        };
        d.extend_from_slice(&key.to_be_bytes());
        d.extend_from_slice(&[0; 4]); // obsolete
        d.extend_from_slice(&[0, scope_type(t), 0, 0]); // reserved, SCOPE/TYPE, obsolete
    }
    with_header(state, d)
}

/// REPORT CAPABILITIES (6.15.4).
fn report_capabilities(state: &PrState, caps: Capabilities) -> Vec<u8> {
    // CRH: RESERVE / RELEASE follow the SPC-4 5.13.3 exceptions. SIP_C: SPEC_I_PT. ATP_C: ALL_TG_PT. PTPL_C
    // only where the device keeps the state.
    let mut flags = 0x10 | 0x08 | 0x04;
    if caps.persist_through_power_loss {
        flags |= 0x01;
    }
    // TMV: the type mask is valid. ALLOW COMMANDS 011b: TEST UNIT READY is allowed through Write Exclusive and
    // Exclusive Access reservations, and MODE SENSE, READ BUFFER, RECEIVE DIAGNOSTIC RESULTS, REPORT SUPPORTED
    // OPERATION CODES and the like through Write Exclusive ones. PTPL_A: APTPL is active.
    let mut byte3 = 0x80 | (0b011 << 4);
    if state.aptpl {
        byte3 |= 0x01;
    }
    // Every type: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX in byte 4; EX_AC_AR in byte 5.
    vec![0, 8, flags, byte3, 0xEA, 0x01, 0, 0]
}

/// READ FULL STATUS (6.15.5): one descriptor per registration, with its I_T nexus as TransportID and relative
/// target port identifier (not meaningful with ALL_TG_PT set).
fn read_full_status(state: &PrState, port: TargetPort) -> Vec<u8> {
    let mut list = Vec::new();
    for (i, r) in state.registrations.iter().enumerate() {
        let tid = transport_id::encode(&r.initiator);
        list.extend_from_slice(&r.key.to_be_bytes());
        list.extend_from_slice(&[0; 4]);
        let holder = state.is_holder(i);
        list.push(u8::from(r.all_tg_pt) << 1 | u8::from(holder));
        list.push(match state.reservation {
            Some(t) if holder => scope_type(t),
            _ => 0,
        });
        list.extend_from_slice(&[0; 4]);
        let rtpi = if r.all_tg_pt {
            0
        } else {
            port.relative_id_of(r.tpgt)
        };
        list.extend_from_slice(&rtpi.to_be_bytes());
        list.extend_from_slice(&u32::try_from(tid.len()).unwrap_or(u32::MAX).to_be_bytes());
        list.extend_from_slice(&tid);
    }
    with_header(state, list)
}
