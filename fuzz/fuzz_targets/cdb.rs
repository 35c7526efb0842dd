//! CDB decoding and command execution on arbitrary bytes, against a small RAM device: never panic, a CHECK
//! CONDITION always carries sense and no data, and GOOD Data-In is never longer than the CDB asked for.
#![no_main]

use std::sync::Arc;
use twinsan_scsi::{
    execute_no_lun, Decoded, LogicalUnit, LunIdentity, MemoryDevice, Nexus, Request, TaskStatus, BLOCK_SIZE,
    MAX_TRANSFER_BLOCKS,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));

/// Byte 0 steers the run (bit 0: read-only LU, bit 1: a unit attention is pending, bits 7..4: CDB length - 1);
/// the CDB follows, and whatever is left is the Data-Out.
fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let cdb_len = (usize::from(flags >> 4) + 1).min(rest.len());
    let (cdb, data_out) = rest.split_at(cdb_len);

    let decoded = Decoded::new(cdb);

    let lu = LogicalUnit::new(
        Arc::new(MemoryDevice::new(64 * BLOCK_SIZE as usize)),
        identity(),
        flags & 1 != 0,
    );
    let me = nexus(1);
    let other = nexus(2);
    if flags & 2 != 0 {
        lu.nexus_joined(&me);
        lu.reset(&other);
    }
    let luns = [0u64, 1, 300];
    let req = Request {
        nexus: &me,
        cdb,
        data_out,
        luns: &luns,
    };
    let out = lu.execute(&req, &decoded);
    match out.status {
        TaskStatus::Good => {
            assert!(out.sense.is_none());
            assert!(decoded.command().is_ok(), "a command that succeeded decodes");
            let asked = lu
                .data_in_len(&decoded)
                .expect("a command that succeeded has a Data-In length");
            assert!(out.data_in.len() as u64 <= u64::from(asked));
        }
        TaskStatus::CheckCondition => {
            let sense = out.sense.expect("CHECK CONDITION carries sense");
            assert_eq!(sense.to_bytes().len(), 18);
            assert!(out.data_in.is_empty());
        }
        // A PERSISTENT RESERVE OUT with a key this nexus has not registered, or RESERVE after another nexus's.
        TaskStatus::ReservationConflict => {
            assert!(out.sense.is_none() && out.data_in.is_empty());
        }
        other => panic!("unexpected status {other:?}"),
    }
    if let Ok(len) = lu.data_out_len(&decoded) {
        assert!(len <= MAX_TRANSFER_BLOCKS * BLOCK_SIZE);
    }
    let no_lun = execute_no_lun(&req, &decoded);
    assert_eq!(
        no_lun.status == TaskStatus::CheckCondition,
        no_lun.sense.is_some()
    );
}

fn identity() -> LunIdentity {
    LunIdentity {
        vendor: "TWINSAN".into(),
        product: "fuzz".into(),
        revision: "0".into(),
        serial: "fuzz-serial".into(),
        naa: [0x60; 16],
        target_name: "iqn.2024-01.org.twinsan:fuzz".into(),
        relative_port: 1,
        target_portal_group: 1,
    }
}

fn nexus(id: u64) -> Nexus {
    Nexus {
        id,
        initiator_name: format!("iqn.2024-01.org.twinsan:initiator{id}"),
        isid: [0; 6],
        target_portal_group: 1,
    }
}
