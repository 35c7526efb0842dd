//! [`LogicalUnit`]: runs decoded commands against a [`BlockDevice`] and keeps the per-nexus unit attention state.

mod buffers;
mod inquiry;
mod mode;
mod pr;
mod provisioning;
mod range;
mod reports;
mod rmw;
#[cfg(test)]
mod tests;

pub use buffers::{recycle_data_in, POOLED_DATA_IN_BYTES};
pub use pr::reservations_after_power_loss;
pub use reports::{decode_lun, encode_lun};

use crate::cdb::{opcode, BlockTransfer, ByteCheck, Command, Decoded};
use crate::sense::Sense;
use crate::BlockDevice;
use range::{Access, RangeLocks};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Logical block size in bytes.
pub const BLOCK_SIZE: u32 = 512;
/// Largest READ / WRITE / VERIFY the logical unit accepts, in blocks (8 MiB); more is INVALID FIELD IN CDB.
pub const MAX_TRANSFER_BLOCKS: u32 = (8 << 20) / BLOCK_SIZE;
/// Transfers should be multiples of this many blocks (4 KiB, the page and filesystem block of the backing store).
pub const OPTIMAL_TRANSFER_GRANULARITY_BLOCKS: u16 = 8;
/// Preferred transfer size in blocks (1 MiB).
pub const OPTIMAL_TRANSFER_BLOCKS: u32 = (1 << 20) / BLOCK_SIZE;
/// log2(logical blocks per physical block): 0, one 512-byte logical block per physical block. The 4 KiB
/// alignment hint goes through VPD B0h (OPTIMAL TRANSFER LENGTH GRANULARITY, OPTIMAL UNMAP GRANULARITY) instead:
/// with more than one logical block per physical block, GET LBA STATUS for an LBA inside a physical block must
/// still start its first descriptor at that LBA (SBC), which libiscsi's GetLBAStatus.UnmapSingle (1.19) reads as
/// a failure, and the iscsi-test-cu run must have none.
const PHYSICAL_BLOCK_EXPONENT: u8 = 0;
/// Largest NUMBER OF LOGICAL BLOCKS of a COMPARE AND WRITE (VPD B0h; 64 KiB compared, 64 KiB written, the blocks
/// held exclusively meanwhile); more is INVALID FIELD IN CDB.
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 128;
/// Largest WRITE SAME in blocks (VPD B0h MAXIMUM WRITE SAME LENGTH), the most a WRITE SAME (10) can carry; more is
/// INVALID FIELD IN CDB. (libiscsi's WRITE SAME (16) test writes 65536 blocks with one WRITE (16) when the limit
/// allows that many, beyond MAXIMUM TRANSFER LENGTH.)
pub const MAX_WRITE_SAME_BLOCKS: u64 = 0xFFFF;
/// Largest number of blocks one UNMAP deallocates, all descriptors together (VPD B0h).
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 20;
/// Most block descriptors in one UNMAP parameter list (VPD B0h).
pub const MAX_UNMAP_DESCRIPTORS: u32 = 1024;
/// VERIFY reads the medium (and WRITE SAME writes it) in pieces of this many bytes.
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
    /// Data-In for the initiator, already cut to the allocation length. A large READ's buffer may be handed
    /// back with [`recycle_data_in`] once the transport is done with it.
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

/// Where a submitted command's outcome goes ([`LogicalUnit::submit`]).
pub type WriteOutcome = Box<dyn FnOnce(Outcome) + Send>;

/// A SCSI block device (SBC-3) over a [`BlockDevice`]. Commands from many threads may run at once: the shared
/// mutable state (per-nexus unit attentions, reservations, mode parameters) is behind mutexes that are never held
/// across I/O, except the one that serializes changes of the persistent reservation state while it is stored; the
/// block ranges of writes in flight are tracked so that COMPARE AND WRITE, ORWRITE and WRITE AND VERIFY are atomic
/// against every other write to their blocks (including writes the device completes asynchronously).
pub struct LogicalUnit {
    dev: Arc<dyn BlockDevice>,
    identity: LunIdentity,
    read_only: bool,
    /// The device deallocates on unmap: the logical unit is thin provisioned.
    thin: bool,
    nexuses: Mutex<HashMap<u64, NexusState>>,
    mode: Mutex<mode::ModeState>,
    /// `mode`'s WCE, read by every write without taking the mutex; stored under it by MODE SELECT.
    wce: AtomicBool,
    ranges: Arc<RangeLocks>,
    reservations: pr::Reservations,
    /// The device size in bytes the nexuses were last told about: when [`BlockDevice::size_bytes`] differs (an
    /// online resize), every nexus gets CAPACITY DATA HAS CHANGED once.
    capacity_seen: AtomicU64,
}

impl std::fmt::Debug for LogicalUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalUnit")
            .field("identity", &self.identity)
            .field("read_only", &self.read_only)
            .field("thin", &self.thin)
            .finish_non_exhaustive()
    }
}

impl LogicalUnit {
    /// A logical unit over `dev`; with `read_only` every write fails with DATA PROTECT.
    pub fn new(dev: Arc<dyn BlockDevice>, identity: LunIdentity, read_only: bool) -> Self {
        Self {
            thin: dev.supports_unmap(),
            reservations: pr::Reservations::new(dev.as_ref()),
            capacity_seen: AtomicU64::new(dev.size_bytes()),
            dev,
            identity,
            read_only,
            nexuses: Mutex::new(HashMap::new()),
            mode: Mutex::new(mode::ModeState::default()),
            wce: AtomicBool::new(mode::ModeState::default().wce),
            ranges: Arc::new(RangeLocks::default()),
        }
    }

    /// Whether the logical unit is thin provisioned (READ CAPACITY (16) LBPME): UNMAP and WRITE SAME with UNMAP
    /// deallocate, and deallocated blocks read as zeros.
    pub fn is_thin(&self) -> bool {
        self.thin
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

    /// Runs one command, `cmd` being its CDB (`req.cdb`) decoded. Blocking: reads and writes go through the
    /// [`BlockDevice`].
    ///
    /// A pending unit attention for the nexus fails any command but INQUIRY, REPORT LUNS and REQUEST SENSE
    /// (SPC-4 5.14) and is cleared by being reported; then a CDB that did not decode fails with its sense. A
    /// reservation that does not let the nexus run the command answers RESERVATION CONFLICT (SPC-4 5.13).
    pub fn execute(&self, req: &Request<'_>, cmd: &Decoded) -> Outcome {
        match self.dispatch(req, cmd) {
            Ok(data_in) => Outcome::good(data_in),
            Err(outcome) => outcome,
        }
    }

    /// True if [`submit`](Self::submit) runs this command without blocking: a WRITE to a device that
    /// [submits writes](BlockDevice::submits_writes).
    pub fn submits(&self, cmd: &Decoded) -> bool {
        self.dev.submits_writes()
            && self.reservations.is_loaded()
            && matches!(cmd.command(), Ok(Command::Write(_)))
    }

    /// Runs a command [`submits`](Self::submits) accepted, without waiting for the device: `done` receives the
    /// outcome, now or from the thread that completes the write. Anything else is run by
    /// [`execute`](Self::execute) and its outcome passed on. `Err(done)`, with nothing done: the write's blocks
    /// are held by a COMPARE AND WRITE (or another read-compare-write command) in progress, and waiting for it
    /// would block the caller; run the command with [`execute`](Self::execute) on a thread that may wait.
    /// `data_out` holds the bytes of `req.data_out`: the write's data goes to the device as a slice of it, not a
    /// copy.
    pub fn submit(
        &self,
        req: &Request<'_>,
        cmd: &Decoded,
        data_out: &bytes::Bytes,
        done: WriteOutcome,
    ) -> Result<(), WriteOutcome> {
        debug_assert!(
            std::ptr::eq(data_out.as_ref(), req.data_out),
            "data_out is not the request's Data-Out"
        );
        let t = match cmd.command() {
            Ok(Command::Write(t)) if self.dev.submits_writes() => t,
            _ => {
                done(self.execute(req, cmd));
                return Ok(());
            }
        };
        // Taken before anything changes state (a unit attention is reported once): if the range is not free, the
        // command goes to `execute` untouched. Held until the device completes the write.
        let Some(range) = self
            .ranges
            .try_lock(t.lba, u64::from(t.blocks), Access::Shared)
        else {
            return Err(done);
        };
        if let Some(ua) = self.take_unit_attention(req.nexus) {
            done(Outcome::check_condition(ua));
            return Ok(());
        }
        if let Err(outcome) = self.check_reservations(req) {
            done(outcome);
            return Ok(());
        }
        if let Err(sense) = self.check_transfer(&t, true) {
            done(Outcome::check_condition(sense));
            return Ok(());
        }
        let len = write_data(&t, data_out).len();
        if len == 0 {
            done(Outcome::good(Vec::new()));
            return Ok(());
        }
        self.dev.submit_write(
            data_out.slice(..len),
            byte_offset(t.lba),
            t.fua || self.write_through(),
            Box::new(move |result| {
                drop(range);
                done(match result {
                    Ok(()) => Outcome::good(Vec::new()),
                    Err(_) => Outcome::check_condition(Sense::write_error()),
                })
            }),
        );
        Ok(())
    }

    /// Bytes of Data-Out the command asks for (0 for commands that send none), so the engine knows how much to
    /// solicit. `Err` for an unknown opcode, a bad field or a transfer above [`MAX_TRANSFER_BLOCKS`]: the engine
    /// should then take no Data-Out and call [`execute`](Self::execute) with an empty `data_out`, which
    /// reports the same error (or a pending unit attention before it).
    pub fn data_out_len(&self, cmd: &Decoded) -> Result<u32, Sense> {
        Ok(match cmd.command()? {
            Command::Write(t) | Command::OrWrite(t) => transfer_bytes(&t)?,
            Command::WriteAndVerify {
                transfer,
                byte_check,
            } => compared_bytes(&transfer, byte_check, true)?,
            Command::Verify {
                transfer,
                byte_check,
            } => compared_bytes(&transfer, byte_check, false)?,
            Command::WriteSame { ndob, .. } => {
                if ndob {
                    0
                } else {
                    BLOCK_SIZE
                }
            }
            Command::CompareAndWrite { blocks, .. } => compare_and_write_bytes(blocks)?,
            Command::Unmap { param_len } | Command::ModeSelect { param_len, .. } => {
                u32::from(param_len)
            }
            Command::PersistentReserveOut { param_len, .. } => param_len,
            _ => 0,
        })
    }

    /// Checks the initiator's expected data transfer length (`expected`, iSCSI EDTL) against a command whose
    /// Data-Out has a fixed structure, before [`execute`](Self::execute): a WRITE SAME carries exactly one block,
    /// a COMPARE AND WRITE exactly its verify and write data, and anything else would be taken apart wrongly. Other
    /// commands accept any length (the transport reports the residual). `Err` carries the sense to fail the
    /// command with: INVALID FIELD IN COMMAND INFORMATION UNIT, or INVALID FIELD IN CDB for a COMPARE AND WRITE of 0
    /// blocks with more Data-Out than any COMPARE AND WRITE can carry (the block count wrapped around its 8-bit
    /// field).
    pub fn check_expected_length(&self, cmd: &Decoded, expected: u32) -> Result<(), Sense> {
        match cmd.command() {
            Ok(Command::WriteSame { ndob: false, .. }) if expected != BLOCK_SIZE => {
                Err(Sense::invalid_field_in_information_unit())
            }
            Ok(Command::CompareAndWrite { blocks: 0, .. })
                if u64::from(expected)
                    > 2 * u64::from(MAX_COMPARE_AND_WRITE_BLOCKS) * u64::from(BLOCK_SIZE) =>
            {
                Err(Sense::invalid_field_in_cdb(13, 7))
            }
            // A count above the maximum is the CDB's fault, whatever the length.
            Ok(Command::CompareAndWrite { blocks, .. }) if blocks > 0 => {
                match compare_and_write_bytes(blocks) {
                    Ok(need) if need != expected => Err(Sense::invalid_field_in_information_unit()),
                    other => other.map(|_| ()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Bytes of Data-In the command asks for (allocation length or transfer length), for residual computation.
    /// The Data-In of [`execute`](Self::execute) is never longer.
    pub fn data_in_len(&self, cmd: &Decoded) -> Result<u32, Sense> {
        Ok(match cmd.command()? {
            Command::Read(t) => transfer_bytes(&t)?,
            Command::RequestSense { alloc_len, .. } => u32::from(alloc_len),
            Command::Inquiry { alloc_len, .. } | Command::ModeSense { alloc_len, .. } => {
                u32::from(alloc_len)
            }
            Command::PersistentReserveIn { alloc_len, .. } => u32::from(alloc_len),
            Command::ReadCapacity10 => 8,
            Command::ReadCapacity16 { alloc_len }
            | Command::GetLbaStatus { alloc_len, .. }
            | Command::ReportLuns { alloc_len, .. }
            | Command::ReportSupportedOpcodes { alloc_len, .. } => alloc_len,
            _ => 0,
        })
    }

    /// Whether [`execute`](Self::execute) of this command finishes in microseconds: commands that touch no
    /// storage, and reads and writes without FUA (and with the write cache enabled) within the device's
    /// [`quick_io_limit`](BlockDevice::quick_io_limit). The engine runs those inline and the rest on a
    /// blocking pool; either way the outcome is the same.
    pub fn is_quick(&self, cmd: &Decoded) -> bool {
        let limit = self.dev.quick_io_limit() as u64;
        let write_limit = self.dev.quick_write_limit() as u64;
        if !self.reservations.is_loaded() {
            // The first command loads the reservation state from the device.
            return false;
        }
        match cmd.command() {
            Ok(Command::Read(t)) => u64::from(t.blocks) * u64::from(BLOCK_SIZE) <= limit,
            Ok(Command::Write(t)) => {
                !t.fua
                    && !self.write_through()
                    && u64::from(t.blocks) * u64::from(BLOCK_SIZE) <= write_limit
            }
            Ok(
                Command::SynchronizeCache { .. }
                | Command::Verify { .. }
                | Command::WriteAndVerify { .. }
                | Command::WriteSame { .. }
                | Command::Unmap { .. }
                | Command::GetLbaStatus { .. }
                | Command::CompareAndWrite { .. }
                | Command::OrWrite(_)
                // MODE SELECT may flush (write cache turned off), STOP UNIT flushes.
                | Command::ModeSelect { .. }
                | Command::StartStopUnit { .. },
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

    /// Queues CAPACITY DATA HAS CHANGED (2Ah/09h) for every nexus if the device's size changed since the last
    /// look: the swap lets exactly one command see each change.
    fn note_capacity_change(&self) {
        let now = self.dev.size_bytes();
        if self.capacity_seen.load(Ordering::SeqCst) != now
            && self.capacity_seen.swap(now, Ordering::SeqCst) != now
        {
            self.queue_unit_attention(Sense::capacity_changed(), None);
        }
    }

    /// Pops the oldest pending unit attention of `nexus`, registering the nexus if it is new.
    fn take_unit_attention(&self, nexus: &Nexus) -> Option<Sense> {
        self.note_capacity_change();
        self.lock()
            .entry(nexus.id)
            .or_insert_with(|| NexusState::of(nexus))
            .unit_attentions
            .pop_front()
    }

    /// What every command goes through, in SPC order: a pending unit attention, then the CDB's own errors, then
    /// reservation conflicts. Reservation commands are run here, everything else by [`run`](Self::run).
    fn dispatch(&self, req: &Request<'_>, cmd: &Decoded) -> Result<Vec<u8>, Outcome> {
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
        let cmd = cmd.command()?;
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
                    inquiry::vpd(page_code, &self.identity, self.thin)?
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
                let state = self.mode_state();
                Ok(truncated(
                    mode::mode_sense(&req, &medium, &state)?,
                    alloc_len.into(),
                ))
            }
            Command::ModeSelect {
                size,
                pf,
                sp,
                param_len,
            } => {
                let req_ms = mode::ModeSelectRequest {
                    size,
                    pf,
                    sp,
                    param_len: param_len.into(),
                };
                self.mode_select(&req_ms, req.data_out, req.nexus)
                    .map(|()| Vec::new())
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
                // PROT_EN=0; lowest aligned LBA 0; thin provisioned: LBPME, and deallocated blocks read zeros
                // (LBPRZ).
                b[13] = PHYSICAL_BLOCK_EXPONENT;
                if self.thin {
                    b[14] = 0x80 | 0x40;
                }
                Ok(truncated(b, alloc_len))
            }
            Command::GetLbaStatus { lba, alloc_len } => self.get_lba_status(lba, alloc_len),
            Command::WriteSame {
                size,
                lba,
                blocks,
                unmap,
                ndob,
            } => self
                .write_same(size, lba, blocks, unmap, ndob, req.data_out)
                .map(|()| Vec::new()),
            Command::Unmap { param_len } => self
                .unmap(usize::from(param_len), req.data_out)
                .map(|()| Vec::new()),
            Command::CompareAndWrite {
                lba, blocks, fua, ..
            } => self
                .compare_and_write(lba, blocks, fua, req.data_out)
                .map(|()| Vec::new()),
            Command::OrWrite(t) => self.or_write(&t, req.data_out).map(|()| Vec::new()),
            Command::PreFetch { lba, blocks, .. } => {
                // We keep no cache that PRE-FETCH could fill (the page cache is the host's), so the blocks are
                // never all "in cache": GOOD, not CONDITION MET (SBC-3 5.9). IMMED changes nothing.
                self.check_range(lba, u64::from(blocks))?;
                Ok(Vec::new())
            }
            Command::StartStopUnit {
                no_flush,
                loej,
                start,
                ..
            } => self
                .start_stop_unit(no_flush, loej, start)
                .map(|()| Vec::new()),
            // Nothing can be removed from a disk that is not removable; preventing or allowing it changes nothing.
            Command::PreventAllowMediumRemoval { .. } => Ok(Vec::new()),
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
                    self.thin,
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
        let mut buf = buffers::data_in_buffer(byte_len(t));
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
            let _range = self.ranges.lock(t.lba, blocks_in(data), Access::Shared);
            self.dev
                .write_at(data, byte_offset(t.lba), t.fua || self.write_through())
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
            ByteCheck::MediumOnly => Expected::Readable,
            ByteCheck::Compare => Expected::Bytes(data_for(t, data_out)?),
            ByteCheck::SingleBlock if t.blocks == 0 => Expected::Readable,
            ByteCheck::SingleBlock => Expected::EveryBlock(one_block(data_out)?),
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
        if byte_check == ByteCheck::SingleBlock {
            if t.blocks == 0 {
                return Ok(());
            }
            let block = one_block(data_out)?;
            let _range = self
                .ranges
                .lock(t.lba, u64::from(t.blocks), Access::Exclusive);
            // FUA: the verification is meant to be of the medium, so the data must have reached it.
            self.write_repeated(t.lba, u64::from(t.blocks), block, true)?;
            return self.check_medium(t.lba, byte_len(t), Expected::EveryBlock(block));
        }
        let data = write_data(t, data_out);
        if data.is_empty() {
            return Ok(());
        }
        // Exclusive: another write to these blocks between ours and the read-back would look like a miscompare.
        let _range = self.ranges.lock(t.lba, blocks_in(data), Access::Exclusive);
        self.dev
            .write_at(data, byte_offset(t.lba), true)
            .map_err(|_| Sense::write_error())?;
        let expected = match byte_check {
            ByteCheck::MediumOnly => Expected::Readable,
            _ => Expected::Bytes(data),
        };
        self.check_medium(t.lba, data.len(), expected)
    }

    /// Reads `len` bytes from `lba` in bounded pieces: every byte must be readable and equal to what `expected`
    /// says (else MISCOMPARE with the offset of the first differing byte from the start of the range).
    fn check_medium(&self, lba: u64, len: usize, expected: Expected<'_>) -> Result<(), Sense> {
        let mut buf = vec![0u8; len.min(VERIFY_CHUNK_BYTES)];
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(buf.len());
            let chunk = &mut buf[..n];
            self.dev
                .read_at(chunk, byte_offset(lba) + done as u64)
                .map_err(|_| Sense::medium_error_read())?;
            let differs = match expected {
                Expected::Readable => None,
                Expected::Bytes(want) => {
                    let want = &want[done..done + n];
                    chunk.iter().zip(want).position(|(a, b)| a != b)
                }
                // Chunks are whole blocks, so the block pattern restarts at each chunk.
                Expected::EveryBlock(block) => chunk
                    .iter()
                    .zip(block.iter().cycle())
                    .position(|(a, b)| a != b),
            };
            if let Some(i) = differs {
                return Err(Sense::miscompare((done + i) as u64));
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `block` to the `count` blocks from `lba`, a chunk of at most [`VERIFY_CHUNK_BYTES`] at a time.
    fn write_repeated(&self, lba: u64, count: u64, block: &[u8], fua: bool) -> Result<(), Sense> {
        let total = count * u64::from(BLOCK_SIZE);
        let chunk_len = total.min(VERIFY_CHUNK_BYTES as u64) as usize;
        let chunk: Vec<u8> = block.iter().copied().cycle().take(chunk_len).collect();
        let mut done = 0u64;
        while done < total {
            let n = (total - done).min(chunk_len as u64) as usize;
            self.dev
                .write_at(&chunk[..n], byte_offset(lba) + done, false)
                .map_err(|_| Sense::write_error())?;
            done += n as u64;
        }
        if fua {
            self.dev.flush().map_err(|_| Sense::write_error())?;
        }
        Ok(())
    }

    /// The current mode parameters.
    fn mode_state(&self) -> mode::ModeState {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// WCE is 0: every write must be durable before GOOD, as if it had FUA.
    fn write_through(&self) -> bool {
        !self.wce.load(Ordering::Acquire)
    }

    fn mode_select(
        &self,
        req: &mode::ModeSelectRequest,
        data_out: &[u8],
        nexus: &Nexus,
    ) -> Result<(), Sense> {
        let medium = mode::MediumFacts {
            blocks: self.capacity_blocks(),
            block_size: BLOCK_SIZE,
            read_only: self.read_only,
        };
        let mut guard = self.mode.lock().unwrap_or_else(|e| e.into_inner());
        let before = *guard;
        let after = mode::mode_select(req, data_out, &medium, &before)?;
        if after == before {
            return Ok(());
        }
        *guard = after;
        self.wce.store(after.wce, Ordering::Release);
        drop(guard);
        if before.wce && !after.wce {
            // From now on writes are written through; make the ones already completed durable too.
            self.dev.flush().map_err(|_| Sense::write_error())?;
        }
        // SPC-4 6.9: every other I_T nexus learns that the parameters changed.
        self.queue_unit_attention(Sense::mode_parameters_changed(), Some(nexus));
        Ok(())
    }

    /// START STOP UNIT of a disk that is not removable and has no power conditions: the medium can not be
    /// ejected; a stop makes cached data durable unless NO_FLUSH; otherwise nothing changes. The logical unit is
    /// never actually stopped: it is shared by every I_T nexus, and one initiator stopping it (as hosts do at
    /// shutdown) must not take it away from the others.
    fn start_stop_unit(&self, no_flush: bool, loej: bool, start: bool) -> Result<(), Sense> {
        if loej && !start {
            return Err(Sense::invalid_field_in_cdb(4, 1));
        }
        if !start && !no_flush {
            self.dev.flush().map_err(|_| Sense::write_error())?;
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
/// LOGICAL UNIT NOT SUPPORTED. `cmd` is `req.cdb` decoded.
pub fn execute_no_lun(req: &Request<'_>, cmd: &Decoded) -> Outcome {
    let op = req.cdb.first().copied();
    let result = match op {
        Some(opcode::INQUIRY | opcode::REPORT_LUNS | opcode::REQUEST_SENSE) => {
            cmd.command().and_then(|cmd| match cmd {
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

/// What [`LogicalUnit::check_medium`] compares the medium with.
#[derive(Clone, Copy)]
enum Expected<'a> {
    /// Nothing: the medium only has to be readable.
    Readable,
    /// These bytes, from the start of the range.
    Bytes(&'a [u8]),
    /// This one block, in every block of the range.
    EveryBlock(&'a [u8]),
}

/// Bytes of Data-Out a VERIFY (or, with `writes`, a WRITE AND VERIFY) takes for its BYTCHK.
fn compared_bytes(t: &BlockTransfer, byte_check: ByteCheck, writes: bool) -> Result<u32, Sense> {
    let all = transfer_bytes(t)?;
    Ok(match byte_check {
        ByteCheck::MediumOnly if writes => all,
        ByteCheck::MediumOnly => 0,
        ByteCheck::Compare => all,
        ByteCheck::SingleBlock if t.blocks == 0 => 0,
        ByteCheck::SingleBlock => BLOCK_SIZE,
    })
}

/// Bytes of Data-Out of a COMPARE AND WRITE of `blocks` blocks (verify data, then write data), or INVALID FIELD IN
/// CDB above [`MAX_COMPARE_AND_WRITE_BLOCKS`].
fn compare_and_write_bytes(blocks: u8) -> Result<u32, Sense> {
    if blocks > MAX_COMPARE_AND_WRITE_BLOCKS {
        return Err(Sense::invalid_field_in_cdb(13, 7));
    }
    Ok(2 * u32::from(blocks) * BLOCK_SIZE)
}

/// The one block of Data-Out of a BYTCHK 11b or WRITE SAME.
fn one_block(data_out: &[u8]) -> Result<&[u8], Sense> {
    data_out
        .get(..BLOCK_SIZE as usize)
        .ok_or_else(Sense::invalid_field_in_information_unit)
}

/// Whole blocks in `data` (a multiple of the block size).
fn blocks_in(data: &[u8]) -> u64 {
    (data.len() / BLOCK_SIZE as usize) as u64
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
