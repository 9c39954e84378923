//! Streamscan's control plane: the AnalysisJob controller and the gateway.

pub mod controller;
