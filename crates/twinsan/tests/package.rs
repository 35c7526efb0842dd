//! `scripts/package`: the Debian package builds, lintian finds no error in it, it holds the binary, the units, the
//! man pages, the completions, the example config and the OCF agents for Pacemaker, and it has no maintainer
//! script that could stop or restart a running node on upgrade. Needs cargo-deb (the script installs it) and
//! lintian (scripts/install-test-deps).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{require_tool, run, text, twinsan_bin, TempDir};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_debian_package_builds_passes_lintian_and_holds_every_file() {
    require_tool("lintian");
    require_tool("dpkg-deb");
    // The first run may install cargo-deb and build the release binary.
    let out = run(
        Command::new(repo().join("scripts/package")).current_dir(repo()),
        Duration::from_secs(900),
    );
    let shown = text(&out);
    assert!(out.status.success(), "scripts/package failed:\n{shown}");
    let errors: Vec<&str> = shown.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors: {errors:?}\n{shown}");
    assert!(shown.contains("package: lintian: no errors"), "{shown}");
    let deb = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| repo().join(l.trim()))
        .expect("the .deb's path, last");
    assert!(
        deb.extension().is_some_and(|e| e == "deb"),
        "{}",
        deb.display()
    );

    let listing = run(
        Command::new("dpkg-deb").arg("-c").arg(&deb),
        Duration::from_secs(60),
    );
    assert!(listing.status.success(), "{}", text(&listing));
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let files: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    for want in [
        "./usr/bin/twinsan",
        "./usr/lib/systemd/system/twinsan-node.service",
        "./usr/lib/systemd/system/twinsan-witness.service",
        "./etc/default/twinsan-witness",
        "./usr/share/man/man1/twinsan.1.gz",
        "./usr/share/man/man1/twinsan-node-run.1.gz",
        "./usr/share/man/man1/twinsan-witness.1.gz",
        "./usr/share/man/man5/twinsan.toml.5.gz",
        "./usr/share/bash-completion/completions/twinsan",
        "./usr/share/zsh/vendor-completions/_twinsan",
        "./usr/share/fish/vendor_completions.d/twinsan.fish",
        "./usr/share/doc/twinsan/examples/twinsan.toml",
        "./usr/share/doc/twinsan/examples/prometheus/twinsan-alerts.yml",
        "./usr/share/doc/twinsan/examples/grafana/twinsan-dashboard.json",
        "./usr/share/doc/twinsan/copyright",
        "./usr/share/doc/twinsan/changelog.Debian.gz",
        "./usr/lib/ocf/resource.d/twinsan/volume",
        "./usr/lib/ocf/resource.d/twinsan/target",
    ] {
        assert!(
            files.contains(&want),
            "{want} missing from the package:\n{listing}"
        );
    }
    // Modes like -rw-r--r--: no group or world write bit anywhere.
    let writable: Vec<&str> = listing
        .lines()
        .filter(|l| l.as_bytes().get(5) == Some(&b'w') || l.as_bytes().get(8) == Some(&b'w'))
        .collect();
    assert!(writable.is_empty(), "writable by others: {writable:?}");
    // The OCF agents are executable (Pacemaker runs them directly), as ocf-tester wants: 755.
    for agent in ["volume", "target"] {
        let path = format!("./usr/lib/ocf/resource.d/twinsan/{agent}");
        let line = listing
            .lines()
            .find(|l| l.split_whitespace().last() == Some(path.as_str()))
            .unwrap_or_else(|| panic!("{path} missing:\n{listing}"));
        assert!(line.starts_with("-rwxr-xr-x"), "{line}");
    }

    // No preinst, postinst, prerm or postrm: nothing enables, starts, stops or restarts a node, on upgrade least
    // of all (restarting is the admin's step).
    let info = run(
        Command::new("dpkg-deb").arg("-I").arg(&deb),
        Duration::from_secs(60),
    );
    let info = text(&info);
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        assert!(
            !info.contains(script),
            "the package has a {script}:\n{info}"
        );
    }
}

/// The example config refuses to run as shipped (its secret and uuid are placeholders) and loads once they are
/// filled in.
#[test]
fn the_example_config_loads_once_its_placeholders_are_filled_in() {
    let tmp = TempDir::new("example-config");
    let shipped =
        std::fs::read_to_string(repo().join("contrib/twinsan.toml")).expect("contrib/twinsan.toml");
    let config = tmp.path().join("twinsan.toml");
    let status = |text: &str| {
        std::fs::write(&config, text).expect("write");
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let mut cmd = Command::new(twinsan_bin());
        cmd.arg("--config")
            .arg(&config)
            .args(["--node", "san1", "status"]);
        run(&mut cmd, Duration::from_secs(30))
    };
    let refused = status(&shipped);
    assert_eq!(refused.status.code(), Some(4), "{}", text(&refused));
    let filled = shipped
        .replace(
            "CHANGE-ME-openssl-rand-hex-32",
            "4f9c1e7a2b8d3f6a0c5e9b1d7a3f8c2e6b0d4a9f1c7e3b5d8a2f6c0e9b4d1a7f",
        )
        .replace(
            "00000000000000000000000000000000",
            "6f1c2a9e4b7d4e0f9a3c5b1d2e8f7a60",
        );
    // Exit 3: the config is valid, and no daemon runs at /run/twinsan/san1.sock.
    let loaded = status(&filled);
    assert_eq!(loaded.status.code(), Some(3), "{}", text(&loaded));
}
