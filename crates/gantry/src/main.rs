//! The `gantry` command: parses the command line and hands over to [`run`].

mod cli;
mod demo;
mod import;
mod import_wsdl;
mod run;
mod status;

use std::process::ExitCode;

use clap::Parser;

// mimalloc: the request path allocates many small, short-lived buffers, which glibc's
// allocator serves markedly slower (measured in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command.unwrap_or(cli::Command::Run(cli.run)) {
        cli::Command::Run(args) => run::run(args),
        cli::Command::Validate(args) => run::validate(args),
        cli::Command::Import(cli::ImportSource::Openapi(args)) => import::import_openapi(&args),
        cli::Command::Import(cli::ImportSource::Wsdl(args)) => import_wsdl::import_wsdl(&args),
        cli::Command::Status(args) => status::status(&args),
        cli::Command::Version => {
            println!("gantry {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}
