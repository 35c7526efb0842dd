//! Read-modify-write commands (SBC-3 5.2, 5.8): COMPARE AND WRITE and ORWRITE (16). Each holds its blocks
//! exclusively from the read to the end of the write, so no other write to them lands in between (see
//! [`RangeLocks`](super::range::RangeLocks)).

use super::range::Access;
use super::{byte_len, byte_offset, compare_and_write_bytes, write_data, LogicalUnit, BLOCK_SIZE};
use crate::cdb::BlockTransfer;
use crate::sense::Sense;

impl LogicalUnit {
    /// COMPARE AND WRITE of `blocks` blocks at `lba`: the first half of the Data-Out is compared with the medium;
    /// if every byte is equal the second half is written, else MISCOMPARE with the offset of the first differing
    /// byte in INFORMATION and nothing is written.
    pub(super) fn compare_and_write(
        &self,
        lba: u64,
        blocks: u8,
        fua: bool,
        data_out: &[u8],
    ) -> Result<(), Sense> {
        let need = compare_and_write_bytes(blocks)? as usize;
        if self.read_only {
            return Err(Sense::write_protected());
        }
        self.check_range(lba, u64::from(blocks))?;
        // NUMBER OF LOGICAL BLOCKS 0: nothing is read, compared or written, and that is not an error.
        if blocks == 0 {
            return Ok(());
        }
        let data = data_out
            .get(..need)
            .ok_or_else(Sense::invalid_field_in_information_unit)?;
        let (verify, write) = data.split_at(need / 2);
        let _range = self.ranges.lock(lba, u64::from(blocks), Access::Exclusive);
        let mut current = vec![0u8; verify.len()];
        self.dev
            .read_at(&mut current, byte_offset(lba))
            .map_err(|_| Sense::medium_error_read())?;
        if let Some(i) = current.iter().zip(verify).position(|(a, b)| a != b) {
            return Err(Sense::miscompare(i as u64));
        }
        self.dev
            .write_at(write, byte_offset(lba), fua || self.write_through())
            .map_err(|_| Sense::write_error())
    }

    /// ORWRITE (16): each block of the range becomes its current contents OR the Data-Out. Like a WRITE, only the
    /// whole blocks that arrived are processed.
    pub(super) fn or_write(&self, t: &BlockTransfer, data_out: &[u8]) -> Result<(), Sense> {
        self.check_transfer(t, true)?;
        let data = write_data(t, data_out);
        if data.is_empty() {
            return Ok(());
        }
        debug_assert!(data.len() <= byte_len(t));
        let blocks = (data.len() / BLOCK_SIZE as usize) as u64;
        let _range = self.ranges.lock(t.lba, blocks, Access::Exclusive);
        let mut merged = vec![0u8; data.len()];
        self.dev
            .read_at(&mut merged, byte_offset(t.lba))
            .map_err(|_| Sense::medium_error_read())?;
        for (m, d) in merged.iter_mut().zip(data) {
            *m |= d;
        }
        self.dev
            .write_at(&merged, byte_offset(t.lba), t.fua || self.write_through())
            .map_err(|_| Sense::write_error())
    }
}
