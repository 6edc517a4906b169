//! Calls the identity policies make to other servers (key sets, an OpenID provider's metadata
//! and token endpoint, a token introspection endpoint): how the HTTP client is set up, how a
//! client authenticates to an authorization server, how an answer's body is read within a size
//! limit, and how a failure is described without its URL (which may carry credentials in its
//! user-info or query).

use std::time::Duration;

use gantry_config::Secret;
use http::header::ACCEPT;

use super::oauth2_introspection::ClientAuth;

/// A client builder with the settings every call shares: `timeout` for connecting and for
/// the whole call, and Gantry's `User-Agent`.
pub(crate) fn client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
}

/// The gateway's client id and secret at an authorization server, and how it presents them.
#[derive(Debug)]
pub(crate) struct ClientCredentials {
    pub(crate) id: String,
    pub(crate) secret: Secret<String>,
    pub(crate) auth: ClientAuth,
}

impl ClientCredentials {
    /// `POST url` with `form`, authenticated as this client (RFC 6749 §2.3.1), asking for JSON.
    pub(crate) fn post_form<'a>(
        &'a self,
        http: &reqwest::Client,
        url: reqwest::Url,
        mut form: Vec<(&'a str, &'a str)>,
    ) -> reqwest::RequestBuilder {
        let mut call = http.post(url).header(ACCEPT, "application/json");
        match self.auth {
            // RFC 6749 §2.3.1: id and secret are form-encoded before they are joined.
            ClientAuth::ClientSecretBasic => {
                call = call.basic_auth(form_encoded(&self.id), Some(form_encoded(self.secret.expose())));
            }
            ClientAuth::ClientSecretPost => {
                form.push(("client_id", &self.id));
                form.push(("client_secret", self.secret.expose()));
            }
        }
        call.form(&form)
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encoded(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Why an answer's body was not read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// It is larger than the limit (by its `Content-Length`, or once that much arrived).
    TooLarge,
    /// The connection failed or timed out while reading.
    Failed(reqwest::Error),
}

/// The body of `response`, refused as soon as it is known to exceed `limit` bytes, so a
/// server cannot make the gateway hold more than that.
pub(crate) async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|length| length > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Failed)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `GET url` asking for `accept`: the body of a success answer of at most `limit` bytes, or
/// why there is none, as a log line may say it.
pub(crate) async fn get_document(
    client: &reqwest::Client,
    url: &reqwest::Url,
    accept: &'static str,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let response = client.get(url.clone()).header(ACCEPT, accept).send().await.map_err(|err| describe(&err))?;
    if !response.status().is_success() {
        return Err(format!("the server answered {}", response.status()));
    }
    read_body(response, limit).await.map_err(|err| match err {
        BodyError::TooLarge => format!("the answer is larger than {limit} bytes"),
        BodyError::Failed(err) => describe(&err),
    })
}

/// A reqwest error without its URL: what went wrong, and the underlying cause.
pub(crate) fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    match std::error::Error::source(error) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests;
