//! `twinsan init`: a config that loads and validates, a disk per node with its metadata, no second init over the
//! first, and sizes checked before anything is written.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{run, text, twinsan_bin, TempDir};
use twinsan_node::config::ClusterConfig;
use twinsan_node::md::read_md;
use twinsan_replication::generation::UUID_JUST_CREATED;
use twinsan_replication::metadata::metadata_size_for;

fn init(dir: &Path, args: &[&str]) -> Output {
    run(
        Command::new(twinsan_bin()).arg("init").arg(dir).args(args),
        Duration::from_secs(60),
    )
}

#[test]
fn init_writes_a_cluster_that_loads() {
    let tmp = TempDir::new("init");
    let dir = tmp.path().join("lab");
    let out = init(&dir, &["--manual", "--size", "64M"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    let config_path = dir.join("twinsan.toml");
    let cfg = config_path.display();
    // The binary under test is not the `twinsan` on PATH, so the commands name it by its path.
    let bin = std::fs::canonicalize(twinsan_bin()).expect("the binary's path");
    let bin = bin.display();
    let primary = format!("{bin} --config {cfg} --node node1 volume primary --force vol0");
    for next in [
        format!("{bin} node run --config {cfg} --node node1"),
        format!("{bin} node run --config {cfg} --node node2"),
        primary.clone(),
    ] {
        assert!(shown.contains(&next), "{next:?} missing from:\n{shown}");
    }
    // As printed, it runs: the daemon is not up, so it exits 3 (no admin socket), not 127 (no such command).
    let ran = run(
        Command::new("sh").arg("-c").arg(&primary),
        Duration::from_secs(30),
    );
    assert_eq!(ran.status.code(), Some(3), "{}", text(&ran));
    assert!(
        shown.contains("placement:     internal"),
        "the create-md reports are printed:\n{shown}"
    );

    let config = ClusterConfig::load(&config_path).expect("the config loads");
    assert_eq!(config.cluster.name, "lab");
    assert!(config.cluster.manual);
    assert_eq!(
        config.secret().expect("secret").len(),
        64,
        "32 random bytes in hex"
    );
    // The console's password is printed, and only its hash is in the config.
    let password = shown
        .lines()
        .find_map(|l| l.trim().strip_prefix("password for its actions: "))
        .unwrap_or_else(|| panic!("no console password printed:\n{shown}"));
    assert!(
        shown.contains("http://127.0.0.11:9942/"),
        "no console URL:\n{shown}"
    );
    let hash = config
        .cluster
        .console_password_hash
        .as_deref()
        .expect("console_password_hash");
    assert!(twinsan_node::console::auth::verify_password(hash, password));
    let text_of_config = std::fs::read_to_string(&config_path).expect("read the config");
    assert!(
        !text_of_config.contains(password),
        "the password itself is in the config"
    );
    let mode = std::fs::metadata(&config_path)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the config holds the secret: {mode:o}");
    let nodes: Vec<_> = config
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.id, n.address.to_string()))
        .collect();
    assert_eq!(
        nodes,
        [
            ("node1", 1, "127.0.0.11".into()),
            ("node2", 2, "127.0.0.12".into())
        ]
    );
    let volume = config.volume("vol0").expect("vol0");
    assert_eq!(volume.port, 7789);
    let target = &config.targets[0];
    assert_eq!(
        (target.iqn.as_str(), target.vip.to_string(), target.port),
        ("iqn.2025-08.local.twinsan:vol0", "127.0.0.10".into(), 3260)
    );
    assert_eq!(
        (target.lun[0].lun, target.lun[0].volume.as_str()),
        (1, "vol0")
    );

    for (node, id, peer) in [("node1", 1, 2), ("node2", 2, 1)] {
        let disk = config.resolve(&volume.disk[node].path);
        assert_eq!(disk, dir.join(node).join("vol0.img"));
        let len = std::fs::metadata(&disk).expect("disk").len();
        assert_eq!(len, (64 << 20) + metadata_size_for(64 << 20));
        let (layout, chosen) = read_md(&disk, None).expect("metadata");
        assert_eq!(
            layout.data_size,
            64 << 20,
            "the volume holds exactly --size"
        );
        let sb = &chosen.superblock;
        assert_eq!(sb.volume_uuid, volume.uuid_value(), "{node}");
        assert_eq!((sb.node_id, sb.peer_node_id), (id, peer));
        assert_eq!(sb.current_uuid, UUID_JUST_CREATED);
    }

    // A second init into the same folder is refused and changes nothing.
    let before = std::fs::read(&config_path).expect("read");
    let out = init(&dir, &["--size", "8M"]);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("twinsan.toml already exists") && shown.contains("nothing was changed"),
        "{shown}"
    );
    assert_eq!(std::fs::read(&config_path).expect("read"), before);
    assert_eq!(
        std::fs::metadata(dir.join("node1/vol0.img"))
            .expect("disk")
            .len(),
        (64 << 20) + metadata_size_for(64 << 20)
    );
}

#[test]
fn init_without_manual_lets_the_cluster_manager_choose() {
    let tmp = TempDir::new("init-auto");
    let dir = tmp.path().join("auto");
    let out = init(&dir, &["--size", "1M"]);
    assert!(out.status.success(), "{}", text(&out));
    let config = ClusterConfig::load(&dir.join("twinsan.toml")).expect("loads");
    assert!(!config.cluster.manual);
    let (layout, _) = read_md(&dir.join("node2/vol0.img"), None).expect("metadata");
    assert_eq!(layout.data_size, 1 << 20);
}

#[test]
fn init_refuses_bad_sizes_before_writing_anything() {
    let tmp = TempDir::new("init-size");
    for (size, why) in [
        ("1000", "whole number of 4 KiB blocks"),
        ("512K", "at least 1 MiB"),
        ("1M1", "invalid size"),
        ("lots", "invalid size"),
    ] {
        let dir = tmp.path().join("sized");
        let out = init(&dir, &["--size", size]);
        let shown = text(&out);
        assert!(!out.status.success(), "{size}: {shown}");
        assert!(
            shown.contains("--size") && shown.contains(why),
            "{size}: {shown}"
        );
        assert!(!dir.exists(), "{size}: nothing is created");
    }
}
