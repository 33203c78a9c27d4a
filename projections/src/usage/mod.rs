//! `usage_record`: usage records as ingestion stored them (`commands::usage` writes them;
//! they are telemetry, not events). [`queries`] reads them.

pub mod analytics;
pub mod queries;
pub mod recost;
