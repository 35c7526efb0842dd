//! The activity log (AL): the "hot" 4 MiB extents of the volume, recorded on disk before data is written to them,
//! so that after a primary crash only those extents need resync instead of the whole volume.
//!
//! This is a state machine with no I/O. The engine asks before each write and writes the transactions it is
//! handed to the AL's ring on disk; after a crash it reads the ring back and [`recover`] says which extents were
//! active.
//!
//! # How the engine drives it
//! 1. [`ActivityLog::begin_write`] for each data write, before it is issued:
//!    - [`AlDecision::Proceed`]: every extent is already on disk; write now.
//!    - [`AlDecision::CommitFirst`]: write the [`Transaction`] to ring slot [`Transaction::ring_slot`] (after
//!      flushing the bitmap pages of its [`Transaction::evicted`] extents), then call
//!      [`ActivityLog::committed`]; the data write may go ahead after that.
//!    - [`AlDecision::AfterCommit`]: the extents are in transaction `n`, already being written or the next one;
//!      the data write may go ahead once `committed(n)` has been called.
//!    - [`AlDecision::Wait`]: not admitted, nothing was taken; retry after [`ActivityLog::committed`] or after an
//!      [`ActivityLog::end_write`] that returned `true`.
//! 2. [`ActivityLog::committed`] when a transaction is durable. It may return the next transaction (the extents
//!    requested meanwhile, batched), which the engine writes the same way.
//! 3. [`ActivityLog::end_write`] when an admitted write has completed (or was abandoned).
//!
//! # Ordering
//! At most one transaction is being written at a time: the ring's torn-write reasoning (below) needs that. A write
//! that needs an extent while a transaction is being written does not get a transaction of its own: the extent is
//! staged for the next one and the write is told `AfterCommit(next)`, so it cannot overtake the transaction that
//! records its extent. A write whose extents are all on disk proceeds at once, even while a transaction is being
//! written: the AL only promises "no data write to an extent the disk does not list"; the order of data writes
//! among themselves is the replication epochs' business, not the AL's.
//!
//! Extents leave the log least recently used first, and only when no write is in flight in them. From the moment
//! an extent is chosen to leave until the transaction that removes it is committed, writes to it `Wait`: a write
//! admitted then could still be in flight when the disk stops listing the extent.
//!
//! # On-disk transaction (one 4 KiB block, little-endian)
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `TSAL` |
//! | 4 | 2 | format version, 1 |
//! | 6 | 2 | flags: bit 0 *fresh*, the first transaction of a run: every slot not written by it is empty |
//! | 8 | 8 | transaction number, +1 per transaction, never reused |
//! | 16 | 4 | slots in the ring; the transaction lives in slot `number % slots` |
//! | 20 | 4 | table size (`al-extents`): slots of the active-extent table |
//! | 24 | 2 | update count `u` (at most [`MAX_UPDATES_PER_TRANSACTION`]) |
//! | 26 | 2 | context count `c` (at most [`MAX_CONTEXT_PER_TRANSACTION`]) |
//! | 28 | 4 | context start: the table slot the context begins at |
//! | 32 | 8 | reserved, zero |
//! | 40 | 12·u | updates: table slot, extent evicted from it (`u32::MAX`: none), extent now in it |
//! | 40+12u | 4·c | context: the extents (`u32::MAX`: none) of table slots start, start+1, … (mod table size) |
//! | … | | zero up to 4092 |
//! | 4092 | 4 | CRC32C of bytes 0..4092 |
//!
//! The context is a window of the whole table as it is after the transaction; the window moves on by `c` slots
//! with each transaction, so consecutive transactions describe the whole table over and over. With the default
//! sizes (`al-extents` up to 821) every transaction carries the whole table.
//!
//! # Why a torn write cannot lose an active extent
//! Recovery replays the valid transactions (checksum correct) of the newest unbroken run of numbers, oldest
//! first, taking for each table slot the latest value any of them gives; it starts from an empty table at the
//! newest *fresh* transaction if one is there.
//! - Only one transaction is written at a time, so a crash tears at most the newest one. Its extents were never
//!   written to (their writes wait for `committed`), so losing its additions loses nothing; losing its evictions
//!   leaves those extents listed, which only costs resync.
//! - The torn block also destroyed the transaction that was in its slot before, the oldest of the ring. The
//!   geometry is checked so that the other `slots − 1` transactions have contexts covering the whole table
//!   (`(slots − 1) · c ≥ table size`), so every slot still gets a value, and the newest one: a slot's value can
//!   only change in a transaction, whose update carries it, and every transaction after the oldest surviving one
//!   survives except the torn one.
//! - If a run of transactions is shorter than the ring, its fresh first transaction is still there and the
//!   replay starts from it, so slots it does not mention are known to be empty.
//!
//! If the ring does not describe every slot anyway (more than one block lost), [`recover`] refuses with
//! [`AlError::Incomplete`] rather than guess: the engine must then treat the whole volume as out of sync.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use thiserror::Error;

/// Bytes of data in one extent of the activity log.
pub const EXTENT_BYTES: u64 = 4 << 20;
const EXTENT_SHIFT: u32 = EXTENT_BYTES.trailing_zeros();
/// Bytes of one on-disk transaction (one ring slot).
pub const TRANSACTION_BYTES: usize = 4096;
/// Most table slots one transaction changes (as DRBD: 64).
pub const MAX_UPDATES_PER_TRANSACTION: usize = 64;
/// Most table slots one transaction's context describes: what fits after the header and the updates.
pub const MAX_CONTEXT_PER_TRANSACTION: usize =
    (CRC_OFFSET - HEADER_BYTES - MAX_UPDATES_PER_TRANSACTION * UPDATE_BYTES) / 4;
/// Smallest table size accepted (as DRBD's `al-extents`).
pub const MIN_TABLE_SIZE: u32 = 7;
/// Largest table size accepted (as DRBD's `al-extents`).
pub const MAX_TABLE_SIZE: u32 = 65534;
/// Largest extent number; the extent after it would be the "no extent" marker on disk.
const MAX_EXTENT: u64 = NO_EXTENT as u64 - 1;

const MAGIC: [u8; 4] = *b"TSAL";
const VERSION: u16 = 1;
const FLAG_FRESH: u16 = 1;
const NO_EXTENT: u32 = u32::MAX;
const HEADER_BYTES: usize = 40;
const UPDATE_BYTES: usize = 12;
const CRC_OFFSET: usize = TRANSACTION_BYTES - 4;

/// Why the activity log refused an operation, a transaction block or a ring.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AlError {
    /// The table size and ring size cannot work together.
    #[error("activity log of {table_size} extents in {slot_count} ring slots: {reason}")]
    InvalidGeometry {
        /// Slots of the active-extent table (`al-extents`).
        table_size: u32,
        /// Transaction slots in the ring.
        slot_count: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// A write touches more extents than one transaction can add.
    #[error(
        "a write touching {extents} extents exceeds the activity log's limit of {max}; split it"
    )]
    WriteTooLarge {
        /// Extents the write touches.
        extents: u64,
        /// Most extents one write may touch.
        max: u64,
    },
    /// A write reaches beyond the last extent the on-disk format can name.
    #[error("write of {len} bytes at {offset} is beyond the activity log's addressable extents")]
    BeyondAddressableExtents {
        /// Byte offset of the write.
        offset: u64,
        /// Length of the write.
        len: u64,
    },
    /// `end_write` for an extent with no write in flight (an engine bug).
    #[error("end of a write to extent {extent}, which has no write in flight")]
    NotInFlight {
        /// The extent.
        extent: u32,
    },
    /// `committed` for a transaction that is not the one being written (an engine bug).
    #[error("commit of transaction {got}, but the transaction being written is {expected:?}")]
    UnexpectedCommit {
        /// The transaction being written, if any.
        expected: Option<u64>,
        /// The number passed.
        got: u64,
    },
    /// A clean shutdown was asked for while writes or a transaction are in flight.
    #[error("activity log busy: {writes_in_flight} writes in flight, transaction pending: {transaction_pending}")]
    Busy {
        /// Admitted writes not yet ended.
        writes_in_flight: u64,
        /// Whether a transaction is being written.
        transaction_pending: bool,
    },
    /// The log was shut down cleanly and admits no more writes.
    #[error("activity log is shut down")]
    Closed,
    /// The block does not start with the transaction magic: the slot was never written.
    #[error("not an activity log transaction (bad magic)")]
    NotATransaction,
    /// The checksum does not match: a torn or corrupt block.
    #[error("activity log transaction checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum {
        /// CRC32C stored in the block.
        stored: u32,
        /// CRC32C of the block's contents.
        computed: u32,
    },
    /// A checksummed transaction of a format version this build does not know.
    #[error("activity log transaction format version {0} is not supported")]
    UnsupportedVersion(u16),
    /// A checksummed transaction whose fields are inconsistent (written by a buggy or foreign writer).
    #[error("malformed activity log transaction: {0}")]
    Malformed(&'static str),
    /// A transaction found in the wrong ring slot (misdirected write, or a ring of another size).
    #[error("ring slot {position} holds transaction {number}, which belongs in slot {expected}")]
    Misplaced {
        /// Slot it was read from.
        position: usize,
        /// Its transaction number.
        number: u64,
        /// Slot it belongs in.
        expected: u64,
    },
    /// A transaction written for a ring of another size than the one read.
    #[error(
        "transaction {number} was written for a ring of {written} slots, the ring read has {read}"
    )]
    RingSizeMismatch {
        /// Its transaction number.
        number: u64,
        /// Ring size recorded in it.
        written: u32,
        /// Slots read.
        read: usize,
    },
    /// The ring does not say what some table slots hold (more than one block lost): treat the whole volume as
    /// out of sync.
    #[error(
        "activity log ring does not describe {unknown_slots} table slots; resync the whole volume"
    )]
    Incomplete {
        /// Table slots whose extent is unknown.
        unknown_slots: u32,
    },
}

/// One change of the active-extent table: `slot` now holds `extent`, replacing `evicted` if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotUpdate {
    /// Table slot.
    pub slot: u32,
    /// Extent that leaves the log, if the slot held one.
    pub evicted: Option<u32>,
    /// Extent that enters the log.
    pub extent: u32,
}

/// One activity-log transaction: extents entering and leaving the log, plus a window of the whole table.
#[derive(Clone, PartialEq, Eq)]
pub struct Transaction {
    number: u64,
    slot_count: u32,
    table_size: u32,
    fresh: bool,
    updates: Vec<SlotUpdate>,
    context_start: u32,
    context: Vec<Option<u32>>,
}

impl fmt::Debug for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The context can hold hundreds of entries; its extent is enough to read a failing test.
        f.debug_struct("Transaction")
            .field("number", &self.number)
            .field("fresh", &self.fresh)
            .field("updates", &self.updates)
            .field("context_start", &self.context_start)
            .field("context_len", &self.context.len())
            .finish_non_exhaustive()
    }
}

impl Transaction {
    /// The transaction number (monotonic, never reused).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The ring slot this transaction must be written to.
    pub fn ring_slot(&self) -> u64 {
        self.number % u64::from(self.slot_count)
    }

    /// Whether this is the first transaction of a run (the table was empty before it).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// The table changes this transaction makes.
    pub fn updates(&self) -> &[SlotUpdate] {
        &self.updates
    }

    /// Extents that enter the log.
    pub fn added(&self) -> impl Iterator<Item = u32> + '_ {
        self.updates.iter().map(|u| u.extent)
    }

    /// Extents that leave the log: their bitmap pages must be flushed before this transaction is written,
    /// because once it is durable the log no longer covers them after a crash.
    pub fn evicted(&self) -> impl Iterator<Item = u32> + '_ {
        self.updates.iter().filter_map(|u| u.evicted)
    }

    /// The on-disk block.
    pub fn encode(&self) -> [u8; TRANSACTION_BYTES] {
        let mut b = [0u8; TRANSACTION_BYTES];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        let flags = if self.fresh { FLAG_FRESH } else { 0 };
        b[6..8].copy_from_slice(&flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.number.to_le_bytes());
        b[16..20].copy_from_slice(&self.slot_count.to_le_bytes());
        b[20..24].copy_from_slice(&self.table_size.to_le_bytes());
        // Both counts are bounded by the constants the constructors and decode enforce.
        b[24..26].copy_from_slice(&(self.updates.len() as u16).to_le_bytes());
        b[26..28].copy_from_slice(&(self.context.len() as u16).to_le_bytes());
        b[28..32].copy_from_slice(&self.context_start.to_le_bytes());
        let mut at = HEADER_BYTES;
        for u in &self.updates {
            put_u32(&mut b, &mut at, u.slot);
            put_u32(&mut b, &mut at, u.evicted.unwrap_or(NO_EXTENT));
            put_u32(&mut b, &mut at, u.extent);
        }
        for e in &self.context {
            put_u32(&mut b, &mut at, e.unwrap_or(NO_EXTENT));
        }
        let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
        b[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and validates an on-disk block. Only a canonical block is accepted, so
    /// `decode(b).encode() == b` whenever decoding succeeds.
    pub fn decode(b: &[u8; TRANSACTION_BYTES]) -> Result<Self, AlError> {
        if b[0..4] != MAGIC {
            return Err(AlError::NotATransaction);
        }
        let stored = u32_at(b, CRC_OFFSET);
        let computed = crc32c::crc32c(&b[..CRC_OFFSET]);
        if stored != computed {
            return Err(AlError::BadChecksum { stored, computed });
        }
        let version = u16_at(b, 4);
        if version != VERSION {
            return Err(AlError::UnsupportedVersion(version));
        }
        let flags = u16_at(b, 6);
        if flags & !FLAG_FRESH != 0 {
            return Err(AlError::Malformed("unknown flags"));
        }
        let number = u64::from(u32_at(b, 8)) | u64::from(u32_at(b, 12)) << 32;
        let slot_count = u32_at(b, 16);
        let table_size = u32_at(b, 20);
        let n_updates = usize::from(u16_at(b, 24));
        let n_context = usize::from(u16_at(b, 26));
        let context_start = u32_at(b, 28);
        if slot_count < 2 {
            return Err(AlError::Malformed("ring of fewer than 2 slots"));
        }
        if table_size == 0 || table_size > MAX_TABLE_SIZE {
            return Err(AlError::Malformed("table size out of range"));
        }
        if n_updates > MAX_UPDATES_PER_TRANSACTION {
            return Err(AlError::Malformed("too many updates"));
        }
        if n_context > MAX_CONTEXT_PER_TRANSACTION || n_context > table_size as usize {
            return Err(AlError::Malformed("context too long"));
        }
        if context_start >= table_size {
            return Err(AlError::Malformed("context start beyond the table"));
        }
        if b[32..HEADER_BYTES].iter().any(|&x| x != 0) {
            return Err(AlError::Malformed("reserved bytes set"));
        }
        let mut at = HEADER_BYTES;
        let mut updates = Vec::with_capacity(n_updates);
        for _ in 0..n_updates {
            let slot = take_u32(b, &mut at);
            let evicted = take_u32(b, &mut at);
            let extent = take_u32(b, &mut at);
            if slot >= table_size {
                return Err(AlError::Malformed("update of a slot beyond the table"));
            }
            if extent == NO_EXTENT || extent == evicted {
                return Err(AlError::Malformed("update without a new extent"));
            }
            if updates.iter().any(|u: &SlotUpdate| u.slot == slot) {
                return Err(AlError::Malformed("two updates of one slot"));
            }
            updates.push(SlotUpdate {
                slot,
                evicted: (evicted != NO_EXTENT).then_some(evicted),
                extent,
            });
        }
        let context: Vec<Option<u32>> = (0..n_context)
            .map(|_| {
                let e = take_u32(b, &mut at);
                (e != NO_EXTENT).then_some(e)
            })
            .collect();
        if b[at..CRC_OFFSET].iter().any(|&x| x != 0) {
            return Err(AlError::Malformed("bytes set after the context"));
        }
        let tx = Transaction {
            number,
            slot_count,
            table_size,
            fresh: flags & FLAG_FRESH != 0,
            updates,
            context_start,
            context,
        };
        // The context is the table after the updates; a block where they disagree cannot be trusted.
        for u in &tx.updates {
            if let Some(e) = tx.context_entry(u.slot) {
                if e != Some(u.extent) {
                    return Err(AlError::Malformed("context disagrees with an update"));
                }
            }
        }
        Ok(tx)
    }

    /// The context's value for table slot `slot`, if the context covers it.
    fn context_entry(&self, slot: u32) -> Option<Option<u32>> {
        let offset = (u64::from(slot) + u64::from(self.table_size) - u64::from(self.context_start))
            % u64::from(self.table_size);
        self.context.get(offset as usize).copied()
    }

    /// (table slot, extent) pairs of the context.
    fn context_slots(&self) -> impl Iterator<Item = (u32, Option<u32>)> + '_ {
        self.context.iter().enumerate().map(|(i, &e)| {
            let slot = (u64::from(self.context_start) + i as u64) % u64::from(self.table_size);
            (slot as u32, e)
        })
    }
}

/// What the engine must do before a data write, from [`ActivityLog::begin_write`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlDecision {
    /// Every extent of the write is on disk: write now.
    Proceed,
    /// Write this transaction first (after flushing the bitmap pages of its evicted extents), then call
    /// [`ActivityLog::committed`]; the write may go ahead after that.
    CommitFirst(Transaction),
    /// The write may go ahead once transaction `n` (being written, or the next one) is committed.
    AfterCommit(u64),
    /// Not admitted and nothing taken: retry after a commit or an `end_write` that returned `true`.
    Wait,
}

/// What [`recover`] found in the ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredAl {
    /// Extents that were in the log, ascending: the engine marks them out of sync in the bitmap.
    pub extents: Vec<u32>,
    /// Number for the next transaction ([`ActivityLog::resume`]).
    pub next_transaction: u64,
    /// Slots with a bad checksum (a torn or corrupt block), ignored.
    pub torn_slots: u32,
    /// Slots never written, ignored.
    pub unused_slots: u32,
}

impl RecoveredAl {
    /// The byte ranges `(offset, len)` of the recovered extents, cut to a volume of `data_size` bytes.
    pub fn byte_ranges(&self, data_size: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.extents.iter().filter_map(move |&e| {
            let offset = u64::from(e) << EXTENT_SHIFT;
            (offset < data_size).then(|| (offset, EXTENT_BYTES.min(data_size - offset)))
        })
    }
}

/// The in-memory activity log of one volume.
#[derive(Debug)]
pub struct ActivityLog {
    table_size: u32,
    slot_count: u32,
    context_len: u32,
    /// The table as of the newest sealed transaction (the one being written included).
    table: Vec<Option<u32>>,
    extents: HashMap<u32, Extent>,
    /// Committed extents with no write in flight, by the time they became idle: the eviction order.
    idle: BTreeMap<u64, u32>,
    /// Empty table slots not yet promised to a staged extent.
    free: Vec<u32>,
    clock: u64,
    next_number: u64,
    context_cursor: u32,
    /// No transaction sealed yet in this run: the next one is fresh.
    fresh: bool,
    in_flight: Option<Transaction>,
    /// Updates for the transaction after the one in flight.
    staged: Vec<SlotUpdate>,
    writes_in_flight: u64,
    closed: bool,
}

#[derive(Debug)]
struct Extent {
    slot: u32,
    refs: u32,
    state: ExtentState,
    /// Key in `idle` while the extent is there.
    idle_since: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExtentState {
    /// On disk; writes proceed.
    Active,
    /// Enters the log in this transaction; writes wait for its commit.
    Adding(u64),
    /// Leaves the log in this transaction; writes wait.
    Leaving(u64),
}

impl ActivityLog {
    /// A log for freshly created metadata: `table_size` hot extents (`al-extents`, e.g. 1237), `slot_count`
    /// transaction slots in the ring, numbering from 0.
    pub fn new(table_size: u32, slot_count: u32) -> Result<Self, AlError> {
        Self::resume(table_size, slot_count, 0)
    }

    /// A log continuing an existing ring, numbering from `next_transaction` ([`RecoveredAl::next_transaction`]).
    ///
    /// Its first transaction is *fresh*: it tells recovery that every extent of earlier runs is gone. So call
    /// this only once the extents [`recover`] returned are marked out of sync and that bitmap is flushed, or
    /// after a clean shutdown.
    pub fn resume(
        table_size: u32,
        slot_count: u32,
        next_transaction: u64,
    ) -> Result<Self, AlError> {
        if !(MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&table_size) {
            return Err(AlError::InvalidGeometry {
                table_size,
                slot_count,
                reason: "table size must be 7..=65534 extents",
            });
        }
        let context_len = table_size.min(MAX_CONTEXT_PER_TRANSACTION as u32);
        Self::with_context_len(table_size, slot_count, context_len, next_transaction)
    }

    /// The constructor proper; tests use small contexts to exercise the rotating window with small tables.
    fn with_context_len(
        table_size: u32,
        slot_count: u32,
        context_len: u32,
        next_transaction: u64,
    ) -> Result<Self, AlError> {
        let invalid = |reason| AlError::InvalidGeometry {
            table_size,
            slot_count,
            reason,
        };
        if table_size == 0 || context_len == 0 || context_len > table_size {
            return Err(invalid("empty table or context"));
        }
        if slot_count < 2 {
            return Err(invalid("the ring needs at least 2 slots"));
        }
        // A torn write loses one slot; the others must still describe the whole table.
        if u64::from(slot_count - 1) * u64::from(context_len) < u64::from(table_size) {
            return Err(invalid(
                "ring too small: the other slots cannot describe the table after a torn write",
            ));
        }
        Ok(ActivityLog {
            table_size,
            slot_count,
            context_len,
            table: vec![None; table_size as usize],
            extents: HashMap::new(),
            idle: BTreeMap::new(),
            free: (0..table_size).rev().collect(),
            clock: 0,
            next_number: next_transaction,
            context_cursor: 0,
            fresh: true,
            in_flight: None,
            staged: Vec::new(),
            writes_in_flight: 0,
            closed: false,
        })
    }

    /// Most extents a single write may touch.
    pub fn max_extents_per_write(&self) -> u64 {
        u64::from(self.table_size).min(MAX_UPDATES_PER_TRANSACTION as u64)
    }

    /// Slots of the active-extent table (`al-extents`).
    pub fn table_size(&self) -> u32 {
        self.table_size
    }

    /// Transaction slots in the on-disk ring.
    pub fn slot_count(&self) -> u32 {
        self.slot_count
    }

    /// Writes admitted and not yet ended.
    pub fn writes_in_flight(&self) -> u64 {
        self.writes_in_flight
    }

    /// The transaction being written, if any.
    pub fn pending_transaction(&self) -> Option<&Transaction> {
        self.in_flight.as_ref()
    }

    /// Whether nothing is in flight: no write and no transaction.
    pub fn is_idle(&self) -> bool {
        self.writes_in_flight == 0 && self.in_flight.is_none()
    }

    /// Whether `extent` is listed on disk (its addition committed, its eviction not).
    pub fn covers(&self, extent: u32) -> bool {
        self.extents
            .get(&extent)
            .is_some_and(|e| !matches!(e.state, ExtentState::Adding(_)))
    }

    /// Asks to write `len` bytes at `offset`. Unless the answer is [`AlDecision::Wait`], the write is admitted
    /// and the engine must call [`ActivityLog::end_write`] with the same range when it is done.
    pub fn begin_write(&mut self, offset: u64, len: u64) -> Result<AlDecision, AlError> {
        if self.closed {
            return Err(AlError::Closed);
        }
        let Some((first, last)) = extent_span(offset, len)? else {
            return Ok(AlDecision::Proceed);
        };
        let touched = u64::from(last - first) + 1;
        if touched > self.max_extents_per_write() {
            return Err(AlError::WriteTooLarge {
                extents: touched,
                max: self.max_extents_per_write(),
            });
        }

        // Look first, change nothing until the write is sure to be admitted.
        let mut misses = 0usize;
        let mut idle_hits = 0usize;
        let mut after: Option<u64> = None;
        for e in first..=last {
            match self.extents.get(&e) {
                None => misses += 1,
                Some(x) => match x.state {
                    ExtentState::Active if x.refs == 0 => idle_hits += 1,
                    ExtentState::Active => {}
                    ExtentState::Adding(n) => after = after.max(Some(n)),
                    ExtentState::Leaving(_) => return Ok(AlDecision::Wait),
                },
            }
        }
        let target = match &self.in_flight {
            None => self.next_number,
            Some(tx) => tx.number + 1,
        };
        if misses > 0 {
            // The write's own idle extents are not eviction candidates.
            let room = self.free.len() + self.idle.len() - idle_hits;
            if room < misses || self.staged.len() + misses > MAX_UPDATES_PER_TRANSACTION {
                return Ok(AlDecision::Wait);
            }
            after = Some(target);
        }

        for e in first..=last {
            if let Some(x) = self.extents.get_mut(&e) {
                if x.refs == 0 && x.state == ExtentState::Active {
                    self.idle.remove(&x.idle_since);
                }
                x.refs += 1;
            }
        }
        for e in first..=last {
            if self.extents.contains_key(&e) {
                continue;
            }
            let (slot, evicted) = match self.free.pop() {
                Some(slot) => (slot, None),
                None => {
                    // `room` above guarantees an idle extent is left.
                    let Some((_, victim)) = self.idle.pop_first() else {
                        unreachable!("activity log room was counted");
                    };
                    let v = self
                        .extents
                        .get_mut(&victim)
                        .expect("idle extents are tracked");
                    v.state = ExtentState::Leaving(target);
                    (v.slot, Some(victim))
                }
            };
            self.extents.insert(
                e,
                Extent {
                    slot,
                    refs: 1,
                    state: ExtentState::Adding(target),
                    idle_since: 0,
                },
            );
            self.staged.push(SlotUpdate {
                slot,
                evicted,
                extent: e,
            });
        }
        self.writes_in_flight += 1;

        Ok(match after {
            None => AlDecision::Proceed,
            Some(_) if self.in_flight.is_none() => AlDecision::CommitFirst(self.seal()),
            Some(n) => AlDecision::AfterCommit(n),
        })
    }

    /// Records that transaction `number` is durable. Returns the next transaction to write, if writes asked for
    /// extents meanwhile.
    pub fn committed(&mut self, number: u64) -> Result<Option<Transaction>, AlError> {
        let tx = match self.in_flight.take() {
            Some(tx) if tx.number == number => tx,
            other => {
                let expected = other.as_ref().map(|t| t.number);
                self.in_flight = other;
                return Err(AlError::UnexpectedCommit {
                    expected,
                    got: number,
                });
            }
        };
        for u in &tx.updates {
            if let Some(old) = u.evicted {
                self.extents.remove(&old);
            }
            let idle_since = self.tick();
            let x = self
                .extents
                .get_mut(&u.extent)
                .expect("added extents are tracked");
            x.state = ExtentState::Active;
            if x.refs == 0 {
                x.idle_since = idle_since;
                self.idle.insert(idle_since, u.extent);
            }
        }
        Ok((!self.staged.is_empty()).then(|| self.seal()))
    }

    /// Records that an admitted write of `len` bytes at `offset` has completed (or was abandoned). Returns
    /// whether an extent became idle, so a write that got [`AlDecision::Wait`] may now get in.
    pub fn end_write(&mut self, offset: u64, len: u64) -> Result<bool, AlError> {
        let Some((first, last)) = extent_span(offset, len)? else {
            return Ok(false);
        };
        if let Some(extent) =
            (first..=last).find(|e| self.extents.get(e).is_none_or(|x| x.refs == 0))
        {
            return Err(AlError::NotInFlight { extent });
        }
        let mut became_idle = false;
        for e in first..=last {
            let idle_since = self.tick();
            let x = self.extents.get_mut(&e).expect("checked above");
            x.refs -= 1;
            if x.refs == 0 && x.state == ExtentState::Active {
                x.idle_since = idle_since;
                self.idle.insert(idle_since, e);
                became_idle = true;
            }
        }
        self.writes_in_flight -= 1;
        Ok(became_idle)
    }

    /// Ends the log cleanly: refused while anything is in flight; afterwards no write is admitted, and the
    /// engine may mark the metadata clean (no activity-log resync needed at the next start).
    pub fn clean_shutdown(&mut self) -> Result<(), AlError> {
        if !self.is_idle() {
            return Err(AlError::Busy {
                writes_in_flight: self.writes_in_flight,
                transaction_pending: self.in_flight.is_some(),
            });
        }
        self.closed = true;
        Ok(())
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Turns the staged updates into the transaction to write next.
    fn seal(&mut self) -> Transaction {
        let updates = std::mem::take(&mut self.staged);
        for u in &updates {
            self.table[u.slot as usize] = Some(u.extent);
        }
        let start = self.context_cursor;
        let context = (0..self.context_len)
            .map(|i| self.table[((start + i) % self.table_size) as usize])
            .collect();
        self.context_cursor = (start + self.context_len) % self.table_size;
        let tx = Transaction {
            number: self.next_number,
            slot_count: self.slot_count,
            table_size: self.table_size,
            fresh: std::mem::take(&mut self.fresh),
            updates,
            context_start: start,
            context,
        };
        self.next_number += 1;
        self.in_flight = Some(tx.clone());
        tx
    }
}

/// Reads the ring back after a crash: which extents were in the log, and the next transaction number.
///
/// Blocks never written and blocks with a bad checksum (torn) are ignored; a checksummed block that is
/// malformed, of an unknown version or in the wrong slot is refused, as is a ring that does not describe
/// every table slot (see the module docs for why that cannot follow from one torn write).
pub fn recover(slots: &[[u8; TRANSACTION_BYTES]]) -> Result<RecoveredAl, AlError> {
    let mut valid = Vec::new();
    let (mut torn_slots, mut unused_slots) = (0, 0);
    for (position, block) in slots.iter().enumerate() {
        let tx = match Transaction::decode(block) {
            Ok(tx) => tx,
            Err(AlError::NotATransaction) => {
                unused_slots += 1;
                continue;
            }
            Err(AlError::BadChecksum { .. }) => {
                torn_slots += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        if tx.slot_count as usize != slots.len() {
            return Err(AlError::RingSizeMismatch {
                number: tx.number,
                written: tx.slot_count,
                read: slots.len(),
            });
        }
        if tx.ring_slot() != position as u64 {
            return Err(AlError::Misplaced {
                position,
                number: tx.number,
                expected: tx.ring_slot(),
            });
        }
        valid.push(tx);
    }
    // Each slot holds numbers of one residue, so after the placement check no number appears twice.
    valid.sort_by_key(|tx| tx.number);
    let Some(newest) = valid.last() else {
        return Ok(RecoveredAl {
            extents: Vec::new(),
            next_transaction: 0,
            torn_slots,
            unused_slots,
        });
    };
    let next_transaction = newest.number + 1;

    // Only the newest unbroken run of numbers can be trusted to hold every change since its first member.
    let mut start = valid.len() - 1;
    while start > 0 && valid[start - 1].number + 1 == valid[start].number {
        start -= 1;
    }
    if let Some(fresh) = valid[start..].iter().rposition(|tx| tx.fresh) {
        start += fresh;
    }
    let replay = &valid[start..];
    let table_size = replay[0].table_size;
    // `None`: not described by any transaction replayed; a fresh start knows every slot is empty.
    let mut table: Vec<Option<Option<u32>>> =
        vec![replay[0].fresh.then_some(None); table_size as usize];
    for tx in replay {
        // A run keeps one table size; a new one only comes with a fresh transaction, where replay starts.
        if tx.table_size != table_size {
            return Err(AlError::Malformed("table size changes within a run"));
        }
        for u in &tx.updates {
            table[u.slot as usize] = Some(Some(u.extent));
        }
        for (slot, e) in tx.context_slots() {
            table[slot as usize] = Some(e);
        }
    }
    let unknown_slots = table.iter().filter(|s| s.is_none()).count() as u32;
    if unknown_slots > 0 {
        return Err(AlError::Incomplete { unknown_slots });
    }
    let mut extents: Vec<u32> = table.into_iter().flatten().flatten().collect();
    extents.sort_unstable();
    extents.dedup();
    Ok(RecoveredAl {
        extents,
        next_transaction,
        torn_slots,
        unused_slots,
    })
}

/// First and last extent of a byte range, or `None` for an empty one.
fn extent_span(offset: u64, len: u64) -> Result<Option<(u32, u32)>, AlError> {
    if len == 0 {
        return Ok(None);
    }
    let beyond = AlError::BeyondAddressableExtents { offset, len };
    let end = offset.checked_add(len - 1).ok_or(beyond.clone())?;
    let (first, last) = (offset >> EXTENT_SHIFT, end >> EXTENT_SHIFT);
    if last > MAX_EXTENT {
        return Err(beyond);
    }
    Ok(Some((first as u32, last as u32)))
}

fn put_u32(b: &mut [u8], at: &mut usize, v: u32) {
    b[*at..*at + 4].copy_from_slice(&v.to_le_bytes());
    *at += 4;
}

fn take_u32(b: &[u8], at: &mut usize) -> u32 {
    let v = u32_at(b, *at);
    *at += 4;
    v
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    const X: u64 = EXTENT_BYTES;

    /// A 4 KiB write inside extent `e`.
    fn w(e: u32) -> (u64, u64) {
        (u64::from(e) * X, 4096)
    }

    fn begin(al: &mut ActivityLog, e: u32) -> AlDecision {
        let (o, l) = w(e);
        al.begin_write(o, l).unwrap()
    }

    fn end(al: &mut ActivityLog, e: u32) -> bool {
        let (o, l) = w(e);
        al.end_write(o, l).unwrap()
    }

    fn tx_of(d: AlDecision) -> Transaction {
        match d {
            AlDecision::CommitFirst(tx) => tx,
            other => panic!("expected CommitFirst, got {other:?}"),
        }
    }

    /// A log of 7 extents holding 0..7, all committed and idle, made idle in the order `idle_order`.
    fn full_log(idle_order: [u32; 7]) -> ActivityLog {
        let mut al = ActivityLog::new(7, 2).unwrap();
        let t0 = tx_of(begin(&mut al, 0));
        for e in 1..7 {
            assert_eq!(begin(&mut al, e), AlDecision::AfterCommit(1));
        }
        let t1 = al
            .committed(t0.number())
            .unwrap()
            .expect("the staged extents follow");
        assert_eq!(t1.added().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(al.committed(t1.number()).unwrap(), None);
        for e in idle_order {
            assert!(end(&mut al, e));
        }
        al
    }

    #[test]
    fn miss_commits_then_hits_proceed() {
        let mut al = ActivityLog::new(7, 2).unwrap();
        let tx = tx_of(begin(&mut al, 5));
        assert_eq!(tx.number(), 0);
        assert!(tx.is_fresh());
        assert_eq!(
            tx.updates(),
            &[SlotUpdate {
                slot: 0,
                evicted: None,
                extent: 5
            }]
        );
        assert!(!al.covers(5), "not on disk before the commit");
        assert_eq!(al.committed(0).unwrap(), None);
        assert!(al.covers(5));
        // A hit, even on an extent with a write in flight.
        assert_eq!(begin(&mut al, 5), AlDecision::Proceed);
        assert_eq!(al.writes_in_flight(), 2);
        assert!(!end(&mut al, 5), "still one write in flight");
        assert!(end(&mut al, 5));
        assert!(al.is_idle());
        // A write across an extent boundary touches both.
        let tx = tx_of(al.begin_write(6 * X - 512, 1024).unwrap());
        assert_eq!(tx.added().collect::<Vec<_>>(), vec![6]);
        assert!(!tx.is_fresh());
    }

    #[test]
    fn eviction_takes_the_least_recently_idle_extent() {
        let mut al = full_log([3, 0, 1, 2, 4, 5, 6]);
        let tx = tx_of(begin(&mut al, 9));
        assert_eq!(tx.evicted().collect::<Vec<_>>(), vec![3]);
        assert_eq!(
            tx.updates()[0].slot,
            3,
            "the new extent takes the evicted one's slot"
        );
        // The leaving extent is still on disk, but writes to it wait until it is gone.
        assert!(al.covers(3));
        assert_eq!(begin(&mut al, 3), AlDecision::Wait);
        al.committed(tx.number()).unwrap();
        assert!(!al.covers(3) && al.covers(9));
        // Now 3 is simply a miss; the next least recently idle (0) goes.
        let tx = tx_of(begin(&mut al, 3));
        assert_eq!(tx.evicted().collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn a_hit_refreshes_recency() {
        let mut al = full_log([0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(begin(&mut al, 0), AlDecision::Proceed);
        assert!(end(&mut al, 0));
        assert_eq!(
            tx_of(begin(&mut al, 9)).evicted().collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn waits_when_every_extent_is_busy() {
        let mut al = full_log([0, 1, 2, 3, 4, 5, 6]);
        for e in 0..7 {
            assert_eq!(begin(&mut al, e), AlDecision::Proceed);
        }
        assert_eq!(begin(&mut al, 9), AlDecision::Wait);
        assert_eq!(al.writes_in_flight(), 7, "a Wait takes nothing");
        assert!(end(&mut al, 5));
        let tx = tx_of(begin(&mut al, 9));
        assert_eq!(tx.evicted().collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn a_write_never_evicts_its_own_extent() {
        // Extent 6 is the least recently idle, but the write (extents 6 and 7) also touches it.
        let mut al = full_log([6, 0, 1, 2, 3, 4, 5]);
        let tx = tx_of(al.begin_write(7 * X - 512, 1024).unwrap());
        assert_eq!(
            tx.updates(),
            &[SlotUpdate {
                slot: 0,
                evicted: Some(0),
                extent: 7
            }]
        );
    }

    #[test]
    fn writes_do_not_overtake_the_transaction_that_adds_their_extent() {
        let mut al = ActivityLog::new(7, 2).unwrap();
        let t0 = tx_of(begin(&mut al, 1));
        // Same extent while T0 is being written: after T0, not a second transaction.
        assert_eq!(begin(&mut al, 1), AlDecision::AfterCommit(0));
        // New extents while T0 is being written are batched into T1.
        assert_eq!(begin(&mut al, 2), AlDecision::AfterCommit(1));
        assert_eq!(begin(&mut al, 3), AlDecision::AfterCommit(1));
        assert_eq!(begin(&mut al, 2), AlDecision::AfterCommit(1));
        // A write touching T0's and T1's extents waits for the later one.
        assert_eq!(
            al.begin_write(2 * X - 512, 1024).unwrap(),
            AlDecision::AfterCommit(1)
        );
        assert_eq!(
            al.committed(1),
            Err(AlError::UnexpectedCommit {
                expected: Some(0),
                got: 1
            })
        );
        let t1 = al.committed(t0.number()).unwrap().unwrap();
        assert_eq!(t1.number(), 1);
        assert_eq!(t1.added().collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(al.pending_transaction(), Some(&t1));
        assert_eq!(begin(&mut al, 1), AlDecision::Proceed);
        assert_eq!(al.committed(1).unwrap(), None);
        assert_eq!(begin(&mut al, 3), AlDecision::Proceed);
    }

    #[test]
    fn staging_is_bounded_by_one_transaction() {
        let mut al = ActivityLog::new(200, 2).unwrap();
        let t0 = tx_of(begin(&mut al, 0));
        for e in 1..=MAX_UPDATES_PER_TRANSACTION as u32 {
            assert_eq!(begin(&mut al, e), AlDecision::AfterCommit(1));
        }
        assert_eq!(begin(&mut al, 1000), AlDecision::Wait);
        let t1 = al.committed(t0.number()).unwrap().unwrap();
        assert_eq!(t1.updates().len(), MAX_UPDATES_PER_TRANSACTION);
        assert_eq!(begin(&mut al, 1000), AlDecision::AfterCommit(2));
    }

    #[test]
    fn refuses_bad_calls() {
        assert!(matches!(
            ActivityLog::new(6, 8),
            Err(AlError::InvalidGeometry { .. })
        ));
        assert!(matches!(
            ActivityLog::new(7, 1),
            Err(AlError::InvalidGeometry { .. })
        ));
        // 1237 extents need two transactions' contexts, so three slots (one may be torn).
        assert!(matches!(
            ActivityLog::new(1237, 2),
            Err(AlError::InvalidGeometry { .. })
        ));
        assert!(ActivityLog::new(1237, 3).is_ok());
        let mut al = ActivityLog::new(7, 2).unwrap();
        assert_eq!(
            al.begin_write(0, 64 * X + 1),
            Err(AlError::WriteTooLarge {
                extents: 65,
                max: 7
            })
        );
        assert!(matches!(
            al.begin_write(u64::MAX - 10, 5),
            Err(AlError::BeyondAddressableExtents { .. })
        ));
        assert_eq!(
            al.end_write(0, 512),
            Err(AlError::NotInFlight { extent: 0 })
        );
        assert_eq!(al.begin_write(0, 0), Ok(AlDecision::Proceed));
        assert_eq!(al.end_write(0, 0), Ok(false));
    }

    #[test]
    fn clean_shutdown_only_when_idle() {
        let mut al = ActivityLog::new(7, 2).unwrap();
        let tx = tx_of(begin(&mut al, 0));
        assert_eq!(
            al.clean_shutdown(),
            Err(AlError::Busy {
                writes_in_flight: 1,
                transaction_pending: true
            })
        );
        al.committed(tx.number()).unwrap();
        assert!(matches!(al.clean_shutdown(), Err(AlError::Busy { .. })));
        end(&mut al, 0);
        assert_eq!(al.clean_shutdown(), Ok(()));
        assert_eq!(al.begin_write(0, 512), Err(AlError::Closed));
    }

    #[test]
    fn encode_decode_round_trip_and_corruption() {
        let mut al = full_log([0, 1, 2, 3, 4, 5, 6]);
        let tx = tx_of(begin(&mut al, 77));
        let block = tx.encode();
        assert_eq!(&block[0..4], b"TSAL");
        assert_eq!(Transaction::decode(&block), Ok(tx.clone()));
        let mut torn = block;
        torn[2048..].fill(0);
        assert!(matches!(
            Transaction::decode(&torn),
            Err(AlError::BadChecksum { .. })
        ));
        assert_eq!(
            Transaction::decode(&[0; TRANSACTION_BYTES]),
            Err(AlError::NotATransaction)
        );
        // A checksummed block of another version is refused, not ignored.
        let mut v2 = block;
        v2[4] = 2;
        let crc = crc32c::crc32c(&v2[..CRC_OFFSET]);
        v2[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            Transaction::decode(&v2),
            Err(AlError::UnsupportedVersion(2))
        );
    }

    /// An engine that writes every transaction at once: the ring and the log after each step.
    struct Disk {
        ring: Vec<[u8; TRANSACTION_BYTES]>,
    }

    impl Disk {
        fn new(slots: u32) -> Self {
            Disk {
                ring: vec![[0; TRANSACTION_BYTES]; slots as usize],
            }
        }

        fn write(&mut self, tx: &Transaction) {
            self.ring[tx.ring_slot() as usize] = tx.encode();
        }

        /// One write to extent `e`, committing whatever it needs, then ended.
        fn touch(&mut self, al: &mut ActivityLog, e: u32) {
            let mut next = match begin(al, e) {
                AlDecision::CommitFirst(tx) => Some(tx),
                AlDecision::Proceed => None,
                other => panic!("unexpected {other:?}"),
            };
            while let Some(tx) = next {
                self.write(&tx);
                next = al.committed(tx.number()).unwrap();
            }
            end(al, e);
        }
    }

    fn covered(al: &ActivityLog, universe: u32) -> Vec<u32> {
        (0..universe).filter(|&e| al.covers(e)).collect()
    }

    #[test]
    fn recovers_a_wrapped_ring_with_a_rotating_context() {
        // 8 extents, 3 per context, 4 slots: no single transaction holds the whole table.
        let mut al = ActivityLog::with_context_len(8, 4, 3, 0).unwrap();
        let mut disk = Disk::new(4);
        assert_eq!(recover(&disk.ring).unwrap().unused_slots, 4);
        for e in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 10, 11, 12, 1, 13] {
            disk.touch(&mut al, e);
        }
        let r = recover(&disk.ring).unwrap();
        assert_eq!(r.extents, covered(&al, 20));
        assert_eq!(r.extents.len(), 8);
        assert_eq!(r.next_transaction, al.next_number);
        assert!(r.next_transaction > 4, "the ring wrapped");
        assert_eq!((r.torn_slots, r.unused_slots), (0, 0));
    }

    #[test]
    fn a_torn_last_transaction_is_ignored() {
        let mut al = ActivityLog::with_context_len(8, 4, 3, 0).unwrap();
        let mut disk = Disk::new(4);
        for e in 0..14 {
            disk.touch(&mut al, e);
        }
        let before = covered(&al, 20);
        let tx = tx_of(begin(&mut al, 14));
        assert_eq!(tx.evicted().count(), 1);
        // Power fails half way through the block: new first half, old second half.
        let slot = tx.ring_slot() as usize;
        disk.ring[slot][..2048].copy_from_slice(&tx.encode()[..2048]);
        let r = recover(&disk.ring).unwrap();
        assert_eq!(r.torn_slots, 1);
        assert_eq!(
            r.extents, before,
            "the evicted extent is still listed, 14 is not"
        );
        assert_eq!(r.next_transaction, tx.number());
    }

    #[test]
    fn two_lost_blocks_are_refused_not_guessed() {
        let mut al = ActivityLog::with_context_len(8, 4, 3, 0).unwrap();
        let mut disk = Disk::new(4);
        for e in 0..14 {
            disk.touch(&mut al, e);
        }
        let newest = (al.next_number - 1) % 4;
        disk.ring[newest as usize][100] ^= 1;
        disk.ring[((newest + 1) % 4) as usize][100] ^= 1;
        assert!(matches!(
            recover(&disk.ring),
            Err(AlError::Incomplete { .. })
        ));
    }

    #[test]
    fn misplaced_or_foreign_blocks_are_refused() {
        let mut al = ActivityLog::new(7, 4).unwrap();
        let mut disk = Disk::new(4);
        disk.touch(&mut al, 0);
        disk.ring.swap(0, 1);
        assert!(matches!(
            recover(&disk.ring),
            Err(AlError::Misplaced { position: 1, .. })
        ));
        assert!(matches!(
            recover(&disk.ring[1..]),
            Err(AlError::RingSizeMismatch { .. })
        ));
    }

    #[test]
    fn a_resumed_log_forgets_the_previous_run() {
        let mut al = ActivityLog::with_context_len(8, 4, 3, 0).unwrap();
        let mut disk = Disk::new(4);
        for e in 0..6 {
            disk.touch(&mut al, e);
        }
        // Crash: what a run of six transactions left behind.
        let r = recover(&disk.ring).unwrap();
        assert_eq!(r.extents, vec![0, 1, 2, 3, 4, 5]);
        let mut al = ActivityLog::with_context_len(8, 4, 3, r.next_transaction).unwrap();
        disk.touch(&mut al, 42);
        let r2 = recover(&disk.ring).unwrap();
        assert_eq!(r2.extents, vec![42]);
        assert_eq!(r2.next_transaction, r.next_transaction + 1);
    }

    #[test]
    fn byte_ranges_are_cut_to_the_volume() {
        let r = RecoveredAl {
            extents: vec![0, 2, 3],
            next_transaction: 0,
            torn_slots: 0,
            unused_slots: 0,
        };
        let size = 3 * X + 4096;
        assert_eq!(
            r.byte_ranges(size).collect::<Vec<_>>(),
            vec![(0, X), (2 * X, X), (3 * X, 4096)]
        );
        assert_eq!(r.byte_ranges(2 * X).collect::<Vec<_>>(), vec![(0, X)]);
    }

    fn transaction() -> impl Strategy<Value = Transaction> {
        (1u32..2000, 2u32..200, any::<u64>(), any::<bool>())
            .prop_flat_map(|(table_size, slot_count, number, fresh)| {
                let ctx_max = (table_size as usize).min(MAX_CONTEXT_PER_TRANSACTION);
                let extent = 0..NO_EXTENT;
                (
                    Just((table_size, slot_count, number, fresh)),
                    proptest::collection::btree_map(
                        0..table_size,
                        (proptest::option::of(extent.clone()), extent.clone()),
                        0..=MAX_UPDATES_PER_TRANSACTION.min(table_size as usize),
                    ),
                    0..table_size,
                    proptest::collection::vec(proptest::option::of(extent), 0..=ctx_max),
                )
            })
            .prop_map(
                |((table_size, slot_count, number, fresh), updates, context_start, context)| {
                    let mut tx = Transaction {
                        number,
                        slot_count,
                        table_size,
                        fresh,
                        updates: updates
                            .into_iter()
                            .map(|(slot, (evicted, extent))| SlotUpdate {
                                slot,
                                evicted: evicted.filter(|&v| v != extent),
                                extent,
                            })
                            .collect(),
                        context_start,
                        context,
                    };
                    // The context is the table after the updates.
                    for u in tx.updates.clone() {
                        let i = (u.slot + table_size - context_start) % table_size;
                        if let Some(c) = tx.context.get_mut(i as usize) {
                            *c = Some(u.extent);
                        }
                    }
                    tx
                },
            )
    }

    proptest! {
        #[test]
        fn codec_round_trips(tx in transaction()) {
            let block = tx.encode();
            prop_assert_eq!(Transaction::decode(&block), Ok(tx));
        }

        #[test]
        fn any_single_bit_flip_is_detected(tx in transaction(), bit in 0..TRANSACTION_BYTES * 8) {
            let mut block = tx.encode();
            block[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Transaction::decode(&block).is_err());
        }

        #[test]
        fn decode_is_canonical_on_any_checksummed_block(body in proptest::collection::vec(any::<u8>(), CRC_OFFSET - 4), small in any::<bool>()) {
            let mut block = [0u8; TRANSACTION_BYTES];
            block[..4].copy_from_slice(&MAGIC);
            block[4..CRC_OFFSET].copy_from_slice(&body);
            if small {
                // Plausible headers and a zero tail, so decoding gets past the first checks.
                block[4..8].copy_from_slice(&[1, 0, 0, 0]);
                block[18..20].fill(0);
                block[21..24].fill(0);
                block[25] = 0;
                block[27] = 0;
                block[29..40].fill(0);
                block[1000..CRC_OFFSET].fill(0);
            }
            let crc = crc32c::crc32c(&block[..CRC_OFFSET]);
            block[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
            if let Ok(tx) = Transaction::decode(&block) {
                prop_assert_eq!(tx.encode(), block);
            }
        }
    }

    /// One step of the crash simulation.
    #[derive(Clone, Debug)]
    enum Step {
        /// A write to `extent`, or across its end into the next one.
        Begin { extent: u32, across: bool },
        /// Completion of the `n`th (modulo) write that went ahead.
        End(usize),
        /// The transaction being written becomes durable.
        Commit,
        /// Power fails; the transaction being written is lost, torn after `sectors` of 8 sectors (new ones first
        /// or last), or complete; then recovery and a restart.
        Crash {
            outcome: u8,
            sectors: usize,
            new_first: bool,
        },
        /// A clean shutdown, if the log is idle, and a restart.
        Shutdown,
    }

    #[derive(Clone, Debug)]
    struct Geometry {
        table_size: u32,
        context_len: u32,
        slot_count: u32,
        universe: u32,
    }

    fn geometry() -> impl Strategy<Value = Geometry> {
        (2u32..9)
            .prop_flat_map(|t| (Just(t), 1..=t, 0u32..3, 1u32..=t + 3))
            .prop_map(|(table_size, context_len, extra, more)| Geometry {
                table_size,
                context_len,
                slot_count: 1 + table_size.div_ceil(context_len) + extra,
                universe: table_size + more,
            })
    }

    fn steps(universe: u32) -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            8 => (0..universe, any::<bool>()).prop_map(|(extent, across)| Step::Begin { extent, across }),
            5 => any::<usize>().prop_map(Step::End),
            5 => Just(Step::Commit),
            1 => (0u8..3, 1usize..8, any::<bool>())
                .prop_map(|(outcome, sectors, new_first)| Step::Crash { outcome, sectors, new_first }),
            1 => Just(Step::Shutdown),
        ];
        proptest::collection::vec(step, 0..300)
    }

    #[derive(Debug)]
    struct Write {
        offset: u64,
        len: u64,
        extents: Vec<u32>,
        /// `None`: went ahead (may have reached the disk); `Some(n)`: waits for transaction `n`.
        waits_for: Option<u64>,
    }

    /// The engine and its disk, with an oracle of what recovery must find.
    struct Sim {
        g: Geometry,
        al: ActivityLog,
        ring: Vec<[u8; TRANSACTION_BYTES]>,
        /// The transaction being written, and the time it was handed out.
        writing: Option<(Transaction, u64)>,
        writes: Vec<Write>,
        /// Extents to which a write went ahead (→ time of the latest), and which no transaction on disk evicted
        /// since.
        must_cover: BTreeMap<u32, u64>,
        clock: u64,
        /// Table slot → extent after the newest transaction on disk.
        durable: BTreeMap<u32, u32>,
        last_durable: Option<u64>,
    }

    impl Sim {
        fn new(g: Geometry) -> Self {
            Sim {
                al: ActivityLog::with_context_len(g.table_size, g.slot_count, g.context_len, 0)
                    .unwrap(),
                ring: vec![[0; TRANSACTION_BYTES]; g.slot_count as usize],
                g,
                writing: None,
                writes: Vec::new(),
                must_cover: BTreeMap::new(),
                clock: 0,
                durable: BTreeMap::new(),
                last_durable: None,
            }
        }

        fn in_flight_extents(&self) -> BTreeSet<u32> {
            self.writes
                .iter()
                .flat_map(|w| w.extents.iter().copied())
                .collect()
        }

        /// A transaction handed to the engine must not evict an extent with a write admitted.
        fn hand_out(&mut self, tx: Transaction) -> Result<(), TestCaseError> {
            let busy = self.in_flight_extents();
            for e in tx.evicted() {
                prop_assert!(
                    !busy.contains(&e),
                    "{:?} evicts extent {} with a write in flight",
                    tx,
                    e
                );
            }
            prop_assert!(self.writing.is_none(), "two transactions in flight");
            self.clock += 1;
            self.writing = Some((tx, self.clock));
            Ok(())
        }

        fn go_ahead(&mut self, extents: &[u32]) {
            self.clock += 1;
            for &e in extents {
                self.must_cover.insert(e, self.clock);
            }
        }

        fn make_durable(&mut self, tx: &Transaction, handed_out: u64) {
            if tx.is_fresh() {
                self.durable.clear();
            }
            for u in tx.updates() {
                self.durable.insert(u.slot, u.extent);
            }
            // Once the block is on disk (acknowledged or not) its evicted extents are no longer listed. That is
            // safe for writes that went ahead before the block was handed out: they had ended when the extent was
            // chosen, and the engine flushed their bitmap pages before issuing the block. A write let in later
            // stays owed, and recovery will be found not to cover it.
            for e in tx.evicted() {
                if self.must_cover.get(&e).is_some_and(|&t| t < handed_out) {
                    self.must_cover.remove(&e);
                }
            }
            self.last_durable = Some(tx.number());
        }

        fn step(&mut self, step: Step) -> Result<(), TestCaseError> {
            match step {
                Step::Begin { extent, across } => {
                    let (offset, len) = if across && extent + 1 < self.g.universe {
                        (u64::from(extent + 1) * X - 512, 1024)
                    } else {
                        (u64::from(extent) * X + 512, 512)
                    };
                    let extents: Vec<u32> =
                        ((offset / X) as u32..=((offset + len - 1) / X) as u32).collect();
                    let waits_for = match self.al.begin_write(offset, len).unwrap() {
                        AlDecision::Proceed => None,
                        AlDecision::CommitFirst(tx) => {
                            let n = tx.number();
                            self.hand_out(tx)?;
                            Some(n)
                        }
                        AlDecision::AfterCommit(n) => {
                            let writing = self.writing.as_ref().map(|(t, _)| t.number());
                            prop_assert!(writing == Some(n) || writing.map(|w| w + 1) == Some(n));
                            Some(n)
                        }
                        AlDecision::Wait => return Ok(()),
                    };
                    if waits_for.is_none() {
                        self.go_ahead(&extents);
                    }
                    self.writes.push(Write {
                        offset,
                        len,
                        extents,
                        waits_for,
                    });
                }
                Step::End(i) => {
                    let going: Vec<usize> = (0..self.writes.len())
                        .filter(|&i| self.writes[i].waits_for.is_none())
                        .collect();
                    if !going.is_empty() {
                        let w = self.writes.remove(going[i % going.len()]);
                        self.al.end_write(w.offset, w.len).unwrap();
                    }
                }
                Step::Commit => {
                    let Some((tx, handed_out)) = self.writing.take() else {
                        return Ok(());
                    };
                    self.ring[tx.ring_slot() as usize] = tx.encode();
                    self.make_durable(&tx, handed_out);
                    let next = self.al.committed(tx.number()).unwrap();
                    let mut released = Vec::new();
                    for w in &mut self.writes {
                        if w.waits_for.is_some_and(|n| n <= tx.number()) {
                            w.waits_for = None;
                            released.extend(&w.extents);
                        }
                    }
                    self.go_ahead(&released);
                    if let Some(next) = next {
                        self.hand_out(next)?;
                    }
                }
                Step::Crash {
                    outcome,
                    sectors,
                    new_first,
                } => {
                    if let Some((tx, handed_out)) = self.writing.take() {
                        let slot = tx.ring_slot() as usize;
                        let new = tx.encode();
                        match outcome {
                            0 => {}
                            1 => {
                                let cut = sectors * 512;
                                let block = &mut self.ring[slot];
                                if new_first {
                                    block[..cut].copy_from_slice(&new[..cut]);
                                } else {
                                    block[cut..].copy_from_slice(&new[cut..]);
                                }
                                match Transaction::decode(block) {
                                    Ok(found) if found == tx => self.make_durable(&tx, handed_out),
                                    Ok(found) => prop_assert!(found.number() < tx.number()),
                                    Err(e) => prop_assert!(
                                        matches!(
                                            e,
                                            AlError::BadChecksum { .. } | AlError::NotATransaction
                                        ),
                                        "torn block: {}",
                                        e
                                    ),
                                }
                            }
                            _ => {
                                self.ring[slot] = new;
                                self.make_durable(&tx, handed_out);
                            }
                        }
                    }
                    self.restart()?;
                }
                Step::Shutdown => {
                    let idle = self.writes.is_empty() && self.writing.is_none();
                    let result = self.al.clean_shutdown();
                    prop_assert_eq!(result.is_ok(), idle);
                    if idle {
                        self.restart()?;
                    }
                }
            }
            Ok(())
        }

        /// Recovery must cover every write that may have reached the disk, and list exactly the table of the
        /// newest durable transaction; then a new run starts from it.
        fn restart(&mut self) -> Result<(), TestCaseError> {
            let r =
                recover(&self.ring).map_err(|e| TestCaseError::fail(format!("recover: {e}")))?;
            let found: BTreeSet<u32> = r.extents.iter().copied().collect();
            let missing: Vec<_> = self
                .must_cover
                .keys()
                .filter(|e| !found.contains(e))
                .collect();
            prop_assert!(
                missing.is_empty(),
                "writes to extents {:?} are not covered",
                missing
            );
            let expected: BTreeSet<u32> = self.durable.values().copied().collect();
            prop_assert_eq!(found, expected);
            prop_assert_eq!(r.next_transaction, self.last_durable.map_or(0, |n| n + 1));
            // The engine marks `r.extents` out of sync and flushes the bitmap before resuming, so the new run owes
            // nothing for them.
            self.al = ActivityLog::with_context_len(
                self.g.table_size,
                self.g.slot_count,
                self.g.context_len,
                r.next_transaction,
            )
            .unwrap();
            self.writes.clear();
            self.must_cover.clear();
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Safety: after a crash at any point, every extent to which a write was allowed to proceed, and which
        /// no transaction that reached the disk evicted since, is in the recovered set.
        #[test]
        fn recovery_covers_every_write_that_may_have_reached_the_disk(
            (g, steps) in geometry().prop_flat_map(|g| { let u = g.universe; (Just(g), steps(u)) })
        ) {
            let mut sim = Sim::new(g);
            for step in steps {
                sim.step(step)?;
            }
            sim.step(Step::Crash { outcome: 1, sectors: 4, new_first: true })?;
        }
    }
}
