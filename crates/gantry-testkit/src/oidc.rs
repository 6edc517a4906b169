//! A real OpenID provider for tests: the `oidc-provider` npm package run by `node` from
//! `assets/oidc-provider.mjs`, on a port the system picks, killed on drop.
//!
//! `scripts/test.sh` installs the package (pinned) into
//! `target/test-tools/oidc-provider/node_modules`; `GANTRY_TEST_TOOLS` names another directory
//! holding `oidc-provider/node_modules`. The provider knows one
//! confidential client ([`OidcProvider::CLIENT_ID`]) that may use client credentials (opaque
//! access tokens, or JWTs for [`OidcProvider::RESOURCE`]), the authorization code flow with PKCE
//! through the provider's development login pages, introspection and revocation.

use std::path::PathBuf;
use std::process::Command;

use crate::node::{test_tools, NodeProcess};

/// The version of `oidc-provider` `scripts/test.sh` installs.
pub const OIDC_PROVIDER_VERSION: &str = "9.13.3";

/// A running OpenID provider; killed on drop.
pub struct OidcProvider {
    process: NodeProcess,
    http: reqwest::Client,
}

impl OidcProvider {
    /// The test client's id.
    pub const CLIENT_ID: &'static str = "gantry";
    /// The test client's secret (`client_secret_basic` or `client_secret_post`).
    pub const CLIENT_SECRET: &'static str = "gantry-test-secret";
    /// The resource indicator whose access tokens are signed JWTs with this audience.
    pub const RESOURCE: &'static str = "urn:gantry:test-api";
    /// The redirect path registered for the client, on any loopback host and port.
    pub const REDIRECT_PATH: &'static str = "/oidc/callback";

    /// Starts the provider and waits (up to the test deadline) until it listens.
    pub fn start() -> Self {
        let modules = node_modules();
        assert!(
            modules.join("oidc-provider").join("package.json").is_file(),
            "oidc-provider is not installed in {}: run scripts/test.sh, or \
             `npm install --prefix target/test-tools/oidc-provider oidc-provider@{OIDC_PROVIDER_VERSION}`",
            modules.display()
        );
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets").join("oidc-provider.mjs");
        let mut command = Command::new("node");
        command
            .arg(&script)
            .env("GANTRY_TEST_NODE_MODULES", &modules)
            .env("OIDC_CLIENT_ID", Self::CLIENT_ID)
            .env("OIDC_CLIENT_SECRET", Self::CLIENT_SECRET)
            .env("OIDC_RESOURCE", Self::RESOURCE)
            .env("NODE_ENV", "test");
        let process = NodeProcess::start("the OpenID provider", command, |line| {
            line.strip_prefix("listening ")?.trim().parse().ok()
        });
        Self { process, http: reqwest::Client::new() }
    }

    /// The issuer, `http://127.0.0.1:<port>`.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    /// The provider's port.
    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// The token introspection endpoint (RFC 7662).
    pub fn introspection_endpoint(&self) -> String {
        format!("{}/token/introspection", self.issuer())
    }

    /// What the provider printed so far.
    pub fn logs(&self) -> Vec<String> {
        self.process.logs()
    }

    /// An access token from the client credentials grant with `scope`: opaque without
    /// `resource`, a JWT for `resource` ([`Self::RESOURCE`]).
    pub async fn client_credentials_token(&self, scope: &str, resource: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials"), ("scope", scope)];
        if let Some(resource) = resource {
            form.push(("resource", resource));
        }
        let response = self
            .http
            .post(format!("{}/token", self.issuer()))
            .basic_auth(Self::CLIENT_ID, Some(Self::CLIENT_SECRET))
            .form(&form)
            .send()
            .await
            .expect("token request");
        let status = response.status();
        let body: serde_json::Value = response.json().await.expect("token response is JSON");
        assert!(status.is_success(), "token request failed with {status}: {body}");
        body["access_token"].as_str().expect("access_token in the token response").to_owned()
    }

    /// Revokes `token` (RFC 7009); introspection then reports it inactive.
    pub async fn revoke(&self, token: &str) {
        let response = self
            .http
            .post(format!("{}/token/revocation", self.issuer()))
            .basic_auth(Self::CLIENT_ID, Some(Self::CLIENT_SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .expect("revocation request");
        assert!(response.status().is_success(), "revocation failed with {}", response.status());
    }

    /// Kills the provider and waits until it has exited, so its port refuses connections.
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

/// `target/test-tools/oidc-provider/node_modules` of the workspace, or the same below
/// `$GANTRY_TEST_TOOLS`.
fn node_modules() -> PathBuf {
    test_tools().join("oidc-provider").join("node_modules")
}
