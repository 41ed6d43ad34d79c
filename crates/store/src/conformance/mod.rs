//! The storage conformance suite: one set of behaviours every backend must
//! show. Each backend's tests expand [`conformance_tests!`](crate::conformance_tests)
//! into one test per behaviour, each on a fresh, empty store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use zeroize::Zeroizing;

use crate::{ApiKey, Environment, IssuerKey, KeyState, Permission, Spend};

mod keys;
mod relays;
mod requests;

pub use keys::*;
pub use relays::*;
pub use requests::*;

/// Generates one `#[tokio::test]` per behaviour of the suite, each on a
/// fresh store: `$make` is an async function returning the store and a guard
/// that lives as long as the test (a temporary directory, a schema). Any
/// attributes given first (e.g. a conditional `#[ignore]`) go on every test.
///
/// ```text
/// blindpass_store::conformance_tests!(make = fresh_store);
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($(#[$attr:meta])* make = $make:path) => {
        $crate::conformance_tests!(@each [$(#[$attr])*] $make;
            api_keys, issuer_keys, first_issuer_key_has_one_winner, idempotency, idempotency_has_one_winner,
            rate_limits_count_every_hit, settings, pending_keys_are_promoted_once,
            a_retired_pending_key_is_never_promoted, relays, relays_expire, spending_has_one_winner,
            spent_records_outlive_their_tokens, spend_completes_idempotency_in_one_transaction,
            concurrent_spends_each_have_one_winner, key_lifecycles_are_per_token_type,
            key_material_is_read_and_rewrapped_apart, announcing_a_successor_has_one_winner,
            a_store_without_synchronous_standbys_does_not_claim_to_protect_commits);
    };
    (@each $attrs:tt $make:path; $($name:ident),*) => {
        $($crate::conformance_tests!(@one $attrs $make, $name);)*
    };
    (@one [$($attr:tt)*] $make:path, $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $($attr)*
        async fn $name() {
            let (store, _guard) = $make().await;
            $crate::conformance::$name(store).await;
        }
    };
}

pub fn spend(key_id: &str, nonce: &[u8], relay: &str, expires_at: i64) -> Spend {
    Spend {
        key_id: key_id.into(),
        nonce: nonce.to_vec(),
        relay_token: relay.into(),
        spent_at: expires_at - 3600,
        expires_at,
        claim_payload: format!("claim for {relay}"),
        idempotency: None,
    }
}

pub fn api_key(id: &str, env: Environment, lookup: &str) -> ApiKey {
    ApiKey {
        id: id.into(),
        name: Some(format!("name of {id}")),
        environment: env,
        permissions: vec![Permission::PrivacyPassWrite, Permission::RelayVerify],
        lookup: lookup.into(),
        secret_hash: [lookup.len() as u8; 32],
        created_at: 1_000,
        revoked_at: None,
        rate_limit_per_minute: None,
    }
}

pub fn issuer_key(id: &str, env: Environment, state: KeyState, created_at: i64) -> IssuerKey {
    IssuerKey {
        id: id.into(),
        environment: env,
        token_type: 2,
        state,
        private_pkcs8: Zeroizing::new(vec![1, 2, 3, id.len() as u8]),
        not_before: created_at,
        rotated_at: None,
        retired_at: None,
        created_at,
    }
}
