//! The `--config` TOML file, by construction: its keys are the flags of
//! `blindpass serve` (spelled like them, without the dashes), so every
//! option can be set in the file, and nothing else can. The file's values
//! reach the command as the flags they name, parsed by the same value
//! parsers, with the lowest precedence: defaults → file → environment →
//! flags. A store command (`keys`, `api-keys`, …) takes the store options
//! from the same file and leaves the server's alone.

use std::ffi::OsString;

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// `argv` with the options of the `--config` file its command takes (and
/// that neither the command line nor the environment gives) appended as
/// flags. A command line clap refuses, or one without `--config`, comes
/// back as it is (the real parse reports its errors).
pub(crate) fn apply(cmd: &Command, argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let mut cmd = cmd.clone();
    cmd.build();
    let Ok(matches) = cmd.clone().try_get_matches_from(&argv) else { return Ok(argv) };
    let (chain, leaf) = leaf(&matches);
    let Some(path) = config_path(&matches) else { return Ok(argv) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {path}"))?;
    check_keys(&cmd, &path, &table)?;
    let Some(leaf_cmd) = find(&cmd, &chain) else { return Ok(argv) };
    // `serve` takes every key; a store command only the store options (its
    // own flags may share a name with a server option: `api-keys create
    // --rate-limit` is a key's limit, not the environment's).
    let store_ids = crate::config::StoreArgs::ids();
    let serving = chain.first().map(String::as_str) == Some("serve");
    let mut out = argv;
    for arg in leaf_cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if !serving && !store_ids.iter().any(|id| id == arg.get_id().as_str()) {
            continue;
        }
        let Some(value) = table.get(long) else { continue };
        let id = arg.get_id().as_str();
        if matches!(leaf.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        out.extend(flags(long, value, matches!(arg.get_action(), ArgAction::SetTrue), &path)?);
    }
    Ok(out)
}

/// The names from the top command to the subcommand that runs, and its
/// matches.
fn leaf(matches: &ArgMatches) -> (Vec<String>, &ArgMatches) {
    let (mut chain, mut current) = (Vec::new(), matches);
    while let Some((name, sub)) = current.subcommand() {
        chain.push(name.to_owned());
        current = sub;
    }
    (chain, current)
}

fn find<'a>(cmd: &'a Command, chain: &[String]) -> Option<&'a Command> {
    chain.iter().try_fold(cmd, |c, name| c.find_subcommand(name))
}

/// `--config`, wherever the command line put it (it is a global store option).
fn config_path(matches: &ArgMatches) -> Option<String> {
    let mut current = Some(matches);
    let mut found = None;
    while let Some(m) = current {
        if let Ok(Some(p)) = m.try_get_one::<std::path::PathBuf>("config") {
            found = Some(p.display().to_string());
        }
        current = m.subcommand().map(|(_, sub)| sub);
    }
    found
}

/// Every key of the file is an option of `blindpass serve`.
fn check_keys(cmd: &Command, path: &str, table: &toml::Table) -> anyhow::Result<()> {
    let serve = cmd.find_subcommand("serve").context("the serve command")?;
    let known: Vec<&str> = serve.get_arguments().filter_map(|a| a.get_long()).collect();
    for key in table.keys() {
        if !known.contains(&key.as_str()) || key == "config" {
            bail!("{path}: {key:?} is not an option of `blindpass serve` (keys are spelled like its flags)");
        }
    }
    Ok(())
}

/// The flags that give option `long` the file's `value`.
fn flags(long: &str, value: &toml::Value, switch: bool, path: &str) -> anyhow::Result<Vec<OsString>> {
    let one = |v: &toml::Value| -> anyhow::Result<String> {
        Ok(match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => bail!("{path}: {long} must be a string, a number or a boolean"),
        })
    };
    match value {
        toml::Value::Boolean(b) if switch => Ok(if *b { vec![format!("--{long}").into()] } else { vec![] }),
        toml::Value::Array(items) => items.iter().map(|v| Ok(format!("--{long}={}", one(v)?).into())).collect(),
        v => Ok(vec![format!("--{long}={}", one(v)?).into()]),
    }
}
