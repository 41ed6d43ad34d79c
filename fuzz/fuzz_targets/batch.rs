//! Generic batched issuance, both framings: anything that decodes must
//! re-encode to the same bytes, and a response decodes against it.
#![no_main]

use blindpass_protocol::batch::{BatchTokenRequest, BatchTokenResponse, Framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for framing in [Framing::Generic, Framing::Legacy] {
        if let Ok(request) = BatchTokenRequest::decode(data, framing) {
            assert_eq!(request.encode(framing), data);
            if let Ok(response) = BatchTokenResponse::decode(data, framing, &request) {
                assert_eq!(response.encode(framing), data);
            }
        }
    }
});
