#![doc = include_str!("response_cache.md")]

mod flight;
mod rules;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::response_body::{
    fetch_in_background, observe_response_body, replace_response_body, BackgroundRequest, BodyObserver,
};
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestParts, ResponseParts,
    Stage, Validate,
};
use gantry_state::response_cache::{
    CacheKey, CacheRecord, CachedResponse, ResponseCacheStore, ResponseCaches, StoreCall,
};
use gantry_state::{StoreError, StoreMetrics};
use http::header::{
    AGE, AUTHORIZATION, CONTENT_LENGTH, ETAG, HOST, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, RANGE, SET_COOKIE,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use self::flight::{Flights, Lead};
use self::rules::{
    client_has_current_copy, freshness_lifetime, initial_age, not_modified_headers, not_modified_matches,
    update_headers, vary_names, CacheControl, LifetimeSettings, HEURISTICALLY_CACHEABLE,
};

/// Where responses are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In a memory zone of this process: each gateway process caches on its own.
    #[default]
    Memory,
    /// In `node.stores.redis`: every gateway process using it shares the entries.
    Redis,
}

/// What the cache key is made of, besides the route, the method and the path, which it always
/// has.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// The request's host (without port).
    #[serde(default = "yes")]
    pub host: bool,
    /// The query string, as sent.
    #[serde(default = "yes")]
    pub query: bool,
    /// Request headers whose values tell responses apart (`accept-language`), on top of what
    /// the upstream's `Vary` names.
    #[serde(default)]
    pub headers: Vec<String>,
    /// The consumer an identity policy recognised: each consumer gets its own entries.
    #[serde(default)]
    pub consumer: bool,
}

impl Default for KeySpec {
    fn default() -> Self {
        Self { host: true, query: true, headers: Vec::new(), consumer: false }
    }
}

/// Settings of `response_cache`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where responses are kept: `memory` (this process) or `redis` (`node.stores.redis`,
    /// shared by every gateway process using it).
    #[serde(default)]
    pub store: StoreKind,
    /// Memory store: the zone the entries go in. Policies naming the same zone with the same
    /// `memory_max_bytes` share its entries and its bound.
    #[serde(default = "default_zone")]
    pub memory_zone: String,
    /// Memory store: bytes the zone holds at most (bodies, headers and keys); the least used
    /// entries go first. Changing it starts an empty zone.
    #[serde(default = "default_memory_max_bytes")]
    pub memory_max_bytes: u64,
    /// Request methods answered from the cache: `GET`, and `HEAD` (answered from the entry
    /// stored for `GET`).
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Response statuses stored.
    #[serde(default = "default_statuses")]
    pub statuses: Vec<u16>,
    /// Largest response body stored, in bytes. A longer body is sent on to the client without
    /// being stored.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Freshness of responses whose upstream gives none (`Cache-Control: max-age`,
    /// `s-maxage`, `Expires`). Without it (the default) such responses are not stored.
    #[serde(default)]
    pub default_ttl: Option<gantry_config::Duration>,
    /// Freshness of responses without explicit freshness but with `Last-Modified`, as this
    /// fraction of the time since that date (RFC 9111 §4.2.2 suggests 0.1). Off by default.
    #[serde(default)]
    pub heuristic_fraction: Option<f64>,
    /// How long past freshness a response may be served while it is refreshed in the
    /// background, when the upstream's `stale-while-revalidate` says nothing.
    #[serde(default)]
    pub stale_while_revalidate: Option<gantry_config::Duration>,
    /// How long past freshness a response may be served when the upstream fails or answers
    /// 500, 502, 503 or 504, when the upstream's `stale-if-error` says nothing.
    #[serde(default)]
    pub stale_if_error: Option<gantry_config::Duration>,
    /// How long a response with a validator (`ETag`, `Last-Modified`) is kept once stale, so
    /// that it is revalidated with a conditional request instead of fetched whole.
    #[serde(default = "default_keep_for_revalidation")]
    pub keep_for_revalidation: gantry_config::Duration,
    /// Whether clients' own `Cache-Control` counts: `no-cache` and `max-age=0` make the cache
    /// revalidate, `no-store` bypasses it, `only-if-cached` gets a 504 on a miss. With `false`,
    /// clients cannot make the gateway go to the upstream.
    #[serde(default = "yes")]
    pub honor_request_cache_control: bool,
    /// What tells entries apart.
    #[serde(default)]
    pub key: KeySpec,
    /// Whether concurrent misses of one key make one upstream request, the others waiting for
    /// its response.
    #[serde(default = "yes")]
    pub lock: bool,
    /// How long a request waits for another's upstream request of the same key before going
    /// upstream itself.
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout: gantry_config::Duration,
    /// Response header telling how the cache answered (`HIT`, `MISS`, `STALE`, `REVALIDATED`,
    /// `BYPASS`); `null` for none.
    #[serde(default = "default_status_header")]
    pub status_header: Option<String>,
}

fn yes() -> bool {
    true
}

fn default_zone() -> String {
    "default".to_owned()
}

fn default_memory_max_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_methods() -> Vec<String> {
    vec!["GET".to_owned(), "HEAD".to_owned()]
}

fn default_statuses() -> Vec<u16> {
    HEURISTICALLY_CACHEABLE.to_vec()
}

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

fn default_keep_for_revalidation() -> gantry_config::Duration {
    gantry_config::Duration::from_secs(600)
}

fn default_lock_timeout() -> gantry_config::Duration {
    gantry_config::Duration::from_secs(5)
}

fn default_status_header() -> Option<String> {
    Some("x-cache".to_owned())
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.methods.is_empty() {
            errors.push(path.key("methods"), "list GET, and HEAD if it should be answered too");
        }
        for (index, method) in self.methods.iter().enumerate() {
            if !matches!(method.as_str(), "GET" | "HEAD") {
                errors.push(
                    path.key("methods").index(index),
                    format!("`{method}` is not cached: only GET and HEAD are (other methods invalidate)"),
                );
            }
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|method| method == "GET") {
            errors.push(path.key("methods"), "HEAD is answered from entries stored for GET: list GET too");
        }
        if self.statuses.is_empty() {
            errors.push(path.key("statuses"), "list at least one status, such as 200");
        }
        for (index, status) in self.statuses.iter().enumerate() {
            if *status == 206 {
                errors.push(path.key("statuses").index(index), "partial responses (206) are not cached");
            } else if !(200..=599).contains(status) {
                errors
                    .push(path.key("statuses").index(index), format!("{status} is not a final status: use 200 to 599"));
            }
        }
        if self.max_body_bytes == 0 {
            errors.push(path.key("max_body_bytes"), "must be more than 0");
        }
        if self.memory_max_bytes == 0 {
            errors.push(path.key("memory_max_bytes"), "must be more than 0");
        } else if self.store == StoreKind::Memory && self.max_body_bytes > self.memory_max_bytes {
            errors.push(path.key("max_body_bytes"), "is larger than memory_max_bytes: no such body would fit the zone");
        }
        if self.memory_zone.trim().is_empty() {
            errors.push(path.key("memory_zone"), "give the zone a name");
        }
        if self.heuristic_fraction.is_some_and(|fraction| !(fraction > 0.0 && fraction <= 1.0)) {
            errors.push(path.key("heuristic_fraction"), "must be more than 0 and at most 1 (0.1 is usual)");
        }
        if self.default_ttl.is_some_and(|ttl| ttl.get().is_zero()) {
            errors.push(
                path.key("default_ttl"),
                "must be more than 0; leave it out to store only what the upstream allows",
            );
        }
        if self.lock_timeout.get().is_zero() {
            errors.push(path.key("lock_timeout"), "must be more than 0; set `lock: false` to turn the lock off");
        }
    }
}

/// Factory of the `response_cache` policy.
#[derive(Debug)]
pub struct ResponseCache;

impl PolicyFactory for ResponseCache {
    const NAME: &'static str = "response_cache";
    const STAGE: Stage = Stage::Forward;
    const DOCS: &'static str = include_str!("response_cache.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let caches = context.stores.response_caches();
        let store = match config.store {
            StoreKind::Memory => Some(ResponseCacheStore::Memory(
                caches.memory_zone(config.memory_zone.trim(), config.memory_max_bytes.max(1)),
            )),
            StoreKind::Redis => {
                let redis = context.stores.response_cache_redis();
                if redis.is_none() {
                    errors.push(path.key("store"), "`redis` needs `node.stores.redis` in the node settings");
                }
                redis
            }
        };
        let mut key_headers = Vec::new();
        for (index, name) in config.key.headers.iter().enumerate() {
            match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                Ok(name) => key_headers.push(name),
                Err(_) => {
                    errors.push(path.key("key").key("headers").index(index), format!("`{name}` is not a header name"))
                }
            }
        }
        let status_header = match &config.status_header {
            None => None,
            Some(name) => match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                Ok(name) => Some(name),
                Err(_) => {
                    errors.push(path.key("status_header"), format!("`{name}` is not a header name"));
                    None
                }
            },
        };
        let (Some(store), true) = (store, errors.is_empty()) else {
            return Err(errors);
        };
        let inner = Inner {
            store,
            caches,
            store_metrics: context.stores.metrics().clone(),
            caches_head: config.methods.iter().any(|method| method == "HEAD"),
            statuses: config.statuses.iter().copied().collect(),
            max_body_bytes: usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX),
            lifetimes: LifetimeSettings {
                heuristic_fraction: config.heuristic_fraction,
                default_ttl: config.default_ttl.map(gantry_config::Duration::get),
            },
            stale_while_revalidate: config.stale_while_revalidate.map(gantry_config::Duration::get),
            stale_if_error: config.stale_if_error.map(gantry_config::Duration::get),
            keep_for_revalidation: config.keep_for_revalidation.get(),
            honor_request_cache_control: config.honor_request_cache_control,
            key: KeyParts {
                host: config.key.host,
                query: config.key.query,
                headers: key_headers,
                consumer: config.key.consumer,
            },
            lock: config.lock,
            lock_timeout: config.lock_timeout.get(),
            status_header,
            flights: Arc::new(Flights::default()),
        };
        Ok(Arc::new(CompiledResponseCache { inner: Arc::new(inner) }))
    }
}

/// What the key is made of, checked.
#[derive(Debug)]
struct KeyParts {
    host: bool,
    query: bool,
    headers: Vec<HeaderName>,
    consumer: bool,
}

/// The settings and state one policy instance shares with the work it leaves behind (body
/// observers, background refreshes, store writes).
#[derive(Debug)]
struct Inner {
    store: ResponseCacheStore,
    caches: Arc<ResponseCaches>,
    store_metrics: StoreMetrics,
    caches_head: bool,
    statuses: HashSet<u16>,
    max_body_bytes: usize,
    lifetimes: LifetimeSettings,
    stale_while_revalidate: Option<Duration>,
    stale_if_error: Option<Duration>,
    keep_for_revalidation: Duration,
    honor_request_cache_control: bool,
    key: KeyParts,
    lock: bool,
    lock_timeout: Duration,
    status_header: Option<HeaderName>,
    flights: Arc<Flights>,
}

/// Runs per request on routes with a cache: a key digest, one store lookup (two for a response
/// that varies), and on a hit a copy of the stored head; the body is shared, not copied.
#[derive(Debug)]
struct CompiledResponseCache {
    inner: Arc<Inner>,
}

/// How the cache answered or passed a request, as the status header and the metric say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CacheStatus {
    Hit,
    Miss,
    Stale,
    Revalidated,
    Bypass,
}

impl CacheStatus {
    fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Bypass => "BYPASS",
        })
    }

    fn label(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale => "stale",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// A request's stored response, and the `Vary` record it was found through.
#[derive(Clone, Debug, Default)]
struct Found {
    response: Option<Arc<CachedResponse>>,
    vary: Option<(Arc<[HeaderName]>, u64)>,
}

/// What the request hook left for the response hook.
enum State {
    /// Passed by the cache: nothing is stored.
    Bypass,
    /// An unsafe method: a success removes the stored response of its URL (RFC 9111 §4.4).
    Invalidate(CacheKey),
    /// Sent upstream: the response may be stored, or replaced by the stored one.
    Fetch(Box<Fetch>),
}

/// A request sent upstream for a miss or a revalidation.
struct Fetch {
    key: CacheKey,
    found: Found,
    /// The conditional headers the client sent itself, taken off while the cache revalidates
    /// with its own.
    client_conditionals: Option<HeaderMap>,
    request_headers: HeaderMap,
    request_time: SystemTime,
    is_head: bool,
    lead: Option<Lead>,
}

/// Extension values are `Clone`; the state is taken once.
#[derive(Clone)]
struct StateSlot(Arc<Mutex<Option<State>>>);

impl StateSlot {
    fn put(exchange: &mut Exchange, state: State) {
        exchange.extensions.insert(StateSlot(Arc::new(Mutex::new(Some(state)))));
    }

    fn take(exchange: &mut Exchange) -> Option<State> {
        let slot = exchange.extensions.remove::<StateSlot>()?;
        let state = slot.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        state
    }
}

/// Whether a stored response may answer a request without going upstream.
enum Reuse {
    /// Fresh, and fresh enough for the client.
    Fresh,
    /// Stale, but the client accepts that staleness (`max-stale`).
    StaleForClient,
    /// Stale within `stale-while-revalidate`: answer with it and refresh it in the background.
    StaleWhileRevalidate,
    /// It needs revalidating first.
    No,
}

impl Policy for CompiledResponseCache {
    fn hooks(&self) -> Hooks {
        Hooks { request: true, response: true, log: false }
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let inner = &self.inner;
        let cached_method = request.method == Method::GET || (request.method == Method::HEAD && inner.caches_head);
        // A WebSocket handshake is a GET too, and must reach the upstream whatever is stored.
        if request.headers.contains_key(UPGRADE) {
            return Hook::Done(Flow::Continue);
        }
        if !cached_method {
            if !request.method.is_safe() {
                StateSlot::put(exchange, State::Invalidate(inner.key(request, exchange)));
            }
            return Hook::Done(Flow::Continue);
        }
        Hook::Wait(Box::pin(inner.clone().handle_request(request, exchange)))
    }

    fn on_response(&self, response: &mut ResponseParts, exchange: &mut Exchange) {
        match StateSlot::take(exchange) {
            None => {}
            Some(State::Bypass) => self.inner.mark(response, exchange, CacheStatus::Bypass),
            Some(State::Invalidate(key)) if response.status.is_success() || response.status.is_redirection() => {
                let call = self.inner.store.remove(&key);
                self.inner.finish_store_call(call, None);
            }
            Some(State::Invalidate(_)) => {}
            Some(State::Fetch(fetch)) => self.inner.clone().finish_fetch(response, exchange, *fetch),
        }
    }
}

impl Inner {
    async fn handle_request(self: Arc<Self>, request: &mut RequestParts, exchange: &mut Exchange) -> Flow {
        let directives = if self.honor_request_cache_control {
            CacheControl::parse(&request.headers)
        } else {
            CacheControl::default()
        };
        // Ranges would need stored ranges combined; `no-store` forbids storing this exchange.
        if request.headers.contains_key(RANGE) || directives.no_store {
            StateSlot::put(exchange, State::Bypass);
            return Flow::Continue;
        }
        let key = self.key(request, exchange);
        let now = SystemTime::now();
        let mut found = self.lookup(&key, &request.headers).await;
        if let Some(stored) = found.response.clone() {
            match self.reuse(&stored, &directives, now) {
                Reuse::Fresh => return Flow::Respond(self.answer(&stored, request, exchange, CacheStatus::Hit, now)),
                Reuse::StaleForClient => {
                    return Flow::Respond(self.answer(&stored, request, exchange, CacheStatus::Stale, now));
                }
                Reuse::StaleWhileRevalidate => {
                    self.refresh_in_background(&key, &found, &stored, request, exchange);
                    return Flow::Respond(self.answer(&stored, request, exchange, CacheStatus::Stale, now));
                }
                Reuse::No => {}
            }
        }
        if directives.only_if_cached {
            // RFC 9111 §5.2.1.7.
            let response = problem_response(
                StatusCode::GATEWAY_TIMEOUT,
                "not-cached",
                "Gateway Timeout",
                Some("the client asked for a cached response only, and none can be used"),
            );
            return Flow::Respond(response);
        }
        let is_head = request.method == Method::HEAD;
        let mut lead = None;
        // A HEAD brings no body to store, so it neither leads nor waits.
        if self.lock && !is_head {
            match self.flights.join(&key) {
                Ok(leading) => lead = Some(leading),
                Err(follow) => {
                    if follow.wait(self.lock_timeout).await {
                        found = self.lookup(&key, &request.headers).await;
                        if let Some(stored) = found.response.clone() {
                            if matches!(self.reuse(&stored, &directives, SystemTime::now()), Reuse::Fresh) {
                                let now = SystemTime::now();
                                return Flow::Respond(self.answer(&stored, request, exchange, CacheStatus::Hit, now));
                            }
                        }
                    }
                }
            }
        }
        let client_conditionals = found.response.as_deref().filter(|stored| has_validators(stored)).map(|stored| {
            let taken = take_conditionals(&mut request.headers);
            add_validators(&mut request.headers, stored);
            taken
        });
        let fetch = Fetch {
            key,
            found,
            client_conditionals,
            request_headers: request.headers.clone(),
            request_time: now,
            is_head,
            lead,
        };
        StateSlot::put(exchange, State::Fetch(Box::new(fetch)));
        Flow::Continue
    }

    /// Whether `stored` may answer a request with `directives` at `now`.
    fn reuse(&self, stored: &CachedResponse, directives: &CacheControl, now: SystemTime) -> Reuse {
        let age = stored.age(now);
        let is_fresh = age < stored.freshness;
        let fresh_enough = is_fresh
            && !directives.no_cache
            && directives.max_age.is_none_or(|max_age| age <= Duration::from_secs(max_age))
            && directives.min_fresh.is_none_or(|min_fresh| stored.freshness - age >= Duration::from_secs(min_fresh));
        if fresh_enough {
            return Reuse::Fresh;
        }
        if is_fresh || directives.no_cache || directives.max_age.is_some() {
            return Reuse::No;
        }
        let staleness = age - stored.freshness;
        if let Some(max_stale) = directives.max_stale {
            if !stored.must_revalidate && max_stale.is_none_or(|max| staleness <= Duration::from_secs(max)) {
                return Reuse::StaleForClient;
            }
        }
        if staleness < stored.stale_while_revalidate {
            return Reuse::StaleWhileRevalidate;
        }
        Reuse::No
    }

    /// The stored response of `key` for a request with `headers`: through the `Vary` record
    /// when the response varies. A store failure counts as a miss.
    async fn lookup(&self, key: &CacheKey, headers: &HeaderMap) -> Found {
        match self.store.get(key).resolve().await {
            Ok(None) => Found::default(),
            Ok(Some(CacheRecord::Response(response))) => Found { response: Some(response), vary: None },
            Ok(Some(CacheRecord::Vary { names, generation })) => {
                let variant = key.variant(&variant_digest(generation, &names, headers));
                let response = match self.store.get(&variant).resolve().await {
                    Ok(Some(CacheRecord::Response(response))) => Some(response),
                    Ok(_) => None,
                    Err(err) => {
                        self.store_failed(&err, "miss");
                        None
                    }
                };
                Found { response, vary: Some((names, generation)) }
            }
            Err(err) => {
                self.store_failed(&err, "miss");
                Found::default()
            }
        }
    }

    /// The answer from `stored`: a 304 when the client's own conditionals hold, else the stored
    /// response (without body for HEAD), with its `Age`.
    fn answer(
        &self,
        stored: &CachedResponse,
        request: &RequestParts,
        exchange: &Exchange,
        status: CacheStatus,
        now: SystemTime,
    ) -> PolicyResponse {
        let mut response = if stored.status.is_success() && client_has_current_copy(&request.headers, &stored.headers) {
            let mut response = PolicyResponse::new(Bytes::new());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            *response.headers_mut() = not_modified_headers(&stored.headers);
            response
        } else {
            let body = if request.method == Method::HEAD { Bytes::new() } else { stored.body.clone() };
            let mut response = PolicyResponse::new(body);
            *response.status_mut() = stored.status;
            *response.headers_mut() = stored.headers.clone();
            set_content_length(response.headers_mut(), stored.body.len());
            response
        };
        response.headers_mut().insert(AGE, HeaderValue::from(stored.age(now).as_secs()));
        if let Some(name) = &self.status_header {
            response.headers_mut().insert(name.clone(), status.header_value());
        }
        self.caches.count(&exchange.route_id, status.label());
        response
    }

    /// Sets the status header and counts the request.
    fn mark(&self, response: &mut ResponseParts, exchange: &Exchange, status: CacheStatus) {
        if let Some(name) = &self.status_header {
            response.headers.insert(name.clone(), status.header_value());
        }
        self.caches.count(&exchange.route_id, status.label());
    }

    /// Asks for `stored` to be revalidated (or fetched again) once the stale answer is sent,
    /// unless a fetch of the key runs already.
    fn refresh_in_background(
        self: &Arc<Self>,
        key: &CacheKey,
        found: &Found,
        stored: &Arc<CachedResponse>,
        request: &RequestParts,
        exchange: &mut Exchange,
    ) {
        let Some(lead) = self.flights.try_lead(key) else { return };
        let Ok(mut head) = http::Request::get(request.uri.clone()).body(()).map(|request| request.into_parts().0)
        else {
            return;
        };
        head.headers = request.headers.clone();
        take_conditionals(&mut head.headers);
        add_validators(&mut head.headers, stored);
        let fetch = Fetch {
            key: key.clone(),
            found: found.clone(),
            client_conditionals: None,
            request_headers: request.headers.clone(),
            request_time: SystemTime::now(),
            is_head: false,
            lead: Some(lead),
        };
        let inner = self.clone();
        let route = exchange.route_id.clone();
        let deliver = move |result: Result<http::Response<Bytes>, String>| match result {
            Ok(response) => inner.store_refreshed(response, fetch),
            Err(reason) => tracing::debug!(route = &*route, reason = %reason, "background revalidation failed"),
        };
        fetch_in_background(
            exchange,
            BackgroundRequest { head, max_body_bytes: self.max_body_bytes, deliver: Box::new(deliver) },
        );
    }

    /// Stores what a background refresh brought: the stored response updated by a 304, or a new
    /// storable response.
    fn store_refreshed(&self, response: http::Response<Bytes>, mut fetch: Fetch) {
        let (head, body) = response.into_parts();
        let now = SystemTime::now();
        let lead = fetch.lead.take();
        if head.status == StatusCode::NOT_MODIFIED {
            if let Some(stored) = fetch.found.response.as_deref() {
                if let Some((updated, ttl)) = self.updated_by_304(stored, &head.headers, &fetch, now) {
                    self.store_entry(&fetch, &updated.headers.clone(), Arc::new(updated), ttl, lead);
                }
            }
            return;
        }
        if let Some((mut entry, ttl)) = self.plan(head.status, &head.headers, &fetch, now) {
            if body.len() <= self.max_body_bytes {
                entry.body = body;
                let headers = entry.headers.clone();
                self.store_entry(&fetch, &headers, Arc::new(entry), ttl, lead);
            }
        }
    }

    /// Finishes a request that went upstream: a 304 to the cache's revalidation answers with
    /// the stored response, an upstream failure with a stale one if allowed, and a storable
    /// response is stored as it streams to the client.
    fn finish_fetch(self: Arc<Self>, response: &mut ResponseParts, exchange: &mut Exchange, mut fetch: Fetch) {
        let now = SystemTime::now();
        if let (Some(conditionals), Some(stored)) = (&fetch.client_conditionals, fetch.found.response.clone()) {
            if response.status == StatusCode::NOT_MODIFIED {
                if let Some((updated, ttl)) = self.updated_by_304(&stored, &response.headers, &fetch, now) {
                    let updated = Arc::new(updated);
                    self.answer_from(response, exchange, &updated, conditionals, fetch.is_head, now);
                    self.mark(response, exchange, CacheStatus::Revalidated);
                    let lead = fetch.lead.take();
                    let headers = updated.headers.clone();
                    self.store_entry(&fetch, &headers, updated, ttl, lead);
                    return;
                }
            }
        }
        if matches!(response.status.as_u16(), 500 | 502 | 503 | 504) {
            if let Some(stored) = fetch.found.response.clone() {
                let staleness = stored.age(now).saturating_sub(stored.freshness);
                if staleness <= stored.stale_if_error && !stored.stale_if_error.is_zero() {
                    let conditionals = fetch.client_conditionals.clone().unwrap_or_default();
                    self.answer_from(response, exchange, &stored, &conditionals, fetch.is_head, now);
                    self.mark(response, exchange, CacheStatus::Stale);
                    return;
                }
            }
        }
        self.mark(response, exchange, CacheStatus::Miss);
        if fetch.is_head {
            return;
        }
        let Some((entry, ttl)) = self.plan(response.status, &response.headers, &fetch, now) else {
            return;
        };
        let declared = response.headers.get(CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.max_body_bytes as u64) {
            return;
        }
        let lead = fetch.lead.take();
        let collector =
            Collector { inner: self.clone(), fetch, entry: Some(entry), ttl, chunks: Vec::new(), size: 0, lead };
        observe_response_body(exchange, Box::new(collector));
    }

    /// Rewrites `response` into the answer from `stored` for a client that sent
    /// `conditionals`: a 304 when they hold, else the stored status, headers and body.
    fn answer_from(
        &self,
        response: &mut ResponseParts,
        exchange: &mut Exchange,
        stored: &CachedResponse,
        conditionals: &HeaderMap,
        is_head: bool,
        now: SystemTime,
    ) {
        if stored.status.is_success() && client_has_current_copy(conditionals, &stored.headers) {
            response.status = StatusCode::NOT_MODIFIED;
            response.headers = not_modified_headers(&stored.headers);
            replace_response_body(exchange, Bytes::new());
        } else {
            response.status = stored.status;
            response.headers = stored.headers.clone();
            set_content_length(&mut response.headers, stored.body.len());
            replace_response_body(exchange, if is_head { Bytes::new() } else { stored.body.clone() });
        }
        response.headers.insert(AGE, HeaderValue::from(stored.age(now).as_secs()));
    }

    /// `stored` updated by a 304 about it, with its new freshness, if it may be stored again.
    fn updated_by_304(
        &self,
        stored: &CachedResponse,
        not_modified: &HeaderMap,
        fetch: &Fetch,
        now: SystemTime,
    ) -> Option<(CachedResponse, Duration)> {
        if !not_modified_matches(&stored.headers, not_modified) {
            return None;
        }
        let headers = update_headers(&stored.headers, not_modified);
        let (mut updated, ttl) = self.plan(stored.status, &headers, fetch, now)?;
        updated.body = stored.body.clone();
        Some((updated, ttl))
    }

    /// Whether a response with `status` and `headers` may be stored for the request of
    /// `fetch` (RFC 9111 §3), and if so its entry (without body) and time to live.
    fn plan(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        fetch: &Fetch,
        response_time: SystemTime,
    ) -> Option<(CachedResponse, Duration)> {
        if !self.statuses.contains(&status.as_u16()) {
            return None;
        }
        let directives = CacheControl::parse(headers);
        if directives.no_store || directives.private || headers.contains_key(SET_COOKIE) {
            return None;
        }
        // §3.5: a response to an authenticated request is for that client only, unless the
        // upstream says otherwise.
        let shareable = directives.public || directives.s_maxage.is_some() || directives.must_revalidate;
        if fetch.request_headers.contains_key(AUTHORIZATION) && !shareable {
            return None;
        }
        vary_names(headers).ok()?;
        let has_validators = headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED);
        let lifetime = freshness_lifetime(status, headers, &directives, response_time, &self.lifetimes);
        if lifetime.is_none() && !(directives.no_cache && has_validators) {
            return None;
        }
        let freshness =
            if directives.no_cache { Duration::ZERO } else { lifetime.map_or(Duration::ZERO, |l| l.duration) };
        // s-maxage implies proxy-revalidate for a shared cache (§5.2.2.10).
        let must_revalidate = directives.must_revalidate
            || directives.proxy_revalidate
            || directives.s_maxage.is_some()
            || directives.no_cache;
        let stale_while_revalidate = if must_revalidate {
            Duration::ZERO
        } else {
            directives
                .stale_while_revalidate
                .map(Duration::from_secs)
                .or(self.stale_while_revalidate)
                .unwrap_or_default()
        };
        // RFC 5861 §4: the upstream's own stale-if-error holds whatever else it says; the
        // configured one only where serving stale is not forbidden.
        let stale_if_error = directives
            .stale_if_error
            .map(Duration::from_secs)
            .or(if must_revalidate { None } else { self.stale_if_error })
            .unwrap_or_default();
        let initial_age = initial_age(headers, fetch.request_time, response_time);
        let keep_for = stale_while_revalidate.max(stale_if_error).max(if has_validators {
            self.keep_for_revalidation
        } else {
            Duration::ZERO
        });
        let ttl = (freshness + keep_for).saturating_sub(initial_age);
        if ttl.is_zero() {
            return None;
        }
        let entry = CachedResponse {
            status,
            headers: headers.clone(),
            body: Bytes::new(),
            response_time,
            initial_age,
            freshness,
            stale_while_revalidate,
            stale_if_error,
            must_revalidate,
        };
        Some((entry, ttl))
    }

    /// Stores `entry` (whose headers are `headers`) for the request of `fetch`: at the key, or,
    /// when it varies, as a variant behind a `Vary` record. `lead` is released once it is stored.
    fn store_entry(
        &self,
        fetch: &Fetch,
        headers: &HeaderMap,
        entry: Arc<CachedResponse>,
        ttl: Duration,
        lead: Option<Lead>,
    ) {
        let Ok(names) = vary_names(headers) else { return };
        if names.is_empty() {
            let call = self.store.put(&fetch.key, CacheRecord::Response(entry), ttl);
            self.finish_store_call(call, lead);
            return;
        }
        let names: Arc<[HeaderName]> = Arc::from(names);
        let generation = match &fetch.found.vary {
            Some((known, generation)) if *known == names => *generation,
            _ => new_generation(),
        };
        let variant = fetch.key.variant(&variant_digest(generation, &names, &fetch.request_headers));
        let record = self.store.put(&fetch.key, CacheRecord::Vary { names, generation }, ttl);
        let response = self.store.put(&variant, CacheRecord::Response(entry), ttl);
        self.finish_store_call(record, None);
        self.finish_store_call(response, lead);
    }

    /// Waits for a store call off the request path; counts a failure; then releases `lead`.
    fn finish_store_call<T: Send + 'static>(&self, call: StoreCall<'static, T>, lead: Option<Lead>) {
        match call {
            StoreCall::Ready(result) => {
                if let Err(err) = result {
                    self.store_failed(&err, "not_stored");
                }
                drop(lead);
            }
            StoreCall::Pending(future) => {
                let metrics = self.store_metrics.clone();
                let store = self.store.name();
                let spawned = tokio::runtime::Handle::try_current().map(|runtime| {
                    runtime.spawn(async move {
                        if let Err(err) = future.await {
                            metrics.count_error("response_cache", store, "not_stored");
                            tracing::warn!(store, error = %err, "response cache store failed; response not stored");
                        }
                        drop(lead);
                    })
                });
                if spawned.is_err() {
                    tracing::debug!("no runtime to store a response on");
                }
            }
        }
    }

    fn store_failed(&self, err: &StoreError, action: &'static str) {
        self.store_metrics.count_error("response_cache", self.store.name(), action);
        tracing::warn!(store = self.store.name(), error = %err, action, "response cache store failed");
    }

    /// The key of a request: route, host and path in clear, the rest digested. HEAD shares the
    /// key of GET, and an unsafe method names the entry it invalidates.
    fn key(&self, request: &RequestParts, exchange: &Exchange) -> CacheKey {
        let mut digest = Sha256::new();
        digest.update(b"GET\n");
        if self.key.query {
            digest.update(request.uri.query().unwrap_or_default().as_bytes());
        }
        digest.update(b"\n");
        for name in &self.key.headers {
            digest.update(name.as_str().as_bytes());
            for value in request.headers.get_all(name) {
                digest.update(b"\0");
                digest.update(value.as_bytes());
            }
            digest.update(b"\n");
        }
        if self.key.consumer {
            if let Some(consumer) = exchange.consumer() {
                digest.update(consumer.id.as_bytes());
            }
        }
        let host = if self.key.host { request_host(request) } else { "-".to_owned() };
        CacheKey::new(exchange.route_id.clone(), &host, request.uri.path(), &hex(&digest.finalize()[..16]))
    }
}

/// Collects a response body as it streams to the client and stores the response at its end;
/// past `max_body_bytes` it lets go, releasing requests waiting for this key at once.
struct Collector {
    inner: Arc<Inner>,
    fetch: Fetch,
    /// `None` once the body grew too large.
    entry: Option<CachedResponse>,
    ttl: Duration,
    chunks: Vec<Bytes>,
    size: usize,
    lead: Option<Lead>,
}

impl BodyObserver for Collector {
    fn on_data(&mut self, data: &Bytes) {
        if self.entry.is_none() {
            return;
        }
        self.size += data.len();
        if self.size > self.inner.max_body_bytes {
            self.entry = None;
            self.chunks = Vec::new();
            self.lead = None;
            return;
        }
        self.chunks.push(data.clone());
    }

    fn on_end(mut self: Box<Self>) {
        let Some(mut entry) = self.entry.take() else { return };
        entry.body = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.swap_remove(0),
            _ => {
                let mut body = BytesMut::with_capacity(self.size);
                for chunk in &self.chunks {
                    body.extend_from_slice(chunk);
                }
                body.freeze()
            }
        };
        let headers = entry.headers.clone();
        let lead = self.lead.take();
        self.inner.store_entry(&self.fetch, &headers, Arc::new(entry), self.ttl, lead);
    }
}

fn has_validators(stored: &CachedResponse) -> bool {
    stored.headers.contains_key(ETAG) || stored.headers.contains_key(LAST_MODIFIED)
}

/// Removes the client's conditional headers and returns them.
fn take_conditionals(headers: &mut HeaderMap) -> HeaderMap {
    let mut taken = HeaderMap::new();
    for name in [IF_NONE_MATCH, IF_MODIFIED_SINCE] {
        if let http::header::Entry::Occupied(entry) = headers.entry(name.clone()) {
            let (name, values) = entry.remove_entry_mult();
            for value in values {
                taken.append(name.clone(), value);
            }
        }
    }
    taken
}

/// Asks the upstream whether `stored` is still current (RFC 9111 §4.3.1).
fn add_validators(headers: &mut HeaderMap, stored: &CachedResponse) {
    if let Some(etag) = stored.headers.get(ETAG) {
        headers.insert(IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = stored.headers.get(LAST_MODIFIED) {
        headers.insert(IF_MODIFIED_SINCE, modified.clone());
    }
}

fn set_content_length(headers: &mut HeaderMap, length: usize) {
    headers.remove(TRANSFER_ENCODING);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
}

/// The variant of a response for the values of the request headers its `Vary` names.
fn variant_digest(generation: u64, names: &[HeaderName], headers: &HeaderMap) -> String {
    let mut digest = Sha256::new();
    digest.update(generation.to_be_bytes());
    for name in names {
        digest.update(name.as_str().as_bytes());
        for value in headers.get_all(name) {
            digest.update(b"\0");
            digest.update(value.as_bytes());
        }
        digest.update(b"\n");
    }
    hex(&digest.finalize()[..16])
}

/// A generation for a new `Vary` record: random, so a replaced record orphans the old variants
/// on every gateway process.
fn new_generation() -> u64 {
    let mut bytes = [0_u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        return nanos as u64;
    }
    u64::from_be_bytes(bytes)
}

/// The request's host, lower case, without port.
fn request_host(request: &RequestParts) -> String {
    let host = request
        .uri
        .authority()
        .map(|authority| authority.host().to_owned())
        .or_else(|| request.headers.get(HOST).and_then(|value| value.to_str().ok()).map(strip_port))
        .unwrap_or_default();
    host.to_ascii_lowercase()
}

fn strip_port(host: &str) -> String {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_owned();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|byte| byte.is_ascii_digit()) => name.to_owned(),
        _ => host.to_owned(),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

#[cfg(test)]
mod tests;
