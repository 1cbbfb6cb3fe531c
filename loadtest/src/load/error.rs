//! [`LoadError`]: why a load-test run could not produce a report. A run that completes but
//! finds volley incorrect is not an error: its [`Report`](super::Report) says so.

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The options cannot work (e.g. no recipients, too many sink addresses).
    #[error("invalid option: {0}")]
    Options(String),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A child process (sink or volley) did not start or misbehaved.
    #[error("{0}")]
    Process(String),
    /// volley's HTTP API answered something unexpected.
    #[error("HTTP API: {0}")]
    Api(String),
    /// The run's `--timeout` passed; the children were killed.
    #[error("timed out after {0:?} while {1}")]
    Timeout(std::time::Duration, String),
    /// A reference client failed.
    #[error("reference client: {0}")]
    Reference(#[from] crate::blast::BlastError),
}

impl LoadError {
    /// An [`LoadError::Io`] saying what was being done.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LoadError {
        let what = what.into();
        move |source| LoadError::Io { what, source }
    }
}
