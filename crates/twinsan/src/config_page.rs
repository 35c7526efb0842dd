//! The `twinsan.toml(5)` man page, made at run time from docs/configuration.md (embedded in the binary), so the
//! page and the document come from one source: headings become sections, each table row a tagged paragraph
//! (the key, then each column by its heading), code blocks no-fill text, lists bullets.

/// The configuration reference, as written for the repository.
const SOURCE: &str = include_str!("../../../docs/configuration.md");

/// The page, in roff (man macros), with the version in its footer.
pub fn render(version: &str) -> String {
    let mut out = String::new();
    out += &format!(".TH TWINSAN.TOML 5 \"\" \"twinsan {version}\" \"File Formats\"\n");
    out += ".SH NAME\ntwinsan.toml \\- the twinsan cluster configuration file\n";
    out += ".SH DESCRIPTION\n";
    let mut lines = SOURCE.lines().peekable();
    let mut in_code = false;
    let mut in_paragraph = false;
    while let Some(line) = lines.next() {
        if line.starts_with("```") {
            if in_code {
                out += ".fi\n.RE\n";
            } else {
                out += ".PP\n.RS 2\n.nf\n";
            }
            in_code = !in_code;
            in_paragraph = false;
            continue;
        }
        if in_code {
            out += &guard(&escape(line));
            out += "\n";
            continue;
        }
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            in_paragraph = false;
        } else if let Some(title) = line.strip_prefix("# ") {
            // The document's title is the page's NAME.
            let _ = title;
        } else if let Some(heading) = line.strip_prefix("## ") {
            out += &format!(".SH {}\n", plain(heading).to_uppercase());
            in_paragraph = false;
        } else if let Some(heading) = line.strip_prefix("### ") {
            out += &format!(".SS {}\n", plain(heading));
            in_paragraph = false;
        } else if trimmed.starts_with('|') {
            let header = cells(line);
            // The separator row.
            lines.next();
            while let Some(row) = lines.next_if(|l| l.trim_start().starts_with('|')) {
                out += &table_row(&header, &cells(row));
            }
            in_paragraph = false;
        } else if let Some(item) = trimmed.strip_prefix("- ") {
            out += ".IP \\(bu 2\n";
            out += &guard(&inline(item));
            out += "\n";
            in_paragraph = true;
        } else {
            if !in_paragraph {
                out += ".PP\n";
                in_paragraph = true;
            }
            out += &guard(&inline(trimmed));
            out += "\n";
        }
    }
    out += ".SH SEE ALSO\n\\fBtwinsan\\fR(1), \\fBtwinsan\\-init\\fR(1), \\fBtwinsan\\-node\\-run\\fR(1)\n";
    out
}

/// One table row: the first cell (the key) as the tag, then each other column under its heading.
fn table_row(header: &[&str], row: &[&str]) -> String {
    let mut out = String::from(".TP\n");
    out += &guard(&inline(row.first().copied().unwrap_or("")));
    out += "\n";
    for (i, (name, cell)) in header.iter().zip(row).enumerate().skip(1) {
        if i > 1 {
            out += ".br\n";
        }
        out += &guard(&format!("\\fI{}\\fR: {}", escape(name), inline(cell)));
        out += "\n";
    }
    out
}

/// The cells of a `| a | b |` row, trimmed.
fn cells(row: &str) -> Vec<&str> {
    let row = row.trim();
    let row = row.strip_prefix('|').unwrap_or(row);
    let row = row.strip_suffix('|').unwrap_or(row);
    row.split('|').map(str::trim).collect()
}

/// Markdown inline text to roff: `code` and **strong** in bold, [text](target) as its text.
fn inline(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '`' {
            if let Some(end) = rest[1..].find('`') {
                out += &format!("\\fB{}\\fR", escape(&rest[1..1 + end]));
                rest = &rest[2 + end..];
                continue;
            }
        } else if let Some(after) = rest.strip_prefix("**") {
            if let Some(end) = after.find("**") {
                out += &format!("\\fB{}\\fR", inline(&after[..end]));
                rest = &after[end + 2..];
                continue;
            }
        } else if c == '[' {
            if let Some((label, after)) = rest[1..].split_once("](") {
                if let Some(end) = after.find(')') {
                    out += &inline(label);
                    rest = &after[end + 1..];
                    continue;
                }
            }
        }
        out += &escape(&c.to_string());
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Markdown heading text without its markup, for `.SH` / `.SS`.
fn plain(text: &str) -> String {
    escape(&text.replace('`', ""))
}

/// Text with roff's escape character and non-ASCII characters spelled out (`\[u2014]`).
fn escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '\\' => out += "\\e",
            '-' => out += "\\-",
            c if c.is_ascii() => out.push(c),
            c => out += &format!("\\[u{:04X}]", c as u32),
        }
    }
    out
}

/// A line that roff would take for a request (a leading `.` or `'`) made text.
fn guard(line: &str) -> String {
    if line.starts_with('.') || line.starts_with('\'') {
        format!("\\&{line}")
    } else {
        line.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::{inline, render, SOURCE};

    #[test]
    fn every_key_of_the_document_is_in_the_page() {
        let page = render("0");
        let keys: Vec<&str> = SOURCE
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once('`'))
            .map(|(key, _)| key)
            .collect();
        assert!(keys.len() > 40, "{keys:?}");
        for key in keys {
            let shown = format!("\\fB{}\\fR", key.replace('-', "\\-"));
            assert!(page.contains(&shown), "{key} not in the page");
        }
        assert!(page.starts_with(".TH TWINSAN.TOML 5"));
        assert!(!page.contains("```"));
    }

    #[test]
    fn inline_markup_becomes_roff() {
        assert_eq!(
            inline("see [failover.md](failover.md), `a-b` and **x**"),
            "see failover.md, \\fBa\\-b\\fR and \\fBx\\fR"
        );
        assert_eq!(inline("5 × 2 — ok"), "5 \\[u00D7] 2 \\[u2014] ok");
    }
}
