//! Addresses as admins write them, one syntax for every `--listen`: `ADDR:PORT`, `[V6]:PORT`, or an address
//! alone, which takes the command's default port (3260 for iSCSI portals, 5406 for the witness, 9942 for HTTP).

use std::net::{IpAddr, SocketAddr};

/// The IANA port of iSCSI, for a portal given without one.
pub const ISCSI_PORT: u16 = 3260;

/// Parses `text` as `ADDR:PORT`, `[V6]:PORT`, `ADDR` or `[V6]`; an address alone gets `default_port`.
pub fn parse_socket_addr(text: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port))
        .map_err(|_| format!("{text:?} is not an IP address, with or without :PORT"))
}

/// [`parse_socket_addr`] for an iSCSI portal (default port 3260), as a clap value parser.
pub fn iscsi_portal(text: &str) -> Result<SocketAddr, String> {
    parse_socket_addr(text, ISCSI_PORT)
}

/// [`parse_socket_addr`] for an HTTP endpoint (default port 9942), as a clap value parser.
pub fn http_endpoint(text: &str) -> Result<SocketAddr, String> {
    parse_socket_addr(text, twinsan_node::config::DEFAULT_HTTP_PORT)
}

#[cfg(test)]
mod tests {
    use super::{iscsi_portal, parse_socket_addr};

    #[test]
    fn an_address_with_or_without_a_port() {
        let ok = |t: &str| parse_socket_addr(t, 5406).map(|a| a.to_string());
        assert_eq!(ok("127.0.0.13"), Ok("127.0.0.13:5406".into()));
        assert_eq!(ok("127.0.0.13:7000"), Ok("127.0.0.13:7000".into()));
        assert_eq!(ok("::1"), Ok("[::1]:5406".into()));
        assert_eq!(ok("[::1]"), Ok("[::1]:5406".into()));
        assert_eq!(ok("[::1]:7000"), Ok("[::1]:7000".into()));
        assert!(parse_socket_addr("witness.example:5406", 5406).is_err());
        assert!(parse_socket_addr("127.0.0.13:", 5406).is_err());
        assert_eq!(
            iscsi_portal("127.0.0.1").map(|a| a.to_string()),
            Ok("127.0.0.1:3260".into())
        );
    }
}
