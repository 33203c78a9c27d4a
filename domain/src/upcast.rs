//! Schema evolution: reading an event stored in an older shape as this build's shape.
//!
//! The log is append-only and the audit chain hashes payloads as stored, so a stored
//! payload is never rewritten. When an event's shape changes in a way old payloads do not
//! fit, its `event_version` gets a new major version and an [`Upcaster`] that turns the
//! version before into it is listed in [`UPCASTERS`]. Every reader that folds or projects
//! events decodes them through [`decode`] (the projections, through
//! `eventlog::StoredEvent::decode`) and the write side loads aggregates with the same list
//! (`commands::store`), so a new upcaster is one entry here and nothing else.

use serde::de::{DeserializeOwned, Error as _};
use serde_json::{Map, Value};

use cqrs_es::Aggregate;

use crate::prompt;

/// Which shape a stored payload is in: columns `aggregate_type`, `event_type` and
/// `event_version` of its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schema<'a> {
    pub aggregate_type: &'a str,
    pub event_type: &'a str,
    pub event_version: &'a str,
}

/// An event's fields: the object under its variant's name in a stored payload.
pub type Fields = Map<String, Value>;

/// Turns one event type's payload from the version before `version` into `version`.
#[derive(Debug, Clone, Copy)]
pub struct Upcaster {
    pub aggregate_type: &'static str,
    pub event_type: &'static str,
    /// The version it produces (three numbers); it reads any earlier one.
    pub version: &'static str,
    /// From the event's fields (the object under its variant's name) in the version
    /// before to its fields in `version`; `Err` says why a payload cannot be read.
    pub upcast: fn(Fields) -> Result<Fields, String>,
}

/// Every upcaster, each event type's in ascending order of version: an old payload goes
/// through every one newer than its version, in this order.
pub const UPCASTERS: &[Upcaster] = &[Upcaster {
    aggregate_type: <prompt::Prompt as Aggregate>::TYPE,
    event_type: "PromptVersionPublished",
    version: "2.0.0",
    upcast: prompt::split_version_model,
}];

/// Why a stored payload cannot be read in this build's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpcastError {
    #[error(
        "{aggregate_type} event {event_type} is stored with version {version:?}, which is not \
         three numbers such as 1.0.0"
    )]
    UnreadableVersion {
        aggregate_type: String,
        event_type: String,
        version: String,
    },
    #[error(
        "{aggregate_type} event {event_type} is stored with version {version}, newer than \
         this build reads ({newest}.x): a newer aipm wrote it; run that one"
    )]
    Newer {
        aggregate_type: String,
        event_type: String,
        version: String,
        newest: u32,
    },
    #[error("{aggregate_type} event {event_type} {from} cannot be upcast to {to}: {reason}")]
    Refused {
        aggregate_type: String,
        event_type: String,
        from: String,
        to: &'static str,
        reason: String,
    },
}

/// A version as its three numbers, or `None` when it is not `major.minor.patch`.
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split('.').map(str::parse::<u32>);
    let version = (parts.next()?.ok()?, parts.next()?.ok()?, parts.next()?.ok()?);
    parts.next().is_none().then_some(version)
}

impl Upcaster {
    /// Whether a payload stored as `schema` goes through this upcaster. A version that is
    /// not three numbers does, so that [`upcast`] reports it instead of a decoding error.
    fn reads(&self, schema: Schema<'_>) -> bool {
        self.aggregate_type == schema.aggregate_type
            && self.event_type == schema.event_type
            && match (parse_version(schema.event_version), parse_version(self.version)) {
                (Some(stored), Some(produced)) => stored < produced,
                _ => true,
            }
    }
}

/// The newest major version of an event type this build reads: its last upcaster's, else
/// 1 (a new major version always comes with its upcaster).
fn newest_major(schema: Schema<'_>) -> u32 {
    UPCASTERS
        .iter()
        .filter(|upcaster| {
            upcaster.aggregate_type == schema.aggregate_type && upcaster.event_type == schema.event_type
        })
        .filter_map(|upcaster| parse_version(upcaster.version))
        .map(|(major, ..)| major)
        .max()
        .unwrap_or(1)
}

/// Refuses a payload of a newer major version than this build reads: a newer build wrote
/// it (an instance not yet upgraded, or a downgrade), and read as an older shape it could
/// be misread rather than refused.
pub fn check_known(schema: Schema<'_>) -> Result<(), UpcastError> {
    let newest = newest_major(schema);
    match parse_version(schema.event_version) {
        Some((major, ..)) if major > newest => Err(UpcastError::Newer {
            aggregate_type: schema.aggregate_type.to_string(),
            event_type: schema.event_type.to_string(),
            version: schema.event_version.to_string(),
            newest,
        }),
        _ => Ok(()),
    }
}

/// Whether a payload stored as `schema` is older than this build's shape of its event.
pub fn is_outdated(schema: Schema<'_>) -> bool {
    UPCASTERS.iter().any(|upcaster| upcaster.reads(schema))
}

/// The payload of an event stored as `schema` in this build's shape, with its version
/// then; a current payload comes back unchanged.
pub fn upcast(schema: Schema<'_>, mut payload: Value) -> Result<(Value, String), UpcastError> {
    let mut version = schema.event_version.to_string();
    for upcaster in UPCASTERS {
        let step = Schema {
            event_version: &version,
            ..schema
        };
        if !upcaster.reads(step) {
            continue;
        }
        if parse_version(&version).is_none() {
            return Err(UpcastError::UnreadableVersion {
                aggregate_type: schema.aggregate_type.to_string(),
                event_type: schema.event_type.to_string(),
                version,
            });
        }
        let refused = |reason: String| UpcastError::Refused {
            aggregate_type: schema.aggregate_type.to_string(),
            event_type: schema.event_type.to_string(),
            from: version.clone(),
            to: upcaster.version,
            reason,
        };
        // Stored payloads are the event enum as serde writes it: `{"<variant>": {fields}}`.
        let fields = match &mut payload {
            Value::Object(tagged) if tagged.len() == 1 => match tagged.remove(schema.event_type) {
                Some(Value::Object(fields)) => fields,
                _ => {
                    return Err(refused(format!(
                        "the payload is not a {} object",
                        schema.event_type
                    )))
                }
            },
            _ => {
                return Err(refused(format!(
                    "the payload is not a {} object",
                    schema.event_type
                )))
            }
        };
        let fields = (upcaster.upcast)(fields).map_err(refused)?;
        let mut tagged = Map::new();
        tagged.insert(schema.event_type.to_string(), Value::Object(fields));
        payload = Value::Object(tagged);
        version = upcaster.version.to_string();
    }
    Ok((payload, version))
}

/// A stored payload (JSON text) read as the event type `E`, upcast first when it is older
/// than this build's shape. An upcast that fails, or a version newer than this build
/// reads, is a decoding error that says why.
pub fn decode<E: DeserializeOwned>(schema: Schema<'_>, payload: &str) -> Result<E, serde_json::Error> {
    check_known(schema).map_err(serde_json::Error::custom)?;
    if !is_outdated(schema) {
        return serde_json::from_str(payload);
    }
    decode_value(schema, serde_json::from_str(payload)?)
}

/// [`decode`] for a payload already parsed.
pub fn decode_value<E: DeserializeOwned>(schema: Schema<'_>, payload: Value) -> Result<E, serde_json::Error> {
    check_known(schema).map_err(serde_json::Error::custom)?;
    if !is_outdated(schema) {
        return serde_json::from_value(payload);
    }
    let (payload, _) = upcast(schema, payload).map_err(serde_json::Error::custom)?;
    serde_json::from_value(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_upcaster_produces_a_three_part_version_after_the_one_before_it() {
        for (index, upcaster) in UPCASTERS.iter().enumerate() {
            let version = parse_version(upcaster.version);
            assert!(version.is_some(), "{} {}", upcaster.event_type, upcaster.version);
            let earlier = UPCASTERS[..index].iter().filter(|before| {
                before.aggregate_type == upcaster.aggregate_type && before.event_type == upcaster.event_type
            });
            for before in earlier {
                assert!(
                    parse_version(before.version) < version,
                    "{} out of order",
                    upcaster.event_type
                );
            }
        }
    }

    #[test]
    fn versions_are_three_numbers_compared_as_numbers() {
        assert_eq!(parse_version("1.10.0"), Some((1, 10, 0)));
        assert!(parse_version("1.10.0") > parse_version("1.9.0"));
        assert_eq!(parse_version("1.0"), None);
        assert_eq!(parse_version("1.0.0.0"), None);
        assert_eq!(parse_version("v1.0.0"), None);
    }

    #[test]
    fn a_version_newer_than_this_build_reads_is_refused_not_misread() {
        let schema = |event_type, event_version| Schema {
            aggregate_type: "prompt",
            event_type,
            event_version,
        };
        // `PromptRestored` is a unit variant: a 2.0.0 one would decode, and be misread.
        let error =
            decode::<crate::prompt::PromptEvent>(schema("PromptRestored", "2.0.0"), r#""PromptRestored""#)
                .unwrap_err();
        assert!(error.to_string().contains("a newer aipm wrote it"), "{error}");
        assert!(check_known(schema("PromptRestored", "1.4.0")).is_ok());
        assert!(check_known(schema("PromptVersionPublished", "2.1.0")).is_ok());
        assert_eq!(
            check_known(schema("PromptVersionPublished", "3.0.0"))
                .unwrap_err()
                .to_string(),
            "prompt event PromptVersionPublished is stored with version 3.0.0, newer than this build \
             reads (2.x): a newer aipm wrote it; run that one"
        );
    }

    #[test]
    fn a_payload_of_a_type_no_upcaster_reads_is_decoded_as_it_is() {
        let schema = Schema {
            aggregate_type: "prompt",
            event_type: "PromptArchived",
            event_version: "1.0",
        };
        assert!(!is_outdated(schema));
        let (payload, version) = upcast(schema, Value::String("PromptArchived".into())).unwrap();
        assert_eq!(
            (payload, version.as_str()),
            (Value::String("PromptArchived".into()), "1.0")
        );
    }
}
