//! How a [`CacheRecord`] is written in Redis: a line of facts, the header fields one per line
//! as in HTTP/1.1, an empty line, then the body's bytes. Readable with `redis-cli GET`, and
//! simple to parse, since header values never hold a line break.
//!
//! ```text
//! gantry-cache/1 200 1767225600000 0 60000 0 0 0
//! content-type: application/json
//! etag: "v1"
//!
//! {"id":1}
//! ```
//!
//! The numbers are the status, `response_time` in milliseconds since the epoch, then the initial
//! age, freshness, stale-while-revalidate and stale-if-error in milliseconds, then 1 when it
//! must be revalidated. A `Vary` record is `gantry-vary/1`, its generation and the header names.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::{CacheRecord, CachedResponse};

const RESPONSE_MAGIC: &str = "gantry-cache/1";
const VARY_MAGIC: &str = "gantry-vary/1";

/// Why stored bytes are not a record; a record written by another version of the format reads
/// as this too, and is then fetched again from the upstream.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(&'static str);

/// The stored form of `record`.
pub fn encode(record: &CacheRecord) -> Vec<u8> {
    match record {
        CacheRecord::Vary { names, generation } => {
            let names: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
            format!("{VARY_MAGIC} {generation} {}\n", names.join(",")).into_bytes()
        }
        CacheRecord::Response(response) => {
            let headers: usize =
                response.headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 3).sum();
            let mut out = BytesMut::with_capacity(96 + headers + response.body.len());
            let facts = format!(
                "{RESPONSE_MAGIC} {} {} {} {} {} {} {}\n",
                response.status.as_u16(),
                millis(response.response_time.duration_since(UNIX_EPOCH).unwrap_or_default()),
                millis(response.initial_age),
                millis(response.freshness),
                millis(response.stale_while_revalidate),
                millis(response.stale_if_error),
                u8::from(response.must_revalidate),
            );
            out.put_slice(facts.as_bytes());
            for (name, value) in &response.headers {
                out.put_slice(name.as_str().as_bytes());
                out.put_slice(b": ");
                out.put_slice(value.as_bytes());
                out.put_u8(b'\n');
            }
            out.put_u8(b'\n');
            out.put_slice(&response.body);
            out.to_vec()
        }
    }
}

/// The record stored as `bytes`.
pub fn decode(bytes: Bytes) -> Result<CacheRecord, DecodeError> {
    let first_end = bytes.iter().position(|&byte| byte == b'\n').ok_or(DecodeError("no first line"))?;
    let first = std::str::from_utf8(&bytes[..first_end]).map_err(|_| DecodeError("first line is not text"))?;
    let mut facts = first.split(' ');
    match facts.next() {
        Some(VARY_MAGIC) => {
            let generation =
                facts.next().and_then(|text| text.parse().ok()).ok_or(DecodeError("bad vary generation"))?;
            let names = facts.next().unwrap_or_default();
            let names: Result<Vec<HeaderName>, _> =
                names.split(',').filter(|name| !name.is_empty()).map(HeaderName::from_str).collect();
            let names = names.map_err(|_| DecodeError("bad header name in a vary record"))?;
            Ok(CacheRecord::Vary { names: Arc::from(names), generation })
        }
        Some(RESPONSE_MAGIC) => {
            let mut number = || -> Result<u64, DecodeError> {
                facts.next().and_then(|text| text.parse().ok()).ok_or(DecodeError("bad number on the first line"))
            };
            let status = u16::try_from(number()?)
                .ok()
                .and_then(|code| StatusCode::from_u16(code).ok())
                .ok_or(DecodeError("bad status"))?;
            let response_time = UNIX_EPOCH + Duration::from_millis(number()?);
            let initial_age = Duration::from_millis(number()?);
            let freshness = Duration::from_millis(number()?);
            let stale_while_revalidate = Duration::from_millis(number()?);
            let stale_if_error = Duration::from_millis(number()?);
            let must_revalidate = number()? == 1;
            let (headers, body_start) = decode_headers(&bytes, first_end + 1)?;
            Ok(CacheRecord::Response(Arc::new(CachedResponse {
                status,
                headers,
                body: bytes.slice(body_start..),
                response_time: clamp_to_now(response_time),
                initial_age,
                freshness,
                stale_while_revalidate,
                stale_if_error,
                must_revalidate,
            })))
        }
        _ => Err(DecodeError("not a cache record of this version")),
    }
}

/// Header lines from `start` up to the empty line; returns them and where the body starts.
fn decode_headers(bytes: &[u8], mut start: usize) -> Result<(HeaderMap, usize), DecodeError> {
    let mut headers = HeaderMap::new();
    loop {
        let rest = bytes.get(start..).ok_or(DecodeError("truncated"))?;
        let end = rest.iter().position(|&byte| byte == b'\n').ok_or(DecodeError("no end of the header section"))?;
        let line = &rest[..end];
        start += end + 1;
        if line.is_empty() {
            return Ok((headers, start));
        }
        let colon = line.iter().position(|&byte| byte == b':').ok_or(DecodeError("header line without a colon"))?;
        let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| DecodeError("bad header name"))?;
        let value = line[colon + 1..].strip_prefix(b" ").unwrap_or(&line[colon + 1..]);
        let value = HeaderValue::from_bytes(value).map_err(|_| DecodeError("bad header value"))?;
        headers.append(name, value);
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A time written by a node whose clock runs ahead is taken as now, so no age is negative.
fn clamp_to_now(time: SystemTime) -> SystemTime {
    time.min(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response() -> CachedResponse {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("set-thing", HeaderValue::from_static("a: b"));
        headers.append("set-thing", HeaderValue::from_static("second"));
        CachedResponse {
            status: StatusCode::NOT_FOUND,
            headers,
            body: Bytes::from_static(b"{\"id\":1}\n\nwith blank lines\n"),
            response_time: UNIX_EPOCH + Duration::from_millis(1_767_225_600_123),
            initial_age: Duration::from_millis(1500),
            freshness: Duration::from_secs(60),
            stale_while_revalidate: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(300),
            must_revalidate: true,
        }
    }

    #[test]
    fn writes_and_reads_back_a_response_with_repeated_headers_and_blank_lines_in_the_body() {
        let record = CacheRecord::Response(Arc::new(response()));
        let bytes = encode(&record);
        assert!(bytes.starts_with(b"gantry-cache/1 404 1767225600123 1500 60000 5000 300000 1\n"));
        assert_eq!(decode(Bytes::from(bytes)), Ok(record));
    }

    #[test]
    fn writes_and_reads_back_a_vary_record() {
        let names: Arc<[HeaderName]> = Arc::from(vec![HeaderName::from_static("accept-language")]);
        let bytes = encode(&CacheRecord::Vary { names: names.clone(), generation: 42 });
        assert_eq!(bytes, b"gantry-vary/1 42 accept-language\n");
        assert_eq!(decode(Bytes::from(bytes)), Ok(CacheRecord::Vary { names, generation: 42 }));
    }

    #[test]
    fn refuses_truncated_or_foreign_bytes() {
        let bytes = encode(&CacheRecord::Response(Arc::new(response())));
        let cut = bytes.iter().position(|&byte| byte == b'\n').expect("first line") + 10;
        assert!(decode(Bytes::copy_from_slice(&bytes[..cut])).is_err());
        assert!(decode(Bytes::from_static(b"gantry-cache/2 200\n\n")).is_err());
        assert!(decode(Bytes::from_static(b"{\"json\": true}")).is_err());
    }

    #[test]
    fn takes_a_response_time_in_the_future_as_now() {
        let mut ahead = response();
        ahead.response_time = SystemTime::now() + Duration::from_secs(3600);
        let CacheRecord::Response(read) =
            decode(Bytes::from(encode(&CacheRecord::Response(Arc::new(ahead))))).expect("decodes")
        else {
            panic!("a response record")
        };
        assert!(read.response_time <= SystemTime::now());
    }
}
