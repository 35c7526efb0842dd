//! Errors of the target engine that reach the operator (configuration, backing stores, sockets).

use std::path::PathBuf;

use thiserror::Error;

/// An error that stops the target from starting or serving.
#[derive(Debug, Error)]
pub enum TargetError {
    /// A backing file or device could not be opened or sized.
    #[error("backing store {path}: {source}")]
    Backing {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another process holds the backing store (SPEC 3, invariant 9): another `twinsan serve` or `twinsan node
    /// run` on it, or, for a block device, a mount or another exclusive user. `holders` are the pids of those
    /// holding a lock on it, when `/proc/locks` shows them.
    #[error(
        "backing store {} is in use {}: refused, nothing was read or written",
        path.display(),
        HeldBy(holders)
    )]
    InUse { path: PathBuf, holders: Vec<u32> },
    /// A backing store smaller than one block.
    #[error("backing store {path} is {size} bytes, smaller than one 512-byte block")]
    TooSmall { path: PathBuf, size: u64 },
    /// A portal address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The configuration contradicts itself.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// "by process 123, which holds its lock (...)" for [`TargetError::InUse`].
struct HeldBy<'a>(&'a [u32]);

impl std::fmt::Display for HeldBy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pids: Vec<String> = self.0.iter().map(u32::to_string).collect();
        match pids.as_slice() {
            [] => write!(
                f,
                "by another process: it is mounted, or open exclusively by another program (no lock holder is \
                 listed in /proc/locks)"
            ),
            [pid] => write!(
                f,
                "by process {pid}, which holds its lock (another `twinsan serve` or `twinsan node run`?)"
            ),
            _ => write!(f, "by processes {}, which hold locks on it", pids.join(", ")),
        }
    }
}
