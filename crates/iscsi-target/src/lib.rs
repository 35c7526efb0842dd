//! The iSCSI target engine of twinsan: portals, connections and sessions on tokio, over the sans-I/O cores
//! `twinsan-iscsi` (protocol) and `twinsan-scsi` (logical units).
//!
//! [`Server`] listens on the portals of a [`ServerConfig`]; every accepted connection is one task that logs in
//! and then serves commands (see `conn`). Logical units reach storage through [`FileDevice`] or any other
//! `twinsan_scsi::BlockDevice`.

mod backend;
mod claim;
pub mod config;
mod conn;
mod error;
pub mod identity;
mod output;
mod server;
pub mod stats;

pub use backend::{block_device_size, file_mapped_extent, punch_hole, FileDevice};
pub use claim::BackingClaim;
pub use config::{ServerConfig, TargetConfig};
pub use error::TargetError;
pub use server::{Running, Server};
