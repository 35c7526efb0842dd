//! CHAP with MD5 (CHAP_A=5), the one algorithm every iSCSI initiator supports (RFC 7143 section 12.1.3).
//!
//! The caller supplies the random identifier and challenge, so this module has no randomness of its own.

use md5::{Digest, Md5};

/// CHAP algorithm number of MD5.
pub const CHAP_MD5: u8 = 5;
/// Length of the challenges this target sends.
pub const CHALLENGE_LEN: usize = 16;
/// The longest challenge accepted from an initiator (mutual CHAP).
pub const MAX_CHALLENGE_LEN: usize = 1024;

/// The fewest bytes a CHAP secret may have: shorter ones fall to offline guessing (RFC 7143 section 12.1.3).
pub const MIN_SECRET_LEN: usize = 12;

/// A user name and secret. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// The CHAP response for an identifier, secret and challenge: MD5(id || secret || challenge).
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decodes a CHAP binary value: `0x` hex or `0b` base64 (RFC 7143 section 6.1 binary-value).
pub fn decode_binary(s: &str) -> Option<Vec<u8>> {
    let (prefix, body) = s.split_at_checked(2)?;
    match prefix {
        "0x" | "0X" => {
            let body = body.as_bytes();
            // An odd number of digits has an implied leading zero.
            let mut out = Vec::with_capacity(body.len().div_ceil(2));
            let mut digits = body.iter().map(|&c| (c as char).to_digit(16));
            if body.len() % 2 == 1 {
                out.push(digits.next()?? as u8);
            }
            while let Some(hi) = digits.next() {
                let lo = digits.next()??;
                out.push((hi? * 16 + lo) as u8);
            }
            Some(out)
        }
        "0b" | "0B" => decode_base64(body),
        _ => None,
    }
}

/// Encodes a binary value as `0x` hex.
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_values() {
        assert_eq!(decode_binary("0x0a0B"), Some(vec![10, 11]));
        assert_eq!(decode_binary("0xabc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0bAQID"), Some(vec![1, 2, 3]));
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(decode_binary("12"), None);
        assert_eq!(decode_binary("0"), None);
        assert_eq!(encode_hex(&[1, 0xff]), "0x01ff");
    }

    #[test]
    fn md5_response_matches_rfc1321_vector() {
        // MD5("abc") = 900150983cd24fb0d6963f7d28e17f72; id 'a', secret "b", challenge "c".
        assert_eq!(
            encode_hex(&response(b'a', b"b", b"c")),
            "0x900150983cd24fb0d6963f7d28e17f72"
        );
    }

    #[test]
    fn compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
