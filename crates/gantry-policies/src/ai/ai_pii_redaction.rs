#![doc = include_str!("ai_pii_redaction.md")]

mod redactor;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, RequestParts, Stage, Validate,
};
use schemars::JsonSchema;
use serde::Deserialize;

use self::redactor::{Check, Detector, PiiAnswerFilter, Redactor};
use super::prompt;
use super::AnswerFilters;

/// Settings of `ai_pii_redaction`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The built-in kinds of personal data looked for; all of them by default.
    #[serde(default = "all_kinds")]
    pub detectors: Vec<Kind>,
    /// More kinds, each a name and a regular expression.
    #[serde(default)]
    pub custom_patterns: Vec<CustomPattern>,
    /// What happens to personal data in the prompt: `redact` (replaced before the provider
    /// sees it), `block` (the request is answered 400) or `keep`.
    #[serde(default)]
    pub request: RequestMode,
    /// What happens to personal data in the answer: `redact` (replaced before the client sees
    /// it, streamed answers too) or `keep`.
    #[serde(default)]
    pub response: ResponseMode,
    /// One text that replaces every match, instead of a placeholder naming its kind
    /// (`<EMAIL>`).
    #[serde(default)]
    pub mask: Option<String>,
    /// Largest request body read, in bytes; a longer one is answered 413.
    #[serde(default = "prompt::default_max_request_bytes")]
    pub max_request_bytes: u64,
}

/// A built-in kind of personal data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// E-mail addresses.
    Email,
    /// Payment card numbers (13 to 19 digits, spaced or not, passing the Luhn check).
    CreditCard,
    /// International bank account numbers (passing the mod 97 check).
    Iban,
    /// US Social Security numbers (`123-45-6789`).
    UsSsn,
    /// IPv4 addresses.
    Ipv4,
    /// Phone numbers: international (`+44 20 7946 0958`) or with at least 9 digits.
    Phone,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::CreditCard => "credit_card",
            Kind::Iban => "iban",
            Kind::UsSsn => "us_ssn",
            Kind::Ipv4 => "ipv4",
            Kind::Phone => "phone",
        }
    }

    fn pattern(self) -> (&'static str, Check) {
        match self {
            Kind::Email => (redactor::EMAIL, Check::None),
            Kind::CreditCard => (redactor::CREDIT_CARD, Check::Luhn),
            Kind::Iban => (redactor::IBAN, Check::Iban),
            Kind::UsSsn => (redactor::US_SSN, Check::Ssn),
            Kind::Ipv4 => (redactor::IPV4, Check::None),
            Kind::Phone => (redactor::PHONE, Check::Phone),
        }
    }

    /// The order matches are preferred in when two start at the same place with the same
    /// length (`123-45-6789` is an SSN before it is a phone number).
    const PRIORITY: [Kind; 6] = [Kind::Email, Kind::CreditCard, Kind::Iban, Kind::UsSsn, Kind::Ipv4, Kind::Phone];
}

fn all_kinds() -> Vec<Kind> {
    Kind::PRIORITY.to_vec()
}

/// A kind of personal data of the operator's own.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomPattern {
    /// Its name (`employee_id`): snake_case, unique; the placeholder is its upper case
    /// (`<EMPLOYEE_ID>`).
    pub name: String,
    /// A regular expression (Rust `regex` syntax) matching one value.
    pub pattern: String,
}

/// What happens to personal data in the prompt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestMode {
    /// Replaced by placeholders before the provider sees it.
    #[default]
    Redact,
    /// The request is answered 400, naming the kinds found.
    Block,
    /// Left as it is.
    Keep,
}

/// What happens to personal data in the answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResponseMode {
    /// Replaced by placeholders before the client sees it.
    #[default]
    Redact,
    /// Left as it is.
    Keep,
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.detectors.is_empty() && self.custom_patterns.is_empty() {
            errors.push(path.key("detectors"), "give at least one detector or custom pattern");
        }
        if self.request == RequestMode::Keep && self.response == ResponseMode::Keep {
            errors.push(path.clone(), "`request` and `response` are both `keep`: nothing is redacted");
        }
        let mut seen = HashSet::new();
        for (index, kind) in self.detectors.iter().enumerate() {
            if !seen.insert(kind.name()) {
                errors.push(path.key("detectors").index(index), format!("`{}` is listed twice", kind.name()));
            }
        }
        for (index, custom) in self.custom_patterns.iter().enumerate() {
            let at = path.key("custom_patterns").index(index).key("name");
            let snake = custom.name.starts_with(|c: char| c.is_ascii_lowercase())
                && custom.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !snake {
                errors.push(at, "must be snake_case: lower-case letters, digits and `_`");
            } else if Kind::PRIORITY.iter().any(|kind| kind.name() == custom.name) || !seen.insert(&custom.name) {
                errors.push(at, format!("`{}` names another detector too", custom.name));
            }
        }
        if self.mask.as_deref() == Some("") {
            errors.push(path.key("mask"), "must not be empty");
        }
        if self.max_request_bytes == 0 {
            errors.push(path.key("max_request_bytes"), "must be at least 1");
        }
    }
}

/// Factory of the `ai_pii_redaction` policy.
#[derive(Debug)]
pub struct AiPiiRedaction;

impl PolicyFactory for AiPiiRedaction {
    const NAME: &'static str = "ai_pii_redaction";
    const STAGE: Stage = Stage::Transform;
    const DOCS: &'static str = include_str!("ai_pii_redaction.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let replacement = |name: &str| config.mask.clone().unwrap_or_else(|| format!("<{}>", name.to_uppercase()));
        let mut detectors = Vec::new();
        // Built-ins in their fixed priority, whatever order they are listed in.
        for kind in Kind::PRIORITY.iter().filter(|kind| config.detectors.contains(kind)) {
            let (pattern, check) = kind.pattern();
            match Detector::new(kind.name(), replacement(kind.name()), pattern, check) {
                Ok(detector) => detectors.push(detector),
                Err(err) => errors.push(path.key("detectors"), format!("`{}` does not compile: {err}", kind.name())),
            }
        }
        for (index, custom) in config.custom_patterns.iter().enumerate() {
            match Detector::new(&custom.name, replacement(&custom.name), &custom.pattern, Check::None) {
                Ok(detector) => detectors.push(detector),
                Err(err) => errors.push(
                    path.key("custom_patterns").index(index).key("pattern"),
                    format!("not a regular expression: {err}"),
                ),
            }
        }
        errors.into_result(Arc::new(CompiledPiiRedaction {
            redactor: Arc::new(Redactor { detectors }),
            request: config.request,
            response: config.response,
            max_request_bytes: config.max_request_bytes,
        }) as Arc<dyn Policy>)
    }
}

#[derive(Debug)]
struct CompiledPiiRedaction {
    redactor: Arc<Redactor>,
    request: RequestMode,
    response: ResponseMode,
    max_request_bytes: u64,
}

impl CompiledPiiRedaction {
    /// The prompt's personal data handled as configured: `Some(answer)` to refuse it.
    fn handle_prompt(&self, request: &mut RequestParts, exchange: &mut Exchange) -> Option<Flow> {
        if self.request == RequestMode::Keep {
            return None;
        }
        let mut body = match prompt::read_body(exchange) {
            prompt::Body::Json(body) => body,
            prompt::Body::Empty => return None,
            prompt::Body::Invalid(answer) => return Some(answer),
        };
        match self.request {
            RequestMode::Keep => None,
            RequestMode::Block => {
                let found = prompt::texts(&body).into_iter().find_map(|(at, text)| {
                    let kinds = self.redactor.kinds_in(&text);
                    (!kinds.is_empty()).then(|| format!("{} in {at}", kinds.join(", ")))
                })?;
                tracing::debug!(route = %exchange.route_id, found = %found, "prompt with personal data refused");
                Some(prompt::refuse(
                    &format!("the prompt contains personal data ({found}); remove it and send it again"),
                    "pii_detected",
                ))
            }
            RequestMode::Redact => {
                if prompt::rewrite_texts(&mut body, |text| self.redactor.redact(text)) {
                    prompt::replace_body(request, exchange, &body);
                }
                None
            }
        }
    }
}

impl Policy for CompiledPiiRedaction {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn reads_request_body(&self) -> bool {
        self.request != RequestMode::Keep
    }

    fn request_body_limit(&self, request: &RequestParts) -> Option<u64> {
        (self.request != RequestMode::Keep && prompt::has_prompt(request)).then_some(self.max_request_bytes)
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        if !prompt::has_prompt(request) {
            return Hook::Done(Flow::Continue);
        }
        if let Some(refusal) = self.handle_prompt(request, exchange) {
            return Hook::Done(refusal);
        }
        if self.response == ResponseMode::Redact {
            let filter = Arc::new(PiiAnswerFilter(self.redactor.clone()));
            exchange.extensions.get_or_insert_default::<AnswerFilters>().0.push(filter);
        }
        Hook::Done(Flow::Continue)
    }
}
