//! The one wire format of the live feed: an event as a CloudEvents 1.0 JSON message.
//!
//! The NATS relay, Server-Sent Events and WebSocket subscribers all receive exactly this
//! document, so a consumer can move between them without a second parser.
//!
//! ```json
//! {
//!   "specversion": "1.0",
//!   "id": "prompt-0190f5c2-…-3",
//!   "source": "/aipm/tenants/acme",
//!   "type": "aipm.prompt.PromptVersionPublished",
//!   "subject": "prompt/0190f5c2-…",
//!   "time": "2026-11-26T12:00:00.123456Z",
//!   "datacontenttype": "application/json",
//!   "data": { "version": 3, "template": "…" },
//!   "aipmtenant": "acme",
//!   "aipmaggregatetype": "prompt",
//!   "aipmaggregateid": "0190f5c2-…",
//!   "aipmaggregateversion": 3,
//!   "aipmeventversion": "1.0.0",
//!   "aipmcursor": "8812-40211",
//!   "aipmactor": "ci-deployer",
//!   "aipmactorkeyid": "0190…",
//!   "aipmrequestid": "…"
//! }
//! ```
//!
//! Extension names are lower-case letters only, as CloudEvents 1.0 requires.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::value::RawValue;

use eventlog::StoredEvent;

/// `specversion` of every message.
pub const SPEC_VERSION: &str = "1.0";

/// An event's identity: the same for every delivery of it, whichever the channel. It is
/// the CloudEvents `id` and the JetStream `Nats-Msg-Id`, so a re-published event is
/// recognised as a duplicate.
pub fn event_id(event: &StoredEvent) -> String {
    identity(&event.aggregate_type, &event.aggregate_id, event.sequence)
}

/// The `id` of the event number `sequence` of an aggregate: `<type>-<id>-<sequence>`.
pub fn identity(aggregate_type: &str, aggregate_id: &str, sequence: i64) -> String {
    format!("{aggregate_type}-{aggregate_id}-{sequence}")
}

/// `<prefix>.<tenant>.<aggregate_type>.<aggregate_id>.<event_type>`, with any character NATS
/// gives a meaning to (`.`, `*`, `>`, whitespace) in a token replaced by `_`.
pub fn nats_subject(prefix: &str, event: &StoredEvent) -> String {
    let mut subject = String::with_capacity(
        prefix.len()
            + event.tenant_id.len()
            + event.aggregate_type.len()
            + event.aggregate_id.len()
            + event.event_type.len()
            + 4,
    );
    subject.push_str(prefix);
    for token in [
        &event.tenant_id,
        &event.aggregate_type,
        &event.aggregate_id,
        &event.event_type,
    ] {
        subject.push('.');
        push_subject_token(&mut subject, token);
    }
    subject
}

/// `text` as one token of a NATS subject: any character NATS gives a meaning to (`.`, `*`,
/// `>`, whitespace) replaced by `_`.
pub fn subject_token(text: &str) -> String {
    let mut token = String::with_capacity(text.len());
    push_subject_token(&mut token, text);
    token
}

fn push_subject_token(out: &mut String, text: &str) {
    out.extend(text.chars().map(|c| match c {
        '.' | '*' | '>' => '_',
        c if c.is_whitespace() => '_',
        c => c,
    }));
}

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: String,
    source: String,
    #[serde(rename = "type")]
    event_type: String,
    subject: String,
    time: String,
    datacontenttype: &'static str,
    data: &'a RawValue,
    aipmtenant: &'a str,
    aipmaggregatetype: &'a str,
    aipmaggregateid: &'a str,
    aipmaggregateversion: i64,
    aipmeventversion: &'a str,
    aipmcursor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    aipmactor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aipmactorkeyid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aipmrequestid: Option<String>,
}

/// The CloudEvents JSON document of `event`.
///
/// `data` is the event's own fields: the stored payload is the event enum as serde writes
/// it (`{"PromptTagged": {...}}`, or `"PromptArchived"` for an event without fields), and
/// the variant name is already the `type`.
pub fn to_json(event: &StoredEvent) -> Result<String, serde_json::Error> {
    let empty = RawValue::from_string("{}".to_string())?;
    let wrapped: Option<HashMap<&str, &RawValue>> = serde_json::from_str(&event.payload).ok();
    let data: &RawValue = match wrapped
        .as_ref()
        .and_then(|variants| variants.get(event.event_type.as_str()))
    {
        Some(fields) => fields,
        None if event.payload.trim_start().starts_with('"') => &empty,
        None => serde_json::from_str(&event.payload)?,
    };
    let metadata: HashMap<&str, String> = serde_json::from_str(&event.metadata).unwrap_or_default();
    let document = CloudEvent {
        specversion: SPEC_VERSION,
        id: event_id(event),
        source: format!("/aipm/tenants/{}", event.tenant_id),
        event_type: format!("aipm.{}.{}", event.aggregate_type, event.event_type),
        subject: format!("{}/{}", event.aggregate_type, event.aggregate_id),
        time: event
            .recorded_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        datacontenttype: "application/json",
        data,
        aipmtenant: &event.tenant_id,
        aipmaggregatetype: &event.aggregate_type,
        aipmaggregateid: &event.aggregate_id,
        aipmaggregateversion: event.sequence,
        aipmeventversion: &event.event_version,
        aipmcursor: event.cursor.to_string(),
        aipmactor: metadata.get("actor_name").cloned(),
        aipmactorkeyid: metadata.get("actor_key_id").cloned(),
        aipmrequestid: metadata.get("request_id").cloned(),
    };
    serde_json::to_string(&document)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use domain::position::GlobalCursor;
    use serde_json::{json, Value};

    use super::*;

    fn stored(event_type: &str, payload: &str) -> StoredEvent {
        StoredEvent {
            cursor: GlobalCursor::new(812, 40),
            aggregate_type: "prompt".into(),
            aggregate_id: "p-1".into(),
            sequence: 3,
            event_type: event_type.into(),
            event_version: "1.0.0".into(),
            payload: payload.into(),
            metadata: r#"{"actor_name":"ci","actor_key_id":"k-1","request_id":"r-9","tenant":"acme"}"#.into(),
            tenant_id: "acme".into(),
            recorded_at: chrono::Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap(),
        }
    }

    #[test]
    fn a_cloud_event_carries_the_fields_of_the_variant_and_the_log_position() {
        let json = to_json(&stored("PromptTagged", r#"{"PromptTagged":{"tag":"beta"}}"#)).unwrap();
        let document: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(document["specversion"], "1.0");
        assert_eq!(document["id"], "prompt-p-1-3");
        assert_eq!(document["type"], "aipm.prompt.PromptTagged");
        assert_eq!(document["source"], "/aipm/tenants/acme");
        assert_eq!(document["subject"], "prompt/p-1");
        assert_eq!(document["time"], "2026-11-26T12:00:00.000000Z");
        assert_eq!(document["data"], json!({ "tag": "beta" }));
        assert_eq!(document["aipmcursor"], "812-40");
        assert_eq!(document["aipmaggregateversion"], 3);
        assert_eq!(document["aipmactor"], "ci");
        assert_eq!(document["aipmrequestid"], "r-9");
    }

    #[test]
    fn an_event_without_fields_has_empty_data() {
        let json = to_json(&stored("PromptArchived", r#""PromptArchived""#)).unwrap();
        let document: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(document["data"], json!({}));
    }

    #[test]
    fn subject_tokens_cannot_split_or_wildcard() {
        let mut event = stored("PromptTagged", "{}");
        event.aggregate_id = "a.b*c>d e".into();
        assert_eq!(
            nats_subject("aipm.events", &event),
            "aipm.events.acme.prompt.a_b_c_d_e.PromptTagged"
        );
    }
}
