//! The relying-party side of the authorization code flow (OpenID Connect Core 1.0 §3.1) with
//! PKCE (RFC 7636): a browser without a session is sent to the provider, comes back to the
//! callback path with a code, which the gateway exchanges for an ID token, checks (signature,
//! issuer, audience, expiry, nonce) and turns into a sealed session cookie.
//!
//! `state`, `nonce` and the PKCE verifier travel in a sealed login cookie rather than in
//! server memory, so the callback may reach any gateway node.

use bytes::Bytes;
use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{Exchange, Flow, Hook, PolicyResponse, RequestParts};
use http::header::{CACHE_CONTROL, HOST, LOCATION, SET_COOKIE};
use http::{HeaderValue, StatusCode};
use serde::Deserialize;

use super::session::{clear_cookie, pkce_challenge, random_token, set_cookie, PendingLogin, Sealer, Session};
use super::{now_secs, unavailable, CompiledOidc, LoginConfig, Refusal};
use crate::identity::outbound::{self, describe, ClientCredentials};
use crate::identity::request_credentials::{cookie, remove_cookies};

/// How long a browser may take between the redirect to the provider and the callback.
const LOGIN_TTL_SECS: u64 = 600;

/// Largest token response read.
const MAX_TOKEN_RESPONSE_BYTES: usize = 256 * 1024;

/// Where the provider sends the browser back.
#[derive(Debug)]
enum RedirectUri {
    /// A path on the host the browser used.
    Path(String),
    /// A fixed absolute URL.
    Absolute(reqwest::Url),
}

/// The login flow's settings, parsed.
#[derive(Debug)]
pub(super) struct Login {
    client: ClientCredentials,
    redirect_uri: RedirectUri,
    callback_path: String,
    scope: String,
    sealer: Sealer,
    cookie_name: String,
    login_cookie_name: String,
    session_ttl_secs: u64,
    logout_path: Option<String>,
    post_logout_redirect: String,
    http: reqwest::Client,
}

/// A path the login flow answers itself.
pub(super) enum OwnPath {
    Callback,
    Logout,
}

/// The token endpoint's answer (OpenID Connect Core 1.0 §3.1.3.3).
#[derive(Deserialize)]
struct TokenResponse {
    id_token: String,
    #[serde(default)]
    scope: Option<String>,
}

/// What the callback's query carries.
#[derive(Default)]
struct CallbackParameters {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

impl Login {
    /// Parses the settings written at `path`; `None` after reporting a problem.
    pub(super) fn build(
        config: &LoginConfig,
        client_id: &str,
        timeout: std::time::Duration,
        path: &FieldPath,
        errors: &mut ConfigErrors,
    ) -> Option<Self> {
        let redirect_uri = if config.redirect_uri.starts_with('/') {
            RedirectUri::Path(config.redirect_uri.clone())
        } else {
            match reqwest::Url::parse(&config.redirect_uri) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => RedirectUri::Absolute(url),
                _ => {
                    errors.push(path.key("redirect_uri"), "must be a path starting with `/` or an http(s) URL");
                    return None;
                }
            }
        };
        let callback_path = match &redirect_uri {
            RedirectUri::Path(path) => path.split('?').next().unwrap_or(path).to_owned(),
            RedirectUri::Absolute(url) => url.path().to_owned(),
        };
        let http = outbound::client_builder(timeout)
            // A redirect would send the client secret and the code somewhere not configured.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| errors.push(path.clone(), format!("cannot set up the HTTP client: {err}")))
            .ok()?;
        Some(Self {
            client: ClientCredentials {
                id: client_id.to_owned(),
                secret: config.client_secret.clone(),
                auth: config.client_auth,
            },
            redirect_uri,
            callback_path,
            scope: config.scopes.join(" "),
            sealer: Sealer::new(config.session_secret.expose().as_bytes()),
            cookie_name: config.cookie_name.clone(),
            login_cookie_name: format!("{}_login", config.cookie_name),
            session_ttl_secs: config.session_ttl.get().as_secs().max(1),
            logout_path: config.logout_path.clone(),
            post_logout_redirect: config.post_logout_redirect.clone(),
            http,
        })
    }

    /// Whether the request is for the callback or logout path.
    pub(super) fn own_path(&self, request: &RequestParts) -> Option<OwnPath> {
        let path = request.uri.path();
        if path == self.callback_path {
            return Some(OwnPath::Callback);
        }
        (self.logout_path.as_deref() == Some(path)).then_some(OwnPath::Logout)
    }

    /// Answers the callback or logout path.
    pub(super) fn answer_own_path<'a>(
        &'a self,
        oidc: &'a CompiledOidc,
        path: OwnPath,
        request: &'a RequestParts,
        exchange: &Exchange,
    ) -> Hook<'a> {
        let secure = self.is_secure(exchange);
        match path {
            OwnPath::Logout => {
                let cookie = clear_cookie(&self.cookie_name, "/", secure);
                redirect(&self.post_logout_redirect, &[cookie]).into()
            }
            OwnPath::Callback => Hook::Wait(Box::pin(async move {
                let response = match self.callback(oidc, request, secure).await {
                    Ok(response) | Err(response) => response,
                };
                Flow::Respond(response)
            })),
        }
    }

    /// Cookies are `Secure` when the browser reaches the gateway over TLS, directly or (with
    /// an `https` redirect URI) through a proxy in front of it.
    fn is_secure(&self, exchange: &Exchange) -> bool {
        exchange.is_tls || matches!(&self.redirect_uri, RedirectUri::Absolute(url) if url.scheme() == "https")
    }

    /// The identity of a valid session cookie: `Some(Continue)` with the identity recorded,
    /// `Some(Respond)` when the session's consumer is no longer accepted, `None` without a
    /// valid session.
    pub(super) fn resume_session(
        &self,
        oidc: &CompiledOidc,
        request: &mut RequestParts,
        exchange: &mut Exchange,
    ) -> Option<Flow> {
        let value = cookie(request, &self.cookie_name)?;
        let Some(session) = self.sealer.open::<Session>(&self.cookie_name, value) else {
            tracing::debug!("session cookie not valid");
            return None;
        };
        if session.expires_at <= now_secs() {
            return None;
        }
        let mut claims = serde_json::Map::new();
        claims.insert(oidc.consumer_claim.clone(), session.subject.into());
        claims.insert("scope".to_owned(), session.scope.into());
        match oidc.identity(&claims) {
            Ok(identity) => {
                exchange.authenticate(identity);
                if oidc.hide_credentials {
                    remove_cookies(request, &[&self.cookie_name]);
                }
                Some(Flow::Continue)
            }
            Err(refusal) => Some(Flow::Respond(refusal.response(&oidc.challenges))),
        }
    }

    /// Sends the browser to the provider's authorization endpoint.
    pub(super) async fn start(
        &self,
        oidc: &CompiledOidc,
        request: &RequestParts,
        exchange: &Exchange,
    ) -> PolicyResponse {
        let Ok(metadata) = oidc.discovery.metadata().await else { return unavailable() };
        let Some(mut target) = metadata.authorization_endpoint.clone() else {
            tracing::warn!("the OpenID provider's metadata names no authorization_endpoint");
            return unavailable();
        };
        let Some(redirect_uri) = self.redirect_uri(request, exchange) else {
            return login_failed(StatusCode::BAD_REQUEST, "the request names no host to come back to");
        };
        let (Some(state), Some(nonce), Some(verifier)) = (random_token(), random_token(), random_token()) else {
            return internal_error();
        };
        let return_to = request.uri.path_and_query().map_or("/", |path| path.as_str()).to_owned();
        target
            .query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client.id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &self.scope)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &pkce_challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        let pending =
            PendingLogin { state, nonce, verifier, return_to, redirect_uri, expires_at: now_secs() + LOGIN_TTL_SECS };
        let Some(sealed) = self.sealer.seal(&self.login_cookie_name, &pending) else { return internal_error() };
        let cookie =
            set_cookie(&self.login_cookie_name, &sealed, &self.callback_path, LOGIN_TTL_SECS, self.is_secure(exchange));
        redirect(target.as_str(), &[cookie])
    }

    /// The redirect URI for this request: the configured URL, or the path on the request's host.
    fn redirect_uri(&self, request: &RequestParts, exchange: &Exchange) -> Option<String> {
        match &self.redirect_uri {
            RedirectUri::Absolute(url) => Some(url.to_string()),
            RedirectUri::Path(path) => {
                let host = request
                    .headers
                    .get(HOST)
                    .and_then(|host| host.to_str().ok())
                    .or_else(|| request.uri.authority().map(|authority| authority.as_str()))?;
                let scheme = if exchange.is_tls { "https" } else { "http" };
                // The provider compares it with the registered redirect URIs, so a forged
                // `Host` can only make the login fail.
                Some(format!("{scheme}://{host}{path}"))
            }
        }
    }

    /// Checks the callback, exchanges the code and sets the session cookie.
    async fn callback(
        &self,
        oidc: &CompiledOidc,
        request: &RequestParts,
        secure: bool,
    ) -> Result<PolicyResponse, PolicyResponse> {
        let clear = clear_cookie(&self.login_cookie_name, &self.callback_path, secure);
        let refuse = |status, detail: &str| with_cookies(login_failed(status, detail), std::slice::from_ref(&clear));
        let pending = cookie(request, &self.login_cookie_name)
            .and_then(|value| self.sealer.open::<PendingLogin>(&self.login_cookie_name, value))
            .filter(|pending| pending.expires_at > now_secs())
            .ok_or_else(|| {
                refuse(StatusCode::BAD_REQUEST, "no login is under way in this browser, or it took too long")
            })?;
        let parameters = callback_parameters(request);
        if let Some(error) = parameters.error {
            // Only a plain error code is repeated; free text from the query is not.
            let code: String = error.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
            tracing::debug!(error = %code, "the OpenID provider refused the login");
            return Err(refuse(StatusCode::FORBIDDEN, &format!("the OpenID provider refused the login ({code})")));
        }
        // RFC 6749 §10.12: the state binds the callback to the browser that started the login.
        let state_matches = parameters.state.as_deref().is_some_and(|state| {
            aws_lc_rs::constant_time::verify_slices_are_equal(state.as_bytes(), pending.state.as_bytes()).is_ok()
        });
        if !state_matches {
            return Err(refuse(StatusCode::BAD_REQUEST, "the callback's state does not match the login under way"));
        }
        let Some(code) = parameters.code else {
            return Err(refuse(StatusCode::BAD_REQUEST, "the callback carries no authorization code"));
        };

        let id_token = self
            .exchange_code(oidc, &code, &pending)
            .await
            .map_err(|response| with_cookies(response, std::slice::from_ref(&clear)))?;
        let claims = match oidc.verify_fetching(&id_token.id_token, &oidc.id_token_validations).await {
            Ok(verified) => verified.claims,
            Err(Refusal::Unavailable) => return Err(unavailable()),
            Err(Refusal::Invalid(detail)) => {
                tracing::debug!(reason = detail, "ID token refused");
                return Err(refuse(StatusCode::UNAUTHORIZED, &format!("the ID token is not valid: {detail}")));
            }
            Err(Refusal::Unmapped(detail)) => return Err(refuse(StatusCode::FORBIDDEN, &detail)),
        };
        // OpenID Connect Core 1.0 §3.1.3.7: the nonce of this login, and an `azp` (when
        // present) naming this client.
        if claims.get("nonce").and_then(|nonce| nonce.as_str()) != Some(pending.nonce.as_str()) {
            return Err(refuse(StatusCode::UNAUTHORIZED, "the ID token's nonce is not the one of this login"));
        }
        if claims.get("azp").is_some_and(|azp| azp.as_str() != Some(self.client.id.as_str())) {
            return Err(refuse(StatusCode::UNAUTHORIZED, "the ID token was issued to another client (azp)"));
        }
        let scope = id_token.scope.unwrap_or_else(|| self.scope.clone());
        let mut with_scope = claims;
        with_scope.insert("scope".to_owned(), scope.clone().into());
        if let Err(refusal) = oidc.identity(&with_scope) {
            return Err(with_cookies(refusal.response(&oidc.challenges), std::slice::from_ref(&clear)));
        }
        let Some(subject) = with_scope.get(&oidc.consumer_claim).and_then(claim_text) else {
            return Err(internal_error());
        };
        let session = Session { subject, scope, expires_at: now_secs() + self.session_ttl_secs };
        let Some(sealed) = self.sealer.seal(&self.cookie_name, &session) else { return Err(internal_error()) };
        let session_cookie = set_cookie(&self.cookie_name, &sealed, "/", self.session_ttl_secs, secure);
        Ok(redirect(&pending.return_to, &[session_cookie, clear]))
    }

    /// Exchanges `code` at the token endpoint (OpenID Connect Core 1.0 §3.1.3.1).
    async fn exchange_code(
        &self,
        oidc: &CompiledOidc,
        code: &str,
        pending: &PendingLogin,
    ) -> Result<TokenResponse, PolicyResponse> {
        let metadata = oidc.discovery.metadata().await.map_err(|_| unavailable())?;
        let Some(endpoint) = metadata.token_endpoint.clone() else {
            tracing::warn!("the OpenID provider's metadata names no token_endpoint");
            return Err(unavailable());
        };
        let form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", pending.redirect_uri.as_str()),
            ("code_verifier", pending.verifier.as_str()),
        ];
        let response = self.client.post_form(&self.http, endpoint, form).send().await.map_err(|err| {
            tracing::warn!(error = %describe(&err), "token request failed");
            unavailable()
        })?;
        let status = response.status();
        if status.is_server_error() {
            tracing::warn!(%status, "token request failed");
            return Err(unavailable());
        }
        if !status.is_success() {
            // A used, expired or foreign code: the user may simply sign in again.
            tracing::debug!(%status, "the token endpoint refused the code");
            return Err(login_failed(
                StatusCode::UNAUTHORIZED,
                "the OpenID provider did not accept the authorization code",
            ));
        }
        let body = outbound::read_body(response, MAX_TOKEN_RESPONSE_BYTES).await.map_err(|_| unavailable())?;
        serde_json::from_slice(&body).map_err(|_| {
            tracing::warn!("the token response carries no ID token");
            unavailable()
        })
    }
}

fn callback_parameters(request: &RequestParts) -> CallbackParameters {
    let mut parameters = CallbackParameters::default();
    let query = request.uri.query().unwrap_or_default();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "code" => parameters.code = Some(value.into_owned()),
            "state" => parameters.state = Some(value.into_owned()),
            "error" => parameters.error = Some(value.into_owned()),
            _ => {}
        }
    }
    parameters
}

fn claim_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) if !text.is_empty() => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// 302 to `location`, setting `cookies`; never cached.
fn redirect(location: &str, cookies: &[String]) -> PolicyResponse {
    let mut response = PolicyResponse::new(Bytes::new());
    *response.status_mut() = StatusCode::FOUND;
    match HeaderValue::from_str(location) {
        Ok(location) => {
            response.headers_mut().insert(LOCATION, location);
        }
        Err(_) => return internal_error(),
    }
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    with_cookies(response, cookies)
}

fn with_cookies(mut response: PolicyResponse, cookies: &[String]) -> PolicyResponse {
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(cookie) {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }
    response
}

/// A login that cannot complete; the browser may start again from the page it wanted.
fn login_failed(status: StatusCode, detail: &str) -> PolicyResponse {
    let title = status.canonical_reason().unwrap_or("Login failed");
    problem_response(status, "login-failed", title, Some(detail))
}

fn internal_error() -> PolicyResponse {
    tracing::error!("the OpenID login could not produce its cookies");
    problem_response(StatusCode::INTERNAL_SERVER_ERROR, "internal-error", "Internal Server Error", None)
}
