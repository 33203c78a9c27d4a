//! A fake LLM provider: a real HTTP server speaking OpenAI-compatible chat completions
//! (`POST /v1/chat/completions`) and Anthropic messages (`POST /v1/messages`), streaming
//! included, for the model gateway's tests and benchmark.
//!
//! By default it answers `"echo: "` followed by the text of the last user message, with token
//! counts from [`counted_input_tokens`] and [`counted_output_tokens`]. Replies can be scripted
//! per model ([`FakeProvider::script`]): errors with `Retry-After`, tool calls, slow answers,
//! streams cut mid-way. Every request is recorded, refused ones too.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt as _;
use axum::Router;
use futures::stream::{self, StreamExt as _};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What an image part counts for in [`counted_input_tokens`].
pub const IMAGE_TOKENS: u64 = 10;

/// Anthropic's own limit on a request body; base64 images make bodies large.
const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// Which protocol a request spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OpenAI-compatible chat completions.
    OpenAi,
    /// Anthropic messages.
    Anthropic,
}

/// A request as the fake provider received it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub protocol: Protocol,
    pub path: String,
    pub headers: HeaderMap,
    /// The JSON body; a body that is not JSON is kept as a string of its text.
    pub body: Value,
    pub at: Instant,
}

impl ReceivedRequest {
    /// The body's `model` field.
    pub fn model(&self) -> Option<&str> {
        self.body["model"].as_str()
    }
}

/// A scripted reply to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A normal answer. Token counts left `None` are computed as for the default reply.
    Text {
        text: String,
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
    },
    /// The model calls tools (name and arguments object), after `text` when it is not empty.
    ToolCalls {
        text: String,
        calls: Vec<(String, Value)>,
    },
    /// An error status with a protocol-shaped error body, and a `Retry-After` (seconds).
    Status { status: u16, retry_after: Option<u32> },
    /// Waits this long (besides the latency), then answers the default reply.
    Slow(Duration),
    /// Streaming: the first `chunks` text chunks of the default reply, then the connection is
    /// dropped mid-body. Not streaming: as `Status` 500.
    CutAfter { chunks: usize },
}

impl Reply {
    /// A normal answer with token counts computed from the request and `text`.
    pub fn text(text: impl Into<String>) -> Reply {
        Reply::Text {
            text: text.into(),
            input_tokens: None,
            output_tokens: None,
        }
    }
}

/// A fake provider serving on a local port until dropped.
pub struct FakeProvider {
    address: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl FakeProvider {
    /// Starts on 127.0.0.1 on a free port. Accepts `api_key` as the only valid credential.
    pub async fn start(api_key: &str) -> FakeProvider {
        FakeProvider::start_on((Ipv4Addr::LOCALHOST, 0).into(), api_key, Duration::ZERO)
            .await
            .expect("bind the fake provider to a free local port")
    }

    /// Starts on `address`, answering every request after `latency`.
    pub async fn start_on(address: SocketAddr, api_key: &str, latency: Duration) -> io::Result<FakeProvider> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            api_key: api_key.to_string(),
            latency_nanos: AtomicU64::new(nanos(latency)),
            recording: AtomicBool::new(true),
            scripts: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        });
        let router = Router::new()
            .route("/v1/chat/completions", post(openai_chat_completions))
            .route("/v1/messages", post(anthropic_messages))
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(shared.clone());
        // Streams are many small writes; Nagle's algorithm would hold each back until the
        // previous one is acknowledged.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                eprintln!("fake provider stopped: {error}");
            }
        });
        Ok(FakeProvider {
            address,
            shared,
            server,
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Base URL for an OpenAI-compatible provider: `http://127.0.0.1:PORT/v1`.
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// Base URL for an Anthropic provider: `http://127.0.0.1:PORT`.
    pub fn anthropic_base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Queues `replies` for requests whose `model` is `model`, after any still queued; each
    /// request takes the next one, and the default reply once none is left.
    pub fn script(&self, model: &str, replies: Vec<Reply>) {
        lock(&self.shared.scripts)
            .entry(model.to_string())
            .or_default()
            .extend(replies);
    }

    /// The delay before every answer (default zero).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.latency_nanos.store(nanos(latency), Ordering::Relaxed);
    }

    /// Whether requests are recorded (default yes). A long benchmark turns it off, or the
    /// record would grow without bound.
    pub fn set_recording(&self, on: bool) {
        self.shared.recording.store(on, Ordering::Relaxed);
    }

    /// The requests received, in order of arrival (both protocols).
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// The requests received for `model`, in order of arrival.
    pub fn requests_for(&self, model: &str) -> Vec<ReceivedRequest> {
        lock(&self.shared.requests)
            .iter()
            .filter(|request| request.model() == Some(model))
            .cloned()
            .collect()
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Shared {
    api_key: String,
    latency_nanos: AtomicU64,
    recording: AtomicBool,
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    requests: Mutex<Vec<ReceivedRequest>>,
    next_id: AtomicU64,
}

impl Shared {
    fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(Ordering::Relaxed))
    }

    fn record(&self, protocol: Protocol, headers: HeaderMap, body: Value) {
        if !self.recording.load(Ordering::Relaxed) {
            return;
        }
        let request = ReceivedRequest {
            protocol,
            path: protocol.path().to_string(),
            headers,
            body,
            at: Instant::now(),
        };
        lock(&self.requests).push(request);
    }

    fn next_reply(&self, model: &str) -> Option<Reply> {
        lock(&self.scripts).get_mut(model)?.pop_front()
    }

    /// Whether `headers` carry the key the way `protocol` wants it; the refusal if not.
    fn check_credentials(&self, protocol: Protocol, headers: &HeaderMap) -> Result<(), Refusal> {
        let header_text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        match protocol {
            Protocol::OpenAi => {
                let key = header_text("authorization").and_then(|value| value.strip_prefix("Bearer "));
                match key {
                    Some(key) if key == self.api_key => Ok(()),
                    Some(_) => Err(Refusal::new(StatusCode::UNAUTHORIZED, "Incorrect API key provided.")),
                    None => Err(Refusal::new(
                        StatusCode::UNAUTHORIZED,
                        "You didn't provide an API key. Provide it in an Authorization header as Bearer auth.",
                    )),
                }
            }
            Protocol::Anthropic => {
                if header_text("x-api-key") != Some(self.api_key.as_str()) {
                    return Err(Refusal::new(StatusCode::UNAUTHORIZED, "invalid x-api-key"));
                }
                // Anthropic answers a missing version as a bad request, not a bad credential.
                if header_text("anthropic-version").is_none() {
                    return Err(Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "anthropic-version: header is required",
                    ));
                }
                Ok(())
            }
        }
    }
}

/// A request refused before a reply is chosen; answered in its protocol's error shape.
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds valid data.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Protocol {
    fn path(self) -> &'static str {
        match self {
            Protocol::OpenAi => "/v1/chat/completions",
            Protocol::Anthropic => "/v1/messages",
        }
    }
}

async fn openai_chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(&shared, Protocol::OpenAi, headers, &body).await
}

async fn anthropic_messages(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    answer(&shared, Protocol::Anthropic, headers, &body).await
}

async fn answer(shared: &Shared, protocol: Protocol, headers: HeaderMap, raw_body: &[u8]) -> Response {
    let body = serde_json::from_slice::<Value>(raw_body);
    let checked = shared.check_credentials(protocol, &headers);
    let recorded_body = match &body {
        Ok(body) => body.clone(),
        Err(_) => Value::String(String::from_utf8_lossy(raw_body).into_owned()),
    };
    shared.record(protocol, headers, recorded_body);
    // The scripted reply is taken on arrival, so concurrent requests take them in that order.
    let outcome = checked.and_then(|()| {
        let body = body.map_err(|error| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid JSON: {error}"),
            )
        })?;
        let request = ParsedRequest::parse(protocol, body)?;
        let reply = shared.next_reply(&request.model);
        Ok((request, reply))
    });
    let latency = shared.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (request, reply) = match outcome {
        Ok(accepted) => accepted,
        Err(refusal) => return error_response(protocol, refusal.status, &refusal.message, None),
    };
    let answer = match reply {
        None => Answer::default_for(&request.body),
        Some(Reply::Text {
            text,
            input_tokens,
            output_tokens,
        }) => Answer {
            input_tokens: input_tokens.unwrap_or_else(|| counted_input_tokens(&request.body)),
            output_tokens: output_tokens.unwrap_or_else(|| counted_output_tokens(&text, &[])),
            text,
            calls: Vec::new(),
            cut_after: None,
        },
        Some(Reply::ToolCalls { text, calls }) => Answer {
            input_tokens: counted_input_tokens(&request.body),
            output_tokens: counted_output_tokens(&text, &calls),
            text,
            calls,
            cut_after: None,
        },
        Some(Reply::Status { status, retry_after }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message = status.canonical_reason().unwrap_or("scripted error");
            return error_response(protocol, status, message, retry_after);
        }
        Some(Reply::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            Answer::default_for(&request.body)
        }
        Some(Reply::CutAfter { chunks }) => {
            if !request.stream {
                return error_response(
                    protocol,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The server had an error while processing your request.",
                    None,
                );
            }
            Answer {
                cut_after: Some(chunks),
                ..Answer::default_for(&request.body)
            }
        }
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    match (protocol, request.stream) {
        (Protocol::OpenAi, false) => json_response(&openai::message(&request, &answer, id)),
        (Protocol::OpenAi, true) => {
            event_stream(openai::events(&request, &answer, id), answer.cut_after.is_some())
        }
        (Protocol::Anthropic, false) => json_response(&anthropic::message(&request, &answer, id)),
        (Protocol::Anthropic, true) => event_stream(
            anthropic::events(&request, &answer, id),
            answer.cut_after.is_some(),
        ),
    }
}

/// What the answer needs of a valid request.
struct ParsedRequest {
    body: Value,
    model: String,
    stream: bool,
    /// OpenAI: `stream_options.include_usage`.
    include_usage: bool,
}

impl ParsedRequest {
    fn parse(protocol: Protocol, body: Value) -> Result<ParsedRequest, Refusal> {
        let missing = |field: &str| {
            let message = match protocol {
                Protocol::OpenAi => format!("Missing required parameter: '{field}'."),
                Protocol::Anthropic => format!("{field}: Field required"),
            };
            Refusal::new(StatusCode::BAD_REQUEST, message)
        };
        let model = body["model"]
            .as_str()
            .ok_or_else(|| missing("model"))?
            .to_string();
        if !body["messages"].is_array() {
            return Err(missing("messages"));
        }
        if protocol == Protocol::Anthropic && !body["max_tokens"].is_u64() {
            return Err(missing("max_tokens"));
        }
        Ok(ParsedRequest {
            stream: body["stream"].as_bool().unwrap_or(false),
            include_usage: body["stream_options"]["include_usage"].as_bool().unwrap_or(false),
            model,
            body,
        })
    }
}

/// The answer to send, in either protocol.
struct Answer {
    text: String,
    calls: Vec<(String, Value)>,
    input_tokens: u64,
    output_tokens: u64,
    /// Streaming: how many text chunks go out before the connection is dropped.
    cut_after: Option<usize>,
}

impl Answer {
    fn default_for(body: &Value) -> Answer {
        let text = default_reply_text(body);
        Answer {
            input_tokens: counted_input_tokens(body),
            output_tokens: counted_output_tokens(&text, &[]),
            text,
            calls: Vec::new(),
            cut_after: None,
        }
    }

    /// The text chunks to stream, fewer when the stream is to be cut.
    fn streamed_chunks(&self) -> Vec<&str> {
        let mut chunks = text_chunks(&self.text);
        if let Some(cut_after) = self.cut_after {
            chunks.truncate(cut_after);
        }
        chunks
    }

    fn arguments(&self) -> impl Iterator<Item = (usize, &str, String)> {
        self.calls
            .iter()
            .enumerate()
            .map(|(index, (name, arguments))| (index, name.as_str(), arguments.to_string()))
    }
}

/// The default reply: `"echo: "` and the text of the last user message.
pub fn default_reply_text(body: &Value) -> String {
    format!("echo: {}", last_user_text(body))
}

/// The text parts of the last user message, joined by spaces (its content may be a string or
/// an array of parts).
pub fn last_user_text(body: &Value) -> String {
    let Some(message) = body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|message| message["role"] == "user"))
    else {
        return String::new();
    };
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|part| part["type"] == "text")
            .filter_map(|part| part["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Input tokens as the fake provider counts them: whitespace-separated words of every
/// message's text parts (tool results included) and of the `system` prompt (Anthropic), plus
/// [`IMAGE_TOKENS`] per image part.
pub fn counted_input_tokens(body: &Value) -> u64 {
    let messages: u64 = body["messages"].as_array().map_or(0, |messages| {
        messages
            .iter()
            .map(|message| content_tokens(&message["content"]))
            .sum()
    });
    content_tokens(&body["system"]) + messages
}

/// Output tokens as the fake provider counts them: whitespace-separated words of `text`, and
/// for each tool call those of its name and of its arguments as compact JSON.
pub fn counted_output_tokens(text: &str, calls: &[(String, Value)]) -> u64 {
    let calls: u64 = calls
        .iter()
        .map(|(name, arguments)| words(name) + words(&arguments.to_string()))
        .sum();
    words(text) + calls
}

/// How a text is streamed: one word a chunk, each with the whitespace before it (the last
/// also with any after it), so the chunks concatenate to the text.
pub fn text_chunks(text: &str) -> Vec<&str> {
    let mut chunks = Vec::new();
    let mut chunk_start = 0;
    let mut last_word_end = 0;
    let mut in_word = false;
    let mut seen_word = false;
    for (index, character) in text.char_indices() {
        if character.is_whitespace() {
            in_word = false;
            continue;
        }
        if !in_word && seen_word {
            chunks.push(&text[chunk_start..last_word_end]);
            chunk_start = last_word_end;
        }
        in_word = true;
        seen_word = true;
        last_word_end = index + character.len_utf8();
    }
    if chunk_start < text.len() {
        chunks.push(&text[chunk_start..]);
    }
    chunks
}

/// Tool call arguments as streamed: about three fragments (at least two for any JSON of two
/// characters or more), so a client must join them before parsing.
fn argument_fragments(arguments: &str) -> Vec<&str> {
    let starts: Vec<usize> = arguments.char_indices().map(|(index, _)| index).collect();
    let size = starts.len().div_ceil(3).max(1);
    starts
        .chunks(size)
        .enumerate()
        .map(|(number, chunk)| {
            let end = starts
                .get((number + 1) * size)
                .copied()
                .unwrap_or(arguments.len());
            &arguments[chunk[0]..end]
        })
        .collect()
}

fn content_tokens(content: &Value) -> u64 {
    match content {
        Value::String(text) => words(text),
        Value::Array(parts) => parts.iter().map(part_tokens).sum(),
        _ => 0,
    }
}

fn part_tokens(part: &Value) -> u64 {
    match part["type"].as_str() {
        Some("text") => part["text"].as_str().map_or(0, words),
        Some("image" | "image_url") => IMAGE_TOKENS,
        Some("tool_result") => content_tokens(&part["content"]),
        _ => 0,
    }
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn json_response(body: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.to_string(),
    )
        .into_response()
}

/// A server-sent event stream of `events`; when `cut`, the body then fails, so the server
/// drops the connection without ending the body.
fn event_stream(events: Vec<String>, cut: bool) -> Response {
    let events = stream::iter(
        events
            .into_iter()
            .map(|event| Ok::<_, io::Error>(Bytes::from(event))),
    );
    let body = if cut {
        let failure = stream::once(async {
            // Lets the chunks before it be written out first, as a real cut would.
            tokio::time::sleep(Duration::from_millis(5)).await;
            Err(io::Error::new(io::ErrorKind::ConnectionAborted, "stream cut"))
        });
        Body::from_stream(events.chain(failure))
    } else {
        Body::from_stream(events)
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// An error answer with `protocol`'s error body.
fn error_response(
    protocol: Protocol,
    status: StatusCode,
    message: &str,
    retry_after: Option<u32>,
) -> Response {
    let body = match protocol {
        Protocol::OpenAi => {
            let (kind, code) = match status.as_u16() {
                401 => ("invalid_request_error", Some("invalid_api_key")),
                429 => ("requests", Some("rate_limit_exceeded")),
                400..=499 => ("invalid_request_error", None),
                _ => ("server_error", None),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
        Protocol::Anthropic => {
            let kind = match status.as_u16() {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                400..=499 => "invalid_request_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
    };
    let mut response = (status, json_response(&body)).into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

mod openai {
    use super::*;

    pub(super) fn message(request: &ParsedRequest, answer: &Answer, id: u64) -> Value {
        let calls: Vec<Value> = answer
            .arguments()
            .map(|(index, name, arguments)| {
                json!({
                    "id": call_id(id, index),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                })
            })
            .collect();
        let content = if answer.text.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            Value::from(answer.text.as_str())
        };
        let mut message = json!({"role": "assistant", "content": content, "refusal": null});
        if !calls.is_empty() {
            message["tool_calls"] = Value::from(calls);
        }
        json!({
            "id": completion_id(id),
            "object": "chat.completion",
            "created": unix_seconds(),
            "model": request.model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish_reason(answer),
            }],
            "usage": usage(answer),
        })
    }

    pub(super) fn events(request: &ParsedRequest, answer: &Answer, id: u64) -> Vec<String> {
        let created = unix_seconds();
        let chunk = |delta: Value, finish_reason: Value| {
            let mut chunk = json!({
                "id": completion_id(id),
                "object": "chat.completion.chunk",
                "created": created,
                "model": request.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
            });
            // With usage asked for, every chunk has the field, null until the last.
            if request.include_usage {
                chunk["usage"] = Value::Null;
            }
            data(&chunk)
        };
        let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
        for text in answer.streamed_chunks() {
            events.push(chunk(json!({"content": text}), Value::Null));
        }
        if answer.cut_after.is_some() {
            return events;
        }
        for (index, name, arguments) in answer.arguments() {
            let opening = json!({"tool_calls": [{
                "index": index,
                "id": call_id(id, index),
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }]});
            events.push(chunk(opening, Value::Null));
            for fragment in argument_fragments(&arguments) {
                let delta = json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]});
                events.push(chunk(delta, Value::Null));
            }
        }
        events.push(chunk(json!({}), Value::from(finish_reason(answer))));
        if request.include_usage {
            events.push(data(&json!({
                "id": completion_id(id),
                "object": "chat.completion.chunk",
                "created": created,
                "model": request.model,
                "choices": [],
                "usage": usage(answer),
            })));
        }
        events.push("data: [DONE]\n\n".to_string());
        events
    }

    fn data(chunk: &Value) -> String {
        format!("data: {chunk}\n\n")
    }

    fn usage(answer: &Answer) -> Value {
        json!({
            "prompt_tokens": answer.input_tokens,
            "completion_tokens": answer.output_tokens,
            "total_tokens": answer.input_tokens + answer.output_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
        })
    }

    fn finish_reason(answer: &Answer) -> &'static str {
        if answer.calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        }
    }

    fn completion_id(id: u64) -> String {
        format!("chatcmpl-fake{id}")
    }

    fn call_id(id: u64, index: usize) -> String {
        format!("call_fake{id}_{index}")
    }
}

mod anthropic {
    use super::*;

    pub(super) fn message(request: &ParsedRequest, answer: &Answer, id: u64) -> Value {
        let mut content = Vec::new();
        if has_text_block(answer) {
            content.push(json!({"type": "text", "text": answer.text}));
        }
        for (index, (name, input)) in answer.calls.iter().enumerate() {
            content.push(json!({
                "type": "tool_use",
                "id": tool_use_id(id, index),
                "name": name,
                "input": input,
            }));
        }
        json!({
            "id": message_id(id),
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": content,
            "stop_reason": stop_reason(answer),
            "stop_sequence": null,
            "usage": {
                "input_tokens": answer.input_tokens,
                "output_tokens": answer.output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        })
    }

    pub(super) fn events(request: &ParsedRequest, answer: &Answer, id: u64) -> Vec<String> {
        let mut events = vec![event(
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": message_id(id),
                    "type": "message",
                    "role": "assistant",
                    "model": request.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {
                        "input_tokens": answer.input_tokens,
                        "output_tokens": 1,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                    },
                },
            }),
        )];
        let mut block = 0;
        // Anthropic sends one ping, after the first block opens.
        let mut open_block = |events: &mut Vec<String>, content_block: Value| {
            events.push(event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": block, "content_block": content_block}),
            ));
            if block == 0 {
                events.push(event("ping", &json!({"type": "ping"})));
            }
            block += 1;
            block - 1
        };
        if has_text_block(answer) {
            let index = open_block(&mut events, json!({"type": "text", "text": ""}));
            for text in answer.streamed_chunks() {
                events.push(delta(index, json!({"type": "text_delta", "text": text})));
            }
            if answer.cut_after.is_some() {
                return events;
            }
            events.push(block_stop(index));
        }
        for (call, name, arguments) in answer.arguments() {
            let tool_use =
                json!({"type": "tool_use", "id": tool_use_id(id, call), "name": name, "input": {}});
            let index = open_block(&mut events, tool_use);
            for fragment in argument_fragments(&arguments) {
                events.push(delta(
                    index,
                    json!({"type": "input_json_delta", "partial_json": fragment}),
                ));
            }
            events.push(block_stop(index));
        }
        events.push(event(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason(answer), "stop_sequence": null},
                "usage": {"output_tokens": answer.output_tokens},
            }),
        ));
        events.push(event("message_stop", &json!({"type": "message_stop"})));
        events
    }

    fn event(kind: &str, data: &Value) -> String {
        format!("event: {kind}\ndata: {data}\n\n")
    }

    fn delta(index: usize, delta: Value) -> String {
        event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        )
    }

    fn block_stop(index: usize) -> String {
        event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        )
    }

    /// A text block comes first when there is text, or when there is nothing else.
    fn has_text_block(answer: &Answer) -> bool {
        !answer.text.is_empty() || answer.calls.is_empty()
    }

    fn stop_reason(answer: &Answer) -> &'static str {
        if answer.calls.is_empty() {
            "end_turn"
        } else {
            "tool_use"
        }
    }

    fn message_id(id: u64) -> String {
        format!("msg_fake{id}")
    }

    fn tool_use_id(id: u64, index: usize) -> String {
        format!("toolu_fake{id}_{index}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "test-key";

    async fn openai(provider: &FakeProvider, body: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/chat/completions", provider.openai_base_url()))
            .bearer_auth(KEY)
            .json(body)
            .send()
            .await
            .expect("send to the OpenAI endpoint")
    }

    async fn anthropic(provider: &FakeProvider, body: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/v1/messages", provider.anthropic_base_url()))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .json(body)
            .send()
            .await
            .expect("send to the Anthropic endpoint")
    }

    async fn json_of(response: reqwest::Response, status: u16) -> Value {
        assert_eq!(response.status().as_u16(), status);
        response.json().await.expect("a JSON body")
    }

    /// The events of a server-sent event stream: (event name or "", data).
    async fn events_of(response: reqwest::Response) -> Vec<(String, String)> {
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let text = response.text().await.expect("a whole stream");
        parse_events(&text)
    }

    fn parse_events(text: &str) -> Vec<(String, String)> {
        text.split("\n\n")
            .filter(|block| !block.is_empty())
            .map(|block| {
                let mut name = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        name = value.to_string();
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data = value.to_string();
                    } else {
                        panic!("not an SSE line: {line:?}");
                    }
                }
                (name, data)
            })
            .collect()
    }

    /// The JSON data of OpenAI chunks, checking the stream ends with `[DONE]`.
    fn openai_chunks(events: &[(String, String)]) -> Vec<Value> {
        assert_eq!(events.last().expect("events").1, "[DONE]");
        events[..events.len() - 1]
            .iter()
            .map(|(_, data)| serde_json::from_str(data).expect("a JSON chunk"))
            .collect()
    }

    /// The JSON data of Anthropic events, checking each event's name matches its `type`.
    fn anthropic_events(events: &[(String, String)]) -> Vec<Value> {
        events
            .iter()
            .map(|(name, data)| {
                let data: Value = serde_json::from_str(data).expect("JSON event data");
                assert_eq!(data["type"], name.as_str());
                data
            })
            .collect()
    }

    fn event_types(events: &[Value]) -> Vec<&str> {
        events
            .iter()
            .map(|event| event["type"].as_str().expect("type"))
            .collect()
    }

    #[test]
    fn text_chunks_are_words_that_concatenate_to_the_text() {
        assert_eq!(text_chunks("echo: one two"), ["echo:", " one", " two"]);
        assert_eq!(text_chunks("  a\n b  "), ["  a", "\n b  "]);
        assert_eq!(text_chunks("word"), ["word"]);
        assert_eq!(text_chunks("   "), ["   "]);
        assert!(text_chunks("").is_empty());
        let text = "héllo  wörld \t ünïcode ";
        assert_eq!(text_chunks(text).concat(), text);
        assert_eq!(text_chunks(text).len(), 3);
    }

    #[test]
    fn argument_fragments_are_at_least_two_and_rejoin() {
        for arguments in ["{}", r#"{"city":"Paris"}"#, r#"{"q":"ünï"}"#] {
            let fragments = argument_fragments(arguments);
            assert!(fragments.len() >= 2, "{fragments:?}");
            assert_eq!(fragments.concat(), arguments);
        }
    }

    #[test]
    fn token_counts_follow_the_published_rules() {
        let body = json!({
            "system": [{"type": "text", "text": "be terse"}],
            "messages": [
                {"role": "user", "content": "one two three"},
                {"role": "user", "content": [
                    {"type": "image", "source": {"type": "url", "url": "http://x/y.png"}},
                    {"type": "tool_result", "tool_use_id": "t", "content": "four five"},
                    {"type": "text", "text": "six"},
                ]},
            ],
        });
        assert_eq!(counted_input_tokens(&body), 2 + 3 + IMAGE_TOKENS + 2 + 1);
        assert_eq!(last_user_text(&body), "six");
        let calls = [("get_weather".to_string(), json!({"city": "New York"}))];
        assert_eq!(counted_output_tokens("a b", &calls), 2 + 1 + 2);
    }

    #[tokio::test]
    async fn openai_echoes_the_last_user_message_with_token_counts() {
        let provider = FakeProvider::start(KEY).await;
        let body = json!({
            "model": "gpt-test",
            "max_tokens": 100,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "first answer"},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "text", "text": "this picture"},
                ]},
            ],
        });
        let answer = json_of(openai(&provider, &body).await, 200).await;

        assert_eq!(answer["object"], "chat.completion");
        assert_eq!(answer["model"], "gpt-test");
        let choice = &answer["choices"][0];
        assert_eq!(choice["index"], 0);
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"], "echo: what is this picture");
        assert_eq!(choice["finish_reason"], "stop");
        assert!(choice["message"].get("tool_calls").is_none());
        assert_eq!(counted_input_tokens(&body), 2 + 2 + 2 + 2 + 2 + IMAGE_TOKENS);
        assert_eq!(answer["usage"]["prompt_tokens"], counted_input_tokens(&body));
        assert_eq!(answer["usage"]["completion_tokens"], 5);
        assert_eq!(answer["usage"]["total_tokens"], counted_input_tokens(&body) + 5);
        assert_eq!(answer["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

        let requests = provider.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].protocol, Protocol::OpenAi);
        assert_eq!(requests[0].path, "/v1/chat/completions");
        assert_eq!(requests[0].headers["authorization"], format!("Bearer {KEY}"));
        assert_eq!(requests[0].body, body);
        assert_eq!(provider.requests_for("gpt-test").len(), 1);
        assert!(provider.requests_for("other").is_empty());
    }

    #[tokio::test]
    async fn anthropic_echoes_the_last_user_message_with_token_counts() {
        let provider = FakeProvider::start(KEY).await;
        let body = json!({
            "model": "claude-test",
            "max_tokens": 100,
            "system": "You are terse.",
            "messages": [
                {"role": "user", "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                    {"type": "text", "text": "describe it"},
                ]},
            ],
        });
        let answer = json_of(anthropic(&provider, &body).await, 200).await;

        assert_eq!(answer["type"], "message");
        assert_eq!(answer["role"], "assistant");
        assert_eq!(answer["model"], "claude-test");
        assert_eq!(
            answer["content"],
            json!([{"type": "text", "text": "echo: describe it"}])
        );
        assert_eq!(answer["stop_reason"], "end_turn");
        assert_eq!(answer["usage"]["input_tokens"], 3 + IMAGE_TOKENS + 2);
        assert_eq!(answer["usage"]["input_tokens"], counted_input_tokens(&body));
        assert_eq!(answer["usage"]["output_tokens"], 3);
        assert_eq!(answer["usage"]["cache_read_input_tokens"], 0);

        let requests = provider.requests_for("claude-test");
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].protocol, Protocol::Anthropic);
        assert_eq!(requests[0].path, "/v1/messages");
        assert_eq!(requests[0].headers["x-api-key"], KEY);
    }

    #[tokio::test]
    async fn scripted_text_sets_the_answer_and_its_token_counts() {
        let provider = FakeProvider::start(KEY).await;
        provider.script(
            "m",
            vec![
                Reply::Text {
                    text: "forty two".to_string(),
                    input_tokens: Some(1000),
                    output_tokens: Some(7),
                },
                Reply::text("counted for me"),
            ],
        );
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let first = json_of(openai(&provider, &body).await, 200).await;
        assert_eq!(first["choices"][0]["message"]["content"], "forty two");
        assert_eq!(first["usage"]["prompt_tokens"], 1000);
        assert_eq!(first["usage"]["completion_tokens"], 7);
        let second = json_of(openai(&provider, &body).await, 200).await;
        assert_eq!(second["choices"][0]["message"]["content"], "counted for me");
        assert_eq!(second["usage"]["prompt_tokens"], 1);
        assert_eq!(second["usage"]["completion_tokens"], 3);
        let third = json_of(openai(&provider, &body).await, 200).await;
        assert_eq!(third["choices"][0]["message"]["content"], "echo: hi");
    }

    #[tokio::test]
    async fn wrong_or_missing_credentials_are_refused_and_recorded() {
        let provider = FakeProvider::start(KEY).await;
        let client = reqwest::Client::new();
        let openai_url = format!("{}/chat/completions", provider.openai_base_url());
        let anthropic_url = format!("{}/v1/messages", provider.anthropic_base_url());
        let openai_body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let anthropic_body =
            json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});

        let wrong = client
            .post(&openai_url)
            .bearer_auth("nope")
            .json(&openai_body)
            .send()
            .await
            .expect("send");
        let error = json_of(wrong, 401).await;
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert_eq!(error["error"]["code"], "invalid_api_key");
        assert!(error["error"]["message"].is_string());
        let missing = client
            .post(&openai_url)
            .json(&openai_body)
            .send()
            .await
            .expect("send");
        assert_eq!(json_of(missing, 401).await["error"]["code"], "invalid_api_key");
        // Anthropic's header in an OpenAI request is no credential.
        let other_scheme = client
            .post(&openai_url)
            .header("x-api-key", KEY)
            .json(&openai_body)
            .send()
            .await
            .expect("send");
        assert_eq!(other_scheme.status().as_u16(), 401);

        let wrong = client
            .post(&anthropic_url)
            .header("x-api-key", "nope")
            .header("anthropic-version", "2023-06-01")
            .json(&anthropic_body)
            .send()
            .await
            .expect("send");
        let error = json_of(wrong, 401).await;
        assert_eq!(error["type"], "error");
        assert_eq!(error["error"]["type"], "authentication_error");
        let bearer = client
            .post(&anthropic_url)
            .bearer_auth(KEY)
            .header("anthropic-version", "2023-06-01")
            .json(&anthropic_body)
            .send()
            .await
            .expect("send");
        assert_eq!(bearer.status().as_u16(), 401);
        let no_version = client
            .post(&anthropic_url)
            .header("x-api-key", KEY)
            .json(&anthropic_body)
            .send()
            .await
            .expect("send");
        let error = json_of(no_version, 400).await;
        assert_eq!(error["error"]["type"], "invalid_request_error");

        let protocols: Vec<Protocol> = provider
            .requests()
            .iter()
            .map(|request| request.protocol)
            .collect();
        assert_eq!(
            protocols,
            [
                Protocol::OpenAi,
                Protocol::OpenAi,
                Protocol::OpenAi,
                Protocol::Anthropic,
                Protocol::Anthropic,
                Protocol::Anthropic
            ]
        );
    }

    #[tokio::test]
    async fn anthropic_requires_max_tokens() {
        let provider = FakeProvider::start(KEY).await;
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let error = json_of(anthropic(&provider, &body).await, 400).await;
        assert_eq!(error["type"], "error");
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert!(error["error"]["message"]
            .as_str()
            .expect("message")
            .contains("max_tokens"));
        assert_eq!(provider.requests().len(), 1);
    }

    #[tokio::test]
    async fn a_scripted_rate_limit_has_retry_after_and_the_next_request_succeeds() {
        let provider = FakeProvider::start(KEY).await;
        provider.script(
            "limited",
            vec![Reply::Status {
                status: 429,
                retry_after: Some(7),
            }],
        );
        let body = json!({"model": "limited", "messages": [{"role": "user", "content": "hi"}]});
        let other = json!({"model": "free", "messages": [{"role": "user", "content": "hi"}]});

        // Other models keep the default reply.
        assert_eq!(openai(&provider, &other).await.status().as_u16(), 200);
        let limited = openai(&provider, &body).await;
        assert_eq!(limited.headers()["retry-after"], "7");
        let error = json_of(limited, 429).await;
        assert_eq!(error["error"]["code"], "rate_limit_exceeded");
        let answer = json_of(openai(&provider, &body).await, 200).await;
        assert_eq!(answer["choices"][0]["message"]["content"], "echo: hi");

        provider.script(
            "limited",
            vec![
                Reply::Status {
                    status: 429,
                    retry_after: Some(3),
                },
                Reply::Status {
                    status: 529,
                    retry_after: None,
                },
                Reply::Status {
                    status: 500,
                    retry_after: None,
                },
            ],
        );
        let body =
            json!({"model": "limited", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        let limited = anthropic(&provider, &body).await;
        assert_eq!(limited.headers()["retry-after"], "3");
        assert_eq!(json_of(limited, 429).await["error"]["type"], "rate_limit_error");
        let overloaded = anthropic(&provider, &body).await;
        assert!(overloaded.headers().get("retry-after").is_none());
        assert_eq!(
            json_of(overloaded, 529).await["error"]["type"],
            "overloaded_error"
        );
        assert_eq!(
            json_of(anthropic(&provider, &body).await, 500).await["error"]["type"],
            "api_error"
        );
        let answer = json_of(anthropic(&provider, &body).await, 200).await;
        assert_eq!(answer["content"][0]["text"], "echo: hi");
    }

    fn weather_calls() -> Vec<(String, Value)> {
        vec![
            (
                "get_weather".to_string(),
                json!({"city": "Paris", "units": "celsius"}),
            ),
            ("get_time".to_string(), json!({"zone": "Europe/Paris"})),
        ]
    }

    #[tokio::test]
    async fn openai_tool_calls_whole_and_streamed() {
        let provider = FakeProvider::start(KEY).await;
        let tool_calls = Reply::ToolCalls {
            text: String::new(),
            calls: weather_calls(),
        };
        provider.script("m", vec![tool_calls.clone(), tool_calls]);
        let mut body = json!({
            "model": "m",
            "messages": [{"role": "user", "content": "weather and time in Paris?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        });

        let answer = json_of(openai(&provider, &body).await, 200).await;
        let choice = &answer["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert!(choice["message"]["content"].is_null());
        let calls = choice["message"]["tool_calls"].as_array().expect("tool calls");
        assert_eq!(calls.len(), 2);
        for (call, (name, arguments)) in calls.iter().zip(weather_calls()) {
            assert_eq!(call["type"], "function");
            assert!(call["id"].as_str().expect("id").starts_with("call_"));
            assert_eq!(call["function"]["name"], name.as_str());
            let sent: Value =
                serde_json::from_str(call["function"]["arguments"].as_str().expect("a JSON string"))
                    .expect("arguments parse");
            assert_eq!(sent, arguments);
        }
        assert_eq!(
            answer["usage"]["completion_tokens"],
            counted_output_tokens("", &weather_calls())
        );

        body["stream"] = json!(true);
        let chunks = openai_chunks(&events_of(openai(&provider, &body).await).await);
        assert!(chunks
            .iter()
            .all(|chunk| chunk["object"] == "chat.completion.chunk"));
        let mut names = vec![String::new(); 2];
        let mut arguments = vec![String::new(); 2];
        let mut fragments = [0, 0];
        for chunk in &chunks {
            let Some(calls) = chunk["choices"][0]["delta"]["tool_calls"].as_array() else {
                continue;
            };
            for call in calls {
                let index = call["index"].as_u64().expect("index") as usize;
                if let Some(name) = call["function"]["name"].as_str() {
                    assert_eq!(call["type"], "function");
                    assert!(call["id"].is_string());
                    names[index] = name.to_string();
                }
                if let Some(fragment) = call["function"]["arguments"]
                    .as_str()
                    .filter(|text| !text.is_empty())
                {
                    arguments[index].push_str(fragment);
                    fragments[index] += 1;
                }
            }
        }
        assert!(fragments.iter().all(|count| *count >= 2), "{fragments:?}");
        for (index, (name, expected)) in weather_calls().into_iter().enumerate() {
            assert_eq!(names[index], name);
            let parsed: Value = serde_json::from_str(&arguments[index]).expect("joined fragments parse");
            assert_eq!(parsed, expected);
        }
        assert_eq!(
            chunks.last().expect("chunks")["choices"][0]["finish_reason"],
            "tool_calls"
        );
    }

    #[tokio::test]
    async fn anthropic_tool_calls_whole_and_streamed() {
        let provider = FakeProvider::start(KEY).await;
        let tool_calls = Reply::ToolCalls {
            text: "Let me look.".to_string(),
            calls: weather_calls(),
        };
        provider.script("m", vec![tool_calls.clone(), tool_calls]);
        let mut body = json!({
            "model": "m",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "weather and time in Paris?"}],
            "tools": [{"name": "get_weather", "description": "The weather", "input_schema": {"type": "object"}}],
        });

        let answer = json_of(anthropic(&provider, &body).await, 200).await;
        assert_eq!(answer["stop_reason"], "tool_use");
        let content = answer["content"].as_array().expect("content");
        assert_eq!(content.len(), 3);
        assert_eq!(content[0], json!({"type": "text", "text": "Let me look."}));
        for (block, (name, input)) in content[1..].iter().zip(weather_calls()) {
            assert_eq!(block["type"], "tool_use");
            assert!(block["id"].as_str().expect("id").starts_with("toolu_"));
            assert_eq!(block["name"], name.as_str());
            assert_eq!(block["input"], input);
        }
        assert_eq!(
            answer["usage"]["output_tokens"],
            counted_output_tokens("Let me look.", &weather_calls())
        );

        body["stream"] = json!(true);
        let events = anthropic_events(&events_of(anthropic(&provider, &body).await).await);
        let mut text = String::new();
        let mut inputs = vec![String::new(); 3];
        let mut fragments = [0; 3];
        for event in &events {
            if event["type"] == "content_block_start" && event["content_block"]["type"] == "tool_use" {
                assert_eq!(event["content_block"]["input"], json!({}));
            }
            if event["type"] != "content_block_delta" {
                continue;
            }
            let index = event["index"].as_u64().expect("index") as usize;
            match event["delta"]["type"].as_str() {
                Some("text_delta") => text.push_str(event["delta"]["text"].as_str().expect("text")),
                Some("input_json_delta") => {
                    inputs[index].push_str(event["delta"]["partial_json"].as_str().expect("partial json"));
                    fragments[index] += 1;
                }
                other => panic!("unexpected delta {other:?}"),
            }
        }
        assert_eq!(text, "Let me look.");
        assert!(fragments[1..].iter().all(|count| *count >= 2), "{fragments:?}");
        for (index, (_, expected)) in weather_calls().into_iter().enumerate() {
            let parsed: Value = serde_json::from_str(&inputs[index + 1]).expect("joined fragments parse");
            assert_eq!(parsed, expected);
        }
        let message_delta = events
            .iter()
            .find(|event| event["type"] == "message_delta")
            .expect("message_delta");
        assert_eq!(message_delta["delta"]["stop_reason"], "tool_use");
    }

    #[tokio::test]
    async fn openai_stream_chunks_concatenate_to_the_text_and_usage_arrives() {
        let provider = FakeProvider::start(KEY).await;
        let mut body = json!({
            "model": "m",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "the quick  brown fox"}],
        });
        let chunks = openai_chunks(&events_of(openai(&provider, &body).await).await);

        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let contents: Vec<&str> = chunks
            .iter()
            .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
            .filter(|content| !content.is_empty())
            .collect();
        assert_eq!(contents, ["echo:", " the", " quick", "  brown", " fox"]);
        assert_eq!(contents.concat(), "echo: the quick  brown fox");
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert!(finish["usage"].is_null());
        let usage_chunk = chunks.last().expect("chunks");
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(usage_chunk["usage"]["prompt_tokens"], 4);
        assert_eq!(usage_chunk["usage"]["completion_tokens"], 5);
        assert_eq!(usage_chunk["usage"]["total_tokens"], 9);
        assert_eq!(usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

        // Without include_usage no chunk carries usage.
        body["stream_options"] = json!({});
        let chunks = openai_chunks(&events_of(openai(&provider, &body).await).await);
        assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));
        assert_eq!(
            chunks.last().expect("chunks")["choices"][0]["finish_reason"],
            "stop"
        );
    }

    #[tokio::test]
    async fn anthropic_stream_deltas_concatenate_to_the_text_and_usage_arrives() {
        let provider = FakeProvider::start(KEY).await;
        let body = json!({
            "model": "m",
            "max_tokens": 100,
            "stream": true,
            "system": "Echo.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "the quick brown fox"}]}],
        });
        let events = anthropic_events(&events_of(anthropic(&provider, &body).await).await);

        assert_eq!(
            event_types(&events),
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        let start = &events[0]["message"];
        assert_eq!(start["model"], "m");
        assert_eq!(start["usage"]["input_tokens"], 5);
        assert_eq!(start["usage"]["output_tokens"], 1);
        assert_eq!(start["usage"]["cache_read_input_tokens"], 0);
        assert_eq!(events[1]["content_block"], json!({"type": "text", "text": ""}));
        let text: String = events
            .iter()
            .filter(|event| event["type"] == "content_block_delta")
            .map(|event| {
                assert_eq!(event["delta"]["type"], "text_delta");
                event["delta"]["text"].as_str().expect("text")
            })
            .collect();
        assert_eq!(text, "echo: the quick brown fox");
        assert_eq!(events[9]["delta"]["stop_reason"], "end_turn");
        assert_eq!(events[9]["usage"]["output_tokens"], 5);
    }

    /// The bytes a streamed answer delivered before it failed; panics if it did not fail.
    async fn read_until_cut(response: reqwest::Response) -> String {
        assert_eq!(response.status().as_u16(), 200);
        let mut body = response.bytes_stream();
        let mut received = Vec::new();
        while let Some(next) = body.next().await {
            match next {
                Ok(bytes) => received.extend_from_slice(&bytes),
                Err(_) => return String::from_utf8(received).expect("UTF-8"),
            }
        }
        panic!("the stream ended cleanly: {}", String::from_utf8_lossy(&received));
    }

    #[tokio::test]
    async fn a_cut_stream_fails_on_the_client_after_its_first_chunks() {
        let provider = FakeProvider::start(KEY).await;
        provider.script(
            "m",
            vec![Reply::CutAfter { chunks: 2 }, Reply::CutAfter { chunks: 2 }],
        );
        let mut body = json!({
            "model": "m",
            "max_tokens": 100,
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "one two three"}],
        });

        let received = read_until_cut(openai(&provider, &body).await).await;
        assert!(received.contains(r#""content":"echo:""#), "{received}");
        assert!(received.contains(r#""content":" one""#), "{received}");
        assert!(!received.contains(" two"), "{received}");
        assert!(!received.contains("[DONE]"), "{received}");

        let received = read_until_cut(anthropic(&provider, &body).await).await;
        assert!(received.contains(r#""text":" one""#), "{received}");
        assert!(!received.contains(" two"), "{received}");
        assert!(!received.contains("message_stop"), "{received}");

        // Not streaming, a cut is a server error.
        provider.script("m", vec![Reply::CutAfter { chunks: 2 }]);
        body["stream"] = json!(false);
        let error = json_of(openai(&provider, &body).await, 500).await;
        assert_eq!(error["error"]["type"], "server_error");
    }

    #[tokio::test]
    async fn latency_and_slow_replies_delay_the_answer() {
        let provider = FakeProvider::start(KEY).await;
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});

        provider.set_latency(Duration::from_millis(150));
        let started = Instant::now();
        assert_eq!(openai(&provider, &body).await.status().as_u16(), 200);
        assert!(started.elapsed() >= Duration::from_millis(150));
        provider.set_latency(Duration::ZERO);

        provider.script("m", vec![Reply::Slow(Duration::from_secs(5))]);
        let timed_out = reqwest::Client::new()
            .post(format!("{}/chat/completions", provider.openai_base_url()))
            .bearer_auth(KEY)
            .json(&body)
            .timeout(Duration::from_millis(200))
            .send()
            .await
            .expect_err("the slow reply outlasts the timeout");
        assert!(timed_out.is_timeout());
        // The next request is answered at once.
        let started = Instant::now();
        assert_eq!(openai(&provider, &body).await.status().as_u16(), 200);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn recording_can_be_turned_off() {
        let provider = FakeProvider::start(KEY).await;
        provider.set_recording(false);
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(openai(&provider, &body).await.status().as_u16(), 200);
        assert!(provider.requests().is_empty());
    }
}
