//! # blindpass-protocol
//!
//! Pure protocol code for Privacy Pass token type 2 (Blind RSA 2048) in both
//! dialects blindpass speaks:
//!
//! - [`blind_rsa`]: RFC 9474 RSA blind signatures, all four variants, with the
//!   server's private-key operation behind [`blind_rsa::RawSigner`];
//! - [`keys`], [`rsa`]: issuer keys, both SPKI encodings, both key ids;
//! - [`wire`], [`type2`], [`auth`], [`directory`]: RFC 9578 / RFC 9577 wire
//!   types, issuance and verification, the `PrivateToken` header and the
//!   issuer directory;
//! - [`batch`]: generic batched issuance (draft-ietf-privacypass-batched-tokens);
//! - [`voprf`], [`voprf_wire`]: the privately verifiable token types 0x0001
//!   (VOPRF P-384) and 0x0005 (VOPRF ristretto255), single and amortized;
//! - [`persona`]: Persona's Relay challenge, token and `token_input`;
//! - [`api`]: Persona's REST contract (JSON bodies and paths) as serde types,
//!   shared by the server and the client.
//!
//! **Invariant:** no I/O, no clock (callers pass `now`), no global RNG
//! (callers pass a `CryptoRng`), no `unsafe`.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod b64;
pub mod batch;
pub mod blind_rsa;
pub mod der;
pub mod directory;
pub mod jwk;
pub mod keys;
pub mod oaep;
pub mod pem;
pub mod persona;
mod pss;
pub mod rsa;
pub mod time;
pub mod type2;
pub mod voprf;
pub mod voprf_wire;
pub mod wire;
