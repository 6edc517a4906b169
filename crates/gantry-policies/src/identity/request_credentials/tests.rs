use std::borrow::Cow;

use gantry_config::{ConfigErrors, FieldPath};
use http::header::{AUTHORIZATION, COOKIE};
use http::HeaderValue;

use super::*;

fn request(uri: &str, headers: &[(&str, &str)]) -> RequestParts {
    let mut builder = http::Request::get(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("request").into_parts().0
}

fn source(header: Option<&str>, query: Option<&str>, cookie: Option<&str>) -> CredentialSource {
    let mut errors = ConfigErrors::default();
    let source = CredentialSource::build(header, query, cookie, &path(), &mut errors);
    assert!(errors.is_empty(), "{errors}");
    source
}

fn path() -> FieldPath {
    FieldPath::root().key("policy")
}

fn messages(errors: &ConfigErrors) -> Vec<String> {
    errors.iter().map(|error| format!("{}: {}", error.path, error.message)).collect()
}

fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("header value")
}

#[test]
fn reads_cookies_from_every_cookie_header_and_gives_the_first_of_a_name() {
    let request = request("/", &[("cookie", "theme=dark; session=one"), ("cookie", "session=two;lang=en")]);
    let all: Vec<_> = cookies(&request).collect();
    assert_eq!(all, [("theme", "dark"), ("session", "one"), ("session", "two"), ("lang", "en")]);
    assert_eq!(cookie(&request, "session"), Some("one"));
    assert_eq!(cookie(&request, "lang"), Some("en"));
    assert_eq!(cookie(&request, "missing"), None);
}

#[test]
fn skips_cookie_pairs_without_a_value_separator() {
    let request = request("/", &[("cookie", "flag; session=abc")]);
    assert_eq!(cookie(&request, "flag"), None);
    assert_eq!(cookie(&request, "session"), Some("abc"));
}

#[test]
fn removes_the_named_cookies_and_joins_the_others_into_one_header() {
    let mut request = request("/", &[("cookie", "a=1; token=x"), ("cookie", "b=2; login=y; token=z")]);
    remove_cookies(&mut request, &["token", "login"]);
    let values: Vec<_> = request.headers.get_all(COOKIE).iter().collect();
    assert_eq!(values, [&value("a=1; b=2")]);
}

#[test]
fn removes_the_cookie_header_when_no_cookie_is_left() {
    let mut request = request("/", &[("cookie", "token=x")]);
    remove_cookies(&mut request, &["token"]);
    assert!(request.headers.get(COOKIE).is_none());
}

#[test]
fn leaves_cookie_headers_untouched_when_none_of_the_names_is_there() {
    let mut request = request("/", &[("cookie", "a=1"), ("cookie", "b=2")]);
    remove_cookies(&mut request, &["token"]);
    assert_eq!(request.headers.get_all(COOKIE).iter().count(), 2, "not rewritten");
}

#[test]
fn removes_every_value_of_a_query_parameter_however_its_name_is_encoded() {
    let mut request = request("/orders?page=2&api%5Fkey=a&api_key=b&sort=asc", &[]);
    remove_query_parameter(&mut request, "api_key");
    assert_eq!(request.uri.path_and_query().map(|path| path.as_str()), Some("/orders?page=2&sort=asc"));
}

#[test]
fn drops_the_question_mark_when_the_removed_parameter_was_the_only_one() {
    let mut request = request("http://gateway.test/orders?api_key=a", &[]);
    remove_query_parameter(&mut request, "api_key");
    assert_eq!(request.uri.to_string(), "http://gateway.test/orders");
}

#[test]
fn keeps_the_other_pairs_as_written() {
    let mut request = request("/orders?q=a%20b+c&api_key=x&flag", &[]);
    remove_query_parameter(&mut request, "api_key");
    assert_eq!(request.uri.query(), Some("q=a%20b+c&flag"));
}

#[test]
fn reads_a_bearer_token_with_any_case_of_the_scheme() {
    assert_eq!(bearer_token(&value("Bearer abc.def")), Some("abc.def"));
    assert_eq!(bearer_token(&value("bearer  abc")), Some("abc"));
    assert_eq!(bearer_token(&value("BEARER abc")), Some("abc"));
}

#[test]
fn finds_no_bearer_token_in_other_schemes_or_an_empty_credential() {
    assert_eq!(bearer_token(&value("Basic YWxpY2U6cHc=")), None);
    assert_eq!(bearer_token(&value("Bearer")), None);
    assert_eq!(bearer_token(&value("Bearer   ")), None);
    assert_eq!(bearer_token(&value("abc.def")), None);
}

#[test]
fn reads_a_bare_token_where_a_header_need_not_name_the_scheme() {
    assert_eq!(bearer_or_bare_token(&value("Bearer abc")), Some("abc"));
    assert_eq!(bearer_or_bare_token(&value("abc.def")), Some("abc.def"));
    assert_eq!(bearer_or_bare_token(&value("")), None);
}

#[test]
fn finds_a_key_in_the_header_first_then_the_query_then_the_cookie() {
    let everywhere = source(Some("apikey"), Some("api_key"), Some("key"));
    let all = request("/?api_key=from-query", &[("apikey", "from-header"), ("cookie", "key=from-cookie")]);
    assert_eq!(everywhere.find_key(&all), Some((Cow::Borrowed(&b"from-header"[..]), Found::Header)));
    let no_header = request("/?api_key=from-query", &[("cookie", "key=from-cookie")]);
    assert_eq!(everywhere.find_key(&no_header), Some((Cow::Borrowed(&b"from-query"[..]), Found::Query)));
    let cookie_only = request("/", &[("cookie", "key=from-cookie")]);
    assert_eq!(everywhere.find_key(&cookie_only), Some((Cow::Borrowed(&b"from-cookie"[..]), Found::Cookie)));
    assert_eq!(everywhere.find_key(&request("/", &[])), None);
}

#[test]
fn borrows_a_key_from_the_request_unless_it_had_to_be_decoded() {
    let source = source(None, Some("api_key"), None);
    let plain = request("/?api_key=abc", &[]);
    assert!(matches!(source.find_key(&plain), Some((Cow::Borrowed(b"abc"), Found::Query))));
    let encoded = request("/?api_key=a%2Bb", &[]);
    assert!(matches!(source.find_key(&encoded), Some((Cow::Owned(key), Found::Query)) if key == b"a+b"));
}

#[test]
fn takes_an_empty_key_as_presented_so_it_is_refused_not_ignored() {
    let source = source(Some("apikey"), Some("api_key"), None);
    let empty_query = request("/?api_key=", &[]);
    assert_eq!(source.find_key(&empty_query), Some((Cow::Borrowed(&b""[..]), Found::Query)));
    let empty_header = request("/?api_key=x", &[("apikey", "")]);
    assert_eq!(source.find_key(&empty_header), Some((Cow::Borrowed(&b""[..]), Found::Header)));
}

#[test]
fn reads_a_key_of_bytes_that_are_not_text() {
    let source = source(Some("apikey"), None, None);
    let mut request = request("/", &[]);
    request.headers.insert("apikey", HeaderValue::from_bytes(b"k\xe9y").expect("opaque header value"));
    assert_eq!(source.find_key(&request), Some((Cow::Borrowed(&b"k\xe9y"[..]), Found::Header)));
}

#[test]
fn finds_a_token_with_the_given_header_reader_and_skips_empty_values() {
    let source = source(Some("authorization"), Some("access_token"), Some("jwt"));
    let basic = request("/?access_token=&access_token=from-query", &[("authorization", "Basic YQ==")]);
    assert_eq!(source.find_token(&basic, bearer_token), Some((Cow::Borrowed("from-query"), Found::Query)));
    let cookies = request("/", &[("cookie", "jwt=; jwt=from-cookie")]);
    assert_eq!(source.find_token(&cookies, bearer_token), Some((Cow::Borrowed("from-cookie"), Found::Cookie)));
    let bearer = request("/?access_token=from-query", &[("authorization", "Bearer from-header")]);
    assert_eq!(source.find_token(&bearer, bearer_token), Some((Cow::Borrowed("from-header"), Found::Header)));
    assert_eq!(source.find_token(&request("/?access_token=", &[]), bearer_token), None);
}

#[test]
fn removes_the_credential_from_where_it_was_found_only() {
    let source = source(Some("apikey"), Some("api_key"), Some("key"));
    let headers = [("apikey", "h"), ("cookie", "key=c; theme=dark")];
    let cases = [
        (Found::Header, None, Some("key=c; theme=dark"), Some("api_key=q&page=2")),
        (Found::Query, Some("h"), Some("key=c; theme=dark"), Some("page=2")),
        (Found::Cookie, Some("h"), Some("theme=dark"), Some("api_key=q&page=2")),
    ];
    for (found, header, cookie, query) in cases {
        let mut request = request("/?api_key=q&page=2", &headers);
        source.remove(&mut request, found);
        assert_eq!(request.headers.get("apikey").map(|value| value.to_str().expect("text")), header, "{found:?}");
        assert_eq!(request.headers.get(COOKIE).map(|value| value.to_str().expect("text")), cookie, "{found:?}");
        assert_eq!(request.uri.query(), query, "{found:?}");
    }
}

#[test]
fn reports_a_bad_header_name_and_leaves_the_header_out() {
    let mut errors = ConfigErrors::default();
    let source = CredentialSource::build(Some("bad header"), None, None, &path(), &mut errors);
    assert_eq!(messages(&errors), ["policy.header: `bad header` is not a header name"]);
    assert!(source.header().is_none());
    assert_eq!(source.find_key(&request("/", &[("authorization", "x")])), None);
}

#[test]
fn reports_empty_query_and_cookie_names_at_their_paths() {
    let mut errors = ConfigErrors::default();
    CredentialSource::check_names(Some(""), Some(""), &path(), &mut errors);
    assert_eq!(
        messages(&errors),
        [
            "policy.query: name the query parameter, or leave `query` out",
            "policy.cookie: name the cookie, or leave `cookie` out"
        ]
    );
    let mut fine = ConfigErrors::default();
    CredentialSource::check_names(Some("token"), None, &path(), &mut fine);
    assert!(fine.is_empty());
}

#[test]
fn names_the_header_it_looks_at() {
    assert_eq!(source(Some("Authorization"), None, None).header(), Some(&AUTHORIZATION));
}
