//! The persistent reservation state of one logical unit and its transitions (SPC-4 5.13), without I/O.
//!
//! A PERSISTENT RESERVE OUT is [`PrState::apply`]: the current state and the command in, the next state and the
//! unit attentions it causes out (or the refusal). The caller stores the next state durably and only then makes
//! it current, so a refused or unstored command changes nothing.
//!
//! Registrations are keyed by the full I_T nexus as SPC defines it for iSCSI: the initiator port (iSCSI name and
//! ISID) and the target port (target portal group tag), never by a per-process nexus number, so the state means
//! the same on the other node after a failover.

use super::params::{BasicParams, MoveParams, Params};
use crate::cdb::PrOutAction;
use crate::sense::Sense;
use crate::Nexus;

/// Longest iSCSI name in bytes (RFC 7143 section 6.1).
pub(crate) const MAX_NAME_BYTES: usize = 223;

/// An iSCSI initiator port: the initiator's name and its ISID. Without an ISID (a TransportID of format 00b) the
/// port stands for every session of that initiator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InitiatorPort {
    /// iSCSI name; compared without regard to ASCII case (iSCSI names are case-insensitive).
    pub name: String,
    /// Initiator session identifier, if the registration is for one port only.
    pub isid: Option<[u8; 6]>,
}

impl InitiatorPort {
    /// The initiator port of `nexus`.
    pub fn of(nexus: &Nexus) -> Self {
        Self {
            name: nexus.initiator_name.clone(),
            isid: Some(nexus.isid),
        }
    }

    /// Whether this port is (or, without an ISID, includes) the initiator port `name` + `isid`.
    pub fn covers(&self, name: &str, isid: [u8; 6]) -> bool {
        self.name.eq_ignore_ascii_case(name) && self.isid.is_none_or(|i| i == isid)
    }

    /// Whether some initiator port is both this one and `other`.
    fn overlaps(&self, other: &InitiatorPort) -> bool {
        self.name.eq_ignore_ascii_case(&other.name)
            && match (self.isid, other.isid) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// One registered reservation key and the I_T nexuses it is registered for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Registration {
    /// The reservation key (never 0).
    pub key: u64,
    /// The initiator port.
    pub initiator: InitiatorPort,
    /// Target portal group tag of the target port the registration came through.
    pub tpgt: u16,
    /// Registered through every target port (ALL_TG_PT), not only `tpgt`.
    pub all_tg_pt: bool,
    /// Holds the persistent reservation. Only ever set for types other than the all-registrants ones, whose
    /// holders are all registrations.
    pub holder: bool,
}

impl Registration {
    /// Whether the command's I_T nexus is one this registration is for.
    pub fn matches(&self, nexus: &Nexus) -> bool {
        self.initiator.covers(&nexus.initiator_name, nexus.isid)
            && (self.all_tg_pt || self.tpgt == nexus.target_portal_group)
    }

    /// Whether some I_T nexus is covered by both registrations (never allowed: each nexus has one key).
    pub fn overlaps(&self, other: &Registration) -> bool {
        self.initiator.overlaps(&other.initiator)
            && (self.all_tg_pt || other.all_tg_pt || self.tpgt == other.tpgt)
    }
}

/// Persistent reservation TYPE (SPC-4 table 169).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum PrType {
    /// 1h: only the holder writes; everyone reads.
    WriteExclusive,
    /// 3h: only the holder accesses the medium.
    ExclusiveAccess,
    /// 5h: registrants write, everyone reads; one holder.
    WriteExclusiveRegistrantsOnly,
    /// 6h: only registrants access the medium; one holder.
    ExclusiveAccessRegistrantsOnly,
    /// 7h: registrants write, everyone reads; every registrant is a holder.
    WriteExclusiveAllRegistrants,
    /// 8h: only registrants access the medium; every registrant is a holder.
    ExclusiveAccessAllRegistrants,
}

impl PrType {
    /// Every type, in code order.
    pub const ALL: [PrType; 6] = [
        PrType::WriteExclusive,
        PrType::ExclusiveAccess,
        PrType::WriteExclusiveRegistrantsOnly,
        PrType::ExclusiveAccessRegistrantsOnly,
        PrType::WriteExclusiveAllRegistrants,
        PrType::ExclusiveAccessAllRegistrants,
    ];

    /// The type with TYPE code `code`, if it is one.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }

    /// The TYPE code.
    pub fn code(self) -> u8 {
        match self {
            PrType::WriteExclusive => 0x1,
            PrType::ExclusiveAccess => 0x3,
            PrType::WriteExclusiveRegistrantsOnly => 0x5,
            PrType::ExclusiveAccessRegistrantsOnly => 0x6,
            PrType::WriteExclusiveAllRegistrants => 0x7,
            PrType::ExclusiveAccessAllRegistrants => 0x8,
        }
    }

    /// Every registrant holds the reservation.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants (not only the holder) may access the medium.
    pub fn registrants_only(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveRegistrantsOnly | PrType::ExclusiveAccessRegistrantsOnly
        )
    }

    /// Nexuses without access may still read.
    pub fn write_exclusive(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusive
                | PrType::WriteExclusiveRegistrantsOnly
                | PrType::WriteExclusiveAllRegistrants
        )
    }
}

/// What an I_T nexus is to the persistent reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Role {
    /// It holds the reservation (for the all-registrants types: it is registered).
    Holder,
    /// It is registered but does not hold the reservation (or there is none).
    Registered,
    /// It has no registration.
    Unregistered,
}

/// The logical unit's target port: its relative target port identifier (SPC) and target portal group tag
/// (iSCSI). Registrations name target ports by the tag, which is what a nexus carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TargetPort {
    /// RELATIVE TARGET PORT IDENTIFIER.
    pub relative_id: u16,
    /// Target portal group tag.
    pub tpgt: u16,
}

impl TargetPort {
    /// The relative target port identifier reported for a registration through `tpgt`. The logical unit knows
    /// one target port; a registration through another (none can be made today) reports its tag.
    pub fn relative_id_of(self, tpgt: u16) -> u16 {
        if tpgt == self.tpgt {
            self.relative_id
        } else {
            tpgt
        }
    }

    /// The target portal group tag of the target port with `relative_id`, if it is this one.
    pub fn tpgt_of(self, relative_id: u16) -> Option<u16> {
        (relative_id == self.relative_id).then_some(self.tpgt)
    }
}

/// SCOPE 0h, the only one: the whole logical unit.
pub(crate) const LU_SCOPE: u8 = 0;

/// Everything a logical unit keeps about persistent reservations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PrState {
    /// PRGENERATION: counts the PERSISTENT RESERVE OUT commands that registered, unregistered, cleared,
    /// preempted or moved (not RESERVE or RELEASE); wraps.
    pub generation: u32,
    /// The last valid APTPL bit received: the state survives a power loss.
    pub aptpl: bool,
    /// Registrations in the order they were made; no two cover the same I_T nexus.
    pub registrations: Vec<Registration>,
    /// The persistent reservation (scope: the logical unit), if any. For types other than the all-registrants
    /// ones exactly one registration is its holder.
    pub reservation: Option<PrType>,
}

/// One PERSISTENT RESERVE OUT as [`PrState::apply`] needs it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PrOut<'a> {
    /// The I_T nexus the command came on.
    pub issuer: &'a Nexus,
    /// SERVICE ACTION.
    pub action: PrOutAction,
    /// SCOPE from the CDB.
    pub scope: u8,
    /// TYPE from the CDB.
    pub pr_type: u8,
    /// The parameter list, parsed for `action`.
    pub params: &'a Params,
    /// The logical unit's target port.
    pub port: TargetPort,
    /// The logical unit can keep the state through a power loss (APTPL may be set).
    pub aptpl_capable: bool,
}

/// Why a PERSISTENT RESERVE OUT is not carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// RESERVATION CONFLICT status.
    Conflict,
    /// CHECK CONDITION with this sense.
    Check(Sense),
}

impl From<Sense> for Refusal {
    fn from(sense: Sense) -> Self {
        Refusal::Check(sense)
    }
}

/// A unit attention to establish for every I_T nexus one of `to` covers, except the command's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Notice {
    /// The UNIT ATTENTION sense.
    pub sense: Sense,
    /// Registrations (as they were when the command came) whose nexuses get it.
    pub to: Vec<Registration>,
}

/// The result of a PERSISTENT RESERVE OUT that changes something.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    /// The state after the command.
    pub state: PrState,
    /// Unit attentions to establish once `state` is current.
    pub notices: Vec<Notice>,
}

impl PrState {
    /// Index of the registration of `nexus`, if it has one.
    pub fn find(&self, nexus: &Nexus) -> Option<usize> {
        self.registrations.iter().position(|r| r.matches(nexus))
    }

    /// Whether registration `i` holds the reservation.
    pub fn is_holder(&self, i: usize) -> bool {
        match self.reservation {
            None => false,
            Some(t) if t.all_registrants() => true,
            Some(_) => self.registrations[i].holder,
        }
    }

    /// What `nexus` is to the reservation.
    pub fn role(&self, nexus: &Nexus) -> Role {
        match self.find(nexus) {
            Some(i) if self.is_holder(i) => Role::Holder,
            Some(_) => Role::Registered,
            None => Role::Unregistered,
        }
    }

    /// The registration holding a reservation of a type other than the all-registrants ones.
    pub fn holder(&self) -> Option<&Registration> {
        self.registrations.iter().find(|r| r.holder)
    }

    /// The same state at power-on (SPC-4 5.13.5): registrations and reservation kept with APTPL, dropped
    /// without; PRGENERATION is zero either way.
    pub fn after_power_loss(&self) -> PrState {
        if self.aptpl {
            PrState {
                generation: 0,
                ..self.clone()
            }
        } else {
            PrState::default()
        }
    }

    /// Carries out a PERSISTENT RESERVE OUT: `Ok(None)` for GOOD status without any change, `Ok(Some)` with
    /// the next state, or the refusal. `self` is never modified.
    pub fn apply(&self, cmd: &PrOut<'_>) -> Result<Option<Change>, Refusal> {
        match (cmd.action, cmd.params) {
            (
                PrOutAction::Register | PrOutAction::RegisterAndIgnoreExistingKey,
                Params::Basic(p),
            ) => self.register(cmd, p),
            (PrOutAction::Reserve, Params::Basic(p)) => self.reserve(cmd, p),
            (PrOutAction::Release, Params::Basic(p)) => self.release(cmd, p),
            (PrOutAction::Clear, Params::Basic(p)) => self.clear(cmd, p),
            (PrOutAction::Preempt | PrOutAction::PreemptAndAbort, Params::Basic(p)) => {
                self.preempt(cmd, p)
            }
            (PrOutAction::RegisterAndMove, Params::Move(p)) => self.register_and_move(cmd, p),
            // The parameter list is parsed by the action's own layout; a mismatch is a caller's bug, reported
            // rather than panicking.
            _ => Err(Refusal::Check(Sense::invalid_field_in_cdb(1, 4))),
        }
    }

    /// The issuer's registration, which must exist and carry `key` (SPC-4 5.13.1: otherwise RESERVATION
    /// CONFLICT, whatever the service action and scope).
    fn registered_with(&self, issuer: &Nexus, key: u64) -> Result<usize, Refusal> {
        match self.find(issuer) {
            Some(i) if self.registrations[i].key == key => Ok(i),
            _ => Err(Refusal::Conflict),
        }
    }

    /// The successor state: a copy with PRGENERATION advanced when `counts` (SPC-4 6.16.2).
    fn next(&self, counts: bool) -> PrState {
        let mut next = self.clone();
        if counts {
            next.generation = next.generation.wrapping_add(1);
        }
        next
    }

    /// REGISTER and REGISTER AND IGNORE EXISTING KEY (SPC-4 5.13.7).
    fn register(&self, cmd: &PrOut<'_>, p: &BasicParams) -> Result<Option<Change>, Refusal> {
        let ignore_key = cmd.action == PrOutAction::RegisterAndIgnoreExistingKey;
        if p.aptpl && !cmd.aptpl_capable {
            return Err(Sense::invalid_field_in_parameter_list(20, 0).into());
        }
        let mut notices = Vec::new();
        let next = match self.find(cmd.issuer) {
            Some(i) => {
                if p.spec_i_pt {
                    // SPEC_I_PT is for registering an I_T nexus that has no registration yet.
                    return Err(Sense::invalid_field_in_parameter_list(20, 3).into());
                }
                if !ignore_key && p.key != self.registrations[i].key {
                    return Err(Refusal::Conflict);
                }
                let mut next = self.next(true);
                next.aptpl = p.aptpl;
                if p.sa_key == 0 {
                    next.unregister(i, &mut notices);
                } else {
                    next.registrations[i].key = p.sa_key;
                }
                next
            }
            None => {
                if !ignore_key && p.key != 0 {
                    return Err(Refusal::Conflict);
                }
                if p.sa_key == 0 {
                    // Unregistering what is not registered: GOOD, nothing happens.
                    return Ok(None);
                }
                let mut next = self.next(true);
                next.aptpl = p.aptpl;
                let mine = Registration {
                    key: p.sa_key,
                    initiator: InitiatorPort::of(cmd.issuer),
                    tpgt: cmd.issuer.target_portal_group,
                    all_tg_pt: p.all_tg_pt,
                    holder: false,
                };
                if next.registrations.iter().any(|r| r.overlaps(&mine)) {
                    // With ALL_TG_PT, the same initiator port is already registered through another target port.
                    return Err(Refusal::Conflict);
                }
                next.registrations.push(mine);
                for initiator in &p.transport_ids {
                    let theirs = Registration {
                        key: p.sa_key,
                        initiator: initiator.clone(),
                        tpgt: cmd.issuer.target_portal_group,
                        all_tg_pt: p.all_tg_pt,
                        holder: false,
                    };
                    // A TransportID naming a nexus that is already registered (or this one) is skipped: its
                    // registration stays as it is.
                    if !next.registrations.iter().any(|r| r.overlaps(&theirs)) {
                        next.registrations.push(theirs);
                    }
                }
                next
            }
        };
        Ok(Some(Change {
            state: next,
            notices,
        }))
    }

    /// Removes registration `i`. A reservation it held is released (SPC-4 5.13.11.2.3): the all-registrants
    /// types when their last registrant goes, the others when their holder goes, with RESERVATIONS RELEASED
    /// for the remaining registrants if the type was a registrants-only one.
    fn unregister(&mut self, i: usize, notices: &mut Vec<Notice>) {
        let gone = self.registrations.remove(i);
        match self.reservation {
            Some(t) if t.all_registrants() && self.registrations.is_empty() => {
                self.reservation = None;
            }
            Some(t) if !t.all_registrants() && gone.holder => {
                self.reservation = None;
                if t.registrants_only() && !self.registrations.is_empty() {
                    notices.push(Notice {
                        sense: Sense::reservations_released(),
                        to: self.registrations.clone(),
                    });
                }
            }
            _ => {}
        }
    }

    /// SCOPE must be the logical unit and TYPE one of the six (INVALID FIELD IN CDB otherwise).
    fn requested_type(cmd: &PrOut<'_>) -> Result<PrType, Refusal> {
        if cmd.scope != LU_SCOPE {
            return Err(Sense::invalid_field_in_cdb(2, 7).into());
        }
        PrType::from_code(cmd.pr_type).ok_or_else(|| Sense::invalid_field_in_cdb(2, 3).into())
    }

    /// RESERVE (SPC-4 5.13.9).
    fn reserve(&self, cmd: &PrOut<'_>, p: &BasicParams) -> Result<Option<Change>, Refusal> {
        let i = self.registered_with(cmd.issuer, p.key)?;
        let wanted = Self::requested_type(cmd)?;
        match self.reservation {
            // Reserving again what one holds is GOOD; any other reservation conflicts.
            Some(t) if t == wanted && self.is_holder(i) => Ok(None),
            Some(_) => Err(Refusal::Conflict),
            None => {
                let mut next = self.next(false);
                next.reservation = Some(wanted);
                next.registrations[i].holder = !wanted.all_registrants();
                Ok(Some(Change {
                    state: next,
                    notices: Vec::new(),
                }))
            }
        }
    }

    /// RELEASE (SPC-4 5.13.11.2).
    fn release(&self, cmd: &PrOut<'_>, p: &BasicParams) -> Result<Option<Change>, Refusal> {
        let i = self.registered_with(cmd.issuer, p.key)?;
        let Some(current) = self.reservation else {
            return Ok(None);
        };
        if !self.is_holder(i) {
            // A registrant that does not hold the reservation releases nothing, successfully.
            return Ok(None);
        }
        if cmd.scope != LU_SCOPE || cmd.pr_type != current.code() {
            return Err(Sense::invalid_release_of_persistent_reservation().into());
        }
        let mut next = self.next(false);
        next.reservation = None;
        next.registrations.iter_mut().for_each(|r| r.holder = false);
        let mut notices = Vec::new();
        if current.registrants_only() || current.all_registrants() {
            notices.push(Notice {
                sense: Sense::reservations_released(),
                to: self.registrations.clone(),
            });
        }
        Ok(Some(Change {
            state: next,
            notices,
        }))
    }

    /// CLEAR (SPC-4 5.13.11.2.6): every registration and the reservation go.
    fn clear(&self, cmd: &PrOut<'_>, p: &BasicParams) -> Result<Option<Change>, Refusal> {
        self.registered_with(cmd.issuer, p.key)?;
        let mut next = self.next(true);
        next.registrations.clear();
        next.reservation = None;
        Ok(Some(Change {
            state: next,
            notices: vec![Notice {
                sense: Sense::reservations_preempted(),
                to: self.registrations.clone(),
            }],
        }))
    }

    /// PREEMPT and PREEMPT AND ABORT (SPC-4 5.13.11.4). The logical unit aborts no tasks itself: see
    /// [`Reservations`](super::Reservations) for what PREEMPT AND ABORT leaves to the transport.
    fn preempt(&self, cmd: &PrOut<'_>, p: &BasicParams) -> Result<Option<Change>, Refusal> {
        let i = self.registered_with(cmd.issuer, p.key)?;
        let wanted = Self::requested_type(cmd)?;
        let zero_key = || Refusal::Check(Sense::invalid_field_in_parameter_list(8, 7));
        match self.reservation {
            // No reservation, or an all-registrants one with a key named: only registrations are removed.
            None => {
                if p.sa_key == 0 {
                    return Err(zero_key());
                }
                self.remove_registrations(i, p.sa_key, None)
            }
            Some(t) if t.all_registrants() && p.sa_key != 0 => {
                self.remove_registrations(i, p.sa_key, None)
            }
            // All-registrants with key 0 preempts everyone; otherwise the holder's key takes the reservation.
            Some(t) if t.all_registrants() => self.remove_registrations(i, 0, Some((t, wanted))),
            Some(t) => {
                let holder_key = self.holder().map(|h| h.key);
                if Some(p.sa_key) == holder_key {
                    self.remove_registrations(i, p.sa_key, Some((t, wanted)))
                } else if p.sa_key == 0 {
                    Err(zero_key())
                } else {
                    self.remove_registrations(i, p.sa_key, None)
                }
            }
        }
    }

    /// Removes every registration with `key` (all of them for key 0) except the issuer's (`me`), with
    /// REGISTRATIONS PREEMPTED for their nexuses; with `take` = (old type, new type) the issuer then holds a
    /// reservation of the new type, and if the type changed the remaining registrants get RESERVATIONS
    /// RELEASED. Removing nothing when a key was named is a RESERVATION CONFLICT.
    fn remove_registrations(
        &self,
        me: usize,
        key: u64,
        take: Option<(PrType, PrType)>,
    ) -> Result<Option<Change>, Refusal> {
        let hit = |r: &Registration| key == 0 || r.key == key;
        if key != 0 && !self.registrations.iter().any(hit) {
            return Err(Refusal::Conflict);
        }
        let mut next = self.next(true);
        let mut removed = Vec::new();
        let mut others = Vec::new();
        let mut me_next = 0;
        next.registrations = Vec::with_capacity(self.registrations.len());
        for (j, r) in self.registrations.iter().enumerate() {
            if j == me {
                me_next = next.registrations.len();
                next.registrations.push(r.clone());
            } else if hit(r) {
                removed.push(r.clone());
            } else {
                others.push(r.clone());
                next.registrations.push(r.clone());
            }
        }
        let mut notices = Vec::new();
        if !removed.is_empty() {
            notices.push(Notice {
                sense: Sense::registrations_preempted(),
                to: removed,
            });
        }
        if let Some((old, new)) = take {
            next.reservation = Some(new);
            for (j, r) in next.registrations.iter_mut().enumerate() {
                r.holder = !new.all_registrants() && j == me_next;
            }
            if old != new && !others.is_empty() {
                notices.push(Notice {
                    sense: Sense::reservations_released(),
                    to: others,
                });
            }
        }
        Ok(Some(Change {
            state: next,
            notices,
        }))
    }

    /// REGISTER AND MOVE (SPC-4 5.13.8): the holder registers another I_T nexus and hands it the reservation.
    fn register_and_move(
        &self,
        cmd: &PrOut<'_>,
        p: &MoveParams,
    ) -> Result<Option<Change>, Refusal> {
        if p.aptpl && !cmd.aptpl_capable {
            return Err(Sense::invalid_field_in_parameter_list(17, 0).into());
        }
        let i = self.registered_with(cmd.issuer, p.key)?;
        match self.reservation {
            Some(t) if !t.all_registrants() && self.is_holder(i) => {}
            _ => return Err(Refusal::Conflict),
        }
        if p.sa_key == 0 {
            return Err(Sense::invalid_field_in_parameter_list(8, 7).into());
        }
        let tpgt = cmd
            .port
            .tpgt_of(p.rtpi)
            .ok_or_else(|| Refusal::Check(Sense::invalid_field_in_parameter_list(18, 7)))?;
        let dest = Registration {
            key: p.sa_key,
            initiator: p.dest.clone(),
            tpgt,
            all_tg_pt: false,
            holder: true,
        };
        if dest.overlaps(&self.registrations[i]) {
            // The destination is the issuer's own I_T nexus.
            return Err(Sense::invalid_field_in_parameter_list(24, 7).into());
        }
        let mut next = self.next(true);
        next.aptpl = p.aptpl;
        next.registrations[i].holder = false;
        match next.registrations.iter_mut().find(|r| r.overlaps(&dest)) {
            Some(r) => {
                r.key = p.sa_key;
                r.holder = true;
            }
            None => next.registrations.push(dest),
        }
        if p.unreg {
            next.registrations.remove(i);
        }
        Ok(Some(Change {
            state: next,
            notices: Vec::new(),
        }))
    }
}
