use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, policy_path, run_request};
use gantry_policy_api::RegisteredPolicy;

use super::*;

fn entry() -> RegisteredPolicy {
    RegisteredPolicy::of::<AllowedHours>()
}

/// The policy of YAML `settings`, reading its time from `clock`.
fn policy_at(settings: &str, clock: fn() -> Timestamp) -> CompiledAllowedHours {
    let config: Config = serde_json::from_value(settings_json(settings)).expect("settings");
    let path = policy_path("allowed_hours");
    let mut errors = ConfigErrors::default();
    config.validate(&path, &mut errors);
    assert!(errors.is_empty(), "{errors}");
    CompiledAllowedHours::compile(config, &path, clock).unwrap_or_else(|errors| panic!("{errors}"))
}

/// Settings as JSON, parsed by the gateway's own loader from YAML.
fn settings_json(settings: &str) -> serde_json::Value {
    let text = format!("global_policies:\n  - allowed_hours:\n{}", indent(settings));
    let spec = gantry_config::load_str(&text).unwrap_or_else(|errors| panic!("{errors}"));
    spec.global_policies.into_iter().next().map(|policy| policy.config).expect("one policy")
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("      {line}\n")).collect()
}

fn at(instant: &str) -> Timestamp {
    instant.parse().expect("an RFC 3339 instant")
}

fn errors(settings: &str) -> Vec<String> {
    build_policy_error(entry(), settings).iter().map(|error| format!("{}: {}", error.path, error.message)).collect()
}

const OFFICE_ISTANBUL: &str =
    "windows: [{days: [mon-fri], from: \"08:00\", to: \"18:00\"}]\ntime_zone: Europe/Istanbul";

#[test]
fn opens_on_the_listed_weekdays_from_from_until_to_in_local_time() {
    let policy = policy_at(OFFICE_ISTANBUL, Timestamp::now);
    // Istanbul is UTC+3 all year; 2025-03-28 is a Friday.
    for (instant, open) in [
        ("2025-03-28T05:00:00Z", true),
        ("2025-03-28T04:59:59Z", false),
        ("2025-03-28T14:59:59Z", true),
        ("2025-03-28T15:00:00Z", false),
        ("2025-03-29T09:00:00Z", false),
        ("2025-03-31T09:00:00Z", true),
    ] {
        assert_eq!(policy.is_open_at(at(instant)), open, "{instant}");
    }
}

#[test]
fn follows_daylight_saving_time_in_the_time_zone() {
    let policy = policy_at(
        "windows: [{days: [mon-fri], from: \"08:00\", to: \"18:00\"}]\ntime_zone: Europe/Berlin",
        Timestamp::now,
    );
    // Berlin is UTC+1 on Friday 2025-03-28 and UTC+2 from Sunday 2025-03-30: 08:00 local
    // moves from 07:00 to 06:00 UTC, and back on Sunday 2025-10-26.
    for (instant, open) in [
        ("2025-03-28T06:30:00Z", false),
        ("2025-03-28T07:00:00Z", true),
        ("2025-03-31T05:30:00Z", false),
        ("2025-03-31T06:00:00Z", true),
        ("2025-03-31T15:59:59Z", true),
        ("2025-03-31T16:00:00Z", false),
        ("2025-10-27T06:30:00Z", false),
        ("2025-10-27T07:00:00Z", true),
    ] {
        assert_eq!(policy.is_open_at(at(instant)), open, "{instant}");
    }
}

#[test]
fn keeps_a_window_crossing_midnight_open_into_the_next_morning() {
    let policy = policy_at("windows: [{days: [fri], from: \"22:00\", to: \"06:00\"}]", Timestamp::now);
    for (instant, open) in [
        ("2025-03-28T21:59:59Z", false),
        ("2025-03-28T22:00:00Z", true),
        ("2025-03-28T23:30:00Z", true),
        ("2025-03-29T05:59:59Z", true),
        ("2025-03-29T06:00:00Z", false),
        ("2025-03-29T23:00:00Z", false),
        ("2025-03-28T05:00:00Z", false),
    ] {
        assert_eq!(policy.is_open_at(at(instant)), open, "{instant}");
    }
}

#[test]
fn opens_all_day_by_default_on_days_of_wrapping_ranges_and_full_names() {
    let policy = policy_at("windows: [{days: [fri-mon]}, {days: [Wednesday], from: \"12:00\"}]", Timestamp::now);
    for (instant, open) in [
        ("2025-03-28T00:00:00Z", true),
        ("2025-03-30T23:59:59Z", true),
        ("2025-03-31T12:00:00Z", true),
        ("2025-04-01T12:00:00Z", false),
        ("2025-04-02T11:59:59Z", false),
        ("2025-04-02T23:59:59Z", true),
        ("2025-04-03T12:00:00Z", false),
    ] {
        assert_eq!(policy.is_open_at(at(instant)), open, "{instant}");
    }
}

#[test]
fn compares_wall_clock_time_across_the_gaps_and_repeats_of_daylight_saving() {
    // 2025-03-30 in Berlin: 02:00 to 03:00 does not exist; a window from 02:30 opens at 03:00.
    let spring =
        policy_at("windows: [{days: [sun], from: \"02:30\", to: \"03:30\"}]\ntime_zone: Europe/Berlin", Timestamp::now);
    assert!(!spring.is_open_at(at("2025-03-30T00:59:59Z")), "01:59:59 local");
    assert!(spring.is_open_at(at("2025-03-30T01:00:00Z")), "03:00 local, just after the gap");
    assert!(!spring.is_open_at(at("2025-03-30T01:30:00Z")), "03:30 local");
    // 2025-10-26 in Berlin: 02:00 to 03:00 happens twice; the window is open both times.
    let autumn =
        policy_at("windows: [{days: [sun], from: \"02:00\", to: \"02:30\"}]\ntime_zone: Europe/Berlin", Timestamp::now);
    assert!(autumn.is_open_at(at("2025-10-26T00:15:00Z")), "02:15 summer time");
    assert!(autumn.is_open_at(at("2025-10-26T01:15:00Z")), "02:15 winter time");
    assert!(!autumn.is_open_at(at("2025-10-26T00:45:00Z")), "02:45 summer time");
}

#[test]
fn refuses_outside_the_windows_with_a_403_problem_and_lets_requests_through_inside() {
    let friday_noon_istanbul: fn() -> Timestamp = || "2025-03-28T09:00:00Z".parse().expect("instant");
    let saturday: fn() -> Timestamp = || "2025-03-29T09:00:00Z".parse().expect("instant");
    let mut request = http::Request::get("/").body(()).expect("request").into_parts().0;

    let open = policy_at(OFFICE_ISTANBUL, friday_noon_istanbul);
    assert!(matches!(run_request(&open, &mut request, &mut exchange_from("127.0.0.1:1")), Flow::Continue));

    let closed = policy_at(OFFICE_ISTANBUL, saturday);
    let Flow::Respond(response) = run_request(&closed, &mut request, &mut exchange_from("127.0.0.1:1")) else {
        panic!("refused on Saturday");
    };
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(response.headers()[http::header::CONTENT_TYPE], "application/problem+json");
    let problem: serde_json::Value = serde_json::from_slice(response.body()).expect("problem json");
    assert_eq!(problem["type"], "https://gantry.dev/problems/outside-allowed-hours");
    assert_eq!(problem["detail"], "Requests are not accepted at this time");
}

#[test]
fn answers_with_the_configured_status_and_message() {
    let never: fn() -> Timestamp = || "2025-03-29T09:00:00Z".parse().expect("instant");
    let policy = policy_at(&format!("{OFFICE_ISTANBUL}\nstatus: 503\nmessage: Closed on weekends"), never);
    let mut request = http::Request::get("/").body(()).expect("request").into_parts().0;
    let Flow::Respond(response) = run_request(&policy, &mut request, &mut exchange_from("127.0.0.1:1")) else {
        panic!("refused");
    };
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let problem: serde_json::Value = serde_json::from_slice(response.body()).expect("problem json");
    assert_eq!(problem["detail"], "Closed on weekends");
}

#[test]
fn reads_times_written_without_quotes_or_with_one_digit_hours() {
    let policy = policy_at("windows: [{from: 8:00, to: 17:30:15}, {from: 20:00, to: 24:00}]", Timestamp::now);
    for (instant, open) in [
        ("2025-03-28T07:59:59Z", false),
        ("2025-03-28T08:00:00Z", true),
        ("2025-03-28T17:30:14Z", true),
        ("2025-03-28T17:30:15Z", false),
        ("2025-03-28T23:59:59Z", true),
    ] {
        assert_eq!(policy.is_open_at(at(instant)), open, "{instant}");
    }
}

#[test]
fn builds_through_the_registry_with_utc_by_default() {
    let policy = build_policy(entry(), "windows: [{from: \"00:00\", to: \"24:00\"}]").expect("valid settings");
    assert_eq!(policy.hooks(), Hooks::REQUEST);
    let mut request = http::Request::get("/").body(()).expect("request").into_parts().0;
    assert!(matches!(run_request(&*policy, &mut request, &mut exchange_from("127.0.0.1:1")), Flow::Continue));
    let config: Config = serde_json::from_value(serde_json::json!({"windows": [{}]})).expect("settings");
    assert_eq!(config.time_zone, "UTC");
    assert_eq!(
        config.windows[0],
        WindowConfig { days: vec!["mon-sun".into()], from: "00:00".into(), to: "24:00".into() }
    );
}

#[test]
fn rejects_bad_settings_at_their_paths() {
    assert_eq!(
        errors("windows: []\ntime_zone: Mars/Olympus_Mons\nstatus: 302"),
        [
            "global_policies[0].allowed_hours.windows: give at least one window",
            "global_policies[0].allowed_hours.status: 302 is not an error status: use 400 to 599",
            "global_policies[0].allowed_hours.time_zone: `Mars/Olympus_Mons` is not a time zone of the IANA database: write a name such as `Europe/Istanbul` or `UTC`",
        ]
    );
    let found = errors(
        "windows:\n  - {days: [mon, funday, sat-xyz], from: \"8:0\", to: \"25:00\"}\n  - {days: []}\n  - {from: \"24:00\"}\n  - {from: \"09:00\", to: \"09:00:00\"}",
    );
    let paths: Vec<&str> = found.iter().map(|error| error.split(": ").next().unwrap_or_default()).collect();
    assert_eq!(
        paths,
        [
            "global_policies[0].allowed_hours.windows[1].days",
            "global_policies[0].allowed_hours.windows[0].days[1]",
            "global_policies[0].allowed_hours.windows[0].days[2]",
            "global_policies[0].allowed_hours.windows[0].from",
            "global_policies[0].allowed_hours.windows[0].to",
            "global_policies[0].allowed_hours.windows[2].from",
            "global_policies[0].allowed_hours.windows[3].to",
        ],
        "{found:#?}"
    );
    let unknown = build_policy_error(entry(), "windows: [{day: [mon]}]");
    assert!(unknown.0[0].path.to_string().starts_with("global_policies[0].allowed_hours.windows[0]"), "{unknown}");
}
