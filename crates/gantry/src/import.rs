//! `gantry import openapi FILE`: Gantry configuration from an OpenAPI 3.0 or 3.1 document.
//!
//! One upstream where the API is served, one service that attaches `openapi_validation` to
//! that document (built once, shared by the routes), and one route per path of the document
//! with its methods, the `{param}` templates kept. The YAML is written by hand, not serialized
//! from the spec types, so it holds only what differs from the defaults and reads like a
//! configuration a person wrote.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gantry_policies::validate::openapi_validation::document::ApiDescription;

use crate::cli::ImportOpenApiArgs;

/// `gantry import openapi`.
pub fn import_openapi(args: &ImportOpenApiArgs) -> ExitCode {
    match render_import(args) {
        Ok(yaml) => match &args.output {
            Some(output) => match std::fs::write(output, yaml) {
                Ok(()) => {
                    eprintln!("wrote {}", output.display());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("cannot write `{}`: {err}", output.display());
                    ExitCode::FAILURE
                }
            },
            None => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
        },
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// Where the API is served: an upstream's one endpoint and its scheme.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct UpstreamTarget {
    pub(crate) endpoint: String,
    pub(crate) is_https: bool,
}

fn render_import(args: &ImportOpenApiArgs) -> Result<String, String> {
    let api = ApiDescription::read(&args.file)?;
    let operations = api.operations();
    if operations.is_empty() {
        return Err(format!("`{}` describes no operation", args.file.display()));
    }
    let target = match &args.upstream {
        Some(url) => parse_upstream_url(url, false)?,
        None => {
            let server = api.document.pointer("/servers/0/url").and_then(|url| url.as_str()).unwrap_or_default();
            parse_upstream_url(server, true).map_err(|reason| {
                format!("{reason}; give the address the API is served at with --upstream http://host:port")
            })?
        }
    };
    let title = api.document.pointer("/info/title").and_then(|title| title.as_str()).unwrap_or("api");
    let id = match &args.id {
        Some(id) => {
            gantry_config::validate::check_id(id).map_err(|reason| format!("--id {id}: {reason}"))?;
            id.clone()
        }
        None => slug(title, 40).unwrap_or_else(|| "api".to_owned()),
    };
    let document_path = path_in_config(&args.file, args.output.as_deref())?;
    let base_path = api.base_path();

    // Paths in document order, each with its methods.
    let mut paths: Vec<(String, Vec<String>)> = Vec::new();
    for operation in operations {
        match paths.iter_mut().find(|(template, _)| *template == operation.template) {
            Some((_, methods)) => methods.push(operation.method),
            None => paths.push((operation.template, vec![operation.method])),
        }
    }

    let mut yaml = String::new();
    let version = api.document.pointer("/info/version").and_then(|version| version.as_str()).unwrap_or("-");
    let _ = writeln!(yaml, "# Written by `gantry import openapi` from {} ({title} {version}).", args.file.display());
    let _ = writeln!(yaml, "# Every request is checked against the document by the service's openapi_validation.");
    let _ = writeln!(yaml, "upstreams:\n  - id: {id}\n    endpoints: [{}]", quote(&target.endpoint));
    if target.is_https {
        let _ = writeln!(yaml, "    scheme: https");
    }
    let _ = writeln!(yaml, "services:\n  - id: {id}\n    upstream: {id}\n    policies:");
    let _ = writeln!(yaml, "      - openapi_validation:\n          file: {}", quote(&document_path));
    let _ = writeln!(yaml, "routes:");
    let mut route_ids: Vec<String> = Vec::new();
    for (template, methods) in &paths {
        let stem = format!("{id}-{}", slug(template, 60).unwrap_or_else(|| "root".to_owned()));
        let mut route_id: String = stem.chars().take(64).collect();
        let mut suffix = 2;
        while route_ids.contains(&route_id) {
            let tail = format!("-{suffix}");
            route_id = format!("{}{tail}", stem.chars().take(64 - tail.len()).collect::<String>());
            suffix += 1;
        }
        let _ = writeln!(yaml, "  - id: {route_id}");
        let _ = writeln!(yaml, "    paths: [{}]", quote(&format!("{base_path}{template}")));
        let _ = writeln!(yaml, "    methods: [{}]", methods.join(", "));
        let _ = writeln!(yaml, "    service: {id}");
        route_ids.push(route_id);
    }
    Ok(yaml)
}

/// A YAML double-quoted scalar (JSON's string syntax is one).
pub(crate) fn quote(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// Lower-case letters and digits of `text`, runs of anything else as one `-`, at most `max`
/// characters; `None` when nothing is left.
pub(crate) fn slug(text: &str, max: usize) -> Option<String> {
    let mut slug = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug: String = slug.trim_end_matches('-').chars().take(max).collect();
    let slug = slug.trim_end_matches('-').to_owned();
    (!slug.is_empty()).then_some(slug)
}

/// `http://host:port` or `https://host` as an endpoint. A document's server URL may have a
/// path (the base path, which routes keep); `--upstream` may not, as routes forward the
/// request's own path.
pub(crate) fn parse_upstream_url(url: &str, path_allowed: bool) -> Result<UpstreamTarget, String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    let is_https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("`{url}` is not an absolute http:// or https:// URL")),
    };
    let authority = uri.authority().ok_or_else(|| format!("`{url}` names no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("`{url}` carries credentials; give the address only"));
    }
    if !path_allowed && !matches!(uri.path(), "" | "/") {
        return Err(format!("`{url}` has a path; the upstream gets each request's own path, so give the address only"));
    }
    let port = authority.port_u16().unwrap_or(if is_https { 443 } else { 80 });
    let endpoint = format!("{}:{port}", authority.host());
    Ok(UpstreamTarget { endpoint, is_https })
}

/// How the written configuration names the document: relative to the output file's directory
/// when the document is below it (so both can move together), else absolute.
fn path_in_config(document: &Path, output: Option<&Path>) -> Result<String, String> {
    let absolute = document.canonicalize().map_err(|err| format!("`{}`: {err}", document.display()))?;
    let output_dir = output.map(|output| match output.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    });
    let relative = output_dir
        .and_then(|dir| dir.canonicalize().ok())
        .and_then(|dir| absolute.strip_prefix(dir).ok().map(Path::to_owned));
    let chosen = relative.unwrap_or(absolute);
    chosen.to_str().map(str::to_owned).ok_or_else(|| format!("`{}` is not a UTF-8 path", chosen.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_ids_from_titles_and_templates() {
        assert_eq!(slug("Pet Store API (v2)", 40).as_deref(), Some("pet-store-api-v2"));
        assert_eq!(slug("/pets/{petId}/photos", 60).as_deref(), Some("pets-petid-photos"));
        assert_eq!(slug("/", 60), None);
        assert_eq!(slug("abc-def", 4).as_deref(), Some("abc"));
    }

    #[test]
    fn reads_upstream_urls_with_default_ports() {
        let https = parse_upstream_url("https://api.example.com/v1", true).expect("a server URL");
        assert_eq!(https, UpstreamTarget { endpoint: "api.example.com:443".into(), is_https: true });
        let http = parse_upstream_url("http://127.0.0.1:8080", false).expect("an address");
        assert_eq!(http, UpstreamTarget { endpoint: "127.0.0.1:8080".into(), is_https: false });
        assert!(parse_upstream_url("http://backend/api", false).is_err());
        assert!(parse_upstream_url("/v1", true).is_err());
        assert!(parse_upstream_url("ftp://files", true).is_err());
    }
}
