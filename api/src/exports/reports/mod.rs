//! The reports an export can hold. Each is a module with its parameters, its [`Meta`]
//! (title and period) and `produce`, which reads the log and the telemetry at the job's
//! [`ReportPoint`] and pushes sections and rows into a [`RowSink`].

pub mod audit;
pub mod catalog;
pub mod experiment;
pub mod health;
pub mod prompt_usage;
pub mod spend;
pub mod usage;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use domain::access::Permission;
use domain::text::InvalidText;
use projections::export::sources::ReportPoint;
use reports::{Cell, Meta, Section};
use serde_json::Value;
use sqlx::PgPool;

/// The kinds of report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    Spend,
    Usage,
    Catalog,
    Audit,
    Experiment,
    Health,
    PromptUsage,
}

impl ReportKind {
    pub const ALL: [ReportKind; 7] = [
        ReportKind::Spend,
        ReportKind::Usage,
        ReportKind::Catalog,
        ReportKind::Audit,
        ReportKind::Experiment,
        ReportKind::Health,
        ReportKind::PromptUsage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spend => "spend",
            Self::Usage => "usage",
            Self::Catalog => "catalog",
            Self::Audit => "audit",
            Self::Experiment => "experiment",
            Self::Health => "health",
            Self::PromptUsage => "prompt_usage",
        }
    }

    pub fn parse(field: &'static str, text: &str) -> Result<Self, InvalidText> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|kind| kind.as_str()).collect();
                InvalidText::new(field, format!("must be one of {}", names.join(", ")))
            })
    }

    /// What a key needs, beyond reading, to ask for this report.
    pub fn permission(self) -> Permission {
        match self {
            // The audit log is for auditors and admins, as `GET /v1/audit` is.
            Self::Audit => Permission::ReadAudit,
            Self::Spend
            | Self::Usage
            | Self::Catalog
            | Self::Experiment
            | Self::Health
            | Self::PromptUsage => Permission::Read,
        }
    }

    /// Checks `params` for this report: every error at once, each on its field
    /// (`params.<name>`). `section` (which section a CSV holds) is every report's.
    pub fn check_params(self, params: &Value) -> Result<(), Vec<InvalidText>> {
        let Some(object) = params.as_object() else {
            return Err(vec![InvalidText::new("params", "must be an object")]);
        };
        let mut errors = Vec::new();
        for (name, value) in object {
            let checked = match (self, name.as_str()) {
                (_, "section") if !value.is_string() => {
                    Err(InvalidText::new("params.section", "must be a string"))
                }
                (_, "section") => Ok(()),
                (Self::Spend, "month") => month_param(value).map(drop),
                (Self::Usage | Self::Health | Self::PromptUsage, "from" | "to") => {
                    day_param(name, value).map(drop)
                }
                (Self::Audit, "from" | "to") => audit::instant_param(name, value).map(drop),
                (Self::Audit, "actor" | "aggregate_type" | "event_type") => {
                    audit::text_param(name, value).map(drop)
                }
                (Self::Experiment, "experiment_id") => uuid_param("params.experiment_id", value).map(drop),
                (Self::PromptUsage, "prompt_id") => uuid_param("params.prompt_id", value).map(drop),
                (Self::Experiment, "method") => value
                    .as_str()
                    .and_then(domain::experiment_results::Method::parse)
                    .map(drop)
                    .ok_or_else(|| {
                        InvalidText::new("params.method", "must be fixed, sequential or bayesian")
                    }),
                (Self::Experiment, "correction") => value
                    .as_str()
                    .and_then(domain::experiment_results::Correction::parse)
                    .map(drop)
                    .ok_or_else(|| InvalidText::new("params.correction", "must be none, holm or bh")),
                _ => Err(InvalidText::new(
                    "params",
                    format!("{} reports take no parameter {name:?}", self.as_str()),
                )),
            };
            if let Err(error) = checked {
                errors.push(error);
            }
        }
        for (required, field, kind) in [
            ("experiment_id", "params.experiment_id", Self::Experiment),
            ("prompt_id", "params.prompt_id", Self::PromptUsage),
        ] {
            if self == kind && !object.contains_key(required) {
                errors.push(InvalidText::new(field, "is required"));
            }
        }
        if let (Self::Usage | Self::Health | Self::PromptUsage, Ok(Some(from)), Ok(Some(to))) = (
            self,
            optional(object.get("from"), |value| day_param("from", value)),
            optional(object.get("to"), |value| day_param("to", value)),
        ) {
            if from > to {
                errors.push(InvalidText::new("params.to", "must not be before params.from"));
            }
        }
        if let (Self::Audit, Ok(Some(from)), Ok(Some(to))) = (
            self,
            optional(object.get("from"), |value| audit::instant_param("from", value)),
            optional(object.get("to"), |value| audit::instant_param("to", value)),
        ) {
            if from > to {
                errors.push(InvalidText::new("params.to", "must not be before params.from"));
            }
        }
        if let Some(section) = object.get("section").and_then(Value::as_str) {
            if !self.sections().contains(&section) {
                errors.push(InvalidText::new(
                    "params.section",
                    format!("must be one of {}", self.sections().join(", ")),
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Checks that what `params` names (an experiment, a prompt) is the tenant's now: a
    /// cheap read of the read models, so a mistyped id is refused at once. A report of a
    /// past point fails, with the reason, when it did not exist then.
    pub async fn check_subject(
        self,
        pool: &PgPool,
        tenant: &str,
        params: &Value,
    ) -> sqlx::Result<Vec<InvalidText>> {
        let id = |name: &str| {
            params
                .get(name)
                .and_then(Value::as_str)
                .and_then(|text| text.parse::<uuid::Uuid>().ok())
        };
        let mut errors = Vec::new();
        match self {
            Self::Experiment => {
                if let Some(id) = id("experiment_id") {
                    if projections::experiment::queries::experiment(pool, tenant, id)
                        .await?
                        .is_none()
                    {
                        errors.push(InvalidText::new("params.experiment_id", "no such experiment"));
                    }
                }
            }
            Self::PromptUsage => {
                if let Some(id) = id("prompt_id") {
                    if projections::catalog::queries::prompt(pool, tenant, id)
                        .await?
                        .is_none()
                    {
                        errors.push(InvalidText::new("params.prompt_id", "no such prompt"));
                    }
                }
            }
            Self::Spend | Self::Usage | Self::Catalog | Self::Audit | Self::Health => {}
        }
        Ok(errors)
    }

    /// The names of the report's sections, in order (the first is what a CSV holds unless
    /// `params.section` names another).
    pub fn sections(self) -> &'static [&'static str] {
        match self {
            Self::Spend => spend::SECTIONS,
            Self::Usage => usage::SECTIONS,
            Self::Catalog => catalog::SECTIONS,
            Self::Audit => audit::SECTIONS,
            Self::Experiment => experiment::SECTIONS,
            Self::Health => health::SECTIONS,
            Self::PromptUsage => prompt_usage::SECTIONS,
        }
    }
}

fn optional<T>(
    value: Option<&Value>,
    parse: impl Fn(&Value) -> Result<T, InvalidText>,
) -> Result<Option<T>, InvalidText> {
    value.map(parse).transpose()
}

/// A `YYYY-MM` parameter: the month's first day.
pub fn month_param(value: &Value) -> Result<NaiveDate, InvalidText> {
    let invalid = || InvalidText::new("params.month", "must be a month, YYYY-MM");
    let text = value.as_str().ok_or_else(invalid)?;
    if text.len() != 7 {
        return Err(invalid());
    }
    NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d").map_err(|_| invalid())
}

/// A `YYYY-MM-DD` parameter.
pub fn day_param(name: &str, value: &Value) -> Result<NaiveDate, InvalidText> {
    let field = if name == "from" {
        "params.from"
    } else {
        "params.to"
    };
    value
        .as_str()
        .and_then(|text| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
        .ok_or_else(|| InvalidText::new(field, "must be a date, YYYY-MM-DD"))
}

/// A UUID parameter.
fn uuid_param(field: &'static str, value: &Value) -> Result<uuid::Uuid, InvalidText> {
    value
        .as_str()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| InvalidText::new(field, "must be a UUID"))
}

/// The first day of the month holding `day`.
pub fn month_of(day: NaiveDate) -> NaiveDate {
    day.with_day(1).unwrap_or(day)
}

/// The start of `day` in UTC.
pub fn start_of(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// What a report reads from, at the job's point.
pub struct ReportInput<'a> {
    pub pool: &'a PgPool,
    pub tenant: &'a str,
    pub point: ReportPoint,
    pub params: &'a Value,
}

/// What the report says of itself, before any row.
pub fn meta(kind: ReportKind, input: &ReportInput<'_>) -> Meta {
    let (title, period) = match kind {
        ReportKind::Spend => ("Spend report", Some(spend::period(input))),
        ReportKind::Usage => ("Usage records", Some(usage::period(input))),
        // The catalogue is a state, not a period's events.
        ReportKind::Catalog => ("Catalog", None),
        ReportKind::Audit => ("Audit log", audit::period(input)),
        // An experiment's results are of its whole run up to the point.
        ReportKind::Experiment => ("Experiment results", None),
        ReportKind::Health => ("Provider health", Some(health::period(input))),
        ReportKind::PromptUsage => ("Prompt usage", Some(prompt_usage::period(input))),
    };
    Meta {
        report: kind.as_str().to_owned(),
        title: title.to_owned(),
        tenant: input.tenant.to_owned(),
        period,
        as_of: input.point.instant,
        cursor: input.point.cursor.to_string(),
        params: input.params.clone(),
    }
}

/// Writes the report's sections and rows into `sink`.
pub async fn produce(kind: ReportKind, input: &ReportInput<'_>, sink: &mut RowSink) -> Result<(), Stop> {
    match kind {
        ReportKind::Spend => spend::produce(input, sink).await,
        ReportKind::Usage => usage::produce(input, sink).await,
        ReportKind::Catalog => catalog::produce(input, sink).await,
        ReportKind::Audit => audit::produce(input, sink).await,
        ReportKind::Experiment => experiment::produce(input, sink).await,
        ReportKind::Health => health::produce(input, sink).await,
        ReportKind::PromptUsage => prompt_usage::produce(input, sink).await,
    }
}

/// Why producing a report stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum Stop {
    #[error("the export was cancelled")]
    Cancelled,
    /// The file's writer failed; its own error says why.
    #[error("the file could not be written")]
    WriterGone,
    #[error("reading the data failed: {0}")]
    Source(#[from] sqlx::Error),
    /// The report cannot be made at its point, or its data cannot be read completely (what
    /// it is of did not exist then; the audit log has not reached the point); the reason
    /// says which.
    #[error("{0}")]
    Failed(String),
}

/// A piece of a report on its way to the file's writer.
pub enum Piece {
    Section(Section),
    Rows(Vec<Vec<Cell>>),
}

/// Rows go to the writer (a blocking thread) in batches of this many.
const BATCH: usize = 1024;

/// Where a report's sections and rows go: to the file's writer, counted for progress, and
/// refused once the export is cancelled.
pub struct RowSink {
    to_writer: tokio::sync::mpsc::Sender<Piece>,
    batch: Vec<Vec<Cell>>,
    pub progress: Arc<Progress>,
}

/// How far a report has come, read by the runner while it is produced.
#[derive(Debug, Default)]
pub struct Progress {
    pub rows: AtomicU64,
    /// The rows the report will hold, when it knows in advance (0: unknown).
    pub expected: AtomicU64,
    pub cancelled: AtomicBool,
}

impl RowSink {
    pub fn new(to_writer: tokio::sync::mpsc::Sender<Piece>, progress: Arc<Progress>) -> Self {
        Self {
            to_writer,
            batch: Vec::with_capacity(BATCH),
            progress,
        }
    }

    /// Says how many rows the report will hold, for the percentage of progress.
    pub fn expect_rows(&self, rows: u64) {
        self.progress.expected.store(rows, Ordering::Relaxed);
    }

    pub async fn section(&mut self, section: Section) -> Result<(), Stop> {
        self.flush().await?;
        self.send(Piece::Section(section)).await
    }

    pub async fn row(&mut self, cells: Vec<Cell>) -> Result<(), Stop> {
        self.batch.push(cells);
        if self.batch.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends what is batched; the report's end.
    pub async fn flush(&mut self) -> Result<(), Stop> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let rows = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        let count = rows.len() as u64;
        self.send(Piece::Rows(rows)).await?;
        self.progress.rows.fetch_add(count, Ordering::Relaxed);
        Ok(())
    }

    async fn send(&mut self, piece: Piece) -> Result<(), Stop> {
        if self.progress.cancelled.load(Ordering::Relaxed) {
            return Err(Stop::Cancelled);
        }
        self.to_writer.send(piece).await.map_err(|_| Stop::WriterGone)
    }
}

/// The tenant's prices as they were known at a report's point: every model's price periods
/// folded from the log, so a past point prices usage as it was priced then.
pub struct Prices(std::collections::HashMap<String, Vec<domain::model::PricePeriod>>);

impl Prices {
    pub async fn at(input: &ReportInput<'_>) -> Result<Self, Stop> {
        let models = projections::export::sources::fold_all::<domain::model::Model>(
            input.pool,
            input.tenant,
            input.point,
        )
        .await?;
        Ok(Self(
            models
                .into_iter()
                .map(|(_, model)| (model.reference, model.prices))
                .collect(),
        ))
    }

    /// What `record` cost; `None` when its model had no price for its moment.
    pub fn cost(&self, record: &projections::export::sources::UsageRow) -> Option<domain::usage::Cost> {
        let price = domain::usage::price_at(self.0.get(&record.model)?, record.ts)?;
        let tokens = |count: i64| u64::try_from(count).unwrap_or(0);
        Some(domain::usage::cost_of_tokens(
            tokens(record.input_tokens),
            tokens(record.cached_input_tokens),
            tokens(record.output_tokens),
            price,
        ))
    }
}
