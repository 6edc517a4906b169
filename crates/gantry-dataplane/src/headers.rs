//! Header handling on the way upstream and back: hop-by-hop removal (RFC 9110 §7.6.1),
//! `X-Forwarded-*` and `Forwarded` (RFC 7239), and request ids.
//!
//! Runs per request: no allocation unless a header is actually added.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

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
    // One pass over the names (cheap comparisons of known names) tells which of the fixed list
    // are present: most messages carry none, and most of the rest only `Connection`, so only
    // those present are removed, sparing a hashed lookup for each of the others.
    let present = headers.keys().fold(0u8, |present, name| present | hop_by_hop_bit(name));
    if present == 0 {
        return;
    }
    if present & HOP_CONNECTION != 0 {
        // `close` and `keep-alive` are what nearly every `Connection` header lists: neither
        // needs a `HeaderName` made for it (an allocation, `keep-alive` not being a standard
        // name). `keep-alive` is in the fixed list; a header named `close` is looked up by text.
        let mut close_listed = false;
        // `Connection` may come as several field lines (RFC 9110 §5.3); every one names headers.
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|listed| listed.split(','))
            .map(str::trim)
            .filter(|token| {
                if token.eq_ignore_ascii_case("close") {
                    close_listed = true;
                    return false;
                }
                !token.eq_ignore_ascii_case(KEEP_ALIVE.as_str())
            })
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .filter(|name| !(keep_upgrade && *name == UPGRADE))
            .collect();
        for name in named {
            headers.remove(name);
        }
        if close_listed {
            headers.remove("close");
        }
    }
    if !keep_upgrade {
        if present & HOP_CONNECTION != 0 {
            headers.remove(CONNECTION);
        }
        if present & HOP_UPGRADE != 0 {
            headers.remove(UPGRADE);
        }
    }
    if present & HOP_KEEP_ALIVE != 0 {
        headers.remove(&KEEP_ALIVE);
    }
    if present & HOP_PROXY_CONNECTION != 0 {
        headers.remove(&PROXY_CONNECTION);
    }
    if present & HOP_TRANSFER_ENCODING != 0 {
        headers.remove(TRANSFER_ENCODING);
    }
    if present & HOP_TRAILER != 0 {
        headers.remove(TRAILER);
    }
    if present & HOP_TE != 0 {
        let te_is_trailers = headers.get(TE).is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
        if !te_is_trailers {
            headers.remove(TE);
        }
    }
}

const HOP_CONNECTION: u8 = 1;
const HOP_TE: u8 = 1 << 1;
const HOP_TRAILER: u8 = 1 << 2;
const HOP_TRANSFER_ENCODING: u8 = 1 << 3;
const HOP_UPGRADE: u8 = 1 << 4;
const HOP_KEEP_ALIVE: u8 = 1 << 5;
const HOP_PROXY_CONNECTION: u8 = 1 << 6;

/// The bit of a header that only concerns one hop (RFC 9110 §7.6.1), `Connection` included;
/// 0 for an end-to-end header.
fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    if name == CONNECTION {
        HOP_CONNECTION
    } else if name == TE {
        HOP_TE
    } else if name == TRAILER {
        HOP_TRAILER
    } else if name == TRANSFER_ENCODING {
        HOP_TRANSFER_ENCODING
    } else if name == UPGRADE {
        HOP_UPGRADE
    } else if name == KEEP_ALIVE {
        HOP_KEEP_ALIVE
    } else if name == PROXY_CONNECTION {
        HOP_PROXY_CONNECTION
    } else {
        0
    }
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
    /// The last `Forwarded` value made for a request that brought none, with the host it
    /// names: a kept-alive connection names the same host in request after request, and a
    /// copy of the value is a reference count, not a string built and checked again.
    last_forwarded: Mutex<Option<(Option<String>, HeaderValue)>>,
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
            last_forwarded: Mutex::new(None),
        }
    }

    /// This hop's `Forwarded` element naming `host`, after the `existing` elements of earlier
    /// proxies if any.
    fn forwarded(&self, existing: Option<&str>, host: Option<&str>) -> Option<HeaderValue> {
        if existing.is_some() {
            return self.make_forwarded(existing, host);
        }
        // Another request of the connection (HTTP/2) holding it just makes its own.
        let Ok(mut last) = self.last_forwarded.try_lock() else {
            return self.make_forwarded(None, host);
        };
        if let Some((last_host, value)) = last.as_ref() {
            if last_host.as_deref() == host {
                return Some(value.clone());
            }
        }
        let value = self.make_forwarded(None, host)?;
        *last = Some((host.map(str::to_owned), value.clone()));
        Some(value)
    }

    fn make_forwarded(&self, existing: Option<&str>, host: Option<&str>) -> Option<HeaderValue> {
        let mut combined = String::with_capacity(
            existing.map_or(0, |e| e.len() + 2) + self.forwarded_element.len() + host.map_or(0, |h| h.len() + 8),
        );
        if let Some(existing) = existing {
            combined.push_str(existing);
            combined.push_str(", ");
        }
        combined.push_str(&self.forwarded_element);
        if let Some(host) = host {
            combined.push_str(";host=\"");
            combined.push_str(host);
            combined.push('"');
        }
        HeaderValue::try_from(combined).ok()
    }
}

/// Adds the proxy headers that tell the upstream who the client is:
/// appends to `X-Forwarded-For` and `Forwarded`, sets `X-Forwarded-Proto`, and sets
/// `X-Forwarded-Host` unless an earlier proxy did.
pub fn add_forwarded(headers: &mut HeaderMap, client: &ClientForwarding, host: Option<&str>) {
    add_forwarded_host(headers, client, host, |host| HeaderValue::try_from(host).ok());
}

/// [`add_forwarded`] for a host that arrived as the header value `host_value` (whose text
/// `host` is): `X-Forwarded-Host` shares its bytes instead of copying them.
pub fn add_forwarded_shared(
    headers: &mut HeaderMap,
    client: &ClientForwarding,
    host: Option<&str>,
    host_value: Option<&HeaderValue>,
) {
    add_forwarded_host(headers, client, host, |host| match host_value {
        Some(value) => Some(value.clone()),
        None => HeaderValue::try_from(host).ok(),
    });
}

fn add_forwarded_host(
    headers: &mut HeaderMap,
    client: &ClientForwarding,
    host: Option<&str>,
    host_value: impl FnOnce(&str) -> Option<HeaderValue>,
) {
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
            if let Some(value) = host_value(host) {
                headers.insert(&X_FORWARDED_HOST, value);
            }
        }
    }
    let existing = headers.get(&FORWARDED).and_then(|value| value.to_str().ok());
    if let Some(value) = client.forwarded(existing, host) {
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
    fn removes_connection_close_and_keep_alive_and_any_header_they_name() {
        let mut headers = HeaderMap::new();
        headers.append(CONNECTION, HeaderValue::from_static("Keep-Alive, close"));
        headers.insert(&KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        // Not a real header, but `Connection` names it, so it goes.
        headers.insert("close", HeaderValue::from_static("1"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers, false);
        assert_eq!(headers.keys().collect::<Vec<_>>(), ["x-kept"]);

        let mut only_connection = HeaderMap::new();
        only_connection.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        only_connection.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut only_connection, false);
        assert_eq!(only_connection.keys().collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn keeps_upgrade_and_connection_for_a_handshake_and_removes_the_rest() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade, x-secret"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(&PROXY_CONNECTION, HeaderValue::from_static("keep-alive"));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(TRAILER, HeaderValue::from_static("x-checksum"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        remove_hop_by_hop(&mut headers, true);
        let mut left: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["connection", "te", "upgrade"]);

        headers.insert(CONNECTION, HeaderValue::from_static("te"));
        remove_hop_by_hop(&mut headers, false);
        assert!(headers.is_empty(), "TE named in Connection goes even as `trailers`: {headers:?}");
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
    fn a_connection_names_each_request_s_own_host_in_forwarded() {
        let client = ClientForwarding::new("198.51.100.7:4000".parse().expect("addr"), false);
        for host in [Some("a.example.com"), Some("a.example.com"), Some("b.example.com"), None, Some("a.example.com")] {
            let mut headers = HeaderMap::new();
            add_forwarded(&mut headers, &client, host);
            let expected = match host {
                Some(host) => format!("for=198.51.100.7;proto=http;host=\"{host}\""),
                None => "for=198.51.100.7;proto=http".to_owned(),
            };
            assert_eq!(headers[&FORWARDED], expected.as_str());
        }
        // An earlier proxy's elements come first, whatever the connection made before.
        let mut headers = HeaderMap::new();
        headers.insert(&FORWARDED, HeaderValue::from_static("for=203.0.113.9"));
        add_forwarded(&mut headers, &client, Some("a.example.com"));
        assert_eq!(headers[&FORWARDED], "for=203.0.113.9, for=198.51.100.7;proto=http;host=\"a.example.com\"");
    }

    #[test]
    fn a_shared_host_value_gives_the_same_headers_as_its_text() {
        let client = ClientForwarding::new("198.51.100.7:4000".parse().expect("addr"), false);
        let host = HeaderValue::from_static("api.example.com:8080");
        let mut from_text = HeaderMap::new();
        add_forwarded(&mut from_text, &client, Some("api.example.com:8080"));
        let mut shared = HeaderMap::new();
        add_forwarded_shared(&mut shared, &client, host.to_str().ok(), Some(&host));
        assert_eq!(shared, from_text);
        assert_eq!(shared[&X_FORWARDED_HOST], "api.example.com:8080");
        // An earlier proxy's X-Forwarded-Host stays.
        let mut proxied = HeaderMap::new();
        proxied.insert(&X_FORWARDED_HOST, HeaderValue::from_static("origin.example.com"));
        add_forwarded_shared(&mut proxied, &client, host.to_str().ok(), Some(&host));
        assert_eq!(proxied[&X_FORWARDED_HOST], "origin.example.com");
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
