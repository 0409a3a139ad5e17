//! The `[retention]` config section.

use serde::Deserialize;

/// The `[retention]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days a day of data is kept after its date (the legal window).
    pub days: u32,
    /// How often the service sweeps.
    #[serde(with = "humantime_serde")]
    pub interval: std::time::Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { days: 365, interval: std::time::Duration::from_secs(3600) }
    }
}
