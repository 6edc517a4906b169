//! Hot reload through the running binary: file watch (rewrite, rename into place, a file added
//! to a directory), SIGHUP, rejected configurations, in-flight requests across a swap, and no
//! failed request across many reloads under load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_testkit::client::TestClient;
use gantry_testkit::{eventually, EchoUpstream, GatewayProcess};
use http::StatusCode;
use nix::sys::signal::Signal;

use crate::support::{gantry_binary, start_gateway, with_listener};

/// A config with one listener and a `mock_response` route per `(id, path)`, answering the id.
fn mock_routes(routes: &[(&str, &str)]) -> String {
    let mut resources = String::from("routes:\n");
    for (id, path) in routes {
        resources.push_str(&format!(
            "  - id: {id}\n    paths: [{path}]\n    policies:\n      - mock_response: {{body: {id}}}\n"
        ));
    }
    with_listener(&resources)
}

/// Starts the gateway on `yaml` with extra command-line arguments.
fn start_with_args(yaml: &str, args: &[&str]) -> GatewayProcess {
    GatewayProcess::start_in(gantry_binary(), tempfile::tempdir().expect("temp dir"), "gantry.yaml", yaml, args)
}

/// Lines of the gateway's log containing `needle`.
fn count_log_lines(gateway: &GatewayProcess, needle: &str) -> usize {
    gateway.logs().iter().filter(|line| line.contains(needle)).count()
}

/// Generation of the last `configuration applied` log line.
fn applied_generation(gateway: &GatewayProcess) -> Option<u64> {
    gateway.logs().iter().rev().filter(|line| line.contains("configuration applied")).find_map(|line| {
        let start = line.find("generation=")? + "generation=".len();
        line[start..].split_whitespace().next()?.parse().ok()
    })
}

/// Waits until the gateway has logged `needle`: log lines follow the swap they report, so a
/// request may see a new snapshot an instant before its line is written.
async fn wait_for_log(gateway: &GatewayProcess, needle: &str) {
    let until = Instant::now() + gantry_testkit::deadline();
    while count_log_lines(gateway, needle) == 0 {
        assert!(Instant::now() < until, "timed out waiting for `{needle}` in the log:\n{}", gateway.logs().join("\n"));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until `url` answers `status` and, for 200, the body `body`.
async fn wait_for_answer(client: &TestClient, url: &str, status: StatusCode, body: &str) {
    eventually(&format!("{url} to answer {status} {body}"), || async {
        let response = client.get(url).await;
        (response.status == status && (status != StatusCode::OK || response.body == body.as_bytes())).then_some(())
    })
    .await;
}

/// Replaces `path` the way many editors save: write a temporary file beside it, then rename it
/// over the original, so the file is never seen half written.
fn replace_by_rename(path: &std::path::Path, text: &str) {
    let temporary = path.with_extension("yaml.tmp");
    std::fs::write(&temporary, text).expect("write temporary file");
    std::fs::rename(&temporary, path).expect("rename over the config");
}

#[tokio::test]
async fn applies_a_rewritten_config_file_within_the_deadline() {
    let gateway = start_gateway(&mock_routes(&[("one", "/one")]));
    let client = TestClient::default();
    assert_eq!(client.get(&gateway.url("/two")).await.status, StatusCode::NOT_FOUND);

    std::fs::write(gateway.config_path(), mock_routes(&[("one", "/one"), ("two", "/two")])).expect("rewrite config");

    wait_for_answer(&client, &gateway.url("/two"), StatusCode::OK, "two").await;
    assert_eq!(client.get(&gateway.url("/one")).await.body, "one");
    wait_for_log(&gateway, "configuration reloaded after a file change").await;
}

#[tokio::test]
async fn applies_a_config_file_renamed_into_place_by_an_editor() {
    let gateway = start_gateway(&mock_routes(&[("one", "/one")]));
    let client = TestClient::default();
    assert_eq!(client.get(&gateway.url("/three")).await.status, StatusCode::NOT_FOUND);

    replace_by_rename(gateway.config_path(), &mock_routes(&[("three", "/three")]));

    wait_for_answer(&client, &gateway.url("/three"), StatusCode::OK, "three").await;
    // The new file dropped route `one`: the whole file was applied, not merged into the old one.
    assert_eq!(client.get(&gateway.url("/one")).await.status, StatusCode::NOT_FOUND);
    // A second save the same way is noticed too: the watch follows the name, not the replaced file.
    replace_by_rename(gateway.config_path(), &mock_routes(&[("four", "/four")]));
    wait_for_answer(&client, &gateway.url("/four"), StatusCode::OK, "four").await;
}

#[tokio::test]
async fn applies_a_file_added_to_a_config_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_dir = dir.path().join("conf.d");
    std::fs::create_dir(&config_dir).expect("create config dir");
    std::fs::write(config_dir.join("10-base.yaml"), mock_routes(&[("one", "/one")])).expect("write base");
    let gateway = GatewayProcess::spawn(gantry_binary(), dir, config_dir.clone(), &[]);
    let client = TestClient::default();
    assert_eq!(client.get(&gateway.url("/one")).await.body, "one");
    assert_eq!(client.get(&gateway.url("/two")).await.status, StatusCode::NOT_FOUND);

    std::fs::write(
        config_dir.join("20-extra.yaml"),
        "routes:\n  - id: two\n    paths: [/two]\n    policies:\n      - mock_response: {body: two}\n",
    )
    .expect("add a file");

    wait_for_answer(&client, &gateway.url("/two"), StatusCode::OK, "two").await;
    assert_eq!(client.get(&gateway.url("/one")).await.body, "one");
}

#[tokio::test]
async fn reloads_on_sighup_when_file_watching_is_off() {
    let gateway = start_with_args(&mock_routes(&[("one", "/one")]), &["--no-watch"]);
    let client = TestClient::default();
    std::fs::write(gateway.config_path(), mock_routes(&[("one", "/one"), ("two", "/two")])).expect("rewrite config");

    // Nothing announces that a change was *not* seen, so watch for a while: well past the
    // 200 ms debounce of the file watch, which would have applied the file by then.
    let until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < until {
        assert_eq!(client.get(&gateway.url("/two")).await.status, StatusCode::NOT_FOUND, "applied without SIGHUP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(applied_generation(&gateway), Some(1));

    gateway.signal(Signal::SIGHUP);

    wait_for_answer(&client, &gateway.url("/two"), StatusCode::OK, "two").await;
    wait_for_log(&gateway, "configuration reloaded on SIGHUP").await;
    assert_eq!(applied_generation(&gateway), Some(2));
}

#[tokio::test]
async fn rejects_an_invalid_config_whole_and_keeps_serving_the_old_one() {
    let upstream = EchoUpstream::start("echo").await;
    let valid = mock_routes(&[("one", "/one")]);
    let gateway = start_with_args(&valid, &["--no-watch"]);
    let file = gateway.config_path().display().to_string();
    let client = TestClient::default();
    // Each candidate keeps route `one`, adds route `two` and has one mistake, reported as
    // `file:line:column: field path: reason`.
    let upstreams = format!("upstreams:\n  - id: echo\n    endpoints: [{}]\n", upstream.addr());
    let cases = [
        (
            "a syntax error",
            format!("{valid}  - id: two\n    paths: [/two\n"),
            format!("{file}:10:12: routes[1].paths: unclosed bracket"),
        ),
        (
            "an unknown field",
            format!("{valid}  - id: two\n    paths: [/two]\n    upstrem: echo\n"),
            format!("{file}:11:5: routes[two].upstrem: unknown field `upstrem`"),
        ),
        (
            "an unknown upstream",
            format!("{valid}  - id: two\n    paths: [/two]\n    upstream: missing\n{upstreams}"),
            format!("{file}:11:5: routes[two].upstream: unknown upstream `missing`"),
        ),
        (
            "invalid policy settings",
            format!(
                "{valid}  - id: two\n    paths: [/two]\n    upstream: echo\n    policies:\n      - ip_restriction: {{allow: [10.0.0.300/8]}}\n{upstreams}"
            ),
            format!(
                "{file}:13:34: routes[two].policies[0].ip_restriction.allow[0]: `10.0.0.300/8` is not a CIDR"
            ),
        ),
    ];
    for (rejections, (kind, candidate, expected_log)) in cases.iter().enumerate() {
        std::fs::write(gateway.config_path(), candidate).expect("write candidate");
        gateway.signal(Signal::SIGHUP);
        wait_for_log(&gateway, expected_log).await;
        assert_eq!(count_log_lines(&gateway, "configuration rejected"), rejections + 1, "{kind}");
        assert_eq!(client.get(&gateway.url("/one")).await.body, "one", "{kind}: the old route stops serving");
        assert_eq!(client.get(&gateway.url("/two")).await.status, StatusCode::NOT_FOUND, "{kind}: applied in part");
        assert_eq!(applied_generation(&gateway), Some(1), "{kind}: a generation was applied");
    }

    // The trigger still works after the rejections: a valid file applies.
    std::fs::write(gateway.config_path(), mock_routes(&[("one", "/one"), ("two", "/two")])).expect("write valid");
    gateway.signal(Signal::SIGHUP);
    wait_for_answer(&client, &gateway.url("/two"), StatusCode::OK, "two").await;
    wait_for_log(&gateway, "generation=2").await;
    assert_eq!(applied_generation(&gateway), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishes_an_in_flight_request_on_the_snapshot_it_started_on() {
    let upstream = EchoUpstream::start("slow").await;
    let gateway = start_with_args(
        &with_listener(&format!(
            "upstreams:\n  - id: slow\n    endpoints: [{}]\nroutes:\n  - id: a\n    paths: [/a/*]\n    upstream: slow\n    rewrite: {{strip_prefix: /a}}\n",
            upstream.addr()
        )),
        &["--no-watch"],
    );
    let client = TestClient::default();
    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = gateway.url("/a/delay/1500");
        async move { client.get(&url).await }
    });
    eventually("the slow request to reach the upstream", || async { (upstream.requests() == 1).then_some(()) }).await;

    // The new config drops route `a` and its upstream while the request waits on it.
    std::fs::write(gateway.config_path(), mock_routes(&[("b", "/b")])).expect("rewrite config");
    gateway.signal(Signal::SIGHUP);
    wait_for_answer(&client, &gateway.url("/b"), StatusCode::OK, "b").await;
    assert_eq!(client.get(&gateway.url("/a/status/200")).await.status, StatusCode::NOT_FOUND);
    assert!(!in_flight.is_finished(), "the slow request ended before the reload; the test proves nothing");

    let response = in_flight.await.expect("request task");
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json()["path"], "/delay/1500");
    assert_eq!(upstream.requests(), 1, "the request after the reload reached the removed upstream");
}

/// Outcome counts of the load loops.
#[derive(Default)]
struct LoadCounts {
    ok: AtomicU64,
    bad_status: AtomicU64,
    transport_errors: AtomicU64,
    served_by_a: AtomicU64,
    served_by_b: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_every_request_across_fifty_reloads_under_load() {
    const RELOADS: u64 = 50;
    const CLIENTS: usize = 8;
    let upstream = EchoUpstream::start("echo").await;
    // Two valid configs serving the same route; the header says which one answered.
    let config = |tag: &str| {
        with_listener(&format!(
            "upstreams:\n  - id: echo\n    endpoints: [{}]\nroutes:\n  - id: api\n    paths: [/api/*]\n    upstream: echo\n    rewrite: {{strip_prefix: /api}}\n    policies:\n      - response_headers:\n          set: {{x-config: {tag}}}\n",
            upstream.addr()
        ))
    };
    let gateway = start_with_args(&config("a"), &["--no-watch"]);
    let url = gateway.url("/api/load");
    let counts = Arc::new(LoadCounts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let (counts, stop, url) = (counts.clone(), stop.clone(), url.clone());
        loops.push(tokio::spawn(async move {
            // One keep-alive client per loop: requests reuse connections opened before a swap.
            let client = TestClient::default();
            while !stop.load(Ordering::Relaxed) {
                let request = http::Request::get(&url).body(Default::default()).expect("valid request");
                match client.send(request).await {
                    Ok(response) if response.status == StatusCode::OK => {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                        match response.header("x-config") {
                            Some("a") => counts.served_by_a.fetch_add(1, Ordering::Relaxed),
                            Some("b") => counts.served_by_b.fetch_add(1, Ordering::Relaxed),
                            _ => counts.bad_status.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    Ok(_) => {
                        counts.bad_status.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        counts.transport_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let started = Instant::now();
    for reload in 1..=RELOADS {
        let tag = if reload % 2 == 1 { "b" } else { "a" };
        std::fs::write(gateway.config_path(), config(tag)).expect("rewrite config");
        gateway.signal(Signal::SIGHUP);
        // Wait for this reload to apply before the next, so none is merged into another.
        eventually(&format!("reload {reload} to apply"), || async {
            (applied_generation(&gateway) == Some(reload + 1)).then_some(())
        })
        .await;
    }
    // Keep the load on a little after the last swap, then stop it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for task in loops {
        task.await.expect("load loop");
    }
    let elapsed = started.elapsed();

    let ok = counts.ok.load(Ordering::Relaxed);
    let bad_status = counts.bad_status.load(Ordering::Relaxed);
    let transport_errors = counts.transport_errors.load(Ordering::Relaxed);
    let (by_a, by_b) = (counts.served_by_a.load(Ordering::Relaxed), counts.served_by_b.load(Ordering::Relaxed));
    let summary = format!(
        "{RELOADS} reloads in {elapsed:?}: {ok} ok ({by_a} by config a, {by_b} by config b), {bad_status} wrong answers, {transport_errors} transport errors"
    );
    eprintln!("{summary}");
    assert_eq!(bad_status + transport_errors, 0, "{summary}");
    assert_eq!(applied_generation(&gateway), Some(RELOADS + 1), "{summary}");
    assert_eq!(count_log_lines(&gateway, "configuration rejected"), 0, "{summary}");
    // Both configs answered, so the load really ran across the swaps.
    assert!(by_a > 0 && by_b > 0 && ok >= RELOADS * 2, "{summary}");
    assert!(elapsed < Duration::from_secs(20), "{summary}");
}
