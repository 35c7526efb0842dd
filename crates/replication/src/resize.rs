//! Online resize (`twinsan volume resize`, like `drbdadm resize`): which size the two nodes agree on
//! ([`agree_size`]), and moving this node's metadata so the data area can grow ([`grow_metadata`]).
//!
//! # The move, crash-safe
//!
//! Internal metadata sits at the end of the backing device ([`Layout`]); after the device grew, the new layout has
//! it at the new end, with a bitmap for the larger size. [`grow_metadata`] writes, in this order, each write
//! durable before the next ([`Storage::write_meta`]):
//! 1. the new bitmap image (the old bits, plus the new area's bits unless it is taken as clean);
//! 2. a copy of the activity-log area;
//! 3. the superblock with the new size into its slot at the new place, then again (next sequence) into the other;
//! 4. zeros over the old metadata area, which is now data (so a stale superblock is never found again, and with
//!    `--assume-clean` both nodes hold the same zeros there).
//!
//! The new place never overlaps the old one ([`ResizeError::GrowthTooSmall`] otherwise), so until the first
//! superblock of step 3 is durable the old metadata is intact, and [`metadata::locate`](crate::metadata::locate)
//! finds it (no valid superblock at the new end: it searches downwards); from then on it finds the new one at the
//! end. Either way the volume attaches with the old size and old bitmap, or the new size and new bitmap. The
//! superblock format does not change (the data size and bitmap size fields were always there), so no
//! `FORMAT_VERSION` bump.
//!
//! External metadata keeps its place at the start of its device: only the bitmap grows, in place (the old image is
//! a prefix of the new one), then the superblock is written; the metadata device must be large enough. A crash
//! between the two leaves new-area bits past the end of the old size's image in the bitmap's last page: an attach
//! of external metadata clears them ([`clear_bits_beyond`]) instead of refusing the bitmap.

use crate::bitmap::DirtyBitmap;
use crate::engine::Storage;
use crate::metadata::{human_size, Layout, Placement, Superblock, BLOCK_SIZE, MIN_DATA_SIZE};

/// Why a resize is refused. The text is the message the admin reads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResizeError {
    /// The agreed size would be smaller than the volume: shrinking is not supported.
    #[error(
        "shrinking is not supported: the volume holds {} and the new size would be {} (grow the backing \
         devices on both nodes first, or give a --size of at least the current size)",
        human_size(*current),
        human_size(*new)
    )]
    Shrink {
        /// Bytes now.
        current: u64,
        /// Bytes asked for or agreed.
        new: u64,
    },
    /// The devices did not grow: the agreed size is the current one.
    #[error(
        "nothing to do: the volume already holds {} and {} can hold no more (grow the backing device first)",
        human_size(*current),
        who
    )]
    NotLarger {
        /// Bytes now.
        current: u64,
        /// Which node's device is the limit.
        who: &'static str,
    },
    /// `--size` is more than a node can hold.
    #[error("--size {} is more than {} can hold ({})", human_size(*requested), who, human_size(*usable))]
    TooLarge {
        /// Bytes asked for.
        requested: u64,
        /// Bytes the node can hold.
        usable: u64,
        /// Which node.
        who: &'static str,
    },
    /// `--size` is not a whole number of 4 KiB blocks.
    #[error("--size must be a multiple of 4 KiB, got {0} bytes")]
    Unaligned(u64),
    /// The device grew by less than the metadata needs to move without overlapping its old place.
    #[error(
        "the backing device grew by {}, less than the {} the metadata needs to move to its new end without \
         overlapping its old place; grow it further",
        human_size(*grown),
        human_size(*needed)
    )]
    GrowthTooSmall {
        /// Bytes the device grew.
        grown: u64,
        /// Bytes it must grow at least.
        needed: u64,
    },
    /// The layout for the new size cannot be computed (an external metadata device too small, for example).
    #[error("{0}")]
    Layout(String),
}

/// The size both nodes take: the smaller of the two usable sizes, or `requested` if it fits both. Refuses a
/// shrink, a size no node can hold and a resize that changes nothing.
pub fn agree_size(
    current: u64,
    local_usable: u64,
    peer_usable: u64,
    requested: Option<u64>,
) -> Result<u64, ResizeError> {
    let new = match requested {
        Some(size) => {
            if !size.is_multiple_of(BLOCK_SIZE) {
                return Err(ResizeError::Unaligned(size));
            }
            for (usable, who) in [(local_usable, "this node"), (peer_usable, "the peer")] {
                if size > usable {
                    return Err(ResizeError::TooLarge {
                        requested: size,
                        usable,
                        who,
                    });
                }
            }
            size
        }
        None => local_usable.min(peer_usable),
    };
    if new < current {
        return Err(ResizeError::Shrink { current, new });
    }
    if new == current {
        let who = if requested.is_some() {
            "--size"
        } else if local_usable <= peer_usable {
            "this node's backing device"
        } else {
            "the peer's backing device"
        };
        return Err(ResizeError::NotLarger { current, who });
    }
    Ok(new.max(MIN_DATA_SIZE))
}

/// The layout this node's metadata moves to for a backing device of `backing_size` bytes (and, for external
/// metadata, a metadata device of the size in `placement`), checked against the current layout `old`: it must
/// hold `new_size` bytes of data, and internal metadata must not overlap its old place.
pub fn new_layout(
    old: &Layout,
    backing_size: u64,
    placement: Placement,
    new_size: u64,
) -> Result<Layout, ResizeError> {
    let new =
        Layout::compute(backing_size, placement).map_err(|e| ResizeError::Layout(e.to_string()))?;
    if new.data_size < new_size {
        return Err(ResizeError::TooLarge {
            requested: new_size,
            usable: new.data_size,
            who: "this node",
        });
    }
    if let Placement::Internal = placement {
        let old_end = old.metadata.end();
        if new.metadata.offset < old_end {
            let grown = new.metadata.end().saturating_sub(old_end);
            return Err(ResizeError::GrowthTooSmall {
                grown,
                needed: new.metadata.len,
            });
        }
    }
    Ok(new)
}

/// The bitmap for `new_size` bytes: every bit of `old`, and the new area `[old size, new_size)` dirty unless
/// `assume_clean`.
pub fn grown_bitmap(old: &DirtyBitmap, new_size: u64, assume_clean: bool) -> DirtyBitmap {
    let old_size = old.data_size();
    let mut image = old.to_bytes();
    image.resize(DirtyBitmap::image_bytes(new_size), 0);
    // The old image is a prefix of the new one (bit i is block i), and it was valid for the smaller size.
    let mut bitmap = DirtyBitmap::from_pages(new_size, &image).unwrap_or_else(|_| {
        let mut fresh = DirtyBitmap::new(new_size);
        fresh.set_all();
        fresh
    });
    if !assume_clean && new_size > old_size {
        let _ = bitmap.set_range(old_size, new_size - old_size);
    }
    bitmap
}

/// Clears the bits past `data_size` in a bitmap image read from disk: what an interrupted in-place growth of an
/// external bitmap leaves (see the module docs). Only external metadata needs it; internal metadata writes the
/// grown bitmap elsewhere.
pub fn clear_bits_beyond(data_size: u64, image: &mut [u8]) {
    let blocks = data_size.div_ceil(crate::metadata::BITMAP_GRANULARITY);
    let first_byte = blocks.div_ceil(8) as usize;
    if let Some(partial) = blocks.checked_rem(8).filter(|r| *r != 0) {
        if let Some(byte) = image.get_mut(first_byte - 1) {
            *byte &= (1u8 << partial) - 1;
        }
    }
    if let Some(rest) = image.get_mut(first_byte..) {
        rest.fill(0);
    }
}

/// Moves (internal) or grows (external) this node's metadata from `old` to `new` for `new_size` bytes of data,
/// crash-safe (see the module docs), and returns the superblock now in use. `sb` is the current superblock;
/// `bitmap` the grown bitmap ([`grown_bitmap`]). On an error the old metadata is still the valid one unless the
/// error came after the first new superblock was written (then the new one is); the caller treats it as a disk
/// failure.
pub fn grow_metadata<S: Storage + ?Sized>(
    storage: &mut S,
    old: &Layout,
    new: &Layout,
    sb: &Superblock,
    bitmap: &DirtyBitmap,
    new_size: u64,
) -> std::io::Result<Superblock> {
    // 1. the bitmap, 2. the activity log (internal: copied to the new place; external: it stays).
    storage.write_meta(new.bitmap.offset, &bitmap.to_bytes())?;
    if new.activity_log != old.activity_log {
        let mut al = vec![0u8; old.activity_log.len as usize];
        storage.read_meta(old.activity_log.offset, &mut al)?;
        storage.write_meta(new.activity_log.offset, &al)?;
    }
    // 3. the superblock, in both slots of the new place.
    let mut next = sb.clone();
    next.data_size = new_size;
    next.bitmap_size = new.bitmap.len;
    next.check()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    for _ in 0..2 {
        next.sequence += 1;
        storage.write_meta(new.superblocks[next.slot()].offset, &next.encode())?;
        if new.superblocks == old.superblocks {
            // External: the other slot holds the previous copy, a valid fallback; one write is the update.
            break;
        }
    }
    // 4. the old place is data now.
    if new.metadata.offset != old.metadata.offset && old.metadata.end() <= new.metadata.offset {
        let zeros = vec![0u8; old.metadata.len.min(1 << 20) as usize];
        let mut done = 0;
        while done < old.metadata.len {
            let n = (old.metadata.len - done).min(zeros.len() as u64);
            storage.write_meta(old.metadata.offset + done, &zeros[..n as usize])?;
            done += n;
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests;
