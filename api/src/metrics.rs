//! Prometheus metrics: what the process counts as it goes (HTTP requests, usage records)
//! and what `GET /metrics` reads when scraped (commands and events by type, projection and
//! relay lag, spend, budget utilisation). Rendered in the Prometheus text format by the
//! `prometheus` crate.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric of the process, registered in its own registry.
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub commands: IntCounterVec,
    pub events: IntCounterVec,
    pub usage_records: IntCounterVec,
    pub projection_lag_events: IntGaugeVec,
    pub projection_lag_seconds: GaugeVec,
    pub leading: IntGaugeVec,
    pub spend: GaugeVec,
    pub budget_used: GaugeVec,
    pub provider_state: IntGaugeVec,
    pub gateway_calls: IntCounterVec,
    pub gateway_attempts: IntCounterVec,
    pub gateway_duration: HistogramVec,
}

impl Metrics {
    /// Builds and registers every metric. The names are fixed and distinct, so this cannot
    /// fail at run time.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("counter");
            registry.register(Box::new(metric.clone())).expect("register");
            metric
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("gauge");
            registry.register(Box::new(metric.clone())).expect("register");
            metric
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let metric = GaugeVec::new(Opts::new(name, help), labels).expect("gauge");
            registry.register(Box::new(metric.clone())).expect("register");
            metric
        };
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "aipm_http_request_duration_seconds",
                "Time to answer an HTTP request (to the response's head), by route and method",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route", "method"],
        )
        .expect("histogram");
        registry
            .register(Box::new(http_duration.clone()))
            .expect("register");
        let gateway_duration = HistogramVec::new(
            HistogramOpts::new(
                "aipm_gateway_call_duration_seconds",
                "Time of a model call through the gateway, retries and fallbacks included, by the model that answered (or was tried first)",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]),
            &["model"],
        )
        .expect("histogram");
        registry
            .register(Box::new(gateway_duration.clone()))
            .expect("register");
        Self {
            gateway_calls: counter(
                "aipm_gateway_calls_total",
                "Model calls through the gateway, by tenant, model and status (ok, or the last attempt's outcome)",
                &["tenant", "model", "status"],
            ),
            gateway_attempts: counter(
                "aipm_gateway_attempts_total",
                "Attempts of model calls, by model and outcome (ok, rate_limited, server_error, timeout, …)",
                &["model", "outcome"],
            ),
            gateway_duration,
            http_requests: counter(
                "aipm_http_requests_total",
                "HTTP requests answered, by route, method and status",
                &["route", "method", "status"],
            ),
            http_duration,
            commands: counter(
                "aipm_commands_total",
                "Commands this process ran, by aggregate type and outcome",
                &["aggregate_type", "outcome"],
            ),
            events: counter(
                "aipm_events_appended_total",
                "Events this process appended, by aggregate type and event type",
                &["aggregate_type", "event_type"],
            ),
            usage_records: counter(
                "aipm_usage_records_total",
                "Usage records received, by tenant and outcome (accepted, duplicate, rejected; uncosted ones are also accepted)",
                &["tenant", "outcome"],
            ),
            projection_lag_events: int_gauge(
                "aipm_projection_lag_events",
                "Committed events a projection (or the NATS relay) has not applied yet",
                &["projection"],
            ),
            projection_lag_seconds: gauge(
                "aipm_projection_lag_seconds",
                "Age of the oldest committed event a projection (or the NATS relay) has not applied yet",
                &["projection"],
            ),
            leading: int_gauge(
                "aipm_leader",
                "1 while this process leads the role (a projection's runner, the NATS relay, the audit anchors), 0 while it stands by",
                &["role"],
            ),
            spend: gauge(
                "aipm_spend_month_to_date",
                "Spend since the first of the current month (UTC), by tenant, model and currency",
                &["tenant", "model", "currency"],
            ),
            budget_used: gauge(
                "aipm_budget_used_ratio",
                "Share of a budget's amount spent in its current period (1 = all of it)",
                &["tenant", "budget", "name", "enforcement"],
            ),
            provider_state: int_gauge(
                "aipm_provider_health_state",
                "A provider's health: 1 for its current state (healthy, degraded, down, unknown), 0 for the others",
                &["tenant", "provider", "state"],
            ),
            registry,
        }
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding text into memory fails only for a metric the registry would have refused.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "encoding the metrics failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The route a request matched, carried on its response to [`track`].
#[derive(Clone)]
struct MatchedRoute(MatchedPath);

/// Inside the router: notes on the response which route answered.
pub async fn mark_route(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(MatchedRoute(route));
    }
    response
}

/// Around everything (refusals of the limits included): counts the request and times it, by
/// its route's pattern (`unmatched` for none), never by its raw path.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<MatchedRoute>()
        .map_or("unmatched", |route| route.0.as_str());
    metrics
        .http_requests
        .with_label_values(&[route, &method, response.status().as_str()])
        .inc();
    metrics
        .http_duration
        .with_label_values(&[route, &method])
        .observe(started.elapsed().as_secs_f64());
    response
}
