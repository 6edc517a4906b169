//! Configuration errors that say where: origin (file:line:column, admin resource), field path
//! and reason. The same [`ConfigErrors`] value is printed by `gantry validate`, logged on a
//! rejected reload and returned by the admin API.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// One step of a [`FieldPath`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// A mapping key: `upstream`.
    Key(String),
    /// A list element, shown by its `id` when it has one: `routes[orders]` rather than `routes[3]`.
    Index {
        /// Position in the list (used to find the line in the source).
        index: usize,
        /// The element's `id`, shown instead of the index.
        id: Option<String>,
    },
}

/// Where a value sits in the configuration, e.g. `routes[orders].policies[0].ip_restriction.allow`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// The empty path (the document root).
    pub fn root() -> Self {
        Self::default()
    }

    /// This path followed by a mapping key.
    #[must_use]
    pub fn key(&self, key: &str) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.to_owned()));
        next
    }

    /// This path followed by a list position.
    #[must_use]
    pub fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Index { index, id: None });
        next
    }

    /// This path followed by a list position whose element has an `id`.
    #[must_use]
    pub fn item(&self, index: usize, id: &str) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Index { index, id: Some(id.to_owned()) });
        next
    }

    /// This path followed by all of `tail`.
    #[must_use]
    pub fn join(&self, tail: &FieldPath) -> Self {
        let mut next = self.clone();
        next.0.extend(tail.0.iter().cloned());
        next
    }

    /// The steps of the path.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// Converts the path `serde_path_to_error` tracked while deserializing.
    pub fn from_serde(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment as S;
        let mut out = Self::root();
        for segment in path.iter() {
            out = match segment {
                S::Seq { index } => out.index(*index),
                S::Map { key } => out.key(key),
                S::Enum { variant } => out.key(variant),
                S::Unknown => out,
            };
        }
        out
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(root)");
        }
        for (position, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if position == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index { id: Some(id), .. } => write!(f, "[{id}]")?,
                Segment::Index { index, id: None } => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

impl Serialize for FieldPath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Where a configuration value came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Origin {
    /// A position in a file (1-based line and column).
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: u64,
    },
    /// The configuration bundled into the binary.
    Embedded {
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: u64,
    },
    /// A resource written through the admin API.
    Admin {
        /// Resource kind and id, e.g. `routes/orders`.
        resource: String,
    },
    /// A key in etcd (cluster mode).
    Etcd {
        /// The key, e.g. `/gantry/config/routes/orders`.
        key: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line, column } => write!(f, "{}:{line}:{column}", path.display()),
            Origin::Embedded { line, column } => write!(f, "<embedded default>:{line}:{column}"),
            Origin::Admin { resource } => write!(f, "admin API {resource}"),
            Origin::Etcd { key } => write!(f, "etcd key {key}"),
        }
    }
}

/// One thing wrong with a configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    /// Where it was written, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// The field it concerns.
    pub path: FieldPath,
    /// Why it is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error at `path` whose origin is found later.
    pub fn new(path: FieldPath, message: impl Into<String>) -> Self {
        Self { origin: None, path, message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every error found in one configuration; never empty when returned as an `Err`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// A single error.
    pub fn one(path: FieldPath, message: impl Into<String>) -> Self {
        Self(vec![ConfigError::new(path, message)])
    }

    /// Adds an error.
    pub fn push(&mut self, path: FieldPath, message: impl Into<String>) {
        self.0.push(ConfigError::new(path, message));
    }

    /// True when nothing was found wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs `build`, which adds every problem it finds; its result is returned only when it
    /// found none.
    pub fn collect<T>(build: impl FnOnce(&mut ConfigErrors) -> T) -> Result<T, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let value = build(&mut errors);
        errors.into_result(value)
    }

    /// `Ok(value)` when empty, else `Err(self)`.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// The errors.
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }
}

impl Extend<ConfigError> for ConfigErrors {
    fn extend<I: IntoIterator<Item = ConfigError>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        writeln!(f, "{count} configuration error{}:", if count == 1 { "" } else { "s" })?;
        for error in &self.0 {
            writeln!(f, "  {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_list_items_by_id_when_they_have_one() {
        let path = FieldPath::root().key("routes").item(3, "orders").key("policies").index(0);
        assert_eq!(path.to_string(), "routes[orders].policies[0]");
    }

    #[test]
    fn prints_origin_path_and_reason_on_one_line() {
        let mut error = ConfigError::new(FieldPath::root().key("upstreams"), "bad");
        error.origin = Some(Origin::File { path: "a.yaml".into(), line: 4, column: 3 });
        assert_eq!(error.to_string(), "a.yaml:4:3: upstreams: bad");
    }
}
