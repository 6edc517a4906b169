//! Requests a policy sends to configured upstreams while it answers a request itself
//! ([`gantry_policy_api::subrequest`]; `aggregate`). Each goes through its upstream like a
//! forwarded request (bulkhead, balancer, pool, timeouts, retries, health), carries the
//! forwarding headers and request id of the request that led to it, and its response is read
//! whole, up to the limit the policy gave.

use std::net::SocketAddr;
use std::sync::Arc;

use gantry_policy_api::subrequest::{
    ChunkStream, StreamingFuture, StreamingSubrequest, Subrequest, SubrequestError, SubrequestFuture, SubrequestSender,
};
use http::uri::PathAndQuery;
use http::HeaderValue;

use crate::body::GatewayBody;
use crate::forward::{forward, ForwardRequest};
use crate::headers::{add_forwarded, remove_hop_by_hop, ClientForwarding, X_REQUEST_ID};
use crate::snapshot::Snapshot;

/// Sends the subrequests of one client request, against the snapshot that request is served with.
pub(crate) struct SnapshotSubrequests {
    snapshot: Arc<Snapshot>,
    client: SocketAddr,
    forwarding: ClientForwarding,
    host: Option<String>,
    request_id: Option<HeaderValue>,
}

impl SnapshotSubrequests {
    pub(crate) fn new(
        snapshot: Arc<Snapshot>,
        client: SocketAddr,
        is_tls: bool,
        host: Option<&str>,
        request_id: &str,
    ) -> Self {
        Self {
            snapshot,
            client,
            // Made again rather than shared with the connection: only routes that fan out pay it.
            forwarding: ClientForwarding::new(client, is_tls),
            host: host.map(str::to_owned),
            request_id: HeaderValue::from_str(request_id).ok(),
        }
    }
}

impl SnapshotSubrequests {
    /// Completes the head as for a forwarded request; its path and query.
    fn prepare(&self, head: &mut http::request::Parts, forwarding_headers: bool) -> PathAndQuery {
        let path_and_query = head.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        remove_hop_by_hop(&mut head.headers, false);
        if forwarding_headers {
            add_forwarded(&mut head.headers, &self.forwarding, self.host.as_deref());
        }
        if let Some(request_id) = &self.request_id {
            head.headers.insert(&X_REQUEST_ID, request_id.clone());
        }
        path_and_query
    }
}

impl SubrequestSender for SnapshotSubrequests {
    fn open(&self, request: StreamingSubrequest) -> StreamingFuture {
        let StreamingSubrequest { upstream, mut head, body, forwarding_headers } = request;
        let Some(compiled) = self.snapshot.upstream(&upstream).cloned() else {
            return Box::pin(std::future::ready(Err(SubrequestError::UnknownUpstream(upstream))));
        };
        let path_and_query = self.prepare(&mut head, forwarding_headers);
        head.headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let client = self.client;
        let host = self.host.clone();
        Box::pin(async move {
            let request = ForwardRequest {
                parts: head,
                body: GatewayBody::full(body),
                path_and_query,
                client,
                original_host: host.as_deref(),
                body_limit: None,
            };
            let forwarded =
                forward(&compiled, request).await.map_err(|err| SubrequestError::Failed(err.to_string()))?;
            let (mut parts, body) = forwarded.response.into_parts();
            remove_hop_by_hop(&mut parts.headers, false);
            // The endpoint counts the exchange in flight until the stream is dropped.
            let in_flight = forwarded.in_flight;
            let chunks = futures_util::stream::unfold((body, Some(in_flight)), |(mut body, in_flight)| async move {
                in_flight.as_ref()?;
                loop {
                    match http_body_util::BodyExt::frame(&mut body).await {
                        None => return None,
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                return Some((Ok(data), (body, in_flight)));
                            }
                        }
                        Some(Err(err)) => {
                            return Some((Err(format!("the upstream's body broke off: {err}")), (body, None)));
                        }
                    }
                }
            });
            let chunks: ChunkStream = Box::pin(chunks);
            Ok(http::Response::from_parts(parts, chunks))
        })
    }

    fn send(&self, request: Subrequest) -> SubrequestFuture {
        let Subrequest { upstream, mut head, max_body_bytes } = request;
        let Some(compiled) = self.snapshot.upstream(&upstream).cloned() else {
            return Box::pin(std::future::ready(Err(SubrequestError::UnknownUpstream(upstream))));
        };
        let path_and_query = self.prepare(&mut head, true);
        let client = self.client;
        let host = self.host.clone();
        Box::pin(async move {
            let request = ForwardRequest {
                parts: head,
                body: GatewayBody::Empty,
                path_and_query,
                client,
                original_host: host.as_deref(),
                body_limit: None,
            };
            let forwarded =
                forward(&compiled, request).await.map_err(|err| SubrequestError::Failed(err.to_string()))?;
            let (mut parts, body) = forwarded.response.into_parts();
            remove_hop_by_hop(&mut parts.headers, false);
            let read = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, max_body_bytes)).await;
            // The endpoint counts the exchange until its body has been read.
            drop(forwarded.in_flight);
            match read {
                Ok(collected) => Ok(http::Response::from_parts(parts, collected.to_bytes())),
                Err(err) => Err(SubrequestError::Failed(format!("reading the response body failed: {err}"))),
            }
        })
    }
}
