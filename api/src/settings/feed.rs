//! The live feed's settings (`/v1/events/stream`, `/v1/events/ws`).

use std::time::Duration;

/// Default for [`FeedSettings::buffer`].
pub const DEFAULT_BUFFER: usize = 4_096;
/// Default for [`FeedSettings::heartbeat_ms`].
pub const DEFAULT_HEARTBEAT_MS: u64 = 15_000;
/// Default for [`FeedSettings::max_lag_ms`].
pub const DEFAULT_MAX_LAG_MS: u64 = 60_000;

/// The live feed's configuration (part of [`crate::Settings`], and flags of `aipm serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct FeedSettings {
    /// Events the live feed holds for subscribers that are behind. A subscriber that falls
    /// further behind is disconnected and told where to resume. Memory: this many events.
    #[arg(
        long = "feed-buffer",
        env = "AIPM_FEED_BUFFER",
        default_value_t = DEFAULT_BUFFER,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_048_576)
    )]
    pub buffer: usize,
    /// Milliseconds between keep-alive comments (SSE) and pings (WebSocket) on the feed.
    #[arg(
        long = "feed-heartbeat-ms",
        env = "AIPM_FEED_HEARTBEAT_MS",
        default_value_t = DEFAULT_HEARTBEAT_MS,
        value_parser = clap::value_parser!(u64).range(10..=3_600_000)
    )]
    pub heartbeat_ms: u64,
    /// How old the events a subscriber that fell behind the live buffer is catching up on
    /// may be before it is disconnected as too slow.
    #[arg(
        long = "feed-max-lag-ms",
        env = "AIPM_FEED_MAX_LAG_MS",
        default_value_t = DEFAULT_MAX_LAG_MS,
        value_parser = clap::value_parser!(u64).range(1..=86_400_000)
    )]
    pub max_lag_ms: u64,
}

impl Default for FeedSettings {
    fn default() -> Self {
        Self {
            buffer: DEFAULT_BUFFER,
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            max_lag_ms: DEFAULT_MAX_LAG_MS,
        }
    }
}

impl FeedSettings {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub fn max_lag(&self) -> Duration {
        Duration::from_millis(self.max_lag_ms)
    }
}
