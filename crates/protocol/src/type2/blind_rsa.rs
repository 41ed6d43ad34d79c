//! RFC 9474 RSA blind signatures (RSABSSA), all four variants.
//!
//! Client: [`prepare`] → [`blind`] → (server [`blind_sign`]) → [`finalize`],
//! which always verifies. Anyone: [`verify`]. Randomness is injected, so the
//! official vectors replay through these same functions.
//!
//! The server's private-key operation sits behind [`RawSigner`] so that the
//! backend (aws-lc today, an HSM later) is pluggable; this module does the
//! RFC's checks around it.

use crypto_bigint::BoxedUint;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::rsa::RsaPublicKey;
use crate::type2::pss::HASH_LEN;
pub use crate::type2::pss::{emsa_pss_encode, emsa_pss_verify};

/// Length of the random prefix of the Randomized variants (RFC 9474 §4.1).
pub const PREFIX_LEN: usize = 32;

/// The four RSABSSA variants of RFC 9474 §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// RSABSSA-SHA384-PSS-Randomized: salt 48, random 32-byte prefix.
    Sha384PssRandomized,
    /// RSABSSA-SHA384-PSSZERO-Randomized: salt 0, random 32-byte prefix.
    Sha384PssZeroRandomized,
    /// RSABSSA-SHA384-PSS-Deterministic: salt 48, identity prepare (token type 2).
    Sha384PssDeterministic,
    /// RSABSSA-SHA384-PSSZERO-Deterministic: salt 0, identity prepare.
    Sha384PssZeroDeterministic,
}

impl Variant {
    /// All variants, in RFC order.
    pub const ALL: [Variant; 4] = [
        Variant::Sha384PssRandomized,
        Variant::Sha384PssZeroRandomized,
        Variant::Sha384PssDeterministic,
        Variant::Sha384PssZeroDeterministic,
    ];

    /// The RFC 9474 name, e.g. `RSABSSA-SHA384-PSS-Deterministic`.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Sha384PssRandomized => "RSABSSA-SHA384-PSS-Randomized",
            Variant::Sha384PssZeroRandomized => "RSABSSA-SHA384-PSSZERO-Randomized",
            Variant::Sha384PssDeterministic => "RSABSSA-SHA384-PSS-Deterministic",
            Variant::Sha384PssZeroDeterministic => "RSABSSA-SHA384-PSSZERO-Deterministic",
        }
    }

    /// Looks a variant up by its RFC 9474 name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == name)
    }

    /// PSS salt length in bytes (`sLen`).
    pub fn salt_len(self) -> usize {
        match self {
            Variant::Sha384PssRandomized | Variant::Sha384PssDeterministic => HASH_LEN,
            Variant::Sha384PssZeroRandomized | Variant::Sha384PssZeroDeterministic => 0,
        }
    }

    /// True for the variants whose Prepare adds a random prefix.
    pub fn is_randomized(self) -> bool {
        matches!(self, Variant::Sha384PssRandomized | Variant::Sha384PssZeroRandomized)
    }
}

/// Errors of [`blind`] (RFC 9474 §4.2 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BlindError {
    /// EMSA-PSS-ENCODE: the modulus is too small for the hash and salt.
    #[error("encoding error")]
    Encoding,
    /// `gcd(m, n) != 1`.
    #[error("invalid input")]
    InvalidInput,
    /// The blinding factor had no inverse (r shares a factor with n).
    #[error("blinding error")]
    Blinding,
}

/// Errors of [`blind_sign`] (RFC 9474 §4.3, RFC 9578 §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BlindSignError {
    /// The blinded message is not exactly `modulus_len` bytes.
    #[error("blinded message must be {expected} bytes, found {found}")]
    WrongLength {
        /// `modulus_len`.
        expected: usize,
        /// Length received.
        found: usize,
    },
    /// The blinded message is `>= n` (or a value the backend refuses, like 0 or 1).
    #[error("message representative out of range")]
    OutOfRange,
    /// The private-key operation failed or its result did not verify
    /// (`s^e mod n != m`): possibly a fault. Never returned to a client as-is.
    #[error("signing failure")]
    SigningFailure,
    /// The private key is out of reach for now (its HSM token is away);
    /// retrying later may succeed.
    #[error("the signer is unavailable")]
    Unavailable,
}

/// Errors of [`finalize`] (RFC 9474 §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FinalizeError {
    /// The blind signature is not `modulus_len` bytes.
    #[error("unexpected input size")]
    UnexpectedInputSize,
    /// The blind signature is `>= n` or the unblinded signature does not verify.
    #[error("invalid signature")]
    InvalidSignature,
}

/// A signature that does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid signature")]
pub struct VerifyError;

/// The private-key half of RSA: RSASP1 on an integer already known to be `< n`.
///
/// # Contract for implementations
/// - the operation is constant-time and base-blinded (RFC 9474 §7.1);
/// - it checks `s^e mod n == m` before returning and returns
///   [`BlindSignError::SigningFailure`] otherwise (RFC 9474 §4.3 step 3);
/// - it never reduces an input: `m >= n` is [`BlindSignError::OutOfRange`];
/// - the output is exactly `modulus_len` bytes.
pub trait RawSigner {
    /// The public half of the key.
    fn public_key(&self) -> &RsaPublicKey;

    /// RSASP1(sk, m) for the big-endian `m` of exactly `modulus_len` bytes.
    fn rsasp1(&self, m: &[u8]) -> Result<Vec<u8>, BlindSignError>;
}

/// RSAVP1 (RFC 8017 §5.2.2), the public operation a signature check needs.
/// [`RsaPublicKey`] has the pure implementation; a backend may bring a
/// faster one (`blindpass-rsa`'s aws-lc key does).
///
/// # Contract for implementations
/// - `rsavp1(s)` is `s^e mod n` as exactly `modulus_len` big-endian bytes;
/// - it is `None` unless `s` is exactly `modulus_len` bytes and `s < n`
///   (never reduced).
pub trait RawVerifier {
    /// The key the operation is for.
    fn rsa_public_key(&self) -> &RsaPublicKey;

    /// RSAVP1(pk, s).
    fn rsavp1(&self, s: &[u8]) -> Option<Vec<u8>>;
}

impl RawVerifier for RsaPublicKey {
    fn rsa_public_key(&self) -> &RsaPublicKey {
        self
    }

    fn rsavp1(&self, s: &[u8]) -> Option<Vec<u8>> {
        let s = self.uint_below_modulus(s)?;
        Some(self.to_fixed_bytes(&self.public_op(&s)))
    }
}

/// A message after RFC 9474 §4.1 Prepare (`msg_prefix ‖ msg`, or `msg`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedMessage(Vec<u8>);

impl PreparedMessage {
    /// The prepared bytes: what is actually signed and verified.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The client's secret from [`blind`]: `inv = r⁻¹ mod n`. Zeroised on drop.
pub struct BlindingSecret {
    inv: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for BlindingSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindingSecret(<redacted>)")
    }
}

impl BlindingSecret {
    /// Rebuilds a secret from the big-endian `inv` (for storage between
    /// steps, and for test vectors).
    pub fn from_inverse_bytes(inv: &[u8]) -> Self {
        Self { inv: Zeroizing::new(inv.to_vec()) }
    }

    /// The big-endian `inv` (keep it secret).
    pub fn inverse_bytes(&self) -> &[u8] {
        &self.inv
    }
}

/// RFC 9474 §4.1 Prepare: identity, or a fresh 32-byte random prefix.
pub fn prepare(variant: Variant, msg: &[u8], rng: &mut impl CryptoRng) -> PreparedMessage {
    if !variant.is_randomized() {
        return PreparedMessage(msg.to_vec());
    }
    let mut prepared = vec![0u8; PREFIX_LEN + msg.len()];
    let (prefix, rest) = prepared.split_at_mut(PREFIX_LEN);
    rng.fill_bytes(prefix);
    rest.copy_from_slice(msg);
    PreparedMessage(prepared)
}

/// Treats `msg` as already prepared (the application knows the prefix, or the
/// variant is Deterministic).
pub fn prepared(msg: &[u8]) -> PreparedMessage {
    PreparedMessage(msg.to_vec())
}

/// RFC 9474 §4.2 Blind. Draws the PSS salt, then `r`, from `rng` (in that
/// order) and returns `(blinded_msg, inv)`.
pub fn blind(
    pk: &RsaPublicKey,
    variant: Variant,
    msg: &PreparedMessage,
    rng: &mut impl CryptoRng,
) -> Result<(Vec<u8>, BlindingSecret), BlindError> {
    // 1. encoded_msg = EMSA-PSS-ENCODE(msg, bit_len(n) - 1) with a fresh salt.
    let mut salt = Zeroizing::new(vec![0u8; variant.salt_len()]);
    rng.fill_bytes(&mut salt);
    let em_bits = pk.modulus_bits() - 1;
    let encoded = emsa_pss_encode(msg.as_bytes(), em_bits, &salt).ok_or(BlindError::Encoding)?;
    let mut padded = Zeroizing::new(vec![0u8; pk.modulus_len()]);
    let offset = pk.modulus_len() - encoded.len();
    padded.get_mut(offset..).ok_or(BlindError::Encoding)?.copy_from_slice(&encoded);
    // 2. m = bytes_to_int(encoded_msg); 3. require gcd(m, n) == 1.
    let m = pk.uint_below_modulus(&padded).ok_or(BlindError::Encoding)?;
    let m_mont = pk.monty(&m);
    if m_mont.invert().into_option().is_none() {
        return Err(BlindError::InvalidInput);
    }
    // 4. r = random_integer_uniform(1, n); inv = r^-1 mod n.
    let r = random_below_modulus(pk, rng);
    let r_mont = pk.monty(&r);
    let inv = r_mont.invert().into_option().ok_or(BlindError::Blinding)?;
    // 5. x = RSAVP1(pk, r); z = m * x mod n.
    let x = pk.pow_e(&r_mont);
    let z = m_mont.mul(&x).retrieve();
    let blinded = pk.to_fixed_bytes(&z);
    let inv_bytes = Zeroizing::new(pk.to_fixed_bytes(&inv.retrieve()));
    Ok((blinded, BlindingSecret { inv: inv_bytes }))
}

/// RFC 9474 §4.3 BlindSign, with RFC 9578 §6.2's length check first.
pub fn blind_sign(signer: &(impl RawSigner + ?Sized), blinded_msg: &[u8]) -> Result<Vec<u8>, BlindSignError> {
    let pk = signer.public_key();
    if blinded_msg.len() != pk.modulus_len() {
        return Err(BlindSignError::WrongLength { expected: pk.modulus_len(), found: blinded_msg.len() });
    }
    // 1-2. m = bytes_to_int(blinded_msg); m >= n is "message representative
    // out of range". Never reduced.
    if pk.uint_below_modulus(blinded_msg).is_none() {
        return Err(BlindSignError::OutOfRange);
    }
    // 2-4. s = RSASP1(sk, m), checked s^e == m by the backend (see RawSigner).
    let sig = signer.rsasp1(blinded_msg)?;
    if sig.len() != pk.modulus_len() {
        return Err(BlindSignError::SigningFailure);
    }
    Ok(sig)
}

/// RFC 9474 §4.4 Finalize: unblinds and **verifies**; never returns an
/// unverified signature.
pub fn finalize(
    pk: &RsaPublicKey,
    variant: Variant,
    msg: &PreparedMessage,
    blind_sig: &[u8],
    secret: &BlindingSecret,
) -> Result<Vec<u8>, FinalizeError> {
    // 1. len(blind_sig) == modulus_len.
    if blind_sig.len() != pk.modulus_len() {
        return Err(FinalizeError::UnexpectedInputSize);
    }
    // 2. z = bytes_to_int(blind_sig); s = z * inv mod n (z >= n is refused).
    let z = pk.uint_below_modulus(blind_sig).ok_or(FinalizeError::InvalidSignature)?;
    let inv = pk.uint_below_modulus(&secret.inv).ok_or(FinalizeError::InvalidSignature)?;
    let s = pk.monty(&z).mul(&pk.monty(&inv)).retrieve();
    let sig = pk.to_fixed_bytes(&s);
    // 3. RSASSA-PSS-VERIFY(pk, msg, sig).
    verify(pk, variant, msg, &sig).map_err(|_| FinalizeError::InvalidSignature)?;
    Ok(sig)
}

/// RFC 9474 §4.5: RSASSA-PSS-VERIFY with SHA-384, MGF1-SHA-384 and the
/// variant's exact salt length. `pk` is the key, or a backend doing its
/// public operation ([`RawVerifier`]).
pub fn verify(
    pk: &(impl RawVerifier + ?Sized),
    variant: Variant,
    msg: &PreparedMessage,
    sig: &[u8],
) -> Result<(), VerifyError> {
    // RFC 8017 §8.1.2 step 1: length check; step 2: RSAVP1 with s < n.
    let full = pk.rsavp1(sig).ok_or(VerifyError)?;
    let em_bits = pk.rsa_public_key().modulus_bits() - 1;
    let em_len = (em_bits as usize).div_ceil(8);
    if full.len() < em_len {
        return Err(VerifyError);
    }
    // I2OSP(m, emLen): the leading bytes beyond emLen must be zero.
    let (high, em) = full.split_at(full.len() - em_len);
    if high.iter().any(|&b| b != 0) {
        return Err(VerifyError);
    }
    if emsa_pss_verify(msg.as_bytes(), em, em_bits, variant.salt_len()) { Ok(()) } else { Err(VerifyError) }
}

/// `random_integer_uniform(1, n)` by rejection sampling over `bit_len(n)` bits.
fn random_below_modulus(pk: &RsaPublicKey, rng: &mut impl CryptoRng) -> BoxedUint {
    let len = pk.modulus_len();
    let excess_bits = (len as u32) * 8 - pk.modulus_bits();
    let mut buf = Zeroizing::new(vec![0u8; len]);
    loop {
        rng.fill_bytes(&mut buf);
        if let Some(top) = buf.first_mut() {
            *top &= 0xffu8 >> excess_bits;
        }
        let Some(candidate) = pk.uint_below_modulus(&buf) else {
            continue;
        };
        if !candidate.is_zero().to_bool() {
            return candidate;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_names_round_trip() {
        for v in Variant::ALL {
            assert_eq!(Variant::from_name(v.name()), Some(v));
        }
        assert_eq!(Variant::from_name("RSABSSA-SHA512-PSS-Deterministic"), None);
    }
}
