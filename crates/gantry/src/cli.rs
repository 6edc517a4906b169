//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// Print the version.
    Version,
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
}

/// Options of `gantry validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Configuration file or directory. Without it, the embedded example is checked.
    #[arg(short, long, env = "GANTRY_CONFIG")]
    pub config: Option<PathBuf>,
}
