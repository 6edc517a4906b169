//! Saving admin writes to the configuration files, so a restart (or a reload) keeps them.
//!
//! The files stay the source of truth and an admin write is an edit of them: the same change
//! that is applied to the running configuration is applied to the documents on disk, and
//! only the documents it changed are rewritten.
//!
//! - Running from a **file**: that file is edited.
//! - Running from a **directory**: a resource is replaced (or deleted) in the file it was
//!   read from; a new resource goes to [`ADMIN_FILE`] in that directory, created on first use.
//!   `global_policies` are kept in the first file that has some (others are emptied).
//! - Running on the **embedded default**: nothing is saved ([`Persistence::Memory`]).
//!
//! A rewritten file holds the parsed model serialized back to YAML: comments and formatting
//! are not kept, defaults are written out, and secrets are written as their real values (the
//! file is the gateway's own input). Each write goes to a hidden temporary file in the same
//! directory, is flushed to disk, and then renamed over the old file, so a crash leaves either
//! the old or the new file, never half of one; hidden files are ignored by the loader and the
//! file watcher's reload, so it never sees a partial write.

use std::io::Write;
use std::path::{Path, PathBuf};

use gantry_config::secret::reveal_secrets;
use gantry_config::{ConfigErrors, ConfigSource, GatewaySpec};

/// The file in a configuration directory that receives resources created through the admin API.
pub const ADMIN_FILE: &str = "admin.yaml";

/// First line of every file the admin API writes.
const HEADER: &str = "# Written by the Gantry admin API: comments and formatting in this file are not kept.\n";

/// Where admin writes are saved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// Not saved: the gateway runs on the embedded default configuration.
    Memory,
    /// Saved into this one configuration file.
    File(PathBuf),
    /// Saved into the files of this configuration directory.
    Directory(PathBuf),
}

/// Why a change could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// A configuration file or the directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A configuration file on disk no longer parses, so it cannot be edited safely.
    #[error("{} does not parse, so the change cannot be written into it: {}", path.display(), first_error(errors))]
    Unparsable {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        errors: ConfigErrors,
    },
    /// The configuration could not be turned into YAML.
    #[error("cannot write the configuration for {} as YAML: {reason}", path.display())]
    Serialize {
        /// The file it was meant for.
        path: PathBuf,
        /// The serializer's reason.
        reason: String,
    },
    /// Writing or renaming the file failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn first_error(errors: &ConfigErrors) -> String {
    errors.0.first().map(ToString::to_string).unwrap_or_default()
}

/// One configuration document: its file and what it holds.
struct Document {
    path: PathBuf,
    original: GatewaySpec,
    spec: GatewaySpec,
}

impl Persistence {
    /// Where writes go for a gateway reading `source`.
    pub fn for_source(source: Option<&ConfigSource>) -> Self {
        match source {
            Some(ConfigSource::File(path)) => Persistence::File(path.clone()),
            Some(ConfigSource::Directory(dir)) => Persistence::Directory(dir.clone()),
            Some(ConfigSource::Embedded(_)) | None => Persistence::Memory,
        }
    }

    /// True when writes are not saved anywhere.
    pub fn is_memory(&self) -> bool {
        matches!(self, Persistence::Memory)
    }

    /// Applies `edit` to the documents on disk and rewrites those it changed. `edit` gets
    /// every document in loading order and the index of the one that receives new resources.
    pub fn save(&self, edit: impl FnOnce(&mut [GatewaySpec], usize)) -> Result<(), PersistError> {
        let (mut documents, home) = match self {
            Persistence::Memory => return Ok(()),
            Persistence::File(path) => (vec![read_document(path)?], 0),
            Persistence::Directory(dir) => directory_documents(dir)?,
        };
        let mut specs: Vec<GatewaySpec> = documents.iter().map(|document| document.spec.clone()).collect();
        edit(&mut specs, home);
        for (document, spec) in documents.iter_mut().zip(specs) {
            document.spec = spec;
        }
        for document in documents.iter().filter(|document| document.spec != document.original) {
            write_document(&document.path, &document.spec)?;
        }
        Ok(())
    }
}

fn read_document(path: &Path) -> Result<Document, PersistError> {
    let text = std::fs::read_to_string(path).map_err(|source| PersistError::Read { path: path.to_owned(), source })?;
    let spec =
        gantry_config::load_str(&text).map_err(|errors| PersistError::Unparsable { path: path.to_owned(), errors })?;
    Ok(Document { path: path.to_owned(), original: spec.clone(), spec })
}

/// The documents of a directory in loading order, plus [`ADMIN_FILE`] (empty when new).
fn directory_documents(dir: &Path) -> Result<(Vec<Document>, usize), PersistError> {
    let mut documents = yaml_files(dir)?.iter().map(|path| read_document(path)).collect::<Result<Vec<_>, _>>()?;
    let admin_file = dir.join(ADMIN_FILE);
    let home = match documents.iter().position(|document| document.path == admin_file) {
        Some(index) => index,
        None => {
            documents.push(Document {
                path: admin_file,
                original: GatewaySpec::default(),
                spec: GatewaySpec::default(),
            });
            documents.len() - 1
        }
    };
    Ok((documents, home))
}

/// The files the loader reads from `dir`, in its order.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, PersistError> {
    gantry_config::load::config_files_in(dir).map_err(|source| PersistError::Read { path: dir.to_owned(), source })
}

/// Serializes `spec` with real secret values and replaces `path` atomically.
fn write_document(path: &Path, spec: &GatewaySpec) -> Result<(), PersistError> {
    let yaml = if *spec == GatewaySpec::default() {
        String::new()
    } else {
        reveal_secrets(|| serde_saphyr::to_string(spec))
            .map_err(|err| PersistError::Serialize { path: path.to_owned(), reason: err.to_string() })?
    };
    write_atomically(path, &format!("{HEADER}{yaml}"))
}

/// Temporary file in the same directory (so the rename stays on one file system), flushed,
/// then renamed over `path`; the directory is flushed too so the rename survives a crash.
fn write_atomically(path: &Path, contents: &str) -> Result<(), PersistError> {
    let write_error = |source| PersistError::Write { path: path.to_owned(), source };
    // Write through a symbolic link rather than replacing the link with a plain file.
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let dir = target.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut temp =
        tempfile::Builder::new().prefix(".gantry-admin-").suffix(".tmp").tempfile_in(dir).map_err(write_error)?;
    if let Ok(metadata) = std::fs::metadata(&target) {
        // Keep the old file's mode; a new file keeps the temporary file's owner-only mode,
        // fitting a file that may hold secrets.
        temp.as_file().set_permissions(metadata.permissions()).map_err(write_error)?;
    }
    temp.write_all(contents.as_bytes()).map_err(write_error)?;
    temp.as_file().sync_all().map_err(write_error)?;
    temp.persist(&target).map_err(|err| write_error(err.error))?;
    // Some file systems refuse to sync a directory; the rename itself has happened, so that
    // costs durability across a power loss only.
    if let Err(err) = std::fs::File::open(dir).and_then(|handle| handle.sync_all()) {
        tracing::debug!(dir = %dir.display(), error = %err, "cannot flush the configuration directory");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_config::{load_path, Secret};

    const UPSTREAM: &str = "upstreams:\n  - id: up\n    endpoints: [127.0.0.1:9]\n";

    fn add_route(id: &str) -> impl FnOnce(&mut [GatewaySpec], usize) + '_ {
        move |documents, home| {
            let route =
                gantry_config::load_str(&format!("routes:\n  - id: {id}\n    paths: [/{id}]\n    upstream: up\n"))
                    .expect("valid route")
                    .routes;
            documents[home].routes.extend(route);
        }
    }

    #[test]
    fn rewrites_the_configuration_file_so_it_loads_back_equal_with_real_secrets() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("gantry.yaml");
        std::fs::write(&file, format!("# a comment\nnode:\n  admin:\n    api_key: secret-secret-secret\n{UPSTREAM}"))
            .expect("write");
        let persistence = Persistence::for_source(Some(&ConfigSource::File(file.clone())));
        persistence.save(add_route("api")).expect("saved");
        let text = std::fs::read_to_string(&file).expect("read back");
        assert!(text.starts_with(HEADER), "{text}");
        assert!(text.contains("secret-secret-secret"), "the real key must be written: {text}");
        let loaded = load_path(&file).expect("the written file is valid");
        assert_eq!(loaded.spec.routes[0].id, "api");
        let admin = loaded.spec.node.and_then(|node| node.admin).expect("admin kept");
        assert_eq!(admin.api_key, Some(Secret::new("secret-secret-secret".to_owned())));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("list").flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("gantry.yaml")], "no temporary file is left behind");
    }

    #[test]
    fn puts_new_resources_in_admin_yaml_and_edits_others_where_they_were_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("upstreams.yaml"), UPSTREAM).expect("write");
        let routes = "# hand-written\nroutes:\n  - id: old\n    paths: [/old]\n    upstream: up\n";
        std::fs::write(dir.path().join("routes.yaml"), routes).expect("write");
        let persistence = Persistence::for_source(Some(&ConfigSource::Directory(dir.path().to_owned())));

        persistence.save(add_route("new")).expect("saved");
        assert_eq!(std::fs::read_to_string(dir.path().join("routes.yaml")).expect("read"), routes, "untouched");
        let admin = std::fs::read_to_string(dir.path().join(ADMIN_FILE)).expect("admin.yaml created");
        assert!(admin.contains("id: new"), "{admin}");

        persistence
            .save(|documents, _| {
                for document in documents.iter_mut() {
                    document.routes.retain(|route| route.id != "old");
                }
            })
            .expect("saved");
        let loaded = load_path(dir.path()).expect("the directory is valid");
        let ids: Vec<_> = loaded.spec.routes.iter().map(|route| route.id.as_str()).collect();
        assert_eq!(ids, ["new"]);
        assert!(!std::fs::read_to_string(dir.path().join("routes.yaml")).expect("read").contains("old"));
    }

    #[test]
    fn refuses_to_edit_a_file_that_no_longer_parses() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("gantry.yaml");
        std::fs::write(&file, "routes: [unclosed\n").expect("write");
        let error = Persistence::File(file.clone()).save(add_route("api")).expect_err("unparsable");
        assert!(matches!(error, PersistError::Unparsable { .. }), "{error}");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "routes: [unclosed\n", "left as it was");
    }

    #[test]
    fn saves_nothing_on_the_embedded_configuration() {
        let persistence = Persistence::for_source(Some(&ConfigSource::Embedded("routes: []\n")));
        assert!(persistence.is_memory());
        persistence.save(|_, _| panic!("there are no documents to edit")).expect("nothing to do");
    }
}
