//! Generic batched issuance, draft-ietf-privacypass-batched-tokens §6:
//! many TokenRequests of any token types in one request, answered by one
//! response in which each item is issued or absent.
//!
//! ```text
//! struct {
//!   uint16_t token_type;
//!   select (token_type) {
//!     case (0x0001): uint8_t truncated_token_key_id; uint8_t blinded_msg[Ne];   /* Ne = 49 */
//!     case (0x0002): uint8_t truncated_token_key_id; uint8_t blinded_msg[Nk];   /* Nk = 256 */
//!     case (0x0005): uint8_t truncated_token_key_id; uint8_t blinded_msg[Ne];   /* Ne = 32 */
//!   }
//! } GenericTokenRequest;
//! struct { GenericTokenRequest generic_token_requests<V>; } GenericBatchTokenRequest;
//!
//! struct { uint16_t token_type; /* then that type's TokenResponse */ } TokenResponse;
//! struct { optional<TokenResponse> token_response; } OptionalTokenResponse;  /* 0x00, or 0x01 ‖ value */
//! struct { OptionalTokenResponse token_responses<V>; } GenericBatchTokenResponse;
//! ```
//!
//! `<V>` is a QUIC variable-length integer (RFC 9000 §16) giving the
//! vector's length in bytes, in its minimal encoding. Items carry no length
//! of their own: each is as long as its token type says, so an item of an
//! unknown type makes the rest undecodable.
//!
//! [`Framing::Legacy`] is the earlier "arbitrary batch" layout that
//! privacypass-ts ≤ 0.8 sends as `application/private-token-arbitrary-batch-request`:
//! each request item and each response item is prefixed by a `uint16`
//! length (0 for an absent response), and a response item has no token type.

/// The generic batch request media type.
pub const MEDIA_TYPE_GENERIC_BATCH_REQUEST: &str = "application/private-token-generic-batch-request";
/// The generic batch response media type.
pub const MEDIA_TYPE_GENERIC_BATCH_RESPONSE: &str = "application/private-token-generic-batch-response";
/// The earlier name, sent by privacypass-ts ≤ 0.8 (legacy framing).
pub const MEDIA_TYPE_ARBITRARY_BATCH_REQUEST: &str = "application/private-token-arbitrary-batch-request";
/// The response to [`MEDIA_TYPE_ARBITRARY_BATCH_REQUEST`].
pub const MEDIA_TYPE_ARBITRARY_BATCH_RESPONSE: &str = "application/private-token-arbitrary-batch-response";

/// Token type 0x0001, VOPRF(P-384, SHA-384).
pub const TOKEN_TYPE_VOPRF_P384: u16 = 0x0001;
/// Token type 0x0005, VOPRF(ristretto255, SHA-512).
pub const TOKEN_TYPE_VOPRF_RISTRETTO255: u16 = 0x0005;

/// The wire layout of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The draft's generic batch (self-delimiting items).
    Generic,
    /// privacypass-ts ≤ 0.8's arbitrary batch (`uint16`-length items).
    Legacy,
}

impl Framing {
    /// The framing a request media type names, if it names one.
    pub fn of_request_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            m if m.eq_ignore_ascii_case(MEDIA_TYPE_GENERIC_BATCH_REQUEST) => Some(Self::Generic),
            m if m.eq_ignore_ascii_case(MEDIA_TYPE_ARBITRARY_BATCH_REQUEST) => Some(Self::Legacy),
            _ => None,
        }
    }

    /// The response media type that answers this framing.
    pub fn response_media_type(self) -> &'static str {
        match self {
            Self::Generic => MEDIA_TYPE_GENERIC_BATCH_RESPONSE,
            Self::Legacy => MEDIA_TYPE_ARBITRARY_BATCH_RESPONSE,
        }
    }
}

/// Sizes of a token type's blinded element and TokenResponse, for the types
/// the draft and RFC 9578 define.
pub fn element_sizes(token_type: u16) -> Option<(usize, usize)> {
    match token_type {
        TOKEN_TYPE_VOPRF_P384 => Some((49, 49 + 2 * 48)),
        crate::wire::TOKEN_TYPE_BLIND_RSA => Some((256, 256)),
        TOKEN_TYPE_VOPRF_RISTRETTO255 => Some((32, 32 + 2 * 32)),
        _ => None,
    }
}

/// Why a batch could not be decoded. Each is an unusable request (422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The bytes end inside a length or an item.
    #[error("the batch is truncated")]
    Truncated,
    /// Bytes follow the batch, or its length does not cover its items.
    #[error("the batch's length does not match its contents")]
    LengthMismatch,
    /// A length is not in its shortest encoding.
    #[error("a length is not minimally encoded")]
    NonMinimalLength,
    /// An item of a token type whose size is unknown (generic framing).
    #[error("unsupported token type {0:#06x}")]
    UnsupportedTokenType(u16),
    /// A response item does not answer its request item.
    #[error("response item {0} does not match its request")]
    Mismatch(usize),
}

/// One item of a batch request.
#[derive(Clone, PartialEq, Eq)]
pub struct GenericTokenRequest {
    /// Its token type.
    pub token_type: u16,
    /// The last byte of the key id it is for.
    pub truncated_token_key_id: u8,
    /// The blinded element (its token type's size).
    pub blinded_msg: Vec<u8>,
}

impl std::fmt::Debug for GenericTokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenericTokenRequest")
            .field("token_type", &self.token_type)
            .field("truncated_token_key_id", &self.truncated_token_key_id)
            .finish_non_exhaustive()
    }
}

impl GenericTokenRequest {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.token_type.to_be_bytes());
        out.push(self.truncated_token_key_id);
        out.extend_from_slice(&self.blinded_msg);
    }

    fn encoded_len(&self) -> usize {
        3 + self.blinded_msg.len()
    }

    /// An item whose bytes are exactly `bytes` (legacy framing: the length
    /// is known; a known type must have its size).
    fn from_exact(bytes: &[u8]) -> Result<Self, BatchError> {
        let [t0, t1, truncated_token_key_id, blinded_msg @ ..] = bytes else { return Err(BatchError::Truncated) };
        let token_type = u16::from_be_bytes([*t0, *t1]);
        if element_sizes(token_type).is_some_and(|(ne, _)| ne != blinded_msg.len()) {
            return Err(BatchError::LengthMismatch);
        }
        Ok(Self { token_type, truncated_token_key_id: *truncated_token_key_id, blinded_msg: blinded_msg.to_vec() })
    }
}

/// A batch request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchTokenRequest {
    /// The items, in order.
    pub items: Vec<GenericTokenRequest>,
}

impl BatchTokenRequest {
    /// Serialises in `framing`.
    pub fn encode(&self, framing: Framing) -> Vec<u8> {
        let mut body = Vec::new();
        for item in &self.items {
            if framing == Framing::Legacy {
                body.extend_from_slice(&(item.encoded_len() as u16).to_be_bytes());
            }
            item.encode_into(&mut body);
        }
        with_length(body)
    }

    /// Parses a whole batch request in `framing`.
    pub fn decode(bytes: &[u8], framing: Framing) -> Result<Self, BatchError> {
        let mut r = Reader(vector(bytes)?);
        let mut items = Vec::new();
        while !r.0.is_empty() {
            items.push(match framing {
                Framing::Generic => {
                    let token_type = r.peek_u16()?;
                    let (ne, _) = element_sizes(token_type).ok_or(BatchError::UnsupportedTokenType(token_type))?;
                    GenericTokenRequest::from_exact(r.take(3 + ne)?)?
                }
                Framing::Legacy => {
                    let len = usize::from(r.u16()?);
                    GenericTokenRequest::from_exact(r.take(len)?)?
                }
            });
        }
        Ok(Self { items })
    }
}

/// One issued item: its token type and that type's TokenResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericTokenResponse {
    /// The token type (the request item's).
    pub token_type: u16,
    /// The TokenResponse (a blind signature for type 2).
    pub body: Vec<u8>,
}

/// A batch response: one entry per request item, `None` where the issuer
/// did not issue it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchTokenResponse {
    /// The items, in request order.
    pub items: Vec<Option<GenericTokenResponse>>,
}

impl BatchTokenResponse {
    /// Serialises in `framing`.
    pub fn encode(&self, framing: Framing) -> Vec<u8> {
        let mut body = Vec::new();
        for item in &self.items {
            match (framing, item) {
                (Framing::Generic, None) => body.push(0),
                (Framing::Generic, Some(item)) => {
                    body.push(1);
                    body.extend_from_slice(&item.token_type.to_be_bytes());
                    body.extend_from_slice(&item.body);
                }
                (Framing::Legacy, None) => body.extend_from_slice(&0u16.to_be_bytes()),
                (Framing::Legacy, Some(item)) => {
                    body.extend_from_slice(&(item.body.len() as u16).to_be_bytes());
                    body.extend_from_slice(&item.body);
                }
            }
        }
        with_length(body)
    }

    /// Parses the response to `request` (the client's side): one item per
    /// request item, each of the request item's type and size.
    pub fn decode(bytes: &[u8], framing: Framing, request: &BatchTokenRequest) -> Result<Self, BatchError> {
        let mut r = Reader(vector(bytes)?);
        let mut items = Vec::with_capacity(request.items.len());
        for (i, asked) in request.items.iter().enumerate() {
            let size = element_sizes(asked.token_type).map(|(_, nr)| nr);
            items.push(match framing {
                Framing::Generic => r.generic_item(asked.token_type, size, i)?,
                Framing::Legacy => r.legacy_item(asked.token_type, size, i)?,
            });
        }
        if !r.0.is_empty() {
            return Err(BatchError::LengthMismatch);
        }
        Ok(Self { items })
    }
}

/// `body` behind its QUIC varint length.
fn with_length(body: Vec<u8>) -> Vec<u8> {
    let mut out = encode_varint(body.len() as u64);
    out.extend_from_slice(&body);
    out
}

/// The contents of a `<V>` vector that must fill `bytes` exactly.
fn vector(bytes: &[u8]) -> Result<&[u8], BatchError> {
    let (len, rest) = decode_varint(bytes)?;
    match usize::try_from(len) {
        Ok(len) if len == rest.len() => Ok(rest),
        Ok(len) if len > rest.len() => Err(BatchError::Truncated),
        _ => Err(BatchError::LengthMismatch),
    }
}

/// RFC 9000 §16: the two top bits give the length (1, 2, 4 or 8 bytes).
pub fn encode_varint(v: u64) -> Vec<u8> {
    match v {
        0..=0x3f => vec![v as u8],
        0x40..=0x3fff => ((v as u16) | 0x4000).to_be_bytes().to_vec(),
        0x4000..=0x3fff_ffff => ((v as u32) | 0x8000_0000).to_be_bytes().to_vec(),
        _ => ((v & 0x3fff_ffff_ffff_ffff) | 0xc000_0000_0000_0000).to_be_bytes().to_vec(),
    }
}

/// A QUIC varint and the bytes after it; a non-minimal encoding is refused.
pub fn decode_varint(bytes: &[u8]) -> Result<(u64, &[u8]), BatchError> {
    let first = *bytes.first().ok_or(BatchError::Truncated)?;
    let len = 1usize << (first >> 6);
    let (raw, rest) = bytes.split_at_checked(len).ok_or(BatchError::Truncated)?;
    let value = raw.iter().skip(1).fold(u64::from(first & 0x3f), |v, b| (v << 8) | u64::from(*b));
    let shortest = encode_varint(value).len();
    if shortest != len {
        return Err(BatchError::NonMinimalLength);
    }
    Ok((value, rest))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BatchError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(BatchError::Truncated)?;
        self.0 = rest;
        Ok(head)
    }

    fn peek_u16(&self) -> Result<u16, BatchError> {
        match self.0 {
            [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(BatchError::Truncated),
        }
    }

    fn u16(&mut self) -> Result<u16, BatchError> {
        let value = self.peek_u16()?;
        self.take(2)?;
        Ok(value)
    }

    /// `0x00`, or `0x01 ‖ token_type ‖ TokenResponse` of the asked type.
    fn generic_item(
        &mut self,
        asked: u16,
        size: Option<usize>,
        i: usize,
    ) -> Result<Option<GenericTokenResponse>, BatchError> {
        match self.take(1)? {
            [0] => Ok(None),
            [1] => {
                let token_type = self.u16()?;
                let size = size.filter(|_| token_type == asked).ok_or(BatchError::Mismatch(i))?;
                Ok(Some(GenericTokenResponse { token_type, body: self.take(size)?.to_vec() }))
            }
            _ => Err(BatchError::Mismatch(i)),
        }
    }

    /// `uint16` length (0: absent), then the TokenResponse of the asked type.
    fn legacy_item(
        &mut self,
        asked: u16,
        size: Option<usize>,
        i: usize,
    ) -> Result<Option<GenericTokenResponse>, BatchError> {
        let len = usize::from(self.u16()?);
        if len == 0 {
            return Ok(None);
        }
        if size.is_some_and(|size| size != len) {
            return Err(BatchError::Mismatch(i));
        }
        Ok(Some(GenericTokenResponse { token_type: asked, body: self.take(len)?.to_vec() }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn varints_round_trip_at_every_boundary_and_refuse_longer_encodings() {
        for v in [0, 1, 0x3f, 0x40, 0x3fff, 0x4000, 0x3fff_ffff, 0x4000_0000, (1 << 62) - 1] {
            let encoded = encode_varint(v);
            assert_eq!(decode_varint(&encoded).unwrap(), (v, &[][..]), "{v}");
        }
        assert_eq!(encode_varint(259), [0x41, 0x03]);
        assert_eq!(decode_varint(&[0x40, 0x05]), Err(BatchError::NonMinimalLength));
        assert_eq!(decode_varint(&[0x80, 0, 0, 0x05]), Err(BatchError::NonMinimalLength));
        assert_eq!(decode_varint(&[0x41]), Err(BatchError::Truncated));
        assert_eq!(decode_varint(&[]), Err(BatchError::Truncated));
    }

    fn item(token_type: u16, ne: usize) -> GenericTokenRequest {
        GenericTokenRequest { token_type, truncated_token_key_id: 7, blinded_msg: vec![9; ne] }
    }

    #[test]
    fn both_framings_round_trip_a_mixed_batch() {
        let request = BatchTokenRequest { items: vec![item(2, 256), item(1, 49), item(5, 32)] };
        let response = BatchTokenResponse {
            items: vec![Some(GenericTokenResponse { token_type: 2, body: vec![3; 256] }), None, None],
        };
        for framing in [Framing::Generic, Framing::Legacy] {
            let bytes = request.encode(framing);
            assert_eq!(BatchTokenRequest::decode(&bytes, framing).unwrap(), request);
            let bytes = response.encode(framing);
            assert_eq!(BatchTokenResponse::decode(&bytes, framing, &request).unwrap(), response);
        }
    }

    #[test]
    fn malformed_batches_are_refused() {
        let one = BatchTokenRequest { items: vec![item(2, 256)] }.encode(Framing::Generic);
        assert_eq!(BatchTokenRequest::decode(&one[..one.len() - 1], Framing::Generic), Err(BatchError::Truncated));
        let mut longer = one.clone();
        longer.push(0);
        assert_eq!(BatchTokenRequest::decode(&longer, Framing::Generic), Err(BatchError::LengthMismatch));
        let unknown = with_length(vec![0x12, 0x34, 0, 1, 2]);
        assert_eq!(
            BatchTokenRequest::decode(&unknown, Framing::Generic),
            Err(BatchError::UnsupportedTokenType(0x1234))
        );
        // Legacy: an unknown type has a length and decodes; a known one must have its size.
        let legacy_unknown = with_length(vec![0, 5, 0x12, 0x34, 0, 1, 2]);
        assert_eq!(BatchTokenRequest::decode(&legacy_unknown, Framing::Legacy).unwrap().items[0].token_type, 0x1234);
        let legacy_short = with_length(vec![0, 5, 0, 2, 0, 1, 2]);
        assert_eq!(BatchTokenRequest::decode(&legacy_short, Framing::Legacy), Err(BatchError::LengthMismatch));
        assert_eq!(BatchTokenRequest::decode(&[0], Framing::Generic).unwrap().items.len(), 0);
    }

    #[test]
    fn media_types_pick_the_framing() {
        assert_eq!(Framing::of_request_media_type(MEDIA_TYPE_GENERIC_BATCH_REQUEST), Some(Framing::Generic));
        assert_eq!(Framing::of_request_media_type(MEDIA_TYPE_ARBITRARY_BATCH_REQUEST), Some(Framing::Legacy));
        assert_eq!(Framing::of_request_media_type("application/private-token-request"), None);
    }
}
