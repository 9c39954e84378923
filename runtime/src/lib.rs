//! What Streamscan's long-running binaries (the controller, the gateway, the worker) share, so
//! that they log, stop, serve probes and metrics and reach Kafka and Kubernetes the same way: one
//! place for each. Kafka and Kubernetes are features, so a binary links only the clients it uses.

#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "kube")]
pub mod kube;
pub mod ops;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod token;
pub mod workers;
