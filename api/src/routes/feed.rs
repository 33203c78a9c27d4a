//! The live feed over HTTP: `GET /v1/events/stream` (Server-Sent Events) and
//! `GET /v1/events/ws` (WebSocket), both delivering the caller's tenant's events as
//! CloudEvents JSON, history first and then live, resumable by cursor. The delivery
//! guarantees (no gap, no duplicate, bounded memory) live in [`projections::feed`]; this
//! module parses the request and frames each item for its protocol.
//!
//! These responses last as long as the client stays: request timeouts and overload limits
//! must leave `/v1/events/` alone.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use domain::access::Permission;
use domain::fields::AllValid;
use domain::position::GlobalCursor;
use domain::text::InvalidText;
use projections::feed::{FeedError, FeedItem, Filter, Subscription};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use crate::openapi::{MalformedRequest, ValidationFailed};
use crate::state::AppState;

/// The SSE `event:` name of every feed message. One fixed name, so that a browser needs
/// one listener for all event types; the type itself is the CloudEvents `type`.
pub const SSE_EVENT_NAME: &str = "cloudevent";
/// Most entries in one filter list.
const MAX_FILTER_ITEMS: usize = 32;
/// Longest aggregate or event type name accepted in a filter.
const MAX_FILTER_NAME: usize = 128;
/// Largest message a WebSocket client may send; the feed is one-way, so only control
/// frames are expected.
const MAX_CLIENT_MESSAGE: usize = 4_096;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(server_sent_events))
        .routes(routes!(websocket))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    /// Comma-separated aggregate types (at most 32).
    #[param(
        pattern = r"^\s*[A-Za-z0-9_.-]{1,128}\s*(,\s*[A-Za-z0-9_.-]{1,128}\s*){0,31}$",
        example = "prompt"
    )]
    aggregate_type: Option<String>,
    /// Comma-separated event types (at most 32).
    #[param(
        pattern = r"^\s*[A-Za-z0-9_.-]{1,128}\s*(,\s*[A-Za-z0-9_.-]{1,128}\s*){0,31}$",
        example = "PromptVersionPublished"
    )]
    event_type: Option<String>,
    /// Deliver events after this cursor (`<transaction>-<position>`).
    #[param(pattern = r"^\s*([0-9]{1,18}-[0-9]{1,18})?\s*$", example = "812-40")]
    from: Option<String>,
}

/// `GET /v1/events/stream`: the tenant's events as Server-Sent Events. `Last-Event-ID`
/// (sent by a reconnecting `EventSource`) wins over `from`.
#[utoipa::path(
    get,
    path = "/v1/events/stream",
    tag = "feed",
    params(
        FeedQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this cursor (what a reconnecting `EventSource` sends); wins over `from`"),
    ),
    responses(
        (status = 200, description = "The tenant's events as Server-Sent Events, history first and then live: one `event: aipm` message per event, its CloudEvents JSON as `data` and its cursor as `id`. A stream that ends early sends `event: error` with a problem document.",
            content_type = "text/event-stream", body = String),
        (status = 422, response = ValidationFailed),
    )
)]
async fn server_sent_events(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<FeedQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    caller.require(Permission::Read)?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::invalid("Last-Event-ID", "must be a cursor such as 812-40"))?,
        ),
    };
    let (filter, from) = parse_request(&caller, query, last_event_id)?;
    let from = known_cursor(&app, &caller, from).await?;
    let subscription = app.feed.subscribe(filter, from).await.map_err(unavailable)?;
    let messages = futures::stream::unfold(Some(subscription), |state| async move {
        let mut subscription = state?;
        let (message, rest) = match subscription.next().await {
            Ok(Some(FeedItem::Event(event))) => (
                Event::default()
                    .id(event.cursor.to_string())
                    .event(SSE_EVENT_NAME)
                    .data(&event.document),
                Some(subscription),
            ),
            Ok(Some(FeedItem::TooSlow { resume_from })) => {
                (sse_problem(too_slow(resume_from), resume_from), None)
            }
            Ok(None) => return None,
            Err(error) => {
                let resume_from = subscription.resume_from();
                (sse_problem(interrupted(&error, resume_from), resume_from), None)
            }
        };
        Some((Ok::<_, Infallible>(message), rest))
    });
    let keep_alive = KeepAlive::new()
        .interval(app.feed_settings.heartbeat())
        .text("keep-alive");
    // Proxies such as nginx would otherwise buffer the stream.
    Ok((
        [("x-accel-buffering", "no")],
        Sse::new(messages).keep_alive(keep_alive),
    )
        .into_response())
}

/// The final SSE message of a stream that ends early: `event: error`, a problem+json
/// document as data, and the resume cursor as `id` so that a reconnecting `EventSource`
/// sends it back as `Last-Event-ID`.
fn sse_problem(problem: serde_json::Value, resume_from: GlobalCursor) -> Event {
    Event::default()
        .id(resume_from.to_string())
        .event("error")
        .data(problem.to_string())
}

/// The problem a too-slow consumer receives. It has no `status`: the response it ends
/// was a 200, and a problem's `status` must match the response's.
fn too_slow(resume_from: GlobalCursor) -> serde_json::Value {
    json!({
        "type": "/problems/consumer-too-slow",
        "title": "Consumer too slow",
        "detail": format!(
            "this subscriber fell too far behind the live feed; resume from {resume_from}"
        ),
        "resume_from": resume_from.to_string(),
    })
}

/// The problem a subscriber receives when the feed itself failed (the database went away).
fn interrupted(error: &FeedError, resume_from: GlobalCursor) -> serde_json::Value {
    tracing::error!(%error, "live feed subscription failed");
    json!({
        "type": "/problems/unavailable",
        "title": "Service Unavailable",
        "detail": format!("the live feed was interrupted; resume from {resume_from}"),
        "resume_from": resume_from.to_string(),
    })
}

/// `GET /v1/events/ws`: the same feed over WebSocket, one CloudEvents JSON text message per
/// event. The problems a request can have are answered before the upgrade.
#[utoipa::path(
    get,
    path = "/v1/events/ws",
    tag = "feed",
    params(FeedQuery),
    responses(
        (status = 101, description = "Upgraded: one CloudEvents JSON text message per event, history first and then live"),
        (status = 400, response = MalformedRequest),
        (status = 422, response = ValidationFailed),
    )
)]
async fn websocket(
    State(app): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<FeedQuery>,
    permit: Option<axum::Extension<crate::hardening::StreamPermit>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    caller.require(Permission::Read)?;
    let (filter, from) = parse_request(&caller, query, None)?;
    let from = known_cursor(&app, &caller, from).await?;
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::MalformedBody(format!(
            "this endpoint needs a WebSocket upgrade request: {}",
            rejection.body_text()
        ))
    })?;
    let subscription = app.feed.subscribe(filter, from).await.map_err(unavailable)?;
    let heartbeat = app.feed_settings.heartbeat();
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| async move {
            // The socket outlives the upgrade response: its place among the open streams is
            // held until it closes.
            let _permit = permit;
            relay(socket, subscription, heartbeat).await
        }))
}

/// What the WebSocket loop does next.
enum Step {
    Send(Message),
    Ping,
    Stop,
    Ignore,
}

/// Sends the subscription's items until it ends or the client goes; pings every
/// `heartbeat`. A send waits for the client, so a slow client slows only itself, until
/// the feed reports it too slow.
async fn relay(mut socket: WebSocket, mut subscription: Subscription, heartbeat: Duration) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    loop {
        let step = tokio::select! {
            item = subscription.next() => match item {
                Ok(Some(FeedItem::Event(event))) => Step::Send(Message::Text(event.document.clone().into())),
                Ok(Some(FeedItem::TooSlow { resume_from })) => Step::Send(close(
                    close_code::POLICY,
                    format!("consumer-too-slow; resume from {resume_from}"),
                )),
                Ok(None) => Step::Send(close(
                    close_code::AWAY,
                    format!("server shutting down; resume from {}", subscription.resume_from()),
                )),
                Err(error) => Step::Send(close(
                    close_code::ERROR,
                    format!("feed interrupted ({}); resume from {}", error_kind(&error), subscription.resume_from()),
                )),
            },
            _ = ping.tick() => Step::Ping,
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Step::Stop,
                // Pongs, or anything else a client says: the feed is one-way.
                Some(Ok(_)) => Step::Ignore,
            },
        };
        match step {
            Step::Send(message) => {
                let closing = matches!(message, Message::Close(_));
                if socket.send(message).await.is_err() || closing {
                    return;
                }
            }
            Step::Ping => {
                if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
            Step::Stop => return,
            Step::Ignore => {}
        }
    }
}

fn close(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// A short, safe description for a close reason (which is limited to 123 bytes).
fn error_kind(error: &FeedError) -> &'static str {
    match error {
        FeedError::Database(_) => "database unavailable",
        FeedError::Encoding { .. } => "event not encodable",
        FeedError::NotReady | FeedError::Stopped => "feed stopped",
    }
}

fn unavailable(error: FeedError) -> ApiError {
    match error {
        FeedError::Database(error) => error.into(),
        other => ApiError::Unavailable(other.to_string()),
    }
}

/// Where a subscription starts: after a cursor given in a request field, or the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resume {
    after: GlobalCursor,
    field: &'static str,
}

/// The subscriber's filter and starting cursor, or every problem with the request.
fn parse_request(
    caller: &Caller,
    query: FeedQuery,
    last_event_id: Option<&str>,
) -> Result<(Filter, Resume), ApiError> {
    let (aggregate_types, event_types, from, last_event_id) = (
        parse_names("aggregate_type", query.aggregate_type),
        parse_names("event_type", query.event_type),
        parse_cursor("from", query.from.as_deref()),
        parse_cursor("Last-Event-ID", last_event_id),
    )
        .all_valid()?;
    let filter = Filter {
        tenant_id: caller.tenant.clone(),
        aggregate_types,
        event_types,
    };
    let resume = match (last_event_id, from) {
        (Some(after), _) => Resume {
            after,
            field: "Last-Event-ID",
        },
        (None, Some(after)) => Resume { after, field: "from" },
        (None, None) => Resume {
            after: GlobalCursor::START,
            field: "from",
        },
    };
    Ok((filter, resume))
}

/// The cursor to start after, once it is known to name an event of the caller's tenant.
async fn known_cursor(app: &AppState, caller: &Caller, resume: Resume) -> ApiResult<GlobalCursor> {
    if resume.after == GlobalCursor::START
        || projections::feed::tenant_event_at(&app.pool, &caller.tenant, resume.after).await?
    {
        return Ok(resume.after);
    }
    Err(ApiError::invalid(
        resume.field,
        format!(
            "no event of this tenant is at cursor {}: resume from a cursor this feed delivered, or \
             from the start. (A cursor delivered before the database was restored from an older \
             backup, or failed over, may name an event the log no longer holds.)",
            resume.after
        ),
    ))
}

fn parse_cursor(field: &'static str, value: Option<&str>) -> Result<Option<GlobalCursor>, InvalidText> {
    let Some(value) = value.map(str::trim).filter(|value| !value.is_empty()) else {
        return Ok(None);
    };
    value
        .parse::<GlobalCursor>()
        .map(Some)
        .map_err(|message| InvalidText::new(field, message))
}

/// A comma-separated list of type names; `None` when absent.
fn parse_names(field: &'static str, value: Option<String>) -> Result<Option<Vec<String>>, InvalidText> {
    let Some(value) = value else {
        return Ok(None);
    };
    let names: Vec<String> = value.split(',').map(|name| name.trim().to_string()).collect();
    if names.len() > MAX_FILTER_ITEMS {
        return Err(InvalidText::new(
            field,
            format!("at most {MAX_FILTER_ITEMS} names"),
        ));
    }
    let valid = |name: &String| {
        !name.is_empty()
            && name.len() <= MAX_FILTER_NAME
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    if let Some(bad) = names.iter().find(|name| !valid(name)) {
        return Err(InvalidText::new(
            field,
            format!(
                "{bad:?} is not a type name: use letters, digits, '_', '-' or '.', \
                 at most {MAX_FILTER_NAME} characters, names separated by commas"
            ),
        ));
    }
    Ok(Some(names))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(names: &str) -> Result<Option<Vec<String>>, InvalidText> {
        parse_names("event_type", Some(names.to_string()))
    }

    #[test]
    fn filter_lists_are_comma_separated_names() {
        assert_eq!(
            parse("PromptCreated, PromptArchived").unwrap(),
            Some(vec!["PromptCreated".to_string(), "PromptArchived".to_string()])
        );
        assert!(parse("").is_err());
        assert!(parse("a,,b").is_err());
        assert!(parse("Prompt Created").is_err());
        assert!(parse(&vec!["a"; MAX_FILTER_ITEMS + 1].join(",")).is_err());
    }

    #[test]
    fn the_too_slow_problem_names_where_to_resume() {
        let problem = too_slow(GlobalCursor::new(812, 40));
        assert_eq!(problem["type"], "/problems/consumer-too-slow");
        assert_eq!(problem["resume_from"], "812-40");
        assert!(problem.get("status").is_none());
    }
}
