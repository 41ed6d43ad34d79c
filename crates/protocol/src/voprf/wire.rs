//! Wire structures of the privately verifiable token types 0x0001
//! (VOPRF(P-384, SHA-384), RFC 9578 §5) and 0x0005 (VOPRF(ristretto255,
//! SHA-512), draft-ietf-privacypass-batched-tokens), single and amortized:
//!
//! ```text
//! struct { uint16_t token_type; uint8_t truncated_token_key_id; uint8_t blinded_msg[Ne]; } TokenRequest;
//! struct { uint8_t evaluate_msg[Ne]; uint8_t evaluate_proof[Ns+Ns]; } TokenResponse;
//! struct { uint16_t token_type; uint8_t truncated_token_key_id;
//!          BlindedElement blinded_elements<V>; } AmortizedBatchTokenRequest;
//! struct { EvaluatedElement evaluated_elements<V>; uint8_t evaluated_proof[Ns + Ns]; } AmortizedBatchTokenResponse;
//! struct { uint16_t token_type; uint8_t nonce[32]; uint8_t challenge_digest[32];
//!          uint8_t token_key_id[32]; uint8_t authenticator[Nk]; } Token;
//! ```
//!
//! `<V>` is a QUIC varint byte length, minimally encoded (as in
//! [`crate::batch`]). Every decoder takes untrusted bytes, checks every
//! length against the suite, rejects trailing bytes, and never panics.
//! Group elements are kept as bytes here; whether they are valid points is
//! decided where they are used ([`crate::voprf`]).

use crate::batch::{self, BatchError};
use crate::keys::TokenKeyId;
use crate::wire::{NONCE_LEN, WireError};

/// A VOPRF token type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Suite {
    /// Token type 0x0001, VOPRF(P-384, SHA-384).
    P384,
    /// Token type 0x0005, VOPRF(ristretto255, SHA-512).
    Ristretto255,
}

impl Suite {
    /// Both suites.
    pub const ALL: [Self; 2] = [Self::P384, Self::Ristretto255];

    /// The RFC 9578 token type.
    pub const fn token_type(self) -> u16 {
        match self {
            Self::P384 => crate::batch::TOKEN_TYPE_VOPRF_P384,
            Self::Ristretto255 => crate::batch::TOKEN_TYPE_VOPRF_RISTRETTO255,
        }
    }

    /// The suite of a token type, if it is a VOPRF one.
    pub const fn of_token_type(token_type: u16) -> Option<Self> {
        match token_type {
            crate::batch::TOKEN_TYPE_VOPRF_P384 => Some(Self::P384),
            crate::batch::TOKEN_TYPE_VOPRF_RISTRETTO255 => Some(Self::Ristretto255),
            _ => None,
        }
    }

    /// `Ne`: a serialized element.
    pub const fn element_len(self) -> usize {
        match self {
            Self::P384 => 49,
            Self::Ristretto255 => 32,
        }
    }

    /// `Ns`: a serialized scalar.
    pub const fn scalar_len(self) -> usize {
        match self {
            Self::P384 => 48,
            Self::Ristretto255 => 32,
        }
    }

    /// `Nk`: the authenticator (the suite's hash output).
    pub const fn authenticator_len(self) -> usize {
        match self {
            Self::P384 => 48,
            Self::Ristretto255 => 64,
        }
    }

    /// A single TokenResponse: `Ne + 2 Ns`.
    pub const fn response_len(self) -> usize {
        self.element_len() + 2 * self.scalar_len()
    }
}

/// Media type of an amortized batch request.
pub const MEDIA_TYPE_AMORTIZED_BATCH_REQUEST: &str = "application/private-token-amortized-batch-request";
/// Media type of an amortized batch response.
pub const MEDIA_TYPE_AMORTIZED_BATCH_RESPONSE: &str = "application/private-token-amortized-batch-response";

/// A single VOPRF TokenRequest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoprfTokenRequest {
    /// The suite (from the token type).
    pub suite: Suite,
    /// Last byte of the token key id.
    pub truncated_token_key_id: u8,
    /// The blinded element (`Ne` bytes).
    pub blinded_element: Vec<u8>,
}

impl VoprfTokenRequest {
    /// Serialises the request.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + self.blinded_element.len());
        out.extend_from_slice(&self.suite.token_type().to_be_bytes());
        out.push(self.truncated_token_key_id);
        out.extend_from_slice(&self.blinded_element);
        out
    }

    /// Parses a request of token type 1 or 5, exactly `3 + Ne` bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let [t0, t1, truncated_token_key_id, element @ ..] = bytes else { return Err(WireError::Truncated) };
        let token_type = u16::from_be_bytes([*t0, *t1]);
        let suite = Suite::of_token_type(token_type).ok_or(WireError::UnsupportedTokenType(token_type))?;
        if element.len() != suite.element_len() {
            return Err(WireError::WrongLength { expected: 3 + suite.element_len(), found: bytes.len() });
        }
        Ok(Self { suite, truncated_token_key_id: *truncated_token_key_id, blinded_element: element.to_vec() })
    }
}

/// A single VOPRF TokenResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoprfTokenResponse {
    /// The evaluated element (`Ne` bytes).
    pub evaluated_element: Vec<u8>,
    /// The DLEQ proof, `c ‖ s` (`2 Ns` bytes).
    pub proof: Vec<u8>,
}

impl VoprfTokenResponse {
    /// Serialises the response.
    pub fn encode(&self) -> Vec<u8> {
        [&self.evaluated_element[..], &self.proof[..]].concat()
    }

    /// Parses exactly `Ne + 2 Ns` bytes of `suite`.
    pub fn decode(suite: Suite, bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() != suite.response_len() {
            return Err(WireError::WrongLength { expected: suite.response_len(), found: bytes.len() });
        }
        let (element, proof) = bytes.split_at(suite.element_len());
        Ok(Self { evaluated_element: element.to_vec(), proof: proof.to_vec() })
    }
}

/// An amortized batch request: many blinded elements for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmortizedTokenRequest {
    /// The suite (from the token type).
    pub suite: Suite,
    /// Last byte of the token key id.
    pub truncated_token_key_id: u8,
    /// The blinded elements, `Ne` bytes each, in order.
    pub blinded_elements: Vec<Vec<u8>>,
}

impl AmortizedTokenRequest {
    /// Serialises the request.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.suite.token_type().to_be_bytes().to_vec();
        out.push(self.truncated_token_key_id);
        out.extend_from_slice(&batch::encode_varint(self.elements_len() as u64));
        for element in &self.blinded_elements {
            out.extend_from_slice(element);
        }
        out
    }

    fn elements_len(&self) -> usize {
        self.blinded_elements.iter().map(Vec::len).sum()
    }

    /// Parses a request of token type 1 or 5. `max_items` bounds the number
    /// of elements (checked before any is copied); an empty batch is refused.
    pub fn decode(bytes: &[u8], max_items: usize) -> Result<Self, AmortizedError> {
        let [t0, t1, truncated_token_key_id, rest @ ..] = bytes else { return Err(BatchError::Truncated.into()) };
        let token_type = u16::from_be_bytes([*t0, *t1]);
        let suite = Suite::of_token_type(token_type).ok_or(AmortizedError::UnsupportedTokenType(token_type))?;
        let elements = exact_vector(rest)?;
        let blinded_elements = split_elements(elements, suite.element_len(), max_items)?;
        Ok(Self { suite, truncated_token_key_id: *truncated_token_key_id, blinded_elements })
    }
}

/// An amortized batch response: one evaluated element per request element
/// and one DLEQ proof for all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmortizedTokenResponse {
    /// The evaluated elements, in request order.
    pub evaluated_elements: Vec<Vec<u8>>,
    /// The batched DLEQ proof, `c ‖ s`.
    pub proof: Vec<u8>,
}

impl AmortizedTokenResponse {
    /// Serialises the response.
    pub fn encode(&self) -> Vec<u8> {
        let len: usize = self.evaluated_elements.iter().map(Vec::len).sum();
        let mut out = batch::encode_varint(len as u64);
        for element in &self.evaluated_elements {
            out.extend_from_slice(element);
        }
        out.extend_from_slice(&self.proof);
        out
    }

    /// Parses the response to a request of `count` elements of `suite`.
    pub fn decode(suite: Suite, count: usize, bytes: &[u8]) -> Result<Self, AmortizedError> {
        let (len, rest) = batch::decode_varint(bytes)?;
        let len = usize::try_from(len).map_err(|_| BatchError::LengthMismatch)?;
        let (elements, proof) = rest.split_at_checked(len).ok_or(BatchError::Truncated)?;
        if elements.len() != count.saturating_mul(suite.element_len()) {
            return Err(AmortizedError::Count);
        }
        if proof.len() != 2 * suite.scalar_len() {
            return Err(BatchError::LengthMismatch.into());
        }
        let evaluated_elements = split_elements(elements, suite.element_len(), count)?;
        Ok(Self { evaluated_elements, proof: proof.to_vec() })
    }
}

/// Why an amortized batch could not be decoded (each a 422, except
/// [`AmortizedError::TooMany`], which the server answers as too large).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmortizedError {
    /// The framing is broken.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// A token type other than 1 and 5.
    #[error("unsupported token type {0:#06x}")]
    UnsupportedTokenType(u16),
    /// The elements do not divide into whole elements, or none were sent.
    #[error("the batch does not hold a whole, non-zero number of elements")]
    Count,
    /// More elements than allowed.
    #[error("the batch holds {found} elements, more than {max}")]
    TooMany {
        /// Elements in the batch.
        found: usize,
        /// The limit.
        max: usize,
    },
}

/// The contents of a `<V>` vector that fills `bytes` exactly.
fn exact_vector(bytes: &[u8]) -> Result<&[u8], BatchError> {
    let (len, rest) = batch::decode_varint(bytes)?;
    match usize::try_from(len) {
        Ok(len) if len == rest.len() => Ok(rest),
        Ok(len) if len > rest.len() => Err(BatchError::Truncated),
        _ => Err(BatchError::LengthMismatch),
    }
}

fn split_elements(bytes: &[u8], len: usize, max_items: usize) -> Result<Vec<Vec<u8>>, AmortizedError> {
    if len == 0 || bytes.is_empty() || !bytes.len().is_multiple_of(len) {
        return Err(AmortizedError::Count);
    }
    let found = bytes.len() / len;
    if found > max_items {
        return Err(AmortizedError::TooMany { found, max: max_items });
    }
    Ok(bytes.chunks_exact(len).map(<[u8]>::to_vec).collect())
}

/// A privately verifiable token (type 1 or 5).
#[derive(Clone, PartialEq, Eq)]
pub struct VoprfToken {
    /// The suite (from the token type).
    pub suite: Suite,
    /// Client nonce; the double-spend key.
    pub nonce: [u8; NONCE_LEN],
    /// SHA-256 of the TokenChallenge.
    pub challenge_digest: [u8; 32],
    /// Full token key id.
    pub token_key_id: TokenKeyId,
    /// The OPRF output over `token_input` (`Nk` bytes).
    pub authenticator: Vec<u8>,
}

impl std::fmt::Debug for VoprfToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoprfToken")
            .field("suite", &self.suite)
            .field("nonce", &hex::encode(self.nonce))
            .field("token_key_id", &self.token_key_id)
            .finish_non_exhaustive()
    }
}

/// `token_input` length: 2 + 32 + 32 + 32 (as for type 2).
pub const TOKEN_INPUT_LEN: usize = crate::wire::TOKEN_INPUT_LEN;

impl VoprfToken {
    /// `token_input = token_type ‖ nonce ‖ challenge_digest ‖ token_key_id`,
    /// the OPRF input.
    pub fn token_input(&self) -> [u8; TOKEN_INPUT_LEN] {
        token_input(self.suite, &self.nonce, &self.challenge_digest, &self.token_key_id)
    }

    /// Serialises the token.
    pub fn encode(&self) -> Vec<u8> {
        [&self.token_input()[..], &self.authenticator[..]].concat()
    }

    /// Parses a token of type 1 or 5, exactly `98 + Nk` bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let (input, authenticator) = bytes.split_at_checked(TOKEN_INPUT_LEN).ok_or(WireError::Truncated)?;
        let [t0, t1, rest @ ..] = input else { return Err(WireError::Truncated) };
        let token_type = u16::from_be_bytes([*t0, *t1]);
        let suite = Suite::of_token_type(token_type).ok_or(WireError::UnsupportedTokenType(token_type))?;
        if authenticator.len() != suite.authenticator_len() {
            return Err(WireError::WrongLength {
                expected: TOKEN_INPUT_LEN + suite.authenticator_len(),
                found: bytes.len(),
            });
        }
        let (nonce, rest) = rest.split_at(NONCE_LEN);
        let (digest, key_id) = rest.split_at(32);
        Ok(Self {
            suite,
            nonce: nonce.try_into().map_err(|_| WireError::Truncated)?,
            challenge_digest: digest.try_into().map_err(|_| WireError::Truncated)?,
            token_key_id: TokenKeyId(key_id.try_into().map_err(|_| WireError::Truncated)?),
            authenticator: authenticator.to_vec(),
        })
    }
}

/// Builds the 98-byte `token_input` of a type 1 or 5 token.
pub fn token_input(
    suite: Suite,
    nonce: &[u8; NONCE_LEN],
    challenge_digest: &[u8; 32],
    token_key_id: &TokenKeyId,
) -> [u8; TOKEN_INPUT_LEN] {
    crate::wire::token_input_of(suite.token_type(), nonce, challenge_digest, token_key_id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn requests_and_responses_round_trip_and_refuse_wrong_sizes() {
        for suite in [Suite::P384, Suite::Ristretto255] {
            let single =
                VoprfTokenRequest { suite, truncated_token_key_id: 9, blinded_element: vec![2; suite.element_len()] };
            let bytes = single.encode();
            assert_eq!(VoprfTokenRequest::decode(&bytes).unwrap(), single);
            assert!(matches!(VoprfTokenRequest::decode(&bytes[..bytes.len() - 1]), Err(WireError::WrongLength { .. })));
            let response = VoprfTokenResponse {
                evaluated_element: vec![3; suite.element_len()],
                proof: vec![4; 2 * suite.scalar_len()],
            };
            assert_eq!(VoprfTokenResponse::decode(suite, &response.encode()).unwrap(), response);

            let batch = AmortizedTokenRequest {
                suite,
                truncated_token_key_id: 1,
                blinded_elements: vec![vec![5; suite.element_len()]; 3],
            };
            let bytes = batch.encode();
            assert_eq!(AmortizedTokenRequest::decode(&bytes, 3).unwrap(), batch);
            assert_eq!(AmortizedTokenRequest::decode(&bytes, 2), Err(AmortizedError::TooMany { found: 3, max: 2 }));
            let answer = AmortizedTokenResponse {
                evaluated_elements: vec![vec![6; suite.element_len()]; 3],
                proof: vec![7; 2 * suite.scalar_len()],
            };
            assert_eq!(AmortizedTokenResponse::decode(suite, 3, &answer.encode()).unwrap(), answer);
            assert_eq!(AmortizedTokenResponse::decode(suite, 2, &answer.encode()), Err(AmortizedError::Count));
        }
    }

    #[test]
    fn malformed_amortized_requests_are_refused() {
        let empty = [0, 5, 1, 0];
        assert_eq!(AmortizedTokenRequest::decode(&empty, 10), Err(AmortizedError::Count));
        let ragged = [&[0u8, 5, 1, 33][..], &[1; 33]].concat();
        assert_eq!(AmortizedTokenRequest::decode(&ragged, 10), Err(AmortizedError::Count));
        let other = [0, 2, 1, 0];
        assert_eq!(AmortizedTokenRequest::decode(&other, 10), Err(AmortizedError::UnsupportedTokenType(2)));
        let short = [&[0u8, 5, 1, 33][..], &[1; 32]].concat();
        assert_eq!(AmortizedTokenRequest::decode(&short, 10), Err(AmortizedError::Batch(BatchError::Truncated)));
        assert_eq!(AmortizedTokenRequest::decode(&[0, 5], 10), Err(AmortizedError::Batch(BatchError::Truncated)));
    }

    #[test]
    fn tokens_round_trip_and_refuse_other_types_and_sizes() {
        for suite in [Suite::P384, Suite::Ristretto255] {
            let token = VoprfToken {
                suite,
                nonce: [1; 32],
                challenge_digest: [2; 32],
                token_key_id: TokenKeyId([3; 32]),
                authenticator: vec![4; suite.authenticator_len()],
            };
            let bytes = token.encode();
            assert_eq!(bytes.len(), 98 + suite.authenticator_len());
            assert_eq!(VoprfToken::decode(&bytes).unwrap(), token);
            assert!(VoprfToken::decode(&bytes[..bytes.len() - 1]).is_err());
        }
        let mut type2 = vec![0u8, 2];
        type2.resize(354, 0);
        assert_eq!(VoprfToken::decode(&type2), Err(WireError::UnsupportedTokenType(2)));
    }
}
