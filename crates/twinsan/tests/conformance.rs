//! libiscsi's conformance suite, `iscsi-test-cu`, against `twinsan serve`: every test runs and none fails, and
//! the iSCSI protocol suites run without a single SKIPPED.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{require_tool, run, text, Serve, TempDir};

const INITIATOR_1: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test";
const INITIATOR_2: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2";
/// The suites that test the iSCSI layer itself; none of their tests may be skipped.
const PROTOCOL_SUITES: [&str; 4] = ["iSCSIcmdsn", "iSCSIdatasn", "iSCSIResiduals", "iSCSITMF"];

/// `tests  TOTAL  RAN  PASSED  FAILED  INACTIVE` from CUnit's run summary.
fn test_counts(out: &str) -> Option<[u64; 5]> {
    let line = out.lines().find(|l| l.trim_start().starts_with("tests "))?;
    let nums: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    nums.try_into().ok()
}

/// Names of tests that failed, as SUITE.TEST.
fn failed_tests(out: &str) -> Vec<String> {
    let (mut suite, mut test) = (String::new(), String::new());
    let mut failed = Vec::new();
    for line in out.lines() {
        let l = line.trim();
        if let Some(s) = l.strip_prefix("Suite: ") {
            suite = s.to_string();
        }
        if let Some(t) = l.strip_prefix("Test: ") {
            test = t.split(" ...").next().unwrap_or(t).to_string();
        }
        // CUnit ends a failed test's report with a bare FAILED (or "...FAILED" on the Test line).
        if l == "FAILED" || l.ends_with("...FAILED") {
            failed.push(format!("{suite}.{test}"));
        }
    }
    failed.sort();
    failed.dedup();
    failed
}

/// SKIPPED lines inside the given suite's block of output.
fn skipped_in_suite(out: &str, suite: &str) -> Vec<String> {
    let mut inside = false;
    let mut hits = Vec::new();
    for line in out.lines() {
        if let Some(s) = line.trim().strip_prefix("Suite: ") {
            inside = s == suite;
        } else if line.starts_with("Run Summary") {
            inside = false;
        }
        if inside && line.contains("SKIPPED") {
            hits.push(line.trim().to_string());
        }
    }
    hits
}

#[test]
fn conformance_iscsi_test_cu_has_no_failures() {
    let tool = require_tool("iscsi-test-cu");
    let dir = TempDir::new("conformance");
    let img = dir.path().join("lun1.img");
    let lun = format!("1={}", img.display());
    let serve = Serve::start(
        "iqn.2025-08.local.twinsan:conformance",
        &["--lun", &lun, "--create", "256M"],
    );

    let out = run(
        Command::new(tool).args(["-d", "-i", INITIATOR_1, "-I", INITIATOR_2, &serve.url(1)]),
        Duration::from_secs(900),
    );
    let out_text = text(&out);
    // Keep the full report where a developer can read it after a failure.
    let report = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("iscsi-test-cu.txt");
    let _ = std::fs::write(&report, &out_text);

    let counts = test_counts(&out_text).unwrap_or_else(|| {
        panic!(
            "no CUnit run summary in the output (see {}):\n{out_text}",
            report.display()
        )
    });
    let [total, ran, passed, failed, _inactive] = counts;
    let failures = failed_tests(&out_text);
    eprintln!(
        "iscsi-test-cu: {total} tests, {ran} run, {passed} passed, {failed} failed (report: {})",
        report.display()
    );
    assert_eq!(
        failed,
        0,
        "iscsi-test-cu failures: {failures:?}\nserver log:\n{}",
        serve.log()
    );
    assert!(failures.is_empty(), "failed tests: {failures:?}");
    assert_eq!(ran, total, "every registered test must run");
    assert!(
        total >= 615,
        "libiscsi 1.19 registers 615 tests, saw {total}"
    );
    assert!(
        out.status.success(),
        "iscsi-test-cu exited with {}",
        out.status
    );
    for suite in PROTOCOL_SUITES {
        assert!(
            out_text.contains(&format!("Suite: {suite}")),
            "suite {suite} did not run"
        );
        let skipped = skipped_in_suite(&out_text, suite);
        assert!(skipped.is_empty(), "suite {suite} skipped: {skipped:?}");
    }
}

#[test]
fn summary_parsers_read_cunit_output() {
    let sample = "Suite: iSCSIcmdsn\n  Test: A ...passed\n  Test: B ...    [SKIPPED] x\nFAILED\n\
                  Run Summary:    Type  Total    Ran Passed Failed Inactive\n\
                  \x20             suites    134    134    n/a      0        0\n\
                  \x20              tests    615    615    614      1        0\n";
    assert_eq!(test_counts(sample), Some([615, 615, 614, 1, 0]));
    assert_eq!(failed_tests(sample), vec!["iSCSIcmdsn.B".to_string()]);
    assert_eq!(skipped_in_suite(sample, "iSCSIcmdsn").len(), 1);
    assert!(skipped_in_suite(sample, "iSCSITMF").is_empty());
}
