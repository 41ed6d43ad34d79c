//! The OpenAPI document: the committed `openapi.json` is what the server
//! serves; every documented operation is served by the router (and no other
//! method on its path); Persona's four operations match Persona's own
//! specification (`tests/data/persona-relay.json`, the four operations of
//! `../shared/persona-openapi/relay.yaml` converted to JSON) in paths,
//! request and response fields, required fields, parameters and status
//! codes. Differences are listed here, each with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use common::*;
use serde_json::Value;

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ours() -> Value {
    serde_json::from_str(&blindpass_server::openapi::json()).unwrap()
}

/// `schema`, with a `$ref` into `doc`'s components resolved.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap()],
        None => schema,
    }
}

fn keys(schema: &Value, member: &str) -> BTreeSet<String> {
    match &schema[member] {
        Value::Object(m) => m.keys().cloned().collect(),
        Value::Array(a) => a.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
        _ => BTreeSet::new(),
    }
}

#[test]
fn the_committed_document_is_the_served_one() {
    let committed = std::fs::read_to_string(root().join("openapi.json")).unwrap();
    assert!(
        committed == blindpass_server::openapi::json(),
        "openapi.json is stale: regenerate it with `cargo run -p blindpass -- openapi > openapi.json`"
    );
    assert_eq!(ours()["openapi"], "3.1.0");
}

#[tokio::test]
async fn every_documented_operation_is_served_and_no_other_method() {
    let h = harness(0).await;
    let doc = ours();
    let served = h.call(Method::GET, "/openapi.json", &[], Vec::new()).await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(served.json(), doc);
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path.replace("{relay-token}", "relay_none");
        for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            let documented = item.get(method.as_str().to_lowercase().as_str()).is_some();
            let r = h.call(method.clone(), &concrete, &[], Vec::new()).await;
            let fallback = r.status == StatusCode::NOT_FOUND && r.body.windows(11).any(|w| w == b"No such end");
            if documented {
                operations += 1;
                assert!(!fallback && r.status != StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {}", r.status);
            } else {
                assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is served but not documented");
            }
        }
    }
    assert_eq!(operations, 12);
    // Every documented path is a route template of the metrics too.
    let metrics = String::from_utf8(h.call(Method::GET, "/metrics", &[], Vec::new()).await.body).unwrap();
    assert!(!metrics.contains("route=\"unmatched\""), "a documented path counted as unmatched: {metrics}");
}

#[test]
fn personas_four_operations_match_personas_specification() {
    let persona: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("crates/server/tests/data/persona-relay.json")).unwrap(),
    )
    .unwrap();
    let doc = ours();
    // Fields blindpass adds, with why.
    let added_request_fields: &[(&str, &str)] = &[
        // Persona 2026-09-29: the JWK alternative to the PEM key.
        ("/api/privacy/v1/relays", "encryption-key-jwk"),
    ];
    let mut checked = 0;
    for (path, item) in persona["paths"].as_object().unwrap() {
        let servers = if item["servers"].is_array() { &item["servers"] } else { &persona["servers"] };
        let base = servers[0]["url"].as_str().unwrap().trim_start_matches("https://api.withpersona.com");
        let full = format!("{base}{path}");
        let theirs = &item["post"];
        let mine = &doc["paths"][&full]["post"];
        assert!(mine.is_object(), "POST {full} is not in our document");

        // Request body fields and required fields.
        if let Some(schema) = theirs["requestBody"]["content"]["application/json"]["schema"].as_object() {
            let schema = Value::Object(schema.clone());
            let our_schema = resolve(&doc, &mine["requestBody"]["content"]["application/json"]["schema"]);
            let mut our_fields = keys(our_schema, "properties");
            for (p, field) in added_request_fields {
                if *p == full {
                    assert!(our_fields.remove(*field), "{field} was listed as added to {full}");
                }
            }
            assert_eq!(our_fields, keys(&schema, "properties"), "request fields of {full}");
            assert_eq!(keys(our_schema, "required"), keys(&schema, "required"), "required request fields of {full}");
        }

        // Status codes: the success code and body fields; every error code.
        let their_codes: BTreeSet<String> = theirs["responses"].as_object().unwrap().keys().cloned().collect();
        let our_codes: BTreeSet<String> = mine["responses"].as_object().unwrap().keys().cloned().collect();
        let success: Vec<_> = their_codes.iter().filter(|c| c.starts_with('2')).collect();
        assert_eq!(success.len(), 1);
        let code = success[0];
        assert!(our_codes.contains(code), "{full} answers {code}");
        let their_body = &theirs["responses"][code]["schema"];
        let our_body = resolve(&doc, &mine["responses"][code]["content"]["application/json"]["schema"]);
        assert_eq!(keys(our_body, "properties"), keys(their_body, "properties"), "response fields of {full}");
        assert_eq!(keys(our_body, "required"), keys(their_body, "required"), "required response fields of {full}");
        for c in &their_codes {
            assert!(our_codes.contains(c), "{full}: Persona documents {c}, we do not");
        }

        // Every parameter Persona lists, required where Persona requires it.
        for p in theirs["parameters"].as_array().unwrap() {
            let (name, place) = (p["name"].as_str().unwrap(), p["in"].as_str().unwrap());
            let ours = mine["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["name"].as_str().unwrap().eq_ignore_ascii_case(name) && o["in"] == place)
                .unwrap_or_else(|| panic!("{full}: no {place} parameter {name}"));
            if p["required"] == true {
                assert_eq!(ours["required"], true, "{full}: {name} is required");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 4, "Persona's four operations");
}

#[test]
fn the_test_data_is_personas_specification() {
    // When the shared specification is beside the checkout (developers,
    // CI), the converted subset must still be what it says.
    let shared = root().join("../shared/persona-openapi/relay.yaml");
    let Ok(yaml) = std::fs::read_to_string(&shared) else {
        eprintln!("!! {} not found: the test data is not re-checked", shared.display());
        return;
    };
    let data = std::fs::read_to_string(root().join("crates/server/tests/data/persona-relay.json")).unwrap();
    let data: Value = serde_json::from_str(&data).unwrap();
    for path in data["paths"].as_object().unwrap().keys() {
        assert!(yaml.contains(&format!("\n  {path}:")), "{path} is not in {}", shared.display());
    }
}
