//! What can go wrong in a state store, with enough context to act on it.

/// A state-store failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The commit's `from_offset` is not the partition's stored offset: the batch was already
    /// applied, or another writer owns the partition. Nothing was written.
    #[error(
        "partition {partition} is at offset {stored} in the state store, not {expected}: another writer applied it, or this batch was applied already"
    )]
    Fenced {
        partition: u32,
        expected: u64,
        stored: u64,
    },
    /// The embedded SQLite database failed.
    #[error("sqlite state store at {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    /// PostgreSQL failed or could not be reached.
    #[error("postgresql state store ({context}): {source}")]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A configuration value is unusable (said how).
    #[error("{0}")]
    Config(String),
    /// The store was closed.
    #[error("the state store is closed")]
    Closed,
}

impl Error {
    /// Whether retrying the same call later can succeed (a lost connection, a busy database),
    /// as opposed to a fenced commit or a bad configuration.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Sqlite { .. } | Error::Postgres { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
