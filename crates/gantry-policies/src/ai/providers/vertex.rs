//! Gemini on Google Cloud's Vertex AI: the Gemini API's bodies ([`super::gemini`]) at
//! `/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent`
//! (`:streamGenerateContent?alt=sse`, and `:predict` with `instances` for embeddings), with
//! `Authorization: Bearer` and an OAuth 2.0 access token. With a service account's JSON key,
//! the token comes from the key's `token_uri` by the JWT bearer grant (RFC 7523, Google's
//! "Using OAuth 2.0 for Server to Server Applications"): an RS256-signed assertion is
//! exchanged for a token, which is kept until shortly before it expires and renewed by one
//! request while the others wait for it.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use gantry_config::{ConfigErrors, FieldPath, Secret};
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::gemini::{self, embedding_inputs, embedding_list, method};
use super::{Adapter, AdapterFuture, ChatRequest, Operation, Provider, StreamTranslator, TargetInfo};

/// The scope a token is asked for when the target names none.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The grant type of RFC 7523's JWT bearer assertion.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Life of an assertion; Google accepts at most an hour.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// How long before its expiry a token is renewed.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// Time limit of one token request.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest token endpoint answer read.
const MAX_TOKEN_ANSWER_BYTES: usize = 64 * 1024;

/// Settings of a `vertex_ai` target.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VertexConfig {
    /// The Google Cloud project id.
    pub project: String,
    /// The region of the endpoint (`us-central1`, `europe-west4`) or `global`; the target's
    /// upstream is that region's host (`us-central1-aiplatform.googleapis.com`, or
    /// `aiplatform.googleapis.com` for `global`).
    pub location: String,
    /// Path of a service account's JSON key file, read when the configuration is loaded:
    /// access tokens are asked for with it and renewed before they expire.
    #[serde(default)]
    pub service_account_file: Option<String>,
    /// A fixed OAuth 2.0 access token, for tokens renewed outside the gateway (it is sent
    /// as it is until the configuration changes).
    #[serde(default)]
    pub access_token: Option<Secret<String>>,
    /// The OAuth scope tokens are asked for.
    #[serde(default = "default_scope")]
    pub scope: String,
}

fn default_scope() -> String {
    CLOUD_PLATFORM_SCOPE.to_owned()
}

/// The checks of a target's `vertex` settings.
pub fn validate(provider: Provider, config: Option<&VertexConfig>, at: &FieldPath, errors: &mut ConfigErrors) {
    let Some(config) = config else {
        if provider == Provider::VertexAi {
            errors.push(at.key("vertex"), "`vertex_ai` targets need `vertex: {project, location, ...}`");
        }
        return;
    };
    let at = at.key("vertex");
    if provider != Provider::VertexAi {
        errors.push(at.clone(), "only `vertex_ai` targets take `vertex`");
    }
    for (key, value) in [("project", &config.project), ("location", &config.location)] {
        let fits =
            !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if !fits {
            errors.push(at.key(key), format!("`{value}` is not a Google Cloud {key} id"));
        }
    }
    match (&config.service_account_file, &config.access_token) {
        (Some(_), Some(_)) => errors.push(at.clone(), "give `service_account_file` or `access_token`, not both"),
        (None, None) => errors.push(at.clone(), "give `service_account_file` or `access_token`"),
        _ => {}
    }
    if let Some(token) = &config.access_token {
        if HeaderValue::from_str(&format!("Bearer {}", token.expose())).is_err() {
            errors.push(at.key("access_token"), "must be text that fits in a header");
        }
    }
}

/// The fields of a service account key file the token exchange needs.
#[derive(Deserialize)]
struct KeyFile {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default = "default_token_uri")]
    token_uri: String,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".to_owned()
}

/// The claims of the assertion Google's token endpoint exchanges for an access token.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionClaims {
    pub iss: String,
    pub scope: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

/// A target's project, location and credentials, with its cached token.
#[derive(Debug)]
pub struct VertexAccess {
    project: String,
    location: String,
    credentials: Credentials,
}

enum Credentials {
    Fixed(HeaderValue),
    ServiceAccount(Box<ServiceAccount>),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Fixed(_) => f.write_str("Fixed(..)"),
            Credentials::ServiceAccount(account) => write!(f, "ServiceAccount({})", account.email),
        }
    }
}

struct ServiceAccount {
    email: String,
    key_id: Option<String>,
    key: EncodingKey,
    token_uri: reqwest::Url,
    scope: String,
    http: reqwest::Client,
    cached: Arc<TokenCache>,
}

/// The `Authorization` value and when to renew it. Held across a renewal, so requests
/// arriving meanwhile wait for its token rather than asking for their own.
type TokenCache = tokio::sync::Mutex<Option<(HeaderValue, Instant)>>;

/// The token cache of a service account key, token endpoint and scope, shared by every
/// loaded configuration naming them: a reload keeps the token (state outside the snapshot,
/// by a stable key), and it is dropped with the last configuration using it.
fn token_cache(key: &KeyFile, scope: &str) -> Arc<TokenCache> {
    static CACHES: OnceLock<std::sync::Mutex<HashMap<Vec<u8>, Weak<TokenCache>>>> = OnceLock::new();
    let id = {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        for part in [key.client_email.as_str(), &key.private_key, &key.token_uri, scope] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        hash.finalize().to_vec()
    };
    let mut caches = CACHES.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    caches.retain(|_, cache| cache.strong_count() > 0);
    if let Some(cache) = caches.get(&id).and_then(Weak::upgrade) {
        return cache;
    }
    let cache = Arc::new(TokenCache::new(None));
    caches.insert(id, Arc::downgrade(&cache));
    cache
}

impl VertexAccess {
    /// The access of a target's `vertex` settings, reading its key file; `None` (with the
    /// reason in `errors`) when there are none or they cannot be used.
    pub fn load(config: Option<&VertexConfig>, at: &FieldPath, errors: &mut ConfigErrors) -> Option<Arc<Self>> {
        let config = config?;
        let credentials = match (&config.service_account_file, &config.access_token) {
            (Some(file), None) => match ServiceAccount::read(file, &config.scope) {
                Ok(account) => Credentials::ServiceAccount(Box::new(account)),
                Err(reason) => {
                    errors.push(at.key("service_account_file"), reason);
                    return None;
                }
            },
            (None, Some(token)) => Credentials::Fixed(super::secret_header(&format!("Bearer {}", token.expose()))?),
            // Reported by `validate`.
            _ => return None,
        };
        Some(Arc::new(Self { project: config.project.clone(), location: config.location.clone(), credentials }))
    }

    /// The `Authorization` value of the next request.
    pub async fn authorization(&self) -> Result<HeaderValue, String> {
        match &self.credentials {
            Credentials::Fixed(value) => Ok(value.clone()),
            Credentials::ServiceAccount(account) => account.authorization().await,
        }
    }
}

impl ServiceAccount {
    fn read(file: &str, scope: &str) -> Result<Self, String> {
        let text = std::fs::read(file).map_err(|err| format!("cannot read `{file}`: {err}"))?;
        let key: KeyFile =
            serde_json::from_slice(&text).map_err(|err| format!("`{file}` is not a service account key: {err}"))?;
        Self::new(key, scope).map_err(|reason| format!("`{file}`: {reason}"))
    }

    fn new(key: KeyFile, scope: &str) -> Result<Self, String> {
        let signing = EncodingKey::from_rsa_pem(key.private_key.as_bytes())
            .map_err(|err| format!("`private_key` is not an RSA key in PEM: {err}"))?;
        let token_uri = reqwest::Url::parse(&key.token_uri)
            .ok()
            .filter(|url| matches!(url.scheme(), "https" | "http"))
            .ok_or_else(|| format!("`token_uri` `{}` is not an HTTP(S) URL", key.token_uri))?;
        let http = reqwest::Client::builder()
            .timeout(TOKEN_TIMEOUT)
            .connect_timeout(TOKEN_TIMEOUT)
            .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| format!("no HTTP client: {err}"))?;
        let cached = token_cache(&key, scope);
        Ok(Self {
            email: key.client_email,
            key_id: key.private_key_id,
            key: signing,
            token_uri,
            scope: scope.to_owned(),
            http,
            cached,
        })
    }

    async fn authorization(&self) -> Result<HeaderValue, String> {
        let mut cached = self.cached.lock().await;
        if let Some((value, renew_at)) = &*cached {
            if Instant::now() < *renew_at {
                return Ok(value.clone());
            }
        }
        let (value, lifetime) = self.exchange().await?;
        // Renewed a little before it expires, so no request goes out with a token about to lapse.
        let margin = RENEW_BEFORE.min(lifetime / 2);
        *cached = Some((value.clone(), Instant::now() + lifetime - margin));
        Ok(value)
    }

    /// The signed assertion for now.
    fn assertion(&self) -> Result<String, String> {
        let now = crate::ai::openai::now();
        let claims = AssertionClaims {
            iss: self.email.clone(),
            scope: self.scope.clone(),
            aud: self.token_uri.to_string(),
            iat: now,
            exp: now + ASSERTION_LIFETIME.as_secs(),
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.key_id.clone();
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|err| format!("cannot sign the assertion: {err}"))
    }

    /// One token request: the `Authorization` value and how long it is valid.
    async fn exchange(&self) -> Result<(HeaderValue, Duration), String> {
        let assertion = self.assertion()?;
        let failed = |reason: String| format!("no Vertex AI access token for {}: {reason}", self.email);
        let response = self
            .http
            .post(self.token_uri.clone())
            .header(ACCEPT, "application/json")
            .form(&[("grant_type", JWT_BEARER_GRANT), ("assertion", assertion.as_str())])
            .send()
            .await
            .map_err(|err| {
                failed(if err.is_timeout() { "the token endpoint timed out".into() } else { err.to_string() })
            })?;
        let status = response.status();
        if response.content_length().is_some_and(|length| length > MAX_TOKEN_ANSWER_BYTES as u64) {
            return Err(failed("the token endpoint's answer is too large".into()));
        }
        let body = response.bytes().await.map_err(|err| failed(err.to_string()))?;
        if body.len() > MAX_TOKEN_ANSWER_BYTES {
            return Err(failed("the token endpoint's answer is too large".into()));
        }
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|_| failed(format!("the token endpoint answered {status} without JSON")))?;
        if !status.is_success() {
            let error = answer.get("error").and_then(Value::as_str).unwrap_or("unknown");
            let description = answer.get("error_description").and_then(Value::as_str).unwrap_or_default();
            return Err(failed(format!("the token endpoint answered {status}: {error} {description}")));
        }
        let token = answer
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| failed("the answer has no `access_token`".into()))?;
        let value = super::secret_header(&format!("Bearer {token}"))
            .ok_or_else(|| failed("the access token does not fit in a header".into()))?;
        let lifetime = answer.get("expires_in").and_then(Value::as_u64).unwrap_or(3600);
        Ok((value, Duration::from_secs(lifetime)))
    }
}

/// The Vertex AI format: Gemini bodies, Google Cloud paths and tokens.
#[derive(Debug)]
pub struct Vertex;

impl Adapter for Vertex {
    fn serves(&self, operation: Operation) -> bool {
        matches!(operation, Operation::Chat | Operation::Embeddings)
    }

    fn path(&self, target: &TargetInfo, operation: Operation, streamed: bool) -> String {
        let (project, location) =
            target.vertex.as_ref().map_or(("-", "-"), |access| (access.project.as_str(), access.location.as_str()));
        format!(
            "{}/projects/{project}/locations/{location}/publishers/google/models/{}",
            target.base_path,
            method(&target.model, operation, streamed, "predict")
        )
    }

    fn request(
        &self,
        _target: &TargetInfo,
        operation: Operation,
        request: &ChatRequest,
        _streamed: bool,
    ) -> Result<Vec<u8>, String> {
        let body = match operation {
            Operation::Embeddings => embeddings_request(request)?,
            _ => gemini::request(request)?,
        };
        serde_json::to_vec(&body).map_err(|err| err.to_string())
    }

    fn response(&self, target: &TargetInfo, operation: Operation, body: &[u8]) -> Result<Value, String> {
        match operation {
            Operation::Embeddings => embeddings_response(body, &target.model),
            _ => gemini::response(body, &target.model),
        }
    }

    fn error(&self, status: StatusCode, body: &[u8]) -> (StatusCode, Value) {
        gemini::error(status, body)
    }

    fn retry_delay(&self, body: &[u8]) -> Option<u64> {
        gemini::retry_delay(body)
    }

    fn stream(&self, target: &TargetInfo, _operation: Operation) -> Box<dyn StreamTranslator> {
        Box::new(gemini::Stream::new(&target.model))
    }

    fn authorize<'a>(
        &'a self,
        target: &'a TargetInfo,
        head: &'a mut http::request::Parts,
        _body: &'a [u8],
    ) -> AdapterFuture<'a> {
        Box::pin(async move {
            let access = target.vertex.as_ref().ok_or("the target has no `vertex` settings")?;
            let value = access.authorization().await?;
            head.headers.insert(AUTHORIZATION, value);
            Ok(())
        })
    }
}

/// The `:predict` request of Vertex AI's text embedding models: one instance per text.
fn embeddings_request(request: &ChatRequest) -> Result<Value, String> {
    let instances: Vec<Value> = embedding_inputs(request)?.into_iter().map(|text| json!({ "content": text })).collect();
    let mut body = json!({ "instances": instances });
    if let Some(dimensions) = request.get("dimensions").and_then(Value::as_u64) {
        body["parameters"] = json!({ "outputDimensionality": dimensions });
    }
    Ok(body)
}

/// The embedding list for a `:predict` answer
/// (`{"predictions":[{"embeddings":{"values":[..],"statistics":{"token_count":..}}}]}`).
fn embeddings_response(body: &[u8], model: &str) -> Result<Value, String> {
    let answer: Value = serde_json::from_slice(body).map_err(|err| format!("the answer is not JSON: {err}"))?;
    let predictions = answer.get("predictions").and_then(Value::as_array).ok_or("the answer has no `predictions`")?;
    let mut tokens = None;
    let vectors = predictions
        .iter()
        .map(|prediction| {
            let embeddings = prediction.get("embeddings").unwrap_or(&Value::Null);
            if let Some(count) = embeddings.pointer("/statistics/token_count").and_then(Value::as_f64) {
                *tokens.get_or_insert(0) += count as u64;
            }
            embeddings.get("values").cloned().unwrap_or_else(|| json!([]))
        })
        .collect();
    Ok(embedding_list(vectors, model, tokens))
}

#[cfg(test)]
mod tests;
