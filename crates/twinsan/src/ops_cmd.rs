//! What packaging and operations need from the binary: shell completions and man pages generated from the CLI
//! definition (`twinsan completions SHELL`, `twinsan man [--out DIR]`), and exit statuses that say what went wrong.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use twinsan_node::admin::ClientError;
use twinsan_node::config::ConfigError;

/// The text after `twinsan --help` (and in the man page): the exit statuses and the packaging commands.
pub const AFTER_HELP: &str = "\
Exit status:
  0  success
  1  the operation failed; the message says why
  2  usage error: an unknown command, flag or value
  3  the node daemon could not be reached (no admin socket, or nothing accepts on it): start `twinsan node run`
  4  the config file is unreadable or invalid, or names no node for this machine; the message names the file

Packaging:
  twinsan completions bash|zsh|fish   a completion script, on stdout
  twinsan man [--out DIR]             the man page on stdout, or one page per command (and twinsan.toml.5)
                                      into DIR";

/// A command line that asks for something impossible in a way the parser cannot see by itself (a LUN given twice,
/// an option that means nothing to the command): exit status 2, like clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `twinsan`'s exit status, so that a script or a unit can tell what happened without parsing the message (the
/// list is [`AFTER_HELP`]). Most usage errors exit 2 from clap before any command runs; the rest are a
/// [`UsageError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// The operation failed; the message says why.
    Failed = 1,
    /// The command line is wrong: an unknown command, flag or value.
    Usage = 2,
    /// The node daemon could not be reached: its admin socket is absent or nothing accepts on it.
    DaemonUnreachable = 3,
    /// The config file is unreadable or invalid, or does not tell which node this machine is.
    BadConfig = 4,
}

impl ExitStatus {
    /// The status for `error`, from the first cause in its chain that says more than "failed".
    pub fn of(error: &anyhow::Error) -> ExitStatus {
        error
            .chain()
            .find_map(|cause| {
                if cause.downcast_ref::<UsageError>().is_some() {
                    Some(ExitStatus::Usage)
                } else if cause.downcast_ref::<ConfigError>().is_some() {
                    Some(ExitStatus::BadConfig)
                } else if let Some(ClientError::Connect { .. }) = cause.downcast_ref() {
                    Some(ExitStatus::DaemonUnreachable)
                } else {
                    None
                }
            })
            .unwrap_or(ExitStatus::Failed)
    }
}

/// The message for `error`: its causes, outermost first, joined by ": ", each said once — a cause whose text the
/// message already holds (an error that prints its source, then the source itself) is left out.
pub fn message(error: &anyhow::Error) -> String {
    let mut shown = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if shown.contains(&text) {
            continue;
        }
        if !shown.is_empty() {
            shown += ": ";
        }
        shown += &text;
    }
    shown
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(status: ExitStatus) -> Self {
        std::process::ExitCode::from(status as u8)
    }
}

/// `twinsan completions SHELL`.
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell the script is for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `twinsan man`.
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write one page per command (twinsan.1, twinsan-volume-create-md.1, ...) and the config file's page
    /// (twinsan.toml.5) into DIR instead of printing the top-level page.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Prints the completion script for `args.shell`.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut command = crate::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, "twinsan", &mut out);
    print(&out)
}

/// Prints the top-level man page, or writes every command's page into `--out`.
pub fn man(args: ManArgs) -> anyhow::Result<()> {
    // No page for `help`: it is `--help` again, and generate_to writes none.
    let command = crate::Cli::command().disable_help_subcommand(true);
    match args.out {
        Some(dir) => {
            let config_page = crate::config_page::render(env!("CARGO_PKG_VERSION"));
            std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(command, &dir))
                .and_then(|()| std::fs::write(dir.join("twinsan.toml.5"), config_page))
                .with_context(|| format!("writing the man pages into {}", dir.display()))?;
            println!("man pages written to {}", dir.display());
            Ok(())
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut out)
                .context("rendering the man page")?;
            print(&out)
        }
    }
}

/// How the commands that `init` and `demo` print should start: `twinsan` when that name on `PATH` is this very
/// program, else this program's path (after `cargo run`, `twinsan` is not on `PATH`, or is an older install).
pub fn program_name() -> String {
    match std::env::current_exe() {
        Ok(exe) => program_name_for(&exe, std::env::var_os("PATH").as_deref()),
        Err(_) => "twinsan".to_string(),
    }
}

/// [`program_name`] for the program at `exe` and the search path `path`.
fn program_name_for(exe: &Path, path: Option<&std::ffi::OsStr>) -> String {
    let exe_real = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    // The first `twinsan` on PATH is the one a shell runs.
    let on_path = path
        .into_iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("twinsan"))
        .find(|candidate| is_executable(candidate));
    match on_path.and_then(|p| std::fs::canonicalize(p).ok()) {
        Some(found) if found == exe_real => "twinsan".to_string(),
        _ => exe_real.display().to_string(),
    }
}

/// A regular file with an execute bit, as a shell's PATH search wants it.
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Writes `bytes` to stdout; a closed pipe (`| head`) is not an error.
fn print(bytes: &[u8]) -> anyhow::Result<()> {
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.context("writing to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_and_an_absent_daemon_have_their_own_status() {
        let config = ConfigError::Parse {
            path: "/etc/twinsan/twinsan.toml".into(),
            message: "expected `=`".into(),
        };
        let wrapped = anyhow::Error::new(config).context("node node1");
        assert_eq!(ExitStatus::of(&wrapped), ExitStatus::BadConfig);

        let absent = ClientError::Connect {
            path: Path::new("/run/twinsan/node1.sock").into(),
            reason: std::io::ErrorKind::NotFound.into(),
        };
        assert_eq!(
            ExitStatus::of(&absent.into()),
            ExitStatus::DaemonUnreachable
        );

        // The daemon answered, or is there but will not talk to this user: not "start the daemon".
        let timeout = ClientError::Timeout {
            path: Path::new("/run/twinsan/node1.sock").into(),
        };
        assert_eq!(ExitStatus::of(&timeout.into()), ExitStatus::Failed);
        let other = anyhow::anyhow!("volume vol0 is not up");
        assert_eq!(ExitStatus::of(&other), ExitStatus::Failed);
    }

    #[test]
    fn usage_errors_exit_2_and_each_cause_is_said_once() {
        let usage = anyhow::Error::new(UsageError("--lun 1=a given twice".into())).context("serve");
        assert_eq!(ExitStatus::of(&usage), ExitStatus::Usage);

        #[derive(Debug, thiserror::Error)]
        #[error("backing store /x: {source}")]
        struct Backing {
            source: std::io::Error,
        }
        let missing = anyhow::Error::new(Backing {
            source: std::io::ErrorKind::NotFound.into(),
        });
        let shown = message(&missing.context("LUN 1"));
        assert_eq!(shown, "LUN 1: backing store /x: entity not found");
        assert_eq!(message(&anyhow::anyhow!("one")), "one");
    }

    #[test]
    fn the_help_lists_every_status_and_clap_uses_2_for_usage_errors() {
        let usage = <crate::Cli as clap::Parser>::try_parse_from(["twinsan", "--no-such-flag"]);
        assert_eq!(usage.map(|_| ()).map_err(|e| e.exit_code()), Err(2));
        assert!(AFTER_HELP.contains("\n  0  success\n"));
        assert!(AFTER_HELP.contains("\n  2  usage error"));
        for status in [
            ExitStatus::Failed,
            ExitStatus::Usage,
            ExitStatus::DaemonUnreachable,
            ExitStatus::BadConfig,
        ] {
            let line = format!("\n  {}  ", status as u8);
            assert!(AFTER_HELP.contains(&line), "{status:?} not in the help");
        }
    }

    #[test]
    fn printed_commands_name_this_program_unless_path_finds_it() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path();
        let (bin, other) = (dir.join("bin"), dir.join("other"));
        for d in [&bin, &other] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let exe = bin.join("twinsan");
        std::fs::write(&exe, b"").expect("write");
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let elsewhere = other.join("twinsan");
        std::fs::write(&elsewhere, b"").expect("write");
        std::fs::set_permissions(
            &elsewhere,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let full = std::fs::canonicalize(&exe)
            .expect("canonicalize")
            .display()
            .to_string();
        let path = |dirs: &[&Path]| std::env::join_paths(dirs).expect("join");

        assert_eq!(program_name_for(&exe, Some(&path(&[&bin]))), "twinsan");
        assert_eq!(
            program_name_for(&exe, Some(&path(&[&other, &bin]))),
            full,
            "another twinsan comes first"
        );
        assert_eq!(
            program_name_for(&exe, Some(&path(&[&other.join("none")]))),
            full
        );
        assert_eq!(program_name_for(&exe, None), full);
    }
}
