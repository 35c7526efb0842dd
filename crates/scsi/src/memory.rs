//! [`MemoryDevice`]: a [`BlockDevice`] in RAM for tests, fuzzing and demos, with injectable failures.

use crate::BlockDevice;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// A [`BlockDevice`] held in memory. Failures can be switched on to exercise error paths, and FUA writes and
/// flushes are counted so tests can check that durability requests reach the device.
///
/// [`MemoryDevice::thin`] makes a thin provisioned one: storage is tracked in allocation units, a write maps the
/// units it touches, and [`unmap`](BlockDevice::unmap) deallocates the units it covers whole and zeros the rest of
/// the range (as punching a hole in a file does).
#[derive(Debug)]
pub struct MemoryDevice {
    data: Mutex<Vec<u8>>,
    /// For a thin device: the allocation unit in bytes and whether each unit is mapped.
    map: Option<(usize, Mutex<Vec<bool>>)>,
    unmaps: AtomicU64,
    fail_reads: AtomicBool,
    fail_writes: AtomicBool,
    fail_flush: AtomicBool,
    fua_writes: AtomicU64,
    flushes: AtomicU64,
}

impl MemoryDevice {
    /// A zero-filled device of `size_bytes` bytes.
    pub fn new(size_bytes: usize) -> Self {
        Self {
            data: Mutex::new(vec![0; size_bytes]),
            map: None,
            unmaps: AtomicU64::new(0),
            fail_reads: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
            fail_flush: AtomicBool::new(false),
            fua_writes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }

    /// A zero-filled thin provisioned device of `size_bytes` bytes with allocation units of `unit_bytes` (at least
    /// 1), all of them deallocated.
    pub fn thin(size_bytes: usize, unit_bytes: usize) -> Self {
        let unit = unit_bytes.max(1);
        let mut d = Self::new(size_bytes);
        d.map = Some((unit, Mutex::new(vec![false; size_bytes.div_ceil(unit)])));
        d
    }

    /// Number of [`unmap`](BlockDevice::unmap) calls so far.
    pub fn unmaps(&self) -> u64 {
        self.unmaps.load(Ordering::Relaxed)
    }

    /// Makes every following read fail (or succeed again).
    pub fn set_fail_reads(&self, fail: bool) {
        self.fail_reads.store(fail, Ordering::Relaxed);
    }

    /// Makes every following write fail (or succeed again).
    pub fn set_fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::Relaxed);
    }

    /// Makes every following flush fail (or succeed again).
    pub fn set_fail_flush(&self, fail: bool) {
        self.fail_flush.store(fail, Ordering::Relaxed);
    }

    /// Number of writes that asked for FUA so far.
    pub fn fua_writes(&self) -> u64 {
        self.fua_writes.load(Ordering::Relaxed)
    }

    /// Number of flushes so far.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// A copy of `len` bytes at `offset`, bypassing failure injection (for test assertions).
    pub fn snapshot(&self, offset: usize, len: usize) -> Vec<u8> {
        let data = self.lock();
        data.get(offset..offset.saturating_add(len))
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // A panic while holding the lock can not leave the bytes inconsistent in a way we care about.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn range(len: usize, offset: u64, size: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let end = start.checked_add(len).ok_or_else(out_of_range)?;
        if end > size {
            return Err(out_of_range());
        }
        Ok(start..end)
    }
}

fn out_of_range() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "access beyond the end of the memory device",
    )
}

fn injected() -> io::Error {
    io::Error::other("injected failure")
}

impl BlockDevice for MemoryDevice {
    fn size_bytes(&self) -> u64 {
        self.lock().len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.fail_reads.load(Ordering::Relaxed) {
            return Err(injected());
        }
        let data = self.lock();
        let r = Self::range(buf.len(), offset, data.len())?;
        buf.copy_from_slice(&data[r]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        if self.fail_writes.load(Ordering::Relaxed) {
            return Err(injected());
        }
        let mut data = self.lock();
        let size = data.len();
        let r = Self::range(buf.len(), offset, size)?;
        if let Some((unit, map)) = &self.map {
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            for u in r.start / unit..r.end.div_ceil(*unit) {
                map[u] = true;
            }
        }
        data[r].copy_from_slice(buf);
        if fua {
            self.fua_writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        if self.fail_flush.load(Ordering::Relaxed) {
            return Err(injected());
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn supports_unmap(&self) -> bool {
        self.map.is_some()
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.fail_writes.load(Ordering::Relaxed) {
            return Err(injected());
        }
        let len = usize::try_from(len).map_err(|_| out_of_range())?;
        let mut data = self.lock();
        let size = data.len();
        let r = Self::range(len, offset, size)?;
        self.unmaps.fetch_add(1, Ordering::Relaxed);
        data[r.clone()].fill(0);
        if let Some((unit, map)) = &self.map {
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            // Only units the range covers whole are deallocated; the end of the device closes the last unit.
            let first = r.start.div_ceil(*unit);
            let last = if r.end == size {
                map.len()
            } else {
                r.end / unit
            };
            for u in first..last.max(first) {
                map[u] = false;
            }
        }
        Ok(())
    }

    fn mapped_extent(&self, offset: u64, len: u64) -> io::Result<(bool, u64)> {
        let size = self.lock().len();
        let len_usize = usize::try_from(len).map_err(|_| out_of_range())?;
        let r = Self::range(len_usize, offset, size)?;
        let Some((unit, map)) = &self.map else {
            return Ok((true, len));
        };
        if r.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty extent query",
            ));
        }
        let map = map.lock().unwrap_or_else(|e| e.into_inner());
        let state = map[r.start / unit];
        let mut end = (r.start / unit + 1) * unit;
        while end < r.end && map[end / unit] == state {
            end += unit;
        }
        Ok((state, (end.min(r.end) - r.start) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_writes_and_bounds_checks() {
        let d = MemoryDevice::new(1024);
        assert_eq!(d.size_bytes(), 1024);
        d.write_at(&[1, 2, 3], 10, true).unwrap();
        let mut b = [0u8; 3];
        d.read_at(&mut b, 10).unwrap();
        assert_eq!(b, [1, 2, 3]);
        assert_eq!(d.fua_writes(), 1);
        assert!(d.read_at(&mut b, 1022).is_err());
        assert!(d.write_at(&b, u64::MAX, false).is_err());
        d.set_fail_reads(true);
        assert!(d.read_at(&mut b, 0).is_err());
        d.set_fail_writes(true);
        assert!(d.write_at(&b, 0, false).is_err());
        d.set_fail_flush(true);
        assert!(d.flush().is_err());
        assert_eq!(d.flushes(), 0);
        assert_eq!(d.snapshot(10, 3), vec![1, 2, 3]);
        assert!(d.snapshot(2000, 3).is_empty());
    }

    #[test]
    fn fully_provisioned_device_maps_everything_and_unmaps_by_writing_zeros() {
        let d = MemoryDevice::new(8192);
        assert!(!d.supports_unmap());
        d.write_at(&[7u8; 8192], 0, false).unwrap();
        d.unmap(100, 1000).unwrap();
        assert_eq!(d.snapshot(100, 1000), vec![0u8; 1000]);
        assert_eq!(d.snapshot(99, 1), vec![7]);
        assert_eq!(d.snapshot(1100, 1), vec![7]);
        assert_eq!(d.mapped_extent(0, 8192).unwrap(), (true, 8192));
    }

    #[test]
    fn thin_device_tracks_mapping_per_unit() {
        let d = MemoryDevice::thin(16384, 4096);
        assert!(d.supports_unmap());
        assert_eq!(d.mapped_extent(0, 16384).unwrap(), (false, 16384));
        d.write_at(&[1u8; 10], 4100, false).unwrap();
        assert_eq!(d.mapped_extent(0, 16384).unwrap(), (false, 4096));
        assert_eq!(d.mapped_extent(4096, 12288).unwrap(), (true, 4096));
        assert_eq!(d.mapped_extent(5000, 100).unwrap(), (true, 100));
        assert_eq!(d.mapped_extent(8192, 8192).unwrap(), (false, 8192));
        // A partial unmap zeros the bytes but the unit stays mapped; a whole unit is deallocated.
        d.write_at(&[2u8; 16384], 0, false).unwrap();
        d.unmap(100, 4000).unwrap();
        assert_eq!(d.snapshot(100, 4000), vec![0u8; 4000]);
        assert_eq!(d.mapped_extent(0, 4096).unwrap(), (true, 4096));
        d.unmap(4000, 8192).unwrap();
        assert_eq!(d.mapped_extent(0, 16384).unwrap(), (true, 4096));
        assert_eq!(d.mapped_extent(4096, 12288).unwrap(), (false, 4096));
        assert_eq!(d.mapped_extent(8192, 8192).unwrap(), (true, 8192));
        // The end of the device closes a partial last unit.
        d.unmap(12288, 4096).unwrap();
        assert_eq!(d.mapped_extent(12288, 4096).unwrap(), (false, 4096));
        assert_eq!(d.unmaps(), 3);
        assert!(d.unmap(16000, 1000).is_err());
        assert!(d.mapped_extent(16000, 1000).is_err());
    }
}
