//! The admin socket: how `twinsan volume ...` talks to the local node daemon.
//!
//! A Unix stream socket, mode 0600, that only root (or the daemon's own user) may use: the server checks the
//! caller's credentials (`SO_PEERCRED`) on every connection, so there is no network control plane and no password.
//! A connection carries one request line and one response line, both JSON ([`api::Request`], [`api::Response`]);
//! an `Events` request instead gets a stream of [`api::EventLine`] lines until the client closes the socket.
//!
//! The server ([`serve`]) is async and knows nothing of volumes: it hands each request to an [`AdminService`].
//! The client ([`request`], [`events`]) is blocking, for the CLI.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch};

use crate::api;

/// The longest request line the server reads, newline included.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The longest line the client reads (a status of many volumes is long, but not this long).
const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// How long the client waits for an answer, and the server for the request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the daemon does with admin requests; the server calls it and does nothing else with volumes.
pub trait AdminService: Send + Sync + 'static {
    /// Carries out one request (never `Events`). May block: the server calls it on a blocking thread.
    fn handle(&self, request: api::Request) -> api::Response;

    /// The current state of every volume as `exists` lines, and a receiver for the `change` (and `split-brain`)
    /// lines that follow. `volume` is the one the client asked for; the server filters, the service need not.
    #[allow(clippy::type_complexity)]
    fn subscribe(
        &self,
        volume: Option<&str>,
    ) -> Result<(Vec<api::EventLine>, broadcast::Receiver<api::EventLine>), String>;
}

/// Serves the admin socket at `path` until `shutdown` turns true (or its sender is dropped), then removes the
/// socket file.
///
/// A socket file left by a daemon that died is replaced; one that a live daemon answers on is an error, as is a
/// path that exists and is not a socket.
pub async fn serve(
    path: &Path,
    service: Arc<dyn AdminService>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = bind(path)?;
    tracing::info!(socket = %path.display(), "admin socket listening");
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let service = Arc::clone(&service);
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(stream, service, euid, shutdown).await {
                            tracing::debug!(error = %e, "admin connection ended with an error");
                        }
                    });
                }
                // Out of file descriptors and the like: back off and keep serving.
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(socket = %path.display(), error = %e, "could not remove the admin socket");
        }
    }
    Ok(())
}

/// Creates the folder, clears a stale socket, binds and restricts the socket to its owner.
fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        format!(
                            "another node daemon is already listening on {}",
                            path.display()
                        ),
                    ))
                }
                Err(_) => {
                    tracing::info!(socket = %path.display(), "removing a stale admin socket");
                    std::fs::remove_file(path)?;
                }
            }
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; move it away or set admin_socket",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path).map_err(|e| annotate(e, path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn annotate(e: std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// One client: credentials, one request line, one answer (or the event stream).
async fn connection(
    stream: UnixStream,
    service: Arc<dyn AdminService>,
    euid: u32,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    if uid != 0 && uid != euid {
        tracing::warn!(uid, "admin socket: refused a caller that is not root");
        let refusal = error_response("permission denied: the admin socket is for root");
        return send_line(&mut write, &refusal).await;
    }
    let mut reader = tokio::io::BufReader::new(read);
    let mut line = Vec::new();
    let limit = MAX_REQUEST_BYTES as u64;
    let mut limited = (&mut reader).take(limit);
    let read_line = limited.read_until(b'\n', &mut line);
    match tokio::time::timeout(REQUEST_TIMEOUT, read_line).await {
        Err(_) => {
            let answer = error_response("no request line within 30 s");
            return send_line(&mut write, &answer).await;
        }
        Ok(read) => {
            read?;
        }
    }
    if line.is_empty() {
        return Ok(());
    }
    if line.last() != Some(&b'\n') && line.len() as u64 >= limit {
        let answer = error_response(&format!(
            "request line longer than {MAX_REQUEST_BYTES} bytes"
        ));
        return send_line(&mut write, &answer).await;
    }
    let request: api::Request = match serde_json::from_slice(&line) {
        Ok(r) => r,
        Err(e) => {
            let answer = error_response(&format!("malformed request: {e}"));
            return send_line(&mut write, &answer).await;
        }
    };
    tracing::debug!(?request, "admin request");
    match request {
        api::Request::Events { volume } => {
            stream_events(reader, write, service, volume, shutdown).await
        }
        request => {
            let answer = tokio::task::spawn_blocking(move || service.handle(request))
                .await
                .unwrap_or_else(|e| {
                    error_response(&format!("the request failed inside the daemon: {e}"))
                });
            send_line(&mut write, &answer).await
        }
    }
}

/// `exists` lines, then every change, until the client closes its end or the daemon shuts down.
async fn stream_events(
    mut reader: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    mut write: tokio::net::unix::OwnedWriteHalf,
    service: Arc<dyn AdminService>,
    volume: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let wanted = |e: &api::EventLine| volume.as_deref().is_none_or(|v| e.status.name == v);
    let mut rx = match service.subscribe(volume.as_deref()) {
        Ok((exists, rx)) => {
            let exists: Vec<_> = exists.into_iter().filter(|e| wanted(e)).collect();
            if let (Some(v), true) = (&volume, exists.is_empty()) {
                let answer = error_response(&format!("no volume named {v} on this node"));
                return send_line(&mut write, &answer).await;
            }
            for e in &exists {
                send_line(&mut write, e).await?;
            }
            rx
        }
        Err(message) => return send_line(&mut write, &error_response(&message)).await,
    };
    let mut scratch = [0u8; 512];
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            // The client sends nothing more: end of file (or an error) means it went away.
            n = reader.read(&mut scratch) => {
                if n.unwrap_or(0) == 0 {
                    return Ok(());
                }
            }
            event = rx.recv() => match event {
                Ok(e) => {
                    if wanted(&e) {
                        send_line(&mut write, &e).await?;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // Some changes are lost: give the client the whole current state again instead.
                    tracing::debug!(missed, "admin events subscriber lagged; resending the state");
                    match service.subscribe(volume.as_deref()) {
                        Ok((exists, fresh)) => {
                            rx = fresh;
                            for e in exists.iter().filter(|e| wanted(e)) {
                                send_line(&mut write, e).await?;
                            }
                        }
                        Err(message) => return send_line(&mut write, &error_response(&message)).await,
                    }
                }
            },
        }
    }
}

fn error_response(message: &str) -> api::Response {
    api::Response::Error {
        message: message.to_string(),
    }
}

async fn send_line<T: serde::Serialize>(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    value: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.flush().await
}

/// Why the CLI could not get an answer from the node daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket, or it does not exist.
    #[error("cannot reach the node daemon at {}: {reason} (is `twinsan node run` running for this node?)", path.display())]
    Connect {
        /// The admin socket.
        path: PathBuf,
        /// Why (in the message, not a `source`, so that a chain of causes does not repeat it).
        reason: std::io::Error,
    },
    /// The socket exists but this user may not open it.
    #[error("permission denied on the admin socket {}: run this command as root", path.display())]
    PermissionDenied {
        /// The admin socket.
        path: PathBuf,
    },
    /// The daemon did not answer in time.
    #[error("the node daemon at {} did not answer within {} s", path.display(), REQUEST_TIMEOUT.as_secs())]
    Timeout {
        /// The admin socket.
        path: PathBuf,
    },
    /// Reading or writing the socket failed.
    #[error("talking to the node daemon at {}: {reason}", path.display())]
    Io {
        /// The admin socket.
        path: PathBuf,
        /// Why (in the message, not a `source`).
        reason: std::io::Error,
    },
    /// The daemon closed the connection without a (complete) answer.
    #[error("the node daemon at {} closed the connection without answering", path.display())]
    Closed {
        /// The admin socket.
        path: PathBuf,
    },
    /// The daemon sent something that is not a response of this version.
    #[error("the node daemon at {} sent an answer this CLI does not understand ({message}); are both the same version?", path.display())]
    Protocol {
        /// The admin socket.
        path: PathBuf,
        /// The parser's complaint.
        message: String,
    },
    /// The daemon refused the event stream; the text is its reason.
    #[error("{0}")]
    Refused(String),
}

/// Sends one request to the daemon at `path` and waits (at most [`REQUEST_TIMEOUT`]) for its answer.
pub fn request(path: &Path, request: &api::Request) -> Result<api::Response, ClientError> {
    let stream = connect(path)?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .map_err(|source| io_error(path, source))?;
    // A daemon that refuses the caller answers at once and closes: the request may then fail to go out (broken
    // pipe) while the refusal waits to be read, so a failed send is reported only if no answer follows.
    let sent = send_request(path, &stream, request);
    let mut reader = BufReader::new(stream).take(MAX_RESPONSE_BYTES);
    if let Err(e) = sent {
        return match read_line(path, &mut reader) {
            Ok(Some(line)) => serde_json::from_str(&line).map_err(|_| e),
            _ => Err(e),
        };
    }
    match read_line(path, &mut reader)? {
        None => Err(ClientError::Closed { path: path.into() }),
        Some(line) => serde_json::from_str(&line).map_err(|e| ClientError::Protocol {
            path: path.into(),
            message: e.to_string(),
        }),
    }
}

/// Subscribes to the events of one volume (all with `None`): the `exists` lines, then each change as it happens.
/// The iterator blocks until the next line and ends when the daemon closes the stream; dropping it unsubscribes.
pub fn events(
    path: &Path,
    volume: Option<&str>,
) -> Result<impl Iterator<Item = Result<api::EventLine, ClientError>>, ClientError> {
    let stream = connect(path)?;
    let request = api::Request::Events {
        volume: volume.map(str::to_string),
    };
    send_request(path, &stream, &request)?;
    Ok(EventStream {
        path: path.into(),
        reader: BufReader::new(stream),
        done: false,
    })
}

/// The lines of an `Events` answer.
struct EventStream {
    path: PathBuf,
    reader: BufReader<std::os::unix::net::UnixStream>,
    done: bool,
}

impl Iterator for EventStream {
    type Item = Result<api::EventLine, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut limited = (&mut self.reader).take(MAX_RESPONSE_BYTES);
        let line = match read_line(&self.path, &mut limited) {
            Ok(Some(line)) => line,
            Ok(None) => {
                self.done = true;
                return None;
            }
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        if let Ok(event) = serde_json::from_str::<api::EventLine>(&line) {
            return Some(Ok(event));
        }
        self.done = true;
        Some(Err(match serde_json::from_str::<api::Response>(&line) {
            Ok(api::Response::Error { message }) => ClientError::Refused(message),
            Ok(other) => ClientError::Protocol {
                path: self.path.clone(),
                message: format!("expected an event, got {other:?}"),
            },
            Err(e) => ClientError::Protocol {
                path: self.path.clone(),
                message: e.to_string(),
            },
        }))
    }
}

fn connect(path: &Path) -> Result<std::os::unix::net::UnixStream, ClientError> {
    std::os::unix::net::UnixStream::connect(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            ClientError::PermissionDenied { path: path.into() }
        } else {
            ClientError::Connect {
                path: path.into(),
                reason: source,
            }
        }
    })
}

fn send_request(
    path: &Path,
    mut stream: &std::os::unix::net::UnixStream,
    request: &api::Request,
) -> Result<(), ClientError> {
    let mut line =
        serde_json::to_vec(request).map_err(|e| io_error(path, std::io::Error::other(e)))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .and_then(|()| stream.flush())
        .map_err(|source| io_error(path, source))
}

/// One line without its newline; `None` at a clean end of stream. A line cut short (no newline) is an error.
fn read_line(path: &Path, reader: &mut impl BufRead) -> Result<Option<String>, ClientError> {
    let mut line = String::new();
    let n = reader
        .read_line(&mut line)
        .map_err(|source| io_error(path, source))?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with('\n') {
        return Err(ClientError::Closed { path: path.into() });
    }
    line.pop();
    Ok(Some(line))
}

fn io_error(path: &Path, source: std::io::Error) -> ClientError {
    match source.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            ClientError::Timeout { path: path.into() }
        }
        _ => ClientError::Io {
            path: path.into(),
            reason: source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A fresh folder under the system temp dir, removed on drop.
    fn test_dir(tag: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("twinsan-admin-{tag}-"))
            .tempdir()
            .expect("create the test dir")
    }

    fn status(name: &str, role: &str) -> api::VolumeStatus {
        api::VolumeStatus {
            name: name.into(),
            role: role.into(),
            disk: "UpToDate".into(),
            split_brain: false,
            size_kib: 65536,
            suspended: false,
            lease_hold: false,
            peers: vec![],
        }
    }

    fn event(kind: &str, name: &str, role: &str) -> api::EventLine {
        api::EventLine {
            kind: kind.into(),
            status: status(name, role),
            time: None,
        }
    }

    /// Two volumes; `handle` echoes the request, `subscribe` hands out receivers of one channel.
    struct FakeService {
        changes: broadcast::Sender<api::EventLine>,
        requests: Mutex<Vec<api::Request>>,
    }

    impl FakeService {
        fn new() -> Arc<FakeService> {
            Arc::new(FakeService {
                changes: broadcast::channel(4).0,
                requests: Mutex::new(Vec::new()),
            })
        }
    }

    impl AdminService for FakeService {
        fn handle(&self, request: api::Request) -> api::Response {
            self.requests.lock().expect("lock").push(request.clone());
            match request {
                api::Request::Status { .. } => api::Response::Status {
                    volumes: vec![status("vol0", "Primary")],
                },
                api::Request::Down { volume } => api::Response::Error {
                    message: format!("{volume} is in use"),
                },
                other => api::Response::Ok {
                    message: Some(format!("done: {other:?}")),
                },
            }
        }

        fn subscribe(
            &self,
            _volume: Option<&str>,
        ) -> Result<(Vec<api::EventLine>, broadcast::Receiver<api::EventLine>), String> {
            let exists = vec![
                event("exists", "vol0", "Primary"),
                event("exists", "vol1", "Secondary"),
            ];
            Ok((exists, self.changes.subscribe()))
        }
    }

    /// A running server; dropping the handle's sender stops it.
    struct Server {
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    impl Server {
        async fn start(path: &Path, service: Arc<FakeService>) -> Server {
            let (stop, rx) = watch::channel(false);
            let owned = path.to_path_buf();
            let task = tokio::spawn(async move { serve(&owned, service, rx).await });
            for _ in 0..200 {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Server { stop, task };
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the admin server did not start");
        }

        async fn stop(self) {
            self.stop.send(true).expect("server still running");
            self.task.await.expect("join").expect("serve");
        }
    }

    async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(f).await.expect("blocking task")
    }

    /// Writes `bytes` raw and reads the one answer line.
    async fn raw_exchange(path: &Path, bytes: Vec<u8>) -> api::Response {
        let path = path.to_path_buf();
        blocking(move || {
            let mut stream = std::os::unix::net::UnixStream::connect(&path).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            // The server may answer and close before it has read everything: ignore a broken pipe.
            let _ = stream.write_all(&bytes);
            let mut line = String::new();
            BufReader::new(stream)
                .read_line(&mut line)
                .expect("read the answer");
            serde_json::from_str(&line).expect("a response line")
        })
        .await
    }

    #[tokio::test]
    async fn request_and_response_round_trip() {
        let dir = test_dir("roundtrip");
        let path = dir.path().join("sub/node1.sock");
        let service = FakeService::new();
        let server = Server::start(&path, Arc::clone(&service)).await;

        let mode = std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let p = path.clone();
        let (all, primary, down) = blocking(move || {
            let all = request(&p, &api::Request::Status { volume: None }).expect("status");
            let primary = request(
                &p,
                &api::Request::Primary {
                    volume: "vol0".into(),
                    force: true,
                },
            )
            .expect("primary");
            let down = request(
                &p,
                &api::Request::Down {
                    volume: "vol0".into(),
                },
            )
            .expect("down");
            (all, primary, down)
        })
        .await;
        assert_eq!(
            all,
            api::Response::Status {
                volumes: vec![status("vol0", "Primary")]
            }
        );
        assert!(
            matches!(primary, api::Response::Ok { message: Some(m) } if m.contains("force: true"))
        );
        assert_eq!(
            down,
            api::Response::Error {
                message: "vol0 is in use".into()
            }
        );
        assert_eq!(service.requests.lock().expect("lock").len(), 3);

        server.stop().await;
        assert!(!path.exists(), "the socket file is removed on shutdown");
    }

    #[tokio::test]
    async fn a_malformed_line_gets_an_error() {
        let dir = test_dir("malformed");
        let path = dir.path().join("node1.sock");
        let service = FakeService::new();
        let server = Server::start(&path, Arc::clone(&service)).await;

        let answer = raw_exchange(&path, b"{\"op\":\"explode\"}\n".to_vec()).await;
        match answer {
            api::Response::Error { message } => {
                assert!(message.contains("malformed request"), "{message}")
            }
            other => panic!("expected an error, got {other:?}"),
        }
        let answer = raw_exchange(&path, b"not json at all\n".to_vec()).await;
        assert!(matches!(answer, api::Response::Error { .. }));
        assert!(service.requests.lock().expect("lock").is_empty());
        server.stop().await;
    }

    #[tokio::test]
    async fn an_oversize_line_gets_an_error() {
        let dir = test_dir("oversize");
        let path = dir.path().join("node1.sock");
        let server = Server::start(&path, FakeService::new()).await;

        let answer = raw_exchange(&path, vec![b'x'; MAX_REQUEST_BYTES + 100]).await;
        match answer {
            api::Response::Error { message } => {
                assert!(message.contains("longer than"), "{message}")
            }
            other => panic!("expected an error, got {other:?}"),
        }
        // A request just under the limit is still read whole (padded with spaces, which JSON allows).
        let mut line = serde_json::to_vec(&api::Request::Status { volume: None }).expect("json");
        line.resize(MAX_REQUEST_BYTES - 1, b' ');
        line.push(b'\n');
        assert!(matches!(
            raw_exchange(&path, line).await,
            api::Response::Status { .. }
        ));
        server.stop().await;
    }

    #[tokio::test]
    async fn events_stream_exists_then_changes_and_stop_when_the_client_drops() {
        let dir = test_dir("events");
        let path = dir.path().join("node1.sock");
        let service = FakeService::new();
        let server = Server::start(&path, Arc::clone(&service)).await;

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let p = path.clone();
        let client = tokio::task::spawn_blocking(move || {
            let mut stream = events(&p, Some("vol1")).expect("subscribe");
            for _ in 0..3 {
                let line = stream.next().expect("a line").expect("an event");
                tx.send(line).expect("test alive");
            }
            // Hold the subscription until told to drop it.
            let _ = release_rx.recv();
            drop(stream);
        });

        let first = rx.recv().await.expect("exists");
        assert_eq!(first, event("exists", "vol1", "Secondary"));
        // Wait until the server holds its receiver, then publish: vol0 is filtered out, vol1 comes through.
        while service.changes.receiver_count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        service
            .changes
            .send(event("change", "vol0", "Secondary"))
            .expect("subscribed");
        service
            .changes
            .send(event("change", "vol1", "Primary"))
            .expect("subscribed");
        service
            .changes
            .send(event("split-brain", "vol1", "Primary"))
            .expect("subscribed");
        assert_eq!(
            rx.recv().await.expect("change"),
            event("change", "vol1", "Primary")
        );
        assert_eq!(
            rx.recv().await.expect("split"),
            event("split-brain", "vol1", "Primary")
        );

        release_tx.send(()).expect("client waiting");
        client.await.expect("client");
        // The server notices the closed socket and drops its receiver.
        for _ in 0..500 {
            if service.changes.receiver_count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            service.changes.receiver_count(),
            0,
            "the server still streams to a closed client"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn a_lagging_subscriber_gets_the_state_again() {
        let dir = test_dir("lagged");
        let path = dir.path().join("node1.sock");
        let service = FakeService::new();
        let server = Server::start(&path, Arc::clone(&service)).await;

        let p = path.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let client = tokio::task::spawn_blocking(move || {
            for line in events(&p, None).expect("subscribe") {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        assert_eq!(
            rx.recv().await.expect("exists"),
            event("exists", "vol0", "Primary")
        );
        assert_eq!(
            rx.recv().await.expect("exists"),
            event("exists", "vol1", "Secondary")
        );
        while service.changes.receiver_count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The test runtime has one thread and this loop does not yield: the server cannot keep up with a channel
        // of 4, so it lags for certain.
        for _ in 0..16 {
            let _ = service.changes.send(event("change", "vol0", "Secondary"));
        }
        assert_eq!(
            rx.recv().await.expect("resent"),
            event("exists", "vol0", "Primary")
        );
        assert_eq!(
            rx.recv().await.expect("resent"),
            event("exists", "vol1", "Secondary")
        );
        // And the stream goes on from there.
        service
            .changes
            .send(event("change", "vol1", "Primary"))
            .expect("subscribed");
        assert_eq!(
            rx.recv().await.expect("change"),
            event("change", "vol1", "Primary")
        );
        drop(rx);
        server.stop().await;
        client.await.expect("client");
    }

    #[tokio::test]
    async fn events_for_an_unknown_volume_are_refused() {
        let dir = test_dir("unknown");
        let path = dir.path().join("node1.sock");
        let server = Server::start(&path, FakeService::new()).await;
        let p = path.clone();
        let first = blocking(move || events(&p, Some("vol9")).expect("connect").next()).await;
        match first {
            Some(Err(ClientError::Refused(m))) => assert!(m.contains("vol9"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn a_second_server_on_a_live_socket_is_refused() {
        let dir = test_dir("twice");
        let path = dir.path().join("node1.sock");
        let server = Server::start(&path, FakeService::new()).await;

        let (_stop, rx) = watch::channel(false);
        let err = serve(&path, FakeService::new(), rx)
            .await
            .expect_err("a second daemon must be refused");
        assert!(
            err.to_string()
                .contains("another node daemon is already listening on"),
            "{err}"
        );
        // The first one still answers.
        let p = path.clone();
        let answer = blocking(move || request(&p, &api::Request::Status { volume: None })).await;
        assert!(matches!(answer, Ok(api::Response::Status { .. })));
        server.stop().await;
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_replaced() {
        let dir = test_dir("stale");
        let path = dir.path().join("node1.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        assert!(
            path.exists(),
            "a closed listener leaves its socket file behind"
        );

        let server = Server::start(&path, FakeService::new()).await;
        let p = path.clone();
        let answer = blocking(move || request(&p, &api::Request::Status { volume: None })).await;
        assert!(matches!(answer, Ok(api::Response::Status { .. })));
        server.stop().await;
    }

    #[tokio::test]
    async fn a_regular_file_in_the_way_is_not_deleted() {
        let dir = test_dir("regular");
        let path = dir.path().join("node1.sock");
        std::fs::write(&path, b"precious").expect("write");
        let (_stop, rx) = watch::channel(false);
        let err = serve(&path, FakeService::new(), rx)
            .await
            .expect_err("not a socket");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).expect("still there"), b"precious");
    }

    /// Where the child process of `a_caller_that_is_not_root_is_refused` finds the socket.
    const OTHER_USER_SOCKET_ENV: &str = "TWINSAN_TEST_ADMIN_SOCKET";

    #[tokio::test]
    async fn a_caller_that_is_not_root_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: running a client as another user needs root");
            return;
        }
        let dir = test_dir("nobody");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod dir");
        let path = dir.path().join("node1.sock");
        let service = FakeService::new();
        let server = Server::start(&path, Arc::clone(&service)).await;
        // Open the file itself, so that only the credential check stands between that user and the daemon.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .expect("chmod socket");

        let p = path.clone();
        let output = blocking(move || {
            use std::os::unix::process::CommandExt;
            let exe = std::env::current_exe().expect("test binary");
            std::process::Command::new(exe)
                .args([
                    "--exact",
                    "admin::tests::client_as_another_user",
                    "--ignored",
                    "--nocapture",
                ])
                .env(OTHER_USER_SOCKET_ENV, &p)
                .uid(65534)
                .gid(65534)
                .output()
        })
        .await;
        // As root the child must run: a failure to start it fails the test, never skips it.
        let output =
            output.unwrap_or_else(|e| panic!("cannot run the test binary as uid 65534: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("1 passed"),
            "the child ran no test: {stdout}"
        );
        assert!(
            service.requests.lock().expect("lock").is_empty(),
            "the request reached the service"
        );
        server.stop().await;
    }

    /// The client half of `a_caller_that_is_not_root_is_refused`, run by it as another user.
    #[test]
    #[ignore = "run as another user by a_caller_that_is_not_root_is_refused"]
    fn client_as_another_user() {
        // Run directly (`--include-ignored`), there is no socket to try.
        let Some(path) = std::env::var_os(OTHER_USER_SOCKET_ENV) else {
            return;
        };
        let answer =
            request(Path::new(&path), &api::Request::Status { volume: None }).expect("an answer");
        assert_eq!(
            answer,
            api::Response::Error {
                message: "permission denied: the admin socket is for root".into()
            }
        );
    }

    #[test]
    fn an_absent_daemon_is_reported_with_a_hint() {
        let dir = test_dir("absent");
        let path = dir.path().join("node1.sock");
        let err =
            request(&path, &api::Request::Status { volume: None }).expect_err("nobody listens");
        let text = err.to_string();
        assert!(text.contains("cannot reach the node daemon at"), "{text}");
        assert!(text.contains("twinsan node run"), "{text}");
    }
}
