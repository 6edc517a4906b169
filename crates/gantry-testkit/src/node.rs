//! A `node` program run as a test server (the npm packages `scripts/test.sh` installs, such as
//! `oidc-provider` and `saml-idp`): started with its output piped, its port read from what it
//! prints (within the test deadline), its output kept for failure messages, killed on drop.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// The directory `scripts/test.sh` installs test tools into: `$GANTRY_TEST_TOOLS`, or
/// `target/test-tools` of the workspace.
pub(crate) fn test_tools() -> PathBuf {
    std::env::var_os("GANTRY_TEST_TOOLS").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("..").join("target").join("test-tools")
    })
}

/// A running `node` process and the port it listens on; killed on drop.
pub(crate) struct NodeProcess {
    child: Option<Child>,
    port: u16,
    logs: Arc<Mutex<Vec<String>>>,
}

impl NodeProcess {
    /// Runs `command` (a `node` command with its arguments and environment) and waits until
    /// `port_in`, shown each line the program prints in turn, finds its port. Panics, with
    /// what the program printed, when `what` does not start within the test deadline.
    pub(crate) fn start(
        what: &str,
        mut command: Command,
        mut port_in: impl FnMut(&str) -> Option<u16> + Send + 'static,
    ) -> Self {
        let mut child = command
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
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut found = false;
            // Reads to the end, so the program never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !found {
                    if let Some(port) = port_in(&line) {
                        found = true;
                        let _ = ports.send(port);
                    }
                }
                sink.lock().expect("logs lock").push(line);
            }
        });
        let mut process = Self { child: Some(child), port: 0, logs };
        match port.recv_timeout(crate::deadline()) {
            Ok(port) => process.port = port,
            Err(_) => panic!("{what} did not start:\n{}", process.logs().join("\n")),
        }
        process
    }

    /// The port the program listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// What the program printed so far, both streams.
    pub(crate) fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("logs lock").clone()
    }

    /// Kills the program and waits until it has exited, so its port refuses connections.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn reads_the_port_from_what_the_program_prints_keeps_its_output_and_kills_it_on_drop() {
        let mut command = Command::new("node");
        command.args([
            "-e",
            "console.error('warming up'); console.log('starting'); console.log('listening 4321'); \
             setInterval(() => {}, 1000);",
        ]);
        let process =
            NodeProcess::start("a test program", command, |line| line.strip_prefix("listening ")?.trim().parse().ok());
        assert_eq!(process.port(), 4321);
        let until = Instant::now() + crate::deadline();
        let wanted = ["warming up", "starting", "listening 4321"].map(str::to_owned);
        while !wanted.iter().all(|line| process.logs().contains(line)) {
            assert!(Instant::now() < until, "output not kept: {:?}", process.logs());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let pid = process.child.as_ref().map(Child::id).expect("running");
        drop(process);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the program outlived its guard");
    }

    #[test]
    #[should_panic(expected = "a silent program did not start:\nno port here")]
    fn panics_with_the_programs_output_when_it_ends_without_a_port() {
        let mut command = Command::new("node");
        command.args(["-e", "console.log('no port here')"]);
        NodeProcess::start("a silent program", command, |_| None);
    }
}
