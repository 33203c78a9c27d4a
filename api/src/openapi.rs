//! The API's contract: an OpenAPI 3.1 document generated from the code.
//!
//! Every route is registered through `utoipa_axum::routes!`, which takes the handler's
//! `#[utoipa::path]` attribute as its description, so a route and its documentation come
//! from one list. The request and response schemas are derived from the types the handlers
//! read and write. This module adds what is common to all of them: the bearer scheme, the
//! shared [`Problem`] schema with one reusable response per error status, the responses
//! that authentication and idempotency add to every operation they guard (see [`finish`]),
//! and schemas for the validated text types of `domain`.
//!
//! `tests/tests/api/openapi.rs` checks that no route escapes the document.

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{AnyOfBuilder, ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr};
use utoipa::{Modify, OpenApi as _, PartialSchema, ToResponse, ToSchema};

use crate::error::{FieldError, Problem};
use crate::hardening::overload::PROBES;

/// Name of the security scheme in `components.securitySchemes`.
pub const BEARER: &str = "bearer";

const PROBLEM_JSON: &str = "application/problem+json";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "aipm",
        description = "The system of record for how an organisation uses AI: prompts, their \
            versions and labels, and who may change them. Every change is an event; reads are \
            projections of the event log.\n\n\
            Authenticate with `Authorization: Bearer aipm_…` (an API key issued by \
            `aipm keys create` or `POST /v1/keys`). Errors are RFC 7807 problems \
            (`application/problem+json`) with a stable `type`. Resources carry their version as \
            `ETag`; send it back as `If-Match` to make a change conditional."
    ),
    components(
        schemas(Problem<'static>, FieldError),
        responses(
            Unauthorized,
            Forbidden,
            NotFound,
            MalformedRequest,
            ValidationFailed,
            PayloadTooLarge,
            UnsupportedMediaType,
            InvalidIdempotencyKey,
            Conflict,
            TooManyRequests,
            Unavailable,
            BudgetExhausted,
            ProviderFailed,
        )
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "prompts", description = "Prompts, their immutable versions and their labels"),
        (name = "categories", description = "Categories that group prompts"),
        (name = "registry", description = "Providers, their models, and the models' effective-dated prices"),
        (name = "flags", description = "Feature flags: rollouts and variants, evaluated from memory, the same on every instance"),
        (name = "config", description = "Configuration keys with JSON Schemas, their values now and at any instant, and their history"),
        (name = "approvals", description = "Four-eyes approval: protected scopes, and changes to them that another key must approve"),
        (name = "budgets", description = "Budgets: what to spend per scope and period, thresholds and enforcement"),
        (name = "usage", description = "Usage records as clients report them, priced at ingestion with the price in force at their time"),
        (name = "health", description = "Providers' health: probed on an interval, their state (healthy, degraded, down) and uptime"),
        (name = "incidents", description = "Incidents: what is broken, the changes before it that touch it, updates and resolution"),
        (name = "gateway", description = "Running prompts through aipm: the model is called and the call's usage and cost recorded; conversations with history and proposed actions"),
        (name = "experiments", description = "Experiments: variants compared on live traffic, assignment from memory, observations and results"),
        (name = "bulk", description = "Bulk operations: one change over many targets as one tracked, cancellable, reversible job"),
        (name = "exports", description = "Exports: reports written to CSV, JSON, NDJSON, XLSX or PDF files in the background, as of now or of a past instant"),
        (name = "keys", description = "API keys of the caller's tenant and their rate limits (admins)"),
        (name = "audit", description = "The tenant's hash-chained audit log (auditors and admins); reads are recorded"),
        (name = "feed", description = "The tenant's live event feed (Server-Sent Events, WebSocket)"),
        (name = "system", description = "Probes and operational state"),
        (name = "docs", description = "This document and its interactive reader"),
    )
)]
struct ApiDoc;

/// The document before any route is added: information and shared components.
pub fn base() -> OpenApi {
    ApiDoc::openapi()
}

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("aipm_<64 hex digits>")
            .description(Some(
                "An API key: `Authorization: Bearer aipm_…`. Its role decides what it may do.",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER, SecurityScheme::Http(scheme));
    }
}

/// Completes the document once every route is in it. Operations are protected unless their
/// attribute says `security(())` (the probes and the docs): a protected operation requires
/// the bearer scheme and can answer 401, 403 and 429 whatever its handler does, so those
/// responses are added here rather than repeated on every handler; so is 503, which every
/// operation but the probes can answer when the server sheds load. A public operation gets
/// `security: []`, which is how OpenAPI says "no authentication". Likewise, a command that
/// takes `Idempotency-Key` can answer what the idempotency layer answers (400, 409, 422),
/// and an operation with a request body what reading it answers (400, 413, 415).
pub fn finish(mut openapi: OpenApi) -> OpenApi {
    for (path, item) in openapi.paths.paths.iter_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            drop_route_from_summary(operation);
            if is_public(operation) {
                operation.security = Some(Vec::new());
            } else {
                operation.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
                add_response::<Unauthorized>(operation, "401");
                add_response::<Forbidden>(operation, "403");
                add_response::<TooManyRequests>(operation, "429");
            }
            if !PROBES.contains(&path.as_str()) {
                // Shedding and timeouts (`crate::hardening`) spare only the probes.
                add_response::<Unavailable>(operation, "503");
            }
            if operation.request_body.is_some() {
                // What reading a JSON body can answer (`crate::extract::ApiJson`) on any
                // operation that takes one.
                add_response::<MalformedRequest>(operation, "400");
                add_response::<PayloadTooLarge>(operation, "413");
                add_response::<UnsupportedMediaType>(operation, "415");
            }
            if takes_header(operation, IDEMPOTENCY_KEY) {
                // What the idempotency layer answers on any command that sends the header.
                add_response::<InvalidIdempotencyKey>(operation, "400");
                add_response::<Conflict>(operation, "409");
                add_response::<ValidationFailed>(operation, "422");
            }
        }
    }
    openapi
}

/// Handlers' doc comments open with their route (`` `GET /v1/prompts`: list prompts ``),
/// which the document shows already: the summary keeps what follows.
fn drop_route_from_summary(operation: &mut Operation) {
    let Some(summary) = &operation.summary else { return };
    let Some((_, rest)) = summary.strip_prefix('`').and_then(|s| s.split_once("`: ")) else {
        return;
    };
    let mut chars = rest.chars();
    let summary = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => return,
    };
    operation.summary = Some(summary);
}

/// The request header that makes a command safe to retry (`crate::idempotency`).
const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

fn takes_header(operation: &Operation, name: &str) -> bool {
    operation.parameters.iter().flatten().any(|parameter| {
        matches!(parameter, RefOr::T(p) if p.name == name && p.parameter_in == ParameterIn::Header)
    })
}

fn is_public(operation: &Operation) -> bool {
    operation
        .security
        .as_ref()
        .is_some_and(|requirements| requirements.iter().all(|r| *r == SecurityRequirement::default()))
}

fn add_response<R: ToResponse<'static>>(operation: &mut Operation, status: &str) {
    let (name, _) = R::response();
    operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
}

/// A problem+json response described by `description`.
fn problem_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// Declares reusable problem responses, referenced from handlers' attributes as
/// `(status = 404, response = NotFound)`.
macro_rules! problem_responses {
    ($($name:ident => $description:literal,)*) => {
        $(
            #[doc = $description]
            pub struct $name;

            impl<'r> ToResponse<'r> for $name {
                fn response() -> (&'r str, RefOr<Response>) {
                    (stringify!($name), RefOr::T(problem_response($description)))
                }
            }
        )*
    };
}

problem_responses! {
    Unauthorized => "No valid API key was sent (`/problems/unauthorized`).",
    Forbidden => "The key's role may not do this (`/problems/forbidden`), or it proposed the change it tries to approve (`/problems/own-approval`).",
    NotFound => "No such resource in the caller's tenant (`/problems/not-found`).",
    MalformedRequest => "The body is not well-formed JSON (`/problems/malformed-request`), or the `Idempotency-Key` header is invalid (`/problems/invalid-idempotency-key`).",
    InvalidIdempotencyKey => "The `Idempotency-Key` header is invalid (`/problems/invalid-idempotency-key`).",
    ValidationFailed => "A body field, parameter or header is invalid; `errors` lists every one (`/problems/validation-failed`); or a domain rule refused the change (`/problems/rule-violated`); or the `Idempotency-Key` was used for a different request (`/problems/idempotency-key-reused`).",
    PayloadTooLarge => "The body is larger than the limit (`/problems/payload-too-large`).",
    UnsupportedMediaType => "The body was not sent as `Content-Type: application/json` (`/problems/unsupported-media-type`).",
    Conflict => "The change conflicts with the resource's state: a stale `If-Match` (`/problems/version-mismatch`, with `current_version` and the current `ETag`), a name already taken (`/problems/name-taken`), a change the current state forbids (`/problems/conflict`), a change that kept losing its race against concurrent writers (`/problems/contended`, with `Retry-After`: retry it), a retry while the first request with its `Idempotency-Key` still runs (`/problems/idempotency-in-progress`, with `Retry-After`), or a retry of `POST /v1/keys`, whose secret is not kept (`/problems/key-secret-not-replayable`).",
    TooManyRequests => "Over this key's rate limit (`/problems/rate-limited`, with `Retry-After` and `RateLimit-*` headers), or too many failed authentications from this address (`/problems/too-many-failed-authentications`, with `Retry-After`).",
    BudgetExhausted => "A hard budget covering the call is spent for its period (`/problems/budget-exhausted`); no model was called.",
    ProviderFailed => "No model answered after the retries and fallbacks (`/problems/provider-failed`); the failed call is recorded in usage with every attempt.",
    Unavailable => "The database is unreachable (`/problems/unavailable`), the server is at capacity (`/problems/overloaded`, with `Retry-After`) or the request took too long (`/problems/timeout`); retry later.",
}

// Schemas of the validated text types of `domain`, which has no OpenAPI dependency of its own.
// Each states in JSON Schema what the domain's parser accepts, so that a generated request
// that the schema allows is one the server accepts, and the other way round.

/// A name shown to people (`domain::text::DisplayName`): at most 200 characters once
/// surrounding white space is trimmed, not blank, no control characters.
#[derive(ToSchema)]
#[schema(
    min_length = 1,
    max_length = 200,
    pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
    example = "support-reply"
)]
#[allow(dead_code)]
pub struct NameText(String);

/// A machine-friendly identifier (`domain::text::Slug`): tags, labels.
#[derive(ToSchema)]
#[schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,63}$", example = "production")]
#[allow(dead_code)]
pub struct SlugText(String);

/// Free text (`description`, `message`): at most 2000 characters, no U+0000.
#[derive(ToSchema)]
#[schema(max_length = 2000, pattern = r"^[^\x00]*$")]
#[allow(dead_code)]
pub struct NoteText(String);

/// Why a change is made, stored with its events: at most 1000 characters, no U+0000.
#[derive(ToSchema)]
#[schema(
    max_length = 1000,
    pattern = r"^[^\x00]*$",
    example = "roll back: version 2 invents order numbers"
)]
#[allow(dead_code)]
pub struct ReasonText(String);

/// An exact amount of money (`domain::money::Amount`), written as a decimal string: at least
/// 0, below 10^10, at most ten digits after the point.
#[derive(ToSchema)]
#[schema(pattern = r"^[0-9]{1,10}(\.[0-9]{1,10})?$", example = "0.15")]
#[allow(dead_code)]
pub struct AmountText(String);

/// An ISO 4217 currency code (`domain::money::Currency`).
#[derive(ToSchema)]
#[schema(pattern = r"^[A-Z]{3}$", example = "USD")]
#[allow(dead_code)]
pub struct CurrencyText(String);

/// Where a provider's secret lives (`domain::provider::CredentialRef`): never the secret.
#[derive(ToSchema)]
#[schema(
    max_length = 2000,
    pattern = r"^(env:[A-Z_][A-Z0-9_]*|file:/[^\s\x00-\x1f]+)$",
    example = "env:OPENAI_API_KEY"
)]
#[allow(dead_code)]
pub struct CredentialRefText(String);

/// A provider's endpoint (`domain::provider::BaseUrl`): http or https, no user information
/// and no credential in the query.
#[derive(ToSchema)]
#[schema(
    max_length = 2000,
    pattern = r"^https?://[^\s@]+$",
    example = "https://api.openai.com/v1"
)]
#[allow(dead_code)]
pub struct BaseUrlText(String);

/// A provider's own identifier of a model (`domain::model::parse_model_id`).
#[derive(ToSchema)]
#[schema(
    min_length = 1,
    max_length = 200,
    pattern = r"^[^\s\x00-\x1f\x7f-\x9f]+$",
    example = "gpt-4o-mini"
)]
#[allow(dead_code)]
pub struct ModelIdText(String);

/// Text without U+0000, which PostgreSQL can store neither in `text` nor in `jsonb`; the API
/// refuses it in every string and key of a body.
const NUL_FREE: &str = "^[^\\x00]*$";

/// Any JSON value whose strings and keys contain no U+0000.
pub struct JsonValue;

impl PartialSchema for JsonValue {
    fn schema() -> RefOr<Schema> {
        let scalar = ObjectBuilder::new().schema_type(SchemaType::from_iter([
            Type::Null,
            Type::Boolean,
            Type::Number,
        ]));
        let text = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(NUL_FREE));
        let array = ArrayBuilder::new().items(Ref::from_schema_name("JsonValue"));
        AnyOfBuilder::new()
            .item(scalar)
            .item(text)
            .item(array)
            .item(Ref::from_schema_name("JsonObject"))
            .description(Some("Any JSON value; no string or key may contain U+0000."))
            .into()
    }
}

impl ToSchema for JsonValue {}

/// A JSON object whose strings and keys contain no U+0000 (model parameters).
pub struct JsonObject;

impl PartialSchema for JsonObject {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(NUL_FREE)),
            ))
            .additional_properties(Some(Ref::from_schema_name("JsonValue")))
            .description(Some("A JSON object; no string or key in it may contain U+0000."))
            .into()
    }
}

impl ToSchema for JsonObject {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push(("JsonValue".into(), JsonValue::schema()));
    }
}
