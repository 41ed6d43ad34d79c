//! The `blindpass` binary: a thin `main` that parses the command line and
//! hands off to one module per subcommand.

#![forbid(unsafe_code)]

mod admin;
mod bench;
mod client;
mod config;
mod config_file;
mod edge;
mod load;
mod openssl;
mod rotation;
mod serve;
mod settings;
mod signer;
mod units;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::StoreArgs;

/// A self-hostable Privacy Pass issuer and relay.
#[derive(Debug, Parser)]
#[command(name = "blindpass", version, about)]
struct Cli {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: Command,
}

/// A command on the store: its subcommand, and the store options, which are
/// accepted before or after that subcommand.
#[derive(Debug, Args)]
struct OnStore<C: Subcommand> {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: C,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve(Box<serve::ServeArgs>),
    /// Manage API keys (create, list, update, revoke).
    #[command(name = "api-keys")]
    ApiKeys(OnStore<admin::ApiKeysCommand>),
    /// Manage issuer keys (list, rotate, retire).
    Keys(OnStore<admin::KeysCommand>),
    /// Show or change the issuer name shared by every node on the store.
    #[command(name = "issuer-name")]
    IssuerName(OnStore<admin::IssuerNameCommand>),
    /// Apply database migrations (the server also applies them at start).
    Migrate(StoreOnly),
    /// A Privacy Pass client: challenge, issue, redeem, or the whole flow.
    Client(Box<client::ClientArgs>),
    /// Print the OpenAPI 3.1 document of the HTTP API (as served at /openapi.json).
    Openapi,
    /// Benchmarks, with ratios against `openssl speed` measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Debug, Args)]
struct StoreOnly {
    #[command(flatten)]
    store: StoreArgs,
}

/// Subcommands that work on the store; only these take store options.
const STORE_COMMANDS: [&str; 5] = ["serve", "api-keys", "keys", "issuer-name", "migrate"];

/// The command line: store options are global within each store command (so
/// `keys list --data-dir D` and `keys --data-dir D list` both work) and are
/// absent from `client` and `bench`, which neither show nor accept them.
fn command() -> clap::Command {
    let ids = StoreArgs::ids();
    let mut cmd = Cli::command();
    for name in STORE_COMMANDS {
        let ids = ids.clone();
        cmd = cmd.mut_subcommand(name, move |sub| {
            sub.mut_args(|arg| {
                let global = ids.iter().any(|id| arg.get_id() == id.as_str());
                arg.global(global)
            })
        });
    }
    cmd
}

/// Store options given before a subcommand that does not use the store.
fn misplaced_store_option(matches: &ArgMatches) -> Option<String> {
    StoreArgs::ids().into_iter().find(|id| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
}

fn main() -> std::process::ExitCode {
    let argv = match config_file::apply(&command(), std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(err) => {
            eprintln!("blindpass: {}", format!("{err:#}").replace('\n', " "));
            return std::process::ExitCode::FAILURE;
        }
    };
    let matches = command().get_matches_from(argv);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.format(&mut command()).exit(),
    };
    let result = match cli.command {
        Command::Bench(_) | Command::Client(_) | Command::Openapi if misplaced_store_option(&matches).is_some() => {
            let id = misplaced_store_option(&matches).unwrap_or_default().replace('_', "-");
            Err(anyhow::anyhow!("--{id} is a store option; client, bench and openapi do not use the store"))
        }
        Command::Bench(cmd) => bench::run(cmd),
        Command::Serve(mut args) => {
            args.store = std::mem::take(&mut args.store).or(&cli.store);
            serve::run(*args)
        }
        Command::ApiKeys(c) => admin::run_api_keys(&c.store.or(&cli.store), c.command),
        Command::Keys(c) => admin::run_keys(&c.store.or(&cli.store), c.command),
        Command::IssuerName(c) => admin::run_issuer_name(&c.store.or(&cli.store), c.command),
        Command::Migrate(c) => admin::migrate(&c.store.or(&cli.store)),
        Command::Client(args) => client::run(*args),
        Command::Openapi => {
            print!("{}", blindpass_server::openapi::json());
            Ok(())
        }
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
