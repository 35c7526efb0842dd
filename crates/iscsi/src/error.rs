//! Errors of the iSCSI core. Each carries the code it puts on the wire, so answering it is one match.

use thiserror::Error;

/// Reject PDU reason codes (RFC 7143 section 11.17.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    /// The PDU's data digest did not match.
    DataDigest = 0x02,
    /// SNACK not supported at this ErrorRecoveryLevel.
    SnackReject = 0x03,
    /// A protocol rule was broken.
    ProtocolError = 0x04,
    /// A command or function the target does not support.
    CommandNotSupported = 0x05,
    /// An immediate command arrived that cannot be queued now.
    ImmediateCommandReject = 0x06,
    /// Task in progress.
    TaskInProgress = 0x07,
    /// Data-ACK not valid.
    InvalidDataAck = 0x08,
    /// A header field is invalid.
    InvalidPduField = 0x09,
    /// The target cannot allocate what the PDU needs.
    LongOperationReject = 0x0a,
    /// Negotiation reset (deprecated).
    NegotiationReset = 0x0b,
    /// Waiting for the initiator to log out.
    WaitingForLogout = 0x0c,
}

/// Something in the byte stream or a PDU that the target refuses.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// The header digest did not match: at ErrorRecoveryLevel 0 the connection is dropped.
    #[error("header digest mismatch (received {received:#010x}, computed {computed:#010x})")]
    HeaderDigest { received: u32, computed: u32 },
    /// The data digest did not match: the PDU is rejected and discarded.
    #[error("data digest mismatch (received {received:#010x}, computed {computed:#010x})")]
    DataDigest { received: u32, computed: u32 },
    /// The data segment is larger than the MaxRecvDataSegmentLength this side declared.
    #[error("data segment of {len} bytes exceeds MaxRecvDataSegmentLength {max}")]
    SegmentTooLong { len: u32, max: u32 },
    /// The Additional Header Segments are longer than this target accepts.
    #[error("additional header segments of {len} bytes exceed the limit of {max}")]
    AhsTooLong { len: u32, max: u32 },
    /// An opcode no initiator may send.
    #[error("unknown or target-only opcode {0:#04x}")]
    UnknownOpcode(u8),
    /// A field holds a value the protocol forbids.
    #[error("invalid {field}: {why}")]
    InvalidField {
        field: &'static str,
        why: &'static str,
    },
    /// A text segment is malformed.
    #[error("malformed text segment: {0}")]
    Text(#[from] crate::text::TextError),
}

impl ProtocolError {
    /// The Reject reason this error is answered with, or None when the connection must simply be dropped.
    pub fn reject_reason(&self) -> Option<RejectReason> {
        match self {
            ProtocolError::HeaderDigest { .. } => None,
            ProtocolError::DataDigest { .. } => Some(RejectReason::DataDigest),
            ProtocolError::SegmentTooLong { .. } | ProtocolError::AhsTooLong { .. } => {
                Some(RejectReason::ProtocolError)
            }
            ProtocolError::UnknownOpcode(_) => Some(RejectReason::CommandNotSupported),
            ProtocolError::InvalidField { .. } => Some(RejectReason::InvalidPduField),
            ProtocolError::Text(_) => Some(RejectReason::ProtocolError),
        }
    }
}

/// Login Response status: class in the high byte, detail in the low byte (RFC 7143 section 11.13.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[repr(u16)]
pub enum LoginStatus {
    #[error("success")]
    Success = 0x0000,
    #[error("target moved temporarily")]
    TargetMovedTemporarily = 0x0101,
    #[error("target moved permanently")]
    TargetMovedPermanently = 0x0102,
    #[error("initiator error")]
    InitiatorError = 0x0200,
    #[error("authentication failed")]
    AuthenticationFailure = 0x0201,
    #[error("initiator not authorized for this target")]
    AuthorizationFailure = 0x0202,
    #[error("target not found")]
    NotFound = 0x0203,
    #[error("target removed")]
    TargetRemoved = 0x0204,
    #[error("unsupported iSCSI version")]
    UnsupportedVersion = 0x0205,
    #[error("too many connections")]
    TooManyConnections = 0x0206,
    #[error("missing parameter")]
    MissingParameter = 0x0207,
    #[error("cannot include connection in session")]
    CannotIncludeInSession = 0x0208,
    #[error("session type not supported")]
    SessionTypeNotSupported = 0x0209,
    #[error("session does not exist")]
    SessionDoesNotExist = 0x020a,
    #[error("invalid request during login")]
    InvalidDuringLogin = 0x020b,
    #[error("target error")]
    TargetError = 0x0300,
    #[error("service unavailable")]
    ServiceUnavailable = 0x0301,
    #[error("out of resources")]
    OutOfResources = 0x0302,
}

impl LoginStatus {
    /// Status-Class byte.
    pub fn class(self) -> u8 {
        (self as u16 >> 8) as u8
    }
    /// Status-Detail byte.
    pub fn detail(self) -> u8 {
        (self as u16 & 0xff) as u8
    }
}
