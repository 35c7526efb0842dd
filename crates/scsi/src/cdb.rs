//! Command descriptor block decoding: bytes in, a typed [`Command`] or the [`Sense`] to reject it with.
//!
//! Decoding is pure and checks only what the CDB itself says (SPC-4 / SBC-3 syntax). Limits that depend on the
//! logical unit (capacity, maximum transfer length, write protection) are checked by the
//! [`LogicalUnit`](crate::LogicalUnit).
//!
//! What is rejected with INVALID FIELD IN CDB: a set NACA or LINK bit in the CONTROL byte, protection fields
//! (RDPROTECT / WRPROTECT / VRPROTECT) other than zero since we do not format with protection information, the
//! obsolete INQUIRY CmdDt bit, and the field combinations SPC-4 calls invalid. Reserved bits, group numbers, DPO
//! and FUA_NV are accepted and ignored, because real initiators set them.

use crate::sense::Sense;

/// Operation codes this crate knows.
pub mod opcode {
    /// TEST UNIT READY.
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE.
    pub const REQUEST_SENSE: u8 = 0x03;
    /// READ (6).
    pub const READ_6: u8 = 0x08;
    /// WRITE (6).
    pub const WRITE_6: u8 = 0x0A;
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// MODE SELECT (6).
    pub const MODE_SELECT_6: u8 = 0x15;
    /// RESERVE (6), SPC-2.
    pub const RESERVE_6: u8 = 0x16;
    /// RELEASE (6), SPC-2.
    pub const RELEASE_6: u8 = 0x17;
    /// MODE SENSE (6).
    pub const MODE_SENSE_6: u8 = 0x1A;
    /// START STOP UNIT.
    pub const START_STOP_UNIT: u8 = 0x1B;
    /// PREVENT ALLOW MEDIUM REMOVAL.
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1E;
    /// READ CAPACITY (10).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ (10).
    pub const READ_10: u8 = 0x28;
    /// WRITE (10).
    pub const WRITE_10: u8 = 0x2A;
    /// WRITE AND VERIFY (10).
    pub const WRITE_AND_VERIFY_10: u8 = 0x2E;
    /// VERIFY (10).
    pub const VERIFY_10: u8 = 0x2F;
    /// PRE-FETCH (10).
    pub const PRE_FETCH_10: u8 = 0x34;
    /// SYNCHRONIZE CACHE (10).
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    /// WRITE SAME (10).
    pub const WRITE_SAME_10: u8 = 0x41;
    /// UNMAP.
    pub const UNMAP: u8 = 0x42;
    /// MODE SELECT (10).
    pub const MODE_SELECT_10: u8 = 0x55;
    /// RESERVE (10), SPC-2.
    pub const RESERVE_10: u8 = 0x56;
    /// RELEASE (10), SPC-2.
    pub const RELEASE_10: u8 = 0x57;
    /// MODE SENSE (10).
    pub const MODE_SENSE_10: u8 = 0x5A;
    /// PERSISTENT RESERVE IN; READ KEYS, READ RESERVATION, REPORT CAPABILITIES and READ FULL STATUS are its
    /// service actions 00h..=03h.
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    /// PERSISTENT RESERVE OUT; its service actions 00h..=07h are [`PrOutAction`](super::PrOutAction).
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    /// READ (16).
    pub const READ_16: u8 = 0x88;
    /// COMPARE AND WRITE.
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    /// WRITE (16).
    pub const WRITE_16: u8 = 0x8A;
    /// ORWRITE (16).
    pub const ORWRITE_16: u8 = 0x8B;
    /// WRITE AND VERIFY (16).
    pub const WRITE_AND_VERIFY_16: u8 = 0x8E;
    /// VERIFY (16).
    pub const VERIFY_16: u8 = 0x8F;
    /// PRE-FETCH (16).
    pub const PRE_FETCH_16: u8 = 0x90;
    /// SYNCHRONIZE CACHE (16).
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    /// WRITE SAME (16).
    pub const WRITE_SAME_16: u8 = 0x93;
    /// SERVICE ACTION IN (16); READ CAPACITY (16) and GET LBA STATUS are its service actions 10h and 12h.
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    /// REPORT LUNS.
    pub const REPORT_LUNS: u8 = 0xA0;
    /// MAINTENANCE IN; REPORT SUPPORTED OPERATION CODES is its service action 0Ch.
    pub const MAINTENANCE_IN: u8 = 0xA3;
    /// READ (12).
    pub const READ_12: u8 = 0xA8;
    /// WRITE (12).
    pub const WRITE_12: u8 = 0xAA;
    /// WRITE AND VERIFY (12).
    pub const WRITE_AND_VERIFY_12: u8 = 0xAE;
    /// VERIFY (12).
    pub const VERIFY_12: u8 = 0xAF;
}

/// Service actions this crate knows.
pub mod service_action {
    /// READ CAPACITY (16), under SERVICE ACTION IN (16).
    pub const READ_CAPACITY_16: u16 = 0x10;
    /// GET LBA STATUS, under SERVICE ACTION IN (16).
    pub const GET_LBA_STATUS: u16 = 0x12;
    /// REPORT SUPPORTED OPERATION CODES, under MAINTENANCE IN.
    pub const REPORT_SUPPORTED_OPCODES: u16 = 0x0C;
    /// READ KEYS, under PERSISTENT RESERVE IN.
    pub const PR_IN_READ_KEYS: u16 = 0x00;
    /// READ RESERVATION, under PERSISTENT RESERVE IN.
    pub const PR_IN_READ_RESERVATION: u16 = 0x01;
    /// REPORT CAPABILITIES, under PERSISTENT RESERVE IN.
    pub const PR_IN_REPORT_CAPABILITIES: u16 = 0x02;
    /// READ FULL STATUS, under PERSISTENT RESERVE IN.
    pub const PR_IN_READ_FULL_STATUS: u16 = 0x03;
    /// The highest PERSISTENT RESERVE OUT service action (REGISTER AND MOVE); 00h..=07h are all implemented.
    pub const PR_OUT_LAST: u16 = 0x07;
}

/// Which CDB form of a command was used; it fixes where each field sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CdbSize {
    /// 6-byte CDB.
    Six,
    /// 10-byte CDB.
    Ten,
    /// 12-byte CDB.
    Twelve,
    /// 16-byte CDB.
    Sixteen,
}

impl CdbSize {
    /// Length of the CDB in bytes.
    pub const fn bytes(self) -> usize {
        match self {
            CdbSize::Six => 6,
            CdbSize::Ten => 10,
            CdbSize::Twelve => 12,
            CdbSize::Sixteen => 16,
        }
    }

    /// Byte offset of the TRANSFER LENGTH field of a READ / WRITE / VERIFY style CDB of this size.
    pub const fn transfer_length_byte(self) -> u16 {
        match self {
            CdbSize::Six => 4,
            CdbSize::Ten => 7,
            CdbSize::Twelve => 6,
            CdbSize::Sixteen => 10,
        }
    }
}

/// The block range and flags of a READ, WRITE, VERIFY or WRITE AND VERIFY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockTransfer {
    /// CDB form the command came in.
    pub size: CdbSize,
    /// First logical block.
    pub lba: u64,
    /// Number of logical blocks (READ/WRITE (6): 0 in the CDB means 256).
    pub blocks: u32,
    /// Disable page out: a cache hint, accepted and ignored.
    pub dpo: bool,
    /// Force unit access: the data must be on stable storage before GOOD.
    pub fua: bool,
    /// Group number (hint), accepted and ignored.
    pub group: u8,
}

/// BYTCHK of VERIFY / WRITE AND VERIFY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ByteCheck {
    /// 00b: only check that the medium is readable; no Data-Out.
    MediumOnly,
    /// 01b: compare the Data-Out buffer with the medium byte by byte.
    Compare,
    /// 11b: compare every block of the range with the one block of the Data-Out buffer (WRITE AND VERIFY: write
    /// that block to every LBA of the range first).
    SingleBlock,
}

/// PC field of MODE SENSE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageControl {
    /// 00b: current values.
    Current,
    /// 01b: changeable values (a mask).
    Changeable,
    /// 10b: default values.
    Default,
    /// 11b: saved values.
    Saved,
}

/// SERVICE ACTION of PERSISTENT RESERVE IN (SPC-4 6.15).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrInAction {
    /// 00h: the registered reservation keys.
    ReadKeys,
    /// 01h: the persistent reservation, if there is one.
    ReadReservation,
    /// 02h: which persistent reservation features the device server supports.
    ReportCapabilities,
    /// 03h: every registration and reservation with its I_T nexus.
    ReadFullStatus,
}

/// SERVICE ACTION of PERSISTENT RESERVE OUT (SPC-4 6.16), in code order 00h..=07h.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrOutAction {
    /// 00h: register, change or remove this I_T nexus's reservation key.
    Register,
    /// 01h: create a persistent reservation.
    Reserve,
    /// 02h: release the persistent reservation.
    Release,
    /// 03h: remove every registration and the reservation.
    Clear,
    /// 04h: remove other registrations and perhaps take over the reservation.
    Preempt,
    /// 05h: PREEMPT, plus aborting the preempted nexuses' tasks.
    PreemptAndAbort,
    /// 06h: REGISTER without checking the current key.
    RegisterAndIgnoreExistingKey,
    /// 07h: register another I_T nexus and move the reservation to it.
    RegisterAndMove,
}

impl PrOutAction {
    /// The action with service action code `sa`, if it is one of 00h..=07h.
    pub fn from_code(sa: u8) -> Option<Self> {
        use PrOutAction::*;
        [
            Register,
            Reserve,
            Release,
            Clear,
            Preempt,
            PreemptAndAbort,
            RegisterAndIgnoreExistingKey,
            RegisterAndMove,
        ]
        .get(usize::from(sa))
        .copied()
    }
}

/// Largest PERSISTENT RESERVE OUT parameter list accepted (a basic list with many TransportIDs fits).
pub const MAX_PR_OUT_PARAMETER_LIST: u32 = 64 * 1024;

/// One decoded command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// TEST UNIT READY.
    TestUnitReady,
    /// REQUEST SENSE.
    RequestSense {
        /// DESC: return descriptor-format sense data.
        descriptor_format: bool,
        /// Allocation length.
        alloc_len: u8,
    },
    /// INQUIRY, standard data or a VPD page.
    Inquiry {
        /// EVPD: return the VPD page `page_code`.
        evpd: bool,
        /// Page code (0 for standard data).
        page_code: u8,
        /// Allocation length.
        alloc_len: u16,
    },
    /// MODE SENSE (6) or (10).
    ModeSense {
        /// [`CdbSize::Six`] or [`CdbSize::Ten`]: the parameter header differs.
        size: CdbSize,
        /// DBD: no block descriptors.
        dbd: bool,
        /// LLBAA: long LBA block descriptors allowed (10-byte form only).
        llbaa: bool,
        /// Which values to return.
        page_control: PageControl,
        /// Page code (3Fh: all pages).
        page_code: u8,
        /// Subpage code (FFh: all subpages).
        subpage_code: u8,
        /// Allocation length.
        alloc_len: u16,
    },
    /// READ CAPACITY (10).
    ReadCapacity10,
    /// READ CAPACITY (16).
    ReadCapacity16 {
        /// Allocation length.
        alloc_len: u32,
    },
    /// READ (6/10/12/16).
    Read(BlockTransfer),
    /// WRITE (6/10/12/16).
    Write(BlockTransfer),
    /// VERIFY (10/12/16).
    Verify {
        /// The range to verify (`fua` is always false).
        transfer: BlockTransfer,
        /// What to compare.
        byte_check: ByteCheck,
    },
    /// WRITE AND VERIFY (10/12/16).
    WriteAndVerify {
        /// The range to write and verify (`fua` is always false).
        transfer: BlockTransfer,
        /// What to compare after writing.
        byte_check: ByteCheck,
    },
    /// SYNCHRONIZE CACHE (10/16).
    SynchronizeCache {
        /// CDB form.
        size: CdbSize,
        /// First logical block of the range.
        lba: u64,
        /// Number of blocks; 0 means to the end of the medium.
        blocks: u32,
        /// IMMED: GOOD may be returned before the flush ends (we flush anyway).
        immed: bool,
    },
    /// WRITE SAME (10/16): one block written to (or, with UNMAP, deallocated from) a range.
    WriteSame {
        /// CDB form (fixes the field pointer of NUMBER OF LOGICAL BLOCKS).
        size: CdbSize,
        /// First logical block.
        lba: u64,
        /// Number of blocks; 0 means to the end of the medium.
        blocks: u32,
        /// UNMAP: deallocate the blocks rather than write them.
        unmap: bool,
        /// NDOB (16 only): no Data-Out, the block is all zeros.
        ndob: bool,
    },
    /// UNMAP: deallocate the ranges of the parameter list.
    Unmap {
        /// PARAMETER LIST LENGTH.
        param_len: u16,
    },
    /// GET LBA STATUS (SERVICE ACTION IN (16) 12h).
    GetLbaStatus {
        /// STARTING LOGICAL BLOCK ADDRESS.
        lba: u64,
        /// Allocation length.
        alloc_len: u32,
    },
    /// COMPARE AND WRITE: compare `blocks` blocks with the first half of the Data-Out, write the second half if
    /// they are equal.
    CompareAndWrite {
        /// First logical block.
        lba: u64,
        /// NUMBER OF LOGICAL BLOCKS (byte 13).
        blocks: u8,
        /// DPO (accepted, ignored).
        dpo: bool,
        /// FUA for the write.
        fua: bool,
    },
    /// ORWRITE (16): OR the Data-Out into the blocks.
    OrWrite(BlockTransfer),
    /// PRE-FETCH (10/16).
    PreFetch {
        /// CDB form.
        size: CdbSize,
        /// First logical block.
        lba: u64,
        /// Number of blocks (0: none).
        blocks: u32,
        /// IMMED.
        immed: bool,
    },
    /// MODE SELECT (6) or (10).
    ModeSelect {
        /// [`CdbSize::Six`] or [`CdbSize::Ten`]: the parameter header differs.
        size: CdbSize,
        /// PF: the parameters are SPC mode pages.
        pf: bool,
        /// SP: save the pages.
        sp: bool,
        /// PARAMETER LIST LENGTH.
        param_len: u16,
    },
    /// START STOP UNIT with POWER CONDITION 0 (START_VALID).
    StartStopUnit {
        /// IMMED.
        immed: bool,
        /// NO_FLUSH: stopping need not write cached data first.
        no_flush: bool,
        /// LOEJ: load (START) or eject (not START) the medium.
        loej: bool,
        /// START.
        start: bool,
    },
    /// PREVENT ALLOW MEDIUM REMOVAL.
    PreventAllowMediumRemoval {
        /// PREVENT 01b (else 00b).
        prevent: bool,
    },
    /// PERSISTENT RESERVE IN.
    PersistentReserveIn {
        /// SERVICE ACTION.
        action: PrInAction,
        /// Allocation length.
        alloc_len: u16,
    },
    /// PERSISTENT RESERVE OUT.
    PersistentReserveOut {
        /// SERVICE ACTION.
        action: PrOutAction,
        /// SCOPE (byte 2, bits 7..4); only 0h (logical unit) is valid where it is used.
        scope: u8,
        /// TYPE (byte 2, bits 3..0); checked by the service actions that use it.
        pr_type: u8,
        /// PARAMETER LIST LENGTH.
        param_len: u32,
    },
    /// RESERVE (6) or (10) of the whole logical unit (SPC-2).
    Reserve(CdbSize),
    /// RELEASE (6) or (10) of the whole logical unit (SPC-2).
    Release(CdbSize),
    /// REPORT LUNS.
    ReportLuns {
        /// SELECT REPORT (00h, 01h or 02h).
        select_report: u8,
        /// Allocation length (at least 16).
        alloc_len: u32,
    },
    /// REPORT SUPPORTED OPERATION CODES.
    ReportSupportedOpcodes {
        /// RCTD: include command timeouts descriptors.
        rctd: bool,
        /// REPORTING OPTIONS (0..=3).
        reporting_options: u8,
        /// REQUESTED OPERATION CODE.
        opcode: u8,
        /// REQUESTED SERVICE ACTION.
        service_action: u16,
        /// Allocation length.
        alloc_len: u32,
    },
}

/// A CDB decoded once, when its command arrives: the [`Command`], or the [`Sense`] that rejects the CDB. The
/// engine keeps it with the command and hands it to every [`LogicalUnit`](crate::LogicalUnit) call about that
/// command, so no call decodes again. A CDB that does not decode still goes to
/// [`LogicalUnit::execute`](crate::LogicalUnit::execute), which reports a pending unit attention before the CDB's
/// error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decoded(Result<Command, Sense>);

impl Decoded {
    /// Decodes `cdb` ([`Command::decode`]).
    pub fn new(cdb: &[u8]) -> Self {
        Decoded(Command::decode(cdb))
    }

    /// The command, or why its CDB is refused.
    pub fn command(&self) -> Result<Command, Sense> {
        self.0
    }
}

impl Command {
    /// Decodes a CDB. `cdb` may be longer than the command's CDB (the iSCSI BHS always carries 16 bytes); bytes
    /// after the command's CONTROL byte are ignored.
    pub fn decode(cdb: &[u8]) -> Result<Command, Sense> {
        use opcode::*;
        let Some(&op) = cdb.first() else {
            return Err(Sense::invalid_opcode());
        };
        let size = cdb_size(op).ok_or_else(Sense::invalid_opcode)?;
        let c = cdb
            .get(..size.bytes())
            .ok_or_else(|| Sense::invalid_field_in_cdb(0, 7))?;
        check_control(c)?;
        let cmd = match op {
            TEST_UNIT_READY => Command::TestUnitReady,
            REQUEST_SENSE => Command::RequestSense {
                descriptor_format: c[1] & 0x01 != 0,
                alloc_len: c[4],
            },
            INQUIRY => {
                if c[1] & 0x02 != 0 {
                    // CmdDt (obsolete since SPC-3); we do not return command support data this way.
                    return Err(Sense::invalid_field_in_cdb(1, 1));
                }
                let evpd = c[1] & 0x01 != 0;
                if !evpd && c[2] != 0 {
                    return Err(Sense::invalid_field_in_cdb(2, 7));
                }
                Command::Inquiry {
                    evpd,
                    page_code: c[2],
                    alloc_len: be16(&c[3..5]),
                }
            }
            MODE_SENSE_6 | MODE_SENSE_10 => Command::ModeSense {
                size,
                dbd: c[1] & 0x08 != 0,
                llbaa: op == MODE_SENSE_10 && c[1] & 0x10 != 0,
                page_control: match c[2] >> 6 {
                    0 => PageControl::Current,
                    1 => PageControl::Changeable,
                    2 => PageControl::Default,
                    _ => PageControl::Saved,
                },
                page_code: c[2] & 0x3F,
                subpage_code: c[3],
                alloc_len: if op == MODE_SENSE_6 {
                    u16::from(c[4])
                } else {
                    be16(&c[7..9])
                },
            },
            READ_CAPACITY_10 => {
                // PMI=0 with a non-zero LBA is an error in SBC-3 (the field is obsolete in SBC-4).
                if c[8] & 0x01 == 0 && be32(&c[2..6]) != 0 {
                    return Err(Sense::invalid_field_in_cdb(2, 7));
                }
                Command::ReadCapacity10
            }
            SERVICE_ACTION_IN_16 => match u16::from(c[1] & 0x1F) {
                service_action::READ_CAPACITY_16 => {
                    if c[14] & 0x01 == 0 && be64(&c[2..10]) != 0 {
                        return Err(Sense::invalid_field_in_cdb(2, 7));
                    }
                    Command::ReadCapacity16 {
                        alloc_len: be32(&c[10..14]),
                    }
                }
                service_action::GET_LBA_STATUS => {
                    // REPORT TYPE (SBC-4): only 00b, every status.
                    if c[14] & 0x03 != 0 {
                        return Err(Sense::invalid_field_in_cdb(14, 1));
                    }
                    Command::GetLbaStatus {
                        lba: be64(&c[2..10]),
                        alloc_len: be32(&c[10..14]),
                    }
                }
                // An unknown service action is reported like an unknown opcode: initiators (and libiscsi's
                // test suite) then treat the command as not implemented.
                _ => return Err(Sense::invalid_opcode()),
            },
            READ_6 | WRITE_6 => {
                let lba = u64::from(be24(&c[1..4]) & 0x1F_FFFF);
                let blocks = if c[4] == 0 { 256 } else { u32::from(c[4]) };
                let t = BlockTransfer {
                    size,
                    lba,
                    blocks,
                    dpo: false,
                    fua: false,
                    group: 0,
                };
                if op == READ_6 {
                    Command::Read(t)
                } else {
                    Command::Write(t)
                }
            }
            READ_10 | READ_12 | READ_16 => Command::Read(rw_transfer(c, size)?),
            WRITE_10 | WRITE_12 | WRITE_16 => Command::Write(rw_transfer(c, size)?),
            VERIFY_10 | VERIFY_12 | VERIFY_16 => {
                let mut transfer = rw_transfer(c, size)?;
                transfer.fua = false; // bit 3 is reserved in VERIFY
                Command::Verify {
                    transfer,
                    byte_check: byte_check(c)?,
                }
            }
            WRITE_AND_VERIFY_10 | WRITE_AND_VERIFY_12 | WRITE_AND_VERIFY_16 => {
                let mut transfer = rw_transfer(c, size)?;
                transfer.fua = false;
                Command::WriteAndVerify {
                    transfer,
                    byte_check: byte_check(c)?,
                }
            }
            WRITE_SAME_10 | WRITE_SAME_16 => write_same(c, size)?,
            UNMAP => {
                // ANCHOR: ANC_SUP is 0, no LBA can be anchored.
                if c[1] & 0x01 != 0 {
                    return Err(Sense::invalid_field_in_cdb(1, 0));
                }
                Command::Unmap {
                    param_len: be16(&c[7..9]),
                }
            }
            COMPARE_AND_WRITE => {
                if c[1] & 0xE0 != 0 {
                    return Err(Sense::invalid_field_in_cdb(1, 7));
                }
                Command::CompareAndWrite {
                    lba: be64(&c[2..10]),
                    blocks: c[13],
                    dpo: c[1] & 0x10 != 0,
                    fua: c[1] & 0x08 != 0,
                }
            }
            ORWRITE_16 => Command::OrWrite(rw_transfer(c, size)?),
            PRE_FETCH_10 => Command::PreFetch {
                size,
                lba: u64::from(be32(&c[2..6])),
                blocks: u32::from(be16(&c[7..9])),
                immed: c[1] & 0x02 != 0,
            },
            PRE_FETCH_16 => Command::PreFetch {
                size,
                lba: be64(&c[2..10]),
                blocks: be32(&c[10..14]),
                immed: c[1] & 0x02 != 0,
            },
            MODE_SELECT_6 | MODE_SELECT_10 => Command::ModeSelect {
                size,
                pf: c[1] & 0x10 != 0,
                sp: c[1] & 0x01 != 0,
                param_len: if op == MODE_SELECT_6 {
                    u16::from(c[4])
                } else {
                    be16(&c[7..9])
                },
            },
            START_STOP_UNIT => {
                // POWER CONDITION and its MODIFIER: no power conditions (no Power Condition mode page).
                if c[4] & 0xF0 != 0 {
                    return Err(Sense::invalid_field_in_cdb(4, 7));
                }
                if c[3] & 0x0F != 0 {
                    return Err(Sense::invalid_field_in_cdb(3, 3));
                }
                Command::StartStopUnit {
                    immed: c[1] & 0x01 != 0,
                    no_flush: c[4] & 0x04 != 0,
                    loej: c[4] & 0x02 != 0,
                    start: c[4] & 0x01 != 0,
                }
            }
            PREVENT_ALLOW_MEDIUM_REMOVAL => match c[4] & 0x03 {
                0 => Command::PreventAllowMediumRemoval { prevent: false },
                1 => Command::PreventAllowMediumRemoval { prevent: true },
                // 10b and 11b are for medium changers.
                _ => return Err(Sense::invalid_field_in_cdb(4, 1)),
            },
            SYNCHRONIZE_CACHE_10 => Command::SynchronizeCache {
                size,
                lba: u64::from(be32(&c[2..6])),
                blocks: u32::from(be16(&c[7..9])),
                immed: c[1] & 0x02 != 0,
            },
            SYNCHRONIZE_CACHE_16 => Command::SynchronizeCache {
                size,
                lba: be64(&c[2..10]),
                blocks: be32(&c[10..14]),
                immed: c[1] & 0x02 != 0,
            },
            PERSISTENT_RESERVE_IN => Command::PersistentReserveIn {
                action: match u16::from(c[1] & 0x1F) {
                    service_action::PR_IN_READ_KEYS => PrInAction::ReadKeys,
                    service_action::PR_IN_READ_RESERVATION => PrInAction::ReadReservation,
                    service_action::PR_IN_REPORT_CAPABILITIES => PrInAction::ReportCapabilities,
                    service_action::PR_IN_READ_FULL_STATUS => PrInAction::ReadFullStatus,
                    // SPC-4 6.15.1: a reserved service action is INVALID FIELD IN CDB (the command itself
                    // is implemented).
                    _ => return Err(Sense::invalid_field_in_cdb(1, 4)),
                },
                alloc_len: be16(&c[7..9]),
            },
            PERSISTENT_RESERVE_OUT => {
                let action = PrOutAction::from_code(c[1] & 0x1F)
                    .ok_or_else(|| Sense::invalid_field_in_cdb(1, 4))?;
                let param_len = be32(&c[5..9]);
                if param_len > MAX_PR_OUT_PARAMETER_LIST {
                    return Err(Sense::invalid_field_in_cdb(5, 7));
                }
                Command::PersistentReserveOut {
                    action,
                    scope: c[2] >> 4,
                    pr_type: c[2] & 0x0F,
                    param_len,
                }
            }
            RESERVE_6 | RELEASE_6 | RESERVE_10 | RELEASE_10 => {
                // Only reservations of the whole logical unit: no third party (3RDPTY, bit 4), no extents (bit 0,
                // obsolete), and in the 10-byte form no long third-party IDs (LONGID, bit 1).
                let refused = if size == CdbSize::Six { 0x11 } else { 0x13 };
                if let Some(bit) = [4u8, 1, 0]
                    .into_iter()
                    .find(|b| c[1] & refused & (1 << b) != 0)
                {
                    return Err(Sense::invalid_field_in_cdb(1, bit));
                }
                if op == RESERVE_6 || op == RESERVE_10 {
                    Command::Reserve(size)
                } else {
                    Command::Release(size)
                }
            }
            REPORT_LUNS => {
                let select_report = c[2];
                if select_report > 0x02 {
                    return Err(Sense::invalid_field_in_cdb(2, 7));
                }
                let alloc_len = be32(&c[6..10]);
                // SPC-4 6.27: an allocation length below 16 is an error (not just truncation).
                if alloc_len < 16 {
                    return Err(Sense::invalid_field_in_cdb(6, 7));
                }
                Command::ReportLuns {
                    select_report,
                    alloc_len,
                }
            }
            MAINTENANCE_IN => match u16::from(c[1] & 0x1F) {
                service_action::REPORT_SUPPORTED_OPCODES => {
                    let reporting_options = c[2] & 0x07;
                    if reporting_options > 3 {
                        return Err(Sense::invalid_field_in_cdb(2, 2));
                    }
                    Command::ReportSupportedOpcodes {
                        rctd: c[2] & 0x80 != 0,
                        reporting_options,
                        opcode: c[3],
                        service_action: be16(&c[4..6]),
                        alloc_len: be32(&c[6..10]),
                    }
                }
                _ => return Err(Sense::invalid_opcode()),
            },
            _ => return Err(Sense::invalid_opcode()),
        };
        Ok(cmd)
    }

    /// The block range of a READ / WRITE / VERIFY / WRITE AND VERIFY / ORWRITE.
    pub fn block_transfer(&self) -> Option<&BlockTransfer> {
        match self {
            Command::Read(t) | Command::Write(t) | Command::OrWrite(t) => Some(t),
            Command::Verify { transfer, .. } | Command::WriteAndVerify { transfer, .. } => {
                Some(transfer)
            }
            _ => None,
        }
    }
}

/// The CDB form of a known opcode; `None` for opcodes we do not implement.
pub fn cdb_size(op: u8) -> Option<CdbSize> {
    use opcode::*;
    Some(match op {
        TEST_UNIT_READY
        | REQUEST_SENSE
        | READ_6
        | WRITE_6
        | INQUIRY
        | MODE_SELECT_6
        | MODE_SENSE_6
        | START_STOP_UNIT
        | PREVENT_ALLOW_MEDIUM_REMOVAL
        | RESERVE_6
        | RELEASE_6 => CdbSize::Six,
        RESERVE_10 | RELEASE_10 | PERSISTENT_RESERVE_OUT => CdbSize::Ten,
        READ_CAPACITY_10
        | READ_10
        | WRITE_10
        | WRITE_AND_VERIFY_10
        | VERIFY_10
        | PRE_FETCH_10
        | SYNCHRONIZE_CACHE_10
        | WRITE_SAME_10
        | UNMAP
        | MODE_SELECT_10
        | MODE_SENSE_10
        | PERSISTENT_RESERVE_IN => CdbSize::Ten,
        READ_16 | COMPARE_AND_WRITE | WRITE_16 | ORWRITE_16 | WRITE_AND_VERIFY_16 | VERIFY_16
        | PRE_FETCH_16 | SYNCHRONIZE_CACHE_16 | WRITE_SAME_16 | SERVICE_ACTION_IN_16 => {
            CdbSize::Sixteen
        }
        REPORT_LUNS | MAINTENANCE_IN | READ_12 | WRITE_12 | WRITE_AND_VERIFY_12 | VERIFY_12 => {
            CdbSize::Twelve
        }
        _ => return None,
    })
}

/// Rejects NACA (we do not support ACA) and LINK (linked commands are obsolete) in the CONTROL byte.
fn check_control(c: &[u8]) -> Result<(), Sense> {
    let last = c.len() - 1;
    let control = c[last];
    for bit in [2u8, 0] {
        if control & (1 << bit) != 0 {
            return Err(Sense::invalid_field_in_cdb(last as u16, bit));
        }
    }
    Ok(())
}

/// LBA, length and flags of a 10/12/16-byte READ / WRITE / VERIFY / WRITE AND VERIFY CDB.
fn rw_transfer(c: &[u8], size: CdbSize) -> Result<BlockTransfer, Sense> {
    // RDPROTECT / WRPROTECT / VRPROTECT: no protection information on our medium.
    if c[1] & 0xE0 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, 7));
    }
    let (lba, blocks, group) = match size {
        CdbSize::Ten => (u64::from(be32(&c[2..6])), u32::from(be16(&c[7..9])), c[6]),
        CdbSize::Twelve => (u64::from(be32(&c[2..6])), be32(&c[6..10]), c[10]),
        _ => (be64(&c[2..10]), be32(&c[10..14]), c[14]),
    };
    Ok(BlockTransfer {
        size,
        lba,
        blocks,
        dpo: c[1] & 0x10 != 0,
        fua: c[1] & 0x08 != 0,
        group: group & 0x3F,
    })
}

/// BYTCHK (bits 2:1 of byte 1): 00b, 01b and 11b; 10b is reserved.
fn byte_check(c: &[u8]) -> Result<ByteCheck, Sense> {
    match (c[1] >> 1) & 0x03 {
        0 => Ok(ByteCheck::MediumOnly),
        1 => Ok(ByteCheck::Compare),
        3 => Ok(ByteCheck::SingleBlock),
        _ => Err(Sense::invalid_field_in_cdb(1, 2)),
    }
}

/// WRITE SAME (10) or (16).
fn write_same(c: &[u8], size: CdbSize) -> Result<Command, Sense> {
    // WRPROTECT: no protection information.
    if c[1] & 0xE0 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, 7));
    }
    // ANCHOR: ANC_SUP is 0 (and ANCHOR without UNMAP is invalid anyway).
    if c[1] & 0x10 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, 4));
    }
    // PBDATA / LBDATA (obsolete): the block is written as it came.
    for bit in [2u8, 1] {
        if c[1] & (1 << bit) != 0 {
            return Err(Sense::invalid_field_in_cdb(1, bit));
        }
    }
    let (lba, blocks, ndob) = match size {
        CdbSize::Ten => (u64::from(be32(&c[2..6])), u32::from(be16(&c[7..9])), false),
        _ => (be64(&c[2..10]), be32(&c[10..14]), c[1] & 0x01 != 0),
    };
    Ok(Command::WriteSame {
        size,
        lba,
        blocks,
        unmap: c[1] & 0x08 != 0,
        ndob,
    })
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be24(b: &[u8]) -> u32 {
    u32::from_be_bytes([0, b[0], b[1], b[2]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sense::SenseKey;
    use proptest::prelude::*;

    fn invalid_field(s: Sense) -> (u16, u8) {
        assert_eq!(
            (s.key, s.asc, s.ascq),
            (SenseKey::IllegalRequest, 0x24, 0x00),
            "{s:?}"
        );
        let fp = s.field_pointer.expect("field pointer");
        assert!(fp.in_cdb);
        (fp.byte, fp.bit)
    }

    #[test]
    fn empty_and_unknown_opcodes_are_invalid_opcode() {
        assert_eq!(Command::decode(&[]), Err(Sense::invalid_opcode()));
        for op in [0x04u8, 0x7F, 0x9C, 0xA4, 0xC0, 0xFF] {
            assert_eq!(
                Command::decode(&[op; 16]),
                Err(Sense::invalid_opcode()),
                "opcode {op:#x}"
            );
        }
    }

    #[test]
    fn short_cdb_is_rejected() {
        let e = Command::decode(&[opcode::READ_16, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(invalid_field(e), (0, 7));
        assert!(Command::decode(&[opcode::TEST_UNIT_READY, 0, 0, 0, 0]).is_err());
        assert_eq!(Command::decode(&[0u8; 6]), Ok(Command::TestUnitReady));
    }

    #[test]
    fn trailing_bytes_after_control_are_ignored() {
        let mut cdb = [0u8; 16];
        cdb[6] = 0xFF; // beyond TEST UNIT READY's CONTROL byte
        assert_eq!(Command::decode(&cdb), Ok(Command::TestUnitReady));
    }

    #[test]
    fn naca_and_link_are_rejected_at_the_control_byte() {
        let mut tur = [0u8; 6];
        tur[5] = 0x04;
        assert_eq!(invalid_field(Command::decode(&tur).unwrap_err()), (5, 2));
        tur[5] = 0x01;
        assert_eq!(invalid_field(Command::decode(&tur).unwrap_err()), (5, 0));
        // Vendor-specific bits are fine.
        tur[5] = 0xC0;
        assert!(Command::decode(&tur).is_ok());

        let mut r16 = [0u8; 16];
        r16[0] = opcode::READ_16;
        r16[15] = 0x04;
        assert_eq!(invalid_field(Command::decode(&r16).unwrap_err()), (15, 2));
    }

    #[test]
    fn inquiry_fields() {
        let c = Command::decode(&[0x12, 0x01, 0x83, 0x01, 0x02, 0x00]).unwrap();
        assert_eq!(
            c,
            Command::Inquiry {
                evpd: true,
                page_code: 0x83,
                alloc_len: 0x0102
            }
        );
        let e = Command::decode(&[0x12, 0x00, 0x01, 0x00, 0xFF, 0x00]).unwrap_err();
        assert_eq!(invalid_field(e), (2, 7));
        let e = Command::decode(&[0x12, 0x02, 0x00, 0x00, 0xFF, 0x00]).unwrap_err();
        assert_eq!(invalid_field(e), (1, 1));
    }

    #[test]
    fn request_sense_fields() {
        let c = Command::decode(&[0x03, 0x01, 0, 0, 252, 0]).unwrap();
        assert_eq!(
            c,
            Command::RequestSense {
                descriptor_format: true,
                alloc_len: 252
            }
        );
    }

    #[test]
    fn mode_sense_fields() {
        let c = Command::decode(&[0x1A, 0x08, 0x7F, 0xFF, 0xC0, 0]).unwrap();
        assert_eq!(
            c,
            Command::ModeSense {
                size: CdbSize::Six,
                dbd: true,
                llbaa: false,
                page_control: PageControl::Changeable,
                page_code: 0x3F,
                subpage_code: 0xFF,
                alloc_len: 0xC0,
            }
        );
        let c = Command::decode(&[0x5A, 0x10, 0x88, 0x00, 0, 0, 0, 0x12, 0x34, 0]).unwrap();
        assert_eq!(
            c,
            Command::ModeSense {
                size: CdbSize::Ten,
                dbd: false,
                llbaa: true,
                page_control: PageControl::Default,
                page_code: 0x08,
                subpage_code: 0,
                alloc_len: 0x1234,
            }
        );
        // LLBAA does not exist in the 6-byte form.
        let c = Command::decode(&[0x1A, 0x10, 0xC8, 0, 4, 0]).unwrap();
        assert!(matches!(
            c,
            Command::ModeSense {
                llbaa: false,
                page_control: PageControl::Saved,
                ..
            }
        ));
    }

    #[test]
    fn read_capacity_pmi_rule() {
        assert_eq!(
            Command::decode(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Ok(Command::ReadCapacity10)
        );
        let e = Command::decode(&[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(invalid_field(e), (2, 7));
        assert_eq!(
            Command::decode(&[0x25, 0, 0, 0, 0, 1, 0, 0, 1, 0]),
            Ok(Command::ReadCapacity10)
        );

        let mut rc16 = [0u8; 16];
        rc16[0] = 0x9E;
        rc16[1] = 0x10;
        rc16[13] = 32;
        assert_eq!(
            Command::decode(&rc16),
            Ok(Command::ReadCapacity16 { alloc_len: 32 })
        );
        rc16[9] = 1;
        assert_eq!(invalid_field(Command::decode(&rc16).unwrap_err()), (2, 7));
        rc16[14] = 1;
        assert!(Command::decode(&rc16).is_ok());
    }

    #[test]
    fn unknown_service_actions_are_invalid_opcode() {
        let mut sai = [0u8; 16];
        sai[0] = 0x9E;
        sai[1] = 0x13;
        assert_eq!(Command::decode(&sai), Err(Sense::invalid_opcode()));
        let mut mi = [0u8; 12];
        mi[0] = 0xA3;
        mi[1] = 0x0A; // REPORT TARGET PORT GROUPS
        assert_eq!(Command::decode(&mi), Err(Sense::invalid_opcode()));
    }

    #[test]
    fn read6_write6_fields() {
        let c = Command::decode(&[0x08, 0xFF, 0x12, 0x34, 0, 0]).unwrap();
        let Command::Read(t) = c else { panic!("{c:?}") };
        assert_eq!((t.lba, t.blocks, t.size), (0x1F_1234, 256, CdbSize::Six));
        let c = Command::decode(&[0x0A, 0, 0, 7, 3, 0]).unwrap();
        let Command::Write(t) = c else {
            panic!("{c:?}")
        };
        assert_eq!((t.lba, t.blocks), (7, 3));
    }

    #[test]
    fn read12_write12_fields() {
        let c = Command::decode(&[0xA8, 0x18, 0, 0, 1, 0, 0, 1, 0, 0, 0x05, 0]).unwrap();
        let Command::Read(t) = c else { panic!("{c:?}") };
        assert_eq!(
            (t.lba, t.blocks, t.dpo, t.fua, t.group),
            (256, 65536, true, true, 5)
        );
        let c = Command::decode(&[0xAA, 0, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0]).unwrap();
        assert!(matches!(
            c,
            Command::Write(BlockTransfer {
                lba: 9,
                blocks: 1,
                size: CdbSize::Twelve,
                ..
            })
        ));
    }

    #[test]
    fn protect_fields_are_rejected() {
        for op in [
            0x28u8, 0x2A, 0x2E, 0x2F, 0xA8, 0xAA, 0xAE, 0xAF, 0x88, 0x8A, 0x8E, 0x8F,
        ] {
            for protect in 1u8..8 {
                let mut cdb = [0u8; 16];
                cdb[0] = op;
                cdb[1] = protect << 5;
                assert_eq!(
                    invalid_field(Command::decode(&cdb).unwrap_err()),
                    (1, 7),
                    "op {op:#x}"
                );
            }
        }
    }

    #[test]
    fn verify_bytchk() {
        let mut v = [0u8; 10];
        v[0] = 0x2F;
        v[1] = 0x12;
        v[8] = 4;
        let c = Command::decode(&v).unwrap();
        let Command::Verify {
            transfer,
            byte_check,
        } = c
        else {
            panic!("{c:?}")
        };
        assert_eq!(byte_check, ByteCheck::Compare);
        assert!(transfer.dpo);
        assert_eq!(transfer.blocks, 4);
        v[1] = 2 << 1;
        assert_eq!(invalid_field(Command::decode(&v).unwrap_err()), (1, 2));
        v[1] = 3 << 1;
        assert!(matches!(
            Command::decode(&v),
            Ok(Command::Verify {
                byte_check: ByteCheck::SingleBlock,
                ..
            })
        ));
        v[0] = 0x2E;
        v[1] = 0x08; // bit 3 is reserved in WRITE AND VERIFY: ignored, never a FUA
        let c = Command::decode(&v).unwrap();
        assert!(matches!(
            c,
            Command::WriteAndVerify {
                byte_check: ByteCheck::MediumOnly,
                transfer: BlockTransfer { fua: false, .. }
            }
        ));
    }

    #[test]
    fn synchronize_cache_fields() {
        let c = Command::decode(&[0x35, 0x02, 0, 0, 0, 8, 0, 0, 16, 0]).unwrap();
        assert_eq!(
            c,
            Command::SynchronizeCache {
                size: CdbSize::Ten,
                lba: 8,
                blocks: 16,
                immed: true
            }
        );
        let mut s16 = [0u8; 16];
        s16[0] = 0x91;
        s16[2] = 1;
        s16[13] = 2;
        let c = Command::decode(&s16).unwrap();
        assert_eq!(
            c,
            Command::SynchronizeCache {
                size: CdbSize::Sixteen,
                lba: 1 << 56,
                blocks: 2,
                immed: false
            }
        );
    }

    #[test]
    fn report_luns_fields() {
        let mut rl = [0u8; 12];
        rl[0] = 0xA0;
        rl[9] = 16;
        assert_eq!(
            Command::decode(&rl),
            Ok(Command::ReportLuns {
                select_report: 0,
                alloc_len: 16
            })
        );
        rl[9] = 15;
        assert_eq!(invalid_field(Command::decode(&rl).unwrap_err()), (6, 7));
        rl[9] = 16;
        rl[2] = 3;
        assert_eq!(invalid_field(Command::decode(&rl).unwrap_err()), (2, 7));
    }

    #[test]
    fn report_supported_opcodes_fields() {
        let cdb = [0xA3, 0x0C, 0x82, 0x28, 0x00, 0x05, 0, 0, 0x10, 0, 0, 0];
        assert_eq!(
            Command::decode(&cdb),
            Ok(Command::ReportSupportedOpcodes {
                rctd: true,
                reporting_options: 2,
                opcode: 0x28,
                service_action: 5,
                alloc_len: 0x1000,
            })
        );
        let bad = [0xA3, 0x0C, 0x04, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
        assert_eq!(invalid_field(Command::decode(&bad).unwrap_err()), (2, 2));
    }

    #[test]
    fn persistent_reserve_in_fields() {
        let mut c = [0u8; 10];
        c[0] = 0x5E;
        c[7] = 0x12;
        c[8] = 0x34;
        for (sa, action) in [
            (0u8, PrInAction::ReadKeys),
            (1, PrInAction::ReadReservation),
            (2, PrInAction::ReportCapabilities),
            (3, PrInAction::ReadFullStatus),
        ] {
            // Reserved bits 7..5 of byte 1 and reserved bytes 2..6 are ignored.
            c[1] = 0xE0 | sa;
            c[4] = 0xFF;
            assert_eq!(
                Command::decode(&c),
                Ok(Command::PersistentReserveIn {
                    action,
                    alloc_len: 0x1234
                })
            );
        }
        for sa in 4u8..=0x1F {
            c[1] = sa;
            assert_eq!(invalid_field(Command::decode(&c).unwrap_err()), (1, 4));
        }
        c[1] = 0;
        c[9] = 0x04;
        assert_eq!(invalid_field(Command::decode(&c).unwrap_err()), (9, 2));
        c[9] = 0x01;
        assert_eq!(invalid_field(Command::decode(&c).unwrap_err()), (9, 0));
    }

    #[test]
    fn persistent_reserve_out_fields() {
        let mut c = [0u8; 10];
        c[0] = 0x5F;
        c[2] = 0x13; // SCOPE 1, TYPE 3: decoded as they are, checked by the service actions
        c[8] = 24;
        for sa in 0u8..8 {
            c[1] = 0xE0 | sa;
            assert_eq!(
                Command::decode(&c),
                Ok(Command::PersistentReserveOut {
                    action: PrOutAction::from_code(sa).unwrap(),
                    scope: 1,
                    pr_type: 3,
                    param_len: 24,
                })
            );
        }
        for sa in 8u8..=0x1F {
            c[1] = sa;
            assert_eq!(invalid_field(Command::decode(&c).unwrap_err()), (1, 4));
        }
        c[1] = 0;
        c[5..9].copy_from_slice(&(MAX_PR_OUT_PARAMETER_LIST + 1).to_be_bytes());
        assert_eq!(invalid_field(Command::decode(&c).unwrap_err()), (5, 7));
        c[5..9].copy_from_slice(&MAX_PR_OUT_PARAMETER_LIST.to_be_bytes());
        assert!(Command::decode(&c).is_ok());
        c[9] = 0x04;
        assert_eq!(invalid_field(Command::decode(&c).unwrap_err()), (9, 2));
    }

    #[test]
    fn reserve_release_fields() {
        for (op, size, reserve) in [
            (0x16u8, CdbSize::Six, true),
            (0x17, CdbSize::Six, false),
            (0x56, CdbSize::Ten, true),
            (0x57, CdbSize::Ten, false),
        ] {
            let mut c = [0u8; 10];
            c[0] = op;
            c[1] = 0xE0; // obsolete LUN field: ignored
            c[2] = 0x55; // reservation identification / obsolete: ignored
            let want = if reserve {
                Command::Reserve(size)
            } else {
                Command::Release(size)
            };
            assert_eq!(Command::decode(&c[..size.bytes()]), Ok(want));
            c[1] = 0x10; // 3RDPTY
            assert_eq!(invalid_field(Command::decode(&c).unwrap_err()), (1, 4));
            c[1] = 0x01; // EXTENT (obsolete)
            assert_eq!(invalid_field(Command::decode(&c).unwrap_err()), (1, 0));
            c[1] = 0x02; // LONGID in the 10-byte form; obsolete and ignored in the 6-byte form
            if size == CdbSize::Ten {
                assert_eq!(invalid_field(Command::decode(&c).unwrap_err()), (1, 1));
            } else {
                assert_eq!(Command::decode(&c[..6]), Ok(want));
            }
        }
    }

    #[test]
    fn write_same_fields() {
        let mut w = [0u8; 10];
        w[0] = opcode::WRITE_SAME_10;
        w[1] = 0x08;
        w[2..6].copy_from_slice(&7u32.to_be_bytes());
        w[7..9].copy_from_slice(&300u16.to_be_bytes());
        assert_eq!(
            Command::decode(&w),
            Ok(Command::WriteSame {
                size: CdbSize::Ten,
                lba: 7,
                blocks: 300,
                unmap: true,
                ndob: false
            })
        );
        // Bit 0 of WRITE SAME (10) is not NDOB.
        w[1] = 0x01;
        assert!(matches!(
            Command::decode(&w),
            Ok(Command::WriteSame {
                ndob: false,
                unmap: false,
                ..
            })
        ));
        for (flags, byte, bit) in [
            (0x20u8, 1u16, 7u8),
            (0x10, 1, 4),
            (0x04, 1, 2),
            (0x02, 1, 1),
        ] {
            w[1] = flags;
            assert_eq!(invalid_field(Command::decode(&w).unwrap_err()), (byte, bit));
        }
        let mut w16 = [0u8; 16];
        w16[0] = opcode::WRITE_SAME_16;
        w16[1] = 0x09;
        w16[2..10].copy_from_slice(&(1u64 << 40).to_be_bytes());
        w16[10..14].copy_from_slice(&0x0102_0304u32.to_be_bytes());
        assert_eq!(
            Command::decode(&w16),
            Ok(Command::WriteSame {
                size: CdbSize::Sixteen,
                lba: 1 << 40,
                blocks: 0x0102_0304,
                unmap: true,
                ndob: true
            })
        );
        w16[1] = 0x18;
        assert_eq!(invalid_field(Command::decode(&w16).unwrap_err()), (1, 4));
    }

    #[test]
    fn unmap_and_get_lba_status_fields() {
        let mut u = [0u8; 10];
        u[0] = opcode::UNMAP;
        u[6] = 0x1F; // group: ignored
        u[7] = 1;
        u[8] = 8;
        assert_eq!(Command::decode(&u), Ok(Command::Unmap { param_len: 264 }));
        u[1] = 0x01;
        assert_eq!(invalid_field(Command::decode(&u).unwrap_err()), (1, 0));

        let mut g = [0u8; 16];
        g[0] = opcode::SERVICE_ACTION_IN_16;
        g[1] = 0x12;
        g[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
        g[10..14].copy_from_slice(&24u32.to_be_bytes());
        assert_eq!(
            Command::decode(&g),
            Ok(Command::GetLbaStatus {
                lba: u64::MAX,
                alloc_len: 24
            })
        );
        g[14] = 0x02;
        assert_eq!(invalid_field(Command::decode(&g).unwrap_err()), (14, 1));
    }

    #[test]
    fn compare_and_write_and_orwrite_fields() {
        let mut c = [0u8; 16];
        c[0] = opcode::COMPARE_AND_WRITE;
        c[1] = 0x1A; // DPO, FUA, FUA_NV
        c[2..10].copy_from_slice(&99u64.to_be_bytes());
        c[13] = 4;
        c[14] = 0x05;
        assert_eq!(
            Command::decode(&c),
            Ok(Command::CompareAndWrite {
                lba: 99,
                blocks: 4,
                dpo: true,
                fua: true
            })
        );
        c[1] = 0x40;
        assert_eq!(invalid_field(Command::decode(&c).unwrap_err()), (1, 7));

        let mut o = [0u8; 16];
        o[0] = opcode::ORWRITE_16;
        o[1] = 0x08;
        o[9] = 5;
        o[13] = 2;
        let Ok(Command::OrWrite(t)) = Command::decode(&o) else {
            panic!("{:?}", Command::decode(&o))
        };
        assert_eq!(
            (t.lba, t.blocks, t.fua, t.size),
            (5, 2, true, CdbSize::Sixteen)
        );
        o[1] = 0xE0;
        assert_eq!(invalid_field(Command::decode(&o).unwrap_err()), (1, 7));
    }

    #[test]
    fn pre_fetch_fields() {
        let p10 = [opcode::PRE_FETCH_10, 0x02, 0, 0, 1, 0, 0x03, 0, 9, 0];
        assert_eq!(
            Command::decode(&p10),
            Ok(Command::PreFetch {
                size: CdbSize::Ten,
                lba: 256,
                blocks: 9,
                immed: true
            })
        );
        let mut p16 = [0u8; 16];
        p16[0] = opcode::PRE_FETCH_16;
        p16[2] = 0x80;
        p16[13] = 1;
        assert_eq!(
            Command::decode(&p16),
            Ok(Command::PreFetch {
                size: CdbSize::Sixteen,
                lba: 1 << 63,
                blocks: 1,
                immed: false
            })
        );
    }

    #[test]
    fn mode_select_fields() {
        assert_eq!(
            Command::decode(&[opcode::MODE_SELECT_6, 0x11, 0, 0, 24, 0]),
            Ok(Command::ModeSelect {
                size: CdbSize::Six,
                pf: true,
                sp: true,
                param_len: 24
            })
        );
        assert_eq!(
            Command::decode(&[opcode::MODE_SELECT_10, 0x10, 0, 0, 0, 0, 0, 1, 2, 0]),
            Ok(Command::ModeSelect {
                size: CdbSize::Ten,
                pf: true,
                sp: false,
                param_len: 0x0102
            })
        );
    }

    #[test]
    fn start_stop_unit_and_prevent_allow_fields() {
        assert_eq!(
            Command::decode(&[opcode::START_STOP_UNIT, 0x01, 0, 0, 0x07, 0]),
            Ok(Command::StartStopUnit {
                immed: true,
                no_flush: true,
                loej: true,
                start: true
            })
        );
        let e = Command::decode(&[opcode::START_STOP_UNIT, 0, 0, 0, 0x10, 0]).unwrap_err();
        assert_eq!(invalid_field(e), (4, 7));
        let e = Command::decode(&[opcode::START_STOP_UNIT, 0, 0, 0x01, 0x00, 0]).unwrap_err();
        assert_eq!(invalid_field(e), (3, 3));
        for (v, prevent) in [(0u8, false), (1, true)] {
            assert_eq!(
                Command::decode(&[opcode::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, v, 0]),
                Ok(Command::PreventAllowMediumRemoval { prevent })
            );
        }
        for v in [2u8, 3] {
            let e = Command::decode(&[opcode::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, v, 0])
                .unwrap_err();
            assert_eq!(invalid_field(e), (4, 1));
        }
    }

    /// Reference extraction of READ/WRITE (10) and (16) fields, written from the SBC-3 tables.
    fn reference_rw(cdb: &[u8]) -> Option<(bool, u64, u32, bool, bool)> {
        let is_write = match cdb[0] {
            0x28 | 0x88 => false,
            0x2A | 0x8A => true,
            _ => return None,
        };
        if cdb[1] >> 5 != 0 {
            return None;
        }
        let ctl = if cdb[0] & 0x80 == 0 { cdb[9] } else { cdb[15] };
        if ctl & 0x05 != 0 {
            return None;
        }
        let (lba, len) = if cdb[0] & 0x80 == 0 {
            (
                u64::from(u32::from_be_bytes(cdb[2..6].try_into().unwrap())),
                u32::from(u16::from_be_bytes(cdb[7..9].try_into().unwrap())),
            )
        } else {
            (
                u64::from_be_bytes(cdb[2..10].try_into().unwrap()),
                u32::from_be_bytes(cdb[10..14].try_into().unwrap()),
            )
        };
        Some((is_write, lba, len, cdb[1] & 0x10 != 0, cdb[1] & 0x08 != 0))
    }

    proptest! {
        #[test]
        fn decode_never_panics(cdb in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Command::decode(&cdb);
        }

        #[test]
        fn rw_10_16_agree_with_reference(
            op in prop::sample::select(vec![0x28u8, 0x2A, 0x88, 0x8A]),
            rest in proptest::collection::vec(any::<u8>(), 15),
        ) {
            let mut cdb = vec![op];
            cdb.extend_from_slice(&rest);
            let expected = reference_rw(&cdb);
            match (Command::decode(&cdb), expected) {
                (Ok(Command::Read(t)), Some((false, lba, len, dpo, fua)))
                | (Ok(Command::Write(t)), Some((true, lba, len, dpo, fua))) => {
                    prop_assert_eq!((t.lba, t.blocks, t.dpo, t.fua), (lba, len, dpo, fua));
                }
                (Err(_), None) => {}
                (got, want) => prop_assert!(false, "decode {:?} but reference {:?}", got, want),
            }
        }

        #[test]
        fn rw_10_16_roundtrip(
            lba in any::<u64>(), blocks in any::<u32>(), dpo in any::<bool>(), fua in any::<bool>(),
            sixteen in any::<bool>(), write in any::<bool>(),
        ) {
            let flags = (u8::from(dpo) << 4) | (u8::from(fua) << 3);
            let cdb: Vec<u8> = if sixteen {
                let mut c = vec![if write { 0x8A } else { 0x88 }, flags];
                c.extend_from_slice(&lba.to_be_bytes());
                c.extend_from_slice(&blocks.to_be_bytes());
                c.extend_from_slice(&[0, 0]);
                c
            } else {
                let mut c = vec![if write { 0x2A } else { 0x28 }, flags];
                c.extend_from_slice(&(lba as u32).to_be_bytes());
                c.push(0);
                c.extend_from_slice(&(blocks as u16).to_be_bytes());
                c.push(0);
                c
            };
            let cmd = Command::decode(&cdb).unwrap();
            let t = *cmd.block_transfer().unwrap();
            prop_assert_eq!(matches!(cmd, Command::Write(_)), write);
            let (want_lba, want_blocks) = if sixteen {
                (lba, blocks)
            } else {
                (u64::from(lba as u32), u32::from(blocks as u16))
            };
            prop_assert_eq!((t.lba, t.blocks, t.dpo, t.fua), (want_lba, want_blocks, dpo, fua));
        }
    }
}
