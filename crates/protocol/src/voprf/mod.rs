//! Privately verifiable tokens: token type 0x0001, VOPRF(P-384, SHA-384)
//! (RFC 9578 §5, RFC 9497), and token type 0x0005, VOPRF(ristretto255,
//! SHA-512) (draft-ietf-privacypass-batched-tokens), on `voprf-ng`.
//!
//! The issuer's key is a scalar derived with `DeriveKeyPair(seed,
//! "PrivacyPass")`; its public key is the serialized element (49-byte
//! compressed SEC1 point, or 32-byte ristretto255 encoding) and the token key
//! id is SHA-256 of that encoding. A token's authenticator is the OPRF output
//! over its `token_input`, so only the private key verifies it: the redeemer
//! recomputes it and compares in constant time.
//!
//! One issuance of `n` tokens is one batched evaluation with one DLEQ proof:
//! a single TokenRequest is the batch of one, an amortized batch request the
//! batch of many. Nothing here allocates more than the caller's bound on the
//! number of elements.

use p384::NistP384;
use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use voprf_ng::{BlindedElement, CipherSuite, Group, Ristretto255, VoprfServer};
use zeroize::Zeroizing;

use crate::keys::TokenKeyId;
use crate::voprf::wire::VoprfToken;

mod client;
pub mod wire;
pub use client::{IssuanceState, begin_issuance, finalize_issuance};

/// The `info` of RFC 9578 §5.6 key derivation.
pub const KEY_INFO: &[u8] = b"PrivacyPass";

/// A VOPRF token type (its wire sizes live with the wire types).
pub use crate::voprf::wire::Suite;

/// A VOPRF operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VoprfError {
    /// A blinded or evaluated element is not a valid, non-identity element.
    #[error("not a valid group element")]
    InvalidElement,
    /// Bytes that are not a valid private key (zero, or not a scalar).
    #[error("not a valid private key")]
    InvalidKey,
    /// Bytes that are not a valid public key.
    #[error("not a valid public key")]
    InvalidPublicKey,
    /// The issuer's DLEQ proof does not verify.
    #[error("the issuer's proof does not verify")]
    Proof,
    /// An empty batch, or counts that do not match.
    #[error("the batch is empty or its parts do not match")]
    Batch,
    /// The random number generator failed.
    #[error("the random number generator failed")]
    Rng,
}

pub(crate) fn map_err(e: voprf_ng::Error) -> VoprfError {
    match e {
        voprf_ng::Error::Deserialization => VoprfError::InvalidElement,
        voprf_ng::Error::ProofVerification => VoprfError::Proof,
        voprf_ng::Error::Rng => VoprfError::Rng,
        _ => VoprfError::Batch,
    }
}

/// An issuer's public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    suite: Suite,
    bytes: Vec<u8>,
    token_key_id: TokenKeyId,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey").field("suite", &self.suite).field("token_key_id", &self.token_key_id).finish()
    }
}

impl PublicKey {
    /// Parses a serialized element of `suite` (the directory's `token-key`).
    pub fn from_bytes(suite: Suite, bytes: &[u8]) -> Result<Self, VoprfError> {
        let valid = bytes.len() == suite.element_len()
            && match suite {
                Suite::P384 => <NistP384 as Group>::deserialize_elem(bytes).is_ok(),
                Suite::Ristretto255 => <Ristretto255 as Group>::deserialize_elem(bytes).is_ok(),
            };
        if !valid {
            return Err(VoprfError::InvalidPublicKey);
        }
        Ok(Self { suite, bytes: bytes.to_vec(), token_key_id: TokenKeyId::of(bytes) })
    }

    /// The suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The serialized element (`SerializeElement(pkI)`).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// SHA-256 of the serialized element.
    pub fn token_key_id(&self) -> TokenKeyId {
        self.token_key_id
    }

    /// Its last byte.
    pub fn truncated_token_key_id(&self) -> u8 {
        self.token_key_id.truncated()
    }
}

enum Server {
    P384(VoprfServer<NistP384>),
    Ristretto255(VoprfServer<Ristretto255>),
}

/// An issuer's private key (zeroized on drop, redacted in `Debug`).
pub struct SecretKey {
    server: Server,
    public: PublicKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey").field("public", &self.public).finish_non_exhaustive()
    }
}

/// The issuer's answer to `n` blinded elements: `n` evaluated elements and
/// one DLEQ proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The evaluated elements, in request order.
    pub evaluated_elements: Vec<Vec<u8>>,
    /// The (batched) proof, `c ‖ s`.
    pub proof: Vec<u8>,
}

/// A token that does not verify (the reason is not told to clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the token does not verify")]
pub struct InvalidToken;

impl SecretKey {
    /// A fresh key: `DeriveKeyPair(random(Ns), "PrivacyPass")` (RFC 9578 §5.6).
    pub fn generate(suite: Suite, rng: &mut impl CryptoRng) -> Result<Self, VoprfError> {
        let mut seed = Zeroizing::new(vec![0u8; suite.scalar_len()]);
        rng.fill_bytes(&mut seed);
        Self::derive(suite, &seed)
    }

    /// `DeriveKeyPair(seed, "PrivacyPass")`.
    pub fn derive(suite: Suite, seed: &[u8]) -> Result<Self, VoprfError> {
        let server = match suite {
            Suite::P384 => {
                Server::P384(VoprfServer::new_from_seed(seed, KEY_INFO).map_err(|_| VoprfError::InvalidKey)?)
            }
            Suite::Ristretto255 => {
                Server::Ristretto255(VoprfServer::new_from_seed(seed, KEY_INFO).map_err(|_| VoprfError::InvalidKey)?)
            }
        };
        Self::with_server(suite, server)
    }

    /// A key from its serialized scalar (`SerializeScalar(skI)`); the public
    /// key is recomputed from it.
    pub fn from_bytes(suite: Suite, scalar: &[u8]) -> Result<Self, VoprfError> {
        if scalar.len() != suite.scalar_len() {
            return Err(VoprfError::InvalidKey);
        }
        let server = match suite {
            Suite::P384 => Server::P384(VoprfServer::new_with_key(scalar).map_err(|_| VoprfError::InvalidKey)?),
            Suite::Ristretto255 => {
                Server::Ristretto255(VoprfServer::new_with_key(scalar).map_err(|_| VoprfError::InvalidKey)?)
            }
        };
        Self::with_server(suite, server)
    }

    fn with_server(suite: Suite, server: Server) -> Result<Self, VoprfError> {
        let public = match &server {
            Server::P384(s) => NistP384::serialize_elem(s.get_public_key()).to_vec(),
            Server::Ristretto255(s) => Ristretto255::serialize_elem(s.get_public_key()).to_vec(),
        };
        let public = PublicKey::from_bytes(suite, &public)?;
        Ok(Self { server, public })
    }

    /// The serialized scalar, for sealing at rest.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        // `serialize` is `SerializeScalar(sk) ‖ SerializeElement(pk)`.
        let both = match &self.server {
            Server::P384(s) => Zeroizing::new(s.serialize().to_vec()),
            Server::Ristretto255(s) => Zeroizing::new(s.serialize().to_vec()),
        };
        Zeroizing::new(both.get(..self.suite().scalar_len()).unwrap_or_default().to_vec())
    }

    /// The suite.
    pub fn suite(&self) -> Suite {
        self.public.suite
    }

    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// `BlindEvaluate` over every element with one batched DLEQ proof
    /// (RFC 9497 §3.3.2). Each element must be a valid, non-identity element
    /// of the suite, else [`VoprfError::InvalidElement`]. The proof's
    /// randomness comes from `rng`.
    pub fn evaluate(&self, blinded: &[Vec<u8>], rng: &mut impl CryptoRng) -> Result<Evaluation, VoprfError> {
        if blinded.is_empty() {
            return Err(VoprfError::Batch);
        }
        match &self.server {
            Server::P384(s) => evaluate_with(s, blinded, rng),
            Server::Ristretto255(s) => evaluate_with(s, blinded, rng),
        }
    }

    /// RFC 9578 §5.4: the token names this key and its authenticator equals
    /// `Evaluate(skI, token_input)`, compared in constant time. Challenge and
    /// double-spend checks belong to the redeemer.
    pub fn verify_token(&self, token: &VoprfToken) -> Result<(), InvalidToken> {
        if token.suite != self.suite() || token.token_key_id != self.public.token_key_id {
            return Err(InvalidToken);
        }
        let input = token.token_input();
        let expected = match &self.server {
            Server::P384(s) => s.evaluate(&input).map(|o| o.to_vec()),
            Server::Ristretto255(s) => s.evaluate(&input).map(|o| o.to_vec()),
        }
        .map_err(|_| InvalidToken)?;
        if bool::from(expected.ct_eq(&token.authenticator)) { Ok(()) } else { Err(InvalidToken) }
    }
}

fn evaluate_with<CS: CipherSuite>(
    server: &VoprfServer<CS>,
    blinded: &[Vec<u8>],
    rng: &mut impl CryptoRng,
) -> Result<Evaluation, VoprfError> {
    let elements = blinded
        .iter()
        .map(|b| BlindedElement::<CS>::deserialize(b).map_err(|_| VoprfError::InvalidElement))
        .collect::<Result<Vec<_>, _>>()?;
    let result = server.batch_blind_evaluate(rng, &elements).map_err(map_err)?;
    Ok(Evaluation {
        evaluated_elements: result.messages.iter().map(|m| m.serialize().to_vec()).collect(),
        proof: result.proof.serialize().to_vec(),
    })
}
