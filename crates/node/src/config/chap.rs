//! CHAP of the cluster's targets: the `[[target]]` keys, checked with the rest of the file
//! ([`ClusterConfig::validate`]), and the secret files, read and checked once when `node run` starts
//! ([`ClusterConfig::load_chap`]) into the [`ChapPolicy`] each iSCSI server requires. Commands other than
//! `node run` never read the secret files.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use twinsan_iscsi::chap::Credentials;
use twinsan_iscsi::login::ChapPolicy;

use super::{entry_key, ClusterConfig, ConfigError, TargetSection};

/// The fewest bytes a CHAP secret may have (RFC 7143 section 12.1.3), as `twinsan serve` asks.
pub const MIN_CHAP_SECRET_LEN: usize = twinsan_iscsi::chap::MIN_SECRET_LEN;
/// The longest CHAP secret or user name: open-iscsi and libiscsi keep at most 255 bytes, so a longer secret
/// could never log in.
pub const MAX_CHAP_LEN: usize = 255;

/// The CHAP policy of every target that has one, from its secret files: what `node run` serves the targets with.
/// Only [`ClusterConfig::load_chap`] makes one. `Debug` shows the user names, never a secret.
#[derive(Clone, Debug)]
pub struct TargetChap {
    policies: BTreeMap<String, ChapPolicy>,
}

impl TargetChap {
    /// The policy of the target named `iqn`; `None`: it requires no authentication.
    pub fn policy(&self, iqn: &str) -> Option<&ChapPolicy> {
        self.policies.get(iqn)
    }
}

/// One direction of CHAP, by the keys that configure it.
#[derive(Clone, Copy)]
enum Direction {
    /// The initiator proves it knows the secret (`chap_*`).
    Initiator,
    /// Mutual CHAP: the target proves it knows its own secret (`mutual_chap_*`).
    Mutual,
}

impl Direction {
    /// The user name key.
    fn user(self) -> &'static str {
        match self {
            Direction::Initiator => "chap_user",
            Direction::Mutual => "mutual_chap_user",
        }
    }

    /// The secret file key.
    fn file(self) -> &'static str {
        match self {
            Direction::Initiator => "chap_secret_file",
            Direction::Mutual => "mutual_chap_secret_file",
        }
    }

    /// The user name and secret file of this direction in `t`.
    fn keys(self, t: &TargetSection) -> (Option<&str>, Option<&Path>) {
        match self {
            Direction::Initiator => (t.chap_user.as_deref(), t.chap_secret_file.as_deref()),
            Direction::Mutual => (
                t.mutual_chap_user.as_deref(),
                t.mutual_chap_secret_file.as_deref(),
            ),
        }
    }
}

impl ClusterConfig {
    /// The CHAP keys of target `t` (field path `key`): each user with a secret file and each file with a user,
    /// mutual CHAP only on top of CHAP, a file of its own for each direction; in manual mode, the same settings as
    /// the first target. The files themselves are read by [`ClusterConfig::load_chap`] only.
    pub(super) fn validate_chap(&self, t: &TargetSection, key: &str) -> Result<(), ConfigError> {
        let field = |f: &str| format!("{key}.{f}");
        for d in [Direction::Initiator, Direction::Mutual] {
            let (user, file) = d.keys(t);
            if let Some(why) = user.and_then(chap_user_problem) {
                return Err(self.invalid(field(d.user()), why));
            }
            if file.is_some_and(|f| f.as_os_str().is_empty()) {
                return Err(self.invalid(
                    field(d.file()),
                    "is empty: give the path of the file that holds the secret",
                ));
            }
            match (user, file) {
                (Some(_), None) => {
                    return Err(self.invalid(
                        field(d.file()),
                        format!(
                            "is missing: {} needs the file that holds its secret; give {} = \"PATH\", a file \
                             readable by root only (chmod 600) with a secret of at least {MIN_CHAP_SECRET_LEN} \
                             characters on one line",
                            d.user(),
                            d.file()
                        ),
                    ))
                }
                (None, Some(_)) => {
                    return Err(self.invalid(
                        field(d.user()),
                        format!(
                            "is missing: {} is given, but not the user name that goes with the secret; add {} = \
                             \"NAME\", or remove {}",
                            d.file(),
                            d.user(),
                            d.file()
                        ),
                    ))
                }
                _ => {}
            }
        }
        if t.mutual_chap_user.is_some() && t.chap_user.is_none() {
            return Err(self.invalid(
                field(Direction::Mutual.user()),
                "needs chap_user: in mutual CHAP the initiator authenticates first, then the target; add chap_user \
                 and chap_secret_file, or remove mutual_chap_user and mutual_chap_secret_file",
            ));
        }
        let resolved = |f: &Option<PathBuf>| f.as_deref().map(|p| self.resolve(p));
        if t.mutual_chap_secret_file.is_some()
            && resolved(&t.mutual_chap_secret_file) == resolved(&t.chap_secret_file)
        {
            return Err(self.invalid(
                field(Direction::Mutual.file()),
                "is also chap_secret_file: the target's secret must differ from the initiator's (RFC 7143 section \
                 12.1.3); give it a file of its own",
            ));
        }
        if let Some(first) = self.targets.first().filter(|_| self.cluster.manual) {
            let differs = [
                ("chap_user", t.chap_user != first.chap_user),
                (
                    "chap_secret_file",
                    resolved(&t.chap_secret_file) != resolved(&first.chap_secret_file),
                ),
                (
                    "mutual_chap_user",
                    t.mutual_chap_user != first.mutual_chap_user,
                ),
                (
                    "mutual_chap_secret_file",
                    resolved(&t.mutual_chap_secret_file)
                        != resolved(&first.mutual_chap_secret_file),
                ),
            ];
            if let Some((name, _)) = differs.into_iter().find(|&(_, differs)| differs) {
                return Err(self.invalid(
                    field(name),
                    format!(
                        "differs from target {}: in manual mode a node serves every target at its own address, \
                         where one discovery session lists them all under one CHAP policy; give every target the \
                         same chap_user, chap_secret_file, mutual_chap_user and mutual_chap_secret_file, or none",
                        first.iqn
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reads and checks the CHAP secret files of every target (`node run`, once, before it serves anything). A
    /// secret file must be a regular file that belongs to root (or to the user the daemon runs as) with no
    /// permission for group or others, and hold one line (a trailing newline is dropped) of
    /// [`MIN_CHAP_SECRET_LEN`]..=[`MAX_CHAP_LEN`] bytes; a target's mutual secret must differ from its
    /// initiator secret. Each refusal names the field and the file, never the secret.
    pub fn load_chap(&self) -> Result<TargetChap, ConfigError> {
        let mut policies = BTreeMap::new();
        for (i, t) in self.targets.iter().enumerate() {
            let key = entry_key("target", i, &t.iqn);
            let Some(initiator) = self.credentials(t, &key, Direction::Initiator)? else {
                continue;
            };
            let mutual = self.credentials(t, &key, Direction::Mutual)?;
            if mutual
                .as_ref()
                .is_some_and(|m| m.secret == initiator.secret)
            {
                return Err(self.invalid(
                    format!("{key}.{}", Direction::Mutual.file()),
                    "holds the same secret as chap_secret_file: the target's secret must differ from the \
                     initiator's (RFC 7143 section 12.1.3)",
                ));
            }
            policies.insert(t.iqn.clone(), ChapPolicy { initiator, mutual });
        }
        Ok(TargetChap { policies })
    }

    /// The user and secret of direction `d` of target `t` (field path `key`), if it is configured.
    fn credentials(
        &self,
        t: &TargetSection,
        key: &str,
        d: Direction,
    ) -> Result<Option<Credentials>, ConfigError> {
        let (Some(user), Some(file)) = d.keys(t) else {
            return Ok(None);
        };
        let secret = read_secret_file(&self.resolve(file))
            .map_err(|why| self.invalid(format!("{key}.{}", d.file()), why))?;
        Ok(Some(Credentials {
            user: user.to_owned(),
            secret,
        }))
    }
}

/// Why `user` cannot be a CHAP user name (CHAP_N, which goes into the login text), if it cannot.
fn chap_user_problem(user: &str) -> Option<String> {
    if user.is_empty() {
        return Some("is empty: give the CHAP user name".into());
    }
    if user.len() > MAX_CHAP_LEN {
        return Some(format!(
            "is {} bytes long: initiators take at most {MAX_CHAP_LEN}",
            user.len()
        ));
    }
    user.chars()
        .find(|c| c.is_control())
        .map(|c| format!("{user:?} has the control character {c:?}: give a printable user name"))
}

/// The secret in `path`, checked as [`ClusterConfig::load_chap`] says; the error says what is wrong with the file
/// and how to fix it, and never quotes the secret.
fn read_secret_file(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let cannot_read = |e: std::io::Error| {
        format!(
            "cannot read {shown}: {e}; put the secret on one line of that file, readable by root only (chmod 600 \
             {shown})"
        )
    };
    // Checked on the open file, so what is read is the file whose permissions were checked.
    let file = std::fs::File::open(path).map_err(cannot_read)?;
    let meta = file.metadata().map_err(cannot_read)?;
    if !meta.is_file() {
        return Err(format!(
            "{shown} is not a regular file: put the secret on one line of a file readable by root only"
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown} has mode {mode:04o}: users other than its owner can read or change the secret; run chmod 600 \
             {shown}"
        ));
    }
    // SAFETY: geteuid(2) takes no arguments and always succeeds.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(format!(
            "{shown} belongs to uid {}, who can read or change the secret: run chown root {shown}",
            meta.uid()
        ));
    }
    // A secret line, its newline and one byte more tell a too long secret; nothing beyond is read.
    let mut bytes = Vec::new();
    file.take(MAX_CHAP_LEN as u64 + 3)
        .read_to_end(&mut bytes)
        .map_err(cannot_read)?;
    let line = bytes
        .strip_suffix(b"\r\n")
        .or_else(|| bytes.strip_suffix(b"\n"))
        .unwrap_or(&bytes);
    if line.is_empty() {
        return Err(format!(
            "{shown} is empty: put a secret of at least {MIN_CHAP_SECRET_LEN} characters on its first line"
        ));
    }
    if line.contains(&b'\n') {
        return Err(format!(
            "{shown} holds more than one line: put the secret alone on the first line"
        ));
    }
    if line.len() > MAX_CHAP_LEN {
        return Err(format!(
            "the secret in {shown} is longer than {MAX_CHAP_LEN} bytes, the most initiators (open-iscsi, libiscsi) \
             keep: use a shorter one (`openssl rand -hex 16` makes a good one)"
        ));
    }
    if line.iter().any(|b| b.is_ascii_control()) {
        return Err(format!(
            "the secret in {shown} has a control character: initiators take the secret as text; use printable \
             characters"
        ));
    }
    if line.len() < MIN_CHAP_SECRET_LEN {
        return Err(format!(
            "the secret in {shown} is {} bytes long: CHAP needs at least {MIN_CHAP_SECRET_LEN} (RFC 7143 section \
             12.1.3; `openssl rand -hex 16` makes a good one)",
            line.len()
        ));
    }
    Ok(line.to_vec())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::super::tests::temp_dir;
    use super::*;

    const INITIATOR_SECRET: &str = "initiator-secret-1";
    const TARGET_SECRET: &str = "target-secret-22";

    /// A managed cluster whose one target has CHAP and mutual CHAP, with `extra` appended to its `[[target]]`.
    fn config_text(extra: &str) -> String {
        format!(
            r#"
[cluster]
name = "test"
secret = "5f3c9a1e7b2d4068a9e1c3b5d7f90246"

[[node]]
name = "node1"
id = 1
address = "127.0.0.11"

[[node]]
name = "node2"
id = 2
address = "127.0.0.12"

[[volume]]
name = "vol0"
uuid = "0123456789abcdef0123456789abcdef"
port = 7789
disk = {{ node1 = {{ path = "node1/vol0.img" }}, node2 = {{ path = "node2/vol0.img" }} }}

[[target]]
iqn = "iqn.2025-08.local.twinsan:vol0"
vip = "127.0.0.10"
lun = [ {{ lun = 1, volume = "vol0" }} ]
{extra}
"#
        )
    }

    const BOTH: &str = r#"chap_user = "alice"
chap_secret_file = "chap.secret"
mutual_chap_user = "target0"
mutual_chap_secret_file = "mutual.secret""#;

    fn parse_in(dir: &Path, text: &str) -> Result<ClusterConfig, ConfigError> {
        ClusterConfig::parse(text, &dir.join("twinsan.toml"), dir)
    }

    /// Writes `text` to `dir/name` with permissions `mode`.
    fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write secret file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    /// Asserts `result` is the refusal of `field` with a message containing every one of `parts`.
    #[track_caller]
    fn assert_refused<T: std::fmt::Debug>(
        result: Result<T, ConfigError>,
        field: &str,
        parts: &[&str],
    ) {
        match result {
            Err(error @ ConfigError::Invalid { .. }) => {
                let shown = error.to_string();
                let ConfigError::Invalid { field: got, .. } = &error else {
                    unreachable!()
                };
                assert_eq!(got, field, "{shown}");
                for part in parts {
                    assert!(shown.contains(part), "{shown}\n  should contain {part:?}");
                }
                for secret in [INITIATOR_SECRET, TARGET_SECRET] {
                    assert!(
                        !shown.contains(secret),
                        "the message shows a secret: {shown}"
                    );
                }
            }
            other => panic!("expected {field} to be refused, got {other:?}"),
        }
    }

    #[test]
    fn the_keys_are_checked_with_the_config_without_reading_the_files() {
        let dir = temp_dir("chap-keys");
        const T: &str = "target[iqn.2025-08.local.twinsan:vol0]";
        // No file exists yet: the config itself is valid, as `status` or the witness read it.
        let config = parse_in(dir.path(), &config_text(BOTH)).expect("valid");
        assert_eq!(config.targets[0].chap_user.as_deref(), Some("alice"));
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "chap_user = \"alice\"",
                &format!("{T}.chap_secret_file"),
                &["is missing", "chap_user needs the file", "chmod 600", "at least 12"],
            ),
            (
                "chap_secret_file = \"chap.secret\"",
                &format!("{T}.chap_user"),
                &["is missing", "add chap_user = \"NAME\""],
            ),
            (
                "mutual_chap_user = \"target0\"\nmutual_chap_secret_file = \"mutual.secret\"",
                &format!("{T}.mutual_chap_user"),
                &["needs chap_user", "the initiator authenticates first"],
            ),
            (
                "chap_user = \"alice\"\nchap_secret_file = \"chap.secret\"\nmutual_chap_user = \"target0\"",
                &format!("{T}.mutual_chap_secret_file"),
                &["is missing", "mutual_chap_user needs the file"],
            ),
            (
                "chap_user = \"alice\"\nchap_secret_file = \"chap.secret\"\nmutual_chap_secret_file = \"m\"",
                &format!("{T}.mutual_chap_user"),
                &["is missing"],
            ),
            (
                "chap_user = \"\"\nchap_secret_file = \"chap.secret\"",
                &format!("{T}.chap_user"),
                &["is empty"],
            ),
            (
                "chap_user = \"al\\tice\"\nchap_secret_file = \"chap.secret\"",
                &format!("{T}.chap_user"),
                &["control character"],
            ),
            (
                "chap_user = \"alice\"\nchap_secret_file = \"\"",
                &format!("{T}.chap_secret_file"),
                &["is empty"],
            ),
            (
                "chap_user = \"alice\"\nchap_secret_file = \"chap.secret\"\nmutual_chap_user = \"t\"\n\
                 mutual_chap_secret_file = \"./chap.secret\"",
                &format!("{T}.mutual_chap_secret_file"),
                &["is also chap_secret_file", "RFC 7143"],
            ),
        ];
        for (extra, field, parts) in cases {
            assert_refused(parse_in(dir.path(), &config_text(extra)), field, parts);
        }
        // A misspelt key is refused by the parser, as any other.
        let error =
            parse_in(dir.path(), &config_text("chap_secret = \"x\"")).expect_err("unknown key");
        assert!(error.to_string().contains("chap_secret"), "{error}");
    }

    #[test]
    fn manual_mode_gives_every_target_the_same_chap() {
        let dir = temp_dir("chap-manual");
        let two = |first: &str, second: &str| {
            config_text(first).replacen("name = \"test\"", "name = \"test\"\nmanual = true", 1)
                + &format!(
                    "\n[[volume]]\nname = \"vol1\"\nuuid = \"fedcba9876543210fedcba9876543210\"\nport = 7790\n\
                     disk = {{ node1 = {{ path = \"a\" }}, node2 = {{ path = \"b\" }} }}\n\n[[target]]\n\
                     iqn = \"iqn.2025-08.local.twinsan:vol1\"\nvip = \"127.0.0.20\"\n\
                     lun = [ {{ lun = 1, volume = \"vol1\" }} ]\n{second}\n"
                )
        };
        parse_in(dir.path(), &two(BOTH, BOTH)).expect("the same CHAP on both");
        parse_in(dir.path(), &two("", "")).expect("no CHAP on either");
        assert_refused(
            parse_in(dir.path(), &two(BOTH, "")),
            "target[iqn.2025-08.local.twinsan:vol1].chap_user",
            &[
                "differs from target iqn.2025-08.local.twinsan:vol0",
                "manual mode",
                "discovery",
            ],
        );
        assert_refused(
            parse_in(
                dir.path(),
                &two(BOTH, &BOTH.replace("mutual.secret", "other.secret")),
            ),
            "target[iqn.2025-08.local.twinsan:vol1].mutual_chap_secret_file",
            &["differs from target"],
        );
        // Managed mode serves each target on its own VIP, with its own discovery: any mix is fine.
        let managed = two(BOTH, "").replacen("manual = true", "", 1);
        parse_in(dir.path(), &managed).expect("managed");
    }

    #[test]
    fn load_reads_the_secrets_dropping_one_newline() {
        let dir = temp_dir("chap-load");
        let config = parse_in(dir.path(), &config_text(BOTH)).expect("valid");
        secret_file(
            dir.path(),
            "chap.secret",
            &format!("{INITIATOR_SECRET}\n"),
            0o600,
        );
        secret_file(dir.path(), "mutual.secret", TARGET_SECRET, 0o400);
        let chap = config.load_chap().expect("loads");
        let policy = chap
            .policy("iqn.2025-08.local.twinsan:vol0")
            .expect("a policy");
        assert_eq!(policy.initiator.user, "alice");
        assert_eq!(policy.initiator.secret, INITIATOR_SECRET.as_bytes());
        let mutual = policy.mutual.as_ref().expect("mutual");
        assert_eq!(mutual.user, "target0");
        assert_eq!(mutual.secret, TARGET_SECRET.as_bytes());
        assert_eq!(chap.policy("iqn.2025-08.local.twinsan:other"), None);
        let shown = format!("{chap:?}");
        assert!(
            shown.contains("alice") && shown.contains("target0"),
            "{shown}"
        );
        assert!(
            !shown.contains(INITIATOR_SECRET) && !shown.contains(TARGET_SECRET),
            "Debug shows a secret: {shown}"
        );
        // The server a target gets requires its CHAP, in discovery too.
        let server = config.targets[0].server_config(BTreeMap::new(), &chap);
        assert_eq!(server.targets[0].chap.as_ref(), Some(policy));
        assert_eq!(server.discovery_chap.as_ref(), Some(policy));
        // "\r\n" is one newline too; one-way CHAP has no mutual policy.
        secret_file(
            dir.path(),
            "chap.secret",
            &format!("{INITIATOR_SECRET}\r\n"),
            0o600,
        );
        let one_way = parse_in(
            dir.path(),
            &config_text(&BOTH[..BOTH.find("mutual").unwrap_or(0)]),
        )
        .expect("valid");
        let chap = one_way.load_chap().expect("loads");
        let policy = chap
            .policy("iqn.2025-08.local.twinsan:vol0")
            .expect("a policy");
        assert_eq!(policy.initiator.secret, INITIATOR_SECRET.as_bytes());
        assert_eq!(policy.mutual, None);
        // Without CHAP keys nothing is read and nothing is required.
        let none = parse_in(dir.path(), &config_text("")).expect("valid");
        let chap = none.load_chap().expect("loads");
        assert_eq!(chap.policy("iqn.2025-08.local.twinsan:vol0"), None);
        let server = none.targets[0].server_config(BTreeMap::new(), &chap);
        assert!(server.targets[0].chap.is_none() && server.discovery_chap.is_none());
    }

    #[test]
    fn load_refuses_unsafe_or_weak_secret_files() {
        let dir = temp_dir("chap-refusals");
        let config = parse_in(dir.path(), &config_text(BOTH)).expect("valid");
        const FIELD: &str = "target[iqn.2025-08.local.twinsan:vol0].chap_secret_file";
        secret_file(dir.path(), "mutual.secret", TARGET_SECRET, 0o600);

        // Missing.
        let chap_file = dir.path().join("chap.secret");
        let shown = chap_file.display().to_string();
        assert_refused(
            config.load_chap(),
            FIELD,
            &[
                "/twinsan.toml: ",
                &format!("cannot read {shown}"),
                "chmod 600",
            ],
        );
        // Readable or writable by the group or by everyone.
        for mode in [0o644, 0o640, 0o604, 0o620, 0o660] {
            secret_file(dir.path(), "chap.secret", INITIATOR_SECRET, mode);
            assert_refused(
                config.load_chap(),
                FIELD,
                &[
                    &format!("{shown} has mode {mode:04o}"),
                    &format!("chmod 600 {shown}"),
                ],
            );
        }
        // Weak or malformed secrets; the message names the file and never the secret.
        for (text, part) in [
            ("short-11ch\n", "is 10 bytes long: CHAP needs at least 12"),
            ("short-11chr", "is 11 bytes long"),
            ("", "is empty"),
            ("\n", "is empty"),
            ("initiator-secret-1\n\n", "more than one line"),
            ("initiator-secret-1\nsecond line\n", "more than one line"),
            ("initiator\tsecret-1", "control character"),
        ] {
            secret_file(dir.path(), "chap.secret", text, 0o600);
            assert_refused(config.load_chap(), FIELD, &[&shown, part]);
        }
        secret_file(
            dir.path(),
            "chap.secret",
            &"x".repeat(MAX_CHAP_LEN + 1),
            0o600,
        );
        assert_refused(config.load_chap(), FIELD, &["longer than 255 bytes"]);
        secret_file(dir.path(), "chap.secret", &"x".repeat(MAX_CHAP_LEN), 0o600);
        config.load_chap().expect("255 bytes are fine");
        // Not a regular file.
        std::fs::remove_file(&chap_file).expect("remove");
        std::fs::create_dir(&chap_file).expect("mkdir");
        assert_refused(config.load_chap(), FIELD, &["is not a regular file"]);
        std::fs::remove_dir(&chap_file).expect("rmdir");

        // The mutual file is checked the same way, and may not repeat the initiator's secret.
        secret_file(dir.path(), "chap.secret", INITIATOR_SECRET, 0o600);
        const MUTUAL_FIELD: &str = "target[iqn.2025-08.local.twinsan:vol0].mutual_chap_secret_file";
        secret_file(dir.path(), "mutual.secret", TARGET_SECRET, 0o644);
        assert_refused(config.load_chap(), MUTUAL_FIELD, &["has mode 0644"]);
        secret_file(dir.path(), "mutual.secret", INITIATOR_SECRET, 0o600);
        assert_refused(
            config.load_chap(),
            MUTUAL_FIELD,
            &["holds the same secret as chap_secret_file", "RFC 7143"],
        );

        // A file of another user, even with mode 0600: that user can read the secret. Only root can hand a
        // file to another user, so only then is this checked.
        // SAFETY: geteuid(2) takes no arguments and always succeeds.
        if unsafe { libc::geteuid() } == 0 {
            secret_file(dir.path(), "mutual.secret", TARGET_SECRET, 0o600);
            std::os::unix::fs::chown(&chap_file, Some(65534), None).expect("chown");
            assert_refused(
                config.load_chap(),
                FIELD,
                &["belongs to uid 65534", &format!("chown root {shown}")],
            );
        }
    }
}
