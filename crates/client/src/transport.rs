//! The HTTP side of the client: JSON requests, retries with backoff that
//! honours `Retry-After` (one `Idempotency-Key` across a call's retries), and
//! the server's answers read into contract types or a [`ClientError`].

use std::time::Duration;

use blindpass_protocol::api;
use reqwest::{Method, StatusCode, header};

use crate::{Client, ClientError};

/// How calls are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff; doubles each retry.
    pub base_delay: Duration,
    /// Longest wait, whatever `Retry-After` says.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_retries: 3, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(10) }
    }
}

/// An answer, read whole.
pub(crate) struct Response {
    pub(crate) status: StatusCode,
    pub(crate) headers: header::HeaderMap,
    pub(crate) body: Vec<u8>,
}

impl Client {
    pub(crate) async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: &impl serde::Serialize,
        with_api_key: bool,
        headers: &[(&str, &str)],
    ) -> Result<Response, ClientError> {
        let idempotency_key = blindpass_entropy::uuid_v4(&*self.entropy);
        let retry_forbidden = path.ends_with("/generate-claim");
        self.with_retries(retry_forbidden, || {
            let mut request = self.http.request(method.clone(), format!("{}{path}", self.base)).json(body);
            request = request.header("idempotency-key", &idempotency_key);
            if with_api_key && let Some(key) = &self.api_key {
                request = request.bearer_auth(key.as_str());
            }
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            request
        })
        .await
    }

    /// Sends the request `build` makes, retrying 429/5xx (and 403 when
    /// `retry_forbidden`) with backoff that honours `Retry-After`.
    pub(crate) async fn with_retries(
        &self,
        retry_forbidden: bool,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Response, ClientError> {
        let mut attempt = 0u32;
        loop {
            let outcome = match build().send().await {
                Ok(r) => read(r).await,
                Err(e) => Err(ClientError::Http(e)),
            };
            let retry_after = match &outcome {
                Ok(r) if r.status.is_success() => return outcome,
                Ok(r) => {
                    let retryable = r.status == StatusCode::TOO_MANY_REQUESTS
                        || r.status.is_server_error()
                        || (retry_forbidden && r.status == StatusCode::FORBIDDEN);
                    if !retryable || attempt >= self.retry.max_retries {
                        return Err(api_error(r));
                    }
                    r.headers
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs)
                }
                Err(ClientError::Http(e)) if (e.is_connect() || e.is_timeout()) && attempt < self.retry.max_retries => {
                    None
                }
                Err(_) => return outcome,
            };
            let backoff = self.retry.base_delay.saturating_mul(2u32.saturating_pow(attempt));
            tokio::time::sleep(retry_after.unwrap_or(backoff).min(self.retry.max_delay)).await;
            attempt += 1;
        }
    }
}

pub(crate) async fn read(r: reqwest::Response) -> Result<Response, ClientError> {
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.bytes().await?.to_vec();
    Ok(Response { status, headers, body })
}

/// The server's error body (Persona's shape); an answer without one keeps
/// its status and empty words.
pub(crate) fn api_error(r: &Response) -> ClientError {
    let body: Option<api::ErrorBody> = serde_json::from_slice(&r.body).ok();
    let first = body.and_then(|b| b.errors.into_iter().next());
    let (title, details) = first.map_or_else(Default::default, |e| (e.title, e.details));
    ClientError::Api {
        status: r.status.as_u16(),
        title,
        details,
        request_id: r.headers.get("request-id").and_then(|v| v.to_str().ok()).map(str::to_owned),
    }
}

/// A response body as the contract type `T` expects it.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(r: &Response) -> Result<T, ClientError> {
    serde_json::from_slice(&r.body).map_err(ClientError::protocol)
}
