//! `twinsan serve`: a single-node iSCSI target over files or block devices.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use tracing::info;

use twinsan_iscsi::chap::Credentials;
use twinsan_iscsi::login::ChapPolicy;
use twinsan_scsi::LogicalUnit;
use twinsan_target::{identity, FileDevice, Server, ServerConfig, TargetConfig};

use crate::size::parse_size;

/// Arguments of `twinsan serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The target's iSCSI name, e.g. iqn.2025-08.local.example:disk1
    #[arg(long, value_name = "IQN")]
    iqn: String,
    /// A logical unit: LUN number and backing file or block device (repeatable)
    #[arg(long = "lun", value_name = "N=PATH", required = true)]
    luns: Vec<String>,
    /// Create missing backing files with this size (e.g. 1G) and grow smaller ones to it
    #[arg(long, value_name = "SIZE")]
    create: Option<String>,
    /// Portal address to listen on (repeatable)
    #[arg(
        long = "listen",
        value_name = "ADDR:PORT",
        default_value = "0.0.0.0:3260"
    )]
    listen: Vec<SocketAddr>,
    /// Initiator name allowed to log in (repeatable); none means any initiator
    #[arg(long = "allow", value_name = "INITIATOR_IQN")]
    allow: Vec<String>,
    /// Require CHAP: the initiator's user name and secret
    #[arg(long, value_name = "USER:SECRET")]
    chap: Option<String>,
    /// Mutual CHAP: the user name and secret the target answers with (needs --chap)
    #[arg(long, value_name = "USER:SECRET")]
    mutual_chap: Option<String>,
    /// Refuse writes (DATA PROTECT)
    #[arg(long)]
    read_only: bool,
    /// Bypass the page cache (O_DIRECT)
    #[arg(long)]
    direct: bool,
}

fn credentials(flag: &str, s: &str) -> anyhow::Result<Credentials> {
    let Some((user, secret)) = s.split_once(':') else {
        bail!("{flag} takes USER:SECRET, got no ':'");
    };
    if user.is_empty() || secret.is_empty() {
        bail!("{flag}: user and secret must both be non-empty");
    }
    // RFC 7143 section 12.1.3: secrets shorter than 12 bytes are open to offline guessing.
    if secret.len() < 12 {
        bail!("{flag}: the secret must be at least 12 characters (RFC 7143 section 12.1.3)");
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
    if !valid_iscsi_name(&args.iqn) {
        bail!(
            "--iqn {:?} is not a valid iSCSI name: expected iqn.YYYY-MM.reverse.domain[:name] in lower case (RFC 3720 section 3.2.6)",
            args.iqn
        );
    }
    for a in &args.allow {
        if a.is_empty() {
            bail!("--allow needs an initiator name");
        }
    }
    let create = args
        .create
        .as_deref()
        .map(parse_size)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    if let Some(size) = create {
        if size < 1 << 20 || size % 512 != 0 {
            bail!("--create size must be a multiple of 512 bytes and at least 1 MiB");
        }
    }
    let chap = args
        .chap
        .as_deref()
        .map(|c| credentials("--chap", c))
        .transpose()?;
    let mutual = args
        .mutual_chap
        .as_deref()
        .map(|c| credentials("--mutual-chap", c))
        .transpose()?;
    if mutual.is_some() && chap.is_none() {
        bail!("--mutual-chap needs --chap (the initiator authenticates first)");
    }
    let chap = chap.map(|initiator| ChapPolicy { initiator, mutual });

    let mut config = ServerConfig::new(Vec::new());
    let tpgt = config.limits.portal_group_tag;
    let mut luns = BTreeMap::new();
    // LUN by backing store: one store is one LUN (its claim would refuse a second open, naming this very process).
    let mut stores = BTreeMap::new();
    for spec in &args.luns {
        let Some((n, path)) = spec.split_once('=') else {
            bail!("--lun {spec:?}: expected N=PATH, e.g. --lun 1=/var/lib/twinsan/disk1.img");
        };
        let n: u64 = n
            .parse()
            .with_context(|| format!("--lun {spec:?}: LUN number {n:?} is not a number"))?;
        if n > 16383 {
            bail!("--lun {spec:?}: LUN numbers go up to 16383");
        }
        let path = PathBuf::from(path);
        if let Some(m) = std::fs::canonicalize(&path)
            .ok()
            .and_then(|c| stores.get(&c))
        {
            bail!(
                "--lun {spec:?}: {} is LUN {m} already; a backing store is served as one LUN",
                path.display()
            );
        }
        if let Some(size) = create {
            if !path.exists()
                || std::fs::metadata(&path)
                    .map(|m| m.is_file())
                    .unwrap_or(false)
            {
                FileDevice::create(&path, size)?;
            }
        }
        if luns.contains_key(&n) {
            bail!("--lun {spec:?}: LUN {n} given twice");
        }
        let dev = FileDevice::open(&path, args.read_only, args.direct)?;
        let canonical = std::fs::canonicalize(&path)
            .with_context(|| format!("resolving {}", path.display()))?;
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
    rt.block_on(async move {
        let server = Server::bind(config, &args.listen).await?;
        for a in server.local_addrs() {
            info!(portal = %a, target = %args.iqn, "serving");
        }
        let running = server.spawn();
        wait_for_signal().await?;
        info!("shutting down");
        running.stop().await;
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
