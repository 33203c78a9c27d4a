//! What analytics need of many calls beyond sums: their latency distribution and their
//! metrics' means, in a form that merges. Kept per day, prompt version, label and feature
//! beside the spend roll-ups, and merged on read.
//!
//! Latency percentiles come from a DDSketch with 1 % relative accuracy: a reported
//! percentile is within 1 % of the latency of a call at that rank (a p99 of 200 ms means a
//! call at the 99th percentile took between 198 and 202 ms), whatever the number of calls
//! and however the sketches were merged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config, DDSketch};

use crate::usage::UsageRecord;

/// The sum and count of one metric's values, from which its mean follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricSum {
    pub sum: f64,
    pub count: u64,
}

/// The calls' latencies (those that reported one) and metrics.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CallSummary {
    /// `None` until a call with a latency is added (an empty sketch does not serialise).
    latency: Option<DDSketch>,
    metrics: BTreeMap<String, MetricSum>,
}

impl std::fmt::Debug for CallSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallSummary")
            .field("latencies", &self.latency.as_ref().map_or(0, DDSketch::count))
            .field("metrics", &self.metrics)
            .finish()
    }
}

/// The latency percentiles analytics report, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyPercentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl CallSummary {
    pub fn add(&mut self, record: &UsageRecord) {
        self.add_call(record.latency_ms, &record.metrics);
    }

    /// A call known by its latency and metrics (a stored record read back).
    pub fn add_call<'a>(
        &mut self,
        latency_ms: Option<u32>,
        metrics: impl IntoIterator<Item = (&'a String, &'a f64)>,
    ) {
        if let Some(ms) = latency_ms {
            self.latency
                .get_or_insert_with(|| DDSketch::new(Config::defaults()))
                .add(f64::from(ms));
        }
        for (name, value) in metrics {
            let metric = self.metrics.entry(name.clone()).or_default();
            metric.sum += value;
            metric.count += 1;
        }
    }

    pub fn merge(&mut self, other: &CallSummary) {
        match (&mut self.latency, &other.latency) {
            (Some(mine), Some(theirs)) => {
                // Every sketch here has the default configuration, so merging cannot fail.
                let _ = mine.merge(theirs);
            }
            (None, Some(theirs)) => self.latency = Some(theirs.clone()),
            (_, None) => {}
        }
        for (name, metric) in &other.metrics {
            let mine = self.metrics.entry(name.clone()).or_default();
            mine.sum += metric.sum;
            mine.count += metric.count;
        }
    }

    /// Latency percentiles, rounded to 0.1 ms; `None` when no call reported a latency.
    pub fn latency_percentiles(&self) -> Option<LatencyPercentiles> {
        let sketch = self.latency.as_ref()?;
        let (min, max) = (sketch.min()?, sketch.max()?);
        // The sketch keeps the exact extremes: an estimate never lies outside them.
        let at = |q: f64| {
            sketch
                .quantile(q)
                .ok()
                .flatten()
                .map(|ms| ((ms.clamp(min, max)) * 10.0).round() / 10.0)
        };
        Some(LatencyPercentiles {
            p50: at(0.5)?,
            p95: at(0.95)?,
            p99: at(0.99)?,
        })
    }

    /// Each metric's mean over the calls that reported it.
    pub fn metric_means(&self) -> BTreeMap<String, f64> {
        self.metrics
            .iter()
            .filter(|(_, metric)| metric.count > 0)
            .map(|(name, metric)| (name.clone(), metric.sum / metric.count as f64))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(latency_ms: u32, rating: f64) -> UsageRecord {
        let value = serde_json::json!({"id": "x", "timestamp": "2026-01-01T00:00:00Z", "model": "a/b",
                                       "latency_ms": latency_ms, "metrics": {"rating": rating}});
        crate::usage::parse_record(&value, chrono::Utc::now()).unwrap()
    }

    #[test]
    fn merged_sketches_give_percentiles_within_one_percent_and_exact_means() {
        // 1..=10,000 ms, split over three summaries that round-trip through JSON as stored.
        let mut parts = vec![
            CallSummary::default(),
            CallSummary::default(),
            CallSummary::default(),
        ];
        for ms in 1..=10_000u32 {
            parts[(ms % 3) as usize].add(&call(ms, f64::from(ms % 5)));
        }
        let mut merged = CallSummary::default();
        for part in &parts {
            let stored: CallSummary = serde_json::from_value(serde_json::to_value(part).unwrap()).unwrap();
            merged.merge(&stored);
        }
        let percentiles = merged.latency_percentiles().unwrap();
        for (estimate, exact) in [
            (percentiles.p50, 5_000.0),
            (percentiles.p95, 9_500.0),
            (percentiles.p99, 9_900.0),
        ] {
            assert!((estimate - exact).abs() / exact <= 0.01, "{estimate} vs {exact}");
        }
        assert_eq!(merged.metric_means()["rating"], 2.0);
        assert!(CallSummary::default().latency_percentiles().is_none());
    }
}
