//! The RFC 9578 issuer directory JSON, as a client reads it.
#![no_main]

use blindpass_protocol::directory::IssuerDirectory;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(directory) = IssuerDirectory::from_json(data) {
        let _ = directory.preferred_type2_key(u64::MAX);
    }
});
