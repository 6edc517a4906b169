//! Command-line interface: `run` (the default), `validate`, `import` and `version`, and the
//! `run` options that override node settings for one process.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use gantry_config::{AdminSpec, GatewaySpec, NodeSpec};

/// Gantry, an API gateway.
#[derive(Debug, Parser)]
#[command(name = "gantry", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `run`, when no command is given.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Run(RunArgs),
    /// Check a configuration and print every error with its file, line and field path.
    Validate(ValidateArgs),
    /// Write configuration from another description of an API.
    #[command(subcommand)]
    Import(ImportSource),
    /// Show a running gateway's status (`GET /status` of its admin API) as tables.
    Status(StatusArgs),
    /// Print the version.
    Version,
}

/// Options of `gantry status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The admin API: `host:port` or a URL.
    #[arg(long, env = "GANTRY_ADMIN", default_value = "127.0.0.1:9180")]
    pub admin: String,
    /// The admin API key.
    #[arg(long, env = "GANTRY_ADMIN_KEY", hide_env_values = true)]
    pub key: String,
    /// Show the N routes with the most requests.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Redraw every SECONDS, like `top`, until interrupted.
    #[arg(long, value_name = "SECONDS")]
    pub watch: Option<u64>,
    /// Print the status document as JSON instead of tables.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
}

/// Options of `gantry run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file or directory of YAML files. Without it, the embedded example runs.
    #[arg(short, long, env = "GANTRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Do not reload when the configuration files change (SIGHUP and the admin API still work).
    #[arg(long)]
    pub no_watch: bool,
    /// Listen on ADDR (`ip:port`, port 0 picks a free one) instead of the configured address.
    /// Repeat it to move several listeners, in configuration order; their TLS and HTTP/2
    /// settings stay as configured.
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Serve the admin API on ADDR instead of the configured address; turns the admin API on
    /// when the configuration has none.
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Serve the built-in demo upstream of the embedded example on ADDR instead of
    /// 127.0.0.1:9081; the example's `demo` upstream follows it.
    #[arg(long, value_name = "ADDR", conflicts_with = "config")]
    pub demo_upstream: Option<SocketAddr>,
}

impl RunArgs {
    /// Applies the address options to the node settings this process will use. `spec` is the
    /// configuration about to be applied: endpoints that pointed at the moved demo upstream
    /// follow it. Node settings need a restart, so reloads never undo these overrides.
    pub fn apply_overrides(&self, node: &mut NodeSpec, spec: &mut GatewaySpec) -> Result<(), String> {
        if self.listen.len() > node.listeners.len() {
            return Err(format!(
                "--listen is given {} times but the configuration has {} listener(s)",
                self.listen.len(),
                node.listeners.len()
            ));
        }
        for (listener, address) in node.listeners.iter_mut().zip(&self.listen) {
            listener.address = address.to_string();
        }
        if let Some(address) = self.admin_listen {
            match &mut node.admin {
                Some(admin) => admin.address = address.to_string(),
                None => node.admin = Some(AdminSpec::on(address.to_string())),
            }
        }
        if let Some(address) = self.demo_upstream {
            // The endpoints name the port, so it cannot be left for the system to pick.
            if address.port() == 0 {
                return Err("--demo-upstream needs a fixed port: the demo upstream's endpoints point at it".to_owned());
            }
            let moved = address.to_string();
            if let Some(configured) = node.demo_upstream.replace(moved.clone()) {
                let endpoints = spec.upstreams.iter_mut().flat_map(|upstream| upstream.endpoints.iter_mut());
                for endpoint in endpoints.filter(|endpoint| endpoint.address == configured) {
                    endpoint.address.clone_from(&moved);
                }
            }
        }
        Ok(())
    }
}

/// Options of `gantry validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Configuration file or directory. Without it, the embedded example is checked.
    #[arg(short, long, env = "GANTRY_CONFIG")]
    pub config: Option<PathBuf>,
}

/// What `gantry import` reads.
#[derive(Debug, Subcommand)]
pub enum ImportSource {
    /// Routes from an OpenAPI 3.0 or 3.1 document: one per path with its methods, all checked
    /// against the document by `openapi_validation`.
    Openapi(ImportOpenApiArgs),
    /// Routes from a WSDL 1.1 document: one per operation of a SOAP service, a REST/JSON
    /// `POST` that `rest_to_soap` turns into the SOAP call.
    Wsdl(ImportWsdlArgs),
}

/// Options of `gantry import wsdl`.
#[derive(Debug, Args)]
pub struct ImportWsdlArgs {
    /// The WSDL 1.1 document.
    pub file: PathBuf,
    /// Id of the upstream, and first part of each route id; by default made from the service's
    /// name.
    #[arg(long, value_name = "ID")]
    pub upstream: Option<String>,
    /// Path the routes start with (`/prefix/operation-name`); by default `/` and the upstream id.
    #[arg(long, value_name = "PATH")]
    pub prefix: Option<String>,
    /// Where the service is served (`http://host:port/path`), instead of its `soap:address`.
    #[arg(long, value_name = "URL")]
    pub address: Option<String>,
    /// The SOAP version of the binding to use where a service has ports of both (`1.1`,
    /// `1.2`); by default each service's first SOAP port.
    #[arg(long, value_name = "VERSION")]
    pub soap_version: Option<String>,
    /// Write the configuration to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Options of `gantry import openapi`.
#[derive(Debug, Args)]
pub struct ImportOpenApiArgs {
    /// The OpenAPI document, JSON or YAML.
    pub file: PathBuf,
    /// Where the API is served (`http://host:port`, `https://host`); by default the host of the
    /// document's first `servers` URL.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Write the configuration to FILE instead of standard output; the document is then named
    /// relative to FILE's directory when it lies below it.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Id of the upstream and the service, and first part of each route id; by default made
    /// from the document's title.
    #[arg(long)]
    pub id: Option<String>,
}
