//! `twinsan init DIR [--manual] [--size SIZE]`: a ready two-node cluster on this machine; and the work of
//! `twinsan volume create-md VOLUME [--force]`, which creates one volume's metadata on this node.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use twinsan_node::config::ClusterConfig;
use twinsan_node::md::{self, human_size};
use twinsan_replication::metadata::{
    metadata_size_for, Layout, Placement, BLOCK_SIZE, MIN_DATA_SIZE,
};

use crate::size::parse_size;

/// `twinsan init` arguments.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// The folder to write the config and the disks into (created if missing).
    pub dir: PathBuf,
    /// Nodes never change roles by themselves: promote and demote by hand (DRBD without a cluster manager).
    #[arg(long)]
    pub manual: bool,
    /// Size of the volume (K, M, G, T suffixes).
    #[arg(long, default_value = "1G", value_parser = volume_size)]
    pub size: String,
}

/// `twinsan init --help`'s examples (and the man page's).
pub const EXAMPLES: &str = "\
Examples:
  twinsan init /var/tmp/ha --size 1G
      a managed pair (the cluster manager picks the primary); then `twinsan node run` for node1 and node2
  twinsan init /var/tmp/pair --manual --size 256M
      a pair without cluster manager: promote by hand with `twinsan volume primary --force vol0`";

/// A volume size as `--size` takes it (`init`, `demo`): at least 1 MiB, whole 4 KiB blocks.
pub fn volume_size(text: &str) -> Result<String, String> {
    let size = parse_size(text)?;
    if size < MIN_DATA_SIZE || !size.is_multiple_of(BLOCK_SIZE) {
        return Err(format!(
            "a volume is at least 1 MiB and a whole number of 4 KiB blocks ({size} bytes is not)"
        ));
    }
    Ok(text.to_owned())
}

/// The config file `init` writes into DIR.
const CONFIG_FILE: &str = "twinsan.toml";
/// The two nodes: name, id, address. Loopback addresses, so the cluster runs on one machine without root.
const NODES: [(&str, u8, &str); 2] = [("node1", 1, "127.0.0.11"), ("node2", 2, "127.0.0.12")];
/// The volume's name.
const VOLUME: &str = "vol0";
/// The virtual IP only the primary binds.
const VIP: &str = "127.0.0.10";
/// The target's name.
const IQN: &str = "iqn.2025-08.local.twinsan:vol0";
/// The volume's LUN.
const LUN: u64 = 1;
/// The replication port, on each node's address.
const REPLICATION_PORT: u16 = 7789;
/// The iSCSI port on the virtual IP.
const ISCSI_PORT: u16 = 3260;

/// Writes DIR/twinsan.toml and one disk per node with its metadata; nothing is left behind if it fails.
pub fn run(args: InitArgs) -> anyhow::Result<()> {
    create(args, true).map(|_| ())
}

/// The web console's port on each node address (the default of `[[node]] http`).
pub const CONSOLE_PORT: u16 = 9942;

/// [`run`], printing the summary only with `print`; returns the web console's password, whose hash is in the
/// config (it is kept nowhere else).
pub fn create(args: InitArgs, print: bool) -> anyhow::Result<String> {
    let size = parse_size(&args.size)
        .map_err(anyhow::Error::msg)
        .context("--size")?;
    if size < MIN_DATA_SIZE || !size.is_multiple_of(BLOCK_SIZE) {
        bail!(
            "--size {}: a volume is at least 1 MiB and a whole number of 4 KiB blocks ({size} bytes is not)",
            args.size
        );
    }
    let dir = &args.dir;
    let config_path = dir.join(CONFIG_FILE);
    let image = |node: &str| dir.join(node).join(format!("{VOLUME}.img"));
    for path in std::iter::once(config_path.clone()).chain(NODES.map(|(node, ..)| image(node))) {
        // symlink_metadata: a dangling link counts as there too.
        if std::fs::symlink_metadata(&path).is_ok() {
            bail!(
                "{} already exists (from an earlier twinsan init?): nothing was changed; init another folder",
                path.display()
            );
        }
    }

    // The data size with internal metadata must be exactly `size`.
    let file_size = size + metadata_size_for(size);
    let layout =
        Layout::compute(file_size, Placement::Internal).context("laying out the volume")?;
    if layout.data_size != size {
        bail!(
            "a {file_size}-byte disk holds {} bytes of data, not the {size} asked for (a bug in twinsan init)",
            layout.data_size
        );
    }
    let volume_uuid = loop {
        let uuid = u128::from_le_bytes(random_bytes()?);
        if uuid != 0 {
            break uuid;
        }
    };
    // The first data generation of a pair created in sync: random, bit 0 (the primary bit) clear, never one of
    // the reserved values.
    let generation = loop {
        let g = u64::from_le_bytes(random_bytes()?) & !1;
        if g > 4 {
            break g;
        }
    };
    let secret: String = random_bytes::<32>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    // The console's password: 16 random bytes, as hex; only its hash goes into the config.
    let console_password: String = random_bytes::<16>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let console_line = crate::passwd_cmd::config_line(&console_password)?;

    let mut created = Created::default();
    created.dir_all(dir)?;
    let name = cluster_name(dir);
    let mut reports = Vec::new();
    for (node, id, _) in NODES {
        let path = image(node);
        created.dir_all(&dir.join(node))?;
        let file = created.file(&path, 0o644)?;
        file.set_len(file_size)
            .with_context(|| format!("{}: cannot make it {file_size} bytes", path.display()))?;
        drop(file);
        let peer = if id == 1 { 2 } else { 1 };
        // Managed: both files are all zeroes, identical, so the pair starts in sync (no initial sync) and the
        // cluster manager can promote one at once. Manual: both start Inconsistent, and the admin chooses the
        // first primary with `volume primary --force`, which syncs the whole volume (the DRBD way).
        let report = if args.manual {
            md::create_md(&path, None, volume_uuid, id, peer, false)?
        } else {
            md::create_md_in_sync(&path, None, volume_uuid, id, peer, generation)?
        };
        reports.push((node, report));
    }
    // The config holds the replication secret: only its owner reads it.
    let mut file = created.file(&config_path, 0o600)?;
    file.write_all(
        config_text(
            &name,
            args.manual,
            volume_uuid,
            &secret,
            &console_line,
            args.size.trim(),
        )
        .as_bytes(),
    )
    .and_then(|()| file.sync_all())
    .with_context(|| format!("writing {}", config_path.display()))?;
    drop(file);
    let config = ClusterConfig::load(&config_path)
        .context("the config twinsan init wrote does not load (a bug in twinsan init)")?;
    created.keep();

    if print {
        print_summary(&args, &config_path, &config, size, &reports);
        println!();
        print_console(&console_password);
    }
    Ok(console_password)
}

/// `twinsan volume create-md VOLUME [--force]`: creates the metadata of `volume` on this node's disk, from the
/// config (`--config`) and this node (`--node`, or the node whose address is on this machine).
// Called by volume_cmd for `volume create-md`; the allow goes once that subcommand is wired.
pub fn create_md(global: &crate::Global, volume: &str, force: bool) -> anyhow::Result<()> {
    let config = ClusterConfig::load(&global.config)?;
    let node = config.this_node(global.node.as_deref())?;
    let Some(vol) = config.volume(volume) else {
        let names: Vec<&str> = config.volumes.iter().map(|v| v.name.as_str()).collect();
        bail!(
            "{}: no [[volume]] is named {volume} (the volumes are: {})",
            config.source.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    };
    // Validation guarantees two nodes with distinct names and a disk for each.
    let peer = config
        .peer_of(&node.name)
        .with_context(|| format!("{}: no peer of node {}", config.source.display(), node.name))?;
    let disk = vol.disk.get(&node.name).with_context(|| {
        format!(
            "{}: volume {volume} has no disk for node {}",
            config.source.display(),
            node.name
        )
    })?;
    let data = config.resolve(&disk.path);
    let meta = disk.meta.as_deref().map(|m| config.resolve(m));
    let report = md::create_md(
        &data,
        meta.as_deref(),
        vol.uuid_value(),
        node.id,
        peer.id,
        force,
    )
    .with_context(|| format!("volume {volume} on node {}", node.name))?;
    println!("{report}");
    Ok(())
}

/// `N` random bytes from the operating system.
fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot get random bytes from the system: {e}"))?;
    Ok(bytes)
}

/// The cluster's name: DIR's own name, kept to the characters a name may have; "twinsan" if nothing is left.
fn cluster_name(dir: &Path) -> String {
    let full = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let name: String = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.trim_matches(['-', '.']).is_empty() {
        "twinsan".to_string()
    } else {
        name
    }
}

/// The config file, commented, with paths relative to its folder.
fn config_text(
    name: &str,
    manual: bool,
    volume_uuid: u128,
    secret: &str,
    console_line: &str,
    size_text: &str,
) -> String {
    let mut text = format!(
        r#"# twinsan cluster config, written by `twinsan init`: two nodes on this machine.
# The same file serves both nodes (`--node` says which one runs). Relative paths are relative to this file.
# It holds the replication link's secret: keep it readable by its owner only.

[cluster]
name = "{name}"
# true: roles change only by `twinsan volume primary|secondary`;
# false: the cluster manager keeps one node primary and fails over.
manual = {manual}
secret = "{secret}"
# The web console's password (http://NODE-ADDRESS:9942/), as a hash: `twinsan passwd` makes a new line.
{console_line}
"#
    );
    for (node, id, address) in NODES {
        text += &format!(
            r#"
[[node]]
name = "{node}"
id = {id}
address = "{address}"        # replication, cluster link and the node's own portal
admin_socket = "{node}.sock"   # where `twinsan --node {node} ...` talks to the daemon
state_dir = "{node}"           # the node's copy of the cluster settings (standby, moves, cluster stop)
"#
        );
    }
    let [(node1, ..), (node2, ..)] = NODES;
    // The guide's choice for a managed pair: a copy that falls behind while the cluster link is up is marked
    // Outdated through the cluster, never left claiming UpToDate. Manual mode has no cluster to carry the fence.
    let fencing = if manual {
        r#""dont-care"            # manual mode: no cluster manager to mark the peer Outdated"#
    } else {
        r#""resource-only"        # a peer cut off from replication is marked Outdated before writes go on"#
    };
    text += &format!(
        r#"
# One replicated volume of {size_text}: a full copy on each node, metadata at the end of each file.
[[volume]]
name = "{VOLUME}"
uuid = "{volume_uuid:032x}"
port = {REPLICATION_PORT}                    # replication port, on each node's address
protocol = "C"                 # a write completes once it is on both disks
fencing = {fencing}
after_sb_0pri = "disconnect"   # after a split brain: stop, and let the admin choose the data to keep
after_sb_1pri = "disconnect"
after_sb_2pri = "disconnect"
disk = {{ {node1} = {{ path = "{node1}/{VOLUME}.img" }}, {node2} = {{ path = "{node2}/{VOLUME}.img" }} }}

# The iSCSI target, on the virtual IP that only the primary holds.
[[target]]
iqn = "{IQN}"
vip = "{VIP}"
port = {ISCSI_PORT}
lun = [ {{ lun = {LUN}, volume = "{VOLUME}" }} ]
"#,
    );
    text
}

fn print_summary(
    args: &InitArgs,
    config_path: &Path,
    config: &ClusterConfig,
    size: u64,
    reports: &[(&str, md::CreateReport)],
) {
    let cfg = config_path.display();
    let twinsan = crate::ops_cmd::program_name();
    let roles = if args.manual {
        "manual: promote and demote by hand"
    } else {
        "automatic: the cluster manager keeps one node primary and fails over"
    };
    println!(
        "twinsan init: cluster {} in {}",
        config.cluster.name,
        args.dir.display()
    );
    println!("  config:  {cfg} (holds the replication secret; readable by you only)");
    println!(
        "  volume:  {VOLUME}, {}, on {} ({}) and {} ({}), replication port {REPLICATION_PORT}, protocol C",
        human_size(size),
        NODES[0].0,
        NODES[0].2,
        NODES[1].0,
        NODES[1].2
    );
    if args.manual {
        println!("  target:  {IQN} LUN {LUN}, served by the primary at its own address, port {ISCSI_PORT}");
    } else {
        println!("  target:  {IQN} LUN {LUN} at {VIP}:{ISCSI_PORT}, on the primary");
    }
    println!("  roles:   {roles}");
    for (node, report) in reports {
        println!();
        println!("{node}: {}", report.to_string().replace('\n', "\n  "));
    }
    println!();
    println!("Next, start each node in a terminal of its own:");
    for (node, ..) in NODES {
        println!("  {twinsan} node run --config {cfg} --node {node}");
    }
    if args.manual {
        println!("then make node1's copy the original (the initial sync copies it to node2):");
        println!("  {twinsan} --config {cfg} --node node1 volume primary --force {VOLUME}");
    } else {
        println!("The two new copies are identical (all zeroes), so no initial sync is needed: once both nodes run,");
        println!("the cluster manager promotes one and brings up the virtual IP and the target there. Watch it with");
        println!("  {twinsan} --config {cfg} --node node1 status");
    }
    if args.manual {
        // Without the cluster manager nothing holds the virtual IP: the primary serves at its node address.
        println!(
            "and point an initiator at iscsi://{}:{ISCSI_PORT}/{IQN}/{LUN}",
            NODES[0].2
        );
    } else {
        println!("and point an initiator at iscsi://{VIP}:{ISCSI_PORT}/{IQN}/{LUN}");
    }
}

/// The console URLs of both nodes and the password that `init` chose.
pub fn print_console(password: &str) {
    let urls: Vec<String> = NODES
        .iter()
        .map(|(_, _, address)| format!("http://{address}:{CONSOLE_PORT}/"))
        .collect();
    println!("Web console: {} (each node's view)", urls.join(" and "));
    println!("  password for its actions: {password}");
    println!("  (only its hash is in the config; `twinsan passwd` makes a new one)");
}

/// What `init` has made so far; removed again (newest first) when dropped before [`Created::keep`].
#[derive(Default)]
struct Created {
    /// Each path, and whether it is a folder.
    paths: Vec<(PathBuf, bool)>,
    kept: bool,
}

impl Created {
    /// Creates `dir` and its missing parents, remembering each one made.
    fn dir_all(&mut self, dir: &Path) -> anyhow::Result<()> {
        let missing: Vec<&Path> = dir
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && std::fs::symlink_metadata(p).is_err())
            .collect();
        for path in missing.into_iter().rev() {
            std::fs::create_dir(path)
                .with_context(|| format!("cannot create the folder {}", path.display()))?;
            self.paths.push((path.to_path_buf(), true));
        }
        Ok(())
    }

    /// Creates the file `path`, which must not exist, with permissions `mode`.
    fn file(&mut self, path: &Path, mode: u32) -> anyhow::Result<File> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        self.paths.push((path.to_path_buf(), false));
        Ok(file)
    }

    /// Everything worked: keep it all.
    fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for (path, is_dir) in self.paths.iter().rev() {
            let _ = if *is_dir {
                std::fs::remove_dir(path)
            } else {
                std::fs::remove_file(path)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary folder `twinsan-init-TAG-*` under the system's, removed on drop.
    fn temp_dir(tag: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("twinsan-init-{tag}-"))
            .tempdir()
            .expect("create temp dir")
    }

    fn init(dir: &Path, manual: bool, size: &str) -> anyhow::Result<()> {
        run(InitArgs {
            dir: dir.to_path_buf(),
            manual,
            size: size.to_string(),
        })
    }

    #[test]
    fn create_md_uses_the_config_and_refuses_existing_metadata() {
        let tmp = temp_dir("create-md");
        let dir = tmp.path().join("lab");
        init(&dir, true, "4M").expect("init");
        let global = |node: Option<&str>| crate::Global {
            config: dir.join(CONFIG_FILE),
            node: node.map(str::to_string),
        };
        let error = create_md(&global(Some("node2")), VOLUME, false).expect_err("metadata exists");
        let shown = format!("{error:#}");
        assert!(
            shown.contains("node2/vol0.img") && shown.contains("--force"),
            "{shown}"
        );
        create_md(&global(Some("node2")), VOLUME, true).expect("forced");
        let config = ClusterConfig::load(&dir.join(CONFIG_FILE)).expect("loads");
        let (_, chosen) = md::read_md(&dir.join("node2/vol0.img"), None).expect("read");
        assert_eq!(
            chosen.superblock.volume_uuid,
            config.volumes[0].uuid_value()
        );
        assert_eq!(
            (chosen.superblock.node_id, chosen.superblock.peer_node_id),
            (2, 1)
        );

        let error = create_md(&global(Some("node2")), "vol9", false).expect_err("no such volume");
        assert!(
            format!("{error:#}").contains("no [[volume]] is named vol9 (the volumes are: vol0)"),
            "{error:#}"
        );
        // Both node addresses are loopback, so on this machine the node must be named.
        let error = create_md(&global(None), VOLUME, false).expect_err("which node");
        assert!(format!("{error:#}").contains("--node"), "{error:#}");
    }

    #[test]
    fn a_failed_init_leaves_nothing_behind() {
        let tmp = temp_dir("cleanup");
        let dir = tmp.path().join("a/b");
        // node2's disk folder is a file: init fails after making node1's disk, and removes it again.
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("node2"), b"in the way").expect("write");
        let error = init(&dir, false, "1M").expect_err("node2 folder blocked");
        assert!(format!("{error:#}").contains("node2"), "{error:#}");
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["node2"], "only what was there before");
    }

    #[test]
    fn cluster_names_come_from_the_folder() {
        let tmp = temp_dir("names");
        for (sub, name) in [("lab", "lab"), ("my lab", "my-lab"), ("été", "-t-")] {
            let dir = tmp.path().join(sub);
            std::fs::create_dir(&dir).expect("mkdir");
            assert_eq!(cluster_name(&dir), name);
        }
        assert_eq!(cluster_name(Path::new("/")), "twinsan");
    }
}
