//! The text forms of the fields a caller sends: RFC 3339 times, `kind:value`
//! targets, category names, and the length limit of free-text fields. Times
//! and targets are plain strings so that any gRPC stack can call the API
//! without well-known types. A malformed field is a refusal naming the
//! field, never quoting its value.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::refusal::Refusal;
use crate::model::Category;
use crate::privacy::target::TargetInput;

/// Longest accepted free-text field (references, names, reasons), in bytes.
pub const MAX_TEXT: usize = 512;

/// The entries a page of a listing holds when the caller names no size,
/// and the most it may ask for.
pub const DEFAULT_PAGE: usize = 1_000;
pub const MAX_PAGE: usize = 10_000;

/// The entries of a listing's page asked for as `page_size`: 0 for the
/// default, at most [`MAX_PAGE`].
pub fn page_size(page_size: u32) -> usize {
    match page_size as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

/// Where a listing's page starts: nothing for the first (an empty
/// `page_token`), else what `parse` reads from the token, which must be
/// one the service gave.
pub fn page_after<T>(page_token: &str, parse: impl FnOnce(&str) -> Option<T>) -> Result<Option<T>, Refusal> {
    match page_token {
        "" => Ok(None),
        token => parse(token).map(Some).ok_or(Refusal::BadPageToken),
    }
}

/// The token of the page after `page`, if it may hold more: `page` is
/// full at `limit` entries, and the token names its last one.
pub fn next_page_token<T>(page: &[T], limit: usize, token_of: impl FnOnce(&T) -> String) -> Option<String> {
    page.last().filter(|_| page.len() == limit).map(token_of)
}

/// A time in RFC 3339.
pub fn time(text: &str, field: &'static str) -> Result<DateTime<Utc>, Refusal> {
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|_| Refusal::BadTime(field))
}

/// Category names.
pub fn categories(texts: &[String]) -> Result<BTreeSet<Category>, Refusal> {
    texts.iter().map(|t| Category::parse(t).ok_or(Refusal::BadCategory)).collect()
}

/// Targets written `kind:value`, at most `limit` of them.
pub fn targets(texts: &[String], limit: usize) -> Result<Vec<TargetInput>, Refusal> {
    if texts.len() > limit {
        return Err(Refusal::TooManyTargets(limit));
    }
    texts
        .iter()
        .enumerate()
        .map(|(n, t)| TargetInput::parse(t, n + 1).map_err(|e| Refusal::TargetSyntax(e.0)))
        .collect()
}

/// Refuses a free-text field over [`MAX_TEXT`] bytes, naming it.
pub fn within_limit(fields: &[(&'static str, &str)]) -> Result<(), Refusal> {
    match fields.iter().find(|(_, value)| value.len() > MAX_TEXT) {
        Some((name, _)) => Err(Refusal::FieldTooLong(name, MAX_TEXT)),
        None => Ok(()),
    }
}

/// An optional field: the empty string means absent.
pub fn optional(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_fields_are_named_never_quoted() {
        assert_eq!(time("yesterday", "window_start"), Err(Refusal::BadTime("window_start")));
        assert!(time("2026-11-24T10:00:00+01:00", "x").is_ok());
        assert_eq!(categories(&["traffic".into(), "gps".into()]), Err(Refusal::BadCategory));
        let refused = targets(&["msisdn:+4520000001".into(), "+4520000002".into()], 64).unwrap_err();
        assert_eq!(refused, Refusal::TargetSyntax(2));
        assert!(!refused.to_string().contains("4520000002"));
        assert_eq!(targets(&vec!["msisdn:+4520000001".into(); 3], 2).unwrap_err(), Refusal::TooManyTargets(2));
        assert_eq!(within_limit(&[("name", &"x".repeat(MAX_TEXT + 1))]), Err(Refusal::FieldTooLong("name", MAX_TEXT)));
    }
}
