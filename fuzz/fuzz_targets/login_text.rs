//! Text key parsing and the login state machine on arbitrary input: never panic; a parsed text segment
//! re-encodes to something that parses to the same pairs.
#![no_main]

use twinsan_iscsi::error::LoginStatus;
use twinsan_iscsi::login::{ChapPolicy, Login, LoginEnv, TargetLimits};
use twinsan_iscsi::pdu::LoginRequest;
use twinsan_iscsi::text::TextPairs;

struct Env;
impl LoginEnv for Env {
    fn normal_access(&self, target: &str, _: &str) -> Result<Option<ChapPolicy>, LoginStatus> {
        if target.len() % 2 == 0 {
            Ok(None)
        } else {
            Err(LoginStatus::NotFound)
        }
    }
    fn discovery_access(&self, _: &str) -> Result<Option<ChapPolicy>, LoginStatus> {
        Ok(None)
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = TextPairs::parse(data) {
        assert_eq!(TextPairs::parse(&pairs.encode()).as_ref(), Ok(&pairs));
    }
    let mut login = Login::new(TargetLimits::default());
    for (i, chunk) in data.chunks(64).enumerate() {
        let flags = chunk.first().copied().unwrap_or(0);
        let req = LoginRequest {
            transit: flags & 0x80 != 0,
            cont: flags & 0x40 != 0,
            csg: (flags >> 2) & 3,
            nsg: flags & 3,
            version_max: 0,
            version_min: 0,
            data_len: chunk.len() as u32,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            itt: i as u32,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
        };
        let _ = login.step(&req, chunk, &Env, &mut |b: &mut [u8]| b.fill(0x5a));
    }
});
