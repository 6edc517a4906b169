//! The `elasticsearch` sink: batches sent to the `_bulk` API (Elasticsearch or OpenSearch).
//!
//! Each record is a `create` action into the index its time names, followed by the record:
//! NDJSON, the last line ending in a newline, as `_bulk` requires. `create` works for plain
//! indices and for data streams alike. An answer with `"errors": true` is read item by item:
//! the rejected ones are counted as failed (and the first reason logged), the rest as written.

use std::sync::Arc;
use std::time::SystemTime;

use gantry_config::ElasticsearchSinkSpec;
use serde::Deserialize;

use super::http_sink::Poster;
use super::record::format_date_pattern;
use super::sink::{Outcome, Sink};
use super::{AccessRecord, RecordFormat};

pub(super) struct ElasticsearchSink {
    poster: Poster,
    bulk_url: reqwest::Url,
    format: Arc<RecordFormat>,
    index: String,
}

impl ElasticsearchSink {
    pub(super) fn new(name: &str, spec: &ElasticsearchSinkSpec, format: Arc<RecordFormat>) -> Result<Self, String> {
        let bulk = format!("{}/_bulk", spec.url.trim_end_matches('/'));
        let poster = Poster::new(name, &bulk, spec.timeout.get(), &spec.retries, &spec.headers)?;
        let bulk_url = poster.url().clone();
        Ok(Self { poster, bulk_url, format, index: spec.index.clone() })
    }
}

/// The `_bulk` request body for `batch`.
pub(super) fn encode_bulk(format: &RecordFormat, index_pattern: &str, batch: &[Arc<AccessRecord>]) -> Vec<u8> {
    let mut body = Vec::with_capacity(batch.len() * 384);
    // Consecutive records nearly always share a day: the index name is made once per change.
    let mut last: Option<(u64, String)> = None;
    for record in batch {
        let hour = record.time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() / 3600;
        let index = match &last {
            Some((at, index)) if *at == hour => index.clone(),
            _ => {
                let index = format_date_pattern(index_pattern, record.time);
                last = Some((hour, index.clone()));
                index
            }
        };
        let action = serde_json::json!({"create": {"_index": index}});
        // A `Value` always serializes.
        let _ = serde_json::to_writer(&mut body, &action);
        body.push(b'\n');
        format.write_json(record, &mut body);
        body.push(b'\n');
    }
    body
}

#[derive(Deserialize)]
struct BulkAnswer {
    errors: bool,
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// Counts written and rejected items of a `_bulk` answer to a batch of `sent` records.
pub(super) fn read_bulk_answer(answer: &[u8], sent: usize) -> Result<(Outcome, Option<String>), String> {
    let answer: BulkAnswer =
        serde_json::from_slice(answer).map_err(|err| format!("the _bulk answer is not what _bulk returns: {err}"))?;
    if !answer.errors {
        return Ok((Outcome::written(sent), None));
    }
    let mut failed = 0;
    let mut first_reason = None;
    for item in answer.items.iter().flat_map(|item| item.values()) {
        if item.status >= 300 || item.error.is_some() {
            failed += 1;
            if first_reason.is_none() {
                first_reason = Some(match &item.error {
                    Some(error) => format!("{} {}", item.status, error),
                    None => item.status.to_string(),
                });
            }
        }
    }
    let failed = failed.min(sent);
    Ok((Outcome { written: (sent - failed) as u64, failed: failed as u64 }, first_reason))
}

impl Sink for ElasticsearchSink {
    async fn write(&mut self, batch: &[Arc<AccessRecord>]) -> Outcome {
        let body = encode_bulk(&self.format, &self.index, batch);
        match self.poster.post(Some(&self.bulk_url), "application/x-ndjson", body.into()).await {
            Ok(answer) => match read_bulk_answer(&answer, batch.len()) {
                Ok((outcome, reason)) => {
                    if let Some(reason) = reason {
                        let url = &self.bulk_url;
                        let problem =
                            format!("{url} rejected {} of {} records, first: {reason}", outcome.failed, batch.len());
                        self.poster.failures.warn(&problem);
                    }
                    outcome
                }
                Err(problem) => {
                    // Accepted, but what became of each record is unknown: not counted as failed.
                    self.poster.failures.warn(&problem);
                    Outcome::written(batch.len())
                }
            },
            Err(err) => {
                let problem = format!("POST {}: {err}", self.bulk_url);
                self.poster.failures.warn(&problem);
                Outcome::failed(batch.len())
            }
        }
    }
}
