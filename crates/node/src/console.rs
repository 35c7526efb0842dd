//! The web console of a node, on its HTTP endpoint: the overview at `GET /`, live updates at `GET /events`
//! (server-sent events), the login and the actions under `/api/`.
//!
//! Reading needs no login. An action needs a session (a cookie from `POST /login` with the password whose hash
//! is `console_password_hash` in `[cluster]`) and that session's CSRF token in an `X-CSRF-Token` header; a POST
//! whose `Origin` is another site's is refused as well. An action is the admin request the CLI would send
//! ([`api::Request`]), carried out on the blocking pool as the admin socket does. Neither the hash, nor a cookie,
//! nor a token is ever logged; the token is rendered only into its own session's page.

pub mod auth;
pub mod page;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Form, Json, Router};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use crate::api;
use crate::http::MetricsSource;
use auth::Sessions;
use page::{Logged, View, Viewer};

/// How many events the page lists.
const EVENTS_KEPT: usize = 20;

/// The longest time between two updates pushed to a page.
const UPDATE_INTERVAL: Duration = Duration::from_secs(2);

/// How long a wrong password waits for its answer.
const LOGIN_FAILURE_DELAY: Duration = Duration::from_secs(1);

/// What the console needs of the node beyond its metrics; called on the blocking pool.
pub trait ConsoleSource: MetricsSource {
    /// The cluster as `twinsan status` shows it (in manual mode: this node's volumes).
    fn cluster_status(&self) -> api::ClusterStatus;
    /// The volumes' change events.
    fn events(&self) -> broadcast::Receiver<api::EventLine>;
    /// Carries out an admin request, as the admin socket would. May block.
    fn handle(&self, request: api::Request) -> api::Response;
    /// `[cluster] console_password_hash` of the running config.
    fn password_hash(&self) -> Option<String>;
    /// iSCSI sessions logged in on this node now, per target, with their initiators.
    fn sessions(&self) -> Vec<TargetSessions>;
}

/// The iSCSI sessions of one target on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSessions {
    /// The target's IQN.
    pub target: String,
    /// Each initiator logged in, by name, with its number of sessions (several ISIDs).
    pub initiators: Vec<(String, usize)>,
}

impl TargetSessions {
    /// Sessions in all.
    pub fn count(&self) -> usize {
        self.initiators.iter().map(|(_, n)| n).sum()
    }
}

/// The console's state: the source, the sessions, the event list and the latest view.
struct Console {
    source: Arc<dyn ConsoleSource>,
    sessions: Mutex<Sessions>,
    log: Mutex<VecDeque<Logged>>,
    latest: watch::Sender<Option<Arc<Latest>>>,
    stop: watch::Receiver<bool>,
}

/// The cluster view of the last update.
struct Latest {
    status: api::ClusterStatus,
    sessions: Vec<TargetSessions>,
    time: String,
}

/// The console's routes, with a task that follows the volume events and the cluster until `stop` turns true.
pub fn router(source: Arc<dyn ConsoleSource>, stop: watch::Receiver<bool>) -> Router {
    let console = Arc::new(Console {
        source,
        sessions: Mutex::new(Sessions::default()),
        log: Mutex::new(VecDeque::new()),
        latest: watch::channel(None).0,
        stop: stop.clone(),
    });
    tokio::spawn(follow(console.clone(), stop));
    Router::new()
        .route("/", get(overview))
        .route("/events", get(events))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route(
            "/api/nodes/{node}/standby",
            action(|node| api::Request::Standby {
                node,
                standby: true,
            }),
        )
        .route(
            "/api/nodes/{node}/unstandby",
            action(|node| api::Request::Standby {
                node,
                standby: false,
            }),
        )
        .route("/api/resources/{resource}/move", post(move_resource))
        .route(
            "/api/resources/{resource}/clear",
            action(|resource| api::Request::Clear { resource }),
        )
        .route(
            "/api/resources/{resource}/cleanup",
            action(|resource| api::Request::Cleanup {
                resource: Some(resource),
            }),
        )
        .route(
            "/api/cluster/{node}/stop",
            action(|node| api::Request::ClusterRun {
                node: Some(node),
                stop: true,
            }),
        )
        .route(
            "/api/cluster/{node}/start",
            action(|node| api::Request::ClusterRun {
                node: Some(node),
                stop: false,
            }),
        )
        .with_state(console)
}

impl Console {
    fn record(&self, text: String) {
        self.record_at(rfc3339(SystemTime::now()), text);
    }

    /// Records `text` with the time it happened (a volume event's own, from the node that saw it).
    fn record_at(&self, time: String, text: String) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.push_back(Logged { time, text });
        while log.len() > EVENTS_KEPT {
            log.pop_front();
        }
    }

    fn logged(&self) -> Vec<Logged> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().cloned().collect()
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The CSRF token of the session whose cookie `headers` carry, if it is open.
    fn session(&self, headers: &HeaderMap) -> Option<(String, String)> {
        let id = session_cookie(headers)?;
        let csrf = self.lock_sessions().csrf(id, Instant::now())?.to_owned();
        Some((id.to_owned(), csrf))
    }

    /// The cluster view now, read on the blocking pool.
    async fn view_now(&self) -> Option<Latest> {
        let source = self.source.clone();
        tokio::task::spawn_blocking(move || Latest {
            status: source.cluster_status(),
            sessions: source.sessions(),
            time: rfc3339(SystemTime::now()),
        })
        .await
        .ok()
    }
}

/// Follows the volume events and polls the cluster every [`UPDATE_INTERVAL`]: records what changed in the event
/// list and publishes the new view to the pages.
async fn follow(console: Arc<Console>, mut stop: watch::Receiver<bool>) {
    let mut events = console.source.events();
    let mut events_open = true;
    let mut tick = tokio::time::interval(UPDATE_INTERVAL);
    let mut before: Option<Summary> = None;
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
                continue;
            }
            received = events.recv(), if events_open => {
                let mut next = Some(received);
                // A burst of events makes one update.
                while let Some(received) = next.take() {
                    match received {
                        Ok(line) => match line.time.as_deref().and_then(|t| humantime::parse_rfc3339(t).ok()) {
                            Some(at) => console.record_at(rfc3339(at), describe_event(&line)),
                            None => console.record(describe_event(&line)),
                        },
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            console.record(format!("{n} volume events were missed (too many at once)"))
                        }
                        Err(broadcast::error::RecvError::Closed) => events_open = false,
                    }
                    next = match events.try_recv() {
                        Ok(line) => Some(Ok(line)),
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            Some(Err(broadcast::error::RecvError::Lagged(n)))
                        }
                        Err(_) => None,
                    };
                }
            }
            _ = tick.tick() => {}
        }
        let Some(latest) = console.view_now().await else {
            continue;
        };
        let now = Summary::of(&latest.status);
        if let Some(before) = &before {
            for change in before.changes_to(&now) {
                console.record(change);
            }
        }
        before = Some(now);
        console.latest.send_replace(Some(Arc::new(latest)));
    }
}

/// What the event list reports of the cluster view: each node's state and where each resource runs.
#[derive(PartialEq)]
struct Summary {
    nodes: BTreeMap<String, &'static str>,
    resources: BTreeMap<String, String>,
}

impl Summary {
    fn of(s: &api::ClusterStatus) -> Summary {
        Summary {
            nodes: s
                .nodes
                .iter()
                .map(|n| (n.name.clone(), page::node_state(s, n)))
                .collect(),
            resources: s
                .resources
                .iter()
                .filter(|r| r.kind == "volume")
                .map(|r| {
                    let mut at = Vec::new();
                    if !r.promoted.is_empty() {
                        at.push(format!("Primary on {}", r.promoted.join(" ")));
                    }
                    if !r.failed.is_empty() {
                        at.push(format!("FAILED on {}", r.failed.join(" ")));
                    }
                    if at.is_empty() {
                        at.push("no Primary".into());
                    }
                    (r.name.clone(), at.join(", "))
                })
                .collect(),
        }
    }

    fn changes_to(&self, now: &Summary) -> Vec<String> {
        let mut out = Vec::new();
        for (name, state) in &now.nodes {
            match self.nodes.get(name) {
                Some(was) if was != state => out.push(format!("node {name}: {was} → {state}")),
                _ => {}
            }
        }
        for (name, at) in &now.resources {
            match self.resources.get(name) {
                Some(was) if was != at => out.push(format!("stack {name}: {was} → {at}")),
                None => out.push(format!("stack {name}: {at}")),
                _ => {}
            }
        }
        out
    }
}

/// A volume event in one line.
fn describe_event(line: &api::EventLine) -> String {
    let v = &line.status;
    let mut text = format!("volume {} {}: {} {}", v.name, line.kind, v.role, v.disk);
    for p in &v.peers {
        text += &format!(
            "; peer {} {} {} {}",
            p.node, p.connection, p.replication, p.peer_disk
        );
        if let Some(done) = p.done {
            text += &format!(" ({done:.1}% done)");
        }
    }
    if v.split_brain {
        text += "; SPLIT BRAIN";
    }
    if v.suspended {
        text += "; I/O suspended";
    }
    text
}

async fn overview(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some(latest) = console.view_now().await else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "reading the cluster status failed\n",
        )
            .into_response();
    };
    let session = console.session(&headers);
    let fragment = page::overview(&View {
        status: &latest.status,
        sessions: &latest.sessions,
        logged_in: session.is_some(),
    });
    let viewer = match &session {
        Some((_, csrf)) => Viewer::LoggedIn { csrf },
        None => Viewer::Anonymous {
            configured: console.source.password_hash().is_some(),
        },
    };
    let html = page::page(
        &console.source.describe(),
        &fragment,
        &page::events(&console.logged()),
        &viewer,
    );
    let mut response = Html(html).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What one pushed update carries: the page's script swaps it in.
#[derive(Serialize)]
struct Update<'a> {
    time: &'a str,
    overview: String,
    events: String,
}

async fn events(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let session = session_cookie(&headers).map(str::to_owned);
    let latest = console.latest.subscribe();
    let stop = console.stop.clone();
    let stream = futures_util::stream::unfold(
        (console, latest, stop, session, true),
        |(console, mut latest, mut stop, session, first)| async move {
            if *stop.borrow() {
                return None;
            }
            if !first {
                tokio::select! {
                    changed = latest.changed() => changed.ok()?,
                    _ = stop.changed() => return None,
                }
            }
            let current = latest.borrow_and_update().clone();
            let event = match current {
                Some(l) => {
                    // A session that ended (logout, expiry) loses its buttons at the next update.
                    let logged_in = session.as_deref().is_some_and(|id| {
                        console.lock_sessions().csrf(id, Instant::now()).is_some()
                    });
                    let update = Update {
                        time: &l.time,
                        overview: page::overview(&View {
                            status: &l.status,
                            sessions: &l.sessions,
                            logged_in,
                        }),
                        events: page::events(&console.logged()),
                    };
                    let data = serde_json::to_string(&update).unwrap_or_default();
                    Event::default().event("update").data(data)
                }
                None => Event::default().comment("the first update is on its way"),
            };
            Some((Ok(event), (console, latest, stop, session, false)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The `POST /login` form.
#[derive(Deserialize)]
struct LoginForm {
    password: String,
}

async fn login(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let refuse = |status: StatusCode, why: &str| (status, Html(page::refused(why))).into_response();
    if foreign_origin(&headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            "refused: the login came from another site",
        );
    }
    let Some(hash) = console.source.password_hash() else {
        return refuse(
            StatusCode::FORBIDDEN,
            "this console has no password: set console_password_hash in the [cluster] section of the config \
             (`twinsan passwd` prints the line) to allow logins",
        );
    };
    let Ok(Form(form)) = form else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the login form needs a password field",
        );
    };
    let password = form.password;
    let matches = tokio::task::spawn_blocking(move || auth::verify_password(&hash, &password))
        .await
        .unwrap_or(false);
    if !matches {
        info!("console: a login with a wrong password was refused");
        tokio::time::sleep(LOGIN_FAILURE_DELAY).await;
        return refuse(StatusCode::UNAUTHORIZED, "wrong password");
    }
    let (Ok(id), Ok(csrf)) = (random_hex(), random_hex()) else {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no random bytes from the system for a session",
        );
    };
    console
        .lock_sessions()
        .open(id.clone(), csrf, Instant::now());
    info!("console: logged in");
    let cookie = format!(
        "{}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        auth::COOKIE,
        auth::SESSION_LIFETIME.as_secs()
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let id = match authorize(&console, &headers) {
        Ok(id) => id,
        Err(refusal) => return refusal,
    };
    console.lock_sessions().close(&id);
    let mut response = answer(StatusCode::OK, true, "logged out".into());
    let cookie = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        auth::COOKIE
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The `node` of `resource move`.
#[derive(Deserialize, Default)]
struct NodeChoice {
    node: Option<String>,
}

async fn move_resource(
    State(c): State<Arc<Console>>,
    Path(resource): Path<String>,
    Query(query): Query<NodeChoice>,
    headers: HeaderMap,
    form: Result<Form<NodeChoice>, FormRejection>,
) -> Response {
    let node = query
        .node
        .or_else(|| form.ok().and_then(|Form(f)| f.node))
        .filter(|n| !n.is_empty());
    act(&c, &headers, api::Request::Move { resource, node }).await
}

/// A POST route whose action is the admin request `make` builds from the path's one parameter (a node or a
/// resource name), carried out by [`act`].
fn action(make: fn(String) -> api::Request) -> MethodRouter<Arc<Console>> {
    post(
        move |State(c): State<Arc<Console>>, Path(name): Path<String>, headers: HeaderMap| async move {
            act(&c, &headers, make(name)).await
        },
    )
}

/// The answer of an action: `{ "ok": bool, "message": ... }`.
#[derive(Serialize)]
struct ActionAnswer {
    ok: bool,
    message: String,
}

fn answer(status: StatusCode, ok: bool, message: String) -> Response {
    (status, Json(ActionAnswer { ok, message })).into_response()
}

/// The session id of a POST that may act: from this site, with an open session and its CSRF token.
#[allow(clippy::result_large_err)]
fn authorize(console: &Console, headers: &HeaderMap) -> Result<String, Response> {
    if foreign_origin(headers) {
        return Err(answer(
            StatusCode::FORBIDDEN,
            false,
            "refused: the request came from another site (Origin)".into(),
        ));
    }
    if console.source.password_hash().is_none() {
        return Err(answer(
            StatusCode::FORBIDDEN,
            false,
            "actions are off: the config has no console_password_hash in [cluster] (`twinsan passwd` prints \
             the line)"
                .into(),
        ));
    }
    let Some((id, csrf)) = console.session(headers) else {
        return Err(answer(
            StatusCode::UNAUTHORIZED,
            false,
            "log in first (POST /login)".into(),
        ));
    };
    let sent = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !auth::same_secret(sent, &csrf) {
        return Err(answer(
            StatusCode::FORBIDDEN,
            false,
            "refused: the X-CSRF-Token header is missing or not this session's".into(),
        ));
    }
    Ok(id)
}

/// Carries out `request` for an authorized POST.
async fn act(console: &Arc<Console>, headers: &HeaderMap, request: api::Request) -> Response {
    if let Err(refusal) = authorize(console, headers) {
        return refusal;
    }
    info!(request = ?request, "console: action");
    let source = console.source.clone();
    match tokio::task::spawn_blocking(move || source.handle(request)).await {
        Ok(api::Response::Ok { message }) => answer(
            StatusCode::OK,
            true,
            message.unwrap_or_else(|| "done".into()),
        ),
        Ok(api::Response::Error { message }) => answer(StatusCode::CONFLICT, false, message),
        Ok(_) => answer(StatusCode::OK, true, "done".into()),
        Err(e) => {
            warn!("console: an action did not finish: {e}");
            answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                false,
                format!("the action did not finish: {e}"),
            )
        }
    }
}

/// The value of the session cookie, if the request carries one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| auth::cookie(v, auth::COOKIE))
}

/// True when the request names an `Origin` that is not this endpoint (`http://` and its `Host`).
fn foreign_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin.to_str(), host) {
        (Ok(origin), Some(host)) => origin != format!("http://{host}"),
        _ => true,
    }
}

/// 32 random bytes from the system, as hex.
fn random_hex() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(auth::hex(&bytes))
}

/// `t` as an RFC 3339 UTC time, to the second (`2026-12-07T15:51:48Z`).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests;
