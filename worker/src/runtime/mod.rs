//! `streamscan-worker serve`: the analysis server of one worker pod. It watches the
//! AnalysisJobs pinned to its `serverId`, runs them on the engine, reports progress on the CR
//! and on Kafka, and keeps and serves the compressed results.
//!
//! Pure decisions live in [`decide`] (which attempts run here) and [`lifecycle`] (how an attempt
//! ends); everything else is a thin I/O shell around the engine.

pub mod args;
pub mod decide;
pub mod egress;
pub mod events;
pub mod executor;
pub mod http;
pub mod lifecycle;
pub mod run;
pub mod sources;
pub mod status;
pub mod store;
pub mod watch;

pub use args::ServeArgs;
pub use streamscan_runtime::{kafka, shutdown, telemetry};
