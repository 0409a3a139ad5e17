//! Lawful access: authorities' requests under approved warrants, answered
//! only within the warrant's scope, with every step audited.
//!
//! ```text
//! api (gRPC) ──► desk ──► authz ──► warrants (scope) ──► lookup ──► render ──► results (sealed)
//!                  └── every refusal and every disclosure audited first
//! ```
//!
//! [`api`] is the thin gRPC face: it parses, calls the [`desk`], and
//! converts. The desk holds the call path and the operations, each in the
//! file of its concern ([`principals`], [`warrants`], [`requests`],
//! [`fetch`], [`export`], [`oversight`]) over the [`store`] of rules and
//! the sealed [`results`]; [`authz`] decides who may do
//! and see what; [`refusal`] lists every reason a call is refused.
//! [`lookup`] is the disclosure path; [`render`] turns found records into
//! the delivered bytes; [`client`] is the command line's gRPC client.
//!
//! The invariants this folder keeps: no byte of a result leaves the process
//! before its audit entry is durable; no result goes beyond the warrant's
//! targets, window and categories; a warrant is approved by a reviewer other
//! than its registrar; every refusal is audited with a stable reason code
//! and never quotes a value; another authority's objects look like unknown
//! ones from outside. `docs/lawful-access.md` records the decisions.

pub mod api;
pub mod authz;
pub mod client;
pub mod config;
pub mod desk;
pub mod export;
mod failures;
pub mod fetch;
pub mod input;
pub mod lookup;
pub mod orders;
pub mod oversight;
pub mod principals;
pub mod refusal;
pub mod render;
pub mod requests;
pub mod results;
pub mod store;
pub mod unnamed;
pub mod warrants;

pub use desk::Credentials;
pub use desk::{Call, Desk, DeskParts};
pub use principals::{BearerToken, NewPrincipal};
pub use refusal::{AccessError, AuthFailure, Refusal};
pub use store::AccessStore;
