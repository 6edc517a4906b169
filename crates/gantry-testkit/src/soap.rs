//! A real SOAP service for tests: a small calculator written with the Python library spyne
//! (`python/spyne_service.py`), serving SOAP 1.1 at `/soap11` and SOAP 1.2 at `/soap12`, each
//! with its WSDL at `?wsdl`, on a port the system picks, killed on drop. And zeep, a Python
//! SOAP client, to call a service the way real clients do ([`zeep_call`]).
//!
//! `scripts/test.sh` installs spyne, lxml and zeep (pinned) into a virtual environment in
//! `target/test-tools/spyne`; `GANTRY_TEST_TOOLS` names another directory holding it.

use std::path::PathBuf;
use std::process::Command;

use crate::node::{test_tools, NodeProcess};

/// The version of spyne `scripts/test.sh` installs.
pub const SPYNE_VERSION: &str = "2.14.0";

/// The namespace of the calculator's elements.
pub const CALCULATOR_NAMESPACE: &str = "urn:gantry:calculator";

/// The Python of the test tools' virtual environment.
pub fn python() -> PathBuf {
    let python = test_tools().join("spyne").join("bin").join("python");
    assert!(
        python.is_file(),
        "the spyne test environment is not installed in {}: run scripts/test.sh, which installs spyne {SPYNE_VERSION} \
         with lxml and zeep",
        python.display()
    );
    python
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python").join(name)
}

/// A running spyne calculator (operations `Add(a, b)`, `Divide(dividend, divisor)` with a
/// `Client.DivisionByZero` fault for a zero divisor, `SayHello(name, times)` answering a list
/// and `Crash()` answering a `Server` fault); killed on drop.
pub struct SpyneService {
    process: NodeProcess,
}

impl SpyneService {
    /// Starts the service and waits (up to the test deadline) until it listens.
    pub fn start() -> Self {
        let mut command = Command::new(python());
        command.arg(script("spyne_service.py")).env("PYTHONDONTWRITEBYTECODE", "1");
        let process = NodeProcess::start("spyne", command, |line| line.strip_prefix("listening ")?.trim().parse().ok());
        Self { process }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.process.port())
    }

    /// The SOAP 1.1 endpoint's URL.
    pub fn soap11_url(&self) -> String {
        format!("http://{}/soap11", self.addr())
    }

    /// The SOAP 1.2 endpoint's URL.
    pub fn soap12_url(&self) -> String {
        format!("http://{}/soap12", self.addr())
    }

    /// The WSDL spyne serves for the endpoint at `url`.
    pub async fn wsdl(&self, url: &str) -> String {
        let response = reqwest::get(format!("{url}?wsdl")).await.expect("fetch the WSDL");
        assert!(response.status().is_success(), "?wsdl answered {}", response.status());
        response.text().await.expect("WSDL text")
    }

    /// What the service printed so far (a line per request, and any traceback).
    pub fn logs(&self) -> Vec<String> {
        self.process.logs()
    }
}

/// Calls `operation` with `arguments` (a JSON object) through zeep, reading the service's
/// description from `wsdl_url` and sending to `address` with the binding `binding` (a
/// `{namespace}name`). Gives `{"result": ...}` or `{"fault": {"code": ..., "message": ...}}`.
pub async fn zeep_call(
    wsdl_url: &str,
    binding: &str,
    address: &str,
    operation: &str,
    arguments: &serde_json::Value,
) -> serde_json::Value {
    let mut command = Command::new(python());
    command
        .arg(script("zeep_client.py"))
        .args([wsdl_url, binding, address, operation, &arguments.to_string()])
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let output = tokio::task::spawn_blocking(move || command.output()).await.expect("zeep task").expect("run zeep");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "zeep failed:\n{printed}\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(printed.trim()).unwrap_or_else(|err| panic!("zeep printed no JSON ({err}):\n{printed}"))
}
