#![doc = include_str!("saml.md")]

mod metadata;
mod request;
mod response;
mod seal;
mod xml;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration as StdDuration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bergshamra_dsig::DsigContext;
use bergshamra_keys::KeysManager;
use bytes::Bytes;
use gantry_config::{ConfigErrors, Duration, FieldPath, Secret};
use gantry_policy_api::identity::unauthorized;
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{
    BuildContext, Consumer, Exchange, Flow, Hook, Hooks, Identity, Policy, PolicyFactory, PolicyResponse, RequestBody,
    RequestParts, Stage, Validate,
};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST, LOCATION, SET_COOKIE};
use http::{HeaderValue, Method, StatusCode};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use self::metadata::{parse_certificate, parse_metadata, IdpMetadata};
use self::response::{check_response, Expected};
use self::seal::{Purpose, Sealer};
use super::request_credentials::{cookie, remove_cookies};

/// Settings of `saml`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The IdP's SAML metadata: the XML itself (starting with `<`), or the path of a file
    /// holding it. Gives the entity id, the HTTP-Redirect single sign-on URL and the signing
    /// certificates; the three `idp_*` fields below override what it says.
    #[serde(default)]
    pub idp_metadata: Option<String>,
    /// The IdP's entity id, the Issuer its assertions must name.
    #[serde(default)]
    pub idp_entity_id: Option<String>,
    /// The IdP's single sign-on URL for the HTTP-Redirect binding.
    #[serde(default)]
    pub idp_sso_url: Option<String>,
    /// Certificates the IdP signs with (PEM, or the bare base64 DER found in metadata). More
    /// than one during a rollover: a signature by any of them is accepted.
    #[serde(default)]
    pub idp_certificates: Vec<String>,
    /// This service provider's entity id, the Audience assertions must name.
    pub sp_entity_id: String,
    /// Path on the route that receives the IdP's answer (HTTP-POST binding).
    #[serde(default = "default_acs_path")]
    pub acs_path: String,
    /// The public origin of the gateway (`https://app.example.com`), used to build the ACS
    /// URL sent to the IdP and checked in its answer. Without it, the request's `Host` and
    /// whether it came over TLS are used.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Secret the session, pending-login and `RelayState` keys are derived from; at least 32
    /// bytes. Every gateway node of a route must share it.
    pub session_secret: Secret<String>,
    /// Name of the session cookie; the pending-login cookie is this name with `_request`.
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
    /// How long a session lasts, unless the IdP's `SessionNotOnOrAfter` is sooner.
    #[serde(default = "default_session_ttl")]
    pub session_ttl: Duration,
    /// Attribute whose first value is the consumer id; the assertion's NameID by default.
    #[serde(default)]
    pub attribute_for_consumer: Option<String>,
    /// Attribute whose values are the consumer's groups (matched by `Name` or `FriendlyName`).
    #[serde(default)]
    pub attribute_for_groups: Option<String>,
    /// How far the IdP's clock may be off when checking validity times.
    #[serde(default = "default_allowed_clock_skew")]
    pub allowed_clock_skew: Duration,
    /// Path on the route that ends the session here (clears the cookie; the IdP session stays).
    #[serde(default)]
    pub logout_path: Option<String>,
}

fn default_acs_path() -> String {
    "/saml/acs".to_owned()
}

fn default_cookie_name() -> String {
    "gantry_saml".to_owned()
}

fn default_session_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}

fn default_allowed_clock_skew() -> Duration {
    Duration::from_secs(60)
}

/// How long a browser has to come back from the IdP.
const LOGIN_TIMEOUT: StdDuration = StdDuration::from_secs(600);
/// The largest `SAMLResponse` form field accepted, base64 included.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Browsers drop cookies longer than about 4 KiB (RFC 6265 §6.1 asks for at least 4096 bytes).
const MAX_COOKIE_BYTES: usize = 4000;

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.sp_entity_id.trim().is_empty() {
            errors.push(path.key("sp_entity_id"), "must not be empty");
        }
        if self.session_secret.expose().len() < 32 {
            errors.push(path.key("session_secret"), "must be at least 32 bytes long");
        }
        for (field, value) in [("acs_path", Some(&self.acs_path)), ("logout_path", self.logout_path.as_ref())] {
            if let Some(value) = value {
                if !value.starts_with('/') || value.parse::<http::uri::PathAndQuery>().is_err() || value.contains('?') {
                    errors.push(path.key(field), "must be a path starting with `/`, without a query");
                }
            }
        }
        if self.logout_path.as_ref() == Some(&self.acs_path) {
            errors.push(path.key("logout_path"), "must differ from `acs_path`");
        }
        if self.cookie_name.is_empty()
            || !self.cookie_name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
        {
            errors.push(path.key("cookie_name"), "must be a cookie name: letters, digits and `-_.` only");
        }
        if self.session_ttl.get().is_zero() {
            errors.push(path.key("session_ttl"), "must be longer than 0s");
        }
        if let Some(base_url) = &self.base_url {
            if origin(base_url).is_none() {
                errors.push(path.key("base_url"), "must be an origin such as `https://app.example.com`");
            }
        }
        for (field, value) in [
            ("attribute_for_consumer", &self.attribute_for_consumer),
            ("attribute_for_groups", &self.attribute_for_groups),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                errors.push(path.key(field), "name the attribute, or leave it out");
            }
        }
    }
}

/// `scheme://authority` of an http(s) URL without path, query or fragment.
fn origin(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str().filter(|scheme| matches!(*scheme, "http" | "https"))?;
    let authority = uri.authority()?;
    let path = uri.path_and_query().map_or("", |path| path.as_str());
    (path.is_empty() || path == "/").then(|| format!("{scheme}://{authority}"))
}

/// Factory of the `saml` policy.
#[derive(Debug)]
pub struct Saml;

impl PolicyFactory for Saml {
    const NAME: &'static str = "saml";
    const STAGE: Stage = Stage::Identity;
    const DOCS: &'static str = include_str!("saml.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        Ok(Arc::new(compile(config, path, context)?))
    }
}

/// Checks what `validate` cannot (metadata, certificates, URLs) and builds the runtime form.
fn compile(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<CompiledSaml, ConfigErrors> {
    {
        let mut errors = ConfigErrors::default();
        let metadata = match &config.idp_metadata {
            Some(source) => read_metadata(source).unwrap_or_else(|reason| {
                errors.push(path.key("idp_metadata"), reason);
                IdpMetadata::default()
            }),
            None => IdpMetadata::default(),
        };
        let entity_id = config.idp_entity_id.clone().or(metadata.entity_id);
        if entity_id.as_deref().is_none_or(str::is_empty) {
            errors.push(path.key("idp_entity_id"), "name the IdP's entity id, here or through `idp_metadata`");
        }
        let sso_url = config.idp_sso_url.clone().or(metadata.sso_url);
        match sso_url.as_deref().map(origin_of_url) {
            None => errors.push(
                path.key("idp_sso_url"),
                "name the IdP's HTTP-Redirect single sign-on URL, here or through `idp_metadata`",
            ),
            Some(false) => errors.push(path.key("idp_sso_url"), "must be an http or https URL"),
            Some(true) => {}
        }
        let mut certificates = Vec::new();
        let mut has_bad_certificate = false;
        for (index, text) in config.idp_certificates.iter().enumerate() {
            match parse_certificate(text) {
                Ok(der) => certificates.push(der),
                Err(reason) => {
                    has_bad_certificate = true;
                    errors.push(path.key("idp_certificates").index(index), reason);
                }
            }
        }
        if certificates.is_empty() {
            certificates = metadata.certificates;
        }
        if certificates.is_empty() && !has_bad_certificate {
            errors.push(
                path.key("idp_certificates"),
                "name at least one IdP signing certificate, here or through `idp_metadata`",
            );
        }
        let mut keys = KeysManager::new();
        for der in &certificates {
            // Each was read once by `parse_certificate`.
            if let Ok(key) = bergshamra_keys::loader::load_x509_cert_der(der) {
                keys.add_key(key);
            }
        }
        errors.into_result(())?;
        let (Some(idp_entity_id), Some(idp_sso_url)) = (entity_id, sso_url) else {
            return Err(ConfigErrors::one(path.clone(), "the IdP is not fully described"));
        };
        let consumers =
            context.consumers.consumers().iter().map(|consumer| (consumer.id.clone(), consumer.clone())).collect();
        let request_cookie = format!("{}_request", config.cookie_name);
        Ok(CompiledSaml {
            idp_entity_id,
            idp_sso_url,
            // Trusted keys only (keys carried by the message are ignored) and strict reference
            // positions: bergshamra's secure defaults.
            verifier: DsigContext::new(keys),
            sp_entity_id: config.sp_entity_id,
            base_url: config.base_url.as_deref().and_then(origin),
            sealer: Sealer::new(config.session_secret.expose().as_bytes()),
            acs_path: config.acs_path,
            logout_path: config.logout_path,
            cookie_name: config.cookie_name,
            request_cookie,
            session_ttl: config.session_ttl.get(),
            consumer_attribute: config.attribute_for_consumer,
            groups_attribute: config.attribute_for_groups,
            skew: config.allowed_clock_skew.get(),
            consumers,
        })
    }
}

fn origin_of_url(url: &str) -> bool {
    url.parse::<http::Uri>()
        .ok()
        .is_some_and(|uri| matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some())
}

/// Metadata given inline (it starts with `<`) or as a file path.
fn read_metadata(source: &str) -> Result<IdpMetadata, String> {
    let trimmed = source.trim_start();
    if trimmed.starts_with('<') {
        return parse_metadata(trimmed);
    }
    let text = std::fs::read_to_string(source).map_err(|err| format!("cannot read `{source}`: {err}"))?;
    parse_metadata(&text).map_err(|reason| format!("`{source}` {reason}"))
}

/// Runs per request: a cookie lookup and one AES-GCM open for a browser with a session.
struct CompiledSaml {
    idp_entity_id: String,
    idp_sso_url: String,
    verifier: DsigContext,
    sp_entity_id: String,
    base_url: Option<String>,
    sealer: Sealer,
    acs_path: String,
    logout_path: Option<String>,
    cookie_name: String,
    request_cookie: String,
    session_ttl: StdDuration,
    consumer_attribute: Option<String>,
    groups_attribute: Option<String>,
    skew: StdDuration,
    consumers: HashMap<Arc<str>, Arc<Consumer>>,
}

/// The session cookie's sealed content.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Session {
    /// Consumer id.
    sub: String,
    /// Groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    exp: u64,
}

/// The pending-login cookie's sealed content.
#[derive(Debug, Serialize, Deserialize)]
struct PendingLogin {
    /// The AuthnRequest id.
    id: String,
    /// Expiry, seconds since the Unix epoch.
    exp: u64,
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

impl Policy for CompiledSaml {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn reads_request_body(&self) -> bool {
        true
    }

    /// Only the identity provider's POST to the ACS is read, and only up to the size a signed
    /// response plausibly has.
    fn request_body_limit(&self, request: &RequestParts) -> Option<u64> {
        (request.method == Method::POST && request.uri.path() == self.acs_path).then_some(MAX_ACS_FORM_BYTES)
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let path = request.uri.path();
        if path == self.acs_path {
            if request.method != Method::POST {
                let mut response = problem_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method-not-allowed",
                    "Method Not Allowed",
                    Some("the assertion consumer service takes the identity provider's POST"),
                );
                response.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static("POST"));
                return response.into();
            }
            return match request_form(request, exchange) {
                Some(form) => self.consume(&form, request, exchange.is_tls, SystemTime::now()).into(),
                // The data plane reads every ACS POST for this policy; this is only reached if
                // a body never came (a broken client), which is the client's fault.
                None => problem_response(
                    StatusCode::BAD_REQUEST,
                    "invalid-saml-response",
                    "Bad Request",
                    Some("the POST carries no form"),
                )
                .into(),
            };
        }
        if self.logout_path.as_deref() == Some(path) {
            return self.logout(request, exchange.is_tls).into();
        }
        let now = SystemTime::now();
        if let Some(session) = self.session(request, now) {
            let consumer = self.consumer(session);
            let credential_id: Arc<str> = format!("{}:{}", consumer.id, Saml::NAME).into();
            exchange.authenticate(Identity::credential(consumer, credential_id, Saml::NAME));
            // The sealed session means nothing upstream; it stays between browser and gateway.
            remove_cookies(request, &[&self.cookie_name, &self.request_cookie]);
            return Flow::Continue.into();
        }
        if request.method == Method::GET || request.method == Method::HEAD {
            return self.start_login(request, exchange.is_tls, now).into();
        }
        unauthorized("SAML", "missing-credentials", "no SAML session; sign in with a GET request first").into()
    }
}

/// Largest ACS form read: a signed response with a certificate and many attributes stays well
/// under it; more is refused (413) before any parsing.
const MAX_ACS_FORM_BYTES: u64 = 512 * 1024;

/// The urlencoded form a POST to the ACS carries, read by the data plane because
/// [`Policy::request_body_limit`] asked for it.
fn request_form(_request: &RequestParts, exchange: &Exchange) -> Option<Bytes> {
    exchange.extensions.get::<RequestBody>().map(|body| body.0.clone())
}

impl CompiledSaml {
    /// The absolute ACS URL for this request: `base_url` or the request's own origin.
    fn acs_url(&self, request: &RequestParts, is_tls: bool) -> Option<String> {
        let origin = match &self.base_url {
            Some(base) => base.clone(),
            None => {
                let host = request
                    .headers
                    .get(HOST)
                    .and_then(|host| host.to_str().ok())
                    .or_else(|| request.uri.authority().map(|authority| authority.as_str()))?;
                // Only a plain authority: a Host header is client input.
                let authority: http::uri::Authority = host.parse().ok()?;
                format!("{}://{authority}", if is_tls { "https" } else { "http" })
            }
        };
        Some(format!("{origin}{}", self.acs_path))
    }

    fn is_secure(&self, acs_url: &str) -> bool {
        acs_url.starts_with("https://")
    }

    fn session(&self, request: &RequestParts, now: SystemTime) -> Option<Session> {
        let sealed = cookie(request, &self.cookie_name)?;
        let plaintext = self.sealer.open(Purpose::Session, sealed, b"")?;
        let session: Session = serde_json::from_slice(&plaintext).ok()?;
        (session.exp > unix_seconds(now)).then_some(session)
    }

    /// The configured consumer of that id (with the IdP's groups added), or one described by
    /// the session alone.
    fn consumer(&self, session: Session) -> Arc<Consumer> {
        match self.consumers.get(session.sub.as_str()) {
            Some(known) if session.groups.iter().all(|group| known.is_in(group)) => known.clone(),
            Some(known) => {
                let mut groups = known.groups.to_vec();
                groups.extend(session.groups.into_iter().filter(|group| !known.is_in(group)));
                Arc::new(Consumer { id: known.id.clone(), groups: groups.into() })
            }
            None => Arc::new(Consumer { id: session.sub.into(), groups: session.groups.into() }),
        }
    }

    /// 302 to the IdP with a fresh AuthnRequest; the pending-login cookie remembers its id.
    fn start_login(&self, request: &RequestParts, is_tls: bool, now: SystemTime) -> PolicyResponse {
        let Some(acs_url) = self.acs_url(request, is_tls) else {
            return problem_response(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "Bad Request",
                Some("the request names no valid host"),
            );
        };
        let return_to = request.uri.path_and_query().map_or("/", |path| path.as_str());
        let started = (|| {
            let id = request::new_request_id()?;
            let pending =
                serde_json::to_vec(&PendingLogin { id: id.clone(), exp: unix_seconds(now + LOGIN_TIMEOUT) }).ok()?;
            let pending = self.sealer.seal(Purpose::Request, &pending, b"")?;
            let relay_state = self.sealer.seal(Purpose::Relay, return_to.as_bytes(), id.as_bytes())?;
            let xml = request::authn_request(&id, now, &self.idp_sso_url, &acs_url, &self.sp_entity_id);
            let location = request::redirect_url(&self.idp_sso_url, &xml, &relay_state)?;
            Some((location, pending))
        })();
        let Some((location, pending)) = started else {
            return internal_error("the login request could not be prepared");
        };
        let mut response = redirect(StatusCode::FOUND, &location);
        // The IdP's answer comes back as a cross-site POST: only `SameSite=None` (which needs
        // `Secure`) lets the pending-login cookie along.
        let same_site = if self.is_secure(&acs_url) { "; Secure; SameSite=None" } else { "" };
        let cookie = format!(
            "{}={pending}; Path={}; Max-Age={}; HttpOnly{same_site}",
            self.request_cookie,
            self.acs_path,
            LOGIN_TIMEOUT.as_secs()
        );
        append_cookie(&mut response, &cookie);
        response
    }

    /// Checks the IdP's POSTed answer; on success seals the session and sends the browser
    /// back where it started, with 303 so the POST is not repeated.
    fn consume(&self, form: &[u8], request: &RequestParts, is_tls: bool, now: SystemTime) -> PolicyResponse {
        let refuse = |detail: &str| {
            tracing::debug!(detail, "SAML response refused");
            problem_response(StatusCode::FORBIDDEN, "invalid-saml-response", "Forbidden", Some(detail))
        };
        let Some(acs_url) = self.acs_url(request, is_tls) else {
            return refuse("the request names no valid host");
        };
        let mut saml_response = None;
        let mut relay_state = None;
        for (key, value) in form_urlencoded::parse(form) {
            match &*key {
                "SAMLResponse" => saml_response = Some(value),
                "RelayState" => relay_state = Some(value),
                _ => {}
            }
        }
        let Some(saml_response) = saml_response.filter(|value| value.len() <= MAX_RESPONSE_BYTES) else {
            return problem_response(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "Bad Request",
                Some("the form carries no SAMLResponse of at most 256 KiB"),
            );
        };
        let Some(pending) = cookie(request, &self.request_cookie)
            .and_then(|sealed| self.sealer.open(Purpose::Request, sealed, b""))
            .and_then(|plaintext| serde_json::from_slice::<PendingLogin>(&plaintext).ok())
            .filter(|pending| pending.exp > unix_seconds(now))
        else {
            return refuse("no login was started from this browser in the last 10 minutes");
        };
        // Line breaks inside the base64 are common (76-column encoders).
        let compact: String = saml_response.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let Some(xml) = STANDARD.decode(compact.as_bytes()).ok().and_then(|bytes| String::from_utf8(bytes).ok()) else {
            return refuse("the SAMLResponse is not base64 of UTF-8 XML");
        };
        let expected = Expected {
            idp_entity_id: &self.idp_entity_id,
            sp_entity_id: &self.sp_entity_id,
            acs_url: &acs_url,
            request_id: &pending.id,
            now,
            skew: self.skew,
            consumer_attribute: self.consumer_attribute.as_deref(),
            groups_attribute: self.groups_attribute.as_deref(),
        };
        let asserted = match check_response(&xml, &self.verifier, &expected) {
            Ok(asserted) => asserted,
            Err(rejected) => return refuse(&rejected.0),
        };
        let mut expires = now + self.session_ttl;
        if let Some(limit) = asserted.session_not_on_or_after {
            expires = expires.min(limit);
        }
        let session = Session { sub: asserted.consumer, groups: asserted.groups, exp: unix_seconds(expires) };
        let Some(sealed) =
            serde_json::to_vec(&session).ok().and_then(|json| self.sealer.seal(Purpose::Session, &json, b""))
        else {
            return internal_error("the session could not be sealed");
        };
        let secure = if self.is_secure(&acs_url) { "; Secure" } else { "" };
        let session_cookie = format!(
            "{}={sealed}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
            self.cookie_name,
            unix_seconds(expires).saturating_sub(unix_seconds(now))
        );
        if session_cookie.len() > MAX_COOKIE_BYTES {
            return refuse("the asserted groups do not fit in a session cookie");
        }
        let return_to = relay_state
            .and_then(|state| self.sealer.open(Purpose::Relay, &state, pending.id.as_bytes()))
            .and_then(|path| String::from_utf8(path).ok())
            .filter(|path| is_local_path(path))
            .unwrap_or_else(|| "/".to_owned());
        let mut response = redirect(StatusCode::SEE_OTHER, &return_to);
        append_cookie(&mut response, &session_cookie);
        // The login is used up: the same answer cannot be posted again from this browser.
        append_cookie(&mut response, &format!("{}=; Path={}; Max-Age=0; HttpOnly", self.request_cookie, self.acs_path));
        tracing::debug!(consumer = %session.sub, "SAML login accepted");
        response
    }

    fn logout(&self, request: &RequestParts, is_tls: bool) -> PolicyResponse {
        let secure = self.acs_url(request, is_tls).is_some_and(|url| self.is_secure(&url));
        let mut response = PolicyResponse::new(Bytes::from_static(b"signed out\n"));
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let secure = if secure { "; Secure" } else { "" };
        append_cookie(
            &mut response,
            &format!("{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{secure}", self.cookie_name),
        );
        response
    }
}

/// A same-origin path (and query) to send the browser back to: `/x`, never `//host` or `/\host`,
/// which browsers read as another origin.
fn is_local_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && !path.bytes().any(|byte| byte.is_ascii_control())
        && path.parse::<http::uri::PathAndQuery>().is_ok()
}

fn redirect(status: StatusCode, location: &str) -> PolicyResponse {
    let mut response = PolicyResponse::new(Bytes::new());
    *response.status_mut() = status;
    match HeaderValue::from_str(location) {
        Ok(value) => {
            response.headers_mut().insert(LOCATION, value);
        }
        Err(_) => return internal_error("the redirect target is not a valid header value"),
    }
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn append_cookie(response: &mut PolicyResponse, cookie: &str) {
    // Cookie values here are base64url and settings checked at build time.
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(SET_COOKIE, value);
    }
}

fn internal_error(detail: &str) -> PolicyResponse {
    tracing::error!(detail, "saml policy failed");
    problem_response(StatusCode::INTERNAL_SERVER_ERROR, "internal-error", "Internal Server Error", Some(detail))
}

#[cfg(test)]
mod tests;
