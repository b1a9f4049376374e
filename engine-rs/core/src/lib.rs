//! Pure-Rust engine core (no PyO3): state, audit, journal.
