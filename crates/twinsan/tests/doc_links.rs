//! The links of README.md, ARCHITECTURE.md and docs/*.md: every relative link names a file of the repository (and
//! a heading of it, for `#anchor`), none leaves the repository, and README.md links nothing outside it at all — a
//! reader of the repository alone can follow every one. http(s) links in docs/ are allowed and not fetched.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

/// The documents checked, relative to the root.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut docs = vec![PathBuf::from("README.md"), PathBuf::from("ARCHITECTURE.md")];
    let mut in_docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| p.strip_prefix(root).expect("under the root").to_path_buf())
        .collect();
    in_docs.sort();
    docs.extend(in_docs);
    docs
}

/// The text outside code: fenced blocks and inline code spans are blanked, so `[a](b)` shown as code is no link.
fn prose(markdown: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            out.push('\n');
            continue;
        }
        if !fenced {
            let mut in_code = false;
            for c in line.chars() {
                if c == '`' {
                    in_code = !in_code;
                    out.push(' ');
                } else {
                    out.push(if in_code { ' ' } else { c });
                }
            }
        }
        out.push('\n');
    }
    out
}

/// Every inline link target `[text](target)` of `markdown`.
fn link_targets(markdown: &str) -> Vec<String> {
    let text = prose(markdown);
    let mut targets = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        if rest[..at].contains('[') {
            if let Some(end) = after.find(')') {
                let target = after[..end].split_whitespace().next().unwrap_or("");
                targets.push(target.to_owned());
            }
        }
        rest = after;
    }
    targets
}

/// The anchors GitHub gives the headings of `markdown`: lower case, punctuation dropped, spaces as `-`, a repeated
/// one suffixed `-1`, `-2`, ...
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut unique = slug.clone();
        let mut n = 1;
        while seen.contains(&unique) {
            unique = format!("{slug}-{n}");
            n += 1;
        }
        seen.insert(unique);
    }
    seen
}

/// `path` with `.` and `..` resolved lexically; `None` if it climbs above its start.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// What is wrong with `target`, linked from `doc` (relative to `root`), if anything.
fn check(root: &Path, doc: &Path, target: &str) -> Option<String> {
    if target.starts_with("http://") || target.starts_with("https://") {
        return (doc == Path::new("README.md"))
            .then(|| "README.md links outside the repository".to_owned());
    }
    if target.contains("://") || target.starts_with("mailto:") {
        return Some("not a file of the repository".into());
    }
    let (file, anchor) = match target.split_once('#') {
        Some((f, a)) => (f, Some(a)),
        None => (target, None),
    };
    let linked = if file.is_empty() {
        doc.to_path_buf()
    } else {
        let Some(p) = normalize(&doc.parent().unwrap_or(Path::new("")).join(file)) else {
            return Some("leaves the repository".into());
        };
        p
    };
    let full = root.join(&linked);
    if !full.exists() {
        return Some(format!("{} does not exist", linked.display()));
    }
    if let Some(anchor) = anchor {
        if full.extension().is_some_and(|e| e == "md") {
            let text = std::fs::read_to_string(&full).expect("read");
            if !anchors(&text).contains(anchor) {
                return Some(format!("no heading #{anchor} in {}", linked.display()));
            }
        }
    }
    None
}

#[test]
fn every_link_of_the_docs_stays_in_the_repository_and_exists() {
    let root = repo_root();
    let mut broken = Vec::new();
    let mut count = 0;
    for doc in documents(&root) {
        let text = std::fs::read_to_string(root.join(&doc)).expect("read");
        for target in link_targets(&text) {
            count += 1;
            if let Some(why) = check(&root, &doc, &target) {
                broken.push(format!("{}: ({target}): {why}", doc.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(count > 10, "only {count} links found: the parser is broken");
}

#[test]
fn the_checker_finds_what_it_must() {
    let root = repo_root();
    let readme = Path::new("README.md");
    let doc = Path::new("docs/failover.md");
    assert!(check(&root, readme, "../shared/SPEC.md").is_some());
    assert!(check(&root, doc, "../../x.md").is_some());
    assert!(check(&root, readme, "https://example.com/").is_some());
    assert!(check(&root, doc, "https://example.com/").is_none());
    assert!(check(&root, doc, "missing.md").is_some());
    assert!(check(&root, doc, "split-brain.md").is_none());
    assert!(check(&root, doc, "split-brain.md#no-such-heading").is_some());
    assert!(check(&root, doc, "../README.md").is_none());
    assert_eq!(
        link_targets("a [b](c.md) `[d](e.md)` [f](g.md#h \"t\")\n```\n[i](j)\n```\n"),
        ["c.md", "g.md#h"]
    );
    assert!(anchors("## `[[target]]`\n## A b\n## A b\n").contains("target"));
    assert!(anchors("## A b\n## A b\n").contains("a-b-1"));
}
