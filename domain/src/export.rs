//! The `ExportJob` aggregate: one report, in one format, written to a file in the
//! background; tracked, cancellable, resumed after a restart, and deleted when it expires.
//!
//! A job fixes what it reflects when it first starts (`ExportStarted`: the global cursor and
//! the instant), and every later attempt writes from that same point, so a job resumed after
//! its process died produces the very file it would have. What a report is and how a format
//! is written is not this aggregate's business: it keeps the names and parameters as given.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::governed::Governed;

/// Attempts a job gets: one interrupted this often is failed rather than tried again.
pub const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportStatus {
    #[default]
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
    /// Done, and its file deleted since.
    Expired,
}

impl ExportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    /// Whether the job will write no more.
    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

/// The point in the log and in time a job reflects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The global cursor (`<transaction>-<position>`) of the last event reflected.
    pub cursor: String,
    /// The instant reflected: telemetry (usage, probes) recorded by then counts.
    pub instant: DateTime<Utc>,
}

/// The file a finished job wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportFile {
    /// The name a download is offered under.
    pub file_name: String,
    pub rows: u64,
    pub size_bytes: u64,
    /// SHA-256 (hex) of the file's bytes.
    pub content_sha256: String,
    /// SHA-256 (hex) of the report's NDJSON form, the same in every format.
    pub data_sha256: String,
    pub expires_at: DateTime<Utc>,
}

/// The key that asked for the export.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Requester {
    pub key_id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExportCommand {
    Request {
        tenant: String,
        report: String,
        format: String,
        params: Value,
        as_of: Option<DateTime<Utc>>,
        requester: Requester,
    },
    /// The runner takes the job up; `snapshot` is used on the first attempt only.
    Start {
        snapshot: Snapshot,
    },
    Progress {
        rows: u64,
        percent: Option<u8>,
    },
    Complete {
        file: ExportFile,
    },
    Fail {
        reason: String,
    },
    Cancel,
    Expire,
}

/// Stored in `events.event_type` by variant name: never rename one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ExportEvent {
    ExportRequested {
        tenant: String,
        report: String,
        format: String,
        params: Value,
        as_of: Option<DateTime<Utc>>,
        requester: Requester,
    },
    /// An attempt began (the first, or a resumption after its process stopped).
    ExportStarted {
        snapshot: Snapshot,
        attempt: u32,
    },
    ExportProgressed {
        rows: u64,
        percent: Option<u8>,
    },
    ExportCompleted {
        file: ExportFile,
    },
    ExportFailed {
        reason: String,
    },
    ExportCancelled,
    /// The file was deleted when its time was up.
    ExportExpired,
}

impl DomainEvent for ExportEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ExportRequested { .. } => "ExportRequested",
            Self::ExportStarted { .. } => "ExportStarted",
            Self::ExportProgressed { .. } => "ExportProgressed",
            Self::ExportCompleted { .. } => "ExportCompleted",
            Self::ExportFailed { .. } => "ExportFailed",
            Self::ExportCancelled => "ExportCancelled",
            Self::ExportExpired => "ExportExpired",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error("no such export")]
    NotFound,
    #[error("an export with this id already exists")]
    AlreadyExists,
    #[error("the export is already {0}")]
    Finished(&'static str),
    #[error("the export is {0}, not where this step belongs")]
    WrongStatus(&'static str),
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportJob {
    pub tenant: Option<String>,
    pub report: String,
    pub format: String,
    pub params: Value,
    pub as_of: Option<DateTime<Utc>>,
    pub requester: Requester,
    pub status: ExportStatus,
    pub snapshot: Option<Snapshot>,
    pub attempts: u32,
    pub rows: u64,
    pub file: Option<ExportFile>,
    pub failure: Option<String>,
}

impl ExportJob {
    fn require_running(&self) -> Result<(), ExportError> {
        match self.status {
            ExportStatus::Running => Ok(()),
            status if status.is_finished() => Err(ExportError::Finished(status.as_str())),
            status => Err(ExportError::WrongStatus(status.as_str())),
        }
    }
}

impl Aggregate for ExportJob {
    /// Keys every stored export event: changing it orphans the history.
    const TYPE: &'static str = "export_job";
    type Command = ExportCommand;
    type Event = ExportEvent;
    type Error = ExportError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ExportCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ExportError> {
        match command {
            ExportCommand::Request { .. } if self.tenant.is_some() => return Err(ExportError::AlreadyExists),
            ExportCommand::Request {
                tenant,
                report,
                format,
                params,
                as_of,
                requester,
            } => {
                let requested = ExportEvent::ExportRequested {
                    tenant,
                    report,
                    format,
                    params,
                    as_of,
                    requester,
                };
                sink.write(requested, self).await;
            }
            _ if self.tenant.is_none() => return Err(ExportError::NotFound),
            ExportCommand::Start { snapshot } => {
                if self.status.is_finished() {
                    return Err(ExportError::Finished(self.status.as_str()));
                }
                if self.attempts >= MAX_ATTEMPTS {
                    let reason = format!(
                        "the export was interrupted {} times; it is not tried again",
                        self.attempts
                    );
                    sink.write(ExportEvent::ExportFailed { reason }, self).await;
                    return Ok(());
                }
                // A resumed job writes from the point its first attempt fixed.
                let snapshot = self.snapshot.clone().unwrap_or(snapshot);
                let attempt = self.attempts + 1;
                sink.write(ExportEvent::ExportStarted { snapshot, attempt }, self)
                    .await;
            }
            ExportCommand::Progress { rows, percent } => {
                self.require_running()?;
                sink.write(ExportEvent::ExportProgressed { rows, percent }, self)
                    .await;
            }
            ExportCommand::Complete { file } => {
                self.require_running()?;
                sink.write(ExportEvent::ExportCompleted { file }, self).await;
            }
            ExportCommand::Fail { reason } => {
                if self.status.is_finished() {
                    return Err(ExportError::Finished(self.status.as_str()));
                }
                sink.write(ExportEvent::ExportFailed { reason }, self).await;
            }
            ExportCommand::Cancel => {
                if self.status == ExportStatus::Cancelled {
                    return Ok(()); // cancelling twice changes nothing
                }
                if self.status.is_finished() {
                    return Err(ExportError::Finished(self.status.as_str()));
                }
                sink.write(ExportEvent::ExportCancelled, self).await;
            }
            ExportCommand::Expire => {
                if self.status == ExportStatus::Expired {
                    return Ok(());
                }
                if self.status != ExportStatus::Done {
                    return Err(ExportError::WrongStatus(self.status.as_str()));
                }
                sink.write(ExportEvent::ExportExpired, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: ExportEvent) {
        match event {
            ExportEvent::ExportRequested {
                tenant,
                report,
                format,
                params,
                as_of,
                requester,
            } => {
                self.tenant = Some(tenant);
                self.report = report;
                self.format = format;
                self.params = params;
                self.as_of = as_of;
                self.requester = requester;
                self.status = ExportStatus::Queued;
            }
            ExportEvent::ExportStarted { snapshot, attempt } => {
                self.snapshot = Some(snapshot);
                self.attempts = attempt;
                self.rows = 0;
                self.status = ExportStatus::Running;
            }
            ExportEvent::ExportProgressed { rows, .. } => self.rows = rows,
            ExportEvent::ExportCompleted { file } => {
                self.rows = file.rows;
                self.file = Some(file);
                self.status = ExportStatus::Done;
            }
            ExportEvent::ExportFailed { reason } => {
                self.failure = Some(reason);
                self.status = ExportStatus::Failed;
            }
            ExportEvent::ExportCancelled => self.status = ExportStatus::Cancelled,
            ExportEvent::ExportExpired => self.status = ExportStatus::Expired,
        }
    }
}

impl Governed for ExportJob {
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;
    use serde_json::json;

    use super::*;

    type Given = TestFramework<ExportJob>;

    fn requested() -> ExportEvent {
        ExportEvent::ExportRequested {
            tenant: "acme".into(),
            report: "spend".into(),
            format: "csv".into(),
            params: json!({"month": "2026-11"}),
            as_of: None,
            requester: Requester::default(),
        }
    }

    fn snapshot(cursor: &str) -> Snapshot {
        Snapshot {
            cursor: cursor.into(),
            instant: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
        }
    }

    fn started(cursor: &str, attempt: u32) -> ExportEvent {
        ExportEvent::ExportStarted {
            snapshot: snapshot(cursor),
            attempt,
        }
    }

    #[test]
    fn a_resumed_job_writes_from_the_point_its_first_attempt_fixed() {
        Given::with(())
            .given(vec![requested(), started("10-5", 1)])
            .when(ExportCommand::Start {
                snapshot: snapshot("12-9"),
            })
            .then_expect_events(vec![started("10-5", 2)]);
    }

    #[test]
    fn a_job_interrupted_too_often_fails_with_the_reason() {
        Given::with(())
            .given(vec![
                requested(),
                started("1-1", 1),
                started("1-1", 2),
                started("1-1", 3),
            ])
            .when(ExportCommand::Start {
                snapshot: snapshot("1-1"),
            })
            .then_expect_events(vec![ExportEvent::ExportFailed {
                reason: "the export was interrupted 3 times; it is not tried again".into(),
            }]);
    }

    #[test]
    fn a_cancelled_job_records_nothing_more() {
        Given::with(())
            .given(vec![requested(), started("1-1", 1), ExportEvent::ExportCancelled])
            .when(ExportCommand::Progress {
                rows: 10,
                percent: None,
            })
            .then_expect_error(ExportError::Finished("cancelled"));
        Given::with(())
            .given(vec![requested(), ExportEvent::ExportCancelled])
            .when(ExportCommand::Cancel)
            .then_expect_events(vec![]);
    }

    #[test]
    fn only_a_finished_file_expires() {
        Given::with(())
            .given(vec![requested(), started("1-1", 1)])
            .when(ExportCommand::Expire)
            .then_expect_error(ExportError::WrongStatus("running"));
    }

    #[test]
    fn a_finished_job_cannot_be_cancelled() {
        Given::with(())
            .given(vec![
                requested(),
                ExportEvent::ExportFailed { reason: "x".into() },
            ])
            .when(ExportCommand::Cancel)
            .then_expect_error(ExportError::Finished("failed"));
    }
}
