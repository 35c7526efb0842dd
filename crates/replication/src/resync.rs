//! Resync: copying the out-of-sync blocks of a [`DirtyBitmap`] to the peer, paced by a rate controller that
//! yields to application I/O; checksum-based resync and online verify. No I/O and no clock: time comes in as
//! `now: Duration` (time since any fixed origin the engine picks, the same for every call).
//!
//! # How the engine drives a resync
//! 1. [`ResyncPlan::new`] with the peer's bitmap, a [`ResyncConfig`] and the time the resync starts.
//! 2. [`ResyncPlan::next_request`] until it returns `None`; send each [`Request`] (the SyncSource reads and sends
//!    the data; a SyncTarget sends it as a data request, or as a [`ChecksumRequest`] for csums resync).
//!    When it returned `None`, call again after a completion, or at [`ResyncPlan::retry_at`] if that is `Some`.
//! 3. [`ResyncPlan::completed`] when the request's data is on the target's disk (`ok`), or failed (`!ok`).
//! 4. [`ResyncPlan::app_write`] for every application write while the resync runs (see the rule below), and
//!    [`ResyncPlan::app_read`] for application reads, so the controller sees the application's load.
//! 5. Done when [`ResyncPlan::is_finished`]; [`ResyncPlan::progress`] at any time for `done:NN.NN`, rate and ETA.
//!
//! # Planning
//! The plan walks the dirty runs in block order from a cursor and sends each as requests of at most
//! [`ResyncConfig::max_request_bytes`]: adjacent dirty blocks are coalesced, a clean block is never included,
//! and the last request stops at the end of the volume (a partial last block is sent as its bytes only). So a
//! resync without application writes or failures sends exactly [`DirtyBitmap::dirty_bytes`] (the spec allows
//! 1.05×). Blocks stay dirty while in flight and are cleared when their request completes; blocks that became
//! dirty again behind the cursor (failed requests, application writes) are found when the walk wraps around.
//!
//! # The rule for application writes during resync
//! *A block written by the application while a resync request covering it is in flight is not cleared by that
//! request's completion; it stays dirty and is sent again.* The request may have read the block before the
//! write, so the data it delivers can be older than the source's; clearing the bit would leave the peer stale
//! with nothing left to fix it (invariant 4). [`ResyncPlan::app_write`] marks the written blocks dirty and
//! records the overlap with every in-flight request; [`ResyncPlan::completed`] then clears only the blocks of
//! the request that no write touched meanwhile.
//!
//! The engine calls `app_write` once the write is on the disk that resync data is read from (calling it again
//! later, or also earlier, is harmless: marking is idempotent). Then every interleaving is covered:
//! - a request issued after the call reads the new data;
//! - a request in flight at the call may have read old data: its completion keeps the blocks dirty;
//! - a request that completed before the call may have delivered old data: the call marks the blocks again.
//!
//! DRBD serialises instead: a resync request and an overlapping application write wait for each other (locks on
//! resync extents, later an interval tree of conflicting requests). The rule here never delays the application;
//! the price is at most one more copy of a block that is written during its own resync.
//!
//! # Rate controller
//! [`RateController`] follows the idea of DRBD's dynamic resync controller (`c-plan-ahead`, `c-fill-target`,
//! `c-max-rate`, `c-min-rate`): every [`RateConfig::step`] (DRBD: 100 ms) it decides how many bytes may be
//! requested, aiming at a fill target of bytes in flight and spreading each correction over the plan-ahead
//! window so the rate moves smoothly; the output is capped by `c-max-rate`, and falls to `c-min-rate` while
//! the application's I/O is above a threshold, so resync yields to the application but never stops. With
//! [`RateTarget::Fixed`] it is a fixed rate (DRBD's `resync-rate` with `c-plan-ahead 0`). The plan turns each
//! step's output into a byte credit; a request may be issued while the credit is positive and costs its length,
//! so requests stay large (the spec wants ≥ 70% of a raw local copy) and the average rate is still the
//! controller's.
//!
//! # Checksum-based resync and online verify
//! With csums the target sends a [`ChecksumRequest`] (the digest of each of its blocks in the request, see
//! [`block_digest`]) and the source sends data only for the blocks whose digests differ
//! ([`ChecksumRequest::ranges_to_send`]): after a full sync of mostly identical disks, little data moves.
//! [`Verify`] walks the whole device in requests, compares the digests of both sides block by block, marks
//! differing blocks out of sync in the bitmap and counts them. It marks, never repairs: a later resync copies
//! them, on the operator's command.
//!
//! # Architecture invariants
//! - In-flight requests never overlap; every block of a request was dirty when it was issued.
//! - A block leaves the bitmap only through the successful completion of a request that covered it and that no
//!   application write overlapped while in flight.
//! - No request crosses the end of the volume; requests are whole blocks except a partial last block.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::bitmap::{BitmapError, DirtyBitmap, BLOCK_BYTES};

/// Bytes of a block digest (SHA-256).
pub const DIGEST_BYTES: usize = 32;

/// The digest of one block, as exchanged by checksum-based resync and online verify.
pub type BlockDigest = [u8; DIGEST_BYTES];

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const NANOS_PER_SEC: u128 = 1_000_000_000;
/// The controller plans at most this many steps ahead; a larger window is a configuration mistake that would
/// only cost memory.
const MAX_PLAN_STEPS: u64 = 65_536;
/// A controller step covers at most this many nominal steps: after a long pause (engine busy, process stopped)
/// the controller must not hand out a burst worth the whole pause.
const MAX_STEP_SPAN: u32 = 10;

/// Why a resync, verify or rate-controller operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ResyncError {
    /// A configuration value is out of its range.
    #[error("invalid resync configuration: {field} {reason}")]
    InvalidConfig {
        /// The configuration field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A completion names a request that is not in flight (never issued, already completed or aborted, or with
    /// another range than was issued).
    #[error("request {id} ({len} bytes at {offset}) is not in flight")]
    NotInFlight {
        /// The request's id.
        id: u64,
        /// The request's first byte.
        offset: u64,
        /// The request's length.
        len: u64,
    },
    /// Data handed in does not have the request's length.
    #[error("{actual} bytes of data for a request of {expected} bytes")]
    DataLength {
        /// The request's length.
        expected: u64,
        /// Bytes given.
        actual: u64,
    },
    /// A list of block digests does not have one digest per block of the request.
    #[error("{actual} block digests for a request of {expected} blocks")]
    DigestCount {
        /// Blocks in the request.
        expected: u64,
        /// Digests given.
        actual: u64,
    },
    /// A bitmap operation was refused: a range beyond the volume, or a bitmap of another volume size.
    #[error(transparent)]
    Bitmap(#[from] BitmapError),
}

/// One resync or verify request: `len` bytes at `offset`, whole blocks except a partial last block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    /// Identifies the request among those in flight; never reused by one plan.
    pub id: u64,
    /// First byte, a multiple of [`BLOCK_BYTES`].
    pub offset: u64,
    /// Bytes; a multiple of [`BLOCK_BYTES`] unless the request ends at the end of the volume.
    pub len: u64,
}

impl Request {
    /// The first block of the request.
    pub fn first_block(&self) -> u64 {
        self.offset / BLOCK_BYTES
    }

    /// The number of blocks the request covers (a partial last block counts as one).
    pub fn blocks(&self) -> u64 {
        self.len.div_ceil(BLOCK_BYTES)
    }
}

/// A byte range of the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

/// How far a resync or verify is, to two decimals, rounded down: 100.00 only when it is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PercentDone {
    hundredths: u16,
}

impl PercentDone {
    /// `done` of `total`, rounded down to a hundredth of a percent; nothing to do is 100.00.
    pub fn of(done: u64, total: u64) -> Self {
        if total == 0 {
            return PercentDone { hundredths: 10_000 };
        }
        let hundredths = u128::from(done.min(total)) * 10_000 / u128::from(total);
        // At most 10_000 because done ≤ total.
        PercentDone {
            hundredths: hundredths as u16,
        }
    }

    /// Hundredths of a percent, 0..=10_000.
    pub fn hundredths(self) -> u16 {
        self.hundredths
    }
}

impl fmt::Display for PercentDone {
    /// `NN.NN`, as in `done:NN.NN` of DRBD's status.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.hundredths / 100, self.hundredths % 100)
    }
}

/// Progress of a resync or verify at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes to do: for a resync, the dirty bytes at the start plus those dirtied again since.
    pub total_bytes: u64,
    /// Bytes done.
    pub done_bytes: u64,
    /// `done_bytes` of `total_bytes`, as DRBD's `done:NN.NN`.
    pub percent_done: PercentDone,
    /// Average rate since the start, KiB/s.
    pub rate_kib_s: u64,
    /// Time left at the average rate; `None` while nothing has been done yet.
    pub eta: Option<Duration>,
}

impl Progress {
    fn at(total_bytes: u64, done_bytes: u64, moved_bytes: u64, elapsed: Duration) -> Self {
        let left = total_bytes.saturating_sub(done_bytes);
        let eta = if left == 0 {
            Some(Duration::ZERO)
        } else if moved_bytes == 0 || elapsed.is_zero() {
            None
        } else {
            // left / (moved / elapsed), in exact integer arithmetic.
            let nanos = u128::from(left) * elapsed.as_nanos() / u128::from(moved_bytes);
            Some(duration_from_nanos(nanos))
        };
        Progress {
            total_bytes,
            done_bytes,
            percent_done: PercentDone::of(done_bytes, total_bytes),
            rate_kib_s: rate_kib_s(moved_bytes, elapsed),
            eta,
        }
    }
}

/// What the rate controller aims at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateTarget {
    /// Keep this many bytes requested and not yet acknowledged (DRBD `c-fill-target`); the rate follows what the
    /// link and the peer's disk absorb, up to the cap.
    Fill {
        /// Bytes in flight to aim at.
        bytes: u64,
    },
    /// Request at a fixed rate (DRBD `resync-rate` with `c-plan-ahead 0`), still capped and still yielding to
    /// application I/O.
    Fixed {
        /// The rate, KiB/s.
        rate_kib_s: u64,
    },
}

/// Settings of the [`RateController`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateConfig {
    /// What the controller aims at.
    pub target: RateTarget,
    /// How often the controller decides (DRBD: 100 ms).
    pub step: Duration,
    /// Over how long a correction of the fill level is spread (DRBD `c-plan-ahead`, default 2 s); at least one
    /// step.
    pub plan_ahead: Duration,
    /// The floor: resync never runs slower, and falls to it while the application is busy (DRBD `c-min-rate`).
    pub min_rate_kib_s: u64,
    /// The cap (DRBD `c-max-rate`).
    pub max_rate_kib_s: u64,
    /// Application I/O above this rate counts as busy and holds resync at `min_rate_kib_s`.
    pub app_io_threshold_kib_s: u64,
}

impl Default for RateConfig {
    /// DRBD's step, plan-ahead and `c-min-rate` (250 KiB/s); a fill target of 8 MiB and a cap of 4 GiB/s
    /// (DRBD's largest `c-max-rate`) instead of DRBD's 50 KiB and 100 MiB/s, which are sized for a congested
    /// WAN and would keep a local resync far below the spec's 70% of a raw copy; busy above 1 MiB/s of
    /// application I/O, so a trickle (metadata, monitoring) does not stall resync.
    fn default() -> Self {
        RateConfig {
            target: RateTarget::Fill { bytes: 8 * MIB },
            step: Duration::from_millis(100),
            plan_ahead: Duration::from_secs(2),
            min_rate_kib_s: 250,
            max_rate_kib_s: 4 * MIB,
            app_io_threshold_kib_s: KIB,
        }
    }
}

impl RateConfig {
    /// No pacing at all: every step allows everything (tests, or a link used by nothing else).
    pub fn unlimited() -> Self {
        RateConfig {
            target: RateTarget::Fixed {
                rate_kib_s: u64::MAX,
            },
            step: Duration::from_millis(100),
            plan_ahead: Duration::from_millis(100),
            min_rate_kib_s: u64::MAX,
            max_rate_kib_s: u64::MAX,
            app_io_threshold_kib_s: u64::MAX,
        }
    }
}

/// One step's inputs to the [`RateController`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControllerInput {
    /// The time of this step.
    pub now: Duration,
    /// Bytes of requests completed since the last step.
    pub acked_bytes: u64,
    /// Bytes requested and not yet completed, now.
    pub in_flight_bytes: u64,
    /// The application's I/O rate observed since the last step, KiB/s.
    pub app_io_kib_s: u64,
}

/// Decides, step by step, how many bytes resync may request: DRBD's dynamic controller idea, deterministic.
///
/// Each step, with `dt` the time since the last step (the nominal step the first time; at most ten steps):
/// - [`RateTarget::Fixed`]: `rate × dt`.
/// - [`RateTarget::Fill`]: the bytes acknowledged since the last step are requested again (keeping the fill
///   level), plus this step's share of the planned corrections. The correction `target − in flight − already
///   planned` is split evenly over the plan-ahead window's steps and added to each of them; each step takes the
///   first planned slot. A large gap is thus closed over `plan_ahead`, not in one burst, and a gap the link
///   cannot absorb shows up as bytes still in flight, which stops further corrections.
/// - The result is kept within `[min_rate × dt, max_rate × dt]`; while the application's I/O is above
///   [`RateConfig::app_io_threshold_kib_s`] the cap is `min_rate × dt` too.
#[derive(Clone, Debug)]
pub struct RateController {
    config: RateConfig,
    /// Corrections planned for the next steps, in bytes; the front is the next step's.
    plan: VecDeque<i64>,
    plan_total: i64,
    last_step_at: Option<Duration>,
    last_output_bytes: u64,
    last_dt: Duration,
    throttled: bool,
}

impl RateController {
    /// A controller, after checking the settings.
    pub fn new(config: RateConfig) -> Result<Self, ResyncError> {
        let invalid = |field, reason| Err(ResyncError::InvalidConfig { field, reason });
        if config.step.is_zero() {
            return invalid("step", "must be longer than zero");
        }
        if config.min_rate_kib_s > config.max_rate_kib_s {
            return invalid("min_rate_kib_s", "must not exceed max_rate_kib_s");
        }
        if config.max_rate_kib_s == 0 {
            return invalid("max_rate_kib_s", "must be above zero");
        }
        let steps = config.plan_ahead.as_nanos() / config.step.as_nanos();
        if steps == 0 {
            return invalid("plan_ahead", "must be at least one step");
        }
        if steps > u128::from(MAX_PLAN_STEPS) {
            return invalid("plan_ahead", "must be at most 65536 steps");
        }
        match config.target {
            RateTarget::Fill { bytes: 0 } => {
                return invalid("target", "fill target must be above zero")
            }
            RateTarget::Fixed { rate_kib_s: 0 } => {
                return invalid("target", "fixed rate must be above zero")
            }
            _ => {}
        }
        Ok(RateController {
            config,
            plan: VecDeque::from(vec![0; steps as usize]),
            plan_total: 0,
            last_step_at: None,
            last_output_bytes: 0,
            last_dt: config.step,
            throttled: false,
        })
    }

    /// The settings.
    pub fn config(&self) -> &RateConfig {
        &self.config
    }

    /// One controller step: how many bytes may be requested now.
    pub fn step(&mut self, input: ControllerInput) -> u64 {
        let step = self.config.step;
        let dt = match self.last_step_at {
            None => step,
            Some(previous) => input.now.saturating_sub(previous),
        }
        .clamp(Duration::from_nanos(1), step.saturating_mul(MAX_STEP_SPAN));
        self.last_step_at = Some(input.now);
        self.throttled = input.app_io_kib_s > self.config.app_io_threshold_kib_s;
        let cap_rate = if self.throttled {
            self.config.min_rate_kib_s
        } else {
            self.config.max_rate_kib_s
        };
        let cap = bytes_in(cap_rate, dt);
        let floor = bytes_in(self.config.min_rate_kib_s, dt).min(cap);
        let wanted = match self.config.target {
            RateTarget::Fixed { rate_kib_s } => bytes_in(rate_kib_s, dt),
            RateTarget::Fill { bytes } => {
                self.plan_fill(bytes, input.acked_bytes, input.in_flight_bytes)
            }
        };
        let output = wanted.clamp(floor, cap);
        self.last_output_bytes = output;
        self.last_dt = dt;
        output
    }

    /// The rate the last step allowed, KiB/s (DRBD's current sync rate).
    pub fn rate_kib_s(&self) -> u64 {
        rate_kib_s(self.last_output_bytes, self.last_dt)
    }

    /// Whether the last step found the application busy and held resync at the minimum rate.
    pub fn is_throttled(&self) -> bool {
        self.throttled
    }

    /// The fill target's step: spread the new correction over the window, take the first slot.
    fn plan_fill(&mut self, target_bytes: u64, acked_bytes: u64, in_flight_bytes: u64) -> u64 {
        let steps = self.plan.len() as i64;
        let correction = to_i64(target_bytes)
            .saturating_sub(to_i64(in_flight_bytes))
            .saturating_sub(self.plan_total);
        let per_step = correction / steps;
        if per_step != 0 {
            self.plan
                .iter_mut()
                .for_each(|slot| *slot = slot.saturating_add(per_step));
            self.plan_total = self
                .plan_total
                .saturating_add(per_step.saturating_mul(steps));
        }
        let now = self.plan.pop_front().unwrap_or(0);
        self.plan.push_back(0);
        self.plan_total = self.plan_total.saturating_sub(now);
        let wanted = to_i64(acked_bytes).saturating_add(now);
        u64::try_from(wanted).unwrap_or(0)
    }
}

/// Settings of a resync or verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncConfig {
    /// The largest request, bytes; a whole number of blocks (DRBD's largest is 1 MiB).
    pub max_request_bytes: u64,
    /// Requests in flight at most; bounds the memory both nodes spend on resync.
    pub max_in_flight: usize,
    /// The rate controller's settings.
    pub rate: RateConfig,
}

impl Default for ResyncConfig {
    /// 1 MiB requests, 16 in flight, the default [`RateConfig`].
    fn default() -> Self {
        ResyncConfig {
            max_request_bytes: MIB,
            max_in_flight: 16,
            rate: RateConfig::default(),
        }
    }
}

impl ResyncConfig {
    fn check(&self) -> Result<u64, ResyncError> {
        if self.max_request_bytes < BLOCK_BYTES
            || !self.max_request_bytes.is_multiple_of(BLOCK_BYTES)
        {
            return Err(ResyncError::InvalidConfig {
                field: "max_request_bytes",
                reason: "must be a whole number of 4 KiB blocks, at least one",
            });
        }
        if self.max_in_flight == 0 {
            return Err(ResyncError::InvalidConfig {
                field: "max_in_flight",
                reason: "must be at least one",
            });
        }
        Ok(self.max_request_bytes / BLOCK_BYTES)
    }
}

/// Turns rate-controller steps into a byte credit that requests spend.
#[derive(Clone, Debug)]
struct Pacing {
    controller: RateController,
    /// May go below zero by less than one request: a request is issued while the credit is positive and costs
    /// its whole length, so requests stay large at any rate.
    credit_bytes: i64,
    last_step_at: Option<Duration>,
    next_step_at: Option<Duration>,
    acked_bytes: u64,
    app_bytes: u64,
}

impl Pacing {
    fn new(rate: RateConfig) -> Result<Self, ResyncError> {
        Ok(Pacing {
            controller: RateController::new(rate)?,
            credit_bytes: 0,
            last_step_at: None,
            next_step_at: None,
            acked_bytes: 0,
            app_bytes: 0,
        })
    }

    /// Runs a controller step if one is due.
    fn advance(&mut self, now: Duration, in_flight_bytes: u64, max_request_bytes: u64) {
        if self.next_step_at.is_some_and(|at| now < at) {
            return;
        }
        let step = self.controller.config().step;
        let since = self.last_step_at.map_or(step, |at| now.saturating_sub(at));
        let output = self.controller.step(ControllerInput {
            now,
            acked_bytes: self.acked_bytes,
            in_flight_bytes,
            app_io_kib_s: rate_kib_s(self.app_bytes, since),
        });
        // Unspent credit carries over, but only up to one step's worth or one request: waiting for completions
        // must not build up a burst.
        let ceiling = to_i64(output.max(max_request_bytes));
        self.credit_bytes = self
            .credit_bytes
            .saturating_add(to_i64(output))
            .min(ceiling);
        self.acked_bytes = 0;
        self.app_bytes = 0;
        self.last_step_at = Some(now);
        self.next_step_at = Some(now.saturating_add(step));
    }

    fn may_send(&self) -> bool {
        self.credit_bytes > 0
    }

    fn spend(&mut self, bytes: u64) {
        self.credit_bytes = self.credit_bytes.saturating_sub(to_i64(bytes));
    }
}

/// A request in flight, keyed in [`ResyncPlan`] by its first block.
#[derive(Clone, Debug)]
struct InFlight {
    id: u64,
    blocks: u64,
    len: u64,
    /// One bit per block of the request: written by the application since the request was issued.
    rewritten: Vec<u64>,
}

impl InFlight {
    fn is_rewritten(&self, i: u64) -> bool {
        self.rewritten[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn mark_rewritten(&mut self, from: u64, to: u64) {
        for i in from..to {
            self.rewritten[(i / 64) as usize] |= 1 << (i % 64);
        }
    }
}

/// The resync planner of the side that issues requests (the SyncSource sending data, or a SyncTarget asking
/// for it): walks the bitmap's dirty runs, keeps the requests in flight and clears blocks as they complete.
#[derive(Clone, Debug)]
pub struct ResyncPlan {
    bitmap: DirtyBitmap,
    max_request_blocks: u64,
    max_request_bytes: u64,
    max_in_flight: usize,
    in_flight: BTreeMap<u64, InFlight>,
    in_flight_bytes: u64,
    /// Where the walk goes on; blocks dirtied behind it are found when it wraps.
    cursor: u64,
    next_id: u64,
    pacing: Pacing,
    started_at: Duration,
    total_bytes: u64,
    synced_bytes: u64,
    sent_bytes: u64,
}

impl ResyncPlan {
    /// A plan to resync the dirty blocks of `bitmap`, starting at `now`.
    pub fn new(
        bitmap: DirtyBitmap,
        config: ResyncConfig,
        now: Duration,
    ) -> Result<Self, ResyncError> {
        let max_request_blocks = config.check()?;
        Ok(ResyncPlan {
            total_bytes: bitmap.dirty_bytes(),
            bitmap,
            max_request_blocks,
            max_request_bytes: config.max_request_bytes,
            max_in_flight: config.max_in_flight,
            in_flight: BTreeMap::new(),
            in_flight_bytes: 0,
            cursor: 0,
            next_id: 0,
            pacing: Pacing::new(config.rate)?,
            started_at: now,
            synced_bytes: 0,
            sent_bytes: 0,
        })
    }

    /// The next request to send, if the in-flight limit and the rate controller allow one and a dirty block is
    /// not yet in flight.
    pub fn next_request(&mut self, now: Duration) -> Option<Request> {
        self.pacing
            .advance(now, self.in_flight_bytes, self.max_request_bytes);
        if self.in_flight.len() >= self.max_in_flight || !self.pacing.may_send() {
            return None;
        }
        let (first, count) = self.find_next(self.cursor).or_else(|| self.find_next(0))?;
        let offset = first * BLOCK_BYTES;
        let len = (count * BLOCK_BYTES).min(self.bitmap.data_size() - offset);
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight.insert(
            first,
            InFlight {
                id,
                blocks: count,
                len,
                rewritten: vec![0; count.div_ceil(64) as usize],
            },
        );
        self.in_flight_bytes += len;
        self.sent_bytes += len;
        self.cursor = first + count;
        self.pacing.spend(len);
        Some(Request { id, offset, len })
    }

    /// When `next_request` returned `None` for lack of rate credit, the time to ask again; `None` when only a
    /// completion (or nothing) can make a new request possible.
    pub fn retry_at(&self) -> Option<Duration> {
        if self.in_flight.len() >= self.max_in_flight || self.pacing.may_send() {
            return None;
        }
        self.find_next(0)?;
        self.pacing.next_step_at
    }

    /// A request has completed: on success its blocks are clean, except those the application wrote while it
    /// was in flight; on failure they stay dirty and are sent again later.
    pub fn completed(&mut self, request: &Request, ok: bool) -> Result<(), ResyncError> {
        let first = request.first_block();
        let matches = self.in_flight.get(&first).is_some_and(|f| {
            f.id == request.id && f.len == request.len && request.offset.is_multiple_of(BLOCK_BYTES)
        });
        let Some(done) = matches.then(|| self.in_flight.remove(&first)).flatten() else {
            return Err(ResyncError::NotInFlight {
                id: request.id,
                offset: request.offset,
                len: request.len,
            });
        };
        self.in_flight_bytes -= done.len;
        self.pacing.acked_bytes = self.pacing.acked_bytes.saturating_add(done.len);
        let before = self.bitmap.dirty_bytes();
        if ok {
            let mut i = 0;
            while i < done.blocks {
                if done.is_rewritten(i) {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < done.blocks && !done.is_rewritten(i) {
                    i += 1;
                }
                self.bitmap.clear_blocks(first + start, i - start)?;
            }
            self.synced_bytes += before - self.bitmap.dirty_bytes();
        } else {
            // Nothing clears a block before its request succeeds, so they are still dirty; marking them again
            // keeps the failure rule true on its own, whatever else changes.
            self.bitmap.set_blocks(first, done.blocks)?;
            self.total_bytes += self.bitmap.dirty_bytes() - before;
        }
        Ok(())
    }

    /// The application wrote `len` bytes at `offset` (call once the write is on the disk resync reads from):
    /// the blocks are dirty again, and an in-flight request covering them will not clear them.
    pub fn app_write(&mut self, offset: u64, len: u64) -> Result<(), ResyncError> {
        if len == 0 {
            return Ok(());
        }
        let before = self.bitmap.dirty_bytes();
        self.bitmap.set_range(offset, len)?;
        self.total_bytes += self.bitmap.dirty_bytes() - before;
        self.rewritten_in_flight(offset, len);
        Ok(())
    }

    /// The target wrote `len` bytes at `offset` to its own disk as well as to this one (a Primary whose disk
    /// resyncs from here): blocks not in flight need nothing (what is sent later is read after this write), but an
    /// in-flight request may carry the older data, which then lands on the target after its write: those blocks
    /// stay dirty when the request completes, and are sent again.
    pub fn rewritten_in_flight(&mut self, offset: u64, len: u64) {
        if len == 0
            || offset
                .checked_add(len)
                .is_none_or(|end| end > self.bitmap.data_size())
        {
            return;
        }
        self.pacing.app_bytes = self.pacing.app_bytes.saturating_add(len);
        let first = offset / BLOCK_BYTES;
        let end = (offset + len - 1) / BLOCK_BYTES + 1;
        // In-flight requests do not overlap and are ordered by first block: walk back from the last one that
        // starts before `end` until one ends before `first`.
        for (&start, request) in self.in_flight.range_mut(..end).rev() {
            if start + request.blocks <= first {
                break;
            }
            let from = first.max(start) - start;
            let to = end.min(start + request.blocks) - start;
            request.mark_rewritten(from, to);
        }
    }

    /// The application read `len` bytes: counts towards the application load the controller yields to.
    pub fn app_read(&mut self, len: u64) {
        self.pacing.app_bytes = self.pacing.app_bytes.saturating_add(len);
    }

    /// Forgets every request in flight (the connection was lost); their blocks stay dirty. Returns how many.
    pub fn abort_in_flight(&mut self) -> usize {
        let aborted = self.in_flight.len();
        self.in_flight.clear();
        self.in_flight_bytes = 0;
        aborted
    }

    /// Progress at `now`: bytes done of the bytes to do, `done:NN.NN`, average rate and ETA.
    pub fn progress(&self, now: Duration) -> Progress {
        let left = self.bitmap.dirty_bytes();
        Progress::at(
            self.total_bytes,
            self.total_bytes.saturating_sub(left),
            self.synced_bytes,
            now.saturating_sub(self.started_at),
        )
    }

    /// Whether every block is in sync and nothing is in flight.
    pub fn is_finished(&self) -> bool {
        self.bitmap.dirty_blocks() == 0 && self.in_flight.is_empty()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Bytes of all requests issued so far, resent ones included.
    pub fn sent_bytes(&self) -> u64 {
        self.sent_bytes
    }

    /// The bitmap, for flushing its changed pages ([`DirtyBitmap::unflushed_pages`]).
    pub fn bitmap(&self) -> &DirtyBitmap {
        &self.bitmap
    }

    /// Forgets which bitmap pages changed, after the engine wrote them ([`DirtyBitmap::mark_flushed`]).
    pub fn mark_bitmap_flushed(&mut self) {
        self.bitmap.mark_flushed();
    }

    /// The bitmap, when the resync ends or is abandoned (blocks still in flight are dirty in it).
    pub fn into_bitmap(self) -> DirtyBitmap {
        self.bitmap
    }

    /// The rate controller, for its current rate and whether it is yielding to the application.
    pub fn controller(&self) -> &RateController {
        &self.pacing.controller
    }

    /// The first run of dirty blocks not in flight at or after block `from`, cut to the largest request.
    fn find_next(&self, from: u64) -> Option<(u64, u64)> {
        let mut position = from;
        loop {
            let (first, count) = self.bitmap.dirty_runs(position).next()?;
            if let Some((&start, request)) = self.in_flight.range(..=first).next_back() {
                if start + request.blocks > first {
                    // The run begins inside an in-flight request: look again after it.
                    position = start + request.blocks;
                    continue;
                }
            }
            let end = first + count;
            let stop = self
                .in_flight
                .range(first..end)
                .next()
                .map_or(end, |(&start, _)| start);
            return Some((first, (stop - first).min(self.max_request_blocks)));
        }
    }
}

/// The digest of one block's data (SHA-256): equal digests are taken as equal data.
pub fn block_digest(data: &[u8]) -> BlockDigest {
    Sha256::digest(data).into()
}

/// The digests of each block of `data`, which starts at a block boundary (a partial last block is digested as
/// its bytes).
pub fn block_digests(data: &[u8]) -> Vec<BlockDigest> {
    data.chunks(BLOCK_BYTES as usize)
        .map(block_digest)
        .collect()
}

/// A checksum-based resync request, built by the SyncTarget: the request and the digest of each of its blocks
/// as the target has them. The source answers with data only for the blocks that differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChecksumRequest {
    /// The range asked for.
    pub request: Request,
    /// One digest per block of the request, in order.
    pub digests: Vec<BlockDigest>,
}

impl ChecksumRequest {
    /// The target's request for `request`, with the digests of `target_data` (its current data of the range).
    pub fn new(request: Request, target_data: &[u8]) -> Result<Self, ResyncError> {
        check_data(&request, target_data)?;
        Ok(ChecksumRequest {
            request,
            digests: block_digests(target_data),
        })
    }

    /// The source's answer: the byte ranges (adjacent differing blocks coalesced) whose data must be sent,
    /// given `source_data`, the source's data of the range. Empty when the target already has it all.
    pub fn ranges_to_send(&self, source_data: &[u8]) -> Result<Vec<ByteRange>, ResyncError> {
        check_data(&self.request, source_data)?;
        check_digests(&self.request, &self.digests)?;
        let mut ranges: Vec<ByteRange> = Vec::new();
        let mut offset = self.request.offset;
        for (chunk, theirs) in source_data.chunks(BLOCK_BYTES as usize).zip(&self.digests) {
            let len = chunk.len() as u64;
            if block_digest(chunk) != *theirs {
                match ranges.last_mut() {
                    Some(last) if last.offset + last.len == offset => last.len += len,
                    _ => ranges.push(ByteRange { offset, len }),
                }
            }
            offset += len;
        }
        Ok(ranges)
    }
}

/// Online verify: walks the whole device in requests, compares both sides' block digests, marks differing
/// blocks out of sync and counts them. It never repairs; a resync does that later.
///
/// The verify source issues the requests; the peer answers each with [`block_digests`] of its data, and
/// [`Verify::compare`] takes both lists. A block written by the application during verify may compare unequal
/// while the write is on its way to the peer: it is then marked, which costs a resync of one block, never data.
#[derive(Clone, Debug)]
pub struct Verify {
    data_size: u64,
    blocks: u64,
    request_blocks: u64,
    max_request_bytes: u64,
    max_in_flight: usize,
    cursor: u64,
    /// Ranges `(first block, count)` of failed requests, asked again before the walk goes on.
    retry: VecDeque<(u64, u64)>,
    in_flight: BTreeMap<u64, Request>,
    next_id: u64,
    pacing: Pacing,
    started_at: Duration,
    verified_bytes: u64,
    out_of_sync_blocks: u64,
}

impl Verify {
    /// A verify of a volume of `data_size` bytes, starting at `now`.
    pub fn new(data_size: u64, config: ResyncConfig, now: Duration) -> Result<Self, ResyncError> {
        let request_blocks = config.check()?;
        Ok(Verify {
            data_size,
            blocks: data_size.div_ceil(BLOCK_BYTES),
            request_blocks,
            max_request_bytes: config.max_request_bytes,
            max_in_flight: config.max_in_flight,
            cursor: 0,
            retry: VecDeque::new(),
            in_flight: BTreeMap::new(),
            next_id: 0,
            pacing: Pacing::new(config.rate)?,
            started_at: now,
            verified_bytes: 0,
            out_of_sync_blocks: 0,
        })
    }

    /// The next range to verify, if the in-flight limit and the rate controller allow one.
    pub fn next_request(&mut self, now: Duration) -> Option<Request> {
        let in_flight_bytes = self.in_flight.values().map(|r| r.len).sum();
        self.pacing
            .advance(now, in_flight_bytes, self.max_request_bytes);
        if self.in_flight.len() >= self.max_in_flight || !self.pacing.may_send() {
            return None;
        }
        let (first, count) = match self.retry.pop_front() {
            Some(range) => range,
            None if self.cursor < self.blocks => {
                let count = self.request_blocks.min(self.blocks - self.cursor);
                self.cursor += count;
                (self.cursor - count, count)
            }
            None => return None,
        };
        let offset = first * BLOCK_BYTES;
        let request = Request {
            id: self.next_id,
            offset,
            len: (count * BLOCK_BYTES).min(self.data_size - offset),
        };
        self.next_id += 1;
        self.in_flight.insert(request.id, request);
        self.pacing.spend(request.len);
        Some(request)
    }

    /// The digests of both sides for a request: marks each differing block out of sync in `bitmap` (the bitmap
    /// towards this peer) and returns how many blocks of the request differ.
    pub fn compare(
        &mut self,
        request: &Request,
        local: &[BlockDigest],
        peer: &[BlockDigest],
        bitmap: &mut DirtyBitmap,
    ) -> Result<u64, ResyncError> {
        self.check_in_flight(request)?;
        check_digests(request, local)?;
        check_digests(request, peer)?;
        if bitmap.blocks() != self.blocks {
            return Err(BitmapError::SizeMismatch {
                blocks: self.blocks,
                other: bitmap.blocks(),
            }
            .into());
        }
        let first = request.first_block();
        let mut differing = 0;
        for (i, (ours, theirs)) in (0u64..).zip(local.iter().zip(peer)) {
            if ours != theirs {
                bitmap.set_blocks(first + i, 1)?;
                differing += 1;
            }
        }
        self.in_flight.remove(&request.id);
        self.out_of_sync_blocks += differing;
        self.verified_bytes += request.len;
        self.pacing.acked_bytes = self.pacing.acked_bytes.saturating_add(request.len);
        Ok(differing)
    }

    /// A request failed (read error, lost answer): its range is asked again.
    pub fn failed(&mut self, request: &Request) -> Result<(), ResyncError> {
        self.check_in_flight(request)?;
        self.in_flight.remove(&request.id);
        self.pacing.acked_bytes = self.pacing.acked_bytes.saturating_add(request.len);
        self.retry
            .push_back((request.first_block(), request.blocks()));
        Ok(())
    }

    /// The application read or wrote `len` bytes: counts towards the load the controller yields to.
    pub fn app_io(&mut self, len: u64) {
        self.pacing.app_bytes = self.pacing.app_bytes.saturating_add(len);
    }

    /// Blocks found out of sync so far.
    pub fn out_of_sync_blocks(&self) -> u64 {
        self.out_of_sync_blocks
    }

    /// Progress at `now`: bytes verified of the volume, `done:NN.NN`, average rate and ETA.
    pub fn progress(&self, now: Duration) -> Progress {
        Progress::at(
            self.data_size,
            self.verified_bytes,
            self.verified_bytes,
            now.saturating_sub(self.started_at),
        )
    }

    /// Whether every block has been compared.
    pub fn is_finished(&self) -> bool {
        self.cursor >= self.blocks && self.retry.is_empty() && self.in_flight.is_empty()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn check_in_flight(&self, request: &Request) -> Result<(), ResyncError> {
        match self.in_flight.get(&request.id) {
            Some(issued) if issued == request => Ok(()),
            _ => Err(ResyncError::NotInFlight {
                id: request.id,
                offset: request.offset,
                len: request.len,
            }),
        }
    }
}

fn check_data(request: &Request, data: &[u8]) -> Result<(), ResyncError> {
    if data.len() as u64 != request.len {
        return Err(ResyncError::DataLength {
            expected: request.len,
            actual: data.len() as u64,
        });
    }
    Ok(())
}

fn check_digests(request: &Request, digests: &[BlockDigest]) -> Result<(), ResyncError> {
    if digests.len() as u64 != request.blocks() {
        return Err(ResyncError::DigestCount {
            expected: request.blocks(),
            actual: digests.len() as u64,
        });
    }
    Ok(())
}

/// Bytes moved in `dt` at `rate_kib_s`, saturating.
fn bytes_in(rate_kib_s: u64, dt: Duration) -> u64 {
    u128::from(rate_kib_s)
        .checked_mul(u128::from(KIB))
        .and_then(|b| b.checked_mul(dt.as_nanos()))
        .map_or(u64::MAX, |b| {
            u64::try_from(b / NANOS_PER_SEC).unwrap_or(u64::MAX)
        })
}

/// The rate of `bytes` moved in `dt`, KiB/s; zero for no time.
fn rate_kib_s(bytes: u64, dt: Duration) -> u64 {
    let nanos = dt.as_nanos();
    if nanos == 0 {
        return 0;
    }
    let rate = u128::from(bytes) * NANOS_PER_SEC / (nanos * u128::from(KIB));
    u64::try_from(rate).unwrap_or(u64::MAX)
}

fn to_i64(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

fn duration_from_nanos(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    Duration::new(secs, (nanos % NANOS_PER_SEC) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const B: u64 = BLOCK_BYTES;
    const T0: Duration = Duration::ZERO;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn config(max_request_blocks: u64, max_in_flight: usize) -> ResyncConfig {
        ResyncConfig {
            max_request_bytes: max_request_blocks * B,
            max_in_flight,
            rate: RateConfig::unlimited(),
        }
    }

    fn bitmap(data_size: u64, dirty: &[(u64, u64)]) -> DirtyBitmap {
        let mut bitmap = DirtyBitmap::new(data_size);
        for &(first, count) in dirty {
            bitmap.set_blocks(first, count).unwrap();
        }
        bitmap
    }

    /// Every request the plan gives now, without completing any.
    fn issue_all(plan: &mut ResyncPlan, now: Duration) -> Vec<Request> {
        std::iter::from_fn(|| plan.next_request(now)).collect()
    }

    fn ranges(requests: &[Request]) -> Vec<(u64, u64)> {
        requests.iter().map(|r| (r.offset, r.len)).collect()
    }

    fn dirty_runs(plan: &ResyncPlan) -> Vec<(u64, u64)> {
        plan.bitmap().dirty_runs(0).collect()
    }

    #[test]
    fn runs_are_split_at_the_largest_request() {
        let bm = bitmap(1000 * B, &[(10, 600)]);
        let dirty = bm.dirty_bytes();
        let mut plan = ResyncPlan::new(bm, config(256, 16), T0).unwrap();
        let requests = issue_all(&mut plan, T0);
        assert_eq!(
            ranges(&requests),
            vec![(10 * B, 256 * B), (266 * B, 256 * B), (522 * B, 88 * B)]
        );
        assert_eq!(plan.sent_bytes(), dirty);
    }

    #[test]
    fn adjacent_dirty_blocks_coalesce_and_clean_blocks_are_never_sent() {
        let mut bm = DirtyBitmap::new(200 * B);
        // Marked one block at a time: coalescing comes from the plan, not from how the bits were set.
        for block in [3, 4, 5, 7, 9, 10, 11, 63, 64, 65, 199] {
            bm.set_blocks(block, 1).unwrap();
        }
        let dirty = bm.dirty_bytes();
        let snapshot = bm.clone();
        let mut plan = ResyncPlan::new(bm, config(256, 16), T0).unwrap();
        let requests = issue_all(&mut plan, T0);
        assert_eq!(
            ranges(&requests),
            vec![
                (3 * B, 3 * B),
                (7 * B, B),
                (9 * B, 3 * B),
                (63 * B, 3 * B),
                (199 * B, B)
            ]
        );
        for r in &requests {
            assert!((r.first_block()..r.first_block() + r.blocks()).all(|b| snapshot.is_dirty(b)));
        }
        assert_eq!(
            plan.sent_bytes(),
            dirty,
            "bytes sent are the dirty bytes exactly"
        );
    }

    #[test]
    fn the_last_request_stops_at_the_end_of_the_volume() {
        let size = 10 * B + 512;
        let bm = bitmap(size, &[(8, 3)]);
        assert_eq!(bm.dirty_bytes(), 2 * B + 512);
        let mut plan = ResyncPlan::new(bm.clone(), config(16, 16), T0).unwrap();
        assert_eq!(
            ranges(&issue_all(&mut plan, T0)),
            vec![(8 * B, 2 * B + 512)]
        );
        let mut plan = ResyncPlan::new(bm, config(2, 16), T0).unwrap();
        let requests = issue_all(&mut plan, T0);
        assert_eq!(ranges(&requests), vec![(8 * B, 2 * B), (10 * B, 512)]);
        assert_eq!(requests[1].blocks(), 1);
        assert_eq!(plan.sent_bytes(), 2 * B + 512);
        for r in &requests {
            plan.completed(r, true).unwrap();
        }
        assert!(plan.is_finished());
    }

    #[test]
    fn at_most_max_in_flight_and_no_block_is_requested_twice() {
        let bm = bitmap(100 * B, &[(0, 1), (10, 1), (20, 1), (30, 1), (40, 1)]);
        let mut plan = ResyncPlan::new(bm, config(8, 2), T0).unwrap();
        let first = issue_all(&mut plan, T0);
        assert_eq!(ranges(&first), vec![(0, B), (10 * B, B)]);
        assert_eq!(plan.in_flight(), 2);
        plan.completed(&first[0], true).unwrap();
        let second = issue_all(&mut plan, T0);
        assert_eq!(ranges(&second), vec![(20 * B, B)]);
        plan.completed(&second[0], true).unwrap();
        plan.completed(&first[1], true).unwrap();
        let third = issue_all(&mut plan, T0);
        assert_eq!(ranges(&third), vec![(30 * B, B), (40 * B, B)]);
        // Still dirty but in flight: nothing more to ask.
        assert_eq!(plan.next_request(T0), None);
        assert_eq!(plan.retry_at(), None);
    }

    #[test]
    fn success_clears_and_failure_keeps_the_blocks_dirty_and_resends_them() {
        let bm = bitmap(64 * B, &[(0, 4), (10, 2)]);
        let dirty = bm.dirty_bytes();
        let mut plan = ResyncPlan::new(bm, config(8, 16), T0).unwrap();
        let requests = issue_all(&mut plan, T0);
        assert_eq!(requests.len(), 2);
        plan.completed(&requests[0], true).unwrap();
        assert_eq!(dirty_runs(&plan), vec![(10, 2)]);
        plan.completed(&requests[1], false).unwrap();
        assert_eq!(
            dirty_runs(&plan),
            vec![(10, 2)],
            "a failed request clears nothing"
        );
        assert!(!plan.is_finished());
        let again = plan.next_request(T0).unwrap();
        assert_eq!((again.offset, again.len), (10 * B, 2 * B));
        assert_ne!(again.id, requests[1].id, "ids are not reused");
        plan.completed(&again, true).unwrap();
        assert!(plan.is_finished());
        assert_eq!(plan.sent_bytes(), dirty + 2 * B);
        assert_eq!(plan.progress(T0).done_bytes, dirty);
    }

    #[test]
    fn an_app_write_during_an_in_flight_request_keeps_the_block_dirty_and_it_is_resent() {
        let bm = bitmap(64 * B, &[(0, 8)]);
        let mut plan = ResyncPlan::new(bm, config(8, 16), T0).unwrap();
        let r = plan.next_request(T0).unwrap();
        assert_eq!((r.offset, r.len), (0, 8 * B));
        // 10 bytes inside block 3, while the request is in flight.
        plan.app_write(3 * B + 100, 10).unwrap();
        plan.completed(&r, true).unwrap();
        assert_eq!(
            dirty_runs(&plan),
            vec![(3, 1)],
            "only the rewritten block stays dirty"
        );
        let resend = plan.next_request(T0).unwrap();
        assert_eq!((resend.offset, resend.len), (3 * B, B));
        plan.completed(&resend, true).unwrap();
        assert!(plan.is_finished());
        // Block 3 was dirty all along: the total did not grow.
        assert_eq!(plan.progress(T0).total_bytes, 8 * B);
    }

    #[test]
    fn an_app_write_across_two_in_flight_requests_taints_both() {
        let bm = bitmap(64 * B, &[(0, 8)]);
        let mut plan = ResyncPlan::new(bm, config(4, 16), T0).unwrap();
        let requests = issue_all(&mut plan, T0);
        assert_eq!(ranges(&requests), vec![(0, 4 * B), (4 * B, 4 * B)]);
        plan.app_write(3 * B + 4000, 200).unwrap(); // the end of block 3 and the start of block 4
        plan.completed(&requests[1], true).unwrap();
        plan.completed(&requests[0], true).unwrap();
        assert_eq!(dirty_runs(&plan), vec![(3, 2)]);
        let resend = issue_all(&mut plan, T0);
        assert_eq!(ranges(&resend), vec![(3 * B, 2 * B)]);
    }

    #[test]
    fn an_app_write_after_completion_or_behind_the_cursor_is_sent_on_the_wrap() {
        let bm = bitmap(64 * B, &[(10, 2), (20, 2)]);
        let mut plan = ResyncPlan::new(bm, config(2, 1), T0).unwrap();
        let first = plan.next_request(T0).unwrap();
        assert_eq!(first.offset, 10 * B);
        plan.completed(&first, true).unwrap();
        plan.app_write(10 * B, B).unwrap(); // just synced, written again
        plan.app_write(0, 1).unwrap(); // a clean block behind the cursor
        let mut order = Vec::new();
        while let Some(r) = plan.next_request(T0) {
            order.push((r.offset, r.len));
            plan.completed(&r, true).unwrap();
        }
        assert_eq!(order, vec![(20 * B, 2 * B), (0, B), (10 * B, B)]);
        assert!(plan.is_finished());
        let progress = plan.progress(T0);
        assert_eq!(
            progress.total_bytes,
            6 * B,
            "blocks dirtied again count towards the total"
        );
        assert_eq!(progress.percent_done.to_string(), "100.00");
    }

    #[test]
    fn unknown_or_mismatched_completions_and_out_of_range_writes_are_refused() {
        let bm = bitmap(16 * B, &[(0, 4)]);
        let mut plan = ResyncPlan::new(bm, config(8, 16), T0).unwrap();
        let r = plan.next_request(T0).unwrap();
        for wrong in [
            Request { id: r.id + 1, ..r },
            Request { len: B, ..r },
            Request { offset: 1, ..r },
        ] {
            assert_eq!(
                plan.completed(&wrong, true),
                Err(ResyncError::NotInFlight {
                    id: wrong.id,
                    offset: wrong.offset,
                    len: wrong.len
                })
            );
        }
        assert_eq!(plan.in_flight(), 1, "a refused completion changes nothing");
        assert_eq!(plan.bitmap().dirty_blocks(), 4);
        plan.completed(&r, true).unwrap();
        assert!(plan.completed(&r, true).is_err(), "twice");
        assert!(matches!(
            plan.app_write(16 * B - 1, 2),
            Err(ResyncError::Bitmap(BitmapError::OutOfRange { .. }))
        ));
        assert!(plan.is_finished());
    }

    #[test]
    fn abort_keeps_the_blocks_dirty_and_forgets_the_requests() {
        let bm = bitmap(16 * B, &[(2, 3)]);
        let mut plan = ResyncPlan::new(bm, config(8, 16), T0).unwrap();
        let r = plan.next_request(T0).unwrap();
        assert_eq!(plan.abort_in_flight(), 1);
        assert_eq!(plan.bitmap().dirty_blocks(), 3);
        assert!(
            plan.completed(&r, true).is_err(),
            "an aborted request cannot complete"
        );
        let again = plan.next_request(T0).unwrap();
        assert_eq!((again.offset, again.len), (r.offset, r.len));
    }

    #[test]
    fn percent_done_has_two_decimals_rounded_down() {
        let cases = [
            (0, 3, "0.00"),
            (1, 3, "33.33"),
            (2, 3, "66.66"),
            (1, 10_000, "0.01"),
            (9_999, 10_000, "99.99"),
            (u64::MAX - 1, u64::MAX, "99.99"),
            (5, 5, "100.00"),
            (0, 0, "100.00"),
        ];
        for (done, total, shown) in cases {
            assert_eq!(
                PercentDone::of(done, total).to_string(),
                shown,
                "{done} of {total}"
            );
        }
        assert_eq!(PercentDone::of(1, 3).hundredths(), 3333);
    }

    #[test]
    fn progress_rate_and_eta_follow_the_synthetic_clock() {
        let start = Duration::from_secs(10);
        let bm = bitmap(100 * B, &[(0, 3)]);
        let mut plan = ResyncPlan::new(bm, config(1, 16), start).unwrap();
        let p = plan.progress(start);
        assert_eq!(
            (p.done_bytes, p.total_bytes, p.rate_kib_s, p.eta),
            (0, 3 * B, 0, None)
        );
        assert_eq!(p.percent_done.to_string(), "0.00");
        let requests = issue_all(&mut plan, start);
        plan.completed(&requests[0], true).unwrap();
        // One block (4 KiB) in 2 s: 2 KiB/s, two blocks left: 4 s.
        let p = plan.progress(start + Duration::from_secs(2));
        assert_eq!(p.percent_done.to_string(), "33.33");
        assert_eq!(p.rate_kib_s, 2);
        assert_eq!(p.eta, Some(Duration::from_secs(4)));
        plan.completed(&requests[1], true).unwrap();
        let p = plan.progress(start + Duration::from_secs(3));
        assert_eq!(p.percent_done.to_string(), "66.66");
        assert_eq!(p.eta, Some(ms(1500)));
        plan.completed(&requests[2], true).unwrap();
        let p = plan.progress(start + Duration::from_secs(4));
        assert_eq!(
            (p.percent_done.to_string(), p.eta),
            ("100.00".into(), Some(Duration::ZERO))
        );
        assert_eq!(p.rate_kib_s, 3);
    }

    #[test]
    fn an_empty_bitmap_is_finished_at_once() {
        let mut plan = ResyncPlan::new(DirtyBitmap::new(8 * B), config(8, 16), T0).unwrap();
        assert!(plan.is_finished());
        assert_eq!(plan.next_request(T0), None);
        let p = plan.progress(T0);
        assert_eq!(
            (p.percent_done.hundredths(), p.eta),
            (10_000, Some(Duration::ZERO))
        );
    }

    fn fixed(rate_kib_s: u64) -> RateConfig {
        RateConfig {
            target: RateTarget::Fixed { rate_kib_s },
            step: ms(100),
            plan_ahead: ms(100),
            min_rate_kib_s: 0,
            max_rate_kib_s: u64::MAX,
            app_io_threshold_kib_s: u64::MAX,
        }
    }

    #[test]
    fn requests_follow_the_rate_controller() {
        // 40 KiB/s: one 4 KiB block per 100 ms step.
        let config = ResyncConfig {
            rate: fixed(40),
            ..config(1, 16)
        };
        let mut plan = ResyncPlan::new(bitmap(64 * B, &[(0, 10)]), config, T0).unwrap();
        assert!(plan.next_request(T0).is_some());
        assert_eq!(plan.next_request(T0), None);
        assert_eq!(plan.retry_at(), Some(ms(100)));
        assert_eq!(plan.next_request(ms(50)), None);
        assert!(plan.next_request(ms(100)).is_some());
        assert_eq!(plan.next_request(ms(100)), None);
    }

    #[test]
    fn requests_stay_large_at_a_low_rate_and_average_the_controllers_rate() {
        let config = ResyncConfig {
            rate: fixed(40),
            ..config(4, 16)
        };
        let mut plan = ResyncPlan::new(bitmap(64 * B, &[(0, 16)]), config, T0).unwrap();
        let mut issued = Vec::new();
        for step in 0..=12 {
            if let Some(r) = plan.next_request(ms(100 * step)) {
                assert_eq!(r.len, 4 * B, "a request is never cut to the step's budget");
                issued.push(step);
            }
        }
        // 16 KiB each, 4 KiB of credit per step: one request every four steps.
        assert_eq!(issued, vec![0, 4, 8, 12]);
    }

    /// A link with a fixed latency (in steps) and bandwidth (bytes per step), FIFO.
    struct Link {
        latency_steps: u64,
        bandwidth_per_step: u64,
        queue: VecDeque<(u64, u64)>,
        in_flight: u64,
    }

    impl Link {
        fn new(latency_steps: u64, bandwidth_per_step: u64) -> Self {
            Link {
                latency_steps,
                bandwidth_per_step,
                queue: VecDeque::new(),
                in_flight: 0,
            }
        }

        fn deliver(&mut self, step: u64) -> u64 {
            let mut budget = self.bandwidth_per_step;
            let mut acked = 0;
            while let Some((due, bytes)) = self.queue.front_mut() {
                if *due > step || budget == 0 {
                    break;
                }
                let taken = (*bytes).min(budget);
                *bytes -= taken;
                budget -= taken;
                acked += taken;
                if *bytes == 0 {
                    self.queue.pop_front();
                }
            }
            self.in_flight -= acked;
            acked
        }

        fn send(&mut self, step: u64, bytes: u64) {
            self.queue.push_back((step + self.latency_steps, bytes));
            self.in_flight += bytes;
        }
    }

    struct Trace {
        outputs: Vec<u64>,
        in_flight: Vec<u64>,
        acked: Vec<u64>,
        throttled: Vec<bool>,
    }

    /// Runs a controller against a link for `steps` steps of 100 ms; `app_kib_s(step)` is the application load.
    fn run(
        config: RateConfig,
        link: &mut Link,
        steps: u64,
        app_kib_s: impl Fn(u64) -> u64,
    ) -> Trace {
        let mut controller = RateController::new(config).unwrap();
        let mut trace = Trace {
            outputs: Vec::new(),
            in_flight: Vec::new(),
            acked: Vec::new(),
            throttled: Vec::new(),
        };
        for step in 0..steps {
            let acked = link.deliver(step);
            let output = controller.step(ControllerInput {
                now: ms(100 * step),
                acked_bytes: acked,
                in_flight_bytes: link.in_flight,
                app_io_kib_s: app_kib_s(step),
            });
            link.send(step, output);
            trace.outputs.push(output);
            trace.in_flight.push(link.in_flight);
            trace.acked.push(acked);
            trace.throttled.push(controller.is_throttled());
        }
        trace
    }

    fn dynamic() -> RateConfig {
        RateConfig {
            target: RateTarget::Fill { bytes: 32 * MIB },
            step: ms(100),
            plan_ahead: Duration::from_secs(2),
            min_rate_kib_s: 250,
            max_rate_kib_s: 100 * KIB, // 100 MiB/s
            app_io_threshold_kib_s: KIB,
        }
    }

    /// 100 MiB/s for 100 ms.
    const CAP: u64 = 10 * MIB;
    /// 250 KiB/s for 100 ms.
    const FLOOR: u64 = 25_600;

    #[test]
    fn without_app_io_the_controller_converges_up_to_the_max_rate() {
        let trace = run(dynamic(), &mut Link::new(2, u64::MAX), 100, |_| 0);
        assert!(trace.outputs.iter().all(|&o| (FLOOR..=CAP).contains(&o)));
        assert!(
            trace.outputs[0] < CAP,
            "it starts below the cap and ramps up"
        );
        assert!(
            trace.outputs[40..].iter().all(|&o| o == CAP),
            "at the cap after 4 s: {:?}",
            &trace.outputs[..45]
        );
    }

    #[test]
    fn heavy_app_io_holds_resync_at_the_min_rate_and_it_recovers_after() {
        let busy = 50usize..100;
        let trace = run(dynamic(), &mut Link::new(2, u64::MAX), 200, |step| {
            if busy.contains(&(step as usize)) {
                50 * KIB
            } else {
                0
            }
        });
        assert!(trace.outputs[40..50].iter().all(|&o| o == CAP));
        assert!(trace.outputs[busy.clone()].iter().all(|&o| o == FLOOR));
        assert!(trace.throttled[busy.clone()].iter().all(|&t| t));
        assert!(!trace.throttled[100]);
        assert!(
            trace.outputs[140..].iter().all(|&o| o == CAP),
            "back at the cap within 4 s: {:?}",
            &trace.outputs[100..145]
        );
    }

    #[test]
    fn app_io_below_the_threshold_does_not_throttle() {
        let trace = run(dynamic(), &mut Link::new(2, u64::MAX), 60, |_| KIB);
        assert!(trace.outputs[40..].iter().all(|&o| o == CAP));
    }

    #[test]
    fn on_a_slow_link_the_fill_target_stays_in_flight_and_the_link_stays_busy() {
        let config = RateConfig {
            target: RateTarget::Fill { bytes: 4 * MIB },
            ..dynamic()
        };
        let trace = run(config, &mut Link::new(1, MIB), 300, |_| 0);
        let tail = 200..300;
        assert!(
            trace.in_flight[tail.clone()]
                .iter()
                .all(|&f| (3 * MIB..=5 * MIB).contains(&f)),
            "in flight near 4 MiB: {:?}",
            &trace.in_flight[tail.clone()]
        );
        assert!(
            trace.acked[tail.clone()].iter().all(|&a| a == MIB),
            "the link is never idle"
        );
        let requested: u64 = trace.outputs[tail].iter().sum();
        assert!(
            requested.abs_diff(100 * MIB) <= 5 * MIB,
            "requests follow the link: {requested}"
        );
    }

    #[test]
    fn a_fixed_rate_is_rate_times_time_and_a_long_gap_gives_no_burst() {
        let mut controller = RateController::new(RateConfig {
            max_rate_kib_s: 10_000,
            ..fixed(1000)
        })
        .unwrap();
        let mut step = |now_ms| {
            controller.step(ControllerInput {
                now: ms(now_ms),
                acked_bytes: 0,
                in_flight_bytes: 0,
                app_io_kib_s: 0,
            })
        };
        assert_eq!(
            step(0),
            102_400,
            "the first step counts as one nominal step"
        );
        assert_eq!(step(300), 307_200);
        assert_eq!(
            step(10_300),
            1_024_000,
            "a 10 s gap counts as 10 steps at most"
        );
        let mut capped = RateController::new(RateConfig {
            max_rate_kib_s: 500,
            ..fixed(1000)
        })
        .unwrap();
        let input = ControllerInput {
            now: T0,
            acked_bytes: 0,
            in_flight_bytes: 0,
            app_io_kib_s: 0,
        };
        assert_eq!(capped.step(input), 51_200);
        assert_eq!(capped.rate_kib_s(), 500);
    }

    #[test]
    fn configurations_are_checked() {
        let field = |result: Result<RateController, ResyncError>| match result {
            Err(ResyncError::InvalidConfig { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let good = dynamic();
        assert!(RateController::new(good).is_ok());
        assert!(RateController::new(RateConfig::default()).is_ok());
        assert_eq!(
            field(RateController::new(RateConfig { step: T0, ..good })),
            "step"
        );
        assert_eq!(
            field(RateController::new(RateConfig {
                plan_ahead: ms(50),
                ..good
            })),
            "plan_ahead"
        );
        assert_eq!(
            field(RateController::new(RateConfig {
                plan_ahead: Duration::from_secs(100_000),
                ..good
            })),
            "plan_ahead"
        );
        assert_eq!(
            field(RateController::new(RateConfig {
                min_rate_kib_s: good.max_rate_kib_s + 1,
                ..good
            })),
            "min_rate_kib_s"
        );
        assert_eq!(
            field(RateController::new(RateConfig {
                target: RateTarget::Fill { bytes: 0 },
                ..good
            })),
            "target"
        );
        let bm = DirtyBitmap::new(8 * B);
        for (bad, name) in [
            (
                ResyncConfig {
                    max_request_bytes: 1000,
                    ..config(1, 1)
                },
                "max_request_bytes",
            ),
            (
                ResyncConfig {
                    max_request_bytes: 0,
                    ..config(1, 1)
                },
                "max_request_bytes",
            ),
            (config(1, 0), "max_in_flight"),
        ] {
            assert!(matches!(
                ResyncPlan::new(bm.clone(), bad, T0),
                Err(ResyncError::InvalidConfig { field, .. }) if field == name
            ));
            assert!(Verify::new(8 * B, bad, T0).is_err());
        }
    }

    /// Data of `len` bytes, different for each seed.
    fn data(len: u64, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn csums_send_data_only_for_blocks_whose_digests_differ() {
        // Five blocks, the last one partial: 4 × 4096 + 100 bytes at block 10.
        let request = Request {
            id: 7,
            offset: 10 * B,
            len: 4 * B + 100,
        };
        let source = data(request.len, 1);
        let asked = ChecksumRequest::new(request, &source).unwrap();
        assert_eq!(asked.digests.len(), 5);
        assert_eq!(
            asked.ranges_to_send(&source).unwrap(),
            vec![],
            "equal digests skip all data"
        );
        let mut target = source.clone();
        target[(B + 5) as usize] ^= 1; // block 1
        target[(2 * B) as usize] ^= 1; // block 2, adjacent: coalesced
        target[(4 * B + 99) as usize] ^= 1; // the partial last block
        let asked = ChecksumRequest::new(request, &target).unwrap();
        assert_eq!(
            asked.ranges_to_send(&source).unwrap(),
            vec![
                ByteRange {
                    offset: 11 * B,
                    len: 2 * B
                },
                ByteRange {
                    offset: 14 * B,
                    len: 100
                }
            ]
        );
        assert_eq!(block_digest(&source[..B as usize]), asked.digests[0]);
    }

    #[test]
    fn csums_refuse_wrong_lengths() {
        let request = Request {
            id: 0,
            offset: 0,
            len: 2 * B,
        };
        assert_eq!(
            ChecksumRequest::new(request, &[0; 10]),
            Err(ResyncError::DataLength {
                expected: 2 * B,
                actual: 10
            })
        );
        let mut asked = ChecksumRequest::new(request, &data(2 * B, 0)).unwrap();
        assert!(matches!(
            asked.ranges_to_send(&[0; 10]),
            Err(ResyncError::DataLength { .. })
        ));
        asked.digests.pop();
        assert_eq!(
            asked.ranges_to_send(&data(2 * B, 0)),
            Err(ResyncError::DigestCount {
                expected: 2,
                actual: 1
            })
        );
    }

    /// Runs a whole verify of `local` against `peer` (same length), returning the verify and the bitmap.
    fn verify_all(local: &[u8], peer: &[u8], request_blocks: u64) -> (Verify, DirtyBitmap) {
        let size = local.len() as u64;
        let mut bitmap = DirtyBitmap::new(size);
        let mut verify = Verify::new(size, config(request_blocks, 2), T0).unwrap();
        let mut requests = 0;
        while let Some(r) = verify.next_request(T0) {
            let range = r.offset as usize..(r.offset + r.len) as usize;
            let (ours, theirs) = (
                block_digests(&local[range.clone()]),
                block_digests(&peer[range]),
            );
            verify.compare(&r, &ours, &theirs, &mut bitmap).unwrap();
            requests += 1;
        }
        assert_eq!(requests, (size.div_ceil(B)).div_ceil(request_blocks));
        (verify, bitmap)
    }

    #[test]
    fn verify_marks_a_difference_and_counts_it() {
        let size = 10 * B + 100;
        let local = data(size, 3);
        let (verify, bitmap) = verify_all(&local, &local, 4);
        assert!(verify.is_finished());
        assert_eq!((verify.out_of_sync_blocks(), bitmap.dirty_blocks()), (0, 0));
        let mut peer = local.clone();
        peer[(6 * B + 17) as usize] ^= 0x80;
        peer[(10 * B + 99) as usize] ^= 0x01; // the partial last block
        let (verify, bitmap) = verify_all(&local, &peer, 4);
        assert!(verify.is_finished());
        assert_eq!(verify.out_of_sync_blocks(), 2);
        assert_eq!(
            bitmap.dirty_runs(0).collect::<Vec<_>>(),
            vec![(6, 1), (10, 1)]
        );
        let p = verify.progress(Duration::from_secs(1));
        assert_eq!((p.done_bytes, p.total_bytes), (size, size));
        assert_eq!(p.percent_done.to_string(), "100.00");
        assert_eq!(p.rate_kib_s, size / KIB);
    }

    #[test]
    fn verify_retries_a_failed_request_and_refuses_bad_answers() {
        let size = 8 * B;
        let local = data(size, 9);
        let mut bitmap = DirtyBitmap::new(size);
        let mut verify = Verify::new(size, config(4, 4), T0).unwrap();
        let first = verify.next_request(T0).unwrap();
        let second = verify.next_request(T0).unwrap();
        assert_eq!(verify.next_request(T0), None, "the device is covered");
        let digests =
            |r: &Request| block_digests(&local[r.offset as usize..(r.offset + r.len) as usize]);
        verify.failed(&first).unwrap();
        assert!(!verify.is_finished());
        assert_eq!(
            verify.compare(
                &second,
                &digests(&second)[..3],
                &digests(&second),
                &mut bitmap
            ),
            Err(ResyncError::DigestCount {
                expected: 4,
                actual: 3
            })
        );
        assert!(matches!(
            verify.compare(
                &second,
                &digests(&second),
                &digests(&second),
                &mut DirtyBitmap::new(B)
            ),
            Err(ResyncError::Bitmap(BitmapError::SizeMismatch { .. }))
        ));
        assert_eq!(
            verify.compare(&second, &digests(&second), &digests(&second), &mut bitmap),
            Ok(0)
        );
        assert!(verify
            .compare(&second, &digests(&second), &digests(&second), &mut bitmap)
            .is_err());
        let retry = verify.next_request(T0).unwrap();
        assert_eq!((retry.offset, retry.len), (first.offset, first.len));
        assert!(
            verify.failed(&first).is_err(),
            "the failed request is no longer in flight"
        );
        verify
            .compare(&retry, &digests(&retry), &digests(&retry), &mut bitmap)
            .unwrap();
        assert!(verify.is_finished());
        assert_eq!(verify.out_of_sync_blocks(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn the_controller_stays_between_floor_and_cap(
            fill in 1u64..(64 * MIB),
            inputs in proptest::collection::vec((1u64..3_000, 0u64..(64 * MIB), 0u64..(64 * MIB), 0u64..4096), 1..60),
        ) {
            let config = RateConfig { target: RateTarget::Fill { bytes: fill }, ..dynamic() };
            let mut controller = RateController::new(config).unwrap();
            let mut now = T0;
            let mut last = None;
            for (gap_ms, acked, in_flight, app) in inputs {
                now += ms(gap_ms);
                let output = controller.step(ControllerInput {
                    now,
                    acked_bytes: acked,
                    in_flight_bytes: in_flight,
                    app_io_kib_s: app,
                });
                let dt = last.map_or(ms(100), |l| now - l).min(ms(1000));
                last = Some(now);
                let rate = if app > KIB { 250 } else { 100 * KIB };
                prop_assert!(output <= bytes_in(rate, dt));
                prop_assert!(output >= bytes_in(250, dt));
            }
        }
    }

    /// One step of the resync-correctness property test.
    #[derive(Clone, Debug)]
    enum Op {
        /// Ask for a request; its data is read from the source now, or only when it completes.
        Issue { read_at_completion: bool },
        /// Complete the `pick`-th request in flight (modulo), successfully or not.
        Complete { pick: usize, ok: bool },
        /// An application write of `sectors` 512-byte sectors at `sector`; `mirrored`: it also reached the
        /// peer directly (as replication does while connected), possibly before stale resync data.
        Write {
            sector: u64,
            sectors: u64,
            mirrored: bool,
        },
    }

    fn op(with_writes: bool) -> impl Strategy<Value = Op> {
        let write_weight = if with_writes { 2 } else { 0 };
        prop_oneof![
            4 => any::<bool>().prop_map(|read_at_completion| Op::Issue { read_at_completion }),
            4 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(pick, ok)| Op::Complete { pick, ok }),
            write_weight => (0u64..2_400, 1u64..40, any::<bool>())
                .prop_map(|(sector, sectors, mirrored)| Op::Write { sector, sectors, mirrored }),
        ]
    }

    #[derive(Clone, Debug)]
    struct Scenario {
        /// Volume size in 512-byte sectors, often with a partial last block.
        sectors: u64,
        dirty: Vec<(u64, u64)>,
        max_request_blocks: u64,
        max_in_flight: usize,
        ops: Vec<Op>,
    }

    fn scenario() -> impl Strategy<Value = Scenario> {
        (1u64..2_400, any::<bool>()).prop_flat_map(|(sectors, with_writes)| {
            let blocks = sectors.div_ceil(8);
            (
                proptest::collection::vec((0..blocks, 1u64..24), 0..8),
                1u64..12,
                1usize..6,
                proptest::collection::vec(op(with_writes), 0..150),
            )
                .prop_map(move |(dirty, max_request_blocks, max_in_flight, ops)| {
                    Scenario {
                        sectors,
                        dirty,
                        max_request_blocks,
                        max_in_flight,
                        ops,
                    }
                })
        })
    }

    /// A request in flight in the model: the request, and the source's block versions if read at issue.
    struct Sent {
        request: Request,
        read: Option<(u64, Vec<u64>)>,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Invariant 4 for resync: whatever the order of completions, failures and application writes, the
        /// resync ends with an empty bitmap and a target identical to the source, and every block that was
        /// ever dirty was last delivered from data read after its last application write. Without application
        /// writes, the bytes sent are the dirty bytes exactly, plus the bytes of failed requests.
        #[test]
        fn resync_ends_identical_whatever_the_interleaving(s in scenario()) {
            let size = s.sectors * 512;
            let blocks = size.div_ceil(B) as usize;
            let mut bm = DirtyBitmap::new(size);
            // Versions of each block's data on each side; dirty blocks start newer on the source.
            let mut source = vec![0u64; blocks];
            let mut target = vec![0u64; blocks];
            let mut ever_dirty = vec![false; blocks];
            let mut last_write = vec![0u64; blocks];
            let mut last_read_delivered = vec![0u64; blocks];
            for &(first, count) in &s.dirty {
                let count = count.min(blocks as u64 - first);
                bm.set_blocks(first, count).unwrap();
                for b in first..first + count {
                    source[b as usize] = 1;
                    ever_dirty[b as usize] = true;
                }
            }
            let initial_dirty = bm.dirty_bytes();
            let mut plan = ResyncPlan::new(bm, config(s.max_request_blocks, s.max_in_flight), T0).unwrap();
            let mut sent: Vec<Sent> = Vec::new();
            let mut failed_bytes = 0;
            let mut wrote = false;
            // Logical time: every operation ticks, so "after" is strict.
            let mut clock = 0u64;
            let complete = |plan: &mut ResyncPlan, sent: Sent, ok: bool, clock: u64,
                                source: &[u64], target: &mut [u64], last_read_delivered: &mut [u64]| {
                let r = sent.request;
                let (read_at, versions) = sent
                    .read
                    .unwrap_or_else(|| (clock, source[r.first_block() as usize..][..r.blocks() as usize].to_vec()));
                for (i, b) in (r.first_block()..r.first_block() + r.blocks()).enumerate() {
                    if ok {
                        target[b as usize] = versions[i];
                        last_read_delivered[b as usize] = read_at;
                    } else {
                        target[b as usize] = u64::MAX; // a failed write may leave anything
                    }
                }
                plan.completed(&r, ok).unwrap();
            };
            for op in &s.ops {
                clock += 1;
                match *op {
                    Op::Issue { read_at_completion } => {
                        if let Some(r) = plan.next_request(T0) {
                            prop_assert!(r.len > 0 && r.len <= s.max_request_blocks * B);
                            prop_assert!(r.offset + r.len <= size, "never past the end");
                            prop_assert!(r.offset.is_multiple_of(B) && (r.len.is_multiple_of(B) || r.offset + r.len == size));
                            for b in r.first_block()..r.first_block() + r.blocks() {
                                prop_assert!(plan.bitmap().is_dirty(b), "block {} was clean", b);
                            }
                            for other in &sent {
                                let o = other.request;
                                prop_assert!(o.offset + o.len <= r.offset || r.offset + r.len <= o.offset);
                            }
                            let read = (!read_at_completion).then(|| {
                                (clock, source[r.first_block() as usize..][..r.blocks() as usize].to_vec())
                            });
                            sent.push(Sent { request: r, read });
                            prop_assert!(plan.in_flight() <= s.max_in_flight);
                        }
                    }
                    Op::Complete { pick, ok } => {
                        if !sent.is_empty() {
                            let one = sent.swap_remove(pick % sent.len());
                            if !ok {
                                failed_bytes += one.request.len;
                            }
                            complete(&mut plan, one, ok, clock, &source, &mut target, &mut last_read_delivered);
                        }
                    }
                    Op::Write { sector, sectors, mirrored } => {
                        let offset = sector * 512;
                        if offset >= size {
                            continue;
                        }
                        let len = (sectors * 512).min(size - offset);
                        wrote = true;
                        for b in offset / B..=(offset + len - 1) / B {
                            let b = b as usize;
                            source[b] += 1;
                            last_write[b] = clock;
                            ever_dirty[b] = true;
                            if mirrored {
                                target[b] = source[b];
                            }
                        }
                        plan.app_write(offset, len).unwrap();
                    }
                }
                let p = plan.progress(T0);
                prop_assert!(p.done_bytes <= p.total_bytes);
            }
            // Drain: everything left completes, successfully, in order.
            for _ in 0..=(blocks + s.max_in_flight) {
                clock += 1;
                while let Some(r) = plan.next_request(T0) {
                    sent.push(Sent { request: r, read: None });
                }
                for one in sent.drain(..) {
                    complete(&mut plan, one, true, clock, &source, &mut target, &mut last_read_delivered);
                }
                if plan.is_finished() {
                    break;
                }
            }
            prop_assert!(plan.is_finished());
            prop_assert_eq!(plan.bitmap().dirty_blocks(), 0);
            prop_assert_eq!(&target, &source, "the copies are identical");
            for b in 0..blocks {
                if ever_dirty[b] {
                    prop_assert!(
                        last_read_delivered[b] > last_write[b],
                        "block {} last delivered from a read at {}, written at {}", b, last_read_delivered[b], last_write[b]
                    );
                }
            }
            if !wrote {
                prop_assert_eq!(plan.sent_bytes(), initial_dirty + failed_bytes);
                prop_assert_eq!(plan.progress(T0).total_bytes, initial_dirty);
            }
            prop_assert_eq!(plan.progress(T0).percent_done.to_string(), "100.00");
        }
    }
}
