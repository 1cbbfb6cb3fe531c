//! The queue's one error type. Callers ask it questions (`is_unavailable`, `is_invalid`)
//! rather than matching storage internals.

use std::path::PathBuf;

/// Everything that can go wrong in the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Another process already has the embedded store open (redb holds a file lock).
    #[error("queue store {path} is already open in another process")]
    Locked {
        /// The redb store file that another process holds open.
        path: PathBuf,
    },
    /// The data directory or store file could not be created, read or written.
    #[error("queue store {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The embedded store refused an operation (disk full, corruption, I/O error).
    #[error("queue storage error: {0}")]
    Storage(#[from] redb::Error),
    /// A stored record could not be decoded: the store is damaged or from another version.
    #[error("corrupt queue record in {table}: {detail}")]
    Corrupt {
        /// The table (embedded) or key (redis) holding the record.
        table: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// Redis refused a command or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The backend could not confirm that a write is durable (Redis `WAITAOF` timed out).
    #[error("write not confirmed durable: {0}")]
    NotDurable(String),
    /// The submission is invalid; nothing was stored.
    #[error("invalid submission: {field}: {message}")]
    Invalid {
        /// The offending field, e.g. `recipients[3].to`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A blocking storage task panicked or was cancelled.
    #[error("queue worker task failed: {0}")]
    Task(String),
}

impl QueueError {
    /// True when the storage (disk or Redis) cannot take work right now: answer 503.
    pub fn is_unavailable(&self) -> bool {
        !self.is_invalid()
    }

    /// True when the caller's input was refused (nothing stored): answer 422.
    pub fn is_invalid(&self) -> bool {
        matches!(self, QueueError::Invalid { .. })
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        QueueError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn corrupt(table: &'static str, detail: impl Into<String>) -> Self {
        QueueError::Corrupt {
            table,
            detail: detail.into(),
        }
    }
}

// redb reports errors through several types; they all fold into `redb::Error`.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for QueueError {
            fn from(e: $t) -> Self {
                QueueError::Storage(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// The queue's result type.
pub type Result<T, E = QueueError> = std::result::Result<T, E>;
