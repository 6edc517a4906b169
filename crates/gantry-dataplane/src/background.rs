//! Requests a policy asks to send upstream after the client has its answer
//! ([`gantry_policy_api::response_body::fetch_in_background`]): a cache that served a stale copy
//! refreshing it. They go through the request's upstream (the route's, or the one a policy
//! such as `traffic_split` chose) like any request (its balancer, timeouts,
//! retries and health), with the forwarding headers of the request that led to them, and their
//! response is read whole, up to the limit the policy gave, and handed to the policy.

use std::sync::Arc;

use gantry_policy_api::response_body::{take_background_request, BackgroundRequest};
use gantry_policy_api::Exchange;
use http::HeaderValue;

use crate::body::GatewayBody;
use crate::forward::{forward, ForwardRequest};
use crate::headers::{add_forwarded, remove_hop_by_hop, X_REQUEST_ID};
use crate::proxy::{upstream_path, Connection};
use crate::route::CompiledRoute;
use crate::upstream::CompiledUpstream;

/// Starts the background request `exchange` holds, if a request hook asked for one.
pub(crate) fn send_background_request(
    route: &Arc<CompiledRoute>,
    upstream: Option<Arc<CompiledUpstream>>,
    exchange: &mut Exchange,
    connection: &Connection,
    host: Option<&str>,
) {
    let Some(BackgroundRequest { mut head, max_body_bytes, deliver }) = take_background_request(exchange) else {
        return;
    };
    let Some(upstream) = upstream else {
        deliver(Err("the route has no upstream".to_owned()));
        return;
    };
    let path_and_query = match upstream_path(&head, route.rewrite.as_ref()) {
        Ok(path_and_query) => path_and_query,
        Err(reason) => {
            deliver(Err(reason));
            return;
        }
    };
    remove_hop_by_hop(&mut head.headers, false);
    add_forwarded(&mut head.headers, &connection.forwarding, host);
    if let Ok(value) = HeaderValue::from_str(&exchange.request_id) {
        head.headers.insert(&X_REQUEST_ID, value);
    }
    let client = connection.client;
    let original_host = host.map(str::to_owned);
    let route_id = route.id.clone();
    tokio::spawn(async move {
        let request = ForwardRequest {
            parts: head,
            body: GatewayBody::Empty,
            path_and_query,
            client,
            original_host: original_host.as_deref(),
            body_limit: None,
        };
        let result = match forward(&upstream, request).await {
            Ok(forwarded) => {
                let (mut parts, body) = forwarded.response.into_parts();
                remove_hop_by_hop(&mut parts.headers, false);
                let read = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, max_body_bytes)).await;
                // The endpoint counts the exchange until its body has been read.
                drop(forwarded.in_flight);
                match read {
                    Ok(collected) => Ok(http::Response::from_parts(parts, collected.to_bytes())),
                    Err(err) => Err(format!("reading the response body failed: {err}")),
                }
            }
            Err(err) => Err(err.to_string()),
        };
        if let Err(reason) = &result {
            tracing::debug!(route = &*route_id, reason = %reason, "background request failed");
        }
        deliver(result);
    });
}
