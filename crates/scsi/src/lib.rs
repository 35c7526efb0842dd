//! SCSI block-device emulation (SPC-4 / SBC-3) for twinsan's logical units.
//!
//! The crate does no I/O of its own: command decoding ([`cdb`]) and sense building ([`sense`]) are pure, and
//! [`LogicalUnit::execute`] reaches storage only through the [`BlockDevice`] trait that the engine implements
//! (a file, a block device, later a replicated volume).
//!
//! # How the engine drives a command
//! 0. [`Decoded::new`] decodes the CDB once, when the command arrives; every call below takes that [`Decoded`].
//! 1. [`LogicalUnit::data_out_len`] says how much Data-Out to solicit (0 for commands without any).
//! 2. [`LogicalUnit::check_expected_length`] refuses a command whose Data-Out can not be taken apart at the length
//!    the initiator announced; [`LogicalUnit::execute`] runs the command (blocking) and returns an [`Outcome`]:
//!    status, Data-In already cut to the allocation length, and sense for a CHECK CONDITION.
//!    [`LogicalUnit::is_quick`] says whether it may run on the engine's own task.
//! 3. [`LogicalUnit::data_in_len`] gives the length the CDB asked for, to compute residuals.
//!
//! A command for a LUN the target does not have goes to [`execute_no_lun`] instead.
//!
//! # Reservations
//! Persistent reservation state is kept with the device ([`BlockDevice::store_reservations`]); the node daemon
//! calls [`LogicalUnit::reload_reservations`] when its node starts serving a volume, and
//! [`reservations_after_power_loss`] on what was stored when it starts.
//!
//! # Architecture invariants
//! - Any byte string as a CDB gives an [`Outcome`]: no panics, and no allocation sized by a CDB field beyond
//!   [`MAX_TRANSFER_BLOCKS`] blocks or the 64 KiB of an allocation length (WRITE SAME writes its block 1 MiB at a
//!   time whatever its length; GET LBA STATUS builds at most 64 KiB; a parameter list is at most 64 KiB).
//! - COMPARE AND WRITE, ORWRITE and WRITE AND VERIFY are atomic against every other write to their blocks.
//! - An unimplemented opcode or service action answers ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE, which
//!   initiators and conformance suites read as "not supported".
//! - Data-Out shorter than the CDB's transfer length writes only the whole blocks that arrived (the transport
//!   reports the residual); a VERIFY that compares needs all of it.

#![warn(missing_docs)]

pub mod cdb;
mod lu;
mod memory;
pub mod sense;

pub use cdb::Decoded;
pub use lu::{
    decode_lun, encode_lun, execute_no_lun, LogicalUnit, LunIdentity, Nexus, Outcome, Request,
    TaskStatus, WriteOutcome, BLOCK_SIZE, MAX_COMPARE_AND_WRITE_BLOCKS, MAX_TRANSFER_BLOCKS,
    MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS, OPTIMAL_TRANSFER_BLOCKS,
    OPTIMAL_TRANSFER_GRANULARITY_BLOCKS,
};
pub use lu::{recycle_data_in, reservations_after_power_loss, POOLED_DATA_IN_BYTES};
pub use memory::MemoryDevice;
pub use sense::{FieldPointer, Sense, SenseKey};

use std::io;

use bytes::Bytes;

/// Called once with the result of a [`BlockDevice::submit_write`].
pub type WriteDone = Box<dyn FnOnce(io::Result<()>) + Send>;

/// Storage under a logical unit. Calls block; the engine runs them off the async reactor.
pub trait BlockDevice: Send + Sync {
    /// Capacity in bytes (a multiple of the block size).
    fn size_bytes(&self) -> u64;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`; with `fua` the data is on stable storage before this returns.
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()>;
    /// Makes every completed write durable (SYNCHRONIZE CACHE).
    fn flush(&self) -> io::Result<()>;
    /// Reads and writes (without FUA) of up to this many bytes finish in microseconds, as page-cache copies
    /// do, so the engine may run them on its own thread instead of handing them to a blocking pool. 0, the
    /// default, means every I/O may wait for a disk.
    fn quick_io_limit(&self) -> usize {
        0
    }
    /// The same for writes (without FUA); by default [`quick_io_limit`](Self::quick_io_limit). A device whose
    /// writes wait for something slower than memory (a replication peer) answers 0.
    fn quick_write_limit(&self) -> usize {
        self.quick_io_limit()
    }
    /// True if [`submit_write`](Self::submit_write) returns at once and completes later (a replicated volume,
    /// whose writes wait for the peer): the engine then needs no thread to wait on the write.
    fn submits_writes(&self) -> bool {
        false
    }
    /// Starts a write of `buf` at `offset` and calls `done` with its result, from whatever thread completes
    /// it (perhaps this one, before returning). `buf` shares the initiator's Data-Out (no copy was made); a device
    /// that keeps it past the call keeps that buffer alive. The default writes with
    /// [`write_at`](Self::write_at), blocking.
    fn submit_write(&self, buf: Bytes, offset: u64, fua: bool, done: WriteDone) {
        done(self.write_at(&buf, offset, fua));
    }
    /// True if [`unmap`](Self::unmap) deallocates storage (a thin provisioned device: a sparse file on a
    /// filesystem that punches holes, a block device that discards). The logical unit then reports logical block
    /// provisioning (LBPME, LBPRZ, UNMAP and WRITE SAME with UNMAP); otherwise it is fully provisioned.
    fn supports_unmap(&self) -> bool {
        false
    }
    /// Deallocates `len` bytes at `offset` (inside the device). Afterwards the range reads as zeros, whatever the
    /// device. The default writes zeros through [`write_at`](Self::write_at) in bounded chunks.
    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        write_zeroes(self, offset, len)
    }
    /// Whether the bytes from `offset` (inside the device) are mapped (backed by storage) and how many bytes from
    /// there, at most `len` and at least one, share that state. The default: everything is mapped.
    fn mapped_extent(&self, offset: u64, len: u64) -> io::Result<(bool, u64)> {
        let _ = offset;
        Ok((true, len))
    }
    /// Bytes of persistent reservation state the device keeps with its data, durably (for a replicated
    /// volume: in its metadata, on both nodes). 0, the default: the device keeps none, and the logical unit
    /// holds reservations in memory only (lost when the process stops; APTPL is then not offered).
    fn reservation_capacity(&self) -> usize {
        0
    }
    /// The reservation state last given to [`store_reservations`](Self::store_reservations) (empty if none
    /// ever was). The bytes are the logical unit's own encoding; the device does not interpret them.
    fn load_reservations(&self) -> io::Result<Vec<u8>> {
        Ok(Vec::new())
    }
    /// Stores `state` (at most [`reservation_capacity`](Self::reservation_capacity) bytes) durably before
    /// returning; a replicated volume returns once the peer has it too (or is known to be gone, in which case it
    /// gets the state when it resyncs). The logical unit reports a PERSISTENT RESERVE OUT as done only after this.
    fn store_reservations(&self, state: &[u8]) -> io::Result<()> {
        let _ = state;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this device keeps no reservation state",
        ))
    }
}

/// Zeros written per [`write_zeroes`] call to [`BlockDevice::write_at`].
const ZERO_CHUNK_BYTES: u64 = 1 << 20;

/// Writes `len` zero bytes at `offset` through [`BlockDevice::write_at`], at most 1 MiB at a time (no FUA): the
/// default [`BlockDevice::unmap`], and the fallback of devices whose deallocation can fail for a range.
pub fn write_zeroes<D: BlockDevice + ?Sized>(dev: &D, offset: u64, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; len.min(ZERO_CHUNK_BYTES) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(ZERO_CHUNK_BYTES);
        dev.write_at(&zeros[..n as usize], offset + done, false)?;
        done += n;
    }
    Ok(())
}
