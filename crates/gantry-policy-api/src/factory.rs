//! How a policy is built from its settings, and the entry the registry keeps for it.

use std::sync::{Arc, LazyLock};

use gantry_config::{ConfigErrors, FieldPath, GatewaySpec};
use gantry_state::Stores;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::consumer::{check_credentials, parse_credential, CheckCredentialsFn, ParseCredentialFn};
use crate::{ConsumerDirectory, IdentityFactory, Policy, Stage};

/// Checks that span several fields of a policy's settings. Field types and unknown fields
/// are already checked by deserialization, and whatever needs parsing (addresses, header
/// names, templates) is checked once, by [`PolicyFactory::build`], which runs even when
/// these checks fail, so both kinds of problem are reported together.
pub trait Validate {
    /// Adds every problem found to `errors`, with paths below `path`.
    fn validate(&self, path: &FieldPath, errors: &mut ConfigErrors) {
        let _ = (path, errors);
    }
}

/// What a factory may consult while building: the whole configuration being compiled, and
/// the process's stores. Made with [`BuildContext::new`], so adding a field breaks no caller.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct BuildContext<'a> {
    /// The configuration being compiled.
    pub spec: &'a GatewaySpec,
    /// Its consumers, with credentials typed by their identity policies.
    pub consumers: &'a ConsumerDirectory,
    /// Where policies keep state that outlives a snapshot (rate limit counters). Created once
    /// per process, so a reload keeps every counter.
    pub stores: &'a Stores,
}

/// The stores of a context made without any: memory only, shared by every such context.
static MEMORY_ONLY: LazyLock<Stores> = LazyLock::new(Stores::in_memory);

impl<'a> BuildContext<'a> {
    /// A context for `spec` and its `consumers`, with an in-memory store shared by every
    /// context made this way (tests that count give each policy its own with [`Self::with_stores`]).
    pub fn new(spec: &'a GatewaySpec, consumers: &'a ConsumerDirectory) -> Self {
        Self { spec, consumers, stores: &MEMORY_ONLY }
    }

    /// The same context with the process's `stores`.
    #[must_use]
    pub fn with_stores(self, stores: &'a Stores) -> Self {
        Self { stores, ..self }
    }
}

/// Builds one kind of policy. Implemented once per policy, listed once in the registry.
pub trait PolicyFactory: 'static {
    /// The name used in configuration (`ip_restriction`).
    const NAME: &'static str;
    /// When its request hook runs.
    const STAGE: Stage;
    /// The policy's documentation (its markdown file).
    const DOCS: &'static str;
    /// Typed settings.
    type Config: DeserializeOwned + JsonSchema + Validate;

    /// Builds a policy from checked settings. `path` is where the settings are written.
    fn build(
        config: Self::Config,
        path: &FieldPath,
        context: &BuildContext<'_>,
    ) -> Result<Arc<dyn Policy>, ConfigErrors>;
}

/// The type-erased constructor of a policy: raw settings at a path to a built policy.
type BuildFn = fn(&serde_json::Value, &FieldPath, &BuildContext<'_>) -> Result<Arc<dyn Policy>, ConfigErrors>;

/// A policy kind as the registry lists it: name, stage and type-erased constructor.
#[derive(Clone, Copy)]
pub struct RegisteredPolicy {
    /// Configuration name.
    pub name: &'static str,
    /// Stage of its request hook.
    pub stage: Stage,
    /// Markdown documentation.
    pub docs: &'static str,
    build: BuildFn,
    schema: fn() -> schemars::Schema,
    credential: Option<CredentialFns>,
}

/// How an identity policy's consumer credentials are typed, checked and described.
#[derive(Clone, Copy)]
struct CredentialFns {
    parse: ParseCredentialFn,
    check: CheckCredentialsFn,
    schema: fn() -> schemars::Schema,
}

impl RegisteredPolicy {
    /// The registry entry for factory `F`.
    pub fn of<F: PolicyFactory>() -> Self {
        Self {
            name: F::NAME,
            stage: F::STAGE,
            docs: F::DOCS,
            build: build_erased::<F>,
            schema: || schemars::schema_for!(F::Config),
            credential: None,
        }
    }

    /// The registry entry for identity policy `F`, whose consumers carry credentials for it.
    pub fn identity<F: IdentityFactory>() -> Self {
        Self {
            credential: Some(CredentialFns {
                parse: parse_credential::<F>,
                check: check_credentials::<F>,
                schema: || schemars::schema_for!(F::Credential),
            }),
            ..Self::of::<F>()
        }
    }

    /// Whether consumers carry credentials for this policy.
    pub fn takes_credentials(&self) -> bool {
        self.credential.is_some()
    }

    /// JSON Schema of one consumer credential, for identity policies.
    pub fn credential_schema(&self) -> Option<schemars::Schema> {
        self.credential.map(|fns| (fns.schema)())
    }

    pub(crate) fn credential_parser(&self) -> Option<ParseCredentialFn> {
        self.credential.map(|fns| fns.parse)
    }

    pub(crate) fn check_credentials(&self, directory: &ConsumerDirectory, errors: &mut ConfigErrors) {
        if let Some(fns) = self.credential {
            (fns.check)(directory, errors);
        }
    }

    /// Types, checks and builds raw settings written at `path`.
    pub fn build(
        &self,
        raw: &serde_json::Value,
        path: &FieldPath,
        context: &BuildContext<'_>,
    ) -> Result<Arc<dyn Policy>, ConfigErrors> {
        (self.build)(raw, path, context)
    }

    /// JSON Schema of the policy's settings.
    pub fn schema(&self) -> schemars::Schema {
        (self.schema)()
    }
}

impl std::fmt::Debug for RegisteredPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredPolicy").field("name", &self.name).field("stage", &self.stage).finish()
    }
}

fn build_erased<F: PolicyFactory>(
    raw: &serde_json::Value,
    path: &FieldPath,
    context: &BuildContext<'_>,
) -> Result<Arc<dyn Policy>, ConfigErrors> {
    let config: F::Config = parse_config(raw, path)?;
    let mut errors = ConfigErrors::default();
    config.validate(path, &mut errors);
    // `build` runs even after `validate` found problems, so that the problems only parsing
    // reveals (a bad CIDR, a bad header name) are reported in the same pass.
    match F::build(config, path, context) {
        Ok(policy) => errors.into_result(policy),
        Err(more) => {
            errors.extend(more.0);
            Err(errors)
        }
    }
}

/// Deserializes settings, reporting a failure at its full path.
pub(crate) fn parse_config<C: DeserializeOwned>(raw: &serde_json::Value, path: &FieldPath) -> Result<C, ConfigErrors> {
    serde_path_to_error::deserialize(raw).map_err(|err| {
        let at = path.join(&FieldPath::from_serde(err.path()));
        ConfigErrors::one(at, err.into_inner().to_string())
    })
}
