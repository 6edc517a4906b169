//! Generic CRUD over the configuration: one implementation for every resource kind, driven by
//! the small [`ConfigResource`] trait (implemented per kind in `kinds.rs`).
//!
//! A write never edits the running configuration directly: it builds the candidate (the
//! applied configuration with the change), which [`ControlPlane::apply_change_and_save`]
//! validates and compiles exactly as a file reload would, saves to the configuration files
//! (see `persist.rs`) and only then swaps in. A bad write changes nothing, a good one serves
//! the next request.
//!
//! [`ControlPlane::apply_change_and_save`]: crate::ControlPlane::apply_change_and_save

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gantry_config::{ConfigErrors, FieldPath, GatewaySpec, Origin, PolicySpec, ResourceKind};
use http::header::LOCATION;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::audit;
use super::body::{decode, parse_body};
use super::{AdminError, AdminState, GENERATION_HEADER};
use crate::ReloadError;

/// One kind of configuration resource the admin API manages: where its list lives in a
/// [`GatewaySpec`], how its id is read, and what refers to it.
pub trait ConfigResource:
    Clone + PartialEq + Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static
{
    /// The kind; its name is the collection path (`/routes`) and the YAML section.
    const KIND: ResourceKind;

    /// The resource's id.
    fn id(&self) -> &str;

    /// The list of this kind in `spec`.
    fn list(spec: &GatewaySpec) -> &[Self];

    /// The list of this kind in `spec`, to change it.
    fn list_mut(spec: &mut GatewaySpec) -> &mut Vec<Self>;

    /// The fields of `spec` that refer to the resource `id` of this kind; it cannot be deleted
    /// while there are any.
    fn references(_spec: &GatewaySpec, _id: &str) -> Vec<FieldPath> {
        Vec::new()
    }

    /// The resource as the admin API shows it. Secrets typed as `Secret` already show as
    /// `***`; kinds holding untyped secrets hide them here.
    fn to_output(&self) -> serde_json::Value {
        let mut output = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(policies) = output.get_mut("policies") {
            super::secrets::hide_policy_secrets(policies);
        }
        output
    }

    /// Checks only the admin API makes on input (for instance that a hidden secret was not
    /// sent back as its placeholder), with errors under `at`.
    fn check_input(&self, at: &FieldPath) -> ConfigErrors {
        let mut errors = ConfigErrors::default();
        let input = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(policies) = input.get("policies") {
            super::secrets::find_policy_placeholders(policies, &at.key("policies"), &mut errors);
        }
        errors
    }
}

/// The path of the resource `id` of kind `K` in the whole configuration, e.g. `routes[orders]`.
fn resource_path<K: ConfigResource>(spec: &GatewaySpec, id: &str) -> FieldPath {
    let list = FieldPath::root().key(K::KIND.name());
    let index = K::list(spec).iter().position(|item| item.id() == id).unwrap_or(K::list(spec).len());
    list.item(index, id)
}

fn origin_of(kind: &str, id: &str) -> Origin {
    Origin::Admin { resource: format!("{kind}/{id}") }
}

/// The id segment of `/<kind>/{id}`, with a problem document when it cannot be read.
pub struct ResourceId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ResourceId {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(ResourceId(id)),
            Err(rejection) => Err(AdminError::EndpointNotFound { path: format!("{} ({rejection})", parts.uri.path()) }),
        }
    }
}

/// A change to the configuration, applied alike to the running configuration and to the
/// documents on disk.
#[derive(Clone, Debug)]
enum Edit<K> {
    /// Replace the resource with the same id where it is, or add it at the end.
    Upsert(K),
    /// Remove the resource with this id.
    Delete(String),
}

impl<K: ConfigResource> Edit<K> {
    fn apply(&self, spec: &mut GatewaySpec) {
        self.apply_to_documents(std::slice::from_mut(spec), 0);
    }

    /// A resource stays in the document it is in; a new one goes to `documents[home]`.
    fn apply_to_documents(&self, documents: &mut [GatewaySpec], home: usize) {
        match self {
            Edit::Upsert(resource) => {
                let existing = documents
                    .iter_mut()
                    .find_map(|document| K::list_mut(document).iter_mut().find(|item| item.id() == resource.id()));
                match existing {
                    Some(slot) => *slot = resource.clone(),
                    None => {
                        if let Some(document) = documents.get_mut(home) {
                            K::list_mut(document).push(resource.clone());
                        }
                    }
                }
            }
            Edit::Delete(id) => {
                for document in documents.iter_mut() {
                    K::list_mut(document).retain(|item| item.id() != id);
                }
            }
        }
    }
}

/// What a successful write reports.
struct Committed {
    generation: u64,
    in_memory_only: bool,
    audit: audit::Change,
}

/// The written resource in one configuration, for the audit diff: serialized with secrets
/// revealed, and as `GET` shows it. `Null` for both when absent.
type Shown = (serde_json::Value, serde_json::Value);

fn shown_resource<K: ConfigResource>(spec: &GatewaySpec, id: &str) -> Shown {
    match K::list(spec).iter().find(|item| item.id() == id) {
        Some(resource) => (audit::revealed(resource), resource.to_output()),
        None => (serde_json::Value::Null, serde_json::Value::Null),
    }
}

/// Validates, compiles, saves and applies a change; `resource` (`routes/orders`) becomes the
/// origin of the errors located under `at`. `show` picks the written resource out of a
/// configuration, so the audit log gets its diff against exactly the configuration changed.
fn commit(
    state: &AdminState,
    resource: &str,
    at: &FieldPath,
    change: impl FnOnce(&mut GatewaySpec),
    edit_documents: impl FnOnce(&mut [GatewaySpec], usize),
    show: impl Fn(&GatewaySpec) -> Shown,
) -> Result<Committed, AdminError> {
    let persistence = state.persistence();
    let mut audited = None;
    let outcome = state.control().apply_change_and_save(
        |applied| {
            let mut candidate = applied.clone();
            change(&mut candidate);
            let ((old, _), (new, new_shown)) = (show(applied), show(&candidate));
            audited = Some((audit::masked_diff(&old, &new, &new_shown), candidate != *applied));
            Ok(candidate)
        },
        |candidate| match state.cluster() {
            Some(cluster) => cluster.save_blocking(candidate),
            None => persistence.save(edit_documents).map_err(Into::into),
        },
    );
    match outcome {
        Ok(generation) => {
            let (diff, changed) = audited.unwrap_or_default();
            let before = if changed { generation.saturating_sub(1) } else { generation };
            let id = resource.split_once('/').map(|(_, id)| id.to_owned());
            let audit = audit::Change { id, generations: (before, generation), diff };
            Ok(Committed { generation, in_memory_only: persistence.is_memory(), audit })
        }
        Err(ReloadError::Invalid(mut errors)) => {
            let origin = Origin::Admin { resource: resource.to_owned() };
            for error in &mut errors.0 {
                if error.origin.is_none() && error.path.segments().starts_with(at.segments()) {
                    error.origin = Some(origin.clone());
                }
            }
            Err(AdminError::InvalidConfig(errors))
        }
        Err(ReloadError::NotSaved(err)) if err.is::<crate::cluster::WriteConflict>() => {
            Err(AdminError::Conflict { reason: err.to_string() })
        }
        Err(ReloadError::NotSaved(err)) if err.is::<crate::cluster::etcd::EtcdError>() => {
            Err(AdminError::StoreUnavailable { reason: format!("the change was not applied: {err}") })
        }
        Err(ReloadError::NotSaved(err)) => Err(AdminError::NotSaved { reason: err.to_string() }),
        Err(other) => Err(AdminError::Internal { reason: other.to_string() }),
    }
}

/// Commits `edit` of resource `name` (written at `at`) to the running configuration and the
/// documents on disk, off the async workers.
async fn commit_edit<K: ConfigResource + Send + 'static>(
    state: AdminState,
    name: String,
    at: FieldPath,
    edit: Edit<K>,
) -> Result<Committed, AdminError> {
    blocking(move || {
        let for_disk = edit.clone();
        let id = match &edit {
            Edit::Upsert(resource) => resource.id().to_owned(),
            Edit::Delete(id) => id.clone(),
        };
        commit(
            &state,
            &name,
            &at,
            |spec| edit.apply(spec),
            move |documents, home| for_disk.apply_to_documents(documents, home),
            |spec| shown_resource::<K>(spec, &id),
        )
    })
    .await
}

/// Runs a write off the async workers: compiling and file I/O block.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AdminError> + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| Err(AdminError::Internal { reason: format!("the write task failed: {err}") }))
}

/// A response with the generation header, and the in-memory warning when it applies.
fn respond(status: StatusCode, body: Option<serde_json::Value>, committed: &Committed) -> Response {
    let mut response = match body {
        Some(body) => (status, Json(body)).into_response(),
        None => status.into_response(),
    };
    response.headers_mut().insert(GENERATION_HEADER, HeaderValue::from(committed.generation));
    response.extensions_mut().insert(committed.audit.clone());
    if committed.in_memory_only {
        // RFC 7234 section 5.5 warn-code 299: a persistent warning about the response.
        let warning = "299 gantry \"applied in memory only: the gateway runs on the embedded configuration, so this change is lost at restart\"";
        response.headers_mut().insert(http::header::WARNING, HeaderValue::from_static(warning));
    }
    response
}

/// Adds the generation header to a read.
fn with_generation(body: serde_json::Value, generation: u64) -> Response {
    let mut response = Json(body).into_response();
    response.headers_mut().insert(GENERATION_HEADER, HeaderValue::from(generation));
    response
}

/// `GET /<kind>`: every resource of the kind, in configuration order.
pub async fn list<K: ConfigResource>(State(state): State<AdminState>) -> Result<Response, AdminError> {
    let applied = state.applied().await?;
    let items = K::list(&applied.spec).iter().map(ConfigResource::to_output).collect();
    Ok(with_generation(serde_json::Value::Array(items), applied.generation))
}

/// `GET /<kind>/{id}`.
pub async fn get<K: ConfigResource>(
    State(state): State<AdminState>,
    ResourceId(id): ResourceId,
) -> Result<Response, AdminError> {
    let applied = state.applied().await?;
    let resource =
        K::list(&applied.spec).iter().find(|item| item.id() == id).ok_or(AdminError::NotFound { kind: K::KIND, id })?;
    Ok(with_generation(resource.to_output(), applied.generation))
}

/// `PUT /<kind>/{id}`: creates or replaces. An `id` in the body must match the URL; without
/// one, the URL's id is used.
pub async fn put<K: ConfigResource>(
    State(state): State<AdminState>,
    ResourceId(id): ResourceId,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AdminError> {
    let mut value = parse_body(&headers, body)?;
    if let serde_json::Value::Object(fields) = &mut value {
        match fields.get("id") {
            None => {
                fields.insert("id".to_owned(), serde_json::Value::String(id.clone()));
            }
            Some(serde_json::Value::String(body_id)) if *body_id == id => {}
            Some(other) => {
                let body_id = other.as_str().map_or_else(|| other.to_string(), str::to_owned);
                return Err(AdminError::IdMismatch { path_id: id, body_id });
            }
        }
    }
    let existed = state.applied().await?.spec;
    let at = resource_path::<K>(&existed, &id);
    let resource: K = decode(value, &at, &origin_of(K::KIND.name(), &id))?;
    let created = !K::list(&existed).iter().any(|item| item.id() == id);
    write_resource(state, resource, if created { StatusCode::CREATED } else { StatusCode::OK }).await
}

/// `POST /<kind>`: creates; the id comes from the body and must be new.
pub async fn create<K: ConfigResource>(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AdminError> {
    let value = parse_body(&headers, body)?;
    let applied = state.applied().await?.spec;
    let (at, origin) = match value.get("id").and_then(serde_json::Value::as_str) {
        Some(id) => (resource_path::<K>(&applied, id), origin_of(K::KIND.name(), id)),
        // Without an id the body cannot decode; the error points at the new list item.
        None => {
            let at = FieldPath::root().key(K::KIND.name()).index(K::list(&applied).len());
            (at, Origin::Admin { resource: K::KIND.name().to_owned() })
        }
    };
    let resource: K = decode(value, &at, &origin)?;
    if K::list(&applied).iter().any(|item| item.id() == resource.id()) {
        return Err(AdminError::AlreadyExists { kind: K::KIND, id: resource.id().to_owned() });
    }
    let location = format!("/{}/{}", K::KIND.name(), resource.id());
    let mut response = write_resource(state, resource, StatusCode::CREATED).await?;
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}

async fn write_resource<K: ConfigResource>(
    state: AdminState,
    resource: K,
    status: StatusCode,
) -> Result<Response, AdminError> {
    let id = resource.id().to_owned();
    let name = format!("{}/{id}", K::KIND.name());
    let at = resource_path::<K>(&state.applied().await?.spec, &id);
    let rejected = resource.check_input(&at);
    if !rejected.is_empty() {
        let mut errors = rejected;
        for error in &mut errors.0 {
            error.origin = Some(origin_of(K::KIND.name(), &id));
        }
        return Err(AdminError::InvalidConfig(errors));
    }
    let output = resource.to_output();
    let edit = Edit::Upsert(resource);
    let committed = commit_edit(state, name, at, edit).await?;
    Ok(respond(status, Some(output), &committed))
}

/// `DELETE /<kind>/{id}`: 404 when missing, 409 while other resources refer to it.
pub async fn delete<K: ConfigResource>(
    State(state): State<AdminState>,
    ResourceId(id): ResourceId,
) -> Result<Response, AdminError> {
    let applied = state.applied().await?.spec;
    if !K::list(&applied).iter().any(|item| item.id() == id) {
        return Err(AdminError::NotFound { kind: K::KIND, id });
    }
    let used_by = K::references(&applied, &id);
    if !used_by.is_empty() {
        return Err(AdminError::InUse { kind: K::KIND, id, used_by });
    }
    let name = format!("{}/{id}", K::KIND.name());
    let at = resource_path::<K>(&applied, &id);
    let edit = Edit::<K>::Delete(id);
    let committed = commit_edit(state, name, at, edit).await?;
    Ok(respond(StatusCode::NO_CONTENT, None, &committed))
}

/// `GET /global_policies`: the policies applied to every route, in order.
pub async fn get_global_policies(State(state): State<AdminState>) -> Result<Response, AdminError> {
    let applied = state.applied().await?;
    let mut body = serde_json::to_value(&applied.spec.global_policies)
        .map_err(|err| AdminError::Internal { reason: format!("cannot show the global policies: {err}") })?;
    super::secrets::hide_policy_secrets(&mut body);
    Ok(with_generation(body, applied.generation))
}

/// `PUT /global_policies`: replaces the whole list.
pub async fn put_global_policies(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AdminError> {
    const NAME: &str = "global_policies";
    let at = FieldPath::root().key(NAME);
    let origin = Origin::Admin { resource: NAME.to_owned() };
    let policies: Vec<PolicySpec> = decode(parse_body(&headers, body)?, &at, &origin)?;
    let mut output = serde_json::to_value(&policies)
        .map_err(|err| AdminError::Internal { reason: format!("cannot show the global policies: {err}") })?;
    let mut rejected = ConfigErrors::default();
    super::secrets::find_policy_placeholders(&output, &at, &mut rejected);
    if !rejected.is_empty() {
        for error in &mut rejected.0 {
            error.origin = Some(origin.clone());
        }
        return Err(AdminError::InvalidConfig(rejected));
    }
    super::secrets::hide_policy_secrets(&mut output);
    let committed = blocking(move || {
        let for_disk = policies.clone();
        commit(
            &state,
            NAME,
            &at,
            |spec| spec.global_policies = policies,
            move |documents, home| set_global_policies(documents, home, for_disk),
            |spec| {
                let mut shown = audit::revealed(&spec.global_policies);
                let revealed = shown.clone();
                super::secrets::hide_policy_secrets(&mut shown);
                (revealed, shown)
            },
        )
    })
    .await?;
    Ok(respond(StatusCode::OK, Some(output), &committed))
}

/// Keeps the list in the first document that has one (or the admin document), so a
/// directory never ends up with the list split over several files.
fn set_global_policies(documents: &mut [GatewaySpec], home: usize, policies: Vec<PolicySpec>) {
    let keeper = documents.iter().position(|document| !document.global_policies.is_empty()).unwrap_or(home);
    for (index, document) in documents.iter_mut().enumerate() {
        document.global_policies = if index == keeper { policies.clone() } else { Vec::new() };
    }
}
