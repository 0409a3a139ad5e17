//! Pseudonymisation: the only path by which a raw identifier becomes
//! something that may be stored unencrypted.
//!
//! [`normalise`] gives every identifier kind its canonical form, [`target`]
//! parses the targets of warrants, requests and orders into that same form,
//! and [`token`] turns a canonical value into its keyed token. Nothing here
//! returns, logs or stores a raw value.

pub mod normalise;
pub mod target;
pub mod token;
