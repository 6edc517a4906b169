//! The `gantry` binary as a child process, configured from YAML in a temporary directory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A running gateway process; killed on drop.
pub struct GatewayProcess {
    child: Child,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    listeners: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Starts `binary` with `yaml` written to `gantry.yaml` in a fresh directory, and waits
    /// until every listener (and the admin API, if configured) is up. Listener addresses should
    /// use port 0. Extra files for the config (certificates) can be placed with [`Self::dir`]
    /// by using [`Self::start_in`].
    pub fn start(binary: &Path, yaml: &str) -> Self {
        Self::start_in(binary, tempfile::tempdir().expect("temp dir"), "gantry.yaml", yaml, &[])
    }

    /// Like [`Self::start`] with a prepared directory, a config file name and extra arguments.
    pub fn start_in(binary: &Path, dir: tempfile::TempDir, file_name: &str, yaml: &str, args: &[&str]) -> Self {
        let config_path = dir.path().join(file_name);
        std::fs::write(&config_path, yaml).expect("write config");
        Self::spawn(binary, dir, config_path, args)
    }

    /// Starts `binary` on an existing config path (file or directory) inside `dir`.
    pub fn spawn(binary: &Path, dir: tempfile::TempDir, config_path: PathBuf, args: &[&str]) -> Self {
        let expected_listeners = count_listeners(&config_path);
        let expects_admin = mentions_admin(&config_path);
        let config = config_path.as_os_str().to_owned();
        let mut run_args: Vec<&std::ffi::OsStr> = vec!["--config".as_ref(), config.as_os_str()];
        run_args.extend(args.iter().map(std::ffi::OsStr::new));
        Self::launch(binary, dir, config_path.clone(), &run_args, expected_listeners, expects_admin)
    }

    /// Starts `binary` on its embedded default configuration (no `--config`), with `args`
    /// (such as `--listen 127.0.0.1:0`), and waits for its listener and admin API.
    pub fn start_embedded(binary: &Path, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().to_owned();
        let run_args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        Self::launch(binary, dir, config_path, &run_args, 1, true)
    }

    fn launch(
        binary: &Path,
        dir: tempfile::TempDir,
        config_path: PathBuf,
        run_args: &[&std::ffi::OsStr],
        expected_listeners: usize,
        expects_admin: bool,
    ) -> Self {
        let mut child = Command::new(binary)
            .arg("run")
            .args(run_args)
            .env_remove("GANTRY_CONFIG")
            .env("GANTRY_LOG", std::env::var("GANTRY_TEST_LOG").unwrap_or_else(|_| "info".to_owned()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gantry");
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("GANTRY_TEST_ECHO_LOGS").is_some() {
                    eprintln!("[gantry] {line}");
                }
                sink.lock().expect("logs lock").push(line);
            }
        });
        let mut gateway = Self { child, dir, config_path, listeners: Vec::new(), admin: None, logs };
        let until = Instant::now() + crate::deadline();
        loop {
            let lines = gateway.logs();
            gateway.listeners =
                lines.iter().filter(|l| l.contains("listener started")).filter_map(|l| field_addr(l)).collect();
            gateway.admin = lines.iter().find(|l| l.contains("admin API started")).and_then(|l| field_addr(l));
            if gateway.listeners.len() >= expected_listeners && (!expects_admin || gateway.admin.is_some()) {
                return gateway;
            }
            if let Ok(Some(status)) = gateway.child.try_wait() {
                panic!("gantry exited with {status} before it was ready; output:\n{}", lines.join("\n"));
            }
            assert!(Instant::now() < until, "gantry did not become ready; output:\n{}", lines.join("\n"));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Address of listener `index` (configuration order).
    pub fn addr(&self, index: usize) -> SocketAddr {
        self.listeners[index]
    }

    /// `http://<first listener><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listeners[0])
    }

    /// The admin API address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("the config has an admin listener")
    }

    /// The directory holding the configuration.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The configuration file (or directory) the gateway reads.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Every line the gateway wrote to stderr so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("logs lock").clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("send signal");
    }

    /// Sends SIGTERM and waits for the exit status, up to `within`.
    pub fn terminate(mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.signal(Signal::SIGTERM);
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `address=1.2.3.4:5` from a log line.
fn field_addr(line: &str) -> Option<SocketAddr> {
    let start = line.find("address=")? + "address=".len();
    line[start..].split_whitespace().next()?.parse().ok()
}

fn read_config_text(path: &Path) -> String {
    if path.is_dir() {
        let mut text = String::new();
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        text
    } else {
        std::fs::read_to_string(path).unwrap_or_default()
    }
}

fn count_listeners(path: &Path) -> usize {
    let text = read_config_text(path);
    let Some(start) = text.find("listeners:") else { return 1 };
    let section = &text[start..];
    // The list also ends at the next top-level key: an `address:` further down belongs to
    // something else, such as an upstream endpoint written `{address: ..., weight: 3}`.
    let next_top_level = section
        .match_indices('\n')
        .map(|(at, _)| at)
        .find(|&at| section[at + 1..].starts_with(|c: char| !c.is_whitespace() && c != '-' && c != '#'));
    let end = [section.find("\n  admin:"), section.find("\n  limits:"), next_top_level]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(section.len());
    section[..end].matches("address:").count().max(1)
}

fn mentions_admin(path: &Path) -> bool {
    read_config_text(path).contains("\n  admin:")
}
