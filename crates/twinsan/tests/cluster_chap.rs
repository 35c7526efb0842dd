//! CHAP and mutual CHAP on a managed cluster's target: both nodes of a `twinsan init` config with the CHAP keys
//! added to its `[[target]]`, libiscsi's `iscsi-inq` (login) and `iscsi-ls` (discovery) as the initiators, at the
//! virtual IP 127.0.0.10:3260.
//!
//! Run one at a time with the other two-daemon tests (nextest test group `cluster`): they share init's addresses.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::cluster::{Cluster, IQN};
use common::{require_tool, run, text};

const VIP: &str = "127.0.0.10:3260";
const USER: &str = "alice";
const SECRET: &str = "alice-secret-1234";
const TARGET_USER: &str = "vol0-target";
const TARGET_SECRET: &str = "target-secret-5678";

/// Adds CHAP (with `mutual`, mutual CHAP too) to the target of `c`'s config; the secrets go into root-only files in
/// its folder, with a trailing newline as an editor leaves it. Returns the initiator secret's file.
fn enable_chap(c: &Cluster, mutual: bool) -> PathBuf {
    let write_secret = |name: &str, secret: &str| {
        let path = c.folder().join(name);
        std::fs::write(&path, format!("{secret}\n")).expect("write secret file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    };
    let chap_file = write_secret("chap.secret", SECRET);
    let mut keys = format!("chap_user = \"{USER}\"\nchap_secret_file = \"chap.secret\"\n");
    if mutual {
        write_secret("mutual-chap.secret", TARGET_SECRET);
        keys += &format!(
            "mutual_chap_user = \"{TARGET_USER}\"\nmutual_chap_secret_file = \"mutual-chap.secret\"\n"
        );
    }
    let config = std::fs::read_to_string(&c.config).expect("read config");
    let lun = "lun = [ { lun = 1, volume = \"vol0\" } ]\n";
    assert_eq!(config.matches(lun).count(), 1, "init's target:\n{config}");
    std::fs::write(&c.config, config.replacen(lun, &format!("{lun}{keys}"), 1))
        .expect("write config");
    chap_file
}

/// `twinsan status --json` on node `n`: the node where vol0-target runs, if it runs on one.
fn target_on(c: &Cluster, n: usize) -> Option<usize> {
    let out = c.cli(n, &["status", "--json"]);
    let s: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("status JSON ({e}):\n{out}"));
    let target = s["resources"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == "vol0-target")?;
    match target["started"].as_array()?.as_slice() {
        [node] => node.as_str()?.strip_prefix("node")?.parse().ok(),
        _ => None,
    }
}

/// `iscsi://[CREDS@]127.0.0.10:3260/IQN/1[QUERY]`.
fn lun_url(creds: &str, query: &str) -> String {
    format!("iscsi://{creds}{VIP}/{IQN}/1{query}")
}

/// `iscsi://[CREDS@]127.0.0.10:3260[QUERY]`, for discovery.
fn portal_url(creds: &str, query: &str) -> String {
    format!("iscsi://{creds}{VIP}{query}")
}

/// `USER%SECRET@`.
fn creds(user: &str, secret: &str) -> String {
    format!("{user}%{secret}@")
}

/// `?target_user=..&target_password=..`: libiscsi then asks the target to prove it knows that secret.
fn mutual_query(secret: &str) -> String {
    format!("?target_user={TARGET_USER}&target_password={secret}")
}

/// Logs in with `iscsi-inq` and asks for the standard INQUIRY data: whether that worked, and the output.
fn inq(url: &str) -> (bool, String) {
    let out = run(
        Command::new(require_tool("iscsi-inq")).arg(url),
        Duration::from_secs(30),
    );
    let t = text(&out);
    (out.status.success() && t.contains("Vendor:TWINSAN"), t)
}

/// A discovery session with `iscsi-ls`: whether it listed the target, and the output.
fn discovered(url: &str) -> (bool, String) {
    let out = run(
        Command::new(require_tool("iscsi-ls")).arg(url),
        Duration::from_secs(30),
    );
    let t = text(&out);
    (
        out.status.success() && t.contains(&format!("Target:{IQN}")),
        t,
    )
}

/// Starts both nodes and waits until the target runs on one of them and a login with the right credentials
/// (`url`) gets through; returns that node.
fn start_serving(c: &mut Cluster, url: &str) -> usize {
    c.start(1);
    c.start(2);
    let p = c.wait_for(
        Duration::from_secs(30),
        "vol0-target started on one node",
        || target_on(c, 1),
    );
    c.wait_for(
        Duration::from_secs(30),
        "a login with the right credentials",
        || inq(url).0.then_some(()),
    );
    p
}

#[track_caller]
fn assert_refused(c: &Cluster, url: &str, what: &str) {
    let (ok, out) = inq(url);
    assert!(!ok, "{what}: the login was accepted:\n{out}\n{}", c.logs());
}

#[track_caller]
fn assert_hidden(c: &Cluster, url: &str, what: &str) {
    let (listed, out) = discovered(url);
    assert!(
        !listed,
        "{what}: discovery listed the target:\n{out}\n{}",
        c.logs()
    );
}

#[track_caller]
fn assert_no_secret_logged(c: &Cluster) {
    let logs = c.logs();
    for secret in [SECRET, TARGET_SECRET] {
        assert!(
            !logs.contains(secret),
            "a CHAP secret is in the logs:\n{logs}"
        );
    }
}

#[test]
fn cluster_chap_guards_login_and_discovery_at_the_vip_on_either_node() {
    let mut c = Cluster::init("cluster-chap", false, "64M");
    enable_chap(&c, false);
    let right = lun_url(&creds(USER, SECRET), "");
    let p = start_serving(&mut c, &right);

    assert_refused(&c, &lun_url("", ""), "no CHAP credentials");
    assert_refused(
        &c,
        &lun_url(&creds(USER, "not-the-secret-99"), ""),
        "a wrong secret",
    );
    assert_refused(
        &c,
        &lun_url(&creds("mallory", SECRET), ""),
        "a wrong user name",
    );
    assert!(
        c.log(p).contains("CHAP authentication failed"),
        "no log line for the failed CHAP logins:\n{}",
        c.log(p)
    );

    // Discovery requires the same credentials, as `twinsan serve` does.
    assert_hidden(&c, &portal_url("", ""), "discovery without credentials");
    assert_hidden(
        &c,
        &portal_url(&creds(USER, "not-the-secret-99"), ""),
        "discovery with a wrong secret",
    );
    let (listed, out) = discovered(&portal_url(&creds(USER, SECRET), ""));
    assert!(
        listed && out.contains("Portal:127.0.0.10:3260"),
        "discovery with the right credentials does not list the target at the VIP:\n{out}\n{}",
        c.logs()
    );

    // The other node read the same keys from its own copy of the config: after a failover it asks the same.
    c.kill(p);
    let q = 3 - p;
    c.wait_for(
        Duration::from_secs(60),
        "vol0-target started on the other node",
        || (target_on(&c, q) == Some(q)).then_some(()),
    );
    c.wait_for(
        Duration::from_secs(30),
        "a login at the VIP after the failover",
        || inq(&right).0.then_some(()),
    );
    assert_refused(
        &c,
        &lun_url("", ""),
        "no CHAP credentials after the failover",
    );
    assert_refused(
        &c,
        &lun_url(&creds(USER, "not-the-secret-99"), ""),
        "a wrong secret after the failover",
    );
    assert_hidden(
        &c,
        &portal_url("", ""),
        "discovery without credentials after the failover",
    );
    assert_no_secret_logged(&c);
}

#[test]
fn cluster_mutual_chap_authenticates_both_ways_at_the_vip() {
    let mut c = Cluster::init("cluster-mutual-chap", false, "64M");
    enable_chap(&c, true);
    let initiator = creds(USER, SECRET);
    let both = mutual_query(TARGET_SECRET);
    start_serving(&mut c, &lun_url(&initiator, &both));

    // The target requires mutual CHAP: an initiator that does not challenge it is refused.
    assert_refused(&c, &lun_url(&initiator, ""), "one-way CHAP");
    assert_refused(&c, &lun_url("", ""), "no CHAP credentials");
    assert_refused(
        &c,
        &lun_url(&creds(USER, "not-the-secret-99"), &both),
        "a wrong initiator secret",
    );
    // The initiator verifies the target: one that expects another target secret refuses the login.
    assert_refused(
        &c,
        &lun_url(&initiator, &mutual_query("not-the-target-secret")),
        "the initiator expecting another target secret",
    );

    let (listed, out) = discovered(&portal_url(&initiator, &both));
    assert!(
        listed,
        "discovery with both secrets does not list the target:\n{out}\n{}",
        c.logs()
    );
    assert_hidden(&c, &portal_url("", ""), "discovery without credentials");
    assert_hidden(&c, &portal_url(&initiator, ""), "one-way discovery");
    assert_hidden(
        &c,
        &portal_url(&initiator, &mutual_query("not-the-target-secret")),
        "discovery expecting another target secret",
    );
    assert_no_secret_logged(&c);
}

#[test]
fn cluster_node_run_refuses_a_secret_file_others_can_read() {
    let c = Cluster::init("cluster-chap-file", false, "16M");
    let file = enable_chap(&c, false);
    let node_run = || {
        let out = run(
            Command::new(common::twinsan_bin())
                .args(["node", "run", "--config"])
                .arg(&c.config)
                .args(["--node", "node1"]),
            Duration::from_secs(60),
        );
        (out.status.code(), text(&out))
    };
    let shown = file.display().to_string();

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, out) = node_run();
    assert_eq!(
        code,
        Some(4),
        "a group- and world-readable secret file:\n{out}"
    );
    for part in [
        "target[iqn.2025-08.local.twinsan:vol0].chap_secret_file",
        &format!("{shown} has mode 0644"),
        &format!("chmod 600 {shown}"),
    ] {
        assert!(out.contains(part), "{part:?} is not in:\n{out}");
    }

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::write(&file, "too-short\n").expect("write");
    let (code, out) = node_run();
    assert_eq!(code, Some(4), "a 9-character secret:\n{out}");
    assert!(out.contains("at least 12"), "{out}");
    assert!(
        !out.contains("too-short"),
        "the secret is in the message:\n{out}"
    );

    // Other commands check the keys but do not read the secret files (the witness machine has none): without a
    // daemon to ask, `target ls` stops at "cannot reach the node" (3), not at the config (4).
    std::fs::remove_file(&file).expect("remove");
    let out = run(
        Command::new(common::twinsan_bin())
            .arg("--config")
            .arg(&c.config)
            .args(["--node", "node1", "target", "ls"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(3), "target ls:\n{}", text(&out));
}
