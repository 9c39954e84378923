//! Streamscan's analysis server: the `serve` runtime that runs pinned AnalysisJobs in a worker
//! pod, and the local `scan` command, both over the engine (`streamscan-engine`).

pub mod runtime;
pub mod scan;
