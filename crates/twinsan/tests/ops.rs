//! Operations: the systemd units in contrib/ load and start what the CLI accepts, completions and man pages come
//! from the CLI definition, and the exit status tells a config error and an absent daemon apart from a failure.
//!
//! The checks that need a tool (`systemd-analyze`, `bash`, `man`, `groff`) run when `command -v` finds it and say
//! so on stderr when it does not; every test also checks something without them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{run, text, twinsan_bin, TempDir};

/// The top-level commands an admin uses; `twinsan --help` may list more, and those are checked too.
const COMMANDS: [&str; 9] = [
    "serve", "init", "node", "volume", "status", "cluster", "resource", "target", "witness",
];

/// How long the daemon waits at SIGTERM for its resources to move (`DRAIN_AT_STOP` in twinsan-node's daemon).
const DAEMON_DRAIN_S: u64 = 30;

fn twinsan(args: &[&str]) -> Output {
    run(
        Command::new(twinsan_bin()).args(args),
        Duration::from_secs(60),
    )
}

/// Whether the shell finds `tool` (`command -v`).
fn has_tool(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/systemd")
}

/// Every value of `key` in a unit file, in order.
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .collect()
}

fn value<'a>(unit: &'a str, key: &str) -> &'a str {
    match values(unit, key).as_slice() {
        [one] => one,
        other => panic!("{key}= is set {} times, expected once", other.len()),
    }
}

/// The unit's ExecStart= arguments after the binary, with `%d` and `${VAR}` (from Environment=) filled in as
/// systemd would.
fn exec_args(unit: &str) -> Vec<String> {
    let mut words = value(unit, "ExecStart").split_whitespace();
    assert_eq!(
        words.next(),
        Some("/usr/bin/twinsan"),
        "ExecStart runs the packaged binary"
    );
    let env: Vec<(&str, &str)> = values(unit, "Environment")
        .into_iter()
        .filter_map(|v| v.split_once('='))
        .collect();
    words
        .map(|w| {
            let mut w = w.replace("%d", "/run/credentials/twinsan.service");
            for (name, val) in &env {
                w = w.replace(&format!("${{{name}}}"), val);
            }
            assert!(
                !w.contains(['$', '%']),
                "{w:?}: a variable without a default in Environment="
            );
            w
        })
        .collect()
}

#[test]
fn systemd_units_verify_and_run_what_the_cli_accepts() {
    let node =
        std::fs::read_to_string(units_dir().join("twinsan-node.service")).expect("node unit");
    let witness =
        std::fs::read_to_string(units_dir().join("twinsan-witness.service")).expect("witness unit");

    // What the daemon relies on.
    assert_eq!(value(&node, "Type"), "simple", "no sd_notify in the daemon");
    assert_eq!(value(&node, "Restart"), "on-failure");
    assert_eq!(
        value(&node, "KillSignal"),
        "SIGTERM",
        "SIGTERM starts the handover"
    );
    let stop_s: u64 = value(&node, "TimeoutStopSec")
        .trim_end_matches('s')
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!(
        stop_s > DAEMON_DRAIN_S,
        "TimeoutStopSec={stop_s}s cuts the {DAEMON_DRAIN_S} s handover short"
    );
    let caps = value(&node, "CapabilityBoundingSet");
    for cap in ["CAP_NET_ADMIN", "CAP_NET_RAW"] {
        assert!(
            caps.contains(cap),
            "{cap} (VIP over netlink, gratuitous ARP) missing: {caps}"
        );
    }
    assert_eq!(
        value(&node, "RuntimeDirectory"),
        "twinsan",
        "the admin sockets' /run/twinsan"
    );
    assert_eq!(
        value(&node, "StateDirectory"),
        "twinsan",
        "the node state's /var/lib/twinsan"
    );
    for unit in [&node, &witness] {
        assert!(value(unit, "After").contains("network-online.target"));
    }
    assert!(value(&witness, "ExecStart").contains("${TWINSAN_WITNESS_LISTEN}"));
    assert!(
        !values(&witness, "EnvironmentFile").is_empty(),
        "the address can be set without editing the unit"
    );

    // The real parser takes ExecStart's arguments, values included (--help after them stops before running).
    for (unit, usage) in [
        (&node, "Usage: twinsan node run"),
        (&witness, "Usage: twinsan witness"),
    ] {
        let mut args = exec_args(unit);
        args.push("--help".into());
        let out = run(
            Command::new(twinsan_bin()).args(&args),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success() && text(&out).contains(usage),
            "twinsan {args:?}:\n{}",
            text(&out)
        );
    }

    if !has_tool("systemd-analyze") {
        eprintln!("systemd-analyze not installed: the units were not verified by systemd (only by the checks above)");
        return;
    }
    // `verify` wants an executable at ExecStart and, with `man`, the Documentation= pages: give it both.
    let tmp = TempDir::new("units");
    let man_dir = tmp.path().join("man");
    let out = twinsan(&[
        "man",
        "--out",
        man_dir.join("man1").to_str().expect("utf-8 path"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let bin = twinsan_bin();
    let mut units = Vec::new();
    for (name, unit) in [
        ("twinsan-node.service", &node),
        ("twinsan-witness.service", &witness),
    ] {
        let path = tmp.path().join(name);
        std::fs::write(
            &path,
            unit.replace("/usr/bin/twinsan", bin.to_str().expect("utf-8 path")),
        )
        .expect("write");
        units.push(path);
    }
    let mut verify = Command::new("systemd-analyze");
    verify
        .arg("verify")
        .args(&units)
        .env("MANPATH", &man_dir)
        .current_dir(tmp.path());
    if !has_tool("man") {
        eprintln!("man not installed: systemd-analyze verify --man=no");
        verify.arg("--man=no");
    }
    let out = run(&mut verify, Duration::from_secs(60));
    // verify only warns (exit 0) about unknown keys and bad values: any output is a finding.
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify:\n{}",
        text(&out)
    );
}

/// The commands `twinsan --help` lists (the admin's ones are all there).
fn listed_commands() -> Vec<String> {
    let out = twinsan(&["--help"]);
    assert!(out.status.success(), "{}", text(&out));
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let listed: Vec<String> = help
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect();
    for command in COMMANDS {
        assert!(
            listed.iter().any(|c| c == command),
            "{command} not in --help:\n{help}"
        );
    }
    listed
}

#[test]
fn bash_completion_knows_every_command() {
    let out = twinsan(&["completions", "bash"]);
    assert!(out.status.success(), "{}", text(&out));
    let script = String::from_utf8(out.stdout).expect("utf-8");
    for command in listed_commands() {
        assert!(
            script.contains(&format!("twinsan,{command})")),
            "no completion for {command}"
        );
    }
    for shell in ["zsh", "fish"] {
        let out = twinsan(&["completions", shell]);
        assert!(
            out.status.success() && text(&out).contains("volume"),
            "{shell}: {}",
            text(&out)
        );
    }

    if !has_tool("bash") {
        eprintln!("bash not installed: the bash script was not parsed nor run");
        return;
    }
    let tmp = TempDir::new("completion");
    let path = tmp.path().join("twinsan.bash");
    std::fs::write(&path, &script).expect("write");
    let out = run(
        Command::new("bash").arg("-n").arg(&path),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success() && text(&out).is_empty(),
        "bash -n:\n{}",
        text(&out)
    );
    // Complete `twinsan volume cr<TAB>` the way bash does.
    let complete =
        "source \"$1\"; COMP_WORDS=(twinsan volume cr); COMP_CWORD=2; _twinsan twinsan cr volume; \
                    echo \"${COMPREPLY[@]}\"";
    let out = run(
        Command::new("bash")
            .arg("-c")
            .arg(complete)
            .arg("bash")
            .arg(&path),
        Duration::from_secs(30),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "create-md",
        "{}",
        text(&out)
    );
}

#[test]
fn man_page_names_every_command_and_renders() {
    let out = twinsan(&["man"]);
    assert!(out.status.success(), "{}", text(&out));
    let page = String::from_utf8(out.stdout).expect("utf-8");
    // clap_mangen puts two lines defining the apostrophe string (`.ie`/`.el`) before the title.
    let first = page
        .lines()
        .find(|l| !l.starts_with(".ie") && !l.starts_with(".el"));
    assert!(
        first.is_some_and(|l| l.starts_with(".TH twinsan 1")),
        "no title first: {first:?}"
    );
    for command in listed_commands() {
        assert!(
            page.contains(&format!("twinsan\\-{command}(1)")),
            "{command} not in the man page"
        );
    }
    assert!(
        page.contains("Exit status:") && page.contains("4  the config file"),
        "exit statuses in the page"
    );

    let tmp = TempDir::new("man");
    let dir = tmp.path().join("man1");
    let out = twinsan(&["man", "--out", dir.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", text(&out));
    let mut pages = vec![tmp.path().join("twinsan.1")];
    std::fs::write(&pages[0], &page).expect("write");
    for name in [
        "twinsan.1",
        "twinsan-node-run.1",
        "twinsan-volume-create-md.1",
        "twinsan-witness.1",
    ] {
        pages.push(dir.join(name));
        assert!(dir.join(name).is_file(), "{name} not written");
    }

    let (groff, man) = (has_tool("groff"), has_tool("man"));
    if !groff && !man {
        eprintln!("neither groff nor man installed: the pages were not rendered");
    }
    for page in &pages {
        if groff {
            let out = run(
                Command::new("groff")
                    .args(["-man", "-Tutf8", "-ww", "-z"])
                    .arg(page),
                Duration::from_secs(30),
            );
            assert!(
                out.status.success() && text(&out).is_empty(),
                "groff {}:\n{}",
                page.display(),
                text(&out)
            );
        }
        if man {
            let out = run(
                Command::new("man")
                    .args(["--warnings", "-l"])
                    .arg(page)
                    .env("MANWIDTH", "100")
                    .env("MANPAGER", "cat"),
                Duration::from_secs(30),
            );
            let shown = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "man {}:\n{}",
                page.display(),
                text(&out)
            );
            assert!(
                shown.contains("NAME") && shown.contains("twinsan"),
                "{shown}"
            );
        }
    }
}

#[test]
fn a_bad_config_exits_4_naming_the_file() {
    let tmp = TempDir::new("exit4");
    let missing = tmp.path().join("missing.toml");
    let garbled = tmp.path().join("garbled.toml");
    std::fs::write(&garbled, "[cluster\nname = 1\n").expect("write");
    for (config, args) in [
        (&missing, &["status"][..]),
        (&missing, &["node", "run"][..]),
        (&garbled, &["volume", "status"][..]),
        (&garbled, &["witness", "--listen", "127.0.0.1:0"][..]),
    ] {
        let mut all = vec!["--config", config.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        let out = twinsan(&all);
        let shown = text(&out);
        assert_eq!(out.status.code(), Some(4), "{all:?}: {shown}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("twinsan: error: ") && stderr.contains(&*config.to_string_lossy()),
            "{all:?}: the message names the file: {stderr}"
        );
    }
}

#[test]
fn no_daemon_exits_3_with_a_hint_and_usage_errors_exit_2() {
    let tmp = TempDir::new("exit3");
    let dir = tmp.path().join("lab");
    let out = twinsan(&["init", dir.to_str().expect("utf-8 path"), "--size", "1M"]);
    assert!(out.status.success(), "{}", text(&out));
    let config = dir.join("twinsan.toml");
    let config = config.to_str().expect("utf-8 path");

    for args in [
        &["status"][..],
        &["volume", "status"][..],
        &["cluster", "stop", "node1"][..],
    ] {
        let mut all = vec!["--config", config, "--node", "node1"];
        all.extend_from_slice(args);
        let out = twinsan(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out));
        assert!(
            stderr.starts_with("twinsan: error: ") && stderr.contains("twinsan node run"),
            "{args:?}: a hint to start the daemon: {stderr}"
        );
    }

    // A config that does not say which node this machine is: a config error, not a missing daemon.
    let out = twinsan(&["--config", config, "--node", "node9", "status"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));

    let out = twinsan(&["--config", config, "status", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = twinsan(&["--help"]);
    let help = text(&out);
    for line in [
        "0  success",
        "2  usage error",
        "3  the node daemon could not be reached",
        "4  the config file",
    ] {
        assert!(help.contains(line), "{line:?} not in --help:\n{help}");
    }
}
