//! Base64url as the two dialects use it.
//!
//! Persona's SDKs decode with Go's `RawURLEncoding`, which rejects `=`, so
//! everything emitted in the Persona dialect is **unpadded**. RFC 9577 and
//! RFC 9578 values (`challenge`, `token-key`, `token`, directory keys) are
//! base64url **with** padding. Decoding accepts both forms (no `=` at all, or
//! exactly the canonical padding, never partial), but only the
//! URL-safe alphabet: a `+` or `/` is an error, never a guess.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Unpadded decoder: URL-safe alphabet, no `=`, trailing bits must be zero.
const URL_SAFE_UNPADDED: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// Padded decoder: URL-safe alphabet, exactly the canonical `=` count.
const URL_SAFE_PADDED: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(false),
);

/// Standard-alphabet decoder with canonical padding, for PEM bodies and the
/// `claim-payload` ciphertext of the Persona dialect.
const STANDARD_PADDED: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(false),
);

/// Standard alphabet without padding.
const STANDARD_UNPADDED: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// A value that is not base64url.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not valid base64url")]
pub struct Base64Error;

/// Encodes as base64url without padding (Persona dialect).
pub fn encode_unpadded(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Encodes as base64url with padding (RFC 9577 / RFC 9578).
pub fn encode_padded(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(bytes)
}

/// Decodes base64url, either without any padding or with exactly the
/// canonical padding. Rejects partial padding (`AA=`), `=` inside the value,
/// the standard alphabet's `+` and `/`, embedded whitespace and non-zero
/// trailing bits.
pub fn decode(text: &str) -> Result<Vec<u8>, Base64Error> {
    let engine = if text.contains('=') { &URL_SAFE_PADDED } else { &URL_SAFE_UNPADDED };
    engine.decode(text).map_err(|_| Base64Error)
}

/// Encodes with the standard alphabet and padding.
pub fn encode_standard(bytes: &[u8]) -> String {
    STANDARD_PADDED.encode(bytes)
}

/// Decodes the standard alphabet, unpadded or with exactly canonical padding.
pub fn decode_standard(text: &str) -> Result<Vec<u8>, Base64Error> {
    let engine = if text.contains('=') { &STANDARD_PADDED } else { &STANDARD_UNPADDED };
    engine.decode(text).map_err(|_| Base64Error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_padded_and_unpadded() {
        assert_eq!(decode("AAE").unwrap(), vec![0, 1]);
        assert_eq!(decode("AAE=").unwrap(), vec![0, 1]);
    }

    #[test]
    fn rejects_wrong_padding() {
        assert_eq!(decode("AA=="), Ok(vec![0]));
        assert_eq!(decode("AA="), Err(Base64Error), "one = where two are needed");
        assert_eq!(decode("AA==="), Err(Base64Error));
        assert_eq!(decode("AAE=="), Err(Base64Error));
        assert_eq!(decode("AA==AAAA"), Err(Base64Error), "= inside the value");
        assert_eq!(decode("A=AA"), Err(Base64Error));
        assert_eq!(decode("="), Err(Base64Error));
    }

    #[test]
    fn rejects_standard_alphabet() {
        assert_eq!(decode("+/8"), Err(Base64Error));
        assert_eq!(decode("-_8").unwrap(), vec![0xfb, 0xff]);
    }

    #[test]
    fn rejects_non_canonical_trailing_bits() {
        // "AAF" has non-zero trailing bits for a 2-byte value.
        assert_eq!(decode("AAF"), Err(Base64Error));
    }

    #[test]
    fn encodes_both_forms() {
        assert_eq!(encode_unpadded(&[0, 1]), "AAE");
        assert_eq!(encode_padded(&[0, 1]), "AAE=");
    }
}
