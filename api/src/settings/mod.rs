//! Everything a running server is configured with, gathered in one value so that the
//! command line, the tests and the server agree on it.

/// The server's configuration. The command line fills it from flags and the environment
/// (`aipm serve --help` lists them); `Settings::default()` is what a bare `aipm` runs with.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Idempotency keys: how long they live, how long an attempt holds one.
    pub idempotency: crate::idempotency::IdempotencySettings,
    /// Rate limits, body limits, timeouts, shedding, CORS and security headers.
    pub security: crate::hardening::SecuritySettings,
    /// The live feed (`/v1/events/stream`, `/v1/events/ws`).
    pub feed: crate::routes::feed::FeedSettings,
    /// The NATS JetStream feed; `None` turns it off.
    pub relay: Option<projections::relay::RelaySettings>,
}

impl Settings {
    /// These settings with the NATS feed configured by `relay` (`None`: off).
    pub fn with_relay(mut self, relay: Option<projections::relay::RelaySettings>) -> Self {
        self.relay = relay;
        self
    }
}
