//! `gantry status`: the admin API's `GET /status` as a table, once or refreshed like `top`.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::cli::StatusArgs;

/// Prints the status summary of the gateway whose admin API is at `args.admin`.
pub fn status(args: &StatusArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        loop {
            match fetch(args).await {
                Ok(status) => {
                    if args.json {
                        println!("{status:#}");
                    } else {
                        if args.watch.is_some() {
                            // Clears the terminal and moves home, as `top` redraws.
                            print!("\x1b[2J\x1b[H");
                        }
                        print!("{}", render(&status));
                    }
                }
                Err(reason) => {
                    eprintln!("error: {reason}");
                    return ExitCode::FAILURE;
                }
            }
            match args.watch {
                Some(seconds) => tokio::time::sleep(Duration::from_secs(seconds.max(1))).await,
                None => return ExitCode::SUCCESS,
            }
        }
    })
}

async fn fetch(args: &StatusArgs) -> Result<Value, String> {
    let base = if args.admin.contains("://") { args.admin.clone() } else { format!("http://{}", args.admin) };
    let url = format!("{}/status?top={}", base.trim_end_matches('/'), args.top);
    let request = http::Request::get(&url)
        .header("x-api-key", &args.key)
        .body(Empty::<Bytes>::new())
        .map_err(|err| format!("`{url}` is not a valid admin address: {err}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| format!("no answer from {base} within 10 s"))?
        .map_err(|err| format!("cannot reach the admin API at {base}: {err}"))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|err| format!("reading the answer failed: {err}"))?;
    let body: Value = serde_json::from_slice(&body.to_bytes())
        .map_err(|err| format!("the admin API answered {status} with no JSON: {err}"))?;
    if !status.is_success() {
        let detail = body.get("detail").or_else(|| body.get("title")).and_then(Value::as_str).unwrap_or("");
        return Err(format!("the admin API answered {status}: {detail}"));
    }
    Ok(body)
}

/// The summary as text tables.
fn render(status: &Value) -> String {
    let mut out = String::new();
    let config = &status["config"];
    let _ = writeln!(
        out,
        "gantry {}  up {}  generation {}  routes {}  upstreams {}  rejected reloads {}{}",
        status["version"].as_str().unwrap_or("?"),
        uptime(status["uptime_seconds"].as_u64().unwrap_or(0)),
        config["generation"],
        config["routes"],
        config["upstreams"],
        config["reload_failures"],
        if config["last_reload_failed"].as_bool() == Some(true) { " (the latest was rejected)" } else { "" },
    );
    if status["requests_counted"].as_bool() != Some(true) {
        let _ = writeln!(out, "requests are not counted (node.metrics.enabled is false)");
    }

    let mut routes =
        vec![row(&["ROUTE", "REQUESTS", "2xx", "3xx", "4xx", "5xx", "P50 MS", "P99 MS", "OVERHEAD P99 MS"])];
    for route in status["routes"].as_array().into_iter().flatten() {
        let summary = &route["traffic"]["summary"];
        let classes = &summary["status_classes"];
        routes.push(row(&[
            route["id"].as_str().unwrap_or("?"),
            &count(&summary["requests"]),
            &count(&classes["2xx"]),
            &count(&classes["3xx"]),
            &count(&classes["4xx"]),
            &count(&classes["5xx"]),
            &millis(&summary["duration"]["p50_ms"]),
            &millis(&summary["duration"]["p99_ms"]),
            &millis(&route["traffic"]["overhead"]["p99_ms"]),
        ]));
    }
    let _ = writeln!(out);
    out.push_str(&table(&routes));

    let mut endpoints =
        vec![row(&["UPSTREAM", "ENDPOINT", "AVAILABLE", "IN FLIGHT", "TRIES", "5xx", "NO ANSWER", "P99 MS"])];
    for upstream in status["upstreams"].as_array().into_iter().flatten() {
        for endpoint in upstream["endpoints"].as_array().into_iter().flatten() {
            let failures: u64 =
                endpoint["failures"].as_object().map_or(0, |reasons| reasons.values().filter_map(Value::as_u64).sum());
            endpoints.push(row(&[
                upstream["id"].as_str().unwrap_or("?"),
                endpoint["address"].as_str().unwrap_or("?"),
                if endpoint["available"].as_bool() == Some(true) { "yes" } else { "no" },
                &count(&endpoint["in_flight"]),
                &count(&endpoint["tries"]["requests"]),
                &count(&endpoint["tries"]["status_classes"]["5xx"]),
                &failures.to_string(),
                &millis(&endpoint["tries"]["duration"]["p99_ms"]),
            ]));
        }
    }
    let _ = writeln!(out);
    out.push_str(&table(&endpoints));
    out
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|cell| (*cell).to_owned()).collect()
}

fn count(value: &Value) -> String {
    value.as_u64().map_or_else(|| "-".to_owned(), |count| count.to_string())
}

fn millis(value: &Value) -> String {
    value.as_f64().map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}"))
}

fn uptime(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, (seconds % 3600) / 60),
    }
}

/// Left-aligned columns as wide as their widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| rows.iter().filter_map(|row| row.get(column)).map(|cell| cell.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_routes_and_endpoints_as_aligned_tables() {
        let status = serde_json::json!({
            "version": "1.2.3",
            "uptime_seconds": 3725,
            "config": {"generation": 4, "routes": 1, "upstreams": 1, "reload_failures": 2, "last_reload_failed": true},
            "requests_counted": true,
            "routes": [{"id": "orders", "traffic": {
                "summary": {"requests": 7, "status_classes": {"2xx": 6, "3xx": 0, "4xx": 0, "5xx": 1},
                            "duration": {"p50_ms": 1.26, "p99_ms": 9.0}},
                "overhead": {"p99_ms": 0.5}}}],
            "upstreams": [{"id": "shop", "endpoints": [{"address": "10.0.0.1:80", "available": false, "in_flight": 0,
                "tries": {"requests": 7, "status_classes": {"5xx": 1}, "duration": {"p99_ms": 8.5}},
                "failures": {"connect": 2, "timeout": 1, "exchange": 0}}]}],
        });
        let text = render(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "gantry 1.2.3  up 1h02m  generation 4  routes 1  upstreams 1  rejected reloads 2 (the latest was rejected)"
        );
        assert_eq!(lines[2], "ROUTE   REQUESTS  2xx  3xx  4xx  5xx  P50 MS  P99 MS  OVERHEAD P99 MS");
        assert_eq!(lines[3], "orders  7         6    0    0    1    1.3     9.0     0.5");
        assert_eq!(lines[6], "shop      10.0.0.1:80  no         0          7      1    3          8.5");
    }

    #[test]
    fn shows_dashes_for_routes_without_counts() {
        let status =
            serde_json::json!({"config": {}, "requests_counted": false, "routes": [{"id": "r"}], "upstreams": []});
        let text = render(&status);
        assert!(text.contains("requests are not counted"), "{text}");
        assert!(text.lines().any(|line| line == "r      -         -    -    -    -    -       -       -"), "{text}");
    }
}
