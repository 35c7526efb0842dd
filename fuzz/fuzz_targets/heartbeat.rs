//! Cluster heartbeats from the network: decoding never panics, a decoded heartbeat re-encodes to the same bytes,
//! and a membership fed arbitrary datagrams on any link never panics.
#![no_main]

use std::time::Duration;

use twinsan_cluster::membership::{Heartbeat, Membership, MembershipConfig};

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    if let Ok(hb) = Heartbeat::decode(data) {
        assert_eq!(
            &hb.encode()[..],
            data,
            "a decoded heartbeat re-encodes to its bytes"
        );
    }
    let Some((&link, rest)) = data.split_first() else {
        return;
    };
    let config = MembershipConfig::two_node(7, 1, 2, 2, 1);
    let Ok(mut m) = Membership::new(config, Duration::ZERO) else {
        return;
    };
    for (i, chunk) in rest.chunks(32).enumerate() {
        let _ = m.received(link % 4, chunk, Duration::from_millis(i as u64 * 50));
        let _ = m.tick(Duration::from_millis(i as u64 * 50 + 10));
    }
}
