//! `twinsan demo [--dir DIR]`: the whole system on this machine in one command, without root or a config — the
//! `twinsan init` layout written to DIR (a fresh temporary folder by default), both nodes started as child
//! processes (node1 on 127.0.0.11, node2 on 127.0.0.12, the primary binding the "virtual IP" 127.0.0.10), the
//! iSCSI URL, a live status view and the commands to try a failover. Ctrl-C or SIGTERM stops both nodes cleanly.
//!
//! The demo prints the URL only once the LUN is served there: the primary's own view has its target and LUNs
//! started and a connection to the portal opens. A port the nodes need that another program holds (e.g. one
//! bound to 0.0.0.0:3260) is an error naming it, before anything starts. The nodes get SIGTERM when the demo
//! dies, however it dies (`PR_SET_PDEATHSIG`), so none outlives it holding the ports.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use twinsan_node::admin;
use twinsan_node::api::{ClusterStatus, Request, Response};
use twinsan_node::config::ClusterConfig;

use crate::init_cmd::{self, InitArgs};

/// `twinsan demo` arguments.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// The folder for the config, the disks and the nodes' logs. Default: a fresh temporary folder, removed when
    /// the demo stops. A folder from an earlier demo is reused as it is.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Size of the volume (K, M, G suffixes), for a new folder.
    #[arg(long, default_value = "256M", value_parser = init_cmd::volume_size)]
    pub size: String,
}

/// The target and LUN `twinsan init` configures.
const URL: &str = "iscsi://127.0.0.10:3260/iqn.2025-08.local.twinsan:vol0/1";
/// How long the cluster may take to come up.
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long each node may take to hand over and stop.
const STOP_LIMIT: Duration = Duration::from_secs(40);

/// A node process of the demo; stopped (SIGTERM, then SIGKILL) when dropped.
struct NodeChild {
    name: String,
    child: Child,
    log: PathBuf,
}

impl NodeChild {
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        // SAFETY: kill(2) on the pid of our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_LIMIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for NodeChild {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let stop = crate::signals::stop_on_signal()?;
    let (dir, temporary) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (temp_dir()?, true),
    };
    let result = demo(&dir, &args, &stop);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn temp_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir();
    for i in 0..100u32 {
        let dir = base.join(format!("twinsan-demo-{}-{i}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!("cannot make a temporary folder in {}", base.display())
}

fn demo(dir: &Path, args: &DemoArgs, stop_flag: &AtomicBool) -> anyhow::Result<()> {
    let config_path = dir.join("twinsan.toml");
    let mut console_password = None;
    if !config_path.exists() {
        let made = init_cmd::create(
            InitArgs {
                dir: dir.to_path_buf(),
                manual: false,
                size: args.size.clone(),
            },
            false,
        )?;
        console_password = Some(made);
    }
    let config = ClusterConfig::load(&config_path)?;
    if config.cluster.manual {
        bail!(
            "{} is a manual cluster (cluster.manual = true): the demo runs a managed one; use another --dir",
            config_path.display()
        );
    }
    ports_free(&config)?;
    let portal = config
        .targets
        .first()
        .map(|t| SocketAddr::new(t.vip, t.port))
        .context("the config has no target")?;
    let exe = std::env::current_exe().context("finding this program")?;
    let mut nodes = Vec::new();
    for node in &config.nodes {
        let log = dir.join(format!("{}.log", node.name));
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(&exe);
        command
            .arg("--config")
            .arg(&config_path)
            .args(["--node", &node.name, "node", "run"])
            .env("TWINSAN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        stop_with_this_process(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("starting node {}", node.name))?;
        nodes.push(NodeChild {
            name: node.name.clone(),
            child,
            log,
        });
    }
    let sockets: Vec<(String, PathBuf)> = config
        .nodes
        .iter()
        .map(|n| (n.name.clone(), config.admin_socket(n)))
        .collect();
    let cfg = config_path.display().to_string();
    let twinsan = crate::ops_cmd::program_name();
    println!("twinsan demo: a two-node cluster in {}", dir.display());
    println!(
        "  node1 127.0.0.11 and node2 127.0.0.12 (logs: {}/node1.log, node2.log)",
        dir.display()
    );
    let started = Instant::now();
    let first = loop {
        if stop_flag.load(Ordering::SeqCst) {
            return stop(nodes);
        }
        for n in nodes.iter_mut() {
            if let Ok(Some(status)) = n.child.try_wait() {
                let tail = log_tail(&n.log);
                bail!("node {} stopped ({status}) while starting:\n{tail}", n.name);
            }
        }
        let views = statuses(&sockets);
        // A target that cannot start (its port taken since the check above, say) does not fix itself.
        if let Some(why) = serving_error(&views) {
            bail!(
                "the LUN cannot be served: {why}; see the logs in {}",
                dir.display()
            );
        }
        if let Some(p) = serving(&sockets, &views, portal) {
            break p;
        }
        if started.elapsed() > START_LIMIT {
            bail!(
                "the cluster did not come up within {START_LIMIT:?}; see the logs in {}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("  {first} is primary; the LUN is served at");
    println!();
    println!("    {URL}");
    println!();
    match &console_password {
        Some(password) => init_cmd::print_console(password),
        None => println!(
            "Web console: http://127.0.0.11:{port}/ and http://127.0.0.12:{port}/ (its password was printed when \
             {} was made; `twinsan passwd` makes a new one)",
            dir.display(),
            port = init_cmd::CONSOLE_PORT
        ),
    }
    println!();
    println!("Try it (in another terminal):");
    println!("  iscsi-ls -s iscsi://127.0.0.10:3260");
    println!("  qemu-io -f raw -c 'write -P 0x5a 0 1M' -c 'read -P 0x5a 0 1M' {URL}");
    println!("  {twinsan} --config {cfg} --node node2 status");
    println!("  {twinsan} --config {cfg} --node node2 cluster stop {first}    # fail over");
    println!("  {twinsan} --config {cfg} --node node2 cluster start {first}   # bring it back");
    println!("  {twinsan} --config {cfg} --node node1 target ls");
    println!("Ctrl-C stops the demo.");
    println!();
    let terminal = std::io::stdout().is_terminal();
    let mut last = String::new();
    let mut drawn = 0usize;
    let mut exited = vec![false; nodes.len()];
    while !stop_flag.load(Ordering::SeqCst) {
        for (n, told) in nodes.iter_mut().zip(exited.iter_mut()) {
            if *told {
                continue;
            }
            if let Ok(Some(status)) = n.child.try_wait() {
                *told = true;
                println!("node {} exited ({status}); see {}", n.name, n.log.display());
                // The view is printed anew below the message.
                drawn = 0;
                last.clear();
            }
        }
        let view = status_view(&statuses(&sockets));
        if view != last {
            let mut out = std::io::stdout();
            if terminal && drawn > 0 {
                // Redraw the view in place.
                let _ = write!(out, "\x1b[{drawn}A\x1b[J");
            }
            let _ = write!(out, "{view}");
            let _ = out.flush();
            drawn = view.lines().count();
            last = view;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop(nodes)
}

fn stop(mut nodes: Vec<NodeChild>) -> anyhow::Result<()> {
    println!("stopping both nodes");
    let mut failed = Vec::new();
    for n in nodes.iter_mut() {
        match n.stop() {
            Some(status) if status.success() => {}
            other => failed.push(format!("{} ({other:?})", n.name)),
        }
    }
    if failed.is_empty() {
        println!("stopped");
        Ok(())
    } else {
        bail!("nodes that did not stop cleanly: {}", failed.join(", "))
    }
}

/// Fails, naming the address, when another program holds a TCP port a node of the demo listens on: the
/// target's portal, or a volume's replication port.
fn ports_free(config: &ClusterConfig) -> anyhow::Result<()> {
    let mut wanted: Vec<(SocketAddr, String)> = config
        .targets
        .iter()
        .map(|t| {
            (
                SocketAddr::new(t.vip, t.port),
                format!("the iSCSI portal of {}", t.iqn),
            )
        })
        .collect();
    for v in &config.volumes {
        for n in &config.nodes {
            wanted.push((
                SocketAddr::new(n.address, v.port),
                format!("the replication port of {} on {}", v.name, n.name),
            ));
        }
    }
    for (addr, what) in wanted {
        if let Err(e) = TcpListener::bind(addr) {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                bail!(
                    "{addr} is in use by another program ({e}); the demo serves {what} there: stop that program \
                     (`ss -ltnp | grep :{}` shows it) and run the demo again",
                    addr.port()
                );
            }
            bail!("cannot listen on {addr} for {what}: {e}");
        }
    }
    Ok(())
}

/// Makes the node `command` starts receive SIGTERM (a clean stop: it hands over and closes its ports) when this
/// process dies, even by SIGKILL.
fn stop_with_this_process(command: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe calls are
    // allowed: it calls prctl(2) and getppid(2) and builds its errors without allocating. The death signal is
    // tied to the thread that forks; the demo spawns its nodes from its main thread, which lives until the end.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The demo died before prctl took effect: nobody sends the signal any more, so do not start.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Why the stack's target or a LUN does not run, if a node reports it failing.
fn serving_error(views: &[Option<ClusterStatus>]) -> Option<String> {
    views.iter().flatten().find_map(|v| {
        v.resources
            .iter()
            .filter(|r| r.kind == "target" || r.kind == "lun")
            .find_map(|r| {
                r.last_error
                    .as_ref()
                    .map(|why| format!("{}: {why}", r.name))
            })
    })
}

/// The node that serves the LUN at `portal`: in its own view the whole stack runs there, and a connection to
/// the portal opens.
fn serving(
    sockets: &[(String, PathBuf)],
    views: &[Option<ClusterStatus>],
    portal: SocketAddr,
) -> Option<String> {
    let primary = sockets
        .iter()
        .zip(views)
        .find_map(|((name, _), view)| view.as_ref().and_then(stack_on).filter(|on| on == name))?;
    TcpStream::connect_timeout(&portal, Duration::from_secs(1))
        .is_ok()
        .then_some(primary)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Each node's cluster view, if its daemon answers.
fn statuses(sockets: &[(String, PathBuf)]) -> Vec<Option<ClusterStatus>> {
    sockets
        .iter()
        .map(
            |(_, socket)| match admin::request(socket, &Request::ClusterStatus) {
                Ok(Response::Cluster { status }) => Some(*status),
                _ => None,
            },
        )
        .collect()
}

/// The node where the whole stack of vol0 runs, in one node's view.
fn stack_on(s: &ClusterStatus) -> Option<String> {
    let find = |name: &str| s.resources.iter().find(|r| r.name == name);
    let node = find("vol0")?.promoted.first()?.clone();
    ["vol0-vip", "vol0-target", "vol0-lun1"]
        .iter()
        .all(|r| find(r).is_some_and(|r| r.started == [node.clone()]))
        .then_some(node)
}

/// A few lines: each node as it sees itself, where the stack runs, the replication state.
fn status_view(views: &[Option<ClusterStatus>]) -> String {
    let mut out = String::new();
    for (i, v) in views.iter().enumerate() {
        let name = format!("node{}", i + 1);
        let Some(v) = v else {
            out += &format!("{name}: daemon not answering\n");
            continue;
        };
        let me = v.nodes.iter().find(|n| n.name == v.node);
        let state = match me {
            Some(n) if n.stopped => "stopped (cluster stop)",
            Some(n) if n.standby => "standby",
            Some(n) if n.online => "Online",
            _ => "OFFLINE",
        };
        let volume = v
            .volumes
            .first()
            .map(|vol| {
                let peer = vol.peers.first();
                format!(
                    "vol0 {} {} / peer {} {}{}",
                    vol.role,
                    vol.disk,
                    peer.map(|p| p.connection.as_str()).unwrap_or("?"),
                    peer.map(|p| p.peer_disk.as_str()).unwrap_or("?"),
                    peer.and_then(|p| p.done)
                        .map(|d| format!(" sync {d:.1}%"))
                        .unwrap_or_default()
                )
            })
            .unwrap_or_default();
        let stack = stack_on(v)
            .map(|n| format!("stack on {n}"))
            .unwrap_or_else(|| "stack not running".into());
        out += &format!("{name}: {state}, {stack}, {volume}\n");
        // Why, when something does not run or connect.
        for r in &v.resources {
            if let Some(why) = &r.last_error {
                out += &format!("  {}: {why}\n", r.name);
            }
        }
        for p in v.volumes.iter().flat_map(|vol| &vol.peers) {
            if let Some(why) = &p.last_error {
                out += &format!("  link to {}: {why}\n", p.node);
            }
        }
    }
    out
}
