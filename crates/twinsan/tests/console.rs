//! The web console of a managed pair, driven in headless Chromium through chromedriver (W3C WebDriver as plain
//! HTTP and JSON): the overview shows both nodes and the volume's role; an action without a login gets 401 and a
//! logged-in one without its CSRF token 403; a login through the page, a click that puts the secondary in
//! standby, seen on the page by a live update (no reload), and back; then a kill -9 of the primary, seen on the
//! survivor's page as its volume turning Primary. Screenshots before and after the failover go to
//! target/tmp/console-before.png and console-after.png.
//!
//! Run with the other two-daemon tests (nextest test group `cluster`): it uses init's addresses and the
//! endpoints' default port 9942 on them.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{in_sync, Cluster, IQN};
use common::hold::Hold;
use common::{free_port, http, require_tool, text, twinsan_bin, TempDir};

/// The console password this test sets with `twinsan passwd --stdin`.
const PASSWORD: &str = "console test password 7";

/// How long one WebDriver command may take (starting Chromium on a busy machine is the slowest).
const DRIVER_LIMIT: Duration = Duration::from_secs(60);

/// A chromedriver this test started, killed by its pid on drop.
struct Driver {
    child: Child,
    addr: String,
    _dir: TempDir,
}

impl Driver {
    fn start() -> Driver {
        let bin = require_tool("chromedriver");
        require_tool("chromium");
        let dir = TempDir::new("chromedriver");
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let driver = Driver {
            child,
            addr: format!("127.0.0.1:{port}"),
            _dir: dir,
        };
        common::poll_until(
            Duration::from_secs(30),
            "chromedriver ready",
            String::new,
            || {
                let (_, body) = exchange(&driver.addr, "GET", "/status", "").ok()?;
                let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                (v["value"]["ready"] == true).then_some(())
            },
        );
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of the child this guard started and has not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// One browser session of a [`Driver`], deleted (Chromium closed) on drop.
struct Browser<'a> {
    driver: &'a Driver,
    session: String,
    _profile: TempDir,
}

impl<'a> Browser<'a> {
    fn open(driver: &'a Driver) -> Browser<'a> {
        let profile = TempDir::new("chromium-profile");
        let body = serde_json::json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": require_tool("chromium"),
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--window-size=1400,1100",
                        format!("--user-data-dir={}", profile.path().display()),
                    ],
                },
            }},
        });
        let v = send(driver, "POST", "/session", Some(body));
        let session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {v}"))
            .to_string();
        Browser {
            driver,
            session,
            _profile: profile,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        send(
            self.driver,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(serde_json::json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return value.
    fn script(&self, script: &str, args: serde_json::Value) -> serde_json::Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(serde_json::json!({ "script": script, "args": args })),
        )
    }

    /// The text of the first element `css` selects, if there is one.
    fn text(&self, css: &str) -> Option<String> {
        let v = self.script(
            "var e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null;",
            serde_json::json!([css]),
        );
        v.as_str().map(str::to_string)
    }

    /// The WebDriver id of the first element `css` selects.
    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(serde_json::json!({ "using": "css selector", "value": css })),
        );
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|id| id.as_str())
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    /// Clicks the element `css` selects. The overview is replaced by every live update, so an element found
    /// just before one is stale when clicked: then it is found again (a few times at most).
    fn click(&self, css: &str) {
        for _ in 0..5 {
            let id = self.find(css);
            let path = format!("/session/{}/element/{id}/click", self.session);
            match try_send(self.driver, "POST", &path, Some(serde_json::json!({}))) {
                Ok(_) => return,
                Err(v) if v["error"] == "stale element reference" => continue,
                Err(v) => panic!("WebDriver click on {css}: {v}"),
            }
        }
        panic!("{css} went stale five times in a row");
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(serde_json::json!({ "text": text })),
        );
    }

    /// The value of cookie `name` for the page's site (HttpOnly cookies included).
    fn cookie(&self, name: &str) -> Option<String> {
        let v = self.call("GET", "/cookie", None);
        v.as_array()?
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["value"].as_str())
            .map(str::to_string)
    }

    /// A PNG of the viewport, written to `path`.
    fn screenshot(&self, path: &Path) {
        let v = self.call("GET", "/screenshot", None);
        let png = base64_decode(v.as_str().expect("screenshot base64"));
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("create target/tmp");
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// Marks the loaded page, so a later [`Browser::same_page`] tells whether it was reloaded since.
    fn mark(&self) {
        self.script(
            "window.twinsanTestMark = 'kept'; return null;",
            serde_json::json!([]),
        );
    }

    fn same_page(&self) -> bool {
        self.script(
            "return window.twinsanTestMark || null;",
            serde_json::json!([]),
        ) == "kept"
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let _ = exchange(
            &self.driver.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            "",
        );
    }
}

/// One WebDriver command: its `value`, or the test fails with the driver's error.
fn send(
    driver: &Driver,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    try_send(driver, method, path, body)
        .unwrap_or_else(|v| panic!("WebDriver {method} {path} failed: {v}"))
}

/// One WebDriver command: its `value`, or the error `value` the driver answered.
fn try_send(
    driver: &Driver,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, serde_json::Value> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, answer) = exchange(&driver.addr, method, path, &body)
        .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
    let v: serde_json::Value = serde_json::from_str(&answer)
        .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}: {answer}"));
    if status == 200 {
        Ok(v["value"].clone())
    } else {
        Err(v["value"].clone())
    }
}

/// One HTTP/1.1 request to chromedriver with a JSON body: (status, body). chromedriver keeps the connection
/// open whatever the request says, so the answer ends at its Content-Length, not at the close.
fn exchange(addr: &str, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    use std::io::{BufRead, BufReader, Read};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(DRIVER_LIMIT))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json; charset=utf-8\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let mut raw = Vec::new();
    match length {
        Some(n) => {
            raw.resize(n, 0);
            reader.read_exact(&mut raw)?;
        }
        None => {
            reader.read_to_end(&mut raw)?;
        }
    }
    Ok((status, String::from_utf8_lossy(&raw).into_owned()))
}

/// Standard base64 (what WebDriver screenshots are).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Where the screenshots go: target/tmp of the workspace.
fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tmp")
}

/// Replaces the config's `console_password_hash` line with the one `twinsan passwd --stdin` prints for
/// [`PASSWORD`].
fn set_password(config: &Path) {
    let mut child = Command::new(twinsan_bin())
        .args(["passwd", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn twinsan passwd");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .expect("write the password");
    let out = child.wait_with_output().expect("twinsan passwd");
    assert!(
        out.status.success(),
        "twinsan passwd failed:\n{}",
        text(&out)
    );
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        line.starts_with("console_password_hash = \"$argon2id$"),
        "{line}"
    );
    let old = std::fs::read_to_string(config).expect("read the config");
    assert!(
        old.lines()
            .any(|l| l.starts_with("console_password_hash = \"$argon2id$")),
        "twinsan init wrote no console_password_hash:\n{old}"
    );
    let new: String = old
        .lines()
        .map(|l| {
            if l.starts_with("console_password_hash =") {
                line.clone()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    // The node validates it at start: a hash it cannot use would stop it there.
    std::fs::write(config, new + "\n").expect("write the config");
}

/// True for `YYYY-MM-DDTHH:MM:SSZ`.
fn is_rfc3339_utc(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn the_console_shows_the_pair_acts_after_a_login_and_follows_a_failover() {
    let mut c = Cluster::init("console", false, "64M");
    set_password(&c.config);
    let p = c.start_both_until_stack();
    let s = 3 - p;
    for n in [1, 2] {
        c.wait_status(n, Duration::from_secs(60), "both copies UpToDate", in_sync);
    }
    let primary = format!("127.0.0.1{p}:9942");
    let survivor = format!("127.0.0.1{s}:9942");

    // Read-only without a login; no action without one.
    let page = http::get(&primary, "/").expect("GET /");
    assert_eq!(page.status, 200, "{}", page.headers);
    assert!(
        page.body.contains("id=\"node-node1\"") && page.body.contains("id=\"node-node2\""),
        "{}",
        page.body
    );
    assert!(!page.body.contains("$argon2"), "the hash is rendered");
    let refused = http::request(
        &primary,
        "POST",
        &format!("/api/nodes/node{s}/standby"),
        &[],
        "",
    )
    .expect("POST standby");
    assert_eq!(refused.status, 401, "{}\n{}", refused.headers, refused.body);
    let wrong = http::request(
        &primary,
        "POST",
        "/login",
        &["Content-Type: application/x-www-form-urlencoded"],
        "password=not+the+password",
    )
    .expect("POST /login");
    assert_eq!(wrong.status, 401, "{}", wrong.headers);
    assert!(!wrong.headers.to_ascii_lowercase().contains("set-cookie"));

    let driver = Driver::start();
    let browser = Browser::open(&driver);
    browser.goto(&format!("http://{primary}/"));
    c.wait_for(
        Duration::from_secs(30),
        "the primary's console shows both nodes online and vol0 Primary",
        || {
            (browser.text("#node-node1 .state").as_deref() == Some("online")
                && browser.text("#node-node2 .state").as_deref() == Some("online")
                && browser.text("#volume-vol0 .role").as_deref() == Some("Primary")
                && browser
                    .text("#resource-vol0 .where")?
                    .contains(&format!("Promoted: node{p}")))
            .then_some(())
        },
    );
    assert!(
        browser.text("#standby-node2").is_none(),
        "actions are offered without a login"
    );

    // Log in through the page, put the secondary in standby with its button, and watch it happen live.
    browser.type_into("#password", PASSWORD);
    browser.click("#login-button");
    c.wait_for(Duration::from_secs(30), "logged in", || {
        browser.text("#logout").map(|_| ())
    });
    browser.mark();
    browser.click(&format!("#standby-node{s}"));
    c.wait_for(
        Duration::from_secs(30),
        "the page shows the secondary in standby",
        || {
            (browser.text(&format!("#node-node{s} .state")).as_deref() == Some("standby"))
                .then_some(())
        },
    );
    assert!(browser.same_page(), "the page was reloaded, not updated");
    assert_eq!(
        c.cluster_status(p)["nodes"][s - 1]["standby"],
        true,
        "{}",
        c.logs()
    );
    let events = browser
        .script(
            "return Array.from(document.querySelectorAll('#events li')).map(function (li) { \
             return [li.querySelector('time').textContent, li.textContent]; });",
            serde_json::json!([]),
        )
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        events
            .iter()
            .any(|e| e[1].as_str().is_some_and(|t| t.contains("standby"))),
        "no standby event listed: {events:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e[0].as_str().is_some_and(is_rfc3339_utc)),
        "an event without an RFC 3339 time: {events:?}"
    );

    // The session cookie without the page's CSRF token is refused, as is a foreign Origin with it.
    let cookie = browser
        .cookie("twinsan_session")
        .expect("the session cookie");
    let token = browser
        .script(
            "return document.querySelector('meta[name=\"csrf-token\"]').getAttribute('content');",
            serde_json::json!([]),
        )
        .as_str()
        .expect("the CSRF token")
        .to_string();
    let cookie_header = format!("Cookie: twinsan_session={cookie}");
    let no_token = http::request(
        &primary,
        "POST",
        &format!("/api/nodes/node{s}/unstandby"),
        &[&cookie_header],
        "",
    )
    .expect("POST unstandby");
    assert_eq!(
        no_token.status, 403,
        "{}\n{}",
        no_token.headers, no_token.body
    );
    let token_header = format!("X-CSRF-Token: {token}");
    let foreign = http::request(
        &primary,
        "POST",
        &format!("/api/nodes/node{s}/unstandby"),
        &[
            &cookie_header,
            &token_header,
            "Origin: http://attacker.example",
        ],
        "",
    )
    .expect("POST unstandby");
    assert_eq!(foreign.status, 403, "{}\n{}", foreign.headers, foreign.body);
    assert_eq!(c.cluster_status(p)["nodes"][s - 1]["standby"], true);

    // Back with the page's own button.
    browser.click(&format!("#unstandby-node{s}"));
    c.wait_for(
        Duration::from_secs(30),
        "the page shows the secondary online again",
        || {
            (browser.text(&format!("#node-node{s} .state")).as_deref() == Some("online"))
                .then_some(())
        },
    );
    assert!(browser.same_page(), "the page was reloaded, not updated");
    c.wait_status(
        s,
        Duration::from_secs(60),
        "the secondary in sync again",
        in_sync,
    );

    // An initiator logged in at the VIP is listed under the target on the primary's page, while it is.
    {
        let initiator = "iqn.2025-08.local.test:console-hold";
        let _hold = Hold::login(&format!("iscsi://127.0.0.10:3260/{IQN}/1"), initiator);
        browser.goto(&format!("http://127.0.0.1{p}:9942/"));
        c.wait_for(
            Duration::from_secs(20),
            "the primary's console lists the initiator under the target",
            || {
                browser
                    .text("body")?
                    .lines()
                    .any(|l| l.contains(IQN) && l.contains(initiator))
                    .then_some(())
            },
        );
    }

    // The survivor's console through a kill -9 of the primary.
    browser.goto(&format!("http://{survivor}/"));
    c.wait_for(
        Duration::from_secs(30),
        "the survivor's console shows vol0 Secondary and the peer Connected",
        || {
            (browser.text("#volume-vol0 .role").as_deref() == Some("Secondary")
                && browser.text("#volume-vol0 .connection").as_deref() == Some("Connected")
                && browser.text(&format!("#node-node{p} .state")).as_deref() == Some("online"))
            .then_some(())
        },
    );
    browser.mark();
    browser.screenshot(&screenshot_dir().join("console-before.png"));
    c.kill(p);
    let started = Instant::now();
    c.wait_for(
        Duration::from_secs(60),
        "the survivor's console shows vol0 Primary and the killed node OFFLINE",
        || {
            (browser.text("#volume-vol0 .role").as_deref() == Some("Primary")
                && browser.text(&format!("#node-node{p} .state")).as_deref() == Some("OFFLINE"))
            .then_some(())
        },
    );
    assert!(browser.same_page(), "the page was reloaded, not updated");
    // Let the stack's last resources show as started before the picture.
    c.wait_for(
        Duration::from_secs(30),
        "the survivor's page shows the target started there",
        || {
            browser
                .text("#resource-vol0-target .where")?
                .contains(&format!("Started node{s}"))
                .then_some(())
        },
    );
    browser.screenshot(&screenshot_dir().join("console-after.png"));
    eprintln!(
        "failover seen on the survivor's page after {:?}; screenshots in {}",
        started.elapsed(),
        screenshot_dir().display()
    );
}
