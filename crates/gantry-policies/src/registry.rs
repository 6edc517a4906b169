//! The one list of every policy Gantry knows, in stage order.
//!
//! The control plane builds each configured policy through [`find`]; the docs index and the
//! admin API's JSON Schemas are generated from [`all`]. No other list of policies exists:
//! adding a policy adds one line here.

use std::sync::LazyLock;

use gantry_policy_api::RegisteredPolicy;

use crate::access::acl::Acl;
use crate::access::allowed_hours::AllowedHours;
use crate::access::scopes::Scopes;
use crate::ai::ai_pii_redaction::AiPiiRedaction;
use crate::ai::ai_prompt_decorator::AiPromptDecorator;
use crate::ai::ai_prompt_guard::AiPromptGuard;
use crate::ai::ai_prompt_template::AiPromptTemplate;
use crate::ai::ai_proxy::AiProxy;
use crate::ai::ai_rate_limit::AiRateLimit;
use crate::ai::ai_response_cache::AiResponseCache;
use crate::ai::ai_semantic_cache::AiSemanticCache;
use crate::forward::aggregate::Aggregate;
use crate::forward::mock_response::MockResponse;
use crate::forward::request_mirror::RequestMirror;
use crate::forward::response_cache::ResponseCache;
use crate::forward::traffic_split::TrafficSplit;
use crate::identity::any_auth::AnyAuth;
use crate::identity::basic_auth::BasicAuth;
use crate::identity::hmac_auth::HmacAuth;
use crate::identity::jwt::Jwt;
use crate::identity::key_auth::KeyAuth;
use crate::identity::ldap_auth::LdapAuth;
use crate::identity::mtls_auth::MtlsAuth;
use crate::identity::oauth2_introspection::OAuth2Introspection;
use crate::identity::oidc::Oidc;
use crate::identity::saml::Saml;
use crate::ingress::cors::Cors;
use crate::ingress::ip_restriction::IpRestriction;
use crate::ingress::redirect::Redirect;
use crate::ingress::user_agent::UserAgent;
use crate::traffic::circuit_breaker::CircuitBreaker;
use crate::traffic::concurrency_limit::ConcurrencyLimit;
use crate::traffic::quota::Quota;
use crate::traffic::rate_limit::RateLimit;
use crate::traffic::request_size_limit::RequestSizeLimit;
use crate::transform::body_transform::BodyTransform;
use crate::transform::jolt::Jolt;
use crate::transform::json_to_xml::JsonToXml;
use crate::transform::proxy_rewrite::ProxyRewrite;
use crate::transform::request_headers::RequestHeaders;
use crate::transform::response_headers::ResponseHeaders;
use crate::transform::rest_to_soap::RestToSoap;
use crate::transform::script::Script;
use crate::transform::soap_to_rest::SoapToRest;
use crate::transform::xml_to_json::XmlToJson;
use crate::transform::xslt::Xslt;
use crate::validate::json_schema::JsonSchemaPolicy;
use crate::validate::json_threat_protection::JsonThreatProtection;
use crate::validate::openapi_validation::OpenApiValidation;
use crate::validate::xml_threat_protection::XmlThreatProtection;
use crate::validate::xsd::Xsd;

static POLICIES: LazyLock<Vec<RegisteredPolicy>> = LazyLock::new(|| {
    vec![
        RegisteredPolicy::of::<Cors>(),
        RegisteredPolicy::of::<Redirect>(),
        RegisteredPolicy::of::<IpRestriction>(),
        RegisteredPolicy::of::<UserAgent>(),
        RegisteredPolicy::identity::<KeyAuth>(),
        RegisteredPolicy::identity::<LdapAuth>(),
        RegisteredPolicy::identity::<MtlsAuth>(),
        RegisteredPolicy::identity::<BasicAuth>(),
        RegisteredPolicy::identity::<HmacAuth>(),
        RegisteredPolicy::identity::<Jwt>(),
        RegisteredPolicy::identity::<OAuth2Introspection>(),
        RegisteredPolicy::identity::<Oidc>(),
        RegisteredPolicy::of::<Saml>(),
        RegisteredPolicy::of::<AnyAuth>(),
        RegisteredPolicy::of::<Acl>(),
        RegisteredPolicy::of::<Scopes>(),
        RegisteredPolicy::of::<AllowedHours>(),
        RegisteredPolicy::of::<RateLimit>(),
        RegisteredPolicy::of::<Quota>(),
        RegisteredPolicy::of::<AiRateLimit>(),
        RegisteredPolicy::of::<RequestSizeLimit>(),
        RegisteredPolicy::of::<ConcurrencyLimit>(),
        RegisteredPolicy::of::<CircuitBreaker>(),
        RegisteredPolicy::of::<ProxyRewrite>(),
        RegisteredPolicy::of::<RequestHeaders>(),
        RegisteredPolicy::of::<ResponseHeaders>(),
        RegisteredPolicy::of::<BodyTransform>(),
        RegisteredPolicy::of::<Jolt>(),
        RegisteredPolicy::of::<JsonToXml>(),
        RegisteredPolicy::of::<XmlToJson>(),
        RegisteredPolicy::of::<Xslt>(),
        RegisteredPolicy::of::<RestToSoap>(),
        RegisteredPolicy::of::<SoapToRest>(),
        RegisteredPolicy::of::<Script>(),
        RegisteredPolicy::of::<AiPromptTemplate>(),
        RegisteredPolicy::of::<AiPromptDecorator>(),
        RegisteredPolicy::of::<AiPiiRedaction>(),
        RegisteredPolicy::of::<JsonThreatProtection>(),
        RegisteredPolicy::of::<XmlThreatProtection>(),
        RegisteredPolicy::of::<JsonSchemaPolicy>(),
        RegisteredPolicy::of::<OpenApiValidation>(),
        RegisteredPolicy::of::<Xsd>(),
        RegisteredPolicy::of::<AiPromptGuard>(),
        RegisteredPolicy::of::<TrafficSplit>(),
        RegisteredPolicy::of::<RequestMirror>(),
        RegisteredPolicy::of::<ResponseCache>(),
        RegisteredPolicy::of::<AiResponseCache>(),
        RegisteredPolicy::of::<AiSemanticCache>(),
        RegisteredPolicy::of::<MockResponse>(),
        RegisteredPolicy::of::<Aggregate>(),
        RegisteredPolicy::of::<AiProxy>(),
    ]
});

/// Every registered policy, in stage order.
pub fn all() -> &'static [RegisteredPolicy] {
    &POLICIES
}

/// The policy registered as `name`, if any.
pub fn find(name: &str) -> Option<RegisteredPolicy> {
    // A linear scan: the list is short and this runs at config compile time only.
    all().iter().find(|policy| policy.name == name).copied()
}

#[cfg(test)]
mod tests;
