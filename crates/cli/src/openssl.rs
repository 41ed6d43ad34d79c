//! `openssl speed rsa2048`, the reference every benchmark reports beside its
//! own figure (`bench sign`, `bench issue`).

use std::process::Command;

use anyhow::{Context, bail};

/// Runs `openssl speed -seconds N [-multi M] rsa2048` and returns its sign/s.
pub(crate) fn openssl_speed(seconds: u64, multi: Option<u32>) -> anyhow::Result<f64> {
    let mut args = vec!["speed".to_owned(), "-seconds".to_owned(), seconds.to_string()];
    if let Some(m) = multi {
        args.extend(["-multi".to_owned(), m.to_string()]);
    }
    args.push("rsa2048".to_owned());
    let output =
        Command::new("openssl").args(&args).output().context("running `openssl speed` (is openssl installed?)")?;
    if !output.status.success() {
        bail!("openssl speed failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    parse_openssl_sign_rate(&String::from_utf8_lossy(&output.stdout))
        .context("could not find the `rsa 2048 bits` line in openssl speed output")
}

/// Parses `rsa 2048 bits 0.001086s 0.000032s    920.5  31092.4` → 920.5.
fn parse_openssl_sign_rate(stdout: &str) -> Option<f64> {
    stdout
        .lines()
        .find(|l| l.trim_start().starts_with("rsa 2048 bits") || l.trim_start().starts_with("rsa  2048 bits"))
        .and_then(|line| line.split_whitespace().nth(5))
        .and_then(|s| s.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openssl_3_output() {
        let out = "version: 3.0.19\n                  sign    verify    sign/s verify/s\nrsa 2048 bits 0.001086s 0.000032s    920.5  31092.4\n";
        assert_eq!(parse_openssl_sign_rate(out), Some(920.5));
        assert_eq!(parse_openssl_sign_rate("nothing"), None);
    }
}
