//! The RFC 9578 / RFC 9577 dialect of the client: a relay's challenges, the
//! issuer directory, and issuance of every token type blindpass issues —
//! type 2 single and in generic batches, types 1 and 5 single and in
//! amortized batches — each finalized (verified) before it is returned.

use blindpass_protocol::auth::{self, PrivateTokenChallenge};
use blindpass_protocol::directory::IssuerDirectory;
use blindpass_protocol::type2::keys::IssuerPublicKey;
use blindpass_protocol::type2::wire::{Token, TokenResponse};
use blindpass_protocol::voprf::wire::{
    AmortizedTokenRequest, AmortizedTokenResponse, MEDIA_TYPE_AMORTIZED_BATCH_REQUEST,
    MEDIA_TYPE_AMORTIZED_BATCH_RESPONSE, VoprfToken, VoprfTokenRequest, VoprfTokenResponse,
};
use blindpass_protocol::voprf::{self, Suite};
use blindpass_protocol::wire::{MEDIA_TYPE_TOKEN_REQUEST, MEDIA_TYPE_TOKEN_RESPONSE, TOKEN_TYPE_BLIND_RSA};
use blindpass_protocol::{api, batch, type2};
use reqwest::{StatusCode, header};

use crate::transport::{self, api_error, read};
use crate::{Client, ClientError, RelayCredentials};

impl Client {
    /// The type-2 RFC 9577 challenge a relay offers in its 401.
    pub async fn rfc_challenge(&self, relay: &RelayCredentials) -> Result<PrivateTokenChallenge, ClientError> {
        self.rfc_challenge_of(relay, TOKEN_TYPE_BLIND_RSA).await
    }

    /// The RFC 9577 challenge of `token_type` a relay offers in its 401.
    pub async fn rfc_challenge_of(
        &self,
        relay: &RelayCredentials,
        token_type: u16,
    ) -> Result<PrivateTokenChallenge, ClientError> {
        let path = api::generate_claim_path(&relay.token);
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("persona-relay-secret", relay.secret.as_str())
            .json(&api::GenerateClaim {});
        let r = read(request.send().await?).await?;
        if r.status != StatusCode::UNAUTHORIZED {
            return Err(api_error(&r));
        }
        let header = r.headers.get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("");
        auth::parse_www_authenticate(header)
            .map_err(ClientError::protocol)?
            .into_iter()
            .find(|c| c.challenge.token_type == token_type)
            .ok_or_else(|| {
                ClientError::Protocol(format!("no type {token_type} PrivateToken challenge in WWW-Authenticate"))
            })
    }

    /// `GET /.well-known/private-token-issuer-directory`.
    pub async fn directory(&self, sandbox: bool) -> Result<IssuerDirectory, ClientError> {
        let query = if sandbox { "?sandbox=true" } else { "" };
        let r = read(
            self.http
                .get(format!("{}{}{query}", self.base, blindpass_protocol::directory::WELL_KNOWN_PATH))
                .send()
                .await?,
        )
        .await?;
        if !r.status.is_success() {
            return Err(api_error(&r));
        }
        IssuerDirectory::from_json(&r.body).map_err(ClientError::protocol)
    }

    /// RFC 9578 issuance for `challenge`: a TokenRequest to the directory's
    /// issuer URI, finalized (verified) into a Token.
    pub async fn issue_rfc(&self, challenge: &PrivateTokenChallenge, sandbox: bool) -> Result<Token, ClientError> {
        let (key, path) = self.issuer_for(challenge, sandbox).await?;
        let (request, state) = type2::begin_issuance(&key, &challenge.challenge, &mut self.entropy.rng())
            .map_err(ClientError::protocol)?;
        let r = self.post_binary(&path, MEDIA_TYPE_TOKEN_REQUEST, MEDIA_TYPE_TOKEN_RESPONSE, request.encode()).await?;
        let response = TokenResponse::decode(&r.body).map_err(ClientError::protocol)?;
        type2::finalize_issuance(&key, &state, &response).map_err(ClientError::protocol)
    }

    /// `count` tokens for `challenge` in one generic batch
    /// (draft-ietf-privacypass-batched-tokens), each finalized (verified).
    /// Items the issuer did not issue (a 206) are left out: the result may
    /// hold fewer than `count` tokens, never an unverified one.
    pub async fn issue_rfc_batch(
        &self,
        challenge: &PrivateTokenChallenge,
        count: usize,
        sandbox: bool,
    ) -> Result<Vec<Token>, ClientError> {
        let (key, path) = self.issuer_for(challenge, sandbox).await?;
        let mut states = Vec::with_capacity(count);
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            let (request, state) = type2::begin_issuance(&key, &challenge.challenge, &mut self.entropy.rng())
                .map_err(ClientError::protocol)?;
            items.push(batch::GenericTokenRequest {
                token_type: TOKEN_TYPE_BLIND_RSA,
                truncated_token_key_id: request.truncated_token_key_id,
                blinded_msg: request.blinded_msg.to_vec(),
            });
            states.push(state);
        }
        let request = batch::BatchTokenRequest { items };
        let (request_type, response_type) =
            (batch::MEDIA_TYPE_GENERIC_BATCH_REQUEST, batch::MEDIA_TYPE_GENERIC_BATCH_RESPONSE);
        let body = request.encode(batch::Framing::Generic);
        let r = self.post_binary(&path, request_type, response_type, body).await?;
        let response = batch::BatchTokenResponse::decode(&r.body, batch::Framing::Generic, &request)
            .map_err(ClientError::protocol)?;
        let issued = states.iter().zip(response.items).filter_map(|(state, item)| Some((state, item?)));
        issued
            .map(|(state, item)| {
                let response = TokenResponse::decode(&item.body).map_err(ClientError::protocol)?;
                type2::finalize_issuance(&key, state, &response).map_err(ClientError::protocol)
            })
            .collect()
    }

    /// The challenge's issuer key, checked against the issuer directory, and
    /// the directory's issuer request path.
    async fn issuer_for(
        &self,
        challenge: &PrivateTokenChallenge,
        sandbox: bool,
    ) -> Result<(IssuerPublicKey, String), ClientError> {
        let der =
            challenge.token_key.as_deref().ok_or_else(|| ClientError::Protocol("challenge has no token-key".into()))?;
        let key = IssuerPublicKey::from_rfc9578_spki(der).map_err(ClientError::protocol)?;
        let directory = self.directory(sandbox).await?;
        if !directory.token_keys.iter().any(|k| k.decode_type2().is_ok_and(|d| d == key)) {
            return Err(ClientError::Protocol("the challenge's token-key is not in the issuer directory".into()));
        }
        Ok((key, issuer_path(directory)?))
    }

    /// `count` tokens of type 1 or 5 for `challenge`: one TokenRequest for
    /// one token, else one amortized batch (one proof for all), finalized:
    /// the issuer's proof is verified before any token is returned.
    pub async fn issue_voprf(
        &self,
        challenge: &PrivateTokenChallenge,
        count: usize,
        sandbox: bool,
    ) -> Result<Vec<VoprfToken>, ClientError> {
        let suite = Suite::of_token_type(challenge.challenge.token_type)
            .ok_or_else(|| ClientError::Protocol("the challenge is not for token type 1 or 5".into()))?;
        let encoded =
            challenge.token_key.as_deref().ok_or_else(|| ClientError::Protocol("challenge has no token-key".into()))?;
        let key = voprf::PublicKey::from_bytes(suite, encoded).map_err(ClientError::protocol)?;
        let directory = self.directory(sandbox).await?;
        if !directory.token_keys.iter().any(|k| k.decode_voprf().is_ok_and(|d| d == key)) {
            return Err(ClientError::Protocol("the challenge's token-key is not in the issuer directory".into()));
        }
        let path = issuer_path(directory)?;
        let (blinded, state) = voprf::begin_issuance(&key, &challenge.challenge, count, &mut self.entropy.rng())
            .map_err(ClientError::protocol)?;
        let truncated_token_key_id = key.truncated_token_key_id();
        let (evaluated, proof) = if count == 1 {
            let blinded_element = blinded.into_iter().next().unwrap_or_default();
            let request = VoprfTokenRequest { suite, truncated_token_key_id, blinded_element };
            let r =
                self.post_binary(&path, MEDIA_TYPE_TOKEN_REQUEST, MEDIA_TYPE_TOKEN_RESPONSE, request.encode()).await?;
            let response = VoprfTokenResponse::decode(suite, &r.body).map_err(ClientError::protocol)?;
            (vec![response.evaluated_element], response.proof)
        } else {
            let request = AmortizedTokenRequest { suite, truncated_token_key_id, blinded_elements: blinded };
            let (request_type, response_type) =
                (MEDIA_TYPE_AMORTIZED_BATCH_REQUEST, MEDIA_TYPE_AMORTIZED_BATCH_RESPONSE);
            let r = self.post_binary(&path, request_type, response_type, request.encode()).await?;
            let response = AmortizedTokenResponse::decode(suite, count, &r.body).map_err(ClientError::protocol)?;
            (response.evaluated_elements, response.proof)
        };
        voprf::finalize_issuance(&state, &evaluated, &proof).map_err(ClientError::protocol)
    }

    /// POSTs a binary body with the API key, one `Idempotency-Key` across
    /// its retries.
    async fn post_binary(
        &self,
        path: &str,
        content_type: &str,
        accept: &str,
        body: Vec<u8>,
    ) -> Result<transport::Response, ClientError> {
        let idempotency_key = blindpass_entropy::uuid_v4(&*self.entropy);
        self.with_retries(false, || {
            let mut request = self
                .http
                .post(format!("{}{path}", self.base))
                .header(header::CONTENT_TYPE, content_type)
                .header(header::ACCEPT, accept)
                .header("idempotency-key", &idempotency_key)
                .body(body.clone());
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key.as_str());
            }
            request
        })
        .await
    }
}

/// The directory's issuer request path (relative URIs only).
fn issuer_path(directory: IssuerDirectory) -> Result<String, ClientError> {
    let uri = directory.issuer_request_uri;
    if !uri.starts_with('/') {
        return Err(ClientError::Protocol("absolute issuer-request-uri is not supported".into()));
    }
    Ok(uri)
}
