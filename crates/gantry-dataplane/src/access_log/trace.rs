//! The trace context an access log record carries.

use http::HeaderMap;

/// A W3C trace context: trace id and span id, as raw bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id.
    pub trace_id: [u8; 16],
    /// The span id.
    pub span_id: [u8; 8],
}

/// The caller's trace context, for an access log record: the trace id and parent span id of
/// the client's W3C `traceparent` header, parsed strictly: a missing, repeated or malformed
/// header gives `None`, never an error.
///
/// This is where a record's `trace_id` and `span_id` come from unless the gateway traces the
/// request itself (`node.tracing`); then the request handler gives the record the gateway's
/// own span instead.
pub fn trace_context(headers: &HeaderMap) -> Option<TraceContext> {
    let mut values = headers.get_all("traceparent").iter();
    let value = values.next()?;
    if values.next().is_some() {
        // Two traceparents cannot both be the parent: the context is ambiguous.
        return None;
    }
    parse_traceparent(value.as_bytes())
}

/// Parses `version-trace_id-parent_id-flags` (W3C Trace Context, section 3.2).
fn parse_traceparent(value: &[u8]) -> Option<TraceContext> {
    const LENGTH: usize = 55;
    let value = value.trim_ascii();
    if value.len() < LENGTH {
        return None;
    }
    let version = hex_byte(&value[0..2])?;
    // Version 255 is invalid; version 0 has exactly these four parts, and a later version
    // may add parts after another dash, which a version-0 parser ignores.
    if version == 0xff || (version == 0 && value.len() != LENGTH) || (value.len() > LENGTH && value[LENGTH] != b'-') {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (index, byte) in trace_id.iter_mut().enumerate() {
        *byte = hex_byte(&value[3 + 2 * index..5 + 2 * index])?;
    }
    let mut span_id = [0u8; 8];
    for (index, byte) in span_id.iter_mut().enumerate() {
        *byte = hex_byte(&value[36 + 2 * index..38 + 2 * index])?;
    }
    hex_byte(&value[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(TraceContext { trace_id, span_id })
}

/// Two lowercase hex digits, as the header requires.
fn hex_byte(digits: &[u8]) -> Option<u8> {
    fn digit(byte: u8) -> Option<u8> {
        match byte {
            b'0'..=b'9' => Some(byte - b'0'),
            b'a'..=b'f' => Some(byte - b'a' + 10),
            _ => None,
        }
    }
    Some(digit(digits[0])? << 4 | digit(digits[1])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn parse(value: &str) -> Option<TraceContext> {
        parse_traceparent(value.as_bytes())
    }

    #[test]
    fn reads_trace_and_parent_ids_of_a_valid_header() {
        let context = parse(VALID).expect("valid");
        assert_eq!(context.trace_id[0], 0x0a);
        assert_eq!(context.trace_id[15], 0x9c);
        assert_eq!(context.span_id, [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]);
        // A later version may append parts.
        assert!(parse("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra").is_some());
    }

    #[test]
    fn malformed_headers_give_no_context() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
            "0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-zz",
            "éé-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_repeated_header_gives_no_context() {
        let mut headers = HeaderMap::new();
        headers.append("traceparent", VALID.parse().expect("value"));
        assert!(trace_context(&headers).is_some());
        headers.append("traceparent", VALID.parse().expect("value"));
        assert_eq!(trace_context(&headers), None);
    }
}
