//! Which commands a reservation lets through, by opcode (SPC-4 5.13.1 table 66 "SPC commands that are allowed in
//! the presence of various reservations", table 67 for PERSISTENT RESERVE OUT service actions, SBC-3 4.17 table
//! 13 for block commands; SPC-2 5.5.1 for RESERVE/RELEASE).
//!
//! The class depends only on the CDB bytes, so commands this crate does not implement yet are classified too;
//! anything not listed counts as a write, which no reservation lets a non-holder do.

use super::state::{PrType, Role};

/// What a command is to a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Class {
    /// Allowed whatever the reservation (INQUIRY, REPORT LUNS, TEST UNIT READY, READ CAPACITY, ...).
    Always,
    /// Reads the medium or device state: allowed through Write Exclusive reservations, and for registrants
    /// through the registrants-only and all-registrants ones.
    Read,
    /// Changes the medium or device state: only the holder, or registrants for the registrants-only and
    /// all-registrants types.
    Write,
    /// PERSISTENT RESERVE IN.
    PrIn,
    /// PERSISTENT RESERVE OUT with this service action code.
    PrOut(u8),
    /// RESERVE (6) / (10).
    Reserve,
    /// RELEASE (6) / (10).
    Release,
}

/// The class of the command in `cdb` (at least the opcode; missing bytes read as zero).
pub(crate) fn classify(cdb: &[u8]) -> Class {
    let byte = |i: usize| cdb.get(i).copied().unwrap_or(0);
    let service_action = byte(1) & 0x1F;
    match byte(0) {
        // TEST UNIT READY, REQUEST SENSE, INQUIRY, READ CAPACITY (10), LOG SENSE, ACCESS CONTROL IN / OUT,
        // REPORT LUNS.
        0x00 | 0x03 | 0x12 | 0x25 | 0x4D | 0x86 | 0x87 | 0xA0 => Class::Always,
        0x5E => Class::PrIn,
        0x5F => Class::PrOut(service_action),
        0x16 | 0x56 => Class::Reserve,
        0x17 | 0x57 => Class::Release,
        // START STOP UNIT: starting (START=1, POWER CONDITION 0h) is allowed; stopping or a power condition
        // is not.
        0x1B if byte(4) & 0x01 != 0 && byte(4) >> 4 == 0 => Class::Always,
        // PREVENT ALLOW MEDIUM REMOVAL: allowing (PREVENT 00b) is allowed; preventing is not.
        0x1E if byte(4) & 0x03 == 0 => Class::Always,
        // SERVICE ACTION IN (16): READ CAPACITY (16); GET LBA STATUS and REPORT REFERRALS read.
        0x9E => match service_action {
            0x10 => Class::Always,
            0x12 | 0x13 => Class::Read,
            _ => Class::Write,
        },
        // MAINTENANCE IN: REPORT IDENTIFYING INFORMATION, REPORT TARGET PORT GROUPS, REPORT ALIASES, REPORT
        // PRIORITY, REPORT TIMESTAMP are allowed; REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT
        // FUNCTIONS and MANAGEMENT PROTOCOL IN read.
        0xA3 => match service_action {
            0x05 | 0x0A | 0x0B | 0x0E | 0x0F => Class::Always,
            0x0C | 0x0D | 0x10 => Class::Read,
            _ => Class::Write,
        },
        // SERVICE ACTION IN (12): READ MEDIA SERIAL NUMBER.
        0xAB if service_action == 0x01 => Class::Always,
        // READ (6/10/12/16), VERIFY (10/12/16), MODE SENSE (6/10), PRE-FETCH (10/16), READ BUFFER, RECEIVE
        // DIAGNOSTIC RESULTS, READ ATTRIBUTE, READ DEFECT DATA (10/12), SECURITY PROTOCOL IN.
        0x08 | 0x28 | 0xA8 | 0x88 | 0x2F | 0xAF | 0x8F | 0x1A | 0x5A | 0x34 | 0x90 | 0x3C
        | 0x1C | 0x8C | 0x37 | 0xB7 | 0xA2 => Class::Read,
        // Everything else changes something: WRITE, WRITE AND VERIFY, WRITE SAME, UNMAP, COMPARE AND WRITE,
        // ORWRITE, SYNCHRONIZE CACHE, MODE SELECT, FORMAT UNIT, WRITE BUFFER, SEND DIAGNOSTIC, ...
        _ => Class::Write,
    }
}

/// Whether a nexus with `role` may run a command of `class` while a persistent reservation of type `held`
/// exists. (PERSISTENT RESERVE IN, and RESERVE / RELEASE, are always let through to their own rules.)
pub(crate) fn persistent_allows(class: Class, held: PrType, role: Role) -> bool {
    let registered = role != Role::Unregistered;
    match class {
        _ if role == Role::Holder => true,
        Class::Always | Class::PrIn | Class::Reserve | Class::Release => true,
        // Table 67: non-holders may register; registrants may release (a no-op), clear and preempt; nobody
        // but the holder reserves or moves.
        Class::PrOut(sa) => match sa {
            0x00 | 0x06 => true,
            0x02..=0x05 => registered,
            _ => false,
        },
        Class::Read => {
            held.write_exclusive()
                || (registered && (held.registrants_only() || held.all_registrants()))
        }
        Class::Write => registered && (held.registrants_only() || held.all_registrants()),
    }
}

/// Whether a nexus other than the holder of an SPC-2 reservation may run `cdb` (SPC-2 5.5.1): INQUIRY,
/// REQUEST SENSE, REPORT LUNS, LOG SENSE, READ MEDIA SERIAL NUMBER, REPORT IDENTIFYING INFORMATION and RELEASE
/// (which then releases nothing).
pub(crate) fn spc2_allows(cdb: &[u8]) -> bool {
    let service_action = cdb.get(1).copied().unwrap_or(0) & 0x1F;
    match cdb.first().copied() {
        Some(0x12 | 0x03 | 0xA0 | 0x4D | 0x17 | 0x57) => true,
        Some(0xAB) => service_action == 0x01,
        Some(0xA3) => service_action == 0x05,
        _ => false,
    }
}
