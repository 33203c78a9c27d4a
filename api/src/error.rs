//! Every error the API returns: `application/problem+json` (RFC 7807) with a stable `type`.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use commands::CommandError;
use cqrs_es::Aggregate;
use domain::access::ApiKeyError;
use domain::approval::{ChangeRequestError, ProtectionError};
use domain::audit::ReadRecordError;
use domain::budget::BudgetError;
use domain::bulk::BulkError;
use domain::category::{CategoryError, PromptCategory};
use domain::config::{ConfigError, Violation};
use domain::fields::Invalid;
use domain::flag::FlagError;
use domain::health::ProviderHealthError;
use domain::incident::IncidentError;
use domain::model::{Model, ModelError};
use domain::prompt::PromptError;
use domain::provider::{Provider, ProviderError};
use domain::text::InvalidText;
use serde::Serialize;

/// One offending field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The body field, path or query parameter, or header at fault.
    #[schema(example = "name")]
    pub field: String,
    #[schema(example = "must not be empty")]
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid API key is required: send 'Authorization: Bearer <key>'")]
    Unauthorized,
    #[error("this API key's role ({role}) may not {action}")]
    Forbidden {
        role: &'static str,
        action: &'static str,
    },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("a change cannot be approved by the key that proposed it: another key must approve it")]
    OwnApproval,
    #[error("the request is invalid")]
    Validation(Vec<FieldError>),
    #[error("{0}")]
    MalformedBody(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("a request may carry at most {limit} records")]
    TooManyRecords { limit: usize },
    #[error("the request body must be JSON with 'Content-Type: application/json'")]
    UnsupportedMediaType,
    #[error("the resource is at version {current}, not {expected}; re-read it and retry")]
    VersionMismatch { expected: u64, current: u64 },
    #[error("{0}")]
    Conflict(String),
    #[error("the resource is being changed by others at the same time; retry")]
    Contended,
    #[error("the {what} {name:?} is already taken in this tenant")]
    NameTaken { what: &'static str, name: String },
    #[error("{0}")]
    RuleViolated(String),
    #[error("no route for this path")]
    NoRoute,
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    #[error("the service is temporarily unavailable")]
    Unavailable(String),
    #[error("the Idempotency-Key header is invalid: it {0}")]
    InvalidIdempotencyKey(&'static str),
    #[error("this Idempotency-Key was already used for a different request (method, path, headers or body)")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still being processed; retry after {retry_after} s")]
    IdempotencyInProgress { retry_after: u64 },
    #[error(
        "API key {key_id} was issued by an earlier request with this Idempotency-Key; its secret is shown \
         only once and is not stored: revoke that key and issue a new one"
    )]
    KeySecretNotReplayable { key_id: uuid::Uuid },
    #[error("this API key has used up its rate limit; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("too many failed authentications from this address; retry in {retry_after} s")]
    TooManyFailedAuthentications { retry_after: u64 },
    #[error("the server is at capacity; retry shortly")]
    Overloaded,
    #[error("the server has as many event streams open as it allows; retry later")]
    TooManyStreams,
    #[error("the request took longer than {} s and was abandoned; a change it asked for may or may not have been made", after.as_secs_f64())]
    Timeout { after: std::time::Duration },
    #[error("this server has not read the event log up to {cursor} (Aipm-Read-After) yet; retry shortly")]
    NotCaughtUp { cursor: domain::position::GlobalCursor },
    #[error("a hard budget covering this call is spent: {0}; nothing was sent to the model")]
    BudgetExhausted(String),
    #[error("the model did not answer (run {run_id}): {detail}")]
    ProviderFailed { run_id: uuid::Uuid, detail: String },
    #[error("internal error")]
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

/// What a client is told about text containing U+0000.
pub const NUL_MESSAGE: &str = "must not contain the NUL character (U+0000)";

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    /// Status and the stable slug of the `type` URI.
    pub(crate) fn kind(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            ApiError::OwnApproval => (StatusCode::FORBIDDEN, "own-approval"),
            ApiError::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation-failed"),
            ApiError::MalformedBody(_) => (StatusCode::BAD_REQUEST, "malformed-request"),
            ApiError::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
            ApiError::TooManyRecords { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too-many-records"),
            ApiError::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type"),
            ApiError::VersionMismatch { .. } => (StatusCode::CONFLICT, "version-mismatch"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Contended => (StatusCode::CONFLICT, "contended"),
            ApiError::NameTaken { .. } => (StatusCode::CONFLICT, "name-taken"),
            ApiError::RuleViolated(_) => (StatusCode::UNPROCESSABLE_ENTITY, "rule-violated"),
            ApiError::NoRoute => (StatusCode::NOT_FOUND, "no-route"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::InvalidIdempotencyKey(_) => (StatusCode::BAD_REQUEST, "invalid-idempotency-key"),
            ApiError::IdempotencyKeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused"),
            ApiError::IdempotencyInProgress { .. } => (StatusCode::CONFLICT, "idempotency-in-progress"),
            ApiError::KeySecretNotReplayable { .. } => (StatusCode::CONFLICT, "key-secret-not-replayable"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate-limited"),
            ApiError::TooManyFailedAuthentications { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too-many-failed-authentications")
            }
            ApiError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::TooManyStreams => (StatusCode::SERVICE_UNAVAILABLE, "too-many-streams"),
            ApiError::Timeout { .. } => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            ApiError::NotCaughtUp { .. } => (StatusCode::SERVICE_UNAVAILABLE, "not-caught-up"),
            ApiError::BudgetExhausted(_) => (StatusCode::PAYMENT_REQUIRED, "budget-exhausted"),
            ApiError::ProviderFailed { .. } => (StatusCode::BAD_GATEWAY, "provider-failed"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl ApiError {
    /// Seconds the client should wait before retrying, for `Retry-After`.
    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after }
            | ApiError::TooManyFailedAuthentications { retry_after }
            | ApiError::IdempotencyInProgress { retry_after } => Some(*retry_after),
            ApiError::NotCaughtUp { .. } => Some(1),
            ApiError::Overloaded | ApiError::Contended => Some(1),
            ApiError::TooManyStreams => Some(5),
            _ => None,
        }
    }
}

/// Marks a response whose request may well succeed if sent again unchanged (a lost race, a
/// busy server): such an answer is never stored under an idempotency key.
#[derive(Debug, Clone, Copy)]
pub struct Retryable;

/// An RFC 7807 problem: the body of every error response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    /// Stable identifier of the kind of problem, `/problems/<slug>`.
    #[serde(rename = "type")]
    #[schema(example = "/problems/validation-failed", pattern = "^/problems/[a-z-]+$")]
    kind: String,
    /// The HTTP status's reason phrase.
    #[schema(example = "Unprocessable Entity")]
    title: &'a str,
    #[schema(example = 422, minimum = 400, maximum = 599)]
    status: u16,
    /// What went wrong, for people.
    #[schema(example = "the request is invalid")]
    detail: String,
    /// Every offending field (`validation-failed` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
    /// The resource's current version (`version-mismatch` only; also sent as `ETag`).
    #[serde(skip_serializing_if = "Option::is_none")]
    current_version: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug) = self.kind();
        let detail = match &self {
            // Never leak internals to the client; they are logged once, here.
            ApiError::Internal(cause) | ApiError::Unavailable(cause) => {
                tracing::error!(%cause, status = status.as_u16(), "request failed");
                self.to_string()
            }
            _ => self.to_string(),
        };
        let problem = Problem {
            kind: format!("/problems/{slug}"),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail,
            errors: match &self {
                ApiError::Validation(errors) => Some(errors),
                _ => None,
            },
            current_version: match &self {
                ApiError::VersionMismatch { current, .. } => Some(*current),
                _ => None,
            },
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response =
            (status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response();
        if let ApiError::VersionMismatch { current, .. } = self {
            if let Ok(etag) = header::HeaderValue::from_str(&format!("\"{current}\"")) {
                response.headers_mut().insert(header::ETAG, etag);
            }
        }
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
            response.extensions_mut().insert(Retryable);
        }
        response
    }
}

impl From<InvalidText> for ApiError {
    fn from(error: InvalidText) -> Self {
        ApiError::invalid(error.field, error.reason)
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        ApiError::Validation(
            invalid
                .into_errors()
                .into_iter()
                .map(|error| FieldError {
                    field: error.field.into(),
                    message: error.reason,
                })
                .collect(),
        )
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                ApiError::Unavailable(error.to_string())
            }
            // Text PostgreSQL cannot hold (U+0000) that reached a query from a parameter.
            sqlx::Error::Database(ref database)
                if matches!(database.code().as_deref(), Some("22021" | "22P05")) =>
            {
                ApiError::invalid("query", NUL_MESSAGE)
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => ApiError::invalid("body", e.body_text()),
            JsonRejection::JsonSyntaxError(e) => ApiError::MalformedBody(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge {
                    limit: crate::settings::BODY_LIMIT,
                }
            }
            other => ApiError::MalformedBody(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::invalid("query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::invalid("path", rejection.body_text())
    }
}

/// Maps a domain error to its problem. Each variant names the rule it enforces.
pub trait DomainProblem: std::error::Error {
    fn into_api_error(self) -> ApiError;
}

impl DomainProblem for PromptError {
    fn into_api_error(self) -> ApiError {
        match self {
            PromptError::NotFound => ApiError::NotFound("prompt"),
            PromptError::AlreadyExists => ApiError::Conflict(self.to_string()),
            PromptError::Archived | PromptError::NotArchived => ApiError::Conflict(self.to_string()),
            PromptError::NoSuchVersion(_) => ApiError::invalid("version", self.to_string()),
            PromptError::NoSuchLabel(_) => ApiError::NotFound("label"),
            PromptError::TooManyTags => ApiError::invalid("tags", self.to_string()),
        }
    }
}

impl DomainProblem for CategoryError {
    fn into_api_error(self) -> ApiError {
        match self {
            CategoryError::NotFound => ApiError::NotFound("category"),
            CategoryError::AlreadyExists => ApiError::Conflict(self.to_string()),
        }
    }
}

impl DomainProblem for ApiKeyError {
    fn into_api_error(self) -> ApiError {
        match self {
            ApiKeyError::NotFound => ApiError::NotFound("API key"),
            ApiKeyError::AlreadyExists | ApiKeyError::AlreadyRevoked | ApiKeyError::Revoked => {
                ApiError::Conflict(self.to_string())
            }
        }
    }
}

impl DomainProblem for ProviderError {
    fn into_api_error(self) -> ApiError {
        match self {
            ProviderError::NotFound => ApiError::NotFound("provider"),
            ProviderError::AlreadyExists => ApiError::Conflict(self.to_string()),
        }
    }
}

impl DomainProblem for ModelError {
    fn into_api_error(self) -> ApiError {
        match self {
            ModelError::NotFound => ApiError::NotFound("model"),
            ModelError::AlreadyExists => ApiError::Conflict(self.to_string()),
            ModelError::RefersToItself => ApiError::RuleViolated(self.to_string()),
            ModelError::PeriodNotAfterLast { .. } => ApiError::invalid("effective_from", self.to_string()),
            ModelError::NoSuchPeriod(_) => ApiError::invalid("effective_from", self.to_string()),
            ModelError::NotLastPeriod { .. } => ApiError::Conflict(self.to_string()),
        }
    }
}

impl DomainProblem for ConfigError {
    fn into_api_error(self) -> ApiError {
        // A violation's path is a JSON pointer into the value: `value/models/1`.
        let at = |violation: &Violation| format!("value{}", violation.path);
        match self {
            ConfigError::NotSet => ApiError::NotFound("configuration value"),
            ConfigError::ScheduledInThePast => ApiError::invalid("at", self.to_string()),
            ConfigError::NoSuchSchedule => ApiError::NotFound("pending schedule"),
            ConfigError::ValueDoesNotMatch(violations) => ApiError::Validation(
                violations
                    .iter()
                    .map(|violation| FieldError {
                        field: at(violation),
                        message: violation.message.clone(),
                    })
                    .collect(),
            ),
            ConfigError::CurrentValueDoesNotMatch(ref violations) => {
                let found: Vec<String> = violations
                    .iter()
                    .map(|v| format!("{}: {}", at(v), v.message))
                    .collect();
                ApiError::Conflict(format!("{self} ({})", found.join("; ")))
            }
        }
    }
}

impl DomainProblem for FlagError {
    fn into_api_error(self) -> ApiError {
        match self {}
    }
}

impl DomainProblem for ProtectionError {
    fn into_api_error(self) -> ApiError {
        match self {
            ProtectionError::NotProtected => ApiError::NotFound("protection"),
        }
    }
}

impl DomainProblem for ChangeRequestError {
    fn into_api_error(self) -> ApiError {
        match self {
            ChangeRequestError::NotFound => ApiError::NotFound("change request"),
            ChangeRequestError::AlreadyExists | ChangeRequestError::AlreadyDecided(_) => {
                ApiError::Conflict(self.to_string())
            }
            ChangeRequestError::OwnApproval => ApiError::OwnApproval,
        }
    }
}

impl DomainProblem for BudgetError {
    fn into_api_error(self) -> ApiError {
        match self {
            BudgetError::NotFound => ApiError::NotFound("budget"),
            BudgetError::AlreadyExists => ApiError::Conflict(self.to_string()),
        }
    }
}

impl DomainProblem for BulkError {
    fn into_api_error(self) -> ApiError {
        match self {
            BulkError::NotFound => ApiError::NotFound("bulk job"),
            BulkError::AlreadyExists
            | BulkError::Finished(_)
            | BulkError::UnexpectedItem(_)
            | BulkError::WrongStatus(_) => ApiError::Conflict(self.to_string()),
        }
    }
}

impl DomainProblem for domain::export::ExportError {
    fn into_api_error(self) -> ApiError {
        use domain::export::ExportError;
        match self {
            ExportError::NotFound => ApiError::NotFound("export"),
            ExportError::AlreadyExists | ExportError::Finished(_) | ExportError::WrongStatus(_) => {
                ApiError::Conflict(self.to_string())
            }
        }
    }
}

impl DomainProblem for ProviderHealthError {
    fn into_api_error(self) -> ApiError {
        match self {}
    }
}

impl DomainProblem for domain::experiment::ExperimentError {
    fn into_api_error(self) -> ApiError {
        use domain::experiment::ExperimentError;
        match self {
            ExperimentError::NotFound => ApiError::NotFound("experiment"),
            ExperimentError::AlreadyExists | ExperimentError::WrongStatus { .. } => {
                ApiError::Conflict(self.to_string())
            }
            ExperimentError::NoSuchVariant(_) => ApiError::invalid("winner", self.to_string()),
            ExperimentError::InvalidWeights => ApiError::invalid("weights", self.to_string()),
        }
    }
}

impl DomainProblem for domain::conversation::ConversationError {
    fn into_api_error(self) -> ApiError {
        use domain::conversation::ConversationError;
        match self {
            ConversationError::NotFound => ApiError::NotFound("conversation"),
            ConversationError::UnknownAction(_) => ApiError::NotFound("action"),
            ConversationError::AlreadyExists
            | ConversationError::AwaitingReply
            | ConversationError::NothingToReplyTo
            | ConversationError::ActionSettled { .. } => ApiError::Conflict(self.to_string()),
        }
    }
}

impl DomainProblem for IncidentError {
    fn into_api_error(self) -> ApiError {
        match self {
            IncidentError::NotFound => ApiError::NotFound("incident"),
            IncidentError::AlreadyExists | IncidentError::Resolved => ApiError::Conflict(self.to_string()),
        }
    }
}

impl DomainProblem for ReadRecordError {
    fn into_api_error(self) -> ApiError {
        match self {
            ReadRecordError::AlreadyRecorded => ApiError::Conflict(self.to_string()),
        }
    }
}

impl<E: DomainProblem> From<CommandError<E>> for ApiError {
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Rejected(e) => e.into_api_error(),
            CommandError::NotFound => ApiError::NotFound("resource"),
            CommandError::VersionMismatch { expected, current } => {
                ApiError::VersionMismatch { expected, current }
            }
            CommandError::Contended => ApiError::Contended,
            CommandError::NameTaken { scope, key } => {
                let what = match scope.as_str() {
                    domain::prompt::PROMPT_NAME_SCOPE => "prompt name",
                    domain::category::CATEGORY_NAME_SCOPE => "category name",
                    domain::provider::PROVIDER_NAME_SCOPE => "provider name",
                    domain::model::MODEL_REFERENCE_SCOPE => "model reference",
                    domain::budget::BUDGET_NAME_SCOPE => "budget name",
                    _ => "name",
                };
                ApiError::NameTaken { what, name: key }
            }
            CommandError::NoSuchReference { scope, target } => match scope.as_str() {
                PromptCategory::TYPE => ApiError::invalid("category", "no such category"),
                Provider::TYPE => ApiError::invalid("provider", "no such provider"),
                Model::TYPE => ApiError::RuleViolated(format!("there is no model {target}")),
                _ => ApiError::RuleViolated(format!("there is no {scope} {target}")),
            },
            CommandError::StillReferenced { scope, count } => match scope.as_str() {
                PromptCategory::TYPE => ApiError::Conflict(format!(
                    "the category still holds {count} prompt(s); move them first"
                )),
                _ => ApiError::Conflict(format!("the {scope} is still referred to by {count}")),
            },
            CommandError::AlreadyApplied => ApiError::Conflict(error.to_string()),
            CommandError::Store(cause) => ApiError::Internal(cause),
            CommandError::Unavailable(cause) => ApiError::Unavailable(cause),
        }
    }
}
