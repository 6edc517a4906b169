//! Server-sent events framing (WHATWG HTML, "Parsing an event stream"), fed bytes as they
//! arrive. A few lines of the spec rather than a crate: the providers' streams need only
//! `event` and `data`, and the parser must work on the data plane's chunks without its own
//! I/O.

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The `event` field; `message` when the stream gave none.
    pub event: String,
    /// The `data` fields joined by newlines.
    pub data: String,
}

/// Splits a byte stream into events; lines may end in CRLF, LF or CR.
#[derive(Debug, Default)]
pub struct Parser {
    buffer: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    /// A CR ended the last line: an LF right after it belongs to that line end.
    after_cr: bool,
}

impl Parser {
    /// Feeds `bytes`, giving the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        for &byte in bytes {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.buffer);
                    if let Some(event) = self.line(&line) {
                        events.push(event);
                    }
                }
                _ => self.buffer.push(byte),
            }
        }
        events
    }

    fn line(&mut self, line: &[u8]) -> Option<Event> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let data = std::mem::take(&mut self.data);
            if !std::mem::take(&mut self.has_data) {
                return None;
            }
            let event = if event.is_empty() { "message".to_owned() } else { event };
            return Some(Event { event, data });
        }
        if line.starts_with(b":") {
            return None;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

/// `data: <json>\n\n`, one OpenAI stream event.
pub fn data_event(json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_chunks_and_line_ends() {
        let mut parser = Parser::default();
        assert!(parser.feed(b"event: message_start\r\ndata: {\"a\"").is_empty());
        let events = parser.feed(b":1}\r\n\r\n: comment\n\ndata: x\rdata: y\r\revent: ping\n");
        assert_eq!(
            events,
            vec![
                Event { event: "message_start".into(), data: "{\"a\":1}".into() },
                Event { event: "message".into(), data: "x\ny".into() },
            ]
        );
        assert_eq!(parser.feed(b"data:{}\n\n"), vec![Event { event: "ping".into(), data: "{}".into() }]);
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        let mut parser = Parser::default();
        assert!(parser.feed(b"event: nothing\n\n").is_empty());
        assert_eq!(parser.feed(b"data: after\n\n")[0].event, "message", "the event name was reset");
    }
}
