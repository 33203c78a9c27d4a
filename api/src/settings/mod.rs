//! Everything a running server is configured with, gathered in one value so that the
//! command line, the tests and the server agree on it. The bottom of the crate: every other
//! module may read settings, and settings import none of them.
//!
//! - [`security`]: rate limits, body limits, timeouts, shedding, CORS and security headers.
//! - [`feed`]: the live feed over HTTP.
//! - [`idempotency`]: how long idempotency keys live.
//! - [`anchors`]: anchoring the audit chains outside the database.
//! - [`health`]: whether providers are probed in the background.
//! - [`exports`]: where export files go, how long they are kept.
//! - [`gateway`]: how models are called: timeouts and retries.

pub mod anchors;
pub mod exports;
pub mod feed;
pub mod gateway;
pub mod health;
pub mod idempotency;
pub mod security;

pub use exports::ExportSettings;
pub use feed::FeedSettings;
pub use gateway::GatewaySettings;
pub use health::HealthSettings;
pub use idempotency::IdempotencySettings;
pub use security::{SecurityArgs, SecuritySettings};

/// Largest accepted request body for commands by default (`AIPM_BODY_LIMIT`).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The server's configuration. The command line fills it from flags and the environment
/// (`aipm serve --help` lists them); `Settings::default()` is what a bare `aipm` runs with.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Idempotency keys: how long they live, how long an attempt holds one.
    pub idempotency: IdempotencySettings,
    /// Rate limits, body limits, timeouts, shedding, CORS and security headers.
    pub security: SecuritySettings,
    /// The live feed (`/v1/events/stream`, `/v1/events/ws`).
    pub feed: FeedSettings,
    /// The NATS JetStream feed; `None` turns it off.
    pub relay: Option<projections::relay::RelaySettings>,
    /// Anchoring the audit chains; `None`: not anchored.
    pub anchors: Option<projections::audit::anchor::AnchorSettings>,
    /// Where to serve `GET /metrics` without a key (`AIPM_METRICS_LISTEN`); `None`: only on
    /// the API, to operators' keys.
    pub metrics_listen: Option<String>,
    /// Probing providers' health in the background.
    pub health: HealthSettings,
    /// Export jobs: where their files go and how long they are kept.
    pub exports: ExportSettings,
    /// Calling models: timeouts and retries.
    pub gateway: GatewaySettings,
}

impl Settings {
    /// These settings with the NATS feed configured by `relay` (`None`: off).
    pub fn with_relay(mut self, relay: Option<projections::relay::RelaySettings>) -> Self {
        self.relay = relay;
        self
    }

    /// These settings with anchoring configured by `anchors` (`None`: off).
    pub fn with_anchors(mut self, anchors: Option<projections::audit::anchor::AnchorSettings>) -> Self {
        self.anchors = anchors;
        self
    }
}
