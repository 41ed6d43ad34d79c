//! `serve`'s automatic rotation and directory caching options, resolved and
//! checked against each other: a key must be announced at least one
//! directory max-age before it signs, and a rotated-out key must keep
//! verifying for the longest token lifetime.

use anyhow::{Context, bail};
use blindpass_service::rotation::RotationPolicy;
use blindpass_service::{Config, Environment, TOKEN_TYPES};
use clap::Args;

/// The longest a token stays redeemable after it is signed: its challenge
/// window and the next (RFC tokens: `(w + 2)` hours; Persona challenges
/// expire on the next-but-one hour).
pub(crate) const LONGEST_TOKEN_LIFETIME_SECS: i64 = 2 * 3600;

#[derive(Debug, Default, Args)]
pub(crate) struct RotationArgs {
    /// Rotate issuer keys automatically: `DURATION` for every environment
    /// and token type, or `ENV=DURATION` / `ENV:TYPE=DURATION` (the most
    /// specific wins); comma-separated or repeated. DURATION is seconds or
    /// a number with s, m, h or d (e.g. `30d`, `production:2=7d`).
    #[arg(long, env = "BLINDPASS_KEY_LIFETIME", value_delimiter = ',')]
    pub(crate) key_lifetime: Vec<String>,
    /// Seconds a new key is listed in the directory before it signs
    /// (default: the directory max-age + 60; never below the max-age).
    #[arg(long, value_parser = crate::units::signed_secs, env = "BLINDPASS_KEY_ANNOUNCE_SECS")]
    pub(crate) key_announce_secs: Option<i64>,
    /// The issuer directory's Cache-Control max-age (default 300).
    #[arg(long, value_parser = crate::units::signed_secs, env = "BLINDPASS_DIRECTORY_MAX_AGE_SECS")]
    pub(crate) directory_max_age_secs: Option<i64>,
    /// Up to this many seconds taken off the max-age at random per response,
    /// to spread clients' refreshes (default 0).
    #[arg(long, value_parser = crate::units::signed_secs, env = "BLINDPASS_DIRECTORY_MAX_AGE_JITTER_SECS")]
    pub(crate) directory_max_age_jitter_secs: Option<i64>,
}

impl RotationArgs {
    /// Fills `config`'s rotation and directory settings; `config` already
    /// holds the token types and the overlap.
    pub(crate) fn apply(&self, config: &mut Config) -> anyhow::Result<()> {
        let max_age = self.directory_max_age_secs.unwrap_or(config.directory_max_age_secs);
        if !(1..=86_400).contains(&max_age) {
            bail!("--directory-max-age-secs must be 1 to 86400 (got {max_age})");
        }
        let jitter = self.directory_max_age_jitter_secs.unwrap_or(0);
        if !(0..max_age).contains(&jitter) {
            bail!("--directory-max-age-jitter-secs must be 0 to {} (below the max-age; got {jitter})", max_age - 1);
        }
        let announce = self.key_announce_secs.unwrap_or(max_age + 60);
        if announce < max_age {
            bail!(
                "--key-announce-secs ({announce}) is below the directory max-age ({max_age}): \
                 clients with a cached directory would get tokens from a key they have not seen"
            );
        }
        let policies = policies(&self.key_lifetime, &config.token_types)?;
        if let Some(p) = policies.iter().find(|p| p.lifetime_secs <= announce) {
            bail!(
                "--key-lifetime for {} type {} ({} s) must be longer than the announcement lead ({announce} s)",
                p.environment,
                p.token_type,
                p.lifetime_secs
            );
        }
        if !policies.is_empty() && config.key_overlap_secs < LONGEST_TOKEN_LIFETIME_SECS {
            bail!(
                "--key-overlap-secs ({}) is below the longest token lifetime ({LONGEST_TOKEN_LIFETIME_SECS} s): \
                 automatic rotation would refuse tokens signed just before a switch",
                config.key_overlap_secs
            );
        }
        config.directory_max_age_secs = max_age;
        config.directory_max_age_jitter_secs = jitter;
        config.key_announce_secs = announce;
        config.key_rotation = policies;
        Ok(())
    }
}

/// One policy per (environment, issued token type) that some entry covers;
/// the most specific entry wins, and the same scope given twice is refused.
fn policies(entries: &[String], token_types: &[u16]) -> anyhow::Result<Vec<RotationPolicy>> {
    // (environment, token type, specificity, lifetime)
    let mut parsed: Vec<(Option<Environment>, Option<u16>, i64)> = Vec::new();
    for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let (scope, duration) = entry.rsplit_once('=').map_or((None, entry), |(s, d)| (Some(s), d));
        let lifetime = parse_duration(duration).with_context(|| format!("--key-lifetime {entry:?}"))?;
        let (environment, token_type) = match scope {
            None => (None, None),
            Some(scope) => {
                let (env, ty) = scope.split_once(':').map_or((scope, None), |(e, t)| (e, Some(t)));
                let env: Environment = env
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--key-lifetime {entry:?}: unknown environment {env:?}"))?;
                let ty = match ty {
                    None => None,
                    Some(t) => match t.parse::<u16>() {
                        Ok(t) if TOKEN_TYPES.contains(&t) => Some(t),
                        _ => bail!("--key-lifetime {entry:?}: {t:?} is not a token type (2, 1, 5)"),
                    },
                };
                (Some(env), ty)
            }
        };
        if parsed.iter().any(|(e, t, _)| (*e, *t) == (environment, token_type)) {
            bail!("--key-lifetime {entry:?}: that scope is given twice");
        }
        parsed.push((environment, token_type, lifetime));
    }
    let mut out = Vec::new();
    for environment in Environment::ALL {
        for &token_type in token_types {
            let best = parsed
                .iter()
                .filter(|(e, t, _)| e.is_none_or(|e| e == environment) && t.is_none_or(|t| t == token_type))
                .max_by_key(|(e, t, _)| (e.is_some(), t.is_some()));
            if let Some(&(_, _, lifetime_secs)) = best {
                out.push(RotationPolicy { environment, token_type, lifetime_secs });
            }
        }
    }
    Ok(out)
}

/// Seconds, or a number with `s`, `m`, `h` or `d`; at least one second.
fn parse_duration(text: &str) -> anyhow::Result<i64> {
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let n: i64 = number.parse().map_err(|_| anyhow::anyhow!("{text:?} is not a duration (e.g. 3600, 90m, 30d)"))?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => bail!("{text:?}: the unit must be s, m, h or d"),
    };
    match n.checked_mul(scale) {
        Some(secs) if secs >= 1 => Ok(secs),
        _ => bail!("{text:?} is out of range"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn resolve(entries: &[&str], overlap: i64) -> anyhow::Result<Config> {
        let args = RotationArgs { key_lifetime: entries.iter().map(|s| s.to_string()).collect(), ..Default::default() };
        let mut config = Config { key_overlap_secs: overlap, token_types: vec![2, 5], ..Config::default() };
        args.apply(&mut config)?;
        Ok(config)
    }

    #[test]
    fn the_most_specific_entry_wins() {
        let c = resolve(&["30d", "production=7d", "production:2=1d"], 604_800).unwrap();
        let of = |env: Environment, t: u16| {
            c.key_rotation.iter().find(|p| p.environment == env && p.token_type == t).unwrap().lifetime_secs
        };
        assert_eq!(of(Environment::Sandbox, 2), 30 * 86_400);
        assert_eq!(of(Environment::Production, 5), 7 * 86_400);
        assert_eq!(of(Environment::Production, 2), 86_400);
        assert_eq!(c.key_rotation.len(), 4);
        assert!(resolve(&["sandbox:5=2h"], 604_800).unwrap().key_rotation.len() == 1);
        assert!(resolve(&[], 0).unwrap().key_rotation.is_empty(), "no policy: no overlap rule");
    }

    #[test]
    fn policies_that_could_break_clients_are_refused() {
        for (entries, overlap, says) in [
            (&["1h"][..], 3600, "longest token lifetime"),
            (&["300"][..], 604_800, "longer than the announcement"),
            (&["staging=1d"][..], 604_800, "unknown environment"),
            (&["sandbox:3=1d"][..], 604_800, "not a token type"),
            (&["1w"][..], 604_800, "unit"),
            (&["-5"][..], 604_800, "out of range"),
            (&["1d", "1d"][..], 604_800, "twice"),
        ] {
            let e = format!("{:#}", resolve(entries, overlap).unwrap_err());
            assert!(e.contains(says), "{entries:?}: {e}");
        }
        let args = RotationArgs { key_announce_secs: Some(100), ..Default::default() };
        let e = args.apply(&mut Config::default()).unwrap_err().to_string();
        assert!(e.contains("below the directory max-age"), "{e}");
        let args = RotationArgs { directory_max_age_jitter_secs: Some(300), ..Default::default() };
        assert!(args.apply(&mut Config::default()).is_err(), "jitter must stay below the max-age");
    }
}
