//! MODE SENSE (6)/(10) parameter data and MODE SELECT (6)/(10) (SPC-4 6.9-6.12, 7.5; SBC-3 6.4): the caching,
//! control and informational exceptions pages.
//!
//! Changeable, and kept in the logical unit's memory ([`ModeState`]): WCE of the caching page (0: every write is
//! written through, as with FUA), and DEXCPT, MRIE, INTERVAL TIMER and REPORT COUNT of the informational
//! exceptions page (we never raise an informational exception, so any reporting method is honoured by reporting
//! nothing). The control page is fixed. Nothing can be saved: PS is 0 in every page, MODE SENSE of saved values
//! and MODE SELECT with SP are refused.

use crate::cdb::{CdbSize, PageControl};
use crate::sense::Sense;

/// Page codes we implement, in the order "all pages" returns them.
const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0A;
const INFORMATIONAL_EXCEPTIONS: u8 = 0x1C;
const ALL_PAGES: u8 = 0x3F;
const ALL_SUBPAGES: u8 = 0xFF;

/// Highest MRIE value SPC-4 defines (6h: only report informational exception condition on request).
const MAX_MRIE: u8 = 0x06;

/// The mode parameters MODE SELECT can change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ModeState {
    /// WCE: writes may complete from a volatile cache (SYNCHRONIZE CACHE / FUA make them durable). 0: every
    /// write is durable before GOOD.
    pub wce: bool,
    /// DEXCPT: informational exception operations disabled.
    pub dexcpt: bool,
    /// MRIE: method of reporting informational exceptions.
    pub mrie: u8,
    /// INTERVAL TIMER.
    pub interval_timer: u32,
    /// REPORT COUNT.
    pub report_count: u32,
}

impl Default for ModeState {
    fn default() -> Self {
        Self {
            wce: true,
            dexcpt: true,
            mrie: 0,
            interval_timer: 0,
            report_count: 0,
        }
    }
}

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
pub(super) fn mode_sense(
    req: &ModeSenseRequest,
    medium: &MediumFacts,
    state: &ModeState,
) -> Result<Vec<u8>, Sense> {
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
        let p = match req.page_control {
            PageControl::Changeable => changeable(code),
            PageControl::Default => page(code, &ModeState::default()),
            _ => page(code, state),
        };
        body.extend_from_slice(&p);
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

/// Length of a page including its 2-byte header.
fn page_len(code: u8) -> usize {
    match code {
        CACHING => 20,
        _ => 12,
    }
}

/// The current (or default) values of one page, with its header. PS=0: nothing can be saved; SPF=0: page_0
/// format.
fn page(code: u8, st: &ModeState) -> Vec<u8> {
    let mut p = vec![0u8; page_len(code)];
    match code {
        // WCE as set, RCD=0 (we have no read cache of our own to disable).
        CACHING => p[2] = if st.wce { 0x04 } else { 0x00 },
        CONTROL => {
            // TST=0, D_SENSE=0 (fixed format sense), QUEUE ALGORITHM MODIFIER=1 (unrestricted reordering),
            // QERR=0, SWP=0, TAS=0; BUSY TIMEOUT PERIOD FFFFh: unlimited.
            p[3] = 0x10;
            p[8] = 0xFF;
            p[9] = 0xFF;
        }
        _ => {
            p[2] = if st.dexcpt { 0x08 } else { 0x00 };
            p[3] = st.mrie;
            p[4..8].copy_from_slice(&st.interval_timer.to_be_bytes());
            p[8..12].copy_from_slice(&st.report_count.to_be_bytes());
        }
    }
    p[0] = code;
    p[1] = (p.len() - 2) as u8;
    p
}

/// The changeable-values mask of one page (its header as in the current values).
fn changeable(code: u8) -> Vec<u8> {
    let mut p = vec![0u8; page_len(code)];
    match code {
        CACHING => p[2] = 0x04,
        CONTROL => {}
        _ => {
            p[2] = 0x08;
            p[3] = 0x0F;
            p[4..12].fill(0xFF);
        }
    }
    p[0] = code;
    p[1] = (p.len() - 2) as u8;
    p
}

/// The arguments of one MODE SELECT.
pub(super) struct ModeSelectRequest {
    pub size: CdbSize,
    pub pf: bool,
    pub sp: bool,
    pub param_len: usize,
}

/// Checks a MODE SELECT parameter list against what can change and returns the mode parameters it asks for. Nothing
/// is applied unless the whole list is acceptable (the caller stores the result).
pub(super) fn mode_select(
    req: &ModeSelectRequest,
    data_out: &[u8],
    medium: &MediumFacts,
    current: &ModeState,
) -> Result<ModeState, Sense> {
    if req.sp {
        // SPC-4 6.9: SP set on a logical unit that implements no saved pages.
        return Err(Sense::invalid_field_in_cdb(1, 0));
    }
    if req.param_len == 0 {
        return Ok(*current);
    }
    // A list shorter than announced is truncated wherever it ends.
    let list = data_out
        .get(..req.param_len)
        .ok_or_else(Sense::parameter_list_length_error)?;
    let (header_len, descriptor_len, long_lba) = match req.size {
        CdbSize::Six => {
            let h = list
                .get(..4)
                .ok_or_else(Sense::parameter_list_length_error)?;
            if h[1] != 0 {
                return Err(Sense::invalid_field_in_parameter_list(1, 7));
            }
            (4, usize::from(h[3]), false)
        }
        _ => {
            let h = list
                .get(..8)
                .ok_or_else(Sense::parameter_list_length_error)?;
            if h[2] != 0 {
                return Err(Sense::invalid_field_in_parameter_list(2, 7));
            }
            (
                8,
                usize::from(u16::from_be_bytes([h[6], h[7]])),
                h[4] & 0x01 != 0,
            )
        }
    };
    // MODE DATA LENGTH is reserved in MODE SELECT, and WP / DPOFUA of the device-specific parameter are not
    // changeable: both are ignored, so a header copied from MODE SENSE is accepted.
    let one = if long_lba { 16 } else { 8 };
    let bdl_field = if header_len == 4 { 3 } else { 6 };
    if descriptor_len != 0 && descriptor_len != one {
        return Err(Sense::invalid_field_in_parameter_list(bdl_field, 7));
    }
    let descriptor = list
        .get(header_len..header_len + descriptor_len)
        .ok_or_else(Sense::parameter_list_length_error)?;
    if !descriptor.is_empty() {
        check_block_descriptor(descriptor, long_lba, header_len as u16, medium)?;
    }

    let mut off = header_len + descriptor_len;
    if off < list.len() && !req.pf {
        // PF=0: vendor-specific parameters, of which we have none.
        return Err(Sense::invalid_field_in_cdb(1, 4));
    }
    let mut next = *current;
    while off < list.len() {
        let head = list
            .get(off..off + 2)
            .ok_or_else(Sense::parameter_list_length_error)?;
        let at = |i: usize| u16::try_from(off + i).unwrap_or(u16::MAX);
        if head[0] & 0x40 != 0 {
            // SPF: we have no subpages.
            return Err(Sense::invalid_field_in_parameter_list(at(0), 6));
        }
        // PS is reserved in MODE SELECT: ignored.
        let code = head[0] & 0x3F;
        if !matches!(code, CACHING | CONTROL | INFORMATIONAL_EXCEPTIONS) {
            return Err(Sense::invalid_field_in_parameter_list(at(0), 5));
        }
        let len = page_len(code);
        if usize::from(head[1]) + 2 != len {
            return Err(Sense::invalid_field_in_parameter_list(at(1), 7));
        }
        let sent = list
            .get(off..off + len)
            .ok_or_else(Sense::parameter_list_length_error)?;
        let have = page(code, &next);
        let mask = changeable(code);
        for i in 2..len {
            let fixed = (sent[i] ^ have[i]) & !mask[i];
            if fixed != 0 {
                let bit = 7 - fixed.leading_zeros() as u8;
                return Err(Sense::invalid_field_in_parameter_list(at(i), bit));
            }
        }
        match code {
            CACHING => next.wce = sent[2] & 0x04 != 0,
            INFORMATIONAL_EXCEPTIONS => {
                if sent[3] & 0x0F > MAX_MRIE {
                    return Err(Sense::invalid_field_in_parameter_list(at(3), 3));
                }
                next.dexcpt = sent[2] & 0x08 != 0;
                next.mrie = sent[3] & 0x0F;
                next.interval_timer = u32::from_be_bytes([sent[4], sent[5], sent[6], sent[7]]);
                next.report_count = u32::from_be_bytes([sent[8], sent[9], sent[10], sent[11]]);
            }
            _ => {}
        }
        off += len;
    }
    Ok(next)
}

/// A block descriptor in MODE SELECT may restate the medium but not change it: NUMBER OF LOGICAL BLOCKS 0 (no
/// change) or the capacity, BLOCK LENGTH our block size.
fn check_block_descriptor(
    d: &[u8],
    long_lba: bool,
    at: u16,
    medium: &MediumFacts,
) -> Result<(), Sense> {
    let (blocks, block_len, len_at) = if long_lba {
        (
            u64::from_be_bytes(d[0..8].try_into().unwrap_or([0xFF; 8])),
            u32::from_be_bytes([d[12], d[13], d[14], d[15]]),
            at + 12,
        )
    } else {
        let short = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        let blocks = if short == u32::MAX {
            // FFFFFFFFh stands for a capacity too large for the field.
            medium.blocks.max(u64::from(u32::MAX))
        } else {
            u64::from(short)
        };
        (blocks, u32::from_be_bytes([0, d[5], d[6], d[7]]), at + 5)
    };
    if blocks != 0 && blocks != medium.blocks {
        return Err(Sense::invalid_field_in_parameter_list(at, 7));
    }
    if block_len != medium.block_size {
        return Err(Sense::invalid_field_in_parameter_list(len_at, 7));
    }
    Ok(())
}
