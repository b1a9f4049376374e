//! Pure-Rust engine core (no PyO3): versioned state, compare-and-swap, audit, journal.
pub mod audit;
pub mod audit_api;
pub mod decision;
pub mod engine;
pub mod error;
pub mod journal;
pub mod msgpack;
pub mod store;
pub mod update;

pub use decision::{Decision, Status};
pub use engine::{BatchOut, Config, Engine};
pub use error::{EngineError, Result};
pub use journal::{verify, Fsync};

use std::path::Path;

/// Build the auditor for `Engine`: no recipe, no audit. When `audit::Auditor` lands, the
/// `Some` arm becomes `audit::Auditor::from_file(path)` boxed, with its error mapped to
/// `EngineError::Recipe`.
pub fn make_audit(recipes: Option<&Path>) -> Result<Box<dyn audit_api::Audit>> {
    match recipes {
        None => Ok(Box::new(audit_api::NoAudit)),
        Some(_path) => Ok(Box::new(audit_api::NoAudit)),
    }
}
