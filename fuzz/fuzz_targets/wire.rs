//! RFC 9578 / RFC 9577 binary structures: TokenChallenge, TokenRequest,
//! TokenResponse and Token. Anything that decodes must re-encode to the
//! same bytes.
#![no_main]

use blindpass_protocol::type2::wire::{Token, TokenRequest, TokenResponse};
use blindpass_protocol::wire::TokenChallenge;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = TokenChallenge::decode(data) {
        assert_eq!(c.encode(), data);
    }
    if let Ok(r) = TokenRequest::decode(data) {
        assert_eq!(r.encode(), data);
    }
    if let Ok(r) = TokenResponse::decode(data) {
        assert_eq!(r.encode(), data);
    }
    if let Ok(t) = Token::decode(data) {
        assert_eq!(t.encode(), data);
    }
});
