//! Stopping and sharing through the running binary: SIGTERM drains in-flight requests, closes
//! the listener and exits within `shutdown_timeout`; SO_REUSEPORT lets two processes serve one port.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use gantry_testkit::client::TestClient;
use gantry_testkit::{eventually, EchoUpstream, GatewayProcess};
use http::StatusCode;
use nix::sys::signal::Signal;

use crate::support::start_gateway;

/// A gateway with `shutdown_timeout` whose route `/slow/*` goes to `upstream`, minus the prefix.
fn start_with_slow_route(upstream: &EchoUpstream, shutdown_timeout: &str) -> GatewayProcess {
    start_gateway(&format!(
        "node:\n  listeners:\n    - address: 127.0.0.1:0\n  shutdown_timeout: {shutdown_timeout}\nupstreams:\n  - id: slow\n    endpoints: [{}]\nroutes:\n  - id: slow\n    paths: [/slow/*]\n    upstream: slow\n    rewrite: {{strip_prefix: /slow}}\n",
        upstream.addr()
    ))
}

/// True when a new TCP connection to `address` is refused.
async fn is_refused(address: std::net::SocketAddr) -> bool {
    matches!(
        tokio::net::TcpStream::connect(address).await,
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_an_in_flight_request_on_sigterm_and_exits_zero() {
    let upstream = EchoUpstream::start("slow").await;
    let gateway = start_with_slow_route(&upstream, "5s");
    let address = gateway.addr(0);
    let in_flight = tokio::spawn({
        let url = gateway.url("/slow/delay/1500");
        async move { TestClient::default().get(&url).await }
    });
    eventually("the slow request to reach the upstream", || async { (upstream.requests() == 1).then_some(()) }).await;

    let signalled = Instant::now();
    gateway.signal(Signal::SIGTERM);

    eventually("the listener to close", || async { is_refused(address).await.then_some(()) }).await;
    assert!(!in_flight.is_finished(), "the slow request ended before the listener closed; the test proves nothing");
    eventually("the drain to be logged", || async {
        gateway.logs().iter().any(|line| line.contains("shutting down: draining connections")).then_some(())
    })
    .await;

    let response = in_flight.await.expect("request task");
    assert_eq!(response.status, StatusCode::OK, "the in-flight request was cut off");
    assert_eq!(response.json()["path"], "/delay/1500");

    let status = tokio::task::spawn_blocking(move || gateway.terminate(Duration::from_secs(5)))
        .await
        .expect("wait for exit")
        .expect("the gateway did not exit within shutdown_timeout");
    assert!(status.success(), "exit status {status}");
    assert!(signalled.elapsed() < Duration::from_secs(5), "took {:?} to stop", signalled.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_at_the_drain_deadline_when_a_request_outlasts_it() {
    let upstream = EchoUpstream::start("slow").await;
    let gateway = start_with_slow_route(&upstream, "1s");
    let in_flight = tokio::spawn({
        let url = gateway.url("/slow/delay/10000");
        async move {
            let request = http::Request::get(&url).body(Default::default()).expect("valid request");
            TestClient::default().send(request).await
        }
    });
    eventually("the slow request to reach the upstream", || async { (upstream.requests() == 1).then_some(()) }).await;

    let signalled = Instant::now();
    gateway.signal(Signal::SIGTERM);
    eventually("the drain deadline to pass", || async {
        gateway.logs().iter().any(|line| line.contains("stopped with connections still open")).then_some(())
    })
    .await;
    let status = tokio::task::spawn_blocking(move || gateway.terminate(Duration::from_secs(3)))
        .await
        .expect("wait for exit")
        .expect("the gateway did not exit after the drain deadline");
    let stopped_after = signalled.elapsed();

    assert!(status.success(), "exit status {status}");
    assert!(stopped_after >= Duration::from_millis(900), "stopped after {stopped_after:?}, before the deadline");
    assert!(stopped_after < Duration::from_secs(4), "stopped after {stopped_after:?}, long past the 1s deadline");
    let outcome = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the client saw the connection close")
        .expect("request task");
    assert!(outcome.is_err(), "the request outlasting the deadline still got an answer: {outcome:?}");
}

#[tokio::test]
async fn shares_one_port_between_two_processes_with_so_reuseport() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("find a free port");
        probe.local_addr().expect("probe address").port()
    };
    let config = |name: &str| {
        format!(
            "node:\n  listeners:\n    - address: 127.0.0.1:{port}\nroutes:\n  - id: who\n    paths: [/who]\n    policies:\n      - mock_response: {{body: {name}}}\n"
        )
    };
    let first = start_gateway(&config("first"));
    let second = start_gateway(&config("second"));
    assert_eq!(first.addr(0), second.addr(0));
    let url = first.url("/who");

    // The kernel spreads new connections over the two sockets by their source port: a fresh
    // client per request opens a new connection each time, until both processes have answered.
    let mut answered_by = HashSet::new();
    let until = Instant::now() + gantry_testkit::deadline();
    while answered_by.len() < 2 && Instant::now() < until {
        let response = TestClient::default().get(&url).await;
        assert_eq!(response.status, StatusCode::OK);
        answered_by.insert(String::from_utf8_lossy(&response.body).into_owned());
    }
    assert_eq!(answered_by, HashSet::from(["first".to_owned(), "second".to_owned()]));

    // With one process gone, the other keeps serving the port alone.
    drop(first);
    for _ in 0..20 {
        let response = TestClient::default().get(&url).await;
        assert_eq!(response.body, "second");
    }
}
