//! libiscsi's conformance suite, `iscsi-test-cu`, against `twinsan serve` and, in the same run, tgt: every test
//! runs, none fails, the iSCSI protocol suites run without a single SKIPPED, and twinsan passes at least as many
//! tests as tgt and skips fewer.

mod common;

use std::process::Command;
use std::time::Duration;

use common::tgt::Tgt;
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

/// One iscsi-test-cu run: its output and the figures the issue tracker compares.
struct SuiteRun {
    text: String,
    success: bool,
    counts: [u64; 5],
    failures: Vec<String>,
    skipped: usize,
}

/// iscsi-test-cu as the conformance issue runs it: `-d`, both initiator names.
fn run_suite(url: &str, report_name: &str, context: impl Fn() -> String) -> SuiteRun {
    let tool = require_tool("iscsi-test-cu");
    let out = run(
        Command::new(tool).args(["-d", "-i", INITIATOR_1, "-I", INITIATOR_2, url]),
        Duration::from_secs(900),
    );
    let text = text(&out);
    // Keep the full report where a developer can read it after a failure.
    let report = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(report_name);
    let _ = std::fs::write(&report, &text);
    let counts = test_counts(&text).unwrap_or_else(|| {
        panic!(
            "no CUnit run summary from {url} (see {}):\n{text}\n{}",
            report.display(),
            context()
        )
    });
    let [total, ran, passed, failed, _] = counts;
    let skipped = text.lines().filter(|l| l.contains("SKIPPED")).count();
    eprintln!(
        "iscsi-test-cu at {url}: {total} tests, {ran} run, {passed} passed, {failed} failed, {skipped} SKIPPED lines \
         (report: {})",
        report.display()
    );
    SuiteRun {
        failures: failed_tests(&text),
        success: out.status.success(),
        text,
        counts,
        skipped,
    }
}

#[test]
fn conformance_iscsi_test_cu_has_no_failures_and_beats_tgt() {
    let dir = TempDir::new("conformance");
    let img = dir.path().join("lun1.img");
    let lun = format!("1={}", img.display());
    let serve = Serve::start(
        "iqn.2025-08.local.twinsan:conformance",
        &["--lun", &lun, "--create", "256M"],
    );
    let ours = run_suite(&serve.url(1), "iscsi-test-cu.txt", || serve.log());
    let [total, ran, passed, failed, _inactive] = ours.counts;
    assert_eq!(
        failed,
        0,
        "iscsi-test-cu failures: {:?}\nserver log:\n{}",
        ours.failures,
        serve.log()
    );
    assert!(
        ours.failures.is_empty(),
        "failed tests: {:?}",
        ours.failures
    );
    assert_eq!(ran, total, "every registered test must run");
    assert!(
        total >= 615,
        "libiscsi 1.19 registers 615 tests, saw {total}"
    );
    assert!(ours.success, "iscsi-test-cu exited with failure");
    for suite in PROTOCOL_SUITES {
        assert!(
            ours.text.contains(&format!("Suite: {suite}")),
            "suite {suite} did not run"
        );
        let skipped = skipped_in_suite(&ours.text, suite);
        assert!(skipped.is_empty(), "suite {suite} skipped: {skipped:?}");
    }
    drop(serve);

    // The same suite against tgt, same size, same machine, same run: twinsan must pass at least as many and skip
    // fewer (a SKIPPED test counts as passed in CUnit's summary, so both figures matter).
    let tgt_img = dir.path().join("tgt.img");
    std::fs::File::create(&tgt_img)
        .and_then(|f| f.set_len(256 << 20))
        .expect("create tgt's backing file");
    let tgt = Tgt::start("iqn.2025-08.local.twinsan:conformance-tgt", &tgt_img);
    let theirs = run_suite(&tgt.url(), "iscsi-test-cu-tgt.txt", String::new);
    drop(tgt);
    let [_, _, tgt_passed, tgt_failed, _] = theirs.counts;
    eprintln!(
        "twinsan: {passed} passed, {failed} failed, {} SKIPPED; tgt: {tgt_passed} passed, {tgt_failed} failed, {} SKIPPED",
        ours.skipped, theirs.skipped
    );
    assert!(
        passed >= tgt_passed,
        "twinsan passed {passed}, tgt {tgt_passed}"
    );
    assert!(
        ours.skipped < theirs.skipped,
        "twinsan printed {} SKIPPED lines, tgt {}",
        ours.skipped,
        theirs.skipped
    );
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
