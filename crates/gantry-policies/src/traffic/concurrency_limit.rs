#![doc = include_str!("concurrency_limit.md")]

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use gantry_config::{ConfigErrors, Duration, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestParts, Stage, Validate,
};
use http::header::RETRY_AFTER;
use http::{HeaderValue, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::limit_key::{default_key, KeyPart, KeyValue, LimitKey};

/// Settings of `concurrency_limit`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Requests served at once per key, more than 0. A request holds its place until its
    /// response body has been sent, or the client has gone.
    pub max_in_flight: u32,
    /// Requests per key that may wait for a place once `max_in_flight` are served, served in
    /// arrival order. Past them, requests are refused at once; 0 refuses at once.
    #[serde(default)]
    pub max_queued: u32,
    /// Longest wait of a queued request, more than 0; then it is refused.
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: Duration,
    /// What requests are counted by: a list of `route`, `consumer`, `credential`, `ip`,
    /// `{header: <name>}` and (in a consumer group's policies) `consumer_group`, all of which
    /// together make a request's key.
    #[serde(default = "default_key")]
    pub key: Vec<KeyPart>,
    /// Status of a refusal: 503 (the default: the service is busy) or 429 (this client has
    /// too many requests in flight).
    #[serde(default = "default_status")]
    pub status: u16,
    /// `Retry-After` of a refusal, in whole seconds (rounded up).
    #[serde(default = "default_retry_after")]
    pub retry_after: Duration,
}

fn default_queue_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_status() -> u16 {
    503
}

fn default_retry_after() -> Duration {
    Duration::from_secs(1)
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.max_in_flight == 0 {
            errors
                .push(path.key("max_in_flight"), "must be more than 0 (to refuse every request, use `mock_response`)");
        }
        if self.max_queued > 0 && self.queue_timeout.get().is_zero() {
            errors.push(path.key("queue_timeout"), "must be more than 0 when `max_queued` is set");
        }
        if !matches!(self.status, 429 | 503) {
            errors.push(path.key("status"), format!("{} is not 429 or 503", self.status));
        }
    }
}

/// Factory of the `concurrency_limit` policy.
#[derive(Debug)]
pub struct ConcurrencyLimit;

impl PolicyFactory for ConcurrencyLimit {
    const NAME: &'static str = "concurrency_limit";
    const STAGE: Stage = Stage::Traffic;
    const DOCS: &'static str = include_str!("concurrency_limit.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let key = LimitKey::compile(&config.key, &path.key("key"), &mut errors);
        errors.into_result(())?;
        // `validate` has refused a status other than 429 or 503; this default is never served then.
        let status = StatusCode::from_u16(config.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let retry_after = config.retry_after.get();
        let retry_after_secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        let limiter = shared_limiter(LimiterId {
            path: path.to_string(),
            max_in_flight: config.max_in_flight,
            key: config.key.clone(),
        });
        Ok(Arc::new(CompiledConcurrencyLimit {
            limiter,
            key,
            max_queued: config.max_queued as usize,
            queue_timeout: config.queue_timeout.get(),
            status,
            retry_after: HeaderValue::from(retry_after_secs),
            max_in_flight: config.max_in_flight,
        }))
    }
}

/// Runs per request: builds the key and takes one short lock to enter, one to leave; waits
/// (and allocates a future) only when the key is full and the request is queued.
struct CompiledConcurrencyLimit {
    limiter: Arc<Limiter>,
    key: LimitKey,
    max_queued: usize,
    queue_timeout: std::time::Duration,
    status: StatusCode,
    retry_after: HeaderValue,
    max_in_flight: u32,
}

impl CompiledConcurrencyLimit {
    fn refuse(&self, detail: &str) -> PolicyResponse {
        let mut response =
            problem_response(self.status, "concurrency-limit-exceeded", "Too many requests in flight", Some(detail));
        response.headers_mut().insert(RETRY_AFTER, self.retry_after.clone());
        response
    }
}

impl Policy for CompiledConcurrencyLimit {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let key = self.key.value(request, exchange);
        match self.limiter.enter(key, self.max_queued) {
            Entered::Admitted(place) => {
                // The data plane keeps the exchange's extensions until the response body has
                // been sent, so the place is given back then, not when the head is.
                exchange.extensions.insert(Place { _held: Arc::new(place) });
                Hook::Done(Flow::Continue)
            }
            Entered::Full => {
                tracing::debug!(max_in_flight = self.max_in_flight, "concurrency limit reached, queue full");
                let detail = format!(
                    "{} requests like this one are in flight and the queue is full; try again later",
                    self.max_in_flight
                );
                self.refuse(&detail).into()
            }
            Entered::Queued(waiting) => Hook::Wait(Box::pin(async move {
                match tokio::time::timeout(self.queue_timeout, waiting.admitted()).await {
                    Ok(place) => {
                        exchange.extensions.insert(Place { _held: Arc::new(place) });
                        Flow::Continue
                    }
                    Err(_) => {
                        tracing::debug!(max_in_flight = self.max_in_flight, "no place freed within the queue timeout");
                        let detail = format!(
                            "{} requests like this one stayed in flight for {}; try again later",
                            self.max_in_flight,
                            humantime::format_duration(self.queue_timeout)
                        );
                        Flow::Respond(self.refuse(&detail))
                    }
                }
            })),
        }
    }
}

/// The place a request holds, in the exchange's extensions. Extensions must be `Clone`, hence
/// the `Arc`: the place is given back when the last clone is dropped.
#[derive(Clone)]
struct Place {
    _held: Arc<Held>,
}

/// Counts of requests in flight and waiting, per key, for one policy instance.
///
/// Each busy key has a fair (first in, first out) tokio semaphore of `max_in_flight` permits
/// and a count of the requests using it, in flight or waiting. The count changes only under
/// the map's lock, and a key's entry is removed when it drops to 0, so the map holds only keys
/// with requests in flight or queued: many distinct keys over time cost no memory once idle.
#[derive(Debug)]
struct Limiter {
    max_in_flight: usize,
    keys: Mutex<HashMap<KeyValue, KeyEntry>>,
}

#[derive(Debug)]
struct KeyEntry {
    semaphore: Arc<Semaphore>,
    /// Requests in flight or queued on this key.
    users: usize,
}

/// What [`Limiter::enter`] decided.
enum Entered {
    /// In flight now.
    Admitted(Held),
    /// Waiting for a place.
    Queued(Held),
    /// Every place is taken and the queue is full.
    Full,
}

/// One request's use of a key: queued while `permit` is `None`, in flight once it is set.
/// Dropping it leaves the key, whichever it was.
#[derive(Debug)]
struct Held {
    limiter: Arc<Limiter>,
    key: KeyValue,
    semaphore: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Limiter {
    fn new(max_in_flight: usize) -> Self {
        Self { max_in_flight, keys: Mutex::default() }
    }

    fn enter(self: &Arc<Self>, key: KeyValue, max_queued: usize) -> Entered {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = keys
            .entry(key.clone())
            .or_insert_with(|| KeyEntry { semaphore: Arc::new(Semaphore::new(self.max_in_flight)), users: 0 });
        let semaphore = entry.semaphore.clone();
        // Released permits go to waiters first, so a free permit means nobody is queued and
        // taking it jumps no queue.
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            entry.users += 1;
            return Entered::Admitted(Held { limiter: self.clone(), key, semaphore, permit: Some(permit) });
        }
        // No permit is free: every one is held by a request in flight (or handed to a waiter
        // about to be), so the other users are queued.
        let queued = entry.users.saturating_sub(self.max_in_flight);
        if queued >= max_queued {
            return Entered::Full;
        }
        entry.users += 1;
        Entered::Queued(Held { limiter: self.clone(), key, semaphore, permit: None })
    }

    /// Leaves `key`, giving back `permit` (to the first waiter, if any) under the lock, so
    /// that the counts `enter` reads are consistent.
    fn leave(&self, key: &KeyValue, permit: Option<OwnedSemaphorePermit>) {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        drop(permit);
        let Some(entry) = keys.get_mut(key) else { return };
        entry.users = entry.users.saturating_sub(1);
        if entry.users == 0 {
            keys.remove(key);
            // A burst of many distinct keys would otherwise leave a large table behind.
            let (len, capacity) = (keys.len(), keys.capacity());
            if capacity > 1024 && len < capacity / 4 {
                keys.shrink_to(len * 2);
            }
        }
    }

    #[cfg(test)]
    fn tracked_keys(&self) -> usize {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Held {
    /// Waits for a place, in arrival order. Dropping the future (a timeout, a client gone)
    /// leaves the queue.
    async fn admitted(mut self) -> Held {
        // The semaphore is never closed, so acquiring only ends with a permit.
        if let Ok(permit) = self.semaphore.clone().acquire_owned().await {
            self.permit = Some(permit);
        }
        self
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.limiter.leave(&self.key, self.permit.take());
    }
}

/// What makes two builds the same limiter: where it is configured, its size and its key.
#[derive(Debug, PartialEq, Eq)]
struct LimiterId {
    path: String,
    max_in_flight: u32,
    key: Vec<KeyPart>,
}

/// Limiters alive in this process, so that a reload that leaves a policy's place, size and
/// key unchanged keeps counting the requests already in flight.
static SHARED: LazyLock<Mutex<Vec<SharedLimiter>>> = LazyLock::new(Mutex::default);

type SharedLimiter = (LimiterId, Weak<Limiter>);

fn shared_limiter(id: LimiterId) -> Arc<Limiter> {
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(alive) = shared.iter().filter(|(own, _)| *own == id).find_map(|(_, limiter)| limiter.upgrade()) {
        return alive;
    }
    let limiter = Arc::new(Limiter::new(id.max_in_flight as usize));
    shared.retain(|(_, limiter)| limiter.strong_count() > 0);
    shared.push((id, Arc::downgrade(&limiter)));
    limiter
}

#[cfg(test)]
mod tests;
