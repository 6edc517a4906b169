#![doc = include_str!("scopes.md")]

use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::identity::{forbidden, quoted, unauthorized};
use gantry_policy_api::{
    BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, RequestParts, Stage, Validate,
};
use http::header::WWW_AUTHENTICATE;
use http::{HeaderValue, Method};
use schemars::JsonSchema;
use serde::Deserialize;

/// Settings of `scopes`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Per-method requirements, the first rule listing the request's method applies.
    #[serde(default)]
    pub rules: Vec<ScopeRule>,
    /// Scopes required for a method no rule lists. Without it, such a method is refused.
    #[serde(default)]
    pub require: Option<Vec<String>>,
    /// Whether a token needs `all` the required scopes or `any` one of them.
    #[serde(default, rename = "match")]
    pub match_mode: MatchMode,
    /// Realm named in the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
}

/// Scopes required for some methods.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeRule {
    /// Methods the rule is for, upper case (`GET`, `POST`).
    pub methods: Vec<String>,
    /// Scopes required.
    pub require: Vec<String>,
}

/// How required scopes combine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MatchMode {
    /// Every required scope must be granted.
    #[default]
    All,
    /// One of the required scopes is enough.
    Any,
}

fn default_realm() -> String {
    "gantry".to_owned()
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.rules.is_empty() && self.require.is_none() {
            errors.push(path.clone(), "give `rules`, `require` or both");
        }
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.methods.is_empty() {
                errors.push(path.key("rules").index(index).key("methods"), "list at least one method");
            }
            check_scopes(&rule.require, &path.key("rules").index(index).key("require"), errors);
        }
        if let Some(require) = &self.require {
            check_scopes(require, &path.key("require"), errors);
        }
        if HeaderValue::from_str(&quoted(&self.realm)).is_err() {
            errors.push(path.key("realm"), "must be printable text without line breaks");
        }
    }
}

/// RFC 6749 §3.3: a scope token is printable ASCII without spaces, `"` or `\`.
fn check_scopes(scopes: &[String], path: &FieldPath, errors: &mut ConfigErrors) {
    if scopes.is_empty() {
        errors.push(path.clone(), "list at least one scope");
    }
    for (index, scope) in scopes.iter().enumerate() {
        let is_token = !scope.is_empty()
            && scope.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !is_token {
            errors.push(
                path.index(index),
                format!("`{scope}` is not a scope: printable characters, no spaces, quotes or backslashes"),
            );
        }
    }
}

/// Factory of the `scopes` policy.
#[derive(Debug)]
pub struct Scopes;

impl PolicyFactory for Scopes {
    const NAME: &'static str = "scopes";
    const STAGE: Stage = Stage::Access;
    const DOCS: &'static str = include_str!("scopes.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let mut rules = Vec::with_capacity(config.rules.len());
        for (index, rule) in config.rules.iter().enumerate() {
            let mut methods = Vec::with_capacity(rule.methods.len());
            for (at, method) in rule.methods.iter().enumerate() {
                match Method::from_bytes(method.as_bytes()) {
                    Ok(parsed) if method.bytes().all(|b| !b.is_ascii_lowercase()) => methods.push(parsed),
                    _ => errors.push(
                        path.key("rules").index(index).key("methods").index(at),
                        format!("`{method}` is not an upper-case method name"),
                    ),
                }
            }
            rules.push(CompiledRule::new(methods, &rule.require, &config.realm));
        }
        errors.into_result(())?;
        Ok(Arc::new(CompiledScopes {
            fallback: config.require.as_ref().map(|require| CompiledRule::new(Vec::new(), require, &config.realm)),
            rules,
            match_mode: config.match_mode,
            challenge: format!("Bearer realm={}", quoted(&config.realm)),
        }))
    }
}

/// A rule with its refusal challenge made once.
struct CompiledRule {
    methods: Vec<Method>,
    require: Vec<String>,
    /// RFC 6750 §3.1: `insufficient_scope` with the scopes needed.
    challenge: Option<HeaderValue>,
}

impl CompiledRule {
    fn new(methods: Vec<Method>, require: &[String], realm: &str) -> Self {
        let challenge = format!(
            "Bearer realm={}, error=\"insufficient_scope\", scope={}",
            quoted(realm),
            quoted(&require.join(" "))
        );
        Self { methods, require: require.to_vec(), challenge: HeaderValue::from_str(&challenge).ok() }
    }
}

/// Runs per request: a scan of a few short lists.
struct CompiledScopes {
    rules: Vec<CompiledRule>,
    fallback: Option<CompiledRule>,
    match_mode: MatchMode,
    challenge: String,
}

impl CompiledScopes {
    fn rule_for(&self, method: &Method) -> Option<&CompiledRule> {
        self.rules.iter().find(|rule| rule.methods.contains(method)).or(self.fallback.as_ref())
    }
}

impl Policy for CompiledScopes {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        let Some(identity) = &exchange.identity else {
            return unauthorized(&self.challenge, "missing-token", "the request carries no token").into();
        };
        let Some(rule) = self.rule_for(&request.method) else {
            return forbidden("method-not-allowed-by-scopes", "no scope rule allows this method").into();
        };
        let is_granted = |scope: &String| identity.scopes.iter().any(|granted| granted == scope);
        let satisfied = match self.match_mode {
            MatchMode::All => rule.require.iter().all(is_granted),
            MatchMode::Any => rule.require.iter().any(is_granted),
        };
        if satisfied {
            return Flow::Continue.into();
        }
        tracing::debug!(consumer = %identity.consumer.id, "token lacks the required scopes");
        let mut response = forbidden("insufficient-scope", "the token lacks the scopes this request requires");
        if let Some(challenge) = &rule.challenge {
            response.headers_mut().insert(WWW_AUTHENTICATE, challenge.clone());
        }
        response.into()
    }
}

#[cfg(test)]
mod tests {
    use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, run_request};
    use gantry_policy_api::{Consumer, Identity, RegisteredPolicy};
    use http::StatusCode;

    use super::*;

    fn policy(settings: &str) -> Arc<dyn Policy> {
        build_policy(RegisteredPolicy::of::<Scopes>(), settings).unwrap_or_else(|errors| panic!("{errors}"))
    }

    fn answer(policy: &dyn Policy, method: Method, scopes: Option<&[&str]>) -> Option<http::Response<bytes::Bytes>> {
        let mut request = http::Request::builder().method(method).uri("/").body(()).expect("request").into_parts().0;
        let mut exchange = exchange_from("127.0.0.1:1");
        if let Some(scopes) = scopes {
            let mut identity = Identity::credential(Arc::new(Consumer::named("app")), "app".into(), "jwt");
            identity.scopes = scopes.iter().map(|scope| (*scope).to_owned()).collect();
            exchange.authenticate(identity);
        }
        match run_request(policy, &mut request, &mut exchange) {
            Flow::Continue => None,
            Flow::Respond(response) => Some(response),
        }
    }

    const ORDERS: &str = "rules:\n  - {methods: [GET, HEAD], require: [orders:read]}\n  - {methods: [POST, DELETE], require: [orders:write, orders:admin]}\n";

    #[test]
    fn applies_the_rule_of_the_request_method() {
        let policy = policy(ORDERS);
        assert!(answer(&*policy, Method::GET, Some(&["orders:read"])).is_none());
        assert!(answer(&*policy, Method::POST, Some(&["orders:write", "orders:admin", "x"])).is_none());
        let refused = answer(&*policy, Method::POST, Some(&["orders:read", "orders:write"])).expect("refused");
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            refused.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"gantry\", error=\"insufficient_scope\", scope=\"orders:write orders:admin\""
        );
    }

    #[test]
    fn refuses_a_method_no_rule_lists_unless_a_fallback_is_given() {
        let strict = policy(ORDERS);
        let refused = answer(&*strict, Method::PUT, Some(&["orders:write"])).expect("refused");
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let with_fallback = policy(&format!("{ORDERS}require: [orders:write]\n"));
        assert!(answer(&*with_fallback, Method::PUT, Some(&["orders:write"])).is_none());
    }

    #[test]
    fn any_mode_needs_one_scope_only() {
        let policy = policy("require: [a, b]\nmatch: any\n");
        assert!(answer(&*policy, Method::GET, Some(&["b"])).is_none());
        assert!(answer(&*policy, Method::GET, Some(&["c"])).is_some());
    }

    #[test]
    fn asks_for_a_token_when_no_identity_was_recognised() {
        let refused = answer(&*policy("require: [a]"), Method::GET, None).expect("refused");
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(refused.headers()[WWW_AUTHENTICATE], "Bearer realm=\"gantry\"");
    }

    #[test]
    fn rejects_bad_settings_at_their_path() {
        let found: Vec<String> = build_policy_error(
            RegisteredPolicy::of::<Scopes>(),
            "rules:\n  - {methods: [get], require: [\"has space\"]}\n  - {methods: [], require: []}\n",
        )
        .iter()
        .map(|error| format!("{}: {}", error.path, error.message))
        .collect();
        let at =
            |path: &str| found.iter().any(|error| error.starts_with(&format!("global_policies[0].scopes.{path}: ")));
        assert!(at("rules[0].require[0]"), "{found:?}");
        assert!(at("rules[0].methods[0]"), "{found:?}");
        assert!(at("rules[1].methods"), "{found:?}");
        assert!(at("rules[1].require"), "{found:?}");
        assert!(build_policy_error(RegisteredPolicy::of::<Scopes>(), "match: all").iter().count() == 1);
    }
}
