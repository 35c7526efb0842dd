//! The framer and BHS decoder on arbitrary bytes: never panic, and every decoded PDU re-encodes to the same
//! header fields.
#![no_main]

use bytes::BytesMut;
use twinsan_iscsi::frame::{self, FrameLimits};
use twinsan_iscsi::pdu::Pdu;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let limits = FrameLimits {
        header_digest: flags & 1 != 0,
        data_digest: flags & 2 != 0,
        max_data_len: 8192,
    };
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(raw)) = frame::decode(&mut buf, &limits) {
        if let Ok(pdu) = Pdu::decode(&raw.bhs) {
            let again = Pdu::decode(&pdu.encode()).expect("re-encoded PDU decodes");
            assert_eq!(again, pdu);
        }
    }
});
