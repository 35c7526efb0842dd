//! Tests of reservations through [`LogicalUnit::execute`]: every PERSISTENT RESERVE OUT service action and type,
//! the access table, unit attentions, RESERVE / RELEASE, persistence through a device that keeps the state, and
//! the stored encoding.

use super::access::{classify, persistent_allows, Class};
use super::codec::{decode, encode, DecodeError};
use super::state::{InitiatorPort, PrState, PrType, Registration, Role};
use super::*;
use crate::cdb::opcode::*;
use crate::cdb::Decoded;
use crate::lu::tests::ExecuteCdb;
use crate::sense::SenseKey;
use crate::{LunIdentity, MemoryDevice, WriteDone};
use proptest::prelude::*;
use std::io;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

// ---- fixture ---------------------------------------------------------------------------------------------------

/// A device that keeps reservation state (`capacity` bytes; 0: none), counts loads and stores, and fails them
/// on demand. Data goes to a small [`MemoryDevice`]; with `submits` it completes writes through `submit_write`.
struct PrDevice {
    data: MemoryDevice,
    capacity: usize,
    stored: Mutex<Vec<u8>>,
    stores: AtomicUsize,
    loads: AtomicUsize,
    fail_store: AtomicBool,
    fail_load: AtomicBool,
    submits: bool,
}

impl PrDevice {
    fn new(capacity: usize) -> Self {
        Self {
            data: MemoryDevice::new(64 * 512),
            capacity,
            stored: Mutex::new(Vec::new()),
            stores: AtomicUsize::new(0),
            loads: AtomicUsize::new(0),
            fail_store: AtomicBool::new(false),
            fail_load: AtomicBool::new(false),
            submits: false,
        }
    }

    fn stored(&self) -> Vec<u8> {
        self.stored.lock().unwrap().clone()
    }

    fn stores(&self) -> usize {
        self.stores.load(Ordering::SeqCst)
    }
}

impl BlockDevice for PrDevice {
    fn size_bytes(&self) -> u64 {
        self.data.size_bytes()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.data.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.data.write_at(buf, offset, fua)
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn submits_writes(&self) -> bool {
        self.submits
    }
    fn submit_write(&self, buf: bytes::Bytes, offset: u64, fua: bool, done: WriteDone) {
        done(self.write_at(&buf, offset, fua));
    }
    fn reservation_capacity(&self) -> usize {
        self.capacity
    }
    fn load_reservations(&self) -> io::Result<Vec<u8>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        if self.fail_load.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected load failure"));
        }
        Ok(self.stored())
    }
    fn store_reservations(&self, state: &[u8]) -> io::Result<()> {
        assert!(self.capacity > 0, "store on a device without capacity");
        if self.fail_store.load(Ordering::SeqCst) || state.len() > self.capacity {
            return Err(io::Error::other("injected store failure"));
        }
        *self.stored.lock().unwrap() = state.to_vec();
        self.stores.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// The logical unit tests' identity, on target portal group 7.
fn identity() -> LunIdentity {
    LunIdentity {
        target_portal_group: 7,
        ..crate::lu::tests::identity()
    }
}

/// The logical unit tests' nexus `id` (initiator `init<id>`, ISID ending in `id`), on target portal group 7 (the
/// LU's).
fn nexus(id: u64) -> Nexus {
    Nexus {
        target_portal_group: 7,
        ..crate::lu::tests::nexus(id)
    }
}

/// The same initiator port as `n` on another session id (another connection after a failover, say).
fn same_port(n: &Nexus, id: u64) -> Nexus {
    Nexus { id, ..n.clone() }
}

const WE: u8 = 0x1;
const EA: u8 = 0x3;
const WE_RO: u8 = 0x5;
const EA_RO: u8 = 0x6;
const WE_AR: u8 = 0x7;
const EA_AR: u8 = 0x8;
const TYPES: [u8; 6] = [WE, EA, WE_RO, EA_RO, WE_AR, EA_AR];

const REGISTER: u8 = 0;
const RESERVE: u8 = 1;
const RELEASE: u8 = 2;
const CLEAR: u8 = 3;
const PREEMPT: u8 = 4;
const PREEMPT_AND_ABORT: u8 = 5;
const REGISTER_AND_IGNORE: u8 = 6;
const REGISTER_AND_MOVE: u8 = 7;

const SPEC_I_PT: u8 = 0x08;
const ALL_TG_PT: u8 = 0x04;
const APTPL: u8 = 0x01;

fn prout_cdb(sa: u8, scope: u8, pr_type: u8, len: u32) -> Vec<u8> {
    let mut c = vec![0x5F, sa, (scope << 4) | pr_type, 0, 0];
    c.extend_from_slice(&len.to_be_bytes());
    c.push(0);
    c
}

fn basic(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut p = key.to_be_bytes().to_vec();
    p.extend_from_slice(&sa_key.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, flags, 0, 0, 0]);
    p
}

/// TransportID of format 01b (`name,i,0x<isid>`) or 00b (`name`), padded as SPC wants.
fn tid(name: &str, isid: Option<[u8; 6]>) -> Vec<u8> {
    transport_id::encode(&InitiatorPort {
        name: name.into(),
        isid,
    })
}

fn tid_of(n: &Nexus) -> Vec<u8> {
    tid(&n.initiator_name, Some(n.isid))
}

struct Fixture {
    dev: Arc<PrDevice>,
    lu: LogicalUnit,
    a: Nexus,
    b: Nexus,
    c: Nexus,
    observers: AtomicUsize,
}

impl Fixture {
    /// A logical unit over a device with `capacity` bytes for reservation state, nexuses 1..=3 logged in.
    fn with_capacity(capacity: usize) -> Self {
        Self::over(Arc::new(PrDevice::new(capacity)))
    }

    fn new() -> Self {
        Self::with_capacity(4096)
    }

    fn over(dev: Arc<PrDevice>) -> Self {
        let lu = LogicalUnit::new(dev.clone(), identity(), false);
        let (a, b, c) = (nexus(1), nexus(2), nexus(3));
        for n in [&a, &b, &c] {
            lu.nexus_joined(n);
        }
        Self {
            dev,
            lu,
            a,
            b,
            c,
            observers: AtomicUsize::new(0),
        }
    }

    fn run(&self, n: &Nexus, cdb: &[u8], data_out: &[u8]) -> Outcome {
        self.lu.execute_cdb(&Request {
            nexus: n,
            cdb,
            data_out,
            luns: &[0, 1],
        })
    }

    fn prout(&self, n: &Nexus, sa: u8, pr_type: u8, params: &[u8]) -> Outcome {
        let cdb = prout_cdb(sa, 0, pr_type, params.len() as u32);
        self.run(n, &cdb, params)
    }

    /// PERSISTENT RESERVE OUT with the basic parameter list.
    fn out(&self, n: &Nexus, sa: u8, pr_type: u8, key: u64, sa_key: u64) -> Outcome {
        self.prout(n, sa, pr_type, &basic(key, sa_key, 0))
    }

    #[track_caller]
    fn good_out(&self, n: &Nexus, sa: u8, pr_type: u8, key: u64, sa_key: u64) {
        let o = self.out(n, sa, pr_type, key, sa_key);
        assert_eq!(
            o.status,
            TaskStatus::Good,
            "PR OUT {sa} from {}: {o:?}",
            n.id
        );
    }

    #[track_caller]
    fn register(&self, n: &Nexus, key: u64) {
        self.good_out(n, REGISTER_AND_IGNORE, 0, 0, key);
    }

    #[track_caller]
    fn prin(&self, n: &Nexus, sa: u8) -> Vec<u8> {
        let o = self.run(n, &[0x5E, sa, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0], &[]);
        assert_eq!(o.status, TaskStatus::Good, "PR IN {sa}: {o:?}");
        o.data_in
    }

    /// A nexus seen for the first time: it has no unit attention pending.
    fn observer(&self) -> Nexus {
        nexus(1_000_000 + self.observers.fetch_add(1, Ordering::SeqCst) as u64)
    }

    /// PRGENERATION and the keys, from READ KEYS.
    fn keys(&self) -> (u32, Vec<u64>) {
        let d = self.prin(&self.observer(), 0);
        let len = be32(&d[4..8]) as usize;
        assert_eq!(d.len(), 8 + len);
        let keys = d[8..].chunks(8).map(be64).collect();
        (be32(&d[0..4]), keys)
    }

    /// (key, type) of the reservation, from READ RESERVATION.
    fn reservation(&self) -> Option<(u64, u8)> {
        let d = self.prin(&self.observer(), 1);
        match be32(&d[4..8]) {
            0 => None,
            16 => {
                assert_eq!(d[21] >> 4, 0, "scope");
                Some((be64(&d[8..16]), d[21] & 0x0F))
            }
            n => panic!("READ RESERVATION additional length {n}"),
        }
    }

    /// The pending unit attention of `n` as (ASC, ASCQ), taken by REQUEST SENSE; (0, 0) if there is none.
    fn attention(&self, n: &Nexus) -> (u8, u8) {
        let o = self.run(n, &[REQUEST_SENSE, 0, 0, 0, 252, 0], &[]);
        assert_eq!(o.status, TaskStatus::Good);
        let expect_key = if o.data_in[12] == 0 { 0 } else { 6 };
        assert_eq!(o.data_in[2] & 0x0F, expect_key, "{:02x?}", o.data_in);
        (o.data_in[12], o.data_in[13])
    }

    /// No nexus has a unit attention pending.
    #[track_caller]
    fn no_attentions(&self) {
        for n in [&self.a, &self.b, &self.c] {
            assert_eq!(self.attention(n), (0, 0), "nexus {}", n.id);
        }
    }

    fn read(&self, n: &Nexus) -> Outcome {
        self.run(n, &[READ_10, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[])
    }

    fn write(&self, n: &Nexus) -> Outcome {
        self.run(n, &[WRITE_10, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[0xAB; 512])
    }

    fn state(&self) -> PrState {
        self.lu
            .reservations
            .lock_shared()
            .persistent
            .clone()
            .expect("loaded")
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().unwrap())
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().unwrap())
}

#[track_caller]
fn assert_conflict(o: &Outcome) {
    assert_eq!(o.status, TaskStatus::ReservationConflict, "{o:?}");
    assert!(o.sense.is_none() && o.data_in.is_empty());
}

#[track_caller]
fn assert_good(o: &Outcome) {
    assert_eq!(o.status, TaskStatus::Good, "{o:?}");
}

#[track_caller]
fn assert_sense(o: &Outcome, key: SenseKey, asc: u8, ascq: u8) {
    assert_eq!(o.status, TaskStatus::CheckCondition, "{o:?}");
    let s = o.sense.expect("sense");
    assert_eq!((s.key, s.asc, s.ascq), (key, asc, ascq), "{s:?}");
}

/// INVALID FIELD IN PARAMETER LIST (`in_cdb` false) or IN CDB (true) pointing at `byte`/`bit`.
#[track_caller]
fn assert_field(o: &Outcome, in_cdb: bool, byte: u16, bit: u8) {
    let asc = if in_cdb { 0x24 } else { 0x26 };
    assert_sense(o, SenseKey::IllegalRequest, asc, 0x00);
    let fp = o
        .sense
        .and_then(|s| s.field_pointer)
        .expect("field pointer");
    assert_eq!((fp.in_cdb, fp.byte, fp.bit), (in_cdb, byte, bit));
}

#[track_caller]
fn assert_length_error(o: &Outcome) {
    assert_sense(o, SenseKey::IllegalRequest, 0x1A, 0x00);
}

// ---- REGISTER, REGISTER AND IGNORE EXISTING KEY ---------------------------------------------------------------

#[test]
fn register_unregistered_nexus() {
    let f = Fixture::new();
    // A non-zero RESERVATION KEY from an unregistered nexus conflicts.
    assert_conflict(&f.out(&f.a, REGISTER, 0, 5, 0x11));
    // Key 0 registers nothing and changes nothing.
    f.good_out(&f.a, REGISTER, 0, 0, 0);
    assert_eq!(f.keys(), (0, vec![]));
    assert_eq!(f.dev.stores(), 0);
    f.good_out(&f.a, REGISTER, 0, 0, 0x11);
    assert_eq!(f.keys(), (1, vec![0x11]));
    f.good_out(&f.b, REGISTER, 0, 0, 0x22);
    assert_eq!(f.keys(), (2, vec![0x11, 0x22]));
    f.no_attentions();
}

#[test]
fn register_registered_nexus_checks_the_key() {
    let f = Fixture::new();
    f.register(&f.a, 0x11);
    assert_conflict(&f.out(&f.a, REGISTER, 0, 0x12, 0x33));
    assert_conflict(&f.out(&f.a, REGISTER, 0, 0, 0x33));
    assert_eq!(f.keys(), (1, vec![0x11]));
    // The right key changes it; REGISTER AND IGNORE EXISTING KEY needs none.
    f.good_out(&f.a, REGISTER, 0, 0x11, 0x33);
    assert_eq!(f.keys(), (2, vec![0x33]));
    f.good_out(&f.a, REGISTER_AND_IGNORE, 0, 0xDEAD, 0x44);
    assert_eq!(f.keys(), (3, vec![0x44]));
    // Service action key 0 unregisters.
    f.good_out(&f.a, REGISTER, 0, 0x44, 0);
    assert_eq!(f.keys(), (4, vec![]));
    f.register(&f.a, 0x55);
    f.good_out(&f.a, REGISTER_AND_IGNORE, 0, 0, 0);
    assert_eq!(f.keys(), (6, vec![]));
}

#[test]
fn registrations_are_per_i_t_nexus_not_per_session_number() {
    let f = Fixture::new();
    f.register(&f.a, 0x11);
    f.good_out(&f.a, RESERVE, EA, 0x11, 0);
    // The same initiator port on a new session (another number, as after a reconnect or failover) is still
    // the registered holder.
    let again = same_port(&f.a, 99);
    assert_good(&f.write(&again));
    f.good_out(&again, REGISTER, 0, 0x11, 0x12);
    assert_eq!(f.keys().1, vec![0x12]);
    // Another ISID, or another target port, is another I_T nexus.
    let other_isid = Nexus {
        isid: [0x40, 0, 0, 0, 1, 1],
        ..same_port(&f.a, 100)
    };
    let other_port = Nexus {
        target_portal_group: 8,
        ..same_port(&f.a, 101)
    };
    for n in [&other_isid, &other_port] {
        assert_conflict(&f.write(n));
        assert_conflict(&f.out(n, REGISTER, 0, 0x12, 0x13));
    }
    // iSCSI names compare without regard to case.
    let shouting = Nexus {
        initiator_name: f.a.initiator_name.to_uppercase(),
        ..same_port(&f.a, 102)
    };
    assert_good(&f.write(&shouting));
}

#[test]
fn register_all_target_ports() {
    let f = Fixture::new();
    assert_good(&f.prout(&f.a, REGISTER, 0, &basic(0, 0x11, ALL_TG_PT)));
    f.good_out(&f.a, RESERVE, WE, 0x11, 0);
    let through_other_port = Nexus {
        target_portal_group: 8,
        ..same_port(&f.a, 50)
    };
    assert_good(&f.write(&through_other_port));
    let d = f.prin(&f.a, 3);
    assert_eq!(d[8 + 12], 0x03, "ALL_TG_PT and R_HOLDER");
    assert_eq!(&d[8 + 18..8 + 20], &[0, 0], "no relative target port");
    // Without ALL_TG_PT the registration is only for the target port it came through.
    let g = Fixture::new();
    g.register(&g.a, 0x11);
    g.good_out(&g.a, RESERVE, WE, 0x11, 0);
    assert_conflict(&g.write(&through_other_port));
    let d = g.prin(&g.a, 3);
    assert_eq!(d[8 + 12], 0x01);
    assert_eq!(&d[8 + 18..8 + 20], &[0, 1], "relative target port 1");
}

#[test]
fn register_with_spec_i_pt() {
    let f = Fixture::new();
    let mut p = basic(0, 0x77, SPEC_I_PT);
    let tids = [
        tid_of(&f.b),
        tid(&f.c.initiator_name, None), // every port of init3
        tid_of(&f.a),                   // the issuer itself: skipped
    ]
    .concat();
    p.extend_from_slice(&(tids.len() as u32).to_be_bytes());
    p.extend_from_slice(&tids);
    assert_good(&f.prout(&f.a, REGISTER, 0, &p));
    assert_eq!(f.keys(), (1, vec![0x77, 0x77, 0x77]));
    // Each named nexus is registered: it can reserve with the key.
    f.good_out(&f.c, RESERVE, WE_RO, 0x77, 0);
    let c_other_session = Nexus {
        isid: [0x80, 1, 2, 3, 4, 5],
        ..same_port(&f.c, 30)
    };
    assert_good(&f.write(&c_other_session));
    // READ FULL STATUS names them: format 01b for one port, 00b for the whole initiator.
    let d = f.prin(&f.a, 3);
    let tids = full_status_transport_ids(&d);
    assert_eq!(tids[1][0], 0x45);
    assert_eq!(tids[2][0], 0x05);
    // SPEC_I_PT from a registered nexus, or with another service action, is refused.
    assert_field(&f.prout(&f.a, REGISTER, 0, &p), false, 20, 3);
    let mut p6 = basic(0, 0x77, SPEC_I_PT);
    p6.extend_from_slice(&[0; 4]);
    assert_field(&f.prout(&f.a, REGISTER_AND_IGNORE, 0, &p6), false, 20, 3);
    assert_eq!(f.keys().0, 1);
}

#[test]
fn spec_i_pt_skips_registered_nexuses_and_checks_transport_ids() {
    let f = Fixture::new();
    f.register(&f.b, 0x22);
    let mut p = basic(0, 0x11, SPEC_I_PT);
    let t = tid_of(&f.b);
    p.extend_from_slice(&(t.len() as u32).to_be_bytes());
    p.extend_from_slice(&t);
    assert_good(&f.prout(&f.a, REGISTER, 0, &p));
    assert_eq!(f.keys().1, vec![0x22, 0x11], "b keeps its key");

    let g = Fixture::new();
    let with = |t: &[u8], tpdl: u32| {
        let mut p = basic(0, 0x11, SPEC_I_PT);
        p.extend_from_slice(&tpdl.to_be_bytes());
        p.extend_from_slice(t);
        g.prout(&g.a, REGISTER, 0, &p)
    };
    let good = tid_of(&g.b);
    // TRANSPORTID PARAMETER DATA LENGTH must match the list exactly.
    assert_length_error(&with(&good, good.len() as u32 + 4));
    assert_length_error(&with(&good[..good.len() - 4], good.len() as u32 - 4));
    // Not iSCSI (FCP, protocol 0).
    let mut fcp = good.clone();
    fcp[0] = 0x40;
    assert_field(&with(&fcp, fcp.len() as u32), false, 28, 3);
    // Format 10b does not exist.
    let mut fmt = good.clone();
    fmt[0] = 0x85;
    assert_field(&with(&fmt, fmt.len() as u32), false, 28, 7);
    // No separator, a short ISID, no terminating null.
    let mut bad = tid("iqn.x", None);
    bad[0] = 0x45;
    assert_field(&with(&bad, bad.len() as u32), false, 32, 7);
    let short = tid_text(0x45, "iqn.x,i,0x40000001");
    assert_field(&with(&short, short.len() as u32), false, 37, 7);
    let mut unterminated = tid("iqn.2024-01.org.test:init2", None);
    let n = unterminated.len();
    unterminated[4..n].fill(b'a');
    assert_field(&with(&unterminated, n as u32), false, 32, 7);
    assert_eq!(
        g.keys(),
        (0, vec![]),
        "nothing registered by a refused command"
    );
}

/// A TransportID of `byte0` with `text` null-terminated and padded.
fn tid_text(byte0: u8, text: &str) -> Vec<u8> {
    let mut b = vec![byte0, 0, 0, 0];
    b.extend_from_slice(text.as_bytes());
    b.push(0);
    b.resize(b.len().max(24).next_multiple_of(4), 0);
    let n = (b.len() - 4) as u16;
    b[2..4].copy_from_slice(&n.to_be_bytes());
    b
}

fn full_status_transport_ids(d: &[u8]) -> Vec<Vec<u8>> {
    let mut at = 8;
    let mut out = Vec::new();
    while at < d.len() {
        let n = be32(&d[at + 20..at + 24]) as usize;
        out.push(d[at + 24..at + 24 + n].to_vec());
        at += 24 + n;
    }
    assert_eq!(at, d.len());
    out
}

#[test]
fn parameter_list_lengths() {
    let f = Fixture::new();
    for sa in [
        REGISTER,
        RESERVE,
        RELEASE,
        CLEAR,
        PREEMPT,
        REGISTER_AND_IGNORE,
    ] {
        for len in [0usize, 23, 25, 32] {
            let mut p = basic(0, 0x11, 0);
            p.resize(len, 0);
            assert_length_error(&f.prout(&f.a, sa, WE, &p));
        }
    }
    // Less Data-Out than the CDB announced.
    let o = f.run(
        &f.a,
        &prout_cdb(REGISTER, 0, 0, 24),
        &basic(0, 0x11, 0)[..20],
    );
    assert_sense(&o, SenseKey::IllegalRequest, 0x0E, 0x03);
    // More is cut to the announced length.
    let mut long = basic(0, 0x11, 0);
    long.extend_from_slice(&[0xFF; 8]);
    assert_good(&f.run(&f.a, &prout_cdb(REGISTER, 0, 0, 24), &long));
    assert_eq!(f.keys().1, vec![0x11]);
}

// ---- RESERVE, RELEASE --------------------------------------------------------------------------------------------

#[test]
fn reserve_each_type() {
    for t in TYPES {
        let f = Fixture::new();
        f.register(&f.a, 0xA);
        f.register(&f.b, 0xB);
        let generation = f.keys().0;
        f.good_out(&f.a, RESERVE, t, 0xA, 0);
        let all = t == WE_AR || t == EA_AR;
        assert_eq!(f.reservation(), Some((if all { 0 } else { 0xA }, t)));
        assert_eq!(f.keys().0, generation, "RESERVE does not count");
        // Again, same type: GOOD. Another type, even from the holder: conflict.
        f.good_out(&f.a, RESERVE, t, 0xA, 0);
        let other = if t == WE { EA } else { WE };
        assert_conflict(&f.out(&f.a, RESERVE, other, 0xA, 0));
        // Another registrant: a holder too for the all-registrants types, else a conflict.
        let o = f.out(&f.b, RESERVE, t, 0xB, 0);
        if all {
            assert_good(&o);
        } else {
            assert_conflict(&o);
        }
        f.no_attentions();
    }
}

#[test]
fn reserve_refusals() {
    let f = Fixture::new();
    assert_conflict(&f.out(&f.a, RESERVE, WE, 0, 0));
    f.register(&f.a, 0xA);
    assert_conflict(&f.out(&f.a, RESERVE, WE, 0xB, 0));
    for bad in [0u8, 2, 4, 9, 0xF] {
        assert_field(&f.out(&f.a, RESERVE, bad, 0xA, 0), true, 2, 3);
    }
    let scoped = f.run(&f.a, &prout_cdb(RESERVE, 1, WE, 24), &basic(0xA, 0, 0));
    assert_field(&scoped, true, 2, 7);
    assert_eq!(f.reservation(), None);
}

#[test]
fn release() {
    for t in TYPES {
        let f = Fixture::new();
        f.register(&f.a, 0xA);
        f.register(&f.b, 0xB);
        // Nothing to release: GOOD.
        f.good_out(&f.a, RELEASE, t, 0xA, 0);
        f.good_out(&f.a, RESERVE, t, 0xA, 0);
        let all = t == WE_AR || t == EA_AR;
        // Unregistered or wrong key: conflict, whatever the reservation.
        assert_conflict(&f.out(&f.c, RELEASE, t, 0, 0));
        assert_conflict(&f.out(&f.a, RELEASE, t, 0xB, 0));
        // The holder with another type: INVALID RELEASE OF PERSISTENT RESERVATION.
        let other = if t == WE { EA } else { WE };
        let o = f.out(&f.a, RELEASE, other, 0xA, 0);
        assert_sense(&o, SenseKey::IllegalRequest, 0x26, 0x04);
        if !all {
            // A registrant that does not hold it: GOOD, nothing released.
            f.good_out(&f.b, RELEASE, t, 0xB, 0);
            assert!(f.reservation().is_some());
        }
        let generation = f.keys().0;
        let releaser = if all { &f.b } else { &f.a };
        let key = if all { 0xB } else { 0xA };
        f.good_out(releaser, RELEASE, t, key, 0);
        assert_eq!(f.reservation(), None);
        assert_eq!(f.keys(), (generation, vec![0xA, 0xB]), "registrations stay");
        // RESERVATIONS RELEASED for the other registrants of a registrants-only or all-registrants type.
        let other_registrant = if all { &f.a } else { &f.b };
        let expect = if t == WE || t == EA {
            (0, 0)
        } else {
            (0x2A, 0x04)
        };
        assert_eq!(f.attention(other_registrant), expect, "type {t}");
        f.no_attentions();
    }
}

#[test]
fn unregistering_the_holder() {
    // libiscsi's Ownership tests: the holder unregisters. Only the registrants-only types tell the remaining
    // registrants; the holder itself is never told (tgt got this wrong).
    for t in [WE, EA, WE_RO, EA_RO] {
        let f = Fixture::new();
        f.register(&f.a, 0xA);
        f.register(&f.b, 0xB);
        f.good_out(&f.a, RESERVE, t, 0xA, 0);
        f.good_out(&f.a, REGISTER, 0, 0xA, 0);
        assert_eq!(f.reservation(), None);
        assert_eq!(f.attention(&f.a), (0, 0));
        let expect = if t == WE_RO || t == EA_RO {
            (0x2A, 0x04)
        } else {
            (0, 0)
        };
        assert_eq!(f.attention(&f.b), expect, "type {t}");
        f.no_attentions();
    }
    // All registrants: the reservation lasts while anyone is registered.
    for t in [WE_AR, EA_AR] {
        let f = Fixture::new();
        f.register(&f.a, 0xA);
        f.register(&f.b, 0xB);
        f.good_out(&f.a, RESERVE, t, 0xA, 0);
        f.good_out(&f.a, REGISTER, 0, 0xA, 0);
        assert_eq!(f.reservation(), Some((0, t)));
        assert_conflict(&f.write(&f.a));
        assert_good(&f.write(&f.b));
        f.good_out(&f.b, REGISTER, 0, 0xB, 0);
        assert_eq!(f.reservation(), None);
        assert_good(&f.write(&f.a));
        f.no_attentions();
    }
}

// ---- CLEAR -------------------------------------------------------------------------------------------------------

#[test]
fn clear() {
    let f = Fixture::new();
    assert_conflict(&f.out(&f.a, CLEAR, 0, 0, 0));
    f.register(&f.a, 0xA);
    f.register(&f.b, 0xB);
    f.good_out(&f.a, RESERVE, EA, 0xA, 0);
    assert_conflict(&f.out(&f.a, CLEAR, 0, 0xB, 0));
    // Not registered: conflict (an unregistered nexus may not clear).
    assert_conflict(&f.out(&f.c, CLEAR, 0, 0, 0));
    let generation = f.keys().0;
    f.good_out(&f.b, CLEAR, 0, 0xB, 0);
    assert_eq!(f.keys(), (generation + 1, vec![]));
    assert_eq!(f.reservation(), None);
    // RESERVATIONS PREEMPTED for the registrants but the one clearing; the unregistered nexus is not told.
    assert_eq!(f.attention(&f.a), (0x2A, 0x03));
    f.no_attentions();
}

// ---- PREEMPT, PREEMPT AND ABORT ------------------------------------------------------------------------------------

#[test]
fn preempt_without_reservation_removes_registrations() {
    for sa in [PREEMPT, PREEMPT_AND_ABORT] {
        let f = Fixture::new();
        f.register(&f.a, 0xA);
        f.register(&f.b, 0xB);
        f.register(&f.c, 0xB);
        assert_conflict(&f.out(&f.a, sa, EA, 0xB, 0xB));
        assert_field(&f.out(&f.a, sa, EA, 0xA, 0), false, 8, 7);
        // No registration has key C.
        assert_conflict(&f.out(&f.a, sa, EA, 0xA, 0xC));
        let generation = f.keys().0;
        f.good_out(&f.a, sa, EA, 0xA, 0xB);
        assert_eq!(f.keys(), (generation + 1, vec![0xA]));
        assert_eq!(f.reservation(), None);
        assert_eq!(f.attention(&f.b), (0x2A, 0x05));
        assert_eq!(f.attention(&f.c), (0x2A, 0x05));
        f.no_attentions();
    }
}

#[test]
fn preempt_the_holder() {
    for (old, new) in [(WE, WE), (WE, EA_RO), (EA_RO, WE_AR), (WE_RO, WE_RO)] {
        let f = Fixture::new();
        f.register(&f.a, 0xA);
        f.register(&f.b, 0xB);
        f.register(&f.c, 0xC);
        f.good_out(&f.b, RESERVE, old, 0xB, 0);
        f.good_out(&f.a, PREEMPT, new, 0xA, 0xB);
        let all = new == WE_AR || new == EA_AR;
        assert_eq!(f.reservation(), Some((if all { 0 } else { 0xA }, new)));
        assert_eq!(f.keys().1, vec![0xA, 0xC]);
        assert_eq!(
            f.attention(&f.b),
            (0x2A, 0x05),
            "the holder lost its registration"
        );
        // The other registrant learns the reservation changed only if the type did.
        let expect = if old == new { (0, 0) } else { (0x2A, 0x04) };
        assert_eq!(f.attention(&f.c), expect, "{old} -> {new}");
        f.no_attentions();
    }
}

#[test]
fn preempt_a_registrant_leaves_the_reservation() {
    let f = Fixture::new();
    f.register(&f.a, 0xA);
    f.register(&f.b, 0xB);
    f.register(&f.c, 0xC);
    f.good_out(&f.b, RESERVE, EA_RO, 0xB, 0);
    f.good_out(&f.a, PREEMPT, WE, 0xA, 0xC);
    assert_eq!(f.reservation(), Some((0xB, EA_RO)));
    assert_eq!(f.keys().1, vec![0xA, 0xB]);
    assert_eq!(f.attention(&f.c), (0x2A, 0x05));
    f.no_attentions();
    // Key 0 with a single-holder reservation is invalid.
    assert_field(&f.out(&f.a, PREEMPT, WE, 0xA, 0), false, 8, 7);
}

#[test]
fn preempt_own_reservation_changes_its_type() {
    let f = Fixture::new();
    f.register(&f.a, 0xA);
    f.register(&f.b, 0xB);
    f.good_out(&f.a, RESERVE, WE, 0xA, 0);
    f.good_out(&f.a, PREEMPT, EA, 0xA, 0xA);
    assert_eq!(f.reservation(), Some((0xA, EA)));
    assert_eq!(f.keys().1, vec![0xA, 0xB]);
    assert_eq!(f.attention(&f.b), (0x2A, 0x04));
    f.no_attentions();
}

#[test]
fn preempt_all_registrants() {
    // Key 0 preempts everyone and takes a reservation of the new type.
    let f = Fixture::new();
    f.register(&f.a, 0xA);
    f.register(&f.b, 0xB);
    f.register(&f.c, 0xC);
    f.good_out(&f.b, RESERVE, WE_AR, 0xB, 0);
    f.good_out(&f.a, PREEMPT_AND_ABORT, EA, 0xA, 0);
    assert_eq!(f.reservation(), Some((0xA, EA)));
    assert_eq!(f.keys().1, vec![0xA]);
    assert_eq!(f.attention(&f.b), (0x2A, 0x05));
    assert_eq!(f.attention(&f.c), (0x2A, 0x05));
    f.no_attentions();
    // A key removes those registrations; the reservation stays with the rest.
    let g = Fixture::new();
    g.register(&g.a, 0xA);
    g.register(&g.b, 0xB);
    g.good_out(&g.b, RESERVE, EA_AR, 0xB, 0);
    g.good_out(&g.a, PREEMPT, WE, 0xA, 0xB);
    assert_eq!(g.reservation(), Some((0, EA_AR)));
    assert_eq!(g.keys().1, vec![0xA]);
    assert_eq!(g.attention(&g.b), (0x2A, 0x05));
    assert_conflict(&g.read(&g.b));
    assert_good(&g.read(&g.a));
}

#[test]
fn preempt_refusals() {
    let f = Fixture::new();
    f.register(&f.a, 0xA);
    f.register(&f.b, 0xB);
    f.good_out(&f.b, RESERVE, WE, 0xB, 0);
    assert_conflict(&f.out(&f.c, PREEMPT, WE, 0, 0xB));
    assert_conflict(&f.out(&f.a, PREEMPT, WE, 0xB, 0xB));
    assert_field(&f.out(&f.a, PREEMPT, 0, 0xA, 0xB), true, 2, 3);
    assert_eq!(f.reservation(), Some((0xB, WE)));
    assert_eq!(f.keys().1, vec![0xA, 0xB]);
}

// ---- REGISTER AND MOVE -------------------------------------------------------------------------------------------

fn move_params(key: u64, sa_key: u64, flags: u8, rtpi: u16, tid: &[u8]) -> Vec<u8> {
    let mut p = key.to_be_bytes().to_vec();
    p.extend_from_slice(&sa_key.to_be_bytes());
    p.extend_from_slice(&[0, flags]);
    p.extend_from_slice(&rtpi.to_be_bytes());
    p.extend_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(tid);
    p
}

#[test]
fn register_and_move() {
    for unreg in [false, true] {
        let f = Fixture::new();
        f.register(&f.a, 0xA);
        f.good_out(&f.a, RESERVE, EA, 0xA, 0);
        let generation = f.keys().0;
        let p = move_params(0xA, 0xB, u8::from(unreg) << 1, 1, &tid_of(&f.b));
        assert_good(&f.prout(&f.a, REGISTER_AND_MOVE, 0, &p));
        assert_eq!(f.reservation(), Some((0xB, EA)), "same type, new holder");
        let keys = if unreg { vec![0xB] } else { vec![0xA, 0xB] };
        assert_eq!(f.keys(), (generation + 1, keys));
        assert_good(&f.write(&f.b));
        assert_conflict(&f.write(&f.a));
        f.no_attentions();
    }
}

#[test]
fn register_and_move_to_a_registered_nexus_replaces_its_key() {
    let f = Fixture::new();
    f.register(&f.a, 0xA);
    f.register(&f.b, 0xB);
    f.good_out(&f.a, RESERVE, WE_RO, 0xA, 0);
    let p = move_params(0xA, 0xBB, 0, 1, &tid_of(&f.b));
    assert_good(&f.prout(&f.a, REGISTER_AND_MOVE, 0, &p));
    assert_eq!(f.reservation(), Some((0xBB, WE_RO)));
    assert_eq!(f.keys().1, vec![0xA, 0xBB]);
}

#[test]
fn register_and_move_refusals() {
    let f = Fixture::new();
    let to_b = |key, sa_key, rtpi| move_params(key, sa_key, 0, rtpi, &tid_of(&f.b));
    f.register(&f.a, 0xA);
    f.register(&f.c, 0xC);
    // No reservation; then the issuer not the holder; then an all-registrants one.
    assert_conflict(&f.prout(&f.a, REGISTER_AND_MOVE, 0, &to_b(0xA, 0xB, 1)));
    f.good_out(&f.c, RESERVE, WE, 0xC, 0);
    assert_conflict(&f.prout(&f.a, REGISTER_AND_MOVE, 0, &to_b(0xA, 0xB, 1)));
    assert_conflict(&f.prout(&f.b, REGISTER_AND_MOVE, 0, &to_b(0, 0xB, 1)));
    assert_conflict(&f.prout(&f.c, REGISTER_AND_MOVE, 0, &to_b(0xA, 0xB, 1)));
    assert_field(
        &f.prout(&f.c, REGISTER_AND_MOVE, 0, &to_b(0xC, 0, 1)),
        false,
        8,
        7,
    );
    assert_field(
        &f.prout(&f.c, REGISTER_AND_MOVE, 0, &to_b(0xC, 0xB, 2)),
        false,
        18,
        7,
    );
    let to_self = move_params(0xC, 0xB, 0, 1, &tid_of(&f.c));
    assert_field(&f.prout(&f.c, REGISTER_AND_MOVE, 0, &to_self), false, 24, 7);
    let mut no_tid = to_b(0xC, 0xB, 1);
    no_tid.truncate(24);
    no_tid[20..24].fill(0);
    assert_field(&f.prout(&f.c, REGISTER_AND_MOVE, 0, &no_tid), false, 20, 7);
    let mut bad_len = to_b(0xC, 0xB, 1);
    bad_len[23] += 4;
    assert_length_error(&f.prout(&f.c, REGISTER_AND_MOVE, 0, &bad_len));
    f.good_out(&f.c, RELEASE, WE, 0xC, 0);
    f.good_out(&f.c, RESERVE, EA_AR, 0xC, 0);
    assert_conflict(&f.prout(&f.c, REGISTER_AND_MOVE, 0, &to_b(0xC, 0xB, 1)));
    assert_eq!(f.keys().1, vec![0xA, 0xC]);
}

// ---- PERSISTENT RESERVE IN ---------------------------------------------------------------------------------------

#[test]
fn read_full_status_bytes() {
    let f = Fixture::new();
    f.register(&f.a, 0x0102_0304_0506_0708);
    f.prout(&f.b, REGISTER_AND_IGNORE, 0, &basic(0, 0xB, ALL_TG_PT));
    f.good_out(&f.a, RESERVE, EA_RO, 0x0102_0304_0506_0708, 0);
    let d = f.prin(&f.c, 3);
    let mut want = vec![0, 0, 0, 2]; // PRGENERATION
    let tid_a = b"iqn.2024-01.org.test:init1,i,0x400000000001\0";
    let tid_b = b"iqn.2024-01.org.test:init2,i,0x400000000002\0";
    let body_len = 2 * 24 + 4 + tid_a.len() + 4 + tid_b.len();
    want.extend_from_slice(&(body_len as u32).to_be_bytes());
    // a: key, reserved, R_HOLDER, SCOPE/TYPE, reserved, RELATIVE TARGET PORT 1, length, TransportID.
    want.extend_from_slice(&[
        1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0x01, 0x06, 0, 0, 0, 0, 0, 1,
    ]);
    want.extend_from_slice(&((4 + tid_a.len()) as u32).to_be_bytes());
    want.extend_from_slice(&[0x45, 0, 0, tid_a.len() as u8]);
    want.extend_from_slice(tid_a);
    // b: ALL_TG_PT, not a holder, no relative target port.
    want.extend_from_slice(&[
        0, 0, 0, 0, 0, 0, 0, 0xB, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0,
    ]);
    want.extend_from_slice(&((4 + tid_b.len()) as u32).to_be_bytes());
    want.extend_from_slice(&[0x45, 0, 0, tid_b.len() as u8]);
    want.extend_from_slice(tid_b);
    assert_eq!(d, want);
    // READ RESERVATION and READ KEYS.
    assert_eq!(
        f.prin(&f.c, 1),
        [
            &[0, 0, 0, 2, 0, 0, 0, 16][..],
            &[1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0x06, 0, 0]
        ]
        .concat()
    );
    assert_eq!(
        f.prin(&f.c, 0),
        [
            &[0, 0, 0, 2, 0, 0, 0, 16][..],
            &[1, 2, 3, 4, 5, 6, 7, 8],
            &[0, 0, 0, 0, 0, 0, 0, 0xB]
        ]
        .concat()
    );
}

#[test]
fn prin_allocation_length_keeps_additional_length() {
    let f = Fixture::new();
    f.register(&f.a, 0xA);
    let o = f.run(&f.a, &[0x5E, 0, 0, 0, 0, 0, 0, 0, 8, 0], &[]);
    assert_eq!(
        o.data_in,
        vec![0, 0, 0, 1, 0, 0, 0, 8],
        "libiscsi PrinReadKeys.Truncate"
    );
}

#[test]
fn report_capabilities() {
    // Memory only: no PTPL_C, and APTPL is refused.
    let f = Fixture::with_capacity(0);
    let d = f.prin(&f.a, 2);
    assert_eq!(d, vec![0, 8, 0x1C, 0xB0, 0xEA, 0x01, 0, 0]);
    assert_field(
        &f.prout(&f.a, REGISTER, 0, &basic(0, 0xA, APTPL)),
        false,
        20,
        0,
    );
    assert_eq!(f.keys(), (0, vec![]));
    // A device that keeps the state: PTPL_C, and PTPL_A once APTPL is set.
    let g = Fixture::new();
    assert_eq!(g.prin(&g.a, 2), vec![0, 8, 0x1D, 0xB0, 0xEA, 0x01, 0, 0]);
    assert_good(&g.prout(&g.a, REGISTER, 0, &basic(0, 0xA, APTPL)));
    assert_eq!(g.prin(&g.a, 2)[3], 0xB1);
    // The last valid APTPL governs.
    assert_good(&g.prout(&g.a, REGISTER, 0, &basic(0xA, 0xA, 0)));
    assert_eq!(g.prin(&g.a, 2)[3], 0xB0);
}

// ---- access control ----------------------------------------------------------------------------------------------

/// SPC-4 table 66 / SBC-3 table 13, as written there: for each command, whether it is Allowed or Conflicts for
/// the columns Write Exclusive (any nexus but the holder), Exclusive Access (same), then WE-RO/WE-AR from a
/// registered / unregistered nexus, then EA-RO/EA-AR registered / unregistered.
const ACCESS_TABLE: &[(&str, &[u8], &str)] = &[
    ("TEST UNIT READY", &[0x00], "AAAAAA"),
    ("REQUEST SENSE", &[0x03], "AAAAAA"),
    ("INQUIRY", &[0x12], "AAAAAA"),
    ("READ CAPACITY (10)", &[0x25], "AAAAAA"),
    ("READ CAPACITY (16)", &[0x9E, 0x10], "AAAAAA"),
    ("LOG SENSE", &[0x4D], "AAAAAA"),
    ("REPORT LUNS", &[0xA0], "AAAAAA"),
    ("REPORT TARGET PORT GROUPS", &[0xA3, 0x0A], "AAAAAA"),
    ("REPORT IDENTIFYING INFORMATION", &[0xA3, 0x05], "AAAAAA"),
    ("READ MEDIA SERIAL NUMBER", &[0xAB, 0x01], "AAAAAA"),
    ("PERSISTENT RESERVE IN", &[0x5E], "AAAAAA"),
    ("START STOP UNIT, START", &[0x1B, 0, 0, 0, 0x01], "AAAAAA"),
    ("START STOP UNIT, STOP", &[0x1B, 0, 0, 0, 0x00], "CCACAC"),
    (
        "START STOP UNIT, POWER CONDITION",
        &[0x1B, 0, 0, 0, 0x21],
        "CCACAC",
    ),
    ("PREVENT ALLOW, ALLOW", &[0x1E, 0, 0, 0, 0], "AAAAAA"),
    ("PREVENT ALLOW, PREVENT", &[0x1E, 0, 0, 0, 1], "CCACAC"),
    ("READ (6)", &[0x08], "ACAAAC"),
    ("READ (10)", &[0x28], "ACAAAC"),
    ("READ (12)", &[0xA8], "ACAAAC"),
    ("READ (16)", &[0x88], "ACAAAC"),
    ("VERIFY (10)", &[0x2F], "ACAAAC"),
    ("VERIFY (12)", &[0xAF], "ACAAAC"),
    ("VERIFY (16)", &[0x8F], "ACAAAC"),
    ("MODE SENSE (6)", &[0x1A], "ACAAAC"),
    ("MODE SENSE (10)", &[0x5A], "ACAAAC"),
    ("PRE-FETCH (10)", &[0x34], "ACAAAC"),
    ("PRE-FETCH (16)", &[0x90], "ACAAAC"),
    ("GET LBA STATUS", &[0x9E, 0x12], "ACAAAC"),
    ("READ BUFFER", &[0x3C], "ACAAAC"),
    ("RECEIVE DIAGNOSTIC RESULTS", &[0x1C], "ACAAAC"),
    ("REPORT SUPPORTED OPERATION CODES", &[0xA3, 0x0C], "ACAAAC"),
    (
        "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
        &[0xA3, 0x0D],
        "ACAAAC",
    ),
    ("READ DEFECT DATA (10)", &[0x37], "ACAAAC"),
    ("WRITE (6)", &[0x0A], "CCACAC"),
    ("WRITE (10)", &[0x2A], "CCACAC"),
    ("WRITE (12)", &[0xAA], "CCACAC"),
    ("WRITE (16)", &[0x8A], "CCACAC"),
    ("WRITE AND VERIFY (10)", &[0x2E], "CCACAC"),
    ("WRITE AND VERIFY (12)", &[0xAE], "CCACAC"),
    ("WRITE AND VERIFY (16)", &[0x8E], "CCACAC"),
    ("WRITE SAME (10)", &[0x41], "CCACAC"),
    ("WRITE SAME (16)", &[0x93], "CCACAC"),
    ("UNMAP", &[0x42], "CCACAC"),
    ("COMPARE AND WRITE", &[0x89], "CCACAC"),
    ("ORWRITE", &[0x8B], "CCACAC"),
    ("SYNCHRONIZE CACHE (10)", &[0x35], "CCACAC"),
    ("SYNCHRONIZE CACHE (16)", &[0x91], "CCACAC"),
    ("MODE SELECT (6)", &[0x15], "CCACAC"),
    ("MODE SELECT (10)", &[0x55], "CCACAC"),
    ("FORMAT UNIT", &[0x04], "CCACAC"),
    ("WRITE BUFFER", &[0x3B], "CCACAC"),
    ("SEND DIAGNOSTIC", &[0x1D], "CCACAC"),
    ("LOG SELECT", &[0x4C], "CCACAC"),
    ("EXTENDED COPY", &[0x83], "CCACAC"),
    ("SANITIZE", &[0x48], "CCACAC"),
    // SPC-4 table 67, PERSISTENT RESERVE OUT from a nexus that is not the holder: the registered / unregistered
    // columns apply to every type (the WE and EA columns here are for a registered nexus).
    ("PR OUT REGISTER", &[0x5F, 0x00], "AAAAAA"),
    ("PR OUT REGISTER AND IGNORE", &[0x5F, 0x06], "AAAAAA"),
    ("PR OUT RESERVE", &[0x5F, 0x01], "CCCCCC"),
    ("PR OUT REGISTER AND MOVE", &[0x5F, 0x07], "CCCCCC"),
    ("PR OUT RELEASE", &[0x5F, 0x02], "AAACAC"),
    ("PR OUT CLEAR", &[0x5F, 0x03], "AAACAC"),
    ("PR OUT PREEMPT", &[0x5F, 0x04], "AAACAC"),
    ("PR OUT PREEMPT AND ABORT", &[0x5F, 0x05], "AAACAC"),
];

#[test]
fn access_table_by_opcode() {
    let ro_or_ar = [
        (PrType::WriteExclusiveRegistrantsOnly, 2),
        (PrType::WriteExclusiveAllRegistrants, 2),
        (PrType::ExclusiveAccessRegistrantsOnly, 4),
        (PrType::ExclusiveAccessAllRegistrants, 4),
    ];
    for &(name, cdb, row) in ACCESS_TABLE {
        let row: Vec<bool> = row.chars().map(|c| c == 'A').collect();
        let class = classify(cdb);
        for role in [Role::Registered, Role::Unregistered] {
            let pr_out = matches!(class, Class::PrOut(_));
            // Table 67 has no unregistered WE/EA column of its own: an unregistered nexus is refused what
            // only registrants may do.
            let we_ea_expect = |col: usize| {
                if pr_out && role == Role::Unregistered {
                    row[3]
                } else {
                    row[col]
                }
            };
            let cases = [
                (PrType::WriteExclusive, we_ea_expect(0)),
                (PrType::ExclusiveAccess, we_ea_expect(1)),
            ];
            for (t, want) in cases {
                assert_eq!(
                    persistent_allows(class, t, role),
                    want,
                    "{name}: {t:?} {role:?}"
                );
            }
            // For the all-registrants types a registered nexus is a holder, which may do anything.
            for (t, col) in ro_or_ar {
                let registered_col = role == Role::Registered;
                let want = if registered_col && t.all_registrants() {
                    true
                } else {
                    row[col + usize::from(!registered_col)]
                };
                let effective = if registered_col && t.all_registrants() {
                    Role::Holder
                } else {
                    role
                };
                assert_eq!(
                    persistent_allows(class, t, effective),
                    want,
                    "{name}: {t:?} {role:?}"
                );
            }
        }
        // The holder may run everything.
        for t in PrType::ALL {
            assert!(
                persistent_allows(class, t, Role::Holder),
                "{name}: holder of {t:?}"
            );
        }
    }
}

/// The same table through the logical unit, for the commands it implements: a nexus that holds, one that is
/// registered, one that is not.
#[test]
fn access_through_the_logical_unit() {
    let implemented: &[(&str, Vec<u8>, &[u8], &str)] = &[
        ("TEST UNIT READY", vec![0; 6], &[], "AAAAAA"),
        ("INQUIRY", vec![0x12, 0, 0, 0, 36, 0], &[], "AAAAAA"),
        (
            "READ CAPACITY (10)",
            vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[],
            "AAAAAA",
        ),
        (
            "REPORT LUNS",
            vec![0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            &[],
            "AAAAAA",
        ),
        (
            "READ (10)",
            vec![0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0],
            &[],
            "ACAAAC",
        ),
        (
            "VERIFY (10)",
            vec![0x2F, 0, 0, 0, 0, 1, 0, 0, 1, 0],
            &[],
            "ACAAAC",
        ),
        (
            "MODE SENSE (6)",
            vec![0x1A, 0, 0x3F, 0, 255, 0],
            &[],
            "ACAAAC",
        ),
        (
            "RSOC",
            vec![0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0],
            &[],
            "ACAAAC",
        ),
        (
            "WRITE (10)",
            vec![0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0],
            &[0; 512],
            "CCACAC",
        ),
        ("WRITE (6)", vec![0x0A, 0, 0, 1, 1, 0], &[0; 512], "CCACAC"),
        (
            "SYNCHRONIZE CACHE (10)",
            vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[],
            "CCACAC",
        ),
        ("WRITE AND VERIFY (16)", rw16(0x8E, 1), &[0; 512], "CCACAC"),
    ];
    for (col, t) in [
        (0, WE),
        (1, EA),
        (2, WE_RO),
        (2, WE_AR),
        (4, EA_RO),
        (4, EA_AR),
    ] {
        let f = Fixture::new();
        f.register(&f.a, 0xA);
        f.register(&f.b, 0xB);
        f.good_out(&f.a, RESERVE, t, 0xA, 0);
        for (name, cdb, data, row) in implemented {
            let row: Vec<bool> = row.chars().map(|c| c == 'A').collect();
            let holder = f.run(&f.a, cdb, data);
            assert_ne!(
                holder.status,
                TaskStatus::ReservationConflict,
                "{name}: holder, type {t}"
            );
            let (registered, unregistered) = if col < 2 {
                (row[col], row[col])
            } else {
                (row[col], row[col + 1])
            };
            for (n, want) in [(&f.b, registered), (&f.c, unregistered)] {
                let o = f.run(n, cdb, data);
                let conflict = o.status == TaskStatus::ReservationConflict;
                assert_eq!(!conflict, want, "{name}: nexus {}, type {t}: {o:?}", n.id);
            }
        }
    }
}

fn rw16(op: u8, blocks: u32) -> Vec<u8> {
    let mut c = vec![op, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    c.extend_from_slice(&blocks.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

#[test]
fn libiscsi_access_matrix() {
    // test_prout_reserve_access.c: (type, registered reads, registered writes, unregistered reads, writes).
    for (t, rr, rw, ur, uw) in [
        (EA, false, false, false, false),
        (WE, true, false, true, false),
        (EA_RO, true, true, false, false),
        (WE_RO, true, true, true, false),
        (EA_AR, true, true, false, false),
        (WE_AR, true, true, true, false),
    ] {
        let f = Fixture::new();
        f.register(&f.a, 0xA);
        f.register(&f.b, 0xB);
        f.good_out(&f.a, RESERVE, t, 0xA, 0);
        assert_good(&f.read(&f.a));
        assert_good(&f.write(&f.a));
        assert_eq!(f.read(&f.b).status == TaskStatus::Good, rr, "type {t}");
        assert_eq!(f.write(&f.b).status == TaskStatus::Good, rw, "type {t}");
        f.good_out(&f.b, REGISTER, 0, 0xB, 0);
        assert_eq!(f.read(&f.b).status == TaskStatus::Good, ur, "type {t}");
        assert_eq!(f.write(&f.b).status == TaskStatus::Good, uw, "type {t}");
    }
}

#[test]
fn unit_attention_comes_before_cdb_errors_and_conflicts() {
    let f = Fixture::new();
    f.register(&f.a, 0xA);
    f.good_out(&f.a, RESERVE, EA, 0xA, 0);
    f.lu.reset(&f.a);
    let o = f.write(&f.b);
    assert_sense(&o, SenseKey::UnitAttention, 0x29, 0x03);
    // CDB errors come before conflicts.
    let o = f.run(&f.b, &[0x2A, 0xE0, 0, 0, 0, 1, 0, 0, 1, 0], &[0; 512]);
    assert_field(&o, true, 1, 7);
    assert_conflict(&f.write(&f.b));
    // Resets leave persistent reservations alone.
    assert_eq!(f.reservation(), Some((0xA, EA)));
}

#[test]
fn submitted_writes_are_checked() {
    let mut dev = PrDevice::new(4096);
    dev.submits = true;
    let f = Fixture::over(Arc::new(dev));
    f.register(&f.a, 0xA);
    f.good_out(&f.a, RESERVE, WE, 0xA, 0);
    let cdb = [WRITE_10, 0, 0, 0, 0, 1, 0, 0, 1, 0];
    assert!(f.lu.submits(&Decoded::new(&cdb)));
    let submit = |n: &Nexus| {
        let (tx, rx) = std::sync::mpsc::channel();
        let data = bytes::Bytes::from_static(&[7; 512]);
        let req = Request {
            nexus: n,
            cdb: &cdb,
            data_out: &data,
            luns: &[0],
        };
        assert!(f
            .lu
            .submit(
                &req,
                &Decoded::new(&cdb),
                &data,
                Box::new(move |o| tx.send(o).unwrap())
            )
            .is_ok());
        rx.recv().unwrap()
    };
    assert_conflict(&submit(&f.b));
    assert_eq!(f.dev.data.snapshot(512, 1), vec![0]);
    assert_good(&submit(&f.a));
    assert_eq!(f.dev.data.snapshot(512, 1), vec![7]);
}

// ---- unit attentions reach every nexus of a registration -------------------------------------------------------

#[test]
fn attentions_reach_every_nexus_of_a_registration() {
    let f = Fixture::new();
    // init3 registered as a whole (format 00b TransportID): two sessions of it, both told.
    let mut p = basic(0, 0xA, SPEC_I_PT);
    let t = tid(&f.c.initiator_name, None);
    p.extend_from_slice(&(t.len() as u32).to_be_bytes());
    p.extend_from_slice(&t);
    assert_good(&f.prout(&f.a, REGISTER, 0, &p));
    let c2 = Nexus {
        isid: [0x80, 0, 0, 0, 0, 9],
        ..same_port(&f.c, 33)
    };
    f.lu.nexus_joined(&c2);
    f.good_out(&f.a, CLEAR, 0, 0xA, 0);
    assert_eq!(f.attention(&f.c), (0x2A, 0x03));
    assert_eq!(f.attention(&c2), (0x2A, 0x03));
    f.no_attentions();
}

// ---- SPC-2 RESERVE / RELEASE -------------------------------------------------------------------------------------

const RESERVE6: [u8; 6] = [0x16, 0, 0, 0, 0, 0];
const RELEASE6: [u8; 6] = [0x17, 0, 0, 0, 0, 0];
const RESERVE10: [u8; 10] = [0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const RELEASE10: [u8; 10] = [0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0];

#[test]
fn spc2_reserve_and_release() {
    for (reserve, release) in [(&RESERVE6[..], &RELEASE6[..]), (&RESERVE10, &RELEASE10)] {
        let f = Fixture::new();
        assert_good(&f.run(&f.a, reserve, &[]));
        assert_good(&f.run(&f.a, reserve, &[]));
        assert_conflict(&f.run(&f.b, reserve, &[]));
        // Another nexus's RELEASE is GOOD and releases nothing.
        assert_good(&f.run(&f.b, release, &[]));
        assert_good(&f.write(&f.a));
        assert_good(&f.read(&f.a));
        assert_conflict(&f.read(&f.b));
        assert_conflict(&f.write(&f.b));
        assert_conflict(&f.run(&f.b, &[0; 6], &[]));
        assert_conflict(&f.run(&f.b, &[0x1A, 0, 0x3F, 0, 255, 0], &[]));
        assert_good(&f.run(&f.b, &[0x12, 0, 0, 0, 36, 0], &[]));
        assert_good(&f.run(&f.b, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]));
        assert_good(&f.run(&f.b, &[REQUEST_SENSE, 0, 0, 0, 18, 0], &[]));
        // PERSISTENT RESERVE IN / OUT conflict for everyone, the holder too (SPC-2 5.5.1).
        assert_conflict(&f.run(&f.a, &[0x5E, 0, 0, 0, 0, 0, 0, 0, 8, 0], &[]));
        assert_conflict(&f.out(&f.a, REGISTER, 0, 0, 0xA));
        assert_conflict(&f.out(&f.b, REGISTER, 0, 0, 0xB));
        assert_good(&f.run(&f.a, release, &[]));
        assert_good(&f.run(&f.b, reserve, &[]));
        assert_good(&f.write(&f.b));
        f.no_attentions();
        assert_eq!(f.dev.stores(), 0, "SPC-2 reservations are not persistent");
    }
}

#[test]
fn spc2_reservation_ends_with_the_nexus_or_a_reset() {
    let f = Fixture::new();
    assert_good(&f.run(&f.a, &RESERVE6, &[]));
    f.lu.nexus_gone(&f.b);
    assert_conflict(&f.run(&f.c, &RESERVE6, &[]));
    f.lu.nexus_gone(&f.a);
    assert_good(&f.run(&f.c, &RESERVE6, &[]));
    f.lu.reset(&f.b);
    assert_good(&f.run(&f.b, &RESERVE6, &[]));
    f.lu.reload_reservations();
    assert_eq!(f.attention(&f.c), (0x29, 0x03));
    assert_good(&f.run(&f.c, &RESERVE10, &[]));
}

#[test]
fn spc2_with_persistent_registrations() {
    let f = Fixture::new();
    f.register(&f.a, 0xA);
    // With registrations, RESERVE and RELEASE conflict (SPC-2 5.5.1)...
    assert_conflict(&f.run(&f.b, &RESERVE6, &[]));
    assert_conflict(&f.run(&f.b, &RELEASE6, &[]));
    assert_conflict(&f.run(&f.a, &RESERVE6, &[]));
    // ...except from the holder, or a registrant of a registrants-only / all-registrants reservation, where
    // they are GOOD and do nothing (SPC-4 5.13.3).
    f.good_out(&f.a, RESERVE, WE, 0xA, 0);
    assert_good(&f.run(&f.a, &RESERVE6, &[]));
    assert_good(&f.run(&f.a, &RELEASE10, &[]));
    assert_eq!(f.reservation(), Some((0xA, WE)));
    f.register(&f.b, 0xB);
    assert_conflict(&f.run(&f.b, &RESERVE6, &[]));
    f.good_out(&f.a, RELEASE, WE, 0xA, 0);
    f.good_out(&f.a, RESERVE, WE_RO, 0xA, 0);
    assert_good(&f.run(&f.b, &RESERVE6, &[]));
    assert_conflict(&f.run(&f.c, &RESERVE6, &[]));
    assert_eq!(f.reservation(), Some((0xA, WE_RO)));
    assert_good(&f.out(&f.a, RESERVE, WE_RO, 0xA, 0));
}

// ---- persistence -------------------------------------------------------------------------------------------------

#[test]
fn every_change_is_stored_before_good() {
    let f = Fixture::new();
    let mut expect_stores = 0;
    let mut step = |o: Outcome, changes: bool| {
        assert_good(&o);
        if changes {
            expect_stores += 1;
        }
        assert_eq!(f.dev.stores(), expect_stores);
        assert_eq!(
            decode(&f.dev.stored()).unwrap(),
            f.state(),
            "stored = current"
        );
    };
    step(f.out(&f.a, REGISTER_AND_IGNORE, 0, 0, 0xA), true);
    step(f.out(&f.b, REGISTER_AND_IGNORE, 0, 0, 0xB), true);
    step(f.out(&f.a, RESERVE, WE, 0xA, 0), true);
    step(f.out(&f.a, RESERVE, WE, 0xA, 0), false);
    step(f.out(&f.b, RELEASE, WE, 0xB, 0), false);
    step(f.out(&f.a, RELEASE, WE, 0xA, 0), true);
    step(f.out(&f.a, PREEMPT, WE, 0xA, 0xB), true);
    step(f.out(&f.c, REGISTER, 0, 0, 0), false);
    step(f.out(&f.a, CLEAR, 0, 0xA, 0), true);
    // PERSISTENT RESERVE IN and other commands store nothing.
    f.prin(&f.a, 3);
    assert_good(&f.write(&f.a));
    assert_eq!(f.dev.stores(), expect_stores);
}

#[test]
fn a_failed_store_changes_nothing() {
    let f = Fixture::new();
    f.register(&f.a, 0xA);
    f.good_out(&f.a, RESERVE, EA, 0xA, 0);
    let before = (f.keys(), f.reservation(), f.dev.stored());
    f.dev.fail_store.store(true, Ordering::SeqCst);
    for (n, sa, key, sa_key) in [
        (&f.b, REGISTER, 0, 0xB),
        (&f.a, RELEASE, 0xA, 0),
        (&f.a, CLEAR, 0xA, 0),
        (&f.a, REGISTER, 0xA, 0),
    ] {
        let o = f.out(n, sa, EA, key, sa_key);
        assert_sense(&o, SenseKey::HardwareError, 0x44, 0x00);
    }
    f.dev.fail_store.store(false, Ordering::SeqCst);
    assert_eq!((f.keys(), f.reservation(), f.dev.stored()), before);
    assert_conflict(&f.write(&f.b));
    f.no_attentions();
}

#[test]
fn registrations_beyond_capacity_are_refused() {
    let one = encode(&PrState {
        registrations: vec![Registration {
            key: 1,
            initiator: InitiatorPort::of(&nexus(1)),
            tpgt: 7,
            all_tg_pt: false,
            holder: false,
        }],
        generation: 1,
        ..PrState::default()
    });
    let f = Fixture::with_capacity(one.len());
    f.register(&f.a, 0xA);
    let o = f.out(&f.b, REGISTER_AND_IGNORE, 0, 0, 0xB);
    assert_sense(&o, SenseKey::IllegalRequest, 0x55, 0x04);
    assert_eq!(f.keys(), (1, vec![0xA]));
    // Memory only: a bound too.
    let g = Fixture::with_capacity(0);
    let mut refused = false;
    for i in 0..MAX_REGISTRATIONS as u64 + 1 {
        let n = Nexus {
            initiator_name: format!("iqn.2024-01.org.test:{}", "x".repeat(200)),
            isid: [
                0,
                0,
                (i >> 24) as u8,
                (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
            ],
            ..nexus(1000 + i)
        };
        let o = g.out(&n, REGISTER_AND_IGNORE, 0, 0, 1 + i);
        if o.status != TaskStatus::Good {
            assert_sense(&o, SenseKey::IllegalRequest, 0x55, 0x04);
            refused = true;
            break;
        }
    }
    assert!(refused);
}

#[test]
fn a_new_logical_unit_over_the_same_device_has_the_same_state() {
    let f = Fixture::new();
    f.register(&f.a, 0xA);
    f.prout(
        &f.b,
        REGISTER_AND_IGNORE,
        0,
        &basic(0, 0xB, ALL_TG_PT | APTPL),
    );
    let mut p = basic(0, 0xC, SPEC_I_PT);
    let t = tid("iqn.2024-01.org.test:elsewhere", None);
    p.extend_from_slice(&(t.len() as u32).to_be_bytes());
    p.extend_from_slice(&t);
    assert_good(&f.prout(&f.c, REGISTER, 0, &p));
    f.good_out(&f.a, RESERVE, EA_RO, 0xA, 0);
    let status: Vec<_> = (0..4).map(|sa| f.prin(&f.c, sa)).collect();

    let g = Fixture::over(f.dev.clone());
    assert!(!g.lu.reservations.is_loaded());
    assert!(
        !g.lu.is_quick(&Decoded::new(&[0; 6])),
        "the first command loads"
    );
    let again: Vec<_> = (0..4).map(|sa| g.prin(&g.c, sa)).collect();
    assert_eq!(again, status);
    assert!(g.lu.is_quick(&Decoded::new(&[0; 6])));
    assert_conflict(&g.read(&nexus(9)));
    assert_good(&g.read(&g.b));
}

#[test]
fn reload_reads_what_the_peer_stored() {
    // Two logical units over one device stand for the two nodes' views of a replicated volume.
    let dev = Arc::new(PrDevice::new(4096));
    let node1 = Fixture::over(dev.clone());
    let node2 = Fixture::over(dev.clone());
    assert_eq!(node2.keys(), (0, vec![]));
    node1.register(&node1.a, 0xA);
    node1.good_out(&node1.a, RESERVE, WE, 0xA, 0);
    // node2 loaded before: it sees the change only after a reload (the failover).
    assert_eq!(node2.keys(), (0, vec![]));
    let loads = dev.loads.load(Ordering::SeqCst);
    node2.lu.reload_reservations();
    assert_eq!(node2.keys(), (1, vec![0xA]));
    assert_eq!(dev.loads.load(Ordering::SeqCst), loads + 1);
    // The initiator logs in again on the other node: same name and ISID, another session number.
    let a_again = same_port(&node1.a, 500);
    assert_good(&node2.write(&a_again));
    assert_conflict(&node2.write(&node2.b));
}

#[test]
fn load_failures_fail_commands_until_the_state_loads() {
    let dev = Arc::new(PrDevice::new(4096));
    dev.fail_load.store(true, Ordering::SeqCst);
    let f = Fixture::over(dev.clone());
    assert_sense(&f.read(&f.a), SenseKey::HardwareError, 0x44, 0x00);
    let o = f.run(&f.a, &[0x5E, 0, 0, 0, 0, 0, 0, 0, 8, 0], &[]);
    assert_sense(&o, SenseKey::HardwareError, 0x44, 0x00);
    // Commands every reservation allows need no state.
    assert_good(&f.run(&f.a, &[0; 6], &[]));
    assert_good(&f.run(&f.a, &[0x12, 0, 0, 0, 36, 0], &[]));
    dev.fail_load.store(false, Ordering::SeqCst);
    assert_good(&f.read(&f.a));
    // Stored bytes that do not decode are a failure too, not an empty state.
    *dev.stored.lock().unwrap() = b"garbage".to_vec();
    f.lu.reload_reservations();
    assert_sense(&f.write(&f.a), SenseKey::HardwareError, 0x44, 0x00);
}

#[test]
fn memory_only_state_survives_reload() {
    let f = Fixture::with_capacity(0);
    f.register(&f.a, 0xA);
    f.lu.reload_reservations();
    assert_eq!(f.keys(), (1, vec![0xA]));
}

#[test]
fn after_power_loss_keeps_only_aptpl_state() {
    let f = Fixture::new();
    f.register(&f.b, 0xB);
    f.prout(&f.a, REGISTER, 0, &basic(0, 0xA, APTPL));
    f.good_out(&f.a, RESERVE, WE_RO, 0xA, 0);
    let stored = f.dev.stored();
    let after = reservations_after_power_loss(&stored);
    let state = decode(&after).unwrap();
    assert_eq!(state.generation, 0, "PRGENERATION is zero after a power on");
    assert_eq!(
        PrState {
            generation: 2,
            ..state.clone()
        },
        f.state()
    );
    // A logical unit powered on with it has the registrations and the reservation.
    let dev = Arc::new(PrDevice::new(4096));
    *dev.stored.lock().unwrap() = after;
    let g = Fixture::over(dev);
    assert_eq!(g.keys(), (0, vec![0xB, 0xA]));
    assert_eq!(g.reservation(), Some((0xA, WE_RO)));
    // Without APTPL, nothing survives.
    f.good_out(&f.a, REGISTER, 0, 0xA, 0xA);
    assert!(reservations_after_power_loss(&f.dev.stored()).is_empty());
    assert!(reservations_after_power_loss(&[]).is_empty());
    assert!(reservations_after_power_loss(b"not reservation state").is_empty());
}

// ---- command plumbing --------------------------------------------------------------------------------------------

#[test]
fn data_lengths_and_quickness() {
    let f = Fixture::new();
    assert_eq!(
        f.lu.data_out_len(&Decoded::new(&prout_cdb(REGISTER, 0, 0, 24))),
        Ok(24)
    );
    assert_eq!(
        f.lu.data_out_len(&Decoded::new(&prout_cdb(REGISTER_AND_MOVE, 0, 0, 60))),
        Ok(60)
    );
    assert_eq!(
        f.lu.data_in_len(&Decoded::new(&prout_cdb(REGISTER, 0, 0, 24))),
        Ok(0)
    );
    assert_eq!(
        f.lu.data_out_len(&Decoded::new(&prout_cdb(8, 0, 0, 24))),
        Err(Sense::invalid_field_in_cdb(1, 4))
    );
    for c in [&RESERVE6[..], &RELEASE6, &RESERVE10, &RELEASE10] {
        assert_eq!(f.lu.data_out_len(&Decoded::new(c)), Ok(0));
        assert_eq!(f.lu.data_in_len(&Decoded::new(c)), Ok(0));
        assert!(!f.lu.is_quick(&Decoded::new(c)));
    }
    f.prin(&f.a, 0);
    assert!(
        !f.lu.is_quick(&Decoded::new(&prout_cdb(REGISTER, 0, 0, 24))),
        "stores"
    );
    assert!(f
        .lu
        .is_quick(&Decoded::new(&[0x5E, 0, 0, 0, 0, 0, 0, 0, 8, 0])));
}

#[test]
fn reserve_release_cdb_fields() {
    let f = Fixture::new();
    let third_party = [0x16, 0x10, 0, 0, 0, 0];
    let o = f.run(&f.a, &third_party, &[]);
    assert_field(&o, true, 1, 4);
    let long_id = [0x56, 0x02, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_field(&f.run(&f.a, &long_id, &[]), true, 1, 1);
}

// ---- concurrency -------------------------------------------------------------------------------------------------

#[test]
fn concurrent_registrations_and_io() {
    let f = Arc::new(Fixture::new());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || {
                let me = nexus(20 + t);
                for i in 0..30u64 {
                    let key = (t << 32) | (i + 1);
                    f.register(&me, key);
                    if f.out(&me, RESERVE, WE, key, 0).status == TaskStatus::Good {
                        assert_good(&f.write(&me));
                        f.good_out(&me, RELEASE, WE, key, 0);
                    }
                    let _ = f.read(&me);
                    f.good_out(&me, REGISTER, 0, key, 0);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no panic");
    }
    assert_eq!(f.keys().1, Vec::<u64>::new());
    assert_eq!(f.keys().0, 4 * 30 * 2);
    assert_eq!(decode(&f.dev.stored()).unwrap(), f.state());
}

// ---- encoding ----------------------------------------------------------------------------------------------------

fn arb_state() -> impl Strategy<Value = PrState> {
    let registration = (
        1u64..,
        "[a-z0-9.:-]{1,60}",
        proptest::option::of(any::<[u8; 6]>()),
        any::<u16>(),
        any::<bool>(),
    );
    (
        any::<u32>(),
        any::<bool>(),
        proptest::collection::vec(registration, 0..12),
        proptest::option::of(0usize..6),
        any::<usize>(),
    )
        .prop_map(|(generation, aptpl, regs, t, holder)| {
            // Distinct names (index prefix) keep registrations from covering the same I_T nexus.
            let registrations: Vec<_> = regs
                .into_iter()
                .enumerate()
                .map(|(i, (key, name, isid, tpgt, all_tg_pt))| Registration {
                    key,
                    initiator: InitiatorPort {
                        name: format!("n{i}.{name}"),
                        isid,
                    },
                    tpgt,
                    all_tg_pt,
                    holder: false,
                })
                .collect();
            let mut s = PrState {
                generation,
                aptpl,
                registrations,
                reservation: None,
            };
            if let (Some(t), false) = (t, s.registrations.is_empty()) {
                let t = PrType::ALL[t];
                s.reservation = Some(t);
                if !t.all_registrants() {
                    let i = holder % s.registrations.len();
                    s.registrations[i].holder = true;
                }
            }
            s
        })
}

proptest! {
    #[test]
    fn encoding_roundtrips(state in arb_state()) {
        let b = encode(&state);
        prop_assert_eq!(decode(&b), Ok(state.clone()));
        // Any damaged byte is noticed (the CRC covers everything), and so is any truncation.
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x5A;
            prop_assert!(decode(&bad).is_err(), "byte {} flipped", i);
        }
        for n in 1..b.len() {
            prop_assert!(decode(&b[..n]).is_err(), "cut at {}", n);
        }
        let after = reservations_after_power_loss(&b);
        prop_assert_eq!(after.is_empty(), !state.aptpl);
    }

    #[test]
    fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&b);
        let _ = reservations_after_power_loss(&b);
    }

    /// Garbage with a valid frame (magic, version, lengths, checksum) reaches the field checks: still no panic.
    #[test]
    fn framed_garbage_never_panics(
        header in proptest::collection::vec(any::<u8>(), 16),
        body in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let mut b = b"TWPR".to_vec();
        b.push(1);
        b.extend_from_slice(&header[..11]);
        b.extend_from_slice(&(body.len() as u32).to_be_bytes());
        b.extend_from_slice(&body);
        let crc = super::codec::crc32c(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        let _ = decode(&b);
    }

    /// Random PERSISTENT RESERVE OUT commands from a few nexuses: whatever happens, the stored state decodes
    /// (so it keeps the state's rules) and is the current one.
    #[test]
    fn random_commands_keep_the_state_consistent(
        cmds in proptest::collection::vec((0u8..4, 0u8..8, 0u8..10, 0u64..4, 0u64..4, any::<u8>()), 1..40),
    ) {
        let f = Fixture::new();
        let nexuses = [f.a.clone(), f.b.clone(), f.c.clone(), nexus(4)];
        for (who, sa, t, key, sa_key, flags) in cmds {
            let n = &nexuses[usize::from(who)];
            let params = if sa == REGISTER_AND_MOVE {
                let target = &nexuses[(usize::from(who) + 1) % 4];
                move_params(key, sa_key, flags & 0x03, 1, &tid_of(target))
            } else {
                basic(key, sa_key, flags & (ALL_TG_PT | APTPL))
            };
            let o = f.prout(n, sa, t, &params);
            prop_assert!(matches!(
                o.status,
                TaskStatus::Good | TaskStatus::ReservationConflict | TaskStatus::CheckCondition
            ));
            if f.dev.stores() > 0 {
                prop_assert_eq!(decode(&f.dev.stored()), Ok(f.state()));
            }
        }
    }
}

#[test]
fn decode_errors() {
    let good = encode(&PrState::default());
    assert_eq!(decode(&good), Ok(PrState::default()));
    assert_eq!(decode(&[]), Ok(PrState::default()));
    assert_eq!(decode(&good[..10]), Err(DecodeError::Length));
    let mut magic = good.clone();
    magic[0] = b'X';
    assert_eq!(decode(&magic), Err(DecodeError::Magic));
    let mut version = good.clone();
    version[4] = 2;
    assert_eq!(decode(&version), Err(DecodeError::Version(2)));
    // Inconsistent but well framed: a reservation without a holder.
    let holderless = PrState {
        registrations: vec![Registration {
            key: 5,
            initiator: InitiatorPort::of(&nexus(1)),
            tpgt: 1,
            all_tg_pt: false,
            holder: false,
        }],
        reservation: Some(PrType::WriteExclusive),
        ..PrState::default()
    };
    assert!(matches!(
        decode(&encode(&holderless)),
        Err(DecodeError::Inconsistent(_))
    ));
    let mut twice = holderless.clone();
    twice.reservation = None;
    twice.registrations.push(twice.registrations[0].clone());
    assert!(matches!(
        decode(&encode(&twice)),
        Err(DecodeError::Inconsistent(_))
    ));
}

#[test]
fn class_of_short_cdbs() {
    assert_eq!(
        classify(&[0x1B]),
        Class::Write,
        "START STOP UNIT without byte 4 stops"
    );
    assert_eq!(classify(&[0x1E]), Class::Always);
    assert_eq!(classify(&[0x9E]), Class::Write);
}

#[test]
fn crc32c_check_value() {
    // The CRC-32C check value (RFC 3720 appendix B.4 uses the same polynomial).
    assert_eq!(super::codec::crc32c(b"123456789"), 0xE306_9283);
}
