//! The one error enum of the core; the binding maps each variant to its own Python class.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// The journal could not be written, read or opened.
    #[error("journal: {0}")]
    Journal(String),
    /// A record's checksum, length or hash chain is broken (or its payload is unreadable).
    #[error("journal corrupt at record {index}: {reason}")]
    JournalCorrupt { index: u64, reason: String },
    /// An audit recipe file is invalid.
    #[error("recipe: {0}")]
    Recipe(String),
    /// Misuse of the engine (closed, poisoned by an earlier journal failure, bad argument).
    #[error("engine: {0}")]
    Engine(String),
}

impl EngineError {
    pub fn io(context: &str, err: std::io::Error) -> Self {
        EngineError::Journal(format!("{context}: {err}"))
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;
