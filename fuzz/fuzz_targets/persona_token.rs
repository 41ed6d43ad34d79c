//! Persona dialect: the base64url JSON token of generate-claim and the
//! base64url JSON challenge.
#![no_main]

use blindpass_protocol::persona;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(parsed) = persona::Token::decode(text) {
            let _ = parsed.token_input();
        }
        let _ = persona::Challenge::decode(text);
    }
});
