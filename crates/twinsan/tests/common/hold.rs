//! One iSCSI session held open by `tests/tools/iscsi-hold.c` (built at test time against libiscsi): it logs in,
//! answers NOP-Ins, never reconnects by itself, and runs the commands written to its stdin one line at a time.
//! Stopped by its pid on drop.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::scsi;

/// A held session.
pub struct Hold {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Hold {
    /// Logs in to `url` as `initiator` and waits until the session is in full feature phase.
    pub fn login(url: &str, initiator: &str) -> Hold {
        let tool = scsi::libiscsi_tool("iscsi-hold");
        let mut child = Command::new(tool)
            .args([url, initiator, "7"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn iscsi-hold");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut hold = Hold {
            child,
            stdin,
            lines,
        };
        let first = hold.line();
        assert_eq!(first, "ready", "iscsi-hold did not log in");
        hold
    }

    /// The next line iscsi-hold writes (at most 60 s).
    pub fn line(&mut self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("iscsi-hold gave no answer in 60 s ({e})"))
    }

    /// Runs one command (`tur LUN`, `luns`) and returns its answer line.
    pub fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("write to iscsi-hold");
        self.stdin.flush().expect("flush iscsi-hold");
        self.line()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the iscsi-hold this guard started and has not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
