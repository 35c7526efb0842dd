//! The console's HTTP behaviour against a fake node: who may act, what each refusal answers, what an action
//! carries out, and that no secret is rendered; the pure helpers (times, Origin, the event list's diff).

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use axum::http::{header, HeaderMap, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, watch};

use super::{auth, foreign_origin, rfc3339, ConsoleSource, Summary};
use crate::api::{self, ClusterStatus, NodeStatus, Request, Response};
use crate::http::MetricsSource;
use crate::metrics::Snapshot;

const PASSWORD: &str = "the console test password";

/// A node that records the requests it is asked to carry out.
struct FakeNode {
    hash: Option<String>,
    done: Mutex<Vec<Request>>,
    events: broadcast::Sender<api::EventLine>,
}

impl MetricsSource for FakeNode {
    fn snapshot(&self) -> Snapshot {
        Snapshot::default()
    }
    fn describe(&self) -> String {
        "a fake node".into()
    }
}

impl ConsoleSource for FakeNode {
    fn cluster_status(&self) -> ClusterStatus {
        let node = |name: &str| NodeStatus {
            name: name.into(),
            online: true,
            standby: false,
            stopped: false,
            protocol: None,
        };
        ClusterStatus {
            cluster: "fake".into(),
            node: "node1".into(),
            managed: true,
            quorum: "ok".into(),
            witness: None,
            nodes: vec![node("node1"), node("node2")],
            resources: Vec::new(),
            failed_actions: Vec::new(),
            constraints: Vec::new(),
            properties: Vec::new(),
            notes: Vec::new(),
            volumes: Vec::new(),
            config_warning: None,
        }
    }
    fn events(&self) -> broadcast::Receiver<api::EventLine> {
        self.events.subscribe()
    }
    fn handle(&self, request: Request) -> Response {
        self.done.lock().expect("lock").push(request);
        Response::Ok {
            message: Some("carried out".into()),
        }
    }
    fn password_hash(&self) -> Option<String> {
        self.hash.clone()
    }
    fn sessions(&self) -> Vec<super::TargetSessions> {
        Vec::new()
    }
}

/// An answer: status, head, body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

async fn send(addr: &str, method: &str, path: &str, headers: &[&str], body: &str) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        request += h;
        request += "\r\n";
    }
    request += "\r\n";
    request += body;
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    Answer {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Serves a console over `node` on a free port; its address and the stop switch.
async fn start(node: Arc<FakeNode>) -> (String, watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (stop_tx, stop_rx) = watch::channel(false);
    let source: Arc<dyn MetricsSource> = node.clone();
    let console: Arc<dyn ConsoleSource> = node;
    tokio::spawn(crate::http::serve(listener, source, Some(console), stop_rx));
    (addr, stop_tx)
}

fn fake(hash: Option<String>) -> Arc<FakeNode> {
    Arc::new(FakeNode {
        hash,
        done: Mutex::new(Vec::new()),
        events: broadcast::channel(16).0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_password_hash_the_console_only_reads() {
    let node = fake(None);
    let (addr, _stop) = start(node.clone()).await;
    let page = send(&addr, "GET", "/", &[], "").await;
    assert_eq!(page.status, 200, "{}", page.head);
    assert!(page.body.contains("console_password_hash"), "{}", page.body);
    let refused = send(&addr, "POST", "/api/nodes/node2/standby", &[], "").await;
    assert_eq!(refused.status, 403, "{}", refused.head);
    assert!(
        refused.body.contains("console_password_hash"),
        "{}",
        refused.body
    );
    assert!(node.done.lock().expect("lock").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_needs_a_session_its_token_and_this_origin() {
    let hash = auth::hash_password(PASSWORD, &[3; 16]).expect("hash");
    let node = fake(Some(hash.clone()));
    let (addr, _stop) = start(node.clone()).await;
    let form = ["Content-Type: application/x-www-form-urlencoded"];

    let anonymous = send(&addr, "POST", "/api/nodes/node2/standby", &[], "").await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.head);
    let wrong = send(&addr, "POST", "/login", &form, "password=nope").await;
    assert_eq!(wrong.status, 401, "{}", wrong.head);
    assert!(!wrong.head.to_ascii_lowercase().contains("set-cookie"));
    let foreign = [form[0], "Origin: http://elsewhere.example"];
    let body = format!("password={}", PASSWORD.replace(' ', "+"));
    let cross_site = send(&addr, "POST", "/login", &foreign, &body).await;
    assert_eq!(cross_site.status, 403, "{}", cross_site.head);

    let login = send(&addr, "POST", "/login", &form, &body).await;
    assert_eq!(login.status, 303, "{}", login.head);
    let set_cookie = login
        .head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let id = auth::cookie(set_cookie, auth::COOKIE).expect("the cookie's value");
    assert_eq!(id.len(), 64, "32 random bytes in hex");
    let cookie = format!("Cookie: {}={id}", auth::COOKIE);

    let page = send(&addr, "GET", "/", &[&cookie], "").await;
    assert!(!page.body.contains(&hash) && !page.body.contains(id));
    let token = page
        .body
        .split("<meta name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the CSRF token in the page")
        .to_string();
    let csrf = format!("X-CSRF-Token: {token}");

    let no_token = send(&addr, "POST", "/api/nodes/node2/standby", &[&cookie], "").await;
    assert_eq!(no_token.status, 403, "{}", no_token.head);
    let bad_token = send(
        &addr,
        "POST",
        "/api/nodes/node2/standby",
        &[&cookie, "X-CSRF-Token: 00"],
        "",
    )
    .await;
    assert_eq!(bad_token.status, 403, "{}", bad_token.head);
    let elsewhere = send(
        &addr,
        "POST",
        "/api/nodes/node2/standby",
        &[&cookie, &csrf, "Origin: http://elsewhere.example"],
        "",
    )
    .await;
    assert_eq!(elsewhere.status, 403, "{}", elsewhere.head);
    assert!(node.done.lock().expect("lock").is_empty());

    let own_origin = format!("Origin: http://{addr}");
    for (path, body) in [
        ("/api/nodes/node2/standby", ""),
        ("/api/nodes/node2/unstandby", ""),
        ("/api/resources/vol0/move?node=node2", ""),
        ("/api/resources/vol0/move", "node=node1"),
        ("/api/resources/vol0/move", ""),
        ("/api/resources/vol0/clear", ""),
        ("/api/resources/vol0/cleanup", ""),
        ("/api/cluster/node1/stop", ""),
        ("/api/cluster/node1/start", ""),
    ] {
        let done = send(
            &addr,
            "POST",
            path,
            &[&cookie, &csrf, &own_origin, form[0]],
            body,
        )
        .await;
        assert_eq!(done.status, 200, "{path}: {}", done.head);
        let v: serde_json::Value = serde_json::from_str(&done.body).expect("JSON");
        assert_eq!(v["ok"], true, "{path}: {v}");
        assert_eq!(v["message"], "carried out", "{path}: {v}");
    }
    let node_ = |n: &str| Some(n.to_string());
    assert_eq!(
        *node.done.lock().expect("lock"),
        [
            Request::Standby {
                node: "node2".into(),
                standby: true
            },
            Request::Standby {
                node: "node2".into(),
                standby: false
            },
            Request::Move {
                resource: "vol0".into(),
                node: node_("node2")
            },
            Request::Move {
                resource: "vol0".into(),
                node: node_("node1")
            },
            Request::Move {
                resource: "vol0".into(),
                node: None
            },
            Request::Clear {
                resource: "vol0".into()
            },
            Request::Cleanup {
                resource: node_("vol0")
            },
            Request::ClusterRun {
                node: node_("node1"),
                stop: true
            },
            Request::ClusterRun {
                node: node_("node1"),
                stop: false
            },
        ]
    );

    let logout = send(&addr, "POST", "/logout", &[&cookie, &csrf], "").await;
    assert_eq!(logout.status, 200, "{}", logout.head);
    let after = send(
        &addr,
        "POST",
        "/api/nodes/node2/standby",
        &[&cookie, &csrf],
        "",
    )
    .await;
    assert_eq!(after.status, 401, "{}", after.head);
}

#[test]
fn times_are_rfc3339_utc() {
    let at = |s: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
    assert_eq!(at(0), "1970-01-01T00:00:00Z");
    assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
}

#[test]
fn an_origin_must_be_this_endpoint() {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("127.0.0.11:9942"));
    assert!(!foreign_origin(&h));
    h.insert(
        header::ORIGIN,
        HeaderValue::from_static("http://127.0.0.11:9942"),
    );
    assert!(!foreign_origin(&h));
    h.insert(
        header::ORIGIN,
        HeaderValue::from_static("http://evil.example"),
    );
    assert!(foreign_origin(&h));
    h.insert(header::ORIGIN, HeaderValue::from_static("null"));
    assert!(foreign_origin(&h));
}

#[test]
fn the_event_list_names_node_and_stack_changes() {
    let before = Summary {
        nodes: [("node2".to_string(), "online")].into(),
        resources: [("vol0".to_string(), "Primary on node1".to_string())].into(),
    };
    let after = Summary {
        nodes: [("node2".to_string(), "standby")].into(),
        resources: [("vol0".to_string(), "Primary on node2".to_string())].into(),
    };
    assert_eq!(
        before.changes_to(&after),
        vec![
            "node node2: online → standby".to_string(),
            "stack vol0: Primary on node1 → Primary on node2".to_string()
        ]
    );
    assert!(after.changes_to(&after).is_empty());
}
