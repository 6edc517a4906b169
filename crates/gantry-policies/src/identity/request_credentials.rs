//! Where identity policies find a credential in a request, and how they take it out again
//! before the request goes upstream: cookies (RFC 6265 §5.4), query parameters, `Bearer`
//! credentials (RFC 6750 §2.1), and the header, then query parameter, then cookie lookup that
//! `key_auth` and `jwt` are configured with. `oauth2_introspection` and `oidc` (through
//! `bearer`) and `saml` use the same pieces.
//!
//! Runs per request: every lookup borrows from the request; only a query value that had to
//! be percent-decoded is copied. Removal, done once a credential was accepted, rewrites one
//! header or the URI.

use std::borrow::Cow;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::RequestParts;
use http::header::COOKIE;
use http::{HeaderName, HeaderValue};

/// `name=value` pairs of every `Cookie` header, in order (pairs are separated by `; `).
pub(crate) fn cookies(request: &RequestParts) -> impl Iterator<Item = (&str, &str)> {
    request
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
}

/// The value of the first cookie called `name`.
pub(crate) fn cookie<'r>(request: &'r RequestParts, name: &str) -> Option<&'r str> {
    cookie_values(request, name).next()
}

/// Every value of the cookies called `name`, in order.
fn cookie_values<'r, 'n>(request: &'r RequestParts, name: &'n str) -> impl Iterator<Item = &'r str> + use<'r, 'n> {
    cookies(request).filter(move |(key, _)| *key == name).map(|(_, value)| value)
}

/// Removes the cookies called one of `names`, keeping the others in one `Cookie` header; a
/// request with none of them is left as it is.
pub(crate) fn remove_cookies(request: &mut RequestParts, names: &[&str]) {
    if !cookies(request).any(|(key, _)| names.contains(&key)) {
        return;
    }
    let mut kept = String::new();
    for (key, value) in cookies(request).filter(|(key, _)| !names.contains(key)) {
        if !kept.is_empty() {
            kept.push_str("; ");
        }
        kept.push_str(key);
        kept.push('=');
        kept.push_str(value);
    }
    request.headers.remove(COOKIE);
    if !kept.is_empty() {
        // The kept pairs come from header values that were text, so this parses.
        if let Ok(value) = HeaderValue::from_str(&kept) {
            request.headers.insert(COOKIE, value);
        }
    }
}

/// Every value of the query parameter `name`, percent-decoded, in order.
fn query_values<'r, 'n>(request: &'r RequestParts, name: &'n str) -> impl Iterator<Item = Cow<'r, str>> + use<'r, 'n> {
    let query = request.uri.query().unwrap_or_default();
    form_urlencoded::parse(query.as_bytes()).filter(move |(key, _)| key == name).map(|(_, value)| value)
}

/// Removes every query parameter called `name` (however its name is percent-encoded),
/// keeping the other pairs as they were written.
pub(crate) fn remove_query_parameter(request: &mut RequestParts, name: &str) {
    let Some(query) = request.uri.query() else { return };
    let path = request.uri.path();
    let mut path_and_query = String::with_capacity(path.len() + 1 + query.len());
    path_and_query.push_str(path);
    let mut separator = '?';
    for pair in query.split('&') {
        let key = pair.split_once('=').map_or(pair, |(key, _)| key);
        if form_urlencoded::parse(key.as_bytes()).next().is_some_and(|(decoded, _)| decoded == name) {
            continue;
        }
        path_and_query.push(separator);
        path_and_query.push_str(pair);
        separator = '&';
    }
    let mut parts = request.uri.clone().into_parts();
    // The kept pairs are a subset of a query that was valid, so this parses; if it did not,
    // the credential would stay, which the upstream tolerates better than a broken URI.
    if let Ok(path_and_query) = path_and_query.parse() {
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            request.uri = uri;
        }
    }
}

/// The token of a `Bearer` credential (RFC 6750 §2.1); the scheme is case-insensitive
/// (RFC 9110 §11.1). Another scheme, or no token, gives `None`.
pub(crate) fn bearer_token(value: &HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
    let token = token.trim_start();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The token in a header that holds either a whole `Bearer` credential or the bare token.
pub(crate) fn bearer_or_bare_token(value: &HeaderValue) -> Option<&str> {
    bearer_token(value).or_else(|| Some(value.to_str().ok()?.trim()).filter(|token| !token.is_empty()))
}

/// Where a credential was found, so that it can be removed from there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    Header,
    Query,
    Cookie,
}

/// The places a policy looks for its credential, in order: a header, a query parameter, a
/// cookie; each is optional.
#[derive(Debug)]
pub(crate) struct CredentialSource {
    header: Option<HeaderName>,
    query: Option<String>,
    cookie: Option<String>,
}

impl CredentialSource {
    /// The places named by a policy's `header`, `query` and `cookie` settings at `path`. A
    /// header that is not a valid name is reported (and left out); empty names are reported
    /// by [`Self::check_names`].
    pub(crate) fn build(
        header: Option<&str>,
        query: Option<&str>,
        cookie: Option<&str>,
        path: &FieldPath,
        errors: &mut ConfigErrors,
    ) -> Self {
        let header = header.and_then(|name| match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                errors.push(path.key("header"), format!("`{name}` is not a header name"));
                None
            }
        });
        let named = |name: Option<&str>| name.filter(|name| !name.is_empty()).map(str::to_owned);
        Self { header, query: named(query), cookie: named(cookie) }
    }

    /// Reports a `query` or `cookie` setting at `path` that is given but empty.
    pub(crate) fn check_names(query: Option<&str>, cookie: Option<&str>, path: &FieldPath, errors: &mut ConfigErrors) {
        if query.is_some_and(str::is_empty) {
            errors.push(path.key("query"), "name the query parameter, or leave `query` out");
        }
        if cookie.is_some_and(str::is_empty) {
            errors.push(path.key("cookie"), "name the cookie, or leave `cookie` out");
        }
    }

    /// The header looked at first, if any.
    pub(crate) fn header(&self) -> Option<&HeaderName> {
        self.header.as_ref()
    }

    /// An API key: the header's value as it is (a key may hold any bytes a header can carry),
    /// else the first value of the query parameter, else of the cookie. An empty value is a
    /// key too (one that matches nothing), so it is refused rather than taken for no key.
    pub(crate) fn find_key<'r>(&self, request: &'r RequestParts) -> Option<(Cow<'r, [u8]>, Found)> {
        self.find(
            request,
            |value| Some(value.as_bytes()),
            |text| match text {
                Cow::Borrowed(text) => Some(Cow::Borrowed(text.as_bytes())),
                Cow::Owned(text) => Some(Cow::Owned(text.into_bytes())),
            },
        )
    }

    /// A token: what `in_header` reads from the header (such as [`bearer_token`]), else the
    /// first non-empty value of the query parameter, else of the cookie.
    pub(crate) fn find_token<'r>(
        &self,
        request: &'r RequestParts,
        in_header: impl FnOnce(&'r HeaderValue) -> Option<&'r str>,
    ) -> Option<(Cow<'r, str>, Found)> {
        self.find(request, in_header, |text| (!text.is_empty()).then_some(text))
    }

    /// The credential `in_header` reads from the header, else the first query parameter value
    /// and then the first cookie value `in_text` accepts.
    fn find<'r, T: ToOwned + ?Sized + 'r>(
        &self,
        request: &'r RequestParts,
        in_header: impl FnOnce(&'r HeaderValue) -> Option<&'r T>,
        in_text: impl Fn(Cow<'r, str>) -> Option<Cow<'r, T>>,
    ) -> Option<(Cow<'r, T>, Found)> {
        if let Some(value) = self.header.as_ref().and_then(|name| request.headers.get(name)).and_then(in_header) {
            return Some((Cow::Borrowed(value), Found::Header));
        }
        if let Some(value) = self.query.as_deref().and_then(|name| query_values(request, name).find_map(&in_text)) {
            return Some((value, Found::Query));
        }
        let in_cookie = |value: &'r str| in_text(Cow::Borrowed(value));
        if let Some(value) = self.cookie.as_deref().and_then(|name| cookie_values(request, name).find_map(in_cookie)) {
            return Some((value, Found::Cookie));
        }
        None
    }

    /// Removes the credential from where it was found (every value of that name).
    pub(crate) fn remove(&self, request: &mut RequestParts, found: Found) {
        match found {
            Found::Header => {
                if let Some(name) = &self.header {
                    request.headers.remove(name);
                }
            }
            Found::Query => {
                if let Some(name) = &self.query {
                    remove_query_parameter(request, name);
                }
            }
            Found::Cookie => {
                if let Some(name) = &self.cookie {
                    remove_cookies(request, &[name]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
