//! A record as JSON: the configured fields, in order, serialized on a sink's thread.

use std::time::SystemTime;

use gantry_config::{AccessLogField, AccessLogSinkSpec, AccessLogSpec};
use gantry_policy_api::ai::AiUsage;
use http::{HeaderName, HeaderValue};
use serde::ser::Serializer;
use serde::Serialize;

use super::{AccessRecord, Wants};

/// Which fields a record shows, in which order, and which headers.
#[derive(Debug)]
pub struct RecordFormat {
    fields: Vec<AccessLogField>,
    pub(super) request_headers: Vec<HeaderName>,
    pub(super) response_headers: Vec<HeaderName>,
    pub(super) wants: Wants,
}

impl RecordFormat {
    /// The format `spec` asks for.
    pub fn new(spec: &AccessLogSpec) -> Result<Self, String> {
        let names = |names: &[String]| -> Result<Vec<HeaderName>, String> {
            names
                .iter()
                .map(|name| {
                    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("`{name}` is not a header name"))
                })
                .collect()
        };
        Ok(Self {
            fields: spec.fields.clone(),
            request_headers: names(&spec.request_headers)?,
            response_headers: names(&spec.response_headers)?,
            wants: Wants {
                // OTLP log records carry the trace context whatever the fields.
                trace: Wants::of(&spec.fields).trace
                    || spec.all_sinks().iter().any(|sink| matches!(sink, AccessLogSinkSpec::Otlp(_))),
                ..Wants::of(&spec.fields)
            },
        })
    }

    /// Appends `record` as one JSON object (no newline) to `out`.
    pub fn write_json(&self, record: &AccessRecord, out: &mut Vec<u8>) {
        View { format: self, record }.write(Object::open(out));
    }

    /// `record` as one JSON object.
    pub fn to_json(&self, record: &AccessRecord) -> String {
        let mut out = Vec::with_capacity(256);
        self.write_json(record, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

struct View<'a> {
    format: &'a RecordFormat,
    record: &'a AccessRecord,
}

fn millis(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

impl View<'_> {
    fn write(&self, mut map: Object<'_>) {
        use AccessLogField::*;
        let record = self.record;
        for field in &self.format.fields {
            match field {
                Time => map.entry("time", &Rfc3339(record.time)),
                RequestId => map.entry("request_id", &*record.request_id),
                TraceId => {
                    if let Some(id) = &record.trace_id {
                        map.entry("trace_id", &Text(Hex(id)));
                    }
                }
                SpanId => {
                    if let Some(id) = &record.span_id {
                        map.entry("span_id", &Text(Hex(id)));
                    }
                }
                Route => optional(&mut map, "route", record.route_id.as_deref()),
                Service => optional(&mut map, "service", record.service_id.as_deref()),
                Consumer => optional(&mut map, "consumer", record.consumer_id.as_deref()),
                Client => map.entry("client_ip", &ClientIp(record.client.ip())),
                Method => map.entry("method", record.method.as_str()),
                Uri => match record.uri.path_and_query().filter(|_| record.uri.authority().is_none()) {
                    // The origin form HTTP/1.1 requests arrive in is its own text.
                    Some(origin) => map.entry("uri", origin.as_str()),
                    None => map.entry("uri", &Text(&record.uri)),
                },
                Path => map.entry("path", record.uri.path()),
                Query => optional(&mut map, "query", record.uri.query()),
                Protocol => map.entry("protocol", protocol_name(record.version)),
                Host => {
                    if let Some(host) = &record.host {
                        map.entry("host", &String::from_utf8_lossy(host.as_bytes()));
                    }
                }
                UserAgent => {
                    if let Some(agent) = &record.user_agent {
                        map.entry("user_agent", &String::from_utf8_lossy(agent.as_bytes()));
                    }
                }
                Status => map.entry("status", &record.status),
                BytesReceived => {
                    if let Some(bytes) = record.bytes_received {
                        map.entry("bytes_received", &bytes);
                    }
                }
                BytesSent => {
                    if let Some(bytes) = record.bytes_sent {
                        map.entry("bytes_sent", &bytes);
                    }
                }
                Duration => map.entry("duration_ms", &millis(record.duration)),
                Upstream => optional(&mut map, "upstream", record.upstream_addr.as_deref()),
                UpstreamDuration => {
                    if let Some(upstream) = record.upstream_duration {
                        map.entry("upstream_duration_ms", &millis(upstream));
                    }
                }
                GatewayOverhead => {
                    let overhead = record.duration.saturating_sub(record.upstream_duration.unwrap_or_default());
                    map.entry("gateway_overhead_ms", &millis(overhead));
                }
                AiProvider | AiRequestModel | AiResponseModel | AiInputTokens | AiOutputTokens | AiCost
                | AiCacheHit | AiTokensEstimated => {
                    if let Some(usage) = &record.ai {
                        ai_entry(&mut map, *field, usage);
                    }
                }
            }
        }
        if !self.format.request_headers.is_empty() {
            map.headers("request_headers", &record.request_headers);
        }
        if !self.format.response_headers.is_empty() {
            map.headers("response_headers", &record.response_headers);
        }
        map.close();
    }
}

/// One AI field of a record; a name the exchange has none of (no provider answered, no price
/// table) is left out, like the other fields without a value.
fn ai_entry(map: &mut Object<'_>, field: AccessLogField, usage: &AiUsage) {
    use AccessLogField::*;
    match field {
        AiProvider => optional(map, "ai_provider", non_empty(usage.provider)),
        AiRequestModel => optional(map, "ai_request_model", non_empty(&usage.request_model)),
        AiResponseModel => optional(map, "ai_response_model", non_empty(&usage.response_model)),
        AiInputTokens => map.entry("ai_input_tokens", &usage.input_tokens),
        AiOutputTokens => map.entry("ai_output_tokens", &usage.output_tokens),
        AiCost => match usage.cost {
            Some(cost) if cost.is_finite() => map.entry("ai_cost", &cost),
            _ => {}
        },
        AiCacheHit => map.entry("ai_cache_hit", &usage.cache_hit),
        AiTokensEstimated => map.entry("ai_tokens_estimated", &usage.estimated),
        _ => {}
    }
}

fn non_empty(text: &str) -> Option<&str> {
    Some(text).filter(|text| !text.is_empty())
}

fn optional(map: &mut Object<'_>, key: &'static str, value: Option<&str>) {
    if let Some(value) = value {
        map.entry(key, value);
    }
}

/// A JSON object written straight into a record's buffer. Keys are this module's field
/// names, ASCII without quotes or backslashes, so they are copied as they are: serde_json's map
/// serializer escapes every key byte by byte, which was a third of a record's cost. Values,
/// and header names, go through serde_json.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> Object<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    fn separate(&mut self) {
        if !std::mem::take(&mut self.empty) {
            self.out.push(b',');
        }
    }

    fn key(&mut self, key: &'static str) {
        debug_assert!(!key.contains(['"', '\\']) && key.is_ascii(), "{key} needs escaping");
        self.separate();
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn value<T: Serialize + ?Sized>(&mut self, value: &T) {
        // Writing to a `Vec` cannot fail, and every value here serializes (a float that is
        // not finite becomes `null`); the fallback keeps the line valid JSON regardless.
        if serde_json::to_writer(&mut *self.out, value).is_err() {
            self.out.extend_from_slice(b"null");
        }
    }

    fn entry<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) {
        self.key(key);
        self.value(value);
    }

    /// Headers as one object; the values of a repeated header joined with `, `.
    fn headers(&mut self, key: &'static str, headers: &[(HeaderName, HeaderValue)]) {
        self.key(key);
        let mut object = Object::open(self.out);
        let mut index = 0;
        while index < headers.len() {
            let name = &headers[index].0;
            let mut value = String::from_utf8_lossy(headers[index].1.as_bytes()).into_owned();
            index += 1;
            // Values of one name are next to each other: they were picked name by name.
            while index < headers.len() && headers[index].0 == *name {
                value.push_str(", ");
                value.push_str(&String::from_utf8_lossy(headers[index].1.as_bytes()));
                index += 1;
            }
            object.separate();
            object.value(name.as_str());
            object.out.push(b':');
            object.value(&value);
        }
        object.close();
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// Serializes a value through its `Display`, without an intermediate `String`.
pub(super) struct Text<T>(pub(super) T);

impl<T: std::fmt::Display> Serialize for Text<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// Bytes as lowercase hex digits.
pub(super) struct Hex<'a>(pub(super) &'a [u8]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// A time shown as RFC 3339 UTC with milliseconds. Its digits are written directly rather
/// than through `core::fmt`, which cost the access log's sink about 2,600 instructions per
/// record.
pub(super) struct Rfc3339(pub(super) SystemTime);

impl Rfc3339 {
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`; `None` for a year outside 0–9999.
    fn render(&self) -> Option<[u8; 24]> {
        let civil = Civil::of(self.0);
        let year = u32::try_from(civil.year).ok().filter(|year| *year <= 9999)?;
        let mut out = *b"0000-00-00T00:00:00.000Z";
        put_digits(&mut out[0..4], year);
        put_digits(&mut out[5..7], civil.month);
        put_digits(&mut out[8..10], civil.day);
        put_digits(&mut out[11..13], civil.hour as u32);
        put_digits(&mut out[14..16], civil.minute as u32);
        put_digits(&mut out[17..19], civil.second as u32);
        put_digits(&mut out[20..23], civil.millis);
        Some(out)
    }
}

/// Writes `value`'s last `into.len()` decimal digits, zero-padded.
fn put_digits(into: &mut [u8], mut value: u32) {
    for slot in into.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.render() {
            Some(text) => f.write_str(std::str::from_utf8(&text).map_err(|_| std::fmt::Error)?),
            None => {
                let civil = Civil::of(self.0);
                write!(
                    f,
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                    civil.year, civil.month, civil.day, civil.hour, civil.minute, civil.second, civil.millis
                )
            }
        }
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.render() {
            Some(text) => serializer.serialize_str(std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?),
            None => serializer.collect_str(self),
        }
    }
}

/// A client address as text; IPv4, nearly every client's, written without `core::fmt` (about
/// 1,100 instructions per record through `Display`).
struct ClientIp(std::net::IpAddr);

impl Serialize for ClientIp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            std::net::IpAddr::V4(ip) => {
                let mut out = [0u8; 15];
                let mut length = 0;
                for (index, octet) in ip.octets().into_iter().enumerate() {
                    if index > 0 {
                        out[length] = b'.';
                        length += 1;
                    }
                    let digits = if octet >= 100 {
                        3
                    } else if octet >= 10 {
                        2
                    } else {
                        1
                    };
                    put_digits(&mut out[length..length + digits], u32::from(octet));
                    length += digits;
                }
                serializer.serialize_str(std::str::from_utf8(&out[..length]).map_err(serde::ser::Error::custom)?)
            }
            std::net::IpAddr::V6(ip) => serializer.collect_str(&ip),
        }
    }
}

/// A UTC calendar time.
pub(super) struct Civil {
    pub(super) year: i64,
    pub(super) month: u32,
    pub(super) day: u32,
    pub(super) hour: u64,
    pub(super) minute: u64,
    pub(super) second: u64,
    pub(super) millis: u32,
}

impl Civil {
    pub(super) fn of(time: SystemTime) -> Self {
        let since_epoch = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let seconds = since_epoch.as_secs();
        let (days, rest) = (seconds / 86_400, seconds % 86_400);
        let (year, month, day) = civil_from_days(days as i64);
        Self {
            year,
            month,
            day,
            hour: rest / 3600,
            minute: (rest % 3600) / 60,
            second: rest % 60,
            millis: since_epoch.subsec_millis(),
        }
    }
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of `time`, UTC.
pub(super) fn day_number(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400
}

/// `pattern` with `%Y`, `%m`, `%d`, `%H` and `%%` replaced for `time` (UTC); the config
/// validation refuses other conversions.
pub(super) fn format_date_pattern(pattern: &str, time: SystemTime) -> String {
    let civil = Civil::of(time);
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut chars = pattern.chars();
    while let Some(char) = chars.next() {
        if char != '%' {
            out.push(char);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&format!("{:04}", civil.year)),
            Some('m') => out.push_str(&format!("{:02}", civil.month)),
            Some('d') => out.push_str(&format!("{:02}", civil.day)),
            Some('H') => out.push_str(&format!("{:02}", civil.hour)),
            Some(other) => {
                out.push('%');
                if other != '%' {
                    out.push(other);
                }
            }
            None => out.push('%'),
        }
    }
    out
}

pub(super) fn protocol_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP",
    }
}
