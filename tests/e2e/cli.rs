//! The command line through the real binary: `validate` (every error located, directories, the
//! embedded default, the bundled examples), `version`, and `run` with no `--config`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gantry_testkit::client::TestClient;
use gantry_testkit::GatewayProcess;
use http::StatusCode;

use crate::support::gantry_binary;

/// Runs `gantry <args>` to completion.
fn gantry(args: &[&str]) -> Output {
    Command::new(gantry_binary()).args(args).env_remove("GANTRY_CONFIG").output().expect("run gantry")
}

/// Everything the command printed, standard output then standard error.
fn printed(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// `gantry validate --config <path>`.
fn validate(path: &Path) -> Output {
    gantry(&["validate", "--config", path.to_str().expect("UTF-8 temp path")])
}

#[test]
fn validate_reports_a_bad_field_in_each_resource_of_one_file_in_one_pass() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("gantry.yaml");
    std::fs::write(
        &file,
        "\
upstreams:
  - id: up
    endpoints: [127.0.0.1:1]
    timeouts: {connect: 5}
routes:
  - id: orders
    paths: [/orders]
    upstrem: up
  - id: fine
    paths: [/fine]
    upstream: up
",
    )
    .expect("write config");

    let output = validate(&file);

    let text = printed(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let file = file.display();
    for expected in [
        "2 configuration errors:".to_owned(),
        format!("{file}:4:16: upstreams[up].timeouts.connect: `5` has no unit; write it like \"5s\""),
        format!("{file}:8:5: routes[orders].upstrem: unknown field `upstrem`"),
    ] {
        assert!(text.contains(&expected), "missing `{expected}` in:\n{text}");
    }
}

#[test]
fn validate_prints_every_error_with_its_location_path_and_reason_and_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("gantry.yaml");
    std::fs::write(
        &file,
        "\
upstreams:
  - id: up
    endpoints: [127.0.0.1:1]
routes:
  - id: orders
    paths: [/orders]
    upstream: missing
  - id: orders
    paths: [/orders-v2]
    upstream: up
    policies:
      - ip_restriction: {allow: [10.0.0.300/8]}
  - id: mock
    paths: [/mock]
    policies:
      - mock_response: {body: hi, colour: red}
  - id: slow
    paths: [/slow]
    policies:
      - mock_response: {body: hi, delay: 5 parsecs}
",
    )
    .expect("write config");

    let output = validate(&file);

    let text = printed(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let file = file.display();
    for expected in [
        "5 configuration errors:".to_owned(),
        format!("{file}:8:5: routes[orders].id: duplicate id `orders` in routes"),
        format!("{file}:7:5: routes[orders].upstream: unknown upstream `missing`"),
        format!(
            "{file}:12:34: routes[orders].policies[0].ip_restriction.allow[0]: `10.0.0.300/8` is not a CIDR such as `10.0.0.0/8`"
        ),
        format!("{file}:16:35: routes[mock].policies[0].mock_response.colour: unknown field `colour`"),
        format!("{file}:20:35: routes[slow].policies[0].mock_response.delay: invalid duration \"5 parsecs\""),
    ] {
        assert!(text.contains(&expected), "missing `{expected}` in:\n{text}");
    }
}

#[test]
fn validate_reports_the_errors_of_every_file_in_a_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let routes = dir.path().join("routes.yaml");
    let upstreams = dir.path().join("upstreams.yaml");
    std::fs::write(&routes, "routes:\n  - id: a\n    paths: [/a]\n    upstrem: up\n").expect("write routes");
    std::fs::write(&upstreams, "upstreams:\n  - id: up\n    endpoints: [127.0.0.1:1]\n    timeouts: {connect: soon}\n")
        .expect("write upstreams");

    let output = validate(dir.path());

    let text = printed(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("2 configuration errors:"), "{text}");
    let unknown_field = format!("{}:4:5: routes[a].upstrem: unknown field `upstrem`", routes.display());
    assert!(text.contains(&unknown_field), "missing `{unknown_field}` in:\n{text}");
    let bad_duration =
        format!("{}:4:16: upstreams[up].timeouts.connect: invalid duration \"soon\"", upstreams.display());
    assert!(text.contains(&bad_duration), "missing `{bad_duration}` in:\n{text}");
}

#[test]
fn validate_accepts_a_valid_directory_and_prints_a_summary() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The route refers to an upstream written in another file of the directory.
    std::fs::write(dir.path().join("routes.yaml"), "routes:\n  - id: a\n    paths: [/a]\n    upstream: up\n")
        .expect("write routes");
    std::fs::write(dir.path().join("upstreams.yaml"), "upstreams:\n  - id: up\n    endpoints: [127.0.0.1:1]\n")
        .expect("write upstreams");

    let output = validate(dir.path());

    let text = printed(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("configuration is valid: 1 routes, 0 services, 1 upstreams"), "{text}");

    // The same route alone no longer finds its upstream.
    let output = validate(&dir.path().join("routes.yaml"));
    assert_eq!(output.status.code(), Some(1), "{}", printed(&output));
    assert!(printed(&output).contains("routes[a].upstream: unknown upstream `up`"), "{}", printed(&output));
}

#[test]
fn validate_without_a_config_checks_the_embedded_default() {
    let output = gantry(&["validate"]);

    let text = printed(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("configuration is valid: 3 routes, 0 services, 1 upstreams, 1 consumers"), "{text}");
}

#[test]
fn every_bundled_example_validates() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/examples");
    let mut files = Vec::new();
    collect_yaml_files(&examples, &mut files);
    assert!(!files.is_empty(), "no example under {}", examples.display());
    for file in files {
        let output = validate(&file);
        assert_eq!(output.status.code(), Some(0), "{} is not valid:\n{}", file.display(), printed(&output));
    }
}

fn collect_yaml_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read examples").flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_yaml_files(&path, files);
        } else if matches!(path.extension().and_then(|ext| ext.to_str()), Some("yaml" | "yml")) {
            files.push(path);
        }
    }
}

#[test]
fn version_prints_the_crate_version() {
    let expected = format!("gantry {}\n", env!("CARGO_PKG_VERSION"));
    for args in [&["version"][..], &["--version"][..]] {
        let output = gantry(args);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&output.stdout), expected, "{args:?}");
    }
}

#[test]
fn run_rejects_more_listen_addresses_than_listeners() {
    let output = gantry(&["run", "--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"]);

    let text = printed(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("--listen is given 2 times but the configuration has 1 listener(s)"), "{text}");
}

#[test]
fn run_rejects_moving_the_demo_upstream_of_a_config_file() {
    let output = gantry(&["run", "--config", "gantry.yaml", "--demo-upstream", "127.0.0.1:9999"]);

    assert_eq!(output.status.code(), Some(2), "{}", printed(&output));
    assert!(printed(&output).contains("cannot be used with"), "{}", printed(&output));
}

#[tokio::test]
async fn runs_the_embedded_default_with_no_config_and_answers_the_demo_route() {
    // The demo upstream's endpoints name its port, so it needs a fixed one: take a free one.
    let demo_upstream = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("find a free port");
        probe.local_addr().expect("probe address")
    };
    let demo_upstream = demo_upstream.to_string();
    let gateway = GatewayProcess::start_embedded(
        gantry_binary(),
        &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--demo-upstream", &demo_upstream],
    );
    let address = gateway.addr(0);
    let client = TestClient::default();

    let response = client.get(&format!("http://{address}/demo/hello?name=gantry")).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("x-served-by"), Some("gantry"));
    let described = response.json();
    assert_eq!(described["message"], "Hello from Gantry's demo upstream");
    assert_eq!(described["path"], "/hello");
    assert_eq!(described["query"], "name=gantry");

    let health = client.get(&format!("http://{address}/health")).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["status"], "ok");
    assert_eq!(client.get(&format!("http://{address}/nowhere")).await.status, StatusCode::NOT_FOUND);

    let keyless = client.get(&format!("http://{address}/private/hello")).await;
    assert_eq!(keyless.status, StatusCode::UNAUTHORIZED);
    let keyed = client
        .request(http::Method::GET, &format!("http://{address}/private/hello"), &[("apikey", "demo-key-change-me")], "")
        .await;
    assert_eq!(keyed.status, StatusCode::OK);
    assert_eq!(keyed.json()["path"], "/hello");
}
