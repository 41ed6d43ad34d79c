//! Retries honour Retry-After, reuse one Idempotency-Key, stop on non-retryable
//! errors, and errors carry the server's Persona body.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use blindpass_client::{Client, ClientError, RetryPolicy};

#[derive(Default)]
struct Seen {
    idempotency_keys: Vec<String>,
}

async fn serve(statuses: Vec<u16>) -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let remaining = Arc::new(Mutex::new(statuses));
    let seen2 = Arc::clone(&seen);
    let app = Router::new().route(
        "/api/privacy/v1/relays",
        post(move |headers: HeaderMap| {
            let (seen, remaining) = (Arc::clone(&seen2), Arc::clone(&remaining));
            async move {
                let key = headers.get("idempotency-key").unwrap().to_str().unwrap().to_owned();
                seen.lock().unwrap().idempotency_keys.push(key);
                let status = remaining.lock().unwrap().remove(0);
                let mut h = HeaderMap::new();
                h.insert("retry-after", "0".parse().unwrap());
                h.insert("request-id", "req_test".parse().unwrap());
                if status == 201 {
                    let body = r#"{"relay-token":"relay_x","relay-secret":"s","relay-session-access-token":"a.b.c"}"#;
                    return (StatusCode::CREATED, h, body).into_response();
                }
                let body = r#"{"errors":[{"title":"Rate limit exceeded","details":"slow down"}]}"#;
                (StatusCode::from_u16(status).unwrap(), h, body).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn client(base: &str) -> Client {
    Client::new(base).unwrap().with_retry(RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(50),
    })
}

#[tokio::test]
async fn retries_429_and_503_with_one_idempotency_key() {
    let (base, seen) = serve(vec![429, 503, 201]).await;
    let relay = client(&base).create_relay("c", None, true).await.unwrap();
    assert_eq!(relay.token, "relay_x");
    let keys = &seen.lock().unwrap().idempotency_keys;
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| k == &keys[0] && k.len() == 36), "{keys:?}");
}

#[tokio::test]
async fn gives_up_after_the_retry_budget_with_the_persona_error() {
    let (base, seen) = serve(vec![429, 429, 429, 429, 201]).await;
    let err = client(&base).create_relay("c", None, true).await.unwrap_err();
    match err {
        ClientError::Api { status, title, details, request_id } => {
            assert_eq!((status, title.as_str(), details.as_str()), (429, "Rate limit exceeded", "slow down"));
            assert_eq!(request_id.as_deref(), Some("req_test"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(seen.lock().unwrap().idempotency_keys.len(), 4);
}

#[tokio::test]
async fn does_not_retry_client_errors() {
    let (base, seen) = serve(vec![400, 201]).await;
    assert_eq!(client(&base).create_relay("c", None, true).await.unwrap_err().status(), Some(400));
    assert_eq!(seen.lock().unwrap().idempotency_keys.len(), 1);
}
