//! PERSISTENT RESERVE IN parameter data (SPC-4 6.15).
//!
//! PERSISTENT RESERVE OUT is not implemented (it answers INVALID COMMAND OPERATION CODE), so no I_T nexus can
//! ever register a key or hold a persistent reservation: the true state of every logical unit is "no
//! registrations, no reservation, generation 0", and REPORT CAPABILITIES claims no feature.

use crate::cdb::PrInAction;

/// PRGENERATION: counts PERSISTENT RESERVE OUT commands that changed something; none ever has.
const PR_GENERATION: u32 = 0;

/// The full PERSISTENT RESERVE IN parameter data for `action`, before truncation to the allocation length.
pub(super) fn persistent_reserve_in(action: PrInAction) -> Vec<u8> {
    match action {
        // READ KEYS (6.15.2): PRGENERATION, ADDITIONAL LENGTH 0, an empty reservation key list.
        // READ RESERVATION (6.15.3): with no persistent reservation, ADDITIONAL LENGTH 0 and no descriptor.
        // READ FULL STATUS (6.15.5): PRGENERATION, ADDITIONAL LENGTH 0, no full status descriptors.
        PrInAction::ReadKeys | PrInAction::ReadReservation | PrInAction::ReadFullStatus => {
            let mut b = PR_GENERATION.to_be_bytes().to_vec();
            b.extend_from_slice(&0u32.to_be_bytes());
            b
        }
        // REPORT CAPABILITIES (6.15.4), 8 bytes:
        //   0..2  LENGTH = 8
        //   2     RLR_C(7)=0, CRH(4)=0, SIP_C(3)=0, ATP_C(2)=0, PTPL_C(0)=0: none of these features
        //   3     TMV(7)=0 (the type mask is not valid), ALLOW COMMANDS(6:4)=0 (no information), PTPL_A(0)=0
        //   4..6  PERSISTENT RESERVATION TYPE MASK: zero, and not valid anyway
        //   6..8  reserved
        PrInAction::ReportCapabilities => {
            let mut b = vec![0u8; 8];
            b[0..2].copy_from_slice(&8u16.to_be_bytes());
            b
        }
    }
}
