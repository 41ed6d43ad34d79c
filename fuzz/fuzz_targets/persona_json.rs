//! The server's edge: a Persona JSON body in any key casing, decoded into
//! each request type of the contract. Every input decodes or is a 400.
#![no_main]

use blindpass_protocol::api::{ChallengeRequest, CreatePrivacyPass, CreateRelay, GenerateClaim, RecordResult};
use blindpass_server::json::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let errors = [
        decode::<CreatePrivacyPass>(data).err(),
        decode::<ChallengeRequest>(data).err(),
        decode::<CreateRelay>(data).err(),
        decode::<RecordResult>(data).err(),
        decode::<GenerateClaim>(data).err(),
    ];
    for e in errors.into_iter().flatten() {
        assert_eq!(e.status().as_u16(), 400, "{e:?}");
    }
});
