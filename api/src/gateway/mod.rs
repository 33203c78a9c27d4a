//! Calling models: one chat sent to a model's provider, retried on a rate limit or a server
//! error (waiting what `Retry-After` asks, else backing off), and sent to the model's
//! fallback when the model keeps failing. Every attempt is reported, whatever the outcome.
//!
//! The secret is read from the provider's `credential_ref` at each call and never kept. One
//! HTTP client serves every call, so each provider's connections are pooled and reused.

pub mod protocol;
pub mod sse;

use std::time::{Duration, Instant};

use domain::chat::ChatAnswer;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

pub use protocol::{ChatRequest, Protocol};
use sse::SseParser;

use crate::settings::GatewaySettings;

/// A model the gateway may call, with its provider: what a call needs to reach it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The model's reference (`provider/model_id`): how usage names it.
    pub reference: String,
    /// The provider's own id of the model.
    pub model_id: String,
    pub protocol: Protocol,
    pub base_url: String,
    pub credential_ref: String,
    /// Why it is not called at all (a disabled provider, an exhausted budget): recorded as
    /// its one attempt.
    pub skip: Option<Skip>,
}

/// Why an endpoint of a chain is passed over without a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub outcome: &'static str,
    pub reason: String,
}

/// One try of one model, as the usage record and the answer show it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    /// The model tried, by reference.
    pub model: String,
    /// `ok`, or what went wrong: `rate_limited`, `server_error`, `timeout`,
    /// `connection_failed`, `refused` (another 4xx), `bad_answer`, `cut` (a stream that
    /// ended early), `cancelled` (the client left), `credential_unavailable`, or for a model
    /// passed over, `provider_disabled`, `model_inactive`, `budget_exhausted`.
    pub outcome: String,
    /// The provider's HTTP status, when it answered.
    pub http_status: Option<u16>,
    /// From sending the request to the end of the answer (0 for a model passed over).
    pub latency_ms: u32,
    /// What the provider's `Retry-After` asked for.
    pub retry_after_ms: Option<u64>,
    /// How long the gateway waited before the next try.
    pub waited_ms: Option<u64>,
    /// What went wrong, in a few words.
    pub error: Option<String>,
}

/// The outcome of a call: every attempt, and the answer when one came (whole, or for a
/// stream that was cut or left, the part received).
#[derive(Debug, Clone)]
pub struct CallReport {
    pub attempts: Vec<Attempt>,
    /// Which endpoint of the chain answered (for a cut stream: the one that was streaming).
    pub answered_by: Option<usize>,
    pub answer: ChatAnswer,
    /// `ok`, or the outcome of the last attempt.
    pub status: String,
    /// The answering attempt's own latency: the provider's share of the call.
    pub provider_latency_ms: u32,
}

impl CallReport {
    pub fn succeeded(&self) -> bool {
        self.status == "ok"
    }

    /// The last attempt's error, for a failed call.
    pub fn error(&self) -> Option<&str> {
        self.attempts.last().and_then(|a| a.error.as_deref())
    }
}

/// Why one attempt failed.
struct Failure {
    outcome: &'static str,
    http_status: Option<u16>,
    retry_after: Option<Duration>,
    error: String,
    /// Worth trying the same model again.
    retryable: bool,
}

impl Failure {
    fn new(outcome: &'static str, error: impl Into<String>, retryable: bool) -> Self {
        Self {
            outcome,
            http_status: None,
            retry_after: None,
            error: error.into(),
            retryable,
        }
    }
}

/// How a stream attempt ended when it did not end in a whole answer.
enum StreamEnd {
    /// Nothing was passed on to the client: the attempt can be retried like any other.
    Failed(Failure),
    /// Part of the answer was passed on: the call ends here with what was received.
    Partial(Failure, ChatAnswer),
}

/// Calls models. Cloning shares the connection pools.
#[derive(Clone)]
pub struct Gateway {
    client: reqwest::Client,
    settings: GatewaySettings,
}

/// Longest error body read from a provider, in bytes; the rest is not worth keeping.
const MAX_ERROR_BODY: usize = 2_000;
/// Longest whole answer read from a provider.
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

impl Gateway {
    pub fn new(settings: GatewaySettings) -> reqwest::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { client, settings })
    }

    /// Sends `request` to the first endpoint of `chain` and, when it keeps failing, to the
    /// next ones (the model's fallbacks) in turn.
    pub async fn complete(&self, chain: &[Endpoint], request: &ChatRequest) -> CallReport {
        self.call(chain, request, None).await
    }

    /// Like [`Self::complete`], streaming: the answer's text goes to `text` as it arrives.
    /// Once some text has gone, a failure ends the call with what was received (`cut`), and
    /// a closed `text` (the client left) ends it as `cancelled`.
    pub async fn stream(
        &self,
        chain: &[Endpoint],
        request: &ChatRequest,
        text: mpsc::Sender<String>,
    ) -> CallReport {
        self.call(chain, request, Some(text)).await
    }

    async fn call(
        &self,
        chain: &[Endpoint],
        request: &ChatRequest,
        text: Option<mpsc::Sender<String>>,
    ) -> CallReport {
        let mut attempts = Vec::new();
        for (index, endpoint) in chain.iter().enumerate() {
            if let Some(skip) = &endpoint.skip {
                attempts.push(Attempt {
                    model: endpoint.reference.clone(),
                    outcome: skip.outcome.to_string(),
                    http_status: None,
                    latency_ms: 0,
                    retry_after_ms: None,
                    waited_ms: None,
                    error: Some(skip.reason.clone()),
                });
                continue;
            }
            let secret = match read_secret(&endpoint.credential_ref).await {
                Ok(secret) => secret,
                Err(error) => {
                    attempts.push(failed_attempt(
                        endpoint,
                        &Failure::new("credential_unavailable", error, false),
                        0,
                    ));
                    continue;
                }
            };
            let body = endpoint
                .protocol
                .body(&endpoint.model_id, request, text.is_some());
            for try_number in 0..=self.settings.retries {
                let started = Instant::now();
                let outcome = match &text {
                    None => self
                        .send(endpoint, &secret, &body)
                        .await
                        .map_err(StreamEnd::Failed),
                    Some(text) => self.send_streaming(endpoint, &secret, &body, text).await,
                };
                let latency_ms = millis(started.elapsed());
                match outcome {
                    Ok(answer) => {
                        attempts.push(Attempt {
                            model: endpoint.reference.clone(),
                            outcome: "ok".into(),
                            http_status: Some(200),
                            latency_ms,
                            retry_after_ms: None,
                            waited_ms: None,
                            error: None,
                        });
                        return CallReport {
                            attempts,
                            answered_by: Some(index),
                            answer,
                            status: "ok".into(),
                            provider_latency_ms: latency_ms,
                        };
                    }
                    Err(StreamEnd::Partial(failure, answer)) => {
                        attempts.push(failed_attempt(endpoint, &failure, latency_ms));
                        return CallReport {
                            attempts,
                            answered_by: Some(index),
                            answer,
                            status: failure.outcome.to_string(),
                            provider_latency_ms: latency_ms,
                        };
                    }
                    Err(StreamEnd::Failed(failure)) => {
                        let mut attempt = failed_attempt(endpoint, &failure, latency_ms);
                        let wait = failure
                            .retry_after
                            .unwrap_or_else(|| self.settings.backoff * 2u32.saturating_pow(try_number));
                        let again = failure.retryable
                            && try_number < self.settings.retries
                            && wait <= self.settings.max_retry_wait;
                        if again {
                            attempt.waited_ms = Some(wait.as_millis() as u64);
                        }
                        attempts.push(attempt);
                        if !again {
                            break;
                        }
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        let status = attempts
            .last()
            .map_or_else(|| "no_model".to_string(), |a| a.outcome.clone());
        CallReport {
            attempts,
            answered_by: None,
            answer: ChatAnswer::default(),
            status,
            provider_latency_ms: 0,
        }
    }

    fn request(&self, endpoint: &Endpoint, secret: &str, body: &Value) -> reqwest::RequestBuilder {
        let mut builder = self
            .client
            .post(endpoint.protocol.url(&endpoint.base_url, &endpoint.model_id))
            .json(body);
        for (name, value) in endpoint.protocol.headers(secret) {
            builder = builder.header(name, value);
        }
        builder
    }

    /// Sends the request and returns the response when its status is a success.
    async fn open(
        &self,
        endpoint: &Endpoint,
        secret: &str,
        body: &Value,
    ) -> Result<reqwest::Response, Failure> {
        let sent =
            tokio::time::timeout(self.settings.timeout, self.request(endpoint, secret, body).send()).await;
        let response = match sent {
            Err(_) => return Err(Failure::new("timeout", "no answer in time", true)),
            Ok(Err(error)) => return Err(Failure::new("connection_failed", error_chain(&error), true)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let text = tokio::time::timeout(self.settings.timeout, read_limited(response, MAX_ERROR_BODY))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        let (outcome, retryable) = match status.as_u16() {
            429 => ("rate_limited", true),
            408 => ("timeout", true),
            code if code >= 500 => ("server_error", true),
            _ => ("refused", false),
        };
        Err(Failure {
            outcome,
            http_status: Some(status.as_u16()),
            retry_after,
            error: format!("{status}: {}", provider_message(&text)),
            retryable,
        })
    }

    async fn send(&self, endpoint: &Endpoint, secret: &str, body: &Value) -> Result<ChatAnswer, Failure> {
        let response = self.open(endpoint, secret, body).await?;
        let bytes =
            match tokio::time::timeout(self.settings.timeout, read_limited(response, MAX_ANSWER_BYTES)).await
            {
                Err(_) => return Err(Failure::new("timeout", "the answer did not finish in time", true)),
                Ok(Err(error)) => return Err(Failure::new("connection_failed", error, true)),
                Ok(Ok(bytes)) => bytes,
            };
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::new("bad_answer", format!("the answer is not JSON: {e}"), false))?;
        endpoint
            .protocol
            .read_answer(&value)
            .map_err(|e| Failure::new("bad_answer", e, false))
    }

    async fn send_streaming(
        &self,
        endpoint: &Endpoint,
        secret: &str,
        body: &Value,
        text: &mpsc::Sender<String>,
    ) -> Result<ChatAnswer, StreamEnd> {
        let mut response = self
            .open(endpoint, secret, body)
            .await
            .map_err(StreamEnd::Failed)?;
        let mut parser = SseParser::default();
        let mut decoder = endpoint.protocol.stream_decoder();
        let mut passed_on = false;
        let end = |failure: Failure, passed_on: bool, answer: ChatAnswer| {
            if passed_on {
                StreamEnd::Partial(failure, answer)
            } else {
                StreamEnd::Failed(failure)
            }
        };
        loop {
            let chunk = match tokio::time::timeout(self.settings.timeout, response.chunk()).await {
                Err(_) => {
                    let failure = Failure::new("timeout", "the stream stalled", true);
                    return Err(end(failure, passed_on, decoder.answer()));
                }
                Ok(Err(error)) => {
                    let failure =
                        Failure::new("cut", format!("the stream broke: {}", error_chain(&error)), true);
                    return Err(end(failure, passed_on, decoder.answer()));
                }
                Ok(Ok(None)) => {
                    if decoder.is_done() {
                        return Ok(decoder.answer());
                    }
                    let failure = Failure::new("cut", "the stream ended before the answer did", true);
                    return Err(end(failure, passed_on, decoder.answer()));
                }
                Ok(Ok(Some(chunk))) => chunk,
            };
            let events = parser
                .push(&chunk)
                .map_err(|e| end(Failure::new("bad_answer", e, false), passed_on, decoder.answer()))?;
            for event in events {
                let piece = decoder
                    .read(&event)
                    .map_err(|e| end(Failure::new("bad_answer", e, false), passed_on, decoder.answer()))?;
                if let Some(piece) = piece {
                    if text.send(piece).await.is_err() {
                        let failure = Failure::new("cancelled", "the client closed the stream", false);
                        return Err(StreamEnd::Partial(failure, decoder.answer()));
                    }
                    passed_on = true;
                }
            }
            if decoder.is_done() {
                return Ok(decoder.answer());
            }
        }
    }
}

fn failed_attempt(endpoint: &Endpoint, failure: &Failure, latency_ms: u32) -> Attempt {
    Attempt {
        model: endpoint.reference.clone(),
        outcome: failure.outcome.to_string(),
        http_status: failure.http_status,
        latency_ms,
        retry_after_ms: failure.retry_after.map(|d| d.as_millis() as u64),
        waited_ms: None,
        error: Some(failure.error.clone()),
    }
}

fn millis(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX)
}

/// The error and its causes, which is where reqwest says what actually happened.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
        if bytes.len() + chunk.len() > limit {
            if limit <= MAX_ERROR_BODY {
                bytes.extend_from_slice(&chunk[..limit - bytes.len()]);
                return Ok(bytes);
            }
            return Err(format!("the answer is larger than {limit} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// The message of a provider's error body (OpenAI's `error.message`, Anthropic's
/// `error.message`), else the body's start.
fn provider_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect())
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(86_400.0)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Reads a secret where `credential_ref` says it lives: `env:VARIABLE` or `file:/path`.
async fn read_secret(credential_ref: &str) -> Result<String, String> {
    let secret = if let Some(variable) = credential_ref.strip_prefix("env:") {
        std::env::var(variable).map_err(|_| format!("the environment variable {variable} is not set"))?
    } else if let Some(path) = credential_ref.strip_prefix("file:") {
        tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("the file {path} cannot be read: {e}"))?
    } else {
        return Err("the credential reference is neither env: nor file:".into());
    };
    let secret = secret.trim().to_string();
    if secret.is_empty() {
        return Err(format!("{credential_ref} is empty"));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(500)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[tokio::test]
    async fn secrets_come_from_the_environment_or_a_file_and_are_never_empty() {
        let path = std::env::temp_dir().join(format!("aipm-secret-{}", std::process::id()));
        std::fs::write(&path, "sk-test\n").unwrap();
        assert_eq!(
            read_secret(&format!("file:{}", path.display())).await.unwrap(),
            "sk-test"
        );
        std::fs::write(&path, "  \n").unwrap();
        assert!(read_secret(&format!("file:{}", path.display())).await.is_err());
        std::fs::remove_file(&path).unwrap();
        assert!(read_secret("env:AIPM_TEST_SURELY_UNSET_VARIABLE")
            .await
            .unwrap_err()
            .contains("not set"));
    }

    #[test]
    fn provider_errors_are_read_from_either_protocol() {
        assert_eq!(
            provider_message(r#"{"error":{"message":"slow down"}}"#),
            "slow down"
        );
        assert_eq!(
            provider_message(r#"{"type":"error","error":{"type":"x","message":"busy"}}"#),
            "busy"
        );
        assert_eq!(provider_message("oops"), "oops");
    }
}
