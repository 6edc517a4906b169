#![doc = include_str!("request_headers.md")]

use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath};
use gantry_policy_api::{BuildContext, Exchange, Flow, Hook, Hooks, Policy, PolicyFactory, RequestParts, Stage};

use super::header_ops::{HeaderOps, HeaderOpsConfig};

/// Settings of `request_headers`: the header operations shared with `response_headers`.
pub type Config = HeaderOpsConfig;

/// Factory of the `request_headers` policy.
#[derive(Debug)]
pub struct RequestHeaders;

impl PolicyFactory for RequestHeaders {
    const NAME: &'static str = "request_headers";
    const STAGE: Stage = Stage::Transform;
    const DOCS: &'static str = include_str!("request_headers.md");
    type Config = Config;

    fn build(config: Config, path: &FieldPath, _: &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors> {
        Ok(Arc::new(CompiledRequestHeaders { ops: HeaderOps::build(&config, path)? }))
    }
}

/// Runs per request: applies pre-parsed operations to the request head.
struct CompiledRequestHeaders {
    ops: HeaderOps,
}

impl Policy for CompiledRequestHeaders {
    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    fn on_request<'a>(&'a self, request: &'a mut RequestParts, _: &'a mut Exchange) -> Hook<'a> {
        self.ops.apply(&mut request.headers);
        Hook::Done(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use gantry_policy_api::testing::{build_policy, build_policy_error, exchange_from, request_parts, run_request};
    use gantry_policy_api::RegisteredPolicy;

    use super::*;

    fn entry() -> RegisteredPolicy {
        RegisteredPolicy::of::<RequestHeaders>()
    }

    #[test]
    fn changes_the_request_headers_and_continues() {
        let policy = build_policy(
            entry(),
            "rename: {X-Client-Id: X-Consumer}\nremove: [cookie]\nset: {X-Forwarded-Prefix: /api}\nadd: {Via: gantry}",
        )
        .expect("valid settings");
        let mut request = request_parts(
            http::Request::get("/orders")
                .header("x-client-id", "abc")
                .header("cookie", "session=1")
                .header("x-forwarded-prefix", "/old")
                .header("via", "1.1 edge")
                .body(())
                .expect("request"),
        );
        let flow = run_request(&*policy, &mut request, &mut exchange_from("10.0.0.1:5000"));
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(request.headers["x-consumer"], "abc");
        assert!(request.headers.get("x-client-id").is_none());
        assert!(request.headers.get("cookie").is_none());
        assert_eq!(request.headers["x-forwarded-prefix"], "/api");
        let via: Vec<_> = request.headers.get_all("via").iter().collect();
        assert_eq!(via, ["1.1 edge", "gantry"]);
    }

    #[test]
    fn implements_only_the_request_hook() {
        let policy = build_policy(entry(), "set: {x-a: b}").expect("valid settings");
        assert_eq!(policy.hooks(), Hooks::REQUEST);
    }

    #[test]
    fn rejects_an_invalid_header_name_at_its_path() {
        let errors = build_policy_error(entry(), "remove: [x-ok, 'x bad']");
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(errors.0[0].path.to_string(), "global_policies[0].request_headers.remove[1]");
    }

    #[test]
    fn rejects_an_unknown_field_at_its_path() {
        let errors = build_policy_error(entry(), "append: {x-a: b}");
        assert_eq!(errors.0[0].path.to_string(), "global_policies[0].request_headers.append");
    }
}
