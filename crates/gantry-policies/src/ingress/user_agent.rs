#![doc = include_str!("user_agent.md")]

use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::problem::problem_response;
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, PolicyResponse, RequestParts, Stage, Validate,
};
use http::header::USER_AGENT;
use http::StatusCode;
use regex::bytes::{RegexBuilder, RegexSet, RegexSetBuilder};
use schemars::JsonSchema;
use serde::Deserialize;

/// Settings of `user_agent`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// User agents allowed. Alone, every other user agent is refused; with `deny`, these are
    /// the exceptions to it.
    #[serde(default)]
    pub allow: Vec<String>,
    /// User agents refused (unless they match `allow`).
    #[serde(default)]
    pub deny: Vec<String>,
    /// How the patterns are written: `wildcard` (the whole value, `*` for any text) or
    /// `regex` (a regular expression found anywhere in the value).
    #[serde(default)]
    pub syntax: PatternSyntax,
    /// Whether letter case must match; by default `*Bot*` also matches `googlebot`.
    #[serde(default)]
    pub case_sensitive: bool,
    /// What a request without a `User-Agent` (or with an empty one) gets: `match` checks it
    /// as an empty value against the lists, `allow` lets it through, `deny` refuses it.
    #[serde(default)]
    pub missing: MissingUserAgent,
    /// Status of the refusal, from 400 to 599.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Text of the refusal's problem document (its `detail`).
    #[serde(default = "default_message")]
    pub message: String,
}

/// How `user_agent` patterns are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PatternSyntax {
    /// The whole value, with `*` for any text: `curl/*`, `*bot*`, `Mozilla/5.0 (compatible)`.
    #[default]
    Wildcard,
    /// A regular expression (Rust `regex` syntax) found anywhere in the value; anchor it with
    /// `^` and `$` to match the whole value.
    Regex,
}

/// What `user_agent` does with a request that has no `User-Agent`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissingUserAgent {
    /// Checked as an empty value against the lists.
    #[default]
    Match,
    /// Let through, whatever the lists say.
    Allow,
    /// Refused.
    Deny,
}

fn default_status() -> u16 {
    403
}

fn default_message() -> String {
    "Your client is not allowed".to_owned()
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.allow.is_empty() && self.deny.is_empty() && self.missing != MissingUserAgent::Deny {
            errors.push(path.clone(), "give `allow`, `deny`, or `missing: deny`");
        }
        if !(400..=599).contains(&self.status) {
            errors.push(path.key("status"), format!("{} is not an error status: use 400 to 599", self.status));
        }
    }
}

/// Factory of the `user_agent` policy.
#[derive(Debug)]
pub struct UserAgent;

impl PolicyFactory for UserAgent {
    const NAME: &'static str = "user_agent";
    // Before identity, like `ip_restriction`: a refused client must not make the gateway check
    // its credentials, nor learn from a 401 or 403 whether its guess was right.
    const STAGE: Stage = Stage::Ingress;
    const DOCS: &'static str = include_str!("user_agent.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let allow = compile(&config.allow, &config, &path.key("allow"), &mut errors);
        let deny = compile(&config.deny, &config, &path.key("deny"), &mut errors);
        // `validate` has reported a status outside 400 to 599; this default is never served then.
        let status = StatusCode::from_u16(config.status).unwrap_or(StatusCode::FORBIDDEN);
        errors.into_result(())?;
        Ok(Arc::new(CompiledUserAgent { allow, deny, missing: config.missing, status, message: config.message }))
    }
}

/// Compiles `patterns` into one set, reporting each bad pattern at its own path; `None` for
/// an empty list.
fn compile(patterns: &[String], config: &Config, path: &FieldPath, errors: &mut ConfigErrors) -> Option<RegexSet> {
    if patterns.is_empty() {
        return None;
    }
    let expressions: Vec<String> = match config.syntax {
        PatternSyntax::Wildcard => patterns.iter().map(|pattern| wildcard_regex(pattern)).collect(),
        PatternSyntax::Regex => patterns.to_vec(),
    };
    let mut valid = true;
    for (index, expression) in expressions.iter().enumerate() {
        // Checked one by one so that each problem gets its path; the set says only that one failed.
        if let Err(err) = RegexBuilder::new(expression).case_insensitive(!config.case_sensitive).build() {
            errors.push(path.index(index), format!("not a valid regular expression: {}", first_line(&err.to_string())));
            valid = false;
        }
    }
    if !valid {
        return None;
    }
    match RegexSetBuilder::new(&expressions).case_insensitive(!config.case_sensitive).build() {
        Ok(set) => Some(set),
        Err(err) => {
            errors.push(path.clone(), format!("the patterns together are too large: {}", first_line(&err.to_string())));
            None
        }
    }
}

/// `curl/*` as `^curl/(?s-u:.*)$`: literal text, and `*` for any bytes (a header value need
/// not be UTF-8).
fn wildcard_regex(pattern: &str) -> String {
    let parts: Vec<String> = pattern.split('*').map(regex::escape).collect();
    format!("^{}$", parts.join("(?s-u:.*)"))
}

fn first_line(text: &str) -> &str {
    text.lines().find(|line| !line.trim().is_empty()).unwrap_or(text).trim()
}

/// Runs per request: one header lookup and at most two automaton scans of its value; no
/// allocation unless refusing.
struct CompiledUserAgent {
    allow: Option<RegexSet>,
    deny: Option<RegexSet>,
    missing: MissingUserAgent,
    status: StatusCode,
    message: String,
}

impl CompiledUserAgent {
    /// Whether one `User-Agent` value (empty when there is none) is allowed by the lists.
    fn allows(&self, value: &[u8]) -> bool {
        let allowed = self.allow.as_ref().map(|allow| allow.is_match(value));
        if allowed == Some(true) {
            return true;
        }
        match &self.deny {
            // With both lists, `allow` holds the exceptions to `deny`.
            Some(deny) => !deny.is_match(value),
            None => allowed.is_none(),
        }
    }

    fn refuse(&self, detail: &str) -> PolicyResponse {
        problem_response(self.status, "user-agent-denied", "User agent denied", Some(detail))
    }
}

impl Policy for CompiledUserAgent {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, _: &'a mut Exchange) -> Hook<'a> {
        let values = request.headers.get_all(USER_AGENT);
        let is_missing = values.iter().all(|value| value.as_bytes().trim_ascii().is_empty());
        if is_missing {
            return match self.missing {
                MissingUserAgent::Allow => Hook::Done(Flow::Continue),
                MissingUserAgent::Deny => {
                    tracing::debug!("request without a user agent refused by user_agent");
                    self.refuse("the request has no User-Agent header").into()
                }
                MissingUserAgent::Match if self.allows(b"") => Hook::Done(Flow::Continue),
                MissingUserAgent::Match => self.refuse(&self.message).into(),
            };
        }
        // Every value must pass, so a second header cannot hide a refused one.
        if values.iter().all(|value| self.allows(value.as_bytes())) {
            return Hook::Done(Flow::Continue);
        }
        tracing::debug!("user agent refused by user_agent");
        self.refuse(&self.message).into()
    }
}

#[cfg(test)]
mod tests {
    use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, run_request};
    use gantry_policy_api::RegisteredPolicy;

    use super::*;

    fn entry() -> RegisteredPolicy {
        RegisteredPolicy::of::<UserAgent>()
    }

    fn policy(settings: &str) -> Arc<dyn Policy> {
        build_policy(entry(), settings).unwrap_or_else(|errors| panic!("{errors}"))
    }

    /// The status answered to a request with these `User-Agent` values, `None` when it goes on.
    fn answer(policy: &dyn Policy, user_agents: &[&[u8]]) -> Option<(StatusCode, serde_json::Value)> {
        let mut request = http::Request::get("/");
        for value in user_agents {
            request = request.header(USER_AGENT, http::HeaderValue::from_bytes(value).expect("header value"));
        }
        let mut parts = request.body(()).expect("request").into_parts().0;
        match run_request(policy, &mut parts, &mut exchange_from("127.0.0.1:1")) {
            Flow::Continue => None,
            Flow::Respond(response) => {
                let problem = serde_json::from_slice(response.body()).expect("problem json");
                Some((response.status(), problem))
            }
        }
    }

    fn status_of(policy: &dyn Policy, user_agent: &str) -> Option<StatusCode> {
        answer(policy, &[user_agent.as_bytes()]).map(|(status, _)| status)
    }

    fn errors(settings: &str) -> Vec<String> {
        build_policy_error(entry(), settings).iter().map(|error| format!("{}: {}", error.path, error.message)).collect()
    }

    #[test]
    fn refuses_user_agents_matching_a_deny_wildcard_with_a_403_problem() {
        let policy = policy("deny: [\"curl/*\", \"*bot*\", python-requests/2.31.0]");
        let (status, problem) = answer(&*policy, &[b"curl/8.5.0"]).expect("refused");
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(problem["type"], "https://gantry.dev/problems/user-agent-denied");
        assert_eq!(problem["detail"], "Your client is not allowed");
        for refused in ["Mozilla/5.0 (compatible; Googlebot/2.1)", "python-requests/2.31.0", "bot"] {
            assert_eq!(status_of(&*policy, refused), Some(StatusCode::FORBIDDEN), "{refused}");
        }
        for allowed in ["Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0", "python-requests/2.32.0", "xcurl/8"] {
            assert_eq!(status_of(&*policy, allowed), None, "{allowed}");
        }
    }

    #[test]
    fn ignores_letter_case_unless_asked_to_respect_it() {
        let loose = policy("deny: [\"*bot*\"]");
        assert_eq!(status_of(&*loose, "GoogleBot/2.1"), Some(StatusCode::FORBIDDEN));
        let strict = policy("deny: [\"*bot*\"]\ncase_sensitive: true");
        assert_eq!(status_of(&*strict, "GoogleBot/2.1"), None);
        assert_eq!(status_of(&*strict, "googlebot/2.1"), Some(StatusCode::FORBIDDEN));
    }

    #[test]
    fn refuses_every_user_agent_not_in_an_allow_list_given_alone() {
        let policy = policy("allow: [\"MyApp/*\", \"MyApp-iOS/*\"]");
        assert_eq!(status_of(&*policy, "MyApp/3.2 (Android 14)"), None);
        assert_eq!(status_of(&*policy, "myapp-ios/3.2"), None);
        assert_eq!(status_of(&*policy, "curl/8.5.0"), Some(StatusCode::FORBIDDEN));
        assert_eq!(
            status_of(&*policy, "NotMyApp/3.2"),
            Some(StatusCode::FORBIDDEN),
            "a wildcard matches the whole value"
        );
    }

    #[test]
    fn lets_allow_patterns_make_exceptions_to_deny_when_both_are_given() {
        let policy = policy("deny: [\"*bot*\"]\nallow: [\"*Googlebot*\"]");
        assert_eq!(status_of(&*policy, "Mozilla/5.0 (compatible; Googlebot/2.1)"), None);
        assert_eq!(status_of(&*policy, "Mozilla/5.0 (compatible; AhrefsBot/7.0)"), Some(StatusCode::FORBIDDEN));
        assert_eq!(status_of(&*policy, "Mozilla/5.0 Firefox/128.0"), None, "neither list: goes on");
    }

    #[test]
    fn finds_regular_expressions_anywhere_in_the_value() {
        let policy = policy("syntax: regex\ndeny: [\"(?:crawler|spider)\", \"^Wget/\\\\d\"]");
        assert_eq!(status_of(&*policy, "SomeCrawler/1.0"), Some(StatusCode::FORBIDDEN));
        assert_eq!(status_of(&*policy, "Wget/1.21"), Some(StatusCode::FORBIDDEN));
        assert_eq!(status_of(&*policy, "NotWget/1.21"), None, "anchored with ^");
        assert_eq!(status_of(&*policy, "Mozilla/5.0"), None);
    }

    #[test]
    fn handles_missing_user_agents_as_configured() {
        let matched = policy("deny: [\"\"]");
        assert_eq!(
            answer(&*matched, &[]).map(|(status, _)| status),
            Some(StatusCode::FORBIDDEN),
            "`\"\"` matches a missing value"
        );
        assert_eq!(answer(&*matched, &[b"  "]).map(|(status, _)| status), Some(StatusCode::FORBIDDEN), "blank is none");
        let allow_list = policy("allow: [\"MyApp/*\"]");
        assert!(answer(&*allow_list, &[]).is_some(), "an empty value is not in the allow list");
        let bypass = policy("allow: [\"MyApp/*\"]\nmissing: allow");
        assert!(answer(&*bypass, &[]).is_none());
        let deny = policy("missing: deny");
        let (status, problem) = answer(&*deny, &[]).expect("refused");
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(problem["detail"], "the request has no User-Agent header");
        assert!(answer(&*deny, &[b"anything"]).is_none(), "with no lists, only a missing value is refused");
    }

    #[test]
    fn refuses_a_request_when_any_of_its_user_agent_values_is_refused() {
        let policy = policy("deny: [\"curl/*\"]");
        assert!(answer(&*policy, &[b"Mozilla/5.0", b"curl/8.5.0"]).is_some());
        assert!(answer(&*policy, &[b"Mozilla/5.0", b"Firefox"]).is_none());
    }

    #[test]
    fn matches_user_agents_that_are_not_utf8() {
        let policy = policy("deny: [\"evil*\"]");
        assert!(answer(&*policy, &[b"evil\xff\xfe"]).is_some());
        assert!(answer(&*policy, &[b"good\xff"]).is_none());
    }

    #[test]
    fn answers_with_the_configured_status_and_message() {
        let policy = policy("deny: [\"*\"]\nstatus: 404\nmessage: Not here");
        let (status, problem) = answer(&*policy, &[b"x"]).expect("refused");
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(problem["detail"], "Not here");
        assert_eq!(problem["status"], 404);
    }

    #[test]
    fn treats_regex_characters_in_wildcards_literally() {
        let policy = policy("deny: [\"Mozilla/5.0 (compatible; *)\"]");
        assert!(answer(&*policy, &[b"Mozilla/5.0 (compatible; X)"]).is_some());
        assert!(answer(&*policy, &[b"Mozilla/5.0 compatible; X"]).is_none());
    }

    #[test]
    fn rejects_bad_settings_at_their_paths() {
        assert_eq!(errors(""), ["global_policies[0].user_agent: give `allow`, `deny`, or `missing: deny`"]);
        assert_eq!(
            errors("deny: [x]\nstatus: 200"),
            ["global_policies[0].user_agent.status: 200 is not an error status: use 400 to 599"]
        );
        let found = errors("syntax: regex\nallow: [ok, \"(unclosed\"]\ndeny: [\"[z-a]\"]");
        let paths: Vec<&str> = found.iter().map(|error| error.split(": ").next().unwrap_or_default()).collect();
        assert_eq!(paths, ["global_policies[0].user_agent.allow[1]", "global_policies[0].user_agent.deny[0]"]);
        assert!(found[0].contains("not a valid regular expression"), "{found:?}");
        let unknown = build_policy_error(entry(), "deny: [x]\nsyntax: glob");
        assert!(unknown.0[0].path.to_string().starts_with("global_policies[0].user_agent.syntax"), "{unknown}");
    }
}
