//! A volume's metadata on its files or block devices: `create-md`, and reading it back when the volume attaches.
//!
//! The format, the layout and every check on the bytes belong to `twinsan_replication::metadata`, which does no
//! I/O; this module opens the devices, finds their sizes, and reads and writes at the offsets the [`Layout`]
//! gives. Neither function ever repairs anything: [`read_md`] only reads, and [`create_md`] refuses to overwrite
//! metadata, a filesystem or a partition table unless it is forced to (SPEC 2.3).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use twinsan_replication::generation::UUID_JUST_CREATED;
use twinsan_replication::metadata::{
    self, choose, detect_signature, Chosen, Layout, MetadataError, Placement, PlacementKind,
    Region, Superblock, ACTIVITY_LOG_EXTENT_SIZE, ACTIVITY_LOG_SLOTS, ACTIVITY_LOG_SLOT_SIZE,
    BITMAP_GRANULARITY, BLOCK_SIZE, SIGNATURE_HEAD_SIZE, SIGNATURE_TAIL_SIZE, SUPERBLOCK_COPIES,
};
use twinsan_target::{BackingClaim, TargetError};

/// Why metadata could not be created or read. The text names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum MdError {
    /// The file or device could not be opened (missing, no permission).
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The file or device.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another process holds the device: a running `twinsan node run` or `serve`, or, for a block device, a
    /// mount or a device mapper. The message names the path and the holder's pid where it is known.
    #[error("{0}")]
    InUse(TargetError),
    /// Neither a regular file nor a block device.
    #[error("{} is {kind}, not a regular file or a block device", path.display())]
    NotStorage {
        /// What was found.
        path: PathBuf,
        /// What it is ("a directory").
        kind: &'static str,
    },
    /// Reading, writing or syncing failed.
    #[error("{}: {what} failed: {source}", path.display())]
    Io {
        /// The file or device.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The device cannot hold the volume and its metadata; the message gives the size needed.
    #[error("{}: {source}", path.display())]
    Layout {
        /// The device that is too small.
        path: PathBuf,
        /// The size it has and the size it needs.
        source: MetadataError,
    },
    /// `create-md` found something it would destroy.
    #[error(
        "{} already holds {found}: refusing to overwrite it, nothing was written; pass --force to overwrite it \
         (what it holds is lost)",
        path.display()
    )]
    Existing {
        /// The device the metadata would go to.
        path: PathBuf,
        /// What it holds.
        found: String,
    },
    /// The arguments cannot make a valid superblock (the node's id equal to its peer's, a zero volume uuid).
    #[error("{}: cannot create metadata: {source}; nothing was written", path.display())]
    Refused {
        /// The device the metadata would go to.
        path: PathBuf,
        /// What is wrong.
        source: MetadataError,
    },
    /// Neither superblock slot holds twinsan metadata.
    #[error(
        "{} holds no twinsan metadata: create it with `twinsan volume create-md VOLUME` (nothing was written to it)",
        path.display()
    )]
    NoMetadata {
        /// The device the metadata should be on.
        path: PathBuf,
    },
    /// The metadata is damaged, in a format this build does not read, or does not fit the device.
    #[error("{}: {source}; nothing was written to it", path.display())]
    Metadata {
        /// The device holding the metadata.
        path: PathBuf,
        /// What is wrong with it.
        source: MetadataError,
    },
}

/// What [`create_md`] initialised; its `Display` is what `twinsan volume create-md` prints, one item a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateReport {
    /// The data file or device.
    pub data: PathBuf,
    /// The external metadata file or device; `None` for internal metadata.
    pub meta: Option<PathBuf>,
    /// Where everything is.
    pub layout: Layout,
    /// The volume's uuid.
    pub volume_uuid: u128,
    /// This node's id.
    pub node_id: u8,
    /// The peer's id.
    pub peer_node_id: u8,
    /// What `--force` overwrote, if anything was there.
    pub overwrote: Option<String>,
    /// Created in sync with the peer ([`create_md_in_sync`]): no first sync is needed.
    pub in_sync: bool,
}

impl fmt::Display for CreateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layout = &self.layout;
        let meta_path = self.meta.as_deref().unwrap_or(&self.data).display();
        writeln!(
            f,
            "initialised twinsan metadata for node {} (peer node {}):",
            self.node_id, self.peer_node_id
        )?;
        writeln!(f, "  volume uuid:   {:032x}", self.volume_uuid)?;
        writeln!(
            f,
            "  data:          {}, {}",
            self.data.display(),
            human_size(layout.backing_size)
        )?;
        match layout.placement.kind() {
            PlacementKind::Internal => writeln!(
                f,
                "  placement:     internal, at the end of the data device"
            )?,
            PlacementKind::External => writeln!(f, "  placement:     external, on {meta_path}")?,
        }
        writeln!(f, "  data size:     {}", human_size(layout.data_size))?;
        writeln!(
            f,
            "  metadata:      {} at offset {} of {meta_path}",
            human_size(layout.metadata.len),
            layout.metadata.offset
        )?;
        writeln!(
            f,
            "  superblock:    {SUPERBLOCK_COPIES} copies of {BLOCK_SIZE} bytes at offsets {} and {}",
            layout.superblocks[0].offset, layout.superblocks[1].offset
        )?;
        writeln!(
            f,
            "  activity log:  {ACTIVITY_LOG_SLOTS} slots of {} KiB at offset {}, zeroed (extents of {} MiB)",
            ACTIVITY_LOG_SLOT_SIZE >> 10,
            layout.activity_log.offset,
            ACTIVITY_LOG_EXTENT_SIZE >> 20
        )?;
        writeln!(
            f,
            "  bitmap:        {} at offset {}, zeroed (one bit per {} KiB of data)",
            human_size(layout.bitmap.len),
            layout.bitmap.offset,
            BITMAP_GRANULARITY >> 10
        )?;
        if let Some(found) = &self.overwrote {
            writeln!(f, "  overwrote:     {found} (--force)")?;
        }
        if self.in_sync {
            write!(
                f,
                "  state:         in sync with the peer's copy (both new and identical): no first sync needed"
            )
        } else {
            write!(
                f,
                "  state:         Inconsistent until the first sync (`volume primary --force` on the node whose data \
                 is the original starts it)"
            )
        }
    }
}

/// Creates the metadata of a volume on this node: opens `data` (and `meta` for external metadata), computes
/// the layout, refuses without `force` when the metadata device already holds twinsan metadata, a filesystem, a
/// volume manager label or a partition table, then zeroes the activity log and the bitmap, writes the superblock
/// (sequence 0 to slot 0, sequence 1 to slot 1, so neither slot keeps an older volume's copy) and syncs.
///
/// With external metadata the data device is only opened to read its size: whatever it holds is kept.
pub fn create_md(
    data: &Path,
    meta: Option<&Path>,
    volume_uuid: u128,
    node_id: u8,
    peer_node_id: u8,
    force: bool,
) -> Result<CreateReport, MdError> {
    create(data, meta, volume_uuid, node_id, peer_node_id, force, None)
}

/// [`create_md`] for a pair whose data is already identical on both nodes — `twinsan init`'s fresh files, all
/// zeroes — so no initial sync is needed (DRBD's `new-current-uuid --clear-bitmap` on a new pair, done at
/// creation): the superblock says consistent and up to date, in generation `current_uuid`, which both nodes
/// must be given. Each node attaches as Consistent, and the two become UpToDate as soon as they connect and see
/// the same generation.
pub fn create_md_in_sync(
    data: &Path,
    meta: Option<&Path>,
    volume_uuid: u128,
    node_id: u8,
    peer_node_id: u8,
    current_uuid: u64,
) -> Result<CreateReport, MdError> {
    create(
        data,
        meta,
        volume_uuid,
        node_id,
        peer_node_id,
        false,
        Some(current_uuid),
    )
}

fn create(
    data: &Path,
    meta: Option<&Path>,
    volume_uuid: u128,
    node_id: u8,
    peer_node_id: u8,
    force: bool,
    in_sync: Option<u64>,
) -> Result<CreateReport, MdError> {
    let data_device = Device::open(data, meta.is_none())?;
    let meta_device = meta.map(|path| Device::open(path, true)).transpose()?;
    let layout = compute_layout(&data_device, meta_device.as_ref())?;
    let device = meta_device.as_ref().unwrap_or(&data_device);
    let mut superblock = Superblock::create(
        &layout,
        volume_uuid,
        node_id,
        peer_node_id,
        in_sync.unwrap_or(UUID_JUST_CREATED),
    )
    .map_err(|source| MdError::Refused {
        path: device.path.clone(),
        source,
    })?;
    if in_sync.is_some() {
        superblock.flags.consistent = true;
        superblock.flags.was_up_to_date = true;
    }
    let overwrote = device.existing(&layout)?;
    if let Some(found) = &overwrote {
        if !force {
            return Err(MdError::Existing {
                path: device.path.clone(),
                found: found.clone(),
            });
        }
    }
    device.zero(layout.activity_log, "zeroing the activity log")?;
    device.zero(layout.bitmap, "zeroing the bitmap")?;
    for sequence in 0..SUPERBLOCK_COPIES as u64 {
        superblock.sequence = sequence;
        let slot = layout.superblocks[superblock.slot()];
        device.write(slot.offset, &superblock.encode(), "writing the superblock")?;
    }
    device.sync()?;
    Ok(CreateReport {
        data: data.to_path_buf(),
        meta: meta.map(Path::to_path_buf),
        layout,
        volume_uuid,
        node_id,
        peer_node_id,
        overwrote,
        in_sync: in_sync.is_some(),
    })
}

/// Reads the metadata of a volume on this node: both superblock slots, the newer valid copy picked by
/// [`choose`] and checked against this device's layout. Nothing is written, whatever is found; a copy passed over
/// as damaged is in [`Chosen::other`] for the caller to report.
pub fn read_md(data: &Path, meta: Option<&Path>) -> Result<(Layout, Chosen), MdError> {
    let data_device = Device::open(data, false)?;
    let meta_device = meta.map(|path| Device::open(path, false)).transpose()?;
    let layout = compute_layout(&data_device, meta_device.as_ref())?;
    let device = meta_device.as_ref().unwrap_or(&data_device);
    let [slot0, slot1] = layout
        .superblocks
        .map(|slot| device.read(slot.offset, slot.len));
    let chosen = match choose(&slot0?, &slot1?) {
        Ok(chosen) => chosen,
        Err(MetadataError::NotMetadata { .. }) => {
            return Err(MdError::NoMetadata {
                path: device.path.clone(),
            })
        }
        Err(source) => {
            return Err(MdError::Metadata {
                path: device.path.clone(),
                source,
            })
        }
    };
    chosen
        .superblock
        .check_fits(&layout)
        .map_err(|source| MdError::Metadata {
            path: device.path.clone(),
            source,
        })?;
    Ok((layout, chosen))
}

pub use twinsan_replication::metadata::human_size;

/// The layout for `data` with internal metadata, or external metadata on `meta`; a device too small is named.
fn compute_layout(data: &Device, meta: Option<&Device>) -> Result<Layout, MdError> {
    let too_small = |device: &Device| {
        let path = device.path.clone();
        move |source| MdError::Layout { path, source }
    };
    match meta {
        None => Layout::compute(data.size, Placement::Internal).map_err(too_small(data)),
        Some(meta) => {
            // The data device on its own first, so that a too-small error names the right file.
            Layout::compute(
                data.size,
                Placement::External {
                    device_size: u64::MAX,
                },
            )
            .map_err(too_small(data))?;
            Layout::compute(
                data.size,
                Placement::External {
                    device_size: meta.size,
                },
            )
            .map_err(too_small(meta))
        }
    }
}

/// An open data or metadata file or block device.
struct Device {
    path: PathBuf,
    file: File,
    size: u64,
    /// Held while a device is open for writing: no other process has it (SPEC 3, invariant 9).
    _claim: Option<BackingClaim>,
}

impl Device {
    /// Opens `path`, for writing if `write`. A device opened for writing is claimed for this process first
    /// ([`BackingClaim`]: a lock on a file, `O_EXCL` on a block device), which is refused while a daemon runs on it
    /// or, for a block device, while it is mounted or held by another exclusive user.
    fn open(path: &Path, write: bool) -> Result<Device, MdError> {
        let open_error = |source| MdError::Open {
            path: path.to_path_buf(),
            source,
        };
        let kind = std::fs::metadata(path).map_err(open_error)?.file_type();
        let block = kind.is_block_device();
        if !block && !kind.is_file() {
            return Err(MdError::NotStorage {
                path: path.to_path_buf(),
                kind: describe(kind),
            });
        }
        let claim = match write.then(|| BackingClaim::acquire(path)).transpose() {
            Ok(claim) => claim,
            Err(error @ TargetError::InUse { .. }) => return Err(MdError::InUse(error)),
            Err(TargetError::Backing { source, .. }) => return Err(open_error(source)),
            Err(other) => return Err(open_error(io::Error::other(other.to_string()))),
        };
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .map_err(open_error)?;
        let size = if block {
            twinsan_target::block_device_size(&file)
        } else {
            file.metadata().map(|m| m.len())
        }
        .map_err(|source| MdError::Io {
            path: path.to_path_buf(),
            what: "reading the size".into(),
            source,
        })?;
        Ok(Device {
            path: path.to_path_buf(),
            file,
            size,
            _claim: claim,
        })
    }

    fn io_error(&self, what: impl Into<String>) -> impl FnOnce(io::Error) -> MdError + '_ {
        let what = what.into();
        move |source| MdError::Io {
            path: self.path.clone(),
            what,
            source,
        }
    }

    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, MdError> {
        usize::try_from(len)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
            .and_then(|len| {
                let mut buf = vec![0u8; len];
                self.file.read_exact_at(&mut buf, offset).map(|()| buf)
            })
            .map_err(self.io_error(format!("reading {len} bytes at offset {offset}")))
    }

    fn write(&self, offset: u64, bytes: &[u8], what: &str) -> Result<(), MdError> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(self.io_error(format!("{what} ({} bytes at offset {offset})", bytes.len())))
    }

    /// Writes zeros over `region`.
    fn zero(&self, region: Region, what: &str) -> Result<(), MdError> {
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK.min(region.len) as usize];
        let mut offset = region.offset;
        while offset < region.end() {
            let len = CHUNK.min(region.end() - offset) as usize;
            self.write(offset, &zeros[..len], what)?;
            offset += len as u64;
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), MdError> {
        self.file.sync_all().map_err(self.io_error("fsync"))
    }

    /// What the device holds that `create-md` would destroy: twinsan metadata in either slot of `layout` (a valid
    /// copy, or a damaged one that still has the magic), or any signature `detect_signature` knows.
    fn existing(&self, layout: &Layout) -> Result<Option<String>, MdError> {
        for (slot, region) in layout.superblocks.iter().enumerate() {
            let block = self.read(region.offset, region.len)?;
            match Superblock::decode(&block) {
                Ok(found) => {
                    return Ok(Some(format!(
                        "twinsan metadata (volume {:032x}, node {}, in superblock slot {slot})",
                        found.volume_uuid, found.node_id
                    )))
                }
                Err(_) if block.starts_with(&metadata::MAGIC) => {
                    return Ok(Some(format!(
                        "damaged twinsan metadata (in superblock slot {slot})"
                    )))
                }
                Err(_) => {}
            }
        }
        let head = self.read(0, self.size.min(SIGNATURE_HEAD_SIZE as u64))?;
        let end = self.size / BLOCK_SIZE * BLOCK_SIZE;
        let tail_start = end.saturating_sub(SIGNATURE_TAIL_SIZE as u64);
        let tail = self.read(tail_start, end - tail_start)?;
        Ok(detect_signature(&head, &tail).map(|signature| signature.name().to_string()))
    }
}

/// "a directory", "a character device", ... for a file type that is neither a regular file nor a block device.
fn describe(kind: std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_fifo() {
        "a named pipe"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "neither a file nor a device"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinsan_replication::metadata::{metadata_size_for, Signature, MIN_DATA_SIZE};

    const MIB: u64 = 1 << 20;
    const UUID: u128 = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef;

    /// A temporary folder under the system's, removed on drop.
    fn temp_dir(tag: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("twinsan-md-{tag}-"))
            .tempdir()
            .expect("create temp dir")
    }

    /// A sparse file of `size` zero bytes in `dir`.
    trait SparseFile {
        fn file(&self, name: &str, size: u64) -> PathBuf;
    }

    impl SparseFile for tempfile::TempDir {
        fn file(&self, name: &str, size: u64) -> PathBuf {
            let path = self.path().join(name);
            File::create(&path)
                .and_then(|f| f.set_len(size))
                .expect("create file");
            path
        }
    }

    /// A backing file size whose internal layout holds exactly `data` bytes.
    fn backing_for(data: u64) -> u64 {
        data + metadata_size_for(data)
    }

    fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
        let file = OpenOptions::new().write(true).open(path).expect("open");
        file.write_all_at(bytes, offset).expect("write");
    }

    #[test]
    fn create_then_read_back_internal() {
        let dir = temp_dir("internal");
        let data = dir.file("vol0.img", backing_for(64 * MIB));
        let report = create_md(&data, None, UUID, 1, 2, false).expect("created");
        assert_eq!(report.layout.data_size, 64 * MIB);
        assert_eq!(report.overwrote, None);
        let shown = report.to_string();
        for part in [
            data.display().to_string(),
            "internal".into(),
            "67108864 bytes (64.00 MiB)".into(),
            format!("{UUID:032x}"),
            format!("at offset {} of", 64 * MIB),
            "64 slots of 4 KiB".into(),
            "4096 bytes at offset".into(),
            "node 1 (peer node 2)".into(),
        ] {
            assert!(shown.contains(&part), "{part:?} missing from:\n{shown}");
        }
        assert!(shown.lines().count() >= 9, "one item a line:\n{shown}");

        let (layout, chosen) = read_md(&data, None).expect("read back");
        assert_eq!(layout, report.layout);
        let sb = &chosen.superblock;
        assert_eq!((sb.volume_uuid, sb.node_id, sb.peer_node_id), (UUID, 1, 2));
        assert_eq!(sb.current_uuid, UUID_JUST_CREATED);
        assert_eq!(sb.data_size, 64 * MIB);
        assert_eq!(sb.placement, PlacementKind::Internal);
        assert!(!sb.flags.consistent && sb.flags.al_clean);
        assert_eq!(
            (chosen.slot, sb.sequence, &chosen.other),
            (1, 1, &None),
            "both slots written"
        );
        // The data area is untouched: still zero (a sparse file reads as zeros).
        let file = File::open(&data).expect("open");
        let mut head = vec![0u8; 4096];
        file.read_exact_at(&mut head, 0).expect("read");
        assert!(head.iter().all(|&b| b == 0));
    }

    #[test]
    fn existing_metadata_is_refused_and_force_overwrites_it() {
        let dir = temp_dir("existing");
        let data = dir.file("vol0.img", backing_for(8 * MIB));
        create_md(&data, None, UUID, 1, 2, false).expect("created");
        let before = std::fs::read(&data).expect("read");
        let error = create_md(&data, None, UUID + 1, 1, 2, false).expect_err("refused");
        let shown = error.to_string();
        assert!(matches!(error, MdError::Existing { .. }), "{error:?}");
        for part in [
            &data.display().to_string(),
            "twinsan metadata",
            "nothing was written",
            "--force",
        ] {
            assert!(shown.contains(part), "{part:?} missing from {shown}");
        }
        assert_eq!(
            std::fs::read(&data).expect("read"),
            before,
            "nothing written"
        );

        let report = create_md(&data, None, UUID + 1, 1, 2, true).expect("forced");
        assert!(report
            .overwrote
            .as_deref()
            .is_some_and(|o| o.contains("twinsan metadata")));
        assert!(report.to_string().contains("overwrote:"));
        let (_, chosen) = read_md(&data, None).expect("read back");
        assert_eq!(chosen.superblock.volume_uuid, UUID + 1);
    }

    #[test]
    fn damaged_metadata_is_still_refused() {
        let dir = temp_dir("damaged");
        let data = dir.file("vol0.img", backing_for(8 * MIB));
        let report = create_md(&data, None, UUID, 1, 2, false).expect("created");
        // Both slots damaged past their magic: no copy decodes, but the magic says what they were.
        for slot in report.layout.superblocks {
            write_at(&data, slot.offset + 100, &[0xff]);
        }
        let error = create_md(&data, None, UUID, 1, 2, false).expect_err("refused");
        assert!(
            error.to_string().contains("damaged twinsan metadata"),
            "{error}"
        );
    }

    #[test]
    fn an_ext4_filesystem_is_refused_without_force() {
        let dir = temp_dir("ext4");
        let data = dir.file("vol0.img", backing_for(8 * MIB));
        write_at(&data, 1080, &0xEF53u16.to_le_bytes());
        let error = create_md(&data, None, UUID, 1, 2, false).expect_err("refused");
        let shown = error.to_string();
        assert!(shown.contains(Signature::Ext.name()), "{shown}");
        assert!(
            shown.contains(&data.display().to_string()) && shown.contains("--force"),
            "{shown}"
        );
        assert!(
            matches!(read_md(&data, None), Err(MdError::NoMetadata { .. })),
            "nothing was written"
        );

        let report = create_md(&data, None, UUID, 1, 2, true).expect("forced");
        assert_eq!(report.overwrote.as_deref(), Some(Signature::Ext.name()));
        read_md(&data, None).expect("metadata now");
    }

    #[test]
    fn external_metadata_leaves_the_data_alone() {
        let dir = temp_dir("external");
        let data = dir.file("vol0.img", 16 * MIB);
        // A filesystem on the data device is kept, not refused: external metadata never writes there.
        write_at(&data, 1080, &0xEF53u16.to_le_bytes());
        let data_before = std::fs::read(&data).expect("read");
        let meta = dir.file("vol0.md", metadata_size_for(16 * MIB));
        let report = create_md(&data, Some(&meta), UUID, 2, 1, false).expect("created");
        assert_eq!(report.layout.data_size, 16 * MIB);
        assert_eq!(report.layout.superblocks[0].offset, 0);
        let shown = report.to_string();
        assert!(
            shown.contains("external") && shown.contains(&meta.display().to_string()),
            "{shown}"
        );
        assert_eq!(std::fs::read(&data).expect("read"), data_before);

        let (layout, chosen) = read_md(&data, Some(&meta)).expect("read back");
        assert_eq!(
            layout.placement,
            Placement::External {
                device_size: metadata_size_for(16 * MIB)
            }
        );
        assert_eq!(chosen.superblock.placement, PlacementKind::External);
        assert_eq!(
            (chosen.superblock.node_id, chosen.superblock.peer_node_id),
            (2, 1)
        );
        // The same devices read as internal metadata: the data file has none at its end.
        assert!(matches!(
            read_md(&data, None),
            Err(MdError::NoMetadata { .. })
        ));

        let error = create_md(&data, Some(&meta), UUID, 2, 1, false).expect_err("existing");
        assert!(
            error.to_string().starts_with(&meta.display().to_string()),
            "{error}"
        );
    }

    #[test]
    fn too_small_devices_are_refused_with_the_size_needed() {
        let dir = temp_dir("small");
        let data = dir.file("vol0.img", MIB);
        let error = create_md(&data, None, UUID, 1, 2, false).expect_err("too small");
        let needed = MIN_DATA_SIZE + metadata_size_for(MIN_DATA_SIZE);
        let shown = error.to_string();
        assert!(shown.starts_with(&data.display().to_string()), "{shown}");
        assert!(
            shown.contains("too small") && shown.contains(&needed.to_string()),
            "{shown}"
        );
        assert_eq!(
            std::fs::read(&data).expect("read"),
            vec![0; MIB as usize],
            "nothing written"
        );

        let big = dir.file("big.img", 64 * MIB);
        let meta = dir.file("small.md", 4096);
        let error = create_md(&big, Some(&meta), UUID, 1, 2, false).expect_err("meta too small");
        let shown = error.to_string();
        assert!(shown.starts_with(&meta.display().to_string()), "{shown}");
        assert!(
            shown.contains(&metadata_size_for(64 * MIB).to_string()),
            "{shown}"
        );
        // External metadata leaves the whole data device to the data, which must still be 1 MiB.
        let tiny = dir.file("tiny.img", MIB / 2);
        let error = create_md(&tiny, Some(&meta), UUID, 1, 2, false).expect_err("data too small");
        let shown = error.to_string();
        assert!(shown.starts_with(&tiny.display().to_string()), "{shown}");
        assert!(shown.contains(&MIN_DATA_SIZE.to_string()), "{shown}");
    }

    #[test]
    fn a_corrupt_superblock_is_refused_by_name_and_left_alone() {
        let dir = temp_dir("corrupt");
        let data = dir.file("vol0.img", backing_for(8 * MIB));
        let report = create_md(&data, None, UUID, 1, 2, false).expect("created");
        let [slot0, slot1] = report.layout.superblocks;

        // One damaged copy: the other is used, and the damage is reported.
        write_at(&data, slot1.offset + 200, &[0x5a]);
        let (_, chosen) = read_md(&data, None).expect("falls back to slot 0");
        assert_eq!(chosen.slot, 0);
        assert!(matches!(
            chosen.other,
            Some(MetadataError::ChecksumMismatch { .. })
        ));

        // Both damaged: refused, and the file is left as it was.
        write_at(&data, slot0.offset + 200, &[0x5a]);
        let before = std::fs::read(&data).expect("read");
        let error = read_md(&data, None).expect_err("corrupt");
        let shown = error.to_string();
        assert!(matches!(
            error,
            MdError::Metadata {
                source: MetadataError::ChecksumMismatch { .. },
                ..
            }
        ));
        for part in [
            &data.display().to_string(),
            "corrupt",
            "checksum",
            "nothing was written",
        ] {
            assert!(shown.contains(part), "{part:?} missing from {shown}");
        }
        assert_eq!(std::fs::read(&data).expect("read"), before);
    }

    #[test]
    fn a_resized_device_no_longer_matches_its_metadata() {
        let dir = temp_dir("resized");
        let data = dir.file("vol0.img", backing_for(8 * MIB));
        create_md(
            &data,
            Some(&dir.file("vol0.md", 1 << 20)),
            UUID,
            1,
            2,
            false,
        )
        .expect("created");
        // The data device shrank below the recorded data size.
        File::options()
            .write(true)
            .open(&data)
            .and_then(|f| f.set_len(4 * MIB))
            .expect("shrink");
        let error = read_md(&data, Some(&dir.path().join("vol0.md"))).expect_err("does not fit");
        assert!(error.to_string().contains("data_size"), "{error}");
    }

    #[test]
    fn bad_arguments_and_paths_are_refused_before_anything_is_written() {
        let dir = temp_dir("args");
        let data = dir.file("vol0.img", backing_for(8 * MIB));
        let error = create_md(&data, None, UUID, 1, 1, false).expect_err("same ids");
        assert!(matches!(error, MdError::Refused { .. }), "{error:?}");
        assert!(error.to_string().contains("nothing was written"), "{error}");
        let error = create_md(&data, None, 0, 1, 2, false).expect_err("zero uuid");
        assert!(error.to_string().contains("volume_uuid"), "{error}");
        assert!(matches!(
            read_md(&data, None),
            Err(MdError::NoMetadata { .. })
        ));

        let missing = dir.path().join("missing.img");
        let error = create_md(&missing, None, UUID, 1, 2, false).expect_err("missing");
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot open {}", missing.display())),
            "{error}"
        );
        let error = read_md(dir.path(), None).expect_err("a directory");
        assert!(error.to_string().contains("is a directory"), "{error}");
    }

    #[test]
    fn a_device_another_process_holds_is_refused_untouched() {
        let dir = temp_dir("claimed");
        let data = dir.file("vol0.img", backing_for(8 * MIB));
        create_md(&data, None, UUID, 1, 2, false).expect("created");
        let before = std::fs::read(&data).expect("read");
        // A running daemon's claim; a second open file description conflicts like another process would.
        let held = BackingClaim::acquire(&data).expect("claimed");
        let error = create_md(&data, None, UUID + 1, 1, 2, true).expect_err("in use");
        assert!(matches!(error, MdError::InUse(_)), "{error:?}");
        let shown = error.to_string();
        for part in [
            data.display().to_string(),
            format!("process {}", std::process::id()),
            "nothing was read or written".into(),
        ] {
            assert!(shown.contains(&part), "{part:?} missing from {shown}");
        }
        assert_eq!(
            std::fs::read(&data).expect("read"),
            before,
            "nothing written"
        );
        // Reading takes no claim.
        read_md(&data, None).expect("read while claimed");
        drop(held);
        create_md(&data, None, UUID + 1, 1, 2, true).expect("forced once released");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(512), "512 bytes");
        assert_eq!(human_size(64 * MIB), "67108864 bytes (64.00 MiB)");
    }
}
