//! Setting up a run through the client library, and the pre-built requests
//! the workers send.

use blindpass_client::Client;
use blindpass_protocol::persona;

use crate::{LoadError, Target};

/// Claim type used for every relay and challenge of a run.
const CLAIM: &str = "bench";

/// One request, built before the clock starts.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    url: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    expect: u16,
}

impl PreparedRequest {
    /// Sends it; true when the server answered the expected status.
    pub async fn send(&self, http: &reqwest::Client) -> bool {
        let mut request = http.post(&self.url).body(self.body.clone());
        for (name, value) in &self.headers {
            request = request.header(*name, value);
        }
        match request.send().await {
            Ok(response) => {
                let ok = response.status().as_u16() == self.expect;
                let _ = response.bytes().await;
                ok
            }
            Err(_) => false,
        }
    }
}

/// `count` issuance requests for one challenge (blinded here, once: the
/// server signs each of them again and again).
pub(crate) async fn issuance(
    client: &Client,
    target: &Target,
    count: usize,
) -> Result<Vec<PreparedRequest>, LoadError> {
    let offer = client.challenge(CLAIM, true).await?;
    let entropy: &dyn blindpass_entropy::Entropy = &blindpass_entropy::SystemEntropy;
    let mut rng = entropy.rng();
    (0..count)
        .map(|_| {
            let (blinded, _) = persona::begin_issuance(&offer.key, &offer.key_id, &offer.challenge, &mut rng)
                .map_err(|e| LoadError::Prepare(e.to_string()))?;
            let body = blindpass_client::issuance_body(&blinded, &offer.key_id);
            let body = serde_json::to_vec(&body).map_err(|e| LoadError::Prepare(e.to_string()))?;
            Ok(PreparedRequest {
                url: format!("{}{}", target.base, blindpass_protocol::api::PRIVACY_PASSES_PATH),
                headers: vec![
                    ("authorization", format!("Bearer {}", target.api_key)),
                    ("content-type", "application/json".into()),
                ],
                body,
                expect: 201,
            })
        })
        .collect()
}

/// One relay and `count` fresh tokens for it, issued through the client
/// (64 at a time) before the run; each request spends one token.
pub(crate) async fn redemption(
    client: &Client,
    target: &Target,
    count: usize,
) -> Result<Vec<PreparedRequest>, LoadError> {
    let offer = std::sync::Arc::new(client.challenge(CLAIM, true).await?);
    let relay = client.create_relay(CLAIM, None, true).await?;
    eprintln!("issuing {count} tokens for the redemption run…");
    let mut tokens = Vec::with_capacity(count);
    while tokens.len() < count {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..(count - tokens.len()).min(64) {
            let (client, offer) = (client.clone(), std::sync::Arc::clone(&offer));
            batch.spawn(async move { client.issue(&offer).await });
        }
        while let Some(token) = batch.join_next().await {
            tokens.push(token??.encode());
        }
    }
    let url = format!("{}/api/privacy/v1/relays/{}/generate-claim", target.base, relay.token);
    Ok(tokens
        .into_iter()
        .map(|token| PreparedRequest {
            url: url.clone(),
            headers: vec![
                ("persona-relay-secret", relay.secret.to_string()),
                ("authorization", format!("PrivateToken token={token}")),
                ("content-type", "application/json".into()),
            ],
            body: b"{}".to_vec(),
            expect: 200,
        })
        .collect())
}
