//! The OCF resource agents for Pacemaker (`contrib/ocf/`, installed by `twinsan ocf install`) against a running
//! manual-mode pair on 127.0.0.11 and 127.0.0.12: ClusterLabs' `ocf-tester` (Debian `resource-agents`) checks the
//! OCF contract of both (meta-data against ra-api-1.dtd, validate-all, monitor 7 when stopped, idempotent
//! start/stop/promote/demote, unknown actions 3); then the target agent serves the target on a portal of its own
//! (127.0.0.10, the VIP of `twinsan init`) where libiscsi's `iscsi-inq` logs in, and a demotion takes it down.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cluster::{in_sync, Cluster, IQN};
use common::{require_tool, require_tool_in, run, text, twinsan_bin};

const PORTAL: &str = "127.0.0.10:3260";

/// `twinsan ocf install --prefix DIR/ocf`: the folder with the agents.
fn install_agents(c: &Cluster) -> PathBuf {
    let prefix = c.dir.path().join("ocf");
    let out = run(
        Command::new(twinsan_bin())
            .args(["ocf", "install", "--prefix"])
            .arg(&prefix),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "ocf install:\n{}", text(&out));
    let dir = prefix.join("lib/ocf/resource.d/twinsan");
    for agent in ["volume", "target"] {
        assert!(
            text(&out).contains(&dir.join(agent).display().to_string()),
            "{}",
            text(&out)
        );
    }
    dir
}

/// `ocf-tester -n NAME -o K=V... AGENT`: its exit status and output.
fn ocf_tester(name: &str, agent: &Path, params: &[(&str, String)]) -> (bool, String) {
    let tester = require_tool_in(&["/usr/sbin", "/sbin"], "ocf-tester");
    let mut cmd = Command::new(tester);
    cmd.args(["-v", "-n", name]);
    for (k, v) in params {
        cmd.arg("-o").arg(format!("{k}={v}"));
    }
    cmd.arg(agent).env("OCF_ROOT", "/usr/lib/ocf");
    let out = run(&mut cmd, Duration::from_secs(300));
    (out.status.success(), text(&out))
}

/// Runs one action of an agent as Pacemaker would: its exit status and output.
fn agent(agent: &Path, action: &str, params: &[(&str, String)]) -> (i32, String) {
    let mut cmd = Command::new(agent);
    cmd.arg(action)
        .env("OCF_ROOT", "/usr/lib/ocf")
        .env("OCF_RESOURCE_INSTANCE", "test")
        .env("OCF_RESKEY_CRM_meta_timeout", "30000");
    for (k, v) in params {
        cmd.env(format!("OCF_RESKEY_{k}"), v);
    }
    let out = run(&mut cmd, Duration::from_secs(60));
    (out.status.code().unwrap_or(-1), text(&out))
}

fn inq(url: &str) -> (bool, String) {
    let out = run(
        Command::new(require_tool("iscsi-inq")).arg(url),
        Duration::from_secs(30),
    );
    (out.status.success(), text(&out))
}

fn pair(tag: &str) -> Cluster {
    assert!(
        Path::new("/usr/lib/ocf/lib/heartbeat/ocf-shellfuncs").is_file(),
        "resource-agents is not installed: run scripts/install-test-deps"
    );
    require_tool("xmllint");
    let mut c = Cluster::init(tag, true, "64M");
    c.start(1);
    c.start(2);
    c.skip_initial_sync(&[1, 2]);
    c
}

#[test]
fn cluster_ocf_tester_passes_for_both_agents() {
    let c = pair("ocf-tester");
    let agents = install_agents(&c);
    let bin = twinsan_bin().display().to_string();
    let config = c.config.display().to_string();

    let volume = [
        ("config", config.clone()),
        ("volume", "vol0".to_owned()),
        ("node", "node1".to_owned()),
        ("binary", bin.clone()),
    ];
    let (ok, out) = ocf_tester("vol0", &agents.join("volume"), &volume);
    assert!(
        ok && out.contains("passed all tests"),
        "ocf-tester volume:\n{out}\n{}",
        c.logs()
    );
    println!("ocf-tester volume:\n{out}");
    // ocf-tester leaves it stopped (volume down): the monitor says so, and a start brings it back in sync.
    assert_eq!(agent(&agents.join("volume"), "monitor", &volume).0, 7);
    let (rc, out) = agent(&agents.join("volume"), "start", &volume);
    assert_eq!(rc, 0, "{out}");
    c.wait_status(1, Duration::from_secs(30), "in sync again", in_sync);
    let (rc, out) = agent(&agents.join("volume"), "promote", &volume);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(agent(&agents.join("volume"), "monitor", &volume).0, 8);
    // Node2's copy is Secondary and running.
    let volume2 = [
        ("config", config.clone()),
        ("volume", "vol0".to_owned()),
        ("node", "node2".to_owned()),
        ("binary", bin.clone()),
    ];
    assert_eq!(agent(&agents.join("volume"), "monitor", &volume2).0, 0);
    // Promoting node2 while node1 is Primary and connected is refused, with twinsan's reason as the exit reason.
    let (rc, out) = agent(&agents.join("volume"), "promote", &volume2);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("volume primary vol0"), "{out}");

    let target = [
        ("config", config.clone()),
        ("iqn", IQN.to_owned()),
        ("portal", PORTAL.to_owned()),
        ("node", "node1".to_owned()),
        ("binary", bin.clone()),
    ];
    let (ok, out) = ocf_tester("vol0-target", &agents.join("target"), &target);
    assert!(
        ok && out.contains("passed all tests"),
        "ocf-tester target:\n{out}\n{}",
        c.logs()
    );
    println!("ocf-tester target:\n{out}");

    // Started by the agent: served on the portal (a real login and INQUIRY), not at the node's own address.
    let (rc, out) = agent(&agents.join("target"), "start", &target);
    assert_eq!(rc, 0, "{out}");
    let (ok, out) = inq(&format!("iscsi://{PORTAL}/{IQN}/1"));
    assert!(ok, "iscsi-inq at {PORTAL}:\n{out}");
    let (ok, _) = inq(&c.url(1));
    assert!(
        !ok,
        "the agent's target is not also served at node1's own address"
    );
    let status = c.cli(1, &["target", "status", IQN, "--json"]);
    assert!(status.contains("\"mode\":\"started\""), "{status}");

    // Not on node2, whose volume is Secondary: the start is refused with the reason.
    let target2 = [
        ("config", config),
        ("iqn", IQN.to_owned()),
        ("portal", "127.0.0.12:3261".to_owned()),
        ("node", "node2".to_owned()),
        ("binary", bin),
    ];
    let (rc, out) = agent(&agents.join("target"), "start", &target2);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("Primary"), "{out}");
    assert_eq!(agent(&agents.join("target"), "monitor", &target2).0, 7);

    // A demotion takes the target down first; the monitor then reports it stopped.
    let (rc, out) = agent(&agents.join("volume"), "demote", &volume);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(agent(&agents.join("target"), "monitor", &target).0, 7);
    let (ok, _) = inq(&format!("iscsi://{PORTAL}/{IQN}/1"));
    assert!(!ok, "a Secondary serves nothing");
    let (rc, out) = agent(&agents.join("target"), "stop", &target);
    assert_eq!(rc, 0, "{out}");
}

#[test]
fn cluster_ocf_agents_refuse_bad_parameters() {
    let c = pair("ocf-params");
    let agents = install_agents(&c);
    let bin = twinsan_bin().display().to_string();
    let config = c.config.display().to_string();
    // No such volume: validate-all says so (OCF_ERR_CONFIGURED, 6).
    let (rc, out) = agent(
        &agents.join("volume"),
        "validate-all",
        &[
            ("config", config.clone()),
            ("volume", "nosuch".into()),
            ("binary", bin.clone()),
        ],
    );
    assert_eq!(rc, 6, "{out}");
    assert!(out.contains("no volume named nosuch"), "{out}");
    // No such binary: OCF_ERR_INSTALLED (5) for a start, "not running" for a probe.
    let missing = [
        ("config", config.clone()),
        ("volume", "vol0".into()),
        ("binary", "/nonexistent/twinsan".into()),
    ];
    assert_eq!(agent(&agents.join("volume"), "start", &missing).0, 5);
    // Unknown action: OCF_ERR_UNIMPLEMENTED (3).
    assert_eq!(agent(&agents.join("volume"), "migrate_to", &missing).0, 3);
    // A target that is not configured.
    let (rc, out) = agent(
        &agents.join("target"),
        "validate-all",
        &[
            ("config", config),
            ("iqn", "iqn.2000-01.example:none".into()),
            ("portal", PORTAL.into()),
            ("binary", bin),
        ],
    );
    assert_eq!(rc, 6, "{out}");
    assert!(out.contains("no target iqn.2000-01.example:none"), "{out}");
}
