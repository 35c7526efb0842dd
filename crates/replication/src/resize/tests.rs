//! The crash-point test of the metadata move: the move runs against a disk that stops persisting after write `k`
//! (and, in a second pass, tears write `k` in half), for every `k`; the disk then attaches
//! ([`locate`](crate::metadata::locate) + bitmap + activity log) with the old size and old metadata or the new size
//! and new metadata, and the data is untouched.

use std::io;

use super::*;
use crate::activity_log::{self, TRANSACTION_BYTES};
use crate::engine::Storage;
use crate::metadata::{locate, Superblock, ACTIVITY_LOG_SLOTS};

/// A disk of bytes: data and metadata on one device (internal) or two (external). Writes after `limit` are lost;
/// with `tear`, write number `limit` itself lands only in its first half.
struct CrashDisk {
    data: Vec<u8>,
    meta: Option<Vec<u8>>,
    writes: usize,
    limit: usize,
    tear: bool,
}

impl CrashDisk {
    fn meta_mut(&mut self) -> &mut Vec<u8> {
        match &mut self.meta {
            Some(meta) => meta,
            None => &mut self.data,
        }
    }
    fn meta(&self) -> &[u8] {
        self.meta.as_deref().unwrap_or(&self.data)
    }
    fn persist(&mut self, offset: u64, bytes: &[u8], meta: bool) -> io::Result<()> {
        let n = self.writes;
        self.writes += 1;
        let keep = if n < self.limit {
            bytes.len()
        } else if n == self.limit && self.tear {
            bytes.len() / 2
        } else {
            0
        };
        let target = if meta {
            self.meta_mut()
        } else {
            &mut self.data
        };
        let end = offset as usize + bytes.len();
        if end > target.len() {
            return Err(io::Error::other("write beyond the end of the device"));
        }
        target[offset as usize..offset as usize + keep].copy_from_slice(&bytes[..keep]);
        Ok(())
    }
}

impl Storage for CrashDisk {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let src = self
            .data
            .get(offset as usize..offset as usize + buf.len())
            .ok_or_else(|| io::Error::other("read beyond the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.persist(offset, data, false)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn read_meta(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let src = self
            .meta()
            .get(offset as usize..offset as usize + buf.len())
            .ok_or_else(|| io::Error::other("read beyond the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_meta(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.persist(offset, data, true)
    }
}

const MIB: u64 = 1 << 20;

/// A volume as `create-md` leaves it plus some history: data pattern, dirty bits, a used activity log.
struct Before {
    disk: CrashDisk,
    layout: Layout,
    sb: Superblock,
    bitmap: DirtyBitmap,
    al: Vec<u8>,
    data: Vec<u8>,
}

fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

fn before(backing: u64, external_meta: Option<u64>) -> Before {
    let placement = match external_meta {
        None => Placement::Internal,
        Some(device_size) => Placement::External { device_size },
    };
    let layout = Layout::compute(backing, placement).expect("layout");
    let mut sb = Superblock::create(&layout, 0xfeed_beef_u128 << 64 | 7, 1, 2, 0x1234).expect("sb");
    sb.flags.consistent = true;
    sb.flags.was_up_to_date = true;
    sb.flags.al_clean = false;
    sb.reservations = vec![9, 8, 7];
    let mut disk = CrashDisk {
        data: vec![0; backing as usize],
        meta: external_meta.map(|size| vec![0; size as usize]),
        writes: 0,
        limit: usize::MAX,
        tear: false,
    };
    let data = pattern(layout.data_size, 3);
    disk.write(0, &data).expect("data");
    for _ in 0..2 {
        disk.write_meta(layout.superblocks[sb.slot()].offset, &sb.encode())
            .expect("sb");
        sb.sequence += 1;
    }
    sb.sequence -= 1;
    let mut bitmap = DirtyBitmap::new(sb.data_size);
    bitmap.set_range(8 * 4096, 3 * 4096).expect("bits");
    bitmap.set_range(sb.data_size - 4096, 4096).expect("bits");
    disk.write_meta(layout.bitmap.offset, &bitmap.to_bytes())
        .expect("bitmap");
    // A used activity log: one real transaction in slot 0.
    let mut log = activity_log::ActivityLog::new(257, ACTIVITY_LOG_SLOTS).expect("al");
    let mut al = vec![0u8; layout.activity_log.len as usize];
    if let Ok(activity_log::AlDecision::CommitFirst(tx)) = log.begin_write(0, 4096) {
        let slot = tx.ring_slot() as usize * TRANSACTION_BYTES;
        al[slot..slot + TRANSACTION_BYTES].copy_from_slice(&tx.encode());
    }
    disk.write_meta(layout.activity_log.offset, &al)
        .expect("al");
    let data = data[..sb.data_size as usize].to_vec();
    Before {
        disk,
        layout,
        sb,
        bitmap,
        al,
        data,
    }
}

/// What an attach sees: the layout and superblock [`locate`] finds, the bitmap and activity log at that layout.
fn attach(
    disk: &mut CrashDisk,
    backing: u64,
    placement: Placement,
) -> (Layout, Superblock, DirtyBitmap, Vec<u8>) {
    let meta = disk.meta().to_vec();
    let (layout, chosen) = locate(backing, placement, |offset, buf| {
        let src = meta
            .get(offset as usize..offset as usize + buf.len())
            .ok_or_else(|| io::Error::other("beyond the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("the volume does not attach: {e}"));
    let sb = chosen.superblock;
    let mut image = vec![0u8; DirtyBitmap::image_bytes(sb.data_size)];
    disk.read_meta(layout.bitmap.offset, &mut image)
        .expect("bitmap");
    if let Placement::External { .. } = placement {
        clear_bits_beyond(sb.data_size, &mut image);
    }
    let bitmap = DirtyBitmap::from_pages(sb.data_size, &image).expect("bitmap decodes");
    let mut al = vec![0u8; layout.activity_log.len as usize];
    disk.read_meta(layout.activity_log.offset, &mut al)
        .expect("al");
    let slots: Vec<[u8; TRANSACTION_BYTES]> = al
        .chunks_exact(TRANSACTION_BYTES)
        .map(|c| c.try_into().expect("slot"))
        .collect();
    activity_log::recover(&slots).expect("activity log recovers");
    (layout, sb, bitmap, al)
}

/// Runs the move with every crash point `k` (and a torn write `k`) and checks each outcome.
fn crash_at_every_write(
    old_backing: u64,
    new_backing: u64,
    external_meta: Option<u64>,
    assume_clean: bool,
) {
    let mut outcomes = [0usize; 2];
    for tear in [false, true] {
        let mut k = 0;
        loop {
            let mut b = before(old_backing, external_meta);
            let placement = match external_meta {
                None => Placement::Internal,
                Some(device_size) => Placement::External { device_size },
            };
            b.disk.data.resize(new_backing as usize, 0);
            let new = new_layout(
                &b.layout,
                new_backing,
                placement,
                Layout::compute(new_backing, placement)
                    .expect("new")
                    .data_size,
            )
            .expect("new layout");
            let new_size = new.data_size;
            let grown = grown_bitmap(&b.bitmap, new_size, assume_clean);
            b.disk.limit = k;
            b.disk.tear = tear;
            b.disk.writes = 0;
            let done =
                grow_metadata(&mut b.disk, &b.layout, &new, &b.sb, &grown, new_size).expect("move");
            let finished = b.disk.writes <= k;
            let (layout, sb, bitmap, al) = attach(&mut b.disk, new_backing, placement);
            // Old or new, never a mix.
            if sb.data_size == b.sb.data_size {
                outcomes[0] += 1;
                assert_eq!(
                    layout.bitmap, b.layout.bitmap,
                    "k={k} tear={tear}: old size, old place"
                );
                assert_eq!(
                    bitmap.to_bytes(),
                    b.bitmap.to_bytes(),
                    "k={k} tear={tear}: old bitmap"
                );
            } else {
                outcomes[1] += 1;
                assert_eq!(sb.data_size, new_size, "k={k} tear={tear}");
                assert_eq!(layout.bitmap, new.bitmap, "k={k} tear={tear}: new place");
                assert_eq!(
                    bitmap.to_bytes(),
                    grown.to_bytes(),
                    "k={k} tear={tear}: new bitmap"
                );
                assert!(sb.sequence > b.sb.sequence);
                if finished {
                    assert_eq!(sb, done);
                }
            }
            assert_eq!(al, b.al, "k={k} tear={tear}: activity log");
            assert_eq!(
                (sb.volume_uuid, sb.current_uuid, sb.flags, &sb.reservations),
                (
                    b.sb.volume_uuid,
                    b.sb.current_uuid,
                    b.sb.flags,
                    &b.sb.reservations
                ),
                "k={k} tear={tear}: identity and state"
            );
            assert_eq!(
                &b.disk.data[..b.data.len()],
                &b.data[..],
                "k={k} tear={tear}: data"
            );
            if finished {
                assert_eq!(sb.data_size, new_size, "a finished move gives the new size");
                break;
            }
            k += 1;
            assert!(k < 64, "the move takes a bounded number of writes");
        }
    }
    assert!(
        outcomes[0] > 0 && outcomes[1] > 0,
        "both outcomes seen: {outcomes:?}"
    );
    eprintln!(
        "{old_backing} -> {new_backing} bytes, external {external_meta:?}, assume_clean {assume_clean}: {} crash \
         points (each write lost and torn, and none), {} attached at the old size, {} at the new",
        outcomes[0] + outcomes[1],
        outcomes[0],
        outcomes[1]
    );
}

#[test]
fn internal_move_survives_a_crash_after_every_write() {
    crash_at_every_write(8 * MIB, 24 * MIB, None, false);
    crash_at_every_write(8 * MIB, 24 * MIB, None, true);
}

#[test]
fn external_bitmap_growth_survives_a_crash_after_every_write() {
    crash_at_every_write(8 * MIB, 140 * MIB, Some(2 * MIB), false);
}

#[test]
fn grown_device_attaches_before_the_move_and_a_second_grow_finds_the_newest() {
    let mut b = before(8 * MIB, None);
    b.disk.data.resize(16 * MIB as usize, 0);
    let (layout, sb, _, _) = attach(&mut b.disk, 16 * MIB, Placement::Internal);
    assert_eq!(
        (layout.bitmap, sb.data_size),
        (b.layout.bitmap, b.sb.data_size)
    );
    let new = new_layout(&b.layout, 16 * MIB, Placement::Internal, 12 * MIB).expect("layout");
    let grown = grown_bitmap(&b.bitmap, 12 * MIB, false);
    let sb1 = grow_metadata(&mut b.disk, &b.layout, &new, &b.sb, &grown, 12 * MIB).expect("move");
    b.disk.data.resize(40 * MIB as usize, 0);
    let (layout, sb, bitmap, _) = attach(&mut b.disk, 40 * MIB, Placement::Internal);
    assert_eq!(
        (layout.bitmap, &sb, bitmap.to_bytes()),
        (new.bitmap, &sb1, grown.to_bytes())
    );
    assert!(bitmap.is_dirty((12 * MIB - 4096) / 4096) && bitmap.is_dirty(8));
}

#[test]
fn sizes_are_agreed_and_shrink_is_refused() {
    assert_eq!(agree_size(8 * MIB, 20 * MIB, 16 * MIB, None), Ok(16 * MIB));
    assert_eq!(
        agree_size(8 * MIB, 20 * MIB, 16 * MIB, Some(12 * MIB)),
        Ok(12 * MIB)
    );
    assert!(matches!(
        agree_size(8 * MIB, 20 * MIB, 16 * MIB, Some(18 * MIB)),
        Err(ResizeError::TooLarge {
            who: "the peer",
            ..
        })
    ));
    assert!(matches!(
        agree_size(8 * MIB, 20 * MIB, 16 * MIB, Some(4 * MIB)),
        Err(ResizeError::Shrink { .. })
    ));
    assert!(matches!(
        agree_size(8 * MIB, 8 * MIB, 16 * MIB, None),
        Err(ResizeError::NotLarger { .. })
    ));
    let message = agree_size(8 * MIB, 20 * MIB, 16 * MIB, Some(4 * MIB))
        .unwrap_err()
        .to_string();
    assert!(message.contains("shrinking is not supported"), "{message}");
}

#[test]
fn a_growth_smaller_than_the_metadata_is_refused() {
    let b = before(8 * MIB, None);
    let err = new_layout(
        &b.layout,
        8 * MIB + 8192,
        Placement::Internal,
        b.sb.data_size + 4096,
    )
    .unwrap_err();
    assert!(matches!(err, ResizeError::GrowthTooSmall { .. }), "{err}");
}

#[test]
fn bits_beyond_the_end_are_cleared() {
    let mut image = vec![0xffu8; 4096];
    clear_bits_beyond(11 * 4096, &mut image);
    assert_eq!((image[0], image[1], image[2]), (0xff, 0x07, 0));
    assert_eq!(
        DirtyBitmap::from_pages(11 * 4096, &image).map(|b| b.dirty_blocks()),
        Ok(11)
    );
}
