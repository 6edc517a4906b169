//! The rules of RFC 9111 a shared cache applies, as pure functions of headers and times:
//! `Cache-Control` directives (§5.2), the freshness lifetime (§4.2.1, §4.2.2), the age
//! (§4.2.3), updating a stored response from a 304 (§3.2, §4.3.4), and the client's own
//! conditional requests (RFC 9110 §13.1).

use std::time::{Duration, SystemTime};

use http::header::{
    AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, CONTENT_RANGE, DATE, ETAG, EXPIRES, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, LAST_MODIFIED, PRAGMA, TRANSFER_ENCODING, VARY,
};
use http::{HeaderMap, HeaderName, StatusCode};

/// The `Cache-Control` directives the cache acts on, of a request or a response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub only_if_cached: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    /// `max-stale` alone accepts any staleness: `Some(None)`.
    pub max_stale: Option<Option<u64>>,
    pub min_fresh: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    /// The directives of every `Cache-Control` field in `headers`. A request without one but
    /// with `Pragma: no-cache` asks for `no-cache` (§5.4). A directive given twice with
    /// different values is invalid; for a lifetime, that means stale (§4.2.1).
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut directives = CacheControl::default();
        let mut seen_cache_control = false;
        for value in headers.get_all(CACHE_CONTROL) {
            seen_cache_control = true;
            let Ok(text) = value.to_str() else { continue };
            for (name, argument) in split_directives(text) {
                directives.apply(&name, argument.as_deref());
            }
        }
        if !seen_cache_control && has_token(headers, &PRAGMA, "no-cache") {
            directives.no_cache = true;
        }
        directives
    }

    fn apply(&mut self, name: &str, argument: Option<&str>) {
        let seconds = || argument.map(delta_seconds);
        match name {
            "no-store" => self.no_store = true,
            // The field-list forms (`no-cache="set-cookie"`, `private="x"`) are taken whole:
            // the cache does not store responses with parts left out.
            "no-cache" => self.no_cache = true,
            "private" => self.private = true,
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "only-if-cached" => self.only_if_cached = true,
            "max-age" => self.max_age = merge_seconds(self.max_age, seconds()),
            "s-maxage" => self.s_maxage = merge_seconds(self.s_maxage, seconds()),
            "max-stale" => self.max_stale = Some(seconds()),
            "min-fresh" => self.min_fresh = merge_seconds(self.min_fresh, seconds()),
            "stale-while-revalidate" => {
                self.stale_while_revalidate = merge_seconds(self.stale_while_revalidate, seconds());
            }
            "stale-if-error" => self.stale_if_error = merge_seconds(self.stale_if_error, seconds()),
            _ => {}
        }
    }
}

/// A second value for a directive that has one: the same value stands, a different one makes
/// it invalid, which counts as 0 (stale, §4.2.1). A directive without a (valid) value is 0.
fn merge_seconds(current: Option<u64>, new: Option<u64>) -> Option<u64> {
    let new = new.unwrap_or(0);
    match current {
        Some(current) if current != new => Some(0),
        _ => Some(new),
    }
}

/// `delta-seconds` (§1.2.2): digits only; anything else is 0, a too large value is 2^31.
fn delta_seconds(text: &str) -> u64 {
    const LARGEST: u64 = 1 << 31;
    let text = text.trim_matches('"');
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return 0;
    }
    text.parse::<u64>().map_or(LARGEST, |value| value.min(LARGEST))
}

/// Directive names (lower case) and arguments, with quoted arguments holding commas kept whole.
fn split_directives(text: &str) -> Vec<(String, Option<String>)> {
    let mut directives = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    for c in text.chars().chain(std::iter::once(',')) {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                current.push(c);
            }
            ',' if !in_quotes => {
                let item = current.trim();
                if !item.is_empty() {
                    let (name, argument) = match item.split_once('=') {
                        Some((name, argument)) => (name.trim(), Some(argument.trim().to_owned())),
                        None => (item, None),
                    };
                    directives.push((name.to_ascii_lowercase(), argument));
                }
                current.clear();
            }
            _ => current.push(c),
        }
    }
    directives
}

/// Whether a comma-separated field `name` lists `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// An HTTP date field, if present and valid.
fn date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    headers.get(name).and_then(|value| value.to_str().ok()).and_then(|text| httpdate::parse_http_date(text).ok())
}

/// Statuses a cache may give a heuristic lifetime to (RFC 9110 §15.1), less 206, whose ranges
/// this cache does not combine.
pub const HEURISTICALLY_CACHEABLE: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// How long a response is fresh, and whether the origin said so itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub duration: Duration,
    pub is_explicit: bool,
}

/// What the operator allows beyond the origin's own freshness information.
#[derive(Clone, Copy, Debug, Default)]
pub struct LifetimeSettings {
    /// Fraction of the time since `Last-Modified`, for responses without explicit freshness.
    pub heuristic_fraction: Option<f64>,
    /// Lifetime of responses without explicit freshness (and without heuristic one).
    pub default_ttl: Option<Duration>,
}

/// The freshness lifetime of a response (§4.2.1): `s-maxage`, else `max-age`, else `Expires`
/// minus `Date`; without any, a heuristic (§4.2.2) or the configured default, and only for
/// statuses that allow one or a `public` response. `None`: no lifetime at all.
pub fn freshness_lifetime(
    status: StatusCode,
    headers: &HeaderMap,
    directives: &CacheControl,
    response_time: SystemTime,
    settings: &LifetimeSettings,
) -> Option<Lifetime> {
    let explicit = |seconds: u64| Some(Lifetime { duration: Duration::from_secs(seconds), is_explicit: true });
    if let Some(seconds) = directives.s_maxage {
        return explicit(seconds);
    }
    if let Some(seconds) = directives.max_age {
        return explicit(seconds);
    }
    if headers.contains_key(EXPIRES) {
        // An invalid date (`0`, `-1`) means already expired.
        let expires = date(headers, &EXPIRES).unwrap_or(SystemTime::UNIX_EPOCH);
        let from = date(headers, &DATE).unwrap_or(response_time);
        return Some(Lifetime { duration: expires.duration_since(from).unwrap_or_default(), is_explicit: true });
    }
    if !(HEURISTICALLY_CACHEABLE.contains(&status.as_u16()) || directives.public) {
        return None;
    }
    let heuristic = settings.heuristic_fraction.and_then(|fraction| {
        let last_modified = date(headers, &LAST_MODIFIED)?;
        let since = date(headers, &DATE).unwrap_or(response_time).duration_since(last_modified).ok()?;
        Some(since.mul_f64(fraction))
    });
    heuristic.or(settings.default_ttl).map(|duration| Lifetime { duration, is_explicit: false })
}

/// A response's age when it arrived (`corrected_initial_age`, §4.2.3).
pub fn initial_age(headers: &HeaderMap, request_time: SystemTime, response_time: SystemTime) -> Duration {
    let age_value = headers
        .get(AGE)
        .and_then(|value| value.to_str().ok())
        .map_or(Duration::ZERO, |text| Duration::from_secs(delta_seconds(text)));
    let apparent_age =
        date(headers, &DATE).and_then(|date| response_time.duration_since(date).ok()).unwrap_or_default();
    let response_delay = response_time.duration_since(request_time).unwrap_or_default();
    apparent_age.max(age_value + response_delay)
}

/// The request header names a response varies by, lower case; `Err` for `Vary: *`, which no
/// request matches (§4.1).
pub fn vary_names(headers: &HeaderMap) -> Result<Vec<HeaderName>, ()> {
    let mut names = Vec::new();
    for item in headers.get_all(VARY).iter().filter_map(|value| value.to_str().ok()).flat_map(|value| value.split(','))
    {
        let item = item.trim();
        if item == "*" {
            return Err(());
        }
        if let Ok(name) = HeaderName::from_bytes(item.to_ascii_lowercase().as_bytes()) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(names)
}

/// The stored headers updated from a 304 (§3.2): each field the 304 carries replaces the stored
/// one, except those describing the stored body, which the 304 does not describe.
pub fn update_headers(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut updated = stored.clone();
    for name in not_modified.keys() {
        if [CONTENT_LENGTH, TRANSFER_ENCODING, CONTENT_RANGE, http::header::CONTENT_ENCODING].contains(name) {
            continue;
        }
        updated.remove(name);
        for value in not_modified.get_all(name) {
            updated.append(name.clone(), value.clone());
        }
    }
    updated
}

/// Whether a 304 from the upstream is about the stored response (§4.3.4): a strong `ETag` in
/// the 304 must equal the stored one; a 304 without validators updates the stored response.
pub fn not_modified_matches(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    match (not_modified.get(ETAG), stored.get(ETAG)) {
        (Some(new), Some(old)) => weak_eq(new.as_bytes(), old.as_bytes()),
        (Some(_), None) => false,
        (None, _) => match (not_modified.get(LAST_MODIFIED), stored.get(LAST_MODIFIED)) {
            (Some(new), Some(old)) => new == old,
            _ => true,
        },
    }
}

/// Entity tags compared weakly (RFC 9110 §8.8.3.2): equal once any `W/` is dropped.
fn weak_eq(a: &[u8], b: &[u8]) -> bool {
    let opaque = |tag: &[u8]| -> Vec<u8> { tag.strip_prefix(b"W/").unwrap_or(tag).trim_ascii().to_vec() };
    opaque(a) == opaque(b)
}

/// Whether the client's own conditional request (`If-None-Match`, else `If-Modified-Since`) is
/// satisfied by a response with `headers`, so that a 304 answers it (RFC 9110 §13.2.2).
pub fn client_has_current_copy(request: &HeaderMap, headers: &HeaderMap) -> bool {
    if request.contains_key(IF_NONE_MATCH) {
        let Some(etag) = headers.get(ETAG) else { return false };
        return request
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|tag| tag.trim() == "*" || weak_eq(tag.trim().as_bytes(), etag.as_bytes()));
    }
    match (date(request, &IF_MODIFIED_SINCE), date(headers, &LAST_MODIFIED)) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// The fields a 304 sent from the cache carries (RFC 9110 §15.4.5), taken from the stored ones.
pub fn not_modified_headers(stored: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in [CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES, VARY, LAST_MODIFIED] {
        for value in stored.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(fields: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    fn lifetime(fields: &[(&'static str, &str)], settings: LifetimeSettings) -> Option<Lifetime> {
        let map = headers(fields);
        let now = httpdate::parse_http_date("Thu, 01 Jan 2026 00:00:00 GMT").expect("date");
        freshness_lifetime(StatusCode::OK, &map, &CacheControl::parse(&map), now, &settings)
    }

    fn seconds(value: u64) -> Option<Lifetime> {
        Some(Lifetime { duration: Duration::from_secs(value), is_explicit: true })
    }

    #[test]
    fn reads_directives_in_any_case_with_quoted_arguments() {
        let parsed = CacheControl::parse(&headers(&[
            ("cache-control", "Public, MAX-AGE=\"60\", no-cache=\"set-cookie, x-private\""),
            ("cache-control", "stale-while-revalidate=30, stale-if-error=600, max-stale"),
        ]));
        assert!(parsed.public && parsed.no_cache && !parsed.private);
        assert_eq!(parsed.max_age, Some(60));
        assert_eq!(parsed.stale_while_revalidate, Some(30));
        assert_eq!(parsed.stale_if_error, Some(600));
        assert_eq!(parsed.max_stale, Some(None));
    }

    #[test]
    fn treats_conflicting_or_invalid_lifetimes_as_stale() {
        assert_eq!(CacheControl::parse(&headers(&[("cache-control", "max-age=60, max-age=120")])).max_age, Some(0));
        assert_eq!(CacheControl::parse(&headers(&[("cache-control", "max-age=60, max-age=60")])).max_age, Some(60));
        assert_eq!(CacheControl::parse(&headers(&[("cache-control", "max-age=-1")])).max_age, Some(0));
        assert_eq!(
            CacheControl::parse(&headers(&[("cache-control", "max-age=99999999999999")])).max_age,
            Some(1 << 31)
        );
    }

    #[test]
    fn takes_pragma_no_cache_only_without_cache_control() {
        assert!(CacheControl::parse(&headers(&[("pragma", "no-cache")])).no_cache);
        assert!(!CacheControl::parse(&headers(&[("pragma", "no-cache"), ("cache-control", "max-age=5")])).no_cache);
    }

    #[test]
    fn prefers_s_maxage_then_max_age_then_expires() {
        let none = LifetimeSettings::default();
        assert_eq!(lifetime(&[("cache-control", "max-age=60, s-maxage=10")], none), seconds(10));
        let expires = [("date", "Thu, 01 Jan 2026 00:00:00 GMT"), ("expires", "Thu, 01 Jan 2026 00:05:00 GMT")];
        assert_eq!(lifetime(&expires, none), seconds(300));
        let both = [expires[0], expires[1], ("cache-control", "max-age=60")];
        assert_eq!(lifetime(&both, none), seconds(60));
        assert_eq!(lifetime(&[("expires", "0")], none), seconds(0), "an invalid date is already expired");
    }

    #[test]
    fn gives_heuristic_or_default_lifetimes_only_when_configured() {
        let modified = [("date", "Thu, 01 Jan 2026 00:00:00 GMT"), ("last-modified", "Wed, 31 Dec 2025 00:00:00 GMT")];
        assert_eq!(lifetime(&modified, LifetimeSettings::default()), None);
        let heuristic = LifetimeSettings { heuristic_fraction: Some(0.1), default_ttl: Some(Duration::from_secs(5)) };
        assert_eq!(
            lifetime(&modified, heuristic),
            Some(Lifetime { duration: Duration::from_secs(8640), is_explicit: false }),
            "a tenth of the day since the last change"
        );
        assert_eq!(
            lifetime(&[], heuristic),
            Some(Lifetime { duration: Duration::from_secs(5), is_explicit: false }),
            "no Last-Modified: the default"
        );
        let map = HeaderMap::new();
        let now = SystemTime::now();
        assert_eq!(
            freshness_lifetime(StatusCode::FOUND, &map, &CacheControl::default(), now, &heuristic),
            None,
            "302 is not heuristically cacheable"
        );
    }

    #[test]
    fn computes_the_initial_age_from_age_date_and_delay() {
        let sent = httpdate::parse_http_date("Thu, 01 Jan 2026 00:00:00 GMT").expect("date");
        let received = sent + Duration::from_secs(2);
        let map = headers(&[("age", "10"), ("date", "Thu, 01 Jan 2026 00:00:00 GMT")]);
        assert_eq!(initial_age(&map, sent, received), Duration::from_secs(12), "age plus the response delay");
        let old_date = headers(&[("date", "Wed, 31 Dec 2025 23:59:00 GMT")]);
        assert_eq!(initial_age(&old_date, sent, received), Duration::from_secs(62), "apparent age from Date");
    }

    #[test]
    fn lists_vary_names_and_refuses_vary_star() {
        let names = vary_names(&headers(&[("vary", "Accept-Language, accept-encoding"), ("vary", "Accept-Language")]));
        assert_eq!(
            names,
            Ok(vec![HeaderName::from_static("accept-encoding"), HeaderName::from_static("accept-language")])
        );
        assert_eq!(vary_names(&headers(&[("vary", "accept, *")])), Err(()));
    }

    #[test]
    fn updates_stored_headers_from_a_304_but_not_the_body_length() {
        let stored = headers(&[("etag", "\"v1\""), ("content-length", "100"), ("cache-control", "max-age=1")]);
        let fresh = headers(&[("cache-control", "max-age=60"), ("content-length", "0"), ("x-new", "yes")]);
        let updated = update_headers(&stored, &fresh);
        assert_eq!(updated["cache-control"], "max-age=60");
        assert_eq!(updated["content-length"], "100");
        assert_eq!(updated["x-new"], "yes");
        assert_eq!(updated["etag"], "\"v1\"");
    }

    #[test]
    fn matches_a_304_to_the_stored_response_by_its_validators() {
        let stored = headers(&[("etag", "\"v1\"")]);
        assert!(not_modified_matches(&stored, &headers(&[("etag", "W/\"v1\"")])));
        assert!(!not_modified_matches(&stored, &headers(&[("etag", "\"v2\"")])));
        assert!(not_modified_matches(&stored, &HeaderMap::new()));
    }

    #[test]
    fn answers_the_clients_own_conditionals() {
        let stored = headers(&[("etag", "\"v1\""), ("last-modified", "Wed, 31 Dec 2025 00:00:00 GMT")]);
        assert!(client_has_current_copy(&headers(&[("if-none-match", "\"v0\", W/\"v1\"")]), &stored));
        assert!(!client_has_current_copy(&headers(&[("if-none-match", "\"v0\"")]), &stored));
        assert!(client_has_current_copy(&headers(&[("if-modified-since", "Thu, 01 Jan 2026 00:00:00 GMT")]), &stored));
        assert!(!client_has_current_copy(&headers(&[("if-modified-since", "Tue, 30 Dec 2025 00:00:00 GMT")]), &stored));
        let both = [("if-none-match", "\"v0\""), ("if-modified-since", "Thu, 01 Jan 2026 00:00:00 GMT")];
        assert!(!client_has_current_copy(&headers(&both), &stored), "If-None-Match decides when present");
    }
}
