//! The metrics endpoint of a managed pair, scraped by a real Prometheus server (Debian's `prometheus`): one
//! Primary, writes counted on it, replication traffic on the secondary, and after a kill -9 of the primary a
//! failover counted on the survivor, which sees the killed node offline. Each node's own output passes
//! `promtool check metrics`, and every `twinsan_*` family it serves is documented in docs/monitoring.md.
//!
//! Run with the other two-daemon tests (nextest test group `cluster`): it uses init's addresses and the
//! endpoints' default port 9942 on them.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::cluster::{in_sync, Cluster};
use common::{free_port, http, qemu, require_tool, TempDir};

const VIP_URL: &str = "iscsi://127.0.0.10:3260/iqn.2025-08.local.twinsan:vol0/1";

/// A Prometheus server this test started, killed by its pid on drop.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: TempDir,
}

impl Prometheus {
    /// Scrapes both nodes every second into a fresh TSDB.
    fn start() -> Prometheus {
        let bin = require_tool("prometheus");
        let dir = TempDir::new("prometheus");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: twinsan\n    static_configs:\n      \
             - targets: ['127.0.0.11:9942', '127.0.0.12:9942']\n",
        )
        .expect("write prometheus.yml");
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The samples of the instant query `q`: (labels, value).
    fn query(&self, q: &str) -> Option<Vec<(serde_json::Value, f64)>> {
        let path = format!("/api/v1/query?query={}", http::encode(q));
        let answer = http::get(&self.addr, &path).ok()?;
        let v: serde_json::Value = serde_json::from_str(&answer.body).ok()?;
        if v["status"] != "success" {
            return None;
        }
        Some(
            v["data"]["result"]
                .as_array()?
                .iter()
                .filter_map(|r| {
                    let value = r["value"][1].as_str()?.parse().ok()?;
                    Some((r["metric"].clone(), value))
                })
                .collect(),
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the child this guard started and has not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Node `n`'s `/metrics` in the Prometheus text format.
fn scrape(n: usize) -> String {
    let answer = http::get(&format!("127.0.0.1{n}:9942"), "/metrics").expect("GET /metrics");
    assert_eq!(answer.status, 200, "{}", answer.headers);
    assert!(
        answer
            .headers
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        answer.headers
    );
    answer.body
}

/// `promtool check metrics` on `text`: its complaints, if any.
fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new(require_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The `twinsan_*` family names of a text-format scrape (from its TYPE lines).
fn families(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|n| n.starts_with("twinsan_"))
        .map(String::from)
        .collect()
}

/// The value of the sample of `text` whose line starts with `series` followed by a space.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn prometheus_scrapes_the_pair_and_sees_a_failover() {
    require_tool("qemu-io");
    let mut c = Cluster::init("metrics", false, "64M");
    let p = c.start_both_until_stack();
    let s = 3 - p;
    for n in [1, 2] {
        c.wait_status(n, Duration::from_secs(60), "both copies UpToDate", in_sync);
    }

    // Writes through the VIP: counted on the Primary, replicated to the secondary.
    let plan = qemu::plan(11, 64 << 20, 64 << 10, 64);
    qemu::write(VIP_URL, &plan, 64 << 10);

    // Each node's own output is valid, documented and complete.
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/monitoring.md"),
    )
    .expect("read docs/monitoring.md");
    for n in [1, 2] {
        let text = scrape(n);
        if let Err(why) = promtool_check(&text) {
            panic!("promtool check metrics on node{n}'s output:\n{why}\n--- output:\n{text}");
        }
        let served = families(&text);
        for name in &served {
            assert!(
                doc.contains(&format!("`{name}`")),
                "{name} (node{n}) is not in docs/monitoring.md"
            );
        }
        for wanted in [
            "twinsan_volume_primary",
            "twinsan_volume_up_to_date",
            "twinsan_volume_split_brain",
            "twinsan_volume_suspended",
            "twinsan_peer_connected",
            "twinsan_peer_out_of_sync_bytes",
            "twinsan_peer_resync_remaining_bytes",
            "twinsan_replication_sent_bytes_total",
            "twinsan_replication_received_bytes_total",
            "twinsan_replication_ack_duration_seconds",
            "twinsan_cluster_node_online",
            "twinsan_cluster_resource_running",
            "twinsan_cluster_failcount",
            "twinsan_cluster_failovers_total",
            "twinsan_build_info",
        ] {
            assert!(
                served.iter().any(|f| f == wanted),
                "node{n} serves no {wanted}:\n{text}"
            );
        }
        assert!(text.contains("\nprocess_cpu_seconds_total "), "{text}");
    }
    let primary = scrape(p);
    let target = "target=\"iqn.2025-08.local.twinsan:vol0\",lun=\"1\"";
    let writes = sample(
        &primary,
        &format!("twinsan_scsi_commands_total{{{target},op=\"write\"}}"),
    )
    .unwrap_or(0.0);
    assert!(
        writes >= 64.0,
        "node{p} counted {writes} writes for 64 sent:\n{primary}"
    );
    let written = sample(
        &primary,
        &format!("twinsan_scsi_bytes_total{{{target},direction=\"write\"}}"),
    )
    .unwrap_or(0.0);
    assert!(
        written >= (64 * 64 * 1024) as f64,
        "node{p} counted {written} bytes written:\n{primary}"
    );
    let acks: f64 = primary
        .lines()
        .find(|l| l.starts_with("twinsan_replication_ack_duration_seconds_count{volume=\"vol0\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(
        acks >= 64.0,
        "node{p} timed {acks} acknowledgements:\n{primary}"
    );
    assert!(
        sample(
            &primary,
            "twinsan_iscsi_sessions{target=\"iqn.2025-08.local.twinsan:vol0\"}"
        )
        .is_some(),
        "{primary}"
    );

    // The same through a real Prometheus server.
    let prom = Prometheus::start();
    let instance = |n: usize| format!("127.0.0.1{n}:9942");
    c.wait_for(
        Duration::from_secs(30),
        "Prometheus scraped both nodes",
        || {
            let up = prom.query("up{job=\"twinsan\"} == 1")?;
            (up.len() == 2).then_some(())
        },
    );
    let primaries = c.wait_for(
        Duration::from_secs(15),
        "one twinsan_volume_primary == 1",
        || {
            prom.query("twinsan_volume_primary == 1")
                .filter(|r| !r.is_empty())
        },
    );
    assert_eq!(primaries.len(), 1, "{primaries:?}");
    assert_eq!(primaries[0].0["instance"], instance(p), "{primaries:?}");
    assert_eq!(primaries[0].0["volume"], "vol0");
    let writes = prom
        .query(&format!(
            "sum(twinsan_scsi_commands_total{{instance=\"{}\",op=\"write\"}})",
            instance(p)
        ))
        .unwrap_or_default();
    assert!(
        writes.first().is_some_and(|(_, v)| *v >= 64.0),
        "{writes:?}"
    );
    let received = prom
        .query(&format!(
            "twinsan_replication_received_bytes_total{{instance=\"{}\",volume=\"vol0\"}}",
            instance(s)
        ))
        .unwrap_or_default();
    assert!(
        received
            .first()
            .is_some_and(|(_, v)| *v >= (64 * 64 * 1024) as f64),
        "node{s} received {received:?}"
    );
    let before = prom
        .query(&format!(
            "twinsan_cluster_failovers_total{{instance=\"{}\"}}",
            instance(s)
        ))
        .and_then(|r| r.first().map(|(_, v)| *v))
        .expect("the survivor's failover count");

    // kill -9 of the primary: the survivor counts a failover and sees the killed node offline.
    c.kill(p);
    c.wait_cluster(s, Duration::from_secs(30), "the stack moved", |st| {
        common::cluster::stack_on(st) == Some(format!("node{s}"))
    });
    let after = c.wait_for(
        Duration::from_secs(20),
        "twinsan_cluster_failovers_total grew",
        || {
            let r = prom.query(&format!(
                "twinsan_cluster_failovers_total{{instance=\"{}\"}}",
                instance(s)
            ))?;
            let v = r.first()?.1;
            (v > before).then_some(v)
        },
    );
    let offline = c.wait_for(Duration::from_secs(20), "the killed node offline", || {
        prom.query(&format!(
            "twinsan_cluster_node_online{{instance=\"{}\",node=\"node{p}\"}} == 0",
            instance(s)
        ))
        .filter(|r| r.len() == 1)
    });
    let primaries = c.wait_for(
        Duration::from_secs(15),
        "the survivor is the one Primary",
        || {
            prom.query("twinsan_volume_primary == 1")
                .filter(|r| r.len() == 1 && r[0].0["instance"] == instance(s))
        },
    );
    eprintln!(
        "metrics: node{p} killed; failovers on node{s} {before} -> {after}; offline {:?}; primaries {:?}",
        offline[0].0, primaries[0].0
    );
    // The survivor's output is still valid with its peer gone.
    if let Err(why) = promtool_check(&scrape(s)) {
        panic!("promtool check metrics on node{s} after the failover:\n{why}");
    }
    assert!(c.stop(s), "node{s} did not stop cleanly:\n{}", c.logs());
}
