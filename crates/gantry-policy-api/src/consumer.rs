//! Consumers and their credentials as identity policies see them.
//!
//! Runs at config compile time. [`ConsumerDirectory::build`] types every credential of every
//! consumer once, through the identity policy it belongs to, and reports each problem once with
//! its path (`consumers[alice].credentials.key_auth.key`). Identity policies then build their
//! lookup tables from [`ConsumerDirectory::credentials`] and keep them for the snapshot's life.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use gantry_config::{ConfigErrors, FieldPath, GatewaySpec};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::factory::{parse_config, PolicyFactory, RegisteredPolicy, Validate};

/// A recognised client: the consumer an identity policy matched, or one it described from a
/// token's claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumer {
    /// The consumer's id.
    pub id: Arc<str>,
    /// Its groups, for `acl` decisions and per-group limits.
    pub groups: Arc<[String]>,
}

impl Consumer {
    /// A consumer named `id` in no group.
    pub fn named(id: &str) -> Self {
        Self { id: id.into(), groups: Arc::new([]) }
    }

    /// Whether it belongs to `group`.
    pub fn is_in(&self, group: &str) -> bool {
        self.groups.iter().any(|own| own == group)
    }
}

/// An identity policy: a policy whose consumers carry credentials for it under
/// `consumers[].credentials.<NAME>` (one object, or a list of them for rotation).
pub trait IdentityFactory: PolicyFactory {
    /// One credential, as written under the consumer.
    type Credential: DeserializeOwned + JsonSchema + Validate + Send + Sync + 'static;

    /// Checks that span the credentials of every consumer (a key used twice). Runs once per
    /// compile, whatever the number of routes using the policy.
    fn check_credentials(credentials: &[CredentialEntry<'_, Self::Credential>], errors: &mut ConfigErrors) {
        let _ = (credentials, errors);
    }
}

/// One consumer's credential for one identity policy.
#[derive(Debug)]
pub struct CredentialEntry<'a, C> {
    /// Whose credential it is.
    pub consumer: &'a Arc<Consumer>,
    /// A stable name of the credential: `alice:key_auth`, or `alice:key_auth:1` for the second
    /// of a list. Limits keyed by credential and logs use it; it never contains the secret.
    pub id: &'a Arc<str>,
    /// Where it is written, for errors.
    pub path: &'a FieldPath,
    /// The typed credential.
    pub credential: &'a C,
}

/// A typed credential, stored without its type so one directory holds every kind.
struct StoredCredential {
    consumer: usize,
    id: Arc<str>,
    path: FieldPath,
    credential: Box<dyn Any + Send + Sync>,
}

/// Every consumer of a configuration with its typed credentials, built once per compile.
#[derive(Default)]
pub struct ConsumerDirectory {
    consumers: Vec<Arc<Consumer>>,
    by_id: HashMap<Arc<str>, usize>,
    credentials: HashMap<&'static str, Vec<StoredCredential>>,
}

impl std::fmt::Debug for ConsumerDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerDirectory").field("consumers", &self.consumers.len()).finish()
    }
}

impl ConsumerDirectory {
    /// Types the credentials of `spec.consumers` through the identity policies `find` knows.
    /// Every problem is added to `errors`; a credential with a problem is left out.
    pub fn build(
        spec: &GatewaySpec,
        find: &dyn Fn(&str) -> Option<RegisteredPolicy>,
        errors: &mut ConfigErrors,
    ) -> Self {
        let mut directory = Self::default();
        let root = FieldPath::root().key("consumers");
        let mut checks: Vec<RegisteredPolicy> = Vec::new();
        for (index, spec) in spec.consumers.iter().enumerate() {
            let consumer = Arc::new(Consumer { id: spec.id.as_str().into(), groups: spec.groups.clone().into() });
            let position = directory.consumers.len();
            directory.by_id.insert(consumer.id.clone(), position);
            directory.consumers.push(consumer);
            let path = root.item(index, &spec.id).key("credentials");
            for (name, raw) in &spec.credentials {
                let at = path.key(name);
                let Some(policy) = find(name) else {
                    errors.push(at, format!("no policy is named `{name}`"));
                    continue;
                };
                let Some(parse) = policy.credential_parser() else {
                    errors.push(at, format!("`{name}` takes no consumer credentials: only identity policies do"));
                    continue;
                };
                if !checks.iter().any(|known| known.name == policy.name) {
                    checks.push(policy);
                }
                let items: Vec<(Option<usize>, &serde_json::Value)> = match raw {
                    serde_json::Value::Array(items) => {
                        items.iter().enumerate().map(|(i, item)| (Some(i), item)).collect()
                    }
                    single => vec![(None, single)],
                };
                for (item, raw) in items {
                    let (id, at) = match item {
                        Some(item) => (format!("{}:{name}:{item}", spec.id), at.index(item)),
                        None => (format!("{}:{name}", spec.id), at.clone()),
                    };
                    match parse(raw, &at) {
                        Ok(credential) => directory
                            .credentials
                            .entry(policy.name)
                            .or_default()
                            .push(StoredCredential { consumer: position, id: id.into(), path: at, credential }),
                        Err(more) => errors.extend(more.0),
                    }
                }
            }
        }
        for policy in checks {
            policy.check_credentials(&directory, errors);
        }
        directory
    }

    /// The consumer `id`, if configured.
    pub fn get(&self, id: &str) -> Option<&Arc<Consumer>> {
        self.by_id.get(id).map(|&position| &self.consumers[position])
    }

    /// Every consumer, in configuration order.
    pub fn consumers(&self) -> &[Arc<Consumer>] {
        &self.consumers
    }

    /// The credentials consumers carry for identity policy `F`, in configuration order.
    pub fn credentials<F: IdentityFactory>(&self) -> Vec<CredentialEntry<'_, F::Credential>> {
        let Some(stored) = self.credentials.get(F::NAME) else { return Vec::new() };
        stored
            .iter()
            .filter_map(|entry| {
                Some(CredentialEntry {
                    consumer: &self.consumers[entry.consumer],
                    id: &entry.id,
                    path: &entry.path,
                    credential: entry.credential.downcast_ref::<F::Credential>()?,
                })
            })
            .collect()
    }

    /// Resolves the `anonymous_consumer` setting of an identity policy written at `path`.
    pub fn anonymous(&self, id: Option<&str>, path: &FieldPath, errors: &mut ConfigErrors) -> Option<Arc<Consumer>> {
        let id = id?;
        let found = self.get(id).cloned();
        if found.is_none() {
            errors.push(path.key("anonymous_consumer"), format!("no consumer has id `{id}`"));
        }
        found
    }
}

/// Type-erased credential handling of one identity policy.
pub(crate) type ParseCredentialFn =
    fn(&serde_json::Value, &FieldPath) -> Result<Box<dyn Any + Send + Sync>, ConfigErrors>;
/// Runs an identity policy's cross-consumer checks.
pub(crate) type CheckCredentialsFn = fn(&ConsumerDirectory, &mut ConfigErrors);

pub(crate) fn parse_credential<F: IdentityFactory>(
    raw: &serde_json::Value,
    path: &FieldPath,
) -> Result<Box<dyn Any + Send + Sync>, ConfigErrors> {
    let credential: F::Credential = parse_config(raw, path)?;
    let mut errors = ConfigErrors::default();
    credential.validate(path, &mut errors);
    errors.into_result(Box::new(credential) as Box<dyn Any + Send + Sync>)
}

pub(crate) fn check_credentials<F: IdentityFactory>(directory: &ConsumerDirectory, errors: &mut ConfigErrors) {
    F::check_credentials(&directory.credentials::<F>(), errors);
}
