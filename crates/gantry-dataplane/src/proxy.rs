//! The request handler: one request through routing, policies, forwarding and logging.
//!
//! Runs per request. One atomic snapshot load; no locks.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use gantry_policy_api::ai::AiExchange;
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::response_body::take_streamed_body;
use gantry_policy_api::subrequest;
use gantry_policy_api::{ClientCertificate, Exchange, ForwardOutcome, LogRecord, PolicyResponse, RequestBody};
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HOST, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::access_log::{AccessLog, AccessRecord, TraceContext};
use crate::body::{
    apply_response_body_action, discard, ClientResponseBody, GatewayBody, HoldingBody, LimitedBody, WhenSent,
};
use crate::forward::{forward_traced, ForwardError, ForwardRequest};
use crate::headers::{add_forwarded_shared, remove_hop_by_hop, request_id, ClientForwarding, X_REQUEST_ID};
use crate::metrics::{GatewayMetrics, MirrorOutcome};
use crate::mirror;
use crate::pipeline::{Pipeline, RequestOutcome};
use crate::route::CompiledRoute;
use crate::router::RequestFacts;
use crate::snapshot::{Snapshot, SnapshotHandle};
use crate::trace::{RequestTrace, ServerOutcome, SpanRecorder, Tracer};
use crate::upstream::CompiledUpstream;

/// Facts about the client connection a request arrived on, computed once per connection.
#[derive(Debug)]
pub struct Connection {
    /// The peer.
    pub client: SocketAddr,
    /// Whether TLS was terminated.
    pub is_tls: bool,
    /// The connection's part of the forwarding headers.
    pub forwarding: ClientForwarding,
    /// The client certificate the TLS handshake verified, parsed once for every request.
    pub client_certificate: Option<Arc<ClientCertificate>>,
}

impl Connection {
    /// The facts of a connection from `client`.
    pub fn new(client: SocketAddr, is_tls: bool) -> Self {
        Self { client, is_tls, forwarding: ClientForwarding::new(client, is_tls), client_certificate: None }
    }

    /// The same connection, with the client certificate its handshake verified.
    pub fn with_client_certificate(mut self, certificate: Option<Arc<ClientCertificate>>) -> Self {
        self.client_certificate = certificate;
        self
    }
}

/// The headers the gateway adds to a forwarded request: `X-Forwarded-For`, `-Proto`, `-Host`,
/// `Forwarded` and `X-Request-Id`.
const FORWARDING_HEADERS: usize = 5;

/// The data plane's request handler, shared by every connection.
#[derive(Clone, Debug)]
pub struct Gateway {
    snapshot: SnapshotHandle,
    access_log: Option<AccessLog>,
    metrics: GatewayMetrics,
    /// Absent unless `node.tracing` is set: then no trace header is read and no span made.
    tracer: Option<Tracer>,
}

/// The records of an AI exchange that wait for its usage.
struct UnfinishedAi {
    ai: AiExchange,
    route: Option<Arc<str>>,
    /// The sampled server span and what it learned at the response head.
    span: Option<(RequestTrace, ServerOutcome)>,
    record: Option<AccessRecord>,
}

/// Where the response of one exchange came from, for logging.
struct Served {
    response: Response<GatewayBody>,
    route: Option<Arc<CompiledRoute>>,
    upstream: Option<Arc<str>>,
    upstream_duration: Option<std::time::Duration>,
    exchange: Option<Exchange>,
}

impl Gateway {
    /// A handler serving from `snapshot`, logging to `access_log` if given, counting in `metrics`.
    pub fn new(snapshot: SnapshotHandle, access_log: Option<AccessLog>, metrics: GatewayMetrics) -> Self {
        Self { snapshot, access_log, metrics, tracer: None }
    }

    /// The same handler, tracing requests with `tracer`.
    pub fn with_tracer(mut self, tracer: Option<Tracer>) -> Self {
        self.tracer = tracer;
        self
    }

    /// The snapshot handle.
    pub fn snapshot(&self) -> &SnapshotHandle {
        &self.snapshot
    }

    /// Counts a request refused before routing (its head broke a listener rule).
    pub fn count_refusal(&self, status: StatusCode) {
        self.metrics.traffic().count_unmatched(status);
    }

    /// Serves one request. Never fails: every problem becomes a problem response.
    pub async fn handle(
        &self,
        mut request: Request<Incoming>,
        connection: &Connection,
    ) -> Response<ClientResponseBody> {
        let started = Instant::now();
        let request_id_value = request_id(request.headers());
        let request_id: Arc<str> = Arc::from(request_id_value.to_str().unwrap_or("-"));
        let method = request.method().clone();
        let uri = request.uri().clone();
        let version = request.version();
        let is_grpc = is_grpc_request(&request);

        let logged_facts = self.access_log.as_ref().map(|log| log.request_facts(request.uri(), request.headers()));
        let on_upgrade = is_upgrade_request(&request).then(|| hyper::upgrade::on(&mut request));
        let mut trace =
            self.tracer.as_ref().map(|tracer| tracer.start_request(&request, connection.client, connection.is_tls));
        let mut served =
            self.serve(request, connection, &request_id, &request_id_value, on_upgrade, trace.as_mut()).await;
        served.response.headers_mut().insert(&X_REQUEST_ID, request_id_value);
        let is_gateway_error = served.upstream.is_none() && served.response.status().as_u16() >= 400;

        let status = served.response.status();
        let duration = started.elapsed();
        match &served.route {
            Some(route) => {
                if let Some(metrics) = &route.metrics {
                    let consumer = served.exchange.as_ref().and_then(Exchange::consumer).map(|consumer| &*consumer.id);
                    metrics.record(status, duration, served.upstream_duration, consumer);
                }
            }
            None => self.metrics.traffic().count_unmatched(status),
        }
        // Only AI exchanges have one: the other requests pay for an absent extension, no lock.
        let ai = served.exchange.as_ref().and_then(|exchange| exchange.extensions.get::<AiExchange>());
        let (ai_usage, ai_unfinished) = match ai.map(|ai| (ai.usage(), ai)) {
            None => (None, None),
            Some((Some(usage), _)) => (Some(Arc::new(usage)), None),
            // A streamed answer's usage is known once its stream ends, after this head.
            Some((None, ai)) => (None, Some(ai.clone())),
        };
        let route_id = served.route.as_ref().map(|route| route.id.clone());
        if let (Some(usage), Some(route)) = (&ai_usage, &route_id) {
            self.metrics.ai().record(route, usage);
        }
        let gateway_trace = trace.as_ref().map(|trace| {
            let (trace_id, span_id) = trace.log_context();
            TraceContext { trace_id, span_id }
        });
        let mut unfinished_span = None;
        if let (Some(tracer), Some(trace)) = (&self.tracer, trace) {
            if trace.is_sampled() {
                let consumer = served.exchange.as_ref().and_then(|exchange| exchange.consumer().map(|c| c.id.clone()));
                let outcome =
                    ServerOutcome { status: status.as_u16(), route: route_id.clone(), consumer, ai: ai_usage.clone() };
                if ai_unfinished.is_some() {
                    unfinished_span = Some((trace, outcome));
                } else {
                    tracer.finish(trace, outcome);
                }
            }
        }
        if let (Some(exchange), Some(route)) = (&served.exchange, &served.route) {
            let record = LogRecord {
                request_id: &request_id,
                route_id: Some(&route.id),
                consumer_id: exchange.consumer().map(|consumer| &*consumer.id),
                client_addr: connection.client,
                method: &method,
                uri: &uri,
                status,
                upstream_addr: served.upstream.as_deref(),
                duration,
                upstream_duration: served.upstream_duration,
            };
            route.pipeline.selected(exchange).run_log(&record);
        }
        let mut unfinished_record = None;
        if let (Some(log), Some(facts)) = (&self.access_log, logged_facts) {
            // The gateway's own span when it traces requests, else the caller's traceparent.
            let trace = gateway_trace.or(facts.trace);
            let record = AccessRecord {
                // Wall-clock time of arrival, read only when a log needs it.
                time: SystemTime::now().checked_sub(duration).unwrap_or(SystemTime::UNIX_EPOCH),
                request_id,
                trace_id: trace.map(|context| context.trace_id),
                span_id: trace.map(|context| context.span_id),
                route_id: route_id.clone(),
                service_id: served.route.as_ref().and_then(|route| route.service.clone()),
                consumer_id: served
                    .exchange
                    .as_ref()
                    .and_then(|exchange| exchange.consumer().map(|consumer| consumer.id.clone())),
                client: connection.client,
                method,
                uri,
                version,
                host: facts.host,
                user_agent: facts.user_agent,
                status: status.as_u16(),
                bytes_received: facts.bytes_received,
                bytes_sent: http_body::Body::size_hint(served.response.body()).exact(),
                duration,
                upstream_addr: served.upstream,
                upstream_duration: served.upstream_duration,
                request_headers: facts.headers,
                response_headers: log.response_headers(served.response.headers()),
                ai: ai_usage,
            };
            if ai_unfinished.is_some() {
                unfinished_record = Some(record);
            } else {
                log.emit(record);
            }
        }
        let response = if is_grpc && is_gateway_error {
            Box::pin(into_grpc_error(served.response)).await
        } else {
            served.response
        };
        let when_sent = ai_unfinished.map(|ai| {
            self.when_ai_sent(UnfinishedAi { ai, route: route_id, span: unfinished_span, record: unfinished_record })
        });
        let response = match served.exchange {
            Some(exchange) => hold_until_sent(response, exchange, when_sent),
            None => response,
        };
        // The route goes with the body, which counts its bytes as they pass.
        let route = served.route;
        response.map(|body| ClientResponseBody::new(body, route))
    }

    /// What records an AI exchange whose usage was not known at its response head once its
    /// body has been sent or dropped: by then the policy that streamed it has finished the
    /// usage (or never will, when no provider answered), and the span and the access log
    /// record go out with it.
    fn when_ai_sent(&self, unfinished: UnfinishedAi) -> WhenSent {
        let access_log = unfinished.record.is_some().then(|| self.access_log.clone()).flatten();
        let tracer = unfinished.span.is_some().then(|| self.tracer.clone()).flatten();
        let metrics = self.metrics.clone();
        Box::new(move || {
            let usage = unfinished.ai.usage().map(Arc::new);
            if let (Some(usage), Some(route)) = (&usage, &unfinished.route) {
                metrics.ai().record(route, usage);
            }
            if let (Some(tracer), Some((trace, mut outcome))) = (tracer, unfinished.span) {
                outcome.ai = usage.clone();
                tracer.finish(trace, outcome);
            }
            if let (Some(access_log), Some(mut record)) = (access_log, unfinished.record) {
                record.ai = usage;
                access_log.emit(record);
            }
        })
    }

    async fn serve(
        &self,
        request: Request<Incoming>,
        connection: &Connection,
        request_id: &Arc<str>,
        request_id_value: &HeaderValue,
        on_upgrade: Option<hyper::upgrade::OnUpgrade>,
        mut trace: Option<&mut RequestTrace>,
    ) -> Served {
        let snapshot = self.snapshot.load_full();
        let (mut parts, body) = request.into_parts();
        let host_value = request_host(&parts);
        let host = host_value.as_ref().and_then(|value| value.to_str().ok());
        let facts = RequestFacts {
            host: host.map(strip_port),
            path: parts.uri.path(),
            query: parts.uri.query(),
            method: &parts.method,
            headers: &parts.headers,
        };
        let Some(found) = snapshot.router.find(&facts) else {
            discard_unread(&parts, ClientBody::Streaming(body));
            let detail = format!("no route matches {} {}", parts.method, parts.uri.path());
            return Served {
                response: into_gateway_response(problem_response(
                    StatusCode::NOT_FOUND,
                    "route-not-found",
                    "Not Found",
                    Some(&detail),
                )),
                route: None,
                upstream: None,
                upstream_duration: None,
                exchange: None,
            };
        };
        let route = found.route.clone();
        let mut exchange = Exchange::new(request_id.clone(), route.id.clone(), connection.client, connection.is_tls);
        // A reference count, and only on connections that presented a certificate.
        exchange.client_certificate.clone_from(&connection.client_certificate);
        exchange.path_params = found.params;

        let body = match route.pipeline.request_body_limit(&parts) {
            None => ClientBody::Streaming(body),
            // Boxed, like the other paths only some requests take, so that the future every
            // request makes and moves stays small.
            Some(limit) => match Box::pin(read_whole_body(body, limit)).await {
                Ok(bytes) => {
                    if let Some(metrics) = &route.metrics {
                        metrics.series.count_request_body(bytes.len() as u64);
                    }
                    exchange.extensions.insert(RequestBody(bytes.clone()));
                    ClientBody::Buffered(bytes)
                }
                // Nothing of the body is left to discard: it was read up to the failure.
                Err(response) => return respond_with(&route, exchange, response, recorder(&mut trace)),
            },
        };

        if route.pipeline.sends_subrequests() {
            let sender = crate::subrequest::SnapshotSubrequests::new(
                snapshot.clone(),
                connection.client,
                connection.is_tls,
                host,
                request_id,
            );
            subrequest::allow_subrequests(&mut exchange, Arc::new(sender));
        }
        let outcome = route.pipeline.run_request(&mut parts, &mut exchange, recorder(&mut trace)).await;
        if route.pipeline.sends_subrequests() {
            // Holds the snapshot: it must not live on with the exchange until the body is sent.
            subrequest::end_subrequests(&mut exchange);
        }
        if let RequestOutcome::Respond { policy, position, response } = outcome {
            self.metrics.count_policy_answer(policy, response.status());
            discard_unread(&parts, body);
            let (mut head, body) = response.into_parts();
            if let Some(spans) = recorder(&mut trace) {
                spans.answered_by(policy);
            }
            route.pipeline.selected(&exchange).run_response(
                &mut head,
                &mut exchange,
                Some(position),
                recorder(&mut trace),
            );
            let upstream = chosen_upstream(&route, &snapshot, &exchange).cloned();
            crate::background::send_background_request(&route, upstream, &mut exchange, connection, host);
            let body = match take_streamed_body(&mut exchange) {
                Some(chunks) => GatewayBody::Chunks(crate::body::PolicyChunks(chunks)),
                None => GatewayBody::full(body),
            };
            return Served {
                response: Response::from_parts(head, body),
                route: Some(route.clone()),
                upstream: None,
                upstream_duration: None,
                exchange: Some(exchange),
            };
        }

        let Some(upstream) = chosen_upstream(&route, &snapshot, &exchange) else {
            let detail = match exchange.upstream.as_deref() {
                None => "the route has no upstream and no policy answered".to_owned(),
                // Policies check the ids they choose from when built, against this very configuration.
                Some(chosen) => format!("the upstream `{chosen}` a policy chose is not configured"),
            };
            let response = problem_response(StatusCode::BAD_GATEWAY, "no-upstream", "Bad Gateway", Some(&detail));
            discard_unread(&parts, body);
            return respond_with(&route, exchange, response, recorder(&mut trace));
        };

        let path_and_query = match exchange.upstream_path.take() {
            Some(chosen) => Ok(chosen),
            None => upstream_path(&parts, route.rewrite.as_ref()),
        };
        let path_and_query = match path_and_query {
            Ok(path_and_query) => path_and_query,
            Err(detail) => {
                let response = problem_response(StatusCode::BAD_REQUEST, "bad-request", "Bad Request", Some(&detail));
                discard_unread(&parts, body);
                return respond_with(&route, exchange, response, recorder(&mut trace));
            }
        };
        let is_upgrade = on_upgrade.is_some();
        remove_hop_by_hop(&mut parts.headers, is_upgrade);
        // Room for the forwarding headers and the request id at once: a head parsed with room
        // for its own fields only would otherwise grow, and rehash, once per insertion or two.
        parts.headers.reserve(FORWARDING_HEADERS);
        if is_upgrade {
            parts.headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        }
        add_forwarded_shared(&mut parts.headers, &connection.forwarding, host, host_value.as_ref());
        // The id's header value is shared with the response's, not copied.
        parts.headers.insert(&X_REQUEST_ID, request_id_value.clone());
        if let Some(trace) = trace.as_deref_mut() {
            if let Some(spans) = trace.recorder() {
                spans.start_upstream(&upstream.id);
            }
            trace.inject(&mut parts.headers);
        }

        let body_limit = exchange.request_body_limit.map(|limit| (limit, Arc::new(AtomicBool::new(false))));
        let body = match body {
            ClientBody::Buffered(bytes) => {
                // A request hook may have replaced the body it read (`body_transform`).
                let bytes = exchange.extensions.get::<RequestBody>().map_or(bytes, |body| body.0.clone());
                if body_limit.as_ref().is_some_and(|(limit, _)| bytes.len() as u64 > *limit) {
                    let detail = "the request body is larger than this route accepts";
                    let response = problem_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request-body-too-large",
                        "Content Too Large",
                        Some(detail),
                    );
                    return respond_with(&route, exchange, response, recorder(&mut trace));
                }
                if bytes.is_empty() {
                    GatewayBody::Empty
                } else {
                    GatewayBody::full(bytes)
                }
            }
            ClientBody::Streaming(body) if http_body::Body::is_end_stream(&body) => GatewayBody::Empty,
            ClientBody::Streaming(body) => {
                let counted = route.metrics.as_ref().map(|metrics| metrics.series.clone());
                match (&body_limit, counted) {
                    (Some((limit, exceeded)), counted) => {
                        let discard_rest = parts.version <= Version::HTTP_11;
                        let limited = LimitedBody::new(body, *limit, exceeded.clone(), discard_rest);
                        GatewayBody::Limited(limited.counted_in(counted))
                    }
                    (None, Some(series)) => GatewayBody::Limited(LimitedBody::counted(body, series)),
                    (None, None) => GatewayBody::Streamed(body),
                }
            }
        };
        let body = match exchange.mirror.take() {
            None => body,
            Some(mirror) if is_upgrade => {
                // An upgraded connection is a conversation of its own, not a request to repeat.
                self.metrics.count_mirror(&mirror.upstream, MirrorOutcome::Skipped);
                body
            }
            Some(mirror) => {
                let original = mirror::Original {
                    parts: &parts,
                    path_and_query: &path_and_query,
                    client: connection.client,
                    host,
                };
                mirror::start(mirror, &snapshot, &original, body, &self.metrics)
            }
        };
        let forward_request =
            ForwardRequest { parts, body, path_and_query, client: connection.client, original_host: host, body_limit };
        let upstream_span = recorder(&mut trace).and_then(|spans| spans.upstream.as_mut());
        match forward_traced(upstream, forward_request, upstream_span).await {
            Ok(mut forwarded) => {
                if let Some(spans) = recorder(&mut trace) {
                    spans.end_upstream(Some(forwarded.response.status().as_u16()), None);
                }
                let upgraded = forwarded.response.status() == StatusCode::SWITCHING_PROTOCOLS;
                let tunnel_ends = match on_upgrade {
                    Some(client_side) if upgraded => Some((client_side, hyper::upgrade::on(&mut forwarded.response))),
                    _ => None,
                };
                let (mut head, body) = forwarded.response.into_parts();
                remove_hop_by_hop(&mut head.headers, upgraded);
                if upgraded {
                    head.headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
                }
                // The client's protocol decides the response framing, not the upstream's.
                head.version = Version::HTTP_11;
                exchange.forward_outcome = Some(ForwardOutcome::Answered(head.status));
                let mut body = GatewayBody::Upstream(body, forwarded.in_flight);
                let pipeline = route.pipeline.selected(&exchange);
                if let Some(limit) = pipeline.response_body_limit(&head, &exchange).filter(|_| !upgraded) {
                    body = Box::pin(self.check_response_body(pipeline, &mut head, body, limit, &mut exchange)).await;
                }
                route.pipeline.selected(&exchange).run_response(&mut head, &mut exchange, None, recorder(&mut trace));
                let body = apply_response_body_action(&mut exchange, body);
                if let Some((client_side, upstream_side)) = tunnel_ends {
                    // The tunnel outlives the 101 response, so it holds what policies left for
                    // the length of the exchange (a concurrency slot) until it closes.
                    let held = std::mem::take(&mut exchange.extensions);
                    tokio::spawn(tunnel(client_side, upstream_side, route.id.clone(), held));
                }
                Served {
                    response: Response::from_parts(head, body),
                    route: Some(route.clone()),
                    upstream: Some(forwarded.endpoint),
                    upstream_duration: Some(forwarded.upstream_duration),
                    exchange: Some(exchange),
                }
            }
            Err(err) => {
                if let Some(spans) = recorder(&mut trace) {
                    spans.end_upstream(None, Some(err.code()));
                }
                log_forward_error(&err, &route.id, &upstream.id);
                if err.blames_upstream() {
                    exchange.forward_outcome = Some(ForwardOutcome::Failed);
                }
                let detail = err.to_string();
                let title = err.status().canonical_reason().unwrap_or("Error");
                let response = problem_response(err.status(), err.code(), title, Some(&detail));
                respond_with(&route, exchange, response, recorder(&mut trace))
            }
        }
    }
}

impl Gateway {
    /// Reads an upstream response body of at most `limit` bytes that a policy asked for and
    /// shows it to the policies reading response bodies: the body to send on is the same bytes,
    /// or, in `head` and the result, a policy's answer. A longer or broken body becomes a 502.
    async fn check_response_body(
        &self,
        pipeline: &Pipeline,
        head: &mut http::response::Parts,
        body: GatewayBody,
        limit: u64,
        exchange: &mut Exchange,
    ) -> GatewayBody {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let answer = match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit)).await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                match pipeline.run_response_body(head, &bytes, exchange) {
                    None => return GatewayBody::full(bytes),
                    Some((policy, answer)) => {
                        self.metrics.count_policy_answer(policy, answer.status());
                        answer
                    }
                }
            }
            Err(err) if err.is::<http_body_util::LengthLimitError>() => problem_response(
                StatusCode::BAD_GATEWAY,
                "upstream-response-too-large",
                "Bad Gateway",
                Some("the upstream's response body is larger than this route's policies read"),
            ),
            Err(err) => {
                tracing::warn!(route = %exchange.route_id, error = %err, "upstream response body failed");
                problem_response(
                    StatusCode::BAD_GATEWAY,
                    "upstream-body-failed",
                    "Bad Gateway",
                    Some("the upstream's response body broke off"),
                )
            }
        };
        let (answer_head, answer_body) = answer.into_parts();
        *head = answer_head;
        GatewayBody::full(answer_body)
    }
}

/// The client's request body: still streaming, or read whole because a policy asked for it.
enum ClientBody {
    Streaming(Incoming),
    Buffered(Bytes),
}

/// Reads a request body of at most `limit` bytes, for policies that asked for it; a longer or
/// broken body becomes the answer (413, 400).
async fn read_whole_body(body: Incoming, limit: u64) -> Result<Bytes, PolicyResponse> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit)).await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(problem_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request-body-too-large",
            "Content Too Large",
            Some("the request body is larger than this route's policies read"),
        )),
        Err(err) => {
            tracing::debug!(error = %err, "request body could not be read");
            Err(problem_response(
                StatusCode::BAD_REQUEST,
                "client-body-failed",
                "Bad Request",
                Some("the request body could not be read"),
            ))
        }
    }
}

/// Lets an HTTP/1.x client finish sending a body the gateway answers without reading, so that
/// it gets the answer rather than a reset connection (see [`discard`]).
fn discard_unread(parts: &http::request::Parts, body: ClientBody) {
    let ClientBody::Streaming(body) = body else { return };
    // A client waiting for `100 Continue` has sent no body; reading would ask it for one.
    let awaits_continue =
        parts.headers.get(EXPECT).is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if parts.version <= Version::HTTP_11 && !awaits_continue {
        discard(body);
    }
}

/// Keeps what policies left in the exchange's extensions (a `concurrency_limit` slot) alive
/// until the response body has been sent or the client has gone, so that a policy can count a
/// request for as long as it occupies the gateway and the upstream, not just until its
/// response head. Most exchanges leave nothing, and their body is not wrapped.
///
/// `when_sent` runs once the body has ended or been dropped, after what was held is gone.
fn hold_until_sent(
    response: Response<GatewayBody>,
    mut exchange: Exchange,
    when_sent: Option<WhenSent>,
) -> Response<GatewayBody> {
    // Already forwarded; a long download need not keep the request body in memory.
    exchange.extensions.remove::<RequestBody>();
    if exchange.extensions.is_empty() && when_sent.is_none() {
        return response;
    }
    let held = exchange.extensions;
    response.map(|body| {
        let holding = HoldingBody::new(body, held);
        GatewayBody::Holding(match when_sent {
            Some(when_sent) => holding.when_sent(when_sent),
            None => holding,
        })
    })
}

/// The spans of a traced request, when it is sampled.
fn recorder<'a>(trace: &'a mut Option<&mut RequestTrace>) -> Option<&'a mut SpanRecorder> {
    trace.as_deref_mut().and_then(RequestTrace::recorder)
}

/// Answers with a gateway-made response that every policy of the route gets to see.
fn respond_with(
    route: &Arc<CompiledRoute>,
    mut exchange: Exchange,
    response: PolicyResponse,
    spans: Option<&mut SpanRecorder>,
) -> Served {
    let (mut head, body) = response.into_parts();
    let body = match take_streamed_body(&mut exchange) {
        Some(chunks) => GatewayBody::Chunks(crate::body::PolicyChunks(chunks)),
        None => GatewayBody::full(body),
    };
    route.pipeline.selected(&exchange).run_response(&mut head, &mut exchange, None, spans);
    let body = apply_response_body_action(&mut exchange, body);
    Served {
        response: Response::from_parts(head, body),
        route: Some(route.clone()),
        upstream: None,
        upstream_duration: None,
        exchange: Some(exchange),
    }
}

fn log_forward_error(err: &ForwardError, route: &str, upstream: &str) {
    match err {
        // Refusals by the bulkhead come in floods exactly when the upstream is overloaded.
        ForwardError::BodyTooLarge { .. } | ForwardError::ClientBody { .. } | ForwardError::Overloaded { .. } => {
            tracing::debug!(route, upstream, error = %err, "request refused while forwarding");
        }
        _ => tracing::warn!(route, upstream, error = %err, "upstream request failed"),
    }
}

/// Turns a policy's response into a gateway response.
pub fn into_gateway_response(response: PolicyResponse) -> Response<GatewayBody> {
    let (head, body): (_, Bytes) = response.into_parts();
    Response::from_parts(head, GatewayBody::full(body))
}

/// The request's host: the URI authority (HTTP/2, absolute-form) or the `Host` header. Held
/// apart from the request head, which is rewritten later; for HTTP/1.1 that is a shared copy
/// of the header, not an allocation.
fn request_host(parts: &http::request::Parts) -> Option<HeaderValue> {
    if let Some(authority) = parts.uri.authority() {
        return HeaderValue::from_str(authority.as_str()).ok();
    }
    parts.headers.get(HOST).cloned()
}

/// `host:port` or `[v6]:port` without the port.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':')
        .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host })
}

/// The upstream a request goes to: the one a policy chose (`traffic_split`), else the route's.
fn chosen_upstream<'a>(
    route: &'a CompiledRoute,
    snapshot: &'a Snapshot,
    exchange: &Exchange,
) -> Option<&'a Arc<CompiledUpstream>> {
    match exchange.upstream.as_deref() {
        None => route.upstream.as_ref(),
        Some(chosen) => snapshot.upstream(chosen),
    }
}

/// The path and query to send upstream: the request's, rewritten as the route says.
pub(crate) fn upstream_path(
    parts: &http::request::Parts,
    rewrite: Option<&crate::route::PathRewrite>,
) -> Result<PathAndQuery, String> {
    let path = parts.uri.path();
    let rewritten = match rewrite.map(|rewrite| rewrite.apply(path)) {
        Some(std::borrow::Cow::Owned(rewritten)) => rewritten,
        // Unchanged: the received path and query are sent as they are, without copying.
        Some(std::borrow::Cow::Borrowed(_)) | None => {
            return Ok(parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
        }
    };
    let text = match parts.uri.query() {
        Some(query) => format!("{rewritten}?{query}"),
        None => rewritten,
    };
    PathAndQuery::try_from(text).map_err(|err| format!("rewritten path is invalid: {err}"))
}

/// Whether the request is a gRPC call (`application/grpc`, `application/grpc+proto`, gRPC-Web...).
fn is_grpc_request<B>(request: &Request<B>) -> bool {
    request.headers().get(CONTENT_TYPE).is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// Re-renders an error the gateway made (no route, a policy's denial, a forwarding failure)
/// for a gRPC client. gRPC clients read the outcome from `grpc-status` and would try to decode
/// a problem document as messages, so the answer is a trailers-only response: HTTP 200 with
/// the status in the headers, the code mapped as gRPC's `http-grpc-status-mapping.md` says.
async fn into_grpc_error(response: Response<GatewayBody>) -> Response<GatewayBody> {
    let (mut head, body) = response.into_parts();
    if matches!(body, GatewayBody::Streamed(_)) {
        // Not made by the gateway after all; reading it could wait on a peer.
        return Response::from_parts(head, body);
    }
    let body = http_body_util::BodyExt::collect(body).await.map(|collected| collected.to_bytes()).unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|problem| {
            problem.get("detail").or_else(|| problem.get("title")).and_then(|text| text.as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| head.status.canonical_reason().unwrap_or("gateway error").to_owned());
    let code = grpc_code(head.status);
    head.status = StatusCode::OK;
    head.headers.remove(CONTENT_LENGTH);
    head.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    head.headers.insert(&GRPC_STATUS, HeaderValue::from(code));
    if let Ok(value) = HeaderValue::try_from(percent_encode_grpc_message(&message)) {
        head.headers.insert(&GRPC_MESSAGE, value);
    }
    Response::from_parts(head, GatewayBody::Empty)
}

static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");

/// The gRPC status code for an HTTP status, per gRPC's `http-grpc-status-mapping.md`.
fn grpc_code(status: StatusCode) -> u16 {
    const INTERNAL: u16 = 13;
    const UNAUTHENTICATED: u16 = 16;
    const PERMISSION_DENIED: u16 = 7;
    const UNIMPLEMENTED: u16 = 12;
    const UNAVAILABLE: u16 = 14;
    const UNKNOWN: u16 = 2;
    match status.as_u16() {
        400 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => UNKNOWN,
    }
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%` itself.
fn percent_encode_grpc_message(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn is_upgrade_request<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_11
        && request.headers().contains_key(UPGRADE)
        && request
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Copies bytes both ways between an upgraded client connection and upstream connection;
/// `held` (the exchange's extensions) is dropped when the tunnel closes.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    route: Arc<str>,
    held: http::Extensions,
) {
    let _held = held;
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(err) => {
            tracing::debug!(route = &*route, error = %err, "upgrade did not complete");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(route = &*route, error = %err, "upgraded connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_http_statuses_to_grpc_codes() {
        assert_eq!(grpc_code(StatusCode::NOT_FOUND), 12);
        assert_eq!(grpc_code(StatusCode::UNAUTHORIZED), 16);
        assert_eq!(grpc_code(StatusCode::FORBIDDEN), 7);
        assert_eq!(grpc_code(StatusCode::TOO_MANY_REQUESTS), 14);
        assert_eq!(grpc_code(StatusCode::BAD_GATEWAY), 14);
        assert_eq!(grpc_code(StatusCode::PAYLOAD_TOO_LARGE), 2);
    }

    #[test]
    fn percent_encodes_grpc_messages() {
        assert_eq!(percent_encode_grpc_message("no route: 100% sure"), "no route: 100%25 sure");
        assert_eq!(percent_encode_grpc_message("caf\u{e9}\n"), "caf%C3%A9%0A");
    }

    #[tokio::test]
    async fn renders_a_gateway_problem_as_a_trailers_only_grpc_response() {
        let problem = problem_response(StatusCode::NOT_FOUND, "route-not-found", "Not Found", Some("no route matches"));
        let response = into_grpc_error(into_gateway_response(problem)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(response.headers()[&GRPC_STATUS], "12");
        assert_eq!(response.headers()[&GRPC_MESSAGE], "no route matches");
        assert!(http_body::Body::is_end_stream(response.body()), "trailers-only responses have no body");
    }

    #[test]
    fn strips_ports_from_hosts() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "::1");
    }
}
