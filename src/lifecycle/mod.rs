//! The life and end of the data: retention destroys each day one year
//! after the communication ([`retention`]), only while it trusts the clock
//! ([`clock_check`]); preservation orders keep named targets' records beyond
//! that ([`orders`]) in copies of their own ([`preserve`]).
//!
//! The invariants this folder keeps: a day is destroyed key first, then
//! files, each step durable and the whole audited; a destroyed day is never
//! re-created; nothing is destroyed before its day is expired, and expiry is
//! measured only at the clock's today and only with a trusted clock; an
//! order's copies answer only for that order and die with its key.

pub mod clock_check;
pub mod config;
pub mod orders;
pub mod preserve;
pub mod retention;
