//! `blindpass-interop-rs amortized HOST:PORT API_KEY CHALLENGE_HEX TOKEN_KEY_HEX COUNT`
//!
//! Token type 5 with the `privacypass` crate (raphaelrobert/privacypass, on
//! voprf-ng): builds an AmortizedBatchTokenRequest of COUNT tokens for the
//! challenge and the issuer key, POSTs it to `/token-request` of the server at
//! HOST:PORT (plain HTTP/1.1 over a TcpStream: no HTTP library of ours or
//! theirs), lets the crate verify the batched DLEQ proof and finalize, and
//! prints each token as hex, one per line. Exits non-zero on any failure.

use std::io::{Read, Write};
use std::net::TcpStream;

use privacypass::Serialize;
use privacypass::amortized_tokens::{AmortizedBatchTokenRequest, AmortizedBatchTokenResponse};
use privacypass::auth::authenticate::TokenChallenge;
use voprf::{Group, Ristretto255};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, host, api_key, challenge, token_key, count] = &args[..] else {
        panic!("usage: amortized HOST:PORT API_KEY CHALLENGE_HEX TOKEN_KEY_HEX COUNT");
    };
    assert_eq!(mode, "amortized");
    let challenge = TokenChallenge::deserialize(&hex::decode(challenge).unwrap()).expect("challenge");
    let public_key = Ristretto255::deserialize_elem(&hex::decode(token_key).unwrap()).expect("token key");
    let count: u16 = count.parse().unwrap();
    let (request, state) = AmortizedBatchTokenRequest::<Ristretto255>::new(public_key, &challenge, count).unwrap();
    let body = request.tls_serialize_detached().unwrap();

    let mut stream = TcpStream::connect(host).expect("connect");
    let head = format!(
        "POST /token-request HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api_key}\r\n\
         Content-Type: application/private-token-amortized-batch-request\r\n\
         Accept: application/private-token-amortized-batch-response\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP head");
    let head = String::from_utf8_lossy(&response[..split]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.lines().any(|l| l.to_ascii_lowercase() == "content-type: application/private-token-amortized-batch-response"),
        "{head}"
    );
    let response = AmortizedBatchTokenResponse::<Ristretto255>::try_from_bytes(&response[split + 4..]).unwrap();
    let tokens = response.issue_tokens(&state).expect("the proof verifies and the tokens finalize");
    assert_eq!(tokens.len(), usize::from(count));
    for token in tokens {
        println!("{}", hex::encode(token.tls_serialize_detached().unwrap()));
    }
}
