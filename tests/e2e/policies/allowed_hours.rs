//! `allowed_hours` through a running gateway, with windows built around the real current time
//! in `Asia/Tokyo` (UTC+9, no daylight saving): a window around now lets requests through, one
//! hours away refuses them with 403 before the upstream, and the same window read in UTC is
//! closed, so the time zone is what decides.

use std::time::{SystemTime, UNIX_EPOCH};

use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::EchoUpstream;
use http::StatusCode;

use super::harness::assert_policy_answers;
use crate::support::{start_gateway, with_admin};

const ADMIN_KEY: &str = "e2e-admin-key-allowed-hours-9c04";
const TOKYO_OFFSET_SECONDS: u64 = 9 * 3600;
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// The local time in Tokyo now: minutes since midnight, and the weekday (0 is Monday).
fn tokyo_now() -> (u64, usize) {
    let local = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs() + TOKYO_OFFSET_SECONDS;
    // 1970-01-01 was a Thursday.
    let weekday = usize::try_from((local / 86_400 + 3) % 7).expect("a weekday");
    ((local % 86_400) / 60, weekday)
}

/// `HH:MM` of `minutes` after midnight, wrapping around the day.
fn clock(minutes: i64) -> String {
    let minutes = minutes.rem_euclid(24 * 60);
    format!("\"{:02}:{:02}\"", minutes / 60, minutes % 60)
}

/// One route per `(path, time zone, window)`, in front of `upstream`.
fn config(upstream: &EchoUpstream, routes: &[(&str, &str, String)]) -> String {
    let mut yaml = format!("upstreams:\n  - id: up\n    endpoints: [{}]\nroutes:\n", upstream.addr());
    for (index, (path, time_zone, window)) in routes.iter().enumerate() {
        yaml.push_str(&format!(
            "  - id: r{index}\n    paths: [{path}]\n    upstream: up\n    policies:\n      - allowed_hours: {{time_zone: {time_zone}, windows: [{window}]}}\n"
        ));
    }
    with_admin(ADMIN_KEY, &yaml)
}

fn assert_outside_hours(response: &TestResponse) {
    assert_eq!(response.status, StatusCode::FORBIDDEN, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
    let problem = response.json();
    assert_eq!(problem["type"], "https://gantry.dev/problems/outside-allowed-hours");
    assert_eq!(problem["detail"], "Requests are not accepted at this time");
}

#[tokio::test]
async fn lets_requests_through_inside_a_window_around_now_and_refuses_them_outside() {
    let (now, weekday) = tokyo_now();
    let now = i64::try_from(now).expect("minutes");
    // Windows of an hour or more, or of whole days, so a test crossing a minute or midnight
    // while it runs still finds each one as it was built.
    let around_now = format!("{{from: {}, to: {}}}", clock(now - 30), clock(now + 30));
    let later = format!("{{from: {}, to: {}}}", clock(now + 120), clock(now + 180));
    let today_and_tomorrow = format!("{{days: [{}, {}]}}", DAYS[weekday], DAYS[(weekday + 1) % 7]);
    let other_days: Vec<&str> = (2..7).map(|ahead| DAYS[(weekday + ahead) % 7]).collect();
    let other_days = format!("{{days: [{}]}}", other_days.join(", "));

    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(
        &upstream,
        &[
            ("/open", "Asia/Tokyo", around_now.clone()),
            ("/today", "Asia/Tokyo", today_and_tomorrow),
            ("/later", "Asia/Tokyo", later),
            ("/other-days", "Asia/Tokyo", other_days),
            ("/read-in-utc", "UTC", around_now),
        ],
    ));
    let client = TestClient::default();

    for open in ["/open", "/today"] {
        let response = client.get(&gateway.url(open)).await;
        assert_eq!(response.status, StatusCode::OK, "{open}: {response:?}");
    }
    assert_eq!(upstream.requests(), 2);

    for closed in ["/later", "/other-days", "/read-in-utc"] {
        assert_outside_hours(&client.get(&gateway.url(closed)).await);
    }
    assert_eq!(upstream.requests(), 2, "a refused request reached the upstream");
    assert_policy_answers(&gateway, "allowed_hours", 403, 3).await;
}
