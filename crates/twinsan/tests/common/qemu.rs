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

/// `qemu-io` run here; namespace tests pass `lab.command(CLIENT, ...)` instead to the `_via` functions.
pub fn local() -> Command {
    Command::new(require_tool("qemu-io"))
}

/// Runs qemu-io with `cmds` on `url`; fails the test on any error. Its output.
pub fn qemu_io(url: &str, cmds: &[String]) -> String {
    qemu_io_via(local(), url, cmds)
}

/// [`qemu_io`], started as `base` (a `qemu-io` command, possibly wrapped, e.g. in `ip netns exec`).
pub fn qemu_io_via(mut cmd: Command, url: &str, cmds: &[String]) -> String {
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
    write_via(local(), url, plan, chunk)
}

/// [`write`] with qemu-io started as `base`.
pub fn write_via(base: Command, url: &str, plan: &[(u64, u8)], chunk: u64) {
    let out = qemu_io_via(base, url, &write_cmds(plan, chunk));
    let wrote = out
        .lines()
        .filter(|l| l.starts_with(&format!("wrote {chunk}/{chunk} bytes")))
        .count();
    assert_eq!(wrote, plan.len(), "not every write completed:\n{out}");
}

/// The qemu-io commands that write `plan`.
pub fn write_cmds(plan: &[(u64, u8)], chunk: u64) -> Vec<String> {
    plan.iter()
        .map(|(off, p)| format!("write -P {p:#04x} {off} {chunk}"))
        .collect()
}

/// Reads every chunk of `plan` back and checks its pattern.
pub fn verify(url: &str, plan: &[(u64, u8)], chunk: u64) {
    verify_via(local(), url, plan, chunk)
}

/// [`verify`] with qemu-io started as `base`.
pub fn verify_via(base: Command, url: &str, plan: &[(u64, u8)], chunk: u64) {
    let cmds: Vec<String> = plan
        .iter()
        .map(|(off, p)| format!("read -P {p:#04x} {off} {chunk}"))
        .collect();
    let out = qemu_io_via(base, url, &cmds);
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

/// `qemu-io` with its output line-buffered (`stdbuf -oL`), so each command's result arrives as it completes:
/// what [`stream_via`] needs. `wrap` puts a prefix in front (`ip netns exec NS`), or none.
pub fn line_buffered(wrap: impl FnOnce(&str) -> Command) -> Command {
    let qemu_io = require_tool("qemu-io");
    let mut cmd = wrap("stdbuf");
    cmd.arg("-oL").arg(qemu_io);
    cmd
}

/// What a running [`stream_via`] has seen so far.
pub struct Progress {
    lines: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>,
}

impl Progress {
    /// Writes acknowledged so far.
    pub fn acked(&self) -> usize {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, l)| l.starts_with("wrote "))
            .count()
    }

    /// Waits until `n` writes are acknowledged (at most 60 s).
    pub fn wait_acked(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.acked() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "qemu-io acknowledged only {} writes in 60 s",
                self.acked()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// What [`stream_via`] saw.
pub struct Stream {
    /// Each command's duration, as qemu-io timed it: the longest is the I/O pause the initiator saw.
    pub durations: Vec<Duration>,
    /// When each line of output arrived.
    pub lines: Vec<(std::time::Instant, String)>,
    /// All output.
    pub output: String,
}

impl Stream {
    /// Writes acknowledged (in all, and after `t`).
    pub fn acked_after(&self, t: std::time::Instant) -> usize {
        self.lines
            .iter()
            .filter(|(at, l)| *at > t && l.starts_with("wrote "))
            .count()
    }

    /// The longest command.
    pub fn longest(&self) -> Duration {
        self.durations.iter().copied().max().unwrap_or_default()
    }

    /// Checks a failover under this stream of writes: all `expected` acknowledged, some of them after
    /// `killed_at` (the fault came under I/O), and the longest write — the pause the initiator saw — shorter than
    /// `limit`. Prints and returns that pause; `logs` goes into a failure message.
    pub fn check_failover(
        &self,
        killed_at: std::time::Instant,
        expected: usize,
        limit: Duration,
        logs: impl Fn() -> String,
    ) -> Duration {
        let acked = self
            .lines
            .iter()
            .filter(|(_, l)| l.starts_with("wrote "))
            .count();
        assert_eq!(
            acked, expected,
            "every write must complete (the initiator retries across the failover):\n{}",
            self.output
        );
        let after = self.acked_after(killed_at);
        assert!(
            after > 0,
            "no write was acknowledged after the fault: the failover was not under I/O"
        );
        let pause = self.longest();
        println!("failover: the longest write took {pause:?} (the I/O pause at the initiator); {after} writes after the fault");
        assert!(
            pause < limit,
            "I/O did not resume within {limit:?} of the fault: the longest write took {pause:?}\n{}",
            logs()
        );
        pause
    }
}

/// Runs qemu-io (`cmd`, from [`line_buffered`]) with `cmds` on `url` while `during` runs with a view of its
/// progress. Fails the test if qemu-io fails or runs longer than 240 s.
pub fn stream_via(
    mut cmd: Command,
    url: &str,
    cmds: &[String],
    during: impl FnOnce(&Progress),
) -> Stream {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    cmd.args(["-f", "raw"]);
    for c in cmds {
        cmd.arg("-c").arg(c);
    }
    let mut child = cmd
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qemu-io");
    let stdout = child.stdout.take().expect("stdout");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((Instant::now(), line));
        }
    });
    during(&Progress {
        lines: lines.clone(),
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    let Some(status) = super::wait_or_kill(&mut child, deadline, Duration::from_millis(50)) else {
        panic!("qemu-io did not finish within 240 s");
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let _ = reader.join();
    let lines = std::mem::take(&mut *lines.lock().unwrap_or_else(|p| p.into_inner()));
    let mut output: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    output += &err;
    assert!(status.success(), "qemu-io failed ({status}):\n{output}");
    let durations = lines
        .iter()
        .filter_map(|(_, l)| l.split("ops; ").nth(1))
        .map(|t| {
            let t = t.split(' ').next().unwrap_or("");
            // `00.01` (seconds) or `0:00:02.81` (h:mm:ss.ss); anything else counts as a very long pause.
            let secs: f64 = t.split(':').fold(0.0, |acc, part| {
                acc * 60.0 + part.parse::<f64>().unwrap_or(f64::NAN)
            });
            Duration::from_secs_f64(if secs.is_finite() { secs } else { 1e6 })
        })
        .collect();
    Stream {
        durations,
        lines,
        output,
    }
}
