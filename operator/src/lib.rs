//! Streamscan's control plane: the AnalysisJob controller and the gateway.

pub mod controller;
pub mod gateway;
pub mod ops;

pub use streamscan_runtime::{shutdown, telemetry};
