//! Pure-Rust engine core (no PyO3): versioned state, compare-and-swap, audit, journal.
pub mod audit;
pub mod audit_api;
pub mod decision;
pub mod dedup;
pub mod engine;
pub mod error;
pub mod fxhash;
pub mod heavy;
pub mod index;
pub mod journal;
mod keytable;
pub mod msgpack;
pub mod outbox;
pub mod record;
pub mod store;
pub mod update;

pub use decision::{Decision, Status};
pub use dedup::{DedupStats, Horizon};
pub use engine::{BatchOut, Config, Engine, Vetted};
pub use error::{EngineError, Result};
pub use journal::{verify, Fsync};

use std::path::Path;

/// Build the auditor for `Engine`: none without recipes, else the recipes' `audit::Auditor`.
pub fn make_audit(recipes: Option<&Path>) -> Result<Box<dyn audit_api::Audit>> {
    match recipes {
        None => Ok(Box::new(audit_api::NoAudit)),
        Some(path) => audit::Auditor::from_file(path)
            .map(|a| Box::new(a) as Box<dyn audit_api::Audit>)
            .map_err(|e| EngineError::Recipe(e.to_string())),
    }
}
