//! Access control with real libiscsi initiators: CHAP, mutual CHAP and the initiator allow-list.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{require_tool, run, text, Serve, TempDir};

const IQN: &str = "iqn.2025-08.local.twinsan:access";

fn inq(url: &str, initiator: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(require_tool("iscsi-inq"));
    if let Some(i) = initiator {
        cmd.args(["-i", i]);
    }
    cmd.arg(url);
    let out = run(&mut cmd, Duration::from_secs(30));
    let t = text(&out);
    (out.status.success() && t.contains("Vendor:TWINSAN"), t)
}

fn ls(url: &str, initiator: &str) -> String {
    let out = run(
        Command::new(require_tool("iscsi-ls")).args(["-i", initiator, url]),
        Duration::from_secs(30),
    );
    text(&out)
}

fn lun_arg(dir: &TempDir) -> String {
    format!("1={}", dir.path().join("lun1.img").display())
}

#[test]
fn chap_requires_the_right_credentials() {
    let dir = TempDir::new("chap");
    let lun = lun_arg(&dir);
    let s = Serve::start(
        IQN,
        &[
            "--lun",
            &lun,
            "--create",
            "16M",
            "--chap",
            "alice:alice-secret-123",
        ],
    );
    let with = format!("iscsi://alice%alice-secret-123@{}/{IQN}/1", s.addr);
    let (ok, out) = inq(&with, None);
    assert!(
        ok,
        "login with the right CHAP secret failed:\n{out}\n{}",
        s.log()
    );

    let (ok, out) = inq(&s.url(1), None);
    assert!(!ok, "login without CHAP credentials was accepted:\n{out}");
    let wrong = format!("iscsi://alice%not-the-secret-1@{}/{IQN}/1", s.addr);
    let (ok, out) = inq(&wrong, None);
    assert!(!ok, "login with a wrong CHAP secret was accepted:\n{out}");
    let log = s.log();
    assert!(
        log.contains("CHAP authentication failed"),
        "no log line for the failed CHAP login:\n{log}"
    );
    assert!(
        !log.contains("alice-secret-123"),
        "the CHAP secret appears in the log"
    );
}

#[test]
fn mutual_chap_authenticates_both_ways() {
    let dir = TempDir::new("mutual");
    let lun = lun_arg(&dir);
    let s = Serve::start(
        IQN,
        &[
            "--lun",
            &lun,
            "--create",
            "16M",
            "--chap",
            "alice:alice-secret-123",
            "--mutual-chap",
            "target1:target-secret-456",
        ],
    );
    let good = format!("iscsi://alice%alice-secret-123@{}/{IQN}/1?target_user=target1&target_password=target-secret-456", s.addr);
    let (ok, out) = inq(&good, None);
    assert!(ok, "mutual CHAP login failed:\n{out}\n{}", s.log());

    // The initiator must refuse a target that cannot prove the secret the initiator expects.
    let bad = format!("iscsi://alice%alice-secret-123@{}/{IQN}/1?target_user=target1&target_password=other-secret-789", s.addr);
    let (ok, out) = inq(&bad, None);
    assert!(
        !ok,
        "initiator accepted a target answering with the wrong mutual secret:\n{out}"
    );

    // Without asking for mutual authentication the initiator is refused: the target requires it.
    let one_way = format!("iscsi://alice%alice-secret-123@{}/{IQN}/1", s.addr);
    let (ok, out) = inq(&one_way, None);
    assert!(
        !ok,
        "one-way CHAP accepted although mutual CHAP is configured:\n{out}"
    );
}

#[test]
fn allow_list_refuses_login_and_hides_the_target() {
    let dir = TempDir::new("allow");
    let lun = lun_arg(&dir);
    let allowed = "iqn.2025-08.local.client:allowed";
    let other = "iqn.2025-08.local.client:stranger";
    let s = Serve::start(IQN, &["--lun", &lun, "--create", "16M", "--allow", allowed]);

    let (ok, out) = inq(&s.url(1), Some(allowed));
    assert!(
        ok,
        "allowed initiator could not log in:\n{out}\n{}",
        s.log()
    );
    let (ok, out) = inq(&s.url(1), Some(other));
    assert!(!ok, "initiator outside --allow logged in:\n{out}");
    assert!(
        s.log().contains("not authorized"),
        "no log line for the refused initiator:\n{}",
        s.log()
    );

    let seen = ls(&s.portal_url(), allowed);
    assert!(
        seen.contains(IQN),
        "allowed initiator does not see the target in discovery:\n{seen}"
    );
    let hidden = ls(&s.portal_url(), other);
    assert!(
        !hidden.contains(IQN),
        "discovery shows the target to an initiator outside --allow:\n{hidden}"
    );
}
