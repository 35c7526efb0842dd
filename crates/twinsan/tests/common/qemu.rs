//! QEMU's iSCSI driver as a client: patterned writes at seeded pseudo-random offsets, and their verification.

use std::process::Command;
use std::time::Duration;

use super::{require_tool, run, text};

/// `count` distinct chunk slots of `chunk` bytes on a disk of `disk` bytes, in a seeded pseudo-random order
/// (xorshift), with a non-zero pattern byte for each.
pub fn plan(seed: u64, disk: u64, chunk: u64, count: usize) -> Vec<(u64, u8)> {
    let slots = disk / chunk;
    let mut order: Vec<u64> = (0..slots).collect();
    let mut x = seed | 1;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
        .into_iter()
        .take(count)
        .enumerate()
        .map(|(i, slot)| (slot * chunk, (i % 254 + 1) as u8))
        .collect()
}

/// Runs qemu-io with `cmds` on `url`; fails the test on any error. Its output.
pub fn qemu_io(url: &str, cmds: &[String]) -> String {
    let mut cmd = Command::new(require_tool("qemu-io"));
    cmd.args(["-f", "raw"]);
    for c in cmds {
        cmd.arg("-c").arg(c);
    }
    cmd.arg(url);
    let out = run(&mut cmd, Duration::from_secs(300));
    let t = text(&out);
    assert!(
        out.status.success(),
        "qemu-io failed ({}):\n{t}",
        out.status
    );
    assert!(
        !t.contains("failed") && !t.contains("rror"),
        "qemu-io reported an error:\n{t}"
    );
    t
}

/// Writes every chunk of `plan` with its pattern; asserts each write completed.
pub fn write(url: &str, plan: &[(u64, u8)], chunk: u64) {
    let cmds: Vec<String> = plan
        .iter()
        .map(|(off, p)| format!("write -P {p:#04x} {off} {chunk}"))
        .collect();
    let out = qemu_io(url, &cmds);
    let wrote = out
        .lines()
        .filter(|l| l.starts_with(&format!("wrote {chunk}/{chunk} bytes")))
        .count();
    assert_eq!(wrote, plan.len(), "not every write completed:\n{out}");
}

/// Reads every chunk of `plan` back and checks its pattern.
pub fn verify(url: &str, plan: &[(u64, u8)], chunk: u64) {
    let cmds: Vec<String> = plan
        .iter()
        .map(|(off, p)| format!("read -P {p:#04x} {off} {chunk}"))
        .collect();
    let out = qemu_io(url, &cmds);
    let reads = out
        .lines()
        .filter(|l| l.starts_with(&format!("read {chunk}/{chunk} bytes")))
        .count();
    assert_eq!(
        reads,
        plan.len(),
        "not every read completed and verified:\n{out}"
    );
}
