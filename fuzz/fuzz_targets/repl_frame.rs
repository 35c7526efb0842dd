//! Replication frames on arbitrary bytes: the streaming decoder never panics and never holds
//! more than one frame of its limit; every message it yields re-encodes to exactly the bytes it
//! came from and decodes again to itself; after an error it takes nothing more. Taking frames in place from
//! a buffer (`push_in_place`, the node's receiver) gives what `push` gives, and the buffer holds at most a frame
//! and a piece.
#![no_main]

use bytes::BytesMut;
use twinsan_replication::wire::{decode, encode, FrameDecoder, FRAME_OVERHEAD, MAGIC};

/// A small limit, so the fuzzer reaches "too long" as easily as "fits".
const MAX_PAYLOAD: u32 = 4096;

/// The type codes of the frame table in `wire.rs`. A stale list only makes sealed inputs less
/// useful (an unknown type is refused like any other garbage), never the target wrong.
const CODES: [u16; 34] = [
    0x0001, 0x0002, 0x0003, 0x0101, 0x0102, 0x0103, 0x0104, 0x0105, 0x0106, 0x0107, 0x0108, 0x0109,
    0x010a, 0x0201, 0x0202, 0x0203, 0x0204, 0x0205, 0x0206, 0x0207, 0x0301, 0x0302, 0x0303, 0x0401,
    0x0402, 0x0403, 0x0404, 0x0405, 0x0406, 0x0407, 0x0408, 0x0409, 0x0501, 0x0502,
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));

/// Byte 0 steers the run. Bit 0 seals the input: the rest becomes one frame with a valid magic
/// and valid checksums, so the fuzzer reaches the payload parser instead of stopping at a CRC.
/// Bits 1..8 pick how many bytes each `push` is offered (0: all at once).
fn run(data: &[u8]) {
    let Some((&steer, rest)) = data.split_first() else {
        return;
    };
    let stream = if steer & 1 != 0 {
        sealed(rest)
    } else {
        rest.to_vec()
    };
    let piece = match usize::from(steer >> 1) {
        0 => usize::MAX,
        n => n,
    };
    check_in_place(&stream, piece);
    check_stream(&stream, piece);
}

/// Decodes `stream` in pieces of `piece` bytes with `push` and with `push_in_place`: the same messages, then
/// the same error if any.
fn check_in_place(stream: &[u8], piece: usize) {
    let pieces = || stream.chunks(piece.min(stream.len()).max(1));
    let mut copied = FrameDecoder::new(MAX_PAYLOAD);
    let mut expected = Vec::new();
    let mut expected_error = None;
    'copied: for mut chunk in pieces() {
        loop {
            let used = copied.push(chunk);
            chunk = &chunk[used..];
            match copied.next_frame() {
                Ok(Some(message)) => expected.push(message),
                Ok(None) => break,
                Err(error) => {
                    expected_error = Some(error);
                    break 'copied;
                }
            }
        }
    }
    let mut decoder = FrameDecoder::new(MAX_PAYLOAD);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut got_error = None;
    'pieces: for chunk in pieces() {
        buf.extend_from_slice(chunk);
        loop {
            decoder.push_in_place(&mut buf);
            match decoder.next_frame() {
                Ok(Some(message)) => got.push(message),
                Ok(None) => break,
                Err(error) => {
                    got_error = Some(error);
                    break 'pieces;
                }
            }
        }
        assert!(buf.len() <= MAX_PAYLOAD as usize + chunk.len());
    }
    assert_eq!(got, expected);
    assert_eq!(got_error, expected_error);
}

/// Decodes `stream` offering `piece` bytes at a time and checks every frame that comes out.
fn check_stream(stream: &[u8], piece: usize) {
    let mut decoder = FrameDecoder::new(MAX_PAYLOAD);
    let mut consumed = 0;
    let mut frame_start = 0;
    while consumed < stream.len() {
        let offered = &stream[consumed..stream.len().min(consumed.saturating_add(piece))];
        let used = decoder.push(offered);
        assert!(used <= offered.len());
        consumed += used;
        match decoder.next_frame() {
            Ok(Some(message)) => {
                let frame = &stream[frame_start..consumed];
                assert!(frame.len() <= MAX_PAYLOAD as usize + FRAME_OVERHEAD);
                assert_eq!(
                    encode(&message),
                    frame,
                    "decode then encode must give the same bytes"
                );
                assert_eq!(decode(frame, MAX_PAYLOAD), Ok(message));
                assert!(decoder.is_idle());
                frame_start = consumed;
            }
            // Without a whole frame, push takes everything it is offered: progress is certain.
            Ok(None) => assert_eq!(used, offered.len()),
            Err(error) => {
                // A refused stream stays refused.
                assert_eq!(decoder.push(&stream[consumed..]), 0);
                assert_eq!(decoder.next_frame(), Err(error));
                return;
            }
        }
    }
}

/// `rest` as one frame that passes both checksums: byte 0 picks the type, bytes 1..3 are the
/// flags, byte 3 the sequence number (0 if even), the remainder the payload.
fn sealed(rest: &[u8]) -> Vec<u8> {
    let byte = |i: usize| rest.get(i).copied().unwrap_or(0);
    let code = CODES[usize::from(byte(0)) % CODES.len()];
    let flags = u16::from_le_bytes([byte(1), byte(2)]);
    let seq = match byte(3) {
        s if s % 2 == 0 => 0,
        s => (u64::from(s) << 40) | u64::from(s),
    };
    let payload = rest.get(4..).unwrap_or(&[]);
    let mut frame = MAGIC.to_vec();
    frame.extend_from_slice(&code.to_le_bytes());
    frame.extend_from_slice(&flags.to_le_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&seq.to_le_bytes());
    let header_crc = crc32c::crc32c(&frame);
    frame.extend_from_slice(&header_crc.to_le_bytes());
    frame.extend_from_slice(payload);
    let crc = crc32c::crc32c(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame
}
