//! Block devices the target serves: regular files and block special files.
//!
//! Thin provisioning: a regular file on a filesystem that punches holes, or a block device that can zero a range
//! by deallocating it, is offered to the logical unit as thin provisioned ([`BlockDevice::supports_unmap`]). UNMAP
//! punches holes (`fallocate(PUNCH_HOLE | KEEP_SIZE)`, after which the range reads zeros), and GET LBA STATUS asks
//! the filesystem where the holes are (`lseek(SEEK_DATA / SEEK_HOLE)`; a block device reports everything mapped).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use twinsan_scsi::BlockDevice;

use crate::claim::BackingClaim;
use crate::error::TargetError;

/// Buffered reads and writes up to this size are page-cache copies of a few microseconds: the engine runs them
/// inline rather than paying two thread hand-offs for each.
const QUICK_IO_BYTES: usize = 64 * 1024;

/// Alignment O_DIRECT needs for buffers, offsets and lengths on every device we support.
const DIRECT_ALIGN: usize = 4096;

/// A file or block device opened for the target, claimed for this process alone while it is open.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    /// Keeps every other process off the store (SPEC 3, invariant 9).
    _claim: BackingClaim,
    size: u64,
    direct: bool,
    /// A block special file (else a regular file).
    block: bool,
    /// Unmap deallocates (probed at open).
    thin: bool,
}

impl FileDevice {
    /// Claims and opens `path` ([`TargetError::InUse`] if another process holds it). With `direct`, I/O bypasses
    /// the page cache (O_DIRECT) and every write is durable on return.
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<Self, TargetError> {
        // Before anything reads the store: a refused claim leaves it as it is.
        let claim = BackingClaim::acquire(path)?;
        let mut opts = OpenOptions::new();
        opts.read(true).write(!read_only);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts.open(path).map_err(|e| TargetError::Backing {
            path: path.into(),
            source: e,
        })?;
        let meta = file.metadata().map_err(|e| TargetError::Backing {
            path: path.into(),
            source: e,
        })?;
        let block = meta.file_type().is_block_device();
        let size = if meta.file_type().is_file() {
            meta.len()
        } else {
            block_device_size(&file).map_err(|e| TargetError::Backing {
                path: path.into(),
                source: e,
            })?
        };
        if size < 512 {
            return Err(TargetError::TooSmall {
                path: path.into(),
                size,
            });
        }
        let thin = !read_only
            && if block {
                block_device_zeroes_by_deallocating(meta.rdev())
            } else {
                // Punching a hole past the end of the file (KEEP_SIZE) touches no data; it fails only where the
                // filesystem can not punch holes at all.
                punch_hole(&file, meta.len().next_multiple_of(4096), 4096).is_ok()
            };
        // Only whole 512-byte blocks are exposed.
        Ok(FileDevice {
            file,
            _claim: claim,
            size: size & !511,
            direct,
            block,
            thin,
        })
    }

    /// Creates (or extends) a regular file of `size` bytes. The file is sparse (thin provisioned): blocks are
    /// allocated as they are written, and UNMAP gives them back. A file another process holds is left alone
    /// ([`TargetError::InUse`]).
    pub fn create(path: &Path, size: u64) -> Result<(), TargetError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| TargetError::Backing {
                path: path.into(),
                source: e,
            })?;
        // Creating an empty file changes no one's store; growing one in use would.
        let _claim = BackingClaim::acquire(path)?;
        let cur = file
            .metadata()
            .map_err(|e| TargetError::Backing {
                path: path.into(),
                source: e,
            })?
            .len();
        if cur < size {
            file.set_len(size).map_err(|e| TargetError::Backing {
                path: path.into(),
                source: e,
            })?;
        }
        Ok(())
    }

    fn bounce<T>(&self, len: usize, f: impl FnOnce(&mut [u8]) -> io::Result<T>) -> io::Result<T> {
        let layout = std::alloc::Layout::from_size_align(len.max(DIRECT_ALIGN), DIRECT_ALIGN)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the layout has a non-zero size; the buffer is freed below with the same layout and is only
        // reachable through the slice for the duration of `f`.
        unsafe {
            let ptr = std::alloc::alloc_zeroed(layout);
            if ptr.is_null() {
                return Err(io::Error::from(io::ErrorKind::OutOfMemory));
            }
            let r = f(std::slice::from_raw_parts_mut(ptr, len));
            std::alloc::dealloc(ptr, layout);
            r
        }
    }

    fn aligned(&self, buf: &[u8], offset: u64) -> bool {
        (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
            && buf.len().is_multiple_of(DIRECT_ALIGN)
            && offset.is_multiple_of(DIRECT_ALIGN as u64)
    }
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)`: deallocates the range of a file or block device; it reads zeros
/// afterwards. Also the replicated volume's discard.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate only reads its integer arguments; the descriptor is open for the life of `file`.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `lseek(fd, offset, whence)`; `None` for ENXIO (no data, or no hole, at or after `offset`).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: lseek only reads its integer arguments. pread/pwrite do not use the file offset it moves.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(r as u64))
}

/// Whether the block device `rdev` zeros ranges by deallocating them (a non-zero `write_zeroes_max_bytes` in
/// sysfs, which is what `fallocate(PUNCH_HOLE)` on a block device needs).
fn block_device_zeroes_by_deallocating(rdev: u64) -> bool {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let dir = format!("/sys/dev/block/{major}:{minor}");
    // A partition has no queue directory of its own: its disk's is one level up.
    [format!("{dir}/queue"), format!("{dir}/../queue")]
        .iter()
        .filter_map(|q| std::fs::read_to_string(format!("{q}/write_zeroes_max_bytes")).ok())
        .any(|v| v.trim().parse::<u64>().is_ok_and(|n| n > 0))
}

/// The size of a block device in bytes: the `BLKGETSIZE64` ioctl (the one place it is asked, for `serve`, the
/// node's volumes and `volume create-md`).
pub fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // _IOR(0x12, 114, u64) in the generic ioctl encoding (x86, arm, riscv): direction read (2) in bits 30-31,
    // argument size in bits 16-29, type in bits 8-15, number in bits 0-7.
    const BLKGETSIZE64: u64 =
        (2 << 30) | ((std::mem::size_of::<u64>() as u64) << 16) | (0x12 << 8) | 114;
    // SAFETY: the ioctl writes one u64 through the pointer, which points to a live u64.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

impl BlockDevice for FileDevice {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.direct && !self.aligned(buf, offset) {
            // Read the aligned span around the request, then copy out the part asked for.
            let start = offset & !(DIRECT_ALIGN as u64 - 1);
            let end =
                (offset + buf.len() as u64).div_ceil(DIRECT_ALIGN as u64) * DIRECT_ALIGN as u64;
            let skip = (offset - start) as usize;
            return self.bounce((end - start) as usize, |tmp| {
                self.file.read_exact_at(tmp, start)?;
                buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
                Ok(())
            });
        }
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        if self.direct && !self.aligned(buf, offset) {
            let start = offset & !(DIRECT_ALIGN as u64 - 1);
            let end =
                (offset + buf.len() as u64).div_ceil(DIRECT_ALIGN as u64) * DIRECT_ALIGN as u64;
            let skip = (offset - start) as usize;
            let whole = skip == 0 && (end - start) as usize == buf.len();
            self.bounce((end - start) as usize, |tmp| {
                if !whole {
                    // Read-modify-write of the partial 4 KiB blocks at either end.
                    self.file.read_exact_at(tmp, start)?;
                }
                tmp[skip..skip + buf.len()].copy_from_slice(buf);
                self.file.write_all_at(tmp, start)
            })?;
        } else {
            self.file.write_all_at(buf, offset)?;
        }
        if fua {
            // O_DIRECT skips the page cache but not the device's volatile cache.
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn quick_io_limit(&self) -> usize {
        // Buffered I/O is a page-cache copy; O_DIRECT always goes to the device.
        if self.direct {
            0
        } else {
            QUICK_IO_BYTES
        }
    }

    fn supports_unmap(&self) -> bool {
        self.thin
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.thin {
            match punch_hole(&self.file, offset, len) {
                Ok(()) => return Ok(()),
                // A block device may refuse a range that is not aligned to its own block size, and a device may
                // stop deallocating: zeros written are just as correct.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {}
                Err(e) => return Err(e),
            }
        }
        twinsan_scsi::write_zeroes(self, offset, len)
    }

    fn mapped_extent(&self, offset: u64, len: u64) -> io::Result<(bool, u64)> {
        if self.block || !self.thin || len == 0 {
            return Ok((true, len));
        }
        file_mapped_extent(&self.file, offset, len)
    }
}

/// [`BlockDevice::mapped_extent`] of a regular file, from `SEEK_DATA` / `SEEK_HOLE`: whether the bytes from
/// `offset` are allocated, and how many (at most `len`, at least one) share that state. A filesystem without
/// `SEEK_DATA` reports everything mapped.
pub fn file_mapped_extent(file: &File, offset: u64, len: u64) -> io::Result<(bool, u64)> {
    if len == 0 {
        return Ok((true, 0));
    }
    let end = offset.saturating_add(len);
    match seek(file, offset, libc::SEEK_DATA) {
        // Data from `offset` on: it lasts until the next hole (the end of the file at the latest).
        Ok(Some(data)) if data <= offset => {
            let hole = seek(file, offset, libc::SEEK_HOLE)?.unwrap_or(end);
            Ok((true, hole.clamp(offset + 1, end) - offset))
        }
        // A hole until the next data, or to the end of the file.
        Ok(Some(data)) => Ok((false, data.min(end) - offset)),
        Ok(None) => Ok((false, len)),
        // A filesystem without SEEK_DATA: report what is certain, that the bytes may be mapped.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((true, len)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory under the system temporary directory, removed when dropped.
    fn temp_dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("twinsan-{name}-"))
            .tempdir()
            .expect("create temp dir")
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn punch_hole_reads_zeros_and_seek_data_finds_the_hole() {
        let dir = temp_dir("punch");
        let path = dir.path().join("lun.img");
        FileDevice::create(&path, 4 * MIB).unwrap();
        let dev = FileDevice::open(&path, false, false).unwrap();
        // The filesystem of the temporary directory (ext4, xfs, tmpfs, btrfs) punches holes.
        assert!(dev.supports_unmap());
        dev.write_at(&vec![0xA5u8; 4 * MIB as usize], 0, false)
            .unwrap();
        dev.flush().unwrap();
        assert_eq!(dev.mapped_extent(0, 4 * MIB).unwrap(), (true, 4 * MIB));

        dev.unmap(MIB, MIB).unwrap();
        let mut buf = vec![1u8; 2 * MIB as usize];
        dev.read_at(&mut buf, MIB / 2).unwrap();
        assert!(buf[..MIB as usize / 2].iter().all(|&b| b == 0xA5));
        assert!(buf[MIB as usize / 2..3 * MIB as usize / 2]
            .iter()
            .all(|&b| b == 0));
        assert!(buf[3 * MIB as usize / 2..].iter().all(|&b| b == 0xA5));

        assert_eq!(dev.mapped_extent(0, 4 * MIB).unwrap(), (true, MIB));
        assert_eq!(dev.mapped_extent(MIB, 3 * MIB).unwrap(), (false, MIB));
        assert_eq!(dev.mapped_extent(MIB + 512, 512).unwrap(), (false, 512));
        assert_eq!(
            dev.mapped_extent(2 * MIB, 2 * MIB).unwrap(),
            (true, 2 * MIB)
        );
        // The size does not change.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * MIB);

        // Writing into the hole maps it again.
        dev.write_at(&[7u8; 4096], MIB, false).unwrap();
        assert_eq!(dev.mapped_extent(MIB, 3 * MIB).unwrap(), (true, 4096));
        assert_eq!(
            dev.mapped_extent(MIB + 4096, 3 * MIB - 4096).unwrap(),
            (false, MIB - 4096)
        );

        // An unaligned unmap zeros exactly its bytes.
        dev.unmap(3 * MIB + 100, 1000).unwrap();
        let mut b = vec![1u8; 1200];
        dev.read_at(&mut b, 3 * MIB).unwrap();
        assert!(b[..100].iter().all(|&x| x == 0xA5));
        assert!(b[100..1100].iter().all(|&x| x == 0));
        assert!(b[1100..].iter().all(|&x| x == 0xA5));
    }

    #[test]
    fn a_read_only_device_is_fully_provisioned() {
        let dir = temp_dir("ro");
        let path = dir.path().join("lun.img");
        FileDevice::create(&path, MIB).unwrap();
        let dev = FileDevice::open(&path, true, false).unwrap();
        assert!(!dev.supports_unmap());
        assert_eq!(dev.mapped_extent(0, MIB).unwrap(), (true, MIB));
    }
}
