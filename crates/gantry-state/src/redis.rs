//! Counters in Redis, shared by every gateway process that uses the same server or cluster.
//!
//! Each limiter operation is one Lua script run (`EVALSHA`; the script is loaded on the first
//! `NOSCRIPT` answer and then stays cached by the server), so reading, deciding and counting is
//! atomic across processes, and takes one round trip. The window and bucket scripts read
//! Redis's own clock (`TIME`), so the gateways' clocks never need to agree; the calendar
//! period's script needs no clock, as its caller names the period in the key. Every operation touches one key, so
//! in a Redis Cluster it is served by the one node owning that key's slot.
//!
//! Connections are multiplexed: one connection carries many requests at once, written
//! back-to-back without waiting for answers (pipelining), so `pool_size` connections serve a
//! whole process. They open on first use or on [`RedisStore::connect`]; a store whose Redis is
//! down answers [`StoreError::Unavailable`] quickly and tries again at most every
//! [`RECONNECT_INTERVAL`], so a gateway starts and serves while Redis is away.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use gantry_config::{ConfigErrors, FieldPath, RedisSpec};
use redis::aio::ConnectionManager;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{ConnectionInfo, IntoConnectionInfo, Script};

use crate::{CounterStore, Decision, Hit, StoreError, PERIOD_GRACE};

mod response_cache;

/// Least time between two attempts to open connections while Redis is unreachable.
pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

const NAME: &str = "redis";

/// How to open connections: to one server, or to a cluster.
enum Client {
    Single { client: redis::Client, connect_timeout: Duration, timeout: Duration },
    Cluster(ClusterClient),
}

/// Open connections, used in turn.
enum Pool {
    Single(Vec<ConnectionManager>),
    Cluster(Vec<ClusterConnection>),
}

/// The limiter scripts, hashed once.
struct Scripts {
    fixed_window: Script,
    sliding_window: Script,
    gcra: Script,
    period: Script,
}

/// Limiter counters in Redis or a Redis Cluster.
pub struct RedisStore {
    client: Client,
    pool_size: usize,
    timeout: Duration,
    connect_timeout: Duration,
    key_prefix: String,
    pool: ArcSwapOption<Pool>,
    /// Held while connecting, so concurrent first requests wait for one attempt.
    connecting: tokio::sync::Mutex<Option<Instant>>,
    next: AtomicUsize,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client settings hold the password: never printed.
        f.debug_struct("RedisStore")
            .field("cluster", &matches!(self.client, Client::Cluster(_)))
            .field("pool_size", &self.pool_size)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for `spec` (written at `path`), not connected yet. Rejects what cannot work:
    /// no URL, an unparsable one, credentials inside a URL, several URLs without `cluster`.
    pub fn new(spec: &RedisSpec, path: &FieldPath) -> Result<Self, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        if spec.urls.is_empty() {
            errors.push(path.key("urls"), "give at least one `redis://host:port` URL");
        }
        if spec.urls.len() > 1 && !spec.cluster {
            errors
                .push(path.key("urls"), "several URLs are only for a Redis Cluster: set `cluster: true`, or give one");
        }
        if spec.pool_size == 0 {
            errors.push(path.key("pool_size"), "must be at least 1");
        }
        if spec.timeout.get().is_zero() {
            errors.push(path.key("timeout"), "must be more than 0");
        }
        let mut infos = Vec::with_capacity(spec.urls.len());
        for (index, url) in spec.urls.iter().enumerate() {
            let at = path.key("urls").index(index);
            match url.as_str().into_connection_info() {
                Ok(info)
                    if info.redis_settings().password().is_some() || info.redis_settings().username().is_some() =>
                {
                    // Reported without the URL: it holds a secret.
                    errors.push(at, "the URL holds credentials: give them as `username` and `password`");
                }
                Ok(info) => infos.push(with_credentials(info, spec)),
                // redis-rs error texts name the URL's scheme problem, never the URL itself.
                Err(err) => errors.push(at, format!("not a Redis URL ({err}); write `redis://host:port[/db]`")),
            }
        }
        errors.into_result(())?;
        let client = if spec.cluster {
            let mut builder = ClusterClient::builder(infos)
                .connection_timeout(spec.connect_timeout.get())
                .response_timeout(spec.timeout.get())
                .retries(1);
            if let Some(username) = &spec.username {
                builder = builder.username(username);
            }
            if let Some(password) = &spec.password {
                builder = builder.password(password.expose());
            }
            let client = builder.build().map_err(|err| ConfigErrors::one(path.key("urls"), err.to_string()))?;
            Client::Cluster(client)
        } else {
            let info = infos.into_iter().next().ok_or_else(|| ConfigErrors::one(path.key("urls"), "no URL"))?;
            let client =
                redis::Client::open(info).map_err(|err| ConfigErrors::one(path.key("urls"), err.to_string()))?;
            Client::Single { client, connect_timeout: spec.connect_timeout.get(), timeout: spec.timeout.get() }
        };
        Ok(Self {
            client,
            pool_size: spec.pool_size,
            timeout: spec.timeout.get(),
            connect_timeout: spec.connect_timeout.get(),
            key_prefix: spec.key_prefix.clone(),
            pool: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(None),
            next: AtomicUsize::new(0),
            scripts: Scripts {
                fixed_window: Script::new(include_str!("redis/fixed_window.lua")),
                sliding_window: Script::new(include_str!("redis/sliding_window.lua")),
                gcra: Script::new(include_str!("redis/gcra.lua")),
                period: Script::new(include_str!("redis/period.lua")),
            },
        })
    }

    /// Opens the connections and checks them with `PING`; logs the outcome. Never fails: a
    /// Redis that is down is tried again when used.
    pub async fn connect(&self) {
        let pinged = match self.pool().await {
            Ok(pool) => {
                let mut ping = redis::cmd("PING");
                let ping = ping.arg("gantry");
                let answer = tokio::time::timeout(self.connect_timeout.max(self.timeout), async {
                    match &*pool {
                        Pool::Single(connections) => {
                            let mut connection = connections[0].clone();
                            ping.query_async::<String>(&mut connection).await
                        }
                        Pool::Cluster(connections) => {
                            let mut connection = connections[0].clone();
                            ping.query_async::<String>(&mut connection).await
                        }
                    }
                })
                .await;
                match answer {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(err)) => Err(describe(&err)),
                    Err(_) => Err("no answer in time".to_owned()),
                }
            }
            Err(err) => Err(err.to_string()),
        };
        match pinged {
            Ok(()) => tracing::info!(prefix = %self.key_prefix, "redis store connected"),
            Err(reason) => tracing::warn!(reason = %reason, "redis store unreachable; retrying when used"),
        }
    }

    /// The open connections, opening them first when needed (one attempt at a time, and none
    /// within [`RECONNECT_INTERVAL`] of a failed one).
    async fn pool(&self) -> Result<Arc<Pool>, StoreError> {
        if let Some(pool) = self.pool.load_full() {
            return Ok(pool);
        }
        let mut last_failure = self.connecting.lock().await;
        if let Some(pool) = self.pool.load_full() {
            return Ok(pool);
        }
        if last_failure.is_some_and(|at| at.elapsed() < RECONNECT_INTERVAL) {
            return Err(unavailable("not connected; retrying shortly"));
        }
        let pool = match &self.client {
            Client::Single { client, connect_timeout, timeout } => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(*connect_timeout))
                    .set_response_timeout(Some(*timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(RECONNECT_INTERVAL);
                // Lazy: each manager connects on its first command and reconnects by itself.
                let managers: Result<Vec<_>, _> = (0..self.pool_size)
                    .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
                    .collect();
                managers.map(Pool::Single).map_err(|err| describe(&err))
            }
            Client::Cluster(client) => {
                let mut connections = Vec::with_capacity(self.pool_size);
                let mut failure = None;
                for _ in 0..self.pool_size {
                    match tokio::time::timeout(self.connect_timeout, client.get_async_connection()).await {
                        Ok(Ok(connection)) => connections.push(connection),
                        Ok(Err(err)) => {
                            failure = Some(describe(&err));
                            break;
                        }
                        Err(_) => {
                            failure = Some("no cluster node answered in time".to_owned());
                            break;
                        }
                    }
                }
                match failure {
                    None => Ok(Pool::Cluster(connections)),
                    Some(reason) => Err(reason),
                }
            }
        };
        match pool {
            Ok(pool) => {
                let pool = Arc::new(pool);
                self.pool.store(Some(pool.clone()));
                *last_failure = None;
                Ok(pool)
            }
            Err(reason) => {
                *last_failure = Some(Instant::now());
                Err(unavailable(&reason))
            }
        }
    }

    async fn run<const N: usize>(&self, script: &Script, key: &str, args: [u64; N]) -> Result<Decision, StoreError> {
        let call = async {
            let pool = self.pool().await?;
            let mut invocation = script.key(format!("{}{key}", self.key_prefix));
            for arg in args {
                invocation.arg(arg);
            }
            let turn = self.next.fetch_add(1, Ordering::Relaxed);
            let answer: redis::RedisResult<Vec<i64>> = match &*pool {
                Pool::Single(connections) => {
                    let mut connection = connections[turn % connections.len()].clone();
                    invocation.invoke_async(&mut connection).await
                }
                Pool::Cluster(connections) => {
                    let mut connection = connections[turn % connections.len()].clone();
                    invocation.invoke_async(&mut connection).await
                }
            };
            answer.map_err(|err| classify(&err))
        };
        let answer = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| StoreError::Timeout { store: NAME, after: self.timeout })??;
        decision(&answer)
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl CounterStore for RedisStore {
    fn name(&self) -> &'static str {
        NAME
    }

    fn fixed_window_hit<'a>(&'a self, key: &'a str, window: Duration, limit: u64, cost: u64) -> Hit<'a> {
        Hit::Pending(Box::pin(self.run(&self.scripts.fixed_window, key, [micros(window), limit, cost])))
    }

    fn sliding_window_hit<'a>(&'a self, key: &'a str, window: Duration, limit: u64, cost: u64) -> Hit<'a> {
        Hit::Pending(Box::pin(self.run(&self.scripts.sliding_window, key, [micros(window), limit, cost])))
    }

    fn gcra_hit<'a>(&'a self, key: &'a str, emission_interval: Duration, burst: u64, cost: u64) -> Hit<'a> {
        Hit::Pending(Box::pin(self.run(&self.scripts.gcra, key, [micros(emission_interval), burst, cost])))
    }

    fn period_hit<'a>(&'a self, key: &'a str, ends_in: Duration, limit: u64, cost: u64) -> Hit<'a> {
        let keep_for_millis = u64::try_from(ends_in.saturating_add(PERIOD_GRACE).as_millis()).unwrap_or(u64::MAX);
        let args = [micros(ends_in), limit, cost, keep_for_millis.max(1)];
        Hit::Pending(Box::pin(self.run(&self.scripts.period, key, args)))
    }
}

fn with_credentials(info: ConnectionInfo, spec: &RedisSpec) -> ConnectionInfo {
    let mut settings = info.redis_settings().clone();
    if let Some(username) = &spec.username {
        settings = settings.set_username(username);
    }
    if let Some(password) = &spec.password {
        settings = settings.set_password(password.expose());
    }
    info.set_redis_settings(settings)
}

/// A script's answer `{allowed, remaining, reset_after µs, retry_after µs}` as a decision.
fn decision(answer: &[i64]) -> Result<Decision, StoreError> {
    let [allowed, remaining, reset_after, retry_after] = answer else {
        return Err(StoreError::Failed { store: NAME, reason: format!("unexpected script answer {answer:?}") });
    };
    let micros = |value: i64| Duration::from_micros(u64::try_from(value).unwrap_or(0));
    Ok(Decision {
        allowed: *allowed == 1,
        remaining: u64::try_from(*remaining).unwrap_or(0),
        reset_after: micros(*reset_after),
        retry_after: micros(*retry_after),
    })
}

fn unavailable(reason: &str) -> StoreError {
    StoreError::Unavailable { store: NAME, reason: reason.to_owned() }
}

/// Connection trouble is `Unavailable`; anything the server said is `Failed`.
fn classify(err: &redis::RedisError) -> StoreError {
    if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() || err.is_timeout() {
        unavailable(&describe(err))
    } else {
        StoreError::Failed { store: NAME, reason: describe(err) }
    }
}

/// An error's text. redis-rs never puts the password in its messages.
fn describe(err: &redis::RedisError) -> String {
    err.to_string()
}
