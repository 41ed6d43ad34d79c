//! The client's side of VOPRF issuance: blind `token_input`s, then verify
//! the issuer's proof and unblind into tokens.

use p384::NistP384;
use rand_core::CryptoRng;
use voprf_ng::{CipherSuite, EvaluationElement, Group, Proof, Ristretto255, VoprfClient};

use super::{PublicKey, Suite, VoprfError, map_err};
use crate::voprf::wire::{VoprfToken, token_input};
use crate::wire::{NONCE_LEN, TokenChallenge};

enum Clients {
    P384(Vec<VoprfClient<NistP384>>),
    Ristretto255(Vec<VoprfClient<Ristretto255>>),
}

/// What a client keeps between [`begin_issuance`] and [`finalize_issuance`]
/// (the blinds; redacted in `Debug`).
pub struct IssuanceState {
    key: PublicKey,
    challenge_digest: [u8; 32],
    nonces: Vec<[u8; NONCE_LEN]>,
    clients: Clients,
}

impl std::fmt::Debug for IssuanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuanceState").field("key", &self.key).field("tokens", &self.nonces.len()).finish()
    }
}

impl IssuanceState {
    /// How many tokens this issuance asks for.
    pub fn len(&self) -> usize {
        self.nonces.len()
    }

    /// Never true: an issuance asks for at least one token.
    pub fn is_empty(&self) -> bool {
        self.nonces.is_empty()
    }
}

/// RFC 9578 §5.1, client side, for `count` tokens of one challenge: for each,
/// draws a nonce (32 bytes) and then a blind, and blinds its `token_input`.
/// Returns the blinded elements in order (one for a single TokenRequest,
/// several for an amortized batch).
pub fn begin_issuance(
    key: &PublicKey,
    challenge: &TokenChallenge,
    count: usize,
    rng: &mut impl CryptoRng,
) -> Result<(Vec<Vec<u8>>, IssuanceState), VoprfError> {
    if count == 0 {
        return Err(VoprfError::Batch);
    }
    let challenge_digest = challenge.digest();
    let mut nonces = Vec::with_capacity(count);
    let mut blinded = Vec::with_capacity(count);
    let clients = match key.suite {
        Suite::P384 => Clients::P384(blind_all(key, &challenge_digest, count, rng, &mut nonces, &mut blinded)?),
        Suite::Ristretto255 => {
            Clients::Ristretto255(blind_all(key, &challenge_digest, count, rng, &mut nonces, &mut blinded)?)
        }
    };
    Ok((blinded, IssuanceState { key: key.clone(), challenge_digest, nonces, clients }))
}

fn blind_all<CS: CipherSuite>(
    key: &PublicKey,
    challenge_digest: &[u8; 32],
    count: usize,
    rng: &mut impl CryptoRng,
    nonces: &mut Vec<[u8; NONCE_LEN]>,
    blinded: &mut Vec<Vec<u8>>,
) -> Result<Vec<VoprfClient<CS>>, VoprfError> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let input = token_input(key.suite, &nonce, challenge_digest, &key.token_key_id);
        let result = VoprfClient::<CS>::blind(&input, rng).map_err(map_err)?;
        nonces.push(nonce);
        blinded.push(result.message.serialize().to_vec());
        clients.push(result.state);
    }
    Ok(clients)
}

/// RFC 9578 §5.3: verifies the issuer's proof over all the evaluated
/// elements, unblinds them and builds the tokens, in order.
pub fn finalize_issuance(
    state: &IssuanceState,
    evaluated: &[Vec<u8>],
    proof: &[u8],
) -> Result<Vec<VoprfToken>, VoprfError> {
    if evaluated.len() != state.nonces.len() {
        return Err(VoprfError::Batch);
    }
    let outputs = match &state.clients {
        Clients::P384(clients) => finalize_with::<NistP384>(state, clients, evaluated, proof)?,
        Clients::Ristretto255(clients) => finalize_with::<Ristretto255>(state, clients, evaluated, proof)?,
    };
    Ok(state
        .nonces
        .iter()
        .zip(outputs)
        .map(|(nonce, authenticator)| VoprfToken {
            suite: state.key.suite,
            nonce: *nonce,
            challenge_digest: state.challenge_digest,
            token_key_id: state.key.token_key_id,
            authenticator,
        })
        .collect())
}

// `batch_finalize` takes its collections by reference to a sized type.
#[allow(clippy::ptr_arg)]
fn finalize_with<CS: CipherSuite>(
    state: &IssuanceState,
    clients: &Vec<VoprfClient<CS>>,
    evaluated: &[Vec<u8>],
    proof: &[u8],
) -> Result<Vec<Vec<u8>>, VoprfError> {
    let pk = CS::Group::deserialize_elem(&state.key.bytes).map_err(|_| VoprfError::InvalidPublicKey)?;
    let messages = evaluated
        .iter()
        .map(|e| EvaluationElement::<CS>::deserialize(e).map_err(|_| VoprfError::InvalidElement))
        .collect::<Result<Vec<_>, _>>()?;
    let proof = Proof::<CS>::deserialize(proof).map_err(|_| VoprfError::Proof)?;
    let inputs: Vec<_> = state
        .nonces
        .iter()
        .map(|nonce| token_input(state.key.suite, nonce, &state.challenge_digest, &state.key.token_key_id))
        .collect();
    let outputs = VoprfClient::batch_finalize(&inputs, clients, &messages, &proof, pk).map_err(map_err)?;
    outputs.map(|o| o.map(|o| o.to_vec()).map_err(map_err)).collect()
}
