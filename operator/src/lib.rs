//! Streamscan's control plane: the AnalysisJob controller. The gateway is its own crate
//! (`streamscan-gateway`); neither imports the other.

pub mod controller;

pub use streamscan_runtime::{shutdown, telemetry};
