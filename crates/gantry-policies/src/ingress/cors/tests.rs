use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, run_request};
use gantry_policy_api::RegisteredPolicy;

use super::*;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<Cors>()
}

fn policy(settings: &str) -> Arc<dyn Policy> {
    build_policy(entry(), settings).unwrap_or_else(|errors| panic!("{errors}"))
}

/// `path: message` of every problem of settings that must be rejected.
fn errors(settings: &str) -> Vec<String> {
    build_policy_error(entry(), settings).iter().map(|error| format!("{}: {}", error.path, error.message)).collect()
}

fn preflight(origin: &str, method: &str, headers: Option<&str>) -> http::Request<()> {
    let mut request =
        http::Request::options("/api/items").header("origin", origin).header("access-control-request-method", method);
    if let Some(headers) = headers {
        request = request.header("access-control-request-headers", headers);
    }
    request.body(()).expect("request")
}

fn get_from(origin: Option<&str>) -> http::Request<()> {
    let mut request = http::Request::get("/api/items");
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    request.body(()).expect("request")
}

/// Runs the request hook, then the response hook on the policy's answer or, when it lets the
/// request go on, on `upstream` (as the data plane does), and gives the response head.
fn exchange(policy: &dyn Policy, request: http::Request<()>, upstream: http::Response<()>) -> (bool, ResponseParts) {
    let mut parts = request.into_parts().0;
    let mut exchange = exchange_from("127.0.0.1:1");
    let flow = run_request(policy, &mut parts, &mut exchange);
    let (answered, mut head) = match flow {
        Flow::Respond(response) => (true, response.into_parts().0),
        Flow::Continue => (false, upstream.into_parts().0),
    };
    policy.on_response(&mut head, &mut exchange);
    assert!(exchange.extensions.is_empty(), "the response hook must take what the request hook left");
    (answered, head)
}

fn ok() -> http::Response<()> {
    http::Response::new(())
}

fn header<'a>(head: &'a ResponseParts, name: &str) -> Option<&'a str> {
    head.headers.get(name).map(|value| value.to_str().expect("text"))
}

fn vary(head: &ResponseParts) -> Vec<&str> {
    head.headers.get_all("vary").iter().map(|value| value.to_str().expect("text")).collect()
}

const APP: &str = "allow_origins: [https://app.example.com, \"https://*.preview.example.com\", \"http://localhost:*\"]
allow_methods: [GET, POST, PUT, DELETE]
allow_headers: [apikey, Content-Type]
expose_headers: [x-request-id, RateLimit]
max_age: 10m";

#[test]
fn answers_an_allowed_preflight_itself_with_204_and_every_allowing_header() {
    let policy = policy(APP);
    let (answered, head) =
        exchange(&*policy, preflight("https://app.example.com", "PUT", Some("apikey,content-type")), ok());
    assert!(answered, "a preflight never goes upstream");
    assert_eq!(head.status, StatusCode::NO_CONTENT);
    assert_eq!(header(&head, "access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(header(&head, "access-control-allow-methods"), Some("GET, POST, PUT, DELETE"));
    assert_eq!(header(&head, "access-control-allow-headers"), Some("apikey, content-type"));
    assert_eq!(header(&head, "access-control-max-age"), Some("600"));
    assert_eq!(vary(&head), ["Origin"], "added once, by the preflight, not again by the response hook");
    assert_eq!(header(&head, "access-control-allow-credentials"), None);
    assert_eq!(header(&head, "access-control-expose-headers"), None, "exposing is for actual responses");
}

#[test]
fn refuses_a_preflight_from_an_origin_not_allowed_with_a_403_problem_without_cors_headers() {
    let policy = policy(APP);
    for origin in
        ["https://evil.example", "http://app.example.com", "https://app.example.com.evil.example", "null", "garbage"]
    {
        let (answered, head) = exchange(&*policy, preflight(origin, "GET", None), ok());
        assert!(answered);
        assert_eq!(head.status, StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(header(&head, "content-type"), Some("application/problem+json"));
        assert!(
            head.headers.keys().all(|name| !name.as_str().starts_with("access-control-")),
            "{origin}: {:?}",
            head.headers
        );
    }
}

#[test]
fn refuses_a_preflight_for_a_method_or_header_not_allowed_and_says_which() {
    let policy = policy(APP);
    let mut request = preflight("https://app.example.com", "PATCH", None).into_parts().0;
    let Flow::Respond(response) = run_request(&*policy, &mut request, &mut exchange_from("127.0.0.1:1")) else {
        panic!("answered");
    };
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let problem: serde_json::Value = serde_json::from_slice(response.body()).expect("problem json");
    assert_eq!(problem["type"], "https://gantry.dev/problems/cors-preflight-refused");
    assert_eq!(problem["detail"], "the method PATCH is not allowed");

    let mut request = preflight("https://app.example.com", "PUT", Some("apikey, x-debug")).into_parts().0;
    let Flow::Respond(response) = run_request(&*policy, &mut request, &mut exchange_from("127.0.0.1:1")) else {
        panic!("answered");
    };
    let problem: serde_json::Value = serde_json::from_slice(response.body()).expect("problem json");
    assert_eq!(problem["detail"], "the request header x-debug is not allowed");
}

#[test]
fn always_allows_the_cors_safelisted_methods_as_fetch_does() {
    let policy = policy("allow_origins: [https://app.example.com]\nallow_methods: [PUT]\nallow_headers: [x-token]");
    for method in ["GET", "HEAD", "POST", "PUT"] {
        let (_, head) = exchange(&*policy, preflight("https://app.example.com", method, Some("x-token")), ok());
        assert_eq!(head.status, StatusCode::NO_CONTENT, "{method}");
    }
    let (_, head) = exchange(&*policy, preflight("https://app.example.com", "DELETE", None), ok());
    assert_eq!(head.status, StatusCode::FORBIDDEN);
}

#[test]
fn matches_header_names_case_insensitively_and_ignores_empty_list_items() {
    let policy = policy(APP);
    let (_, head) =
        exchange(&*policy, preflight("https://app.example.com", "POST", Some("Content-Type, , APIKEY")), ok());
    assert_eq!(head.status, StatusCode::NO_CONTENT);
    let (_, head) = exchange(&*policy, preflight("https://app.example.com", "POST", Some("bad header")), ok());
    assert_eq!(head.status, StatusCode::FORBIDDEN);
}

#[test]
fn matches_origin_patterns_by_host_suffix_and_by_any_port() {
    let policy = policy(APP);
    let allowed = [
        "https://pr-12.preview.example.com",
        "https://a.b.preview.example.com",
        "http://localhost:3000",
        "http://localhost",
        "HTTPS://APP.EXAMPLE.COM",
    ];
    for origin in allowed {
        let (_, head) = exchange(&*policy, get_from(Some(origin)), ok());
        assert_eq!(header(&head, "access-control-allow-origin"), Some(origin), "{origin}");
    }
    let refused = [
        "https://preview.example.com",
        "http://pr-12.preview.example.com",
        "https://pr-12.preview.example.com:8443",
        "https://evilpreview.example.com",
        "https://x.preview.example.com.evil.example",
        "https://evil.example/.preview.example.com",
        "https://user@x.preview.example.com",
        "http://localhost.evil.example:3000",
        "https://app.example.com/",
    ];
    for origin in refused {
        let (_, head) = exchange(&*policy, get_from(Some(origin)), ok());
        assert_eq!(header(&head, "access-control-allow-origin"), None, "{origin}");
    }
}

#[test]
fn names_an_allowed_origin_on_the_actual_response_with_exposed_headers_and_vary() {
    let policy = policy(APP);
    let upstream = http::Response::builder().header("vary", "Accept-Encoding").body(()).expect("response");
    let (answered, head) = exchange(&*policy, get_from(Some("https://app.example.com")), upstream);
    assert!(!answered, "an actual request goes on");
    assert_eq!(header(&head, "access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(header(&head, "access-control-expose-headers"), Some("x-request-id, ratelimit"));
    assert_eq!(vary(&head), ["Accept-Encoding", "Origin"]);
    assert_eq!(header(&head, "access-control-allow-credentials"), None);
}

#[test]
fn adds_only_vary_origin_to_a_response_for_no_origin_or_one_not_allowed() {
    let policy = policy(APP);
    for request in [get_from(None), get_from(Some("https://evil.example"))] {
        let (answered, head) = exchange(&*policy, request, ok());
        assert!(!answered);
        assert_eq!(vary(&head), ["Origin"]);
        assert!(head.headers.keys().all(|name| !name.as_str().starts_with("access-control-")), "{:?}", head.headers);
    }
}

#[test]
fn does_not_repeat_vary_when_the_response_already_varies_by_origin_or_everything() {
    let policy = policy(APP);
    for existing in ["origin", "Accept, Origin", "*"] {
        let upstream = http::Response::builder().header("vary", existing).body(()).expect("response");
        let (_, head) = exchange(&*policy, get_from(Some("https://app.example.com")), upstream);
        assert_eq!(vary(&head), [existing]);
    }
}

#[test]
fn replaces_or_drops_the_cors_headers_an_upstream_sent() {
    let policy = policy("allow_origins: [https://app.example.com]");
    let upstream = || {
        http::Response::builder()
            .header("access-control-allow-origin", "*")
            .header("access-control-allow-credentials", "true")
            .header("access-control-expose-headers", "x-secret")
            .body(())
            .expect("response")
    };
    let (_, allowed) = exchange(&*policy, get_from(Some("https://app.example.com")), upstream());
    let origins: Vec<_> = allowed.headers.get_all("access-control-allow-origin").iter().collect();
    assert_eq!(origins, ["https://app.example.com"]);
    assert_eq!(header(&allowed, "access-control-allow-credentials"), None, "credentials were not configured");
    assert_eq!(header(&allowed, "access-control-expose-headers"), None);

    let (_, refused) = exchange(&*policy, get_from(Some("https://evil.example")), upstream());
    assert!(refused.headers.keys().all(|name| !name.as_str().starts_with("access-control-")), "{:?}", refused.headers);
}

#[test]
fn adds_cors_headers_to_answers_of_later_policies() {
    let policy = policy("allow_origins: [https://app.example.com]\nallow_credentials: true");
    let unauthorized = gantry_policy_api::identity::unauthorized("ApiKey", "missing-credentials", "no key");
    let (head, _) = unauthorized.into_parts();
    let mut request = get_from(Some("https://app.example.com")).into_parts().0;
    let mut exchange = exchange_from("127.0.0.1:1");
    assert!(matches!(run_request(&*policy, &mut request, &mut exchange), Flow::Continue));
    let mut head = head;
    policy.on_response(&mut head, &mut exchange);
    assert_eq!(head.status, StatusCode::UNAUTHORIZED);
    assert_eq!(header(&head, "www-authenticate"), Some("ApiKey"));
    assert_eq!(header(&head, "access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(header(&head, "access-control-allow-credentials"), Some("true"));
}

#[test]
fn answers_any_origin_with_a_star_on_every_response_and_no_vary() {
    let policy = policy("allow_origins: [\"*\"]\nexpose_headers: [\"*\"]");
    for request in [get_from(Some("https://anyone.example")), get_from(None)] {
        let (_, head) = exchange(&*policy, request, ok());
        assert_eq!(header(&head, "access-control-allow-origin"), Some("*"));
        assert_eq!(header(&head, "access-control-expose-headers"), Some("*"));
        assert!(vary(&head).is_empty());
    }
    let (_, head) = exchange(&*policy, preflight("https://anyone.example", "PUT", None), ok());
    assert_eq!(head.status, StatusCode::NO_CONTENT);
    assert_eq!(header(&head, "access-control-allow-origin"), Some("*"));
    assert!(vary(&head).is_empty());
}

#[test]
fn echoes_the_requested_method_and_headers_when_any_are_allowed() {
    let policy = policy(
        "allow_origins: [https://app.example.com]\nallow_methods: [\"*\"]\nallow_headers: [\"*\"]\nallow_credentials: true",
    );
    let (_, head) =
        exchange(&*policy, preflight("https://app.example.com", "PURGE", Some("authorization, x-anything")), ok());
    assert_eq!(head.status, StatusCode::NO_CONTENT);
    assert_eq!(header(&head, "access-control-allow-methods"), Some("PURGE"));
    assert_eq!(header(&head, "access-control-allow-headers"), Some("authorization, x-anything"));
    assert_eq!(header(&head, "access-control-allow-credentials"), Some("true"));
    assert_eq!(header(&head, "access-control-allow-origin"), Some("https://app.example.com"));
}

#[test]
fn allows_private_network_access_only_when_configured_and_asked() {
    let with_pna = |settings: &str| {
        let mut request = preflight("https://app.example.com", "GET", None);
        request.headers_mut().insert("access-control-request-private-network", HeaderValue::from_static("true"));
        exchange(&*policy(settings), request, ok()).1
    };
    let allowed = with_pna("allow_origins: [https://app.example.com]\nallow_private_network: true");
    assert_eq!(header(&allowed, "access-control-allow-private-network"), Some("true"));
    let not_configured = with_pna("allow_origins: [https://app.example.com]");
    assert_eq!(not_configured.status, StatusCode::NO_CONTENT, "the rest of the preflight still stands");
    assert_eq!(header(&not_configured, "access-control-allow-private-network"), None);
    let (_, not_asked) = exchange(
        &*policy("allow_origins: [https://app.example.com]\nallow_private_network: true"),
        preflight("https://app.example.com", "GET", None),
        ok(),
    );
    assert_eq!(header(&not_asked, "access-control-allow-private-network"), None);
}

#[test]
fn treats_an_options_request_without_a_requested_method_as_an_actual_request() {
    let policy = policy(APP);
    let request =
        http::Request::options("/api/items").header("origin", "https://app.example.com").body(()).expect("request");
    let (answered, head) = exchange(&*policy, request, ok());
    assert!(!answered, "a plain OPTIONS goes upstream");
    assert_eq!(header(&head, "access-control-allow-origin"), Some("https://app.example.com"));
}

#[test]
fn compares_origins_without_default_ports_and_ipv6_compressed() {
    let policy =
        policy("allow_origins: [\"https://API.example.com:443\", \"http://[0:0::1]:8080\", \"http://10.0.0.1:80\"]");
    for origin in ["https://api.example.com", "http://[::1]:8080", "http://10.0.0.1"] {
        let (_, head) = exchange(&*policy, get_from(Some(origin)), ok());
        assert_eq!(header(&head, "access-control-allow-origin"), Some(origin), "{origin}");
    }
    let (_, head) = exchange(&*policy, get_from(Some("https://api.example.com:8443")), ok());
    assert_eq!(header(&head, "access-control-allow-origin"), None);
}

#[test]
fn defaults_to_the_common_methods_and_nothing_else() {
    let config: Config =
        serde_json::from_value(serde_json::json!({"allow_origins": ["https://a.example"]})).expect("settings");
    assert_eq!(config.allow_methods, ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]);
    assert!(config.allow_headers.is_empty() && config.expose_headers.is_empty());
    assert!(!config.allow_credentials && !config.allow_private_network);
    assert_eq!(config.max_age, None);
}

#[test]
fn rejects_a_star_origin_or_star_exposed_headers_with_credentials() {
    assert_eq!(
        errors("allow_origins: [\"*\"]\nexpose_headers: [\"*\"]\nallow_credentials: true"),
        [
            "global_policies[0].cors.allow_origins[0]: `*` cannot be used with `allow_credentials`: list the origins (patterns such as `https://*.example.com` work)",
            "global_policies[0].cors.expose_headers[0]: with `allow_credentials`, browsers read `*` as a header name: list the headers",
        ]
    );
}

#[test]
fn rejects_bad_origins_at_their_paths() {
    let found = errors(
        "allow_origins: [https://ok.example, \"null\", app.example.com, https://a.example/path, \"https://a.*.example\", \"https://*\", \"http://x.example:99999\", \"ftp ://x\"]",
    );
    let paths: Vec<&str> = found.iter().map(|error| error.split(": ").next().unwrap_or_default()).collect();
    assert_eq!(
        paths,
        (1..=7).map(|index| format!("global_policies[0].cors.allow_origins[{index}]")).collect::<Vec<_>>()
    );
    assert!(found[0].contains("`null` is the origin of sandboxed pages"), "{found:?}");
    assert!(found[1].contains("write `scheme://host[:port]`"), "{found:?}");
    assert!(found[2].contains("an origin has no path: write `https://a.example`"), "{found:?}");
}

#[test]
fn rejects_a_missing_or_empty_origin_list_and_star_mixed_with_other_entries() {
    let missing = build_policy_error(entry(), "allow_methods: [GET]");
    assert!(missing.0[0].message.contains("allow_origins"), "{missing}");
    assert_eq!(
        errors("allow_origins: []"),
        ["global_policies[0].cors.allow_origins: give at least one origin, or `*` for any"]
    );
    assert_eq!(
        errors("allow_origins: [https://a.example, \"*\"]\nallow_methods: [GET, \"*\"]"),
        [
            "global_policies[0].cors.allow_origins[1]: `*` stands for every value: give it alone",
            "global_policies[0].cors.allow_methods[1]: `*` stands for every value: give it alone",
        ]
    );
}

#[test]
fn rejects_bad_method_and_header_names_and_unknown_fields() {
    assert_eq!(
        errors("allow_origins: [https://a.example]\nallow_methods: [\"GE T\"]\nallow_headers: [\"x:y\"]\nexpose_headers: [\"\"]"),
        [
            "global_policies[0].cors.allow_methods[0]: `GE T` is not a method name",
            "global_policies[0].cors.allow_headers[0]: `x:y` is not a header name",
            "global_policies[0].cors.expose_headers[0]: `` is not a header name",
        ]
    );
    let unknown = build_policy_error(entry(), "allow_origins: [https://a.example]\nallow_origin: [x]");
    assert_eq!(unknown.0[0].path.to_string(), "global_policies[0].cors.allow_origin");
}
