//! `twinsan passwd`: the web console's password, as the config line that holds its hash.

use std::io::{BufRead, Write};

use anyhow::{bail, Context};
use twinsan_node::console::auth;

/// `twinsan passwd --help`'s examples (and the man page's).
pub const EXAMPLES: &str = "\
Examples:
  twinsan passwd
      asks twice on the terminal; put the printed line into [cluster] on both nodes and restart them
  printf '%s\\n' \"$PASSWORD\" | twinsan passwd --stdin
      for scripts: the first line of standard input";

/// The shortest password taken.
const MIN_PASSWORD_LEN: usize = 8;

/// `twinsan passwd`.
#[derive(clap::Args, Debug)]
pub struct PasswdArgs {
    /// Read the password from the first line of standard input (no prompt, no confirmation).
    #[arg(long)]
    pub stdin: bool,
}

/// Reads a password and prints `console_password_hash = "<PHC string>"`.
pub fn run(args: PasswdArgs) -> anyhow::Result<()> {
    let password = if args.stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        let first = ask("console password: ")?;
        let second = ask("again: ")?;
        if first != second {
            bail!("the two passwords differ: nothing was printed");
        }
        first
    };
    println!("{}", config_line(&password)?);
    Ok(())
}

/// `console_password_hash = "..."` for `password`, with a fresh random salt.
pub fn config_line(password: &str) -> anyhow::Result<String> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        bail!("the password is shorter than {MIN_PASSWORD_LEN} characters");
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)
        .map_err(|e| anyhow::anyhow!("cannot get random bytes from the system: {e}"))?;
    let hash = auth::hash_password(password, &salt).map_err(anyhow::Error::msg)?;
    Ok(format!("console_password_hash = \"{hash}\""))
}

/// A line read from the terminal with echo off.
fn ask(prompt: &str) -> anyhow::Result<String> {
    use std::os::fd::AsRawFd;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask on (/dev/tty): use --stdin")?;
    let fd = tty.as_raw_fd();
    // SAFETY: tcgetattr fills a termios struct on this stack frame for a descriptor we hold open.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        bail!("/dev/tty is not a terminal: use --stdin");
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: tcsetattr reads the termios struct above for the descriptor we hold open.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    let mut writer = &tty;
    let result = writer
        .write_all(prompt.as_bytes())
        .and_then(|()| writer.flush())
        .and_then(|()| {
            let mut line = String::new();
            std::io::BufReader::new(&tty).read_line(&mut line)?;
            Ok(line)
        });
    // SAFETY: restores the settings read above, on the same descriptor.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    let line = result.context("reading the password from the terminal")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_holds_a_hash_that_checks_the_password() {
        let line = config_line("a long password").expect("line");
        let hash = line
            .strip_prefix("console_password_hash = \"")
            .and_then(|l| l.strip_suffix('"'))
            .expect("the line's shape");
        assert_eq!(auth::check_hash(hash), Ok(()));
        assert!(auth::verify_password(hash, "a long password"));
        assert!(config_line("short").is_err());
    }
}
