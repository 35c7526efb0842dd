//! `twinsan serve`: a single-node iSCSI target over files or block devices.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use tracing::info;

use tokio::sync::watch;
use twinsan_iscsi::chap::{Credentials, MIN_SECRET_LEN};
use twinsan_iscsi::login::ChapPolicy;
use twinsan_node::http::{self, MetricsSource};
use twinsan_node::metrics::Snapshot;
use twinsan_scsi::LogicalUnit;
use twinsan_target::stats::IoStats;
use twinsan_target::{identity, FileDevice, Server, ServerConfig, TargetConfig};

use crate::ops_cmd::UsageError;
use crate::size::parse_size;

/// Arguments of `twinsan serve`. Every value is checked as it is parsed, so a wrong one is a usage error (exit 2).
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The target's iSCSI name, e.g. iqn.2025-08.local.example:disk1
    #[arg(long, value_name = "IQN", value_parser = iscsi_name)]
    iqn: String,
    /// A logical unit: LUN number and backing file or block device (repeatable)
    #[arg(long = "lun", value_name = "N=PATH", required = true, value_parser = lun_spec)]
    luns: Vec<LunSpec>,
    /// Create missing backing files with this size (e.g. 1G) and grow smaller ones to it
    #[arg(long, value_name = "SIZE", value_parser = create_size)]
    create: Option<u64>,
    /// Portal address to listen on: ADDR or ADDR:PORT (port 3260 when not given; repeatable)
    #[arg(
        long = "listen",
        value_name = "ADDR[:PORT]",
        default_value = "0.0.0.0:3260",
        value_parser = crate::address::iscsi_portal
    )]
    listen: Vec<SocketAddr>,
    /// Initiator name allowed to log in (repeatable); none means any initiator
    #[arg(long = "allow", value_name = "INITIATOR_IQN", value_parser = initiator_name)]
    allow: Vec<String>,
    /// Require CHAP: the initiator's user name and secret
    #[arg(long, value_name = "USER:SECRET", value_parser = credentials)]
    chap: Option<Credentials>,
    /// Mutual CHAP: the user name and secret the target answers with (needs --chap)
    #[arg(long, value_name = "USER:SECRET", value_parser = credentials, requires = "chap")]
    mutual_chap: Option<Credentials>,
    /// Refuse writes (DATA PROTECT)
    #[arg(long)]
    read_only: bool,
    /// Bypass the page cache (O_DIRECT)
    #[arg(long)]
    direct: bool,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (port 9942 when not given)
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = crate::address::http_endpoint)]
    http: Option<SocketAddr>,
}

/// What `twinsan serve --http` reports: its target's counters and the process.
struct ServeMetrics {
    io: Arc<IoStats>,
    iqn: String,
}

impl MetricsSource for ServeMetrics {
    fn snapshot(&self) -> Snapshot {
        Snapshot::of_targets(&self.io)
    }

    fn describe(&self) -> String {
        format!("twinsan serve: target {}", self.iqn)
    }
}

/// `twinsan serve --help`'s examples (and the man page's).
pub const EXAMPLES: &str = "\
Examples:
  twinsan serve --iqn iqn.2025-08.local.example:disk1 --lun 1=/var/tmp/disk1.img --create 1G
      a new 1 GiB sparse file as LUN 1 at 0.0.0.0:3260
  twinsan serve --iqn iqn.2025-08.local.example:disk1 --lun 1=/dev/vdb --listen 192.0.2.5 --read-only
      a block device, read-only, on one address
  twinsan serve --iqn iqn.2025-08.local.example:disk1 --lun 1=/srv/a.img --lun 2=/srv/b.img \\
      --allow iqn.1993-08.org.debian:01:client --chap alice:twelve-chars-or-more
      two LUNs for one initiator, with CHAP";

/// One `--lun N=PATH`, as given.
#[derive(Clone, Debug)]
struct LunSpec {
    /// The text given, for messages.
    text: String,
    /// The LUN number.
    number: u64,
    /// The backing file or block device.
    path: PathBuf,
}

fn lun_spec(spec: &str) -> Result<LunSpec, String> {
    let Some((n, path)) = spec.split_once('=') else {
        return Err("expected N=PATH, e.g. --lun 1=/var/lib/twinsan/disk1.img".into());
    };
    let number: u64 = n
        .parse()
        .map_err(|_| format!("LUN number {n:?} is not a number"))?;
    if number > 16383 {
        return Err("LUN numbers go up to 16383".into());
    }
    if path.is_empty() {
        return Err("expected N=PATH: the path is empty".into());
    }
    Ok(LunSpec {
        text: spec.to_owned(),
        number,
        path: PathBuf::from(path),
    })
}

fn create_size(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    if size < 1 << 20 || size % 512 != 0 {
        return Err("the size must be a multiple of 512 bytes and at least 1 MiB".into());
    }
    Ok(size)
}

fn iscsi_name(name: &str) -> Result<String, String> {
    if valid_iscsi_name(name) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{name:?} is not a valid iSCSI name: expected iqn.YYYY-MM.reverse.domain[:name] in lower case (RFC 3720 \
             section 3.2.6)"
        ))
    }
}

fn initiator_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("needs an initiator name".into());
    }
    Ok(name.to_owned())
}

fn credentials(s: &str) -> Result<Credentials, String> {
    let Some((user, secret)) = s.split_once(':') else {
        return Err("takes USER:SECRET, got no ':'".into());
    };
    if user.is_empty() || secret.is_empty() {
        return Err("user and secret must both be non-empty".into());
    }
    // RFC 7143 section 12.1.3: secrets shorter than 12 bytes are open to offline guessing.
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "the secret must be at least {MIN_SECRET_LEN} characters (RFC 7143 section 12.1.3)"
        ));
    }
    Ok(Credentials {
        user: user.to_owned(),
        secret: secret.as_bytes().to_vec(),
    })
}

fn valid_iscsi_name(name: &str) -> bool {
    let ok_chars = name
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b".-:".contains(&c));
    ok_chars
        && (name.starts_with("iqn.") || name.starts_with("eui.") || name.starts_with("naa."))
        && name.len() <= 223
}

/// Runs `twinsan serve` until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let chap = args.chap.clone().map(|initiator| ChapPolicy {
        initiator,
        mutual: args.mutual_chap.clone(),
    });

    let mut config = ServerConfig::new(Vec::new());
    let tpgt = config.limits.portal_group_tag;
    let mut luns = BTreeMap::new();
    // LUN by backing store: one store is one LUN (its claim would refuse a second open, naming this very process).
    let mut stores = BTreeMap::new();
    for LunSpec { text, number, path } in &args.luns {
        let (spec, n) = (text, *number);
        if luns.contains_key(&n) {
            return Err(UsageError(format!("--lun {spec:?}: LUN {n} given twice")).into());
        }
        if let Some(m) = std::fs::canonicalize(path)
            .ok()
            .and_then(|c| stores.get(&c))
        {
            return Err(UsageError(format!(
                "--lun {spec:?}: {} is LUN {m} already; a backing store is served as one LUN",
                path.display()
            ))
            .into());
        }
        let missing = !path.exists();
        if let Some(size) = args.create {
            if missing || std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
                FileDevice::create(path, size)?;
            }
        } else if missing {
            bail!(
                "--lun {spec:?}: {} does not exist; pass --create SIZE (e.g. --create 1G) to create it",
                path.display()
            );
        }
        let dev = FileDevice::open(path, args.read_only, args.direct)?;
        let canonical =
            std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
        let id = identity::derive(
            &[
                args.iqn.as_bytes(),
                n.to_string().as_bytes(),
                canonical.as_os_str().as_encoded_bytes(),
            ],
            &args.iqn,
            tpgt,
        );
        info!(lun = n, path = %canonical.display(), serial = %id.serial, "logical unit");
        stores.insert(canonical, n);
        luns.insert(
            n,
            Arc::new(LogicalUnit::new(Arc::new(dev), id, args.read_only)),
        );
    }
    config.discovery_chap = chap.clone();
    config.targets.push(TargetConfig {
        name: args.iqn.clone(),
        luns,
        allowed_initiators: args.allow.clone(),
        chap,
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let io = args.http.map(|_| Arc::new(IoStats::default()));
    config.stats = io.clone();
    rt.block_on(async move {
        let http = match (args.http, io) {
            (Some(addr), Some(io)) => {
                let listener = http::bind(addr)
                    .await
                    .with_context(|| format!("--http {addr}: cannot listen there"))?;
                Some((listener, io))
            }
            _ => None,
        };
        let server = Server::bind(config, &args.listen).await?;
        for a in server.local_addrs() {
            info!(portal = %a, target = %args.iqn, "serving");
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let http_task = http.map(|(listener, io)| {
            if let Ok(addr) = listener.local_addr() {
                info!("metrics at http://{addr}/metrics");
            }
            let source: Arc<dyn MetricsSource> = Arc::new(ServeMetrics {
                io,
                iqn: args.iqn.clone(),
            });
            tokio::spawn(http::serve(listener, source, None, stop_rx))
        });
        let running = server.spawn();
        wait_for_signal().await?;
        info!("shutting down");
        running.stop().await;
        let _ = stop_tx.send(true);
        if let Some(task) = http_task {
            let _ = task.await;
        }
        anyhow::Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
