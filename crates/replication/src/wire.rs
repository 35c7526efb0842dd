//! The replication link between the two nodes of a volume: checksummed frames, the typed
//! [`Message`]s they carry, and the HMAC challenge–response [`Handshake`] that authenticates the
//! peer before anything it says is trusted.
//!
//! No I/O happens here. The engine writes the bytes of [`encode`] to its socket, pushes what it
//! reads into a [`FrameDecoder`], and draws the random nonce of the handshake itself. The ideas
//! are DRBD's (a data packet per write with the epoch it belongs to, barriers, receive/write/
//! negative acks for protocols B/C, resync and online-verify requests, bitmap exchange, a
//! `cram-hmac-alg` challenge at connect); the format and the names are twinsan's own and share no
//! byte with DRBD's.
//!
//! # Frame layout
//!
//! Every message is one frame; all integers are **little endian** (like the metadata: both ends
//! are twinsan, and x86/ARM read it without swapping).
//!
//! | offset     | size | field                                                                  |
//! |-----------:|-----:|------------------------------------------------------------------------|
//! |          0 |    4 | magic `89 54 57 52` (`"\x89TWR"`, [`MAGIC`])                            |
//! |          4 |    2 | frame type (table below)                                               |
//! |          6 |    2 | flags, per type; bits a type does not define must be zero               |
//! |          8 |    4 | payload length `len` (at most the receiver's `max_payload`)            |
//! |         12 |    8 | sequence number for the types marked *seq*; zero for all others        |
//! |         20 |    4 | CRC32C of bytes 0..20 (the header)                                     |
//! |         24 |  len | payload                                                                |
//! |   24 + len |    4 | CRC32C of bytes 0..24+len (header and payload)                         |
//!
//! The header has its own checksum so the length is known to be what the peer sent before the
//! decoder waits for, or allocates, that many bytes: a flipped length bit is a checksum error at
//! once, not a stall. The trailing checksum covers the header too, which binds the payload to its
//! header. Decoding is strict (reserved bits and bytes zero, exact lengths, known codes), so a
//! frame that decodes re-encodes to the same bytes.
//!
//! # Messages
//!
//! Payload fields in order; `range` is `offset u64, len u32`; a digest is [`DIGEST_LEN`] bytes.
//! Types marked *seq* carry a sequence number in the header; flag bits are listed below.
//!
//! | type     | message                              | seq | payload                                        |
//! |---------:|--------------------------------------|:---:|------------------------------------------------|
//! | `0x0001` | [`Hello`](Message::Hello)            |     | lowest version u32, node id u8, 3 zero, volume u128, cluster u64 |
//! | `0x0002` | [`AuthChallenge`](Message::AuthChallenge) | | nonce (32)                                   |
//! | `0x0003` | [`AuthResponse`](Message::AuthResponse) |  | mac (32)                                       |
//! | `0x0101` | [`Uuids`](Message::Uuids)            |     | current, bitmap, history ×2, bitmap weight (u64 each) |
//! | `0x0102` | [`Sizes`](Message::Sizes)            |     | data size u64, max request u32                 |
//! | `0x0103` | [`State`](Message::State)            |     | role u8, disk u8, replication u8, 1 zero       |
//! | `0x0104` | [`Outdate`](Message::Outdate)        |     | —                                              |
//! | `0x0105` | [`OutdateAck`](Message::OutdateAck)  |     | —                                              |
//! | `0x0109` | [`PromoteRequest`](Message::PromoteRequest) | | —                                         |
//! | `0x010a` | [`PromoteReply`](Message::PromoteReply) |  | —                                              |
//! | `0x010b` | [`ResizeRequest`](Message::ResizeRequest) | | size u64                                     |
//! | `0x010c` | [`ResizeReply`](Message::ResizeReply) |    | size u64, refusal (UTF-8, empty: done)         |
//! | `0x0106` | [`Ping`](Message::Ping)              | ✓   | —                                              |
//! | `0x0107` | [`PingAck`](Message::PingAck)        | ✓   | —                                              |
//! | `0x0108` | [`Disconnect`](Message::Disconnect)  |     | reason u16                                     |
//! | `0x0201` | [`Data`](Message::Data)              | ✓   | offset u64, epoch u64, data                    |
//! | `0x0202` | [`WriteZeroes`](Message::WriteZeroes) | ✓  | offset u64, epoch u64, len u32                 |
//! | `0x0203` | [`Barrier`](Message::Barrier)        |     | epoch u64                                      |
//! | `0x0204` | [`BarrierAck`](Message::BarrierAck)  |     | epoch u64, writes u32                          |
//! | `0x0205` | [`RecvAck`](Message::RecvAck)        | ✓   | —                                              |
//! | `0x0206` | [`WriteAck`](Message::WriteAck)      | ✓   | —                                              |
//! | `0x0207` | [`NegAck`](Message::NegAck)          | ✓   | —                                              |
//! | `0x0301` | [`ReadRequest`](Message::ReadRequest) | ✓  | range                                          |
//! | `0x0302` | [`ReadReply`](Message::ReadReply)    | ✓   | data                                           |
//! | `0x0303` | [`ReadFailed`](Message::ReadFailed)  | ✓   | —                                              |
//! | `0x0401` | [`ResyncRequest`](Message::ResyncRequest) | | range                                        |
//! | `0x0402` | [`ResyncData`](Message::ResyncData)  |     | offset u64, data                               |
//! | `0x0403` | [`ResyncAck`](Message::ResyncAck)    |     | range                                          |
//! | `0x0404` | [`ResyncFailed`](Message::ResyncFailed) |  | range                                          |
//! | `0x0405` | [`ChecksumResyncRequest`](Message::ChecksumResyncRequest) | | range, digest                |
//! | `0x0406` | [`InSync`](Message::InSync)          |     | range                                          |
//! | `0x0407` | [`VerifyRequest`](Message::VerifyRequest) | | range                                        |
//! | `0x0408` | [`VerifyReply`](Message::VerifyReply) |    | range, digest                                  |
//! | `0x0409` | [`VerifyResult`](Message::VerifyResult) |  | range                                          |
//! | `0x0501` | [`BitmapChunk`](Message::BitmapChunk) |    | first word u64, then whole u64 words           |
//! | `0x0502` | [`OutOfSync`](Message::OutOfSync)    |     | offset u64, len u64                            |
//! | `0x0601` | [`Reservations`](Message::Reservations) | ✓ | state (at most [`RESERVATIONS_CAPACITY`] bytes) |
//! | `0x0602` | [`ReservationsAck`](Message::ReservationsAck) | ✓ | —                                    |
//!
//! Flags: `Uuids` bit 0 consistent, 1 crashed primary, 2 discard my data, 3 skip initial sync;
//! `Data` bit 0 FUA, 1 flush, 2–3 the ack asked for (0 protocol A, 1 B, 2 C; 3 is refused);
//! `WriteZeroes` bits 2–3 the ack, 4 unmap; `VerifyResult` bit 0 in sync; `PromoteReply` bit 0 granted;
//! `ResizeRequest` bit 0 exact size (`--size`), 1 assume clean; `BitmapChunk` bit 0
//! last chunk. A `Data`, `ResyncData` or `ReadReply` carries as many data bytes as its payload
//! has after the fixed fields; a range must end within 64-bit offsets.
//!
//! # Buffers
//!
//! A [`FrameDecoder`] holds at most one frame: [`FrameDecoder::push`] takes bytes only up to the
//! end of the current frame, and a header claiming more than `max_payload` is refused
//! ([`WireError::TooLong`]) as soon as its 24 bytes are in, before any payload is read or
//! allocated. [`FrameDecoder::push`] copies the payload of [`Message::Data`],
//! [`Message::ResyncData`] and [`Message::ReadReply`] once, from the pushed bytes straight into
//! the buffer the message owns; [`FrameDecoder::push_in_place`] (the node's receiver) takes it from
//! the caller's `BytesMut` without a copy once all of it is there, so a [`Message::Data`]'s
//! [`Bytes`] is a slice of the read buffer (the `Vec` payloads of the other two are copied from it
//! once). The fixed fields go to a small array either way. [`encode_into`] appends a whole frame to
//! a reusable buffer (one copy of the data); [`encode_split`] appends all of it but a
//! [`Message::Data`]'s data, which it hands back to be sent by reference with a vectored write:
//! the bytes on the wire are the same.
//!
//! # Authentication
//!
//! Both nodes share a secret from the configuration. Each sends [`Message::Hello`] and a random
//! [`Message::AuthChallenge`], answers the peer's challenge with an HMAC-SHA256
//! ([`auth_response`]) and checks the peer's answer to its own ([`verify_auth`], constant time).
//! The MAC covers both nonces, both node ids, the volume UUID and the cluster id, so an answer
//! obtained by reflecting a challenge back at its sender (on this or a parallel connection) does
//! not verify; a peer that sends our own nonce back is refused outright. Like DRBD's
//! `cram-hmac-alg`, this proves the peer knows the secret when it connects; it does not protect
//! the frames that follow from a man in the middle (that is TLS, *later*).
//!
//! # Versions
//!
//! Each node speaks a range of protocol versions ([`PROTOCOL_VERSIONS`]) and the two speak the highest version
//! both have ([`ProtocolVersion`]); a release talks to the one before it (docs/upgrade.md). The release before
//! ranges (b3ce254) speaks version 2 only, decodes strictly (exact lengths, zero reserved bytes) and refuses a
//! Hello whose version is not 2, so the range travels where it reads nothing: the Hello's version field is the
//! sender's *lowest* version (which that release reads as its only one), and the last [`VERSIONS_LEN`] bytes of
//! the [`Message::AuthChallenge`] nonce announce the whole range ([`announce_versions`]): the marker
//! [`VERSIONS_MARKER`], then min and max as u16. A nonce without the marker comes from a node that speaks only
//! its Hello's version. The nonce keeps 20 random bytes, and as the MAC covers both nonces, a man in the middle
//! who changes an announced range fails the authentication: versions cannot be downgraded unseen. Every version
//! keeps this handshake (Hello layout, challenge, response) so that the next release can read it.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::generation::{Flags, GenerationIds, Role};
use crate::metadata::RESERVATIONS_CAPACITY;

/// First four bytes of every frame. The high bit of the first byte catches 7-bit channels, and
/// the rest reads "TWR" (twinsan replication) in a packet dump.
pub const MAGIC: [u8; 4] = *b"\x89TWR";
pub use crate::version::{Feature, ProtocolVersion, VersionRange, PROTOCOL_VERSIONS};

/// Marks the end of a challenge nonce as a version announcement (see *Versions*); a random nonce of a node that
/// does not announce has it by chance once in 2^64.
pub const VERSIONS_MARKER: [u8; 8] = *b"\xa5TWRvers";
/// Bytes at the end of a challenge nonce that announce the sender's versions: marker, min u16, max u16.
pub const VERSIONS_LEN: usize = VERSIONS_MARKER.len() + 4;
/// Bytes of the frame header.
pub const HEADER_LEN: usize = 24;
/// Bytes of the checksum after the payload.
pub const TRAILER_LEN: usize = 4;
/// Bytes a frame adds to its payload.
pub const FRAME_OVERHEAD: usize = HEADER_LEN + TRAILER_LEN;
/// Bytes of an authentication challenge nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of an authentication response (HMAC-SHA256).
pub const MAC_LEN: usize = 32;
/// Bytes of a block digest in checksum-based resync and online verify (SHA-256 of the range).
pub const DIGEST_LEN: usize = 32;
/// Payload bytes before the data of the message with the longest such prefix
/// ([`Message::Data`]: offset and epoch). A frame carrying `n` data bytes has a payload of at most
/// `n + DATA_PREFIX_LEN`.
pub const DATA_PREFIX_LEN: usize = 16;

/// The `max_payload` a receiver needs to accept data messages of up to `max_request` bytes.
pub const fn max_payload_for(max_request: u32) -> u32 {
    max_request.saturating_add(DATA_PREFIX_LEN as u32)
}

/// The most bitmap words one [`Message::BitmapChunk`] may carry to a receiver with `max_payload`.
pub const fn bitmap_words_per_chunk(max_payload: u32) -> usize {
    (max_payload as usize).saturating_sub(BITMAP_PREFIX_LEN) / 8
}

/// Fixed payload bytes of a [`Message::BitmapChunk`]: the first word's index.
const BITMAP_PREFIX_LEN: usize = 8;
/// Header field offsets.
const AT_TYPE: usize = 4;
const AT_FLAGS: usize = 6;
const AT_LEN: usize = 8;
const AT_SEQ: usize = 12;
const AT_HEADER_CRC: usize = 20;
/// The longest fixed payload part of any type (checksum resync request and verify reply).
const MAX_FIXED_LEN: usize = 12 + DIGEST_LEN;

// Flag bits, per type.
const FLAG_FUA: u16 = 1 << 0;
const FLAG_FLUSH: u16 = 1 << 1;
const ACK_SHIFT: u16 = 2;
const ACK_MASK: u16 = 0b11 << ACK_SHIFT;
const FLAG_UNMAP: u16 = 1 << 4;
const FLAG_CONSISTENT: u16 = 1 << 0;
const FLAG_CRASHED_PRIMARY: u16 = 1 << 1;
const FLAG_DISCARD_MY_DATA: u16 = 1 << 2;
const FLAG_SKIP_INITIAL_SYNC: u16 = 1 << 3;
const FLAG_IN_SYNC: u16 = 1 << 0;
const FLAG_GRANTED: u16 = 1 << 0;
const FLAG_LAST: u16 = 1 << 0;
const FLAG_EXACT: u16 = 1 << 0;
const FLAG_ASSUME_CLEAN: u16 = 1 << 1;
/// Longest refusal text a [`Message::ResizeReply`] carries.
pub const RESIZE_REFUSAL_MAX: usize = 1024;

/// Why a byte stream from the peer was refused. Every one of these ends the connection: once a
/// frame is wrong nothing after it can be trusted. The `Display` text is the message the admin
/// sees (the engine prefixes the peer's address).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The stream does not start a frame with [`MAGIC`]: not a twinsan peer, or framing was lost.
    #[error(
        "replication frame has bad magic {} (expected {}): the peer is not twinsan replication, \
         or the stream lost its framing",
        hex(found),
        hex(&MAGIC)
    )]
    BadMagic {
        /// The bytes seen where the magic belongs (up to the first that differs).
        found: Vec<u8>,
    },
    /// A frame type this build does not know.
    #[error("replication frame type {code:#06x} is unknown: the peer speaks another protocol")]
    UnknownType {
        /// The type code found.
        code: u16,
    },
    /// The header claims a payload longer than this side accepts; refused before reading it.
    #[error("replication frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        /// Payload length claimed by the header.
        len: u32,
        /// The decoder's limit.
        max: u32,
    },
    /// A CRC32C does not match: the frame was damaged on the way, or the peer is broken.
    #[error(
        "replication frame {part} checksum mismatch: stored {stored:#010x}, computed \
         {computed:#010x}"
    )]
    BadChecksum {
        /// Which checksum failed.
        part: FramePart,
        /// The checksum in the frame.
        stored: u32,
        /// The checksum of the bytes received.
        computed: u32,
    },
    /// The checksums match but the content is impossible (wrong length, reserved bits set, an
    /// unknown code, a range past the end of a 64-bit device): a broken or hostile peer.
    #[error("malformed replication frame: {what}")]
    Malformed {
        /// What is wrong, naming the frame type.
        what: String,
    },
    /// [`decode`] was given fewer bytes than one whole frame.
    #[error("replication frame is truncated: {len} bytes do not hold a whole frame")]
    Truncated {
        /// Bytes given.
        len: usize,
    },
    /// [`decode`] was given more bytes than one frame.
    #[error("{extra} bytes follow the replication frame")]
    TrailingBytes {
        /// Bytes after the frame.
        extra: usize,
    },
}

/// Which of a frame's two checksums failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FramePart {
    /// The header checksum (bytes 0..20).
    Header,
    /// The checksum over header and payload.
    Frame,
}

impl fmt::Display for FramePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FramePart::Header => "header",
            FramePart::Frame => "payload",
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(" ")
}

fn malformed(frame: &str, what: impl fmt::Display) -> WireError {
    WireError::Malformed {
        what: format!("{frame}: {what}"),
    }
}

/// The acknowledgement a replicated write asks for: DRBD's replication protocol, per write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplicationProtocol {
    /// Protocol A: no per-write ack; the write completed when it left the send buffer, and the
    /// epoch's [`Message::BarrierAck`] says when it reached the peer's disk.
    A,
    /// Protocol B: the peer answers [`Message::RecvAck`] once it has the data in memory.
    B,
    /// Protocol C: the peer answers [`Message::WriteAck`] once the data is on its disk.
    C,
}

impl ReplicationProtocol {
    /// Every protocol, for tests and for listing.
    pub const ALL: [ReplicationProtocol; 3] = [Self::A, Self::B, Self::C];

    const fn bits(self) -> u16 {
        let code = match self {
            Self::A => 0,
            Self::B => 1,
            Self::C => 2,
        };
        code << ACK_SHIFT
    }

    fn from_bits(flags: u16, frame: &str) -> Result<Self, WireError> {
        match (flags & ACK_MASK) >> ACK_SHIFT {
            0 => Ok(Self::A),
            1 => Ok(Self::B),
            2 => Ok(Self::C),
            code => Err(malformed(frame, format_args!("ack code {code} is unknown"))),
        }
    }
}

/// A node's disk state as it tells its peer in [`Message::State`] (the SPEC's disk states, by
/// wire code). The engine maps its own state type to and from these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiskState {
    /// No local disk: reads and writes go to the peer.
    Diskless,
    /// The disk is being attached (metadata being read).
    Attaching,
    /// The disk failed and is being detached.
    Failed,
    /// The data is incomplete (a resync target in progress, or never synced).
    Inconsistent,
    /// Consistent but known to be older than the peer's.
    Outdated,
    /// Consistent; whether it is up to date is not known (no peer to compare with).
    Consistent,
    /// Consistent and up to date.
    UpToDate,
}

impl DiskState {
    /// Every disk state, in wire-code order.
    pub const ALL: [DiskState; 7] = [
        Self::Diskless,
        Self::Attaching,
        Self::Failed,
        Self::Inconsistent,
        Self::Outdated,
        Self::Consistent,
        Self::UpToDate,
    ];

    /// The wire code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The state with wire code `code`, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }
}

/// A node's replication state towards its peer as it tells it in [`Message::State`], by wire
/// code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplicationState {
    /// Not replicating (diskless, or the connect decision is not taken yet).
    Off,
    /// Connected and in sync: writes are replicated.
    Established,
    /// Sending a resync to the peer.
    SyncSource,
    /// Receiving a resync from the peer.
    SyncTarget,
    /// A resync source, paused (by the operator or a dependency).
    PausedSyncSource,
    /// A resync target, paused.
    PausedSyncTarget,
    /// Running an online verify, asking the peer for digests.
    VerifySource,
    /// Answering an online verify.
    VerifyTarget,
}

impl ReplicationState {
    /// Every replication state, in wire-code order.
    pub const ALL: [ReplicationState; 8] = [
        Self::Off,
        Self::Established,
        Self::SyncSource,
        Self::SyncTarget,
        Self::PausedSyncSource,
        Self::PausedSyncTarget,
        Self::VerifySource,
        Self::VerifyTarget,
    ];

    /// The wire code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The state with wire code `code`, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }
}

/// Why a node closes the replication link, sent in [`Message::Disconnect`] so the other side
/// can say why in its log instead of "connection reset".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// The node is shutting down or taking the volume down.
    Shutdown,
    /// An operator ran `volume disconnect`.
    Operator,
    /// This node received a frame it refused (see [`WireError`]).
    ProtocolError,
    /// The peer failed authentication.
    AuthFailed,
    /// The nodes are incompatible: protocol version, cluster, volume, node id or sizes.
    Incompatible,
    /// The connect found a split brain that the policy leaves to the operator.
    SplitBrain,
    /// The connect found unrelated data: nothing in common between the generation ids.
    UnrelatedData,
    /// The peer did not answer pings in time.
    Timeout,
}

impl DisconnectReason {
    /// Every reason, in wire-code order (codes start at 1).
    pub const ALL: [DisconnectReason; 8] = [
        Self::Shutdown,
        Self::Operator,
        Self::ProtocolError,
        Self::AuthFailed,
        Self::Incompatible,
        Self::SplitBrain,
        Self::UnrelatedData,
        Self::Timeout,
    ];

    /// The wire code.
    pub const fn code(self) -> u16 {
        self as u16 + 1
    }

    /// The reason with wire code `code`, if any.
    pub fn from_code(code: u16) -> Option<Self> {
        let index = usize::from(code).checked_sub(1)?;
        Self::ALL.get(index).copied()
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Shutdown => "the peer is shutting down",
            Self::Operator => "an operator disconnected the volume",
            Self::ProtocolError => "the peer refused a frame from this node",
            Self::AuthFailed => "the peer says this node failed authentication",
            Self::Incompatible => "the peer says the nodes are incompatible",
            Self::SplitBrain => "split brain: the policy leaves it to the operator",
            Self::UnrelatedData => "the two nodes hold unrelated data",
            Self::Timeout => "the peer timed out waiting for this node",
        })
    }
}

/// One message of the replication link. Offsets and lengths are in bytes of the volume's data
/// area. Log a message with `Display`, which never shows payload bytes; `Debug` shows everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// First message each side sends: who it is and what it replicates (DRBD's
    /// `P_CONNECTION_FEATURES` plus the resource identity).
    Hello {
        /// The lowest protocol version the sender speaks (its only one, for a release before version ranges);
        /// the whole range is announced in its [`Message::AuthChallenge`].
        protocol_version: u32,
        /// The sender's node id from the configuration.
        node_id: u8,
        /// The volume's UUID from the metadata (the same on both nodes).
        volume_uuid: u128,
        /// [`cluster_id`] of the configured cluster name.
        cluster_id: u64,
    },
    /// A random nonce the peer must answer with [`auth_response`] (DRBD's `P_AUTH_CHALLENGE`).
    AuthChallenge {
        /// Fresh random bytes, never reused.
        nonce: [u8; NONCE_LEN],
    },
    /// The answer to the peer's challenge (DRBD's `P_AUTH_RESPONSE`).
    AuthResponse {
        /// [`auth_response`] over the peer's nonce and the connection's context.
        mac: [u8; MAC_LEN],
    },
    /// The sender's generation ids and flags, input of the connect decision (DRBD's `P_UUIDS`).
    Uuids {
        /// The sender's generation identifier tuple.
        ids: GenerationIds,
        /// The sender's flags that enter the connect decision.
        flags: Flags,
        /// The sender ran `new-current-uuid --clear-bitmap` on a fresh pair: adopt its current
        /// UUID without a sync ([`GenerationIds::accept_skip_initial_sync`]).
        skip_initial_sync: bool,
        /// Set bits in the sender's bitmap (blocks it changed that the receiver lacks).
        bitmap_weight: u64,
    },
    /// The sender's disk size (DRBD's `P_SIZES`).
    Sizes {
        /// Bytes of data the sender's backing device holds.
        data_size: u64,
        /// The largest data payload, in bytes, the sender accepts in one message.
        max_request: u32,
    },
    /// Online resize, sent on a live connection by the node where `volume resize` runs: grow to the smaller of
    /// `size` and what the receiver can hold (exactly `size` if `exact`). Only to a peer that accepts it (a
    /// protocol 2 peer refuses frames it does not know).
    ResizeRequest {
        /// The sender's usable data size, or the `--size` asked for.
        size: u64,
        /// `--size` was given: that size or nothing.
        exact: bool,
        /// `--assume-clean`: the new area is taken as equal on both nodes, not resynced.
        assume_clean: bool,
    },
    /// The answer to [`Message::ResizeRequest`]: the receiver moved its metadata and now holds `size` bytes, or it
    /// refused, for the reason given (the sender's size unchanged).
    ResizeReply {
        /// The agreed size (on a refusal: the replier's current size).
        size: u64,
        /// Why the replier refused; `None`: done.
        refusal: Option<String>,
    },
    /// The sender's current state (DRBD's `P_STATE`).
    State {
        /// The sender's role.
        role: Role,
        /// The sender's disk state.
        disk: DiskState,
        /// The sender's replication state towards the receiver.
        replication: ReplicationState,
    },
    /// Fencing: the sender goes on writing without the receiver, whose data is now Outdated and
    /// must not be promoted until it has resynced.
    Outdate,
    /// The receiver of [`Message::Outdate`] has recorded Outdated in its metadata.
    OutdateAck,
    /// The sender wants to become Primary; the receiver answers [`Message::PromoteReply`] (two primaries are
    /// never allowed while connected).
    PromoteRequest,
    /// The answer to [`Message::PromoteRequest`].
    PromoteReply {
        /// The sender may become Primary.
        granted: bool,
    },
    /// Liveness probe (DRBD's `P_PING`).
    Ping {
        /// Echoed in the [`Message::PingAck`], to match it and measure the round trip.
        seq: u64,
    },
    /// Answer to [`Message::Ping`] (DRBD's `P_PING_ACK`).
    PingAck {
        /// The ping's sequence number.
        seq: u64,
    },
    /// The sender closes the link, and says why.
    Disconnect {
        /// Why.
        reason: DisconnectReason,
    },
    /// An application write to replicate (DRBD's `P_DATA`).
    Data {
        /// Sequence number of the write, echoed by its ack.
        seq: u64,
        /// Where the data goes.
        offset: u64,
        /// The epoch the write belongs to (writes between two barriers).
        epoch: u64,
        /// The write must be on stable storage before it is acknowledged.
        fua: bool,
        /// The peer flushes its disk cache before this write (SYNCHRONIZE CACHE, or FUA emulation).
        flush: bool,
        /// Which ack the sender waits for.
        protocol: ReplicationProtocol,
        /// The bytes to write; its length is the write's length. Shared, not copied: on the Primary the
        /// application's buffer, on the Secondary a slice of the receiver's read buffer.
        data: Bytes,
    },
    /// A replicated write of zeroes (WRITE SAME with zeroes, UNMAP), without a payload.
    WriteZeroes {
        /// Sequence number of the write, echoed by its ack.
        seq: u64,
        /// Where the range starts.
        offset: u64,
        /// Bytes to zero.
        len: u32,
        /// The epoch the write belongs to.
        epoch: u64,
        /// The peer may deallocate the range instead of writing zeroes (it must read as zeroes).
        unmap: bool,
        /// Which ack the sender waits for.
        protocol: ReplicationProtocol,
    },
    /// Closes an epoch: the peer acknowledges it once every write of the epoch is on stable
    /// storage (DRBD's `P_BARRIER`).
    Barrier {
        /// The epoch closed.
        epoch: u64,
    },
    /// Every write of the epoch is on the sender's disk, flushed (DRBD's `P_BARRIER_ACK`).
    BarrierAck {
        /// The epoch.
        epoch: u64,
        /// Writes the sender received in that epoch, checked against what was sent.
        writes: u32,
    },
    /// Protocol B: the write is in the peer's memory (DRBD's `P_RECV_ACK`).
    RecvAck {
        /// The write's sequence number.
        seq: u64,
    },
    /// Protocol C: the write is on the peer's disk (DRBD's `P_WRITE_ACK`).
    WriteAck {
        /// The write's sequence number.
        seq: u64,
    },
    /// The peer could not write it: the sender marks the range out of sync (DRBD's `P_NEG_ACK`).
    NegAck {
        /// The write's sequence number.
        seq: u64,
    },
    /// A diskless primary reads from the peer (DRBD's `P_DATA_REQUEST`).
    ReadRequest {
        /// Sequence number of the read, echoed by the reply.
        seq: u64,
        /// Where to read.
        offset: u64,
        /// Bytes to read.
        len: u32,
    },
    /// The data of a [`Message::ReadRequest`] (DRBD's `P_DATA_REPLY`).
    ReadReply {
        /// The read's sequence number.
        seq: u64,
        /// The bytes read.
        data: Vec<u8>,
    },
    /// The peer could not read it (DRBD's `P_NEG_DREPLY`).
    ReadFailed {
        /// The read's sequence number.
        seq: u64,
    },
    /// The resync target asks for a range (DRBD's `P_RS_DATA_REQUEST`).
    ResyncRequest {
        /// Where the range starts.
        offset: u64,
        /// Bytes asked for.
        len: u32,
    },
    /// Resync data from the source (DRBD's `P_RS_DATA_REPLY`).
    ResyncData {
        /// Where the data goes.
        offset: u64,
        /// The bytes; its length is the range's length.
        data: Vec<u8>,
    },
    /// The target wrote resync data: the source clears the range in its bitmap (DRBD's
    /// `P_RS_WRITE_ACK`).
    ResyncAck {
        /// Where the range starts.
        offset: u64,
        /// Bytes written.
        len: u32,
    },
    /// The sender could not read (source) or write (target) a resync range: it stays out of sync
    /// (DRBD's `P_NEG_RS_DREPLY`).
    ResyncFailed {
        /// Where the range starts.
        offset: u64,
        /// Bytes.
        len: u32,
    },
    /// Checksum-based resync: the target sends the digest of its copy, and the source answers
    /// with [`Message::InSync`] or [`Message::ResyncData`] (DRBD's `P_CSUM_RS_REQUEST`).
    ChecksumResyncRequest {
        /// Where the range starts.
        offset: u64,
        /// Bytes.
        len: u32,
        /// Digest of the target's copy of the range.
        digest: [u8; DIGEST_LEN],
    },
    /// The digests match: the range is in sync without sending it (DRBD's `P_RS_IS_IN_SYNC`).
    InSync {
        /// Where the range starts.
        offset: u64,
        /// Bytes.
        len: u32,
    },
    /// Online verify: the verify source asks for the digest of a range (DRBD's `P_OV_REQUEST`).
    VerifyRequest {
        /// Where the range starts.
        offset: u64,
        /// Bytes.
        len: u32,
    },
    /// The digest of the verify target's copy (DRBD's `P_OV_REPLY`).
    VerifyReply {
        /// Where the range starts.
        offset: u64,
        /// Bytes.
        len: u32,
        /// Digest of the sender's copy of the range.
        digest: [u8; DIGEST_LEN],
    },
    /// What the verify source found; a difference is marked out of sync, never repaired
    /// silently (DRBD's `P_OV_RESULT`).
    VerifyResult {
        /// Where the range starts.
        offset: u64,
        /// Bytes.
        len: u32,
        /// Both copies have the same digest.
        in_sync: bool,
    },
    /// Part of the sender's dirty bitmap, exchanged before a resync (DRBD's `P_BITMAP`).
    BitmapChunk {
        /// Index of the first word; a word covers 64 blocks of
        /// [`BLOCK_BYTES`](crate::bitmap::BLOCK_BYTES).
        first_word: u64,
        /// The words, laid out as in [`crate::bitmap`] (bit `b % 64` of word `b / 64` for block
        /// `b`); at most [`bitmap_words_per_chunk`] of the receiver's limit.
        words: Vec<u64>,
        /// This is the last chunk of the bitmap.
        last: bool,
    },
    /// The receiver marks a range out of sync, e.g. a write the sender could not replicate
    /// (DRBD's `P_OUT_OF_SYNC`).
    OutOfSync {
        /// Where the range starts.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// The SCSI persistent reservation state of the volume's logical unit, from the node that serves it (a
    /// Primary, or the resync source): the receiver keeps it in its superblock and answers
    /// [`Message::ReservationsAck`] once it is on disk. The bytes are the SCSI layer's own encoding.
    Reservations {
        /// Echoed in the acknowledgement.
        seq: u64,
        /// The encoded state, at most [`RESERVATIONS_CAPACITY`] bytes.
        data: Vec<u8>,
    },
    /// The peer has the [`Message::Reservations`] with this `seq` on stable storage.
    ReservationsAck {
        /// The `seq` of the stored state.
        seq: u64,
    },
}

/// How a frame type's payload is shaped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bulk {
    /// Exactly the fixed part.
    None,
    /// The fixed part, then any number of bytes.
    Bytes,
    /// The fixed part, then whole little-endian u64 words.
    Words,
}

/// What the header of each frame type may contain.
struct Spec {
    name: &'static str,
    fixed: usize,
    bulk: Bulk,
    flags: u16,
    seq: bool,
}

/// The frame type codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
enum FrameType {
    Hello = 0x0001,
    AuthChallenge = 0x0002,
    AuthResponse = 0x0003,
    Uuids = 0x0101,
    Sizes = 0x0102,
    State = 0x0103,
    Outdate = 0x0104,
    OutdateAck = 0x0105,
    PromoteRequest = 0x0109,
    PromoteReply = 0x010a,
    ResizeRequest = 0x010b,
    ResizeReply = 0x010c,
    Ping = 0x0106,
    PingAck = 0x0107,
    Disconnect = 0x0108,
    Data = 0x0201,
    WriteZeroes = 0x0202,
    Barrier = 0x0203,
    BarrierAck = 0x0204,
    RecvAck = 0x0205,
    WriteAck = 0x0206,
    NegAck = 0x0207,
    ReadRequest = 0x0301,
    ReadReply = 0x0302,
    ReadFailed = 0x0303,
    ResyncRequest = 0x0401,
    ResyncData = 0x0402,
    ResyncAck = 0x0403,
    ResyncFailed = 0x0404,
    ChecksumResyncRequest = 0x0405,
    InSync = 0x0406,
    VerifyRequest = 0x0407,
    VerifyReply = 0x0408,
    VerifyResult = 0x0409,
    BitmapChunk = 0x0501,
    OutOfSync = 0x0502,
    Reservations = 0x0601,
    ReservationsAck = 0x0602,
}

impl FrameType {
    const ALL: [FrameType; 38] = [
        Self::Hello,
        Self::AuthChallenge,
        Self::AuthResponse,
        Self::Uuids,
        Self::Sizes,
        Self::State,
        Self::Outdate,
        Self::OutdateAck,
        Self::PromoteRequest,
        Self::PromoteReply,
        Self::ResizeRequest,
        Self::ResizeReply,
        Self::Ping,
        Self::PingAck,
        Self::Disconnect,
        Self::Data,
        Self::WriteZeroes,
        Self::Barrier,
        Self::BarrierAck,
        Self::RecvAck,
        Self::WriteAck,
        Self::NegAck,
        Self::ReadRequest,
        Self::ReadReply,
        Self::ReadFailed,
        Self::ResyncRequest,
        Self::ResyncData,
        Self::ResyncAck,
        Self::ResyncFailed,
        Self::ChecksumResyncRequest,
        Self::InSync,
        Self::VerifyRequest,
        Self::VerifyReply,
        Self::VerifyResult,
        Self::BitmapChunk,
        Self::OutOfSync,
        Self::Reservations,
        Self::ReservationsAck,
    ];

    fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u16 == code)
    }

    const fn spec(self) -> Spec {
        use Bulk as B;
        use FrameType as T;
        const RANGE: usize = 12;
        let (name, fixed, bulk, flags, seq) = match self {
            T::Hello => ("Hello", 32, B::None, 0, false),
            T::AuthChallenge => ("AuthChallenge", NONCE_LEN, B::None, 0, false),
            T::AuthResponse => ("AuthResponse", MAC_LEN, B::None, 0, false),
            T::Uuids => (
                "Uuids",
                40,
                B::None,
                FLAG_CONSISTENT
                    | FLAG_CRASHED_PRIMARY
                    | FLAG_DISCARD_MY_DATA
                    | FLAG_SKIP_INITIAL_SYNC,
                false,
            ),
            T::Sizes => ("Sizes", 12, B::None, 0, false),
            T::State => ("State", 4, B::None, 0, false),
            T::Outdate => ("Outdate", 0, B::None, 0, false),
            T::OutdateAck => ("OutdateAck", 0, B::None, 0, false),
            T::PromoteRequest => ("PromoteRequest", 0, B::None, 0, false),
            T::PromoteReply => ("PromoteReply", 0, B::None, FLAG_GRANTED, false),
            T::ResizeRequest => (
                "ResizeRequest",
                8,
                B::None,
                FLAG_EXACT | FLAG_ASSUME_CLEAN,
                false,
            ),
            T::ResizeReply => ("ResizeReply", 8, B::Bytes, 0, false),
            T::Ping => ("Ping", 0, B::None, 0, true),
            T::PingAck => ("PingAck", 0, B::None, 0, true),
            T::Disconnect => ("Disconnect", 2, B::None, 0, false),
            T::Data => (
                "Data",
                DATA_PREFIX_LEN,
                B::Bytes,
                FLAG_FUA | FLAG_FLUSH | ACK_MASK,
                true,
            ),
            T::WriteZeroes => ("WriteZeroes", 20, B::None, ACK_MASK | FLAG_UNMAP, true),
            T::Barrier => ("Barrier", 8, B::None, 0, false),
            T::BarrierAck => ("BarrierAck", 12, B::None, 0, false),
            T::RecvAck => ("RecvAck", 0, B::None, 0, true),
            T::WriteAck => ("WriteAck", 0, B::None, 0, true),
            T::NegAck => ("NegAck", 0, B::None, 0, true),
            T::ReadRequest => ("ReadRequest", RANGE, B::None, 0, true),
            T::ReadReply => ("ReadReply", 0, B::Bytes, 0, true),
            T::ReadFailed => ("ReadFailed", 0, B::None, 0, true),
            T::ResyncRequest => ("ResyncRequest", RANGE, B::None, 0, false),
            T::ResyncData => ("ResyncData", 8, B::Bytes, 0, false),
            T::ResyncAck => ("ResyncAck", RANGE, B::None, 0, false),
            T::ResyncFailed => ("ResyncFailed", RANGE, B::None, 0, false),
            T::ChecksumResyncRequest => (
                "ChecksumResyncRequest",
                RANGE + DIGEST_LEN,
                B::None,
                0,
                false,
            ),
            T::InSync => ("InSync", RANGE, B::None, 0, false),
            T::VerifyRequest => ("VerifyRequest", RANGE, B::None, 0, false),
            T::VerifyReply => ("VerifyReply", RANGE + DIGEST_LEN, B::None, 0, false),
            T::VerifyResult => ("VerifyResult", RANGE, B::None, FLAG_IN_SYNC, false),
            T::BitmapChunk => ("BitmapChunk", BITMAP_PREFIX_LEN, B::Words, FLAG_LAST, false),
            T::OutOfSync => ("OutOfSync", 16, B::None, 0, false),
            T::Reservations => ("Reservations", 0, B::Bytes, 0, true),
            T::ReservationsAck => ("ReservationsAck", 0, B::None, 0, true),
        };
        Spec {
            name,
            fixed,
            bulk,
            flags,
            seq,
        }
    }
}

impl Message {
    /// The message's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        self.frame_type().spec().name
    }

    /// Bytes of the whole frame [`encode`] writes for this message.
    pub fn frame_len(&self) -> usize {
        let bulk = match self {
            Message::Data { data, .. } => data.len(),
            Message::ReadReply { data, .. }
            | Message::ResyncData { data, .. }
            | Message::Reservations { data, .. } => data.len(),
            Message::ResizeReply { refusal, .. } => refusal_bytes(refusal).len(),
            Message::BitmapChunk { words, .. } => words.len() * 8,
            _ => 0,
        };
        FRAME_OVERHEAD + self.frame_type().spec().fixed + bulk
    }

    fn frame_type(&self) -> FrameType {
        use FrameType as T;
        match self {
            Message::Hello { .. } => T::Hello,
            Message::AuthChallenge { .. } => T::AuthChallenge,
            Message::AuthResponse { .. } => T::AuthResponse,
            Message::Uuids { .. } => T::Uuids,
            Message::Sizes { .. } => T::Sizes,
            Message::State { .. } => T::State,
            Message::Outdate => T::Outdate,
            Message::OutdateAck => T::OutdateAck,
            Message::PromoteRequest => T::PromoteRequest,
            Message::PromoteReply { .. } => T::PromoteReply,
            Message::ResizeRequest { .. } => T::ResizeRequest,
            Message::ResizeReply { .. } => T::ResizeReply,
            Message::Ping { .. } => T::Ping,
            Message::PingAck { .. } => T::PingAck,
            Message::Disconnect { .. } => T::Disconnect,
            Message::Data { .. } => T::Data,
            Message::WriteZeroes { .. } => T::WriteZeroes,
            Message::Barrier { .. } => T::Barrier,
            Message::BarrierAck { .. } => T::BarrierAck,
            Message::RecvAck { .. } => T::RecvAck,
            Message::WriteAck { .. } => T::WriteAck,
            Message::NegAck { .. } => T::NegAck,
            Message::ReadRequest { .. } => T::ReadRequest,
            Message::ReadReply { .. } => T::ReadReply,
            Message::ReadFailed { .. } => T::ReadFailed,
            Message::ResyncRequest { .. } => T::ResyncRequest,
            Message::ResyncData { .. } => T::ResyncData,
            Message::ResyncAck { .. } => T::ResyncAck,
            Message::ResyncFailed { .. } => T::ResyncFailed,
            Message::ChecksumResyncRequest { .. } => T::ChecksumResyncRequest,
            Message::InSync { .. } => T::InSync,
            Message::VerifyRequest { .. } => T::VerifyRequest,
            Message::VerifyReply { .. } => T::VerifyReply,
            Message::VerifyResult { .. } => T::VerifyResult,
            Message::BitmapChunk { .. } => T::BitmapChunk,
            Message::OutOfSync { .. } => T::OutOfSync,
            Message::Reservations { .. } => T::Reservations,
            Message::ReservationsAck { .. } => T::ReservationsAck,
        }
    }

    /// Header flags and sequence number.
    fn flags_and_seq(&self) -> (u16, u64) {
        let flag = |set: bool, bit: u16| if set { bit } else { 0 };
        match *self {
            Message::Uuids {
                flags,
                skip_initial_sync,
                ..
            } => (
                flag(flags.consistent, FLAG_CONSISTENT)
                    | flag(flags.crashed_primary, FLAG_CRASHED_PRIMARY)
                    | flag(flags.discard_my_data, FLAG_DISCARD_MY_DATA)
                    | flag(skip_initial_sync, FLAG_SKIP_INITIAL_SYNC),
                0,
            ),
            Message::Data {
                seq,
                fua,
                flush,
                protocol,
                ..
            } => (
                flag(fua, FLAG_FUA) | flag(flush, FLAG_FLUSH) | protocol.bits(),
                seq,
            ),
            Message::WriteZeroes {
                seq,
                unmap,
                protocol,
                ..
            } => (flag(unmap, FLAG_UNMAP) | protocol.bits(), seq),
            Message::VerifyResult { in_sync, .. } => (flag(in_sync, FLAG_IN_SYNC), 0),
            Message::PromoteReply { granted } => (flag(granted, FLAG_GRANTED), 0),
            Message::ResizeRequest {
                exact,
                assume_clean,
                ..
            } => (
                flag(exact, FLAG_EXACT) | flag(assume_clean, FLAG_ASSUME_CLEAN),
                0,
            ),
            Message::BitmapChunk { last, .. } => (flag(last, FLAG_LAST), 0),
            Message::Ping { seq }
            | Message::PingAck { seq }
            | Message::RecvAck { seq }
            | Message::WriteAck { seq }
            | Message::NegAck { seq }
            | Message::ReadRequest { seq, .. }
            | Message::ReadReply { seq, .. }
            | Message::ReadFailed { seq }
            | Message::Reservations { seq, .. }
            | Message::ReservationsAck { seq } => (0, seq),
            _ => (0, 0),
        }
    }

    /// Appends the payload.
    fn write_payload(&self, out: &mut Vec<u8>) {
        fn range(out: &mut Vec<u8>, offset: u64, len: u32) {
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
        }
        match self {
            Message::Hello {
                protocol_version,
                node_id,
                volume_uuid,
                cluster_id,
            } => {
                out.extend_from_slice(&protocol_version.to_le_bytes());
                out.extend_from_slice(&[*node_id, 0, 0, 0]);
                out.extend_from_slice(&volume_uuid.to_le_bytes());
                out.extend_from_slice(&cluster_id.to_le_bytes());
            }
            Message::AuthChallenge { nonce } => out.extend_from_slice(nonce),
            Message::AuthResponse { mac } => out.extend_from_slice(mac),
            Message::Uuids {
                ids, bitmap_weight, ..
            } => {
                for uuid in [ids.current, ids.bitmap, ids.history[0], ids.history[1]] {
                    out.extend_from_slice(&uuid.to_le_bytes());
                }
                out.extend_from_slice(&bitmap_weight.to_le_bytes());
            }
            Message::Sizes {
                data_size,
                max_request,
            } => range(out, *data_size, *max_request),
            Message::State {
                role,
                disk,
                replication,
            } => out.extend_from_slice(&[role_code(*role), disk.code(), replication.code(), 0]),
            Message::Disconnect { reason } => out.extend_from_slice(&reason.code().to_le_bytes()),
            Message::Data {
                offset,
                epoch,
                data,
                ..
            } => {
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(data);
            }
            Message::WriteZeroes {
                offset, len, epoch, ..
            } => {
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            }
            Message::Barrier { epoch } => out.extend_from_slice(&epoch.to_le_bytes()),
            Message::ResizeRequest { size, .. } => out.extend_from_slice(&size.to_le_bytes()),
            Message::ResizeReply { size, refusal } => {
                out.extend_from_slice(&size.to_le_bytes());
                out.extend_from_slice(refusal_bytes(refusal));
            }
            Message::BarrierAck { epoch, writes } => range(out, *epoch, *writes),
            Message::ReadRequest { offset, len, .. }
            | Message::ResyncRequest { offset, len }
            | Message::ResyncAck { offset, len }
            | Message::ResyncFailed { offset, len }
            | Message::InSync { offset, len }
            | Message::VerifyRequest { offset, len }
            | Message::VerifyResult { offset, len, .. } => range(out, *offset, *len),
            Message::ReadReply { data, .. } | Message::Reservations { data, .. } => {
                out.extend_from_slice(data)
            }
            Message::ResyncData { offset, data } => {
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(data);
            }
            Message::ChecksumResyncRequest {
                offset,
                len,
                digest,
            }
            | Message::VerifyReply {
                offset,
                len,
                digest,
            } => {
                range(out, *offset, *len);
                out.extend_from_slice(digest);
            }
            Message::BitmapChunk {
                first_word, words, ..
            } => {
                out.extend_from_slice(&first_word.to_le_bytes());
                for word in words {
                    out.extend_from_slice(&word.to_le_bytes());
                }
            }
            Message::OutOfSync { offset, len } => {
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            }
            Message::Outdate
            | Message::OutdateAck
            | Message::PromoteRequest
            | Message::PromoteReply { .. }
            | Message::Ping { .. }
            | Message::PingAck { .. }
            | Message::RecvAck { .. }
            | Message::WriteAck { .. }
            | Message::NegAck { .. }
            | Message::ReadFailed { .. }
            | Message::ReservationsAck { .. } => {}
        }
    }
}

/// The refusal text as sent: at most [`RESIZE_REFUSAL_MAX`] bytes, cut at a character boundary.
fn refusal_bytes(refusal: &Option<String>) -> &[u8] {
    let Some(text) = refusal else { return &[] };
    let mut end = text.len().min(RESIZE_REFUSAL_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text.as_bytes()[..end]
}

impl fmt::Display for Message {
    /// One line for the log: the name and the fields, never payload bytes, nonces or MACs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match self {
            Message::Hello {
                protocol_version,
                node_id,
                volume_uuid,
                cluster_id,
            } => write!(
                f,
                " version={protocol_version} node={node_id} volume={volume_uuid:032x} \
                 cluster={cluster_id:016x}"
            ),
            Message::Uuids {
                ids,
                flags,
                skip_initial_sync,
                bitmap_weight,
            } => write!(
                f,
                " {ids} weight={bitmap_weight} consistent={} crashed_primary={} \
                 discard_my_data={} skip_initial_sync={skip_initial_sync}",
                flags.consistent, flags.crashed_primary, flags.discard_my_data
            ),
            Message::Sizes {
                data_size,
                max_request,
            } => write!(f, " data_size={data_size} max_request={max_request}"),
            Message::State {
                role,
                disk,
                replication,
            } => write!(
                f,
                " role={role:?} disk={disk:?} replication={replication:?}"
            ),
            Message::Disconnect { reason } => write!(f, " reason={reason:?}"),
            Message::ResizeRequest {
                size,
                exact,
                assume_clean,
            } => write!(f, " size={size} exact={exact} assume_clean={assume_clean}"),
            Message::ResizeReply { size, refusal } => {
                write!(f, " size={size} refused={}", refusal.is_some())
            }
            Message::Data {
                seq,
                offset,
                epoch,
                fua,
                flush,
                protocol,
                data,
            } => write!(
                f,
                " seq={seq} offset={offset} len={} epoch={epoch} fua={fua} flush={flush} \
                 protocol={protocol:?}",
                data.len()
            ),
            Message::WriteZeroes {
                seq,
                offset,
                len,
                epoch,
                unmap,
                protocol,
            } => write!(
                f,
                " seq={seq} offset={offset} len={len} epoch={epoch} unmap={unmap} \
                 protocol={protocol:?}"
            ),
            Message::Barrier { epoch } => write!(f, " epoch={epoch}"),
            Message::BarrierAck { epoch, writes } => write!(f, " epoch={epoch} writes={writes}"),
            Message::Ping { seq }
            | Message::PingAck { seq }
            | Message::RecvAck { seq }
            | Message::WriteAck { seq }
            | Message::NegAck { seq }
            | Message::ReadFailed { seq }
            | Message::ReservationsAck { seq } => write!(f, " seq={seq}"),
            Message::Reservations { seq, data } => write!(f, " seq={seq} len={}", data.len()),
            Message::ReadRequest { seq, offset, len } => {
                write!(f, " seq={seq} offset={offset} len={len}")
            }
            Message::ReadReply { seq, data } => write!(f, " seq={seq} len={}", data.len()),
            Message::ResyncData { offset, data } => {
                write!(f, " offset={offset} len={}", data.len())
            }
            Message::ResyncRequest { offset, len }
            | Message::ResyncAck { offset, len }
            | Message::ResyncFailed { offset, len }
            | Message::ChecksumResyncRequest { offset, len, .. }
            | Message::InSync { offset, len }
            | Message::VerifyRequest { offset, len }
            | Message::VerifyReply { offset, len, .. } => write!(f, " offset={offset} len={len}"),
            Message::VerifyResult {
                offset,
                len,
                in_sync,
            } => write!(f, " offset={offset} len={len} in_sync={in_sync}"),
            Message::BitmapChunk {
                first_word,
                words,
                last,
            } => write!(
                f,
                " first_word={first_word} words={} last={last}",
                words.len()
            ),
            Message::OutOfSync { offset, len } => write!(f, " offset={offset} len={len}"),
            Message::AuthChallenge { .. }
            | Message::AuthResponse { .. }
            | Message::Outdate
            | Message::OutdateAck
            | Message::PromoteRequest => Ok(()),
            Message::PromoteReply { granted } => write!(f, " granted={granted}"),
        }
    }
}

const fn role_code(role: Role) -> u8 {
    match role {
        Role::Secondary => 0,
        Role::Primary => 1,
    }
}

/// The frame of `message`.
pub fn encode(message: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.frame_len());
    encode_into(message, &mut out);
    out
}

/// Appends the frame of `message` to `out` (a send buffer that can be reused across frames).
///
/// # Panics
/// If the payload exceeds `u32::MAX` bytes, which no receiver accepts: the engine splits writes
/// at the peer's `max_request`.
pub fn encode_into(message: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    encode_head(message, out, 0);
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Appends the frame of `message` to `out` like [`encode_into`], except the data of a [`Message::Data`]:
/// that is returned, with the length of `out` where it belongs (before the frame's trailing checksum), for
/// the caller to send by reference (a vectored write of `out[..at]`, the data, `out[at..]`). The bytes on the
/// wire are [`encode`]'s. Other messages are appended whole and give `None`.
///
/// # Panics
/// Like [`encode_into`].
pub fn encode_split(message: Message, out: &mut Vec<u8>) -> Option<(usize, Bytes)> {
    let Message::Data {
        seq,
        offset,
        epoch,
        fua,
        flush,
        protocol,
        data,
    } = message
    else {
        encode_into(&message, out);
        return None;
    };
    // The same message without its data (an empty `Bytes` allocates nothing) gives the header and the fixed
    // fields; the length counts the data.
    let head = Message::Data {
        seq,
        offset,
        epoch,
        fua,
        flush,
        protocol,
        data: Bytes::new(),
    };
    let start = out.len();
    encode_head(&head, out, data.len());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..]), &data);
    let at = out.len();
    out.extend_from_slice(&crc.to_le_bytes());
    Some((at, data))
}

/// Appends the header and the payload, with the length (the payload's and `left_out` bytes sent apart) and the
/// header checksum filled in.
fn encode_head(message: &Message, out: &mut Vec<u8>, left_out: usize) {
    let start = out.len();
    let (flags, seq) = message.flags_and_seq();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(message.frame_type() as u16).to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    let len_at = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    message.write_payload(out);
    let len = u32::try_from(out.len() - start - HEADER_LEN + left_out)
        .expect("replication frame payload exceeds u32::MAX bytes");
    out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
    let header_crc = crc32c::crc32c(&out[start..start + AT_HEADER_CRC]);
    out[start + AT_HEADER_CRC..start + HEADER_LEN].copy_from_slice(&header_crc.to_le_bytes());
}

/// Decodes exactly one whole frame of at most `max_payload` payload bytes.
pub fn decode(frame: &[u8], max_payload: u32) -> Result<Message, WireError> {
    let mut decoder = FrameDecoder::new(max_payload);
    let used = decoder.push(frame);
    match decoder.next_frame()? {
        Some(message) if used == frame.len() => Ok(message),
        Some(_) => Err(WireError::TrailingBytes {
            extra: frame.len() - used,
        }),
        None => Err(WireError::Truncated { len: frame.len() }),
    }
}

/// A header that passed its checksum and the limits.
#[derive(Clone, Copy, Debug)]
struct FrameHeader {
    ty: FrameType,
    flags: u16,
    seq: u64,
    head_len: usize,
    tail_len: usize,
}

/// Where the decoder is in the current frame.
#[derive(Debug)]
enum Stage {
    /// Filling the header.
    Header,
    /// Filling the fixed payload part, then the bulk part.
    Payload(FrameHeader),
    /// Filling the trailing checksum.
    Trailer(FrameHeader),
    /// A whole frame, waiting for [`FrameDecoder::next_frame`].
    Ready(Message),
    /// The stream was refused; nothing more is read.
    Failed(WireError),
}

/// Cuts a byte stream from the peer into [`Message`]s, holding at most one frame.
///
/// ```
/// use twinsan_replication::wire::{encode, FrameDecoder, Message};
///
/// let mut stream = encode(&Message::Ping { seq: 1 });
/// stream.extend(encode(&Message::PingAck { seq: 1 }));
/// let mut decoder = FrameDecoder::new(1 << 20);
/// let mut received = Vec::new();
/// // What one socket read returned; push takes bytes up to the end of the current frame only.
/// let mut input = &stream[..];
/// while !input.is_empty() {
///     let used = decoder.push(input);
///     input = &input[used..];
///     if let Some(message) = decoder.next_frame()? {
///         received.push(message);
///     }
/// }
/// assert_eq!(received, [Message::Ping { seq: 1 }, Message::PingAck { seq: 1 }]);
/// # Ok::<(), twinsan_replication::wire::WireError>(())
/// ```
pub struct FrameDecoder {
    max_payload: u32,
    stage: Stage,
    header: [u8; HEADER_LEN],
    header_filled: usize,
    head: [u8; MAX_FIXED_LEN],
    head_filled: usize,
    /// The bulk part copied from pushed slices ([`push`](Self::push)); allocated when its first byte comes.
    tail: Vec<u8>,
    /// The bulk part taken whole from the caller's buffer ([`push_in_place`](Self::push_in_place)).
    tail_in_place: Option<Bytes>,
    trailer: [u8; TRAILER_LEN],
    trailer_filled: usize,
    /// CRC32C of the frame so far, computed as bytes arrive so the payload is read only once.
    crc: u32,
}

impl FrameDecoder {
    /// A decoder that refuses payloads over `max_payload` bytes (see [`max_payload_for`]).
    pub fn new(max_payload: u32) -> Self {
        FrameDecoder {
            max_payload,
            stage: Stage::Header,
            header: [0; HEADER_LEN],
            header_filled: 0,
            head: [0; MAX_FIXED_LEN],
            head_filled: 0,
            tail: Vec::new(),
            tail_in_place: None,
            trailer: [0; TRAILER_LEN],
            trailer_filled: 0,
            crc: 0,
        }
    }

    /// The payload limit.
    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// True between frames: no byte of a frame is buffered. A peer that closes the connection
    /// while this is false cut a frame short.
    pub fn is_idle(&self) -> bool {
        matches!(self.stage, Stage::Header) && self.header_filled == 0
    }

    /// Takes bytes of the stream and returns how many it took: never past the end of the current
    /// frame, and none while a whole frame waits for [`next_frame`](Self::next_frame) or after an
    /// error. Push the rest again after calling `next_frame`.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let mut rest = bytes;
        loop {
            match self.stage {
                Stage::Ready(_) | Stage::Failed(_) => break,
                Stage::Header => {
                    take(&mut self.header, &mut self.header_filled, &mut rest);
                    // Check the magic on every byte that came in: a peer that is not twinsan
                    // (an HTTP probe, say) may never send a whole header.
                    let seen = self.header_filled.min(MAGIC.len());
                    if self.header[..seen] != MAGIC[..seen] {
                        let found = self.header[..seen].to_vec();
                        self.stage = Stage::Failed(WireError::BadMagic { found });
                        break;
                    }
                    if self.header_filled < HEADER_LEN {
                        break;
                    }
                    self.stage = match self.parse_header() {
                        Ok(header) => Stage::Payload(header),
                        Err(error) => Stage::Failed(error),
                    };
                }
                Stage::Payload(header) => {
                    let before = rest;
                    take(
                        &mut self.head[..header.head_len],
                        &mut self.head_filled,
                        &mut rest,
                    );
                    if self.head_filled == header.head_len {
                        let n = (header.tail_len - self.tail.len()).min(rest.len());
                        if n > 0 && self.tail.is_empty() {
                            // The length passed the limit in `parse_header`.
                            self.tail.reserve_exact(header.tail_len);
                        }
                        self.tail.extend_from_slice(&rest[..n]);
                        rest = &rest[n..];
                    }
                    self.crc =
                        crc32c::crc32c_append(self.crc, &before[..before.len() - rest.len()]);
                    if self.head_filled < header.head_len || self.tail.len() < header.tail_len {
                        break;
                    }
                    self.stage = Stage::Trailer(header);
                }
                Stage::Trailer(header) => {
                    take(&mut self.trailer, &mut self.trailer_filled, &mut rest);
                    if self.trailer_filled < TRAILER_LEN {
                        break;
                    }
                    self.stage = match self.finish_frame(header) {
                        Ok(message) => Stage::Ready(message),
                        Err(error) => Stage::Failed(error),
                    };
                }
            }
        }
        bytes.len() - rest.len()
    }

    /// Takes bytes from the front of `buf` like [`push`](Self::push), with one difference: the bulk part of a
    /// frame (the data of a [`Message::Data`], [`Message::ResyncData`] or [`Message::ReadReply`]) is taken only
    /// once all of it is in `buf`, and then without a copy (`split_to`, so the message's [`Bytes`] shares
    /// `buf`'s allocation); until then it stays in `buf` and [`awaited_payload`](Self::awaited_payload) says
    /// how many bytes `buf` must hold. Returns how many bytes it took. The header, the fixed fields and the
    /// trailer are copied into the decoder, as with `push` (a few dozen bytes).
    pub fn push_in_place(&mut self, buf: &mut BytesMut) -> usize {
        let mut used = 0;
        loop {
            let limit = match self.stage {
                Stage::Ready(_) | Stage::Failed(_) => break,
                Stage::Header => HEADER_LEN - self.header_filled,
                Stage::Payload(header) if self.head_filled < header.head_len => {
                    header.head_len - self.head_filled
                }
                // A bulk part that `push` started copying is finished the same way.
                Stage::Payload(_) if !self.tail.is_empty() => buf.len(),
                Stage::Payload(header) => {
                    if buf.len() < header.tail_len {
                        break;
                    }
                    let tail = buf.split_to(header.tail_len).freeze();
                    self.crc = crc32c::crc32c_append(self.crc, &tail);
                    self.tail_in_place = Some(tail);
                    used += header.tail_len;
                    self.stage = Stage::Trailer(header);
                    continue;
                }
                Stage::Trailer(_) => TRAILER_LEN - self.trailer_filled,
            };
            let n = self.push(&buf[..buf.len().min(limit)]);
            buf.advance(n);
            used += n;
            if n == 0 {
                break;
            }
        }
        used
    }

    /// The bulk bytes [`push_in_place`](Self::push_in_place) waits to find whole in its buffer, if it does:
    /// the buffer must be able to hold that many (at most `max_payload`) before the frame can go on.
    pub fn awaited_payload(&self) -> Option<usize> {
        match self.stage {
            Stage::Payload(header)
                if self.head_filled == header.head_len && self.tail.is_empty() =>
            {
                Some(header.tail_len)
            }
            _ => None,
        }
    }

    /// The frame that [`push`](Self::push) completed, if any. After an error the decoder is
    /// stuck: every later call returns the same error, and the connection must be closed.
    pub fn next_frame(&mut self) -> Result<Option<Message>, WireError> {
        match std::mem::replace(&mut self.stage, Stage::Header) {
            Stage::Ready(message) => Ok(Some(message)),
            Stage::Failed(error) => {
                self.stage = Stage::Failed(error.clone());
                Err(error)
            }
            other => {
                self.stage = other;
                Ok(None)
            }
        }
    }

    /// Checks a whole header, in the order that gives the most useful error, and prepares the
    /// buffers for its payload. Nothing is allocated before the length passed the limit.
    fn parse_header(&mut self) -> Result<FrameHeader, WireError> {
        let h = &self.header;
        let stored = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
        let computed = crc32c::crc32c(&h[..AT_HEADER_CRC]);
        if stored != computed {
            return Err(WireError::BadChecksum {
                part: FramePart::Header,
                stored,
                computed,
            });
        }
        let code = u16::from_le_bytes([h[AT_TYPE], h[AT_TYPE + 1]]);
        let flags = u16::from_le_bytes([h[AT_FLAGS], h[AT_FLAGS + 1]]);
        let len = u32::from_le_bytes([h[AT_LEN], h[AT_LEN + 1], h[AT_LEN + 2], h[AT_LEN + 3]]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&h[AT_SEQ..AT_SEQ + 8]);
        let seq = u64::from_le_bytes(seq);

        let ty = FrameType::from_code(code).ok_or(WireError::UnknownType { code })?;
        if len > self.max_payload {
            return Err(WireError::TooLong {
                len,
                max: self.max_payload,
            });
        }
        let spec = ty.spec();
        if flags & !spec.flags != 0 {
            return Err(malformed(
                spec.name,
                format_args!("undefined flags {:#06x} are set", flags & !spec.flags),
            ));
        }
        if seq != 0 && !spec.seq {
            return Err(malformed(
                spec.name,
                format_args!("sequence number {seq} on a type without one"),
            ));
        }
        let len = len as usize;
        let shape_ok = match spec.bulk {
            Bulk::None => len == spec.fixed,
            Bulk::Bytes => len >= spec.fixed,
            Bulk::Words => len >= spec.fixed && (len - spec.fixed).is_multiple_of(8),
        };
        if !shape_ok {
            return Err(malformed(
                spec.name,
                format_args!("payload of {len} bytes does not fit the type"),
            ));
        }
        self.header_filled = 0;
        self.head_filled = 0;
        self.trailer_filled = 0;
        self.crc = crc32c::crc32c(&self.header);
        let tail_len = len - spec.fixed;
        Ok(FrameHeader {
            ty,
            flags,
            seq,
            head_len: spec.fixed,
            tail_len,
        })
    }

    /// Checks the frame checksum and parses the payload.
    fn finish_frame(&mut self, header: FrameHeader) -> Result<Message, WireError> {
        let stored = u32::from_le_bytes(self.trailer);
        if stored != self.crc {
            return Err(WireError::BadChecksum {
                part: FramePart::Frame,
                stored,
                computed: self.crc,
            });
        }
        let tail = match self.tail_in_place.take() {
            Some(bytes) => Tail::InPlace(bytes),
            None => Tail::Copied(std::mem::take(&mut self.tail)),
        };
        parse_payload(header, &self.head[..header.head_len], tail)
    }
}

impl fmt::Debug for FrameDecoder {
    /// Where the decoder is, without the payload bytes it holds (they must never reach a log).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match &self.stage {
            Stage::Header => "header",
            Stage::Payload(_) => "payload",
            Stage::Trailer(_) => "trailer",
            Stage::Ready(_) => "ready",
            Stage::Failed(_) => "failed",
        };
        f.debug_struct("FrameDecoder")
            .field("max_payload", &self.max_payload)
            .field("stage", &stage)
            .field(
                "buffered",
                &(self.header_filled
                    + self.head_filled
                    + self.tail.len()
                    + self.tail_in_place.as_ref().map_or(0, Bytes::len)
                    + self.trailer_filled),
            )
            .finish()
    }
}

/// The bulk part of a whole frame: copied from pushed slices, or a slice of the caller's buffer.
enum Tail {
    Copied(Vec<u8>),
    InPlace(Bytes),
}

impl Tail {
    fn as_slice(&self) -> &[u8] {
        match self {
            Tail::Copied(v) => v,
            Tail::InPlace(b) => b,
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// As shared bytes, without a copy.
    fn into_bytes(self) -> Bytes {
        match self {
            Tail::Copied(v) => Bytes::from(v),
            Tail::InPlace(b) => b,
        }
    }

    /// As a vector the message owns: the copied bytes as they are, bytes in place copied once.
    fn into_vec(self) -> Vec<u8> {
        match self {
            Tail::Copied(v) => v,
            Tail::InPlace(b) => b.to_vec(),
        }
    }
}

/// Copies from `rest` into `buf[*filled..]` as much as fits, and advances both.
fn take(buf: &mut [u8], filled: &mut usize, rest: &mut &[u8]) {
    let n = (buf.len() - *filled).min(rest.len());
    buf[*filled..*filled + n].copy_from_slice(&rest[..n]);
    *filled += n;
    *rest = &rest[n..];
}

/// Reads little-endian fields off a fixed payload part.
struct Reader<'a> {
    rest: &'a [u8],
    frame: &'static str,
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        // The header check made the fixed part exactly as long as the type needs, so this only
        // fails on a bug in the type table; it still must not panic.
        let (bytes, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or_else(|| malformed(self.frame, "payload too short"))?;
        self.rest = rest;
        Ok(*bytes)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_le_bytes)
    }

    fn u128(&mut self) -> Result<u128, WireError> {
        self.array().map(u128::from_le_bytes)
    }

    /// A range that must not run past the end of a 64-bit device.
    fn range(&mut self) -> Result<(u64, u32), WireError> {
        let offset = self.u64()?;
        let len = self.u32()?;
        check_range(self.frame, offset, u64::from(len))?;
        Ok((offset, len))
    }

    fn zero(&mut self, what: &str) -> Result<(), WireError> {
        if self.u8()? != 0 {
            return Err(malformed(self.frame, format_args!("{what} is not zero")));
        }
        Ok(())
    }
}

fn check_range(frame: &str, offset: u64, len: u64) -> Result<(), WireError> {
    match offset.checked_add(len) {
        Some(_) => Ok(()),
        None => Err(malformed(
            frame,
            format_args!("range at {offset} of {len} bytes ends beyond the last 64-bit offset"),
        )),
    }
}

fn parse_payload(header: FrameHeader, head: &[u8], tail: Tail) -> Result<Message, WireError> {
    use FrameType as T;
    let FrameHeader { ty, flags, seq, .. } = header;
    let name = ty.spec().name;
    let mut r = Reader {
        rest: head,
        frame: name,
    };
    let message = match ty {
        T::Hello => {
            let protocol_version = r.u32()?;
            let node_id = r.u8()?;
            for _ in 0..3 {
                r.zero("reserved byte")?;
            }
            Message::Hello {
                protocol_version,
                node_id,
                volume_uuid: r.u128()?,
                cluster_id: r.u64()?,
            }
        }
        T::AuthChallenge => Message::AuthChallenge { nonce: r.array()? },
        T::AuthResponse => Message::AuthResponse { mac: r.array()? },
        T::Uuids => Message::Uuids {
            ids: GenerationIds {
                current: r.u64()?,
                bitmap: r.u64()?,
                history: [r.u64()?, r.u64()?],
            },
            flags: Flags {
                consistent: flags & FLAG_CONSISTENT != 0,
                crashed_primary: flags & FLAG_CRASHED_PRIMARY != 0,
                discard_my_data: flags & FLAG_DISCARD_MY_DATA != 0,
            },
            skip_initial_sync: flags & FLAG_SKIP_INITIAL_SYNC != 0,
            bitmap_weight: r.u64()?,
        },
        T::Sizes => Message::Sizes {
            data_size: r.u64()?,
            max_request: r.u32()?,
        },
        T::State => {
            let role = match r.u8()? {
                0 => Role::Secondary,
                1 => Role::Primary,
                code => return Err(malformed(name, format_args!("role code {code} is unknown"))),
            };
            let code = r.u8()?;
            let disk = DiskState::from_code(code).ok_or_else(|| {
                malformed(name, format_args!("disk state code {code} is unknown"))
            })?;
            let code = r.u8()?;
            let replication = ReplicationState::from_code(code).ok_or_else(|| {
                malformed(
                    name,
                    format_args!("replication state code {code} is unknown"),
                )
            })?;
            r.zero("reserved byte")?;
            Message::State {
                role,
                disk,
                replication,
            }
        }
        T::Outdate => Message::Outdate,
        T::OutdateAck => Message::OutdateAck,
        T::PromoteRequest => Message::PromoteRequest,
        T::PromoteReply => Message::PromoteReply {
            granted: flags & FLAG_GRANTED != 0,
        },
        T::Ping => Message::Ping { seq },
        T::PingAck => Message::PingAck { seq },
        T::Disconnect => {
            let code = r.u16()?;
            let reason = DisconnectReason::from_code(code).ok_or_else(|| {
                malformed(name, format_args!("disconnect reason {code} is unknown"))
            })?;
            Message::Disconnect { reason }
        }
        T::Data => {
            let offset = r.u64()?;
            let epoch = r.u64()?;
            check_range(name, offset, tail.len() as u64)?;
            Message::Data {
                seq,
                offset,
                epoch,
                fua: flags & FLAG_FUA != 0,
                flush: flags & FLAG_FLUSH != 0,
                protocol: ReplicationProtocol::from_bits(flags, name)?,
                data: tail.into_bytes(),
            }
        }
        T::WriteZeroes => {
            let offset = r.u64()?;
            let epoch = r.u64()?;
            let len = r.u32()?;
            check_range(name, offset, u64::from(len))?;
            Message::WriteZeroes {
                seq,
                offset,
                len,
                epoch,
                unmap: flags & FLAG_UNMAP != 0,
                protocol: ReplicationProtocol::from_bits(flags, name)?,
            }
        }
        T::Barrier => Message::Barrier { epoch: r.u64()? },
        T::ResizeRequest => Message::ResizeRequest {
            size: r.u64()?,
            exact: flags & FLAG_EXACT != 0,
            assume_clean: flags & FLAG_ASSUME_CLEAN != 0,
        },
        T::ResizeReply => {
            let size = r.u64()?;
            if tail.len() > RESIZE_REFUSAL_MAX {
                return Err(malformed(
                    name,
                    format_args!(
                        "a refusal of {} bytes, more than {RESIZE_REFUSAL_MAX}",
                        tail.len()
                    ),
                ));
            }
            let refusal = match String::from_utf8(tail.into_vec()) {
                Ok(text) if text.is_empty() => None,
                Ok(text) => Some(text),
                Err(_) => return Err(malformed(name, format_args!("the refusal is not UTF-8"))),
            };
            Message::ResizeReply { size, refusal }
        }
        T::BarrierAck => Message::BarrierAck {
            epoch: r.u64()?,
            writes: r.u32()?,
        },
        T::RecvAck => Message::RecvAck { seq },
        T::WriteAck => Message::WriteAck { seq },
        T::NegAck => Message::NegAck { seq },
        T::ReadRequest => {
            let (offset, len) = r.range()?;
            Message::ReadRequest { seq, offset, len }
        }
        T::ReadReply => Message::ReadReply {
            seq,
            data: tail.into_vec(),
        },
        T::ReadFailed => Message::ReadFailed { seq },
        T::Reservations => {
            if tail.len() > RESERVATIONS_CAPACITY {
                return Err(malformed(
                    name,
                    format_args!(
                        "{} bytes of reservation state, more than the {RESERVATIONS_CAPACITY} a superblock holds",
                        tail.len()
                    ),
                ));
            }
            Message::Reservations {
                seq,
                data: tail.into_vec(),
            }
        }
        T::ReservationsAck => Message::ReservationsAck { seq },
        T::ResyncRequest => {
            let (offset, len) = r.range()?;
            Message::ResyncRequest { offset, len }
        }
        T::ResyncData => {
            let offset = r.u64()?;
            check_range(name, offset, tail.len() as u64)?;
            Message::ResyncData {
                offset,
                data: tail.into_vec(),
            }
        }
        T::ResyncAck => {
            let (offset, len) = r.range()?;
            Message::ResyncAck { offset, len }
        }
        T::ResyncFailed => {
            let (offset, len) = r.range()?;
            Message::ResyncFailed { offset, len }
        }
        T::ChecksumResyncRequest => {
            let (offset, len) = r.range()?;
            Message::ChecksumResyncRequest {
                offset,
                len,
                digest: r.array()?,
            }
        }
        T::InSync => {
            let (offset, len) = r.range()?;
            Message::InSync { offset, len }
        }
        T::VerifyRequest => {
            let (offset, len) = r.range()?;
            Message::VerifyRequest { offset, len }
        }
        T::VerifyReply => {
            let (offset, len) = r.range()?;
            Message::VerifyReply {
                offset,
                len,
                digest: r.array()?,
            }
        }
        T::VerifyResult => {
            let (offset, len) = r.range()?;
            Message::VerifyResult {
                offset,
                len,
                in_sync: flags & FLAG_IN_SYNC != 0,
            }
        }
        T::BitmapChunk => {
            let first_word = r.u64()?;
            // The count comes from the payload length, which passed the limit before a byte of
            // it was read: a peer cannot make this allocate more than it actually sent.
            let words: Vec<u64> = tail
                .as_slice()
                .chunks_exact(8)
                .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
                .collect();
            if first_word.checked_add(words.len() as u64).is_none() {
                return Err(malformed(name, "words run past word 2^64"));
            }
            Message::BitmapChunk {
                first_word,
                words,
                last: flags & FLAG_LAST != 0,
            }
        }
        T::OutOfSync => {
            let offset = r.u64()?;
            let len = r.u64()?;
            check_range(name, offset, len)?;
            Message::OutOfSync { offset, len }
        }
    };
    if !r.rest.is_empty() {
        return Err(malformed(name, "payload too long"));
    }
    Ok(message)
}

/// The cluster id sent in [`Message::Hello`]: the first 8 bytes of a SHA-256 of the configured
/// cluster name, so two clusters that reach each other's replication ports by mistake refuse
/// to connect.
pub fn cluster_id(name: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(b"twinsan cluster\0")
        .chain_update(name.as_bytes())
        .finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(id)
}

/// The replication link's shared secret from the configuration. `Debug` never shows it, it has
/// no `Display`, and it is overwritten when dropped.
#[derive(Clone)]
pub struct SharedSecret(Vec<u8>);

impl SharedSecret {
    /// The secret `bytes` (the configuration refuses an empty one).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        SharedSecret(bytes.into())
    }

    /// True if the secret has no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(<hidden>)")
    }
}

impl Drop for SharedSecret {
    fn drop(&mut self) {
        // Best effort without a zeroize crate: black_box keeps the writes from being elided.
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

/// Everything an authentication MAC covers, seen from the challenge being answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthContext {
    /// The nonce of the challenge being answered (sent by the challenger).
    pub challenge: [u8; NONCE_LEN],
    /// The nonce the responder sent the other way, binding both directions of the exchange.
    pub responder_nonce: [u8; NONCE_LEN],
    /// Node id of the node that sent the challenge.
    pub challenger_node_id: u8,
    /// Node id of the node that answers it.
    pub responder_node_id: u8,
    /// The volume both nodes replicate.
    pub volume_uuid: u128,
    /// [`cluster_id`] of the cluster both belong to.
    pub cluster_id: u64,
}

/// Label that keeps these MACs apart from any other use of the same secret.
const AUTH_LABEL: &[u8] = b"twinsan replication auth v1\0";

fn auth_mac(secret: &SharedSecret, context: &AuthContext) -> Hmac<Sha256> {
    // HMAC takes keys of any length (long ones are hashed), so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC accepts any key length");
    // Every field has a fixed length, so the concatenation is unambiguous.
    mac.update(AUTH_LABEL);
    mac.update(&context.challenge);
    mac.update(&context.responder_nonce);
    mac.update(&[context.challenger_node_id, context.responder_node_id]);
    mac.update(&context.volume_uuid.to_le_bytes());
    mac.update(&context.cluster_id.to_le_bytes());
    mac
}

/// The answer to a challenge: HMAC-SHA256 keyed with the shared secret over a label and the
/// whole `context`. Because the responder's node id is in it, an answer a node gave as responder
/// can never pass for the peer's answer, which is what defeats reflection across connections.
pub fn auth_response(secret: &SharedSecret, context: &AuthContext) -> [u8; MAC_LEN] {
    auth_mac(secret, context).finalize().into_bytes().into()
}

/// True if `mac` is the right answer for `context`, compared in constant time.
pub fn verify_auth(secret: &SharedSecret, context: &AuthContext, mac: &[u8]) -> bool {
    auth_mac(secret, context).verify_slice(mac).is_ok()
}

/// What a node knows before it connects to its peer.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    /// How the admin knows the peer (its replication address), for messages only.
    pub peer: String,
    /// This node's id.
    pub node_id: u8,
    /// The peer's id, from the configuration.
    pub peer_node_id: u8,
    /// The volume's UUID from the local metadata.
    pub volume_uuid: u128,
    /// [`cluster_id`] of the configured cluster name.
    pub cluster_id: u64,
    /// The shared secret.
    pub secret: SharedSecret,
}

/// Why the handshake with a peer failed. The `Display` text is the message the admin sees.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The peer's answer to our challenge is wrong: it does not know the shared secret.
    #[error("replication peer {peer} failed authentication: wrong shared secret")]
    WrongSecret {
        /// The peer, as configured.
        peer: String,
    },
    /// The peer sent our own challenge back, to make us compute the answer for it.
    #[error(
        "replication peer {peer} failed authentication: it sent this node's own challenge back \
         (a reflection attack, or this node connected to itself)"
    )]
    ReflectedChallenge {
        /// The peer, as configured.
        peer: String,
    },
    /// The peer speaks no protocol version this node speaks.
    #[error(
        "replication peer {peer} speaks protocol versions {theirs}, this node speaks {ours}: no \
         version in common; a release talks only to the release before it, upgrade one step at a \
         time (docs/upgrade.md)"
    )]
    VersionMismatch {
        /// The peer, as configured.
        peer: String,
        /// Our versions.
        ours: VersionRange,
        /// The peer's versions.
        theirs: VersionRange,
    },
    /// The peer belongs to another cluster.
    #[error(
        "replication peer {peer} belongs to another cluster (cluster id {theirs:016x}, this \
         node's is {ours:016x}): check the cluster name in both configurations"
    )]
    ClusterMismatch {
        /// The peer, as configured.
        peer: String,
        /// Our cluster id.
        ours: u64,
        /// The peer's cluster id.
        theirs: u64,
    },
    /// The peer replicates another volume.
    #[error(
        "replication peer {peer} holds volume {theirs:032x}, not {ours:032x}: check which volume \
         uses this replication address on each node"
    )]
    VolumeMismatch {
        /// The peer, as configured.
        peer: String,
        /// Our volume UUID.
        ours: u128,
        /// The peer's volume UUID.
        theirs: u128,
    },
    /// The peer claims our own node id.
    #[error(
        "replication peer {peer} claims node id {node_id}, this node's own: give each node its \
         own id in the configuration (or this node connected to itself)"
    )]
    SameNodeId {
        /// The peer, as configured.
        peer: String,
        /// The id both claim.
        node_id: u8,
    },
    /// The peer claims another node id than the configuration gives it.
    #[error(
        "replication peer {peer} claims node id {theirs}, but the configuration gives it \
         {expected}"
    )]
    WrongNodeId {
        /// The peer, as configured.
        peer: String,
        /// The id the configuration gives the peer.
        expected: u8,
        /// The id it claims.
        theirs: u8,
    },
    /// The peer sent a message out of order.
    #[error("replication peer {peer} broke the handshake: it sent {got} where {expected} belongs")]
    Unexpected {
        /// The peer, as configured.
        peer: String,
        /// The message the handshake waited for.
        expected: &'static str,
        /// The message that came.
        got: &'static str,
    },
    /// The peer closed the link during the handshake.
    #[error("replication peer {peer} closed the connection during the handshake: {reason}")]
    PeerDisconnected {
        /// The peer, as configured.
        peer: String,
        /// Why, as the peer said.
        reason: DisconnectReason,
    },
}

impl HandshakeError {
    /// The reason to send in [`Message::Disconnect`] before closing, or `None` if the peer
    /// already closed.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        match self {
            Self::WrongSecret { .. } | Self::ReflectedChallenge { .. } => {
                Some(DisconnectReason::AuthFailed)
            }
            Self::VersionMismatch { .. }
            | Self::ClusterMismatch { .. }
            | Self::VolumeMismatch { .. }
            | Self::SameNodeId { .. }
            | Self::WrongNodeId { .. } => Some(DisconnectReason::Incompatible),
            Self::Unexpected { .. } => Some(DisconnectReason::ProtocolError),
            Self::PeerDisconnected { .. } => None,
        }
    }
}

fn unexpected(config: &HandshakeConfig, expected: &'static str, got: &Message) -> HandshakeError {
    match got {
        Message::Disconnect { reason } => HandshakeError::PeerDisconnected {
            peer: config.peer.clone(),
            reason: *reason,
        },
        other => HandshakeError::Unexpected {
            peer: config.peer.clone(),
            expected,
            got: other.name(),
        },
    }
}

/// First handshake state: our Hello and challenge are sent, the peer's Hello is awaited.
#[derive(Debug)]
pub struct AwaitingHello {
    config: HandshakeConfig,
    nonce: [u8; NONCE_LEN],
}

/// The peer's Hello was acceptable; its challenge (and with it the versions it speaks) is awaited.
#[derive(Debug)]
pub struct AwaitingChallenge {
    config: HandshakeConfig,
    nonce: [u8; NONCE_LEN],
    /// The lowest version the peer speaks, from its Hello.
    peer_min: u32,
}

/// We answered the peer's challenge; its answer to ours is awaited.
#[derive(Debug)]
pub struct AwaitingResponse {
    config: HandshakeConfig,
    nonce: [u8; NONCE_LEN],
    peer_nonce: [u8; NONCE_LEN],
    version: ProtocolVersion,
}

/// The peer proved it knows the secret and replicates the same volume: the link may carry data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    /// The peer, as configured.
    pub peer: String,
    /// The peer's node id (the configured one, confirmed).
    pub peer_node_id: u8,
    /// The protocol version both speak on this connection.
    pub version: ProtocolVersion,
}

/// `nonce` with its last [`VERSIONS_LEN`] bytes replaced by the announcement of `versions`.
pub fn announce_versions(mut nonce: [u8; NONCE_LEN], versions: VersionRange) -> [u8; NONCE_LEN] {
    let at = NONCE_LEN - VERSIONS_LEN;
    let (min, max) = (narrow(versions.min), narrow(versions.max));
    nonce[at..at + VERSIONS_MARKER.len()].copy_from_slice(&VERSIONS_MARKER);
    nonce[NONCE_LEN - 4..NONCE_LEN - 2].copy_from_slice(&min.to_le_bytes());
    nonce[NONCE_LEN - 2..].copy_from_slice(&max.to_le_bytes());
    nonce
}

/// The versions a challenge nonce announces, or `None` if it has no announcement (a release before ranges).
pub fn announced_versions(nonce: &[u8; NONCE_LEN]) -> Option<VersionRange> {
    let at = NONCE_LEN - VERSIONS_LEN;
    if nonce[at..at + VERSIONS_MARKER.len()] != VERSIONS_MARKER {
        return None;
    }
    let min = u16::from_le_bytes([nonce[NONCE_LEN - 4], nonce[NONCE_LEN - 3]]);
    let max = u16::from_le_bytes([nonce[NONCE_LEN - 2], nonce[NONCE_LEN - 1]]);
    Some(VersionRange {
        min: u32::from(min),
        max: u32::from(max),
    })
}

/// A version of this build as the u16 of an announcement (versions are small numbers; saturates).
fn narrow(version: u32) -> u16 {
    u16::try_from(version).unwrap_or(u16::MAX)
}

impl AwaitingHello {
    /// Starts a handshake with `nonce`, fresh random bytes from the engine (its end is replaced by the
    /// announcement of [`PROTOCOL_VERSIONS`]); returns the state and the two messages to send at once, in
    /// order: Hello (with our lowest version, which the release before ranges accepts), then AuthChallenge.
    pub fn start(config: HandshakeConfig, nonce: [u8; NONCE_LEN]) -> (Self, [Message; 2]) {
        let nonce = announce_versions(nonce, PROTOCOL_VERSIONS);
        let hello = Message::Hello {
            protocol_version: PROTOCOL_VERSIONS.min,
            node_id: config.node_id,
            volume_uuid: config.volume_uuid,
            cluster_id: config.cluster_id,
        };
        let challenge = Message::AuthChallenge { nonce };
        (AwaitingHello { config, nonce }, [hello, challenge])
    }

    /// Takes the peer's Hello and refuses a peer that cannot be ours: cluster, volume and node id
    /// (the Hello's layout is the same in every version). Its versions are checked with its
    /// challenge, which announces them.
    pub fn receive(self, message: Message) -> Result<AwaitingChallenge, HandshakeError> {
        let config = &self.config;
        let peer = || config.peer.clone();
        let Message::Hello {
            protocol_version,
            node_id,
            volume_uuid,
            cluster_id,
        } = message
        else {
            return Err(unexpected(config, "Hello", &message));
        };
        if cluster_id != config.cluster_id {
            return Err(HandshakeError::ClusterMismatch {
                peer: peer(),
                ours: config.cluster_id,
                theirs: cluster_id,
            });
        }
        if volume_uuid != config.volume_uuid {
            return Err(HandshakeError::VolumeMismatch {
                peer: peer(),
                ours: config.volume_uuid,
                theirs: volume_uuid,
            });
        }
        if node_id == config.node_id {
            return Err(HandshakeError::SameNodeId {
                peer: peer(),
                node_id,
            });
        }
        if node_id != config.peer_node_id {
            return Err(HandshakeError::WrongNodeId {
                peer: peer(),
                expected: config.peer_node_id,
                theirs: node_id,
            });
        }
        Ok(AwaitingChallenge {
            config: self.config,
            nonce: self.nonce,
            peer_min: protocol_version,
        })
    }
}

impl AwaitingChallenge {
    /// Takes the peer's challenge, agrees on the version (refusing a peer with none in common, or
    /// whose announcement contradicts its Hello) and returns our answer to send. Refuses our own
    /// nonce: answering it would hand the peer the response it owes us.
    pub fn receive(self, message: Message) -> Result<(AwaitingResponse, Message), HandshakeError> {
        let Message::AuthChallenge { nonce: peer_nonce } = message else {
            return Err(unexpected(&self.config, "AuthChallenge", &message));
        };
        let theirs = match announced_versions(&peer_nonce) {
            Some(range) if range.min == self.peer_min && range.min <= range.max => range,
            // An announcement that does not fit the Hello is no range: refused, naming what it said.
            Some(range) => {
                return Err(HandshakeError::VersionMismatch {
                    peer: self.config.peer.clone(),
                    ours: PROTOCOL_VERSIONS,
                    theirs: range,
                })
            }
            None => VersionRange::only(self.peer_min),
        };
        let Some(version) = ProtocolVersion::negotiate(&PROTOCOL_VERSIONS, &theirs) else {
            return Err(HandshakeError::VersionMismatch {
                peer: self.config.peer.clone(),
                ours: PROTOCOL_VERSIONS,
                theirs,
            });
        };
        if peer_nonce == self.nonce {
            return Err(HandshakeError::ReflectedChallenge {
                peer: self.config.peer.clone(),
            });
        }
        let context = AuthContext {
            challenge: peer_nonce,
            responder_nonce: self.nonce,
            challenger_node_id: self.config.peer_node_id,
            responder_node_id: self.config.node_id,
            volume_uuid: self.config.volume_uuid,
            cluster_id: self.config.cluster_id,
        };
        let mac = auth_response(&self.config.secret, &context);
        let next = AwaitingResponse {
            config: self.config,
            nonce: self.nonce,
            peer_nonce,
            version,
        };
        Ok((next, Message::AuthResponse { mac }))
    }
}

impl AwaitingResponse {
    /// Takes the peer's answer to our challenge and checks it in constant time.
    pub fn receive(self, message: Message) -> Result<Authenticated, HandshakeError> {
        let config = &self.config;
        let Message::AuthResponse { mac } = message else {
            return Err(unexpected(config, "AuthResponse", &message));
        };
        let context = AuthContext {
            challenge: self.nonce,
            responder_nonce: self.peer_nonce,
            challenger_node_id: config.node_id,
            responder_node_id: config.peer_node_id,
            volume_uuid: config.volume_uuid,
            cluster_id: config.cluster_id,
        };
        if !verify_auth(&config.secret, &context, &mac) {
            return Err(HandshakeError::WrongSecret {
                peer: config.peer.clone(),
            });
        }
        Ok(Authenticated {
            peer: config.peer.clone(),
            peer_node_id: config.peer_node_id,
            version: self.version,
        })
    }
}

/// The handshake as one value, for an engine that feeds it whatever message arrives. Each state
/// is its own type ([`AwaitingHello`], [`AwaitingChallenge`], [`AwaitingResponse`]) and a
/// transition consumes it, so no state can be skipped or revisited.
#[derive(Debug)]
pub enum Handshake {
    /// Waiting for the peer's Hello.
    AwaitingHello(AwaitingHello),
    /// Waiting for the peer's challenge.
    AwaitingChallenge(AwaitingChallenge),
    /// Waiting for the peer's answer to our challenge.
    AwaitingResponse(AwaitingResponse),
}

/// What a handshake does with one message.
#[derive(Debug)]
pub enum HandshakeStep {
    /// Not done yet: keep `handshake`, and send `send` if there is one.
    Continue {
        /// The next state.
        handshake: Handshake,
        /// A message to send now.
        send: Option<Message>,
    },
    /// The peer is authenticated.
    Done(Authenticated),
}

impl Handshake {
    /// Starts a handshake (see [`AwaitingHello::start`]).
    pub fn start(config: HandshakeConfig, nonce: [u8; NONCE_LEN]) -> (Self, [Message; 2]) {
        let (state, send) = AwaitingHello::start(config, nonce);
        (Handshake::AwaitingHello(state), send)
    }

    /// Feeds one message from the peer. On an error, send
    /// [`HandshakeError::disconnect_reason`] and close the connection.
    pub fn receive(self, message: Message) -> Result<HandshakeStep, HandshakeError> {
        let continue_with = |handshake, send| HandshakeStep::Continue { handshake, send };
        Ok(match self {
            Handshake::AwaitingHello(state) => {
                continue_with(Handshake::AwaitingChallenge(state.receive(message)?), None)
            }
            Handshake::AwaitingChallenge(state) => {
                let (next, answer) = state.receive(message)?;
                continue_with(Handshake::AwaitingResponse(next), Some(answer))
            }
            Handshake::AwaitingResponse(state) => HandshakeStep::Done(state.receive(message)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, VecDeque};

    const MAX: u32 = 1 << 16;

    fn ids() -> GenerationIds {
        GenerationIds {
            current: 0x1111_2222_3333_4445,
            bitmap: 0x5555_6666_7777_8888,
            history: [0x9999_aaaa_bbbb_cccc, 0],
        }
    }

    /// One message of every type, with fields that are not all zero.
    fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                protocol_version: PROTOCOL_VERSIONS.min,
                node_id: 2,
                volume_uuid: 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
                cluster_id: cluster_id("alpha"),
            },
            Message::AuthChallenge { nonce: [7; 32] },
            Message::AuthResponse { mac: [9; 32] },
            Message::Uuids {
                ids: ids(),
                flags: Flags {
                    consistent: true,
                    crashed_primary: false,
                    discard_my_data: true,
                },
                skip_initial_sync: true,
                bitmap_weight: 12345,
            },
            Message::Sizes {
                data_size: 1 << 40,
                max_request: 1 << 20,
            },
            Message::State {
                role: Role::Primary,
                disk: DiskState::UpToDate,
                replication: ReplicationState::SyncSource,
            },
            Message::Outdate,
            Message::OutdateAck,
            Message::PromoteRequest,
            Message::PromoteReply { granted: true },
            Message::Ping { seq: 77 },
            Message::PingAck { seq: 77 },
            Message::Disconnect {
                reason: DisconnectReason::SplitBrain,
            },
            Message::Data {
                seq: 5,
                offset: 4096,
                epoch: 3,
                fua: true,
                flush: false,
                protocol: ReplicationProtocol::C,
                data: (0..=255).collect(),
            },
            Message::WriteZeroes {
                seq: 6,
                offset: 8192,
                len: 1 << 20,
                epoch: 3,
                unmap: true,
                protocol: ReplicationProtocol::B,
            },
            Message::Barrier { epoch: 3 },
            Message::BarrierAck {
                epoch: 3,
                writes: 2,
            },
            Message::RecvAck { seq: 5 },
            Message::WriteAck { seq: 5 },
            Message::NegAck { seq: 6 },
            Message::ReadRequest {
                seq: 9,
                offset: 4096,
                len: 4096,
            },
            Message::ReadReply {
                seq: 9,
                data: vec![0xab; 4096],
            },
            Message::ReadFailed { seq: 10 },
            Message::ResyncRequest {
                offset: 1 << 30,
                len: 1 << 17,
            },
            Message::ResyncData {
                offset: 1 << 30,
                data: vec![1, 2, 3, 4],
            },
            Message::ResyncAck {
                offset: 1 << 30,
                len: 4,
            },
            Message::ResyncFailed {
                offset: 0,
                len: 4096,
            },
            Message::ChecksumResyncRequest {
                offset: 4096,
                len: 4096,
                digest: [0x5a; 32],
            },
            Message::InSync {
                offset: 4096,
                len: 4096,
            },
            Message::VerifyRequest {
                offset: 0,
                len: 1 << 20,
            },
            Message::VerifyReply {
                offset: 0,
                len: 1 << 20,
                digest: [0xa5; 32],
            },
            Message::VerifyResult {
                offset: 0,
                len: 1 << 20,
                in_sync: false,
            },
            Message::BitmapChunk {
                first_word: 64,
                words: vec![0, u64::MAX, 0x8000_0000_0000_0001],
                last: true,
            },
            Message::OutOfSync {
                offset: 1 << 12,
                len: 1 << 33,
            },
            Message::Reservations {
                seq: 12,
                data: b"reservation state".to_vec(),
            },
            Message::ReservationsAck { seq: 12 },
            Message::ResizeRequest {
                size: 1 << 30,
                exact: true,
                assume_clean: false,
            },
            Message::ResizeReply {
                size: 1 << 30,
                refusal: Some("shrinking is not supported".into()),
            },
            Message::ResizeReply {
                size: 1 << 30,
                refusal: None,
            },
        ]
    }

    /// A frame with valid checksums around any header fields and payload.
    fn raw_frame(code: u16, flags: u16, seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&code.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        let header_crc = bitwise_crc32c(&out);
        out.extend_from_slice(&header_crc.to_le_bytes());
        out.extend_from_slice(payload);
        let crc = bitwise_crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// CRC32C bit by bit: an implementation independent of the one the codec uses.
    fn bitwise_crc32c(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82f6_3b78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn assert_malformed(frame: &[u8], needle: &str) {
        match decode(frame, MAX) {
            Err(WireError::Malformed { what }) => {
                assert!(what.contains(needle), "{what:?} should mention {needle:?}")
            }
            other => panic!("expected Malformed mentioning {needle:?}, got {other:?}"),
        }
    }

    /// Feeds `stream` in pieces of the given sizes (cycled) and returns every message or the
    /// first error.
    fn decode_in_pieces(
        stream: &[u8],
        sizes: &[usize],
        max: u32,
    ) -> Result<Vec<Message>, WireError> {
        let mut decoder = FrameDecoder::new(max);
        let mut out = Vec::new();
        let mut input = stream;
        let mut sizes = sizes.iter().copied().cycle();
        while !input.is_empty() {
            let piece = sizes.next().unwrap_or(1).clamp(1, input.len());
            let mut chunk = &input[..piece];
            input = &input[piece..];
            while !chunk.is_empty() {
                let used = decoder.push(chunk);
                chunk = &chunk[used..];
                if let Some(message) = decoder.next_frame()? {
                    out.push(message);
                } else {
                    assert!(chunk.is_empty(), "push stopped without a whole frame");
                }
            }
        }
        assert!(decoder.is_idle(), "stream ended mid-frame");
        Ok(out)
    }

    /// Like [`decode_in_pieces`], the way the node's receiver does: each piece appended to one buffer, frames
    /// taken with [`FrameDecoder::push_in_place`]. The buffer never holds more than one frame and one piece.
    fn decode_in_place_pieces(
        stream: &[u8],
        sizes: &[usize],
        max: u32,
    ) -> Result<Vec<Message>, WireError> {
        let mut decoder = FrameDecoder::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut input = stream;
        let mut sizes = sizes.iter().copied().cycle();
        while !input.is_empty() {
            let piece = sizes.next().unwrap_or(1).clamp(1, input.len());
            buf.extend_from_slice(&input[..piece]);
            input = &input[piece..];
            loop {
                decoder.push_in_place(&mut buf);
                match decoder.next_frame()? {
                    Some(message) => out.push(message),
                    None => break,
                }
            }
            assert!(
                buf.len() <= max as usize + piece,
                "more than a frame and a piece buffered"
            );
            if let Some(awaited) = decoder.awaited_payload() {
                assert!(buf.len() < awaited, "waits for a payload it has");
            } else {
                assert!(buf.is_empty(), "stopped with bytes it could take");
            }
        }
        assert!(
            decoder.is_idle() && buf.is_empty(),
            "stream ended mid-frame"
        );
        Ok(out)
    }

    #[test]
    fn wire_push_in_place_takes_the_data_without_a_copy() {
        let message = Message::Data {
            seq: 1,
            offset: 0,
            epoch: 1,
            fua: false,
            flush: false,
            protocol: ReplicationProtocol::C,
            data: Bytes::from(vec![0x5a; 4096]),
        };
        let frame = encode(&message);
        let mut buf = BytesMut::with_capacity(frame.len() * 2);
        // The header and some data first: the data stays in the buffer until all of it is there.
        buf.extend_from_slice(&frame[..HEADER_LEN + DATA_PREFIX_LEN + 100]);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.capacity();
        let mut decoder = FrameDecoder::new(MAX);
        assert_eq!(
            decoder.push_in_place(&mut buf),
            HEADER_LEN + DATA_PREFIX_LEN
        );
        assert_eq!(decoder.awaited_payload(), Some(4096));
        assert_eq!(buf.len(), 100);
        assert_eq!(decoder.next_frame(), Ok(None));
        buf.extend_from_slice(&frame[HEADER_LEN + DATA_PREFIX_LEN + 100..]);
        assert_eq!(decoder.push_in_place(&mut buf), 4096 + TRAILER_LEN);
        assert!(buf.is_empty());
        let Ok(Some(Message::Data { data, .. })) = decoder.next_frame() else {
            panic!("no Data frame");
        };
        assert!(
            range.contains(&(data.as_ptr() as usize)),
            "the data was copied"
        );
        assert_eq!(data, message_data(&message));
        assert!(decoder.is_idle());
    }

    fn message_data(message: &Message) -> Bytes {
        match message {
            Message::Data { data, .. } => data.clone(),
            _ => Bytes::new(),
        }
    }

    #[test]
    fn wire_push_in_place_finishes_what_push_started() {
        let messages = samples();
        let stream: Vec<u8> = messages.iter().flat_map(encode).collect();
        let mut decoder = FrameDecoder::new(MAX);
        let mut out = Vec::new();
        let mut input = &stream[..];
        let mut in_place = false;
        while !input.is_empty() {
            // Alternates the two ways every 5 bytes, so frames are started one way and finished the other.
            let piece = input.len().min(5);
            if in_place {
                let mut buf = BytesMut::from(&input[..piece]);
                let used = decoder.push_in_place(&mut buf);
                input = &input[used..];
                if used == 0 {
                    // Waits for a whole payload: push copies it.
                    let used = decoder.push(&input[..piece]);
                    input = &input[used..];
                }
            } else {
                let used = decoder.push(&input[..piece]);
                input = &input[used..];
            }
            in_place = !in_place;
            if let Some(message) = decoder.next_frame().unwrap() {
                out.push(message);
            }
        }
        assert_eq!(out, messages);
    }

    #[test]
    fn wire_encode_split_sends_the_same_bytes() {
        for message in samples() {
            let whole = encode(&message);
            let mut out = vec![0xaa; 3];
            let split = encode_split(message.clone(), &mut out);
            let mut sent = out[3..].to_vec();
            if let Some((at, data)) = split {
                assert!(matches!(message, Message::Data { .. }));
                sent.splice(at - 3..at - 3, data.iter().copied());
            }
            assert_eq!(sent, whole, "{}", message.name());
        }
    }

    #[test]
    fn wire_round_trip_every_type() {
        let samples = samples();
        let names: BTreeSet<&str> = samples.iter().map(Message::name).collect();
        assert_eq!(
            names.len(),
            FrameType::ALL.len(),
            "samples must cover every type"
        );
        for message in samples {
            let frame = encode(&message);
            assert_eq!(frame.len(), message.frame_len(), "{}", message.name());
            let decoded = decode(&frame, MAX).unwrap_or_else(|e| panic!("{}: {e}", message.name()));
            assert_eq!(decoded, message);
            assert_eq!(
                encode(&decoded),
                frame,
                "re-encoding must give the same bytes"
            );
        }
    }

    #[test]
    fn wire_type_codes_are_distinct_and_fixed_parts_fit() {
        let codes: BTreeSet<u16> = FrameType::ALL.iter().map(|t| *t as u16).collect();
        assert_eq!(codes.len(), FrameType::ALL.len());
        for ty in FrameType::ALL {
            assert!(ty.spec().fixed <= MAX_FIXED_LEN, "{}", ty.spec().name);
            assert_eq!(FrameType::from_code(ty as u16), Some(ty));
        }
        let data_prefix = FrameType::ALL
            .iter()
            .filter(|t| t.spec().bulk == Bulk::Bytes)
            .map(|t| t.spec().fixed)
            .max();
        assert_eq!(data_prefix, Some(DATA_PREFIX_LEN));
    }

    #[test]
    fn wire_golden_ping_frame() {
        // The layout in the module docs, byte by byte, with an independent CRC.
        let mut expected = vec![0x89, b'T', b'W', b'R', 0x06, 0x01, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        let header_crc = bitwise_crc32c(&expected);
        expected.extend_from_slice(&header_crc.to_le_bytes());
        let crc = bitwise_crc32c(&expected);
        expected.extend_from_slice(&crc.to_le_bytes());
        let frame = encode(&Message::Ping {
            seq: 0x0102_0304_0506_0708,
        });
        assert_eq!(frame, expected);
        assert_eq!(frame.len(), FRAME_OVERHEAD);
    }

    #[test]
    fn wire_golden_data_frame() {
        let message = Message::Data {
            seq: 1,
            offset: 0x1000,
            epoch: 2,
            fua: true,
            flush: true,
            protocol: ReplicationProtocol::C,
            data: vec![0xee; 3].into(),
        };
        let mut payload = 0x1000u64.to_le_bytes().to_vec();
        payload.extend_from_slice(&2u64.to_le_bytes());
        payload.extend_from_slice(&[0xee; 3]);
        // FUA bit 0, flush bit 1, ack code 2 (protocol C) in bits 2-3.
        assert_eq!(encode(&message), raw_frame(0x0201, 0b1011, 1, &payload));
    }

    #[test]
    fn wire_streaming_one_byte_at_a_time() {
        let samples = samples();
        let stream: Vec<u8> = samples.iter().flat_map(encode).collect();
        assert_eq!(decode_in_pieces(&stream, &[1], MAX), Ok(samples));
    }

    #[test]
    fn wire_push_stops_at_the_end_of_a_frame() {
        let first = encode(&Message::Barrier { epoch: 1 });
        let second = encode(&Message::Ping { seq: 2 });
        let stream = [first.clone(), second].concat();
        let mut decoder = FrameDecoder::new(MAX);
        assert_eq!(decoder.push(&stream), first.len());
        // Nothing more is taken until the frame is collected.
        assert_eq!(decoder.push(&stream[first.len()..]), 0);
        assert!(!decoder.is_idle());
        assert_eq!(
            decoder.next_frame(),
            Ok(Some(Message::Barrier { epoch: 1 }))
        );
        assert!(decoder.is_idle());
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(
            decoder.push(&stream[first.len()..]),
            stream.len() - first.len()
        );
        assert_eq!(decoder.next_frame(), Ok(Some(Message::Ping { seq: 2 })));
    }

    #[test]
    fn wire_every_flipped_byte_is_refused() {
        for message in samples() {
            let frame = encode(&message);
            for at in 0..frame.len() {
                for flip in [0x01, 0x80, 0xff] {
                    let mut bad = frame.clone();
                    bad[at] ^= flip;
                    match decode(&bad, MAX) {
                        Err(WireError::BadMagic { .. }) => assert!(at < MAGIC.len()),
                        Err(WireError::BadChecksum { part, .. }) => {
                            let expected = if at < HEADER_LEN {
                                FramePart::Header
                            } else {
                                FramePart::Frame
                            };
                            assert_eq!(part, expected, "{} byte {at}", message.name());
                        }
                        other => panic!("{} byte {at} ^ {flip:#x}: {other:?}", message.name()),
                    }
                }
            }
        }
    }

    #[test]
    fn wire_bad_magic_is_seen_before_a_whole_header() {
        let mut decoder = FrameDecoder::new(MAX);
        // An HTTP probe sends fewer bytes than a header and then waits.
        let probe = b"GET / HTTP/1.0\r\n\r\n";
        assert!(probe.len() < HEADER_LEN);
        assert_eq!(decoder.push(probe), probe.len());
        let error = decoder.next_frame().unwrap_err();
        assert_eq!(
            error,
            WireError::BadMagic {
                found: b"GET ".to_vec()
            }
        );
        assert_eq!(
            error.to_string(),
            "replication frame has bad magic 47 45 54 20 (expected 89 54 57 52): the peer is not \
             twinsan replication, or the stream lost its framing"
        );
        // A refused stream stays refused.
        assert_eq!(decoder.push(&encode(&Message::Outdate)), 0);
        assert_eq!(decoder.next_frame(), Err(error));
        // One wrong byte is enough.
        let mut decoder = FrameDecoder::new(MAX);
        assert_eq!(decoder.push(&[0x89, b'X']), 2);
        assert_eq!(
            decoder.next_frame(),
            Err(WireError::BadMagic {
                found: vec![0x89, b'X']
            })
        );
    }

    #[test]
    fn wire_too_long_is_refused_from_the_header_alone() {
        for claimed in [MAX + 1, u32::MAX] {
            let frame = raw_frame(0x0201, 0, 1, &[]);
            let mut header = frame[..HEADER_LEN].to_vec();
            header[AT_LEN..AT_LEN + 4].copy_from_slice(&claimed.to_le_bytes());
            let crc = bitwise_crc32c(&header[..AT_HEADER_CRC]);
            header[AT_HEADER_CRC..].copy_from_slice(&crc.to_le_bytes());
            let mut decoder = FrameDecoder::new(MAX);
            assert_eq!(decoder.push(&header), HEADER_LEN);
            assert_eq!(
                decoder.next_frame(),
                Err(WireError::TooLong {
                    len: claimed,
                    max: MAX
                })
            );
            // Refused before anything was allocated for the payload.
            assert_eq!(decoder.tail.capacity(), 0);
        }
        let big = Message::Data {
            seq: 1,
            offset: 0,
            epoch: 0,
            fua: false,
            flush: false,
            protocol: ReplicationProtocol::A,
            data: vec![0; 4097].into(),
        };
        let frame = encode(&big);
        assert!(matches!(
            decode(&frame, 4096 + DATA_PREFIX_LEN as u32),
            Err(WireError::TooLong {
                len: 4113,
                max: 4112
            })
        ));
        assert_eq!(decode(&frame, max_payload_for(4097)), Ok(big));
    }

    #[test]
    fn wire_bitmap_chunk_claiming_huge_counts_is_bounded() {
        // The word count is the payload length / 8: a peer claiming 2^32 words must send a
        // 32 GiB payload length, which the limit refuses from the header.
        let mut header = raw_frame(0x0501, 0, 0, &[0; 8])[..HEADER_LEN].to_vec();
        let claimed = u32::MAX - 7;
        header[AT_LEN..AT_LEN + 4].copy_from_slice(&claimed.to_le_bytes());
        let crc = bitwise_crc32c(&header[..AT_HEADER_CRC]);
        header[AT_HEADER_CRC..].copy_from_slice(&crc.to_le_bytes());
        let mut decoder = FrameDecoder::new(MAX);
        decoder.push(&header);
        assert!(matches!(
            decoder.next_frame(),
            Err(WireError::TooLong { .. })
        ));

        let words = bitmap_words_per_chunk(MAX);
        let chunk = Message::BitmapChunk {
            first_word: 0,
            words: vec![u64::MAX; words],
            last: false,
        };
        assert_eq!(encode(&chunk).len(), MAX as usize + FRAME_OVERHEAD);
        assert_eq!(decode(&encode(&chunk), MAX), Ok(chunk));
    }

    #[test]
    fn wire_unknown_type_is_refused() {
        assert_eq!(
            decode(&raw_frame(0x7777, 0, 0, &[]), MAX),
            Err(WireError::UnknownType { code: 0x7777 })
        );
        assert_eq!(
            decode(&raw_frame(0, 0, 0, &[]), MAX),
            Err(WireError::UnknownType { code: 0 })
        );
    }

    #[test]
    fn wire_malformed_frames_with_good_checksums_are_refused() {
        let range = |offset: u64, len: u32| {
            [offset.to_le_bytes().to_vec(), len.to_le_bytes().to_vec()].concat()
        };
        // Header-level: undefined flags, a sequence number where none belongs, wrong lengths.
        assert_malformed(&raw_frame(0x0203, 1, 0, &[0; 8]), "undefined flags");
        assert_malformed(&raw_frame(0x0201, 1 << 5, 1, &[0; 16]), "undefined flags");
        assert_malformed(&raw_frame(0x0203, 0, 9, &[0; 8]), "sequence number 9");
        assert_malformed(&raw_frame(0x0203, 0, 0, &[0; 9]), "does not fit");
        assert_malformed(&raw_frame(0x0104, 0, 0, &[0]), "does not fit");
        assert_malformed(&raw_frame(0x0201, 0, 1, &[0; 15]), "does not fit");
        assert_malformed(&raw_frame(0x0501, 0, 0, &[0; 12]), "does not fit");
        assert_malformed(&raw_frame(0x0501, 0, 0, &[0; 7]), "does not fit");
        // Payload-level: reserved bytes, unknown codes, ranges beyond the last 64-bit offset.
        let mut hello = encode(&samples()[0])[HEADER_LEN..HEADER_LEN + 32].to_vec();
        hello[6] = 1;
        assert_malformed(&raw_frame(0x0001, 0, 0, &hello), "reserved byte");
        assert_malformed(&raw_frame(0x0103, 0, 0, &[2, 0, 0, 0]), "role code 2");
        assert_malformed(&raw_frame(0x0103, 0, 0, &[0, 7, 0, 0]), "disk state code 7");
        assert_malformed(
            &raw_frame(0x0103, 0, 0, &[0, 0, 8, 0]),
            "replication state code 8",
        );
        assert_malformed(&raw_frame(0x0103, 0, 0, &[0, 0, 0, 1]), "reserved byte");
        assert_malformed(&raw_frame(0x0108, 0, 0, &[0, 0]), "disconnect reason 0");
        assert_malformed(&raw_frame(0x0108, 0, 0, &[9, 0]), "disconnect reason 9");
        assert_malformed(&raw_frame(0x0201, 0b1100, 1, &[0; 16]), "ack code 3");
        assert_malformed(&raw_frame(0x0202, 0b1100, 1, &[0; 20]), "ack code 3");
        assert_malformed(
            &raw_frame(0x0401, 0, 0, &range(u64::MAX, 1)),
            "beyond the last 64-bit offset",
        );
        assert_malformed(
            &raw_frame(0x0301, 0, 1, &range(u64::MAX - 1, 2)),
            "beyond the last 64-bit offset",
        );
        let mut data = u64::MAX.to_le_bytes().to_vec();
        data.extend_from_slice(&[0; 9]);
        assert_malformed(
            &raw_frame(0x0402, 0, 0, &data),
            "beyond the last 64-bit offset",
        );
        let out_of_sync = [u64::MAX.to_le_bytes(), 1u64.to_le_bytes()].concat();
        assert_malformed(
            &raw_frame(0x0502, 0, 0, &out_of_sync),
            "beyond the last 64-bit offset",
        );
        let bitmap = [u64::MAX.to_le_bytes(), 0u64.to_le_bytes()].concat();
        assert_malformed(&raw_frame(0x0501, 0, 0, &bitmap), "past word 2^64");
        // A range whose end is still a 64-bit offset is accepted.
        assert_eq!(
            decode(&raw_frame(0x0401, 0, 0, &range(u64::MAX - 4096, 4096)), MAX),
            Ok(Message::ResyncRequest {
                offset: u64::MAX - 4096,
                len: 4096
            })
        );
    }

    #[test]
    fn wire_decode_wants_exactly_one_frame() {
        let frame = encode(&Message::Outdate);
        assert_eq!(
            decode(&frame[..frame.len() - 1], MAX),
            Err(WireError::Truncated {
                len: frame.len() - 1
            })
        );
        assert_eq!(decode(&[], MAX), Err(WireError::Truncated { len: 0 }));
        let two = [frame.clone(), frame.clone()].concat();
        assert_eq!(
            decode(&two, MAX),
            Err(WireError::TrailingBytes { extra: frame.len() })
        );
    }

    #[test]
    fn wire_error_messages_read_well() {
        let checksum = WireError::BadChecksum {
            part: FramePart::Frame,
            stored: 1,
            computed: 2,
        };
        assert_eq!(
            checksum.to_string(),
            "replication frame payload checksum mismatch: stored 0x00000001, computed 0x00000002"
        );
        assert_eq!(
            WireError::TooLong { len: 10, max: 5 }.to_string(),
            "replication frame payload of 10 bytes exceeds the limit of 5 bytes"
        );
        assert_eq!(
            WireError::UnknownType { code: 0x7777 }.to_string(),
            "replication frame type 0x7777 is unknown: the peer speaks another protocol"
        );
    }

    #[test]
    fn wire_display_never_shows_payload_bytes() {
        for message in samples() {
            let line = message.to_string();
            assert!(line.starts_with(message.name()), "{line}");
            assert!(
                !line.contains("[7, 7") && !line.contains("171, 171"),
                "{line}"
            );
        }
        let data = &samples()[13];
        assert_eq!(
            data.to_string(),
            "Data seq=5 offset=4096 len=256 epoch=3 fua=true flush=false protocol=C"
        );
    }

    #[test]
    fn wire_codes_round_trip() {
        for state in DiskState::ALL {
            assert_eq!(DiskState::from_code(state.code()), Some(state));
        }
        for state in ReplicationState::ALL {
            assert_eq!(ReplicationState::from_code(state.code()), Some(state));
        }
        for reason in DisconnectReason::ALL {
            assert_eq!(DisconnectReason::from_code(reason.code()), Some(reason));
        }
        assert_eq!(DiskState::from_code(7), None);
        assert_eq!(ReplicationState::from_code(8), None);
        assert_eq!(DisconnectReason::from_code(0), None);
    }

    // ---- authentication ----

    const VOLUME: u128 = 0xfeed_beef_0000_0000_0000_0000_0000_0001;

    fn config(node_id: u8, peer_node_id: u8, secret: &str) -> HandshakeConfig {
        HandshakeConfig {
            peer: format!("198.18.0.{}", peer_node_id + 1),
            node_id,
            peer_node_id,
            volume_uuid: VOLUME,
            cluster_id: cluster_id("alpha"),
            secret: SharedSecret::new(secret),
        }
    }

    type Outcome = Result<Authenticated, HandshakeError>;

    /// Runs two handshakes against each other in memory, delivering one message at a time and
    /// alternating sides (B's first message arrives after A's whole first flight).
    fn run(
        a: HandshakeConfig,
        a_nonce: [u8; 32],
        b: HandshakeConfig,
        b_nonce: [u8; 32],
    ) -> (Outcome, Outcome) {
        let (a, to_b) = Handshake::start(a, a_nonce);
        let (b, to_a) = Handshake::start(b, b_nonce);
        let mut sides = [
            (Some(a), None::<Outcome>, VecDeque::from(to_a)),
            (Some(b), None, VecDeque::from(to_b)),
        ];
        for _ in 0..20 {
            for me in 0..2 {
                let Some(message) = sides[me].2.pop_front() else {
                    continue;
                };
                let Some(state) = sides[me].0.take() else {
                    continue;
                };
                match state.receive(message) {
                    Ok(HandshakeStep::Continue { handshake, send }) => {
                        sides[me].0 = Some(handshake);
                        sides[1 - me].2.extend(send);
                    }
                    Ok(HandshakeStep::Done(done)) => sides[me].1 = Some(Ok(done)),
                    Err(error) => {
                        if let Some(reason) = error.disconnect_reason() {
                            sides[1 - me].2.push_back(Message::Disconnect { reason });
                        }
                        sides[me].1 = Some(Err(error));
                    }
                }
            }
        }
        let [(_, a, _), (_, b, _)] = sides;
        (a.expect("side A finished"), b.expect("side B finished"))
    }

    /// Node 1's Hello for volume `VOLUME` of cluster "alpha", byte for byte as the release before version ranges
    /// (b3ce254, protocol 2 only) encodes it: version 2, exact 32-byte payload, reserved bytes zero.
    const B3CE254_HELLO_FROM_1: [u8; 60] = [
        0x89, 0x54, 0x57, 0x52, 0x01, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, //
        0x00, 0x00, 0x00, 0x00, 0x5c, 0xc5, 0x97, 0x54, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
        0x00, //
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xef, 0xbe, 0xed,
        0xfe, //
        0x59, 0xa2, 0x28, 0x65, 0x25, 0xc9, 0x56, 0x47, 0xe0, 0x0d, 0x32, 0x5a,
    ];
    /// The challenge b3ce254 sends next: 32 random bytes (here 0x5a), no version announcement.
    const B3CE254_CHALLENGE: [u8; 60] = [
        0x89, 0x54, 0x57, 0x52, 0x02, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, //
        0x00, 0x00, 0x00, 0x00, 0xaf, 0xa5, 0x6f, 0x47, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
        0x5a, //
        0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
        0x5a, //
        0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0xc6, 0x5e, 0x93, 0x04,
    ];

    /// b3ce254 refuses any Hello but one of exactly these bytes (with its peer's node id); what this build sends
    /// first is that, and its challenge is 32 bytes like any nonce: the old node reads both as its own.
    #[test]
    fn versions_what_this_build_sends_first_is_what_the_previous_release_accepts() {
        let (_, [hello, challenge]) = AwaitingHello::start(config(1, 0, "s3cret"), [7; 32]);
        assert_eq!(encode(&hello), B3CE254_HELLO_FROM_1);
        let challenge = encode(&challenge);
        assert_eq!(challenge.len(), B3CE254_CHALLENGE.len());
        // Same header apart from its checksum; the nonce ends in the announcement of 2..=5.
        assert_eq!(challenge[..20], B3CE254_CHALLENGE[..20]);
        assert_eq!(
            challenge[24 + 20..24 + 32],
            [0xa5, b'T', b'W', b'R', b'v', b'e', b'r', b's', 2, 0, 5, 0]
        );
    }

    /// This build against b3ce254 (frames as it encodes them, answers with the MAC it computes): version 2,
    /// so online resize stays off.
    #[test]
    fn versions_new_and_previous_release_agree_on_2() {
        let hello = decode(&B3CE254_HELLO_FROM_1, MAX).unwrap();
        let challenge = decode(&B3CE254_CHALLENGE, MAX).unwrap();
        let Message::AuthChallenge { nonce: old_nonce } = challenge.clone() else {
            panic!("not a challenge")
        };
        let (us, [_, Message::AuthChallenge { nonce: our_nonce }]) =
            AwaitingHello::start(config(0, 1, "s3cret"), [1; 32])
        else {
            panic!("no challenge sent");
        };
        let (us, our_answer) = us.receive(hello).unwrap().receive(challenge).unwrap();
        // Our answer to its challenge is the MAC it checks (the MAC is b3ce254's: same inputs, same function).
        let expected = auth_response(
            &SharedSecret::new("s3cret"),
            &AuthContext {
                challenge: old_nonce,
                responder_nonce: our_nonce,
                challenger_node_id: 1,
                responder_node_id: 0,
                volume_uuid: VOLUME,
                cluster_id: cluster_id("alpha"),
            },
        );
        assert_eq!(our_answer, Message::AuthResponse { mac: expected });
        // The old node answers our challenge as it always did.
        let old_answer = auth_response(
            &SharedSecret::new("s3cret"),
            &AuthContext {
                challenge: our_nonce,
                responder_nonce: old_nonce,
                challenger_node_id: 0,
                responder_node_id: 1,
                volume_uuid: VOLUME,
                cluster_id: cluster_id("alpha"),
            },
        );
        let done = us
            .receive(Message::AuthResponse { mac: old_answer })
            .unwrap();
        assert_eq!(done.version.number(), 2);
        assert!(done.version.speaks(Feature::ReservationState));
        assert!(!done.version.speaks(Feature::OnlineResize));
    }

    /// Two nodes of this build speak 5; a node of the next release (3..=6, Hello with its lowest, 3) too;
    /// a peer with no version in common is refused with both ranges named.
    #[test]
    fn versions_new_with_new_next_and_no_overlap() {
        let (a, b) = run(
            config(0, 1, "s3cret"),
            [1; 32],
            config(1, 0, "s3cret"),
            [2; 32],
        );
        assert_eq!(a.unwrap().version.number(), 5);
        assert_eq!(b.unwrap().version.number(), 5);

        let peer = |min: u32, nonce: [u8; 32]| {
            let (us, ..) = AwaitingHello::start(config(0, 1, "s3cret"), [1; 32]);
            us.receive(Message::Hello {
                protocol_version: min,
                node_id: 1,
                volume_uuid: VOLUME,
                cluster_id: cluster_id("alpha"),
            })
            .unwrap()
            .receive(Message::AuthChallenge { nonce })
        };
        let next = VersionRange { min: 3, max: 6 };
        assert!(peer(3, announce_versions([9; 32], next)).is_ok());
        let far = VersionRange { min: 6, max: 7 };
        let error = peer(6, announce_versions([9; 32], far)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "replication peer 198.18.0.2 speaks protocol versions 6..=7, this node speaks 2..=5: no \
             version in common; a release talks only to the release before it, upgrade one step at \
             a time (docs/upgrade.md)"
        );
        assert_eq!(
            error.disconnect_reason(),
            Some(DisconnectReason::Incompatible)
        );
        // A release before ranges that speaks 1 only.
        let error = peer(1, [9; 32]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("speaks protocol versions 1, this node speaks 2..=5"),
            "{error}"
        );
        // An announcement that contradicts the Hello is refused too.
        let error = peer(2, announce_versions([9; 32], next)).unwrap_err();
        assert!(
            error.to_string().contains("speaks protocol versions 3..=6"),
            "{error}"
        );
    }

    #[test]
    fn wire_handshake_happy_path_both_directions() {
        let (a, b) = run(
            config(0, 1, "s3cret"),
            [1; 32],
            config(1, 0, "s3cret"),
            [2; 32],
        );
        assert_eq!(
            a,
            Ok(Authenticated {
                peer: "198.18.0.2".into(),
                peer_node_id: 1,
                version: ProtocolVersion::negotiate(&PROTOCOL_VERSIONS, &PROTOCOL_VERSIONS)
                    .unwrap(),
            })
        );
        assert_eq!(
            b.as_ref()
                .map(|b| (b.peer.as_str(), b.peer_node_id, b.version.number())),
            Ok(("198.18.0.1", 0, 5))
        );
        // The other node starting first changes nothing.
        let (b, a) = run(
            config(1, 0, "s3cret"),
            [2; 32],
            config(0, 1, "s3cret"),
            [1; 32],
        );
        assert!(a.is_ok() && b.is_ok());
    }

    #[test]
    fn wire_handshake_wrong_secret() {
        let (a, b) = run(
            config(0, 1, "s3cret"),
            [1; 32],
            config(1, 0, "guess"),
            [2; 32],
        );
        let a = a.unwrap_err();
        assert_eq!(
            a.to_string(),
            "replication peer 198.18.0.2 failed authentication: wrong shared secret"
        );
        assert_eq!(a.disconnect_reason(), Some(DisconnectReason::AuthFailed));
        assert!(matches!(b, Err(HandshakeError::WrongSecret { .. })));
    }

    #[test]
    fn wire_handshake_reflected_nonce() {
        // A peer that sends our nonce back wants us to compute the answer it owes us.
        let (a, ..) = AwaitingHello::start(config(0, 1, "s3cret"), [1; 32]);
        let a = a
            .receive(Message::Hello {
                protocol_version: PROTOCOL_VERSIONS.min,
                node_id: 1,
                volume_uuid: VOLUME,
                cluster_id: cluster_id("alpha"),
            })
            .unwrap();
        let error = a
            .receive(Message::AuthChallenge {
                nonce: announce_versions([1; 32], PROTOCOL_VERSIONS),
            })
            .unwrap_err();
        assert_eq!(
            error,
            HandshakeError::ReflectedChallenge {
                peer: "198.18.0.2".into()
            }
        );
        assert!(error.to_string().contains("reflection attack"));
    }

    #[test]
    fn wire_handshake_reflection_across_connections_fails() {
        // The attacker opens a second connection to A and presents A's first nonce as its own
        // challenge; A's answer there is computed as responder, so it does not pass as the
        // peer's answer on the first connection.
        let secret = SharedSecret::new("s3cret");
        let a_nonce = announce_versions([1; 32], PROTOCOL_VERSIONS);
        let attacker_nonce = [3; 32];
        let (first, ..) = AwaitingHello::start(config(0, 1, "s3cret"), a_nonce);
        let hello_from_b = Message::Hello {
            protocol_version: PROTOCOL_VERSIONS.min,
            node_id: 1,
            volume_uuid: VOLUME,
            cluster_id: cluster_id("alpha"),
        };
        let (first, _) = first
            .receive(hello_from_b.clone())
            .unwrap()
            .receive(Message::AuthChallenge {
                nonce: attacker_nonce,
            })
            .unwrap();
        let (second, ..) = AwaitingHello::start(config(0, 1, "s3cret"), [4; 32]);
        let (_, Message::AuthResponse { mac: harvested }) = second
            .receive(hello_from_b)
            .unwrap()
            .receive(Message::AuthChallenge { nonce: a_nonce })
            .unwrap()
        else {
            panic!("an answer was expected");
        };
        assert_eq!(
            first.receive(Message::AuthResponse { mac: harvested }),
            Err(HandshakeError::WrongSecret {
                peer: "198.18.0.2".into()
            })
        );
        // What A expected instead is the MAC with B as responder.
        let expected = AuthContext {
            challenge: a_nonce,
            responder_nonce: attacker_nonce,
            challenger_node_id: 0,
            responder_node_id: 1,
            volume_uuid: VOLUME,
            cluster_id: cluster_id("alpha"),
        };
        assert!(!verify_auth(&secret, &expected, &harvested));
    }

    #[test]
    fn wire_handshake_refuses_incompatible_peers() {
        let mut other_version = config(1, 0, "s3cret");
        other_version.secret = SharedSecret::new("s3cret");
        let hello = |version: u32, node_id: u8, volume: u128, cluster: u64| Message::Hello {
            protocol_version: version,
            node_id,
            volume_uuid: volume,
            cluster_id: cluster,
        };
        let alpha = cluster_id("alpha");
        let cases = [
            (
                hello(PROTOCOL_VERSIONS.min, 1, VOLUME, cluster_id("beta")),
                "belongs to another cluster",
            ),
            (
                hello(PROTOCOL_VERSIONS.min, 1, VOLUME + 1, alpha),
                "holds volume feedbeef000000000000000000000002, not \
                 feedbeef000000000000000000000001",
            ),
            (
                hello(PROTOCOL_VERSIONS.min, 0, VOLUME, alpha),
                "replication peer 198.18.0.2 claims node id 0, this node's own",
            ),
            (
                hello(PROTOCOL_VERSIONS.min, 5, VOLUME, alpha),
                "claims node id 5, but the configuration gives it 1",
            ),
        ];
        for (message, text) in cases {
            let (a, ..) = AwaitingHello::start(config(0, 1, "s3cret"), [1; 32]);
            let error = a.receive(message).unwrap_err();
            assert!(error.to_string().contains(text), "{error}");
            assert_eq!(
                error.disconnect_reason(),
                Some(DisconnectReason::Incompatible)
            );
        }
        // Whole handshakes: each side refuses the other.
        let mut b = config(1, 0, "s3cret");
        b.volume_uuid = VOLUME + 1;
        let (a, b) = run(config(0, 1, "s3cret"), [1; 32], b, [2; 32]);
        assert!(matches!(a, Err(HandshakeError::VolumeMismatch { .. })));
        assert!(matches!(b, Err(HandshakeError::VolumeMismatch { .. })));
        let (a, b) = run(
            config(0, 1, "s3cret"),
            [1; 32],
            config(0, 1, "s3cret"),
            [2; 32],
        );
        assert!(matches!(
            a,
            Err(HandshakeError::SameNodeId { node_id: 0, .. })
        ));
        assert!(matches!(b, Err(HandshakeError::SameNodeId { .. })));
    }

    #[test]
    fn wire_handshake_out_of_order_and_disconnect() {
        let (a, ..) = Handshake::start(config(0, 1, "s3cret"), [1; 32]);
        let error = a.receive(Message::Ping { seq: 1 }).unwrap_err();
        assert_eq!(
            error.to_string(),
            "replication peer 198.18.0.2 broke the handshake: it sent Ping where Hello belongs"
        );
        assert_eq!(
            error.disconnect_reason(),
            Some(DisconnectReason::ProtocolError)
        );
        let (a, ..) = Handshake::start(config(0, 1, "s3cret"), [1; 32]);
        let error = a
            .receive(Message::Disconnect {
                reason: DisconnectReason::AuthFailed,
            })
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "replication peer 198.18.0.2 closed the connection during the handshake: the peer \
             says this node failed authentication"
        );
        assert_eq!(error.disconnect_reason(), None);
        // Data before authentication is refused, whatever it carries.
        let (a, ..) = AwaitingHello::start(config(0, 1, "s3cret"), [1; 32]);
        let a = a
            .receive(Message::Hello {
                protocol_version: PROTOCOL_VERSIONS.min,
                node_id: 1,
                volume_uuid: VOLUME,
                cluster_id: cluster_id("alpha"),
            })
            .unwrap();
        let (a, _) = a
            .receive(Message::AuthChallenge { nonce: [2; 32] })
            .unwrap();
        assert!(matches!(
            a.receive(Message::Outdate),
            Err(HandshakeError::Unexpected {
                expected: "AuthResponse",
                got: "Outdate",
                ..
            })
        ));
    }

    #[test]
    fn wire_auth_response_covers_every_field() {
        let secret = SharedSecret::new("s3cret");
        let base = AuthContext {
            challenge: [1; 32],
            responder_nonce: [2; 32],
            challenger_node_id: 0,
            responder_node_id: 1,
            volume_uuid: VOLUME,
            cluster_id: 7,
        };
        let mac = auth_response(&secret, &base);
        assert_eq!(mac, auth_response(&secret, &base), "deterministic");
        assert!(verify_auth(&secret, &base, &mac));
        assert!(!verify_auth(&secret, &base, &mac[..31]), "truncated");
        assert!(!verify_auth(&SharedSecret::new("s3cret "), &base, &mac));
        let variants = [
            AuthContext {
                challenge: [9; 32],
                ..base
            },
            AuthContext {
                responder_nonce: [9; 32],
                ..base
            },
            AuthContext {
                challenger_node_id: 1,
                responder_node_id: 0,
                ..base
            },
            AuthContext {
                responder_node_id: 2,
                ..base
            },
            AuthContext {
                volume_uuid: VOLUME + 1,
                ..base
            },
            AuthContext {
                cluster_id: 8,
                ..base
            },
        ];
        for context in variants {
            assert_ne!(auth_response(&secret, &context), mac, "{context:?}");
            assert!(!verify_auth(&secret, &context, &mac));
        }
    }

    #[test]
    fn wire_secret_never_shows_in_debug() {
        let config = config(0, 1, "hunter2-very-secret");
        assert_eq!(format!("{:?}", config.secret), "SharedSecret(<hidden>)");
        let (state, _) = Handshake::start(config, [1; 32]);
        let debug = format!("{state:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        let bytes = format!("{:?}", b"hunter2-very-secret".to_vec());
        assert!(!debug.contains(&bytes[1..20]), "{debug}");
    }

    #[test]
    fn wire_cluster_id_depends_on_the_name() {
        assert_eq!(cluster_id("alpha"), cluster_id("alpha"));
        assert_ne!(cluster_id("alpha"), cluster_id("alpha "));
        assert_ne!(cluster_id(""), cluster_id("beta"));
    }

    // ---- property tests ----

    fn range() -> impl Strategy<Value = (u64, u32)> {
        (any::<u32>(), any::<u64>())
            .prop_map(|(len, offset)| (offset.min(u64::MAX - u64::from(len)), len))
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..600)
    }

    fn protocol() -> impl Strategy<Value = ReplicationProtocol> {
        prop::sample::select(ReplicationProtocol::ALL.to_vec())
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let ids = any::<[u64; 4]>().prop_map(|[current, bitmap, h0, h1]| GenerationIds {
            current,
            bitmap,
            history: [h0, h1],
        });
        let flags =
            any::<[bool; 3]>().prop_map(|[consistent, crashed_primary, discard_my_data]| Flags {
                consistent,
                crashed_primary,
                discard_my_data,
            });
        let role = prop::sample::select(vec![Role::Primary, Role::Secondary]);
        prop_oneof![
            (any::<u32>(), any::<u8>(), any::<u128>(), any::<u64>()).prop_map(|(v, n, u, c)| {
                Message::Hello {
                    protocol_version: v,
                    node_id: n,
                    volume_uuid: u,
                    cluster_id: c,
                }
            }),
            any::<[u8; 32]>().prop_map(|nonce| Message::AuthChallenge { nonce }),
            any::<[u8; 32]>().prop_map(|mac| Message::AuthResponse { mac }),
            (ids, flags, any::<bool>(), any::<u64>()).prop_map(
                |(ids, flags, skip_initial_sync, bitmap_weight)| {
                    Message::Uuids {
                        ids,
                        flags,
                        skip_initial_sync,
                        bitmap_weight,
                    }
                }
            ),
            (any::<u64>(), any::<u32>()).prop_map(|(data_size, max_request)| Message::Sizes {
                data_size,
                max_request
            }),
            (
                role,
                prop::sample::select(DiskState::ALL.to_vec()),
                prop::sample::select(ReplicationState::ALL.to_vec())
            )
                .prop_map(|(role, disk, replication)| Message::State {
                    role,
                    disk,
                    replication
                }),
            Just(Message::Outdate),
            Just(Message::OutdateAck),
            Just(Message::PromoteRequest),
            any::<bool>().prop_map(|granted| Message::PromoteReply { granted }),
            any::<u64>().prop_map(|seq| Message::Ping { seq }),
            any::<u64>().prop_map(|seq| Message::PingAck { seq }),
            prop::sample::select(DisconnectReason::ALL.to_vec())
                .prop_map(|reason| Message::Disconnect { reason }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<[bool; 2]>(),
                protocol(),
                bytes()
            )
                .prop_map(|(seq, offset, epoch, [fua, flush], protocol, data)| {
                    Message::Data {
                        seq,
                        offset: offset.min(u64::MAX - data.len() as u64),
                        epoch,
                        fua,
                        flush,
                        protocol,
                        data: data.into(),
                    }
                }),
            (
                any::<u64>(),
                range(),
                any::<u64>(),
                any::<bool>(),
                protocol()
            )
                .prop_map(|(seq, (offset, len), epoch, unmap, protocol)| {
                    Message::WriteZeroes {
                        seq,
                        offset,
                        len,
                        epoch,
                        unmap,
                        protocol,
                    }
                }),
            any::<u64>().prop_map(|epoch| Message::Barrier { epoch }),
            (any::<u64>(), any::<u32>())
                .prop_map(|(epoch, writes)| Message::BarrierAck { epoch, writes }),
            any::<u64>().prop_map(|seq| Message::RecvAck { seq }),
            any::<u64>().prop_map(|seq| Message::WriteAck { seq }),
            any::<u64>().prop_map(|seq| Message::NegAck { seq }),
            (any::<u64>(), range()).prop_map(|(seq, (offset, len))| Message::ReadRequest {
                seq,
                offset,
                len
            }),
            (any::<u64>(), bytes()).prop_map(|(seq, data)| Message::ReadReply { seq, data }),
            (
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..=RESERVATIONS_CAPACITY)
            )
                .prop_map(|(seq, data)| Message::Reservations { seq, data }),
            any::<u64>().prop_map(|seq| Message::ReservationsAck { seq }),
            (any::<u64>(), any::<bool>(), any::<bool>()).prop_map(|(size, exact, assume_clean)| {
                Message::ResizeRequest {
                    size,
                    exact,
                    assume_clean,
                }
            }),
            (any::<u64>(), proptest::option::of("[a-z ]{1,40}"))
                .prop_map(|(size, refusal)| Message::ResizeReply { size, refusal }),
            any::<u64>().prop_map(|seq| Message::ReadFailed { seq }),
            range().prop_map(|(offset, len)| Message::ResyncRequest { offset, len }),
            (any::<u64>(), bytes()).prop_map(|(offset, data)| Message::ResyncData {
                offset: offset.min(u64::MAX - data.len() as u64),
                data
            }),
            range().prop_map(|(offset, len)| Message::ResyncAck { offset, len }),
            range().prop_map(|(offset, len)| Message::ResyncFailed { offset, len }),
            (range(), any::<[u8; 32]>()).prop_map(|((offset, len), digest)| {
                Message::ChecksumResyncRequest {
                    offset,
                    len,
                    digest,
                }
            }),
            range().prop_map(|(offset, len)| Message::InSync { offset, len }),
            range().prop_map(|(offset, len)| Message::VerifyRequest { offset, len }),
            (range(), any::<[u8; 32]>()).prop_map(|((offset, len), digest)| Message::VerifyReply {
                offset,
                len,
                digest
            }),
            (range(), any::<bool>()).prop_map(|((offset, len), in_sync)| Message::VerifyResult {
                offset,
                len,
                in_sync
            }),
            (
                any::<u64>(),
                prop::collection::vec(any::<u64>(), 0..80),
                any::<bool>()
            )
                .prop_map(|(first_word, words, last)| {
                    Message::BitmapChunk {
                        first_word: first_word.min(u64::MAX - words.len() as u64),
                        words,
                        last,
                    }
                }),
            (any::<u64>(), any::<u64>()).prop_map(|(len, offset)| Message::OutOfSync {
                offset: offset.min(u64::MAX - len),
                len
            }),
        ]
    }

    /// The fuzz target (fuzz/fuzz_targets/repl_frame.rs), run here too: byte 0 steers, bit 0
    /// seals the rest into a frame with valid checksums, bits 1..8 pick the push size.
    fn fuzz_run(data: &[u8]) -> usize {
        let Some((&steer, rest)) = data.split_first() else {
            return 0;
        };
        let stream = if steer & 1 != 0 {
            let byte = |i: usize| rest.get(i).copied().unwrap_or(0);
            let code = FrameType::ALL[usize::from(byte(0)) % FrameType::ALL.len()] as u16;
            let seq = match byte(3) {
                s if s % 2 == 0 => 0,
                s => (u64::from(s) << 40) | u64::from(s),
            };
            let flags = u16::from_le_bytes([byte(1), byte(2)]);
            raw_frame(code, flags, seq, rest.get(4..).unwrap_or(&[]))
        } else {
            rest.to_vec()
        };
        let piece = match usize::from(steer >> 1) {
            0 => usize::MAX,
            n => n,
        };
        fuzz_check_in_place(&stream, piece);
        fuzz_check_stream(&stream, piece)
    }

    /// The fuzz target's check, plus the number of frames it decoded (for the tests).
    fn fuzz_check_stream(stream: &[u8], piece: usize) -> usize {
        const MAX_PAYLOAD: u32 = 4096;
        let mut decoder = FrameDecoder::new(MAX_PAYLOAD);
        let mut consumed = 0;
        let mut frame_start = 0;
        let mut frames = 0;
        while consumed < stream.len() {
            let offered = &stream[consumed..stream.len().min(consumed.saturating_add(piece))];
            let used = decoder.push(offered);
            assert!(used <= offered.len());
            consumed += used;
            match decoder.next_frame() {
                Ok(Some(message)) => {
                    let frame = &stream[frame_start..consumed];
                    assert!(frame.len() <= MAX_PAYLOAD as usize + FRAME_OVERHEAD);
                    assert_eq!(
                        encode(&message),
                        frame,
                        "decode then encode must give the same bytes"
                    );
                    assert_eq!(decode(frame, MAX_PAYLOAD), Ok(message));
                    assert!(decoder.is_idle());
                    frame_start = consumed;
                    frames += 1;
                }
                Ok(None) => assert_eq!(used, offered.len()),
                Err(error) => {
                    assert_eq!(decoder.push(&stream[consumed..]), 0);
                    assert_eq!(decoder.next_frame(), Err(error));
                    return frames;
                }
            }
        }
        frames
    }

    /// The fuzz target's second check: [`FrameDecoder::push_in_place`] on the same pieces gives what `push`
    /// gives (the same messages, then the same error if any), holding at most a frame and a piece.
    fn fuzz_check_in_place(stream: &[u8], piece: usize) {
        const MAX_PAYLOAD: u32 = 4096;
        let pieces = || stream.chunks(piece.min(stream.len()).max(1));
        let mut copied = FrameDecoder::new(MAX_PAYLOAD);
        let mut expected = Vec::new();
        let mut expected_error = None;
        'copied: for mut chunk in pieces() {
            loop {
                let used = copied.push(chunk);
                chunk = &chunk[used..];
                match copied.next_frame() {
                    Ok(Some(message)) => expected.push(message),
                    Ok(None) => break,
                    Err(error) => {
                        expected_error = Some(error);
                        break 'copied;
                    }
                }
            }
        }
        let mut decoder = FrameDecoder::new(MAX_PAYLOAD);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut got_error = None;
        'pieces: for chunk in pieces() {
            buf.extend_from_slice(chunk);
            loop {
                decoder.push_in_place(&mut buf);
                match decoder.next_frame() {
                    Ok(Some(message)) => got.push(message),
                    Ok(None) => break,
                    Err(error) => {
                        got_error = Some(error);
                        break 'pieces;
                    }
                }
            }
            assert!(buf.len() <= MAX_PAYLOAD as usize + chunk.len());
        }
        assert_eq!(got, expected);
        assert_eq!(got_error, expected_error);
    }

    #[test]
    fn wire_fuzz_check_accepts_valid_streams() {
        // The fuzz check must pass on good input, or it would only ever see errors.
        let samples = samples();
        let stream: Vec<u8> = samples.iter().flat_map(encode).collect();
        for piece in [1, 7, 64, usize::MAX] {
            assert_eq!(fuzz_check_stream(&stream, piece), samples.len());
            fuzz_check_in_place(&stream, piece);
        }
        let ping = FrameType::ALL
            .iter()
            .position(|t| *t == FrameType::Ping)
            .unwrap() as u8;
        // Sealed (bit 0), pushed 2 bytes at a time; type Ping, no flags, odd sequence number.
        assert_eq!(fuzz_run(&[0b101, ping, 0, 0, 3]), 1);
        assert_eq!(fuzz_run(&[0b101, ping, 1, 0, 3]), 0, "undefined flag");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn wire_prop_round_trip(message in arb_message()) {
            let frame = encode(&message);
            prop_assert_eq!(frame.len(), message.frame_len());
            prop_assert_eq!(decode(&frame, MAX), Ok(message.clone()));
            let mut appended = vec![0xaa; 3];
            encode_into(&message, &mut appended);
            prop_assert_eq!(&appended[3..], &frame[..]);
            let mut split = vec![0xaa; 3];
            if let Some((at, data)) = encode_split(message, &mut split) {
                split.splice(at..at, data.iter().copied());
            }
            prop_assert_eq!(&split[3..], &frame[..]);
        }

        #[test]
        fn wire_prop_stream_in_random_splits(
            messages in prop::collection::vec(arb_message(), 1..8),
            sizes in prop::collection::vec(1usize..97, 1..16),
        ) {
            let stream: Vec<u8> = messages.iter().flat_map(encode).collect();
            prop_assert_eq!(decode_in_pieces(&stream, &sizes, MAX), Ok(messages.clone()));
            prop_assert_eq!(decode_in_place_pieces(&stream, &sizes, MAX), Ok(messages));
        }

        #[test]
        fn wire_prop_flipped_byte_is_refused(
            message in arb_message(),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut frame = encode(&message);
            let at = at.index(frame.len());
            frame[at] ^= flip;
            let result = decode(&frame, MAX);
            prop_assert!(
                matches!(result, Err(WireError::BadMagic { .. }) | Err(WireError::BadChecksum { .. })),
                "byte {} ^ {:#x}: {:?}", at, flip, result
            );
        }

        #[test]
        fn wire_prop_random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
            fuzz_run(&data);
        }

        #[test]
        fn wire_prop_random_frames_never_panic(
            ty in prop::sample::select(FrameType::ALL.to_vec()),
            code in prop_oneof![3 => Just(None), 1 => any::<u16>().prop_map(Some)],
            flags in prop_oneof![Just(0u16), 0u16..32, any::<u16>()],
            seq in prop::sample::select(vec![0u64, 1, u64::MAX]),
            extra in prop_oneof![Just(0usize), 0usize..24],
            filler in any::<u8>(),
            noise in prop::collection::vec(any::<u8>(), 0..MAX_FIXED_LEN + 24),
        ) {
            // Valid checksums around random contents of about the right length reach the
            // payload parser; whatever it accepts must be canonical.
            let len = ty.spec().fixed + extra;
            let payload: Vec<u8> = (0..len)
                .map(|i| noise.get(i).copied().unwrap_or(filler))
                .collect();
            let frame = raw_frame(code.unwrap_or(ty as u16), flags, seq, &payload);
            if let Ok(message) = decode(&frame, MAX) {
                prop_assert_eq!(&encode(&message), &frame);
            }
            fuzz_check_stream(&frame, 5);
        }
    }
}
