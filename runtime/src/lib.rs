//! What Streamscan's long-running binaries (the operator's controller and gateway, the worker)
//! share, so that they log, stop, serve probes and metrics and reach Kafka the same way: one
//! place for each.

pub mod kafka;
pub mod ops;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod token;
