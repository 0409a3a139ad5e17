//! The `[retention]` config section.

use std::time::Duration;

use serde::Deserialize;

/// Default of [`RetentionConfig::max_clock_jump`]: a week.
pub const DEFAULT_MAX_CLOCK_JUMP: Duration = Duration::from_secs(7 * 24 * 3600);

/// The `[retention]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days a day of data is kept after its date (the legal window).
    pub days: u32,
    /// How often the service sweeps.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How far "now" may lie beyond both the last sweep and the newest day
    /// of data before a sweep distrusts the clock and destroys nothing until
    /// an operator runs `cdrvault retention confirm-clock`. Must be longer
    /// than `interval`.
    #[serde(with = "humantime_serde")]
    pub max_clock_jump: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { days: 365, interval: Duration::from_secs(3600), max_clock_jump: DEFAULT_MAX_CLOCK_JUMP }
    }
}
