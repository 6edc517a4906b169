//! A small OpenAI-format embeddings server for tests of semantic caching: `POST
//! /v1/embeddings` answers each input with a feature-hashing bag-of-words vector, so texts
//! sharing most of their words are close and unrelated texts are not (llmock's embeddings are
//! random per text: only identical texts match).
//!
//! The embedding ([`embed`]): the text is lowercased and split into words (runs of letters and
//! digits); each word is hashed (FNV-1a, 64 bits) into one of [`DIMENSIONS`] dimensions, adding
//! +1 or -1 by another bit of the hash (signed feature hashing, so collisions cancel out rather
//! than pile up); the vector is then scaled to length 1. The cosine similarity of two texts is
//! about the share of words they have in common: "What is the capital of France?" and "what is
//! the capital city of France" score about 0.93.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::task::{JoinHandle, JoinSet};

/// Length of every vector.
pub const DIMENSIONS: usize = 256;

/// The vector of `text`: a signed feature-hashing bag of its lowercased words, of length 1
/// (all zeros for a text without words).
pub fn embed(text: &str) -> Vec<f32> {
    let mut vector = vec![0.0_f32; DIMENSIONS];
    let lowered = text.to_lowercase();
    for word in lowered.split(|c: char| !c.is_alphanumeric()).filter(|word| !word.is_empty()) {
        let hash = fnv1a(word.as_bytes());
        let at = (hash % DIMENSIONS as u64) as usize;
        vector[at] += if hash >> 63 == 0 { 1.0 } else { -1.0 };
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

/// The cosine similarity of the embeddings of two texts.
pub fn similarity(a: &str, b: &str) -> f32 {
    embed(a).iter().zip(embed(b)).map(|(x, y)| x * y).sum()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

/// A running embeddings server on 127.0.0.1; stopped on drop.
pub struct EmbeddingServer {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl EmbeddingServer {
    /// Starts the server on a port the system picks.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the embeddings server");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in the set so that aborting this task closes them too.
            let mut connections = JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((stream, _)) = listener.accept().await else { continue };
                let counter = counter.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| answer(request, counter.clone()));
                    let _ =
                        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { addr, requests, task: Some(task) }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// How many embeddings requests it answered.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Stops serving and closes open connections; later requests cannot connect.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for EmbeddingServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(status, &json!({ "error": { "message": message, "type": "invalid_request_error" } }))
}

async fn answer(request: Request<Incoming>, requests: Arc<AtomicUsize>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::POST || !request.uri().path().ends_with("/embeddings") {
        return Ok(error(StatusCode::NOT_FOUND, "only POST /v1/embeddings is served"));
    }
    let Ok(body) = request.into_body().collect().await.map(|body| body.to_bytes()) else {
        return Ok(error(StatusCode::BAD_REQUEST, "unreadable body"));
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return Ok(error(StatusCode::BAD_REQUEST, "the body is not JSON"));
    };
    let inputs: Vec<String> = match &body["input"] {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).map(str::to_owned).collect()
        }
        _ => return Ok(error(StatusCode::BAD_REQUEST, "`input` must be a string or a list of strings")),
    };
    requests.fetch_add(1, Ordering::SeqCst);
    let words: usize = inputs.iter().map(|text| text.split_whitespace().count()).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| json!({ "object": "embedding", "index": index, "embedding": embed(text) }))
        .collect();
    Ok(reply(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": body["model"].as_str().unwrap_or("bag-of-words"),
            "usage": { "prompt_tokens": words, "total_tokens": words },
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_sharing_most_words_are_close_and_unrelated_ones_are_not() {
        let length: f32 = embed("Hello, World").iter().map(|x| x * x).sum();
        assert!((length - 1.0).abs() < 1e-5);
        assert!((similarity("What is the capital of France?", "what IS the capital of france") - 1.0).abs() < 1e-5);
        let paraphrase = similarity("What is the capital of France?", "What is the capital city of France?");
        assert!(paraphrase > 0.9 && paraphrase < 0.95, "{paraphrase}");
        let unrelated = similarity("What is the capital of France?", "How do I bake sourdough bread at home?");
        assert!(unrelated < 0.3, "{unrelated}");
        assert!(embed("  ?! ").iter().all(|x| *x == 0.0));
    }
}
