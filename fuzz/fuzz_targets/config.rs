//! The cluster config parser on arbitrary UTF-8: never panics, whatever the TOML; a config it accepts answers
//! every typed accessor the daemon calls, and holds what validation promises.
#![no_main]

use std::path::Path;

use twinsan_node::config::ClusterConfig;

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The base folder does not exist: parsing must not touch files.
    let Ok(config) = ClusterConfig::parse(text, Path::new("fuzz.toml"), Path::new("/nonexistent"))
    else {
        return;
    };
    assert_eq!(config.nodes.len(), 2);
    for volume in &config.volumes {
        let _ = (
            volume.protocol(),
            volume.fencing(),
            volume.policies(&config),
        );
        assert_ne!(
            volume.uuid_value(),
            0,
            "validation lets no zero uuid through"
        );
        for node in &config.nodes {
            let disk = volume
                .disk
                .get(&node.name)
                .expect("validation requires a disk per node");
            let _ = disk.placement();
        }
    }
    for target in &config.targets {
        assert!(!target.lun.is_empty());
        for lun in &target.lun {
            assert!(config.volume(&lun.volume).is_some());
        }
    }
    for node in &config.nodes {
        assert_eq!(
            config.this_node(Some(&node.name)).map(|n| n.id).ok(),
            Some(node.id)
        );
        assert!(config
            .peer_of(&node.name)
            .is_some_and(|peer| peer.id != node.id));
    }
}
