//! INQUIRY data: the standard page (SPC-4 6.6.2) and the vital product data pages (SPC-4 7.8, SBC-3 6.5).

use super::{
    LunIdentity, MAX_COMPARE_AND_WRITE_BLOCKS, MAX_TRANSFER_BLOCKS, MAX_UNMAP_BLOCKS,
    MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS, OPTIMAL_TRANSFER_BLOCKS,
    OPTIMAL_TRANSFER_GRANULARITY_BLOCKS,
};
use crate::sense::Sense;

/// Peripheral qualifier 000b, device type 00h (direct access block device).
const PERIPHERAL_DISK: u8 = 0x00;
/// Peripheral qualifier 011b, device type 1Fh: no logical unit at this LUN.
pub(super) const PERIPHERAL_NONE: u8 = 0x7F;

/// VPD pages we return, in the order SUPPORTED VPD PAGES lists them.
const SUPPORTED_VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2];

/// Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3 (libiscsi keys SBC-3 tests on 04C0h).
const VERSION_DESCRIPTORS: [u16; 4] = [0x00A0, 0x0960, 0x0460, 0x04C0];

/// Length of our standard INQUIRY data.
const STANDARD_LEN: usize = 96;

/// Standard INQUIRY data for a logical unit that exists.
pub(super) fn standard(identity: &LunIdentity) -> Vec<u8> {
    let mut b = vec![0u8; STANDARD_LEN];
    b[0] = PERIPHERAL_DISK;
    b[1] = 0x00; // RMB=0: not removable
    b[2] = 0x06; // SPC-4
    b[3] = 0x10 | 0x02; // HiSup, response data format 2
    b[4] = (STANDARD_LEN - 5) as u8;
    b[7] = 0x02; // CmdQue
    put_ascii(&mut b[8..16], &identity.vendor);
    put_ascii(&mut b[16..32], &identity.product);
    put_ascii(&mut b[32..36], &identity.revision);
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        b[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    b
}

/// Standard INQUIRY data for a LUN with no logical unit behind it.
pub(super) fn standard_no_lun() -> Vec<u8> {
    let mut b = vec![0u8; 36];
    b[0] = PERIPHERAL_NONE;
    b[2] = 0x06;
    b[3] = 0x12;
    b[4] = 31;
    b[8..36].fill(b' ');
    b
}

/// A VPD page of a logical unit that is (`thin`) or is not thin provisioned, or INVALID FIELD IN CDB for a page
/// we do not have.
pub(super) fn vpd(page: u8, identity: &LunIdentity, thin: bool) -> Result<Vec<u8>, Sense> {
    let body = match page {
        0x00 => SUPPORTED_VPD_PAGES.to_vec(),
        0x80 => unit_serial_number(&identity.serial),
        0x83 => device_identification(identity),
        0xB0 => block_limits(thin),
        0xB1 => block_device_characteristics(),
        0xB2 => logical_block_provisioning(thin),
        _ => return Err(Sense::invalid_field_in_cdb(2, 7)),
    };
    Ok(page_with_header(PERIPHERAL_DISK, page, body))
}

/// VPD page for a LUN with no logical unit: only SUPPORTED VPD PAGES, listing itself.
pub(super) fn vpd_no_lun(page: u8) -> Result<Vec<u8>, Sense> {
    match page {
        0x00 => Ok(page_with_header(PERIPHERAL_NONE, 0x00, vec![0x00])),
        _ => Err(Sense::invalid_field_in_cdb(2, 7)),
    }
}

fn page_with_header(peripheral: u8, page: u8, body: Vec<u8>) -> Vec<u8> {
    // Every body we build is far below 64 KiB.
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    let mut b = Vec::with_capacity(4 + body.len());
    b.push(peripheral);
    b.push(page);
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(&body);
    b
}

/// Unit serial number (80h): printable ASCII only, at most 252 bytes.
fn unit_serial_number(serial: &str) -> Vec<u8> {
    serial
        .bytes()
        .filter(|c| (0x20..=0x7E).contains(c))
        .take(252)
        .collect()
}

/// Device identification (83h): NAA, target port and target device names, relative port, port group.
fn device_identification(identity: &LunIdentity) -> Vec<u8> {
    const ISCSI: u8 = 0x5 << 4; // protocol identifier, meaningful when PIV is set
    const BINARY: u8 = 0x1;
    const UTF8: u8 = 0x3;
    const PIV: u8 = 0x80;
    const LU: u8 = 0x0 << 4;
    const PORT: u8 = 0x1 << 4;
    const DEVICE: u8 = 0x2 << 4;

    let mut b = Vec::new();
    let mut designator = |code_set: u8, flags: u8, value: &[u8]| {
        b.extend_from_slice(&[code_set, flags, 0, value.len() as u8]);
        b.extend_from_slice(value);
    };

    // NAA IEEE Registered Extended: the high nibble is the NAA type, always 6.
    let mut naa = identity.naa;
    naa[0] = 0x60 | (naa[0] & 0x0F);
    designator(BINARY, LU | 0x3, &naa);

    if !identity.target_name.is_empty() {
        let port = format!(
            "{},t,0x{:04x}",
            identity.target_name, identity.target_portal_group
        );
        designator(ISCSI | UTF8, PIV | PORT | 0x8, &scsi_name_string(&port));
        designator(
            ISCSI | UTF8,
            PIV | DEVICE | 0x8,
            &scsi_name_string(&identity.target_name),
        );
    }

    let [rp_hi, rp_lo] = identity.relative_port.to_be_bytes();
    designator(ISCSI | BINARY, PIV | PORT | 0x4, &[0, 0, rp_hi, rp_lo]);
    let [tg_hi, tg_lo] = identity.target_portal_group.to_be_bytes();
    designator(ISCSI | BINARY, PIV | PORT | 0x5, &[0, 0, tg_hi, tg_lo]);
    b
}

/// SCSI name string: UTF-8, NUL terminated, NUL padded to a multiple of 4 bytes, at most 252 bytes.
fn scsi_name_string(name: &str) -> Vec<u8> {
    let mut end = name.len().min(251);
    // Never cut a UTF-8 sequence in half.
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let mut v = name.as_bytes()[..end].to_vec();
    v.push(0);
    v.resize(v.len().next_multiple_of(4), 0);
    v
}

/// Block limits (B0h), SBC-3 length 3Ch. The UNMAP fields are zero for a fully provisioned logical unit; the
/// atomic write fields (SBC-4) stay zero: not supported.
fn block_limits(thin: bool) -> Vec<u8> {
    let mut b = vec![0u8; 0x3C];
    // Offsets below are from the start of the page; the body starts at byte 4.
    // Byte 4: WSNZ=0, a WRITE SAME of 0 blocks (to the end of the medium) is accepted.
    b[5 - 4] = MAX_COMPARE_AND_WRITE_BLOCKS;
    b[6 - 4..8 - 4].copy_from_slice(&OPTIMAL_TRANSFER_GRANULARITY_BLOCKS.to_be_bytes());
    b[8 - 4..12 - 4].copy_from_slice(&MAX_TRANSFER_BLOCKS.to_be_bytes());
    b[12 - 4..16 - 4].copy_from_slice(&OPTIMAL_TRANSFER_BLOCKS.to_be_bytes());
    // 16..20 MAXIMUM PREFETCH LENGTH 0: no limit (PRE-FETCH reads nothing).
    if thin {
        b[20 - 4..24 - 4].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
        b[24 - 4..28 - 4].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        // OPTIMAL UNMAP GRANULARITY: the physical block (a filesystem deallocates whole 4 KiB blocks), aligned
        // at LBA 0 (UGAVALID).
        b[28 - 4..32 - 4]
            .copy_from_slice(&u32::from(OPTIMAL_TRANSFER_GRANULARITY_BLOCKS).to_be_bytes());
        b[32 - 4..36 - 4].copy_from_slice(&0x8000_0000u32.to_be_bytes());
    }
    b[36 - 4..44 - 4].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
    b
}

/// Block device characteristics (B1h): non-rotating medium; product type and nominal form factor not reported.
fn block_device_characteristics() -> Vec<u8> {
    let mut b = vec![0u8; 0x3C];
    b[0..2].copy_from_slice(&1u16.to_be_bytes()); // MEDIUM ROTATION RATE 0001h: solid state
    b
}

/// Logical block provisioning (B2h), 4 bytes, no provisioning group descriptor. A thin provisioned logical unit
/// supports UNMAP (LBPU) and WRITE SAME (16)/(10) with UNMAP (LBPWS, LBPWS10), and an unmapped block reads as zeros
/// (LBPRZ); no anchoring (ANC_SUP=0), no thresholds. A fully provisioned one reports none of it (type 000b).
fn logical_block_provisioning(thin: bool) -> Vec<u8> {
    if thin {
        vec![0, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0]
    } else {
        vec![0; 4]
    }
}

/// Copies `s` into `field` as printable ASCII, space padded (SPC-4 4.4.1).
fn put_ascii(field: &mut [u8], s: &str) {
    field.fill(b' ');
    for (dst, c) in field.iter_mut().zip(s.bytes()) {
        *dst = if (0x20..=0x7E).contains(&c) { c } else { b' ' };
    }
}
