//! `--signer software|pkcs11` and the PKCS#11 options: where type-2 issuer
//! keys are generated and kept. A store option (the server and `keys`
//! commands both make keys), given by flag or environment only; the PIN
//! comes from a file or `BLINDPASS_PKCS11_PIN`, never from a flag value
//! that `ps` would show.

use std::path::PathBuf;

use anyhow::{Context, bail};
use blindpass_hsm::{Hsm, HsmConfig, TokenSelector};
use clap::Args;
use zeroize::Zeroizing;

/// The environment variable that may hold the user PIN.
pub(crate) const PIN_ENV: &str = "BLINDPASS_PKCS11_PIN";

#[derive(Debug, Default, Clone, Args)]
pub(crate) struct SignerArgs {
    /// Where new type-2 (Blind RSA) issuer keys are made and kept: software
    /// (aws-lc, sealed in the store) or pkcs11 (generated inside an HSM
    /// token, never leaving it; the store keeps only a reference).
    #[arg(long, env = "BLINDPASS_SIGNER", value_parser = ["software", "pkcs11"])]
    pub(crate) signer: Option<String>,
    /// The HSM's PKCS#11 module (shared library), e.g.
    /// /usr/lib/softhsm/libsofthsm2.so.
    #[arg(long, env = "BLINDPASS_PKCS11_MODULE")]
    pub(crate) pkcs11_module: Option<PathBuf>,
    /// Label of the token that holds the keys.
    #[arg(long, env = "BLINDPASS_PKCS11_TOKEN_LABEL")]
    pub(crate) pkcs11_token_label: Option<String>,
    /// Slot id of the token (instead of --pkcs11-token-label).
    #[arg(long, env = "BLINDPASS_PKCS11_SLOT")]
    pub(crate) pkcs11_slot: Option<u64>,
    /// File holding the token's user PIN (its first line). Or set
    /// BLINDPASS_PKCS11_PIN.
    #[arg(long, env = "BLINDPASS_PKCS11_PIN_FILE")]
    pub(crate) pkcs11_pin_file: Option<PathBuf>,
}

impl SignerArgs {
    /// Every option of `self`, else the one in `outer`.
    pub(crate) fn or(self, outer: &SignerArgs) -> SignerArgs {
        let outer = outer.clone();
        SignerArgs {
            signer: self.signer.or(outer.signer),
            pkcs11_module: self.pkcs11_module.or(outer.pkcs11_module),
            pkcs11_token_label: self.pkcs11_token_label.or(outer.pkcs11_token_label),
            pkcs11_slot: self.pkcs11_slot.or(outer.pkcs11_slot),
            pkcs11_pin_file: self.pkcs11_pin_file.or(outer.pkcs11_pin_file),
        }
    }

    /// The token, opened and logged in, for `--signer pkcs11`; `None` for
    /// software keys. Every misconfiguration is an error here, at start.
    pub(crate) fn open(&self) -> anyhow::Result<Option<Hsm>> {
        let pkcs11_options = self.pkcs11_module.is_some()
            || self.pkcs11_token_label.is_some()
            || self.pkcs11_slot.is_some()
            || self.pkcs11_pin_file.is_some();
        if self.signer.as_deref() != Some("pkcs11") {
            if pkcs11_options {
                bail!("the --pkcs11-* options need --signer pkcs11");
            }
            return Ok(None);
        }
        let Some(module) = self.pkcs11_module.clone() else { bail!("--signer pkcs11 needs --pkcs11-module PATH") };
        let token = match (&self.pkcs11_token_label, self.pkcs11_slot) {
            (Some(label), None) => TokenSelector::Label(label.clone()),
            (None, Some(slot)) => TokenSelector::Slot(slot),
            (Some(_), Some(_)) => bail!("give one of --pkcs11-token-label and --pkcs11-slot, not both"),
            (None, None) => bail!("--signer pkcs11 needs --pkcs11-token-label LABEL or --pkcs11-slot N"),
        };
        let pin = self.pin()?;
        let hsm = Hsm::open(HsmConfig { module, token, pin })?;
        tracing::info!(token = %hsm.describe(), "type-2 issuer keys are generated and used inside the PKCS#11 token");
        Ok(Some(hsm))
    }

    fn pin(&self) -> anyhow::Result<Zeroizing<String>> {
        let from_env = std::env::var(PIN_ENV).ok().filter(|p| !p.is_empty()).map(Zeroizing::new);
        let pin = match (&self.pkcs11_pin_file, from_env) {
            (Some(_), Some(_)) => bail!("give the PKCS#11 PIN by --pkcs11-pin-file or {PIN_ENV}, not both"),
            (None, Some(pin)) => pin,
            (Some(path), None) => {
                let text = Zeroizing::new(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading the PKCS#11 PIN file {}", path.display()))?,
                );
                Zeroizing::new(text.lines().next().unwrap_or_default().to_owned())
            }
            (None, None) => bail!("--signer pkcs11 needs the user PIN: --pkcs11-pin-file PATH or {PIN_ENV}"),
        };
        if pin.is_empty() {
            bail!("the PKCS#11 PIN is empty");
        }
        Ok(pin)
    }
}
