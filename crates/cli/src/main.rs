//! The `blindpass` binary: a thin `main` that parses the command line and
//! hands off to one module per subcommand.

#![forbid(unsafe_code)]

mod admin;
mod bench;
mod client;
mod config;
mod load;
mod serve;
mod settings;

use clap::{Parser, Subcommand};

/// A self-hostable Privacy Pass issuer and relay.
#[derive(Debug, Parser)]
#[command(name = "blindpass", version, about)]
struct Cli {
    #[command(flatten)]
    store: config::StoreArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve(Box<serve::ServeArgs>),
    /// Manage API keys (create, list, revoke).
    #[command(subcommand, name = "api-keys")]
    ApiKeys(admin::ApiKeysCommand),
    /// Manage issuer keys (list, rotate, retire).
    #[command(subcommand)]
    Keys(admin::KeysCommand),
    /// Show or change the issuer name shared by every node on the store.
    #[command(subcommand, name = "issuer-name")]
    IssuerName(admin::IssuerNameCommand),
    /// Apply database migrations (the server also applies them at start).
    Migrate,
    /// A Privacy Pass client: challenge, issue, redeem, or the whole flow.
    Client(Box<client::ClientArgs>),
    /// Benchmarks, with ratios against `openssl speed` measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(cmd) => bench::run(cmd),
        Command::Serve(args) => serve::run(&cli.store, *args),
        Command::ApiKeys(cmd) => admin::run_api_keys(&cli.store, cmd),
        Command::Keys(cmd) => admin::run_keys(&cli.store, cmd),
        Command::IssuerName(cmd) => admin::run_issuer_name(&cli.store, cmd),
        Command::Migrate => admin::migrate(&cli.store),
        Command::Client(args) => client::run(*args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // One line: the reason and its causes.
            let reason = format!("{err:#}").replace('\n', " ");
            eprintln!("blindpass: {reason}");
            std::process::ExitCode::FAILURE
        }
    }
}
