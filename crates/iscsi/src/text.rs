//! Text segments: `key=value` pairs, each ended by a NUL byte (RFC 7143 section 6.1).

use thiserror::Error;

/// Longest key name (RFC 7143 section 6.1: at most 63 bytes).
pub const MAX_KEY_LEN: usize = 63;
/// Longest value accepted (the RFC allows 255 for most keys and 8192 for a few; CHAP binary values are long).
pub const MAX_VALUE_LEN: usize = 8192;
/// Most pairs accepted in one text exchange, so a peer cannot make us keep a huge list.
pub const MAX_PAIRS: usize = 256;

/// A text segment that cannot be parsed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TextError {
    /// A pair without `=`.
    #[error("pair without '=' at byte {0}")]
    MissingEquals(usize),
    /// A key that is empty, too long or not made of the allowed characters.
    #[error("invalid key name at byte {0}")]
    InvalidKey(usize),
    /// A value over the length limit or not UTF-8.
    #[error("invalid value for key {0}")]
    InvalidValue(String),
    /// More pairs than this target accepts.
    #[error("more than {MAX_PAIRS} key=value pairs")]
    TooManyPairs,
}

/// Ordered key=value pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextPairs(pub Vec<(String, String)>);

impl TextPairs {
    /// Parses a whole text segment. A last pair without its NUL is accepted (some initiators omit it).
    pub fn parse(data: &[u8]) -> Result<TextPairs, TextError> {
        let mut pairs = Vec::new();
        let mut at = 0;
        for chunk in data.split(|&b| b == 0) {
            let start = at;
            at += chunk.len() + 1;
            if chunk.is_empty() {
                // Padding NULs or the empty tail after the final NUL.
                continue;
            }
            if pairs.len() == MAX_PAIRS {
                return Err(TextError::TooManyPairs);
            }
            let eq = chunk
                .iter()
                .position(|&b| b == b'=')
                .ok_or(TextError::MissingEquals(start))?;
            let key = &chunk[..eq];
            if key.is_empty() || key.len() > MAX_KEY_LEN || !key.iter().all(|&c| is_key_char(c)) {
                return Err(TextError::InvalidKey(start));
            }
            let key = String::from_utf8_lossy(key).into_owned();
            let value = &chunk[eq + 1..];
            if value.len() > MAX_VALUE_LEN {
                return Err(TextError::InvalidValue(key));
            }
            let value = std::str::from_utf8(value)
                .map_err(|_| TextError::InvalidValue(key.clone()))?
                .to_owned();
            pairs.push((key, value));
        }
        Ok(TextPairs(pairs))
    }

    /// Renders the pairs, each followed by NUL.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }

    /// Appends a pair.
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.push((key.into(), value.into()));
    }

    /// The value of the first pair with this key.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// RFC 7143 section 6.1: key names use letters, digits, '.', '-', '+', '@', '_' (case-sensitive).
fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'@' | b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_login_keys() {
        let t = TextPairs::parse(b"InitiatorName=iqn.x\0SessionType=Normal\0\0\0").unwrap();
        assert_eq!(t.value("InitiatorName"), Some("iqn.x"));
        assert_eq!(t.value("SessionType"), Some("Normal"));
        assert_eq!(t.0.len(), 2);
        assert_eq!(TextPairs::parse(b"A=1\0B=2").unwrap().0.len(), 2);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(
            TextPairs::parse(b"novalue\0"),
            Err(TextError::MissingEquals(0))
        );
        assert_eq!(
            TextPairs::parse(b"A=1\0=x\0"),
            Err(TextError::InvalidKey(4))
        );
        assert!(TextPairs::parse(b"K=\xff\0").is_err());
    }

    fn key() -> impl Strategy<Value = String> {
        "[A-Za-z][A-Za-z0-9.+@_-]{0,62}"
    }
    fn value() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,40}"
    }

    proptest! {
        #[test]
        fn parse_of_encode_is_identity(pairs in proptest::collection::vec((key(), value()), 0..20)) {
            let t = TextPairs(pairs);
            prop_assert_eq!(TextPairs::parse(&t.encode()).unwrap(), t);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..500)) {
            let _ = TextPairs::parse(&bytes);
        }
    }
}
