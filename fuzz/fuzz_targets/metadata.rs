//! Metadata superblock decoding on arbitrary bytes: never panic; whatever decodes re-encodes to
//! the same bytes and decodes again to the same superblock; `choose`, `Layout::compute` and
//! `detect_signature` never panic on the same input.
#![no_main]

use twinsan_replication::metadata::{
    choose, detect_signature, Layout, Placement, Superblock, MAGIC, SUPERBLOCK_SIZE,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));

/// Byte 0 steers the run: bit 0 seals the input (valid magic, version and checksum are written
/// over it) so the fuzzer reaches the field checks instead of stopping at the CRC; the rest is
/// the block.
fn run(data: &[u8]) {
    let Some((&steer, rest)) = data.split_first() else {
        return;
    };
    let block = if steer & 1 != 0 {
        sealed(rest)
    } else {
        rest.to_vec()
    };
    round_trip(&block);

    // Two slots from one input: the first 4 KiB and the next 4 KiB (zero-padded).
    let mut slots = block.clone();
    slots.resize(2 * SUPERBLOCK_SIZE, 0);
    let (slot0, slot1) = slots.split_at(SUPERBLOCK_SIZE);
    if let Ok(chosen) = choose(slot0, slot1) {
        assert_eq!(chosen.superblock.slot(), chosen.slot);
        let read = if chosen.slot == 0 { slot0 } else { slot1 };
        assert_eq!(Superblock::decode(read).as_ref(), Ok(&chosen.superblock));
    }

    // Sizes from the first 16 bytes: any backing and metadata device size gives a layout or a
    // TooSmall error, and a layout's parts stay on the device.
    let size = |at: usize| {
        let mut bytes = [0u8; 8];
        let available = block.get(at..at + 8).unwrap_or(&[]);
        bytes[..available.len()].copy_from_slice(available);
        u64::from_le_bytes(bytes)
    };
    let (backing, device) = (size(0), size(8));
    for placement in [
        Placement::Internal,
        Placement::External {
            device_size: device,
        },
    ] {
        if let Ok(layout) = Layout::compute(backing, placement) {
            let end = match placement {
                Placement::Internal => backing,
                Placement::External { device_size } => device_size,
            };
            assert!(layout.metadata.offset + layout.metadata.len <= end);
            if let Ok(superblock) = Superblock::create(&layout, 1, 0, 1, 4) {
                assert_eq!(superblock.check_fits(&layout), Ok(()));
                round_trip(&superblock.encode());
            }
        }
    }

    let _ = detect_signature(&block, &block);
}

/// Whatever decodes re-encodes to the same bytes and decodes to the same superblock.
fn round_trip(block: &[u8]) {
    if let Ok(superblock) = Superblock::decode(block) {
        let encoded = superblock.encode();
        assert_eq!(
            &encoded[..],
            block,
            "decode then encode must give the same bytes"
        );
        assert_eq!(Superblock::decode(&encoded), Ok(superblock));
    }
}

/// `rest` as one 4 KiB block (zero-padded or cut) with a valid magic, version and checksum.
fn sealed(rest: &[u8]) -> Vec<u8> {
    let mut block = rest.to_vec();
    block.resize(SUPERBLOCK_SIZE, 0);
    block[..8].copy_from_slice(&MAGIC);
    block[8..12].copy_from_slice(&1u32.to_le_bytes());
    block[12..16].fill(0);
    let checksum = crc32c::crc32c(&block);
    block[12..16].copy_from_slice(&checksum.to_le_bytes());
    block
}
