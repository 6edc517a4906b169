//! One module per policy, each through a running gateway against real upstreams, and
//! `precedence` for how policies attached at different places combine and order.

mod acl;
mod allowed_hours;
mod any_auth;
mod basic_auth;
mod circuit_breaker;
mod concurrency_limit;
mod cors;
mod harness;
mod hmac_auth;
mod ip_restriction;
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
mod traffic_split;
mod user_agent;
mod xml_threat_protection;
mod xsd;
