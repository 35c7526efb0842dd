//! The on-disk metadata of a replicated volume: where it lives ([`Layout`]), the checksummed
//! [`Superblock`] and how to read it back ([`Superblock::decode`], [`choose`]), and the check
//! `create-md` runs before it writes anything ([`detect_signature`]).
//!
//! No I/O happens here: the volume engine reads and writes the bytes at the offsets this module
//! computes. The ideas are DRBD's (metadata at the end of the backing device or on a separate one;
//! a 4 KiB superblock; one bitmap bit per 4 KiB; an activity log of hot extents); the format is
//! twinsan's own and shares no byte with DRBD's.
//!
//! # Where the metadata lives
//!
//! Every part is a whole number of 4 KiB blocks at a 4 KiB-aligned offset, so the engine can use
//! O_DIRECT. Offsets are on the *metadata device*: the backing device itself for internal
//! metadata, the separate device or file for external metadata.
//!
//! ```text
//! internal (one device; E = its size rounded down to 4 KiB):
//! 0                data_size         E-8K-256K-bitmap     E-8K-256K     E-8K     E-4K     E
//! | data ..........|slack (0 or 4K)| bitmap             | activity log | slot 1 | slot 0 |
//!
//! external (the metadata device; the data uses the whole backing device, rounded down to 4 KiB):
//! 0        4K       8K                264K                          264K+bitmap
//! | slot 0 | slot 1 | activity log     | bitmap ...................... | unused up to device_size
//! ```
//!
//! Internal metadata keeps its superblock at the very end of the device, as DRBD does: it is
//! found from the device size alone, and the data still starts at offset 0, so a device that
//! already holds a filesystem (shrunk to leave room at the end) keeps it readable through the
//! volume. External metadata starts at
//! offset 0 so a metadata file may be created at exactly its size, or larger.
//!
//! Sizes: two superblock slots (8 KiB), an activity log of [`ACTIVITY_LOG_SLOTS`] transaction
//! slots of 4 KiB (256 KiB), and a bitmap of one bit per 4 KiB of data per peer (two nodes: one
//! peer), rounded up to 4 KiB. That is 264 KiB plus about 32 KiB per GiB of data: 1 TiB of data
//! needs 32 MiB + 264 KiB ([`metadata_size_for`]). Internal placement gives the data the largest
//! 4 KiB multiple for which data + metadata still fit. A volume has at least 1 MiB of data.
//!
//! # The superblock
//!
//! One 4096-byte block, all integers **little endian**, at fixed offsets:
//!
//! | offset | size | field                                                                  |
//! |-------:|-----:|------------------------------------------------------------------------|
//! |      0 |    8 | magic `89 54 57 49 4e 53 4d 44` (`"\x89TWINSMD"`, [`MAGIC`])            |
//! |      8 |    4 | format version ([`FORMAT_VERSION`] = 1)                                 |
//! |     12 |    4 | CRC32C of the whole block, computed with these 4 bytes zeroed          |
//! |     16 |    8 | sequence: +1 on every superblock write                                 |
//! |     24 |   16 | volume UUID (u128, never 0)                                            |
//! |     40 |    1 | node id of this node                                                   |
//! |     41 |    1 | node id of the peer (differs from ours)                                |
//! |     42 |    1 | placement: 0 internal, 1 external                                      |
//! |     43 |    1 | reserved, zero                                                         |
//! |     44 |    4 | flags (bits below; unknown bits must be zero)                          |
//! |     48 |    8 | data size in bytes: the last agreed size of the volume (4 KiB multiple) |
//! |     56 |    8 | bitmap area size in bytes (4 KiB multiple, covers the data)             |
//! |     64 |    4 | bitmap granularity in bytes (4096)                                     |
//! |     68 |    4 | bitmaps (one per peer: 1)                                              |
//! |     72 |    4 | activity-log extent size in bytes (4 MiB)                              |
//! |     76 |    4 | activity-log transaction slots (64)                                    |
//! |     80 |    8 | current generation UUID                                                |
//! |     88 |    8 | bitmap generation UUID (the peer's)                                    |
//! |     96 |    8 | history generation UUID 0                                              |
//! |    104 |    8 | history generation UUID 1                                              |
//! |    112 |    4 | length L of the reservation state (at most [`RESERVATIONS_CAPACITY`])  |
//! |    116 |    L | the SCSI persistent reservation state of the volume's logical unit     |
//! |  116+L |      | reserved, zero                                                         |
//!
//! Decoding checks, in this order, so the message names the first thing wrong: the length, the
//! magic, the version, the checksum, the reserved bytes, the fixed sizes, then the fields against
//! each other. A block that fails any check is refused with a [`MetadataError`] the admin reads;
//! nothing here repairs or overwrites it (invariant 7).
//!
//! # Two copies
//!
//! The superblock is rewritten on every role change, new generation UUID, end of resync and clean
//! shutdown. A crash in the middle of that write can tear it (a 4 KiB write on a 512-byte-sector
//! disk is not atomic). With one copy that ordinary crash would leave a volume that refuses to
//! attach until an admin restores it; so there are two slots and writes alternate between them:
//! a superblock with sequence `n` goes to slot `n % 2` ([`Superblock::slot`]), and the write never
//! touches the block holding the current copy. [`choose`] reads both and takes the valid copy
//! with the higher sequence; when the other copy is damaged it says so, for the engine to report.
//!
//! The engine's side of that contract:
//! - `create-md` writes the new superblock with sequence 0 to slot 0 and again with sequence 1 to
//!   slot 1 (so both slots hold this volume, never a leftover of an earlier one), and zeroes the
//!   activity log and bitmap;
//! - an update clones the chosen superblock, changes it, adds 1 to `sequence`, writes it to
//!   `layout.superblocks[sb.slot()]` with FUA, and acts on it (acknowledges the write that needed
//!   a new current UUID, for example) only once that write completed. A torn update therefore was
//!   never acted on, and falling back to the previous copy loses nothing that was promised.
//!
//! A damaged copy cannot be told apart from a completed write that rotted later, so the fallback
//! is never silent: [`Chosen::other`] carries the damaged slot's error.

use std::fmt;

/// The unit of everything on disk: metadata parts, data size and bitmap granularity.
pub const BLOCK_SIZE: u64 = 4096;
/// Size of one superblock copy in bytes.
pub const SUPERBLOCK_SIZE: usize = 4096;
/// Number of superblock copies (slots), written alternately.
pub const SUPERBLOCK_COPIES: usize = 2;
/// Number of 4 KiB transaction slots in the activity-log area.
pub const ACTIVITY_LOG_SLOTS: u32 = 64;
/// Size of one activity-log transaction slot in bytes.
pub const ACTIVITY_LOG_SLOT_SIZE: u64 = 4096;
/// Size of the data extent one activity-log entry covers, in bytes (4 MiB).
pub const ACTIVITY_LOG_EXTENT_SIZE: u64 = 4 << 20;
/// Bytes of data one bitmap bit stands for.
pub const BITMAP_GRANULARITY: u64 = 4096;
/// Number of per-peer bitmaps: two nodes, so one peer.
pub const BITMAP_PEERS: u64 = 1;
/// The smallest data area a volume may have (1 MiB).
pub const MIN_DATA_SIZE: u64 = 1 << 20;
/// The first 8 bytes of every twinsan superblock. The non-ASCII first byte keeps text files and
/// zeroed disks from ever matching, as PNG does.
pub const MAGIC: [u8; 8] = *b"\x89TWINSMD";
/// The superblock format this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of SCSI persistent reservation state a superblock holds (the rest of the 4 KiB block after the fixed
/// fields and the length). The state changes rarely and must survive a torn write like the generation
/// identifiers do, so it lives in the superblock and shares its two alternating copies.
pub const RESERVATIONS_CAPACITY: usize = SUPERBLOCK_SIZE - offset::RESERVATIONS;

/// Bytes of the activity-log area.
const ACTIVITY_LOG_SIZE: u64 = ACTIVITY_LOG_SLOTS as u64 * ACTIVITY_LOG_SLOT_SIZE;
/// Bytes of metadata that do not depend on the data size: both superblock slots and the log.
const FIXED_METADATA_SIZE: u64 =
    SUPERBLOCK_COPIES as u64 * SUPERBLOCK_SIZE as u64 + ACTIVITY_LOG_SIZE;

/// Byte offsets of the superblock fields (see the table in the module docs).
mod offset {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const CHECKSUM: usize = 12;
    pub const SEQUENCE: usize = 16;
    pub const VOLUME_UUID: usize = 24;
    pub const NODE_ID: usize = 40;
    pub const PEER_NODE_ID: usize = 41;
    pub const PLACEMENT: usize = 42;
    pub const RESERVED_BYTE: usize = 43;
    pub const FLAGS: usize = 44;
    pub const DATA_SIZE: usize = 48;
    pub const BITMAP_SIZE: usize = 56;
    pub const BITMAP_GRANULARITY: usize = 64;
    pub const BITMAP_PEERS: usize = 68;
    pub const AL_EXTENT_SIZE: usize = 72;
    pub const AL_SLOTS: usize = 76;
    pub const CURRENT_UUID: usize = 80;
    pub const BITMAP_UUID: usize = 88;
    pub const HISTORY_UUIDS: usize = 96;
    pub const RESERVATIONS_LEN: usize = 112;
    pub const RESERVATIONS: usize = 116;
}

/// Why metadata was refused. The `Display` text is the message the admin sees.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// The block handed to the decoder is not one superblock long (a short read, or a caller bug).
    #[error("metadata superblock must be {SUPERBLOCK_SIZE} bytes, got {len}")]
    WrongLength {
        /// Bytes handed in.
        len: usize,
    },
    /// The block does not start with [`MAGIC`]: this is not twinsan metadata (or not any more).
    #[error("no twinsan metadata: magic is {}, expected {}", hex(magic), hex(&MAGIC))]
    NotMetadata {
        /// The first 8 bytes found.
        magic: [u8; 8],
    },
    /// twinsan metadata in a format this build does not read, written by a newer twinsan.
    #[error(
        "metadata format version {version} is not supported: this twinsan reads version \
         {FORMAT_VERSION}; run the twinsan that created it, or a newer one"
    )]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// The block is twinsan metadata but its CRC32C does not match: torn or corrupted.
    #[error(
        "metadata superblock is corrupt: checksum is {stored:#010x} but the block computes to \
         {computed:#010x} — refusing to use it; restore from the peer or re-create with \
         create-md --force"
    )]
    ChecksumMismatch {
        /// The checksum stored in the block.
        stored: u32,
        /// The checksum computed over the block.
        computed: u32,
    },
    /// The checksum matches but a field is impossible, or does not fit this device's layout.
    #[error("metadata superblock is inconsistent ({field}: {why}) — refusing to use it")]
    Inconsistent {
        /// The field at fault, as named in the format table.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A device cannot hold the metadata plus the minimum data size.
    #[error("{device} is too small: it has {}, twinsan needs at least {} ({needed_for})", human_size(*size_bytes), human_size(*needed_bytes))]
    TooSmall {
        /// Which device: "backing device" or "external metadata device".
        device: &'static str,
        /// Its size in bytes.
        size_bytes: u64,
        /// The smallest size that would do, in bytes.
        needed_bytes: u64,
        /// What that size is made of.
        needed_for: String,
    },
}

/// Where the metadata of a volume is kept, as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Placement {
    /// At the end of the backing device; the data area shrinks by the metadata size.
    Internal,
    /// On a separate device or file of `device_size` bytes; the data uses the whole backing
    /// device.
    External {
        /// Size of the metadata device in bytes.
        device_size: u64,
    },
}

impl Placement {
    /// The placement without the device size, as the superblock records it.
    pub fn kind(self) -> PlacementKind {
        match self {
            Placement::Internal => PlacementKind::Internal,
            Placement::External { .. } => PlacementKind::External,
        }
    }
}

/// Internal or external, as recorded in the superblock (the external device may since have grown).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlacementKind {
    /// At the end of the backing device.
    Internal,
    /// On a separate device.
    External,
}

/// A byte range on the metadata device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Region {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Region {
    /// One past the last byte.
    pub fn end(self) -> u64 {
        self.offset + self.len
    }
}

/// Where each part of a volume's metadata lives and how much data the volume holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    /// The placement this layout was computed for.
    pub placement: Placement,
    /// Size of the backing (data) device in bytes, as given.
    pub backing_size: u64,
    /// Bytes of data the volume can hold on this node: a multiple of 4 KiB, at least 1 MiB.
    pub data_size: u64,
    /// The whole metadata area on the metadata device.
    pub metadata: Region,
    /// Superblock slot 0 and slot 1.
    pub superblocks: [Region; SUPERBLOCK_COPIES],
    /// The activity-log area: [`ACTIVITY_LOG_SLOTS`] transaction slots of 4 KiB.
    pub activity_log: Region,
    /// The bitmap area: one bit per 4 KiB of `data_size`, rounded up to 4 KiB.
    pub bitmap: Region,
}

/// Bytes of bitmap area needed for `data_size` bytes of data: one bit per 4 KiB, per peer, each
/// bitmap rounded up to 4 KiB.
pub fn bitmap_size_for(data_size: u64) -> u64 {
    let bits = data_size.div_ceil(BITMAP_GRANULARITY);
    bits.div_ceil(8).div_ceil(BLOCK_SIZE) * BLOCK_SIZE * BITMAP_PEERS
}

/// Bytes of metadata needed for `data_size` bytes of data (what an external metadata device must
/// hold at least).
pub fn metadata_size_for(data_size: u64) -> u64 {
    FIXED_METADATA_SIZE + bitmap_size_for(data_size)
}

impl Layout {
    /// Computes the layout for a backing device of `backing_size` bytes, refusing devices that
    /// cannot hold the metadata plus [`MIN_DATA_SIZE`] of data.
    pub fn compute(backing_size: u64, placement: Placement) -> Result<Layout, MetadataError> {
        let superblock = SUPERBLOCK_SIZE as u64;
        match placement {
            Placement::Internal => {
                // Anchor on the aligned end so the superblock is found from the device size alone
                // and stays 4 KiB aligned even on an odd-sized file.
                let end = round_down(backing_size);
                let needed = MIN_DATA_SIZE + metadata_size_for(MIN_DATA_SIZE);
                if end < needed {
                    return Err(MetadataError::TooSmall {
                        device: "backing device",
                        size_bytes: backing_size,
                        needed_bytes: needed,
                        needed_for: "internal metadata plus 1 MiB of data".to_string(),
                    });
                }
                let available = end - FIXED_METADATA_SIZE;
                let data_size = largest_data_size(available);
                let bitmap_len = bitmap_size_for(data_size);
                let slot0 = end - superblock;
                let slot1 = slot0 - superblock;
                let activity_log = slot1 - ACTIVITY_LOG_SIZE;
                let bitmap = activity_log - bitmap_len;
                Ok(Layout {
                    placement,
                    backing_size,
                    data_size,
                    metadata: Region {
                        offset: bitmap,
                        len: end - bitmap,
                    },
                    superblocks: [
                        Region {
                            offset: slot0,
                            len: superblock,
                        },
                        Region {
                            offset: slot1,
                            len: superblock,
                        },
                    ],
                    activity_log: Region {
                        offset: activity_log,
                        len: ACTIVITY_LOG_SIZE,
                    },
                    bitmap: Region {
                        offset: bitmap,
                        len: bitmap_len,
                    },
                })
            }
            Placement::External { device_size } => {
                let data_size = round_down(backing_size);
                if data_size < MIN_DATA_SIZE {
                    return Err(MetadataError::TooSmall {
                        device: "backing device",
                        size_bytes: backing_size,
                        needed_bytes: MIN_DATA_SIZE,
                        needed_for: "1 MiB of data".to_string(),
                    });
                }
                let needed = metadata_size_for(data_size);
                if device_size < needed {
                    return Err(MetadataError::TooSmall {
                        device: "external metadata device",
                        size_bytes: device_size,
                        needed_bytes: needed,
                        needed_for: format!("metadata for {} of data", human_size(data_size)),
                    });
                }
                let activity_log = SUPERBLOCK_COPIES as u64 * superblock;
                let bitmap = activity_log + ACTIVITY_LOG_SIZE;
                Ok(Layout {
                    placement,
                    backing_size,
                    data_size,
                    metadata: Region {
                        offset: 0,
                        len: needed,
                    },
                    superblocks: [
                        Region {
                            offset: 0,
                            len: superblock,
                        },
                        Region {
                            offset: superblock,
                            len: superblock,
                        },
                    ],
                    activity_log: Region {
                        offset: activity_log,
                        len: ACTIVITY_LOG_SIZE,
                    },
                    bitmap: Region {
                        offset: bitmap,
                        len: needed - bitmap,
                    },
                })
            }
        }
    }

    /// The region of activity-log transaction slot `index`, or `None` past the last slot.
    pub fn activity_log_slot(&self, index: u32) -> Option<Region> {
        (index < ACTIVITY_LOG_SLOTS).then(|| Region {
            offset: self.activity_log.offset + u64::from(index) * ACTIVITY_LOG_SLOT_SIZE,
            len: ACTIVITY_LOG_SLOT_SIZE,
        })
    }
}

/// The largest 4 KiB multiple `d` with `d + bitmap_size_for(d) <= available`. Both terms grow with
/// `d`, so the sizes that fit form a prefix and a binary search over 4 KiB blocks finds its end;
/// the caller has checked that [`MIN_DATA_SIZE`] fits.
fn largest_data_size(available: u64) -> u64 {
    // Checked: near u64::MAX the bitmap can push the sum past the end of the integer range.
    let fits = |blocks: u64| {
        let data = blocks * BLOCK_SIZE;
        data.checked_add(bitmap_size_for(data))
            .is_some_and(|total| total <= available)
    };
    let (mut low, mut high) = (MIN_DATA_SIZE / BLOCK_SIZE, available / BLOCK_SIZE);
    while low < high {
        let middle = low + (high - low).div_ceil(2);
        if fits(middle) {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    low * BLOCK_SIZE
}

fn round_down(bytes: u64) -> u64 {
    bytes / BLOCK_SIZE * BLOCK_SIZE
}

/// The state flags of the superblock: what the next attach must know about the last run.
///
/// Bits: `consistent` 0, `was_up_to_date` 1, `crashed_primary` 2, `primary_ind` 3,
/// `peer_outdated` 4, `al_clean` 5; the other bits are reserved and must be zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    /// The local data is a complete image of some point in time. Cleared while this node is a
    /// sync target and on `create-md`: the disk then attaches Inconsistent and may not be
    /// promoted without `--force`.
    pub consistent: bool,
    /// The data was UpToDate when last recorded. Consistent but not up to date means Outdated
    /// (the peer went on writing without us, or fenced us): not promotable until resynced.
    pub was_up_to_date: bool,
    /// This node crashed while primary: set at attach when `primary_ind` was still set, cleared
    /// once the extents of its activity log were resynced with the peer, because writes in
    /// flight at the crash may be on one disk only.
    pub crashed_primary: bool,
    /// This node is (or was, when it stopped) primary: set on promotion before the first write,
    /// cleared on a clean demotion. Breaks ties between the generation UUIDs after a crash.
    pub primary_ind: bool,
    /// This node fenced its peer (resource-only fencing marked it Outdated). Our data is known to
    /// be newer, so after a reboot we may be promoted without waiting for the peer; cleared when
    /// the peer has resynced.
    pub peer_outdated: bool,
    /// The activity log was closed cleanly (every logged extent written on both sides). When
    /// clear at attach, every extent in the log must be marked out of sync before use.
    pub al_clean: bool,
}

const FLAG_CONSISTENT: u32 = 1 << 0;
const FLAG_WAS_UP_TO_DATE: u32 = 1 << 1;
const FLAG_CRASHED_PRIMARY: u32 = 1 << 2;
const FLAG_PRIMARY_IND: u32 = 1 << 3;
const FLAG_PEER_OUTDATED: u32 = 1 << 4;
const FLAG_AL_CLEAN: u32 = 1 << 5;
const FLAGS_KNOWN: u32 = (1 << 6) - 1;

impl Flags {
    /// The on-disk bit field.
    pub fn bits(self) -> u32 {
        let flag = |set: bool, bit: u32| if set { bit } else { 0 };
        flag(self.consistent, FLAG_CONSISTENT)
            | flag(self.was_up_to_date, FLAG_WAS_UP_TO_DATE)
            | flag(self.crashed_primary, FLAG_CRASHED_PRIMARY)
            | flag(self.primary_ind, FLAG_PRIMARY_IND)
            | flag(self.peer_outdated, FLAG_PEER_OUTDATED)
            | flag(self.al_clean, FLAG_AL_CLEAN)
    }

    /// Parses the on-disk bit field, refusing reserved bits: a newer format that adds a flag must
    /// also bump the version, so a set unknown bit is damage or a bug, not something to ignore.
    pub fn from_bits(bits: u32) -> Result<Flags, MetadataError> {
        if bits & !FLAGS_KNOWN != 0 {
            return Err(MetadataError::Inconsistent {
                field: "flags",
                why: format!("reserved bits {:#010x} are set", bits & !FLAGS_KNOWN),
            });
        }
        Ok(Flags {
            consistent: bits & FLAG_CONSISTENT != 0,
            was_up_to_date: bits & FLAG_WAS_UP_TO_DATE != 0,
            crashed_primary: bits & FLAG_CRASHED_PRIMARY != 0,
            primary_ind: bits & FLAG_PRIMARY_IND != 0,
            peer_outdated: bits & FLAG_PEER_OUTDATED != 0,
            al_clean: bits & FLAG_AL_CLEAN != 0,
        })
    }
}

/// The superblock of a volume on one node. The generation UUIDs are only stored here; the
/// generation module decides what they mean.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Superblock {
    /// Identity of the volume (and of its LUN), created once by `create-md` and the same on both
    /// nodes; never 0.
    pub volume_uuid: u128,
    /// Node id of this node.
    pub node_id: u8,
    /// Node id of the peer; differs from `node_id`.
    pub peer_node_id: u8,
    /// Whether this metadata is internal or external.
    pub placement: PlacementKind,
    /// State flags.
    pub flags: Flags,
    /// Last agreed size of the volume in bytes (the smaller of both nodes' data sizes): a
    /// multiple of 4 KiB, at least 1 MiB.
    pub data_size: u64,
    /// Size of the bitmap area in bytes, as laid out when the metadata was created.
    pub bitmap_size: u64,
    /// Current generation UUID.
    pub current_uuid: u64,
    /// Bitmap generation UUID of the peer (0 when the bitmap tracks nothing).
    pub bitmap_uuid: u64,
    /// Older generation UUIDs, most recent first.
    pub history_uuids: [u64; 2],
    /// Incremented on every write of the superblock; picks the newer copy and its slot.
    pub sequence: u64,
    /// The SCSI persistent reservation state of the volume's logical unit, opaque here; at most
    /// [`RESERVATIONS_CAPACITY`] bytes (empty: none).
    pub reservations: Vec<u8>,
}

impl Superblock {
    /// A new superblock for `create-md`: sizes from `layout`, sequence 0, an empty activity log
    /// (`al_clean`), and not consistent, because the data has not been synced yet.
    pub fn create(
        layout: &Layout,
        volume_uuid: u128,
        node_id: u8,
        peer_node_id: u8,
        current_uuid: u64,
    ) -> Result<Superblock, MetadataError> {
        let superblock = Superblock {
            volume_uuid,
            node_id,
            peer_node_id,
            placement: layout.placement.kind(),
            flags: Flags {
                al_clean: true,
                ..Flags::default()
            },
            data_size: layout.data_size,
            bitmap_size: layout.bitmap.len,
            current_uuid,
            bitmap_uuid: 0,
            history_uuids: [0; 2],
            reservations: Vec::new(),
            sequence: 0,
        };
        superblock.check()?;
        Ok(superblock)
    }

    /// The slot this superblock is written to: `sequence % 2`, so consecutive writes alternate.
    pub fn slot(&self) -> usize {
        (self.sequence % SUPERBLOCK_COPIES as u64) as usize
    }

    /// The 4096-byte block for this superblock. It decodes again only if [`check`](Self::check)
    /// passes, which [`create`](Self::create) and [`decode`](Self::decode) guarantee.
    pub fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut block = [0u8; SUPERBLOCK_SIZE];
        let mut put = |offset: usize, bytes: &[u8]| {
            block[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(offset::MAGIC, &MAGIC);
        put(offset::VERSION, &FORMAT_VERSION.to_le_bytes());
        put(offset::SEQUENCE, &self.sequence.to_le_bytes());
        put(offset::VOLUME_UUID, &self.volume_uuid.to_le_bytes());
        put(offset::NODE_ID, &[self.node_id]);
        put(offset::PEER_NODE_ID, &[self.peer_node_id]);
        let placement = match self.placement {
            PlacementKind::Internal => 0u8,
            PlacementKind::External => 1u8,
        };
        put(offset::PLACEMENT, &[placement]);
        put(offset::FLAGS, &self.flags.bits().to_le_bytes());
        put(offset::DATA_SIZE, &self.data_size.to_le_bytes());
        put(offset::BITMAP_SIZE, &self.bitmap_size.to_le_bytes());
        put(
            offset::BITMAP_GRANULARITY,
            &(BITMAP_GRANULARITY as u32).to_le_bytes(),
        );
        put(offset::BITMAP_PEERS, &(BITMAP_PEERS as u32).to_le_bytes());
        put(
            offset::AL_EXTENT_SIZE,
            &(ACTIVITY_LOG_EXTENT_SIZE as u32).to_le_bytes(),
        );
        put(offset::AL_SLOTS, &ACTIVITY_LOG_SLOTS.to_le_bytes());
        put(offset::CURRENT_UUID, &self.current_uuid.to_le_bytes());
        put(offset::BITMAP_UUID, &self.bitmap_uuid.to_le_bytes());
        put(offset::HISTORY_UUIDS, &self.history_uuids[0].to_le_bytes());
        put(
            offset::HISTORY_UUIDS + 8,
            &self.history_uuids[1].to_le_bytes(),
        );
        // check() keeps the state within the block; a caller that broke that gets it cut, never a panic.
        let reservations = &self.reservations[..self.reservations.len().min(RESERVATIONS_CAPACITY)];
        put(
            offset::RESERVATIONS_LEN,
            &(reservations.len() as u32).to_le_bytes(),
        );
        put(offset::RESERVATIONS, reservations);
        let checksum = checksum(&block);
        block[offset::CHECKSUM..offset::CHECKSUM + 4].copy_from_slice(&checksum.to_le_bytes());
        block
    }

    /// Reads a superblock from exactly [`SUPERBLOCK_SIZE`] bytes, refusing anything that is not a
    /// complete, undamaged, self-consistent twinsan superblock. Check it against this node's
    /// device with [`check_fits`](Self::check_fits).
    pub fn decode(bytes: &[u8]) -> Result<Superblock, MetadataError> {
        let block: &[u8; SUPERBLOCK_SIZE] = bytes
            .try_into()
            .map_err(|_| MetadataError::WrongLength { len: bytes.len() })?;
        let magic: [u8; 8] = field(block, offset::MAGIC);
        if magic != MAGIC {
            return Err(MetadataError::NotMetadata { magic });
        }
        let version = u32::from_le_bytes(field(block, offset::VERSION));
        if version != FORMAT_VERSION {
            return Err(MetadataError::UnsupportedVersion { version });
        }
        let stored = u32::from_le_bytes(field(block, offset::CHECKSUM));
        let computed = checksum(block);
        if stored != computed {
            return Err(MetadataError::ChecksumMismatch { stored, computed });
        }
        let reservations_len = u32::from_le_bytes(field(block, offset::RESERVATIONS_LEN)) as usize;
        if reservations_len > RESERVATIONS_CAPACITY {
            return Err(MetadataError::Inconsistent {
                field: "reservations",
                why: format!(
                    "length {reservations_len} is more than the {RESERVATIONS_CAPACITY} bytes a superblock holds"
                ),
            });
        }
        let reservations_end = offset::RESERVATIONS + reservations_len;
        // A valid checksum over non-zero reserved bytes means a writer this code does not know.
        let mut reserved =
            std::iter::once(offset::RESERVED_BYTE).chain(reservations_end..SUPERBLOCK_SIZE);
        if let Some(at) = reserved.find(|&at| block[at] != 0) {
            return Err(MetadataError::Inconsistent {
                field: "reserved",
                why: format!("byte at offset {at} is {:#04x}, must be zero", block[at]),
            });
        }
        let u32_at = |at: usize| u32::from_le_bytes(field(block, at));
        let u64_at = |at: usize| u64::from_le_bytes(field(block, at));
        expect_constant(
            "bitmap granularity",
            u32_at(offset::BITMAP_GRANULARITY),
            BITMAP_GRANULARITY,
        )?;
        expect_constant("bitmap peers", u32_at(offset::BITMAP_PEERS), BITMAP_PEERS)?;
        expect_constant(
            "activity-log extent size",
            u32_at(offset::AL_EXTENT_SIZE),
            ACTIVITY_LOG_EXTENT_SIZE,
        )?;
        expect_constant(
            "activity-log slots",
            u32_at(offset::AL_SLOTS),
            u64::from(ACTIVITY_LOG_SLOTS),
        )?;
        let placement = match block[offset::PLACEMENT] {
            0 => PlacementKind::Internal,
            1 => PlacementKind::External,
            other => {
                return Err(MetadataError::Inconsistent {
                    field: "placement",
                    why: format!("is {other}, must be 0 (internal) or 1 (external)"),
                })
            }
        };
        let superblock = Superblock {
            volume_uuid: u128::from_le_bytes(field(block, offset::VOLUME_UUID)),
            node_id: block[offset::NODE_ID],
            peer_node_id: block[offset::PEER_NODE_ID],
            placement,
            flags: Flags::from_bits(u32_at(offset::FLAGS))?,
            data_size: u64_at(offset::DATA_SIZE),
            bitmap_size: u64_at(offset::BITMAP_SIZE),
            current_uuid: u64_at(offset::CURRENT_UUID),
            bitmap_uuid: u64_at(offset::BITMAP_UUID),
            history_uuids: [
                u64_at(offset::HISTORY_UUIDS),
                u64_at(offset::HISTORY_UUIDS + 8),
            ],
            sequence: u64_at(offset::SEQUENCE),
            reservations: block[offset::RESERVATIONS..reservations_end].to_vec(),
        };
        superblock.check()?;
        Ok(superblock)
    }

    /// The checks on the fields against each other that [`decode`](Self::decode) applies after
    /// the checksum; a superblock that fails them must not be written.
    pub fn check(&self) -> Result<(), MetadataError> {
        let inconsistent = |field, why: String| Err(MetadataError::Inconsistent { field, why });
        if self.volume_uuid == 0 {
            return inconsistent(
                "volume_uuid",
                "is 0, which no created volume has".to_string(),
            );
        }
        if self.node_id == self.peer_node_id {
            return inconsistent(
                "peer_node_id",
                format!("is {}, the same as this node's id", self.peer_node_id),
            );
        }
        if !self.data_size.is_multiple_of(BLOCK_SIZE) || self.data_size < MIN_DATA_SIZE {
            return inconsistent(
                "data_size",
                format!(
                    "is {} bytes, must be a multiple of {BLOCK_SIZE} and at least {MIN_DATA_SIZE}",
                    self.data_size
                ),
            );
        }
        if self.reservations.len() > RESERVATIONS_CAPACITY {
            return inconsistent(
                "reservations",
                format!(
                    "are {} bytes, more than the {RESERVATIONS_CAPACITY} a superblock holds",
                    self.reservations.len()
                ),
            );
        }
        let needed = bitmap_size_for(self.data_size);
        if !self.bitmap_size.is_multiple_of(BLOCK_SIZE) || self.bitmap_size < needed {
            return inconsistent(
                "bitmap_size",
                format!(
                    "is {} bytes, must be a multiple of {BLOCK_SIZE} and at least the {needed} \
                     bytes that {} bytes of data need",
                    self.bitmap_size, self.data_size
                ),
            );
        }
        Ok(())
    }

    /// Checks that this superblock describes the metadata at `layout` on this node's devices: the
    /// same placement and bitmap area, and a data size the backing device still holds.
    pub fn check_fits(&self, layout: &Layout) -> Result<(), MetadataError> {
        let inconsistent = |field, why: String| Err(MetadataError::Inconsistent { field, why });
        if self.placement != layout.placement.kind() {
            return inconsistent(
                "placement",
                format!(
                    "the superblock says {:?} but the configuration says {:?}",
                    self.placement,
                    layout.placement.kind()
                ),
            );
        }
        if self.bitmap_size != layout.bitmap.len {
            return inconsistent(
                "bitmap_size",
                format!(
                    "is {} bytes, but this device's layout has a {}-byte bitmap (was the backing \
                     device resized?)",
                    self.bitmap_size, layout.bitmap.len
                ),
            );
        }
        if self.data_size > layout.data_size {
            return inconsistent(
                "data_size",
                format!(
                    "is {}, more than the {} this backing device can hold",
                    human_size(self.data_size),
                    human_size(layout.data_size)
                ),
            );
        }
        Ok(())
    }
}

/// The superblock [`choose`] picked from the two slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    /// The newest valid copy.
    pub superblock: Superblock,
    /// The slot it was read from.
    pub slot: usize,
    /// Why the other slot held no valid copy, when it did not (a torn or damaged write): the
    /// engine must report it; its next superblock write goes to that slot and repairs it.
    pub other: Option<MetadataError>,
}

/// Picks the superblock to use from the blocks read from slot 0 and slot 1: the valid copy with
/// the higher sequence.
///
/// Only a copy that is damaged (checksum mismatch) or holds no superblock at all is passed over,
/// and only when the other copy is valid; every other failure refuses the whole metadata, because
/// it cannot come from a torn write: a newer format in either slot (falling back would roll it
/// back), a copy whose fields are impossible despite a valid checksum, two copies of different
/// volumes or nodes, a copy in the wrong slot (a misdirected
/// write). Both copies valid means their sequences differ, since each sits in the slot of its
/// sequence's parity.
pub fn choose(slot0: &[u8], slot1: &[u8]) -> Result<Chosen, MetadataError> {
    let decoded = [Superblock::decode(slot0), Superblock::decode(slot1)];
    for (slot, result) in decoded.iter().enumerate() {
        if let Ok(superblock) = result {
            if superblock.slot() != slot {
                return Err(MetadataError::Inconsistent {
                    field: "sequence",
                    why: format!(
                        "the copy in slot {slot} has sequence {}, which belongs in slot {}",
                        superblock.sequence,
                        superblock.slot()
                    ),
                });
            }
        }
    }
    let [first, second] = decoded;
    match (first, second) {
        (Ok(a), Ok(b)) => {
            if (a.volume_uuid, a.node_id, a.peer_node_id)
                != (b.volume_uuid, b.node_id, b.peer_node_id)
            {
                return Err(MetadataError::Inconsistent {
                    field: "volume_uuid",
                    why: format!(
                        "the two copies belong to different volumes or nodes ({:032x} node {} and \
                         {:032x} node {})",
                        a.volume_uuid, a.node_id, b.volume_uuid, b.node_id
                    ),
                });
            }
            // Same parity means same slot, which the check above excludes; so the sequences differ.
            let (slot, superblock) = if a.sequence > b.sequence {
                (0, a)
            } else {
                (1, b)
            };
            Ok(Chosen {
                superblock,
                slot,
                other: None,
            })
        }
        (Ok(superblock), Err(damage)) if passable(&damage) => Ok(Chosen {
            superblock,
            slot: 0,
            other: Some(damage),
        }),
        (Err(damage), Ok(superblock)) if passable(&damage) => Ok(Chosen {
            superblock,
            slot: 1,
            other: Some(damage),
        }),
        (Ok(_), Err(error)) | (Err(error), Ok(_)) => Err(error),
        // Neither is usable: report the most telling failure (a checksum mismatch in one slot
        // matters more than "not metadata" in the other, and a newer version more than both).
        (Err(a), Err(b)) => Err(if stage(&b) > stage(&a) { b } else { a }),
    }
}

/// Whether a copy failing with `error` may be passed over in favour of a valid other copy.
fn passable(error: &MetadataError) -> bool {
    matches!(
        error,
        MetadataError::ChecksumMismatch { .. } | MetadataError::NotMetadata { .. }
    )
}

/// How much `error` tells the admin, to report the more telling of two failures: a newer format
/// (upgrade) or impossible fields over damage (restore), and damage over "no metadata here".
fn stage(error: &MetadataError) -> u8 {
    match error {
        MetadataError::WrongLength { .. } => 0,
        MetadataError::NotMetadata { .. } => 1,
        MetadataError::ChecksumMismatch { .. } => 2,
        MetadataError::UnsupportedVersion { .. } => 3,
        MetadataError::Inconsistent { .. } | MetadataError::TooSmall { .. } => 4,
    }
}

/// Something found on a device that `create-md` must not overwrite without `--force`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signature {
    /// twinsan metadata (any version).
    Twinsan,
    /// DRBD 8.x or 9 metadata.
    Drbd,
    /// An LVM2 physical volume label.
    Lvm2,
    /// A LUKS encrypted volume header.
    Luks,
    /// A Linux MD RAID member (superblock version 1.1 or 1.2).
    MdRaid,
    /// A btrfs filesystem.
    Btrfs,
    /// An XFS filesystem.
    Xfs,
    /// An ext2, ext3 or ext4 filesystem.
    Ext,
    /// An NTFS filesystem.
    Ntfs,
    /// Linux swap space.
    Swap,
    /// A GPT partition table.
    Gpt,
    /// An MBR partition table or boot sector.
    Mbr,
}

impl Signature {
    /// What was found, for "refusing to overwrite {name}".
    pub fn name(self) -> &'static str {
        match self {
            Signature::Twinsan => "twinsan metadata",
            Signature::Drbd => "DRBD metadata",
            Signature::Lvm2 => "an LVM2 physical volume",
            Signature::Luks => "a LUKS encrypted volume",
            Signature::MdRaid => "a Linux MD RAID member",
            Signature::Btrfs => "a btrfs filesystem",
            Signature::Xfs => "an XFS filesystem",
            Signature::Ext => "an ext2/ext3/ext4 filesystem",
            Signature::Ntfs => "an NTFS filesystem",
            Signature::Swap => "Linux swap space",
            Signature::Gpt => "a GPT partition table",
            Signature::Mbr => "an MBR partition table or boot sector",
        }
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How many bytes from the start of a device [`detect_signature`] looks at (68 KiB: btrfs keeps
/// its superblock at 64 KiB).
pub const SIGNATURE_HEAD_SIZE: usize = 68 << 10;
/// How many bytes from the end of a device [`detect_signature`] looks at (both internal
/// superblock slots).
pub const SIGNATURE_TAIL_SIZE: usize = 8 << 10;

/// DRBD metadata magics (big-endian u32 at offset 60 of its 4 KiB superblock): 8.x, 8.4 after an
/// unclean shutdown, and 9.
const DRBD_MAGICS: [u32; 3] = [0x8374_026b, 0x8374_026c, 0x8374_026d];
/// Linux MD RAID v1 superblock magic (little endian), at 0 (v1.1) or 4 KiB (v1.2).
const MD_RAID_MAGIC: [u8; 4] = 0xa92b_4efc_u32.to_le_bytes();

/// Looks for metadata, a filesystem or a partition table that `create-md` would destroy.
///
/// `head` is the first [`SIGNATURE_HEAD_SIZE`] bytes of the device (less if the device is
/// smaller); `tail` is its last [`SIGNATURE_TAIL_SIZE`] bytes, ending at its 4 KiB-aligned end.
/// Pass the backing device for internal metadata, and the metadata device for external metadata
/// (checking the backing device too is the caller's choice). Either may be shorter or empty; a
/// signature whose bytes are not there is simply not found. Metadata signatures are checked
/// first, then containers, filesystems, and partition tables last, because a filesystem boot
/// sector can carry the same 0x55AA mark as an MBR.
pub fn detect_signature(head: &[u8], tail: &[u8]) -> Option<Signature> {
    let at = |buf: &[u8], offset: usize, pattern: &[u8]| {
        buf.get(offset..offset + pattern.len()) == Some(pattern)
    };
    // The last two 4 KiB blocks of the tail, where internal superblocks live.
    let tail_blocks = [4096usize, 8192].map(|back| tail.len().checked_sub(back));
    let drbd_at = |buf: &[u8], block: usize| {
        DRBD_MAGICS
            .iter()
            .any(|magic| at(buf, block + 60, &magic.to_be_bytes()))
    };

    let ours = [0, SUPERBLOCK_SIZE]
        .iter()
        .any(|&offset| at(head, offset, &MAGIC))
        || tail_blocks
            .iter()
            .flatten()
            .any(|&offset| at(tail, offset, &MAGIC));
    if ours {
        return Some(Signature::Twinsan);
    }
    // Internal DRBD metadata sits in the last 4 KiB; external metadata at the start.
    if drbd_at(head, 0) || tail_blocks[0].is_some_and(|offset| drbd_at(tail, offset)) {
        return Some(Signature::Drbd);
    }
    if (0..4).any(|sector| at(head, sector * 512, b"LABELONE")) {
        return Some(Signature::Lvm2);
    }
    if at(head, 0, b"LUKS\xba\xbe") {
        return Some(Signature::Luks);
    }
    if at(head, 0, &MD_RAID_MAGIC) || at(head, 4096, &MD_RAID_MAGIC) {
        return Some(Signature::MdRaid);
    }
    if at(head, 65600, b"_BHRfS_M") {
        return Some(Signature::Btrfs);
    }
    if at(head, 0, b"XFSB") {
        return Some(Signature::Xfs);
    }
    // Two magic bytes alone would match one random device in 65536: also require a block size
    // ext can have (s_log_block_size <= 6, i.e. at most 64 KiB).
    let ext_block_size = head
        .get(1048..1052)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if at(head, 1080, &[0x53, 0xef]) && ext_block_size.is_some_and(|log| log <= 6) {
        return Some(Signature::Ext);
    }
    if at(head, 3, b"NTFS    ") {
        return Some(Signature::Ntfs);
    }
    if at(head, 4086, b"SWAPSPACE2") || at(head, 4086, b"SWAP-SPACE") {
        return Some(Signature::Swap);
    }
    if at(head, 512, b"EFI PART") || at(head, 4096, b"EFI PART") {
        return Some(Signature::Gpt);
    }
    if at(head, 510, &[0x55, 0xaa]) {
        return Some(Signature::Mbr);
    }
    None
}

/// CRC32C of a superblock block with its checksum field taken as zero.
fn checksum(block: &[u8; SUPERBLOCK_SIZE]) -> u32 {
    let head = crc32c::crc32c(&block[..offset::CHECKSUM]);
    let with_zero = crc32c::crc32c_append(head, &[0; 4]);
    crc32c::crc32c_append(with_zero, &block[offset::CHECKSUM + 4..])
}

/// `N` bytes of `block` at `at` (offsets are constants inside the block, so this cannot fail).
fn field<const N: usize>(block: &[u8; SUPERBLOCK_SIZE], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&block[at..at + N]);
    out
}

/// Refuses a stored constant of the format that differs from what this version requires.
fn expect_constant(field: &'static str, found: u32, required: u64) -> Result<(), MetadataError> {
    if u64::from(found) == required {
        Ok(())
    } else {
        Err(MetadataError::Inconsistent {
            field,
            why: format!("is {found}, this format requires {required}"),
        })
    }
}

/// Bytes as space-separated hex, for magics in messages.
fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A size as exact bytes plus a binary unit, e.g. "1318912 bytes (1.26 MiB)".
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{bytes} bytes ({value:.2} {})", UNITS[unit])
}

/// Why [`locate`] found no usable metadata.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// Reading the metadata device failed.
    #[error("reading {what} at offset {offset}: {source}")]
    Io {
        /// What was read.
        what: &'static str,
        /// Where.
        offset: u64,
        /// The error.
        source: std::io::Error,
    },
    /// The metadata is missing, unusable or does not fit this device.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

/// Bytes [`locate`] reads at once while it searches for internal metadata below the end of a grown device.
const SEARCH_CHUNK: u64 = 1 << 20;

/// Reads both superblock slots of `layout` through `read`.
fn read_superblock_slots<R>(layout: &Layout, read: &mut R) -> Result<[Vec<u8>; 2], LocateError>
where
    R: FnMut(u64, &mut [u8]) -> std::io::Result<()>,
{
    let mut slots = [vec![0u8; SUPERBLOCK_SIZE], vec![0u8; SUPERBLOCK_SIZE]];
    for (slot, region) in slots.iter_mut().zip(layout.superblocks) {
        read(region.offset, slot).map_err(|source| LocateError::Io {
            what: "a superblock slot",
            offset: region.offset,
            source,
        })?;
    }
    Ok(slots)
}

/// Finds the metadata of a volume on this node's devices: the layout it was written with and the chosen
/// superblock, checked against that layout. `read(offset, buf)` reads the metadata device.
///
/// Normally the metadata is where [`Layout::compute`] puts it for the current device sizes. A backing device that
/// grew while the metadata was not moved yet (grown and not resized, or a crash in the middle of
/// `volume resize`) still holds it at the old place:
/// - internal: when neither slot at the end holds a valid superblock (zeros, or a torn first write of a move),
///   the device is searched downwards, 4 KiB at a time, for the highest end whose two slots hold metadata that fits
///   [`Layout::compute`] of that end. Metadata only ever moves up, so the highest is the newest; a resize zeroes
///   the old copy once the new one is written. The search reads the device below its end (a device with no
///   metadata at all is read whole before it is refused);
/// - external: the metadata stays at the start of its device; the bitmap area is that of the last agreed data
///   size, as the layout computed for that size says.
pub fn locate<R>(
    backing_size: u64,
    placement: Placement,
    mut read: R,
) -> Result<(Layout, Chosen), LocateError>
where
    R: FnMut(u64, &mut [u8]) -> std::io::Result<()>,
{
    let layout = Layout::compute(backing_size, placement)?;
    let [slot0, slot1] = read_superblock_slots(&layout, &mut read)?;
    match choose(&slot0, &slot1) {
        Ok(chosen) => {
            let Err(misfit) = chosen.superblock.check_fits(&layout) else {
                return Ok((layout, chosen));
            };
            if let Placement::External { .. } = placement {
                // The backing device grew; the bitmap is still the one of the last agreed size.
                let agreed = Layout::compute(chosen.superblock.data_size, placement)?;
                if chosen.superblock.check_fits(&agreed).is_ok() {
                    let layout = Layout {
                        backing_size,
                        ..agreed
                    };
                    return Ok((layout, chosen));
                }
            }
            Err(misfit.into())
        }
        Err(error) if placement == Placement::Internal && passable(&error) => {
            match search_below(layout.metadata.end(), backing_size, &mut read)? {
                Some(found) => Ok(found),
                None => Err(error.into()),
            }
        }
        Err(error) => Err(error.into()),
    }
}

/// Searches downwards from `end` for internal metadata (see [`locate`]).
fn search_below<R>(
    end: u64,
    backing_size: u64,
    read: &mut R,
) -> Result<Option<(Layout, Chosen)>, LocateError>
where
    R: FnMut(u64, &mut [u8]) -> std::io::Result<()>,
{
    let lowest_end = MIN_DATA_SIZE + metadata_size_for(MIN_DATA_SIZE);
    let mut chunk_end = end.saturating_sub(BLOCK_SIZE);
    let mut buf = vec![0u8; SEARCH_CHUNK as usize];
    while chunk_end >= lowest_end.saturating_sub(BLOCK_SIZE) && chunk_end > 0 {
        let chunk_start = chunk_end
            .saturating_sub(SEARCH_CHUNK)
            .max(lowest_end.saturating_sub(2 * BLOCK_SIZE));
        let len = (chunk_end - chunk_start) as usize;
        if len == 0 {
            break;
        }
        read(chunk_start, &mut buf[..len]).map_err(|source| LocateError::Io {
            what: "the device while searching for moved metadata",
            offset: chunk_start,
            source,
        })?;
        let mut at = chunk_end;
        while at >= chunk_start + BLOCK_SIZE {
            at -= BLOCK_SIZE;
            let start = (at - chunk_start) as usize;
            if buf[start..start + MAGIC.len()] != MAGIC {
                continue;
            }
            // A superblock here is slot 0 (end = at + 4K) or slot 1 (end = at + 8K) of some layout.
            for candidate in [at + 2 * BLOCK_SIZE, at + BLOCK_SIZE] {
                if candidate > end || candidate < lowest_end {
                    continue;
                }
                let layout = Layout::compute(candidate, Placement::Internal)?;
                let slots = read_superblock_slots(&layout, read)?;
                if let Ok(chosen) = choose(&slots[0], &slots[1]) {
                    if chosen.superblock.check_fits(&layout).is_ok() {
                        let layout = Layout {
                            backing_size,
                            ..layout
                        };
                        return Ok(Some((layout, chosen)));
                    }
                }
            }
        }
        chunk_end = chunk_start;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    const KIB: u64 = 1 << 10;

    fn sample(layout: &Layout) -> Superblock {
        let mut sb = Superblock::create(layout, 0x0123_4567_89ab_cdef_0011_2233_4455_6677, 1, 2, 4)
            .expect("valid sample");
        sb.flags = Flags {
            consistent: true,
            was_up_to_date: true,
            primary_ind: true,
            ..Flags::default()
        };
        sb.bitmap_uuid = 0xdead_beef;
        sb.history_uuids = [7, 9];
        sb.sequence = 42;
        sb
    }

    fn internal_gib() -> Layout {
        Layout::compute(GIB, Placement::Internal).expect("1 GiB fits")
    }

    /// The checksum stored in a block, to build "expected" values in tests.
    fn stored_checksum(block: &[u8]) -> u32 {
        u32::from_le_bytes(block[12..16].try_into().expect("4 bytes"))
    }

    /// Rewrites the checksum so that a deliberately edited block reaches the field checks.
    fn reseal(block: &mut [u8; SUPERBLOCK_SIZE]) {
        let sum = checksum(block);
        block[12..16].copy_from_slice(&sum.to_le_bytes());
    }

    /// The first 121 bytes of a superblock as the previous release (b3ce254, format 1) writes it (the rest of the
    /// 4096 bytes zero): sequence 42, volume 0x0123…6677, node 1 of 1/2, internal, flags consistent +
    /// was-up-to-date + primary, 1 GiB device (data 1073438720, bitmap 32 KiB), current 4, bitmap 0xdeadbeef,
    /// history 7 and 9, reservation state of 5 bytes; CRC32C in bytes 12..16.
    const B3CE254_SUPERBLOCK_HEAD: [u8; 121] = [
        0x89, 0x54, 0x57, 0x49, 0x4e, 0x53, 0x4d, 0x44, 0x01, 0x00, 0x00, 0x00, 0x63, 0x0b, 0x00,
        0xd3, //
        0x2a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
        0x00, //
        0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01, 0x01, 0x02, 0x00, 0x00, 0x0b, 0x00, 0x00,
        0x00, //
        0x00, 0x60, 0xfb, 0x3f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, //
        0x00, 0x10, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x40, 0x00, 0x00,
        0x00, //
        0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xef, 0xbe, 0xad, 0xde, 0x00, 0x00, 0x00,
        0x00, //
        0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, //
        0x05, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05,
    ];

    /// This build reads the previous release's metadata as it is, and writes the same format back (format 1 in
    /// both: there is nothing to upgrade, docs/upgrade.md).
    #[test]
    fn the_previous_release_superblock_is_read_and_written_back_unchanged() {
        let mut block = [0u8; SUPERBLOCK_SIZE];
        block[..B3CE254_SUPERBLOCK_HEAD.len()].copy_from_slice(&B3CE254_SUPERBLOCK_HEAD);
        let sb = Superblock::decode(&block).expect("b3ce254's superblock");
        assert_eq!(sb.volume_uuid, 0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!((sb.node_id, sb.peer_node_id), (1, 2));
        assert_eq!(sb.placement, PlacementKind::Internal);
        assert!(sb.flags.consistent && sb.flags.was_up_to_date && sb.flags.primary_ind);
        assert!(!sb.flags.crashed_primary && !sb.flags.peer_outdated && !sb.flags.al_clean);
        assert_eq!((sb.data_size, sb.bitmap_size), (1_073_438_720, 32 << 10));
        assert_eq!(
            (sb.current_uuid, sb.bitmap_uuid, sb.history_uuids),
            (4, 0xdead_beef, [7, 9])
        );
        assert_eq!(sb.sequence, 42);
        assert_eq!(sb.reservations, [1, 2, 3, 4, 5]);
        sb.check_fits(&internal_gib())
            .expect("fits its 1 GiB device");
        assert_eq!(
            sb.encode(),
            block,
            "written back in the format it was read in"
        );
        // In a slot beside an older copy, it is the one chosen.
        let mut older = sb.clone();
        older.sequence = 41;
        let chosen = choose(&block, &older.encode()).expect("a valid copy");
        assert_eq!((chosen.superblock, chosen.slot), (sb, 0));
    }

    // ---- layout arithmetic ----

    #[test]
    fn internal_one_gib_layout() {
        let layout = internal_gib();
        // 1 GiB of data needs 32 KiB of bitmap; the largest fitting data size is therefore
        // 1 GiB - 264 KiB - 32 KiB, and that data needs only 32 KiB too.
        assert_eq!(layout.bitmap.len, 32 * KIB);
        assert_eq!(layout.data_size, GIB - 264 * KIB - 32 * KIB);
        assert_eq!(
            layout.superblocks[0],
            Region {
                offset: GIB - 4 * KIB,
                len: 4 * KIB
            }
        );
        assert_eq!(
            layout.superblocks[1],
            Region {
                offset: GIB - 8 * KIB,
                len: 4 * KIB
            }
        );
        assert_eq!(
            layout.activity_log,
            Region {
                offset: GIB - 8 * KIB - 256 * KIB,
                len: 256 * KIB
            }
        );
        assert_eq!(layout.bitmap.end(), layout.activity_log.offset);
        assert_eq!(layout.bitmap.offset, layout.data_size);
        assert_eq!(
            layout.metadata,
            Region {
                offset: layout.data_size,
                len: 296 * KIB
            }
        );
        assert_eq!(layout.metadata.end(), GIB);
    }

    #[test]
    fn external_one_gib_layout() {
        let layout = Layout::compute(
            GIB,
            Placement::External {
                device_size: 10 * MIB,
            },
        )
        .expect("fits");
        assert_eq!(layout.data_size, GIB);
        assert_eq!(
            layout.superblocks[0],
            Region {
                offset: 0,
                len: 4 * KIB
            }
        );
        assert_eq!(
            layout.superblocks[1],
            Region {
                offset: 4 * KIB,
                len: 4 * KIB
            }
        );
        assert_eq!(
            layout.activity_log,
            Region {
                offset: 8 * KIB,
                len: 256 * KIB
            }
        );
        assert_eq!(
            layout.bitmap,
            Region {
                offset: 264 * KIB,
                len: 32 * KIB
            }
        );
        assert_eq!(
            layout.metadata,
            Region {
                offset: 0,
                len: 296 * KIB
            }
        );
    }

    #[test]
    fn metadata_size_formula_at_one_tib() {
        assert_eq!(bitmap_size_for(1 << 40), 32 * MIB);
        assert_eq!(metadata_size_for(1 << 40), 32 * MIB + 264 * KIB);
    }

    #[test]
    fn bitmap_rounds_up_to_whole_pages() {
        // 4 KiB of bitmap is 32768 bits, i.e. 128 MiB of data.
        assert_eq!(bitmap_size_for(0), 0);
        assert_eq!(bitmap_size_for(1), 4 * KIB);
        assert_eq!(bitmap_size_for(4 * KIB), 4 * KIB);
        assert_eq!(bitmap_size_for(128 * MIB), 4 * KIB);
        assert_eq!(bitmap_size_for(128 * MIB + 1), 8 * KIB);
        assert_eq!(bitmap_size_for(128 * MIB + 4 * KIB), 8 * KIB);
    }

    #[test]
    fn internal_smallest_device_and_one_block_less() {
        let smallest = MIB + 264 * KIB + 4 * KIB;
        let layout = Layout::compute(smallest, Placement::Internal).expect("smallest fits");
        assert_eq!(layout.data_size, MIB);
        assert_eq!(layout.metadata.end(), smallest);
        let error = Layout::compute(smallest - 1, Placement::Internal).expect_err("one byte short");
        assert_eq!(
            error,
            MetadataError::TooSmall {
                device: "backing device",
                size_bytes: smallest - 1,
                needed_bytes: smallest,
                needed_for: "internal metadata plus 1 MiB of data".to_string(),
            }
        );
        let message = error.to_string();
        assert!(message.contains(&(smallest - 1).to_string()), "{message}");
        assert!(message.contains(&smallest.to_string()), "{message}");
        assert!(Layout::compute(0, Placement::Internal).is_err());
    }

    #[test]
    fn internal_odd_size_is_anchored_on_the_aligned_end() {
        let layout = Layout::compute(GIB + 1000, Placement::Internal).expect("fits");
        assert_eq!(layout.superblocks[0].offset, GIB - 4 * KIB);
        assert_eq!(
            layout,
            Layout {
                backing_size: GIB + 1000,
                ..internal_gib()
            }
        );
    }

    #[test]
    fn internal_leaves_at_most_one_block_of_slack() {
        // Just past a bitmap page boundary: one more data block would need a whole bitmap page.
        let backing = 128 * MIB + 264 * KIB + 4 * KIB + 4 * KIB;
        let layout = Layout::compute(backing, Placement::Internal).expect("fits");
        assert_eq!(layout.data_size, 128 * MIB);
        assert_eq!(layout.bitmap.len, 4 * KIB);
        assert_eq!(layout.bitmap.offset - layout.data_size, 4 * KIB);
    }

    #[test]
    fn external_rounds_data_down_and_checks_both_devices() {
        let layout = Layout::compute(
            GIB + 4095,
            Placement::External {
                device_size: 296 * KIB,
            },
        )
        .expect("exact external size fits");
        assert_eq!(layout.data_size, GIB);

        let error = Layout::compute(
            GIB,
            Placement::External {
                device_size: 296 * KIB - 1,
            },
        )
        .expect_err("one byte short");
        let MetadataError::TooSmall {
            device,
            size_bytes,
            needed_bytes,
            ..
        } = &error
        else {
            panic!("{error:?}")
        };
        assert_eq!(
            (*device, *size_bytes, *needed_bytes),
            ("external metadata device", 296 * KIB - 1, 296 * KIB)
        );
        assert!(
            error
                .to_string()
                .contains("1073741824 bytes (1.00 GiB) of data"),
            "{error}"
        );

        let error = Layout::compute(MIB - 1, Placement::External { device_size: GIB })
            .expect_err("backing below 1 MiB");
        assert!(matches!(
            error,
            MetadataError::TooSmall {
                device: "backing device",
                needed_bytes: MIB,
                ..
            }
        ));
        assert!(Layout::compute(MIB, Placement::External { device_size: GIB }).is_ok());
    }

    #[test]
    fn huge_devices_do_not_overflow() {
        let layout = Layout::compute(u64::MAX, Placement::Internal).expect("fits");
        assert!(layout.data_size <= layout.metadata.offset);
        assert_eq!(layout.metadata.end(), round_down(u64::MAX));
        let external = Layout::compute(
            u64::MAX,
            Placement::External {
                device_size: u64::MAX,
            },
        )
        .expect("fits");
        assert_eq!(external.data_size, round_down(u64::MAX));
    }

    #[test]
    fn activity_log_slots() {
        let layout = internal_gib();
        assert_eq!(
            layout.activity_log_slot(0).map(|r| r.offset),
            Some(layout.activity_log.offset)
        );
        let last = layout
            .activity_log_slot(ACTIVITY_LOG_SLOTS - 1)
            .expect("last slot");
        assert_eq!(last.end(), layout.activity_log.end());
        assert_eq!(layout.activity_log_slot(ACTIVITY_LOG_SLOTS), None);
    }

    // ---- superblock codec ----

    #[test]
    fn round_trip() {
        let sb = sample(&internal_gib());
        let block = sb.encode();
        assert_eq!(&block[..8], b"\x89TWINSMD");
        assert_eq!(Superblock::decode(&block), Ok(sb));
    }

    #[test]
    fn encoding_follows_the_documented_table() {
        let sb = sample(&internal_gib());
        let block = sb.encode();
        let u64_at = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_le_bytes(block[at..at + 4].try_into().expect("4 bytes"));
        assert_eq!(u32_at(8), 1);
        assert_eq!(u64_at(16), 42);
        assert_eq!(
            u128::from_le_bytes(block[24..40].try_into().expect("16 bytes")),
            sb.volume_uuid
        );
        assert_eq!((block[40], block[41], block[42], block[43]), (1, 2, 0, 0));
        assert_eq!(u32_at(44), 0b1011); // consistent, was_up_to_date, primary_ind
        assert_eq!(u64_at(48), sb.data_size);
        assert_eq!(u64_at(56), 32 * KIB);
        assert_eq!(
            (u32_at(64), u32_at(68), u32_at(72), u32_at(76)),
            (4096, 1, 4 << 20, 64)
        );
        assert_eq!(
            (u64_at(80), u64_at(88), u64_at(96), u64_at(104)),
            (4, 0xdead_beef, 7, 9)
        );
        assert!(block[112..].iter().all(|&b| b == 0));
    }

    #[test]
    fn create_gives_a_fresh_inconsistent_superblock_that_fits() {
        let layout = Layout::compute(GIB, Placement::External { device_size: GIB }).expect("fits");
        let sb = Superblock::create(&layout, 5, 0, 1, 4).expect("valid");
        assert_eq!(
            sb.flags,
            Flags {
                al_clean: true,
                ..Flags::default()
            }
        );
        assert_eq!(
            (sb.placement, sb.sequence, sb.slot()),
            (PlacementKind::External, 0, 0)
        );
        assert_eq!(sb.check_fits(&layout), Ok(()));
        assert!(
            Superblock::create(&layout, 0, 0, 1, 4).is_err(),
            "volume UUID 0"
        );
        assert!(
            Superblock::create(&layout, 5, 3, 3, 4).is_err(),
            "same node ids"
        );
    }

    #[test]
    fn every_flag_round_trips_alone() {
        for bit in 0..6 {
            let flags = Flags::from_bits(1 << bit).expect("known bit");
            assert_eq!(flags.bits(), 1 << bit);
        }
        assert_eq!(
            Flags::from_bits(FLAGS_KNOWN).map(Flags::bits),
            Ok(FLAGS_KNOWN)
        );
    }

    #[test]
    fn wrong_length_is_refused() {
        let block = sample(&internal_gib()).encode();
        assert_eq!(
            Superblock::decode(&block[..4095]),
            Err(MetadataError::WrongLength { len: 4095 })
        );
        assert_eq!(
            Superblock::decode(&[]),
            Err(MetadataError::WrongLength { len: 0 })
        );
        let mut longer = block.to_vec();
        longer.push(0);
        assert_eq!(
            Superblock::decode(&longer),
            Err(MetadataError::WrongLength { len: 4097 })
        );
    }

    #[test]
    fn wrong_magic_is_not_metadata() {
        let error = Superblock::decode(&[0u8; SUPERBLOCK_SIZE]).expect_err("zeroes");
        assert_eq!(error, MetadataError::NotMetadata { magic: [0; 8] });
        assert_eq!(
            error.to_string(),
            "no twinsan metadata: magic is 00 00 00 00 00 00 00 00, expected 89 54 57 49 4e 53 4d 44"
        );
    }

    #[test]
    fn newer_version_is_unsupported_even_with_a_valid_checksum() {
        let mut block = sample(&internal_gib()).encode();
        block[8] = 2;
        reseal(&mut block);
        let error = Superblock::decode(&block).expect_err("version 2");
        assert_eq!(error, MetadataError::UnsupportedVersion { version: 2 });
        assert!(error.to_string().contains("version 2"), "{error}");
    }

    #[test]
    fn flipped_byte_is_a_checksum_mismatch_naming_both_values() {
        let block = sample(&internal_gib()).encode();
        let mut damaged = block;
        damaged[2000] ^= 0x40;
        let computed = checksum(&damaged);
        let error = Superblock::decode(&damaged).expect_err("damaged");
        assert_eq!(
            error,
            MetadataError::ChecksumMismatch {
                stored: stored_checksum(&block),
                computed
            }
        );
        let message = error.to_string();
        assert!(
            message.contains(&format!("{:#010x}", stored_checksum(&block))),
            "{message}"
        );
        assert!(message.contains(&format!("{computed:#010x}")), "{message}");
        assert!(message.contains("create-md --force"), "{message}");
    }

    #[test]
    fn every_single_byte_flip_is_refused_by_the_right_check() {
        let block = sample(&internal_gib()).encode();
        for at in 0..SUPERBLOCK_SIZE {
            let mut damaged = block;
            damaged[at] ^= 0x01;
            let error = Superblock::decode(&damaged).expect_err("flip must be refused");
            match at {
                0..8 => assert!(
                    matches!(error, MetadataError::NotMetadata { .. }),
                    "{at}: {error:?}"
                ),
                8..12 => assert!(
                    matches!(error, MetadataError::UnsupportedVersion { .. }),
                    "{at}: {error:?}"
                ),
                _ => assert!(
                    matches!(error, MetadataError::ChecksumMismatch { .. }),
                    "{at}: {error:?}"
                ),
            }
        }
    }

    /// Edits one field of a valid block, re-seals the checksum, and returns the decode error.
    fn edited(edit: impl FnOnce(&mut [u8; SUPERBLOCK_SIZE])) -> MetadataError {
        let mut block = sample(&internal_gib()).encode();
        edit(&mut block);
        reseal(&mut block);
        Superblock::decode(&block).expect_err("edited block must be refused")
    }

    fn field_of(error: &MetadataError) -> &'static str {
        match error {
            MetadataError::Inconsistent { field, .. } => field,
            other => panic!("expected Inconsistent, got {other:?}"),
        }
    }

    #[test]
    fn inconsistent_fields_are_named() {
        assert_eq!(field_of(&edited(|b| b[3000] = 1)), "reserved");
        assert_eq!(field_of(&edited(|b| b[43] = 1)), "reserved");
        assert_eq!(field_of(&edited(|b| b[42] = 2)), "placement");
        assert_eq!(field_of(&edited(|b| b[44 + 3] = 0x80)), "flags");
        assert_eq!(field_of(&edited(|b| b[41] = b[40])), "peer_node_id");
        assert_eq!(field_of(&edited(|b| b[24..40].fill(0))), "volume_uuid");
        assert_eq!(field_of(&edited(|b| b[48] = 1)), "data_size"); // not a 4 KiB multiple
        assert_eq!(
            field_of(&edited(
                |b| b[48..56].copy_from_slice(&(MIB - 4096).to_le_bytes())
            )),
            "data_size"
        );
        assert_eq!(
            field_of(&edited(
                |b| b[56..64].copy_from_slice(&4096u64.to_le_bytes())
            )),
            "bitmap_size"
        );
        assert_eq!(field_of(&edited(|b| b[57] |= 0x01)), "bitmap_size"); // not a 4 KiB multiple
        assert_eq!(field_of(&edited(|b| b[65] = 0x20)), "bitmap granularity");
        assert_eq!(field_of(&edited(|b| b[68] = 2)), "bitmap peers");
        assert_eq!(field_of(&edited(|b| b[72] = 1)), "activity-log extent size");
        assert_eq!(field_of(&edited(|b| b[76] = 65)), "activity-log slots");
        let message = edited(|b| b[42] = 7).to_string();
        assert!(
            message.starts_with("metadata superblock is inconsistent (placement: is 7"),
            "{message}"
        );
    }

    #[test]
    fn a_size_that_does_not_fit_the_layout_is_refused() {
        let layout = internal_gib();
        let sb = sample(&layout);
        assert_eq!(sb.check_fits(&layout), Ok(()));

        let smaller = Superblock {
            data_size: 512 * MIB,
            ..sb.clone()
        };
        assert_eq!(
            smaller.check_fits(&layout),
            Ok(()),
            "an agreed size below ours fits"
        );

        let larger = Superblock {
            data_size: layout.data_size + 4096,
            bitmap_size: 64 * KIB,
            ..sb.clone()
        };
        assert_eq!(larger.check(), Ok(()));
        let error = Superblock {
            bitmap_size: layout.bitmap.len,
            ..larger
        }
        .check_fits(&layout);
        assert_eq!(error.as_ref().map_err(field_of), Err("data_size"));

        let shrunk = Layout::compute(GIB / 2, Placement::Internal).expect("fits");
        assert_eq!(
            sb.check_fits(&shrunk).map_err(|e| field_of(&e)),
            Err("bitmap_size")
        );

        let external =
            Layout::compute(GIB, Placement::External { device_size: GIB }).expect("fits");
        assert_eq!(
            sb.check_fits(&external).map_err(|e| field_of(&e)),
            Err("placement")
        );
    }

    // ---- the two copies ----

    fn copies(sequence: u64) -> (Superblock, [u8; SUPERBLOCK_SIZE]) {
        let sb = Superblock {
            sequence,
            ..sample(&internal_gib())
        };
        let block = sb.encode();
        (sb, block)
    }

    #[test]
    fn choose_takes_the_higher_sequence() {
        let (_, older_block) = copies(6);
        let (newer, newer_block) = copies(7);
        let chosen = choose(&older_block, &newer_block).expect("both valid");
        assert_eq!(
            chosen,
            Chosen {
                superblock: newer,
                slot: 1,
                other: None
            }
        );
        let (newest, newest_block) = copies(8);
        let chosen = choose(&newest_block, &newer_block).expect("both valid");
        assert_eq!((chosen.superblock, chosen.slot), (newest, 0));
    }

    #[test]
    fn choose_falls_back_past_a_torn_write_and_says_so() {
        let (older, older_block) = copies(6);
        let (_, newer_block) = copies(7);
        // A torn write: the first sectors are new, the rest still the copy before (sequence 5).
        let (_, before_block) = copies(5);
        let mut torn = newer_block;
        torn[2048..].copy_from_slice(&before_block[2048..]);
        torn[3000] ^= 0xff;
        let chosen = choose(&older_block, &torn).expect("older copy is valid");
        assert_eq!(chosen.superblock, older);
        assert_eq!(chosen.slot, 0);
        assert!(matches!(
            chosen.other,
            Some(MetadataError::ChecksumMismatch { .. })
        ));

        let chosen = choose(&[0; SUPERBLOCK_SIZE], &newer_block).expect("slot 1 valid");
        assert_eq!(chosen.slot, 1);
        assert!(matches!(
            chosen.other,
            Some(MetadataError::NotMetadata { .. })
        ));
    }

    #[test]
    fn choose_refuses_what_a_torn_write_cannot_explain() {
        let (_, even) = copies(6);
        let (_, odd) = copies(7);
        // A newer format in one slot: falling back would roll it back.
        let mut newer_format = odd;
        newer_format[8] = 2;
        reseal(&mut newer_format);
        assert_eq!(
            choose(&even, &newer_format),
            Err(MetadataError::UnsupportedVersion { version: 2 })
        );
        // A copy in the wrong slot (misdirected write).
        assert_eq!(
            choose(&odd, &even).map_err(|e| field_of(&e)),
            Err("sequence")
        );
        // Copies of two different volumes.
        let other_volume = Superblock {
            volume_uuid: 99,
            sequence: 7,
            ..sample(&internal_gib())
        }
        .encode();
        assert_eq!(
            choose(&even, &other_volume).map_err(|e| field_of(&e)),
            Err("volume_uuid")
        );
        // A wrong-length read.
        assert_eq!(
            choose(&even, &odd[..100]),
            Err(MetadataError::WrongLength { len: 100 })
        );
    }

    #[test]
    fn choose_with_no_valid_copy_reports_the_most_telling_failure() {
        let (_, odd) = copies(7);
        let mut damaged = odd;
        damaged[100] ^= 1;
        let error = choose(&[0; SUPERBLOCK_SIZE], &damaged).expect_err("nothing valid");
        assert!(
            matches!(error, MetadataError::ChecksumMismatch { .. }),
            "{error:?}"
        );
        let error = choose(&[0; SUPERBLOCK_SIZE], &[0; SUPERBLOCK_SIZE]).expect_err("blank");
        assert!(
            matches!(error, MetadataError::NotMetadata { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn create_md_then_updates_alternate_slots() {
        let layout = internal_gib();
        let mut sb = Superblock::create(&layout, 77, 0, 1, 4).expect("valid");
        let mut slots = [[0u8; SUPERBLOCK_SIZE]; 2];
        // create-md: sequence 0 to slot 0, sequence 1 to slot 1.
        slots[sb.slot()] = sb.encode();
        sb.sequence += 1;
        slots[sb.slot()] = sb.encode();
        assert_eq!(
            choose(&slots[0], &slots[1]).map(|c| (c.slot, c.superblock.sequence)),
            Ok((1, 1))
        );
        for _ in 0..5 {
            let mut next = choose(&slots[0], &slots[1]).expect("valid").superblock;
            next.sequence += 1;
            next.flags.consistent = !next.flags.consistent;
            slots[next.slot()] = next.encode();
            let chosen = choose(&slots[0], &slots[1]).expect("valid");
            assert_eq!(chosen.superblock, next);
        }
    }

    // ---- signatures ----

    fn head_with(offset: usize, bytes: &[u8]) -> Vec<u8> {
        let mut head = vec![0u8; SIGNATURE_HEAD_SIZE];
        head[offset..offset + bytes.len()].copy_from_slice(bytes);
        head
    }

    #[test]
    fn signatures_are_recognised() {
        let none = vec![0u8; SIGNATURE_TAIL_SIZE];
        let cases: [(usize, &[u8], Signature); 12] = [
            (0, &MAGIC, Signature::Twinsan),
            (4096, &MAGIC, Signature::Twinsan),
            (60, &0x8374_026du32.to_be_bytes(), Signature::Drbd),
            (1024, b"LABELONE", Signature::Lvm2),
            (0, b"LUKS\xba\xbe", Signature::Luks),
            (4096, &[0xfc, 0x4e, 0x2b, 0xa9], Signature::MdRaid),
            (65600, b"_BHRfS_M", Signature::Btrfs),
            (0, b"XFSB", Signature::Xfs),
            (1080, &[0x53, 0xef], Signature::Ext),
            (4086, b"SWAPSPACE2", Signature::Swap),
            (512, b"EFI PART", Signature::Gpt),
            (510, &[0x55, 0xaa], Signature::Mbr),
        ];
        for (offset, bytes, expected) in cases {
            assert_eq!(
                detect_signature(&head_with(offset, bytes), &none),
                Some(expected),
                "{expected}"
            );
        }
        let mut ntfs = head_with(510, &[0x55, 0xaa]);
        ntfs[3..11].copy_from_slice(b"NTFS    ");
        assert_eq!(
            detect_signature(&ntfs, &none),
            Some(Signature::Ntfs),
            "NTFS before MBR"
        );
        let mut gpt = head_with(510, &[0x55, 0xaa]);
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(
            detect_signature(&gpt, &none),
            Some(Signature::Gpt),
            "GPT before its protective MBR"
        );
        let mut not_ext = head_with(1080, &[0x53, 0xef]);
        not_ext[1048] = 200;
        assert_eq!(
            detect_signature(&not_ext, &none),
            None,
            "ext magic with an impossible block size"
        );
    }

    #[test]
    fn signatures_at_the_end_of_the_device() {
        let head = vec![0u8; SIGNATURE_HEAD_SIZE];
        let sb = sample(&internal_gib()).encode();
        let mut tail = vec![0u8; SIGNATURE_TAIL_SIZE];
        tail[4096..].copy_from_slice(&sb);
        assert_eq!(
            detect_signature(&head, &tail),
            Some(Signature::Twinsan),
            "slot 0"
        );
        let mut tail = vec![0u8; SIGNATURE_TAIL_SIZE];
        tail[..4096].copy_from_slice(&sb);
        assert_eq!(
            detect_signature(&head, &tail),
            Some(Signature::Twinsan),
            "slot 1"
        );
        for magic in DRBD_MAGICS {
            let mut tail = vec![0u8; SIGNATURE_TAIL_SIZE];
            tail[4096 + 60..4096 + 64].copy_from_slice(&magic.to_be_bytes());
            assert_eq!(
                detect_signature(&head, &tail),
                Some(Signature::Drbd),
                "{magic:#x}"
            );
        }
        // A 4 KiB tail is enough for slot 0.
        assert_eq!(detect_signature(&[], &sb), Some(Signature::Twinsan));
    }

    #[test]
    fn blank_or_short_devices_have_no_signature() {
        assert_eq!(detect_signature(&[], &[]), None);
        assert_eq!(detect_signature(&[0; 100], &[0; 100]), None);
        assert_eq!(
            detect_signature(&vec![0; SIGNATURE_HEAD_SIZE], &vec![0; SIGNATURE_TAIL_SIZE]),
            None
        );
        // A btrfs magic cut off by a short head is not read past the end.
        assert_eq!(
            detect_signature(&head_with(65600, b"_BHRfS_M")[..65604], &[]),
            None
        );
    }

    #[test]
    fn reservation_state_is_kept_and_its_length_checked() {
        let mut sb = sample(&internal_gib());
        sb.reservations = b"registrations".to_vec();
        let block = sb.encode();
        assert_eq!(
            Superblock::decode(&block).map(|d| d.reservations),
            Ok(sb.reservations.clone())
        );
        // A length past the block is refused by name, even with a valid checksum.
        let mut bad = block;
        bad[offset::RESERVATIONS_LEN..offset::RESERVATIONS_LEN + 4]
            .copy_from_slice(&(RESERVATIONS_CAPACITY as u32 + 1).to_le_bytes());
        let sum = checksum(&bad);
        bad[offset::CHECKSUM..offset::CHECKSUM + 4].copy_from_slice(&sum.to_le_bytes());
        assert!(matches!(
            Superblock::decode(&bad),
            Err(MetadataError::Inconsistent {
                field: "reservations",
                ..
            })
        ));
        // Bytes after the state are still reserved.
        let mut bad = block;
        bad[offset::RESERVATIONS + sb.reservations.len()] = 1;
        let sum = checksum(&bad);
        bad[offset::CHECKSUM..offset::CHECKSUM + 4].copy_from_slice(&sum.to_le_bytes());
        assert!(matches!(
            Superblock::decode(&bad),
            Err(MetadataError::Inconsistent {
                field: "reserved",
                ..
            })
        ));
        sb.reservations = vec![0; RESERVATIONS_CAPACITY + 1];
        assert!(sb.check().is_err());
    }

    #[test]
    fn messages_name_sizes_readably() {
        assert_eq!(human_size(512), "512 bytes");
        assert_eq!(human_size(1_318_912), "1318912 bytes (1.26 MiB)");
        assert_eq!(human_size(GIB), "1073741824 bytes (1.00 GiB)");
    }

    // ---- properties ----

    fn arb_superblock() -> impl Strategy<Value = Superblock> {
        (
            1..=u128::MAX,
            any::<u8>(),
            1..=u8::MAX,
            any::<bool>(),
            0..=FLAGS_KNOWN,
            (MIN_DATA_SIZE / BLOCK_SIZE)..=(1u64 << 40),
            0..4u64,
            any::<(u64, u64, u64, u64, u64)>(),
            proptest::collection::vec(any::<u8>(), 0..=RESERVATIONS_CAPACITY),
        )
            .prop_map(
                |(
                    volume_uuid,
                    node_id,
                    delta,
                    external,
                    flags,
                    blocks,
                    extra,
                    uuids,
                    reservations,
                )| {
                    let data_size = blocks * BLOCK_SIZE;
                    let (current_uuid, bitmap_uuid, h0, h1, sequence) = uuids;
                    Superblock {
                        volume_uuid,
                        node_id,
                        peer_node_id: node_id.wrapping_add(delta),
                        placement: if external {
                            PlacementKind::External
                        } else {
                            PlacementKind::Internal
                        },
                        flags: Flags::from_bits(flags).expect("known bits only"),
                        data_size,
                        bitmap_size: bitmap_size_for(data_size) + extra * BLOCK_SIZE,
                        current_uuid,
                        bitmap_uuid,
                        history_uuids: [h0, h1],
                        sequence,
                        reservations,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn decode_encode_round_trip(sb in arb_superblock()) {
            let block = sb.encode();
            prop_assert_eq!(Superblock::decode(&block), Ok(sb));
        }

        #[test]
        fn random_bytes_never_decode_without_a_matching_checksum(
            bytes in proptest::collection::vec(any::<u8>(), 0..=SUPERBLOCK_SIZE + 16),
            magic_and_version in any::<bool>(),
        ) {
            let mut bytes = bytes;
            if magic_and_version && bytes.len() >= 12 {
                // Get past the magic and version checks, so the checksum check is what is tested.
                bytes[..8].copy_from_slice(&MAGIC);
                bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
            }
            if let Ok(sb) = Superblock::decode(&bytes) {
                let block: &[u8; SUPERBLOCK_SIZE] = bytes.as_slice().try_into().expect("decoded, so 4096 bytes");
                prop_assert_eq!(stored_checksum(&bytes), checksum(block));
                prop_assert_eq!(&sb.encode()[..], &bytes[..]);
            }
        }

        #[test]
        fn sealed_random_blocks_never_panic_and_re_encode_exactly(
            fields in proptest::collection::vec(any::<u8>(), 112 - 16),
            sparse_reserved in any::<bool>(),
        ) {
            // Valid magic, version and checksum over random fields: the field checks decide.
            let mut block = [0u8; SUPERBLOCK_SIZE];
            block[..8].copy_from_slice(&MAGIC);
            block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
            block[16..112].copy_from_slice(&fields);
            if sparse_reserved {
                block[4095] = 1;
            }
            reseal(&mut block);
            if let Ok(sb) = Superblock::decode(&block) {
                prop_assert_eq!(sb.encode(), block);
            }
        }

        #[test]
        fn any_flip_of_a_valid_block_is_refused(
            sb in arb_superblock(),
            at in 0..SUPERBLOCK_SIZE,
            mask in 1..=u8::MAX,
        ) {
            let mut block = sb.encode();
            block[at] ^= mask;
            prop_assert!(Superblock::decode(&block).is_err());
        }

        #[test]
        fn layouts_are_aligned_disjoint_and_maximal(
            backing in (MIN_DATA_SIZE + 268 * KIB)..(1u64 << 50),
            external in any::<bool>(),
            spare in 0..(1u64 << 20),
        ) {
            let placement = if external {
                Placement::External { device_size: metadata_size_for(round_down(backing)) + spare }
            } else {
                Placement::Internal
            };
            let layout = Layout::compute(backing, placement).expect("large enough");
            let mut parts = [layout.bitmap, layout.activity_log, layout.superblocks[1], layout.superblocks[0]];
            for part in parts {
                prop_assert_eq!(part.offset % BLOCK_SIZE, 0);
                prop_assert_eq!(part.len % BLOCK_SIZE, 0);
                prop_assert!(part.offset >= layout.metadata.offset && part.end() <= layout.metadata.end());
            }
            parts.sort_by_key(|part| part.offset);
            for pair in parts.windows(2) {
                prop_assert!(pair[0].end() <= pair[1].offset, "{:?} overlaps {:?}", pair[0], pair[1]);
            }
            prop_assert_eq!(layout.data_size % BLOCK_SIZE, 0);
            prop_assert!(layout.data_size >= MIN_DATA_SIZE);
            prop_assert_eq!(layout.bitmap.len, bitmap_size_for(layout.data_size));
            prop_assert_eq!(layout.metadata.len, metadata_size_for(layout.data_size));
            match placement {
                Placement::Internal => {
                    // Superblock slot 0 ends at the aligned end; data, then metadata, never overlap.
                    prop_assert_eq!(layout.superblocks[0].end(), round_down(backing));
                    prop_assert_eq!(layout.bitmap.end(), layout.activity_log.offset);
                    prop_assert_eq!(layout.activity_log.end(), layout.superblocks[1].offset);
                    prop_assert!(layout.data_size <= layout.metadata.offset);
                    // Maximal: one more block of data would not fit with its metadata.
                    let more = layout.data_size + BLOCK_SIZE;
                    prop_assert!(more + metadata_size_for(more) > round_down(backing));
                }
                Placement::External { device_size } => {
                    prop_assert_eq!(layout.data_size, round_down(backing));
                    prop_assert!(layout.metadata.end() <= device_size);
                    prop_assert_eq!(layout.superblocks[0].offset, 0);
                }
            }
        }

        #[test]
        fn any_backing_size_gives_a_layout_or_too_small(backing in any::<u64>(), device in any::<u64>()) {
            for placement in [Placement::Internal, Placement::External { device_size: device }] {
                match Layout::compute(backing, placement) {
                    Ok(layout) => prop_assert!(layout.data_size >= MIN_DATA_SIZE),
                    Err(error) => prop_assert!(matches!(error, MetadataError::TooSmall { .. }), "{error:?}"),
                }
            }
        }

        #[test]
        fn detect_signature_never_panics(
            head in proptest::collection::vec(any::<u8>(), 0..=SIGNATURE_HEAD_SIZE),
            tail in proptest::collection::vec(any::<u8>(), 0..=SIGNATURE_TAIL_SIZE),
        ) {
            let _ = detect_signature(&head, &tail);
        }
    }
}
