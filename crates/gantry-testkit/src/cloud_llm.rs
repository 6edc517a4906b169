//! Fakes of Azure OpenAI and Amazon Bedrock that follow their wire formats
//! (`python/cloud_llm_service.py`): Azure's deployment and v1 paths with `api-version` and
//! `api-key` checked; Bedrock's Converse, ConverseStream (AWS event-stream frames, a delay
//! between events) and Titan embeddings, each request's AWS Signature Version 4 checked by
//! botocore's own signer; a 429 ThrottlingException and Azure's content filter error on cue.
//! Run on a port the system picks, killed on drop.
//!
//! `scripts/test.sh` installs botocore (pinned) into a virtual environment in
//! `target/test-tools/cloud-llm`; `GANTRY_TEST_TOOLS` names another directory holding it.

use std::path::PathBuf;
use std::process::Command;

use crate::node::{test_tools, NodeProcess};

/// The version of botocore `scripts/test.sh` installs.
pub const BOTOCORE_VERSION: &str = "1.44.5";

fn python() -> PathBuf {
    let python = test_tools().join("cloud-llm").join("bin").join("python");
    assert!(
        python.is_file(),
        "the cloud LLM fakes' environment is not installed in {}: run scripts/test.sh, which installs botocore {BOTOCORE_VERSION}",
        python.display()
    );
    python
}

/// A running fake; killed on drop.
pub struct CloudLlm {
    process: NodeProcess,
}

impl CloudLlm {
    /// Starts the fakes with their `FAKE_*` settings (`("FAKE_AZURE_KEY", "k")`,
    /// `("FAKE_AWS_REGION", "eu-west-3")`, `("FAKE_STREAM_DELAY_MS", "300")`, ...) and waits
    /// (up to the test deadline) until they listen.
    pub fn start(settings: &[(&str, &str)]) -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python").join("cloud_llm_service.py");
        let mut command = Command::new(python());
        command.arg(script).env("PYTHONDONTWRITEBYTECODE", "1");
        for (name, value) in settings {
            command.env(name, value);
        }
        let process =
            NodeProcess::start("cloud-llm", command, |line| line.strip_prefix("listening ")?.trim().parse().ok());
        Self { process }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.process.port())
    }

    /// The requests received, oldest first, each with its `path`, `query`, `headers`, `body`
    /// and, for Bedrock, `signature_ok`.
    pub async fn requests(&self) -> Vec<serde_json::Value> {
        let url = format!("http://{}/_fake/requests", self.addr());
        let journal: serde_json::Value =
            reqwest::get(url).await.expect("the fake's journal").json().await.expect("the journal is JSON");
        journal["requests"].as_array().cloned().unwrap_or_default()
    }

    /// What the fake printed so far (a refused signature says why).
    pub fn logs(&self) -> Vec<String> {
        self.process.logs()
    }
}
