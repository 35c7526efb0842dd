//! Rolling upgrade (docs/upgrade.md): a managed pair running the previous release (the commit in
//! `compat/previous-release`, built by `scripts/build-previous-release` into its own target dir, or
//! `TWINSAN_PREVIOUS_BIN`) is upgraded to this build one node at a time under queue-depth-1 FUA writes at the VIP
//! (`tests/tools/iscsi-writer.c`), in network namespaces with the real VIP:
//!
//! 1. the secondary is stopped and started with this build on the same config and disks; it gets in sync with
//!    the old primary, speaking replication protocol 2 (the old one's);
//! 2. the stack is moved to it with the old node's own CLI (`node standby`);
//! 3. the other node is stopped, started with this build, and let back (`node unstandby`); it gets in sync, and
//!    the pair speaks protocol 5.
//!
//! Each phase runs under its own writer and reads back its records at the VIP before the next: 0 acknowledged
//! writes lost. The longest pause between two acknowledgements of each phase is printed (a figure, not a bound).
//!
//! Needs root (namespaces); CI runs as root. One test at a time (nextest group `netns`).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::in_sync;
use common::nscluster::{host, other, up, NsCluster};
use common::scsi::libiscsi_tool;
use common::{run, text, twinsan_bin, writer, TempDir};

/// How long each phase's writer writes: the phase's action runs within it.
const PHASE_S: u64 = 30;

/// The previous release's binary: `TWINSAN_PREVIOUS_BIN` (scripts/test builds it first), else the script's build
/// (reused when already built).
fn previous_release_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TWINSAN_PREVIOUS_BIN") {
        return PathBuf::from(bin);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-previous-release");
    let out = run(
        &mut std::process::Command::new(&script),
        Duration::from_secs(1800),
    );
    assert!(
        out.status.success(),
        "{}:\n{}",
        script.display(),
        text(&out)
    );
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    PathBuf::from(path)
}

#[derive(Debug)]
struct Phase {
    what: &'static str,
    action_ms: u128,
    acked: u64,
    failed: u64,
    lost: u64,
    longest_pause_ms: u64,
    next_record: u64,
}

/// Runs `action` under a writer from record `first`, lets the pair settle in sync with the stack on one node, and
/// reads back the phase's records.
fn phase(
    c: &mut NsCluster,
    writer_bin: &Path,
    dir: &Path,
    what: &'static str,
    first: u64,
    action: impl FnOnce(&mut NsCluster),
) -> Phase {
    let log = dir.join(format!("writer-{}.log", what.replace(' ', "-")));
    let w = writer::start(c, writer_bin, PHASE_S, first, &log);
    let started = Instant::now();
    action(c);
    let action_ms = started.elapsed().as_millis();
    writer::finish(w, PHASE_S);
    c.wait(
        Duration::from_secs(90),
        "in sync, no split brain, one stack",
        || {
            let (a, b) = (c.volume(1), c.volume(2));
            let settled = in_sync(&a)
                && in_sync(&b)
                && a["split_brain"] == false
                && b["split_brain"] == false
                && c.stack_on(1).is_some_and(|n| c.stack_on(2) == Some(n));
            settled.then_some(())
        },
    );
    let lost = writer::verify(c, writer_bin, &log);
    let l = writer::read_log(&log);
    let p = Phase {
        what,
        action_ms,
        acked: l.acked,
        failed: l.failed,
        lost,
        longest_pause_ms: l.longest_pause_ms,
        next_record: l.next_record,
    };
    eprintln!("{p:?}");
    assert_eq!(
        lost,
        0,
        "acknowledged writes lost in '{what}':\n{}",
        c.logs()
    );
    assert!(p.acked > 0, "nothing was acknowledged: {p:?}");
    p
}

/// The replication protocol node `n` speaks with its peer (`volume status --json`); `None` from a node of the
/// previous release, which does not report it, or while not connected.
fn protocol(c: &NsCluster, n: usize) -> Option<u64> {
    c.volume(n)["peers"][0]["protocol"].as_u64()
}

/// Stops node `n` and starts it again with `bin` on the same config and disks.
fn restart_with(c: &mut NsCluster, n: usize, bin: &Path) {
    c.stop(n);
    c.bins[n - 1] = bin.to_path_buf();
    c.start(n);
}

#[test]
fn rolling_upgrade_from_the_previous_release_loses_no_acknowledged_write() {
    let previous = previous_release_bin();
    let new = twinsan_bin();
    let mut c = NsCluster::with_bin("upgrade", false, "", &previous);
    let writer_bin = libiscsi_tool("iscsi-writer");
    let dir = TempDir::new("upgrade");
    let p = up(&mut c);
    let s = other(p);
    assert_eq!(
        protocol(&c, p),
        None,
        "the previous release reports no protocol"
    );

    let mut phases = Vec::new();
    let first = phase(
        &mut c,
        &writer_bin,
        dir.path(),
        "upgrade the secondary",
        1,
        |c| {
            restart_with(c, s, &new);
            c.wait(
                Duration::from_secs(90),
                "the upgraded secondary in sync with the old primary",
                || (in_sync(&c.volume(s)) && in_sync(&c.volume(p))).then_some(()),
            );
        },
    );
    assert_eq!(
        protocol(&c, s),
        Some(2),
        "a mixed pair speaks the old release's protocol"
    );
    let next = first.next_record;
    phases.push(first);

    let moved = phase(
        &mut c,
        &writer_bin,
        dir.path(),
        "move the stack",
        next,
        |c| {
            // The old node's own CLI: what an admin has on that node.
            c.cli(p, &["node", "standby", host(p)]);
            c.wait(
                Duration::from_secs(90),
                "the stack on the upgraded node",
                || (c.stack_on(s) == Some(s) && c.stack_on(p) == Some(s)).then_some(()),
            );
        },
    );
    let next = moved.next_record;
    phases.push(moved);

    let last = phase(
        &mut c,
        &writer_bin,
        dir.path(),
        "upgrade the other node",
        next,
        |c| {
            restart_with(c, p, &new);
            c.cli(p, &["node", "unstandby", host(p)]);
            c.wait(
                Duration::from_secs(90),
                "both nodes of this build in sync",
                || (in_sync(&c.volume(s)) && in_sync(&c.volume(p))).then_some(()),
            );
        },
    );
    phases.push(last);
    assert_eq!(c.stack_on(p), Some(s), "the stack stays where it was moved");
    assert_eq!(protocol(&c, p), Some(5), "two nodes of this build speak 5");
    assert_eq!(protocol(&c, s), Some(5));
    let peer_messages = |n: usize| -> Option<u64> {
        let status = c.cluster(n);
        status["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|x| x["name"] == host(other(n))))
            .and_then(|x| x["protocol"].as_u64())
    };
    assert_eq!(peer_messages(p), Some(2), "cluster messages at version 2");
    assert_eq!(peer_messages(s), Some(2));

    eprintln!("rolling upgrade from {}:", previous.display());
    eprintln!("  phase                     action   acked  failed  lost  longest pause");
    for r in &phases {
        eprintln!(
            "  {:<24} {:>6} ms {:>7} {:>7} {:>5} {:>9} ms",
            r.what, r.action_ms, r.acked, r.failed, r.lost, r.longest_pause_ms
        );
    }
    c.stop(1);
    c.stop(2);
}
