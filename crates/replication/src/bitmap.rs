//! The per-peer dirty bitmap: which 4 KiB blocks of the volume are out of sync with one peer.
//!
//! One bit per [`BLOCK_BYTES`] block, set when a write may have reached this node's disk but not the peer's
//! (peer disconnected, failed peer write, extents of the activity log after a primary crash), cleared when resync
//! has copied the block. The count of dirty blocks is kept as the bits change, so progress (`done:NN.NN`) and
//! "anything to resync?" are O(1).
//!
//! # On-disk form (no I/O here)
//! The bitmap is stored as little-endian `u64` words, bit `b % 64` of word `b / 64` standing for block `b`, in
//! [`PAGE_BYTES`] pages; one page covers 32768 blocks (128 MiB of data). The bitmap remembers which pages changed
//! since the last flush ([`DirtyBitmap::unflushed_pages`]), so the engine writes only those, and
//! [`DirtyBitmap::from_pages`] loads and validates the whole image.
//!
//! # Architecture invariants
//! - No bit is ever set for a block at or beyond the end of the volume; a loaded image that has one is refused.
//! - [`DirtyBitmap::dirty_blocks`] equals the number of set bits at all times.
//! - A page whose bytes differ from what was last flushed is always listed by
//!   [`DirtyBitmap::unflushed_pages`] (the converse need not hold: a bit set then cleared still lists its page).

use thiserror::Error;

/// Bytes of data covered by one bit.
pub const BLOCK_BYTES: u64 = 4096;
/// Bytes of one bitmap page, the unit the engine writes to disk.
pub const PAGE_BYTES: usize = 4096;
/// Bitmap words (`u64`) in one page.
const WORDS_PER_PAGE: usize = PAGE_BYTES / 8;
/// Blocks covered by one page.
pub const BLOCKS_PER_PAGE: u64 = (PAGE_BYTES as u64) * 8;

/// Why a bitmap operation or a bitmap image was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum BitmapError {
    /// A range reaches beyond the end of the volume.
    #[error("range of {count} blocks at block {first} is beyond the volume's {blocks} blocks")]
    OutOfRange {
        /// First block of the range.
        first: u64,
        /// Blocks in the range.
        count: u64,
        /// Blocks in the volume.
        blocks: u64,
    },
    /// A bitmap image does not have the length the volume size implies.
    #[error("bitmap image is {actual} bytes, a volume of this size needs {expected}")]
    WrongLength {
        /// Bytes the volume size needs.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// A bitmap image marks a block beyond the end of the volume (corrupt or from a different volume size).
    #[error("bitmap image marks block {block}, beyond the volume's {blocks} blocks")]
    BitBeyondEnd {
        /// The first such block.
        block: u64,
        /// Blocks in the volume.
        blocks: u64,
    },
    /// Two bitmaps of different volume sizes cannot be merged.
    #[error("cannot merge a bitmap of {other} blocks into one of {blocks}")]
    SizeMismatch {
        /// Blocks in this bitmap.
        blocks: u64,
        /// Blocks in the other bitmap.
        other: u64,
    },
    /// A page index beyond the bitmap's pages.
    #[error("page {page} is beyond the bitmap's {pages} pages")]
    NoSuchPage {
        /// Page asked for.
        page: u64,
        /// Pages in the bitmap.
        pages: u64,
    },
}

/// The out-of-sync blocks of a volume towards one peer, one bit per 4 KiB block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyBitmap {
    data_size: u64,
    blocks: u64,
    /// Always a whole number of pages, so a page is a plain slice; bits past `blocks` stay zero.
    words: Vec<u64>,
    dirty: u64,
    /// One bit per page: changed since the last [`DirtyBitmap::mark_flushed`].
    unflushed: Vec<u64>,
}

impl DirtyBitmap {
    /// An all-clean bitmap for a volume of `data_size` bytes (a partial last block counts as a block).
    pub fn new(data_size: u64) -> Self {
        let blocks = data_size.div_ceil(BLOCK_BYTES);
        let pages = pages_for_blocks(blocks);
        DirtyBitmap {
            data_size,
            blocks,
            words: vec![0; pages * WORDS_PER_PAGE],
            dirty: 0,
            unflushed: vec![0; pages.div_ceil(64)],
        }
    }

    /// Bytes of the on-disk image for a volume of `data_size` bytes (a whole number of pages).
    pub fn image_bytes(data_size: u64) -> usize {
        pages_for_blocks(data_size.div_ceil(BLOCK_BYTES)) * PAGE_BYTES
    }

    /// Loads a bitmap from its on-disk image, checking its length and that no bit lies beyond the volume.
    pub fn from_pages(data_size: u64, bytes: &[u8]) -> Result<Self, BitmapError> {
        let mut bitmap = DirtyBitmap::new(data_size);
        let expected = bitmap.words.len() * 8;
        if bytes.len() != expected {
            return Err(BitmapError::WrongLength {
                expected,
                actual: bytes.len(),
            });
        }
        let mut dirty = 0;
        for (word, chunk) in bitmap.words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(chunk);
            *word = u64::from_le_bytes(le);
            dirty += u64::from(word.count_ones());
        }
        // A bit past the end means the image belongs to another size or is corrupt: refusing it beats resyncing
        // blocks that do not exist or silently dropping bits.
        if let Some(block) = bitmap.next_set_bit(bitmap.blocks, bitmap.capacity_bits()) {
            return Err(BitmapError::BitBeyondEnd {
                block,
                blocks: bitmap.blocks,
            });
        }
        bitmap.dirty = dirty;
        Ok(bitmap)
    }

    /// The whole on-disk image ([`DirtyBitmap::image_bytes`] long).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Size of the volume in bytes.
    pub fn data_size(&self) -> u64 {
        self.data_size
    }

    /// Blocks in the volume (bits in use).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Pages in the on-disk image.
    pub fn page_count(&self) -> u64 {
        (self.words.len() / WORDS_PER_PAGE) as u64
    }

    /// Number of dirty blocks (kept up to date, O(1)).
    pub fn dirty_blocks(&self) -> u64 {
        self.dirty
    }

    /// Bytes of data in dirty blocks; a dirty partial last block counts only its bytes.
    pub fn dirty_bytes(&self) -> u64 {
        let bytes = self.dirty * BLOCK_BYTES;
        let tail = self.data_size % BLOCK_BYTES;
        if tail != 0 && self.is_dirty(self.blocks - 1) {
            bytes - (BLOCK_BYTES - tail)
        } else {
            bytes
        }
    }

    /// Whether `block` is dirty; blocks beyond the volume are clean.
    pub fn is_dirty(&self, block: u64) -> bool {
        block < self.blocks && self.words[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    /// Marks dirty every block that the byte range `offset..offset + len` touches, even partly.
    pub fn set_range(&mut self, offset: u64, len: u64) -> Result<(), BitmapError> {
        if len == 0 {
            return Ok(());
        }
        let first = offset / BLOCK_BYTES;
        let last = offset.saturating_add(len - 1) / BLOCK_BYTES;
        self.set_blocks(first, last - first + 1)
    }

    /// Marks dirty `count` blocks from block `first`.
    pub fn set_blocks(&mut self, first: u64, count: u64) -> Result<(), BitmapError> {
        self.check_blocks(first, count)?;
        self.apply(first, first + count, true);
        Ok(())
    }

    /// Marks clean `count` blocks from block `first` (resync copies whole blocks, so clearing takes blocks).
    pub fn clear_blocks(&mut self, first: u64, count: u64) -> Result<(), BitmapError> {
        self.check_blocks(first, count)?;
        self.apply(first, first + count, false);
        Ok(())
    }

    /// Marks every block dirty (full sync).
    pub fn set_all(&mut self) {
        self.apply(0, self.blocks, true);
    }

    /// Marks every block clean.
    pub fn clear_all(&mut self) {
        self.apply(0, self.blocks, false);
    }

    /// Adds the dirty blocks of `other` (a bitmap of the same volume) to this one, as when combining the
    /// peer's bitmap at connect.
    pub fn merge(&mut self, other: &DirtyBitmap) -> Result<(), BitmapError> {
        if other.blocks != self.blocks {
            return Err(BitmapError::SizeMismatch {
                blocks: self.blocks,
                other: other.blocks,
            });
        }
        for (i, (word, theirs)) in self.words.iter_mut().zip(&other.words).enumerate() {
            let new = theirs & !*word;
            if new != 0 {
                *word |= new;
                self.dirty += u64::from(new.count_ones());
                mark_page(&mut self.unflushed, i / WORDS_PER_PAGE);
            }
        }
        Ok(())
    }

    /// The first dirty block at or after `from`.
    pub fn next_dirty(&self, from: u64) -> Option<u64> {
        self.next_set_bit(from, self.blocks)
    }

    /// The dirty runs `(first_block, count)` at or after block `from`, in order; a run that started before
    /// `from` is reported from `from`.
    pub fn dirty_runs(&self, from: u64) -> DirtyRuns<'_> {
        DirtyRuns {
            bitmap: self,
            position: from,
        }
    }

    /// Indices of the pages changed since the last [`DirtyBitmap::mark_flushed`], in order.
    pub fn unflushed_pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.unflushed.iter().enumerate().flat_map(|(i, &word)| {
            let base = i as u64 * 64;
            SetBits(word).map(move |bit| base + bit)
        })
    }

    /// Whether any page changed since the last flush.
    pub fn has_unflushed_pages(&self) -> bool {
        self.unflushed.iter().any(|&w| w != 0)
    }

    /// The on-disk bytes of page `page`.
    pub fn page_bytes(&self, page: u64) -> Result<[u8; PAGE_BYTES], BitmapError> {
        if page >= self.page_count() {
            return Err(BitmapError::NoSuchPage {
                page,
                pages: self.page_count(),
            });
        }
        let start = page as usize * WORDS_PER_PAGE;
        let mut out = [0u8; PAGE_BYTES];
        for (chunk, word) in out
            .chunks_exact_mut(8)
            .zip(&self.words[start..start + WORDS_PER_PAGE])
        {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        Ok(out)
    }

    /// Forgets which pages changed. The engine takes [`DirtyBitmap::page_bytes`] of every unflushed page and
    /// calls this before anything else changes the bitmap; a later change is then tracked for the next flush.
    pub fn mark_flushed(&mut self) {
        self.unflushed.iter_mut().for_each(|w| *w = 0);
    }

    fn capacity_bits(&self) -> u64 {
        self.words.len() as u64 * 64
    }

    fn check_blocks(&self, first: u64, count: u64) -> Result<(), BitmapError> {
        match first.checked_add(count) {
            Some(end) if end <= self.blocks => Ok(()),
            _ => Err(BitmapError::OutOfRange {
                first,
                count,
                blocks: self.blocks,
            }),
        }
    }

    /// Sets or clears blocks `start..end` (already checked), a word at a time, keeping the count and the
    /// unflushed pages exact to the bits that really changed.
    fn apply(&mut self, start: u64, end: u64, set: bool) {
        if start >= end {
            return;
        }
        let first_word = (start / 64) as usize;
        let last_word = ((end - 1) / 64) as usize;
        for i in first_word..=last_word {
            let lo = if i == first_word { start % 64 } else { 0 };
            let hi = if i == last_word { (end - 1) % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            let word = &mut self.words[i];
            let changed = if set { mask & !*word } else { mask & *word };
            if changed == 0 {
                continue;
            }
            if set {
                *word |= changed;
                self.dirty += u64::from(changed.count_ones());
            } else {
                *word &= !changed;
                self.dirty -= u64::from(changed.count_ones());
            }
            mark_page(&mut self.unflushed, i / WORDS_PER_PAGE);
        }
    }

    /// First set bit in `from..end`, skipping zero words.
    fn next_set_bit(&self, from: u64, end: u64) -> Option<u64> {
        if from >= end {
            return None;
        }
        let mut i = (from / 64) as usize;
        let mut word = self.words[i] & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                let bit = i as u64 * 64 + u64::from(word.trailing_zeros());
                return (bit < end).then_some(bit);
            }
            i += 1;
            if i as u64 * 64 >= end {
                return None;
            }
            word = self.words[i];
        }
    }

    /// First clear bit in `from..end`, or `end`, skipping all-ones words.
    fn next_clear_bit(&self, from: u64, end: u64) -> u64 {
        if from >= end {
            return end;
        }
        let mut i = (from / 64) as usize;
        let mut word = !self.words[i] & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                return (i as u64 * 64 + u64::from(word.trailing_zeros())).min(end);
            }
            i += 1;
            if i as u64 * 64 >= end {
                return end;
            }
            word = !self.words[i];
        }
    }
}

/// Iterator over the dirty runs of a [`DirtyBitmap`], from [`DirtyBitmap::dirty_runs`].
#[derive(Clone, Debug)]
pub struct DirtyRuns<'a> {
    bitmap: &'a DirtyBitmap,
    position: u64,
}

impl Iterator for DirtyRuns<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let first = self.bitmap.next_dirty(self.position)?;
        let end = self.bitmap.next_clear_bit(first, self.bitmap.blocks);
        self.position = end;
        Some((first, end - first))
    }
}

/// Indices of the set bits of one word, lowest first.
struct SetBits(u64);

impl Iterator for SetBits {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.0 == 0 {
            return None;
        }
        let bit = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(u64::from(bit))
    }
}

fn pages_for_blocks(blocks: u64) -> usize {
    blocks.div_ceil(BLOCKS_PER_PAGE) as usize
}

fn mark_page(unflushed: &mut [u64], page: usize) {
    unflushed[page / 64] |= 1 << (page % 64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn set_range_marks_every_touched_block() {
        let mut b = DirtyBitmap::new(64 * 1024);
        // 512 bytes straddling blocks 0 and 1.
        b.set_range(4096 - 512, 1024).unwrap();
        assert!(b.is_dirty(0) && b.is_dirty(1) && !b.is_dirty(2));
        assert_eq!(b.dirty_blocks(), 2);
        // Setting again changes nothing.
        b.set_range(0, 512).unwrap();
        assert_eq!(b.dirty_blocks(), 2);
        assert_eq!(b.dirty_runs(0).collect::<Vec<_>>(), vec![(0, 2)]);
    }

    #[test]
    fn ranges_beyond_the_end_are_refused() {
        let mut b = DirtyBitmap::new(8 * 4096);
        assert!(b.set_range(7 * 4096, 4096).is_ok());
        assert_eq!(
            b.set_range(7 * 4096, 4097),
            Err(BitmapError::OutOfRange {
                first: 7,
                count: 2,
                blocks: 8
            })
        );
        assert!(b.clear_blocks(u64::MAX, 2).is_err());
        assert_eq!(b.dirty_blocks(), 1);
    }

    #[test]
    fn partial_last_block_counts_only_its_bytes() {
        let mut b = DirtyBitmap::new(3 * 4096 + 512);
        assert_eq!(b.blocks(), 4);
        b.set_all();
        assert_eq!(b.dirty_blocks(), 4);
        assert_eq!(b.dirty_bytes(), 3 * 4096 + 512);
        b.clear_blocks(3, 1).unwrap();
        assert_eq!(b.dirty_bytes(), 3 * 4096);
    }

    #[test]
    fn runs_cross_word_and_page_boundaries() {
        let mut b = DirtyBitmap::new(1024 * MIB); // 262144 blocks, 8 pages
        b.set_blocks(60, 10).unwrap();
        b.set_blocks(BLOCKS_PER_PAGE - 3, 200).unwrap();
        b.set_blocks(b.blocks() - 1, 1).unwrap();
        assert_eq!(
            b.dirty_runs(0).collect::<Vec<_>>(),
            vec![(60, 10), (BLOCKS_PER_PAGE - 3, 200), (b.blocks() - 1, 1)]
        );
        assert_eq!(
            b.dirty_runs(65).next(),
            Some((65, 5)),
            "a run is reported from the start position"
        );
        assert_eq!(b.next_dirty(70), Some(BLOCKS_PER_PAGE - 3));
        assert_eq!(b.unflushed_pages().collect::<Vec<_>>(), vec![0, 1, 7]);
        b.mark_flushed();
        assert!(!b.has_unflushed_pages());
        b.clear_blocks(BLOCKS_PER_PAGE, 1).unwrap();
        assert_eq!(b.unflushed_pages().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn merge_ors_and_checks_size() {
        let mut a = DirtyBitmap::new(MIB);
        let mut b = DirtyBitmap::new(MIB);
        a.set_blocks(0, 10).unwrap();
        b.set_blocks(5, 10).unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a.dirty_runs(0).collect::<Vec<_>>(), vec![(0, 15)]);
        assert_eq!(a.dirty_blocks(), 15);
        assert!(matches!(
            a.merge(&DirtyBitmap::new(2 * MIB)),
            Err(BitmapError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn load_refuses_wrong_length_and_bits_past_the_end() {
        let mut b = DirtyBitmap::new(100 * 4096);
        b.set_blocks(99, 1).unwrap();
        let mut image = b.to_bytes();
        assert_eq!(image.len(), PAGE_BYTES);
        assert_eq!(DirtyBitmap::from_pages(100 * 4096, &image).unwrap(), {
            let mut loaded = b.clone();
            loaded.mark_flushed();
            loaded
        });
        assert!(matches!(
            DirtyBitmap::from_pages(100 * 4096, &image[..PAGE_BYTES - 1]),
            Err(BitmapError::WrongLength { .. })
        ));
        image[100 / 8] |= 1 << (100 % 8);
        assert_eq!(
            DirtyBitmap::from_pages(100 * 4096, &image),
            Err(BitmapError::BitBeyondEnd {
                block: 100,
                blocks: 100
            })
        );
    }

    #[test]
    fn empty_volume_has_no_pages() {
        let mut b = DirtyBitmap::new(0);
        b.set_all();
        assert_eq!(b.dirty_blocks(), 0);
        assert_eq!(b.page_count(), 0);
        assert_eq!(b.next_dirty(0), None);
        assert!(DirtyBitmap::from_pages(0, &[]).is_ok());
        assert!(b.page_bytes(0).is_err());
    }

    /// Operations of the property test; offsets and lengths are 512-byte aligned, as the engine passes them.
    #[derive(Clone, Debug)]
    enum Op {
        Set { sector: u64, sectors: u64 },
        Clear { block: u64, count: u64 },
        Merge(Vec<(u64, u64)>),
        SetAll,
        ClearAll,
        Flush,
    }

    fn op(sectors: u64) -> impl Strategy<Value = Op> {
        let blocks = sectors.div_ceil(8);
        let range = (0..sectors.max(1), 1..(sectors / 4).max(2));
        prop_oneof![
            6 => range.clone().prop_map(|(sector, sectors)| Op::Set { sector, sectors }),
            4 => (0..blocks.max(1), 1..(blocks / 4).max(2)).prop_map(|(block, count)| Op::Clear { block, count }),
            1 => proptest::collection::vec(range, 0..4).prop_map(Op::Merge),
            1 => Just(Op::SetAll),
            1 => Just(Op::ClearAll),
            2 => Just(Op::Flush),
        ]
    }

    fn scenario() -> impl Strategy<Value = (u64, Vec<Op>)> {
        // Sizes in 512-byte sectors (so often a partial last block): a few words, or up to about three and a half
        // pages, so runs and flushes cross word and page boundaries.
        prop_oneof![1..2_000u64, 1..950_000u64]
            .prop_flat_map(|sectors| (Just(sectors), proptest::collection::vec(op(sectors), 0..40)))
    }

    /// The model's image: little-endian words, bit b%64 of word b/64.
    fn model_image(model: &[bool], bytes: usize) -> Vec<u8> {
        let mut out = vec![0u8; bytes];
        for (block, _) in model.iter().enumerate().filter(|(_, d)| **d) {
            out[block / 8] |= 1 << (block % 8);
        }
        out
    }

    fn model_runs(model: &[bool], from: usize) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut i = from;
        while i < model.len() {
            if model[i] {
                let start = i;
                while i < model.len() && model[i] {
                    i += 1;
                }
                runs.push((start as u64, (i - start) as u64));
            } else {
                i += 1;
            }
        }
        runs
    }

    fn apply_set(bitmap: &mut DirtyBitmap, model: &mut [bool], sector: u64, sectors: u64) {
        let (offset, len) = (sector * 512, sectors * 512);
        let result = bitmap.set_range(offset, len);
        let first = offset / BLOCK_BYTES;
        let end = (offset + len).div_ceil(BLOCK_BYTES);
        if end <= model.len() as u64 {
            assert!(result.is_ok());
            model[first as usize..end as usize].fill(true);
        } else {
            assert!(result.is_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn agrees_with_a_vec_of_bools((sectors, ops) in scenario(), from in 0..120_000usize) {
            let data_size = sectors * 512;
            let mut bitmap = DirtyBitmap::new(data_size);
            let mut model = vec![false; bitmap.blocks() as usize];
            let mut disk = bitmap.to_bytes();
            for op in ops {
                match op {
                    Op::Set { sector, sectors } => apply_set(&mut bitmap, &mut model, sector, sectors),
                    Op::Clear { block, count } => {
                        let result = bitmap.clear_blocks(block, count);
                        if block + count <= model.len() as u64 {
                            prop_assert!(result.is_ok());
                            model[block as usize..(block + count) as usize].fill(false);
                        } else {
                            prop_assert!(result.is_err());
                        }
                    }
                    Op::Merge(sets) => {
                        let mut other = DirtyBitmap::new(data_size);
                        let mut other_model = vec![false; model.len()];
                        for (sector, sectors) in sets {
                            apply_set(&mut other, &mut other_model, sector, sectors);
                        }
                        bitmap.merge(&other).unwrap();
                        model.iter_mut().zip(&other_model).for_each(|(m, o)| *m |= o);
                    }
                    Op::SetAll => {
                        bitmap.set_all();
                        model.fill(true);
                    }
                    Op::ClearAll => {
                        bitmap.clear_all();
                        model.fill(false);
                    }
                    Op::Flush => {
                        for page in bitmap.unflushed_pages().collect::<Vec<_>>() {
                            let at = page as usize * PAGE_BYTES;
                            disk[at..at + PAGE_BYTES].copy_from_slice(&bitmap.page_bytes(page).unwrap());
                        }
                        bitmap.mark_flushed();
                    }
                }
                prop_assert_eq!(bitmap.dirty_blocks(), model.iter().filter(|d| **d).count() as u64);
            }
            let image = bitmap.to_bytes();
            prop_assert_eq!(&image, &model_image(&model, DirtyBitmap::image_bytes(data_size)));
            // Pages not listed as unflushed are exactly what the simulated disk holds.
            let unflushed: Vec<u64> = bitmap.unflushed_pages().collect();
            for page in 0..bitmap.page_count() {
                let at = page as usize * PAGE_BYTES;
                let page_image = &image[at..at + PAGE_BYTES];
                prop_assert_eq!(&bitmap.page_bytes(page).unwrap()[..], page_image);
                if !unflushed.contains(&page) {
                    prop_assert_eq!(&disk[at..at + PAGE_BYTES], page_image, "page {} changed unnoticed", page);
                }
            }
            let from = from.min(model.len());
            prop_assert_eq!(bitmap.dirty_runs(from as u64).collect::<Vec<_>>(), model_runs(&model, from));
            prop_assert_eq!(
                bitmap.next_dirty(from as u64),
                model.iter().skip(from).position(|d| *d).map(|i| (from + i) as u64)
            );
            let expected_bytes: u64 = model_runs(&model, 0)
                .iter()
                .map(|&(first, count)| ((first + count) * BLOCK_BYTES).min(data_size) - first * BLOCK_BYTES)
                .sum();
            prop_assert_eq!(bitmap.dirty_bytes(), expected_bytes);
            // load(store(x)) == x, apart from the flush bookkeeping, which a fresh load starts without.
            let mut loaded = DirtyBitmap::from_pages(data_size, &image).unwrap();
            prop_assert!(!loaded.has_unflushed_pages());
            bitmap.mark_flushed();
            loaded.mark_flushed();
            prop_assert_eq!(loaded, bitmap);
        }
    }
}
