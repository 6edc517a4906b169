#![doc = include_str!("response_headers.md")]

use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::{BuildContext, Exchange, Hooks, Policy, PolicyFactory, ResponseParts, Stage};

use super::header_ops::{HeaderOps, HeaderOpsConfig};

/// Settings of `response_headers`: the header operations shared with `request_headers`.
pub type Config = HeaderOpsConfig;

/// Factory of the `response_headers` policy.
#[derive(Debug)]
pub struct ResponseHeaders;

impl PolicyFactory for ResponseHeaders {
    const NAME: &'static str = "response_headers";
    const STAGE: Stage = Stage::Transform;
    const DOCS: &'static str = include_str!("response_headers.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        Ok(Arc::new(CompiledResponseHeaders { ops: HeaderOps::build(&config, path)? }))
    }
}

/// Runs per response: applies pre-parsed operations to the response head.
struct CompiledResponseHeaders {
    ops: HeaderOps,
}

impl Policy for CompiledResponseHeaders {
    fn hooks(&self) -> Hooks {
        Hooks::RESPONSE
    }

    fn on_response(&self, response: &mut ResponseParts, _: &mut Exchange) {
        self.ops.apply(&mut response.headers);
    }
}

#[cfg(test)]
mod tests {
    use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, run_response};
    use gantry_policy_api::RegisteredPolicy;

    use super::*;

    fn entry() -> RegisteredPolicy {
        RegisteredPolicy::of::<ResponseHeaders>()
    }

    #[test]
    fn changes_the_response_headers_and_keeps_the_status() {
        let policy = build_policy(
            entry(),
            "rename: {X-Upstream-Time: X-Backend-Time}\nremove: [Server]\nset: {Cache-Control: no-store}\nadd: {Vary: Origin}",
        )
        .expect("valid settings");
        let response = http::Response::builder()
            .status(201)
            .header("x-upstream-time", "12ms")
            .header("server", "nginx")
            .header("cache-control", "public")
            .header("vary", "Accept")
            .body(())
            .expect("response");
        let parts = run_response(&*policy, response, &mut exchange_from("10.0.0.1:5000"));
        assert_eq!(parts.status, 201);
        assert_eq!(parts.headers["x-backend-time"], "12ms");
        assert!(parts.headers.get("x-upstream-time").is_none());
        assert!(parts.headers.get("server").is_none());
        assert_eq!(parts.headers["cache-control"], "no-store");
        let vary: Vec<_> = parts.headers.get_all("vary").iter().collect();
        assert_eq!(vary, ["Accept", "Origin"]);
    }

    #[test]
    fn implements_only_the_response_hook() {
        let policy = build_policy(entry(), "remove: [server]").expect("valid settings");
        assert_eq!(policy.hooks(), Hooks::RESPONSE);
    }

    #[test]
    fn rejects_an_invalid_value_at_its_path() {
        let errors = build_policy_error(entry(), "set: {x-a: \"line\\nbreak\"}");
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(errors.0[0].path.to_string(), "global_policies[0].response_headers.set.x-a");
    }

    #[test]
    fn rejects_changing_transfer_encoding() {
        let errors = build_policy_error(entry(), "remove: [Transfer-Encoding]");
        assert_eq!(errors.0[0].path.to_string(), "global_policies[0].response_headers.remove[0]");
        assert!(errors.0[0].message.contains("managed by the gateway"), "{errors}");
    }
}
