//! The claim a redemption delivers, shared by the relay use cases (which
//! check that it fits the relay's encryption key) and redemption (which
//! makes it).

/// The claim JSON a redemption delivers: Persona's claim schema, fields in
/// its documented order. A stored methodology that is not JSON (never written
/// by this server) becomes `[]`.
pub(crate) fn claim_json(claim_type: &str, passed: bool, methodology_json: &str) -> String {
    #[derive(serde::Serialize)]
    struct ClaimJson<'a> {
        claim_type: &'a str,
        claim_result: &'a str,
        methodology: serde_json::Value,
    }
    let methodology: serde_json::Value =
        serde_json::from_str(methodology_json).unwrap_or(serde_json::Value::Array(Vec::new()));
    let claim = ClaimJson { claim_type, claim_result: if passed { "passed" } else { "failed" }, methodology };
    // Serializing strings and an already-parsed JSON value cannot fail.
    serde_json::to_string(&claim).unwrap_or_default()
}
