//! The `http` sink, and the POST with timeout and retries that the `elasticsearch` and `otlp`
//! sinks share.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gantry_config::{HttpBatchFormat, HttpSinkSpec, Secret, SinkRetrySpec};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::sink::{Backoff, FailureLog, Outcome, Sink};
use super::{AccessRecord, RecordFormat};

/// POSTs bodies to one URL, each attempt bounded by a timeout, retrying connection failures,
/// timeouts and 408, 429 and 5xx answers with a doubling backoff. The connection pool of the
/// client reconnects by itself once the destination is back.
pub(super) struct Poster {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    retries: u32,
    backoff: Backoff,
    pub(super) failures: FailureLog,
}

/// Why a POST did not succeed.
#[derive(Debug)]
pub(super) enum PostError {
    /// The destination answered with a status that a retry would not change.
    Refused(StatusCode, String),
    /// No answer, or still a retryable one, after every attempt.
    Unavailable(String),
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(status, body) => write!(f, "answered {status}: {body}"),
            Self::Unavailable(problem) => write!(f, "{problem}"),
        }
    }
}

impl Poster {
    pub(super) fn new(
        sink: &str,
        url: &str,
        timeout: Duration,
        retries: &SinkRetrySpec,
        headers: &BTreeMap<String, Secret<String>>,
    ) -> Result<Self, String> {
        let url = reqwest::Url::parse(url).map_err(|err| format!("`{url}` is not a URL: {err}"))?;
        let mut header_map = HeaderMap::new();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("`{name}` is not a header name"))?;
            let mut value = HeaderValue::from_str(value.expose())
                .map_err(|_| format!("the value of header `{name}` is not a header value"))?;
            value.set_sensitive(true);
            header_map.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|err| format!("cannot build its HTTP client: {err}"))?;
        Ok(Self {
            client,
            url,
            headers: header_map,
            retries: retries.attempts,
            backoff: Backoff::new(retries.backoff.get(), retries.max_backoff.get()),
            failures: FailureLog::new(sink),
        })
    }

    /// POSTs `body` to `url` (or the sink's URL), returning the answer's body.
    pub(super) async fn post(
        &mut self,
        url: Option<&reqwest::Url>,
        content_type: &'static str,
        body: Bytes,
    ) -> Result<Bytes, PostError> {
        let url = url.unwrap_or(&self.url).clone();
        let mut attempt = 0;
        loop {
            let sent = self
                .client
                .post(url.clone())
                .headers(self.headers.clone())
                .header(http::header::CONTENT_TYPE, content_type)
                .body(body.clone())
                .send()
                .await;
            let problem = match sent {
                Ok(response) => {
                    let status = response.status();
                    let answer = response.bytes().await;
                    match answer {
                        Ok(answer) if status.is_success() => {
                            self.backoff.reset();
                            return Ok(answer);
                        }
                        Ok(answer) if !is_retryable(status) => {
                            let shown = String::from_utf8_lossy(&answer[..answer.len().min(256)]).into_owned();
                            return Err(PostError::Refused(status, shown));
                        }
                        Ok(_) => format!("answered {status}"),
                        Err(err) => format!("reading the answer failed: {err}"),
                    }
                }
                Err(err) if err.is_timeout() => format!("no answer within the timeout: {err}"),
                Err(err) => format!("{err}"),
            };
            if attempt >= self.retries {
                return Err(PostError::Unavailable(problem));
            }
            attempt += 1;
            tokio::time::sleep(self.backoff.next_wait()).await;
        }
    }

    pub(super) fn url(&self) -> &reqwest::Url {
        &self.url
    }
}

fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Batches POSTed as JSON lines or one JSON array.
pub(super) struct HttpSink {
    poster: Poster,
    format: Arc<RecordFormat>,
    layout: HttpBatchFormat,
}

impl HttpSink {
    pub(super) fn new(name: &str, spec: &HttpSinkSpec, format: Arc<RecordFormat>) -> Result<Self, String> {
        let poster = Poster::new(name, &spec.url, spec.timeout.get(), &spec.retries, &spec.headers)?;
        Ok(Self { poster, format, layout: spec.format })
    }
}

/// `batch` as a request body in `layout`, with its content type.
pub(super) fn encode_batch(
    format: &RecordFormat,
    layout: HttpBatchFormat,
    batch: &[Arc<AccessRecord>],
) -> (&'static str, Bytes) {
    let mut body = Vec::with_capacity(batch.len() * 320);
    match layout {
        HttpBatchFormat::Ndjson => {
            for record in batch {
                format.write_json(record, &mut body);
                body.push(b'\n');
            }
            ("application/x-ndjson", body.into())
        }
        HttpBatchFormat::JsonArray => {
            body.push(b'[');
            for (index, record) in batch.iter().enumerate() {
                if index > 0 {
                    body.push(b',');
                }
                format.write_json(record, &mut body);
            }
            body.push(b']');
            ("application/json", body.into())
        }
    }
}

impl Sink for HttpSink {
    async fn write(&mut self, batch: &[Arc<AccessRecord>]) -> Outcome {
        let (content_type, body) = encode_batch(&self.format, self.layout, batch);
        match self.poster.post(None, content_type, body).await {
            Ok(_) => Outcome::written(batch.len()),
            Err(err) => {
                let url = self.poster.url().clone();
                self.poster.failures.warn(&format_args!("POST {url}: {err}"));
                Outcome::failed(batch.len())
            }
        }
    }
}
