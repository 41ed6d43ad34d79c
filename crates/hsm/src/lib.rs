//! Issuer keys that never leave a PKCS#11 token (an HSM, a cloud KMS's
//! PKCS#11 interface, SoftHSM2).
//!
//! - [`Hsm::open`] loads the module, finds the token by label or slot and
//!   logs in with the user PIN; every failure is one line naming the cause.
//! - [`Hsm::generate_rsa_2048`] makes an RSA-2048 key pair (e = 65537) inside
//!   the token: a token object, private, sensitive and never extractable. The
//!   caller keeps its [`ObjectRef`] (CKA_ID and CKA_LABEL) and public key; the
//!   private key has no bytes outside the token.
//! - [`HsmKey`] is a [`blindpass_protocol::type2::blind_rsa::RawSigner`]: RSASP1 by
//!   `CKM_RSA_X_509` on the blinded message, then `s^e mod n == m` checked
//!   here (RFC 9474 §4.3) so that a fault in the token never reaches a client.
//! - Sessions are pooled (`pool.rs`); a token that goes away makes operations
//!   fail with [`HsmError::Unavailable`] (the server answers 503) and the pool
//!   reconnects, at most once a second, until it is back.
//!
//! Mechanisms the token must offer: `CKM_RSA_PKCS_KEY_PAIR_GEN` and
//! `CKM_RSA_X_509`.

#![forbid(unsafe_code)]

mod key;
mod pool;
#[cfg(feature = "testing")]
pub mod testing;

use std::path::PathBuf;
use std::sync::Arc;

use blindpass_protocol::rsa::RsaPublicKey;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::Session;
use zeroize::Zeroizing;

pub use key::HsmKey;

/// The key size blindpass generates (RFC 9578 type 2).
pub const MODULUS_BITS: u64 = 2048;
/// The public exponent blindpass generates, 65537.
pub const PUBLIC_EXPONENT: [u8; 3] = [1, 0, 1];
/// The CKA_LABEL prefix of every key object blindpass makes.
pub const LABEL_PREFIX: &str = "blindpass-";

/// Which token of the module holds the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token whose CKA label is this (trailing spaces ignored).
    Label(String),
    /// The slot with this id.
    Slot(u64),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Label(label) => write!(f, "token {label:?}"),
            Self::Slot(slot) => write!(f, "the token in slot {slot}"),
        }
    }
}

/// How to reach the token. The PIN is redacted in `Debug`.
#[derive(Clone)]
pub struct HsmConfig {
    /// The PKCS#11 module (shared library).
    pub module: PathBuf,
    /// The token.
    pub token: TokenSelector,
    /// The user PIN.
    pub pin: Zeroizing<String>,
}

impl std::fmt::Debug for HsmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmConfig")
            .field("module", &self.module)
            .field("token", &self.token)
            .field("pin", &"<redacted>")
            .finish()
    }
}

/// A key object in the token: its CKA_ID and CKA_LABEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// CKA_ID, shared by the private and public key objects.
    pub id: Vec<u8>,
    /// CKA_LABEL.
    pub label: String,
}

/// What can go wrong, each one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HsmError {
    /// The module could not be loaded or initialised.
    #[error("PKCS#11 module {path} could not be loaded: {cause}")]
    Module {
        /// The module's path.
        path: String,
        /// Why.
        cause: String,
    },
    /// No token matches the selector.
    #[error("no {wanted} in PKCS#11 module {module} (tokens present: {present})")]
    NoToken {
        /// The selector.
        wanted: String,
        /// The module's path.
        module: String,
        /// The tokens the module offers.
        present: String,
    },
    /// The user PIN was refused.
    #[error("PKCS#11 login to {token} failed: {reason}")]
    Login {
        /// The token.
        token: String,
        /// Why (incorrect PIN, locked PIN, ...).
        reason: String,
    },
    /// The token cannot be reached now (removed, not logged in, device
    /// error); the pool reconnects.
    #[error("the PKCS#11 token is unavailable: {0}")]
    Unavailable(String),
    /// No private key object with this CKA_ID.
    #[error("no private key with CKA_ID {0} in the PKCS#11 token")]
    KeyMissing(String),
    /// The token made something blindpass refuses to use (an extractable
    /// key, a wrong size).
    #[error("PKCS#11 token refused: {0}")]
    Refused(String),
    /// A PKCS#11 call failed.
    #[error("PKCS#11 {operation} failed: {code}")]
    Failed {
        /// The call.
        operation: &'static str,
        /// The CKR_ code or cryptoki's error.
        code: String,
        /// True when the code means the token or the session is gone.
        gone: bool,
    },
}

impl HsmError {
    /// True when retrying later may succeed (answer 503, not 500).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::KeyMissing(_) | Self::Failed { gone: true, .. })
    }
}

/// An open, logged-in token. Cheap to clone; every clone shares one session
/// pool.
#[derive(Clone)]
pub struct Hsm {
    pool: Arc<pool::Pool>,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("module", &self.pool.config().module)
            .field("token", &self.pool.config().token)
            .finish()
    }
}

impl Hsm {
    /// Loads the module, finds the token and logs in: a wrong PIN, a missing
    /// module or token is an error here, at start, not at the first request.
    pub fn open(config: HsmConfig) -> Result<Self, HsmError> {
        Ok(Self { pool: Arc::new(pool::Pool::connect(config)?) })
    }

    /// The token, for logs: `token "label" in slot N (model)`.
    pub fn describe(&self) -> String {
        self.pool.describe()
    }

    /// Generates an RSA-2048 key pair with e = 65537 inside the token and
    /// returns its reference and public key. The private key is a token
    /// object with CKA_SENSITIVE true and CKA_EXTRACTABLE false, checked
    /// after generation (a token that does not honour them has the pair
    /// destroyed and the call refused).
    pub fn generate_rsa_2048(&self) -> Result<(ObjectRef, RsaPublicKey), HsmError> {
        self.pool.with_session(|session, _| {
            let id = session.generate_random_vec(16).map_err(failed("C_GenerateRandom"))?;
            let label = format!("{LABEL_PREFIX}{}", hex(&id));
            let public_template = [
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::Encrypt(false),
                Attribute::Wrap(false),
                Attribute::ModulusBits(MODULUS_BITS.into()),
                Attribute::PublicExponent(PUBLIC_EXPONENT.to_vec()),
                Attribute::Id(id.clone()),
                Attribute::Label(label.clone().into_bytes()),
            ];
            let private_template = [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Decrypt(false),
                Attribute::Unwrap(false),
                Attribute::Id(id.clone()),
                Attribute::Label(label.clone().into_bytes()),
            ];
            let (public, private) = session
                .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public_template, &private_template)
                .map_err(failed("C_GenerateKeyPair"))?;
            let checked = check_private_policy(session, private).and_then(|()| read_public(session, public));
            match checked {
                Ok(key) => Ok((ObjectRef { id, label }, key)),
                Err(e) => {
                    for object in [private, public] {
                        if let Err(destroy) = session.destroy_object(object) {
                            tracing::error!(error = %destroy, "could not destroy a refused key object");
                        }
                    }
                    Err(e)
                }
            }
        })
    }

    /// The signer for a key this token holds. Nothing is asked of the token
    /// until the first signature, so keys load while the token is away.
    pub fn key(&self, object: ObjectRef, public: RsaPublicKey) -> HsmKey {
        HsmKey::new(Arc::clone(&self.pool), object, public)
    }

    /// Destroys the private and public key objects with this CKA_ID; returns
    /// how many were destroyed.
    pub fn destroy(&self, id: &[u8]) -> Result<usize, HsmError> {
        self.pool.with_session(|session, _| {
            let objects = session.find_objects(&[Attribute::Id(id.to_vec())]).map_err(failed("C_FindObjects"))?;
            for &object in &objects {
                session.destroy_object(object).map_err(failed("C_DestroyObject"))?;
            }
            Ok(objects.len())
        })
    }

    /// Every RSA private key object blindpass made in the token.
    pub fn key_objects(&self) -> Result<Vec<ObjectRef>, HsmError> {
        self.pool.with_session(|session, _| {
            let template = [Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::KeyType(KeyType::RSA)];
            let mut found = Vec::new();
            for object in session.find_objects(&template).map_err(failed("C_FindObjects"))? {
                let attributes = session
                    .get_attributes(object, &[AttributeType::Id, AttributeType::Label])
                    .map_err(failed("C_GetAttributeValue"))?;
                let (mut id, mut label) = (Vec::new(), String::new());
                for attribute in attributes {
                    match attribute {
                        Attribute::Id(v) => id = v,
                        Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
                        _ => {}
                    }
                }
                if label.starts_with(LABEL_PREFIX) {
                    found.push(ObjectRef { id, label });
                }
            }
            Ok(found)
        })
    }
}

/// Refuses a private key the token would let out.
fn check_private_policy(session: &Session, private: cryptoki::object::ObjectHandle) -> Result<(), HsmError> {
    let attributes = session
        .get_attributes(private, &[AttributeType::Sensitive, AttributeType::Extractable, AttributeType::Token])
        .map_err(failed("C_GetAttributeValue"))?;
    for attribute in attributes {
        match attribute {
            Attribute::Sensitive(false) => return Err(HsmError::Refused("the private key is not sensitive".into())),
            Attribute::Extractable(true) => return Err(HsmError::Refused("the private key is extractable".into())),
            Attribute::Token(false) => return Err(HsmError::Refused("the private key is not a token object".into())),
            _ => {}
        }
    }
    Ok(())
}

/// The public key of a generated pair, checked to be RSA-2048 with e = 65537.
fn read_public(session: &Session, public: cryptoki::object::ObjectHandle) -> Result<RsaPublicKey, HsmError> {
    let attributes = session
        .get_attributes(public, &[AttributeType::Modulus, AttributeType::PublicExponent])
        .map_err(failed("C_GetAttributeValue"))?;
    let (mut n, mut e) = (Vec::new(), Vec::new());
    for attribute in attributes {
        match attribute {
            Attribute::Modulus(v) => n = v,
            Attribute::PublicExponent(v) => e = v,
            _ => {}
        }
    }
    let key = RsaPublicKey::from_components(&n, &e)
        .map_err(|err| HsmError::Refused(format!("the generated public key is unusable: {err}")))?;
    if u64::from(key.modulus_bits()) != MODULUS_BITS
        || blindpass_protocol::rsa::strip_leading_zeros(key.e()) != PUBLIC_EXPONENT
    {
        return Err(HsmError::Refused("the generated key is not RSA-2048 with e = 65537".into()));
    }
    Ok(key)
}

/// Maps a cryptoki error of `operation`.
pub(crate) fn failed(operation: &'static str) -> impl Fn(cryptoki::error::Error) -> HsmError {
    move |error| {
        use cryptoki::error::{Error, RvError};
        let (code, gone) = match &error {
            Error::Pkcs11(rv, _) => (
                format!("{rv:?}"),
                matches!(
                    rv,
                    RvError::DeviceRemoved
                        | RvError::DeviceError
                        | RvError::DeviceMemory
                        | RvError::TokenNotPresent
                        | RvError::TokenNotRecognized
                        | RvError::SessionHandleInvalid
                        | RvError::SessionClosed
                        | RvError::UserNotLoggedIn
                        | RvError::CryptokiNotInitialized
                        | RvError::SlotIdInvalid
                        | RvError::GeneralError
                ),
            ),
            other => (other.to_string(), false),
        };
        HsmError::Failed { operation, code, gone }
    }
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
