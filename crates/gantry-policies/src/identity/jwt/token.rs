//! Where a `jwt` policy finds the token in a request, and how it removes it again.

use std::borrow::Cow;

use gantry_policy_api::RequestParts;
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderName, HeaderValue};

/// The places a token is looked for, in order: a header, a query parameter, a cookie.
#[derive(Debug)]
pub(super) struct TokenSource {
    pub(super) header: HeaderName,
    pub(super) query: Option<String>,
    pub(super) cookie: Option<String>,
}

/// Where the token was found, so it can be removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Found {
    Header,
    Query,
    Cookie,
}

impl TokenSource {
    /// The token and where it was, if the request carries one.
    pub(super) fn find<'r>(&self, request: &'r RequestParts) -> Option<(Cow<'r, str>, Found)> {
        if let Some(token) = request.headers.get(&self.header).and_then(|value| self.token_in(value)) {
            return Some((Cow::Borrowed(token), Found::Header));
        }
        if let Some(name) = &self.query {
            let query = request.uri.query().unwrap_or_default();
            if let Some((_, value)) = form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name) {
                if !value.is_empty() {
                    return Some((value, Found::Query));
                }
            }
        }
        if let Some(name) = &self.cookie {
            if let Some((_, value)) = cookies(request).find(|(key, value)| key == name && !value.is_empty()) {
                return Some((Cow::Borrowed(value), Found::Cookie));
            }
        }
        None
    }

    /// `Authorization: Bearer <token>` (RFC 6750 §2.1; the scheme is case-insensitive), or the
    /// bare token in any other header. An `Authorization` header of another scheme carries no
    /// bearer token.
    fn token_in<'r>(&self, value: &'r HeaderValue) -> Option<&'r str> {
        let value = value.to_str().ok()?.trim();
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim_start(),
            _ if self.header == AUTHORIZATION => return None,
            _ => value,
        };
        (!token.is_empty()).then_some(token)
    }

    /// Removes the token from where it was found.
    pub(super) fn remove(&self, request: &mut RequestParts, found: Found) {
        match found {
            Found::Header => {
                request.headers.remove(&self.header);
            }
            Found::Query => {
                if let Some(name) = &self.query {
                    remove_query_parameter(request, name);
                }
            }
            Found::Cookie => {
                if let Some(name) = &self.cookie {
                    remove_cookie(request, name);
                }
            }
        }
    }
}

/// `name=value` pairs of every `Cookie` header (RFC 6265 §5.4: pairs are separated by `; `).
fn cookies(request: &RequestParts) -> impl Iterator<Item = (&str, &str)> {
    request
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
}

fn remove_cookie(request: &mut RequestParts, name: &str) {
    let kept: Vec<String> =
        cookies(request).filter(|(key, _)| *key != name).map(|(key, value)| format!("{key}={value}")).collect();
    request.headers.remove(COOKIE);
    if !kept.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
            request.headers.insert(COOKIE, value);
        }
    }
}

fn remove_query_parameter(request: &mut RequestParts, name: &str) {
    let Some(query) = request.uri.query() else { return };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(key, _)| key);
            form_urlencoded::parse(key.as_bytes()).next().is_none_or(|(decoded, _)| decoded != name)
        })
        .collect();
    let path = request.uri.path();
    let path_and_query = if kept.is_empty() { path.to_owned() } else { format!("{path}?{}", kept.join("&")) };
    let mut parts = request.uri.clone().into_parts();
    // The kept pairs are a subset of a query that was valid, so this parses; if it did not,
    // the token would stay, which the upstream tolerates better than a broken URI.
    if let Ok(path_and_query) = path_and_query.parse() {
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            request.uri = uri;
        }
    }
}
