//! `ReadRecord`: a record that somebody read sensitive history (the audit log, the key
//! list), so that looking is itself in the event log and in the audit chain.
//!
//! Each read is its own aggregate with a fresh id: recording never contends with another
//! read, and a record, once written, never changes.

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::governed::Governed;

#[derive(Debug, Clone, PartialEq)]
pub enum ReadRecordCommand {
    /// `resource` names what was read (`audit_log`, `api_keys`, …) and `filters` how it was
    /// narrowed, as the reader gave them.
    RecordRead {
        tenant: String,
        resource: String,
        filters: BTreeMap<String, String>,
    },
}

/// Stored in `events.event_type` by variant name: never rename one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReadRecordEvent {
    ReadRecorded {
        tenant: String,
        resource: String,
        filters: BTreeMap<String, String>,
    },
}

impl DomainEvent for ReadRecordEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ReadRecorded { .. } => "ReadRecorded".to_string(),
        }
    }

    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadRecordError {
    #[error("this read is already recorded")]
    AlreadyRecorded,
}

/// One recorded read.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadRecord {
    pub tenant: Option<String>,
    pub resource: String,
    pub filters: BTreeMap<String, String>,
}

impl Aggregate for ReadRecord {
    /// Keys every stored read record: changing it orphans the history.
    const TYPE: &'static str = "read_record";
    type Command = ReadRecordCommand;
    type Event = ReadRecordEvent;
    type Error = ReadRecordError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ReadRecordCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ReadRecordError> {
        match command {
            ReadRecordCommand::RecordRead { .. } if self.tenant.is_some() => {
                Err(ReadRecordError::AlreadyRecorded)
            }
            ReadRecordCommand::RecordRead {
                tenant,
                resource,
                filters,
            } => {
                sink.write(
                    ReadRecordEvent::ReadRecorded {
                        tenant,
                        resource,
                        filters,
                    },
                    self,
                )
                .await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: ReadRecordEvent) {
        match event {
            ReadRecordEvent::ReadRecorded {
                tenant,
                resource,
                filters,
            } => {
                self.tenant = Some(tenant);
                self.resource = resource;
                self.filters = filters;
            }
        }
    }
}

impl Governed for ReadRecord {
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ReadRecordCommand {
        ReadRecordCommand::RecordRead {
            tenant: "acme".into(),
            resource: "audit_log".into(),
            filters: BTreeMap::from([("actor".to_string(), "ci".to_string())]),
        }
    }

    #[tokio::test]
    async fn a_read_is_recorded_once_with_its_filters() {
        let mut read = ReadRecord::default();
        let sink = EventSink::default();
        read.handle(record(), &(), &sink).await.unwrap();
        let events = sink.collect().await;
        assert_eq!(events.len(), 1);
        let ReadRecordEvent::ReadRecorded {
            resource, filters, ..
        } = &events[0];
        assert_eq!(resource, "audit_log");
        assert_eq!(filters["actor"], "ci");

        let again = EventSink::default();
        assert_eq!(
            read.handle(record(), &(), &again).await,
            Err(ReadRecordError::AlreadyRecorded)
        );
    }
}
