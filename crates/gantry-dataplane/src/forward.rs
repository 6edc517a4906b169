//! Sending a request upstream: endpoint choice, timeouts, retries, passive health, and the
//! one mapping from forwarding failures to client statuses.
//!
//! Runs per request.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};

use crate::body::{GatewayBody, PeerBodyError};
use crate::metrics::traffic::UpstreamFailure;
use crate::trace::UpstreamSpan;
use crate::upstream::balancer::SelectionInput;
use crate::upstream::bulkhead::Refusal;
use crate::upstream::client::{SendError, UpstreamBody};
use crate::upstream::{CompiledUpstream, HostHeader, InFlight};

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Every endpoint is unhealthy or ejected.
    #[error("upstream `{upstream}` has no available endpoint")]
    NoAvailableEndpoint {
        /// Upstream id.
        upstream: Arc<str>,
    },
    /// The connection could not be made.
    #[error("connecting to {endpoint} failed: {reason}")]
    Connect {
        /// Endpoint address.
        endpoint: Arc<str>,
        /// Why.
        reason: String,
    },
    /// No response head within the read or total timeout.
    #[error("{endpoint} did not answer within {after:?}")]
    Timeout {
        /// Endpoint address.
        endpoint: Arc<str>,
        /// The limit that ran out.
        after: Duration,
    },
    /// The upstream broke the exchange (reset, protocol error).
    #[error("exchange with {endpoint} failed: {reason}")]
    Upstream {
        /// Endpoint address.
        endpoint: Arc<str>,
        /// Why.
        reason: String,
    },
    /// The client's body stream broke off (the client went away or sent bad framing).
    #[error("the client's request body failed: {reason}")]
    ClientBody {
        /// Why.
        reason: String,
    },
    /// The client's body passed the configured limit.
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// Limit in bytes.
        limit: u64,
    },
    /// The upstream's bulkhead had no slot and no room or time to wait for one.
    #[error("upstream `{upstream}` is at its request limit ({})", overload_reason(*refusal))]
    Overloaded {
        /// Upstream id.
        upstream: Arc<str>,
        /// Full queue or a wait that ran out.
        refusal: Refusal,
    },
}

fn overload_reason(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::QueueFull => "no room to wait for a slot",
        Refusal::TimedOut => "no slot freed up within the pending timeout",
    }
}

impl ForwardError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ForwardError::NoAvailableEndpoint { .. } | ForwardError::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ForwardError::Connect { .. } | ForwardError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ForwardError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ForwardError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ForwardError::ClientBody { .. } => StatusCode::BAD_REQUEST,
        }
    }

    /// Stable problem type code.
    pub fn code(&self) -> &'static str {
        match self {
            ForwardError::NoAvailableEndpoint { .. } => "no-available-endpoint",
            ForwardError::Overloaded { .. } => "upstream-overloaded",
            ForwardError::Connect { .. } => "upstream-connect-failed",
            ForwardError::Timeout { .. } => "upstream-timeout",
            ForwardError::Upstream { .. } => "upstream-failed",
            ForwardError::BodyTooLarge { .. } => "request-body-too-large",
            ForwardError::ClientBody { .. } => "client-body-failed",
        }
    }

    /// Whether another try may succeed.
    fn is_retryable(&self) -> bool {
        matches!(self, ForwardError::Connect { .. } | ForwardError::Timeout { .. } | ForwardError::Upstream { .. })
    }

    /// Whether the endpoint is to blame (counts for passive health).
    fn blames_endpoint(&self) -> bool {
        self.is_retryable()
    }

    /// How the endpoint failed, when it is to blame.
    fn endpoint_failure(&self) -> Option<UpstreamFailure> {
        match self {
            ForwardError::Connect { .. } => Some(UpstreamFailure::Connect),
            ForwardError::Timeout { .. } => Some(UpstreamFailure::Timeout),
            ForwardError::Upstream { .. } => Some(UpstreamFailure::Exchange),
            _ => None,
        }
    }

    /// Whether the upstream is to blame: it gave no answer, rather than the client's body or
    /// the request failing. Response hooks see such a failure as [`ForwardOutcome::Failed`].
    /// A bulkhead's refusal is not: the upstream was not asked, and a circuit breaker opening
    /// on the gateway's own load shedding would refuse the traffic the bulkhead lets through.
    ///
    /// [`ForwardOutcome::Failed`]: gantry_policy_api::ForwardOutcome::Failed
    pub fn blames_upstream(&self) -> bool {
        self.blames_endpoint() || matches!(self, ForwardError::NoAvailableEndpoint { .. })
    }
}

/// A forwarded exchange's response and facts for the log.
#[derive(Debug)]
pub struct Forwarded {
    /// The upstream response, body still streaming; read to its end, it frees its connection
    /// for the next request.
    pub response: Response<UpstreamBody>,
    /// The endpoint that answered.
    pub endpoint: Arc<str>,
    /// Time from sending to the response head (last try).
    pub upstream_duration: Duration,
    /// Counts the exchange in flight to the endpoint; move it into the response body.
    pub in_flight: InFlight,
}

/// What the forwarder needs besides the upstream.
pub struct ForwardRequest<'a> {
    /// The request head, already rewritten by policies.
    pub parts: http::request::Parts,
    /// Its body.
    pub body: GatewayBody,
    /// Path and query to send upstream.
    pub path_and_query: PathAndQuery,
    /// Client address, for hashing.
    pub client: std::net::SocketAddr,
    /// The original host (for `HostHeader::Pass` when the client sent no `Host`, as in h2).
    pub original_host: Option<&'a str>,
    /// Set by the body when it passed its limit.
    pub body_limit: Option<(u64, Arc<std::sync::atomic::AtomicBool>)>,
}

/// Sends the request to `upstream`, retrying per its policy, once its bulkhead (if any) gives
/// it a slot.
pub async fn forward(upstream: &CompiledUpstream, request: ForwardRequest<'_>) -> Result<Forwarded, ForwardError> {
    forward_traced(upstream, request, None).await
}

/// [`forward`], noting each try's endpoint and each retry in `span` when the request is traced.
pub async fn forward_traced(
    upstream: &CompiledUpstream,
    request: ForwardRequest<'_>,
    mut span: Option<&mut UpstreamSpan>,
) -> Result<Forwarded, ForwardError> {
    let slot = match &upstream.bulkhead {
        None => None,
        // Boxed: only upstreams with a bulkhead pay for the room its wait takes in the future.
        Some(bulkhead) => match Box::pin(bulkhead.acquire()).await {
            Ok(slot) => Some(slot),
            Err(refusal) => {
                if let Some(series) = &upstream.metrics {
                    series.count_overloaded();
                }
                return Err(ForwardError::Overloaded { upstream: upstream.id.clone(), refusal });
            }
        },
    };
    if let Some(budget) = &upstream.retry.budget {
        budget.record_request(Instant::now());
    }
    let deadline = upstream.timeouts.total.map(|total| Instant::now() + total);
    let ForwardRequest { mut parts, body, path_and_query, client, original_host, body_limit } = request;

    parts.version = match upstream.scheme {
        gantry_config::UpstreamScheme::H2c => Version::HTTP_2,
        _ => Version::HTTP_11,
    };
    match &upstream.host_header {
        HostHeader::Pass => {
            if !parts.headers.contains_key(HOST) {
                if let Some(host) = original_host.and_then(|host| HeaderValue::from_str(host).ok()) {
                    parts.headers.insert(HOST, host);
                }
            }
        }
        HostHeader::Rewrite(value) => {
            parts.headers.insert(HOST, value.clone());
        }
        HostHeader::Endpoint => {}
    }

    // Only a request with no body can be sent twice.
    let body_is_empty = matches!(body, GatewayBody::Empty) || http_body::Body::is_end_stream(&body);
    let may_retry = upstream.retry.attempts > 0 && body_is_empty && upstream.retry.allows_method(&parts.method);
    let mut body = Some(body);
    let mut avoid = None;
    let mut attempt = 0u32;
    loop {
        let input = SelectionInput { request: &parts, client };
        let Some(position) = upstream.balancer.select(&upstream.endpoints, &input, avoid) else {
            return Err(ForwardError::NoAvailableEndpoint { upstream: upstream.id.clone() });
        };
        let endpoint = &upstream.endpoints[position];
        if let Some(span) = span.as_deref_mut() {
            span.trying(&endpoint.address);
        }
        let attempt_body = body.take().unwrap_or(GatewayBody::Empty);
        let headers = if may_retry { parts.headers.clone() } else { std::mem::take(&mut parts.headers) };
        let outgoing = build_request(upstream, &parts, headers, &endpoint.authority, &path_and_query, attempt_body);

        let sent_at = Instant::now();
        let limit = match deadline {
            Some(deadline) => upstream.timeouts.read.min(deadline.saturating_duration_since(sent_at)),
            None => upstream.timeouts.read,
        };
        let mut in_flight = InFlight::enter(&endpoint.state);
        let sending = async {
            let pool = endpoint.pool(&upstream.client)?;
            upstream.client.send(pool, outgoing).await
        };
        let result = tokio::time::timeout(limit, sending).await;
        let now = Instant::now();

        let outcome = match result {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) => Err(classify(err, &endpoint.address, body_limit.as_ref())),
            Err(_) => Err(ForwardError::Timeout { endpoint: endpoint.address.clone(), after: limit }),
        };
        let failed_status = match &outcome {
            Ok(response) => {
                upstream.passive.as_ref().is_some_and(|passive| passive.failure_statuses.contains(&response.status()))
            }
            Err(err) => err.blames_endpoint(),
        };
        endpoint.state.record_outcome(failed_status, upstream.passive.as_ref(), now);
        if outcome.is_ok() {
            endpoint.state.record_latency(now - sent_at, now);
        }
        if let Some(series) = &endpoint.metrics {
            match &outcome {
                Ok(response) => series.record_response(response.status(), now - sent_at),
                Err(err) => {
                    if let Some(failure) = err.endpoint_failure() {
                        series.record_failure(failure);
                    }
                }
            }
        }

        let retry_wanted = match &outcome {
            Ok(response) => upstream.retry.on_statuses.contains(&response.status()),
            Err(err) => err.is_retryable(),
        };
        attempt += 1;
        let out_of_time = deadline.is_some_and(|deadline| now >= deadline);
        // The budget is asked last, so that only retries about to happen are taken from it.
        let retry = retry_wanted
            && may_retry
            && attempt <= upstream.retry.attempts
            && !out_of_time
            && upstream.retry.budget.as_ref().is_none_or(|budget| {
                let allowed = budget.try_retry(now);
                if !allowed {
                    if let Some(series) = &upstream.metrics {
                        series.count_retry_denied();
                    }
                }
                allowed
            });
        if !retry {
            // A successful exchange stays in flight, and holds its bulkhead slot, until its
            // response body ends.
            in_flight.hold(slot);
            return outcome.map(|response| Forwarded {
                response,
                endpoint: endpoint.address.clone(),
                upstream_duration: now - sent_at,
                in_flight,
            });
        }
        tracing::debug!(upstream = &*upstream.id, endpoint = &*endpoint.address, attempt, "retrying upstream request");
        if let Some(span) = span.as_deref_mut() {
            let status = outcome.as_ref().ok().map(|response| response.status().as_u16());
            span.retrying(&endpoint.address, status, outcome.as_ref().err().map(ForwardError::code));
        }
        avoid = Some(position);
        let mut wait = upstream.retry.backoff_for(attempt);
        if let Some(deadline) = deadline {
            wait = wait.min(deadline.saturating_duration_since(now));
        }
        // Boxed: a timer entry is large, and only retries need this one.
        Box::pin(tokio::time::sleep(wait)).await;
    }
}

/// The request for one try, with the path and query as its URI (the client adds the scheme
/// and authority where the protocol wants them). `headers` are the ones to send: a copy when a
/// retry may need them again, else the request's own.
fn build_request(
    upstream: &CompiledUpstream,
    parts: &http::request::Parts,
    headers: http::HeaderMap,
    authority: &Authority,
    path_and_query: &PathAndQuery,
    body: GatewayBody,
) -> Request<GatewayBody> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = Uri::from(path_and_query.clone());
    *request.version_mut() = parts.version;
    *request.headers_mut() = headers;
    if matches!(upstream.host_header, HostHeader::Endpoint) {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            request.headers_mut().insert(HOST, host);
        }
    }
    if parts.version == Version::HTTP_2 {
        // HTTP/2 carries the authority in the pseudo-header, not in Host.
        request.headers_mut().remove(HOST);
    }
    request
}

fn classify(
    err: SendError,
    endpoint: &Arc<str>,
    body_limit: Option<&(u64, Arc<std::sync::atomic::AtomicBool>)>,
) -> ForwardError {
    if let Some((limit, exceeded)) = body_limit {
        if exceeded.load(Ordering::Acquire) {
            return ForwardError::BodyTooLarge { limit: *limit };
        }
    }
    let reason = error_chain(&err);
    if caused_by::<PeerBodyError>(&err) {
        return ForwardError::ClientBody { reason };
    }
    if err.is_connect() {
        ForwardError::Connect { endpoint: endpoint.clone(), reason }
    } else {
        ForwardError::Upstream { endpoint: endpoint.clone(), reason }
    }
}

/// True when `E` is somewhere in the source chain of `err`.
fn caused_by<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(error) = current {
        if error.is::<E>() {
            return true;
        }
        current = error.source();
    }
    false
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
