//! Config reload as a pure function: the running config and a new one (both parsed and validated) in, a typed
//! [`ReloadPlan`] out — the changes the daemon applies live, in the order it applies them — or a
//! [`ReloadRefusal`] that names the field that cannot change while the node runs. No I/O here; the daemon only
//! executes the plan.
//!
//! What can change live: volumes added or removed, targets added or removed (with their VIP, portal and LUNs),
//! LUNs added to or removed from a target (not its first LUN, which names the target's stack), a target's
//! allow-list and CHAP users. Everything else — `[cluster]`, `[[node]]`, a volume's settings, a target's IQN,
//! VIP or port, the volume behind a LUN number — is refused, and the running config stays as it is.

use std::collections::BTreeSet;
use std::fmt;

use sha2::{Digest, Sha256};

use super::{ClusterConfig, TargetSection, VolumeConfig};

/// One change of a reload, for this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new volume: claim its disk, read its metadata (`volume create-md` made it), bring it up and connect.
    AddVolume {
        /// The volume.
        volume: String,
    },
    /// A new target: its stack (VIP, target, LUNs) joins the cluster's resources.
    AddTarget {
        /// The target's IQN.
        iqn: String,
    },
    /// A LUN added to a running target: the sessions of that target get REPORTED LUNS DATA HAS CHANGED.
    AddLun {
        /// The target's IQN.
        iqn: String,
        /// The LUN number.
        lun: u64,
        /// The volume behind it.
        volume: String,
    },
    /// A LUN removed from a running target: it answers LOGICAL UNIT NOT SUPPORTED from then on, and the other
    /// sessions of the target get REPORTED LUNS DATA HAS CHANGED.
    RemoveLun {
        /// The target's IQN.
        iqn: String,
        /// The LUN number.
        lun: u64,
        /// The volume that was behind it.
        volume: String,
    },
    /// A target's allow-list or CHAP users changed: new logins see the new ones; sessions already logged in
    /// stay.
    ChangeAccess {
        /// The target's IQN.
        iqn: String,
    },
    /// A target removed: its stack stops (LUNs, target, VIP) wherever it runs.
    RemoveTarget {
        /// The target's IQN.
        iqn: String,
    },
    /// A volume removed: taken down (its link closed, its disk released). Refused by the daemon while the
    /// volume is Primary here.
    RemoveVolume {
        /// The volume.
        volume: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::AddVolume { volume } => write!(f, "add volume {volume}"),
            Change::AddTarget { iqn } => write!(f, "add target {iqn}"),
            Change::AddLun { iqn, lun, volume } => {
                write!(f, "add LUN {lun} (volume {volume}) to target {iqn}")
            }
            Change::RemoveLun { iqn, lun, volume } => {
                write!(f, "remove LUN {lun} (volume {volume}) from target {iqn}")
            }
            Change::ChangeAccess { iqn } => write!(f, "change the access rules of target {iqn}"),
            Change::RemoveTarget { iqn } => write!(f, "remove target {iqn}"),
            Change::RemoveVolume { volume } => write!(f, "remove volume {volume}"),
        }
    }
}

/// The changes of one reload, in the order they are applied: new volumes first (a new LUN needs its volume),
/// then targets and LUNs added, access rules, LUNs and targets removed, and removed volumes last (nothing may
/// serve them any more).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// The changes, in order. Empty: the new config is the running one.
    pub changes: Vec<Change>,
}

/// Why a new config cannot be applied to the running node. Nothing of it is applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}; the running config is unchanged (restart the node to apply this change)")]
pub struct ReloadRefusal {
    /// The field, as config validation names fields: `node[node1].address`, `volume[vol0].port`.
    pub field: String,
    /// What changed and why it cannot change live.
    pub why: String,
}

fn refuse(field: impl Into<String>, why: impl Into<String>) -> ReloadRefusal {
    ReloadRefusal {
        field: field.into(),
        why: why.into(),
    }
}

/// The plan that takes a node running `old` to `new`, or why it cannot be done live.
pub fn plan(old: &ClusterConfig, new: &ClusterConfig) -> Result<ReloadPlan, ReloadRefusal> {
    check_cluster(old, new)?;
    check_nodes(old, new)?;
    let mut changes = Vec::new();

    for v in &new.volumes {
        match old.volume(&v.name) {
            None => changes.push(Change::AddVolume {
                volume: v.name.clone(),
            }),
            Some(was) => check_volume(was, v)?,
        }
    }
    let mut added_luns = Vec::new();
    let mut removed_luns = Vec::new();
    let mut access = Vec::new();
    for t in &new.targets {
        let Some(was) = old.targets.iter().find(|o| o.iqn == t.iqn) else {
            changes.push(Change::AddTarget { iqn: t.iqn.clone() });
            continue;
        };
        check_target(was, t)?;
        for l in &t.lun {
            if !was.lun.iter().any(|o| o.lun == l.lun) {
                added_luns.push(Change::AddLun {
                    iqn: t.iqn.clone(),
                    lun: l.lun,
                    volume: l.volume.clone(),
                });
            }
        }
        for o in &was.lun {
            if !t.lun.iter().any(|l| l.lun == o.lun) {
                removed_luns.push(Change::RemoveLun {
                    iqn: t.iqn.clone(),
                    lun: o.lun,
                    volume: o.volume.clone(),
                });
            }
        }
        let rules = |s: &TargetSection| {
            (
                s.allow.clone(),
                s.chap_user.clone(),
                s.chap_secret_file.clone(),
                s.mutual_chap_user.clone(),
                s.mutual_chap_secret_file.clone(),
            )
        };
        if rules(was) != rules(t) {
            access.push(Change::ChangeAccess { iqn: t.iqn.clone() });
        }
    }
    changes.extend(added_luns);
    changes.extend(access);
    changes.extend(removed_luns);
    for o in &old.targets {
        if !new.targets.iter().any(|t| t.iqn == o.iqn) {
            changes.push(Change::RemoveTarget { iqn: o.iqn.clone() });
        }
    }
    for o in &old.volumes {
        if new.volume(&o.name).is_none() {
            changes.push(Change::RemoveVolume {
                volume: o.name.clone(),
            });
        }
    }
    Ok(ReloadPlan { changes })
}

fn check_cluster(old: &ClusterConfig, new: &ClusterConfig) -> Result<(), ReloadRefusal> {
    let (a, b) = (&old.cluster, &new.cluster);
    let fields: [(&str, bool); 14] = [
        ("name", a.name == b.name),
        ("manual", a.manual == b.manual),
        ("secret", a.secret == b.secret),
        ("secret_file", a.secret_file == b.secret_file),
        ("port", a.port == b.port),
        (
            "heartbeat_interval_ms",
            a.heartbeat_interval_ms == b.heartbeat_interval_ms,
        ),
        (
            "detection_timeout_ms",
            a.detection_timeout_ms == b.detection_timeout_ms,
        ),
        (
            "monitor_interval_ms",
            a.monitor_interval_ms == b.monitor_interval_ms,
        ),
        (
            "resource_stickiness",
            a.resource_stickiness == b.resource_stickiness,
        ),
        (
            "migration_threshold",
            a.migration_threshold == b.migration_threshold,
        ),
        (
            "failure_timeout_s",
            a.failure_timeout_s == b.failure_timeout_s,
        ),
        ("no_quorum_policy", a.no_quorum_policy == b.no_quorum_policy),
        ("witness", a.witness == b.witness),
        // Refused like the rest of [cluster]: a new password takes a restart of the node (which also ends the
        // console's sessions).
        (
            "console_password_hash",
            a.console_password_hash == b.console_password_hash,
        ),
    ];
    match fields.iter().find(|(_, same)| !same) {
        Some((field, _)) => Err(refuse(
            format!("cluster.{field}"),
            "changed: the [cluster] section cannot change while the node runs",
        )),
        None => Ok(()),
    }
}

fn check_nodes(old: &ClusterConfig, new: &ClusterConfig) -> Result<(), ReloadRefusal> {
    if old.nodes.len() != new.nodes.len() {
        return Err(refuse(
            "node",
            "the nodes changed: the nodes of a running cluster cannot change",
        ));
    }
    for (i, (a, b)) in old.nodes.iter().zip(&new.nodes).enumerate() {
        if a.name != b.name {
            return Err(refuse(
                format!("node[{i}].name"),
                format!(
                    "changed from {} to {}: a node's name cannot change while it runs",
                    a.name, b.name
                ),
            ));
        }
        let key = |f: &str| format!("node[{}].{f}", a.name);
        let fields: [(&str, bool); 6] = [
            ("id", a.id == b.id),
            ("address", a.address == b.address),
            ("links", a.links == b.links),
            ("admin_socket", a.admin_socket == b.admin_socket),
            ("state_dir", a.state_dir == b.state_dir),
            ("http", a.http == b.http),
        ];
        if let Some((field, _)) = fields.iter().find(|(_, same)| !same) {
            return Err(refuse(
                key(field),
                "changed: a node's id, addresses, admin socket, state folder and HTTP endpoint cannot change \
                 while it runs (restart the node)",
            ));
        }
    }
    Ok(())
}

fn check_volume(a: &VolumeConfig, b: &VolumeConfig) -> Result<(), ReloadRefusal> {
    let disks = |v: &VolumeConfig| {
        v.disk
            .iter()
            .map(|(n, d)| (n.clone(), d.path.clone(), d.meta.clone()))
            .collect::<Vec<_>>()
    };
    // Every field named, so that a new setting cannot be left out of the comparison unseen.
    let VolumeConfig {
        name: _,
        uuid,
        port,
        protocol,
        fencing,
        after_sb_0pri,
        after_sb_1pri,
        after_sb_2pri,
        checksum_resync,
        resync_max_kib_s,
        handler_split_brain,
        handler_pri_lost_after_sb,
        handler_fence_peer,
        handler_unfence_peer,
        disk: _,
    } = a;
    let fields: [(&str, bool); 14] = [
        ("uuid", *uuid == b.uuid),
        ("port", *port == b.port),
        ("protocol", *protocol == b.protocol),
        ("fencing", *fencing == b.fencing),
        ("after_sb_0pri", *after_sb_0pri == b.after_sb_0pri),
        ("after_sb_1pri", *after_sb_1pri == b.after_sb_1pri),
        ("after_sb_2pri", *after_sb_2pri == b.after_sb_2pri),
        ("checksum_resync", *checksum_resync == b.checksum_resync),
        ("resync_max_kib_s", *resync_max_kib_s == b.resync_max_kib_s),
        (
            "handler_split_brain",
            *handler_split_brain == b.handler_split_brain,
        ),
        (
            "handler_pri_lost_after_sb",
            *handler_pri_lost_after_sb == b.handler_pri_lost_after_sb,
        ),
        (
            "handler_fence_peer",
            *handler_fence_peer == b.handler_fence_peer,
        ),
        (
            "handler_unfence_peer",
            *handler_unfence_peer == b.handler_unfence_peer,
        ),
        ("disk", disks(a) == disks(b)),
    ];
    match fields.iter().find(|(_, same)| !same) {
        Some((field, _)) => Err(refuse(
            format!("volume[{}].{field}", a.name),
            "changed: the settings of a running volume cannot change live (remove the volume and add it \
             under a new name, or restart the nodes one at a time)",
        )),
        None => Ok(()),
    }
}

fn check_target(a: &TargetSection, b: &TargetSection) -> Result<(), ReloadRefusal> {
    let key = |f: &str| format!("target[{}].{f}", a.iqn);
    let fields: [(&str, bool); 4] = [
        ("vip", a.vip == b.vip),
        ("port", a.port == b.port),
        ("vip_prefix", a.vip_prefix == b.vip_prefix),
        ("vip_interface", a.vip_interface == b.vip_interface),
    ];
    if let Some((field, _)) = fields.iter().find(|(_, same)| !same) {
        return Err(refuse(
            key(field),
            "changed: a running target's portal cannot move live (add a target with the new portal and remove \
             this one)",
        ));
    }
    let first = |s: &TargetSection| s.lun.first().map(|l| (l.lun, l.volume.clone()));
    if first(a) != first(b) {
        return Err(refuse(
            key("lun"),
            "its first LUN changed: the first LUN's volume names the target's stack, so it stays first (add or \
             remove the LUNs after it)",
        ));
    }
    for l in &b.lun {
        if let Some(o) = a
            .lun
            .iter()
            .find(|o| o.lun == l.lun && o.volume != l.volume)
        {
            return Err(refuse(
                format!("{}.lun[{}].volume", key("").trim_end_matches('.'), l.lun),
                format!(
                    "changed from {} to {}: a LUN number cannot take another volume live (remove the LUN in \
                     one reload, add it in the next)",
                    o.volume, l.volume
                ),
            ));
        }
    }
    Ok(())
}

/// A hash of what a config means (its parsed form, not its comments or layout), which the nodes compare in
/// their reports: `twinsan status` warns while the two differ. The secrets themselves are not in it (a
/// different secret shows as links that do not authenticate).
pub fn config_hash(config: &ClusterConfig) -> String {
    let mut canonical = config.clone();
    canonical.source = Default::default();
    canonical.base_dir = Default::default();
    // The node each node is does not matter; sets of things whose order does not matter are sorted.
    let mut volumes: Vec<String> = canonical.volumes.iter().map(|v| format!("{v:?}")).collect();
    volumes.sort();
    let targets: BTreeSet<String> = canonical.targets.iter().map(|t| format!("{t:?}")).collect();
    let text = format!(
        "{:?}\n{:?}\n{volumes:?}\n{targets:?}",
        canonical.cluster, canonical.nodes
    );
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::VALID;
    use std::path::Path;

    fn parse(text: &str) -> ClusterConfig {
        ClusterConfig::parse(
            text,
            Path::new("/etc/twinsan/twinsan.toml"),
            Path::new("/etc/twinsan"),
        )
        .expect("valid config")
    }

    fn edited(from: &str, to: &str) -> ClusterConfig {
        assert_eq!(VALID.matches(from).count(), 1, "{from:?} once in VALID");
        parse(&VALID.replacen(from, to, 1))
    }

    const VOL2: &str = r#"
[[volume]]
name = "vol2"
uuid = "00112233445566778899aabbccddeeff"
port = 7791
disk = { node1 = { path = "node1/vol2.img" }, node2 = { path = "node2/vol2.img" } }
"#;

    fn text(plan: &ReloadPlan) -> Vec<String> {
        plan.changes.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn the_same_config_is_an_empty_plan_and_the_same_hash() {
        let a = parse(VALID);
        let b = parse(&format!("# a comment\n{VALID}"));
        assert_eq!(plan(&a, &b), Ok(ReloadPlan::default()));
        assert_eq!(config_hash(&a), config_hash(&b));
        assert_eq!(config_hash(&a).len(), 16);
    }

    #[test]
    fn the_hash_of_a_file_is_pinned() {
        // Pinned: the typed settings (protocol, fencing, after_sb_*, no_quorum_policy) print as the strings they
        // replaced, so the same file hashes as in 0.2.0 and a mixed pair does not warn during an upgrade.
        let config = parse(VALID);
        assert_eq!(config_hash(&config), "d09efa0c033d7659");
        let vol1 = format!("{:?}", config.volumes[1]);
        assert!(
            vol1.contains(
                "protocol: \"A\", fencing: \"resource-only\", after_sb_0pri: \"discard-node-node2\", \
                 after_sb_1pri: \"consensus\", after_sb_2pri: \"call-pri-lost-after-sb\""
            ),
            "{vol1}"
        );
        let vol0 = format!("{:?}", config.volumes[0]);
        assert!(
            vol0.contains(
                "protocol: \"C\", fencing: \"dont-care\", after_sb_0pri: \"disconnect\", \
                 after_sb_1pri: \"disconnect\", after_sb_2pri: \"disconnect\""
            ),
            "{vol0}"
        );
        let cluster = format!("{:?}", config.cluster);
        assert!(
            cluster.contains("no_quorum_policy: \"ignore\""),
            "{cluster}"
        );
    }

    #[test]
    fn a_node_setting_left_out_hashes_as_in_the_release_before_it() {
        let a = parse(VALID);
        // What 0.2.0 hashed for a node and the cluster: the fields it had, nothing about `http` or the console.
        assert!(!format!("{:?}", a.nodes).contains("http"), "{:?}", a.nodes);
        assert!(
            !format!("{:?}", a.cluster).contains("console"),
            "{:?}",
            a.cluster
        );
        let b = edited(
            "address = \"127.0.0.11\"",
            "address = \"127.0.0.11\"\nhttp = \"127.0.0.11:9100\"",
        );
        assert!(format!("{:?}", b.nodes).contains("http"));
        assert_ne!(config_hash(&a), config_hash(&b));
        assert_eq!(
            plan(&a, &b),
            Err(ReloadRefusal {
                field: "node[node1].http".into(),
                why: "changed: a node's id, addresses, admin socket, state folder and HTTP endpoint cannot change \
                      while it runs (restart the node)"
                    .into()
            })
        );
    }

    #[test]
    fn a_volume_added_behind_a_running_target_then_removed_again() {
        let old = parse(VALID);
        let with = format!("{VOL2}\n{VALID}").replacen(
            "lun = [ { lun = 1, volume = \"vol0\" } ]",
            "lun = [ { lun = 1, volume = \"vol0\" }, { lun = 2, volume = \"vol2\" } ]",
            1,
        );
        let new = parse(&with);
        let added = plan(&old, &new).expect("live");
        assert_eq!(
            text(&added),
            [
                "add volume vol2",
                "add LUN 2 (volume vol2) to target iqn.2025-08.local.twinsan:vol0"
            ]
        );
        assert_ne!(config_hash(&old), config_hash(&new));
        let removed = plan(&new, &old).expect("live");
        assert_eq!(
            text(&removed),
            [
                "remove LUN 2 (volume vol2) from target iqn.2025-08.local.twinsan:vol0",
                "remove volume vol2"
            ]
        );
    }

    #[test]
    fn targets_and_access_rules() {
        let old = parse(VALID);
        let new = edited(
            "allow = [\"iqn.1994-05.com.redhat:client1\", ",
            "allow = [\"iqn.1994-05.com.redhat:client2\", ",
        );
        assert_eq!(
            text(&plan(&old, &new).expect("live")),
            ["change the access rules of target iqn.2025-08.local.twinsan:vol0"]
        );
        let end = VALID
            .find("[[target]]\niqn = \"eui.")
            .expect("second target");
        let fewer = parse(&VALID[..end]);
        assert_eq!(
            text(&plan(&old, &fewer).expect("live")),
            ["remove target eui.0123456789ABCDEF"]
        );
        assert_eq!(
            text(&plan(&fewer, &old).expect("live")),
            ["add target eui.0123456789ABCDEF"]
        );
    }

    #[test]
    fn what_cannot_change_live_is_refused_naming_the_field() {
        let old = parse(VALID);
        let cases = [
            (
                "address = \"127.0.0.11\"",
                "address = \"127.0.0.13\"",
                "node[node1].address",
            ),
            ("id = 2", "id = 3", "node[node2].id"),
            ("name = \"test\"", "name = \"other\"", "cluster.name"),
            (
                "name = \"test\"",
                "name = \"test\"\nconsole_password_hash = \"$argon2id$v=19$m=19456,t=2,p=1$BwcHBwcHBwcHBwcHBwcHBw$9cSPZ9ZzJGhYTDvi3CEHz6p8Kq2z8pAW4xUfLJp3U3I\"",
                "cluster.console_password_hash",
            ),
            ("port = 7789", "port = 7788", "volume[vol0].port"),
            (
                "protocol = \"A\"",
                "protocol = \"C\"",
                "volume[vol1].protocol",
            ),
            (
                "vip = \"127.0.0.20\"",
                "vip = \"127.0.0.21\"",
                "target[eui.0123456789ABCDEF].vip",
            ),
            (
                "lun = [ { lun = 1, volume = \"vol0\" } ]",
                "lun = [ { lun = 3, volume = \"vol0\" } ]",
                "target[iqn.2025-08.local.twinsan:vol0].lun",
            ),
        ];
        for (from, to, field) in cases {
            let refused = plan(&old, &edited(from, to)).expect_err(field);
            assert_eq!(refused.field, field, "{from} -> {to}");
            assert!(
                refused
                    .to_string()
                    .contains("the running config is unchanged"),
                "{refused}"
            );
        }
    }

    #[test]
    fn a_lun_number_that_takes_another_volume_is_refused() {
        let two = |second: &str| {
            parse(&format!("{VOL2}\n{VALID}").replacen(
                "lun = [ { lun = 1, volume = \"vol0\" } ]",
                &format!(
                    "lun = [ {{ lun = 1, volume = \"vol0\" }}, {{ lun = 2, volume = \"{second}\" }} ]"
                ),
                1,
            ))
        };
        let end = VALID
            .find("[[target]]\niqn = \"eui.")
            .expect("second target");
        let base = &VALID[..end];
        let a = parse(&format!("{VOL2}\n{base}").replacen(
            "lun = [ { lun = 1, volume = \"vol0\" } ]",
            "lun = [ { lun = 1, volume = \"vol0\" }, { lun = 2, volume = \"vol2\" } ]",
            1,
        ));
        let b = parse(&format!("{VOL2}\n{base}").replacen(
            "lun = [ { lun = 1, volume = \"vol0\" } ]",
            "lun = [ { lun = 1, volume = \"vol0\" }, { lun = 2, volume = \"vol1\" } ]",
            1,
        ));
        let refused = plan(&a, &b).expect_err("LUN 2 changes volume");
        assert_eq!(
            refused.field,
            "target[iqn.2025-08.local.twinsan:vol0].lun[2].volume"
        );
        assert!(refused.why.contains("from vol2 to vol1"), "{refused}");
        // Same numbers and volumes: nothing to do.
        assert_eq!(plan(&two("vol2"), &a).map(|p| p.changes.len()), Ok(1));
    }
}
