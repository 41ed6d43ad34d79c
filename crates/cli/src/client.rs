//! `blindpass client …`: a real client, on `blindpass-client`.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use blindpass_client::{Client, RelayCredentials};
use clap::{Args, Subcommand};
use serde_json::json;
use zeroize::Zeroizing;

#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// Server base URL.
    #[arg(long, global = true, env = "BLINDPASS_BASE_URL", default_value = "http://127.0.0.1:8080")]
    base_url: String,
    /// API key (needed by `issue` and `flow`).
    #[arg(long, global = true, env = "BLINDPASS_API_KEY", hide_env_values = true)]
    api_key: Option<crate::config::Secret>,
    /// Machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: ClientCommand,
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Fetch a Persona challenge and the issuer key.
    Challenge(Scope),
    /// Issue Privacy Pass tokens (one per line on stdout, or into --out).
    Issue {
        #[command(flatten)]
        scope: Scope,
        /// How many tokens, issued concurrently.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Issue RFC 9577 tokens in generic batches of this many
        /// (draft-ietf-privacypass-batched-tokens) instead of Persona tokens
        /// one request each. The batch answers the RFC challenge of a relay
        /// created for the scope; generate-claim accepts the tokens at any
        /// relay of that environment and claim type.
        #[arg(long)]
        batch_size: Option<usize>,
        /// Token type: 2 (Blind RSA; Persona tokens unless --batch-size),
        /// 1 (VOPRF P-384) or 5 (VOPRF ristretto255). Types 1 and 5 are RFC
        /// 9577 tokens answering a relay's challenge of that type, issued
        /// one TokenRequest each, or in amortized batches of --batch-size
        /// (one proof per batch).
        #[arg(long, default_value_t = 2, value_parser = parse_token_type)]
        token_type: u16,
        /// Write the tokens to this file instead of stdout.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Redeem a token at a relay (generate-claim).
    Redeem {
        /// The relay token.
        #[arg(long)]
        relay_token: String,
        /// The relay secret.
        #[arg(long, env = "BLINDPASS_RELAY_SECRET", hide_env_values = true)]
        relay_secret: crate::config::Secret,
        /// The Privacy Pass token.
        #[arg(long)]
        token: String,
    },
    /// The whole Persona relay flow: challenge, issue, relay, claim.
    Flow(Scope),
}

#[derive(Debug, Args)]
struct Scope {
    /// Claim type.
    #[arg(long, default_value = "age_over18_verified")]
    claim_type: String,
    /// Use the production environment (default: sandbox).
    #[arg(long)]
    production: bool,
}

pub(crate) fn run(args: ClientArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: ClientArgs) -> anyhow::Result<()> {
    let mut client = Client::new(&args.base_url)?;
    if let Some(key) = &args.api_key {
        client = client.with_api_key(key.as_str());
    }
    let needs_key = matches!(args.command, ClientCommand::Issue { .. } | ClientCommand::Flow(_));
    if needs_key && args.api_key.is_none() {
        bail!("this command needs an API key: --api-key or BLINDPASS_API_KEY");
    }
    match args.command {
        ClientCommand::Challenge(scope) => challenge(&client, &scope, args.json).await,
        ClientCommand::Issue { scope, count, concurrency, batch_size, token_type, out } => {
            let tokens = match (token_type, batch_size) {
                (2, None) => issue_many(&client, &scope, count, concurrency.max(1)).await?,
                (t, size) => issue_rfc(&client, &scope, t, count, size.unwrap_or(1).max(1)).await?,
            };
            write_tokens(&tokens, args.json, out.as_deref())
        }
        ClientCommand::Redeem { relay_token, relay_secret, token } => {
            let relay = RelayCredentials {
                token: relay_token,
                secret: Zeroizing::new(relay_secret.as_str().to_owned()),
                session_access_token: String::new(),
            };
            let claim = client.generate_claim(&relay, &token).await?;
            match args.json {
                true => println!("{}", serde_json::to_string(&claim)?),
                false => println!("token-consumed: {}\n{}", claim.token_consumed, claim.claim_payload),
            }
            Ok(())
        }
        ClientCommand::Flow(scope) => flow(&client, &scope, args.json).await,
    }
}

async fn challenge(client: &Client, scope: &Scope, json: bool) -> anyhow::Result<()> {
    let offer = client.challenge(&scope.claim_type, !scope.production).await?;
    if json {
        println!(
            "{}",
            json!({
                "challenge": offer.challenge,
                "token-key-id": offer.key_id,
                "token-key": blindpass_protocol::b64::encode_unpadded(offer.key.rsa_encryption_spki()),
                "rfc9578-token-key-id": offer.key.token_key_id().to_hex(),
            })
        );
    } else {
        println!("token-key-id: {}", offer.key_id);
        println!("expires-at:   {}", offer.challenge.expires_at);
        println!("environment:  {}", offer.challenge.environment);
        println!("claim-type:   {}", offer.challenge.claim_type);
    }
    Ok(())
}

fn write_tokens(tokens: &[Zeroizing<String>], json: bool, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let text = if json {
        json!({ "tokens": tokens.iter().map(|t| t.as_str()).collect::<Vec<_>>() }).to_string() + "\n"
    } else {
        tokens.iter().map(|t| format!("{}\n", t.as_str())).collect()
    };
    match out {
        Some(path) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

async fn issue_many(
    client: &Client,
    scope: &Scope,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Zeroizing<String>>> {
    let offer = Arc::new(client.challenge(&scope.claim_type, !scope.production).await?);
    let done = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let progress = count > 1 && std::io::stderr().is_terminal();
    let mut workers = Vec::new();
    for _ in 0..concurrency.min(count) {
        let (client, offer, done, next) = (client.clone(), Arc::clone(&offer), Arc::clone(&done), Arc::clone(&next));
        workers.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < count {
                tokens.push(Zeroizing::new(client.issue(&offer).await?.encode()));
                let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                if progress {
                    draw_progress(n, count);
                }
            }
            anyhow::Ok(tokens)
        }));
    }
    let mut tokens = Vec::with_capacity(count);
    for w in workers {
        tokens.extend(w.await??);
    }
    if progress {
        eprintln!();
    }
    Ok(tokens)
}

/// `count` RFC 9577 tokens of `token_type` answering the challenge of a
/// relay created for the scope, `size` per request (type 2: generic
/// batches; types 1 and 5: a TokenRequest each, or amortized batches), as
/// base64url (the form `Authorization: PrivateToken token=` takes).
async fn issue_rfc(
    client: &Client,
    scope: &Scope,
    token_type: u16,
    count: usize,
    size: usize,
) -> anyhow::Result<Vec<Zeroizing<String>>> {
    let sandbox = !scope.production;
    let relay = client.create_relay(&scope.claim_type, None, sandbox).await?;
    let challenge = client.rfc_challenge_of(&relay, token_type).await?;
    let progress = count > 1 && std::io::stderr().is_terminal();
    let mut tokens = Vec::with_capacity(count);
    while tokens.len() < count {
        let n = size.min(count - tokens.len());
        let batch: Vec<Vec<u8>> = match token_type {
            2 => client.issue_rfc_batch(&challenge, n, sandbox).await?.iter().map(|t| t.encode()).collect(),
            _ => client.issue_voprf(&challenge, n, sandbox).await?.iter().map(|t| t.encode()).collect(),
        };
        if batch.is_empty() {
            bail!("the issuer issued none of a batch");
        }
        tokens.extend(batch.iter().map(|t| Zeroizing::new(blindpass_protocol::b64::encode_unpadded(t))));
        if progress {
            draw_progress(tokens.len(), count);
        }
    }
    if progress {
        eprintln!();
    }
    Ok(tokens)
}

fn parse_token_type(s: &str) -> Result<u16, String> {
    match s {
        "1" | "2" | "5" => s.parse().map_err(|_| String::new()),
        _ => Err(format!("unknown token type {s:?} (expected 1, 2 or 5)")),
    }
}

fn draw_progress(done: usize, total: usize) {
    const WIDTH: usize = 30;
    let filled = done * WIDTH / total.max(1);
    let bar: String = "#".repeat(filled) + &" ".repeat(WIDTH - filled);
    let mut stderr = std::io::stderr().lock();
    let _ = write!(stderr, "\r[{bar}] {done}/{total} tokens");
    let _ = stderr.flush();
}

async fn flow(client: &Client, scope: &Scope, json_output: bool) -> anyhow::Result<()> {
    let sandbox = !scope.production;
    let step = |n: u32, text: String| {
        if !json_output {
            println!("{n}. {text}");
        }
    };
    let offer = client.challenge(&scope.claim_type, sandbox).await.context("1. challenge")?;
    step(1, format!("challenge for {} ({}), key {}", scope.claim_type, offer.challenge.environment, offer.key_id));
    let token = client.issue(&offer).await.context("2. issue")?;
    step(2, format!("issued and finalized a token (nonce {}…)", token.token_nonce.get(..16).unwrap_or_default()));
    let relay = client.create_relay(&scope.claim_type, None, sandbox).await.context("3. create relay")?;
    step(3, format!("created relay {}", relay.token));
    let claim = client.generate_claim(&relay, &token.encode()).await.context("4. generate claim")?;
    step(4, format!("claim generated, token consumed: {}", claim.token_consumed));
    if json_output {
        println!(
            "{}",
            json!({
                "token-key-id": offer.key_id,
                "relay-token": relay.token,
                "claim-payload": claim.claim_payload,
                "token-consumed": claim.token_consumed,
            })
        );
    } else {
        println!("{}", claim.claim_payload);
    }
    Ok(())
}
