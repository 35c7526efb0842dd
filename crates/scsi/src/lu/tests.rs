//! Unit tests of the logical unit, one section per command, against a [`MemoryDevice`].

use super::*;
use crate::cdb::opcode::*;
use crate::sense::SenseKey;
use crate::MemoryDevice;
use proptest::prelude::*;
use std::io;

/// 1 MiB: 2048 blocks.
const DEV_BYTES: usize = 1 << 20;
const DEV_BLOCKS: u64 = (DEV_BYTES / 512) as u64;

fn identity() -> LunIdentity {
    LunIdentity {
        vendor: "TWINSAN".into(),
        product: "twinsan volume".into(),
        revision: "0.1".into(),
        serial: "5f0c2a77e0b94c1e".into(),
        naa: [
            0x6A, 0xBC, 0xDE, 0xF0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ],
        target_name: "iqn.2024-01.org.twinsan:vol0".into(),
        relative_port: 1,
        target_portal_group: 1,
    }
}

fn nexus(id: u64) -> Nexus {
    Nexus {
        id,
        initiator_name: format!("iqn.2024-01.org.test:init{id}"),
        isid: [0x40, 0, 0, 0, 0, id as u8],
        target_portal_group: 1,
    }
}

struct Fixture {
    dev: Arc<MemoryDevice>,
    lu: LogicalUnit,
    a: Nexus,
}

impl Fixture {
    fn new() -> Self {
        Self::with(false)
    }

    fn read_only() -> Self {
        Self::with(true)
    }

    fn with(read_only: bool) -> Self {
        let dev = Arc::new(MemoryDevice::new(DEV_BYTES));
        let lu = LogicalUnit::new(dev.clone(), identity(), read_only);
        Self {
            dev,
            lu,
            a: nexus(1),
        }
    }

    fn run(&self, cdb: &[u8]) -> Outcome {
        self.run_on(&self.a, cdb, &[])
    }

    fn run_with(&self, cdb: &[u8], data_out: &[u8]) -> Outcome {
        self.run_on(&self.a, cdb, data_out)
    }

    fn run_on(&self, nexus: &Nexus, cdb: &[u8], data_out: &[u8]) -> Outcome {
        let luns = [0u64, 1, 300];
        self.lu.execute(&Request {
            nexus,
            cdb,
            data_out,
            luns: &luns,
        })
    }

    fn good(&self, cdb: &[u8]) -> Vec<u8> {
        let o = self.run(cdb);
        assert_eq!(o.status, TaskStatus::Good, "{cdb:02x?}: {:?}", o.sense);
        assert_eq!(o.sense, None);
        o.data_in
    }
}

#[track_caller]
fn assert_sense(o: &Outcome, key: SenseKey, asc: u8, ascq: u8) {
    assert_eq!(o.status, TaskStatus::CheckCondition, "{o:?}");
    let s = o.sense.expect("sense");
    assert_eq!((s.key, s.asc, s.ascq), (key, asc, ascq), "{s:?}");
    assert!(o.data_in.is_empty());
}

#[track_caller]
fn assert_invalid_field(o: &Outcome, byte: u16, bit: u8) {
    assert_sense(o, SenseKey::IllegalRequest, 0x24, 0x00);
    let fp = o
        .sense
        .and_then(|s| s.field_pointer)
        .expect("field pointer");
    assert_eq!((fp.in_cdb, fp.byte, fp.bit), (true, byte, bit));
}

#[track_caller]
fn assert_lba_oob(o: &Outcome) {
    assert_sense(o, SenseKey::IllegalRequest, 0x21, 0x00);
}

fn rw6(op: u8, lba: u32, blocks: u8) -> Vec<u8> {
    vec![
        op,
        (lba >> 16) as u8 & 0x1F,
        (lba >> 8) as u8,
        lba as u8,
        blocks,
        0,
    ]
}

fn rw10(op: u8, flags: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![op, flags];
    c.extend_from_slice(&lba.to_be_bytes());
    c.push(0);
    c.extend_from_slice(&blocks.to_be_bytes());
    c.push(0);
    c
}

fn rw12(op: u8, flags: u8, lba: u32, blocks: u32) -> Vec<u8> {
    let mut c = vec![op, flags];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&blocks.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

fn rw16(op: u8, flags: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![op, flags];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&blocks.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

/// The same transfer in every CDB size of a command family (10, 12, 16 bytes).
fn all_sizes(ops: [u8; 3], flags: u8, lba: u32, blocks: u16) -> [Vec<u8>; 3] {
    [
        rw10(ops[0], flags, lba, blocks),
        rw12(ops[1], flags, lba, blocks.into()),
        rw16(ops[2], flags, lba.into(), blocks.into()),
    ]
}

const READS: [u8; 3] = [READ_10, READ_12, READ_16];
const WRITES: [u8; 3] = [WRITE_10, WRITE_12, WRITE_16];
const VERIFIES: [u8; 3] = [VERIFY_10, VERIFY_12, VERIFY_16];
const WRITE_VERIFIES: [u8; 3] = [
    WRITE_AND_VERIFY_10,
    WRITE_AND_VERIFY_12,
    WRITE_AND_VERIFY_16,
];

fn inquiry(evpd: bool, page: u8, alloc: u16) -> Vec<u8> {
    let [hi, lo] = alloc.to_be_bytes();
    vec![INQUIRY, u8::from(evpd), page, hi, lo, 0]
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A device that claims a large capacity without memory behind it (reads return zeros).
struct HugeDevice(u64);

impl BlockDevice for HugeDevice {
    fn size_bytes(&self) -> u64 {
        self.0
    }
    fn read_at(&self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64, _fua: bool) -> io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

fn huge_lu(blocks: u64) -> LogicalUnit {
    LogicalUnit::new(Arc::new(HugeDevice(blocks * 512)), identity(), false)
}

// ---- generic ----------------------------------------------------------------------------------------------------

#[test]
fn test_unit_ready_is_good() {
    let f = Fixture::new();
    assert!(f.good(&[TEST_UNIT_READY, 0, 0, 0, 0, 0]).is_empty());
}

#[test]
fn unknown_opcodes_and_service_actions_are_invalid_opcode() {
    let f = Fixture::new();
    assert_sense(&f.run(&[]), SenseKey::IllegalRequest, 0x20, 0x00);
    // PRE-FETCH, START STOP UNIT, WRITE SAME, UNMAP, COMPARE AND WRITE: not yet.
    for op in [0x34u8, 0x1B, 0x41, 0x42, 0x89, 0x93, 0x1E] {
        let mut cdb = [0u8; 16];
        cdb[0] = op;
        assert_sense(&f.run(&cdb), SenseKey::IllegalRequest, 0x20, 0x00);
    }
    let mut get_lba_status = [0u8; 16];
    get_lba_status[0] = SERVICE_ACTION_IN_16;
    get_lba_status[1] = 0x12;
    assert_sense(
        &f.run(&get_lba_status),
        SenseKey::IllegalRequest,
        0x20,
        0x00,
    );
}

#[test]
fn naca_in_control_byte_is_invalid_field() {
    let f = Fixture::new();
    assert_invalid_field(&f.run(&[TEST_UNIT_READY, 0, 0, 0, 0, 0x04]), 5, 2);
    let mut r = rw10(READ_10, 0, 0, 1);
    r[9] = 0x04;
    assert_invalid_field(&f.run(&r), 9, 2);
}

// ---- INQUIRY ----------------------------------------------------------------------------------------------------

#[test]
fn standard_inquiry() {
    let f = Fixture::new();
    let d = f.good(&inquiry(false, 0, 260));
    assert_eq!(d.len(), 96);
    assert_eq!(d[0], 0x00, "qualifier 0, direct access");
    assert_eq!(d[1] & 0x80, 0, "not removable");
    assert_eq!(d[2], 0x06, "SPC-4");
    assert_eq!(d[3], 0x12, "HiSup, response data format 2");
    assert_eq!(d[4] as usize, d.len() - 5, "additional length");
    assert_eq!(d[5], 0x00, "no TPGS, no PROTECT");
    assert_eq!(d[7], 0x02, "CmdQue");
    assert_eq!(&d[8..16], b"TWINSAN ");
    assert_eq!(&d[16..32], b"twinsan volume  ");
    assert_eq!(&d[32..36], b"0.1 ");
    let descriptors: Vec<u16> = (0..8)
        .map(|i| u16::from_be_bytes([d[58 + 2 * i], d[59 + 2 * i]]))
        .collect();
    assert_eq!(&descriptors[..4], &[0x00A0, 0x0960, 0x0460, 0x04C0]);
    assert!(d[8..36].iter().all(|c| (0x20..=0x7E).contains(c)));
}

#[test]
fn standard_inquiry_sanitizes_and_truncates_strings() {
    let mut id = identity();
    id.vendor = "VENDOR-NAME-TOO-LONG".into();
    id.product = "pr\u{e9}d\n".into();
    let lu = LogicalUnit::new(Arc::new(MemoryDevice::new(4096)), id, false);
    let n = nexus(1);
    let o = lu.execute(&Request {
        nexus: &n,
        cdb: &inquiry(false, 0, 96),
        data_out: &[],
        luns: &[],
    });
    assert_eq!(&o.data_in[8..16], b"VENDOR-N");
    assert!(o.data_in[16..32].iter().all(|c| (0x20..=0x7E).contains(c)));
}

#[test]
fn inquiry_allocation_length_truncates() {
    let f = Fixture::new();
    let full = f.good(&inquiry(false, 0, 255));
    for alloc in 0..=255u16 {
        let d = f.good(&inquiry(false, 0, alloc));
        assert_eq!(d.len(), usize::from(alloc).min(full.len()));
        assert_eq!(&d[..], &full[..d.len()]);
    }
    assert_eq!(
        f.good(&inquiry(false, 0, 256)),
        full,
        "16-bit allocation length"
    );
}

#[test]
fn inquiry_page_code_without_evpd_is_invalid() {
    let f = Fixture::new();
    assert_invalid_field(&f.run(&inquiry(false, 1, 256)), 2, 7);
    assert_invalid_field(&f.run(&inquiry(false, 0x83, 256)), 2, 7);
}

#[test]
fn inquiry_cmddt_is_invalid() {
    let f = Fixture::new();
    assert_invalid_field(&f.run(&[INQUIRY, 0x02, 0, 0, 255, 0]), 1, 1);
}

#[test]
fn supported_vpd_pages_are_all_readable() {
    let f = Fixture::new();
    let d = f.good(&inquiry(true, 0x00, 255));
    assert_eq!(&d[..4], &[0x00, 0x00, 0x00, 5]);
    assert_eq!(&d[4..], &[0x00, 0x80, 0x83, 0xB0, 0xB1]);
    for &page in &d[4..] {
        let p = f.good(&inquiry(true, page, 255));
        assert_eq!(p[1], page);
        assert_eq!(
            usize::from(u16::from_be_bytes([p[2], p[3]])) + 4,
            p.len(),
            "page {page:#x} length"
        );
    }
}

#[test]
fn unknown_vpd_pages_are_invalid() {
    let f = Fixture::new();
    for page in [0x01u8, 0x86, 0xB2, 0xB3, 0xFF] {
        assert_invalid_field(&f.run(&inquiry(true, page, 255)), 2, 7);
    }
}

#[test]
fn vpd_unit_serial_number() {
    let f = Fixture::new();
    let d = f.good(&inquiry(true, 0x80, 255));
    assert_eq!(&d[..4], &[0, 0x80, 0, 16]);
    assert_eq!(&d[4..], b"5f0c2a77e0b94c1e");
}

/// (code set, PIV|association|type, designator) of every designator in a VPD 83h page.
fn designators(page: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = &page[4..];
    while !rest.is_empty() {
        let len = usize::from(rest[3]);
        out.push((rest[0], rest[1], rest[4..4 + len].to_vec()));
        rest = &rest[4 + len..];
    }
    out
}

#[test]
fn vpd_device_identification() {
    let f = Fixture::new();
    let d = f.good(&inquiry(true, 0x83, 512));
    let ds = designators(&d);
    assert_eq!(ds.len(), 5);

    let (code_set, flags, naa) = &ds[0];
    assert_eq!(
        (*code_set, *flags),
        (0x01, 0x03),
        "binary, LU association, NAA"
    );
    assert_eq!(naa.len(), 16);
    assert_eq!(naa[0], 0x6A, "NAA type 6 kept");
    assert_eq!(&naa[1..], &identity().naa[1..]);

    let (code_set, flags, port) = &ds[1];
    assert_eq!(
        (*code_set, *flags),
        (0x53, 0x98),
        "iSCSI UTF-8, PIV, target port, SCSI name string"
    );
    assert_eq!(port.len() % 4, 0);
    assert!(port.starts_with(b"iqn.2024-01.org.twinsan:vol0,t,0x0001\0"));

    let (code_set, flags, device) = &ds[2];
    assert_eq!(
        (*code_set, *flags),
        (0x53, 0xA8),
        "target device association"
    );
    assert_eq!(device.len() % 4, 0);
    assert!(device.starts_with(b"iqn.2024-01.org.twinsan:vol0\0"));

    assert_eq!(
        ds[3],
        (0x51, 0x94, vec![0, 0, 0, 1]),
        "relative target port"
    );
    assert_eq!(ds[4], (0x51, 0x95, vec![0, 0, 0, 1]), "target port group");
}

#[test]
fn vpd_device_identification_forces_naa_type_6_and_skips_empty_name() {
    let mut id = identity();
    id.naa[0] = 0x3F;
    id.target_name.clear();
    let lu = LogicalUnit::new(Arc::new(MemoryDevice::new(4096)), id, false);
    let n = nexus(1);
    let o = lu.execute(&Request {
        nexus: &n,
        cdb: &inquiry(true, 0x83, 512),
        data_out: &[],
        luns: &[],
    });
    let ds = designators(&o.data_in);
    assert_eq!(ds.len(), 3);
    assert_eq!(ds[0].2[0], 0x6F);
}

#[test]
fn scsi_name_string_is_bounded() {
    let mut id = identity();
    id.target_name = "iqn.2024-01.org.example:".to_string() + &"\u{e9}".repeat(200);
    let lu = LogicalUnit::new(Arc::new(MemoryDevice::new(4096)), id, false);
    let n = nexus(1);
    let o = lu.execute(&Request {
        nexus: &n,
        cdb: &inquiry(true, 0x83, 1024),
        data_out: &[],
        luns: &[],
    });
    for (_, flags, value) in designators(&o.data_in) {
        if flags & 0x0F == 8 {
            assert!(value.len() <= 252 && value.len() % 4 == 0);
            let nul = value.iter().position(|&c| c == 0).expect("NUL terminated");
            assert!(std::str::from_utf8(&value[..nul]).is_ok());
        }
    }
}

#[test]
fn vpd_block_limits() {
    let f = Fixture::new();
    let d = f.good(&inquiry(true, 0xB0, 64));
    assert_eq!(d.len(), 64);
    assert_eq!(u16::from_be_bytes([d[2], d[3]]), 0x3C, "SBC-3 page length");
    let gran = u16::from_be_bytes([d[6], d[7]]);
    let max = u32::from_be_bytes(d[8..12].try_into().unwrap());
    let opt = u32::from_be_bytes(d[12..16].try_into().unwrap());
    assert_eq!(gran, 8);
    assert_eq!(max, 16384, "8 MiB of 512-byte blocks");
    assert!(opt <= max && opt % u32::from(gran) == 0);
    // No UNMAP / WRITE SAME / atomic writes: all zero.
    assert!(d[16..64].iter().all(|&b| b == 0));
}

#[test]
fn vpd_block_device_characteristics() {
    let f = Fixture::new();
    let d = f.good(&inquiry(true, 0xB1, 255));
    assert_eq!(d.len(), 64);
    assert_eq!(u16::from_be_bytes([d[4], d[5]]), 1, "non-rotating");
}

// ---- REPORT LUNS ------------------------------------------------------------------------------------------------

fn report_luns(select: u8, alloc: u32) -> Vec<u8> {
    let mut c = vec![REPORT_LUNS, 0, select, 0, 0, 0];
    c.extend_from_slice(&alloc.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

#[test]
fn report_luns_lists_every_lun() {
    let f = Fixture::new();
    for select in [0u8, 2] {
        let d = f.good(&report_luns(select, 4096));
        assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 24);
        assert_eq!(d.len(), 8 + 24);
        assert_eq!(&d[8..16], &[0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&d[16..24], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            &d[24..32],
            &[0x41, 0x2C, 0, 0, 0, 0, 0, 0],
            "flat space addressing for 300"
        );
    }
    let wk = f.good(&report_luns(1, 4096));
    assert_eq!(wk, vec![0; 8], "no well-known logical units");
}

#[test]
fn report_luns_truncates_but_reports_full_length() {
    let f = Fixture::new();
    let d = f.good(&report_luns(0, 16));
    assert_eq!(d.len(), 16);
    assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 24);
}

#[test]
fn report_luns_rejects_small_allocation_and_bad_select() {
    let f = Fixture::new();
    for alloc in [0u32, 1, 8, 15] {
        assert_invalid_field(&f.run(&report_luns(0, alloc)), 6, 7);
    }
    assert_invalid_field(&f.run(&report_luns(0x10, 4096)), 2, 7);
}

#[test]
fn lun_encoding_roundtrips() {
    assert_eq!(encode_lun(5), [0, 5, 0, 0, 0, 0, 0, 0]);
    assert_eq!(encode_lun(0x3FFF), [0x7F, 0xFF, 0, 0, 0, 0, 0, 0]);
    for lun in [0u64, 1, 255, 256, 1000, 0x3FFF] {
        assert_eq!(decode_lun(encode_lun(lun)), lun);
    }
    let raw = 0xC101_0000_0000_0000u64;
    assert_eq!(decode_lun(encode_lun(raw)), raw);
}

// ---- REQUEST SENSE ----------------------------------------------------------------------------------------------

#[test]
fn request_sense_without_anything_pending_is_no_sense() {
    let f = Fixture::new();
    let d = f.good(&[REQUEST_SENSE, 0, 0, 0, 252, 0]);
    assert_eq!(d.len(), 18);
    assert_eq!((d[0], d[2], d[12], d[13]), (0x70, 0x00, 0x00, 0x00));
    let d = f.good(&[REQUEST_SENSE, 0x01, 0, 0, 252, 0]);
    assert_eq!(d, vec![0x72, 0, 0, 0, 0, 0, 0, 0]);
    assert!(f.good(&[REQUEST_SENSE, 0, 0, 0, 0, 0]).is_empty());
    assert_eq!(f.good(&[REQUEST_SENSE, 0, 0, 0, 8, 0]).len(), 8);
}

#[test]
fn request_sense_reports_and_clears_unit_attention() {
    let f = Fixture::new();
    let b = nexus(2);
    f.lu.nexus_joined(&b);
    f.lu.reset(&f.a);
    let o = f.run_on(&b, &[REQUEST_SENSE, 0, 0, 0, 252, 0], &[]);
    assert_eq!(o.status, TaskStatus::Good);
    assert_eq!(
        (o.data_in[2], o.data_in[12], o.data_in[13]),
        (0x06, 0x29, 0x03)
    );
    let o = f.run_on(&b, &[REQUEST_SENSE, 0x01, 0, 0, 252, 0], &[]);
    assert_eq!(
        &o.data_in[..4],
        &[0x72, 0, 0, 0],
        "cleared, descriptor format"
    );
    assert_eq!(
        f.run_on(&b, &[TEST_UNIT_READY, 0, 0, 0, 0, 0], &[]).status,
        TaskStatus::Good
    );
}

// ---- unit attentions --------------------------------------------------------------------------------------------

#[test]
fn reset_gives_other_nexuses_a_unit_attention_once() {
    let f = Fixture::new();
    let b = nexus(2);
    let tur = [TEST_UNIT_READY, 0, 0, 0, 0, 0];
    assert_eq!(
        f.run_on(&b, &tur, &[]).status,
        TaskStatus::Good,
        "no power-on UA for a new nexus"
    );
    f.lu.reset(&f.a);
    assert_sense(
        &f.run_on(&b, &tur, &[]),
        SenseKey::UnitAttention,
        0x29,
        0x03,
    );
    assert_eq!(
        f.run_on(&b, &tur, &[]).status,
        TaskStatus::Good,
        "cleared by being reported"
    );
    assert_eq!(
        f.run(&tur).status,
        TaskStatus::Good,
        "the resetting nexus gets none"
    );
}

#[test]
fn unit_attention_wins_over_command_errors_but_not_inquiry_or_report_luns() {
    let f = Fixture::new();
    let b = nexus(2);
    f.lu.nexus_joined(&b);
    f.lu.reset(&f.a);
    assert_eq!(
        f.run_on(&b, &inquiry(false, 0, 96), &[]).status,
        TaskStatus::Good
    );
    assert_eq!(
        f.run_on(&b, &report_luns(0, 64), &[]).status,
        TaskStatus::Good
    );
    // Still pending: an unknown opcode reports the UA first.
    assert_sense(
        &f.run_on(&b, &[0xC0; 16], &[]),
        SenseKey::UnitAttention,
        0x29,
        0x03,
    );
    assert_sense(
        &f.run_on(&b, &[0xC0; 16], &[]),
        SenseKey::IllegalRequest,
        0x20,
        0x00,
    );
}

#[test]
fn nexus_gone_forgets_unit_attentions() {
    let f = Fixture::new();
    let b = nexus(2);
    f.lu.nexus_joined(&b);
    f.lu.reset(&f.a);
    f.lu.nexus_gone(&b);
    assert_eq!(
        f.run_on(&b, &[TEST_UNIT_READY, 0, 0, 0, 0, 0], &[]).status,
        TaskStatus::Good
    );
}

#[test]
fn unknown_nexus_at_reset_time_gets_no_unit_attention() {
    let f = Fixture::new();
    f.lu.reset(&f.a);
    let late = nexus(3);
    assert_eq!(
        f.run_on(&late, &[TEST_UNIT_READY, 0, 0, 0, 0, 0], &[])
            .status,
        TaskStatus::Good
    );
}

#[test]
fn unit_attention_queue_is_bounded_and_deduplicated() {
    let f = Fixture::new();
    let b = nexus(2);
    f.lu.nexus_joined(&b);
    f.lu.reset(&f.a);
    f.lu.reset(&f.a);
    for asc in 0..20u8 {
        f.lu.queue_unit_attention(Sense::new(SenseKey::UnitAttention, 0x2A, asc), Some(&f.a));
    }
    let mut reported = Vec::new();
    loop {
        let o = f.run_on(&b, &[TEST_UNIT_READY, 0, 0, 0, 0, 0], &[]);
        match o.sense {
            Some(s) => reported.push(s),
            None => break,
        }
    }
    assert_eq!(reported.len(), MAX_PENDING_UNIT_ATTENTIONS);
    assert_eq!(
        reported.last().map(|s| s.ascq),
        Some(19),
        "the newest survive"
    );
}

// ---- READ CAPACITY ----------------------------------------------------------------------------------------------

#[test]
fn read_capacity_10_fields_and_pmi() {
    let f = Fixture::new();
    let d = f.good(&[READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        u32::from_be_bytes(d[0..4].try_into().unwrap()),
        DEV_BLOCKS as u32 - 1
    );
    assert_eq!(u32::from_be_bytes(d[4..8].try_into().unwrap()), 512);
    assert_invalid_field(&f.run(&[READ_CAPACITY_10, 0, 0, 0, 0, 1, 0, 0, 0, 0]), 2, 7);
    assert_eq!(
        f.good(&[READ_CAPACITY_10, 0, 0, 0, 0, 1, 0, 0, 1, 0]),
        d,
        "PMI=1"
    );
}

#[test]
fn read_capacity_10_saturates_for_large_devices() {
    let n = nexus(1);
    let cdb = [READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for (blocks, want) in [
        (1u64 << 32, 0xFFFF_FFFFu32),
        (0xFFFF_FFFF, 0xFFFF_FFFE),
        (1 << 40, 0xFFFF_FFFF),
    ] {
        let o = huge_lu(blocks).execute(&Request {
            nexus: &n,
            cdb: &cdb,
            data_out: &[],
            luns: &[],
        });
        assert_eq!(
            u32::from_be_bytes(o.data_in[0..4].try_into().unwrap()),
            want
        );
    }
}

fn read_capacity_16(alloc: u32) -> Vec<u8> {
    let mut c = vec![SERVICE_ACTION_IN_16, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];
    c.extend_from_slice(&alloc.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

#[test]
fn read_capacity_16_fields_and_truncation() {
    let f = Fixture::new();
    let d = f.good(&read_capacity_16(32));
    assert_eq!(d.len(), 32);
    assert_eq!(
        u64::from_be_bytes(d[0..8].try_into().unwrap()),
        DEV_BLOCKS - 1
    );
    assert_eq!(u32::from_be_bytes(d[8..12].try_into().unwrap()), 512);
    assert_eq!(d[12], 0, "no protection");
    assert_eq!(d[13], 3, "4 KiB physical blocks");
    assert_eq!(d[14] & 0xC0, 0, "LBPME=0, LBPRZ=0");
    assert!(d[14..].iter().all(|&b| b == 0));
    for alloc in 0..=16u32 {
        assert_eq!(
            f.good(&read_capacity_16(alloc)),
            d[..alloc as usize].to_vec()
        );
    }
    assert_eq!(f.good(&read_capacity_16(96)).len(), 32);

    let n = nexus(1);
    let o = huge_lu(1 << 40).execute(&Request {
        nexus: &n,
        cdb: &read_capacity_16(32),
        data_out: &[],
        luns: &[],
    });
    assert_eq!(
        u64::from_be_bytes(o.data_in[0..8].try_into().unwrap()),
        (1 << 40) - 1
    );
}

// ---- READ / WRITE -----------------------------------------------------------------------------------------------

#[test]
fn write_then_read_in_every_size() {
    let f = Fixture::new();
    let data = pattern(4 * 512, 7);
    for (i, (w, r)) in all_sizes(WRITES, 0, 10, 4)
        .iter()
        .zip(all_sizes(READS, 0, 10, 4))
        .enumerate()
    {
        let data = pattern(4 * 512, i as u8);
        assert_eq!(f.run_with(w, &data).status, TaskStatus::Good);
        assert_eq!(f.good(&r), data);
    }
    assert_eq!(
        f.run_with(&rw6(WRITE_6, 100, 4), &data).status,
        TaskStatus::Good
    );
    assert_eq!(f.good(&rw6(READ_6, 100, 4)), data);
    assert_eq!(f.dev.snapshot(100 * 512, 4 * 512), data);
}

#[test]
fn read6_write6_zero_length_means_256_blocks() {
    let f = Fixture::new();
    let data = pattern(256 * 512, 3);
    assert_eq!(
        f.run_with(&rw6(WRITE_6, 0, 0), &data).status,
        TaskStatus::Good
    );
    let d = f.good(&rw6(READ_6, 0, 0));
    assert_eq!(d.len(), 256 * 512);
    assert_eq!(d, data);
    assert_eq!(f.lu.data_in_len(&rw6(READ_6, 0, 0)), Ok(256 * 512));
    assert_eq!(f.lu.data_out_len(&rw6(WRITE_6, 0, 0)), Ok(256 * 512));
}

#[test]
fn zero_block_transfers_are_good_and_move_nothing() {
    let f = Fixture::new();
    for cdb in all_sizes(READS, 0, 0, 0)
        .into_iter()
        .chain(all_sizes(WRITES, 0, 0, 0))
    {
        assert!(f.good(&cdb).is_empty());
    }
    // A zero-length transfer may start at the end of the medium, not after it.
    assert!(f.good(&rw16(READ_16, 0, DEV_BLOCKS, 0)).is_empty());
    for cdb in all_sizes(READS, 0, DEV_BLOCKS as u32 + 1, 0)
        .into_iter()
        .chain(all_sizes(WRITES, 0, DEV_BLOCKS as u32 + 1, 0))
        .chain(all_sizes(READS, 0, 0x8000_0000, 0))
        .chain(all_sizes(WRITES, 0, u32::MAX, 0))
    {
        assert_lba_oob(&f.run(&cdb));
    }
    assert_lba_oob(&f.run(&rw16(READ_16, 0, u64::MAX, 0)));
    assert_lba_oob(&f.run(&rw16(WRITE_16, 0, 1 << 63, 0)));
}

#[test]
fn transfers_at_the_end_of_the_medium() {
    let f = Fixture::new();
    let end = DEV_BLOCKS as u32;
    for blocks in [1u16, 2, 255, 256] {
        for cdb in all_sizes(READS, 0, end - u32::from(blocks), blocks) {
            assert_eq!(f.good(&cdb).len(), usize::from(blocks) * 512);
        }
        // One block beyond, and all but one block beyond.
        for lba in [end + 1 - u32::from(blocks), end - 1 + u32::from(blocks > 1)] {
            if lba + u32::from(blocks) <= end {
                continue;
            }
            for cdb in all_sizes(READS, 0, lba, blocks)
                .into_iter()
                .chain(all_sizes(WRITES, 0, lba, blocks))
            {
                let data = vec![0u8; usize::from(blocks) * 512];
                assert_lba_oob(&f.run_with(&cdb, &data));
            }
        }
    }
    assert_lba_oob(&f.run(&rw6(READ_6, 0x1F_FFFF, 1)));
    assert_lba_oob(&f.run(&rw6(READ_6, DEV_BLOCKS as u32 - 1, 2)));
    // LBA + length overflows 64 bits.
    assert_lba_oob(&f.run(&rw16(READ_16, 0, u64::MAX, 1)));
    assert_lba_oob(&f.run(&rw16(READ_16, 0, u64::MAX - 1, 256)));
    assert_lba_oob(&f.run(&rw16(READ_16, 0, 1 << 55, 256)));
}

#[test]
fn transfer_length_above_block_limits_is_invalid_field() {
    let lu = huge_lu(1 << 30);
    let n = nexus(1);
    let run = |cdb: &[u8]| {
        lu.execute(&Request {
            nexus: &n,
            cdb,
            data_out: &[],
            luns: &[],
        })
    };
    let max = MAX_TRANSFER_BLOCKS;
    let o = run(&rw12(READ_12, 0, 0, max));
    assert_eq!(o.status, TaskStatus::Good);
    assert_eq!(o.data_in.len(), max as usize * 512);
    assert_invalid_field(&run(&rw12(READ_12, 0, 0, max + 1)), 6, 7);
    assert_invalid_field(&run(&rw16(READ_16, 0, 0, u32::MAX)), 10, 7);
    assert_invalid_field(&run(&rw10(READ_10, 0, 0, u16::MAX)), 7, 7);
    assert_invalid_field(&run(&rw16(WRITE_16, 0, 0, max + 1)), 10, 7);
    assert_invalid_field(&run(&rw16(VERIFY_16, 0, 0, max + 1)), 10, 7);
    assert_invalid_field(&run(&rw12(WRITE_AND_VERIFY_12, 0, 0, max + 1)), 6, 7);
    // The limit wins over the LBA range check.
    assert_invalid_field(&run(&rw16(READ_16, 0, u64::MAX, max + 1)), 10, 7);
    assert_eq!(
        lu.data_in_len(&rw16(READ_16, 0, 0, max + 1)),
        Err(Sense::invalid_field_in_cdb(10, 7))
    );
    assert_eq!(
        lu.data_out_len(&rw16(WRITE_16, 0, 0, max + 1)),
        Err(Sense::invalid_field_in_cdb(10, 7))
    );
}

#[test]
fn protect_fields_are_invalid_field() {
    let f = Fixture::new();
    let block = vec![0u8; 512];
    for protect in 1u8..8 {
        for cdb in all_sizes(READS, protect << 5, 0, 1)
            .into_iter()
            .chain(all_sizes(WRITES, protect << 5, 0, 1))
            .chain(all_sizes(VERIFIES, (protect << 5) | 0x02, 0, 1))
            .chain(all_sizes(WRITE_VERIFIES, protect << 5, 0, 1))
        {
            assert_invalid_field(&f.run_with(&cdb, &block), 1, 7);
        }
    }
}

#[test]
fn dpo_fua_and_group_are_accepted() {
    let f = Fixture::new();
    let block = pattern(512, 1);
    for flags in [0x10u8, 0x08, 0x18, 0x02] {
        for cdb in all_sizes(WRITES, flags, 0, 1) {
            let mut cdb = cdb;
            let group_byte = match cdb.len() {
                10 => 6,
                12 => 10,
                _ => 14,
            };
            cdb[group_byte] = 0x1F;
            assert_eq!(
                f.run_with(&cdb, &block).status,
                TaskStatus::Good,
                "{cdb:02x?}"
            );
        }
        for cdb in all_sizes(READS, flags, 0, 1) {
            assert_eq!(f.good(&cdb), block);
        }
    }
}

#[test]
fn fua_reaches_the_device() {
    let f = Fixture::new();
    let block = vec![1u8; 512];
    f.good_write(&rw10(WRITE_10, 0, 0, 1), &block);
    assert_eq!(f.dev.fua_writes(), 0);
    for cdb in all_sizes(WRITES, 0x08, 0, 1) {
        f.good_write(&cdb, &block);
    }
    assert_eq!(f.dev.fua_writes(), 3);
    f.good_write(&rw6(WRITE_6, 0, 1), &block);
    assert_eq!(f.dev.fua_writes(), 3);
}

impl Fixture {
    fn good_write(&self, cdb: &[u8], data: &[u8]) {
        let o = self.run_with(cdb, data);
        assert_eq!(o.status, TaskStatus::Good, "{cdb:02x?}: {:?}", o.sense);
    }
}

#[test]
fn short_data_out_writes_only_the_whole_blocks_that_arrived() {
    let f = Fixture::new();
    for cdb in all_sizes(WRITES, 0, 0, 2)
        .into_iter()
        .chain(all_sizes(WRITE_VERIFIES, 0, 0, 2))
    {
        f.dev.write_at(&[0x11; 1024], 0, false).unwrap();
        // Less than one block: nothing is written, the command succeeds (the engine reports the residual).
        for data in [&[][..], &[0xAB; 200][..]] {
            let o = f.run_with(&cdb, data);
            assert_eq!(o.status, TaskStatus::Good, "{cdb:02x?}: {:?}", o.sense);
            assert_eq!(f.dev.snapshot(0, 1024), vec![0x11; 1024]);
        }
        // One of two blocks: block 0 is written, block 1 keeps its old contents.
        let o = f.run_with(&cdb, &[0xAB; 700]);
        assert_eq!(o.status, TaskStatus::Good, "{cdb:02x?}: {:?}", o.sense);
        let after = f.dev.snapshot(0, 1024);
        assert_eq!(&after[..512], &[0xAB; 512][..]);
        assert_eq!(&after[512..], &[0x11; 512][..]);
    }
    // VERIFY with BYTCHK compares what the CDB names and needs all of it.
    for data in [&[][..], &[0xAB; 200][..], &[0xAB; 512][..]] {
        assert_sense(
            &f.run_with(&rw10(VERIFY_10, 0x02, 0, 2), data),
            SenseKey::IllegalRequest,
            0x0E,
            0x03,
        );
    }
}

#[test]
fn long_data_out_writes_only_the_transfer_length() {
    let f = Fixture::new();
    let data = pattern(3 * 512, 9);
    f.good_write(&rw10(WRITE_10, 0, 0, 1), &data);
    assert_eq!(f.dev.snapshot(0, 512), data[..512].to_vec());
    assert_eq!(f.dev.snapshot(512, 1024), vec![0; 1024]);
}

#[test]
fn read_only_refuses_writes_but_reads() {
    let f = Fixture::read_only();
    let block = vec![0xEE; 512];
    for cdb in all_sizes(WRITES, 0, 0, 1)
        .into_iter()
        .chain(all_sizes(WRITE_VERIFIES, 0, 0, 1))
        .chain([rw6(WRITE_6, 0, 1)])
    {
        assert_sense(&f.run_with(&cdb, &block), SenseKey::DataProtect, 0x27, 0x00);
    }
    assert_eq!(f.dev.snapshot(0, 512), vec![0; 512]);
    for cdb in all_sizes(READS, 0, 0, 1) {
        assert_eq!(f.good(&cdb).len(), 512);
    }
    assert_eq!(
        f.run(&rw10(SYNCHRONIZE_CACHE_10, 0, 0, 0)).status,
        TaskStatus::Good
    );
    assert!(f.lu.is_read_only());
}

#[test]
fn device_errors_become_medium_errors() {
    let f = Fixture::new();
    f.dev.set_fail_reads(true);
    assert_sense(
        &f.run(&rw10(READ_10, 0, 0, 1)),
        SenseKey::MediumError,
        0x11,
        0x00,
    );
    assert_sense(
        &f.run(&rw10(VERIFY_10, 0, 0, 1)),
        SenseKey::MediumError,
        0x11,
        0x00,
    );
    // Zero-length reads touch nothing.
    assert_eq!(f.run(&rw10(READ_10, 0, 0, 0)).status, TaskStatus::Good);
    f.dev.set_fail_reads(false);
    f.dev.set_fail_writes(true);
    let block = vec![0u8; 512];
    assert_sense(
        &f.run_with(&rw10(WRITE_10, 0, 0, 1), &block),
        SenseKey::MediumError,
        0x0C,
        0x00,
    );
    assert_sense(
        &f.run_with(&rw10(WRITE_AND_VERIFY_10, 0, 0, 1), &block),
        SenseKey::MediumError,
        0x0C,
        0x00,
    );
    f.dev.set_fail_writes(false);
    f.dev.set_fail_flush(true);
    assert_sense(
        &f.run(&rw10(SYNCHRONIZE_CACHE_10, 0, 0, 0)),
        SenseKey::MediumError,
        0x0C,
        0x00,
    );
}

// ---- VERIFY / WRITE AND VERIFY ----------------------------------------------------------------------------------

#[test]
fn verify_without_bytchk_checks_readability_only() {
    let f = Fixture::new();
    let junk = pattern(8 * 512, 5);
    for cdb in all_sizes(VERIFIES, 0, 0, 8)
        .into_iter()
        .chain(all_sizes(VERIFIES, 0x10, 100, 8))
    {
        // libiscsi sends Data-Out even with BYTCHK=0; it is ignored.
        assert_eq!(f.run_with(&cdb, &junk).status, TaskStatus::Good);
        assert_eq!(f.lu.data_out_len(&cdb), Ok(0));
    }
}

#[test]
fn verify_bytchk_compares() {
    let f = Fixture::new();
    let data = pattern(4 * 512, 11);
    f.good_write(&rw10(WRITE_10, 0, 20, 4), &data);
    for cdb in all_sizes(VERIFIES, 0x02, 20, 4) {
        assert_eq!(f.run_with(&cdb, &data).status, TaskStatus::Good);
        assert_eq!(f.lu.data_out_len(&cdb), Ok(4 * 512));
        for offset in [0usize, 1, 511, 512, 2047] {
            let mut bad = data.clone();
            bad[offset] ^= b'X';
            let o = f.run_with(&cdb, &bad);
            assert_sense(&o, SenseKey::Miscompare, 0x1D, 0x00);
            assert_eq!(o.sense.and_then(|s| s.information), Some(offset as u64));
            let fixed = o.sense.unwrap().to_bytes();
            assert_eq!(fixed[0], 0xF0, "VALID set");
            assert_eq!(
                u32::from_be_bytes(fixed[3..7].try_into().unwrap()),
                offset as u32
            );
        }
    }
}

#[test]
fn verify_spanning_several_chunks_finds_late_miscompare() {
    let lu_dev = Arc::new(MemoryDevice::new(8 << 20));
    let lu = LogicalUnit::new(lu_dev, identity(), false);
    let n = nexus(1);
    let blocks = MAX_TRANSFER_BLOCKS as u16 - 1; // fits READ (10)
    let mut data = vec![0u8; usize::from(blocks) * 512];
    let last = data.len() - 1;
    data[last] = 1;
    let o = lu.execute(&Request {
        nexus: &n,
        cdb: &rw10(VERIFY_10, 0x02, 0, blocks),
        data_out: &data,
        luns: &[],
    });
    assert_eq!(o.sense.and_then(|s| s.information), Some(last as u64));
}

#[test]
fn verify_bad_fields_and_ranges() {
    let f = Fixture::new();
    let block = vec![0u8; 512];
    for bytchk in [2u8, 3] {
        for cdb in all_sizes(VERIFIES, bytchk << 1, 0, 1) {
            assert_invalid_field(&f.run_with(&cdb, &block), 1, 2);
        }
    }
    for cdb in all_sizes(VERIFIES, 0x02, 0, 0) {
        assert_eq!(
            f.run(&cdb).status,
            TaskStatus::Good,
            "0 blocks, nothing to compare"
        );
    }
    let end = DEV_BLOCKS as u32;
    for (lba, blocks) in [
        (end + 1, 0u16),
        (end, 1),
        (end - 1, 2),
        (0x8000_0000, 1),
        (u32::MAX, 1),
    ] {
        for cdb in all_sizes(VERIFIES, 0x02, lba, blocks) {
            assert_lba_oob(&f.run_with(&cdb, &vec![0; usize::from(blocks) * 512]));
        }
    }
}

#[test]
fn write_and_verify_writes_durably_and_compares() {
    let f = Fixture::new();
    for (i, cdb) in all_sizes(WRITE_VERIFIES, 0, 30, 2)
        .into_iter()
        .chain(all_sizes(WRITE_VERIFIES, 0x12, 40, 2))
        .enumerate()
    {
        let data = pattern(1024, i as u8);
        f.good_write(&cdb, &data);
        assert_eq!(f.lu.data_out_len(&cdb), Ok(1024));
        let lba = if i < 3 { 30 } else { 40 };
        assert_eq!(f.dev.snapshot(lba * 512, 1024), data);
    }
    assert_eq!(f.dev.fua_writes(), 6);
    for cdb in all_sizes(WRITE_VERIFIES, 0, 0, 0) {
        assert_eq!(f.run(&cdb).status, TaskStatus::Good);
    }
    let end = DEV_BLOCKS as u32;
    for cdb in all_sizes(WRITE_VERIFIES, 0, end, 1)
        .into_iter()
        .chain(all_sizes(WRITE_VERIFIES, 0, end + 1, 0))
    {
        assert_lba_oob(&f.run_with(&cdb, &[0; 512]));
    }
    for bytchk in [2u8, 3] {
        assert_invalid_field(
            &f.run_with(&rw10(WRITE_AND_VERIFY_10, bytchk << 1, 0, 1), &[0; 512]),
            1,
            2,
        );
    }
}

/// A device whose reads return something other than what was written.
struct ForgetfulDevice(MemoryDevice);

impl BlockDevice for ForgetfulDevice {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)?;
        buf[0] ^= 0xFF;
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.0.write_at(buf, offset, fua)
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
}

#[test]
fn write_and_verify_reports_a_medium_that_lies() {
    let lu = LogicalUnit::new(
        Arc::new(ForgetfulDevice(MemoryDevice::new(65536))),
        identity(),
        false,
    );
    let n = nexus(1);
    let run = |cdb: &[u8]| {
        lu.execute(&Request {
            nexus: &n,
            cdb,
            data_out: &[7; 1024],
            luns: &[],
        })
    };
    let o = run(&rw10(WRITE_AND_VERIFY_10, 0x02, 4, 2));
    assert_sense(&o, SenseKey::Miscompare, 0x1D, 0x00);
    assert_eq!(o.sense.and_then(|s| s.information), Some(0));
    assert_eq!(
        run(&rw10(WRITE_AND_VERIFY_10, 0, 4, 2)).status,
        TaskStatus::Good,
        "BYTCHK=0 checks readability"
    );
}

// ---- SYNCHRONIZE CACHE ------------------------------------------------------------------------------------------

#[test]
fn synchronize_cache_flushes_and_checks_range() {
    let f = Fixture::new();
    let sc10 = |lba: u32, blocks: u16, immed: bool| {
        rw10(SYNCHRONIZE_CACHE_10, u8::from(immed) << 1, lba, blocks)
    };
    let sc16 = |lba: u64, blocks: u32| rw16(SYNCHRONIZE_CACHE_16, 0, lba, blocks);
    assert_eq!(f.run(&sc10(0, 0, false)).status, TaskStatus::Good);
    assert_eq!(f.run(&sc10(0, 16, true)).status, TaskStatus::Good);
    assert_eq!(f.run(&sc16(0, DEV_BLOCKS as u32)).status, TaskStatus::Good);
    assert_eq!(f.run(&sc16(DEV_BLOCKS, 0)).status, TaskStatus::Good);
    assert_eq!(f.dev.flushes(), 4);
    assert_lba_oob(&f.run(&sc10(DEV_BLOCKS as u32, 1, false)));
    assert_lba_oob(&f.run(&sc10(DEV_BLOCKS as u32 + 1, 0, false)));
    assert_lba_oob(&f.run(&sc16(u64::MAX, 1)));
    assert_lba_oob(&f.run(&sc16(0, DEV_BLOCKS as u32 + 1)));
    assert_eq!(f.dev.flushes(), 4, "no flush for a rejected range");
}

// ---- MODE SENSE -------------------------------------------------------------------------------------------------

fn mode_sense6(dbd: bool, pc: u8, page: u8, subpage: u8, alloc: u8) -> Vec<u8> {
    vec![
        MODE_SENSE_6,
        u8::from(dbd) << 3,
        (pc << 6) | page,
        subpage,
        alloc,
        0,
    ]
}

fn mode_sense10(llbaa: bool, dbd: bool, pc: u8, page: u8, alloc: u16) -> Vec<u8> {
    let [hi, lo] = alloc.to_be_bytes();
    vec![
        MODE_SENSE_10,
        (u8::from(llbaa) << 4) | (u8::from(dbd) << 3),
        (pc << 6) | page,
        0,
        0,
        0,
        0,
        hi,
        lo,
        0,
    ]
}

/// (page code, page bytes) of the pages after the header and block descriptors.
fn mode_pages(body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let len = usize::from(rest[1]) + 2;
        out.push((rest[0] & 0x3F, rest[..len].to_vec()));
        rest = &rest[len..];
    }
    out
}

#[test]
fn mode_sense6_all_pages() {
    let f = Fixture::new();
    let d = f.good(&mode_sense6(false, 0, 0x3F, 0, 255));
    assert_eq!(usize::from(d[0]) + 1, d.len(), "mode data length");
    assert_eq!(d[1], 0, "medium type");
    assert_eq!(d[2], 0x10, "DPOFUA, not write protected");
    assert_eq!(d[3], 8, "one short block descriptor");
    assert_eq!(
        u32::from_be_bytes(d[4..8].try_into().unwrap()),
        DEV_BLOCKS as u32
    );
    assert_eq!(&d[8..12], &[0, 0, 2, 0], "block length 512");
    let pages = mode_pages(&d[12..]);
    let codes: Vec<u8> = pages.iter().map(|p| p.0).collect();
    assert_eq!(codes, vec![0x08, 0x0A, 0x1C]);
    let caching = &pages[0].1;
    assert_eq!(caching[1], 0x12);
    assert_eq!(caching[2] & 0x05, 0x04, "WCE=1, RCD=0");
    let control = &pages[1].1;
    assert_eq!(control[1], 0x0A);
    assert_eq!(control[2] & 0x04, 0, "D_SENSE=0: fixed format sense");
    assert_eq!(control[3] >> 4, 1, "queue algorithm modifier");
    assert_eq!(control[4] & 0x08, 0, "SWP=0");
    let ie = &pages[2].1;
    assert_eq!(ie[1], 0x0A);
    assert_eq!(
        f.good(&mode_sense6(false, 0, 0x3F, 0xFF, 255)),
        d,
        "subpage FFh: same, we have no subpages"
    );
}

#[test]
fn mode_sense6_single_pages_match_all_pages() {
    let f = Fixture::new();
    let all = f.good(&mode_sense6(true, 0, 0x3F, 0, 255));
    assert_eq!(all[3], 0, "DBD: no block descriptor");
    let pages = mode_pages(&all[4..]);
    for (code, bytes) in pages {
        let d = f.good(&mode_sense6(true, 0, code, 0, 255));
        assert_eq!(&d[4..], &bytes[..]);
        assert_eq!(usize::from(d[0]) + 1, d.len());
    }
}

#[test]
fn mode_sense_page_control() {
    let f = Fixture::new();
    let current = f.good(&mode_sense6(true, 0, 0x3F, 0, 255));
    assert_eq!(
        f.good(&mode_sense6(true, 2, 0x3F, 0, 255)),
        current,
        "defaults are the current values"
    );
    let changeable = f.good(&mode_sense6(true, 1, 0x3F, 0, 255));
    assert_eq!(changeable.len(), current.len());
    for (_, page) in mode_pages(&changeable[4..]) {
        assert!(page[2..].iter().all(|&b| b == 0), "nothing is changeable");
    }
    assert_sense(
        &f.run(&mode_sense6(true, 3, 0x3F, 0, 255)),
        SenseKey::IllegalRequest,
        0x39,
        0x00,
    );
}

#[test]
fn mode_sense_unknown_page_or_subpage_is_invalid() {
    let f = Fixture::new();
    for page in [0x00u8, 0x01, 0x02, 0x19, 0x1A, 0x3E] {
        assert_invalid_field(&f.run(&mode_sense6(false, 0, page, 0, 255)), 2, 5);
    }
    assert_invalid_field(&f.run(&mode_sense6(false, 0, 0x3F, 0x01, 255)), 3, 7);
    assert_invalid_field(&f.run(&mode_sense6(false, 0, 0x0A, 0x01, 255)), 3, 7);
    assert_eq!(
        f.run(&mode_sense6(false, 0, 0x0A, 0xFF, 255)).status,
        TaskStatus::Good
    );
}

#[test]
fn mode_sense_truncates_to_allocation_length() {
    let f = Fixture::new();
    let full = f.good(&mode_sense6(false, 0, 0x3F, 0, 255));
    for alloc in [0u8, 1, 4, 12, 30] {
        assert_eq!(
            f.good(&mode_sense6(false, 0, 0x3F, 0, alloc)),
            full[..usize::from(alloc)].to_vec()
        );
    }
}

#[test]
fn mode_sense_write_protect_bit() {
    let f = Fixture::read_only();
    let d = f.good(&mode_sense6(false, 0, 0x3F, 0, 255));
    assert_eq!(d[2], 0x90, "WP and DPOFUA");
    let d = f.good(&mode_sense10(false, false, 0, 0x3F, 512));
    assert_eq!(d[3], 0x90);
}

#[test]
fn mode_sense10_headers_and_descriptors() {
    let f = Fixture::new();
    let short = f.good(&mode_sense10(false, false, 0, 0x08, 512));
    assert_eq!(
        usize::from(u16::from_be_bytes([short[0], short[1]])) + 2,
        short.len()
    );
    assert_eq!(short[3], 0x10);
    assert_eq!(short[4], 0, "LONGLBA clear");
    assert_eq!(u16::from_be_bytes([short[6], short[7]]), 8);
    assert_eq!(
        &short[16..],
        &f.good(&mode_sense6(true, 0, 0x08, 0, 255))[4..]
    );

    let long = f.good(&mode_sense10(true, false, 0, 0x08, 512));
    assert_eq!(long[4], 1, "LONGLBA set");
    assert_eq!(u16::from_be_bytes([long[6], long[7]]), 16);
    assert_eq!(
        u64::from_be_bytes(long[8..16].try_into().unwrap()),
        DEV_BLOCKS
    );
    assert_eq!(u32::from_be_bytes(long[20..24].try_into().unwrap()), 512);

    let none = f.good(&mode_sense10(true, true, 0, 0x08, 512));
    assert_eq!(u16::from_be_bytes([none[6], none[7]]), 0);
    assert_eq!(none.len(), 8 + 20);
}

#[test]
fn mode_sense_short_descriptor_saturates_for_large_devices() {
    let lu = huge_lu(1 << 33);
    let n = nexus(1);
    let o = lu.execute(&Request {
        nexus: &n,
        cdb: &mode_sense6(false, 0, 0x08, 0, 255),
        data_out: &[],
        luns: &[],
    });
    assert_eq!(
        u32::from_be_bytes(o.data_in[4..8].try_into().unwrap()),
        u32::MAX
    );
}

// ---- REPORT SUPPORTED OPERATION CODES ---------------------------------------------------------------------------

fn rsoc(rctd: bool, options: u8, op: u8, sa: u16, alloc: u32) -> Vec<u8> {
    let mut c = vec![MAINTENANCE_IN, 0x0C, (u8::from(rctd) << 7) | options, op];
    c.extend_from_slice(&sa.to_be_bytes());
    c.extend_from_slice(&alloc.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

/// (opcode, service action, SERVACTV, CTDP, CDB length) of each descriptor in an "all commands" list.
fn command_descriptors(d: &[u8]) -> Vec<(u8, u16, bool, bool, u16)> {
    let len = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
    assert_eq!(len + 4, d.len());
    let mut out = Vec::new();
    let mut i = 4;
    while i < d.len() {
        let ctdp = d[i + 5] & 0x02 != 0;
        out.push((
            d[i],
            u16::from_be_bytes([d[i + 2], d[i + 3]]),
            d[i + 5] & 0x01 != 0,
            ctdp,
            u16::from_be_bytes([d[i + 6], d[i + 7]]),
        ));
        i += 8;
        if ctdp {
            assert_eq!(
                u16::from_be_bytes([d[i], d[i + 1]]),
                0x0A,
                "timeouts descriptor length"
            );
            i += 12;
        }
    }
    out
}

#[test]
fn rsoc_all_commands() {
    let f = Fixture::new();
    for rctd in [false, true] {
        let d = f.good(&rsoc(rctd, 0, 0, 0, 65535));
        let descs = command_descriptors(&d);
        assert_eq!(descs.len(), crate::cdb::SUPPORTED_COMMANDS.len());
        for (op, sa, servactv, ctdp, cdb_len) in descs {
            assert_eq!(ctdp, rctd);
            assert_eq!(servactv, crate::cdb::has_service_actions(op));
            assert!(servactv || sa == 0, "SERVACTV clear means service action 0");
            assert!([6, 10, 12, 16].contains(&cdb_len));
        }
    }
    assert_eq!(f.good(&rsoc(false, 0, 0, 0, 10)).len(), 10);
}

#[test]
fn rsoc_one_command() {
    let f = Fixture::new();
    let d = f.good(&rsoc(false, 1, READ_10, 0, 65535));
    assert_eq!(d[1] & 0x07, 3, "supported");
    assert_eq!(u16::from_be_bytes([d[2], d[3]]), 10);
    assert_eq!(d[4], READ_10);
    assert_eq!(d[5] & 0x18, 0x18, "DPO and FUA are used");
    let d = f.good(&rsoc(false, 1, VERIFY_10, 0, 65535));
    assert_eq!(d[5] & 0x10, 0x10, "DPO is used");
    let d = f.good(&rsoc(true, 1, WRITE_16, 0, 65535));
    assert_eq!(d[1], 0x83, "CTDP and supported");
    assert_eq!(d.len(), 4 + 16 + 12);
    let d = f.good(&rsoc(false, 1, 0x41, 0, 65535));
    assert_eq!(d, vec![0, 1, 0, 0], "WRITE SAME (10): not supported");
    let d = f.good(&rsoc(false, 2, SERVICE_ACTION_IN_16, 0x10, 65535));
    assert_eq!((d[1], d[4], d[5]), (3, SERVICE_ACTION_IN_16, 0x1F));
    let d = f.good(&rsoc(false, 2, SERVICE_ACTION_IN_16, 0x12, 65535));
    assert_eq!(d[1], 1, "GET LBA STATUS: not supported");
    assert_eq!(
        f.good(&rsoc(false, 3, READ_10, 0x55, 65535))[1],
        3,
        "SA ignored for a plain opcode"
    );
    assert_eq!(f.good(&rsoc(false, 3, MAINTENANCE_IN, 0x0C, 65535))[1], 3);
}

#[test]
fn rsoc_wrong_reporting_options_point_at_byte_2() {
    let f = Fixture::new();
    assert_invalid_field(
        &f.run(&rsoc(false, 1, SERVICE_ACTION_IN_16, 0x10, 65535)),
        2,
        2,
    );
    assert_invalid_field(&f.run(&rsoc(false, 1, MAINTENANCE_IN, 0x0C, 65535)), 2, 2);
    assert_invalid_field(&f.run(&rsoc(false, 2, READ_10, 0, 65535)), 2, 2);
    assert_invalid_field(&f.run(&rsoc(false, 5, READ_10, 0, 65535)), 2, 2);
}

#[test]
fn rsoc_listed_commands_all_answer_one_command_queries() {
    let f = Fixture::new();
    for (op, sa, servactv, _, cdb_len) in command_descriptors(&f.good(&rsoc(false, 0, 0, 0, 65535)))
    {
        let options = if servactv { 2 } else { 1 };
        let d = f.good(&rsoc(false, options, op, sa, 65535));
        assert_eq!(d[1] & 0x07, 3);
        assert_eq!(u16::from_be_bytes([d[2], d[3]]), cdb_len);
        assert_eq!(d[4], op);
    }
}

// ---- PERSISTENT RESERVE IN -------------------------------------------------------------------------------------

fn prin(service_action: u8, alloc: u16) -> Vec<u8> {
    let [hi, lo] = alloc.to_be_bytes();
    vec![
        PERSISTENT_RESERVE_IN,
        service_action,
        0,
        0,
        0,
        0,
        0,
        hi,
        lo,
        0,
    ]
}

#[test]
fn prin_read_keys_reports_no_registrations() {
    let f = Fixture::new();
    // PRGENERATION 0, ADDITIONAL LENGTH 0, no keys.
    assert_eq!(f.good(&prin(0x00, 16384)), vec![0u8; 8]);
}

#[test]
fn prin_read_reservation_reports_no_reservation() {
    let f = Fixture::new();
    // PRGENERATION 0, ADDITIONAL LENGTH 0: no reservation descriptor.
    assert_eq!(f.good(&prin(0x01, 16384)), vec![0u8; 8]);
}

#[test]
fn prin_read_full_status_reports_nothing() {
    let f = Fixture::new();
    assert_eq!(f.good(&prin(0x03, 16384)), vec![0u8; 8]);
}

#[test]
fn prin_the_same_on_every_nexus() {
    let f = Fixture::new();
    let b = nexus(2);
    for sa in 0..4u8 {
        let o = f.run_on(&b, &prin(sa, 100), &[]);
        assert_eq!(o.status, TaskStatus::Good);
        assert_eq!(o.data_in, f.good(&prin(sa, 100)), "service action {sa}");
    }
}

#[test]
fn prin_allocation_length_truncates() {
    let f = Fixture::new();
    for sa in 0..4u8 {
        let full = f.good(&prin(sa, 16384));
        for alloc in [0u16, 1, 4, 7, 8, 9] {
            let want = &full[..full.len().min(alloc.into())];
            assert_eq!(f.good(&prin(sa, alloc)), want, "service action {sa}");
        }
    }
    assert_eq!(f.good(&prin(0x02, 2)), vec![0, 8], "LENGTH is not altered");
}

#[test]
fn prin_reserved_service_actions_are_invalid_field() {
    let f = Fixture::new();
    for sa in 0x04..=0x1Fu8 {
        assert_invalid_field(&f.run(&prin(sa, 16384)), 1, 4);
    }
}

#[test]
fn prin_control_byte_is_checked() {
    let f = Fixture::new();
    let mut c = prin(0x00, 16384);
    c[9] = 0x04;
    assert_invalid_field(&f.run(&c), 9, 2);
    c[9] = 0x01;
    assert_invalid_field(&f.run(&c), 9, 0);
}

#[test]
fn prin_reports_a_pending_unit_attention_first() {
    let f = Fixture::new();
    let b = nexus(2);
    f.lu.nexus_joined(&b);
    f.lu.reset(&f.a);
    // PERSISTENT RESERVE IN is not among the commands a unit attention lets through.
    assert_sense(
        &f.run_on(&b, &prin(0x00, 16384), &[]),
        SenseKey::UnitAttention,
        0x29,
        0x03,
    );
    let o = f.run_on(&b, &prin(0x00, 16384), &[]);
    assert_eq!((o.status, o.data_in), (TaskStatus::Good, vec![0u8; 8]));
    // Also ahead of its own CDB errors.
    f.lu.reset(&f.a);
    assert_sense(
        &f.run_on(&b, &prin(0x1F, 16384), &[]),
        SenseKey::UnitAttention,
        0x29,
        0x03,
    );
    assert_invalid_field(&f.run_on(&b, &prin(0x1F, 16384), &[]), 1, 4);
}

#[test]
fn prin_in_report_supported_operation_codes() {
    let f = Fixture::new();
    let listed: Vec<u16> = command_descriptors(&f.good(&rsoc(false, 0, 0, 0, 65535)))
        .into_iter()
        .filter(|&(op, _, servactv, _, cdb_len)| {
            op == PERSISTENT_RESERVE_IN && servactv && cdb_len == 10
        })
        .map(|(_, sa, ..)| sa)
        .collect();
    assert_eq!(listed, vec![0, 1, 2, 3]);
    for sa in 0..4u16 {
        let d = f.good(&rsoc(false, 2, PERSISTENT_RESERVE_IN, sa, 65535));
        assert_eq!(d[1] & 0x07, 3, "supported");
        assert_eq!(
            &d[4..],
            &[PERSISTENT_RESERVE_IN, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0]
        );
    }
    assert_eq!(
        f.good(&rsoc(false, 2, PERSISTENT_RESERVE_IN, 4, 65535))[1],
        1,
        "reserved service action: not supported"
    );
    assert_invalid_field(
        &f.run(&rsoc(false, 1, PERSISTENT_RESERVE_IN, 0, 65535)),
        2,
        2,
    );
    for sa in 0..8u16 {
        let d = f.good(&rsoc(false, 2, 0x5F, sa, 65535));
        assert_eq!(d[1] & 0x07, 3, "PERSISTENT RESERVE OUT {sa}: supported");
    }
}

#[test]
fn prin_on_a_nonexistent_lun_is_lun_not_supported() {
    assert_sense(
        &no_lun(&prin(0x00, 16384)),
        SenseKey::IllegalRequest,
        0x25,
        0x00,
    );
}

// ---- data_out_len / data_in_len ---------------------------------------------------------------------------------

#[test]
fn data_lengths() {
    let f = Fixture::new();
    let lu = &f.lu;
    assert_eq!(lu.data_out_len(&rw10(WRITE_10, 0, 0, 3)), Ok(1536));
    assert_eq!(
        lu.data_out_len(&rw16(WRITE_AND_VERIFY_16, 0, 0, 2)),
        Ok(1024)
    );
    assert_eq!(lu.data_out_len(&rw12(VERIFY_12, 0x02, 0, 2)), Ok(1024));
    assert_eq!(lu.data_out_len(&rw12(VERIFY_12, 0, 0, 2)), Ok(0));
    assert_eq!(lu.data_out_len(&rw10(READ_10, 0, 0, 3)), Ok(0));
    assert_eq!(lu.data_out_len(&inquiry(false, 0, 96)), Ok(0));
    assert_eq!(lu.data_out_len(&[0xC0; 16]), Err(Sense::invalid_opcode()));
    assert_eq!(
        lu.data_out_len(&rw10(WRITE_10, 0x20, 0, 3)),
        Err(Sense::invalid_field_in_cdb(1, 7))
    );

    assert_eq!(lu.data_in_len(&rw10(READ_10, 0, 0, 3)), Ok(1536));
    assert_eq!(lu.data_in_len(&rw10(WRITE_10, 0, 0, 3)), Ok(0));
    assert_eq!(lu.data_in_len(&inquiry(true, 0x83, 300)), Ok(300));
    assert_eq!(
        lu.data_in_len(&mode_sense6(false, 0, 0x3F, 0, 200)),
        Ok(200)
    );
    assert_eq!(
        lu.data_in_len(&mode_sense10(false, false, 0, 0x3F, 1000)),
        Ok(1000)
    );
    assert_eq!(lu.data_in_len(&[REQUEST_SENSE, 0, 0, 0, 18, 0]), Ok(18));
    assert_eq!(
        lu.data_in_len(&[READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        Ok(8)
    );
    assert_eq!(lu.data_in_len(&read_capacity_16(32)), Ok(32));
    assert_eq!(lu.data_in_len(&report_luns(0, 4096)), Ok(4096));
    assert_eq!(lu.data_in_len(&rsoc(false, 0, 0, 0, 65535)), Ok(65535));
    assert_eq!(lu.data_in_len(&prin(0x00, 16384)), Ok(16384));
    assert_eq!(lu.data_in_len(&prin(0x02, 0)), Ok(0));
    assert_eq!(lu.data_out_len(&prin(0x03, 8)), Ok(0));
    assert_eq!(
        lu.data_in_len(&prin(0x04, 8)),
        Err(Sense::invalid_field_in_cdb(1, 4))
    );
    assert_eq!(lu.data_in_len(&[TEST_UNIT_READY, 0, 0, 0, 0, 0]), Ok(0));
    assert_eq!(lu.data_in_len(&[]), Err(Sense::invalid_opcode()));
}

// ---- nonexistent LUN --------------------------------------------------------------------------------------------

fn no_lun(cdb: &[u8]) -> Outcome {
    let n = nexus(1);
    execute_no_lun(&Request {
        nexus: &n,
        cdb,
        data_out: &[],
        luns: &[0],
    })
}

#[test]
fn no_lun_inquiry_reports_qualifier_3() {
    let o = no_lun(&inquiry(false, 0, 255));
    assert_eq!(o.status, TaskStatus::Good);
    assert_eq!(o.data_in[0], 0x7F);
    assert_eq!(usize::from(o.data_in[4]) + 5, o.data_in.len());
    assert_eq!(no_lun(&inquiry(false, 0, 5)).data_in.len(), 5);
    let vpd = no_lun(&inquiry(true, 0, 255));
    assert_eq!(vpd.data_in, vec![0x7F, 0, 0, 1, 0]);
    assert_invalid_field(&no_lun(&inquiry(true, 0x83, 255)), 2, 7);
    assert_invalid_field(&no_lun(&inquiry(false, 0x83, 255)), 2, 7);
}

#[test]
fn no_lun_report_luns_and_request_sense_work() {
    let o = no_lun(&report_luns(0, 64));
    assert_eq!(o.status, TaskStatus::Good);
    assert_eq!(o.data_in.len(), 16);
    let o = no_lun(&[REQUEST_SENSE, 0, 0, 0, 252, 0]);
    assert_eq!(o.status, TaskStatus::Good);
    assert_eq!(
        (o.data_in[2], o.data_in[12], o.data_in[13]),
        (0x05, 0x25, 0x00)
    );
    let o = no_lun(&[REQUEST_SENSE, 1, 0, 0, 252, 0]);
    assert_eq!(&o.data_in[..4], &[0x72, 0x05, 0x25, 0x00]);
}

#[test]
fn no_lun_everything_else_is_lun_not_supported() {
    for cdb in [
        vec![TEST_UNIT_READY, 0, 0, 0, 0, 0],
        rw10(READ_10, 0, 0, 1),
        rw10(WRITE_10, 0, 0, 1),
        vec![0xC0; 16],
        vec![],
        read_capacity_16(32),
    ] {
        assert_sense(&no_lun(&cdb), SenseKey::IllegalRequest, 0x25, 0x00);
    }
}

// ---- concurrency and robustness ---------------------------------------------------------------------------------

#[test]
fn concurrent_commands_and_resets() {
    let f = Arc::new(Fixture::new());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || {
                let me = nexus(10 + t);
                let data = pattern(8 * 512, t as u8);
                for i in 0..50u32 {
                    let lba = (t as u32) * 400 + (i % 40) * 8;
                    if i % 10 == 0 {
                        f.lu.reset(&me);
                    }
                    // Retry once: a reset from another thread may have queued a unit attention.
                    let mut o = f.run_on(&me, &rw10(WRITE_10, 0, lba, 8), &data);
                    if o.status != TaskStatus::Good {
                        assert_eq!(o.sense.map(|s| s.key), Some(SenseKey::UnitAttention));
                        o = f.run_on(&me, &rw10(WRITE_10, 0, lba, 8), &data);
                    }
                    if o.status == TaskStatus::Good {
                        let r = f.run_on(&me, &rw10(READ_10, 0, lba, 8), &[]);
                        if r.status == TaskStatus::Good {
                            assert_eq!(r.data_in, data);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no panic");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any CDB and Data-Out gives an Outcome: no panic, CHECK CONDITION carries sense and no data, and GOOD
    /// Data-In is never longer than the CDB asked for.
    #[test]
    fn any_cdb_gives_a_sane_outcome(
        cdb in proptest::collection::vec(any::<u8>(), 0..24),
        opcode in prop::sample::select(vec![
            0x00u8, 0x03, 0x08, 0x0A, 0x12, 0x1A, 0x25, 0x28, 0x2A, 0x2E, 0x2F, 0x35, 0x5A, 0x5E,
            0x88, 0x8A, 0x8E, 0x8F, 0x91, 0x9E, 0xA0, 0xA3, 0xA8, 0xAA, 0xAE, 0xAF, 0x41,
        ]),
        force_known in any::<bool>(),
        data_out in proptest::collection::vec(any::<u8>(), 0..2048),
        read_only in any::<bool>(),
    ) {
        let mut cdb = cdb;
        if force_known && !cdb.is_empty() {
            cdb[0] = opcode;
            // Keep the CONTROL byte legal most of the time so decoding reaches the fields.
            let last = cdb.len() - 1;
            cdb[last] &= !0x05;
        }
        let dev = Arc::new(MemoryDevice::new(64 * 512));
        let lu = LogicalUnit::new(dev, identity(), read_only);
        let n = nexus(1);
        let o = lu.execute(&Request { nexus: &n, cdb: &cdb, data_out: &data_out, luns: &[0, 1] });
        match o.status {
            TaskStatus::Good => {
                prop_assert!(o.sense.is_none());
                let asked = lu.data_in_len(&cdb);
                prop_assert!(asked.is_ok());
                prop_assert!(o.data_in.len() as u64 <= u64::from(asked.unwrap_or(0)));
            }
            TaskStatus::CheckCondition => {
                prop_assert!(o.sense.is_some());
                prop_assert!(o.data_in.is_empty());
            }
            other => prop_assert!(false, "unexpected status {:?}", other),
        }
        let _ = lu.data_out_len(&cdb);
        let _ = execute_no_lun(&Request { nexus: &n, cdb: &cdb, data_out: &data_out, luns: &[0] });
    }

    #[test]
    fn lun_encoding_roundtrips_below_16384(lun in 0u64..0x4000) {
        prop_assert_eq!(decode_lun(encode_lun(lun)), lun);
    }
}
