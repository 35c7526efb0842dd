//! tgt (the Linux SCSI target framework's user-space daemon) as a reference target: the same backing size and
//! the same initiator as twinsan, on a loopback port of its own, stopped by its own shutdown command and by pid.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, require_tool_in, run, text};

/// Where tgtd puts its management sockets (`socket.N` for control port N).
const SOCKET_DIR: &str = "/var/run/tgtd";

/// A running tgtd serving one target with LUN 1.
pub struct Tgt {
    child: Child,
    control: u32,
    pub port: u16,
    pub iqn: String,
}

impl Tgt {
    /// Starts tgtd on 127.0.0.1 with `iqn` and LUN 1 on `backing`.
    pub fn start(iqn: &str, backing: &Path) -> Tgt {
        let tgtd = require_tool_in(&["/usr/sbin", "/sbin"], "tgtd");
        // The control port only names tgtd's management socket; take one no other tgtd uses.
        let base = 3000 + std::process::id() % 5000;
        let control = (base..base + 1000)
            .find(|n| {
                !Path::new(SOCKET_DIR).join(format!("socket.{n}")).exists()
                    && !Path::new(SOCKET_DIR)
                        .join(format!("socket.{n}.lock"))
                        .exists()
            })
            .expect("a free tgtd control port");
        let port = free_port();
        let child = Command::new(tgtd)
            .args(["-f", "-C", &control.to_string(), "--iscsi"])
            .arg(format!("portal=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tgtd");
        let t = Tgt {
            child,
            control,
            port,
            iqn: iqn.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !t.admin(&["--mode", "sys", "--op", "show"]).0 {
            assert!(
                Instant::now() < deadline,
                "tgtd's management socket did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let lun = backing.display().to_string();
        for args in [
            vec![
                "--lld",
                "iscsi",
                "--mode",
                "target",
                "--op",
                "new",
                "--tid",
                "1",
                "--targetname",
                iqn,
            ],
            vec![
                "--lld",
                "iscsi",
                "--mode",
                "logicalunit",
                "--op",
                "new",
                "--tid",
                "1",
                "--lun",
                "1",
                "-b",
                &lun,
            ],
            vec![
                "--lld", "iscsi", "--mode", "target", "--op", "bind", "--tid", "1", "-I", "ALL",
            ],
        ] {
            let (ok, out) = t.admin(&args);
            assert!(ok, "tgtadm {args:?} failed:\n{out}");
        }
        t
    }

    fn admin(&self, args: &[&str]) -> (bool, String) {
        let tgtadm = require_tool_in(&["/usr/sbin", "/sbin"], "tgtadm");
        let out = run(
            Command::new(tgtadm)
                .args(["-C", &self.control.to_string()])
                .args(args),
            Duration::from_secs(30),
        );
        (out.status.success(), text(&out))
    }

    /// The iSCSI URL of LUN 1.
    pub fn url(&self) -> String {
        format!("iscsi://127.0.0.1:{}/{}/1", self.port, self.iqn)
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        let _ = self.admin(&[
            "--lld", "iscsi", "--mode", "target", "--op", "delete", "--force", "--tid", "1",
        ]);
        // tgtd ignores SIGTERM; this is its shutdown command.
        let _ = self.admin(&["--mode", "sys", "--op", "delete"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        // Killed and reaped by pid if it did not go by itself.
        let _ = super::wait_or_kill(&mut self.child, deadline, Duration::from_millis(50));
        for suffix in ["", ".lock"] {
            let _ = std::fs::remove_file(
                Path::new(SOCKET_DIR).join(format!("socket.{}{suffix}", self.control)),
            );
        }
    }
}
