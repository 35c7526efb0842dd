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
