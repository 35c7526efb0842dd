//! MODE SENSE (6)/(10) parameter data (SPC-4 7.5, SBC-3 6.4): caching, control and informational exceptions
//! pages. Nothing is changeable (there is no MODE SELECT yet), so the changeable mask is all zeros and the default
//! values are the current ones.

use crate::cdb::{CdbSize, PageControl};
use crate::sense::Sense;

/// Page codes we implement, in the order "all pages" returns them.
const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0A;
const INFORMATIONAL_EXCEPTIONS: u8 = 0x1C;
const ALL_PAGES: u8 = 0x3F;
const ALL_SUBPAGES: u8 = 0xFF;

/// The arguments of one MODE SENSE.
pub(super) struct ModeSenseRequest {
    pub size: CdbSize,
    pub dbd: bool,
    pub llbaa: bool,
    pub page_control: PageControl,
    pub page_code: u8,
    pub subpage_code: u8,
}

/// The logical unit facts the parameter data reports.
pub(super) struct MediumFacts {
    pub blocks: u64,
    pub block_size: u32,
    pub read_only: bool,
}

/// Builds the full mode parameter data (the caller truncates it to the allocation length).
pub(super) fn mode_sense(req: &ModeSenseRequest, medium: &MediumFacts) -> Result<Vec<u8>, Sense> {
    if req.page_control == PageControl::Saved {
        return Err(Sense::saving_parameters_not_supported());
    }
    let pages: &[u8] = match req.page_code {
        ALL_PAGES => &[CACHING, CONTROL, INFORMATIONAL_EXCEPTIONS],
        CACHING => &[CACHING],
        CONTROL => &[CONTROL],
        INFORMATIONAL_EXCEPTIONS => &[INFORMATIONAL_EXCEPTIONS],
        _ => return Err(Sense::invalid_field_in_cdb(2, 5)),
    };
    // We have no subpages: subpage 00h is the page itself, FFh (all subpages) includes it.
    if req.subpage_code != 0 && req.subpage_code != ALL_SUBPAGES {
        return Err(Sense::invalid_field_in_cdb(3, 7));
    }
    let mut body = Vec::new();
    for &code in pages {
        body.extend_from_slice(&page(code, req.page_control));
    }

    let descriptor = if req.dbd {
        Vec::new()
    } else {
        block_descriptor(req, medium)
    };
    // WP when read only; DPOFUA: DPO and FUA bits are accepted in READ/WRITE/VERIFY CDBs.
    let device_specific = if medium.read_only { 0x80 } else { 0x00 } | 0x10;

    let mut b = match req.size {
        CdbSize::Six => vec![0, 0, device_specific, descriptor.len() as u8],
        _ => {
            let long_lba = u8::from(descriptor.len() == 16);
            let [dl_hi, dl_lo] = (descriptor.len() as u16).to_be_bytes();
            vec![0, 0, 0, device_specific, long_lba, 0, dl_hi, dl_lo]
        }
    };
    b.extend_from_slice(&descriptor);
    b.extend_from_slice(&body);
    // MODE DATA LENGTH excludes itself.
    match req.size {
        CdbSize::Six => b[0] = (b.len() - 1) as u8,
        _ => {
            let [hi, lo] = ((b.len() - 2) as u16).to_be_bytes();
            b[0] = hi;
            b[1] = lo;
        }
    }
    Ok(b)
}

/// One block descriptor: short (8 bytes), or long (16 bytes) when MODE SENSE (10) allows it with LLBAA.
fn block_descriptor(req: &ModeSenseRequest, medium: &MediumFacts) -> Vec<u8> {
    let block_len = medium.block_size.to_be_bytes();
    if req.size == CdbSize::Ten && req.llbaa {
        let mut d = medium.blocks.to_be_bytes().to_vec();
        d.extend_from_slice(&[0, 0, 0, 0]);
        d.extend_from_slice(&block_len);
        d
    } else {
        // A capacity that does not fit is reported as FFFFFFFFh (SBC-3 6.4.2).
        let blocks = u32::try_from(medium.blocks).unwrap_or(u32::MAX);
        let mut d = blocks.to_be_bytes().to_vec();
        d.push(0);
        d.extend_from_slice(&block_len[1..4]);
        d
    }
}

/// One page with its header; for the changeable mask only the header survives.
fn page(code: u8, pc: PageControl) -> Vec<u8> {
    let mut p = match code {
        // WCE=1 (write cache on: SYNCHRONIZE CACHE / FUA are honoured), RCD=0.
        CACHING => {
            let mut p = vec![0u8; 20];
            p[2] = 0x04;
            p
        }
        CONTROL => {
            let mut p = vec![0u8; 12];
            // TST=0, D_SENSE=0 (fixed format sense), QUEUE ALGORITHM MODIFIER=1 (unrestricted reordering),
            // QERR=0, SWP=0, TAS=0; BUSY TIMEOUT PERIOD FFFFh: unlimited.
            p[3] = 0x10;
            p[8] = 0xFF;
            p[9] = 0xFF;
            p
        }
        _ => {
            // Informational exceptions: DEXCPT=1 (we raise none), MRIE=0.
            let mut p = vec![0u8; 12];
            p[2] = 0x08;
            p
        }
    };
    if pc == PageControl::Changeable {
        p[2..].fill(0);
    }
    p[0] = code; // PS=0: nothing can be saved; SPF=0: page_0 format
    p[1] = (p.len() - 2) as u8;
    p
}
