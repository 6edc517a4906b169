//! A stand-in HTTP server for the unit tests of policies that call other servers (a token
//! introspection endpoint, an OpenID provider): HTTP/1.1 on 127.0.0.1:0, every request answered
//! by a function of the test; stopped on drop, open connections included.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::task::{JoinHandle, JoinSet};

/// A running stand-in server.
pub(crate) struct TestServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Starts serving. `answer` is given the server's own address (for answers that link back
    /// to it), each request's head and its whole body, and gives the status and body to answer.
    pub(crate) async fn start<F, Fut>(answer: F) -> Self
    where
        F: Fn(SocketAddr, http::request::Parts, Bytes) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = (StatusCode, String)> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the test server");
        let addr = listener.local_addr().expect("test server address");
        let task = tokio::spawn(async move {
            // Connection tasks live in the set, so that aborting this task closes them too.
            let mut connections = JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((stream, _)) = listener.accept().await else { continue };
                let answer = answer.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        let answer = answer.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.map(|body| body.to_bytes()).unwrap_or_default();
                            let (status, text) = answer(addr, parts, body).await;
                            let mut response = http::Response::new(Full::new(Bytes::from(text)));
                            *response.status_mut() = status;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, task }
    }

    /// The server's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn answers_every_request_with_what_the_test_function_gives() {
    let server = TestServer::start(|addr, parts: http::request::Parts, body: Bytes| async move {
        let text = format!("{} {} {addr} {}", parts.method, parts.uri.path(), String::from_utf8_lossy(&body));
        (StatusCode::ACCEPTED, text)
    })
    .await;
    let response = reqwest::Client::new()
        .post(format!("http://{}/token", server.addr()))
        .body("grant")
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.text().await.expect("text"), format!("POST /token {} grant", server.addr()));
}
