//! The `blindpass` binary: a thin `main` that parses the command line and
//! hands off to one module per subcommand.

#![forbid(unsafe_code)]

mod bench;

use clap::{Parser, Subcommand};

/// A self-hostable Privacy Pass issuer and relay.
#[derive(Debug, Parser)]
#[command(name = "blindpass", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmarks, with ratios against `openssl speed` measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(cmd) => bench::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("blindpass: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
