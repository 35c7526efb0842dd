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

pub(super) fn identity() -> LunIdentity {
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

/// [`LogicalUnit::execute`] with the request's CDB decoded here, as the engine decodes it on arrival.
pub(super) trait ExecuteCdb {
    fn execute_cdb(&self, req: &Request<'_>) -> Outcome;
}

impl ExecuteCdb for LogicalUnit {
    fn execute_cdb(&self, req: &Request<'_>) -> Outcome {
        self.execute(req, &Decoded::new(req.cdb))
    }
}

pub(super) fn nexus(id: u64) -> Nexus {
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
        self.lu.execute_cdb(&Request {
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
    // ORWRITE (32), WRITE ATOMIC (16), READ DEFECT DATA: not implemented.
    for op in [0x7Fu8, 0x9C, 0x07, 0x37] {
        let mut cdb = [0u8; 16];
        cdb[0] = op;
        assert_sense(&f.run(&cdb), SenseKey::IllegalRequest, 0x20, 0x00);
    }
    let mut sai = [0u8; 16];
    sai[0] = SERVICE_ACTION_IN_16;
    sai[1] = 0x13;
    assert_sense(&f.run(&sai), SenseKey::IllegalRequest, 0x20, 0x00);
    // UNMAP only exists on a thin provisioned logical unit.
    let mut unmap = [0u8; 10];
    unmap[0] = UNMAP;
    assert_sense(&f.run(&unmap), SenseKey::IllegalRequest, 0x20, 0x00);
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
    let o = lu.execute_cdb(&Request {
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
    assert_eq!(&d[..4], &[0x00, 0x00, 0x00, 6]);
    assert_eq!(&d[4..], &[0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]);
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
    for page in [0x01u8, 0x86, 0xB3, 0xFF] {
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
    let o = lu.execute_cdb(&Request {
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
    let o = lu.execute_cdb(&Request {
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
    assert_eq!(d[4] & 0x01, 0, "WSNZ: WRITE SAME of 0 blocks is accepted");
    assert_eq!(d[5], MAX_COMPARE_AND_WRITE_BLOCKS);
    // Fully provisioned: no UNMAP fields.
    assert!(d[16..36].iter().all(|&b| b == 0));
    assert_eq!(
        u64::from_be_bytes(d[36..44].try_into().unwrap()),
        MAX_WRITE_SAME_BLOCKS
    );
    // No atomic writes.
    assert!(d[44..64].iter().all(|&b| b == 0));
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
        let o = huge_lu(blocks).execute_cdb(&Request {
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
    assert_eq!(
        d[13], 0,
        "one logical block per physical block (the 4 KiB hint is in VPD B0h)"
    );
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
    let o = huge_lu(1 << 40).execute_cdb(&Request {
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
    assert_eq!(
        f.lu.data_in_len(&Decoded::new(&rw6(READ_6, 0, 0))),
        Ok(256 * 512)
    );
    assert_eq!(
        f.lu.data_out_len(&Decoded::new(&rw6(WRITE_6, 0, 0))),
        Ok(256 * 512)
    );
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
        lu.execute_cdb(&Request {
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
        lu.data_in_len(&Decoded::new(&rw16(READ_16, 0, 0, max + 1))),
        Err(Sense::invalid_field_in_cdb(10, 7))
    );
    assert_eq!(
        lu.data_out_len(&Decoded::new(&rw16(WRITE_16, 0, 0, max + 1))),
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
        assert_eq!(f.lu.data_out_len(&Decoded::new(&cdb)), Ok(0));
    }
}

#[test]
fn verify_bytchk_compares() {
    let f = Fixture::new();
    let data = pattern(4 * 512, 11);
    f.good_write(&rw10(WRITE_10, 0, 20, 4), &data);
    for cdb in all_sizes(VERIFIES, 0x02, 20, 4) {
        assert_eq!(f.run_with(&cdb, &data).status, TaskStatus::Good);
        assert_eq!(f.lu.data_out_len(&Decoded::new(&cdb)), Ok(4 * 512));
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
    let o = lu.execute_cdb(&Request {
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
    // BYTCHK 10b is reserved.
    for cdb in all_sizes(VERIFIES, 2 << 1, 0, 1) {
        assert_invalid_field(&f.run_with(&cdb, &block), 1, 2);
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
        assert_eq!(f.lu.data_out_len(&Decoded::new(&cdb)), Ok(1024));
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
    // BYTCHK 10b is reserved.
    assert_invalid_field(
        &f.run_with(&rw10(WRITE_AND_VERIFY_10, 2 << 1, 0, 1), &[0; 512]),
        1,
        2,
    );
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
        lu.execute_cdb(&Request {
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
    let masks: Vec<(u8, Vec<u8>)> = mode_pages(&changeable[4..]);
    let codes: Vec<u8> = masks.iter().map(|m| m.0).collect();
    assert_eq!(codes, vec![0x08, 0x0A, 0x1C]);
    // Caching: WCE. Control: nothing. Informational exceptions: DEXCPT, MRIE, INTERVAL TIMER, REPORT COUNT.
    assert_eq!(masks[0].1[2], 0x04);
    assert!(masks[0].1[3..].iter().all(|&b| b == 0));
    assert!(masks[1].1[2..].iter().all(|&b| b == 0));
    assert_eq!(&masks[2].1[2..4], &[0x08, 0x0F]);
    assert!(masks[2].1[4..12].iter().all(|&b| b == 0xFF));
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
    let o = lu.execute_cdb(&Request {
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
        // A fully provisioned logical unit lists every command but UNMAP.
        assert_eq!(descs.len(), reports::SUPPORTED_COMMANDS.len() - 1);
        assert!(descs.iter().all(|d| d.0 != UNMAP));
        for (op, sa, servactv, ctdp, cdb_len) in descs {
            assert_eq!(ctdp, rctd);
            assert_eq!(servactv, reports::has_service_actions(op));
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
    let d = f.good(&rsoc(false, 1, UNMAP, 0, 65535));
    assert_eq!(
        d,
        vec![0, 1, 0, 0],
        "UNMAP: not supported when fully provisioned"
    );
    let d = f.good(&rsoc(false, 1, 0x41, 0, 65535));
    assert_eq!(
        (d[1], d[5]),
        (3, 0x00),
        "WRITE SAME (10) without the UNMAP bit"
    );
    let d = f.good(&rsoc(false, 2, SERVICE_ACTION_IN_16, 0x10, 65535));
    assert_eq!((d[1], d[4], d[5]), (3, SERVICE_ACTION_IN_16, 0x1F));
    let d = f.good(&rsoc(false, 2, SERVICE_ACTION_IN_16, 0x12, 65535));
    assert_eq!(d[1], 3, "GET LBA STATUS");
    let d = f.good(&rsoc(false, 2, SERVICE_ACTION_IN_16, 0x13, 65535));
    assert_eq!(d[1], 1, "an unknown service action");
    let d = f.good(&rsoc(false, 2, 0x5F, 0x07, 65535));
    assert_eq!(
        (d[1], d[4], d[5]),
        (3, 0x5F, 0x1F),
        "PERSISTENT RESERVE OUT"
    );
    let d = f.good(&rsoc(false, 2, 0x5F, 0x08, 65535));
    assert_eq!(d[1], 1, "PERSISTENT RESERVE OUT: no service action 08h");
    for op in [0x16u8, 0x17, 0x56, 0x57] {
        assert_eq!(f.good(&rsoc(false, 1, op, 0, 65535))[1], 3, "{op:#x}");
    }
    let d = f.good(&rsoc(false, 1, COMPARE_AND_WRITE, 0, 65535));
    assert_eq!((d[4], d[5], d[17]), (COMPARE_AND_WRITE, 0x18, 0xFF));
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
    // PERSISTENT RESERVE OUT is listed with its service actions.
    assert_invalid_field(&f.run(&rsoc(false, 1, 0x5F, 0, 65535)), 2, 2);
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
    assert_eq!(
        lu.data_out_len(&Decoded::new(&rw10(WRITE_10, 0, 0, 3))),
        Ok(1536)
    );
    assert_eq!(
        lu.data_out_len(&Decoded::new(&rw16(WRITE_AND_VERIFY_16, 0, 0, 2))),
        Ok(1024)
    );
    assert_eq!(
        lu.data_out_len(&Decoded::new(&rw12(VERIFY_12, 0x02, 0, 2))),
        Ok(1024)
    );
    assert_eq!(
        lu.data_out_len(&Decoded::new(&rw12(VERIFY_12, 0, 0, 2))),
        Ok(0)
    );
    assert_eq!(
        lu.data_out_len(&Decoded::new(&rw10(READ_10, 0, 0, 3))),
        Ok(0)
    );
    assert_eq!(
        lu.data_out_len(&Decoded::new(&inquiry(false, 0, 96))),
        Ok(0)
    );
    assert_eq!(
        lu.data_out_len(&Decoded::new(&[0xC0; 16])),
        Err(Sense::invalid_opcode())
    );
    assert_eq!(
        lu.data_out_len(&Decoded::new(&rw10(WRITE_10, 0x20, 0, 3))),
        Err(Sense::invalid_field_in_cdb(1, 7))
    );

    assert_eq!(
        lu.data_in_len(&Decoded::new(&rw10(READ_10, 0, 0, 3))),
        Ok(1536)
    );
    assert_eq!(
        lu.data_in_len(&Decoded::new(&rw10(WRITE_10, 0, 0, 3))),
        Ok(0)
    );
    assert_eq!(
        lu.data_in_len(&Decoded::new(&inquiry(true, 0x83, 300))),
        Ok(300)
    );
    assert_eq!(
        lu.data_in_len(&Decoded::new(&mode_sense6(false, 0, 0x3F, 0, 200))),
        Ok(200)
    );
    assert_eq!(
        lu.data_in_len(&Decoded::new(&mode_sense10(false, false, 0, 0x3F, 1000))),
        Ok(1000)
    );
    assert_eq!(
        lu.data_in_len(&Decoded::new(&[REQUEST_SENSE, 0, 0, 0, 18, 0])),
        Ok(18)
    );
    assert_eq!(
        lu.data_in_len(&Decoded::new(&[
            READ_CAPACITY_10,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0
        ])),
        Ok(8)
    );
    assert_eq!(lu.data_in_len(&Decoded::new(&read_capacity_16(32))), Ok(32));
    assert_eq!(
        lu.data_in_len(&Decoded::new(&report_luns(0, 4096))),
        Ok(4096)
    );
    assert_eq!(
        lu.data_in_len(&Decoded::new(&rsoc(false, 0, 0, 0, 65535))),
        Ok(65535)
    );
    assert_eq!(lu.data_in_len(&Decoded::new(&prin(0x00, 16384))), Ok(16384));
    assert_eq!(lu.data_in_len(&Decoded::new(&prin(0x02, 0))), Ok(0));
    assert_eq!(lu.data_out_len(&Decoded::new(&prin(0x03, 8))), Ok(0));
    assert_eq!(
        lu.data_in_len(&Decoded::new(&prin(0x04, 8))),
        Err(Sense::invalid_field_in_cdb(1, 4))
    );
    assert_eq!(
        lu.data_in_len(&Decoded::new(&[TEST_UNIT_READY, 0, 0, 0, 0, 0])),
        Ok(0)
    );
    assert_eq!(
        lu.data_in_len(&Decoded::new(&[])),
        Err(Sense::invalid_opcode())
    );
}

// ---- nonexistent LUN --------------------------------------------------------------------------------------------

fn no_lun(cdb: &[u8]) -> Outcome {
    let n = nexus(1);
    execute_no_lun(
        &Request {
            nexus: &n,
            cdb,
            data_out: &[],
            luns: &[0],
        },
        &Decoded::new(cdb),
    )
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

// ---- thin provisioning: WRITE SAME, UNMAP, GET LBA STATUS -------------------------------------------------------

/// A thin provisioned fixture: 4 KiB allocation units (8 blocks), all deallocated.
fn thin() -> Fixture {
    let dev = Arc::new(MemoryDevice::thin(DEV_BYTES, 4096));
    let lu = LogicalUnit::new(dev.clone(), identity(), false);
    Fixture {
        dev,
        lu,
        a: nexus(1),
    }
}

fn ws10(flags: u8, lba: u32, blocks: u16) -> Vec<u8> {
    rw10(WRITE_SAME_10, flags, lba, blocks)
}

fn ws16(flags: u8, lba: u64, blocks: u32) -> Vec<u8> {
    rw16(WRITE_SAME_16, flags, lba, blocks)
}

fn unmap_cdb(param_len: u16) -> Vec<u8> {
    let [hi, lo] = param_len.to_be_bytes();
    vec![UNMAP, 0, 0, 0, 0, 0, 0, hi, lo, 0]
}

/// An UNMAP parameter list with one descriptor per `(lba, blocks)`.
fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let bd_len = (ranges.len() * 16) as u16;
    let mut l = (bd_len + 6).to_be_bytes().to_vec();
    l.extend_from_slice(&bd_len.to_be_bytes());
    l.extend_from_slice(&[0; 4]);
    for &(lba, n) in ranges {
        l.extend_from_slice(&lba.to_be_bytes());
        l.extend_from_slice(&n.to_be_bytes());
        l.extend_from_slice(&[0; 4]);
    }
    l
}

fn get_lba_status(lba: u64, alloc: u32) -> Vec<u8> {
    let mut c = vec![SERVICE_ACTION_IN_16, 0x12];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&alloc.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

/// The (LBA, blocks, provisioning status) descriptors of GET LBA STATUS parameter data.
fn lba_status(d: &[u8]) -> Vec<(u64, u32, u8)> {
    let len = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
    assert_eq!((len - 4) % 16, 0);
    d[8..]
        .chunks_exact(16)
        .map(|c| {
            (
                u64::from_be_bytes(c[0..8].try_into().unwrap()),
                u32::from_be_bytes(c[8..12].try_into().unwrap()),
                c[12],
            )
        })
        .collect()
}

#[test]
fn thin_unit_reports_provisioning() {
    let f = thin();
    assert!(f.lu.is_thin());
    let rc = f.good(&read_capacity_16(32));
    assert_eq!(rc[14] & 0xC0, 0xC0, "LBPME and LBPRZ");
    let b2 = f.good(&inquiry(true, 0xB2, 255));
    assert_eq!(
        b2,
        vec![0, 0xB2, 0, 4, 0, 0xE4, 0x02, 0],
        "LBPU LBPWS LBPWS10 LBPRZ, thin"
    );
    let b0 = f.good(&inquiry(true, 0xB0, 64));
    let be32 = |i: usize| u32::from_be_bytes(b0[i..i + 4].try_into().unwrap());
    assert_eq!(be32(20), MAX_UNMAP_BLOCKS);
    assert_eq!(be32(24), MAX_UNMAP_DESCRIPTORS);
    assert_eq!(be32(28), 8, "optimal unmap granularity");
    assert_eq!(be32(32), 0x8000_0000, "UGAVALID, alignment 0");
    // UNMAP is listed, and WRITE SAME evaluates its UNMAP bit.
    assert_eq!(f.good(&rsoc(false, 1, UNMAP, 0, 64))[1], 3);
    assert_eq!(f.good(&rsoc(false, 1, WRITE_SAME_10, 0, 64))[5], 0x08);
}

#[test]
fn fully_provisioned_unit_reports_none_of_it() {
    let f = Fixture::new();
    assert!(!f.lu.is_thin());
    assert_eq!(f.good(&read_capacity_16(32))[14] & 0xC0, 0);
    assert_eq!(
        f.good(&inquiry(true, 0xB2, 255)),
        vec![0, 0xB2, 0, 4, 0, 0, 0, 0]
    );
    assert_sense(
        &f.run_with(&unmap_cdb(24), &unmap_list(&[(0, 1)])),
        SenseKey::IllegalRequest,
        0x20,
        0x00,
    );
    let block = [0u8; 512];
    assert_invalid_field(&f.run_with(&ws10(0x08, 0, 1), &block), 1, 3);
    assert_invalid_field(&f.run_with(&ws16(0x08, 0, 1), &block), 1, 3);
    // GET LBA STATUS: everything is mapped.
    let d = f.good(&get_lba_status(5, 64));
    assert_eq!(lba_status(&d), vec![(5, (DEV_BLOCKS - 5) as u32, 0)]);
}

#[test]
fn write_same_writes_the_block_to_every_lba() {
    let f = Fixture::new();
    let block = pattern(512, 3);
    f.good_write(&ws10(0, 10, 5), &block);
    for i in 0..5 {
        assert_eq!(f.dev.snapshot((10 + i) * 512, 512), block);
    }
    assert_eq!(f.dev.snapshot(9 * 512, 512), vec![0; 512]);
    assert_eq!(f.dev.snapshot(15 * 512, 512), vec![0; 512]);
    // WRITE SAME (16), and only the first block of a longer Data-Out is used.
    let mut two = pattern(512, 9);
    two.extend_from_slice(&[0xEE; 512]);
    f.good_write(&ws16(0, 100, 3), &two);
    assert_eq!(
        f.dev.snapshot(100 * 512, 3 * 512),
        [&two[..512]; 3].concat()
    );
    // NDOB: zeros, no Data-Out.
    f.good_write(&ws16(0x01, 100, 2), &[]);
    assert_eq!(f.dev.snapshot(100 * 512, 1024), vec![0; 1024]);
    assert_eq!(f.dev.snapshot(102 * 512, 512), two[..512].to_vec());
    // 0 blocks: to the end of the medium.
    f.good_write(&ws10(0, (DEV_BLOCKS - 3) as u32, 0), &block);
    assert_eq!(
        f.dev.snapshot((DEV_BLOCKS as usize - 3) * 512, 3 * 512),
        [&block[..]; 3].concat()
    );
    // A 0-block WRITE SAME at the very end writes nothing and succeeds.
    f.good_write(&ws10(0, DEV_BLOCKS as u32, 0), &block);
    assert_eq!(f.dev.fua_writes(), 0);
    assert_eq!(f.dev.flushes(), 0);
}

#[test]
fn write_same_checks_fields_ranges_and_data() {
    let f = Fixture::new();
    let block = [1u8; 512];
    let end = DEV_BLOCKS as u32;
    for cdb in [ws10(0, end, 1), ws10(0, end - 1, 2), ws10(0, end + 1, 0)] {
        assert_lba_oob(&f.run_with(&cdb, &block));
    }
    for lba in [u64::MAX, 1 << 63] {
        assert_lba_oob(&f.run_with(&ws16(0, lba, 1), &block));
    }
    // Longer than MAXIMUM WRITE SAME LENGTH, also as "0 = to the end": the NUMBER OF LOGICAL BLOCKS field.
    let big = huge_lu(1 << 20);
    let n = nexus(1);
    let run = |cdb: &[u8]| {
        big.execute_cdb(&Request {
            nexus: &n,
            cdb,
            data_out: &block,
            luns: &[0],
        })
    };
    assert_invalid_field(&run(&ws16(0, 0, MAX_WRITE_SAME_BLOCKS as u32 + 1)), 10, 7);
    assert_invalid_field(&run(&ws16(0, 0, 0)), 10, 7);
    assert_invalid_field(&run(&ws10(0, 0, 0)), 7, 7);
    assert_eq!(
        run(&ws16(0, 0, MAX_WRITE_SAME_BLOCKS as u32)).status,
        TaskStatus::Good
    );
    assert_eq!(
        run(&ws10(0, (1 << 20) - MAX_WRITE_SAME_BLOCKS as u32, 0)).status,
        TaskStatus::Good
    );
    // WRPROTECT, ANCHOR (with or without UNMAP), PBDATA, LBDATA.
    for (flags, bit) in [(0x20u8, 7u8), (0x10, 4), (0x18, 4), (0x04, 2), (0x02, 1)] {
        assert_invalid_field(&f.run_with(&ws10(flags, 0, 1), &block), 1, bit);
    }
    // Less than a block of Data-Out.
    assert_sense(
        &f.run_with(&ws10(0, 0, 1), &block[..256]),
        SenseKey::IllegalRequest,
        0x0E,
        0x03,
    );
    let ro = Fixture::read_only();
    assert_sense(
        &ro.run_with(&ws10(0, 0, 1), &block),
        SenseKey::DataProtect,
        0x27,
        0x00,
    );
}

#[test]
fn write_same_with_unmap_deallocates_whatever_the_block_holds() {
    let f = thin();
    f.good_write(&rw10(WRITE_10, 0, 0, 64), &[0xFF; 64 * 512]);
    assert_eq!(
        lba_status(&f.good(&get_lba_status(0, 64))),
        vec![(0, 64, 0), (64, (DEV_BLOCKS - 64) as u32, 1)]
    );
    // SBC-4: UNMAP=1 deallocates; a deallocated block reads zeros (LBPRZ), even with 0xFF in the Data-Out.
    f.good_write(&ws10(0x08, 8, 16), &[0xFF; 512]);
    assert_eq!(f.dev.snapshot(8 * 512, 16 * 512), vec![0; 16 * 512]);
    assert_eq!(f.dev.snapshot(7 * 512, 512), vec![0xFF; 512]);
    assert_eq!(f.dev.snapshot(24 * 512, 512), vec![0xFF; 512]);
    assert_eq!(
        lba_status(&f.good(&get_lba_status(0, 1024)))[..3],
        [(0, 8, 0), (8, 16, 1), (24, 40, 0)]
    );
    // NDOB + UNMAP on WRITE SAME (16), to the end of the medium.
    f.good_write(&ws16(0x09, 24, 0), &[]);
    assert_eq!(
        lba_status(&f.good(&get_lba_status(0, 1024))),
        vec![(0, 8, 0), (8, (DEV_BLOCKS - 8) as u32, 1)]
    );
    assert_eq!(f.dev.unmaps(), 2);
    // An unaligned range: the blocks read zeros; the allocation units they share stay mapped.
    f.good_write(&rw10(WRITE_10, 0, 0, 16), &[0xAB; 16 * 512]);
    f.good_write(&ws10(0x08, 3, 2), &[0; 512]);
    assert_eq!(f.dev.snapshot(3 * 512, 1024), vec![0; 1024]);
    assert_eq!(f.dev.snapshot(2 * 512, 512), vec![0xAB; 512]);
    assert_eq!(lba_status(&f.good(&get_lba_status(0, 24)))[0], (0, 16, 0));
}

#[test]
fn unmap_deallocates_every_descriptor() {
    let f = thin();
    f.good_write(&rw10(WRITE_10, 0, 0, 256), &[b'a'; 256 * 512]);
    let list = unmap_list(&[(0, 8), (64, 0), (128, 64), (16, 8)]);
    f.good_write(&unmap_cdb(list.len() as u16), &list);
    assert_eq!(f.dev.unmaps(), 3, "descriptors of 0 blocks unmap nothing");
    assert_eq!(f.dev.snapshot(0, 8 * 512), vec![0; 8 * 512]);
    assert_eq!(f.dev.snapshot(8 * 512, 8 * 512), vec![b'a'; 8 * 512]);
    assert_eq!(f.dev.snapshot(128 * 512, 64 * 512), vec![0; 64 * 512]);
    let d = lba_status(&f.good(&get_lba_status(0, 8 + 16 * 6)));
    assert_eq!(
        d,
        vec![
            (0, 8, 1),
            (8, 8, 0),
            (16, 8, 1),
            (24, 104, 0),
            (128, 64, 1),
            (192, 64, 0)
        ]
    );
    // No parameter list, an empty one, and descriptors at the end of the medium: nothing to do.
    f.good_write(&unmap_cdb(0), &[]);
    f.good_write(&unmap_cdb(8), &unmap_list(&[]));
    f.good_write(&unmap_cdb(24), &unmap_list(&[(DEV_BLOCKS, 0)]));
    // A descriptor length beyond the list, or a partial descriptor, is cut to what the list holds.
    let mut l = unmap_list(&[(256, 8)]);
    l[2..4].copy_from_slice(&40u16.to_be_bytes());
    f.good_write(&unmap_cdb(20), &l);
    assert_eq!(f.dev.unmaps(), 3);
    f.good_write(&unmap_cdb(24), &l);
    assert_eq!(f.dev.unmaps(), 4);
}

#[test]
fn unmap_checks_the_parameter_list_before_deallocating() {
    let f = thin();
    f.good_write(&rw10(WRITE_10, 0, 0, 8), &[1; 8 * 512]);
    for len in 1u16..8 {
        assert_sense(
            &f.run_with(&unmap_cdb(len), &[0; 8]),
            SenseKey::IllegalRequest,
            0x1A,
            0x00,
        );
    }
    // Every descriptor is checked first: a bad one later in the list leaves the first undone.
    let end = DEV_BLOCKS;
    for bad in [(end, 1u32), (end - 1, 2), (end + 1, 0), (u64::MAX, 1)] {
        let l = unmap_list(&[(0, 8), bad]);
        assert_lba_oob(&f.run_with(&unmap_cdb(l.len() as u16), &l));
    }
    assert_eq!(f.dev.unmaps(), 0);
    // MAXIMUM UNMAP LBA COUNT, over all descriptors: the pointer is at the NUMBER OF LOGICAL BLOCKS that overflowed.
    let big = huge_lu(1 << 24);
    let n = nexus(1);
    let l = unmap_list(&[
        (0, MAX_UNMAP_BLOCKS / 2),
        (1 << 22, MAX_UNMAP_BLOCKS / 2 + 1),
    ]);
    let o = big.execute_cdb(&Request {
        nexus: &n,
        cdb: &unmap_cdb(l.len() as u16),
        data_out: &l,
        luns: &[0],
    });
    // The huge device is fully provisioned: UNMAP does not exist there.
    assert_sense(&o, SenseKey::IllegalRequest, 0x20, 0x00);
    let l = unmap_list(&[(0, 1024), (0, MAX_UNMAP_BLOCKS)]);
    let o = f.run_with(&unmap_cdb(l.len() as u16), &l);
    assert_sense(&o, SenseKey::IllegalRequest, 0x26, 0x00);
    assert_eq!(
        o.sense.unwrap().field_pointer,
        Some(crate::FieldPointer {
            in_cdb: false,
            byte: 8 + 16 + 8,
            bit: 7
        })
    );
    // MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
    let many: Vec<(u64, u32)> = (0..=u64::from(MAX_UNMAP_DESCRIPTORS))
        .map(|i| (i, 0))
        .collect();
    let l = unmap_list(&many);
    let o = f.run_with(&unmap_cdb(l.len() as u16), &l);
    assert_sense(&o, SenseKey::IllegalRequest, 0x26, 0x00);
    let ok = unmap_list(&many[1..]);
    f.good_write(&unmap_cdb(ok.len() as u16), &ok);
    // ANCHOR: nothing is anchored.
    assert_invalid_field(
        &f.run_with(&[UNMAP, 1, 0, 0, 0, 0, 0, 0, 24, 0], &unmap_list(&[(0, 1)])),
        1,
        0,
    );
    // Less Data-Out than the parameter list length.
    assert_sense(
        &f.run_with(&unmap_cdb(40), &unmap_list(&[(0, 1)])),
        SenseKey::IllegalRequest,
        0x0E,
        0x03,
    );
    assert_eq!(f.dev.unmaps(), 0);
    let ro = {
        let dev = Arc::new(MemoryDevice::thin(DEV_BYTES, 4096));
        LogicalUnit::new(dev, identity(), true)
    };
    let l = unmap_list(&[(0, 1)]);
    let o = ro.execute_cdb(&Request {
        nexus: &n,
        cdb: &unmap_cdb(24),
        data_out: &l,
        luns: &[0],
    });
    assert_sense(&o, SenseKey::DataProtect, 0x27, 0x00);
}

#[test]
fn get_lba_status_ranges_and_truncation() {
    let f = thin();
    // Beyond the end: LBA OUT OF RANGE (the last block is fine).
    for lba in [DEV_BLOCKS, DEV_BLOCKS + 1, 1 << 63, u64::MAX] {
        assert_lba_oob(&f.run(&get_lba_status(lba, 24)));
    }
    assert_eq!(
        lba_status(&f.good(&get_lba_status(DEV_BLOCKS - 1, 24))),
        vec![(DEV_BLOCKS - 1, 1, 1)]
    );
    f.good_write(&rw10(WRITE_10, 0, 16, 8), &[1; 8 * 512]);
    f.good_write(&rw10(WRITE_10, 0, 40, 8), &[1; 8 * 512]);
    // The first descriptor starts at the LBA asked for, even inside an allocation unit.
    let d = f.good(&get_lba_status(19, 1000));
    assert_eq!(
        lba_status(&d),
        vec![
            (19, 5, 0),
            (24, 16, 1),
            (40, 8, 0),
            (48, (DEV_BLOCKS - 48) as u32, 1)
        ]
    );
    assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 4 + 4 * 16);
    // As many descriptors as the allocation length holds (at least one), then truncation.
    let d = f.good(&get_lba_status(19, 40));
    assert_eq!(d.len(), 40);
    assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 4 + 2 * 16);
    let d = f.good(&get_lba_status(0, 12));
    assert_eq!(d.len(), 12);
    assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 4 + 16);
    assert!(f.good(&get_lba_status(0, 0)).is_empty());
    // REPORT TYPE (SBC-4) other than 0 is not supported.
    let mut c = get_lba_status(0, 24);
    c[14] = 0x01;
    assert_invalid_field(&f.run(&c), 14, 1);
}

/// A device whose mapped extents are tiny and odd-sized, to check rounding to whole blocks.
struct CrumblyDevice(MemoryDevice);

impl BlockDevice for CrumblyDevice {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.0.write_at(buf, offset, fua)
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
    fn supports_unmap(&self) -> bool {
        true
    }
    /// Bytes 0..700 mapped, 700..1100 deallocated (less than a block), 1100..2000 mapped, the rest deallocated;
    /// never more than 300 bytes at a time.
    fn mapped_extent(&self, offset: u64, len: u64) -> io::Result<(bool, u64)> {
        let (state, end) = match offset {
            0..700 => (true, 700),
            700..1100 => (false, 1100),
            1100..2000 => (true, 2000),
            _ => (false, u64::MAX),
        };
        Ok((state, (end - offset).min(300).min(len)))
    }
}

#[test]
fn get_lba_status_rounds_partly_mapped_blocks_to_mapped() {
    let lu = LogicalUnit::new(
        Arc::new(CrumblyDevice(MemoryDevice::new(64 * 512))),
        identity(),
        false,
    );
    let n = nexus(1);
    let o = lu.execute_cdb(&Request {
        nexus: &n,
        cdb: &get_lba_status(0, 1024),
        data_out: &[],
        luns: &[0],
    });
    assert_eq!(o.status, TaskStatus::Good);
    // Blocks 0..4 hold mapped bytes; from byte 2048 on everything is deallocated.
    assert_eq!(lba_status(&o.data_in), vec![(0, 4, 0), (4, 60, 1)]);
}

// ---- COMPARE AND WRITE, ORWRITE -----------------------------------------------------------------------------------

fn caw(flags: u8, lba: u64, blocks: u8) -> Vec<u8> {
    let mut c = vec![COMPARE_AND_WRITE, flags];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&[0, 0, 0, blocks, 0, 0]);
    c
}

#[test]
fn compare_and_write_writes_only_on_a_match() {
    let f = Fixture::new();
    let old = pattern(2 * 512, 1);
    let new = pattern(2 * 512, 2);
    f.good_write(&rw10(WRITE_10, 0, 20, 2), &old);
    f.good_write(&caw(0, 20, 2), &[old.clone(), new.clone()].concat());
    assert_eq!(f.dev.snapshot(20 * 512, 1024), new);
    // Now the medium holds `new`: comparing with `old` fails at the first differing byte, and nothing is written.
    let mut almost = new.clone();
    almost[700] ^= 0x55;
    let o = f.run_with(&caw(0, 20, 2), &[almost, pattern(1024, 9)].concat());
    assert_sense(&o, SenseKey::Miscompare, 0x1D, 0x00);
    assert_eq!(o.sense.unwrap().information, Some(700));
    assert_eq!(f.dev.snapshot(20 * 512, 1024), new);
    // FUA reaches the device; DPO is accepted.
    f.good_write(&caw(0x18, 20, 2), &[new.clone(), old.clone()].concat());
    assert_eq!(f.dev.fua_writes(), 1);
    assert_eq!(f.dev.snapshot(20 * 512, 1024), old);
    // 0 blocks: nothing compared or written.
    f.good_write(&caw(0, 0, 0), &[]);
    f.good_write(&caw(0, DEV_BLOCKS, 0), &[]);
}

#[test]
fn compare_and_write_fields_and_limits() {
    let f = Fixture::new();
    let end = DEV_BLOCKS;
    for (lba, n) in [(end, 1u8), (end - 1, 2), (end + 1, 0), (u64::MAX, 1)] {
        assert_lba_oob(&f.run_with(&caw(0, lba, n), &vec![0; usize::from(n) * 1024]));
    }
    assert_invalid_field(&f.run_with(&caw(0x20, 0, 1), &[0; 1024]), 1, 7);
    assert_eq!(
        f.lu.data_out_len(&Decoded::new(&caw(0, 0, 3))),
        Ok(3 * 1024)
    );
    assert_eq!(
        f.lu.data_out_len(&Decoded::new(&caw(0, 0, MAX_COMPARE_AND_WRITE_BLOCKS))),
        Ok(u32::from(MAX_COMPARE_AND_WRITE_BLOCKS) * 1024)
    );
    let over = caw(0, 0, MAX_COMPARE_AND_WRITE_BLOCKS + 1);
    assert_eq!(
        f.lu.data_out_len(&Decoded::new(&over)),
        Err(Sense::invalid_field_in_cdb(13, 7))
    );
    let n = usize::from(MAX_COMPARE_AND_WRITE_BLOCKS + 1);
    assert_invalid_field(&f.run_with(&over, &vec![0; n * 1024]), 13, 7);
    // Data-Out shorter than both halves.
    assert_sense(
        &f.run_with(&caw(0, 0, 2), &[0; 1536]),
        SenseKey::IllegalRequest,
        0x0E,
        0x03,
    );
    let ro = Fixture::read_only();
    assert_sense(
        &ro.run_with(&caw(0, 0, 1), &[0; 1024]),
        SenseKey::DataProtect,
        0x27,
        0x00,
    );
}

#[test]
fn expected_length_must_fit_write_same_and_compare_and_write() {
    let f = Fixture::new();
    let lu = &f.lu;
    assert_eq!(
        lu.check_expected_length(&Decoded::new(&ws10(0, 0, 1)), 512),
        Ok(())
    );
    for edtl in [0u32, 256, 1024] {
        assert_eq!(
            lu.check_expected_length(&Decoded::new(&ws10(0x08, 0, 1)), edtl),
            Err(Sense::invalid_field_in_information_unit())
        );
    }
    assert_eq!(
        lu.check_expected_length(&Decoded::new(&ws16(0x01, 0, 1)), 0),
        Ok(())
    );
    assert_eq!(
        lu.check_expected_length(&Decoded::new(&caw(0, 0, 2)), 2048),
        Ok(())
    );
    for edtl in [1024u32, 1536, 4096] {
        assert_eq!(
            lu.check_expected_length(&Decoded::new(&caw(0, 0, 2)), edtl),
            Err(Sense::invalid_field_in_information_unit())
        );
    }
    // Above the maximum: INVALID FIELD IN CDB, whatever the length.
    let over = caw(0, 0, MAX_COMPARE_AND_WRITE_BLOCKS + 1);
    for edtl in [
        0u32,
        1024,
        2 * (u32::from(MAX_COMPARE_AND_WRITE_BLOCKS) + 1) * 512,
    ] {
        assert_eq!(
            lu.check_expected_length(&Decoded::new(&over), edtl),
            Err(Sense::invalid_field_in_cdb(13, 7))
        );
    }
    // 0 blocks: no data is taken, unless the Data-Out is larger than any COMPARE AND WRITE (the count wrapped).
    assert_eq!(
        lu.check_expected_length(&Decoded::new(&caw(0, 0, 0)), 512),
        Ok(())
    );
    let most = 2 * u32::from(MAX_COMPARE_AND_WRITE_BLOCKS) * 512;
    assert_eq!(
        lu.check_expected_length(&Decoded::new(&caw(0, 0, 0)), most),
        Ok(())
    );
    assert_eq!(
        lu.check_expected_length(&Decoded::new(&caw(0, 0, 0)), 2 * 256 * 512),
        Err(Sense::invalid_field_in_cdb(13, 7))
    );
    // Any other command takes any length (the residual is the transport's business).
    assert_eq!(
        lu.check_expected_length(&Decoded::new(&rw10(WRITE_10, 0, 0, 1)), 4096),
        Ok(())
    );
    assert_eq!(
        lu.check_expected_length(&Decoded::new(&[0xC0; 16]), 7),
        Ok(())
    );
}

#[test]
fn orwrite_ors_the_data_in() {
    let f = Fixture::new();
    f.good_write(&rw10(WRITE_10, 0, 7, 2), &[0x0F; 1024]);
    f.good_write(&rw16(ORWRITE_16, 0, 7, 2), &[0xA0; 1024]);
    assert_eq!(f.dev.snapshot(7 * 512, 1024), vec![0xAF; 1024]);
    f.good_write(&rw16(ORWRITE_16, 0x08, 7, 1), &[0x50; 512]);
    assert_eq!(f.dev.snapshot(7 * 512, 512), vec![0xFF; 512]);
    assert_eq!(f.dev.snapshot(8 * 512, 512), vec![0xAF; 512]);
    assert_eq!(f.dev.fua_writes(), 1);
    f.good_write(&rw16(ORWRITE_16, 0, 0, 0), &[]);
    assert_lba_oob(&f.run_with(&rw16(ORWRITE_16, 0, DEV_BLOCKS, 1), &[0; 512]));
    assert_invalid_field(&f.run_with(&rw16(ORWRITE_16, 0x40, 0, 1), &[0; 512]), 1, 7);
    let ro = Fixture::read_only();
    assert_sense(
        &ro.run_with(&rw16(ORWRITE_16, 0, 0, 1), &[0; 512]),
        SenseKey::DataProtect,
        0x27,
        0x00,
    );
}

/// A [`MemoryDevice`] whose reads can be held at a gate, and which logs every write's first byte.
struct GatedDevice {
    inner: MemoryDevice,
    gate: Mutex<(bool, bool)>, // (armed, a read is waiting)
    cv: std::sync::Condvar,
    writes: Mutex<Vec<u8>>,
}

impl GatedDevice {
    fn new() -> Self {
        Self {
            inner: MemoryDevice::new(DEV_BYTES),
            gate: Mutex::new((false, false)),
            cv: std::sync::Condvar::new(),
            writes: Mutex::new(Vec::new()),
        }
    }
    fn arm(&self) {
        self.gate.lock().unwrap().0 = true;
    }
    fn wait_for_reader(&self) {
        let mut g = self.gate.lock().unwrap();
        while !g.1 {
            g = self.cv.wait(g).unwrap();
        }
    }
    fn open(&self) {
        self.gate.lock().unwrap().0 = false;
        self.cv.notify_all();
    }
}

impl BlockDevice for GatedDevice {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut g = self.gate.lock().unwrap();
        if g.0 {
            g.1 = true;
            self.cv.notify_all();
            while g.0 {
                g = self.cv.wait(g).unwrap();
            }
        }
        drop(g);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.writes.lock().unwrap().push(buf[0]);
        self.inner.write_at(buf, offset, fua)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Waits (bounded, for the failure case) until `lu` tracks `n` write ranges, held or waiting.
fn wait_for_ranges(lu: &LogicalUnit, n: usize) {
    for _ in 0..100_000 {
        if lu.ranges.entries() == n {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("never saw {n} write ranges");
}

#[test]
fn compare_and_write_is_atomic_against_a_concurrent_write() {
    let dev = Arc::new(GatedDevice::new());
    let lu = Arc::new(LogicalUnit::new(dev.clone(), identity(), false));
    dev.arm();
    // COMPARE AND WRITE of LBA 10 (zeros now) with 0xAA: it stops at its read.
    let caw_thread = {
        let lu = Arc::clone(&lu);
        std::thread::spawn(move || {
            let data = [vec![0u8; 512], vec![0xAA; 512]].concat();
            lu.execute_cdb(&Request {
                nexus: &nexus(1),
                cdb: &caw(0, 10, 1),
                data_out: &data,
                luns: &[0],
            })
        })
    };
    dev.wait_for_reader();
    // A WRITE to an overlapping range (LBA 9..11) must wait for the COMPARE AND WRITE to finish.
    let write_thread = {
        let lu = Arc::clone(&lu);
        std::thread::spawn(move || {
            lu.execute_cdb(&Request {
                nexus: &nexus(2),
                cdb: &rw10(WRITE_10, 0, 9, 2),
                data_out: &[0xBB; 1024],
                luns: &[0],
            })
        })
    };
    wait_for_ranges(&lu, 2);
    assert!(dev.writes.lock().unwrap().is_empty(), "the WRITE waited");
    dev.open();
    assert_eq!(caw_thread.join().unwrap().status, TaskStatus::Good);
    assert_eq!(write_thread.join().unwrap().status, TaskStatus::Good);
    assert_eq!(*dev.writes.lock().unwrap(), vec![0xAA, 0xBB]);
    assert_eq!(dev.inner.snapshot(10 * 512, 512), vec![0xBB; 512]);
    // A write to other blocks never waits for it.
    dev.arm();
    let caw_thread = {
        let lu = Arc::clone(&lu);
        std::thread::spawn(move || {
            let data = [vec![0xBB; 512], vec![0xCC; 512]].concat();
            lu.execute_cdb(&Request {
                nexus: &nexus(1),
                cdb: &caw(0, 10, 1),
                data_out: &data,
                luns: &[0],
            })
        })
    };
    dev.wait_for_reader();
    let o = lu.execute_cdb(&Request {
        nexus: &nexus(2),
        cdb: &rw10(WRITE_10, 0, 11, 1),
        data_out: &[0xDD; 512],
        luns: &[0],
    });
    assert_eq!(o.status, TaskStatus::Good);
    dev.open();
    assert_eq!(caw_thread.join().unwrap().status, TaskStatus::Good);
    assert_eq!(
        dev.inner.snapshot(10 * 512, 1024),
        [vec![0xCC; 512], vec![0xDD; 512]].concat()
    );
    assert_eq!(lu.ranges.entries(), 0);
}

/// A [`MemoryDevice`] that submits writes and completes them only when the test says so.
struct DeferredDevice {
    inner: MemoryDevice,
    pending: Mutex<Vec<(bytes::Bytes, u64, crate::WriteDone)>>,
}

impl DeferredDevice {
    /// Completes the oldest submitted write.
    fn complete_one(&self) {
        let (buf, offset, done) = self.pending.lock().unwrap().remove(0);
        done(self.inner.write_at(&buf, offset, false));
    }
}

impl BlockDevice for DeferredDevice {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.inner.write_at(buf, offset, fua)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn submits_writes(&self) -> bool {
        true
    }
    fn submit_write(&self, buf: bytes::Bytes, offset: u64, _fua: bool, done: crate::WriteDone) {
        self.pending.lock().unwrap().push((buf, offset, done));
    }
}

#[test]
fn compare_and_write_waits_for_a_submitted_write_to_complete() {
    let dev = Arc::new(DeferredDevice {
        inner: MemoryDevice::new(DEV_BYTES),
        pending: Mutex::new(Vec::new()),
    });
    let lu = Arc::new(LogicalUnit::new(dev.clone(), identity(), false));
    let write = rw10(WRITE_10, 0, 4, 4);
    assert!(lu.submits(&Decoded::new(&write)));
    let (tx, rx) = std::sync::mpsc::channel();
    let data = bytes::Bytes::from(vec![0x11; 4 * 512]);
    let submitted = lu.submit(
        &Request {
            nexus: &nexus(1),
            cdb: &write,
            data_out: &data,
            luns: &[0],
        },
        &Decoded::new(&write),
        &data,
        Box::new(move |o| tx.send(o).unwrap()),
    );
    assert!(submitted.is_ok());
    assert_eq!(
        lu.ranges.entries(),
        1,
        "the submitted write holds its range"
    );
    // COMPARE AND WRITE expecting the submitted data: it must not read before the write completes.
    let caw_thread = {
        let lu = Arc::clone(&lu);
        std::thread::spawn(move || {
            let data = [vec![0x11; 512], vec![0x22; 512]].concat();
            lu.execute_cdb(&Request {
                nexus: &nexus(2),
                cdb: &caw(0, 6, 1),
                data_out: &data,
                luns: &[0],
            })
        })
    };
    wait_for_ranges(&lu, 2);
    assert!(rx.try_recv().is_err());
    // Another write to those blocks would wait behind the COMPARE AND WRITE: submit hands it back untouched (the
    // caller runs it where waiting is allowed) instead of blocking the caller (a connection's task).
    let data = bytes::Bytes::from(vec![0x33; 2 * 512]);
    let handed_back = lu.submit(
        &Request {
            nexus: &nexus(3),
            cdb: &rw10(WRITE_10, 0, 6, 2),
            data_out: &data,
            luns: &[0],
        },
        &Decoded::new(&rw10(WRITE_10, 0, 6, 2)),
        &data,
        Box::new(|_| panic!("a write handed back is not answered")),
    );
    assert!(handed_back.is_err());
    assert_eq!(lu.ranges.entries(), 2, "nothing held or queued for it");
    assert_eq!(
        dev.pending.lock().unwrap().len(),
        1,
        "nothing submitted for it"
    );
    dev.complete_one();
    assert_eq!(rx.recv().unwrap().status, TaskStatus::Good);
    assert_eq!(caw_thread.join().unwrap().status, TaskStatus::Good);
    assert_eq!(dev.inner.snapshot(6 * 512, 512), vec![0x22; 512]);
    assert_eq!(lu.ranges.entries(), 0);
}

// ---- PRE-FETCH, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL ------------------------------------------------------

#[test]
fn pre_fetch_checks_the_range_and_returns_good() {
    let f = Fixture::new();
    let end = DEV_BLOCKS as u32;
    for (lba, n) in [(0u32, 0u16), (0, 256), (end - 1, 1), (end, 0)] {
        let mut c10 = rw10(PRE_FETCH_10, 0x02, lba, n);
        c10[6] = 3; // group
        assert!(f.good(&c10).is_empty());
        assert!(f
            .good(&rw16(PRE_FETCH_16, 0, lba.into(), n.into()))
            .is_empty());
    }
    for (lba, n) in [(end, 1u16), (end + 1, 0), (u32::MAX, 1)] {
        assert_lba_oob(&f.run(&rw10(PRE_FETCH_10, 0, lba, n)));
    }
    assert_lba_oob(&f.run(&rw16(PRE_FETCH_16, 0, 1 << 63, 0)));
    assert!(f.lu.is_quick(&Decoded::new(&rw10(PRE_FETCH_10, 0, 0, 8))));
    assert_eq!(f.dev.flushes(), 0);
}

#[test]
fn start_stop_unit_on_a_fixed_disk() {
    let f = Fixture::new();
    // Start, load, stop without flush: nothing to do.
    for b4 in [0x01u8, 0x03, 0x04] {
        assert!(f.good(&[START_STOP_UNIT, 0x01, 0, 0, b4, 0]).is_empty());
    }
    assert_eq!(f.dev.flushes(), 0);
    // A stop flushes the cache first.
    f.good(&[START_STOP_UNIT, 0, 0, 0, 0x00, 0]);
    assert_eq!(f.dev.flushes(), 1);
    // The unit keeps working after a stop: it is shared by every nexus.
    f.good(&rw10(READ_10, 0, 0, 1));
    // Eject: not removable.
    assert_invalid_field(&f.run(&[START_STOP_UNIT, 0, 0, 0, 0x02, 0]), 4, 1);
    assert_invalid_field(&f.run(&[START_STOP_UNIT, 0, 0, 0, 0x30, 0]), 4, 7);
    f.dev.set_fail_flush(true);
    assert_sense(
        &f.run(&[START_STOP_UNIT, 0, 0, 0, 0, 0]),
        SenseKey::MediumError,
        0x0C,
        0x00,
    );
}

#[test]
fn prevent_allow_medium_removal_is_accepted() {
    let f = Fixture::new();
    assert!(f
        .good(&[PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1, 0])
        .is_empty());
    assert!(f
        .good(&[PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0, 0])
        .is_empty());
    assert_invalid_field(&f.run(&[PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 2, 0]), 4, 1);
}

// ---- VERIFY / WRITE AND VERIFY with BYTCHK 11b --------------------------------------------------------------------

#[test]
fn bytchk_11b_compares_every_block_with_one() {
    let f = Fixture::new();
    let block = pattern(512, 5);
    f.good_write(&ws10(0, 30, 4), &block);
    for cdb in all_sizes(VERIFIES, 0x06, 30, 4) {
        assert_eq!(f.lu.data_out_len(&Decoded::new(&cdb)), Ok(512));
        f.good_write(&cdb, &block);
    }
    // The third block differs at byte 100: the offset counts from the start of the range.
    f.good_write(&rw10(WRITE_10, 0, 32, 1), &pattern(512, 6));
    let o = f.run_with(&rw10(VERIFY_10, 0x06, 30, 4), &block);
    assert_sense(&o, SenseKey::Miscompare, 0x1D, 0x00);
    let first = block
        .iter()
        .zip(pattern(512, 6))
        .position(|(a, b)| *a != b)
        .unwrap();
    assert_eq!(o.sense.unwrap().information, Some((2 * 512 + first) as u64));
    assert_eq!(
        f.lu.data_out_len(&Decoded::new(&rw10(VERIFY_10, 0x06, 30, 0))),
        Ok(0)
    );
    f.good(&rw10(VERIFY_10, 0x06, 30, 0));
    assert_sense(
        &f.run_with(&rw10(VERIFY_10, 0x06, 30, 1), &block[..100]),
        SenseKey::IllegalRequest,
        0x0E,
        0x03,
    );

    // WRITE AND VERIFY: the one block is written to every LBA, durably, then compared.
    let other = pattern(512, 8);
    for cdb in all_sizes(WRITE_VERIFIES, 0x06, 50, 3) {
        assert_eq!(f.lu.data_out_len(&Decoded::new(&cdb)), Ok(512));
        f.good_write(&cdb, &other);
    }
    assert_eq!(f.dev.snapshot(50 * 512, 3 * 512), [&other[..]; 3].concat());
    assert_eq!(f.dev.flushes(), 3);
}

// ---- MODE SELECT ------------------------------------------------------------------------------------------------

fn mode_select6(pf: bool, sp: bool, len: u8) -> Vec<u8> {
    vec![
        MODE_SELECT_6,
        (u8::from(pf) << 4) | u8::from(sp),
        0,
        0,
        len,
        0,
    ]
}

fn mode_select10(pf: bool, sp: bool, len: u16) -> Vec<u8> {
    let [hi, lo] = len.to_be_bytes();
    vec![
        MODE_SELECT_10,
        (u8::from(pf) << 4) | u8::from(sp),
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

/// The current page `code` as MODE SENSE (6) returns it (no block descriptors).
fn current_page(f: &Fixture, code: u8) -> Vec<u8> {
    let d = f.good(&mode_sense6(true, 0, code, 0, 255));
    d[4..].to_vec()
}

/// A MODE SELECT (6) parameter list: header, no block descriptor, then `pages`.
fn select_list6(pages: &[Vec<u8>]) -> Vec<u8> {
    let mut l = vec![0, 0, 0, 0];
    for p in pages {
        l.extend_from_slice(p);
    }
    l
}

/// A [`MemoryDevice`] whose small buffered I/O counts as quick, like a file's.
struct QuickDevice(Arc<MemoryDevice>);

impl BlockDevice for QuickDevice {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.0.write_at(buf, offset, fua)
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
    fn quick_io_limit(&self) -> usize {
        64 * 1024
    }
}

#[test]
fn mode_select_changes_wce_and_other_nexuses_get_a_unit_attention() {
    let dev = Arc::new(MemoryDevice::new(DEV_BYTES));
    let f = Fixture {
        lu: LogicalUnit::new(Arc::new(QuickDevice(dev.clone())), identity(), false),
        dev,
        a: nexus(1),
    };
    let w = rw10(WRITE_10, 0, 0, 1);
    assert!(f.lu.is_quick(&Decoded::new(&w)));
    let b = nexus(2);
    f.lu.nexus_joined(&b);
    let mut caching = current_page(&f, 0x08);
    assert_eq!(caching[2] & 0x04, 0x04, "WCE on by default");
    caching[2] &= !0x04;
    let list = select_list6(std::slice::from_ref(&caching));
    f.good_write(&mode_select6(true, false, list.len() as u8), &list);
    assert_eq!(f.dev.flushes(), 1, "turning the write cache off flushes it");
    assert_eq!(current_page(&f, 0x08), caching, "round trip");
    // Saved values are still not supported; defaults are unchanged.
    assert_eq!(
        f.good(&mode_sense6(true, 2, 0x08, 0, 255))[4 + 2] & 0x04,
        0x04
    );
    // The other nexus is told once; this one is not.
    assert_sense(
        &f.run_on(&b, &[TEST_UNIT_READY, 0, 0, 0, 0, 0], &[]),
        SenseKey::UnitAttention,
        0x2A,
        0x01,
    );
    assert_eq!(
        f.run_on(&b, &[TEST_UNIT_READY, 0, 0, 0, 0, 0], &[]).status,
        TaskStatus::Good
    );
    f.good(&[TEST_UNIT_READY, 0, 0, 0, 0, 0]);

    // WCE=0: every write is written through, and writes are no longer run inline.
    assert!(!f.lu.is_quick(&Decoded::new(&w)));
    f.good_write(&w, &[1; 512]);
    f.good_write(&ws10(0, 0, 4), &[2; 512]);
    f.good_write(&rw16(ORWRITE_16, 0, 0, 1), &[4; 512]);
    f.good_write(&caw(0, 0, 1), &[[6u8; 512], [7u8; 512]].concat());
    assert_eq!(f.dev.fua_writes(), 3);
    assert_eq!(f.dev.flushes(), 2, "WRITE SAME flushes once at the end");

    // Setting the same values again changes nothing: no unit attention.
    f.good_write(&mode_select6(true, false, list.len() as u8), &list);
    assert_eq!(
        f.run_on(&b, &[TEST_UNIT_READY, 0, 0, 0, 0, 0], &[]).status,
        TaskStatus::Good
    );
    // Back on (MODE SELECT (10) this time).
    caching[2] |= 0x04;
    let mut list10 = vec![0u8; 8];
    list10.extend_from_slice(&caching);
    f.good_write(&mode_select10(true, false, list10.len() as u16), &list10);
    assert!(f.lu.is_quick(&Decoded::new(&w)));
    assert_sense(
        &f.run_on(&b, &[TEST_UNIT_READY, 0, 0, 0, 0, 0], &[]),
        SenseKey::UnitAttention,
        0x2A,
        0x01,
    );
}

#[test]
fn mode_select_informational_exceptions_round_trip() {
    let f = Fixture::new();
    let mut ie = current_page(&f, 0x1C);
    ie[2] = 0x00; // DEXCPT off
    ie[3] = 0x06;
    ie[4..8].copy_from_slice(&600u32.to_be_bytes());
    ie[8..12].copy_from_slice(&1u32.to_be_bytes());
    let control = current_page(&f, 0x0A);
    let list = select_list6(&[control, ie.clone()]);
    f.good_write(&mode_select6(true, false, list.len() as u8), &list);
    assert_eq!(current_page(&f, 0x1C), ie);
    // MRIE values SPC-4 does not define.
    let mut bad = ie.clone();
    bad[3] = 0x07;
    let o = f.run_with(&mode_select6(true, false, 16), &select_list6(&[bad]));
    assert_sense(&o, SenseKey::IllegalRequest, 0x26, 0x00);
    assert_eq!(
        o.sense.unwrap().field_pointer.map(|p| (p.byte, p.bit)),
        Some((4 + 3, 3))
    );
    assert_eq!(current_page(&f, 0x1C), ie, "nothing applied");
}

#[test]
fn mode_select_refuses_what_can_not_change() {
    let f = Fixture::new();
    let caching = current_page(&f, 0x08);
    let control = current_page(&f, 0x0A);
    let field = |o: &Outcome| {
        assert_sense(o, SenseKey::IllegalRequest, 0x26, 0x00);
        let p = o.sense.unwrap().field_pointer.unwrap();
        assert!(!p.in_cdb);
        (p.byte, p.bit)
    };
    // RCD (caching byte 2 bit 0) and D_SENSE (control byte 2 bit 2) are not changeable.
    let mut c = caching.clone();
    c[2] |= 0x01;
    let l = select_list6(&[c]);
    assert_eq!(
        field(&f.run_with(&mode_select6(true, false, l.len() as u8), &l)),
        (4 + 2, 0)
    );
    let mut k = control.clone();
    k[2] |= 0x04;
    let l = select_list6(&[caching.clone(), k]);
    assert_eq!(
        field(&f.run_with(&mode_select6(true, false, l.len() as u8), &l)),
        (4 + 20 + 2, 2)
    );
    // Wrong page length, unknown page, subpage format.
    let mut c = caching.clone();
    c[1] = 0x0A;
    let l = select_list6(&[c]);
    assert_eq!(
        field(&f.run_with(&mode_select6(true, false, l.len() as u8), &l)),
        (5, 7)
    );
    let l = select_list6(&[vec![0x01, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]);
    assert_eq!(
        field(&f.run_with(&mode_select6(true, false, l.len() as u8), &l)),
        (4, 5)
    );
    let mut c = caching.clone();
    c[0] |= 0x40;
    let l = select_list6(&[c]);
    assert_eq!(
        field(&f.run_with(&mode_select6(true, false, l.len() as u8), &l)),
        (4, 6)
    );
    // Medium type, block descriptor with another block length or capacity; restating them is fine.
    let mut l = select_list6(std::slice::from_ref(&caching));
    l[1] = 1;
    assert_eq!(
        field(&f.run_with(&mode_select6(true, false, l.len() as u8), &l)),
        (1, 7)
    );
    let descriptor = |blocks: u32, len: u32| {
        let mut d = blocks.to_be_bytes().to_vec();
        d.extend_from_slice(&len.to_be_bytes());
        d[4] = 0;
        d
    };
    for (blocks, len, want) in [
        (DEV_BLOCKS as u32, 4096, Some((4 + 5, 7))),
        (7, 512, Some((4, 7))),
        (0, 512, None),
        (DEV_BLOCKS as u32, 512, None),
    ] {
        let mut l = vec![0, 0, 0x10, 8];
        l.extend_from_slice(&descriptor(blocks, len));
        l.extend_from_slice(&caching);
        let o = f.run_with(&mode_select6(true, false, l.len() as u8), &l);
        match want {
            Some(at) => assert_eq!(field(&o), at),
            None => assert_eq!(o.status, TaskStatus::Good, "{o:?}"),
        }
    }
    // Truncated page or header: PARAMETER LIST LENGTH ERROR.
    let l = select_list6(std::slice::from_ref(&caching));
    for len in [2u8, 10, 23] {
        assert_sense(
            &f.run_with(&mode_select6(true, false, len), &l),
            SenseKey::IllegalRequest,
            0x1A,
            0x00,
        );
    }
    assert_sense(
        &f.run_with(&mode_select6(true, false, 24), &l[..20]),
        SenseKey::IllegalRequest,
        0x1A,
        0x00,
    );
    // SP: nothing can be saved. PF=0 with pages: no vendor-specific format.
    assert_invalid_field(&f.run_with(&mode_select6(true, true, 24), &l), 1, 0);
    assert_invalid_field(&f.run_with(&mode_select6(false, false, 24), &l), 1, 4);
    f.good_write(&mode_select6(false, false, 4), &l[..4]);
    f.good_write(&mode_select6(true, false, 0), &[]);
    assert_eq!(
        f.lu.data_out_len(&Decoded::new(&mode_select10(true, false, 300))),
        Ok(300)
    );
    assert_eq!(
        f.lu.data_out_len(&Decoded::new(&mode_select6(true, false, 24))),
        Ok(24)
    );
}

// ---- lengths and classification of the new commands --------------------------------------------------------------

#[test]
fn new_commands_lengths_and_quickness() {
    let f = thin();
    let lu = &f.lu;
    assert_eq!(lu.data_out_len(&Decoded::new(&ws10(0, 0, 100))), Ok(512));
    assert_eq!(lu.data_out_len(&Decoded::new(&ws16(0x01, 0, 100))), Ok(0));
    assert_eq!(lu.data_out_len(&Decoded::new(&unmap_cdb(40))), Ok(40));
    assert_eq!(
        lu.data_out_len(&Decoded::new(&rw16(ORWRITE_16, 0, 0, 3))),
        Ok(1536)
    );
    assert_eq!(
        lu.data_out_len(&Decoded::new(&rw16(
            ORWRITE_16,
            0,
            0,
            MAX_TRANSFER_BLOCKS + 1
        ))),
        Err(Sense::invalid_field_in_cdb(10, 7))
    );
    assert_eq!(
        lu.data_out_len(&Decoded::new(&get_lba_status(0, 24))),
        Ok(0)
    );
    assert_eq!(
        lu.data_in_len(&Decoded::new(&get_lba_status(0, 24))),
        Ok(24)
    );
    assert_eq!(lu.data_in_len(&Decoded::new(&caw(0, 0, 1))), Ok(0));
    for cdb in [
        ws10(0, 0, 1),
        unmap_cdb(24),
        get_lba_status(0, 24),
        caw(0, 0, 1),
        rw16(ORWRITE_16, 0, 0, 1),
        mode_select6(true, false, 24),
        vec![START_STOP_UNIT, 0, 0, 0, 1, 0],
    ] {
        assert!(!lu.is_quick(&Decoded::new(&cdb)), "{cdb:02x?}");
    }
    for cdb in [
        rw10(PRE_FETCH_10, 0, 0, 1),
        vec![PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1, 0],
    ] {
        assert!(lu.is_quick(&Decoded::new(&cdb)), "{cdb:02x?}");
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
            0x15, 0x1B, 0x1E, 0x34, 0x42, 0x55, 0x89, 0x8B, 0x90, 0x93,
        ]),
        force_known in any::<bool>(),
        data_out in proptest::collection::vec(any::<u8>(), 0..2048),
        read_only in any::<bool>(),
        thin in any::<bool>(),
    ) {
        let mut cdb = cdb;
        if force_known && !cdb.is_empty() {
            cdb[0] = opcode;
            // Keep the CONTROL byte legal most of the time so decoding reaches the fields.
            let last = cdb.len() - 1;
            cdb[last] &= !0x05;
        }
        let dev = Arc::new(if thin { MemoryDevice::thin(64 * 512, 4096) } else { MemoryDevice::new(64 * 512) });
        let lu = LogicalUnit::new(dev, identity(), read_only);
        let n = nexus(1);
        let o = lu.execute_cdb(&Request { nexus: &n, cdb: &cdb, data_out: &data_out, luns: &[0, 1] });
        match o.status {
            TaskStatus::Good => {
                prop_assert!(o.sense.is_none());
                let asked = lu.data_in_len(&Decoded::new(&cdb));
                prop_assert!(asked.is_ok());
                prop_assert!(o.data_in.len() as u64 <= u64::from(asked.unwrap_or(0)));
            }
            TaskStatus::CheckCondition => {
                prop_assert!(o.sense.is_some());
                prop_assert!(o.data_in.is_empty());
            }
            other => prop_assert!(false, "unexpected status {:?}", other),
        }
        let _ = lu.data_out_len(&Decoded::new(&cdb));
        let _ = lu.check_expected_length(&Decoded::new(&cdb), data_out.len() as u32);
        let _ = lu.is_quick(&Decoded::new(&cdb));
        let _ = execute_no_lun(&Request { nexus: &n, cdb: &cdb, data_out: &data_out, luns: &[0] }, &Decoded::new(&cdb));
    }

    #[test]
    fn lun_encoding_roundtrips_below_16384(lun in 0u64..0x4000) {
        prop_assert_eq!(decode_lun(encode_lun(lun)), lun);
    }
}

// ---- capacity changes (online resize) ---------------------------------------------------------------------------

/// A device whose size the test changes, as an online resize does.
struct GrowingDevice(std::sync::atomic::AtomicU64);

impl BlockDevice for GrowingDevice {
    fn size_bytes(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
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

#[test]
fn a_grown_device_shows_its_new_capacity_and_every_nexus_gets_capacity_changed_once() {
    let dev = Arc::new(GrowingDevice(std::sync::atomic::AtomicU64::new(1 << 20)));
    let lu = LogicalUnit::new(dev.clone(), identity(), false);
    let (a, b) = (nexus(1), nexus(2));
    let run = |nexus: &Nexus, cdb: &[u8]| {
        lu.execute_cdb(&Request {
            nexus,
            cdb,
            data_out: &[],
            luns: &[0],
        })
    };
    let tur = [TEST_UNIT_READY, 0, 0, 0, 0, 0];
    let read_capacity_10 = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for n in [&a, &b] {
        assert_eq!(run(n, &tur).status, TaskStatus::Good);
    }
    dev.0.store(3 << 20, std::sync::atomic::Ordering::SeqCst);
    for n in [&a, &b] {
        assert_sense(&run(n, &tur), SenseKey::UnitAttention, 0x2A, 0x09);
        // Once per nexus.
        assert_eq!(run(n, &tur).status, TaskStatus::Good);
        let data = run(n, &read_capacity_10).data_in;
        assert_eq!(
            u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
            (3 << 20) / 512 - 1
        );
    }
}
