//! Cluster messages from the network (node reports, fencing requests and answers): decoding arbitrary datagrams
//! never panics, under the right secret or a wrong one, and anything that decodes was authenticated.
#![no_main]

use twinsan_cluster::message;

const SECRET: &[u8] = b"fuzzing secret, 32 bytes long...";

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let _ = message::decode(b"another secret", 7, data);
    if let Ok(envelope) = message::decode(SECRET, 7, data) {
        // Only a datagram carrying a valid tag decodes; it re-encodes to a datagram that decodes the same.
        let again = message::encode(
            SECRET,
            7,
            envelope.node_id,
            envelope.incarnation,
            envelope.seq,
            &envelope.message,
        )
        .expect("a decoded message fits again");
        assert_eq!(
            message::decode(SECRET, 7, &again).expect("re-encoded message decodes"),
            envelope
        );
    }
    // A well-formed, authenticated datagram carrying the fuzz input as its body.
    if let Ok(text) = std::str::from_utf8(data) {
        let fence = message::Message::Fence {
            id: data.len() as u64,
            volume: text.to_string(),
            generations: data.iter().map(|&b| u64::from(b)).collect(),
        };
        if let Some(bytes) = message::encode(SECRET, 7, 1, 1, 1, &fence) {
            assert_eq!(
                message::decode(SECRET, 7, &bytes).map(|e| e.message),
                Ok(fence)
            );
        }
    }
}
