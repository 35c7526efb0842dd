//! Block devices the target serves: regular files and block special files.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use twinsan_scsi::BlockDevice;

use crate::error::TargetError;

/// Buffered reads and writes up to this size are page-cache copies of a few microseconds: the engine runs them
/// inline rather than paying two thread hand-offs for each.
const QUICK_IO_BYTES: usize = 64 * 1024;

/// Alignment O_DIRECT needs for buffers, offsets and lengths on every device we support.
const DIRECT_ALIGN: usize = 4096;

/// A file or block device opened for the target.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    size: u64,
    direct: bool,
}

impl FileDevice {
    /// Opens `path`. With `direct`, I/O bypasses the page cache (O_DIRECT) and every write is durable on return.
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<Self, TargetError> {
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
        // Only whole 512-byte blocks are exposed.
        Ok(FileDevice {
            file,
            size: size & !511,
            direct,
        })
    }

    /// Creates (or extends) a regular file of `size` bytes, preallocated so writes cannot fail with ENOSPC.
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

fn block_device_size(file: &File) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut size: u64 = 0;
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    // SAFETY: the ioctl writes one u64 through the pointer, which points to a live u64.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
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
}
