#![doc = include_str!("mtls_auth.md")]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::identity::forbidden;
use gantry_policy_api::{
    BuildContext, ClientCertificate, Consumer, CredentialEntry, Exchange, Flow, Hook, Hooks, Identity, IdentityFactory,
    Policy, PolicyFactory, PolicyResponse, RequestParts, Stage, Validate,
};
use http::{HeaderName, HeaderValue};
use schemars::JsonSchema;
use serde::Deserialize;

/// Settings of `mtls_auth`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `required`: a request without a verified client certificate is refused. `optional`: it
    /// goes on unrecognised (or as `anonymous_consumer`).
    #[serde(default)]
    pub mode: Mode,
    /// The certificate field that names the consumer.
    #[serde(default)]
    pub consumer_by: ConsumerBy,
    /// Refuses (403) certificates no consumer names, instead of admitting them as a consumer
    /// named by the `consumer_by` field.
    #[serde(default)]
    pub require_consumer: bool,
    /// Consumer id that stands in for requests without a certificate in `optional` mode.
    #[serde(default)]
    pub anonymous_consumer: Option<String>,
    /// Request headers that tell the upstream about the certificate. Copies sent by the client
    /// are always removed, certificate or not.
    #[serde(default)]
    pub forward_headers: ForwardHeaders,
}

/// Whether a route needs a client certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Requests without a verified certificate get 403.
    #[default]
    Required,
    /// Requests without a certificate go on unrecognised, or as `anonymous_consumer`.
    Optional,
}

/// The certificate field that names a consumer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerBy {
    /// The subject's common name (CN).
    #[default]
    SubjectCn,
    /// A DNS name of the subject alternative names (compared without regard to case).
    SanDns,
    /// An e-mail address of the subject alternative names.
    SanEmail,
    /// A URI of the subject alternative names (a SPIFFE id, for instance).
    SanUri,
    /// The certificate's SHA-256 fingerprint: pins one certificate rather than a name.
    Fingerprint,
}

/// Request headers describing the client certificate to the upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardHeaders {
    /// Header carrying the subject DN as RFC 4514 writes it (`CN=alice,O=Example`).
    #[serde(default)]
    pub subject: Option<String>,
    /// Header carrying the SHA-256 fingerprint, lower-case hex.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Header carrying the whole certificate as URL-escaped PEM, like nginx's
    /// `$ssl_client_escaped_cert`.
    #[serde(default)]
    pub certificate: Option<String>,
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.anonymous_consumer.is_some() && self.mode == Mode::Required {
            errors.push(
                path.key("anonymous_consumer"),
                "only used with `mode: optional`: a required certificate has no stand-in",
            );
        }
    }
}

/// A consumer's credential for `mtls_auth`: the certificate name or fingerprint that stands
/// for it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The value of the route's `consumer_by` field (a CN, DNS name, e-mail or URI).
    #[serde(default)]
    pub subject: Option<String>,
    /// The certificate's SHA-256 fingerprint in hex, with or without `:` separators, for
    /// `consumer_by: fingerprint`.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

impl Validate for Credential {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        match (&self.subject, &self.fingerprint) {
            (None, None) => errors.push(path.clone(), "give `subject` or `fingerprint`"),
            (Some(_), Some(_)) => errors.push(path.clone(), "give `subject` or `fingerprint`, not both"),
            (Some(subject), None) if subject.is_empty() => errors.push(path.key("subject"), "must not be empty"),
            (None, Some(fingerprint)) if normalized_fingerprint(fingerprint).is_none() => errors.push(
                path.key("fingerprint"),
                "must be a SHA-256 fingerprint: 64 hex digits, optionally separated by `:`",
            ),
            _ => {}
        }
    }
}

/// A fingerprint as `ClientCertificate` writes it (lower-case hex, no separators), if
/// `text` is one.
fn normalized_fingerprint(text: &str) -> Option<String> {
    let hex: String = text.chars().filter(|c| *c != ':').map(|c| c.to_ascii_lowercase()).collect();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// Factory of the `mtls_auth` policy.
#[derive(Debug)]
pub struct MtlsAuth;

impl PolicyFactory for MtlsAuth {
    const NAME: &'static str = "mtls_auth";
    const STAGE: Stage = Stage::Identity;
    const DOCS: &'static str = include_str!("mtls_auth.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let anonymous = context.consumers.anonymous(config.anonymous_consumer.as_deref(), path, &mut errors);
        let headers_path = path.key("forward_headers");
        let mut header = |name: &Option<String>, key: &str| {
            name.as_ref().and_then(|name| match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => Some(name),
                Err(_) => {
                    errors.push(headers_path.key(key), format!("`{name}` is not a header name"));
                    None
                }
            })
        };
        let forward = Forward {
            subject: header(&config.forward_headers.subject, "subject"),
            fingerprint: header(&config.forward_headers.fingerprint, "fingerprint"),
            certificate: header(&config.forward_headers.certificate, "certificate"),
        };
        errors.into_result(())?;

        let by_fingerprint = config.consumer_by == ConsumerBy::Fingerprint;
        let mut names = HashMap::new();
        // Duplicates are reported once by `check_credentials`; here the first one wins.
        for entry in context.consumers.credentials::<MtlsAuth>() {
            let key = match (&entry.credential.subject, &entry.credential.fingerprint) {
                (Some(subject), None) if !by_fingerprint => name_key(config.consumer_by, subject).into_owned(),
                (None, Some(fingerprint)) if by_fingerprint => match normalized_fingerprint(fingerprint) {
                    Some(fingerprint) => fingerprint,
                    None => continue,
                },
                // A credential of the other kind is for another route's `consumer_by`.
                _ => continue,
            };
            names.entry(key).or_insert_with(|| (entry.consumer.clone(), entry.id.clone()));
        }
        Ok(Arc::new(CompiledMtlsAuth {
            mode: config.mode,
            consumer_by: config.consumer_by,
            require_consumer: config.require_consumer,
            anonymous,
            forward,
            names,
            configured_ids: context.consumers.consumers().iter().map(|consumer| consumer.id.clone()).collect(),
        }))
    }
}

impl IdentityFactory for MtlsAuth {
    type Credential = Credential;

    fn check_credentials(credentials: &[CredentialEntry<'_, Credential>], errors: &mut ConfigErrors) {
        let mut subjects: HashMap<&str, &Arc<str>> = HashMap::new();
        let mut fingerprints: HashMap<String, &Arc<str>> = HashMap::new();
        for entry in credentials {
            if let Some(subject) = &entry.credential.subject {
                if let Some(first) = subjects.insert(subject, entry.id) {
                    errors.push(
                        entry.path.key("subject"),
                        format!("the same subject is already the credential `{first}`"),
                    );
                }
            }
            if let Some(fingerprint) = entry.credential.fingerprint.as_deref().and_then(normalized_fingerprint) {
                if let Some(first) = fingerprints.insert(fingerprint, entry.id) {
                    errors.push(
                        entry.path.key("fingerprint"),
                        format!("the same fingerprint is already the credential `{first}`"),
                    );
                }
            }
        }
    }
}

/// The lookup key of a name: DNS names compare without regard to case (RFC 4343).
fn name_key(consumer_by: ConsumerBy, name: &str) -> std::borrow::Cow<'_, str> {
    if consumer_by == ConsumerBy::SanDns && name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase().into()
    } else {
        name.into()
    }
}

/// Why a verified certificate stands for no consumer.
#[derive(Debug, PartialEq, Eq)]
enum Unrecognised {
    /// It has no value of the `consumer_by` field.
    Nameless,
    /// No consumer names it, and `require_consumer` is set or its name is a consumer's id.
    NoConsumer,
}

impl Unrecognised {
    fn response(&self) -> PolicyResponse {
        let detail = match self {
            Unrecognised::Nameless => "the client certificate has no name to recognise it by",
            Unrecognised::NoConsumer => "no consumer is known by this client certificate",
        };
        forbidden("unknown-client-certificate", detail)
    }
}

/// Header names of [`ForwardHeaders`], parsed.
#[derive(Debug)]
struct Forward {
    subject: Option<HeaderName>,
    fingerprint: Option<HeaderName>,
    certificate: Option<HeaderName>,
}

/// Runs per request: header removals, then a hash lookup of one certificate field. The
/// certificate itself was parsed once, when the connection's handshake finished.
struct CompiledMtlsAuth {
    mode: Mode,
    consumer_by: ConsumerBy,
    require_consumer: bool,
    anonymous: Option<Arc<Consumer>>,
    forward: Forward,
    /// Consumer by normalized `consumer_by` value.
    names: HashMap<String, (Arc<Consumer>, Arc<str>)>,
    configured_ids: HashSet<Arc<str>>,
}

impl CompiledMtlsAuth {
    /// The values of the `consumer_by` field in `certificate`, in certificate order.
    fn names<'c>(&self, certificate: &'c ClientCertificate) -> Vec<&'c str> {
        match self.consumer_by {
            ConsumerBy::SubjectCn => certificate.common_name.as_deref().into_iter().collect(),
            ConsumerBy::SanDns => certificate.dns_names.iter().map(String::as_str).collect(),
            ConsumerBy::SanEmail => certificate.emails.iter().map(String::as_str).collect(),
            ConsumerBy::SanUri => certificate.uris.iter().map(String::as_str).collect(),
            ConsumerBy::Fingerprint => vec![certificate.fingerprint_sha256.as_str()],
        }
    }

    /// The identity `certificate` stands for, or why it stands for none.
    fn identity(&self, certificate: &ClientCertificate) -> Result<Identity, Unrecognised> {
        let names = self.names(certificate);
        let found = names.iter().find_map(|name| self.names.get(name_key(self.consumer_by, name).as_ref()));
        if let Some((consumer, credential_id)) = found {
            return Ok(Identity::credential(consumer.clone(), credential_id.clone(), MtlsAuth::NAME));
        }
        let Some(name) = names.first() else { return Err(Unrecognised::Nameless) };
        let name = name_key(self.consumer_by, name);
        // A certificate must not take over a configured consumer (its policies, its groups)
        // just by carrying its id as a name.
        if self.require_consumer || self.configured_ids.contains(name.as_ref()) {
            return Err(Unrecognised::NoConsumer);
        }
        Ok(Identity::credential(Arc::new(Consumer::named(&name)), Arc::from(name.as_ref()), MtlsAuth::NAME))
    }

    fn remove_forwarded(&self, request: &mut RequestParts) {
        for name in [&self.forward.subject, &self.forward.fingerprint, &self.forward.certificate].into_iter().flatten()
        {
            request.headers.remove(name);
        }
    }

    fn forward(&self, request: &mut RequestParts, certificate: &ClientCertificate) {
        let values = [
            (&self.forward.subject, certificate.subject.as_str()),
            (&self.forward.fingerprint, certificate.fingerprint_sha256.as_str()),
            (&self.forward.certificate, certificate.escaped_pem()),
        ];
        for (name, value) in values {
            let Some(name) = name else { continue };
            // A subject with control characters cannot be a header value; it is left out
            // rather than sent altered.
            match HeaderValue::from_str(value) {
                Ok(value) => {
                    request.headers.insert(name.clone(), value);
                }
                Err(_) => tracing::debug!(header = %name, "client certificate value is no valid header value"),
            }
        }
    }
}

impl Policy for CompiledMtlsAuth {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        // Before anything else, so no answer path lets a client-made copy through.
        self.remove_forwarded(request);
        let Some(certificate) = exchange.client_certificate.clone() else {
            if self.mode == Mode::Optional {
                if let Some(anonymous) = &self.anonymous {
                    exchange.authenticate(Identity::anonymous(anonymous.clone(), MtlsAuth::NAME));
                }
                return Flow::Continue.into();
            }
            // 403, not 401: TLS client authentication has no HTTP challenge to send in
            // `WWW-Authenticate` (RFC 9110 §11.6.1 requires one with 401), and the client cannot
            // add a certificate to this connection by repeating the request.
            let detail = if exchange.is_tls {
                "this route needs a client certificate, and the connection presented none"
            } else {
                "this route needs a client certificate, which needs a TLS connection"
            };
            return forbidden("client-certificate-required", detail).into();
        };
        match self.identity(&certificate) {
            Ok(identity) => {
                exchange.authenticate(identity);
                self.forward(request, &certificate);
                Flow::Continue.into()
            }
            Err(unrecognised) => unrecognised.response().into(),
        }
    }
}

#[cfg(test)]
mod tests;
