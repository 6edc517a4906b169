//! The two text formats `GET /metrics` answers in, chosen by the scraper's `Accept` header.
//!
//! prometheus-client renders OpenMetrics 1.0, which Prometheus asks for first. A scraper that
//! does not ask for it (curl, `promtool check metrics`, an older Prometheus) gets the
//! Prometheus text format 0.0.4. For the metric types Gantry exposes (counters, gauges,
//! histograms, without exemplars or `_created` series) the two differ only in their comment
//! lines: a counter family is named with its `_total` suffix in `# HELP` and `# TYPE` lines,
//! and the `# UNIT` and `# EOF` lines do not exist. The samples, which prometheus-client
//! rendered, pass through unchanged.

use http::header::ACCEPT;
use http::HeaderMap;

/// The `Content-Type` of an OpenMetrics answer.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Content-Type` of an answer in the Prometheus text format.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether `Accept` lists OpenMetrics text as acceptable (a `q` other than 0).
pub fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers.get_all(ACCEPT).iter().filter_map(|value| value.to_str().ok()).flat_map(|value| value.split(',')).any(
        |range| {
            let mut parts = range.split(';').map(str::trim);
            let is_openmetrics =
                parts.next().is_some_and(|media| media.eq_ignore_ascii_case("application/openmetrics-text"));
            let refused = parts.any(|parameter| {
                parameter
                    .split_once('=')
                    .filter(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                    .and_then(|(_, weight)| weight.trim().parse::<f32>().ok())
                    .is_some_and(|weight| weight <= 0.0)
            });
            is_openmetrics && !refused
        },
    )
}

/// The Prometheus text format of `openmetrics`, an exposition prometheus-client wrote.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut text = String::with_capacity(openmetrics.len());
    let mut lines = openmetrics.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = if let Some(rest) = line.strip_prefix("# HELP ") {
            // prometheus-client writes a family's HELP line right before its TYPE line.
            let name = rest.split(' ').next().unwrap_or_default();
            let type_line = lines.peek().copied().unwrap_or_default();
            let is_counter =
                type_line.strip_prefix("# TYPE ").and_then(|rest| rest.strip_prefix(name)) == Some(" counter");
            is_counter.then(|| format!("# HELP {name}_total{}", &rest[name.len()..]))
        } else {
            line.strip_prefix("# TYPE ")
                .and_then(|rest| rest.strip_suffix(" counter"))
                .map(|name| format!("# TYPE {name}_total counter"))
        };
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn accepting(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn answers_openmetrics_only_to_scrapers_that_ask_for_it() {
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(&accepting(prometheus)));
        assert!(!wants_openmetrics(&accepting("*/*")));
        assert!(!wants_openmetrics(&accepting("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(&accepting("application/openmetrics-text; q=0, text/plain")));
        assert!(!wants_openmetrics(&HeaderMap::new()));
    }

    #[test]
    fn names_counter_families_with_their_suffix_and_drops_openmetrics_only_lines() {
        let openmetrics = "# HELP gantry_requests Requests answered.\n# TYPE gantry_requests counter\ngantry_requests_total{status_class=\"2xx\"} 3\n# HELP gantry_request_body_bytes Body bytes.\n# TYPE gantry_request_body_bytes counter\n# UNIT gantry_request_body_bytes bytes\ngantry_request_body_bytes_total 10\n# HELP gantry_config_generation Generation.\n# TYPE gantry_config_generation gauge\ngantry_config_generation 2\n# HELP d_seconds Durations.\n# TYPE d_seconds histogram\n# UNIT d_seconds seconds\nd_seconds_sum 0.5\nd_seconds_count 1\nd_seconds_bucket{le=\"+Inf\"} 1\n# EOF\n";
        let expected = "# HELP gantry_requests_total Requests answered.\n# TYPE gantry_requests_total counter\ngantry_requests_total{status_class=\"2xx\"} 3\n# HELP gantry_request_body_bytes_total Body bytes.\n# TYPE gantry_request_body_bytes_total counter\ngantry_request_body_bytes_total 10\n# HELP gantry_config_generation Generation.\n# TYPE gantry_config_generation gauge\ngantry_config_generation 2\n# HELP d_seconds Durations.\n# TYPE d_seconds histogram\nd_seconds_sum 0.5\nd_seconds_count 1\nd_seconds_bucket{le=\"+Inf\"} 1\n";
        assert_eq!(to_prometheus_text(openmetrics), expected);
    }
}
