//! [`LogicalUnit`]: runs decoded commands against a [`BlockDevice`] and keeps the per-nexus unit attention state.

mod inquiry;
mod mode;
mod pr;
mod reports;
#[cfg(test)]
mod tests;

pub use pr::reservations_after_power_loss;
pub use reports::{decode_lun, encode_lun};

use crate::cdb::{opcode, BlockTransfer, ByteCheck, Command};
use crate::sense::Sense;
use crate::BlockDevice;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// Logical block size in bytes.
pub const BLOCK_SIZE: u32 = 512;
/// Largest READ / WRITE / VERIFY the logical unit accepts, in blocks (8 MiB); more is INVALID FIELD IN CDB.
pub const MAX_TRANSFER_BLOCKS: u32 = (8 << 20) / BLOCK_SIZE;
/// Transfers should be multiples of this many blocks (4 KiB, the physical block).
pub const OPTIMAL_TRANSFER_GRANULARITY_BLOCKS: u16 = 8;
/// Preferred transfer size in blocks (1 MiB).
pub const OPTIMAL_TRANSFER_BLOCKS: u32 = (1 << 20) / BLOCK_SIZE;
/// log2(logical blocks per physical block): 4 KiB physical blocks.
const PHYSICAL_BLOCK_EXPONENT: u8 = 3;
/// VERIFY reads the medium in pieces of this many bytes.
const VERIFY_CHUNK_BYTES: usize = 1 << 20;
/// Pending unit attentions kept per nexus; older ones are dropped beyond this.
const MAX_PENDING_UNIT_ATTENTIONS: usize = 8;

/// One I_T nexus (initiator port x target port).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// Identifier unique among the target's live nexuses; the logical unit keys its state by it.
    pub id: u64,
    /// iSCSI initiator name.
    pub initiator_name: String,
    /// Initiator session identifier.
    pub isid: [u8; 6],
    /// Target portal group tag of the target port.
    pub target_portal_group: u16,
}

/// What INQUIRY reports about a logical unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunIdentity {
    /// T10 vendor identification (8 characters, space padded on the wire), e.g. "TWINSAN".
    pub vendor: String,
    /// Product identification (16 characters).
    pub product: String,
    /// Product revision level (4 characters).
    pub revision: String,
    /// Unit serial number (VPD 80h).
    pub serial: String,
    /// NAA IEEE Registered Extended designator (VPD 83h); the high nibble is forced to 6.
    pub naa: [u8; 16],
    /// iSCSI target name, for the SCSI name string designators (VPD 83h).
    pub target_name: String,
    /// Relative target port identifier (VPD 83h).
    pub relative_port: u16,
    /// Target port group (VPD 83h).
    pub target_portal_group: u16,
}

/// One command as the engine received it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The nexus the command came on.
    pub nexus: &'a Nexus,
    /// The CDB, 6..=16 bytes or more (the BHS CDB field is 16 bytes; longer ones come via AHS).
    pub cdb: &'a [u8],
    /// The Data-Out the initiator sent, exactly as it arrived.
    pub data_out: &'a [u8],
    /// Every LUN of the target, for REPORT LUNS.
    pub luns: &'a [u64],
}

/// SCSI status (SAM-5 table 34).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TaskStatus {
    /// The command completed.
    Good = 0x00,
    /// The command failed; sense data says why.
    CheckCondition = 0x02,
    /// A condition was met (PRE-FETCH).
    ConditionMet = 0x04,
    /// The logical unit is busy.
    Busy = 0x08,
    /// Another nexus holds a reservation.
    ReservationConflict = 0x18,
    /// The task set is full.
    TaskSetFull = 0x28,
    /// The command was aborted by another nexus.
    TaskAborted = 0x40,
}

/// The result of one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// SCSI status.
    pub status: TaskStatus,
    /// Data-In for the initiator, already cut to the allocation length.
    pub data_in: Vec<u8>,
    /// Sense data for a CHECK CONDITION (send it with [`Sense::to_bytes`]).
    pub sense: Option<Sense>,
}

impl Outcome {
    /// GOOD status with `data_in`.
    pub fn good(data_in: Vec<u8>) -> Self {
        Self {
            status: TaskStatus::Good,
            data_in,
            sense: None,
        }
    }

    /// CHECK CONDITION with `sense` and no data.
    pub fn check_condition(sense: Sense) -> Self {
        Self {
            status: TaskStatus::CheckCondition,
            data_in: Vec::new(),
            sense: Some(sense),
        }
    }
}

impl From<Sense> for Outcome {
    fn from(sense: Sense) -> Self {
        Outcome::check_condition(sense)
    }
}

/// What the logical unit remembers about one nexus.
#[derive(Debug, Default)]
struct NexusState {
    unit_attentions: VecDeque<Sense>,
    /// The nexus itself, for unit attentions addressed by initiator and target port (reservations).
    nexus: Option<Nexus>,
}

impl NexusState {
    fn of(nexus: &Nexus) -> Self {
        Self {
            unit_attentions: VecDeque::new(),
            nexus: Some(nexus.clone()),
        }
    }

    /// Queues a unit attention unless the same one is pending; the oldest goes beyond the bound.
    fn push_unit_attention(&mut self, sense: Sense) {
        if self.unit_attentions.contains(&sense) {
            return;
        }
        if self.unit_attentions.len() >= MAX_PENDING_UNIT_ATTENTIONS {
            self.unit_attentions.pop_front();
        }
        self.unit_attentions.push_back(sense);
    }
}

/// A SCSI block device (SBC-3) over a [`BlockDevice`]. Commands from many threads may run at once: the shared
/// mutable state (per-nexus unit attentions, reservations) is behind mutexes that are never held across I/O,
/// except the one that serializes changes of the persistent reservation state while it is stored.
pub struct LogicalUnit {
    dev: Arc<dyn BlockDevice>,
    identity: LunIdentity,
    read_only: bool,
    nexuses: Mutex<HashMap<u64, NexusState>>,
    reservations: pr::Reservations,
}

impl std::fmt::Debug for LogicalUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalUnit")
            .field("identity", &self.identity)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl LogicalUnit {
    /// A logical unit over `dev`; with `read_only` every write fails with DATA PROTECT.
    pub fn new(dev: Arc<dyn BlockDevice>, identity: LunIdentity, read_only: bool) -> Self {
        Self {
            reservations: pr::Reservations::new(dev.as_ref()),
            dev,
            identity,
            read_only,
            nexuses: Mutex::new(HashMap::new()),
        }
    }

    /// Logical block size in bytes (512).
    pub fn block_size(&self) -> u32 {
        BLOCK_SIZE
    }

    /// Capacity in logical blocks (the device size rounded down to whole blocks).
    pub fn capacity_blocks(&self) -> u64 {
        self.dev.size_bytes() / u64::from(BLOCK_SIZE)
    }

    /// Whether writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// What INQUIRY reports.
    pub fn identity(&self) -> &LunIdentity {
        &self.identity
    }

    /// Decodes and runs one command. Blocking: reads and writes go through the [`BlockDevice`].
    ///
    /// A pending unit attention for the nexus fails any command but INQUIRY, REPORT LUNS and REQUEST SENSE
    /// (SPC-4 5.14) and is cleared by being reported. A reservation that does not let the nexus run the command
    /// answers RESERVATION CONFLICT (SPC-4 5.13).
    pub fn execute(&self, req: &Request<'_>) -> Outcome {
        match self.dispatch(req) {
            Ok(data_in) => Outcome::good(data_in),
            Err(outcome) => outcome,
        }
    }

    /// True if [`submit`](Self::submit) runs this CDB without blocking: a WRITE to a device that
    /// [submits writes](BlockDevice::submits_writes).
    pub fn submits(&self, cdb: &[u8]) -> bool {
        self.dev.submits_writes()
            && self.reservations.is_loaded()
            && matches!(Command::decode(cdb), Ok(Command::Write(_)))
    }

    /// Runs a command [`submits`](Self::submits) accepted, without waiting for the device: `done` receives the
    /// outcome, now or from the thread that completes the write. Anything else is run by
    /// [`execute`](Self::execute) and its outcome passed on.
    pub fn submit(&self, req: &Request<'_>, done: Box<dyn FnOnce(Outcome) + Send>) {
        let t = match Command::decode(req.cdb) {
            Ok(Command::Write(t)) if self.dev.submits_writes() => t,
            _ => return done(self.execute(req)),
        };
        if let Some(ua) = self.take_unit_attention(req.nexus) {
            return done(Outcome::check_condition(ua));
        }
        if let Err(outcome) = self.check_reservations(req) {
            return done(outcome);
        }
        if let Err(sense) = self.check_transfer(&t, true) {
            return done(Outcome::check_condition(sense));
        }
        let data = write_data(&t, req.data_out);
        if data.is_empty() {
            return done(Outcome::good(Vec::new()));
        }
        self.dev.submit_write(
            data.to_vec(),
            byte_offset(t.lba),
            t.fua,
            Box::new(move |result| {
                done(match result {
                    Ok(()) => Outcome::good(Vec::new()),
                    Err(_) => Outcome::check_condition(Sense::write_error()),
                })
            }),
        );
    }

    /// Bytes of Data-Out the CDB asks for (0 for commands that send none), so the engine knows how much to
    /// solicit. `Err` for an unknown opcode, a bad field or a transfer above [`MAX_TRANSFER_BLOCKS`]: the engine
    /// should then take no Data-Out and call [`execute`](Self::execute) with an empty `data_out`, which
    /// reports the same error (or a pending unit attention before it).
    pub fn data_out_len(&self, cdb: &[u8]) -> Result<u32, Sense> {
        let cmd = Command::decode(cdb)?;
        Ok(match cmd {
            Command::Write(t) | Command::WriteAndVerify { transfer: t, .. } => transfer_bytes(&t)?,
            Command::Verify {
                transfer,
                byte_check: ByteCheck::Compare,
            } => transfer_bytes(&transfer)?,
            Command::PersistentReserveOut { param_len, .. } => param_len,
            _ => 0,
        })
    }

    /// Bytes of Data-In the CDB asks for (allocation length or transfer length), for residual computation.
    /// The Data-In of [`execute`](Self::execute) is never longer.
    pub fn data_in_len(&self, cdb: &[u8]) -> Result<u32, Sense> {
        let cmd = Command::decode(cdb)?;
        Ok(match cmd {
            Command::Read(t) => transfer_bytes(&t)?,
            Command::RequestSense { alloc_len, .. } => u32::from(alloc_len),
            Command::Inquiry { alloc_len, .. } | Command::ModeSense { alloc_len, .. } => {
                u32::from(alloc_len)
            }
            Command::PersistentReserveIn { alloc_len, .. } => u32::from(alloc_len),
            Command::ReadCapacity10 => 8,
            Command::ReadCapacity16 { alloc_len }
            | Command::ReportLuns { alloc_len, .. }
            | Command::ReportSupportedOpcodes { alloc_len, .. } => alloc_len,
            _ => 0,
        })
    }

    /// Whether [`execute`](Self::execute) of this CDB finishes in microseconds: commands that touch no
    /// storage, and reads and writes without FUA within the device's
    /// [`quick_io_limit`](BlockDevice::quick_io_limit). The engine runs those inline and the rest on a
    /// blocking pool; either way the outcome is the same.
    pub fn is_quick(&self, cdb: &[u8]) -> bool {
        let limit = self.dev.quick_io_limit() as u64;
        let write_limit = self.dev.quick_write_limit() as u64;
        if !self.reservations.is_loaded() {
            // The first command loads the reservation state from the device.
            return false;
        }
        match Command::decode(cdb) {
            Ok(Command::Read(t)) => u64::from(t.blocks) * u64::from(BLOCK_SIZE) <= limit,
            Ok(Command::Write(t)) => {
                !t.fua && u64::from(t.blocks) * u64::from(BLOCK_SIZE) <= write_limit
            }
            Ok(
                Command::SynchronizeCache { .. }
                | Command::Verify { .. }
                | Command::WriteAndVerify { .. },
            ) => false,
            // They may store the reservation state, and wait for any store in progress.
            Ok(
                Command::PersistentReserveOut { .. } | Command::Reserve(_) | Command::Release(_),
            ) => false,
            // Everything else answers from memory, as do decoding errors.
            Ok(_) | Err(_) => true,
        }
    }

    /// A LOGICAL UNIT RESET or target reset done by `by`: every other known nexus gets a unit attention
    /// (29h/03h BUS DEVICE RESET FUNCTION OCCURRED), and an SPC-2 reservation is released.
    pub fn reset(&self, by: &Nexus) {
        self.reservations.reset();
        self.queue_unit_attention(Sense::bus_device_reset(), Some(by));
    }

    /// Queues `sense` (a UNIT ATTENTION) for every known nexus except `except`.
    pub fn queue_unit_attention(&self, sense: Sense, except: Option<&Nexus>) {
        let mut nexuses = self.lock();
        for (id, state) in nexuses.iter_mut() {
            if except.is_some_and(|n| n.id == *id) {
                continue;
            }
            state.push_unit_attention(sense);
        }
    }

    /// A nexus logged in: from now on it receives unit attentions, even before its first command here.
    /// (A nexus is also registered by its first command; no unit attention is queued for a new nexus.)
    pub fn nexus_joined(&self, nexus: &Nexus) {
        self.lock()
            .entry(nexus.id)
            .or_insert_with(|| NexusState::of(nexus));
    }

    /// A nexus logged out or its session ended (I_T nexus loss): forget its state and release an SPC-2
    /// reservation it held.
    pub fn nexus_gone(&self, nexus: &Nexus) {
        self.reservations.nexus_gone(nexus);
        self.lock().remove(&nexus.id);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, NexusState>> {
        // The map stays consistent even if a holder panicked: every update is a single push or pop.
        self.nexuses.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pops the oldest pending unit attention of `nexus`, registering the nexus if it is new.
    fn take_unit_attention(&self, nexus: &Nexus) -> Option<Sense> {
        self.lock()
            .entry(nexus.id)
            .or_insert_with(|| NexusState::of(nexus))
            .unit_attentions
            .pop_front()
    }

    /// What every command goes through, in SPC order: a pending unit attention, then the CDB's own errors, then
    /// reservation conflicts. Reservation commands are run here, everything else by [`run`](Self::run).
    fn dispatch(&self, req: &Request<'_>) -> Result<Vec<u8>, Outcome> {
        let op = req.cdb.first().copied();
        match op {
            Some(opcode::INQUIRY | opcode::REPORT_LUNS | opcode::REQUEST_SENSE) => {
                self.nexus_joined(req.nexus)
            }
            _ => {
                if let Some(ua) = self.take_unit_attention(req.nexus) {
                    return Err(ua.into());
                }
            }
        }
        let cmd = Command::decode(req.cdb)?;
        self.check_reservations(req)?;
        if let Some(result) = self.run_reservation_command(req, &cmd) {
            return result;
        }
        Ok(self.run(req, cmd)?)
    }

    fn run(&self, req: &Request<'_>, cmd: Command) -> Result<Vec<u8>, Sense> {
        match cmd {
            Command::TestUnitReady => Ok(Vec::new()),
            Command::RequestSense {
                descriptor_format,
                alloc_len,
            } => {
                let sense = self
                    .take_unit_attention(req.nexus)
                    .unwrap_or(Sense::no_sense());
                Ok(sense_data(&sense, descriptor_format, alloc_len))
            }
            Command::Inquiry {
                evpd,
                page_code,
                alloc_len,
            } => {
                let data = if evpd {
                    inquiry::vpd(page_code, &self.identity)?
                } else {
                    inquiry::standard(&self.identity)
                };
                Ok(truncated(data, alloc_len.into()))
            }
            Command::ModeSense {
                size,
                dbd,
                llbaa,
                page_control,
                page_code,
                subpage_code,
                alloc_len,
            } => {
                let req = mode::ModeSenseRequest {
                    size,
                    dbd,
                    llbaa,
                    page_control,
                    page_code,
                    subpage_code,
                };
                let medium = mode::MediumFacts {
                    blocks: self.capacity_blocks(),
                    block_size: BLOCK_SIZE,
                    read_only: self.read_only,
                };
                Ok(truncated(
                    mode::mode_sense(&req, &medium)?,
                    alloc_len.into(),
                ))
            }
            Command::ReadCapacity10 => {
                let last = self.capacity_blocks().saturating_sub(1);
                // FFFFFFFFh tells the initiator to use READ CAPACITY (16).
                let last = u32::try_from(last).unwrap_or(u32::MAX);
                let mut b = last.to_be_bytes().to_vec();
                b.extend_from_slice(&BLOCK_SIZE.to_be_bytes());
                Ok(b)
            }
            Command::ReadCapacity16 { alloc_len } => {
                let mut b = vec![0u8; 32];
                b[0..8].copy_from_slice(&self.capacity_blocks().saturating_sub(1).to_be_bytes());
                b[8..12].copy_from_slice(&BLOCK_SIZE.to_be_bytes());
                // PROT_EN=0; LBPME=0 and LBPRZ=0 (no UNMAP); lowest aligned LBA 0.
                b[13] = PHYSICAL_BLOCK_EXPONENT;
                Ok(truncated(b, alloc_len))
            }
            Command::Read(t) => self.read(&t),
            Command::Write(t) => self.write(&t, req.data_out).map(|()| Vec::new()),
            Command::Verify {
                transfer,
                byte_check,
            } => self
                .verify(&transfer, byte_check, req.data_out)
                .map(|()| Vec::new()),
            Command::WriteAndVerify {
                transfer,
                byte_check,
            } => self
                .write_and_verify(&transfer, byte_check, req.data_out)
                .map(|()| Vec::new()),
            Command::SynchronizeCache { lba, blocks, .. } => {
                self.synchronize_cache(lba, blocks).map(|()| Vec::new())
            }
            // Answered by dispatch.
            Command::PersistentReserveIn { .. }
            | Command::PersistentReserveOut { .. }
            | Command::Reserve(_)
            | Command::Release(_) => Err(Sense::invalid_opcode()),
            Command::ReportLuns {
                select_report,
                alloc_len,
            } => Ok(truncated(
                reports::report_luns(select_report, req.luns),
                alloc_len,
            )),
            Command::ReportSupportedOpcodes {
                rctd,
                reporting_options,
                opcode,
                service_action,
                alloc_len,
            } => {
                let data = reports::report_supported_opcodes(
                    rctd,
                    reporting_options,
                    opcode,
                    service_action,
                )?;
                Ok(truncated(data, alloc_len))
            }
        }
    }

    /// Checks a block transfer before any I/O: length limit, write protection, then the LBA range.
    fn check_transfer(&self, t: &BlockTransfer, writes: bool) -> Result<(), Sense> {
        transfer_bytes(t)?;
        if writes && self.read_only {
            return Err(Sense::write_protected());
        }
        self.check_range(t.lba, u64::from(t.blocks))
    }

    /// LBA + blocks must not pass the end of the medium (a 0-block transfer may start at the end).
    fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.capacity_blocks() => Ok(()),
            _ => Err(Sense::lba_out_of_range()),
        }
    }

    fn read(&self, t: &BlockTransfer) -> Result<Vec<u8>, Sense> {
        self.check_transfer(t, false)?;
        let mut buf = vec![0u8; byte_len(t)];
        if !buf.is_empty() {
            // FUA on a read needs nothing more: we read from the device, never from a cache of our own.
            self.dev
                .read_at(&mut buf, byte_offset(t.lba))
                .map_err(|_| Sense::medium_error_read())?;
        }
        Ok(buf)
    }

    fn write(&self, t: &BlockTransfer, data_out: &[u8]) -> Result<(), Sense> {
        self.check_transfer(t, true)?;
        let data = write_data(t, data_out);
        if !data.is_empty() {
            self.dev
                .write_at(data, byte_offset(t.lba), t.fua)
                .map_err(|_| Sense::write_error())?;
        }
        Ok(())
    }

    fn verify(
        &self,
        t: &BlockTransfer,
        byte_check: ByteCheck,
        data_out: &[u8],
    ) -> Result<(), Sense> {
        self.check_transfer(t, false)?;
        let expected = match byte_check {
            ByteCheck::MediumOnly => None,
            ByteCheck::Compare => Some(data_for(t, data_out)?),
        };
        self.check_medium(t.lba, byte_len(t), expected)
    }

    fn write_and_verify(
        &self,
        t: &BlockTransfer,
        byte_check: ByteCheck,
        data_out: &[u8],
    ) -> Result<(), Sense> {
        self.check_transfer(t, true)?;
        let data = write_data(t, data_out);
        if data.is_empty() {
            return Ok(());
        }
        // FUA: the verification is meant to be of the medium, so the data must have reached it.
        self.dev
            .write_at(data, byte_offset(t.lba), true)
            .map_err(|_| Sense::write_error())?;
        let expected = match byte_check {
            ByteCheck::MediumOnly => None,
            ByteCheck::Compare => Some(data),
        };
        self.check_medium(t.lba, data.len(), expected)
    }

    /// Reads `len` bytes from `lba` in bounded pieces: every byte must be readable and, with `expected`,
    /// equal to it (else MISCOMPARE with the offset of the first differing byte).
    fn check_medium(&self, lba: u64, len: usize, expected: Option<&[u8]>) -> Result<(), Sense> {
        let mut buf = vec![0u8; len.min(VERIFY_CHUNK_BYTES)];
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(buf.len());
            let chunk = &mut buf[..n];
            self.dev
                .read_at(chunk, byte_offset(lba) + done as u64)
                .map_err(|_| Sense::medium_error_read())?;
            if let Some(expected) = expected {
                let want = &expected[done..done + n];
                if let Some(i) = chunk.iter().zip(want).position(|(a, b)| a != b) {
                    return Err(Sense::miscompare((done + i) as u64));
                }
            }
            done += n;
        }
        Ok(())
    }

    fn synchronize_cache(&self, lba: u64, blocks: u32) -> Result<(), Sense> {
        // NUMBER OF LOGICAL BLOCKS 0 means "to the end of the medium".
        self.check_range(lba, u64::from(blocks))?;
        // One flush covers any range (and IMMED: we answer after it anyway).
        self.dev.flush().map_err(|_| Sense::write_error())
    }
}

/// Runs a command addressed to a LUN that does not exist on the target (SPC-4 / SAM-5): INQUIRY reports
/// peripheral qualifier 011b, REPORT LUNS and REQUEST SENSE work, and anything else fails with ILLEGAL REQUEST /
/// LOGICAL UNIT NOT SUPPORTED.
pub fn execute_no_lun(req: &Request<'_>) -> Outcome {
    let op = req.cdb.first().copied();
    let result = match op {
        Some(opcode::INQUIRY | opcode::REPORT_LUNS | opcode::REQUEST_SENSE) => {
            Command::decode(req.cdb).and_then(|cmd| match cmd {
                Command::Inquiry {
                    evpd: false,
                    alloc_len,
                    ..
                } => Ok(truncated(inquiry::standard_no_lun(), alloc_len.into())),
                Command::Inquiry {
                    evpd: true,
                    page_code,
                    alloc_len,
                } => inquiry::vpd_no_lun(page_code).map(|d| truncated(d, alloc_len.into())),
                Command::ReportLuns {
                    select_report,
                    alloc_len,
                } => Ok(truncated(
                    reports::report_luns(select_report, req.luns),
                    alloc_len,
                )),
                Command::RequestSense {
                    descriptor_format,
                    alloc_len,
                } => {
                    // The sense data describes why this LUN can not be used; the command itself succeeds.
                    Ok(sense_data(
                        &Sense::lun_not_supported(),
                        descriptor_format,
                        alloc_len,
                    ))
                }
                _ => Err(Sense::lun_not_supported()),
            })
        }
        _ => Err(Sense::lun_not_supported()),
    };
    match result {
        Ok(data) => Outcome::good(data),
        Err(sense) => Outcome::check_condition(sense),
    }
}

/// Bytes a block transfer moves, or INVALID FIELD IN CDB (at the TRANSFER LENGTH field) above the limit.
fn transfer_bytes(t: &BlockTransfer) -> Result<u32, Sense> {
    if t.blocks > MAX_TRANSFER_BLOCKS {
        return Err(Sense::invalid_field_in_cdb(
            t.size.transfer_length_byte(),
            7,
        ));
    }
    Ok(t.blocks * BLOCK_SIZE)
}

/// Byte length of a transfer already checked against [`MAX_TRANSFER_BLOCKS`].
fn byte_len(t: &BlockTransfer) -> usize {
    t.blocks as usize * BLOCK_SIZE as usize
}

/// Byte offset of `lba`; only called for LBAs inside the medium, so it can not overflow.
fn byte_offset(lba: u64) -> u64 {
    lba * u64::from(BLOCK_SIZE)
}

/// The Data-Out a VERIFY compares: the first `blocks` blocks of what arrived. Less than that is an error
/// (iSCSI expected data transfer length below the SCSI transfer length).
fn data_for<'d>(t: &BlockTransfer, data_out: &'d [u8]) -> Result<&'d [u8], Sense> {
    data_out
        .get(..byte_len(t))
        .ok_or_else(Sense::invalid_field_in_information_unit)
}

/// The Data-Out a write puts on the medium: at most `blocks` blocks, and only whole blocks. When the transport
/// delivered less than the CDB asks for (iSCSI residual overflow: the expected data transfer length was too
/// small), RFC 7143 section 11.4.5.1 has the transfer stop at that length: the blocks that arrived are written,
/// the rest of the range is left as it was, and the engine reports the residual.
fn write_data<'d>(t: &BlockTransfer, data_out: &'d [u8]) -> &'d [u8] {
    let whole = data_out.len() / BLOCK_SIZE as usize * BLOCK_SIZE as usize;
    &data_out[..whole.min(byte_len(t))]
}

/// REQUEST SENSE parameter data.
fn sense_data(sense: &Sense, descriptor_format: bool, alloc_len: u8) -> Vec<u8> {
    let data = if descriptor_format {
        sense.to_descriptor_bytes()
    } else {
        sense.to_bytes()
    };
    truncated(data, alloc_len.into())
}

fn truncated(mut data: Vec<u8>, alloc_len: u32) -> Vec<u8> {
    data.truncate(usize::try_from(alloc_len).unwrap_or(usize::MAX));
    data
}
