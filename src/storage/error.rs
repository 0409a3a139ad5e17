//! The error of writing a file of the data directory (data file, token
//! index, preservation copy). [`WriteError::is_fatal`] tells the failed
//! fsync that must stop the process from everything else.

use parquet::errors::ParquetError;

use crate::ops::durable::DurableError;
use crate::ops::pool::Panicked;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("parquet encoding failed: {0}")]
    Parquet(#[from] ParquetError),
    #[error("arrow batch could not be built: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error(transparent)]
    Durable(#[from] DurableError),
    /// A sorted file was given rows out of order: a bug, or a source file
    /// that is not sorted.
    #[error("rows pushed out of order: a sorted file takes rows sorted by calling number token")]
    OutOfOrder,
    /// Rows were pushed into a file already finished.
    #[error("the file is already finished")]
    Finished,
    #[error("a column encoder thread panicked")]
    Panicked,
}

impl From<Panicked> for WriteError {
    fn from(_: Panicked) -> Self {
        WriteError::Panicked
    }
}

impl WriteError {
    /// True when the process must stop: an fsync failed, so the state of the
    /// disk is unknown.
    pub fn is_fatal(&self) -> bool {
        matches!(self, WriteError::Durable(e) if e.is_fatal())
    }
}
