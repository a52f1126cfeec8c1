//! Errors of the log. Each says whether a retry can help ([`Error::is_retryable`]).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("partition {partition} does not exist (the log has {partitions})")]
    NoSuchPartition { partition: u32, partitions: u32 },

    #[error("offset {offset} is out of range for partition {partition} (readable: {start}..{end})")]
    OffsetOutOfRange {
        partition: u32,
        offset: u64,
        start: u64,
        end: u64,
    },

    #[error("the disk is full: cannot append to partition {partition} ({source})")]
    DiskFull {
        partition: u32,
        #[source]
        source: std::io::Error,
    },

    #[error("partition {partition} stopped accepting writes: {reason}")]
    WriterStopped { partition: u32, reason: String },

    #[error("corrupt record batch in {segment} at byte {position} (offset {offset}): {reason}")]
    Corrupt {
        segment: PathBuf,
        position: u64,
        offset: u64,
        reason: String,
    },

    #[error("record batch too large: {bytes} bytes, the limit is {limit}")]
    TooLarge { bytes: usize, limit: usize },

    #[error("the log is closed")]
    Closed,

    /// A networked backend's servers did not answer (or answered with an error worth retrying).
    #[error("partition {partition}: the log's servers are unavailable: {reason}")]
    Unavailable { partition: u32, reason: String },

    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid log configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether the same call may succeed later without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::DiskFull { .. } | Error::Unavailable { .. })
    }

    /// A copy of this error (I/O sources are copied by kind and message), so one failure can be
    /// given to every append of a batch and kept as a partition's state.
    pub fn duplicate(&self) -> Error {
        let io = |e: &std::io::Error| std::io::Error::new(e.kind(), e.to_string());
        match self {
            Error::NoSuchPartition {
                partition,
                partitions,
            } => Error::NoSuchPartition {
                partition: *partition,
                partitions: *partitions,
            },
            Error::OffsetOutOfRange {
                partition,
                offset,
                start,
                end,
            } => Error::OffsetOutOfRange {
                partition: *partition,
                offset: *offset,
                start: *start,
                end: *end,
            },
            Error::DiskFull { partition, source } => Error::DiskFull {
                partition: *partition,
                source: io(source),
            },
            Error::WriterStopped { partition, reason } => Error::WriterStopped {
                partition: *partition,
                reason: reason.clone(),
            },
            Error::Corrupt {
                segment,
                position,
                offset,
                reason,
            } => Error::Corrupt {
                segment: segment.clone(),
                position: *position,
                offset: *offset,
                reason: reason.clone(),
            },
            Error::TooLarge { bytes, limit } => Error::TooLarge {
                bytes: *bytes,
                limit: *limit,
            },
            Error::Closed => Error::Closed,
            Error::Unavailable { partition, reason } => Error::Unavailable {
                partition: *partition,
                reason: reason.clone(),
            },
            Error::Io { path, source } => Error::Io {
                path: path.clone(),
                source: io(source),
            },
            Error::Config(m) => Error::Config(m.clone()),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
