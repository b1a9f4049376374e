//! Pure-Rust engine core (no PyO3): versioned state, compare-and-swap, audit, journal.
pub mod audit_api;
