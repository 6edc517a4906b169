//! The commands of the response cache on the Redis store's connections: `GET`, `SET … PX`,
//! `UNLINK`, purges by pattern (`SCAN MATCH` then `UNLINK`, page by page, on every primary
//! of a cluster), and the lists of semantic caches' vectors (`LPUSH`, `LTRIM`, `PEXPIRE`,
//! `LRANGE`). Values are opaque bytes here; `response_cache::codec` writes and reads them.

use std::time::Duration;

use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::Value;

use super::{classify, Pool, RedisStore, NAME};
use crate::StoreError;

/// Keys asked for per `SCAN` page while purging.
const SCAN_PAGE: usize = 1000;

impl RedisStore {
    /// The value stored under `name` (after the configured key prefix).
    pub(crate) async fn cache_get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut command = redis::cmd("GET");
        command.arg(format!("{}{name}", self.key_prefix));
        self.query(command).await
    }

    /// Stores `value` under `name` for `ttl` (at least a millisecond).
    pub(crate) async fn cache_set(&self, name: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut command = redis::cmd("SET");
        command.arg(format!("{}{name}", self.key_prefix)).arg(value).arg("PX").arg(millis);
        self.query::<Value>(command).await.map(drop)
    }

    /// Removes `name`; returns how many keys went (0 or 1).
    pub(crate) async fn cache_delete(&self, name: &str) -> Result<u64, StoreError> {
        let mut command = redis::cmd("UNLINK");
        command.arg(format!("{}{name}", self.key_prefix));
        self.query(command).await
    }

    /// Puts `value` at the head of the list `name`, keeps its first `max_len` items and makes
    /// the list expire after `ttl` (semantic caches' vectors, newest first). Three commands, not
    /// one transaction: a search between them sees the list a moment longer than its bound.
    pub(crate) async fn list_push(
        &self,
        name: &str,
        value: &[u8],
        max_len: usize,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = format!("{}{name}", self.key_prefix);
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut push = redis::cmd("LPUSH");
        push.arg(&key).arg(value);
        let length: u64 = self.query(push).await?;
        if length > max_len as u64 {
            let mut trim = redis::cmd("LTRIM");
            trim.arg(&key).arg(0).arg(max_len.saturating_sub(1));
            self.query::<Value>(trim).await?;
        }
        let mut expire = redis::cmd("PEXPIRE");
        expire.arg(&key).arg(millis);
        self.query::<Value>(expire).await.map(drop)
    }

    /// The first `max_len` items of the list `name`; none when it does not exist.
    pub(crate) async fn list_range(&self, name: &str, max_len: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut range = redis::cmd("LRANGE");
        range.arg(format!("{}{name}", self.key_prefix)).arg(0).arg(i64::try_from(max_len).unwrap_or(i64::MAX) - 1);
        self.query(range).await
    }

    /// Removes every key whose name (after the prefix) matches the glob `pattern`, on every
    /// primary; returns how many went. Not atomic: a key stored meanwhile may stay.
    pub(crate) async fn cache_purge(&self, pattern: &str) -> Result<u64, StoreError> {
        let pattern = format!("{}{pattern}", glob_escape_prefix(&self.key_prefix));
        let pool = self.pool().await?;
        match &*pool {
            Pool::Single(connections) => {
                let mut connection = connections[0].clone();
                let mut purged = 0;
                let mut cursor = 0_u64;
                loop {
                    let mut scan = redis::cmd("SCAN");
                    scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(SCAN_PAGE);
                    let (next, keys): (u64, Vec<Vec<u8>>) = self.timed(scan.query_async(&mut connection)).await?;
                    if !keys.is_empty() {
                        let mut unlink = redis::cmd("UNLINK");
                        unlink.arg(keys);
                        purged += self.timed(unlink.query_async::<u64>(&mut connection)).await?;
                    }
                    if next == 0 {
                        return Ok(purged);
                    }
                    cursor = next;
                }
            }
            Pool::Cluster(connections) => {
                let mut connection = connections[0].clone();
                // Each primary scans only its own keys, so the scan visits every primary in turn.
                let everyone = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let primaries = self.timed(connection.route_command(redis::cmd("PING"), everyone)).await?;
                let Value::Map(primaries) = primaries else {
                    return Err(StoreError::Failed { store: NAME, reason: "no list of cluster primaries".to_owned() });
                };
                let mut purged = 0;
                for (address, _) in primaries {
                    let Some((host, port)) = cluster_address(&address) else { continue };
                    let node =
                        || RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.clone(), port });
                    let mut cursor = 0_u64;
                    loop {
                        let mut scan = redis::cmd("SCAN");
                        scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(SCAN_PAGE);
                        let page = self.timed(connection.route_command(scan, node())).await?;
                        let (next, keys): (u64, Vec<Vec<u8>>) = redis::from_redis_value(page).map_err(unexpected)?;
                        // One key per command: keys of one node still lie in different slots,
                        // and a cluster refuses a command across slots.
                        for key in keys {
                            let mut unlink = redis::cmd("UNLINK");
                            unlink.arg(key);
                            purged += self.timed(unlink.query_async::<u64>(&mut connection)).await?;
                        }
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
                Ok(purged)
            }
        }
    }

    /// Runs one command on one of the pooled connections (a cluster routes it by its key).
    async fn query<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Result<T, StoreError> {
        let pool = self.pool().await?;
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &*pool {
            Pool::Single(connections) => {
                let mut connection = connections[turn % connections.len()].clone();
                self.timed(command.query_async(&mut connection)).await
            }
            Pool::Cluster(connections) => {
                let mut connection = connections[turn % connections.len()].clone();
                self.timed(command.query_async(&mut connection)).await
            }
        }
    }

    /// `call`, failed with [`StoreError::Timeout`] after the configured timeout.
    async fn timed<T>(&self, call: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| StoreError::Timeout { store: NAME, after: self.timeout })?
            .map_err(|err| classify(&err))
    }
}

fn unexpected(err: impl std::fmt::Display) -> StoreError {
    StoreError::Failed { store: NAME, reason: format!("unexpected answer: {err}") }
}

/// `host:port` of a cluster node as the cluster connection names it.
fn cluster_address(address: &Value) -> Option<(String, u16)> {
    let text = match address {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?,
        Value::SimpleString(text) => text.as_str(),
        _ => return None,
    };
    let (host, port) = text.rsplit_once(':')?;
    Some((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port.parse().ok()?))
}

/// The key prefix as a glob pattern matching itself.
fn glob_escape_prefix(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}
