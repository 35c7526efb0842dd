//! One process owns a backing store (SPEC 3, invariant 9): [`BackingClaim`] is this process's exclusive claim on a
//! regular file or a block device, taken before anything reads or writes it and held until it is dropped (or the
//! process ends, when the kernel drops it).
//!
//! - A regular file is locked with `flock(LOCK_EX | LOCK_NB)`. Not a POSIX `fcntl` lock: that belongs to the
//!   process, goes away when *any* descriptor of the file closes (the node opens its disk several times) and never
//!   conflicts within one process. A flock belongs to the open file description, so it lasts exactly as long as
//!   the claim's descriptor, and a second claim conflicts even from the same process.
//! - A block device is opened with `O_EXCL`, which Linux refuses (EBUSY) while the device is mounted, part of a
//!   device-mapper or md device, or opened with `O_EXCL` by another descriptor. It also gets a *shared* flock, which
//!   excludes nothing (udev takes shared locks too while it probes; an exclusive one would stall its events for the
//!   device) but puts this process's pid in `/proc/locks` for the next claimer to name.
//!
//! A refused claim names the holder. flock has no owner query (`F_GETLK` sees only POSIX locks, and an OFD lock
//! reports `l_pid` -1), so the pid comes from `/proc/locks`, which lists each lock with the pid that took it and
//! the file's `major:minor:inode`. The device there is the filesystem's, which is what `stat` reports except on
//! btrfs subvolumes and overlayfs; an entry with the right inode on another device is believed only when that pid
//! has the file open (a link in `/proc/PID/fd` that resolves to the same device and inode).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::TargetError;

/// This process's exclusive claim on a backing file or block device; released when dropped.
#[derive(Debug)]
pub struct BackingClaim {
    path: PathBuf,
    /// Holds the lock (and a block device's `O_EXCL` claim) while it is open; no I/O goes through it.
    _file: File,
}

impl BackingClaim {
    /// Claims `path` for this process. Held elsewhere: [`TargetError::InUse`], naming the holder's pid where
    /// `/proc/locks` shows it; nothing is read or written either way.
    pub fn acquire(path: &Path) -> Result<BackingClaim, TargetError> {
        let backing = |source| TargetError::Backing {
            path: path.into(),
            source,
        };
        let block = std::fs::metadata(path)
            .map_err(backing)?
            .file_type()
            .is_block_device();
        // O_NONBLOCK: a named pipe given by mistake must not hang the open; it changes nothing for a file or a
        // disk, and this descriptor does no I/O.
        let flags = libc::O_NONBLOCK | if block { libc::O_EXCL } else { 0 };
        let file = match OpenOptions::new().read(true).custom_flags(flags).open(path) {
            Ok(file) => file,
            Err(e) if block && e.raw_os_error() == Some(libc::EBUSY) => return Err(in_use(path)),
            Err(e) => return Err(backing(e)),
        };
        // The path changed under us between the stat and the open: the O_EXCL choice may be wrong.
        if file
            .metadata()
            .map_err(backing)?
            .file_type()
            .is_block_device()
            != block
        {
            return Err(backing(io::Error::other(
                "it was replaced while being opened",
            )));
        }
        let operation = if block { libc::LOCK_SH } else { libc::LOCK_EX };
        // SAFETY: flock only reads its integer arguments; the descriptor is open for the life of `file`.
        if unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(in_use(path));
            }
            // Without the lock nothing keeps a second process out: refuse rather than share.
            return Err(backing(io::Error::new(
                e.kind(),
                format!("cannot lock it for this process alone: {e}"),
            )));
        }
        Ok(BackingClaim {
            path: path.into(),
            _file: file,
        })
    }

    /// The path claimed.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The refusal for `path`, with the pids `/proc/locks` gives for it.
fn in_use(path: &Path) -> TargetError {
    let holders = std::fs::metadata(path)
        .ok()
        .zip(std::fs::read_to_string("/proc/locks").ok())
        .map(|(meta, locks)| {
            holders(&parse_locks(&locks), meta.dev(), meta.ino(), |pid| {
                has_open(pid, meta.dev(), meta.ino())
            })
        })
        .unwrap_or_default();
    TargetError::InUse {
        path: path.into(),
        holders,
    }
}

/// One granted lock in `/proc/locks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LockEntry {
    pid: u32,
    major: u32,
    minor: u32,
    inode: u64,
}

/// The granted locks of a `/proc/locks` text (`1: FLOCK  ADVISORY  WRITE 1234 fe:00:5325943 0 EOF`), skipping
/// waiters (`1: -> FLOCK ...`), OFD locks (pid -1) and lines it cannot read.
fn parse_locks(text: &str) -> Vec<LockEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1) == Some(&"->") {
                return None;
            }
            // The pid is the field before `major:minor:inode`, the first with two colons.
            let at = fields.iter().position(|f| f.matches(':').count() == 2)?;
            let pid = fields.get(at.checked_sub(1)?)?.parse::<u32>().ok()?;
            let mut id = fields[at].split(':');
            let major = u32::from_str_radix(id.next()?, 16).ok()?;
            let minor = u32::from_str_radix(id.next()?, 16).ok()?;
            let inode = id.next()?.parse().ok()?;
            (pid > 0).then_some(LockEntry {
                pid,
                major,
                minor,
                inode,
            })
        })
        .collect()
}

/// The pids holding a lock on the file `dev`/`inode` (as `stat` gives them), sorted: those listed on that device,
/// else those listed with that inode on another device that `has_open` confirms.
fn holders(locks: &[LockEntry], dev: u64, inode: u64, has_open: impl Fn(u32) -> bool) -> Vec<u32> {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let same_inode = || locks.iter().filter(|l| l.inode == inode);
    let mut pids: Vec<u32> = same_inode()
        .filter(|l| (l.major, l.minor) == (major, minor))
        .map(|l| l.pid)
        .collect();
    if pids.is_empty() {
        pids = same_inode()
            .map(|l| l.pid)
            .filter(|&pid| has_open(pid))
            .collect();
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Whether process `pid` has the file `dev`/`inode` open (false where its descriptors cannot be read).
fn has_open(pid: u32, dev: u64, inode: u64) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.filter_map(Result::ok)
            .filter_map(|fd| std::fs::metadata(fd.path()).ok())
            .any(|m| m.dev() == dev && m.ino() == inode)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file holding `bytes` under the system temporary directory, removed when dropped.
    fn temp_file(name: &str, bytes: &[u8]) -> tempfile::TempPath {
        let mut file = tempfile::Builder::new()
            .prefix(&format!("twinsan-claim-{name}-"))
            .suffix(".img")
            .tempfile()
            .expect("create the file");
        std::io::Write::write_all(&mut file, bytes).expect("write the file");
        file.into_temp_path()
    }

    #[test]
    fn a_second_claim_is_refused_naming_the_holder_and_the_path() {
        let file = temp_file("second", &[7u8; 4096]);
        let first = BackingClaim::acquire(&file).expect("first claim");
        assert_eq!(first.path(), &*file);
        // flock locks belong to the open file description: a second open in this process conflicts too.
        let error = BackingClaim::acquire(&file).expect_err("second claim");
        let TargetError::InUse { path, holders } = &error else {
            panic!("not InUse: {error:?}");
        };
        assert_eq!(path.as_path(), &*file);
        assert_eq!(holders, &[std::process::id()], "{error}");
        let shown = error.to_string();
        for part in [
            file.display().to_string(),
            format!("process {}", std::process::id()),
            "nothing was read or written".into(),
        ] {
            assert!(shown.contains(&part), "{part:?} missing from: {shown}");
        }
        assert_eq!(std::fs::read(&file).expect("read"), [7u8; 4096]);

        // Released when dropped.
        drop(first);
        let again = BackingClaim::acquire(&file).expect("claimed again after the drop");
        drop(again);
    }

    #[test]
    fn a_missing_file_is_a_backing_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("none.img");
        let error = BackingClaim::acquire(&path).expect_err("missing");
        assert!(matches!(error, TargetError::Backing { .. }), "{error:?}");
        assert!(error.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn proc_locks_lines_read_well() {
        let text = "\
1: FLOCK  ADVISORY  WRITE 6180 fe:00:5325943 0 EOF
1: -> FLOCK  ADVISORY  WRITE 7000 fe:00:5325943 0 EOF
2: FLOCK  ADVISORY  READ 6181 fe:00:10133507 0 EOF
3: OFDLCK ADVISORY  WRITE -1 00:2b:12 0 EOF
4: POSIX  ADVISORY  WRITE 812 103:0a:77 0 EOF
garbage
";
        assert_eq!(
            parse_locks(text),
            [
                LockEntry {
                    pid: 6180,
                    major: 0xfe,
                    minor: 0,
                    inode: 5325943
                },
                LockEntry {
                    pid: 6181,
                    major: 0xfe,
                    minor: 0,
                    inode: 10133507
                },
                LockEntry {
                    pid: 812,
                    major: 0x103,
                    minor: 0x0a,
                    inode: 77
                },
            ]
        );
    }

    #[test]
    fn holders_match_the_device_or_a_confirmed_inode() {
        let entry = |pid, major, minor, inode| LockEntry {
            pid,
            major,
            minor,
            inode,
        };
        let dev = libc::makedev(0xfe, 0);
        let locks = [
            entry(20, 0xfe, 0, 5),
            entry(10, 0xfe, 0, 5),
            entry(20, 0xfe, 0, 5),
            entry(30, 0, 0x2d, 5),
            entry(40, 0xfe, 0, 6),
        ];
        // Same device and inode: believed as listed, without looking at the process.
        assert_eq!(holders(&locks, dev, 5, |_| false), [10, 20]);
        // Only the inode matches (a btrfs subvolume): only a process that has the file open counts.
        let other = libc::makedev(0, 0x2e);
        assert_eq!(holders(&locks, other, 5, |pid| pid == 30), [30]);
        assert_eq!(holders(&locks, other, 5, |_| false), Vec::<u32>::new());
        assert_eq!(holders(&locks, dev, 99, |_| true), Vec::<u32>::new());
    }
}
