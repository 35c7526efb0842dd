//! [`MemoryDevice`]: a [`BlockDevice`] in RAM for tests, fuzzing and demos, with injectable failures.

use crate::BlockDevice;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// A [`BlockDevice`] held in memory. Failures can be switched on to exercise error paths, and FUA writes and
/// flushes are counted so tests can check that durability requests reach the device.
#[derive(Debug)]
pub struct MemoryDevice {
    data: Mutex<Vec<u8>>,
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
            fail_reads: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
            fail_flush: AtomicBool::new(false),
            fua_writes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
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
}
