//! Stored persistent reservation state from arbitrary bytes: `reservations_after_power_loss` (which decodes it)
//! never panics, gives either nothing or state that decodes again, and is idempotent. Byte 0 steers: bit 0 frames
//! the rest with a valid header and checksum, so the fuzzer reaches the field and consistency checks.
#![no_main]

use twinsan_scsi::reservations_after_power_loss;

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let stored = if flags & 1 != 0 && rest.len() >= 11 {
        // magic, version 1, header bytes 5..16 from the input, the true body length, the body, CRC-32C.
        let (header, body) = rest.split_at(11);
        let mut b = b"TWPR\x01".to_vec();
        b.extend_from_slice(header);
        b.extend_from_slice(&(body.len() as u32).to_be_bytes());
        b.extend_from_slice(body);
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    } else {
        rest.to_vec()
    };
    let once = reservations_after_power_loss(&stored);
    let twice = reservations_after_power_loss(&once);
    assert_eq!(once, twice, "the power-on state is its own power-on state");
}
