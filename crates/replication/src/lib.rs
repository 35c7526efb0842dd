//! The replicated volume of twinsan, as a core with no I/O (DRBD 9 semantics for two nodes).
//!
//! Everything here takes its inputs (metadata bytes, the peer's generation identifiers, write extents) as
//! arguments and returns decisions and bytes; the volume engine does the disk and network I/O.
//! - [`generation`]: generation identifiers and the decision taken when two nodes connect (no sync, bitmap resync
//!   in one direction, full sync, split brain, unrelated data);
//! - [`metadata`]: the on-disk superblock (checksummed) and where metadata lives, internal or external;
//! - [`bitmap`]: the per-peer dirty bitmap, one bit per 4 KiB block;
//! - [`activity_log`]: the activity log of hot 4 MiB extents, committed before data is written to them;
//! - [`state`]: disk, connection, replication and role states and the rules for moving between them;
//! - [`wire`]: the replication link's frames, checksummed, and its HMAC challenge-response authentication;
//! - [`resync`]: planning a resync from the bitmap, and the rate controller that yields to application I/O;
//! - [`engine`]: the volume engine that composes them: writes, the link, resync; disk I/O only through the
//!   [`engine::Storage`] the driver hands in.

pub mod activity_log;
pub mod bitmap;
pub mod engine;
pub mod generation;
pub mod metadata;
pub mod resize;
pub mod resync;
pub mod state;
pub mod version;
pub mod wire;
