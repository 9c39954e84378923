//! The gateway: Kafka progress events into Redis history and out to WebSocket/SSE clients, with
//! resume, cancel, job submission (including streamed uploads), result download routed to the
//! worker that holds it, and JWT authentication.
//!
//! Pure parts ([`admit`], [`deletion`], [`seqset`], [`verdict`], [`hub`], [`rewind`]) are tested on their own; the I/O shell is
//! [`kafka`], [`history`], [`http`] and friends, wired in [`run`].

pub mod admit;
pub mod auth;
pub mod deletion;
pub mod error;
pub mod history;
pub mod http;
pub mod hub;
pub mod jobcache;
pub mod jobs;
pub mod kafka;
pub mod limits;
pub mod metrics;
pub mod results;
pub mod rewind;
pub mod run;
pub mod seqset;
pub mod stream;
pub mod upload;
pub mod verdict;

pub use run::{GatewayArgs, run};
