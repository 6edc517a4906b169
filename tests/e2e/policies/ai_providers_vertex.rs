//! `ai_proxy` in front of Vertex AI through a running gateway, against a stand-in for Google:
//! one server playing both the OAuth 2.0 token endpoint of a service account key (it checks
//! the JWT bearer grant's assertion with the key's public half, as Google does) and Vertex
//! AI's `generateContent`, `streamGenerateContent?alt=sse` and `predict` endpoints, which
//! answer only requests carrying the token it issued. llmock serves no Vertex AI paths, and
//! Google cannot run here; the wire formats follow Google's documentation.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gantry_testkit::client::TestClient;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use crate::support::{delta_content, sse_chunks, start_gateway, with_listener};

/// A throwaway RSA key, made for this test only, as a service account key file holds it.
const PRIVATE_KEY: &str = concat!(
    "-----BEGIN PRIVATE KEY-----\n",
    "MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCvubtc+ybjcOPu\n",
    "2WiI88oZm1p1CsAfkzuH7s9nxGq3bYl5OTJoQ9SHs4iEYrWvJIOq03bN9noZm7uw\n",
    "BJA9G99xks00VH0Vcmsct4XZ90ACFoiufEk1URzg9OpI979j7+eICunoNugjsheQ\n",
    "xfM8dznuP3ZfCxpUzgPosLM1YzAsSI4t2zcSYMOwCz2y+PSpv7TerknxIi7eZNEz\n",
    "cRqj1t58cYPUjrf/rghG/tYGsMEtr2ObVjVG1+18b0yU7Kr9yV1CxtyAcuHQfII3\n",
    "gstiGR442XD63tQyxFi1W52cTe0kd9ORjLHTnoDwBlVyjnM3MslaY0yxE3gBiDxV\n",
    "FQKNzTtJAgMBAAECggEAAZZUmIqdtNlMERgbtedNfI/5oBFD6pJt68ScJmXWKMLn\n",
    "kRsIxyY8B7+XGfVaIANSdk3A7Cu/5FY9ZUx964liX4BJ6XaNEdn7LkgY6x7iOtVD\n",
    "2zSc74CkhBfTkRYTdNusbGncfULCs8Yr6Oc60wGI2iEECL18+ZtfRRVUgbomwR2g\n",
    "/dQPjtmm7f8tWtsfjEsQ9IkfSHOgNTsAnfv3S6/9eppbYSKceyv17GcESPhmZ5Kh\n",
    "L+zxjMa2L6a1PvaU4yhfcIHBW6w+K051DmNps38CW2Wd6FQjjhIxdMhx6lLNmDW6\n",
    "Oz9nRAXRBokXtnBi7iyA6OD4C4wkmHBTj8GuGtdDUQKBgQDW+3dsC/OuaM+Z9pQA\n",
    "CyHMhKX9Uuu4mo7wZtaqbdX8wk0dzZZDLikiIlonjkTcThuWb5ACKWDsI05SjGz8\n",
    "ROW3J5LDXS/gTlZER6GQq1TLRKnRiDBoLOcbML0JwSL+2+gJk9OPvQSsRgS3t7CA\n",
    "6JSKhoxAPqnifKFc7pvJnTQ6GQKBgQDRQNGUZKFTfRB+VOINCStlTrNqskDqjTDs\n",
    "ZDMaUZfwAx6Di9Sse9g3Dg4RPV1DLhcxmsneQeB4bML14wVqCY6lWPGFclvZymNZ\n",
    "xYMFmKx+dPsuYevdLu5ULbgY4nFwjqldokVjtd+05/EKB7r91NYa6XGPlY8OcoB8\n",
    "p53qYnuQsQKBgC8vIhbkyKcO+gGgzPr1doWc15GyEWqDAbxh1duyH7VKMALKjKBS\n",
    "EVUclQz5fMOdoRBzi/ftfQhW92nGyGTV+lUoql2Wpltk1ipGTn+iGwpCF8OVUIqM\n",
    "0Gx3VgY+DaBCQ7tWZqi1o8Dr3T01Y9fnNDLzNPUky8SZ9hCfjjHB/ySBAoGBAJBj\n",
    "r7o7re5UMBtcKxdfqmgfZEJNeenfP1D+2xxgDP16yYVv6XKTimCC/EX9F+uRVEPQ\n",
    "UVdiEahHNEhDPKssqReDRjUU8jhYJTH+zigAb5Za1i/tNbnL9nxzh8L0Dd7jMg8A\n",
    "N+1TxGeqXHLVXrxkLtEnIEs5ohsP+4UIjDj9d9IhAoGBAJCtXHBzl4Fu0jUZZY+9\n",
    "rwUHaN7JlddowhjrsGAaNxXEViJaeOdnxTJSm45EVSCtvosWuKV4xw/vWPEbSlUo\n",
    "IiN45NG10SLpsrNSUsFZv7uSur3Lgu7bu1ATt1pBSLrflPrASObur52ONCbevSYT\n",
    "jI93LKZxd+wkiwHOr9AQGT1J\n",
    "-----END PRIVATE KEY-----\n",
);

/// Its public half, which the stand-in token endpoint checks assertions with.
const PUBLIC_KEY: &str = concat!(
    "-----BEGIN PUBLIC KEY-----\n",
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAr7m7XPsm43Dj7tloiPPK\n",
    "GZtadQrAH5M7h+7PZ8Rqt22JeTkyaEPUh7OIhGK1rySDqtN2zfZ6GZu7sASQPRvf\n",
    "cZLNNFR9FXJrHLeF2fdAAhaIrnxJNVEc4PTqSPe/Y+/niArp6DboI7IXkMXzPHc5\n",
    "7j92XwsaVM4D6LCzNWMwLEiOLds3EmDDsAs9svj0qb+03q5J8SIu3mTRM3Eao9be\n",
    "fHGD1I63/64IRv7WBrDBLa9jm1Y1RtftfG9MlOyq/cldQsbcgHLh0HyCN4LLYhke\n",
    "ONlw+t7UMsRYtVudnE3tJHfTkYyx056A8AZVco5zNzLJWmNMsRN4AYg8VRUCjc07\n",
    "SQIDAQAB\n",
    "-----END PUBLIC KEY-----\n",
);

const EMAIL: &str = "gateway@my-project.iam.gserviceaccount.com";
const TOKEN: &str = "ya29.c.e2e-token";
const MODEL_PATH: &str = "/v1/projects/my-project/locations/us-central1/publishers/google/models/gemini-2.5-flash";

/// One request the stand-in got: path (with query), `Authorization` and body.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    authorization: Option<String>,
    body: Bytes,
}

/// The answer for one request, as Google's endpoints give it.
fn answer(addr: SocketAddr, seen: &Seen) -> (StatusCode, &'static str, String) {
    if seen.path == "/token" {
        let query = format!("http://form/?{}", String::from_utf8_lossy(&seen.body));
        let form: Vec<(String, String)> =
            reqwest::Url::parse(&query).map(|url| url.query_pairs().into_owned().collect()).unwrap_or_default();
        let field = |name: &str| form.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[format!("http://{addr}/token")]);
        validation.set_issuer(&[EMAIL]);
        let key = DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).expect("public key");
        let valid = field("grant_type") == Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
            && field("assertion").is_some_and(|jwt| jsonwebtoken::decode::<Value>(jwt, &key, &validation).is_ok());
        return if valid {
            let token = json!({"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"});
            (StatusCode::OK, "application/json", token.to_string())
        } else {
            let refused = json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."});
            (StatusCode::BAD_REQUEST, "application/json", refused.to_string())
        };
    }
    if seen.authorization.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        let error = json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.",
            "status": "UNAUTHENTICATED"}});
        return (StatusCode::UNAUTHORIZED, "application/json", error.to_string());
    }
    let usage = json!({"promptTokenCount": 9, "candidatesTokenCount": 4, "totalTokenCount": 13});
    match seen.path.strip_prefix(MODEL_PATH) {
        Some(":generateContent") => {
            let body = json!({
                "candidates": [{"content": {"role": "model", "parts": [{"text": "Hello from Vertex."}]},
                    "finishReason": "STOP", "index": 0}],
                "usageMetadata": usage,
                "modelVersion": "gemini-2.5-flash-001",
                "responseId": "vertex-response-1"
            });
            (StatusCode::OK, "application/json", body.to_string())
        }
        Some(":streamGenerateContent?alt=sse") => {
            let first = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hello"}]}, "index": 0}],
                "modelVersion": "gemini-2.5-flash-001", "responseId": "vertex-stream-1"});
            let last = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": " from Vertex."}]},
                "finishReason": "STOP", "index": 0}], "usageMetadata": usage,
                "modelVersion": "gemini-2.5-flash-001", "responseId": "vertex-stream-1"});
            (StatusCode::OK, "text/event-stream", format!("data: {first}\r\n\r\ndata: {last}\r\n\r\n"))
        }
        Some(":predict") => {
            let body = json!({"predictions": [
                {"embeddings": {"statistics": {"truncated": false, "token_count": 3}, "values": [0.25, -0.5]}},
                {"embeddings": {"statistics": {"truncated": false, "token_count": 2}, "values": [0.75, 0.125]}}
            ], "metadata": {"billableCharacterCount": 21}});
            (StatusCode::OK, "application/json", body.to_string())
        }
        _ => {
            let error = json!({"error": {"code": 404, "message": "Not found.", "status": "NOT_FOUND"}});
            (StatusCode::NOT_FOUND, "application/json", error.to_string())
        }
    }
}

/// The stand-in for Google; stops when dropped.
struct FakeGoogle {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeGoogle {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let path = request.uri().path_and_query().map(ToString::to_string).unwrap_or_default();
                            let authorization = request
                                .headers()
                                .get(http::header::AUTHORIZATION)
                                .and_then(|value| value.to_str().ok())
                                .map(str::to_owned);
                            let body =
                                request.into_body().collect().await.map(|body| body.to_bytes()).unwrap_or_default();
                            let seen = Seen { path, authorization, body };
                            let (status, content_type, body) = answer(addr, &seen);
                            log.lock().expect("lock").push(seen);
                            let response = http::Response::builder()
                                .status(status)
                                .header(http::header::CONTENT_TYPE, content_type)
                                .body(Full::new(Bytes::from(body)))
                                .expect("response");
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for FakeGoogle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn serves_vertex_ai_with_a_service_account_s_token() {
    let google = FakeGoogle::start().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let key_file = dir.path().join("vertex-key.json");
    let key = json!({
        "type": "service_account",
        "project_id": "my-project",
        "private_key_id": "e2e-key-1",
        "private_key": PRIVATE_KEY,
        "client_email": EMAIL,
        "token_uri": format!("http://{}/token", google.addr),
    });
    std::fs::write(&key_file, key.to_string()).expect("write the key file");
    let gateway = start_gateway(&with_listener(&format!(
        "upstreams:
  - id: vertex
    endpoints: [{addr}]
routes:
  - id: ai
    paths: [/v1/chat/completions, /v1/embeddings]
    policies:
      - ai_proxy:
          models:
            - name: gemini
              targets:
                - provider: vertex_ai
                  upstream: vertex
                  model: gemini-2.5-flash
                  vertex: {{project: my-project, location: us-central1, service_account_file: '{file}'}}
",
        addr = google.addr,
        file = key_file.display()
    )));
    let client = TestClient::default();
    let post = |path: &'static str, body: Value| {
        let client = &client;
        let url = gateway.url(path);
        async move { client.request(Method::POST, &url, &[("content-type", "application/json")], body.to_string()).await }
    };
    let chat = |stream: bool| {
        json!({"model": "gemini", "stream": stream, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]})
    };

    for _ in 0..2 {
        let response = post("/v1/chat/completions", chat(false)).await;
        assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
        let completion = response.json();
        assert_eq!(completion["id"], "vertex-response-1");
        assert_eq!(completion["model"], "gemini-2.5-flash-001");
        assert_eq!(
            completion["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": "Hello from Vertex."},
                "logprobs": null, "finish_reason": "stop"}])
        );
        assert_eq!(completion["usage"], json!({"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}));
    }

    let response = post("/v1/chat/completions", chat(true)).await;
    assert_eq!(response.status, StatusCode::OK);
    let text = String::from_utf8(response.body.to_vec()).expect("utf-8");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let chunks = sse_chunks(&text);
    let content = delta_content(&chunks);
    assert_eq!(content, "Hello from Vertex.");
    assert!(chunks.iter().any(|chunk| chunk["choices"][0]["finish_reason"] == "stop"), "{text}");

    let response = post("/v1/embeddings", json!({"model": "gemini", "input": ["first", "second"]})).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    let list = response.json();
    assert_eq!(list["data"][1]["embedding"], json!([0.75, 0.125]));
    assert_eq!(list["usage"], json!({"prompt_tokens": 5, "total_tokens": 5}));

    let seen = google.seen();
    let paths: Vec<String> = seen.iter().map(|request| request.path.clone()).collect();
    assert_eq!(
        paths,
        [
            "/token".to_owned(),
            format!("{MODEL_PATH}:generateContent"),
            format!("{MODEL_PATH}:generateContent"),
            format!("{MODEL_PATH}:streamGenerateContent?alt=sse"),
            format!("{MODEL_PATH}:predict"),
        ],
        "one token for every request while it is valid"
    );
    assert!(seen[1..].iter().all(|request| request.authorization.as_deref() == Some("Bearer ya29.c.e2e-token")));
    let sent: Value = serde_json::from_slice(&seen[1].body).expect("JSON");
    assert_eq!(
        sent,
        json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
            "systemInstruction": {"parts": [{"text": "Be brief."}]}})
    );
    let sent: Value = serde_json::from_slice(&seen[4].body).expect("JSON");
    assert_eq!(sent, json!({"instances": [{"content": "first"}, {"content": "second"}]}));
}
