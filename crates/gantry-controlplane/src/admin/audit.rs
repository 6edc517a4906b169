//! The admin audit log: one JSON line per admin write, accepted or refused, saying who (the
//! admin key's name and the client address), when, what (action, resource kind and id), the
//! generations before and after, and how the resource changed (an RFC 6902 JSON Patch).
//!
//! The log is kept with the configuration, in [`AUDIT_FILE`] in its directory (beside the file
//! when the gateway runs from one file); the leading dot keeps the loader and the file watcher
//! away from it. `node.admin.audit_log` puts it elsewhere. On the embedded default
//! configuration without that setting there is nowhere to keep it, so the last
//! [`MEMORY_ENTRIES`] entries are kept in memory only.
//!
//! Secrets never reach the log: diff values are taken from the resource as `GET` shows it,
//! so a changed secret shows as a `replace` with `***`. Each entry is appended with one
//! `write` on a file opened with `O_APPEND` (a line is never interleaved with another) and
//! flushed to disk before the admin API answers. The file is not rotated.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use gantry_config::secret::reveal_secrets;
use gantry_config::ConfigSource;
use http::Method;
use json_patch::jsonptr::PointerBuf;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AdminError, AdminState};

/// The audit file's name in the configuration directory.
pub const AUDIT_FILE: &str = ".gantry-audit.jsonl";

/// Entries kept when there is no file.
pub const MEMORY_ENTRIES: usize = 1000;

/// Most entries one `GET /audit` returns.
pub const MAX_LIMIT: usize = 1000;

/// One audited admin write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditEntry {
    /// When the write was answered, RFC 3339 in UTC.
    pub time: String,
    /// Who made it.
    pub who: Who,
    /// `create`, `replace`, `delete`, or `purge` (`DELETE /cache/{route}`).
    pub action: String,
    /// The resource kind (`routes`, `global_policies`, `cache`).
    pub kind: String,
    /// The resource id, when the request named one.
    pub id: Option<String>,
    /// `applied` or `rejected`.
    pub outcome: Outcome,
    /// The HTTP status answered.
    pub status: u16,
    /// Why a rejected write was refused: the problem type code and its detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Configuration generation serving before the write.
    pub generation_before: u64,
    /// Configuration generation serving after it (equal when nothing changed).
    pub generation_after: u64,
    /// How the resource changed, as an RFC 6902 JSON Patch from the old to the new resource,
    /// secrets masked; absent for rejected writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Vec<serde_json::Map<String, Value>>>")]
    pub diff: Option<json_patch::Patch>,
}

/// The author of an admin write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Who {
    /// The name of the admin key used (`node.admin.api_key_name`), never the key.
    pub key: String,
    /// The client's address, when known.
    pub address: Option<String>,
}

/// Whether the write took effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Accepted (the configuration may still be unchanged if the write changed nothing).
    Applied,
    /// Refused; nothing changed.
    Rejected,
}

/// What a write handler tells the audit layer, as a response extension.
#[derive(Clone, Debug)]
pub struct Change {
    /// The resource id written.
    pub id: Option<String>,
    /// Generation before and after.
    pub generations: (u64, u64),
    /// The masked JSON Patch.
    pub diff: json_patch::Patch,
}

/// Why a request was refused, as a response extension set by every problem document.
#[derive(Clone, Debug)]
pub struct Refusal(pub String);

/// Where entries go.
pub struct AuditLog {
    file: Option<PathBuf>,
    recent: Mutex<VecDeque<AuditEntry>>,
}

/// Why an entry could not be written or the log read.
#[derive(Debug, thiserror::Error)]
#[error("audit log {}: {source}", path.display())]
pub struct AuditError {
    path: PathBuf,
    source: std::io::Error,
}

impl AuditLog {
    /// The log for a gateway reading `source`: `configured` (`node.admin.audit_log`, relative
    /// to the configuration's directory), else [`AUDIT_FILE`] in that directory, else memory.
    pub fn for_source(source: Option<&ConfigSource>, configured: Option<&Path>) -> Self {
        let config_dir = match source {
            Some(ConfigSource::Directory(dir)) => Some(dir.as_path()),
            Some(ConfigSource::File(path)) => {
                Some(path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new(".")))
            }
            Some(ConfigSource::Embedded(_)) | None => None,
        };
        let file = match (configured, config_dir) {
            (Some(file), Some(dir)) => Some(dir.join(file)),
            (Some(file), None) => Some(file.to_owned()),
            (None, dir) => dir.map(|dir| dir.join(AUDIT_FILE)),
        };
        Self { file, recent: Mutex::new(VecDeque::new()) }
    }

    /// The file entries are appended to; `None` when kept in memory only.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Appends `entry`: one line, one `write`, flushed to disk before returning.
    pub fn append(&self, entry: &AuditEntry) -> Result<(), AuditError> {
        let Some(path) = &self.file else {
            let mut recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if recent.len() == MEMORY_ENTRIES {
                recent.pop_front();
            }
            recent.push_back(entry.clone());
            return Ok(());
        };
        let error = |source| AuditError { path: path.clone(), source };
        let mut line = serde_json::to_vec(entry).map_err(|err| error(err.into()))?;
        line.push(b'\n');
        let mut options = std::fs::OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(error)?;
        file.write_all(&line).map_err(error)?;
        file.sync_data().map_err(error)
    }

    /// Up to `limit` entries at or after `since`, newest first.
    pub fn read(&self, limit: usize, since: Option<jiff::Timestamp>) -> Result<Vec<AuditEntry>, AuditError> {
        let entries: Vec<AuditEntry> = match &self.file {
            None => self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().cloned().collect(),
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect(),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(source) => return Err(AuditError { path: path.clone(), source }),
            },
        };
        let after_since = |entry: &&AuditEntry| match since {
            None => true,
            Some(since) => entry.time.parse::<jiff::Timestamp>().is_ok_and(|time| time >= since),
        };
        Ok(entries.iter().rev().filter(after_since).take(limit).cloned().collect())
    }
}

/// The JSON Patch from `old` to `new`, both given as the resource serialized with secrets
/// revealed (`None`: absent), with values taken from `old_shown`/`new_shown`, the resources as
/// `GET` shows them. Diffing the revealed forms notices a changed secret; taking values from
/// the shown forms keeps it out of the patch.
pub fn masked_diff(old: &Value, new: &Value, new_shown: &Value) -> json_patch::Patch {
    let revealed = json_patch::diff(old, new);
    let mut operations: Vec<json_patch::PatchOperation> = Vec::new();
    for operation in revealed.0 {
        let operation = match operation {
            json_patch::PatchOperation::Add(add) => {
                let (path, value) = shown_at(new_shown, &add.path);
                json_patch::PatchOperation::Add(json_patch::AddOperation { path, value })
            }
            json_patch::PatchOperation::Replace(replace) => {
                let (path, value) = shown_at(new_shown, &replace.path);
                json_patch::PatchOperation::Replace(json_patch::ReplaceOperation { path, value })
            }
            // `diff` emits only add, remove and replace; none of the others carries a value.
            other => other,
        };
        // Several changes inside one masked secret collapse into one replace of it.
        if !operations.contains(&operation) {
            operations.push(operation);
        }
    }
    json_patch::Patch(operations)
}

/// The shown value at `path`; when `path` leads inside a value shown as a whole placeholder
/// (an object-valued secret), that placeholder and its path instead.
fn shown_at(shown: &Value, path: &PointerBuf) -> (PointerBuf, Value) {
    let full = path.as_str();
    let mut end = full.len();
    loop {
        let prefix = &full[..end];
        if let Some(value) = shown.pointer(prefix) {
            return (PointerBuf::parse(prefix).unwrap_or_default(), value.clone());
        }
        match prefix.rfind('/') {
            Some(slash) => end = slash,
            None => return (PointerBuf::new(), shown.clone()),
        }
    }
}

/// Serializes `value` with its typed secrets revealed, for diffing only.
pub fn revealed<T: Serialize>(value: &T) -> Value {
    reveal_secrets(|| serde_json::to_value(value)).unwrap_or(Value::Null)
}

/// Query of `GET /audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Most entries to return (default 100, at most [`MAX_LIMIT`]).
    limit: Option<usize>,
    /// Only entries at or after this RFC 3339 time.
    since: Option<String>,
}

/// `GET /audit`: the newest entries first.
pub async fn list(
    State(state): State<AdminState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, AdminError> {
    let Query(query) = query.map_err(|rejection| AdminError::InvalidQuery { reason: rejection.body_text() })?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(AdminError::InvalidQuery { reason: format!("`limit` is from 1 to {MAX_LIMIT}") });
    }
    let since = match query.since.as_deref().map(str::parse::<jiff::Timestamp>) {
        None => None,
        Some(Ok(since)) => Some(since),
        Some(Err(err)) => {
            return Err(AdminError::InvalidQuery { reason: format!("`since` is not an RFC 3339 time: {err}") });
        }
    };
    let entries = tokio::task::spawn_blocking(move || state.audit().read(limit, since))
        .await
        .map_err(|err| AdminError::Internal { reason: format!("reading the audit log failed: {err}") })?
        .map_err(|err| AdminError::Internal { reason: err.to_string() })?;
    Ok(Json(entries))
}

/// Middleware recording every authenticated request that is not a read.
pub async fn record(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let address = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.to_string());
    let generation = state.control().snapshot().load().generation;
    let response = next.run(request).await;
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let kind = segments.next().unwrap_or_default().to_owned();
    let path_id = segments.next().filter(|id| !id.is_empty()).map(str::to_owned);
    let change = response.extensions().get::<Change>().cloned();
    let status = response.status();
    let action = match (&method, kind.as_str()) {
        (&Method::DELETE, "cache") => "purge",
        (&Method::DELETE, _) => "delete",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) if status == http::StatusCode::CREATED => "create",
        (&Method::PUT, _) => "replace",
        (other, _) => other.as_str(),
    };
    let (outcome, reason) = if status.is_success() {
        (Outcome::Applied, None)
    } else {
        let reason = response.extensions().get::<Refusal>().map_or_else(|| status.to_string(), |r| r.0.clone());
        (Outcome::Rejected, Some(reason))
    };
    let (generation_before, generation_after) =
        change.as_ref().map_or((generation, generation), |change| change.generations);
    let entry = AuditEntry {
        time: format!("{:.3}", jiff::Timestamp::now()),
        who: Who { key: state.api_key_name().to_owned(), address },
        action: action.to_lowercase(),
        kind,
        id: change.as_ref().and_then(|change| change.id.clone()).or(path_id),
        outcome,
        status: status.as_u16(),
        reason,
        generation_before,
        generation_after,
        diff: change.map(|change| change.diff),
    };
    let log = state.clone();
    let written = tokio::task::spawn_blocking(move || log.audit().append(&entry)).await;
    match written {
        Ok(Ok(())) => {}
        // The change already serves; refusing the answer would hide that, so it is logged.
        Ok(Err(err)) => tracing::error!(error = %err, "cannot write the admin audit log"),
        Err(err) => tracing::error!(error = %err, "the admin audit task failed"),
    }
    response
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn diff_shows_a_changed_secret_only_as_its_placeholder() {
        let old = json!({"id": "alice", "credentials": {"key_auth": {"key": "old-key-123"}}, "groups": []});
        let new = json!({"id": "alice", "credentials": {"key_auth": {"key": "new-key-456"}}, "groups": ["gold"]});
        let shown = json!({"id": "alice", "credentials": {"key_auth": {"key": "***"}}, "groups": ["gold"]});
        let patch = masked_diff(&old, &new, &shown);
        assert_eq!(
            serde_json::to_value(&patch).expect("serializes"),
            json!([
                {"op": "replace", "path": "/credentials/key_auth/key", "value": "***"},
                {"op": "add", "path": "/groups/0", "value": "gold"},
            ])
        );
    }

    #[test]
    fn changes_inside_an_object_secret_collapse_into_one_replace() {
        let old = json!({"p": {"secret": {"a": 1, "b": 2}}});
        let new = json!({"p": {"secret": {"a": 3, "b": 4}}});
        let shown = json!({"p": {"secret": "***"}});
        let patch = serde_json::to_value(masked_diff(&old, &new, &shown)).expect("serializes");
        assert_eq!(patch, json!([{"op": "replace", "path": "/p/secret", "value": "***"}]));
    }

    #[test]
    fn appends_one_line_per_entry_and_reads_newest_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = AuditLog::for_source(Some(&ConfigSource::File(dir.path().join("gantry.yaml"))), None);
        assert_eq!(log.file(), Some(dir.path().join(AUDIT_FILE).as_path()));
        let entry = |time: &str, id: &str| AuditEntry {
            time: time.to_owned(),
            who: Who { key: "ops".to_owned(), address: Some("127.0.0.1:4000".to_owned()) },
            action: "create".to_owned(),
            kind: "routes".to_owned(),
            id: Some(id.to_owned()),
            outcome: Outcome::Applied,
            status: 201,
            reason: None,
            generation_before: 1,
            generation_after: 2,
            diff: Some(json_patch::diff(&json!(null), &json!({"id": id}))),
        };
        log.append(&entry("2026-01-01T00:00:00.000Z", "a")).expect("appended");
        log.append(&entry("2026-01-02T00:00:00.000Z", "b")).expect("appended");
        let text = std::fs::read_to_string(dir.path().join(AUDIT_FILE)).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            serde_json::from_str::<Value>(lines[0]).expect("a JSON line"),
            json!({"time": "2026-01-01T00:00:00.000Z", "who": {"key": "ops", "address": "127.0.0.1:4000"},
                   "action": "create", "kind": "routes", "id": "a", "outcome": "applied", "status": 201,
                   "generation_before": 1, "generation_after": 2,
                   "diff": [{"op": "replace", "path": "", "value": {"id": "a"}}]})
        );
        let ids = |entries: Vec<AuditEntry>| entries.into_iter().filter_map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(ids(log.read(10, None).expect("read")), ["b", "a"]);
        assert_eq!(ids(log.read(1, None).expect("read")), ["b"]);
        let since = "2026-01-01T12:00:00Z".parse().expect("timestamp");
        assert_eq!(ids(log.read(10, Some(since)).expect("read")), ["b"]);
    }

    #[test]
    fn a_configured_file_is_relative_to_the_configuration_directory() {
        let dir = Path::new("/etc/gantry");
        let source = ConfigSource::Directory(dir.to_owned());
        let relative = AuditLog::for_source(Some(&source), Some(Path::new("audit/admin.jsonl")));
        assert_eq!(relative.file(), Some(Path::new("/etc/gantry/audit/admin.jsonl")));
        let absolute = AuditLog::for_source(Some(&source), Some(Path::new("/var/log/gantry/audit.jsonl")));
        assert_eq!(absolute.file(), Some(Path::new("/var/log/gantry/audit.jsonl")));
        let embedded = AuditLog::for_source(Some(&ConfigSource::Embedded("")), Some(Path::new("audit.jsonl")));
        assert_eq!(embedded.file(), Some(Path::new("audit.jsonl")), "set, it is kept even without a directory");
        let file = AuditLog::for_source(Some(&ConfigSource::File("/srv/gantry.yaml".into())), None);
        assert_eq!(file.file(), Some(Path::new("/srv/.gantry-audit.jsonl")));
    }

    #[test]
    fn keeps_the_last_entries_in_memory_without_a_configuration_directory() {
        let log = AuditLog::for_source(None, None);
        assert_eq!(log.file(), None);
        for n in 0..MEMORY_ENTRIES + 5 {
            let entry = AuditEntry {
                time: "2026-01-01T00:00:00.000Z".to_owned(),
                who: Who { key: "admin".to_owned(), address: None },
                action: "delete".to_owned(),
                kind: "routes".to_owned(),
                id: Some(n.to_string()),
                outcome: Outcome::Rejected,
                status: 404,
                reason: Some("resource-not-found".to_owned()),
                generation_before: 1,
                generation_after: 1,
                diff: None,
            };
            log.append(&entry).expect("kept");
        }
        let entries = log.read(usize::MAX, None).expect("read");
        assert_eq!(entries.len(), MEMORY_ENTRIES);
        assert_eq!(entries[0].id.as_deref(), Some(&*(MEMORY_ENTRIES + 4).to_string()));
    }
}
