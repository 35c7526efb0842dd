//! Logical block provisioning (SBC-3 4.7, 5.28, 5.45/5.46, 5.16): UNMAP, WRITE SAME (10)/(16) and GET LBA
//! STATUS.
//!
//! A thin provisioned logical unit (the device [supports unmap](crate::BlockDevice::supports_unmap)) deallocates
//! on UNMAP and on WRITE SAME with the UNMAP bit, whatever the block of a WRITE SAME holds (SBC-4: UNMAP=1,
//! ANCHOR=0 "should deallocate each LBA"); a deallocated block reads as zeros (LBPRZ). A fully provisioned one
//! answers UNMAP as an unimplemented command and the UNMAP bit as an invalid field, as SBC has it for a logical
//! unit without LBPME. Nothing is ever anchored (ANC_SUP=0).

use super::range::Access;
use super::{
    byte_offset, one_block, truncated, LogicalUnit, BLOCK_SIZE, MAX_UNMAP_BLOCKS,
    MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS,
};
use crate::cdb::CdbSize;
use crate::sense::Sense;

/// Length of the UNMAP parameter list header and of one block descriptor.
const UNMAP_HEADER: usize = 8;
const UNMAP_DESCRIPTOR: usize = 16;
/// GET LBA STATUS: parameter data header, one LBA status descriptor, and the most parameter data we build (the
/// allocation length beyond is never filled).
const LBA_STATUS_HEADER: usize = 8;
const LBA_STATUS_DESCRIPTOR: usize = 16;
const MAX_LBA_STATUS_BYTES: usize = 64 * 1024;
/// Most [`mapped_extent`](crate::BlockDevice::mapped_extent) queries one GET LBA STATUS makes.
const MAX_EXTENT_QUERIES: usize = 16 * 1024;
/// PROVISIONING STATUS of an LBA status descriptor.
const MAPPED: u8 = 0x0;
const DEALLOCATED: u8 = 0x1;

impl LogicalUnit {
    /// WRITE SAME (10)/(16).
    pub(super) fn write_same(
        &self,
        size: CdbSize,
        lba: u64,
        blocks: u32,
        unmap: bool,
        ndob: bool,
        data_out: &[u8],
    ) -> Result<(), Sense> {
        if unmap && !self.thin {
            return Err(Sense::invalid_field_in_cdb(1, 3));
        }
        if self.read_only {
            return Err(Sense::write_protected());
        }
        // NUMBER OF LOGICAL BLOCKS 0 (WSNZ=0): from LBA to the end of the medium.
        self.check_range(lba, u64::from(blocks))?;
        let count = if blocks == 0 {
            self.capacity_blocks() - lba
        } else {
            u64::from(blocks)
        };
        if count > MAX_WRITE_SAME_BLOCKS {
            return Err(Sense::invalid_field_in_cdb(size.transfer_length_byte(), 7));
        }
        let zeros = [0u8; BLOCK_SIZE as usize];
        let block = if ndob {
            &zeros[..]
        } else {
            one_block(data_out)?
        };
        if count == 0 {
            return Ok(());
        }
        let _range = self.ranges.lock(lba, count, Access::Shared);
        if unmap {
            self.dev
                .unmap(byte_offset(lba), count * u64::from(BLOCK_SIZE))
                .map_err(|_| Sense::write_error())?;
            if self.write_through() {
                self.dev.flush().map_err(|_| Sense::write_error())?;
            }
            return Ok(());
        }
        self.write_repeated(lba, count, block, self.write_through())
    }

    /// UNMAP with a parameter list of `param_len` bytes.
    pub(super) fn unmap(&self, param_len: usize, data_out: &[u8]) -> Result<(), Sense> {
        if !self.thin {
            // A fully provisioned logical unit does not implement UNMAP (LBPU=0).
            return Err(Sense::invalid_opcode());
        }
        if self.read_only {
            return Err(Sense::write_protected());
        }
        if param_len == 0 {
            return Ok(());
        }
        if param_len < UNMAP_HEADER {
            return Err(Sense::parameter_list_length_error());
        }
        let list = data_out
            .get(..param_len)
            .ok_or_else(Sense::invalid_field_in_information_unit)?;
        // UNMAP BLOCK DESCRIPTOR DATA LENGTH: what the list does not hold is ignored, and so is a partial last
        // descriptor (SBC-3 5.28.2).
        let bd_len = usize::from(u16::from_be_bytes([list[2], list[3]]));
        let count = bd_len.min(param_len - UNMAP_HEADER) / UNMAP_DESCRIPTOR;
        if count > MAX_UNMAP_DESCRIPTORS as usize {
            return Err(Sense::invalid_field_in_parameter_list(2, 7));
        }
        let ranges: Vec<(u64, u64)> = list[UNMAP_HEADER..UNMAP_HEADER + count * UNMAP_DESCRIPTOR]
            .chunks_exact(UNMAP_DESCRIPTOR)
            .map(|d| {
                let lba = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
                let blocks = u64::from(u32::from_be_bytes([d[8], d[9], d[10], d[11]]));
                (lba, blocks)
            })
            .collect();
        // Every descriptor is checked before any block is deallocated.
        let mut total = 0u64;
        for (i, &(lba, blocks)) in ranges.iter().enumerate() {
            total += blocks;
            if total > u64::from(MAX_UNMAP_BLOCKS) {
                let at = UNMAP_HEADER + i * UNMAP_DESCRIPTOR + 8;
                return Err(Sense::invalid_field_in_parameter_list(at as u16, 7));
            }
            self.check_range(lba, blocks)?;
        }
        for &(lba, blocks) in ranges.iter().filter(|r| r.1 > 0) {
            let _range = self.ranges.lock(lba, blocks, Access::Shared);
            self.dev
                .unmap(byte_offset(lba), blocks * u64::from(BLOCK_SIZE))
                .map_err(|_| Sense::write_error())?;
        }
        if self.write_through() && !ranges.is_empty() {
            self.dev.flush().map_err(|_| Sense::write_error())?;
        }
        Ok(())
    }

    /// GET LBA STATUS from `lba`: LBA status descriptors (mapped or deallocated) from there on, as many as the
    /// allocation length holds (at most 64 KiB of them) or up to the end of the medium. A device that answers in
    /// small pieces may get fewer descriptors (the initiator asks again from where they end).
    pub(super) fn get_lba_status(&self, lba: u64, alloc_len: u32) -> Result<Vec<u8>, Sense> {
        let capacity = self.capacity_blocks();
        if lba >= capacity {
            return Err(Sense::lba_out_of_range());
        }
        let room = usize::try_from(alloc_len)
            .unwrap_or(usize::MAX)
            .min(MAX_LBA_STATUS_BYTES);
        let max_descriptors =
            (room.saturating_sub(LBA_STATUS_HEADER) / LBA_STATUS_DESCRIPTOR).max(1);
        // (first LBA, blocks, mapped)
        let mut descriptors: Vec<(u64, u32, bool)> = Vec::new();
        let mut next = lba;
        let mut budget = MAX_EXTENT_QUERIES;
        while next < capacity && budget > 0 {
            let (mapped, blocks) = self.lba_extent(next, capacity - next, &mut budget)?;
            let full = descriptors.len() == max_descriptors;
            match descriptors.last_mut() {
                Some(d) if d.2 == mapped && u64::from(d.1) + blocks <= u64::from(u32::MAX) => {
                    d.1 += blocks as u32;
                }
                _ if full => break,
                _ => descriptors.push((next, blocks as u32, mapped)),
            }
            next += blocks;
        }
        let mut b =
            Vec::with_capacity(LBA_STATUS_HEADER + descriptors.len() * LBA_STATUS_DESCRIPTOR);
        let data_len = (LBA_STATUS_HEADER - 4 + descriptors.len() * LBA_STATUS_DESCRIPTOR) as u32;
        b.extend_from_slice(&data_len.to_be_bytes());
        b.extend_from_slice(&[0; 4]);
        for (first, blocks, mapped) in descriptors {
            b.extend_from_slice(&first.to_be_bytes());
            b.extend_from_slice(&blocks.to_be_bytes());
            b.push(if mapped { MAPPED } else { DEALLOCATED });
            b.extend_from_slice(&[0; 3]);
        }
        Ok(truncated(b, alloc_len))
    }

    /// Whether the blocks from `lba` are mapped and how many (1 ..= min(`max_blocks`, u32::MAX)) share that state.
    /// A block partly mapped counts as mapped: only a block that is wholly deallocated reads as zeros for sure.
    /// Every [`mapped_extent`](crate::BlockDevice::mapped_extent) query spends one of `budget`; when it runs out
    /// the extent ends early (an unknown block counts as mapped, which is never wrong).
    fn lba_extent(
        &self,
        lba: u64,
        max_blocks: u64,
        budget: &mut usize,
    ) -> Result<(bool, u64), Sense> {
        let bs = u64::from(BLOCK_SIZE);
        let start = byte_offset(lba);
        let limit = start + max_blocks.min(u64::from(u32::MAX)) * bs;
        let mapped = self.block_mapped(start, budget)?;
        // Bytes from `start` to `end` (a block boundary) are known to share the state.
        let mut end = start + bs;
        while end < limit && *budget > 0 {
            let (m, n) = self.extent(end, limit - end, budget)?;
            if m == mapped && (mapped || n >= bs) {
                // Mapped bytes map their whole block; deallocated ones count only as whole blocks.
                end = if mapped {
                    (end + n).next_multiple_of(bs).min(limit)
                } else {
                    end + n / bs * bs
                };
            } else if n >= bs || m {
                // The state changes at a block boundary.
                break;
            } else if self.block_mapped(end, budget)? == mapped {
                // A short deallocated piece after mapped blocks: its block may still be partly mapped.
                end += bs;
            } else {
                break;
            }
        }
        Ok((mapped, (end - start) / bs))
    }

    /// Whether any byte of the block at byte `offset` is mapped (true when `budget` runs out).
    fn block_mapped(&self, offset: u64, budget: &mut usize) -> Result<bool, Sense> {
        let end = offset + u64::from(BLOCK_SIZE);
        let mut pos = offset;
        while pos < end {
            if *budget == 0 {
                return Ok(true);
            }
            let (m, n) = self.extent(pos, end - pos, budget)?;
            if m {
                return Ok(true);
            }
            pos += n;
        }
        Ok(false)
    }

    /// One [`mapped_extent`](crate::BlockDevice::mapped_extent) query, its length clamped to 1 ..= `len`.
    fn extent(&self, offset: u64, len: u64, budget: &mut usize) -> Result<(bool, u64), Sense> {
        *budget = budget.saturating_sub(1);
        let (m, n) = self
            .dev
            .mapped_extent(offset, len)
            .map_err(|_| Sense::medium_error_read())?;
        Ok((m, n.clamp(1, len)))
    }
}
