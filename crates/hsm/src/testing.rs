//! Throwaway SoftHSM2 tokens for tests (feature `testing`).
//!
//! SoftHSM2 reads its configuration (`SOFTHSM2_CONF`) once, at C_Initialize,
//! and a process initialises a module once: a test that opens a token in
//! its own process runs its body through [`on_fresh_token`], which re-runs
//! that one test in a child process whose environment names a fresh token.
//! Tests that start the real binary give it [`SoftHsm::env`] instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use zeroize::Zeroizing;

use crate::{HsmConfig, TokenSelector};

/// The user PIN of every test token.
pub const USER_PIN: &str = "1234-user";
/// The security officer PIN of every test token.
pub const SO_PIN: &str = "5678-officer";
/// The token label of every test token.
pub const LABEL: &str = "blindpass-test";
/// Set in the child process [`on_fresh_token`] starts: the token directory.
const CHILD_TOKEN_DIR: &str = "BLINDPASS_TEST_SOFTHSM_DIR";

/// Where Debian (and most distributions) put SoftHSM2's module.
pub fn module_path() -> Option<PathBuf> {
    [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// A SoftHSM2 configuration and token directory in a temporary directory,
/// with one initialised token ([`LABEL`], [`USER_PIN`]).
#[derive(Debug)]
pub struct SoftHsm {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl SoftHsm {
    /// A fresh token; panics (with the tool's output) when SoftHSM2 is not
    /// installed or the token cannot be made.
    #[allow(clippy::panic, clippy::expect_used)]
    pub fn new() -> Self {
        let temp = tempfile::tempdir().expect("temporary directory");
        let dir = temp.path().to_path_buf();
        let tokens = dir.join("tokens");
        std::fs::create_dir(&tokens).expect("token directory");
        std::fs::write(
            dir.join("softhsm2.conf"),
            format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()),
        )
        .expect("SoftHSM2 configuration");
        let output = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", LABEL, "--so-pin", SO_PIN, "--pin", USER_PIN])
            .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
            .output()
            .unwrap_or_else(|e| panic!("softhsm2-util (Debian package softhsm2) could not run: {e}"));
        assert!(
            output.status.success(),
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self { dir, _temp: Some(temp) }
    }

    fn existing(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), _temp: None }
    }

    /// The configuration file (`SOFTHSM2_CONF`).
    pub fn conf(&self) -> PathBuf {
        self.dir.join("softhsm2.conf")
    }

    /// The directory holding the token's own directory.
    pub fn tokens_dir(&self) -> PathBuf {
        self.dir.join("tokens")
    }

    /// The environment a process needs to see this token.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("SOFTHSM2_CONF".into(), self.conf().display().to_string())]
    }

    /// The configuration that opens this token with the right PIN.
    #[allow(clippy::expect_used)]
    pub fn config(&self) -> HsmConfig {
        HsmConfig {
            module: module_path().expect("SoftHSM2's module"),
            token: TokenSelector::Label(LABEL.into()),
            pin: Zeroizing::new(USER_PIN.into()),
        }
    }

    /// A file holding the user PIN (with a trailing newline, as `echo`
    /// writes it).
    #[allow(clippy::expect_used)]
    pub fn pin_file(&self) -> PathBuf {
        let path = self.dir.join("pin");
        std::fs::write(&path, format!("{USER_PIN}\n")).expect("PIN file");
        path
    }
}

impl Default for SoftHsm {
    fn default() -> Self {
        Self::new()
    }
}

/// True in the child process [`on_fresh_token`] starts (so that one-time
/// preparations the parent already made, like installing a tool, are not
/// repeated under the parent's other tests).
pub fn is_child() -> bool {
    std::env::var_os(CHILD_TOKEN_DIR).is_some()
}

/// Runs `body` with a fresh token, in a child process: `test` is the test's
/// name as the harness knows it (its path within the test binary), so that
/// the child runs only it. In the child (which has the token in its
/// environment) `body` runs directly.
#[allow(clippy::panic, clippy::expect_used)]
pub fn on_fresh_token(test: &str, body: impl FnOnce(&SoftHsm)) {
    if let Some(dir) = std::env::var_os(CHILD_TOKEN_DIR) {
        body(&SoftHsm::existing(Path::new(&dir)));
        return;
    }
    let token = SoftHsm::new();
    let exe = std::env::current_exe().expect("the test binary");
    let output = Command::new(exe)
        .args([test, "--exact", "--include-ignored", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", token.conf())
        .env(CHILD_TOKEN_DIR, &token.dir)
        .output()
        .expect("re-running the test in a child process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{test} failed in its child process:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Imports an RSA private key (PKCS#8 DER) into the token as a sensitive,
/// non-extractable signing key, to run known-answer vectors through the
/// token. blindpass itself only ever generates keys inside the token.
#[allow(clippy::expect_used)]
pub fn import_pkcs8(hsm: &crate::Hsm, pkcs8_der: &[u8]) -> crate::HsmKey {
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    let fields = rsa_private_key_fields(pkcs8_der).expect("a PKCS#8 RSA private key");
    let [_version, n, e, d, p, q, dp, dq, qinv] = fields;
    let public = blindpass_protocol::rsa::RsaPublicKey::from_components(&n, &e).expect("public key");
    let object = hsm
        .pool
        .with_session(|session, _| {
            let id = session.generate_random_vec(16).map_err(crate::failed("C_GenerateRandom"))?;
            let label = format!("{}imported-{}", crate::LABEL_PREFIX, crate::hex(&id));
            let template = [
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::RSA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Modulus(n.clone()),
                Attribute::PublicExponent(e.clone()),
                Attribute::PrivateExponent(d.clone()),
                Attribute::Prime1(p.clone()),
                Attribute::Prime2(q.clone()),
                Attribute::Exponent1(dp.clone()),
                Attribute::Exponent2(dq.clone()),
                Attribute::Coefficient(qinv.clone()),
                Attribute::Id(id.clone()),
                Attribute::Label(label.clone().into_bytes()),
            ];
            session.create_object(&template).map_err(crate::failed("C_CreateObject"))?;
            Ok(crate::ObjectRef { id, label })
        })
        .expect("importing the key into the token");
    hsm.key(object, public)
}

/// The nine INTEGERs of the RSAPrivateKey inside a PKCS#8 PrivateKeyInfo.
fn rsa_private_key_fields(der: &[u8]) -> Option<[Vec<u8>; 9]> {
    // PrivateKeyInfo ::= SEQUENCE { version, algorithm, OCTET STRING privateKey }
    let (info, _) = element(der, 0x30)?;
    let (_version, rest) = element(info, 0x02)?;
    let (_algorithm, rest) = element(rest, 0x30)?;
    let (private, _) = element(rest, 0x04)?;
    let (mut fields, _) = element(private, 0x30)?;
    let mut out: [Vec<u8>; 9] = Default::default();
    for slot in &mut out {
        let (value, rest) = element(fields, 0x02)?;
        *slot = blindpass_protocol::rsa::strip_leading_zeros(value).to_vec();
        fields = rest;
    }
    Some(out)
}

/// One DER element with tag `tag`: its contents and what follows it.
fn element(bytes: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = bytes.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        let (len_bytes, after) = rest.split_at_checked(count)?;
        rest = after;
        len_bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    rest.split_at_checked(len)
}
