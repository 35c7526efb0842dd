//! `twinsan ocf install`: puts the OCF resource agents for Pacemaker (`ocf:twinsan:volume`, `ocf:twinsan:target`,
//! whose sources are contrib/ocf/) where Pacemaker looks for them.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The agents, embedded in the binary: (file name, script).
pub const AGENTS: [(&str, &str); 2] = [
    ("volume", include_str!("../../../contrib/ocf/volume")),
    ("target", include_str!("../../../contrib/ocf/target")),
];

/// `twinsan ocf ...`.
#[derive(clap::Subcommand, Debug)]
pub enum OcfCommand {
    /// Install the OCF resource agents ocf:twinsan:volume and ocf:twinsan:target into
    /// PREFIX/lib/ocf/resource.d/twinsan/ (the .deb installs them too).
    #[command(after_help = INSTALL_EXAMPLES)]
    Install {
        /// Where OCF_ROOT's parent is: the agents go to PREFIX/lib/ocf/resource.d/twinsan/.
        #[arg(long, value_name = "PREFIX", default_value = "/usr")]
        prefix: PathBuf,
    },
}

const INSTALL_EXAMPLES: &str = "\
Examples:
  twinsan ocf install
      /usr/lib/ocf/resource.d/twinsan/volume and target; then `pcs resource describe ocf:twinsan:volume`
  twinsan ocf install --prefix /tmp/ocf
      /tmp/ocf/lib/ocf/resource.d/twinsan/ (run them with OCF_ROOT=/usr/lib/ocf for the shell functions)";

pub fn run(cmd: OcfCommand) -> anyhow::Result<()> {
    match cmd {
        OcfCommand::Install { prefix } => {
            let dir = install(&prefix)?;
            for (name, _) in AGENTS {
                println!("{}", dir.join(name).display());
            }
            if !Path::new("/usr/lib/ocf/lib/heartbeat/ocf-shellfuncs").is_file() {
                eprintln!(
                    "twinsan: note: /usr/lib/ocf/lib/heartbeat/ocf-shellfuncs is missing: the agents need the OCF \
                     shell functions of resource-agents (apt-get install resource-agents)"
                );
            }
            Ok(())
        }
    }
}

/// Writes the agents into `prefix`/lib/ocf/resource.d/twinsan/, mode 755; returns that folder.
pub fn install(prefix: &Path) -> anyhow::Result<PathBuf> {
    let dir = prefix.join("lib/ocf/resource.d/twinsan");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, script) in AGENTS {
        let path = dir.join(name);
        // A new file beside it, then renamed over: a running agent never sees half a script.
        let tmp = dir.join(format!(".{name}.new"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o755)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(script.as_bytes())
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod 755 {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_writes_both_agents_executable() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("ocf");
        let agents = install(&dir).expect("install");
        for (name, script) in AGENTS {
            let path = agents.join(name);
            assert_eq!(std::fs::read_to_string(&path).expect("read"), script);
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o755, "{}", path.display());
            assert!(script.starts_with("#!/bin/sh\n"), "{name}");
        }
        // Again over the installed ones.
        install(&dir).expect("install twice");
    }
}
