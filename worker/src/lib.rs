//! Streamscan's analysis server: the streaming engine, and (later) the runtime that runs
//! pinned AnalysisJobs in a worker pod.

pub mod engine;
pub mod runtime;
pub mod scan;
