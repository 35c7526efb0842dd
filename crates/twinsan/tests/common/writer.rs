//! The verifying QD1 writer (`tests/tools/iscsi-writer.c`) run from the client namespace of a [`NsCluster`]: start
//! it, read its log, and read back what it was told was written.

use std::path::Path;
use std::time::{Duration, Instant};

use super::netns::{Proc, CLIENT};
use super::nscluster::{NsCluster, URL};
use super::{run, text};

/// What the writer's log says so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterLog {
    /// Acknowledged records.
    pub acked: u64,
    /// Failed or unanswered records.
    pub failed: u64,
    /// The longest gap between two acknowledgements, in milliseconds.
    pub longest_pause_ms: u64,
    /// The record after the last one written.
    pub next_record: u64,
}

/// Reads the writer's log (an absent or partial log reads as what it holds).
pub fn read_log(log: &Path) -> WriterLog {
    let body = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = WriterLog::default();
    let mut last_ack = None::<u64>;
    for line in body.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
        match (f.first().copied(), num(1), num(3)) {
            (Some("A"), Some(record), Some(ms)) => {
                out.acked += 1;
                if let Some(prev) = last_ack {
                    out.longest_pause_ms = out.longest_pause_ms.max(ms.saturating_sub(prev));
                }
                last_ack = Some(ms);
                out.next_record = out.next_record.max(record + 1);
            }
            (Some("F"), Some(record), Some(_)) => {
                out.failed += 1;
                out.next_record = out.next_record.max(record + 1);
            }
            _ => {}
        }
    }
    out
}

/// Starts the writer at the VIP for `seconds` from record `first`, logging to `log`, and waits for its first
/// acknowledgement.
pub fn start(c: &NsCluster, writer: &Path, seconds: u64, first: u64, log: &Path) -> Proc {
    let w = Proc::spawn(
        "iscsi-writer",
        c.lab
            .command(CLIENT, writer)
            .args(["write", URL, &seconds.to_string(), &first.to_string()])
            .arg(log),
    );
    c.wait(Duration::from_secs(30), "writes acknowledged", || {
        (read_log(log).acked > 0).then_some(())
    });
    w
}

/// Waits for the writer to finish its `seconds` (bounded) and checks it exited cleanly.
pub fn finish(mut w: Proc, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds + 60);
    while w.exited().is_none() {
        assert!(
            Instant::now() < deadline,
            "the writer did not stop:\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        w.exited().is_some_and(|s| s.success()),
        "writer: {}",
        w.log()
    );
}

/// Reads back every block the log names at the VIP: the number of acknowledged writes lost.
pub fn verify(c: &NsCluster, writer: &Path, log: &Path) -> u64 {
    let out = run(
        c.lab.command(CLIENT, writer).args(["verify", URL]).arg(log),
        Duration::from_secs(120),
    );
    let report = text(&out);
    report
        .lines()
        .find_map(|l| l.strip_prefix("checked "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("verify did not report:\n{report}\n{}", c.logs()))
}
