//! # blindpass-protocol
//!
//! Pure protocol code for Privacy Pass token type 2 (Blind RSA 2048) in both
//! dialects blindpass speaks:
//!
//! A module per token type, each with its wire structures, its issuer and
//! its redeemer (as raphaelrobert/privacypass is laid out):
//!
//! - [`type2`]: token type 0x0002, Blind RSA 2048 — [`type2::wire`]
//!   (`TokenRequest`, `TokenResponse`, `Token`), [`type2::keys`] (issuer
//!   keys, both SPKI encodings, both key ids), [`type2::blind_rsa`] (RFC 9474
//!   RSA blind signatures, all four variants, with the server's private-key
//!   operation behind [`type2::blind_rsa::RawSigner`]), and issuance and
//!   verification in the module itself;
//! - [`voprf`]: the privately verifiable token types 0x0001 (VOPRF P-384)
//!   and 0x0005 (VOPRF ristretto255), single and amortized — [`voprf::wire`],
//!   the issuer's evaluation and the redeemer's check in the module, the
//!   client in `voprf::client`;
//!
//! and apart from them what every type shares:
//!
//! - [`wire`], [`keys`]: the `TokenChallenge`, `token_input`, token type ids,
//!   media types, the bounds-checked reader, token key ids;
//! - [`auth`], [`directory`]: the `PrivateToken` header and the issuer
//!   directory;
//! - [`batch`]: generic batched issuance (draft-ietf-privacypass-batched-tokens);
//! - [`b64`], [`der`], [`pem`], [`rsa`], [`time`]: encodings, RSA public key
//!   parsing, and time;
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
pub mod der;
pub mod directory;
pub mod jwk;
pub mod keys;
pub mod oaep;
pub mod pem;
pub mod persona;
pub mod rsa;
pub mod time;
pub mod type2;
pub mod voprf;
pub mod wire;
