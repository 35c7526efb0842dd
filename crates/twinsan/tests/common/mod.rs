//! Shared harness of the acceptance tests: run `twinsan serve` and real initiators (libiscsi's tools, QEMU).
//!
//! Every process a test starts is stopped by its pid when the guard drops; every file lives in a temporary
//! folder removed at the end. Addresses: loopback, or 198.18.0.0/15 inside the namespaces of `netns::Lab`.

#![allow(dead_code)]

pub mod cluster;
pub mod hold;
pub mod http;
pub mod initiator;
pub mod netns;
pub mod nscluster;
pub mod qemu;
pub mod scsi;
pub mod tgt;
pub mod writer;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test: `TWINSAN_BIN` (the release build scripts/test makes) or cargo's own build.
pub fn twinsan_bin() -> PathBuf {
    std::env::var_os("TWINSAN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_twinsan")))
}

/// Fails the test with a clear message when a real-peer tool is missing: such a test must never pass silently.
pub fn require_tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{name} is not installed: run scripts/test (it installs libiscsi-bin, tgt and qemu-block-extra)")
    })
}

/// Like [`require_tool`], also looking in `dirs` (sbin folders are not on every PATH).
pub fn require_tool_in(dirs: &[&str], name: &str) -> PathBuf {
    dirs.iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| require_tool(name))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A temporary folder removed on drop.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    /// A new folder `twinsan-test-TAG-*` under `$TWINSAN_TEST_TMP` (default: the system's temporary folder).
    pub fn new(tag: &str) -> TempDir {
        let base = std::env::var_os("TWINSAN_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&base).expect("create the temporary folders' base");
        let dir = tempfile::Builder::new()
            .prefix(&format!("twinsan-test-{tag}-"))
            .tempdir_in(&base)
            .expect("create temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Held while a test uses the fixed addresses of `twinsan init` (127.0.0.10–12, ports 3260 and 7789). nextest's
/// `cluster` group runs such tests one at a time within a run; this lock (flock(2) on a file in /run/lock) also
/// keeps two runs from different checkouts on one machine from meeting there. The kernel drops it when the
/// test process ends, however it ends.
pub struct FixedAddresses(#[allow(dead_code)] std::fs::File);

pub fn fixed_addresses() -> FixedAddresses {
    use std::os::fd::AsRawFd;
    let dir = if Path::new("/run/lock").is_dir() {
        PathBuf::from("/run/lock")
    } else {
        std::env::temp_dir()
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("twinsan-tests-fixed-addresses.lock"))
        .expect("open the fixed-address lock file");
    // SAFETY: flock(2) on a descriptor this function owns.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    FixedAddresses(file)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// A running `twinsan serve`, stopped with SIGTERM (then SIGKILL) on drop.
pub struct Serve {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub iqn: String,
    log: Arc<Mutex<String>>,
}

impl Serve {
    /// Starts `twinsan serve --iqn IQN --listen 127.0.0.1:PORT` plus `args`, and waits for the portal.
    pub fn start(iqn: &str, args: &[&str]) -> Serve {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        Serve::start_at(iqn, addr, args)
    }

    pub fn start_at(iqn: &str, addr: SocketAddr, args: &[&str]) -> Serve {
        let mut cmd = Command::new(twinsan_bin());
        cmd.arg("serve")
            .arg("--iqn")
            .arg(iqn)
            .arg("--listen")
            .arg(addr.to_string())
            .args(args);
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("TWINSAN_LOG", "info");
        let mut child = cmd.spawn().expect("spawn twinsan serve");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        collect_lines(stderr, sink);
        let mut serve = Serve {
            child: Some(child),
            addr,
            iqn: iqn.to_owned(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if let Some(c) = serve.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "twinsan serve exited with {status} before listening:\n{}",
                        serve.log()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "twinsan serve did not listen on {addr} within 20 s:\n{}",
                serve.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        serve
    }

    /// `iscsi://[user%secret@]127.0.0.1:PORT/IQN/LUN`
    pub fn url(&self, lun: u32) -> String {
        format!("iscsi://{}/{}/{}", self.addr, self.iqn, lun)
    }

    /// The portal URL for discovery.
    pub fn portal_url(&self) -> String {
        format!("iscsi://{}", self.addr)
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the server with SIGTERM and waits; returns whether it exited cleanly (status 0).
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: kill(2) on the pid of a child this guard started and has not yet reaped.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a command to completion with a time limit; returns its output.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    // Drain pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let Some(status) = wait_or_kill(&mut child, deadline, Duration::from_millis(20)) else {
        panic!("{cmd:?} did not finish within {limit:?}");
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Polls `probe` every 200 ms until it gives a value, at most `limit`; on timeout fails the test saying `what`
/// and adding `context()` (the daemons' logs).
pub fn poll_until<T>(
    limit: Duration,
    what: &str,
    context: impl Fn() -> String,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {limit:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Appends each line `stream` gives to `log` (with its newline) on a thread of its own, until the stream ends.
pub fn collect_lines(
    stream: impl std::io::Read + Send + 'static,
    log: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stream)
            .lines()
            .map_while(Result::ok)
        {
            let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
            l.push_str(&line);
            l.push('\n');
        }
    })
}

/// Waits for `child` to exit, polling every `poll`, until `deadline`; past it, kills and reaps the child and
/// returns `None`.
pub fn wait_or_kill(
    child: &mut std::process::Child,
    deadline: Instant,
    poll: Duration,
) -> Option<std::process::ExitStatus> {
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(poll);
    }
}

/// stdout and stderr of an output as one string.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
