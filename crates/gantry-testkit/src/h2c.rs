//! An HTTP/2 cleartext (h2c, prior knowledge) client for tests: hyper's pooled client with
//! `http2_only`, so every request goes out as HTTP/2 without an upgrade dance.
//!
//! It plays the downstream client of a listener that accepts HTTP/2.

use bytes::Bytes;
use http::{HeaderMap, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::client::TestResponse;

/// A response read whole over HTTP/2, with the version and trailers it came with.
#[derive(Debug)]
pub struct H2Response {
    /// The protocol version of the response as the client saw it.
    pub version: Version,
    /// Status, headers and body.
    pub response: TestResponse,
    /// Trailers, if the body ended with some.
    pub trailers: Option<HeaderMap>,
}

/// An h2c client; one connection per authority, reused.
#[derive(Clone)]
pub struct H2cClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for H2cClient {
    fn default() -> Self {
        Self { inner: Client::builder(TokioExecutor::new()).http2_only(true).build_http() }
    }
}

impl H2cClient {
    /// Sends `request` (absolute `http://` URI) and reads the whole response, trailers included.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<H2Response, String> {
        let response = self.inner.request(request).await.map_err(|err| format!("{err:?}"))?;
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.map_err(|err| err.to_string())?;
        let trailers = collected.trailers().cloned();
        Ok(H2Response {
            version: parts.version,
            response: TestResponse { status: parts.status, headers: parts.headers, body: collected.to_bytes() },
            trailers,
        })
    }

    /// `GET url` over h2c; panics on transport errors.
    pub async fn get(&self, url: &str) -> H2Response {
        let request = Request::get(url).body(Full::new(Bytes::new())).expect("valid test request");
        self.send(request).await.unwrap_or_else(|err| panic!("h2c request to {url} failed: {err}"))
    }
}
