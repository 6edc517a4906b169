//! One module per policy, each through a running gateway against real upstreams, and
//! `precedence` for how policies attached at different places combine and order.

mod acl;
mod aggregate;
mod ai_gateway;
mod ai_pii_redaction;
mod ai_prompt_decorator;
mod ai_prompt_guard;
mod ai_prompt_template;
mod ai_providers_cloud;
mod ai_providers_google_cohere;
mod ai_providers_vertex;
mod ai_proxy;
mod ai_rate_limit;
mod allowed_hours;
mod any_auth;
mod basic_auth;
mod body_transform;
mod circuit_breaker;
mod concurrency_limit;
mod cors;
mod harness;
mod hmac_auth;
mod ip_restriction;
mod jolt;
mod json_schema;
mod json_threat_protection;
mod jwt;
mod key_auth;
mod ldap_auth;
mod mock_response;
mod mtls_auth;
mod oauth2_introspection;
mod oidc;
mod openapi_validation;
mod precedence;
mod proxy_rewrite;
mod quota;
mod rate_limit;
mod redirect;
mod request_headers;
mod request_mirror;
mod request_size_limit;
mod response_cache;
mod response_headers;
mod saml;
mod scopes;
mod script;
mod soap;
mod traffic_split;
mod user_agent;
mod xml_json;
mod xml_threat_protection;
mod xsd;
// The policy exists only in a gateway built with `--features xslt` (libxslt).
#[cfg(feature = "xslt")]
mod xslt;
