//! Token type 2 issuance and verification (RFC 9578 §6), on top of
//! [`crate::type2::blind_rsa`] with RSABSSA-SHA384-PSS-Deterministic.

use rand_core::CryptoRng;

pub mod blind_rsa;
pub mod keys;
mod pss;
pub mod wire;

use crate::type2::blind_rsa::{
    BlindError, BlindSignError, BlindingSecret, FinalizeError, RawSigner, Variant, VerifyError,
};
use crate::type2::keys::IssuerPublicKey;
use crate::type2::wire::{NK, Token, TokenRequest, TokenResponse, token_input};
use crate::wire::{NONCE_LEN, TokenChallenge};

/// Type 2 uses RSABSSA-SHA384-PSS-Deterministic (salt 48, identity prepare).
pub const VARIANT: Variant = Variant::Sha384PssDeterministic;

/// What the client keeps between [`begin_issuance`] and [`finalize_issuance`].
#[derive(Debug)]
pub struct IssuanceState {
    nonce: [u8; NONCE_LEN],
    challenge_digest: [u8; 32],
    secret: BlindingSecret,
}

/// RFC 9578 §6.1, client side: draws a nonce, builds `token_input`, blinds
/// it and returns the TokenRequest with the state needed to finalize.
///
/// Randomness is drawn in this order: nonce (32 bytes), PSS salt (48 bytes),
/// blinding factor `r`.
pub fn begin_issuance(
    key: &IssuerPublicKey,
    challenge: &TokenChallenge,
    rng: &mut impl CryptoRng,
) -> Result<(TokenRequest, IssuanceState), BlindError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let challenge_digest = challenge.digest();
    let input = token_input(&nonce, &challenge_digest, &key.token_key_id());
    let (blinded, secret) = blind_rsa::blind(key.rsa(), VARIANT, &blind_rsa::prepared(&input), rng)?;
    let blinded_msg: [u8; NK] = blinded.try_into().map_err(|_| BlindError::Encoding)?;
    let request =
        TokenRequest { truncated_token_key_id: key.truncated_token_key_id(), blinded_msg: Box::new(blinded_msg) };
    Ok((request, IssuanceState { nonce, challenge_digest, secret }))
}

/// RFC 9578 §6.3: unblinds, verifies, and builds the Token.
pub fn finalize_issuance(
    key: &IssuerPublicKey,
    state: &IssuanceState,
    response: &TokenResponse,
) -> Result<Token, FinalizeError> {
    let input = token_input(&state.nonce, &state.challenge_digest, &key.token_key_id());
    let sig =
        blind_rsa::finalize(key.rsa(), VARIANT, &blind_rsa::prepared(&input), &response.blind_sig[..], &state.secret)?;
    let authenticator: [u8; NK] = sig.try_into().map_err(|_| FinalizeError::InvalidSignature)?;
    Ok(Token {
        nonce: state.nonce,
        challenge_digest: state.challenge_digest,
        token_key_id: key.token_key_id(),
        authenticator: Box::new(authenticator),
    })
}

/// RFC 9578 §6.2, issuer side: BlindSign over the request's blinded message.
/// The caller has already mapped `truncated_token_key_id` to `signer`.
pub fn issue(signer: &(impl RawSigner + ?Sized), request: &TokenRequest) -> Result<TokenResponse, BlindSignError> {
    let sig = blind_rsa::blind_sign(signer, &request.blinded_msg[..])?;
    let blind_sig: [u8; NK] = sig.try_into().map_err(|_| BlindSignError::SigningFailure)?;
    Ok(TokenResponse { blind_sig: Box::new(blind_sig) })
}

/// RFC 9578 §6.4: the token names `key` by its full id and its authenticator
/// verifies (RSASSA-PSS, SHA-384, salt 48). Challenge and double-spend checks
/// belong to the redeemer.
pub fn verify_token(key: &IssuerPublicKey, token: &Token) -> Result<(), VerifyError> {
    verify_token_with(key, key.rsa(), token)
}

/// [`verify_token`] with the public operation done by `backend` (which must
/// hold `key`'s RSA key: checked).
pub fn verify_token_with(
    key: &IssuerPublicKey,
    backend: &(impl blind_rsa::RawVerifier + ?Sized),
    token: &Token,
) -> Result<(), VerifyError> {
    if token.token_key_id != key.token_key_id() || backend.rsa_public_key() != key.rsa() {
        return Err(VerifyError);
    }
    blind_rsa::verify(backend, VARIANT, &blind_rsa::prepared(&token.token_input()), &token.authenticator[..])
}
