//! The OpenAPI 3.1 document of every route, served at `/openapi.json` and
//! committed as `openapi.json`. Schemas are derived from the REST contract's
//! types (`blindpass_protocol::api`, feature `openapi`, with utoipa);
//! operations are the table below, one entry per route the router serves
//! (`tests/openapi.rs` probes each against the router and compares
//! Persona's four operations with Persona's own specification).

use std::sync::OnceLock;

use blindpass_protocol::api::{self, CHALLENGE_PATH, PRIVACY_PASSES_PATH, RELAYS_PATH};
use blindpass_protocol::batch::{
    MEDIA_TYPE_ARBITRARY_BATCH_REQUEST, MEDIA_TYPE_ARBITRARY_BATCH_RESPONSE, MEDIA_TYPE_GENERIC_BATCH_REQUEST,
    MEDIA_TYPE_GENERIC_BATCH_RESPONSE,
};
use blindpass_protocol::voprf::wire::{MEDIA_TYPE_AMORTIZED_BATCH_REQUEST, MEDIA_TYPE_AMORTIZED_BATCH_RESPONSE};
use blindpass_protocol::wire::{MEDIA_TYPE_DIRECTORY, MEDIA_TYPE_TOKEN_REQUEST, MEDIA_TYPE_TOKEN_RESPONSE};
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths, Ref, Required, ResponseBuilder};

use crate::rfc::{DIRECTORY_ALIAS_PATH, DIRECTORY_PATH, TOKEN_REQUEST_PATH};
use crate::{METRICS_PATH, READY_PATH};

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The relay routes, with Persona's parameter name.
pub(crate) const RESULT_PATH: &str = "/api/privacy/v1/relays/{relay-token}/result";
pub(crate) const GENERATE_CLAIM_PATH: &str = "/api/privacy/v1/relays/{relay-token}/generate-claim";

/// How a route is authenticated.
#[derive(Clone, Copy)]
enum Auth {
    None,
    /// A Bearer API key, or an attester's client certificate (mTLS).
    ApiKey,
    /// `Persona-Relay-Secret` (and a `PrivateToken` for the claim).
    Relay,
}

/// A request or response body.
#[derive(Clone, Copy)]
enum Body {
    /// JSON of a schema in the components.
    Json(&'static str),
    /// Binary, in each of these media types.
    Binary(&'static [&'static str]),
    /// Any JSON object (`/health`, `/openapi.json`).
    Object,
    /// Prometheus text.
    Text(&'static str),
}

struct Route {
    method: HttpMethod,
    path: &'static str,
    id: &'static str,
    tag: &'static str,
    summary: &'static str,
    auth: Auth,
    request: Option<Body>,
    /// The success status and body.
    ok: (&'static str, Body),
    /// Other statuses answered with Persona's error body.
    errors: &'static [&'static str],
}

const PERSONA_ERRORS: &[&str] = &["400", "401", "403", "404", "409", "413", "415", "422", "429", "503"];

const TOKEN_REQUESTS: &[&str] = &[
    MEDIA_TYPE_TOKEN_REQUEST,
    MEDIA_TYPE_GENERIC_BATCH_REQUEST,
    MEDIA_TYPE_AMORTIZED_BATCH_REQUEST,
    MEDIA_TYPE_ARBITRARY_BATCH_REQUEST,
];
const TOKEN_RESPONSES: &[&str] = &[
    MEDIA_TYPE_TOKEN_RESPONSE,
    MEDIA_TYPE_GENERIC_BATCH_RESPONSE,
    MEDIA_TYPE_AMORTIZED_BATCH_RESPONSE,
    MEDIA_TYPE_ARBITRARY_BATCH_RESPONSE,
];

/// Every route the router serves.
fn routes() -> Vec<Route> {
    use HttpMethod::{Get, Post};
    let persona = |path, id, summary, auth, request, ok| Route {
        method: Post,
        path,
        id,
        tag: "Persona",
        summary,
        auth,
        request: Some(Body::Json(request)),
        ok,
        errors: PERSONA_ERRORS,
    };
    let get = |path, id, tag, summary, ok, errors| Route {
        method: Get,
        path,
        id,
        tag,
        summary,
        auth: Auth::None,
        request: None,
        ok: ("200", ok),
        errors,
    };
    vec![
        persona(
            PRIVACY_PASSES_PATH,
            "createPrivacyPass",
            "Blind-sign a blinded token (Persona's Create a Privacy Pass)",
            Auth::ApiKey,
            "CreatePrivacyPass",
            ("201", Body::Json("PrivacyPass")),
        ),
        persona(
            CHALLENGE_PATH,
            "createRelayChallenge",
            "A MACed challenge and the issuer key for a claim type",
            Auth::None,
            "ChallengeRequest",
            ("200", Body::Json("ChallengeResponse")),
        ),
        persona(
            RELAYS_PATH,
            "createRelay",
            "Create a relay",
            Auth::None,
            "CreateRelay",
            ("201", Body::Json("RelayCreated")),
        ),
        persona(
            RESULT_PATH,
            "recordRelayResult",
            "Record a production relay's claim result (relay.verify)",
            Auth::ApiKey,
            "RecordResult",
            ("200", Body::Json("ResultRecorded")),
        ),
        persona(
            GENERATE_CLAIM_PATH,
            "generateClaim",
            "Redeem a token for the relay's claim (401 with a PrivateToken challenge without one)",
            Auth::Relay,
            "GenerateClaim",
            ("200", Body::Json("Claim")),
        ),
        Route {
            method: Post,
            path: TOKEN_REQUEST_PATH,
            id: "tokenRequest",
            tag: "RFC 9578",
            summary: "Issuance: a TokenRequest (types 2, 1, 5), a generic batch, or an amortized batch (206 when part of a batch is issued)",
            auth: Auth::ApiKey,
            request: Some(Body::Binary(TOKEN_REQUESTS)),
            ok: ("200", Body::Binary(TOKEN_RESPONSES)),
            errors: &["206", "400", "401", "403", "413", "415", "422", "429", "503"],
        },
        get(
            DIRECTORY_PATH,
            "issuerDirectory",
            "RFC 9578",
            "The issuer directory (ETag, Cache-Control)",
            Body::Binary(&[MEDIA_TYPE_DIRECTORY]),
            &["304", "400", "429", "503"],
        ),
        get(
            DIRECTORY_ALIAS_PATH,
            "issuerDirectoryAlias",
            "RFC 9578",
            "The same directory at Apple's and Cloudflare's path",
            Body::Binary(&[MEDIA_TYPE_DIRECTORY]),
            &["304", "400", "429", "503"],
        ),
        get("/health", "health", "Operations", "Liveness", Body::Object, &[]),
        get(
            READY_PATH,
            "ready",
            "Operations",
            "Readiness: the store answers and keys are loaded",
            Body::Object,
            &["503"],
        ),
        get(
            METRICS_PATH,
            "metrics",
            "Operations",
            "Prometheus metrics (OpenMetrics text)",
            Body::Text(blindpass_service::metrics::CONTENT_TYPE),
            &[],
        ),
        get(OPENAPI_PATH, "openapi", "Operations", "This document", Body::Object, &[]),
    ]
}

fn content(body: Body) -> Vec<(&'static str, utoipa::openapi::Content)> {
    let binary = || ObjectBuilder::new().schema_type(Type::String).content_media_type("application/octet-stream");
    match body {
        Body::Json(name) => {
            vec![("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name(name))).build())]
        }
        Body::Binary(types) => {
            types.iter().map(|t| (*t, ContentBuilder::new().schema(Some(binary())).build())).collect()
        }
        Body::Object => {
            vec![(
                "application/json",
                ContentBuilder::new().schema(Some(ObjectBuilder::new().schema_type(Type::Object))).build(),
            )]
        }
        Body::Text(media) => {
            vec![(media, ContentBuilder::new().schema(Some(ObjectBuilder::new().schema_type(Type::String))).build())]
        }
    }
}

fn header(name: &str, required: bool, description: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(if required { Required::True } else { Required::False })
        .description(Some(description))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

fn operation(route: &Route) -> utoipa::openapi::path::Operation {
    let mut op = OperationBuilder::new().operation_id(Some(route.id)).summary(Some(route.summary)).tag(route.tag);
    if route.tag == "Persona" {
        op = op
            .parameter(header("Key-Inflection", false, "camel, kebab or snake: the response's key style"))
            .parameter(header("Idempotency-Key", false, "Replays the first response for 24 h"))
            .parameter(header("Persona-Version", false, "An API version date; echoed"));
    }
    if route.path.contains("{relay-token}") {
        op = op.parameter(
            ParameterBuilder::new()
                .name("relay-token")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
        );
    }
    match route.auth {
        Auth::None => {}
        Auth::ApiKey => {
            op = op
                .security(SecurityRequirement::new("api_key", Vec::<String>::new()))
                .security(SecurityRequirement::new("attester", Vec::<String>::new()));
        }
        Auth::Relay => {
            op = op.parameter(header("Persona-Relay-Secret", true, "The relay's secret")).parameter(header(
                "Authorization",
                false,
                "PrivateToken token=<base64url token>",
            ));
        }
    }
    if let Some(body) = route.request {
        let mut request = RequestBodyBuilder::new().required(Some(Required::True));
        for (media, c) in content(body) {
            request = request.content(media, c);
        }
        op = op.request_body(Some(request.build()));
    }
    let mut ok = ResponseBuilder::new().description("Success");
    for (media, c) in content(route.ok.1) {
        ok = ok.content(media, c);
    }
    op = op.response(route.ok.0, ok.build());
    for status in route.errors {
        let mut response = ResponseBuilder::new().description(describe(status));
        // 206 and 304 carry the success body or none; readiness's 503 its own JSON.
        let own_body = matches!(*status, "206" | "304") || (route.path == READY_PATH && *status == "503");
        if !own_body {
            for (media, c) in content(Body::Json("ErrorBody")) {
                response = response.content(media, c);
            }
        }
        op = op.response(*status, response.build());
    }
    op.build()
}

fn describe(status: &str) -> &'static str {
    match status {
        "206" => "Part of the batch was issued",
        "304" => "Not modified (If-None-Match)",
        "400" => "Malformed request",
        "401" => "Missing or unknown credentials (generate-claim: token required, with WWW-Authenticate)",
        "403" => "Not permitted",
        "404" => "Unknown key or relay",
        "409" => "The Idempotency-Key is in use",
        "413" => "Body too large",
        "415" => "Wrong content type",
        "422" => "Well-formed but unusable",
        "429" => "Rate limited (Retry-After)",
        "503" => "Unavailable or not ready (Retry-After)",
        _ => "Error",
    }
}

/// The document.
pub fn document() -> &'static OpenApi {
    static DOC: OnceLock<OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut paths = Paths::new();
        for route in routes() {
            let op = operation(&route);
            paths.add_path_operation(route.path, vec![route.method], op);
        }
        let components = ComponentsBuilder::new()
            .schema_from::<api::CreatePrivacyPass>()
            .schema_from::<api::PrivacyPass>()
            .schema_from::<api::ChallengeRequest>()
            .schema_from::<api::ChallengeResponse>()
            .schema_from::<api::CreateRelay>()
            .schema_from::<api::RelayCreated>()
            .schema_from::<api::RecordResult>()
            .schema_from::<api::ResultRecorded>()
            .schema_from::<api::Method>()
            .schema_from::<api::Outcome>()
            .schema_from::<api::GenerateClaim>()
            .schema_from::<api::Claim>()
            .schema_from::<api::ErrorBody>()
            .schema_from::<api::ErrorItem>()
            .security_scheme("api_key", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()))
            .security_scheme(
                "attester",
                SecurityScheme::MutualTls {
                    description: Some("A client certificate from --client-ca naming an --attester".into()),
                    extensions: None,
                },
            )
            .build();
        OpenApiBuilder::new()
            .info(
                InfoBuilder::new()
                    .title("blindpass")
                    .version(env!("CARGO_PKG_VERSION"))
                    .description(Some(
                        "A self-hostable Privacy Pass issuer and redeemer: Persona's Relay API and RFC 9578.",
                    ))
                    .build(),
            )
            .paths(paths)
            .components(Some(components))
            .build()
    })
}

/// The document as served and committed (pretty JSON, newline-terminated).
pub fn json() -> String {
    let mut text = document().to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

/// Whether the router serves `path` (an axum route, `{relay_token}`) in the document.
pub(crate) fn documents(axum_path: &str) -> bool {
    let path = axum_path.replace("{relay_token}", "{relay-token}");
    document().paths.paths.contains_key(&path)
}
