//! Witness datagrams from the network: decoding never panics and a decoded request or reply re-encodes to the same
//! bytes; a witness and a node fed arbitrary datagrams never panic, answer nothing unauthenticated and never
//! believe in a vote from it. Then the input is read as a script over a witness and two nodes with authentic
//! datagrams (time passing, sends, deliveries in any order, duplicates, losses, damaged bytes, restarts): at no
//! point do both nodes believe they hold the vote.
#![no_main]

use std::time::Duration;

use twinsan_cluster::witness::{
    Reply, Request, WitnessClient, WitnessClientConfig, WitnessKey, WitnessServer,
    WitnessServerConfig,
};

const CLUSTER: u64 = 7;
const SECRET: &[u8] = b"fuzz secret of the witness";
/// Messages in flight at most, so a script cannot grow memory.
const MAX_IN_FLIGHT: usize = 64;

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let key = WitnessKey::new(SECRET);
    if let Ok(r) = Request::decode(data, &key) {
        assert_eq!(
            &r.encode(&key)[..],
            data,
            "a decoded request re-encodes to its bytes"
        );
    }
    if let Ok(r) = Reply::decode(data, &key) {
        assert_eq!(
            &r.encode(&key)[..],
            data,
            "a decoded reply re-encodes to its bytes"
        );
    }
    raw(data);
    script(data);
}

fn server(now: Duration) -> WitnessServer {
    WitnessServer::new(WitnessServerConfig::new(CLUSTER), SECRET, now).expect("valid config")
}

fn client(node_id: u8, incarnation: u64, now: Duration) -> WitnessClient {
    WitnessClient::new(
        WitnessClientConfig::new(CLUSTER, node_id, incarnation),
        SECRET,
        now,
    )
    .expect("valid config")
}

/// Arbitrary datagrams straight at a witness past its grace and at a node waiting for replies.
fn raw(data: &[u8]) {
    let now = Duration::from_secs(10);
    let mut s = server(Duration::ZERO);
    let mut c = client(1, 1, Duration::ZERO);
    let _ = c.tick(Duration::ZERO);
    for chunk in data.chunks(48).chain(data.chunks(52)) {
        let _ = s.handle(chunk, now);
        let _ = c.received(chunk, now);
    }
    assert_eq!(s.holder(now), None, "only authentic requests take the vote");
    assert!(!c.holds_vote(now), "only authentic replies give a belief");
}

enum Msg {
    ToWitness(usize, Vec<u8>),
    ToNode(usize, Vec<u8>),
}

/// Three bytes per step: an operation and two arguments.
fn script(data: &[u8]) {
    let mut now = Duration::ZERO;
    let mut witness = server(now);
    let mut incarnations = [1u64, 1];
    let mut nodes = [client(1, 1, now), client(2, 1, now)];
    let mut in_flight: Vec<Msg> = Vec::new();
    for op in data.chunks_exact(3) {
        let (a, b) = (op[1], op[2]);
        let i = usize::from(a & 1);
        match op[0] % 8 {
            0 => now += Duration::from_millis(u64::from(a) * 10 + u64::from(b)),
            1 => {
                if let Some(bytes) = nodes[i].tick(now) {
                    if in_flight.len() < MAX_IN_FLIGHT {
                        in_flight.push(Msg::ToWitness(i, bytes.to_vec()));
                    }
                }
            }
            2 | 3 if !in_flight.is_empty() => {
                let msg = in_flight.remove(usize::from(b) % in_flight.len());
                deliver(msg, &mut witness, &mut nodes, &mut in_flight, now);
            }
            4 if !in_flight.is_empty() && in_flight.len() < MAX_IN_FLIGHT => {
                let copy = match &in_flight[usize::from(b) % in_flight.len()] {
                    Msg::ToWitness(i, bytes) => Msg::ToWitness(*i, bytes.clone()),
                    Msg::ToNode(i, bytes) => Msg::ToNode(*i, bytes.clone()),
                };
                in_flight.push(copy);
            }
            5 if !in_flight.is_empty() => {
                // Damage one byte (a != 0) of a message, or lose it.
                let index = usize::from(b) % in_flight.len();
                match &mut in_flight[index] {
                    Msg::ToWitness(_, bytes) | Msg::ToNode(_, bytes) if a != 0 => {
                        let at = usize::from(a) % bytes.len();
                        bytes[at] ^= a;
                    }
                    _ => {
                        in_flight.remove(index);
                    }
                }
            }
            6 => witness = server(now),
            7 => {
                incarnations[i] += 1;
                nodes[i] = client(i as u8 + 1, incarnations[i], now);
            }
            _ => {}
        }
        assert!(
            !(nodes[0].holds_vote(now) && nodes[1].holds_vote(now)),
            "both nodes believe they hold the vote"
        );
    }
}

fn deliver(
    msg: Msg,
    witness: &mut WitnessServer,
    nodes: &mut [WitnessClient; 2],
    in_flight: &mut Vec<Msg>,
    now: Duration,
) {
    match msg {
        Msg::ToWitness(from, bytes) => {
            if let Ok(answer) = witness.handle(&bytes, now) {
                in_flight.push(Msg::ToNode(from, answer.bytes.to_vec()));
            }
        }
        Msg::ToNode(to, bytes) => {
            let _ = nodes[to].received(&bytes, now);
        }
    }
}
