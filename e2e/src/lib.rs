//! Streamscan's scenario suite lives in `tests/scenarios.rs`; its fixtures in `fixtures/` and the
//! kind run in `kind/`. The helpers it runs on are the `testing/` crates.
