//! Golden scheduler cases, as Pacemaker keeps its scheduler regression tests: each file in `tests/scheduler/`
//! holds an `[input]` (configuration and cluster state) and an `[expected]` schedule — the actions, in order, and
//! substrings that must appear among the notes. The runner runs every file and, for each mismatch, prints the
//! case, what was expected and what came out.
//!
//! `GOLDEN_SHOW=1 cargo test -p twinsan-cluster --test golden -- --nocapture` prints every schedule, matching or
//! not.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use twinsan_cluster::scheduler::{schedule, ClusterInput, Schedule};

/// One golden case file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GoldenCase {
    /// What the case is about, in a sentence.
    about: String,
    input: ClusterInput,
    expected: Expected,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    /// The actions, as `Action`'s `Display` writes them, in order.
    actions: Vec<String>,
    /// Substrings each of which must appear in some note.
    #[serde(default)]
    notes: Vec<String>,
}

fn case_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scheduler");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

fn render(schedule: &Schedule) -> String {
    let mut out = String::from("  actions:\n");
    if schedule.actions.is_empty() {
        out.push_str("    (none)\n");
    }
    for action in &schedule.actions {
        out.push_str(&format!("    {action}\n"));
    }
    out.push_str("  notes:\n");
    for note in &schedule.notes {
        out.push_str(&format!("    {note}\n"));
    }
    out
}

/// Runs one case; `Err` carries the report of a mismatch.
fn run(path: &Path, show: bool) -> Result<(), String> {
    let name = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let case: GoldenCase =
        toml::from_str(&text).map_err(|e| format!("{name}: not a golden case: {e}"))?;
    let got = schedule(&case.input);
    let actions: Vec<String> = got.actions.iter().map(|a| a.to_string()).collect();
    let missing: Vec<&String> = case
        .expected
        .notes
        .iter()
        .filter(|want| !got.notes.iter().any(|note| note.contains(want.as_str())))
        .collect();
    if show {
        println!("== {name}: {}\n{}", case.about, render(&got));
    }
    if actions == case.expected.actions && missing.is_empty() {
        return Ok(());
    }
    let mut report = format!("== {name}: {}\nexpected:\n  actions:\n", case.about);
    if case.expected.actions.is_empty() {
        report.push_str("    (none)\n");
    }
    for action in &case.expected.actions {
        report.push_str(&format!("    {action}\n"));
    }
    report.push_str("  notes containing:\n");
    for want in &case.expected.notes {
        let mark = if missing.contains(&want) {
            "MISSING "
        } else {
            ""
        };
        report.push_str(&format!("    {mark}{want:?}\n"));
    }
    report.push_str("actual:\n");
    report.push_str(&render(&got));
    Err(report)
}

#[test]
fn golden_scheduler_cases() {
    let files = case_files();
    assert!(files.len() >= 20, "only {} golden cases found", files.len());
    let show = std::env::var_os("GOLDEN_SHOW").is_some();
    let failures: Vec<String> = files.iter().filter_map(|f| run(f, show).err()).collect();
    for failure in &failures {
        eprintln!("{failure}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden cases do not match (reports above)",
        failures.len(),
        files.len()
    );
}
