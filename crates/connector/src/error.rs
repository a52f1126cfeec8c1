//! The connector crate's errors: building a connector, and the delivery store.

/// What can fail outside an attempt (an attempt's failures are [`crate::Verdict`]s).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A connector could not be built from its checked definition (a template file missing, a
    /// client refusing its settings).
    #[error("connector '{name}': {message}")]
    Build { name: String, message: String },
    #[error("delivery store: {0}")]
    Store(#[from] storeline_state::Error),
    #[error("delivery record {id} cannot be read: {source}")]
    Decode {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the delivery worker has stopped")]
    Stopped,
}

impl Error {
    pub fn build(name: &str, message: impl Into<String>) -> Error {
        Error::Build {
            name: name.to_owned(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
