//! The `[access]` config section, and the settings the desk runs with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::api::tls::TlsFiles;
use super::lookup::MAX_WINDOW_DAYS;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Address of the lawful-access gRPC API. Unset: `serve` does not
    /// start it (`cdrvault access serve --listen` runs it alone).
    pub listen: Option<SocketAddr>,
    /// The operator's id in result headers (ETSI CSPID).
    pub csp_id: String,
    /// Requests and fetches per minute and authority; 0 means no limit.
    pub requests_per_minute: u32,
    /// Most targets in one request or warrant.
    pub max_targets: usize,
    /// The longest window of one request, in days (counted by UTC date,
    /// both ends included). Unset: twice `retention.days`, so that a
    /// request can reach preserved copies older than retention; older
    /// ones take several requests. At most [`MAX_WINDOW_DAYS`].
    pub max_window_days: Option<u32>,
    /// How long a sealed result stays fetchable before its key is destroyed.
    #[serde(with = "humantime_serde")]
    pub result_keep: Duration,
    /// The longest a preservation order runs, in days from its approval (or
    /// from the approval of a new end date).
    pub order_max_days: u32,
    /// TLS for the API: the server's certificate and key (PEM).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// With TLS, the CA whose client certificates are accepted (mTLS); a
    /// certificate authenticates the principal it is mapped to.
    pub tls_client_ca: Option<PathBuf>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        let defaults = AccessSettings::default();
        AccessConfig {
            listen: None,
            csp_id: defaults.csp_id,
            requests_per_minute: defaults.requests_per_minute,
            max_targets: defaults.max_targets,
            max_window_days: None,
            result_keep: defaults.result_keep,
            order_max_days: crate::lifecycle::orders::DEFAULT_MAX_DAYS,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

impl AccessConfig {
    /// The TLS files, when TLS is configured.
    pub fn tls(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    pub fn settings(&self, retention_days: u32) -> AccessSettings {
        AccessSettings {
            csp_id: self.csp_id.clone(),
            requests_per_minute: self.requests_per_minute,
            max_targets: self.max_targets,
            max_window_days: self.max_window_days.unwrap_or_else(|| default_max_window_days(retention_days)),
            result_keep: self.result_keep,
            retention_days,
        }
    }
}

/// The longest request window when `access.max_window_days` is unset:
/// twice the retention period, within [`MAX_WINDOW_DAYS`].
pub fn default_max_window_days(retention_days: u32) -> u32 {
    retention_days.saturating_mul(2).min(MAX_WINDOW_DAYS)
}

/// How the lawful-access desk behaves, from `[access]` and the retention
/// window.
#[derive(Debug, Clone)]
pub struct AccessSettings {
    /// The operator's id in result headers (ETSI CSPID).
    pub csp_id: String,
    /// Requests and fetches per minute and authority; 0 means no limit.
    pub requests_per_minute: u32,
    /// Most targets in one request or warrant.
    pub max_targets: usize,
    /// The longest window of one request, in days; a longer one is refused
    /// as `window_too_long`.
    pub max_window_days: u32,
    /// How long a sealed result stays fetchable.
    pub result_keep: Duration,
    /// The retention period, to tell "beyond retention" from "no data".
    pub retention_days: u32,
}

impl Default for AccessSettings {
    fn default() -> Self {
        AccessSettings {
            csp_id: "cdrvault".into(),
            requests_per_minute: 60,
            max_targets: 64,
            max_window_days: default_max_window_days(365),
            result_keep: Duration::from_secs(7 * 86_400),
            retention_days: 365,
        }
    }
}
