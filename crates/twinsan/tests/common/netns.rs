//! The namespace lab of the multi-host acceptance tests: a few hosts, each in its own network namespace, on one
//! or two switched links, with faults injected in the switch.
//!
//! ```text
//!                 switch namespace (two bridges, no addresses)
//!        br0: 198.18.0.0/24                      br1: 198.18.1.0/24 (opts.second_link)
//!   node1-0  node2-0  client-0  witness-0           node1-1  node2-1          <- switch-side veth ends
//!      |        |        |          |                  |        |
//!    eth0     eth0     eth0       eth0               eth1     eth1            <- inside each host namespace
//!    node1    node2    client     witness            node1    node2
//!    .0.11    .0.12    .0.100     .0.13              .1.11    .1.12
//! ```
//!
//! ```ignore
//! let lab = Lab::new(LabOptions { second_link: true, ..LabOptions::new("split") });
//! let mut node = Proc::spawn("node1", lab.command(NODE1, twinsan_bin()).args(["serve", /* ... */]));
//! lab.wait_listening(CLIENT, "198.18.0.11:3260".parse().unwrap(), Duration::from_secs(20), &mut node);
//! lab.cut_between_nodes();            // node1 <-> node2 dropped on every link; both still reach the client
//! assert!(!lab.ping(NODE1, "198.18.1.12") && lab.ping(CLIENT, "198.18.0.11"));
//! lab.heal_all();
//! assert!(node.terminate(Duration::from_secs(15)).success());
//! ```
//!
//! - **Names.** Every namespace is `ts<pid>-<tag><n>-<host>` (`pid` of the test process, `n` a per-process
//!   counter), so labs of parallel tests, and of tests running as threads of one process, never meet. Interface
//!   names are fixed because each lab has namespaces of its own: `eth0`/`eth1` inside a host (a config can name
//!   the VIP interface `eth0`), `br0`/`br1` and `<host>-<link>` in the switch. The host's root namespace is
//!   never touched: the veths are created in the switch namespace with their peer directly in the host's.
//! - **IPv6 is disabled** in every lab namespace (no link-local addresses, DAD or router solicitations):
//!   the lab speaks IPv4 on 198.18.0.0/24 and 198.18.1.0/24 only.
//! - **Faults** are nftables rules of the `bridge` family in the switch namespace (table `twinsan_lab`, chain
//!   `forward`), rewritten as a whole, atomically, on every change. A cut drops every frame (ARP included) in both
//!   directions at the switch, while every host keeps its carrier, its addresses and its neighbour entries: the
//!   hosts see silence, as behind a failed switch path. Nothing is added to the host namespaces, so what a test
//!   (or the daemon under test) does there with nftables or addresses never meets the lab's rules.
//!   Each `heal_*` undoes only its own kind of cut; [`Lab::heal_all`] undoes every cut.
//! - **Processes.** [`Lab::command`] is `ip netns exec NS PROGRAM ARGS`; `ip netns exec` switches namespace
//!   and then execs PROGRAM without forking (iproute2 forks only in `-batch` mode), so the spawned child's pid is
//!   the program's own pid: signal it, by that pid, through [`Proc`]. The test `netns::command_pid_is_the_program`
//!   checks this. [`Proc`] also sets `PR_SET_PDEATHSIG` (SIGKILL), so a test killed by the runner (no Drop)
//!   leaves no orphan keeping a namespace alive. The lab itself starts no long-lived process and kills none.
//! - **Probes** need no tool in the namespaces: [`Lab::ping`] sends one ICMP echo from a raw socket opened by a
//!   thread that entered the namespace with `setns(2)` ([`Lab::run_in`]; the machines have no `ping`), and
//!   [`Lab::tcp_connect`] likewise. [`Lab::neigh`], [`Lab::addrs`] and [`Lab::mac`] read `ip -n NS`; [`Lab::ip`]
//!   runs any `ip -n NS ...`, e.g. to add or remove a VIP on `eth0`.
//! - **Cleanup.** Dropping the lab deletes every namespace it created, which deletes their veths and bridges. A
//!   process still running in a namespace keeps that namespace alive (without its name), so declare the lab
//!   *before* the [`Proc`]s that run in it: locals drop in reverse order, the processes first. On creation the
//!   lab also deletes leftover `ts<pid>-*` namespaces of an earlier crashed run whose owner pid is dead (never one
//!   of a live process, never one of this process); a test killed by the runner is cleaned up that way.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::require_tool_in;

pub const NODE1: &str = "node1";
pub const NODE2: &str = "node2";
pub const CLIENT: &str = "client";
pub const WITNESS: &str = "witness";
/// The namespace holding the bridges.
pub const SWITCH: &str = "switch";

/// Each host with its address on link 0 and link 1 (/24 each).
const HOSTS: [(&str, [Option<&str>; 2]); 4] = [
    (NODE1, [Some("198.18.0.11"), Some("198.18.1.11")]),
    (NODE2, [Some("198.18.0.12"), Some("198.18.1.12")]),
    (CLIENT, [Some("198.18.0.100"), None]),
    (WITNESS, [Some("198.18.0.13"), None]),
];

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";
const TABLE: &str = "twinsan_lab";
/// Every command the lab runs has this long to finish.
const CMD_LIMIT: Duration = Duration::from_secs(20);
const SBIN: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// What to build.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// A short tag naming the test in the namespace names: ASCII letters and digits, at most 10.
    pub tag: String,
    /// Also link 1 (198.18.1.0/24) between node1 and node2.
    pub second_link: bool,
    /// Also a `witness` host on link 0.
    pub witness: bool,
}

impl LabOptions {
    /// node1, node2 and the client on link 0 only.
    pub fn new(tag: &str) -> LabOptions {
        LabOptions {
            tag: tag.to_owned(),
            second_link: false,
            witness: false,
        }
    }
}

/// The network namespaces of one test; deleted on drop.
pub struct Lab {
    hosts: Vec<&'static str>,
    links: usize,
    /// The namespace name of the switch and of each host.
    names: Vec<(&'static str, String)>,
    /// Namespaces this lab created, in creation order.
    created: Vec<String>,
    ip: PathBuf,
    nft: PathBuf,
    faults: Mutex<Faults>,
    setup_time: Duration,
}

/// The cuts in force, as switch ports.
#[derive(Default)]
struct Faults {
    /// Every frame into or out of these ports is dropped.
    ports: BTreeSet<String>,
    /// Frames between these two ports are dropped, both ways.
    pairs: BTreeSet<(String, String)>,
}

impl Lab {
    /// Builds the lab. Fails the test with a clear message when not root or `ip`/`nft` are missing, or when the
    /// kernel lacks a feature (veth, bridge, nftables' bridge family).
    pub fn new(opts: LabOptions) -> Lab {
        require_root();
        let ip = require_tool_in(&SBIN, "ip");
        let nft = require_tool_in(&SBIN, "nft");
        assert!(
            !opts.tag.is_empty()
                && opts.tag.len() <= 10
                && opts.tag.bytes().all(|b| b.is_ascii_alphanumeric()),
            "lab tag {:?}: 1 to 10 ASCII letters and digits",
            opts.tag
        );
        sweep();
        let started = Instant::now();
        let mut hosts = vec![NODE1, NODE2, CLIENT];
        if opts.witness {
            hosts.push(WITNESS);
        }
        let prefix = format!("ts{}-{}{}", std::process::id(), opts.tag, super::unique());
        let names = std::iter::once(SWITCH)
            .chain(hosts.iter().copied())
            .map(|h| (h, format!("{prefix}-{h}")))
            .collect();
        let mut lab = Lab {
            hosts,
            names,
            links: if opts.second_link { 2 } else { 1 },
            created: Vec::new(),
            ip,
            nft,
            faults: Mutex::new(Faults::default()),
            setup_time: Duration::ZERO,
        };
        // A panic from here on drops `lab`, which deletes what was created so far.
        lab.build();
        lab.setup_time = started.elapsed();
        lab
    }

    fn build(&mut self) {
        for (role, ns) in self.names.clone() {
            self.ip_global(&["netns", "add", &ns]);
            self.created.push(ns.clone());
            disable_ipv6(&ns);
            self.ip(role, &["link", "set", "lo", "up"]);
        }
        for l in 0..self.links {
            let br = format!("br{l}");
            self.ip(
                SWITCH,
                &[
                    "link",
                    "add",
                    &br,
                    "type",
                    "bridge",
                    "forward_delay",
                    "0",
                    "mcast_snooping",
                    "0",
                ],
            );
            self.ip(SWITCH, &["link", "set", &br, "up"]);
        }
        for host in self.hosts.clone() {
            for l in self.host_links(host) {
                let port = port(host, l);
                let eth = format!("eth{l}");
                assert!(port.len() <= 15, "interface name {port} is too long");
                let host_ns = self.ns(host).to_owned();
                self.ip(
                    SWITCH,
                    &[
                        "link", "add", &port, "type", "veth", "peer", "name", &eth, "netns",
                        &host_ns,
                    ],
                );
                self.ip(
                    SWITCH,
                    &["link", "set", &port, "master", &format!("br{l}"), "up"],
                );
                let cidr = format!("{}/24", self.addr(host, l));
                self.ip(host, &["addr", "add", &cidr, "dev", &eth]);
                self.ip(host, &["link", "set", &eth, "up"]);
            }
        }
        let chain = format!(
            "add table bridge {TABLE}\n\
             add chain bridge {TABLE} forward {{ type filter hook forward priority 0; policy accept; }}"
        );
        self.nft(&chain);
        // veth carriers come up at once; bounded wait all the same, so a test never starts on a half-up lab.
        let deadline = Instant::now() + Duration::from_secs(5);
        for host in self.hosts.clone() {
            for l in self.host_links(host) {
                let eth = format!("eth{l}");
                loop {
                    let link = self.ip(host, &["-o", "link", "show", "dev", &eth]);
                    if link.contains("LOWER_UP") {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{host} {eth} has no carrier after 5 s: {link}"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// How long [`Lab::new`] took.
    pub fn setup_time(&self) -> Duration {
        self.setup_time
    }

    /// The namespaces this lab created.
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    /// The namespace name of a host (`node1`, `node2`, `client`, `witness`) or of the `switch`.
    pub fn ns(&self, host: &str) -> &str {
        self.names
            .iter()
            .find(|(h, _)| *h == host)
            .map(|(_, n)| n.as_str())
            .unwrap_or_else(|| {
                panic!(
                    "no host {host:?} in this lab (hosts {:?} and {SWITCH:?})",
                    self.hosts
                )
            })
    }

    /// A host's address on a link (`198.18.L.x`, without the prefix length).
    pub fn addr(&self, host: &str, link: usize) -> &'static str {
        assert!(
            link < self.links,
            "link {link} is not in this lab (second_link off)"
        );
        HOSTS
            .iter()
            .find(|(h, _)| *h == host)
            .and_then(|(_, a)| a[link])
            .unwrap_or_else(|| panic!("{host} has no address on link {link}"))
    }

    /// The links a host is on.
    fn host_links(&self, host: &str) -> Vec<usize> {
        (0..self.links)
            .filter(|&l| HOSTS.iter().any(|(h, a)| *h == host && a[l].is_some()))
            .collect()
    }

    /// `ip netns exec NS PROGRAM`: add arguments, then spawn (through [`Proc`]) or run it. The child's pid is
    /// PROGRAM's pid (ip execs it).
    pub fn command(&self, host: &str, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(&self.ip);
        cmd.args(["netns", "exec", self.ns(host)]).arg(program);
        cmd
    }

    /// `ip -n NS ARGS` in a host's namespace, which must succeed; its stdout. For example
    /// `lab.ip(NODE1, &["addr", "add", "198.18.0.10/24", "dev", "eth0"])`.
    pub fn ip(&self, host: &str, args: &[&str]) -> String {
        let mut cmd = Command::new(&self.ip);
        cmd.args(["-n", self.ns(host)]).args(args);
        checked(&mut cmd)
    }

    fn ip_global(&self, args: &[&str]) -> String {
        checked(Command::new(&self.ip).args(args))
    }

    /// Runs an nft script (one transaction) in the switch namespace.
    fn nft(&self, script: &str) -> String {
        let mut cmd = self.command(SWITCH, &self.nft);
        cmd.arg(script);
        checked(&mut cmd)
    }

    /// Runs `f` on a thread that has entered a host's namespace (sockets it opens live there); its result.
    pub fn run_in<T: Send + 'static>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        run_in_ns(self.ns(host).to_owned(), f)
    }

    /// One ICMP echo from a host's namespace to `addr`, answered within 1 s.
    pub fn ping(&self, from: &str, addr: &str) -> bool {
        let dst: Ipv4Addr = addr
            .parse()
            .unwrap_or_else(|e| panic!("ping: bad address {addr}: {e}"));
        let ident = (std::process::id() as u16) ^ (super::unique() as u16).rotate_left(7);
        self.run_in(from, move || icmp_echo(dst, ident, Duration::from_secs(1)))
            .unwrap_or_else(|e| panic!("ping {addr} from {from}: {e}"))
    }

    /// [`Lab::ping`] of every (from, addr) at once; the answers in order. At most about 1 s in all.
    pub fn pings(&self, probes: &[(&str, &str)]) -> Vec<bool> {
        std::thread::scope(|s| {
            let running: Vec<_> = probes
                .iter()
                .map(|&(from, addr)| s.spawn(move || self.ping(from, addr)))
                .collect();
            running
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }

    /// Pings until one is answered, at most `limit`; whether one was.
    pub fn wait_ping(&self, from: &str, addr: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        for _ in 0..1000 {
            if self.ping(from, addr) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Whether a TCP connection from a host's namespace to `addr` is accepted within `timeout`.
    pub fn tcp_connect(&self, from: &str, addr: SocketAddr, timeout: Duration) -> bool {
        self.run_in(from, move || {
            TcpStream::connect_timeout(&addr, timeout).is_ok()
        })
    }

    /// Waits until `addr` accepts TCP connections from `from`, at most `limit`; fails the test, with the
    /// process's output, if `proc` exits first or the time runs out.
    pub fn wait_listening(&self, from: &str, addr: SocketAddr, limit: Duration, proc: &mut Proc) {
        let deadline = Instant::now() + limit;
        for _ in 0..10_000 {
            if self.tcp_connect(from, addr, Duration::from_millis(200)) {
                return;
            }
            if let Some(status) = proc.exited() {
                panic!(
                    "{} exited ({status}) before listening on {addr}:\n{}",
                    proc.what,
                    proc.log()
                );
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} does not listen on {addr} (seen from {from}) after {limit:?}:\n{}",
            proc.what,
            proc.log()
        );
    }

    /// The MAC address a host's neighbour table holds for `addr` (`ip -n NS neigh show ADDR`), if any: present
    /// in the REACHABLE, STALE, DELAY and PROBE states, absent when unresolved or FAILED.
    pub fn neigh(&self, host: &str, addr: &str) -> Option<String> {
        let out = self.ip(host, &["neigh", "show", addr]);
        out.lines().find_map(|line| {
            let t: Vec<&str> = line.split_whitespace().collect();
            if t.first() != Some(&addr) {
                return None;
            }
            let i = t.iter().position(|w| *w == "lladdr")?;
            t.get(i + 1).map(|m| m.to_string())
        })
    }

    /// The MAC address of an interface in a host's namespace.
    pub fn mac(&self, host: &str, ifname: &str) -> String {
        let out = self.ip(host, &["-o", "link", "show", "dev", ifname]);
        let t: Vec<&str> = out.split_whitespace().collect();
        t.iter()
            .position(|w| *w == "link/ether")
            .and_then(|i| t.get(i + 1))
            .unwrap_or_else(|| panic!("no MAC address for {host} {ifname}: {out}"))
            .to_string()
    }

    /// The addresses of an interface in a host's namespace, with their prefix length (`198.18.0.11/24`).
    pub fn addrs(&self, host: &str, ifname: &str) -> Vec<String> {
        let out = self.ip(host, &["-o", "addr", "show", "dev", ifname]);
        out.lines()
            .filter_map(|line| {
                let t: Vec<&str> = line.split_whitespace().collect();
                let i = t.iter().position(|w| *w == "inet" || *w == "inet6")?;
                t.get(i + 1).map(|a| a.to_string())
            })
            .collect()
    }

    /// Drops every frame into or out of `host`'s port on `link`: a symmetric cut of all its traffic on that
    /// link, its carrier staying up.
    pub fn cut_link(&self, host: &str, link: usize) {
        let p = self.port_of(host, link);
        self.change(|f| {
            f.ports.insert(p);
        });
    }

    /// Undoes [`Lab::cut_link`] (not the other kinds of cut).
    pub fn heal_link(&self, host: &str, link: usize) {
        let p = self.port_of(host, link);
        self.change(|f| {
            f.ports.remove(&p);
        });
    }

    /// [`Lab::cut_link`] on every link of `host`.
    pub fn isolate(&self, host: &str) {
        let ports: Vec<String> = self
            .host_links(host)
            .into_iter()
            .map(|l| self.port_of(host, l))
            .collect();
        self.change(|f| f.ports.extend(ports));
    }

    /// [`Lab::heal_link`] on every link of `host`.
    pub fn heal_node(&self, host: &str) {
        let ports: Vec<String> = self
            .host_links(host)
            .into_iter()
            .map(|l| self.port_of(host, l))
            .collect();
        self.change(|f| f.ports.retain(|p| !ports.contains(p)));
    }

    /// Drops the traffic between hosts `a` and `b`, both ways, on every link they share; their traffic with
    /// every other host flows.
    pub fn cut_between(&self, a: &str, b: &str) {
        let pairs = self.pairs(a, b);
        assert!(!pairs.is_empty(), "{a} and {b} share no link");
        self.change(|f| f.pairs.extend(pairs));
    }

    /// Undoes [`Lab::cut_between`].
    pub fn heal_between(&self, a: &str, b: &str) {
        let pairs = self.pairs(a, b);
        self.change(|f| f.pairs.retain(|p| !pairs.contains(p)));
    }

    /// node1 and node2 cannot reach each other on any link (cluster and replication links cut); both still reach
    /// the client and the witness.
    pub fn cut_between_nodes(&self) {
        self.cut_between(NODE1, NODE2);
    }

    /// Undoes [`Lab::cut_between_nodes`].
    pub fn heal_between_nodes(&self) {
        self.heal_between(NODE1, NODE2);
    }

    /// Undoes every cut.
    pub fn heal_all(&self) {
        self.change(|f| *f = Faults::default());
    }

    /// The switch's fault rules as nft lists them, for assertion messages.
    pub fn faults(&self) -> String {
        self.nft(&format!("list chain bridge {TABLE} forward"))
    }

    fn port_of(&self, host: &str, link: usize) -> String {
        assert!(
            self.host_links(host).contains(&link),
            "{host} is not on link {link} in this lab"
        );
        port(host, link)
    }

    fn pairs(&self, a: &str, b: &str) -> Vec<(String, String)> {
        assert_ne!(a, b, "cut_between needs two hosts");
        let (a, b) = if a < b { (a, b) } else { (b, a) };
        let lb = self.host_links(b);
        self.host_links(a)
            .into_iter()
            .filter(|l| lb.contains(l))
            .map(|l| (port(a, l), port(b, l)))
            .collect()
    }

    /// Applies a change to the cuts and rewrites the switch's rules in one nft transaction.
    fn change(&self, edit: impl FnOnce(&mut Faults)) {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        edit(&mut faults);
        let mut script = format!("flush chain bridge {TABLE} forward\n");
        for p in &faults.ports {
            script.push_str(&format!(
                "add rule bridge {TABLE} forward iifname \"{p}\" drop\n\
                 add rule bridge {TABLE} forward oifname \"{p}\" drop\n"
            ));
        }
        for (a, b) in &faults.pairs {
            script.push_str(&format!(
                "add rule bridge {TABLE} forward iifname \"{a}\" oifname \"{b}\" drop\n\
                 add rule bridge {TABLE} forward iifname \"{b}\" oifname \"{a}\" drop\n"
            ));
        }
        self.nft(&script);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            let mut cmd = Command::new(&self.ip);
            cmd.args(["netns", "del", ns]);
            match exec(&mut cmd, CMD_LIMIT) {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!("lab: ip netns del {ns} failed: {}", super::text(&o)),
                Err(e) => eprintln!("lab: ip netns del {ns}: {e}"),
            }
        }
    }
}

/// The switch port of a host on a link.
fn port(host: &str, link: usize) -> String {
    format!("{host}-{link}")
}

/// Fails the test unless it runs as root.
pub fn require_root() {
    // SAFETY: geteuid(2) has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the namespace lab needs root (ip netns, veth, nftables); CI runs these tests as root, run them with sudo"
    );
}

/// The names `ip netns list` shows.
pub fn ip_netns_list() -> Vec<String> {
    let ip = require_tool_in(&SBIN, "ip");
    let out = checked(Command::new(ip).args(["netns", "list"]));
    out.lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The owner pid in a lab namespace name (`ts<pid>-...`).
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("ts")?;
    let (digits, _) = rest.split_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether a process with this pid exists (any owner).
fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return true; // never treat a special pid as a dead owner
    }
    // SAFETY: kill(2) with signal 0 sends nothing; it only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Deletes the lab namespaces (`ts<pid>-...`) of earlier runs whose owner process is dead; never one of this
/// process or of a live one. Returns the names deleted.
pub fn sweep() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut deleted = Vec::new();
    for name in entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
    {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid == me || pid_alive(pid) {
            continue;
        }
        let ip = require_tool_in(&SBIN, "ip");
        match exec(Command::new(ip).args(["netns", "del", &name]), CMD_LIMIT) {
            Ok(o) if o.status.success() => {
                eprintln!("lab: deleted namespace {name} left by dead process {pid}");
                deleted.push(name);
            }
            Ok(o) => eprintln!(
                "lab: could not delete leftover namespace {name}: {}",
                super::text(&o)
            ),
            Err(e) => eprintln!("lab: could not delete leftover namespace {name}: {e}"),
        }
    }
    deleted
}

/// Disables IPv6 in a namespace (on `lo` and on every interface made later).
fn disable_ipv6(ns: &str) {
    run_in_ns(ns.to_owned(), || {
        for which in ["all", "default"] {
            let path = format!("/proc/sys/net/ipv6/conf/{which}/disable_ipv6");
            match std::fs::write(&path, "1") {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // no IPv6 in this kernel
                Err(e) => panic!("write {path}: {e}"),
            }
        }
    })
}

/// Runs `f` on a new thread that has entered the network namespace `ns` (by `setns(2)`, which moves only the
/// calling thread; the thread ends with `f`).
fn run_in_ns<T: Send + 'static>(ns: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    let thread = std::thread::spawn(move || {
        let path = Path::new(NETNS_DIR).join(&ns);
        let file =
            std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        // SAFETY: setns(2) on an open namespace file descriptor; it affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert!(
            rc == 0,
            "setns into {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        f()
    });
    thread
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Sends one ICMP echo request to `dst` from the calling thread's namespace (raw socket: root) and waits at most
/// `limit` for the matching reply.
fn icmp_echo(dst: Ipv4Addr, ident: u16, limit: Duration) -> std::io::Result<bool> {
    use std::io::Error;
    // SAFETY: socket(2) with constant arguments.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if raw < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    const SEQ: u16 = 1;
    let mut pkt = [0u8; 24];
    pkt[0] = 8; // echo request
    pkt[4..6].copy_from_slice(&ident.to_be_bytes());
    pkt[6..8].copy_from_slice(&SEQ.to_be_bytes());
    pkt[8..].copy_from_slice(b"twinsan-lab-ping");
    let sum = checksum(&pkt);
    pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the buffer and the address are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&to as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        let e = Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ENETDOWN | libc::EHOSTDOWN) => {
                Ok(false)
            }
            _ => Err(e),
        };
    }
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 2048];
    for _ in 0..10_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, 1000) as libc::c_int;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            continue;
        }
        // SAFETY: the buffer is valid for its length.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = Error::last_os_error();
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) {
                continue;
            }
            return Err(e);
        }
        // A raw socket sees every ICMP packet of the namespace: keep only the reply to this request.
        let p = &buf[..n as usize];
        if p.len() < 20 {
            continue;
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let Some(icmp) = p.get(ihl..ihl + 8) else {
            continue;
        };
        if src == dst
            && icmp[0] == 0
            && icmp[4..6] == ident.to_be_bytes()
            && icmp[6..8] == SEQ.to_be_bytes()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A process a test started (typically through [`Lab::command`]): its stdout and stderr collected, stopped by
/// its pid, and killed (SIGKILL) on drop if it still runs. Declare it after the [`Lab`] it runs in.
pub struct Proc {
    child: Child,
    what: String,
    log: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` (stdin closed, stdout and stderr into the log). The process gets SIGKILL if the thread that
    /// spawned it ends (`PR_SET_PDEATHSIG`, kept across `ip netns exec`'s exec): a test killed by the runner
    /// leaves no orphan behind to keep a namespace alive. So spawn it from the test's own thread.
    pub fn spawn(what: &str, cmd: &mut Command) -> Proc {
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl(2) is async-signal-safe, as a pre_exec hook requires.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what} ({cmd:?}): {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        super::collect_lines(out, log.clone());
        super::collect_lines(err, log.clone());
        Proc {
            child,
            what: what.to_owned(),
            log,
            status: None,
        }
    }

    /// The process id (the program's own, for [`Lab::command`]).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Sends a signal while the process is ours and not yet reaped (so the pid cannot be another's).
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.exited().is_none() {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }

    /// SIGTERM, then waits at most `limit`; fails the test (after a SIGKILL) if it does not exit.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + limit;
        for _ in 0..100_000 {
            if let Some(s) = self.exited() {
                return s;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        panic!(
            "{} did not exit within {limit:?} of SIGTERM:\n{}",
            self.what,
            self.log()
        );
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        if let Some(s) = self.status {
            return s;
        }
        let s = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("wait for {}: {e}", self.what));
        self.status = Some(s);
        s
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Runs a command with a time limit; its output, or why it could not run. Never panics (Drop uses it).
fn exec(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let Some(status) = super::wait_or_kill(&mut child, deadline, Duration::from_millis(2)) else {
        return Err(format!("{cmd:?} did not finish within {limit:?}"));
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// Runs a lab command, which must succeed within [`CMD_LIMIT`]; its stdout.
fn checked(cmd: &mut Command) -> String {
    match exec(cmd, CMD_LIMIT) {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => panic!("{cmd:?} failed ({}):\n{}", o.status, super::text(&o)),
        Err(e) => panic!("{e}"),
    }
}
