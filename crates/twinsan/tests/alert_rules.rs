//! The monitoring files of `contrib/`: the alert rules pass `promtool check rules` (lint errors fatal) and their unit
//! tests (`promtool test rules`), every alert has a severity, a summary, a description, and a test where it fires
//! and one where it does not; the example scrape config passes `promtool check config`; the Grafana dashboard is
//! JSON with its variables and panels, and each of its queries parses as PromQL. Every `twinsan_*` metric these
//! files and docs/monitoring.md name is one of [`METRICS`], the families the node daemon exports, and the doc
//! describes every one of them.
//!
//! promtool comes with the Debian package `prometheus` (scripts/install-test-deps); without it the tests fail.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What a metric family is: a histogram also has `_bucket`, `_sum` and `_count` series.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Gauge,
    Counter,
    Histogram,
}

/// Every `twinsan_*` family a node's `/metrics` serves (besides the standard `process_*` ones), with its labels.
/// The metrics endpoint's own test compares its output with this list.
const METRICS: &[(&str, Kind, &[&str])] = &[
    ("twinsan_volume_primary", Kind::Gauge, &["volume"]),
    ("twinsan_volume_up_to_date", Kind::Gauge, &["volume"]),
    ("twinsan_volume_split_brain", Kind::Gauge, &["volume"]),
    ("twinsan_volume_suspended", Kind::Gauge, &["volume"]),
    ("twinsan_peer_connected", Kind::Gauge, &["volume", "peer"]),
    (
        "twinsan_peer_out_of_sync_bytes",
        Kind::Gauge,
        &["volume", "peer"],
    ),
    (
        "twinsan_peer_resync_remaining_bytes",
        Kind::Gauge,
        &["volume", "peer"],
    ),
    (
        "twinsan_replication_sent_bytes_total",
        Kind::Counter,
        &["volume", "peer"],
    ),
    (
        "twinsan_replication_received_bytes_total",
        Kind::Counter,
        &["volume", "peer"],
    ),
    (
        "twinsan_replication_ack_duration_seconds",
        Kind::Histogram,
        &["volume", "peer"],
    ),
    ("twinsan_cluster_node_online", Kind::Gauge, &["node"]),
    ("twinsan_cluster_witness_vote", Kind::Gauge, &[]),
    (
        "twinsan_cluster_resource_running",
        Kind::Gauge,
        &["resource", "node"],
    ),
    (
        "twinsan_cluster_failcount",
        Kind::Gauge,
        &["resource", "node"],
    ),
    ("twinsan_cluster_failovers_total", Kind::Counter, &[]),
    ("twinsan_iscsi_sessions", Kind::Gauge, &["target"]),
    (
        "twinsan_iscsi_login_failures_total",
        Kind::Counter,
        &["target", "reason"],
    ),
    (
        "twinsan_scsi_commands_total",
        Kind::Counter,
        &["target", "lun", "op"],
    ),
    (
        "twinsan_scsi_bytes_total",
        Kind::Counter,
        &["target", "lun", "direction"],
    ),
    (
        "twinsan_scsi_command_duration_seconds",
        Kind::Histogram,
        &["target", "lun", "op"],
    ),
    ("twinsan_build_info", Kind::Gauge, &["version"]),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// promtool from PATH; a missing one fails the test, as a check that did not run must not pass.
fn promtool() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("promtool"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("promtool is not installed: run scripts/install-test-deps (Debian package prometheus)")
        })
}

/// Runs promtool with `args` in `dir`; fails the test with its output unless it succeeds.
fn promtool_ok(dir: &Path, args: &[&str]) -> String {
    let out: Output = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run promtool: {e}"));
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{shown}",
        args.join(" "),
        out.status
    );
    shown
}

/// Every `twinsan_...` word of `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("twinsan_") {
        let preceded_by_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let word: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !preceded_by_word {
            names.insert(word.clone());
        }
        rest = &rest[at + word.len()..];
    }
    names
}

/// The family a series name belongs to: itself, or a histogram's for its `_bucket`, `_sum` and `_count`.
fn family(name: &str) -> Option<&'static str> {
    let known = |n: &str| METRICS.iter().find(|(m, _, _)| *m == n);
    if let Some((m, _, _)) = known(name) {
        return Some(m);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        known(base)
            .filter(|(_, kind, _)| *kind == Kind::Histogram)
            .map(|(m, _, _)| *m)
    })
}

/// The names of `text` that are no exported series.
fn unknown_metrics(text: &str) -> Vec<String> {
    metric_names(text)
        .into_iter()
        .filter(|n| family(n).is_none())
        .collect()
}

/// The alert names of the rules file, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

/// The text of each alert's rule, from its `- alert:` line to the next one.
fn alert_blocks(rules: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            blocks.push((name.trim().to_owned(), String::new()));
        } else if let Some((_, block)) = blocks.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    blocks
}

/// For each alert name of the promtool test file: (checked where it must not fire, checked where it fires).
/// An `alert_rule_test` entry expects it firing when the line after its `alertname:` opens a non-empty
/// `exp_alerts:` list.
fn alert_test_cases(tests: &str) -> std::collections::BTreeMap<String, (bool, bool)> {
    let mut cases = std::collections::BTreeMap::new();
    let lines: Vec<&str> = tests.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(at) = line.find("alertname:") else {
            continue;
        };
        let name: String = line[at + "alertname:".len()..]
            .trim()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        let next = lines.get(i + 1).map(|l| l.trim()).unwrap_or("");
        let fires = next.starts_with("exp_alerts:") && next != "exp_alerts: []";
        let entry = cases.entry(name).or_insert((false, false));
        if fires {
            entry.1 = true;
        } else {
            entry.0 = true;
        }
    }
    cases
}

#[test]
fn the_alert_rules_pass_promtool_check() {
    let shown = promtool_ok(
        &repo().join("contrib/prometheus"),
        &[
            "check",
            "rules",
            "--lint=all",
            "--lint-fatal",
            "twinsan-alerts.yml",
        ],
    );
    let count = alert_names(&read("contrib/prometheus/twinsan-alerts.yml")).len();
    assert!(
        shown.contains(&format!("SUCCESS: {count} rules found")),
        "promtool did not find the {count} alerts:\n{shown}"
    );
}

#[test]
fn the_alert_rules_pass_their_promtool_unit_tests() {
    let shown = promtool_ok(
        &repo().join("contrib/prometheus"),
        &["test", "rules", "twinsan-alerts.test.yml"],
    );
    assert!(shown.contains("SUCCESS"), "{shown}");
}

#[test]
fn every_alert_has_a_severity_a_summary_a_description_and_tests_both_ways() {
    let rules = read("contrib/prometheus/twinsan-alerts.yml");
    let blocks = alert_blocks(&rules);
    for required in [
        "TwinsanSplitBrain",
        "TwinsanPeerDisconnected",
        "TwinsanVolumeDegraded",
        "TwinsanVolumeOutOfSync",
        "TwinsanResyncStuck",
        "TwinsanNodeOffline",
        "TwinsanNoPrimary",
        "TwinsanTwoPrimaries",
        "TwinsanFailover",
        "TwinsanFailCountHigh",
        "TwinsanWitnessLost",
        "TwinsanIoSuspended",
        "TwinsanScrapeDown",
    ] {
        assert!(
            blocks.iter().any(|(n, _)| n == required),
            "no alert {required}"
        );
    }
    let cases = alert_test_cases(&read("contrib/prometheus/twinsan-alerts.test.yml"));
    let doc = read("docs/monitoring.md");
    for (name, block) in &blocks {
        assert!(
            block.contains("severity: critical") || block.contains("severity: warning"),
            "{name}: no severity critical or warning"
        );
        assert!(block.contains("summary:"), "{name}: no summary");
        assert!(block.contains("description:"), "{name}: no description");
        assert!(
            block.contains("`twinsan "),
            "{name}: the description names no twinsan command"
        );
        assert_eq!(
            cases.get(name),
            Some(&(true, true)),
            "{name}: (tested silent, tested firing) in twinsan-alerts.test.yml"
        );
        assert!(
            doc.contains(name.as_str()),
            "docs/monitoring.md does not describe {name}"
        );
    }
}

#[test]
fn the_example_scrape_config_passes_promtool_check() {
    let shown = promtool_ok(
        &repo().join("contrib/prometheus"),
        &["check", "config", "prometheus.example.yml"],
    );
    assert!(
        shown.contains("twinsan-alerts.yml"),
        "the config does not load the alert rules:\n{shown}"
    );
}

/// Every query of the dashboard: the panels' targets and the annotations.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    let mut queries = Vec::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        for target in panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target without expr: {target}"));
            queries.push(expr.to_owned());
        }
    }
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        if let Some(expr) = annotation["expr"].as_str() {
            queries.push(expr.to_owned());
        }
    }
    queries
}

#[test]
fn the_dashboard_is_json_with_its_variables_panels_and_queries_that_parse() {
    let text = read("contrib/grafana/twinsan-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).expect("the dashboard is not JSON");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );

    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    assert_eq!(variable("job")["type"], "query");
    assert_eq!(variable("volume")["type"], "query");

    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "panel id twice: {}",
            panel["id"]
        );
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "panel {}",
                panel["title"]
            );
        }
    }

    let queries = dashboard_queries(&dashboard);
    let all = queries.join("\n");
    for used in [
        "twinsan_volume_primary",
        "twinsan_peer_connected",
        "twinsan_volume_up_to_date",
        "twinsan_peer_out_of_sync_bytes",
        "twinsan_peer_resync_remaining_bytes",
        "twinsan_replication_sent_bytes_total",
        "twinsan_replication_received_bytes_total",
        "histogram_quantile(0.5, sum by (instance, volume, peer, le) (rate(twinsan_replication_ack_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (instance, volume, peer, le) (rate(twinsan_replication_ack_duration_seconds_bucket",
        "twinsan_scsi_commands_total",
        "twinsan_scsi_bytes_total",
        "histogram_quantile(0.99, sum by (instance, target, lun, op, le) (rate(twinsan_scsi_command_duration_seconds_bucket",
        "twinsan_iscsi_sessions",
        "twinsan_iscsi_login_failures_total",
        "twinsan_cluster_node_online",
        "twinsan_cluster_failcount",
        "twinsan_cluster_failovers_total",
    ] {
        assert!(all.contains(used), "no panel queries {used}");
    }

    // promtool has no bare expression check: each query, with Grafana's variables filled in, becomes a recording
    // rule of a scratch file, and `promtool check rules` parses it.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in queries.iter().enumerate() {
        let expr = query
            .replace("$__rate_interval", "1m")
            .replace("$__range", "6h")
            .replace("$volume", ".*")
            .replace("$job", "twinsan-pair1");
        assert!(
            !expr.contains('$'),
            "a variable the check does not fill in: {query}"
        );
        let quoted = serde_json::to_string(&expr).expect("quote");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("twinsan-test-dashboard-")
        .tempdir()
        .expect("create a temporary folder");
    std::fs::write(dir.path().join("queries.yml"), rules).expect("write queries.yml");
    let shown = promtool_ok(dir.path(), &["check", "rules", "queries.yml"]);
    assert!(
        shown.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{shown}"
    );
}

#[test]
fn every_metric_the_alerts_dashboard_and_doc_name_is_exported() {
    let mut unknown = Vec::new();
    for file in [
        "contrib/prometheus/twinsan-alerts.yml",
        "contrib/prometheus/twinsan-alerts.test.yml",
        "contrib/grafana/twinsan-dashboard.json",
        "docs/monitoring.md",
    ] {
        let text = read(file);
        assert!(
            !metric_names(&text).is_empty(),
            "{file} names no twinsan metric: the scan is broken"
        );
        unknown.extend(
            unknown_metrics(&text)
                .into_iter()
                .map(|n| format!("{file}: {n}")),
        );
    }
    assert!(
        unknown.is_empty(),
        "metrics the node does not export:\n{}",
        unknown.join("\n")
    );

    // The doc's table has a row for each family, naming its labels.
    let doc = read("docs/monitoring.md");
    for (name, _, labels) in METRICS {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}`")))
            .unwrap_or_else(|| panic!("docs/monitoring.md has no table row for {name}"));
        for label in *labels {
            assert!(
                row.contains(&format!("`{label}`")),
                "the row of {name} does not name its label {label}"
            );
        }
    }
}

#[test]
fn the_checks_find_what_they_must() {
    assert_eq!(
        metric_names(
            "a twinsan_peer_connected{x} rate(twinsan_x_total[1m]) my_twinsan_y twinsan-node"
        ),
        BTreeSet::from([
            "twinsan_peer_connected".to_owned(),
            "twinsan_x_total".to_owned()
        ])
    );
    assert_eq!(
        family("twinsan_scsi_command_duration_seconds_bucket"),
        Some("twinsan_scsi_command_duration_seconds")
    );
    assert_eq!(
        family("twinsan_scsi_commands_total_bucket"),
        None,
        "a counter has no buckets"
    );
    assert_eq!(
        unknown_metrics("twinsan_volume_primary twinsan_volume_primay"),
        ["twinsan_volume_primay"]
    );
    let tests = "      - {eval_time: 1m, alertname: A}\n      - eval_time: 2m\n        alertname: A\n        \
                 exp_alerts:\n          - exp_labels: {}\n      - eval_time: 3m\n        alertname: B\n        \
                 exp_alerts: []\n";
    let cases = alert_test_cases(tests);
    assert_eq!(cases.get("A"), Some(&(true, true)));
    assert_eq!(cases.get("B"), Some(&(true, false)));
    let rules =
        "    rules:\n      - alert: A\n        expr: x\n      - alert: B\n        expr: y\n";
    assert_eq!(alert_names(rules), ["A", "B"]);
    assert_eq!(
        alert_blocks(rules)[1],
        ("B".to_owned(), "        expr: y\n".to_owned())
    );
}
