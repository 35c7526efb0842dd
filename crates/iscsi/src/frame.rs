//! Cutting a byte stream into PDUs and writing PDUs into one: AHS, padding to 4 bytes, CRC32C digests.
//!
//! The decoder never allocates more than the limits it was given allow, so a peer cannot make it hold more than
//! one PDU of at most `max_data_len` bytes per connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::pdu::{ahs_len_of, data_len_of, BHS_LEN};

/// The most AHS bytes accepted (an extended CDB of up to 260 bytes plus a bidirectional read length AHS).
pub const MAX_AHS_LEN: usize = 4 * 80;

/// Digest and size settings of one direction of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// HeaderDigest=CRC32C was negotiated.
    pub header_digest: bool,
    /// DataDigest=CRC32C was negotiated.
    pub data_digest: bool,
    /// The largest data segment accepted (this side's MaxRecvDataSegmentLength).
    pub max_data_len: u32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        // During login no digests are in force and the RFC default segment size applies.
        FrameLimits {
            header_digest: false,
            data_digest: false,
            max_data_len: 8192,
        }
    }
}

/// One PDU off the wire: its header, AHS and (unpadded) data segment, digests already checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawPdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Bytes,
    pub data: Bytes,
}

/// A data digest failure keeps the header so the PDU can be rejected by reference.
#[derive(Debug)]
pub enum DecodeError {
    /// The stream cannot be trusted any more: drop the connection.
    Fatal(ProtocolError),
    /// This PDU must be rejected (its header is known good) and the stream goes on.
    Reject {
        bhs: Box<[u8; BHS_LEN]>,
        error: ProtocolError,
    },
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// CRC32C as iSCSI puts it on the wire (little-endian byte order of the Castagnoli CRC, RFC 7143 section 13.1).
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Takes one whole PDU off the front of `buf`, or returns `Ok(None)` when more bytes are needed.
pub fn decode(buf: &mut BytesMut, limits: &FrameLimits) -> Result<Option<RawPdu>, DecodeError> {
    if buf.len() < BHS_LEN {
        return Ok(None);
    }
    let mut bhs = [0u8; BHS_LEN];
    bhs.copy_from_slice(&buf[..BHS_LEN]);
    let ahs_len = ahs_len_of(&bhs);
    if ahs_len > MAX_AHS_LEN {
        return Err(DecodeError::Fatal(ProtocolError::AhsTooLong {
            len: ahs_len as u32,
            max: MAX_AHS_LEN as u32,
        }));
    }
    let data_len = data_len_of(&bhs);
    if data_len > limits.max_data_len {
        // The length cannot be trusted to resynchronise on, so the stream is lost at ERL 0.
        return Err(DecodeError::Fatal(ProtocolError::SegmentTooLong {
            len: data_len,
            max: limits.max_data_len,
        }));
    }
    let hd = if limits.header_digest { 4 } else { 0 };
    let dd = if limits.data_digest && data_len > 0 {
        4
    } else {
        0
    };
    let data_at = BHS_LEN + ahs_len + hd;
    let total = data_at + pad4(data_len as usize) + dd;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if hd != 0 {
        let computed = crc32c(&buf[..BHS_LEN + ahs_len]);
        let at = BHS_LEN + ahs_len;
        let received = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        if computed != received {
            return Err(DecodeError::Fatal(ProtocolError::HeaderDigest {
                received,
                computed,
            }));
        }
    }
    let mut pdu = buf.split_to(total).freeze();
    let data_digest_error = if dd != 0 {
        let padded = &pdu[data_at..data_at + pad4(data_len as usize)];
        let computed = crc32c(padded);
        let at = data_at + padded.len();
        let received = u32::from_le_bytes([pdu[at], pdu[at + 1], pdu[at + 2], pdu[at + 3]]);
        (computed != received).then_some(ProtocolError::DataDigest { received, computed })
    } else {
        None
    };
    if let Some(error) = data_digest_error {
        return Err(DecodeError::Reject {
            bhs: Box::new(bhs),
            error,
        });
    }
    let ahs = pdu.slice(BHS_LEN..BHS_LEN + ahs_len);
    pdu.advance(data_at);
    pdu.truncate(data_len as usize);
    Ok(Some(RawPdu {
        bhs,
        ahs,
        data: pdu,
    }))
}

/// Appends one PDU to `out`: header (with its digest), data padded to 4 bytes (with its digest).
/// The BHS must already carry the right DataSegmentLength; `ahs` must be a multiple of 4 bytes.
pub fn encode(
    out: &mut BytesMut,
    bhs: &[u8; BHS_LEN],
    ahs: &[u8],
    data: &[u8],
    limits: &FrameLimits,
) {
    debug_assert_eq!(data_len_of(bhs) as usize, data.len());
    debug_assert_eq!(ahs.len() % 4, 0);
    let padded = pad4(data.len());
    out.reserve(BHS_LEN + ahs.len() + 8 + padded);
    let start = out.len();
    out.put_slice(bhs);
    out.put_slice(ahs);
    if limits.header_digest {
        let crc = crc32c(&out[start..]);
        out.put_u32_le(crc);
    }
    if !data.is_empty() {
        let data_start = out.len();
        out.put_slice(data);
        out.put_bytes(0, padded - data.len());
        if limits.data_digest {
            let crc = crc32c(&out[data_start..]);
            out.put_u32_le(crc);
        }
    }
}

/// Header bytes of a PDU with this data length (BHS, header digest), for writing the data separately.
pub fn encode_header(out: &mut BytesMut, bhs: &[u8; BHS_LEN], limits: &FrameLimits) {
    out.put_slice(bhs);
    if limits.header_digest {
        out.put_u32_le(crc32c(bhs));
    }
}

/// Trailer of a data segment written separately: padding and, if negotiated, the data digest.
pub fn encode_data_trailer(out: &mut BytesMut, data: &[u8], limits: &FrameLimits) {
    let pad = pad4(data.len()) - data.len();
    out.put_bytes(0, pad);
    if limits.data_digest && !data.is_empty() {
        let mut crc = crc32c::crc32c(data);
        if pad != 0 {
            crc = crc32c::crc32c_append(crc, &[0u8; 3][..pad]);
        }
        out.put_u32_le(crc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::{NopOut, Pdu};
    use proptest::prelude::*;

    fn nop(data_len: u32) -> [u8; BHS_LEN] {
        Pdu::NopOut(NopOut {
            immediate: true,
            lun: 0,
            itt: 1,
            ttt: 0xffff_ffff,
            cmd_sn: 1,
            exp_stat_sn: 1,
            data_len,
        })
        .encode()
    }

    proptest! {
        #[test]
        fn frames_round_trip(data in proptest::collection::vec(any::<u8>(), 0..3000), hd: bool, dd: bool, split in 0usize..4000) {
            let limits = FrameLimits { header_digest: hd, data_digest: dd, max_data_len: 8192 };
            let bhs = nop(data.len() as u32);
            let mut wire = BytesMut::new();
            encode(&mut wire, &bhs, &[], &data, &limits);
            let mut whole = wire.clone();
            // Fed in two parts, the first part alone never yields a PDU unless it is complete.
            let cut = split.min(wire.len());
            let mut part = BytesMut::from(&wire[..cut]);
            let first = decode(&mut part, &limits).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(first.is_some(), cut == wire.len());
            let got = decode(&mut whole, &limits).map_err(|e| TestCaseError::fail(format!("{e:?}")))?.unwrap();
            prop_assert_eq!(got.bhs, bhs);
            prop_assert_eq!(&got.data[..], &data[..]);
            prop_assert!(whole.is_empty());
        }

        #[test]
        fn split_header_and_trailer_match_encode(data in proptest::collection::vec(any::<u8>(), 1..100), hd: bool, dd: bool) {
            let limits = FrameLimits { header_digest: hd, data_digest: dd, max_data_len: 8192 };
            let bhs = nop(data.len() as u32);
            let mut a = BytesMut::new();
            encode(&mut a, &bhs, &[], &data, &limits);
            let mut b = BytesMut::new();
            encode_header(&mut b, &bhs, &limits);
            b.put_slice(&data);
            encode_data_trailer(&mut b, &data, &limits);
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn bad_digests_are_caught() {
        let limits = FrameLimits {
            header_digest: true,
            data_digest: true,
            max_data_len: 8192,
        };
        let mut wire = BytesMut::new();
        encode(&mut wire, &nop(5), &[], b"hello", &limits);
        let mut bad_data = wire.clone();
        let n = bad_data.len();
        bad_data[n - 8] ^= 1;
        assert!(matches!(
            decode(&mut bad_data, &limits),
            Err(DecodeError::Reject { .. })
        ));
        let mut bad_header = wire.clone();
        bad_header[20] ^= 1;
        assert!(matches!(
            decode(&mut bad_header, &limits),
            Err(DecodeError::Fatal(ProtocolError::HeaderDigest { .. }))
        ));
    }

    #[test]
    fn oversize_segment_is_fatal() {
        let limits = FrameLimits::default();
        let mut wire = BytesMut::from(&nop(8193)[..]);
        assert!(matches!(
            decode(&mut wire, &limits),
            Err(DecodeError::Fatal(ProtocolError::SegmentTooLong {
                len: 8193,
                max: 8192
            }))
        ));
    }

    #[test]
    fn known_crc32c_vector() {
        // RFC 3720 appendix B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a9136aa);
    }
}
