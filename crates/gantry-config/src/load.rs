//! Reading configuration from YAML: one file, a directory of files, or text.
//!
//! A directory is read in file-name order and its files merged: resource lists are
//! concatenated, and `node` may be set in one file only. Every error carries its origin.

use std::path::{Path, PathBuf};

use crate::error::Segment;
use crate::locate::Locator;
use crate::{
    validate, ConfigError, ConfigErrors, ConsumerGroupSpec, ConsumerSpec, FieldPath, GatewaySpec, NodeSpec, Origin,
    PolicySetSpec, PolicySpec, RouteSpec, ServiceSpec, SourceDir, UpstreamSpec,
};

/// Where a configuration was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// A YAML file.
    File(PathBuf),
    /// A directory of `*.yaml` / `*.yml` files.
    Directory(PathBuf),
    /// Text compiled into the binary.
    Embedded(&'static str),
}

impl ConfigSource {
    /// A file or directory, whichever `path` is.
    pub fn from_path(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        if path.is_dir() {
            ConfigSource::Directory(path)
        } else {
            ConfigSource::File(path)
        }
    }

    /// Reads, merges and checks the configuration.
    pub fn load(&self) -> Result<LoadedConfig, ConfigErrors> {
        let loaded = self.read()?;
        let mut semantic = validate::validate_spec(&loaded.spec);
        loaded.attach_origins(&mut semantic);
        semantic.into_result(loaded)
    }

    /// Reads and merges the configuration without the checks across resources. For callers
    /// that compile it next: compiling repeats those checks next to each policy's own, so a
    /// missing reference does not hide a bad policy setting.
    pub fn read(&self) -> Result<LoadedConfig, ConfigErrors> {
        match self {
            ConfigSource::File(path) => {
                let mut loaded = read_files(std::slice::from_ref(path))?;
                let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
                loaded.spec.source_dir = SourceDir::new(dir);
                Ok(loaded)
            }
            ConfigSource::Directory(dir) => {
                let mut loaded = read_files(&yaml_files_in(dir)?)?;
                loaded.spec.source_dir = SourceDir::new(dir.clone());
                Ok(loaded)
            }
            ConfigSource::Embedded(text) => {
                let document = parse_document(text, None)?;
                let mut loaded = LoadedConfig::default();
                loaded.add(document, DocumentOrigin::Embedded)?;
                Ok(loaded)
            }
        }
    }
}

/// Reads a file or directory.
pub fn load_path(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    ConfigSource::from_path(path).load()
}

/// Parses configuration text that came from no file (tests, admin input).
pub fn load_str(text: &str) -> Result<GatewaySpec, ConfigErrors> {
    parse_document(text, None).map(|document| document.spec)
}

/// A parsed, merged configuration and a map back to where each part was written.
#[derive(Debug, Default)]
pub struct LoadedConfig {
    /// The merged configuration.
    pub spec: GatewaySpec,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    documents: Vec<LocatedDocument>,
    /// For each resource list, which document and position each merged item came from.
    provenance: Vec<(String, usize, usize)>,
}

#[derive(Debug)]
struct LocatedDocument {
    origin: DocumentOrigin,
    locator: Locator,
}

#[derive(Clone, Debug)]
enum DocumentOrigin {
    File(PathBuf),
    Embedded,
}

struct ParsedDocument {
    spec: GatewaySpec,
    locator: Locator,
}

impl LoadedConfig {
    /// Where the value at `path` (in merged terms) was written, if known.
    pub fn locate(&self, path: &FieldPath) -> Option<Origin> {
        let segments = path.segments();
        let (document, local_path) = match segments {
            [Segment::Key(list), Segment::Index { index, id }, rest @ ..] => {
                let (_, document, local_index) =
                    self.provenance.iter().filter(|(name, _, _)| name == list).nth(*index)?;
                let mut local = FieldPath::root().key(list);
                local = match id {
                    Some(id) => local.item(*local_index, id),
                    None => local.index(*local_index),
                };
                for segment in rest {
                    local = match segment {
                        Segment::Key(key) => local.key(key),
                        Segment::Index { index, .. } => local.index(*index),
                    };
                }
                (self.documents.get(*document)?, local)
            }
            [Segment::Key(section), ..] if section == "node" => {
                let node = FieldPath::root().key("node");
                (self.documents.iter().find(|doc| doc.locator.contains(&node))?, path.clone())
            }
            _ => (self.documents.first()?, path.clone()),
        };
        let (line, column) = document.locator.find(&local_path)?;
        Some(match &document.origin {
            DocumentOrigin::File(file) => Origin::File { path: file.clone(), line, column },
            DocumentOrigin::Embedded => Origin::Embedded { line, column },
        })
    }

    /// Gives every error without an origin the one found by [`Self::locate`].
    pub fn attach_origins(&self, errors: &mut ConfigErrors) {
        for error in &mut errors.0 {
            if error.origin.is_none() {
                error.origin = self.locate(&error.path);
            }
        }
    }

    fn add(&mut self, document: ParsedDocument, origin: DocumentOrigin) -> Result<(), ConfigErrors> {
        let index = self.documents.len();
        let ParsedDocument { spec, locator } = document;
        if spec.node.is_some() {
            if self.spec.node.is_some() {
                let message = "`node` is set in more than one file; keep it in one";
                let mut errors = ConfigErrors::one(FieldPath::root().key("node"), message);
                let (line, column) = locator.find(&FieldPath::root().key("node")).unwrap_or((1, 1));
                errors.0[0].origin = Some(match &origin {
                    DocumentOrigin::File(path) => Origin::File { path: path.clone(), line, column },
                    DocumentOrigin::Embedded => Origin::Embedded { line, column },
                });
                return Err(errors);
            }
            self.spec.node = spec.node;
        }
        let mut record = |list: &str, count: usize| {
            for local in 0..count {
                self.provenance.push((list.to_owned(), index, local));
            }
        };
        record("routes", spec.routes.len());
        record("services", spec.services.len());
        record("upstreams", spec.upstreams.len());
        record("consumers", spec.consumers.len());
        record("consumer_groups", spec.consumer_groups.len());
        record("policy_sets", spec.policy_sets.len());
        record("global_policies", spec.global_policies.len());
        self.spec.routes.extend(spec.routes);
        self.spec.services.extend(spec.services);
        self.spec.upstreams.extend(spec.upstreams);
        self.spec.consumers.extend(spec.consumers);
        self.spec.consumer_groups.extend(spec.consumer_groups);
        self.spec.policy_sets.extend(spec.policy_sets);
        self.spec.global_policies.extend(spec.global_policies);
        if let DocumentOrigin::File(path) = &origin {
            self.files.push(path.clone());
        }
        self.documents.push(LocatedDocument { origin, locator });
        Ok(())
    }
}

fn read_files(files: &[PathBuf]) -> Result<LoadedConfig, ConfigErrors> {
    let mut loaded = LoadedConfig::default();
    let mut errors = ConfigErrors::default();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(err) => {
                errors.0.push(file_error(file, format!("cannot read the file: {err}")));
                continue;
            }
        };
        match parse_document(&text, Some(file)) {
            Ok(document) => {
                if let Err(more) = loaded.add(document, DocumentOrigin::File(file.clone())) {
                    errors.extend(more.0);
                }
            }
            Err(more) => errors.extend(more.0),
        }
    }
    errors.into_result(loaded)
}

/// The files a directory configuration consists of, in reading order: `*.yaml` and `*.yml`,
/// hidden files excluded, sorted by name. The admin API's writer follows the same rule.
pub fn config_files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.is_file()
                && matches!(path.extension().and_then(|ext| ext.to_str()), Some("yaml" | "yml"))
                && !path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with('.'))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn yaml_files_in(dir: &Path) -> Result<Vec<PathBuf>, ConfigErrors> {
    let files = config_files_in(dir)
        .map_err(|err| ConfigErrors(vec![file_error(dir, format!("cannot read the directory: {err}"))]))?;
    if files.is_empty() {
        return Err(ConfigErrors(vec![file_error(dir, "no *.yaml or *.yml file in the directory")]));
    }
    Ok(files)
}

fn file_error(path: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError {
        origin: Some(Origin::File { path: path.to_owned(), line: 1, column: 1 }),
        path: FieldPath::root(),
        message: message.into(),
    }
}

/// Parses one YAML document into a [`GatewaySpec`], with the field path and position of a
/// failure. An empty document is an empty configuration.
fn parse_document(text: &str, file: Option<&Path>) -> Result<ParsedDocument, ConfigErrors> {
    let locator = Locator::index(text);
    if text.trim().is_empty() || text.lines().all(|line| line.trim().is_empty() || line.trim_start().starts_with('#')) {
        return Ok(ParsedDocument { spec: GatewaySpec::default(), locator });
    }
    let mut failed_at = None;
    let result = serde_saphyr::with_deserializer_from_str(text, |deserializer| {
        let mut track = serde_path_to_error::Track::new();
        let tracked = serde_path_to_error::Deserializer::new(deserializer, &mut track);
        let result = serde::Deserialize::deserialize(tracked);
        if result.is_err() {
            failed_at = Some(track.path());
        }
        result
    });
    match result {
        Ok(spec) => Ok(ParsedDocument { spec, locator }),
        Err(err) => {
            if let Some(errors) = collect_item_errors(text, &locator, file).filter(|errors| !errors.is_empty()) {
                return Err(errors);
            }
            let path = failed_at.as_ref().map(FieldPath::from_serde).unwrap_or_default();
            let position = err
                .location()
                .map(|location| (location.line(), location.column()))
                .filter(|(line, _)| *line > 0)
                .or_else(|| locator.find(&path))
                .unwrap_or((1, 1));
            let origin = match file {
                Some(path) => Origin::File { path: path.to_owned(), line: position.0, column: position.1 },
                None => Origin::Embedded { line: position.0, column: position.1 },
            };
            Err(ConfigErrors(vec![ConfigError { origin: Some(origin), path, message: describe(&err) }]))
        }
    }
}

/// After a typed parse failed on a value (not on syntax), types each section and list item on
/// its own, so that every bad part of the document is reported, not only the first.
/// `None` when the document cannot be read as a tree at all.
fn collect_item_errors(text: &str, locator: &Locator, file: Option<&Path>) -> Option<ConfigErrors> {
    let tree: serde_json::Value = serde_saphyr::from_str(text).ok()?;
    let serde_json::Value::Object(sections) = tree else { return None };
    let mut errors = ConfigErrors::default();
    for (section, value) in &sections {
        let at = FieldPath::root().key(section);
        match section.as_str() {
            "node" => check_part::<NodeSpec>(value, &at, &mut errors),
            "routes" => check_items::<RouteSpec>(value, &at, &mut errors),
            "services" => check_items::<ServiceSpec>(value, &at, &mut errors),
            "upstreams" => check_items::<UpstreamSpec>(value, &at, &mut errors),
            "consumers" => check_items::<ConsumerSpec>(value, &at, &mut errors),
            "consumer_groups" => check_items::<ConsumerGroupSpec>(value, &at, &mut errors),
            "policy_sets" => check_items::<PolicySetSpec>(value, &at, &mut errors),
            "global_policies" => check_items::<PolicySpec>(value, &at, &mut errors),
            other => errors.push(
                at,
                format!(
                    "unknown field `{other}`, expected one of `node`, `routes`, `services`, `upstreams`, `consumers`, `consumer_groups`, `policy_sets`, `global_policies`"
                ),
            ),
        }
    }
    for error in &mut errors.0 {
        let (line, column) = locator.find(&error.path).unwrap_or((1, 1));
        error.origin = Some(match file {
            Some(path) => Origin::File { path: path.to_owned(), line, column },
            None => Origin::Embedded { line, column },
        });
    }
    Some(errors)
}

/// Types each element of a list on its own, naming elements by their `id`.
fn check_items<T: serde::de::DeserializeOwned>(value: &serde_json::Value, at: &FieldPath, errors: &mut ConfigErrors) {
    let serde_json::Value::Array(items) = value else {
        return check_part::<Vec<T>>(value, at, errors);
    };
    for (index, item) in items.iter().enumerate() {
        let item_path = match item.get("id").and_then(serde_json::Value::as_str) {
            Some(id) => at.item(index, id),
            None => at.index(index),
        };
        check_part::<T>(item, &item_path, errors);
    }
}

fn check_part<T: serde::de::DeserializeOwned>(value: &serde_json::Value, at: &FieldPath, errors: &mut ConfigErrors) {
    if let Err(err) = serde_path_to_error::deserialize::<_, T>(value) {
        let path = at.join(&FieldPath::from_serde(err.path()));
        errors.push(path, err.into_inner().to_string());
    }
}

/// The reason alone: the position is reported separately, so the crate's own rendering
/// (which repeats it with a source snippet) is reduced to its first line.
fn describe(err: &serde_saphyr::Error) -> String {
    let text = err.without_snippet().to_string();
    let first = text.lines().next().unwrap_or("invalid configuration").trim();
    let reason = first.split(" at line ").next().unwrap_or(first);
    reason.trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_temp(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gantry-config-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("gantry.yaml");
        std::fs::write(&file, text).expect("write config");
        file
    }

    #[test]
    fn resolves_relative_paths_against_the_configuration_files_directory() {
        let file = write_temp("source-dir", "routes: []\n");
        let loaded = load_path(&file).expect("valid");
        let dir = file.parent().expect("a directory");
        assert_eq!(loaded.spec.source_dir.path(), Some(dir));
        assert_eq!(loaded.spec.resolve_path("schemas/a.json"), dir.join("schemas/a.json"));
        assert_eq!(loaded.spec.resolve_path("/etc/a.json"), PathBuf::from("/etc/a.json"));
        assert_eq!(load_str("routes: []").expect("valid").resolve_path("a.json"), PathBuf::from("a.json"));
    }

    #[test]
    fn reports_an_unknown_field_with_file_line_and_path() {
        let file = write_temp("unknown", "routes:\n  - id: a\n    paths: [/x]\n    upstrem: up\n");
        let errors = load_path(&file).expect_err("typo must be rejected");
        let text = errors.to_string();
        assert!(text.contains("gantry.yaml:4:"), "{text}");
        assert!(text.contains("routes[a].upstrem"), "{text}");
        assert!(text.contains("upstrem"), "{text}");
    }

    #[test]
    fn reports_a_bad_value_in_each_of_several_resources_in_one_pass() {
        let file = write_temp(
            "typed",
            "routes:\n  - id: a\n    paths: [/x]\n    upstrem: up\nupstreams:\n  - id: up\n    endpoints: [127.0.0.1:1]\n    timeouts: {connect: 5}\n  - id: ok\n    endpoints: [127.0.0.1:2]\nsurprise: 1\n",
        );
        let errors = load_path(&file).expect_err("three errors");
        let text = errors.to_string();
        assert_eq!(errors.0.len(), 3, "{text}");
        assert!(text.contains("gantry.yaml:4:5: routes[a].upstrem: unknown field `upstrem`"), "{text}");
        assert!(text.contains("gantry.yaml:8:16: upstreams[up].timeouts.connect: "), "{text}");
        assert!(text.contains("write it like \"5s\""), "the duration hint is kept: {text}");
        assert!(text.contains("gantry.yaml:11:1: surprise: unknown field `surprise`"), "{text}");
    }

    #[test]
    fn reports_every_semantic_error_at_its_line() {
        let file = write_temp(
            "semantic",
            "routes:\n  - id: a\n    paths: [/x]\n    upstream: missing\n  - id: b\n    paths: [nope]\n",
        );
        let errors = load_path(&file).expect_err("two errors");
        assert_eq!(errors.0.len(), 2, "{errors}");
        let text = errors.to_string();
        assert!(text.contains("gantry.yaml:4:5: routes[a].upstream: unknown upstream `missing`"), "{text}");
        assert!(text.contains("gantry.yaml:6:13: routes[b].paths[0]: `nope` must start with `/`"), "{text}");
    }

    #[test]
    fn merges_a_directory_and_locates_errors_in_the_right_file() {
        let first = write_temp("dir", "upstreams:\n  - id: up\n    endpoints: [127.0.0.1:1]\n");
        let dir = first.parent().expect("parent").to_owned();
        std::fs::write(dir.join("routes.yaml"), "routes:\n  - id: r\n    paths: [/]\n    service: nope\n")
            .expect("write");
        let errors = load_path(&dir).expect_err("unknown service");
        let text = errors.to_string();
        assert!(text.contains("routes.yaml:4:5: routes[r].service"), "{text}");
        std::fs::write(dir.join("routes.yaml"), "routes:\n  - id: r\n    paths: [/]\n    upstream: up\n")
            .expect("write");
        let loaded = load_path(&dir).expect("valid directory");
        assert_eq!(loaded.spec.routes.len(), 1);
        assert_eq!(loaded.spec.upstreams.len(), 1);
    }

    #[test]
    fn reads_endpoints_in_short_and_long_form_and_policies_by_name() {
        let spec = load_str(
            "upstreams:\n  - id: up\n    endpoints:\n      - 10.0.0.1:80\n      - {address: 10.0.0.2:80, weight: 3}\n    load_balancer: {consistent_hash: {header: x-user}}\nglobal_policies:\n  - ip_restriction: {deny: [10.0.0.0/8]}\n",
        )
        .expect("valid");
        assert_eq!(spec.upstreams[0].endpoints[1].weight, 3);
        assert_eq!(spec.global_policies[0].name, "ip_restriction");
    }

    #[test]
    fn reads_consumer_groups_with_their_policies() {
        let spec = load_str(
            "consumer_groups:\n  - id: gold\n    description: paying partners\n    policies:\n      - rate_limit: {limit: 10, window: 1m}\nconsumers:\n  - id: acme\n    groups: [gold, beta]\n",
        )
        .expect("valid");
        let group = &spec.consumer_groups[0];
        assert_eq!(group.id, "gold");
        assert_eq!(group.description.as_deref(), Some("paying partners"));
        assert_eq!(group.policies[0].name, "rate_limit");
        // `beta` is used without being declared: groups only `acl` looks at need no entry.
        assert_eq!(spec.consumers[0].groups, ["gold", "beta"]);
    }

    #[test]
    fn reports_consumer_group_mistakes_at_their_line_and_path() {
        let file = write_temp(
            "groups",
            "consumer_groups:\n  - id: gold\n    policy: []\n  - id: silver\n  - id: silver\n  - id: 'bad id'\n",
        );
        let errors = load_path(&file).expect_err("an unknown field");
        let text = errors.to_string();
        assert!(text.contains("gantry.yaml:3:5: consumer_groups[gold].policy: unknown field `policy`"), "{text}");

        std::fs::write(&file, "consumer_groups:\n  - id: silver\n  - id: silver\n  - id: 'bad id'\n").expect("write");
        let errors = load_path(&file).expect_err("a duplicate and a bad id");
        let text = errors.to_string();
        assert_eq!(errors.0.len(), 2, "{text}");
        assert!(text.contains("gantry.yaml:3:5: consumer_groups[silver].id: duplicate id `silver`"), "{text}");
        assert!(text.contains("consumer_groups[bad id].id: ` ` is not allowed in an id"), "{text}");
    }

    #[test]
    fn rejects_a_policy_entry_naming_two_policies() {
        let errors = load_str("global_policies:\n  - cors: {}\n    redirect: {}\n").expect_err("two names");
        assert!(errors.to_string().contains("exactly one policy"), "{errors}");
    }

    #[test]
    fn reads_upstream_limits_and_retry_budgets_and_rejects_bad_values_at_their_paths() {
        let spec = load_str(
            "upstreams:\n  - id: up\n    endpoints: [127.0.0.1:1]\n    limits: {max_requests: 2, max_pending: 1}\n    retries: {budget: {ratio: 0.1}}\n",
        )
        .expect("valid");
        let limits = spec.upstreams[0].limits.clone().expect("limits");
        assert_eq!((limits.max_requests, limits.max_pending, limits.pending_timeout.get().as_secs()), (2, 1, 1));
        let budget = spec.upstreams[0].retries.budget.clone().expect("budget");
        assert_eq!((budget.ratio, budget.min_per_second), (0.1, 10.0));

        let spec = load_str(
            "upstreams:\n  - id: up\n    endpoints: [127.0.0.1:1]\n    limits: {max_requests: 0, max_pending: 3, pending_timeout: 0s}\n    retries: {budget: {ratio: 1.5, min_per_second: -1}}\n",
        )
        .expect("well-formed");
        let errors = crate::validate::validate_spec(&spec);
        let text = errors.to_string();
        assert_eq!(errors.0.len(), 4, "{text}");
        for path in [
            "upstreams[up].limits.max_requests",
            "upstreams[up].limits.pending_timeout",
            "upstreams[up].retries.budget.ratio",
            "upstreams[up].retries.budget.min_per_second",
        ] {
            assert!(text.contains(path), "{path} in {text}");
        }
        let errors = load_str("upstreams:\n  - id: up\n    endpoints: [127.0.0.1:1]\n    limits: {max_pending: 3}\n")
            .expect_err("max_requests is required");
        assert!(errors.to_string().contains("max_requests"), "{errors}");
    }
}
