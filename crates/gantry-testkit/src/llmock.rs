//! A real fake of LLM providers for tests: llmock (PyPI), which serves OpenAI's Chat
//! Completions at `/v1`, Anthropic's Messages API at `/anthropic/v1` (and Gemini, Cohere...),
//! streams included, with injected errors (a 429 with `Retry-After`, 500, 503), a delay
//! between stream chunks, and a journal of the requests it received. Run on a port the system
//! picks (`python/llmock_service.py`), killed on drop.
//!
//! `scripts/test.sh` installs llmock (pinned) into a virtual environment in
//! `target/test-tools/llmock`; `GANTRY_TEST_TOOLS` names another directory holding it.

use std::path::PathBuf;
use std::process::Command;

use crate::node::{test_tools, NodeProcess};

/// The version of llmock `scripts/test.sh` installs.
pub const LLMOCK_VERSION: &str = "0.2.2";

fn python() -> PathBuf {
    let python = test_tools().join("llmock").join("bin").join("python");
    assert!(
        python.is_file(),
        "llmock is not installed in {}: run scripts/test.sh, which installs llmock {LLMOCK_VERSION}",
        python.display()
    );
    python
}

/// A running llmock; killed on drop.
pub struct Llmock {
    process: NodeProcess,
}

impl Llmock {
    /// Starts llmock with its `LLMOCK_*` settings (`("LLMOCK_ERROR_RATE_429", "1.0")`,
    /// `("LLMOCK_STREAM_CHUNK_DELAY_MS", "300")`, `("LLMOCK_RESPONSE_STYLE", "echo")`) and waits
    /// (up to the test deadline) until it listens.
    pub fn start(settings: &[(&str, &str)]) -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python").join("llmock_service.py");
        let mut command = Command::new(python());
        command.arg(script).env("PYTHONDONTWRITEBYTECODE", "1");
        for (name, value) in settings {
            command.env(name, value);
        }
        let process =
            NodeProcess::start("llmock", command, |line| line.strip_prefix("listening ")?.trim().parse().ok());
        Self { process }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.process.port())
    }

    /// The requests llmock received, oldest first, each with its `path`, `status`, `stream`
    /// and the `body` it was sent.
    pub async fn requests(&self) -> Vec<serde_json::Value> {
        let url = format!("http://{}/_llmock/requests", self.addr());
        let journal: serde_json::Value =
            reqwest::get(url).await.expect("llmock's journal").json().await.expect("the journal is JSON");
        journal["requests"].as_array().cloned().unwrap_or_default()
    }

    /// What llmock printed so far.
    pub fn logs(&self) -> Vec<String> {
        self.process.logs()
    }
}
