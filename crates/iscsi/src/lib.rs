//! The iSCSI protocol core of twinsan (RFC 7143, ErrorRecoveryLevel 0), with no I/O.
//!
//! Bytes go in and typed PDUs, decisions and bytes come out; sockets, clocks and random numbers belong to the
//! caller (`twinsan-target`). The pieces:
//! - [`pdu`]: the 48-byte Basic Header Segment of every opcode, typed, with `decode`/`encode`;
//! - [`frame`]: cutting a byte stream into PDUs (AHS, padding, CRC32C digests, size limits);
//! - [`text`]: `key=value` text segments;
//! - [`login`]: the login state machine and negotiation of every operational key;
//! - [`chap`]: CHAP and mutual CHAP (RFC 1994 MD5, as RFC 7143 section 12.1.3 requires);
//! - [`seq`]: RFC 1982 serial arithmetic and the CmdSN window;
//! - [`session`]: the full feature phase (CmdSN window, R2T, Data-In, task management, NOP ping, Text, Logout)
//!   as a core that takes PDUs, completions and time and returns actions.

pub mod chap;
pub mod error;
pub mod frame;
pub mod login;
pub mod pdu;
pub mod seq;
pub mod session;
pub mod text;

pub use error::{LoginStatus, ProtocolError, RejectReason};
