//! Config reload of a running managed pair (`twinsan node reload`, SIGHUP): a second volume added behind the
//! same target and removed again under writes at the virtual IP, and invalid new configs refused as a whole.
//!
//! Both nodes of a managed `twinsan init` config (127.0.0.11 and 127.0.0.12), the target at the VIP
//! 127.0.0.10:3260; QEMU's iSCSI driver writes, `tests/tools/iscsi-hold.c` keeps one session open across the
//! reloads, `iscsi-ls` lists the LUNs. Run one at a time with the other two-daemon tests (nextest test group
//! `cluster`): they share init's addresses.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{in_sync, online, placement, stack_on, Cluster, IQN};
use common::hold::Hold;
use common::{qemu, require_tool, run, scsi, text};

const VIP_PORTAL: &str = "iscsi://127.0.0.10:3260";
const LUN1_LINE: &str = r#"lun = [ { lun = 1, volume = "vol0" } ]"#;
const LUN12_LINE: &str = r#"lun = [ { lun = 1, volume = "vol0" }, { lun = 2, volume = "vol1" } ]"#;
const VOL1_SECTION: &str = r#"
[[volume]]
name = "vol1"
uuid = "5c1e0d2a9b7f4e3c8a6d1f0e2b4c6a81"
port = 7790
protocol = "C"
fencing = "resource-only"
after_sb_0pri = "disconnect"
after_sb_1pri = "disconnect"
after_sb_2pri = "disconnect"
disk = { node1 = { path = "node1/vol1.img" }, node2 = { path = "node2/vol1.img" } }
"#;

fn lun_url(lun: u64) -> String {
    format!("{VIP_PORTAL}/{IQN}/{lun}")
}

/// The config with vol1 added as LUN 2 of the target.
fn with_vol1(config: &str) -> String {
    assert!(
        config.contains(LUN1_LINE),
        "unexpected init config:\n{config}"
    );
    let config = config.replace(LUN1_LINE, LUN12_LINE);
    let at = config
        .find("\n[[target]]")
        .or_else(|| config.find("\n# The iSCSI target"))
        .unwrap_or(config.len());
    format!("{}{VOL1_SECTION}{}", &config[..at], &config[at..])
}

/// The resource names of a status, sorted.
fn resource_names(s: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = s["resources"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| r["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The LUN numbers `iscsi-ls -s` lists for the target at the VIP (its REPORT LUNS, through libiscsi).
fn served_luns() -> Vec<u64> {
    served_luns_to("iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-ls")
        .unwrap_or_else(|e| panic!("iscsi-ls: {e}"))
}

/// [`served_luns`] as initiator `initiator`; `Err` with iscsi-ls's output when it does not see the target.
fn served_luns_to(initiator: &str) -> Result<Vec<u64>, String> {
    let out = run(
        Command::new(require_tool("iscsi-ls")).args(["-s", "-i", initiator, VIP_PORTAL]),
        Duration::from_secs(60),
    );
    let all = text(&out);
    if !out.status.success() || !all.contains(IQN) {
        return Err(format!("{IQN} not listed for {initiator}:\n{all}"));
    }
    let mut luns: Vec<u64> = all
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Lun:"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    luns.sort_unstable();
    Ok(luns)
}

/// What one TEST UNIT READY got: (status, sense key, ASC, ASCQ).
type Tur = (u8, u8, u8, u8);

/// Answers as a reader expects them: `CHECK CONDITION 6h 3Fh/0Eh`.
fn senses(t: &[Tur]) -> String {
    let all: Vec<String> = t.iter().map(|t| sense(*t)).collect();
    format!("[{}]", all.join(", "))
}

fn sense((status, key, asc, ascq): Tur) -> String {
    match status {
        scsi::GOOD => "GOOD".to_string(),
        scsi::CHECK_CONDITION => format!("CHECK CONDITION key {key:X}h {asc:02X}h/{ascq:02X}h"),
        other => format!("status {other:#04x}"),
    }
}

/// What these tests ask of a held session.
trait Checks {
    fn tur(&mut self, lun: u64) -> Tur;
    fn attentions(&mut self, lun: u64) -> Vec<Tur>;
    fn luns(&mut self) -> Vec<u64>;
}

impl Checks for Hold {
    fn tur(&mut self, lun: u64) -> Tur {
        let answer = self.ask(&format!("tur {lun}"));
        let field = |k: &str| {
            answer
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("no {k} in {answer:?}"))
                .to_string()
        };
        let hex =
            |k: &str| u8::from_str_radix(field(k).trim_start_matches("0x"), 16).unwrap_or(0xff);
        (
            field("status=").parse().unwrap_or(0xff),
            field("key=").parse().unwrap_or(0xff),
            hex("asc="),
            hex("ascq="),
        )
    }

    /// TEST UNIT READY to `lun` until it is GOOD (at most 8 times): every unit attention on the way, in order.
    fn attentions(&mut self, lun: u64) -> Vec<Tur> {
        let mut seen = Vec::new();
        for _ in 0..8 {
            let t = self.tur(lun);
            if t.0 == scsi::GOOD {
                return seen;
            }
            assert_eq!(
                (t.0, t.1),
                (scsi::CHECK_CONDITION, 6),
                "LUN {lun}: TEST UNIT READY failed other than with a unit attention: {t:?} (after {seen:?})"
            );
            seen.push(t);
        }
        panic!("LUN {lun}: still a unit attention after 8 TEST UNIT READY: {seen:?}");
    }

    /// REPORT LUNS on this session.
    fn luns(&mut self) -> Vec<u64> {
        let answer = self.ask("luns");
        assert!(answer.starts_with("status=0 "), "REPORT LUNS: {answer}");
        answer
            .split("luns=")
            .nth(1)
            .unwrap_or_default()
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect()
    }
}

/// `node reload` on node `n`, which must apply; its message.
fn reload(c: &Cluster, n: usize) -> String {
    let out = c.cli(n, &["node", "reload"]);
    assert!(out.contains("applied"), "node{n}: node reload: {out}");
    println!("node{n}: node reload: {}", out.trim());
    out
}

const REPORTED_LUNS_CHANGED: Tur = (scsi::CHECK_CONDITION, 6, 0x3f, 0x0e);

#[test]
fn reload_adds_and_removes_a_second_volume_under_writes() {
    require_tool("qemu-io");
    require_tool("iscsi-ls");
    let mut c = Cluster::init("reload-lun", false, "64M");
    let p = c.start_both_until_stack();
    let q = 3 - p;
    let original = std::fs::read_to_string(&c.config).expect("read config");
    assert_eq!(served_luns(), [1]);

    // A session held open across both reloads.
    let mut hold = Hold::login(&lun_url(1), "iqn.2025-08.local.test:reload-hold");
    let before = hold.attentions(1);
    println!(
        "held session: unit attentions at login: {}",
        senses(&before)
    );
    assert_eq!(hold.luns(), [1]);

    // A bounded write loop at LUN 1 through the VIP: 6000 writes of 64 KiB over 1000 slots with a pattern
    // each, 4 ms apart (at least 24 s), so it runs across both reloads even on a loaded machine (the add and
    // remove take 2-3 s on a quiet one); if it still ends first, the test says so instead of passing unloaded.
    let chunk = 64u64 << 10;
    let plan = qemu::plan(13, 64 << 20, chunk, 1000);
    let plan: Vec<(u64, u8)> = plan.iter().cycle().take(6000).copied().collect();
    let mut cmds = Vec::new();
    for (off, pattern) in &plan {
        cmds.push(format!("write -P {pattern:#04x} {off} {chunk}"));
        cmds.push("sleep 4".to_string());
    }
    // What each slot holds at the end: the last pattern written there.
    let mut last = std::collections::BTreeMap::new();
    for (off, pattern) in &plan {
        last.insert(*off, *pattern);
    }
    let final_plan: Vec<(u64, u8)> = last.into_iter().collect();

    let lun2_plan = qemu::plan(29, 60 << 20, chunk, 64);
    let mut removed_at = Instant::now();
    let mut added_at = Instant::now();
    let stream = qemu::stream_via(
        qemu::line_buffered(|program| Command::new(program)),
        &lun_url(1),
        &cmds,
        |progress| {
            progress.wait_acked(50);
            // --- Add vol1 as LUN 2: the config (the one file of both nodes), the disks and their metadata, a
            // reload on each node.
            std::fs::write(&c.config, with_vol1(&original)).expect("write config");
            for n in [1, 2] {
                let f = std::fs::File::create(c.folder().join(format!("node{n}/vol1.img")))
                    .expect("create vol1.img");
                f.set_len(64 << 20).expect("size vol1.img");
                let out = c.cli(n, &["volume", "create-md", "vol1"]);
                println!(
                    "node{n}: volume create-md vol1: {}",
                    out.lines().next().unwrap_or("")
                );
            }
            let msg = reload(&c, p);
            for change in ["add volume vol1", "add LUN 2 (volume vol1)"] {
                assert!(msg.contains(change), "node{p}: no {change:?} in {msg}");
            }
            // The two nodes run different configs until the other one reloads too: status says so.
            let s = c.wait_cluster(p, Duration::from_secs(10), "the config warning", |s| {
                s["config_warning"].is_string()
            });
            println!(
                "node{p}: status while the configs differ: {}",
                s["config_warning"]
            );
            assert!(c.cli(p, &["status"]).contains("WARNING:"));
            reload(&c, q);
            c.wait_cluster(p, Duration::from_secs(10), "no config warning", |s| {
                s["config_warning"].is_null()
            });
            // New metadata is Inconsistent on both: the first primary is the admin's (as for any new volume).
            c.wait_for(Duration::from_secs(20), "vol1 connected", || {
                let s = c.volume_status(p, "vol1");
                (s["peers"][0]["connection"] == "Connected").then_some(())
            });
            let sync_start = Instant::now();
            c.cli(p, &["volume", "primary", "--force", "vol1"]);
            let s = c.wait_for(Duration::from_secs(60), "vol1 in sync", || {
                let s = c.volume_status(q, "vol1");
                in_sync(&s).then_some(s)
            });
            let sync = sync_start.elapsed();
            println!(
                "vol1 (LUN 2): initial sync of 64 MiB took {sync:?}; resync_sent_kib on node{p}: {}",
                c.volume_status(p, "vol1")["peers"][0]["resync_sent_kib"]
            );
            assert_eq!(s["role"], "Secondary", "{s:#}");
            // The stack on p: vol0 and vol1 promoted there, LUN 2 started there.
            c.wait_cluster(q, Duration::from_secs(20), "LUN 2 on the stack node", |s| {
                stack_on(s) == Some(format!("node{p}"))
                    && placement(s, "vol1").map(|r| r.0) == Some(vec![format!("node{p}")])
                    && placement(s, "vol0-lun2").map(|r| r.1) == Some(vec![format!("node{p}")])
            });
            added_at = Instant::now();
            let acked = progress.acked();
            assert!(acked < plan.len(), "the writes ended before LUN 2 served");
            println!("LUN 2 serving after {acked} writes to LUN 1");
            // The held session: REPORTED LUNS DATA HAS CHANGED, then LUN 2 in its REPORT LUNS.
            let seen = hold.attentions(1);
            println!(
                "held session after the add: TEST UNIT READY LUN 1: {}",
                senses(&seen)
            );
            assert!(
                seen.contains(&REPORTED_LUNS_CHANGED),
                "no 3F/0E: {seen:?}\n{}",
                c.logs()
            );
            assert_eq!(hold.luns(), [1, 2]);
            let seen2 = hold.attentions(2);
            println!("held session: TEST UNIT READY LUN 2: {}", senses(&seen2));
            assert_eq!(served_luns(), [1, 2]);
            // LUN 2 takes writes and reads them back through the VIP.
            qemu::write(&lun_url(2), &lun2_plan, chunk);
            qemu::verify(&lun_url(2), &lun2_plan, chunk);

            // --- Remove it again: LUN 2 and vol1 out of the file; the node not running the stack reloads first
            // (its copy is Secondary and serves nothing: taken down), then the stack's node (LUN 2 leaves the
            // running target, then vol1 is demoted and taken down).
            // A volume cannot go while a LUN is still of it: that file is refused, nothing changes.
            let half = with_vol1(&original).replace(VOL1_SECTION, "");
            std::fs::write(&c.config, &half).expect("write config");
            for n in [q, p] {
                let out = c.cli_fails(n, &["node", "reload"]);
                println!(
                    "node{n}: vol1 removed but still LUN 2: refused: {}",
                    out.trim()
                );
                assert!(
                    out.contains(r#"lun[2].volume: no [[volume]] is named "vol1""#),
                    "{out}"
                );
            }
            assert_eq!(served_luns(), [1, 2]);
            std::fs::write(&c.config, &original).expect("write config");
            let msg = reload(&c, q);
            assert!(msg.contains("remove volume vol1"), "{msg}");
            let s = c.cluster_status(p);
            assert_eq!(stack_on(&s), Some(format!("node{p}")), "{s:#}");
            assert_eq!(served_luns(), [1, 2], "LUN 2 served until its node reloads");
            let msg = reload(&c, p);
            for change in ["remove LUN 2 (volume vol1)", "remove volume vol1"] {
                assert!(msg.contains(change), "node{p}: no {change:?} in {msg}");
            }
            assert!(!msg.contains("left running"), "{msg}");
            removed_at = Instant::now();
            let acked = progress.acked();
            assert!(acked < plan.len(), "the writes ended before the removal");
            println!("LUN 2 removed after {acked} writes to LUN 1");
        },
    );
    // Every write to LUN 1 completed: the reloads cost it nothing worse than a unit attention.
    let acked = stream
        .lines
        .iter()
        .filter(|(_, l)| l.starts_with("wrote "))
        .count();
    let failed: Vec<&str> = stream
        .output
        .lines()
        .filter(|l| l.contains("error") || l.contains("failed"))
        .collect();
    println!(
        "LUN 1: {acked} of {} writes acknowledged, {} write errors, {} after LUN 2 served, {} after its removal, longest write {:?}",
        plan.len(),
        failed.len(),
        stream.acked_after(added_at),
        stream.acked_after(removed_at),
        stream.longest()
    );
    assert_eq!(acked, plan.len(), "{}", stream.output);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        stream.acked_after(removed_at) > 0,
        "no write after the removal"
    );
    qemu::verify(&lun_url(1), &final_plan, chunk);

    // After the removal: the held session is told, LUN 2 answers LOGICAL UNIT NOT SUPPORTED, REPORT LUNS lists 1.
    let seen = hold.attentions(1);
    println!(
        "held session after the removal: TEST UNIT READY LUN 1: {}",
        senses(&seen)
    );
    assert!(
        seen.contains(&REPORTED_LUNS_CHANGED),
        "no 3F/0E: {seen:?}\n{}",
        c.logs()
    );
    let gone = hold.tur(2);
    println!(
        "held session: TEST UNIT READY LUN 2 after the removal: {}",
        sense(gone)
    );
    assert_eq!(gone, (scsi::CHECK_CONDITION, 5, 0x25, 0x00));
    assert_eq!(hold.luns(), [1]);
    assert_eq!(served_luns(), [1]);
    for n in [1, 2] {
        let s = c.cluster_status(n);
        assert_eq!(stack_on(&s), Some(format!("node{p}")), "node{n}: {s:#}");
        assert!(placement(&s, "vol1").is_none(), "node{n}: {s:#}");
        assert!(placement(&s, "vol0-lun2").is_none(), "node{n}: {s:#}");
        let refused = c.cli_fails(n, &["volume", "status", "vol1"]);
        assert!(refused.contains("vol1"), "{refused}");
        assert!(in_sync(&c.status(n)), "node{n}: vol0 {:#}", c.status(n));
    }
    // vol1's two copies, released by the removal, hold the same data (its first 60 MiB, before the metadata at
    // the end of each file, which differs per node).
    let (a, b) = (
        c.folder().join("node1/vol1.img"),
        c.folder().join("node2/vol1.img"),
    );
    assert_eq!(
        common::cluster::first_difference(&a, &b, 60 << 20),
        None,
        "vol1's copies differ"
    );
    drop(hold);
    for n in [1, 2] {
        assert!(c.stop(n), "node{n} did not stop cleanly:\n{}", c.logs());
    }
}

#[test]
fn reload_refuses_an_invalid_config_and_changes_nothing() {
    require_tool("iscsi-ls");
    let mut c = Cluster::init("reload-bad", false, "64M");
    let p = c.start_both_until_stack();
    let original = std::fs::read_to_string(&c.config).expect("read config");
    // The CLI needs a readable config to find the admin socket: a good copy next to the file being edited.
    let good = c.folder().join("good.toml");
    std::fs::write(&good, &original).expect("write good.toml");
    let good_cli = |n: usize, args: &[&str]| -> String {
        let mut cmd = Command::new(common::twinsan_bin());
        cmd.arg("--config")
            .arg(&good)
            .args(["--node", &format!("node{n}")])
            .args(args);
        let out = run(&mut cmd, Duration::from_secs(60));
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // What a reload could change, as `status --json` shows it: the resources, where the stack runs, the
    // volumes this node runs (name, role), the config warning.
    type Snapshot = (
        Vec<String>,
        Option<String>,
        Vec<(String, String)>,
        serde_json::Value,
    );
    let snapshot = |n: usize| -> Snapshot {
        let s: serde_json::Value =
            serde_json::from_str(good_cli(n, &["status", "--json"]).trim()).expect("status JSON");
        let volumes = s["volumes"]
            .as_array()
            .map(|vs| {
                vs.iter()
                    .map(|v| (v["name"].to_string(), v["role"].to_string()))
                    .collect()
            })
            .unwrap_or_default();
        (
            resource_names(&s),
            stack_on(&s),
            volumes,
            s["config_warning"].clone(),
        )
    };
    for n in [1, 2] {
        c.wait_cluster(
            n,
            Duration::from_secs(10),
            "the stack in this node's view",
            |s| stack_on(s) == Some(format!("node{p}")) && online(s).len() == 2,
        );
    }
    let before = [snapshot(1), snapshot(2)];
    assert_eq!(before[0].1, Some(format!("node{p}")));
    assert!(before[0].3.is_null(), "{:?}", before[0]);
    assert_eq!(served_luns(), [1]);
    let unchanged = |case: &str| {
        for n in [1, 2] {
            assert_eq!(
                snapshot(n),
                before[n - 1],
                "{case}: node{n}'s status changed"
            );
        }
        assert_eq!(served_luns(), [1], "{case}: the served LUNs changed");
    };

    // Each bad file: (what is wrong, the file, what the error must name). The CLI reads the file too, so a
    // file that does not parse or validate is refused by the command before it asks the daemon; SIGHUP below
    // shows the daemon refusing the same.
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "parse error",
            format!("{original}\n[[volume]\nname = \"x\"\n"),
            "TOML",
        ),
        (
            "validation error: a LUN of an unknown volume",
            original.replace(
                LUN1_LINE,
                r#"lun = [ { lun = 1, volume = "vol0" }, { lun = 2, volume = "vol9" } ]"#,
            ),
            "vol9",
        ),
        (
            "a change that cannot be made live: a node's address",
            original.replacen(r#"address = "127.0.0.11""#, r#"address = "127.0.0.13""#, 1),
            "node[node1].address",
        ),
        (
            "a change that cannot be made live: the cluster name",
            original.replacen(r#"name = "c""#, r#"name = "d""#, 1),
            "cluster.name",
        ),
        (
            "a valid new volume and LUN whose disk has no metadata (no `volume create-md`)",
            with_vol1(&original),
            "vol1",
        ),
    ];
    for n in [1, 2] {
        let f =
            std::fs::File::create(c.folder().join(format!("node{n}/vol1.img"))).expect("create");
        f.set_len(64 << 20).expect("size vol1.img");
    }
    for (case, file, names) in &cases {
        assert_ne!(file, &original, "{case}: the file did not change");
        std::fs::write(&c.config, file).expect("write config");
        for n in [1, 2] {
            let out = c.cli_fails(n, &["node", "reload"]);
            println!(
                "{case}: node{n}: `twinsan node reload` refused: {}",
                out.trim()
            );
            assert!(
                out.contains(names),
                "{case}: the error does not name {names}:\n{out}"
            );
            assert!(!out.contains("applied"), "{case}: {out}");
        }
        unchanged(case);
    }

    // SIGHUP with a file that does not parse: the daemon logs the refusal and keeps running as it was.
    std::fs::write(&c.config, &cases[0].1).expect("write config");
    let pid = c.nodes[p - 1].as_ref().map(|n| n.pid()).unwrap_or(0);
    // SAFETY: kill(2) on the pid of the node daemon this test started.
    unsafe {
        libc::kill(pid as i32, libc::SIGHUP);
    }
    c.wait_for(
        Duration::from_secs(20),
        "the SIGHUP refusal in the log",
        || {
            c.log(p)
                .lines()
                .find(|l| l.contains("SIGHUP") && l.contains("reload refused"))
                .map(|l| println!("node{p}: {l}"))
        },
    );
    unchanged("SIGHUP with a file that does not parse");

    // The good file again: nothing to apply.
    std::fs::write(&c.config, &original).expect("write config");
    for n in [1, 2] {
        let out = c.cli(n, &["node", "reload"]);
        assert!(out.contains("unchanged"), "node{n}: {out}");
    }
    unchanged("the original file reloaded");

    // A valid change of the access rules applies live: an allow-list keeps other initiators out of the
    // running target (login and discovery), the listed one still logs in; the file back, everyone again.
    let allowed = "iqn.2025-08.local.test:reload-allowed";
    let allow = original.replace(LUN1_LINE, &format!("{LUN1_LINE}\nallow = [\"{allowed}\"]"));
    std::fs::write(&c.config, &allow).expect("write config");
    for n in [1, 2] {
        let msg = reload(&c, n);
        assert!(msg.contains("change the access rules of target"), "{msg}");
    }
    assert_eq!(served_luns_to(allowed), Ok(vec![1]));
    let refused = served_luns_to("iqn.2025-08.local.test:reload-other").expect_err("not allowed");
    println!(
        "allow-list applied live: another initiator: {}",
        refused.trim().replace('\n', " | ")
    );
    std::fs::write(&c.config, &original).expect("write config");
    for n in [1, 2] {
        reload(&c, n);
    }
    assert_eq!(served_luns(), [1]);
    for n in [1, 2] {
        assert!(c.stop(n), "node{n} did not stop cleanly:\n{}", c.logs());
    }
}
