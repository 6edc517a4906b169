//! A real OpenID provider for tests: the `oidc-provider` npm package run by `node` from
//! `assets/oidc-provider.mjs`, on a port the system picks, killed on drop.
//!
//! `scripts/test.sh` installs the package (pinned) into
//! `target/test-tools/oidc-provider/node_modules`; `GANTRY_TEST_TOOLS` names another directory
//! holding `oidc-provider/node_modules`. The provider knows one
//! confidential client ([`OidcProvider::CLIENT_ID`]) that may use client credentials (opaque
//! access tokens, or JWTs for [`OidcProvider::RESOURCE`]), the authorization code flow with PKCE
//! through the provider's development login pages, introspection and revocation.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// The version of `oidc-provider` `scripts/test.sh` installs.
pub const OIDC_PROVIDER_VERSION: &str = "9.13.3";

/// A running OpenID provider; killed on drop.
pub struct OidcProvider {
    child: Option<Child>,
    port: u16,
    logs: Arc<Mutex<Vec<String>>>,
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
        let mut child = Command::new("node")
            .arg(&script)
            .env("GANTRY_TEST_NODE_MODULES", &modules)
            .env("OIDC_CLIENT_ID", Self::CLIENT_ID)
            .env("OIDC_CLIENT_SECRET", Self::CLIENT_SECRET)
            .env("OIDC_RESOURCE", Self::RESOURCE)
            .env("NODE_ENV", "test")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start node (is Node.js installed?)");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("logs lock").push(line);
            }
        });
        let stdout = child.stdout.take().expect("stdout is piped");
        let (ports, port) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            let found = lines.by_ref().find_map(|line| line.strip_prefix("listening ")?.trim().parse::<u16>().ok());
            let _ = ports.send(found);
            // Keep draining so the provider never blocks on a full pipe.
            lines.for_each(drop);
        });
        let mut provider = Self { child: Some(child), port: 0, logs, http: reqwest::Client::new() };
        match port.recv_timeout(crate::deadline()) {
            Ok(Some(port)) => provider.port = port,
            _ => panic!("the OpenID provider did not start:\n{}", provider.logs().join("\n")),
        }
        provider
    }

    /// The issuer, `http://127.0.0.1:<port>`.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The provider's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The token introspection endpoint (RFC 7662).
    pub fn introspection_endpoint(&self) -> String {
        format!("{}/token/introspection", self.issuer())
    }

    /// What the provider wrote to stderr so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("logs lock").clone()
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
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `target/test-tools/oidc-provider/node_modules` of the workspace, or the same below
/// `$GANTRY_TEST_TOOLS`.
fn node_modules() -> PathBuf {
    let tools = std::env::var_os("GANTRY_TEST_TOOLS").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("..").join("target").join("test-tools")
    });
    tools.join("oidc-provider").join("node_modules")
}
