//! The console's HTML: the whole page for `GET /`, and the overview fragment that the page swaps in on every
//! update from `/events`. Pure functions of the cluster view; every text that came from outside is escaped.

use std::fmt::Write;

use crate::api::{ClusterStatus, NodeStatus, PeerStatus, ResourceStatus, VolumeStatus};
use crate::console::TargetSessions;
use crate::http::escape;

/// One line of the event list, with its time (UTC, RFC 3339).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Logged {
    /// When the console saw it.
    pub time: String,
    /// What happened, in words.
    pub text: String,
}

/// What the overview shows.
pub struct View<'a> {
    /// The cluster as the answering node sees it.
    pub status: &'a ClusterStatus,
    /// iSCSI sessions logged in on this node now, per target.
    pub sessions: &'a [TargetSessions],
    /// The viewer is logged in: the actions are offered.
    pub logged_in: bool,
}

/// A node's state in one word: `online`, `standby`, `stopped`, `OFFLINE` (manual mode: `this node`, `peer`).
pub fn node_state(status: &ClusterStatus, n: &NodeStatus) -> &'static str {
    if !status.managed {
        return if n.name == status.node {
            "this node"
        } else {
            "peer"
        };
    }
    if n.stopped {
        "stopped"
    } else if !n.online {
        "OFFLINE"
    } else if n.standby {
        "standby"
    } else {
        "online"
    }
}

/// The overview fragment (the contents of `<div id="overview">`).
pub fn overview(view: &View) -> String {
    let s = view.status;
    let mut out = String::new();
    let _ = write!(
        out,
        "<section><h2>Cluster {}</h2><p>as seen from <b>{}</b> · quorum: {}",
        escape(&s.cluster),
        escape(&s.node),
        escape(&s.quorum)
    );
    if let Some(w) = &s.witness {
        let _ = write!(
            out,
            " · witness {} ({}), vote held by {}",
            escape(&w.address),
            if w.reachable {
                "reachable"
            } else {
                "UNREACHABLE"
            },
            escape(w.vote.as_deref().unwrap_or("nobody"))
        );
    }
    if !s.managed {
        out.push_str(" · manual mode: no cluster manager runs, roles change by `twinsan volume primary|secondary`");
    }
    out.push_str("</p>");
    if let Some(warning) = &s.config_warning {
        let _ = write!(out, "<p class=\"bad\">WARNING: {}</p>", escape(warning));
    }
    out.push_str("</section>");
    nodes(&mut out, view);
    resources(&mut out, view);
    volumes(&mut out, &s.volumes);
    targets(&mut out, view);
    lists(&mut out, s);
    out
}

fn button(out: &mut String, logged_in: bool, path: &str, label: &str, id: &str) {
    if logged_in {
        let _ = write!(
            out,
            "<button type=\"button\" id=\"{}\" data-post=\"{}\">{}</button> ",
            escape(id),
            escape(path),
            escape(label)
        );
    }
}

fn nodes(out: &mut String, view: &View) {
    let s = view.status;
    out.push_str("<section><h2>Nodes</h2><table><tr><th>node</th><th>state</th>");
    if view.logged_in && s.managed {
        out.push_str("<th>actions</th>");
    }
    out.push_str("</tr>");
    for n in &s.nodes {
        let state = node_state(s, n);
        let class = match state {
            "online" | "this node" => "good",
            "standby" | "peer" => "warn",
            _ => "bad",
        };
        let name = escape(&n.name);
        let _ = write!(
            out,
            "<tr id=\"node-{name}\"><td>{name}</td><td class=\"state {class}\">{state}</td>"
        );
        if view.logged_in && s.managed {
            out.push_str("<td>");
            let path = format!("/api/nodes/{}", n.name);
            if n.standby {
                button(
                    out,
                    true,
                    &format!("{path}/unstandby"),
                    "Unstandby",
                    &format!("unstandby-{}", n.name),
                );
            } else {
                button(
                    out,
                    true,
                    &format!("{path}/standby"),
                    "Standby",
                    &format!("standby-{}", n.name),
                );
            }
            let path = format!("/api/cluster/{}", n.name);
            if n.stopped {
                button(
                    out,
                    true,
                    &format!("{path}/start"),
                    "Start cluster",
                    &format!("start-{}", n.name),
                );
            } else {
                button(
                    out,
                    true,
                    &format!("{path}/stop"),
                    "Stop cluster",
                    &format!("stop-{}", n.name),
                );
            }
            out.push_str("</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</table></section>");
}

/// Where a resource runs, in words.
fn placement(r: &ResourceStatus) -> String {
    let mut parts = Vec::new();
    if r.kind == "volume" {
        if !r.promoted.is_empty() {
            parts.push(format!("Promoted: {}", r.promoted.join(" ")));
        }
        if !r.unpromoted.is_empty() {
            parts.push(format!("Unpromoted: {}", r.unpromoted.join(" ")));
        }
    } else if !r.started.is_empty() {
        parts.push(format!("Started {}", r.started.join(" ")));
    }
    if !r.failed.is_empty() {
        parts.push(format!("FAILED {}", r.failed.join(" ")));
    }
    if parts.is_empty() {
        "Stopped".into()
    } else {
        parts.join(" · ")
    }
}

fn resources(out: &mut String, view: &View) {
    let s = view.status;
    if s.resources.is_empty() {
        return;
    }
    out.push_str(
        "<section><h2>Resources</h2><table><tr><th>resource</th><th>agent</th><th>what</th><th>where</th>\
         <th>fail counts</th><th>last error</th>",
    );
    if view.logged_in {
        out.push_str("<th>actions</th>");
    }
    out.push_str("</tr>");
    for r in &s.resources {
        let where_ = placement(r);
        let class = if !r.failed.is_empty() {
            "bad"
        } else if where_ == "Stopped" {
            "warn"
        } else {
            "good"
        };
        let counts: Vec<String> = r
            .fail_counts
            .iter()
            .map(|(n, c)| format!("{n}: {c}"))
            .collect();
        let indent = if r.kind == "volume" { "" } else { "sub" };
        let _ = write!(
            out,
            "<tr id=\"resource-{id}\"><td class=\"{indent}\">{name}</td><td>{agent}</td><td>{detail}</td>\
             <td class=\"where {class}\">{where_}</td><td>{counts}</td><td>{error}</td>",
            id = escape(&r.name),
            name = escape(&r.name),
            agent = escape(&r.agent),
            detail = escape(&r.detail),
            where_ = escape(&where_),
            counts = escape(&counts.join(", ")),
            error = escape(r.last_error.as_deref().unwrap_or("")),
        );
        if view.logged_in {
            out.push_str("<td>");
            if r.kind == "volume" {
                let path = format!("/api/resources/{}", r.name);
                for n in &s.nodes {
                    if !r.promoted.contains(&n.name) {
                        button(
                            out,
                            true,
                            &format!("{path}/move?node={}", n.name),
                            &format!("Move to {}", n.name),
                            &format!("move-{}-{}", r.name, n.name),
                        );
                    }
                }
                button(
                    out,
                    true,
                    &format!("{path}/clear"),
                    "Clear moves",
                    &format!("clear-{}", r.name),
                );
            }
            if !r.fail_counts.is_empty() || !r.failed.is_empty() || r.last_error.is_some() {
                button(
                    out,
                    true,
                    &format!("/api/resources/{}/cleanup", r.name),
                    "Cleanup",
                    &format!("cleanup-{}", r.name),
                );
            }
            out.push_str("</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</table></section>");
}

fn peer_cells(out: &mut String, p: &PeerStatus) {
    let connected = p.connection == "Connected";
    let _ = write!(
        out,
        "<td>{}</td><td class=\"connection {}\">{}</td><td>{}</td><td>{}</td><td>{}</td>",
        escape(&p.node),
        if connected { "good" } else { "bad" },
        escape(&p.connection),
        escape(&p.role),
        escape(&p.peer_disk),
        escape(&p.replication),
    );
    match p.done {
        Some(done) => {
            let eta = p.eta_s.map(|s| format!(", {s} s left")).unwrap_or_default();
            let _ = write!(
                out,
                "<td class=\"sync\"><progress max=\"100\" value=\"{done:.2}\"></progress> {done:.2}%<br>\
                 {} KiB/s{eta}</td>",
                p.rate_kib_s
            );
        }
        None => out.push_str("<td class=\"sync\">–</td>"),
    }
    let _ = write!(out, "<td>{}</td>", p.out_of_sync_kib);
    let _ = write!(
        out,
        "<td>{}</td>",
        escape(p.last_error.as_deref().unwrap_or(""))
    );
}

fn volumes(out: &mut String, volumes: &[VolumeStatus]) {
    out.push_str(
        "<section><h2>Volumes on this node</h2><table><tr><th>volume</th><th>size</th><th>role</th><th>disk</th>\
         <th>flags</th><th>peer</th><th>connection</th><th>peer role</th><th>peer disk</th><th>replication</th>\
         <th>sync</th><th>out of sync KiB</th><th>link error</th></tr>",
    );
    for v in volumes {
        let mut flags = Vec::new();
        if v.split_brain {
            flags.push("SPLIT BRAIN");
        }
        if v.suspended {
            flags.push("suspended");
        }
        if v.lease_hold {
            flags.push("no lease");
        }
        let role_class = if v.role == "Primary" { "good" } else { "" };
        let disk_class = if v.disk == "UpToDate" { "good" } else { "bad" };
        let _ = write!(
            out,
            "<tr id=\"volume-{name}\"><td>{name}</td><td>{size}</td><td class=\"role {role_class}\">{role}</td>\
             <td class=\"disk {disk_class}\">{disk}</td><td class=\"bad\">{flags}</td>",
            name = escape(&v.name),
            size = human_kib(v.size_kib),
            role = escape(&v.role),
            disk = escape(&v.disk),
            flags = flags.join(", "),
        );
        match v.peers.first() {
            Some(p) => peer_cells(out, p),
            None => out.push_str("<td colspan=\"8\">no peer</td>"),
        }
        out.push_str("</tr>");
    }
    out.push_str("</table></section>");
}

fn targets(out: &mut String, view: &View) {
    let s = view.status;
    let stacks: Vec<&ResourceStatus> = s.resources.iter().filter(|r| r.kind == "target").collect();
    if stacks.is_empty() && view.sessions.is_empty() {
        return;
    }
    out.push_str(
        "<section><h2>Targets</h2><table><tr><th>target</th><th>where</th><th>LUNs</th>\
         <th>iSCSI sessions here</th><th>connected initiators</th></tr>",
    );
    let mut shown = Vec::new();
    for t in &stacks {
        let luns: Vec<String> = s
            .resources
            .iter()
            .filter(|r| r.kind == "lun" && r.volume == t.volume)
            .map(|r| r.detail.clone())
            .collect();
        // The target's detail is "IQN PORTAL".
        let iqn = t.detail.split(' ').next().unwrap_or_default();
        let here = view.sessions.iter().find(|x| x.target == iqn);
        if let Some(x) = here {
            shown.push(x.target.clone());
        }
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&t.detail),
            escape(&placement(t)),
            escape(&luns.join(", ")),
            here.map_or(0, TargetSessions::count),
            here.map(initiator_list).unwrap_or_default()
        );
    }
    for x in view.sessions.iter().filter(|x| !shown.contains(&x.target)) {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>served by this node</td><td></td><td>{}</td><td>{}</td></tr>",
            escape(&x.target),
            x.count(),
            initiator_list(x)
        );
    }
    out.push_str("</table></section>");
}

/// The initiators of a target, escaped, one per line, with their session count when more than one.
fn initiator_list(x: &TargetSessions) -> String {
    x.initiators
        .iter()
        .map(|(name, n)| match n {
            1 => escape(name),
            n => format!("{} ({n} sessions)", escape(name)),
        })
        .collect::<Vec<_>>()
        .join("<br>")
}

fn lists(out: &mut String, s: &ClusterStatus) {
    for (title, items, class) in [
        ("Failed actions", &s.failed_actions, "bad"),
        ("Constraints", &s.constraints, ""),
        ("Scheduler notes", &s.notes, ""),
    ] {
        if items.is_empty() {
            continue;
        }
        let _ = write!(out, "<section><h2>{title}</h2><ul class=\"{class}\">");
        for item in items {
            let _ = write!(out, "<li>{}</li>", escape(item));
        }
        out.push_str("</ul></section>");
    }
}

fn human_kib(kib: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = kib as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The event list (the contents of `<ol id="events">`), newest first.
pub fn events(lines: &[Logged]) -> String {
    let mut out = String::new();
    for l in lines.iter().rev() {
        let _ = write!(
            out,
            "<li><time>{}</time> {}</li>",
            escape(&l.time),
            escape(&l.text)
        );
    }
    out
}

/// Who is looking at the page.
pub enum Viewer<'a> {
    /// Not logged in; `configured` is false when the config has no `console_password_hash`.
    Anonymous { configured: bool },
    /// Logged in, with the session's CSRF token (rendered into the page for its scripts).
    LoggedIn { csrf: &'a str },
}

/// The whole page: the overview and event list as of now, the login form or the logout button, and the script
/// that follows `/events`.
pub fn page(describe: &str, overview: &str, events: &str, viewer: &Viewer) -> String {
    let (meta, account) = match viewer {
        Viewer::LoggedIn { csrf } => (
            format!("<meta name=\"csrf-token\" content=\"{}\">", escape(csrf)),
            "<span>logged in</span> <button type=\"button\" id=\"logout\">Log out</button>".to_string(),
        ),
        Viewer::Anonymous { configured: true } => (
            String::new(),
            "<form method=\"post\" action=\"/login\" id=\"login\"><input type=\"password\" name=\"password\" \
             id=\"password\" placeholder=\"password\" autocomplete=\"current-password\" required> \
             <button type=\"submit\" id=\"login-button\">Log in</button></form>"
                .to_string(),
        ),
        Viewer::Anonymous { configured: false } => (
            String::new(),
            "<span class=\"warn\">read only: actions need console_password_hash in [cluster] \
             (see `twinsan passwd`)</span>"
                .to_string(),
        ),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{meta}\
         <title>twinsan console</title><style>{STYLE}</style></head>\n<body>\
         <header><h1>twinsan</h1><span>{describe}</span><span id=\"account\">{account}</span></header>\n\
         <p id=\"message\" role=\"status\"></p>\n\
         <div id=\"overview\">{overview}</div>\n\
         <section><h2>Last events</h2><p class=\"small\">updated <time id=\"updated\"></time> · \
         <span id=\"live\">connecting</span> · <a href=\"/metrics\">/metrics</a></p>\
         <ol id=\"events\">{events}</ol></section>\n\
         <script>{SCRIPT}</script></body></html>\n",
        describe = escape(describe),
    )
}

/// A short page for a refused login.
pub fn refused(why: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>twinsan console</title>\
         <style>{STYLE}</style></head><body><h1>twinsan</h1><p class=\"bad\" id=\"refused\">{}</p>\
         <p><a href=\"/\">back to the overview</a></p></body></html>\n",
        escape(why)
    )
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:0 1.5em 2em;color:#222}\
header{display:flex;gap:1.5em;align-items:baseline;border-bottom:1px solid #ccc}\
header h1{margin:.4em 0}#account{margin-left:auto}h2{font-size:1.1em;margin:1.2em 0 .4em}\
table{border-collapse:collapse}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f4f4f4}.good{color:#17692b}.warn{color:#9a6700}.bad{color:#b3261e;font-weight:600}\
td.sub{padding-left:1.6em}progress{width:8em}.small{color:#666}#message{min-height:1.2em}\
ol#events{font-family:monospace;padding-left:1.5em}time{color:#555;margin-right:.6em}button{margin:1px}";

/// Follows `/events` (the overview fragment, the event list and the time of the update) and posts the actions
/// with the session's CSRF token.
const SCRIPT: &str = r#"
(function () {
  var token = document.querySelector('meta[name="csrf-token"]');
  var csrf = token ? token.getAttribute('content') : '';
  var say = function (text, bad) {
    var m = document.getElementById('message');
    m.textContent = text;
    m.className = bad ? 'bad' : 'good';
  };
  var post = function (path) {
    return fetch(path, { method: 'POST', headers: { 'X-CSRF-Token': csrf }, credentials: 'same-origin' });
  };
  document.addEventListener('click', function (e) {
    var b = e.target.closest('button[data-post]');
    if (b) {
      b.disabled = true;
      post(b.getAttribute('data-post'))
        .then(function (r) { return r.json(); })
        .then(function (j) { say(j.message || (j.ok ? 'done' : 'refused'), !j.ok); })
        .catch(function (err) { say('the request failed: ' + err, true); })
        .finally(function () { b.disabled = false; });
    } else if (e.target.id === 'logout') {
      post('/logout').then(function () { location.assign('/'); });
    }
  });
  var live = document.getElementById('live');
  var source = new EventSource('/events');
  source.addEventListener('update', function (e) {
    var d = JSON.parse(e.data);
    document.getElementById('overview').innerHTML = d.overview;
    document.getElementById('events').innerHTML = d.events;
    document.getElementById('updated').textContent = d.time;
    live.textContent = 'live';
  });
  source.onerror = function () { live.textContent = 'reconnecting'; };
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> ClusterStatus {
        ClusterStatus {
            cluster: "c<1>".into(),
            node: "node1".into(),
            managed: true,
            quorum: "ok".into(),
            witness: None,
            nodes: vec![
                NodeStatus {
                    name: "node1".into(),
                    online: true,
                    standby: false,
                    stopped: false,
                    protocol: None,
                },
                NodeStatus {
                    name: "node2".into(),
                    online: true,
                    standby: true,
                    stopped: false,
                    protocol: None,
                },
            ],
            resources: Vec::new(),
            failed_actions: vec!["vol0 <failed>".into()],
            constraints: Vec::new(),
            properties: Vec::new(),
            notes: Vec::new(),
            volumes: Vec::new(),
            config_warning: None,
        }
    }

    #[test]
    fn the_overview_escapes_and_offers_actions_only_to_a_login() {
        let s = status();
        let anonymous = overview(&View {
            status: &s,
            sessions: &[],
            logged_in: false,
        });
        assert!(anonymous.contains("Cluster c&lt;1&gt;"), "{anonymous}");
        assert!(anonymous.contains("vol0 &lt;failed&gt;"), "{anonymous}");
        assert!(anonymous.contains("<td class=\"state warn\">standby</td>"));
        assert!(!anonymous.contains("data-post"));
        let logged_in = overview(&View {
            status: &s,
            sessions: &[],
            logged_in: true,
        });
        assert!(logged_in.contains("data-post=\"/api/nodes/node2/unstandby\""));
        assert!(logged_in.contains("data-post=\"/api/nodes/node1/standby\""));
    }

    #[test]
    fn targets_list_their_initiators_escaped() {
        let s = status();
        let sessions = [TargetSessions {
            target: "iqn.2025-08.local.twinsan:extra".into(),
            initiators: vec![
                ("iqn.1993-08.org.debian:01:a<b>".into(), 1),
                ("iqn.2007-10.com.github:sahlberg:libiscsi:qemu".into(), 2),
            ],
        }];
        let html = overview(&View {
            status: &s,
            sessions: &sessions,
            logged_in: false,
        });
        assert!(html.contains("<th>connected initiators</th>"), "{html}");
        assert!(
            html.contains(
                "<td>3</td><td>iqn.1993-08.org.debian:01:a&lt;b&gt;<br>\
                 iqn.2007-10.com.github:sahlberg:libiscsi:qemu (2 sessions)</td>"
            ),
            "{html}"
        );
    }

    #[test]
    fn the_token_is_in_the_page_only_for_a_login() {
        let p = page("d", "", "", &Viewer::LoggedIn { csrf: "abc" });
        assert!(p.contains("<meta name=\"csrf-token\" content=\"abc\">"));
        let p = page("d", "", "", &Viewer::Anonymous { configured: true });
        assert!(!p.contains("csrf-token\" content"));
        assert!(p.contains("action=\"/login\""));
    }
}
