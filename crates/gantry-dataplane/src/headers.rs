//! Header handling on the way upstream and back: hop-by-hop removal (RFC 9110 §7.6.1),
//! `X-Forwarded-*` and `Forwarded` (RFC 7239), and request ids.
//!
//! Runs per request: no allocation unless a header is actually added.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderName, HeaderValue, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::HeaderMap;

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers: the fixed list plus any named in `Connection`.
/// `TE: trailers` survives, since gRPC needs it end to end; `Upgrade` survives when
/// `keep_upgrade` (a WebSocket handshake being passed through).
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: one pass over the names (cheap comparisons of known names)
    // spares the seven hashed removals below.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // `Connection` may come as several field lines (RFC 9110 §5.3); every one names headers.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|listed| listed.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(keep_upgrade && *name == UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(CONNECTION);
        headers.remove(UPGRADE);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(TRANSFER_ENCODING);
    headers.remove(TRAILER);
    let te_is_trailers = headers.get(TE).is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_is_trailers {
        headers.remove(TE);
    }
}

/// True for the headers that only concern one hop (RFC 9110 §7.6.1), `Connection` included.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TE
        || name == TRAILER
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// The parts of the forwarding headers that depend only on the client connection, made once
/// per connection rather than once per request.
#[derive(Debug)]
pub struct ClientForwarding {
    /// The client IP as an `X-Forwarded-For` element.
    ip: HeaderValue,
    /// `for=<node>;proto=<scheme>`, the start of this hop's `Forwarded` element (RFC 7239).
    forwarded_element: String,
    /// `http` or `https`.
    proto: HeaderValue,
}

impl ClientForwarding {
    /// The forwarding facts of a connection from `client`, over TLS or not.
    pub fn new(client: SocketAddr, is_tls: bool) -> Self {
        let ip = client.ip();
        let proto = if is_tls { "https" } else { "http" };
        let node = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            // RFC 7239 §6: IPv6 nodes are bracketed and quoted.
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        Self {
            ip: HeaderValue::try_from(ip.to_string()).expect("an IP address is a valid header value"),
            forwarded_element: format!("for={node};proto={proto}"),
            proto: HeaderValue::from_static(proto),
        }
    }
}

/// Adds the proxy headers that tell the upstream who the client is:
/// appends to `X-Forwarded-For` and `Forwarded`, sets `X-Forwarded-Proto`, and sets
/// `X-Forwarded-Host` unless an earlier proxy did.
pub fn add_forwarded(headers: &mut HeaderMap, client: &ClientForwarding, host: Option<&str>) {
    let appended = headers.get(&X_FORWARDED_FOR).and_then(|value| value.to_str().ok()).and_then(|existing| {
        let mut joined = String::with_capacity(existing.len() + 2 + client.ip.len());
        joined.push_str(existing);
        joined.push_str(", ");
        joined.push_str(client.ip.to_str().ok()?);
        HeaderValue::try_from(joined).ok()
    });
    headers.insert(&X_FORWARDED_FOR, appended.unwrap_or_else(|| client.ip.clone()));
    headers.insert(&X_FORWARDED_PROTO, client.proto.clone());
    if let Some(host) = host {
        if !headers.contains_key(&X_FORWARDED_HOST) {
            if let Ok(value) = HeaderValue::try_from(host) {
                headers.insert(&X_FORWARDED_HOST, value);
            }
        }
    }
    let existing = headers.get(&FORWARDED).and_then(|value| value.to_str().ok());
    let mut combined = String::with_capacity(
        existing.map_or(0, |e| e.len() + 2) + client.forwarded_element.len() + host.map_or(0, |h| h.len() + 8),
    );
    if let Some(existing) = existing {
        combined.push_str(existing);
        combined.push_str(", ");
    }
    combined.push_str(&client.forwarded_element);
    if let Some(host) = host {
        combined.push_str(";host=\"");
        combined.push_str(host);
        combined.push('"');
    }
    if let Ok(value) = HeaderValue::try_from(combined) {
        headers.insert(&FORWARDED, value);
    }
}

/// The request's id: the client's `X-Request-Id` when it is a sane token, else a new one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(given) = headers.get(&X_REQUEST_ID) {
        let bytes = given.as_bytes();
        if !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic()) {
            return given.clone();
        }
    }
    new_request_id()
}

/// A new random 128-bit request id in hex.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let random = fastrand::u128(..);
    for (position, byte) in id.iter_mut().enumerate() {
        *byte = HEX[((random >> (position * 4)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_hop_by_hop_headers_and_those_named_in_connection() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(&KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        headers.insert(TE, HeaderValue::from_static("gzip"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn removes_headers_named_in_every_connection_line() {
        let mut headers = HeaderMap::new();
        headers.append(CONNECTION, HeaderValue::from_static("x-first"));
        headers.append(CONNECTION, HeaderValue::from_static("x-second, x-third"));
        for name in ["x-first", "x-second", "x-third", "x-kept"] {
            headers.insert(name, HeaderValue::from_static("1"));
        }
        remove_hop_by_hop(&mut headers, false);
        assert_eq!(headers.keys().collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn keeps_te_trailers_for_grpc() {
        let mut headers = HeaderMap::new();
        headers.insert(TE, HeaderValue::from_static("trailers"));
        remove_hop_by_hop(&mut headers, false);
        assert_eq!(headers[TE], "trailers");
    }

    #[test]
    fn appends_the_client_to_forwarding_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        let client = ClientForwarding::new("[2001:db8::1]:5000".parse().expect("addr"), true);
        add_forwarded(&mut headers, &client, Some("api.example.com"));
        assert_eq!(headers[&X_FORWARDED_FOR], "203.0.113.9, 2001:db8::1");
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");
        assert_eq!(headers[&X_FORWARDED_HOST], "api.example.com");
        assert_eq!(headers[&FORWARDED], "for=\"[2001:db8::1]\";proto=https;host=\"api.example.com\"");
    }

    #[test]
    fn keeps_a_sane_client_request_id_and_replaces_a_bad_one() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        let fresh = request_id(&headers);
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, new_request_id());
    }
}
