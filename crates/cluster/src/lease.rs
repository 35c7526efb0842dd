//! Leases: when a Primary may complete I/O without its peer, and when the survivor may take over (SPEC
//! invariant 8). No clock: time is a [`Duration`] since any fixed origin of the caller's monotonic clock.
//!
//! A write the peer acknowledged is on both disks, whatever happens next. What a Primary completes *alone* —
//! while the replication link is down, or under protocol A — is safe only if the peer cannot have taken the
//! volume over meanwhile. Without STONITH nothing stops a node that was frozen (a paused VM, a stalled host,
//! SIGSTOP) from resuming with its old belief that it is the Primary; a lease makes that belief expire by the
//! node's own clock, so it holds its I/O from the moment it resumes instead of acknowledging writes the survivor
//! will never see.
//!
//! # The exchange
//! Every report a node sends carries a *stamp*, its own clock in milliseconds ([`LeaseHolder::stamp`]), and, for
//! each volume it grants the peer, the newest stamp it received from the peer (the *echo*).
//! - **Grantee** ([`LeaseHolder`]): an echo of stamp `s` for a volume makes the lease of that volume run until
//!   `s + lease` on the grantee's clock. The peer received `s` after the grantee sent it, so whatever the
//!   network delay, the lease never runs past what the grantor promised. Stale echoes (buffered while the
//!   node was frozen) carry old stamps and give leases that are already over; a stamp from the future is
//!   refused.
//! - **Grantor** ([`LeaseGrantor`]): a node grants a volume only while it sees the peer Online, is not Primary
//!   of that volume itself and is not taking it over. It records when it last granted each volume, and takes a
//!   volume over (promotes it while the peer is not connected over the replication link) only
//!   [`LeaseConfig::takeover_wait`] after that: the lease plus the clock rate error the two clocks may have over
//!   it, plus a margin. The grantee's lease, started no later than the grant was sent, has run out by then.
//! - **Alone**: a Primary whose peer is Offline — judged by a membership that does not count its own pauses as
//!   the peer's silence ([`crate::membership`] rule 9) — holds an alone lease from the driver: until `now +
//!   lease` at each of its own ticks without a witness (so it runs out while the node is frozen), or the witness
//!   vote's belief with one ([`crate::witness`]). A partition without a witness lets both sides write, as in the
//!   seed; the split brain is detected on reconnect.
//!
//! The engine of each volume checks the lease against the `now` of the request itself; a node that was frozen
//! finds it over the moment it resumes, before it acknowledges anything, and starts no new generation, so the
//! survivor's data is the newer generation on reconnect.

use std::collections::BTreeMap;
use std::time::Duration;

/// The lease timings, validated by [`LeaseConfig::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a grant lasts, from the grantee's send time of the stamp it echoes.
    pub lease: Duration,
    /// The largest difference between the rates of the two nodes' clocks, in parts per million.
    pub rate_error_ppm: u32,
    /// Added to the survivor's wait, for scheduling delays between the check and the promotion.
    pub margin: Duration,
}

/// The largest clock rate error assumed: 0.1 %, two hundred times what a quartz oscillator drifts.
pub const DEFAULT_RATE_ERROR_PPM: u32 = 1000;
/// The default margin of the survivor's wait.
pub const DEFAULT_MARGIN: Duration = Duration::from_millis(20);

/// Why lease timings are refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseConfigError {
    /// A lease must outlast a heartbeat interval, or it lapses between two renewals.
    #[error(
        "a lease of {lease_ms} ms does not outlast the heartbeat interval of {interval_ms} ms"
    )]
    TooShort {
        /// The lease.
        lease_ms: u128,
        /// The heartbeat interval.
        interval_ms: u128,
    },
    /// The survivor's wait must end before the detection timeout, or leases slow every failover down.
    #[error(
        "a lease of {lease_ms} ms leaves the survivor waiting {wait_ms} ms, not shorter than the detection \
         timeout of {timeout_ms} ms"
    )]
    TooLong {
        /// The lease.
        lease_ms: u128,
        /// The survivor's wait.
        wait_ms: u128,
        /// The detection timeout.
        timeout_ms: u128,
    },
}

impl LeaseConfig {
    /// The lease for a cluster with these membership timings: three fifths of the detection timeout, so a
    /// Primary renews it several times per lease and the survivor's wait ends before the peer is declared
    /// Offline by the timeout.
    pub fn new(
        heartbeat_interval: Duration,
        detection_timeout: Duration,
    ) -> Result<LeaseConfig, LeaseConfigError> {
        let config = LeaseConfig {
            lease: detection_timeout * 3 / 5,
            rate_error_ppm: DEFAULT_RATE_ERROR_PPM,
            margin: DEFAULT_MARGIN,
        };
        if config.lease <= heartbeat_interval {
            return Err(LeaseConfigError::TooShort {
                lease_ms: config.lease.as_millis(),
                interval_ms: heartbeat_interval.as_millis(),
            });
        }
        if config.takeover_wait() >= detection_timeout {
            return Err(LeaseConfigError::TooLong {
                lease_ms: config.lease.as_millis(),
                wait_ms: config.takeover_wait().as_millis(),
                timeout_ms: detection_timeout.as_millis(),
            });
        }
        Ok(config)
    }

    /// How long after its last grant of a volume a node waits before it takes that volume over: the lease,
    /// stretched by the clock rate error, plus the margin.
    pub fn takeover_wait(&self) -> Duration {
        let stretch = self.lease.as_nanos() * u128::from(self.rate_error_ppm) / 1_000_000;
        self.lease + Duration::from_nanos(u64::try_from(stretch).unwrap_or(u64::MAX)) + self.margin
    }
}

/// What this node holds: the grants its peer sent, per volume.
#[derive(Clone, Debug)]
pub struct LeaseHolder {
    config: LeaseConfig,
    granted: BTreeMap<String, Duration>,
}

impl LeaseHolder {
    /// No lease yet.
    pub fn new(config: LeaseConfig) -> LeaseHolder {
        LeaseHolder {
            config,
            granted: BTreeMap::new(),
        }
    }

    /// The stamp to put in a report sent now: this node's clock in milliseconds.
    pub fn stamp(&self, now: Duration) -> u64 {
        u64::try_from(now.as_millis()).unwrap_or(u64::MAX)
    }

    /// The peer echoed `stamp` for `volumes`: each of their leases runs until `stamp + lease`, unless an earlier
    /// grant already runs longer. A stamp above `now` was never sent by this node (a forged or corrupted
    /// report, or another incarnation's clock) and is ignored.
    pub fn granted<'a>(
        &mut self,
        stamp: u64,
        volumes: impl IntoIterator<Item = &'a str>,
        now: Duration,
    ) {
        let sent = Duration::from_millis(stamp);
        if sent > now {
            return;
        }
        let until = sent + self.config.lease;
        for volume in volumes {
            let entry = self.granted.entry(volume.to_string()).or_default();
            *entry = (*entry).max(until);
        }
    }

    /// Until when this node may complete I/O of `volume` alone: the peer's grant or the driver's `alone`
    /// lease, whichever runs longer; `None` if it never had either. A time at or before `now` is no lease.
    pub fn until(&self, volume: &str, alone: Option<Duration>) -> Option<Duration> {
        let granted = self.granted.get(volume).copied();
        match (granted, alone) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What this node promised its peer: when it last granted each volume.
#[derive(Clone, Debug)]
pub struct LeaseGrantor {
    config: LeaseConfig,
    last_grant: BTreeMap<String, Duration>,
}

impl LeaseGrantor {
    /// Nothing granted yet.
    pub fn new(config: LeaseConfig) -> LeaseGrantor {
        LeaseGrantor {
            config,
            last_grant: BTreeMap::new(),
        }
    }

    /// A report granting `volumes` is sent now.
    pub fn granting<'a>(&mut self, volumes: impl IntoIterator<Item = &'a str>, now: Duration) {
        for volume in volumes {
            self.last_grant.insert(volume.to_string(), now);
        }
    }

    /// Whether this node may take `volume` over now: the peer's lease from its last grant has run out.
    pub fn may_take_over(&self, volume: &str, now: Duration) -> bool {
        self.wait_left(volume, now).is_zero()
    }

    /// How long this node must still wait before it takes `volume` over.
    pub fn wait_left(&self, volume: &str, now: Duration) -> Duration {
        self.last_grant.get(volume).map_or(Duration::ZERO, |&t| {
            (t + self.config.takeover_wait()).saturating_sub(now)
        })
    }
}

#[cfg(test)]
mod tests;
