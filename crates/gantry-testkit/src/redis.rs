//! A real `redis-server` for tests of shared counters.
//!
//! [`RedisServer::start`] runs `redis-server` as a child process on a free loopback port, with
//! persistence off and its files in a temporary directory, waits until it answers `PING`
//! (with a deadline), and kills it on drop. [`RedisServer::stop`] and [`RedisServer::restart`]
//! let a test take Redis away and bring it back on the same port. [`RedisCluster::start`]
//! runs several servers in cluster mode and joins them with `redis-cli --cluster create`.

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
        self.launch_with(until, &[])
    }

    fn launch_with(&mut self, until: Instant, extra: &[&str]) -> Result<(), String> {
        let child = Command::new(binary())
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.addr.port().to_string())
            .args(extra)
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

/// A Redis Cluster of servers on loopback ports, each owning part of the slots (no replicas);
/// every server is killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `size` (at least 3) servers in cluster mode and joins them into one cluster,
    /// waiting until every node reports `cluster_state:ok`.
    pub fn start(size: usize) -> Self {
        assert!(size >= 3, "a Redis Cluster needs at least 3 primaries");
        let until = Instant::now() + crate::deadline();
        let mut nodes = Vec::with_capacity(size);
        while nodes.len() < size {
            // Each node also listens on its port + 10000 for the cluster bus.
            let addr = free_port_with_bus();
            let mut node = RedisServer { child: None, dir: tempfile::tempdir().expect("temp dir"), addr };
            let config = node.dir.path().join("nodes.conf");
            let config = config.to_str().expect("temp paths are UTF-8").to_owned();
            let extra =
                ["--cluster-enabled", "yes", "--cluster-config-file", &config, "--cluster-node-timeout", "2000"];
            match node.launch_with(until, &extra) {
                Ok(()) => nodes.push(node),
                Err(output) => assert!(Instant::now() < until, "a cluster node did not start: {output}"),
            }
        }
        let addresses: Vec<String> = nodes.iter().map(|node| node.addr.to_string()).collect();
        let created = Command::new(redis_cli())
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create (redis-tools comes with redis-server)");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = Self { nodes };
        loop {
            if cluster.nodes.iter().all(|node| node.command(&["CLUSTER", "INFO"]).contains("cluster_state:ok")) {
                return cluster;
            }
            assert!(Instant::now() < until, "the cluster did not reach cluster_state:ok in time");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://` URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, to send each one a command.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}

fn free_port_with_bus() -> SocketAddr {
    loop {
        let addr = free_port();
        if addr.port() < 55_000 && TcpListener::bind(("127.0.0.1", addr.port() + 10_000)).is_ok() {
            return addr;
        }
    }
}

/// `redis-cli`, next to `redis-server`.
fn redis_cli() -> PathBuf {
    binary().with_file_name("redis-cli")
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
