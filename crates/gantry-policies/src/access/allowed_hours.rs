#![doc = include_str!("allowed_hours.md")]

use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, RequestParts, Stage, Validate,
};
use http::StatusCode;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use schemars::JsonSchema;
use serde::Deserialize;

/// Settings of `allowed_hours`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// When requests are allowed; outside every window they are refused.
    pub windows: Vec<WindowConfig>,
    /// The IANA time zone the windows are written in (`Europe/Istanbul`, `America/New_York`).
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// Status of the refusal, from 400 to 599.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Text of the refusal's problem document (its `detail`).
    #[serde(default = "default_message")]
    pub message: String,
}

/// Settings of one window of `allowed_hours.windows`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Days the window opens on: `mon` to `sun` (or full names), and ranges such as
    /// `mon-fri` or `fri-mon`.
    #[serde(default = "every_day")]
    pub days: Vec<String>,
    /// Local time the window opens, `HH:MM` or `HH:MM:SS` (`8:00` works too).
    #[serde(default = "start_of_day")]
    pub from: String,
    /// Local time the window closes (not included), `HH:MM`, `HH:MM:SS` or `24:00`. Earlier
    /// than `from`: the window crosses midnight and closes the next day.
    #[serde(default = "end_of_day")]
    pub to: String,
}

fn every_day() -> Vec<String> {
    vec!["mon-sun".to_owned()]
}

fn start_of_day() -> String {
    "00:00".to_owned()
}

fn end_of_day() -> String {
    "24:00".to_owned()
}

fn default_time_zone() -> String {
    "UTC".to_owned()
}

fn default_status() -> u16 {
    403
}

fn default_message() -> String {
    "Requests are not accepted at this time".to_owned()
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.windows.is_empty() {
            errors.push(path.key("windows"), "give at least one window");
        }
        for (index, window) in self.windows.iter().enumerate() {
            if window.days.is_empty() {
                errors.push(
                    path.key("windows").index(index).key("days"),
                    "give at least one day, or leave `days` out for every day",
                );
            }
        }
        if !(400..=599).contains(&self.status) {
            errors.push(path.key("status"), format!("{} is not an error status: use 400 to 599", self.status));
        }
    }
}

/// Factory of the `allowed_hours` policy.
#[derive(Debug)]
pub struct AllowedHours;

impl PolicyFactory for AllowedHours {
    const NAME: &'static str = "allowed_hours";
    // An access rule: after identity, so that a consumer may have hours of its own.
    const STAGE: Stage = Stage::Access;
    const DOCS: &'static str = include_str!("allowed_hours.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        Ok(Arc::new(CompiledAllowedHours::compile(config, path, Timestamp::now)?))
    }
}

/// Seconds since local midnight.
type DaySeconds = u32;

const DAY: DaySeconds = 24 * 60 * 60;

/// One window, parsed: a set of weekdays (bit 0 is Monday) and a span of local time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    days: u8,
    from: DaySeconds,
    to: DaySeconds,
}

impl Window {
    /// Whether the window is open on local `weekday` (0 is Monday) at local `time`.
    fn is_open(&self, weekday: u8, time: DaySeconds) -> bool {
        let opens_on = |day: u8| self.days & (1 << day) != 0;
        if self.from < self.to {
            return opens_on(weekday) && (self.from..self.to).contains(&time);
        }
        // Crossing midnight: the evening part belongs to the listed day, the morning part to
        // the day after it.
        let yesterday = (weekday + 6) % 7;
        (opens_on(weekday) && time >= self.from) || (opens_on(yesterday) && time < self.to)
    }
}

/// Runs per request: reads the clock, finds the local time by a binary search over the time
/// zone's transitions, and compares a few integers; allocates only to refuse.
struct CompiledAllowedHours {
    windows: Vec<Window>,
    time_zone: TimeZone,
    status: StatusCode,
    message: String,
    /// The current instant: the system clock, or a fixed one in tests.
    clock: fn() -> Timestamp,
}

impl CompiledAllowedHours {
    fn compile(config: Config, path: &FieldPath, clock: fn() -> Timestamp) -> Result<Self, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let mut windows = Vec::with_capacity(config.windows.len());
        for (index, window) in config.windows.iter().enumerate() {
            if let Some(window) = parse_window(window, &path.key("windows").index(index), &mut errors) {
                windows.push(window);
            }
        }
        let time_zone = match jiff::tz::db().get(config.time_zone.trim()) {
            Ok(time_zone) => Some(time_zone),
            Err(_) => {
                errors.push(
                    path.key("time_zone"),
                    format!(
                        "`{}` is not a time zone of the IANA database: write a name such as `Europe/Istanbul` or `UTC`",
                        config.time_zone
                    ),
                );
                None
            }
        };
        // `validate` has reported a status outside 400 to 599; this default is never served then.
        let status = StatusCode::from_u16(config.status).unwrap_or(StatusCode::FORBIDDEN);
        errors.into_result(())?;
        let time_zone = time_zone.unwrap_or(TimeZone::UTC);
        Ok(Self { windows, time_zone, status, message: config.message, clock })
    }

    /// Whether some window is open at `now`, in local time of the configured zone.
    fn is_open_at(&self, now: Timestamp) -> bool {
        let local = self.time_zone.to_datetime(now);
        // `to_monday_zero_offset` is 0 to 6.
        let weekday = local.weekday().to_monday_zero_offset().unsigned_abs();
        let time = u32::from(local.hour().unsigned_abs()) * 3600
            + u32::from(local.minute().unsigned_abs()) * 60
            + u32::from(local.second().unsigned_abs());
        self.windows.iter().any(|window| window.is_open(weekday, time))
    }
}

impl Policy for CompiledAllowedHours {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, _: &'a mut RequestParts, _: &'a mut Exchange) -> Hook<'a> {
        if self.is_open_at((self.clock)()) {
            return Hook::Done(Flow::Continue);
        }
        tracing::debug!("request refused outside allowed hours");
        problem_response(self.status, "outside-allowed-hours", "Outside allowed hours", Some(&self.message)).into()
    }
}

fn parse_window(window: &WindowConfig, path: &FieldPath, errors: &mut ConfigErrors) -> Option<Window> {
    let mut days = 0u8;
    let mut valid = true;
    for (index, entry) in window.days.iter().enumerate() {
        match parse_days(entry) {
            Ok(more) => days |= more,
            Err(reason) => {
                errors.push(path.key("days").index(index), reason);
                valid = false;
            }
        }
    }
    let from = parse_time(&window.from, false).map_err(|reason| errors.push(path.key("from"), reason)).ok();
    let to = parse_time(&window.to, true).map_err(|reason| errors.push(path.key("to"), reason)).ok();
    let (Some(from), Some(to)) = (from, to) else { return None };
    if from == to {
        errors.push(
            path.key("to"),
            "a window must not close when it opens: for a whole day, write `from: \"00:00\"` and `to: \"24:00\"`",
        );
        return None;
    }
    valid.then_some(Window { days, from, to })
}

/// `mon`, `monday`, or a range such as `mon-fri` (ranges may wrap: `fri-mon`), as a set of
/// weekdays with bit 0 for Monday.
fn parse_days(entry: &str) -> Result<u8, String> {
    let entry = entry.trim();
    let (first, last) = match entry.split_once('-') {
        Some((first, last)) => (weekday(first.trim()), weekday(last.trim())),
        None => (weekday(entry), weekday(entry)),
    };
    let (Some(first), Some(last)) = (first, last) else {
        return Err(format!("`{entry}` is not a day: use `mon` to `sun`, or a range such as `mon-fri`"));
    };
    let mut days = 0u8;
    let mut day = first;
    loop {
        days |= 1 << day;
        if day == last {
            return Ok(days);
        }
        day = (day + 1) % 7;
    }
}

/// A weekday's number, 0 for Monday, from its name or its first three letters.
fn weekday(name: &str) -> Option<u8> {
    const NAMES: [&str; 7] = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
    let name = name.to_ascii_lowercase();
    let position =
        NAMES.iter().position(|full| name == *full || (name.len() == 3 && full.starts_with(name.as_str())))?;
    u8::try_from(position).ok()
}

/// `HH:MM` or `HH:MM:SS` as seconds since midnight; `24:00` too when `may_end_day`.
fn parse_time(text: &str, may_end_day: bool) -> Result<DaySeconds, String> {
    let invalid = || format!("`{text}` is not a time: write `HH:MM` or `HH:MM:SS`, from `00:00` to `23:59:59`");
    let parts: Vec<&str> = text.trim().split(':').collect();
    if !(2..=3).contains(&parts.len())
        || parts.iter().enumerate().any(|(at, part)| {
            // `8:00` reads as well as `08:00`; minutes and seconds always have two digits.
            let digits = if at == 0 { 1..=2 } else { 2..=2 };
            !digits.contains(&part.len()) || !part.bytes().all(|b| b.is_ascii_digit())
        })
    {
        return Err(invalid());
    }
    let number = |at: usize| parts.get(at).map_or(Ok(0), |part| part.parse::<u32>()).map_err(|_| invalid());
    let (hours, minutes, seconds) = (number(0)?, number(1)?, number(2)?);
    if hours == 24 && minutes == 0 && seconds == 0 {
        return if may_end_day {
            Ok(DAY)
        } else {
            Err(format!("`{text}`: a window opens at `23:59:59` at the latest"))
        };
    }
    if hours > 23 || minutes > 59 || seconds > 59 {
        return Err(invalid());
    }
    Ok(hours * 3600 + minutes * 60 + seconds)
}

#[cfg(test)]
mod tests;
