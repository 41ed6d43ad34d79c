//! RSA public keys and the public-key half of RSA arithmetic.
//!
//! Big-number arithmetic uses `crypto-bigint`'s Montgomery forms, which are
//! constant-time in the base: the client's blinding factor `r` and its inverse
//! never influence timing. Exponents here are public (`e`), so
//! exponentiation is bounded by `bit_len(e)`.

use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, CtLt, Odd};

use crate::der::{self, DerError, tag};

/// Smallest modulus accepted anywhere (RFC 9474 sets none; 2048 is the floor
/// for anything blindpass signs, encrypts to, or verifies).
pub const MIN_MODULUS_BITS: u32 = 2048;
/// Largest modulus accepted (the RFC 9474 vectors use 4096).
pub const MAX_MODULUS_BITS: u32 = 4096;

/// `id-RSASSA-PSS` AlgorithmIdentifier with SHA-384, MGF1-SHA-384 and salt 48,
/// exactly as RFC 9578 §6.5 requires (hash parameters absent, trailerField
/// omitted). DER of the whole AlgorithmIdentifier SEQUENCE.
pub const RSASSA_PSS_SHA384_ALGORITHM: [u8; 63] = [
    0x30, 0x3d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30, 0x30, 0xa0, 0x0d, 0x30, 0x0b,
    0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0xa1, 0x1a, 0x30, 0x18, 0x06, 0x09, 0x2a, 0x86,
    0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
    0x02, 0xa2, 0x03, 0x02, 0x01, 0x30,
];

/// `rsaEncryption` AlgorithmIdentifier with NULL parameters (what Go's
/// `x509.MarshalPKIXPublicKey` and Persona's `token-key` use).
pub const RSA_ENCRYPTION_ALGORITHM: [u8; 15] =
    [0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];

/// OID 1.2.840.113549.1.1.1 (contents only).
const RSA_ENCRYPTION_OID: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// Why a public key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The encoding is not valid DER of the expected structure.
    #[error("malformed key encoding: {0}")]
    Der(#[from] DerError),
    /// The AlgorithmIdentifier is not one this key type allows.
    #[error("unsupported key algorithm")]
    UnsupportedAlgorithm,
    /// The modulus size is outside what is allowed.
    #[error("unsupported modulus size: {bits} bits")]
    UnsupportedModulusSize {
        /// Size found.
        bits: u32,
    },
    /// The modulus is even, or the exponent is even, too small or too large.
    #[error("invalid RSA public key parameters")]
    InvalidParameters,
    /// A PEM wrapper that could not be read.
    #[error("malformed PEM")]
    Pem,
}

/// An RSA public key `(n, e)`, with Montgomery parameters precomputed.
#[derive(Clone)]
pub struct RsaPublicKey {
    n_bytes: Vec<u8>,
    e_bytes: Vec<u8>,
    n: Odd<BoxedUint>,
    e: BoxedUint,
    e_bits: u32,
    params: BoxedMontyParams,
    modulus_bits: u32,
}

impl std::fmt::Debug for RsaPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaPublicKey")
            .field("modulus_bits", &self.modulus_bits)
            .field("n", &hex::encode(&self.n_bytes))
            .field("e", &hex::encode(&self.e_bytes))
            .finish()
    }
}

impl PartialEq for RsaPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.n_bytes == other.n_bytes && self.e_bytes == other.e_bytes
    }
}
impl Eq for RsaPublicKey {}

impl RsaPublicKey {
    /// Builds a key from big-endian `n` and `e` (leading zeros allowed).
    ///
    /// Requires an odd modulus of [`MIN_MODULUS_BITS`]..=[`MAX_MODULUS_BITS`]
    /// bits and an odd exponent `3 <= e < 2^32`.
    pub fn from_components(n: &[u8], e: &[u8]) -> Result<Self, KeyError> {
        let n_bytes = strip_leading_zeros(n).to_vec();
        let e_bytes = strip_leading_zeros(e).to_vec();
        let modulus_bits = bit_len(&n_bytes);
        if !(MIN_MODULUS_BITS..=MAX_MODULUS_BITS).contains(&modulus_bits) {
            return Err(KeyError::UnsupportedModulusSize { bits: modulus_bits });
        }
        let e_bits = bit_len(&e_bytes);
        if !(2..=32).contains(&e_bits) || e_bytes.last().is_none_or(|b| b & 1 == 0) {
            return Err(KeyError::InvalidParameters);
        }
        let precision = precision_for(n_bytes.len());
        let n_uint = BoxedUint::from_be_slice(&n_bytes, precision).map_err(|_| KeyError::InvalidParameters)?;
        let n: Odd<BoxedUint> = Odd::new(n_uint).into_option().ok_or(KeyError::InvalidParameters)?;
        let e = BoxedUint::from_be_slice(&e_bytes, precision).map_err(|_| KeyError::InvalidParameters)?;
        // The modulus is public, so variable-time parameter setup is fine.
        let params = BoxedMontyParams::new_vartime(n.clone());
        Ok(Self { n_bytes, e_bytes, n, e, e_bits, params, modulus_bits })
    }

    /// Parses a DER `SubjectPublicKeyInfo` whose algorithm is `rsaEncryption`
    /// (parameters NULL or absent) or `id-RSASSA-PSS` with the exact
    /// SHA-384/MGF1-SHA-384/salt-48 parameters of RFC 9578 §6.5.
    pub fn from_spki_der(spki: &[u8]) -> Result<Self, KeyError> {
        let (algorithm, key) = parse_spki(spki)?;
        if algorithm != SpkiAlgorithm::RsaEncryption && algorithm != SpkiAlgorithm::RsassaPssSha384 {
            return Err(KeyError::UnsupportedAlgorithm);
        }
        Ok(key)
    }

    /// Parses a PKCS#1 `RSAPublicKey` (DER).
    pub fn from_pkcs1_der(der: &[u8]) -> Result<Self, KeyError> {
        let mut outer = der::Reader::new(der);
        let key = parse_rsa_public_key(&mut outer)?;
        outer.finish()?;
        Ok(key)
    }

    /// Parses PEM: `BEGIN PUBLIC KEY` (SPKI) or `BEGIN RSA PUBLIC KEY` (PKCS#1).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, der) = crate::pem::decode(pem).map_err(|_| KeyError::Pem)?;
        match label.as_str() {
            "PUBLIC KEY" => Self::from_spki_der(&der),
            "RSA PUBLIC KEY" => Self::from_pkcs1_der(&der),
            _ => Err(KeyError::Pem),
        }
    }

    /// Size of the modulus in bits.
    pub fn modulus_bits(&self) -> u32 {
        self.modulus_bits
    }

    /// Size of the modulus in bytes (`modulus_len`, `k`).
    pub fn modulus_len(&self) -> usize {
        self.n_bytes.len()
    }

    /// Big-endian modulus without leading zeros.
    pub fn n(&self) -> &[u8] {
        &self.n_bytes
    }

    /// Big-endian public exponent without leading zeros.
    pub fn e(&self) -> &[u8] {
        &self.e_bytes
    }

    /// DER PKCS#1 `RSAPublicKey`.
    pub fn to_pkcs1_der(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.n_bytes.len() + 16);
        der::write_unsigned_integer(&mut body, &self.n_bytes);
        der::write_unsigned_integer(&mut body, &self.e_bytes);
        der::element(tag::SEQUENCE, &body)
    }

    /// DER `SubjectPublicKeyInfo` with the `rsaEncryption` algorithm (Persona's
    /// `token-key`, Go's `x509.MarshalPKIXPublicKey`).
    pub fn to_rsa_encryption_spki(&self) -> Vec<u8> {
        self.spki_with(&RSA_ENCRYPTION_ALGORITHM)
    }

    /// DER `SubjectPublicKeyInfo` with `id-RSASSA-PSS` and SHA-384 parameters
    /// (RFC 9578 §6.5; the bytes whose SHA-256 is the `token_key_id`).
    pub fn to_rsassa_pss_spki(&self) -> Vec<u8> {
        self.spki_with(&RSASSA_PSS_SHA384_ALGORITHM)
    }

    fn spki_with(&self, algorithm: &[u8]) -> Vec<u8> {
        let pkcs1 = self.to_pkcs1_der();
        let mut bit_string = Vec::with_capacity(pkcs1.len() + 1);
        bit_string.push(0); // no unused bits
        bit_string.extend_from_slice(&pkcs1);
        let mut body = Vec::with_capacity(algorithm.len() + bit_string.len() + 8);
        body.extend_from_slice(algorithm);
        der::write(&mut body, tag::BIT_STRING, &bit_string);
        der::element(tag::SEQUENCE, &body)
    }

    /// Parses `bytes` as an integer that must be `< n` (no reduction).
    /// Returns `None` when `bytes` is not exactly `modulus_len` long or the
    /// value is `>= n`.
    pub(crate) fn uint_below_modulus(&self, bytes: &[u8]) -> Option<BoxedUint> {
        if bytes.len() != self.modulus_len() {
            return None;
        }
        let value = BoxedUint::from_be_slice(bytes, self.n.bits_precision()).ok()?;
        value.ct_lt(self.n.as_ref()).to_bool().then_some(value)
    }

    /// RSAVP1 / RSAEP: `x^e mod n` for `x < n`.
    pub(crate) fn public_op(&self, x: &BoxedUint) -> BoxedUint {
        self.pow_e(&self.monty(x)).retrieve()
    }

    /// `x^e` in Montgomery form, by left-to-right square-and-multiply: for
    /// the usual `e = 65537` that is 16 squarings and one multiplication,
    /// where `pow_bounded_exp`'s fixed 4-bit window first precomputes 15
    /// powers (about 35 operations in all; it measured as a fifth of a
    /// redemption's CPU). The exponent is public, so branching on its bits
    /// reveals nothing.
    pub(crate) fn pow_e(&self, x: &BoxedMontyForm) -> BoxedMontyForm {
        let mut acc = x.clone();
        // e >= 3 and odd (from_components), so its top bit is set: acc = x^1.
        for bit in (0..self.e_bits.saturating_sub(1)).rev() {
            acc = acc.square();
            if self.e.bit_vartime(bit) {
                acc = acc.mul(x);
            }
        }
        acc
    }

    pub(crate) fn monty(&self, x: &BoxedUint) -> BoxedMontyForm {
        BoxedMontyForm::new(x.clone(), &self.params)
    }

    /// I2OSP(x, modulus_len).
    pub(crate) fn to_fixed_bytes(&self, x: &BoxedUint) -> Vec<u8> {
        let full = x.to_be_bytes();
        let skip = full.len().saturating_sub(self.modulus_len());
        full.get(skip..).map(<[u8]>::to_vec).unwrap_or_default()
    }
}

/// Which AlgorithmIdentifier an SPKI carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpkiAlgorithm {
    /// `rsaEncryption`.
    RsaEncryption,
    /// `id-RSASSA-PSS` with exactly the RFC 9578 §6.5 parameters.
    RsassaPssSha384,
}

/// Parses an RSA SubjectPublicKeyInfo and says which algorithm it named.
pub fn parse_spki(spki: &[u8]) -> Result<(SpkiAlgorithm, RsaPublicKey), KeyError> {
    let mut outer = der::Reader::new(spki);
    let mut info = outer.sequence()?;
    outer.finish()?;
    let algorithm_der = info.read_raw(tag::SEQUENCE)?;
    let algorithm = if algorithm_der == RSASSA_PSS_SHA384_ALGORITHM {
        SpkiAlgorithm::RsassaPssSha384
    } else {
        let mut alg = der::Reader::new(algorithm_der).sequence()?;
        if alg.read(tag::OID)? != RSA_ENCRYPTION_OID {
            return Err(KeyError::UnsupportedAlgorithm);
        }
        if !alg.is_empty() {
            // RFC 3279 says NULL; some encoders omit it.
            if !alg.read(tag::NULL)?.is_empty() {
                return Err(KeyError::UnsupportedAlgorithm);
            }
            alg.finish()?;
        }
        SpkiAlgorithm::RsaEncryption
    };
    let bits = info.read(tag::BIT_STRING)?;
    info.finish()?;
    let (&unused_bits, pkcs1) = bits.split_first().ok_or(DerError::Truncated)?;
    if unused_bits != 0 {
        return Err(DerError::Unsupported.into());
    }
    Ok((algorithm, RsaPublicKey::from_pkcs1_der(pkcs1)?))
}

fn parse_rsa_public_key(reader: &mut der::Reader<'_>) -> Result<RsaPublicKey, KeyError> {
    let mut seq = reader.sequence()?;
    let n = seq.unsigned_integer()?;
    let e = seq.unsigned_integer()?;
    seq.finish()?;
    RsaPublicKey::from_components(n, e)
}

/// `bytes` without its leading zero bytes.
pub fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(first..).unwrap_or(&[])
}

fn bit_len(be: &[u8]) -> u32 {
    let trimmed = strip_leading_zeros(be);
    match trimmed.first() {
        None => 0,
        Some(&top) => (trimmed.len() as u32 - 1) * 8 + (8 - top.leading_zeros()),
    }
}

fn precision_for(len_bytes: usize) -> u32 {
    // Round up to a whole number of 64-bit limbs.
    let bits = (len_bytes as u32) * 8;
    bits.div_ceil(64) * 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_and_multiply_agrees_with_the_windowed_power() {
        // An odd 2048-bit modulus (not an RSA modulus: the identity holds
        // for any odd n) and bases spread over its range.
        let mut n = vec![0xa5u8; 256];
        n[0] = 0xc3;
        n[255] = 0x4b;
        for e in [&[3u8][..], &[17], &[1, 0, 1], &[0xff, 0xff, 0xff, 0xff], &[0x80, 0, 0, 1]] {
            let key = RsaPublicKey::from_components(&n, e).unwrap();
            for seed in 1..=4u8 {
                let mut x = vec![seed; 256];
                x[0] = 0x11 * seed;
                let x = key.uint_below_modulus(&x).unwrap();
                let m = key.monty(&x);
                assert_eq!(key.pow_e(&m), m.pow_bounded_exp(&key.e, key.e_bits), "e = {e:02x?}, seed {seed}");
            }
        }
    }

    #[test]
    fn bit_len_counts_top_byte() {
        assert_eq!(bit_len(&[0x00, 0x01]), 1);
        assert_eq!(bit_len(&[0x80, 0x00]), 16);
        assert_eq!(bit_len(&[]), 0);
    }

    #[test]
    fn rejects_small_even_and_bad_exponent() {
        let mut n = vec![0xffu8; 256];
        assert!(RsaPublicKey::from_components(&n, &[1, 0, 1]).is_ok());
        assert_eq!(
            RsaPublicKey::from_components(&n[..128], &[1, 0, 1]),
            Err(KeyError::UnsupportedModulusSize { bits: 1024 })
        );
        assert_eq!(RsaPublicKey::from_components(&n, &[1, 0, 0]), Err(KeyError::InvalidParameters));
        assert_eq!(RsaPublicKey::from_components(&n, &[1]), Err(KeyError::InvalidParameters));
        if let Some(last) = n.last_mut() {
            *last = 0xfe;
        }
        assert_eq!(RsaPublicKey::from_components(&n, &[1, 0, 1]), Err(KeyError::InvalidParameters));
    }
}
