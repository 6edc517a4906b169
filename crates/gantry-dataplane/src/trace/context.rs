//! Trace context on the wire: W3C `traceparent` (with `tracestate` passed through) and B3, in
//! its single `b3` header and its multi-header `X-B3-*` forms; ids and the sampler.
//!
//! Runs per request when tracing is on: parsing reads header bytes in place, and writing a
//! context costs one header value per header written.

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static B3: HeaderName = HeaderName::from_static("b3");
static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
static B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// A 16-byte trace id.
pub type TraceId = [u8; 16];
/// An 8-byte span id.
pub type SpanId = [u8; 8];

/// How the caller sent its trace context; the upstream gets it the same way, and always as
/// `traceparent` too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// W3C Trace Context.
    W3c,
    /// The single `b3` header.
    B3Single,
    /// `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`...
    B3Multi,
}

/// The context a caller sent: the span the gateway's server span continues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteParent {
    /// Trace id.
    pub trace_id: TraceId,
    /// The caller's span.
    pub span_id: SpanId,
    /// The caller's sampling decision; `None` when B3 deferred it to the gateway.
    pub sampled: Option<bool>,
    /// Which headers carried it.
    pub format: Format,
}

/// Reads the caller's trace context: a valid `traceparent` first, else B3 (single, then
/// multi). Malformed headers count as absent, so the request starts a new trace.
pub fn extract(headers: &HeaderMap) -> Option<RemoteParent> {
    if let Some(value) = headers.get(&TRACEPARENT) {
        if let Some(parent) = parse_traceparent(value.as_bytes()) {
            return Some(parent);
        }
    }
    if let Some(value) = headers.get(&B3) {
        if let Some(parent) = parse_b3_single(value.as_bytes()) {
            return Some(parent);
        }
    }
    parse_b3_multi(headers)
}

/// `version-traceid-parentid-flags`, all lower-case hex (W3C Trace Context, level 1). A
/// later version may append fields after a `-`, which are ignored as the specification says.
pub fn parse_traceparent(value: &[u8]) -> Option<RemoteParent> {
    if value.len() < 55 || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    let version = lower_hex::<1>(&value[0..2])?[0];
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = lower_hex::<16>(&value[3..35])?;
    let span_id = lower_hex::<8>(&value[36..52])?;
    let flags = lower_hex::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(RemoteParent { trace_id, span_id, sampled: Some(flags & 1 == 1), format: Format::W3c })
}

/// `traceid-spanid[-sampled[-parentspanid]]`; a lone sampling state carries no context.
fn parse_b3_single(value: &[u8]) -> Option<RemoteParent> {
    let mut fields = value.split(|&byte| byte == b'-');
    let trace_id = b3_trace_id(fields.next()?)?;
    let span_id = any_hex::<8>(fields.next()?)?;
    let sampled = match fields.next() {
        None => None,
        Some(b"1" | b"d") => Some(true),
        Some(b"0") => Some(false),
        Some(_) => return None,
    };
    if span_id == [0; 8] {
        return None;
    }
    Some(RemoteParent { trace_id, span_id, sampled, format: Format::B3Single })
}

fn parse_b3_multi(headers: &HeaderMap) -> Option<RemoteParent> {
    let trace_id = b3_trace_id(headers.get(&B3_TRACE_ID)?.as_bytes())?;
    let span_id = any_hex::<8>(headers.get(&B3_SPAN_ID)?.as_bytes())?;
    if span_id == [0; 8] {
        return None;
    }
    let debug = headers.get(&B3_FLAGS).is_some_and(|flags| flags.as_bytes() == b"1");
    let sampled = match headers.get(&B3_SAMPLED).map(HeaderValue::as_bytes) {
        _ if debug => Some(true),
        None => None,
        Some(b"1" | b"true") => Some(true),
        Some(b"0" | b"false") => Some(false),
        Some(_) => return None,
    };
    Some(RemoteParent { trace_id, span_id, sampled, format: Format::B3Multi })
}

/// A B3 trace id: 32 hex digits, or 16 (64-bit ids, widened with leading zeros).
fn b3_trace_id(text: &[u8]) -> Option<TraceId> {
    let trace_id = match text.len() {
        32 => any_hex::<16>(text)?,
        16 => {
            let low = any_hex::<8>(text)?;
            let mut id = [0; 16];
            id[8..].copy_from_slice(&low);
            id
        }
        _ => return None,
    };
    (trace_id != [0; 16]).then_some(trace_id)
}

fn lower_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    decode_hex(text, &LOWER_HEX_DIGITS)
}

fn any_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    decode_hex(text, &HEX_DIGITS)
}

/// Not a hex digit, in the tables below.
const NOT_HEX: u8 = 0xff;

/// The value of each byte as a hex digit: a table lookup per character keeps parsing a
/// `traceparent` to a few hundred instructions.
const HEX_DIGITS: [u8; 256] = digit_table(true);
/// The same without upper-case digits, which W3C Trace Context does not allow.
const LOWER_HEX_DIGITS: [u8; 256] = digit_table(false);

const fn digit_table(upper: bool) -> [u8; 256] {
    let mut table = [NOT_HEX; 256];
    let mut digit = 0;
    while digit < 16 {
        table[b"0123456789abcdef"[digit] as usize] = digit as u8;
        if upper {
            table[b"0123456789ABCDEF"[digit] as usize] = digit as u8;
        }
        digit += 1;
    }
    table
}

fn decode_hex<const N: usize>(text: &[u8], digits: &[u8; 256]) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0; N];
    let mut invalid = 0;
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (high, low) = (digits[usize::from(pair[0])], digits[usize::from(pair[1])]);
        invalid |= high | low;
        *byte = (high << 4) | (low & 0xf);
    }
    // Digits are below 16, so a single `NOT_HEX` leaves the high bits set.
    (invalid & 0xf0 == 0).then_some(out)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    write_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

/// `00-{trace}-{span}-{flags}`.
pub fn traceparent(trace_id: &TraceId, span_id: &SpanId, sampled: bool) -> HeaderValue {
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
    write_hex(&mut text[3..35], trace_id);
    write_hex(&mut text[36..52], span_id);
    if sampled {
        text[54] = b'1';
    }
    header_value(&text)
}

fn header_value(text: &[u8]) -> HeaderValue {
    // Hex digits and dashes only, always a valid header value.
    HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(text)).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Writes the context the upstream continues: `traceparent` with `span_id` as its parent, and
/// B3 in the caller's form when the caller used B3. `tracestate` passes through as received
/// when the caller's `traceparent` was valid.
pub fn inject(headers: &mut HeaderMap, trace_id: &TraceId, span_id: &SpanId, sampled: bool, format: Option<Format>) {
    headers.insert(&TRACEPARENT, traceparent(trace_id, span_id, sampled));
    match format {
        Some(Format::B3Single) => {
            let mut text = *b"00000000000000000000000000000000-0000000000000000-0";
            write_hex(&mut text[0..32], trace_id);
            write_hex(&mut text[33..49], span_id);
            text[50] = if sampled { b'1' } else { b'0' };
            headers.insert(&B3, header_value(&text));
        }
        Some(Format::B3Multi) => {
            let mut trace = [0; 32];
            write_hex(&mut trace, trace_id);
            let mut span = [0; 16];
            write_hex(&mut span, span_id);
            headers.insert(&B3_TRACE_ID, header_value(&trace));
            headers.insert(&B3_SPAN_ID, header_value(&span));
            headers.remove(&B3_PARENT_SPAN_ID);
            headers.insert(&B3_SAMPLED, HeaderValue::from_static(if sampled { "1" } else { "0" }));
        }
        Some(Format::W3c) => {}
        // A `tracestate` belongs to the `traceparent` it came with; without a valid one the
        // upstream must not get it (W3C Trace Context, 3.3.1).
        None => {
            headers.remove(&TRACESTATE);
        }
    }
}

/// A new random span id (never all zeros, which means "none").
pub fn new_span_id() -> SpanId {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// A new random trace id.
pub fn new_trace_id() -> TraceId {
    let mut id = [0; 16];
    id[..8].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    id[8..].copy_from_slice(&new_span_id());
    id
}

/// Decides which requests are recorded: the caller's decision when parent-based and the
/// caller made one, else a ratio of trace ids, as OpenTelemetry's `TraceIdRatioBased` does
/// (the low 63 bits of the id's last 8 bytes against `ratio × 2^63`), so that services sharing
/// a ratio keep the same traces.
#[derive(Clone, Copy, Debug)]
pub struct Sampler {
    threshold: u64,
    always: bool,
    parent_based: bool,
}

impl Sampler {
    /// A sampler keeping `ratio` of new traces (0 to 1).
    pub fn new(ratio: f64, parent_based: bool) -> Self {
        let ratio = ratio.clamp(0.0, 1.0);
        Self { threshold: (ratio * (1u64 << 63) as f64) as u64, always: ratio >= 1.0, parent_based }
    }

    /// Whether a span of `trace_id` with `parent` is recorded.
    pub fn should_sample(&self, parent: Option<&RemoteParent>, trace_id: &TraceId) -> bool {
        if self.parent_based {
            if let Some(sampled) = parent.and_then(|parent| parent.sampled) {
                return sampled;
            }
        }
        if self.always {
            return true;
        }
        let mut low = [0; 8];
        low.copy_from_slice(&trace_id[8..]);
        (u64::from_be_bytes(low) >> 1) < self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn id<const N: usize>(text: &str) -> [u8; N] {
        any_hex(text.as_bytes()).expect("hex")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (HeaderName::from_bytes(name.as_bytes()).expect("name"), HeaderValue::from_str(value).expect("value"))
            })
            .collect()
    }

    #[test]
    fn reads_a_w3c_traceparent() {
        let parent = extract(&headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))])).expect("context");
        assert_eq!(
            parent,
            RemoteParent { trace_id: id(TRACE), span_id: id(SPAN), sampled: Some(true), format: Format::W3c }
        );
        let unsampled = extract(&headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-00"))])).expect("context");
        assert_eq!(unsampled.sampled, Some(false));
        let later_version = parse_traceparent(format!("cc-{TRACE}-{SPAN}-01-what-the-future-adds").as_bytes());
        assert_eq!(later_version.map(|parent| parent.trace_id), Some(id(TRACE)));
    }

    #[test]
    fn ignores_malformed_traceparents() {
        let zero_trace = format!("00-{}-{SPAN}-01", "0".repeat(32));
        let zero_span = format!("00-{TRACE}-{}-01", "0".repeat(16));
        let upper = format!("00-{}-{SPAN}-01", TRACE.to_uppercase());
        let version_ff = format!("ff-{TRACE}-{SPAN}-01");
        let too_long_v0 = format!("00-{TRACE}-{SPAN}-01-extra");
        let short = format!("00-{TRACE}-{SPAN}-1");
        let not_hex = format!("00-{TRACE}-00f067aa0ba902bg-01");
        for bad in [zero_trace, zero_span, upper, version_ff, too_long_v0, short, not_hex, "garbage".to_owned()] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn reads_b3_single_and_multi_headers() {
        let single = extract(&headers(&[("b3", &format!("{TRACE}-{SPAN}-1-05e3ac9a4f6e3b90"))])).expect("b3");
        assert_eq!(
            single,
            RemoteParent { trace_id: id(TRACE), span_id: id(SPAN), sampled: Some(true), format: Format::B3Single }
        );
        let deferred = extract(&headers(&[("b3", &format!("{TRACE}-{SPAN}"))])).expect("b3");
        assert_eq!(deferred.sampled, None);
        assert_eq!(extract(&headers(&[("b3", "0")])), None, "a lone sampling state has no context");

        let multi =
            extract(&headers(&[("x-b3-traceid", "a3ce929d0e0e4736"), ("x-b3-spanid", SPAN), ("x-b3-sampled", "0")]))
                .expect("multi");
        let mut widened = [0; 16];
        widened[8..].copy_from_slice(&id::<8>("a3ce929d0e0e4736"));
        assert_eq!(
            multi,
            RemoteParent { trace_id: widened, span_id: id(SPAN), sampled: Some(false), format: Format::B3Multi }
        );
        let debug =
            extract(&headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN), ("x-b3-flags", "1")])).expect("debug");
        assert_eq!(debug.sampled, Some(true));
    }

    #[test]
    fn prefers_traceparent_over_b3() {
        let other = "11111111111111111111111111111111";
        let parent = extract(&headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("b3", &format!("{other}-{SPAN}-1")),
        ]))
        .expect("context");
        assert_eq!((parent.trace_id, parent.format), (id(TRACE), Format::W3c));
    }

    #[test]
    fn writes_traceparent_and_the_callers_b3_form() {
        let mut map = HeaderMap::new();
        inject(&mut map, &id(TRACE), &id(SPAN), true, Some(Format::B3Single));
        assert_eq!(map["traceparent"], format!("00-{TRACE}-{SPAN}-01").as_str());
        assert_eq!(map["b3"], format!("{TRACE}-{SPAN}-1").as_str());

        let mut map = headers(&[("x-b3-parentspanid", "05e3ac9a4f6e3b90")]);
        inject(&mut map, &id(TRACE), &id(SPAN), false, Some(Format::B3Multi));
        assert_eq!(map["traceparent"], format!("00-{TRACE}-{SPAN}-00").as_str());
        assert_eq!(map["x-b3-traceid"], TRACE);
        assert_eq!(map["x-b3-spanid"], SPAN);
        assert_eq!(map["x-b3-sampled"], "0");
        assert!(!map.contains_key("x-b3-parentspanid"));
    }

    #[test]
    fn samples_by_parent_then_by_ratio_of_the_trace_id() {
        let parent = |sampled| RemoteParent { trace_id: [7; 16], span_id: [1; 8], sampled, format: Format::W3c };
        let never = Sampler::new(0.0, true);
        assert!(never.should_sample(Some(&parent(Some(true))), &[7; 16]), "a sampled caller wins");
        assert!(!never.should_sample(Some(&parent(None)), &[7; 16]), "a deferred decision falls to the ratio");
        assert!(!Sampler::new(0.0, false).should_sample(Some(&parent(Some(true))), &[7; 16]));
        assert!(!Sampler::new(1.0, true).should_sample(Some(&parent(Some(false))), &[7; 16]));
        assert!(Sampler::new(1.0, false).should_sample(None, &[0xff; 16]));

        let half = Sampler::new(0.5, false);
        let kept = (0..10_000).filter(|_| half.should_sample(None, &new_trace_id())).count();
        assert!((4_500..5_500).contains(&kept), "{kept} of 10000 kept at 0.5");
        let mut low = [0; 16];
        low[15] = 2;
        assert!(half.should_sample(None, &low));
        assert!(!half.should_sample(None, &[0xff; 16]));
    }
}
