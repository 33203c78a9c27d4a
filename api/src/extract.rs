//! Request extractors shared by the handlers: JSON bodies whose rejections are problems,
//! the metadata every command carries, and `If-Match`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use commands::CommandMetadata;
use serde::de::DeserializeOwned;

use crate::auth::{client_address, Caller};
use crate::error::ApiError;
use crate::hardening::BodyLimit;
use crate::idempotency::IdempotentRequest;
use crate::request_id::RequestId;
use crate::state::AppState;

/// `axum::Json`, but a malformed, mistyped or oversized body is a problem+json error.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // The route group's limit, so that a 413 names the limit that applied.
        let limit = req.extensions().get::<BodyLimit>().copied();
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(JsonRejection::BytesRejection(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge {
                    limit: limit.map_or(crate::app::BODY_LIMIT, |l| l.0),
                })
            }
            Err(rejection) => Err(rejection.into()),
        }
    }
}

/// `axum::extract::Query` with problem+json rejections.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(value) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(value))
    }
}

/// `axum::extract::Path` with problem+json rejections.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(value) = axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(value))
    }
}

/// Longest accepted reason, in characters.
const MAX_REASON_CHARS: usize = 1_000;

/// The authenticated caller plus the metadata stored on the events its command produces.
pub struct CommandContext {
    pub caller: Caller,
    pub metadata: CommandMetadata,
    /// The version named by `If-Match`, if any (`*` means none).
    pub expected_version: Option<u64>,
    /// The claim on the request's `Idempotency-Key`, if it sent one.
    pub idempotency: Option<IdempotentRequest>,
}

impl CommandContext {
    /// The id for an aggregate this request creates: fresh, or with an `Idempotency-Key`
    /// the same on every retry, so that a retry finds what its first attempt created.
    pub fn new_id(&self) -> uuid::Uuid {
        self.idempotency
            .as_ref()
            .map_or_else(uuid::Uuid::now_v7, |request| request.attempt.resource_id)
    }

    /// Uses a `reason` given in the body when no `X-Reason` header was sent.
    pub fn with_reason(mut self, reason: Option<String>) -> Result<Self, ApiError> {
        if let Some(reason) = reason {
            self.metadata.reason = Some(parse_reason(&reason)?);
        }
        Ok(self)
    }
}

fn parse_reason(reason: &str) -> Result<String, ApiError> {
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::invalid(
            "reason",
            format!("must be at most {MAX_REASON_CHARS} characters"),
        ));
    }
    Ok(reason.to_string())
}

impl FromRequestParts<AppState> for CommandContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let idempotency = parts.extensions.get::<IdempotentRequest>().cloned();
        let caller = match &idempotency {
            Some(request) => request.caller.clone(), // authenticated when it claimed the key
            None => Caller::from_request_parts(parts, state).await?,
        };
        let headers = &parts.headers;
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let client_addr = client_address(parts).map(|a| a.to_string());
        let reason = header_text(headers, "x-reason")
            .map(|r| parse_reason(&r))
            .transpose()?;
        let metadata = CommandMetadata {
            tenant: caller.tenant.clone(),
            actor_key_id: caller.key_id.to_string(),
            actor_name: caller.key_name.clone(),
            request_id,
            client_addr,
            user_agent: header_text(headers, header::USER_AGENT.as_str()),
            reason,
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            correlation_id: None,
            causation_id: None,
            idempotency_key: idempotency.as_ref().map(|request| request.scope.key.clone()),
        };
        let expected_version = if_match(headers)?;
        Ok(CommandContext {
            caller,
            metadata,
            expected_version,
            idempotency,
        })
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .filter(|v| !v.is_empty())
}

/// Parses `If-Match: "3"` (also `W/"3"` and a bare `3`); `*` expects nothing.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::invalid("If-Match", "must be an ETag such as \"3\""))?
        .trim();
    if text == "*" {
        return Ok(None);
    }
    let bare = text.trim_start_matches("W/").trim_matches('"');
    bare.parse::<u64>()
        .map(Some)
        .map_err(|_| ApiError::invalid("If-Match", "must be an ETag such as \"3\""))
}

/// The `ETag` of a resource at `version`.
pub fn etag(version: u64) -> [(header::HeaderName, String); 1] {
    [(header::ETAG, format!("\"{version}\""))]
}
