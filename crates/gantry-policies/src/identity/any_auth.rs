#![doc = include_str!("any_auth.md")]

use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath, PolicySpec};
use gantry_policy_api::identity::unauthorized;
use gantry_policy_api::problem::PROBLEM_JSON;
use gantry_policy_api::{
    BuildContext, Consumer, Exchange, Flow, Hook, Hooks, Identity, Policy, PolicyFactory, PolicyResponse, RequestParts,
    Stage, Validate,
};
use http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;

/// Settings of `any_auth`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity policies to try, in order; the first that recognises the request decides.
    pub methods: Vec<PolicySpec>,
    /// Consumer id that stands in when no method recognised the request and none was even
    /// attempted (no credentials of any kind); without it such requests get 401.
    #[serde(default)]
    pub anonymous_consumer: Option<String>,
}

impl Validate for Config {
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        if self.methods.len() < 2 {
            errors.push(path.key("methods"), "list at least two identity policies (for one, use it directly)");
        }
    }
}

/// Factory of the `any_auth` policy.
#[derive(Debug)]
pub struct AnyAuth;

impl PolicyFactory for AnyAuth {
    const NAME: &'static str = "any_auth";
    const STAGE: Stage = Stage::Identity;
    const DOCS: &'static str = include_str!("any_auth.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, context: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let mut methods = Vec::with_capacity(config.methods.len());
        for (index, method) in config.methods.iter().enumerate() {
            let at = path.key("methods").index(index);
            let Some(registered) = crate::registry::find(&method.name) else {
                errors.push(at, format!("unknown policy `{}`", method.name));
                continue;
            };
            if registered.stage != Stage::Identity || registered.name == AnyAuth::NAME {
                errors.push(at, format!("`{}` is not an identity policy", method.name));
                continue;
            }
            if method.config.get("anonymous_consumer").is_some() {
                errors.push(
                    at.key(&method.name).key("anonymous_consumer"),
                    "set `anonymous_consumer` on `any_auth` itself: a method's stand-in would end the search",
                );
                continue;
            }
            match registered.build(&method.config, &at.key(&method.name), context) {
                Ok(policy) => methods.push(policy),
                Err(more) => errors.extend(more.0),
            }
        }
        let anonymous = context.consumers.anonymous(config.anonymous_consumer.as_deref(), path, &mut errors);
        errors.into_result(())?;
        Ok(Arc::new(CompiledAnyAuth { methods, anonymous }))
    }
}

struct CompiledAnyAuth {
    methods: Vec<Arc<dyn Policy>>,
    anonymous: Option<Arc<Consumer>>,
}

impl Policy for CompiledAnyAuth {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, exchange: &'a mut Exchange) -> Hook<'a> {
        Hook::Wait(Box::pin(async move {
            let mut refusals = Vec::with_capacity(self.methods.len());
            for method in &self.methods {
                match method.on_request(request, exchange).resolve().await {
                    Flow::Continue => return Flow::Continue,
                    Flow::Respond(refusal) => refusals.push(refusal),
                }
            }
            if refusals.iter().all(is_missing_credentials) {
                if let Some(anonymous) = &self.anonymous {
                    exchange.authenticate(Identity::anonymous(anonymous.clone(), AnyAuth::NAME));
                    return Flow::Continue;
                }
            }
            Flow::Respond(combine(refusals))
        }))
    }
}

/// Whether a method's refusal says the request carried none of its credentials (as opposed
/// to wrong ones, or a method that could not check them).
fn is_missing_credentials(refusal: &PolicyResponse) -> bool {
    refusal.status() == StatusCode::UNAUTHORIZED && problem_type(refusal).is_some_and(|kind| kind.contains("/missing-"))
}

fn problem_type(response: &PolicyResponse) -> Option<String> {
    let is_problem =
        response.headers().get(CONTENT_TYPE).is_some_and(|value| value.as_bytes() == PROBLEM_JSON.as_bytes());
    if !is_problem {
        return None;
    }
    let problem: serde_json::Value = serde_json::from_slice(response.body()).ok()?;
    problem.get("type")?.as_str().map(str::to_owned)
}

/// One answer for every refusal: the first that is about presented credentials (a wrong key
/// says more than "no token"), else a 401 listing every method's challenge (RFC 9110 §11.6.1
/// allows several).
fn combine(refusals: Vec<PolicyResponse>) -> PolicyResponse {
    let challenges: Vec<_> =
        refusals.iter().flat_map(|refusal| refusal.headers().get_all(WWW_AUTHENTICATE).iter().cloned()).collect();
    let chosen = refusals.iter().position(|refusal| !is_missing_credentials(refusal));
    let mut response = match chosen {
        Some(position) => refusals.into_iter().nth(position).unwrap_or_else(no_credentials),
        None => no_credentials(),
    };
    if response.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().remove(WWW_AUTHENTICATE);
        for challenge in challenges {
            response.headers_mut().append(WWW_AUTHENTICATE, challenge);
        }
    }
    response
}

fn no_credentials() -> PolicyResponse {
    // The challenges are added by `combine`.
    let mut response =
        unauthorized("", "missing-credentials", "the request carries no credentials of an accepted kind");
    response.headers_mut().remove(WWW_AUTHENTICATE);
    response
}

#[cfg(test)]
mod tests;
