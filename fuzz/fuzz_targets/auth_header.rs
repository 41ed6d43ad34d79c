//! `WWW-Authenticate` and `Authorization: PrivateToken` header values.
#![no_main]

use blindpass_protocol::auth;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = auth::parse_elements(text);
        let _ = auth::parse_www_authenticate(text);
        let _ = auth::parse_authorization(text);
    }
});
