//! Reservations of one logical unit: SPC-4 persistent reservations (PERSISTENT RESERVE IN / OUT) and SPC-2
//! RESERVE / RELEASE, the access check every command passes, and the unit attentions reservations cause.
//!
//! - [`state`]: the persistent state and its transitions, pure; [`params`] and [`transport_id`] parse what a
//!   PERSISTENT RESERVE OUT carries; [`prin`] builds PERSISTENT RESERVE IN data; [`access`] says which
//!   commands a reservation lets through, by opcode; [`codec`] is the stored form.
//! - Persistence: the state lives with the device ([`BlockDevice::store_reservations`]), so a replicated volume
//!   has it on both nodes. It is loaded before the first command that needs it and again after
//!   [`LogicalUnit::reload_reservations`]; every PERSISTENT RESERVE OUT that changes it is stored before GOOD,
//!   and a store that fails leaves the state as it was. A device with no
//!   [`reservation_capacity`](BlockDevice::reservation_capacity) keeps nothing: the state is then in memory
//!   only and APTPL is refused.
//! - SPC-2 reservations are not persistent (SPC-2: released by a reset, an I_T nexus loss or a power cycle, and
//!   a failover is one); they live in memory only.
//! - PREEMPT AND ABORT does everything PREEMPT does. Aborting the tasks of the preempted I_T nexuses (SPC-4
//!   5.13.11.2.5, as an ABORT TASK SET from each would) is the transport's: the logical unit sees one command
//!   at a time and owns no task set. The engine would have to take the nexuses whose registrations were
//!   removed, abort their tasks on this LUN without sending status, and only then report GOOD; today their
//!   in-flight commands complete, and any they send afterwards meet the new reservation.
//!
//! Locks: `change` serializes everything that changes or loads the persistent state and is held across the
//! device I/O; `shared` is held only for memory operations, so the per-command access check never waits for a
//! store (it may wait for the first load), and while nothing is reserved it takes no lock at all (`open`).
//! Order: `change` before `shared` before the nexus map.

mod access;
mod codec;
mod params;
mod prin;
mod state;
#[cfg(test)]
mod tests;
mod transport_id;

use super::{truncated, LogicalUnit, Outcome, Request, TaskStatus};
use crate::cdb::{Command, PrInAction, PrOutAction};
use crate::sense::Sense;
use crate::{BlockDevice, Nexus};
use access::Class;
use state::{PrOut, PrState, Refusal, Registration, TargetPort};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Registrations at most, whatever the device's capacity.
const MAX_REGISTRATIONS: usize = 4096;
/// Encoded state at most when the device keeps none (memory only).
const MEMORY_ONLY_LIMIT_BYTES: usize = 64 * 1024;

/// The reservation state a logical unit has at power-on, given what was stored before the power loss (SPC-4
/// 5.13.5): with APTPL set the registrations and the reservation are kept; without it, or for bytes that are
/// not valid reservation state, nothing is (the empty result is the empty state). PRGENERATION starts at zero
/// either way, as SPC-4 6.16.2 requires of a power on.
pub fn reservations_after_power_loss(stored: &[u8]) -> Vec<u8> {
    match codec::decode(stored) {
        Ok(state) if state.aptpl => codec::encode(&state.after_power_loss()),
        _ => Vec::new(),
    }
}

impl Outcome {
    /// RESERVATION CONFLICT status: a reservation keeps this I_T nexus from running the command.
    pub fn reservation_conflict() -> Self {
        Self {
            status: TaskStatus::ReservationConflict,
            data_in: Vec::new(),
            sense: None,
        }
    }
}

impl From<Refusal> for Outcome {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Conflict => Outcome::reservation_conflict(),
            Refusal::Check(sense) => Outcome::check_condition(sense),
        }
    }
}

/// The I_T nexus holding an SPC-2 reservation, by its ports.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Spc2Holder {
    initiator_name: String,
    isid: [u8; 6],
    target_portal_group: u16,
}

impl Spc2Holder {
    fn of(n: &Nexus) -> Self {
        Self {
            initiator_name: n.initiator_name.clone(),
            isid: n.isid,
            target_portal_group: n.target_portal_group,
        }
    }

    fn is(&self, n: &Nexus) -> bool {
        self.initiator_name.eq_ignore_ascii_case(&n.initiator_name)
            && self.isid == n.isid
            && self.target_portal_group == n.target_portal_group
    }
}

#[derive(Debug, Default)]
struct Shared {
    /// The persistent state; `None` until loaded from the device.
    persistent: Option<PrState>,
    /// The SPC-2 reservation.
    spc2: Option<Spc2Holder>,
}

/// The reservation state of a logical unit (see the module docs).
#[derive(Debug)]
pub(super) struct Reservations {
    change: Mutex<()>,
    shared: Mutex<Shared>,
    /// `shared.persistent` is loaded: commands need no device I/O to be checked.
    loaded: AtomicBool,
    /// Loaded, and neither a persistent nor an SPC-2 reservation exists: every command may run, which the
    /// per-command check learns without taking a lock.
    open: AtomicBool,
}

impl Reservations {
    /// No reservations; for a device that keeps reservation state, still to be loaded from it.
    pub(super) fn new(dev: &dyn BlockDevice) -> Self {
        let memory_only = dev.reservation_capacity() == 0;
        Self {
            change: Mutex::new(()),
            shared: Mutex::new(Shared {
                persistent: memory_only.then(PrState::default),
                spc2: None,
            }),
            loaded: AtomicBool::new(memory_only),
            open: AtomicBool::new(memory_only),
        }
    }

    /// True once the state is in memory: checking a command needs no I/O.
    pub(super) fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    fn lock_change(&self) -> MutexGuard<'_, ()> {
        self.change.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_shared(&self) -> MutexGuard<'_, Shared> {
        // Every update is a single assignment, so the state is whole even if a holder panicked.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the shared state (every change goes through here, so `loaded` and `open` follow it).
    fn update<R>(&self, f: impl FnOnce(&mut Shared) -> R) -> R {
        let mut s = self.lock_shared();
        let r = f(&mut s);
        let loaded = s.persistent.is_some();
        let open = s.spc2.is_none()
            && s.persistent
                .as_ref()
                .is_some_and(|p| p.reservation.is_none());
        self.loaded.store(loaded, Ordering::Release);
        self.open.store(open, Ordering::Release);
        r
    }

    /// An I_T nexus is gone: an SPC-2 reservation it held is released. (Persistent reservations stay.)
    pub(super) fn nexus_gone(&self, nexus: &Nexus) {
        self.update(|s| {
            if s.spc2.as_ref().is_some_and(|h| h.is(nexus)) {
                s.spc2 = None;
            }
        });
    }

    /// A logical unit or target reset: the SPC-2 reservation is released. (Persistent reservations stay.)
    pub(super) fn reset(&self) {
        self.update(|s| s.spc2 = None);
    }
}

impl LogicalUnit {
    /// Makes the next command that needs the persistent reservation state load it from the device again, and
    /// drops any SPC-2 reservation. The cluster manager calls this when this node becomes the one serving the
    /// volume: the state the peer kept current through replication is then the truth. A device that keeps no
    /// reservation state has nothing to reload; its in-memory state is kept.
    pub fn reload_reservations(&self) {
        let _change = self.reservations.lock_change();
        let keeps_state = self.dev.reservation_capacity() > 0;
        self.reservations.update(|s| {
            s.spc2 = None;
            if keeps_state {
                s.persistent = None;
            }
        });
    }

    /// RESERVATION CONFLICT if a reservation keeps `req`'s I_T nexus from running its command (decoded
    /// already); a failure to load the state is a CHECK CONDITION.
    pub(super) fn check_reservations(&self, req: &Request<'_>) -> Result<(), Outcome> {
        if self.reservations.open.load(Ordering::Acquire) {
            return Ok(());
        }
        let class = access::classify(req.cdb);
        loop {
            let shared = self.reservations.lock_shared();
            if let Some(holder) = &shared.spc2 {
                // SPC-2 5.5.1: with an SPC-2 reservation, PERSISTENT RESERVE IN and OUT conflict for everyone.
                // No persistent reservation can exist at the same time.
                let persistent = matches!(class, Class::PrIn | Class::PrOut(_));
                if persistent || !(holder.is(req.nexus) || access::spc2_allows(req.cdb)) {
                    return Err(Outcome::reservation_conflict());
                }
                return Ok(());
            }
            if class == Class::Always {
                return Ok(());
            }
            match &shared.persistent {
                Some(p) => {
                    return match p.reservation {
                        Some(held)
                            if !access::persistent_allows(class, held, p.role(req.nexus)) =>
                        {
                            Err(Outcome::reservation_conflict())
                        }
                        _ => Ok(()),
                    };
                }
                None => {
                    drop(shared);
                    let _change = self.reservations.lock_change();
                    self.loaded_reservations()?;
                }
            }
        }
    }

    /// Runs the reservation commands (PERSISTENT RESERVE IN / OUT, RESERVE, RELEASE); `None` for any other.
    pub(super) fn run_reservation_command(
        &self,
        req: &Request<'_>,
        cmd: &Command,
    ) -> Option<Result<Vec<u8>, Outcome>> {
        Some(match *cmd {
            Command::PersistentReserveIn { action, alloc_len } => self
                .persistent_reserve_in(action)
                .map(|d| truncated(d, alloc_len.into())),
            Command::PersistentReserveOut {
                action,
                scope,
                pr_type,
                param_len,
            } => self.persistent_reserve_out(req, action, scope, pr_type, param_len),
            Command::Reserve(_) => self.spc2_reserve(req.nexus, true),
            Command::Release(_) => self.spc2_reserve(req.nexus, false),
            _ => return None,
        })
    }

    fn target_port(&self) -> TargetPort {
        TargetPort {
            relative_id: self.identity.relative_port,
            tpgt: self.identity.target_portal_group,
        }
    }

    /// The persistent state, loaded from the device if it is not yet. The caller holds the `change` lock.
    fn loaded_reservations(&self) -> Result<PrState, Sense> {
        if let Some(p) = &self.reservations.lock_shared().persistent {
            return Ok(p.clone());
        }
        let state = if self.dev.reservation_capacity() == 0 {
            PrState::default()
        } else {
            // An unreadable or undecodable state fails the command and is tried again by the next one: treating
            // it as empty could let another initiator write through a reservation. (The node daemon replaces
            // undecodable state at start with reservations_after_power_loss, which maps it to empty.)
            let stored = self
                .dev
                .load_reservations()
                .map_err(|_| Sense::internal_target_failure())?;
            codec::decode(&stored).map_err(|_| Sense::internal_target_failure())?
        };
        let loaded = state.clone();
        self.reservations.update(|s| s.persistent = Some(loaded));
        Ok(state)
    }

    fn persistent_reserve_in(&self, action: PrInAction) -> Result<Vec<u8>, Outcome> {
        let caps = prin::Capabilities {
            persist_through_power_loss: self.dev.reservation_capacity() > 0,
        };
        loop {
            if let Some(p) = &self.reservations.lock_shared().persistent {
                return Ok(prin::data(action, p, self.target_port(), caps));
            }
            let _change = self.reservations.lock_change();
            self.loaded_reservations()?;
        }
    }

    fn persistent_reserve_out(
        &self,
        req: &Request<'_>,
        action: PrOutAction,
        scope: u8,
        pr_type: u8,
        param_len: u32,
    ) -> Result<Vec<u8>, Outcome> {
        let params = params::parse(action, param_len, req.data_out)?;
        let _change = self.reservations.lock_change();
        if self.reservations.lock_shared().spc2.is_some() {
            return Err(Outcome::reservation_conflict());
        }
        let current = self.loaded_reservations()?;
        let capacity = self.dev.reservation_capacity();
        let cmd = PrOut {
            issuer: req.nexus,
            action,
            scope,
            pr_type,
            params: &params,
            port: self.target_port(),
            aptpl_capable: capacity > 0,
        };
        let Some(change) = current.apply(&cmd)? else {
            return Ok(Vec::new());
        };
        let stored = codec::encode(&change.state);
        let limit = if capacity > 0 {
            capacity
        } else {
            MEMORY_ONLY_LIMIT_BYTES
        };
        if stored.len() > limit || change.state.registrations.len() > MAX_REGISTRATIONS {
            return Err(Sense::insufficient_registration_resources().into());
        }
        if capacity > 0 {
            self.dev
                .store_reservations(&stored)
                .map_err(|_| Sense::internal_target_failure())?;
        }
        self.reservations
            .update(|s| s.persistent = Some(change.state));
        for notice in &change.notices {
            self.queue_reservation_attention(notice.sense, &notice.to, req.nexus);
        }
        Ok(Vec::new())
    }

    /// Queues `sense` for every known I_T nexus that one of `to` covers, except `issuer`'s.
    fn queue_reservation_attention(&self, sense: Sense, to: &[Registration], issuer: &Nexus) {
        let mut nexuses = self.lock();
        for (&id, state) in nexuses.iter_mut() {
            let covered = state
                .nexus
                .as_ref()
                .is_some_and(|n| to.iter().any(|r| r.matches(n)));
            if id != issuer.id && covered {
                state.push_unit_attention(sense);
            }
        }
    }

    /// RESERVE (`reserve`) or RELEASE of the whole logical unit, SPC-2 semantics with the SPC-4 5.13.3
    /// exceptions (CRH=1): from a persistent reservation holder, or a registrant while a registrants-only or
    /// all-registrants reservation exists, both are GOOD and do nothing; with any other registration present
    /// both conflict.
    fn spc2_reserve(&self, nexus: &Nexus, reserve: bool) -> Result<Vec<u8>, Outcome> {
        let _change = self.reservations.lock_change();
        let persistent = self.loaded_reservations()?;
        if let Some(i) = persistent.find(nexus) {
            let shared_type = persistent
                .reservation
                .is_some_and(|t| t.registrants_only() || t.all_registrants());
            if persistent.is_holder(i) || shared_type {
                return Ok(Vec::new());
            }
        }
        if !persistent.registrations.is_empty() {
            return Err(Outcome::reservation_conflict());
        }
        self.reservations.update(|s| {
            let mine = s.spc2.as_ref().is_none_or(|h| h.is(nexus));
            match (reserve, mine) {
                // Reserving again is GOOD; another nexus's reservation conflicts.
                (true, true) => s.spc2 = Some(Spc2Holder::of(nexus)),
                (true, false) => return Err(Outcome::reservation_conflict()),
                // Releasing is GOOD whoever asks; only the holder's release releases.
                (false, true) => s.spc2 = None,
                (false, false) => {}
            }
            Ok(Vec::new())
        })
    }
}
