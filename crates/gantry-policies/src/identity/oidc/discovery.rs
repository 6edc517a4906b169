//! The provider's metadata (OpenID Connect Discovery 1.0): fetched from
//! `<issuer>/.well-known/openid-configuration` at first use (or in the background right after
//! a configuration is built), reused for `refresh`, refreshed in the background after that,
//! and kept when a refresh fails. Concurrent first uses wait for one fetch.
//!
//! Like key sets, the metadata of one issuer is shared across configuration reloads, so a
//! reload neither refetches it nor loses it while the provider is down.

use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use serde::Deserialize;

use crate::identity::jwks::{JwksCache, JwksSettings};
use crate::identity::outbound;

/// Largest metadata document read; real ones are a few kilobytes.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// How discovery fetches and how the key set it names is cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DiscoverySettings {
    /// Age after which the metadata is refreshed in the background.
    pub(crate) refresh: Duration,
    /// Least time between two fetches.
    pub(crate) min_refresh: Duration,
    /// Longest a fetch may take.
    pub(crate) timeout: Duration,
    /// Settings of the key set cache.
    pub(crate) jwks: JwksSettings,
}

/// What the policy uses of the provider's metadata.
#[derive(Debug)]
pub(crate) struct Metadata {
    pub(crate) authorization_endpoint: Option<reqwest::Url>,
    pub(crate) token_endpoint: Option<reqwest::Url>,
    pub(crate) jwks: JwksCache,
    fetched_at: Instant,
}

/// The metadata document's members the policy reads.
#[derive(Deserialize)]
struct Document {
    issuer: String,
    jwks_uri: String,
    #[serde(default)]
    authorization_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint: Option<String>,
}

/// Why there is no metadata to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the OpenID provider's metadata could not be fetched yet")]
pub(crate) struct Unavailable;

/// The cached metadata of one issuer.
#[derive(Debug)]
pub(crate) struct Discovery {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    issuer: String,
    url: reqwest::Url,
    settings: DiscoverySettings,
    client: reqwest::Client,
    current: ArcSwapOption<Metadata>,
    /// Held while a fetch runs, with the time of the last attempt.
    fetch: Arc<tokio::sync::Mutex<Option<Instant>>>,
}

type SharedEntry = (String, DiscoverySettings, Weak<Inner>);

static SHARED: LazyLock<Mutex<Vec<SharedEntry>>> = LazyLock::new(Mutex::default);

impl Discovery {
    /// The discovery of `issuer` with `settings` alive in this process, or a new one.
    pub(crate) fn shared(issuer: &str, settings: DiscoverySettings) -> Result<Self, String> {
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        let alive = shared
            .iter()
            .filter(|(own, own_settings, _)| own == issuer && *own_settings == settings)
            .find_map(|(_, _, inner)| inner.upgrade());
        if let Some(inner) = alive {
            return Ok(Self { inner });
        }
        let discovery = Self::new(issuer, settings)?;
        shared.retain(|(_, _, inner)| inner.strong_count() > 0);
        shared.push((issuer.to_owned(), settings, Arc::downgrade(&discovery.inner)));
        Ok(discovery)
    }

    fn new(issuer: &str, settings: DiscoverySettings) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(issuer).map_err(|err| format!("not a URL: {err}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
            return Err("must be an http or https URL".to_owned());
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            // OpenID Connect Discovery 1.0 §3: an issuer has no query or fragment.
            return Err("must have no query or fragment".to_owned());
        }
        let url = reqwest::Url::parse(&format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/')))
            .map_err(|err| format!("not a URL: {err}"))?;
        let client = outbound::client_builder(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| format!("cannot set up the HTTP client: {err}"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                issuer: issuer.to_owned(),
                url,
                settings,
                client,
                current: ArcSwapOption::empty(),
                fetch: Arc::default(),
            }),
        })
    }

    /// Starts the first fetch in the background when a runtime is running.
    pub(crate) fn prefetch(&self) {
        if self.inner.current.load().is_none() {
            self.inner.refresh_in_background();
        }
    }

    /// The metadata if fetched, without waiting; refreshed in the background when due.
    pub(crate) fn cached(&self) -> Option<Arc<Metadata>> {
        let metadata = self.inner.current.load_full()?;
        if metadata.fetched_at.elapsed() >= self.inner.settings.refresh {
            self.inner.refresh_in_background();
        }
        Some(metadata)
    }

    /// The metadata, fetched first if there is none yet.
    pub(crate) async fn metadata(&self) -> Result<Arc<Metadata>, Unavailable> {
        if let Some(metadata) = self.cached() {
            return Ok(metadata);
        }
        let inner = self.inner.clone();
        let mut last_attempt = inner.fetch.clone().lock_owned().await;
        // Another request's fetch may have ended while this one waited.
        if let Some(metadata) = inner.current.load_full() {
            return Ok(metadata);
        }
        if last_attempt.is_some_and(|at| at.elapsed() < inner.settings.min_refresh) {
            return Err(Unavailable);
        }
        *last_attempt = Some(Instant::now());
        // In a task of its own, so a request that gives up does not cancel the fetch others
        // wait for.
        let fetcher = inner.clone();
        let fetch = async move {
            fetcher.fetch_and_store().await;
            drop(last_attempt);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let _ = runtime.spawn(fetch).await;
            }
            Err(_) => fetch.await,
        }
        inner.current.load_full().ok_or(Unavailable)
    }
}

impl Inner {
    fn refresh_in_background(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let Ok(mut last_attempt) = self.fetch.clone().try_lock_owned() else { return };
        if last_attempt.is_some_and(|at| at.elapsed() < self.settings.min_refresh) {
            return;
        }
        *last_attempt = Some(Instant::now());
        let inner = self.clone();
        runtime.spawn(async move {
            inner.fetch_and_store().await;
            drop(last_attempt);
        });
    }

    async fn fetch_and_store(&self) {
        match self.download().await {
            Ok(metadata) => {
                tracing::debug!(issuer = %self.issuer, "OpenID provider metadata fetched");
                metadata.jwks.prefetch();
                self.current.store(Some(Arc::new(metadata)));
            }
            Err(error) => {
                let kept = self.current.load().is_some();
                tracing::warn!(issuer = %self.issuer, %error, kept, "OpenID provider metadata fetch failed");
            }
        }
    }

    async fn download(&self) -> Result<Metadata, String> {
        let body = outbound::get_document(&self.client, &self.url, "application/json", MAX_DOCUMENT_BYTES).await?;
        self.parse(&body)
    }

    fn parse(&self, body: &[u8]) -> Result<Metadata, String> {
        let document: Document =
            serde_json::from_slice(body).map_err(|err| format!("not OpenID provider metadata: {err}"))?;
        // OpenID Connect Discovery 1.0 §4.3: the issuer must be exactly the one asked for, or
        // a provider could speak for another.
        if document.issuer != self.issuer {
            return Err(format!("the metadata names the issuer `{}`, not the one configured", document.issuer));
        }
        let endpoint = |name: &str, value: Option<String>| -> Result<Option<reqwest::Url>, String> {
            value
                .map(|text| reqwest::Url::parse(&text).map_err(|err| format!("`{name}` is not a URL: {err}")))
                .transpose()
        };
        let jwks = JwksCache::shared(&document.jwks_uri, self.settings.jwks).map_err(|err| err.to_string())?;
        Ok(Metadata {
            authorization_endpoint: endpoint("authorization_endpoint", document.authorization_endpoint)?,
            token_endpoint: endpoint("token_endpoint", document.token_endpoint)?,
            jwks,
            fetched_at: Instant::now(),
        })
    }
}
