//! A real `redis-server` for tests of shared counters.
//!
//! [`RedisServer::start`] runs `redis-server` as a child process on a free loopback port, with
//! persistence off and its files in a temporary directory, waits until it answers `PING`
//! (with a deadline), and kills it on drop. [`RedisServer::stop`] and [`RedisServer::restart`]
//! let a test take Redis away and bring it back on the same port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl RedisServer {
    /// Starts a server on a free loopback port.
    pub fn start() -> Self {
        let mut dir = tempfile::tempdir().expect("temp dir for redis-server");
        // redis-server binds the port itself; one found free just before can be taken
        // meanwhile, so a start that fails is retried on a fresh port until the deadline.
        let until = Instant::now() + crate::deadline();
        loop {
            let addr = free_port();
            let mut server = Self { child: None, dir, addr };
            match server.launch(until) {
                Ok(()) => return server,
                Err(output) => {
                    assert!(Instant::now() < until, "redis-server did not start: {output}");
                    dir = server.take_dir();
                }
            }
        }
    }

    fn launch(&mut self, until: Instant) -> Result<(), String> {
        let child = Command::new(binary())
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.addr.port().to_string())
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            // A log file rather than a pipe nobody drains, which would stall the server once full.
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (scripts/test.sh installs it)");
        self.child = Some(child);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let output = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                    self.child = None;
                    return Err(format!("redis-server exited with {status}: {output}"));
                }
            }
            if ping(self.addr) {
                return Ok(());
            }
            assert!(Instant::now() < until, "redis-server did not answer PING on {} in time", self.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        self.stop();
        let placeholder = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, placeholder)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Kills the server and waits for it to exit; its port then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.stop();
        let until = Instant::now() + crate::deadline();
        loop {
            match self.launch(until) {
                Ok(()) => return,
                // The old socket may linger a moment; the port is ours, so try again.
                Err(output) => assert!(Instant::now() < until, "redis-server did not restart: {output}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends one command (`["GET", "key"]`) and gives the raw RESP answer, for tests that
    /// look at what the gateway stored.
    pub fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(self.addr).expect("connect to redis-server");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).expect("send to redis-server");
        let mut answer = vec![0; 64 * 1024];
        let read = stream.read(&mut answer).expect("read from redis-server");
        String::from_utf8_lossy(&answer[..read]).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a Redis server answers `PING` on `addr`.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut answer = [0; 7];
    stream.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

/// `redis-server` from `PATH`, or where Debian installs it.
fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file());
    on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/redis-server"))
}
