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
    assert_eq!(
        value(&node, "Type"),
        "notify",
        "the daemon sends READY=1 (sd_notify)"
    );
    assert_eq!(value(&node, "NotifyAccess"), "main");
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

/// `twinsan node run` under systemd's Type=notify: READY=1 once it runs, STOPPING=1 when SIGTERM starts the
/// handover (the datagrams systemd would read on NOTIFY_SOCKET, read here by the test).
#[test]
fn cluster_node_run_tells_systemd_when_it_is_ready_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let mut c = common::cluster::Cluster::init("sd-notify", true, "16M");
    let path = c.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let notify = path.to_string_lossy().into_owned();
    c.start_with_env(1, &[("NOTIFY_SOCKET", notify.as_str())]);
    let mut buf = [0u8; 512];
    let mut read = || {
        let n = socket.recv(&mut buf).expect("a datagram from the daemon");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = read();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains("STATUS=node node1 running"), "{ready:?}");
    assert!(c.stop(1), "node1 did not stop cleanly:\n{}", c.logs());
    let stopping = read();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
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

#[test]
fn every_usage_error_exits_2_naming_the_option() {
    let tmp = TempDir::new("usage");
    let dir = tmp.path();
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    for f in [&a, &b] {
        std::fs::write(f, vec![0u8; 1 << 20]).expect("write");
    }
    let (a, b) = (a.to_str().expect("utf-8"), b.to_str().expect("utf-8"));
    let lun_a = format!("1={a}");
    let lun_b = format!("1={b}");
    let new_dir = dir.join("new");
    let new_dir = new_dir.to_str().expect("utf-8");
    let iqn = "iqn.2025-08.local.test:usage";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["serve", "--iqn", iqn, "--lun", "bogus"], "--lun"),
        (vec!["serve", "--iqn", iqn, "--lun", "x=/a"], "--lun"),
        (
            vec!["serve", "--iqn", "Not-An-IQN", "--lun", &lun_a],
            "--iqn",
        ),
        (
            vec!["serve", "--iqn", iqn, "--lun", &lun_a, "--create", "1X"],
            "--create",
        ),
        (
            vec![
                "serve", "--iqn", iqn, "--lun", &lun_a, "--listen", "nowhere",
            ],
            "--listen",
        ),
        (
            vec!["serve", "--iqn", iqn, "--lun", &lun_a, "--chap", "u:short"],
            "--chap",
        ),
        (
            vec![
                "serve",
                "--iqn",
                iqn,
                "--lun",
                &lun_a,
                "--mutual-chap",
                "t:twelve-chars-ok",
            ],
            "--chap",
        ),
        (
            vec!["serve", "--iqn", iqn, "--lun", &lun_a, "--lun", &lun_b],
            "given twice",
        ),
        (
            vec!["serve", "--config", "x", "--iqn", iqn, "--lun", &lun_a],
            "--config",
        ),
        (
            vec!["--node", "node1", "serve", "--iqn", iqn, "--lun", &lun_a],
            "--node",
        ),
        (vec!["init", new_dir, "--size", "1X"], "--size"),
        (vec!["init", new_dir, "--size", "1000"], "--size"),
        (vec!["init", new_dir, "--config", "x"], "--config"),
        (vec!["demo", "--node", "node1"], "--node"),
        (vec!["demo", "--size", "1X"], "--size"),
        (vec!["witness", "--listen", "nowhere"], "--listen"),
    ];
    for (args, named) in cases {
        let out = twinsan(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            stderr.contains(named),
            "{args:?}: {named} not named: {stderr}"
        );
    }
    assert!(
        !Path::new(new_dir).exists(),
        "init wrote something on a usage error"
    );
}

#[test]
fn serve_says_each_cause_once_with_the_next_step() {
    let tmp = TempDir::new("serve-errors");
    let dir = tmp.path();
    let iqn = "iqn.2025-08.local.test:errors";
    let listen = ["--listen", "127.0.0.1:0"];

    let missing = dir.join("missing.img");
    let lun = format!("1={}", missing.display());
    let mut args = vec!["serve", "--iqn", iqn, "--lun", &lun];
    args.extend(listen);
    let out = twinsan(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr.contains("--create"), "no next step: {stderr}");
    assert_eq!(stderr.matches("does not exist").count(), 1, "{stderr}");
    assert!(!missing.exists(), "serve created the file without --create");

    // A directory: the OS error, once.
    let lun = format!("1={}", dir.display());
    let mut args = vec!["serve", "--iqn", iqn, "--lun", &lun];
    args.extend(listen);
    let out = twinsan(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");

    let tiny = dir.join("tiny.img");
    std::fs::write(&tiny, [0u8; 100]).expect("write");
    let lun = format!("1={}", tiny.display());
    let mut args = vec!["serve", "--iqn", iqn, "--lun", &lun];
    args.extend(listen);
    let out = twinsan(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(stderr.matches("100 bytes").count(), 1, "{stderr}");
}

#[test]
fn a_too_small_disk_is_reported_once() {
    let tmp = TempDir::new("too-small");
    let dir = tmp.path().join("pair");
    let out = twinsan(&[
        "init",
        dir.to_str().expect("utf-8"),
        "--manual",
        "--size",
        "1M",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let disk = dir.join("node1/vol0.img");
    std::fs::File::options()
        .write(true)
        .open(&disk)
        .and_then(|f| f.set_len(64 << 10))
        .expect("shrink");
    let config = dir.join("twinsan.toml");
    let out = twinsan(&[
        "--config",
        config.to_str().expect("utf-8"),
        "--node",
        "node1",
        "volume",
        "create-md",
        "--force",
        "vol0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(stderr.matches("too small").count(), 1, "{stderr}");
}

#[test]
fn a_missing_config_points_at_config_and_init() {
    let tmp = TempDir::new("no-config");
    let missing = tmp.path().join("missing.toml");
    let out = twinsan(&["--config", missing.to_str().expect("utf-8"), "status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        stderr.contains("--config") && stderr.contains("twinsan init"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("missing.toml").count(), 1, "{stderr}");
}

#[test]
fn man_out_writes_the_config_page_with_every_key() {
    let tmp = TempDir::new("man5");
    let dir = tmp.path().join("man");
    let out = twinsan(&["man", "--out", dir.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", text(&out));
    let page = std::fs::read_to_string(dir.join("twinsan.toml.5")).expect("twinsan.toml.5");
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .expect("docs/configuration.md");
    // The keys: the first column of the document's tables, in backticks.
    let keys: Vec<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(key, _)| key)
        .collect();
    assert!(keys.len() > 40, "{keys:?}");
    // roff spells a minus `\-`; every key is set in bold.
    for key in &keys {
        let shown = format!("\\fB{}\\fR", key.replace('-', "\\-"));
        assert!(page.contains(&shown), "{key} not in twinsan.toml.5");
    }
    // The command pages have examples.
    let serve = std::fs::read_to_string(dir.join("twinsan-serve.1")).expect("twinsan-serve.1");
    assert!(serve.contains("Examples:"), "{serve}");
    if has_tool("groff") {
        let out = run(
            Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(dir.join("twinsan.toml.5")),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success() && text(&out).is_empty(),
            "groff twinsan.toml.5:\n{}",
            text(&out)
        );
    } else {
        eprintln!("groff not installed: twinsan.toml.5 was not rendered");
    }
}
