//! What the target counts for the metrics endpoint: per target its sessions and refused logins, per LUN its
//! commands, bytes and command durations.
//!
//! Counting is a few relaxed atomic adds per command on counters that already exist: a LUN's counters are
//! looked up when a LUN map is built ([`TargetStats::lun`]), never per command, and nothing here takes a lock on
//! the data path. The registry ([`IoStats`]) outlives the servers that use it, so a target rebuilt after a
//! failover or a reload keeps counting where it was. Formatting them is the metrics endpoint's job.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use twinsan_iscsi::LoginStatus;

/// Upper bounds of the duration buckets, in seconds: 50 µs to 10 s, about three per decade, which covers a
/// page-cache hit and a write that waits for a peer across a failover.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// The same bounds in nanoseconds, for the comparison on the data path.
const BUCKET_NANOS: [u64; 16] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// A histogram of durations with the fixed [`DURATION_BUCKETS`], safe to update from any thread: one observation
/// is two relaxed atomic adds (its bucket and the sum).
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Per bucket, observations that fell in it (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; 17],
    sum_nanos: AtomicU64,
}

/// A consistent-enough copy of a [`DurationHistogram`] (each field read once).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Per upper bound of [`DURATION_BUCKETS`], the observations in that bucket alone (not cumulative).
    pub buckets: Vec<(f64, u64)>,
    /// Observations above the last bound.
    pub over: u64,
    /// Observations.
    pub count: u64,
    /// Their sum in seconds.
    pub sum_seconds: f64,
}

impl DurationHistogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKET_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| (*bound, n.load(Ordering::Relaxed)))
            .collect();
        let over = self.buckets[16].load(Ordering::Relaxed);
        HistogramSnapshot {
            count: buckets.iter().map(|(_, n)| n).sum::<u64>() + over,
            buckets,
            over,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// The kind of a SCSI command, as the metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// READ(6/10/12/16) and the commands that move data to the initiator from the medium.
    Read,
    /// WRITE(6/10/12/16), WRITE AND VERIFY, WRITE SAME, COMPARE AND WRITE, ORWRITE, UNMAP: what changes the medium.
    Write,
    /// Everything else (INQUIRY, TEST UNIT READY, SYNCHRONIZE CACHE, reservations, ...).
    Other,
}

impl OpKind {
    /// Every kind, in label order.
    pub const ALL: [OpKind; 3] = [OpKind::Read, OpKind::Write, OpKind::Other];

    /// The kind of the command whose CDB starts with `opcode`.
    pub fn of(opcode: u8) -> OpKind {
        match opcode {
            // READ(6), READ(10), READ(12), READ(16).
            0x08 | 0x28 | 0xa8 | 0x88 => OpKind::Read,
            // WRITE(6/10/12/16), WRITE AND VERIFY(10/12/16), WRITE SAME(10/16), UNMAP, COMPARE AND WRITE, ORWRITE.
            0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x41 | 0x93 | 0x42 | 0x89 | 0x8b => {
                OpKind::Write
            }
            _ => OpKind::Other,
        }
    }

    /// The `op` label value.
    pub fn label(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Other => "other",
        }
    }

    fn index(self) -> usize {
        match self {
            OpKind::Read => 0,
            OpKind::Write => 1,
            OpKind::Other => 2,
        }
    }
}

/// The counters of one LUN of one target.
#[derive(Debug, Default)]
pub struct LunStats {
    /// Per [`OpKind`]: command durations, from the command's arrival to its status being queued for the
    /// initiator; their count is the command count.
    durations: [DurationHistogram; 3],
    /// Bytes sent to the initiator (Data-In).
    read_bytes: AtomicU64,
    /// Bytes received from the initiator and used (Data-Out and immediate data).
    write_bytes: AtomicU64,
}

impl LunStats {
    /// Records one finished command.
    pub fn record(&self, op: OpKind, read: u64, written: u64, took: Duration) {
        self.durations[op.index()].observe(took);
        if read > 0 {
            self.read_bytes.fetch_add(read, Ordering::Relaxed);
        }
        if written > 0 {
            self.write_bytes.fetch_add(written, Ordering::Relaxed);
        }
    }

    /// The durations of one kind of command.
    pub fn durations(&self, op: OpKind) -> HistogramSnapshot {
        self.durations[op.index()].snapshot()
    }

    /// Bytes sent to initiators.
    pub fn read_bytes(&self) -> u64 {
        self.read_bytes.load(Ordering::Relaxed)
    }

    /// Bytes written by initiators.
    pub fn write_bytes(&self) -> u64 {
        self.write_bytes.load(Ordering::Relaxed)
    }
}

/// Why a login was refused, as the metrics label it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginFailure {
    /// CHAP failed (wrong secret, wrong user, a mutual CHAP answer refused).
    Authentication,
    /// The initiator is not on the target's allow-list.
    Authorization,
    /// No such target here.
    NotFound,
    /// The initiator broke the login protocol (a malformed or unexpected PDU, a missing or invalid key).
    Protocol,
    /// A session that does not exist, or a second connection to one (MaxConnections is 1).
    Session,
    /// The login did not finish within the login timeout.
    Timeout,
    /// The target could not serve it (its own error, out of resources).
    Target,
}

impl LoginFailure {
    /// Every reason, in label order.
    pub const ALL: [LoginFailure; 7] = [
        LoginFailure::Authentication,
        LoginFailure::Authorization,
        LoginFailure::NotFound,
        LoginFailure::Protocol,
        LoginFailure::Session,
        LoginFailure::Timeout,
        LoginFailure::Target,
    ];

    /// The reason for a refusal answered with `status`.
    pub fn of(status: LoginStatus) -> LoginFailure {
        use LoginStatus as S;
        match status {
            S::AuthenticationFailure => LoginFailure::Authentication,
            S::AuthorizationFailure => LoginFailure::Authorization,
            S::NotFound
            | S::TargetRemoved
            | S::TargetMovedTemporarily
            | S::TargetMovedPermanently => LoginFailure::NotFound,
            S::TooManyConnections | S::SessionDoesNotExist | S::CannotIncludeInSession => {
                LoginFailure::Session
            }
            S::InitiatorError
            | S::UnsupportedVersion
            | S::MissingParameter
            | S::SessionTypeNotSupported
            | S::InvalidDuringLogin => LoginFailure::Protocol,
            S::Success | S::TargetError | S::ServiceUnavailable | S::OutOfResources => {
                LoginFailure::Target
            }
        }
    }

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            LoginFailure::Authentication => "authentication",
            LoginFailure::Authorization => "authorization",
            LoginFailure::NotFound => "not_found",
            LoginFailure::Protocol => "protocol",
            LoginFailure::Session => "session",
            LoginFailure::Timeout => "timeout",
            LoginFailure::Target => "target_error",
        }
    }

    fn index(self) -> usize {
        match self {
            LoginFailure::Authentication => 0,
            LoginFailure::Authorization => 1,
            LoginFailure::NotFound => 2,
            LoginFailure::Protocol => 3,
            LoginFailure::Session => 4,
            LoginFailure::Timeout => 5,
            LoginFailure::Target => 6,
        }
    }
}

/// The counters of one target.
#[derive(Debug, Default)]
pub struct TargetStats {
    /// Normal sessions in full feature phase now.
    sessions: AtomicI64,
    /// Refused logins, per [`LoginFailure`].
    login_failures: [AtomicU64; 7],
    luns: Mutex<BTreeMap<u64, Arc<LunStats>>>,
    /// The initiators logged in now, with their session count (changed at login and logout only).
    initiators: Mutex<BTreeMap<String, usize>>,
}

impl TargetStats {
    /// The counters of LUN `lun`, created at the first call.
    pub fn lun(&self, lun: u64) -> Arc<LunStats> {
        self.luns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(lun)
            .or_default()
            .clone()
    }

    /// Every LUN counted so far.
    pub fn luns(&self) -> Vec<(u64, Arc<LunStats>)> {
        self.luns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, s)| (*n, s.clone()))
            .collect()
    }

    /// Normal sessions logged in now.
    pub fn sessions(&self) -> i64 {
        self.sessions.load(Ordering::Relaxed).max(0)
    }

    /// Refused logins for `why`.
    pub fn login_failures(&self, why: LoginFailure) -> u64 {
        self.login_failures[why.index()].load(Ordering::Relaxed)
    }

    /// The initiators logged in now and their session counts, by name.
    pub fn initiators(&self) -> Vec<(String, usize)> {
        self.lock_initiators()
            .iter()
            .map(|(n, c)| (n.clone(), *c))
            .collect()
    }

    fn lock_initiators(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, usize>> {
        self.initiators.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn session_up(&self, initiator: &str) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        *self
            .lock_initiators()
            .entry(initiator.to_string())
            .or_default() += 1;
    }

    pub(crate) fn session_down(&self, initiator: &str) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
        let mut all = self.lock_initiators();
        if let Some(n) = all.get_mut(initiator) {
            *n -= 1;
            if *n == 0 {
                all.remove(initiator);
            }
        }
    }

    pub(crate) fn login_failed(&self, why: LoginFailure) {
        self.login_failures[why.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// The counters of every target a process serves, by target name, kept across servers.
///
/// A login refused before a configured target was named (discovery, an unknown name) counts under the target
/// name `""`, so an initiator that tries made-up names cannot grow the registry.
#[derive(Debug, Default)]
pub struct IoStats {
    targets: Mutex<BTreeMap<String, Arc<TargetStats>>>,
}

impl IoStats {
    /// The counters of target `name`, created at the first call.
    pub fn target(&self, name: &str) -> Arc<TargetStats> {
        let mut all = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = all.get(name) {
            return t.clone();
        }
        let t = Arc::new(TargetStats::default());
        all.insert(name.to_string(), t.clone());
        t
    }

    /// Every target counted so far, by name.
    pub fn targets(&self) -> Vec<(String, Arc<TargetStats>)> {
        self.targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_lands_in_the_first_bucket_that_holds_it() {
        let h = DurationHistogram::default();
        h.observe(Duration::from_micros(50)); // on the bound: le="5e-05"
        h.observe(Duration::from_micros(51)); // le="0.0001"
        h.observe(Duration::from_secs(20)); // +Inf only
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.000_05, 1));
        assert_eq!(s.buckets[1], (0.000_1, 1));
        assert_eq!(s.buckets[2..].iter().map(|(_, n)| n).sum::<u64>(), 0);
        assert_eq!(s.over, 1);
        assert!((s.sum_seconds - 20.000_101).abs() < 1e-9);
    }

    #[test]
    fn bounds_agree_in_both_units() {
        for (s, n) in DURATION_BUCKETS.iter().zip(BUCKET_NANOS) {
            assert_eq!((s * 1e9).round() as u64, n);
        }
        assert!(BUCKET_NANOS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn opcodes_are_classified() {
        assert_eq!(OpKind::of(0x28), OpKind::Read);
        assert_eq!(OpKind::of(0x8a), OpKind::Write);
        assert_eq!(OpKind::of(0x42), OpKind::Write); // UNMAP
        assert_eq!(OpKind::of(0x35), OpKind::Other); // SYNCHRONIZE CACHE(10)
        assert_eq!(OpKind::of(0x12), OpKind::Other); // INQUIRY
    }

    #[test]
    fn registries_hand_out_the_same_counters() {
        let io = IoStats::default();
        let a = io.target("iqn.a").lun(1);
        a.record(OpKind::Write, 0, 4096, Duration::from_millis(1));
        let again = io.target("iqn.a").lun(1);
        assert_eq!(again.write_bytes(), 4096);
        assert_eq!(again.durations(OpKind::Write).count, 1);
        assert_eq!(io.targets().len(), 1);
        let t = io.target("iqn.a");
        t.login_failed(LoginFailure::of(LoginStatus::AuthorizationFailure));
        assert_eq!(t.login_failures(LoginFailure::Authorization), 1);
        // Two sessions of one initiator (two ISIDs) and one of another; they log out again.
        for who in ["iqn.x", "iqn.x", "iqn.y"] {
            t.session_up(who);
        }
        assert_eq!(t.sessions(), 3);
        assert_eq!(
            t.initiators(),
            [("iqn.x".to_string(), 2), ("iqn.y".to_string(), 1)]
        );
        for who in ["iqn.x", "iqn.y"] {
            t.session_down(who);
        }
        assert_eq!(t.initiators(), [("iqn.x".to_string(), 1)]);
        t.session_down("iqn.x");
        assert_eq!((t.sessions(), t.initiators().len()), (0, 0));
    }
}
