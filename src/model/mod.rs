//! The vocabulary of cdrvault: the typed values that pass between the
//! stages and subsystems (quickwit's `models`).
//!
//! What a validated call-detail record is ([`Cdr`]) and why a record is
//! refused ([`RefuseReason`]); which identifier fields it carries, their
//! kinds, columns and data categories ([`IdentifierField`],
//! [`IdentifierKind`], [`Category`]); the raw identifier types, which never
//! print their value; time ([`TimestampMicros`], [`PartitionDate`]) and the
//! retention rule; tokens and key ids. Nothing here touches a file, a key or
//! the network.

mod identifier;
mod record;
pub mod retention;
mod time;
mod token;

pub use identifier::{
    Category, CellId, IdentifierField, IdentifierKind, IdentifierValue, Imei, Imsi, IpAddress, Msisdn, SipUri,
};
pub use record::{Cdr, Direction, RefuseReason, Service};
pub use time::{MICROS_PER_DAY, PartitionDate, TimestampMicros};
pub use token::{KeyId, Token};
