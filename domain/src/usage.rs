//! Usage records: one call to a model, as a client reports it, and what it cost.
//!
//! Usage is high-volume telemetry, not a stream of aggregate commands: records are
//! validated one by one here (a bad record never costs the good ones their place) and
//! priced with the model's price in force at the record's own timestamp. Money is exact:
//! `rust_decimal` end to end.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::model::{Price, PricePeriod};
use crate::text::{InvalidText, Slug};

/// Most records one request may carry.
pub const MAX_RECORDS: usize = 10_000;
/// Longest client-chosen record id, in characters.
const MAX_ID_CHARS: usize = 200;
/// Longest free-text field (feature, subject, variant, status, metric name).
const MAX_TEXT_CHARS: usize = 200;
/// Most metrics on one record.
const MAX_METRICS: usize = 32;
/// How far in the future a record's timestamp may be (clocks differ).
const MAX_CLOCK_SKEW: Duration = Duration::hours(24);
/// Tokens per price unit: prices are per million tokens.
const TOKENS_PER_UNIT: i64 = 1_000_000;

/// One valid usage record.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    /// Chosen by the client; a record sent again with the same id is counted once.
    pub id: String,
    pub timestamp: DateTime<Utc>,
    /// A model reference, `provider/model_id`.
    pub model: String,
    pub prompt_id: Option<Uuid>,
    pub prompt_version: Option<u32>,
    /// A label to resolve to a version at ingestion (when no version is given).
    pub prompt_label: Option<String>,
    pub experiment_id: Option<Uuid>,
    pub variant: Option<String>,
    pub feature: Option<String>,
    pub subject: Option<String>,
    /// All input tokens, the cached ones included.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The part of `input_tokens` read from the provider's cache.
    pub cached_input_tokens: u64,
    pub latency_ms: Option<u32>,
    /// `ok`, or an error kind (`timeout`, `rate_limited`, …).
    pub status: String,
    pub metrics: BTreeMap<String, f64>,
}

/// What a record cost: exact, in the price's currency. Stored (in a conversation's
/// replies) with the amount as a decimal string, like every amount of money.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
}

/// Reads one record from JSON; every invalid field is reported (`field` names are the
/// record's own: `input_tokens`, `metrics.rating`).
pub fn parse_record(value: &Value, now: DateTime<Utc>) -> Result<UsageRecord, Vec<InvalidText>> {
    let mut errors = Vec::new();
    let Some(fields) = value.as_object() else {
        return Err(vec![InvalidText::new("record", "must be a JSON object")]);
    };
    const KNOWN: [&str; 16] = [
        "id",
        "timestamp",
        "model",
        "prompt_id",
        "prompt_version",
        "prompt_label",
        "experiment_id",
        "variant",
        "feature",
        "subject",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "latency_ms",
        "status",
        "metrics",
    ];
    for name in fields.keys() {
        if !KNOWN.contains(&name.as_str()) {
            errors.push(InvalidText::new(
                "record",
                format!("has an unknown field {name:?}"),
            ));
        }
    }
    let id = take(&mut errors, required_text(fields.get("id"), "id", MAX_ID_CHARS));
    let timestamp = take(&mut errors, timestamp(fields.get("timestamp"), now));
    let model = take(&mut errors, model_reference(fields.get("model")));
    let prompt_id = take(&mut errors, optional_uuid(fields.get("prompt_id"), "prompt_id"));
    let prompt_version = take(
        &mut errors,
        optional_count(fields.get("prompt_version"), "prompt_version", u32::MAX as u64),
    );
    let prompt_label = take(
        &mut errors,
        optional_slug(fields.get("prompt_label"), "prompt_label"),
    );
    let experiment_id = take(
        &mut errors,
        optional_uuid(fields.get("experiment_id"), "experiment_id"),
    );
    let variant = take(&mut errors, optional_text(fields.get("variant"), "variant"));
    let feature = take(&mut errors, optional_slug(fields.get("feature"), "feature"));
    let subject = take(&mut errors, optional_text(fields.get("subject"), "subject"));
    let input_tokens = take(&mut errors, tokens(fields.get("input_tokens"), "input_tokens"));
    let output_tokens = take(&mut errors, tokens(fields.get("output_tokens"), "output_tokens"));
    let cached_input_tokens = take(
        &mut errors,
        tokens(fields.get("cached_input_tokens"), "cached_input_tokens"),
    );
    let latency_ms = take(
        &mut errors,
        optional_count(fields.get("latency_ms"), "latency_ms", u32::MAX as u64),
    );
    let status = take(&mut errors, status(fields.get("status")));
    let metrics = take(&mut errors, metrics(fields.get("metrics")));
    if let (Some(Some(_)), Some(Some(_))) = (&prompt_version, &prompt_label) {
        errors.push(InvalidText::new(
            "prompt_label",
            "give prompt_version or prompt_label, not both",
        ));
    }
    if prompt_id.as_ref().is_some_and(Option::is_none)
        && (prompt_version.as_ref().is_some_and(Option::is_some)
            || prompt_label.as_ref().is_some_and(Option::is_some))
    {
        errors.push(InvalidText::new(
            "prompt_id",
            "is required with prompt_version or prompt_label",
        ));
    }
    if let (Some(input), Some(cached)) = (input_tokens, cached_input_tokens) {
        if cached > input {
            errors.push(InvalidText::new(
                "cached_input_tokens",
                "must not exceed input_tokens",
            ));
        }
    }
    if experiment_id.as_ref().is_some_and(Option::is_some) != variant.as_ref().is_some_and(Option::is_some) {
        errors.push(InvalidText::new(
            "variant",
            "experiment_id and variant go together",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // Every field parsed (no error was recorded), so each `take` gave a value.
    match (
        id,
        timestamp,
        model,
        prompt_id,
        prompt_version,
        prompt_label,
        experiment_id,
        variant,
        feature,
        subject,
        input_tokens,
        output_tokens,
        cached_input_tokens,
        latency_ms,
        status,
        metrics,
    ) {
        (
            Some(id),
            Some(timestamp),
            Some(model),
            Some(prompt_id),
            Some(prompt_version),
            Some(prompt_label),
            Some(experiment_id),
            Some(variant),
            Some(feature),
            Some(subject),
            Some(input_tokens),
            Some(output_tokens),
            Some(cached_input_tokens),
            Some(latency_ms),
            Some(status),
            Some(metrics),
        ) => Ok(UsageRecord {
            id,
            timestamp,
            model,
            prompt_id,
            prompt_version: prompt_version.map(|v| v as u32),
            prompt_label,
            experiment_id,
            variant,
            feature,
            subject,
            input_tokens,
            output_tokens,
            cached_input_tokens,
            latency_ms: latency_ms.map(|v| v as u32),
            status,
            metrics,
        }),
        _ => Err(vec![InvalidText::new("record", "is invalid")]),
    }
}

/// `result`'s value, or `None` with its error added to `errors`.
fn take<T>(errors: &mut Vec<InvalidText>, result: Result<T, InvalidText>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            errors.push(error);
            None
        }
    }
}

/// The price period in force at `at` among `periods` (in order of their start).
pub fn price_at(periods: &[PricePeriod], at: DateTime<Utc>) -> Option<&Price> {
    periods
        .iter()
        .rev()
        .find(|period| period.effective_from <= at)
        .map(|period| &period.price)
}

/// What `record` cost at `price`: uncached input, cached input (at the cached price when
/// the provider has one, else the input price) and output, per million tokens. Exact.
pub fn cost(record: &UsageRecord, price: &Price) -> Cost {
    cost_of_tokens(
        record.input_tokens,
        record.cached_input_tokens,
        record.output_tokens,
        price,
    )
}

/// What `input` tokens (of which `cached` were read from the cache) and `output` tokens
/// cost at `price`; see [`cost`].
pub fn cost_of_tokens(input: u64, cached: u64, output: u64, price: &Price) -> Cost {
    let per_token =
        |tokens: u64, per_mtok: Decimal| Decimal::from(tokens) * per_mtok / Decimal::from(TOKENS_PER_UNIT);
    let input_price = price.input_per_mtok.value();
    let cached_price = price
        .cached_input_per_mtok
        .map_or(input_price, |amount| amount.value());
    let amount = per_token(input.saturating_sub(cached), input_price)
        + per_token(cached, cached_price)
        + per_token(output, price.output_per_mtok.value());
    Cost {
        amount: amount.normalize(),
        currency: price.currency.as_ref().to_string(),
    }
}

fn required_text(value: Option<&Value>, field: &'static str, max: usize) -> Result<String, InvalidText> {
    match value {
        Some(Value::String(text))
            if !text.is_empty() && text.chars().count() <= max && !text.contains('\0') =>
        {
            Ok(text.clone())
        }
        Some(_) => Err(InvalidText::new(
            field,
            format!("must be a string of 1 to {max} characters"),
        )),
        None => Err(InvalidText::new(field, "is required")),
    }
}

fn optional_text(value: Option<&Value>, field: &'static str) -> Result<Option<String>, InvalidText> {
    match value {
        None | Some(Value::Null) => Ok(None),
        value => required_text(value, field, MAX_TEXT_CHARS).map(Some),
    }
}

fn optional_slug(value: Option<&Value>, field: &'static str) -> Result<Option<String>, InvalidText> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Slug::parse(field, text).map(|slug| Some(slug.to_string())),
        Some(_) => Err(InvalidText::new(field, "must be a string")),
    }
}

fn optional_uuid(value: Option<&Value>, field: &'static str) -> Result<Option<Uuid>, InvalidText> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => text
            .parse()
            .map(Some)
            .map_err(|_| InvalidText::new(field, "must be an id (UUID)")),
        Some(_) => Err(InvalidText::new(field, "must be an id (UUID)")),
    }
}

fn optional_count(value: Option<&Value>, field: &'static str, max: u64) -> Result<Option<u64>, InvalidText> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64().or_else(|| whole(value)) {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(InvalidText::new(
                field,
                format!("must be a whole number from 0 to {max}"),
            )),
        },
    }
}

/// `2.0` is the integer 2 (JSON has one kind of number).
fn whole(value: &Value) -> Option<u64> {
    value
        .as_f64()
        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 9.0e15)
        .map(|f| f as u64)
}

fn tokens(value: Option<&Value>, field: &'static str) -> Result<u64, InvalidText> {
    // Up to a trillion tokens a call: beyond that a figure is a mistake, and sums of many
    // records stay far inside the database's bigint.
    optional_count(value, field, 1_000_000_000_000).map(Option::unwrap_or_default)
}

fn timestamp(value: Option<&Value>, now: DateTime<Utc>) -> Result<DateTime<Utc>, InvalidText> {
    let Some(Value::String(text)) = value else {
        return Err(InvalidText::new(
            "timestamp",
            "is required: an RFC 3339 date-time",
        ));
    };
    let at = DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| InvalidText::new("timestamp", "must be an RFC 3339 date-time"))?;
    // 2000-01-01T00:00:00Z: earlier timestamps are mistakes.
    let too_early = DateTime::from_timestamp(946_684_800, 0).is_some_and(|earliest| at < earliest);
    if too_early || at > now + MAX_CLOCK_SKEW {
        return Err(InvalidText::new(
            "timestamp",
            "must be after 2000 and at most a day ahead of the server's clock",
        ));
    }
    Ok(at)
}

fn model_reference(value: Option<&Value>) -> Result<String, InvalidText> {
    let text = required_text(value, "model", MAX_TEXT_CHARS)?;
    match text.split_once('/') {
        Some((provider, model)) if !provider.is_empty() && !model.is_empty() => Ok(text),
        _ => Err(InvalidText::new(
            "model",
            "must be a model reference, provider/model_id",
        )),
    }
}

fn status(value: Option<&Value>) -> Result<String, InvalidText> {
    match value {
        None | Some(Value::Null) => Ok("ok".to_string()),
        Some(Value::String(text)) => Slug::parse("status", text).map(|slug| slug.to_string()),
        Some(_) => Err(InvalidText::new(
            "status",
            "must be ok or an error kind such as timeout",
        )),
    }
}

fn metrics(value: Option<&Value>) -> Result<BTreeMap<String, f64>, InvalidText> {
    let fields = match value {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(fields)) => fields,
        Some(_) => return Err(InvalidText::new("metrics", "must be an object of {name: number}")),
    };
    if fields.len() > MAX_METRICS {
        return Err(InvalidText::new(
            "metrics",
            format!("must have at most {MAX_METRICS} entries"),
        ));
    }
    let mut metrics = BTreeMap::new();
    for (name, value) in fields {
        let number = match value {
            Value::Number(number) => number.as_f64(),
            Value::Bool(flag) => Some(f64::from(u8::from(*flag))),
            _ => None,
        };
        match (Slug::parse("metrics", name), number) {
            (Ok(name), Some(number)) if number.is_finite() => {
                metrics.insert(name.to_string(), number);
            }
            _ => {
                return Err(InvalidText::new(
                    "metrics",
                    format!("{name:?} must be a number (or true/false) under a lowercase name"),
                ))
            }
        }
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::money::{Amount, Currency};

    fn now() -> DateTime<Utc> {
        "2026-12-02T12:00:00Z".parse().unwrap()
    }

    fn record(extra: Value) -> Value {
        let mut base = json!({"id": "r1", "timestamp": "2026-12-01T10:00:00Z", "model": "openai/gpt-4o-mini",
                              "input_tokens": 1200, "output_tokens": 300, "cached_input_tokens": 200});
        if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
            base.extend(extra.clone());
        }
        base
    }

    #[test]
    fn a_record_reports_every_bad_field_at_once() {
        let errors = parse_record(
            &record(json!({"input_tokens": -1, "model": "gpt", "metrics": {"rating": "good"}, "colour": 1})),
            now(),
        )
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            ["record", "model", "input_tokens", "metrics"],
            "{errors:?}"
        );
        let future = parse_record(&record(json!({"timestamp": "2027-01-01T00:00:00Z"})), now()).unwrap_err();
        assert_eq!(future[0].field, "timestamp");
        let cached = parse_record(&record(json!({"cached_input_tokens": 5000})), now()).unwrap_err();
        assert_eq!(cached[0].field, "cached_input_tokens");
        assert!(parse_record(&json!([1]), now()).is_err());
    }

    #[test]
    fn cost_is_exact_and_cached_tokens_take_their_own_price() {
        let parsed = parse_record(
            &record(json!({"metrics": {"rating": 4, "converted": true}})),
            now(),
        )
        .unwrap();
        assert_eq!(parsed.metrics.get("converted"), Some(&1.0));
        let price = Price {
            input_per_mtok: Amount::parse("i", "0.15").unwrap(),
            output_per_mtok: Amount::parse("o", "0.6").unwrap(),
            cached_input_per_mtok: Some(Amount::parse("c", "0.075").unwrap()),
            currency: Currency::parse("c", "USD").unwrap(),
        };
        // 1000 × 0.15 + 200 × 0.075 + 300 × 0.6, per million.
        assert_eq!(cost(&parsed, &price).amount.to_string(), "0.000345");
        let uncached_price = Price {
            cached_input_per_mtok: None,
            ..price
        };
        assert_eq!(cost(&parsed, &uncached_price).amount.to_string(), "0.00036");
    }

    #[test]
    fn the_price_in_force_is_the_last_period_started_at_the_timestamp() {
        let period = |from: &str, input: &str| PricePeriod {
            effective_from: from.parse().unwrap(),
            price: Price {
                input_per_mtok: Amount::parse("i", input).unwrap(),
                output_per_mtok: Amount::parse("o", "1").unwrap(),
                cached_input_per_mtok: None,
                currency: Currency::parse("c", "USD").unwrap(),
            },
            original: None,
        };
        let periods = [
            period("2026-01-01T00:00:00Z", "1"),
            period("2026-06-01T00:00:00Z", "2"),
        ];
        assert!(price_at(&periods, "2025-12-31T00:00:00Z".parse().unwrap()).is_none());
        let june = price_at(&periods, "2026-06-01T00:00:00Z".parse().unwrap()).unwrap();
        assert_eq!(june.input_per_mtok.to_string(), "2");
    }
}
