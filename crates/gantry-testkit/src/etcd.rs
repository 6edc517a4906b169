//! A real `etcd` server for tests of cluster mode.
//!
//! [`EtcdServer::start`] runs Debian's `etcd` (package `etcd-server`) as a single-member
//! cluster on free loopback ports with its data in a temporary directory, waits until
//! `GET /health` says so (with a deadline), and kills it on drop. [`EtcdServer::stop`] and
//! [`EtcdServer::restart`] take it away and bring it back on the same ports with the same
//! data, as a crashed and restarted member would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running single-member etcd; killed on drop.
pub struct EtcdServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client: SocketAddr,
    peer: SocketAddr,
}

impl EtcdServer {
    /// Starts a member on free loopback ports.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for etcd");
        let until = Instant::now() + crate::deadline();
        let mut server = Self { child: None, dir, client: free_port(), peer: free_port() };
        loop {
            match server.launch(until) {
                Ok(()) => return server,
                Err(output) => {
                    // A port found free can be taken before etcd binds it: new ports, new data.
                    assert!(Instant::now() < until, "etcd did not start: {output}");
                    server.stop();
                    let _ = std::fs::remove_dir_all(server.data_dir());
                    server.client = free_port();
                    server.peer = free_port();
                }
            }
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn launch(&mut self, until: Instant) -> Result<(), String> {
        let log = self.dir.path().join("etcd.log");
        let log_file = std::fs::File::create(&log).expect("etcd log file");
        let client = format!("http://{}", self.client);
        let peer = format!("http://{}", self.peer);
        let child = Command::new(binary())
            .arg("--name")
            .arg("test")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            // Short elections: a single member becomes leader at once after a restart.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start etcd (scripts/test.sh installs the etcd-server package)");
        self.child = Some(child);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "etcd exited with {status}: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    ));
                }
            }
            if healthy(self.client) {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(format!(
                    "no healthy answer on {}: {}",
                    self.client,
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:<port>`, the client URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.client)
    }

    /// Kills the member and waits for it to exit; its port then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the member again on the same ports with the data it had.
    pub fn restart(&mut self) {
        self.stop();
        let until = Instant::now() + crate::deadline();
        loop {
            match self.launch(until) {
                Ok(()) => return,
                Err(output) => assert!(Instant::now() < until, "etcd did not restart: {output}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Calls etcd's JSON gateway (`/v3/kv/range`, `/v3/kv/put`, ...) with `body`, for tests
    /// that look at or write what is stored around the gateway.
    pub fn call(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let body = body.to_string();
        let answer = http_post(self.client, path, &body).unwrap_or_else(|err| panic!("etcd {path}: {err}"));
        serde_json::from_str(&answer).unwrap_or_else(|err| panic!("etcd {path} answered {answer}: {err}"))
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn binary() -> PathBuf {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    listener.local_addr().expect("probe port address")
}

fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}

fn http_post(addr: SocketAddr, path: &str, body: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|err| err.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|err| err.to_string())?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(|err| err.to_string())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|err| err.to_string())?;
    let (_, body) = answer.split_once("\r\n\r\n").ok_or("no HTTP body")?;
    // The gateway answers with a length, or chunked for streams; one JSON document either way.
    let start = body.find('{').ok_or("no JSON in the answer")?;
    let end = body.rfind('}').ok_or("no JSON in the answer")?;
    Ok(body[start..=end].to_owned())
}
