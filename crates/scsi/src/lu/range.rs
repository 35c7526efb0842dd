//! [`RangeLocks`]: the block ranges of writes in flight.
//!
//! COMPARE AND WRITE, ORWRITE and WRITE AND VERIFY read what they write (or write what they read) and must not
//! interleave with another write to the same blocks: they take their range exclusively. Every other write shares
//! its range, so overlapping plain writes proceed as the device orders them, as before. A range is granted in
//! arrival order among the ranges it conflicts with, so a waiting exclusive request is not starved by a stream of
//! shared ones. Nothing here is held across I/O except the range itself; unrelated ranges never wait.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// How a range is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
    /// With other shared holders of overlapping ranges (plain writes).
    Shared,
    /// Alone among every overlapping range (read-compare-write commands).
    Exclusive,
}

#[derive(Debug)]
struct Entry {
    ticket: u64,
    start: u64,
    end: u64,
    exclusive: bool,
}

impl Entry {
    fn conflicts(&self, other: &Entry) -> bool {
        // An empty range overlaps nothing.
        let overlap = self.start.max(other.start) < self.end.min(other.end);
        overlap && (self.exclusive || other.exclusive)
    }
}

#[derive(Debug, Default)]
struct State {
    next_ticket: u64,
    /// Held and waiting ranges, in arrival (ticket) order.
    entries: Vec<Entry>,
    /// Threads waiting in [`RangeLocks::lock`]: a release wakes them only when there are any (a wake-up is a
    /// system call, on every write's completion otherwise).
    waiters: usize,
}

impl State {
    /// Appends a range in arrival order; its ticket.
    fn enqueue(&mut self, lba: u64, blocks: u64, access: Access) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.entries.push(Entry {
            ticket,
            start: lba,
            end: lba.saturating_add(blocks),
            exclusive: access == Access::Exclusive,
        });
        ticket
    }

    /// Whether the entry `ticket` must wait for an earlier conflicting one.
    fn blocked(&self, ticket: u64) -> bool {
        let Some(i) = self.entries.iter().position(|e| e.ticket == ticket) else {
            return false;
        };
        let me = &self.entries[i];
        self.entries[..i].iter().any(|e| e.conflicts(me))
    }
}

/// The block ranges of the logical unit's writes in flight.
#[derive(Debug, Default)]
pub(super) struct RangeLocks {
    state: Mutex<State>,
    released: Condvar,
}

/// A range held until dropped (from whatever thread completes the write).
#[derive(Debug)]
pub(super) struct RangeGuard {
    locks: Arc<RangeLocks>,
    ticket: u64,
}

impl RangeLocks {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every update is one push or one removal: the list stays consistent if a holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks `lba .. lba + blocks`, waiting while an earlier conflicting range is held or waiting.
    pub(super) fn lock(self: &Arc<Self>, lba: u64, blocks: u64, access: Access) -> RangeGuard {
        let mut st = self.state();
        let ticket = st.enqueue(lba, blocks, access);
        if st.blocked(ticket) {
            st.waiters += 1;
            while st.blocked(ticket) {
                st = self.released.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.waiters -= 1;
        }
        RangeGuard {
            locks: Arc::clone(self),
            ticket,
        }
    }

    /// Takes `lba .. lba + blocks` if nothing earlier conflicts with it now; `None` (and nothing held or queued)
    /// if it would have to wait. For callers that must not block (a connection's task): they hand the command
    /// to a thread that may wait instead.
    pub(super) fn try_lock(
        self: &Arc<Self>,
        lba: u64,
        blocks: u64,
        access: Access,
    ) -> Option<RangeGuard> {
        let mut st = self.state();
        let ticket = st.enqueue(lba, blocks, access);
        if st.blocked(ticket) {
            // The newest entry: nobody waits for it, so it leaves without a wake-up.
            st.entries.pop();
            return None;
        }
        Some(RangeGuard {
            locks: Arc::clone(self),
            ticket,
        })
    }

    /// Ranges held or waiting (for tests that wait for a command to queue).
    #[cfg(test)]
    pub(super) fn entries(&self) -> usize {
        self.state().entries.len()
    }
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        let mut st = self.locks.state();
        st.entries.retain(|e| e.ticket != self.ticket);
        // Checked under the lock a waiter holds from its check of `blocked` until it sleeps: none is missed.
        let wake = st.waiters > 0;
        drop(st);
        if wake {
            self.locks.released.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;

    /// Waits (bounded) until `locks` holds `n` entries.
    fn wait_for_entries(locks: &RangeLocks, n: usize) {
        for _ in 0..100_000 {
            if locks.entries() == n {
                return;
            }
            thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("never saw {n} entries");
    }

    #[test]
    fn shared_ranges_overlap_and_disjoint_ranges_never_wait() {
        let locks = Arc::new(RangeLocks::default());
        let a = locks.lock(0, 10, Access::Shared);
        let b = locks.lock(5, 10, Access::Shared);
        let c = locks.lock(100, 10, Access::Exclusive);
        let d = locks.lock(10, 0, Access::Exclusive); // empty: overlaps nothing
        assert_eq!(locks.entries(), 4);
        drop((a, b, c, d));
        assert_eq!(locks.entries(), 0);
    }

    #[test]
    fn exclusive_waits_for_overlap_and_later_shared_waits_for_it() {
        let locks = Arc::new(RangeLocks::default());
        let first = locks.lock(0, 8, Access::Shared);
        let (tx, rx) = mpsc::channel();
        let l2 = Arc::clone(&locks);
        let tx2 = tx.clone();
        let exclusive = thread::spawn(move || {
            let g = l2.lock(4, 8, Access::Exclusive);
            tx2.send("exclusive").unwrap();
            g
        });
        wait_for_entries(&locks, 2);
        let l3 = Arc::clone(&locks);
        let shared = thread::spawn(move || {
            let g = l3.lock(10, 1, Access::Shared);
            tx.send("shared").unwrap();
            drop(g);
        });
        wait_for_entries(&locks, 3);
        // Both wait: the exclusive one for `first`, the shared one for the exclusive one ahead of it.
        assert!(rx.try_recv().is_err());
        drop(first);
        assert_eq!(rx.recv().unwrap(), "exclusive");
        let g = exclusive.join().unwrap();
        assert!(rx.try_recv().is_err());
        drop(g);
        assert_eq!(rx.recv().unwrap(), "shared");
        shared.join().unwrap();
        assert_eq!(locks.entries(), 0);
        assert_eq!(locks.state().waiters, 0, "every waiter counted out");
    }
}
