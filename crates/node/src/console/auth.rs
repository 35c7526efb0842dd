//! The console's login: the password hash of the config (argon2id, a PHC string), the sessions a login opens
//! and their CSRF tokens. No clock and no randomness of its own: the caller passes `now` and the random bytes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// How long a session lasts after its login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The session cookie's name.
pub const COOKIE: &str = "twinsan_session";

/// The most sessions kept at once; a login beyond it ends the oldest.
const MAX_SESSIONS: usize = 256;

/// The PHC string (argon2id, default parameters) of `password` with `salt` (16 random bytes from the caller).
pub fn hash_password(password: &str, salt: &[u8; 16]) -> Result<String, String> {
    let salt = SaltString::encode_b64(salt).map_err(|e| format!("salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing the password: {e}"))
}

/// Whether `phc` is a hash this console can check a password against; the reason if not.
pub fn check_hash(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc)
        .map_err(|e| format!("is not a PHC password hash ({e}): make one with `twinsan passwd`"))?;
    if !matches!(hash.algorithm.as_str(), "argon2id" | "argon2i" | "argon2d") {
        return Err(format!(
            "is a {} hash: the console checks argon2 hashes only; make one with `twinsan passwd`",
            hash.algorithm
        ));
    }
    argon2::Params::try_from(&hash)
        .map_err(|e| format!("has argon2 parameters the console cannot use ({e})"))?;
    if hash.hash.is_none() || hash.salt.is_none() {
        return Err("has no salt or no hash output: make one with `twinsan passwd`".into());
    }
    Ok(())
}

/// Whether `password` matches the PHC string `phc` (false for a hash that does not parse).
pub fn verify_password(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equality that takes the same time wherever the first difference is.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// One logged-in browser.
#[derive(Clone, Debug)]
struct Session {
    csrf: String,
    expires: Instant,
}

/// The open sessions, by cookie value (kept in memory: a restarted node forgets them).
#[derive(Default, Debug)]
pub struct Sessions {
    open: HashMap<String, Session>,
}

impl Sessions {
    /// Opens a session with cookie value `id` and CSRF token `csrf` (both random, from the caller).
    pub fn open(&mut self, id: String, csrf: String, now: Instant) {
        self.open.retain(|_, s| s.expires > now);
        if self.open.len() >= MAX_SESSIONS {
            if let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                self.open.remove(&oldest);
            }
        }
        self.open.insert(
            id,
            Session {
                csrf,
                expires: now + SESSION_LIFETIME,
            },
        );
    }

    /// The CSRF token of session `id` if it is open at `now`.
    pub fn csrf(&self, id: &str, now: Instant) -> Option<&str> {
        // The lookup is by hash of the whole id; a wrong id finds nothing.
        self.open
            .get(id)
            .filter(|s| s.expires > now)
            .map(|s| s.csrf.as_str())
    }

    /// Ends session `id`.
    pub fn close(&mut self, id: &str) {
        self.open.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_checks_its_password_and_no_other() {
        let phc = hash_password("correct horse", &[7; 16]).expect("hash");
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert_eq!(check_hash(&phc), Ok(()));
        assert!(verify_password(&phc, "correct horse"));
        assert!(!verify_password(&phc, "correct horsf"));
        assert!(!verify_password("not a hash", "correct horse"));
    }

    #[test]
    fn hashes_that_are_not_argon2_phc_strings_are_refused() {
        assert!(check_hash("secret").is_err());
        assert!(check_hash("").is_err());
        let err = check_hash("$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E")
            .expect_err("scrypt");
        assert!(err.contains("argon2"), "{err}");
    }

    #[test]
    fn sessions_expire_and_close() {
        let t0 = Instant::now();
        let mut s = Sessions::default();
        s.open("a".into(), "tok".into(), t0);
        assert_eq!(s.csrf("a", t0), Some("tok"));
        assert_eq!(s.csrf("b", t0), None);
        assert_eq!(s.csrf("a", t0 + SESSION_LIFETIME), None);
        s.close("a");
        assert_eq!(s.csrf("a", t0), None);
    }

    #[test]
    fn cookies_and_secrets() {
        assert_eq!(cookie("x=1; twinsan_session=ab; y=2", COOKIE), Some("ab"));
        assert_eq!(cookie("twinsan_session_x=ab", COOKIE), None);
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert_eq!(hex(&[0, 255, 16]), "00ff10");
    }
}
