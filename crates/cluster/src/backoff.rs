//! When the executor tries a failed cluster action again: a bounded exponential backoff per action (resource and
//! verb), with the reason of its last failure kept for the status view. Pure: the caller passes the time in.
//!
//! A busy port, a missing device or a refused promotion fail the same way every time; retrying each 100 ms only
//! floods the log and flips the status. The first retry comes after [`Policy::initial`], each further one after
//! twice the last, at most [`Policy::cap`]; a success of the same action, or `resource cleanup`, starts over.
//! The volume driver paces its dialling with the same [`RETRY`] after connections the peer refused.

use std::collections::BTreeMap;
use std::time::Duration;

/// The delays between retries of one failing action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The wait after the first failure.
    pub initial: Duration,
    /// The longest wait.
    pub cap: Duration,
}

/// The executor's policy: 200 ms, doubling, at most 10 s.
pub const RETRY: Policy = Policy {
    initial: Duration::from_millis(200),
    cap: Duration::from_secs(10),
};

impl Policy {
    /// The wait after the `failures`-th failure in a row (1 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial.saturating_mul(1 << doublings).min(self.cap)
    }
}

/// An action that failed and waits for its retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failing {
    /// Failures in a row.
    pub failures: u32,
    /// Why it failed the last time.
    pub reason: String,
    /// The wait before the next try.
    pub delay: Duration,
    /// When it may run again (the caller's clock).
    pub retry_at: Duration,
}

/// What the caller makes of one failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The wait before the next try.
    pub delay: Duration,
    /// Failures in a row, this one included.
    pub failures: u32,
    /// The first failure, or another reason than the last time: worth a warning (a repeat is only debug).
    pub news: bool,
}

/// The failing actions of this node, by resource and verb (`start`, `stop`, `promote`, `demote`).
#[derive(Clone, Debug)]
pub struct Retries {
    policy: Policy,
    failing: BTreeMap<(String, String), Failing>,
}

impl Default for Retries {
    fn default() -> Self {
        Retries::new(RETRY)
    }
}

impl Retries {
    /// No action failing, retried by `policy`.
    pub fn new(policy: Policy) -> Self {
        Retries {
            policy,
            failing: BTreeMap::new(),
        }
    }

    /// `verb` of `resource` failed at `now` because of `reason`.
    pub fn failed(&mut self, resource: &str, verb: &str, reason: &str, now: Duration) -> Verdict {
        let key = (resource.to_string(), verb.to_string());
        let (failures, news) = match self.failing.get(&key) {
            Some(f) => (f.failures.saturating_add(1), f.reason != reason),
            None => (1, true),
        };
        let delay = self.policy.delay(failures);
        self.failing.insert(
            key,
            Failing {
                failures,
                reason: reason.to_string(),
                delay,
                retry_at: now + delay,
            },
        );
        Verdict {
            delay,
            failures,
            news,
        }
    }

    /// `verb` of `resource` succeeded: its next failure is a first one again.
    pub fn succeeded(&mut self, resource: &str, verb: &str) {
        self.failing
            .remove(&(resource.to_string(), verb.to_string()));
    }

    /// Forgets the failures of `resource`, or of every resource (`resource cleanup`).
    pub fn clear(&mut self, resource: Option<&str>) {
        self.failing
            .retain(|(r, _), _| resource.is_some_and(|only| only != r));
    }

    /// How long `verb` of `resource` must still wait at `now`; `None` when it may run.
    pub fn wait(&self, resource: &str, verb: &str, now: Duration) -> Option<Duration> {
        self.failing
            .get(&(resource.to_string(), verb.to_string()))
            .map(|f| f.retry_at.saturating_sub(now))
            .filter(|left| !left.is_zero())
    }

    /// The failing actions of `resource`: verb and state.
    pub fn of<'a>(
        &'a self,
        resource: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Failing)> + 'a {
        self.failing
            .iter()
            .filter(move |((r, _), _)| r == resource)
            .map(|((_, verb), f)| (verb.as_str(), f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_delay_doubles_from_200_ms_up_to_10_s() {
        let delays: Vec<u64> = (1..=10)
            .map(|n| RETRY.delay(n).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000, 10_000]
        );
        assert_eq!(RETRY.delay(u32::MAX), ms(10_000));
        assert_eq!(RETRY.delay(0), ms(200), "no failure yet waits the least");
    }

    #[test]
    fn a_failed_action_waits_for_its_retry_time_then_may_run() {
        let mut r = Retries::default();
        let v = r.failed("vol0-lun1", "start", "port busy", ms(1000));
        assert_eq!(
            v,
            Verdict {
                delay: ms(200),
                failures: 1,
                news: true
            }
        );
        assert_eq!(r.wait("vol0-lun1", "start", ms(1000)), Some(ms(200)));
        assert_eq!(r.wait("vol0-lun1", "start", ms(1150)), Some(ms(50)));
        assert_eq!(r.wait("vol0-lun1", "start", ms(1200)), None);
        // Another verb or resource is not held.
        assert_eq!(r.wait("vol0-lun1", "stop", ms(1000)), None);
        assert_eq!(r.wait("vol0-target", "start", ms(1000)), None);
    }

    #[test]
    fn repeated_failures_back_off_and_only_a_new_reason_is_news() {
        let mut r = Retries::default();
        let mut now = ms(0);
        let mut seen = Vec::new();
        for reason in ["busy", "busy", "busy", "gone", "gone"] {
            let v = r.failed("vol0", "promote", reason, now);
            seen.push((v.delay.as_millis() as u64, v.failures, v.news));
            now += v.delay;
        }
        assert_eq!(
            seen,
            [
                (200, 1, true),
                (400, 2, false),
                (800, 3, false),
                (1600, 4, true),
                (3200, 5, false)
            ]
        );
        let (verb, f) = r.of("vol0").next().expect("failing");
        assert_eq!(
            (verb, f.reason.as_str(), f.failures),
            ("promote", "gone", 5)
        );
    }

    #[test]
    fn success_starts_over() {
        let mut r = Retries::default();
        for _ in 0..5 {
            r.failed("vol0-vip", "start", "no such device", ms(0));
        }
        r.succeeded("vol0-vip", "start");
        assert_eq!(r.wait("vol0-vip", "start", ms(0)), None);
        assert_eq!(r.of("vol0-vip").count(), 0);
        let v = r.failed("vol0-vip", "start", "no such device", ms(0));
        assert_eq!((v.delay, v.failures, v.news), (ms(200), 1, true));
    }

    #[test]
    fn a_success_of_another_verb_does_not_reset() {
        let mut r = Retries::default();
        r.failed("vol0-lun1", "start", "busy", ms(0));
        r.succeeded("vol0-lun1", "stop");
        let v = r.failed("vol0-lun1", "start", "busy", ms(200));
        assert_eq!((v.delay, v.failures), (ms(400), 2));
    }

    #[test]
    fn cleanup_forgets_one_resource_or_all() {
        let mut r = Retries::default();
        r.failed("vol0-lun1", "start", "busy", ms(0));
        r.failed("vol0-vip", "start", "no device", ms(0));
        r.clear(Some("vol0-lun1"));
        assert_eq!(r.wait("vol0-lun1", "start", ms(0)), None);
        assert_eq!(r.wait("vol0-vip", "start", ms(0)), Some(ms(200)));
        r.clear(None);
        assert_eq!(r.wait("vol0-vip", "start", ms(0)), None);
    }
}
