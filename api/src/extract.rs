//! Request extractors shared by the handlers: JSON bodies whose rejections are problems,
//! the metadata every command carries, and `If-Match`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use commands::CommandMetadata;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::{client_address, Caller};
use crate::error::{ApiError, NUL_MESSAGE};
use crate::hardening::BodyLimit;
use crate::idempotency::IdempotentRequest;
use crate::request_id::RequestId;

/// `axum::Json`, but a malformed, mistyped or oversized body is a problem+json error, and so
/// is text containing U+0000, which PostgreSQL can store neither in `text` nor in `jsonb`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // The route group's limit, so that a 413 names the limit that applied.
        let limit = req.extensions().get::<BodyLimit>().copied();
        let value = match axum::Json::<Value>::from_request(req, state).await {
            Ok(axum::Json(value)) => value,
            Err(JsonRejection::BytesRejection(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::PayloadTooLarge {
                    limit: limit.map_or(crate::settings::BODY_LIMIT, |l| l.0),
                })
            }
            Err(rejection) => return Err(rejection.into()),
        };
        if let Some(field) = field_with_nul(&value, "body") {
            return Err(ApiError::invalid(field, NUL_MESSAGE));
        }
        match T::deserialize(&value) {
            Ok(body) => Ok(ApiJson(body)),
            // JSON has one kind of number, and `2.0` is the integer 2 (JSON Schema agrees),
            // but serde refuses it for an integer field: read such numbers as integers.
            Err(error) => match integral_floats_as_integers(&value).map(|value| T::deserialize(&value)) {
                Some(Ok(body)) => Ok(ApiJson(body)),
                _ => Err(ApiError::invalid(
                    "body",
                    format!("Failed to deserialize the JSON body: {error}"),
                )),
            },
        }
    }
}

/// `value` with every number like `2.0` written as `2`, if it has any.
fn integral_floats_as_integers(value: &Value) -> Option<Value> {
    fn rewrite(value: &mut Value) -> bool {
        match value {
            Value::Number(number) => match number.as_f64() {
                Some(float) if number.is_f64() && float.fract() == 0.0 && float.abs() < 9.0e15 => {
                    // Exact: integers this small are exact in an f64.
                    *number = serde_json::Number::from(float as i64);
                    true
                }
                _ => false,
            },
            Value::Array(items) => {
                let mut changed = false;
                for item in items {
                    changed |= rewrite(item);
                }
                changed
            }
            Value::Object(fields) => {
                let mut changed = false;
                for item in fields.values_mut() {
                    changed |= rewrite(item);
                }
                changed
            }
            Value::Null | Value::Bool(_) | Value::String(_) => false,
        }
    }
    let mut rewritten = value.clone();
    rewrite(&mut rewritten).then_some(rewritten)
}

/// The path (`body.params.key`) of the first string or key in `value` that contains U+0000.
fn field_with_nul(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(text) => text.contains('\0').then(|| path.to_string()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(index, item)| field_with_nul(item, &format!("{path}[{index}]"))),
        Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            let field = format!("{path}.{key}");
            if key.contains('\0') {
                Some(path.to_string())
            } else {
                field_with_nul(item, &field)
            }
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// `axum::extract::Query` with problem+json rejections; a parameter containing U+0000 is
/// refused too, before it can reach PostgreSQL.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(pairs) =
            axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)?;
        if let Some((name, _)) = pairs
            .iter()
            .find(|(name, value)| name.contains('\0') || value.contains('\0'))
        {
            return Err(ApiError::invalid(name.clone(), NUL_MESSAGE));
        }
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

/// The headers [`CommandContext`] reads on a command that creates a resource, as the OpenAPI
/// document describes them.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // describes headers; `CommandContext` reads them
pub struct CreateHeaders {
    /// Why the change is made; stored with its events. A `reason` in the body takes precedence.
    #[param(rename = "X-Reason", value_type = String, required = false, max_length = 1000)]
    x_reason: Option<String>,
    /// Makes the command safe to retry: a retry with the same key and request gets the first
    /// answer again (with `Idempotent-Replayed: true`) and changes nothing. 1 to 255 visible
    /// ASCII characters; kept for 24 hours.
    #[param(rename = "Idempotency-Key", value_type = String, required = false, pattern = r"^[\x21-\x7e]{1,255}$")]
    idempotency_key: Option<String>,
}

/// The headers [`CommandContext`] reads on a command that changes an existing resource.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // describes headers; `CommandContext` reads them
pub struct ChangeHeaders {
    /// Apply the change only if the resource is at this version (its `ETag`); `*` or no
    /// header: whatever its version.
    #[param(rename = "If-Match", value_type = String, required = false, pattern = r#"^(\*|(W/)?"[0-9]{1,19}"|[0-9]{1,19})$"#, example = "\"3\"")]
    if_match: Option<String>,
    /// Why the change is made; stored with its events. A `reason` in the body takes precedence.
    #[param(rename = "X-Reason", value_type = String, required = false, max_length = 1000)]
    x_reason: Option<String>,
    /// Makes the command safe to retry: a retry with the same key and request gets the first
    /// answer again (with `Idempotent-Replayed: true`) and changes nothing. 1 to 255 visible
    /// ASCII characters; kept for 24 hours.
    #[param(rename = "Idempotency-Key", value_type = String, required = false, pattern = r"^[\x21-\x7e]{1,255}$")]
    idempotency_key: Option<String>,
}

/// The authenticated caller plus the metadata stored on the events its command produces.
pub struct CommandContext {
    pub caller: Caller,
    pub metadata: CommandMetadata,
    /// The version named by `If-Match`, if any (`*` means none).
    pub expected_version: Option<u64>,
    /// The claim on the request's `Idempotency-Key`, if it sent one.
    pub idempotency: Option<IdempotentRequest>,
    /// Where the request's commands left the log, for its `Aipm-Cursor`.
    pub written: crate::consistency::Written,
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

    /// Refuses a change made without saying why (`reason` in the body or `X-Reason`), for
    /// changes whose history must explain itself.
    pub fn require_reason(&self, change: &str) -> Result<(), ApiError> {
        match self.metadata.reason {
            Some(_) => Ok(()),
            None => Err(ApiError::invalid(
                "reason",
                format!("{change} needs a reason: send `reason` in the body or the X-Reason header"),
            )),
        }
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

impl<S> FromRequestParts<S> for CommandContext
where
    S: Send + Sync,
    Caller: FromRequestParts<S, Rejection = ApiError>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
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
            written: parts
                .extensions
                .get::<crate::consistency::Written>()
                .cloned()
                .unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    use crate::hardening::{ingestion_routes, protect, Guards};
    use crate::settings::SecuritySettings;

    async fn post_bytes(app: &Router, path: &str, size: usize) -> (StatusCode, serde_json::Value) {
        let body = serde_json::to_vec(&serde_json::json!({ "data": "x".repeat(size) })).unwrap();
        let request = Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn ingestion_routes_take_larger_bodies_than_command_routes() {
        let settings = SecuritySettings {
            body_limit: 1_000,
            ingest_body_limit: 10_000,
            ..SecuritySettings::default()
        };
        let guards = Guards::new(&settings);
        let echo = || post(|ApiJson(value): ApiJson<serde_json::Value>| async move { axum::Json(value) });
        let routes = Router::new().route("/v1/prompts", echo()).merge(ingestion_routes(
            Router::new().route("/v1/usage", echo()),
            &settings,
        ));
        let app = protect(routes, &guards);

        let (status, problem) = post_bytes(&app, "/v1/prompts", 5_000).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(problem["type"], "/problems/payload-too-large");
        assert!(
            problem["detail"].as_str().unwrap().contains("1000 bytes"),
            "{problem}"
        );
        assert_eq!(post_bytes(&app, "/v1/usage", 5_000).await.0, StatusCode::OK);
        let (status, problem) = post_bytes(&app, "/v1/usage", 20_000).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            problem["detail"].as_str().unwrap().contains("10000 bytes"),
            "{problem}"
        );
    }
}
