//! A small etcd v3 client over etcd's JSON gateway (`POST /v3/kv/range`, `/v3/kv/txn`,
//! `/v3/watch`, `/v3/lease/*`), the same API APISIX uses. The gRPC clients need `protoc` to
//! build, which a machine with only the Rust toolchain lacks; the gateway is part of every
//! etcd server since 3.4 and carries the same messages as JSON (keys and values in base64,
//! 64-bit numbers as strings).

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

/// Why an etcd request failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No member answered.
    #[error("no etcd member answered: {0}")]
    Unreachable(String),
    /// A member answered with an error.
    #[error("etcd answered {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// etcd's message.
        message: String,
    },
    /// The answer was not what the API describes.
    #[error("etcd's answer could not be read: {0}")]
    Malformed(String),
}

/// One key and its value, with the revisions etcd keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value (empty for a deletion event).
    pub value: Vec<u8>,
    /// Revision of the key's creation.
    pub create_revision: i64,
    /// Revision of its last change.
    pub mod_revision: i64,
}

/// A change a watch reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created or changed.
    Put(KeyValue),
    /// The key was deleted.
    Delete(String),
}

/// What a watch stream delivers next.
#[derive(Debug)]
pub enum WatchMessage {
    /// Changes, as of `revision`.
    Events {
        /// The store's revision after them.
        revision: i64,
        /// The changes, in order.
        events: Vec<WatchEvent>,
    },
    /// The watch started at a revision etcd no longer has: read everything again.
    Compacted,
}

/// A condition of a transaction.
#[derive(Clone, Debug)]
pub struct ModRevisionIs {
    /// The key.
    pub key: String,
    /// Its expected last-change revision (0: the key does not exist).
    pub revision: i64,
}

/// One write of a transaction.
#[derive(Clone, Debug)]
pub enum Write {
    /// Sets the key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Deletes the key.
    Delete {
        /// The key.
        key: String,
    },
}

/// A client of one etcd cluster.
#[derive(Clone, Debug)]
pub struct Etcd {
    http: reqwest::Client,
    endpoints: Vec<String>,
    auth: Option<(String, String)>,
}

impl Etcd {
    /// A client of the members at `endpoints` (`http://host:port`), with `timeout` per
    /// request, logging in as `auth` when etcd has authentication on.
    pub fn new(endpoints: Vec<String>, timeout: Duration, auth: Option<(String, String)>) -> Result<Self, EtcdError> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .build()
            .map_err(|err| EtcdError::Unreachable(err.to_string()))?;
        Ok(Self { http, endpoints, auth })
    }

    /// Every key starting with `prefix`, and the store's revision they were read at.
    pub async fn range_prefix(&self, prefix: &str) -> Result<(i64, Vec<KeyValue>), EtcdError> {
        let answer = self
            .call("/v3/kv/range", json!({"key": BASE64.encode(prefix), "range_end": BASE64.encode(prefix_end(prefix))}))
            .await?;
        let revision = header_revision(&answer)?;
        let kvs = answer.get("kvs").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        Ok((revision, kvs.iter().map(key_value).collect::<Result<_, _>>()?))
    }

    /// Applies `writes` at once if every condition holds: the store revision they made, or
    /// `None` when a condition did not hold and nothing was written.
    pub async fn transaction(&self, conditions: &[ModRevisionIs], writes: &[Write]) -> Result<Option<i64>, EtcdError> {
        let compare: Vec<Value> = conditions
            .iter()
            .map(|condition| {
                json!({"key": BASE64.encode(&condition.key), "target": "MOD", "result": "EQUAL", "mod_revision": condition.revision.to_string()})
            })
            .collect();
        let success: Vec<Value> = writes
            .iter()
            .map(|write| match write {
                Write::Put { key, value } => {
                    json!({"request_put": {"key": BASE64.encode(key), "value": BASE64.encode(value)}})
                }
                Write::Delete { key } => json!({"request_delete_range": {"key": BASE64.encode(key)}}),
            })
            .collect();
        let answer = self.call("/v3/kv/txn", json!({"compare": compare, "success": success})).await?;
        if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
            Ok(Some(header_revision(&answer)?))
        } else {
            Ok(None)
        }
    }

    /// Sets `key` to `value`, bound to `lease` (the key goes when the lease expires).
    pub async fn put_with_lease(&self, key: &str, value: &[u8], lease: i64) -> Result<(), EtcdError> {
        self.call(
            "/v3/kv/put",
            json!({"key": BASE64.encode(key), "value": BASE64.encode(value), "lease": lease.to_string()}),
        )
        .await
        .map(drop)
    }

    /// A lease of `ttl`; its id.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let answer = self.call("/v3/lease/grant", json!({"TTL": ttl.as_secs().max(1).to_string()})).await?;
        number(answer.get("ID")).ok_or_else(|| EtcdError::Malformed("a lease grant without an ID".into()))
    }

    /// Renews `lease`; `Ok(false)` when it has expired (its keys are gone).
    pub async fn keep_alive(&self, lease: i64) -> Result<bool, EtcdError> {
        let answer = self.call("/v3/lease/keepalive", json!({"ID": lease.to_string()})).await?;
        let result = answer.get("result").unwrap_or(&answer);
        Ok(number(result.get("TTL")).is_some_and(|ttl| ttl > 0))
    }

    /// Ends `lease` now, removing its keys.
    pub async fn revoke_lease(&self, lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", json!({"ID": lease.to_string()})).await.map(drop)
    }

    /// Watches every key starting with `prefix` from revision `start`.
    pub async fn watch_prefix(&self, prefix: &str, start: i64) -> Result<WatchStream, EtcdError> {
        let body = json!({"create_request": {
            "key": BASE64.encode(prefix),
            "range_end": BASE64.encode(prefix_end(prefix)),
            "start_revision": start.to_string(),
        }});
        let mut last = EtcdError::Unreachable("no endpoint configured".into());
        for endpoint in &self.endpoints {
            // A watch is long-lived: only connecting is bounded, never the whole stream.
            let request = self.http.post(format!("{endpoint}/v3/watch")).json(&body).timeout(Duration::MAX);
            let request = match self.token(endpoint).await? {
                Some(token) => request.header("authorization", token),
                None => request,
            };
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    return Ok(WatchStream { response, buffer: Vec::new() });
                }
                Ok(response) => last = refused(response).await,
                Err(err) => last = EtcdError::Unreachable(format!("{endpoint}: {err}")),
            }
        }
        Err(last)
    }

    /// POSTs `body` to `path` on the first member that answers.
    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let mut last = EtcdError::Unreachable("no endpoint configured".into());
        for endpoint in &self.endpoints {
            let request = self.http.post(format!("{endpoint}{path}")).json(&body);
            let request = match self.token(endpoint).await {
                Ok(Some(token)) => request.header("authorization", token),
                Ok(None) => request,
                Err(err) => {
                    last = err;
                    continue;
                }
            };
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    return response.json().await.map_err(|err| EtcdError::Malformed(err.to_string()));
                }
                // A refusal is the cluster's answer; another member would give the same.
                Ok(response) => return Err(refused(response).await),
                Err(err) => last = EtcdError::Unreachable(format!("{endpoint}: {err}")),
            }
        }
        Err(last)
    }

    /// A fresh token from `endpoint` when credentials are set. Tokens are short-lived simple
    /// tokens by default; one per call keeps the client stateless at the cost of a request.
    async fn token(&self, endpoint: &str) -> Result<Option<String>, EtcdError> {
        let Some((name, password)) = &self.auth else { return Ok(None) };
        let response = self
            .http
            .post(format!("{endpoint}/v3/auth/authenticate"))
            .json(&json!({"name": name, "password": password}))
            .send()
            .await
            .map_err(|err| EtcdError::Unreachable(format!("{endpoint}: {err}")))?;
        if !response.status().is_success() {
            return Err(refused(response).await);
        }
        let answer: Value = response.json().await.map_err(|err| EtcdError::Malformed(err.to_string()))?;
        answer
            .get("token")
            .and_then(Value::as_str)
            .map(|token| Some(token.to_owned()))
            .ok_or_else(|| EtcdError::Malformed("an authentication answer without a token".into()))
    }
}

/// The changes a watch delivers, one message at a time.
#[derive(Debug)]
pub struct WatchStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl WatchStream {
    /// The next changes; `Ok(None)` when etcd ended the stream.
    pub async fn next(&mut self) -> Result<Option<WatchMessage>, EtcdError> {
        loop {
            // The gateway writes each message as one JSON document followed by a newline.
            if let Some(end) = self.buffer.iter().position(|&byte| byte == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if let Some(message) = watch_message(&line)? {
                    return Ok(Some(message));
                }
                continue;
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(err) => return Err(EtcdError::Unreachable(err.to_string())),
            }
        }
    }
}

/// One line of a watch stream; `None` for messages without changes (the creation notice,
/// progress notices).
fn watch_message(line: &[u8]) -> Result<Option<WatchMessage>, EtcdError> {
    #[derive(Deserialize)]
    struct Line {
        result: Option<Value>,
        error: Option<Value>,
    }
    let line: Line = serde_json::from_slice(line).map_err(|err| EtcdError::Malformed(err.to_string()))?;
    if let Some(error) = line.error {
        return Err(EtcdError::Refused { status: 0, message: error.to_string() });
    }
    let Some(result) = line.result else { return Ok(None) };
    if number(result.get("compact_revision")).is_some_and(|revision| revision > 0) {
        return Ok(Some(WatchMessage::Compacted));
    }
    if result.get("canceled").and_then(Value::as_bool) == Some(true) {
        let reason = result.get("cancel_reason").and_then(Value::as_str).unwrap_or("no reason given");
        return Err(EtcdError::Refused { status: 0, message: format!("the watch was canceled: {reason}") });
    }
    let Some(events) = result.get("events").and_then(Value::as_array) else { return Ok(None) };
    let revision = header_revision(&result)?;
    let events = events
        .iter()
        .map(|event| {
            let kv = event.get("kv").ok_or_else(|| EtcdError::Malformed("an event without a kv".into()))?;
            match event.get("type").and_then(Value::as_str) {
                Some("DELETE") => Ok(WatchEvent::Delete(decode_text(kv.get("key"))?)),
                // PUT is the enum's zero value, which the gateway leaves out.
                None | Some("PUT") => key_value(kv).map(WatchEvent::Put),
                Some(other) => Err(EtcdError::Malformed(format!("an event of type {other}"))),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(WatchMessage::Events { revision, events }))
}

async fn refused(response: reqwest::Response) -> EtcdError {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|value| {
            value.get("message").or_else(|| value.get("error")).and_then(Value::as_str).map(str::to_owned)
        })
        .unwrap_or(body);
    EtcdError::Refused { status, message }
}

/// The end of the range of keys starting with `prefix`: the prefix with its last byte
/// increased, as etcd's clients compute it.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the keyspace.
    vec![0]
}

fn header_revision(answer: &Value) -> Result<i64, EtcdError> {
    number(answer.get("header").and_then(|header| header.get("revision")))
        .ok_or_else(|| EtcdError::Malformed("an answer without a header revision".into()))
}

/// A 64-bit number, which the gateway writes as a string; absent means 0 (proto3 default).
fn number(value: Option<&Value>) -> Option<i64> {
    match value {
        None => Some(0),
        Some(Value::String(text)) => text.parse().ok(),
        Some(Value::Number(number)) => number.as_i64(),
        Some(_) => None,
    }
}

fn decode(value: Option<&Value>) -> Result<Vec<u8>, EtcdError> {
    match value.and_then(Value::as_str) {
        None => Ok(Vec::new()),
        Some(text) => BASE64.decode(text).map_err(|err| EtcdError::Malformed(format!("bad base64: {err}"))),
    }
}

fn decode_text(value: Option<&Value>) -> Result<String, EtcdError> {
    String::from_utf8(decode(value)?).map_err(|_| EtcdError::Malformed("a key that is not UTF-8".into()))
}

fn key_value(kv: &Value) -> Result<KeyValue, EtcdError> {
    let revision =
        |name: &str| number(kv.get(name)).ok_or_else(|| EtcdError::Malformed(format!("`{name}` is not a number")));
    Ok(KeyValue {
        key: decode_text(kv.get("key"))?,
        value: decode(kv.get("value"))?,
        create_revision: revision("create_revision")?,
        mod_revision: revision("mod_revision")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_range_ends_after_the_last_key_with_the_prefix() {
        assert_eq!(prefix_end("/gantry/config/"), b"/gantry/config0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn reads_watch_lines_as_the_gateway_writes_them() {
        let created = br#"{"result":{"header":{"revision":"2"},"created":true}}"#;
        assert!(watch_message(created).expect("reads").is_none());
        let put = br#"{"result":{"header":{"revision":"5"},"events":[{"kv":{"key":"L2E=","create_revision":"4","mod_revision":"5","version":"2","value":"e30="}},{"type":"DELETE","kv":{"key":"L2I=","mod_revision":"5"}}]}}"#;
        match watch_message(put).expect("reads") {
            Some(WatchMessage::Events { revision, events }) => {
                assert_eq!(revision, 5);
                assert_eq!(
                    events,
                    [
                        WatchEvent::Put(KeyValue {
                            key: "/a".into(),
                            value: b"{}".to_vec(),
                            create_revision: 4,
                            mod_revision: 5
                        }),
                        WatchEvent::Delete("/b".into()),
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        let compacted = br#"{"result":{"header":{},"canceled":true,"compact_revision":"3"}}"#;
        assert!(matches!(watch_message(compacted), Ok(Some(WatchMessage::Compacted))));
        assert!(watch_message(
            b"{\"result\":{\"events\":[{\"kv\":{\"key\":\"%%\"}}],\"header\":{\"revision\":\"1\"}}}"
        )
        .is_err());
        assert!(watch_message(b"not json").is_err());
    }
}
