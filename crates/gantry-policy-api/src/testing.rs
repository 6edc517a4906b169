//! Helpers for testing policies without a gateway: build one from YAML, run its hooks.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use gantry_config::{ConfigErrors, FieldPath, GatewaySpec};
use gantry_state::Stores;

use crate::{BuildContext, ConsumerDirectory, Exchange, Flow, Policy, RegisteredPolicy, RequestParts, ResponseParts};

/// The stores of the helpers that take none: memory only.
static MEMORY_ONLY: LazyLock<Stores> = LazyLock::new(Stores::in_memory);

/// Builds the policy `entry` from YAML settings, as the compiler would for a global policy.
pub fn build_policy(entry: RegisteredPolicy, yaml: &str) -> Result<Arc<dyn Policy>, ConfigErrors> {
    let raw: serde_json::Value =
        if yaml.trim().is_empty() { serde_json::Value::Object(Default::default()) } else { parse_settings(yaml)? };
    let spec = GatewaySpec::default();
    let consumers = ConsumerDirectory::default();
    entry.build(&raw, &policy_path(entry.name), &BuildContext::new(&spec, &consumers))
}

/// Builds identity policy `entry` from YAML settings, with the consumers of `config_yaml` (a
/// configuration such as `"consumers:\n  - id: alice\n    credentials: ..."`). Problems of
/// the consumers' credentials are reported with the policy's.
pub fn build_identity_policy(
    entry: RegisteredPolicy,
    settings_yaml: &str,
    config_yaml: &str,
) -> Result<Arc<dyn Policy>, ConfigErrors> {
    build_policy_with_stores(entry, settings_yaml, config_yaml, &MEMORY_ONLY)
}

/// Like [`build_identity_policy`], for any policy, with `stores` as the process's stores (a
/// policy that counts gets its own stores, so tests running at once never share counters).
pub fn build_policy_with_stores(
    entry: RegisteredPolicy,
    settings_yaml: &str,
    config_yaml: &str,
    stores: &Stores,
) -> Result<Arc<dyn Policy>, ConfigErrors> {
    let raw: serde_json::Value = if settings_yaml.trim().is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        parse_settings(settings_yaml)?
    };
    let spec = gantry_config::load_str(config_yaml)?;
    let mut errors = ConfigErrors::default();
    let find = |name: &str| (name == entry.name).then_some(entry);
    let consumers = ConsumerDirectory::build(&spec, &find, &mut errors);
    let context = BuildContext::new(&spec, &consumers).with_stores(stores);
    let built = entry.build(&raw, &policy_path(entry.name), &context);
    match built {
        Ok(policy) => errors.into_result(policy),
        Err(more) => {
            errors.extend(more.0);
            Err(errors)
        }
    }
}

/// Like [`build_identity_policy`], for settings or credentials that must be rejected.
pub fn build_identity_policy_error(entry: RegisteredPolicy, settings_yaml: &str, config_yaml: &str) -> ConfigErrors {
    match build_identity_policy(entry, settings_yaml, config_yaml) {
        Ok(_) => panic!("`{}` accepted settings that should be rejected:\n{settings_yaml}\n{config_yaml}", entry.name),
        Err(errors) => errors,
    }
}

/// Builds the policy `entry` from YAML settings that must be rejected, and gives the errors.
/// (`build_policy(..).expect_err(..)` cannot be written: `dyn Policy` is not `Debug`.)
pub fn build_policy_error(entry: RegisteredPolicy, yaml: &str) -> ConfigErrors {
    match build_policy(entry, yaml) {
        Ok(_) => panic!("`{}` accepted settings that should be rejected:\n{yaml}", entry.name),
        Err(errors) => errors,
    }
}

/// The path a test policy's settings are reported at: `global_policies[0].<name>`.
pub fn policy_path(name: &str) -> FieldPath {
    FieldPath::root().key("global_policies").index(0).key(name)
}

fn parse_settings(yaml: &str) -> Result<serde_json::Value, ConfigErrors> {
    // Settings go through the same loader as real files: wrap them as a global policy.
    let text = format!("global_policies:\n  - policy:\n{}", indent(yaml, 6));
    let spec = gantry_config::load_str(&text)?;
    Ok(spec.global_policies.into_iter().next().map(|policy| policy.config).unwrap_or_default())
}

fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.lines().map(|line| format!("{pad}{line}\n")).collect()
}

/// An exchange for a request from `client`.
pub fn exchange_from(client: &str) -> Exchange {
    let client_addr: SocketAddr = client.parse().expect("test client address is `ip:port`");
    Exchange::new("test-request".into(), "test-route".into(), client_addr, false)
}

/// The head of `request`.
pub fn request_parts(request: http::Request<()>) -> RequestParts {
    request.into_parts().0
}

/// Runs `policy`'s request hook to completion.
pub fn run_request(policy: &dyn Policy, request: &mut RequestParts, exchange: &mut Exchange) -> Flow {
    futures_lite_block_on(policy.on_request(request, exchange).resolve())
}

/// Runs `policy`'s response hook on a response with `status`.
pub fn run_response(policy: &dyn Policy, response: http::Response<()>, exchange: &mut Exchange) -> ResponseParts {
    let mut parts = response.into_parts().0;
    policy.on_response(&mut parts, exchange);
    parts
}

/// Polls a future to completion on this thread; test policies complete without real I/O.
fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::yield_now();
    }
}
