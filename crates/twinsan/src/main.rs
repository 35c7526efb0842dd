//! `twinsan`: highly-available iSCSI storage in one binary.

mod address;
mod cluster_cmd;
mod config_page;
mod demo_cmd;
mod init_cmd;
mod node_cmd;
mod ocf_cmd;
mod ops_cmd;
mod passwd_cmd;
mod progress;
mod serve;
mod signals;
mod size;
mod target_cmd;
mod volume_cmd;
mod witness_cmd;

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

/// Highly-available iSCSI storage: two nodes, every write on both, failover in seconds.
#[derive(Parser, Debug)]
#[command(name = "twinsan", version, about, propagate_version = true, after_help = ops_cmd::AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// The flags that select the cluster config and the local node; accepted before or after the subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// The cluster config file.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        default_value = "/etc/twinsan/twinsan.toml"
    )]
    pub config: PathBuf,
    /// This node's name in the config (default: the node whose address is on this machine, if only one is).
    #[arg(long, global = true, value_name = "NAME")]
    pub node: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A complete two-node cluster on this machine, no root and no config needed: prints the iSCSI URL
    /// (127.0.0.10:3260), a live status view and how to try a failover. Ctrl-C stops it.
    #[command(after_help = DEMO_EXAMPLES)]
    Demo(demo_cmd::DemoArgs),
    /// Serve files or block devices as LUNs of one iSCSI target, on this node only (no replication).
    #[command(after_help = serve::EXAMPLES)]
    Serve(serve::ServeArgs),
    /// Write a ready two-node cluster on this machine (nodes 127.0.0.11 and 127.0.0.12) into DIR.
    #[command(after_help = init_cmd::EXAMPLES)]
    Init(init_cmd::InitArgs),
    /// Run or control a cluster node.
    #[command(subcommand)]
    Node(node_cmd::NodeCommand),
    /// Replicated volumes: metadata, roles, connection, resync, status.
    #[command(subcommand)]
    Volume(volume_cmd::VolumeCommand),
    /// The cluster as this node sees it, in the layout of `pcs status`, and the volumes' replication state.
    #[command(after_help = STATUS_EXAMPLES)]
    Status(cluster_cmd::StatusArgs),
    /// Take a node out of the cluster (its resources move to the other) or bring it back.
    #[command(subcommand)]
    Cluster(cluster_cmd::ClusterCommand),
    /// Move, pin, or clean up resources (a volume with its VIP, target and LUNs).
    #[command(subcommand)]
    Resource(cluster_cmd::ResourceCommand),
    /// The iSCSI targets.
    #[command(subcommand)]
    Target(cluster_cmd::TargetCommand),
    /// Pacemaker's OCF resource agents for twinsan (ocf:twinsan:volume, ocf:twinsan:target).
    #[command(subcommand)]
    Ocf(ocf_cmd::OcfCommand),
    /// Print the config line that sets the web console's password (`console_password_hash` in [cluster]).
    #[command(after_help = passwd_cmd::EXAMPLES)]
    Passwd(passwd_cmd::PasswdArgs),
    /// Be the third-site tie-breaker of a cluster: lend one vote to one node at a time (UDP, default port 5406).
    #[command(after_help = WITNESS_EXAMPLES)]
    Witness(witness_cmd::WitnessArgs),
    /// Print a shell completion script (for packaging; listed in the help's footer).
    #[command(hide = true)]
    Completions(ops_cmd::CompletionsArgs),
    /// Print the man page, or write one per command into a folder (for packaging; listed in the help's footer).
    #[command(hide = true)]
    Man(ops_cmd::ManArgs),
}

/// `twinsan demo --help`'s examples (and the man page's).
const DEMO_EXAMPLES: &str = "\
Examples:
  twinsan demo
      then, from another terminal: iscsi-ls -s iscsi://127.0.0.10:3260 (libiscsi-bin)
  twinsan demo --dir /var/tmp/demo --size 1G
      keeps the folder, and reuses it next time";

/// `twinsan status --help`'s examples (and the man page's).
const STATUS_EXAMPLES: &str = "\
Examples:
  twinsan status
      the node whose address is on this machine, config /etc/twinsan/twinsan.toml
  twinsan --config /var/tmp/ha/twinsan.toml --node node2 status --json
      one of two nodes on one machine, as JSON";

/// `twinsan witness --help`'s examples (and the man page's).
const WITNESS_EXAMPLES: &str = "\
Examples:
  twinsan --config /etc/twinsan/twinsan.toml witness --listen 198.51.100.7
      on a third machine, port 5406; the nodes name it in `witness = \"198.51.100.7:5406\"`";

fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    refuse_unused_globals(&matches);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logging();
    raise_open_file_limit();
    keep_freed_buffers();
    let result = match cli.command {
        Command::Demo(args) => demo_cmd::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Init(args) => init_cmd::run(args),
        Command::Node(cmd) => node_cmd::run(&cli.global, cmd),
        Command::Volume(cmd) => volume_cmd::run(&cli.global, cmd),
        Command::Status(args) => cluster_cmd::status(&cli.global, args),
        Command::Cluster(cmd) => cluster_cmd::cluster(&cli.global, cmd),
        Command::Resource(cmd) => cluster_cmd::resource(&cli.global, cmd),
        Command::Target(cmd) => cluster_cmd::target(&cli.global, cmd),
        Command::Witness(args) => witness_cmd::run(&cli.global, args),
        Command::Passwd(args) => passwd_cmd::run(args),
        Command::Ocf(cmd) => ocf_cmd::run(cmd),
        Command::Completions(args) => ops_cmd::completions(args),
        Command::Man(args) => ops_cmd::man(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twinsan: error: {}", ops_cmd::message(&e));
            ops_cmd::ExitStatus::of(&e).into()
        }
    }
}

/// `--config` and `--node` say which cluster and which node: a usage error (exit 2) for the commands that have
/// neither, rather than an option silently ignored.
fn refuse_unused_globals(matches: &ArgMatches) {
    let Some((name, sub)) = matches.subcommand() else {
        return;
    };
    let why = match name {
        "demo" => {
            "the demo writes its own config (into --dir or a temporary folder) and runs both nodes"
        }
        "serve" => "serve is one node without a cluster: its target comes from --iqn and --lun",
        "init" => "init writes a new config, DIR/twinsan.toml, for both nodes",
        "completions" | "man" => "they describe the command line, not a cluster",
        "passwd" => "it prints a config line; put it into [cluster] of the config yourself",
        "ocf" => "the agents take the config and node as resource parameters",
        _ => return,
    };
    for id in ["config", "node"] {
        let given = [matches, sub]
            .iter()
            .any(|m| m.value_source(id) == Some(ValueSource::CommandLine));
        if given {
            Cli::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!("--{id} means nothing to `twinsan {name}`: {why}"),
                )
                .exit();
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TWINSAN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Every iSCSI connection is a file descriptor: lift the soft limit to the hard one so the target's own connection
/// limit, not EMFILE, is what refuses clients.
/// Keeps the heap pages of freed data buffers for the next ones. A write's buffer (up to the 8 MiB maximum
/// transfer) is filled on a connection's task and, on a replicated volume, freed on the engine's thread once its
/// frame is sent; with glibc's defaults such a buffer is an mmap of its own, or the top of a heap that is trimmed
/// at 128 KiB, so each one gives its pages back and the next faults them in again (measured on 1 MiB writes:
/// about a fifth of node1's CPU; docs/performance.md). Buffers below 32 MiB come from the heap, and a heap
/// keeps up to 256 MiB of free space at its top.
fn keep_freed_buffers() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt(3) only sets parameters of the allocator, which takes its own locks.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct that lives on this stack frame.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!(
                    "could not raise the open-file limit; many connections may fail with EMFILE"
                );
            }
        }
    }
}
