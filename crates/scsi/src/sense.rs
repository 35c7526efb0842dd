//! Sense data (SPC-4 4.5): what a CHECK CONDITION tells the initiator.
//!
//! [`Sense`] is the crate's error type: decoding and execution fail with the exact key / ASC / ASCQ that goes on
//! the wire, so turning an error into a response is [`Sense::to_bytes`] and nothing else.

use std::fmt;

/// Sense key (SPC-4 table 45): the broad class of a CHECK CONDITION.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SenseKey {
    /// No error to report (REQUEST SENSE with nothing pending).
    NoSense = 0x0,
    /// The command completed after recovery.
    RecoveredError = 0x1,
    /// The logical unit can not be accessed now.
    NotReady = 0x2,
    /// A flaw in the medium or the data on it.
    MediumError = 0x3,
    /// A non-recoverable device failure.
    HardwareError = 0x4,
    /// The command or its parameters are not acceptable.
    IllegalRequest = 0x5,
    /// Something changed (reset, capacity, reservations) since the initiator last looked.
    UnitAttention = 0x6,
    /// The medium is write protected (or read protected).
    DataProtect = 0x7,
    /// Blank or non-blank medium where the other was expected.
    BlankCheck = 0x8,
    /// Vendor specific condition.
    VendorSpecific = 0x9,
    /// EXTENDED COPY aborted.
    CopyAborted = 0xA,
    /// The device server aborted the command; the initiator may retry.
    AbortedCommand = 0xB,
    /// A buffered device reached end of partition.
    VolumeOverflow = 0xD,
    /// Source data did not match the medium (VERIFY, COMPARE AND WRITE).
    Miscompare = 0xE,
    /// A command completed with sense data to report.
    Completed = 0xF,
}

/// Where in the CDB (or parameter list) the offending field is: the sense-key specific field of an ILLEGAL
/// REQUEST, sent with SKSV set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FieldPointer {
    /// `true` when the field is in the CDB, `false` when it is in the parameter list (Data-Out).
    pub in_cdb: bool,
    /// Byte offset of the field (its most significant byte).
    pub byte: u16,
    /// Bit (0..=7) of the field's most significant bit within `byte`.
    pub bit: u8,
}

/// One piece of sense data: key, additional sense code and qualifier, plus the optional INFORMATION field and
/// field pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("sense key {key:?}, ASC/ASCQ {asc:#04x}/{ascq:#04x}")]
pub struct Sense {
    /// Sense key.
    pub key: SenseKey,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// INFORMATION field (e.g. the miscompare offset); sent with VALID set.
    pub information: Option<u64>,
    /// Sense-key specific field pointer (ILLEGAL REQUEST only); sent with SKSV set.
    pub field_pointer: Option<FieldPointer>,
}

/// Length of fixed-format sense data as this crate renders it.
pub const FIXED_SENSE_LEN: usize = 18;

impl Sense {
    /// Sense data with no INFORMATION field and no field pointer.
    pub const fn new(key: SenseKey, asc: u8, ascq: u8) -> Self {
        Self {
            key,
            asc,
            ascq,
            information: None,
            field_pointer: None,
        }
    }

    /// NO SENSE / NO ADDITIONAL SENSE INFORMATION: REQUEST SENSE with nothing to report.
    pub const fn no_sense() -> Self {
        Self::new(SenseKey::NoSense, 0x00, 0x00)
    }

    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE (20h/00h): an opcode or service action we do not implement.
    pub const fn invalid_opcode() -> Self {
        Self::new(SenseKey::IllegalRequest, 0x20, 0x00)
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB (24h/00h), pointing at `bit` of CDB byte `byte`.
    pub const fn invalid_field_in_cdb(byte: u16, bit: u8) -> Self {
        let mut s = Self::new(SenseKey::IllegalRequest, 0x24, 0x00);
        s.field_pointer = Some(FieldPointer {
            in_cdb: true,
            byte,
            bit: bit & 7,
        });
        s
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST (26h/00h), pointing into the Data-Out buffer.
    pub const fn invalid_field_in_parameter_list(byte: u16, bit: u8) -> Self {
        let mut s = Self::new(SenseKey::IllegalRequest, 0x26, 0x00);
        s.field_pointer = Some(FieldPointer {
            in_cdb: false,
            byte,
            bit: bit & 7,
        });
        s
    }

    /// ILLEGAL REQUEST / PARAMETER LIST LENGTH ERROR (1Ah/00h).
    pub const fn parameter_list_length_error() -> Self {
        Self::new(SenseKey::IllegalRequest, 0x1A, 0x00)
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN INFORMATION UNIT (0Eh/03h): the initiator sent less Data-Out than the
    /// CDB asks for (iSCSI expected data transfer length too small).
    pub const fn invalid_field_in_information_unit() -> Self {
        Self::new(SenseKey::IllegalRequest, 0x0E, 0x03)
    }

    /// ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE (21h/00h).
    pub const fn lba_out_of_range() -> Self {
        Self::new(SenseKey::IllegalRequest, 0x21, 0x00)
    }

    /// ILLEGAL REQUEST / LOGICAL UNIT NOT SUPPORTED (25h/00h): the addressed LUN does not exist.
    pub const fn lun_not_supported() -> Self {
        Self::new(SenseKey::IllegalRequest, 0x25, 0x00)
    }

    /// ILLEGAL REQUEST / SAVING PARAMETERS NOT SUPPORTED (39h/00h): MODE SENSE of saved values.
    pub const fn saving_parameters_not_supported() -> Self {
        Self::new(SenseKey::IllegalRequest, 0x39, 0x00)
    }

    /// DATA PROTECT / WRITE PROTECTED (27h/00h): a write to a read-only logical unit.
    pub const fn write_protected() -> Self {
        Self::new(SenseKey::DataProtect, 0x27, 0x00)
    }

    /// MEDIUM ERROR / UNRECOVERED READ ERROR (11h/00h): the block device failed a read.
    pub const fn medium_error_read() -> Self {
        Self::new(SenseKey::MediumError, 0x11, 0x00)
    }

    /// MEDIUM ERROR / WRITE ERROR (0Ch/00h): the block device failed a write or a flush.
    pub const fn write_error() -> Self {
        Self::new(SenseKey::MediumError, 0x0C, 0x00)
    }

    /// MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION (1Dh/00h); `offset` is the byte offset into the Data-Out
    /// buffer of the first byte that differed.
    pub const fn miscompare(offset: u64) -> Self {
        let mut s = Self::new(SenseKey::Miscompare, 0x1D, 0x00);
        s.information = Some(offset);
        s
    }

    /// ABORTED COMMAND / DATA PHASE ERROR (4Bh/00h): the transport delivered the Data-Out out of sequence
    /// (iSCSI DataSN), so the command was not carried out.
    pub const fn data_phase_error() -> Self {
        Self::new(SenseKey::AbortedCommand, 0x4B, 0x00)
    }

    /// UNIT ATTENTION / POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29h/00h).
    pub const fn power_on_reset() -> Self {
        Self::new(SenseKey::UnitAttention, 0x29, 0x00)
    }

    /// UNIT ATTENTION / BUS DEVICE RESET FUNCTION OCCURRED (29h/03h): after a LOGICAL UNIT RESET or target reset.
    pub const fn bus_device_reset() -> Self {
        Self::new(SenseKey::UnitAttention, 0x29, 0x03)
    }

    /// UNIT ATTENTION / MODE PARAMETERS CHANGED (2Ah/01h): another I_T nexus changed them with MODE SELECT.
    pub const fn mode_parameters_changed() -> Self {
        Self::new(SenseKey::UnitAttention, 0x2A, 0x01)
    }

    /// UNIT ATTENTION / REPORTED LUNS DATA HAS CHANGED (3Fh/0Eh): the target's LUN inventory changed.
    pub const fn reported_luns_changed() -> Self {
        Self::new(SenseKey::UnitAttention, 0x3F, 0x0E)
    }

    /// UNIT ATTENTION / CAPACITY DATA HAS CHANGED (2Ah/09h).
    pub const fn capacity_changed() -> Self {
        Self::new(SenseKey::UnitAttention, 0x2A, 0x09)
    }

    /// ILLEGAL REQUEST / INSUFFICIENT REGISTRATION RESOURCES (55h/04h): no room for another persistent
    /// reservation registration.
    pub const fn insufficient_registration_resources() -> Self {
        Self::new(SenseKey::IllegalRequest, 0x55, 0x04)
    }

    /// ILLEGAL REQUEST / INVALID RELEASE OF PERSISTENT RESERVATION (26h/04h): RELEASE by the holder with a
    /// scope or type other than the reservation's.
    pub const fn invalid_release_of_persistent_reservation() -> Self {
        Self::new(SenseKey::IllegalRequest, 0x26, 0x04)
    }

    /// HARDWARE ERROR / INTERNAL TARGET FAILURE (44h/00h): the target could not carry out the command (e.g. the
    /// device did not load or store reservation state); nothing was changed.
    pub const fn internal_target_failure() -> Self {
        Self::new(SenseKey::HardwareError, 0x44, 0x00)
    }

    /// UNIT ATTENTION / RESERVATIONS PREEMPTED (2Ah/03h): a PERSISTENT RESERVE OUT CLEAR removed this I_T nexus's
    /// registration and any reservation.
    pub const fn reservations_preempted() -> Self {
        Self::new(SenseKey::UnitAttention, 0x2A, 0x03)
    }

    /// UNIT ATTENTION / RESERVATIONS RELEASED (2Ah/04h): a registrants-only or all-registrants reservation was
    /// released, or a preemption changed the reservation's type.
    pub const fn reservations_released() -> Self {
        Self::new(SenseKey::UnitAttention, 0x2A, 0x04)
    }

    /// UNIT ATTENTION / REGISTRATIONS PREEMPTED (2Ah/05h): another I_T nexus's PREEMPT removed this one's
    /// registration.
    pub const fn registrations_preempted() -> Self {
        Self::new(SenseKey::UnitAttention, 0x2A, 0x05)
    }

    /// Fixed-format sense data (response code 70h, 18 bytes), as sent with a CHECK CONDITION.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; FIXED_SENSE_LEN];
        b[0] = 0x70;
        // The fixed format has only 4 bytes of INFORMATION; a larger value is sent without VALID.
        if let Some(info) = self.information.and_then(|i| u32::try_from(i).ok()) {
            b[0] |= 0x80;
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        b[2] = self.key as u8;
        b[7] = (FIXED_SENSE_LEN - 8) as u8;
        b[12] = self.asc;
        b[13] = self.ascq;
        b[15..18].copy_from_slice(&self.sense_key_specific());
        b
    }

    /// Descriptor-format sense data (response code 72h), for REQUEST SENSE with DESC set.
    pub fn to_descriptor_bytes(&self) -> Vec<u8> {
        let mut b = vec![0x72, self.key as u8, self.asc, self.ascq, 0, 0, 0, 0];
        if let Some(info) = self.information {
            // Information descriptor (type 00h), VALID set.
            b.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if self.field_pointer.is_some() {
            // Sense key specific descriptor (type 02h).
            b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00]);
            b.extend_from_slice(&self.sense_key_specific());
            b.push(0x00);
        }
        b[7] = (b.len() - 8) as u8;
        b
    }

    /// The three sense-key specific bytes: field pointer with SKSV, C/D and BPV, or zeros.
    fn sense_key_specific(&self) -> [u8; 3] {
        match self.field_pointer {
            None => [0; 3],
            Some(fp) => {
                let [hi, lo] = fp.byte.to_be_bytes();
                let cd = if fp.in_cdb { 0x40 } else { 0x00 };
                [0x80 | cd | 0x08 | (fp.bit & 7), hi, lo]
            }
        }
    }
}

impl fmt::Display for SenseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_layout() {
        let b = Sense::lba_out_of_range().to_bytes();
        assert_eq!(b.len(), 18);
        assert_eq!(b[0], 0x70);
        assert_eq!(b[2], 0x05);
        assert_eq!(b[7], 10);
        assert_eq!((b[12], b[13]), (0x21, 0x00));
        assert_eq!(&b[15..18], &[0, 0, 0]);
    }

    #[test]
    fn field_pointer_sets_sksv_cd_bpv() {
        let b = Sense::invalid_field_in_cdb(2, 7).to_bytes();
        assert_eq!((b[12], b[13]), (0x24, 0x00));
        assert_eq!(b[15], 0x80 | 0x40 | 0x08 | 7);
        assert_eq!(u16::from_be_bytes([b[16], b[17]]), 2);

        let p = Sense::invalid_field_in_parameter_list(300, 3).to_bytes();
        assert_eq!((p[12], p[13]), (0x26, 0x00));
        assert_eq!(p[15], 0x80 | 0x08 | 3, "C/D clear for the parameter list");
        assert_eq!(u16::from_be_bytes([p[16], p[17]]), 300);
    }

    #[test]
    fn information_sets_valid() {
        let b = Sense::miscompare(0x1234).to_bytes();
        assert_eq!(b[0], 0xF0);
        assert_eq!(b[2], 0x0E);
        assert_eq!(u32::from_be_bytes([b[3], b[4], b[5], b[6]]), 0x1234);
        assert_eq!((b[12], b[13]), (0x1D, 0x00));
    }

    #[test]
    fn information_too_large_for_fixed_format_is_not_valid() {
        let b = Sense::miscompare(1 << 40).to_bytes();
        assert_eq!(b[0], 0x70);
        assert_eq!(&b[3..7], &[0; 4]);
    }

    #[test]
    fn descriptor_format() {
        let b = Sense::no_sense().to_descriptor_bytes();
        assert_eq!(b, vec![0x72, 0, 0, 0, 0, 0, 0, 0]);

        let m = Sense::miscompare(77).to_descriptor_bytes();
        assert_eq!(&m[..4], &[0x72, 0x0E, 0x1D, 0x00]);
        assert_eq!(m[7] as usize, m.len() - 8);
        assert_eq!(&m[8..12], &[0x00, 0x0A, 0x80, 0x00]);
        assert_eq!(u64::from_be_bytes(m[12..20].try_into().unwrap()), 77);

        let f = Sense::invalid_field_in_cdb(1, 1).to_descriptor_bytes();
        assert_eq!(f[7], 8);
        assert_eq!(&f[8..12], &[0x02, 0x06, 0x00, 0x00]);
        assert_eq!(&f[12..15], &[0x80 | 0x40 | 0x08 | 1, 0, 1]);
    }

    #[test]
    fn constructors_have_the_documented_codes() {
        let cases = [
            (
                Sense::invalid_opcode(),
                SenseKey::IllegalRequest,
                0x20,
                0x00,
            ),
            (
                Sense::parameter_list_length_error(),
                SenseKey::IllegalRequest,
                0x1A,
                0x00,
            ),
            (
                Sense::invalid_field_in_information_unit(),
                SenseKey::IllegalRequest,
                0x0E,
                0x03,
            ),
            (
                Sense::lun_not_supported(),
                SenseKey::IllegalRequest,
                0x25,
                0x00,
            ),
            (
                Sense::saving_parameters_not_supported(),
                SenseKey::IllegalRequest,
                0x39,
                0x00,
            ),
            (Sense::write_protected(), SenseKey::DataProtect, 0x27, 0x00),
            (
                Sense::medium_error_read(),
                SenseKey::MediumError,
                0x11,
                0x00,
            ),
            (Sense::write_error(), SenseKey::MediumError, 0x0C, 0x00),
            (Sense::power_on_reset(), SenseKey::UnitAttention, 0x29, 0x00),
            (
                Sense::bus_device_reset(),
                SenseKey::UnitAttention,
                0x29,
                0x03,
            ),
            (
                Sense::capacity_changed(),
                SenseKey::UnitAttention,
                0x2A,
                0x09,
            ),
            (
                Sense::mode_parameters_changed(),
                SenseKey::UnitAttention,
                0x2A,
                0x01,
            ),
            (
                Sense::insufficient_registration_resources(),
                SenseKey::IllegalRequest,
                0x55,
                0x04,
            ),
            (
                Sense::invalid_release_of_persistent_reservation(),
                SenseKey::IllegalRequest,
                0x26,
                0x04,
            ),
            (
                Sense::internal_target_failure(),
                SenseKey::HardwareError,
                0x44,
                0x00,
            ),
            (
                Sense::reservations_preempted(),
                SenseKey::UnitAttention,
                0x2A,
                0x03,
            ),
            (
                Sense::reservations_released(),
                SenseKey::UnitAttention,
                0x2A,
                0x04,
            ),
            (
                Sense::registrations_preempted(),
                SenseKey::UnitAttention,
                0x2A,
                0x05,
            ),
        ];
        for (s, key, asc, ascq) in cases {
            assert_eq!((s.key, s.asc, s.ascq), (key, asc, ascq), "{s}");
        }
    }
}
